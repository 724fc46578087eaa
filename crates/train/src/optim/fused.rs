//! Fused in-place updates for contiguous f32 CPU parameters: one pass over a
//! parameter, its gradient and its state, writing the parameter and the state where
//! they are, with no temporary tensors (the tensor-op form allocates one tensor per
//! operation, about ten per parameter for Adam, which dominates small steps).
//!
//! Every element is computed with exactly the roundings of the tensor-op form
//! (candle's `t * s`, `t / s` and `t + s` are `x * mul + add` in f32 with `mul`,
//! `add` rounded from f64; no fused multiply-add), so the fused and the tensor-op
//! updates give bit-identical values; `tests` checks it element by element.
use candle_core::{CpuStorage, Device, InplaceOp1, Layout, Result, Storage, Tensor};
use std::cell::RefCell;

/// Whether the fused path applies: every tensor a contiguous f32 CPU tensor of the
/// same element count, none sharing storage with another.
pub(super) fn applies(ts: &[&Tensor]) -> bool {
    let Some(first) = ts.first() else { return false };
    let ok = |t: &Tensor| {
        matches!(t.device(), Device::Cpu)
            && t.dtype() == candle_core::DType::F32
            && t.is_contiguous()
            && t.elem_count() == first.elem_count()
    };
    if !ts.iter().all(|t| ok(t)) {
        return false;
    }
    // Distinct storages: a shared one would be locked twice (and written while read).
    let addrs: Vec<usize> = ts.iter().map(|t| storage_addr(t)).collect();
    addrs.iter().enumerate().all(|(i, a)| !addrs[i + 1..].contains(a))
}

/// The address of `t`'s storage, the same for every tensor that shares it.
fn storage_addr(t: &Tensor) -> usize {
    let (guard, _) = t.storage_and_layout();
    &*guard as *const Storage as usize
}

/// Runs `f` on the f32 values of `t` (contiguous CPU f32), mutably, in place.
fn with_mut(t: &Tensor, f: impl FnMut(&mut [f32]) -> Result<()>) -> Result<()> {
    struct Op<F>(RefCell<F>);
    impl<F: FnMut(&mut [f32]) -> Result<()>> InplaceOp1 for Op<F> {
        fn name(&self) -> &'static str {
            "fused-optimizer-update"
        }
        fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
            let (CpuStorage::F32(v), Some((a, b))) = (s, l.contiguous_offsets()) else {
                candle_core::bail!("fused optimizer update: expected a contiguous f32 CPU tensor")
            };
            (self.0.borrow_mut())(&mut v[a..b])
        }
    }
    t.inplace_op1(&Op(RefCell::new(f)))
}

/// Runs `f` on the f32 values of `t` (contiguous CPU f32), read-only.
fn with_ref<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (guard, l) = t.storage_and_layout();
    match (&*guard, l.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => f(&v[a..b]),
        _ => candle_core::bail!("fused optimizer update: expected a contiguous f32 CPU tensor"),
    }
}

/// `f(g, p)` over the gradient `g` (read) and the parameter `p` (written), element
/// slices of equal length. Callers check [`applies`] first.
pub(super) fn update1(g: &Tensor, p: &Tensor, mut f: impl FnMut(&[f32], &mut [f32])) -> Result<()> {
    with_ref(g, |g| {
        with_mut(p, |p| {
            f(g, p);
            Ok(())
        })
    })
}

/// `f(g, p, s)`: as [`update1`] with one state tensor `s` (written).
pub(super) fn update2(
    g: &Tensor,
    p: &Tensor,
    s: &Tensor,
    mut f: impl FnMut(&[f32], &mut [f32], &mut [f32]),
) -> Result<()> {
    with_ref(g, |g| {
        with_mut(p, |p| {
            with_mut(s, |s| {
                f(g, p, s);
                Ok(())
            })
        })
    })
}

/// `f(g, p, s1, s2)`: as [`update1`] with two state tensors (written).
pub(super) fn update3(
    g: &Tensor,
    p: &Tensor,
    s1: &Tensor,
    s2: &Tensor,
    mut f: impl FnMut(&[f32], &mut [f32], &mut [f32], &mut [f32]),
) -> Result<()> {
    with_ref(g, |g| {
        with_mut(p, |p| {
            with_mut(s1, |s1| {
                with_mut(s2, |s2| {
                    f(g, p, s1, s2);
                    Ok(())
                })
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// candle's affine on one f32 value, as the fused loops write it: `x * mul + add`
    /// with both rounded from f64.
    fn affine(x: f32, mul: f64, add: f64) -> f32 {
        x * mul as f32 + add as f32
    }

    #[test]
    fn affine_matches_candle_bit_for_bit() {
        let xs: Vec<f32> = (0..257).map(|i| ((i as f32) * 0.37 - 40.0).sin() * 1e-3).collect();
        let t = Tensor::new(xs.as_slice(), &Device::Cpu).unwrap();
        for (mul, add) in [
            (0.9, 0.0),
            (1.0 - 0.999, 0.0),
            (1.0 / (1.0 - 0.999f64.powi(7)), 0.0),
            (1.0, 1e-8),
        ] {
            let want: Vec<f32> = t.affine(mul, add).unwrap().to_vec1().unwrap();
            let got: Vec<f32> = xs.iter().map(|&x| affine(x, mul, add)).collect();
            assert_eq!(
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "mul {mul} add {add}"
            );
        }
    }

    #[test]
    fn applies_only_to_distinct_contiguous_f32_cpu_tensors() {
        let a = Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::ones((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(applies(&[&a, &b]));
        assert!(!applies(&[&a, &a.clone()]), "shared storage");
        assert!(!applies(&[&a, &b.t().unwrap()]), "not contiguous");
        assert!(!applies(&[&a, &b.to_dtype(candle_core::DType::F64).unwrap()]));
        assert!(!applies(&[
            &a,
            &Tensor::ones(5, candle_core::DType::F32, &Device::Cpu).unwrap()
        ]));
    }

    #[test]
    fn updates_write_in_place() {
        let g = Tensor::new(&[1f32, 2., 3.], &Device::Cpu).unwrap();
        let p = Tensor::new(&[10f32, 20., 30.], &Device::Cpu).unwrap();
        let s = Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap();
        update2(&g, &p, &s, |g, p, s| {
            for i in 0..g.len() {
                s[i] = 2.0 * g[i];
                p[i] -= s[i];
            }
        })
        .unwrap();
        assert_eq!(p.to_vec1::<f32>().unwrap(), [8., 16., 24.]);
        assert_eq!(s.to_vec1::<f32>().unwrap(), [2., 4., 6.]);
    }
}
