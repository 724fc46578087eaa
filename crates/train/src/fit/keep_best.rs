//! Keep the best epoch's weights, not the last: an in-memory copy taken whenever
//! the selection metric ([`super::Fit::select`]) improves, put back when the run ends.
use super::{Callback, Control, EpochEnd, FitEnd};
use crate::Result;
use candle_core::{Tensor, Var};
use candle_nn::VarMap;

/// Restores the variables to their values at the best epoch when `fit` ends.
///
/// Give it every variable the run changes — parameters *and* batch-norm running
/// statistics (which train mode updates too), e.g. [`KeepBest::of_varmap`].
/// Without a selection metric, or when no epoch was ever best, nothing is
/// restored and the last epoch's weights stay. The copy lives in memory for the
/// run only: a run resumed from a checkpoint starts without one (use the
/// [`super::Checkpoints`] `best` files there).
pub struct KeepBest {
    vars: Vec<Var>,
    best: Option<Vec<Tensor>>,
    best_epoch: Option<usize>,
    restored: bool,
}

impl KeepBest {
    /// Watches `vars`.
    pub fn new(vars: Vec<Var>) -> Self {
        Self {
            vars,
            best: None,
            best_epoch: None,
            restored: false,
        }
    }
    /// Watches every variable of `varmap`.
    pub fn of_varmap(varmap: &VarMap) -> Self {
        let data = varmap.data().lock().expect("varmap lock poisoned");
        let mut named: Vec<(&String, &Var)> = data.iter().collect();
        named.sort_by(|a, b| a.0.cmp(b.0));
        Self::new(named.into_iter().map(|(_, v)| v.clone()).collect())
    }
    /// Also keeps the weights as they are now, as epoch 0: put back when no epoch
    /// beats them (give their score to [`super::Fit::baseline`]).
    pub fn with_incumbent(mut self) -> Result<Self> {
        self.best = Some(self.snapshot()?);
        self.best_epoch = Some(0);
        Ok(self)
    }
    fn snapshot(&self) -> Result<Vec<Tensor>> {
        // A deep copy: optimizers update variables in place.
        Ok(self
            .vars
            .iter()
            .map(|v| v.as_tensor().copy())
            .collect::<candle_core::Result<_>>()?)
    }
    /// The 1-based epoch whose weights the run ended with, when one was kept (0:
    /// the incumbent's, [`KeepBest::with_incumbent`]).
    pub fn best_epoch(&self) -> Option<usize> {
        self.best_epoch
    }
    /// Whether the best weights were put back (false when the last epoch was the best).
    pub fn restored(&self) -> bool {
        self.restored
    }
}

impl Callback for KeepBest {
    fn on_epoch_end(&mut self, end: &mut EpochEnd<'_>) -> Result<Control> {
        if end.is_best {
            self.best = Some(self.snapshot()?);
            self.best_epoch = Some(end.epoch());
        }
        Ok(Control::Continue)
    }

    fn on_fit_end(&mut self, end: &FitEnd<'_>) -> Result<()> {
        let (Some(best), Some(epoch)) = (&self.best, self.best_epoch) else {
            return Ok(());
        };
        if epoch == end.state.epochs_done() {
            return Ok(());
        }
        for (var, saved) in self.vars.iter().zip(best) {
            var.set(saved)?;
        }
        self.restored = true;
        Ok(())
    }
}
