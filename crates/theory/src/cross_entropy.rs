//! Topic 4: facts about the cross-entropy, each checked numerically.
//!
//! 1. **The swapped formula.** `-[a ln y + (1-a) ln(1-y)]` (prediction `a`, label `y`)
//!    takes the log of the *label*. Labels are exactly 0 or 1, so one of `ln y`,
//!    `ln(1-y)` is `ln 0 = -inf`: the value is `+inf` (or `NaN = 0·(-inf)` when `a` is
//!    also exactly 0 or 1). The right formula logs the prediction, which a sigmoid keeps
//!    in `(0, 1)`. The library's answer (documented in `digitlab_losses::binary`):
//!    `bce_strict` refuses such input with `LossError::LogOfZero`, `bce` clamps the
//!    probabilities to `[1e-7, 1-1e-7]` (finite, ≈ `16.12·a`, meaningless), and
//!    `bce_with_logits` never takes a log of 0.
//! 2. **BCE = Bernoulli negative log-likelihood**: with `P(y | x) = a^y (1-a)^{1-y}`,
//!    `-ln P = -[y ln a + (1-y) ln(1-a)]`, checked on the real 3-vs-6 data.
//! 3. **Multi-class CE = categorical negative log-likelihood**: `-ln softmax(z)_y`.
//! 4. **CE is minimised at `σ(z) = y`**: `∂/∂z BCE(σ(z), y) = σ(z) - y` vanishes at
//!    `z* = ln(y/(1-y))` and the second derivative `σ(1-σ) > 0` makes it a minimum; for
//!    a hard label the minimum is only approached as `z → ±∞`.
//! 5. **`H(p, q) = H(p) + KL(p ‖ q)`** for random distributions, including zeros in `p`.
use crate::data::{TheoryConfig, TheoryData};
use crate::error::Result;
use crate::linalg::gaussian;
use crate::logistic::{sigmoid, PointLoss};
use crate::result::{num, plot_path, Plot, Table, TopicResult, Verdict};
use crate::Topic;
use candle_core::{Device, Tensor, Var};
use digitlab_losses::{
    bce, bce_strict, bce_with_logits, cross_entropy_probs, entropy, kl_div, log_softmax, nll, one_hot,
    softmax_cross_entropy, softmax_cross_entropy_soft, LossError, Reduction, BCE_EPS,
};
use digitlab_report::plots::{line_chart, Series};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;

/// One row of the swapped-formula table.
#[derive(Debug, Clone)]
pub struct SwappedRow {
    /// Prediction `a`.
    pub a: f64,
    /// Label `y`.
    pub y: f64,
    /// `-[y ln a + (1-y) ln(1-a)]`, evaluated literally in f64.
    pub correct: f64,
    /// `-[a ln y + (1-a) ln(1-y)]`, evaluated literally in f64.
    pub swapped: f64,
    /// `digitlab_losses::bce(probs = y, targets = a)`: the swapped call, clamped.
    pub library_clamped: f64,
}

/// What the library does with the swapped call.
#[derive(Debug, Clone)]
pub struct LibraryBehaviour {
    /// The error message of `bce_strict(labels, predictions)`, if it refused.
    pub strict_error: Option<String>,
    /// How many elements `bce_strict` reported.
    pub strict_count: usize,
    /// `bce(labels, predictions)` (mean): finite but meaningless.
    pub clamped_mean: f64,
    /// `bce(predictions, labels)` (mean): the right call.
    pub correct_mean: f64,
    /// `bce_with_logits` at logits `±1000` (mean), finite.
    pub logits_extreme: f64,
}

/// A point where the gradient of the CE must vanish.
#[derive(Debug, Clone)]
pub struct MinimumRow {
    pub y: f64,
    /// `ln(y / (1-y))` (infinite for hard labels).
    pub z_star: f64,
    /// Autograd gradient of `bce_with_logits` at `z*` (at `z = ±20` for hard labels).
    pub grad_at_z_star: f64,
    /// Grid argmin of the library loss over `z ∈ [-12, 12]`, as a probability `σ(z)`.
    pub argmin_prob: f64,
    pub grad_left: f64,
    pub grad_right: f64,
    /// `σ(z*)(1-σ(z*))`.
    pub second_derivative: f64,
}

/// Everything topic 4 measured.
#[derive(Debug, Clone)]
pub struct CrossEntropyResult {
    pub swapped: Vec<SwappedRow>,
    pub library: LibraryBehaviour,
    /// Samples, `max |BCE_library - Bernoulli NLL|` per sample and for the mean.
    pub bernoulli_samples: usize,
    pub bernoulli_max_diff: f64,
    pub bernoulli_mean_diff: f64,
    pub bernoulli_mean: f64,
    /// Samples, max differences of `softmax_cross_entropy`, `nll(log_softmax)` and the
    /// soft-target form against `-ln softmax(z)_y` computed by hand.
    pub categorical_samples: usize,
    pub categorical_max_diff: f64,
    pub minimum: Vec<MinimumRow>,
    /// Pairs, `max |H(p,q) - H(p) - KL(p‖q)|`, smallest KL, `max |KL(p‖p)|`.
    pub kl_pairs: usize,
    pub kl_max_diff: f64,
    pub kl_min: f64,
    pub kl_self_max: f64,
    pub data_name: String,
}

/// Runs topic 4.
pub fn run(data: &TheoryData, cfg: &TheoryConfig) -> Result<CrossEntropyResult> {
    let dev = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed.wrapping_add(4));

    // 1. Swapped formula.
    let mut swapped = Vec::new();
    for &(a, y) in &[
        (0.1, 0.0),
        (0.9, 0.0),
        (0.1, 1.0),
        (0.9, 1.0),
        (0.5, 1.0),
        (1.0, 1.0),
        (0.0, 0.0),
    ] {
        let correct = -(y * f64::ln(a) + (1.0 - y) * f64::ln(1.0 - a));
        let sw = -(a * f64::ln(y) + (1.0 - a) * f64::ln(1.0 - y));
        let lib = bce(&Tensor::new(&[y], &dev)?, &Tensor::new(&[a], &dev)?, Reduction::Mean)?.to_scalar::<f64>()?;
        swapped.push(SwappedRow {
            a,
            y,
            correct,
            swapped: sw,
            library_clamped: lib,
        });
    }
    let preds = Tensor::new(&[0.1f64, 0.9, 0.1, 0.9, 0.5], &dev)?;
    let labels = Tensor::new(&[0.0f64, 0.0, 1.0, 1.0, 1.0], &dev)?;
    let (strict_error, strict_count) = match bce_strict(&labels, &preds, Reduction::Mean) {
        Err(e @ LossError::LogOfZero { count, .. }) => (Some(e.to_string()), count),
        Err(e) => (Some(e.to_string()), 0),
        Ok(_) => (None, 0),
    };
    let library = LibraryBehaviour {
        strict_error,
        strict_count,
        clamped_mean: bce(&labels, &preds, Reduction::Mean)?.to_scalar::<f64>()?,
        correct_mean: bce(&preds, &labels, Reduction::Mean)?.to_scalar::<f64>()?,
        logits_extreme: bce_with_logits(
            &Tensor::new(&[1000.0f64, -1000.0], &dev)?,
            &Tensor::new(&[0.0f64, 1.0], &dev)?,
            Reduction::Mean,
        )?
        .to_scalar::<f64>()?,
    };

    // 2. BCE = Bernoulli NLL on the real data, at a model fitted by a few GD steps.
    let p = &data.problem;
    let mut theta = vec![0.0; p.params()];
    let lr = 4.0 / p.gram_max_eigenvalue();
    for _ in 0..100 {
        let (_, g) = p.loss_grad(PointLoss::Bce, &theta);
        theta.iter_mut().zip(&g).for_each(|(t, g)| *t -= lr * g);
    }
    let z = p.logits(&theta);
    let probs: Vec<f64> = z.iter().map(|&v| sigmoid(v)).collect();
    let nll_manual: Vec<f64> = probs
        .iter()
        .zip(&p.y)
        .map(|(&a, &y)| -(a.powf(y) * (1.0 - a).powf(1.0 - y)).ln())
        .collect();
    let pt = Tensor::new(probs.as_slice(), &dev)?;
    let yt = Tensor::new(p.y.as_slice(), &dev)?;
    let lib: Vec<f64> = bce(&pt, &yt, Reduction::None)?.to_vec1()?;
    let lib_logits: Vec<f64> = bce_with_logits(&Tensor::new(z.as_slice(), &dev)?, &yt, Reduction::None)?.to_vec1()?;
    let bernoulli_max_diff = lib
        .iter()
        .zip(&lib_logits)
        .zip(&nll_manual)
        .map(|((a, b), c)| (a - c).abs().max((b - c).abs()))
        .fold(0.0, f64::max);
    let bernoulli_mean = nll_manual.iter().sum::<f64>() / nll_manual.len() as f64;
    let bernoulli_mean_diff = (bce(&pt, &yt, Reduction::Mean)?.to_scalar::<f64>()? - bernoulli_mean).abs();

    // 3. Categorical NLL on the 10-class labels with random logits.
    let (_, labels10, _) = data.multiclass_rows(256);
    let n = labels10.len();
    let logits: Vec<f64> = (0..n * 10).map(|_| 3.0 * gaussian(&mut rng)).collect();
    let manual: Vec<f64> = (0..n)
        .map(|i| {
            let row = &logits[i * 10..(i + 1) * 10];
            let s: f64 = row.iter().map(|v| v.exp()).sum();
            -(row[labels10[i]].exp() / s).ln()
        })
        .collect();
    let lt = Tensor::from_vec(logits.clone(), (n, 10), &dev)?;
    let lab = Tensor::new(labels10.iter().map(|&l| l as u32).collect::<Vec<_>>().as_slice(), &dev)?;
    let a: Vec<f64> = softmax_cross_entropy(&lt, &lab, Reduction::None)?.to_vec1()?;
    let b: Vec<f64> = nll(&log_softmax(&lt, 1)?, &lab, Reduction::None)?.to_vec1()?;
    let c: Vec<f64> =
        softmax_cross_entropy_soft(&lt, &one_hot(&lab, 10, candle_core::DType::F64)?, Reduction::None)?.to_vec1()?;
    let categorical_max_diff = (0..n)
        .map(|i| {
            (a[i] - manual[i])
                .abs()
                .max((b[i] - manual[i]).abs())
                .max((c[i] - manual[i]).abs())
        })
        .fold(0.0, f64::max);

    // 4. Minimum at σ(z) = y.
    let mut minimum = Vec::new();
    for &y in &[0.1f64, 0.25, 0.5, 0.8, 0.95, 0.0, 1.0] {
        let hard = y == 0.0 || y == 1.0;
        let z_star = if hard {
            if y == 1.0 {
                f64::INFINITY
            } else {
                f64::NEG_INFINITY
            }
        } else {
            (y / (1.0 - y)).ln()
        };
        let grad = |zv: f64| -> Result<f64> {
            let v = Var::new(&[zv], &dev)?;
            let l = bce_with_logits(v.as_tensor(), &Tensor::new(&[y], &dev)?, Reduction::Mean)?;
            Ok(l.backward()?.get(v.as_tensor()).expect("grad").to_vec1::<f64>()?[0])
        };
        let z_eval = if hard { 20.0 * z_star.signum() } else { z_star };
        let grid: Vec<f64> = (0..=24_000).map(|k| -12.0 + k as f64 * 1e-3).collect();
        let gt = Tensor::new(grid.as_slice(), &dev)?;
        let losses: Vec<f64> = bce_with_logits(
            &gt,
            &Tensor::new(vec![y; grid.len()].as_slice(), &dev)?,
            Reduction::None,
        )?
        .to_vec1()?;
        let k = losses
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(b.1))
            .map(|(k, _)| k)
            .expect("grid");
        let s = sigmoid(z_eval);
        minimum.push(MinimumRow {
            y,
            z_star,
            grad_at_z_star: grad(z_eval)?,
            argmin_prob: sigmoid(grid[k]),
            grad_left: grad(z_eval - 0.5)?,
            grad_right: grad(z_eval + 0.5)?,
            second_derivative: s * (1.0 - s),
        });
    }

    // 5. H(p, q) = H(p) + KL(p ‖ q).
    let pairs = 500;
    let k = 10;
    let mut pv = Vec::with_capacity(pairs * k);
    let mut qv = Vec::with_capacity(pairs * k);
    for _ in 0..pairs {
        let mut pr: Vec<f64> = (0..k)
            .map(|_| {
                if rng.random::<f64>() < 0.3 {
                    0.0
                } else {
                    gaussian(&mut rng).exp()
                }
            })
            .collect();
        if pr.iter().all(|&v| v == 0.0) {
            pr[0] = 1.0;
        }
        let sp: f64 = pr.iter().sum();
        pv.extend(pr.iter().map(|v| v / sp));
        let qr: Vec<f64> = (0..k).map(|_| (2.0 * gaussian(&mut rng)).exp()).collect();
        let sq: f64 = qr.iter().sum();
        qv.extend(qr.iter().map(|v| v / sq));
    }
    let pt = Tensor::from_vec(pv, (pairs, k), &dev)?;
    let qt = Tensor::from_vec(qv, (pairs, k), &dev)?;
    let h_pq: Vec<f64> = cross_entropy_probs(&pt, &qt)?.to_vec1()?;
    let h_p: Vec<f64> = entropy(&pt)?.to_vec1()?;
    let kl: Vec<f64> = kl_div(&pt, &qt.log()?, Reduction::None)?.to_vec1()?;
    let kl_self: Vec<f64> = kl_div(&pt, &pt.log()?, Reduction::None)?.to_vec1()?;
    let kl_max_diff = (0..pairs).map(|i| (h_pq[i] - h_p[i] - kl[i]).abs()).fold(0.0, f64::max);

    Ok(CrossEntropyResult {
        swapped,
        library,
        bernoulli_samples: p.n,
        bernoulli_max_diff,
        bernoulli_mean_diff,
        bernoulli_mean,
        categorical_samples: n,
        categorical_max_diff,
        minimum,
        kl_pairs: pairs,
        kl_max_diff,
        kl_min: kl.iter().copied().fold(f64::INFINITY, f64::min),
        kl_self_max: kl_self.iter().map(|v| v.abs()).fold(0.0, f64::max),
        data_name: p.name.clone(),
    })
}

impl CrossEntropyResult {
    fn checks(&self) -> Vec<(bool, &'static str)> {
        let swapped_bad = self.swapped.iter().all(|r| !r.swapped.is_finite())
            && self.swapped.iter().any(|r| r.swapped.is_nan())
            && self
                .swapped
                .iter()
                .filter(|r| r.a > 0.0 && r.a < 1.0)
                .all(|r| r.correct.is_finite());
        let soft_ok = self.minimum.iter().filter(|m| m.z_star.is_finite()).all(|m| {
            m.grad_at_z_star.abs() < 1e-12
                && (m.argmin_prob - m.y).abs() < 1e-3
                && m.grad_left < 0.0
                && m.grad_right > 0.0
        });
        let hard_ok = self
            .minimum
            .iter()
            .filter(|m| !m.z_star.is_finite())
            .all(|m| m.grad_at_z_star != 0.0);
        vec![
            (
                swapped_bad,
                "swapped formula is inf/NaN at hard labels, the right one finite",
            ),
            (
                self.library.strict_error.is_some() && self.library.clamped_mean.is_finite(),
                "library refuses (strict) or clamps",
            ),
            (self.bernoulli_max_diff < 1e-12, "BCE = Bernoulli NLL"),
            (self.categorical_max_diff < 1e-12, "CE = categorical NLL"),
            (soft_ok && hard_ok, "CE minimised at sigma(z) = y"),
            (
                self.kl_max_diff < 1e-12 && self.kl_min >= -1e-15 && self.kl_self_max < 1e-15,
                "H(p,q) = H(p) + KL",
            ),
        ]
    }
}

impl TopicResult for CrossEntropyResult {
    fn verdict(&self) -> Verdict {
        let checks = self.checks();
        let mut evidence = vec![
            format!(
                "Swapped formula at hard labels: {} (never finite); the right formula gives {} for the same rows. \
                 bce_strict(labels, predictions) refuses: \"{}\"; bce clamps probabilities to [{}, 1-{}] and returns a \
                 finite, meaningless {} (the right call gives {}); bce_with_logits at logits ±1000 gives {}.",
                self.swapped.iter().map(|r| num(r.swapped)).collect::<Vec<_>>().join(", "),
                self.swapped.iter().map(|r| num(r.correct)).collect::<Vec<_>>().join(", "),
                self.library.strict_error.clone().unwrap_or_else(|| "(accepted!)".into()),
                num(BCE_EPS),
                num(BCE_EPS),
                num(self.library.clamped_mean),
                num(self.library.correct_mean),
                num(self.library.logits_extreme)
            ),
            format!(
                "BCE = Bernoulli NLL -ln(a^y (1-a)^(1-y)) on {} ({} images, fitted logistic model): max per-image \
                 difference {} (mean NLL {}).",
                self.data_name,
                self.bernoulli_samples,
                num(self.bernoulli_max_diff),
                num(self.bernoulli_mean)
            ),
            format!(
                "Multi-class CE = categorical NLL -ln softmax(z)_y: softmax_cross_entropy, nll(log_softmax) and the \
                 one-hot soft form agree with the hand computation to {} on {} labelled images with random logits.",
                num(self.categorical_max_diff),
                self.categorical_samples
            ),
            format!(
                "Minimum at sigma(z) = y: at z* = ln(y/(1-y)) the autograd gradient is at most {} in magnitude, the grid \
                 argmin is within {} of y, and the gradient changes sign from - to + across z*; for y in {{0, 1}} the \
                 gradient stays non-zero ({}) at z = ±20: the minimum is only approached at infinity.",
                num(self.minimum.iter().filter(|m| m.z_star.is_finite()).map(|m| m.grad_at_z_star.abs()).fold(0.0, f64::max)),
                num(self.minimum.iter().filter(|m| m.z_star.is_finite()).map(|m| (m.argmin_prob - m.y).abs()).fold(0.0, f64::max)),
                self.minimum.iter().filter(|m| !m.z_star.is_finite()).map(|m| num(m.grad_at_z_star)).collect::<Vec<_>>().join(", ")
            ),
            format!(
                "H(p,q) = H(p) + KL(p||q) on {} random pairs (30% zeros in p): max |difference| {}; min KL {} (>= 0); \
                 max |KL(p||p)| {}.",
                self.kl_pairs,
                num(self.kl_max_diff),
                num(self.kl_min),
                num(self.kl_self_max)
            ),
        ];
        for (ok, what) in &checks {
            if !ok {
                evidence.push(format!("FAILED check: {what}"));
            }
        }
        Verdict {
            holds: checks.iter().all(|c| c.0),
            answer: "The log goes on the prediction: the swapped formula is +inf or NaN at hard labels (the library \
                     refuses it in bce_strict and clamps it in bce). BCE is the Bernoulli NLL and multi-class CE the \
                     categorical NLL (equal to 1e-12); CE has zero gradient exactly at sigma(z) = y; and \
                     H(p, q) = H(p) + KL(p || q)."
                .into(),
            evidence,
        }
    }

    fn tables(&self) -> Vec<Table> {
        let mut s = Table::new(
            "The right and the swapped formula, evaluated literally in f64 (a = prediction, y = label)",
            &[
                "a",
                "y",
                "-[y ln a + (1-y) ln(1-a)]",
                "-[a ln y + (1-a) ln(1-y)]",
                "bce(probs=y, targets=a), clamped",
            ],
        );
        for r in &self.swapped {
            s.push(vec![
                num(r.a),
                num(r.y),
                num(r.correct),
                num(r.swapped),
                num(r.library_clamped),
            ]);
        }
        let mut m = Table::new(
            "Where BCE(sigma(z), y) is minimal (gradients by candle autograd of bce_with_logits)",
            &[
                "y",
                "z* = ln(y/(1-y))",
                "dL/dz at z*",
                "sigma(grid argmin)",
                "dL/dz at z*-0.5",
                "dL/dz at z*+0.5",
                "d2L/dz2 at z*",
            ],
        );
        for r in &self.minimum {
            let hard = !r.z_star.is_finite();
            m.push(vec![
                num(r.y),
                num(r.z_star),
                format!("{}{}", num(r.grad_at_z_star), if hard { " (at z = ±20)" } else { "" }),
                num(r.argmin_prob),
                num(r.grad_left),
                num(r.grad_right),
                num(r.second_derivative),
            ]);
        }
        let mut e = Table::new("Identities", &["identity", "cases", "max |difference|"]);
        e.push(vec![
            "BCE = Bernoulli NLL".into(),
            format!("{} images ({})", self.bernoulli_samples, self.data_name),
            num(self.bernoulli_max_diff),
        ]);
        e.push(vec![
            "mean BCE = mean NLL".into(),
            "1".into(),
            num(self.bernoulli_mean_diff),
        ]);
        e.push(vec![
            "softmax CE = categorical NLL".into(),
            format!("{} images", self.categorical_samples),
            num(self.categorical_max_diff),
        ]);
        e.push(vec![
            "H(p,q) = H(p) + KL(p||q)".into(),
            format!("{} pairs", self.kl_pairs),
            num(self.kl_max_diff),
        ]);
        e.push(vec![
            "KL(p||p) = 0".into(),
            format!("{} distributions", self.kl_pairs),
            num(self.kl_self_max),
        ]);
        vec![s, m, e]
    }

    fn write_plots(&self, dir: &Path) -> Result<Vec<Plot>> {
        let ys = [0.1, 0.3, 0.5, 0.8];
        let names: Vec<String> = ys.iter().map(|y| format!("y = {y}")).collect();
        let curves: Vec<Vec<(f64, f64)>> = ys
            .iter()
            .map(|&y| {
                let h = -(y * f64::ln(y) + (1.0 - y) * f64::ln(1.0 - y));
                (1..400)
                    .map(|k| {
                        let a = k as f64 / 400.0;
                        (a, -(y * a.ln() + (1.0 - y) * (1.0 - a).ln()) - h)
                    })
                    .collect()
            })
            .collect();
        let series: Vec<Series> = curves
            .iter()
            .zip(&names)
            .map(|(c, n)| Series { label: n, points: c })
            .collect();
        let (path, file) = plot_path(dir, Topic::CrossEntropy, "bce_vs_prediction");
        line_chart(
            &path,
            "BCE(a; y) - H(y) = KL(Bern(y) || Bern(a))",
            "prediction a",
            "BCE - H(y)",
            &series,
        )?;
        let mut plots = vec![Plot {
            file,
            caption:
                "BCE as a function of the prediction a for soft labels y, minus the constant H(y): what is left is \
                      KL(y || a) >= 0, zero exactly at a = y."
                    .into(),
        }];
        let grads: Vec<Vec<(f64, f64)>> = ys
            .iter()
            .map(|&y| {
                (0..=200)
                    .map(|k| -6.0 + 0.06 * k as f64)
                    .map(|z| (z, sigmoid(z) - y))
                    .collect()
            })
            .collect();
        let series: Vec<Series> = grads
            .iter()
            .zip(&names)
            .map(|(c, n)| Series { label: n, points: c })
            .collect();
        let (path, file) = plot_path(dir, Topic::CrossEntropy, "gradient_vs_logit");
        line_chart(&path, "dBCE/dz = sigma(z) - y", "logit z", "gradient", &series)?;
        plots.push(Plot {
            file,
            caption: "The gradient sigma(z) - y crosses zero at z* = ln(y/(1-y)), i.e. sigma(z*) = y.".into(),
        });
        Ok(plots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_entropy_facts_hold() {
        let data = TheoryData::load(&TheoryConfig::embedded()).unwrap();
        let r = run(&data, &TheoryConfig::embedded()).unwrap();
        // The swapped formula is never finite at hard labels, and NaN when a is 0 or 1 too.
        assert!(r.swapped.iter().all(|s| !s.swapped.is_finite()));
        assert!(r.swapped.iter().any(|s| s.swapped.is_nan()));
        assert!(r.swapped.iter().any(|s| s.swapped == f64::INFINITY));
        assert_eq!(r.library.strict_count, 5);
        assert!(r.library.strict_error.as_deref().unwrap().contains("swapped"));
        assert!((r.library.clamped_mean - (-BCE_EPS.ln()) * (0.1 + 0.9 + 0.9 + 0.1 + 0.5) / 5.0).abs() < 1e-6);
        assert!(r.library.logits_extreme.is_finite());
        assert!(r.bernoulli_max_diff < 1e-12 && r.categorical_max_diff < 1e-12);
        for m in &r.minimum {
            if m.z_star.is_finite() {
                assert!(m.grad_at_z_star.abs() < 1e-12, "{m:?}");
                assert!((m.argmin_prob - m.y).abs() < 1e-3, "{m:?}");
                assert!(m.grad_left < 0.0 && m.grad_right > 0.0);
            } else {
                assert!(m.grad_at_z_star.abs() > 0.0);
            }
        }
        assert!(r.kl_max_diff < 1e-12 && r.kl_min >= 0.0);
        assert!(r.verdict().holds, "{:#?}", r.verdict());
    }
}
