//! MLP 784-256-256-128-128-10 training steps (SGD and Adam) at batch 1, 32, 100, 256
//! and evaluation at batch 1000, on synthetic data.
//!
//! `cargo bench -p digitlab-benches --bench mlp_training`
use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::VarMap;
use digitlab_losses::{softmax_cross_entropy, Reduction};
use digitlab_models::{build_model, InputShape, MlpConfig, Model, ModelConfig, SeededVarMap};
use digitlab_train::optim::{AdamConfig, OptimizerConfig, SgdConfig};
use divan::counter::ItemsCount;
use divan::Bencher;

fn main() {
    divan::main();
    digitlab_benches::report_peak_rss("mlp_training");
}

fn mlp() -> (Model, VarMap) {
    let map = VarMap::new();
    let vb = SeededVarMap::var_builder(&map, 0, DType::F32, &Device::Cpu);
    let cfg = ModelConfig::Mlp(MlpConfig {
        hidden: vec![256, 256, 128, 128],
        activation: Default::default(),
        dropout: 0.0,
        batch_norm: false,
    });
    let m = build_model(
        &cfg,
        InputShape {
            channels: 1,
            height: 28,
            width: 28,
        },
        10,
        vb,
    )
    .unwrap();
    (m, map)
}

fn batch(n: usize) -> (Tensor, Tensor) {
    let x = Tensor::rand(-1f32, 1f32, (n, 1, 28, 28), &Device::Cpu).unwrap();
    let y = Tensor::from_vec((0..n as u32).map(|i| i % 10).collect::<Vec<u32>>(), n, &Device::Cpu).unwrap();
    (x, y)
}

fn step_bench(b: Bencher, n: usize, optim: OptimizerConfig) {
    let (model, map) = mlp();
    let params = map
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut opt = optim.build(params).unwrap();
    let (x, y) = batch(n);
    b.counter(ItemsCount::new(n)).bench_local(|| {
        let out = model.forward_t(&x, true).unwrap();
        let loss = softmax_cross_entropy(&out, &y, Reduction::Mean).unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
    });
}

#[divan::bench(args = [1, 32, 100, 256])]
fn train_step_sgd(b: Bencher, n: usize) {
    step_bench(b, n, SgdConfig::new(0.01).into());
}

#[divan::bench(args = [1, 32, 100, 256])]
fn train_step_adam(b: Bencher, n: usize) {
    step_bench(b, n, AdamConfig::new(0.001).into());
}

#[divan::bench]
fn eval_batch_1000(b: Bencher) {
    let (model, _map) = mlp();
    let (x, _) = batch(1000);
    b.counter(ItemsCount::new(1000usize))
        .bench_local(|| model.forward_t(&x, false).unwrap().argmax(1).unwrap());
}
