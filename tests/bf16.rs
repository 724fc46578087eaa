//! bf16 mixed precision on the CPU (issue 15 item 5): the same code paths as on
//! CUDA (f32 master weights, bf16 activations), slower but testable anywhere.
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use digitlab_finetune::{create_model, CreateOptions, WeightsSource};
use digitlab_models::{InputShape, MixedBackbone, Precision};
use digitlab_train::{train, ExperimentConfig, PreparedData, RunOptions};

/// `‖a - b‖ / ‖a‖`.
fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    let f = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
    let norm = |t: &Tensor| t.sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap().sqrt();
    norm(&(f(a) - f(b)).unwrap()) / norm(&f(a))
}

fn backbone_features(model: &str, side: usize, channels: usize, precision: Precision) -> Tensor {
    let opts = CreateOptions {
        input: InputShape {
            channels,
            height: side,
            width: side,
        },
        seed: 11,
        device: Device::Cpu,
        hub: None,
    };
    let m = create_model(model, &WeightsSource::None, 10, &opts).unwrap();
    let n = 4 * channels * side * side;
    let x = Tensor::from_vec(
        (0..n)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
            .collect::<Vec<f32>>(),
        (4, channels, side, side),
        &Device::Cpu,
    )
    .unwrap();
    let f = MixedBackbone::wrap(m.backbone(), precision)
        .features(&x, false)
        .unwrap();
    assert_eq!(f.dtype(), DType::F32, "features come back as f32");
    f
}

#[test]
fn bf16_backbone_features_stay_near_f32() {
    // bf16 keeps 8 mantissa bits (relative rounding 2^-9 ≈ 0.2% per value); through a
    // few layers the feature vectors stay within 1.5% (LeNet-5) and 3% (ResNet-18,
    // 17 convolutions with batch norm) relative norm of the f32 ones.
    for (model, side, channels, tol) in [("lenet5", 28, 1, 1.5e-2), ("resnet18", 32, 3, 3e-2)] {
        let f32_f = backbone_features(model, side, channels, Precision::F32);
        let bf16_f = backbone_features(model, side, channels, Precision::Bf16);
        let r = rel_diff(&f32_f, &bf16_f);
        assert!(
            r < tol,
            "{model}: bf16 features differ by {r:.3e} relative (tolerance {tol})"
        );
        assert!(r > 0.0, "{model}: bf16 features equal f32 ones: bf16 was not used");
        eprintln!("{model}: bf16 vs f32 features, relative difference {r:.2e}");
    }
}

fn quickstart(dtype: Precision) -> (f64, Vec<DType>) {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/quickstart.toml")).unwrap();
    let cfg = ExperimentConfig::from_toml_str(
        &text,
        &[
            format!("train.dtype=\"{dtype}\""),
            "train.checkpoints=false".into(),
            "train.epochs=10".into(),
        ],
    )
    .unwrap();
    let data = PreparedData::load(&cfg, Path::new("/digits-are-embedded")).unwrap();
    let run = train(&cfg, &data, &RunOptions::default()).unwrap();
    let e = digitlab_train::evaluate(
        &run.model,
        data.test.as_ref().unwrap(),
        &cfg.data.pipeline(),
        256,
        cfg.train.loss,
        &Device::Cpu,
    )
    .unwrap();
    let dtypes = run.varmap.all_vars().iter().map(|v| v.dtype()).collect();
    (e.accuracy(), dtypes)
}

#[test]
fn bf16_training_learns_with_f32_master_weights() {
    let (acc32, _) = quickstart(Precision::F32);
    let (acc16, dtypes) = quickstart(Precision::Bf16);
    assert!(
        dtypes.iter().all(|d| *d == DType::F32),
        "master weights must stay f32: {dtypes:?}"
    );
    assert!(acc16 > 0.85, "bf16 quickstart test accuracy {acc16}");
    // The same seed, data and batches: bf16 rounding alone may cost a few test images.
    assert!((acc32 - acc16).abs() < 0.03, "f32 {acc32} vs bf16 {acc16}");
    eprintln!("quickstart (embedded digits, 10 epochs): test accuracy f32 {acc32:.4}, bf16 {acc16:.4}");
}

#[test]
fn dtype_is_a_typed_config_value() {
    let base = "name = \"t\"\n[data]\ndataset = \"digits\"\n[model]\nkind = \"softmax\"\n[optim]\nkind = \"sgd\"\nlr = 0.1\n[train]\nepochs = 1\nbatch_size = 8\nloss = \"cross_entropy\"\n";
    let c = ExperimentConfig::from_toml_str(base, &["train.dtype=\"bf16\"".into()]).unwrap();
    assert_eq!(c.train.dtype, Precision::Bf16);
    let e = ExperimentConfig::from_toml_str(base, &["train.dtype=\"fp16\"".into()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("fp16") && e.contains("bf16") && e.contains("f32"), "{e}");
    // f32 is the default and is not written out (configs and digests of f32 runs are unchanged).
    let c = ExperimentConfig::from_toml_str(base, &[]).unwrap();
    assert_eq!(c.train.dtype, Precision::F32);
    assert!(!toml::to_string(&c).unwrap().contains("dtype"));
}
