//! Suites (`digitlab reproduce`): a TOML file listing experiments, each run by the
//! runner of its [`Mode`] into `<out>/<name>/`.
//!
//! One place for the suite, its entries, their modes and outcomes; one runner per
//! mode ([`experiment`] for train and sweep, [`theory`], [`transfer`]). Each runner
//! first *prepares* its entry (loads and checks the config, decides the folder it
//! will write, or why it is skipped) without changing anything, so that every
//! folder of the suite is checked before the first experiment runs; then it runs.
//! Rendering the report is the caller's ([`crate::report`]): this module does not
//! depend on it.
//!
//! Ownership: `<out>` is a digitlab folder (marker kind `reproduce`, locked while
//! the suite runs); each entry's folder is reused only when its marker says it
//! completed with the same config hash, replaced only when it carries a marker, and
//! any folder in the way without one stops the suite before anything runs.
pub mod entry;
pub mod experiment;
pub mod outcome;
pub mod theory;
pub mod transfer;

pub use entry::{load_suite, suite_path, Mode, Suite, SuiteEntry};
pub use outcome::{ExperimentReport, Outcome};

use anyhow::{bail, Result};
use digitlab_train::run_dir::{self, RunDir, Start};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What every runner needs.
pub struct Context {
    /// The folder `config = "..."` paths are relative to.
    pub configs_dir: PathBuf,
    pub data_dir: PathBuf,
    /// The suite's output folder.
    pub out: PathBuf,
    pub device: candle_core::Device,
    pub quiet: bool,
    /// Runs write TensorBoard event files.
    pub tensorboard: bool,
    pub bar: ProgressBar,
}

impl Context {
    /// One line of progress, above the bar (or on stderr with `--quiet`).
    pub fn say(&self, line: String) {
        if self.quiet {
            eprintln!("{line}")
        } else {
            self.bar.println(line)
        }
    }
}

/// A prepared suite entry: checked, with its output folder decided.
pub trait Job {
    /// The folder this entry writes (checked before anything runs), its marker
    /// kind and config hash; `None` for a skipped entry.
    fn target(&self) -> Option<(&Path, &str, &str)>;
    /// A short label for the progress bar.
    fn label(&self) -> String;
    /// Runs the entry (or reuses its finished folder).
    fn run(self: Box<Self>, ctx: &Context) -> Result<Outcome>;
}

/// An entry that does not run, with the reason.
pub struct Skip {
    pub config: String,
    pub reason: String,
}

impl Job for Skip {
    fn target(&self) -> Option<(&Path, &str, &str)> {
        None
    }
    fn label(&self) -> String {
        self.config.clone()
    }
    fn run(self: Box<Self>, ctx: &Context) -> Result<Outcome> {
        ctx.say(format!("skip {}: {}", self.config, self.reason));
        Ok(Outcome::Skipped(self.reason))
    }
}

/// The runner of each mode.
fn prepare(entry: &SuiteEntry, ctx: &Context) -> Result<Box<dyn Job>> {
    match entry.mode {
        Mode::Train | Mode::Sweep => experiment::prepare(entry, ctx),
        Mode::Theory => theory::prepare(entry, ctx),
        Mode::Transfer => transfer::prepare(entry, ctx),
    }
}

/// Whether `dir` holds a finished run of `kind` with config hash `hash` (its
/// marker says so); the caller checks the files it reads.
pub fn finished(dir: &Path, kind: &str, hash: &str) -> bool {
    matches!(run_dir::read_marker(dir), Ok(Some(m)) if m.kind == kind && m.config_hash == hash && m.complete)
}

/// Claims an entry's folder for a new run: created when absent, replaced when it
/// is a digitlab run folder (of any config), refused otherwise.
pub fn claim_entry(dir: &Path, kind: &str, hash: &str) -> Result<RunDir> {
    Ok(RunDir::claim(dir, kind, hash, Start::Force)?)
}

/// A suite that ran: its entries' outcomes in order.
pub struct SuiteRun {
    pub suite: Suite,
    pub reports: Vec<ExperimentReport>,
    pub wall_seconds: f64,
    /// Held until the report is written into `out`.
    pub out_dir: RunDir,
    /// Entries a collect found unfinished (index, label).
    pub unfinished: Vec<(usize, String)>,
}

/// A suite with every entry prepared (checked, nothing written yet).
struct Prepared {
    path: PathBuf,
    suite: Suite,
    ctx: Context,
    jobs: Vec<Box<dyn Job>>,
}

fn prepare_suite(
    suite: &str,
    data_dir: &Path,
    out: &Path,
    device: candle_core::Device,
    quiet: bool,
    tensorboard: bool,
) -> Result<Prepared> {
    let path = suite_path(suite);
    let suite = load_suite(&path)?;
    let configs_dir = path
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("configs"))
        .to_path_buf();
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
    let ctx = Context {
        configs_dir,
        data_dir: data_dir.to_path_buf(),
        out: out.to_path_buf(),
        device,
        quiet,
        tensorboard,
        bar,
    };
    // Every entry checked before anything is written.
    let jobs = suite
        .experiments
        .iter()
        .map(|e| prepare(e, &ctx))
        .collect::<Result<Vec<_>>>()?;
    Ok(Prepared { path, suite, ctx, jobs })
}

impl Prepared {
    /// Claims the suite's folder (waiting while another entry's process checks it)
    /// and checks every entry's folder in it; changes nothing but the marker.
    fn claim(&self) -> Result<RunDir> {
        let (out, path) = (&self.ctx.out, &self.path);
        let out_dir = RunDir::claim_waiting(out, "reproduce", "", Start::Keep, digitlab_train::array::SHARED_WAIT)?;
        let mut seen: BTreeMap<PathBuf, usize> = BTreeMap::new();
        for (i, job) in self.jobs.iter().enumerate() {
            let Some((dir, kind, hash)) = job.target() else {
                continue;
            };
            if let Some(j) = seen.insert(dir.to_path_buf(), i) {
                bail!(
                    "{}: experiments {} and {} both write {}; give one of them another `name` (set = [\"name=...\"])",
                    path.display(),
                    j + 1,
                    i + 1,
                    dir.display()
                );
            }
            if dir == out.join(transfer::FEATURE_CACHE) {
                bail!(
                    "{}: experiment {} would write into the suite's feature cache {}; give it another `name`",
                    path.display(),
                    i + 1,
                    dir.display()
                );
            }
            // An entry another process is running (a job array) is its business:
            // its folder holds outputs it has not recorded yet.
            if run_dir::holder(dir)?.is_none() {
                run_dir::check(dir, kind, hash, Start::Force)?;
            }
        }
        Ok(out_dir)
    }
}

/// Runs the suite `suite` (a name or a path) into `out` (`tensorboard`: event
/// files in the runs' folders).
pub fn run(
    suite: &str,
    data_dir: &Path,
    out: &Path,
    device: candle_core::Device,
    quiet: bool,
    tensorboard: bool,
) -> Result<SuiteRun> {
    let p = prepare_suite(suite, data_dir, out, device, quiet, tensorboard)?;
    let out_dir = p.claim()?;
    let Prepared { suite, ctx, jobs, .. } = p;
    let started = Instant::now();
    let mut reports = Vec::new();
    for (entry, job) in suite.experiments.iter().zip(jobs) {
        ctx.bar.set_message(job.label());
        let outcome = job.run(&ctx)?;
        reports.push(ExperimentReport::new(entry, outcome));
        ctx.bar.inc(1);
    }
    ctx.bar.finish_and_clear();
    Ok(SuiteRun {
        suite,
        reports,
        wall_seconds: started.elapsed().as_secs_f64(),
        out_dir,
        unfinished: Vec::new(),
    })
}

/// `--list`: each entry's mode and config (or topics), by 0-based index.
pub fn list(suite: &str) -> Result<Vec<String>> {
    let suite = load_suite(&suite_path(suite))?;
    Ok(suite
        .experiments
        .iter()
        .map(|e| {
            let what = match e.mode {
                Mode::Theory => format!("topics {}", e.topic.as_deref().unwrap_or("all")),
                _ => e.config.clone(),
            };
            format!("{}\t{what}", format!("{:?}", e.mode).to_lowercase())
        })
        .collect())
}

/// `--entry I`: checks the whole suite like [`run`], then runs only entry `index`
/// (0-based) into its folder under `out`, holding `out` only while checking it,
/// so that entries can run at once. A finished entry is reused.
pub fn run_entry(
    suite: &str,
    index: usize,
    data_dir: &Path,
    out: &Path,
    device: candle_core::Device,
    quiet: bool,
    tensorboard: bool,
) -> Result<String> {
    let p = prepare_suite(suite, data_dir, out, device, quiet, tensorboard)?;
    let n = p.jobs.len();
    if index >= n {
        bail!(
            "--entry {index}: the suite {} has {n} experiments (indices 0 to {})",
            p.path.display(),
            n.saturating_sub(1)
        );
    }
    // Marked complete ("a valid suite folder") so that it stays when this claim
    // ends before the entry has written anything; the collect writes the report.
    p.claim()?.finish()?;
    let Prepared { ctx, jobs, .. } = p;
    let job = jobs.into_iter().nth(index).expect("checked");
    let label = job.label();
    match job.run(&ctx)? {
        Outcome::Skipped(reason) => Ok(format!("entry {index} ({label}) skipped: {reason}")),
        Outcome::Ran { reused: true, .. }
        | Outcome::Theory { reused: true, .. }
        | Outcome::Transfer { reused: true, .. } => Ok(format!("entry {index} ({label}) had already finished")),
        _ => Ok(format!("entry {index} ({label}) done")),
    }
}

/// `--collect`: the report of the entries that finished under `out` (each reused,
/// nothing trained); unfinished entries are an error naming them, unless
/// `allow_missing`, when the report lists them as not run.
pub fn collect(
    suite: &str,
    data_dir: &Path,
    out: &Path,
    device: candle_core::Device,
    quiet: bool,
    allow_missing: bool,
) -> Result<SuiteRun> {
    if run_dir::read_marker(out)?.is_none() {
        bail!(
            "{}: holds no suite run: nothing to collect (run the entries first)",
            out.display()
        );
    }
    // Nothing trains in a collect: no event files to write.
    let p = prepare_suite(suite, data_dir, out, device, quiet, false)?;
    let out_dir = p.claim()?;
    let Prepared { suite, ctx, jobs, .. } = p;
    let started = Instant::now();
    let mut unfinished = Vec::new();
    let mut reports = Vec::new();
    for (i, (entry, job)) in suite.experiments.iter().zip(jobs).enumerate() {
        let done = job.target().is_none_or(|(dir, kind, hash)| finished(dir, kind, hash));
        let outcome = if done {
            job.run(&ctx)?
        } else {
            unfinished.push((i, job.label()));
            Outcome::Skipped(format!("not run yet (`--entry {i}`)"))
        };
        reports.push(ExperimentReport::new(entry, outcome));
    }
    ctx.bar.finish_and_clear();
    if !unfinished.is_empty() && !allow_missing {
        let names: Vec<String> = unfinished.iter().map(|(i, l)| format!("entry {i} ({l})")).collect();
        bail!(
            "{}: {} of {} experiments have not finished: {}; run them (`--entry I`), or pass \
             --allow-missing to report the finished ones",
            out.display(),
            unfinished.len(),
            reports.len(),
            names.join(", ")
        );
    }
    Ok(SuiteRun {
        suite,
        reports,
        wall_seconds: started.elapsed().as_secs_f64(),
        out_dir,
        unfinished,
    })
}
