//! Convolution and batch-norm layers with PyTorch tensor names and init choices.
//!
//! Every weight is created through the `VarBuilder` (so [`crate::SeededVarMap`]
//! seeds it) under the torch names `weight` `[out, in / groups, k, k]` and `bias`
//! `[out]`; batch norm uses `weight`, `bias`, `running_mean`, `running_var`.
//!
//! The layers stay candle-nn types; the models run them through [`Conv2dExt`] and
//! [`bn_act`], which use digitlab's CPU kernels (im2col + gemm convolution with a
//! fused bias and ReLU, one-pass eval-mode batch norm) and candle's own ops on
//! other devices.
use crate::layers::FusedActivation;
use crate::pool::{window_views, Window};
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use candle_nn::{BatchNorm, BatchNormConfig, Conv2d, Conv2dConfig, Init, VarBuilder};

/// How a convolution's weights start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvInit {
    /// PyTorch's `nn.Conv2d` default: weight and bias uniform in ±1/sqrt(fan_in).
    TorchDefault,
    /// torchvision's ResNet/VGG init: `kaiming_normal_(mode="fan_out",
    /// nonlinearity="relu")` weights, zero bias.
    KaimingFanOut,
}

impl ConvInit {
    fn weight(self, fan_in: usize) -> Init {
        match self {
            ConvInit::TorchDefault => {
                let b = 1.0 / (fan_in.max(1) as f64).sqrt();
                Init::Uniform { lo: -b, up: b }
            }
            ConvInit::KaimingFanOut => Init::Kaiming {
                dist: NormalOrUniform::Normal,
                fan: FanInOut::FanOut,
                non_linearity: NonLinearity::ReLU,
            },
        }
    }
    fn bias(self, fan_in: usize) -> Init {
        match self {
            ConvInit::TorchDefault => self.weight(fan_in),
            ConvInit::KaimingFanOut => Init::Const(0.0),
        }
    }
}

/// Forward of a `candle_nn::Conv2d` through digitlab's convolution kernel.
pub trait Conv2dExt {
    /// `act(conv(x) + b)`: the same as `Module::forward` followed by `act`, in one op
    /// on the CPU.
    fn forward_act(&self, xs: &Tensor, act: FusedActivation) -> Result<Tensor>;
}

impl Conv2dExt for Conv2d {
    fn forward_act(&self, xs: &Tensor, act: FusedActivation) -> Result<Tensor> {
        let c = self.config();
        let p = digitlab_kernels::Conv2dParams {
            padding: c.padding,
            stride: c.stride,
            dilation: c.dilation,
            groups: c.groups,
        };
        let y = digitlab_kernels::conv2d(xs, self.weight(), self.bias(), p, act)?;
        crate::summary::record_conv("Conv2d", self.weight(), &y);
        Ok(y)
    }
}

/// `act(bn(x))` in train or eval mode, the one batch-norm entry of the models. On
/// CPU f32 each mode is one of digitlab's kernels: train mode
/// [`digitlab_kernels::batch_norm_train`] (batch statistics, running statistics
/// updated in place, the activation fused in), eval mode
/// [`digitlab_kernels::batch_norm_eval`] (one per-channel pass when nothing is
/// differentiated). Elsewhere candle_nn's batch norm runs (half-precision inputs
/// normalised in f32), followed by the activation.
pub fn bn_act(bn: &BatchNorm, xs: &Tensor, train: bool, act: FusedActivation) -> Result<Tensor> {
    let y = if train {
        batch_norm_train_act(bn, xs, act)?
    } else {
        digitlab_kernels::batch_norm_eval(
            xs,
            bn.running_mean(),
            bn.running_var(),
            bn.weight_and_bias(),
            bn.eps(),
            act,
        )?
    };
    crate::summary::record_batch_norm(bn, &y);
    Ok(y)
}

/// Train-mode `act(bn(x))`: the kernel where it applies, else candle_nn's batch norm.
fn batch_norm_train_act(bn: &BatchNorm, xs: &Tensor, act: FusedActivation) -> Result<Tensor> {
    let half = digitlab_kernels::precision::is_half(xs.dtype());
    if !half {
        let stats = digitlab_kernels::norm_train::RunningStats {
            mean: bn.running_mean(),
            var: bn.running_var(),
            momentum: bn.momentum(),
        };
        if let Some(y) = digitlab_kernels::batch_norm_train(xs, stats, bn.weight_and_bias(), bn.eps(), act)? {
            return Ok(y);
        }
    }
    let y = if half {
        bn.forward_train(&xs.to_dtype(candle_core::DType::F32)?)?
            .to_dtype(xs.dtype())?
    } else {
        bn.forward_train(xs)?
    };
    match act {
        FusedActivation::Relu => crate::layers::relu(&y),
        act => act.apply_reference(&y),
    }
}

/// A square `kernel` x `kernel` convolution (`groups = 1`) with symmetric padding.
#[allow(clippy::too_many_arguments)]
pub fn conv2d(
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    bias: bool,
    init: ConvInit,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let fan_in = in_channels * kernel * kernel;
    let w = vb.get_with_hints(
        (out_channels, in_channels, kernel, kernel),
        "weight",
        init.weight(fan_in),
    )?;
    let b = if bias {
        Some(vb.get_with_hints(out_channels, "bias", init.bias(fan_in))?)
    } else {
        None
    };
    let cfg = Conv2dConfig {
        padding,
        stride,
        ..Default::default()
    };
    Ok(Conv2d::new(w, b, cfg))
}

/// `nn.BatchNorm2d(channels, eps, momentum)`: weight 1, bias 0, running mean 0,
/// running var 1. `momentum` has PyTorch's meaning (weight of the new batch).
pub fn batch_norm2d(channels: usize, eps: f64, momentum: f64, vb: VarBuilder) -> Result<BatchNorm> {
    candle_nn::batch_norm(
        channels,
        BatchNormConfig {
            eps,
            remove_mean: true,
            affine: true,
            momentum,
        },
        vb,
    )
}

/// Batch norm with PyTorch's defaults (`eps = 1e-5`, `momentum = 0.1`).
pub fn bn(channels: usize, vb: VarBuilder) -> Result<BatchNorm> {
    batch_norm2d(channels, 1e-5, 0.1, vb)
}

/// A convolution with TensorFlow "SAME" padding computed from each input's size
/// (`efficientnet_pytorch`'s `Conv2dDynamicSamePadding`; its static variant, built
/// for 224 px, pads identically whenever the input is 224 px — or any size where
/// every stride-2 layer sees an even size, e.g. 32, 64, 96, 128 px).
#[derive(Debug, Clone)]
pub struct SameConv2d {
    conv: Conv2d,
    kernel: usize,
    stride: usize,
}

impl SameConv2d {
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        init: ConvInit,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            conv: conv2d(in_channels, out_channels, kernel, stride, 0, false, init, vb)?,
            kernel,
            stride,
        })
    }
}

impl Module for SameConv2d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = xs.dims4()?;
        let wy = Window::tf_same(self.kernel, self.stride, h);
        let wx = Window::tf_same(self.kernel, self.stride, w);
        let xs = xs
            .pad_with_zeros(2, wy.pad_before, wy.pad_after)?
            .pad_with_zeros(3, wx.pad_before, wx.pad_after)?;
        self.conv.forward_act(&xs, FusedActivation::Identity)
    }
}

/// Padding of a [`DepthwiseConv2d`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DepthwisePadding {
    /// The same amount on every side (PyTorch `padding=p`).
    Symmetric(usize),
    /// TensorFlow "SAME", computed from each input's size.
    TfSame,
}

/// Depthwise convolution (`groups = channels`, one `k` x `k` filter per channel,
/// no bias), weight `[C, 1, k, k]` named `weight`.
///
/// candle runs a grouped convolution as one convolution per group, which is very
/// slow for hundreds of channels. On the CPU (f32) this is digitlab's depthwise
/// kernel; elsewhere it computes the `k * k` shifted, strided views of the input
/// once and accumulates `view * weight[:, 0, dy, dx]` ([`DepthwiseConv2d::forward_views`]),
/// which is differentiable but slow to differentiate.
#[derive(Debug, Clone)]
pub struct DepthwiseConv2d {
    weight: Tensor,
    kernel: usize,
    stride: usize,
    padding: DepthwisePadding,
}

impl DepthwiseConv2d {
    pub fn new(
        channels: usize,
        kernel: usize,
        stride: usize,
        padding: DepthwisePadding,
        init: ConvInit,
        vb: VarBuilder,
    ) -> Result<Self> {
        let weight = vb.get_with_hints((channels, 1, kernel, kernel), "weight", init.weight(kernel * kernel))?;
        Ok(Self {
            weight,
            kernel,
            stride,
            padding,
        })
    }
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

impl DepthwiseConv2d {
    /// Windows along H and W for an input of `h` x `w`.
    fn windows(&self, h: usize, w: usize) -> (Window, Window) {
        match self.padding {
            DepthwisePadding::Symmetric(p) => (
                Window::symmetric(self.kernel, self.stride, p),
                Window::symmetric(self.kernel, self.stride, p),
            ),
            DepthwisePadding::TfSame => (
                Window::tf_same(self.kernel, self.stride, h),
                Window::tf_same(self.kernel, self.stride, w),
            ),
        }
    }

    /// The forward pass as `k * k` shifted, strided views of the input times
    /// per-channel weights (any device and dtype; the path off the CPU, and the
    /// reference the CPU kernel is tested against).
    pub fn forward_views(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        let (wy, wx) = self.windows(h, w);
        let (views, oh, ow) = window_views(xs, wy, wx, 0.0)?;
        // [C, k*k] -> one [1, C, 1, 1, 1, 1] factor per kernel offset.
        let wk = self.weight.reshape((c, self.kernel * self.kernel))?;
        let mut acc: Option<Tensor> = None;
        for (i, v) in views.iter().enumerate() {
            let f = wk.narrow(1, i, 1)?.reshape((1, c, 1, 1, 1, 1))?;
            let term = v.broadcast_mul(&f)?;
            acc = Some(match acc {
                None => term,
                Some(a) => (a + term)?,
            });
        }
        acc.expect("kernel has at least one tap").reshape((b, c, oh, ow))
    }
}

impl Module for DepthwiseConv2d {
    /// On the CPU in f32, digitlab's depthwise kernel (direct loops, forward and
    /// backward); elsewhere [`DepthwiseConv2d::forward_views`]. Both add the taps
    /// to each output in the same order, so their outputs agree exactly.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
        let y = if cpu_f32(xs) && cpu_f32(&self.weight) {
            let (_, _, h, w) = xs.dims4()?;
            let (wy, wx) = self.windows(h, w);
            let p = digitlab_kernels::DepthwiseParams {
                stride: self.stride,
                pad_top: wy.pad_before,
                pad_bottom: wy.pad_after,
                pad_left: wx.pad_before,
                pad_right: wx.pad_after,
            };
            digitlab_kernels::depthwise_conv2d(xs, &self.weight, p)?
        } else {
            self.forward_views(xs)?
        };
        crate::summary::record_conv("Conv2d (depthwise)", &self.weight, &y);
        Ok(y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;

    fn input(b: usize, c: usize, h: usize, w: usize) -> Tensor {
        let n = b * c * h * w;
        let v: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.37 + 0.2).sin()).collect();
        Tensor::from_vec(v, (b, c, h, w), &Device::Cpu).unwrap()
    }

    #[test]
    fn depthwise_matches_grouped_conv() {
        let map = VarMap::new();
        let vb = crate::SeededVarMap::var_builder(&map, 3, DType::F32, &Device::Cpu);
        for &(k, s, p, h) in &[
            (3usize, 1usize, 1usize, 7usize),
            (3, 2, 1, 8),
            (5, 2, 2, 9),
            (5, 1, 2, 6),
        ] {
            let dw = DepthwiseConv2d::new(
                4,
                k,
                s,
                DepthwisePadding::Symmetric(p),
                ConvInit::TorchDefault,
                vb.pp(format!("dw{k}{s}{h}")),
            )
            .unwrap();
            let x = input(2, 4, h, h + 1);
            let got = dw.forward(&x).unwrap();
            let want = x.conv2d(dw.weight(), p, s, 1, 4).unwrap();
            assert_eq!(got.dims(), want.dims());
            let err: f32 = (got - want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(err < 1e-5, "k{k} s{s} p{p}: {err}");
        }
    }

    #[test]
    fn same_padding_conv_matches_explicit_padding() {
        let map = VarMap::new();
        let vb = crate::SeededVarMap::var_builder(&map, 4, DType::F32, &Device::Cpu);
        let conv = SameConv2d::new(3, 5, 3, 2, ConvInit::TorchDefault, vb.pp("c")).unwrap();
        let x = input(1, 3, 10, 10);
        // ceil(10 / 2) = 5 outputs; padding total 1, all of it after.
        let y = conv.forward(&x).unwrap();
        assert_eq!(y.dims(), &[1, 5, 5, 5]);
        let w = map
            .get((5, 3, 3, 3), "c.weight", Init::Const(0.), DType::F32, &Device::Cpu)
            .unwrap();
        let xp = x.pad_with_zeros(2, 0, 1).unwrap().pad_with_zeros(3, 0, 1).unwrap();
        let want = xp.conv2d(&w, 0, 2, 1, 1).unwrap();
        let err: f32 = (y - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(err < 1e-6);
    }

    /// max |a - b| / max(max |b|, 1e-6).
    fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
        let d: f32 = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap();
        let s: f32 = b.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
        d / s.max(1e-6)
    }

    #[test]
    fn depthwise_kernel_matches_the_views_forward_and_backward() {
        let map = VarMap::new();
        let vb = crate::SeededVarMap::var_builder(&map, 6, DType::F32, &Device::Cpu);
        // (b, c, h, w, k, stride, padding)
        let cases = [
            (
                1usize,
                3usize,
                7usize,
                7usize,
                3usize,
                1usize,
                DepthwisePadding::Symmetric(1),
            ),
            (2, 5, 8, 9, 3, 2, DepthwisePadding::Symmetric(1)),
            (3, 7, 9, 9, 5, 2, DepthwisePadding::Symmetric(2)),
            (2, 6, 8, 8, 3, 2, DepthwisePadding::TfSame),
            (1, 7, 9, 7, 3, 2, DepthwisePadding::TfSame),
            (3, 5, 7, 10, 5, 2, DepthwisePadding::TfSame),
            (2, 11, 6, 5, 5, 1, DepthwisePadding::TfSame),
            (4, 37, 16, 16, 3, 1, DepthwisePadding::TfSame),
            (2, 3, 1, 1, 5, 1, DepthwisePadding::TfSame),
            (2, 3, 2, 1, 5, 2, DepthwisePadding::TfSame),
        ];
        for (i, &(b, c, h, w, k, s, pad)) in cases.iter().enumerate() {
            let what = format!("b{b} c{c} {h}x{w} k{k} s{s} {pad:?}");
            let dw = DepthwiseConv2d::new(c, k, s, pad, ConvInit::TorchDefault, vb.pp(format!("dw{i}"))).unwrap();
            let x = Var::from_tensor(&input(b, c, h, w)).unwrap();
            let got = dw.forward(x.as_tensor()).unwrap();
            let want = dw.forward_views(x.as_tensor()).unwrap();
            assert_eq!(got.dims(), want.dims(), "{what}");
            // Same products, added in the same order: equal values.
            let (gv, wv): (Vec<f32>, Vec<f32>) = (
                got.flatten_all().unwrap().to_vec1().unwrap(),
                want.flatten_all().unwrap().to_vec1().unwrap(),
            );
            assert_eq!(gv, wv, "{what}: forward");
            let r = input(b, c, got.dim(2).unwrap(), got.dim(3).unwrap()).cos().unwrap();
            let gk = (&got * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let gr = (&want * &r).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, t) in [("dx", x.as_tensor()), ("dw", dw.weight())] {
                let e = rel_err(gk.get(t).unwrap(), gr.get(t).unwrap());
                assert!(e < 2e-5, "{what}: {name} rel err {e}");
            }
        }
    }

    #[test]
    fn depthwise_backward() {
        let map = VarMap::new();
        let vb = crate::SeededVarMap::var_builder(&map, 5, DType::F32, &Device::Cpu);
        let dw = DepthwiseConv2d::new(3, 3, 2, DepthwisePadding::TfSame, ConvInit::TorchDefault, vb).unwrap();
        let x = Var::from_tensor(&input(1, 3, 6, 6)).unwrap();
        let y = dw.forward(x.as_tensor()).unwrap();
        assert_eq!(y.dims(), &[1, 3, 3, 3]);
        let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        assert!(g.get(dw.weight()).is_some());
        assert!(g.get(x.as_tensor()).is_some());
    }
}
