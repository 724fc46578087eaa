//! One entry point for every model: a typed [`ModelConfig`] and [`build_model`].
use crate::alexnet::AlexNet;
use crate::backbone::{Backbone, Shared, WithHead};
use crate::cnn::{LeNet5, SmallCnn};
use crate::efficientnet::EfficientNetLite0;
use crate::linear_models::{LogisticRegression, SoftmaxRegression};
use crate::mlp::{Mlp, MlpConfig};
use crate::modern::{ModernBackbone, ModernConfig};
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
    /// torchvision AlexNet (inputs of at least 63 px).
    Alexnet,
    /// A frozen (eval-only) candle-transformers backbone in timm's layout
    /// ([`crate::modern`]): `arch = "convnext_tiny"`, `"vit_small_patch16_224"`, ...
    Modern(ModernConfig),
}

impl ModelConfig {
    /// Valid `kind` names, for error messages and `--help`.
    pub const KINDS: &'static [&'static str] = &[
        "logistic",
        "softmax",
        "mlp",
        "lenet5",
        "small_cnn",
        "resnet",
        "vgg",
        "efficientnet_lite0",
        "alexnet",
        "modern",
    ];

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
            ModelConfig::Alexnet => "alexnet",
            ModelConfig::Modern(_) => "modern",
        }
    }

    /// Whether the model can only run in eval mode (candle-transformers backbones):
    /// usable frozen, not trainable.
    pub fn is_eval_only(&self) -> bool {
        matches!(self, ModelConfig::Modern(_))
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
        f.debug_struct("Model")
            .field("kind", &self.kind)
            .field("output", &self.output)
            .finish()
    }
}

impl Model {
    /// Wraps any candle module (e.g. a custom network) as a digitlab model.
    pub fn from_module(net: Box<dyn ModuleT + Send + Sync>, output: OutputKind, kind: &'static str) -> Self {
        Self {
            net,
            backbone: None,
            output,
            templates: None,
            kind,
        }
    }
    /// Wraps a network that is also a [`Backbone`] (its forward must be
    /// `head(features(x))`); [`Model::features`] then works.
    pub fn from_backbone_net<T>(net: Arc<T>, output: OutputKind, kind: &'static str) -> Self
    where
        T: Backbone + ModuleT + 'static,
    {
        let backbone: Arc<dyn Backbone> = net.clone();
        Self {
            net: Box::new(Shared(net)),
            backbone: Some(backbone),
            output,
            templates: None,
            kind,
        }
    }
    /// `head(backbone.features(x))`: a classifier from a (shared) backbone and any head
    /// taking `[B, backbone.feature_dim()]`, returning `[B, num_classes]`.
    pub fn from_backbone(
        backbone: Arc<dyn Backbone>,
        head: Box<dyn ModuleT + Send + Sync>,
        num_classes: usize,
        kind: &'static str,
    ) -> Self {
        let net = WithHead {
            backbone: backbone.clone(),
            head,
        };
        Self {
            net: Box::new(net),
            backbone: Some(backbone),
            output: OutputKind::Logits(num_classes),
            templates: None,
            kind,
        }
    }
    /// This model's backbone with a new head (sharing the backbone's weights), or an
    /// error for models without a backbone (linear models, MLP).
    pub fn with_head(&self, head: Box<dyn ModuleT + Send + Sync>, num_classes: usize) -> Result<Model> {
        match &self.backbone {
            Some(b) => Ok(Self::from_backbone(b.clone(), head, num_classes, self.kind)),
            None => candle_core::bail!("model `{}` has no feature extractor to put a new head on", self.kind),
        }
    }
    /// This model computing in `precision` (see [`crate::precision`]): for bf16 the
    /// input is cast to bf16 and the output back to f32, parameters stay f32 (and
    /// keep receiving f32 gradients). f32 returns the model unchanged.
    pub fn with_precision(self, precision: crate::Precision) -> Model {
        if precision.is_f32() {
            return self;
        }
        let dtype = precision.compute_dtype();
        Model {
            net: Box::new(crate::precision::MixedNet { inner: self.net, dtype }),
            backbone: self
                .backbone
                .map(|b| crate::precision::MixedBackbone::wrap(b, precision)),
            ..self
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
            Ok(Model {
                net: Box::new(m),
                backbone: None,
                output: OutputKind::BinaryLogit,
                templates,
                kind: "logistic",
            })
        }
        ModelConfig::Softmax => {
            let m = SoftmaxRegression::new(d, num_classes, vb)?;
            let templates = Some(m.weight().clone());
            Ok(Model {
                net: Box::new(m),
                backbone: None,
                output: OutputKind::Logits(num_classes),
                templates,
                kind: "softmax",
            })
        }
        ModelConfig::Mlp(c) => {
            let m = Mlp::new(d, num_classes, c, vb)?;
            Ok(Model {
                net: Box::new(m),
                backbone: None,
                output: OutputKind::Logits(num_classes),
                templates: None,
                kind: "mlp",
            })
        }
        ModelConfig::Lenet5 => {
            let m = LeNet5::new(input.channels, input.height, input.width, num_classes, vb)?;
            Ok(Model::from_backbone_net(
                Arc::new(m),
                OutputKind::Logits(num_classes),
                "lenet5",
            ))
        }
        ModelConfig::SmallCnn => {
            let m = SmallCnn::new(input.channels, input.height, input.width, num_classes, vb)?;
            Ok(Model::from_backbone_net(
                Arc::new(m),
                OutputKind::Logits(num_classes),
                "small_cnn",
            ))
        }
        ModelConfig::Resnet(c) => {
            let m = ResNet::new(c, input.channels, num_classes, vb)?;
            Ok(Model::from_backbone_net(
                Arc::new(m),
                OutputKind::Logits(num_classes),
                "resnet",
            ))
        }
        ModelConfig::Vgg(c) => {
            let m = Vgg::new(c, input.channels, num_classes, vb)?;
            Ok(Model::from_backbone_net(
                Arc::new(m),
                OutputKind::Logits(num_classes),
                "vgg",
            ))
        }
        ModelConfig::EfficientnetLite0 => {
            let m = EfficientNetLite0::new(input.channels, num_classes, vb)?;
            Ok(Model::from_backbone_net(
                Arc::new(m),
                OutputKind::Logits(num_classes),
                "efficientnet_lite0",
            ))
        }
        ModelConfig::Alexnet => {
            let m = AlexNet::new(input.channels, input.height, input.width, num_classes, vb)?;
            Ok(Model::from_backbone_net(
                Arc::new(m),
                OutputKind::Logits(num_classes),
                "alexnet",
            ))
        }
        ModelConfig::Modern(c) => {
            c.arch.check_input(input)?;
            let m = ModernBackbone::new(c.arch, num_classes, vb)?;
            Ok(Model::from_backbone_net(
                Arc::new(m),
                OutputKind::Logits(num_classes),
                c.arch.name(),
            ))
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
        let m = build_model(
            cfg,
            InputShape {
                channels: 1,
                height: 28,
                width: 28,
            },
            classes,
            vb,
        )?;
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
        let mlp = ModelConfig::Mlp(MlpConfig {
            hidden: vec![256, 256, 128, 128],
            activation: Default::default(),
            dropout: 0.0,
            batch_norm: false,
        });
        let (m, map) = build(&mlp, 10).unwrap();
        assert_eq!(m.forward_t(&x, true).unwrap().dims(), &[5, 10]);
        // 784*256+256 + 256*256+256 + 256*128+128 + 128*128+128 + 128*10+10
        assert_eq!(count_parameters(&map), 200_960 + 65_792 + 32_896 + 16_512 + 1_290);
        let bn = ModelConfig::Mlp(MlpConfig {
            hidden: vec![16],
            activation: Default::default(),
            dropout: 0.5,
            batch_norm: true,
        });
        let (m, map) = build(&bn, 10).unwrap();
        assert_eq!(m.forward_t(&x, true).unwrap().dims(), &[5, 10]);
        assert_eq!(count_parameters(&map), 784 * 16 + 16 + 32 + 16 * 10 + 10);
    }

    #[test]
    fn logistic_needs_two_classes() {
        let e = build(&ModelConfig::Logistic, 10)
            .err()
            .expect("logistic with 10 classes must fail")
            .to_string();
        assert!(e.contains("binary") && e.contains("10 classes"), "{e}");
    }

    use crate::backbone::Head;
    use crate::resnet::ResNetConfig;
    use crate::vgg::VggConfig;
    use candle_core::Shape;
    use candle_nn::var_builder::SimpleBackend;
    use candle_nn::Init;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    /// Records every variable's size and answers with (lazily allocated) zeros:
    /// parameter counts of big models without initialising them.
    #[derive(Clone, Default)]
    struct Shapes(Arc<Mutex<BTreeMap<String, usize>>>);

    impl SimpleBackend for Shapes {
        fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
            self.0.lock().unwrap().insert(name.to_string(), s.elem_count());
            Tensor::zeros(s, dtype, dev)
        }
        fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> Result<Tensor> {
            candle_core::bail!("unexpected unchecked get of {name}")
        }
        fn contains_tensor(&self, _: &str) -> bool {
            false
        }
    }

    /// (model with zero weights, trainable parameter count).
    fn zero_model(cfg: &ModelConfig, input: InputShape, classes: usize) -> (Model, usize) {
        let shapes = Shapes::default();
        let vb = VarBuilder::from_backend(Box::new(shapes.clone()), DType::F32, Device::Cpu);
        let m = build_model(cfg, input, classes, vb).unwrap();
        let n = shapes
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| !is_buffer(k))
            .map(|(_, n)| n)
            .sum();
        (m, n)
    }

    fn seeded(cfg: &ModelConfig, input: InputShape, classes: usize) -> (Model, VarMap) {
        let map = VarMap::new();
        let vb = SeededVarMap::var_builder(&map, 7, DType::F32, &Device::Cpu);
        (build_model(cfg, input, classes, vb).unwrap(), map)
    }

    fn image(b: usize, input: InputShape) -> Tensor {
        let n = b * input.features();
        let v: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.618).sin()).collect();
        Tensor::from_vec(v, (b, input.channels, input.height, input.width), &Device::Cpu).unwrap()
    }

    const fn shape(channels: usize, side: usize) -> InputShape {
        InputShape {
            channels,
            height: side,
            width: side,
        }
    }

    fn resnet(depth: usize, cifar_stem: bool) -> ModelConfig {
        ModelConfig::Resnet(ResNetConfig { depth, cifar_stem })
    }

    fn vgg(depth: usize, batch_norm: bool) -> ModelConfig {
        ModelConfig::Vgg(VggConfig { depth, batch_norm })
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap()
    }

    #[test]
    fn kinds_are_listed() {
        let cfgs = [
            ModelConfig::Logistic,
            ModelConfig::Softmax,
            ModelConfig::Mlp(MlpConfig {
                hidden: vec![],
                activation: Default::default(),
                dropout: 0.0,
                batch_norm: false,
            }),
            ModelConfig::Lenet5,
            ModelConfig::SmallCnn,
            resnet(18, false),
            vgg(11, false),
            ModelConfig::EfficientnetLite0,
            ModelConfig::Alexnet,
            ModelConfig::Modern(crate::ModernConfig {
                arch: crate::ModernArch::ConvnextTiny,
            }),
        ];
        let kinds: Vec<_> = cfgs.iter().map(|c| c.kind()).collect();
        assert_eq!(kinds, ModelConfig::KINDS);
    }

    #[test]
    fn conv_model_output_shapes_at_28_and_32_px() {
        let cfgs = [
            ModelConfig::Lenet5,
            ModelConfig::SmallCnn,
            resnet(18, false),
            resnet(18, true),
            resnet(50, false),
            ModelConfig::EfficientnetLite0,
        ];
        for input in [shape(1, 28), shape(3, 28), shape(1, 32), shape(3, 32)] {
            let x = image(2, input);
            for cfg in &cfgs {
                let (m, _) = seeded(cfg, input, 10);
                let y = m.forward_t(&x, false).unwrap();
                assert_eq!(y.dims(), &[2, 10], "{cfg:?} at {input:?}");
                let f = m.features(&x, false).unwrap().unwrap();
                assert_eq!(f.dims(), &[2, m.feature_dim().unwrap()], "{cfg:?} at {input:?}");
                assert_eq!(m.output(), OutputKind::Logits(10));
            }
            // VGG's 25088 x 4096 layer is too big to initialise for a shape test.
            for cfg in [vgg(11, false), vgg(11, true)] {
                let (m, _) = zero_model(&cfg, input, 10);
                assert_eq!(m.forward_t(&x, true).unwrap().dims(), &[2, 10], "{cfg:?} at {input:?}");
                assert_eq!(m.features(&x, false).unwrap().unwrap().dims(), &[2, 4096]);
            }
        }
    }

    #[test]
    fn resnet18_at_224_px() {
        let input = shape(3, 224);
        let (m, _) = seeded(&resnet(18, false), input, 1000);
        let x = image(1, input);
        assert_eq!(m.forward_t(&x, false).unwrap().dims(), &[1, 1000]);
        assert_eq!(m.features(&x, false).unwrap().unwrap().dims(), &[1, 512]);
        assert_eq!(m.head_prefix(), Some("fc"));
    }

    #[test]
    fn parameter_counts_match_torchvision() {
        let rgb = shape(3, 224);
        assert_eq!(zero_model(&resnet(18, false), rgb, 1000).1, 11_689_512);
        assert_eq!(zero_model(&resnet(34, false), rgb, 1000).1, 21_797_672);
        assert_eq!(zero_model(&resnet(50, false), rgb, 1000).1, 25_557_032);
        assert_eq!(zero_model(&resnet(101, false), rgb, 1000).1, 44_549_160);
        assert_eq!(zero_model(&vgg(16, false), rgb, 1000).1, 138_357_544);
        assert_eq!(zero_model(&vgg(16, true), rgb, 1000).1, 138_365_992);
        assert_eq!(zero_model(&vgg(19, false), rgb, 1000).1, 143_667_240);
        // As in the pretrained files: EfficientNet-Lite0 4,652,008; ccexam SVHN CNN 815,018.
        assert_eq!(zero_model(&ModelConfig::EfficientnetLite0, rgb, 1000).1, 4_652_008);
        assert_eq!(zero_model(&ModelConfig::SmallCnn, shape(3, 32), 10).1, 815_018);
        // LeNet-5: 156 + 2416 + 48120 + 10164 + 850, at 28 and 32 px alike.
        assert_eq!(zero_model(&ModelConfig::Lenet5, shape(1, 28), 10).1, 61_706);
        assert_eq!(zero_model(&ModelConfig::Lenet5, shape(1, 32), 10).1, 61_706);
        // The CIFAR stem's conv1 is 3x3 (not 7x7); fc has 10 outputs (not 1000).
        assert_eq!(
            zero_model(&resnet(18, true), shape(3, 32), 10).1,
            11_689_512 - 64 * 3 * 40 - 513 * 990
        );
    }

    #[test]
    fn bad_depths_are_rejected() {
        let map = VarMap::new();
        let vb = SeededVarMap::var_builder(&map, 0, DType::F32, &Device::Cpu);
        let e = build_model(&resnet(20, false), shape(3, 32), 10, vb.clone())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("18, 34, 50, 101"), "{e}");
        let e = build_model(&vgg(12, false), shape(3, 32), 10, vb)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("11, 13, 16, 19"), "{e}");
    }

    #[test]
    fn batch_norm_models_differ_between_train_and_eval() {
        for (cfg, input) in [
            (ModelConfig::SmallCnn, shape(3, 32)),
            (resnet(18, true), shape(3, 32)),
            (resnet(50, false), shape(1, 28)),
            (ModelConfig::EfficientnetLite0, shape(3, 32)),
        ] {
            let (m, _) = seeded(&cfg, input, 10);
            let x = image(4, input);
            let eval1 = m.forward_t(&x, false).unwrap();
            let eval2 = m.forward_t(&x, false).unwrap();
            assert_eq!(max_abs_diff(&eval1, &eval2), 0.0, "{cfg:?}: eval is deterministic");
            let train = m.forward_t(&x, true).unwrap();
            let diff = max_abs_diff(&eval1, &train);
            assert!(diff > 1e-4, "{cfg:?}: train and eval agree ({diff})");
        }
        // Train mode updates the running statistics (ResNet's stem batch norm).
        let (m, map) = seeded(&resnet(18, true), shape(3, 32), 10);
        let stat = |map: &VarMap| -> Vec<f32> {
            map.data().lock().unwrap()["bn1.running_mean"]
                .as_tensor()
                .to_vec1()
                .unwrap()
        };
        let before = stat(&map);
        m.forward_t(&image(2, shape(3, 32)), false).unwrap();
        assert_eq!(before, stat(&map));
        m.forward_t(&image(2, shape(3, 32)), true).unwrap();
        assert_ne!(before, stat(&map));
    }

    #[test]
    fn resnet18_backward_through_the_stem_max_pool() {
        for cifar_stem in [false, true] {
            let input = shape(3, 32);
            let (m, map) = seeded(&resnet(18, cifar_stem), input, 10);
            let logits = m.forward_t(&image(2, input), true).unwrap();
            let labels = Tensor::new(&[3u32, 7], &Device::Cpu).unwrap();
            let loss = candle_nn::loss::cross_entropy(&logits, &labels).unwrap();
            let grads = loss.backward().unwrap();
            let vars = map.data().lock().unwrap();
            for name in [
                "conv1.weight",
                "layer1.0.conv1.weight",
                "layer4.1.bn2.weight",
                "fc.weight",
            ] {
                let g = grads
                    .get(vars[name].as_tensor())
                    .unwrap_or_else(|| panic!("no gradient for {name}"));
                let norm: f32 = g.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
                assert!(norm > 0.0 && norm.is_finite(), "{name}: gradient norm {norm}");
            }
        }
    }

    #[test]
    fn features_and_new_heads() {
        let input = shape(1, 28);
        let (m, _) = seeded(&ModelConfig::Lenet5, input, 10);
        let x = image(3, input);
        let f = m.features(&x, false).unwrap().unwrap();
        assert_eq!(f.dims(), &[3, 84]);
        assert_eq!(m.head_prefix(), Some("classifier.4"));
        // A new 2-class head on the shared backbone.
        let map = VarMap::new();
        let vb = SeededVarMap::var_builder(&map, 1, DType::F32, &Device::Cpu);
        let head = Head::new(84, 2, 0.0, vb.pp("classifier.4")).unwrap();
        let want = head.forward_t(&f, false).unwrap();
        let m2 = m.with_head(Box::new(head), 2).unwrap();
        assert_eq!(m2.output(), OutputKind::Logits(2));
        assert_eq!(max_abs_diff(&m2.forward_t(&x, false).unwrap(), &want), 0.0);
        // The original model is untouched; models without a backbone say so.
        assert_eq!(m.forward_t(&x, false).unwrap().dims(), &[3, 10]);
        let (soft, _) = build(&ModelConfig::Softmax, 10).unwrap();
        assert!(soft.features(&x, false).unwrap().is_none());
        assert!(soft
            .with_head(Box::new(Head::new(1, 1, 0.0, vb.pp("x")).unwrap()), 1)
            .is_err());
        // The backbone outlives the model that made it.
        let backbone = m.backbone().unwrap().clone();
        drop(m);
        assert_eq!(backbone.features(&x, false).unwrap().dims(), &[3, 84]);
    }
}
