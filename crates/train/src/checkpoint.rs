//! Checkpoints: model weights and optimizer state as safetensors, plus a JSON
//! sidecar that commits them.
//!
//! Layout in a run folder: `model-e{N}.safetensors`, `optim-e{N}.safetensors`, and
//! the sidecars `last.json` / `best.json` naming those files with their SHA-256.
//! Weight files are written first (atomically), the sidecar last (atomically): a
//! crash at any point leaves the previous sidecar pointing at complete files, and
//! a file whose digest differs from its sidecar's is refused on load.
//!
//! Loading treats every file as untrusted input: a sidecar must be consistent
//! ([`Sidecar::validate`]: bare file names, 64-digit digests, one history entry per
//! epoch, sane shapes), weights are read once, hashed and parsed from the same
//! bytes (no window in which the file can change between the check and the
//! parse), and only floating-point tensors are accepted.
use crate::io::{write_atomic, write_json};
use crate::{Result, TrainError};
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use sha2::Digest;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Version of the sidecar format.
pub const FORMAT_VERSION: u32 = 1;

/// Everything needed to resume or evaluate, stored as JSON beside the weights.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sidecar {
    pub format_version: u32,
    pub created_by: String,
    /// The full experiment config (JSON form).
    pub config: serde_json::Value,
    /// Epochs completed.
    pub epoch: usize,
    pub optimizer_steps: u64,
    pub seed: u64,
    pub class_names: Vec<String>,
    /// Input `[channels, height, width]` the model takes.
    pub input_shape: [usize; 3],
    /// This epoch's metrics.
    pub metrics: BTreeMap<String, f64>,
    /// Per-epoch metrics so far (for curves after a resume).
    pub history: Vec<BTreeMap<String, f64>>,
    pub best_metric: Option<f64>,
    pub best_epoch: Option<usize>,
    pub epochs_without_improvement: usize,
    pub model_file: String,
    pub model_sha256: String,
    pub optim_file: Option<String>,
    pub optim_sha256: Option<String>,
}

/// Serialises `tensors` in memory and writes them with [`write_atomic`] (one
/// temporary file of ours, fsynced, then renamed; `safetensors`' own file writer
/// would add a second, randomly named temporary file that a crash leaves behind
/// and that ignores where the data really goes). Returns the SHA-256 of the
/// bytes written, so the file is never read back to hash it.
fn save_tensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<String> {
    // On the CPU first, so that serialising cannot fail half-way (candle's
    // safetensors view unwraps a device-to-host copy).
    let cpu = tensors
        .iter()
        .map(|(k, t)| Ok((k.as_str(), t.to_device(&Device::Cpu)?)))
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(cpu, None).map_err(|e| TrainError::Checkpoint {
        path: path.to_path_buf(),
        message: format!("cannot serialise the tensors: {e}"),
    })?;
    write_atomic(path, &bytes)?;
    Ok(hex::encode(sha2::Sha256::digest(&bytes)))
}

/// The model's tensors by name (parameters and batch-norm statistics).
pub fn model_tensors(map: &VarMap) -> HashMap<String, Tensor> {
    map.data()
        .lock()
        .expect("varmap lock poisoned")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect()
}

/// Writes `model-e{epoch}` (+ `optim-e{epoch}`) files and then `<dir>/<tag>.json`.
pub fn save(
    dir: &Path,
    tag: &str,
    map: &VarMap,
    optim_state: Option<&BTreeMap<String, Tensor>>,
    mut sidecar: Sidecar,
) -> Result<PathBuf> {
    let model_file = format!("model-e{}.safetensors", sidecar.epoch);
    let model_path = dir.join(&model_file);
    sidecar.model_sha256 = save_tensors(&model_path, &model_tensors(map))?;
    sidecar.model_file = model_file;
    if let Some(state) = optim_state {
        let optim_file = format!("optim-e{}.safetensors", sidecar.epoch);
        let optim_path = dir.join(&optim_file);
        let tensors: HashMap<String, Tensor> = state.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        if tensors.is_empty() {
            // safetensors cannot store zero tensors; a marker keeps the file valid.
            let marker = HashMap::from([(
                "__empty__".to_string(),
                Tensor::zeros(1, candle_core::DType::F32, &Device::Cpu)?,
            )]);
            sidecar.optim_sha256 = Some(save_tensors(&optim_path, &marker)?);
        } else {
            sidecar.optim_sha256 = Some(save_tensors(&optim_path, &tensors)?);
        }
        sidecar.optim_file = Some(optim_file);
    }
    let path = dir.join(format!("{tag}.json"));
    write_json(&path, &sidecar)?;
    Ok(path)
}

/// Deletes weight files no sidecar in `dir` refers to (old epochs), and the
/// temporary files of killed processes.
pub fn prune(dir: &Path) -> Result<()> {
    crate::run_dir::remove_stale_temp_files(dir);
    let mut keep = std::collections::HashSet::new();
    for tag in ["last", "best"] {
        if let Ok(s) = read_sidecar(&dir.join(format!("{tag}.json"))) {
            keep.insert(s.model_file);
            if let Some(o) = s.optim_file {
                keep.insert(o);
            }
        }
    }
    let entries = std::fs::read_dir(dir).map_err(|source| TrainError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let ours = (name.starts_with("model-e") || name.starts_with("optim-e")) && name.ends_with(".safetensors");
        if ours && !keep.contains(&name) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(())
}

/// The checkpoint `--resume` continues from: `<dir>/last.json`, written by the
/// same config except `train.epochs` (`config` in JSON form), with at most
/// `epochs` epochs done. A missing checkpoint is an error (starting over is what a
/// run without `--resume` does), and so is a run that already did more epochs
/// than asked for (its outputs would disagree with the config).
pub fn resume_point(dir: &Path, config: &serde_json::Value, epochs: usize) -> Result<(PathBuf, Sidecar)> {
    let path = dir.join("last.json");
    if !path.is_file() {
        return Err(TrainError::Checkpoint {
            path,
            message: "does not exist: nothing to resume (run without --resume to start a new run)".into(),
        });
    }
    let s = read_sidecar(&path)?;
    let mut saved = s.config.clone();
    let mut now = config.clone();
    // The epoch count may grow on resume; everything else must match.
    for v in [&mut saved, &mut now] {
        if let Some(t) = v.get_mut("train").and_then(|t| t.as_object_mut()) {
            t.remove("epochs");
        }
    }
    if saved != now {
        return Err(TrainError::Checkpoint {
            path,
            message: "was written by a different config; resume with the same config (only train.epochs may change)"
                .into(),
        });
    }
    if s.epoch > epochs {
        return Err(TrainError::Checkpoint {
            path,
            message: format!(
                "has {} epochs done but train.epochs = {epochs}; resuming can only add epochs \
                 (set train.epochs >= {}, or run without --resume to start over)",
                s.epoch, s.epoch
            ),
        });
    }
    Ok((path, s))
}

/// Reads a sidecar, checking its format version and its consistency.
pub fn read_sidecar(path: &Path) -> Result<Sidecar> {
    let bytes = std::fs::read(path).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_sidecar(&bytes, path)
}

/// Parses and checks sidecar JSON; `path` is only used in error messages.
pub fn parse_sidecar(bytes: &[u8], path: &Path) -> Result<Sidecar> {
    let bad = |message: String| TrainError::Checkpoint {
        path: path.to_path_buf(),
        message,
    };
    let s: Sidecar = serde_json::from_slice(bytes).map_err(|e| bad(format!("invalid sidecar JSON: {e}")))?;
    if s.format_version != FORMAT_VERSION {
        return Err(bad(format!(
            "format version {} is not supported (expected {FORMAT_VERSION})",
            s.format_version
        )));
    }
    s.validate().map_err(bad)?;
    Ok(s)
}

/// Largest number of input values (`channels * height * width`) a sidecar may declare.
pub const MAX_INPUT_VALUES: usize = 1 << 24;
/// Largest number of classes a sidecar may declare (as for datasets).
pub const MAX_CLASSES: usize = 256;

impl Sidecar {
    /// Checks what JSON types alone cannot: file names are plain names of
    /// `.safetensors` files in the sidecar's folder, digests are 64 hex digits,
    /// there is one history entry per completed epoch (numbered 1, 2, ...), the
    /// best epoch is one of them, and the input shape and class count are sane.
    /// The message names the offending field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        check_file_name("model_file", &self.model_file)?;
        check_sha256("model_sha256", &self.model_sha256)?;
        match (&self.optim_file, &self.optim_sha256) {
            (Some(f), Some(h)) => {
                check_file_name("optim_file", f)?;
                check_sha256("optim_sha256", h)?;
            }
            (None, None) => {}
            _ => return Err("optim_file and optim_sha256 must be given together".into()),
        }
        if self.epoch == 0 {
            return Err("epoch must be at least 1".into());
        }
        if self.history.len() != self.epoch {
            return Err(format!(
                "history has {} entries, expected one per epoch ({})",
                self.history.len(),
                self.epoch
            ));
        }
        for (i, h) in self.history.iter().enumerate() {
            if h.get("epoch") != Some(&((i + 1) as f64)) {
                return Err(format!(
                    "history[{i}].epoch must be {}, found {:?}",
                    i + 1,
                    h.get("epoch")
                ));
            }
        }
        if let Some(b) = self.best_epoch {
            if b == 0 || b > self.epoch {
                return Err(format!("best_epoch {b} is not in 1..={}", self.epoch));
            }
        }
        let [c, h, w] = self.input_shape;
        let values = c.checked_mul(h).and_then(|v| v.checked_mul(w));
        if c == 0 || h == 0 || w == 0 || values.is_none_or(|v| v > MAX_INPUT_VALUES) {
            return Err(format!(
                "input_shape {:?} must have positive sides and at most {MAX_INPUT_VALUES} values",
                self.input_shape
            ));
        }
        if self.class_names.is_empty() || self.class_names.len() > MAX_CLASSES {
            return Err(format!(
                "class_names must hold 1..={MAX_CLASSES} names, found {}",
                self.class_names.len()
            ));
        }
        Ok(())
    }
}

fn check_file_name(field: &str, name: &str) -> std::result::Result<(), String> {
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && name.ends_with(".safetensors");
    if plain {
        Ok(())
    } else {
        Err(format!(
            "{field} must be the plain name of a .safetensors file beside the sidecar, found {name:?}"
        ))
    }
}

fn check_sha256(field: &str, hex: &str) -> std::result::Result<(), String> {
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(())
    } else {
        Err(format!("{field} must be 64 lowercase hex digits, found {hex:?}"))
    }
}

/// Sidecar names [`resolve`] looks for, in order: `digitlab train`'s best and last
/// epochs, and the one complete model of a `digitlab transfer` backbone.
pub const SIDECAR_NAMES: [&str; 3] = ["best.json", "last.json", "model.json"];

/// Key of a sidecar's `config` naming what wrote the checkpoint when it is not
/// `digitlab train` (whose `config` is an [`crate::ExperimentConfig`]).
pub const KIND_KEY: &str = "checkpoint_kind";

/// What wrote a checkpoint: `train` (no [`KIND_KEY`] in its config), or the value
/// of [`KIND_KEY`] (`transfer`).
pub fn checkpoint_kind(sidecar: &Sidecar) -> &str {
    sidecar
        .config
        .get(KIND_KEY)
        .and_then(serde_json::Value::as_str)
        .unwrap_or("train")
}

/// Finds a sidecar from a user-given path: a `.json` sidecar, a run folder
/// (its `best.json`, else `last.json`, else `model.json`), or a weights file with
/// a sidecar naming it.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if path.is_dir() {
        for tag in SIDECAR_NAMES {
            let p = path.join(tag);
            if p.is_file() {
                return Ok(p);
            }
        }
        return Err(TrainError::Checkpoint {
            path: path.to_path_buf(),
            message: "folder has no best.json, last.json or model.json".into(),
        });
    }
    if path.extension().is_some_and(|e| e == "json") {
        return Ok(path.to_path_buf());
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    for tag in SIDECAR_NAMES {
        let p = dir.join(tag);
        if read_sidecar(&p).is_ok_and(|s| s.model_file == name) {
            return Ok(p);
        }
    }
    Err(TrainError::Checkpoint {
        path: path.to_path_buf(),
        message: "no best.json / last.json / model.json beside it refers to this file; pass the run folder or a \
                  sidecar"
            .into(),
    })
}

/// Loads and verifies the weights a sidecar names into `map` (shapes must match).
pub fn load_model(sidecar_path: &Path, sidecar: &Sidecar, map: &VarMap, device: &Device) -> Result<()> {
    let dir = sidecar_path.parent().unwrap_or(Path::new("."));
    let path = dir.join(&sidecar.model_file);
    let tensors = load_verified(&path, &sidecar.model_sha256, device)?;
    set_model_tensors(&path, &tensors, map)
}

/// Copies `tensors` into the variables of `map`: every variable needs a tensor of
/// its name and shape (converted to its dtype). Nothing is changed unless all fit.
pub fn set_model_tensors(path: &Path, tensors: &HashMap<String, Tensor>, map: &VarMap) -> Result<()> {
    let data = map.data().lock().expect("varmap lock poisoned");
    let mut problems = Vec::new();
    for (name, var) in data.iter() {
        match tensors.get(name) {
            None => problems.push(format!("missing tensor `{name}`")),
            Some(t) if t.dims() != var.dims() => problems.push(format!(
                "`{name}`: expected shape {:?}, found {:?}",
                var.dims(),
                t.dims()
            )),
            Some(_) => {}
        }
    }
    if !problems.is_empty() {
        problems.sort();
        return Err(TrainError::Checkpoint {
            path: path.to_path_buf(),
            message: problems.join("; "),
        });
    }
    for (name, var) in data.iter() {
        var.set(&tensors[name].to_dtype(var.dtype())?)?;
    }
    Ok(())
}

/// The experiment config a sidecar stores.
pub fn stored_config(sidecar_path: &Path, sidecar: &Sidecar) -> Result<crate::ExperimentConfig> {
    let kind = checkpoint_kind(sidecar);
    if kind != "train" {
        return Err(TrainError::Checkpoint {
            path: sidecar_path.to_path_buf(),
            message: format!(
                "a `{kind}` checkpoint, not one of `digitlab train`: load it with `digitlab eval` / `predict`"
            ),
        });
    }
    serde_json::from_value(sidecar.config.clone()).map_err(|e| TrainError::Checkpoint {
        path: sidecar_path.to_path_buf(),
        message: format!("the stored config is not valid for this digitlab version: {e}"),
    })
}

/// Reads a sidecar and its verified weights and builds the model its stored
/// config describes, for evaluation and prediction.
///
/// The model is built *from* the loaded tensors (a `VarBuilder` over them), so a
/// layer size in the stored config that the weights file does not back with a
/// tensor of that shape is an error — nothing is allocated from the config's
/// numbers alone, and memory stays bounded by the size of the weights file.
pub fn load_inference_model(
    sidecar_path: &Path,
    device: &Device,
) -> Result<(crate::ExperimentConfig, Sidecar, digitlab_models::Model)> {
    let sidecar = read_sidecar(sidecar_path)?;
    let dir = sidecar_path.parent().unwrap_or(Path::new("."));
    let weights = dir.join(&sidecar.model_file);
    let tensors = load_verified(&weights, &sidecar.model_sha256, device)?;
    let (cfg, model) = inference_model_from_parts(sidecar_path, &sidecar, &weights, tensors, device)?;
    Ok((cfg, sidecar, model))
}

/// The model part of [`load_inference_model`], on a parsed sidecar (from
/// `sidecar_path`) and the tensors loaded from `weights_path`.
pub fn inference_model_from_parts(
    sidecar_path: &Path,
    sidecar: &Sidecar,
    weights_path: &Path,
    tensors: HashMap<String, Tensor>,
    device: &Device,
) -> Result<(crate::ExperimentConfig, digitlab_models::Model)> {
    let cfg = stored_config(sidecar_path, sidecar)?;
    let model = model_from_tensors(&cfg.model, sidecar, weights_path, tensors, device)?;
    Ok((cfg, model))
}

/// Builds `model` for the sidecar's input shape and classes *from* `tensors` (read
/// from `weights_path`): a layer the tensors do not back with the right shape is an
/// error, whatever kind of checkpoint the sidecar belongs to.
pub fn model_from_tensors(
    model: &digitlab_models::ModelConfig,
    sidecar: &Sidecar,
    weights_path: &Path,
    tensors: HashMap<String, Tensor>,
    device: &Device,
) -> Result<digitlab_models::Model> {
    let [channels, height, width] = sidecar.input_shape;
    let input = digitlab_models::InputShape {
        channels,
        height,
        width,
    };
    let vb = candle_nn::VarBuilder::from_tensors(tensors, candle_core::DType::F32, device);
    digitlab_models::build_model(model, input, sidecar.class_names.len(), vb).map_err(|e| TrainError::Checkpoint {
        path: weights_path.to_path_buf(),
        message: format!("does not hold the model the sidecar's config describes: {e}"),
    })
}

/// Reads the weights file a sidecar (at `sidecar_path`) names, verified against
/// its SHA-256. Returns the file's path and its tensors.
pub fn load_sidecar_weights(
    sidecar_path: &Path,
    sidecar: &Sidecar,
    device: &Device,
) -> Result<(PathBuf, HashMap<String, Tensor>)> {
    let dir = sidecar_path.parent().unwrap_or(Path::new("."));
    let weights = dir.join(&sidecar.model_file);
    let tensors = load_verified(&weights, &sidecar.model_sha256, device)?;
    Ok((weights, tensors))
}

/// Loads and verifies the optimizer state a sidecar names.
pub fn load_optim(sidecar_path: &Path, sidecar: &Sidecar, device: &Device) -> Result<BTreeMap<String, Tensor>> {
    let (Some(file), Some(sha)) = (&sidecar.optim_file, &sidecar.optim_sha256) else {
        return Ok(BTreeMap::new());
    };
    let dir = sidecar_path.parent().unwrap_or(Path::new("."));
    let mut t = load_verified(&dir.join(file), sha, device)?;
    t.remove("__empty__");
    Ok(t.into_iter().collect())
}

/// Checks optimizer state read from `path` against the trainable `params`: every
/// entry must be `<param>.momentum`, `<param>.exp_avg` or `<param>.exp_avg_sq`
/// of a known parameter, with that parameter's shape; values are converted to
/// the parameter's dtype.
pub fn check_optim_state(
    path: &Path,
    state: BTreeMap<String, Tensor>,
    params: &[(String, candle_core::Var)],
) -> Result<BTreeMap<String, Tensor>> {
    let by_name: HashMap<&str, &candle_core::Var> = params.iter().map(|(n, v)| (n.as_str(), v)).collect();
    let mut out = BTreeMap::new();
    for (key, t) in state {
        let var = ["momentum", "exp_avg", "exp_avg_sq"]
            .iter()
            .find_map(|suffix| key.strip_suffix(suffix).and_then(|k| k.strip_suffix('.')))
            .and_then(|p| by_name.get(p));
        let Some(var) = var else {
            return Err(TrainError::Checkpoint {
                path: path.to_path_buf(),
                message: format!("optimizer state `{key}` belongs to no parameter of this model"),
            });
        };
        if t.dims() != var.dims() {
            return Err(TrainError::Checkpoint {
                path: path.to_path_buf(),
                message: format!(
                    "optimizer state `{key}`: expected shape {:?}, found {:?}",
                    var.dims(),
                    t.dims()
                ),
            });
        }
        let t = t.to_dtype(var.dtype())?;
        out.insert(key, t);
    }
    Ok(out)
}

fn load_verified(path: &Path, sha: &str, device: &Device) -> Result<HashMap<String, Tensor>> {
    // Hash and parse the same bytes, so the file cannot change in between.
    let bytes = std::fs::read(path).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    tensors_from_verified_bytes(&bytes, sha, path, device)
}

/// Parses safetensors `bytes` after checking their SHA-256 against `sha` (a
/// mismatch means a corrupt, truncated or replaced file); `path` names them in
/// errors. Only floating-point tensors (f16, bf16, f32, f64) are accepted.
pub fn tensors_from_verified_bytes(
    bytes: &[u8],
    sha: &str,
    path: &Path,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let actual = hex::encode(sha2::Sha256::digest(bytes));
    if actual != sha {
        return Err(TrainError::Checkpoint {
            path: path.to_path_buf(),
            message: format!("corrupt or replaced: sha256 {actual}, the sidecar expects {sha}"),
        });
    }
    tensors_from_bytes(bytes, path, device)
}

/// Parses safetensors `bytes` (no digest check); `path` names them in errors.
/// Only floating-point tensors (f16, bf16, f32, f64) are accepted: checkpoints
/// never hold anything else, and other dtypes (the 4/6-bit float formats in
/// particular) cannot be converted to the model's dtype.
pub fn tensors_from_bytes(bytes: &[u8], path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    use candle_core::safetensors::Load;
    use safetensors::Dtype;
    let bad = |message: String| TrainError::Checkpoint {
        path: path.to_path_buf(),
        message,
    };
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| bad(format!("unreadable safetensors: {e}")))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        if !matches!(view.dtype(), Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64) {
            return Err(bad(format!(
                "tensor `{name}` has dtype {:?}, expected a floating-point tensor (F16, BF16, F32 or F64)",
                view.dtype()
            )));
        }
        let t = view.load(device).map_err(|e| bad(format!("tensor `{name}`: {e}")))?;
        out.insert(name, t);
    }
    Ok(out)
}

/// Writes plain bytes atomically (re-exported for callers that export weights).
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(write_atomic(path, bytes)?)
}
