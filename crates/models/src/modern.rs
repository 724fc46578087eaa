//! Frozen backbones from `candle-transformers` (ConvNeXt, ViT, DINOv2, MobileNetV4,
//! EfficientNet), with timm's tensor names and timm's pre-logits embedding as
//! [`Backbone::features`].
//!
//! The networks are candle-transformers' own code; this module only adapts them:
//!
//! - **Names.** Every variable is requested through [`TimmNames`], a `VarBuilder`
//!   backend that maps candle-transformers' names to timm's: HF-transformers ViT
//!   names (`encoder.layer.N.attention.attention.query`) become rows of timm's fused
//!   `blocks.N.attn.qkv`, torchvision EfficientNet names (`features.S.B.block.I`)
//!   become timm's `blocks.S.B.conv_pw` / `bn1` / ..., the other models already use
//!   timm's names. Optional parts that candle-transformers probes for (ConvNeXt-V2's
//!   `grn`, MobileNetV4's `layer_scale`, a depthwise conv of kernel 0) are refused,
//!   so they are absent as in timm, whatever backend is behind.
//! - **Pre-logits.** timm's `forward_head(pre_logits=True)`: ConvNeXt's pooled
//!   features through `head.norm` (candle's `convnext_no_final_layer` stops before
//!   it; the LayerNorm is added here); ViT's class token after the final norm
//!   (built from candle's public `Embeddings` and `Encoder`); for DINOv2,
//!   MobileNetV4 and EfficientNet, whose candle code has no pre-logits output, the
//!   classifier candle-transformers builds is handed a constant 0/1 selection matrix
//!   (not a variable) so that its output *is* the pre-logits embedding.
//! - **Frozen only.** candle-transformers implements eval mode only (batch norm with
//!   running statistics, no dropout, no train flag): `features(x, true)` is an error.
//!
//! Known differences from timm (documented in `docs/modern-backbones.md`): DINOv2 in
//! candle-transformers uses the tanh-approximated GELU and LayerNorm eps 1e-5
//! (timm: exact GELU, eps 1e-6), interpolates position embeddings by nearest
//! neighbour (timm: bicubic) at sizes other than 518 px, and runs one image at a
//! time; its ViT has no position-embedding interpolation (224 px only); its
//! EfficientNet-B0 is the TensorFlow variant (`tf_efficientnet_b0`: "same" padding,
//! batch-norm eps 1e-3), not timm's `efficientnet_b0`.
use crate::backbone::Head;
use crate::model::InputShape;
use candle_core::{DType, Device, IndexOp, Module, ModuleT, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{layer_norm, Func, Init, LayerNorm, VarBuilder};
use candle_transformers::models::{convnext, dinov2, efficientnet, mobilenetv4, vit};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

/// The candle-transformers architectures digitlab builds, by their digitlab name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ModernArch {
    #[serde(rename = "convnext_tiny")]
    ConvnextTiny,
    #[serde(rename = "vit_small_patch16_224")]
    VitSmallPatch16,
    #[serde(rename = "vit_base_patch16_224")]
    VitBasePatch16,
    #[serde(rename = "dinov2_vits14")]
    Dinov2Vits14,
    #[serde(rename = "dinov2_vitb14")]
    Dinov2Vitb14,
    #[serde(rename = "mobilenetv4_conv_small")]
    Mobilenetv4ConvSmall,
    #[serde(rename = "tf_efficientnet_b0")]
    TfEfficientnetB0,
}

/// `model.kind = "modern"`: a candle-transformers backbone ([`ModernArch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModernConfig {
    pub arch: ModernArch,
}

/// What timm's `pretrained_cfg` says about the published weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PretrainedCfg {
    /// The hub repo (`timm/<name>.<tag>`) of the default weights.
    pub hub: &'static str,
    /// Square input side the weights were trained at.
    pub input_size: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
const INCEPTION: [f32; 3] = [0.5, 0.5, 0.5];

impl ModernArch {
    pub const ALL: [ModernArch; 7] = [
        ModernArch::ConvnextTiny,
        ModernArch::VitSmallPatch16,
        ModernArch::VitBasePatch16,
        ModernArch::Dinov2Vits14,
        ModernArch::Dinov2Vitb14,
        ModernArch::Mobilenetv4ConvSmall,
        ModernArch::TfEfficientnetB0,
    ];

    /// The digitlab model name.
    pub fn name(self) -> &'static str {
        match self {
            ModernArch::ConvnextTiny => "convnext_tiny",
            ModernArch::VitSmallPatch16 => "vit_small_patch16_224",
            ModernArch::VitBasePatch16 => "vit_base_patch16_224",
            ModernArch::Dinov2Vits14 => "dinov2_vits14",
            ModernArch::Dinov2Vitb14 => "dinov2_vitb14",
            ModernArch::Mobilenetv4ConvSmall => "mobilenetv4_conv_small",
            ModernArch::TfEfficientnetB0 => "tf_efficientnet_b0",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    /// timm's architecture name (`timm.create_model(...)`).
    pub fn timm_name(self) -> &'static str {
        match self {
            ModernArch::Dinov2Vits14 => "vit_small_patch14_dinov2",
            ModernArch::Dinov2Vitb14 => "vit_base_patch14_dinov2",
            a => a.name(),
        }
    }

    /// Width of the pre-logits embedding.
    pub fn feature_dim(self) -> usize {
        match self {
            ModernArch::VitSmallPatch16 | ModernArch::Dinov2Vits14 => 384,
            ModernArch::ConvnextTiny | ModernArch::VitBasePatch16 | ModernArch::Dinov2Vitb14 => 768,
            ModernArch::Mobilenetv4ConvSmall | ModernArch::TfEfficientnetB0 => 1280,
        }
    }

    /// timm's classifier prefix (where the new head's variables go).
    pub fn head_prefix(self) -> &'static str {
        match self {
            ModernArch::ConvnextTiny => "head.fc",
            ModernArch::VitSmallPatch16
            | ModernArch::VitBasePatch16
            | ModernArch::Dinov2Vits14
            | ModernArch::Dinov2Vitb14 => "head",
            ModernArch::Mobilenetv4ConvSmall | ModernArch::TfEfficientnetB0 => "classifier",
        }
    }

    /// Default weights, input size and normalisation (timm's `pretrained_cfg`).
    pub fn pretrained_cfg(self) -> PretrainedCfg {
        let cfg = |hub, input_size, mean, std| PretrainedCfg {
            hub,
            input_size,
            mean,
            std,
        };
        match self {
            ModernArch::ConvnextTiny => cfg("timm/convnext_tiny.fb_in1k", 224, IMAGENET_MEAN, IMAGENET_STD),
            ModernArch::VitSmallPatch16 => cfg(
                "timm/vit_small_patch16_224.augreg_in21k_ft_in1k",
                224,
                INCEPTION,
                INCEPTION,
            ),
            ModernArch::VitBasePatch16 => cfg(
                "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k",
                224,
                INCEPTION,
                INCEPTION,
            ),
            ModernArch::Dinov2Vits14 => cfg(
                "timm/vit_small_patch14_dinov2.lvd142m",
                518,
                IMAGENET_MEAN,
                IMAGENET_STD,
            ),
            ModernArch::Dinov2Vitb14 => cfg("timm/vit_base_patch14_dinov2.lvd142m", 518, IMAGENET_MEAN, IMAGENET_STD),
            ModernArch::Mobilenetv4ConvSmall => cfg(
                "timm/mobilenetv4_conv_small.e2400_r224_in1k",
                224,
                IMAGENET_MEAN,
                IMAGENET_STD,
            ),
            ModernArch::TfEfficientnetB0 => {
                cfg("timm/tf_efficientnet_b0.ns_jft_in1k", 224, IMAGENET_MEAN, IMAGENET_STD)
            }
        }
    }

    /// Whether candle-transformers' code takes `input` (an error says why not).
    pub fn check_input(self, input: InputShape) -> Result<()> {
        let InputShape {
            channels,
            height,
            width,
        } = input;
        let name = self.name();
        if channels != 3 {
            candle_core::bail!("{name} takes 3-channel images, got {channels} (set channels = 3)")
        }
        match self {
            ModernArch::VitSmallPatch16 | ModernArch::VitBasePatch16 => {
                if (height, width) != (224, 224) {
                    candle_core::bail!(
                        "{name} takes 224x224 images only (candle-transformers' ViT does not interpolate its \
                         position embeddings), got {height}x{width}"
                    )
                }
            }
            ModernArch::Dinov2Vits14 | ModernArch::Dinov2Vitb14 => {
                if height != width || height % 14 != 0 {
                    candle_core::bail!(
                        "{name} takes square images whose side is a multiple of 14, got {height}x{width}"
                    )
                }
            }
            _ => {
                if height < 32 || width < 32 {
                    candle_core::bail!("{name} takes images of at least 32x32, got {height}x{width}")
                }
            }
        }
        Ok(())
    }
}

/// Where a candle-transformers variable comes from.
enum Source {
    /// The timm variable of this name, same shape.
    Var(String),
    /// Rows `start..start + len` of the timm variable `name` (`rows` rows in all).
    Rows {
        name: String,
        start: usize,
        rows: usize,
    },
    /// Not part of this architecture.
    Absent,
    /// The constant matrix with ones on the diagonal (a pass-through classifier).
    Select,
    Zeros,
}

fn var(name: impl Into<String>) -> Source {
    Source::Var(name.into())
}

/// timm's name for a variable of candle-transformers' ViT (HF transformers layout).
fn vit_source(name: &str, dim: usize) -> Source {
    match name {
        "embeddings.cls_token" => return var("cls_token"),
        "embeddings.position_embeddings" => return var("pos_embed"),
        _ => {}
    }
    if let Some(p) = name.strip_prefix("embeddings.patch_embeddings.projection.") {
        return var(format!("patch_embed.proj.{p}"));
    }
    if name.starts_with("norm.") {
        return var(name);
    }
    let Some((layer, rest)) = name.strip_prefix("encoder.layer.").and_then(|r| r.split_once('.')) else {
        return Source::Absent;
    };
    let (module, param) = match rest.rsplit_once('.') {
        Some(x) => x,
        None => return Source::Absent,
    };
    let qkv = |k: usize| Source::Rows {
        name: format!("blocks.{layer}.attn.qkv.{param}"),
        start: k * dim,
        rows: 3 * dim,
    };
    let timm = match module {
        "layernorm_before" => "norm1",
        "layernorm_after" => "norm2",
        "attention.attention.query" => return qkv(0),
        "attention.attention.key" => return qkv(1),
        "attention.attention.value" => return qkv(2),
        "attention.output.dense" => "attn.proj",
        "intermediate.dense" => "mlp.fc1",
        "output.dense" => "mlp.fc2",
        _ => return Source::Absent,
    };
    var(format!("blocks.{layer}.{timm}.{param}"))
}

/// timm's name for a variable of candle-transformers' EfficientNet (torchvision layout).
fn efficientnet_source(name: &str) -> Source {
    match name {
        "classifier.1.weight" => return Source::Select,
        "classifier.1.bias" => return Source::Zeros,
        _ => {}
    }
    let Some(rest) = name.strip_prefix("features.") else {
        return Source::Absent;
    };
    let parts: Vec<&str> = rest.split('.').collect();
    let conv_bn = |conv: &str, bn: &str, which: &str, param: &str| match which {
        "0" => var(format!("{conv}.{param}")),
        "1" => var(format!("{bn}.{param}")),
        _ => Source::Absent,
    };
    match parts.as_slice() {
        ["0", which, param] => conv_bn("conv_stem", "bn1", which, param),
        ["8", which, param] => conv_bn("conv_head", "bn2", which, param),
        [stage, block, "block", i, which, param] => {
            let Some(s) = stage.parse::<usize>().ok().and_then(|s| s.checked_sub(1)) else {
                return Source::Absent;
            };
            let b = format!("blocks.{s}.{block}");
            // Stage 0 is timm's DepthwiseSeparable (no expansion conv), the others
            // InvertedResidual.
            let layers: &[(&str, &str)] = if s == 0 {
                &[("conv_dw", "bn1"), ("se", ""), ("conv_pw", "bn2")]
            } else {
                &[("conv_pw", "bn1"), ("conv_dw", "bn2"), ("se", ""), ("conv_pwl", "bn3")]
            };
            let Some(&(conv, bn)) = i.parse::<usize>().ok().and_then(|i| layers.get(i)) else {
                return Source::Absent;
            };
            if conv == "se" {
                return match *which {
                    "fc1" => var(format!("{b}.se.conv_reduce.{param}")),
                    "fc2" => var(format!("{b}.se.conv_expand.{param}")),
                    _ => Source::Absent,
                };
            }
            conv_bn(&format!("{b}.{conv}"), &format!("{b}.{bn}"), which, param)
        }
        _ => Source::Absent,
    }
}

/// A `VarBuilder` backend that gives candle-transformers' models timm's variables
/// (see the module docs); the variables themselves come from `inner`.
pub struct TimmNames<'a> {
    inner: VarBuilder<'a>,
    arch: ModernArch,
    /// Name prefixes (with the trailing dot) of modules timm does not have.
    absent: Vec<String>,
}

impl<'a> TimmNames<'a> {
    /// A builder of `arch` whose timm-named variables come from `inner`.
    pub fn var_builder(arch: ModernArch, inner: VarBuilder<'a>, absent: Vec<String>) -> VarBuilder<'a> {
        let (dtype, device) = (inner.dtype(), inner.device().clone());
        VarBuilder::from_backend(Box::new(TimmNames { inner, arch, absent }), dtype, device)
    }

    fn source(&self, name: &str) -> Source {
        if self.absent.iter().any(|p| name.starts_with(p.as_str())) {
            return Source::Absent;
        }
        match self.arch {
            ModernArch::ConvnextTiny if name.contains(".grn.") => Source::Absent,
            ModernArch::VitSmallPatch16 | ModernArch::VitBasePatch16 => vit_source(name, self.arch.feature_dim()),
            ModernArch::Dinov2Vits14 | ModernArch::Dinov2Vitb14 | ModernArch::Mobilenetv4ConvSmall => match name {
                "head.weight" | "classifier.weight" => Source::Select,
                "head.bias" | "classifier.bias" => Source::Zeros,
                n if n.ends_with("layer_scale.gamma") => Source::Absent,
                n => var(n),
            },
            ModernArch::TfEfficientnetB0 => efficientnet_source(name),
            ModernArch::ConvnextTiny => var(name),
        }
    }
}

impl SimpleBackend for TimmNames<'_> {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let absent = || candle_core::Error::Msg(format!("{name}: not part of timm's {}", self.arch.timm_name()));
        if s.elem_count() == 0 {
            return Err(absent());
        }
        let t = match self.source(name) {
            Source::Var(n) => self.inner.get_with_hints(s, &n, h)?,
            Source::Rows { name: n, start, rows } => {
                let mut full = s.dims().to_vec();
                let len = full[0];
                full[0] = rows;
                self.inner.get_with_hints(full, &n, h)?.narrow(0, start, len)?
            }
            Source::Absent => return Err(absent()),
            Source::Select => {
                let (r, c) = s.dims2()?;
                let v: Vec<f32> = (0..r * c).map(|k| if k / c == k % c { 1.0 } else { 0.0 }).collect();
                Tensor::from_vec(v, (r, c), dev)?
            }
            Source::Zeros => Tensor::zeros(s, dtype, dev)?,
        };
        t.to_dtype(dtype)?.to_device(dev)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> Result<Tensor> {
        candle_core::bail!("unexpected unchecked get of {name}")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        match self.source(name) {
            Source::Var(n) | Source::Rows { name: n, .. } => self.inner.contains_tensor(&n),
            Source::Absent => false,
            Source::Select | Source::Zeros => true,
        }
    }
}

/// Records candle-transformers' requests without allocating: which depthwise convs
/// of MobileNetV4 have kernel 0 (timm has no such module; candle builds their batch
/// norm before it finds the kernel empty).
#[derive(Clone, Default)]
struct Probe(Arc<Mutex<BTreeSet<String>>>);

impl SimpleBackend for Probe {
    fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        if s.elem_count() == 0 {
            if let Some(prefix) = name.strip_suffix("conv.weight") {
                self.0.lock().expect("probe lock poisoned").insert(prefix.to_string());
            }
        }
        // A broadcast scalar: the shape without the memory.
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }
    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> Result<Tensor> {
        candle_core::bail!("unexpected unchecked get of {name}")
    }
    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

enum Net {
    /// ConvNeXt without its classifier, then timm's `head.norm`.
    Convnext(Func<'static>, LayerNorm),
    Vit {
        embeddings: vit::Embeddings,
        encoder: vit::Encoder,
        norm: LayerNorm,
    },
    /// Takes one image at a time (candle-transformers concatenates a `[1, 1, C]`
    /// class token to the batch); the first `dim` outputs are the class token.
    Dinov2(dinov2::DinoVisionTransformer, usize),
    /// MobileNetV4 and EfficientNet, whose (selection) classifier outputs the pre-logits.
    Whole(Func<'static>),
}

/// A candle-transformers backbone with a new classification head (see the module docs).
pub struct ModernBackbone {
    arch: ModernArch,
    net: Net,
    head: Head,
}

impl std::fmt::Debug for ModernBackbone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModernBackbone").field("arch", &self.arch).finish()
    }
}

impl ModernBackbone {
    /// Builds `arch` with a `num_classes` head; every variable (timm names) comes from `vb`.
    pub fn new(arch: ModernArch, num_classes: usize, vb: VarBuilder) -> Result<Self> {
        let dim = arch.feature_dim();
        let head = Head::new(dim, num_classes, 0.0, vb.pp(arch.head_prefix()))?;
        let net = Self::backbone(arch, vb)?;
        Ok(Self { arch, net, head })
    }

    fn backbone(arch: ModernArch, vb: VarBuilder) -> Result<Net> {
        let dim = arch.feature_dim();
        let mut absent = vec![];
        if arch == ModernArch::Mobilenetv4ConvSmall {
            let probe = Probe::default();
            let pvb = VarBuilder::from_backend(Box::new(probe.clone()), DType::F32, Device::Cpu);
            drop(mobilenetv4::mobilenetv4(&mobilenetv4::Config::small(), dim, pvb)?);
            absent = probe.0.lock().expect("probe lock poisoned").iter().cloned().collect();
        }
        let tvb = TimmNames::var_builder(arch, vb.clone(), absent);
        Ok(match arch {
            ModernArch::ConvnextTiny => Net::Convnext(
                convnext::convnext_no_final_layer(&convnext::Config::tiny(), tvb)?,
                layer_norm(dim, 1e-6, vb.pp("head.norm"))?,
            ),
            ModernArch::VitSmallPatch16 | ModernArch::VitBasePatch16 => {
                let (layers, heads) = if dim == 384 { (12, 6) } else { (12, 12) };
                let cfg = vit::Config {
                    hidden_size: dim,
                    num_hidden_layers: layers,
                    num_attention_heads: heads,
                    intermediate_size: 4 * dim,
                    hidden_act: candle_nn::Activation::Gelu,
                    layer_norm_eps: 1e-6,
                    image_size: 224,
                    patch_size: 16,
                    num_channels: 3,
                    qkv_bias: true,
                };
                Net::Vit {
                    embeddings: vit::Embeddings::new(&cfg, false, tvb.pp("embeddings"))?,
                    encoder: vit::Encoder::new(&cfg, tvb.pp("encoder"))?,
                    norm: layer_norm(dim, 1e-6, vb.pp("norm"))?,
                }
            }
            ModernArch::Dinov2Vits14 => Net::Dinov2(dinov2::vit_small(tvb)?, dim),
            ModernArch::Dinov2Vitb14 => Net::Dinov2(dinov2::DinoVisionTransformer::new(tvb, 12, 768, 12)?, dim),
            ModernArch::Mobilenetv4ConvSmall => {
                Net::Whole(mobilenetv4::mobilenetv4(&mobilenetv4::Config::small(), dim, tvb)?)
            }
            ModernArch::TfEfficientnetB0 => {
                let net = efficientnet::EfficientNet::new(tvb, efficientnet::MBConvConfig::b0(), dim)?;
                Net::Whole(Func::new(move |xs| net.forward(xs)))
            }
        })
    }

    pub fn arch(&self) -> ModernArch {
        self.arch
    }
}

impl Net {
    /// timm's `forward_head(forward_features(x), pre_logits=True)`, eval mode.
    fn forward(&self, xs: &Tensor, dim: usize) -> Result<Tensor> {
        if xs.dim(0)? == 0 {
            // An empty batch (a summary's shape pass): candle-transformers' layers are
            // not traced (see crate::summary), and DINOv2 cannot concatenate no images.
            return Tensor::zeros((0, dim), xs.dtype(), xs.device());
        }
        match self {
            Net::Convnext(body, norm) => body.forward(xs)?.apply(norm),
            Net::Vit {
                embeddings,
                encoder,
                norm,
            } => encoder
                .forward(&embeddings.forward(xs, None, false)?)?
                .i((.., 0, ..))?
                .apply(norm),
            Net::Dinov2(net, dim) => {
                let dim = *dim;
                let rows = (0..xs.dim(0)?)
                    .map(|i| net.forward(&xs.narrow(0, i, 1)?)?.narrow(1, 0, dim))
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&rows, 0)
            }
            Net::Whole(f) => f.forward(xs),
        }
    }
}

impl crate::Backbone for ModernBackbone {
    fn features(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        if train {
            candle_core::bail!(
                "{} comes from candle-transformers, which implements eval mode only: it can be used frozen, not trained",
                self.arch.name()
            )
        }
        self.net.forward(xs, self.arch.feature_dim())
    }
    fn feature_dim(&self) -> usize {
        self.arch.feature_dim()
    }
    fn head_prefix(&self) -> &'static str {
        self.arch.head_prefix()
    }
}

impl ModuleT for ModernBackbone {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let f = crate::Backbone::features(self, xs, train)?;
        self.head.forward_t(&f, train)
    }
}
