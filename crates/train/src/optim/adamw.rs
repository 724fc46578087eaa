//! AdamW (Loshchilov & Hutter), as `torch.optim.AdamW`: Adam's update with
//! decoupled weight decay `p *= 1 - lr * weight_decay`.
use super::adam::{beta1, beta2, eps, validate, Adam};
use super::{Optimizer, OptimizerSpec, Param};

fn adamw_decay() -> f64 {
    0.01
}

/// `kind = "adamw"`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamwConfig {
    pub lr: f64,
    #[serde(default = "beta1")]
    pub beta1: f64,
    #[serde(default = "beta2")]
    pub beta2: f64,
    #[serde(default = "eps")]
    pub eps: f64,
    /// Decoupled: `p *= 1 - lr * weight_decay` before each update.
    #[serde(default = "adamw_decay")]
    pub weight_decay: f64,
}

impl AdamwConfig {
    /// AdamW at `lr` with PyTorch's defaults (weight decay 0.01).
    pub fn new(lr: f64) -> Self {
        Self {
            lr,
            beta1: beta1(),
            beta2: beta2(),
            eps: eps(),
            weight_decay: adamw_decay(),
        }
    }
}

impl OptimizerSpec for AdamwConfig {
    fn lr(&self) -> f64 {
        self.lr
    }
    fn validate(&self) -> std::result::Result<(), String> {
        validate(self.beta1, self.beta2, self.eps, self.weight_decay)
    }
    fn build(&self, params: Vec<Param>) -> Box<dyn Optimizer> {
        Box::new(Adam::new(
            self.lr,
            [self.beta1, self.beta2],
            self.eps,
            self.weight_decay,
            true,
            params,
        ))
    }
}

