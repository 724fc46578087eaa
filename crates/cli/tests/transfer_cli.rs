//! `digitlab transfer` and `digitlab compare` end to end on the embedded digits
//! (random-weight backbones; pretrained loading is tested in digitlab-finetune).
use std::path::Path;
use std::process::{Command, Output};

fn digitlab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_digitlab"))
        .args(args)
        .env_remove("DIGITLAB_DATA")
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("run digitlab")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

const CONFIG: &str = r#"
name = "digits_transfer"
[data]
dataset = "digits"
val_fraction = 0.25
[transfer]
epochs = 3
[[backbones]]
model = "lenet5"
resize = [28, 28]
[[backbones]]
model = "small_cnn"
label = "small-cnn-8px"
"#;

#[test]
fn transfer_twice_then_compare_with_a_train_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = d.join("t.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let (out, cache) = (d.join("out"), d.join("cache"));
    let args = [
        "transfer",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
        "--quiet",
    ];
    let o = digitlab(&args);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("| lenet5-random | transfer | lenet5 |"),
        "{}",
        text(&o)
    );
    let first = json(&out.join("lenet5-random/summary.json"));
    assert_eq!(first["epochs"], 3);
    assert!(first["backbone_images"].as_u64().unwrap() > 1000);
    assert!(first["test_accuracy"].as_f64().unwrap() > 0.5, "{first}");

    // Second run: every feature from the cache, the same results.
    let o = digitlab(&args);
    assert!(o.status.success(), "{}", text(&o));
    for label in ["lenet5-random", "small-cnn-8px"] {
        let s = json(&out.join(label).join("summary.json"));
        assert_eq!(
            (s["backbone_images"].as_u64(), s["cache_hits"].as_u64()),
            (Some(0), Some(3)),
            "{label}: {s}"
        );
        assert_eq!(s["backbone_seconds"].as_f64(), Some(0.0));
    }
    assert_eq!(
        json(&out.join("lenet5-random/summary.json"))["test_accuracy"],
        first["test_accuracy"]
    );

    let qs = d.join("qs");
    let quickstart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/quickstart.toml");
    let o = digitlab(&[
        "train",
        "--config",
        quickstart.to_str().unwrap(),
        "--out",
        qs.to_str().unwrap(),
        "--quiet",
        "--set",
        "train.epochs=2",
    ]);
    assert!(o.status.success(), "{}", text(&o));

    let cmp = d.join("cmp");
    let o = digitlab(&[
        "compare",
        out.to_str().unwrap(),
        qs.to_str().unwrap(),
        "--out",
        cmp.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let md = std::fs::read_to_string(cmp.join("compare.md")).unwrap();
    for needle in [
        "| lenet5-random | transfer |",
        "| small-cnn-8px | transfer |",
        "| quickstart | train | mlp |",
    ] {
        assert!(md.contains(needle), "{needle} not in\n{md}");
    }
    assert_eq!(
        std::fs::read_to_string(cmp.join("compare.csv"))
            .unwrap()
            .lines()
            .count(),
        4
    );
    assert!(cmp.join("compare.png").is_file());
}

#[test]
fn transfer_and_compare_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = d.join("t.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let o = digitlab(&[
        "transfer",
        "--config",
        cfg.to_str().unwrap(),
        "--set",
        "transfer.epoch=2",
        "--out",
        d.join("o").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("t.toml") && t.contains("unknown field `epoch`") && t.contains("epochs"),
        "{t}"
    );
    let o = digitlab(&[
        "compare",
        d.join("missing").to_str().unwrap(),
        "--out",
        d.join("c").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("missing"), "{}", text(&o));
}

/// `digitlab eval` / `predict` on a transfer backbone's folder, and `transfer`
/// carrying on past a backbone that cannot load, then failing at the end.
#[test]
fn eval_and_predict_a_transfer_run_and_continue_past_a_failed_backbone() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = d.join("t.toml");
    let missing = d.join("missing-weights.safetensors");
    std::fs::write(
        &cfg,
        format!(
            "{CONFIG}\n[[backbones]]\nmodel = \"small_cnn\"\nlabel = \"broken\"\npretrained = \"{}\"\n",
            missing.display()
        ),
    )
    .unwrap();
    let out = d.join("out");
    let o = digitlab(&[
        "transfer",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--cache-dir",
        d.join("cache").to_str().unwrap(),
        "--quiet",
    ]);
    let t = text(&o);
    assert!(
        !o.status.success(),
        "a failed backbone makes the exit status non-zero: {t}"
    );
    assert!(
        t.contains("1 of 3 backbones failed: broken") && t.contains("missing-weights"),
        "{t}"
    );
    let md = std::fs::read_to_string(out.join("compare.md")).unwrap();
    assert!(
        md.contains("| broken | transfer | small_cnn | ") && md.contains(" | FAILED"),
        "{md}"
    );
    assert!(md.contains("| lenet5-random | transfer |") && md.contains("| small-cnn-8px | transfer |"));

    // eval on the backbone folder: the transfer's own test accuracy.
    let run = out.join("lenet5-random");
    let summary = json(&run.join("summary.json"));
    let o = digitlab(&["eval", "--checkpoint", run.to_str().unwrap()]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    let want = format!("accuracy {:.2}%", 100.0 * summary["test_accuracy"].as_f64().unwrap());
    assert!(
        t.contains(&want) && t.contains("digits_transfer/lenet5-random"),
        "{want} not in {t}"
    );
    // The run folder holds two backbones with models: it names them.
    let o = digitlab(&["eval", "--checkpoint", out.to_str().unwrap()]);
    let t = text(&o);
    assert!(
        !o.status.success() && t.contains("several checkpoints") && t.contains("lenet5-random"),
        "{t}"
    );

    // predict applies the stored preprocessing (8x8 gray resized to 28 px for LeNet-5).
    let img = d.join("digit.png");
    let mut px = image::GrayImage::new(8, 8);
    for y in 1..7 {
        px.put_pixel(3, y, image::Luma([255]));
        px.put_pixel(4, y, image::Luma([255]));
    }
    px.save(&img).unwrap();
    let o = digitlab(&["predict", "--checkpoint", run.to_str().unwrap(), img.to_str().unwrap()]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("digit.png: ") && t.matches(" 0.").count() >= 3, "{t}");
}
