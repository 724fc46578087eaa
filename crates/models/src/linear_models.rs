//! Logistic regression (binary, one logit) and softmax regression (K logits).
use crate::layers::{flatten, linear_zeros, FusedActivation, LinearExt};
use candle_core::{ModuleT, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

/// Binary logistic regression: `z = w·x + b`, p(y=1|x) = sigmoid(z).
///
/// `forward_t` returns the logit `z` with shape `[B]`; pair it with
/// BCE-with-logits, or apply a sigmoid for BCE on probabilities. Weights start at
/// zero (the loss is convex, so the start only affects the path, not the optimum).
/// Tensor names: `linear.weight` `[1, D]`, `linear.bias` `[1]`.
#[derive(Debug, Clone)]
pub struct LogisticRegression {
    linear: Linear,
}

impl LogisticRegression {
    pub fn new(in_features: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            linear: linear_zeros(in_features, 1, vb.pp("linear"))?,
        })
    }
    /// The weight vector, `[1, D]` (one template image).
    pub fn weight(&self) -> &Tensor {
        self.linear.weight()
    }
}

impl ModuleT for LogisticRegression {
    fn forward_t(&self, xs: &Tensor, _train: bool) -> Result<Tensor> {
        self.linear
            .forward_act(&flatten(xs)?, FusedActivation::Identity)?
            .squeeze(1)
    }
}

/// Multinomial (softmax) regression: logits `W x + b`, shape `[B, K]`.
/// Tensor names: `linear.weight` `[K, D]`, `linear.bias` `[K]`.
#[derive(Debug, Clone)]
pub struct SoftmaxRegression {
    linear: Linear,
}

impl SoftmaxRegression {
    pub fn new(in_features: usize, num_classes: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            linear: linear_zeros(in_features, num_classes, vb.pp("linear"))?,
        })
    }
    /// One weight row per class, `[K, D]`.
    pub fn weight(&self) -> &Tensor {
        self.linear.weight()
    }
}

impl ModuleT for SoftmaxRegression {
    fn forward_t(&self, xs: &Tensor, _train: bool) -> Result<Tensor> {
        self.linear.forward_act(&flatten(xs)?, FusedActivation::Identity)
    }
}
