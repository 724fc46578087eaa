//! Checkpoints: model weights and optimizer state as safetensors, plus a JSON
//! sidecar that commits them.
//!
//! Layout in a run folder: `model-e{N}.safetensors`, `optim-e{N}.safetensors`, and
//! the sidecars `last.json` / `best.json` naming those files with their SHA-256.
//! Weight files are written first (atomically), the sidecar last (atomically): a
//! crash at any point leaves the previous sidecar pointing at complete files, and
//! a file whose digest differs from its sidecar's is refused on load.
use crate::io::{write_atomic, write_atomic_with, write_json};
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

fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|source| TrainError::Io { path: path.to_path_buf(), source })?;
    Ok(hex::encode(sha2::Sha256::digest(&bytes)))
}

fn save_tensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let mut err = None;
    write_atomic_with(path, |tmp| {
        candle_core::safetensors::save(tensors, tmp).map_err(|e| {
            let msg = e.to_string();
            err = Some(e);
            std::io::Error::other(msg)
        })?;
        std::fs::File::open(tmp)?.sync_all()
    })?;
    match err {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// The model's tensors by name (parameters and batch-norm statistics).
pub fn model_tensors(map: &VarMap) -> HashMap<String, Tensor> {
    map.data().lock().expect("varmap lock poisoned").iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect()
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
    save_tensors(&model_path, &model_tensors(map))?;
    sidecar.model_sha256 = sha256_file(&model_path)?;
    sidecar.model_file = model_file;
    if let Some(state) = optim_state {
        let optim_file = format!("optim-e{}.safetensors", sidecar.epoch);
        let optim_path = dir.join(&optim_file);
        let tensors: HashMap<String, Tensor> = state.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        if tensors.is_empty() {
            // safetensors cannot store zero tensors; a marker keeps the file valid.
            let marker = HashMap::from([("__empty__".to_string(), Tensor::zeros(1, candle_core::DType::F32, &Device::Cpu)?)]);
            save_tensors(&optim_path, &marker)?;
        } else {
            save_tensors(&optim_path, &tensors)?;
        }
        sidecar.optim_sha256 = Some(sha256_file(&optim_path)?);
        sidecar.optim_file = Some(optim_file);
    }
    let path = dir.join(format!("{tag}.json"));
    write_json(&path, &sidecar)?;
    Ok(path)
}

/// Deletes weight files no sidecar in `dir` refers to (old epochs).
pub fn prune(dir: &Path) -> Result<()> {
    let mut keep = std::collections::HashSet::new();
    for tag in ["last", "best"] {
        if let Ok(s) = read_sidecar(&dir.join(format!("{tag}.json"))) {
            keep.insert(s.model_file);
            if let Some(o) = s.optim_file {
                keep.insert(o);
            }
        }
    }
    let entries = std::fs::read_dir(dir).map_err(|source| TrainError::Io { path: dir.to_path_buf(), source })?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let ours = (name.starts_with("model-e") || name.starts_with("optim-e")) && name.ends_with(".safetensors");
        if ours && !keep.contains(&name) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(())
}

/// Reads a sidecar, checking its format version.
pub fn read_sidecar(path: &Path) -> Result<Sidecar> {
    let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io { path: path.to_path_buf(), source })?;
    let s: Sidecar = serde_json::from_str(&text)
        .map_err(|e| TrainError::Checkpoint { path: path.to_path_buf(), message: format!("invalid sidecar JSON: {e}") })?;
    if s.format_version != FORMAT_VERSION {
        return Err(TrainError::Checkpoint {
            path: path.to_path_buf(),
            message: format!("format version {} is not supported (expected {FORMAT_VERSION})", s.format_version),
        });
    }
    Ok(s)
}

/// Finds a sidecar from a user-given path: a `.json` sidecar, a run folder
/// (its `best.json`, else `last.json`), or a weights file with a sidecar naming it.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if path.is_dir() {
        for tag in ["best.json", "last.json"] {
            let p = path.join(tag);
            if p.is_file() {
                return Ok(p);
            }
        }
        return Err(TrainError::Checkpoint { path: path.to_path_buf(), message: "folder has no best.json or last.json".into() });
    }
    if path.extension().is_some_and(|e| e == "json") {
        return Ok(path.to_path_buf());
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    for tag in ["best.json", "last.json"] {
        let p = dir.join(tag);
        if read_sidecar(&p).is_ok_and(|s| s.model_file == name) {
            return Ok(p);
        }
    }
    Err(TrainError::Checkpoint {
        path: path.to_path_buf(),
        message: "no best.json / last.json beside it refers to this file; pass the run folder or a sidecar".into(),
    })
}

/// Loads and verifies the weights a sidecar names into `map` (shapes must match).
pub fn load_model(sidecar_path: &Path, sidecar: &Sidecar, map: &VarMap, device: &Device) -> Result<()> {
    let dir = sidecar_path.parent().unwrap_or(Path::new("."));
    let tensors = load_verified(&dir.join(&sidecar.model_file), &sidecar.model_sha256, device)?;
    let data = map.data().lock().expect("varmap lock poisoned");
    let mut problems = Vec::new();
    for (name, var) in data.iter() {
        match tensors.get(name) {
            None => problems.push(format!("missing tensor `{name}`")),
            Some(t) if t.dims() != var.dims() => {
                problems.push(format!("`{name}`: expected shape {:?}, found {:?}", var.dims(), t.dims()))
            }
            Some(t) => var.set(&t.to_dtype(var.dtype())?)?,
        }
    }
    if !problems.is_empty() {
        return Err(TrainError::Checkpoint { path: dir.join(&sidecar.model_file), message: problems.join("; ") });
    }
    Ok(())
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

fn load_verified(path: &Path, sha: &str, device: &Device) -> Result<HashMap<String, Tensor>> {
    let actual = sha256_file(path)?;
    if actual != sha {
        return Err(TrainError::Checkpoint {
            path: path.to_path_buf(),
            message: format!("corrupt or replaced: sha256 {actual}, the sidecar expects {sha}"),
        });
    }
    candle_core::safetensors::load(path, device)
        .map_err(|e| TrainError::Checkpoint { path: path.to_path_buf(), message: format!("unreadable safetensors: {e}") })
}

/// Writes plain bytes atomically (re-exported for callers that export weights).
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, bytes)
}
