//! Fine-tuning beyond the linear probe: the backbone runs on every batch, inside
//! [`digitlab_train::fit`], with the head and the unfrozen stages as parameter
//! groups (see [`crate::protocol`] for the config keys).
//!
//! The trained variables are those of the [`CreatedModel`]'s own `VarMap`, so the
//! exported model, `eval` and `predict` see the fine-tuned backbone.
use std::sync::Arc;

use candle_core::{DType, ModuleT, Tensor};
use candle_nn::VarBuilder;
use digitlab_data::{Batcher, Dataset, Pipeline};
use digitlab_losses::LossKind;
use digitlab_models::{Backbone, Head, OutputKind, StageModes};
use digitlab_train::eval::evaluate_source;
use digitlab_train::fit::{monitored, DivergenceGuard, KeepBest, Progress};
use digitlab_train::trainer::EpochMetrics;
use digitlab_train::{trainable_params, Evaluation, Fit, MetricName, ParamGroup, PreparedData, Verbosity};

use crate::error::{FinetuneError, Result};
use crate::head::{HeadRun, Standardizer};
use crate::protocol::Protocol;
use crate::stages::{split_stages, Unfreeze};
use crate::transfer::TransferConfig;
use crate::zoo::CreatedModel;

/// `head(standardize(backbone.features(x)))`, the backbone's output detached when
/// only the head trains (no backward pass through a network nothing of which is
/// updated).
///
/// The standardisation is the head phase's, fixed: the head keeps training in the
/// space it was trained in. Folded into the head instead ([`Standardizer::fold`]),
/// its weights would carry the features' `1 / std` — then Adam's steps, which do
/// not scale with the weights, would be far too small for the head and far too
/// large, once amplified, for the backbone.
pub struct LiveClassifier {
    backbone: Arc<dyn Backbone>,
    standardizer: Option<Standardizer>,
    head: Head,
    detach: bool,
}

impl LiveClassifier {
    /// The classifier over `created`'s variables (its head re-read from the
    /// `VarMap`, `dropout` before it during training).
    pub fn new(created: &CreatedModel, dropout: f32, detach: bool) -> Result<Self> {
        Self::standardized(created, dropout, detach, None)
    }
    /// The same with `standardizer` between the backbone and the head.
    pub fn standardized(
        created: &CreatedModel,
        dropout: f32,
        detach: bool,
        standardizer: Option<&Standardizer>,
    ) -> Result<Self> {
        let device = created.device.clone();
        let vb = VarBuilder::from_varmap(&created.varmap, DType::F32, &device);
        let head = Head::new(
            created.feature_dim(),
            created.num_classes,
            dropout,
            vb.pp(created.head_prefix()),
        )?;
        Ok(Self {
            backbone: created.backbone(),
            standardizer: standardizer.cloned(),
            head,
            detach,
        })
    }
    pub fn head(&self) -> &Head {
        &self.head
    }
}

impl ModuleT for LiveClassifier {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let f = self.backbone.features(xs, train)?;
        let f = if self.detach { f.detach() } else { f };
        let f = match &self.standardizer {
            Some(s) => f.broadcast_sub(&s.mean)?.broadcast_div(&s.std)?,
            None => f,
        };
        self.head.forward_t(&f, train)
    }
}

/// Writes `weight` / `bias` into the head variables of `created` (a head trained
/// on cached features taking over before the backbone phase).
pub fn set_head(created: &CreatedModel, weight: &Tensor, bias: &Tensor) -> Result<()> {
    let prefix = created.head_prefix();
    let data = created.varmap.data().lock().expect("varmap lock poisoned");
    for (name, value) in [("weight", weight), ("bias", bias)] {
        let key = format!("{prefix}.{name}");
        let var = data
            .get(&key)
            .ok_or_else(|| FinetuneError::Config(format!("{}: no variable {key}", created.name)))?;
        var.set(&value.to_device(var.device())?)?;
    }
    Ok(())
}

/// Folds `standardizer` into the head variables of `created` (after a phase
/// that trained the head behind it): the model then takes raw features.
pub fn fold_head(created: &CreatedModel, standardizer: &Standardizer) -> Result<()> {
    let (w, b) = head_tensors(&created.varmap, created.head_prefix())?;
    let (w, b) = standardizer.fold(&w, &b)?;
    set_head(created, &w, &b)
}

/// The head's `weight` and `bias` under `prefix` in `varmap` (detached copies of
/// the handles, not of the data).
pub fn head_tensors(varmap: &candle_nn::VarMap, prefix: &str) -> Result<(Tensor, Tensor)> {
    let data = varmap.data().lock().expect("varmap lock poisoned");
    let get = |n: &str| {
        data.get(&format!("{prefix}.{n}"))
            .map(|v| v.as_tensor().detach())
            .ok_or_else(|| FinetuneError::Config(format!("head has no variable {prefix}.{n}")))
    };
    Ok((get("weight")?, get("bias")?))
}

/// The optimizer's groups for one phase, and the names of the stages that train.
///
/// `head_only`: the head alone (everything else one frozen group). Otherwise the
/// head (learning-rate factor 1), then one group per unfrozen stage with the
/// protocol's factors ([`Protocol::stage_lr_scales`]), the other stages frozen.
/// Also sets which stages run in eval mode: the frozen ones unless
/// `frozen_bn = "train"`, and the trainable ones with `unfrozen_bn = "eval"`.
pub fn param_groups(
    created: &CreatedModel,
    protocol: &Protocol,
    head_only: bool,
) -> Result<(Vec<ParamGroup>, Vec<String>)> {
    let backbone = created.backbone();
    let stages = backbone.stages();
    let prefix = format!("{}.", created.head_prefix());
    let mut rest = trainable_params(&created.varmap);
    let (head, others): (Vec<_>, Vec<_>) = rest.drain(..).partition(|(n, _)| n.starts_with(&prefix));
    let mut groups = vec![ParamGroup::trainable("head", head)];
    let mut trained = vec![];
    let unfreeze = if head_only {
        Unfreeze::Last(0)
    } else {
        protocol.unfreeze
    };
    let mut others = others;
    if stages.is_empty() {
        // Not split into stages: the whole backbone is one group (mode = "full" only).
        if unfreeze == Unfreeze::Full && protocol.unfrozen_bn.is_eval() && !head_only {
            return Err(FinetuneError::Config(format!(
                "{}: unfrozen_bn = \"eval\" needs a network split into stages; use unfrozen_bn = \"train\"",
                created.name
            )));
        }
        if unfreeze == Unfreeze::Full {
            let scale = protocol.backbone_lr_mult;
            groups.push(ParamGroup::trainable("backbone", std::mem::take(&mut others)).with_lr_scale(scale));
            trained.push("backbone".to_string());
        } else if unfreeze != Unfreeze::Last(0) {
            split_stages(created.name, &stages, created.head_prefix(), unfreeze)?;
        }
        groups.push(ParamGroup::frozen("frozen", others));
        return Ok((groups, trained));
    }
    split_stages(created.name, &stages, created.head_prefix(), unfreeze)?;
    let n = match unfreeze {
        Unfreeze::Full => stages.len(),
        Unfreeze::Last(n) => n,
    };
    let split = stages.len() - n;
    let scales = protocol.stage_lr_scales(n);
    for (stage, scale) in stages[split..].iter().zip(scales) {
        let (mine, rest): (Vec<_>, Vec<_>) = others.into_iter().partition(|(name, _)| stage.contains(name));
        others = rest;
        groups.push(ParamGroup::trainable(stage.name.clone(), mine).with_lr_scale(scale));
        trained.push(stage.name.clone());
    }
    groups.push(ParamGroup::frozen("frozen", others));
    // Backward stops at the last frozen stage; eval mode may reach further
    // (`unfrozen_bn = "eval"`) or not as far (`frozen_bn = "train"`).
    let eval = match (protocol.unfrozen_bn.is_eval(), protocol.frozen_bn.is_eval()) {
        (true, _) => stages.len(),
        (false, true) => split,
        (false, false) => 0,
    };
    backbone.set_stage_modes(StageModes { frozen: split, eval })?;
    Ok((groups, trained))
}

/// What a phase starts from: the head phase's feature standardisation (a fixed
/// layer before the head, see [`LiveClassifier`]) and its score to beat.
#[derive(Debug, Clone, Default)]
pub struct PhaseStart {
    pub standardizer: Option<Standardizer>,
    pub incumbent: Option<Incumbent>,
}

/// The selection score of a phase's kept weights, and that epoch (1-based; `None`
/// when not recorded), for the next phase to beat.
#[derive(Debug, Clone, Copy)]
pub struct Incumbent {
    pub score: f64,
    pub epoch: Option<usize>,
}

impl Incumbent {
    /// The score of the kept epoch of `history` by `select` (`None` when that
    /// epoch or the metric was not recorded).
    pub fn of(history: &[EpochMetrics], best_epoch: Option<usize>, select: MetricName) -> Option<Self> {
        let epoch = best_epoch?;
        let score = monitored(history.get(epoch.checked_sub(1)?)?, select)?;
        Some(Self {
            score,
            epoch: Some(epoch),
        })
    }
}

/// One phase of live training and its results.
pub struct Phase {
    pub history: Vec<EpochMetrics>,
    pub train_seconds: f64,
    pub train_samples: u64,
    pub val: Option<Evaluation>,
    pub best_epoch: Option<usize>,
    /// Stages trained in this phase (`head` not listed).
    pub stages: Vec<String>,
    /// Parameters the optimizer updated.
    pub parameters: usize,
    pub trainable: Vec<String>,
}

/// What a live phase needs from its run.
///
/// Evaluation passes of a backbone that trains run `feature_batch_size` images at
/// a time, not `eval_batch_size`: its weights are variables, so candle keeps every
/// activation of a pass until it ends (EfficientNet-Lite0 at 64 px holds about 40 MB
/// per image; a pass over 1,000 images would not fit in memory).
pub struct LiveTune<'a> {
    pub created: &'a CreatedModel,
    pub protocol: &'a Protocol,
    pub cfg: &'a TransferConfig,
    pub data: &'a PreparedData,
    /// The evaluation pipeline (resize, channels, normalisation).
    pub pipeline: &'a Pipeline,
    /// The same with the backbone's augmentation, for training batches.
    pub train_pipeline: &'a Pipeline,
    pub verbosity: Verbosity,
    pub label: &'a str,
}

impl LiveTune<'_> {
    /// Trains for `epochs` (the head alone with `head_only`), numbering epochs
    /// after `epochs_before`; keeps the best epoch's weights by `[transfer].select`.
    ///
    /// `start.incumbent`: the selection score of the weights as they are (a head
    /// phase before this one) and that phase's kept epoch. An epoch must beat it
    /// to be kept; when none does, those weights are put back — a fine-tune that
    /// only harms the validation score ends where the head phase did.
    /// `start.standardizer` stays unfolded: call [`fold_head`] afterwards.
    pub fn run(&self, head_only: bool, epochs: usize, epochs_before: usize, start: &PhaseStart) -> Result<Phase> {
        let created = self.created;
        let t = &self.cfg.transfer;
        let device = created.device.clone();
        let (groups, stages) = param_groups(created, self.protocol, head_only)?;
        let trainable: Vec<String> = groups
            .iter()
            .filter(|g| g.trainable)
            .flat_map(|g| g.params.iter().map(|(n, _)| n.clone()))
            .collect();
        let parameters = groups
            .iter()
            .filter(|g| g.trainable)
            .flat_map(|g| g.params.iter().map(|(_, v)| v.elem_count()))
            .sum();
        let mut optimizer = t.optim.build_groups(groups)?;
        let model = LiveClassifier::standardized(created, t.head_dropout, head_only, start.standardizer.as_ref())?;
        let train = Batcher::new(&self.data.train, self.train_pipeline, t.batch_size, &device)?.training(self.cfg.seed);
        let val = self
            .data
            .val
            .as_ref()
            .map(|v| Batcher::new(v, self.pipeline, t.feature_batch_size, &device))
            .transpose()?;
        let what = if head_only { "head" } else { "fine-tune" };
        let mut progress = Progress::new(format!("{} {what}", self.label), self.verbosity);
        let mut guard = DivergenceGuard;
        let select = (val.is_some() || !t.select.needs_validation()).then_some(t.select);
        let incumbent = start.incumbent.filter(|_| select.is_some());
        let mut keep = KeepBest::of_varmap(&created.varmap);
        if incumbent.is_some() {
            keep = keep.with_incumbent()?;
        }
        let k = created.num_classes;
        let mut fit = Fit::new(&model, OutputKind::Logits(k), optimizer.as_mut(), &train)
            .epochs(epochs)
            .loss(LossKind::CrossEntropy)
            .callback(&mut progress)
            .callback(&mut guard);
        if let Some(v) = &val {
            fit = fit.validation(v);
        }
        if let Some(metric) = select {
            fit = fit
                .select(metric)
                .baseline(incumbent.map(|i| i.score))
                .callback(&mut keep);
        }
        let mut outcome = fit.run()?;
        if keep.restored() {
            if let Some(v) = &val {
                outcome.val = Some(evaluate_source(
                    &model,
                    OutputKind::Logits(k),
                    v,
                    k,
                    LossKind::CrossEntropy,
                )?);
            }
        }
        let mut history = outcome.state.history;
        for h in &mut history {
            if let Some(e) = h.get_mut("epoch") {
                *e += epochs_before as f64;
            }
        }
        Ok(Phase {
            history,
            train_seconds: outcome.train_seconds,
            train_samples: outcome.train_samples,
            val: outcome.val,
            best_epoch: keep
                .best_epoch()
                .filter(|_| select.is_some())
                .and_then(|e| match (e, incumbent) {
                    (0, Some(i)) => i.epoch,
                    _ => Some(e + epochs_before),
                }),
            stages,
            parameters,
            trainable,
        })
    }

    /// The classifier in eval mode on `ds` (no augmentation).
    pub fn evaluate(&self, ds: &Dataset) -> Result<Evaluation> {
        let created = self.created;
        let k = created.num_classes;
        let model = LiveClassifier::new(created, 0.0, true)?;
        let batches = Batcher::new(
            ds,
            self.pipeline,
            self.cfg.transfer.feature_batch_size,
            &created.device.clone(),
        )?;
        Ok(evaluate_source(
            &model,
            OutputKind::Logits(k),
            &batches,
            k,
            LossKind::CrossEntropy,
        )?)
    }

    /// The outcome as a [`HeadRun`] (the head read from the model's variables).
    pub fn head_run(
        &self,
        history: Vec<EpochMetrics>,
        main: Phase,
        train_seconds: f64,
        samples: u64,
    ) -> Result<HeadRun> {
        let model = LiveClassifier::new(self.created, self.cfg.transfer.head_dropout, true)?;
        Ok(HeadRun {
            head: model.head().clone(),
            varmap: self.created.varmap.clone(),
            trainable: main.trainable,
            history,
            train_seconds,
            eval_seconds: 0.0,
            train_samples: samples,
            val: main.val,
            best_epoch: main.best_epoch,
            parameters: main.parameters,
        })
    }
}
