//! Error type shared by every loss in this crate.
//!
//! All fallible functions return [`Result<T>`](crate::Result), i.e.
//! `std::result::Result<T, LossError>`. Errors raised by candle itself (device
//! mismatches, unsupported ops, ...) are wrapped in [`LossError::Candle`]; the other
//! variants describe misuse of a loss (wrong rank, wrong dtype, labels out of range,
//! `log(0)` in the strict BCE) and always name the offending function, e.g.
//! `softmax_cross_entropy: logits must be [batch, classes], got [3]`.

use candle_core::DType;

/// Everything that can go wrong when computing a loss.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LossError {
    /// An input has the wrong rank or the inputs' shapes do not agree.
    #[error("{op}: {msg}")]
    Shape {
        /// Name of the loss function that rejected its input.
        op: &'static str,
        /// Human readable description, including the offending shape(s).
        msg: String,
    },

    /// An input has a dtype the loss cannot work with (e.g. float labels, integer logits).
    #[error("{op}: {msg}")]
    DType {
        /// Name of the loss function that rejected its input.
        op: &'static str,
        /// Human readable description, including the offending dtype.
        msg: String,
    },

    /// An integer class label is negative or not smaller than the number of classes.
    #[error(
        "{op}: label {label} at position {index} is out of range for {num_classes} classes (expected 0..{num_classes})"
    )]
    LabelOutOfRange {
        /// Name of the loss function that rejected its input.
        op: &'static str,
        /// The offending label value.
        label: i64,
        /// Position of the label in the (flattened) label tensor.
        index: usize,
        /// Number of classes implied by the model output.
        num_classes: usize,
    },

    /// [`bce_strict`](crate::bce_strict) found probabilities that are exactly 0 or 1 where
    /// the target needs their logarithm, so the exact loss is `+inf`.
    #[error(
        "{op}: {count} probabilit{plural} exactly 0 or 1 where the target needs {their} log \
         (log(0) = -inf); were `probs` and `targets` swapped?",
        plural = if *count == 1 { "y is" } else { "ies are" },
        their = if *count == 1 { "its" } else { "their" }
    )]
    LogOfZero {
        /// Name of the loss function that rejected its input.
        op: &'static str,
        /// Number of offending elements.
        count: usize,
    },

    /// A non-tensor argument is invalid (negative `lambda`, `m = 0`, empty input, ...).
    #[error("{op}: {msg}")]
    InvalidArgument {
        /// Name of the function that rejected its argument.
        op: &'static str,
        /// Human readable description.
        msg: String,
    },

    /// An error reported by candle while evaluating the loss.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, LossError>;

impl LossError {
    pub(crate) fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Self::Shape { op, msg: msg.into() }
    }

    pub(crate) fn dtype(op: &'static str, msg: impl Into<String>) -> Self {
        Self::DType { op, msg: msg.into() }
    }

    pub(crate) fn invalid(op: &'static str, msg: impl Into<String>) -> Self {
        Self::InvalidArgument { op, msg: msg.into() }
    }
}

/// Lower-case name of a dtype as candle spells it (`f32`, `u32`, ...).
pub(crate) fn dtype_name(dtype: DType) -> &'static str {
    dtype.as_str()
}
