//! Multi-layer perceptron with configurable widths, activation, dropout and batch norm.
use crate::dropout::SeededDropout;
use crate::layers::{flatten, linear, Activation, FusedActivation, LinearExt};
use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::{BatchNorm, Linear, VarBuilder};

/// Options of an [`Mlp`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpConfig {
    /// Hidden layer widths, e.g. `[256, 256, 128, 128]`.
    pub hidden: Vec<usize>,
    #[serde(default)]
    pub activation: Activation,
    /// Dropout probability after each hidden activation (0 = none).
    #[serde(default)]
    pub dropout: f32,
    /// Batch norm after each hidden linear layer, before the activation.
    #[serde(default)]
    pub batch_norm: bool,
}

/// `input -> [linear -> (bn) -> act -> (dropout)] x hidden -> linear -> logits`.
///
/// Tensor names: `layers.{i}.weight/bias` for the linear layers (the last one is
/// the head), `norms.{i}.*` for batch norm.
#[derive(Debug, Clone)]
pub struct Mlp {
    layers: Vec<Linear>,
    norms: Vec<BatchNorm>,
    activation: Activation,
    dropout: Option<SeededDropout>,
}

impl Mlp {
    pub fn new(in_features: usize, num_outputs: usize, cfg: &MlpConfig, vb: VarBuilder) -> Result<Self> {
        if !(0.0..1.0).contains(&cfg.dropout) {
            candle_core::bail!("mlp dropout must be in [0, 1), got {}", cfg.dropout)
        }
        if let Some(i) = cfg.hidden.iter().position(|&h| h == 0) {
            candle_core::bail!("mlp hidden layer {i} has width 0")
        }
        let mut dims = vec![in_features];
        dims.extend_from_slice(&cfg.hidden);
        dims.push(num_outputs);
        let layers = dims
            .windows(2)
            .enumerate()
            .map(|(i, w)| linear(w[0], w[1], vb.pp(format!("layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let norms = if cfg.batch_norm {
            cfg.hidden
                .iter()
                .enumerate()
                .map(|(i, &h)| candle_nn::batch_norm(h, 1e-5, vb.pp(format!("norms.{i}"))))
                .collect::<Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        let dropout = (cfg.dropout > 0.0).then(|| SeededDropout::new(cfg.dropout, "mlp.dropout"));
        Ok(Self {
            layers,
            norms,
            activation: cfg.activation,
            dropout,
        })
    }
}

impl ModuleT for Mlp {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = flatten(xs)?;
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            if i == last {
                x = layer.forward_act(&x, FusedActivation::Identity)?;
            } else {
                // The activation is fused into the linear kernel when no batch norm
                // follows it, else into the batch norm (ReLU, identity).
                x = match (self.norms.get(i), self.activation.fused()) {
                    (None, Some(act)) => layer.forward_act(&x, act)?,
                    (Some(bn), Some(act)) => {
                        let z = layer.forward_act(&x, FusedActivation::Identity)?;
                        crate::conv::bn_act(bn, &z, train, act)?
                    }
                    (norm, None) => {
                        let mut z = layer.forward_act(&x, FusedActivation::Identity)?;
                        if let Some(bn) = norm {
                            z = crate::precision::batch_norm_t(bn, &z, train)?;
                        }
                        self.activation.forward(&z)?
                    }
                };
                if let Some(d) = &self.dropout {
                    x = d.forward_t(&x, train)?;
                }
            }
        }
        Ok(x)
    }
}
