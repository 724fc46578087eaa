//! Side-by-side sgemm throughput at the shapes digitlab's workloads run (issue 16):
//! the `gemm` crate (what `digitlab-kernels` calls by default), faer's assembly
//! kernels (`private-gemm-x86`), and any CBLAS library loaded at run time.
//!
//! ```text
//! gemm-compare [--threads 1,2] [--seconds 0.3] [--json FILE]
//!              [--blas NAME=PATH[:SYMBOL_PREFIX]]...
//! gemm-compare --blas openblas=/usr/lib/x86_64-linux-gnu/libopenblas.so.0 \
//!              --blas scipy-openblas=.../libscipy_openblas.so:scipy_ \
//!              --blas mkl=.../libmkl_rt.so.3
//! ```
//!
//! Each library is opened with `dlopen` (`RTLD_LOCAL`), so several that export the
//! same `cblas_sgemm` can be compared in one process; each result is checked
//! against the `gemm` crate's before it is timed. Threads: `--threads 1` runs every
//! side on the calling thread; `2` gives each side its own threading (gemm's rayon,
//! the BLAS's `*_set_num_threads`). MKL's threading layer follows
//! `MKL_THREADING_LAYER` (set `SEQUENTIAL` or `GNU` before the run).
use anyhow::{bail, Context, Result};
use std::time::Instant;

/// One product `C (m x n) = A (m x k) @ B (k x n)`, row-major, with the operands'
/// transposition as the kernels call it.
struct Shape {
    what: &'static str,
    m: usize,
    k: usize,
    n: usize,
    /// A is stored transposed (`k x m`, row-major): the weight gradient `dY^T X`.
    a_t: bool,
    /// B is stored transposed (`n x k`, row-major): `x @ W^T` of a linear layer.
    b_t: bool,
}

const fn s(what: &'static str, m: usize, k: usize, n: usize, a_t: bool, b_t: bool) -> Shape {
    Shape {
        what,
        m,
        k,
        n,
        a_t,
        b_t,
    }
}

/// The workloads' products. Convolutions are `W (O x CKK) @ patches (CKK x pixels)`
/// per block of images, as `digitlab_kernels::conv2d` runs them.
const SHAPES: &[Shape] = &[
    s("MLP 784->256 fwd b1", 1, 784, 256, false, true),
    s("MLP 784->256 fwd b32", 32, 784, 256, false, true),
    s("MLP 784->256 fwd b100", 100, 784, 256, false, true),
    s("MLP 784->256 fwd b256", 256, 784, 256, false, true),
    s("MLP 784->256 fwd b1000", 1000, 784, 256, false, true),
    s("MLP 784->256 dW b100", 256, 100, 784, true, false),
    s("MLP 784->256 dX b100", 100, 256, 784, false, false),
    s("wide 784->3136 fwd b32", 32, 784, 3136, false, true),
    s("wide 3136->1568 fwd b32", 32, 3136, 1568, false, true),
    s("wide 784->3136 dW b32", 3136, 32, 784, true, false),
    s("square 64x4096x4096", 64, 4096, 4096, false, false),
    s("LeNet conv1 6x75 @ 75x784", 6, 75, 784, false, false),
    s("LeNet conv2 16x150 @ 150x100", 16, 150, 100, false, false),
    s("ResNet stem 32px 64x147 @ 147x256", 64, 147, 256, false, false),
    s("ResNet layer1 32px 64x576 @ 576x64", 64, 576, 64, false, false),
    s("ResNet layer1 224px 64x576 @ 576x3136", 64, 576, 3136, false, false),
    s("ResNet layer4 224px 512x4608 @ 4608x49", 512, 4608, 49, false, false),
    s("VGG conv1 224px 64x27 @ 27x50176", 64, 27, 50176, false, false),
    s("VGG conv 224px 128x576 @ 576x12544", 128, 576, 12544, false, false),
    s("VGG conv 224px 512x4608 @ 4608x196", 512, 4608, 196, false, false),
];

type Sgemm = unsafe extern "C" fn(
    order: i32,
    ta: i32,
    tb: i32,
    m: i32,
    n: i32,
    k: i32,
    alpha: f32,
    a: *const f32,
    lda: i32,
    b: *const f32,
    ldb: i32,
    beta: f32,
    c: *mut f32,
    ldc: i32,
);
type SetThreads = unsafe extern "C" fn(n: i32);

const ROW_MAJOR: i32 = 101;
const NO_TRANS: i32 = 111;
const TRANS: i32 = 112;

struct Blas {
    name: String,
    sgemm: Sgemm,
    set_threads: Option<SetThreads>,
    _lib: libloading::Library,
}

impl Blas {
    fn open(spec: &str) -> Result<Self> {
        let (name, rest) = spec
            .split_once('=')
            .with_context(|| format!("--blas {spec}: expected NAME=PATH[:PREFIX]"))?;
        let (path, prefix) = rest.split_once(':').unwrap_or((rest, ""));
        // SAFETY: loading a BLAS runs its initialisers, which is what the user asked for.
        let lib =
            unsafe { libloading::Library::new(path) }.with_context(|| format!("--blas {name}: opening {path}"))?;
        let sym = format!("{prefix}cblas_sgemm");
        // SAFETY: CBLAS's `cblas_sgemm` has this C signature.
        let sgemm: Sgemm = *unsafe { lib.get::<Sgemm>(sym.as_bytes()) }.with_context(|| format!("{path}: no {sym}"))?;
        let mut set_threads = None;
        for t in ["openblas_set_num_threads", "MKL_Set_Num_Threads"] {
            let sym = format!("{prefix}{t}");
            // SAFETY: both take one C int.
            if let Ok(f) = unsafe { lib.get::<SetThreads>(sym.as_bytes()) } {
                set_threads = Some(*f);
                break;
            }
        }
        Ok(Self {
            name: name.to_string(),
            sgemm,
            set_threads,
            _lib: lib,
        })
    }

    fn threads(&self, t: usize) {
        if let Some(f) = self.set_threads {
            // SAFETY: takes a thread count.
            unsafe { f(t as i32) }
        }
    }

    /// The rows `r` and columns `cols` of C; `c` is C's address (shared between blocks).
    fn block(
        &self,
        sh: &Shape,
        a: &[f32],
        b: &[f32],
        c: usize,
        r: std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
    ) {
        let ((a_rs, _), (_, b_cs)) = strides(sh);
        let (lda, ta) = if sh.a_t { (sh.m, TRANS) } else { (sh.k, NO_TRANS) };
        let (ldb, tb) = if sh.b_t { (sh.k, TRANS) } else { (sh.n, NO_TRANS) };
        // SAFETY: a, b and c hold m*k, k*n and m*n elements in the layouts described;
        // the offsets select the block, which no other block writes.
        unsafe {
            (self.sgemm)(
                ROW_MAJOR,
                ta,
                tb,
                r.len() as i32,
                cols.len() as i32,
                sh.k as i32,
                1.0,
                a.as_ptr().offset(r.start as isize * a_rs),
                lda.max(1) as i32,
                b.as_ptr().offset(cols.start as isize * b_cs),
                ldb.max(1) as i32,
                0.0,
                (c as *mut f32).add(r.start * sh.n + cols.start),
                sh.n.max(1) as i32,
            )
        }
    }
}

/// Row and column strides of A and B in elements.
fn strides(sh: &Shape) -> ((isize, isize), (isize, isize)) {
    let a = if sh.a_t { (1, sh.m as isize) } else { (sh.k as isize, 1) };
    let b = if sh.b_t { (1, sh.k as isize) } else { (sh.n as isize, 1) };
    (a, b)
}

fn par(threads: usize) -> gemm::Parallelism {
    if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    }
}

fn gemm_block(
    sh: &Shape,
    a: &[f32],
    b: &[f32],
    c: usize,
    r: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    par: gemm::Parallelism,
) {
    let ((a_rs, a_cs), (b_rs, b_cs)) = strides(sh);
    // SAFETY: the buffers hold the operands in the strides given; the offsets select
    // the block, which no other block writes.
    unsafe {
        gemm::gemm(
            r.len(),
            cols.len(),
            sh.k,
            (c as *mut f32).add(r.start * sh.n + cols.start),
            1,
            sh.n as isize,
            false,
            a.as_ptr().offset(r.start as isize * a_rs),
            a_cs,
            a_rs,
            b.as_ptr().offset(cols.start as isize * b_cs),
            b_cs,
            b_rs,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

fn faer_block(sh: &Shape, a: &[f32], b: &[f32], c: usize, threads: usize) {
    let ((a_rs, a_cs), (b_rs, b_cs)) = strides(sh);
    let alpha = 1.0f32;
    let instr = if std::arch::is_x86_feature_detected!("avx512f") {
        private_gemm_x86::InstrSet::Avx512
    } else {
        private_gemm_x86::InstrSet::Avx256
    };
    // SAFETY: the buffers hold the operands in the strides given; no index arrays.
    unsafe {
        private_gemm_x86::gemm(
            private_gemm_x86::DType::F32,
            private_gemm_x86::IType::U64,
            instr,
            sh.m,
            sh.n,
            sh.k,
            c as *mut (),
            sh.n as isize,
            1,
            std::ptr::null(),
            std::ptr::null(),
            private_gemm_x86::DstKind::Full,
            private_gemm_x86::Accum::Replace,
            a.as_ptr().cast(),
            a_rs,
            a_cs,
            false,
            std::ptr::null(),
            0,
            b.as_ptr().cast(),
            b_rs,
            b_cs,
            false,
            (&alpha as *const f32).cast(),
            threads,
        )
    }
}

/// Runs `f(rows, cols)` on `parts` blocks of C on rayon's pool: C's rows are split
/// when it has at least as many rows as columns, its columns otherwise (blocks of
/// a multiple of 16 columns), each block a single-threaded product. This is how
/// `digitlab_kernels` threads a product whose library threads poorly.
fn split_run(sh: &Shape, parts: usize, f: &(dyn Fn(std::ops::Range<usize>, std::ops::Range<usize>) + Sync)) {
    let by_rows = sh.m >= sh.n;
    let len = if by_rows { sh.m } else { sh.n };
    let quantum = if by_rows { 1 } else { 16 };
    let chunk = len.div_ceil(parts).div_ceil(quantum) * quantum;
    rayon::scope(|sc| {
        let mut start = 0;
        while start < len {
            let end = (start + chunk).min(len);
            let (r, c) = if by_rows {
                (start..end, 0..sh.n)
            } else {
                (0..sh.m, start..end)
            };
            sc.spawn(move |_| f(r, c));
            start = end;
        }
    });
}

fn max_rel_err(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    got.iter().zip(want).fold(0f32, |m, (g, w)| m.max((g - w).abs())) / scale
}

fn main() -> Result<()> {
    let mut threads = vec![1usize, 2];
    let mut seconds = 0.3;
    let mut json_out = None::<String>;
    let mut blas = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--threads" => {
                threads = value()?
                    .split(',')
                    .map(|t| t.parse().context("--threads: comma-separated counts"))
                    .collect::<Result<_>>()?
            }
            "--seconds" => seconds = value()?.parse().context("--seconds")?,
            "--json" => json_out = Some(value()?),
            "--blas" => blas.push(Blas::open(&value()?)?),
            "-h" | "--help" => {
                println!(
                    "usage: gemm-compare [--threads 1,2] [--seconds 0.3] [--json FILE] [--blas NAME=PATH[:PREFIX]]..."
                );
                return Ok(());
            }
            other => bail!("unknown option {other}"),
        }
    }
    let mut sides = vec!["gemm 0.19".to_string(), "faer private-gemm-x86".to_string()];
    sides.extend(blas.iter().map(|b| b.name.clone()));
    // With more than one thread: each side's own threading, then the product split
    // into single-threaded blocks on rayon's pool.
    let split_sides: Vec<String> = std::iter::once("gemm 0.19".to_string())
        .chain(blas.iter().map(|b| b.name.clone()))
        .map(|n| format!("{n} split"))
        .collect();
    if threads.iter().any(|&t| t > 1) {
        sides.extend(split_sides.iter().cloned());
    }
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    println!("CPU: {cpu}; GFLOP/s, median of 5 interleaved rounds; threads {threads:?}");
    println!("| shape (m x k x n) | threads | {} |", sides.join(" | "));
    println!("| --- | ---: |{}", " ---: |".repeat(sides.len()));
    let mut rows = Vec::new();
    for sh in SHAPES {
        let a: Vec<f32> = (0..sh.m * sh.k)
            .map(|i| ((i * 7919 % 1013) as f32 / 1013.0) - 0.5)
            .collect();
        let b: Vec<f32> = (0..sh.k * sh.n)
            .map(|i| ((i * 104729 % 997) as f32 / 997.0) - 0.5)
            .collect();
        let mut want = vec![0f32; sh.m * sh.n];
        gemm_block(sh, &a, &b, want.as_mut_ptr() as usize, 0..sh.m, 0..sh.n, par(1));
        for &t in &threads {
            // Every side: a preparation (thread settings) and one product into its own C.
            type Side<'s> = (Box<dyn Fn() + 's>, Box<dyn Fn(usize) + 's>);
            let (a, b) = (&a, &b);
            let mut list: Vec<Side> = vec![
                (
                    Box::new(|| {}),
                    Box::new(move |c| gemm_block(sh, a, b, c, 0..sh.m, 0..sh.n, par(t))),
                ),
                (Box::new(|| {}), Box::new(move |c| faer_block(sh, a, b, c, t))),
            ];
            for bl in &blas {
                let prep = move || bl.threads(t);
                list.push((
                    Box::new(prep),
                    Box::new(move |c| bl.block(sh, a, b, c, 0..sh.m, 0..sh.n)),
                ));
            }
            if t > 1 {
                list.push((
                    Box::new(|| {}),
                    Box::new(move |c| split_run(sh, t, &|r, cols| gemm_block(sh, a, b, c, r, cols, par(1)))),
                ));
                for bl in &blas {
                    list.push((
                        Box::new(move || bl.threads(1)),
                        Box::new(move |c| split_run(sh, t, &|r, cols| bl.block(sh, a, b, c, r, cols))),
                    ));
                }
            }
            let mut outs: Vec<Vec<f32>> = list.iter().map(|_| vec![0f32; sh.m * sh.n]).collect();
            // Check every side, and size a batch to about seconds / 5 for each.
            let mut reps = Vec::new();
            for (i, (prep, run)) in list.iter().enumerate() {
                prep();
                let c = outs[i].as_mut_ptr() as usize;
                run(c);
                let err = max_rel_err(&outs[i], &want);
                if err > 1e-5 {
                    bail!("side {i} disagrees with gemm at {}: relative error {err}", sh.what);
                }
                let t0 = Instant::now();
                run(c);
                let once = t0.elapsed().as_secs_f64().max(1e-7);
                reps.push(((seconds / 5.0 / once).ceil() as usize).max(1));
            }
            // Five rounds, the sides interleaved in each, so drift hits all alike.
            let mut samples = vec![Vec::new(); list.len()];
            for _ in 0..5 {
                for (i, (prep, run)) in list.iter().enumerate() {
                    prep();
                    let c = outs[i].as_mut_ptr() as usize;
                    let t0 = Instant::now();
                    for _ in 0..reps[i] {
                        run(c);
                    }
                    samples[i].push(2.0 * (sh.m * sh.k * sh.n * reps[i]) as f64 / t0.elapsed().as_secs_f64() / 1e9);
                }
            }
            let mut rates: Vec<f64> = samples
                .into_iter()
                .map(|mut v| {
                    v.sort_by(|x, y| x.total_cmp(y));
                    v[2]
                })
                .collect();
            if t == 1 && threads.iter().any(|&t| t > 1) {
                rates.extend(std::iter::repeat_n(f64::NAN, split_sides.len()));
            }
            let cells: Vec<String> = rates
                .iter()
                .map(|r| if r.is_nan() { "".to_string() } else { format!("{r:.1}") })
                .collect();
            println!(
                "| {} ({}x{}x{}) | {t} | {} |",
                sh.what,
                sh.m,
                sh.k,
                sh.n,
                cells.join(" | ")
            );
            rows.push(serde_json::json!({
                "shape": sh.what, "m": sh.m, "k": sh.k, "n": sh.n, "threads": t,
                "gflops": sides.iter().zip(&rates).map(|(k, v)| (k.clone(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
            }));
        }
    }
    if let Some(path) = json_out {
        let doc = serde_json::json!({ "cpu": cpu, "sides": sides, "rows": rows });
        std::fs::write(&path, serde_json::to_string_pretty(&doc)?).with_context(|| format!("writing {path}"))?;
    }
    Ok(())
}
