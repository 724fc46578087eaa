//! Small convolutional networks for digits: [`LeNet5`] and [`SmallCnn`].
use crate::backbone::{Backbone, FrozenStages, Head, Stage, StageModes};
use crate::conv::{bn, bn_act, conv2d, Conv2dExt, ConvInit};
use crate::dropout::SeededDropout;
use crate::layers::{linear, FusedActivation, LinearExt};
use crate::pool::max_pool2d;
use candle_core::{ModuleT, Result, Tensor};
use candle_nn::{BatchNorm, Conv2d, Linear, VarBuilder};

/// Classic LeNet-5 (ReLU and max pooling instead of tanh and subsampling).
///
/// `conv5x5(6) -> ReLU -> maxpool2 -> conv5x5(16) -> ReLU -> maxpool2 -> fc 120 ->
/// ReLU -> fc 84 -> ReLU -> fc K`. Inputs smaller than 32 px (e.g. 28 px MNIST)
/// get padding 2 in the first convolution, so 28 and 32 px inputs both reach the
/// 16 x 5 x 5 map of the original 32 px design. Any channel count works.
///
/// Tensor names, as the equivalent `nn.Sequential`s would give them:
/// `features.0` (conv 6), `features.3` (conv 16), `classifier.0` (400 -> 120),
/// `classifier.2` (120 -> 84), `classifier.4` (84 -> K, the head).
/// [`Backbone::features`] is the 84-d output after `classifier.3` (ReLU).
#[derive(Debug, Clone)]
pub struct LeNet5 {
    conv1: Conv2d,
    conv2: Conv2d,
    fc1: Linear,
    fc2: Linear,
    head: Head,
    frozen: FrozenStages,
}

impl LeNet5 {
    pub fn new(channels: usize, height: usize, width: usize, num_classes: usize, vb: VarBuilder) -> Result<Self> {
        let pad = if height.min(width) < 32 { 2 } else { 0 };
        let side = |n: usize| -> usize { ((n + 2 * pad).saturating_sub(4) / 2).saturating_sub(4) / 2 };
        let (fh, fw) = (side(height), side(width));
        if fh == 0 || fw == 0 {
            candle_core::bail!("lenet5 needs inputs of at least 28x28 pixels, got {height}x{width}")
        }
        let vf = vb.pp("features");
        let vc = vb.pp("classifier");
        Ok(Self {
            conv1: conv2d(channels, 6, 5, 1, pad, true, ConvInit::TorchDefault, vf.pp("0"))?,
            conv2: conv2d(6, 16, 5, 1, 0, true, ConvInit::TorchDefault, vf.pp("3"))?,
            fc1: linear(16 * fh * fw, 120, vc.pp("0"))?,
            fc2: linear(120, 84, vc.pp("2"))?,
            head: Head::new(84, num_classes, 0.0, vc.pp("4"))?,
            frozen: FrozenStages::default(),
        })
    }
}

impl Backbone for LeNet5 {
    fn features(&self, xs: &Tensor, _train: bool) -> Result<Tensor> {
        let relu = FusedActivation::Relu;
        let f = &self.frozen;
        let x = f.cut(0, max_pool2d(&self.conv1.forward_act(xs, relu)?, 2, 2, 0)?)?;
        let x = f.cut(1, max_pool2d(&self.conv2.forward_act(&x, relu)?, 2, 2, 0)?)?;
        let x = f.cut(2, self.fc1.forward_act(&x.flatten_from(1)?, relu)?)?;
        f.cut(3, self.fc2.forward_act(&x, relu)?)
    }
    fn feature_dim(&self) -> usize {
        84
    }
    fn head_prefix(&self) -> &'static str {
        "classifier.4"
    }
    /// One layer each: `conv1` (`features.0`), `conv2` (`features.3`), `fc1`
    /// (`classifier.0`), `fc2` (`classifier.2`).
    fn stages(&self) -> Vec<Stage> {
        vec![
            Stage::new("conv1", &["features.0"]),
            Stage::new("conv2", &["features.3"]),
            Stage::new("fc1", &["classifier.0"]),
            Stage::new("fc2", &["classifier.2"]),
        ]
    }
    /// LeNet-5 has no batch norm or dropout: frozen stages only need no gradient.
    fn set_stage_modes(&self, modes: StageModes) -> Result<()> {
        self.frozen.set(modes, 4)
    }
    fn frozen_stages(&self) -> usize {
        self.frozen.get()
    }
}

impl ModuleT for LeNet5 {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.head.forward_t(&self.features(xs, train)?, train)
    }
}

/// One `[conv3x3 -> BN -> ReLU] x 2 -> maxpool2` block of [`SmallCnn`].
#[derive(Debug, Clone)]
struct ConvBlock {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
}

impl ConvBlock {
    fn new(cin: usize, cout: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv1: conv2d(cin, cout, 3, 1, 1, true, ConvInit::TorchDefault, vb.pp("0"))?,
            bn1: bn(cout, vb.pp("1"))?,
            conv2: conv2d(cout, cout, 3, 1, 1, true, ConvInit::TorchDefault, vb.pp("3"))?,
            bn2: bn(cout, vb.pp("4"))?,
        })
    }
}

impl ModuleT for ConvBlock {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let (id, relu) = (FusedActivation::Identity, FusedActivation::Relu);
        let x = bn_act(&self.bn1, &self.conv1.forward_act(xs, id)?, train, relu)?;
        let x = bn_act(&self.bn2, &self.conv2.forward_act(&x, id)?, train, relu)?;
        max_pool2d(&x, 2, 2, 0)
    }
}

/// The SVHN CNN of the `ccexam` package (`SVHNNet`), layer for layer, so that its
/// trained weights (`ccexam-svhn-cnn.safetensors`) load by name.
///
/// Three blocks of `[Conv3x3(pad 1) + BN + ReLU] x 2 + MaxPool2`, channels
/// `C -> 32 -> 64 -> 128`; then `Dropout(0.3)`, `Linear(128 * (H/8) * (W/8), 256)`,
/// ReLU, `Dropout(0.3)`, `Linear(256, K)` (2048 inputs at 32 px).
///
/// Tensor names: `features.{0,1,2}.{0,3}` (convs, with bias), `features.{0,1,2}.{1,4}`
/// (batch norms), `classifier.1` (hidden linear), `classifier.4` (the head).
/// [`Backbone::features`] is the 256-d output after `classifier.2` (ReLU).
#[derive(Debug, Clone)]
pub struct SmallCnn {
    blocks: Vec<ConvBlock>,
    dropout: SeededDropout,
    fc1: Linear,
    head: Head,
    frozen: FrozenStages,
}

impl SmallCnn {
    /// Dropout probability of the classifier (ccexam's default).
    pub const DROPOUT: f32 = 0.3;

    pub fn new(channels: usize, height: usize, width: usize, num_classes: usize, vb: VarBuilder) -> Result<Self> {
        let (fh, fw) = (height / 8, width / 8);
        if fh == 0 || fw == 0 {
            candle_core::bail!("small_cnn needs inputs of at least 8x8 pixels, got {height}x{width}")
        }
        let vf = vb.pp("features");
        let blocks = vec![
            ConvBlock::new(channels, 32, vf.pp("0"))?,
            ConvBlock::new(32, 64, vf.pp("1"))?,
            ConvBlock::new(64, 128, vf.pp("2"))?,
        ];
        let vc = vb.pp("classifier");
        Ok(Self {
            blocks,
            dropout: SeededDropout::new(Self::DROPOUT, "classifier.dropout"),
            fc1: linear(128 * fh * fw, 256, vc.pp("1"))?,
            head: Head::new(256, num_classes, Self::DROPOUT, vc.pp("4"))?,
            frozen: FrozenStages::default(),
        })
    }
}

impl Backbone for SmallCnn {
    fn features(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = xs.clone();
        for (i, b) in self.blocks.iter().enumerate() {
            x = self.frozen.cut(i, b.forward_t(&x, self.frozen.train(i, train))?)?;
        }
        let fc1_train = self.frozen.train(self.blocks.len(), train);
        let x = self.dropout.forward_t(&x.flatten_from(1)?, fc1_train)?;
        self.frozen
            .cut(self.blocks.len(), self.fc1.forward_act(&x, FusedActivation::Relu)?)
    }
    fn feature_dim(&self) -> usize {
        256
    }
    fn head_prefix(&self) -> &'static str {
        "classifier.4"
    }
    /// The three conv blocks `features.0` .. `features.2`, then `fc1` (`classifier.1`).
    fn stages(&self) -> Vec<Stage> {
        vec![
            Stage::new("block1", &["features.0"]),
            Stage::new("block2", &["features.1"]),
            Stage::new("block3", &["features.2"]),
            Stage::new("fc1", &["classifier.1"]),
        ]
    }
    fn set_stage_modes(&self, modes: StageModes) -> Result<()> {
        self.frozen.set(modes, self.blocks.len() + 1)
    }
    fn frozen_stages(&self) -> usize {
        self.frozen.get()
    }
}

impl ModuleT for SmallCnn {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.head.forward_t(&self.features(xs, train)?, train)
    }
}
