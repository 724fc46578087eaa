//! The error type of `digitlab-train`.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A config file or override is invalid; the message names the key.
    #[error("config: {0}")]
    Config(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A run folder cannot be taken (not digitlab's, another config, nothing to
    /// resume ...); the message says why and what to do.
    #[error("{}: {message}", path.display())]
    RunFolder { path: PathBuf, message: String },
    /// Another process holds the run folder's lock.
    #[error("run folder {} is in use by {holder}; nothing was changed", path.display())]
    InUse { path: PathBuf, holder: String },
    /// The loss became NaN or infinite.
    #[error(
        "training diverged at epoch {epoch}, step {step}: loss is {loss}. \
         Try a lower learning rate (currently {lr}) or gradient clipping (train.grad_clip)."
    )]
    Diverged {
        epoch: usize,
        step: usize,
        loss: f64,
        lr: f64,
    },
    /// The loss became NaN or infinite; the message says which part (data loss, L2
    /// penalty, weights after the last update) and what to change.
    #[error("{0}")]
    DivergedPart(String),
    /// A checkpoint is missing, corrupt or does not match the config.
    #[error("checkpoint {}: {message}", path.display())]
    Checkpoint { path: PathBuf, message: String },
    #[error(transparent)]
    Data(#[from] digitlab_data::DataError),
    #[error(transparent)]
    Loss(#[from] digitlab_losses::LossError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Plot(#[from] digitlab_report::plots::PlotError),
    /// A TensorBoard event file could not be written.
    #[error(transparent)]
    TensorBoard(#[from] digitlab_report::tensorboard::TensorBoardError),
}

impl From<digitlab_report::io::WriteError> for TrainError {
    fn from(e: digitlab_report::io::WriteError) -> Self {
        TrainError::Io {
            path: e.path,
            source: e.source,
        }
    }
}

pub type Result<T> = std::result::Result<T, TrainError>;
