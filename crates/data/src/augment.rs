//! Seeded random augmentation for training images (f32 CHW in [0, 1]).
use crate::error::{DataError, Result};
use rand::Rng;

/// Random augmentation parameters; every field defaults to "off".
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Augment {
    /// Random crop after zero padding by this many pixels on each side (torchvision
    /// `RandomCrop(size, padding)`): a random shift of up to `padding` pixels.
    #[serde(default)]
    pub crop_padding: usize,
    /// Maximum rotation in degrees (uniform in [-max, max]).
    #[serde(default)]
    pub max_rotation_deg: f32,
    /// Maximum translation as a fraction of the image size (uniform per axis).
    #[serde(default)]
    pub max_translate: f32,
    /// Brightness factor uniform in [1 - b, 1 + b].
    #[serde(default)]
    pub brightness: f32,
    /// Contrast factor uniform in [1 - c, 1 + c] around the image's mean luma.
    #[serde(default)]
    pub contrast: f32,
    /// Saturation factor uniform in [1 - s, 1 + s] (RGB only).
    #[serde(default)]
    pub saturation: f32,
}

impl Augment {
    /// Checks every range is sensible.
    pub fn validate(&self) -> Result<()> {
        let checks = [
            ("max_rotation_deg", self.max_rotation_deg, 0.0, 180.0),
            ("max_translate", self.max_translate, 0.0, 0.5),
            ("brightness", self.brightness, 0.0, 1.0),
            ("contrast", self.contrast, 0.0, 1.0),
            ("saturation", self.saturation, 0.0, 1.0),
        ];
        for (name, v, lo, hi) in checks {
            if !(lo..=hi).contains(&v) {
                return Err(DataError::Invalid(format!(
                    "augment.{name} must be in [{lo}, {hi}], got {v}"
                )));
            }
        }
        Ok(())
    }

    /// Checks the ranges that depend on the image size: a crop shift of more than half
    /// the smaller side would leave mostly padding (blank crops).
    pub fn validate_for(&self, height: usize, width: usize) -> Result<()> {
        let limit = height.min(width) / 2;
        if self.crop_padding > limit {
            return Err(DataError::Invalid(format!(
                "augment.crop_padding must be at most {limit} (half the smaller side) for {height}x{width} images, got {}",
                self.crop_padding
            )));
        }
        Ok(())
    }

    /// Augments `img` (channels x h x w, values in [0, 1]) in place.
    pub fn apply<R: Rng>(&self, img: &mut [f32], channels: usize, h: usize, w: usize, rng: &mut R) {
        let sym = |rng: &mut R, m: f32| if m > 0.0 { rng.random_range(-m..=m) } else { 0.0 };
        let angle = sym(rng, self.max_rotation_deg).to_radians();
        let mut dx = sym(rng, self.max_translate) * w as f32;
        let mut dy = sym(rng, self.max_translate) * h as f32;
        if self.crop_padding > 0 {
            let p = self.crop_padding as i64;
            dx += rng.random_range(-p..=p) as f32;
            dy += rng.random_range(-p..=p) as f32;
        }
        if angle != 0.0 || dx != 0.0 || dy != 0.0 {
            warp_affine(img, channels, h, w, angle, dx, dy);
        }
        let b = 1.0 + sym(rng, self.brightness);
        let c = 1.0 + sym(rng, self.contrast);
        let s = 1.0 + sym(rng, self.saturation);
        if b != 1.0 || c != 1.0 || (s != 1.0 && channels == 3) {
            jitter(img, channels, h * w, b, c, s);
        }
    }
}

/// Rotates by `angle` about the centre and shifts by (dx, dy) pixels, sampling
/// bilinearly with zero fill outside the source.
fn warp_affine(img: &mut [f32], channels: usize, h: usize, w: usize, angle: f32, dx: f32, dy: f32) {
    let src = img.to_vec();
    let (cy, cx) = ((h as f32 - 1.0) / 2.0, (w as f32 - 1.0) / 2.0);
    let (sin, cos) = angle.sin_cos();
    let at = |plane: &[f32], y: i64, x: i64| -> f32 {
        if y < 0 || x < 0 || y >= h as i64 || x >= w as i64 {
            0.0
        } else {
            plane[y as usize * w + x as usize]
        }
    };
    for ch in 0..channels {
        let plane = &src[ch * h * w..(ch + 1) * h * w];
        for y in 0..h {
            for x in 0..w {
                // Inverse map: output pixel -> source coordinate.
                let (ox, oy) = (x as f32 - cx - dx, y as f32 - cy - dy);
                let sx = cos * ox + sin * oy + cx;
                let sy = -sin * ox + cos * oy + cy;
                let (x0, y0) = (sx.floor(), sy.floor());
                let (fx, fy) = (sx - x0, sy - y0);
                let (x0, y0) = (x0 as i64, y0 as i64);
                let top = at(plane, y0, x0) * (1.0 - fx) + at(plane, y0, x0 + 1) * fx;
                let bottom = at(plane, y0 + 1, x0) * (1.0 - fx) + at(plane, y0 + 1, x0 + 1) * fx;
                img[ch * h * w + y * w + x] = top * (1.0 - fy) + bottom * fy;
            }
        }
    }
}

/// Brightness, contrast and saturation as in torchvision's `ColorJitter`.
fn jitter(img: &mut [f32], channels: usize, plane: usize, brightness: f32, contrast: f32, saturation: f32) {
    for v in img.iter_mut() {
        *v = (*v * brightness).clamp(0.0, 1.0);
    }
    let luma = |img: &[f32], i: usize| {
        if channels == 3 {
            0.299 * img[i] + 0.587 * img[plane + i] + 0.114 * img[2 * plane + i]
        } else {
            img[i]
        }
    };
    let mean = (0..plane).map(|i| luma(img, i)).sum::<f32>() / plane as f32;
    for v in img.iter_mut() {
        *v = ((*v - mean) * contrast + mean).clamp(0.0, 1.0);
    }
    if channels == 3 && saturation != 1.0 {
        for i in 0..plane {
            let g = luma(img, i);
            for ch in 0..3 {
                let v = &mut img[ch * plane + i];
                *v = ((*v - g) * saturation + g).clamp(0.0, 1.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_padding_is_limited_by_the_image_size() {
        let a = Augment {
            crop_padding: 1_000_000_000,
            ..Default::default()
        };
        let e = a.validate_for(8, 8).unwrap_err().to_string();
        assert!(e.contains("augment.crop_padding") && e.contains("at most 4"), "{e}");
        let ok = Augment {
            crop_padding: 4,
            ..Default::default()
        };
        ok.validate_for(32, 32).unwrap();
    }
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn off_is_identity_and_seeded_is_reproducible() {
        let img: Vec<f32> = (0..3 * 8 * 8).map(|v| (v % 17) as f32 / 17.0).collect();
        let mut same = img.clone();
        Augment::default().apply(&mut same, 3, 8, 8, &mut ChaCha8Rng::seed_from_u64(0));
        assert_eq!(same, img);
        let aug = Augment {
            crop_padding: 2,
            max_rotation_deg: 10.0,
            brightness: 0.2,
            saturation: 0.3,
            ..Default::default()
        };
        let (mut a, mut b) = (img.clone(), img.clone());
        aug.apply(&mut a, 3, 8, 8, &mut ChaCha8Rng::seed_from_u64(5));
        aug.apply(&mut b, 3, 8, 8, &mut ChaCha8Rng::seed_from_u64(5));
        assert_eq!(a, b);
        assert_ne!(a, img);
        assert!(a.iter().all(|v| (0.0..=1.0).contains(v)));
    }

    #[test]
    fn integer_shift_moves_pixels() {
        // A single bright pixel moves by (dx, dy) = (1, 2) with zero fill.
        let mut img = vec![0.0; 5 * 5];
        img[2 * 5 + 2] = 1.0;
        warp_affine(&mut img, 1, 5, 5, 0.0, 1.0, 2.0);
        assert!((img[4 * 5 + 3] - 1.0).abs() < 1e-6, "{img:?}");
        assert!((img.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn validate_rejects_out_of_range() {
        let e = Augment {
            max_translate: 0.9,
            ..Default::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("augment.max_translate"), "{e}");
    }
}
