//! # digitlab-train
//!
//! The training stack of digitlab, in the spirit of burn-train's `Learner`:
//!
//! - typed experiment configs from TOML with `--set` overrides ([`config`]);
//! - optimizers SGD / Adam / AdamW behind one trait, over parameter groups, with
//!   saveable state ([`optim`]) and
//!   learning-rate schedules ([`schedule`]);
//! - one training loop over any candle `ModuleT` and parameter groups, with
//!   callbacks for progress bars, the divergence guard, early stopping, best/last
//!   checkpoints and resume ([`fit`], [`checkpoint`]), and its config front-end
//!   [`train`] ([`trainer`]);
//! - metrics (accuracy, per-class precision/recall/F1, macro-F1, confusion
//!   matrix: [`metrics`]) and evaluation ([`eval`]), interpreted (most-confused
//!   pairs, top losses, calibration: [`interpret`]);
//! - grid, random and successive-halving hyperparameter search ([`search`],
//!   [`sweep`], [`asha`]), serially or as a job array of processes sharing one
//!   output folder ([`array`]);
//! - outputs: `summary.json`, `metrics.csv`, PNG plots, a TensorBoard event file ([`experiment`]; rendering and
//!   crash-safe writes come from `digitlab-report`, re-exported as [`io`]).
//!
//! ```
//! use digitlab_train::{run_experiment, ExperimentConfig, PreparedData, RunOptions, Verbosity};
//! let cfg = ExperimentConfig::from_toml_str(
//!     r#"
//!     name = "doc"
//!     seed = 1
//!     [data]
//!     dataset = "digits"
//!     [model]
//!     kind = "softmax"
//!     [optim]
//!     kind = "adam"
//!     lr = 0.01
//!     [train]
//!     epochs = 3
//!     batch_size = 32
//!     loss = "cross_entropy"
//!     "#,
//!     &[],
//! )?;
//! // The embedded 8x8 digits: no files needed.
//! let data = PreparedData::load(&cfg, "data".as_ref())?;
//! let opts = RunOptions { verbosity: Verbosity::Silent, ..Default::default() };
//! let result = run_experiment(&cfg, &data, &opts)?;
//! assert_eq!(result.summary.epochs, 3);
//! assert!(result.summary.test_accuracy.unwrap() > 0.8);
//! # Ok::<(), digitlab_train::TrainError>(())
//! ```
pub mod array;
pub mod asha;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod eval;
pub mod experiment;
pub mod fit;
pub mod interpret;
pub mod metrics;
pub mod optim;
pub mod run_dir;
pub mod schedule;
pub mod search;
pub mod source;
pub mod sweep;
pub mod trainer;
pub mod validate;

/// The workspace's one crash-safe write (temporary file, fsync, rename).
pub use digitlab_report::io;

pub use config::{DataConfig, ExperimentConfig, MetricName, TrainOptions};
pub use error::{Result, TrainError};
pub use eval::{evaluate, Evaluation};
pub use experiment::{run_experiment, ExperimentResult, Summary};
pub use fit::{Fit, FitOutcome, FitState};
pub use metrics::ConfusionMatrix;
pub use optim::{Optimizer, OptimizerConfig, ParamGroup};
pub use source::{Batch, BatchSource};
pub use trainer::{train, trainable_params, PreparedData, RunOptions, TrainedRun, Verbosity};
