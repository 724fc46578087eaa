//! `cargo xtask bench`: digitlab's benchmark workloads side by side with the PyTorch
//! reference.
//!
//! Each workload runs in its own process (`digitlab-bench <workload>` for digitlab,
//! `python3 benches/reference/bench.py <workload>` for PyTorch), so the peak RSS each
//! process reports (`VmHWM`) belongs to that workload alone. Both sides get the same
//! thread count (`RAYON_NUM_THREADS`, `OMP_NUM_THREADS`, `torch.set_num_threads`).
//! Rounds alternate which side goes first, and the table shows the median of the
//! rounds. Results go to `benches/results/<date>.json` (written to a `.tmp` file and
//! renamed; entries of workloads not run this time are kept).
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Options {
    /// Comma-separated substrings; a workload runs when its name contains any.
    pub filter: Option<String>,
    pub compare_pytorch: bool,
    pub seconds: f64,
    pub warmup: usize,
    pub rounds: usize,
    pub threads: usize,
    /// Python interpreter for the reference side (default: $DIGITLAB_PYTHON, else python3).
    pub python: Option<String>,
    /// Where `<date>.json` goes (default: `benches/results`).
    pub results_dir: Option<PathBuf>,
    /// Do not write the results file.
    pub no_save: bool,
}

/// One side's measurement of one workload in one round.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub samples_per_second: f64,
    pub peak_rss_mib: Option<f64>,
    pub raw: Value,
}

/// Both sides of one workload over all rounds.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub name: String,
    pub about: String,
    pub samples_per_step: usize,
    pub digitlab: Vec<Run>,
    pub pytorch: Vec<Run>,
    pub errors: Vec<String>,
}

impl Row {
    pub fn digitlab_median(&self) -> Option<f64> {
        median(self.digitlab.iter().map(|r| r.samples_per_second).collect())
    }
    pub fn pytorch_median(&self) -> Option<f64> {
        median(self.pytorch.iter().map(|r| r.samples_per_second).collect())
    }
    /// digitlab / PyTorch throughput (higher is better for digitlab).
    pub fn ratio(&self) -> Option<f64> {
        match (self.digitlab_median(), self.pytorch_median()) {
            (Some(d), Some(p)) if p > 0.0 => Some(d / p),
            _ => None,
        }
    }
    fn peak(runs: &[Run]) -> Option<f64> {
        runs.iter()
            .filter_map(|r| r.peak_rss_mib)
            .fold(None, |a, b| Some(a.map_or(b, |a: f64| a.max(b))))
    }
}

pub fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Builds `digitlab-bench` in release mode and returns the path of the executable.
fn build_bench_binary(root: &Path) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("building digitlab-bench (release)...");
    let out = Command::new(&cargo)
        .current_dir(root)
        .args([
            "build",
            "--release",
            "-p",
            "digitlab-benches",
            "--bin",
            "digitlab-bench",
            // The e2e workloads run the CLI.
            "-p",
            "digitlab-cli",
            "--bin",
            "digitlab",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {cargo} build"))?;
    if !out.status.success() {
        bail!("building digitlab-bench failed ({})", out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    executable_from_cargo_messages(&stdout).context("cargo did not report the digitlab-bench executable")
}

/// The `executable` of the `digitlab-bench` artifact in cargo's JSON messages.
pub fn executable_from_cargo_messages(messages: &str) -> Option<PathBuf> {
    messages
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == "digitlab-bench")
        .filter_map(|v| v["executable"].as_str().map(PathBuf::from))
        .next_back()
}

/// `(name, samples_per_step, about)` of every workload, from `digitlab-bench --list`.
fn list_workloads(exe: &Path) -> Result<Vec<(String, usize, String)>> {
    let out = Command::new(exe)
        .arg("--list")
        .output()
        .with_context(|| format!("running {} --list", exe.display()))?;
    if !out.status.success() {
        bail!(
            "{} --list failed: {}",
            exe.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_list(&String::from_utf8_lossy(&out.stdout))
}

pub fn parse_list(text: &str) -> Result<Vec<(String, usize, String)>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut f = l.splitn(3, '\t');
            let name = f.next().unwrap_or_default().to_string();
            let n = f
                .next()
                .unwrap_or_default()
                .parse()
                .with_context(|| format!("bad workload line `{l}`"))?;
            Ok((name, n, f.next().unwrap_or_default().to_string()))
        })
        .collect()
}

/// Whether `name` is selected by a comma-separated list of substrings.
pub fn selected(name: &str, filter: Option<&str>) -> bool {
    match filter {
        None => true,
        Some(f) => f
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .any(|s| name.contains(s)),
    }
}

/// The PyTorch version if `python` can import torch and numpy, else why not.
fn probe_pytorch(python: &str) -> std::result::Result<String, String> {
    let out = Command::new(python)
        .args(["-c", "import numpy, torch; print(torch.__version__)"])
        .output()
        .map_err(|e| format!("`{python}` could not be started ({e})"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(format!(
            "`{python}` cannot import torch and numpy ({})",
            err.lines().last().unwrap_or("").trim()
        ))
    }
}

/// The last JSON object line a bench process printed.
pub fn parse_run(stdout: &str) -> Option<Run> {
    let v: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l.trim()).ok().filter(Value::is_object))?;
    let sps = v["samples_per_second"].as_f64().filter(|x| x.is_finite() && *x > 0.0)?;
    Some(Run {
        samples_per_second: sps,
        peak_rss_mib: v["peak_rss_mib"].as_f64(),
        raw: v,
    })
}

fn run_one(mut cmd: Command, threads: usize, label: &str) -> std::result::Result<Run, String> {
    let t = threads.to_string();
    cmd.env("RAYON_NUM_THREADS", &t)
        .env("OMP_NUM_THREADS", &t)
        .env("MKL_NUM_THREADS", &t)
        .env("DIGITLAB_BENCH_THREADS", &t);
    let out = cmd.output().map_err(|e| format!("{label}: could not start ({e})"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "{label}: exit {} — {}",
            out.status,
            err.lines().last().unwrap_or("").trim()
        ));
    }
    parse_run(&stdout).ok_or_else(|| format!("{label}: no result line in its output"))
}

fn loadavg() -> Option<Vec<f64>> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    s.split_whitespace().take(3).map(|x| x.parse().ok()).collect()
}

/// The first processor's entries of `/proc/cpuinfo` that identify it: model name,
/// family, model, stepping and the feature flags (the kernels pick code paths by them).
pub fn cpu_info(cpuinfo: &str) -> Value {
    let field = |key: &str| {
        cpuinfo
            .lines()
            .take_while(|l| !l.trim().is_empty())
            .find(|l| l.split(':').next().map(str::trim) == Some(key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let number = |key: &str| field(key).and_then(|v| v.parse::<u64>().ok());
    json!({
        "model_name": field("model name"),
        "vendor": field("vendor_id"),
        "family": number("cpu family"),
        "model": number("model"),
        "stepping": number("stepping"),
        "flags": field("flags").map(|f| f.split_whitespace().map(str::to_string).collect::<Vec<_>>()),
    })
}

fn read_cpu_info() -> Value {
    cpu_info(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default())
}

/// `YYYY-MM-DD` (UTC) of a Unix time.
pub fn utc_date(unix_secs: u64) -> String {
    // Howard Hinnant's civil_from_days.
    let z = (unix_secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

fn fmt_rate(x: Option<f64>) -> String {
    match x {
        None => "-".into(),
        Some(v) if v >= 100.0 => {
            let s = format!("{v:.0}");
            // Thousands separators.
            let mut out = String::new();
            for (i, c) in s.chars().enumerate() {
                if i > 0 && (s.len() - i) % 3 == 0 {
                    out.push(',');
                }
                out.push(c);
            }
            out
        }
        Some(v) => format!("{v:.1}"),
    }
}

fn fmt_opt(x: Option<f64>, digits: usize) -> String {
    x.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

/// The results table, one line per workload.
pub fn render_table(rows: &[Row], with_pytorch: bool) -> String {
    let mut lines = Vec::new();
    let header: Vec<&str> = if with_pytorch {
        vec![
            "workload",
            "digitlab samples/s",
            "PyTorch samples/s",
            "ratio",
            "digitlab peak RSS MiB",
            "PyTorch peak RSS MiB",
        ]
    } else {
        vec!["workload", "digitlab samples/s", "digitlab peak RSS MiB"]
    };
    let mut cells: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for r in rows {
        let mut c = vec![r.name.clone(), fmt_rate(r.digitlab_median())];
        if with_pytorch {
            c.push(fmt_rate(r.pytorch_median()));
            c.push(fmt_opt(r.ratio(), 2));
        }
        c.push(fmt_opt(Row::peak(&r.digitlab), 0));
        if with_pytorch {
            c.push(fmt_opt(Row::peak(&r.pytorch), 0));
        }
        cells.push(c);
    }
    let widths: Vec<usize> = (0..cells[0].len())
        .map(|i| cells.iter().map(|c| c[i].chars().count()).max().unwrap_or(0))
        .collect();
    for (k, c) in cells.iter().enumerate() {
        let line: Vec<String> = c
            .iter()
            .enumerate()
            .map(|(i, s)| {
                if i == 0 {
                    format!("{s:<w$}", w = widths[i])
                } else {
                    format!("{s:>w$}", w = widths[i])
                }
            })
            .collect();
        lines.push(format!("| {} |", line.join(" | ")));
        if k == 0 {
            let sep: Vec<String> = widths
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    if i == 0 {
                        "-".repeat(*w)
                    } else {
                        format!("{}:", "-".repeat(w - 1))
                    }
                })
                .collect();
            lines.push(format!("| {} |", sep.join(" | ")));
        }
    }
    lines.join("\n")
}

fn side_json(runs: &[Run]) -> Value {
    if runs.is_empty() {
        return Value::Null;
    }
    json!({
        "median_samples_per_second": median(runs.iter().map(|r| r.samples_per_second).collect()),
        "peak_rss_mib": Row::peak(runs),
        "runs": runs.iter().map(|r| r.raw.clone()).collect::<Vec<_>>(),
    })
}

/// Merges this run's `rows` into `existing` (a previous results file of the same
/// day, or null): workloads run now replace their old entries, others are kept.
pub fn merge_results(existing: Value, meta: Value, rows: &[Row], measured_at: u64) -> Value {
    let mut workloads: BTreeMap<String, Value> = existing
        .get("workloads")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    for r in rows {
        workloads.insert(
            r.name.clone(),
            json!({
                "about": r.about,
                "samples_per_step": r.samples_per_step,
                "measured_at_unix": measured_at,
                "digitlab": side_json(&r.digitlab),
                "pytorch": side_json(&r.pytorch),
                "ratio": r.ratio(),
                "errors": r.errors,
                "run": meta.clone(),
            }),
        );
    }
    json!({ "latest_run": meta, "workloads": workloads })
}

/// Writes `value` to `path` as pretty JSON with a final newline, atomically
/// ([`digitlab_report::io::write_atomic`]).
pub fn write_atomic(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)? + "\n";
    digitlab_report::io::write_atomic(path, text.as_bytes())?;
    Ok(())
}

pub fn run(opts: Options) -> Result<()> {
    if opts.rounds == 0 || opts.threads == 0 {
        bail!("--rounds and --threads must be at least 1");
    }
    if !(opts.seconds.is_finite() && opts.seconds >= 0.0) {
        bail!("--seconds must be a non-negative number, got {}", opts.seconds);
    }
    let root = workspace_root();
    let exe = build_bench_binary(&root)?;
    let all = list_workloads(&exe)?;
    let chosen: Vec<_> = all
        .into_iter()
        .filter(|(n, _, _)| selected(n, opts.filter.as_deref()))
        .collect();
    if chosen.is_empty() {
        bail!("no workload matches --filter {}", opts.filter.as_deref().unwrap_or(""));
    }
    let script = root.join("benches/reference/bench.py");
    let python = opts
        .python
        .clone()
        .or_else(|| std::env::var("DIGITLAB_PYTHON").ok())
        .unwrap_or_else(|| "python3".into());
    let torch_version = if opts.compare_pytorch {
        match probe_pytorch(&python) {
            Ok(v) => {
                println!("PyTorch reference: {python} with torch {v}");
                Some(v)
            }
            Err(why) => {
                println!(
                    "PyTorch reference skipped: {why}.\n  Install it with `pip install torch numpy` (CPU wheels: \
                     `pip install torch --index-url https://download.pytorch.org/whl/cpu`), or point \
                     DIGITLAB_PYTHON / --python at an interpreter that has it.\n  Showing digitlab's side only."
                );
                None
            }
        }
    } else {
        None
    };
    let with_pytorch = torch_version.is_some();
    let load_before = loadavg();
    if let Some(l) = &load_before {
        if l[0] > 0.5 {
            println!(
                "note: 1-minute load average is {:.2} before starting; other processes share the CPU, so timings are noisy",
                l[0]
            );
        }
    }
    let mut rows: Vec<Row> = chosen
        .iter()
        .map(|(n, s, a)| Row {
            name: n.clone(),
            about: a.clone(),
            samples_per_step: *s,
            ..Default::default()
        })
        .collect();
    let secs = opts.seconds.to_string();
    let warmup = opts.warmup.to_string();
    for round in 0..opts.rounds {
        for (i, row) in rows.iter_mut().enumerate() {
            let digitlab_first = (round + i) % 2 == 0;
            let mut sides = vec![true];
            if with_pytorch {
                sides = if digitlab_first {
                    vec![true, false]
                } else {
                    vec![false, true]
                };
            }
            for is_digitlab in sides {
                let (cmd, label) = if is_digitlab {
                    let mut c = Command::new(&exe);
                    c.args([row.name.as_str(), "--seconds", &secs, "--warmup", &warmup]);
                    (c, format!("digitlab {}", row.name))
                } else {
                    let mut c = Command::new(&python);
                    c.arg(&script)
                        .args([row.name.as_str(), "--seconds", &secs, "--warmup", &warmup]);
                    c.args(["--threads", &opts.threads.to_string()]);
                    (c, format!("pytorch {}", row.name))
                };
                eprint!("round {}/{} {label} ... ", round + 1, opts.rounds);
                match run_one(cmd, opts.threads, &label) {
                    Ok(r) => {
                        eprintln!("{} samples/s", fmt_rate(Some(r.samples_per_second)));
                        if is_digitlab {
                            row.digitlab.push(r)
                        } else {
                            row.pytorch.push(r)
                        }
                    }
                    Err(e) => {
                        eprintln!("failed");
                        row.errors.push(e);
                    }
                }
            }
        }
    }
    let load_after = loadavg();
    println!();
    println!(
        "{} thread(s), {} round(s) alternating sides, median of rounds; {} s timed per run after {} warm-up steps",
        opts.threads, opts.rounds, opts.seconds, opts.warmup
    );
    let cpu = read_cpu_info();
    println!(
        "CPU: {} (family {}, model {}); 1-minute load average {} before, {} after",
        cpu["model_name"].as_str().unwrap_or("unknown"),
        cpu["family"],
        cpu["model"],
        fmt_opt(load_before.as_ref().map(|l| l[0]), 2),
        fmt_opt(load_after.as_ref().map(|l| l[0]), 2),
    );
    println!("{}", render_table(&rows, with_pytorch));
    for r in &rows {
        for e in &r.errors {
            println!("error: {e}");
        }
    }
    if opts.no_save {
        return Ok(());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let dir = opts.results_dir.clone().unwrap_or_else(|| root.join("benches/results"));
    let path = dir.join(format!("{}.json", utc_date(now)));
    let existing = match std::fs::read_to_string(&path) {
        Ok(s) => serde_json::from_str(&s).unwrap_or(Value::Null),
        Err(_) => Value::Null,
    };
    let git = Command::new("git")
        .current_dir(&root)
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let meta = json!({
        "unix_time": now,
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "threads": opts.threads,
        "rounds": opts.rounds,
        "seconds": opts.seconds,
        "warmup": opts.warmup,
        "cpu": cpu.get("model_name").cloned(),
        "cpu_info": cpu,
        "logical_cpus": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "torch": torch_version,
        "git_commit": git,
    });
    write_atomic(&path, &merge_results(existing, meta, &rows, now))?;
    println!("\nwrote {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_of(sps: f64, rss: f64) -> Run {
        Run {
            samples_per_second: sps,
            peak_rss_mib: Some(rss),
            raw: json!({"samples_per_second": sps}),
        }
    }

    #[test]
    fn medians_and_ratio() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        let row = Row {
            name: "w".into(),
            digitlab: vec![run_of(300.0, 10.0), run_of(100.0, 12.0), run_of(200.0, 11.0)],
            pytorch: vec![run_of(100.0, 600.0)],
            ..Default::default()
        };
        assert_eq!(row.ratio(), Some(2.0));
        assert_eq!(Row::peak(&row.digitlab), Some(12.0));
        let alone = Row {
            name: "w".into(),
            digitlab: vec![run_of(5.0, 1.0)],
            ..Default::default()
        };
        assert_eq!(alone.ratio(), None);
    }

    #[test]
    fn cpu_info_reads_the_first_processor() {
        let text = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 167\nmodel name\t: Intel(R) Xeon(R) Processor\nstepping\t: 8\nflags\t\t: fpu avx2 avx512f\n\nprocessor\t: 1\nmodel name\t: other\n";
        let v = cpu_info(text);
        assert_eq!(v["model_name"], "Intel(R) Xeon(R) Processor");
        assert_eq!(v["family"], 6);
        assert_eq!(v["model"], 167);
        assert_eq!(v["stepping"], 8);
        assert_eq!(v["flags"], json!(["fpu", "avx2", "avx512f"]));
        assert_eq!(cpu_info("")["model_name"], Value::Null);
    }

    #[test]
    fn dates() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(951_782_400), "2000-02-29");
        assert_eq!(utc_date(1_767_225_599), "2025-12-31");
        assert_eq!(utc_date(1_767_225_600), "2026-01-01");
    }

    #[test]
    fn filters() {
        assert!(selected("mlp_sgd_b1", None));
        assert!(selected("mlp_sgd_b1", Some("sgd")));
        assert!(selected("lenet5_adam_b64", Some("mlp, lenet")));
        assert!(!selected("resnet18_feat32_b64", Some("mlp,lenet")));
        assert!(!selected("mlp_sgd_b1", Some(" , ")));
    }

    #[test]
    fn parses_bench_output_and_listing() {
        let out = "warming up\n{\"side\":\"pytorch\",\"samples_per_second\":1234.5,\"peak_rss_mib\":700.25}\n";
        let r = parse_run(out).unwrap();
        assert_eq!(r.samples_per_second, 1234.5);
        assert_eq!(r.peak_rss_mib, Some(700.25));
        assert!(parse_run("no json here").is_none());
        assert!(parse_run("{\"samples_per_second\": 0}").is_none());
        let l = parse_list("a\t1\tabout a\nb\t32\tabout\tb\n").unwrap();
        assert_eq!(l[1], ("b".to_string(), 32, "about\tb".to_string()));
        assert!(parse_list("a\tx\t").is_err());
        let msgs = concat!(
            "{\"reason\":\"compiler-artifact\",\"target\":{\"name\":\"digitlab_benches\"},\"executable\":null}\n",
            "{\"reason\":\"compiler-artifact\",\"target\":{\"name\":\"digitlab-bench\"},\"executable\":\"/t/release/digitlab-bench\"}\n",
            "{\"reason\":\"build-finished\",\"success\":true}\n"
        );
        assert_eq!(
            executable_from_cargo_messages(msgs),
            Some(PathBuf::from("/t/release/digitlab-bench"))
        );
    }

    #[test]
    fn table_has_one_line_per_workload_and_aligned_columns() {
        let rows = vec![
            Row {
                name: "mlp_sgd_b1".into(),
                digitlab: vec![run_of(4321.0, 10.0)],
                pytorch: vec![run_of(1400.0, 690.0)],
                ..Default::default()
            },
            Row {
                name: "x".into(),
                digitlab: vec![run_of(12.34, 5.0)],
                ..Default::default()
            },
        ];
        let t = render_table(&rows, true);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(
            lines[2].contains("4,321") && lines[2].contains("1,400") && lines[2].contains("3.09"),
            "{t}"
        );
        assert!(lines[3].contains("12.3") && lines[3].contains(" - "), "{t}");
        assert!(
            lines.iter().all(|l| l.chars().count() == lines[0].chars().count()),
            "{t}"
        );
        let only = render_table(&rows, false);
        assert!(!only.contains("PyTorch"));
    }

    #[test]
    fn results_merge_and_atomic_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r/2026-01-01.json");
        let a = Row {
            name: "a".into(),
            digitlab: vec![run_of(1.0, 1.0)],
            ..Default::default()
        };
        let b = Row {
            name: "b".into(),
            digitlab: vec![run_of(2.0, 1.0)],
            ..Default::default()
        };
        let first = merge_results(Value::Null, json!({"n": 1}), &[a.clone(), b], 10);
        write_atomic(&path, &first).unwrap();
        let a2 = Row {
            name: "a".into(),
            digitlab: vec![run_of(5.0, 1.0)],
            ..Default::default()
        };
        let read: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let second = merge_results(read, json!({"n": 2}), &[a2], 20);
        write_atomic(&path, &second).unwrap();
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v["workloads"]["a"]["digitlab"]["median_samples_per_second"], 5.0);
        assert_eq!(v["workloads"]["b"]["digitlab"]["median_samples_per_second"], 2.0);
        assert_eq!(v["workloads"]["a"]["pytorch"], Value::Null);
        assert_eq!(v["latest_run"]["n"], 2);
        assert!(!path.with_extension("json.tmp").exists());
    }
}
