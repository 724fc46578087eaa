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
use crate::layers::{linear, FusedActivation, LinearExt};
use candle_core::{ModuleT, Result, Tensor};
use candle_nn::{Dropout, Linear, VarBuilder};
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
}

/// Classification head: optional dropout, then a linear layer (PyTorch default
/// init, names `weight` `[K, D]` and `bias` `[K]` under the builder's prefix).
#[derive(Debug, Clone)]
pub struct Head {
    dropout: Option<Dropout>,
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
            dropout: (dropout > 0.0).then(|| Dropout::new(dropout)),
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
