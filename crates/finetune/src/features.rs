//! Frozen-backbone feature extraction and the on-disk feature cache.
//!
//! With a frozen backbone and no augmentation, the embedding of an image never
//! changes, so [`features_for`] computes it once — in eval mode (batch norm uses its
//! running statistics, dropout is off), batch by batch with a progress bar — and
//! stores the `[N, D]` matrix in a [`FeatureCache`]. Every later epoch, and every
//! later run with the same key, reads the matrix instead of running the backbone:
//! five epochs cost one backbone pass.
//!
//! # Cache key
//!
//! A [`FeatureKey`] holds everything the embedding depends on: model name and
//! architecture, input shape, the weights' identity (SHA-256 of the pretrained file,
//! or the seed and a digest of the random initial tensors), dataset, split, subset
//! fraction, seed, validation fraction, class filter, test limit, resize,
//! normalisation, channel conversion, image count and a SHA-256 of the split's
//! pixels and labels. Its SHA-256 (of the key's JSON) names the cache file
//! `<model>-<split>-<digest>.safetensors`; any change of any field is a miss.
//!
//! # Files
//!
//! A cache file is a safetensors file with `features` (f32 `[N, D]`) and `labels`
//! (u32 `[N]`), and the key's JSON in the metadata (`digitlab.feature_key`). It is
//! written to a temporary file and renamed ([`digitlab_train::io::write_atomic_with`]),
//! so an interrupted run never leaves half a file. On reading, the stored key,
//! shapes and labels are checked; a file that fails any check is reported and
//! recomputed, never trusted.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use digitlab_data::{Batcher, Dataset, Normalization, Pipeline};
use digitlab_models::Backbone;
use digitlab_train::Verbosity;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{FinetuneError, Result};

/// Version of the cache file layout; part of every key.
pub const CACHE_FORMAT: u32 = 1;

/// Metadata key holding the [`FeatureKey`] JSON in a cache file.
pub const KEY_METADATA: &str = "digitlab.feature_key";

/// Everything a split's embeddings depend on (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureKey {
    pub format: u32,
    /// Canonical model name (`resnet18`, ...).
    pub model: String,
    /// The architecture as built.
    pub model_config: digitlab_models::ModelConfig,
    /// `[channels, height, width]` of the backbone's input.
    pub input: [usize; 3],
    /// `sha256:<file>` or `random:seed=<s>:sha256:<tensors>` (see
    /// [`crate::zoo::CreatedModel::weights_id`]).
    pub weights: String,
    /// Dataset name (`svhn`, `mnist`, ...).
    pub dataset: String,
    /// `train`, `val` or `test`.
    pub split: String,
    /// Subset fraction, seed, validation fraction and stratification of the
    /// train/val split (`None` for the test split, which they do not affect).
    pub subset: Option<f64>,
    pub seed: Option<u64>,
    pub val_fraction: Option<f64>,
    pub stratified: Option<bool>,
    pub classes: Option<Vec<u8>>,
    pub test_limit: Option<usize>,
    pub resize: Option<[usize; 2]>,
    pub channels: Option<usize>,
    pub normalize: Normalization,
    /// Number of images.
    pub images: usize,
    /// SHA-256 of the split's shape, pixels and labels (see [`dataset_digest`]).
    pub data_sha256: String,
    /// Precision of the backbone pass (bf16 features differ from f32 ones); absent
    /// for f32, so f32 keys are those of earlier versions.
    #[serde(default, skip_serializing_if = "digitlab_models::Precision::is_f32")]
    pub dtype: digitlab_models::Precision,
}

impl FeatureKey {
    /// SHA-256 of the key's JSON, hex.
    pub fn digest(&self) -> String {
        let json = serde_json::to_string(self).expect("feature keys always serialise");
        hex::encode(Sha256::digest(json.as_bytes()))
    }
    /// Cache file name: `<model>-<split>-<first 24 hex digits of the digest>.safetensors`.
    pub fn file_name(&self) -> String {
        let d = self.digest();
        format!(
            "{}-{}-{}.safetensors",
            sanitize(&self.model),
            sanitize(&self.split),
            &d[..24]
        )
    }
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// SHA-256 over a dataset's shape, pixels and labels, hex.
pub fn dataset_digest(data: &Dataset) -> String {
    let mut h = Sha256::new();
    let s = data.shape();
    h.update(format!("{}x{}x{}:{}:", s.channels, s.height, s.width, data.len()).as_bytes());
    h.update(data.images());
    h.update(data.labels());
    hex::encode(h.finalize())
}

/// Counters of one or more [`features_for`] calls.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CacheStats {
    /// Splits read from the cache.
    pub hits: usize,
    /// Splits not in the cache (computed).
    pub misses: usize,
    /// Cache files found but rejected (wrong key, shape, labels, unreadable), then recomputed.
    pub invalid: usize,
    /// Images that went through the backbone.
    pub backbone_images: usize,
    /// Backbone forward calls (batches).
    pub backbone_batches: usize,
    /// Seconds spent in backbone passes (including the per-batch image pipeline).
    pub backbone_seconds: f64,
    /// Seconds spent reading cache files.
    pub load_seconds: f64,
    /// Why cache files were rejected.
    pub invalid_reasons: Vec<String>,
}

impl CacheStats {
    /// Adds another call's counters.
    pub fn add(&mut self, o: &CacheStats) {
        self.hits += o.hits;
        self.misses += o.misses;
        self.invalid += o.invalid;
        self.backbone_images += o.backbone_images;
        self.backbone_batches += o.backbone_batches;
        self.backbone_seconds += o.backbone_seconds;
        self.load_seconds += o.load_seconds;
        self.invalid_reasons.extend(o.invalid_reasons.iter().cloned());
    }
}

/// A folder of cached embeddings.
#[derive(Debug, Clone)]
pub struct FeatureCache {
    dir: PathBuf,
}

/// What a cache lookup found.
#[derive(Debug)]
pub enum Lookup {
    /// A valid file: `[N, D]` features on the CPU.
    Hit(Tensor),
    /// No file for this key.
    Miss,
    /// A file that failed a check (the reason), to be recomputed.
    Invalid(String),
}

impl FeatureCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// The file a key is stored in.
    pub fn path_for(&self, key: &FeatureKey) -> PathBuf {
        self.dir.join(key.file_name())
    }

    /// Looks `key` up; `labels` are the split's labels, checked against the file's.
    pub fn lookup(&self, key: &FeatureKey, labels: &[u8]) -> Lookup {
        let path = self.path_for(key);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Lookup::Miss,
            Err(e) => return Lookup::Invalid(format!("{}: {e}", path.display())),
        };
        match Self::parse(&bytes, key, labels) {
            Ok(t) => Lookup::Hit(t),
            Err(reason) => Lookup::Invalid(format!("{}: {reason}", path.display())),
        }
    }

    fn parse(bytes: &[u8], key: &FeatureKey, labels: &[u8]) -> std::result::Result<Tensor, String> {
        use candle_core::safetensors::Load;
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| format!("unreadable: {e}"))?;
        let stored = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get(KEY_METADATA))
            .ok_or_else(|| format!("no `{KEY_METADATA}` metadata"))?;
        let stored: FeatureKey = serde_json::from_str(stored).map_err(|e| format!("bad key metadata: {e}"))?;
        if &stored != key {
            return Err("stored key differs from the requested one (digest collision or edited file)".into());
        }
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| format!("unreadable: {e}"))?;
        let features = st
            .tensor("features")
            .map_err(|e| format!("no `features` tensor: {e}"))?;
        let stored_labels = st.tensor("labels").map_err(|e| format!("no `labels` tensor: {e}"))?;
        let features = features.load(&Device::Cpu).map_err(|e| format!("`features`: {e}"))?;
        let stored_labels = stored_labels.load(&Device::Cpu).map_err(|e| format!("`labels`: {e}"))?;
        let (n, _d) = features
            .dims2()
            .map_err(|_| format!("`features` has shape {:?}, expected [N, D]", features.dims()))?;
        if n != labels.len() || features.dtype() != DType::F32 {
            return Err(format!(
                "`features` is {:?} {:?}, expected f32 with {} rows",
                features.dtype(),
                features.dims(),
                labels.len()
            ));
        }
        let stored_labels: Vec<u32> = stored_labels
            .to_dtype(DType::U32)
            .and_then(|t| t.to_vec1())
            .map_err(|e| format!("`labels` is not a vector: {e}"))?;
        if stored_labels.len() != labels.len() || stored_labels.iter().zip(labels).any(|(a, b)| *a != *b as u32) {
            return Err("stored labels differ from the dataset's".into());
        }
        Ok(features)
    }

    /// Writes `features` (`[N, D]`) and `labels` for `key`, atomically.
    pub fn store(&self, key: &FeatureKey, features: &Tensor, labels: &[u8]) -> Result<PathBuf> {
        let path = self.path_for(key);
        let err = |message: String| FinetuneError::Cache {
            path: path.clone(),
            message,
        };
        let features = features.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.contiguous()?;
        let labels = Tensor::from_vec(
            labels.iter().map(|&l| l as u32).collect::<Vec<u32>>(),
            labels.len(),
            &Device::Cpu,
        )?;
        let key_json = serde_json::to_string(key).map_err(|e| err(e.to_string()))?;
        let metadata: HashMap<String, String> = [(KEY_METADATA.to_string(), key_json)].into_iter().collect();
        digitlab_train::io::write_atomic_with(&path, |tmp| {
            let tensors = [("features", &features), ("labels", &labels)];
            safetensors::serialize_to_file(tensors, Some(metadata), tmp).map_err(std::io::Error::other)
        })?;
        Ok(path)
    }
}

/// Runs `backbone` in eval mode over every image of `data` (through `pipeline`, in
/// batches of `batch_size`, in dataset order) and returns `[N, D]` features on
/// `device`. `progress` is advanced by each batch's size.
pub fn extract_features(
    backbone: &dyn Backbone,
    data: &Dataset,
    pipeline: &Pipeline,
    batch_size: usize,
    device: &Device,
    progress: &ProgressBar,
) -> Result<(Tensor, usize)> {
    let batcher = Batcher::new(data, pipeline, batch_size, device)?;
    let mut parts = Vec::with_capacity(batcher.num_batches());
    for batch in batcher.epoch(0) {
        let batch = batch?;
        let f = backbone.features(&batch.images, false)?;
        parts.push(f.detach());
        progress.inc(batch.indices.len() as u64);
    }
    let batches = parts.len();
    Ok((Tensor::cat(&parts, 0)?, batches))
}

/// The features of `data` for `key`: from `cache` when it holds a valid file,
/// otherwise computed with [`extract_features`] (and stored when `cache` is given).
/// Counters go to `stats`; `label` names the split in progress output.
#[allow(clippy::too_many_arguments)]
pub fn features_for(
    cache: Option<&FeatureCache>,
    key: &FeatureKey,
    backbone: &dyn Backbone,
    data: &Dataset,
    pipeline: &Pipeline,
    batch_size: usize,
    device: &Device,
    verbosity: Verbosity,
    label: &str,
    stats: &mut CacheStats,
) -> Result<Tensor> {
    if let Some(cache) = cache {
        let t0 = Instant::now();
        match cache.lookup(key, data.labels()) {
            Lookup::Hit(t) => {
                stats.hits += 1;
                stats.load_seconds += t0.elapsed().as_secs_f64();
                if verbosity != Verbosity::Silent {
                    eprintln!(
                        "{label}: {} cached features from {}",
                        data.len(),
                        cache.path_for(key).display()
                    );
                }
                return Ok(t.to_device(device)?);
            }
            Lookup::Miss => stats.misses += 1,
            Lookup::Invalid(reason) => {
                if verbosity != Verbosity::Silent {
                    eprintln!("warning: {label}: ignoring feature cache file: {reason}; recomputing");
                }
                stats.invalid += 1;
                stats.misses += 1;
                stats.invalid_reasons.push(reason);
            }
        }
    }
    let bar = match verbosity {
        Verbosity::Bars => ProgressBar::new(data.len() as u64),
        _ => ProgressBar::hidden(),
    };
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:25}] {pos}/{len} images {per_sec} {elapsed}<{eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("{label}: backbone"));
    let t0 = Instant::now();
    let (features, batches) = extract_features(backbone, data, pipeline, batch_size, device, &bar)?;
    let secs = t0.elapsed().as_secs_f64();
    bar.finish_and_clear();
    stats.backbone_images += data.len();
    stats.backbone_batches += batches;
    stats.backbone_seconds += secs;
    if verbosity != Verbosity::Silent {
        eprintln!(
            "{label}: backbone pass over {} images in {secs:.1}s ({:.0} images/s)",
            data.len(),
            data.len() as f64 / secs.max(1e-9)
        );
    }
    if let Some(cache) = cache {
        cache.store(key, &features, data.labels())?;
    }
    Ok(features)
}
