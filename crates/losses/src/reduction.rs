//! How per-element (or per-sample) losses are collapsed into the returned tensor.
//!
//! Every loss first computes an unreduced tensor of losses and then applies a
//! [`Reduction`]. What counts as "one element" is documented per loss:
//!
//! | loss | unreduced shape |
//! |------|-----------------|
//! | [`bce`](crate::bce), [`bce_strict`](crate::bce_strict), [`bce_with_logits`](crate::bce_with_logits), [`mse`](crate::mse) | same as the input (one loss per element) |
//! | [`softmax_cross_entropy`](crate::softmax_cross_entropy), [`softmax_cross_entropy_soft`](crate::softmax_cross_entropy_soft), [`nll`](crate::nll) | `[batch]` (one loss per sample) |
//! | [`kl_div`](crate::kl_div) | input shape without its last dim (one value per distribution) |
//!
//! `Mean` divides the sum by the number of entries of that unreduced tensor, so for
//! `mse` it is the mean over *all* elements, while for cross-entropy and KL it is the
//! mean over the batch ("batchmean" in PyTorch terms).

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{LossError, Result};

/// Reduction applied to the unreduced loss tensor.
///
/// Serialized in snake_case: `"mean"`, `"sum"`, `"none"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reduction {
    /// Average of the unreduced losses (a rank-0 tensor). The default.
    #[default]
    Mean,
    /// Sum of the unreduced losses (a rank-0 tensor).
    Sum,
    /// No reduction: the unreduced loss tensor is returned as is.
    None,
}

impl Reduction {
    /// Applies the reduction to an unreduced loss tensor.
    ///
    /// `Mean` of an empty tensor is rejected (it would be `0/0 = NaN`).
    pub fn apply(self, losses: &Tensor) -> Result<Tensor> {
        match self {
            Reduction::Mean => {
                if losses.elem_count() == 0 {
                    return Err(LossError::invalid(
                        "reduction",
                        "cannot take the mean of an empty loss tensor",
                    ));
                }
                Ok(losses.mean_all()?)
            }
            Reduction::Sum => Ok(losses.sum_all()?),
            Reduction::None => Ok(losses.clone()),
        }
    }
}
