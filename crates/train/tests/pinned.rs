//! Pins the numerics of the trainer: for a few small configs (SGD with momentum,
//! Nesterov, Adam, AdamW, schedules, gradient clipping, L2, early stopping), the
//! checkpoint files (`*.safetensors`, by SHA-256) and `metrics.csv` (without its
//! wall-time columns) must be byte-identical to what the trainer produced when the
//! fixture was recorded (`tests/fixtures/pinned.json`, recorded before the training
//! loop became `fit`). Any change of the update rules, of the order of floating-point
//! operations, of batching or of initialisation fails it.
//!
//! Bit-identity holds for the same kind of CPU (the kernels and gemm pick code paths
//! by CPU features, which may round sums differently), so the fixture records the
//! features it was made with and the test reports itself skipped, with the reason,
//! on a CPU that differs, and likewise in a build with another matrix-product
//! backend (`digitlab-kernels/mkl`).
//!
//! Re-record (only when a numerics change is intended, and say so in the commit):
//! `DIGITLAB_PIN_RECORD=crates/train/tests/fixtures/pinned.json cargo test --release --workspace --test pinned`
use digitlab_train::{run_experiment, ExperimentConfig, PreparedData, RunOptions};
use sha2::Digest;
use std::collections::BTreeMap;
use std::path::Path;

const BASE: &str = r#"
    name = "pin"
    seed = 3
    [data]
    dataset = "digits"
    val_fraction = 0.2
    normalize = "symmetric"
    [model]
    kind = "mlp"
    hidden = [32]
    [optim]
    kind = "sgd"
    lr = 0.05
    [train]
    epochs = 3
    batch_size = 64
    loss = "cross_entropy"
"#;

/// (case name, base config, overrides).
fn cases() -> Vec<(&'static str, String, Vec<&'static str>)> {
    let quickstart = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/quickstart.toml"))
        .expect("configs/quickstart.toml");
    vec![
        ("quickstart_adam", quickstart, vec!["train.epochs=4"]),
        (
            "sgd_momentum_weight_decay",
            BASE.into(),
            vec!["optim.momentum=0.9", "optim.weight_decay=1e-4"],
        ),
        (
            "sgd_nesterov_cosine_warmup_clip",
            BASE.into(),
            vec![
                "optim.lr=0.1",
                "optim.momentum=0.9",
                "optim.nesterov=true",
                "schedule.kind=\"cosine\"",
                "schedule.warmup_epochs=1.0",
                "schedule.min_lr_fraction=0.1",
                "train.epochs=4",
                "train.grad_clip=1.0",
            ],
        ),
        (
            "adam_step_schedule",
            BASE.into(),
            vec![
                "optim.kind=\"adam\"",
                "optim.lr=0.01",
                "optim.weight_decay=1e-4",
                "schedule.kind=\"step\"",
                "schedule.step_epochs=1",
                "schedule.gamma=0.5",
            ],
        ),
        (
            "adamw_select_val_loss",
            BASE.into(),
            vec![
                "optim.kind=\"adamw\"",
                "optim.lr=0.01",
                "optim.weight_decay=0.05",
                "train.select_metric=\"val_loss\"",
            ],
        ),
        (
            "adam_early_stopping",
            BASE.into(),
            vec![
                "optim.kind=\"adam\"",
                "optim.lr=0.05",
                "train.epochs=30",
                "train.early_stopping.metric=\"val_loss\"",
                "train.early_stopping.patience=1",
                "train.early_stopping.min_delta=0.01",
            ],
        ),
        (
            "logistic_l2_full_batch",
            BASE.into(),
            vec![
                "data.classes=[3, 6]",
                "model.kind=\"logistic\"",
                "train.loss=\"bce_with_logits\"",
                "train.batch_size=0",
                "train.l2=0.1",
                "optim.lr=0.5",
                "train.epochs=5",
            ],
        ),
    ]
}

/// The CPU features that select kernel code paths.
fn cpu() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        let mut f = vec![std::env::consts::ARCH.to_string()];
        for (name, on) in [
            ("avx2", std::arch::is_x86_feature_detected!("avx2")),
            ("fma", std::arch::is_x86_feature_detected!("fma")),
            ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
        ] {
            if on {
                f.push(name.into());
            }
        }
        f.join(" ")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        std::env::consts::ARCH.to_string()
    }
}

/// `metrics.csv` without the wall-time columns (`seconds`, `train_samples_per_second`).
fn timeless_csv(text: &str) -> String {
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split(',').collect()).collect();
    let header = &rows[0];
    let keep: Vec<usize> = (0..header.len())
        .filter(|&i| !["seconds", "train_samples_per_second"].contains(&header[i]))
        .collect();
    assert!(
        keep.len() + 2 == header.len(),
        "metrics.csv has both timing columns: {header:?}"
    );
    rows.iter()
        .map(|r| keep.iter().map(|&i| r[i]).collect::<Vec<_>>().join(",") + "\n")
        .collect()
}

/// Runs one case into a fresh folder: its timeless `metrics.csv` and the SHA-256
/// of every `*.safetensors` file, by name.
fn run_case(name: &str, base: &str, overrides: &[&str]) -> serde_json::Value {
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    let cfg = ExperimentConfig::from_toml_str(base, &overrides).unwrap_or_else(|e| panic!("{name}: {e}"));
    let data = PreparedData::load(&cfg, Path::new("/nonexistent")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opts = RunOptions {
        out_dir: Some(dir.path().into()),
        ..Default::default()
    };
    let result = run_experiment(&cfg, &data, &opts).unwrap_or_else(|e| panic!("{name}: {e}"));
    if name.contains("early_stopping") {
        assert!(result.run.stopped_early, "{name} must exercise early stopping");
    }
    let metrics = std::fs::read_to_string(dir.path().join("metrics.csv")).unwrap();
    let mut files = BTreeMap::new();
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "safetensors") {
            let digest = hex::encode(sha2::Sha256::digest(std::fs::read(&p).unwrap()));
            files.insert(p.file_name().unwrap().to_string_lossy().to_string(), digest);
        }
    }
    assert!(!files.is_empty(), "{name}: no checkpoint written");
    serde_json::json!({ "metrics_csv": timeless_csv(&metrics), "safetensors_sha256": files })
}

#[test]
fn checkpoints_and_metrics_match_the_pinned_fixture() {
    // The fixture pins the gemm crate's sums; MKL (feature `mkl`) rounds differently.
    let backend = digitlab_kernels::sgemm::backend();
    if backend != "gemm" && std::env::var("DIGITLAB_PIN_RECORD").is_err() {
        eprintln!("skipped: the fixture was recorded with the `gemm` backend, this build multiplies with `{backend}`");
        return;
    }
    let mut got = serde_json::Map::new();
    for (name, base, overrides) in cases() {
        got.insert(name.to_string(), run_case(name, &base, &overrides));
    }
    let got = serde_json::json!({ "cpu": cpu(), "cases": got });
    if let Ok(path) = std::env::var("DIGITLAB_PIN_RECORD") {
        std::fs::write(&path, serde_json::to_string_pretty(&got).unwrap() + "\n").unwrap();
        eprintln!("recorded {path}");
        return;
    }
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/pinned.json")).expect("fixtures/pinned.json");
    let recorded_on = fixture["cpu"].as_str().expect("the fixture records its CPU");
    if recorded_on != got["cpu"] {
        eprintln!(
            "skipped: the fixture was recorded on a CPU with features `{}`, this one has `{}`",
            recorded_on, got["cpu"]
        );
        return;
    }
    for (name, want) in fixture["cases"].as_object().expect("cases") {
        let have = &got["cases"][name];
        assert_eq!(
            have["metrics_csv"].as_str(),
            want["metrics_csv"].as_str(),
            "{name}: metrics.csv differs from the pinned one"
        );
        assert_eq!(
            have["safetensors_sha256"], want["safetensors_sha256"],
            "{name}: checkpoint files differ from the pinned ones"
        );
    }
    assert_eq!(
        fixture["cases"].as_object().map(|c| c.len()),
        got["cases"].as_object().map(|c| c.len()),
        "every case is pinned"
    );
}
