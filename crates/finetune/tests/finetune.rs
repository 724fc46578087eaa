//! Fine-tuning beyond the linear probe (`mode = "unfreeze" | "full"`, `head_epochs`,
//! `frozen_bn = "train"`, discriminative learning rates, the best epoch kept) on a
//! synthetic SVHN-layout `.mat` with a "pretrained" small CNN from a local file.
mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, ModuleT, Tensor};
use digitlab_finetune::transfer::vars_from;
use digitlab_finetune::tune::param_groups;
use digitlab_finetune::{
    create_model, run_transfer, CreateOptions, TransferConfig, TransferOutcome, TransferRunOptions, WeightsSource,
};
use digitlab_models::{InputShape, ModelConfig};

const INPUT: InputShape = InputShape {
    channels: 3,
    height: 32,
    width: 32,
};

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    data: PathBuf,
    weights: PathBuf,
    /// The checkpoint as written.
    checkpoint: HashMap<String, Tensor>,
}

/// 120 train / 40 validation / 60 test synthetic images and a small_cnn checkpoint
/// (1000-class head, non-trivial batch-norm statistics) in a safetensors file.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let data = common::svhn_data_dir(&root, 160, 60);
    let checkpoint = common::seeded_checkpoint(&ModelConfig::SmallCnn, INPUT, 1000, 7);
    let weights = root.join("small_cnn.safetensors");
    candle_core::safetensors::save(&checkpoint, &weights).unwrap();
    Fixture {
        _dir: dir,
        root,
        data,
        weights,
        checkpoint,
    }
}

/// One small_cnn backbone with `keys` (TOML lines) added to its entry.
fn config(f: &Fixture, keys: &str, transfer: &str) -> TransferConfig {
    let text = format!(
        r#"
        name = "finetune_synthetic"
        seed = 3
        [data]
        dataset = "svhn"
        val_fraction = 0.25
        [transfer]
        epochs = 2
        batch_size = 16
        feature_batch_size = 32
        {transfer}
        [[backbones]]
        model = "small_cnn"
        pretrained = "{}"
        normalize = "svhn"
        {keys}
        "#,
        f.weights.display()
    );
    TransferConfig::from_toml_str(&text, &[]).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn run(f: &Fixture, cfg: &TransferConfig, out: Option<PathBuf>) -> TransferOutcome {
    let opts = TransferRunOptions {
        out_dir: out,
        cache_dir: Some(f.root.join("feature-cache")),
        vars: vars_from(HashMap::new()),
        ..Default::default()
    };
    run_transfer(cfg, &f.data, &opts).unwrap().remove(0)
}

/// The created model's tensors by name.
fn tensors(o: &TransferOutcome) -> HashMap<String, Tensor> {
    let data = o.created.varmap.data().lock().unwrap();
    data.iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().copy().unwrap()))
        .collect()
}

/// Stage names of small_cnn, in order, and which stage holds `name`.
fn stage_of(o: &TransferOutcome, name: &str) -> Option<usize> {
    o.created.backbone().stages().iter().position(|s| s.contains(name))
}

#[test]
fn unfreeze_trains_the_last_stage_and_leaves_the_others_bit_identical() {
    let f = fixture();
    let out = f.root.join("out");
    let o = run(
        &f,
        &config(&f, "mode = \"unfreeze\"\nunfreeze = 1", ""),
        Some(out.clone()),
    );
    let stages = o.created.backbone().stages().len();
    assert!(stages >= 3, "{stages}");
    let after = tensors(&o);
    let (mut kept, mut changed) = (0, 0);
    for (name, t) in &after {
        match stage_of(&o, name) {
            // The head (re-initialised for 10 classes) trained.
            None => assert!(name.starts_with(o.created.head_prefix()), "{name}"),
            Some(s) if s + 1 < stages => {
                // Frozen: parameters and batch-norm statistics exactly as loaded.
                assert!(common::bit_identical(t, &f.checkpoint[name]), "frozen `{name}` changed");
                kept += 1;
            }
            Some(_) => {
                if !name.ends_with("num_batches_tracked") {
                    assert!(
                        !common::bit_identical(t, &f.checkpoint[name]),
                        "unfrozen `{name}` did not change"
                    );
                    changed += 1;
                }
            }
        }
    }
    assert!(kept > 0 && changed > 0, "{kept} kept, {changed} changed");
    let t = o.summary.transfer().unwrap();
    assert_eq!(t.protocol, "unfreeze 1");
    assert_eq!(t.trained_stages.len(), 1);
    // No head-only phase: the backbone runs inside the training loop, nothing is cached.
    assert_eq!(t.backbone_images, 0);
    assert_eq!(t.feature_rms, None);
    assert!(t.params_trainable > 0 && t.params_trainable < t.params_total);

    // The exported model is the fine-tuned one: same logits as the run's classifier.
    let exported =
        digitlab_finetune::export::load_exported(&out.join(&o.label).join("model.json"), &Device::Cpu).unwrap();
    let x = Tensor::randn(0f32, 1.0, (3, 3, 32, 32), &Device::Cpu).unwrap();
    let a = exported.model.forward_t(&x, false).unwrap();
    let b = o.classifier().unwrap().forward_t(&x, false).unwrap();
    let diff: f32 = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap();
    assert!(diff < 1e-5, "{diff}");
    let table = std::fs::read_to_string(out.join("compare.md")).unwrap();
    assert!(table.contains("| unfreeze 1 |"), "{table}");
}

#[test]
fn unfrozen_bn_eval_trains_the_stage_but_keeps_its_running_statistics() {
    let f = fixture();
    let o = run(
        &f,
        // The last two stages: the last conv block (with batch norm) and fc1.
        &config(&f, "mode = \"unfreeze\"\nunfreeze = 2\nunfrozen_bn = \"eval\"", ""),
        None,
    );
    let stages = o.created.backbone().stages().len();
    let (mut stats, mut weights) = (0, 0);
    for (name, t) in &tensors(&o) {
        if stage_of(&o, name).is_none_or(|s| s + 2 < stages) || name.ends_with("num_batches_tracked") {
            continue;
        }
        let same = common::bit_identical(t, &f.checkpoint[name]);
        if name.ends_with("running_mean") || name.ends_with("running_var") {
            assert!(same, "`{name}` drifted although the stage ran in eval mode");
            stats += 1;
        } else {
            assert!(!same, "unfrozen `{name}` did not train");
            weights += 1;
        }
    }
    assert!(stats > 0 && weights > 0, "{stats} statistics, {weights} weights");
    let b = o.created.backbone();
    assert_eq!(b.frozen_stages(), stages - 2);
}

#[test]
fn a_fine_tune_that_never_beats_the_head_phase_ends_with_the_head_phase_weights() {
    let f = fixture();
    // Adam steps of 0.3 on every backbone weight: wrecked at once, but finite.
    let cfg = config(
        &f,
        "mode = \"full\"\nhead_epochs = 2\nepochs = 2\nbackbone_lr_mult = 300",
        "",
    );
    let o = run(&f, &cfg, None);
    let t = o.summary.transfer().unwrap();
    let acc: Vec<f64> = o.head.history.iter().map(|h| h["val_accuracy"]).collect();
    let head_best = acc[..2].iter().cloned().fold(f64::MIN, f64::max);
    assert!(
        acc[2..].iter().all(|a| *a <= head_best),
        "the wrecking run improved: {acc:?}"
    );
    let head_epoch = 1 + acc[..2].iter().position(|a| *a == head_best).unwrap();
    assert_eq!(t.best_epoch, Some(head_epoch), "{acc:?}");
    // The kept weights are the head phase's: the backbone exactly as loaded, and
    // the final validation accuracy that of the head phase.
    for (name, t) in &tensors(&o) {
        if !name.starts_with(o.created.head_prefix()) {
            assert!(common::bit_identical(t, &f.checkpoint[name]), "`{name}` not put back");
        }
    }
    assert!((o.summary.val_accuracy.unwrap() - head_best).abs() < 1e-9, "{acc:?}");
}

#[test]
fn full_mode_after_head_epochs_trains_every_stage_with_one_cached_pass() {
    let f = fixture();
    let o = run(
        &f,
        // Kept by training loss: on 40 validation images the head phase may well
        // stay the best, and then its weights, not the fine-tuned ones, are kept.
        // A gentle backbone rate: the fixture's random "pretrained" network has
        // features of RMS 0.025, which Adam steps of 1e-4 already swamp.
        &config(
            &f,
            "mode = \"full\"\nhead_epochs = 2\nepochs = 1\nbackbone_lr_mult = 0.01",
            "select = \"train_loss\"",
        ),
        None,
    );
    let t = o.summary.transfer().unwrap();
    assert_eq!(t.protocol, "head 2 + full");
    // Head epochs on cached train + validation features: one backbone pass each.
    assert_eq!(t.backbone_images, 120 + 40);
    assert_eq!(o.head.history.len(), 3);
    let epochs: Vec<f64> = o.head.history.iter().map(|h| h["epoch"]).collect();
    assert_eq!(epochs, [1.0, 2.0, 3.0]);
    let after = tensors(&o);
    let stages = o.created.backbone().stages().len();
    let mut changed = vec![false; stages];
    for (name, t) in &after {
        if let Some(s) = stage_of(&o, name) {
            changed[s] |= !common::bit_identical(t, &f.checkpoint[name]);
        }
    }
    let losses: Vec<f64> = o.head.history.iter().map(|h| h["train_loss"]).collect();
    assert!(
        changed.iter().all(|c| *c),
        "{changed:?} {losses:?} kept {:?} rms {:?}",
        t.best_epoch,
        t.feature_rms
    );
}

#[test]
fn frozen_bn_train_reproduces_the_coursework_protocol() {
    let f = fixture();
    let o = run(&f, &config(&f, "frozen_bn = \"train\"\nepochs = 1", ""), None);
    let t = o.summary.transfer().unwrap();
    assert_eq!(t.protocol, "frozen (bn train)");
    assert_eq!(t.backbone_images, 0, "no feature cache with batch statistics");
    let (mut weights, mut stats) = (0, 0);
    for (name, t) in &tensors(&o) {
        if name.starts_with(o.created.head_prefix()) || name.ends_with("num_batches_tracked") {
            continue;
        }
        let same = common::bit_identical(t, &f.checkpoint[name]);
        if name.ends_with("running_mean") || name.ends_with("running_var") {
            // model.train(): batch norm used batch statistics and its running ones drifted.
            assert!(!same, "`{name}` did not drift");
            stats += 1;
        } else {
            assert!(same, "frozen weight `{name}` changed");
            weights += 1;
        }
    }
    assert!(weights > 0 && stats > 0);
}

#[test]
fn the_kept_epoch_is_the_best_by_the_selection_metric() {
    let f = fixture();
    for (keys, transfer) in [
        (
            "epochs = 6",
            "optim = { kind = \"adam\", lr = 0.05 }\nselect = \"val_loss\"",
        ),
        (
            "mode = \"unfreeze\"\nunfreeze = 2\nepochs = 3",
            "select = \"val_accuracy\"",
        ),
    ] {
        let cfg = config(&f, keys, transfer);
        let o = run(&f, &cfg, None);
        let t = o.summary.transfer().unwrap();
        let metric = cfg.transfer.select;
        let values: Vec<f64> = o.head.history.iter().map(|h| h[metric.as_str()]).collect();
        let best = (0..values.len())
            .reduce(|b, i| {
                let better = if metric.higher_is_better() {
                    values[i] > values[b]
                } else {
                    values[i] < values[b]
                };
                if better {
                    i
                } else {
                    b
                }
            })
            .unwrap();
        assert_eq!(t.best_epoch, Some(best + 1), "{keys}: {values:?}");
        assert_eq!(t.selected_by.as_deref(), Some(metric.as_str()));
        // The reported validation accuracy is the kept epoch's, not the last one's.
        let kept = o.head.history[best]["val_accuracy"];
        assert!((o.summary.val_accuracy.unwrap() - kept).abs() < 1e-12, "{keys}");
    }
}

#[test]
fn discriminative_learning_rates_follow_backbone_lr_mult_and_layer_decay() {
    let f = fixture();
    let cfg = config(
        &f,
        "mode = \"unfreeze\"\nunfreeze = 2\nbackbone_lr_mult = 0.2\nlayer_decay = 0.5",
        "",
    );
    let protocol = cfg.backbones[0].protocol(0, cfg.transfer.epochs).unwrap();
    let created = create_model("resnet18", &WeightsSource::None, 10, &CreateOptions::new(INPUT)).unwrap();
    let (groups, stages) = param_groups(&created, &protocol, false).unwrap();
    let scales: Vec<(String, f64, bool)> = groups
        .iter()
        .map(|g| (g.name.clone(), g.lr_scale, g.trainable))
        .collect();
    assert_eq!(stages, ["layer3", "layer4"]);
    assert_eq!(
        scales,
        [
            ("head".to_string(), 1.0, true),
            ("layer3".to_string(), 0.1, true),
            ("layer4".to_string(), 0.2, true),
            ("frozen".to_string(), 1.0, false),
        ]
    );
    // The frozen stages now run in eval mode.
    let b = created.backbone();
    assert_eq!(b.frozen_stages(), b.stages().len() - 2);
    // Every parameter in exactly one group.
    let n: usize = groups.iter().map(|g| g.params.len()).sum();
    assert_eq!(n, digitlab_train::trainable_params(&created.varmap).len());
}

#[test]
fn protocol_keys_are_checked_before_anything_runs() {
    let f = fixture();
    let bad = |keys: &str| -> String {
        let text = format!(
            "name = \"t\"\n[data]\ndataset = \"digits\"\n[[backbones]]\nmodel = \"small_cnn\"\npretrained = \"{}\"\n{keys}",
            f.weights.display()
        );
        TransferConfig::from_toml_str(&text, &[]).unwrap_err().to_string()
    };
    let e = bad("mode = \"unfreeze\"");
    assert!(e.contains("backbones[0]") && e.contains("unfreeze = N"), "{e}");
    let e = bad("unfreeze = 2");
    assert!(e.contains("needs mode = \"unfreeze\""), "{e}");
    let e = bad("head_epochs = 1");
    assert!(
        e.contains("head_epochs") && e.contains("mode = \"unfreeze\" or \"full\""),
        "{e}"
    );
    let e = bad("augment = { crop_padding = 2 }");
    assert!(e.contains("augment") && e.contains("cached features"), "{e}");
    let e = bad("mode = \"full\"\nlayer_decay = -1");
    assert!(e.contains("layer_decay must be a positive number"), "{e}");
    let e = bad("unfrozen_bn = \"eval\"");
    assert!(
        e.contains("unfrozen_bn") && e.contains("mode = \"unfreeze\" or \"full\""),
        "{e}"
    );
    let e = bad("mode = \"full\"\nfrozen_bn = \"train\"\nunfrozen_bn = \"eval\"");
    assert!(e.contains("set unfrozen_bn = \"train\""), "{e}");
    let e = bad("mode = \"sideways\"");
    assert!(e.contains("sideways") && e.contains("frozen"), "{e}");
    // Augmentation is accepted where the backbone trains.
    let text = format!(
        "name = \"t\"\n[data]\ndataset = \"digits\"\n[[backbones]]\nmodel = \"small_cnn\"\npretrained = \"{}\"\n\
         mode = \"full\"\naugment = {{ crop_padding = 2 }}",
        f.weights.display()
    );
    TransferConfig::from_toml_str(&text, &[]).unwrap();
    // Too many stages is a config error naming the stages.
    let cfg = config(&f, "mode = \"unfreeze\"\nunfreeze = 9", "");
    let opts = TransferRunOptions {
        cache_dir: Some(f.root.join("c")),
        vars: vars_from(HashMap::new()),
        ..Default::default()
    };
    let e = run_transfer(&cfg, &f.data, &opts).err().unwrap().to_string();
    assert!(e.contains("unfreeze = 9") && e.contains("small_cnn"), "{e}");
}
