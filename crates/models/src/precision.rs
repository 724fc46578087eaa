//! Compute precision of a model: f32, or bf16 mixed precision.
//!
//! With [`Precision::Bf16`] the parameters stay f32 (the master weights the
//! optimizer updates, and what checkpoints hold); the input is cast to bf16, every
//! layer casts its parameters to bf16 at use ([`digitlab_kernels::precision`]),
//! batch norm normalises in f32, and the output (logits or features) is cast back
//! to f32, so losses, metrics, heads on features and caches all stay f32.
use std::sync::Arc;

use candle_core::{DType, Result, Tensor};
use candle_nn::{BatchNorm, ModuleT};
use serde::{Deserialize, Serialize};

use crate::backbone::Backbone;

/// `dtype` of configs (`"f32"`, `"bf16"`) and of `--dtype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    #[default]
    F32,
    /// bf16 activations with f32 master weights (mixed precision).
    Bf16,
}

impl Precision {
    /// The dtype activations are computed in.
    pub fn compute_dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
    pub fn is_f32(&self) -> bool {
        *self == Precision::F32
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(format!("unknown dtype `{s}`: use f32 or bf16")),
        }
    }
}

/// Batch norm's `forward_t` for any activation dtype ([`crate::conv::bn_act`]
/// without an activation): half-precision inputs are normalised in f32 (the running
/// statistics are f32) and cast back.
pub fn batch_norm_t(bn: &BatchNorm, xs: &Tensor, train: bool) -> Result<Tensor> {
    crate::conv::bn_act(bn, xs, train, crate::layers::FusedActivation::Identity)
}

/// A network run in `dtype`: input cast to it, output cast back to f32.
pub(crate) struct MixedNet {
    pub inner: Box<dyn ModuleT + Send + Sync>,
    pub dtype: DType,
}

impl ModuleT for MixedNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.inner
            .forward_t(&xs.to_dtype(self.dtype)?, train)?
            .to_dtype(DType::F32)
    }
}

/// A backbone run in `dtype` whose features come back as f32.
pub struct MixedBackbone {
    inner: Arc<dyn Backbone>,
    dtype: DType,
}

impl MixedBackbone {
    /// `inner` computing in `precision` (returned as is for f32).
    pub fn wrap(inner: Arc<dyn Backbone>, precision: Precision) -> Arc<dyn Backbone> {
        match precision {
            Precision::F32 => inner,
            p => Arc::new(MixedBackbone {
                inner,
                dtype: p.compute_dtype(),
            }),
        }
    }
}

impl Backbone for MixedBackbone {
    fn features(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.inner
            .features(&xs.to_dtype(self.dtype)?, train)?
            .to_dtype(DType::F32)
    }
    fn feature_dim(&self) -> usize {
        self.inner.feature_dim()
    }
    fn head_prefix(&self) -> &'static str {
        self.inner.head_prefix()
    }
}
