//! Adam with bias correction, as `torch.optim.Adam`; also the update of AdamW
//! ([`super::adamw`]), whose weight decay is applied to the weights before the
//! update (decoupled) instead of being added to the gradient.
use super::{fused, Optimizer, OptimizerSpec, Param, ParamState, PerParam};
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
    /// Use [`fused`] where it applies (off only in tests, to compare the two paths).
    fused: bool,
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
            fused: true,
        }
    }
}

/// Adam's settings for one step (`t` counts from 1).
#[derive(Clone, Copy)]
struct Hyper {
    lr: f64,
    betas: [f64; 2],
    eps: f64,
    weight_decay: f64,
    decoupled: bool,
    t: i32,
}

impl Adam {
    fn hyper(&self, t: i32) -> Hyper {
        Hyper {
            lr: self.lr,
            betas: self.betas,
            eps: self.eps,
            weight_decay: self.weight_decay,
            decoupled: self.decoupled,
            t,
        }
    }
}

/// Adam's per-step constants, rounded to f32 as candle's affine rounds them.
#[derive(Clone, Copy)]
struct AdamConsts {
    b1: f32,
    nb1: f32,
    b2: f32,
    nb2: f32,
    inv_bc2: f32,
    step: f32,
    eps: f32,
}

/// One Adam pass: `decay(p, g)` gives the decayed value and the gradient with its L2
/// term. The moments start at zero, which gives the tensor form's first step exactly
/// (`+0 + y == y` for every `y = x * c + 0.0`, which is never -0).
#[inline(always)]
fn adam_loop(
    g: &[f32],
    p: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    c: AdamConsts,
    decay: impl Fn(f32, f32) -> (f32, f32),
) {
    for (((p, m), v), &g) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
        let (pk, gk) = decay(*p, g);
        let mk = (*m * c.b1 + 0.0) + (gk * c.nb1 + 0.0);
        let vk = (*v * c.b2 + 0.0) + (gk * gk * c.nb2 + 0.0);
        let denom = (vk * c.inv_bc2 + 0.0).sqrt() + c.eps;
        *p = pk - ((mk / denom) * c.step + 0.0);
        *m = mk;
        *v = vk;
    }
}

/// The update of parameter `i` in one in-place pass, when its value, gradient and
/// moments are contiguous f32 CPU tensors (see [`fused`]); false (nothing done)
/// otherwise. Bit-identical to the tensor-op update of [`Adam::step`].
fn fused_step(moments: &mut PerParam<Moments>, h: Hyper, i: usize, g: &Tensor, param: &Param) -> Result<bool> {
    let p = param.var.as_tensor();
    let ready = match moments.get(i) {
        None => fused::applies(&[g, p]),
        Some(s) => fused::applies(&[g, p, &s.exp_avg, &s.exp_avg_sq]),
    };
    if !ready {
        return Ok(false);
    }
    if moments.get(i).is_none() {
        moments.set(
            i,
            Moments {
                exp_avg: p.zeros_like()?,
                exp_avg_sq: p.zeros_like()?,
            },
        );
    }
    let Some(s) = moments.get(i) else { return Ok(false) };
    let [beta1, beta2] = h.betas;
    let lr = h.lr * param.lr_scale;
    let wd = param.weight_decay_or(h.weight_decay);
    let c = AdamConsts {
        b1: beta1 as f32,
        nb1: (1.0 - beta1) as f32,
        b2: beta2 as f32,
        nb2: (1.0 - beta2) as f32,
        inv_bc2: (1.0 / (1.0 - beta2.powi(h.t))) as f32,
        step: (lr / (1.0 - beta1.powi(h.t))) as f32,
        eps: h.eps as f32,
    };
    // `x * c + 0.0` is candle's affine (`t * c`), kept for its rounding of -0. One
    // loop per weight-decay form, so that each vectorises without a branch.
    fused::update3(g, p, &s.exp_avg, &s.exp_avg_sq, |g, p, m, v| match (wd > 0.0, h.decoupled) {
        (true, true) => {
            let d = (1.0 - lr * wd) as f32;
            adam_loop(g, p, m, v, c, |p, g| (p * d + 0.0, g))
        }
        (true, false) => {
            let w = wd as f32;
            adam_loop(g, p, m, v, c, |p, g| (p, g + (p * w + 0.0)))
        }
        (false, _) => adam_loop(g, p, m, v, c, |p, g| (p, g)),
    })?;
    Ok(true)
}

impl Optimizer for Adam {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.steps += 1;
        let t = self.steps as i32;
        let hyper = self.hyper(t);
        let [beta1, beta2] = self.betas;
        let eps = self.eps;
        for (i, param) in self.params.iter().enumerate() {
            let Some(g) = grads.get(param.var.as_tensor()) else { continue };
            if self.fused && fused_step(&mut self.moments, hyper, i, g, param)? {
                continue;
            }
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
pub(crate) mod tests {
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

    /// Parameters of a few shapes (one holding ±0) and a loss with varied gradients.
    pub(crate) fn fixture() -> (Vec<Param>, impl Fn(usize) -> GradStore) {
        let vals = |n: usize, s: f32| -> Vec<f32> { (0..n).map(|i| (i as f32 * 0.731 + s).sin() * 0.8).collect() };
        let mut a = vals(15, 0.3);
        a[0] = 0.0;
        a[1] = -0.0;
        let vars = [
            Var::from_tensor(&Tensor::from_vec(a, (3, 5), &Device::Cpu).unwrap()).unwrap(),
            Var::from_tensor(&Tensor::from_vec(vals(7, 1.1), 7, &Device::Cpu).unwrap()).unwrap(),
        ];
        let params: Vec<Param> = vars
            .iter()
            .enumerate()
            .map(|(i, v)| Param {
                name: format!("p{i}"),
                var: v.clone(),
                lr_scale: if i == 1 { 0.5 } else { 1.0 },
                weight_decay: None,
            })
            .collect();
        let grads = move |step: usize| {
            let c = (step as f64 * 0.37).cos();
            let loss = vars
                .iter()
                .map(|v| {
                    let t = v.as_tensor();
                    ((t.sqr().unwrap() * c).unwrap() + t.sin().unwrap().affine(1e-3, 0.0).unwrap())
                        .unwrap()
                        .sum_all()
                        .unwrap()
                })
                .reduce(|a, b| (a + b).unwrap())
                .unwrap();
            loss.backward().unwrap()
        };
        (params, grads)
    }

    pub(crate) fn bits(params: &[Param]) -> Vec<Vec<u32>> {
        params
            .iter()
            .map(|p| {
                let v: Vec<f32> = p.var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
                v.iter().map(|x| x.to_bits()).collect()
            })
            .collect()
    }

    #[test]
    fn fused_update_is_bit_identical_to_the_tensor_ops() {
        let (params, grads) = fixture();
        let g = grads(0);
        let hyper = Adam::new(1e-2, [0.9, 0.999], 1e-8, 0.0, false, params.clone()).hyper(1);
        let g0 = g.get(params[0].var.as_tensor()).unwrap();
        let mut moments = PerParam::new(params.len());
        assert!(
            fused_step(&mut moments, hyper, 0, g0, &params[0]).unwrap(),
            "the fused path applies to the fixture"
        );
        for (wd, decoupled) in [(0.0, false), (0.01, false), (0.05, true)] {
            let run = |fused: bool| {
                let (params, grads) = fixture();
                let mut opt = Adam::new(1e-2, [0.9, 0.999], 1e-8, wd, decoupled, params.clone());
                opt.fused = fused;
                for step in 0..6 {
                    opt.set_learning_rate(1e-2 / (1.0 + step as f64));
                    opt.step(&grads(step)).unwrap();
                }
                let state: Vec<Vec<u32>> = opt
                    .state_tensors()
                    .values()
                    .map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect())
                    .collect();
                (bits(&params), state)
            };
            assert_eq!(run(true), run(false), "weight decay {wd}, decoupled {decoupled}");
        }
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
