//! The divergence guard: stop with a clear error when the loss is not finite.
use super::{Callback, StepLoss};
use crate::{Result, TrainError};

/// Fails the run with [`TrainError::Diverged`] (epoch, step, loss, learning rate
/// and what to try) at the first step whose loss is NaN or infinite, before that
/// step's update.
#[derive(Debug, Clone, Copy, Default)]
pub struct DivergenceGuard;

impl Callback for DivergenceGuard {
    fn on_loss(&mut self, s: &StepLoss) -> Result<()> {
        if s.loss.is_finite() {
            return Ok(());
        }
        Err(match s.parts {
            // Blame the part that is not finite: weights, L2 penalty or data loss.
            Some(p) => crate::validate::diverged(
                s.epoch + 1,
                s.step + 1,
                p.data_loss,
                p.l2_penalty,
                p.weights_finite,
                s.lr,
            ),
            None => TrainError::Diverged {
                epoch: s.epoch + 1,
                step: s.step + 1,
                loss: s.loss,
                lr: s.lr,
            },
        })
    }
}
