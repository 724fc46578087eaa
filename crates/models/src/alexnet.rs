//! AlexNet as torchvision builds it (the "one weird trick" variant of
//! `torchvision.models.alexnet`, 61.1 M parameters).
//!
//! Tensor names are torchvision's: the convolutions are `features.{0,3,6,8,10}`
//! (11x11 stride 4 -> 64, 5x5 -> 192, 3x3 -> 384, 256, 256, each followed by a ReLU,
//! max-pools 3x3 stride 2 after the first, second and last), the conv map is
//! average-pooled to 6x6 (adaptive, as in torchvision), and the classifier is
//! `Dropout(0.5)`, `classifier.1` (9216 -> 4096), ReLU, `Dropout(0.5)`,
//! `classifier.4` (4096 -> 4096), ReLU, `classifier.6` (4096 -> K, the head).
//! Initialisation is PyTorch's default for every layer (torchvision's AlexNet has
//! no init of its own).
//!
//! The three 3x3 stride-2 pools need inputs of at least 63x63 pixels; smaller
//! inputs are refused when the model is built (resize them, e.g. to 224 px).
use crate::backbone::{Backbone, FrozenStages, Head, Stage, StageModes};
use crate::conv::{conv2d, Conv2dExt, ConvInit};
use crate::dropout::SeededDropout;
use crate::layers::{linear, FusedActivation, LinearExt};
use crate::pool::{adaptive_avg_pool2d, max_pool2d};
use candle_core::{ModuleT, Result, Tensor};
use candle_nn::{Conv2d, Linear, VarBuilder};

/// A torchvision AlexNet; see the module docs for names.
///
/// [`Backbone::features`] is the 4096-d penultimate embedding: the output of the
/// ReLU after `classifier.4`. The head is `classifier.6` alone (torchvision has no
/// dropout right before it). The pooled conv map is [`AlexNet::conv_features`].
#[derive(Debug, Clone)]
pub struct AlexNet {
    convs: [Conv2d; 5],
    fc1: Linear,
    fc2: Linear,
    dropout: SeededDropout,
    head: Head,
    frozen: FrozenStages,
}

impl AlexNet {
    pub const DROPOUT: f32 = 0.5;
    /// Smallest input side the three stride-2 max-pools accept.
    pub const MIN_SIDE: usize = 63;
    /// Width of [`Backbone::features`].
    pub const FEATURE_DIM: usize = 4096;
    /// Index of the `classifier` stage in [`Backbone::stages`].
    const CLASSIFIER_STAGE: usize = 3;

    pub fn new(in_channels: usize, height: usize, width: usize, num_classes: usize, vb: VarBuilder) -> Result<Self> {
        if height.min(width) < Self::MIN_SIDE {
            candle_core::bail!(
                "alexnet needs inputs of at least {0}x{0} pixels, got {height}x{width}; resize the images \
                 (e.g. to 224x224, its ImageNet size)",
                Self::MIN_SIDE
            )
        }
        let vf = vb.pp("features");
        let conv = |cin, cout, k, s, p, idx: usize| {
            conv2d(cin, cout, k, s, p, true, ConvInit::TorchDefault, vf.pp(idx.to_string()))
        };
        let convs = [
            conv(in_channels, 64, 11, 4, 2, 0)?,
            conv(64, 192, 5, 1, 2, 3)?,
            conv(192, 384, 3, 1, 1, 6)?,
            conv(384, 256, 3, 1, 1, 8)?,
            conv(256, 256, 3, 1, 1, 10)?,
        ];
        let vc = vb.pp("classifier");
        Ok(Self {
            convs,
            fc1: linear(256 * 6 * 6, 4096, vc.pp("1"))?,
            fc2: linear(4096, 4096, vc.pp("4"))?,
            dropout: SeededDropout::new(Self::DROPOUT, "classifier.dropout"),
            head: Head::new(4096, num_classes, 0.0, vc.pp("6"))?,
            frozen: FrozenStages::default(),
        })
    }

    /// The conv features after adaptive average pooling, `[B, 256, 6, 6]`.
    pub fn conv_features(&self, xs: &Tensor) -> Result<Tensor> {
        let relu = FusedActivation::Relu;
        let [c0, c1, c2, c3, c4] = &self.convs;
        // Stages end at the max-pools (backward stops at the last frozen one).
        let f = &self.frozen;
        let x = f.cut(0, max_pool2d(&c0.forward_act(xs, relu)?, 3, 2, 0)?)?;
        let x = f.cut(1, max_pool2d(&c1.forward_act(&x, relu)?, 3, 2, 0)?)?;
        let x = c2.forward_act(&x, relu)?;
        let x = c3.forward_act(&x, relu)?;
        let x = f.cut(2, max_pool2d(&c4.forward_act(&x, relu)?, 3, 2, 0)?)?;
        adaptive_avg_pool2d(&x, 6, 6)
    }
}

impl Backbone for AlexNet {
    fn features(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let relu = FusedActivation::Relu;
        let x = self.conv_features(xs)?.flatten_from(1)?;
        // Only the classifier stage has train-mode behaviour (dropout); no batch norm.
        let train = self.frozen.train(Self::CLASSIFIER_STAGE, train);
        let x = self.fc1.forward_act(&self.dropout.forward_t(&x, train)?, relu)?;
        self.frozen.cut(
            Self::CLASSIFIER_STAGE,
            self.fc2.forward_act(&self.dropout.forward_t(&x, train)?, relu)?,
        )
    }
    fn feature_dim(&self) -> usize {
        Self::FEATURE_DIM
    }
    fn head_prefix(&self) -> &'static str {
        "classifier.6"
    }
    /// `block1` (`features.0`), `block2` (`features.3`), `block3` (`features.6`,
    /// `.8`, `.10`: the convs between max-pools), then `classifier`
    /// (`classifier.1`, `classifier.4`).
    fn stages(&self) -> Vec<Stage> {
        vec![
            Stage::new("block1", &["features.0"]),
            Stage::new("block2", &["features.3"]),
            Stage::new("block3", &["features.6", "features.8", "features.10"]),
            Stage::new("classifier", &["classifier.1", "classifier.4"]),
        ]
    }
    fn set_stage_modes(&self, modes: StageModes) -> Result<()> {
        self.frozen.set(modes, Self::CLASSIFIER_STAGE + 1)
    }
    fn frozen_stages(&self) -> usize {
        self.frozen.get()
    }
}

impl ModuleT for AlexNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.head.forward_t(&self.features(xs, train)?, train)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SeededVarMap;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    fn build(side: usize, classes: usize) -> Result<(AlexNet, VarMap)> {
        let map = VarMap::new();
        let vb = SeededVarMap::var_builder(&map, 3, DType::F32, &Device::Cpu);
        Ok((AlexNet::new(3, side, side, classes, vb)?, map))
    }

    #[test]
    fn shapes_parameters_and_dropout() {
        let (m, map) = build(63, 10).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 3, 63, 63), &Device::Cpu).unwrap();
        assert_eq!(m.conv_features(&x).unwrap().dims(), &[2, 256, 6, 6]);
        assert_eq!(m.features(&x, false).unwrap().dims(), &[2, 4096]);
        let eval = m.forward_t(&x, false).unwrap();
        assert_eq!(eval.dims(), &[2, 10]);
        // Eval is deterministic; train mode drops activations.
        let diff =
            |a: &Tensor, b: &Tensor| -> f32 { (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap() };
        assert_eq!(diff(&eval, &m.forward_t(&x, false).unwrap()), 0.0);
        assert!(diff(&eval, &m.forward_t(&x, true).unwrap()) > 0.0);
        // torchvision's alexnet(num_classes=10): 61,100,840 - 4097 * 990.
        assert_eq!(crate::count_parameters(&map), 61_100_840 - 4097 * 990);
        assert_eq!(m.head_prefix(), "classifier.6");
        // Every variable outside the head lies in exactly one stage.
        let stages = m.stages();
        for name in map.data().lock().unwrap().keys() {
            let n = stages.iter().filter(|s| s.contains(name)).count();
            assert_eq!(n, usize::from(!name.starts_with("classifier.6.")), "{name}");
        }
        // Freezing the classifier stage turns its dropout off.
        m.freeze_stages(4).unwrap();
        assert_eq!(diff(&eval, &m.forward_t(&x, true).unwrap()), 0.0);
        assert!(m.freeze_stages(5).is_err());
    }

    #[test]
    fn small_inputs_are_refused_with_the_minimum() {
        let e = build(32, 10).err().unwrap().to_string();
        assert!(e.contains("at least 63x63") && e.contains("32x32"), "{e}");
    }
}
