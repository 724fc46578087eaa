//! Small building blocks shared by the models.
//!
//! The layers stay candle-nn types (`candle_nn::Linear`), but the models run them
//! through [`LinearExt::forward_act`], which uses the fused CPU kernel of
//! [`digitlab_kernels::linear`] (candle's own ops on other devices), with the
//! activation fused in when it is a ReLU.
use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, Linear, VarBuilder};
pub use digitlab_kernels::Activation as FusedActivation;

/// Forward of a `candle_nn::Linear` through digitlab's fused kernel.
pub trait LinearExt {
    /// `act(x @ w^T + b)`: the same as `Module::forward` followed by `act`, in one op
    /// on the CPU.
    fn forward_act(&self, xs: &Tensor, act: FusedActivation) -> Result<Tensor>;
}

impl LinearExt for Linear {
    fn forward_act(&self, xs: &Tensor, act: FusedActivation) -> Result<Tensor> {
        let y = digitlab_kernels::linear(xs, self.weight(), self.bias(), act)?;
        crate::summary::record_linear(self.weight(), &y);
        Ok(y)
    }
}

/// `max(x, 0)` through digitlab's one-pass kernel on the CPU (candle's `relu` elsewhere).
pub fn relu(xs: &Tensor) -> Result<Tensor> {
    digitlab_kernels::relu(xs)
}

/// A linear layer initialised like PyTorch's `nn.Linear` (weight and bias uniform
/// in ±1/sqrt(fan_in)), with torch tensor names `weight` [out, in] and `bias` [out].
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let bound = 1.0 / (in_dim.max(1) as f64).sqrt();
    let init = Init::Uniform { lo: -bound, up: bound };
    let w = vb.get_with_hints((out_dim, in_dim), "weight", init)?;
    let b = vb.get_with_hints(out_dim, "bias", init)?;
    Ok(Linear::new(w, Some(b)))
}

/// A zero-initialised linear layer (the natural start for convex linear models).
pub fn linear_zeros(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let w = vb.get_with_hints((out_dim, in_dim), "weight", Init::Const(0.0))?;
    let b = vb.get_with_hints(out_dim, "bias", Init::Const(0.0))?;
    Ok(Linear::new(w, Some(b)))
}

/// Element-wise activation functions selectable from configs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    #[default]
    Relu,
    Sigmoid,
    Tanh,
    Identity,
    Relu6,
}

impl Activation {
    /// The same activation as a kernel epilogue, when one exists (ReLU, identity).
    pub fn fused(self) -> Option<FusedActivation> {
        match self {
            Activation::Relu => Some(FusedActivation::Relu),
            Activation::Identity => Some(FusedActivation::Identity),
            _ => None,
        }
    }
}

impl Module for Activation {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Activation::Relu => relu(xs),
            Activation::Sigmoid => candle_nn::ops::sigmoid(xs),
            Activation::Tanh => xs.tanh(),
            Activation::Identity => Ok(xs.clone()),
            Activation::Relu6 => xs.clamp(0f32, 6f32),
        }
    }
}

/// Flattens `[B, ...]` to `[B, features]`.
pub fn flatten(xs: &Tensor) -> Result<Tensor> {
    xs.flatten_from(1)
}
