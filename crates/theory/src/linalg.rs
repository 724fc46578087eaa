//! Small dense linear algebra in f64: a row-major [`Matrix`], a cyclic Jacobi
//! eigen-solver for symmetric matrices ([`sym_eigen`]), Lanczos with full
//! re-orthogonalisation for the extreme eigenvalues of a large symmetric operator
//! given only by matrix-vector products ([`lanczos_extremes`]), and seeded Gaussian
//! vectors.
//!
//! **Why hand-written.** The checks need eigenvalues of symmetric matrices of at most a
//! few hundred rows (the Hessian of a 65-parameter logistic model, of a 130-parameter
//! linear network, a 5x5 softmax Jacobian). The cyclic Jacobi method is ~60 lines, has
//! no tuning knobs, is accurate to machine precision for symmetric matrices (including
//! tiny eigenvalues, which matter here because the *sign* of the smallest eigenvalue is
//! the evidence) and converges quadratically. No small, well-kept crate fits better:
//! `nalgebra` would add a large compile-time dependency for one routine. Everything
//! here is tested against matrices with known spectra.
use crate::error::{Result, TheoryError};
use rand::Rng;

/// Dense row-major matrix of f64.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    /// `rows * cols` values, row by row.
    pub data: Vec<f64>,
}

impl Matrix {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    pub fn identity(n: usize) -> Self {
        let mut m = Self::zeros(n, n);
        for i in 0..n {
            m.data[i * n + i] = 1.0;
        }
        m
    }

    /// `rows x cols` matrix with entry `(i, j) = f(i, j)`.
    pub fn from_fn(rows: usize, cols: usize, mut f: impl FnMut(usize, usize) -> f64) -> Self {
        let mut data = Vec::with_capacity(rows * cols);
        for i in 0..rows {
            for j in 0..cols {
                data.push(f(i, j));
            }
        }
        Self { rows, cols, data }
    }

    /// Square diagonal matrix.
    pub fn diag(values: &[f64]) -> Self {
        let n = values.len();
        Self::from_fn(n, n, |i, j| if i == j { values[i] } else { 0.0 })
    }

    #[inline]
    pub fn get(&self, i: usize, j: usize) -> f64 {
        self.data[i * self.cols + j]
    }

    #[inline]
    pub fn set(&mut self, i: usize, j: usize, v: f64) {
        self.data[i * self.cols + j] = v;
    }

    pub fn row(&self, i: usize) -> &[f64] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    pub fn transpose(&self) -> Matrix {
        Matrix::from_fn(self.cols, self.rows, |i, j| self.get(j, i))
    }

    /// `self * v`.
    pub fn matvec(&self, v: &[f64]) -> Vec<f64> {
        assert_eq!(v.len(), self.cols, "matvec: vector length");
        (0..self.rows).map(|i| dot(self.row(i), v)).collect()
    }

    /// `selfᵀ * v`.
    pub fn matvec_t(&self, v: &[f64]) -> Vec<f64> {
        assert_eq!(v.len(), self.rows, "matvec_t: vector length");
        let mut out = vec![0.0; self.cols];
        for (i, &vi) in v.iter().enumerate() {
            if vi != 0.0 {
                axpy(vi, self.row(i), &mut out);
            }
        }
        out
    }

    /// Matrix product `self * other`.
    pub fn matmul(&self, other: &Matrix) -> Matrix {
        assert_eq!(self.cols, other.rows, "matmul: inner dimensions");
        let mut out = Matrix::zeros(self.rows, other.cols);
        for i in 0..self.rows {
            let orow = &mut out.data[i * other.cols..(i + 1) * other.cols];
            for k in 0..self.cols {
                let a = self.data[i * self.cols + k];
                if a != 0.0 {
                    axpy(a, other.row(k), orow);
                }
            }
        }
        out
    }

    /// Largest `|a_ij - a_ji|` (0 for a symmetric matrix).
    pub fn asymmetry(&self) -> f64 {
        let mut worst = 0.0f64;
        for i in 0..self.rows {
            for j in 0..i {
                worst = worst.max((self.get(i, j) - self.get(j, i)).abs());
            }
        }
        worst
    }

    /// `(A + Aᵀ)/2` (removes the rounding asymmetry of a finite-difference Hessian).
    pub fn symmetrized(&self) -> Matrix {
        Matrix::from_fn(self.rows, self.cols, |i, j| 0.5 * (self.get(i, j) + self.get(j, i)))
    }

    /// Frobenius norm.
    pub fn frobenius(&self) -> f64 {
        norm(&self.data)
    }
}

/// Dot product with four accumulators (lets the compiler vectorise the loop).
#[inline]
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    debug_assert_eq!(a.len(), b.len());
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f64; 4];
    let chunks = n / 4;
    for c in 0..chunks {
        let i = 4 * c;
        acc[0] += a[i] * b[i];
        acc[1] += a[i + 1] * b[i + 1];
        acc[2] += a[i + 2] * b[i + 2];
        acc[3] += a[i + 3] * b[i + 3];
    }
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for i in 4 * chunks..n {
        s += a[i] * b[i];
    }
    s
}

/// `y += a * x`.
#[inline]
pub fn axpy(a: f64, x: &[f64], y: &mut [f64]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

/// Euclidean norm.
pub fn norm(v: &[f64]) -> f64 {
    dot(v, v).sqrt()
}

/// `‖a - b‖ / max(‖a‖, ‖b‖)`: the relative error of two gradient vectors (0 when both
/// are exactly zero).
pub fn rel_error(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "rel_error: lengths differ");
    let diff: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let scale = norm(a).max(norm(b));
    if scale == 0.0 {
        0.0
    } else {
        norm(&diff) / scale
    }
}

/// Largest absolute difference of two equally long slices.
pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "max_abs_diff: lengths differ");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// One standard normal sample (Box-Muller), from any `rand` generator.
pub fn gaussian<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// A vector of `n` standard normal samples.
pub fn gaussian_vec<R: Rng + ?Sized>(rng: &mut R, n: usize) -> Vec<f64> {
    (0..n).map(|_| gaussian(rng)).collect()
}

/// A direction drawn uniformly from the unit sphere in `R^n`.
pub fn unit_vector<R: Rng + ?Sized>(rng: &mut R, n: usize) -> Vec<f64> {
    loop {
        let v = gaussian_vec(rng, n);
        let nv = norm(&v);
        if nv > 1e-12 {
            return v.into_iter().map(|x| x / nv).collect();
        }
    }
}

/// Eigen-decomposition of a symmetric matrix.
#[derive(Debug, Clone)]
pub struct SymEigen {
    /// Eigenvalues in ascending order.
    pub values: Vec<f64>,
    /// Unit eigenvectors as the columns, in the order of `values`.
    pub vectors: Matrix,
    /// Jacobi sweeps used.
    pub sweeps: usize,
}

impl SymEigen {
    pub fn min(&self) -> f64 {
        self.values[0]
    }
    pub fn max(&self) -> f64 {
        *self.values.last().expect("non-empty")
    }
    /// The eigenvector of eigenvalue `k` (ascending order).
    pub fn vector(&self, k: usize) -> Vec<f64> {
        (0..self.vectors.rows).map(|i| self.vectors.get(i, k)).collect()
    }
}

/// All eigenvalues and eigenvectors of a symmetric matrix by the cyclic Jacobi method.
///
/// Each sweep zeroes every off-diagonal pair `(p, q)` with a plane rotation
/// `A ← Jᵀ A J`, choosing the smaller rotation angle (`t = sgn θ / (|θ| + √(θ²+1))`,
/// `θ = (a_qq - a_pp) / 2a_pq`) for stability; sweeps stop when the off-diagonal mass
/// is below `1e-30` of the total (or exactly zero). Cost `O(n³)` per sweep; typically
/// 6-10 sweeps. The input is symmetrised first; an input whose asymmetry exceeds
/// `1e-8` of its norm is rejected (it is not a Hessian or Jacobian of the kind the
/// checks produce).
pub fn sym_eigen(a: &Matrix) -> Result<SymEigen> {
    if a.rows != a.cols || a.rows == 0 {
        return Err(TheoryError::invalid(format!(
            "sym_eigen needs a non-empty square matrix, got {}x{}",
            a.rows, a.cols
        )));
    }
    if a.data.iter().any(|v| !v.is_finite()) {
        return Err(TheoryError::invalid("sym_eigen: matrix has non-finite entries"));
    }
    let scale = a.frobenius();
    if a.asymmetry() > 1e-8 * scale.max(1e-300) {
        return Err(TheoryError::invalid(format!(
            "sym_eigen: matrix is not symmetric (asymmetry {:.3e}, norm {:.3e})",
            a.asymmetry(),
            scale
        )));
    }
    let n = a.rows;
    let mut m = a.symmetrized();
    let mut v = Matrix::identity(n);
    let total = m.frobenius().powi(2);
    let mut sweeps = 0;
    const MAX_SWEEPS: usize = 100;
    loop {
        let mut off = 0.0;
        for p in 0..n {
            for q in p + 1..n {
                off += m.get(p, q).powi(2);
            }
        }
        if off == 0.0 || off <= 1e-30 * total {
            break;
        }
        if sweeps == MAX_SWEEPS {
            return Err(TheoryError::NoConvergence {
                routine: "Jacobi eigenvalue sweep",
                detail: format!("off-diagonal mass {off:.3e} after {MAX_SWEEPS} sweeps ({n}x{n})"),
            });
        }
        sweeps += 1;
        for p in 0..n {
            for q in p + 1..n {
                let apq = m.get(p, q);
                if apq == 0.0 {
                    continue;
                }
                let theta = (m.get(q, q) - m.get(p, p)) / (2.0 * apq);
                let t = if theta >= 0.0 { 1.0 } else { -1.0 } / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                // Columns p, q of A J.
                for k in 0..n {
                    let akp = m.get(k, p);
                    let akq = m.get(k, q);
                    m.set(k, p, c * akp - s * akq);
                    m.set(k, q, s * akp + c * akq);
                }
                // Rows p, q of Jᵀ (A J).
                for k in 0..n {
                    let apk = m.get(p, k);
                    let aqk = m.get(q, k);
                    m.set(p, k, c * apk - s * aqk);
                    m.set(q, k, s * apk + c * aqk);
                }
                m.set(p, q, 0.0);
                m.set(q, p, 0.0);
                for k in 0..n {
                    let vkp = v.get(k, p);
                    let vkq = v.get(k, q);
                    v.set(k, p, c * vkp - s * vkq);
                    v.set(k, q, s * vkp + c * vkq);
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| m.get(i, i).total_cmp(&m.get(j, j)));
    let values = order.iter().map(|&i| m.get(i, i)).collect();
    let vectors = Matrix::from_fn(n, n, |r, c| v.get(r, order[c]));
    Ok(SymEigen {
        values,
        vectors,
        sweeps,
    })
}

/// Extreme eigen-pairs of a symmetric operator from Lanczos iterations.
#[derive(Debug, Clone)]
pub struct LanczosResult {
    /// Smallest Ritz value: `xᵀHx` for the unit vector `min_vector`, hence an *upper
    /// bound* on the smallest eigenvalue. A negative value proves that `H` has a
    /// direction of negative curvature (namely `min_vector`).
    pub min_value: f64,
    pub min_vector: Vec<f64>,
    /// Largest Ritz value (a lower bound on the largest eigenvalue).
    pub max_value: f64,
    /// Lanczos steps taken (fewer than asked on an invariant subspace).
    pub steps: usize,
}

/// Lanczos with full re-orthogonalisation: `steps` products `H v` build a Krylov basis
/// `Q`, the eigenvalues of the tridiagonal `T = QᵀHQ` (by [`sym_eigen`]) are the Ritz
/// values. The extreme Ritz values converge first, which is all the checks need.
///
/// `matvec(v)` must return `H v` for a symmetric `H` of size `n`. The start vector is
/// a seeded random unit vector. The returned minimum is re-evaluated as the Rayleigh
/// quotient of its Ritz vector (one extra product), so it is exactly the curvature
/// along a concrete direction, not only an estimate.
pub fn lanczos_extremes<R: Rng + ?Sized>(
    n: usize,
    steps: usize,
    rng: &mut R,
    mut matvec: impl FnMut(&[f64]) -> Vec<f64>,
) -> Result<LanczosResult> {
    if n == 0 || steps == 0 {
        return Err(TheoryError::invalid("lanczos_extremes needs n >= 1 and steps >= 1"));
    }
    let k_max = steps.min(n);
    let mut q: Vec<Vec<f64>> = vec![unit_vector(rng, n)];
    let mut alpha: Vec<f64> = Vec::new();
    let mut beta: Vec<f64> = Vec::new();
    let mut scale = 0.0f64;
    for j in 0..k_max {
        let mut r = matvec(&q[j]);
        let a = dot(&q[j], &r);
        alpha.push(a);
        scale = scale.max(norm(&r));
        // Full re-orthogonalisation, twice ("twice is enough").
        for _ in 0..2 {
            for qi in &q {
                let c = dot(qi, &r);
                axpy(-c, qi, &mut r);
            }
        }
        let b = norm(&r);
        if j + 1 == k_max || b <= 1e-12 * scale.max(1e-300) {
            break;
        }
        beta.push(b);
        q.push(r.into_iter().map(|x| x / b).collect());
    }
    let k = alpha.len();
    let t = Matrix::from_fn(k, k, |i, j| {
        if i == j {
            alpha[i]
        } else if i + 1 == j {
            beta[i]
        } else if j + 1 == i {
            beta[j]
        } else {
            0.0
        }
    });
    let eig = sym_eigen(&t)?;
    let y = eig.vector(0);
    let mut x = vec![0.0; n];
    for (i, qi) in q.iter().take(k).enumerate() {
        axpy(y[i], qi, &mut x);
    }
    let nx = norm(&x);
    x.iter_mut().for_each(|v| *v /= nx);
    let hx = matvec(&x);
    Ok(LanczosResult {
        min_value: dot(&x, &hx),
        min_vector: x,
        max_value: eig.max(),
        steps: k,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn random_symmetric_with_spectrum(values: &[f64], seed: u64) -> Matrix {
        // Q diag(values) Qᵀ with Q from Gram-Schmidt of a random matrix.
        let n = values.len();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut qs: Vec<Vec<f64>> = Vec::new();
        while qs.len() < n {
            let mut v = gaussian_vec(&mut rng, n);
            for q in &qs {
                let c = dot(q, &v);
                axpy(-c, q, &mut v);
            }
            let nv = norm(&v);
            qs.push(v.into_iter().map(|x| x / nv).collect());
        }
        Matrix::from_fn(n, n, |i, j| (0..n).map(|k| qs[k][i] * values[k] * qs[k][j]).sum())
    }

    #[test]
    fn jacobi_recovers_a_known_spectrum_including_negative_and_zero() {
        let values = [-3.5, -1e-6, 0.0, 0.25, 1.0, 2.0, 7.0];
        let a = random_symmetric_with_spectrum(&values, 3);
        let e = sym_eigen(&a).unwrap();
        for (got, want) in e.values.iter().zip(values) {
            assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        }
        // A v = λ v and orthonormal vectors.
        for k in 0..values.len() {
            let v = e.vector(k);
            let av = a.matvec(&v);
            let lv: Vec<f64> = v.iter().map(|x| x * e.values[k]).collect();
            assert!(max_abs_diff(&av, &lv) < 1e-12);
            assert!((norm(&v) - 1.0).abs() < 1e-12);
        }
    }

    #[test]
    fn jacobi_two_by_two_saddle() {
        // [[0, c], [c, 0]] has eigenvalues ±c: the Hessian of w1*w2 at the origin.
        let a = Matrix::from_fn(2, 2, |i, j| if i == j { 0.0 } else { 1.5 });
        let e = sym_eigen(&a).unwrap();
        assert!((e.values[0] + 1.5).abs() < 1e-15 && (e.values[1] - 1.5).abs() < 1e-15);
        let asym = Matrix::from_fn(2, 2, |i, j| (i * 2 + j) as f64);
        assert!(sym_eigen(&asym).is_err());
    }

    #[test]
    fn lanczos_finds_the_extremes_from_matvecs_only() {
        let mut values: Vec<f64> = (0..60).map(|i| 0.1 * i as f64).collect();
        values[0] = -2.0;
        values[59] = 9.0;
        let a = random_symmetric_with_spectrum(&values, 5);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let r = lanczos_extremes(60, 30, &mut rng, |v| a.matvec(v)).unwrap();
        assert!((r.min_value + 2.0).abs() < 1e-6, "{}", r.min_value);
        assert!((r.max_value - 9.0).abs() < 1e-6, "{}", r.max_value);
        // The Ritz vector is a genuine negative-curvature direction.
        let q = dot(&r.min_vector, &a.matvec(&r.min_vector));
        assert!(q < -1.99);
    }

    #[test]
    fn gaussian_samples_have_unit_variance() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let v = gaussian_vec(&mut rng, 20_000);
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.03 && (var - 1.0).abs() < 0.05, "{mean} {var}");
        assert!((norm(&unit_vector(&mut rng, 7)) - 1.0).abs() < 1e-12);
    }
}
