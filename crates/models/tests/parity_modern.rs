//! Parity of the candle-transformers backbones ([`digitlab_models::modern`]) with timm,
//! from the fixture `tests/parity/make_modern_fixtures.py` writes (see its docstring):
//! full-size models, every tensor filled by the formula from its timm name.
//!
//! For each model: the variables digitlab asks for (classifier excluded) are exactly
//! timm's state-dict keys with timm's shapes — so timm's hub checkpoints load by
//! name — and `features()` equals timm's `forward_head(pre_logits=True)` to 1e-4
//! relative. For DINOv2 the reference is timm with candle-transformers' activation
//! and LayerNorm epsilon; the distance to stock timm is measured and bounded.
use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use digitlab_models::{Backbone, ModernArch, ModernBackbone};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

#[path = "parity/formula.rs"]
mod formula;
use formula::{fixture, hashed_sin, read_keys, rel_err, TOL};

fn fnv1a32(name: &str) -> u64 {
    let mut h: u32 = 0x811C9DC5;
    for b in name.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    u64::from(h)
}

/// The formula value of tensor `name` (make_modern_fixtures.py's rules).
fn formula(name: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let s = hashed_sin(n, fnv1a32(name));
    let f: Box<dyn Fn(f64) -> f64> = if name.ends_with("running_var") {
        Box::new(|s: f64| 1.0 + 0.1 * s.abs())
    } else if name.ends_with("running_mean") || name.ends_with("bias") {
        Box::new(|s| 0.1 * s)
    } else if (name.ends_with("weight") || name.ends_with("gamma")) && shape.len() == 1 {
        Box::new(|s| 0.5 + 0.1 * s)
    } else if name.ends_with("weight") {
        let fan_in: usize = shape[1..].iter().product();
        let scale = 2.0 / (fan_in as f64).sqrt();
        Box::new(move |s| s * scale)
    } else {
        Box::new(|s| 0.5 * s)
    };
    s.into_iter().map(|s| f(s) as f32).collect()
}

/// Answers every variable with its formula value and records what was asked.
#[derive(Clone, Default)]
struct Formula(Arc<Mutex<BTreeMap<String, Vec<usize>>>>);

impl SimpleBackend for Formula {
    fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        self.0.lock().unwrap().insert(name.to_string(), s.dims().to_vec());
        Tensor::from_vec(formula(name, s.dims()), s, dev)?.to_dtype(dtype)
    }
    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> Result<Tensor> {
        candle_core::bail!("unexpected unchecked get of {name}")
    }
    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

fn expected() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("modern.safetensors"), &Device::Cpu).expect("modern.safetensors fixture")
}

/// Builds `arch` from formula weights, checks its variables against timm's and its
/// features against the fixture; returns the relative error.
fn check(arch: ModernArch, input: [usize; 4]) -> (f32, Tensor) {
    let name = arch.name();
    let rec = Formula::default();
    let vb = VarBuilder::from_backend(Box::new(rec.clone()), DType::F32, Device::Cpu);
    let net = ModernBackbone::new(arch, 1000, vb).unwrap();
    assert_eq!(net.feature_dim(), arch.feature_dim());

    let head = format!("{}.", arch.head_prefix());
    let ours: BTreeMap<String, Vec<usize>> = rec
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|(k, _)| !k.starts_with(&head))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let keys = read_keys("modern_keys.txt");
    let timm = &keys[name];
    let missing: Vec<_> = timm.keys().filter(|k| !ours.contains_key(*k)).collect();
    let extra: Vec<_> = ours.keys().filter(|k| !timm.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{name}: missing {missing:?}, extra {extra:?}"
    );
    for (k, shape) in timm {
        assert_eq!(&ours[k], shape, "{name}: shape of {k}");
    }

    let n: usize = input.iter().product();
    let v: Vec<f32> = hashed_sin(n, fnv1a32("input")).into_iter().map(|s| s as f32).collect();
    let x = Tensor::from_vec(v, &input, &Device::Cpu).unwrap();
    let feats = net.features(&x, false).unwrap();
    assert_eq!(feats.dims(), &[input[0], arch.feature_dim()]);
    let err = rel_err(&feats, &expected()[&format!("{name}.features")]);
    println!(
        "{name}: {} timm tensors match; features relative max error {err:.2e}",
        timm.len()
    );
    assert!(err <= TOL, "{name}: features {err:.2e} > {TOL:.0e}");
    // Eval-only: a training pass is refused, not run in eval mode behind the caller's back.
    let e = net.features(&x.narrow(0, 0, 1).unwrap(), true).unwrap_err().to_string();
    assert!(e.contains("eval mode only"), "{e}");
    (err, feats)
}

#[test]
fn convnext_tiny_matches_timm() {
    check(ModernArch::ConvnextTiny, [2, 3, 64, 64]);
}

#[test]
fn vit_small_patch16_224_matches_timm() {
    check(ModernArch::VitSmallPatch16, [2, 3, 224, 224]);
}

#[test]
fn vit_base_patch16_224_matches_timm() {
    check(ModernArch::VitBasePatch16, [2, 3, 224, 224]);
}

#[test]
fn mobilenetv4_conv_small_matches_timm() {
    check(ModernArch::Mobilenetv4ConvSmall, [2, 3, 64, 64]);
}

#[test]
fn tf_efficientnet_b0_matches_timm() {
    check(ModernArch::TfEfficientnetB0, [2, 3, 64, 56]);
}

/// DINOv2: exact against timm with candle-transformers' GELU (tanh) and LayerNorm
/// eps (1e-5); stock timm (exact GELU, eps 1e-6) is a measured distance away.
fn check_dinov2(arch: ModernArch, input: [usize; 4]) {
    let (_, feats) = check(arch, input);
    let stock = rel_err(&feats, &expected()[&format!("{}.features_stock", arch.name())]);
    println!("{}: relative max distance to stock timm {stock:.2e}", arch.name());
    assert!(stock < 1e-3, "{}: {stock:.2e} from stock timm", arch.name());
}

#[test]
fn dinov2_vits14_matches_timm() {
    check_dinov2(ModernArch::Dinov2Vits14, [2, 3, 518, 518]);
}

#[test]
fn dinov2_vitb14_matches_timm() {
    check_dinov2(ModernArch::Dinov2Vitb14, [1, 3, 518, 518]);
}

#[test]
fn inputs_candle_transformers_cannot_take_are_refused() {
    let shape = |c, h, w| digitlab_models::InputShape {
        channels: c,
        height: h,
        width: w,
    };
    let e = ModernArch::VitSmallPatch16
        .check_input(shape(3, 32, 32))
        .unwrap_err()
        .to_string();
    assert!(e.contains("224x224"), "{e}");
    let e = ModernArch::Dinov2Vits14
        .check_input(shape(3, 30, 30))
        .unwrap_err()
        .to_string();
    assert!(e.contains("multiple of 14"), "{e}");
    let e = ModernArch::ConvnextTiny
        .check_input(shape(1, 64, 64))
        .unwrap_err()
        .to_string();
    assert!(e.contains("3-channel"), "{e}");
    assert!(ModernArch::Dinov2Vits14.check_input(shape(3, 28, 28)).is_ok());
    assert!(ModernArch::TfEfficientnetB0.check_input(shape(3, 32, 40)).is_ok());
}
