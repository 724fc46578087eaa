//! SGD with momentum (dampening 0), Nesterov and L2 weight decay, as `torch.optim.SGD`.
use super::{fused, Optimizer, OptimizerSpec, Param, ParamState, PerParam};
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
            fused: true,
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
    /// Use [`fused`] where it applies (off only in tests, to compare the two paths).
    fused: bool,
}

/// `p -= grad(g, p) * lr` (`grad` adds the L2 term).
#[inline(always)]
fn plain_loop(g: &[f32], p: &mut [f32], lr: f32, grad: impl Fn(f32, f32) -> f32) {
    for (p, &g) in p.iter_mut().zip(g) {
        *p -= grad(g, *p) * lr + 0.0;
    }
}

/// The momentum update; `FIRST`: the buffer starts as the gradient (the tensor form
/// does not add a zero buffer, whose `+0` would turn a `-0` gradient into `+0`).
#[inline(always)]
fn momentum_loop<const FIRST: bool, const NESTEROV: bool>(
    g: &[f32],
    p: &mut [f32],
    b: &mut [f32],
    lr: f32,
    mu: f32,
    grad: impl Fn(f32, f32) -> f32,
) {
    for ((p, b), &g) in p.iter_mut().zip(b.iter_mut()).zip(g) {
        let gk = grad(g, *p);
        let bk = if FIRST { gk } else { (*b * mu + 0.0) + gk };
        let u = if NESTEROV { gk + (bk * mu + 0.0) } else { bk };
        *b = bk;
        *p -= u * lr + 0.0;
    }
}

/// The update of parameter `i` at rate `lr` in one in-place pass, when its value,
/// gradient and momentum are contiguous f32 CPU tensors (see [`fused`]); false
/// (nothing done) otherwise. Bit-identical to the tensor-op update of [`Sgd::step`].
fn fused_step(
    buffers: &mut PerParam<Momentum>,
    config: &SgdConfig,
    lr: f64,
    i: usize,
    g: &Tensor,
    param: &Param,
) -> Result<bool> {
    let p = param.var.as_tensor();
    let SgdConfig { momentum, nesterov, .. } = *config;
    let ready = match buffers.get(i) {
        Some(Momentum(b)) if momentum > 0.0 => fused::applies(&[g, p, b]),
        _ => fused::applies(&[g, p]),
    };
    if !ready {
        return Ok(false);
    }
    let wd = param.weight_decay_or(config.weight_decay);
    let lr = (lr * param.lr_scale) as f32;
    let w = wd as f32;
    // `x * c + 0.0` is candle's affine (`t * c`), kept for its rounding of -0. One
    // loop per form, so that each vectorises without a branch.
    if momentum == 0.0 {
        fused::update1(g, p, |g, p| {
            if wd > 0.0 {
                plain_loop(g, p, lr, |g, p| g + (p * w + 0.0))
            } else {
                plain_loop(g, p, lr, |g, _| g)
            }
        })?;
        return Ok(true);
    }
    let first = buffers.get(i).is_none();
    if first {
        buffers.set(i, Momentum(p.zeros_like()?));
    }
    let Some(Momentum(buf)) = buffers.get(i) else { return Ok(false) };
    let mu = momentum as f32;
    fused::update2(g, p, buf, |g, p, b| {
        let l2 = move |g: f32, p: f32| g + (p * w + 0.0);
        let none = |g: f32, _: f32| g;
        match (wd > 0.0, first, nesterov) {
            (true, true, true) => momentum_loop::<true, true>(g, p, b, lr, mu, l2),
            (true, true, false) => momentum_loop::<true, false>(g, p, b, lr, mu, l2),
            (true, false, true) => momentum_loop::<false, true>(g, p, b, lr, mu, l2),
            (true, false, false) => momentum_loop::<false, false>(g, p, b, lr, mu, l2),
            (false, true, true) => momentum_loop::<true, true>(g, p, b, lr, mu, none),
            (false, true, false) => momentum_loop::<true, false>(g, p, b, lr, mu, none),
            (false, false, true) => momentum_loop::<false, true>(g, p, b, lr, mu, none),
            (false, false, false) => momentum_loop::<false, false>(g, p, b, lr, mu, none),
        }
    })?;
    Ok(true)
}

impl Optimizer for Sgd {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.steps += 1;
        let SgdConfig { momentum, nesterov, .. } = self.config;
        for (i, param) in self.params.iter().enumerate() {
            let Some(g) = grads.get(param.var.as_tensor()) else { continue };
            if self.fused && fused_step(&mut self.momentum, &self.config, self.lr, i, g, param)? {
                continue;
            }
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
    use super::super::adam::tests::{bits, fixture};
    use super::super::tests::run;
    use super::*;

    #[test]
    fn fused_update_is_bit_identical_to_the_tensor_ops() {
        for (momentum, nesterov, weight_decay) in [(0.0, false, 0.0), (0.0, false, 0.01), (0.9, false, 0.0), (0.9, true, 1e-3)] {
            let config = SgdConfig {
                momentum,
                nesterov,
                weight_decay,
                ..SgdConfig::new(0.1)
            };
            let run = |fused: bool| {
                let (params, grads) = fixture();
                let mut opt = Sgd {
                    momentum: PerParam::new(params.len()),
                    config: config.clone(),
                    lr: config.lr,
                    params: params.clone(),
                    steps: 0,
                    fused,
                };
                for step in 0..6 {
                    opt.set_learning_rate(0.1 / (1.0 + step as f64));
                    opt.step(&grads(step)).unwrap();
                }
                let state: Vec<Vec<f32>> = opt
                    .state_tensors()
                    .values()
                    .map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
                    .collect();
                (bits(&params), state.iter().map(|v| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>()).collect::<Vec<_>>())
            };
            assert_eq!(run(true), run(false), "{config:?}");
        }
    }

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
