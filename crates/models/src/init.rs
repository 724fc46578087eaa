//! Seeded parameter initialisation.
//!
//! candle's CPU backend cannot be seeded (`Device::set_seed` fails on CPU), so a
//! `VarBuilder` over a plain `VarMap` gives different weights on every run.
//! [`SeededVarMap`] is a `VarMap` backend that draws every new variable from one
//! ChaCha8 stream in creation order: the same model, seed and build order always
//! give the same weights, on any device.
use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::init::{Init, NormalOrUniform};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use std::sync::Mutex;

/// A `VarMap` whose new variables are initialised from a seeded generator.
pub struct SeededVarMap {
    map: VarMap,
    rng: Mutex<ChaCha8Rng>,
}

impl SeededVarMap {
    pub fn new(map: VarMap, seed: u64) -> Self {
        Self {
            map,
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
        }
    }

    /// A `VarBuilder` creating variables in `map` with weights drawn from `seed`.
    pub fn var_builder(map: &VarMap, seed: u64, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(Self::new(map.clone(), seed)), dtype, device.clone())
    }

    fn sample(&self, shape: &Shape, init: Init) -> Vec<f64> {
        let n = shape.elem_count();
        let mut rng = self.rng.lock().expect("init rng lock poisoned");
        let uniform = |rng: &mut ChaCha8Rng, lo: f64, up: f64| -> Vec<f64> {
            (0..n)
                .map(|_| if up > lo { rng.random_range(lo..up) } else { lo })
                .collect()
        };
        let normal = |rng: &mut ChaCha8Rng, mean: f64, std: f64| -> Vec<f64> {
            match Normal::new(mean, std.max(0.0)) {
                Ok(d) => (0..n).map(|_| d.sample(rng)).collect(),
                Err(_) => vec![mean; n],
            }
        };
        match init {
            Init::Const(c) => vec![c; n],
            Init::Uniform { lo, up } => uniform(&mut rng, lo, up),
            Init::Randn { mean, stdev } => normal(&mut rng, mean, stdev),
            Init::Kaiming {
                dist,
                fan,
                non_linearity,
            } => {
                let std = non_linearity.gain() / (fan.for_shape(shape).max(1) as f64).sqrt();
                match dist {
                    NormalOrUniform::Uniform => {
                        let b = 3f64.sqrt() * std;
                        uniform(&mut rng, -b, b)
                    }
                    NormalOrUniform::Normal => normal(&mut rng, 0.0, std),
                }
            }
        }
    }
}

impl SimpleBackend for SeededVarMap {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut data = self.map.data().lock().expect("varmap lock poisoned");
        if let Some(v) = data.get(name) {
            let t = v.as_tensor();
            if t.shape() != &s {
                candle_core::bail!("shape mismatch for {name}: stored {:?}, asked {:?}", t.shape(), s)
            }
            return t.to_dtype(dtype);
        }
        let values = self.sample(&s, h);
        let var = Var::from_tensor(&Tensor::from_vec(values, s, dev)?.to_dtype(dtype)?)?;
        let t = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        SimpleBackend::get_unchecked(&self.map, name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.map.data().lock().expect("varmap lock poisoned").contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weights(seed: u64) -> Vec<f32> {
        let map = VarMap::new();
        let vb = SeededVarMap::var_builder(&map, seed, DType::F32, &Device::Cpu);
        let l = crate::layers::linear(4, 3, vb.pp("fc")).unwrap();
        l.weight().flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn same_seed_same_weights() {
        assert_eq!(weights(1), weights(1));
        assert_ne!(weights(1), weights(2));
        // PyTorch's default Linear bound is 1/sqrt(fan_in) = 0.5 here.
        assert!(weights(3).iter().all(|w| w.abs() <= 0.5));
    }
}
