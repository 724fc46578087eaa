//! [`RunSummary`]: the flat results of one run, written as `summary.json` by
//! `digitlab train` / `sweep` (kind `train`) and by every backbone of
//! `digitlab transfer` (kind `transfer`), and read back, typed, by `compare` and
//! `reproduce`.
//!
//! The JSON stays flat: the common keys, `"kind"`, and the keys of the kind's extras
//! side by side (`test_accuracy`, `wall_seconds`, ..., `backbone_seconds`).
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The results every run has, plus the extras of its kind.
///
/// ```
/// use digitlab_report::summary::{RunExtras, RunSummary, TrainExtras};
/// let mut s = RunSummary::new("mlp", "digits", "mlp", RunExtras::Train(TrainExtras::default()));
/// s.test_accuracy = Some(0.97);
/// let json = serde_json::to_string(&s)?;
/// assert!(json.contains(r#""kind":"train""#) && json.contains(r#""test_accuracy":0.97"#));
/// assert_eq!(RunSummary::from_json(json.as_bytes())?, s);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// The run's label: the config `name` (train) or the backbone label (transfer).
    pub name: String,
    pub dataset: String,
    pub model: String,
    pub seed: u64,
    /// Epochs completed.
    pub epochs: usize,
    pub train_images: usize,
    pub val_images: usize,
    pub test_images: usize,
    /// All parameters of the model (transfer: backbone + new head).
    pub parameters: usize,
    pub train_accuracy: f64,
    pub val_accuracy: Option<f64>,
    pub val_macro_f1: Option<f64>,
    pub test_accuracy: Option<f64>,
    pub test_macro_f1: Option<f64>,
    pub test_loss: Option<f64>,
    /// The whole run, data to outputs.
    pub wall_seconds: f64,
    /// Optimisation steps only.
    pub train_seconds: f64,
    /// Training samples (transfer: feature vectors) per second of `train_seconds`.
    pub train_samples_per_second: f64,
    pub device: String,
    /// Most-confused pairs, top losses and calibration of the final evaluation
    /// (absent in summaries written before digitlab had it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interpretation: Option<crate::interpretation::Interpretation>,
    /// `"kind"` and the keys of that kind.
    #[serde(flatten)]
    pub extras: RunExtras,
}

/// What only one kind of run has; the JSON key `"kind"` says which.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RunExtras {
    Train(TrainExtras),
    Transfer(Box<TransferExtras>),
}

/// Which kind of run wrote a summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    Train,
    Transfer,
}

impl RunKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Train => "train",
            RunKind::Transfer => "transfer",
        }
    }
}

impl std::fmt::Display for RunKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Extras of a `digitlab train` run (and of the final run of a `digitlab sweep`,
/// which adds the search fields).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainExtras {
    pub best_epoch: Option<usize>,
    pub stopped_early: bool,
    /// Sweep: the metric trials were ranked by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search_metric: Option<String>,
    /// Sweep: the winning trial (its assignments and scores).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_trial: Option<serde_json::Value>,
    /// Sweep: how many trials ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trials: Option<usize>,
    /// Sweep: whether the final run was retrained on train + validation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retrained_on_train_val: Option<bool>,
}

/// Extras of one backbone of a `digitlab transfer` run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TransferExtras {
    /// The experiment (config) name.
    pub experiment: String,
    /// The weights source as configured (`none`, `hf:...`, a path).
    pub pretrained: String,
    /// SHA-256 of the pretrained file (`None` for random weights).
    pub weights_sha256: Option<String>,
    pub weights_loaded: usize,
    /// Head tensors of the checkpoint re-initialised (shape differs / absent).
    pub head_reinitialized: Vec<String>,
    pub input_channels: usize,
    pub input_height: usize,
    pub input_width: usize,
    pub normalization: String,
    pub feature_dim: usize,
    /// Root mean square of the raw training features (before standardisation);
    /// `None` when no features were cached (the backbone trained throughout).
    pub feature_rms: Option<f64>,
    /// Whether features were standardised before the head.
    pub standardize: bool,
    /// Backbone + new head (same as `parameters`).
    pub params_total: usize,
    /// The new head only.
    pub params_trainable: usize,
    /// `train_accuracy - val_accuracy`.
    pub train_val_gap: Option<f64>,
    /// `train_val_gap > overfit_gap`.
    pub overfit: Option<bool>,
    pub overfit_gap: f64,
    /// Backbone passes of this run (0 when every split came from the cache).
    pub backbone_seconds: f64,
    /// Head training and evaluation on cached features.
    pub head_seconds: f64,
    /// Images through the backbone in this run (train + val + test on a cold cache,
    /// whatever the number of epochs).
    pub backbone_images: usize,
    pub backbone_batches: usize,
    pub cache_hits: usize,
    pub cache_misses: usize,
    pub cache_load_seconds: f64,
    /// What trained: `frozen`, `frozen (bn train)`, `unfreeze N`, `full`, with
    /// `head K + ` when a head-only phase came first.
    #[serde(default)]
    pub protocol: String,
    /// Backbone stages that trained (empty for a frozen backbone).
    #[serde(default)]
    pub trained_stages: Vec<String>,
    /// The 1-based epoch whose weights were kept (`None`: the last).
    #[serde(default)]
    pub best_epoch: Option<usize>,
    /// The metric that chose [`TransferExtras::best_epoch`].
    #[serde(default)]
    pub selected_by: Option<String>,
}

/// A `summary.json` that could not be read, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("cannot read run summary {}: {message}", path.display())]
pub struct SummaryError {
    pub path: PathBuf,
    pub message: String,
}

impl RunSummary {
    /// A summary with the given labels, zero counts and no metrics yet.
    pub fn new(name: &str, dataset: &str, model: &str, extras: RunExtras) -> Self {
        Self {
            name: name.into(),
            dataset: dataset.into(),
            model: model.into(),
            seed: 0,
            epochs: 0,
            train_images: 0,
            val_images: 0,
            test_images: 0,
            parameters: 0,
            train_accuracy: 0.0,
            val_accuracy: None,
            val_macro_f1: None,
            test_accuracy: None,
            test_macro_f1: None,
            test_loss: None,
            wall_seconds: 0.0,
            train_seconds: 0.0,
            train_samples_per_second: 0.0,
            device: String::new(),
            interpretation: None,
            extras,
        }
    }

    pub fn kind(&self) -> RunKind {
        match self.extras {
            RunExtras::Train(_) => RunKind::Train,
            RunExtras::Transfer(_) => RunKind::Transfer,
        }
    }

    /// The transfer extras, when this is a transfer run.
    pub fn transfer(&self) -> Option<&TransferExtras> {
        match &self.extras {
            RunExtras::Transfer(t) => Some(t),
            RunExtras::Train(_) => None,
        }
    }

    /// The train extras, when this is a train run.
    pub fn train(&self) -> Option<&TrainExtras> {
        match &self.extras {
            RunExtras::Train(t) => Some(t),
            RunExtras::Transfer(_) => None,
        }
    }

    /// Trainable parameters: the new head of a transfer run, everything otherwise.
    pub fn params_trainable(&self) -> usize {
        self.transfer().map_or(self.parameters, |t| t.params_trainable)
    }

    /// Parses `summary.json` text. Summaries written before `"kind"` existed were all
    /// `train` runs (transfer summaries always carried `"kind": "transfer"`).
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        let mut v: serde_json::Value = serde_json::from_slice(bytes)?;
        if let Some(map) = v.as_object_mut() {
            map.entry("kind").or_insert_with(|| "train".into());
        }
        serde_json::from_value(v)
    }

    /// Reads `path` (a `summary.json`); the error names the file and what is wrong.
    pub fn read(path: &Path) -> Result<Self, SummaryError> {
        let err = |message: String| SummaryError {
            path: path.to_path_buf(),
            message,
        };
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        Self::from_json(&bytes).map_err(|e| {
            err(if e.is_syntax() || e.is_eof() {
                format!("not valid JSON: {e}")
            } else {
                format!("not a digitlab run summary: {e}")
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_summaries_stay_flat_and_round_trip() {
        let mut s = RunSummary::new(
            "resnet18-pretrained",
            "svhn",
            "resnet18",
            RunExtras::Transfer(Box::new(TransferExtras {
                backbone_seconds: 25.0,
                params_trainable: 5130,
                ..Default::default()
            })),
        );
        s.parameters = 11_181_642;
        let v: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert_eq!(v["kind"], "transfer");
        assert_eq!(v["backbone_seconds"], 25.0);
        assert_eq!(v["params_trainable"], 5130);
        assert_eq!(s.params_trainable(), 5130);
        let back = RunSummary::from_json(v.to_string().as_bytes()).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.kind(), RunKind::Transfer);
    }

    #[test]
    fn old_train_summaries_without_kind_read_as_train_and_bad_files_name_themselves() {
        let s = RunSummary::new("a", "digits", "mlp", RunExtras::Train(TrainExtras::default()));
        let mut v = serde_json::to_value(&s).unwrap();
        v.as_object_mut().unwrap().remove("kind");
        assert_eq!(RunSummary::from_json(v.to_string().as_bytes()).unwrap(), s);

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("summary.json");
        std::fs::write(&p, b"{ not json").unwrap();
        let e = RunSummary::read(&p).unwrap_err().to_string();
        assert!(e.contains("summary.json") && e.contains("not valid JSON"), "{e}");
        std::fs::write(&p, br#"{"name": "x"}"#).unwrap();
        let e = RunSummary::read(&p).unwrap_err().to_string();
        assert!(
            e.contains("not a digitlab run summary") && e.contains("missing field"),
            "{e}"
        );
    }
}
