//! L2 weight penalty (weight decay as an explicit loss term).
//!
//! Two conventions are in common use and differ by a factor `2m`, which makes
//! hyper-parameters non-transferable if the convention is not stated:
//!
//! | [`L2Convention`] | penalty | gradient w.r.t. `w` |
//! |---|---|---|
//! | `HalfOverM { m }` | `λ/(2m) · Σ w²` | `λ/m · w` |
//! | `Plain` | `λ · Σ w²` | `2λ · w` |
//!
//! `HalfOverM` is the textbook (Andrew Ng course) form, where `m` is the number of
//! training examples and the `1/2` cancels the 2 of the derivative; it is meant to be
//! added to a loss that is a *mean* over the `m` examples. `Plain` is the form most
//! frameworks document for an explicit penalty term.
//!
//! `Σ w²` runs over every element of every tensor passed in (usually the weight
//! matrices only, not the biases). The result is a rank-0 tensor with the weights'
//! dtype, differentiable w.r.t. every weight.
//!
//! Worked example: weights `[1, 2]` and `[[3]]`, `λ = 0.1`: `Σ w² = 14`; `Plain` gives
//! `1.4`; `HalfOverM { m: 7 }` gives `0.1/14 · 14 = 0.1`.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{dtype_name, LossError, Result};
use crate::util::float_input;

/// Scaling convention for [`l2_penalty`] (see the [module docs](self)).
///
/// Serialized in snake_case: `"plain"` or `{"half_over_m": {"m": 60000}}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum L2Convention {
    /// `λ/(2m) · Σ w²`, with `m` the number of training examples (must be ≥ 1).
    HalfOverM {
        /// Number of training examples.
        m: usize,
    },
    /// `λ · Σ w²`.
    Plain,
}

impl L2Convention {
    /// The factor multiplying `Σ w²`: `λ/(2m)` or `λ`.
    ///
    /// Errors if `lambda` is negative or not finite, or if `m == 0`.
    pub fn coefficient(self, lambda: f64) -> Result<f64> {
        const OP: &str = "l2_penalty";
        if !lambda.is_finite() || lambda < 0.0 {
            return Err(LossError::invalid(
                OP,
                format!("lambda must be finite and >= 0, got {lambda}"),
            ));
        }
        match self {
            L2Convention::HalfOverM { m: 0 } => Err(LossError::invalid(
                OP,
                "HalfOverM needs the number of training examples m >= 1, got m = 0",
            )),
            L2Convention::HalfOverM { m } => Ok(lambda / (2.0 * m as f64)),
            L2Convention::Plain => Ok(lambda),
        }
    }
}

/// L2 penalty `coefficient · Σ_tensors Σ_elements w²` (see [`L2Convention`]).
///
/// All weights must share one floating point dtype and device; `weights` must not be
/// empty (the dtype and device of the result would be unknown).
pub fn l2_penalty(weights: &[&Tensor], lambda: f64, convention: L2Convention) -> Result<Tensor> {
    const OP: &str = "l2_penalty";
    let coefficient = convention.coefficient(lambda)?;
    let (first, rest) = weights
        .split_first()
        .ok_or_else(|| LossError::invalid(OP, "weights must contain at least one tensor"))?;
    let dtype = first.dtype();
    let mut total = float_input(OP, "weights", first)?.sqr()?.sum_all()?;
    for (i, w) in rest.iter().enumerate() {
        if w.dtype() != dtype {
            return Err(LossError::dtype(
                OP,
                format!(
                    "all weights must have the same dtype, weights[0] is {} but weights[{}] is {}",
                    dtype_name(dtype),
                    i + 1,
                    dtype_name(w.dtype())
                ),
            ));
        }
        total = (total + float_input(OP, "weights", w)?.sqr()?.sum_all()?)?;
    }
    Ok(total.affine(coefficient, 0.0)?)
}
