//! The quick suite's transfer step on a fresh machine: with no `DIGITLAB_WEIGHTS`
//! (and no data), the SVHN CNN's built-in weights give the pretrained row and the
//! random row runs beside it; with `DIGITLAB_WEIGHTS` set, the file there is used.
use std::path::{Path, PathBuf};
use std::process::Command;

fn configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs")
}

/// `configs/suites/quick.toml` cut down to its transfer entry, unchanged, in `dir`.
fn transfer_only_suite(dir: &Path) -> PathBuf {
    let quick: toml::Value =
        toml::from_str(&std::fs::read_to_string(configs().join("suites/quick.toml")).unwrap()).unwrap();
    let entry = quick["experiment"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e.get("mode").and_then(|m| m.as_str()) == Some("transfer"))
        .expect("the quick suite has a transfer entry")
        .clone();
    let config = entry["config"].as_str().unwrap().to_string();
    std::fs::create_dir_all(dir.join("configs/suites")).unwrap();
    std::fs::copy(configs().join(&config), dir.join("configs").join(&config)).unwrap();
    let mut suite = toml::map::Map::new();
    suite.insert("name".into(), "quick-transfer".into());
    suite.insert("description".into(), "The quick suite's transfer step.".into());
    suite.insert("experiment".into(), toml::Value::Array(vec![entry]));
    let path = dir.join("configs/suites/quick-transfer.toml");
    std::fs::write(&path, toml::to_string(&toml::Value::Table(suite)).unwrap()).unwrap();
    path
}

fn reproduce(dir: &Path, suite: &Path, out: &str, weights: Option<&Path>) -> String {
    let mut c = Command::new(env!("CARGO_BIN_EXE_digitlab"));
    c.args(["reproduce", "--suite"])
        .arg(suite)
        .arg("--out")
        .arg(dir.join(out))
        .args(["--quiet", "--data-dir"])
        .arg(dir.join("no-data"))
        .env_remove("DIGITLAB_WEIGHTS")
        .env_remove("DIGITLAB_DATA");
    if let Some(w) = weights {
        c.env("DIGITLAB_WEIGHTS", w);
    }
    let o = c.output().expect("run digitlab");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{text}");
    text
}

#[test]
fn the_transfer_step_has_both_rows_without_any_weights_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let suite = transfer_only_suite(tmp.path());
    let text = reproduce(tmp.path(), &suite, "out", None);
    assert!(!text.contains("skip"), "{text}");
    let report = std::fs::read_to_string(tmp.path().join("out/report.md")).unwrap();
    for label in ["ccexam_svhn_cnn-pretrained", "ccexam_svhn_cnn-random"] {
        assert!(report.contains(label), "{label} missing from the report:\n{report}");
        let summary = tmp.path().join("out/transfer_quick").join(label).join("summary.json");
        let s: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
        assert!(s["test_accuracy"].as_f64().unwrap() > 0.3, "{label}: {s}");
    }
    let weights = tmp
        .path()
        .join("out/transfer_quick/ccexam_svhn_cnn-pretrained/weights_report.txt");
    let weights = std::fs::read_to_string(weights).unwrap();
    assert!(
        weights.contains("weights: builtin:ccexam-svhn-cnn.safetensors")
            && weights.contains("sha256: 33a24cd532ba63944f9bd584edfed63907d3e1db6e81a2b0edf16b0fae5eb178"),
        "the pretrained row did not use the built-in weights:\n{weights}"
    );

    // DIGITLAB_WEIGHTS still decides: a folder without the file skips the row, saying
    // why. (Same --out: the random row's features come from the suite's cache.)
    let empty = tmp.path().join("empty-weights");
    std::fs::create_dir_all(&empty).unwrap();
    let text = reproduce(tmp.path(), &suite, "out", Some(&empty));
    assert!(
        text.contains("skip") && text.contains(&empty.join("ccexam-svhn-cnn.safetensors").display().to_string()),
        "{text}"
    );
}
