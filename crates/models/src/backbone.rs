//! Splitting a network into a feature extractor (backbone) and a classification head.
//!
//! Every convolutional model here is `logits = head(features(x))`, where
//! `features` is a `[B, D]` embedding and the head is (optional dropout +) one
//! linear layer whose variables live under [`Backbone::head_prefix`].
//!
//! Fine-tuning with a frozen backbone then needs nothing model-specific:
//! 1. build (or load) the full model, take [`crate::Model::backbone`];
//! 2. compute `backbone.features(x, false)` once per image and cache it;
//! 3. train a new head, e.g. [`Head::new`]`(backbone.feature_dim(), k, p, vb.pp(prefix))`
//!    in its own `VarMap`, on the cached embeddings;
//! 4. assemble the classifier with [`crate::Model::with_head`]; to save it, write the
//!    backbone's variables minus those under `head_prefix`, plus the new head's.
//!    The result loads into `build_model(cfg, input, k, ..)` by name.
use crate::dropout::SeededDropout;
use crate::layers::{linear, FusedActivation, LinearExt};
use candle_core::{ModuleT, Result, Tensor};
use candle_nn::{Linear, VarBuilder};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A network that can stop before its classification head.
pub trait Backbone: Send + Sync {
    /// The embedding the head sees, `[B, feature_dim]` (in train mode, batch norm
    /// uses batch statistics and dropout inside the backbone is active; the head's
    /// own dropout is not applied).
    fn features(&self, xs: &Tensor, train: bool) -> Result<Tensor>;
    /// Width of [`Backbone::features`].
    fn feature_dim(&self) -> usize;
    /// Variable-name prefix of the head's linear layer (`fc`, `classifier.6`, ...).
    fn head_prefix(&self) -> &'static str;
    /// The network's stages from input to output, head excluded: every variable
    /// outside the head belongs to exactly one stage (see [`Stage::contains`]).
    /// Fine-tuning unfreezes "the last N stages". Empty when the architecture is
    /// not split into stages (only "frozen" and "full" apply then); a new
    /// architecture (e.g. AlexNet: the conv layers between its max-pools in
    /// `features.*`, then `classifier.1` and `classifier.4`) overrides this.
    fn stages(&self) -> Vec<Stage> {
        Vec::new()
    }
    /// Makes the first `n` of [`Backbone::stages`] run in eval mode whatever
    /// `train` says — frozen stages keep their batch-norm running statistics and
    /// use no dropout — while the later stages follow `train`; 0 undoes it. Their
    /// parameters also get no gradient (backward stops at the last frozen stage,
    /// [`FrozenStages::cut`]). Errors when `n` exceeds the number of stages.
    fn freeze_stages(&self, n: usize) -> Result<()> {
        self.set_stage_modes(StageModes { frozen: n, eval: n })
    }
    /// [`Backbone::freeze_stages`] with the two halves of "frozen" set apart:
    /// backward stops after the first `modes.frozen` stages, and the first
    /// `modes.eval` stages run in eval mode. `eval < frozen` is the coursework's
    /// "frozen" backbone in `model.train()` mode; `eval > frozen` keeps batch norm
    /// on its running statistics in stages that train (Keras' advice for
    /// fine-tuning: `training=False`).
    fn set_stage_modes(&self, modes: StageModes) -> Result<()> {
        if modes.frozen > 0 || modes.eval > 0 {
            candle_core::bail!(
                "this network is not split into stages; it cannot freeze {} or run {} in eval mode",
                modes.frozen,
                modes.eval
            )
        }
        Ok(())
    }
    /// How many leading stages [`Backbone::freeze_stages`] froze.
    fn frozen_stages(&self) -> usize {
        0
    }
}

/// How many leading stages are frozen (no gradient) and how many run in eval mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StageModes {
    pub frozen: usize,
    pub eval: usize,
}

/// The frozen and eval-mode leading stages of a network (see
/// [`Backbone::set_stage_modes`]), shared by its forward passes.
#[derive(Debug, Default)]
pub struct FrozenStages {
    frozen: AtomicUsize,
    eval: AtomicUsize,
}

impl Clone for FrozenStages {
    fn clone(&self) -> Self {
        let m = self.modes();
        Self {
            frozen: AtomicUsize::new(m.frozen),
            eval: AtomicUsize::new(m.eval),
        }
    }
}

impl FrozenStages {
    /// The number of frozen stages.
    pub fn get(&self) -> usize {
        self.frozen.load(Ordering::Relaxed)
    }
    pub fn modes(&self) -> StageModes {
        StageModes {
            frozen: self.get(),
            eval: self.eval.load(Ordering::Relaxed),
        }
    }
    /// Sets the modes of a network of `stages` stages.
    pub fn set(&self, modes: StageModes, stages: usize) -> Result<()> {
        if modes.frozen > stages || modes.eval > stages {
            candle_core::bail!(
                "cannot freeze {} stages or run {} in eval mode: the network has {stages}",
                modes.frozen,
                modes.eval
            )
        }
        self.frozen.store(modes.frozen, Ordering::Relaxed);
        self.eval.store(modes.eval, Ordering::Relaxed);
        Ok(())
    }
    /// The train flag stage `stage` runs with: `train`, unless the stage runs in eval mode.
    pub fn train(&self, stage: usize, train: bool) -> bool {
        train && stage >= self.eval.load(Ordering::Relaxed)
    }
    /// `x`, the output of stage `stage`, cut from the autograd graph when it is the
    /// last frozen stage: nothing before it trains, so backward stops there
    /// (fine-tuning the last stage then costs a backward pass through that stage
    /// only). Cutting inside or after earlier frozen stages would change nothing.
    pub fn cut(&self, stage: usize, x: Tensor) -> Result<Tensor> {
        Ok(if stage + 1 == self.get() { x.detach() } else { x })
    }
}

/// A named group of variables, by name prefix (`layer1`, `features.0` ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    pub name: String,
    /// Variable-name prefixes, without the trailing dot.
    pub prefixes: Vec<String>,
}

impl Stage {
    pub fn new(name: impl Into<String>, prefixes: &[&str]) -> Self {
        Self {
            name: name.into(),
            prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
        }
    }
    /// Whether variable `name` lies under one of the prefixes (`layer1` holds
    /// `layer1.0.conv1.weight`, not `layer10.x`).
    pub fn contains(&self, name: &str) -> bool {
        self.prefixes
            .iter()
            .any(|p| name.strip_prefix(p.as_str()).is_some_and(|r| r.starts_with('.')))
    }
}

/// Classification head: optional dropout, then a linear layer (PyTorch default
/// init, names `weight` `[K, D]` and `bias` `[K]` under the builder's prefix).
#[derive(Debug, Clone)]
pub struct Head {
    dropout: Option<SeededDropout>,
    linear: Linear,
}

impl Head {
    /// `dropout` is the drop probability before the linear layer (0 = none).
    pub fn new(in_dim: usize, num_classes: usize, dropout: f32, vb: VarBuilder) -> Result<Self> {
        Ok(Self::from_linear(linear(in_dim, num_classes, vb)?, dropout))
    }
    /// Wraps an existing linear layer.
    pub fn from_linear(linear: Linear, dropout: f32) -> Self {
        Self {
            dropout: (dropout > 0.0).then(|| SeededDropout::new(dropout, "head.dropout")),
            linear,
        }
    }
    pub fn linear(&self) -> &Linear {
        &self.linear
    }
}

impl ModuleT for Head {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        match &self.dropout {
            Some(d) => self
                .linear
                .forward_act(&d.forward_t(xs, train)?, FusedActivation::Identity),
            None => self.linear.forward_act(xs, FusedActivation::Identity),
        }
    }
}

/// A shared network, usable where a boxed `ModuleT` is expected.
pub(crate) struct Shared<T>(pub Arc<T>);

impl<T: ModuleT> ModuleT for Shared<T> {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.0.forward_t(xs, train)
    }
}

/// `head(backbone.features(x))` with any head.
pub(crate) struct WithHead {
    pub backbone: Arc<dyn Backbone>,
    pub head: Box<dyn ModuleT + Send + Sync>,
}

impl ModuleT for WithHead {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.head.forward_t(&self.backbone.features(xs, train)?, train)
    }
}
