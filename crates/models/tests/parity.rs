//! Numerical parity with PyTorch / torchvision, from the fixtures that
//! `tests/parity/make_fixtures.py` writes (see its docstring for the weight formula).
//!
//! - `torchvision_keys_and_shapes`: every torchvision state-dict key (minus
//!   `num_batches_tracked`) of resnet18/34/50/101, vgg11/13/16/19(_bn) and alexnet is
//!   a variable of our model with the same shape, and nothing else is.
//! - `synthetic_weights_match_torchvision`: resnet18, resnet50, vgg11, vgg16 and
//!   alexnet with formula weights, loaded by name, give torchvision's features and
//!   logits.
//! - `pretrained_*`: the real EfficientNet-Lite0 and ccexam SVHN CNN load with every
//!   tensor matched and reproduce the reference packages' outputs (skipped, with the
//!   reason printed, when `DIGITLAB_WEIGHTS` is unset).
use candle_core::{DType, Device, ModuleT, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use digitlab_models::{build_model, AlexNet, Backbone, InputShape, ModelConfig, ResNet, ResNetConfig, Vgg, VggConfig};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

#[path = "parity/formula.rs"]
mod formula;
use formula::{fixture, hashed_sin, read_keys, rel_err, TOL};

fn name_hash(name: &str) -> u64 {
    name.bytes().map(u64::from).sum()
}

/// The formula value of every element of tensor `name`.
fn formula(name: &str, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let s = hashed_sin(n, name_hash(name));
    let v: Vec<f32> = if name.ends_with("running_var") {
        s.iter().map(|s| (1.0 + 0.1 * s.abs()) as f32).collect()
    } else if name.ends_with("running_mean") || name.ends_with("bias") {
        s.iter().map(|s| (0.1 * s) as f32).collect()
    } else if name.ends_with("weight") && shape.len() == 1 {
        s.iter().map(|s| (0.5 + 0.1 * s) as f32).collect()
    } else if name.ends_with("weight") {
        let fan_in: usize = shape[1..].iter().product();
        let scale = 2.0 / (fan_in as f64).sqrt();
        s.iter().map(|s| (s * scale) as f32).collect()
    } else {
        panic!("no formula for {name}")
    };
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn formula_input(shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = hashed_sin(n, name_hash("input"))
        .into_iter()
        .map(|s| s as f32)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// A `VarBuilder` backend that records every variable asked for, answering from
/// `source` (a checkpoint, shapes checked) or with zeros (lazily allocated).
#[derive(Clone, Default)]
struct Recorder {
    source: Option<Arc<HashMap<String, Tensor>>>,
    seen: Arc<Mutex<BTreeMap<String, Vec<usize>>>>,
}

impl Recorder {
    fn var_builder(&self) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), DType::F32, Device::Cpu)
    }
    fn seen(&self) -> BTreeMap<String, Vec<usize>> {
        self.seen.lock().unwrap().clone()
    }
}

impl SimpleBackend for Recorder {
    fn get(&self, s: Shape, name: &str, _h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        self.seen.lock().unwrap().insert(name.to_string(), s.dims().to_vec());
        match &self.source {
            None => Tensor::zeros(s, dtype, dev),
            Some(src) => {
                let t = src
                    .get(name)
                    .ok_or_else(|| candle_core::Error::Msg(format!("missing tensor {name}")))?;
                if t.shape() != &s {
                    candle_core::bail!("shape mismatch for {name}: file {:?}, model {:?}", t.shape(), s)
                }
                t.to_dtype(dtype)?.to_device(dev)
            }
        }
    }
    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        candle_core::bail!("unexpected unchecked get of {name}")
    }
    fn contains_tensor(&self, name: &str) -> bool {
        self.source.as_ref().is_some_and(|s| s.contains_key(name))
    }
}

enum Arch {
    ResNet(ResNetConfig),
    Vgg(VggConfig),
    AlexNet,
}

fn arch(model: &str) -> Arch {
    if model == "alexnet" {
        Arch::AlexNet
    } else if let Some(d) = model.strip_prefix("resnet") {
        Arch::ResNet(ResNetConfig {
            depth: d.parse().unwrap(),
            cifar_stem: false,
        })
    } else {
        let rest = model.strip_prefix("vgg").unwrap();
        let (d, bn) = match rest.strip_suffix("_bn") {
            Some(d) => (d, true),
            None => (rest, false),
        };
        Arch::Vgg(VggConfig {
            depth: d.parse().unwrap(),
            batch_norm: bn,
        })
    }
}

fn build(model: &str, vb: VarBuilder) -> Result<Arc<dyn BackboneNet>> {
    Ok(match arch(model) {
        Arch::ResNet(c) => Arc::new(ResNet::new(&c, 3, 1000, vb)?),
        Arch::Vgg(c) => Arc::new(Vgg::new(&c, 3, 1000, vb)?),
        Arch::AlexNet => Arc::new(AlexNet::new(3, 224, 224, 1000, vb)?),
    })
}

trait BackboneNet: Backbone + ModuleT {}
impl<T: Backbone + ModuleT> BackboneNet for T {}

#[test]
fn torchvision_keys_and_shapes() {
    let all = read_keys("keys.txt");
    assert_eq!(all.len(), 13);
    for (model, keys) in &all {
        let rec = Recorder::default();
        drop(build(model, rec.var_builder()).unwrap());
        let ours = rec.seen();
        let missing: Vec<_> = keys.keys().filter(|k| !ours.contains_key(*k)).collect();
        let extra: Vec<_> = ours.keys().filter(|k| !keys.contains_key(*k)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{model}: missing {missing:?}, extra {extra:?}"
        );
        for (k, shape) in keys {
            assert_eq!(&ours[k], shape, "{model}: shape of {k}");
        }
        println!("{model}: {} tensors match torchvision", keys.len());
    }
}

#[test]
fn synthetic_weights_match_torchvision() {
    let keys = read_keys("keys.txt");
    let expected = candle_core::safetensors::load(fixture("synthetic.safetensors"), &Device::Cpu).unwrap();
    for (model, input) in [
        ("resnet18", [2, 3, 64, 64]),
        ("resnet50", [2, 3, 64, 64]),
        ("vgg11", [1, 3, 32, 32]),
        ("vgg16", [1, 3, 32, 32]),
        ("alexnet", [1, 3, 224, 200]),
    ] {
        // Load by name: every torchvision tensor, filled by the formula.
        let weights: HashMap<String, Tensor> = keys[model]
            .iter()
            .map(|(k, shape)| (k.clone(), formula(k, shape)))
            .collect();
        let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
        let net = build(model, vb).unwrap();
        let x = formula_input(&input);
        let feats = net.features(&x, false).unwrap();
        let logits = net.forward_t(&x, false).unwrap();
        let ef = rel_err(&feats, &expected[&format!("{model}.features")]);
        let el = rel_err(&logits, &expected[&format!("{model}.logits")]);
        println!("{model}: relative max error features {ef:.2e}, logits {el:.2e}");
        assert!(
            ef <= TOL && el <= TOL,
            "{model}: features {ef:.2e}, logits {el:.2e} > {TOL:.0e}"
        );
    }
}

/// The folder of the real weights (the tests using it are ignored by default;
/// run explicitly, they fail without it).
fn weights_dir(test: &str) -> Option<PathBuf> {
    match std::env::var_os("DIGITLAB_WEIGHTS") {
        Some(d) => Some(PathBuf::from(d)),
        None => {
            panic!("{test}: set DIGITLAB_WEIGHTS to the folder holding the pretrained .safetensors files")
        }
    }
}

/// Builds `cfg` from the real checkpoint `file` (every tensor must be used, and
/// nothing may be missing), then compares with the PyTorch reference outputs.
fn check_pretrained(
    test: &str,
    file: &str,
    cfg: ModelConfig,
    input: InputShape,
    classes: usize,
    batch: usize,
    prefix: &str,
) {
    let Some(dir) = weights_dir(test) else { return };
    let path = dir.join(file);
    assert!(
        path.exists(),
        "{test}: DIGITLAB_WEIGHTS is set but {} does not exist",
        path.display()
    );
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let rec = Recorder {
        source: Some(Arc::new(tensors.clone())),
        ..Default::default()
    };
    let model = build_model(&cfg, input, classes, rec.var_builder()).unwrap();
    let used = rec.seen();
    let unused: Vec<_> = tensors.keys().filter(|k| !used.contains_key(*k)).collect();
    assert!(
        unused.is_empty(),
        "{test}: tensors of the file not used by the model: {unused:?}"
    );
    assert_eq!(used.len(), tensors.len());

    let expected = candle_core::safetensors::load(fixture("real.safetensors"), &Device::Cpu).unwrap();
    let x = formula_input(&[batch, input.channels, input.height, input.width]);
    let feats = model.features(&x, false).unwrap().expect("conv models have features");
    let logits = model.forward_t(&x, false).unwrap();
    let ef = rel_err(&feats, &expected[&format!("{prefix}.features")]);
    let el = rel_err(&logits, &expected[&format!("{prefix}.logits")]);
    println!(
        "{test}: {} tensors matched; relative max error features {ef:.2e}, logits {el:.2e}",
        tensors.len()
    );
    assert!(
        ef <= TOL && el <= TOL,
        "{test}: features {ef:.2e}, logits {el:.2e} > {TOL:.0e}"
    );
}

#[test]
#[ignore = "needs the real pretrained networks: set DIGITLAB_WEIGHTS=../shared/weights (and DIGITLAB_DATA) and run `cargo test --release --workspace -- --ignored pretrained`"]
fn pretrained_efficientnet_lite0() {
    check_pretrained(
        "pretrained_efficientnet_lite0",
        "efficientnet-lite0.safetensors",
        ModelConfig::EfficientnetLite0,
        InputShape {
            channels: 3,
            height: 224,
            width: 224,
        },
        1000,
        1,
        "efficientnet_lite0",
    );
}

#[test]
#[ignore = "needs the real pretrained networks: set DIGITLAB_WEIGHTS=../shared/weights (and DIGITLAB_DATA) and run `cargo test --release --workspace -- --ignored pretrained`"]
fn pretrained_ccexam_svhn_cnn() {
    check_pretrained(
        "pretrained_ccexam_svhn_cnn",
        "ccexam-svhn-cnn.safetensors",
        ModelConfig::SmallCnn,
        InputShape {
            channels: 3,
            height: 32,
            width: 32,
        },
        10,
        2,
        "ccexam",
    );
}
