//! # digitlab-models
//!
//! Models for digit recognition as candle-nn modules (`ModuleT`, built through a
//! `VarBuilder`), with PyTorch-style initialisation and tensor names:
//!
//! - [`LogisticRegression`] (binary), [`SoftmaxRegression`], [`Mlp`];
//! - convolutional networks with torchvision / timm / `efficientnet_pytorch` tensor
//!   names, so their PyTorch checkpoints load by name: [`LeNet5`], [`SmallCnn`]
//!   (the ccexam SVHN CNN), [`ResNet`] 18/34/50/101, [`Vgg`] 11/13/16/19 (with or
//!   without batch norm), [`AlexNet`], [`EfficientNetLite0`];
//! - frozen (eval-only) backbones from `candle-transformers` in timm's layout
//!   ([`modern`]): ConvNeXt-T, ViT-S/B, DINOv2-S/B, MobileNetV4-S, EfficientNet-B0 (TF);
//! - [`Backbone`]: the embedding before the classification head, for fine-tuning
//!   with a frozen backbone ([`Model::features`], [`Model::with_head`]);
//! - one entry point, [`build_model`], from a typed [`ModelConfig`];
//! - [`SeededVarMap`] for weights that are the same on every run with the same seed;
//! - [`summarize`]: a torchinfo-style layer table (output shapes, parameters, MACs).
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::{ModuleT, VarMap};
//! use digitlab_models::{build_model, count_parameters, InputShape, ModelConfig, SeededVarMap};
//! let input = InputShape { channels: 1, height: 28, width: 28 };
//! let varmap = VarMap::new();
//! let vb = SeededVarMap::var_builder(&varmap, 42, DType::F32, &Device::Cpu);
//! let model = build_model(&ModelConfig::Lenet5, input, 10, vb)?;
//! assert!(count_parameters(&varmap) > 10_000);
//! let images = Tensor::zeros((4, 1, 28, 28), DType::F32, &Device::Cpu)?;
//! let logits = model.forward_t(&images, false)?;
//! assert_eq!(logits.dims(), [4, 10]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
pub mod alexnet;
pub mod backbone;
pub mod cnn;
pub mod conv;
pub mod dropout;
pub mod efficientnet;
pub mod init;
pub mod layers;
pub mod linear_models;
pub mod mlp;
pub mod model;
pub mod modern;
pub mod pool;
pub mod precision;
pub mod resnet;
pub mod size;
pub mod summary;
pub mod vgg;

pub use alexnet::AlexNet;
pub use backbone::{Backbone, FrozenStages, Head, Stage, StageModes};
pub use cnn::{LeNet5, SmallCnn};
pub use dropout::SeededDropout;
pub use efficientnet::EfficientNetLite0;
pub use init::SeededVarMap;
pub use layers::Activation;
pub use linear_models::{LogisticRegression, SoftmaxRegression};
pub use mlp::{Mlp, MlpConfig};
pub use model::{build_model, count_parameters, is_buffer, InputShape, Model, ModelConfig, OutputKind};
pub use modern::{ModernArch, ModernBackbone, ModernConfig, PretrainedCfg};
pub use precision::{MixedBackbone, Precision};
pub use resnet::{ResNet, ResNetConfig};
pub use size::{estimate_size, SizeEstimate};
pub use summary::{summarize, zeros_var_builder, LayerSummary, ModelSummary};
pub use vgg::{Vgg, VggConfig};
