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
