//! A full disk while a checkpoint is written: a clear error naming the file, the
//! last good checkpoint stays valid, and resuming once there is space again ends
//! exactly where an uninterrupted run ends.
//!
//! The full disk is real: the temporary file the write goes to
//! (`.<name>.<run id>.tmp`, see `digitlab_train::io::temp_path`) is made a symlink to
//! `/dev/full`, on which every write fails with ENOSPC.
use digitlab_train::checkpoint::{self, Sidecar};
use digitlab_train::{ExperimentConfig, PreparedData, RunOptions};
use std::path::Path;

const CFG: &str = r#"
    name = "diskfull"
    seed = 11
    [data]
    dataset = "digits"
    val_fraction = 0.2
    [model]
    kind = "mlp"
    hidden = [16]
    [optim]
    kind = "adam"
    lr = 0.01
    [train]
    epochs = 4
    batch_size = 64
    loss = "cross_entropy"
"#;

fn timeless(history: &[digitlab_train::trainer::EpochMetrics]) -> Vec<Vec<(String, f64)>> {
    history
        .iter()
        .map(|h| {
            h.iter()
                .filter(|(k, _)| !["seconds", "train_samples_per_second"].contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), *v))
                .collect()
        })
        .collect()
}

/// Reads `<dir>/last.json` and checks that the weights and optimizer state it
/// names load and verify.
fn last_is_valid(dir: &Path) -> Sidecar {
    let p = dir.join("last.json");
    let s = checkpoint::read_sidecar(&p).expect("last.json readable");
    let cfg = ExperimentConfig::from_toml_str(CFG, &[]).unwrap();
    let (_, _, model) = checkpoint::load_inference_model(&p, &candle_core::Device::Cpu).expect("last checkpoint loads");
    assert_eq!(model.kind(), cfg.model.kind());
    checkpoint::load_optim(&p, &s, &candle_core::Device::Cpu).expect("optimizer state loads");
    s
}

#[test]
fn disk_full_during_checkpoint_write_keeps_the_last_good_one() {
    if !Path::new("/dev/full").exists() {
        eprintln!("skipped: /dev/full does not exist on this system");
        return;
    }
    let cfg = ExperimentConfig::from_toml_str(CFG, &[]).unwrap();
    let data = PreparedData::load(&cfg, Path::new("/nonexistent")).unwrap();
    let reference_dir = tempfile::tempdir().unwrap();
    let reference = digitlab_train::train(
        &cfg,
        &data,
        &RunOptions {
            out_dir: Some(reference_dir.path().into()),
            ..Default::default()
        },
    )
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let two = RunOptions {
        out_dir: Some(dir.path().into()),
        max_epochs_this_run: Some(2),
        ..Default::default()
    };
    digitlab_train::train(&cfg, &data, &two).unwrap();
    assert_eq!(last_is_valid(dir.path()).epoch, 2);
    let last_before = std::fs::read(dir.path().join("last.json")).unwrap();

    let resume = RunOptions {
        out_dir: Some(dir.path().into()),
        resume: true,
        ..Default::default()
    };
    // The disk fills up while epoch 3's weights are written, then while its
    // sidecar is written (the weights having gone through).
    for file in ["model-e3.safetensors", "last.json"] {
        let tmp = digitlab_train::io::temp_path(&dir.path().join(file));
        std::os::unix::fs::symlink("/dev/full", &tmp).unwrap();
        let e = digitlab_train::train(&cfg, &data, &resume)
            .err()
            .expect("writing to a full disk fails")
            .to_string();
        assert!(
            e.contains(&dir.path().join(file).display().to_string()),
            "error does not name {file}: {e}"
        );
        assert!(e.contains("No space left on device"), "{e}");
        assert!(
            std::fs::symlink_metadata(&tmp).is_err(),
            "the failed temporary file was not removed"
        );
        assert_eq!(
            std::fs::read(dir.path().join("last.json")).unwrap(),
            last_before,
            "last.json changed"
        );
        assert_eq!(last_is_valid(dir.path()).epoch, 2);
    }

    // Space again: resuming finishes exactly like the uninterrupted run.
    let resumed = digitlab_train::train(&cfg, &data, &resume).unwrap();
    assert_eq!(timeless(&resumed.history), timeless(&reference.history));
    let weights = |d: &Path| {
        let s = checkpoint::read_sidecar(&d.join("last.json")).unwrap();
        std::fs::read(d.join(s.model_file)).unwrap()
    };
    assert_eq!(
        weights(dir.path()),
        weights(reference_dir.path()),
        "final weights differ from the uninterrupted run"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left behind: {leftovers:?}");
}
