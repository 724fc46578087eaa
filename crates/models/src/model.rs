//! One entry point for every model: a typed [`ModelConfig`] and [`build_model`].
use crate::backbone::{Backbone, Shared, WithHead};
use crate::cnn::{LeNet5, SmallCnn};
use crate::efficientnet::EfficientNetLite0;
use crate::linear_models::{LogisticRegression, SoftmaxRegression};
use crate::mlp::{Mlp, MlpConfig};
use crate::resnet::{ResNet, ResNetConfig};
use crate::vgg::{Vgg, VggConfig};
use candle_core::{ModuleT, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};
use std::sync::Arc;

/// Input image geometry a model is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputShape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl InputShape {
    pub fn features(&self) -> usize {
        self.channels * self.height * self.width
    }
}

/// What a model's output means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// One logit per image, shape `[B]`: p(class 1) = sigmoid(logit).
    BinaryLogit,
    /// One logit per class, shape `[B, K]`.
    Logits(usize),
}

/// Every model digitlab can build, selected by `kind` in a config.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ModelConfig {
    /// Binary logistic regression (needs exactly 2 classes).
    Logistic,
    /// Multinomial logistic (softmax) regression.
    Softmax,
    /// Multi-layer perceptron.
    Mlp(MlpConfig),
    /// LeNet-5 (28 or 32 px, any channel count).
    Lenet5,
    /// The ccexam SVHN CNN (3 conv blocks, 32 -> 64 -> 128 channels).
    SmallCnn,
    /// torchvision ResNet: `depth` 18, 34, 50 or 101; `cifar_stem` for 32 px.
    Resnet(ResNetConfig),
    /// torchvision VGG: `depth` 11, 13, 16 or 19; optional `batch_norm`.
    Vgg(VggConfig),
    /// EfficientNet-Lite0 (`efficientnet_pytorch` names).
    EfficientnetLite0,
}

impl ModelConfig {
    /// Valid `kind` names, for error messages and `--help`.
    pub const KINDS: &'static [&'static str] =
        &["logistic", "softmax", "mlp", "lenet5", "small_cnn", "resnet", "vgg", "efficientnet_lite0"];

    pub fn kind(&self) -> &'static str {
        match self {
            ModelConfig::Logistic => "logistic",
            ModelConfig::Softmax => "softmax",
            ModelConfig::Mlp(_) => "mlp",
            ModelConfig::Lenet5 => "lenet5",
            ModelConfig::SmallCnn => "small_cnn",
            ModelConfig::Resnet(_) => "resnet",
            ModelConfig::Vgg(_) => "vgg",
            ModelConfig::EfficientnetLite0 => "efficientnet_lite0",
        }
    }
}

/// A built model: the network plus what its output means.
///
/// Convolutional models also keep their network as a shared [`Backbone`]: the
/// network is `head(features(x))`, and [`Model::features`] stops before the head.
/// A frozen-backbone fine-tuner computes the embeddings once with
/// [`Model::features`] (or on [`Model::backbone`], which it can keep after the
/// model is dropped), trains a new head on them, and builds the classifier with
/// [`Model::with_head`] — no copy of the backbone's weights (see
/// [`crate::backbone`]).
pub struct Model {
    net: Box<dyn ModuleT + Send + Sync>,
    backbone: Option<Arc<dyn Backbone>>,
    output: OutputKind,
    templates: Option<Tensor>,
    kind: &'static str,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("kind", &self.kind).field("output", &self.output).finish()
    }
}

impl Model {
    /// Wraps any candle module (e.g. a custom network) as a digitlab model.
    pub fn from_module(net: Box<dyn ModuleT + Send + Sync>, output: OutputKind, kind: &'static str) -> Self {
        Self { net, backbone: None, output, templates: None, kind }
    }
    /// Wraps a network that is also a [`Backbone`] (its forward must be
    /// `head(features(x))`); [`Model::features`] then works.
    pub fn from_backbone_net<T>(net: Arc<T>, output: OutputKind, kind: &'static str) -> Self
    where
        T: Backbone + ModuleT + 'static,
    {
        let backbone: Arc<dyn Backbone> = net.clone();
        Self { net: Box::new(Shared(net)), backbone: Some(backbone), output, templates: None, kind }
    }
    /// `head(backbone.features(x))`: a classifier from a (shared) backbone and any head
    /// taking `[B, backbone.feature_dim()]`, returning `[B, num_classes]`.
    pub fn from_backbone(
        backbone: Arc<dyn Backbone>,
        head: Box<dyn ModuleT + Send + Sync>,
        num_classes: usize,
        kind: &'static str,
    ) -> Self {
        let net = WithHead { backbone: backbone.clone(), head };
        Self { net: Box::new(net), backbone: Some(backbone), output: OutputKind::Logits(num_classes), templates: None, kind }
    }
    /// This model's backbone with a new head (sharing the backbone's weights), or an
    /// error for models without a backbone (linear models, MLP).
    pub fn with_head(&self, head: Box<dyn ModuleT + Send + Sync>, num_classes: usize) -> Result<Model> {
        match &self.backbone {
            Some(b) => Ok(Self::from_backbone(b.clone(), head, num_classes, self.kind)),
            None => candle_core::bail!("model `{}` has no feature extractor to put a new head on", self.kind),
        }
    }
    /// The feature extractor of convolutional models (`None` for linear models and MLPs).
    pub fn backbone(&self) -> Option<&Arc<dyn Backbone>> {
        self.backbone.as_ref()
    }
    /// The embedding before the classification head, `[B, D]`, or `None` when the
    /// model has no backbone. `train` has the same meaning as in `forward_t`.
    pub fn features(&self, xs: &Tensor, train: bool) -> Result<Option<Tensor>> {
        self.backbone.as_ref().map(|b| b.features(xs, train)).transpose()
    }
    /// Width `D` of [`Model::features`].
    pub fn feature_dim(&self) -> Option<usize> {
        self.backbone.as_ref().map(|b| b.feature_dim())
    }
    /// Variable-name prefix of the classification head (`fc`, `classifier.6`, ...).
    pub fn head_prefix(&self) -> Option<&'static str> {
        self.backbone.as_ref().map(|b| b.head_prefix())
    }
    pub fn output(&self) -> OutputKind {
        self.output
    }
    pub fn kind(&self) -> &'static str {
        self.kind
    }
    /// For linear models, the weight matrix `[outputs, features]`: one template
    /// image per output, worth plotting.
    pub fn weight_templates(&self) -> Option<&Tensor> {
        self.templates.as_ref()
    }
}

impl ModuleT for Model {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.net.forward_t(xs, train)
    }
}

/// Builds the model described by `cfg` for `input` images and `num_classes` classes,
/// creating its variables through `vb` (use [`crate::SeededVarMap`] for seeded weights).
pub fn build_model(cfg: &ModelConfig, input: InputShape, num_classes: usize, vb: VarBuilder) -> Result<Model> {
    let d = input.features();
    match cfg {
        ModelConfig::Logistic => {
            if num_classes != 2 {
                candle_core::bail!(
                    "model `logistic` is binary but the data has {num_classes} classes; \
                     filter two classes (data.classes = [3, 6]) or use `softmax`"
                )
            }
            let m = LogisticRegression::new(d, vb)?;
            let templates = Some(m.weight().clone());
            Ok(Model { net: Box::new(m), backbone: None, output: OutputKind::BinaryLogit, templates, kind: "logistic" })
        }
        ModelConfig::Softmax => {
            let m = SoftmaxRegression::new(d, num_classes, vb)?;
            let templates = Some(m.weight().clone());
            Ok(Model { net: Box::new(m), backbone: None, output: OutputKind::Logits(num_classes), templates, kind: "softmax" })
        }
        ModelConfig::Mlp(c) => {
            let m = Mlp::new(d, num_classes, c, vb)?;
            Ok(Model { net: Box::new(m), backbone: None, output: OutputKind::Logits(num_classes), templates: None, kind: "mlp" })
        }
        ModelConfig::Lenet5 => {
            let m = LeNet5::new(input.channels, input.height, input.width, num_classes, vb)?;
            Ok(Model::from_backbone_net(Arc::new(m), OutputKind::Logits(num_classes), "lenet5"))
        }
        ModelConfig::SmallCnn => {
            let m = SmallCnn::new(input.channels, input.height, input.width, num_classes, vb)?;
            Ok(Model::from_backbone_net(Arc::new(m), OutputKind::Logits(num_classes), "small_cnn"))
        }
        ModelConfig::Resnet(c) => {
            let m = ResNet::new(c, input.channels, num_classes, vb)?;
            Ok(Model::from_backbone_net(Arc::new(m), OutputKind::Logits(num_classes), "resnet"))
        }
        ModelConfig::Vgg(c) => {
            let m = Vgg::new(c, input.channels, num_classes, vb)?;
            Ok(Model::from_backbone_net(Arc::new(m), OutputKind::Logits(num_classes), "vgg"))
        }
        ModelConfig::EfficientnetLite0 => {
            let m = EfficientNetLite0::new(input.channels, num_classes, vb)?;
            Ok(Model::from_backbone_net(Arc::new(m), OutputKind::Logits(num_classes), "efficientnet_lite0"))
        }
    }
}

/// Whether a variable name is a batch-norm running statistic (state, not a parameter).
pub fn is_buffer(name: &str) -> bool {
    name.ends_with("running_mean") || name.ends_with("running_var") || name.ends_with("num_batches_tracked")
}

/// (total, trainable) parameter counts of a `VarMap`, running statistics excluded.
pub fn count_parameters(map: &VarMap) -> usize {
    map.data()
        .lock()
        .expect("varmap lock poisoned")
        .iter()
        .filter(|(name, _)| !is_buffer(name))
        .map(|(_, v)| v.elem_count())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SeededVarMap;
    use candle_core::{DType, Device};

    fn build(cfg: &ModelConfig, classes: usize) -> Result<(Model, VarMap)> {
        let map = VarMap::new();
        let vb = SeededVarMap::var_builder(&map, 0, DType::F32, &Device::Cpu);
        let m = build_model(cfg, InputShape { channels: 1, height: 28, width: 28 }, classes, vb)?;
        Ok((m, map))
    }

    #[test]
    fn shapes_and_parameter_counts() {
        let x = Tensor::zeros((5, 1, 28, 28), DType::F32, &Device::Cpu).unwrap();
        let (m, map) = build(&ModelConfig::Logistic, 2).unwrap();
        assert_eq!(m.forward_t(&x, false).unwrap().dims(), &[5]);
        assert_eq!(count_parameters(&map), 785);
        let (m, map) = build(&ModelConfig::Softmax, 10).unwrap();
        assert_eq!(m.forward_t(&x, false).unwrap().dims(), &[5, 10]);
        assert_eq!(count_parameters(&map), 7850);
        let mlp = ModelConfig::Mlp(MlpConfig { hidden: vec![256, 256, 128, 128], activation: Default::default(), dropout: 0.0, batch_norm: false });
        let (m, map) = build(&mlp, 10).unwrap();
        assert_eq!(m.forward_t(&x, true).unwrap().dims(), &[5, 10]);
        // 784*256+256 + 256*256+256 + 256*128+128 + 128*128+128 + 128*10+10
        assert_eq!(count_parameters(&map), 200_960 + 65_792 + 32_896 + 16_512 + 1_290);
        let bn = ModelConfig::Mlp(MlpConfig { hidden: vec![16], activation: Default::default(), dropout: 0.5, batch_norm: true });
        let (m, map) = build(&bn, 10).unwrap();
        assert_eq!(m.forward_t(&x, true).unwrap().dims(), &[5, 10]);
        assert_eq!(count_parameters(&map), 784 * 16 + 16 + 32 + 16 * 10 + 10);
    }

    #[test]
    fn logistic_needs_two_classes() {
        let e = build(&ModelConfig::Logistic, 10).err().expect("logistic with 10 classes must fail").to_string();
        assert!(e.contains("binary") && e.contains("10 classes"), "{e}");
    }
}
