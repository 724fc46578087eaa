//! Binary cross-entropy, on probabilities and on logits.
//!
//! For a prediction `ŷ ∈ (0, 1)` (the model's probability of class 1) and a target
//! `y ∈ [0, 1]` (usually exactly 0 or 1), the binary cross-entropy is
//!
//! ```text
//! BCE(ŷ, y) = -[ y·ln ŷ + (1 - y)·ln(1 - ŷ) ]
//! ```
//!
//! Worked example: `y = 0`, `ŷ = 0.9` gives `-ln(0.1) = 2.3026`.
//!
//! Three variants are provided:
//!
//! * [`bce`] clamps `ŷ` to `[BCE_EPS, 1 - BCE_EPS]` before taking logs, so the loss is
//!   always finite (at most `-ln(BCE_EPS) ≈ 16.12` per element). This is what a trainer
//!   that receives probabilities (a model ending in a sigmoid) should use.
//! * [`bce_strict`] does not clamp: it returns [`LossError::LogOfZero`] when a
//!   probability is exactly 0 or 1 on the side whose log the target needs. It exists to
//!   make the **"swapped formula" problem** visible: the formula takes the log of the
//!   *prediction*, never of the label. Writing it the other way round,
//!   `-[ŷ·ln y + (1 - ŷ)·ln(1 - y)]` (equivalently, calling `bce(targets, probs)` with
//!   the arguments swapped), takes `ln 0 = -inf` of hard 0/1 labels. The clamped [`bce`]
//!   hides that bug behind a large but finite number (`≈ 16.12·ŷ` per element), while
//!   [`bce_strict`] reports it:
//!
//!   ```
//!   use candle_core::{Device, Tensor};
//!   use digitlab_losses::{bce, bce_strict, LossError, Reduction};
//!   # fn main() -> Result<(), LossError> {
//!   let dev = Device::Cpu;
//!   let probs = Tensor::new(&[0.9f32, 0.2], &dev)?;
//!   let labels = Tensor::new(&[0.0f32, 1.0], &dev)?;
//!   // Right order: finite.
//!   assert!(bce_strict(&probs, &labels, Reduction::Mean).is_ok());
//!   // Swapped: the labels now sit in the `probs` slot and are exactly 0 and 1.
//!   let swapped = bce_strict(&labels, &probs, Reduction::Mean);
//!   assert!(matches!(swapped, Err(LossError::LogOfZero { count: 2, .. })));
//!   // The clamped version silently returns a finite, meaningless number.
//!   let silent = bce(&labels, &probs, Reduction::Mean)?.to_scalar::<f32>()?;
//!   assert!(silent.is_finite() && silent > 8.0);
//!   # Ok(()) }
//!   ```
//! * [`bce_with_logits`] takes the logit `z` (`ŷ = σ(z)`) and uses the stable form
//!   `max(z, 0) - z·y + ln(1 + exp(-|z|))`, which never overflows and never takes the
//!   log of 0. Its gradient is exactly `σ(z) - y`. Prefer it for training.
//!
//! Shapes: predictions and targets must have exactly the same shape (no broadcasting:
//! a `[B]` target against a `[B, 1]` prediction is an error, not a silent `[B, B]`).
//! The unreduced loss has that shape; `Reduction::Mean` averages over all elements.
//! Targets must be floating point; they are cast to the prediction's dtype.

use candle_core::Tensor;

use crate::error::{LossError, Result};
use crate::reduction::Reduction;
use crate::util::{count_nonzero, float_input, float_target, same_shape};

/// Clamp used by [`bce`]: probabilities are clamped to `[BCE_EPS, 1 - BCE_EPS]`.
///
/// Why `1e-7`:
///
/// * It bounds the loss per element by `-ln(1e-7) ≈ 16.12` and the magnitude of the
///   gradient w.r.t. the probability by `1/1e-7`, so one saturated prediction cannot
///   produce `inf`/`NaN` and wreck a training step.
/// * It is the smallest "round" value that still works in **f32**: the spacing of f32
///   just below 1.0 is `2⁻²⁴ ≈ 5.96e-8`, so `1 - 1e-7` rounds to `1 - 2⁻²³ ≈
///   0.99999988` and `1 - p` stays `≥ 1.19e-7 > 0`. A smaller epsilon such as `1e-8`
///   would round `1 - eps` to exactly `1.0` in f32 and bring back `ln(0) = -inf`.
///   (This is also the value Keras uses as its backend epsilon.)
///
/// The same constant is used for f64 so that the cap on the loss does not depend on the
/// dtype. Note that the clamp zeroes the gradient of saturated predictions; for training
/// prefer [`bce_with_logits`].
pub const BCE_EPS: f64 = 1e-7;

fn prepare(op: &'static str, preds_name: &str, preds: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor)> {
    let preds = float_input(op, preds_name, preds)?;
    let targets = float_target(op, "targets", targets, preds.dtype())?;
    same_shape(op, preds_name, &preds, "targets", &targets)?;
    Ok((preds, targets))
}

/// Binary cross-entropy on probabilities, with `probs` clamped to
/// `[BCE_EPS, 1 - BCE_EPS]` (see [`BCE_EPS`]).
///
/// `probs` and `targets` must have the same shape; the unreduced loss has that shape.
pub fn bce(probs: &Tensor, targets: &Tensor, reduction: Reduction) -> Result<Tensor> {
    let (probs, targets) = prepare("bce", "probs", probs, targets)?;
    let p = probs.clamp(BCE_EPS, 1.0 - BCE_EPS)?;
    let log_p = p.log()?;
    let log_1mp = p.affine(-1.0, 1.0)?.log()?;
    let one_minus_y = targets.affine(-1.0, 1.0)?;
    let losses = ((&targets * &log_p)? + (&one_minus_y * &log_1mp)?)?.neg()?;
    reduction.apply(&losses)
}

/// Binary cross-entropy on probabilities **without clamping**.
///
/// Returns [`LossError::LogOfZero`] if any probability is exactly 0 where the target is
/// non-zero (the loss needs `ln ŷ`) or exactly 1 where the target is not 1 (the loss
/// needs `ln(1 - ŷ)`): the exact loss would be `+inf`. This is how the "swapped formula"
/// problem shows up (see the [module docs](self)). Probabilities outside `[0, 1]` are
/// rejected with [`LossError::InvalidArgument`].
///
/// Terms whose weight is zero are skipped exactly (`0·ln 0 = 0`), so `ŷ = 0, y = 0` and
/// `ŷ = 1, y = 1` are fine and contribute 0. Checking the values copies one scalar
/// count to the host.
pub fn bce_strict(probs: &Tensor, targets: &Tensor, reduction: Reduction) -> Result<Tensor> {
    const OP: &str = "bce_strict";
    let (probs, targets) = prepare(OP, "probs", probs, targets)?;
    let dtype = probs.dtype();

    let out_of_range = (probs.lt(0.0)?.to_dtype(dtype)? + probs.gt(1.0)?.to_dtype(dtype)?)?;
    let n_out = count_nonzero(&out_of_range)?;
    if n_out > 0 {
        return Err(LossError::invalid(
            OP,
            format!("{n_out} probabilities lie outside [0, 1]"),
        ));
    }
    let y_zero = targets.eq(0.0)?;
    let y_one = targets.eq(1.0)?;
    let needs_log_p = probs
        .eq(0.0)?
        .to_dtype(dtype)?
        .mul(&y_zero.to_dtype(dtype)?.affine(-1.0, 1.0)?)?;
    let needs_log_1mp = probs
        .eq(1.0)?
        .to_dtype(dtype)?
        .mul(&y_one.to_dtype(dtype)?.affine(-1.0, 1.0)?)?;
    let count = count_nonzero(&(needs_log_p + needs_log_1mp)?)?;
    if count > 0 {
        return Err(LossError::LogOfZero { op: OP, count });
    }

    // Where a log term has weight exactly 0 its argument is replaced by 1 (ln 1 = 0), so
    // 0·ln 0 contributes 0 and its gradient is 0 instead of NaN.
    let ones = probs.ones_like()?;
    let log_p = y_zero.where_cond(&ones, &probs)?.log()?;
    let log_1mp = y_one.where_cond(&ones, &probs.affine(-1.0, 1.0)?)?.log()?;
    let one_minus_y = targets.affine(-1.0, 1.0)?;
    let losses = ((&targets * &log_p)? + (&one_minus_y * &log_1mp)?)?.neg()?;
    reduction.apply(&losses)
}

/// Binary cross-entropy on logits (`ŷ = σ(z)`), computed in the stable form
///
/// ```text
/// max(z, 0) - z·y + ln(1 + exp(-|z|))
/// ```
///
/// which is finite for any finite `z` (`exp(-|z|) ≤ 1`) and has gradient
/// `∂/∂z = σ(z) - y` everywhere, including `z = 0`.
///
/// `logits` and `targets` must have the same shape; the unreduced loss has that shape.
pub fn bce_with_logits(logits: &Tensor, targets: &Tensor, reduction: Reduction) -> Result<Tensor> {
    let (z, targets) = prepare("bce_with_logits", "logits", logits, targets)?;
    // `relu` and `abs` both use the subgradient convention `z >= 0` in candle, which makes
    // the autograd derivative at z = 0 equal to 1 - y - 1/2 = σ(0) - y. (Using
    // `maximum(z, 0)` would split the tie 1/2-1/2 and give -y there.)
    let softplus_neg_abs = z.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    let losses = ((z.relu()? - (&z * &targets)?)? + softplus_neg_abs)?;
    reduction.apply(&losses)
}
