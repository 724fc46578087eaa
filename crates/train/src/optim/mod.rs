//! Optimizers behind one trait, [`Optimizer`] (as candle-nn's: `step` from a
//! `GradStore`, a learning rate), one module per optimizer following PyTorch's
//! update rules, over named [`ParamGroup`]s (trainable or frozen, each with a
//! learning-rate multiplier and an optional weight decay), with typed
//! per-parameter state that is saved and restored for `--resume`.
//!
//! [`OptimizerConfig`] (`[optim]` in a config, tagged by `kind`) is the one
//! registration point: adding an optimizer is one new file here (`lion.rs`, with
//! a serde config type implementing [`OptimizerSpec`] and the optimizer
//! implementing [`Optimizer`]) plus one line in the `optimizers!` list below
//! (`Lion => lion::LionConfig,`), which declares the module, re-exports the
//! config and makes `kind = "lion"` a valid `[optim]`.
mod fused;
mod group;
mod state;

pub use group::{Param, ParamGroup};
pub use state::{ParamState, PerParam};

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use std::collections::BTreeMap;

/// An optimizer over named variables.
pub trait Optimizer {
    /// One update from `grads`; parameters without a gradient are left alone.
    fn step(&mut self, grads: &GradStore) -> Result<()>;
    /// The learning rate of the next steps, before each group's multiplier.
    fn learning_rate(&self) -> f64;
    /// Sets the learning rate for the next steps (schedules call it every step).
    fn set_learning_rate(&mut self, lr: f64);
    /// Number of steps taken.
    fn steps(&self) -> u64;
    /// The parameters this optimizer updates (those of trainable groups), in order.
    fn params(&self) -> &[Param];
    /// The state as named tensors for a checkpoint: `<param>.<slot>`, e.g.
    /// `fc.weight.exp_avg` (the on-disk format of `optim-e{N}.safetensors`).
    fn state_tensors(&self) -> BTreeMap<String, Tensor>;
    /// Restores state saved by [`Optimizer::state_tensors`] after `steps` steps.
    /// Nothing changes unless every entry names a slot of a parameter of this
    /// optimizer with that parameter's shape; the error names the entry.
    fn load_state_tensors(&mut self, state: BTreeMap<String, Tensor>, steps: u64) -> Result<()>;
}

/// A config type that builds one kind of optimizer.
pub trait OptimizerSpec {
    /// The base learning rate.
    fn lr(&self) -> f64;
    /// Checks hyperparameters other than the learning rate; the message names the
    /// key (`optim.momentum must be in [0, 1), got 1.5`).
    fn validate(&self) -> std::result::Result<(), String>;
    /// The optimizer over `params` (the parameters of the trainable groups).
    fn build(&self, params: Vec<Param>) -> Box<dyn Optimizer>;
}

/// Declares the optimizer modules and [`OptimizerConfig`] from
/// `Variant => module::ConfigType` lines: the serde tag (`kind = "sgd"`) is the
/// variant name in snake_case.
macro_rules! optimizers {
    ($($(#[$doc:meta])* $variant:ident => $module:ident :: $config:ident,)+) => {
        $(pub mod $module;
        pub use $module::$config;)+

        /// Optimizer choice and hyperparameters (`[optim]` in a config).
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(tag = "kind", rename_all = "snake_case")]
        pub enum OptimizerConfig {
            $($(#[$doc])* $variant($module::$config),)+
        }

        impl OptimizerConfig {
            fn spec(&self) -> &dyn OptimizerSpec {
                match self {
                    $(OptimizerConfig::$variant(c) => c,)+
                }
            }
        }

        $(impl From<$module::$config> for OptimizerConfig {
            fn from(c: $module::$config) -> Self {
                OptimizerConfig::$variant(c)
            }
        })+
    };
}

optimizers! {
    /// `p -= lr * g` with optional momentum (dampening 0), Nesterov and L2 weight decay.
    Sgd => sgd::SgdConfig,
    /// Adam (Kingma & Ba) with bias correction; `weight_decay` is added to the gradient.
    Adam => adam::AdamConfig,
    /// AdamW (Loshchilov & Hutter): decoupled weight decay `p *= 1 - lr * wd`.
    Adamw => adamw::AdamwConfig,
}

impl OptimizerConfig {
    /// The base learning rate.
    pub fn lr(&self) -> f64 {
        self.spec().lr()
    }

    /// Checks hyperparameters are in range.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let lr = self.lr();
        if !(lr > 0.0 && lr.is_finite()) {
            return Err(format!("optim.lr must be a positive number, got {lr}"));
        }
        self.spec().validate()
    }

    /// The optimizer over `params` (one trainable group, multiplier 1).
    pub fn build(&self, params: Vec<(String, Var)>) -> Result<Box<dyn Optimizer>> {
        self.build_groups(vec![ParamGroup::trainable("params", params)])
    }

    /// The optimizer over parameter groups: frozen groups are left out (never
    /// updated, no state); a parameter name may occur only once over all groups.
    pub fn build_groups(&self, groups: Vec<ParamGroup>) -> Result<Box<dyn Optimizer>> {
        Ok(self.spec().build(group::flatten(groups)?))
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
    use candle_core::Device;

    /// Minimises f(x) = sum((x - 3)^2) from [0, 1] and returns x after `n` steps.
    pub(super) fn run(cfg: OptimizerConfig, n: usize) -> Vec<f64> {
        let x = Var::new(&[0.0f64, 1.0], &Device::Cpu).unwrap();
        let mut opt = cfg.build(vec![("x".into(), x.clone())]).unwrap();
        for _ in 0..n {
            let loss = (x.as_tensor() - 3.0).unwrap().sqr().unwrap().sum_all().unwrap();
            opt.step(&loss.backward().unwrap()).unwrap();
        }
        x.as_tensor().to_vec1().unwrap()
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
    }

    #[test]
    fn validation_messages() {
        let e = OptimizerConfig::from(SgdConfig::new(-1.0)).validate().unwrap_err();
        assert!(e.contains("optim.lr"), "{e}");
        let e = OptimizerConfig::from(SgdConfig {
            nesterov: true,
            ..SgdConfig::new(0.1)
        })
        .validate()
        .unwrap_err();
        assert!(e.contains("nesterov"), "{e}");
        let e = OptimizerConfig::from(AdamConfig {
            beta1: 1.0,
            ..AdamConfig::new(0.1)
        })
        .validate()
        .unwrap_err();
        assert!(e.contains("optim.beta1"), "{e}");
    }

    #[test]
    fn configs_read_the_kind_tag_and_reject_unknown_keys() {
        let c: OptimizerConfig = toml::from_str("kind = \"sgd\"\nlr = 0.1\nmomentum = 0.9").unwrap();
        assert_eq!(
            c,
            SgdConfig {
                momentum: 0.9,
                ..SgdConfig::new(0.1)
            }
            .into()
        );
        let c: OptimizerConfig = toml::from_str("kind = \"adamw\"\nlr = 0.1").unwrap();
        assert_eq!(c, AdamwConfig::new(0.1).into());
        let e = toml::from_str::<OptimizerConfig>("kind = \"adam\"\nlr = 0.1\nmomentum = 0.9")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `momentum`") && e.contains("beta1"), "{e}");
        let e = toml::from_str::<OptimizerConfig>("kind = \"lbfgs\"\nlr = 0.1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("lbfgs") && e.contains("adamw"), "{e}");
        // Serialised with the tag first, as before the trait (sidecars compare it).
        let v = serde_json::to_value(OptimizerConfig::from(SgdConfig::new(0.5))).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"kind": "sgd", "lr": 0.5, "momentum": 0.0, "nesterov": false, "weight_decay": 0.0})
        );
    }

    #[test]
    fn groups_scale_the_rate_set_their_own_decay_and_freeze() {
        // Three one-element parameters at 1.0, gradient 2(x - 3) = -4 at the start.
        let vars: Vec<Var> = (0..3).map(|_| Var::new(&[1.0f64], &Device::Cpu).unwrap()).collect();
        let groups = vec![
            ParamGroup::trainable("fast", vec![("a".into(), vars[0].clone())]).with_weight_decay(0.5),
            ParamGroup::trainable("still", vec![("b".into(), vars[1].clone())]).with_lr_scale(0.0),
            ParamGroup::frozen("frozen", vec![("c".into(), vars[2].clone())]),
        ];
        let mut opt = OptimizerConfig::from(SgdConfig {
            momentum: 0.9,
            ..SgdConfig::new(0.1)
        })
        .build_groups(groups)
        .unwrap();
        assert_eq!(opt.params().len(), 2, "the frozen group is left out");
        let loss = vars
            .iter()
            .map(|v| (v.as_tensor() - 3.0).unwrap().sqr().unwrap().sum_all().unwrap())
            .reduce(|a, b| (a + b).unwrap())
            .unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
        let x = |i: usize| vars[i].as_tensor().to_vec1::<f64>().unwrap()[0];
        // a: g = -4 + 0.5 * 1 = -3.5, x = 1 + 0.35.
        assert!((x(0) - 1.35).abs() < 1e-12, "{}", x(0));
        assert_eq!(x(1), 1.0, "lr scale 0: no change");
        assert_eq!(x(2), 1.0, "frozen: no change");
        // Scale 0 still keeps state (momentum), frozen parameters have none.
        let keys: Vec<String> = opt.state_tensors().into_keys().collect();
        assert_eq!(keys, vec!["a.momentum", "b.momentum"]);
        let e = OptimizerConfig::from(SgdConfig::new(0.1))
            .build_groups(vec![
                ParamGroup::trainable("one", vec![("a".into(), vars[0].clone())]),
                ParamGroup::frozen("two", vec![("a".into(), vars[1].clone())]),
            ])
            .err()
            .expect("duplicate name")
            .to_string();
        assert!(e.contains("`a`") && e.contains("one") && e.contains("two"), "{e}");
    }
}
