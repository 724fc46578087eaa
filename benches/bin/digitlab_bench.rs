//! Runs one benchmark workload in this process and prints one JSON line:
//! `{"side":"digitlab","workload":..,"samples_per_second":..,"peak_rss_mib":..,..}`.
//!
//! `cargo xtask bench` runs this binary once per workload (so peak RSS is per
//! workload) and the PyTorch reference `benches/reference/bench.py` beside it.
//!
//! ```text
//! digitlab-bench --list
//! digitlab-bench <workload> [--seconds 2] [--warmup 3] [--min-steps 3]
//! digitlab-bench gpu_<workload> [--device cuda] [--dtype f32|bf16] [--scale 1] ...
//! ```
//!
//! The `gpu_*` workloads (`digitlab_benches::gpu`, for `scripts/gpu-check.sh`) run
//! on `--device` (default `cuda`) in `--dtype`.
use anyhow::{bail, Context, Result};
use digitlab_benches::gpu::{prepare_gpu, GPU_WORKLOADS};
use digitlab_benches::workloads::{measure, prepare, WORKLOADS};
use digitlab_models::Precision;

fn main() -> Result<()> {
    // First, while this is the only thread.
    digitlab_kernels::runtime::pin_thread_count();
    digitlab_kernels::runtime::shorten_pool_spin();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args.iter().any(|a| a == "--help" || a == "-h") {
        println!("usage: digitlab-bench --list | --list-gpu | <workload> [--seconds S] [--warmup N] [--min-steps N] [--device cpu|cuda] [--dtype f32|bf16] [--scale F]");
        return Ok(());
    }
    // `--list` is what `cargo xtask bench` runs (CPU workloads); `--list-gpu` the
    // workloads of scripts/gpu-check.sh.
    if args[0] == "--list" || args[0] == "--list-gpu" {
        let list = if args[0] == "--list" { WORKLOADS } else { GPU_WORKLOADS };
        for w in list {
            println!("{}\t{}\t{}", w.name, w.samples_per_step, w.about);
        }
        return Ok(());
    }
    let name = args[0].clone();
    let (mut seconds, mut warmup, mut min_steps) = (2.0f64, 3usize, 3usize);
    let (mut device, mut dtype, mut scale) = (None::<String>, Precision::F32, 1.0f64);
    let mut it = args[1..].iter();
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--seconds" => seconds = value.parse().with_context(|| format!("--seconds {value}"))?,
            "--warmup" => warmup = value.parse().with_context(|| format!("--warmup {value}"))?,
            "--min-steps" => min_steps = value.parse().with_context(|| format!("--min-steps {value}"))?,
            "--device" => device = Some(value.clone()),
            "--dtype" => dtype = value.parse().map_err(anyhow::Error::msg)?,
            "--scale" => scale = value.parse().with_context(|| format!("--scale {value}"))?,
            other => bail!("unknown option {other}"),
        }
    }
    if !(seconds.is_finite() && seconds >= 0.0) {
        bail!("--seconds must be a non-negative number, got {seconds}");
    }
    let gpu_workload = name.starts_with("gpu_");
    let mut p = if gpu_workload {
        let dev = match device.as_deref().unwrap_or("cuda") {
            "cpu" => candle_core::Device::Cpu,
            "cuda" => candle_core::Device::new_cuda(0).context("--device cuda")?,
            other => bail!("--device {other}: use cpu or cuda"),
        };
        prepare_gpu(&name, &dev, dtype, scale)?
    } else {
        if device.is_some() || dtype != Precision::F32 {
            bail!("--device and --dtype apply to the gpu_* workloads only; {name} runs on the CPU in f32");
        }
        prepare(&name)?
    };
    if digitlab_benches::workloads::is_end_to_end(&name) {
        // A whole run is one step, timed once (the PyTorch side does the same).
        (warmup, seconds, min_steps) = (0, 0.0, 1);
    }
    let cpu0 = digitlab_benches::cpu_seconds();
    let m = measure(&mut p, warmup, seconds, min_steps)?;
    let cpu1 = digitlab_benches::cpu_seconds();
    let line = serde_json::json!({
        "side": "digitlab",
        "workload": name,
        "samples_per_second": m.samples_per_second,
        "steps": m.steps,
        "seconds": m.seconds,
        "samples_per_step": p.workload.samples_per_step,
        "warmup": warmup,
        "threads": candle_core::utils::get_num_threads(),
        // Which library multiplies the matrices (`gemm`, or `mkl` with digitlab-kernels/mkl).
        "matmul_backend": digitlab_kernels::sgemm::backend(),
        // The e2e workloads run the `digitlab` CLI as a child: its peak counts.
        "peak_rss_mib": match (digitlab_benches::peak_rss_mib(), digitlab_benches::children_peak_rss_mib()) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        },
        // CPU time of the warm-up and timed steps (all threads), for reading runs on a busy machine.
        "cpu_seconds": cpu0.zip(cpu1).map(|(a, b)| b - a),
        "children_cpu_seconds": digitlab_benches::children_cpu_seconds(),
        "device": if gpu_workload { device.as_deref().unwrap_or("cuda") } else { "cpu" },
        "dtype": if gpu_workload { dtype.name() } else { "f32" },
    });
    println!("{line}");
    Ok(())
}
