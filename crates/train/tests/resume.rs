//! Resume after an interruption gives the same result as an uninterrupted run,
//! and two runs with the same seed are identical.
use digitlab_train::{ExperimentConfig, PreparedData, RunOptions};
use std::path::Path;

const CFG: &str = r#"
    name = "resume"
    seed = 7
    [data]
    dataset = "digits"
    val_fraction = 0.2
    normalize = "symmetric"
    [model]
    kind = "mlp"
    hidden = [32]
    [optim]
    kind = "adam"
    lr = 0.01
    [train]
    epochs = 6
    batch_size = 64
    loss = "cross_entropy"
"#;

/// Epoch metrics without the timing columns, which differ between runs.
fn timeless(history: &[digitlab_train::trainer::EpochMetrics]) -> Vec<digitlab_train::trainer::EpochMetrics> {
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

fn weights(dir: &Path, tag: &str) -> Vec<u8> {
    let s = digitlab_train::checkpoint::read_sidecar(&dir.join(format!("{tag}.json"))).unwrap();
    std::fs::read(dir.join(s.model_file)).unwrap()
}

#[test]
fn interrupted_then_resumed_equals_uninterrupted() {
    let cfg = ExperimentConfig::from_toml_str(CFG, &[]).unwrap();
    let data = PreparedData::load(&cfg, Path::new("/nonexistent")).unwrap();

    let full = tempfile::tempdir().unwrap();
    let opts = RunOptions {
        out_dir: Some(full.path().into()),
        ..Default::default()
    };
    let a = digitlab_train::train(&cfg, &data, &opts).unwrap();

    let split = tempfile::tempdir().unwrap();
    let first = RunOptions {
        out_dir: Some(split.path().into()),
        max_epochs_this_run: Some(2),
        ..Default::default()
    };
    let partial = digitlab_train::train(&cfg, &data, &first).unwrap();
    assert!(!partial.complete);
    assert_eq!(partial.history.len(), 2);
    let second = RunOptions {
        out_dir: Some(split.path().into()),
        resume: true,
        ..Default::default()
    };
    let b = digitlab_train::train(&cfg, &data, &second).unwrap();

    assert_eq!(timeless(&a.history), timeless(&b.history));
    assert_eq!(
        weights(full.path(), "last"),
        weights(split.path(), "last"),
        "bit-identical final weights"
    );
    assert_eq!(a.val.unwrap().accuracy(), b.val.unwrap().accuracy());
}

#[test]
fn same_seed_same_bits_other_seed_differs() {
    let cfg = ExperimentConfig::from_toml_str(CFG, &["train.epochs=2".into()]).unwrap();
    let data = PreparedData::load(&cfg, Path::new("/nonexistent")).unwrap();
    let run = |seed: u64| {
        let mut c = cfg.clone();
        c.seed = seed;
        let dir = tempfile::tempdir().unwrap();
        let opts = RunOptions {
            out_dir: Some(dir.path().into()),
            ..Default::default()
        };
        digitlab_train::train(&c, &data, &opts).unwrap();
        weights(dir.path(), "last")
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
}

#[test]
fn resume_refuses_another_config_and_corrupt_checkpoints() {
    let cfg = ExperimentConfig::from_toml_str(CFG, &["train.epochs=1".into()]).unwrap();
    let data = PreparedData::load(&cfg, Path::new("/nonexistent")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opts = RunOptions {
        out_dir: Some(dir.path().into()),
        ..Default::default()
    };
    digitlab_train::train(&cfg, &data, &opts).unwrap();

    let other = ExperimentConfig::from_toml_str(CFG, &["train.epochs=2".into(), "optim.lr=0.5".into()]).unwrap();
    let resume = RunOptions {
        resume: true,
        ..opts.clone()
    };
    let e = digitlab_train::train(&other, &data, &resume)
        .err()
        .expect("different config")
        .to_string();
    assert!(e.contains("different config"), "{e}");

    let s = digitlab_train::checkpoint::read_sidecar(&dir.path().join("last.json")).unwrap();
    let wpath = dir.path().join(&s.model_file);
    let mut bytes = std::fs::read(&wpath).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0xff;
    std::fs::write(&wpath, bytes).unwrap();
    let more = ExperimentConfig::from_toml_str(CFG, &["train.epochs=2".into()]).unwrap();
    let e = digitlab_train::train(&more, &data, &resume)
        .err()
        .expect("corrupt weights")
        .to_string();
    assert!(e.contains("corrupt or replaced") && e.contains(&s.model_file), "{e}");
}

#[test]
fn divergence_is_reported_with_epoch_and_step() {
    let cfg = ExperimentConfig::from_toml_str(CFG, &["optim.kind=sgd".into(), "optim.lr=1e30".into()]).unwrap();
    let data = PreparedData::load(&cfg, Path::new("/nonexistent")).unwrap();
    let e = digitlab_train::train(&cfg, &data, &RunOptions::default())
        .err()
        .expect("diverges")
        .to_string();
    assert!(
        e.contains("diverged at epoch 1") && e.contains("lower learning rate"),
        "{e}"
    );
}
