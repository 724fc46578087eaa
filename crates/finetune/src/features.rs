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
//! written to a temporary file and renamed ([`digitlab_report::io::write_atomic_with`]),
//! so an interrupted run never leaves half a file. The metadata also holds a SHA-256
//! of the `features` and `labels` tensor bytes (`digitlab.sha256`). On reading, the
//! stored key, the digest, shapes, labels and finiteness of every feature are
//! checked; a file that fails any check is reported with a warning naming it,
//! recomputed and rewritten, never trusted.
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

/// Metadata key holding the SHA-256 (hex) of the `features` bytes followed by the
/// `labels` bytes, as stored in the file.
pub const DIGEST_METADATA: &str = "digitlab.sha256";

/// SHA-256 of a cache file's tensor bytes (features, then labels), hex.
fn tensor_digest(features: &[u8], labels: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(features);
    h.update(labels);
    hex::encode(h.finalize())
}

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
        let digest = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get(DIGEST_METADATA))
            .ok_or_else(|| format!("no `{DIGEST_METADATA}` metadata (written by an older digitlab)"))?;
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| format!("unreadable: {e}"))?;
        let features = st
            .tensor("features")
            .map_err(|e| format!("no `features` tensor: {e}"))?;
        let stored_labels = st.tensor("labels").map_err(|e| format!("no `labels` tensor: {e}"))?;
        let actual = tensor_digest(features.data(), stored_labels.data());
        if actual != *digest {
            return Err(format!(
                "tensor bytes do not match the stored SHA-256 (expected {digest}, found {actual}): corrupt or edited"
            ));
        }
        if features.dtype() == safetensors::Dtype::F32 {
            let values = features.data().chunks_exact(4);
            let width = features.shape().get(1).copied().unwrap_or(1).max(1);
            if let Some(i) = values
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .position(|v| !v.is_finite())
            {
                return Err(format!(
                    "`features` holds a non-finite value at row {}, column {}",
                    i / width,
                    i % width
                ));
            }
        }
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
        let feature_bytes: Vec<u8> = features
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let label_bytes: Vec<u8> = labels.to_vec1::<u32>()?.iter().flat_map(|v| v.to_le_bytes()).collect();
        let digest = tensor_digest(&feature_bytes, &label_bytes);
        let metadata: HashMap<String, String> = [
            (KEY_METADATA.to_string(), key_json),
            (DIGEST_METADATA.to_string(), digest),
        ]
        .into_iter()
        .collect();
        digitlab_report::io::write_atomic_with(&path, |tmp| {
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
    // One pass in order: each batch is converted when it is needed (caching the
    // converted set first would hold every resized image at once, for nothing).
    let batcher = Batcher::new(data, pipeline, batch_size, device)?.with_cache_limit(0);
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
                // Always said: a cache file digitlab cannot trust is worth a word even when quiet.
                eprintln!("warning: {label}: ignoring feature cache file: {reason}; recomputing");
                stats.invalid += 1;
                stats.misses += 1;
                stats.invalid_reasons.push(reason);
            }
        }
    }
    // One process computes an entry at a time; the others wait, then read its file.
    let _entry_lock = match cache {
        Some(cache) => Some(lock_entry(cache, key, verbosity, label)?),
        None => None,
    };
    if let Some(Lookup::Hit(t)) = cache.map(|c| c.lookup(key, data.labels())) {
        return Ok(t.to_device(device)?);
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

/// Makes sure the cache folder is digitlab's (created with its marker) and locks
/// `key`'s entry file, waiting for another process that is writing it.
fn lock_entry(
    cache: &FeatureCache,
    key: &FeatureKey,
    verbosity: Verbosity,
    label: &str,
) -> Result<digitlab_train::run_dir::FileLock> {
    digitlab_train::run_dir::ensure_shared_dir(cache.dir(), "feature-cache")?;
    let path = cache.path_for(key);
    Ok(digitlab_train::run_dir::FileLock::acquire(&path, |who| {
        if verbosity != Verbosity::Silent {
            eprintln!("{label}: waiting for {who}, which is computing {}", path.display());
        }
    })?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> FeatureKey {
        FeatureKey {
            format: CACHE_FORMAT,
            model: "small_cnn".into(),
            model_config: digitlab_models::ModelConfig::SmallCnn,
            input: [3, 8, 8],
            weights: "random:seed=1".into(),
            dataset: "digits".into(),
            split: "test".into(),
            subset: None,
            seed: None,
            val_fraction: None,
            stratified: None,
            classes: None,
            test_limit: None,
            resize: None,
            channels: None,
            normalize: Normalization::Unit,
            images: 4,
            data_sha256: "x".into(),
            dtype: Default::default(),
        }
    }

    /// Stores 4 rows of 3 features, applies `edit` to the file, and looks it up.
    fn after(edit: impl Fn(&mut Vec<u8>)) -> Lookup {
        let dir = tempfile::tempdir().unwrap();
        let cache = FeatureCache::new(dir.path());
        let f = Tensor::from_vec(
            (0..12).map(|v| v as f32 + 1.0).collect::<Vec<_>>(),
            (4, 3),
            &Device::Cpu,
        )
        .unwrap();
        let labels = [0u8, 1, 2, 3];
        let path = cache.store(&key(), &f, &labels).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        edit(&mut bytes);
        std::fs::write(&path, bytes).unwrap();
        cache.lookup(&key(), &labels)
    }

    fn features_start(b: &[u8]) -> usize {
        8 + u64::from_le_bytes(b[..8].try_into().unwrap()) as usize
    }

    #[test]
    fn intact_files_hit_and_tampered_ones_are_named() {
        assert!(matches!(after(|_| {}), Lookup::Hit(_)));
        let zeroed = after(|b| {
            let s = features_start(b);
            b[s..s + 16].iter_mut().for_each(|v| *v = 0);
        });
        let reversed = after(|b| {
            let s = features_start(b);
            let rows: Vec<Vec<u8>> = b[s..s + 48].chunks(12).rev().map(|r| r.to_vec()).collect();
            b[s..s + 48].copy_from_slice(&rows.concat());
        });
        for l in [zeroed, reversed] {
            match l {
                Lookup::Invalid(r) => assert!(r.contains("SHA-256") && r.contains(".safetensors"), "{r}"),
                other => panic!("accepted a tampered file: {other:?}"),
            }
        }
    }

    #[test]
    fn non_finite_features_are_never_accepted() {
        // A NaN written with a matching digest (as a buggy writer would): the finiteness check.
        let dir = tempfile::tempdir().unwrap();
        let cache = FeatureCache::new(dir.path());
        let f = Tensor::from_vec(vec![1f32, f32::NAN, 3.0, 4.0], (4, 1), &Device::Cpu).unwrap();
        cache.store(&key(), &f, &[0, 1, 2, 3]).unwrap();
        match cache.lookup(&key(), &[0, 1, 2, 3]) {
            Lookup::Invalid(r) => assert!(r.contains("non-finite") && r.contains("row 1"), "{r}"),
            other => panic!("accepted NaN features: {other:?}"),
        }
    }
}
