//! The hooks `fit` calls, in the order it calls them.
use super::{EpochMetrics, FitState};
use crate::optim::Optimizer;
use crate::Result;

/// One training step's loss, known before the update.
#[derive(Debug, Clone, Copy)]
pub struct StepLoss {
    /// 0-based epoch and step within it.
    pub epoch: usize,
    pub step: usize,
    /// The mean loss of the batch (penalty included).
    pub loss: f64,
    /// The learning rate of this step (before group multipliers).
    pub lr: f64,
    /// When `loss` is not finite: its parts, so the error can say which is to blame.
    pub parts: Option<LossParts>,
}

/// The parts of a non-finite step loss.
#[derive(Debug, Clone, Copy)]
pub struct LossParts {
    pub data_loss: f64,
    pub l2_penalty: Option<f64>,
    /// All trainable weights were still finite before this step.
    pub weights_finite: bool,
}

impl LossParts {
    /// Reads the data loss and penalty and checks the weights.
    pub fn of(
        data_loss: &candle_core::Tensor,
        l2_penalty: Option<&candle_core::Tensor>,
        params: &[(String, candle_core::Var)],
    ) -> Self {
        let value = |t: &candle_core::Tensor| {
            t.to_dtype(candle_core::DType::F64)
                .and_then(|t| t.to_scalar::<f64>())
                .unwrap_or(f64::NAN)
        };
        let weights_finite = params.iter().all(|(_, v)| {
            v.as_tensor()
                .to_dtype(candle_core::DType::F64)
                .and_then(|t| t.sum_all())
                .and_then(|t| t.to_scalar::<f64>())
                .is_ok_and(f64::is_finite)
        });
        LossParts {
            data_loss: value(data_loss),
            l2_penalty: l2_penalty.map(value),
            weights_finite,
        }
    }
}

/// The end of an epoch: its metrics are the last entry of `state.history`.
pub struct EpochEnd<'a> {
    /// Callbacks may update the counters they own (early stopping's).
    pub state: &'a mut FitState,
    pub optimizer: &'a dyn Optimizer,
    /// This epoch is the best so far by the selection metric.
    pub is_best: bool,
}

impl EpochEnd<'_> {
    /// This epoch's metrics.
    pub fn metrics(&self) -> &EpochMetrics {
        self.state.history.last().expect("fit pushes the epoch's metrics first")
    }
    /// 1-based number of this epoch.
    pub fn epoch(&self) -> usize {
        self.state.history.len()
    }
}

/// The end of a `fit` call.
pub struct FitEnd<'a> {
    pub state: &'a FitState,
    pub stopped_early: bool,
    pub complete: bool,
}

/// Whether training goes on after an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Continue,
    Stop,
}

/// Something that watches (or steers) a run. Every hook does nothing by default;
/// an error from any hook ends the run with that error.
pub trait Callback {
    /// Before the first epoch of this call; `state` is the resumed state.
    fn on_fit_start(&mut self, _state: &FitState, _epochs: usize) -> Result<()> {
        Ok(())
    }
    /// Before the first batch of `epoch` (0-based), which has `batches` batches.
    fn on_epoch_start(&mut self, _epoch: usize, _batches: usize) -> Result<()> {
        Ok(())
    }
    /// After a step's loss is computed, before backward and the update.
    fn on_loss(&mut self, _step: &StepLoss) -> Result<()> {
        Ok(())
    }
    /// After the update; `mean_loss` is the epoch's running mean.
    fn on_batch_end(&mut self, _step: &StepLoss, _mean_loss: f64) -> Result<()> {
        Ok(())
    }
    /// After the epoch's metrics are in: decide whether to go on. Every
    /// callback's `on_epoch_end` runs (even after one said stop).
    fn on_epoch_end(&mut self, _end: &mut EpochEnd<'_>) -> Result<Control> {
        Ok(Control::Continue)
    }
    /// After every callback's `on_epoch_end`, so it sees their decisions (a
    /// checkpoint stores the early-stopping counter of this epoch).
    fn after_epoch(&mut self, _end: &EpochEnd<'_>) -> Result<()> {
        Ok(())
    }
    /// After the last epoch of this call.
    fn on_fit_end(&mut self, _end: &FitEnd<'_>) -> Result<()> {
        Ok(())
    }
}
