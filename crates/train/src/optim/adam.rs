//! Adam with bias correction, as `torch.optim.Adam`; also the update of AdamW
//! ([`super::adamw`]), whose weight decay is applied to the weights before the
//! update (decoupled) instead of being added to the gradient.
use super::{Optimizer, OptimizerSpec, Param, ParamState, PerParam};
use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor};
use std::collections::BTreeMap;

pub(super) fn beta1() -> f64 {
    0.9
}
pub(super) fn beta2() -> f64 {
    0.999
}
pub(super) fn eps() -> f64 {
    1e-8
}

/// `kind = "adam"`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamConfig {
    pub lr: f64,
    #[serde(default = "beta1")]
    pub beta1: f64,
    #[serde(default = "beta2")]
    pub beta2: f64,
    #[serde(default = "eps")]
    pub eps: f64,
    /// Added to the gradient as `weight_decay * p` (L2, coupled).
    #[serde(default)]
    pub weight_decay: f64,
}

impl AdamConfig {
    /// Adam at `lr` with PyTorch's defaults (betas 0.9 / 0.999, eps 1e-8, no decay).
    pub fn new(lr: f64) -> Self {
        Self {
            lr,
            beta1: beta1(),
            beta2: beta2(),
            eps: eps(),
            weight_decay: 0.0,
        }
    }
}

/// Checks Adam's and AdamW's hyperparameters.
pub(super) fn validate(beta1: f64, beta2: f64, eps: f64, weight_decay: f64) -> std::result::Result<(), String> {
    for (name, b) in [("beta1", beta1), ("beta2", beta2)] {
        if !(0.0..1.0).contains(&b) {
            return Err(format!("optim.{name} must be in [0, 1), got {b}"));
        }
    }
    if eps <= 0.0 || weight_decay < 0.0 {
        return Err(format!(
            "optim.eps must be > 0 and weight_decay >= 0, got {eps} and {weight_decay}"
        ));
    }
    Ok(())
}

impl OptimizerSpec for AdamConfig {
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
            false,
            params,
        ))
    }
}

/// Adam's first and second moment estimates of one parameter.
#[derive(Debug, Clone)]
pub struct Moments {
    pub exp_avg: Tensor,
    pub exp_avg_sq: Tensor,
}

impl ParamState for Moments {
    const SLOTS: &'static [&'static str] = &["exp_avg", "exp_avg_sq"];
    fn tensors(&self) -> Vec<&Tensor> {
        vec![&self.exp_avg, &self.exp_avg_sq]
    }
    fn from_tensors(mut tensors: Vec<Tensor>) -> Self {
        let exp_avg_sq = tensors.remove(1);
        let exp_avg = tensors.remove(0);
        Moments { exp_avg, exp_avg_sq }
    }
}

/// Adam or AdamW over a list of parameters.
pub struct Adam {
    params: Vec<Param>,
    moments: PerParam<Moments>,
    betas: [f64; 2],
    eps: f64,
    weight_decay: f64,
    /// AdamW's decoupled decay instead of Adam's L2 gradient term.
    decoupled: bool,
    lr: f64,
    steps: u64,
}

impl Adam {
    /// `decoupled`: AdamW's weight decay instead of Adam's.
    pub(super) fn new(lr: f64, betas: [f64; 2], eps: f64, weight_decay: f64, decoupled: bool, params: Vec<Param>) -> Self {
        Self {
            moments: PerParam::new(params.len()),
            params,
            betas,
            eps,
            weight_decay,
            decoupled,
            lr,
            steps: 0,
        }
    }
}

impl Optimizer for Adam {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.steps += 1;
        let t = self.steps as i32;
        let [beta1, beta2] = self.betas;
        let eps = self.eps;
        for (i, param) in self.params.iter().enumerate() {
            let Some(g) = grads.get(param.var.as_tensor()) else { continue };
            let p = param.var.as_tensor().detach();
            let g = g.detach();
            let lr = self.lr * param.lr_scale;
            let weight_decay = param.weight_decay_or(self.weight_decay);
            let (p, g) = if weight_decay > 0.0 && self.decoupled {
                ((&p * (1.0 - lr * weight_decay))?, g)
            } else if weight_decay > 0.0 {
                (p.clone(), (g + (&p * weight_decay)?)?)
            } else {
                (p, g)
            };
            let prior = self.moments.get(i);
            let m = match prior {
                Some(s) => ((&s.exp_avg * beta1)? + (&g * (1.0 - beta1))?)?,
                None => (&g * (1.0 - beta1))?,
            };
            let v = match prior {
                Some(s) => ((&s.exp_avg_sq * beta2)? + (g.sqr()? * (1.0 - beta2))?)?,
                None => (g.sqr()? * (1.0 - beta2))?,
            };
            let bc1 = 1.0 - beta1.powi(t);
            let bc2 = 1.0 - beta2.powi(t);
            // p -= lr/bc1 * m / (sqrt(v/bc2) + eps), as torch.optim.Adam.
            let denom = ((&v / bc2)?.sqrt()? + eps)?;
            let update = ((&m / denom)? * (lr / bc1))?;
            param.var.set(&(p - update)?)?;
            self.moments.set(
                i,
                Moments {
                    exp_avg: m,
                    exp_avg_sq: v,
                },
            );
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
        self.moments.to_tensors(&self.params)
    }
    fn load_state_tensors(&mut self, state: BTreeMap<String, Tensor>, steps: u64) -> Result<()> {
        self.moments = PerParam::from_tensors(&self.params, state)?;
        self.steps = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::run;
    use super::super::{AdamwConfig, OptimizerConfig};
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn adam_first_step_is_lr_times_sign() {
        // Bias-corrected first Adam step moves each coordinate by ~lr against the gradient sign.
        let x = run(AdamConfig::new(0.01).into(), 1);
        assert!((x[0] - 0.01).abs() < 1e-9 && (x[1] - 1.01).abs() < 1e-9, "{x:?}");
        let x = run(AdamConfig::new(0.1).into(), 500);
        assert!((x[0] - 3.0).abs() < 1e-2, "converges: {x:?}");
        // AdamW with decay: the decoupled shrink happens before the Adam update.
        let x = run(
            AdamwConfig {
                weight_decay: 0.5,
                ..AdamwConfig::new(0.01)
            }
            .into(),
            1,
        );
        assert!((x[1] - (1.0 * (1.0 - 0.005) + 0.01)).abs() < 1e-9, "{x:?}");
    }

    #[test]
    fn state_round_trips_and_refuses_foreign_slots() {
        let x = Var::new(&[0.0f32, 1.0], &Device::Cpu).unwrap();
        let cfg = OptimizerConfig::from(AdamConfig::new(0.1));
        let mut a = cfg.build(vec![("x".into(), x.clone())]).unwrap();
        let loss = (x.as_tensor() - 3.0).unwrap().sqr().unwrap().sum_all().unwrap();
        a.step(&loss.backward().unwrap()).unwrap();
        let state = a.state_tensors();
        assert_eq!(state.keys().collect::<Vec<_>>(), ["x.exp_avg", "x.exp_avg_sq"]);
        let mut b = cfg.build(vec![("x".into(), x.clone())]).unwrap();
        b.load_state_tensors(state.clone(), a.steps()).unwrap();
        assert_eq!(b.steps(), 1);
        for (k, t) in b.state_tensors() {
            assert_eq!(t.to_vec1::<f32>().unwrap(), state[&k].to_vec1::<f32>().unwrap(), "{k}");
        }
        // SGD's slot, half of Adam's slots, a wrong shape: each refused by name.
        for (bad, needle) in [
            (
                BTreeMap::from([("x.momentum".to_string(), state["x.exp_avg"].clone())]),
                "x.momentum",
            ),
            (
                BTreeMap::from([("x.exp_avg".to_string(), state["x.exp_avg"].clone())]),
                "x.exp_avg_sq",
            ),
            (
                BTreeMap::from([
                    ("x.exp_avg".to_string(), Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap()),
                    ("x.exp_avg_sq".to_string(), state["x.exp_avg_sq"].clone()),
                ]),
                "expected shape",
            ),
        ] {
            let e = b.load_state_tensors(bad, 1).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
    }
}
