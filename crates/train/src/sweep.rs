//! Running a hyperparameter search: every trial trained on the train split and
//! scored on validation, a `trials.csv` table, then the best values retrained
//! (on train + validation if asked) and tested once.
use crate::config::{ExperimentConfig, MetricName};
use crate::experiment::{run_experiment, ExperimentResult};
use crate::io::{write_atomic, write_json};
use crate::search::{describe, trial_config};
use crate::trainer::{train, PreparedData, RunOptions, Verbosity};
use crate::{Result, TrainError};
use std::collections::BTreeMap;
use std::path::Path;

/// One scored trial.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Trial {
    pub index: usize,
    pub assignment: BTreeMap<String, String>,
    pub val_accuracy: f64,
    pub val_loss: f64,
    pub val_macro_f1: f64,
    pub train_accuracy: f64,
    pub best_epoch: Option<usize>,
    pub seconds: f64,
    /// Why the trial failed (e.g. diverged), if it did.
    pub error: Option<String>,
}

impl Trial {
    fn score(&self, m: MetricName) -> f64 {
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
    let search = cfg
        .search
        .as_ref()
        .ok_or_else(|| TrainError::Config("this config has no [search] section".into()))?;
    let run_dir = opts
        .out_dir
        .as_deref()
        .map(|d| crate::run_dir::claim_for_sweep(d, cfg))
        .transpose()?;
    let assignments = search.trials(cfg.seed)?;
    let reload_data = search.space.keys().any(|k| k.starts_with("data.") || k == "seed");
    let base_data = PreparedData::load(&trial_config(cfg, &BTreeMap::new())?, data_dir)?;
    // Every trial's config is built and checked before the first one trains.
    let configs = check_trials(cfg, search, &assignments, &base_data, data_dir)?;
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
        let trial_opts = RunOptions {
            out_dir: None,
            resume: false,
            max_epochs_this_run: None,
            ..opts.clone()
        };
        let strs = a.iter().map(|(k, v)| (k.clone(), v.to_string())).collect();
        let t0 = std::time::Instant::now();
        let trial = match train(&tc, &data, &trial_opts) {
            Ok(run) => {
                if let (Some(dir), true) = (&opts.out_dir, opts.tensorboard) {
                    trial_events(&dir.join("trials").join(format!("trial-{:03}", i + 1)), &tc, &run)?;
                }
                let v = run.val.as_ref().expect("validation split exists");
                let train_acc = run.history.last().map_or(0.0, |h| h["train_accuracy"]);
                Trial {
                    index: i,
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
                index: i,
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
            eprintln!("  -> {} = {:.4}", search.metric.as_str(), trial.score(search.metric));
        }
        trials.push(trial);
    }
    let better = |a: f64, b: f64| if search.metric.higher_is_better() { a > b } else { a < b };
    let best = trials
        .iter()
        .filter(|t| t.score(search.metric).is_finite())
        .fold(None::<&Trial>, |acc, t| match acc {
            Some(b) if !better(t.score(search.metric), b.score(search.metric)) => Some(b),
            _ => Some(t),
        })
        .ok_or_else(|| TrainError::Config("every search trial diverged; try smaller learning rates".into()))?
        .index;
    if let Some(dir) = &opts.out_dir {
        write_atomic(&dir.join("trials.csv"), trials_csv(&trials).as_bytes())?;
    }

    // Final run with the best values.
    let mut fc = trial_config(cfg, &assignments[best])?;
    if search.retrain_on_train_val {
        fc.data.val_fraction = 0.0;
        fc.train.select_metric = MetricName::TrainLoss;
        fc.train.early_stopping = None;
    }
    if opts.verbosity != Verbosity::Silent {
        let how = if search.retrain_on_train_val {
            "retraining on train + validation"
        } else {
            "retraining"
        };
        eprintln!("best trial {}: {}; {how}", best + 1, describe(&assignments[best]));
    }
    let final_data = PreparedData::load(&fc, data_dir)?;
    let final_opts = RunOptions {
        out_dir: opts.out_dir.as_ref().map(|d| d.join("final")),
        ..opts.clone()
    };
    let final_run = run_experiment(&fc, &final_data, &final_opts)?;
    if let Some(dir) = &opts.out_dir {
        let mut summary = final_run.summary.clone();
        if let digitlab_report::summary::RunExtras::Train(t) = &mut summary.extras {
            t.search_metric = Some(search.metric.as_str().into());
            t.best_trial = serde_json::to_value(&trials[best]).ok();
            t.trials = Some(trials.len());
            t.retrained_on_train_val = Some(search.retrain_on_train_val);
        }
        // The selection's validation score, since the final run may have no validation split.
        summary.val_accuracy = Some(trials[best].val_accuracy).filter(|v| v.is_finite());
        summary.val_macro_f1 = Some(trials[best].val_macro_f1).filter(|v| v.is_finite());
        write_json(&dir.join("summary.json"), &summary)?;
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

/// Builds and validates every trial's config (and the final run's) before any
/// training: a bad value in a later trial is an error naming its assignment. The
/// data of a trial is loaded here only when the trial changes the dataset or its
/// classes; other data keys are checked against the base data's shapes.
fn check_trials(
    cfg: &ExperimentConfig,
    search: &crate::search::SearchConfig,
    assignments: &[BTreeMap<String, toml::Value>],
    base_data: &PreparedData,
    data_dir: &Path,
) -> Result<Vec<ExperimentConfig>> {
    let changes_data = search.space.keys().any(|k| k == "data.dataset" || k == "data.classes");
    let mut configs = Vec::with_capacity(assignments.len());
    for a in assignments {
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
        configs.push(tc);
    }
    Ok(configs)
}

/// `trials.csv`: one row per trial with its values and validation scores.
pub fn trials_csv(trials: &[Trial]) -> String {
    let keys: Vec<&String> = trials
        .first()
        .map(|t| t.assignment.keys().collect())
        .unwrap_or_default();
    let mut s = String::from("trial");
    for k in &keys {
        s += &format!(",{k}");
    }
    s += ",val_accuracy,val_loss,val_macro_f1,train_accuracy,best_epoch,seconds,error\n";
    for t in trials {
        s += &format!("{}", t.index + 1);
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
