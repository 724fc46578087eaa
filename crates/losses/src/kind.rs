//! [`LossKind`]: choosing a loss by configuration, from (model output, integer labels).
//!
//! A trainer only has the model output and the integer class labels of a batch; this
//! module turns the labels into whatever target the chosen loss needs. Expected shapes
//! (`B` = batch size, `C` = number of classes, labels always `[B]` of dtype u32 or i64):
//!
//! | kind (config name) | model output | meaning of output | target built from labels |
//! |---|---|---|---|
//! | `bce` | `[B]` or `[B, 1]` | probability of class 1 (after a sigmoid) | labels as floats, must be 0 or 1 |
//! | `bce_with_logits` | `[B]` or `[B, 1]` | logit of class 1 (no sigmoid) | labels as floats, must be 0 or 1 |
//! | `mse` | `[B]` or `[B, 1]` | a scalar prediction | labels as floats (any value) |
//! | `mse` | `[B, C]`, `C ≥ 2` | per-class scores | one-hot of the labels (labels in `0..C`) |
//! | `cross_entropy` | `[B, C]` | logits (no softmax) | the labels themselves (in `0..C`) |
//! | `nll` | `[B, C]` | log-probabilities (after `log_softmax`) | the labels themselves (in `0..C`) |
//!
//! For `mse` with one-hot targets, `Reduction::Mean` averages over all `B·C` elements,
//! like [`mse`] itself.
//!
//! In a config file the kind is written in snake_case (`loss = "cross_entropy"`); the
//! same names are accepted by [`FromStr`] and produced by [`Display`](fmt::Display):
//!
//! ```
//! # use digitlab_losses::LossKind;
//! let kind: LossKind = "bce_with_logits".parse().unwrap();
//! assert_eq!(kind, LossKind::BceWithLogits);
//! assert_eq!(kind.to_string(), "bce_with_logits");
//! ```

use std::fmt;
use std::str::FromStr;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::binary::{bce, bce_with_logits};
use crate::error::{LossError, Result};
use crate::multiclass::{nll, one_hot, softmax_cross_entropy};
use crate::reduction::Reduction;
use crate::regression::mse;
use crate::util::{check_range, float_input, label_values};

/// A loss selectable by configuration. See the [module docs](self) for the output shape
/// each kind expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    /// [`bce`] on probabilities; output `[B]` or `[B, 1]`, labels 0/1.
    Bce,
    /// [`bce_with_logits`]; output `[B]` or `[B, 1]` logits, labels 0/1.
    BceWithLogits,
    /// [`mse`]; output `[B]`/`[B, 1]` (target = label value) or `[B, C]` (one-hot target).
    Mse,
    /// [`softmax_cross_entropy`]; output `[B, C]` logits.
    CrossEntropy,
    /// [`nll`]; output `[B, C]` log-probabilities.
    Nll,
}

impl LossKind {
    /// Every kind, in declaration order.
    pub const ALL: [LossKind; 5] = [
        LossKind::Bce,
        LossKind::BceWithLogits,
        LossKind::Mse,
        LossKind::CrossEntropy,
        LossKind::Nll,
    ];

    /// The snake_case name used in configs (`"bce_with_logits"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            LossKind::Bce => "bce",
            LossKind::BceWithLogits => "bce_with_logits",
            LossKind::Mse => "mse",
            LossKind::CrossEntropy => "cross_entropy",
            LossKind::Nll => "nll",
        }
    }

    /// Whether the kind expects a single output per sample (`[B]` or `[B, 1]`) and
    /// binary labels.
    pub fn is_binary(self) -> bool {
        matches!(self, LossKind::Bce | LossKind::BceWithLogits)
    }

    /// Computes the loss from the model `output` and integer `labels` (`[B]`, u32 or
    /// i64), building the target the loss needs (see the [module docs](self)).
    pub fn compute(self, output: &Tensor, labels: &Tensor, reduction: Reduction) -> Result<Tensor> {
        let op = self.as_str();
        match self {
            LossKind::CrossEntropy => softmax_cross_entropy(output, labels, reduction),
            LossKind::Nll => nll(output, labels, reduction),
            LossKind::Bce | LossKind::BceWithLogits => {
                let output = float_input(op, "output", output)?;
                let batch = single_output_batch(&output).ok_or_else(|| {
                    LossError::shape(
                        op,
                        format!(
                            "output must be [batch] or [batch, 1] for a binary loss, got {:?}",
                            output.dims()
                        ),
                    )
                })?;
                let values = batch_labels(op, labels, batch)?;
                check_range(op, &values, 2)?;
                let targets = labels.to_dtype(output.dtype())?.reshape(output.shape())?;
                if self == LossKind::Bce {
                    bce(&output, &targets, reduction)
                } else {
                    bce_with_logits(&output, &targets, reduction)
                }
            }
            LossKind::Mse => {
                let output = float_input(op, "output", output)?;
                if let Some(batch) = single_output_batch(&output) {
                    batch_labels(op, labels, batch)?;
                    let targets = labels.to_dtype(output.dtype())?.reshape(output.shape())?;
                    return mse(&output, &targets, reduction);
                }
                match *output.dims() {
                    [batch, classes] => {
                        batch_labels(op, labels, batch)?;
                        let targets = one_hot(labels, classes, output.dtype())?;
                        mse(&output, &targets, reduction)
                    }
                    _ => Err(LossError::shape(
                        op,
                        format!(
                            "output must be [batch], [batch, 1] or [batch, classes], got {:?}",
                            output.dims()
                        ),
                    )),
                }
            }
        }
    }
}

/// `Some(batch)` if `output` is `[batch]` or `[batch, 1]`.
fn single_output_batch(output: &Tensor) -> Option<usize> {
    match *output.dims() {
        [b] | [b, 1] => Some(b),
        _ => None,
    }
}

/// Validates dtype/rank of the labels and that there is one label per sample.
fn batch_labels(op: &'static str, labels: &Tensor, batch: usize) -> Result<Vec<i64>> {
    let values = label_values(op, labels)?;
    if values.len() != batch {
        return Err(LossError::shape(
            op,
            format!(
                "labels must be [batch] = [{batch}] to match the output, got {:?}",
                labels.dims()
            ),
        ));
    }
    Ok(values)
}

impl fmt::Display for LossKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LossKind {
    type Err = LossError;

    /// Parses the snake_case config name (`"bce"`, `"bce_with_logits"`, `"mse"`,
    /// `"cross_entropy"`, `"nll"`).
    fn from_str(s: &str) -> Result<Self> {
        LossKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| {
            let names: Vec<&str> = LossKind::ALL.iter().map(|k| k.as_str()).collect();
            LossError::invalid(
                "LossKind",
                format!("unknown loss {s:?}, expected one of {}", names.join(", ")),
            )
        })
    }
}
