//! # digitlab-train
//!
//! The training stack of digitlab, in the spirit of burn-train's `Learner`:
//!
//! - typed experiment configs from TOML with `--set` overrides ([`config`]);
//! - optimizers SGD / Adam / AdamW with saveable state ([`optim`]) and
//!   learning-rate schedules ([`schedule`]);
//! - a training loop with progress bars, a divergence guard, early stopping,
//!   best/last checkpoints and resume ([`trainer`], [`checkpoint`]);
//! - metrics (accuracy, per-class precision/recall/F1, macro-F1, confusion
//!   matrix: [`metrics`]) and evaluation ([`eval`]);
//! - grid and random hyperparameter search ([`search`], [`sweep`]);
//! - outputs: `summary.json`, `metrics.csv`, PNG plots ([`experiment`], [`plots`]).
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod eval;
pub mod experiment;
pub mod io;
pub mod metrics;
pub mod optim;
pub mod plots;
pub mod schedule;
pub mod search;
pub mod sweep;
pub mod trainer;
pub mod validate;

pub use config::{DataConfig, ExperimentConfig, MetricName, TrainOptions};
pub use error::{Result, TrainError};
pub use eval::{evaluate, Evaluation};
pub use experiment::{run_experiment, ExperimentResult, Summary};
pub use metrics::ConfusionMatrix;
pub use optim::{Optimizer, OptimizerConfig};
pub use trainer::{train, trainable_params, PreparedData, RunOptions, TrainedRun, Verbosity};
