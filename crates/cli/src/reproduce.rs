//! `digitlab reproduce`: run a suite of experiments (a TOML file listing configs)
//! and write one report. Completed experiments whose config is unchanged are
//! skipped (content hash), so an interrupted suite resumes where it stopped.
use crate::report::{self, ExperimentReport, Outcome};
use anyhow::{bail, Context, Result};
use digitlab_data::{catalog, Split};
use digitlab_train::experiment::run_experiment;
use digitlab_train::sweep::run_sweep;
use digitlab_train::{ExperimentConfig, PreparedData, RunOptions, Summary, Verbosity};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A suite file (`configs/suites/*.toml`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suite {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(rename = "experiment")]
    pub experiments: Vec<SuiteEntry>,
}

/// One experiment of a suite.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuiteEntry {
    /// Config file, relative to the suite's `configs/` folder (train and sweep).
    #[serde(default)]
    pub config: String,
    /// Theory-lab topics for `mode = "theory"` (`all`, a name or a number; default all).
    #[serde(default)]
    pub topic: Option<String>,
    #[serde(default)]
    pub mode: Mode,
    /// The question the experiment answers (shown in the report).
    #[serde(default)]
    pub question: String,
    /// Test accuracy reported in the coursework, for comparison.
    #[serde(default)]
    pub reported: Option<f64>,
    /// Per-backbone coursework results of a transfer entry (`label = accuracy`).
    #[serde(default)]
    pub reported_backbones: std::collections::BTreeMap<String, f64>,
    /// Overrides always applied.
    #[serde(default)]
    pub set: Vec<String>,
    /// Overrides applied instead when the config's dataset is absent (e.g. switch to
    /// the embedded digits); without them the experiment is skipped.
    #[serde(default)]
    pub fallback: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Train,
    Sweep,
    /// The theory lab (`digitlab theory`): its report becomes a section.
    Theory,
    /// Frozen-backbone transfer learning (`digitlab transfer`): every backbone whose
    /// weights are reachable (random weights, local files, the Hugging Face cache)
    /// runs; the others are skipped with a reason each.
    Transfer,
}

/// Finds a suite by name (`quick` -> `configs/suites/quick.toml`) or path.
fn suite_path(suite: &str) -> PathBuf {
    let p = PathBuf::from(suite);
    if p.extension().is_some_and(|e| e == "toml") || p.is_file() {
        p
    } else {
        PathBuf::from("configs/suites").join(format!("{suite}.toml"))
    }
}

fn load_suite(path: &Path) -> Result<Suite> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "{}: cannot read the suite (suites live in configs/suites/)",
            path.display()
        )
    })?;
    toml::from_str(&text).with_context(|| format!("{}: invalid suite", path.display()))
}

/// Resolves an entry to its final config, or the reason it is skipped.
fn resolve(
    entry: &SuiteEntry,
    configs_dir: &Path,
    data_dir: &Path,
) -> Result<std::result::Result<ExperimentConfig, String>> {
    let path = configs_dir.join(&entry.config);
    let cfg = ExperimentConfig::load(&path, &entry.set)?;
    if catalog::is_available(cfg.data.dataset, Split::Train, data_dir) {
        return Ok(Ok(cfg));
    }
    if entry.fallback.is_empty() {
        return Ok(Err(format!(
            "{} is not in {} (cargo xtask download {})",
            cfg.data.dataset,
            data_dir.display(),
            cfg.data.dataset
        )));
    }
    let mut o = entry.set.clone();
    o.extend(entry.fallback.iter().cloned());
    Ok(Ok(ExperimentConfig::load(&path, &o)?))
}

fn config_hash(cfg: &ExperimentConfig, mode: Mode) -> String {
    let text = format!("{mode:?}\n{}", toml::to_string(cfg).unwrap_or_default());
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// Runs `suite` and writes `report.md` and `report.html` into `out`.
pub fn run(suite: &str, data_dir: &Path, out: &Path, device: candle_core::Device, quiet: bool) -> Result<PathBuf> {
    let path = suite_path(suite);
    let suite = load_suite(&path)?;
    if suite.experiments.is_empty() {
        bail!("{}: the suite lists no [[experiment]]", path.display());
    }
    let configs_dir = path
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("configs"))
        .to_path_buf();
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let started = Instant::now();
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(suite.experiments.len() as u64)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} experiments, {elapsed} elapsed, eta {eta} | {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(format!("reproduce {}", suite.name));
    for (i, e) in suite.experiments.iter().enumerate() {
        if e.mode != Mode::Theory && e.config.is_empty() {
            bail!(
                "{}: experiment {} needs `config = \"<file>.toml\"`",
                path.display(),
                i + 1
            );
        }
    }
    let mut reports = Vec::new();
    for entry in &suite.experiments {
        let t0 = Instant::now();
        if entry.mode == Mode::Theory {
            bar.set_message("theory lab");
            let outcome = run_theory(entry, data_dir, out, quiet, &bar)?;
            reports.push(ExperimentReport::new(entry, outcome));
            bar.inc(1);
            continue;
        }
        if entry.mode == Mode::Transfer {
            bar.set_message(format!("transfer {}", entry.config));
            let outcome =
                crate::reproduce_transfer::run(entry, &configs_dir, data_dir, out, device.clone(), quiet, &bar)?;
            reports.push(ExperimentReport::new(entry, outcome));
            bar.inc(1);
            continue;
        }
        let outcome = match resolve(entry, &configs_dir, data_dir)? {
            Err(reason) => {
                let line = format!("skip {}: {reason}", entry.config);
                if quiet {
                    eprintln!("{line}")
                } else {
                    bar.println(line)
                }
                reports.push(ExperimentReport::skipped(entry, reason));
                bar.inc(1);
                continue;
            }
            Ok(cfg) => {
                bar.set_message(format!("{} ({})", cfg.name, cfg.data.dataset));
                let dir = out.join(&cfg.name);
                let hash = config_hash(&cfg, entry.mode);
                let hash_file = dir.join(".config-hash");
                let summary_file = dir.join("summary.json");
                let done =
                    std::fs::read_to_string(&hash_file).is_ok_and(|h| h.trim() == hash) && summary_file.is_file();
                if done {
                    let line = format!("{}: unchanged and complete, reusing {}", cfg.name, dir.display());
                    if quiet {
                        eprintln!("{line}")
                    } else {
                        bar.println(line)
                    }
                } else {
                    if dir.exists() {
                        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
                    }
                    if quiet {
                        eprintln!("running {} on {}", cfg.name, cfg.data.dataset);
                    }
                    let opts = RunOptions {
                        out_dir: Some(dir.clone()),
                        device: device.clone(),
                        verbosity: Verbosity::Silent,
                        resume: false,
                        max_epochs_this_run: None,
                    };
                    match entry.mode {
                        Mode::Train => {
                            let data = PreparedData::load(&cfg, data_dir)?;
                            run_experiment(&cfg, &data, &opts).with_context(|| format!("experiment {}", cfg.name))?;
                        }
                        Mode::Sweep => {
                            run_sweep(&cfg, data_dir, &opts).with_context(|| format!("sweep {}", cfg.name))?;
                        }
                        Mode::Theory | Mode::Transfer => bail!("theory and transfer entries have their own runners"),
                    }
                    digitlab_train::io::write_atomic(&hash_file, hash.as_bytes())?;
                }
                let summary: Summary = digitlab_report::RunSummary::read(&summary_file)?;
                Outcome::Ran {
                    cfg,
                    summary,
                    dir,
                    seconds: t0.elapsed().as_secs_f64(),
                    reused: done,
                }
            }
        };
        if let Outcome::Ran { summary, .. } = &outcome {
            let line = format!(
                "{:<22} test acc {:>7}  ({:.1}s)",
                summary.name,
                summary
                    .test_accuracy
                    .map(|a| format!("{:.2}%", 100.0 * a))
                    .unwrap_or_else(|| "-".into()),
                t0.elapsed().as_secs_f64()
            );
            if quiet {
                eprintln!("{line}")
            } else {
                bar.println(line)
            }
        }
        reports.push(ExperimentReport::new(entry, outcome));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let index = report::write(
        out,
        &suite.name,
        &suite.description,
        &reports,
        started.elapsed().as_secs_f64(),
    )?;
    report::print_table(&reports);
    Ok(index)
}

/// What the theory lab recorded beside its `theory.md` (to reuse a finished run).
#[derive(serde::Serialize, serde::Deserialize)]
struct TheoryRecord {
    hash: String,
    holds: usize,
    total: usize,
    data: String,
}

/// Runs the theory lab into `<out>/theory`, or reuses it when the topics, the data
/// it would use and the digitlab version are unchanged.
fn run_theory(entry: &SuiteEntry, data_dir: &Path, out: &Path, quiet: bool, bar: &ProgressBar) -> Result<Outcome> {
    use digitlab_theory::{report as theory_report, DataChoice, TheoryConfig, Topic};
    let t0 = Instant::now();
    let topic = entry.topic.clone().unwrap_or_else(|| "all".into());
    let topics = Topic::parse_list(&topic)?;
    let dir = out.join("theory");
    let mnist = catalog::is_available(digitlab_data::DatasetKind::Mnist, Split::Train, data_dir);
    let hash = hex::encode(sha2::Sha256::digest(
        format!(
            "{topic}\n{}\n{mnist}\n{}",
            data_dir.display(),
            env!("CARGO_PKG_VERSION")
        )
        .as_bytes(),
    ));
    let record_file = dir.join("theory.json");
    let previous: Option<TheoryRecord> = std::fs::read(&record_file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let (record, reused) = match previous {
        Some(r) if r.hash == hash && dir.join("theory.md").is_file() => (r, true),
        _ => {
            if quiet {
                eprintln!("running the theory lab ({topic})");
            }
            let cfg = TheoryConfig {
                data: DataChoice::Auto(Some(data_dir.to_path_buf())),
                ..TheoryConfig::default()
            };
            let report = theory_report::run_topics(&topics, &cfg, &dir, |_| {})
                .with_context(|| format!("theory lab into {}", dir.display()))?;
            let record = TheoryRecord {
                hash,
                holds: report.sections.iter().filter(|s| s.verdict.holds).count(),
                total: report.sections.len(),
                data: report.data_description.clone(),
            };
            digitlab_train::io::write_atomic(&record_file, &serde_json::to_vec_pretty(&record)?)?;
            (record, false)
        }
    };
    let line = format!(
        "{:<22} {}/{} claims hold  ({:.1}s)",
        "theory",
        record.holds,
        record.total,
        t0.elapsed().as_secs_f64()
    );
    if quiet {
        eprintln!("{line}")
    } else {
        bar.println(line)
    }
    Ok(Outcome::Theory {
        dir,
        seconds: t0.elapsed().as_secs_f64(),
        reused,
        holds: record.holds,
        total: record.total,
        data: record.data,
    })
}
