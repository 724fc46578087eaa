//! The workloads of `cargo xtask bench`, on digitlab's real code paths
//! (`build_model`, `digitlab_losses`, `digitlab_train::optim::Optimizer`, the data
//! `Batcher`), with synthetic data.
//!
//! `benches/reference/bench.py` does exactly the same work in PyTorch under the same
//! names: same shapes, same optimizer and hyperparameters, same synthetic data recipe,
//! same warm-up and timing protocol (see [`measure`]).
use candle_core::{DType, Device, IndexOp, ModuleT, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use digitlab_data::{Batcher, Dataset, ImageShape, Normalization, Pipeline};
use digitlab_losses::{l2_penalty, softmax_cross_entropy, L2Convention, LossKind, Reduction};
use digitlab_models::{
    build_model, Head, InputShape, MlpConfig, Model, ModelConfig, ResNetConfig, SeededVarMap, VggConfig,
};
use digitlab_train::optim::{AdamConfig, OptimizerConfig, SgdConfig};
use std::time::{Duration, Instant};

/// Errors of the benchmark workloads.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("unknown workload `{0}` (see --list)")]
    UnknownWorkload(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Loss(#[from] digitlab_losses::LossError),
    #[error(transparent)]
    Data(#[from] digitlab_data::DataError),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, BenchError>;

/// One benchmark workload: a name shared with the PyTorch reference and what it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload {
    pub name: &'static str,
    pub about: &'static str,
    /// Samples (images, feature rows) processed by one step.
    pub samples_per_step: usize,
}

const fn w(name: &'static str, about: &'static str, samples_per_step: usize) -> Workload {
    Workload {
        name,
        about,
        samples_per_step,
    }
}

/// Every workload, in table order.
pub const WORKLOADS: &[Workload] = &[
    w(
        "mlp_sgd_b1",
        "MLP 784-256-256-128-128-10 train step, SGD lr 0.01, batch 1",
        1,
    ),
    w("mlp_sgd_b32", "MLP train step, SGD, batch 32", 32),
    w("mlp_sgd_b100", "MLP train step, SGD, batch 100", 100),
    w("mlp_sgd_b256", "MLP train step, SGD, batch 256", 256),
    w("mlp_adam_b1", "MLP train step, Adam lr 1e-3, batch 1", 1),
    w("mlp_adam_b32", "MLP train step, Adam, batch 32", 32),
    w("mlp_adam_b100", "MLP train step, Adam, batch 100", 100),
    w("mlp_adam_b256", "MLP train step, Adam, batch 256", 256),
    w("mlp_eval_b1000", "MLP forward (eval) + argmax, batch 1000", 1000),
    w(
        "wide_mlp_sgd_b32",
        "MLP 784-3136-1568-10 train step, SGD lr 0.1, batch 32",
        32,
    ),
    w(
        "logreg_adam_full12000",
        "logistic regression full-batch step on 12000x784: BCE-with-logits + L2, Adam lr 0.01",
        12_000,
    ),
    w(
        "lenet5_adam_b64",
        "LeNet-5 train step on 3x32x32, Adam lr 1e-3, batch 64",
        64,
    ),
    w(
        "efficientnet_finetune64_b32",
        "EfficientNet-Lite0 train step (all layers, batch-norm statistics updated), 3x64x64, Adam lr 1e-3, batch 32",
        32,
    ),
    w(
        "resnet18_feat32_b64",
        "ResNet-18 features (eval, no grad), 3x32x32, batch 64",
        64,
    ),
    w(
        "resnet18_feat224_b32",
        "ResNet-18 features (eval, no grad), 3x224x224, batch 32",
        32,
    ),
    w(
        "vgg16_feat32_b64",
        "VGG-16 features (4096-d, eval, no grad), 3x32x32, batch 64",
        64,
    ),
    w(
        "vgg16_feat224_b8",
        "VGG-16 features (4096-d, eval, no grad), 3x224x224, batch 8",
        8,
    ),
    w(
        "head_adam_b64",
        "linear head 512->10 on cached features (gather + step), Adam lr 1e-3, batch 64",
        64,
    ),
    w(
        "data_pipeline_b100",
        "normalise 60000 u8 28x28 images + one shuffled epoch of batches of 100",
        60_000,
    ),
    w(
        "e2e_mlp_sweep",
        "end to end on real MNIST: `digitlab sweep` of configs/mlp_mnist.toml (3 lrs x 5 epochs at batch 100, retrain the best on train + val, test); samples = training images",
        3 * 5 * 48_000 + 5 * 60_000,
    ),
    w(
        "e2e_mlp_wide",
        "end to end on real MNIST: `digitlab train` of configs/mlp_wide.toml for 1 epoch (batch 32, validation, test); samples = training images",
        54_000,
    ),
    w(
        "e2e_transfer224",
        "end to end on real MNIST: `digitlab transfer` of benches/configs/e2e_transfer224.toml (ResNet-18 at 224 px, random frozen weights, 225 train / 75 val / 100 test images, head 5 epochs); samples = training images x epochs",
        5 * 225,
    ),
];

/// Whether a workload is end to end: one whole run per process, no warm-up.
pub fn is_end_to_end(name: &str) -> bool {
    name.starts_with("e2e_")
}

/// Looks a workload up by name.
pub fn workload(name: &str) -> Result<Workload> {
    WORKLOADS
        .iter()
        .copied()
        .find(|w| w.name == name)
        .ok_or_else(|| BenchError::UnknownWorkload(name.to_string()))
}

/// A prepared workload: `step()` runs one step.
pub struct Prepared {
    pub workload: Workload,
    step: Box<dyn FnMut() -> Result<()>>,
}

impl Prepared {
    /// A workload from its step function.
    pub fn new(workload: Workload, step: Box<dyn FnMut() -> Result<()>>) -> Self {
        Self { workload, step }
    }
    pub fn step(&mut self) -> Result<()> {
        (self.step)()
    }
}

/// Result of [`measure`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    pub steps: usize,
    pub seconds: f64,
    pub samples_per_second: f64,
}

/// The timing protocol shared with the PyTorch reference: `warmup` untimed steps,
/// then timed steps until at least `min_seconds` have passed and at least
/// `min_steps` steps ran. Throughput is samples per second of wall time.
pub fn measure(p: &mut Prepared, warmup: usize, min_seconds: f64, min_steps: usize) -> Result<Measurement> {
    for _ in 0..warmup {
        p.step()?;
    }
    let budget = Duration::from_secs_f64(min_seconds.max(0.0));
    let t0 = Instant::now();
    let mut steps = 0;
    while steps < min_steps.max(1) || t0.elapsed() < budget {
        p.step()?;
        steps += 1;
    }
    let seconds = t0.elapsed().as_secs_f64();
    let samples = (steps * p.workload.samples_per_step) as f64;
    Ok(Measurement {
        steps,
        seconds,
        samples_per_second: samples / seconds.max(1e-12),
    })
}

/// Deterministic pseudo-random values in [-1, 1): the splitmix64 finaliser of
/// `i + 1 + seed * 0x9E3779B97F4A7C15`, top 24 bits. The PyTorch reference computes
/// the same values with numpy (the values do not affect timing, but the data is then
/// identical on both sides).
pub fn synthetic(n: usize, seed: u64) -> Vec<f32> {
    let base = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..n as u64)
        .map(|i| {
            let mut z = base.wrapping_add(i + 1);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn images(b: usize, c: usize, h: usize, w: usize) -> Result<Tensor> {
    Ok(Tensor::from_vec(
        synthetic(b * c * h * w, 1),
        (b, c, h, w),
        &Device::Cpu,
    )?)
}

/// Labels `i % classes`.
fn labels(b: usize, classes: u32) -> Result<Tensor> {
    Ok(Tensor::from_vec(
        (0..b as u32).map(|i| i % classes).collect::<Vec<u32>>(),
        b,
        &Device::Cpu,
    )?)
}

fn sgd(lr: f64) -> OptimizerConfig {
    SgdConfig::new(lr).into()
}

fn adam(lr: f64) -> OptimizerConfig {
    AdamConfig::new(lr).into()
}

fn mlp_config(hidden: &[usize]) -> ModelConfig {
    ModelConfig::Mlp(MlpConfig {
        hidden: hidden.to_vec(),
        activation: Default::default(),
        dropout: 0.0,
        batch_norm: false,
    })
}

/// A seeded model and its variables.
fn model(cfg: &ModelConfig, input: InputShape, classes: usize) -> Result<(Model, VarMap)> {
    let map = VarMap::new();
    let vb = SeededVarMap::var_builder(&map, 0, DType::F32, &Device::Cpu);
    Ok((build_model(cfg, input, classes, vb)?, map))
}

/// The trainable variables of `map`, sorted by name (as the trainer passes them).
fn params(map: &VarMap) -> Vec<(String, Var)> {
    digitlab_train::trainable_params(map)
}

/// Plain-tensor weights (no autograd tracking), like a backbone loaded from a
/// checkpoint for feature extraction, filled with [`synthetic`] values scaled to
/// each initialiser's spread (uniform with the same standard deviation). Made in
/// f32 directly, so building VGG-16 does not hold f64 copies of its 138M weights.
pub(crate) struct SyntheticWeights;

impl SimpleBackend for SyntheticWeights {
    fn get(&self, s: Shape, name: &str, init: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let n = s.elem_count();
        let seed = name
            .bytes()
            .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        // (mean, half-width) of a uniform with the initialiser's mean and std.
        let (mean, half) = match init {
            Init::Const(c) => (c, 0.0),
            Init::Uniform { lo, up } => ((lo + up) / 2.0, (up - lo) / 2.0),
            Init::Randn { mean, stdev } => (mean, stdev * 3f64.sqrt()),
            Init::Kaiming { fan, non_linearity, .. } => (
                0.0,
                3f64.sqrt() * non_linearity.gain() / (fan.for_shape(&s).max(1) as f64).sqrt(),
            ),
        };
        let v: Vec<f32> = synthetic(n, seed)
            .into_iter()
            .map(|u| (mean + half * f64::from(u)) as f32)
            .collect();
        Tensor::from_vec(v, s, dev)?.to_dtype(dtype)
    }
    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("synthetic weights: no tensor named {name}")
    }
    fn contains_tensor(&self, _: &str) -> bool {
        false
    }
}

fn frozen_model(cfg: &ModelConfig, input: InputShape, classes: usize) -> Result<Model> {
    let vb = VarBuilder::from_backend(Box::new(SyntheticWeights), DType::F32, Device::Cpu);
    Ok(build_model(cfg, input, classes, vb)?)
}

/// Classifier training: forward, softmax cross-entropy (mean), loss read back to the
/// host (as the trainer does every step), backward, optimizer step.
fn classifier_step(
    cfg: ModelConfig,
    input: InputShape,
    batch: usize,
    optim: OptimizerConfig,
) -> Result<Box<dyn FnMut() -> Result<()>>> {
    let (m, map) = model(&cfg, input, 10)?;
    let mut opt = optim.build(params(&map))?;
    let x = images(batch, input.channels, input.height, input.width)?;
    let y = labels(batch, 10)?;
    Ok(Box::new(move || {
        let out = m.forward_t(&x, true)?;
        let loss = softmax_cross_entropy(&out, &y, Reduction::Mean)?;
        let _ = loss.to_scalar::<f32>()?;
        opt.step(&loss.backward()?)?;
        Ok(())
    }))
}

const MNIST: InputShape = InputShape {
    channels: 1,
    height: 28,
    width: 28,
};

fn rgb(side: usize) -> InputShape {
    InputShape {
        channels: 3,
        height: side,
        width: side,
    }
}

fn features_step(cfg: ModelConfig, side: usize, batch: usize) -> Result<Box<dyn FnMut() -> Result<()>>> {
    let m = frozen_model(&cfg, rgb(side), 10)?;
    let x = images(batch, 3, side, side)?;
    Ok(Box::new(move || {
        let f = m
            .features(&x, false)?
            .ok_or_else(|| BenchError::Invalid("model has no backbone".into()))?;
        // Touch the result so nothing can be skipped.
        let _ = f.i((0, 0))?.to_scalar::<f32>()?;
        Ok(())
    }))
}

/// The path of `configs/<name>.toml` in this workspace.
fn config(name: &str) -> String {
    format!("{}/../configs/{name}.toml", env!("CARGO_MANIFEST_DIR"))
}

/// One end-to-end run of the `digitlab` CLI (the binary beside this one) with `args`,
/// on real data (`$DIGITLAB_DATA`), into a fresh folder under the system temp folder
/// that is removed afterwards (only when it carries digitlab's run marker).
fn cli_step(args: &[&str]) -> Result<Box<dyn FnMut() -> Result<()>>> {
    let exe = std::env::current_exe()
        .map_err(|e| BenchError::Invalid(format!("cannot locate digitlab-bench: {e}")))?
        .with_file_name("digitlab");
    if !exe.is_file() {
        return Err(BenchError::Invalid(format!(
            "{} not found: build it with `cargo build --release -p digitlab-cli`",
            exe.display()
        )));
    }
    if std::env::var_os("DIGITLAB_DATA").is_none() {
        return Err(BenchError::Invalid(
            "DIGITLAB_DATA is not set: the e2e workloads run on real MNIST".into(),
        ));
    }
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let root = std::env::temp_dir().join(format!("digitlab-bench-{}", std::process::id()));
    let mut runs = 0usize;
    Ok(Box::new(move || {
        let out = root.join(format!("run{runs}"));
        runs += 1;
        let io = |what: &str, e: std::io::Error| BenchError::Invalid(format!("{what}: {e}"));
        std::fs::create_dir_all(&root).map_err(|e| io(&root.display().to_string(), e))?;
        let status = std::process::Command::new(&exe)
            .args(&args)
            .arg("--out")
            .arg(&out)
            .arg("--quiet")
            .stdout(std::process::Stdio::null())
            .status()
            .map_err(|e| io(&exe.display().to_string(), e))?;
        if !status.success() {
            return Err(BenchError::Invalid(format!(
                "digitlab {} failed: {status}",
                args.join(" ")
            )));
        }
        if out.join(".digitlab-run.json").is_file() {
            std::fs::remove_dir_all(&out).map_err(|e| io(&out.display().to_string(), e))?;
        }
        // Removes the folder only when it is empty.
        let _ = std::fs::remove_dir(&root);
        Ok(())
    }))
}

/// Prepares workload `name` (builds the model, data and optimizer).
pub fn prepare(name: &str) -> Result<Prepared> {
    let workload = workload(name)?;
    let mlp = mlp_config(&[256, 256, 128, 128]);
    let step: Box<dyn FnMut() -> Result<()>> = match name {
        "mlp_sgd_b1" => classifier_step(mlp, MNIST, 1, sgd(0.01))?,
        "mlp_sgd_b32" => classifier_step(mlp, MNIST, 32, sgd(0.01))?,
        "mlp_sgd_b100" => classifier_step(mlp, MNIST, 100, sgd(0.01))?,
        "mlp_sgd_b256" => classifier_step(mlp, MNIST, 256, sgd(0.01))?,
        "mlp_adam_b1" => classifier_step(mlp, MNIST, 1, adam(1e-3))?,
        "mlp_adam_b32" => classifier_step(mlp, MNIST, 32, adam(1e-3))?,
        "mlp_adam_b100" => classifier_step(mlp, MNIST, 100, adam(1e-3))?,
        "mlp_adam_b256" => classifier_step(mlp, MNIST, 256, adam(1e-3))?,
        "wide_mlp_sgd_b32" => classifier_step(mlp_config(&[3136, 1568]), MNIST, 32, sgd(0.1))?,
        "lenet5_adam_b64" => classifier_step(ModelConfig::Lenet5, rgb(32), 64, adam(1e-3))?,
        "efficientnet_finetune64_b32" => classifier_step(ModelConfig::EfficientnetLite0, rgb(64), 32, adam(1e-3))?,
        "mlp_eval_b1000" => {
            let (m, _map) = model(&mlp, MNIST, 10)?;
            let x = images(1000, 1, 28, 28)?;
            Box::new(move || {
                let pred = m.forward_t(&x, false)?.argmax(1)?;
                let _ = pred.to_vec1::<u32>()?;
                Ok(())
            })
        }
        "logreg_adam_full12000" => {
            let n = 12_000;
            let (m, map) = model(&ModelConfig::Logistic, MNIST, 2)?;
            let vars = params(&map);
            let weight = vars
                .iter()
                .find(|(n, _)| n.ends_with("weight"))
                .map(|(_, v)| v.as_tensor().clone())
                .ok_or_else(|| BenchError::Invalid("logistic regression has no weight".into()))?;
            let mut opt = adam(0.01).build(vars)?;
            let x = images(n, 1, 28, 28)?;
            let y = labels(n, 2)?;
            Box::new(move || {
                let out = m.forward_t(&x, true)?;
                let loss = LossKind::BceWithLogits.compute(&out, &y, Reduction::Mean)?;
                let loss = (loss + l2_penalty(&[&weight], 0.01, L2Convention::HalfOverM { m: n })?)?;
                let _ = loss.to_scalar::<f32>()?;
                opt.step(&loss.backward()?)?;
                Ok(())
            })
        }
        "resnet18_feat32_b64" => features_step(
            ModelConfig::Resnet(ResNetConfig {
                depth: 18,
                cifar_stem: false,
            }),
            32,
            64,
        )?,
        "resnet18_feat224_b32" => features_step(
            ModelConfig::Resnet(ResNetConfig {
                depth: 18,
                cifar_stem: false,
            }),
            224,
            32,
        )?,
        "vgg16_feat32_b64" => features_step(
            ModelConfig::Vgg(VggConfig {
                depth: 16,
                batch_norm: false,
            }),
            32,
            64,
        )?,
        "vgg16_feat224_b8" => features_step(
            ModelConfig::Vgg(VggConfig {
                depth: 16,
                batch_norm: false,
            }),
            224,
            8,
        )?,
        "head_adam_b64" => {
            let (rows, dim, batch) = (10_000usize, 512usize, 64usize);
            let feats = Tensor::from_vec(synthetic(rows * dim, 2), (rows, dim), &Device::Cpu)?;
            let ys = labels(rows, 10)?;
            let map = VarMap::new();
            let vb = SeededVarMap::var_builder(&map, 0, DType::F32, &Device::Cpu);
            let head = Head::new(dim, 10, 0.0, vb.pp("fc"))?;
            let mut opt = adam(1e-3).build(params(&map))?;
            // A fixed shuffled order, walked in chunks of `batch` (as train_head does).
            let order: Vec<u32> = (0..rows as u32).map(|i| (i.wrapping_mul(7919)) % rows as u32).collect();
            let mut pos = 0usize;
            Box::new(move || {
                if pos + batch > rows {
                    pos = 0;
                }
                let ids = Tensor::from_slice(&order[pos..pos + batch], batch, &Device::Cpu)?;
                pos += batch;
                let x = feats.index_select(&ids, 0)?;
                let y = ys.index_select(&ids, 0)?;
                let logits = head.forward_t(&x, true)?;
                let loss = softmax_cross_entropy(&logits, &y, Reduction::Mean)?;
                let _ = loss.to_scalar::<f32>()?;
                opt.step(&loss.backward()?)?;
                Ok(())
            })
        }
        "data_pipeline_b100" => {
            let n = 60_000usize;
            let shape = ImageShape {
                channels: 1,
                height: 28,
                width: 28,
            };
            let pixels: Vec<u8> = synthetic(n * 784, 3)
                .into_iter()
                .map(|v| ((v + 1.0) * 127.5) as u8)
                .collect();
            let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
            let names = (0..10).map(|i| i.to_string()).collect();
            let data = Dataset::new("synthetic", shape, pixels, labels, names)?;
            let pipeline = Pipeline {
                normalize: Normalization::Symmetric,
                ..Default::default()
            };
            let mut epoch = 0u64;
            Box::new(move || {
                // A fresh batcher converts (normalises) the whole set once, then
                // gathers shuffled batches: the trainer's cached path.
                let batcher = Batcher::new(&data, &pipeline, 100, &Device::Cpu)?.training(0);
                let mut seen = 0;
                for b in batcher.epoch(epoch) {
                    seen += b?.indices.len();
                }
                epoch += 1;
                if seen != n {
                    return Err(BenchError::Invalid(format!("epoch saw {seen} of {n} images")));
                }
                Ok(())
            })
        }
        "e2e_mlp_sweep" => cli_step(&["sweep", "--config", &config("mlp_mnist")])?,
        "e2e_mlp_wide" => cli_step(&["train", "--config", &config("mlp_wide"), "--set", "train.epochs=1"])?,
        "e2e_transfer224" => cli_step(&[
            "transfer",
            "--config",
            &format!("{}/configs/e2e_transfer224.toml", env!("CARGO_MANIFEST_DIR")),
        ])?,
        other => return Err(BenchError::UnknownWorkload(other.to_string())),
    };
    Ok(Prepared { workload, step })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_known() {
        let mut names: Vec<_> = WORKLOADS.iter().map(|w| w.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), WORKLOADS.len());
        assert!(matches!(prepare("nope"), Err(BenchError::UnknownWorkload(_))));
    }

    #[test]
    fn small_workloads_run_and_measure() {
        for name in [
            "mlp_sgd_b1",
            "mlp_adam_b32",
            "mlp_eval_b1000",
            "head_adam_b64",
            "lenet5_adam_b64",
        ] {
            let mut p = prepare(name).unwrap();
            let m = measure(&mut p, 1, 0.0, 2).unwrap();
            assert_eq!(m.steps, 2, "{name}");
            assert!(
                m.samples_per_second > 0.0 && m.samples_per_second.is_finite(),
                "{name}: {m:?}"
            );
        }
    }

    #[test]
    fn synthetic_values_are_in_range_and_deterministic() {
        let a = synthetic(1000, 5);
        assert_eq!(a, synthetic(1000, 5));
        assert!(a.iter().all(|v| (-1.0..1.0).contains(v)));
        let mean = a.iter().sum::<f32>() / 1000.0;
        assert!(mean.abs() < 0.1, "{mean}");
    }
}
