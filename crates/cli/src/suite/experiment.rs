//! The runner of `mode = "train"` and `mode = "sweep"` entries: one experiment
//! config (with the entry's overrides, or its fallback when the dataset is absent)
//! trained, or searched, into `<out>/<name>/`.
use super::{claim_entry, finished, Context, Job, Mode, Outcome, Skip, SuiteEntry};
use anyhow::{Context as _, Result};
use digitlab_data::{catalog, Split};
use digitlab_train::experiment::run_experiment;
use digitlab_train::run_dir::config_hash;
use digitlab_train::sweep::run_sweep;
use digitlab_train::{ExperimentConfig, PreparedData, RunOptions, Summary, Verbosity};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A train or sweep entry, ready to run.
pub struct ExperimentJob {
    mode: Mode,
    cfg: ExperimentConfig,
    dir: PathBuf,
    hash: String,
}

impl ExperimentJob {
    fn kind(&self) -> &'static str {
        if self.mode == Mode::Sweep {
            "sweep"
        } else {
            "train"
        }
    }
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

/// Loads and checks the entry's config; changes nothing.
pub fn prepare(entry: &SuiteEntry, ctx: &Context) -> Result<Box<dyn Job>> {
    match resolve(entry, &ctx.configs_dir, &ctx.data_dir)? {
        Err(reason) => Ok(Box::new(Skip {
            config: entry.config.clone(),
            reason,
        })),
        Ok(cfg) => {
            let mut job = ExperimentJob {
                mode: entry.mode,
                dir: ctx.out.join(&cfg.name),
                hash: String::new(),
                cfg,
            };
            job.hash = config_hash(job.kind(), &job.cfg);
            Ok(Box::new(job))
        }
    }
}

impl Job for ExperimentJob {
    fn target(&self) -> Option<(&Path, &str, &str)> {
        Some((&self.dir, self.kind(), &self.hash))
    }

    fn label(&self) -> String {
        format!("{} ({})", self.cfg.name, self.cfg.data.dataset)
    }

    fn run(self: Box<Self>, ctx: &Context) -> Result<Outcome> {
        let t0 = Instant::now();
        let (cfg, dir) = (&self.cfg, &self.dir);
        let summary_file = dir.join("summary.json");
        let done = finished(dir, self.kind(), &self.hash) && summary_file.is_file();
        if done {
            ctx.say(format!(
                "{}: unchanged and complete, reusing {}",
                cfg.name,
                dir.display()
            ));
        } else {
            let run_dir = claim_entry(dir, self.kind(), &self.hash)?;
            if ctx.quiet {
                eprintln!("running {} on {}", cfg.name, cfg.data.dataset);
            }
            let opts = RunOptions {
                out_dir: Some(dir.clone()),
                device: ctx.device.clone(),
                verbosity: Verbosity::Silent,
                resume: false,
                max_epochs_this_run: None,
                tensorboard: ctx.tensorboard,
            };
            if self.mode == Mode::Sweep {
                run_sweep(cfg, &ctx.data_dir, &opts).with_context(|| format!("sweep {}", cfg.name))?;
            } else {
                let data = PreparedData::load(cfg, &ctx.data_dir)?;
                run_experiment(cfg, &data, &opts).with_context(|| format!("experiment {}", cfg.name))?;
            }
            run_dir.finish()?;
        }
        let summary: Box<Summary> = Box::new(digitlab_report::RunSummary::read(&summary_file)?);
        ctx.say(format!(
            "{:<22} test acc {:>7}  ({:.1}s)",
            summary.name,
            summary
                .test_accuracy
                .map(|a| format!("{:.2}%", 100.0 * a))
                .unwrap_or_else(|| "-".into()),
            t0.elapsed().as_secs_f64()
        ));
        Ok(Outcome::Ran {
            cfg: Box::new(self.cfg),
            summary,
            dir: self.dir,
            seconds: t0.elapsed().as_secs_f64(),
            reused: done,
        })
    }
}
