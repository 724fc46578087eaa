//! Logistic regression `p = σ(w·x + b)` on a [`BinaryProblem`], with the binary
//! cross-entropy or the squared error, in closed form: loss, gradient, Hessian,
//! Hessian-vector products and directional second derivatives.
//!
//! Parameters are `θ = (w_1, …, w_d, b)`; `x̃ = (x, 1)` so that `z = θ·x̃`. Both losses
//! are means over the `N` samples of a per-sample loss `ℓ(z, y)`, so
//!
//! ```text
//! ∇L = (1/N) Σ ℓ'(z_i, y_i) x̃_i          ∇²L = (1/N) Σ ℓ''(z_i, y_i) x̃_i x̃_iᵀ
//! dᵀ∇²L d = (1/N) Σ ℓ''(z_i, y_i) (x̃_i·d)²
//! ```
//!
//! and everything hinges on the sign of the scalar curvature `ℓ''`:
//!
//! | loss | `ℓ(z, y)` | `ℓ'` | `ℓ''` |
//! |---|---|---|---|
//! | BCE | `softplus(z) - y z` | `σ - y` | `σ(1-σ) ≥ 0` |
//! | MSE | `(σ - y)²` | `2(σ - y)σ(1-σ)` | `2σ(1-σ)[σ(1-σ) + (σ - y)(1 - 2σ)]` |
//!
//! For MSE the bracket is negative when the prediction is confidently wrong:
//! `y = 0` gives `2σ²(1-σ)(2 - 3σ) < 0` for `σ > 2/3`, and `y = 1` gives
//! `2σ(1-σ)²(3σ - 1) < 0` for `σ < 1/3`. (MSE here is the plain mean of squares, as
//! `digitlab_losses::mse` with `Reduction::Mean`, no ½.)
use crate::data::BinaryProblem;
use crate::linalg::{axpy, dot, Matrix};

/// Which per-sample loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PointLoss {
    /// Binary cross-entropy of `σ(z)` (computed stably from the logit).
    Bce,
    /// Squared error `(σ(z) - y)²`.
    Mse,
}

impl PointLoss {
    pub const BOTH: [PointLoss; 2] = [PointLoss::Bce, PointLoss::Mse];

    pub fn name(self) -> &'static str {
        match self {
            PointLoss::Bce => "BCE",
            PointLoss::Mse => "MSE",
        }
    }

    /// `ℓ(z, y)`.
    #[inline]
    pub fn value(self, z: f64, y: f64) -> f64 {
        match self {
            PointLoss::Bce => softplus(z) - y * z,
            PointLoss::Mse => (sigmoid(z) - y).powi(2),
        }
    }

    /// `∂ℓ/∂z`.
    #[inline]
    pub fn dz(self, z: f64, y: f64) -> f64 {
        let s = sigmoid(z);
        match self {
            PointLoss::Bce => s - y,
            PointLoss::Mse => 2.0 * (s - y) * s * (1.0 - s),
        }
    }

    /// `∂²ℓ/∂z²`.
    #[inline]
    pub fn dz2(self, z: f64, y: f64) -> f64 {
        let s = sigmoid(z);
        let sp = s * (1.0 - s);
        match self {
            PointLoss::Bce => sp,
            PointLoss::Mse => 2.0 * sp * (sp + (s - y) * (1.0 - 2.0 * s)),
        }
    }

    /// `max |ℓ''|` over all logits and both labels (a smoothness constant for step
    /// sizes): `1/4` for BCE, and for MSE found on a fine grid (≈ 0.155).
    pub fn max_abs_dz2(self) -> f64 {
        match self {
            PointLoss::Bce => 0.25,
            PointLoss::Mse => {
                let mut m = 0.0f64;
                for k in -4000..=4000 {
                    let z = k as f64 * 0.005;
                    m = m.max(self.dz2(z, 0.0).abs()).max(self.dz2(z, 1.0).abs());
                }
                m
            }
        }
    }
}

/// Logistic sigmoid, accurate for large `|z|` (no overflow, no `1 - 1` cancellation).
#[inline]
pub fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// `ln(1 + e^z)` computed as `max(z, 0) + ln(1 + e^{-|z|})`.
#[inline]
pub fn softplus(z: f64) -> f64 {
    z.max(0.0) + (-z.abs()).exp().ln_1p()
}

impl BinaryProblem {
    /// Logits `z_i = w·x_i + b` for `θ = (w, b)`.
    pub fn logits(&self, theta: &[f64]) -> Vec<f64> {
        assert_eq!(theta.len(), self.d + 1, "theta must have d + 1 entries");
        let (w, b) = theta.split_at(self.d);
        (0..self.n).map(|i| dot(self.row(i), w) + b[0]).collect()
    }

    /// `X̃ v` for a direction `v` in parameter space.
    pub fn apply(&self, v: &[f64]) -> Vec<f64> {
        self.logits(v)
    }

    /// `(1/N) X̃ᵀ u` for per-sample weights `u`.
    pub fn apply_t_mean(&self, u: &[f64]) -> Vec<f64> {
        let mut g = vec![0.0; self.d + 1];
        let inv = 1.0 / self.n as f64;
        for (i, &ui) in u.iter().enumerate() {
            if ui != 0.0 {
                axpy(ui * inv, self.row(i), &mut g[..self.d]);
                g[self.d] += ui * inv;
            }
        }
        g
    }

    /// Mean loss.
    pub fn loss(&self, loss: PointLoss, theta: &[f64]) -> f64 {
        let z = self.logits(theta);
        z.iter().zip(&self.y).map(|(&z, &y)| loss.value(z, y)).sum::<f64>() / self.n as f64
    }

    /// Mean loss and its gradient.
    pub fn loss_grad(&self, loss: PointLoss, theta: &[f64]) -> (f64, Vec<f64>) {
        let z = self.logits(theta);
        let value = z.iter().zip(&self.y).map(|(&z, &y)| loss.value(z, y)).sum::<f64>() / self.n as f64;
        let u: Vec<f64> = z.iter().zip(&self.y).map(|(&z, &y)| loss.dz(z, y)).collect();
        (value, self.apply_t_mean(&u))
    }

    /// Per-sample curvatures `ℓ''(z_i, y_i)` at `θ`.
    pub fn curvature_weights(&self, loss: PointLoss, theta: &[f64]) -> Vec<f64> {
        self.logits(theta)
            .iter()
            .zip(&self.y)
            .map(|(&z, &y)| loss.dz2(z, y))
            .collect()
    }

    /// Exact `dᵀ ∇²L(θ) d` from the curvature weights `h` of [`Self::curvature_weights`].
    pub fn directional_curvature(&self, h: &[f64], d: &[f64]) -> f64 {
        let xd = self.apply(d);
        h.iter().zip(&xd).map(|(h, v)| h * v * v).sum::<f64>() / self.n as f64
    }

    /// Hessian-vector product `∇²L(θ) v` from the curvature weights `h`.
    pub fn hvp(&self, h: &[f64], v: &[f64]) -> Vec<f64> {
        let xv = self.apply(v);
        let u: Vec<f64> = h.iter().zip(&xv).map(|(h, v)| h * v).collect();
        self.apply_t_mean(&u)
    }

    /// The full `(d+1) x (d+1)` Hessian `(1/N) Σ h_i x̃_i x̃_iᵀ` (small `d` only).
    pub fn hessian(&self, h: &[f64]) -> Matrix {
        let p = self.d + 1;
        let mut m = Matrix::zeros(p, p);
        let mut xt = vec![0.0; p];
        for (i, &hi) in h.iter().enumerate() {
            if hi == 0.0 {
                continue;
            }
            xt[..self.d].copy_from_slice(self.row(i));
            xt[self.d] = 1.0;
            for a in 0..p {
                let c = hi * xt[a];
                if c != 0.0 {
                    axpy(c, &xt, &mut m.data[a * p..(a + 1) * p]);
                }
            }
        }
        m.data.iter_mut().for_each(|v| *v /= self.n as f64);
        m
    }

    /// Central second difference of the loss along `d`:
    /// `(L(θ + εd) - 2L(θ) + L(θ - εd)) / ε²`, with `ε` chosen so that the logits
    /// move by about `1e-3`.
    pub fn fd_directional_curvature(&self, loss: PointLoss, theta: &[f64], d: &[f64]) -> f64 {
        self.fd_directional_curvature_with_noise(loss, theta, d).0
    }

    /// [`Self::fd_directional_curvature`] and the size of its rounding error,
    /// `8 ε_mach (|L+| + 2|L| + |L-|) / ε²` (below this, a difference between the
    /// formula and the finite difference means nothing).
    pub fn fd_directional_curvature_with_noise(&self, loss: PointLoss, theta: &[f64], d: &[f64]) -> (f64, f64) {
        let spread = self.apply(d).iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-12);
        let eps = 1e-3 / spread;
        let at = |t: f64| {
            let th: Vec<f64> = theta.iter().zip(d).map(|(a, b)| a + t * b).collect();
            self.loss(loss, &th)
        };
        let (up, mid, down) = (at(eps), at(0.0), at(-eps));
        let noise = 8.0 * f64::EPSILON * (up.abs() + 2.0 * mid.abs() + down.abs()) / (eps * eps);
        ((up - 2.0 * mid + down) / (eps * eps), noise)
    }

    /// Fraction of samples whose prediction `z > 0` matches the label.
    pub fn accuracy(&self, theta: &[f64]) -> f64 {
        let z = self.logits(theta);
        z.iter().zip(&self.y).filter(|(&z, &y)| (z > 0.0) == (y == 1.0)).count() as f64 / self.n as f64
    }

    /// Largest eigenvalue of `(1/N) X̃ᵀX̃` by power iteration (for step sizes).
    pub fn gram_max_eigenvalue(&self) -> f64 {
        let ones = vec![1.0; self.n];
        let mut v = vec![1.0; self.d + 1];
        let mut lambda = 0.0;
        for _ in 0..200 {
            let w = self.hvp(&ones, &v);
            let nw = crate::linalg::norm(&w);
            if nw == 0.0 {
                return 0.0;
            }
            let new = nw / crate::linalg::norm(&v);
            v = w.into_iter().map(|x| x / nw).collect();
            if (new - lambda).abs() <= 1e-10 * new {
                return new;
            }
            lambda = new;
        }
        lambda
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::{rel_error, unit_vector};
    use rand::SeedableRng;

    #[test]
    fn closed_forms_match_finite_differences() {
        let p = BinaryProblem::toy_bump();
        for loss in PointLoss::BOTH {
            for &(z, y) in &[(-3.0, 0.0), (0.4, 1.0), (2.5, 0.0), (-1.2, 1.0)] {
                let e = 1e-5;
                let d1 = (loss.value(z + e, y) - loss.value(z - e, y)) / (2.0 * e);
                let d2 = (loss.dz(z + e, y) - loss.dz(z - e, y)) / (2.0 * e);
                assert!((d1 - loss.dz(z, y)).abs() < 1e-8, "{loss:?} dz at {z}");
                assert!((d2 - loss.dz2(z, y)).abs() < 1e-8, "{loss:?} dz2 at {z}");
            }
            let theta = [0.7, -0.3];
            let (_, g) = p.loss_grad(loss, &theta);
            let fd: Vec<f64> = (0..2)
                .map(|k| {
                    let mut a = theta;
                    let mut b = theta;
                    a[k] += 1e-6;
                    b[k] -= 1e-6;
                    (p.loss(loss, &a) - p.loss(loss, &b)) / 2e-6
                })
                .collect();
            assert!(rel_error(&g, &fd) < 1e-8);
            let h = p.curvature_weights(loss, &theta);
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
            let d = unit_vector(&mut rng, 2);
            let exact = p.directional_curvature(&h, &d);
            let fd = p.fd_directional_curvature(loss, &theta, &d);
            assert!((exact - fd).abs() < 1e-6 * exact.abs().max(1e-3), "{exact} {fd}");
            let hm = p.hessian(&h);
            let quad = crate::linalg::dot(&d, &hm.matvec(&d));
            assert!((quad - exact).abs() < 1e-14);
        }
    }

    #[test]
    fn mse_curvature_sign_changes_exactly_at_one_third_and_two_thirds() {
        let logit = |p: f64| (p / (1.0 - p)).ln();
        assert!(PointLoss::Mse.dz2(logit(0.66), 0.0) > 0.0);
        assert!(PointLoss::Mse.dz2(logit(0.67), 0.0) < 0.0);
        assert!(PointLoss::Mse.dz2(logit(0.34), 1.0) > 0.0);
        assert!(PointLoss::Mse.dz2(logit(0.32), 1.0) < 0.0);
        for k in -200..=200 {
            let z = k as f64 * 0.1;
            assert!(PointLoss::Bce.dz2(z, 0.0) >= 0.0 && PointLoss::Bce.dz2(z, 1.0) >= 0.0);
        }
        let m = PointLoss::Mse.max_abs_dz2();
        assert!(m > 0.1 && m < 0.2, "{m}");
    }
}
