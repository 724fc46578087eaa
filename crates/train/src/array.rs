//! Sweeps as job arrays: each trial of a search is run by its own process (a SLURM
//! array task, a Kubernetes Indexed Job pod, anything that starts a process with
//! an index) into its own folder under a shared output folder, and one `collect`
//! merges them, picks the best and retrains it once.
//!
//! Layout of the shared folder `D` (kind [`ROOT_KIND`]):
//! `D/trials/NNNN/` (kind [`TRIAL_KIND`], `trial.json` when done, `error.txt` when
//! it failed), then after collect `D/trials.csv`, `D/summary.json` and `D/final/`.
//! A trial writes only its own folder and holds its lock while it runs; the
//! shared folder is locked only for the moment it takes to create or check it, so
//! any number of trials can run at once on a shared filesystem. A trial trains
//! exactly as in the serial sweep (same config, data and seed), so its metrics are
//! bit-identical to the serial run's on the same device.
use crate::config::ExperimentConfig;
use crate::io::write_json;
use crate::run_dir::{config_hash, read_marker, RunDir, Start};
use crate::search::describe;
use crate::sweep::{self, Trial};
use crate::trainer::{PreparedData, RunOptions, Verbosity};
use crate::{Result, TrainError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Marker kind of the shared output folder of a job-array sweep.
pub const ROOT_KIND: &str = "sweep-array";
/// Marker kind of one trial's folder.
pub const TRIAL_KIND: &str = "sweep-trial";
/// A finished trial's result in its folder.
pub const TRIAL_FILE: &str = "trial.json";
/// Why a trial failed, in its folder.
pub const ERROR_FILE: &str = "error.txt";
/// How long a process waits for a shared folder's lock (held only for moments,
/// except by a collect).
pub const SHARED_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The folder of trial `index` (0-based, as array indices are) under `root`.
pub fn trial_dir(root: &Path, index: usize) -> PathBuf {
    root.join("trials").join(format!("{index:04}"))
}

/// The trials of the search in `cfg`, in their fixed order (index = position).
pub fn list_trials(cfg: &ExperimentConfig) -> Result<Vec<BTreeMap<String, toml::Value>>> {
    sweep::search_of(cfg)?.trials(cfg.seed)
}

/// Claims the shared folder `root` of the search `cfg` (creating and marking it
/// when absent or empty) and returns the claim; a folder of another config or kind
/// is refused without change. Other processes wait for it for a while: they hold it
/// only to check it, except a collect, which holds it while it works.
pub fn claim_root(root: &Path, cfg: &ExperimentConfig) -> Result<RunDir> {
    let hash = config_hash(ROOT_KIND, cfg);
    // Checked under the lock only: another process may be creating the folder.
    let dir = RunDir::claim_waiting(root, ROOT_KIND, &hash, Start::Keep, SHARED_WAIT)?;
    let marker = read_marker(root)?.ok_or_else(|| TrainError::RunFolder {
        path: root.into(),
        message: "lost its marker while claimed".into(),
    })?;
    if marker.config_hash != hash {
        return Err(TrainError::RunFolder {
            path: root.into(),
            message: "holds the trials of a different sweep config; nothing was changed \
                      (choose another --out, or move that folder away)"
                .into(),
        });
    }
    if !marker.complete {
        // Complete here means "a valid shared folder", so that it stays when this
        // claim ends with nothing else in it yet.
        dir.finish()?;
    }
    Ok(dir)
}

/// What running one trial did.
#[derive(Debug)]
pub enum TrialRun {
    /// Trained now.
    Trained(Trial),
    /// Its folder already held the finished trial of this config: nothing was run.
    AlreadyDone(Trial),
}

/// Runs only trial `index` of the search in `cfg` into `trial_dir(root, index)`:
/// the same training as the serial sweep's trial. A finished trial of the same
/// config is kept (rerunning an array reruns only what is missing); `force`
/// replaces a marked trial folder of another config.
pub fn run_trial(
    cfg: &ExperimentConfig,
    index: usize,
    root: &Path,
    data_dir: &Path,
    opts: &RunOptions,
    force: bool,
) -> Result<TrialRun> {
    let search = sweep::search_of(cfg)?;
    reject_asha(search, "--trial")?;
    let assignments = list_trials(cfg)?;
    let a = assignments.get(index).ok_or_else(|| {
        TrainError::Config(format!(
            "--trial {index}: this sweep has {} trials (indices 0 to {})",
            assignments.len(),
            assignments.len().saturating_sub(1)
        ))
    })?;
    let base_data = sweep::load_base_data(cfg, data_dir)?;
    let tc = sweep::check_trial(cfg, search, a, &base_data, data_dir)?;
    let hash = config_hash(TRIAL_KIND, &tc);
    let dir = trial_dir(root, index);
    {
        let _root = claim_root(root, cfg)?;
        if let Some(t) = finished_trial(&dir, &hash, index)? {
            return Ok(TrialRun::AlreadyDone(t));
        }
    }
    let start = if force { Start::Force } else { Start::Fresh };
    let claim = RunDir::claim(&dir, TRIAL_KIND, &hash, start)?;
    let data = if sweep::reloads_data(search) {
        PreparedData::load(&tc, data_dir)?
    } else {
        base_data
    };
    if opts.verbosity != Verbosity::Silent {
        eprintln!("trial {index} of {}: {}", assignments.len(), describe(a));
    }
    // Its curves and values as a TensorBoard run in its own folder, as a serial
    // sweep writes them under trials/ (TensorBoard's HParams table compares them).
    let events = opts.tensorboard.then_some(dir.as_path());
    match sweep::run_trial(index, a, &tc, &data, opts, search.metric, events) {
        Ok(t) => {
            write_json(&dir.join(TRIAL_FILE), &t)?;
            claim.finish()?;
            Ok(TrialRun::Trained(t))
        }
        Err(e) => {
            // Collect names the failure; the folder stays for a rerun to replace.
            crate::io::write_atomic(&dir.join(ERROR_FILE), format!("{e}\n").as_bytes())?;
            Err(e)
        }
    }
}

pub(crate) fn reject_asha(search: &crate::search::SearchConfig, what: &str) -> Result<()> {
    if search.strategy == crate::search::Strategy::Asha {
        return Err(TrainError::Config(format!(
            "{what}: a search with strategy = \"asha\" has no fixed trials; start workers with --worker"
        )));
    }
    Ok(())
}

/// The finished trial in `dir` when it is one of config `hash`.
fn finished_trial(dir: &Path, hash: &str, index: usize) -> Result<Option<Trial>> {
    match read_marker(dir)? {
        Some(m) if m.kind == TRIAL_KIND && m.complete && m.config_hash == hash => {
            let path = dir.join(TRIAL_FILE);
            let bytes = std::fs::read(&path).map_err(|source| TrainError::Io {
                path: path.clone(),
                source,
            })?;
            let t: Trial = serde_json::from_slice(&bytes).map_err(|e| TrainError::RunFolder {
                path: path.clone(),
                message: format!("is not a trial result ({e})"),
            })?;
            if t.index != index {
                return Err(TrainError::RunFolder {
                    path,
                    message: format!("holds trial {} where trial {index} belongs", t.index),
                });
            }
            Ok(Some(t))
        }
        _ => Ok(None),
    }
}

/// Where one trial stands, as collect sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum TrialState {
    Done(Trial),
    /// No folder yet.
    Missing,
    /// Another process holds its folder.
    Running(String),
    /// Stopped without a result; the error when it wrote one.
    Failed(String),
    /// Its folder holds a trial of another config (the search changed since).
    Stale,
}

/// The state of every trial of `cfg` under `root`, by index.
pub fn trial_states(cfg: &ExperimentConfig, root: &Path) -> Result<Vec<TrialState>> {
    let assignments = list_trials(cfg)?;
    let mut out = Vec::with_capacity(assignments.len());
    for (i, a) in assignments.iter().enumerate() {
        let dir = trial_dir(root, i);
        let hash = config_hash(TRIAL_KIND, &trial_config_unchecked(cfg, a)?);
        let state = if !dir.exists() {
            TrialState::Missing
        } else if let Some(t) = finished_trial(&dir, &hash, i)? {
            TrialState::Done(t)
        } else if let Some(who) = crate::run_dir::holder(&dir)? {
            TrialState::Running(who)
        } else {
            match read_marker(&dir)? {
                Some(m) if m.config_hash != hash => TrialState::Stale,
                _ => TrialState::Failed(
                    std::fs::read_to_string(dir.join(ERROR_FILE))
                        .map(|s| s.trim().to_string())
                        .unwrap_or_else(|_| "stopped before it finished".into()),
                ),
            }
        };
        out.push(state);
    }
    Ok(out)
}

/// A trial's training config without the data checks (they ran when it trained).
fn trial_config_unchecked(cfg: &ExperimentConfig, a: &BTreeMap<String, toml::Value>) -> Result<ExperimentConfig> {
    let mut tc = crate::search::trial_config(cfg, a)?;
    tc.train.checkpoints = false;
    Ok(tc)
}

/// What a collect produced.
pub struct Collected {
    /// The finished trials, by index.
    pub trials: Vec<Trial>,
    /// Position in `trials` of the best.
    pub best: usize,
    /// Trials without a result, with why (`allow_missing` let the collect go on).
    pub unfinished: Vec<(usize, TrialState)>,
    /// The sweep's `summary.json` (the final run's, with the search's choice).
    pub summary: crate::Summary,
    /// The final run was trained now (false: an earlier collect's was reused).
    pub retrained: bool,
}

/// A one-line account of trials without a result, e.g. `trial 3 (missing), trial 5 (failed: ...)`.
pub fn describe_unfinished(unfinished: &[(usize, TrialState)]) -> String {
    unfinished
        .iter()
        .map(|(i, s)| match s {
            TrialState::Missing => format!("trial {i} (missing)"),
            TrialState::Running(who) => format!("trial {i} (running: {who})"),
            TrialState::Failed(e) => format!("trial {i} (failed: {e})"),
            TrialState::Stale => format!("trial {i} (from another config)"),
            TrialState::Done(_) => format!("trial {i} (done)"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Merges the finished trials under `root` into `trials.csv`, picks the best, and
/// retrains and tests it once into `root/final` (a later collect with the same
/// choice reuses that run). Unfinished trials are an error naming them, unless
/// `allow_missing`.
pub fn collect(
    cfg: &ExperimentConfig,
    root: &Path,
    data_dir: &Path,
    opts: &RunOptions,
    allow_missing: bool,
) -> Result<Collected> {
    let search = sweep::search_of(cfg)?;
    if !root.join(crate::run_dir::MARKER_FILE).exists() {
        return Err(TrainError::RunFolder {
            path: root.into(),
            message: "holds no trials of a job-array sweep: nothing to collect (run the trials first)".into(),
        });
    }
    let held = claim_root(root, cfg)?;
    if search.strategy == crate::search::Strategy::Asha {
        let r = crate::asha::collect(cfg, root, data_dir, opts, allow_missing)?;
        held.finish()?;
        return Ok(r);
    }
    let assignments = list_trials(cfg)?;
    let mut trials = Vec::new();
    let mut unfinished = Vec::new();
    for (i, s) in trial_states(cfg, root)?.into_iter().enumerate() {
        match s {
            TrialState::Done(t) => trials.push(t),
            other => unfinished.push((i, other)),
        }
    }
    refuse_unfinished(root, &unfinished, assignments.len(), allow_missing)?;
    let best = sweep::best_trial(&trials, search.metric)?;
    crate::io::write_atomic(&root.join("trials.csv"), sweep::trials_csv(&trials).as_bytes())?;
    let chosen = &assignments[trials[best].index];
    let (summary, retrained) = final_once(cfg, search, chosen, trials[best].index, root, data_dir, opts)?;
    let summary = sweep::write_summary(root, &summary, search, &trials[best], assignments.len())?;
    held.finish()?;
    Ok(Collected {
        trials,
        best,
        unfinished,
        summary,
        retrained,
    })
}

/// An error naming the unfinished trials, unless there are none or they are allowed.
pub(crate) fn refuse_unfinished(
    root: &Path,
    unfinished: &[(usize, TrialState)],
    total: usize,
    allow_missing: bool,
) -> Result<()> {
    if unfinished.is_empty() || allow_missing {
        return Ok(());
    }
    Err(TrainError::RunFolder {
        path: root.into(),
        message: format!(
            "{} of {total} trials have no result: {}; run them (`--trial I`), or pass --allow-missing \
             to collect the finished ones",
            unfinished.len(),
            describe_unfinished(unfinished)
        ),
    })
}

/// The final run of the `chosen` values in `root/final`: reused when a finished
/// one of the same config is there, else trained (replacing an earlier choice's).
pub(crate) fn final_once(
    cfg: &ExperimentConfig,
    search: &crate::search::SearchConfig,
    chosen: &BTreeMap<String, toml::Value>,
    chosen_index: usize,
    root: &Path,
    data_dir: &Path,
    opts: &RunOptions,
) -> Result<(crate::Summary, bool)> {
    let fc = final_config_for(cfg, search, chosen)?;
    let dir = root.join(sweep::FINAL_DIR);
    let hash = config_hash("train", &fc);
    if let Some(m) = read_marker(&dir)? {
        if m.kind == "train" && m.complete && m.config_hash == hash {
            let path = dir.join("summary.json");
            if let Ok(bytes) = std::fs::read(&path) {
                if let Ok(s) = serde_json::from_slice::<crate::Summary>(&bytes) {
                    if opts.verbosity != Verbosity::Silent {
                        eprintln!("reusing the final run in {}", dir.display());
                    }
                    return Ok((s, false));
                }
            }
        }
    }
    // Ours (it is in the shared folder and marked): an earlier choice's run is replaced.
    let held = RunDir::claim(&dir, "train", &hash, Start::Force)?;
    let opts = RunOptions {
        out_dir: Some(root.to_path_buf()),
        ..opts.clone()
    };
    let run = sweep::retrain(&fc, search, chosen, chosen_index, data_dir, &opts)?;
    held.finish()?;
    Ok((run.summary, true))
}

/// The final config: the chosen values, plus the last rung's epochs for successive halving.
pub(crate) fn final_config_for(
    cfg: &ExperimentConfig,
    search: &crate::search::SearchConfig,
    chosen: &BTreeMap<String, toml::Value>,
) -> Result<ExperimentConfig> {
    let mut fc = sweep::final_config(cfg, search, chosen)?;
    if let (crate::search::Strategy::Asha, Some(max)) = (search.strategy, search.max_epochs) {
        fc.train.epochs = max;
    }
    Ok(fc)
}
