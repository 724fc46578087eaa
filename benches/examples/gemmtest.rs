use std::time::Instant;
// y[m,n] = x[m,k] @ w[n,k]^T with row-major x, w (the linear layer's layout), or the
// transposed formulation y^T = w @ x^T.
fn run(m: usize, n: usize, k: usize, par: gemm::Parallelism, transposed: bool) -> f64 {
    let x = vec![0.5f32; m * k];
    let w = vec![0.25f32; n * k];
    let mut c = vec![0f32; m * n];
    let iters = (2e9 / (m * n * k) as f64).max(3.0) as usize;
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..iters {
            unsafe {
                if !transposed {
                    gemm::gemm(
                        m,
                        n,
                        k,
                        c.as_mut_ptr(),
                        1,
                        n as isize,
                        false,
                        x.as_ptr(),
                        1,
                        k as isize,
                        w.as_ptr(),
                        k as isize,
                        1,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        par,
                    )
                } else {
                    // y^T [n, m] = w [n, k] @ x^T [k, m]; dst (i=o, j=b) at b*n + o.
                    gemm::gemm(
                        n,
                        m,
                        k,
                        c.as_mut_ptr(),
                        n as isize,
                        1,
                        false,
                        w.as_ptr(),
                        1,
                        k as isize,
                        x.as_ptr(),
                        k as isize,
                        1,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        par,
                    )
                }
            };
        }
        best = best.min(t.elapsed().as_secs_f64() / iters as f64);
    }
    best * 1e6
}
fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    // dst[c * rows + r] = src[r * cols + c], in 32x32 blocks.
    const B: usize = 32;
    for r0 in (0..rows).step_by(B) {
        for c0 in (0..cols).step_by(B) {
            for r in r0..(r0 + B).min(rows) {
                for c in c0..(c0 + B).min(cols) {
                    dst[c * rows + r] = src[r * cols + c];
                }
            }
        }
    }
}
fn run_t(m: usize, n: usize, k: usize) -> f64 {
    let x = vec![0.5f32; m * k];
    let w = vec![0.25f32; n * k];
    let mut wt = vec![0f32; n * k];
    let mut c = vec![0f32; m * n];
    let iters = (2e9 / (m * n * k) as f64).max(3.0) as usize;
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..iters {
            transpose(&w, n, k, &mut wt);
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    c.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    x.as_ptr(),
                    1,
                    k as isize,
                    wt.as_ptr(),
                    1,
                    n as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                )
            };
        }
        best = best.min(t.elapsed().as_secs_f64() / iters as f64);
    }
    best * 1e6
}
fn main() {
    for &(m, n, k) in &[
        (32usize, 256usize, 784usize),
        (256, 256, 784),
        (1000, 256, 784),
        (32, 3136, 784),
        (32, 1568, 3136),
    ] {
        println!("{m}x{n}x{k}: transpose+gemm {:.1}us", run_t(m, n, k));
    }
    for &(m, n, k) in &[
        (32usize, 256usize, 784usize),
        (256, 256, 784),
        (1000, 256, 784),
        (32, 3136, 784),
        (32, 1568, 3136),
        (256, 784, 32),
        (32, 784, 256),
    ] {
        let a = run(m, n, k, gemm::Parallelism::None, false);
        let b = run(m, n, k, gemm::Parallelism::None, true);
        let c = run(m, n, k, gemm::Parallelism::Rayon(2), false);
        let d = run(m, n, k, gemm::Parallelism::Rayon(2), true);
        let gf = |us: f64| 2.0 * (m * n * k) as f64 / us / 1e3;
        println!("{m}x{n}x{k}: serial {a:.1}us ({:.0} GF) transposed {b:.1}us ({:.0} GF) | rayon2 {c:.1}us ({:.0}) transposed {d:.1}us ({:.0})", gf(a), gf(b), gf(c), gf(d));
    }
}
