//! Entropy, cross-entropy and KL divergence between explicit distributions.
//!
//! Distributions live along the **last dimension**: a `[batch, classes]` tensor holds
//! `batch` distributions, a `[classes]` tensor holds one. Per-distribution results have
//! the input shape without its last dimension (a rank-0 tensor for a single
//! distribution).
//!
//! ```text
//! H(p)       = -Σ p·ln p                      (entropy)
//! H(p, q)    = -Σ p·ln q                      (cross-entropy)
//! KL(p ‖ q)  =  Σ p·(ln p - ln q)  = H(p, q) - H(p)
//! ```
//!
//! **The `0·ln 0 = 0` convention.** Terms with `p = 0` are defined to contribute 0 (the
//! limit of `p·ln p` as `p → 0`), even when `q = 0` there as well. This is implemented by
//! masking, not by adding an epsilon: where `p == 0`, `ln p` (and `ln q`) are replaced by
//! 0 before the product, so both the value and the autograd gradient stay finite. Where
//! `p > 0` but `q = 0` the result is `+inf`, which is the mathematically correct value.
//!
//! Consequences that the tests check: `H(p, q) = H(p) + KL(p ‖ q)`, `KL(p ‖ p) = 0`,
//! `KL ≥ 0`, `H(p, q) ≥ 0`.
//!
//! [`kl_div`] takes the second distribution as **log**-probabilities (what a model
//! produces through [`log_softmax`](crate::log_softmax)); [`cross_entropy_probs`] takes
//! plain probabilities.

use candle_core::Tensor;

use crate::error::{LossError, Result};
use crate::reduction::Reduction;
use crate::util::{float_input, float_target, same_shape};

fn check_rank(op: &'static str, p: &Tensor) -> Result<()> {
    if p.rank() == 0 {
        return Err(LossError::shape(
            op,
            "distributions must have at least one dimension (the last one), got a scalar",
        ));
    }
    Ok(())
}

/// `ln p` with `p == 0` replaced by `ln 1 = 0` (value and gradient finite there).
fn safe_ln(p: &Tensor) -> Result<Tensor> {
    let p_zero = p.eq(0.0)?;
    Ok(p_zero.where_cond(&p.ones_like()?, p)?.log()?)
}

/// KL divergence `KL(p ‖ q) = Σ p·(ln p - ln q)` along the last dimension.
///
/// * `p_target`: probabilities (may contain exact zeros, see the module docs).
/// * `log_q`: log-probabilities of `q`, same shape as `p_target`.
///
/// Unreduced shape: the input shape without its last dimension (one value per
/// distribution). `Reduction::Mean` averages over distributions ("batchmean"), which is
/// the mathematically meaningful mean; it differs from PyTorch's `reduction="mean"`,
/// which also divides by the number of classes.
pub fn kl_div(p_target: &Tensor, log_q: &Tensor, reduction: Reduction) -> Result<Tensor> {
    const OP: &str = "kl_div";
    let p = float_input(OP, "p_target", p_target)?;
    check_rank(OP, &p)?;
    let log_q = float_target(OP, "log_q", log_q, p.dtype())?;
    same_shape(OP, "p_target", &p, "log_q", &log_q)?;
    let ln_p = safe_ln(&p)?;
    let p_zero = p.eq(0.0)?;
    let log_q = p_zero.where_cond(&log_q.zeros_like()?, &log_q)?;
    let kl = (&p * (ln_p - log_q)?)?.sum(p.rank() - 1)?;
    reduction.apply(&kl)
}

/// Entropy `H(p) = -Σ p·ln p` along the last dimension (natural log, nats), with
/// `0·ln 0 = 0`.
///
/// Returns one value per distribution: the input shape without its last dimension.
pub fn entropy(p: &Tensor) -> Result<Tensor> {
    const OP: &str = "entropy";
    let p = float_input(OP, "p", p)?;
    check_rank(OP, &p)?;
    let ln_p = safe_ln(&p)?;
    Ok((&p * ln_p)?.sum(p.rank() - 1)?.neg()?)
}

/// Cross-entropy between distributions `H(p, q) = -Σ p·ln q` along the last dimension,
/// with `q` given as **probabilities** and terms with `p = 0` contributing 0.
///
/// Returns one value per distribution: the input shape without its last dimension.
/// Satisfies `H(p, q) = H(p) + KL(p ‖ q)`.
pub fn cross_entropy_probs(p: &Tensor, q: &Tensor) -> Result<Tensor> {
    const OP: &str = "cross_entropy_probs";
    let p = float_input(OP, "p", p)?;
    check_rank(OP, &p)?;
    let q = float_target(OP, "q", q, p.dtype())?;
    same_shape(OP, "p", &p, "q", &q)?;
    // Where p == 0, replace q by 1 before the log so that even q == 0 gives 0·ln 1 = 0.
    let p_zero = p.eq(0.0)?;
    let ln_q = p_zero.where_cond(&q.ones_like()?, &q)?.log()?;
    Ok((&p * ln_q)?.sum(p.rank() - 1)?.neg()?)
}
