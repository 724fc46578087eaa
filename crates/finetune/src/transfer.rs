//! Transfer learning from a typed TOML config: several backbones, each frozen (a
//! linear probe on cached features) or fine-tuned (the last N stages or all of
//! them, see [`crate::protocol`]), one `summary.json` per backbone.
//!
//! ```toml
//! name = "svhn_transfer"
//! seed = 42
//!
//! [data]                     # digitlab-train's [data] section
//! dataset = "svhn"
//! subset = 0.25              # optional: a seeded 25% of the training split
//! val_fraction = 0.25        # 75/25 train/validation split
//!
//! [transfer]                 # every key optional; defaults shown
//! epochs = 5
//! batch_size = 64            # head training
//! feature_batch_size = 64    # backbone passes
//! optim = { kind = "adam", lr = 0.001 }
//! head_dropout = 0.0
//! standardize = true         # per-dimension (f - mean) / std from the train features
//! overfit_gap = 0.05         # train - val accuracy above this flags over-fitting
//! cache = true
//! cache_dir = "runs/feature-cache"
//! dtype = "f32"              # or "bf16": backbone pass in bf16 (head and features f32)
//!
//! [[backbones]]
//! model = "resnet18"                     # a crate::zoo name
//! pretrained = "hf:timm/resnet18.a1_in1k"  # none | hf:org/repo[@rev][:file] | path
//! resize = [224, 224]                    # else [data].resize, else native size of the data
//! # normalize = "imagenet"               # imagenet | svhn | unit | symmetric | { mean_std = {...} }
//! # channels = 3
//! # label = "resnet18-imagenet"          # output folder / table row; default model-pretrained|random
//! # mode = "unfreeze"                    # frozen (default) | unfreeze | full: see crate::protocol
//! # unfreeze = 1                         # with head_epochs, epochs, backbone_lr_mult, layer_decay,
//! #                                      # frozen_bn, unfrozen_bn, augment
//! ```
//!
//! `[transfer].select = "val_accuracy"` (or `val_loss`, `val_macro_f1`,
//! `train_loss`) picks the epoch each run keeps, heads and fine-tuned backbones
//! alike; without validation data the last epoch is kept.
//!
//! `pretrained` strings may use `${VAR}` for environment variables (e.g.
//! `"${DIGITLAB_WEIGHTS}/ccexam-svhn-cnn.safetensors"`); an unset variable is an
//! error naming the backbone and the variable, unless a default follows it as in
//! the shell: `"${DIGITLAB_WEIGHTS:-builtin:}/ccexam-svhn-cnn.safetensors"` is the
//! file in `$DIGITLAB_WEIGHTS`, or the copy built into digitlab ([`crate::builtin`]). Defaults per backbone: channels and
//! normalisation are those the architecture's pretrained weights expect (3 channels
//! and ImageNet mean/std for ResNet, VGG and EfficientNet; the SVHN statistics for
//! `ccexam_svhn_cnn`), then `[data]`'s; random-weight backbones get the same
//! defaults as their pretrained counterparts so that the two are compared on
//! identical inputs. `[data].augment` is refused (cached features need a
//! deterministic pipeline); a backbone that trains takes its own `augment`.
//!
//! Protocol per backbone ([`run_backbone`]): build with [`create_model`]; frozen,
//! compute (or read from the [`FeatureCache`]) the eval-mode embeddings of the
//! train, validation and test splits — one backbone pass each at most — then train
//! a new head on the cached features ([`train_head`]) and evaluate it. Fine-tuned,
//! optionally train the head that way first (`head_epochs`), then train the head
//! and the unfrozen stages on images through [`digitlab_train::fit`]
//! ([`crate::tune`]), and evaluate the whole network. Outputs in
//! `<out>/<label>/`: `summary.json` ([`TransferSummary`]), `metrics.csv`,
//! `per_class.csv`, `weights_report.txt`, `config.toml`, `head.safetensors`,
//! `model.safetensors` + `model.json` (the whole classifier, see [`crate::export`]),
//! `loss.png`, `accuracy.png`, `confusion.png` (`head.safetensors` holds the head with the
//! feature standardisation folded in: one linear layer on raw backbone features); after all backbones, `compare.md`,
//! `compare.csv` and `compare.png` in `<out>` ([`crate::compare`]).
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use digitlab_data::{Dataset, Normalization, Pipeline};
use digitlab_report::io::{write_atomic, write_atomic_with, write_json};
use digitlab_report::plots;
use digitlab_report::summary::{RunExtras, RunSummary, TransferExtras};
use digitlab_train::experiment::metrics_csv;
use digitlab_train::fit::TensorBoard;
use digitlab_train::run_dir::{config_hash, RunDir, Start};
use digitlab_train::{DataConfig, Evaluation, OptimizerConfig, PreparedData, Verbosity};

/// The marker kind of a transfer run folder (`<out>/`, one subfolder per backbone).
pub const TRANSFER_KIND: &str = "transfer";
use serde::{Deserialize, Serialize};

use crate::error::{FinetuneError, Result};
use crate::features::{dataset_digest, features_for, CacheStats, FeatureCache, FeatureKey, CACHE_FORMAT};
use crate::head::{evaluate_head, train_head, HeadConfig, HeadRun, LabeledFeatures, Standardizer};
use crate::hub::HubConfig;
use crate::protocol::{BnMode, Mode, Protocol, DEFAULT_BACKBONE_LR_MULT, DEFAULT_UNFROZEN_BN};
use crate::source::WeightsSource;
use crate::stages::Unfreeze;
use crate::tune::{Incumbent, PhaseStart};
use crate::zoo::{create_model, resolve_arch, svhn_normalization, CreateOptions, CreatedModel};

/// A transfer experiment (see the module docs for the TOML layout).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferConfig {
    /// Short name: the default output folder is `runs/<name>`.
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Seed of the split, subset, random backbones, head initialisation and shuffling.
    #[serde(default = "default_seed")]
    pub seed: u64,
    pub data: DataConfig,
    #[serde(default)]
    pub transfer: TransferOptions,
    /// One run per backbone, in order.
    pub backbones: Vec<BackboneSpec>,
}

fn default_seed() -> u64 {
    42
}

/// Head training and caching options (`[transfer]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferOptions {
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// Head training batch size.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Backbone batch size for feature extraction.
    #[serde(default = "default_batch")]
    pub feature_batch_size: usize,
    /// Batch size for evaluating the head.
    #[serde(default = "default_eval_batch")]
    pub eval_batch_size: usize,
    #[serde(default = "default_optim")]
    pub optim: OptimizerConfig,
    /// Dropout before the new linear head during training.
    #[serde(default)]
    pub head_dropout: f32,
    /// Standardise each feature dimension with the training features' mean and
    /// standard deviation before the head (folded into the saved head afterwards);
    /// see [`Standardizer`].
    #[serde(default = "yes")]
    pub standardize: bool,
    /// Train minus validation accuracy above which a run is flagged as over-fitting.
    #[serde(default = "default_gap")]
    pub overfit_gap: f64,
    /// Keep features on disk between runs (within a run, features are always computed once).
    #[serde(default = "yes")]
    pub cache: bool,
    /// Feature cache folder (default `runs/feature-cache`, or the `--cache-dir` flag).
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// Precision of the backbone pass: `f32`, or `bf16` (features, the head and its
    /// training stay f32). Not written when f32.
    #[serde(default, skip_serializing_if = "digitlab_models::Precision::is_f32")]
    pub dtype: digitlab_models::Precision,
    /// The epoch kept, heads and fine-tuned backbones alike: the best by this
    /// metric (`val_accuracy`, `val_loss`, `val_macro_f1`, `train_loss`); the last
    /// epoch when a validation metric is chosen and there is no validation data.
    #[serde(default)]
    pub select: digitlab_train::MetricName,
}

fn default_epochs() -> usize {
    5
}
fn default_batch() -> usize {
    64
}
fn default_eval_batch() -> usize {
    1000
}
fn default_optim() -> OptimizerConfig {
    HeadConfig::default().optim
}
fn default_gap() -> f64 {
    0.05
}
fn yes() -> bool {
    true
}

impl Default for TransferOptions {
    fn default() -> Self {
        Self {
            epochs: default_epochs(),
            batch_size: default_batch(),
            feature_batch_size: default_batch(),
            eval_batch_size: default_eval_batch(),
            optim: default_optim(),
            head_dropout: 0.0,
            standardize: true,
            overfit_gap: default_gap(),
            cache: true,
            cache_dir: None,
            dtype: digitlab_models::Precision::F32,
            select: digitlab_train::MetricName::ValAccuracy,
        }
    }
}

/// Default feature cache folder.
pub const DEFAULT_CACHE_DIR: &str = "runs/feature-cache";

/// Input normalisation of one backbone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum NormalizeSpec {
    /// ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225).
    Imagenet,
    /// SVHN mean (0.4377, 0.4438, 0.4728) and std (0.1980, 0.2010, 0.1970), as ccexam.
    Svhn,
    /// x / 255.
    Unit,
    /// x / 127.5 - 1.
    Symmetric,
    /// Explicit per-channel statistics.
    MeanStd { mean: Vec<f32>, std: Vec<f32> },
}

impl NormalizeSpec {
    pub fn to_normalization(&self) -> Normalization {
        match self {
            NormalizeSpec::Imagenet => Normalization::imagenet(),
            NormalizeSpec::Svhn => svhn_normalization(),
            NormalizeSpec::Unit => Normalization::Unit,
            NormalizeSpec::Symmetric => Normalization::Symmetric,
            NormalizeSpec::MeanStd { mean, std } => Normalization::MeanStd {
                mean: mean.clone(),
                std: std.clone(),
            },
        }
    }
}

/// One backbone of a transfer config (`[[backbones]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackboneSpec {
    /// Model name ([`crate::zoo::MODEL_NAMES`]).
    pub model: String,
    /// `none`, `hf:org/repo[@revision][:file]`, or a weights file; `${VAR}` expands.
    #[serde(default = "none_str")]
    pub pretrained: String,
    /// Output folder and table row name (default `<model>-pretrained` / `<model>-random`).
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub resize: Option<[usize; 2]>,
    #[serde(default)]
    pub channels: Option<usize>,
    #[serde(default)]
    pub normalize: Option<NormalizeSpec>,
    /// What trains besides the head (see [`crate::protocol`]).
    #[serde(default, skip_serializing_if = "Mode::is_frozen")]
    pub mode: Mode,
    /// `mode = "unfreeze"`: how many of the last stages train.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unfreeze: Option<usize>,
    /// Head-only epochs (on cached features) before the backbone trains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_epochs: Option<usize>,
    /// Epochs of this backbone's main phase (default `[transfer].epochs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<usize>,
    /// Learning-rate factor of the backbone's stages (default 0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backbone_lr_mult: Option<f64>,
    /// Further factor per stage away from the head (default 1: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_decay: Option<f64>,
    /// Batch norm of the frozen stages: `eval` (default) or `train` (the coursework's protocol).
    #[serde(default, skip_serializing_if = "BnMode::is_eval")]
    pub frozen_bn: BnMode,
    /// Batch norm of the stages that train: `eval` (running statistics kept, the
    /// affine weights train) or `train` (batch statistics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unfrozen_bn: Option<BnMode>,
    /// Training-time augmentation; only where the backbone runs on every batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment: Option<digitlab_data::Augment>,
}

fn none_str() -> String {
    "none".into()
}

impl Default for BackboneSpec {
    /// No model name, random weights, every other key at its default.
    fn default() -> Self {
        Self {
            model: String::new(),
            pretrained: none_str(),
            label: None,
            resize: None,
            channels: None,
            normalize: None,
            mode: Mode::Frozen,
            unfreeze: None,
            head_epochs: None,
            epochs: None,
            backbone_lr_mult: None,
            layer_decay: None,
            frozen_bn: BnMode::Eval,
            unfrozen_bn: None,
            augment: None,
        }
    }
}

/// Expands `${NAME}` with `var`, and `${NAME:-default}` to `default` when `NAME` is
/// unset or empty (as the shell does); `where_` names the field for errors.
pub fn expand_vars(text: &str, var: &dyn Fn(&str) -> Option<String>, where_: &str) -> Result<String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| FinetuneError::Config(format!("{where_}: unterminated `${{` in {text:?}")))?;
        let (name, default) = match after[..end].split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (&after[..end], None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(FinetuneError::Config(format!(
                "{where_}: bad variable name `${{{name}}}` in {text:?}"
            )));
        }
        let value = match (var(name).filter(|v| !v.is_empty()), default) {
            (Some(v), _) => v,
            (None, Some(d)) => d.to_string(),
            (None, None) => {
                return Err(FinetuneError::Config(format!(
                    "{where_}: environment variable {name} is not set (used in {text:?}); set it, e.g. \
                     `export {name}=/path/to/folder`, or write the path out"
                )))
            }
        };
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

impl BackboneSpec {
    /// The row / folder name.
    pub fn label(&self) -> String {
        match &self.label {
            Some(l) => l.clone(),
            None => {
                let kind = if self.pretrained.trim().eq_ignore_ascii_case("none") {
                    "random"
                } else {
                    "pretrained"
                };
                format!("{}-{kind}", self.model)
            }
        }
    }

    /// The resolved protocol, checked (`i` numbers the entry in errors).
    pub fn protocol(&self, i: usize, default_epochs: usize) -> Result<Protocol> {
        let bad = |m: String| Err(FinetuneError::Config(format!("backbones[{i}] ({}): {m}", self.label())));
        let trainable = !self.mode.is_frozen();
        let unfreeze = match (self.mode, self.unfreeze) {
            (Mode::Unfreeze, Some(n)) if n >= 1 => Unfreeze::Last(n),
            (Mode::Unfreeze, Some(_)) => return bad("unfreeze must be at least 1 (0 is mode = \"frozen\")".into()),
            (Mode::Unfreeze, None) => {
                return bad("mode = \"unfreeze\" needs `unfreeze = N`, the number of last stages to train".into())
            }
            (_, Some(_)) => return bad("`unfreeze` needs mode = \"unfreeze\"".into()),
            (Mode::Full, None) => Unfreeze::Full,
            (Mode::Frozen, None) => Unfreeze::Last(0),
        };
        if !trainable {
            for (key, set) in [
                ("head_epochs", self.head_epochs.is_some()),
                ("backbone_lr_mult", self.backbone_lr_mult.is_some()),
                ("layer_decay", self.layer_decay.is_some()),
                ("unfrozen_bn", self.unfrozen_bn.is_some()),
            ] {
                if set {
                    return bad(format!(
                        "`{key}` applies when the backbone trains: set mode = \"unfreeze\" or \"full\""
                    ));
                }
            }
        }
        let epochs = self.epochs.unwrap_or(default_epochs);
        if epochs == 0 {
            return bad("epochs must be at least 1".into());
        }
        let positive = |key: &str, v: Option<f64>, default: f64| -> Result<f64> {
            match v {
                Some(x) if x > 0.0 && x.is_finite() => Ok(x),
                Some(x) => Err(FinetuneError::Config(format!(
                    "backbones[{i}] ({}): {key} must be a positive number, got {x}",
                    self.label()
                ))),
                None => Ok(default),
            }
        };
        let protocol = Protocol {
            mode: self.mode,
            unfreeze,
            head_epochs: self.head_epochs.unwrap_or(0),
            epochs,
            backbone_lr_mult: positive("backbone_lr_mult", self.backbone_lr_mult, DEFAULT_BACKBONE_LR_MULT)?,
            layer_decay: positive("layer_decay", self.layer_decay, 1.0)?,
            frozen_bn: self.frozen_bn,
            // The coursework's train-mode protocol trains in train mode throughout.
            unfrozen_bn: self.unfrozen_bn.unwrap_or(if self.frozen_bn.is_eval() {
                DEFAULT_UNFROZEN_BN
            } else {
                BnMode::Train
            }),
        };
        if !protocol.frozen_bn.is_eval() && trainable && protocol.unfrozen_bn.is_eval() {
            return bad(
                "frozen_bn = \"train\" with unfrozen_bn = \"eval\" would run frozen stages in train mode and \
                 trainable ones in eval mode; set unfrozen_bn = \"train\""
                    .into(),
            );
        }
        if self.augment.is_some() && !protocol.is_live() {
            return bad(
                "augment needs a backbone that runs on every batch (cached features are computed once): set \
                 mode = \"unfreeze\" or \"full\", or frozen_bn = \"train\""
                    .into(),
            );
        }
        if let Some(a) = &self.augment {
            a.validate()
                .map_err(|e| FinetuneError::Config(format!("backbones[{i}] ({}).augment: {e}", self.label())))?;
        }
        Ok(protocol)
    }

    /// The weights source, with `${VAR}`s expanded through `var`.
    pub fn source(&self, var: &dyn Fn(&str) -> Option<String>) -> Result<WeightsSource> {
        let where_ = format!("backbone `{}`: pretrained", self.label());
        let text = expand_vars(&self.pretrained, var, &where_)?;
        WeightsSource::parse_with(&text, |p| p.exists()).map_err(|e| FinetuneError::Config(format!("{where_}: {e}")))
    }
}

impl TransferConfig {
    /// Reads a TOML config, applying `key.path=value` overrides first.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| FinetuneError::io(path, e))?;
        Self::from_toml_str(&text, overrides).map_err(|e| match e {
            FinetuneError::Config(m) => FinetuneError::Config(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Parses TOML text with overrides.
    pub fn from_toml_str(text: &str, overrides: &[String]) -> Result<Self> {
        let mut value: toml::Value = toml::from_str(text).map_err(|e| FinetuneError::Config(e.to_string()))?;
        for o in overrides {
            digitlab_train::config::apply_override(&mut value, o).map_err(|e| FinetuneError::Config(e.to_string()))?;
        }
        let cfg: TransferConfig = value
            .try_into()
            .map_err(|e: toml::de::Error| FinetuneError::Config(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks what types cannot: ranges, model names, unique labels, and that every
    /// `pretrained` string parses (with unset variables replaced by a placeholder).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(FinetuneError::Config(m));
        digitlab_train::config::validate_name("name", &self.name).map_err(FinetuneError::Config)?;
        let t = &self.transfer;
        if t.epochs == 0 || t.batch_size == 0 || t.feature_batch_size == 0 || t.eval_batch_size == 0 {
            return bad(
                "transfer.epochs, batch_size, feature_batch_size and eval_batch_size must be at least 1".into(),
            );
        }
        if !(t.overfit_gap >= 0.0 && t.overfit_gap.is_finite()) {
            return bad(format!("transfer.overfit_gap must be >= 0, got {}", t.overfit_gap));
        }
        if !(0.0..1.0).contains(&t.head_dropout) {
            return bad(format!(
                "transfer.head_dropout must be in [0, 1), got {}",
                t.head_dropout
            ));
        }
        t.optim
            .validate()
            .map_err(|m| FinetuneError::Config(m.replace("optim.", "transfer.optim.")))?;
        let d = &self.data;
        digitlab_train::validate::check_data_values(d).map_err(FinetuneError::Config)?;
        if !(d.subset > 0.0 && d.subset <= 1.0) {
            return bad(format!("data.subset must be in (0, 1], got {}", d.subset));
        }
        if !(0.0..1.0).contains(&d.val_fraction) {
            return bad(format!("data.val_fraction must be in [0, 1), got {}", d.val_fraction));
        }
        if d.augment.is_some() {
            return bad(
                "data.augment is not supported by `transfer`: cached backbone features need a deterministic \
                        pipeline; set `augment` on a [[backbones]] entry whose backbone trains (mode = \"unfreeze\" \
                        or \"full\") instead"
                    .into(),
            );
        }
        if self.backbones.is_empty() {
            return bad("no [[backbones]]: add at least one (model = \"resnet18\", pretrained = \"...\")".into());
        }
        let mut labels = BTreeSet::new();
        for (i, b) in self.backbones.iter().enumerate() {
            let arch =
                resolve_arch(&b.model).map_err(|e| FinetuneError::Config(format!("backbones[{i}].model: {e}")))?;
            let label = b.label();
            if arch.is_frozen_only() {
                let key = if !b.mode.is_frozen() {
                    Some(format!("mode = \"{}\"", b.mode.name()))
                } else if !b.frozen_bn.is_eval() {
                    Some("frozen_bn = \"train\"".to_string())
                } else if !t.dtype.is_f32() {
                    Some(format!("transfer.dtype = \"{}\"", t.dtype.name()))
                } else {
                    None
                };
                if let Some(key) = key {
                    return bad(format!(
                        "backbones[{i}] ({label}): {key} does not apply to `{}`: it is built from \
                         candle-transformers, which implements eval mode (in f32) only; use mode = \"frozen\" \
                         with frozen_bn = \"eval\" and dtype = \"f32\" (the defaults)",
                        arch.name
                    ));
                }
            }
            digitlab_train::config::validate_name(&format!("backbones[{i}].label"), &label)
                .map_err(FinetuneError::Config)?;
            if !labels.insert(label.clone()) {
                return bad(format!(
                    "backbones[{i}]: label {label:?} is used twice; give one of them a distinct `label`"
                ));
            }
            if let Some(c) = b.channels {
                if c != 1 && c != 3 {
                    return bad(format!("backbones[{i}].channels must be 1 or 3, got {c}"));
                }
            }
            if let Some([h, w]) = b.resize {
                if h == 0 || w == 0 {
                    return bad(format!("backbones[{i}].resize must be positive, got [{h}, {w}]"));
                }
            }
            b.source(&|_| Some("/placeholder".into()))
                .map_err(|e| FinetuneError::Config(format!("backbones[{i}]: {e}")))?;
            b.protocol(i, t.epochs)?;
        }
        Ok(())
    }

    /// The head-training settings.
    pub fn head_config(&self) -> HeadConfig {
        HeadConfig {
            epochs: self.transfer.epochs,
            batch_size: self.transfer.batch_size,
            optim: self.transfer.optim.clone(),
            dropout: self.transfer.head_dropout,
            seed: self.seed,
            eval_batch_size: self.transfer.eval_batch_size,
            select: self.transfer.select,
        }
    }
}

/// Loads the train / validation / test splits of a `[data]` section exactly as
/// `digitlab train` does (class filter, seeded subset, seeded split, test limit).
pub fn prepare_data(d: &DataConfig, seed: u64, data_dir: &Path) -> Result<PreparedData> {
    Ok(PreparedData::from_data_config(d, seed, data_dir)?)
}

/// An environment-variable lookup (`std::env::var` or a fixed map, see [`vars_from`]).
pub type VarLookup = Box<dyn Fn(&str) -> Option<String>>;

/// How a transfer run is carried out (not part of the experiment).
pub struct TransferRunOptions {
    /// Outputs go to `<out_dir>/<label>/`; `None` writes nothing but the cache.
    pub out_dir: Option<PathBuf>,
    pub device: Device,
    pub verbosity: Verbosity,
    /// Hub settings; `None` reads the `HF_*` environment variables when needed.
    pub hub: Option<HubConfig>,
    /// Overrides `transfer.cache_dir`.
    pub cache_dir: Option<PathBuf>,
    /// Looks up `${VAR}`s in `pretrained` (default: the process environment).
    pub vars: VarLookup,
    /// Write a TensorBoard event file (head epochs, images) into each backbone's
    /// folder (on by default).
    pub tensorboard: bool,
}

impl Default for TransferRunOptions {
    fn default() -> Self {
        Self {
            out_dir: None,
            device: Device::Cpu,
            verbosity: Verbosity::Silent,
            hub: None,
            cache_dir: None,
            vars: Box::new(|name| std::env::var(name).ok()),
            tensorboard: true,
        }
    }
}

/// The flat results of one backbone, written as `summary.json`: a
/// [`RunSummary`] of kind `transfer` (its [`TransferExtras`] hold the
/// transfer-specific keys). The name is kept for callers; the type is the one
/// run summary of the workspace.
pub type TransferSummary = RunSummary;

/// Everything one backbone's run produced.
pub struct TransferOutcome {
    pub label: String,
    pub summary: TransferSummary,
    pub created: CreatedModel,
    pub head: HeadRun,
    /// The feature standardisation the head was trained with.
    pub standardizer: Option<Standardizer>,
    pub test: Option<Evaluation>,
    pub stats: CacheStats,
    /// `<out>/<label>` when outputs were written.
    pub out_dir: Option<PathBuf>,
}

/// Runs every backbone of `cfg` on data from `data_dir`, then (with an output
/// folder) writes the comparison table of all of them. A backbone that cannot be
/// created or loaded ([`FinetuneError::BackboneLoad`]) does not stop the others: it
/// is returned in [`TransferRun::failed`] and shown as a failed row in the table.
pub fn run_transfer_all(cfg: &TransferConfig, data_dir: &Path, opts: &TransferRunOptions) -> Result<TransferRun> {
    cfg.validate()?;
    // Held for the whole run (a no-op when the caller already holds the folder).
    let run_dir = opts
        .out_dir
        .as_deref()
        .map(|d| RunDir::claim(d, TRANSFER_KIND, &config_hash(TRANSFER_KIND, cfg), Start::Fresh))
        .transpose()?;
    let data = prepare_data(&cfg.data, cfg.seed, data_dir)?;
    if opts.verbosity != Verbosity::Silent {
        eprintln!(
            "{}: {} train, {} validation, {} test images of {}",
            cfg.name,
            data.train.len(),
            data.val.as_ref().map_or(0, |v| v.len()),
            data.test.as_ref().map_or(0, |t| t.len()),
            cfg.data.dataset
        );
    }
    let mut outcomes = Vec::with_capacity(cfg.backbones.len());
    let mut failed = vec![];
    for spec in &cfg.backbones {
        match run_backbone(cfg, spec, &data, opts) {
            Ok(o) => outcomes.push(o),
            // A backbone that cannot be loaded is a failed row; the others still run.
            Err(FinetuneError::BackboneLoad { label, source }) => {
                if opts.verbosity != Verbosity::Silent {
                    eprintln!("{label}: FAILED, continuing with the other backbones: {source}");
                }
                failed.push(BackboneFailure {
                    label,
                    model: spec.model.clone(),
                    pretrained: spec.pretrained.clone(),
                    reason: source.to_string(),
                });
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(out) = &opts.out_dir {
        let dirs: Vec<PathBuf> = outcomes.iter().filter_map(|o| o.out_dir.clone()).collect();
        let failed_rows: Vec<crate::compare::RunRow> = failed
            .iter()
            .map(|f| {
                let mut row = crate::compare::RunRow::failed(&f.label, &f.model, data.train.name(), &f.reason);
                row.protocol = cfg
                    .backbones
                    .iter()
                    .enumerate()
                    .find(|(_, b)| b.label() == f.label)
                    .and_then(|(i, b)| b.protocol(i, cfg.transfer.epochs).ok())
                    .map(|p| p.describe());
                row
            })
            .collect();
        crate::compare::compare_with_failed(&dirs, &failed_rows, out, cfg.transfer.overfit_gap)?;
    }
    // Marked complete even with failed backbones: their rows say why, and a rerun
    // of the same config would fail the same way.
    run_dir.as_ref().map(RunDir::finish).transpose()?;
    Ok(TransferRun { outcomes, failed })
}

/// A backbone of a transfer run that could not be created or loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct BackboneFailure {
    pub label: String,
    pub model: String,
    /// The weights source as configured.
    pub pretrained: String,
    /// The error, as printed.
    pub reason: String,
}

/// The backbones that ran and those that could not be loaded.
pub struct TransferRun {
    pub outcomes: Vec<TransferOutcome>,
    pub failed: Vec<BackboneFailure>,
}

/// [`run_transfer_all`], failing at the end (after every other backbone ran and the
/// comparison was written) with [`FinetuneError::BackbonesFailed`] when any
/// backbone could not be loaded.
pub fn run_transfer(cfg: &TransferConfig, data_dir: &Path, opts: &TransferRunOptions) -> Result<Vec<TransferOutcome>> {
    let run = run_transfer_all(cfg, data_dir, opts)?;
    if run.failed.is_empty() {
        Ok(run.outcomes)
    } else {
        Err(FinetuneError::BackbonesFailed {
            total: cfg.backbones.len(),
            failed: run.failed.into_iter().map(|f| (f.label, f.reason)).collect(),
        })
    }
}

fn normalization_name(n: &Normalization) -> String {
    if *n == Normalization::imagenet() {
        "imagenet".into()
    } else if *n == svhn_normalization() {
        "svhn".into()
    } else {
        match n {
            Normalization::Unit => "unit".into(),
            Normalization::Symmetric => "symmetric".into(),
            Normalization::MeanStd { mean, std } => format!("mean {mean:?} std {std:?}"),
        }
    }
}

/// One backbone under the frozen-head protocol (see the module docs).
pub fn run_backbone(
    cfg: &TransferConfig,
    spec: &BackboneSpec,
    data: &PreparedData,
    opts: &TransferRunOptions,
) -> Result<TransferOutcome> {
    let started = Instant::now();
    let label = spec.label();
    let load_failed = |e: FinetuneError| FinetuneError::BackboneLoad {
        label: label.clone(),
        source: Box::new(e),
    };
    let arch = resolve_arch(&spec.model)?;
    let source = spec.source(opts.vars.as_ref()).map_err(load_failed)?;
    let pipeline = Pipeline {
        channels: spec.channels.or(arch.channels()).or(cfg.data.channels),
        resize: spec.resize.or(cfg.data.resize).or(arch.default_resize()),
        augment: None,
        normalize: match (&spec.normalize, &arch.normalization) {
            (Some(n), _) => n.to_normalization(),
            (None, Some(n)) => n.clone(),
            (None, None) => cfg.data.normalize.clone(),
        },
    };
    pipeline
        .validate(data.train.shape())
        .map_err(|e| FinetuneError::Config(format!("backbone `{label}`: {e}")))?;
    let shape = pipeline.output_shape(data.train.shape());
    let input = digitlab_models::InputShape {
        channels: shape.channels,
        height: shape.height,
        width: shape.width,
    };
    let num_classes = data.train.num_classes();
    if opts.verbosity != Verbosity::Silent {
        eprintln!(
            "{label}: {} ({source}) at {}x{}x{}",
            arch.name, input.channels, input.height, input.width
        );
    }
    let create = CreateOptions {
        input,
        seed: cfg.seed,
        device: opts.device.clone(),
        hub: opts.hub.clone(),
    };
    let created = create_model(&spec.model, &source, num_classes, &create).map_err(load_failed)?;
    if let (Some(p), true) = (&created.pretrained, opts.verbosity != Verbosity::Silent) {
        eprintln!("{label}: {}\n{}", p.path.display(), p.report);
    }
    let weights_id = created.weights_id()?;

    let cache_dir = opts
        .cache_dir
        .clone()
        .or_else(|| cfg.transfer.cache_dir.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE_DIR));
    let cache = cfg.transfer.cache.then(|| FeatureCache::new(cache_dir));
    let d = &cfg.data;
    let key_for = |split: &str, ds: &Dataset| -> FeatureKey {
        let trainval = split != "test";
        FeatureKey {
            format: CACHE_FORMAT,
            model: created.name.to_string(),
            model_config: created.arch.config.clone(),
            input: [input.channels, input.height, input.width],
            weights: weights_id.clone(),
            dataset: d.dataset.name().to_string(),
            split: split.to_string(),
            subset: trainval.then_some(d.subset),
            seed: trainval.then_some(cfg.seed),
            val_fraction: trainval.then_some(d.val_fraction),
            stratified: trainval.then_some(d.stratified),
            classes: d.classes.clone(),
            test_limit: if trainval { None } else { d.test_limit },
            resize: pipeline.resize,
            channels: pipeline.channels,
            normalize: pipeline.normalize.clone(),
            images: ds.len(),
            data_sha256: dataset_digest(ds),
            dtype: cfg.transfer.dtype,
        }
    };
    let mut stats = CacheStats::default();
    let fb = cfg.transfer.feature_batch_size;
    let features = |split: &str, ds: &Dataset, stats: &mut CacheStats| -> Result<LabeledFeatures> {
        let key = key_for(split, ds);
        // Built at each use over the variables as they are then (a backbone that
        // trains later must not leave stale statistics here); bf16: the backbone
        // computes in bf16, features come back (and are cached) as f32.
        let backbone = digitlab_models::MixedBackbone::wrap(created.inference_backbone()?, cfg.transfer.dtype);
        let f = features_for(
            cache.as_ref(),
            &key,
            backbone.as_ref(),
            ds,
            &pipeline,
            fb,
            &opts.device,
            opts.verbosity,
            &format!("{label} {split}"),
            stats,
        )?;
        LabeledFeatures::new(f, ds.labels())
    };
    // Eval-mode features of train and validation (and test), once each, standardised when asked.
    let cached = |with_test: bool, stats: &mut CacheStats| -> Result<CachedSplits> {
        let train = features("train", &data.train, stats)?;
        let val = data.val.as_ref().map(|v| features("val", v, stats)).transpose()?;
        let test = match (&data.test, with_test) {
            (Some(t), true) => Some(features("test", t, stats)?),
            _ => None,
        };
        let rms = train
            .features
            .sqr()?
            .mean_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?
            .sqrt();
        let standardizer = cfg
            .transfer
            .standardize
            .then(|| Standardizer::fit(&train.features))
            .transpose()?;
        let (train, val, test) = match &standardizer {
            Some(s) => (
                s.apply_to(&train)?,
                val.map(|v| s.apply_to(&v)).transpose()?,
                test.map(|t| s.apply_to(&t)).transpose()?,
            ),
            None => (train, val, test),
        };
        Ok(CachedSplits {
            train,
            val,
            test,
            rms,
            standardizer,
        })
    };

    let head_started = Instant::now();
    let eb = cfg.transfer.eval_batch_size;
    let index = cfg.backbones.iter().position(|b| b.label() == label).unwrap_or(0);
    let protocol = spec.protocol(index, cfg.transfer.epochs)?;
    // A new head on the cached features `c`, for `epochs`.
    let probe = |c: &CachedSplits, epochs: usize| {
        let head_cfg = HeadConfig {
            epochs,
            ..cfg.head_config()
        };
        let prefix = created.head_prefix();
        train_head(
            &head_cfg,
            prefix,
            num_classes,
            &c.train,
            c.val.as_ref(),
            opts.verbosity,
            &label,
        )
    };
    let mut feature_rms = None;
    let mut trained_stages = vec![];
    let (head, standardizer, train_eval, test_eval) = if !protocol.is_live() {
        // The linear probe: every epoch on the cached features.
        let c = cached(true, &mut stats)?;
        feature_rms = Some(c.rms);
        let head = probe(&c, protocol.epochs)?;
        let train_eval = evaluate_head(&head.head, &c.train, num_classes, eb)?;
        let test_eval = c
            .test
            .as_ref()
            .map(|t| evaluate_head(&head.head, t, num_classes, eb))
            .transpose()?;
        (head, c.standardizer, train_eval, test_eval)
    } else {
        if cfg.transfer.dtype != digitlab_models::Precision::F32 {
            return Err(FinetuneError::Config(format!(
                "backbone `{label}`: transfer.dtype = \"bf16\" applies to cached feature passes only; this \
                 backbone trains ({}), so use dtype = \"f32\"",
                protocol.describe()
            )));
        }
        let train_pipeline = Pipeline {
            augment: spec.augment.clone(),
            ..pipeline.clone()
        };
        let live = crate::tune::LiveTune {
            created: &created,
            protocol: &protocol,
            cfg,
            data,
            pipeline: &pipeline,
            train_pipeline: &train_pipeline,
            verbosity: opts.verbosity,
            label: &label,
        };
        let (mut history, mut seconds, mut samples) = (vec![], 0.0, 0u64);
        let select = cfg.transfer.select;
        let mut start = PhaseStart::default();
        if protocol.head_epochs > 0 && protocol.frozen_bn.is_eval() {
            // fastai's fine_tune: the head alone first, on cached features (one backbone pass).
            let c = cached(false, &mut stats)?;
            feature_rms = Some(c.rms);
            let head = probe(&c, protocol.head_epochs)?;
            // Unfolded: the standardisation stays a fixed layer until the end.
            let (w, b) = folded_head(&head, None, created.head_prefix())?;
            crate::tune::set_head(&created, &w, &b)?;
            (seconds, samples) = (head.train_seconds, head.train_samples);
            start = PhaseStart {
                standardizer: c.standardizer,
                incumbent: Incumbent::of(&head.history, head.best_epoch, select),
            };
            history = head.history;
        } else if protocol.head_epochs > 0 {
            // The coursework's protocol throughout: the head alone with batch norm in train mode.
            let p = live.run(true, protocol.head_epochs, 0, &start)?;
            (seconds, samples) = (p.train_seconds, p.train_samples);
            start.incumbent = Incumbent::of(&p.history, p.best_epoch, select);
            history = p.history;
        }
        let head_only = protocol.mode.is_frozen();
        let main = live.run(head_only, protocol.epochs, history.len(), &start)?;
        if let Some(s) = &start.standardizer {
            crate::tune::fold_head(&created, s)?;
        }
        trained_stages = main.stages.clone();
        seconds += main.train_seconds;
        samples += main.train_samples;
        history.extend(main.history.iter().cloned());
        let train_eval = live.evaluate(&data.train)?;
        let test_eval = data.test.as_ref().map(|t| live.evaluate(t)).transpose()?;
        let head = live.head_run(history, main, seconds, samples)?;
        (head, None, train_eval, test_eval)
    };
    // Training and evaluation only: the cached-feature passes are counted apart.
    let head_seconds = (head_started.elapsed().as_secs_f64() - stats.backbone_seconds - stats.load_seconds).max(0.0);

    let val_accuracy = head.val.as_ref().map(|e| e.accuracy());
    let gap = val_accuracy.map(|v| train_eval.accuracy() - v);
    let params_trainable = head.parameters;
    let params_total = created.parameter_count() - created.head_parameter_count() + params_trainable;
    let extras = TransferExtras {
        experiment: cfg.name.clone(),
        pretrained: source.to_string(),
        weights_sha256: created.pretrained.as_ref().map(|p| p.sha256.clone()),
        weights_loaded: created.pretrained.as_ref().map_or(0, |p| p.report.loaded.len()),
        head_reinitialized: created
            .pretrained
            .as_ref()
            .map(|p| p.report.reinitialized().map(String::from).collect())
            .unwrap_or_default(),
        input_channels: input.channels,
        input_height: input.height,
        input_width: input.width,
        normalization: normalization_name(&pipeline.normalize),
        feature_dim: created.feature_dim(),
        feature_rms,
        standardize: standardizer.is_some(),
        protocol: protocol.describe(),
        trained_stages,
        best_epoch: head.best_epoch,
        selected_by: head.best_epoch.map(|_| cfg.transfer.select.as_str().to_string()),
        params_total,
        params_trainable,
        train_val_gap: gap,
        overfit: gap.map(|g| g > cfg.transfer.overfit_gap),
        overfit_gap: cfg.transfer.overfit_gap,
        backbone_seconds: stats.backbone_seconds,
        head_seconds,
        backbone_images: stats.backbone_images,
        backbone_batches: stats.backbone_batches,
        cache_hits: stats.hits,
        cache_misses: stats.misses,
        cache_load_seconds: stats.load_seconds,
    };
    // The final evaluation and the images it was computed on, for the interpretation.
    let final_eval = match (&test_eval, &data.test, &head.val, &data.val) {
        (Some(e), Some(ds), _, _) => Some((e, "test", ds)),
        (None, _, Some(e), Some(ds)) => Some((e, "validation", ds)),
        _ => None,
    };
    let interpretation =
        final_eval.map(|(e, split, _)| digitlab_train::interpret::interpret(e, data.train.class_names(), split));
    let mut summary = RunSummary {
        name: label.clone(),
        dataset: data.train.name().to_string(),
        model: created.name.to_string(),
        seed: cfg.seed,
        epochs: head.history.len(),
        train_images: data.train.len(),
        val_images: data.val.as_ref().map_or(0, |v| v.len()),
        test_images: data.test.as_ref().map_or(0, |t| t.len()),
        parameters: params_total,
        train_accuracy: train_eval.accuracy(),
        val_accuracy,
        val_macro_f1: head.val.as_ref().map(|e| e.macro_f1()),
        test_accuracy: test_eval.as_ref().map(|e| e.accuracy()),
        test_macro_f1: test_eval.as_ref().map(|e| e.macro_f1()),
        test_loss: test_eval.as_ref().map(|e| e.loss),
        wall_seconds: 0.0,
        train_seconds: head.train_seconds,
        train_samples_per_second: head.train_samples as f64 / head.train_seconds.max(1e-9),
        device: format!("{:?}", opts.device),
        interpretation,
        extras: RunExtras::Transfer(Box::new(extras)),
    };
    let out_dir = opts.out_dir.as_ref().map(|o| o.join(&label));
    if let Some(dir) = &out_dir {
        let (weight, bias) = folded_head(&head, standardizer.as_ref(), created.head_prefix())?;
        let head_tensors: HashMap<String, candle_core::Tensor> = [
            (format!("{}.weight", created.head_prefix()), weight),
            (format!("{}.bias", created.head_prefix()), bias),
        ]
        .into_iter()
        .collect();
        write_outputs(
            dir,
            cfg,
            spec,
            &created,
            &head,
            &head_tensors,
            test_eval.as_ref(),
            &data.train,
            &summary,
        )?;
        if let (Some(i), Some((_, _, ds))) = (&summary.interpretation, final_eval) {
            digitlab_train::experiment::interpretation_plots(dir, &label, i, ds)?;
        }
        let one = TransferConfig {
            backbones: vec![spec.clone()],
            ..cfg.clone()
        };
        if opts.tensorboard {
            // Head epochs take well under a second: written at once, not live.
            let config = serde_json::to_value(&one).map_err(|e| FinetuneError::Config(e.to_string()))?;
            let mut tb = TensorBoard::write_history(dir, &config, &head.history, true)?;
            tb.add_end_images(dir, head.history.len() as i64)?;
        }
        let steps_per_epoch = data.train.len().div_ceil(cfg.transfer.batch_size) as u64;
        crate::export::export_model(
            dir,
            &created,
            &crate::export::ExportParts {
                head_weight: &head_tensors[&format!("{}.weight", created.head_prefix())],
                head_bias: &head_tensors[&format!("{}.bias", created.head_prefix())],
                preprocess: &pipeline,
                config: &one,
                pretrained: &spec.pretrained,
                class_names: data.train.class_names(),
                history: &head.history,
                optimizer_steps: steps_per_epoch * head.history.len() as u64,
            },
        )?;
    }
    summary.wall_seconds = started.elapsed().as_secs_f64();
    if let Some(dir) = &out_dir {
        write_json(&dir.join("summary.json"), &summary)?;
    }
    if opts.verbosity != Verbosity::Silent {
        let pct = |v: Option<f64>| digitlab_report::format::pct(v, 2);
        eprintln!(
            "{label}: train {} | val {} | test {} (macro-F1 {}) | backbone {:.1}s ({} images), head {:.2}s",
            pct(Some(summary.train_accuracy)),
            pct(summary.val_accuracy),
            pct(summary.test_accuracy),
            summary
                .test_macro_f1
                .map(|v| format!("{v:.4}"))
                .unwrap_or_else(|| "-".into()),
            stats.backbone_seconds,
            stats.backbone_images,
            head_seconds
        );
    }
    Ok(TransferOutcome {
        label,
        summary,
        created,
        head,
        standardizer,
        test: test_eval,
        stats,
        out_dir,
    })
}

/// Cached features of one backbone's splits, standardised when configured.
struct CachedSplits {
    train: LabeledFeatures,
    val: Option<LabeledFeatures>,
    test: Option<LabeledFeatures>,
    /// Root mean square of the raw training features.
    rms: f64,
    standardizer: Option<Standardizer>,
}

/// The trained head's weight and bias with the standardisation folded in: one
/// linear layer on raw backbone features.
fn folded_head(
    head: &HeadRun,
    standardizer: Option<&Standardizer>,
    prefix: &str,
) -> Result<(candle_core::Tensor, candle_core::Tensor)> {
    let (w, b) = crate::tune::head_tensors(&head.varmap, prefix)?;
    Ok(match standardizer {
        Some(s) => s.fold(&w, &b)?,
        None => (w, b),
    })
}

impl TransferOutcome {
    /// The fine-tuned classifier on images: the frozen backbone (shared, not
    /// copied) and the trained head with the feature standardisation folded in.
    pub fn classifier(&self) -> Result<digitlab_models::Model> {
        let (w, b) = folded_head(&self.head, self.standardizer.as_ref(), self.created.head_prefix())?;
        let head = digitlab_models::Head::from_linear(candle_nn::Linear::new(w, Some(b)), 0.0);
        Ok(self.created.model.with_head(Box::new(head), self.created.num_classes)?)
    }
}

#[allow(clippy::too_many_arguments)]
fn write_outputs(
    dir: &Path,
    cfg: &TransferConfig,
    spec: &BackboneSpec,
    created: &CreatedModel,
    head: &HeadRun,
    head_tensors: &HashMap<String, candle_core::Tensor>,
    test: Option<&Evaluation>,
    train: &Dataset,
    summary: &TransferSummary,
) -> Result<()> {
    write_json(&dir.join("summary.json"), summary)?;
    write_atomic(&dir.join("metrics.csv"), metrics_csv(&head.history).as_bytes())?;
    let one = TransferConfig {
        backbones: vec![spec.clone()],
        ..cfg.clone()
    };
    let toml_text = toml::to_string_pretty(&one).map_err(|e| FinetuneError::Config(e.to_string()))?;
    write_atomic(&dir.join("config.toml"), toml_text.as_bytes())?;
    let report = match &created.pretrained {
        Some(p) => {
            let mut s = format!(
                "weights: {}\nfile: {}\nsha256: {}\n",
                p.source,
                p.path.display(),
                p.sha256
            );
            if !p.stripped_prefixes.is_empty() {
                s += &format!("stripped prefixes: {}\n", p.stripped_prefixes.join(", "));
            }
            for (from, to) in &p.renamed {
                s += &format!("renamed: {from} -> {to}\n");
            }
            s + &p.report.to_string() + "\n"
        }
        None => format!("weights: none (random initialisation, seed {})\n", created.seed),
    };
    write_atomic(&dir.join("weights_report.txt"), report.as_bytes())?;
    write_atomic_with(&dir.join("head.safetensors"), |tmp| {
        candle_core::safetensors::save(head_tensors, tmp).map_err(std::io::Error::other)
    })?;
    let names = train.class_names();
    let final_eval = test.or(head.val.as_ref());
    if let Some(e) = final_eval {
        let mut s = String::from("class,name,precision,recall,f1,support\n");
        for (c, m) in e.confusion.per_class().iter().enumerate() {
            let name = names.get(c).map(|n| n.replace(',', " ")).unwrap_or_default();
            s += &format!(
                "{c},{name},{:.6},{:.6},{:.6},{}\n",
                m.precision, m.recall, m.f1, m.support
            );
        }
        write_atomic(&dir.join("per_class.csv"), s.as_bytes())?;
    }
    let curve = |key: &str| -> Vec<(f64, f64)> {
        head.history
            .iter()
            .filter_map(|h| Some((h["epoch"], *h.get(key)?)))
            .collect()
    };
    let plot =
        |r: std::result::Result<(), plots::PlotError>| -> Result<()> { r.map_err(|e| FinetuneError::Train(e.into())) };
    for (file, title, key) in [("loss.png", "Loss", "loss"), ("accuracy.png", "Accuracy", "accuracy")] {
        let tr = curve(&format!("train_{key}"));
        let va = curve(&format!("val_{key}"));
        let mut series = vec![plots::Series {
            label: "train",
            points: &tr,
        }];
        if !va.is_empty() {
            series.push(plots::Series {
                label: "validation",
                points: &va,
            });
        }
        plot(plots::line_chart(
            &dir.join(file),
            &format!("{} — head {title}", summary.name),
            "epoch",
            key,
            &series,
        ))?;
    }
    if let Some(e) = final_eval {
        let which = if test.is_some() { "test" } else { "validation" };
        plot(plots::confusion_matrix(
            &dir.join("confusion.png"),
            &format!(
                "{} — {which} confusion matrix (acc {:.2}%)",
                summary.name,
                100.0 * e.accuracy()
            ),
            &e.confusion.rows(),
            names,
        ))?;
    }
    Ok(())
}

/// Environment lookup from a fixed map (for tests and embedding).
pub fn vars_from(map: HashMap<String, String>) -> VarLookup {
    Box::new(move |name| map.get(name).cloned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
        name = "t"
        [data]
        dataset = "digits"
        [[backbones]]
        model = "lenet5"
    "#;

    #[test]
    fn defaults_and_overrides() {
        let c = TransferConfig::from_toml_str(BASE, &[]).unwrap();
        assert_eq!(c.transfer, TransferOptions::default());
        assert_eq!(c.transfer.epochs, 5);
        assert_eq!(c.transfer.optim.lr(), 1e-3);
        assert_eq!(c.backbones[0].label(), "lenet5-random");
        assert_eq!(c.backbones[0].source(&|_| None).unwrap(), WeightsSource::None);
        let c = TransferConfig::from_toml_str(BASE, &["transfer.epochs=2".into(), "data.subset=0.5".into()]).unwrap();
        assert_eq!((c.transfer.epochs, c.data.subset), (2, 0.5));
    }

    #[test]
    fn errors_name_the_field() {
        let e = TransferConfig::from_toml_str(BASE, &["transfer.epoch=3".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `epoch`") && e.contains("epochs"), "{e}");
        let e = TransferConfig::from_toml_str(BASE, &["backbones=[{model = \"googlenet\"}]".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("backbones[0].model") && e.contains("googlenet"), "{e}");
        let e = TransferConfig::from_toml_str(BASE, &["data.augment={crop_padding = 2}".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("data.augment"), "{e}");
        let two = "backbones=[{model = \"lenet5\"}, {model = \"lenet5\", pretrained = \"none\"}]";
        let e = TransferConfig::from_toml_str(BASE, &[two.into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("lenet5-random") && e.contains("twice"), "{e}");
        let e = TransferConfig::from_toml_str(BASE, &["transfer.optim={kind = \"adam\", lr = -1}".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("transfer.optim.lr"), "{e}");
        let e = TransferConfig::from_toml_str(
            BASE,
            &["backbones=[{model = \"lenet5\", normalize = \"imagenette\"}]".into()],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("imagenette") && e.contains("imagenet"), "{e}");
    }

    #[test]
    fn variables_expand_or_fail_with_the_name() {
        let env = vars_from([("W".to_string(), "/w".to_string())].into_iter().collect());
        assert_eq!(
            expand_vars("${W}/a.safetensors", env.as_ref(), "x").unwrap(),
            "/w/a.safetensors"
        );
        assert_eq!(expand_vars("plain", env.as_ref(), "x").unwrap(), "plain");
        let e = expand_vars("${NOPE}/a.pth", env.as_ref(), "backbone `b`: pretrained")
            .unwrap_err()
            .to_string();
        assert!(e.contains("NOPE") && e.contains("backbone `b`"), "{e}");
        assert!(expand_vars("${W", env.as_ref(), "x")
            .unwrap_err()
            .to_string()
            .contains("unterminated"));
        let spec = BackboneSpec {
            model: "ccexam_svhn_cnn".into(),
            pretrained: "${W}/ccexam-svhn-cnn.safetensors".into(),
            ..BackboneSpec::default()
        };
        assert_eq!(spec.label(), "ccexam_svhn_cnn-pretrained");
        assert_eq!(
            spec.source(env.as_ref()).unwrap(),
            WeightsSource::Local("/w/ccexam-svhn-cnn.safetensors".into())
        );
    }

    #[test]
    fn a_default_replaces_an_unset_variable_only() {
        let env = vars_from(
            [("W".to_string(), "/w".to_string()), ("E".to_string(), String::new())]
                .into_iter()
                .collect(),
        );
        assert_eq!(expand_vars("${W:-d}/a", env.as_ref(), "x").unwrap(), "/w/a");
        assert_eq!(expand_vars("${NOPE:-d}/a", env.as_ref(), "x").unwrap(), "d/a");
        assert_eq!(expand_vars("${E:-d}/a", env.as_ref(), "x").unwrap(), "d/a");
        assert_eq!(expand_vars("${NOPE:-}a", env.as_ref(), "x").unwrap(), "a");
        assert!(expand_vars("${:-d}", env.as_ref(), "x").is_err());
        let spec = BackboneSpec {
            model: "ccexam_svhn_cnn".into(),
            pretrained: "${W:-builtin:}/ccexam-svhn-cnn.safetensors".into(),
            ..BackboneSpec::default()
        };
        assert_eq!(
            spec.source(env.as_ref()).unwrap(),
            WeightsSource::Local("/w/ccexam-svhn-cnn.safetensors".into())
        );
        assert_eq!(
            spec.source(&|_| None).unwrap(),
            WeightsSource::Builtin {
                file: "ccexam-svhn-cnn.safetensors".into()
            }
        );
    }
}
