//! One table of many runs: `digitlab train` and `digitlab transfer` outputs alike.
//!
//! [`compare`] reads the `summary.json` of each run folder (a folder without one is
//! searched one level down, so a whole `transfer` output folder can be passed) and
//! writes `compare.md` (Markdown), `compare.csv` and `compare.png` (a bar chart of
//! test accuracy and macro-F1 per run). Columns: test accuracy, test macro-F1, train
//! and validation accuracy, the train − validation gap with an over-fitting flag
//! (gap above `overfit_gap`), backbone and head seconds (transfer runs), wall
//! seconds and parameter counts (total / trainable; a `train` run trains all of its
//! `parameters`).
//!
//! Summaries are read as flat JSON objects, so any run that writes these keys takes
//! part: `name`, `model`, `dataset`, `test_accuracy`, `test_macro_f1`,
//! `train_accuracy`, `val_accuracy`, `wall_seconds`, `backbone_seconds`,
//! `head_seconds`, `params_total` / `params_trainable` or `parameters`. Missing or
//! `null` values are shown as `-`.
use std::path::{Path, PathBuf};

use digitlab_train::io::write_atomic;
use digitlab_train::plots;
use serde_json::Value;

use crate::error::{FinetuneError, Result};

/// One row of the comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    /// Row label (the run's `name`, made unique with its folder when needed).
    pub name: String,
    /// `transfer` or `train`.
    pub kind: String,
    pub model: String,
    pub dataset: String,
    pub test_accuracy: Option<f64>,
    pub test_macro_f1: Option<f64>,
    pub train_accuracy: Option<f64>,
    pub val_accuracy: Option<f64>,
    /// `train_accuracy - val_accuracy`.
    pub gap: Option<f64>,
    /// `gap > overfit_gap`.
    pub overfit: Option<bool>,
    pub backbone_seconds: Option<f64>,
    pub head_seconds: Option<f64>,
    pub wall_seconds: Option<f64>,
    pub params_total: Option<u64>,
    pub params_trainable: Option<u64>,
    /// The summary file read (empty for a failed run).
    pub path: PathBuf,
    /// Why the run produced no results (a backbone that could not be loaded).
    pub failed: Option<String>,
}

impl RunRow {
    /// A row without results: the run `name` failed for `reason`.
    pub fn failed(name: &str, model: &str, dataset: &str, reason: &str) -> Self {
        Self {
            name: name.to_string(),
            kind: "transfer".into(),
            model: model.to_string(),
            dataset: dataset.to_string(),
            test_accuracy: None,
            test_macro_f1: None,
            train_accuracy: None,
            val_accuracy: None,
            gap: None,
            overfit: None,
            backbone_seconds: None,
            head_seconds: None,
            wall_seconds: None,
            params_total: None,
            params_trainable: None,
            path: PathBuf::new(),
            failed: Some(reason.to_string()),
        }
    }
}

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

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64).filter(|x| x.is_finite())
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(String::from)
}

/// Reads one `summary.json` into a row.
pub fn read_row(path: &Path, overfit_gap: f64) -> Result<RunRow> {
    let err = |message: String| FinetuneError::Summary {
        path: path.to_path_buf(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| FinetuneError::io(path, e))?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| err(format!("not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(err("expected a JSON object of results".into()));
    }
    let folder = path
        .parent()
        .and_then(|p| p.file_name())
        .map(|s| s.to_string_lossy().into_owned());
    let name = text(&v, "name")
        .or(folder)
        .unwrap_or_else(|| path.display().to_string());
    let is_transfer = v.get("backbone_seconds").is_some() || text(&v, "kind").as_deref() == Some("transfer");
    let train_accuracy = num(&v, "train_accuracy");
    let val_accuracy = num(&v, "val_accuracy");
    let gap = train_accuracy.zip(val_accuracy).map(|(t, v)| t - v);
    let count = |key: &str| v.get(key).and_then(Value::as_u64);
    let params_total = count("params_total").or_else(|| count("parameters"));
    let params_trainable = count("params_trainable").or_else(|| if is_transfer { None } else { count("parameters") });
    Ok(RunRow {
        name,
        kind: if is_transfer { "transfer" } else { "train" }.into(),
        model: text(&v, "model").unwrap_or_default(),
        dataset: text(&v, "dataset").unwrap_or_default(),
        test_accuracy: num(&v, "test_accuracy"),
        test_macro_f1: num(&v, "test_macro_f1"),
        train_accuracy,
        val_accuracy,
        gap,
        overfit: gap.map(|g| g > overfit_gap),
        backbone_seconds: num(&v, "backbone_seconds"),
        head_seconds: num(&v, "head_seconds"),
        wall_seconds: num(&v, "wall_seconds"),
        params_total,
        params_trainable,
        path: path.to_path_buf(),
        failed: None,
    })
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

fn pct(v: Option<f64>) -> String {
    v.map(|v| format!("{:.2}", 100.0 * v)).unwrap_or_else(|| "-".into())
}
fn f4(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into())
}
fn secs(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into())
}
fn int(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}
fn flag(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "yes",
        Some(false) => "no",
        None => "-",
    }
}

/// The Markdown table (with a one-line legend).
pub fn markdown(rows: &[RunRow], overfit_gap: f64) -> String {
    let mut s = String::from(
        "| run | kind | model | dataset | test acc % | test macro-F1 | train acc % | val acc % | train−val gap (pts) | \
         overfit | backbone s | head s | wall s | params total | params trainable |\n\
         |---|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|\n",
    );
    let cell = |t: &str| t.replace('|', "\\|");
    for r in rows {
        if r.failed.is_some() {
            s += &format!(
                "| {} | {} | {} | {} | FAILED (see below) | - | - | - | - | - | - | - | - | - | - |\n",
                cell(&r.name),
                r.kind,
                cell(&r.model),
                cell(&r.dataset)
            );
            continue;
        }
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            cell(&r.name),
            r.kind,
            cell(&r.model),
            cell(&r.dataset),
            pct(r.test_accuracy),
            f4(r.test_macro_f1),
            pct(r.train_accuracy),
            pct(r.val_accuracy),
            r.gap
                .map(|g| format!("{:+.2}", 100.0 * g))
                .unwrap_or_else(|| "-".into()),
            flag(r.overfit),
            secs(r.backbone_seconds),
            secs(r.head_seconds),
            secs(r.wall_seconds),
            int(r.params_total),
            int(r.params_trainable),
        );
    }
    s += &format!(
        "\noverfit: train accuracy exceeds validation accuracy by more than {:.1} points. \
         backbone s / head s: seconds in backbone passes / in head training on cached features \
         (transfer runs; 0 backbone seconds means every feature came from the cache).\n",
        100.0 * overfit_gap
    );
    let failed: Vec<&RunRow> = rows.iter().filter(|r| r.failed.is_some()).collect();
    if !failed.is_empty() {
        s += "\nFailed (no results; the other runs are unaffected):\n\n";
        for r in failed {
            let reason = r.failed.as_deref().unwrap_or_default().replace('\n', "\n  ");
            s += &format!("- **{}**: {reason}\n", r.name);
        }
    }
    s
}

fn csv_field(t: &str) -> String {
    if t.contains([',', '"', '\n']) {
        format!("\"{}\"", t.replace('"', "\"\""))
    } else {
        t.to_string()
    }
}

/// The CSV table (full precision, empty fields for missing values).
pub fn csv(rows: &[RunRow]) -> String {
    let o = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    let mut s = String::from(
        "name,kind,model,dataset,test_accuracy,test_macro_f1,train_accuracy,val_accuracy,train_val_gap,overfit,\
         backbone_seconds,head_seconds,wall_seconds,params_total,params_trainable,summary,failed\n",
    );
    for r in rows {
        let fields = [
            csv_field(&r.name),
            r.kind.clone(),
            csv_field(&r.model),
            csv_field(&r.dataset),
            o(r.test_accuracy),
            o(r.test_macro_f1),
            o(r.train_accuracy),
            o(r.val_accuracy),
            o(r.gap),
            r.overfit.map(|b| b.to_string()).unwrap_or_default(),
            o(r.backbone_seconds),
            o(r.head_seconds),
            o(r.wall_seconds),
            r.params_total.map(|v| v.to_string()).unwrap_or_default(),
            r.params_trainable.map(|v| v.to_string()).unwrap_or_default(),
            csv_field(&r.path.display().to_string()),
            // One line per row: the reason's lines joined.
            csv_field(
                &r.failed
                    .as_deref()
                    .unwrap_or_default()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
        ];
        s += &(fields.join(",") + "\n");
    }
    s
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
    let labels: Vec<String> = rows.iter().map(|r| r.name.clone()).collect();
    let nan = |v: Option<f64>| v.unwrap_or(f64::NAN);
    // Test metrics when any run has them; otherwise validation accuracy (runs on
    // datasets whose test split is absent).
    let (title, series) = if rows.iter().any(|r| r.test_accuracy.is_some()) {
        (
            "Test accuracy and macro-F1 per run",
            vec![
                (
                    "test accuracy",
                    rows.iter().map(|r| nan(r.test_accuracy)).collect::<Vec<_>>(),
                ),
                ("test macro-F1", rows.iter().map(|r| nan(r.test_macro_f1)).collect()),
            ],
        )
    } else {
        (
            "Validation accuracy per run (no test results)",
            vec![("val accuracy", rows.iter().map(|r| nan(r.val_accuracy)).collect())],
        )
    };
    if series.iter().any(|(_, v)| v.iter().any(|x| x.is_finite())) {
        plots::bar_chart(&out.join("compare.png"), title, "score", &labels, &series)
            .map_err(|e| FinetuneError::Train(e.into()))?;
    }
    Ok(rows)
}
