#![allow(dead_code)]
use candle_core::{DType, Device, Result, Tensor, Var};

/// Deterministic values in about [-1, 1], different for each `seed`.
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    (0..n)
        .map(|i| (((i as f64 + 1.0) * 0.7548776662 + seed as f64 * 0.5698402910).fract() * 2.0 - 1.0) as f32)
        .collect()
}

pub fn tensor(shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(values(n, seed), shape, &Device::Cpu).unwrap()
}

pub fn var(shape: &[usize], seed: u64) -> Var {
    Var::from_tensor(&tensor(shape, seed)).unwrap()
}

/// max |a - b| / max(max |b|, 1e-6).
pub fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a.to_dtype(DType::F32).unwrap();
    let b = b.to_dtype(DType::F32).unwrap();
    let diff: f32 = (&a - &b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap();
    let scale: f32 = b
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap();
    diff / scale.max(1e-6)
}

/// `sum(y * r)` for a fixed pseudo-random `r`: a loss whose gradient is `r`.
pub fn weighted_sum(y: &Tensor, seed: u64) -> Result<Tensor> {
    let r = tensor(y.dims(), seed).to_dtype(y.dtype())?;
    (y * r)?.sum_all()
}

/// Central finite-difference gradient of `f` at `x` (f64 accumulation of f32
/// evaluations), for every element.
pub fn finite_difference(x: &Tensor, eps: f32, f: impl Fn(&Tensor) -> f64) -> Vec<f64> {
    let base: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
    (0..base.len())
        .map(|i| {
            let mut plus = base.clone();
            plus[i] += eps;
            let mut minus = base.clone();
            minus[i] -= eps;
            let tp = Tensor::from_vec(plus, x.dims(), &Device::Cpu).unwrap();
            let tm = Tensor::from_vec(minus, x.dims(), &Device::Cpu).unwrap();
            (f(&tp) - f(&tm)) / (2.0 * eps as f64)
        })
        .collect()
}

/// Asserts two gradients agree: max |a - b| <= tol * max(max |b|, 1).
pub fn assert_close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let (i, diff) = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .enumerate()
        .fold((0, 0.0), |m, (i, d)| if d > m.1 { (i, d) } else { m });
    assert!(
        diff <= tol * scale,
        "{what}: max diff {diff} at {i} ({} vs {}), scale {scale}",
        a[i],
        b[i]
    );
}

pub fn to_f64(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}
