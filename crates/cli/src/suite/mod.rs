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
}

/// Runs the suite `suite` (a name or a path) into `out`.
pub fn run(
    suite: &str,
    data_dir: &Path,
    out: &Path,
    device: candle_core::Device,
    quiet: bool,
    tensorboard: bool,
) -> Result<SuiteRun> {
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
    let out_dir = RunDir::claim(out, "reproduce", "", Start::Keep)?;
    let mut seen: BTreeMap<PathBuf, usize> = BTreeMap::new();
    for (i, job) in jobs.iter().enumerate() {
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
        run_dir::check(dir, kind, hash, Start::Force)?;
    }
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
    })
}
