//! Topic 2: is a deep *linear* network convex in its parameters under MSE or CE?
//!
//! A network with linear activations and one hidden layer computes
//! `f(x) = W2 W1 x`, a linear function of `x`, and both losses are convex in the
//! network's *output* (and hence in the end-to-end map `v = (W2 W1)ᵀ`). But the
//! training problem is posed in the *parameters* `(W1, W2)`, where the output is a
//! product of weights. At the origin every gradient vanishes (`∂/∂W1 ∝ W2 = 0`,
//! `∂/∂W2 ∝ W1 x = 0`) and the Hessian has only the cross blocks,
//! `[[0, C], [Cᵀ, 0]]`, whose eigenvalues are `±` the singular values of `C` (for a
//! 1-1-1 net: `±|c|` with `c = (1/N) Σ ℓ'(0, y_i) x_i`). So the origin is a saddle, for
//! MSE and for CE alike. A second, loss-free witness: `θ` and `-θ` compute the same
//! function (`(-W2)(-W1) = W2 W1`), so `L(θ) = L(-θ)`, while their midpoint is the
//! origin where the network outputs 0: whenever `L(θ) < L(0)`, Jensen's inequality
//! fails.
//!
//! Verdict: **neither** loss makes the problem convex; convexity in the output does not
//! survive a product parameterisation.
//!
//! Measured for a 1-1-1 net on a 1-D toy, a 2-2-1 net on 2-D blobs and a `D`-2-1 net on
//! the real 3-vs-6 images (no biases, so the origin is a critical point): the gradient
//! norm and Hessian eigenvalues at the origin (Hessian by central differences of the
//! backprop gradient, diagonalised by Jacobi; Lanczos on finite-difference
//! Hessian-vector products above 200 parameters), the smallest eigenvalue at random
//! points, the Jensen gap of the pair `(θ*, -θ*)`, and the eigenvalues of the Hessian
//! in the end-to-end map (which are `≥ 0`). MSE is `½(f - y)²` (targets 0/1); CE is
//! sigmoid + BCE on the network output as a logit.
use crate::backprop::{Activation, Cost, Form, Net};
use crate::data::{BinaryProblem, TheoryConfig, TheoryData};
use crate::error::Result;
use crate::linalg::{dot, lanczos_extremes, norm, sym_eigen, Matrix};
use crate::logistic::sigmoid;
use crate::result::{num, plot_path, Plot, Table, TopicResult, Verdict};
use crate::Topic;
use digitlab_report::plots::{heatmap, line_chart, Series};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::Path;

/// The loss on top of the linear network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NetLoss {
    /// `½ (f(x) - y)²` on the linear output.
    Mse,
    /// Binary cross-entropy of `σ(f(x))`.
    Ce,
}

impl NetLoss {
    pub const BOTH: [NetLoss; 2] = [NetLoss::Mse, NetLoss::Ce];
    pub fn name(self) -> &'static str {
        match self {
            NetLoss::Mse => "MSE",
            NetLoss::Ce => "CE",
        }
    }
    fn output(self) -> Activation {
        match self {
            NetLoss::Mse => Activation::Linear,
            NetLoss::Ce => Activation::Sigmoid,
        }
    }
    fn cost(self) -> Cost {
        match self {
            NetLoss::Mse => Cost::Mse,
            NetLoss::Ce => Cost::Bce,
        }
    }
    /// `∂ℓ/∂f` and `∂²ℓ/∂f²` at output `f` (for the end-to-end map).
    fn derivatives(self, f: f64, y: f64) -> (f64, f64) {
        match self {
            NetLoss::Mse => (f - y, 1.0),
            NetLoss::Ce => {
                let s = sigmoid(f);
                (s - y, s * (1.0 - s))
            }
        }
    }
}

/// A linear network with a loss on a binary problem.
#[derive(Debug, Clone)]
pub struct LinearNetProblem {
    pub name: String,
    pub data: BinaryProblem,
    pub hidden: usize,
    pub loss: NetLoss,
    /// The network (weights are replaced by every evaluation).
    pub net: Net,
}

impl LinearNetProblem {
    pub fn new(name: &str, data: BinaryProblem, hidden: usize, loss: NetLoss) -> Result<Self> {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let net = Net::random(
            &[data.d, hidden, 1],
            Activation::Linear,
            loss.output(),
            false,
            1.0,
            &mut rng,
        )?;
        Ok(Self {
            name: name.to_string(),
            data,
            hidden,
            loss,
            net,
        })
    }

    pub fn params(&self) -> usize {
        self.net.num_params()
    }

    pub fn loss_at(&self, theta: &[f64]) -> f64 {
        self.net
            .with_params(theta)
            .cost(&self.data.x, &self.data.y, self.loss.cost())
    }

    pub fn grad_at(&self, theta: &[f64]) -> Vec<f64> {
        self.net
            .with_params(theta)
            .backprop(&self.data.x, &self.data.y, self.loss.cost(), Form::Hadamard)
            .flatten(false)
    }

    /// Hessian by central differences of the backprop gradient (symmetrised).
    pub fn hessian_fd(&self, theta: &[f64]) -> Matrix {
        let p = theta.len();
        let eps = 1e-5;
        let mut h = Matrix::zeros(p, p);
        let mut t = theta.to_vec();
        for j in 0..p {
            t[j] = theta[j] + eps;
            let gp = self.grad_at(&t);
            t[j] = theta[j] - eps;
            let gm = self.grad_at(&t);
            t[j] = theta[j];
            for i in 0..p {
                h.set(i, j, (gp[i] - gm[i]) / (2.0 * eps));
            }
        }
        h.symmetrized()
    }

    /// Hessian-vector product by central differences of the gradient.
    pub fn hvp_fd(&self, theta: &[f64], v: &[f64]) -> Vec<f64> {
        let eps = 1e-5;
        let tp: Vec<f64> = theta.iter().zip(v).map(|(a, b)| a + eps * b).collect();
        let tm: Vec<f64> = theta.iter().zip(v).map(|(a, b)| a - eps * b).collect();
        self.grad_at(&tp)
            .iter()
            .zip(self.grad_at(&tm))
            .map(|(a, b)| (a - b) / (2.0 * eps))
            .collect()
    }

    /// `(λmin, λmax)` of the parameter Hessian (Jacobi up to 200 parameters, else Lanczos).
    pub fn extreme_eigenvalues(&self, theta: &[f64], seed: u64) -> Result<(f64, f64)> {
        if theta.len() <= 200 {
            let e = sym_eigen(&self.hessian_fd(theta))?;
            Ok((e.min(), e.max()))
        } else {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let r = lanczos_extremes(theta.len(), 30, &mut rng, |v| self.hvp_fd(theta, v))?;
            Ok((r.min_value, r.max_value))
        }
    }

    /// The end-to-end linear map `v = (W2 W1)ᵀ` of parameters `theta`.
    pub fn end_to_end(&self, theta: &[f64]) -> Vec<f64> {
        let net = self.net.with_params(theta);
        let w1 = &net.layers[0].w;
        let w2 = &net.layers[1].w;
        w2.matmul(w1).data
    }

    /// Smallest eigenvalue of the Hessian of the loss in the end-to-end map at `v`:
    /// `(1/N) Σ ℓ''(vᵀx_i) x_i x_iᵀ`, which is PSD because `ℓ'' ≥ 0`.
    pub fn end_to_end_min_eigenvalue(&self, v: &[f64], seed: u64) -> Result<f64> {
        let p = &self.data;
        let h: Vec<f64> = (0..p.n)
            .map(|i| self.loss.derivatives(dot(p.row(i), v), p.y[i]).1)
            .collect();
        let hv = |u: &[f64]| -> Vec<f64> {
            let mut out = vec![0.0; p.d];
            for (i, hi) in h.iter().enumerate() {
                let c = hi * dot(p.row(i), u) / p.n as f64;
                crate::linalg::axpy(c, p.row(i), &mut out);
            }
            out
        };
        if p.d <= 100 {
            let m = Matrix::from_fn(p.d, p.d, |a, b| {
                (0..p.n).map(|i| h[i] * p.row(i)[a] * p.row(i)[b]).sum::<f64>() / p.n as f64
            });
            Ok(sym_eigen(&m)?.min())
        } else {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            Ok(lanczos_extremes(p.d, 30, &mut rng, hv)?.min_value)
        }
    }

    /// A good point `θ*`: fit the end-to-end linear model `v*` by gradient descent
    /// (convex), then factor it as `W1 = [v*ᵀ/√‖v*‖; 0]`, `W2 = [√‖v*‖, 0, …]`, so that
    /// `W2 W1 = v*ᵀ` exactly.
    pub fn fitted_point(&self, iterations: usize) -> Vec<f64> {
        let p = &self.data;
        let gram = p.gram_max_eigenvalue();
        let lr = match self.loss {
            NetLoss::Mse => 1.0 / gram,
            NetLoss::Ce => 4.0 / gram,
        };
        let mut v = vec![0.0; p.d];
        for _ in 0..iterations {
            let mut g = vec![0.0; p.d];
            for i in 0..p.n {
                let (d1, _) = self.loss.derivatives(dot(p.row(i), &v), p.y[i]);
                crate::linalg::axpy(d1 / p.n as f64, p.row(i), &mut g);
            }
            v.iter_mut().zip(&g).for_each(|(a, b)| *a -= lr * b);
        }
        let s = norm(&v).sqrt().max(1e-12);
        let mut net = self.net.clone();
        let w1 = &mut net.layers[0].w;
        w1.data.iter_mut().for_each(|x| *x = 0.0);
        for (j, vj) in v.iter().enumerate() {
            w1.set(0, j, vj / s);
        }
        let w2 = &mut net.layers[1].w;
        w2.data.iter_mut().for_each(|x| *x = 0.0);
        w2.set(0, 0, s);
        net.params()
    }
}

/// Everything measured for one network and loss.
#[derive(Debug, Clone)]
pub struct LinearNetCase {
    pub name: String,
    pub loss: NetLoss,
    pub params: usize,
    pub grad_norm_at_origin: f64,
    pub min_eig_origin: f64,
    pub max_eig_origin: f64,
    /// For the 1-1-1 net: `±|c|` from the closed form.
    pub exact_origin: Option<f64>,
    pub random_points: usize,
    pub random_points_negative: usize,
    pub min_eig_random: f64,
    pub loss_origin: f64,
    pub loss_fitted: f64,
    pub loss_fitted_negated: f64,
    /// `L(0) - (L(θ*) + L(-θ*))/2`: positive = Jensen violated.
    pub jensen_gap: f64,
    /// Smallest eigenvalue of the Hessian in the end-to-end map, at 0 and at `v*`.
    pub end_to_end_min_origin: f64,
    pub end_to_end_min_fitted: f64,
    /// `L(t θ*)` for `t` in `[-1.5, 1.5]`.
    pub line: Vec<(f64, f64)>,
}

impl LinearNetCase {
    /// Evidence of non-convexity in the parameters and convexity in the end-to-end map.
    pub fn nonconvex(&self) -> bool {
        self.min_eig_origin < -1e-6 * self.max_eig_origin.abs().max(1e-12) && self.jensen_gap > 0.0
    }
    pub fn end_to_end_convex(&self) -> bool {
        self.end_to_end_min_origin > -1e-10 && self.end_to_end_min_fitted > -1e-10
    }
}

/// Everything topic 2 measured.
#[derive(Debug, Clone)]
pub struct DeepLinearResult {
    pub cases: Vec<LinearNetCase>,
    /// The 1-1-1 toy problems, kept for the contour plots.
    pub toy: BinaryProblem,
}

/// Runs one network and loss.
pub fn analyse(problem: &LinearNetProblem, random_points: usize, seed: u64) -> Result<LinearNetCase> {
    let p = problem.params();
    let origin = vec![0.0; p];
    let grad0 = norm(&problem.grad_at(&origin));
    let (min0, max0) = problem.extreme_eigenvalues(&origin, seed)?;
    let exact_origin = (problem.data.d == 1 && problem.hidden == 1).then(|| {
        let d = &problem.data;
        let c: f64 = (0..d.n)
            .map(|i| problem.loss.derivatives(0.0, d.y[i]).0 * d.x[i])
            .sum::<f64>()
            / d.n as f64;
        c.abs()
    });
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xd11);
    let (mut neg, mut min_r) = (0, f64::INFINITY);
    for k in 0..random_points {
        let net = Net::random(
            &[problem.data.d, problem.hidden, 1],
            Activation::Linear,
            problem.loss.output(),
            false,
            1.0,
            &mut rng,
        )?;
        let (lo, hi) = problem.extreme_eigenvalues(&net.params(), seed.wrapping_add(k as u64))?;
        if lo < -1e-6 * hi.abs().max(1e-12) {
            neg += 1;
        }
        min_r = min_r.min(lo);
    }
    let fitted = problem.fitted_point(300);
    let negated: Vec<f64> = fitted.iter().map(|v| -v).collect();
    let (l0, lf, ln) = (
        problem.loss_at(&origin),
        problem.loss_at(&fitted),
        problem.loss_at(&negated),
    );
    let v_star = problem.end_to_end(&fitted);
    let line = (0..=60)
        .map(|i| {
            let t = -1.5 + 3.0 * i as f64 / 60.0;
            let th: Vec<f64> = fitted.iter().map(|v| t * v).collect();
            (t, problem.loss_at(&th))
        })
        .collect();
    Ok(LinearNetCase {
        name: problem.name.clone(),
        loss: problem.loss,
        params: p,
        grad_norm_at_origin: grad0,
        min_eig_origin: min0,
        max_eig_origin: max0,
        exact_origin,
        random_points,
        random_points_negative: neg,
        min_eig_random: min_r,
        loss_origin: l0,
        loss_fitted: lf,
        loss_fitted_negated: ln,
        jensen_gap: l0 - 0.5 * (lf + ln),
        end_to_end_min_origin: problem.end_to_end_min_eigenvalue(&vec![0.0; problem.data.d], seed)?,
        end_to_end_min_fitted: problem.end_to_end_min_eigenvalue(&v_star, seed)?,
        line,
    })
}

/// Runs topic 2.
pub fn run(data: &TheoryData, cfg: &TheoryConfig) -> Result<DeepLinearResult> {
    let toy = BinaryProblem::toy_threshold();
    let blobs = BinaryProblem::toy_blobs(20, cfg.seed);
    let real_name = format!("{}-2-1 on {}", data.problem.d, data.problem.name);
    let big = data.problem.d > 100;
    let mut cases = Vec::new();
    for (k, (name, prob, hidden, random)) in [
        ("1-1-1 on the 1-D threshold toy".to_string(), toy.clone(), 1, 20),
        ("2-2-1 on 2-D blobs".to_string(), blobs, 2, 20),
        (real_name, data.problem.clone(), 2, if big { 3 } else { 8 }),
    ]
    .into_iter()
    .enumerate()
    {
        for loss in NetLoss::BOTH {
            let lp = LinearNetProblem::new(&name, prob.clone(), hidden, loss)?;
            cases.push(analyse(&lp, random, cfg.seed.wrapping_add(10 * k as u64))?);
        }
    }
    Ok(DeepLinearResult { cases, toy })
}

impl DeepLinearResult {
    pub fn case(&self, index: usize, loss: NetLoss) -> &LinearNetCase {
        self.cases.iter().filter(|c| c.loss == loss).nth(index).expect("case")
    }
}

impl TopicResult for DeepLinearResult {
    fn verdict(&self) -> Verdict {
        let holds = self
            .cases
            .iter()
            .all(|c| c.nonconvex() && c.end_to_end_convex() && c.grad_norm_at_origin < 1e-12);
        let mut evidence = Vec::new();
        for c in &self.cases {
            evidence.push(format!(
                "{} with {}: gradient at the origin {} (a critical point); Hessian eigenvalues there from {} to {}{}; \
                 {}/{} random points also have a negative eigenvalue; L(theta*) = L(-theta*) = {} < L(0) = {} although 0 \
                 is their midpoint (Jensen gap {}); in the end-to-end map the smallest Hessian eigenvalue is {} at 0 and \
                 {} at v* (convex).",
                c.name,
                c.loss.name(),
                num(c.grad_norm_at_origin),
                num(c.min_eig_origin),
                num(c.max_eig_origin),
                c.exact_origin.map(|e| format!(" (closed form ±{})", num(e))).unwrap_or_default(),
                c.random_points_negative,
                c.random_points,
                num(c.loss_fitted),
                num(c.loss_origin),
                num(c.jensen_gap),
                num(c.end_to_end_min_origin),
                num(c.end_to_end_min_fitted)
            ));
        }
        if !holds {
            evidence.push("FAILED check: a case showed no negative eigenvalue / no Jensen violation, or a non-PSD end-to-end Hessian".into());
        }
        Verdict {
            holds,
            answer:
                "Neither. With MSE and with CE the origin is a saddle (gradient 0, Hessian eigenvalues ±s) and \
                     theta, -theta have equal loss below the loss at their midpoint 0, so the problem is not convex in \
                     the weights, although both losses are convex in the network's output: the product W2·W1 breaks it."
                    .into(),
            evidence,
        }
    }

    fn tables(&self) -> Vec<Table> {
        let mut t = Table::new(
            "Linear networks (no biases): curvature in the parameters vs in the end-to-end map",
            &[
                "network",
                "loss",
                "params",
                "||grad|| at 0",
                "lambda_min at 0",
                "lambda_max at 0",
                "closed form ±|c|",
                "random points with lambda_min < 0",
                "L(0)",
                "L(theta*) = L(-theta*)",
                "Jensen gap L(0) - avg",
                "end-to-end lambda_min at 0 / v*",
            ],
        );
        for c in &self.cases {
            t.push(vec![
                c.name.clone(),
                c.loss.name().into(),
                c.params.to_string(),
                num(c.grad_norm_at_origin),
                num(c.min_eig_origin),
                num(c.max_eig_origin),
                c.exact_origin
                    .map(|e| format!("±{}", num(e)))
                    .unwrap_or_else(|| "-".into()),
                format!(
                    "{}/{} (min {})",
                    c.random_points_negative,
                    c.random_points,
                    num(c.min_eig_random)
                ),
                num(c.loss_origin),
                format!("{} = {}", num(c.loss_fitted), num(c.loss_fitted_negated)),
                num(c.jensen_gap),
                format!("{} / {}", num(c.end_to_end_min_origin), num(c.end_to_end_min_fitted)),
            ]);
        }
        vec![t]
    }

    fn write_plots(&self, dir: &Path) -> Result<Vec<Plot>> {
        let mut plots = Vec::new();
        for loss in NetLoss::BOTH {
            let lp = LinearNetProblem::new("1-1-1", self.toy.clone(), 1, loss)?;
            // MSE grows like (w1·w2)²: a smaller window keeps the saddle visible.
            let (n, r) = (101, if loss == NetLoss::Mse { 1.0 } else { 1.5 });
            let at = |i: usize| -r + 2.0 * r * (i as f64 + 0.5) / n as f64;
            let values: Vec<Vec<f64>> = (0..n)
                .map(|row| (0..n).map(|col| lp.loss_at(&[at(col), at(row)])).collect())
                .collect();
            let (path, file) = plot_path(
                dir,
                Topic::DeepLinear,
                &format!("111_{}_contour", loss.name().to_lowercase()),
            );
            heatmap(
                &path,
                &format!("1-1-1 linear net, {}: loss over (w1, w2)", loss.name()),
                "w1",
                "w2",
                (-r, r),
                (-r, r),
                &values,
            )?;
            plots.push(Plot {
                file,
                caption: format!(
                    "{} of f(x) = w2·w1·x on the threshold toy: a saddle at the origin and two mirror-image valleys \
                     along the hyperbola w1·w2 = const.",
                    loss.name()
                ),
            });
        }
        for loss in NetLoss::BOTH {
            let cases: Vec<&LinearNetCase> = self.cases.iter().filter(|c| c.loss == loss).collect();
            let series: Vec<Series> = cases
                .iter()
                .map(|c| Series {
                    label: c.name.as_str(),
                    points: &c.line,
                })
                .collect();
            let (path, file) = plot_path(dir, Topic::DeepLinear, &format!("line_{}", loss.name().to_lowercase()));
            line_chart(
                &path,
                &format!("{}: loss along the line t·theta*", loss.name()),
                "t",
                "loss",
                &series,
            )?;
            plots.push(Plot {
                file,
                caption: format!(
                    "{} along t·theta* for t in [-1.5, 1.5]: symmetric with two wells at t = ±1 and a bump at t = 0, \
                     impossible for a convex function.",
                    loss.name()
                ),
            });
        }
        Ok(plots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neither_mse_nor_ce_is_convex_in_the_weights() {
        let data = TheoryData::load(&TheoryConfig::embedded()).unwrap();
        let r = run(&data, &TheoryConfig::embedded()).unwrap();
        assert_eq!(r.cases.len(), 6);
        for c in &r.cases {
            assert!(c.grad_norm_at_origin < 1e-12, "{} {}", c.name, c.grad_norm_at_origin);
            assert!(
                c.min_eig_origin < 0.0 && c.max_eig_origin > 0.0,
                "{} {:?}",
                c.name,
                c.loss
            );
            assert!(c.jensen_gap > 0.0, "{} {:?}", c.name, c.loss);
            assert!((c.loss_fitted - c.loss_fitted_negated).abs() < 1e-12);
            assert!(c.end_to_end_convex(), "{} {:?}", c.name, c.loss);
            if let Some(e) = c.exact_origin {
                // The finite-difference Hessian at 0 has eigenvalues ±|c| exactly.
                assert!((c.min_eig_origin + e).abs() < 1e-6 && (c.max_eig_origin - e).abs() < 1e-6);
            }
        }
        assert!(r.verdict().holds);
    }
}
