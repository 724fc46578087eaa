//! Regression tests for checkpoint loading as untrusted input (issue 8): a
//! sidecar may not point outside its folder, weights must be floating-point, a
//! stored config's layer sizes must be backed by real tensors (never allocated
//! from the numbers alone), and optimizer state must match the model.
//!
//! This test binary counts the largest single allocation of the current thread
//! while a check runs (the rule of the fuzz targets' capped allocator).
use candle_core::{DType, Device, Tensor, Var};
use digitlab_train::checkpoint::{self, Sidecar, FORMAT_VERSION};
use digitlab_train::ExperimentConfig;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

struct PeakAlloc;

fn note(size: usize) {
    let _ = TRACKING.try_with(|t| {
        if t.get() {
            let _ = PEAK.try_with(|p| p.set(p.get().max(size)));
        }
    });
}

unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

fn peak_alloc<T>(f: impl FnOnce() -> T) -> (T, usize) {
    PEAK.with(|p| p.set(0));
    TRACKING.with(|t| t.set(true));
    let out = f();
    TRACKING.with(|t| t.set(false));
    (out, PEAK.with(|p| p.get()))
}

const CONFIG: &str = r#"
    name = "r"
    seed = 3
    [data]
    dataset = "digits"
    [model]
    kind = "mlp"
    hidden = [4]
    [optim]
    kind = "adam"
    lr = 0.01
    [train]
    epochs = 2
    batch_size = 16
    loss = "cross_entropy"
"#;

fn sidecar() -> Sidecar {
    let cfg = ExperimentConfig::from_toml_str(CONFIG, &[]).unwrap();
    let h = BTreeMap::from([("epoch".to_string(), 1.0)]);
    Sidecar {
        format_version: FORMAT_VERSION,
        created_by: "test".into(),
        config: serde_json::to_value(&cfg).unwrap(),
        epoch: 1,
        optimizer_steps: 10,
        seed: 3,
        class_names: (0..10).map(|c| c.to_string()).collect(),
        input_shape: [1, 8, 8],
        metrics: h.clone(),
        history: vec![h],
        best_metric: None,
        best_epoch: None,
        epochs_without_improvement: 0,
        model_file: "model-e1.safetensors".into(),
        model_sha256: "ab".repeat(32),
        optim_file: None,
        optim_sha256: None,
    }
}

/// The tensors of the 64-4-10 MLP `CONFIG` describes.
fn mlp_tensors() -> HashMap<String, Tensor> {
    [
        ("layers.0.weight", vec![4, 64]),
        ("layers.0.bias", vec![4]),
        ("layers.1.weight", vec![10, 4]),
        ("layers.1.bias", vec![10]),
    ]
    .into_iter()
    .map(|(n, s)| (n.to_string(), Tensor::zeros(s, DType::F32, &Device::Cpu).unwrap()))
    .collect()
}

#[test]
fn the_allocation_tracker_sees_large_allocations() {
    let (v, peak) = peak_alloc(|| vec![1u8; 5 << 20]);
    assert_eq!(v.len(), 5 << 20);
    assert!(peak >= 5 << 20, "{peak}");
}

#[test]
fn valid_parts_build_the_model() {
    // The baseline the refusals below differ from by one field.
    let s = sidecar();
    let json = serde_json::to_vec(&s).unwrap();
    let p = Path::new("run/last.json");
    let s = checkpoint::parse_sidecar(&json, p).unwrap();
    checkpoint::inference_model_from_parts(
        p,
        &s,
        Path::new("run/model-e1.safetensors"),
        mlp_tensors(),
        &Device::Cpu,
    )
    .unwrap();
}

#[test]
fn sidecar_file_names_outside_the_folder_are_refused() {
    let p = Path::new("run/last.json");
    for bad in [
        "../../etc/passwd.safetensors",
        "/abs/model.safetensors",
        "sub/model.safetensors",
        "model.bin",
        "..",
        "",
    ] {
        let mut s = sidecar();
        s.model_file = bad.into();
        let e = checkpoint::parse_sidecar(&serde_json::to_vec(&s).unwrap(), p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("last.json") && e.contains("model_file"), "{bad}: {e}");
        let mut s = sidecar();
        s.optim_file = Some(bad.into());
        s.optim_sha256 = Some("cd".repeat(32));
        let e = checkpoint::parse_sidecar(&serde_json::to_vec(&s).unwrap(), p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("optim_file"), "{bad}: {e}");
    }
    let mut s = sidecar();
    s.model_sha256 = "../".repeat(21) + "a";
    let e = checkpoint::parse_sidecar(&serde_json::to_vec(&s).unwrap(), p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("model_sha256"), "{e}");
}

/// Hand-written safetensors bytes holding one tensor `x` of `dtype`.
fn safetensors_with(dtype: &str, shape: &[usize], nbytes: usize) -> Vec<u8> {
    let mut header =
        format!(r#"{{"x":{{"dtype":"{dtype}","shape":{shape:?},"data_offsets":[0,{nbytes}]}}}}"#).into_bytes();
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend(header);
    v.extend(vec![0u8; nbytes]);
    v
}

#[test]
fn non_float_weights_are_refused() {
    let p = Path::new("w.safetensors");
    let ok = safetensors_with("F32", &[2], 8);
    assert_eq!(
        checkpoint::tensors_from_bytes(&ok, p, &Device::Cpu).unwrap()["x"].dims(),
        &[2]
    );
    for (dtype, n) in [("U8", 2), ("I64", 16), ("BOOL", 2), ("F8_E4M3", 2)] {
        let e = checkpoint::tensors_from_bytes(&safetensors_with(dtype, &[2], n), p, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("w.safetensors") && e.contains("expected a floating-point tensor"),
            "{dtype}: {e}"
        );
    }
}

/// A stored config asking for a 10^9-wide layer, with the small model's weights:
/// refused, without allocating anything near 10^9 * 64 floats.
#[test]
fn config_layer_sizes_not_backed_by_weights_are_refused_without_allocating_them() {
    let mut s = sidecar();
    s.config["model"]["hidden"] = serde_json::json!([1_000_000_000u64]);
    let p = Path::new("run/last.json");
    let s = checkpoint::parse_sidecar(&serde_json::to_vec(&s).unwrap(), p).unwrap();
    let wp = Path::new("run/model-e1.safetensors");
    let (r, peak) =
        peak_alloc(|| checkpoint::inference_model_from_parts(p, &s, wp, mlp_tensors(), &Device::Cpu).map(|_| ()));
    let e = r.unwrap_err().to_string();
    assert!(
        e.contains("model-e1.safetensors") && e.contains("does not hold the model"),
        "{e}"
    );
    assert!(peak < 64 << 20, "allocated {peak} bytes for a config's layer size");
}

#[test]
fn optimizer_state_must_match_the_parameters() {
    let params: Vec<(String, Var)> = mlp_tensors()
        .into_iter()
        .map(|(n, t)| (n, Var::from_tensor(&t).unwrap()))
        .collect();
    let p = Path::new("optim-e1.safetensors");
    let t = |s: &[usize]| Tensor::zeros(s, DType::F32, &Device::Cpu).unwrap();
    let good = BTreeMap::from([
        ("layers.0.weight.exp_avg".to_string(), t(&[4, 64])),
        ("layers.1.bias.momentum".to_string(), t(&[10])),
    ]);
    assert_eq!(checkpoint::check_optim_state(p, good, &params).unwrap().len(), 2);
    for (key, shape, msg) in [
        ("layers.9.weight.exp_avg", vec![4, 64], "belongs to no parameter"),
        ("layers.0.weight", vec![4, 64], "belongs to no parameter"),
        (
            "layers.0.weight.exp_avg_sq",
            vec![64, 4],
            "expected shape [4, 64], found [64, 4]",
        ),
    ] {
        let e = checkpoint::check_optim_state(p, BTreeMap::from([(key.to_string(), t(&shape))]), &params)
            .unwrap_err()
            .to_string();
        assert!(e.contains("optim-e1.safetensors") && e.contains(msg), "{key}: {e}");
    }
}
