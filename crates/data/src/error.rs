//! The one error type of `digitlab-data`.
use std::path::PathBuf;

/// Everything that can go wrong while finding, verifying, parsing or batching data.
///
/// Messages always name the file (or field) involved and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The operating system refused an operation on `path`.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `path` exists but its content is not what the format requires.
    #[error("{}: {message}", path.display())]
    Format { path: PathBuf, message: String },
    /// A file's digest differs from the published one.
    #[error("{}: checksum mismatch: expected {algorithm} {expected}, found {actual}", path.display())]
    Checksum {
        path: PathBuf,
        algorithm: &'static str,
        expected: String,
        actual: String,
    },
    /// A dataset's files are not present where they were looked for.
    #[error("dataset `{dataset}` not found: {message}")]
    NotFound { dataset: String, message: String },
    /// An argument is out of range (empty split, unknown class, bad fraction, ...).
    #[error("{0}")]
    Invalid(String),
    /// A tensor could not be built.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        DataError::Format {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, DataError>;
