//! Real data: on MNIST, the two real pretrained networks (`$DIGITLAB_WEIGHTS`: the
//! ccexam SVHN CNN and ImageNet EfficientNet-Lite0) give better frozen features than
//! the same architectures with random weights, under the same protocol
//! (configs/mnist_transfer.toml on a smaller subset). Ignored by default (the
//! reason says how to run it); CI runs it with `--ignored pretrained`, and it then
//! fails unless DIGITLAB_DATA (holding mnist/) and DIGITLAB_WEIGHTS are set.
use std::path::PathBuf;

use digitlab_finetune::{run_transfer, TransferConfig, TransferRunOptions};

fn env_dir(var: &str, what: &str) -> Option<PathBuf> {
    match std::env::var_os(var).filter(|v| !v.is_empty()) {
        Some(d) => Some(PathBuf::from(d)),
        None => panic!("pretrained_features_beat_random_features_on_mnist: set {var} to {what}"),
    }
}

#[test]
#[ignore = "needs the real pretrained networks: set DIGITLAB_WEIGHTS=../shared/weights (and DIGITLAB_DATA) and run `cargo test --release --workspace -- --ignored pretrained`"]
fn pretrained_features_beat_random_features_on_mnist() {
    let Some(data) = env_dir("DIGITLAB_DATA", "a data folder holding mnist/") else {
        return;
    };
    let Some(_) = env_dir(
        "DIGITLAB_WEIGHTS",
        "the folder holding the pretrained .safetensors files",
    ) else {
        return;
    };
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs/mnist_transfer.toml");
    // About 600 training images (~450 train / ~150 validation) and 300 test images.
    let cfg = TransferConfig::load(&path, &["data.subset=0.01".into(), "data.test_limit=300".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opts = TransferRunOptions {
        out_dir: Some(dir.path().join("out")),
        cache_dir: Some(dir.path().join("cache")),
        ..Default::default()
    };
    let outcomes = run_transfer(&cfg, &data, &opts).unwrap();
    let acc = |label: &str| {
        let o = outcomes
            .iter()
            .find(|o| o.label == label)
            .unwrap_or_else(|| panic!("no run {label}"));
        let s = &o.summary;
        assert_eq!(s.test_images, 300);
        assert_eq!(
            s.transfer().unwrap().backbone_images,
            s.train_images + s.val_images + s.test_images,
            "{label}: one backbone pass"
        );
        o.summary.test_accuracy.unwrap()
    };
    for model in ["ccexam_svhn_cnn", "efficientnet_lite0"] {
        let (pre, rnd) = (acc(&format!("{model}-pretrained")), acc(&format!("{model}-random")));
        println!(
            "{model}: pretrained {:.2}% vs random {:.2}% test accuracy",
            100.0 * pre,
            100.0 * rnd
        );
        assert!(
            pre > rnd + 0.05,
            "{model}: pretrained {pre} does not beat random {rnd} by 5 points"
        );
    }
    println!(
        "{}",
        std::fs::read_to_string(dir.path().join("out/compare.md")).unwrap()
    );
}
