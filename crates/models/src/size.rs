//! How much memory a model would need, estimated from its config alone, so an
//! absurd config (`model.hidden = [1000000000]`, `data.resize = [100000, 100000]`)
//! is refused with the field to blame instead of an allocation abort.
//!
//! The estimate counts f32 parameters exactly for the linear models and MLPs and
//! from torchvision's published counts for the fixed architectures (plus every
//! part that depends on the input size or class count); activations use the sum
//! of the layer widths (MLP) or a per-input-pixel constant measured from the
//! architectures' feature maps (convolutional models). It is a lower bound of the
//! right order of magnitude, never a promise.
use crate::model::{InputShape, ModelConfig};

/// Estimated sizes, in f32 values (not bytes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SizeEstimate {
    /// Trainable parameters.
    pub parameters: f64,
    /// Activations one image keeps alive during a training step (forward outputs
    /// kept for the backward pass).
    pub activations_per_image: f64,
}

/// Size of `cfg` built for `input` and `num_classes` (see the module docs).
pub fn estimate_size(cfg: &ModelConfig, input: InputShape, num_classes: usize) -> SizeEstimate {
    let (c, h, w) = (input.channels as f64, input.height as f64, input.width as f64);
    let features = c * h * w;
    let k = num_classes.max(1) as f64;
    let pixels = h * w;
    match cfg {
        ModelConfig::Logistic => SizeEstimate {
            parameters: features + 1.0,
            activations_per_image: features + 1.0,
        },
        ModelConfig::Softmax => SizeEstimate {
            parameters: (features + 1.0) * k,
            activations_per_image: features + k,
        },
        ModelConfig::Mlp(m) => {
            let mut widths = vec![features];
            widths.extend(m.hidden.iter().map(|&v| v as f64));
            widths.push(k);
            let parameters = widths.windows(2).map(|p| (p[0] + 1.0) * p[1]).sum();
            // Each hidden layer keeps its linear output and activation (and the
            // batch-norm output when enabled).
            let per_hidden = if m.batch_norm { 3.0 } else { 2.0 };
            let hidden: f64 = m.hidden.iter().map(|&v| v as f64).sum();
            SizeEstimate {
                parameters,
                activations_per_image: features + per_hidden * hidden + k,
            }
        }
        ModelConfig::Lenet5 => {
            let pad = if input.height.min(input.width) < 32 { 4.0 } else { 0.0 };
            let side = |n: f64| (((n + pad - 4.0) / 2.0).floor() - 4.0).max(0.0) / 2.0;
            let (fh, fw) = (side(h).floor(), side(w).floor());
            SizeEstimate {
                parameters: 12_706.0 + c * 150.0 + 16.0 * fh * fw * 120.0 + 85.0 * k,
                activations_per_image: features + 14.0 * pixels,
            }
        }
        // torchvision's layout: 2.47 M conv + 54.5 M classifier parameters before the
        // head (the 6x6 adaptive pool fixes the classifier's size).
        ModelConfig::Alexnet => SizeEstimate {
            parameters: 57.0e6 + 4097.0 * k,
            activations_per_image: features + 30.0 * pixels,
        },
        ModelConfig::SmallCnn => SizeEstimate {
            parameters: 287_296.0 + c * 288.0 + 128.0 * (h / 8.0).floor() * (w / 8.0).floor() * 256.0 + 257.0 * k,
            activations_per_image: features + 200.0 * pixels,
        },
        ModelConfig::Resnet(r) => {
            let (body, feature_dim, per_pixel) = match r.depth {
                18 => (11.2e6, 512.0, 60.0),
                34 => (21.3e6, 512.0, 90.0),
                50 => (23.5e6, 2048.0, 230.0),
                _ => (42.5e6, 2048.0, 330.0),
            };
            // The CIFAR stem skips the stride-2 conv and max-pool: 16x the pixels.
            let per_pixel = if r.cifar_stem { per_pixel * 16.0 } else { per_pixel };
            SizeEstimate {
                parameters: body + (feature_dim + 1.0) * k,
                activations_per_image: features + per_pixel * pixels,
            }
        }
        ModelConfig::Vgg(v) => {
            let body = match v.depth {
                11 => 9.2e6,
                13 => 9.4e6,
                16 => 14.7e6,
                _ => 20.0e6,
            };
            let per_pixel = if v.batch_norm { 600.0 } else { 400.0 };
            // Adaptive pooling to 7x7, then 25088 -> 4096 -> 4096 -> classes.
            SizeEstimate {
                parameters: body + 25_088.0 * 4_096.0 + 4_096.0 * 4_096.0 + 4_097.0 * k,
                activations_per_image: features + per_pixel * pixels,
            }
        }
        ModelConfig::EfficientnetLite0 => SizeEstimate {
            parameters: 3.4e6 + 1_281.0 * k,
            activations_per_image: features + 150.0 * pixels,
        },
        // timm's counts without the classifier; eval-only, so activations are one
        // layer's worth (a rough per-pixel constant).
        ModelConfig::Modern(m) => {
            use crate::modern::ModernArch as A;
            let body = match m.arch {
                A::ConvnextTiny => 27.82e6,
                A::VitSmallPatch16 => 21.67e6,
                A::VitBasePatch16 => 85.80e6,
                A::Dinov2Vits14 => 22.06e6,
                A::Dinov2Vitb14 => 86.58e6,
                A::Mobilenetv4ConvSmall => 2.52e6,
                A::TfEfficientnetB0 => 4.05e6,
            };
            SizeEstimate {
                parameters: body + (m.arch.feature_dim() as f64 + 1.0) * k,
                activations_per_image: features + 100.0 * pixels,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{build_model, count_parameters, MlpConfig, SeededVarMap};
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    fn built(cfg: &ModelConfig, input: InputShape, k: usize) -> f64 {
        let varmap = VarMap::new();
        let vb = SeededVarMap::var_builder(&varmap, 0, DType::F32, &Device::Cpu);
        build_model(cfg, input, k, vb).unwrap();
        count_parameters(&varmap) as f64
    }

    #[test]
    fn parameter_estimates_match_built_models() {
        let mnist = InputShape {
            channels: 1,
            height: 28,
            width: 28,
        };
        let svhn = InputShape {
            channels: 3,
            height: 32,
            width: 32,
        };
        let mlp = ModelConfig::Mlp(MlpConfig {
            hidden: vec![256, 128],
            activation: Default::default(),
            dropout: 0.0,
            batch_norm: false,
        });
        for (cfg, input, tolerance) in [
            (ModelConfig::Softmax, mnist, 0.0),
            (ModelConfig::Logistic, mnist, 0.0),
            (mlp, mnist, 0.0),
            (ModelConfig::Lenet5, svhn, 0.05),
            (ModelConfig::SmallCnn, svhn, 0.05),
        ] {
            let k = if cfg == ModelConfig::Logistic { 2 } else { 10 };
            let est = estimate_size(&cfg, input, k).parameters;
            let real = built(&cfg, input, k);
            assert!(
                (est - real).abs() <= tolerance * real,
                "{}: estimated {est}, built {real}",
                cfg.kind()
            );
        }
    }

    #[test]
    fn absurd_sizes_are_estimated_without_overflow() {
        let huge = ModelConfig::Mlp(MlpConfig {
            hidden: vec![100_000, 100_000],
            activation: Default::default(),
            dropout: 0.0,
            batch_norm: false,
        });
        let e = estimate_size(
            &huge,
            InputShape {
                channels: 1,
                height: 100_000,
                width: 100_000,
            },
            10,
        );
        assert!(e.parameters > 1e14 && e.parameters.is_finite(), "{e:?}");
    }
}
