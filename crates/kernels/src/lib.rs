//! # digitlab-kernels
//!
//! Hand-written CPU kernels for the layers digitlab's models are made of, as candle
//! custom ops with a forward **and** a backward pass, so they sit behind the usual
//! `Module` API and `loss.backward()` works unchanged:
//!
//! | function | what it fuses / replaces |
//! |---|---|
//! | [`linear`] | `x @ w^T + b` (+ ReLU) in one op; the backward computes only the gradients that are needed, `dW` already in `[out, in]` layout |
//! | [`conv2d`] | im2col + gemm convolution (+ bias, + ReLU) with an im2col-based weight gradient and a col2im input gradient (candle's CPU backward goes through a direct `conv_transpose2d` loop) |
//! | [`depthwise_conv2d`] | depthwise convolution (one filter per channel, any stride and zero padding) as direct per-plane loops, forward and both gradients (candle runs one convolution per group) |
//! | [`max_pool2d`] | max pooling with any kernel, stride and padding, forward and backward (candle's backward needs kernel == stride) |
//! | [`relu`] | one pass forward, one pass backward |
//! | [`softmax_cross_entropy`] | per-sample `logsumexp(z) - z[y]` in one op, gradient `softmax(z) - onehot(y)` |
//! | [`batch_norm_eval`] | eval-mode batch norm as one per-channel affine pass (+ ReLU) |
//! | [`batch_norm_train`] | train-mode batch norm (+ ReLU): per-channel statistics in f64, running statistics updated in place, one affine pass; a two-pass backward (candle_nn's is about ten broadcast ops each way) |
//!
//! Every function checks its inputs and falls back to the equivalent composition
//! of candle's own ops whenever the fast path does not apply: tensors not on the
//! CPU (so CUDA keeps candle's kernels), dtypes other than f32 (f64 is also
//! supported by [`softmax_cross_entropy`]), or geometries the kernels do not cover
//! (grouped or dilated convolutions). The results agree with those references up
//! to float reassociation (tests in `tests/`). With bf16/f16 activations the f32
//! parameters are cast to the activations' dtype at use ([`precision`]).
//!
//! Matrix products all go through [`sgemm`]: the `gemm` crate by default, or Intel
//! MKL's `cblas_sgemm` with the cargo feature `mkl` (statically linked; needs
//! `MKLROOT`, which `cargo xtask mkl` provides), cut into blocks of the output that
//! run single-threaded on rayon's pool.
//!
//! Threads: products and loops stay on the calling thread for small shapes and use
//! up to [`threading::threads`] threads for big ones (see [`threading`]).
//! Process-wide settings, applied once on first use ([`runtime`]): denormals are
//! flushed to zero on the calling thread and candle's and rayon's worker threads
//! (x86-64; `DIGITLAB_KEEP_DENORMALS=1` keeps them), and glibc's malloc keeps
//! freed blocks of up to 32 MiB for reuse instead of returning them to the OS
//! (`DIGITLAB_DEFAULT_MALLOC=1` keeps glibc's defaults).
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use digitlab_kernels::{linear, Activation};
//! let x = Tensor::new(&[[1f32, -2.0]], &Device::Cpu)?;
//! let w = Tensor::new(&[[1f32, 1.0], [0.5, 0.0]], &Device::Cpu)?;
//! let b = Tensor::new(&[0f32, 1.0], &Device::Cpu)?;
//! // relu(x @ w^T + b) = relu([-1, 1.5])
//! let y = linear(&x, &w, Some(&b), Activation::Relu)?;
//! assert_eq!(y.to_vec2::<f32>()?, [[0.0, 1.5]]);
//! # Ok::<(), candle_core::Error>(())
//! ```
pub mod conv;
pub(crate) mod cpu;
pub mod denormal;
pub mod depthwise;
pub mod linear;
pub mod loss;
#[cfg(feature = "mkl")]
mod mkl;
pub mod norm;
pub mod norm_train;
pub mod pool;
pub mod precision;
pub mod relu;
pub mod runtime;
pub mod sgemm;
pub mod threading;

pub use conv::{conv2d, Conv2dParams};
pub use depthwise::{depthwise_conv2d, DepthwiseParams};
pub use linear::linear;
pub use loss::softmax_cross_entropy;
pub use norm::batch_norm_eval;
pub use norm_train::batch_norm_train;
pub use pool::max_pool2d;
pub use relu::relu;

/// Activation fused into the output of [`linear`] and [`conv2d`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activation {
    #[default]
    Identity,
    Relu,
    /// `min(max(x, 0), 6)` (MobileNet's and EfficientNet-Lite's activation).
    Relu6,
}

impl Activation {
    /// The activation applied with candle's own ops (the reference path).
    pub fn apply_reference(self, xs: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        match self {
            Activation::Identity => Ok(xs.clone()),
            Activation::Relu => xs.relu(),
            Activation::Relu6 => xs.clamp(0f32, 6f32),
        }
    }

    /// The activation of one value.
    #[inline(always)]
    pub fn eval(self, v: f32) -> f32 {
        match self {
            Activation::Identity => v,
            Activation::Relu => v.max(0.0),
            Activation::Relu6 => v.clamp(0.0, 6.0),
        }
    }

    /// Applies the activation to every value of `v`, one loop per kind (so each
    /// vectorises).
    pub(crate) fn apply_in_place(self, v: &mut [f32]) {
        match self {
            Activation::Identity => {}
            Activation::Relu => v.iter_mut().for_each(|x| *x = x.max(0.0)),
            Activation::Relu6 => v.iter_mut().for_each(|x| *x = x.clamp(0.0, 6.0)),
        }
    }

    /// Whether the gradient flows back through an output `y`: everywhere for the
    /// identity, where the output is inside the unclamped range otherwise (at an
    /// output exactly on a clamp, candle's `clamp` splits the gradient in half;
    /// this passes none, as for the ReLU).
    #[inline(always)]
    pub(crate) fn passes(self, y: f32) -> bool {
        match self {
            Activation::Identity => true,
            Activation::Relu => y > 0.0,
            Activation::Relu6 => y > 0.0 && y < 6.0,
        }
    }
}
