//! Parameter groups: named sets of variables that are trained or frozen, each
//! with its own learning-rate multiplier and weight decay.
use candle_core::{Result, Var};
use std::collections::HashMap;

/// A named group of parameters (`backbone`, `head`, ...).
#[derive(Debug, Clone)]
pub struct ParamGroup {
    pub name: String,
    /// (name, variable) pairs; names are those of the checkpoint (`fc.weight`).
    pub params: Vec<(String, Var)>,
    /// Multiplies the optimizer's (scheduled) learning rate for this group: 1 is
    /// the configured rate, 0 keeps the values but still accumulates state.
    pub lr_scale: f64,
    /// Replaces the optimizer's weight decay for this group (`None`: the optimizer's).
    pub weight_decay: Option<f64>,
    /// Frozen groups are not handed to the optimizer: never updated, no state.
    pub trainable: bool,
}

impl ParamGroup {
    /// A group trained at the optimizer's own learning rate and weight decay.
    pub fn trainable(name: impl Into<String>, params: Vec<(String, Var)>) -> Self {
        Self {
            name: name.into(),
            params,
            lr_scale: 1.0,
            weight_decay: None,
            trainable: true,
        }
    }

    /// A group whose values stay as they are.
    pub fn frozen(name: impl Into<String>, params: Vec<(String, Var)>) -> Self {
        Self {
            trainable: false,
            ..Self::trainable(name, params)
        }
    }

    pub fn with_lr_scale(self, lr_scale: f64) -> Self {
        Self { lr_scale, ..self }
    }

    pub fn with_weight_decay(self, weight_decay: f64) -> Self {
        Self {
            weight_decay: Some(weight_decay),
            ..self
        }
    }
}

/// One parameter as an optimizer sees it: its group's settings attached.
#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    pub var: Var,
    pub lr_scale: f64,
    pub weight_decay: Option<f64>,
}

impl Param {
    /// This parameter's weight decay, given the optimizer's.
    pub fn weight_decay_or(&self, default: f64) -> f64 {
        self.weight_decay.unwrap_or(default)
    }
}

/// The parameters of the trainable groups, in group order; every name (over all
/// groups, frozen ones included) must be unique, and settings must be finite and
/// non-negative.
pub(crate) fn flatten(groups: Vec<ParamGroup>) -> Result<Vec<Param>> {
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut out = Vec::new();
    for g in groups {
        if !(g.lr_scale >= 0.0 && g.lr_scale.is_finite()) {
            candle_core::bail!(
                "parameter group `{}`: lr_scale must be >= 0, got {}",
                g.name,
                g.lr_scale
            );
        }
        if let Some(wd) = g.weight_decay.filter(|wd| !(*wd >= 0.0 && wd.is_finite())) {
            candle_core::bail!("parameter group `{}`: weight_decay must be >= 0, got {wd}", g.name);
        }
        for (name, var) in g.params {
            if let Some(other) = seen.insert(name.clone(), g.name.clone()) {
                candle_core::bail!(
                    "parameter `{name}` is in two parameter groups, `{other}` and `{}`",
                    g.name
                );
            }
            if g.trainable {
                out.push(Param {
                    name,
                    var,
                    lr_scale: g.lr_scale,
                    weight_decay: g.weight_decay,
                });
            }
        }
    }
    Ok(out)
}
