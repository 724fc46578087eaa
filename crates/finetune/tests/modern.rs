//! The candle-transformers backbones in `create_model` and `transfer`: training keys
//! refused before anything runs, a timm-layout hub checkpoint loading by name into
//! a frozen transfer run, and configs/mnist_transfer_modern.toml on a tiny MNIST
//! subset (skipped, with the reason printed, without `DIGITLAB_DATA`).
mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use digitlab_finetune::transfer::vars_from;
use digitlab_finetune::{create_model, run_transfer, CreateOptions, TransferConfig, TransferRunOptions};
use digitlab_models::{build_model, InputShape, ModelConfig, ModernArch, ModernConfig};

const RGB32: InputShape = InputShape {
    channels: 3,
    height: 32,
    width: 32,
};

#[test]
fn training_keys_are_refused_for_frozen_only_backbones() {
    let bad = |model: &str, keys: &str, transfer: &str| -> String {
        let text = format!(
            "name = \"t\"\n[data]\ndataset = \"digits\"\n[transfer]\n{transfer}\n[[backbones]]\nmodel = \"{model}\"\n\
             pretrained = \"none\"\n{keys}"
        );
        TransferConfig::from_toml_str(&text, &[]).unwrap_err().to_string()
    };
    for (keys, transfer, named) in [
        ("mode = \"full\"", "", "mode = \"full\""),
        ("mode = \"unfreeze\"\nunfreeze = 1", "", "mode = \"unfreeze\""),
        ("frozen_bn = \"train\"", "", "frozen_bn = \"train\""),
        ("", "dtype = \"bf16\"", "transfer.dtype = \"bf16\""),
    ] {
        let e = bad("convnext_tiny", keys, transfer);
        assert!(
            e.contains("backbones[0] (convnext_tiny-random)")
                && e.contains(named)
                && e.contains("eval mode")
                && e.contains("`convnext_tiny`"),
            "{e}"
        );
    }
    // The same keys are fine on a trainable backbone, and frozen is fine here.
    let ok = |model: &str, keys: &str| {
        let text = format!(
            "name = \"t\"\n[data]\ndataset = \"digits\"\n[[backbones]]\nmodel = \"{model}\"\npretrained = \"none\"\n{keys}"
        );
        TransferConfig::from_toml_str(&text, &[]).unwrap();
    };
    ok("small_cnn", "mode = \"full\"");
    ok("vit_small_patch16_224", "mode = \"frozen\"");
    // `digitlab train` refuses them too.
    let train = "name = \"t\"\n[data]\ndataset = \"digits\"\n[model]\nkind = \"modern\"\narch = \"convnext_tiny\"\n\
                 [optim]\nkind = \"sgd\"\nlr = 0.1\n[train]\nepochs = 1\nbatch_size = 8\nloss = \"cross_entropy\"\n";
    let e = digitlab_train::ExperimentConfig::from_toml_str(train, &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("eval mode only") && e.contains("model.kind"), "{e}");
}

#[test]
fn every_name_resolves_with_its_pretrained_cfg() {
    for arch in ModernArch::ALL {
        let a = digitlab_finetune::zoo::resolve_arch(arch.name()).unwrap();
        assert!(a.is_frozen_only());
        assert_eq!(a.config, ModelConfig::Modern(ModernConfig { arch }));
        let cfg = arch.pretrained_cfg();
        assert_eq!(a.default_resize(), Some([cfg.input_size, cfg.input_size]));
        assert_eq!(a.pretrained_sources(), [format!("hf:{}", cfg.hub)]);
        // The hub repo's name (timm's name and tag) resolves to it too.
        assert_eq!(digitlab_finetune::zoo::resolve_arch(cfg.hub).unwrap().name, arch.name());
    }
    let vit = digitlab_finetune::zoo::resolve_arch("vit_base_patch16_224").unwrap();
    assert_eq!(
        vit.normalization,
        Some(digitlab_data::Normalization::MeanStd {
            mean: vec![0.5; 3],
            std: vec![0.5; 3]
        })
    );
    let dino = digitlab_finetune::zoo::resolve_arch("dinov2_vits14").unwrap();
    assert_eq!(dino.default_resize(), Some([518, 518]));
    assert_eq!(dino.normalization, Some(digitlab_data::Normalization::imagenet()));
}

/// A timm-layout checkpoint (1000-class classifier, batch-norm statistics,
/// `num_batches_tracked`) served from a hand-built hub cache loads by name: every
/// backbone tensor is used, the classifier is re-initialised, and the frozen run
/// trains a head on features equal to the checkpoint's.
#[test]
fn a_timm_layout_hub_checkpoint_loads_into_a_frozen_transfer_run() {
    let dir = tempfile::tempdir().unwrap();
    let arch = ModernArch::Mobilenetv4ConvSmall;
    let cfg = ModelConfig::Modern(ModernConfig { arch });
    let ckpt = common::seeded_checkpoint(&cfg, RGB32, 1000, 5);
    assert!(ckpt.contains_key("blocks.2.0.dw_start.conv.weight"));
    assert!(
        !ckpt.keys().any(|k| k.contains("layer_scale")),
        "no timm tensor for an absent module"
    );
    let repo = "timm/mobilenetv4_conv_small.e2400_r224_in1k";
    let cache = dir.path().join("hub");
    common::hub_cache(&cache, repo, &ckpt);
    let hub = digitlab_finetune::HubConfig {
        offline: true,
        progress: false,
        ..digitlab_finetune::HubConfig::new(&cache)
    };
    let opts = CreateOptions {
        hub: Some(hub.clone()),
        ..CreateOptions::new(RGB32)
    };
    let m = create_model(
        "mobilenetv4_conv_small",
        &format!("hf:{repo}").parse().unwrap(),
        10,
        &opts,
    )
    .unwrap();
    let report = &m.pretrained.as_ref().unwrap().report;
    assert!(report.is_ok() && report.missing.is_empty() && report.unexpected.is_empty());
    assert_eq!(
        report.reinitialized().collect::<Vec<_>>(),
        ["classifier.bias", "classifier.weight"]
    );
    let backbone_tensors = ckpt
        .keys()
        .filter(|k| !k.starts_with("classifier.") && !k.ends_with("num_batches_tracked"));
    assert_eq!(report.loaded.len(), backbone_tensors.count());
    assert_eq!(m.feature_dim(), 1280);

    // The same features as a model built straight from the file's tensors.
    let direct = build_model(
        &cfg,
        RGB32,
        1000,
        VarBuilder::from_tensors(ckpt.clone(), DType::F32, &Device::Cpu),
    )
    .unwrap();
    let x = Tensor::rand(0f32, 1f32, (2, 3, 32, 32), &Device::Cpu).unwrap();
    assert!(common::bit_identical(
        &m.backbone().features(&x, false).unwrap(),
        &direct.features(&x, false).unwrap().unwrap()
    ));

    // A frozen transfer run on synthetic SVHN with that source.
    let data = common::svhn_data_dir(dir.path(), 80, 30);
    let text = format!(
        "name = \"modern_hub\"\nseed = 1\n[data]\ndataset = \"svhn\"\nval_fraction = 0.25\n[transfer]\nepochs = 2\n\
         batch_size = 16\nfeature_batch_size = 16\n[[backbones]]\nmodel = \"mobilenetv4_conv_small\"\n\
         pretrained = \"hf:{repo}\"\nresize = [32, 32]\n"
    );
    let tcfg = TransferConfig::from_toml_str(&text, &[]).unwrap();
    let run_opts = TransferRunOptions {
        out_dir: Some(dir.path().join("out")),
        cache_dir: Some(dir.path().join("feature-cache")),
        hub: Some(hub),
        vars: vars_from(HashMap::new()),
        ..Default::default()
    };
    let o = run_transfer(&tcfg, &data, &run_opts).unwrap().remove(0);
    assert_eq!(o.created.feature_dim(), 1280);
    assert_eq!(o.summary.test_images, 30);
    assert!(o.summary.test_accuracy.is_some());
    assert!(dir
        .path()
        .join("out/mobilenetv4_conv_small-pretrained/summary.json")
        .exists());
}

#[test]
fn mnist_transfer_modern_config_runs_on_a_tiny_subset() {
    let Some(data) = std::env::var_os("DIGITLAB_DATA")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
    else {
        println!(
            "mnist_transfer_modern_config_runs_on_a_tiny_subset: skipped, DIGITLAB_DATA (holding mnist/) is unset"
        );
        return;
    };
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs/mnist_transfer_modern.toml");
    // 18 training images (13 train / 5 validation), 6 test images, one epoch: about
    // 0.8 s per image for the five backbones on a 2-core CPU (candle runs grouped
    // convolutions group by group, and DINOv2 one image at a time).
    let overrides = [
        "data.subset=0.0003".into(),
        "data.test_limit=6".into(),
        "transfer.epochs=1".into(),
    ];
    let cfg = TransferConfig::load(&path, &overrides).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opts = TransferRunOptions {
        out_dir: None,
        cache_dir: Some(dir.path().join("cache")),
        vars: vars_from(HashMap::new()),
        ..Default::default()
    };
    let t0 = std::time::Instant::now();
    let outcomes = run_transfer(&cfg, &data, &opts).unwrap();
    eprintln!("total {:?}", t0.elapsed());
    assert_eq!(outcomes.len(), cfg.backbones.len());
    for o in &outcomes {
        let s = &o.summary;
        assert_eq!(s.test_images, 6, "{}", o.label);
        assert_eq!(
            s.transfer().unwrap().backbone_images,
            s.train_images + s.val_images + s.test_images,
            "{}: one backbone pass",
            o.label
        );
        println!(
            "{}: feature_dim {}, test accuracy {:.1}%",
            o.label,
            o.created.feature_dim(),
            100.0 * s.test_accuracy.unwrap()
        );
    }
}
