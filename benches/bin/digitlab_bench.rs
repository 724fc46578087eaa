//! Runs one benchmark workload in this process and prints one JSON line:
//! `{"side":"digitlab","workload":..,"samples_per_second":..,"peak_rss_mib":..,..}`.
//!
//! `cargo xtask bench` runs this binary once per workload (so peak RSS is per
//! workload) and the PyTorch reference `benches/reference/bench.py` beside it.
//!
//! ```text
//! digitlab-bench --list
//! digitlab-bench <workload> [--seconds 2] [--warmup 3] [--min-steps 3]
//! ```
use anyhow::{bail, Context, Result};
use digitlab_benches::workloads::{measure, prepare, WORKLOADS};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args.iter().any(|a| a == "--help" || a == "-h") {
        println!("usage: digitlab-bench --list | <workload> [--seconds S] [--warmup N] [--min-steps N]");
        return Ok(());
    }
    if args[0] == "--list" {
        for w in WORKLOADS {
            println!("{}\t{}\t{}", w.name, w.samples_per_step, w.about);
        }
        return Ok(());
    }
    let name = args[0].clone();
    let (mut seconds, mut warmup, mut min_steps) = (2.0f64, 3usize, 3usize);
    let mut it = args[1..].iter();
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--seconds" => seconds = value.parse().with_context(|| format!("--seconds {value}"))?,
            "--warmup" => warmup = value.parse().with_context(|| format!("--warmup {value}"))?,
            "--min-steps" => min_steps = value.parse().with_context(|| format!("--min-steps {value}"))?,
            other => bail!("unknown option {other}"),
        }
    }
    if !(seconds.is_finite() && seconds >= 0.0) {
        bail!("--seconds must be a non-negative number, got {seconds}");
    }
    let mut p = prepare(&name)?;
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
        "peak_rss_mib": digitlab_benches::peak_rss_mib(),
        // CPU time of the warm-up and timed steps (all threads), for reading runs on a busy machine.
        "cpu_seconds": cpu0.zip(cpu1).map(|(a, b)| b - a),
    });
    println!("{line}");
    Ok(())
}
