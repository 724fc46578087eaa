//! Running a hyperparameter search: every trial trained on the train split and
//! scored on validation, a `trials.csv` table, then the best values retrained
//! (on train + validation if asked) and tested once.
use crate::config::{ExperimentConfig, MetricName};
use crate::experiment::{run_experiment, ExperimentResult};
use crate::io::{write_atomic, write_json};
use crate::search::{describe, trial_config, SearchConfig};
use crate::trainer::{train, PreparedData, RunOptions, Verbosity};
use crate::{Result, TrainError};
use std::collections::BTreeMap;
use std::path::Path;

/// One scored trial.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Trial {
    pub index: usize,
    pub assignment: BTreeMap<String, String>,
    // A diverged trial's NaN is written as JSON `null` and read back as NaN.
    #[serde(deserialize_with = "nan_or_f64")]
    pub val_accuracy: f64,
    #[serde(deserialize_with = "nan_or_f64")]
    pub val_loss: f64,
    #[serde(deserialize_with = "nan_or_f64")]
    pub val_macro_f1: f64,
    #[serde(deserialize_with = "nan_or_f64")]
    pub train_accuracy: f64,
    pub best_epoch: Option<usize>,
    pub seconds: f64,
    /// Why the trial failed (e.g. diverged), if it did.
    pub error: Option<String>,
}

fn nan_or_f64<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    let v: Option<f64> = serde::Deserialize::deserialize(d)?;
    Ok(v.unwrap_or(f64::NAN))
}

impl Trial {
    /// The trial's value of the search metric.
    pub fn score(&self, m: MetricName) -> f64 {
        match m {
            MetricName::ValAccuracy => self.val_accuracy,
            MetricName::ValLoss => self.val_loss,
            MetricName::ValMacroF1 => self.val_macro_f1,
            MetricName::TrainLoss => f64::NAN,
        }
    }
}

/// A finished search.
pub struct SweepResult {
    pub trials: Vec<Trial>,
    pub best: usize,
    pub final_run: ExperimentResult,
}

/// Runs the search in `cfg.search` with data from `data_dir`, writing
/// `trials.csv`, `sweep.json` and the final run's outputs (`final/`) under `opts.out_dir`,
/// and (with `opts.tensorboard`) each trial's curves and values as a TensorBoard run
/// `trials/trial-NNN/`, so TensorBoard's HParams table compares the trials.
pub fn run_sweep(cfg: &ExperimentConfig, data_dir: &Path, opts: &RunOptions) -> Result<SweepResult> {
    let search = search_of(cfg)?;
    let run_dir = opts
        .out_dir
        .as_deref()
        .map(|d| crate::run_dir::claim_for_sweep(d, cfg))
        .transpose()?;
    if search.strategy == crate::search::Strategy::Asha {
        let r = crate::asha::run_serial(cfg, data_dir, opts)?;
        run_dir.as_ref().map(crate::run_dir::RunDir::finish).transpose()?;
        return Ok(r);
    }
    let assignments = search.trials(cfg.seed)?;
    let reload_data = reloads_data(search);
    let base_data = load_base_data(cfg, data_dir)?;
    // Every trial's config is built and checked before the first one trains.
    let configs = assignments
        .iter()
        .map(|a| check_trial(cfg, search, a, &base_data, data_dir))
        .collect::<Result<Vec<_>>>()?;
    let mut trials = Vec::new();
    for (i, (a, tc)) in assignments.iter().zip(configs).enumerate() {
        let data = if reload_data {
            PreparedData::load(&tc, data_dir)?
        } else {
            base_data.clone()
        };
        if opts.verbosity != Verbosity::Silent {
            eprintln!("trial {}/{}: {}", i + 1, assignments.len(), describe(a));
        }
        // Each trial's curves and values as a TensorBoard run, for its HParams table.
        let events = (opts.tensorboard)
            .then(|| {
                opts.out_dir
                    .as_ref()
                    .map(|d| d.join("trials").join(format!("trial-{:03}", i + 1)))
            })
            .flatten();
        trials.push(run_trial(i, a, &tc, &data, opts, search.metric, events.as_deref())?);
    }
    let best = best_trial(&trials, search.metric)?;
    if let Some(dir) = &opts.out_dir {
        write_atomic(&dir.join("trials.csv"), trials_csv(&trials).as_bytes())?;
    }
    let fc = final_config(cfg, search, &assignments[best])?;
    let final_run = retrain(&fc, search, &assignments[best], best, data_dir, opts)?;
    if let Some(dir) = &opts.out_dir {
        write_summary(dir, &final_run.summary, search, &trials[best], trials.len())?;
    }
    run_dir.as_ref().map(crate::run_dir::RunDir::finish).transpose()?;
    Ok(SweepResult {
        trials,
        best,
        final_run,
    })
}

/// One trial's event file in `dir` (inside the sweep's own folder), written once
/// the trial is done: its epochs and its config as hyperparameters.
fn trial_events(dir: &Path, cfg: &ExperimentConfig, run: &crate::TrainedRun) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| TrainError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let config = serde_json::to_value(cfg).map_err(|e| TrainError::Config(e.to_string()))?;
    crate::fit::TensorBoard::write_history(dir, &config, &run.history, run.complete)?;
    Ok(())
}

/// The `[search]` section of `cfg`, or an error saying it has none.
pub(crate) fn search_of(cfg: &ExperimentConfig) -> Result<&SearchConfig> {
    cfg.search
        .as_ref()
        .ok_or_else(|| TrainError::Config("this config has no [search] section".into()))
}

/// Whether trials change the data (their split or seed), so each loads its own.
pub(crate) fn reloads_data(search: &SearchConfig) -> bool {
    search.space.keys().any(|k| k.starts_with("data.") || k == "seed")
}

/// The data of the config without any trial's values.
pub(crate) fn load_base_data(cfg: &ExperimentConfig, data_dir: &Path) -> Result<PreparedData> {
    PreparedData::load(&trial_config(cfg, &BTreeMap::new())?, data_dir)
}

/// Trains one trial (its config from [`check_trial`]) and scores it on
/// validation, writing nothing but (with `events`) its TensorBoard event file in
/// that folder; a diverged trial is a row with its error, any other failure an error.
pub(crate) fn run_trial(
    index: usize,
    assignment: &BTreeMap<String, toml::Value>,
    tc: &ExperimentConfig,
    data: &PreparedData,
    opts: &RunOptions,
    metric: MetricName,
    events: Option<&Path>,
) -> Result<Trial> {
    let trial_opts = RunOptions {
        out_dir: None,
        resume: false,
        max_epochs_this_run: None,
        ..opts.clone()
    };
    let strs = assignment.iter().map(|(k, v)| (k.clone(), v.to_string())).collect();
    let t0 = std::time::Instant::now();
    let trial = match train(tc, data, &trial_opts) {
        Ok(run) => {
            if let Some(dir) = events {
                trial_events(dir, tc, &run)?;
            }
            let v = run.val.as_ref().expect("validation split exists");
            let train_acc = run.history.last().map_or(0.0, |h| h["train_accuracy"]);
            Trial {
                index,
                assignment: strs,
                val_accuracy: v.accuracy(),
                val_loss: v.loss,
                val_macro_f1: v.macro_f1(),
                train_accuracy: train_acc,
                best_epoch: run.best_epoch,
                seconds: t0.elapsed().as_secs_f64(),
                error: None,
            }
        }
        Err(e @ (TrainError::Diverged { .. } | TrainError::DivergedPart(_))) => Trial {
            index,
            assignment: strs,
            val_accuracy: f64::NAN,
            val_loss: f64::NAN,
            val_macro_f1: f64::NAN,
            train_accuracy: f64::NAN,
            best_epoch: None,
            seconds: t0.elapsed().as_secs_f64(),
            error: Some(e.to_string()),
        },
        Err(e) => return Err(e),
    };
    if opts.verbosity != Verbosity::Silent {
        eprintln!("  -> {} = {:.4}", metric.as_str(), trial.score(metric));
    }
    Ok(trial)
}

/// Position in `trials` of the best one by `metric` (the first of equals); an
/// error when every trial diverged.
pub(crate) fn best_trial(trials: &[Trial], metric: MetricName) -> Result<usize> {
    let better = |a: f64, b: f64| if metric.higher_is_better() { a > b } else { a < b };
    trials
        .iter()
        .enumerate()
        .filter(|(_, t)| t.score(metric).is_finite())
        .fold(None::<(usize, &Trial)>, |acc, (i, t)| match acc {
            Some((j, b)) if !better(t.score(metric), b.score(metric)) => Some((j, b)),
            _ => Some((i, t)),
        })
        .map(|(i, _)| i)
        .ok_or_else(|| TrainError::Config("every search trial diverged; try smaller learning rates".into()))
}

/// The config of the final run with the best values: on train + validation when
/// the search says so.
pub(crate) fn final_config(
    cfg: &ExperimentConfig,
    search: &SearchConfig,
    best: &BTreeMap<String, toml::Value>,
) -> Result<ExperimentConfig> {
    let mut fc = trial_config(cfg, best)?;
    if search.retrain_on_train_val {
        fc.data.val_fraction = 0.0;
        fc.train.select_metric = MetricName::TrainLoss;
        fc.train.early_stopping = None;
    }
    Ok(fc)
}

/// Trains and tests the final config `fc` (into `<out>/final` when there is an out folder).
pub(crate) fn retrain(
    fc: &ExperimentConfig,
    search: &SearchConfig,
    best: &BTreeMap<String, toml::Value>,
    best_index: usize,
    data_dir: &Path,
    opts: &RunOptions,
) -> Result<ExperimentResult> {
    if opts.verbosity != Verbosity::Silent {
        let how = if search.retrain_on_train_val {
            "retraining on train + validation"
        } else {
            "retraining"
        };
        eprintln!("best trial {}: {}; {how}", best_index + 1, describe(best));
    }
    let final_data = PreparedData::load(fc, data_dir)?;
    let final_opts = RunOptions {
        out_dir: opts.out_dir.as_ref().map(|d| d.join(FINAL_DIR)),
        ..opts.clone()
    };
    run_experiment(fc, &final_data, &final_opts)
}

/// The sub-folder of a sweep's output folder that holds the final run.
pub const FINAL_DIR: &str = "final";

/// The sweep's `summary.json`: the final run's, with the search's choice in it.
pub(crate) fn write_summary(
    dir: &Path,
    final_summary: &crate::Summary,
    search: &SearchConfig,
    best: &Trial,
    trials: usize,
) -> Result<crate::Summary> {
    let mut summary = final_summary.clone();
    if let digitlab_report::summary::RunExtras::Train(t) = &mut summary.extras {
        t.search_metric = Some(search.metric.as_str().into());
        t.best_trial = serde_json::to_value(best).ok();
        t.trials = Some(trials);
        t.retrained_on_train_val = Some(search.retrain_on_train_val);
    }
    // The selection's validation score, since the final run may have no validation split.
    summary.val_accuracy = Some(best.val_accuracy).filter(|v| v.is_finite());
    summary.val_macro_f1 = Some(best.val_macro_f1).filter(|v| v.is_finite());
    write_json(&dir.join("summary.json"), &summary)?;
    Ok(summary)
}

/// Builds and validates a trial's config (and the final run's) before any
/// training: a bad value is an error naming its assignment. The data of a trial is
/// loaded here only when the trial changes the dataset or its classes; other data
/// keys are checked against the base data's shapes.
pub(crate) fn check_trial(
    cfg: &ExperimentConfig,
    search: &SearchConfig,
    a: &BTreeMap<String, toml::Value>,
    base_data: &PreparedData,
    data_dir: &Path,
) -> Result<ExperimentConfig> {
    let changes_data = search.space.keys().any(|k| k == "data.dataset" || k == "data.classes");
    let mut tc = trial_config(cfg, a)?;
    tc.train.checkpoints = false;
    let named = |e: TrainError| match e {
        TrainError::Config(m) => TrainError::Config(format!("search trial `{}`: {m}", describe(a))),
        other => other,
    };
    if tc.data.val_fraction == 0.0 {
        return Err(named(TrainError::Config(
            "a search needs a validation split: set data.val_fraction > 0".into(),
        )));
    }
    if changes_data {
        crate::validate::check_data(&tc, &PreparedData::load(&tc, data_dir)?).map_err(named)?;
    } else {
        crate::validate::check_data(&tc, base_data).map_err(named)?;
    }
    Ok(tc)
}

/// `trials.csv`: one row per trial with its values and validation scores.
pub fn trials_csv(trials: &[Trial]) -> String {
    let rows: Vec<(Vec<String>, &Trial)> = trials.iter().map(|t| (Vec::new(), t)).collect();
    trials_table(&rows, &[])
}

/// The rows of `trials.csv`, each with values of the `extra` columns put after `trial`.
pub(crate) fn trials_table(rows: &[(Vec<String>, &Trial)], extra: &[&str]) -> String {
    let keys: Vec<&String> = rows
        .first()
        .map(|(_, t)| t.assignment.keys().collect())
        .unwrap_or_default();
    let mut s = String::from("trial");
    for k in extra.iter().copied().chain(keys.iter().map(|k| k.as_str())) {
        s += &format!(",{k}");
    }
    s += ",val_accuracy,val_loss,val_macro_f1,train_accuracy,best_epoch,seconds,error\n";
    for (values, t) in rows {
        s += &format!("{}", t.index + 1);
        for v in values {
            s += &format!(",{v}");
        }
        for k in &keys {
            s += &format!(
                ",{}",
                t.assignment.get(*k).map(|v| v.replace(',', ";")).unwrap_or_default()
            );
        }
        s += &format!(
            ",{:.6},{:.6},{:.6},{:.6},{},{:.2},{}\n",
            t.val_accuracy,
            t.val_loss,
            t.val_macro_f1,
            t.train_accuracy,
            t.best_epoch.map(|e| e.to_string()).unwrap_or_default(),
            t.seconds,
            t.error.as_deref().unwrap_or("").replace([',', '\n'], " ")
        );
    }
    s
}
