//! CUDA code paths against the CPU (issue 15).
//!
//! These run in the `cuda` build (`cargo test --release --workspace --features cuda`)
//! on a machine with an NVIDIA GPU and driver; a cuda build cannot even start
//! without the driver's `libcuda.so.1`. In the default build every test is reported
//! as ignored with the reason. Tolerances are stated at each check: the CPU and
//! cuBLAS/candle's CUDA kernels sum in different orders, so results agree to
//! float reassociation, not bit for bit.
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::ModuleT;
use digitlab_finetune::features::Lookup;
use digitlab_finetune::{create_model, CreateOptions, FeatureCache, WeightsSource};
use digitlab_kernels::{Activation, Conv2dParams};
use digitlab_models::{InputShape, MixedBackbone, Precision, SeededVarMap};
use digitlab_train::{train, ExperimentConfig, PreparedData, RunOptions};

const NEEDS_GPU: &str = "needs --features cuda and an NVIDIA GPU";

fn gpu() -> Device {
    Device::new_cuda(0).unwrap_or_else(|e| panic!("{NEEDS_GPU}: cannot open CUDA device 0: {e}"))
}

/// Seeded values in [-1, 1) (a fixed LCG: the same on every machine).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn tensor(shape: &[usize], seed: u64, dev: &Device) -> Tensor {
    Tensor::from_vec(values(shape.iter().product(), seed), shape, dev).unwrap()
}

/// `‖a - b‖ / max(‖a‖, tiny)`, both brought to the CPU as f32.
fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    let cpu = |t: &Tensor| t.to_device(&Device::Cpu).unwrap().to_dtype(DType::F64).unwrap();
    let (a, b) = (cpu(a), cpu(b));
    assert_eq!(a.dims(), b.dims());
    let norm = |t: &Tensor| t.sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap().sqrt();
    norm(&(&a - &b).unwrap()) / norm(&a).max(1e-30)
}

fn assert_close(what: &str, cpu: &Tensor, cuda: &Tensor, tol: f64) {
    let r = rel_diff(cpu, cuda);
    assert!(
        r <= tol,
        "{what}: CUDA differs from CPU by {r:.3e} relative (tolerance {tol:.0e})"
    );
}

// ---- every CustomOp of digitlab-kernels: the public function on CUDA gives the CPU result

/// Forward and input/parameter gradients of `f` on both devices, compared to `tol`.
fn check_op(name: &str, inputs: &[(&[usize], u64)], tol: f64, f: impl Fn(&[Tensor]) -> Tensor) {
    let run = |dev: &Device| {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|(shape, seed)| Var::from_tensor(&tensor(shape, *seed, dev)).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y = f(&ts);
        // A fixed random projection of the output, so every output element's gradient matters.
        let proj = tensor(y.dims(), 99, dev);
        let grads = (&y * &proj).unwrap().sum_all().unwrap().backward().unwrap();
        let gs: Vec<Option<Tensor>> = vars.iter().map(|v| grads.get(v.as_tensor()).cloned()).collect();
        (y, gs)
    };
    let (y_cpu, g_cpu) = run(&Device::Cpu);
    let (y_gpu, g_gpu) = run(&gpu());
    assert!(y_gpu.device().is_cuda(), "{name}: output left the GPU");
    assert_close(&format!("{name} forward"), &y_cpu, &y_gpu, tol);
    for (i, (a, b)) in g_cpu.iter().zip(&g_gpu).enumerate() {
        match (a, b) {
            (Some(a), Some(b)) => assert_close(&format!("{name} gradient of input {i}"), a, b, tol),
            (None, None) => {}
            _ => panic!("{name}: input {i} has a gradient on one device only"),
        }
    }
}

#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "needs --features cuda and an NVIDIA GPU")]
fn kernel_linear_on_cuda_matches_cpu() {
    for act in [Activation::Identity, Activation::Relu] {
        check_op("linear", &[(&[16, 40], 1), (&[24, 40], 2), (&[24], 3)], 1e-5, |t| {
            digitlab_kernels::linear(&t[0], &t[1], Some(&t[2]), act).unwrap()
        });
        check_op("linear without bias", &[(&[3, 5, 40], 4), (&[24, 40], 5)], 1e-5, |t| {
            digitlab_kernels::linear(&t[0], &t[1], None, act).unwrap()
        });
    }
}

#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "needs --features cuda and an NVIDIA GPU")]
fn kernel_conv2d_on_cuda_matches_cpu() {
    for (stride, padding) in [(1, 0), (1, 1), (2, 1)] {
        let p = Conv2dParams {
            padding,
            stride,
            ..Default::default()
        };
        check_op(
            "conv2d",
            &[(&[2, 3, 11, 9], 6), (&[5, 3, 3, 3], 7), (&[5], 8)],
            1e-5,
            |t| digitlab_kernels::conv2d(&t[0], &t[1], Some(&t[2]), p, Activation::Relu).unwrap(),
        );
        check_op(
            "conv2d without bias",
            &[(&[2, 4, 8, 8], 9), (&[6, 4, 5, 5], 10)],
            1e-5,
            |t| digitlab_kernels::conv2d(&t[0], &t[1], None, p, Activation::Identity).unwrap(),
        );
    }
}

#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "needs --features cuda and an NVIDIA GPU")]
fn kernel_max_pool_relu_and_loss_on_cuda_match_cpu() {
    // Random inputs have no ties, so both devices route the gradient to the same input.
    for (k, s, p) in [(2, 2, 0), (3, 2, 1), (3, 1, 1)] {
        check_op("max_pool2d", &[(&[2, 3, 9, 10], 11)], 1e-6, |t| {
            digitlab_kernels::max_pool2d(&t[0], k, s, p).unwrap()
        });
    }
    check_op("relu", &[(&[7, 33], 12)], 1e-6, |t| {
        digitlab_kernels::relu(&t[0]).unwrap()
    });
    let labels = |dev: &Device| Tensor::new(&[3u32, 0, 9, 4, 4, 1], dev).unwrap();
    check_op("softmax_cross_entropy", &[(&[6, 10], 13)], 1e-5, |t| {
        digitlab_kernels::softmax_cross_entropy(&t[0], &labels(t[0].device())).unwrap()
    });
}

#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "needs --features cuda and an NVIDIA GPU")]
fn kernel_batch_norm_eval_on_cuda_matches_cpu() {
    let run = |dev: &Device| {
        let x = tensor(&[4, 6, 5, 5], 14, dev);
        let mean = tensor(&[6], 15, dev);
        let var = (tensor(&[6], 16, dev).abs().unwrap() + 0.5).unwrap();
        let (w, b) = (tensor(&[6], 17, dev), tensor(&[6], 18, dev));
        digitlab_kernels::batch_norm_eval(&x, &mean, &var, Some((&w, &b)), 1e-5, Activation::Relu).unwrap()
    };
    assert_close("batch_norm_eval", &run(&Device::Cpu), &run(&gpu()), 1e-6);
}

// ---- training steps, CUDA vs CPU

/// Trains `model` (a TOML `[model]` table) for one epoch of a few steps on the
/// embedded digits on `dev` and returns the trained variables (sorted by name) and
/// the epoch's train loss.
fn few_steps(model: &str, resize: Option<usize>, dev: &Device, dtype: Precision) -> (Vec<(String, Tensor)>, f64) {
    let resize = resize.map(|r| format!("resize = [{r}, {r}]\n")).unwrap_or_default();
    let toml = format!(
        "name = \"cuda-parity\"\nseed = 7\n[data]\ndataset = \"digits\"\nsubset = 0.15\nval_fraction = 0.0\nnormalize = \"symmetric\"\n{resize}\
         [model]\n{model}\n[optim]\nkind = \"sgd\"\nlr = 0.05\nmomentum = 0.9\n\
         [train]\nepochs = 1\nbatch_size = 32\nloss = \"cross_entropy\"\nselect_metric = \"train_loss\"\ncheckpoints = false\ndtype = \"{dtype}\"\n"
    );
    let cfg = ExperimentConfig::from_toml_str(&toml, &[]).unwrap();
    let data = PreparedData::load(&cfg, Path::new("/nonexistent-digits-are-embedded")).unwrap();
    let run = train(
        &cfg,
        &data,
        &RunOptions {
            device: dev.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    let loss = run.history[0]["train_loss"];
    let mut vars: Vec<(String, Tensor)> = run
        .varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().to_device(&Device::Cpu).unwrap()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    (vars, loss)
}

/// After ~8 SGD steps with momentum, weights agree to `tol` relative per tensor and
/// the epoch loss to 1e-4 relative.
fn check_training(model: &str, resize: Option<usize>, tol: f64) {
    let (cpu, loss_cpu) = few_steps(model, resize, &Device::Cpu, Precision::F32);
    let (gpu_vars, loss_gpu) = few_steps(model, resize, &gpu(), Precision::F32);
    assert_eq!(cpu.len(), gpu_vars.len());
    for ((n, a), (m, b)) in cpu.iter().zip(&gpu_vars) {
        assert_eq!(n, m);
        assert_close(&format!("{model}: {n} after training"), a, b, tol);
    }
    let r = (loss_cpu - loss_gpu).abs() / loss_cpu.abs();
    assert!(r < 1e-4, "{model}: train loss CPU {loss_cpu} vs CUDA {loss_gpu}");
}

#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "needs --features cuda and an NVIDIA GPU")]
fn mlp_training_steps_on_cuda_match_cpu() {
    check_training("kind = \"mlp\"\nhidden = [64, 32]", None, 1e-4);
}

#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "needs --features cuda and an NVIDIA GPU")]
fn lenet_training_steps_on_cuda_match_cpu() {
    check_training("kind = \"lenet5\"", Some(28), 1e-4);
}

#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "needs --features cuda and an NVIDIA GPU")]
fn bf16_training_on_cuda_stays_near_f32() {
    // bf16 keeps 8 bits of mantissa: after a few steps the f32 master weights of the
    // bf16 run stay within 5% (relative norm) of the f32 run's.
    let (f32_vars, loss32) = few_steps("kind = \"mlp\"\nhidden = [64]", None, &gpu(), Precision::F32);
    let (bf16_vars, loss16) = few_steps("kind = \"mlp\"\nhidden = [64]", None, &gpu(), Precision::Bf16);
    for ((n, a), (_, b)) in f32_vars.iter().zip(&bf16_vars) {
        assert_eq!(b.dtype(), DType::F32, "{n}: master weights must stay f32");
        assert_close(&format!("bf16 vs f32: {n}"), a, b, 5e-2);
    }
    assert!(
        (loss32 - loss16).abs() / loss32 < 5e-2,
        "loss f32 {loss32} vs bf16 {loss16}"
    );
}

// ---- frozen ResNet-18 features

fn resnet18(dev: &Device, size: usize) -> digitlab_finetune::CreatedModel {
    let opts = CreateOptions {
        input: InputShape {
            channels: 3,
            height: size,
            width: size,
        },
        seed: 3,
        device: dev.clone(),
        hub: None,
    };
    create_model("resnet18", &WeightsSource::None, 10, &opts).unwrap()
}

#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "needs --features cuda and an NVIDIA GPU")]
fn resnet18_features_on_cuda_match_cpu() {
    // Seeded weights (the same tensors on both devices), eval mode, 1e-4 relative.
    let feats = |dev: &Device| {
        let m = resnet18(dev, 64);
        let x = tensor(&[4, 3, 64, 64], 21, dev);
        m.backbone().features(&x, false).unwrap()
    };
    let (cpu, cuda) = (feats(&Device::Cpu), feats(&gpu()));
    assert_eq!(cpu.dims(), [4, 512]);
    assert_close("resnet18 features", &cpu, &cuda, 1e-4);
    // And the whole network's logits.
    let logits = |dev: &Device| {
        let m = resnet18(dev, 64);
        m.model.forward_t(&tensor(&[2, 3, 64, 64], 22, dev), false).unwrap()
    };
    assert_close("resnet18 logits", &logits(&Device::Cpu), &logits(&gpu()), 1e-4);
}

#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "needs --features cuda and an NVIDIA GPU")]
fn bf16_resnet18_features_on_cuda_stay_near_f32() {
    let m = resnet18(&gpu(), 64);
    let x = tensor(&[4, 3, 64, 64], 23, &gpu());
    let f32_features = m.backbone().features(&x, false).unwrap();
    let bf16 = MixedBackbone::wrap(m.backbone(), Precision::Bf16);
    let bf16_features = bf16.features(&x, false).unwrap();
    assert_eq!(bf16_features.dtype(), DType::F32);
    // bf16 rounds every activation to 8 mantissa bits through 17 convolutions.
    assert_close("bf16 resnet18 features", &f32_features, &bf16_features, 5e-2);
}

// ---- files written on CUDA load on the CPU and back

#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "needs --features cuda and an NVIDIA GPU")]
fn feature_cache_round_trips_between_devices() {
    let dir = tempfile::tempdir().unwrap();
    let cache = FeatureCache::new(dir.path());
    let key = |split: &str| digitlab_finetune::FeatureKey {
        format: digitlab_finetune::features::CACHE_FORMAT,
        model: "resnet18".into(),
        model_config: resnet18(&Device::Cpu, 32).arch.config.clone(),
        input: [3, 32, 32],
        weights: "random:seed=3".into(),
        dataset: "digits".into(),
        split: split.into(),
        subset: None,
        seed: None,
        val_fraction: None,
        stratified: None,
        classes: None,
        test_limit: None,
        resize: None,
        channels: None,
        normalize: digitlab_data::Normalization::Unit,
        images: 5,
        data_sha256: "0".repeat(64),
        dtype: Precision::F32,
    };
    let labels = [1u8, 2, 3, 4, 5];
    // Written from CUDA, read on the CPU (the cache always loads to the CPU).
    let on_gpu = tensor(&[5, 8], 24, &gpu());
    cache.store(&key("train"), &on_gpu, &labels).unwrap();
    let read = match cache.lookup(&key("train"), &labels) {
        Lookup::Hit(t) => t,
        other => panic!("cache written from CUDA not readable on the CPU: {other:?}"),
    };
    assert!(read.device().is_cpu());
    assert_close("cache written from CUDA", &on_gpu, &read, 0.0);
    // Written from the CPU, used on CUDA.
    let on_cpu = tensor(&[5, 8], 25, &Device::Cpu);
    cache.store(&key("test"), &on_cpu, &labels).unwrap();
    match cache.lookup(&key("test"), &labels) {
        Lookup::Hit(t) => assert_close("cache read onto CUDA", &on_cpu, &t.to_device(&gpu()).unwrap(), 0.0),
        other => panic!("cache written from the CPU not readable: {other:?}"),
    }
}

#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "needs --features cuda and an NVIDIA GPU")]
fn safetensors_written_on_cuda_load_on_cpu_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let map = candle_nn::VarMap::new();
    let vb = SeededVarMap::var_builder(&map, 5, DType::F32, &gpu());
    let model = digitlab_models::build_model(
        &digitlab_models::ModelConfig::Lenet5,
        InputShape {
            channels: 1,
            height: 28,
            width: 28,
        },
        10,
        vb,
    )
    .unwrap();
    let x = tensor(&[3, 1, 28, 28], 26, &gpu());
    let want = model.forward_t(&x, false).unwrap();
    let path = dir.path().join("lenet.safetensors");
    map.save(&path).unwrap();
    // Load on the CPU: the same logits.
    let cpu_map = candle_nn::VarMap::new();
    let cpu_vb = SeededVarMap::var_builder(&cpu_map, 999, DType::F32, &Device::Cpu);
    let cpu_model = digitlab_models::build_model(
        &digitlab_models::ModelConfig::Lenet5,
        InputShape {
            channels: 1,
            height: 28,
            width: 28,
        },
        10,
        cpu_vb,
    )
    .unwrap();
    let mut cpu_map = cpu_map;
    cpu_map.load(&path).unwrap();
    let got = cpu_model.forward_t(&x.to_device(&Device::Cpu).unwrap(), false).unwrap();
    assert_close("LeNet saved on CUDA, run on the CPU", &want, &got, 1e-5);
}
