//! Mean squared error.
//!
//! `mse(pred, target) = (pred - target)²`, reduced with [`Reduction`]. `Mean` is the mean
//! over **all elements** (not over the batch), matching PyTorch's `MSELoss`; `Sum` is the
//! plain sum of squares (no 1/2 factor).
//!
//! `pred` and `target` must have exactly the same shape; `target` must be floating point
//! and is cast to `pred`'s dtype.

use candle_core::Tensor;

use crate::error::Result;
use crate::reduction::Reduction;
use crate::util::{float_input, float_target, same_shape};

/// Squared error `(pred - target)²`, unreduced shape = input shape; `Mean` averages over
/// all elements.
pub fn mse(pred: &Tensor, target: &Tensor, reduction: Reduction) -> Result<Tensor> {
    const OP: &str = "mse";
    let pred = float_input(OP, "pred", pred)?;
    let target = float_target(OP, "target", target, pred.dtype())?;
    same_shape(OP, "pred", &pred, "target", &target)?;
    let losses = (&pred - &target)?.sqr()?;
    reduction.apply(&losses)
}
