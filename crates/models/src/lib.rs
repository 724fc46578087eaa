//! # digitlab-models
//!
//! Models for digit recognition as candle-nn modules (`ModuleT`, built through a
//! `VarBuilder`), with PyTorch-style initialisation and tensor names:
//!
//! - [`LogisticRegression`] (binary), [`SoftmaxRegression`], [`Mlp`];
//! - one entry point, [`build_model`], from a typed [`ModelConfig`];
//! - [`SeededVarMap`] for weights that are the same on every run with the same seed.
pub mod init;
pub mod layers;
pub mod linear_models;
pub mod mlp;
pub mod model;

pub use init::SeededVarMap;
pub use layers::Activation;
pub use linear_models::{LogisticRegression, SoftmaxRegression};
pub use mlp::{Mlp, MlpConfig};
pub use model::{build_model, count_parameters, is_buffer, InputShape, Model, ModelConfig, OutputKind};
