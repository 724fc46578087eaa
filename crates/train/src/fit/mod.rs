//! `fit`: the one training loop of digitlab, over any [`ModuleT`].
//!
//! In the spirit of burn-train's `Learner`, but small: the loop itself only runs
//! epochs of minibatches (schedule → forward → loss → backward → clip → optimizer
//! step), computes the epoch's metrics (train loss/accuracy, validation
//! loss/accuracy/macro-F1, timings) and tracks the best epoch of a chosen metric.
//! Everything else is a [`Callback`] object: progress bars or log lines
//! ([`Progress`]), early stopping ([`EarlyStopping`]), best/last checkpoints and
//! resume ([`Checkpoints`]), the best epoch's weights kept in memory ([`KeepBest`]),
//! the divergence guard ([`DivergenceGuard`]), TensorBoard event files ([`TensorBoard`]).
//! `digitlab_train::train` is the config front-end that builds a model and data
//! from an `ExperimentConfig` and calls it; head training in `digitlab-finetune`
//! calls it too.
//!
//! The model, the optimizer (over [`ParamGroup`]s: trainable or frozen, with
//! per-group learning-rate multipliers and weight decay) and the batches
//! ([`BatchSource`]) come from the caller:
//!
//! ```
//! use candle_core::{DType, Device, Module, ModuleT, Tensor};
//! use candle_nn::{Linear, VarBuilder, VarMap};
//! use digitlab_data::{catalog, Batcher, DatasetKind, Pipeline, Split};
//! use digitlab_models::OutputKind;
//! use digitlab_train::fit::{DivergenceGuard, Fit};
//! use digitlab_train::optim::{AdamConfig, OptimizerConfig, ParamGroup};
//! use digitlab_train::trainable_params;
//!
//! /// Any model: here a linear layer on flattened 8x8 images.
//! struct Probe(Linear);
//! impl ModuleT for Probe {
//!     fn forward_t(&self, xs: &Tensor, _train: bool) -> candle_core::Result<Tensor> {
//!         self.0.forward(&xs.flatten_from(1)?)
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let data = catalog::load(DatasetKind::Digits, Split::Train, std::path::Path::new("."))?;
//! let pipeline = Pipeline::default();
//! let batches = Batcher::new(&data, &pipeline, 64, &Device::Cpu)?.training(7);
//!
//! let varmap = VarMap::new();
//! let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
//! let model = Probe(candle_nn::linear(64, 10, vb.pp("fc"))?);
//! let groups = vec![ParamGroup::trainable("fc", trainable_params(&varmap))];
//! let mut optimizer = OptimizerConfig::from(AdamConfig::new(0.01)).build_groups(groups)?;
//!
//! let mut guard = DivergenceGuard;
//! let outcome = Fit::new(&model, OutputKind::Logits(10), optimizer.as_mut(), &batches)
//!     .epochs(3)
//!     .callback(&mut guard)
//!     .run()?;
//! let last = outcome.state.history.last().unwrap();
//! assert!(last["train_accuracy"] > 0.8, "{last:?}");
//! # Ok(())
//! # }
//! ```
mod callback;
mod checkpoints;
mod divergence;
mod early_stopping;
mod keep_best;
mod progress;
mod tensorboard;

pub use callback::{Callback, Control, EpochEnd, FitEnd, LossParts, StepLoss};
pub use checkpoints::{Checkpoints, RunInfo};
pub use divergence::DivergenceGuard;
pub use early_stopping::EarlyStopping;
pub use keep_best::KeepBest;
pub use progress::{Progress, Verbosity};
pub use tensorboard::{hparams_of, tag_for, TensorBoard, END_IMAGES};

use crate::config::MetricName;
use crate::eval::{compute_loss, evaluate_source, predict, Evaluation};
use crate::optim::{clip_grad_norm, Optimizer};
use crate::schedule::{ConstantLr, LrSchedule};
use crate::source::BatchSource;
use crate::Result;
use candle_core::{DType, ModuleT, Tensor, Var};
use digitlab_losses::{l2_penalty, L2Convention, LossKind, Reduction};
use digitlab_models::OutputKind;
use std::collections::BTreeMap;
use std::time::Instant;

/// Metrics of one epoch, by name (`epoch`, `lr`, `train_loss`, `train_accuracy`,
/// `val_loss`, `val_accuracy`, `val_macro_f1`, `seconds`, `train_samples_per_second`).
pub type EpochMetrics = BTreeMap<String, f64>;

/// What a run has done so far: what a checkpoint stores and resume restores.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FitState {
    /// One entry per completed epoch.
    pub history: Vec<EpochMetrics>,
    /// Best value of the selection metric so far, and its epoch (1-based).
    pub best_metric: Option<f64>,
    pub best_epoch: Option<usize>,
    /// Epochs since the early-stopping metric last improved.
    pub epochs_without_improvement: usize,
}

impl FitState {
    /// Epochs completed.
    pub fn epochs_done(&self) -> usize {
        self.history.len()
    }
}

/// An L2 penalty added to every training step's loss (not to evaluation losses).
#[derive(Debug, Clone)]
pub struct L2Penalty {
    /// The penalised tensors (weights; usually not biases or norm scales).
    pub vars: Vec<Var>,
    /// λ; 0 adds nothing.
    pub strength: f64,
    pub convention: L2Convention,
}

impl L2Penalty {
    fn penalty(&self) -> Result<Option<Tensor>> {
        if self.strength > 0.0 && !self.vars.is_empty() {
            let ws: Vec<&Tensor> = self.vars.iter().map(|v| v.as_tensor()).collect();
            Ok(Some(l2_penalty(&ws, self.strength, self.convention)?))
        } else {
            Ok(None)
        }
    }
}

/// What a finished (or stopped) `fit` produced.
#[derive(Debug, Clone)]
pub struct FitOutcome {
    pub state: FitState,
    /// A callback stopped the run (early stopping).
    pub stopped_early: bool,
    /// Ran to the end or was stopped by a callback (false when cut short by
    /// [`Fit::stop_after`]).
    pub complete: bool,
    /// Seconds in training steps (epochs without validation).
    pub train_seconds: f64,
    /// Seconds in validation passes.
    pub eval_seconds: f64,
    /// Examples processed by training steps.
    pub train_samples: u64,
    /// The last validation result (after the last epoch run, or of the resumed
    /// weights when no epoch was left).
    pub val: Option<Evaluation>,
}

/// A training run being set up; [`Fit::run`] runs it.
pub struct Fit<'a> {
    model: &'a dyn ModuleT,
    output: OutputKind,
    optimizer: &'a mut dyn Optimizer,
    train: &'a dyn BatchSource,
    val: Option<&'a dyn BatchSource>,
    loss: LossKind,
    epochs: usize,
    schedule: &'a dyn LrSchedule,
    base_lr: f64,
    grad_clip: Option<f64>,
    l2: Option<L2Penalty>,
    select: Option<MetricName>,
    baseline: Option<f64>,
    state: FitState,
    stop_after: Option<usize>,
    callbacks: Vec<&'a mut dyn Callback>,
}

impl<'a> Fit<'a> {
    /// Trains `model`, whose outputs are read as `output` says, with `optimizer`
    /// on `train`: by default one epoch, cross-entropy, the optimizer's current
    /// learning rate throughout, no validation, no callbacks.
    pub fn new(
        model: &'a dyn ModuleT,
        output: OutputKind,
        optimizer: &'a mut dyn Optimizer,
        train: &'a dyn BatchSource,
    ) -> Self {
        let base_lr = optimizer.learning_rate();
        Self {
            model,
            output,
            optimizer,
            train,
            val: None,
            loss: LossKind::CrossEntropy,
            epochs: 1,
            schedule: &ConstantLr,
            base_lr,
            grad_clip: None,
            l2: None,
            select: None,
            baseline: None,
            state: FitState::default(),
            stop_after: None,
            callbacks: Vec::new(),
        }
    }

    /// Total epochs of the run (a resumed run continues to this number).
    pub fn epochs(self, epochs: usize) -> Self {
        Self { epochs, ..self }
    }
    /// The training loss (applied to raw outputs as [`compute_loss`] does).
    pub fn loss(self, loss: LossKind) -> Self {
        Self { loss, ..self }
    }
    /// Evaluate on `val` after every epoch (`val_loss`, `val_accuracy`, `val_macro_f1`).
    pub fn validation(self, val: &'a dyn BatchSource) -> Self {
        Self { val: Some(val), ..self }
    }
    /// The learning rate of every step: `schedule` applied to `base_lr`.
    pub fn schedule(self, schedule: &'a dyn LrSchedule, base_lr: f64) -> Self {
        Self {
            schedule,
            base_lr,
            ..self
        }
    }
    /// Clip the global gradient norm of the optimizer's parameters.
    pub fn grad_clip(self, max_norm: Option<f64>) -> Self {
        Self {
            grad_clip: max_norm,
            ..self
        }
    }
    pub fn l2(self, penalty: L2Penalty) -> Self {
        Self {
            l2: Some(penalty),
            ..self
        }
    }
    /// Track the best epoch by `metric` ([`FitState::best_epoch`], and the `best`
    /// checkpoint of [`Checkpoints`]).
    pub fn select(self, metric: MetricName) -> Self {
        Self {
            select: Some(metric),
            ..self
        }
    }
    /// With [`Fit::select`]: an epoch counts as best only when it also beats
    /// `value`, the score of the weights this run starts from (e.g. a head trained
    /// before the backbone is unfrozen; [`KeepBest::with_incumbent`] keeps them).
    pub fn baseline(self, value: Option<f64>) -> Self {
        Self {
            baseline: value,
            ..self
        }
    }
    /// Continue from `state` (restored from a checkpoint, see [`Checkpoints::resume`]).
    pub fn resume_from(self, state: FitState) -> Self {
        Self { state, ..self }
    }
    /// Stop after this many epochs of this call (to test resume).
    pub fn stop_after(self, epochs: Option<usize>) -> Self {
        Self {
            stop_after: epochs,
            ..self
        }
    }
    /// Adds a callback; callbacks run in the order they were added.
    pub fn callback(mut self, callback: &'a mut dyn Callback) -> Self {
        self.callbacks.push(callback);
        self
    }

    fn num_classes(&self) -> usize {
        match self.output {
            OutputKind::BinaryLogit => 2,
            OutputKind::Logits(k) => k,
        }
    }

    fn validate(&self) -> Result<(Option<Evaluation>, f64)> {
        let Some(val) = self.val else { return Ok((None, 0.0)) };
        let t = Instant::now();
        let e = evaluate_source(self.model, self.output, val, self.num_classes(), self.loss)?;
        Ok((Some(e), t.elapsed().as_secs_f64()))
    }

    /// Runs the epochs left.
    pub fn run(mut self) -> Result<FitOutcome> {
        let params: Vec<(String, Var)> = self
            .optimizer
            .params()
            .iter()
            .map(|p| (p.name.clone(), p.var.clone()))
            .collect();
        let nb = self.train.num_batches();
        let epochs = self.epochs;
        for c in self.callbacks.iter_mut() {
            c.on_fit_start(&self.state, epochs)?;
        }
        let (mut train_seconds, mut eval_seconds, mut train_samples) = (0.0, 0.0, 0u64);
        let (mut stopped_early, mut complete, mut val_eval) = (false, true, None);
        for (epochs_run, epoch) in (self.state.epochs_done()..epochs).enumerate() {
            if self.stop_after.is_some_and(|m| epochs_run >= m) {
                complete = false;
                break;
            }
            for c in self.callbacks.iter_mut() {
                c.on_epoch_start(epoch, nb)?;
            }
            let t0 = Instant::now();
            let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0u64, 0u64);
            for (step, batch) in self.train.batches(epoch).enumerate() {
                let batch = batch?;
                let lr = self
                    .schedule
                    .lr_at(self.base_lr, epoch as f64 + step as f64 / nb as f64, epochs);
                self.optimizer.set_learning_rate(lr);
                let out = self.model.forward_t(&batch.inputs, true)?;
                let data_loss = compute_loss(self.loss, &out, &batch.labels, Reduction::Mean)?;
                let penalty = self.l2.as_ref().map(L2Penalty::penalty).transpose()?.flatten();
                let loss = match &penalty {
                    Some(p) => (&data_loss + p)?,
                    None => data_loss.clone(),
                };
                let lv = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                // Only a non-finite loss pays for finding out which part is to blame.
                let parts = if lv.is_finite() {
                    None
                } else {
                    Some(LossParts::of(&data_loss, penalty.as_ref(), &params))
                };
                let info = StepLoss {
                    epoch,
                    step,
                    loss: lv,
                    lr,
                    parts,
                };
                for c in self.callbacks.iter_mut() {
                    c.on_loss(&info)?;
                }
                let mut grads = loss.backward()?;
                if let Some(max) = self.grad_clip {
                    clip_grad_norm(&params, &mut grads, max)?;
                }
                self.optimizer.step(&grads)?;
                let n = batch.examples()? as u64;
                let (pred, _) = predict(self.output, &out)?;
                let labels: Vec<u32> = batch.labels.to_vec1()?;
                correct += pred.iter().zip(&labels).filter(|(p, l)| p == l).count() as u64;
                loss_sum += lv * n as f64;
                seen += n;
                for c in self.callbacks.iter_mut() {
                    c.on_batch_end(&info, loss_sum / seen as f64)?;
                }
            }
            let epoch_train_secs = t0.elapsed().as_secs_f64();
            train_seconds += epoch_train_secs;
            train_samples += seen;

            let mut m = EpochMetrics::new();
            m.insert("epoch".into(), (epoch + 1) as f64);
            m.insert("lr".into(), self.optimizer.learning_rate());
            m.insert("train_loss".into(), loss_sum / seen.max(1) as f64);
            m.insert("train_accuracy".into(), correct as f64 / seen.max(1) as f64);
            let (e, secs) = self.validate()?;
            eval_seconds += secs;
            if let Some(e) = e {
                m.insert("val_loss".into(), e.loss);
                m.insert("val_accuracy".into(), e.accuracy());
                m.insert("val_macro_f1".into(), e.macro_f1());
                val_eval = Some(e);
            }
            m.insert("seconds".into(), t0.elapsed().as_secs_f64());
            m.insert(
                "train_samples_per_second".into(),
                seen as f64 / epoch_train_secs.max(1e-9),
            );

            let is_best = self.select.is_some_and(|s| {
                monitored(&m, s).is_some_and(|v| improved(s, v, self.state.best_metric.or(self.baseline), 0.0))
            });
            if is_best {
                self.state.best_metric = self.select.and_then(|s| monitored(&m, s));
                self.state.best_epoch = Some(epoch + 1);
            }
            self.state.history.push(m);

            let mut end = EpochEnd {
                state: &mut self.state,
                optimizer: &*self.optimizer,
                is_best,
            };
            let mut stop = false;
            for c in self.callbacks.iter_mut() {
                stop |= c.on_epoch_end(&mut end)? == Control::Stop;
            }
            for c in self.callbacks.iter_mut() {
                c.after_epoch(&end)?;
            }
            if stop {
                stopped_early = true;
                break;
            }
        }
        // A resumed run that had no epochs left still reports validation metrics.
        if val_eval.is_none() && !self.state.history.is_empty() {
            let (e, secs) = self.validate()?;
            eval_seconds += secs;
            val_eval = e;
        }
        let end = FitEnd {
            state: &self.state,
            stopped_early,
            complete,
        };
        for c in self.callbacks.iter_mut() {
            c.on_fit_end(&end)?;
        }
        Ok(FitOutcome {
            state: self.state,
            stopped_early,
            complete,
            train_seconds,
            eval_seconds,
            train_samples,
            val: val_eval,
        })
    }
}

/// The value of `metric` in `metrics`, if it was measured.
pub fn monitored(metrics: &EpochMetrics, metric: MetricName) -> Option<f64> {
    metrics.get(metric.as_str()).copied()
}

/// Whether `new` improves on `best` by more than `min_delta` in `metric`'s direction.
pub fn improved(metric: MetricName, new: f64, best: Option<f64>, min_delta: f64) -> bool {
    match best {
        None => true,
        Some(b) if metric.higher_is_better() => new > b + min_delta,
        Some(b) => new < b - min_delta,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn improvement_respects_direction_and_delta() {
        assert!(improved(MetricName::ValAccuracy, 0.9, None, 0.0));
        assert!(improved(MetricName::ValAccuracy, 0.91, Some(0.9), 0.0));
        assert!(!improved(MetricName::ValAccuracy, 0.905, Some(0.9), 0.01));
        assert!(improved(MetricName::ValLoss, 0.2, Some(0.3), 0.0));
        assert!(!improved(MetricName::ValLoss, 0.3, Some(0.3), 0.0));
    }
}
