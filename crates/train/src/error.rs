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
    Plot(#[from] crate::plots::PlotError),
}

pub type Result<T> = std::result::Result<T, TrainError>;
