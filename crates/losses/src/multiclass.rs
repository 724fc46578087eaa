//! Multi-class losses: stable log-softmax, softmax cross-entropy, negative log-likelihood.
//!
//! Conventions:
//!
//! * Logits / log-probabilities are `[batch, classes]`; integer labels are `[batch]`
//!   with dtype `u32` or `i64` and values in `0..classes` (checked on the host, so an
//!   out-of-range label is an error rather than a silent wrong gather).
//! * Soft targets (one-hot or any distribution) are `[batch, classes]` floats.
//! * The unreduced loss is one value per sample, `[batch]`; `Reduction::Mean` averages
//!   over the batch.
//!
//! Numerical stability comes from the max shift in log-sum-exp:
//!
//! ```text
//! log_softmax(z)_i = (z_i - m) - ln Σ_j exp(z_j - m),   m = max_j z_j
//! ```
//!
//! Every `exp` argument is `≤ 0` and the sum is `≥ 1` (the maximal class contributes
//! `exp(0) = 1`), so nothing overflows and the log never sees 0, even for logits of
//! magnitude `1e4`. The shift `m` is detached from the graph: the result does not
//! depend on it mathematically, and treating it as a constant keeps the gradient
//! exactly `softmax(z) - onehot(y)` even when several logits tie for the maximum.
//!
//! Worked example: if the true-class probabilities of three samples are `0.1`, `0.8` and
//! `0.3`, the mean cross-entropy is `-(ln 0.1 + ln 0.8 + ln 0.3)/3 = 1.2432`.

use candle_core::{shape::Dim, DType, Tensor};

use crate::error::{dtype_name, LossError, Result};
use crate::reduction::Reduction;
use crate::util::{batch_classes, check_range, class_labels, float_input, float_target, label_values, same_shape};

/// Numerically stable `log_softmax` along `dim` (max-shifted, see the module docs).
///
/// Works for any rank ≥ 1; the output has the input's shape. Half precision inputs are
/// computed (and returned) in f32.
pub fn log_softmax<D: Dim>(logits: &Tensor, dim: D) -> Result<Tensor> {
    const OP: &str = "log_softmax";
    let logits = float_input(OP, "logits", logits)?;
    if logits.rank() == 0 {
        return Err(LossError::shape(
            OP,
            "logits must have at least one dimension, got a scalar",
        ));
    }
    let dim = dim.to_index(logits.shape(), OP)?;
    if logits.elem_count() == 0 {
        return Err(LossError::shape(
            OP,
            format!("logits must not be empty, got {:?}", logits.dims()),
        ));
    }
    let max = logits.max_keepdim(dim)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let log_sum = shifted.exp()?.sum_keepdim(dim)?.log()?;
    Ok(shifted.broadcast_sub(&log_sum)?)
}

/// Softmax cross-entropy with integer class labels:
/// `loss_b = logsumexp(z_b) - z_b[y_b]`, computed as `-log_softmax(z)[y]`.
///
/// * `logits`: `[batch, classes]`, f32 or f64.
/// * `labels`: `[batch]`, u32 or i64, values in `0..classes`.
///
/// Unreduced shape `[batch]`. Always `≥ 0` and finite for finite logits. The gradient
/// w.r.t. the logits is `softmax(z) - onehot(y)` (divided by `batch` for `Mean`).
///
/// On the CPU this is one fused op (`digitlab_kernels::softmax_cross_entropy`);
/// elsewhere the composition `-log_softmax(z)[y]` with the max shift detached.
pub fn softmax_cross_entropy(logits: &Tensor, labels: &Tensor, reduction: Reduction) -> Result<Tensor> {
    const OP: &str = "softmax_cross_entropy";
    let logits = float_input(OP, "logits", logits)?;
    let (batch, classes) = batch_classes(OP, "logits", &logits)?;
    let labels = class_labels(OP, labels, batch, classes)?;
    // One fused op on the CPU (the same value and gradient as the log-softmax
    // composition below, which other devices run).
    let losses = digitlab_kernels::softmax_cross_entropy(&logits, &labels.squeeze(1)?)?;
    reduction.apply(&losses)
}

/// Softmax cross-entropy with soft targets: `loss_b = -Σ_c t_bc · log_softmax(z_b)_c`.
///
/// * `logits`: `[batch, classes]`, f32 or f64 (must be finite).
/// * `target_probs`: `[batch, classes]`, floats; each row is normally a distribution
///   (one-hot, label-smoothed, a teacher's softmax, ...). Rows are not renormalised.
///
/// Unreduced shape `[batch]`. With one-hot targets this equals
/// [`softmax_cross_entropy`] with the corresponding labels.
pub fn softmax_cross_entropy_soft(logits: &Tensor, target_probs: &Tensor, reduction: Reduction) -> Result<Tensor> {
    const OP: &str = "softmax_cross_entropy_soft";
    let logits = float_input(OP, "logits", logits)?;
    batch_classes(OP, "logits", &logits)?;
    let targets = float_target(OP, "target_probs", target_probs, logits.dtype())?;
    same_shape(OP, "logits", &logits, "target_probs", &targets)?;
    let log_probs = log_softmax(&logits, 1)?;
    let losses = (&targets * &log_probs)?.sum(1)?.neg()?;
    reduction.apply(&losses)
}

/// Negative log-likelihood: `loss_b = -log_probs[b, y_b]`.
///
/// * `log_probs`: `[batch, classes]` log-probabilities (e.g. the output of
///   [`log_softmax`]), f32 or f64.
/// * `labels`: `[batch]`, u32 or i64, values in `0..classes`.
///
/// Unreduced shape `[batch]`. `nll(log_softmax(z, 1), y) == softmax_cross_entropy(z, y)`.
pub fn nll(log_probs: &Tensor, labels: &Tensor, reduction: Reduction) -> Result<Tensor> {
    const OP: &str = "nll";
    let log_probs = float_input(OP, "log_probs", log_probs)?;
    let (batch, classes) = batch_classes(OP, "log_probs", &log_probs)?;
    let labels = class_labels(OP, labels, batch, classes)?;
    let losses = log_probs.gather(&labels, 1)?.squeeze(1)?.neg()?;
    reduction.apply(&losses)
}

/// One-hot encoding of integer labels: `[batch]` (u32 or i64, values in
/// `0..num_classes`) to `[batch, num_classes]` with 1 at the label and 0 elsewhere.
///
/// `dtype` must be a floating point dtype.
pub fn one_hot(labels: &Tensor, num_classes: usize, dtype: DType) -> Result<Tensor> {
    const OP: &str = "one_hot";
    if !dtype.is_float() {
        return Err(LossError::dtype(
            OP,
            format!("output dtype must be floating point, got {}", dtype_name(dtype)),
        ));
    }
    if num_classes == 0 {
        return Err(LossError::invalid(OP, "num_classes must be at least 1"));
    }
    let values = label_values(OP, labels)?;
    check_range(OP, &values, num_classes)?;
    let batch = values.len();
    let labels = labels.to_dtype(DType::I64)?.reshape((batch, 1))?;
    let classes = Tensor::arange(0i64, num_classes as i64, labels.device())?.reshape((1, num_classes))?;
    Ok(labels.broadcast_eq(&classes)?.to_dtype(dtype)?)
}
