//! `digitlab models` / `digitlab summary` against PyTorch: for every name of
//! `MODEL_NAMES`, at its default input and class count, the layer table of
//! `digitlab_models::summarize` (names, output shapes, parameters, MACs, in forward
//! order) and its totals equal what PyTorch's own networks give
//! (`tests/fixtures/summary.json`, written by `make_summary_fixture.py` with torch's
//! forward hooks).
use candle_core::Device;
use candle_nn::VarMap;
use digitlab_finetune::zoo::resolve_arch;
use digitlab_finetune::MODEL_NAMES;
use digitlab_models::{build_model, summarize, zeros_var_builder, ModelSummary};
use serde_json::Value;

fn fixture() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/summary.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

fn ours(name: &str) -> ModelSummary {
    let arch = resolve_arch(name).unwrap();
    let input = arch.default_input();
    let varmap = VarMap::new();
    let model = build_model(
        &arch.config,
        input,
        arch.default_classes(),
        zeros_var_builder(&varmap, &Device::Cpu),
    )
    .unwrap();
    summarize(&model, &varmap, input, &|_| true).unwrap()
}

fn count(v: &Value) -> u64 {
    v.as_u64().expect("a count")
}

#[test]
fn every_model_matches_pytorch_layer_by_layer() {
    let fx = fixture();
    let models = fx["models"].as_object().unwrap();
    let mut names: Vec<&str> = models.keys().map(String::as_str).collect();
    // The candle-transformers backbones are not traced layer by layer (see
    // `modern_parameter_counts_match_timm`).
    let traced = || {
        MODEL_NAMES
            .iter()
            .filter(|n| !resolve_arch(n).unwrap().is_frozen_only())
    };
    let mut expected: Vec<&str> = traced().copied().collect();
    names.sort();
    expected.sort();
    assert_eq!(names, expected, "the fixture covers exactly the traced MODEL_NAMES");
    for name in traced() {
        let want = &models[*name];
        let arch = resolve_arch(name).unwrap();
        let input = arch.default_input();
        assert_eq!(
            want["input"],
            serde_json::json!([input.channels, input.height, input.width]),
            "{name}: input"
        );
        assert_eq!(
            count(&want["classes"]),
            arch.default_classes() as u64,
            "{name}: classes"
        );
        let s = ours(name);
        assert_eq!(s.parameters as u64, count(&want["parameters"]), "{name}: parameters");
        assert_eq!(s.buffers as u64, count(&want["buffers"]), "{name}: buffers");
        assert_eq!(s.macs, count(&want["macs"]), "{name}: MACs");
        let layers = want["layers"].as_array().unwrap();
        assert_eq!(s.layers.len(), layers.len(), "{name}: number of layers with parameters");
        for (got, want) in s.layers.iter().zip(layers) {
            let shape: Vec<u64> = want[1].as_array().unwrap().iter().map(count).collect();
            let got_shape: Vec<u64> = got.output[1..].iter().map(|&d| d as u64).collect();
            let w = (want[0].as_str().unwrap(), shape, count(&want[2]), count(&want[3]));
            assert_eq!(
                (got.name.as_str(), got_shape, got.parameters as u64, got.macs),
                w,
                "{name}: layer"
            );
        }
    }
}

#[test]
fn resnet18_at_224_is_the_published_1_814_gmacs() {
    // torchvision's 11,689,512 parameters; fvcore and torchinfo report 1.814 G / 1.81 G.
    let s = ours("resnet18");
    assert_eq!(s.parameters, 11_689_512);
    assert_eq!(s.macs, 1_814_073_344);
    assert_eq!(s.output, [1, 1000]);
}

/// The candle-transformers backbones, which `summarize` cannot trace layer by layer:
/// parameter and batch-norm buffer totals (1000-class classifier) as timm counts them
/// (`sum(p.numel() for p in model.parameters())`, buffers without
/// `num_batches_tracked`, timm 1.0.31).
#[test]
fn modern_parameter_counts_match_timm() {
    for (name, parameters, buffers) in [
        ("convnext_tiny", 28_589_128, 0),
        ("vit_small_patch16_224", 22_050_664, 0),
        ("vit_base_patch16_224", 86_567_656, 0),
        ("dinov2_vits14", 22_441_192, 0),
        ("dinov2_vitb14", 87_348_712, 0),
        ("mobilenetv4_conv_small", 3_774_024, 25_088),
        ("tf_efficientnet_b0", 5_288_548, 42_016),
    ] {
        let arch = resolve_arch(name).unwrap();
        assert!(arch.is_frozen_only() && MODEL_NAMES.contains(&name));
        assert_eq!(arch.default_classes(), 1000);
        let s = ours(name);
        assert_eq!((s.parameters, s.buffers), (parameters, buffers), "{name}");
        assert_eq!(s.output, [1, 1000], "{name}");
    }
}
