//! Eval-mode batch norm as one per-channel affine pass (+ ReLU), for inference.
//!
//! candle_nn's eval-mode `BatchNorm` is four broadcast passes over the activations
//! (subtract the mean, divide by the std, multiply by the weight, add the bias);
//! with a ReLU after it, five. When nothing needs a gradient (feature extraction
//! with frozen weights) this computes `y = act(x * a[c] + s[c])` with
//! `a = weight / sqrt(var + eps)`, `s = bias - mean * a`, in one pass.
use crate::cpu::{self, all_cpu_f32, f32_data};
use crate::threading::for_each_chunk;
use crate::Activation;
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

/// Eval-mode batch norm over dim 1 of `x` (`[B, C, ...]`), then `act`.
///
/// The fused pass is used for CPU f32 tensors when no input tracks gradients;
/// otherwise candle_nn's eval-mode composition runs, followed by `act`.
pub fn batch_norm_eval(
    x: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    weight_and_bias: Option<(&Tensor, &Tensor)>,
    eps: f64,
    act: Activation,
) -> Result<Tensor> {
    if crate::precision::is_half(x.dtype()) {
        // Normalise in f32 (as autocast does): the statistics stay exact.
        let x32 = x.to_dtype(candle_core::DType::F32)?;
        let y = batch_norm_eval(&x32, running_mean, running_var, weight_and_bias, eps, act)?;
        return y.to_dtype(x.dtype());
    }
    let mut ts = vec![x, running_mean, running_var];
    if let Some((w, b)) = weight_and_bias {
        ts.push(w);
        ts.push(b);
    }
    // The running statistics are constants here (candle_nn keeps them as `Var`s so
    // that training can update them, and detaches them in eval mode), so only the
    // input and the affine parameters decide whether a gradient is needed.
    let no_grad = !x.track_op() && weight_and_bias.is_none_or(|(w, b)| !w.track_op() && !b.track_op());
    if x.rank() >= 2 && no_grad && all_cpu_f32(&ts) {
        crate::runtime::init();
        let c = x.dim(1)?;
        let mean: Vec<f32> = running_mean.flatten_all()?.to_vec1()?;
        let var: Vec<f32> = running_var.flatten_all()?.to_vec1()?;
        let (w, b): (Vec<f32>, Vec<f32>) = match weight_and_bias {
            Some((w, b)) => (w.flatten_all()?.to_vec1()?, b.flatten_all()?.to_vec1()?),
            None => (vec![1.0; c], vec![0.0; c]),
        };
        if [mean.len(), var.len(), w.len(), b.len()].iter().any(|&n| n != c) {
            bail!("batch_norm_eval: statistics and affine parameters must have {c} values")
        }
        let scale: Vec<f32> = (0..c)
            .map(|i| (f64::from(w[i]) / (f64::from(var[i]) + eps).sqrt()) as f32)
            .collect();
        let shift: Vec<f32> = (0..c).map(|i| b[i] - mean[i] * scale[i]).collect();
        let inner: usize = x.dims()[2..].iter().product();
        return x.apply_op1_no_bwd(&Affine {
            scale,
            shift,
            inner,
            act,
        });
    }
    batch_norm_eval_reference(x, running_mean, running_var, weight_and_bias, eps, act)
}

/// candle_nn's eval-mode `BatchNorm::forward_t(x, false)`, then `act`.
pub fn batch_norm_eval_reference(
    x: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    weight_and_bias: Option<(&Tensor, &Tensor)>,
    eps: f64,
    act: Activation,
) -> Result<Tensor> {
    let target: Vec<usize> = x
        .dims()
        .iter()
        .enumerate()
        .map(|(i, v)| if i == 1 { *v } else { 1 })
        .collect();
    let y = x
        .broadcast_sub(&running_mean.detach().reshape(target.as_slice())?)?
        .broadcast_div(&(running_var.detach().reshape(target.as_slice())? + eps)?.sqrt()?)?;
    let y = match weight_and_bias {
        None => y,
        Some((w, b)) => y
            .broadcast_mul(&w.reshape(target.as_slice())?)?
            .broadcast_add(&b.reshape(target.as_slice())?)?,
    };
    act.apply_reference(&y)
}

struct Affine {
    scale: Vec<f32>,
    shift: Vec<f32>,
    inner: usize,
    act: Activation,
}

impl CustomOp1 for Affine {
    fn name(&self) -> &'static str {
        "digitlab-batch-norm-eval"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu::contiguous(f32_data(s, "batch_norm_eval")?, l)?;
        let c = self.scale.len();
        let mut out = cpu::zeros(x.len());
        let act = self.act;
        for_each_plane(&mut out, self.inner, c, |ch, offset, dst| {
            let (a, b) = (self.scale[ch], self.shift[ch]);
            let src = &x[offset..offset + dst.len()];
            for (o, v) in dst.iter_mut().zip(src) {
                *o = v * a + b;
            }
            act.apply_in_place(dst);
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// Calls `f(channel, offset, run)` on every run of `out` that belongs to one
/// channel plane (`out` is `[B, channels, inner]`; `offset` is the run's position
/// in `out`), split over threads for big arrays. A run is a whole plane or, where
/// a thread's chunk starts or ends inside one, part of it.
pub(crate) fn for_each_plane(
    out: &mut [f32],
    inner: usize,
    channels: usize,
    f: impl Fn(usize, usize, &mut [f32]) + Sync,
) {
    let inner = inner.max(1);
    for_each_chunk(out, |start, chunk| {
        let mut idx = start;
        let end = start + chunk.len();
        while idx < end {
            let plane = idx / inner;
            let stop = ((plane + 1) * inner).min(end);
            f(plane % channels, idx, &mut chunk[idx - start..stop - start]);
            idx = stop;
        }
    });
}
