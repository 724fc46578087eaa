//! Fused softmax cross-entropy with integer labels.
//!
//! The composition `-(log_softmax(z)[y])` is about ten candle ops forward (max,
//! subtract, exp, sum, log, subtract, gather, squeeze, negate) and as many
//! backward, each allocating. For the small `[batch, classes]` logits of digit
//! classifiers that per-op overhead is most of the loss's cost, so here it is one
//! op: per sample `loss = ln Σ exp(z - m) + m - z[y]` with `m = max z`, and the
//! gradient `softmax(z) - onehot(y)` (times the incoming gradient) computed
//! directly, which is exactly the gradient of the composition with `m` detached.
use crate::cpu;
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

/// Per-sample softmax cross-entropy `[batch]` of `logits` `[batch, classes]` (f32
/// or f64) and integer `labels` `[batch]` (u32 or i64, in `0..classes`).
///
/// CPU tensors take the fused kernel; other devices (and dtypes) use the candle
/// composition with the max shift detached ([`softmax_cross_entropy_reference`]).
/// Labels out of range are an error on the kernel path (checked while reading
/// them); callers that need the error on every device check them first.
pub fn softmax_cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let (batch, _) = logits.dims2()?;
    if labels.dims() != [batch] {
        bail!(
            "softmax_cross_entropy: labels must be [{batch}], got {:?}",
            labels.dims()
        )
    }
    let float_ok = matches!(logits.dtype(), DType::F32 | DType::F64);
    let label_ok = matches!(labels.dtype(), DType::U32 | DType::I64);
    if logits.device().is_cpu() && labels.device().is_cpu() && float_ok && label_ok {
        crate::runtime::init();
        return logits.apply_op2(labels, SoftmaxCrossEntropy);
    }
    softmax_cross_entropy_reference(logits, labels)
}

/// `-(log_softmax(z)[y])` from candle ops, with the max shift detached.
pub fn softmax_cross_entropy_reference(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let (batch, _) = logits.dims2()?;
    let max = logits.max_keepdim(1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let log_sum = shifted.exp()?.sum_keepdim(1)?.log()?;
    let log_probs = shifted.broadcast_sub(&log_sum)?;
    log_probs
        .gather(&labels.reshape((batch, 1))?.contiguous()?, 1)?
        .squeeze(1)?
        .neg()
}

struct SoftmaxCrossEntropy;

/// Labels as indices, checked against `classes`.
fn label_indices(s: &CpuStorage, l: &Layout, classes: usize) -> Result<Vec<usize>> {
    let check = |i: usize, v: i64| -> Result<usize> {
        if v < 0 || v as u64 >= classes as u64 {
            bail!("softmax_cross_entropy: label {v} at position {i} is out of range for {classes} classes")
        }
        Ok(v as usize)
    };
    match s {
        CpuStorage::U32(v) => cpu::contiguous(v, l)?
            .iter()
            .enumerate()
            .map(|(i, &x)| check(i, i64::from(x)))
            .collect(),
        CpuStorage::I64(v) => cpu::contiguous(v, l)?
            .iter()
            .enumerate()
            .map(|(i, &x)| check(i, x))
            .collect(),
        other => bail!(
            "softmax_cross_entropy: labels must be u32 or i64, got {:?}",
            other.dtype()
        ),
    }
}

macro_rules! ce_impl {
    ($fwd:ident, $bwd:ident, $t:ty) => {
        /// Per-row max and `Σ exp(z - max)`.
        fn $fwd(z: &[$t], y: &[usize], classes: usize) -> Vec<$t> {
            z.chunks_exact(classes)
                .zip(y)
                .map(|(row, &label)| {
                    let m = row.iter().copied().fold(<$t>::NEG_INFINITY, <$t>::max);
                    let s: $t = row.iter().map(|&v| (v - m).exp()).sum();
                    // (m - z_y) first: exact when z_y is the max, so huge logits lose nothing.
                    (m - row[label]) + s.ln()
                })
                .collect()
        }

        /// `g_b * (softmax(z_b) - onehot(y_b))`.
        fn $bwd(z: &[$t], y: &[usize], g: &[$t], classes: usize) -> Vec<$t> {
            let mut out = vec![0 as $t; z.len()];
            for (((row, o), &label), &gb) in z
                .chunks_exact(classes)
                .zip(out.chunks_exact_mut(classes))
                .zip(y)
                .zip(g)
            {
                let m = row.iter().copied().fold(<$t>::NEG_INFINITY, <$t>::max);
                let mut s: $t = 0.0;
                for (o, &v) in o.iter_mut().zip(row) {
                    let e = (v - m).exp();
                    *o = e;
                    s += e;
                }
                let scale = gb / s;
                for o in o.iter_mut() {
                    *o *= scale;
                }
                o[label] -= gb;
            }
            out
        }
    };
}

ce_impl!(fwd_f32, bwd_f32, f32);
ce_impl!(fwd_f64, bwd_f64, f64);

impl CustomOp2 for SoftmaxCrossEntropy {
    fn name(&self) -> &'static str {
        "digitlab-softmax-cross-entropy"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (batch, classes) = l1.shape().dims2()?;
        if classes == 0 {
            bail!("softmax_cross_entropy: logits must have at least one class")
        }
        let y = label_indices(s2, l2, classes)?;
        if y.len() != batch {
            bail!("softmax_cross_entropy: {} labels for a batch of {batch}", y.len())
        }
        let out = match s1 {
            CpuStorage::F32(v) => CpuStorage::F32(fwd_f32(&cpu::contiguous(v, l1)?, &y, classes)),
            CpuStorage::F64(v) => CpuStorage::F64(fwd_f64(&cpu::contiguous(v, l1)?, &y, classes)),
            other => bail!(
                "softmax_cross_entropy: logits must be f32 or f64, got {:?}",
                other.dtype()
            ),
        };
        Ok((out, Shape::from(batch)))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        labels: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (batch, classes) = logits.dims2()?;
        let (zs, zl) = logits.storage_and_layout();
        let (ys, yl) = labels.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let (candle_core::Storage::Cpu(z), candle_core::Storage::Cpu(y), candle_core::Storage::Cpu(g)) =
            (&*zs, &*ys, &*gs)
        else {
            bail!("softmax_cross_entropy backward: expected CPU tensors")
        };
        let y = label_indices(y, yl, classes)?;
        let d = match (z, g) {
            (CpuStorage::F32(z), CpuStorage::F32(g)) => {
                let g = cpu::contiguous(g, gl)?;
                if g.len() != batch {
                    bail!("softmax_cross_entropy backward: gradient must be [{batch}]")
                }
                Tensor::from_vec(
                    bwd_f32(&cpu::contiguous(z, zl)?, &y, &g, classes),
                    (batch, classes),
                    logits.device(),
                )?
            }
            (CpuStorage::F64(z), CpuStorage::F64(g)) => {
                let g = cpu::contiguous(g, gl)?;
                if g.len() != batch {
                    bail!("softmax_cross_entropy backward: gradient must be [{batch}]")
                }
                Tensor::from_vec(
                    bwd_f64(&cpu::contiguous(z, zl)?, &y, &g, classes),
                    (batch, classes),
                    logits.device(),
                )?
            }
            _ => bail!("softmax_cross_entropy backward: logits and gradient dtypes differ"),
        };
        Ok((Some(d), None))
    }
}
