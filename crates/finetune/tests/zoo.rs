//! `create_model`: names, local and hub weights, mismatch reports, timm VGG names,
//! and the two real pretrained networks (when `DIGITLAB_WEIGHTS` is set).
mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Module, ModuleT, Tensor};
use digitlab_finetune::zoo::{create_model, remap_timm_vgg, CreateOptions};
use digitlab_finetune::{FinetuneError, WeightsSource};
use digitlab_models::{InputShape, ModelConfig};

const RGB32: InputShape = InputShape {
    channels: 3,
    height: 32,
    width: 32,
};

fn opts(input: InputShape) -> CreateOptions {
    CreateOptions::new(input)
}

#[test]
fn local_safetensors_load_by_name_with_the_head_reinitialised() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = common::seeded_checkpoint(&ModelConfig::Lenet5, RGB32, 1000, 5);
    let path = dir.path().join("lenet.safetensors");
    candle_core::safetensors::save(&ckpt, &path).unwrap();
    let m = create_model("lenet5", &WeightsSource::Local(path.clone()), 10, &opts(RGB32)).unwrap();
    let info = m.pretrained.as_ref().unwrap();
    assert_eq!(info.report.loaded.len(), 8, "{}", info.report);
    assert_eq!(
        info.report.reinitialized().collect::<Vec<_>>(),
        ["classifier.4.bias", "classifier.4.weight"]
    );
    assert_eq!(info.sha256, digitlab_finetune::zoo::file_sha256(&path).unwrap());
    assert_eq!(m.head_prefix(), "classifier.4");
    assert_eq!(m.feature_dim(), 84);
    assert_eq!(m.parameter_count(), 62_006, "3-channel LeNet-5");
    assert_eq!(m.head_parameter_count(), 850);
    // Loaded tensors are the file's, bit for bit; the new head has 10 rows.
    let vars = m.varmap.data().lock().unwrap();
    assert!(common::bit_identical(
        vars["features.0.weight"].as_tensor(),
        &ckpt["features.0.weight"]
    ));
    assert_eq!(vars["classifier.4.weight"].as_tensor().dims(), &[10, 84]);
    drop(vars);
    // With 1000 classes the head loads too.
    let m = create_model("lenet5", &WeightsSource::Local(path), 1000, &opts(RGB32)).unwrap();
    assert_eq!(m.pretrained.as_ref().unwrap().report.loaded.len(), 10);
    assert!(m.pretrained.as_ref().unwrap().report.head.is_empty());
    // Random weights: seeded, reproducible, identified by seed and digest.
    let a = create_model("lenet5", &WeightsSource::None, 10, &opts(RGB32)).unwrap();
    let b = create_model("lenet5", &WeightsSource::None, 10, &opts(RGB32)).unwrap();
    assert!(a.pretrained.is_none());
    assert_eq!(a.weights_id().unwrap(), b.weights_id().unwrap());
    assert!(a.weights_id().unwrap().starts_with("random:seed=0:sha256:"));
    let c = create_model(
        "lenet5",
        &WeightsSource::None,
        10,
        &CreateOptions { seed: 1, ..opts(RGB32) },
    )
    .unwrap();
    assert_ne!(a.weights_id().unwrap(), c.weights_id().unwrap());
}

#[test]
fn pytorch_checkpoints_load_like_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = common::seeded_checkpoint(&ModelConfig::SmallCnn, RGB32, 10, 21);
    // torch.save of a state dict keeps num_batches_tracked as int64; drop them here
    // (this writer stores f32 only; the loader ignores them anyway).
    let ckpt: HashMap<String, Tensor> = ckpt
        .into_iter()
        .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
        .collect();
    let (st, pth) = (dir.path().join("w.safetensors"), dir.path().join("w.pth"));
    candle_core::safetensors::save(&ckpt, &st).unwrap();
    common::write_pth(&pth, &ckpt);
    let a = create_model("small_cnn", &WeightsSource::Local(st), 10, &opts(RGB32)).unwrap();
    let b = create_model(
        "small_cnn",
        &format!("{}", pth.display()).parse().unwrap(),
        10,
        &opts(RGB32),
    )
    .unwrap();
    let info = b.pretrained.as_ref().unwrap();
    assert_eq!(info.format, digitlab_finetune::WeightsFormat::PyTorch);
    assert!(info.report.is_ok() && info.report.head.is_empty(), "{}", info.report);
    assert_eq!(info.report.loaded.len(), ckpt.len());
    let (va, vb) = (a.varmap.data().lock().unwrap(), b.varmap.data().lock().unwrap());
    assert_eq!(va.len(), vb.len());
    for (name, v) in va.iter() {
        assert!(common::bit_identical(v.as_tensor(), vb[name].as_tensor()), "{name}");
        assert!(common::bit_identical(v.as_tensor(), &ckpt[name]), "{name}");
    }
}

#[test]
fn every_mismatch_is_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut ckpt = common::seeded_checkpoint(&ModelConfig::Lenet5, RGB32, 10, 5);
    ckpt.remove("features.3.weight");
    ckpt.insert(
        "features.9.weight".into(),
        Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
    );
    ckpt.insert(
        "classifier.0.weight".into(),
        Tensor::zeros((120, 7), DType::F32, &Device::Cpu).unwrap(),
    );
    let path = dir.path().join("bad.safetensors");
    candle_core::safetensors::save(&ckpt, &path).unwrap();
    let e = create_model("lenet5", &WeightsSource::Local(path.clone()), 10, &opts(RGB32)).unwrap_err();
    let FinetuneError::ModelWeightsMismatch { report, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!(
        (
            report.missing.len(),
            report.unexpected.len(),
            report.shape_mismatches.len()
        ),
        (1, 1, 1)
    );
    let text = e.to_string();
    for needle in [
        "lenet5",
        "bad.safetensors",
        "features.3.weight [16, 6, 5, 5]",
        "features.9.weight [3]",
        "classifier.0.weight: model expects [120, 400], checkpoint has [120, 7]",
    ] {
        assert!(text.contains(needle), "{needle} not in:\n{text}");
    }
    // Pretrained RGB weights on gray input: refused before anything is read.
    let gray = InputShape {
        channels: 1,
        height: 32,
        width: 32,
    };
    let e = create_model("ccexam_svhn_cnn", &WeightsSource::Local(path), 10, &opts(gray))
        .unwrap_err()
        .to_string();
    assert!(e.contains("3 input channels") && e.contains("has 1"), "{e}");
    let e = create_model("googlenet", &WeightsSource::None, 10, &opts(RGB32))
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown model `googlenet`") && e.contains("resnet50"), "{e}");
    // AlexNet's stride-2 pools need 63 px: 32 px is refused before any weights load.
    let e = create_model("alexnet", &WeightsSource::None, 10, &opts(RGB32))
        .unwrap_err()
        .to_string();
    assert!(e.contains("alexnet") && e.contains("at least 63x63"), "{e}");
}

#[test]
fn hub_source_from_a_hand_built_offline_cache() {
    let dir = tempfile::tempdir().unwrap();
    let input = InputShape {
        channels: 3,
        height: 64,
        width: 64,
    };
    let ckpt = common::seeded_checkpoint(
        &ModelConfig::Resnet(digitlab_models::ResNetConfig {
            depth: 18,
            cifar_stem: false,
        }),
        input,
        1000,
        9,
    );
    let cache = dir.path().join("hub");
    let file = common::hub_cache(&cache, "timm/resnet18.a1_in1k", &ckpt);
    let hub = digitlab_finetune::HubConfig {
        offline: true,
        progress: false,
        ..digitlab_finetune::HubConfig::new(&cache)
    };
    let o = CreateOptions {
        hub: Some(hub.clone()),
        ..opts(input)
    };
    let m = create_model("resnet18", &"hf:timm/resnet18.a1_in1k".parse().unwrap(), 10, &o).unwrap();
    let info = m.pretrained.as_ref().unwrap();
    assert_eq!(info.path, file);
    assert_eq!(
        info.report.reinitialized().collect::<Vec<_>>(),
        ["fc.bias", "fc.weight"]
    );
    assert!(info.report.missing.is_empty() && info.report.unexpected.is_empty());
    assert_eq!(m.feature_dim(), 512);
    // A timm-style name works as the model name too.
    let m2 = create_model(
        "timm/resnet18.a1_in1k",
        &"hf:timm/resnet18.a1_in1k".parse().unwrap(),
        10,
        &o,
    )
    .unwrap();
    assert_eq!(m2.name, "resnet18");
    let x = Tensor::ones((1, 3, 64, 64), DType::F32, &Device::Cpu).unwrap();
    assert!(common::bit_identical(
        &m.backbone().features(&x, false).unwrap(),
        &m2.backbone().features(&x, false).unwrap()
    ));
    // Offline and absent: a clear error.
    let e = create_model("resnet50", &"hf:timm/resnet50.a1_in1k".parse().unwrap(), 10, &o)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("timm/resnet50.a1_in1k") && e.contains("HF_HUB_OFFLINE"),
        "{e}"
    );
}

#[test]
fn timm_vgg_names_map_to_torchvision_layout() {
    // Shapes of timm's vgg16 (`timm/vgg16.tv_in1k`) beyond the shared `features.*`.
    let z = |s: &[usize]| Tensor::zeros(s, DType::F32, &Device::Cpu).unwrap();
    let timm: HashMap<String, Tensor> = [
        ("features.0.weight", z(&[64, 3, 3, 3])),
        ("pre_logits.fc1.weight", z(&[4096, 512, 7, 7])),
        ("pre_logits.fc1.bias", z(&[4096])),
        ("pre_logits.fc2.weight", z(&[4096, 4096, 1, 1])),
        ("pre_logits.fc2.bias", z(&[4096])),
        ("head.fc.weight", z(&[1000, 4096])),
        ("head.fc.bias", z(&[1000])),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let (tv, renamed) = remap_timm_vgg(timm).unwrap();
    let shape = |k: &str| tv[k].dims().to_vec();
    assert_eq!(shape("features.0.weight"), [64, 3, 3, 3]);
    assert_eq!(shape("classifier.0.weight"), [4096, 25088]);
    assert_eq!(shape("classifier.0.bias"), [4096]);
    assert_eq!(shape("classifier.3.weight"), [4096, 4096]);
    assert_eq!(shape("classifier.6.weight"), [1000, 4096]);
    assert_eq!(renamed.len(), 6);
    assert!(renamed.contains(&("pre_logits.fc1.weight".to_string(), "classifier.0.weight".to_string())));
    // Torchvision checkpoints pass through untouched.
    let plain: HashMap<String, Tensor> = [("classifier.0.weight".to_string(), z(&[4, 25088]))]
        .into_iter()
        .collect();
    let (same, renamed) = remap_timm_vgg(plain).unwrap();
    assert!(renamed.is_empty() && same.contains_key("classifier.0.weight"));

    // Numerically: the 7x7 conv over a 7x7 map equals the linear layer on the
    // flattened map with the reshaped kernel (what torchvision's classifier.0 does).
    let n: usize = 5 * 512 * 49;
    let w: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
    let kernel = Tensor::from_vec(w, (5, 512, 7, 7), &Device::Cpu).unwrap();
    let xs: Vec<f32> = (0..2 * 512 * 49).map(|i| ((i * 104729) % 997) as f32 / 997.0).collect();
    let x = Tensor::from_vec(xs, (2, 512, 7, 7), &Device::Cpu).unwrap();
    let conv = x.conv2d(&kernel, 0, 1, 1, 1).unwrap().flatten_from(1).unwrap();
    let map: HashMap<String, Tensor> = [("pre_logits.fc1.weight".to_string(), kernel)].into_iter().collect();
    let (map, _) = remap_timm_vgg(map).unwrap();
    let linear = candle_nn::Linear::new(map["classifier.0.weight"].clone(), None);
    let lin = linear.forward(&x.flatten_from(1).unwrap()).unwrap();
    let diff: f32 = (conv - &lin)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    let scale: f32 = lin.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
    assert!(diff / scale < 1e-5, "conv vs linear: {diff} (scale {scale})");
}

/// `$DIGITLAB_WEIGHTS` (the test is ignored by default; run explicitly, it fails without it).
fn weights_dir(test: &str) -> Option<PathBuf> {
    match std::env::var_os("DIGITLAB_WEIGHTS").filter(|v| !v.is_empty()) {
        Some(d) => Some(PathBuf::from(d)),
        None => {
            panic!("{test}: set DIGITLAB_WEIGHTS to the folder holding efficientnet-lite0.safetensors and ccexam-svhn-cnn.safetensors")
        }
    }
}

#[test]
#[ignore = "needs the real pretrained networks: set DIGITLAB_WEIGHTS=../shared/weights (and DIGITLAB_DATA) and run `cargo test --release --workspace -- --ignored pretrained`"]
fn real_pretrained_networks_load_through_create_model() {
    let Some(dir) = weights_dir("real_pretrained_networks_load_through_create_model") else {
        return;
    };
    // ccexam's 10-class SVHN head fits 10 classes: everything loads.
    let path = dir.join("ccexam-svhn-cnn.safetensors");
    let m = create_model("ccexam_svhn_cnn", &WeightsSource::Local(path), 10, &opts(RGB32)).unwrap();
    let r = &m.pretrained.as_ref().unwrap().report;
    assert!(r.is_ok() && r.head.is_empty(), "{r}");
    assert_eq!(r.loaded.len(), 40);
    assert_eq!(m.parameter_count(), 815_018);
    assert_eq!(
        m.pretrained.as_ref().unwrap().sha256,
        "33a24cd532ba63944f9bd584edfed63907d3e1db6e81a2b0edf16b0fae5eb178"
    );
    // EfficientNet-Lite0's 1000-class ImageNet head is re-initialised for 10 classes.
    let path = dir.join("efficientnet-lite0.safetensors");
    let input = InputShape {
        channels: 3,
        height: 64,
        width: 64,
    };
    let m = create_model("efficientnet_lite0", &WeightsSource::Local(path), 10, &opts(input)).unwrap();
    let r = &m.pretrained.as_ref().unwrap().report;
    assert_eq!(r.reinitialized().collect::<Vec<_>>(), ["_fc.bias", "_fc.weight"]);
    assert!(r.missing.is_empty() && r.unexpected.is_empty());
    assert_eq!(m.feature_dim(), 1280);
    let x = Tensor::ones((2, 3, 64, 64), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(m.model.forward_t(&x, false).unwrap().dims(), &[2, 10]);
}
