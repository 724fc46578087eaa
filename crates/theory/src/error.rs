//! The error type of `digitlab-theory`.
use std::path::PathBuf;

/// Everything that can go wrong while running a theory check.
///
/// A check whose claim turns out false is *not* an error: it is reported in the
/// topic's [`Verdict`](crate::result::Verdict) (`holds == false`), so the report still
/// shows the numbers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TheoryError {
    /// `digitlab theory <topic>` with a name that is not a topic.
    #[error("unknown theory topic `{name}`; valid topics: {valid}, or `all`")]
    UnknownTopic { name: String, valid: String },
    /// An argument is out of range (empty data, zero directions, ...).
    #[error("{0}")]
    Invalid(String),
    /// A numerical routine did not converge.
    #[error("{routine} did not converge: {detail}")]
    NoConvergence { routine: &'static str, detail: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Data(#[from] digitlab_data::DataError),
    #[error(transparent)]
    Loss(#[from] digitlab_losses::LossError),
    #[error(transparent)]
    Train(#[from] digitlab_train::TrainError),
    #[error(transparent)]
    Plot(#[from] digitlab_report::plots::PlotError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl From<digitlab_report::io::WriteError> for TheoryError {
    fn from(e: digitlab_report::io::WriteError) -> Self {
        TheoryError::Io {
            path: e.path,
            source: e.source,
        }
    }
}

impl TheoryError {
    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        TheoryError::Invalid(msg.into())
    }
}

/// `Result` with [`TheoryError`].
pub type Result<T> = std::result::Result<T, TheoryError>;
