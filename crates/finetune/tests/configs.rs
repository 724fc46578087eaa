//! The committed SVHN and transfer configs parse, and say what the coursework asks.
use std::path::{Path, PathBuf};

use digitlab_data::DatasetKind;
use digitlab_finetune::zoo::resolve_arch;
use digitlab_finetune::TransferConfig;
use digitlab_models::{ModelConfig, ResNetConfig};
use digitlab_train::ExperimentConfig;

fn config(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs").join(name)
}

#[test]
fn svhn_training_configs_parse() {
    let expect = [
        ("svhn_lenet.toml", ModelConfig::Lenet5, false),
        ("svhn_cnn.toml", ModelConfig::SmallCnn, false),
        (
            "svhn_resnet_scratch.toml",
            ModelConfig::Resnet(ResNetConfig {
                depth: 18,
                cifar_stem: true,
            }),
            false,
        ),
        (
            "svhn_resnet_scratch_augment.toml",
            ModelConfig::Resnet(ResNetConfig {
                depth: 18,
                cifar_stem: true,
            }),
            true,
        ),
    ];
    for (file, model, augment) in expect {
        let c = ExperimentConfig::load(&config(file), &[]).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(c.data.dataset, DatasetKind::Svhn, "{file}");
        assert_eq!(c.data.val_fraction, 0.25, "{file}: 75/25 split");
        assert_eq!(c.model, model, "{file}");
        assert_eq!(c.data.augment.is_some(), augment, "{file}");
        assert_eq!((c.train.epochs, c.optim.lr()), (5, 1e-3), "{file}");
        assert_eq!(c.name, file.trim_end_matches(".toml"));
    }
}

#[test]
fn transfer_configs_parse() {
    let c = TransferConfig::load(&config("svhn_transfer.toml"), &[]).unwrap();
    let models: Vec<&str> = c.backbones.iter().map(|b| b.model.as_str()).collect();
    assert_eq!(models, ["vgg16", "resnet18", "resnet50", "resnet101"]);
    assert!(c
        .backbones
        .iter()
        .all(|b| b.pretrained.starts_with("hf:timm/") && b.resize == Some([224, 224])));
    assert_eq!((c.data.subset, c.data.val_fraction), (0.25, 0.25));
    assert_eq!((c.transfer.epochs, c.transfer.optim.lr()), (5, 1e-3));
    let n = TransferConfig::load(&config("svhn_transfer_native32.toml"), &[]).unwrap();
    assert!(n.backbones.iter().all(|b| b.resize == Some([32, 32])));

    let m = TransferConfig::load(&config("mnist_transfer.toml"), &[]).unwrap();
    assert_eq!(m.data.dataset, DatasetKind::Mnist);
    // Each real backbone twice: pretrained from ${DIGITLAB_WEIGHTS} and random.
    for model in ["ccexam_svhn_cnn", "efficientnet_lite0"] {
        let runs: Vec<_> = m.backbones.iter().filter(|b| b.model == model).collect();
        assert_eq!(runs.len(), 2, "{model}");
        assert!(runs[0].pretrained.contains("${DIGITLAB_WEIGHTS}/"), "{model}");
        assert_eq!(runs[1].pretrained, "none");
        assert_eq!(runs[0].resize, runs[1].resize, "{model}: same input for both");
    }
    for b in c.backbones.iter().chain(&n.backbones).chain(&m.backbones) {
        resolve_arch(&b.model).unwrap();
    }

    // The same protocol with the candle-transformers backbones: every modern name,
    // frozen, from its default timm hub repo.
    let modern = TransferConfig::load(&config("svhn_transfer_modern.toml"), &[]).unwrap();
    assert_eq!((modern.data.subset, modern.data.val_fraction), (0.25, 0.25));
    assert_eq!((modern.transfer.epochs, modern.transfer.optim.lr()), (5, 1e-3));
    let names: Vec<&str> = modern.backbones.iter().map(|b| b.model.as_str()).collect();
    let all: Vec<&str> = digitlab_models::ModernArch::ALL.iter().map(|a| a.name()).collect();
    assert_eq!(names, all);
    for b in &modern.backbones {
        let arch = resolve_arch(&b.model).unwrap();
        assert!(arch.is_frozen_only() && b.mode.is_frozen());
        assert_eq!(
            arch.pretrained_sources(),
            std::slice::from_ref(&b.pretrained),
            "{}",
            b.model
        );
    }
    let quick = TransferConfig::load(&config("mnist_transfer_modern.toml"), &[]).unwrap();
    assert_eq!(quick.data.dataset, DatasetKind::Mnist);
    assert!(quick
        .backbones
        .iter()
        .all(|b| b.pretrained == "none" && b.mode.is_frozen()));
}

#[test]
fn finetune_configs_compare_frozen_unfreeze_and_full() {
    use digitlab_finetune::protocol::{BnMode, Mode};
    let s = TransferConfig::load(&config("svhn_finetune.toml"), &[]).unwrap();
    assert_eq!(s.data.dataset, DatasetKind::Svhn);
    for model in ["vgg16", "alexnet", "resnet18", "resnet50", "resnet101"] {
        let runs: Vec<_> = s.backbones.iter().filter(|b| b.model == model).collect();
        assert!(
            runs.iter()
                .all(|b| b.pretrained == format!("torchvision:{model}") && b.resize == Some([224, 224])),
            "{model}"
        );
        assert!(runs.iter().any(|b| b.mode == Mode::Frozen), "{model}: a frozen row");
    }
    let modes: Vec<Mode> = s.backbones.iter().map(|b| b.mode).collect();
    assert!(modes.contains(&Mode::Unfreeze) && modes.contains(&Mode::Full));
    assert!(s.backbones.iter().any(|b| b.frozen_bn == BnMode::Train));

    let m = TransferConfig::load(&config("mnist_finetune.toml"), &[]).unwrap();
    assert_eq!(m.data.dataset, DatasetKind::Mnist);
    for model in ["ccexam_svhn_cnn", "efficientnet_lite0"] {
        let protocols: Vec<String> = m
            .backbones
            .iter()
            .enumerate()
            .filter(|(_, b)| b.model == model)
            .map(|(i, b)| b.protocol(i, m.transfer.epochs).unwrap().describe())
            .collect();
        assert_eq!(
            protocols,
            [
                "frozen",
                "frozen (bn train)",
                "head 2 + unfreeze 1",
                "head 2 + unfreeze 1 (unfrozen bn train)",
                "head 2 + full"
            ],
            "{model}"
        );
        assert!(m
            .backbones
            .iter()
            .filter(|b| b.model == model)
            .all(|b| b.pretrained.contains("${DIGITLAB_WEIGHTS}/")));
    }
    // Both are in the full suite.
    let suite = std::fs::read_to_string(config("suites/full.toml")).unwrap();
    assert!(suite.contains("config = \"svhn_finetune.toml\"") && suite.contains("config = \"mnist_finetune.toml\""));
}

#[test]
fn transfer_splits_are_those_of_digitlab_train() {
    // The same [data] section and seed give the same train / validation / test
    // images in `digitlab train` and `digitlab transfer`, so their runs compare.
    let data = r#"
        [data]
        dataset = "digits"
        classes = [3, 5, 8]
        subset = 0.6
        val_fraction = 0.25
        test_limit = 50
    "#;
    let train_cfg = ExperimentConfig::from_toml_str(
        &format!(
            "name = \"a\"\nseed = 9\n{data}\n[model]\nkind = \"softmax\"\n[optim]\nkind = \"sgd\"\nlr = 0.1\n\
             [train]\nepochs = 1\nbatch_size = 8\nloss = \"cross_entropy\"\n"
        ),
        &[],
    )
    .unwrap();
    let transfer_cfg = TransferConfig::from_toml_str(
        &format!("name = \"b\"\nseed = 9\n{data}\n[[backbones]]\nmodel = \"lenet5\"\n"),
        &[],
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a = digitlab_train::PreparedData::load(&train_cfg, dir.path()).unwrap();
    let b = digitlab_finetune::transfer::prepare_data(&transfer_cfg.data, transfer_cfg.seed, dir.path()).unwrap();
    assert_eq!(a.train, b.train);
    assert_eq!(a.val, b.val);
    assert_eq!(a.test, b.test);
    assert_eq!(b.test.as_ref().unwrap().len(), 50);
    assert!(b.val.as_ref().unwrap().len() > 10);
}
