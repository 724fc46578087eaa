//! The comparison of many runs: one Markdown table, one CSV and one bar chart, from
//! plain rows (reading the runs' `summary.json` is the caller's job).
use std::path::{Path, PathBuf};

use crate::plots::{self, PlotError};
use crate::table::markdown_cell;

/// One row of the comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    /// Row label (the run's `name`, made unique with its folder when needed).
    pub name: String,
    /// `transfer` or `train`.
    pub kind: String,
    pub model: String,
    /// What trained (transfer runs): `frozen`, `unfreeze 1`, `full`, ...
    pub protocol: Option<String>,
    pub dataset: String,
    pub test_accuracy: Option<f64>,
    pub test_macro_f1: Option<f64>,
    pub train_accuracy: Option<f64>,
    pub val_accuracy: Option<f64>,
    /// The epoch whose weights were kept (`None`: the last one, or not recorded).
    pub best_epoch: Option<usize>,
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
            protocol: None,
            dataset: dataset.to_string(),
            test_accuracy: None,
            test_macro_f1: None,
            train_accuracy: None,
            val_accuracy: None,
            best_epoch: None,
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

/// Percentage points without the sign (the column headers say `%`).
fn points(v: Option<f64>) -> String {
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
        "| run | kind | model | trains | dataset | test acc % | test macro-F1 | train acc % | val acc % | kept epoch | \
         train−val gap (pts) | overfit | backbone s | head s | wall s | params total | params trainable |\n\
         |---|---|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|\n",
    );
    let cell = markdown_cell;
    for r in rows {
        if r.failed.is_some() {
            s += &format!(
                "| {} | {} | {} | {} | {} | FAILED (see below) | - | - | - | - | - | - | - | - | - | - | - |\n",
                cell(&r.name),
                r.kind,
                cell(&r.model),
                cell(r.protocol.as_deref().unwrap_or("-")),
                cell(&r.dataset)
            );
            continue;
        }
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            cell(&r.name),
            r.kind,
            cell(&r.model),
            cell(r.protocol.as_deref().unwrap_or("-")),
            cell(&r.dataset),
            points(r.test_accuracy),
            f4(r.test_macro_f1),
            points(r.train_accuracy),
            points(r.val_accuracy),
            r.best_epoch.map(|e| e.to_string()).unwrap_or_else(|| "-".into()),
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
         backbone s / head s: seconds in cached-feature backbone passes / in training (the head on cached \
         features, or the head with the trainable backbone; transfer runs; 0 backbone seconds means every \
         feature came from the cache). trains: what was trained besides the new head. kept epoch: the \
         epoch whose weights the run kept (best by its selection metric; - where not recorded: the last); \
         epochs count a head-only phase first, so a kept epoch inside it means fine-tuning never beat the \
         head.\n",
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
        "name,kind,model,protocol,dataset,test_accuracy,test_macro_f1,train_accuracy,val_accuracy,best_epoch,\
         train_val_gap,overfit,backbone_seconds,head_seconds,wall_seconds,params_total,params_trainable,summary,failed\n",
    );
    for r in rows {
        let fields = [
            csv_field(&r.name),
            r.kind.clone(),
            csv_field(&r.model),
            csv_field(r.protocol.as_deref().unwrap_or_default()),
            csv_field(&r.dataset),
            o(r.test_accuracy),
            o(r.test_macro_f1),
            o(r.train_accuracy),
            o(r.val_accuracy),
            r.best_epoch.map(|e| e.to_string()).unwrap_or_default(),
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

/// The bar chart of test accuracy and macro-F1 per run (validation accuracy when no
/// run has test results); nothing is written when no run has any of them.
pub fn bar_chart(path: &Path, rows: &[RunRow]) -> Result<(), PlotError> {
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
        plots::bar_chart(path, title, "score", &labels, &series)?;
    }
    Ok(())
}
