//! `digitlab train` writes a TensorBoard event file into its run folder: every
//! record's framing and CRCs check, every `metrics.csv` value is a scalar at its
//! epoch, a `--force` rerun leaves only its own file, and `--no-tensorboard`
//! writes none. The interpretation lands in `summary.json` with its figures.
//! (TensorBoard's own reader is run on these files by scripts/tensorboard_readback.py.)
use digitlab_report::tensorboard::{read_records, read_scalars, FILE_PREFIX};
use digitlab_train::fit::tag_for;
use std::path::{Path, PathBuf};
use std::process::Command;

fn train(out: &Path, extra: &[&str]) {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/quickstart.toml");
    let o = Command::new(env!("CARGO_BIN_EXE_digitlab"))
        .args(["train", "--quiet", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(out)
        .args(extra)
        .env_remove("DIGITLAB_DATA")
        .output()
        .expect("run digitlab");
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn event_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(FILE_PREFIX))
        .collect();
    v.sort();
    v
}

/// `metrics.csv` as (column, epoch, value) for every column but `epoch`.
fn csv_values(dir: &Path) -> Vec<(String, i64, f64)> {
    let text = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(header[0], "epoch");
    let mut out = Vec::new();
    for line in lines {
        let cells: Vec<&str> = line.split(',').collect();
        let epoch: f64 = cells[0].parse().unwrap();
        for (col, cell) in header.iter().zip(&cells).skip(1) {
            if !cell.is_empty() {
                out.push((col.to_string(), epoch as i64, cell.parse().unwrap()));
            }
        }
    }
    out
}

#[test]
fn train_writes_an_event_file_that_matches_metrics_csv() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    train(&run, &["--set", "train.epochs=3"]);
    let files = event_files(&run);
    assert_eq!(files.len(), 1, "{files:?}");
    // Every frame's length and payload CRC check (read_records fails otherwise).
    let records = read_records(&files[0]).unwrap();
    let scalars = read_scalars(&files[0]).unwrap();
    let want = csv_values(&run);
    assert_eq!(want.len(), 3 * 8, "8 metrics.csv columns besides epoch: {want:?}");
    for (col, epoch, value) in &want {
        let tag = tag_for(col);
        let got: Vec<f32> = scalars
            .iter()
            .filter(|(t, s, _)| *t == tag && s == epoch)
            .map(|s| s.2)
            .collect();
        assert_eq!(got, vec![*value as f32], "{tag} at epoch {epoch}");
    }
    assert_eq!(scalars.len(), want.len(), "no scalar beyond metrics.csv's");
    // Version record + 3 epochs x 8 scalars + session start/end + 4 end images.
    assert_eq!(records.len(), 1 + 24 + 2 + 4);
    let bytes = std::fs::read(&files[0]).unwrap();
    let has = |s: &str| bytes.windows(s.len()).any(|w| w == s.as_bytes());
    for tag in [
        "_hparams_/session_start_info",
        "_hparams_/session_end_info",
        "optim.lr",
        "confusion_matrix",
        "misclassified",
        "top_losses",
        "reliability_diagram",
    ] {
        assert!(has(tag), "no {tag} in the event file");
    }

    // The interpretation: in summary.json, and its figures.
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap();
    let i = &summary["interpretation"];
    assert_eq!(i["split"], "test");
    let test_images = summary["test_images"].as_u64().unwrap();
    assert_eq!(i["images"].as_u64(), Some(test_images));
    let bins = i["calibration"]["bins"].as_array().unwrap();
    assert_eq!(
        bins.iter().map(|b| b["count"].as_u64().unwrap()).sum::<u64>(),
        test_images
    );
    let ece = i["calibration"]["ece"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&ece), "{ece}");
    let losses: Vec<f64> = i["top_losses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["loss"].as_f64().unwrap())
        .collect();
    assert!(
        !losses.is_empty() && losses.windows(2).all(|w| w[0] >= w[1]),
        "{losses:?}"
    );
    let wrong = test_images as f64 * (1.0 - summary["test_accuracy"].as_f64().unwrap());
    let confused: u64 = i["most_confused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["count"].as_u64().unwrap())
        .sum();
    assert_eq!(confused, wrong.round() as u64, "every error is in one confused pair");
    for f in ["reliability.png", "top_losses.png"] {
        assert!(run.join(f).is_file(), "{f} missing");
    }

    // --force with another config clears the folder: only the new run's file is left.
    train(&run, &["--set", "train.epochs=2", "--force"]);
    let files = event_files(&run);
    assert_eq!(files.len(), 1, "{files:?}");
    let steps: Vec<i64> = read_scalars(&files[0]).unwrap().iter().map(|s| s.1).collect();
    assert_eq!(steps.iter().max(), Some(&2));

    let quiet = tmp.path().join("no-tb");
    train(&quiet, &["--set", "train.epochs=1", "--no-tensorboard"]);
    assert!(event_files(&quiet).is_empty());
    assert!(quiet.join("metrics.csv").is_file());
}

#[test]
fn a_resumed_run_continues_in_a_second_file() {
    use digitlab_train::{ExperimentConfig, PreparedData, RunOptions};
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/quickstart.toml");
    let cfg = ExperimentConfig::load(&config, &["train.epochs=4".into()]).unwrap();
    let data = PreparedData::load(&cfg, Path::new("/nonexistent")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let first = RunOptions {
        out_dir: Some(dir.clone()),
        max_epochs_this_run: Some(2),
        ..Default::default()
    };
    digitlab_train::train(&cfg, &data, &first).unwrap();
    let resume = RunOptions {
        out_dir: Some(dir.clone()),
        resume: true,
        ..Default::default()
    };
    let run = digitlab_train::train(&cfg, &data, &resume).unwrap();
    let files = event_files(&dir);
    assert_eq!(files.len(), 2, "{files:?}");
    let mut steps: Vec<Vec<i64>> = files
        .iter()
        .map(|f| {
            let mut s: Vec<i64> = read_scalars(f)
                .unwrap()
                .iter()
                .filter(|s| s.0 == "loss/train")
                .map(|s| s.1)
                .collect();
            s.sort();
            s
        })
        .collect();
    steps.sort();
    assert_eq!(steps, vec![vec![1, 2], vec![3, 4]]);
    // The second file's loss of epoch 4 is the resumed history's.
    let last = run.history.last().unwrap()["train_loss"] as f32;
    let all: Vec<_> = files.iter().flat_map(|f| read_scalars(f).unwrap()).collect();
    assert!(all.iter().any(|s| s.0 == "loss/train" && s.1 == 4 && s.2 == last));
}
