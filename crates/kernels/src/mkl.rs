//! Intel MKL's `cblas_sgemm` (cargo feature `mkl`), statically linked with the
//! sequential threading layer: every call runs on the calling thread, and
//! [`crate::sgemm::product`] splits big products over rayon's pool.
//!
//! The build script links `libmkl_intel_lp64.a`, `libmkl_sequential.a` and
//! `libmkl_core.a` from `$MKLROOT/lib` (the layout of PyPI's `mkl-static` wheel and
//! of oneAPI; `cargo xtask mkl` installs the wheel into `target/mkl`).
use crate::sgemm::{Product, Strided};
use std::os::raw::c_int;

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

extern "C" {
    fn cblas_sgemm(
        layout: c_int,
        trans_a: c_int,
        trans_b: c_int,
        m: c_int,
        n: c_int,
        k: c_int,
        alpha: f32,
        a: *const f32,
        lda: c_int,
        b: *const f32,
        ldb: c_int,
        beta: f32,
        c: *mut f32,
        ldc: c_int,
    );
}

/// How CBLAS (row-major) can read a `rows x cols` operand with strides `(rs, cs)`:
/// `(transposed, leading dimension)`, or `None` when neither stride is unit (or a
/// leading dimension would be too short or overflow a C int).
fn operand(rows: usize, cols: usize, rs: usize, cs: usize) -> Option<(bool, c_int)> {
    // Along a dimension of length 1 the stride is never used.
    if cs == 1 || cols == 1 {
        let ld = if rows == 1 { cols.max(1) } else { rs };
        if ld >= cols.max(1) {
            return Some((false, c_int::try_from(ld).ok()?));
        }
    }
    if rs == 1 || rows == 1 {
        let ld = if cols == 1 { rows.max(1) } else { cs };
        if ld >= rows.max(1) {
            return Some((true, c_int::try_from(ld).ok()?));
        }
    }
    None
}

/// `C (+)= A @ B` through MKL; `false` (nothing done) when the strides are not ones
/// CBLAS takes, so the caller uses the `gemm` crate.
///
/// # Safety
/// As for [`crate::sgemm::product`].
pub(crate) unsafe fn sgemm(p: Product) -> bool {
    let Product {
        m,
        n,
        k,
        c,
        accumulate,
        a,
        b,
    } = p;
    // A row-major C is the product itself; a column-major one is C^T = B^T A^T.
    let (m, n, a, b, ldc) = match operand(m, n, c.rs, c.cs) {
        Some((false, ldc)) => (m, n, a, b, ldc),
        Some((true, ldc)) => {
            let t = |x: Strided<*const f32>| Strided {
                rs: x.cs,
                cs: x.rs,
                ..x
            };
            (n, m, t(b), t(a), ldc)
        }
        None => return false,
    };
    let (Some((ta, lda)), Some((tb, ldb))) = (operand(m, k, a.rs, a.cs), operand(k, n, b.rs, b.cs)) else {
        return false;
    };
    let (Ok(mi), Ok(ni), Ok(ki)) = (c_int::try_from(m), c_int::try_from(n), c_int::try_from(k)) else {
        return false;
    };
    let flag = |t: bool| if t { TRANS } else { NO_TRANS };
    // SAFETY: the caller guarantees the views; the layouts given to CBLAS address
    // exactly the elements of those views. With beta = 0, CBLAS does not read C.
    unsafe {
        cblas_sgemm(
            ROW_MAJOR,
            flag(ta),
            flag(tb),
            mi,
            ni,
            ki,
            1.0,
            a.ptr,
            lda,
            b.ptr,
            ldb,
            if accumulate { 1.0 } else { 0.0 },
            c.ptr,
            ldc,
        )
    };
    true
}

#[cfg(test)]
mod tests {
    use super::operand;

    #[test]
    fn operand_layouts() {
        assert_eq!(operand(3, 4, 4, 1), Some((false, 4)));
        assert_eq!(operand(3, 4, 1, 3), Some((true, 3)));
        assert_eq!(operand(3, 4, 8, 1), Some((false, 8)));
        // A single row or column: its unused stride does not matter.
        assert_eq!(operand(1, 4, 0, 1), Some((false, 4)));
        assert_eq!(operand(4, 1, 1, 0), Some((false, 1)));
        assert_eq!(operand(1, 4, 7, 3), Some((true, 3)));
        // Neither stride unit, or overlapping rows (a broadcast): not CBLAS's.
        assert_eq!(operand(3, 4, 8, 2), None);
        assert_eq!(operand(3, 4, 0, 1), None);
    }
}
