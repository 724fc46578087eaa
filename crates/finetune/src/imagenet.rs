//! The ImageNet sanity check of new weights: the top-5 ImageNet classes of one
//! photo, with probabilities ([`imagenet_top5`]; `digitlab predict --model resnet18
//! --pretrained torchvision:resnet18 photo.jpg`).
//!
//! Preprocessing is torchvision's evaluation transform of the IMAGENET1K_V1 weights
//! (`ImageClassification(crop_size=224)`): the shorter side resized to 256 (crop /
//! 0.875) with antialiased bilinear filtering (PIL's), a centred 224x224 crop (the
//! model's input size), values in [0, 1], then the model's normalisation (ImageNet
//! mean/std for every ImageNet backbone here). Class names are torchvision's
//! (`weights.meta["categories"]`), shipped in `assets/imagenet_classes.txt`.

use candle_core::{ModuleT, Tensor};
use digitlab_data::Normalization;

use crate::error::{FinetuneError, Result};
use crate::zoo::CreatedModel;

/// torchvision's 1000 ImageNet class names, one a line, in class-index order.
pub const CLASS_NAMES_TEXT: &str = include_str!("../assets/imagenet_classes.txt");

/// Number of ImageNet-1k classes.
pub const NUM_CLASSES: usize = 1000;

/// Crop side over resize side of torchvision's evaluation transform (224 / 256).
pub const CROP_RATIO: f64 = 0.875;

/// The class names, index `k` for class `k`.
pub fn class_names() -> Vec<&'static str> {
    CLASS_NAMES_TEXT.lines().collect()
}

/// An 8-bit RGB image, rows top to bottom, pixels interleaved (`R G B R G B ...`),
/// as `image::RgbImage::into_raw` gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    /// `height * width * 3` bytes.
    pub pixels: Vec<u8>,
}

impl RgbImage {
    /// Checks the buffer length against the size.
    pub fn new(width: usize, height: usize, pixels: Vec<u8>) -> Result<Self> {
        if width == 0 || height == 0 || pixels.len() != width * height * 3 {
            return Err(FinetuneError::Config(format!(
                "image of {width}x{height} pixels needs {} RGB bytes, got {} (and no side may be 0)",
                width * height * 3,
                pixels.len()
            )));
        }
        Ok(Self { width, height, pixels })
    }
}

/// Source pixels and weights of each output pixel along one axis: PIL's bilinear
/// resampling, whose triangle filter widens with the downscaling factor (antialiasing).
fn axis_filter(len_in: usize, len_out: usize) -> Vec<(usize, Vec<f32>)> {
    let scale = len_in as f64 / len_out as f64;
    let widen = scale.max(1.0);
    let support = widen;
    (0..len_out)
        .map(|o| {
            let center = (o as f64 + 0.5) * scale;
            let lo = ((center - support + 0.5).floor().max(0.0)) as usize;
            let hi = ((center + support + 0.5).floor() as usize).min(len_in).max(lo + 1);
            let mut w: Vec<f64> = (lo..hi)
                .map(|i| (1.0 - ((i as f64 + 0.5 - center) / widen).abs()).max(0.0))
                .collect();
            let sum: f64 = w.iter().sum();
            if sum > 0.0 {
                w.iter_mut().for_each(|v| *v /= sum);
            } else {
                w = vec![1.0; hi - lo].into_iter().map(|v| v / (hi - lo) as f64).collect();
            }
            (lo, w.into_iter().map(|v| v as f32).collect())
        })
        .collect()
}

/// Resizes one `h x w` plane to `oh x ow` (separable: rows, then columns).
fn resize_plane(src: &[f32], h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    let fx = axis_filter(w, ow);
    let fy = axis_filter(h, oh);
    let mut rows = vec![0f32; h * ow];
    for y in 0..h {
        let line = &src[y * w..(y + 1) * w];
        for (x, (lo, ws)) in fx.iter().enumerate() {
            rows[y * ow + x] = ws.iter().zip(&line[*lo..]).map(|(a, b)| a * b).sum();
        }
    }
    let mut out = vec![0f32; oh * ow];
    for (y, (lo, ws)) in fy.iter().enumerate() {
        for x in 0..ow {
            out[y * ow + x] = ws.iter().enumerate().map(|(k, wk)| wk * rows[(lo + k) * ow + x]).sum();
        }
    }
    out
}

/// torchvision's evaluation transform (see the module docs) of `image` for a
/// `crop_h x crop_w` input: CHW floats, normalised with `normalization`.
pub fn preprocess(image: &RgbImage, crop_h: usize, crop_w: usize, normalization: &Normalization) -> Result<Vec<f32>> {
    let (h, w) = (image.height, image.width);
    if image.pixels.len() != h * w * 3 || h == 0 || w == 0 || crop_h == 0 || crop_w == 0 {
        return Err(FinetuneError::Config(format!(
            "cannot preprocess a {w}x{h} image with {} bytes for a {crop_w}x{crop_h} input",
            image.pixels.len()
        )));
    }
    // Shorter side to `resize`, the longer scaled and truncated, as torchvision does.
    let resize = (crop_h.max(crop_w) as f64 / CROP_RATIO).round() as usize;
    let (rh, rw) = if h <= w {
        (resize, ((resize as f64) * w as f64 / h as f64) as usize)
    } else {
        (((resize as f64) * h as f64 / w as f64) as usize, resize)
    };
    let (rh, rw) = (rh.max(crop_h), rw.max(crop_w));
    // torchvision's center_crop: int(round((size - crop) / 2)), ties to even.
    let top = ((rh - crop_h) as f64 / 2.0).round_ties_even() as usize;
    let left = ((rw - crop_w) as f64 / 2.0).round_ties_even() as usize;
    let (mean, std) = match normalization {
        Normalization::MeanStd { mean, std } if mean.len() == 3 && std.len() == 3 => (mean.clone(), std.clone()),
        Normalization::MeanStd { mean, std } => {
            return Err(FinetuneError::Config(format!(
                "normalisation has {} means and {} stds; RGB images need 3 of each",
                mean.len(),
                std.len()
            )))
        }
        Normalization::Unit => (vec![0.0; 3], vec![1.0; 3]),
        Normalization::Symmetric => (vec![0.5; 3], vec![0.5; 3]),
    };
    let mut out = Vec::with_capacity(3 * crop_h * crop_w);
    for c in 0..3 {
        let plane: Vec<f32> = image.pixels[c..].iter().step_by(3).map(|&v| v as f32 / 255.0).collect();
        let resized = if (rh, rw) == (h, w) {
            plane
        } else {
            resize_plane(&plane, h, w, rh, rw)
        };
        for y in top..top + crop_h {
            for x in left..left + crop_w {
                out.push((resized[y * rw + x] - mean[c]) / std[c]);
            }
        }
    }
    Ok(out)
}

/// The `k` most probable ImageNet classes of `image` under `model`, most probable
/// first, as (class name, softmax probability). The model must have 1000 classes
/// and RGB input; the image is preprocessed for the model's input size with its
/// normalisation (ImageNet's when it has none of its own).
pub fn imagenet_topk(model: &CreatedModel, image: &RgbImage, k: usize) -> Result<Vec<(String, f32)>> {
    if model.num_classes != NUM_CLASSES {
        return Err(FinetuneError::Config(format!(
            "{}: the ImageNet check needs a {NUM_CLASSES}-class head (ImageNet weights), the model has {} classes",
            model.name, model.num_classes
        )));
    }
    // A checkpoint whose head did not fit was re-initialised: its "classes" are noise.
    if let Some(p) = &model.pretrained {
        let fresh: Vec<&str> = p.report.reinitialized().collect();
        if !fresh.is_empty() {
            return Err(FinetuneError::Config(format!(
                "{}: {} has no {NUM_CLASSES}-class ImageNet head ({} had to be re-initialised); give \
                 ImageNet weights",
                model.name,
                p.path.display(),
                fresh.join(", ")
            )));
        }
    }
    if model.input.channels != 3 {
        return Err(FinetuneError::Config(format!(
            "{}: the ImageNet check needs RGB input, the model takes {} channels",
            model.name, model.input.channels
        )));
    }
    let norm = model.arch.normalization.clone().unwrap_or_else(Normalization::imagenet);
    let (h, w) = (model.input.height, model.input.width);
    let pixels = preprocess(image, h, w, &norm)?;
    let device = model
        .varmap
        .all_vars()
        .first()
        .map(|v| v.device().clone())
        .unwrap_or(candle_core::Device::Cpu);
    let x = Tensor::from_vec(pixels, (1, 3, h, w), &device)?;
    let logits = model.model.forward_t(&x, false)?;
    let probs: Vec<f32> = candle_nn::ops::softmax_last_dim(&logits)?.flatten_all()?.to_vec1()?;
    let names = class_names();
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    Ok(order
        .into_iter()
        .take(k)
        .map(|i| (names[i].to_string(), probs[i]))
        .collect())
}

/// [`imagenet_topk`] with `k = 5`: the sanity check a timm / torchvision user runs first.
pub fn imagenet_top5(model: &CreatedModel, image: &RgbImage) -> Result<Vec<(String, f32)>> {
    imagenet_topk(model, image, 5)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(w: usize, h: usize, f: impl Fn(usize, usize, usize) -> u8) -> RgbImage {
        let mut px = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    px.push(f(x, y, c));
                }
            }
        }
        RgbImage::new(w, h, px).unwrap()
    }

    #[test]
    fn class_names_are_torchvisions() {
        let n = class_names();
        assert_eq!(n.len(), 1000);
        assert_eq!(n[0], "tench");
        assert_eq!(n[207], "golden retriever");
        assert_eq!(n[999], "toilet tissue");
        assert!(n.iter().all(|s| !s.trim().is_empty()));
    }

    #[test]
    fn center_crop_without_resize_copies_pixels() {
        // Short side already 256: no resize; crop offsets 16 (rows) and
        // round_half_even((341 - 224) / 2) = 58 (columns), as torchvision.
        let img = image(341, 256, |x, y, c| [(x % 256) as u8, y as u8, 7][c]);
        let out = preprocess(&img, 224, 224, &Normalization::Unit).unwrap();
        assert_eq!(out.len(), 3 * 224 * 224);
        assert_eq!(out[0], 58.0 / 255.0);
        assert_eq!(out[223], ((58 + 223) % 256) as f32 / 255.0);
        assert_eq!(out[224 * 224], 16.0 / 255.0);
        assert_eq!(out[224 * 224 + 223 * 224], (16.0 + 223.0) / 255.0);
        assert!(out[2 * 224 * 224..].iter().all(|&v| v == 7.0 / 255.0));
    }

    #[test]
    fn downscaling_is_antialiased_and_normalised() {
        // A constant image stays constant at any scale, then is normalised.
        let img = image(1000, 700, |_, _, c| [200, 100, 50][c]);
        let norm = Normalization::imagenet();
        let out = preprocess(&img, 224, 224, &norm).unwrap();
        let want = |c: usize| {
            let Normalization::MeanStd { mean, std } = &norm else {
                unreachable!()
            };
            ([200.0f32, 100.0, 50.0][c] / 255.0 - mean[c]) / std[c]
        };
        for c in 0..3 {
            let plane = &out[c * 224 * 224..(c + 1) * 224 * 224];
            assert!(plane.iter().all(|v| (v - want(c)).abs() < 1e-5), "channel {c}");
        }
        // A one-pixel checkerboard shrunk 3x averages out (plain bilinear would pick
        // single pixels and keep the pattern at full contrast).
        let img = image(768, 768, |x, y, _| if (x + y) % 2 == 0 { 255 } else { 0 });
        let out = preprocess(&img, 224, 224, &Normalization::Unit).unwrap();
        assert!(out.iter().all(|v| (v - 0.5).abs() < 0.1), "aliasing");
    }

    #[test]
    fn bad_buffers_are_errors() {
        assert!(RgbImage::new(2, 2, vec![0; 11]).is_err());
        assert!(RgbImage::new(0, 2, vec![]).is_err());
    }
}
