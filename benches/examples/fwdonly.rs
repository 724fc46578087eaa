use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::VarMap;
use digitlab_models::{build_model, InputShape, MlpConfig, ModelConfig, SeededVarMap};
use std::time::Instant;
fn main() {
    let b: usize = std::env::args().nth(1).unwrap().parse().unwrap();
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
    let x = Tensor::rand(-1f32, 1f32, (b, 1, 28, 28), &Device::Cpu).unwrap();
    for _ in 0..20 {
        m.forward_t(&x, true).unwrap();
    }
    let n = 200;
    let t = Instant::now();
    for _ in 0..n {
        let _ = m.forward_t(&x, true).unwrap();
    }
    println!("b{b} fwd {:.1} us", t.elapsed().as_secs_f64() / n as f64 * 1e6);
}
