//! End-to-end tests of the `digitlab` binary on the embedded digits.
use std::path::Path;
use std::process::{Command, Output};

fn digitlab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_digitlab"))
        .args(args)
        .env_remove("DIGITLAB_DATA")
        .output()
        .expect("run digitlab")
}

fn config(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../configs")
        .join(name)
        .display()
        .to_string()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn train_eval_and_predict_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = digitlab(&[
        "train",
        "--config",
        &config("quickstart.toml"),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
        "--set",
        "train.epochs=5",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    for key in [
        "test_accuracy",
        "test_macro_f1",
        "val_accuracy",
        "train_accuracy",
        "epochs",
        "wall_seconds",
        "train_samples_per_second",
    ] {
        assert!(
            summary.get(key).is_some_and(|v| !v.is_null()),
            "summary.json lacks {key}: {summary}"
        );
    }
    assert_eq!(summary["epochs"], 5);
    let acc = summary["test_accuracy"].as_f64().unwrap();
    assert!(acc > 0.85, "quickstart test accuracy {acc}");
    let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 6, "{csv}");
    assert!(csv.starts_with("epoch,"), "{csv}");

    let o = digitlab(&["eval", "--checkpoint", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("macro-F1"), "{}", text(&o));

    // A white 8x8 "1" on black, as a PNG.
    let img = image::GrayImage::from_fn(8, 8, |x, _| image::Luma([if x == 4 { 255 } else { 0 }]));
    let png = dir.path().join("one.png");
    img.save(&png).unwrap();
    let o = digitlab(&["predict", "--checkpoint", out.to_str().unwrap(), png.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("one.png:"), "{}", text(&o));
}

#[test]
fn bad_configs_give_clear_errors() {
    let o = digitlab(&[
        "train",
        "--config",
        &config("quickstart.toml"),
        "--set",
        "train.epoch=3",
    ]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("unknown field `epoch`") && t.contains("batch_size"), "{t}");

    let o = digitlab(&[
        "train",
        "--config",
        &config("quickstart.toml"),
        "--set",
        "data.dataset=cifar10",
    ]);
    let t = text(&o);
    assert!(!o.status.success() && t.contains("mnist") && t.contains("svhn"), "{t}");

    let o = digitlab(&["train", "--config", "/no/such/config.toml"]);
    let t = text(&o);
    assert!(!o.status.success() && t.contains("/no/such/config.toml"), "{t}");

    let o = digitlab(&["train", "--config", &config("quickstart.toml"), "--device", "tpu"]);
    assert!(
        !o.status.success() && text(&o).contains("unknown device"),
        "{}",
        text(&o)
    );

    let o = digitlab(&[
        "train",
        "--config",
        &config("logreg_3v6.toml"),
        "--set",
        "data.dataset=mnist",
    ]);
    let t = text(&o);
    assert!(!o.status.success() && t.contains("cargo xtask download mnist"), "{t}");
}

#[test]
fn datasets_lists_everything() {
    let dir = tempfile::tempdir().unwrap();
    let o = digitlab(&["datasets", "--data-dir", dir.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    for name in ["digits", "mnist", "fashion-mnist", "svhn"] {
        assert!(t.contains(name), "{t}");
    }
    assert!(t.contains("absent"), "{t}");
}

#[test]
fn theory_writes_its_page_and_rejects_unknown_topics() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("theory");
    let o = digitlab(&[
        "theory",
        "softmax",
        "--out",
        out.to_str().unwrap(),
        "--data-dir",
        dir.path().join("none").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let md = std::fs::read_to_string(out.join("theory.md")).unwrap();
    assert!(md.contains("**Question.**") && md.contains("**Verdict.**"), "{md}");
    let pngs = std::fs::read_dir(&out)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "png"))
        .count();
    assert!(pngs >= 2, "{pngs} plots");

    let o = digitlab(&["theory", "convexity-of-everything", "--out", out.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("ce-vs-mse"),
        "the error should list the topics: {}",
        text(&o)
    );
}
