//! Topic 3: backpropagation from scratch, without autograd.
//!
//! A fully connected network `a^0 = x`, `z^l = W^l a^{l-1} + b^l`, `a^l = σ_l(z^l)`,
//! in f64, with the four equations implemented three ways ([`Form`]):
//!
//! ```text
//! (BP1) δ^L = ∇_a C ⊙ σ'(z^L)                      (Jᵀ ∇_a C for softmax, which is not elementwise)
//! (BP2) δ^l = ((W^{l+1})ᵀ δ^{l+1}) ⊙ σ'(z^l)
//! (BP3) ∂C/∂b^l = δ^l
//! (BP4) ∂C/∂W^l = δ^l (a^{l-1})ᵀ
//! ```
//!
//! * [`Form::Hadamard`]: exactly the equations above, element by element;
//! * [`Form::Matrix`]: `δ^L = Σ'(z^L) ∇_a C`, `δ^l = Σ'(z^l) (W^{l+1})ᵀ δ^{l+1}` with the
//!   Jacobian `Σ'(z) = diag(σ'(z))` built as a matrix (`diag(s) - s sᵀ` for softmax);
//! * [`Form::Expanded`]: `δ^l = Σ'(z^l)(W^{l+1})ᵀ Σ'(z^{l+1}) ⋯ (W^L)ᵀ Σ'(z^L) ∇_a C`, the
//!   product of matrices formed explicitly for every layer, then applied to `∇_a C`.
//!
//! All three are compared with candle's autograd (the same network built from candle
//! ops, the cost from `digitlab-losses`) and with central finite differences of the
//! cost, by the relative error `‖g1 - g2‖ / max(‖g1‖, ‖g2‖)` over all parameters.
//!
//! Cost conventions (per example, summed over output units; the batch cost is the mean
//! over examples):
//!
//! | [`Cost`] | `C_x` | `∇_a C_x` | library form used for autograd |
//! |---|---|---|---|
//! | `Mse` | `½‖a - y‖²` | `a - y` | `mse(a, y, Mean) · K/2` |
//! | `Bce` | `-Σ [y ln a + (1-y) ln(1-a)]` | `(a - y) / (a(1-a))` | `bce(a, y, Mean) · K` |
//! | `CrossEntropy` | `-Σ y ln a` | `-y / a` | `cross_entropy_probs(y, a)`, mean |
//!
//! With these, `δ^L = a - y` exactly for softmax + CE (because `Σ y = 1`) and for
//! sigmoid + BCE (because `σ' = a(1-a)` cancels the denominator) — and also for a
//! linear output with `½‖a - y‖²`. For sigmoid + MSE it is `(a - y) ⊙ a(1 - a)`,
//! which the check shows is *not* `a - y` (the common over-generalisation).
use crate::data::{TheoryConfig, TheoryData};
use crate::error::{Result, TheoryError};
use crate::linalg::{gaussian, max_abs_diff, rel_error, Matrix};
use crate::result::{num, plot_path, Plot, Table, TopicResult, Verdict};
use crate::Topic;
use candle_core::{DType, Device, Tensor, Var};
use digitlab_losses::{bce, cross_entropy_probs, log_softmax, mse, Reduction};
use digitlab_report::plots::bar_chart;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;

/// An activation function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Activation {
    Sigmoid,
    Relu,
    Tanh,
    Linear,
    /// Softmax over the layer (output layer only; not elementwise).
    Softmax,
}

impl Activation {
    pub fn name(self) -> &'static str {
        match self {
            Activation::Sigmoid => "sigmoid",
            Activation::Relu => "relu",
            Activation::Tanh => "tanh",
            Activation::Linear => "linear",
            Activation::Softmax => "softmax",
        }
    }

    /// `σ(z)`.
    pub fn apply(self, z: &[f64]) -> Vec<f64> {
        match self {
            Activation::Sigmoid => z.iter().map(|&v| crate::logistic::sigmoid(v)).collect(),
            Activation::Relu => z.iter().map(|&v| v.max(0.0)).collect(),
            Activation::Tanh => z.iter().map(|&v| v.tanh()).collect(),
            Activation::Linear => z.to_vec(),
            Activation::Softmax => softmax(z),
        }
    }

    /// `σ'(z)` element by element; `None` for softmax, whose Jacobian is not diagonal.
    /// ReLU uses `σ'(0) = 0`.
    pub fn derivative(self, z: &[f64]) -> Option<Vec<f64>> {
        Some(match self {
            Activation::Sigmoid => z
                .iter()
                .map(|&v| {
                    let s = crate::logistic::sigmoid(v);
                    s * (1.0 - s)
                })
                .collect(),
            Activation::Relu => z.iter().map(|&v| if v > 0.0 { 1.0 } else { 0.0 }).collect(),
            Activation::Tanh => z.iter().map(|&v| 1.0 - v.tanh().powi(2)).collect(),
            Activation::Linear => vec![1.0; z.len()],
            Activation::Softmax => return None,
        })
    }

    /// The Jacobian `∂a/∂z`: `diag(σ'(z))`, or `diag(s) - s sᵀ` for softmax.
    pub fn jacobian(self, z: &[f64]) -> Matrix {
        match self.derivative(z) {
            Some(d) => Matrix::diag(&d),
            None => {
                let s = softmax(z);
                Matrix::from_fn(
                    s.len(),
                    s.len(),
                    |i, j| if i == j { s[i] - s[i] * s[j] } else { -s[i] * s[j] },
                )
            }
        }
    }

    fn candle(self, z: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Activation::Sigmoid => candle_nn::ops::sigmoid(z)?,
            Activation::Relu => z.relu()?,
            Activation::Tanh => z.tanh()?,
            Activation::Linear => z.clone(),
            Activation::Softmax => log_softmax(z, 1)?.exp()?,
        })
    }
}

/// Max-shifted softmax of one vector.
pub fn softmax(z: &[f64]) -> Vec<f64> {
    let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

/// A cost function of the output activations (see the module table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cost {
    Mse,
    Bce,
    CrossEntropy,
}

impl Cost {
    pub fn name(self) -> &'static str {
        match self {
            Cost::Mse => "MSE",
            Cost::Bce => "BCE",
            Cost::CrossEntropy => "CE",
        }
    }

    /// `C_x(a, y)` for one example.
    pub fn value(self, a: &[f64], y: &[f64]) -> f64 {
        match self {
            Cost::Mse => 0.5 * a.iter().zip(y).map(|(a, y)| (a - y).powi(2)).sum::<f64>(),
            Cost::Bce => -a
                .iter()
                .zip(y)
                .map(|(a, y)| y * a.ln() + (1.0 - y) * (1.0 - a).ln())
                .sum::<f64>(),
            Cost::CrossEntropy => -a
                .iter()
                .zip(y)
                .map(|(a, y)| if *y == 0.0 { 0.0 } else { y * a.ln() })
                .sum::<f64>(),
        }
    }

    /// `∇_a C_x`.
    pub fn grad_a(self, a: &[f64], y: &[f64]) -> Vec<f64> {
        match self {
            Cost::Mse => a.iter().zip(y).map(|(a, y)| a - y).collect(),
            Cost::Bce => a.iter().zip(y).map(|(a, y)| (a - y) / (a * (1.0 - a))).collect(),
            Cost::CrossEntropy => a.iter().zip(y).map(|(a, y)| -y / a).collect(),
        }
    }
}

/// One layer: `z = W a + b`, `a' = activation(z)`.
#[derive(Debug, Clone)]
pub struct Layer {
    /// `out x in`.
    pub w: Matrix,
    pub b: Vec<f64>,
    pub activation: Activation,
}

/// A fully connected network in f64.
#[derive(Debug, Clone)]
pub struct Net {
    pub layers: Vec<Layer>,
    /// Whether biases are parameters (when false they stay 0 and are not listed).
    pub bias: bool,
}

/// `z^l` and `a^l` of one forward pass (`a[0]` is the input).
#[derive(Debug, Clone)]
pub struct ForwardTrace {
    pub z: Vec<Vec<f64>>,
    pub a: Vec<Vec<f64>>,
}

/// Gradients per layer.
#[derive(Debug, Clone)]
pub struct Gradients {
    pub w: Vec<Matrix>,
    pub b: Vec<Vec<f64>>,
}

impl Gradients {
    /// In the order of [`Net::params`].
    pub fn flatten(&self, bias: bool) -> Vec<f64> {
        let mut v = Vec::new();
        for (w, b) in self.w.iter().zip(&self.b) {
            v.extend_from_slice(&w.data);
            if bias {
                v.extend_from_slice(b);
            }
        }
        v
    }
}

/// Which implementation of the backward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Form {
    Hadamard,
    Matrix,
    Expanded,
}

impl Form {
    pub const ALL: [Form; 3] = [Form::Hadamard, Form::Matrix, Form::Expanded];
    pub fn name(self) -> &'static str {
        match self {
            Form::Hadamard => "Hadamard (BP1-BP4)",
            Form::Matrix => "matrix, Sigma'(z) Jacobian",
            Form::Expanded => "fully expanded product",
        }
    }
}

impl Net {
    /// Random weights `N(0, gain²/fan_in)` (biases `N(0, 0.1²)` when enabled);
    /// `sizes = [inputs, hidden..., outputs]`.
    pub fn random(
        sizes: &[usize],
        hidden: Activation,
        output: Activation,
        bias: bool,
        gain: f64,
        rng: &mut ChaCha8Rng,
    ) -> Result<Self> {
        if sizes.len() < 2 || sizes.contains(&0) {
            return Err(TheoryError::invalid(format!(
                "network sizes must be at least [in, out] and non-zero, got {sizes:?}"
            )));
        }
        if hidden == Activation::Softmax {
            return Err(TheoryError::invalid("softmax is supported on the output layer only"));
        }
        let mut layers = Vec::new();
        for l in 1..sizes.len() {
            let (fan_in, out) = (sizes[l - 1], sizes[l]);
            let sd = gain / (fan_in as f64).sqrt();
            let w = Matrix::from_fn(out, fan_in, |_, _| sd * gaussian(rng));
            let b = if bias {
                (0..out).map(|_| 0.1 * gaussian(rng)).collect()
            } else {
                vec![0.0; out]
            };
            let activation = if l + 1 == sizes.len() { output } else { hidden };
            layers.push(Layer { w, b, activation });
        }
        Ok(Self { layers, bias })
    }

    pub fn inputs(&self) -> usize {
        self.layers[0].w.cols
    }
    pub fn outputs(&self) -> usize {
        self.layers.last().expect("layers").w.rows
    }

    pub fn num_params(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.w.data.len() + if self.bias { l.b.len() } else { 0 })
            .sum()
    }

    /// All parameters: per layer `W` row by row, then `b` (if biases are on).
    pub fn params(&self) -> Vec<f64> {
        let mut v = Vec::with_capacity(self.num_params());
        for l in &self.layers {
            v.extend_from_slice(&l.w.data);
            if self.bias {
                v.extend_from_slice(&l.b);
            }
        }
        v
    }

    /// Sets all parameters (same order as [`Net::params`]).
    pub fn set_params(&mut self, p: &[f64]) {
        assert_eq!(p.len(), self.num_params(), "set_params: wrong length");
        let mut k = 0;
        let bias = self.bias;
        for l in &mut self.layers {
            let n = l.w.data.len();
            l.w.data.copy_from_slice(&p[k..k + n]);
            k += n;
            if bias {
                let m = l.b.len();
                l.b.copy_from_slice(&p[k..k + m]);
                k += m;
            }
        }
    }

    /// A copy with parameters `p`.
    pub fn with_params(&self, p: &[f64]) -> Net {
        let mut n = self.clone();
        n.set_params(p);
        n
    }

    pub fn forward(&self, x: &[f64]) -> ForwardTrace {
        let mut a = vec![x.to_vec()];
        let mut z = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            let mut zl = l.w.matvec(a.last().expect("input"));
            zl.iter_mut().zip(&l.b).for_each(|(z, b)| *z += b);
            a.push(l.activation.apply(&zl));
            z.push(zl);
        }
        ForwardTrace { z, a }
    }

    /// Mean over the batch of `C_x`; `xs` holds `B` rows of inputs, `ys` `B` rows of targets.
    pub fn cost(&self, xs: &[f64], ys: &[f64], cost: Cost) -> f64 {
        let (ni, no) = (self.inputs(), self.outputs());
        let b = xs.len() / ni;
        (0..b)
            .map(|i| {
                let t = self.forward(&xs[i * ni..(i + 1) * ni]);
                cost.value(t.a.last().expect("output"), &ys[i * no..(i + 1) * no])
            })
            .sum::<f64>()
            / b as f64
    }

    /// `δ^L` for one example from (BP1): `∇_a C ⊙ σ'(z^L)`, or `Jᵀ ∇_a C` for softmax.
    pub fn output_delta(&self, x: &[f64], y: &[f64], cost: Cost) -> Vec<f64> {
        let t = self.forward(x);
        let last = self.layers.last().expect("layers");
        let g = cost.grad_a(t.a.last().expect("output"), y);
        let zl = t.z.last().expect("z");
        match last.activation.derivative(zl) {
            Some(d) => g.iter().zip(&d).map(|(g, d)| g * d).collect(),
            None => last.activation.jacobian(zl).matvec_t(&g),
        }
    }

    /// Gradients of the batch cost by backpropagation (no autograd), in `form`.
    pub fn backprop(&self, xs: &[f64], ys: &[f64], cost: Cost, form: Form) -> Gradients {
        let (ni, no) = (self.inputs(), self.outputs());
        let batch = xs.len() / ni;
        let nl = self.layers.len();
        let mut gw: Vec<Matrix> = self.layers.iter().map(|l| Matrix::zeros(l.w.rows, l.w.cols)).collect();
        let mut gb: Vec<Vec<f64>> = self.layers.iter().map(|l| vec![0.0; l.b.len()]).collect();
        let inv_b = 1.0 / batch as f64;
        for i in 0..batch {
            let t = self.forward(&xs[i * ni..(i + 1) * ni]);
            let grad_a: Vec<f64> = cost
                .grad_a(t.a.last().expect("output"), &ys[i * no..(i + 1) * no])
                .iter()
                .map(|g| g * inv_b)
                .collect();
            let deltas: Vec<Vec<f64>> = match form {
                Form::Hadamard => {
                    let mut d = vec![Vec::new(); nl];
                    let last = &self.layers[nl - 1];
                    d[nl - 1] = match last.activation.derivative(&t.z[nl - 1]) {
                        Some(sp) => grad_a.iter().zip(&sp).map(|(g, s)| g * s).collect(),
                        None => last.activation.jacobian(&t.z[nl - 1]).matvec_t(&grad_a),
                    };
                    for l in (0..nl - 1).rev() {
                        let back = self.layers[l + 1].w.matvec_t(&d[l + 1]);
                        let sp = self.layers[l]
                            .activation
                            .derivative(&t.z[l])
                            .expect("hidden layers are elementwise");
                        d[l] = back.iter().zip(&sp).map(|(b, s)| b * s).collect();
                    }
                    d
                }
                Form::Matrix => {
                    let mut d = vec![Vec::new(); nl];
                    // Σ'(z) is symmetric for both kinds of activation, so Σ'ᵀ = Σ'.
                    d[nl - 1] = self.layers[nl - 1].activation.jacobian(&t.z[nl - 1]).matvec(&grad_a);
                    for l in (0..nl - 1).rev() {
                        let sigma = self.layers[l].activation.jacobian(&t.z[l]);
                        let wt = self.layers[l + 1].w.transpose();
                        d[l] = sigma.matmul(&wt).matvec(&d[l + 1]);
                    }
                    d
                }
                Form::Expanded => {
                    // M^L = Σ'(z^L); M^l = Σ'(z^l) (W^{l+1})ᵀ M^{l+1}; δ^l = M^l ∇_a C.
                    let mut m = vec![Matrix::zeros(0, 0); nl];
                    m[nl - 1] = self.layers[nl - 1].activation.jacobian(&t.z[nl - 1]);
                    for l in (0..nl - 1).rev() {
                        let sigma = self.layers[l].activation.jacobian(&t.z[l]);
                        m[l] = sigma.matmul(&self.layers[l + 1].w.transpose()).matmul(&m[l + 1]);
                    }
                    m.iter().map(|ml| ml.matvec(&grad_a)).collect()
                }
            };
            for l in 0..nl {
                // (BP3) and (BP4).
                for (gbj, dj) in gb[l].iter_mut().zip(&deltas[l]) {
                    *gbj += dj;
                }
                let a_prev = &t.a[l];
                let cols = gw[l].cols;
                for (r, dj) in deltas[l].iter().enumerate() {
                    crate::linalg::axpy(*dj, a_prev, &mut gw[l].data[r * cols..(r + 1) * cols]);
                }
            }
        }
        Gradients { w: gw, b: gb }
    }

    /// Gradients from candle's autograd: the same network as candle ops on f64 tensors,
    /// the cost from `digitlab-losses`.
    pub fn autograd(&self, xs: &[f64], ys: &[f64], cost: Cost) -> Result<Gradients> {
        let dev = Device::Cpu;
        let (ni, no) = (self.inputs(), self.outputs());
        let batch = xs.len() / ni;
        let x = Tensor::from_vec(xs.to_vec(), (batch, ni), &dev)?;
        let y = Tensor::from_vec(ys.to_vec(), (batch, no), &dev)?;
        let mut vars = Vec::new();
        let mut a = x;
        for l in &self.layers {
            let w = Var::from_tensor(&Tensor::from_vec(l.w.data.clone(), (l.w.rows, l.w.cols), &dev)?)?;
            let b = Var::from_tensor(&Tensor::from_vec(l.b.clone(), l.b.len(), &dev)?)?;
            let z = a.matmul(&w.as_tensor().t()?)?.broadcast_add(b.as_tensor())?;
            a = l.activation.candle(&z)?;
            vars.push((w, b));
        }
        let k = no as f64;
        let c = match cost {
            Cost::Mse => mse(&a, &y, Reduction::Mean)?.affine(k / 2.0, 0.0)?,
            Cost::Bce => bce(&a, &y, Reduction::Mean)?.affine(k, 0.0)?,
            Cost::CrossEntropy => cross_entropy_probs(&y, &a)?.mean_all()?,
        };
        let grads = c.backward()?;
        let mut gw = Vec::new();
        let mut gb = Vec::new();
        for ((w, b), l) in vars.iter().zip(&self.layers) {
            let g = grads
                .get(w.as_tensor())
                .ok_or_else(|| TheoryError::invalid("autograd: no gradient for a weight"))?;
            gw.push(Matrix {
                rows: l.w.rows,
                cols: l.w.cols,
                data: g.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?,
            });
            let g = grads
                .get(b.as_tensor())
                .ok_or_else(|| TheoryError::invalid("autograd: no gradient for a bias"))?;
            gb.push(g.to_dtype(DType::F64)?.to_vec1()?);
        }
        Ok(Gradients { w: gw, b: gb })
    }

    /// Central finite differences of the batch cost, step `h`, in [`Net::params`] order.
    pub fn finite_differences(&self, xs: &[f64], ys: &[f64], cost: Cost, h: f64) -> Vec<f64> {
        let p = self.params();
        let mut net = self.clone();
        let mut out = Vec::with_capacity(p.len());
        let mut q = p.clone();
        for k in 0..p.len() {
            q[k] = p[k] + h;
            net.set_params(&q);
            let up = net.cost(xs, ys, cost);
            q[k] = p[k] - h;
            net.set_params(&q);
            let down = net.cost(xs, ys, cost);
            q[k] = p[k];
            out.push((up - down) / (2.0 * h));
        }
        out
    }

    /// Smallest `|z|` over the batch and all layers (a ReLU kink closer than the
    /// finite-difference step would spoil that check).
    pub fn min_abs_preactivation(&self, xs: &[f64]) -> f64 {
        let ni = self.inputs();
        (0..xs.len() / ni)
            .flat_map(|i| self.forward(&xs[i * ni..(i + 1) * ni]).z.into_iter().flatten())
            .fold(f64::INFINITY, |m, v| m.min(v.abs()))
    }
}

/// One network/cost configuration and its gradient errors.
#[derive(Debug, Clone)]
pub struct CaseResult {
    pub name: String,
    pub hidden: Activation,
    pub output: Activation,
    pub cost: Cost,
    pub sizes: Vec<usize>,
    pub batch: usize,
    pub params: usize,
    /// Relative error of each [`Form`] (in `Form::ALL` order) against autograd.
    pub vs_autograd: [f64; 3],
    /// Relative error of each form against finite differences.
    pub vs_fd: [f64; 3],
    pub autograd_vs_fd: f64,
    pub grad_norm: f64,
    pub min_abs_z: f64,
}

impl CaseResult {
    pub fn worst_vs_fd(&self) -> f64 {
        self.vs_fd.iter().copied().fold(self.autograd_vs_fd, f64::max)
    }
    pub fn worst_vs_autograd(&self) -> f64 {
        self.vs_autograd.iter().copied().fold(0.0, f64::max)
    }
}

/// `δ^L` against `a - y` for one output/cost pairing.
#[derive(Debug, Clone)]
pub struct OutputDeltaCheck {
    pub output: Activation,
    pub cost: Cost,
    /// Largest `|δ^L - (a - y)|` over the examples and units.
    pub max_abs_diff: f64,
    /// Whether the textbook identity `δ^L = a - y` is expected here.
    pub expected_equal: bool,
}

/// Everything topic 3 measured.
#[derive(Debug, Clone)]
pub struct BackpropResult {
    pub cases: Vec<CaseResult>,
    pub output_deltas: Vec<OutputDeltaCheck>,
    /// Finite-difference step.
    pub fd_step: f64,
    pub tolerance: f64,
}

/// Relative-error tolerance of the issue (f64).
pub const TOLERANCE: f64 = 1e-5;

fn one_hot_targets(rng: &mut ChaCha8Rng, batch: usize, k: usize) -> Vec<f64> {
    let mut y = vec![0.0; batch * k];
    for i in 0..batch {
        y[i * k + rng.random_range(0..k)] = 1.0;
    }
    y
}

/// Evaluates one configuration.
pub fn check_case(name: &str, net: &Net, xs: &[f64], ys: &[f64], cost: Cost, h: f64) -> Result<CaseResult> {
    let auto = net.autograd(xs, ys, cost)?.flatten(net.bias);
    let fd = net.finite_differences(xs, ys, cost, h);
    let mut vs_autograd = [0.0; 3];
    let mut vs_fd = [0.0; 3];
    for (k, form) in Form::ALL.into_iter().enumerate() {
        let g = net.backprop(xs, ys, cost, form).flatten(net.bias);
        vs_autograd[k] = rel_error(&g, &auto);
        vs_fd[k] = rel_error(&g, &fd);
    }
    let sizes: Vec<usize> = std::iter::once(net.inputs())
        .chain(net.layers.iter().map(|l| l.w.rows))
        .collect();
    Ok(CaseResult {
        name: name.to_string(),
        hidden: net.layers[0].activation,
        output: net.layers.last().expect("layers").activation,
        cost,
        batch: xs.len() / net.inputs(),
        sizes,
        params: net.num_params(),
        vs_autograd,
        vs_fd,
        autograd_vs_fd: rel_error(&auto, &fd),
        grad_norm: crate::linalg::norm(&auto),
        min_abs_z: net.min_abs_preactivation(xs),
    })
}

/// Runs topic 3: 12 toy configurations (4 hidden activations x {MSE, sigmoid + BCE,
/// softmax + CE}) on a 5-4-3-3 network, plus a 64-16-10 (or 784-16-10) tanh/softmax
/// network on 32 real images.
pub fn run(data: &TheoryData, cfg: &TheoryConfig) -> Result<BackpropResult> {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed.wrapping_add(3));
    let h = 1e-6;
    let sizes = [5, 4, 3, 3];
    let batch = 6;
    let mut cases = Vec::new();
    for hidden in [
        Activation::Sigmoid,
        Activation::Relu,
        Activation::Tanh,
        Activation::Linear,
    ] {
        for (output, cost) in [
            (hidden, Cost::Mse),
            (Activation::Sigmoid, Cost::Bce),
            (Activation::Softmax, Cost::CrossEntropy),
        ] {
            // Redraw until no ReLU kink is within 1e-3 of a pre-activation (keeps the
            // finite differences on one side of every kink).
            let (net, xs) = loop {
                let net = Net::random(&sizes, hidden, output, true, 1.5, &mut rng)?;
                let xs: Vec<f64> = (0..batch * sizes[0]).map(|_| gaussian(&mut rng)).collect();
                if hidden != Activation::Relu || net.min_abs_preactivation(&xs) > 1e-3 {
                    break (net, xs);
                }
            };
            let ys = one_hot_targets(&mut rng, batch, sizes[3]);
            let name = format!("{}-hidden, {} output, {}", hidden.name(), output.name(), cost.name());
            cases.push(check_case(&name, &net, &xs, &ys, cost, h)?);
        }
    }
    // Real images, 10 classes.
    let (x, labels, d) = data.multiclass_rows(32);
    let mut ys = vec![0.0; labels.len() * 10];
    for (i, &l) in labels.iter().enumerate() {
        ys[i * 10 + l] = 1.0;
    }
    let net = Net::random(&[d, 16, 10], Activation::Tanh, Activation::Softmax, true, 1.0, &mut rng)?;
    let src = if data.is_mnist { "MNIST" } else { "digits" };
    cases.push(check_case(
        &format!("{src}: {d}-16-10 tanh, softmax, CE (32 images)"),
        &net,
        &x,
        &ys,
        Cost::CrossEntropy,
        h,
    )?);

    // δ^L = a - y?
    let mut output_deltas = Vec::new();
    for (output, cost, expected_equal) in [
        (Activation::Softmax, Cost::CrossEntropy, true),
        (Activation::Sigmoid, Cost::Bce, true),
        (Activation::Linear, Cost::Mse, true),
        (Activation::Sigmoid, Cost::Mse, false),
    ] {
        let net = Net::random(&[5, 4, 3], Activation::Tanh, output, true, 1.5, &mut rng)?;
        let mut worst = 0.0f64;
        for _ in 0..20 {
            let x: Vec<f64> = (0..5).map(|_| gaussian(&mut rng)).collect();
            let y = one_hot_targets(&mut rng, 1, 3);
            let delta = net.output_delta(&x, &y, cost);
            let a = net.forward(&x).a.pop().expect("output");
            let amy: Vec<f64> = a.iter().zip(&y).map(|(a, y)| a - y).collect();
            worst = worst.max(max_abs_diff(&delta, &amy));
        }
        output_deltas.push(OutputDeltaCheck {
            output,
            cost,
            max_abs_diff: worst,
            expected_equal,
        });
    }
    Ok(BackpropResult {
        cases,
        output_deltas,
        fd_step: h,
        tolerance: TOLERANCE,
    })
}

impl BackpropResult {
    fn failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        for c in &self.cases {
            if c.worst_vs_fd() > self.tolerance {
                f.push(format!(
                    "{}: relative error vs finite differences {}",
                    c.name,
                    num(c.worst_vs_fd())
                ));
            }
            if c.worst_vs_autograd() > 1e-10 {
                f.push(format!(
                    "{}: relative error vs autograd {}",
                    c.name,
                    num(c.worst_vs_autograd())
                ));
            }
        }
        for d in &self.output_deltas {
            let equal = d.max_abs_diff < 1e-12;
            if equal != d.expected_equal {
                f.push(format!(
                    "{} + {}: delta^L = a - y is {equal}",
                    d.output.name(),
                    d.cost.name()
                ));
            }
        }
        f
    }
}

impl TopicResult for BackpropResult {
    fn verdict(&self) -> Verdict {
        let failures = self.failures();
        let worst_fd = self.cases.iter().map(|c| c.worst_vs_fd()).fold(0.0, f64::max);
        let worst_auto = self.cases.iter().map(|c| c.worst_vs_autograd()).fold(0.0, f64::max);
        let mut evidence = vec![
            format!(
                "{} configurations (sigmoid, ReLU, tanh and linear hidden layers; MSE, sigmoid + BCE, softmax + CE; \
                 one on real images): the three hand-written forms agree with candle's autograd to a relative error \
                 of at most {} and with central finite differences (step {}) to at most {} (tolerance {}).",
                self.cases.len(),
                num(worst_auto),
                num(self.fd_step),
                num(worst_fd),
                num(self.tolerance)
            ),
            "The matrix form uses Sigma'(z) = diag(sigma'(z)) as an explicit matrix; for a softmax output the same \
             slot holds its full Jacobian diag(s) - s s^T, which is why (BP1) with ⊙ only applies to elementwise \
             activations."
                .to_string(),
        ];
        for d in &self.output_deltas {
            evidence.push(format!(
                "{} output + {}: max |delta^L - (a - y)| = {} over 20 examples: {}.",
                d.output.name(),
                d.cost.name(),
                num(d.max_abs_diff),
                if d.expected_equal {
                    "delta^L = a - y holds"
                } else {
                    "delta^L = (a - y) ⊙ a(1 - a), NOT a - y"
                }
            ));
        }
        evidence.extend(failures.iter().map(|f| format!("FAILED check: {f}")));
        Verdict {
            holds: failures.is_empty(),
            answer: "Yes: the four equations (elementwise, with the diagonal Jacobian, or fully expanded) give exactly \
                     the gradient, to rounding against autograd and to < 1e-5 against finite differences, for every \
                     activation and cost. delta^L = a - y holds for softmax + CE and sigmoid + BCE (and linear + ½MSE), \
                     not for sigmoid + MSE."
                .into(),
            evidence,
        }
    }

    fn tables(&self) -> Vec<Table> {
        let mut t = Table::new(
            "Relative gradient error ||g - g_ref|| / max(||g||, ||g_ref||) over all parameters",
            &[
                "network / cost",
                "sizes",
                "batch",
                "params",
                "Hadamard vs autograd",
                "matrix vs autograd",
                "expanded vs autograd",
                "Hadamard vs FD",
                "matrix vs FD",
                "expanded vs FD",
                "autograd vs FD",
                "||grad||",
            ],
        );
        for c in &self.cases {
            t.push(vec![
                c.name.clone(),
                c.sizes.iter().map(|s| s.to_string()).collect::<Vec<_>>().join("-"),
                c.batch.to_string(),
                c.params.to_string(),
                num(c.vs_autograd[0]),
                num(c.vs_autograd[1]),
                num(c.vs_autograd[2]),
                num(c.vs_fd[0]),
                num(c.vs_fd[1]),
                num(c.vs_fd[2]),
                num(c.autograd_vs_fd),
                num(c.grad_norm),
            ]);
        }
        let mut d = Table::new(
            "Output error delta^L from (BP1) compared with a - y (per example, cost summed over output units)",
            &["output", "cost", "max |delta^L - (a - y)|", "delta^L = a - y?"],
        );
        for o in &self.output_deltas {
            d.push(vec![
                o.output.name().into(),
                o.cost.name().into(),
                num(o.max_abs_diff),
                if o.max_abs_diff < 1e-12 {
                    "yes".into()
                } else {
                    "no: (a - y) ⊙ sigma'(z)".into()
                },
            ]);
        }
        vec![t, d]
    }

    fn write_plots(&self, dir: &Path) -> Result<Vec<Plot>> {
        let (path, file) = plot_path(dir, Topic::Backprop, "gradient_errors");
        let labels: Vec<String> = self
            .cases
            .iter()
            .map(|c| {
                let short = format!("{}/{}/{}", c.hidden.name(), c.output.name(), c.cost.name());
                if c.sizes.len() == 3 {
                    format!("real {short}")
                } else {
                    short
                }
            })
            .collect();
        let lg = |v: f64| v.max(1e-17).log10();
        bar_chart(
            &path,
            "log10 relative gradient error (tolerance: -5)",
            "log10 relative error",
            &labels,
            &[
                (
                    "Hadamard vs autograd",
                    self.cases.iter().map(|c| lg(c.vs_autograd[0])).collect(),
                ),
                (
                    "expanded vs autograd",
                    self.cases.iter().map(|c| lg(c.vs_autograd[2])).collect(),
                ),
                ("Hadamard vs FD", self.cases.iter().map(|c| lg(c.vs_fd[0])).collect()),
            ],
        )?;
        Ok(vec![Plot {
            file,
            caption: "log10 of the relative error of hand-written backprop against candle autograd (rounding level, \
                      about -16) and against central finite differences (about -9 to -11); the tolerance is 1e-5."
                .into(),
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_matches_autograd_and_finite_differences() {
        let data = TheoryData::load(&TheoryConfig::embedded()).unwrap();
        let r = run(&data, &TheoryConfig::embedded()).unwrap();
        assert_eq!(r.cases.len(), 13);
        for c in &r.cases {
            assert!(
                c.worst_vs_fd() <= 1e-5,
                "{}: {:?} {}",
                c.name,
                c.vs_fd,
                c.autograd_vs_fd
            );
            assert!(c.worst_vs_autograd() <= 1e-10, "{}: {:?}", c.name, c.vs_autograd);
            assert!(
                c.grad_norm > 1e-6,
                "{}: gradient vanished, the check would be vacuous",
                c.name
            );
        }
        for d in &r.output_deltas {
            if d.expected_equal {
                assert!(d.max_abs_diff < 1e-12, "{:?}", d);
            } else {
                assert!(d.max_abs_diff > 1e-3, "{:?}", d);
            }
        }
        assert!(r.verdict().holds);
    }

    #[test]
    fn a_wrong_backward_pass_is_caught() {
        // Using the shortcut delta^L = a - y for sigmoid + MSE (it belongs to sigmoid + BCE)
        // gives the BCE gradient, which the finite-difference check must reject.
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let net = Net::random(
            &[4, 3, 2],
            Activation::Sigmoid,
            Activation::Sigmoid,
            true,
            1.5,
            &mut rng,
        )
        .unwrap();
        let xs: Vec<f64> = (0..8).map(|_| gaussian(&mut rng)).collect();
        let ys = vec![1.0, 0.0, 0.0, 1.0];
        let fd = net.finite_differences(&xs, &ys, Cost::Mse, 1e-6);
        let good = net.backprop(&xs, &ys, Cost::Mse, Form::Hadamard).flatten(true);
        assert!(rel_error(&good, &fd) < 1e-8);
        let shortcut = net.backprop(&xs, &ys, Cost::Bce, Form::Hadamard).flatten(true);
        assert!(rel_error(&shortcut, &fd) > 0.1, "{}", rel_error(&shortcut, &fd));
    }

    #[test]
    fn softmax_jacobian_is_used_for_bp1() {
        let z = [0.3, -1.0, 2.0];
        let j = Activation::Softmax.jacobian(&z);
        let s = softmax(&z);
        assert!((j.get(0, 0) - s[0] * (1.0 - s[0])).abs() < 1e-15);
        assert!((j.get(0, 2) + s[0] * s[2]).abs() < 1e-15);
        assert!(Activation::Softmax.derivative(&z).is_none());
    }
}
