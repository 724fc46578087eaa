//! One table of many runs: `digitlab train` and `digitlab transfer` outputs alike.
//!
//! [`compare`] reads the `summary.json` of each run folder (a folder without one is
//! searched one level down, so a whole `transfer` output folder can be passed), typed
//! as [`RunSummary`], and writes `compare.md` (Markdown), `compare.csv` and
//! `compare.png` (a bar chart of test accuracy and macro-F1 per run), rendered by
//! [`digitlab_report::compare`]. Columns: test accuracy, test macro-F1, train and
//! validation accuracy, the train − validation gap with an over-fitting flag (gap
//! above `overfit_gap`), backbone and head seconds (transfer runs), wall seconds and
//! parameter counts (total / trainable; a `train` run trains all of its `parameters`).
//! Missing values are shown as `-`.
use std::path::{Path, PathBuf};

use digitlab_report::io::write_atomic;
use digitlab_report::RunSummary;

pub use digitlab_report::compare::{csv, markdown, RunRow};

use crate::error::{FinetuneError, Result};

/// The `summary.json` files named by `runs`: a file itself, `<dir>/summary.json`, or
/// else every `<dir>/<sub>/summary.json` (sorted). Errors name the path with nothing.
pub fn summary_files(runs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = vec![];
    for run in runs {
        if run.is_file() {
            out.push(run.clone());
            continue;
        }
        let direct = run.join("summary.json");
        if direct.is_file() {
            out.push(direct);
            continue;
        }
        let entries = std::fs::read_dir(run).map_err(|e| FinetuneError::Summary {
            path: run.clone(),
            message: format!("not a run folder or summary.json ({e})"),
        })?;
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("summary.json"))
            .filter(|p| p.is_file())
            .collect();
        if found.is_empty() {
            return Err(FinetuneError::Summary {
                path: run.clone(),
                message: "no summary.json here or in its sub-folders; pass run folders written by `digitlab train` \
                          or `digitlab transfer`"
                    .into(),
            });
        }
        found.sort();
        out.extend(found);
    }
    Ok(out)
}

/// Reads one `summary.json` into a row.
pub fn read_row(path: &Path, overfit_gap: f64) -> Result<RunRow> {
    let s = RunSummary::read(path).map_err(|e| FinetuneError::Summary {
        path: e.path,
        message: e.message,
    })?;
    Ok(row(&s, path, overfit_gap))
}

/// The comparison row of one summary.
pub fn row(s: &RunSummary, path: &Path, overfit_gap: f64) -> RunRow {
    let finite = |v: Option<f64>| v.filter(|x| x.is_finite());
    let train_accuracy = finite(Some(s.train_accuracy));
    let val_accuracy = finite(s.val_accuracy);
    let gap = train_accuracy.zip(val_accuracy).map(|(t, v)| t - v);
    let transfer = s.transfer();
    RunRow {
        name: s.name.clone(),
        kind: s.kind().to_string(),
        model: s.model.clone(),
        protocol: transfer.map(|t| t.protocol.clone()).filter(|p| !p.is_empty()),
        dataset: s.dataset.clone(),
        test_accuracy: finite(s.test_accuracy),
        test_macro_f1: finite(s.test_macro_f1),
        train_accuracy,
        val_accuracy,
        best_epoch: transfer.and_then(|t| t.best_epoch),
        gap,
        overfit: gap.map(|g| g > overfit_gap),
        backbone_seconds: transfer.and_then(|t| finite(Some(t.backbone_seconds))),
        head_seconds: transfer.and_then(|t| finite(Some(t.head_seconds))),
        wall_seconds: finite(Some(s.wall_seconds)),
        params_total: Some(s.parameters as u64),
        params_trainable: Some(s.params_trainable() as u64),
        path: path.to_path_buf(),
        failed: None,
    }
}

/// Reads every run, making row names unique (a repeated name gets its folder path).
pub fn read_rows(runs: &[PathBuf], overfit_gap: f64) -> Result<Vec<RunRow>> {
    let files = summary_files(runs)?;
    let mut rows = files
        .iter()
        .map(|f| read_row(f, overfit_gap))
        .collect::<Result<Vec<_>>>()?;
    let names: Vec<String> = rows.iter().map(|r| r.name.clone()).collect();
    for r in rows.iter_mut() {
        if names.iter().filter(|n| **n == r.name).count() > 1 {
            let dir = r.path.parent().map(|p| p.display().to_string()).unwrap_or_default();
            r.name = format!("{} ({dir})", r.name);
        }
    }
    Ok(rows)
}

/// Reads `runs` and writes `compare.md`, `compare.csv` and `compare.png` into `out`.
pub fn compare(runs: &[PathBuf], out: &Path, overfit_gap: f64) -> Result<Vec<RunRow>> {
    compare_with_failed(runs, &[], out, overfit_gap)
}

/// [`compare`] with `failed` rows ([`RunRow::failed`]) appended after the runs read.
pub fn compare_with_failed(runs: &[PathBuf], failed: &[RunRow], out: &Path, overfit_gap: f64) -> Result<Vec<RunRow>> {
    if !(overfit_gap >= 0.0 && overfit_gap.is_finite()) {
        return Err(FinetuneError::Config(format!(
            "overfit gap must be >= 0, got {overfit_gap}"
        )));
    }
    let mut rows = if runs.is_empty() {
        vec![]
    } else {
        read_rows(runs, overfit_gap)?
    };
    rows.extend(failed.iter().cloned());
    write_atomic(&out.join("compare.md"), markdown(&rows, overfit_gap).as_bytes())?;
    write_atomic(&out.join("compare.csv"), csv(&rows).as_bytes())?;
    digitlab_report::compare::bar_chart(&out.join("compare.png"), &rows)?;
    Ok(rows)
}
