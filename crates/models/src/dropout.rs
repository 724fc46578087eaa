//! Dropout with reproducible masks.
//!
//! candle-nn's `Dropout` draws its masks from the CPU's thread RNG, which cannot be
//! seeded (`Device::set_seed` fails on CPU), so two runs of one config that trained
//! with dropout ended with different weights. Here each layer draws from its own
//! ChaCha8 stream, keyed by the layer's name and the number of masks it has drawn:
//! the same config gives the same masks, run after run, on any device.
//!
//! The draw count lives in the layer, not in checkpoints: a run resumed with
//! `--resume` starts its dropout streams again from the first mask, so it is
//! reproducible but not bit-identical to the same run uninterrupted (runs
//! without dropout are).
use candle_core::{ModuleT, Result, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::atomic::{AtomicU64, Ordering};

/// Inverted dropout (as PyTorch's and candle's): in train mode each element is
/// zeroed with probability `p` and the others scaled by `1 / (1 - p)`; in eval
/// mode the input passes unchanged.
#[derive(Debug)]
pub struct SeededDropout {
    p: f32,
    seed: u64,
    /// Masks drawn so far: the next mask's position in the stream.
    draws: AtomicU64,
}

impl Clone for SeededDropout {
    fn clone(&self) -> Self {
        Self {
            p: self.p,
            seed: self.seed,
            draws: AtomicU64::new(self.draws.load(Ordering::Relaxed)),
        }
    }
}

impl SeededDropout {
    /// Drop probability `p` in `[0, 1)`; `stream` names the layer (its masks
    /// differ from those of a layer of another name).
    pub fn new(p: f32, stream: &str) -> Self {
        // FNV-1a: a stable hash (std's `DefaultHasher` may change between releases).
        let seed = stream.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
        });
        Self {
            p,
            seed,
            draws: AtomicU64::new(0),
        }
    }
    pub fn p(&self) -> f32 {
        self.p
    }
}

impl ModuleT for SeededDropout {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        if !train || self.p <= 0.0 {
            return Ok(xs.clone());
        }
        if self.p >= 1.0 {
            candle_core::bail!("dropout probability must be below 1, got {}", self.p)
        }
        let draw = self.draws.fetch_add(1, Ordering::Relaxed);
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(draw);
        let keep = 1.0 / (1.0 - self.p);
        let mask: Vec<f32> = (0..xs.elem_count())
            .map(|_| if rng.random::<f32>() >= self.p { keep } else { 0.0 })
            .collect();
        let mask = Tensor::from_vec(mask, xs.shape(), xs.device())?.to_dtype(xs.dtype())?;
        xs * mask
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn masks_repeat_across_instances_and_differ_between_draws_and_names() {
        let x = Tensor::ones((64, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
        let (a, b) = (SeededDropout::new(0.25, "fc"), SeededDropout::new(0.25, "fc"));
        let a1 = values(&a.forward_t(&x, true).unwrap());
        let a2 = values(&a.forward_t(&x, true).unwrap());
        assert_eq!(
            a1,
            values(&b.forward_t(&x, true).unwrap()),
            "same name, same first mask"
        );
        assert_ne!(a1, a2, "a new mask per draw");
        let other = values(&SeededDropout::new(0.25, "fc2").forward_t(&x, true).unwrap());
        assert_ne!(a1, other);
        // Inverted dropout: zeros or 1 / (1 - p), about p of them zero, mean near 1.
        assert!(a1.iter().all(|v| *v == 0.0 || (*v - 1.0 / 0.75).abs() < 1e-6));
        let zeros = a1.iter().filter(|v| **v == 0.0).count() as f64 / a1.len() as f64;
        assert!((zeros - 0.25).abs() < 0.05, "{zeros}");
        // Eval mode and p = 0 pass the input through; a clone continues the stream.
        assert_eq!(values(&a.forward_t(&x, false).unwrap()), values(&x));
        let c = a.clone();
        assert_eq!(
            values(&c.forward_t(&x, true).unwrap()),
            values(&a.forward_t(&x, true).unwrap())
        );
    }
}
