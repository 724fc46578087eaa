//! `digitlab sweep` as a job array: list the trials, run one (its index from the
//! command line or the scheduler's environment), run a successive-halving
//! worker, or collect the finished trials.
use crate::commands::{check_paths, print_summary, print_trials, run_options};
use crate::device::parse_device;
use crate::Common;
use anyhow::{bail, Context, Result};
use digitlab_cli::args::ArrayMode;
use digitlab_data::resolve_data_dir;
use digitlab_train::array::{self, TrialRun};
use digitlab_train::search::{describe, Strategy};
use digitlab_train::ExperimentConfig;
use std::path::{Path, PathBuf};

/// The environment variables `--trial env` and `--entry env` read, first set wins:
/// digitlab's own, SLURM job arrays', Kubernetes Indexed Jobs'.
pub const INDEX_VARS: [&str; 3] = ["DIGITLAB_TRIAL", "SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"];

/// A 0-based index from `arg` (a number, or `env` for [`INDEX_VARS`]); `flag`
/// names the option in errors.
pub fn index_from(arg: &str, flag: &str) -> Result<usize> {
    if arg != "env" {
        return arg
            .parse()
            .with_context(|| format!("{flag} must be an index (0, 1, ...) or `env`, got `{arg}`"));
    }
    for var in INDEX_VARS {
        if let Ok(v) = std::env::var(var) {
            if !v.trim().is_empty() {
                return v
                    .trim()
                    .parse()
                    .with_context(|| format!("{flag} env: {var} must be an index (0, 1, ...), got `{v}`"));
            }
        }
    }
    bail!("{flag} env: none of {} is set", INDEX_VARS.join(", "))
}

pub fn sweep(
    config: &Path,
    overrides: &[String],
    out: Option<PathBuf>,
    force: bool,
    tensorboard: bool,
    mode: &ArrayMode,
    common: &Common,
) -> Result<()> {
    if mode.modes() > 1 {
        bail!("--list-trials, --trial, --worker and --collect go one at a time");
    }
    let cfg = ExperimentConfig::load(config, overrides)?;
    let Some(search) = &cfg.search else {
        bail!(
            "{}: no [search] section; add one (see configs/logreg_3v6.toml) or use `digitlab train`",
            config.display()
        );
    };
    if mode.list_trials {
        return list(&cfg, mode.json);
    }
    let trial = mode.trial.as_deref().map(|t| index_from(t, "--trial")).transpose()?;
    if force && trial.is_none() {
        bail!("--force goes with --trial (a trial's own folder); the shared folder is never replaced");
    }
    let out = out.unwrap_or_else(|| PathBuf::from("runs").join(&cfg.name));
    let data_dir = resolve_data_dir(common.data_dir.as_deref());
    check_paths(&out, &data_dir)?;
    let opts = run_options(&out, parse_device(&common.device)?, tensorboard, common);
    if let Some(i) = trial {
        match array::run_trial(&cfg, i, &out, &data_dir, &opts, force)? {
            TrialRun::Trained(t) => println!(
                "trial {i}: {} = {:.6} ({})",
                search.metric.as_str(),
                t.score(search.metric),
                array::trial_dir(&out, i).display()
            ),
            TrialRun::AlreadyDone(t) => println!(
                "trial {i} had already finished ({} = {:.6}); nothing was run",
                search.metric.as_str(),
                t.score(search.metric)
            ),
        }
        return Ok(());
    }
    if mode.worker {
        let name = match INDEX_VARS.iter().find_map(|v| std::env::var(v).ok()) {
            Some(i) => format!("{i} (pid {})", std::process::id()),
            None => format!("pid {}", std::process::id()),
        };
        let n = digitlab_train::asha::run_worker(&cfg, &out, &data_dir, &opts, &name)?;
        println!("worker {name}: trained {n} jobs; no job left");
        return Ok(());
    }
    let c = array::collect(&cfg, &out, &data_dir, &opts, mode.allow_missing)?;
    if !c.unfinished.is_empty() {
        eprintln!(
            "warning: collected without {}",
            array::describe_unfinished(&c.unfinished)
        );
    }
    print_trials(&c.trials, c.trials[c.best].index);
    let how = if c.retrained {
        "retrained now"
    } else {
        "reused from an earlier collect"
    };
    println!("final run {how}");
    print_summary(&c.summary, &out.join(digitlab_train::sweep::FINAL_DIR));
    Ok(())
}

/// `--list-trials`: `N trials`, then `I<TAB>values` per trial; or one JSON object.
fn list(cfg: &ExperimentConfig, json: bool) -> Result<()> {
    let trials = array::list_trials(cfg)?;
    let search = cfg.search.as_ref().expect("checked");
    let plan = match search.strategy {
        Strategy::Asha => Some(digitlab_train::asha::Plan::new(search, trials.len())?),
        _ => None,
    };
    if json {
        let list: Vec<serde_json::Value> = trials
            .iter()
            .enumerate()
            .map(|(i, a)| serde_json::json!({ "index": i, "values": a }))
            .collect();
        let mut v = serde_json::json!({ "trials": trials.len(), "assignments": list });
        if let Some(p) = &plan {
            v["rungs"] = serde_json::json!({ "epochs": p.budgets, "trials": p.sizes });
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("{} trials", trials.len());
    for (i, a) in trials.iter().enumerate() {
        println!("{i}\t{}", describe(a));
    }
    if let Some(p) = plan {
        eprintln!("successive halving: {}", p.describe());
    }
    Ok(())
}
