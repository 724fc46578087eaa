//! EfficientNet-Lite0 with the tensor layout of `efficientnet_pytorch` /
//! `efficientnet_lite_pytorch` (the layout of the pretrained
//! `efficientnet-lite0.safetensors`).
//!
//! Lite0 is EfficientNet-B0 without squeeze-excitation, with ReLU6 instead of
//! swish, and with the stem (32 channels) and head (1280 channels) not scaled.
//! Blocks (MBConv, `r` repeats of kernel `k`, first stride `s`, expansion `e`,
//! channels `i -> o`), 16 in all:
//!
//! | stage | r | k | s | e | i -> o |
//! |---|---|---|---|---|---|
//! | 1 | 1 | 3 | 1 | 1 | 32 -> 16 |
//! | 2 | 2 | 3 | 2 | 6 | 16 -> 24 |
//! | 3 | 2 | 5 | 2 | 6 | 24 -> 40 |
//! | 4 | 3 | 3 | 2 | 6 | 40 -> 80 |
//! | 5 | 3 | 5 | 1 | 6 | 80 -> 112 |
//! | 6 | 4 | 5 | 2 | 6 | 112 -> 192 |
//! | 7 | 1 | 3 | 1 | 6 | 192 -> 320 |
//!
//! Tensor names: `_conv_stem` (3x3 stride 2), `_bn0`, `_blocks.{n}._expand_conv`
//! (1x1, absent in block 0 whose expansion is 1), `._bn0`, `._depthwise_conv`
//! (`[C, 1, k, k]`), `._bn1`, `._project_conv` (1x1), `._bn2`, then `_conv_head`
//! (1x1 -> 1280), `_bn1`, `_fc`. No convolution has a bias. Batch norm uses
//! `eps = 1e-3`, `momentum = 0.01` (TensorFlow's 0.99). Blocks with stride 1 and
//! equal in/out channels (every repeat after the first of a stage) add their
//! input, with drop-connect (stochastic depth) in training at rate
//! `0.2 * block_index / 16`. The head is `Dropout(0.2)` + `_fc`.
//!
//! Padding is TensorFlow "SAME", computed from each input's size. The reference
//! package builds its convolutions with *static* "SAME" padding for 224 px
//! (`image_size = 224`); the two agree for 224 px input and for every input size
//! whose stride-2 layers all see even sizes (multiples of 32: 32, 64, 96, ...).
//! For other sizes (e.g. 28 px) this follows TensorFlow rather than the static
//! 224 px pads, which would not fit.
use crate::backbone::{Backbone, FrozenStages, Head, Stage, StageModes};
use crate::conv::{batch_norm2d, conv2d, Conv2dExt, ConvInit, DepthwiseConv2d, DepthwisePadding, SameConv2d};
use crate::layers::FusedActivation;
use crate::pool::global_avg_pool;
use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::{BatchNorm, Conv2d, VarBuilder};

const BN_EPS: f64 = 1e-3;
const BN_MOMENTUM: f64 = 0.01;

/// (repeats, kernel, stride, expand ratio, in channels, out channels) per stage.
const LITE0_STAGES: [(usize, usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
];

fn bn(c: usize, vb: VarBuilder) -> Result<BatchNorm> {
    batch_norm2d(c, BN_EPS, BN_MOMENTUM, vb)
}

/// The batch norm (through the kernels, noted for [`crate::summary`]).
fn norm_t(bn: &BatchNorm, xs: &Tensor, train: bool) -> Result<Tensor> {
    crate::precision::batch_norm_t(bn, xs, train)
}

/// `relu6(bn(x))` as one pass: candle's `clamp` would be two broadcast ops forward
/// and four mask ops backward, each a full-size tensor.
fn norm_relu6_t(bn: &BatchNorm, xs: &Tensor, train: bool) -> Result<Tensor> {
    crate::conv::bn_act(bn, xs, train, FusedActivation::Relu6)
}

/// Mobile inverted bottleneck block without squeeze-excitation.
#[derive(Debug, Clone)]
struct MbConv {
    expand: Option<(Conv2d, BatchNorm)>,
    depthwise: DepthwiseConv2d,
    bn1: BatchNorm,
    project: Conv2d,
    bn2: BatchNorm,
    skip: bool,
    drop_connect: f64,
}

impl MbConv {
    fn new(
        k: usize,
        stride: usize,
        expand: usize,
        cin: usize,
        cout: usize,
        drop_connect: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        let mid = cin * expand;
        let init = ConvInit::TorchDefault;
        let expand = if expand != 1 {
            Some((
                conv2d(cin, mid, 1, 1, 0, false, init, vb.pp("_expand_conv"))?,
                bn(mid, vb.pp("_bn0"))?,
            ))
        } else {
            None
        };
        Ok(Self {
            expand,
            depthwise: DepthwiseConv2d::new(mid, k, stride, DepthwisePadding::TfSame, init, vb.pp("_depthwise_conv"))?,
            bn1: bn(mid, vb.pp("_bn1"))?,
            project: conv2d(mid, cout, 1, 1, 0, false, init, vb.pp("_project_conv"))?,
            bn2: bn(cout, vb.pp("_bn2"))?,
            skip: stride == 1 && cin == cout,
            drop_connect,
        })
    }
}

impl ModuleT for MbConv {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = xs.clone();
        if let Some((conv, norm)) = &self.expand {
            x = norm_relu6_t(norm, &conv.forward_act(&x, FusedActivation::Identity)?, train)?;
        }
        x = norm_relu6_t(&self.bn1, &self.depthwise.forward(&x)?, train)?;
        x = norm_t(
            &self.bn2,
            &self.project.forward_act(&x, FusedActivation::Identity)?,
            train,
        )?;
        if !self.skip {
            return Ok(x);
        }
        if train && self.drop_connect > 0.0 {
            // Keep each sample's branch with probability 1 - p, rescaled by 1 / (1 - p).
            let keep = 1.0 - self.drop_connect;
            let b = x.dim(0)?;
            let u = Tensor::rand(0f32, 1f32, (b, 1, 1, 1), x.device())?.to_dtype(x.dtype())?;
            let mask = (u.ge(self.drop_connect)?.to_dtype(x.dtype())? / keep)?;
            x = x.broadcast_mul(&mask)?;
        }
        x + xs
    }
}

/// EfficientNet-Lite0; see the module docs for layout and names.
///
/// [`Backbone::features`] is the 1280-d global average of the head convolution's
/// output (after `_bn1` and ReLU6); the head is `Dropout(0.2)` + `_fc`.
#[derive(Debug, Clone)]
pub struct EfficientNetLite0 {
    conv_stem: SameConv2d,
    bn0: BatchNorm,
    blocks: Vec<MbConv>,
    conv_head: Conv2d,
    bn1: BatchNorm,
    fc: Head,
    /// Stage (1..=7, see [`Backbone::stages`]) of each block.
    block_stage: Vec<usize>,
    frozen: FrozenStages,
}

impl EfficientNetLite0 {
    pub const DROPOUT: f32 = 0.2;
    pub const DROP_CONNECT: f64 = 0.2;
    pub const FEATURES: usize = 1280;
    pub const NUM_BLOCKS: usize = 16;

    pub fn new(in_channels: usize, num_classes: usize, vb: VarBuilder) -> Result<Self> {
        let init = ConvInit::TorchDefault;
        let conv_stem = SameConv2d::new(in_channels, 32, 3, 2, init, vb.pp("_conv_stem"))?;
        let bn0 = bn(32, vb.pp("_bn0"))?;
        let vblocks = vb.pp("_blocks");
        let mut blocks = Vec::with_capacity(Self::NUM_BLOCKS);
        let mut block_stage = Vec::with_capacity(Self::NUM_BLOCKS);
        for (stage, &(repeats, k, stride, expand, cin, cout)) in LITE0_STAGES.iter().enumerate() {
            for r in 0..repeats {
                block_stage.push(stage + 1);
                let n = blocks.len();
                let rate = Self::DROP_CONNECT * n as f64 / Self::NUM_BLOCKS as f64;
                let (s, i) = if r == 0 { (stride, cin) } else { (1, cout) };
                blocks.push(MbConv::new(k, s, expand, i, cout, rate, vblocks.pp(n.to_string()))?);
            }
        }
        let conv_head = conv2d(320, Self::FEATURES, 1, 1, 0, false, init, vb.pp("_conv_head"))?;
        let bn1 = bn(Self::FEATURES, vb.pp("_bn1"))?;
        let fc = Head::new(Self::FEATURES, num_classes, Self::DROPOUT, vb.pp("_fc"))?;
        Ok(Self {
            conv_stem,
            bn0,
            blocks,
            conv_head,
            bn1,
            fc,
            block_stage,
            frozen: FrozenStages::default(),
        })
    }

    /// The head convolution's activations, `[B, 1280, ceil(H/32), ceil(W/32)]`.
    pub fn feature_map(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let f = &self.frozen;
        let mut x = f.cut(
            0,
            norm_relu6_t(&self.bn0, &self.conv_stem.forward(xs)?, f.train(0, train))?,
        )?;
        for (b, &stage) in self.blocks.iter().zip(&self.block_stage) {
            // Cutting after every block of the last frozen stage cuts after its last.
            x = f.cut(stage, b.forward_t(&x, f.train(stage, train))?)?;
        }
        let head_stage = LITE0_STAGES.len() + 1;
        let head_train = f.train(head_stage, train);
        f.cut(
            head_stage,
            norm_relu6_t(
                &self.bn1,
                &self.conv_head.forward_act(&x, FusedActivation::Identity)?,
                head_train,
            )?,
        )
    }
}

impl Backbone for EfficientNetLite0 {
    fn features(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        global_avg_pool(&self.feature_map(xs, train)?)
    }
    fn feature_dim(&self) -> usize {
        Self::FEATURES
    }
    fn head_prefix(&self) -> &'static str {
        "_fc"
    }
    /// `stem` (`_conv_stem`, `_bn0`), the seven block stages of the module docs'
    /// table (`_blocks.{n}`), then `conv_head` (`_conv_head`, `_bn1`).
    fn stages(&self) -> Vec<Stage> {
        let mut s = vec![Stage::new("stem", &["_conv_stem", "_bn0"])];
        let mut n = 0;
        for (i, &(repeats, ..)) in LITE0_STAGES.iter().enumerate() {
            let blocks: Vec<String> = (n..n + repeats).map(|b| format!("_blocks.{b}")).collect();
            let prefixes: Vec<&str> = blocks.iter().map(String::as_str).collect();
            s.push(Stage::new(format!("stage{}", i + 1), &prefixes));
            n += repeats;
        }
        s.push(Stage::new("conv_head", &["_conv_head", "_bn1"]));
        s
    }
    fn set_stage_modes(&self, modes: StageModes) -> Result<()> {
        self.frozen.set(modes, LITE0_STAGES.len() + 2)
    }
    fn frozen_stages(&self) -> usize {
        self.frozen.get()
    }
}

impl ModuleT for EfficientNetLite0 {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.fc.forward_t(&self.features(xs, train)?, train)
    }
}
