//! ResNet-18/34 (BasicBlock) and ResNet-50/101 (Bottleneck, "v1.5": stride on the
//! 3x3 convolution), as torchvision builds them.
//!
//! Tensor names are torchvision's (and timm's `resnetNN.*` checkpoints, which use
//! the same layout): `conv1`, `bn1`, `layer{1..4}.{i}.conv{1,2[,3]}`,
//! `layer{1..4}.{i}.bn{1,2[,3]}`, `layer{1..4}.0.downsample.0` (1x1 conv) and
//! `.downsample.1` (batch norm), `fc`. Convolutions have no bias.
//!
//! With `cifar_stem`, `conv1` is a 3x3 stride-1 convolution (weight
//! `[64, C, 3, 3]`) and there is no max-pool: the usual setup for training on
//! 32 px images from scratch. Other names are unchanged.
use crate::backbone::{Backbone, FrozenStages, Head, Stage, StageModes};
use crate::conv::{bn, bn_act, conv2d, Conv2dExt, ConvInit};
use crate::layers::{relu, FusedActivation};
use crate::pool::{global_avg_pool, max_pool2d};
use candle_core::{ModuleT, Result, Tensor};
use candle_nn::{BatchNorm, Conv2d, VarBuilder};

/// `resnet { depth = 18 | 34 | 50 | 101, cifar_stem = false }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResNetConfig {
    pub depth: usize,
    /// 3x3 stride-1 stem without max-pool, for small (32 px) images.
    #[serde(default)]
    pub cifar_stem: bool,
}

impl ResNetConfig {
    pub const DEPTHS: &'static [usize] = &[18, 34, 50, 101];

    /// (blocks per stage, bottleneck?)
    fn layout(&self) -> Result<([usize; 4], bool)> {
        Ok(match self.depth {
            18 => ([2, 2, 2, 2], false),
            34 => ([3, 4, 6, 3], false),
            50 => ([3, 4, 6, 3], true),
            101 => ([3, 4, 23, 3], true),
            d => candle_core::bail!("resnet depth must be one of 18, 34, 50, 101, got {d}"),
        })
    }

    /// Width of the pooled embedding: 512 (BasicBlock) or 2048 (Bottleneck).
    pub fn feature_dim(&self) -> Result<usize> {
        Ok(if self.layout()?.1 { 2048 } else { 512 })
    }
}

#[derive(Debug, Clone)]
struct Downsample {
    conv: Conv2d,
    bn: BatchNorm,
}

impl ModuleT for Downsample {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let id = FusedActivation::Identity;
        bn_act(&self.bn, &self.conv.forward_act(xs, id)?, train, id)
    }
}

/// A convolution followed by batch norm, under torch names `conv{i}` / `bn{i}`.
#[derive(Debug, Clone)]
struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm,
}

impl ConvBn {
    fn new(cin: usize, cout: usize, k: usize, stride: usize, i: usize, vb: &VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: conv2d(
                cin,
                cout,
                k,
                stride,
                k / 2,
                false,
                ConvInit::KaimingFanOut,
                vb.pp(format!("conv{i}")),
            )?,
            bn: bn(cout, vb.pp(format!("bn{i}")))?,
        })
    }
}

impl ConvBn {
    /// `act(bn(conv(x)))`.
    fn forward_act(&self, xs: &Tensor, train: bool, act: FusedActivation) -> Result<Tensor> {
        bn_act(
            &self.bn,
            &self.conv.forward_act(xs, FusedActivation::Identity)?,
            train,
            act,
        )
    }
}

/// A residual block: `relu(convs(x) + shortcut(x))`, where `convs` is
/// `[conv3x3, conv3x3]` (BasicBlock) or `[conv1x1, conv3x3, conv1x1]` (Bottleneck),
/// with ReLU between them.
#[derive(Debug, Clone)]
struct Block {
    convs: Vec<ConvBn>,
    downsample: Option<Downsample>,
}

impl Block {
    fn new(inplanes: usize, planes: usize, stride: usize, bottleneck: bool, vb: VarBuilder) -> Result<Self> {
        let expansion = if bottleneck { 4 } else { 1 };
        let convs = if bottleneck {
            vec![
                ConvBn::new(inplanes, planes, 1, 1, 1, &vb)?,
                ConvBn::new(planes, planes, 3, stride, 2, &vb)?,
                ConvBn::new(planes, planes * expansion, 1, 1, 3, &vb)?,
            ]
        } else {
            vec![
                ConvBn::new(inplanes, planes, 3, stride, 1, &vb)?,
                ConvBn::new(planes, planes, 3, 1, 2, &vb)?,
            ]
        };
        let downsample = if stride != 1 || inplanes != planes * expansion {
            let vd = vb.pp("downsample");
            Some(Downsample {
                conv: conv2d(
                    inplanes,
                    planes * expansion,
                    1,
                    stride,
                    0,
                    false,
                    ConvInit::KaimingFanOut,
                    vd.pp("0"),
                )?,
                bn: bn(planes * expansion, vd.pp("1"))?,
            })
        } else {
            None
        };
        Ok(Self { convs, downsample })
    }
}

impl ModuleT for Block {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let last = self.convs.len() - 1;
        let mut x = xs.clone();
        for (i, c) in self.convs.iter().enumerate() {
            let act = if i < last {
                FusedActivation::Relu
            } else {
                FusedActivation::Identity
            };
            x = c.forward_act(&x, train, act)?;
        }
        let shortcut = match &self.downsample {
            Some(d) => d.forward_t(xs, train)?,
            None => xs.clone(),
        };
        relu(&(x + shortcut)?)
    }
}

/// A torchvision ResNet; see the module docs for names and options.
///
/// [`Backbone::features`] is the globally average-pooled output of `layer4`
/// (512-d for 18/34, 2048-d for 50/101); the head is `fc` (no dropout).
#[derive(Debug, Clone)]
pub struct ResNet {
    conv1: Conv2d,
    bn1: BatchNorm,
    maxpool: bool,
    layers: Vec<Vec<Block>>,
    fc: Head,
    feature_dim: usize,
    frozen: FrozenStages,
}

impl ResNet {
    pub fn new(cfg: &ResNetConfig, in_channels: usize, num_classes: usize, vb: VarBuilder) -> Result<Self> {
        let (blocks, bottleneck) = cfg.layout()?;
        let conv1 = if cfg.cifar_stem {
            conv2d(in_channels, 64, 3, 1, 1, false, ConvInit::KaimingFanOut, vb.pp("conv1"))?
        } else {
            conv2d(in_channels, 64, 7, 2, 3, false, ConvInit::KaimingFanOut, vb.pp("conv1"))?
        };
        let bn1 = bn(64, vb.pp("bn1"))?;
        let expansion = if bottleneck { 4 } else { 1 };
        let mut inplanes = 64;
        let mut layers = Vec::with_capacity(4);
        for (stage, &n) in blocks.iter().enumerate() {
            let planes = 64 << stage;
            let vl = vb.pp(format!("layer{}", stage + 1));
            let mut layer = Vec::with_capacity(n);
            for i in 0..n {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                layer.push(Block::new(inplanes, planes, stride, bottleneck, vl.pp(i.to_string()))?);
                inplanes = planes * expansion;
            }
            layers.push(layer);
        }
        let fc = Head::new(inplanes, num_classes, 0.0, vb.pp("fc"))?;
        Ok(Self {
            conv1,
            bn1,
            maxpool: !cfg.cifar_stem,
            layers,
            fc,
            feature_dim: inplanes,
            frozen: FrozenStages::default(),
        })
    }

    /// The output of `layer4`, `[B, feature_dim, H/32, W/32]` (H/8 with the CIFAR stem).
    pub fn feature_map(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let conv = self.conv1.forward_act(xs, FusedActivation::Identity)?;
        let mut x = bn_act(&self.bn1, &conv, self.frozen.train(0, train), FusedActivation::Relu)?;
        if self.maxpool {
            x = max_pool2d(&x, 3, 2, 1)?;
        }
        x = self.frozen.cut(0, x)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let train = self.frozen.train(i + 1, train);
            for block in layer {
                x = block.forward_t(&x, train)?;
            }
            x = self.frozen.cut(i + 1, x)?;
        }
        Ok(x)
    }

    pub fn head(&self) -> &Head {
        &self.fc
    }
}

impl Backbone for ResNet {
    fn features(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        global_avg_pool(&self.feature_map(xs, train)?)
    }
    fn feature_dim(&self) -> usize {
        self.feature_dim
    }
    fn head_prefix(&self) -> &'static str {
        "fc"
    }
    /// `stem` (`conv1`, `bn1`), then `layer1` .. `layer4`.
    fn stages(&self) -> Vec<Stage> {
        let mut s = vec![Stage::new("stem", &["conv1", "bn1"])];
        for i in 1..=self.layers.len() {
            let name = format!("layer{i}");
            s.push(Stage::new(name.clone(), &[name.as_str()]));
        }
        s
    }
    fn set_stage_modes(&self, modes: StageModes) -> Result<()> {
        self.frozen.set(modes, 1 + self.layers.len())
    }
    fn frozen_stages(&self) -> usize {
        self.frozen.get()
    }
}

impl ModuleT for ResNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.fc.forward_t(&self.features(xs, train)?, train)
    }
}
