//! Per-batch image transforms: u8 pixels in, normalised f32 out.
//!
//! Datasets stay u8 in memory; a [`Pipeline`] turns one image at a time into
//! f32 (channel conversion, augmentation, bilinear resize, normalisation), so a
//! 32->224 resize of SVHN never materialises 11 GB of floats.
use crate::augment::Augment;
use crate::dataset::ImageShape;
use crate::error::{DataError, Result};
use rand::Rng;

/// How pixel values (u8 0..255) become model inputs.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Normalization {
    /// x / 255, in [0, 1].
    #[default]
    Unit,
    /// x / 127.5 - 1, in [-1, 1].
    Symmetric,
    /// (x / 255 - mean[c]) / std[c], per channel (e.g. ImageNet statistics).
    MeanStd { mean: Vec<f32>, std: Vec<f32> },
}

impl Normalization {
    /// ImageNet mean/std used by torchvision and timm backbones.
    pub fn imagenet() -> Self {
        Normalization::MeanStd {
            mean: vec![0.485, 0.456, 0.406],
            std: vec![0.229, 0.224, 0.225],
        }
    }

    fn check(&self, channels: usize) -> Result<()> {
        if let Normalization::MeanStd { mean, std } = self {
            if mean.len() != channels || std.len() != channels {
                return Err(DataError::Invalid(format!(
                    "normalisation has {} means and {} stds but images have {channels} channels",
                    mean.len(),
                    std.len()
                )));
            }
            if let Some(s) = std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
                return Err(DataError::Invalid(format!(
                    "normalisation std must be positive and finite, found {s}"
                )));
            }
        }
        Ok(())
    }

    /// (scale, offset) per channel so that value = unit * scale + offset.
    fn affine(&self, channels: usize) -> Vec<(f32, f32)> {
        match self {
            Normalization::Unit => vec![(1.0, 0.0); channels],
            Normalization::Symmetric => vec![(2.0, -1.0); channels],
            Normalization::MeanStd { mean, std } => mean.iter().zip(std).map(|(m, s)| (1.0 / s, -m / s)).collect(),
        }
    }
}

/// What happens to each image on its way into a batch, in this order:
/// channel conversion, augmentation (training only), resize, normalisation.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// Output channels (1 or 3): gray is replicated to RGB, RGB becomes ITU-R 601 luma.
    #[serde(default)]
    pub channels: Option<usize>,
    /// Output `[height, width]`, by bilinear interpolation (PyTorch's
    /// `interpolate(mode="bilinear", align_corners=False)` without antialiasing).
    #[serde(default)]
    pub resize: Option<[usize; 2]>,
    /// Random augmentation, applied to training batches only.
    #[serde(default)]
    pub augment: Option<Augment>,
    #[serde(default)]
    pub normalize: Normalization,
}

impl Pipeline {
    /// Shape of the images this pipeline produces from `input`.
    pub fn output_shape(&self, input: ImageShape) -> ImageShape {
        let c = self.channels.unwrap_or(input.channels);
        let [h, w] = self.resize.unwrap_or([input.height, input.width]);
        ImageShape::new(c, h, w)
    }

    /// Checks the pipeline fits images of shape `input`.
    pub fn validate(&self, input: ImageShape) -> Result<()> {
        let out = self.output_shape(input);
        if let Some(c) = self.channels {
            if !(c == 1 || c == 3) || !(input.channels == 1 || input.channels == 3) {
                return Err(DataError::Invalid(format!(
                    "channel conversion supports 1 and 3 channels, asked {} -> {c}",
                    input.channels
                )));
            }
        }
        if out.height == 0 || out.width == 0 {
            return Err(DataError::Invalid(format!(
                "resize target {}x{} is empty",
                out.height, out.width
            )));
        }
        if let Some(a) = &self.augment {
            a.validate()?;
            a.validate_for(input.height, input.width)?;
        }
        self.normalize.check(out.channels)
    }

    /// Transforms one u8 CHW image of shape `input` into `out` (length
    /// `output_shape(input).numel()`). Augmentation runs only when `rng` is given.
    pub fn apply<R: Rng>(
        &self,
        src: &[u8],
        input: ImageShape,
        rng: Option<&mut R>,
        out: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        let oshape = self.output_shape(input);
        debug_assert_eq!(src.len(), input.numel());
        debug_assert_eq!(out.len(), oshape.numel());
        // 1. to f32 in [0, 1] with channel conversion.
        let plane = input.height * input.width;
        let c = oshape.channels;
        let mut img: Vec<f32> = std::mem::take(scratch);
        img.clear();
        img.resize(c * plane, 0.0);
        match (input.channels, c) {
            (1, 3) => {
                for ch in 0..3 {
                    for (d, &s) in img[ch * plane..(ch + 1) * plane].iter_mut().zip(src) {
                        *d = s as f32 / 255.0;
                    }
                }
            }
            (3, 1) => {
                for (i, d) in img.iter_mut().enumerate() {
                    *d = (0.299 * src[i] as f32 + 0.587 * src[plane + i] as f32 + 0.114 * src[2 * plane + i] as f32)
                        / 255.0;
                }
            }
            _ => {
                for (d, &s) in img.iter_mut().zip(src) {
                    *d = s as f32 / 255.0;
                }
            }
        }
        // 2. augmentation on the unit-range image.
        if let (Some(aug), Some(rng)) = (&self.augment, rng) {
            aug.apply(&mut img, c, input.height, input.width, rng);
        }
        // 3. resize straight into `out`, or copy.
        if (oshape.height, oshape.width) != (input.height, input.width) {
            crate::resize::resize_bilinear(&img, c, input.height, input.width, oshape.height, oshape.width, out);
        } else {
            out.copy_from_slice(&img);
        }
        // 4. normalisation.
        let oplane = oshape.height * oshape.width;
        for (ch, (scale, offset)) in self.normalize.affine(c).into_iter().enumerate() {
            for v in &mut out[ch * oplane..(ch + 1) * oplane] {
                *v = *v * scale + offset;
            }
        }
        *scratch = img;
    }

    /// A lookup table that does all of [`Pipeline::apply`] in one pass when each
    /// output pixel depends on one input byte alone: no resize, no RGB-to-gray
    /// conversion, and no augmentation (`augmenting`: the images are augmented, as
    /// training batches are when the pipeline has augmentation). `None` otherwise.
    pub fn pixel_table(&self, input: ImageShape, augmenting: bool) -> Option<PixelTable> {
        let out = self.output_shape(input);
        if (augmenting && self.augment.is_some()) || (out.height, out.width) != (input.height, input.width) {
            return None;
        }
        let from_gray = match (input.channels, out.channels) {
            (a, b) if a == b => false,
            (1, 3) => true,
            _ => return None,
        };
        // The very operations of `apply` (divide, then scale and offset, unfused),
        // so that the table's values are bit-identical to it.
        let table = self
            .normalize
            .affine(out.channels)
            .into_iter()
            .map(|(scale, offset)| std::array::from_fn(|b| (b as u8 as f32 / 255.0) * scale + offset))
            .collect();
        Some(PixelTable {
            plane: input.height * input.width,
            from_gray,
            table,
        })
    }
}

/// [`Pipeline::pixel_table`]: the output value of every byte, per channel.
#[derive(Debug, Clone)]
pub struct PixelTable {
    plane: usize,
    from_gray: bool,
    table: Vec<[f32; 256]>,
}

impl PixelTable {
    /// Converts one u8 CHW image into `out`, as [`Pipeline::apply`] would.
    pub fn apply(&self, src: &[u8], out: &mut [f32]) {
        let plane = self.plane;
        debug_assert_eq!(out.len(), plane * self.table.len());
        for (ch, (lut, dst)) in self.table.iter().zip(out.chunks_exact_mut(plane)).enumerate() {
            let from = if self.from_gray { 0 } else { ch * plane };
            for (d, &b) in dst.iter_mut().zip(&src[from..from + plane]) {
                *d = lut[b as usize];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pixel_table_is_bit_identical_to_apply_and_only_offered_where_it_applies() {
        let gray = ImageShape::new(1, 5, 7);
        let rgb = ImageShape::new(3, 5, 7);
        let bytes = |n: usize| (0..n).map(|i| (i * 97 % 256) as u8).collect::<Vec<u8>>();
        let cases = [
            (Pipeline::default(), gray),
            (
                Pipeline {
                    normalize: Normalization::Symmetric,
                    ..Default::default()
                },
                gray,
            ),
            (
                Pipeline {
                    normalize: Normalization::imagenet(),
                    ..Default::default()
                },
                rgb,
            ),
            (
                Pipeline {
                    channels: Some(3),
                    normalize: Normalization::imagenet(),
                    ..Default::default()
                },
                gray,
            ),
        ];
        for (p, input) in cases {
            let src = bytes(input.numel());
            let n = p.output_shape(input).numel();
            let (mut want, mut got) = (vec![0f32; n], vec![1f32; n]);
            p.apply::<rand_chacha::ChaCha8Rng>(&src, input, None, &mut want, &mut Vec::new());
            p.pixel_table(input, false)
                .expect("a per-pixel pipeline")
                .apply(&src, &mut got);
            assert_eq!(
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{p:?}"
            );
        }
        let resize = Pipeline {
            resize: Some([3, 3]),
            ..Default::default()
        };
        assert!(resize.pixel_table(gray, false).is_none());
        let to_gray = Pipeline {
            channels: Some(1),
            ..Default::default()
        };
        assert!(to_gray.pixel_table(rgb, false).is_none());
        let augmented = Pipeline {
            augment: Some(Augment::default()),
            ..Default::default()
        };
        assert!(augmented.pixel_table(gray, true).is_none());
        assert!(
            augmented.pixel_table(gray, false).is_some(),
            "evaluation batches are not augmented"
        );
    }
    use rand_chacha::ChaCha8Rng;

    fn run(p: &Pipeline, src: &[u8], shape: ImageShape) -> Vec<f32> {
        let mut out = vec![0.0; p.output_shape(shape).numel()];
        p.apply::<ChaCha8Rng>(src, shape, None, &mut out, &mut Vec::new());
        out
    }

    #[test]
    fn normalisations_map_the_pixel_range() {
        let s = ImageShape::new(1, 1, 3);
        let src = [0u8, 51, 255];
        assert_eq!(run(&Pipeline::default(), &src, s), vec![0.0, 0.2, 1.0]);
        let sym = Pipeline {
            normalize: Normalization::Symmetric,
            ..Default::default()
        };
        let v = run(&sym, &src, s);
        assert!((v[0] + 1.0).abs() < 1e-6 && (v[2] - 1.0).abs() < 1e-6, "{v:?}");
        let ms = Pipeline {
            normalize: Normalization::MeanStd {
                mean: vec![0.5],
                std: vec![0.25],
            },
            ..Default::default()
        };
        let v = run(&ms, &src, s);
        assert!((v[0] + 2.0).abs() < 1e-6 && (v[2] - 2.0).abs() < 1e-6, "{v:?}");
    }

    #[test]
    fn channel_conversion_and_resize_shapes() {
        let s = ImageShape::new(1, 2, 2);
        let p = Pipeline {
            channels: Some(3),
            resize: Some([4, 4]),
            ..Default::default()
        };
        assert_eq!(p.output_shape(s), ImageShape::new(3, 4, 4));
        let v = run(&p, &[255, 255, 255, 255], s);
        assert!(v.iter().all(|x| (x - 1.0).abs() < 1e-6));
        let bad = Pipeline {
            normalize: Normalization::imagenet(),
            ..Default::default()
        };
        let e = bad.validate(s).unwrap_err().to_string();
        assert!(e.contains("3 means") && e.contains("1 channels"), "{e}");
    }
}
