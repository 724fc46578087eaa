//! The one matrix product behind the kernels: a strided f32 `C (+)= A @ B` run on
//! the calling thread by the selected backend, and its split over threads.
//!
//! Backends: the `gemm` crate (candle's, always built in), and with the cargo
//! feature `mkl` Intel MKL's `cblas_sgemm`, statically linked with MKL's sequential
//! threading layer (see [`crate::mkl`]). `benches/bin/gemm_compare.rs` measures the
//! candidates side by side.
//!
//! Threads: a product is cut into blocks of C, each computed single-threaded on
//! rayon's pool. On the 2-vCPU machine this scales where the `gemm` crate's own
//! rayon parallelism does not (it was slower with two threads than with one at
//! batch 100; table in the README), and it leaves one thread pool in the process
//! whatever the backend: MKL's OpenMP threads and rayon's would spin against each
//! other on two cores.
/// The backend the kernels' products run on: `"gemm"` or `"mkl"`.
pub fn backend() -> &'static str {
    if cfg!(feature = "mkl") {
        "mkl"
    } else {
        "gemm"
    }
}

/// A strided matrix by address: element `(i, j)` is at `ptr + i*rs + j*cs`.
#[derive(Clone, Copy)]
pub(crate) struct Strided<P> {
    pub ptr: P,
    pub rs: usize,
    pub cs: usize,
}

// SAFETY: the blocks a product is split into write disjoint elements of C and only
// read A and B, so sharing the addresses between the pool's threads is sound for
// the duration of `product`, whose caller holds the borrows.
unsafe impl<P> Send for Strided<P> {}
unsafe impl<P> Sync for Strided<P> {}

/// Columns of C in one block are a multiple of this (one AVX-512 register of f32).
const BLOCK_QUANTUM: usize = 16;

/// One product `C = A @ B` (or `C += A @ B` with `accumulate`) of an `m x k` A and a
/// `k x n` B, by address.
#[derive(Clone, Copy)]
pub(crate) struct Product {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub c: Strided<*mut f32>,
    pub accumulate: bool,
    pub a: Strided<*const f32>,
    pub b: Strided<*const f32>,
}

impl Strided<*mut f32> {
    /// The view starting `elems` elements later.
    ///
    /// # Safety
    /// The new start must lie inside the same allocation.
    unsafe fn skip(self, elems: usize) -> Self {
        // SAFETY: the caller's.
        Self {
            ptr: unsafe { self.ptr.add(elems) },
            ..self
        }
    }
}

impl Strided<*const f32> {
    /// The view starting `elems` elements later.
    ///
    /// # Safety
    /// The new start must lie inside the same allocation.
    unsafe fn skip(self, elems: usize) -> Self {
        // SAFETY: the caller's.
        Self {
            ptr: unsafe { self.ptr.add(elems) },
            ..self
        }
    }
}

impl Product {
    /// Rows `start..end` of C and A (`by_rows`), or columns `start..end` of C and B.
    ///
    /// # Safety
    /// `start..end` must lie inside `0..m` (or `0..n`).
    unsafe fn block(self, by_rows: bool, start: usize, end: usize) -> Self {
        // SAFETY: offsets to elements of the views (the caller's range).
        unsafe {
            if by_rows {
                let (c, a) = (self.c.skip(start * self.c.rs), self.a.skip(start * self.a.rs));
                Self {
                    m: end - start,
                    c,
                    a,
                    ..self
                }
            } else {
                let (c, b) = (self.c.skip(start * self.c.cs), self.b.skip(start * self.b.cs));
                Self {
                    n: end - start,
                    c,
                    b,
                    ..self
                }
            }
        }
    }
}

/// Computes `p`, split into `threads` blocks of C on rayon's pool when `threads > 1`.
///
/// # Safety
/// Every element of the `m x k`, `k x n` and `m x n` views must lie inside live
/// allocations, C's elements must be distinct (no zero stride along a dimension
/// longer than 1) and not alias A or B, and nothing else may access C meanwhile.
pub(crate) unsafe fn product(p: Product, threads: usize) {
    if p.m == 0 || p.n == 0 {
        return;
    }
    // Split the longer side of C; columns in whole registers.
    let by_rows = p.m >= p.n;
    let (len, quantum) = if by_rows { (p.m, 1) } else { (p.n, BLOCK_QUANTUM) };
    let chunk = len.div_ceil(threads.max(1)).div_ceil(quantum) * quantum;
    if threads <= 1 || chunk >= len {
        // SAFETY: forwarded from the caller.
        return unsafe { serial(p) };
    }
    rayon::scope(|s| {
        let mut start = 0;
        while start < len {
            let end = (start + chunk).min(len);
            s.spawn(move |_| {
                // The whole value, not its (non-Send) pointer fields, is captured.
                let p = p;
                crate::denormal::ensure_current_thread();
                // SAFETY: block `start..end` of C's rows (or columns) and the matching
                // rows of A (or columns of B): inside the caller's views, and no other
                // block writes these elements of C.
                unsafe { serial(p.block(by_rows, start, end)) }
            });
            start = end;
        }
    });
}

/// The product on the calling thread: MKL when it is built in and can take the
/// strides, the `gemm` crate otherwise.
///
/// # Safety
/// As for [`product`].
unsafe fn serial(p: Product) {
    #[cfg(feature = "mkl")]
    // SAFETY: forwarded from the caller.
    if unsafe { crate::mkl::sgemm(p) } {
        return;
    }
    let Product {
        m,
        n,
        k,
        c,
        accumulate,
        a,
        b,
    } = p;
    // SAFETY: forwarded from the caller. With `accumulate == false` the gemm crate
    // never reads C (alpha is ignored), so C may be uninitialised.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.ptr,
            c.cs as isize,
            c.rs as isize,
            accumulate,
            a.ptr,
            a.cs as isize,
            a.rs as isize,
            b.ptr,
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Threads for a product: the count in `par` (1 for `Parallelism::None`).
pub(crate) fn threads_of(par: gemm::Parallelism) -> usize {
    match par {
        gemm::Parallelism::None => 1,
        gemm::Parallelism::Rayon(t) => t.max(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `C (+)= A @ B` in f64, element by element.
    fn naive(m: usize, n: usize, k: usize, a: (&[f32], usize, usize), b: (&[f32], usize, usize)) -> Vec<f64> {
        let mut c = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k)
                    .map(|l| a.0[i * a.1 + l * a.2] as f64 * b.0[l * b.1 + j * b.2] as f64)
                    .sum();
            }
        }
        c
    }

    /// The backend this build selected (MKL with the `mkl` feature) against an f64
    /// reference, over the layouts the kernels use (plain, transposed A or B,
    /// column-major C, accumulation, a single row or column, shapes the split cuts
    /// unevenly), single-threaded and split over 1 to 3 blocks.
    #[test]
    fn the_backend_matches_a_reference_for_every_layout() {
        let shapes = [
            (1, 7, 5),
            (5, 1, 3),
            (7, 9, 1),
            (33, 17, 40),
            (100, 64, 3),
            (3, 64, 100),
            (64, 75, 6),
        ];
        for &(m, n, k) in &shapes {
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0).collect();
            let b: Vec<f32> = (0..k * n).map(|i| ((i * 53 % 29) as f32 - 14.0) / 9.0).collect();
            // (rs, cs) of A as m x k and of B as k x n: stored plain or transposed.
            for (a_t, b_t, c_t) in [
                (false, false, false),
                (true, false, false),
                (false, true, false),
                (true, true, true),
            ] {
                let (a_rs, a_cs) = if a_t { (1, m) } else { (k, 1) };
                let (b_rs, b_cs) = if b_t { (1, k) } else { (n, 1) };
                let (c_rs, c_cs) = if c_t { (1, m) } else { (n, 1) };
                let want = naive(m, n, k, (&a, a_rs, a_cs), (&b, b_rs, b_cs));
                for accumulate in [false, true] {
                    for threads in 1..=3 {
                        let mut c = vec![0.5f32; m * n];
                        // SAFETY: the views are inside a, b and c, and C's are distinct.
                        unsafe {
                            let p = Product {
                                m,
                                n,
                                k,
                                c: Strided {
                                    ptr: c.as_mut_ptr(),
                                    rs: c_rs,
                                    cs: c_cs,
                                },
                                accumulate,
                                a: Strided {
                                    ptr: a.as_ptr(),
                                    rs: a_rs,
                                    cs: a_cs,
                                },
                                b: Strided {
                                    ptr: b.as_ptr(),
                                    rs: b_rs,
                                    cs: b_cs,
                                },
                            };
                            product(p, threads)
                        };
                        for i in 0..m {
                            for j in 0..n {
                                let got = c[i * c_rs + j * c_cs] as f64;
                                let w = want[i * n + j] + if accumulate { 0.5 } else { 0.0 };
                                assert!(
                                    (got - w).abs() <= 1e-4 * (1.0 + w.abs()),
                                    "{} {m}x{k}x{n} a_t {a_t} b_t {b_t} c_t {c_t} acc {accumulate} threads {threads}: ({i},{j}) {got} vs {w}",
                                    backend()
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// With the `mkl` feature: MKL and the gemm crate agree at the workloads' shapes
    /// on this CPU (some OpenBLAS builds compute wrong results on some CPUs; a BLAS
    /// is only trusted after this check).
    #[cfg(feature = "mkl")]
    #[test]
    fn mkl_agrees_with_the_gemm_crate_at_workload_shapes() {
        for &(m, k, n) in &[
            (1, 784, 256),
            (100, 784, 256),
            (256, 100, 784),
            (32, 3136, 1568),
            (64, 576, 3136),
            (6, 75, 784),
        ] {
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919 % 1013) as f32 / 1013.0) - 0.5).collect();
            let b: Vec<f32> = (0..k * n).map(|i| ((i * 104729 % 997) as f32 / 997.0) - 0.5).collect();
            let (mut via_mkl, mut via_gemm) = (vec![0f32; m * n], vec![0f32; m * n]);
            let (sa, sb) = (
                Strided {
                    ptr: a.as_ptr(),
                    rs: k,
                    cs: 1,
                },
                Strided {
                    ptr: b.as_ptr(),
                    rs: n,
                    cs: 1,
                },
            );
            // SAFETY: row-major views inside the buffers.
            unsafe {
                let c = Strided {
                    ptr: via_mkl.as_mut_ptr(),
                    rs: n,
                    cs: 1,
                };
                let p = Product {
                    m,
                    n,
                    k,
                    c,
                    accumulate: false,
                    a: sa,
                    b: sb,
                };
                assert!(crate::mkl::sgemm(p));
                gemm::gemm(
                    m,
                    n,
                    k,
                    via_gemm.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    a.as_ptr(),
                    1,
                    k as isize,
                    b.as_ptr(),
                    1,
                    n as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            let scale = via_gemm.iter().fold(0f32, |s, v| s.max(v.abs()));
            let err = via_mkl
                .iter()
                .zip(&via_gemm)
                .fold(0f32, |e, (x, y)| e.max((x - y).abs()));
            assert!(
                err <= 1e-5 * scale.max(1.0),
                "{m}x{k}x{n}: max difference {err} (scale {scale})"
            );
        }
    }
}
