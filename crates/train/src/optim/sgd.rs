//! SGD with momentum (dampening 0), Nesterov and L2 weight decay, as `torch.optim.SGD`.
use super::{Optimizer, OptimizerSpec, Param, ParamState, PerParam};
use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor};
use std::collections::BTreeMap;

/// `kind = "sgd"`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SgdConfig {
    pub lr: f64,
    #[serde(default)]
    pub momentum: f64,
    #[serde(default)]
    pub nesterov: bool,
    /// Added to the gradient as `weight_decay * p`.
    #[serde(default)]
    pub weight_decay: f64,
}

impl SgdConfig {
    /// Plain SGD at `lr` (no momentum, no weight decay).
    pub fn new(lr: f64) -> Self {
        Self {
            lr,
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        }
    }
}

impl OptimizerSpec for SgdConfig {
    fn lr(&self) -> f64 {
        self.lr
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(format!("optim.momentum must be in [0, 1), got {}", self.momentum));
        }
        if self.nesterov && self.momentum == 0.0 {
            return Err("optim.nesterov needs optim.momentum > 0".into());
        }
        if self.weight_decay < 0.0 {
            return Err(format!("optim.weight_decay must be >= 0, got {}", self.weight_decay));
        }
        Ok(())
    }

    fn build(&self, params: Vec<Param>) -> Box<dyn Optimizer> {
        Box::new(Sgd {
            momentum: PerParam::new(params.len()),
            config: self.clone(),
            lr: self.lr,
            params,
            steps: 0,
        })
    }
}

/// The momentum buffer of one parameter.
#[derive(Debug, Clone)]
pub struct Momentum(pub Tensor);

impl ParamState for Momentum {
    const SLOTS: &'static [&'static str] = &["momentum"];
    fn tensors(&self) -> Vec<&Tensor> {
        vec![&self.0]
    }
    fn from_tensors(mut tensors: Vec<Tensor>) -> Self {
        Momentum(tensors.remove(0))
    }
}

/// SGD over a list of parameters.
pub struct Sgd {
    config: SgdConfig,
    params: Vec<Param>,
    momentum: PerParam<Momentum>,
    lr: f64,
    steps: u64,
}

impl Optimizer for Sgd {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.steps += 1;
        let SgdConfig { momentum, nesterov, .. } = self.config;
        for (i, param) in self.params.iter().enumerate() {
            let Some(g) = grads.get(param.var.as_tensor()) else { continue };
            let p = param.var.as_tensor().detach();
            let g = g.detach();
            let weight_decay = param.weight_decay_or(self.config.weight_decay);
            let g = if weight_decay > 0.0 {
                (g + (&p * weight_decay)?)?
            } else {
                g
            };
            let update = if momentum > 0.0 {
                let buf = match self.momentum.get(i) {
                    Some(Momentum(b)) => ((b * momentum)? + &g)?,
                    None => g.clone(),
                };
                let u = if nesterov {
                    (&g + (&buf * momentum)?)?
                } else {
                    buf.clone()
                };
                self.momentum.set(i, Momentum(buf));
                u
            } else {
                g
            };
            param.var.set(&(p - (update * (self.lr * param.lr_scale))?)?)?;
        }
        Ok(())
    }

    fn learning_rate(&self) -> f64 {
        self.lr
    }
    fn set_learning_rate(&mut self, lr: f64) {
        self.lr = lr;
    }
    fn steps(&self) -> u64 {
        self.steps
    }
    fn params(&self) -> &[Param] {
        &self.params
    }
    fn state_tensors(&self) -> BTreeMap<String, Tensor> {
        self.momentum.to_tensors(&self.params)
    }
    fn load_state_tensors(&mut self, state: BTreeMap<String, Tensor>, steps: u64) -> Result<()> {
        self.momentum = PerParam::from_tensors(&self.params, state)?;
        self.steps = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::run;
    use super::*;

    #[test]
    fn sgd_matches_hand_computed_steps() {
        // g = 2(x-3); x0 = 0: x1 = 0 - 0.1*(-6) = 0.6; x2 = 0.6 - 0.1*(-4.8) = 1.08.
        let x = run(SgdConfig::new(0.1).into(), 2);
        assert!((x[0] - 1.08).abs() < 1e-12, "{x:?}");
        // Momentum 0.9: b1 = -6, x1 = 0.6; g2 = -4.8, b2 = -10.2, x2 = 0.6 + 1.02 = 1.62.
        let with_momentum = SgdConfig {
            momentum: 0.9,
            ..SgdConfig::new(0.1)
        };
        let x = run(with_momentum.clone().into(), 2);
        assert!((x[0] - 1.62).abs() < 1e-12, "{x:?}");
        // Nesterov: u1 = g1 + 0.9*b1 = -6 - 5.4 = -11.4, x1 = 1.14.
        let x = run(
            SgdConfig {
                nesterov: true,
                ..with_momentum
            }
            .into(),
            1,
        );
        assert!((x[0] - 1.14).abs() < 1e-12, "{x:?}");
    }
}
