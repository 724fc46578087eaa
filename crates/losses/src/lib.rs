//! Numerically stable loss functions on [`candle_core::Tensor`].
//!
//! Every loss is built from differentiable candle-core ops, so the returned tensor can be
//! back-propagated with [`Tensor::backward`](candle_core::Tensor::backward) (e.g. through
//! a [`candle_core::Var`]). All functions accept f32 and f64 tensors (f16/bf16 inputs are
//! upcast to f32) and return [`Result<Tensor>`](Result) with a [`LossError`] that names
//! the function and the offending shape or dtype.
//!
//! # Modules and conventions
//!
//! | module | contents | key convention |
//! |---|---|---|
//! | [`binary`] | [`bce`], [`bce_strict`], [`bce_with_logits`] | probabilities clamped to `[BCE_EPS, 1-BCE_EPS]`; logits via `max(z,0) - z·y + ln(1+e^{-\|z\|})` |
//! | [`multiclass`] | [`log_softmax`], [`softmax_cross_entropy`], [`softmax_cross_entropy_soft`], [`nll`], [`one_hot`] | max-shifted log-sum-exp; logits `[B, C]`, labels `[B]` (u32/i64) |
//! | [`regression`] | [`mse`] | `Mean` = mean over all elements |
//! | [`divergence`] | [`kl_div`], [`entropy`], [`cross_entropy_probs`] | distributions along the last dim, `0·ln 0 = 0` |
//! | [`penalty`] | [`l2_penalty`], [`L2Convention`] | `λ/(2m)·Σw²` or `λ·Σw²`, stated explicitly |
//! | [`kind`] | [`LossKind`] | pick a loss by config name, from (output, integer labels) |
//! | [`reduction`] | [`Reduction`] | `Mean` (default), `Sum`, `None` |
//! | [`error`] | [`LossError`], [`Result`] | |
//!
//! All logarithms are natural logarithms (losses in nats). Inputs and targets must have
//! exactly matching shapes where both are dense; nothing is broadcast implicitly.
//!
//! # Example
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! use digitlab_losses::{softmax_cross_entropy, Reduction};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dev = Device::Cpu;
//! let logits = Var::new(&[[2.0f32, 0.5, -1.0], [0.0, 0.0, 3.0]], &dev)?;
//! let labels = Tensor::new(&[0u32, 2], &dev)?;
//! let loss = softmax_cross_entropy(logits.as_tensor(), &labels, Reduction::Mean)?;
//! let grads = loss.backward()?;
//! let dlogits = grads.get(logits.as_tensor()).expect("gradient");
//! assert_eq!(dlogits.dims(), &[2, 3]);
//! assert!(loss.to_scalar::<f32>()? > 0.0);
//! # Ok(()) }
//! ```

pub mod binary;
pub mod divergence;
pub mod error;
pub mod kind;
pub mod multiclass;
pub mod penalty;
pub mod reduction;
pub mod regression;
mod util;

pub use binary::{bce, bce_strict, bce_with_logits, BCE_EPS};
pub use divergence::{cross_entropy_probs, entropy, kl_div};
pub use error::{LossError, Result};
pub use kind::LossKind;
pub use multiclass::{log_softmax, nll, one_hot, softmax_cross_entropy, softmax_cross_entropy_soft};
pub use penalty::{l2_penalty, L2Convention};
pub use reduction::Reduction;
pub use regression::mse;
