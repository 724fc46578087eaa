//! The whole frozen-backbone transfer pipeline on a synthetic SVHN-layout `.mat`
//! (written here in MATLAB level-5 format) with "pretrained" weights served from a
//! hand-built, offline Hugging Face cache.
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, ModuleT, Tensor};
use digitlab_data::{Batcher, Pipeline};
use digitlab_finetune::transfer::{run_backbone, vars_from};
use digitlab_finetune::{run_transfer, HubConfig, TransferConfig, TransferOutcome, TransferRunOptions};
use digitlab_models::{InputShape, ModelConfig};

const REPO: &str = "digitlab-test/svhn-small-cnn";

/// 160 training images (120 train / 40 validation) and 60 test images.
const N_TRAIN: usize = 160;
const N_TEST: usize = 60;

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    data: PathBuf,
    hub: HubConfig,
    /// The "pretrained" checkpoint as written (with `module.` prefixes).
    checkpoint: HashMap<String, Tensor>,
}

/// A small_cnn checkpoint with a 1000-class head, every name under `module.` (as
/// `nn.DataParallel` saves), in an offline hub cache.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let data = common::svhn_data_dir(&root, N_TRAIN, N_TEST);
    let input = InputShape {
        channels: 3,
        height: 32,
        width: 32,
    };
    let checkpoint: HashMap<String, Tensor> = common::seeded_checkpoint(&ModelConfig::SmallCnn, input, 1000, 7)
        .into_iter()
        .map(|(k, v)| (format!("module.{k}"), v))
        .collect();
    let cache = root.join("hf-cache");
    common::hub_cache(&cache, REPO, &checkpoint);
    // Through the real environment parsing, without touching the process environment.
    let cache_str = cache.display().to_string();
    let hub = HubConfig::from_vars(|k| match k {
        "HF_HUB_CACHE" => Some(cache_str.clone()),
        "HF_HUB_OFFLINE" => Some("1".into()),
        _ => None,
    })
    .unwrap();
    assert!(hub.offline);
    Fixture {
        _dir: dir,
        root,
        data,
        hub,
        checkpoint,
    }
}

fn config(extra: &[&str]) -> TransferConfig {
    let text = format!(
        r#"
        name = "svhn_synthetic"
        seed = 3
        [data]
        dataset = "svhn"
        val_fraction = 0.25
        [transfer]
        epochs = 5
        batch_size = 16
        feature_batch_size = 32
        [[backbones]]
        model = "small_cnn"
        pretrained = "hf:{REPO}"
        normalize = "svhn"
        [[backbones]]
        model = "small_cnn"
        pretrained = "none"
        normalize = "svhn"
        "#
    );
    let overrides: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    TransferConfig::from_toml_str(&text, &overrides).unwrap()
}

fn options(f: &Fixture, out: Option<PathBuf>, cache: &Path) -> TransferRunOptions {
    TransferRunOptions {
        out_dir: out,
        hub: Some(f.hub.clone()),
        cache_dir: Some(cache.to_path_buf()),
        vars: vars_from(HashMap::new()),
        ..Default::default()
    }
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

#[test]
fn end_to_end_on_synthetic_svhn_with_an_offline_hub_cache() {
    let f = fixture();
    let out = f.root.join("out");
    let cache = f.root.join("feature-cache");
    let outcomes = run_transfer(&config(&[]), &f.data, &options(&f, Some(out.clone()), &cache)).unwrap();
    assert_eq!(outcomes.len(), 2);

    let pre = &outcomes[0];
    assert_eq!(pre.label, "small_cnn-pretrained");
    let info = pre.created.pretrained.as_ref().expect("weights were loaded");
    assert!(
        info.path.starts_with(f.root.join("hf-cache")),
        "{}",
        info.path.display()
    );
    assert_eq!(info.stripped_prefixes, ["module."]);
    // Every backbone tensor loaded; the 1000-class head re-initialised for 10 classes.
    assert_eq!(info.report.loaded.len(), f.checkpoint.len() - 6 - 2, "{}", info.report);
    let reinit: Vec<&str> = info.report.reinitialized().collect();
    assert_eq!(reinit, ["classifier.4.bias", "classifier.4.weight"]);
    assert_eq!(info.report.ignored.len(), 6, "num_batches_tracked of the 6 batch norms");

    for o in &outcomes {
        let s = &o.summary;
        let t = s.transfer().expect("a transfer summary");
        let dir = out.join(&o.label);
        // One backbone pass per split for five epochs.
        assert_eq!(s.epochs, 5);
        assert_eq!((s.train_images, s.val_images, s.test_images), (120, 40, 60));
        assert_eq!(t.backbone_images, 120 + 40 + 60, "{}: {s:?}", o.label);
        assert_eq!(t.backbone_batches, 4 + 2 + 2);
        assert_eq!((t.cache_hits, t.cache_misses), (0, 3));
        assert_eq!(o.head.history.len(), 5);
        // Counts: the ccexam-layout CNN at 32 px; only the new 256 -> 10 head trains.
        assert_eq!(
            (t.params_total, t.params_trainable, t.feature_dim),
            (815_018, 2_570, 256)
        );
        assert!(t.backbone_seconds > 0.0 && t.head_seconds > 0.0);
        let test = s.test_accuracy.unwrap();
        assert!(
            test > 0.6,
            "{}: test accuracy {test} on an easy synthetic task",
            o.label
        );
        assert_eq!(t.overfit, Some(t.train_val_gap.unwrap() > 0.05));

        let sj = json(&dir.join("summary.json"));
        for key in [
            "test_accuracy",
            "test_macro_f1",
            "val_accuracy",
            "train_accuracy",
            "epochs",
            "wall_seconds",
            "train_samples_per_second",
            "backbone_seconds",
            "head_seconds",
            "params_total",
            "params_trainable",
        ] {
            assert!(
                sj.get(key).is_some_and(|v| !v.is_null()),
                "{}: summary.json lacks {key}: {sj}",
                o.label
            );
        }
        let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
        assert_eq!(csv.lines().count(), 6, "{csv}");
        for file in [
            "config.toml",
            "per_class.csv",
            "weights_report.txt",
            "head.safetensors",
            "loss.png",
            "accuracy.png",
            "confusion.png",
        ] {
            assert!(dir.join(file).is_file(), "{}: no {file}", o.label);
        }
        let cfg_back = TransferConfig::load(&dir.join("config.toml"), &[]).unwrap();
        assert_eq!(cfg_back.backbones.len(), 1);
    }
    let report = std::fs::read_to_string(out.join("small_cnn-pretrained/weights_report.txt")).unwrap();
    assert!(
        report.contains("classifier.4.weight: model expects [10, 256], checkpoint has [1000, 256] -> re-initialised"),
        "{report}"
    );
    assert!(
        report.contains(&info.sha256) && report.contains("stripped prefixes: module."),
        "{report}"
    );

    let md = std::fs::read_to_string(out.join("compare.md")).unwrap();
    assert!(
        md.contains("| small_cnn-pretrained | transfer | small_cnn |") && md.contains("| small_cnn-random |"),
        "{md}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("compare.csv"))
            .unwrap()
            .lines()
            .count(),
        3
    );
    assert!(out.join("compare.png").is_file());
}

#[test]
fn backbone_stays_frozen_and_the_classifier_matches_the_cached_head() {
    let f = fixture();
    let cfg = config(&[]);
    let cache = f.root.join("feature-cache");
    let opts = options(&f, None, &cache);
    let data = digitlab_finetune::transfer::prepare_data(&cfg.data, cfg.seed, &f.data).unwrap();
    let o: TransferOutcome = run_backbone(&cfg, &cfg.backbones[0], &data, &opts).unwrap();

    // Only the head's two tensors reached the optimizer.
    assert_eq!(o.head.trainable, ["classifier.4.bias", "classifier.4.weight"]);
    // After feature extraction and 5 epochs of head training, every backbone tensor —
    // weights and batch-norm running statistics — is bit-identical to the checkpoint.
    let vars = o.created.varmap.data().lock().unwrap();
    let mut compared = 0;
    for (name, var) in vars.iter().filter(|(n, _)| !n.starts_with("classifier.4.")) {
        let want = &f.checkpoint[&format!("module.{name}")];
        assert!(common::bit_identical(var.as_tensor(), want), "{name} changed");
        compared += 1;
    }
    assert_eq!(compared, 6 * 4 + 6 * 2 + 2, "conv w+b, bn w+b+mean+var, fc1 w+b");
    drop(vars);

    // The test would see a train-mode pass: it updates the running statistics.
    let images = Tensor::ones((2, 3, 32, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
    o.created.backbone().features(&images, true).unwrap();
    let moved = o.created.varmap.data().lock().unwrap()["features.0.1.running_mean"]
        .as_tensor()
        .clone();
    assert!(!common::bit_identical(
        &moved,
        &f.checkpoint["module.features.0.1.running_mean"]
    ));

    // The assembled classifier (backbone + head with the standardisation folded in)
    // on raw test images agrees with the head on cached, standardised features.
    let o: TransferOutcome = run_backbone(&cfg, &cfg.backbones[1], &data, &opts).unwrap();
    let test = data.test.as_ref().unwrap();
    let pipeline = Pipeline {
        normalize: digitlab_finetune::zoo::svhn_normalization(),
        ..Default::default()
    };
    let (x, _) = Batcher::new(test, &pipeline, 1000, &Device::Cpu)
        .unwrap()
        .all()
        .unwrap();
    let logits = o.classifier().unwrap().forward_t(&x, false).unwrap();
    let pred: Vec<u32> = logits.argmax(1).unwrap().to_vec1().unwrap();
    assert_eq!(pred, o.test.as_ref().unwrap().predictions);
}

#[test]
fn feature_cache_hits_misses_and_invalidation() {
    let f = fixture();
    let cache = f.root.join("feature-cache");
    let opts = options(&f, None, &cache);
    let run = |extra: &[&str]| -> TransferOutcome {
        let mut o = run_transfer(&config(extra), &f.data, &opts).unwrap();
        o.truncate(1);
        o.pop().unwrap()
    };
    let only_random = "backbones=[{model = \"small_cnn\", normalize = \"svhn\"}]";
    let first = run(&[only_random]);
    assert_eq!(
        (first.stats.hits, first.stats.misses, first.stats.backbone_images),
        (0, 3, 220)
    );
    // Beside the folder's marker (digitlab_train::run_dir).
    let entries = || {
        std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| !p.ends_with(digitlab_train::run_dir::MARKER_FILE))
            .collect::<Vec<_>>()
    };
    assert_eq!(entries().len(), 3, "one file per split");

    // Same key: zero backbone passes, identical results.
    let again = run(&[only_random]);
    assert_eq!((again.stats.hits, again.stats.misses), (3, 0));
    assert_eq!((again.stats.backbone_images, again.stats.backbone_batches), (0, 0));
    assert_eq!(again.summary.transfer().unwrap().backbone_seconds, 0.0);
    assert_eq!(again.summary.test_accuracy, first.summary.test_accuracy);
    let metrics = |o: &TransferOutcome| -> Vec<Vec<(String, f64)>> {
        let timing = ["seconds", "train_samples_per_second"];
        o.head
            .history
            .iter()
            .map(|h| {
                h.iter()
                    .filter(|(k, _)| !timing.contains(&k.as_str()))
                    .map(|(k, v)| (k.clone(), *v))
                    .collect()
            })
            .collect()
    };
    assert_eq!(
        metrics(&again),
        metrics(&first),
        "bit-identical losses and accuracies from cached features"
    );

    // More epochs: still no backbone pass.
    let longer = run(&[only_random, "transfer.epochs=7"]);
    assert_eq!(
        (
            longer.stats.hits,
            longer.stats.backbone_images,
            longer.head.history.len()
        ),
        (3, 0, 7)
    );

    // Any key change recomputes: resize, normalisation, channels.
    let resized = run(&["backbones=[{model = \"small_cnn\", normalize = \"svhn\", resize = [40, 40]}]"]);
    assert_eq!((resized.stats.hits, resized.stats.misses), (0, 3));
    let unit = run(&["backbones=[{model = \"small_cnn\", normalize = \"unit\"}]"]);
    assert_eq!((unit.stats.hits, unit.stats.misses), (0, 3));
    // A subset changes train and validation but not the test split.
    let subset = run(&[only_random, "data.subset=0.5"]);
    assert_eq!((subset.stats.hits, subset.stats.misses), (1, 2));
    assert_eq!(subset.stats.backbone_images, 60 + 20);
    // A new seed changes the split and the random weights: everything recomputes.
    let seeded = run(&[only_random, "seed=4"]);
    assert_eq!((seeded.stats.hits, seeded.stats.misses), (0, 3));

    // Different weights file content: recomputed; the same content again: hits.
    let input = InputShape {
        channels: 3,
        height: 32,
        width: 32,
    };
    let weights = f.root.join("w.safetensors");
    candle_core::safetensors::save(
        &common::seeded_checkpoint(&ModelConfig::SmallCnn, input, 10, 11),
        &weights,
    )
    .unwrap();
    let local = format!(
        "backbones=[{{model = \"small_cnn\", normalize = \"svhn\", pretrained = \"{}\"}}]",
        weights.display()
    );
    assert_eq!(run(&[&local]).stats.misses, 3);
    assert_eq!(run(&[&local]).stats.hits, 3);
    candle_core::safetensors::save(
        &common::seeded_checkpoint(&ModelConfig::SmallCnn, input, 10, 12),
        &weights,
    )
    .unwrap();
    let changed = run(&[&local]);
    assert_eq!((changed.stats.hits, changed.stats.misses), (0, 3));

    // A corrupt cache file is reported and recomputed, never trusted.
    let before = first.summary.test_accuracy;
    for p in std::fs::read_dir(&cache).unwrap().map(|e| e.unwrap().path()) {
        if p.file_name().unwrap().to_string_lossy().starts_with("small_cnn-test-") {
            std::fs::write(&p, b"garbage").unwrap();
        }
    }
    let repaired = run(&[only_random]);
    assert_eq!(
        (repaired.stats.hits, repaired.stats.misses, repaired.stats.invalid),
        (2, 1, 1)
    );
    assert!(
        repaired.stats.invalid_reasons[0].contains("unreadable"),
        "{:?}",
        repaired.stats.invalid_reasons
    );
    assert_eq!(repaired.summary.test_accuracy, before);
    assert_eq!(run(&[only_random]).stats.hits, 3);
    // No temporary files left behind.
    assert!(entries()
        .iter()
        .all(|p| p.extension().is_some_and(|x| x == "safetensors")));
}

#[test]
fn missing_hub_file_and_mismatched_weights_fail_clearly() {
    let f = fixture();
    let cache = f.root.join("feature-cache");
    let opts = options(&f, None, &cache);
    // A repo that is not in the offline cache: the message says where it looked.
    let cfg = config(&["backbones=[{model = \"resnet18\", pretrained = \"hf:timm/resnet18.a1_in1k\"}]"]);
    let e = run_transfer(&cfg, &f.data, &opts).err().unwrap().to_string();
    assert!(
        e.contains("timm/resnet18.a1_in1k") && e.contains("hf-cache") && e.contains("model.safetensors"),
        "{e}"
    );

    // small_cnn weights into LeNet-5: every mismatch in one message.
    let cfg = config(&[&format!(
        "backbones=[{{model = \"lenet5\", pretrained = \"hf:{REPO}\"}}]"
    )]);
    let e = run_transfer(&cfg, &f.data, &opts).err().unwrap().to_string();
    assert!(e.contains("lenet5") && e.contains("do not match"), "{e}");
    assert!(
        e.contains("features.3.weight") && e.contains("classifier.2.weight"),
        "missing tensors listed: {e}"
    );
    assert!(
        e.contains("features.1.0.weight") && e.contains("features.2.4.running_var"),
        "unexpected tensors listed: {e}"
    );

    // An unset ${VAR} names the variable and the backbone.
    let cfg = config(&["backbones=[{model = \"small_cnn\", pretrained = \"${NO_SUCH_DIR}/x.safetensors\"}]"]);
    let e = run_transfer(&cfg, &f.data, &opts).err().unwrap().to_string();
    assert!(e.contains("NO_SUCH_DIR") && e.contains("small_cnn-pretrained"), "{e}");
}

#[test]
fn committed_svhn_transfer_config_runs_its_resnet18_entry() {
    // configs/svhn_transfer.toml as committed (timm hub id, 224 px, ImageNet
    // normalisation, 25% subset, 75/25 split, 5 epochs), restricted to its ResNet-18
    // entry, on a small synthetic SVHN with the timm repo in an offline cache.
    let dir = tempfile::tempdir().unwrap();
    let data = common::svhn_data_dir(dir.path(), 80, 20);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/svhn_transfer.toml");
    let mut cfg = TransferConfig::load(&path, &[]).unwrap();
    cfg.backbones.retain(|b| b.model == "resnet18");
    assert_eq!(cfg.backbones.len(), 1);
    let repo = cfg.backbones[0].pretrained.strip_prefix("hf:").unwrap().to_string();
    let resnet18 = ModelConfig::Resnet(digitlab_models::ResNetConfig {
        depth: 18,
        cifar_stem: false,
    });
    let input = InputShape {
        channels: 3,
        height: 224,
        width: 224,
    };
    let ckpt = common::seeded_checkpoint(&resnet18, input, 1000, 13);
    let cache = dir.path().join("hf");
    common::hub_cache(&cache, &repo, &ckpt);
    let hub = HubConfig {
        offline: true,
        progress: false,
        ..HubConfig::new(&cache)
    };
    let opts = TransferRunOptions {
        out_dir: Some(dir.path().join("out")),
        hub: Some(hub),
        cache_dir: Some(dir.path().join("features")),
        ..Default::default()
    };
    let o = run_transfer(&cfg, &data, &opts).unwrap().pop().unwrap();
    let s = &o.summary;
    let t = s.transfer().expect("a transfer summary");
    assert_eq!(s.name, "resnet18-pretrained");
    assert_eq!((t.input_channels, t.input_height, t.input_width), (3, 224, 224));
    assert_eq!(
        (t.normalization.as_str(), t.feature_dim, s.epochs),
        ("imagenet", 512, 5)
    );
    // A 25% subset of 80 images (2 per class; the stratified 75/25 split keeps 1
    // per class for validation), and all 20 test images.
    assert_eq!((s.train_images, s.val_images, s.test_images), (10, 10, 20));
    assert_eq!(t.backbone_images, 40);
    let r = &o.created.pretrained.as_ref().unwrap().report;
    assert_eq!(
        r.loaded.len(),
        ckpt.len() - 2 - 20,
        "all but fc and 20 num_batches_tracked: {r}"
    );
    assert_eq!(r.reinitialized().collect::<Vec<_>>(), ["fc.bias", "fc.weight"]);
    assert_eq!((t.params_total, t.params_trainable), (11_689_512 - 513 * 990, 5_130));
    assert!(dir.path().join("out/compare.md").is_file());
}

#[test]
fn a_backbone_that_cannot_load_is_a_failed_row_and_the_others_run() {
    let f = fixture();
    let out = f.root.join("out");
    let cache = f.root.join("feature-cache");
    let opts = options(&f, Some(out.clone()), &cache);
    // Three backbones: a hub repo missing from the offline cache, a weights file
    // that does not exist, and one that loads.
    let missing_file = f.root.join("no-such-weights.safetensors");
    let cfg = config(&[&format!(
        "backbones=[{{model = \"resnet18\", pretrained = \"hf:timm/resnet18.a1_in1k\", label = \"offline\"}}, \
         {{model = \"small_cnn\", pretrained = \"{}\", label = \"no-file\"}}, \
         {{model = \"small_cnn\", pretrained = \"hf:{REPO}\", normalize = \"svhn\", label = \"good\"}}]",
        missing_file.display()
    )]);
    let run = digitlab_finetune::run_transfer_all(&cfg, &f.data, &opts).unwrap();
    assert_eq!(run.outcomes.len(), 1);
    assert_eq!(run.outcomes[0].label, "good");
    let failed: Vec<&str> = run.failed.iter().map(|f| f.label.as_str()).collect();
    assert_eq!(failed, ["offline", "no-file"]);
    assert!(
        run.failed[0].reason.contains("timm/resnet18.a1_in1k"),
        "{}",
        run.failed[0].reason
    );
    assert!(
        run.failed[1].reason.contains("no-such-weights"),
        "{}",
        run.failed[1].reason
    );
    assert!(out.join("good/summary.json").is_file());
    assert!(!out.join("offline").exists() && !out.join("no-file").exists());

    let md = std::fs::read_to_string(out.join("compare.md")).unwrap();
    assert!(md.contains("| good |"), "{md}");
    assert!(
        md.contains("| offline | transfer | resnet18 | frozen | svhn/train[train] | FAILED"),
        "{md}"
    );
    assert!(md.contains("- **no-file**: ") && md.contains("no-such-weights"), "{md}");
    let csv = std::fs::read_to_string(out.join("compare.csv")).unwrap();
    assert!(csv.lines().next().unwrap().ends_with(",summary,failed"), "{csv}");
    assert_eq!(csv.lines().count(), 4, "{csv}");
    let offline = csv.lines().find(|l| l.starts_with("offline,")).unwrap();
    assert!(offline.contains("timm/resnet18.a1_in1k"), "{offline}");
    let good = csv.lines().find(|l| l.starts_with("good,")).unwrap();
    assert!(good.ends_with(','), "a good row has an empty `failed` field: {good}");

    // The strict entry point ends with an error naming every failed backbone.
    let e = run_transfer(&cfg, &f.data, &opts).err().unwrap().to_string();
    assert!(
        e.contains("2 of 3 backbones failed") && e.contains("offline") && e.contains("no-file"),
        "{e}"
    );
}
