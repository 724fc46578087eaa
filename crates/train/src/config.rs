//! Typed experiment configuration, read from TOML with unknown keys rejected, and
//! `--set key=value` overrides applied on dotted paths before type checking.
use crate::optim::OptimizerConfig;
use crate::schedule::ScheduleConfig;
use crate::search::SearchConfig;
use crate::TrainError;
use digitlab_data::{Augment, DatasetKind, Normalization, Pipeline};
use digitlab_losses::LossKind;
use digitlab_models::ModelConfig;
use std::path::Path;

/// A complete experiment: data, model, optimizer, schedule, training options and,
/// for `sweep`, a search space.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Short name, used for output folders and reports.
    pub name: String,
    /// What question the experiment answers (shown in reports).
    #[serde(default)]
    pub description: String,
    /// Seed of weights, splits, shuffling and augmentation.
    #[serde(default = "default_seed")]
    pub seed: u64,
    pub data: DataConfig,
    pub model: ModelConfig,
    pub optim: OptimizerConfig,
    #[serde(default)]
    pub schedule: ScheduleConfig,
    pub train: TrainOptions,
    #[serde(default)]
    pub search: Option<SearchConfig>,
}

fn default_seed() -> u64 {
    42
}

/// Which data, which classes, how split and how preprocessed (`[data]`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    pub dataset: DatasetKind,
    /// Keep only these classes, relabelled 0, 1, ... in this order (e.g. `[3, 6]`).
    #[serde(default)]
    pub classes: Option<Vec<u8>>,
    /// Fraction of the training split to use (e.g. 0.25).
    #[serde(default = "one_f64")]
    pub subset: f64,
    /// Fraction of the training data held out for validation (0 = none).
    #[serde(default = "default_val")]
    pub val_fraction: f64,
    /// Split each class in the same proportion.
    #[serde(default = "yes")]
    pub stratified: bool,
    /// Use at most this many test images (`None` = all).
    #[serde(default)]
    pub test_limit: Option<usize>,
    #[serde(default)]
    pub normalize: Normalization,
    #[serde(default)]
    pub resize: Option<[usize; 2]>,
    #[serde(default)]
    pub channels: Option<usize>,
    #[serde(default)]
    pub augment: Option<Augment>,
}

fn one_f64() -> f64 {
    1.0
}
fn default_val() -> f64 {
    0.2
}
fn yes() -> bool {
    true
}

impl DataConfig {
    /// The per-batch pipeline these options describe.
    pub fn pipeline(&self) -> Pipeline {
        Pipeline {
            channels: self.channels,
            resize: self.resize,
            augment: self.augment.clone(),
            normalize: self.normalize.clone(),
        }
    }
}

/// How L2 regularisation is scaled (see `digitlab_losses::L2Convention`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum L2Scale {
    /// λ/(2m)·Σw², m = number of training examples (the coursework's convention).
    #[default]
    HalfOverM,
    /// λ·Σw².
    Plain,
}

/// Metric names usable for model selection and early stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricName {
    #[default]
    ValAccuracy,
    ValLoss,
    ValMacroF1,
    TrainLoss,
}

impl MetricName {
    pub fn higher_is_better(self) -> bool {
        matches!(self, MetricName::ValAccuracy | MetricName::ValMacroF1)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            MetricName::ValAccuracy => "val_accuracy",
            MetricName::ValLoss => "val_loss",
            MetricName::ValMacroF1 => "val_macro_f1",
            MetricName::TrainLoss => "train_loss",
        }
    }
    pub fn needs_validation(self) -> bool {
        !matches!(self, MetricName::TrainLoss)
    }
}

/// Stop when the monitored metric has not improved by `min_delta` for `patience` epochs.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStopping {
    #[serde(default)]
    pub metric: MetricName,
    pub patience: usize,
    #[serde(default)]
    pub min_delta: f64,
}

/// Epochs, batch size, loss and regularisation (`[train]`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainOptions {
    pub epochs: usize,
    /// Minibatch size; 0 means full batch (the whole training set per step).
    pub batch_size: usize,
    pub loss: LossKind,
    /// L2 penalty strength λ added to the loss (0 = none); biases and batch-norm
    /// parameters are not penalised.
    #[serde(default)]
    pub l2: f64,
    #[serde(default)]
    pub l2_scale: L2Scale,
    /// Clip the global gradient norm to this value.
    #[serde(default)]
    pub grad_clip: Option<f64>,
    #[serde(default)]
    pub early_stopping: Option<EarlyStopping>,
    /// Metric that picks the best checkpoint.
    #[serde(default)]
    pub select_metric: MetricName,
    /// Evaluation batch size.
    #[serde(default = "eval_batch")]
    pub eval_batch_size: usize,
    /// Write checkpoints (best and last) every epoch.
    #[serde(default = "yes")]
    pub checkpoints: bool,
    /// Compute precision: `f32`, or `bf16` mixed precision (f32 master weights,
    /// loss and metrics; see `digitlab_models::precision`). Not written when f32.
    #[serde(default, skip_serializing_if = "digitlab_models::Precision::is_f32")]
    pub dtype: digitlab_models::Precision,
}

fn eval_batch() -> usize {
    1000
}

impl ExperimentConfig {
    /// Reads a TOML config, applying `overrides` (`key.path=value`) first.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        Self::from_toml_str(&text, overrides).map_err(|e| match e {
            TrainError::Config(m) => TrainError::Config(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Parses TOML text with `overrides` applied.
    pub fn from_toml_str(text: &str, overrides: &[String]) -> Result<Self, TrainError> {
        let mut value: toml::Value = toml::from_str(text).map_err(|e| TrainError::Config(e.to_string()))?;
        for o in overrides {
            apply_override(&mut value, o)?;
        }
        Self::from_value(value)
    }

    /// Type-checks a TOML value tree.
    pub fn from_value(value: toml::Value) -> Result<Self, TrainError> {
        let cfg: ExperimentConfig = value
            .try_into()
            .map_err(|e: toml::de::Error| TrainError::Config(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// This config as a TOML value tree (for overrides in searches).
    pub fn to_value(&self) -> toml::Value {
        toml::Value::try_from(self).expect("configs always serialise")
    }

    /// Checks values that types alone cannot.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::Config(m));
        validate_name("name", &self.name).map_err(TrainError::Config)?;
        if self.train.epochs == 0 {
            return bad("train.epochs must be at least 1".into());
        }
        if !(self.data.subset > 0.0 && self.data.subset <= 1.0) {
            return bad(format!("data.subset must be in (0, 1], got {}", self.data.subset));
        }
        if !(0.0..1.0).contains(&self.data.val_fraction) {
            return bad(format!(
                "data.val_fraction must be in [0, 1), got {}",
                self.data.val_fraction
            ));
        }
        if self.train.l2 < 0.0 || !self.train.l2.is_finite() {
            return bad(format!("train.l2 must be >= 0, got {}", self.train.l2));
        }
        if self.train.eval_batch_size == 0 {
            return bad("train.eval_batch_size must be at least 1".into());
        }
        if let Some(c) = self.train.grad_clip {
            if c.is_nan() || c <= 0.0 {
                return bad(format!("train.grad_clip must be positive, got {c}"));
            }
        }
        let needs_val = self.train.select_metric.needs_validation()
            || self
                .train
                .early_stopping
                .as_ref()
                .is_some_and(|e| e.metric.needs_validation());
        if needs_val && self.data.val_fraction == 0.0 {
            return bad(format!(
                "train.select_metric / early_stopping use a validation metric but data.val_fraction is 0; \
                 set data.val_fraction (e.g. 0.2) or use `train_loss` (selected: {})",
                self.train.select_metric.as_str()
            ));
        }
        self.optim.validate().map_err(TrainError::Config)?;
        if self.model.is_eval_only() {
            return bad(format!(
                "model.kind = \"{}\" is a candle-transformers backbone, which implements eval mode only: it \
                 cannot be trained; use it frozen in a `digitlab transfer` config (mode = \"frozen\")",
                self.model.kind()
            ));
        }
        let model_binary = matches!(self.model, ModelConfig::Logistic);
        if model_binary != self.train.loss.is_binary() && !(model_binary && self.train.loss == LossKind::Mse) {
            return bad(format!(
                "train.loss `{}` does not fit model `{}`: binary models take bce / bce_with_logits / mse, \
                 multi-class models take cross_entropy / nll / mse",
                self.train.loss.as_str(),
                self.model.kind()
            ));
        }
        if let Some(s) = &self.search {
            s.validate()?;
        }
        crate::validate::check_values(self)
    }
}

/// The one rule for names that become folder names (`name`, backbone labels,
/// suite names): a single path component of ASCII letters, digits, `.`, `_` and
/// `-`, not empty, `.` or `..`. `key` names the config key in the error.
pub fn validate_name(key: &str, value: &str) -> std::result::Result<(), String> {
    let ok = !value.is_empty()
        && value != "."
        && value != ".."
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{key} = {value:?}: must be one folder name of letters, digits, '.', '_' and '-' \
             (not empty, \".\" or \"..\")"
        ))
    }
}

/// Sets `path = value` in a TOML tree; the value is parsed as TOML (`0.1`, `true`,
/// `"adam"`, `[1, 2]`), falling back to a plain string.
pub fn apply_override(root: &mut toml::Value, assignment: &str) -> Result<(), TrainError> {
    let (key, raw) = assignment
        .split_once('=')
        .ok_or_else(|| TrainError::Config(format!("override `{assignment}` must look like key.path=value")))?;
    crate::validate::check_integer_literal(key.trim(), raw.trim())?;
    let value = parse_value(raw.trim());
    set_path(root, key.trim(), value)
}

/// Parses a TOML scalar/array literal, or returns the text as a string.
pub fn parse_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

/// Splits a dotted key path; double-quoted parts may contain dots
/// (`search.space."optim.lr"` has three parts).
pub fn split_key_path(path: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut quoted = false;
    for ch in path.chars() {
        match ch {
            '"' => quoted = !quoted,
            '.' if !quoted => parts.push(String::new()),
            c => parts.last_mut().expect("never empty").push(c),
        }
    }
    parts
}

/// Sets a dotted `path` in `root`, creating tables as needed.
pub fn set_path(root: &mut toml::Value, path: &str, value: toml::Value) -> Result<(), TrainError> {
    let parts = split_key_path(path);
    if parts.iter().any(|p| p.is_empty()) {
        return Err(TrainError::Config(format!("bad key path `{path}`")));
    }
    let mut cur = root;
    for p in &parts[..parts.len() - 1] {
        let table = cur
            .as_table_mut()
            .ok_or_else(|| TrainError::Config(format!("`{path}`: `{p}` is inside a value that is not a table")))?;
        cur = table
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(Default::default()));
    }
    let table = cur
        .as_table_mut()
        .ok_or_else(|| TrainError::Config(format!("`{path}` does not name a table entry")))?;
    table.insert(parts[parts.len() - 1].clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
        name = "t"
        [data]
        dataset = "digits"
        [model]
        kind = "softmax"
        [optim]
        kind = "sgd"
        lr = 0.1
        [train]
        epochs = 2
        batch_size = 32
        loss = "cross_entropy"
    "#;

    #[test]
    fn parses_with_defaults_and_overrides() {
        let c = ExperimentConfig::from_toml_str(BASE, &["optim.lr=0.5".into(), "data.classes=[3, 6]".into()]).unwrap();
        assert_eq!(c.optim.lr(), 0.5);
        assert_eq!(c.data.classes, Some(vec![3, 6]));
        assert_eq!(c.seed, 42);
        assert_eq!(c.data.val_fraction, 0.2);
        let c = ExperimentConfig::from_toml_str(BASE, &["model.kind=mlp".into(), "model.hidden=[8]".into()]).unwrap();
        assert_eq!(c.model.kind(), "mlp");
    }

    #[test]
    fn unknown_keys_list_the_valid_ones() {
        let e = ExperimentConfig::from_toml_str(BASE, &["train.epoch=3".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `epoch`") && e.contains("epochs"), "{e}");
        let e = ExperimentConfig::from_toml_str(BASE, &["data.dataset=cifar".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("cifar") && e.contains("mnist"), "{e}");
        let e = ExperimentConfig::from_toml_str(BASE, &["model.kind=transformer".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("transformer") && e.contains("softmax"), "{e}");
        let e = ExperimentConfig::from_toml_str(BASE, &["optim.lr=-1".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("optim.lr"), "{e}");
        let e = ExperimentConfig::from_toml_str(BASE, &["train.loss=bce".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not fit model"), "{e}");
        let e = ExperimentConfig::from_toml_str(BASE, &["nonsense".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("key.path=value"), "{e}");
    }

    #[test]
    fn quoted_key_parts_keep_their_dots() {
        assert_eq!(
            split_key_path(r#"search.space."optim.lr""#),
            vec!["search", "space", "optim.lr"]
        );
        let c = ExperimentConfig::from_toml_str(
            BASE,
            &[
                r#"search.space."optim.lr"=[0.1, 0.2]"#.into(),
                "search.strategy=grid".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.search.unwrap().space["optim.lr"].len(), 2);
    }

    #[test]
    fn value_round_trip() {
        let c = ExperimentConfig::from_toml_str(BASE, &[]).unwrap();
        assert_eq!(ExperimentConfig::from_value(c.to_value()).unwrap(), c);
    }

    #[test]
    fn names_are_one_safe_component() {
        for good in ["softmax_mnist", "a.b-c_1", "..x", "resnet18-pretrained"] {
            assert!(validate_name("name", good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../victim",
            "/abs/path",
            "a/b",
            "a\\b",
            "a b",
            "ü",
            "x\0",
        ] {
            let e = validate_name("name", bad).unwrap_err();
            assert!(e.starts_with("name = "), "{e}");
        }
    }
}
