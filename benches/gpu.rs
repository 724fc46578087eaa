//! The workloads of `scripts/gpu-check.sh`: digitlab vs PyTorch on the same GPU
//! (`scripts/gpu_reference.py` does the same work under the same names), on any
//! device and in f32 or bf16 (mixed precision: f32 weights, bf16 compute).
//!
//! Same protocol as [`crate::workloads`] ([`crate::workloads::measure`]): every step
//! ends with a read back to the host (the loss, or one feature value), which waits
//! for the GPU, so wall time measures finished work.
use candle_core::{DType, Device, IndexOp, ModuleT, Tensor};
use candle_nn::{VarBuilder, VarMap};
use digitlab_data::{Dataset, ImageShape, Normalization, Pipeline};
use digitlab_finetune::features::extract_features;
use digitlab_finetune::{train_head, HeadConfig, LabeledFeatures};
use digitlab_losses::{softmax_cross_entropy, Reduction};
use digitlab_models::{
    build_model, InputShape, MlpConfig, ModelConfig, Precision, ResNetConfig, SeededVarMap, VggConfig,
};
use digitlab_train::optim::{AdamConfig, OptimizerConfig, SgdConfig};

use crate::workloads::{synthetic, BenchError, Prepared, Result, SyntheticWeights, Workload};

/// SVHN's training split size: the transfer pipeline's synthetic set.
pub const SVHN_TRAIN: usize = 73_257;

/// Every GPU workload, in table order.
pub const GPU_WORKLOADS: &[Workload] = &[
    Workload {
        name: "gpu_mlp_sgd_b100",
        about: "MLP 784-256-256-128-128-10 train step, SGD lr 0.01, batch 100",
        samples_per_step: 100,
    },
    Workload {
        name: "gpu_mlp_sgd_b1024",
        about: "MLP train step, SGD lr 0.01, batch 1024",
        samples_per_step: 1024,
    },
    Workload {
        name: "gpu_lenet5_adam_b256",
        about: "LeNet-5 train step on 3x32x32, Adam lr 1e-3, batch 256",
        samples_per_step: 256,
    },
    Workload {
        name: "gpu_resnet18_feat224_b256",
        about: "ResNet-18 features (eval, frozen), 3x224x224, batch 256",
        samples_per_step: 256,
    },
    Workload {
        name: "gpu_vgg16_feat224_b256",
        about: "VGG-16 features (4096-d, eval, frozen), 3x224x224, batch 256",
        samples_per_step: 256,
    },
    Workload {
        name: "gpu_transfer_svhn",
        about: "frozen-transfer pipeline: 73,257 synthetic 3x32x32 u8 images -> ImageNet normalisation -> frozen ResNet-18 features (batch 256) -> new linear head, 1 epoch Adam batch 256",
        samples_per_step: SVHN_TRAIN,
    },
];

/// Looks a GPU workload up by name.
pub fn gpu_workload(name: &str) -> Result<Workload> {
    GPU_WORKLOADS
        .iter()
        .copied()
        .find(|w| w.name == name)
        .ok_or_else(|| BenchError::UnknownWorkload(name.to_string()))
}

fn images(b: usize, c: usize, side: usize, dev: &Device) -> Result<Tensor> {
    Ok(Tensor::from_vec(
        synthetic(b * c * side * side, 1),
        (b, c, side, side),
        dev,
    )?)
}

fn labels(b: usize, dev: &Device) -> Result<Tensor> {
    Ok(Tensor::from_vec(
        (0..b as u32).map(|i| i % 10).collect::<Vec<u32>>(),
        b,
        dev,
    )?)
}

fn rgb(side: usize) -> InputShape {
    InputShape {
        channels: 3,
        height: side,
        width: side,
    }
}

const RESNET18: ModelConfig = ModelConfig::Resnet(ResNetConfig {
    depth: 18,
    cifar_stem: false,
});

fn train_step(
    cfg: ModelConfig,
    input: InputShape,
    batch: usize,
    optim: OptimizerConfig,
    dev: &Device,
    precision: Precision,
) -> Result<Box<dyn FnMut() -> Result<()>>> {
    let map = VarMap::new();
    let vb = SeededVarMap::var_builder(&map, 0, DType::F32, dev);
    let m = build_model(&cfg, input, 10, vb)?.with_precision(precision);
    let mut opt = optim.build(digitlab_train::trainable_params(&map))?;
    let x = images(batch, input.channels, input.height, dev)?;
    let y = labels(batch, dev)?;
    Ok(Box::new(move || {
        let loss = softmax_cross_entropy(&m.forward_t(&x, true)?, &y, Reduction::Mean)?;
        let _ = loss.to_scalar::<f32>()?;
        opt.step(&loss.backward()?)?;
        Ok(())
    }))
}

fn frozen_backbone(
    cfg: &ModelConfig,
    side: usize,
    dev: &Device,
    precision: Precision,
) -> Result<std::sync::Arc<dyn digitlab_models::Backbone>> {
    let vb = VarBuilder::from_backend(Box::new(SyntheticWeights), DType::F32, dev.clone());
    let m = build_model(cfg, rgb(side), 10, vb)?.with_precision(precision);
    m.backbone()
        .cloned()
        .ok_or_else(|| BenchError::Invalid("model has no backbone".into()))
}

fn features_step(
    cfg: ModelConfig,
    side: usize,
    batch: usize,
    dev: &Device,
    precision: Precision,
) -> Result<Box<dyn FnMut() -> Result<()>>> {
    let b = frozen_backbone(&cfg, side, dev, precision)?;
    let x = images(batch, 3, side, dev)?;
    Ok(Box::new(move || {
        let f = b.features(&x, false)?;
        let _ = f.i((0, 0))?.to_scalar::<f32>()?;
        Ok(())
    }))
}

/// The transfer pipeline through digitlab-finetune's own functions
/// (`extract_features`, `train_head`) on `images` synthetic SVHN-shaped images.
fn transfer_step(images: usize, dev: &Device, precision: Precision) -> Result<Box<dyn FnMut() -> Result<()>>> {
    let shape = ImageShape {
        channels: 3,
        height: 32,
        width: 32,
    };
    let pixels: Vec<u8> = synthetic(images * 3 * 32 * 32, 4)
        .into_iter()
        .map(|v| ((v + 1.0) * 127.5) as u8)
        .collect();
    let ys: Vec<u8> = (0..images).map(|i| (i % 10) as u8).collect();
    let names = (0..10).map(|i| i.to_string()).collect();
    let data = Dataset::new("synthetic-svhn", shape, pixels, ys, names)?;
    let pipeline = Pipeline {
        normalize: Normalization::imagenet(),
        ..Default::default()
    };
    let backbone = frozen_backbone(&RESNET18, 32, dev, precision)?;
    let head_cfg = HeadConfig {
        epochs: 1,
        batch_size: 256,
        eval_batch_size: 4096,
        ..Default::default()
    };
    let dev = dev.clone();
    let err = |e: digitlab_finetune::FinetuneError| BenchError::Invalid(e.to_string());
    Ok(Box::new(move || {
        let bar = indicatif::ProgressBar::hidden();
        let (f, _) = extract_features(backbone.as_ref(), &data, &pipeline, 256, &dev, &bar).map_err(err)?;
        let train = LabeledFeatures::new(f, data.labels()).map_err(err)?;
        let run = train_head(
            &head_cfg,
            "fc",
            10,
            &train,
            None,
            digitlab_train::Verbosity::Silent,
            "bench",
        )
        .map_err(err)?;
        if run.history.is_empty() {
            return Err(BenchError::Invalid("head training ran no epoch".into()));
        }
        Ok(())
    }))
}

/// Prepares GPU workload `name` on `dev` in `precision`. `scale` (0, 1] shrinks the
/// transfer set (for smoke tests on the CPU; 1 on a GPU).
pub fn prepare_gpu(name: &str, dev: &Device, precision: Precision, scale: f64) -> Result<Prepared> {
    let mut workload = gpu_workload(name)?;
    let mlp = ModelConfig::Mlp(MlpConfig {
        hidden: vec![256, 256, 128, 128],
        activation: Default::default(),
        dropout: 0.0,
        batch_norm: false,
    });
    let mnist = InputShape {
        channels: 1,
        height: 28,
        width: 28,
    };
    let sgd = || -> OptimizerConfig { SgdConfig::new(0.01).into() };
    let adam = || -> OptimizerConfig { AdamConfig::new(1e-3).into() };
    let vgg16 = ModelConfig::Vgg(VggConfig {
        depth: 16,
        batch_norm: false,
    });
    let step = match name {
        "gpu_mlp_sgd_b100" => train_step(mlp, mnist, 100, sgd(), dev, precision)?,
        "gpu_mlp_sgd_b1024" => train_step(mlp, mnist, 1024, sgd(), dev, precision)?,
        "gpu_lenet5_adam_b256" => train_step(ModelConfig::Lenet5, rgb(32), 256, adam(), dev, precision)?,
        "gpu_resnet18_feat224_b256" => features_step(RESNET18, 224, 256, dev, precision)?,
        "gpu_vgg16_feat224_b256" => features_step(vgg16, 224, 256, dev, precision)?,
        "gpu_transfer_svhn" => {
            let n = ((SVHN_TRAIN as f64 * scale.clamp(0.0, 1.0)).round() as usize).max(10);
            workload.samples_per_step = n;
            transfer_step(n, dev, precision)?
        }
        other => return Err(BenchError::UnknownWorkload(other.to_string())),
    };
    Ok(Prepared::new(workload, step))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workloads::measure;

    #[test]
    fn gpu_workloads_run_on_the_cpu_in_both_precisions() {
        // The small ones, once each, so the GPU script's code paths are exercised here.
        for name in ["gpu_mlp_sgd_b100", "gpu_transfer_svhn"] {
            for p in [Precision::F32, Precision::Bf16] {
                let mut w = prepare_gpu(name, &Device::Cpu, p, 0.005).unwrap();
                let m = measure(&mut w, 0, 0.0, 1).unwrap();
                assert!(m.samples_per_second > 0.0, "{name} {p}");
            }
        }
        assert!(gpu_workload("nope").is_err());
    }
}
