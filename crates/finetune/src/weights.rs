//! Loading a weights file of either format, and checking it against a model.
//!
//! [`load_weights`] reads `.safetensors` (with candle) or PyTorch checkpoints (with
//! [`crate::pth`]), deciding by the file's magic bytes rather than trusting its
//! extension (`pytorch_model.bin` files are torch zip archives).
//!
//! [`check_against`] compares a model's expected tensors with what a file holds and
//! reports *every* problem at once in a [`LoadReport`]. Tensors under the
//! classification-head prefixes (`fc.`, `classifier.6.` ...) whose shape differs, or
//! that are absent, are not errors: the head is re-initialised, as when fine-tuning
//! a 1000-class ImageNet checkpoint for 10 digits.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::error::{FinetuneError, Result};
use crate::pth;

/// The prefixes [`strip_common_prefixes`] removes by default: `module.` (added by
/// `nn.DataParallel` / DDP) and `model.` (common Lightning / wrapper modules).
pub const DEFAULT_STRIP_PREFIXES: &[&str] = &["module.", "model."];

/// Name suffixes of checkpoint tensors that candle models do not have and that are
/// ignored (not reported as unexpected) by [`check_against`]: PyTorch batch norm's
/// `num_batches_tracked` counter.
pub const DEFAULT_IGNORED_SUFFIXES: &[&str] = &["num_batches_tracked"];

/// On-disk format of a weights file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightsFormat {
    /// Hugging Face safetensors.
    Safetensors,
    /// A `torch.save` zip archive (`.pth`, `.pt`, `.bin`, `.ckpt`).
    PyTorch,
}

/// Detects the format from the first bytes of the file: a zip signature (`PK`) means
/// PyTorch; an 8-byte little-endian header length followed by `{` means safetensors.
pub fn detect_format(path: impl AsRef<Path>) -> Result<WeightsFormat> {
    let path = path.as_ref();
    let mut file = std::fs::File::open(path).map_err(|e| FinetuneError::io(path, e))?;
    let mut head = [0u8; 9];
    let mut got = 0;
    while got < head.len() {
        match file.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FinetuneError::io(path, e)),
        }
    }
    let head = &head[..got];
    if head.starts_with(b"PK") || crate::pth::legacy::looks_legacy(head) {
        return Ok(WeightsFormat::PyTorch);
    }
    if head.len() == 9 && head[8] == b'{' {
        return Ok(WeightsFormat::Safetensors);
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| format!(", extension .{e}"))
        .unwrap_or_default();
    let detail = if head.is_empty() {
        format!("the file is empty{ext}")
    } else {
        format!("starts with bytes {head:02x?}{ext}")
    };
    Err(FinetuneError::UnknownFormat {
        path: path.to_path_buf(),
        detail,
    })
}

/// Loads every tensor of a weights file on the CPU, keyed by name.
pub fn load_weights(path: impl AsRef<Path>) -> Result<HashMap<String, Tensor>> {
    load_weights_on(path, &Device::Cpu)
}

/// [`load_weights`] onto a given device.
pub fn load_weights_on(path: impl AsRef<Path>, device: &Device) -> Result<HashMap<String, Tensor>> {
    let path = path.as_ref();
    match detect_format(path)? {
        WeightsFormat::Safetensors => {
            candle_core::safetensors::load(path, device).map_err(|source| FinetuneError::Safetensors {
                path: path.to_path_buf(),
                source,
            })
        }
        WeightsFormat::PyTorch => {
            let tensors = pth::read_pth(path)?;
            let mut map = HashMap::with_capacity(tensors.len());
            for (name, t) in tensors {
                let t = if device.is_cpu() { t } else { t.to_device(device)? };
                map.insert(name, t);
            }
            Ok(map)
        }
    }
}

/// Removes each prefix in `prefixes` that *every* key starts with (repeatedly, so
/// `module.model.` goes too). Prefixes shared by only some keys are kept, so names of
/// real sub-modules called `model` are never damaged. Returns the renamed map and the
/// prefixes removed, in order.
pub fn strip_common_prefixes<T>(weights: HashMap<String, T>, prefixes: &[&str]) -> (HashMap<String, T>, Vec<String>) {
    let mut weights = weights;
    let mut removed = Vec::new();
    if weights.is_empty() {
        return (weights, removed);
    }
    loop {
        let Some(prefix) = prefixes
            .iter()
            .find(|p| !p.is_empty() && weights.keys().all(|k| k.starts_with(*p) && k.len() > p.len()))
        else {
            return (weights, removed);
        };
        weights = weights
            .into_iter()
            .map(|(k, v)| (k[prefix.len()..].to_string(), v))
            .collect();
        removed.push(prefix.to_string());
    }
}

/// A tensor whose shape differs between the model and the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeMismatch {
    /// Tensor name.
    pub name: String,
    /// Shape the model expects.
    pub expected: Vec<usize>,
    /// Shape in the checkpoint.
    pub found: Vec<usize>,
}

/// What happens to one classification-head tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadChange {
    /// Tensor name.
    pub name: String,
    /// Shape in the model (`None`: the model has no such tensor, the checkpoint's is dropped).
    pub expected: Option<Vec<usize>>,
    /// Shape in the checkpoint (`None`: absent from the checkpoint, re-initialised).
    pub found: Option<Vec<usize>>,
}

/// The result of comparing a model's tensors with a checkpoint's: everything at once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Tensors present in both with the same shape (these load).
    pub loaded: Vec<String>,
    /// Tensors the model needs that the checkpoint lacks (outside the head), with the
    /// expected shape.
    pub missing: Vec<(String, Vec<usize>)>,
    /// Tensors in the checkpoint the model does not have (outside the head, and not
    /// ignored), with their shape.
    pub unexpected: Vec<(String, Vec<usize>)>,
    /// Tensors in both whose shapes differ (outside the head).
    pub shape_mismatches: Vec<ShapeMismatch>,
    /// Head tensors that are re-initialised (shape differs or absent from the
    /// checkpoint) or dropped (only in the checkpoint). Not an error.
    pub head: Vec<HeadChange>,
    /// Checkpoint tensors skipped because of [`DEFAULT_IGNORED_SUFFIXES`].
    pub ignored: Vec<String>,
}

impl LoadReport {
    /// Whether nothing outside the head is wrong.
    pub fn is_ok(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.shape_mismatches.is_empty()
    }

    /// `Ok(self)` when [`LoadReport::is_ok`], else [`FinetuneError::WeightsMismatch`]
    /// whose message lists every problem.
    pub fn into_result(self) -> Result<LoadReport> {
        if self.is_ok() {
            Ok(self)
        } else {
            Err(FinetuneError::WeightsMismatch(Box::new(self)))
        }
    }

    /// Names of head tensors the model must re-initialise (they are not loaded).
    pub fn reinitialized(&self) -> impl Iterator<Item = &str> {
        self.head
            .iter()
            .filter(|h| h.expected.is_some())
            .map(|h| h.name.as_str())
    }
}

fn shape(s: &[usize]) -> String {
    format!("{s:?}")
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reinit = self.head.iter().filter(|h| h.expected.is_some()).count();
        let dropped = self.head.len() - reinit;
        write!(
            f,
            "weights check: {} loaded, {} missing, {} unexpected, {} shape mismatches, {} head \
             tensors re-initialised, {} dropped, {} ignored",
            self.loaded.len(),
            self.missing.len(),
            self.unexpected.len(),
            self.shape_mismatches.len(),
            reinit,
            dropped,
            self.ignored.len()
        )?;
        if !self.missing.is_empty() {
            write!(f, "\n  missing (the model has them, the checkpoint does not):")?;
            for (name, s) in &self.missing {
                write!(f, "\n    {name} {}", shape(s))?;
            }
        }
        if !self.unexpected.is_empty() {
            write!(f, "\n  unexpected (in the checkpoint, not in the model):")?;
            for (name, s) in &self.unexpected {
                write!(f, "\n    {name} {}", shape(s))?;
            }
        }
        if !self.shape_mismatches.is_empty() {
            write!(f, "\n  shape mismatches:")?;
            for m in &self.shape_mismatches {
                write!(
                    f,
                    "\n    {}: model expects {}, checkpoint has {}",
                    m.name,
                    shape(&m.expected),
                    shape(&m.found)
                )?;
            }
        }
        if !self.head.is_empty() {
            write!(f, "\n  classification head (not an error):")?;
            for h in &self.head {
                match (&h.expected, &h.found) {
                    (Some(e), Some(x)) => write!(
                        f,
                        "\n    {}: model expects {}, checkpoint has {} -> re-initialised",
                        h.name,
                        shape(e),
                        shape(x)
                    )?,
                    (Some(e), None) => write!(
                        f,
                        "\n    {}: {} not in the checkpoint -> re-initialised",
                        h.name,
                        shape(e)
                    )?,
                    (None, Some(x)) => write!(f, "\n    {}: {} only in the checkpoint -> dropped", h.name, shape(x))?,
                    (None, None) => write!(f, "\n    {}", h.name)?,
                }
            }
        }
        Ok(())
    }
}

/// Compares the tensors a model expects (`name`, `shape`) with those `found` in a
/// checkpoint. Names starting with one of `head_prefixes` belong to the
/// classification head: a shape difference or absence there is recorded in
/// [`LoadReport::head`] instead of being an error. Checkpoint tensors ending in
/// [`DEFAULT_IGNORED_SUFFIXES`] that the model lacks are ignored. All lists are sorted
/// by name.
pub fn check_against(
    expected: &[(String, Vec<usize>)],
    found: &HashMap<String, Tensor>,
    head_prefixes: &[&str],
) -> LoadReport {
    let found_shapes: HashMap<&str, Vec<usize>> = found.iter().map(|(k, t)| (k.as_str(), t.dims().to_vec())).collect();
    check_shapes(expected, &found_shapes, head_prefixes, DEFAULT_IGNORED_SUFFIXES)
}

/// [`check_against`] on shapes only, with explicit ignored suffixes.
pub fn check_shapes(
    expected: &[(String, Vec<usize>)],
    found: &HashMap<&str, Vec<usize>>,
    head_prefixes: &[&str],
    ignored_suffixes: &[&str],
) -> LoadReport {
    let is_head = |name: &str| head_prefixes.iter().any(|p| !p.is_empty() && name.starts_with(p));
    let mut report = LoadReport::default();
    let mut expected_names = std::collections::HashSet::new();
    for (name, want) in expected {
        expected_names.insert(name.as_str());
        match found.get(name.as_str()) {
            Some(have) if have == want => report.loaded.push(name.clone()),
            Some(have) if is_head(name) => report.head.push(HeadChange {
                name: name.clone(),
                expected: Some(want.clone()),
                found: Some(have.clone()),
            }),
            Some(have) => report.shape_mismatches.push(ShapeMismatch {
                name: name.clone(),
                expected: want.clone(),
                found: have.clone(),
            }),
            None if is_head(name) => report.head.push(HeadChange {
                name: name.clone(),
                expected: Some(want.clone()),
                found: None,
            }),
            None => report.missing.push((name.clone(), want.clone())),
        }
    }
    for (name, have) in found {
        if expected_names.contains(name) {
            continue;
        }
        if is_head(name) {
            report.head.push(HeadChange {
                name: name.to_string(),
                expected: None,
                found: Some(have.clone()),
            });
        } else if ignored_suffixes.iter().any(|s| name.ends_with(s)) {
            report.ignored.push(name.to_string());
        } else {
            report.unexpected.push((name.to_string(), have.clone()));
        }
    }
    report.loaded.sort();
    report.missing.sort();
    report.unexpected.sort();
    report.shape_mismatches.sort_by(|a, b| a.name.cmp(&b.name));
    report.head.sort_by(|a, b| a.name.cmp(&b.name));
    report.ignored.sort();
    report
}

/// A file and the tensors read from it, for callers that want both.
#[derive(Debug)]
pub struct LoadedWeights {
    /// The file read.
    pub path: PathBuf,
    /// Its format.
    pub format: WeightsFormat,
    /// Tensors by name (after prefix stripping, see [`LoadedWeights::read`]).
    pub tensors: HashMap<String, Tensor>,
    /// Prefixes removed from every name.
    pub stripped_prefixes: Vec<String>,
}

impl LoadedWeights {
    /// Reads `path` on the CPU and strips [`DEFAULT_STRIP_PREFIXES`] shared by all names.
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let format = detect_format(path)?;
        let tensors = load_weights(path)?;
        let (tensors, stripped_prefixes) = strip_common_prefixes(tensors, DEFAULT_STRIP_PREFIXES);
        Ok(Self {
            path: path.to_path_buf(),
            format,
            tensors,
            stripped_prefixes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shapes(pairs: &[(&str, &[usize])]) -> Vec<(String, Vec<usize>)> {
        pairs.iter().map(|(n, s)| (n.to_string(), s.to_vec())).collect()
    }

    fn tensors(pairs: &[(&str, &[usize])]) -> HashMap<String, Tensor> {
        pairs
            .iter()
            .map(|(n, s)| {
                (
                    n.to_string(),
                    Tensor::zeros(*s, candle_core::DType::F32, &Device::Cpu).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn report_collects_everything() {
        let expected = shapes(&[
            ("conv1.weight", &[64, 3, 7, 7]),
            ("bn1.weight", &[64]),
            ("layer1.0.conv1.weight", &[64, 64, 3, 3]),
            ("fc.weight", &[10, 512]),
            ("fc.bias", &[10]),
        ]);
        let found = tensors(&[
            ("conv1.weight", &[64, 1, 7, 7]),
            ("bn1.weight", &[64]),
            ("bn1.num_batches_tracked", &[]),
            ("extra.thing", &[3]),
            ("fc.weight", &[1000, 512]),
        ]);
        let report = check_against(&expected, &found, &["fc."]);
        assert_eq!(report.loaded, vec!["bn1.weight"]);
        assert_eq!(report.missing, shapes(&[("layer1.0.conv1.weight", &[64, 64, 3, 3])]));
        assert_eq!(report.unexpected, shapes(&[("extra.thing", &[3])]));
        assert_eq!(report.shape_mismatches.len(), 1);
        assert_eq!(report.shape_mismatches[0].name, "conv1.weight");
        assert_eq!(report.ignored, vec!["bn1.num_batches_tracked"]);
        assert_eq!(report.reinitialized().collect::<Vec<_>>(), vec!["fc.bias", "fc.weight"]);
        let text = report.to_string();
        for needle in [
            "layer1.0.conv1.weight [64, 64, 3, 3]",
            "extra.thing [3]",
            "conv1.weight: model expects [64, 3, 7, 7], checkpoint has [64, 1, 7, 7]",
            "fc.weight: model expects [10, 512], checkpoint has [1000, 512] -> re-initialised",
            "fc.bias: [10] not in the checkpoint -> re-initialised",
        ] {
            assert!(text.contains(needle), "{needle} not in:\n{text}");
        }
        let err = report.into_result().unwrap_err().to_string();
        assert!(
            err.contains("layer1.0.conv1.weight")
                && err.contains("extra.thing")
                && err.contains("conv1.weight: model expects"),
            "{err}"
        );
    }

    #[test]
    fn head_only_differences_are_ok() {
        let expected = shapes(&[
            ("features.0.weight", &[8, 3, 3, 3]),
            ("classifier.6.weight", &[10, 4096]),
        ]);
        let found = tensors(&[
            ("features.0.weight", &[8, 3, 3, 3]),
            ("classifier.6.weight", &[1000, 4096]),
            ("classifier.6.bias", &[1000]),
        ]);
        let report = check_against(&expected, &found, &["classifier.6."]);
        assert!(report.is_ok(), "{report}");
        assert_eq!(report.head.len(), 2);
        assert!(report
            .to_string()
            .contains("classifier.6.bias: [1000] only in the checkpoint -> dropped"));
        assert!(report.into_result().is_ok());
    }

    #[test]
    fn strips_only_prefixes_shared_by_all_keys() {
        let m: HashMap<String, u8> = [("module.model.a", 1), ("module.model.b", 2)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let (m, removed) = strip_common_prefixes(m, DEFAULT_STRIP_PREFIXES);
        assert_eq!(removed, vec!["module.", "model."]);
        assert_eq!(m.get("a"), Some(&1));
        assert_eq!(m.get("b"), Some(&2));

        let m: HashMap<String, u8> = [("model.a", 1), ("head.b", 2)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let (m, removed) = strip_common_prefixes(m, DEFAULT_STRIP_PREFIXES);
        assert!(removed.is_empty());
        assert!(m.contains_key("model.a"));

        let (m, removed) = strip_common_prefixes(HashMap::<String, u8>::new(), DEFAULT_STRIP_PREFIXES);
        assert!(m.is_empty() && removed.is_empty());
    }
}
