//! Optimizers: SGD (momentum, Nesterov, weight decay), Adam and AdamW, following
//! PyTorch's update rules, with state that can be saved and restored for `--resume`.
use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use std::collections::BTreeMap;

/// Optimizer choice and hyperparameters (`[optim]` in a config).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum OptimizerConfig {
    /// `p -= lr * g` with optional momentum (dampening 0), Nesterov and L2 weight decay.
    Sgd {
        lr: f64,
        #[serde(default)]
        momentum: f64,
        #[serde(default)]
        nesterov: bool,
        #[serde(default)]
        weight_decay: f64,
    },
    /// Adam (Kingma & Ba) with bias correction; `weight_decay` is added to the gradient.
    Adam {
        lr: f64,
        #[serde(default = "beta1")]
        beta1: f64,
        #[serde(default = "beta2")]
        beta2: f64,
        #[serde(default = "adam_eps")]
        eps: f64,
        #[serde(default)]
        weight_decay: f64,
    },
    /// AdamW (Loshchilov & Hutter): decoupled weight decay `p *= 1 - lr * wd`.
    Adamw {
        lr: f64,
        #[serde(default = "beta1")]
        beta1: f64,
        #[serde(default = "beta2")]
        beta2: f64,
        #[serde(default = "adam_eps")]
        eps: f64,
        #[serde(default = "adamw_decay")]
        weight_decay: f64,
    },
}

fn beta1() -> f64 {
    0.9
}
fn beta2() -> f64 {
    0.999
}
fn adam_eps() -> f64 {
    1e-8
}
fn adamw_decay() -> f64 {
    0.01
}

impl OptimizerConfig {
    /// The base learning rate.
    pub fn lr(&self) -> f64 {
        match self {
            OptimizerConfig::Sgd { lr, .. } | OptimizerConfig::Adam { lr, .. } | OptimizerConfig::Adamw { lr, .. } => {
                *lr
            }
        }
    }

    /// Checks hyperparameters are in range.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let lr = self.lr();
        if !(lr > 0.0 && lr.is_finite()) {
            return Err(format!("optim.lr must be a positive number, got {lr}"));
        }
        match self {
            OptimizerConfig::Sgd {
                momentum,
                weight_decay,
                nesterov,
                ..
            } => {
                if !(0.0..1.0).contains(momentum) {
                    return Err(format!("optim.momentum must be in [0, 1), got {momentum}"));
                }
                if *nesterov && *momentum == 0.0 {
                    return Err("optim.nesterov needs optim.momentum > 0".into());
                }
                if *weight_decay < 0.0 {
                    return Err(format!("optim.weight_decay must be >= 0, got {weight_decay}"));
                }
            }
            OptimizerConfig::Adam {
                beta1,
                beta2,
                eps,
                weight_decay,
                ..
            }
            | OptimizerConfig::Adamw {
                beta1,
                beta2,
                eps,
                weight_decay,
                ..
            } => {
                for (name, b) in [("beta1", beta1), ("beta2", beta2)] {
                    if !(0.0..1.0).contains(b) {
                        return Err(format!("optim.{name} must be in [0, 1), got {b}"));
                    }
                }
                if *eps <= 0.0 || *weight_decay < 0.0 {
                    return Err(format!(
                        "optim.eps must be > 0 and weight_decay >= 0, got {eps} and {weight_decay}"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// An optimizer over named variables.
pub struct Optimizer {
    config: OptimizerConfig,
    params: Vec<(String, Var)>,
    /// Per-parameter state: momentum buffer (SGD) or first/second moments (Adam).
    state: BTreeMap<String, Tensor>,
    lr: f64,
    steps: u64,
}

impl Optimizer {
    /// An optimizer updating `params` (name, variable); pass only trainable ones.
    pub fn new(config: OptimizerConfig, params: Vec<(String, Var)>) -> Self {
        let lr = config.lr();
        Self {
            config,
            params,
            state: BTreeMap::new(),
            lr,
            steps: 0,
        }
    }

    pub fn lr(&self) -> f64 {
        self.lr
    }
    /// Sets the learning rate for the next steps (used by schedules).
    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }
    /// Number of steps taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// One update from `grads`; parameters without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.steps += 1;
        let t = self.steps as i32;
        let lr = self.lr;
        for (name, var) in &self.params {
            let Some(g) = grads.get(var.as_tensor()) else { continue };
            let p = var.as_tensor().detach();
            let g = g.detach();
            match self.config {
                OptimizerConfig::Sgd {
                    momentum,
                    nesterov,
                    weight_decay,
                    ..
                } => {
                    let g = if weight_decay > 0.0 {
                        (g + (&p * weight_decay)?)?
                    } else {
                        g
                    };
                    let update = if momentum > 0.0 {
                        let key = format!("{name}.momentum");
                        let buf = match self.state.get(&key) {
                            Some(b) => ((b * momentum)? + &g)?,
                            None => g.clone(),
                        };
                        let u = if nesterov {
                            (&g + (&buf * momentum)?)?
                        } else {
                            buf.clone()
                        };
                        self.state.insert(key, buf);
                        u
                    } else {
                        g
                    };
                    var.set(&(p - (update * lr)?)?)?;
                }
                OptimizerConfig::Adam {
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                    ..
                }
                | OptimizerConfig::Adamw {
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                    ..
                } => {
                    let decoupled = matches!(self.config, OptimizerConfig::Adamw { .. });
                    let (p, g) = if weight_decay > 0.0 && decoupled {
                        ((&p * (1.0 - lr * weight_decay))?, g)
                    } else if weight_decay > 0.0 {
                        (p.clone(), (g + (&p * weight_decay)?)?)
                    } else {
                        (p, g)
                    };
                    let (km, kv) = (format!("{name}.exp_avg"), format!("{name}.exp_avg_sq"));
                    let m = match self.state.get(&km) {
                        Some(m) => ((m * beta1)? + (&g * (1.0 - beta1))?)?,
                        None => (&g * (1.0 - beta1))?,
                    };
                    let v = match self.state.get(&kv) {
                        Some(v) => ((v * beta2)? + (g.sqr()? * (1.0 - beta2))?)?,
                        None => (g.sqr()? * (1.0 - beta2))?,
                    };
                    let bc1 = 1.0 - beta1.powi(t);
                    let bc2 = 1.0 - beta2.powi(t);
                    // p -= lr/bc1 * m / (sqrt(v/bc2) + eps), as torch.optim.Adam.
                    let denom = ((&v / bc2)?.sqrt()? + eps)?;
                    let update = ((&m / denom)? * (lr / bc1))?;
                    var.set(&(p - update)?)?;
                    self.state.insert(km, m);
                    self.state.insert(kv, v);
                }
            }
        }
        Ok(())
    }

    /// The optimizer's state tensors by name (for checkpoints).
    pub fn state(&self) -> &BTreeMap<String, Tensor> {
        &self.state
    }

    /// Restores state saved by [`Optimizer::state`] after `steps` steps.
    pub fn load_state(&mut self, state: BTreeMap<String, Tensor>, steps: u64) {
        self.state = state;
        self.steps = steps;
    }
}

/// Scales all gradients so that their global L2 norm is at most `max_norm`
/// (as `torch.nn.utils.clip_grad_norm_`); returns the norm before clipping.
pub fn clip_grad_norm(params: &[(String, Var)], grads: &mut GradStore, max_norm: f64) -> Result<f64> {
    let mut total = 0.0f64;
    for (_, v) in params {
        if let Some(g) = grads.get(v.as_tensor()) {
            total += g
                .sqr()?
                .sum_all()?
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?;
        }
    }
    let norm = total.sqrt();
    if norm > max_norm && norm > 0.0 {
        let scale = max_norm / (norm + 1e-6);
        for (_, v) in params {
            if let Some(g) = grads.remove(v.as_tensor()) {
                grads.insert(v.as_tensor(), (g * scale)?);
            }
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// Minimises f(x) = sum((x - 3)^2) from 0 and returns x after `n` steps.
    fn run(cfg: OptimizerConfig, n: usize) -> Vec<f64> {
        let x = Var::new(&[0.0f64, 1.0], &Device::Cpu).unwrap();
        let mut opt = Optimizer::new(cfg, vec![("x".into(), x.clone())]);
        for _ in 0..n {
            let loss = (x.as_tensor() - 3.0).unwrap().sqr().unwrap().sum_all().unwrap();
            opt.step(&loss.backward().unwrap()).unwrap();
        }
        x.as_tensor().to_vec1().unwrap()
    }

    #[test]
    fn sgd_matches_hand_computed_steps() {
        // g = 2(x-3); x0 = 0: x1 = 0 - 0.1*(-6) = 0.6; x2 = 0.6 - 0.1*(-4.8) = 1.08.
        let x = run(
            OptimizerConfig::Sgd {
                lr: 0.1,
                momentum: 0.0,
                nesterov: false,
                weight_decay: 0.0,
            },
            2,
        );
        assert!((x[0] - 1.08).abs() < 1e-12, "{x:?}");
        // Momentum 0.9: b1 = -6, x1 = 0.6; g2 = -4.8, b2 = -10.2, x2 = 0.6 + 1.02 = 1.62.
        let x = run(
            OptimizerConfig::Sgd {
                lr: 0.1,
                momentum: 0.9,
                nesterov: false,
                weight_decay: 0.0,
            },
            2,
        );
        assert!((x[0] - 1.62).abs() < 1e-12, "{x:?}");
        // Nesterov: u1 = g1 + 0.9*b1 = -6 - 5.4 = -11.4, x1 = 1.14.
        let x = run(
            OptimizerConfig::Sgd {
                lr: 0.1,
                momentum: 0.9,
                nesterov: true,
                weight_decay: 0.0,
            },
            1,
        );
        assert!((x[0] - 1.14).abs() < 1e-12, "{x:?}");
    }

    #[test]
    fn adam_first_step_is_lr_times_sign() {
        // Bias-corrected first Adam step moves each coordinate by ~lr against the gradient sign.
        let x = run(
            OptimizerConfig::Adam {
                lr: 0.01,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.0,
            },
            1,
        );
        assert!((x[0] - 0.01).abs() < 1e-9 && (x[1] - 1.01).abs() < 1e-9, "{x:?}");
        let x = run(
            OptimizerConfig::Adam {
                lr: 0.1,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.0,
            },
            500,
        );
        assert!((x[0] - 3.0).abs() < 1e-2, "converges: {x:?}");
        // AdamW with decay: the decoupled shrink happens before the Adam update.
        let x = run(
            OptimizerConfig::Adamw {
                lr: 0.01,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.5,
            },
            1,
        );
        assert!((x[1] - (1.0 * (1.0 - 0.005) + 0.01)).abs() < 1e-9, "{x:?}");
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let x = Var::new(&[3.0f64, 4.0], &Device::Cpu).unwrap();
        let params = vec![("x".to_string(), x.clone())];
        let loss = (x.as_tensor() * x.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap()
            .affine(0.5, 0.0)
            .unwrap();
        let mut grads = loss.backward().unwrap();
        let norm = clip_grad_norm(&params, &mut grads, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-12);
        let g: Vec<f64> = grads.get(x.as_tensor()).unwrap().to_vec1().unwrap();
        let n = (g[0] * g[0] + g[1] * g[1]).sqrt();
        assert!((n - 1.0).abs() < 1e-5, "{g:?}");
        let _ = Tensor::new(0f32, &Device::Cpu);
    }

    #[test]
    fn validation_messages() {
        let e = OptimizerConfig::Sgd {
            lr: -1.0,
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        }
        .validate()
        .unwrap_err();
        assert!(e.contains("optim.lr"), "{e}");
        let e = OptimizerConfig::Sgd {
            lr: 0.1,
            momentum: 0.0,
            nesterov: true,
            weight_decay: 0.0,
        }
        .validate()
        .unwrap_err();
        assert!(e.contains("nesterov"), "{e}");
    }
}
