//! The error type of this crate.
//!
//! Every fallible function returns [`Result`]. Messages are written for the person
//! running a command: they name the file, repository or tensor involved and, where
//! there is one, the way out (e.g. how to pre-download a hub file).

use std::path::PathBuf;

use crate::hub::HubUnavailable;
use crate::torchhub::TorchHubUnavailable;
use crate::weights::LoadReport;

/// Result alias with [`FinetuneError`].
pub type Result<T, E = FinetuneError> = std::result::Result<T, E>;

/// Everything that can go wrong while finding, reading or checking pretrained weights.
#[derive(Debug, thiserror::Error)]
pub enum FinetuneError {
    /// A weights-source string (`pretrained = ...`) could not be understood.
    #[error("invalid weights source {input:?}: {reason}")]
    InvalidSource {
        /// The string as given.
        input: String,
        /// What is wrong with it and what is accepted.
        reason: String,
    },

    /// The Hugging Face cache directory could not be worked out from the environment.
    #[error("cannot determine the Hugging Face cache directory: {0}")]
    CacheDir(String),

    /// A hub file is not in the local cache and could not be downloaded
    /// (offline, network failure, missing file ...). The message says how to fix it.
    #[error("{0}")]
    HubUnavailable(Box<HubUnavailable>),

    /// torchvision weights are not in torch.hub's cache and could not be downloaded
    /// (offline, network failure ...). The message names the file, its URL and the folder.
    #[error("{0}")]
    TorchHubUnavailable(Box<TorchHubUnavailable>),

    /// A file's SHA-256 does not start with the hash prefix in its name (torch.hub's
    /// `check_hash`).
    #[error(
        "{}: SHA-256 {actual} does not start with `{expected_prefix}`, the hash prefix in its name, \
         so the file is corrupt, truncated or not the published one; {note}",
        path.display()
    )]
    HashMismatch {
        /// The file (for a failed download, the name it would have had).
        path: PathBuf,
        /// The hex digits from the file name.
        expected_prefix: String,
        /// The file's SHA-256, hex.
        actual: String,
        /// What was done about it.
        note: String,
    },

    /// An I/O error on a given file.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file being read.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A file is not a readable PyTorch checkpoint (corrupt zip, bad pickle, sizes
    /// that do not add up ...).
    #[error("{}: not a valid PyTorch checkpoint: {reason}", path.display())]
    InvalidCheckpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A checkpoint's pickle references a Python callable that is not one of the
    /// tensor-rebuild callables this crate interprets. Nothing is ever executed; the
    /// file is refused because it is either malicious or holds arbitrary Python objects.
    #[error(
        "{}: refusing to load: its pickle references the Python callable `{callable}`{}, which is \
         not one of the tensor-rebuild callables this reader allows. The file may be malicious \
         (loading it with Python's pickle would run that callable) or may hold non-tensor \
         Python objects. Nothing was executed. If you trust the file, re-save just the tensors \
         from Python (`torch.save(torch.load(f, weights_only=True), g)` or convert to \
         .safetensors) and load that instead",
        path.display(),
        alias.as_deref().map(|a| format!(" (i.e. `{a}`)")).unwrap_or_default()
    )]
    UnsafePickle {
        /// The checkpoint file.
        path: PathBuf,
        /// The callable, as `module.name` (e.g. `posix.system`).
        callable: String,
        /// The well-known name of that callable where it differs (e.g. `os.system`).
        alias: Option<String>,
    },

    /// A checkpoint in a format this crate does not read (legacy or TorchScript
    /// archives, unknown dtypes ...).
    #[error("{}: unsupported checkpoint: {reason}", path.display())]
    UnsupportedCheckpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is unsupported and what to do instead.
        reason: String,
    },

    /// A weights file is neither safetensors nor a PyTorch zip checkpoint.
    #[error(
        "{}: unknown weights format ({detail}); expected a .safetensors file or a PyTorch \
         .pth/.pt/.bin checkpoint written by torch.save",
        path.display()
    )]
    UnknownFormat {
        /// The file.
        path: PathBuf,
        /// What was seen.
        detail: String,
    },

    /// A safetensors file could not be read.
    #[error("{}: cannot read safetensors file: {source}", path.display())]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The underlying candle / safetensors error.
        #[source]
        source: candle_core::Error,
    },

    /// The checkpoint does not fit the model (missing / unexpected tensors, wrong
    /// shapes outside the classification head). The report lists all of them.
    #[error("pretrained weights do not match the model\n{0}")]
    WeightsMismatch(Box<LoadReport>),

    /// A model name that [`crate::zoo`] does not know; the message lists the valid ones.
    #[error("unknown model `{name}`; valid names: {valid}")]
    UnknownModel {
        /// The name as given.
        name: String,
        /// Comma-separated valid names.
        valid: String,
    },

    /// Pretrained weights were loaded but do not fit the named model (the report
    /// lists every missing, unexpected and mis-shaped tensor).
    #[error("{model}: pretrained weights {} do not match the model\n{report}", path.display())]
    ModelWeightsMismatch {
        /// The model name.
        model: String,
        /// The weights file.
        path: PathBuf,
        /// Every problem at once.
        report: Box<LoadReport>,
    },

    /// A transfer config is invalid; the message names the file and the field.
    #[error("config: {0}")]
    Config(String),

    /// A feature-cache file could not be written (reading problems are not errors:
    /// the features are recomputed).
    #[error("feature cache {}: {message}", path.display())]
    Cache {
        /// The cache file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },

    /// A run folder given to `compare` has no readable `summary.json`.
    #[error("{}: {message}", path.display())]
    Summary {
        /// The folder or file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// One backbone of a transfer run could not be created or its weights loaded
    /// (missing file, hub offline, weights that do not fit, unset variable).
    #[error("backbone `{label}` cannot be loaded: {source}")]
    BackboneLoad {
        /// The backbone's label.
        label: String,
        /// Why.
        #[source]
        source: Box<FinetuneError>,
    },

    /// Some backbones of a transfer run could not be loaded; the others ran and
    /// `compare.md` / `compare.csv` list the failed ones with their reason.
    #[error("{}", failed_message(*total, failed))]
    BackbonesFailed {
        /// Backbones in the config.
        total: usize,
        /// `(label, reason)` of each failed backbone, in config order.
        failed: Vec<(String, String)>,
    },

    /// An error from the data crate (missing dataset files, bad splits ...).
    #[error(transparent)]
    Data(#[from] digitlab_data::DataError),

    /// An error from the training crate (atomic writes, plots, optimizer config ...).
    #[error(transparent)]
    Train(#[from] digitlab_train::TrainError),

    /// Any other candle error (tensor construction ...).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

fn failed_message(total: usize, failed: &[(String, String)]) -> String {
    let names: Vec<&str> = failed.iter().map(|(l, _)| l.as_str()).collect();
    let mut s = format!(
        "{} of {total} backbones failed ({}); the others ran",
        failed.len(),
        names.join(", ")
    );
    for (label, reason) in failed {
        s += &format!("\n- {label}: {reason}");
    }
    s
}

impl FinetuneError {
    /// Shorthand for [`FinetuneError::Io`].
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

impl From<digitlab_report::io::WriteError> for FinetuneError {
    fn from(e: digitlab_report::io::WriteError) -> Self {
        FinetuneError::Train(e.into())
    }
}

impl From<digitlab_report::plots::PlotError> for FinetuneError {
    fn from(e: digitlab_report::plots::PlotError) -> Self {
        FinetuneError::Train(e.into())
    }
}
