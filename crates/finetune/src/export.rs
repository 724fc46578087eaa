//! A complete classifier per transfer backbone: `model.safetensors` and its
//! `model.json` sidecar, loadable by `digitlab eval` / `predict` and by PyTorch.
//!
//! `model.safetensors` holds every backbone tensor under its torchvision / timm
//! name (batch-norm running statistics included) and the new head under the
//! architecture's head name (`fc.*` for ResNet, `classifier.6.*` for VGG, `_fc.*`
//! for EfficientNet-Lite0, `classifier.4.*` for the small CNNs), with the feature
//! standardisation the head was trained with folded into the head's weights: the
//! file is one plain network, `torchvision.models.resnet18(num_classes=10)` loads
//! it with `strict=True` (see `tests/torchvision_load.py`).
//!
//! `model.json` is a [`digitlab_train::checkpoint::Sidecar`] like `digitlab train`'s
//! (SHA-256 of the weights, class names, input shape, history); its `config` is an
//! [`ExportedConfig`] marked `checkpoint_kind = "transfer"`
//! ([`checkpoint::KIND_KEY`]): the model name and architecture, the preprocessing
//! the backbone saw (channels, resize, normalisation) and the run's config with
//! this one backbone, so evaluation uses the same data split.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use digitlab_data::Pipeline;
use digitlab_models::{Model, ModelConfig};
use digitlab_train::checkpoint::{self, Sidecar};
use digitlab_train::io::{write_atomic_with, write_json};
use serde::{Deserialize, Serialize};

use crate::error::{FinetuneError, Result};
use crate::transfer::TransferConfig;
use crate::zoo::{file_sha256, resolve_arch, CreatedModel};

/// The weights file of an exported model.
pub const MODEL_FILE: &str = "model.safetensors";
/// Its sidecar.
pub const SIDECAR_FILE: &str = "model.json";
/// The [`checkpoint::KIND_KEY`] value of exported transfer models.
pub const KIND: &str = "transfer";

/// The `config` of an exported model's sidecar.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportedConfig {
    /// Always [`KIND`].
    pub checkpoint_kind: String,
    /// Canonical model name ([`crate::zoo::MODEL_NAMES`]).
    pub model: String,
    /// What [`digitlab_models::build_model`] builds; must agree with `model`.
    pub architecture: ModelConfig,
    /// The weights source the backbone started from, as configured.
    pub pretrained: String,
    /// Preprocessing of every image before the model: channels, resize,
    /// normalisation (never augmentation).
    pub preprocess: Pipeline,
    /// The run's config with this backbone only (its `[data]` gives the split).
    pub transfer: TransferConfig,
}

/// What [`export_model`] needs besides the model.
pub struct ExportParts<'a> {
    /// The head's folded weight `[K, D]` and bias `[K]`.
    pub head_weight: &'a Tensor,
    pub head_bias: &'a Tensor,
    pub preprocess: &'a Pipeline,
    /// The run's config with this backbone only.
    pub config: &'a TransferConfig,
    pub pretrained: &'a str,
    pub class_names: &'a [String],
    /// The head's training history (one entry per epoch, `epoch` numbered from 1).
    pub history: &'a [BTreeMap<String, f64>],
    /// Optimisation steps of the head.
    pub optimizer_steps: u64,
}

/// The tensors of the complete classifier: every backbone variable of `created`
/// (those under its head prefix excluded) plus the new head's weight and bias.
pub fn classifier_tensors(created: &CreatedModel, weight: &Tensor, bias: &Tensor) -> Result<HashMap<String, Tensor>> {
    let prefix = created.head_prefix();
    let head = format!("{prefix}.");
    let data = created.varmap.data().lock().expect("varmap lock poisoned");
    let mut out: HashMap<String, Tensor> = data
        .iter()
        .filter(|(n, _)| !n.starts_with(&head))
        .map(|(n, v)| Ok((n.clone(), v.as_tensor().detach().to_device(&Device::Cpu)?)))
        .collect::<Result<_>>()?;
    out.insert(format!("{prefix}.weight"), weight.detach().to_device(&Device::Cpu)?);
    out.insert(format!("{prefix}.bias"), bias.detach().to_device(&Device::Cpu)?);
    Ok(out)
}

/// Writes `<dir>/model.safetensors`, then `<dir>/model.json` (both atomically, the
/// sidecar last so that it only ever names a complete file). Returns the sidecar's path.
pub fn export_model(dir: &Path, created: &CreatedModel, parts: &ExportParts) -> Result<PathBuf> {
    let tensors = classifier_tensors(created, parts.head_weight, parts.head_bias)?;
    let model_path = dir.join(MODEL_FILE);
    write_atomic_with(&model_path, |tmp| {
        candle_core::safetensors::save(&tensors, tmp).map_err(std::io::Error::other)
    })?;
    let model_sha256 = file_sha256(&model_path)?;
    let config = ExportedConfig {
        checkpoint_kind: KIND.into(),
        model: created.name.to_string(),
        architecture: created.arch.config.clone(),
        pretrained: parts.pretrained.to_string(),
        preprocess: Pipeline {
            augment: None,
            ..parts.preprocess.clone()
        },
        transfer: parts.config.clone(),
    };
    let history: Vec<BTreeMap<String, f64>> = parts.history.to_vec();
    let sidecar = Sidecar {
        format_version: checkpoint::FORMAT_VERSION,
        created_by: format!("digitlab transfer {}", env!("CARGO_PKG_VERSION")),
        config: serde_json::to_value(&config).map_err(|e| FinetuneError::Config(e.to_string()))?,
        epoch: history.len(),
        optimizer_steps: parts.optimizer_steps,
        seed: parts.config.seed,
        class_names: parts.class_names.to_vec(),
        input_shape: [created.input.channels, created.input.height, created.input.width],
        metrics: history.last().cloned().unwrap_or_default(),
        history,
        best_metric: None,
        best_epoch: None,
        epochs_without_improvement: 0,
        model_file: MODEL_FILE.into(),
        model_sha256,
        optim_file: None,
        optim_sha256: None,
    };
    sidecar
        .validate()
        .map_err(|m| FinetuneError::Config(format!("{}: {m}", dir.join(SIDECAR_FILE).display())))?;
    let path = dir.join(SIDECAR_FILE);
    write_json(&path, &sidecar)?;
    Ok(path)
}

/// An exported model read back: its sidecar, config and the network.
pub struct ExportedModel {
    pub sidecar: Sidecar,
    pub config: ExportedConfig,
    pub model: Model,
}

/// The [`ExportedConfig`] a transfer sidecar (read from `sidecar_path`) stores.
pub fn exported_config(sidecar_path: &Path, sidecar: &Sidecar) -> Result<ExportedConfig> {
    let bad = |message: String| {
        FinetuneError::Train(digitlab_train::TrainError::Checkpoint {
            path: sidecar_path.to_path_buf(),
            message,
        })
    };
    let kind = checkpoint::checkpoint_kind(sidecar);
    if kind != KIND {
        return Err(bad(format!("a `{kind}` checkpoint, expected a `{KIND}` one")));
    }
    let config: ExportedConfig = serde_json::from_value(sidecar.config.clone())
        .map_err(|e| bad(format!("the stored config is not valid for this digitlab version: {e}")))?;
    let arch = resolve_arch(&config.model).map_err(|e| bad(format!("config.model: {e}")))?;
    if arch.config != config.architecture {
        return Err(bad(format!(
            "config.architecture {:?} is not the architecture of model `{}` ({:?})",
            config.architecture, config.model, arch.config
        )));
    }
    Ok(config)
}

/// Reads an exported model's sidecar and verified weights and builds the network
/// from them (see [`checkpoint::model_from_tensors`]).
pub fn load_exported(sidecar_path: &Path, device: &Device) -> Result<ExportedModel> {
    let sidecar = checkpoint::read_sidecar(sidecar_path)?;
    let config = exported_config(sidecar_path, &sidecar)?;
    let (weights, tensors) = checkpoint::load_sidecar_weights(sidecar_path, &sidecar, device)?;
    let model = checkpoint::model_from_tensors(&config.architecture, &sidecar, &weights, tensors, device)?;
    Ok(ExportedModel { sidecar, config, model })
}
