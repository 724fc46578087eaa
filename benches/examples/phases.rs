use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::VarMap;
use digitlab_losses::{softmax_cross_entropy, Reduction};
use digitlab_models::{build_model, InputShape, MlpConfig, ModelConfig, SeededVarMap};
use digitlab_train::optim::{AdamConfig, OptimizerConfig, SgdConfig};
use std::time::Instant;
fn main() {
    let b: usize = std::env::args().nth(1).unwrap().parse().unwrap();
    let adam = std::env::args().nth(2).is_some();
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
    let params = map
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let oc: OptimizerConfig = if adam {
        AdamConfig::new(1e-3).into()
    } else {
        SgdConfig::new(0.01).into()
    };
    let mut opt = oc.build(params).unwrap();
    let x = Tensor::rand(-1f32, 1f32, (b, 1, 28, 28), &Device::Cpu).unwrap();
    let y = Tensor::from_vec((0..b as u32).map(|i| i % 10).collect::<Vec<u32>>(), b, &Device::Cpu).unwrap();
    let mut t = [0f64; 5];
    let n = 2000 / b.max(1) + 50;
    for i in 0..n {
        let t0 = Instant::now();
        let out = m.forward_t(&x, true).unwrap();
        let t1 = Instant::now();
        let loss = softmax_cross_entropy(&out, &y, Reduction::Mean).unwrap();
        let _ = loss.to_scalar::<f32>().unwrap();
        let t2 = Instant::now();
        let g = loss.backward().unwrap();
        let t3 = Instant::now();
        opt.step(&g).unwrap();
        let t4 = Instant::now();
        drop(g);
        let t5 = Instant::now();
        if i >= 10 {
            t[0] += (t1 - t0).as_secs_f64();
            t[1] += (t2 - t1).as_secs_f64();
            t[2] += (t3 - t2).as_secs_f64();
            t[3] += (t4 - t3).as_secs_f64();
            t[4] += (t5 - t4).as_secs_f64();
        }
    }
    let k = (n - 10) as f64;
    println!(
        "b{b} per step us: fwd {:.1} loss {:.1} bwd {:.1} opt {:.1} drop {:.1}",
        t[0] / k * 1e6,
        t[1] / k * 1e6,
        t[2] / k * 1e6,
        t[3] / k * 1e6,
        t[4] / k * 1e6
    );
}
