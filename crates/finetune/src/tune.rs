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
use digitlab_models::{Backbone, Head, OutputKind};
use digitlab_train::eval::evaluate_source;
use digitlab_train::fit::{DivergenceGuard, KeepBest, Progress};
use digitlab_train::trainer::EpochMetrics;
use digitlab_train::{trainable_params, Evaluation, Fit, ParamGroup, PreparedData, Verbosity};

use crate::error::{FinetuneError, Result};
use crate::head::HeadRun;
use crate::protocol::Protocol;
use crate::stages::{split_stages, Unfreeze};
use crate::transfer::TransferConfig;
use crate::zoo::CreatedModel;

/// `head(backbone.features(x))`, the backbone's output detached when only the
/// head trains (no backward pass through a network nothing of which is updated).
pub struct LiveClassifier {
    backbone: Arc<dyn Backbone>,
    head: Head,
    detach: bool,
}

impl LiveClassifier {
    /// The classifier over `created`'s variables (its head re-read from the
    /// `VarMap`, `dropout` before it during training).
    pub fn new(created: &CreatedModel, dropout: f32, detach: bool) -> Result<Self> {
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

/// The optimizer's groups for one phase, and the names of the stages that train.
///
/// `head_only`: the head alone (everything else one frozen group). Otherwise the
/// head (learning-rate factor 1), then one group per unfrozen stage with the
/// protocol's factors ([`Protocol::stage_lr_scales`]), the other stages frozen.
/// Also sets which stages run in eval mode: the frozen ones, unless
/// `frozen_bn = "train"`.
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
    let eval_stages = if protocol.frozen_bn.is_eval() { split } else { 0 };
    backbone.freeze_stages(eval_stages)?;
    Ok((groups, trained))
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
    pub fn run(&self, head_only: bool, epochs: usize, epochs_before: usize) -> Result<Phase> {
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
        let model = LiveClassifier::new(created, t.head_dropout, head_only)?;
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
        let mut keep = KeepBest::of_varmap(&created.varmap);
        let select = (val.is_some() || !t.select.needs_validation()).then_some(t.select);
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
            fit = fit.select(metric).callback(&mut keep);
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
                .map(|e| e + epochs_before),
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
