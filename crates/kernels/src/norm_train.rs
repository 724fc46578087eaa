//! Train-mode batch norm (+ ReLU) as one op, forward and backward.
//!
//! candle_nn's train-mode `BatchNorm::forward_t` transposes the input to
//! channels-first, copies it, then runs about ten broadcast ops (mean, subtract,
//! square, mean, add, sqrt, divide, multiply, add, transpose back), each a graph
//! node whose backward allocates again: about 30% of an MLP-with-batch-norm epoch
//! (perf, 2026-12-01). Here the per-channel mean and biased variance are summed in
//! f64 (one read of the input per statistic), the running statistics are updated in
//! place with candle_nn's formulas, and the output is one affine pass (+ ReLU). The
//! backward is one read for the per-channel sums of `dy` and `dy * x_hat` and one
//! pass for `dx`.
use crate::cpu::{self, f32_data, View};
use crate::norm::for_each_plane;
use crate::threading::{map_ranges, parts, LOOP_SERIAL_MAX_ELEMS};
use crate::Activation;
use candle_core::{bail, CpuStorage, CustomOp3, DType, InplaceOp1, Layout, Result, Shape, Tensor};

/// The running statistics of a batch norm and its update rule (candle_nn's
/// `BatchNorm` fields).
#[derive(Debug, Clone, Copy)]
pub struct RunningStats<'a> {
    pub mean: &'a Tensor,
    pub var: &'a Tensor,
    /// Weight of the batch's statistic in the update: `new = old * (1 - m) + batch * m`.
    pub momentum: f64,
}

/// Train-mode batch norm over dim 1 of `x` (`[B, C, ...]`), then `act`:
/// `act((x - mean) / sqrt(var + eps) * weight + bias)` with the batch's mean and
/// biased variance per channel, and the running statistics updated in place as
/// candle_nn does (`mean`, and the unbiased variance `var * n / (n - 1)`, where `n`
/// is the number of values per channel).
///
/// Returns `None`, touching nothing, when the kernel does not apply: tensors not
/// all contiguous-able CPU f32, running statistics not contiguous, fewer than two
/// values per channel, or a channel count that does not match. The caller then runs
/// candle_nn's own `BatchNorm::forward_t` (which owns the statistics as `Var`s).
pub fn batch_norm_train(
    x: &Tensor,
    stats: RunningStats,
    weight_and_bias: Option<(&Tensor, &Tensor)>,
    eps: f64,
    act: Activation,
) -> Result<Option<Tensor>> {
    let mut ts = vec![x, stats.mean, stats.var];
    if let Some((w, b)) = weight_and_bias {
        ts.extend([w, b]);
    }
    if x.rank() < 2 || !cpu::all_cpu_f32(&ts) {
        return Ok(None);
    }
    let c = x.dim(1)?;
    let n = x.elem_count() / c.max(1);
    let sized = |t: &Tensor| t.elem_count() == c && t.is_contiguous();
    if c == 0 || n < 2 || !ts[1..].iter().all(|t| sized(t)) {
        return Ok(None);
    }
    crate::runtime::init();
    let inner: usize = x.dims()[2..].iter().product();
    let xc = x.contiguous()?;
    let (mean, var) = {
        let xv = View::new(&xc, "batch_norm_train")?;
        channel_moments(xv.get(), c, inner)
    };
    update_running(stats.mean, |old, i| {
        old * (1.0 - stats.momentum) + mean[i] * stats.momentum
    })?;
    let unbias = n as f64 / (n as f64 - 1.0);
    update_running(stats.var, |old, i| {
        old * (1.0 - stats.momentum) + var[i] * unbias * stats.momentum
    })?;
    let invstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    let (w, b) = match weight_and_bias {
        Some((w, b)) => (w.clone(), b.clone()),
        // Constants (no gradient is asked for them): the op's code stays one.
        None => (
            Tensor::ones(c, DType::F32, x.device())?,
            Tensor::zeros(c, DType::F32, x.device())?,
        ),
    };
    let op = TrainOp {
        mean,
        invstd,
        inner,
        act,
    };
    Ok(Some(xc.apply_op3(&w, &b, op)?))
}

/// Per-channel mean and biased variance (two passes, f64 sums) of `x`, a
/// contiguous `[B, c, inner]` array.
fn channel_moments(x: &[f32], c: usize, inner: usize) -> (Vec<f64>, Vec<f64>) {
    let n = (x.len() / c) as f64;
    let mean = channel_sums(x, x, c, inner, |_, v, _| f64::from(v));
    let mean: Vec<f64> = mean.into_iter().map(|s| s / n).collect();
    let var = channel_sums(x, x, c, inner, |ch, v, _| {
        let d = f64::from(v) - mean[ch];
        d * d
    });
    (mean, var.into_iter().map(|s| s / n).collect())
}

/// `sum over b, i of f(ch, p[b, ch, i], q[b, ch, i])` for every channel `ch` of
/// two `[B, c, inner]` arrays, each channel summed by one thread in a fixed order
/// (the same bits for any thread count).
fn channel_sums(p: &[f32], q: &[f32], c: usize, inner: usize, f: impl Fn(usize, f32, f32) -> f64 + Sync) -> Vec<f64> {
    let parts = parts(c, p.len() / c, LOOP_SERIAL_MAX_ELEMS);
    map_ranges(c, parts, |_, range| {
        let mut acc = vec![0f64; range.len()];
        for (pi, qi) in p.chunks_exact(c * inner).zip(q.chunks_exact(c * inner)) {
            if inner == 1 {
                // `[B, c]` (an MLP's): one value per channel and row, walked as a row.
                let vals = pi[range.clone()].iter().zip(&qi[range.clone()]);
                for ((a, ch), (&u, &v)) in acc.iter_mut().zip(range.clone()).zip(vals) {
                    *a += f(ch, u, v);
                }
            } else {
                for (a, ch) in acc.iter_mut().zip(range.clone()) {
                    let plane = ch * inner..(ch + 1) * inner;
                    let vals = pi[plane.clone()].iter().zip(&qi[plane]);
                    *a += vals.map(|(&u, &v)| f(ch, u, v)).sum::<f64>();
                }
            }
        }
        acc
    })
    .concat()
}

/// `out[j] = f(channel of j, p[j], q[j])` over `[B, c, inner]` arrays, split over
/// threads for big ones.
fn map_channels(
    out: &mut [f32],
    p: &[f32],
    q: &[f32],
    c: usize,
    inner: usize,
    f: impl Fn(usize, f32, f32) -> f32 + Sync,
) {
    if inner == 1 {
        // `[B, c]`: runs of whole rows (a run may start inside one), value k of a
        // run belonging to channel (offset + k) % c.
        for_each_plane(out, c, 1, |_, offset, dst| {
            let len = dst.len();
            let vals = p[offset..offset + len].iter().zip(&q[offset..offset + len]);
            for (k, (o, (&u, &v))) in dst.iter_mut().zip(vals).enumerate() {
                *o = f((offset + k) % c, u, v);
            }
        });
    } else {
        for_each_plane(out, inner, c, |ch, offset, dst| {
            let len = dst.len();
            let vals = p[offset..offset + len].iter().zip(&q[offset..offset + len]);
            for (o, (&u, &v)) in dst.iter_mut().zip(vals) {
                *o = f(ch, u, v);
            }
        });
    }
}

/// Sets each value `i` of the running statistic `t` (contiguous CPU f32) to
/// `f(old_i, i)`, in place (the `Var` candle_nn holds shares this storage).
fn update_running(t: &Tensor, f: impl Fn(f64, usize) -> f64) -> Result<()> {
    struct Update<F>(F);
    impl<F: Fn(f64, usize) -> f64> InplaceOp1 for Update<F> {
        fn name(&self) -> &'static str {
            "digitlab-batch-norm-running-stats"
        }
        fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
            let (CpuStorage::F32(v), Some((a, b))) = (s, l.contiguous_offsets()) else {
                bail!("batch_norm_train: running statistics must be contiguous f32")
            };
            for (i, v) in v[a..b].iter_mut().enumerate() {
                *v = (self.0)(f64::from(*v), i) as f32;
            }
            Ok(())
        }
    }
    t.inplace_op1(&Update(f))
}

/// The forward's per-channel statistics, kept for the backward.
struct TrainOp {
    mean: Vec<f64>,
    invstd: Vec<f64>,
    inner: usize,
    act: Activation,
}

impl TrainOp {
    /// Reads values of `t` (a contiguous CPU f32 copy).
    fn values(t: &Tensor, c: usize, what: &str) -> Result<Vec<f64>> {
        let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
        if v.len() != c {
            bail!("batch_norm_train: {what} has {} values for {c} channels", v.len())
        }
        Ok(v.into_iter().map(f64::from).collect())
    }
}

impl CustomOp3 for TrainOp {
    fn name(&self) -> &'static str {
        "digitlab-batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        const OP: &str = "batch_norm_train";
        let x = cpu::contiguous(f32_data(xs, OP)?, xl)?;
        let w = cpu::contiguous(f32_data(ws, OP)?, wl)?;
        let b = cpu::contiguous(f32_data(bs, OP)?, bl)?;
        let c = self.mean.len();
        if w.len() != c || b.len() != c {
            bail!(
                "{OP}: weight and bias must have {c} values, got {} and {}",
                w.len(),
                b.len()
            )
        }
        let scale: Vec<f32> = (0..c).map(|i| (f64::from(w[i]) * self.invstd[i]) as f32).collect();
        let shift: Vec<f32> = (0..c)
            .map(|i| (f64::from(b[i]) - self.mean[i] * f64::from(w[i]) * self.invstd[i]) as f32)
            .collect();
        let mut out = cpu::zeros(x.len());
        match self.act {
            Activation::Identity => map_channels(&mut out, &x, &x, c, self.inner, |ch, v, _| v * scale[ch] + shift[ch]),
            Activation::Relu => map_channels(&mut out, &x, &x, c, self.inner, |ch, v, _| {
                (v * scale[ch] + shift[ch]).max(0.0)
            }),
            Activation::Relu6 => map_channels(&mut out, &x, &x, c, self.inner, |ch, v, _| {
                (v * scale[ch] + shift[ch]).clamp(0.0, 6.0)
            }),
        }
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        const OP: &str = "batch_norm_train backward";
        let c = self.mean.len();
        let (xc, grad) = (x.contiguous()?, grad.contiguous()?);
        let (xv, g) = (View::new(&xc, OP)?, View::new(&grad, OP)?);
        let xd = xv.get();
        let masked = cpu::activation_grad(self.act, g.get(), res, OP)?;
        let dz: &[f32] = masked.as_deref().unwrap_or(g.get());
        if dz.len() != xd.len() {
            bail!("{OP}: gradient has {} values for {} inputs", dz.len(), xd.len())
        }
        let inner = self.inner;
        let n = (xd.len() / c) as f64;
        // Per channel: sum(dz) (the bias gradient) and sum(dz * x_hat) (the weight's).
        let sum_dz = channel_sums(dz, dz, c, inner, |_, d, _| f64::from(d));
        let sum_dz_xhat = channel_sums(dz, xd, c, inner, |ch, d, v| {
            f64::from(d) * (f64::from(v) - self.mean[ch]) * self.invstd[ch]
        });
        let to_tensor = |v: &[f64]| cpu::tensor(v.iter().map(|&s| s as f32).collect(), c);
        let dw = if w.track_op() {
            Some(to_tensor(&sum_dz_xhat)?)
        } else {
            None
        };
        let db = if b.track_op() { Some(to_tensor(&sum_dz)?) } else { None };
        let dx = if x.track_op() {
            // dx = w * invstd * (dz - mean(dz) - x_hat * mean(dz * x_hat))
            //    = k_dz * dz + k_x * x + k_0, per channel.
            let wv = Self::values(w, c, "weight")?;
            let k: Vec<(f32, f32, f32)> = (0..c)
                .map(|i| {
                    let a = wv[i] * self.invstd[i];
                    let kx = -a * self.invstd[i] * sum_dz_xhat[i] / n;
                    let k0 = -a * sum_dz[i] / n - kx * self.mean[i];
                    (a as f32, kx as f32, k0 as f32)
                })
                .collect();
            let mut out = cpu::zeros(xd.len());
            map_channels(&mut out, dz, xd, c, inner, |ch, d, v| {
                let (a, kx, k0) = k[ch];
                a * d + kx * v + k0
            });
            Some(cpu::tensor(out, x.shape().clone())?)
        } else {
            None
        };
        Ok((dx, dw, db))
    }
}
