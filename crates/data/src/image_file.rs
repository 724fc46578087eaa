//! Reading a PNG or JPEG the way a person sees it on screen, for prediction.
//!
//! Every colour type and bit depth the `image` crate decodes is accepted: gray,
//! gray + alpha, RGB, RGBA, palette (expanded by the PNG decoder), 8 or 16 bits
//! per sample (16-bit is scaled to 8). Transparent pixels are composited on
//! **white**, the background an image viewer shows them on, so a black digit drawn
//! on a transparent canvas reads as black on white (then `--invert auto` turns it
//! into the white-on-black of MNIST). Colour becomes gray with the same ITU-R 601
//! weights as the training pipeline.
//!
//! An image far off the model's input size is refused rather than silently
//! squeezed: more than [`MAX_SCALE`] times larger or smaller than the expected
//! size in either dimension.
use crate::dataset::ImageShape;
use crate::error::{DataError, Result};
use std::path::Path;

/// Largest factor by which an image may differ from the model's input size, in
/// either dimension, before it is refused.
pub const MAX_SCALE: usize = 4;

/// The pixels of the image at `path`, composited on white, as u8 CHW with
/// `channels` (1 or 3) channels at the image's own size; `expected` is the
/// model's `[height, width]`, checked against [`MAX_SCALE`].
pub fn load_image_as_seen(path: &Path, channels: usize, expected: [usize; 2]) -> Result<(Vec<u8>, ImageShape)> {
    let img =
        image::open(path).map_err(|e| DataError::format(path, format!("not a readable PNG or JPEG image: {e}")))?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let [eh, ew] = expected;
    let far = |n: usize, e: usize| n == 0 || n > e.saturating_mul(MAX_SCALE) || n.saturating_mul(MAX_SCALE) < e;
    if far(w, ew) || far(h, eh) {
        return Err(DataError::format(
            path,
            format!(
                "image is {w}x{h} pixels but the model expects {ew}x{eh}; images more than {MAX_SCALE}x larger \
                 or smaller in a dimension are refused: crop or resize it to about {ew}x{eh} first"
            ),
        ));
    }
    let rgba = img.to_rgba32f();
    let plane = w * h;
    let mut rgb = vec![0f32; 3 * plane];
    for (i, p) in rgba.pixels().enumerate() {
        let [r, g, b, a] = p.0;
        let a = a.clamp(0.0, 1.0);
        for (ch, v) in [r, g, b].into_iter().enumerate() {
            rgb[ch * plane + i] = v.clamp(0.0, 1.0) * a + (1.0 - a);
        }
    }
    let to_u8 = |v: f32| (v * 255.0).round().clamp(0.0, 255.0) as u8;
    let pixels = match channels {
        1 => (0..plane)
            .map(|i| to_u8(0.299 * rgb[i] + 0.587 * rgb[plane + i] + 0.114 * rgb[2 * plane + i]))
            .collect(),
        3 => rgb.into_iter().map(to_u8).collect(),
        c => {
            return Err(DataError::Invalid(format!(
                "images can be read as 1 or 3 channels, the model takes {c}"
            )))
        }
    };
    Ok((pixels, ImageShape::new(channels, h, w)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageBuffer, Luma, LumaA, Rgb, Rgba};

    fn gray_of(path: &Path) -> Vec<u8> {
        load_image_as_seen(path, 1, [8, 8]).unwrap().0
    }

    #[test]
    fn every_colour_type_reads_as_it_looks() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        // A black stroke (column 4) on white, in every encoding.
        let on = |x: u32| x == 4;
        ImageBuffer::from_fn(8, 8, |x, _| Luma([if on(x) { 0u8 } else { 255 }]))
            .save(p("gray.png"))
            .unwrap();
        ImageBuffer::from_fn(8, 8, |x, _| Luma([if on(x) { 0u16 } else { 65535 }]))
            .save(p("gray16.png"))
            .unwrap();
        ImageBuffer::from_fn(8, 8, |x, _| Rgb(if on(x) { [0u8; 3] } else { [255; 3] }))
            .save(p("rgb.png"))
            .unwrap();
        ImageBuffer::from_fn(8, 8, |x, _| Rgb(if on(x) { [0u16; 3] } else { [65535; 3] }))
            .save(p("rgb16.png"))
            .unwrap();
        // Transparent background (black but alpha 0) must show as white.
        ImageBuffer::from_fn(8, 8, |x, _| LumaA(if on(x) { [0u8, 255] } else { [0, 0] }))
            .save(p("gray_alpha.png"))
            .unwrap();
        ImageBuffer::from_fn(8, 8, |x, _| Rgba(if on(x) { [0u8, 0, 0, 255] } else { [0, 0, 0, 0] }))
            .save(p("rgba.png"))
            .unwrap();
        ImageBuffer::from_fn(8, 8, |x, _| {
            Rgba(if on(x) { [0u16, 0, 0, 65535] } else { [0, 0, 0, 0] })
        })
        .save(p("rgba16.png"))
        .unwrap();
        ImageBuffer::from_fn(8, 8, |x, _| Rgb(if on(x) { [0u8; 3] } else { [255; 3] }))
            .save(p("rgb.jpg"))
            .unwrap();
        std::fs::write(p("palette.png"), palette_png()).unwrap();
        let expected: Vec<u8> = (0..64).map(|i| if on(i % 8) { 0 } else { 255 }).collect();
        for name in [
            "gray.png",
            "gray16.png",
            "rgb.png",
            "rgb16.png",
            "gray_alpha.png",
            "rgba.png",
            "rgba16.png",
            "palette.png",
        ] {
            assert_eq!(gray_of(&p(name)), expected, "{name}");
        }
        // JPEG is lossy: close, not equal.
        let jpg = gray_of(&p("rgb.jpg"));
        assert!(
            jpg.iter()
                .zip(&expected)
                .all(|(a, b)| (*a as i32 - *b as i32).abs() < 60),
            "{jpg:?}"
        );
        // Half-transparent black on white is mid gray.
        ImageBuffer::from_fn(8, 8, |_, _| Rgba([0u8, 0, 0, 128]))
            .save(p("half.png"))
            .unwrap();
        assert!(gray_of(&p("half.png")).iter().all(|&v| (126..=128).contains(&v)));
        // Three channels on request.
        let (rgb, shape) = load_image_as_seen(&p("rgba.png"), 3, [8, 8]).unwrap();
        assert_eq!((shape, rgb.len()), (ImageShape::new(3, 8, 8), 192));
    }

    /// An 8x8 indexed-colour PNG (palette: white, black), column 4 black.
    fn palette_png() -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, 8, 8);
        enc.set_color(png::ColorType::Indexed);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_palette(vec![255, 255, 255, 0, 0, 0]);
        let mut w = enc.write_header().unwrap();
        let data: Vec<u8> = (0..64).map(|i| u8::from(i % 8 == 4)).collect();
        w.write_image_data(&data).unwrap();
        drop(w);
        out
    }

    #[test]
    fn far_off_sizes_are_refused_with_both_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.png");
        ImageBuffer::from_fn(200, 20, |_, _| Luma([0u8])).save(&big).unwrap();
        let e = load_image_as_seen(&big, 1, [28, 28]).unwrap_err().to_string();
        assert!(
            e.contains("big.png") && e.contains("200x20") && e.contains("28x28"),
            "{e}"
        );
        let ok = dir.path().join("ok.png");
        ImageBuffer::from_fn(100, 10, |_, _| Luma([0u8])).save(&ok).unwrap();
        load_image_as_seen(&ok, 1, [28, 28]).unwrap();
        let text = dir.path().join("notes.png");
        std::fs::write(&text, b"not an image").unwrap();
        let e = load_image_as_seen(&text, 1, [28, 28]).unwrap_err().to_string();
        assert!(e.contains("notes.png") && e.contains("not a readable"), "{e}");
    }
}
