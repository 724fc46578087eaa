//! `--device cuda` end to end (issue 15): files written by a CUDA run are used on
//! the CPU and back, bf16 runs learn, and a build or machine without CUDA says so.
//!
//! The GPU tests run in the `cuda` build on a machine with an NVIDIA GPU; in the
//! default build they are reported as ignored with the reason, and the test of the
//! "built without CUDA" error runs instead.
use std::path::Path;
use std::process::{Command, Output};

/// The binary under test: `DIGITLAB_BIN` when set (scripts/gpu-check.sh runs this
/// test executable on another machine, where cargo's build paths do not exist).
fn digitlab(args: &[&str]) -> Output {
    let bin = std::env::var("DIGITLAB_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_digitlab").to_string());
    Command::new(bin)
        .args(args)
        .env_remove("DIGITLAB_DATA")
        .output()
        .expect("run digitlab")
}

/// A file of configs/ (`DIGITLAB_CONFIGS` when set, see [`digitlab`]).
fn config(name: &str) -> String {
    std::env::var_os("DIGITLAB_CONFIGS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs"))
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

fn summary(dir: &Path) -> serde_json::Value {
    let path = dir.join("summary.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

#[test]
#[cfg(not(feature = "cuda"))]
fn device_cuda_without_a_cuda_build_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    for device in ["cuda", "cuda:1"] {
        let o = digitlab(&[
            "train",
            "--config",
            &config("quickstart.toml"),
            "--out",
            out.to_str().unwrap(),
            "--device",
            device,
        ]);
        assert!(!o.status.success());
        let t = text(&o);
        assert!(t.contains("built without CUDA") && t.contains("--features cuda"), "{t}");
        assert!(!t.contains("panicked"), "{t}");
        assert!(!out.exists(), "nothing is written before the device is known to work");
    }
    let o = digitlab(&["train", "--config", &config("quickstart.toml"), "--device", "gpu"]);
    assert!(text(&o).contains("unknown device `gpu`"), "{}", text(&o));
}

#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "needs --features cuda and an NVIDIA GPU")]
fn device_cuda_with_a_missing_ordinal_is_a_clear_error() {
    let o = digitlab(&["train", "--config", &config("quickstart.toml"), "--device", "cuda:97"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("opening CUDA device 97"), "{}", text(&o));
}

fn train(out: &Path, device: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "train",
        "--config",
        "",
        "--out",
        out.to_str().unwrap(),
        "--quiet",
        "--device",
        device,
        "--set",
        "train.epochs=5",
    ];
    let cfg = config("quickstart.toml");
    args[2] = &cfg;
    args.extend_from_slice(extra);
    let o = digitlab(&args);
    assert!(o.status.success(), "{}", text(&o));
    summary(out)
}

/// `digitlab eval` of a run folder on `device`: the printed test accuracy.
fn eval_accuracy(run: &Path, device: &str) -> f64 {
    let o = digitlab(&["eval", "--checkpoint", run.to_str().unwrap(), "--device", device]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    let line = t
        .lines()
        .find(|l| l.contains("accuracy"))
        .unwrap_or_else(|| panic!("no accuracy in eval output: {t}"));
    let pct = line
        .split_whitespace()
        .find_map(|w| {
            w.trim_end_matches([',', '%'])
                .parse::<f64>()
                .ok()
                .filter(|_| w.contains('%'))
        })
        .unwrap_or_else(|| panic!("no percentage in {line:?}"));
    pct / 100.0
}

#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "needs --features cuda and an NVIDIA GPU")]
fn checkpoints_written_on_cuda_evaluate_on_cpu_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let on_gpu = dir.path().join("gpu");
    let s = train(&on_gpu, "cuda", &[]);
    let acc = s["test_accuracy"].as_f64().unwrap();
    assert!(acc > 0.85, "quickstart on CUDA: test accuracy {acc}");
    // The same checkpoint on both devices. 360 test images: CPU and GPU logits
    // differ in the last bits, so at most one near-tie may flip.
    let tol = 1.0 / 360.0 + 1e-4;
    let (g, c) = (eval_accuracy(&on_gpu, "cuda"), eval_accuracy(&on_gpu, "cpu"));
    assert!(
        (g - c).abs() <= tol,
        "CUDA-written checkpoint: {g} on CUDA vs {c} on the CPU"
    );
    let on_cpu = dir.path().join("cpu");
    train(&on_cpu, "cpu", &[]);
    let (c, g) = (eval_accuracy(&on_cpu, "cpu"), eval_accuracy(&on_cpu, "cuda"));
    assert!(
        (g - c).abs() <= tol,
        "CPU-written checkpoint: {c} on the CPU vs {g} on CUDA"
    );
}

#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "needs --features cuda and an NVIDIA GPU")]
fn bf16_training_on_cuda_learns() {
    let dir = tempfile::tempdir().unwrap();
    let s = train(&dir.path().join("bf16"), "cuda", &["--dtype", "bf16"]);
    let acc = s["test_accuracy"].as_f64().unwrap();
    assert!(acc > 0.85, "quickstart in bf16 on CUDA: test accuracy {acc}");
}

/// A transfer config on the embedded digits (random LeNet-5, no weights needed).
fn transfer_config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("transfer.toml");
    std::fs::write(
        &path,
        "name = \"cuda-transfer\"\nseed = 3\n[data]\ndataset = \"digits\"\nval_fraction = 0.2\n\
         [transfer]\nepochs = 3\n[[backbones]]\nmodel = \"lenet5\"\nresize = [28, 28]\n",
    )
    .unwrap();
    path
}

fn transfer(cfg: &Path, out: &Path, cache: &Path, device: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "transfer",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
        "--quiet",
        "--device",
        device,
    ];
    args.extend_from_slice(extra);
    let o = digitlab(&args);
    assert!(o.status.success(), "{}", text(&o));
    summary(&out.join("lenet5-random"))
}

#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "needs --features cuda and an NVIDIA GPU")]
fn feature_cache_written_on_cuda_is_used_on_cpu_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = transfer_config(dir.path());
    let cache = dir.path().join("cache");
    let a = transfer(&cfg, &dir.path().join("a"), &cache, "cuda", &[]);
    assert_eq!(a["cache_misses"], 3, "{a}");
    let b = transfer(&cfg, &dir.path().join("b"), &cache, "cpu", &[]);
    assert_eq!(
        (b["cache_hits"].clone(), b["backbone_images"].clone()),
        (3.into(), 0.into()),
        "{b}"
    );
    // The head sees the same features; its training differs in the last bits only.
    let (ta, tb) = (
        a["test_accuracy"].as_f64().unwrap(),
        b["test_accuracy"].as_f64().unwrap(),
    );
    assert!((ta - tb).abs() <= 2.0 / 360.0, "test accuracy CUDA {ta} vs CPU {tb}");
    // A CPU-written cache (bf16 features are a different key) read on CUDA.
    let c = transfer(&cfg, &dir.path().join("c"), &cache, "cpu", &["--dtype", "bf16"]);
    assert_eq!(c["cache_misses"], 3, "{c}");
    let d = transfer(&cfg, &dir.path().join("d"), &cache, "cuda", &["--dtype", "bf16"]);
    assert_eq!(d["cache_hits"], 3, "{d}");
}
