//! Helpers shared by the integration tests.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor, Var};

pub const DEV: Device = Device::Cpu;

/// Deterministic SplitMix64 generator, so the tests need no extra dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn vec(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n).map(|_| self.range(lo, hi)).collect()
    }
    /// `rows` random probability distributions over `cols` outcomes (row-major), each
    /// entry zeroed with probability `zero_prob` (at least one entry per row stays > 0).
    pub fn distributions(&mut self, rows: usize, cols: usize, zero_prob: f64) -> Vec<f64> {
        let mut out = Vec::with_capacity(rows * cols);
        for _ in 0..rows {
            let keep = self.below(cols);
            let mut row: Vec<f64> = (0..cols)
                .map(|j| {
                    if j != keep && self.uniform() < zero_prob {
                        0.0
                    } else {
                        self.range(0.05, 1.0)
                    }
                })
                .collect();
            let s: f64 = row.iter().sum();
            row.iter_mut().for_each(|v| *v /= s);
            out.extend(row);
        }
        out
    }
    pub fn labels(&mut self, n: usize, classes: usize) -> Vec<u32> {
        (0..n).map(|_| self.below(classes) as u32).collect()
    }
}

pub fn t64(data: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_vec(data.to_vec(), shape, &DEV).unwrap()
}

pub fn t32(data: &[f64], shape: &[usize]) -> Tensor {
    t64(data, shape).to_dtype(DType::F32).unwrap()
}

pub fn labels_u32(data: &[u32]) -> Tensor {
    Tensor::from_vec(data.to_vec(), data.len(), &DEV).unwrap()
}

pub fn labels_i64(data: &[u32]) -> Tensor {
    let v: Vec<i64> = data.iter().map(|&x| x as i64).collect();
    Tensor::from_vec(v, data.len(), &DEV).unwrap()
}

/// A scalar tensor's value as f64, whatever its float dtype.
pub fn scalar(t: &Tensor) -> f64 {
    assert_eq!(t.rank(), 0, "expected a scalar, got shape {:?}", t.dims());
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

/// All values of a tensor, flattened, as f64.
pub fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

pub fn assert_close(actual: f64, expected: f64, tol: f64, what: &str) {
    assert!(
        (actual - expected).abs() <= tol,
        "{what}: got {actual}, expected {expected} (|diff| = {:e} > {tol:e})",
        (actual - expected).abs()
    );
}

pub fn assert_all_close(actual: &[f64], expected: &[f64], tol: f64, what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: length mismatch");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - e).abs() <= tol,
            "{what}[{i}]: got {a}, expected {e} (|diff| = {:e} > {tol:e})\nactual   = {actual:?}\nexpected = {expected:?}",
            (a - e).abs()
        );
    }
}

/// Gradient of the scalar `f(x)` w.r.t. `x` (f64) computed with candle's autograd.
pub fn autograd(x: &[f64], shape: &[usize], f: impl Fn(&Tensor) -> Tensor) -> (f64, Vec<f64>) {
    let var = Var::from_vec(x.to_vec(), shape, &DEV).unwrap();
    let loss = f(var.as_tensor());
    let grads = loss.backward().unwrap();
    let g = grads.get(var.as_tensor()).expect("no gradient for the input");
    assert_eq!(g.dims(), shape);
    (scalar(&loss), values(g))
}

/// Checks candle's gradient of the scalar function `f` at `x` against central finite
/// differences in f64: `|g - fd| <= 1e-6 · max(|g|, |fd|, 1e-2)` for every component
/// (relative error 1e-6; the floor keeps components that are ~0 from dividing by 0).
pub fn check_grad(what: &str, x: &[f64], shape: &[usize], f: impl Fn(&Tensor) -> Tensor) {
    const H: f64 = 1e-5;
    const REL: f64 = 1e-6;
    let (_, g) = autograd(x, shape, &f);
    let eval = |v: &[f64]| scalar(&f(&t64(v, shape)));
    let mut worst: f64 = 0.0;
    for i in 0..x.len() {
        let mut xp = x.to_vec();
        xp[i] += H;
        let mut xm = x.to_vec();
        xm[i] -= H;
        let fd = (eval(&xp) - eval(&xm)) / (2.0 * H);
        let rel = (g[i] - fd).abs() / g[i].abs().max(fd.abs()).max(1e-2);
        worst = worst.max(rel);
        assert!(
            rel <= REL,
            "{what}: gradient component {i}: autograd {} vs finite difference {fd} (relative error {rel:e})",
            g[i]
        );
    }
    eprintln!("{what}: worst relative error {worst:e} over {} components", x.len());
}

pub fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

pub fn softmax_rows(z: &[f64], cols: usize) -> Vec<f64> {
    z.chunks(cols)
        .flat_map(|row| {
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = row.iter().map(|v| (v - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(move |v| v / s)
        })
        .collect()
}

pub fn one_hot_rows(labels: &[u32], cols: usize) -> Vec<f64> {
    labels
        .iter()
        .flat_map(|&l| (0..cols).map(move |j| if j == l as usize { 1.0 } else { 0.0 }))
        .collect()
}
