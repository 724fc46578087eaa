//! A callback that logs every epoch's metrics to a TensorBoard event file in the
//! run folder (`tensorboard --logdir runs`), with the run's hyperparameters for
//! TensorBoard's HParams table and, at the end, the report's images.
use super::{Callback, EpochEnd, EpochMetrics, FitEnd, FitState};
use crate::Result;
use digitlab_report::tensorboard::{EventWriter, HParamValue};
use std::path::Path;

/// The images a finished run adds from its folder: (file, tag).
pub const END_IMAGES: [(&str, &str); 4] = [
    ("confusion.png", "confusion_matrix"),
    ("misclassified.png", "misclassified"),
    ("top_losses.png", "top_losses"),
    ("reliability.png", "reliability_diagram"),
];

/// The tag a `metrics.csv` column is logged under: `{split}_{metric}` becomes
/// `{metric}/{split}` so TensorBoard groups train and validation curves on one
/// card; `lr` is `learning_rate` and `seconds` `epoch_seconds`.
pub fn tag_for(column: &str) -> String {
    for split in ["train", "val", "test"] {
        if let Some(metric) = column.strip_prefix(split).and_then(|r| r.strip_prefix('_')) {
            return format!("{metric}/{split}");
        }
    }
    match column {
        "lr" => "learning_rate".into(),
        "seconds" => "epoch_seconds".into(),
        other => other.into(),
    }
}

/// The config's scalar leaves as HParams (`optim.lr`, `model.kind`, ...): tables
/// are flattened with dotted keys, arrays become their JSON text, nulls are left out.
pub fn hparams_of(config: &serde_json::Value) -> Vec<(String, HParamValue)> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, HParamValue)>) {
        use serde_json::Value as J;
        match v {
            J::Object(m) => {
                for (k, v) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            J::Number(n) => {
                if let Some(x) = n.as_f64() {
                    out.push((prefix.into(), HParamValue::Number(x)));
                }
            }
            J::Bool(b) => out.push((prefix.into(), HParamValue::Bool(*b))),
            J::String(s) => out.push((prefix.into(), HParamValue::Text(s.clone()))),
            J::Array(_) => out.push((prefix.into(), HParamValue::Text(v.to_string()))),
            J::Null => {}
        }
    }
    let mut out = Vec::new();
    walk("", config, &mut out);
    out
}

/// Writes one `events.out.tfevents.*` file into a run folder as the run goes.
pub struct TensorBoard {
    writer: EventWriter,
    hparams: Vec<(String, HParamValue)>,
    started: bool,
}

impl TensorBoard {
    /// A new event file in the existing folder `dir` (never an existing file),
    /// logging `config`'s values as the run's hyperparameters.
    pub fn create(dir: &Path, config: &serde_json::Value) -> Result<Self> {
        Ok(Self {
            writer: EventWriter::create(dir)?,
            hparams: hparams_of(config),
            started: false,
        })
    }

    /// A finished history at once (runs whose epochs were not watched live: head
    /// training, sweep trials); `success` ends the HParams session.
    pub fn write_history(
        dir: &Path,
        config: &serde_json::Value,
        history: &[EpochMetrics],
        success: bool,
    ) -> Result<Self> {
        let mut tb = Self::create(dir, config)?;
        tb.start()?;
        for m in history {
            tb.log_epoch(m)?;
        }
        tb.end(success)?;
        Ok(tb)
    }

    /// The event file.
    pub fn path(&self) -> &Path {
        self.writer.path()
    }

    fn start(&mut self) -> Result<()> {
        if !self.started {
            self.writer.hparams(&self.hparams)?;
            self.started = true;
        }
        Ok(())
    }

    fn end(&mut self, success: bool) -> Result<()> {
        self.writer.hparams_end(success)?;
        Ok(self.writer.flush()?)
    }

    /// One epoch's metrics at step `epoch` (every column of `metrics.csv` but `epoch`).
    pub fn log_epoch(&mut self, metrics: &EpochMetrics) -> Result<()> {
        let step = metrics.get("epoch").copied().unwrap_or(0.0) as i64;
        for (column, value) in metrics {
            if column != "epoch" {
                self.writer.scalar(&tag_for(column), step, *value)?;
            }
        }
        Ok(())
    }

    /// Adds the [`END_IMAGES`] that exist in `dir` at `step` and flushes.
    pub fn add_end_images(&mut self, dir: &Path, step: i64) -> Result<()> {
        for (file, tag) in END_IMAGES {
            let p = dir.join(file);
            if p.is_file() {
                self.writer.image_file(tag, step, &p)?;
            }
        }
        Ok(self.writer.flush()?)
    }
}

impl Callback for TensorBoard {
    fn on_fit_start(&mut self, state: &FitState, _epochs: usize) -> Result<()> {
        if state.epochs_done() > 0 {
            // Resumed: epochs after the checkpoint that an earlier file may hold are
            // superseded by this run's.
            self.writer.session_start(state.epochs_done() as i64 + 1)?;
        }
        self.start()
    }

    fn after_epoch(&mut self, end: &EpochEnd<'_>) -> Result<()> {
        self.log_epoch(end.metrics())?;
        // Flushed each epoch so a live `tensorboard` sees the run move.
        Ok(self.writer.flush()?)
    }

    fn on_fit_end(&mut self, end: &FitEnd<'_>) -> Result<()> {
        // A run cut short (to be resumed) has no session end yet.
        if end.complete {
            self.end(true)
        } else {
            Ok(self.writer.flush()?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use digitlab_report::tensorboard::read_scalars;

    #[test]
    fn columns_map_to_grouped_tags() {
        assert_eq!(tag_for("train_loss"), "loss/train");
        assert_eq!(tag_for("val_macro_f1"), "macro_f1/val");
        assert_eq!(tag_for("train_samples_per_second"), "samples_per_second/train");
        assert_eq!(tag_for("lr"), "learning_rate");
        assert_eq!(tag_for("seconds"), "epoch_seconds");
        assert_eq!(tag_for("training"), "training");
    }

    #[test]
    fn hparams_flatten_the_config() {
        let v = serde_json::json!({"optim": {"kind": "adam", "lr": 0.01}, "model": {"hidden": [64, 32]}, "x": null});
        let h = hparams_of(&v);
        assert!(h.contains(&("optim.lr".into(), HParamValue::Number(0.01))));
        assert!(h.contains(&("optim.kind".into(), HParamValue::Text("adam".into()))));
        assert!(h.contains(&("model.hidden".into(), HParamValue::Text("[64,32]".into()))));
        assert_eq!(h.len(), 3);
    }

    #[test]
    fn a_history_is_logged_at_its_epochs() {
        let dir = tempfile::tempdir().unwrap();
        let history: Vec<EpochMetrics> = (1..=2)
            .map(|e| {
                [("epoch", e as f64), ("train_loss", 1.0 / e as f64), ("lr", 0.1)]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect()
            })
            .collect();
        let tb = TensorBoard::write_history(dir.path(), &serde_json::json!({"seed": 1}), &history, true).unwrap();
        let s = read_scalars(tb.path()).unwrap();
        assert_eq!(
            s,
            vec![
                ("learning_rate".into(), 1, 0.1),
                ("loss/train".into(), 1, 1.0),
                ("learning_rate".into(), 2, 0.1),
                ("loss/train".into(), 2, 0.5)
            ]
        );
    }
}
