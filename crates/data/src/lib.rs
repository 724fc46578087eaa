//! # digitlab-data
//!
//! Datasets for digit-recognition experiments on [candle](https://github.com/huggingface/candle):
//!
//! - readers: MNIST / Fashion-MNIST IDX files ([`idx`]), SVHN cropped digits
//!   MATLAB `.mat` files ([`svhn`], [`mat`]), and the embedded UCI 8x8 digits
//!   ([`digits`], CC BY 4.0) so that everything works with no download;
//! - a [`Dataset`] of u8 NCHW images with seeded splits, subsets and class filters;
//! - a per-batch [`Pipeline`] (channel conversion, [`Augment`], bilinear resize,
//!   [`Normalization`]) and a shuffled minibatch [`Batcher`] yielding tensors on any
//!   candle `Device`;
//! - the [`catalog`] of known datasets with their published checksums, used by
//!   `cargo xtask download` and `digitlab datasets`.
//!
//! ```
//! use digitlab_data::{catalog, Batcher, DatasetKind, Pipeline, Split};
//! let dir = digitlab_data::resolve_data_dir(None);
//! let train = catalog::load(DatasetKind::Digits, Split::Train, &dir)?;
//! let pipeline = Pipeline::default();
//! let batcher = Batcher::new(&train, &pipeline, 32, &candle_core::Device::Cpu)?.training(42);
//! for batch in batcher.epoch(0) {
//!     let batch = batch?;
//!     assert_eq!(batch.images.dims()[1..], [1, 8, 8]);
//! }
//! # Ok::<(), digitlab_data::DataError>(())
//! ```
pub mod augment;
pub mod batch;
pub mod catalog;
pub mod dataset;
pub mod digits;
pub mod error;
pub mod idx;
pub mod image_file;
pub mod location;
pub mod mat;
pub mod resize;
pub mod svhn;
pub mod transform;

pub use augment::Augment;
pub use batch::{Batch, BatchIter, Batcher};
pub use catalog::{DatasetKind, Split};
pub use dataset::{Dataset, ImageShape};
pub use error::{DataError, Result};
pub use location::{check_data_dir, resolve_data_dir, DATA_ENV};
pub use svhn::load_svhn_mat;
pub use transform::{Normalization, Pipeline, PixelTable};
