//! The complete model each transfer backbone writes (`model.safetensors` +
//! `model.json`): read back through the checkpoint loader it gives the transfer's
//! own test predictions, and it loads into PyTorch with `strict=True`
//! (`tests/torchvision_load.py`, run when `python3` has torch).
mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, ModuleT, Tensor};
use digitlab_finetune::export::{load_exported, MODEL_FILE, SIDECAR_FILE};
use digitlab_finetune::transfer::{prepare_data, vars_from};
use digitlab_finetune::{run_transfer, TransferConfig, TransferRunOptions};
use digitlab_losses::LossKind;
use digitlab_train::checkpoint;

fn config() -> TransferConfig {
    TransferConfig::from_toml_str(
        r#"
        name = "export_synthetic"
        seed = 5
        [data]
        dataset = "svhn"
        val_fraction = 0.25
        [transfer]
        epochs = 3
        batch_size = 16
        [[backbones]]
        model = "small_cnn"
        label = "cnn"
        normalize = "svhn"
        [[backbones]]
        model = "resnet18"
        label = "resnet"
        resize = [32, 32]
        "#,
        &[],
    )
    .unwrap()
}

/// Fixed, preprocessed inputs `[4, 3, 32, 32]`.
fn fixed_inputs() -> Tensor {
    let v: Vec<f32> = (0..4 * 3 * 32 * 32).map(|i| ((i as f32) * 0.013).sin() * 1.5).collect();
    Tensor::from_vec(v, (4, 3, 32, 32), &Device::Cpu).unwrap()
}

/// Runs `tests/torchvision_load.py` on `dir`; `false` when it skipped (no torch).
fn torch_check(dir: &Path, arch: &str) -> bool {
    let python = std::env::var("DIGITLAB_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/torchvision_load.py");
    let out = match std::process::Command::new(&python)
        .arg(&script)
        .arg(dir)
        .arg(arch)
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            eprintln!("skipped the PyTorch check: cannot run {python}: {e}");
            return false;
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    if out.status.code() == Some(77) {
        eprintln!("skipped the PyTorch check ({python}): {}", text.trim());
        return false;
    }
    assert!(out.status.success(), "PyTorch check of {arch} failed:\n{text}");
    true
}

#[test]
fn exported_model_matches_the_transfer_and_loads_into_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = common::svhn_data_dir(dir.path(), 100, 40);
    let out = dir.path().join("out");
    let cfg = config();
    let opts = TransferRunOptions {
        out_dir: Some(out.clone()),
        cache_dir: Some(dir.path().join("cache")),
        vars: vars_from(HashMap::new()),
        ..Default::default()
    };
    let outcomes = run_transfer(&cfg, &data_dir, &opts).unwrap();
    let data = prepare_data(&cfg.data, cfg.seed, &data_dir).unwrap();
    let test = data.test.as_ref().unwrap();
    for (o, arch) in outcomes.iter().zip(["small_cnn", "resnet18"]) {
        let run = out.join(&o.label);
        assert!(run.join(MODEL_FILE).is_file() && run.join(SIDECAR_FILE).is_file());
        // Found from the run folder as `digitlab eval --checkpoint` does.
        let sidecar_path = checkpoint::resolve(&run).unwrap();
        assert_eq!(sidecar_path, run.join(SIDECAR_FILE));
        let e = load_exported(&sidecar_path, &Device::Cpu).unwrap();
        assert_eq!(e.config.model, arch);
        assert_eq!(e.sidecar.class_names.len(), 10);
        assert_eq!(e.sidecar.input_shape, [3, 32, 32]);
        assert_eq!(e.sidecar.epoch, 3);
        let normalization = if arch == "small_cnn" {
            digitlab_finetune::zoo::svhn_normalization()
        } else {
            digitlab_data::Normalization::imagenet()
        };
        assert_eq!(e.config.preprocess.normalize, normalization);
        assert_eq!(e.config.preprocess.resize, (arch == "resnet18").then_some([32, 32]));
        // The stored preprocessing on the transfer's own test split reproduces its
        // predictions: the same network, with the standardisation folded in.
        let ev = digitlab_train::evaluate(
            &e.model,
            test,
            &e.config.preprocess,
            64,
            LossKind::CrossEntropy,
            &Device::Cpu,
        )
        .unwrap();
        let want = o.test.as_ref().unwrap();
        assert_eq!(ev.predictions, want.predictions, "{}", o.label);
        assert_eq!(ev.accuracy(), o.summary.test_accuracy.unwrap());
        assert!((ev.loss - want.loss).abs() < 1e-4, "{} vs {}", ev.loss, want.loss);

        // The backbone tensors are those of the run's model, under their torch names.
        let file = candle_core::safetensors::load(run.join(MODEL_FILE), &Device::Cpu).unwrap();
        let vars = o.created.varmap.data().lock().unwrap();
        let head = format!("{}.", o.created.head_prefix());
        for (name, var) in vars.iter().filter(|(n, _)| !n.starts_with(&head)) {
            assert!(common::bit_identical(&file[name], var.as_tensor()), "{name}");
        }
        assert_eq!(file.len(), vars.len(), "{}: backbone + head, nothing else", o.label);

        // Fixed inputs and digitlab's logits, for the PyTorch side.
        let x = fixed_inputs();
        let logits = e.model.forward_t(&x, false).unwrap().to_dtype(DType::F32).unwrap();
        candle_core::safetensors::save(
            &HashMap::from([("inputs".to_string(), x)]),
            run.join("inputs.safetensors"),
        )
        .unwrap();
        candle_core::safetensors::save(
            &HashMap::from([("logits".to_string(), logits)]),
            run.join("logits.safetensors"),
        )
        .unwrap();
        torch_check(&run, arch);
    }
}
