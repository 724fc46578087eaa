//! Topic 1: cross-entropy vs squared error for logistic regression.
//!
//! Claim: with `p = σ(w·x + b)`, the binary cross-entropy is convex in `θ = (w, b)` and
//! the mean squared error is not.
//!
//! Why (see [`crate::logistic`]): `∇²L = (1/N) Σ ℓ''(z_i, y_i) x̃_i x̃_iᵀ`. For BCE
//! `ℓ'' = σ(1-σ) ≥ 0`, a non-negative combination of rank-one PSD matrices, so every
//! directional second derivative is `≥ 0` at every point. For MSE
//! `ℓ'' = 2σ(1-σ)[σ(1-σ) + (σ-y)(1-2σ)]`, negative for confidently wrong predictions
//! (`σ > 2/3` with `y = 0`, `σ < 1/3` with `y = 1`), so the Hessian can be indefinite.
//!
//! What is measured, on the 1-D toy problem ([`BinaryProblem::toy_bump`]) and on the
//! real 3-vs-6 data, with the *same* seeded points and directions for both losses:
//!
//! * **points**: random `θ` in random directions, scaled so that the logits over the
//!   data have root-mean-square 0.5, 1, 2, 4, 8 or 16 (curvature depends on the logit
//!   scale, so every scale is visited);
//! * **directional curvature** `dᵀ∇²L d` along random unit directions `d`, from the exact
//!   formula; a few are confirmed by central second differences of the loss itself;
//! * **smallest Hessian eigenvalue** at every point: Jacobi on the full Hessian when it
//!   has at most 100 rows, otherwise Lanczos from Hessian-vector products (its minimum is
//!   the exact curvature along a concrete unit vector, so a negative value *proves*
//!   non-convexity; that vector's curvature is confirmed by finite differences too);
//! * **midpoint convexity (Jensen)**: for random pairs, does
//!   `L((θa+θb)/2) > (L(θa) + L(θb))/2` ever happen? (Never for a convex function.)
//! * **training**: gradient descent from the same starts, each loss with its own safe
//!   step `1/(max|ℓ''| · λmax(X̃ᵀX̃/N))`; iterations to reach a target loss (the best
//!   value any start reached plus 5% of the gap to the loss of the zero model), and
//!   where the starts end (on the toy: clusters of converged end points, each checked
//!   to be a local minimum by its 2x2 Hessian).
use crate::data::{BinaryProblem, TheoryConfig, TheoryData};
use crate::error::Result;
use crate::linalg::{lanczos_extremes, norm, sym_eigen, unit_vector, Matrix};
use crate::logistic::PointLoss;
use crate::result::{num, pct, plot_path, Plot, Table, TopicResult, Verdict};
use crate::Topic;
use digitlab_report::plots::{bar_chart, heatmap, line_chart, Series};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::Path;

/// Root-mean-square logits the sampled points cycle through.
pub const LOGIT_SCALES: [f64; 6] = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0];

/// Sizes of the sampling; [`Budget::for_problem`] picks them from the problem size.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub points: usize,
    pub directions: usize,
    pub jensen_pairs: usize,
    pub lanczos_steps: usize,
    pub gd_iterations: usize,
    /// Use the full Hessian (Jacobi) up to this many parameters.
    pub max_dense: usize,
}

impl Budget {
    pub fn for_problem(p: &BinaryProblem) -> Self {
        let work = p.n * (p.d + 1);
        if p.d == 1 {
            Budget {
                points: 240,
                directions: 16,
                jensen_pairs: 4000,
                lanczos_steps: 2,
                gd_iterations: 20_000,
                max_dense: 100,
            }
        } else if work <= 50_000 {
            Budget {
                points: 60,
                directions: 64,
                jensen_pairs: 600,
                lanczos_steps: 40,
                gd_iterations: 1500,
                max_dense: 100,
            }
        } else {
            Budget {
                points: 24,
                directions: 24,
                jensen_pairs: 120,
                lanczos_steps: 30,
                gd_iterations: 600,
                max_dense: 100,
            }
        }
    }
}

/// A concrete point and unit direction with (exact and finite-difference) curvature.
#[derive(Debug, Clone)]
pub struct Witness {
    pub theta: Vec<f64>,
    pub direction: Vec<f64>,
    /// `dᵀ∇²L d` from the formula.
    pub curvature: f64,
    /// The same from central differences of the loss.
    pub fd_curvature: f64,
}

/// Curvature statistics of one loss on one problem.
#[derive(Debug, Clone)]
pub struct CurvatureStats {
    pub problem: String,
    pub loss: PointLoss,
    pub params: usize,
    pub points: usize,
    pub directions: usize,
    /// (point, direction) pairs with `dᵀ∇²L d < 0`.
    pub negative_pairs: usize,
    pub total_pairs: usize,
    /// Points where at least one sampled direction has negative curvature.
    pub points_with_negative_direction: usize,
    /// Points whose smallest Hessian eigenvalue is negative (beyond rounding).
    pub points_with_negative_eigenvalue: usize,
    /// Smallest sampled directional curvature.
    pub min_directional: f64,
    /// Smallest eigenvalue found over all points.
    pub min_eigenvalue: f64,
    /// How the eigenvalues were found.
    pub eigen_method: String,
    pub jensen_pairs: usize,
    pub jensen_violations: usize,
    /// Largest `L(mid) - (L(a) + L(b))/2` seen (negative when never violated).
    pub max_jensen_gap: f64,
    /// Directional curvatures re-computed by finite differences of the loss.
    pub fd_checks: usize,
    /// Largest relative deviation formula vs finite differences.
    pub fd_max_rel_err: f64,
    /// Checks whose deviation exceeds [`FD_TOLERANCE`] beyond the rounding error of the
    /// finite difference.
    pub fd_failures: usize,
    /// The point and direction of the smallest eigenvalue found.
    pub witness: Witness,
}

/// One gradient-descent run.
#[derive(Debug, Clone)]
pub struct GdRun {
    pub start: Vec<f64>,
    /// Loss before each step (`iterations + 1` values).
    pub history: Vec<f64>,
    pub end: Vec<f64>,
    pub end_grad_norm: f64,
    pub end_accuracy: f64,
}

/// A local minimum reached by gradient descent (toy problem).
#[derive(Debug, Clone)]
pub struct MinimumCluster {
    pub theta: Vec<f64>,
    pub loss: f64,
    /// Starts that ended here.
    pub starts: usize,
    /// Eigenvalues of the Hessian there (all > 0: a strict local minimum).
    pub hessian_eigenvalues: Vec<f64>,
}

/// Gradient descent with one loss from every start.
#[derive(Debug, Clone)]
pub struct GdSummary {
    pub problem: String,
    pub loss: PointLoss,
    pub lr: f64,
    pub iterations: usize,
    pub runs: Vec<GdRun>,
    /// Loss of the zero model (`σ = 1/2` everywhere).
    pub zero_loss: f64,
    pub best_loss: f64,
    /// `best + 5% (zero - best)`.
    pub target: f64,
    /// Per start: first iteration with loss `<= target`.
    pub iters_to_target: Vec<Option<usize>>,
    /// Starts that ended with loss above the target (another minimum, or stuck on a
    /// plateau).
    pub ended_away: usize,
    /// Converged end points grouped (only where the end gradients vanish).
    pub minima: Vec<MinimumCluster>,
    /// Starts whose gradient had not vanished at the end (plateau or slow).
    pub not_converged: usize,
}

impl GdSummary {
    pub fn reached(&self) -> usize {
        self.iters_to_target.iter().filter(|i| i.is_some()).count()
    }
    pub fn median_iters(&self) -> Option<f64> {
        let mut v: Vec<usize> = self.iters_to_target.iter().flatten().copied().collect();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let m = v.len() / 2;
        Some(if v.len() % 2 == 1 {
            v[m] as f64
        } else {
            0.5 * (v[m - 1] + v[m]) as f64
        })
    }
}

/// Everything topic 1 measured.
#[derive(Debug, Clone)]
pub struct CeVsMseResult {
    /// Toy BCE, toy MSE, real BCE, real MSE.
    pub curvature: Vec<CurvatureStats>,
    /// Same order.
    pub training: Vec<GdSummary>,
    pub toy: BinaryProblem,
    pub real: BinaryProblem,
    pub data_description: String,
}

impl CeVsMseResult {
    pub fn curvature_of(&self, toy: bool, loss: PointLoss) -> &CurvatureStats {
        let name = if toy { &self.toy.name } else { &self.real.name };
        self.curvature
            .iter()
            .find(|c| &c.problem == name && c.loss == loss)
            .expect("computed")
    }
    pub fn training_of(&self, toy: bool, loss: PointLoss) -> &GdSummary {
        let name = if toy { &self.toy.name } else { &self.real.name };
        self.training
            .iter()
            .find(|c| &c.problem == name && c.loss == loss)
            .expect("computed")
    }
}

/// Runs topic 1 on the toy problem and the real data.
pub fn run(data: &TheoryData, cfg: &TheoryConfig) -> Result<CeVsMseResult> {
    let toy = BinaryProblem::toy_bump();
    let real = data.problem.clone();
    let mut curvature = Vec::new();
    let mut training = Vec::new();
    for (k, p) in [&toy, &real].into_iter().enumerate() {
        let budget = Budget::for_problem(p);
        let seed = cfg.seed.wrapping_add(1000 * k as u64);
        for loss in PointLoss::BOTH {
            curvature.push(curvature_stats(p, loss, &budget, seed)?);
        }
        let starts = if p.d == 1 {
            grid_starts(7, 6.0)
        } else {
            random_starts(p, seed)
        };
        for loss in PointLoss::BOTH {
            training.push(gradient_descent(p, loss, &starts, budget.gd_iterations, p.d == 1)?);
        }
    }
    Ok(CeVsMseResult {
        curvature,
        training,
        toy,
        real,
        data_description: data.description.clone(),
    })
}

/// Random `θ` in a random direction, scaled so that the logits over the data have
/// root-mean-square `scale`.
pub fn point_at_logit_scale(p: &BinaryProblem, rng: &mut ChaCha8Rng, scale: f64) -> Vec<f64> {
    let u = unit_vector(rng, p.params());
    let z = p.apply(&u);
    let rms = (z.iter().map(|v| v * v).sum::<f64>() / z.len() as f64)
        .sqrt()
        .max(1e-12);
    u.into_iter().map(|v| v * scale / rms).collect()
}

/// Curvature, eigenvalue and Jensen statistics of one loss (seeded: both losses see
/// the same points, directions and pairs).
pub fn curvature_stats(p: &BinaryProblem, loss: PointLoss, b: &Budget, seed: u64) -> Result<CurvatureStats> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let np = p.params();
    let points: Vec<Vec<f64>> = (0..b.points)
        .map(|j| point_at_logit_scale(p, &mut rng, LOGIT_SCALES[j % LOGIT_SCALES.len()]))
        .collect();
    let dirs: Vec<Vec<f64>> = (0..b.directions).map(|_| unit_vector(&mut rng, np)).collect();
    let dense = np <= b.max_dense;
    let (mut neg_pairs, mut pts_neg_dir, mut pts_neg_eig) = (0, 0, 0);
    let mut min_dir = f64::INFINITY;
    let mut min_eig = f64::INFINITY;
    let mut witness: Option<(Vec<f64>, Vec<f64>, f64)> = None;
    let (mut fd_checks, mut fd_max, mut fd_failures) = (0usize, 0.0f64, 0usize);
    for (j, theta) in points.iter().enumerate() {
        let h = p.curvature_weights(loss, theta);
        let abs_h: Vec<f64> = h.iter().map(|v| v.abs()).collect();
        let mut any_neg = false;
        for (k, d) in dirs.iter().enumerate() {
            let c = p.directional_curvature(&h, d);
            let scale = p.directional_curvature(&abs_h, d);
            if c < -1e-10 * scale {
                neg_pairs += 1;
                any_neg = true;
            }
            min_dir = min_dir.min(c);
            if j < 4 && k < 2 {
                let (fd, noise) = p.fd_directional_curvature_with_noise(loss, theta, d);
                fd_checks += 1;
                let (raw, excess) = fd_rel_error(fd, c, scale, noise);
                fd_max = fd_max.max(raw);
                fd_failures += usize::from(excess > FD_TOLERANCE);
            }
        }
        if any_neg {
            pts_neg_dir += 1;
        }
        let (lmin, lmax, v) = if dense {
            let e = sym_eigen(&p.hessian(&h))?;
            (e.min(), e.max(), e.vector(0))
        } else {
            let mut lrng = ChaCha8Rng::seed_from_u64(seed ^ (j as u64 + 17));
            let r = lanczos_extremes(np, b.lanczos_steps, &mut lrng, |v| p.hvp(&h, v))?;
            (r.min_value, r.max_value, r.min_vector)
        };
        if lmin < -1e-10 * lmax.abs().max(1e-300) {
            pts_neg_eig += 1;
        }
        if lmin < min_eig {
            min_eig = lmin;
            witness = Some((theta.clone(), v, lmin));
        }
    }
    let (wt, wd, wc) = witness.expect("at least one point");
    let (fd_w, noise_w) = p.fd_directional_curvature_with_noise(loss, &wt, &wd);
    fd_checks += 1;
    let h_w = p.curvature_weights(loss, &wt);
    let abs_hw: Vec<f64> = h_w.iter().map(|v| v.abs()).collect();
    let scale_w = p.directional_curvature(&abs_hw, &wd);
    let (raw, excess) = fd_rel_error(fd_w, wc, scale_w, noise_w);
    fd_max = fd_max.max(raw);
    fd_failures += usize::from(excess > FD_TOLERANCE);

    // Jensen: random pairs from fresh points at random logit scales.
    let (mut violations, mut max_gap) = (0usize, f64::NEG_INFINITY);
    for _ in 0..b.jensen_pairs {
        let sa = LOGIT_SCALES[rand::Rng::random_range(&mut rng, 0..LOGIT_SCALES.len())];
        let sb = LOGIT_SCALES[rand::Rng::random_range(&mut rng, 0..LOGIT_SCALES.len())];
        let a = point_at_logit_scale(p, &mut rng, sa);
        let bb = point_at_logit_scale(p, &mut rng, sb);
        let mid: Vec<f64> = a.iter().zip(&bb).map(|(x, y)| 0.5 * (x + y)).collect();
        let (la, lb, lm) = (p.loss(loss, &a), p.loss(loss, &bb), p.loss(loss, &mid));
        let gap = lm - 0.5 * (la + lb);
        max_gap = max_gap.max(gap);
        if gap > 1e-12 * la.max(lb).max(1e-300) {
            violations += 1;
        }
    }
    Ok(CurvatureStats {
        problem: p.name.clone(),
        loss,
        params: np,
        points: b.points,
        directions: b.directions,
        negative_pairs: neg_pairs,
        total_pairs: b.points * b.directions,
        points_with_negative_direction: pts_neg_dir,
        points_with_negative_eigenvalue: pts_neg_eig,
        min_directional: min_dir,
        min_eigenvalue: min_eig,
        eigen_method: if dense {
            format!("Jacobi, full {np}x{np} Hessian")
        } else {
            format!("Lanczos ({} Hessian-vector products)", b.lanczos_steps)
        },
        jensen_pairs: b.jensen_pairs,
        jensen_violations: violations,
        max_jensen_gap: max_gap,
        fd_checks,
        fd_max_rel_err: fd_max,
        fd_failures,
        witness: Witness {
            theta: wt,
            direction: wd,
            curvature: wc,
            fd_curvature: fd_w,
        },
    })
}

/// Deviation of a finite-difference curvature `fd` from the formula's `c`, relative to
/// the larger of `|c|` and `1e-3` of the curvature scale `Σ|ℓ''|(x̃·d)²/N` (where signed
/// terms nearly cancel): `(raw, beyond the finite difference's rounding error noise)`.
fn fd_rel_error(fd: f64, c: f64, scale: f64, noise: f64) -> (f64, f64) {
    let norm = c.abs().max(1e-3 * scale).max(1e-300);
    ((fd - c).abs() / norm, ((fd - c).abs() - noise).max(0.0) / norm)
}

/// A finite-difference check fails when the deviation beyond rounding exceeds this.
pub const FD_TOLERANCE: f64 = 1e-4;

/// `n x n` grid of `(w, b)` starts over `[-r, r]²`.
pub fn grid_starts(n: usize, r: f64) -> Vec<Vec<f64>> {
    let at = |i: usize| -r + 2.0 * r * i as f64 / (n - 1) as f64;
    (0..n).flat_map(|i| (0..n).map(move |j| vec![at(i), at(j)])).collect()
}

/// The zero model plus seeded random starts at logit scales 1 to 32.
pub fn random_starts(p: &BinaryProblem, seed: u64) -> Vec<Vec<f64>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let mut v = vec![vec![0.0; p.params()]];
    for s in [1.0, 2.0, 4.0, 8.0, 16.0, 32.0] {
        v.push(point_at_logit_scale(p, &mut rng, s));
    }
    v
}

/// Plain gradient descent with the loss's safe step size from every start.
pub fn gradient_descent(
    p: &BinaryProblem,
    loss: PointLoss,
    starts: &[Vec<f64>],
    iterations: usize,
    cluster_minima: bool,
) -> Result<GdSummary> {
    let lr = 1.0 / (loss.max_abs_dz2() * p.gram_max_eigenvalue());
    let descend = |s: &Vec<f64>| -> GdRun {
        let mut theta = s.clone();
        let mut history = Vec::with_capacity(iterations + 1);
        let mut grad_norm = 0.0;
        for it in 0..=iterations {
            let (l, g) = p.loss_grad(loss, &theta);
            history.push(l);
            grad_norm = norm(&g);
            if it < iterations {
                theta.iter_mut().zip(&g).for_each(|(t, g)| *t -= lr * g);
            }
        }
        let acc = p.accuracy(&theta);
        GdRun {
            start: s.clone(),
            history,
            end: theta,
            end_grad_norm: grad_norm,
            end_accuracy: acc,
        }
    };
    // Starts are independent: run them on the available cores (results stay in order).
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(starts.len())
        .max(1);
    let chunk = starts.len().div_ceil(threads);
    let runs: Vec<GdRun> = std::thread::scope(|scope| {
        let handles: Vec<_> = starts
            .chunks(chunk)
            .map(|c| scope.spawn(move || c.iter().map(descend).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("gradient descent thread panicked"))
            .collect()
    });
    let zero_loss = p.loss(loss, &vec![0.0; p.params()]);
    let best_loss = runs
        .iter()
        .map(|r| *r.history.last().expect("non-empty"))
        .fold(f64::INFINITY, f64::min);
    let target = best_loss + 0.05 * (zero_loss - best_loss).max(0.0);
    let iters_to_target: Vec<Option<usize>> = runs
        .iter()
        .map(|r| r.history.iter().position(|&l| l <= target))
        .collect();
    let ended_away = runs
        .iter()
        .filter(|r| *r.history.last().expect("non-empty") > target)
        .count();
    let mut minima: Vec<MinimumCluster> = Vec::new();
    let mut not_converged = 0;
    for r in &runs {
        let converged = r.end_grad_norm < 1e-7 && norm(&r.end) < 1e3;
        if !converged {
            not_converged += 1;
            continue;
        }
        if !cluster_minima {
            continue;
        }
        let l = *r.history.last().expect("non-empty");
        match minima.iter_mut().find(|m| {
            let d: Vec<f64> = m.theta.iter().zip(&r.end).map(|(a, b)| a - b).collect();
            norm(&d) < 1e-2 * (1.0 + norm(&m.theta))
        }) {
            Some(m) => m.starts += 1,
            None => {
                let h = p.curvature_weights(loss, &r.end);
                let e = sym_eigen(&p.hessian(&h))?;
                minima.push(MinimumCluster {
                    theta: r.end.clone(),
                    loss: l,
                    starts: 1,
                    hessian_eigenvalues: e.values,
                });
            }
        }
    }
    minima.sort_by(|a, b| a.loss.total_cmp(&b.loss));
    Ok(GdSummary {
        problem: p.name.clone(),
        loss,
        lr,
        iterations,
        runs,
        zero_loss,
        best_loss,
        target,
        iters_to_target,
        ended_away,
        minima,
        not_converged,
    })
}

impl CeVsMseResult {
    fn checks(&self) -> Vec<(bool, String)> {
        let mut v = Vec::new();
        for toy in [true, false] {
            let b = self.curvature_of(toy, PointLoss::Bce);
            let m = self.curvature_of(toy, PointLoss::Mse);
            v.push((
                b.negative_pairs == 0 && b.points_with_negative_eigenvalue == 0 && b.jensen_violations == 0,
                format!("{}: BCE never negative", b.problem),
            ));
            v.push((
                m.points_with_negative_eigenvalue > 0 && m.negative_pairs > 0,
                format!("{}: MSE negative curvature", m.problem),
            ));
            v.push((
                b.fd_failures == 0 && m.fd_failures == 0,
                format!("{}: formula = finite differences", b.problem),
            ));
        }
        v.push((
            self.curvature_of(true, PointLoss::Mse).jensen_violations > 0,
            "toy: MSE violates Jensen".into(),
        ));
        let tb = self.training_of(true, PointLoss::Bce);
        let tm = self.training_of(true, PointLoss::Mse);
        v.push((
            tb.minima.len() == 1 && tm.minima.len() >= 2,
            "toy: one BCE minimum, several MSE minima".into(),
        ));
        v
    }
}

impl TopicResult for CeVsMseResult {
    fn verdict(&self) -> Verdict {
        let checks = self.checks();
        let holds = checks.iter().all(|c| c.0);
        let mut evidence = Vec::new();
        for toy in [true, false] {
            let b = self.curvature_of(toy, PointLoss::Bce);
            let m = self.curvature_of(toy, PointLoss::Mse);
            evidence.push(format!(
                "{}: BCE had negative curvature in {} of {} sampled (point, direction) pairs and a smallest Hessian \
                 eigenvalue of {} over {} points ({}); MSE had {} negative pairs ({}), a negative eigenvalue at {} of \
                 {} points, smallest {} (finite differences of the loss along that direction: {}).",
                b.problem,
                b.negative_pairs,
                b.total_pairs,
                num(b.min_eigenvalue),
                b.points,
                b.eigen_method,
                m.negative_pairs,
                pct(m.negative_pairs, m.total_pairs),
                m.points_with_negative_eigenvalue,
                m.points,
                num(m.min_eigenvalue),
                num(m.witness.fd_curvature)
            ));
            evidence.push(format!(
                "{}: midpoint convexity L((a+b)/2) <= (L(a)+L(b))/2 was violated by {} of {} random pairs for BCE \
                 and {} of {} for MSE (largest excess {}).",
                b.problem,
                b.jensen_violations,
                b.jensen_pairs,
                m.jensen_violations,
                m.jensen_pairs,
                num(m.max_jensen_gap.max(0.0))
            ));
        }
        evidence.push(
            "A BCE eigenvalue of (almost) exactly 0 is not negative curvature: pixels that are 0 in every image give \
             weights the loss does not depend on, so the BCE Hessian is positive semi-definite, not definite."
                .into(),
        );
        let tb = self.training_of(true, PointLoss::Bce);
        let tm = self.training_of(true, PointLoss::Mse);
        evidence.push(format!(
            "Toy, gradient descent from the same {} starts: BCE ends in {} minimum ({} starts within target); MSE ends \
             in {} distinct local minima (losses {}) and {} starts did not converge (saturated plateau); {} MSE starts \
             ended above the target loss.",
            tb.runs.len(),
            tb.minima.len(),
            tb.reached(),
            tm.minima.len(),
            tm.minima.iter().map(|m| num(m.loss)).collect::<Vec<_>>().join(", "),
            tm.not_converged,
            tm.ended_away
        ));
        let rb = self.training_of(false, PointLoss::Bce);
        let rm = self.training_of(false, PointLoss::Mse);
        let stuck = |s: &GdSummary| -> String {
            let v: Vec<String> = s
                .runs
                .iter()
                .map(|r| *r.history.last().expect("non-empty"))
                .filter(|&l| l > s.target)
                .map(num)
                .collect();
            if v.is_empty() {
                "none".into()
            } else {
                v.join(", ")
            }
        };
        evidence.push(format!(
            "{}, gradient descent from the same {} starts ({} iterations): BCE reached its target loss from {} starts \
             (median {} iterations), MSE from {} (median {}). Final losses above target: BCE {}; MSE {} (the zero \
             model has MSE {}). Mechanism (see the plots): the MSE gradient carries the factor σ(1-σ), which vanishes \
             on confidently wrong examples, so such starts sit on plateaus; the BCE gradient σ - y does not vanish \
             there, so BCE starts far away descend steadily (and may simply need more iterations).",
            rb.problem,
            rb.runs.len(),
            rb.iterations,
            rb.reached(),
            rb.median_iters().map(num).unwrap_or_else(|| "-".into()),
            rm.reached(),
            rm.median_iters().map(num).unwrap_or_else(|| "-".into()),
            stuck(rb),
            stuck(rm),
            num(rm.zero_loss)
        ));
        for (ok, what) in &checks {
            if !ok {
                evidence.push(format!("FAILED check: {what}"));
            }
        }
        Verdict {
            holds,
            answer: "BCE is convex in (w, b): no sampled direction at any sampled point has negative curvature and \
                     Jensen is never violated. MSE is not: it has negative Hessian eigenvalues where predictions are \
                     confidently wrong (the factor σ(1-σ)+(σ-y)(1-2σ) changes sign), violates midpoint convexity, has \
                     several local minima and flat plateaus, so gradient descent depends on the start."
                .into(),
            evidence,
        }
    }

    fn tables(&self) -> Vec<Table> {
        let mut t = Table::new(
            "Curvature of the loss in (w, b): same points and directions for both losses",
            &[
                "problem",
                "loss",
                "params",
                "points x dirs",
                "neg. curvature pairs",
                "points with neg. direction",
                "points with neg. eigenvalue",
                "min d'Hd",
                "min eigenvalue",
                "eigenvalues by",
                "Jensen violations",
                "FD checks: max rel. dev. (failures)",
            ],
        );
        for c in &self.curvature {
            t.push(vec![
                c.problem.clone(),
                c.loss.name().into(),
                c.params.to_string(),
                format!("{} x {}", c.points, c.directions),
                format!("{} ({})", c.negative_pairs, pct(c.negative_pairs, c.total_pairs)),
                format!("{}/{}", c.points_with_negative_direction, c.points),
                format!("{}/{}", c.points_with_negative_eigenvalue, c.points),
                num(c.min_directional),
                num(c.min_eigenvalue),
                c.eigen_method.clone(),
                format!("{}/{}", c.jensen_violations, c.jensen_pairs),
                format!("{}: {} ({})", c.fd_checks, num(c.fd_max_rel_err), c.fd_failures),
            ]);
        }
        let mut g = Table::new(
            "Gradient descent from the same starts (each loss with its own safe step 1/(max|l''| lambda_max))",
            &[
                "problem",
                "loss",
                "starts",
                "step",
                "iterations",
                "best loss",
                "target loss",
                "reached target",
                "median iters to target",
                "ended above target",
                "distinct minima (converged)",
                "not converged",
            ],
        );
        for s in &self.training {
            g.push(vec![
                s.problem.clone(),
                s.loss.name().into(),
                s.runs.len().to_string(),
                num(s.lr),
                s.iterations.to_string(),
                num(s.best_loss),
                num(s.target),
                format!("{}/{}", s.reached(), s.runs.len()),
                s.median_iters().map(num).unwrap_or_else(|| "-".into()),
                s.ended_away.to_string(),
                if s.problem == self.toy.name {
                    s.minima.len().to_string()
                } else {
                    "-".into()
                },
                s.not_converged.to_string(),
            ]);
        }
        let mut m = Table::new(
            "Toy problem: where gradient descent ends (converged end points, clustered)",
            &[
                "loss",
                "w",
                "b",
                "loss value",
                "starts ending here",
                "Hessian eigenvalues",
            ],
        );
        for loss in PointLoss::BOTH {
            for c in &self.training_of(true, loss).minima {
                m.push(vec![
                    loss.name().into(),
                    num(c.theta[0]),
                    num(c.theta[1]),
                    num(c.loss),
                    c.starts.to_string(),
                    c.hessian_eigenvalues
                        .iter()
                        .map(|v| num(*v))
                        .collect::<Vec<_>>()
                        .join(", "),
                ]);
            }
        }
        vec![t, g, m]
    }

    fn write_plots(&self, dir: &Path) -> Result<Vec<Plot>> {
        let topic = Topic::CeVsMse;
        let mut plots = Vec::new();
        // 1-D slice of the toy through the MSE minimum with the largest |w|.
        let tm = self.training_of(true, PointLoss::Mse);
        let b_slice = tm
            .minima
            .iter()
            .max_by(|a, b| a.theta[0].abs().total_cmp(&b.theta[0].abs()))
            .map(|m| m.theta[1])
            .unwrap_or(2.88);
        let ws: Vec<f64> = (0..=240).map(|i| -3.0 + 6.0 * i as f64 / 240.0).collect();
        let toy = &self.toy;
        let curve =
            |loss: PointLoss| -> Vec<(f64, f64)> { ws.iter().map(|&w| (w, toy.loss(loss, &[w, b_slice]))).collect() };
        let curv = |loss: PointLoss| -> Vec<(f64, f64)> {
            ws.iter()
                .map(|&w| {
                    let h = toy.curvature_weights(loss, &[w, b_slice]);
                    (w, toy.directional_curvature(&h, &[1.0, 0.0]))
                })
                .collect()
        };
        let (bce_c, mse_c) = (normalised(curve(PointLoss::Bce)), normalised(curve(PointLoss::Mse)));
        let (path, file) = plot_path(dir, topic, "toy_loss_1d");
        line_chart(
            &path,
            &format!("Toy: loss along w at b = {b_slice:.2} (each curve scaled to [0, 1])"),
            "w",
            "(L - min) / (max - min)",
            &[
                Series {
                    label: "BCE",
                    points: &bce_c,
                },
                Series {
                    label: "MSE",
                    points: &mse_c,
                },
            ],
        )?;
        plots.push(Plot {
            file,
            caption: format!(
                "Toy problem: BCE and MSE along w with b fixed at {b_slice:.2} (the b of an MSE local minimum), each \
                 min-max scaled to [0, 1] to compare shapes: BCE is a single bowl, MSE has two wells and a bump."
            ),
        });
        let (bce_k, mse_k) = (curv(PointLoss::Bce), curv(PointLoss::Mse));
        let zero: Vec<(f64, f64)> = vec![(ws[0], 0.0), (*ws.last().expect("non-empty"), 0.0)];
        let (path, file) = plot_path(dir, topic, "toy_curvature_1d");
        line_chart(
            &path,
            &format!("Toy: second derivative d2L/dw2 at b = {b_slice:.2}"),
            "w",
            "d2L/dw2",
            &[
                Series {
                    label: "BCE",
                    points: &bce_k,
                },
                Series {
                    label: "MSE",
                    points: &mse_k,
                },
                Series {
                    label: "zero",
                    points: &zero,
                },
            ],
        )?;
        plots.push(Plot {
            file,
            caption: "Toy problem: exact second derivative along the same line. BCE stays >= 0; MSE dips below 0."
                .into(),
        });
        for loss in PointLoss::BOTH {
            let (nx, ny) = (121, 91);
            let (wr, br) = ((-3.0, 3.0), (-3.0, 6.0));
            let values: Vec<Vec<f64>> = (0..ny)
                .map(|r| {
                    let b = br.0 + (br.1 - br.0) * (r as f64 + 0.5) / ny as f64;
                    (0..nx)
                        .map(|c| {
                            let w = wr.0 + (wr.1 - wr.0) * (c as f64 + 0.5) / nx as f64;
                            toy.loss(loss, &[w, b])
                        })
                        .collect()
                })
                .collect();
            let (path, file) = plot_path(dir, topic, &format!("toy_{}_contour", loss.name().to_lowercase()));
            heatmap(
                &path,
                &format!("Toy: {} over (w, b)", loss.name()),
                "w",
                "b",
                wr,
                br,
                &values,
            )?;
            plots.push(Plot {
                file,
                caption: format!(
                    "Toy problem: {} over (w, b) with iso-lines{}.",
                    loss.name(),
                    if loss == PointLoss::Bce {
                        " (one basin)"
                    } else {
                        " (several basins and flat plateaus)"
                    }
                ),
            });
        }
        // Real data: 1-D curve along the MSE negative-curvature direction.
        let real = &self.real;
        let wit = &self.curvature_of(false, PointLoss::Mse).witness;
        let zd = real.apply(&wit.direction);
        let mean = zd.iter().sum::<f64>() / zd.len() as f64;
        let sd = (zd.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / zd.len() as f64)
            .sqrt()
            .max(1e-12);
        let s = 3.0 / sd;
        let ts: Vec<f64> = (0..=120).map(|i| -s + 2.0 * s * i as f64 / 120.0).collect();
        let along = |loss: PointLoss| -> Vec<(f64, f64)> {
            ts.iter()
                .map(|&t| {
                    let th: Vec<f64> = wit.theta.iter().zip(&wit.direction).map(|(a, d)| a + t * d).collect();
                    (t, real.loss(loss, &th))
                })
                .collect()
        };
        let (rb, rm) = (normalised(along(PointLoss::Bce)), normalised(along(PointLoss::Mse)));
        let (path, file) = plot_path(dir, topic, "real_loss_1d");
        line_chart(
            &path,
            &format!(
                "{}: along the MSE negative-curvature direction (scaled to [0, 1])",
                real.name
            ),
            "t (theta = theta0 + t d)",
            "(L - min) / (max - min)",
            &[
                Series {
                    label: "BCE",
                    points: &rb,
                },
                Series {
                    label: "MSE",
                    points: &rm,
                },
            ],
        )?;
        plots.push(Plot {
            file,
            caption: format!(
                "{}: both losses along the unit direction d of the most negative MSE Hessian eigenvalue found \
                 ({}), through the point where it was found, each min-max scaled to [0, 1]. MSE is concave around \
                 t = 0 and flattens into a plateau; BCE is convex along every line.",
                real.name,
                num(wit.curvature)
            ),
        });
        // Real data: 2-D slice over (alpha, b) with w = alpha * w_hat.
        let rbt = self.training_of(false, PointLoss::Bce);
        let best = rbt
            .runs
            .iter()
            .min_by(|a, b| {
                a.history
                    .last()
                    .expect("non-empty")
                    .total_cmp(b.history.last().expect("non-empty"))
            })
            .expect("runs");
        let w_norm = norm(&best.end[..real.d]).max(1e-12);
        let mut w_hat: Vec<f64> = best.end[..real.d].iter().map(|v| v / w_norm).collect();
        w_hat.push(0.0);
        let zw = real.apply(&w_hat);
        let mw = zw.iter().sum::<f64>() / zw.len() as f64;
        let sdw = (zw.iter().map(|v| (v - mw).powi(2)).sum::<f64>() / zw.len() as f64)
            .sqrt()
            .max(1e-12);
        let amax = 8.0 / sdw;
        let ar = (-amax, amax);
        let br = (-8.0, 8.0);
        for loss in PointLoss::BOTH {
            let (nx, ny) = (61, 49);
            let values: Vec<Vec<f64>> = (0..ny)
                .map(|r| {
                    let b = br.0 + (br.1 - br.0) * (r as f64 + 0.5) / ny as f64;
                    (0..nx)
                        .map(|c| {
                            let a = ar.0 + (ar.1 - ar.0) * (c as f64 + 0.5) / nx as f64;
                            let z0 = &zw;
                            z0.iter()
                                .zip(&real.y)
                                .map(|(&z, &y)| loss.value(a * z + b, y))
                                .sum::<f64>()
                                / real.n as f64
                        })
                        .collect()
                })
                .collect();
            let (path, file) = plot_path(dir, topic, &format!("real_{}_contour", loss.name().to_lowercase()));
            heatmap(
                &path,
                &format!("{}: {} over (alpha, b), w = alpha * w_hat", real.name, loss.name()),
                "alpha (w = alpha * w_hat)",
                "b",
                ar,
                br,
                &values,
            )?;
            plots.push(Plot {
                file,
                caption: format!(
                    "{}: {} on the plane w = alpha * w_hat (w_hat = direction of the best BCE solution), b free.",
                    real.name,
                    loss.name()
                ),
            });
        }
        // Negative-curvature shares.
        let labels: Vec<String> = vec![self.toy.name.clone(), self.real.name.clone()];
        let share = |loss: PointLoss| -> Vec<f64> {
            [true, false]
                .iter()
                .map(|&toy| {
                    let c = self.curvature_of(toy, loss);
                    100.0 * c.negative_pairs as f64 / c.total_pairs.max(1) as f64
                })
                .collect()
        };
        let (path, file) = plot_path(dir, topic, "negative_curvature_share");
        bar_chart(
            &path,
            "Sampled (point, direction) pairs with negative curvature",
            "% of pairs",
            &labels,
            &[("BCE", share(PointLoss::Bce)), ("MSE", share(PointLoss::Mse))],
        )?;
        plots.push(Plot {
            file,
            caption: "Share of random (point, direction) pairs where d'Hd < 0: zero for BCE.".into(),
        });
        // Gradient descent curves.
        for toy in [true, false] {
            for loss in PointLoss::BOTH {
                let s = self.training_of(toy, loss);
                let pick: Vec<usize> = if toy {
                    // Every 6th start of the 7x7 grid: 9 curves.
                    (0..s.runs.len()).step_by(6).collect()
                } else {
                    (0..s.runs.len()).collect()
                };
                let every = (s.iterations / 400).max(1);
                let curves: Vec<Vec<(f64, f64)>> = pick
                    .iter()
                    .map(|&i| {
                        s.runs[i]
                            .history
                            .iter()
                            .enumerate()
                            .step_by(every)
                            .map(|(k, &l)| (k as f64, l))
                            .collect()
                    })
                    .collect();
                let names: Vec<String> = pick
                    .iter()
                    .map(|&i| {
                        if toy {
                            format!("({:.0}, {:.0})", s.runs[i].start[0], s.runs[i].start[1])
                        } else if i == 0 {
                            "zero".to_string()
                        } else {
                            format!("scale {}", [1, 2, 4, 8, 16, 32].get(i - 1).copied().unwrap_or(0))
                        }
                    })
                    .collect();
                let series: Vec<Series> = curves
                    .iter()
                    .zip(&names)
                    .map(|(c, n)| Series {
                        label: n.as_str(),
                        points: c,
                    })
                    .collect();
                let tag = if toy { "toy" } else { "real" };
                let (path, file) = plot_path(dir, topic, &format!("{tag}_gd_{}", loss.name().to_lowercase()));
                line_chart(
                    &path,
                    &format!(
                        "{}: gradient descent on {} from the same starts",
                        s.problem,
                        loss.name()
                    ),
                    "iteration",
                    &format!("{} loss", loss.name()),
                    &series,
                )?;
                plots.push(Plot {
                    file,
                    caption: format!(
                        "{}: {} during gradient descent (step {}), one line per start{}.",
                        s.problem,
                        loss.name(),
                        num(s.lr),
                        if toy {
                            " (start (w, b))"
                        } else {
                            " (start: zero model or random at logit scale k)"
                        }
                    ),
                });
            }
        }
        Ok(plots)
    }
}

/// Min-max scales the y values of a curve to `[0, 1]` (to compare shapes of losses
/// of different size on one chart).
fn normalised(points: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    let lo = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let hi = points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let span = if hi > lo { hi - lo } else { 1.0 };
    points.into_iter().map(|(x, y)| (x, (y - lo) / span)).collect()
}

/// Directional curvature of one loss at `theta` along `d` (exact formula).
pub fn curvature_along(p: &BinaryProblem, loss: PointLoss, theta: &[f64], d: &[f64]) -> f64 {
    p.directional_curvature(&p.curvature_weights(loss, theta), d)
}

/// The full Hessian of one loss at `theta` (small problems).
pub fn hessian(p: &BinaryProblem, loss: PointLoss, theta: &[f64]) -> Matrix {
    p.hessian(&p.curvature_weights(loss, theta))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result() -> CeVsMseResult {
        let data = TheoryData::load(&TheoryConfig::embedded()).unwrap();
        run(&data, &TheoryConfig::embedded()).unwrap()
    }

    #[test]
    fn bce_never_negative_mse_negative_on_toy_and_real_data() {
        let r = result();
        for toy in [true, false] {
            let b = r.curvature_of(toy, PointLoss::Bce);
            let m = r.curvature_of(toy, PointLoss::Mse);
            // BCE: no negative curvature along any sampled direction, no negative eigenvalue.
            assert_eq!(b.negative_pairs, 0, "{}", b.problem);
            assert_eq!(b.points_with_negative_eigenvalue, 0, "{}", b.problem);
            assert!(b.min_eigenvalue > -1e-12, "{}", b.min_eigenvalue);
            assert_eq!(b.jensen_violations, 0);
            // MSE: a negative eigenvalue exists, confirmed by finite differences of the loss.
            assert!(
                m.points_with_negative_eigenvalue > 0 && m.negative_pairs > 0,
                "{}",
                m.problem
            );
            assert!(m.min_eigenvalue < 0.0 && m.witness.fd_curvature < 0.0);
            assert!((m.witness.fd_curvature - m.witness.curvature).abs() < 1e-4 * m.witness.curvature.abs());
            assert_eq!(
                b.fd_failures + m.fd_failures,
                0,
                "{} {}",
                b.fd_max_rel_err,
                m.fd_max_rel_err
            );
        }
        assert!(r.curvature_of(true, PointLoss::Mse).jensen_violations > 0);
        assert!(r.verdict().holds, "{:#?}", r.verdict());
        // Training: one BCE minimum, at least two MSE minima, each a strict local minimum.
        let tb = r.training_of(true, PointLoss::Bce);
        let tm = r.training_of(true, PointLoss::Mse);
        assert_eq!(tb.minima.len(), 1);
        assert!(tm.minima.len() >= 2, "{:?}", tm.minima);
        assert!(tm.minima.iter().all(|m| m.hessian_eigenvalues[0] > 0.0));
        assert!(tm.ended_away > tb.ended_away);
        let tables = r.tables();
        assert_eq!(tables[0].rows.len(), 4);
    }

    #[test]
    fn mnist_curvature_claim_when_mnist_is_available() {
        // Runs only with DIGITLAB_DATA pointing at MNIST (skipped, and passing, otherwise).
        let cfg = TheoryConfig::default();
        let data = TheoryData::load(&cfg).unwrap();
        if !data.is_mnist {
            eprintln!("MNIST not found: skipping the MNIST curvature check");
            return;
        }
        let p = &data.problem;
        let budget = Budget {
            points: 12,
            directions: 12,
            jensen_pairs: 40,
            ..Budget::for_problem(p)
        };
        let b = curvature_stats(p, PointLoss::Bce, &budget, 1).unwrap();
        let m = curvature_stats(p, PointLoss::Mse, &budget, 1).unwrap();
        assert_eq!(
            (b.negative_pairs, b.points_with_negative_eigenvalue, b.jensen_violations),
            (0, 0, 0)
        );
        assert!(
            m.min_eigenvalue < 0.0 && m.witness.fd_curvature < 0.0,
            "{}",
            m.min_eigenvalue
        );
        assert_eq!(b.fd_failures + m.fd_failures, 0);
    }

    #[test]
    fn plots_are_written() {
        // A tiny problem keeps this test fast: only plotting is under test here.
        let data = TheoryData::load(&TheoryConfig::embedded()).unwrap();
        let mut small = data.clone();
        small.problem = BinaryProblem::toy_blobs(30, 3);
        let r = run(&small, &TheoryConfig::embedded()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let plots = r.write_plots(dir.path()).unwrap();
        assert!(plots.len() >= 10);
        for p in plots {
            assert!(dir.path().join(&p.file).metadata().unwrap().len() > 1000, "{}", p.file);
        }
    }
}
