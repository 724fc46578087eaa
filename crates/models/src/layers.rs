//! Small building blocks shared by the models.
use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, Linear, VarBuilder};

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

impl Module for Activation {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Activation::Relu => xs.relu(),
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
