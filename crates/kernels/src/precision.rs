//! Mixed precision: f32 parameters used with half-precision activations.
//!
//! digitlab keeps every parameter in f32 (the "master weights" the optimizer
//! updates). When the activations are bf16 or f16 (`dtype = "bf16"`), each layer
//! casts its parameters to the activations' dtype at use, as PyTorch's autocast
//! does. The cast is an ordinary candle op, so its backward converts the gradient
//! back to f32 and the f32 variables receive it.
use candle_core::{DType, Result, Tensor};

/// Whether `dtype` is a half-precision float (bf16 or f16).
pub fn is_half(dtype: DType) -> bool {
    matches!(dtype, DType::BF16 | DType::F16)
}

/// `param` in the dtype of the activations `x` when `x` is half precision and
/// `param` is not; otherwise `param` unchanged (so a genuine mismatch still errors
/// where it always did).
pub fn cast_like(param: &Tensor, x: &Tensor) -> Result<Tensor> {
    if is_half(x.dtype()) && param.dtype() != x.dtype() {
        param.to_dtype(x.dtype())
    } else {
        Ok(param.clone())
    }
}

/// [`cast_like`] for an optional parameter (a bias).
pub fn cast_opt_like(param: Option<&Tensor>, x: &Tensor) -> Result<Option<Tensor>> {
    param.map(|p| cast_like(p, x)).transpose()
}

/// `x`, `w` and `b` (half-precision values) as f32, exactly: the CPU paths compute
/// half-precision layers with f32 sums, as GPU kernels do.
pub fn widen(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<(Tensor, Tensor, Option<Tensor>)> {
    let f = |t: &Tensor| t.to_dtype(DType::F32);
    Ok((f(x)?, f(w)?, b.map(f).transpose()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn casts_only_for_half_activations_and_keeps_the_gradient() {
        let w = Var::from_vec(vec![1.5f32, -2.0], 2, &Device::Cpu).unwrap();
        let x32 = Tensor::new(&[1f32, 1.0], &Device::Cpu).unwrap();
        assert_eq!(cast_like(w.as_tensor(), &x32).unwrap().dtype(), DType::F32);
        let x = x32.to_dtype(DType::BF16).unwrap();
        let wc = cast_like(w.as_tensor(), &x).unwrap();
        assert_eq!(wc.dtype(), DType::BF16);
        let loss = (wc * &x).unwrap().sum_all().unwrap().to_dtype(DType::F32).unwrap();
        let grads = loss.backward().unwrap();
        let g = grads.get(w.as_tensor()).expect("the f32 master weight gets a gradient");
        assert_eq!(g.dtype(), DType::F32);
        assert_eq!(g.to_vec1::<f32>().unwrap(), [1.0, 1.0]);
    }
}
