//! VGG-11/13/16/19, with or without batch norm, as torchvision builds them.
//!
//! Tensor names are torchvision's: `features.{n}` numbers every layer of the
//! feature `nn.Sequential` — conv, (batch norm,) ReLU, and each max-pool — so with
//! `batch_norm = false` the convolutions of VGG-16 are `features.0, 2, 5, 7, 10,
//! ...` and with `batch_norm = true` they are `features.0, 3, 7, 10, 14, ...` with
//! their batch norms one index later. The classifier is `classifier.0`
//! (25088 -> 4096), `classifier.3` (4096 -> 4096) and `classifier.6` (4096 -> K,
//! the head), with ReLU and `Dropout(0.5)` in between.
//!
//! The conv features go through adaptive average pooling to 7x7, exactly as in
//! torchvision: identity at 224 px, replication of the 1x1 map at 32 px.
//! Inputs smaller than 32 px (28 px MNIST) are zero-padded to 32 px first, since
//! five 2x2 max-pools need at least 32 px.
use crate::backbone::{Backbone, FrozenStages, Head, Stage, StageModes};
use crate::conv::{bn, bn_act, conv2d, Conv2dExt, ConvInit};
use crate::dropout::SeededDropout;
use crate::layers::{FusedActivation, LinearExt};
use crate::pool::{adaptive_avg_pool2d, max_pool2d};
use candle_core::{ModuleT, Result, Tensor};
use candle_nn::{BatchNorm, Conv2d, Init, Linear, VarBuilder};

/// `vgg { depth = 11 | 13 | 16 | 19, batch_norm = false }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VggConfig {
    pub depth: usize,
    /// Batch norm after every convolution (torchvision's `vggNN_bn`).
    #[serde(default)]
    pub batch_norm: bool,
}

/// One entry of torchvision's VGG config: a conv of that many channels, or `M`.
const M: usize = 0;

impl VggConfig {
    pub const DEPTHS: &'static [usize] = &[11, 13, 16, 19];

    fn layout(&self) -> Result<&'static [usize]> {
        Ok(match self.depth {
            11 => &[64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M],
            13 => &[64, 64, M, 128, 128, M, 256, 256, M, 512, 512, M, 512, 512, M],
            16 => &[
                64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512, M,
            ],
            19 => &[
                64, 64, M, 128, 128, M, 256, 256, 256, 256, M, 512, 512, 512, 512, M, 512, 512, 512, 512, M,
            ],
            d => candle_core::bail!("vgg depth must be one of 11, 13, 16, 19, got {d}"),
        })
    }
}

#[derive(Debug, Clone)]
enum Layer {
    Conv(Conv2d, Option<BatchNorm>),
    MaxPool,
}

/// A torchvision VGG; see the module docs for names.
///
/// [`Backbone::features`] is the 4096-d penultimate embedding: the output of the
/// ReLU after `classifier.3` (`classifier.4`), before the last dropout. The head is
/// `Dropout(0.5)` (`classifier.5`) + `classifier.6`. The pooled conv map is
/// [`Vgg::conv_features`].
#[derive(Debug, Clone)]
pub struct Vgg {
    layers: Vec<Layer>,
    fc1: Linear,
    fc2: Linear,
    dropout: SeededDropout,
    head: Head,
    stages: Vec<Stage>,
    frozen: FrozenStages,
}

/// torchvision's VGG linear init: weight N(0, 0.01), bias 0.
fn vgg_linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let w = vb.get_with_hints((out_dim, in_dim), "weight", Init::Randn { mean: 0.0, stdev: 0.01 })?;
    let b = vb.get_with_hints(out_dim, "bias", Init::Const(0.0))?;
    Ok(Linear::new(w, Some(b)))
}

impl Vgg {
    pub const DROPOUT: f32 = 0.5;

    pub fn new(cfg: &VggConfig, in_channels: usize, num_classes: usize, vb: VarBuilder) -> Result<Self> {
        let vf = vb.pp("features");
        let mut layers = Vec::new();
        let mut idx = 0;
        let mut cin = in_channels;
        // One stage per conv block (the convs between two max-pools).
        let mut stages = vec![];
        let mut block: Vec<String> = vec![];
        for &v in cfg.layout()? {
            if v == M {
                layers.push(Layer::MaxPool);
                idx += 1;
                let prefixes: Vec<&str> = block.iter().map(String::as_str).collect();
                stages.push(Stage::new(format!("block{}", stages.len() + 1), &prefixes));
                block.clear();
                continue;
            }
            block.push(format!("features.{idx}"));
            if cfg.batch_norm {
                block.push(format!("features.{}", idx + 1));
            }
            let conv = conv2d(cin, v, 3, 1, 1, true, ConvInit::KaimingFanOut, vf.pp(idx.to_string()))?;
            let norm = if cfg.batch_norm {
                Some(bn(v, vf.pp((idx + 1).to_string()))?)
            } else {
                None
            };
            layers.push(Layer::Conv(conv, norm));
            idx += if cfg.batch_norm { 3 } else { 2 };
            cin = v;
        }
        let vc = vb.pp("classifier");
        let fc1 = vgg_linear(512 * 7 * 7, 4096, vc.pp("0"))?;
        let fc2 = vgg_linear(4096, 4096, vc.pp("3"))?;
        let head = Head::from_linear(vgg_linear(4096, num_classes, vc.pp("6"))?, Self::DROPOUT);
        stages.push(Stage::new("classifier", &["classifier.0", "classifier.3"]));
        Ok(Self {
            layers,
            fc1,
            fc2,
            dropout: SeededDropout::new(Self::DROPOUT, "classifier.dropout"),
            head,
            stages,
            frozen: FrozenStages::default(),
        })
    }

    /// The conv features after adaptive average pooling, `[B, 512, 7, 7]`.
    pub fn conv_features(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let (_, _, h, w) = xs.dims4()?;
        let mut x = xs.clone();
        if h < 32 {
            x = x.pad_with_zeros(2, (32 - h) / 2, 32 - h - (32 - h) / 2)?;
        }
        if w < 32 {
            x = x.pad_with_zeros(3, (32 - w) / 2, 32 - w - (32 - w) / 2)?;
        }
        // Stage k is the k-th conv block, which ends at the k-th max-pool.
        let mut block = 0;
        for layer in &self.layers {
            x = match layer {
                Layer::Conv(conv, norm) => match norm {
                    Some(n) => bn_act(
                        n,
                        &conv.forward_act(&x, FusedActivation::Identity)?,
                        self.frozen.train(block, train),
                        FusedActivation::Relu,
                    )?,
                    None => conv.forward_act(&x, FusedActivation::Relu)?,
                },
                Layer::MaxPool => {
                    block += 1;
                    self.frozen.cut(block - 1, max_pool2d(&x, 2, 2, 0)?)?
                }
            };
        }
        adaptive_avg_pool2d(&x, 7, 7)
    }
}

impl Backbone for Vgg {
    fn features(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let x = self.conv_features(xs, train)?.flatten_from(1)?;
        let x = self.fc1.forward_act(&x, FusedActivation::Relu)?;
        let classifier_stage = self.stages.len() - 1;
        let x = self.dropout.forward_t(&x, self.frozen.train(classifier_stage, train))?;
        self.frozen
            .cut(classifier_stage, self.fc2.forward_act(&x, FusedActivation::Relu)?)
    }
    fn feature_dim(&self) -> usize {
        4096
    }
    fn head_prefix(&self) -> &'static str {
        "classifier.6"
    }
    /// `block1` .. `block5` (the convs, with their batch norms, between max-pools
    /// in `features.*`), then `classifier` (`classifier.0`, `classifier.3`).
    fn stages(&self) -> Vec<Stage> {
        self.stages.clone()
    }
    fn set_stage_modes(&self, modes: StageModes) -> Result<()> {
        self.frozen.set(modes, self.stages.len())
    }
    fn frozen_stages(&self) -> usize {
        self.frozen.get()
    }
}

impl ModuleT for Vgg {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.head.forward_t(&self.features(xs, train)?, train)
    }
}
