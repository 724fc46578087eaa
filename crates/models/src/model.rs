//! One entry point for every model: a typed [`ModelConfig`] and [`build_model`].
use crate::linear_models::{LogisticRegression, SoftmaxRegression};
use crate::mlp::{Mlp, MlpConfig};
use candle_core::{ModuleT, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};

/// Input image geometry a model is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputShape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl InputShape {
    pub fn features(&self) -> usize {
        self.channels * self.height * self.width
    }
}

/// What a model's output means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// One logit per image, shape `[B]`: p(class 1) = sigmoid(logit).
    BinaryLogit,
    /// One logit per class, shape `[B, K]`.
    Logits(usize),
}

/// Every model digitlab can build, selected by `kind` in a config.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ModelConfig {
    /// Binary logistic regression (needs exactly 2 classes).
    Logistic,
    /// Multinomial logistic (softmax) regression.
    Softmax,
    /// Multi-layer perceptron.
    Mlp(MlpConfig),
}

impl ModelConfig {
    /// Valid `kind` names, for error messages and `--help`.
    pub const KINDS: &'static [&'static str] = &["logistic", "softmax", "mlp"];

    pub fn kind(&self) -> &'static str {
        match self {
            ModelConfig::Logistic => "logistic",
            ModelConfig::Softmax => "softmax",
            ModelConfig::Mlp(_) => "mlp",
        }
    }
}

/// A built model: the network plus what its output means.
pub struct Model {
    net: Box<dyn ModuleT + Send + Sync>,
    output: OutputKind,
    templates: Option<Tensor>,
    kind: &'static str,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("kind", &self.kind).field("output", &self.output).finish()
    }
}

impl Model {
    /// Wraps any candle module (e.g. a custom network) as a digitlab model.
    pub fn from_module(net: Box<dyn ModuleT + Send + Sync>, output: OutputKind, kind: &'static str) -> Self {
        Self { net, output, templates: None, kind }
    }
    pub fn output(&self) -> OutputKind {
        self.output
    }
    pub fn kind(&self) -> &'static str {
        self.kind
    }
    /// For linear models, the weight matrix `[outputs, features]`: one template
    /// image per output, worth plotting.
    pub fn weight_templates(&self) -> Option<&Tensor> {
        self.templates.as_ref()
    }
}

impl ModuleT for Model {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.net.forward_t(xs, train)
    }
}

/// Builds the model described by `cfg` for `input` images and `num_classes` classes,
/// creating its variables through `vb` (use [`crate::SeededVarMap`] for seeded weights).
pub fn build_model(cfg: &ModelConfig, input: InputShape, num_classes: usize, vb: VarBuilder) -> Result<Model> {
    let d = input.features();
    match cfg {
        ModelConfig::Logistic => {
            if num_classes != 2 {
                candle_core::bail!(
                    "model `logistic` is binary but the data has {num_classes} classes; \
                     filter two classes (data.classes = [3, 6]) or use `softmax`"
                )
            }
            let m = LogisticRegression::new(d, vb)?;
            let templates = Some(m.weight().clone());
            Ok(Model { net: Box::new(m), output: OutputKind::BinaryLogit, templates, kind: "logistic" })
        }
        ModelConfig::Softmax => {
            let m = SoftmaxRegression::new(d, num_classes, vb)?;
            let templates = Some(m.weight().clone());
            Ok(Model { net: Box::new(m), output: OutputKind::Logits(num_classes), templates, kind: "softmax" })
        }
        ModelConfig::Mlp(c) => {
            let m = Mlp::new(d, num_classes, c, vb)?;
            Ok(Model { net: Box::new(m), output: OutputKind::Logits(num_classes), templates: None, kind: "mlp" })
        }
    }
}

/// Whether a variable name is a batch-norm running statistic (state, not a parameter).
pub fn is_buffer(name: &str) -> bool {
    name.ends_with("running_mean") || name.ends_with("running_var") || name.ends_with("num_batches_tracked")
}

/// (total, trainable) parameter counts of a `VarMap`, running statistics excluded.
pub fn count_parameters(map: &VarMap) -> usize {
    map.data()
        .lock()
        .expect("varmap lock poisoned")
        .iter()
        .filter(|(name, _)| !is_buffer(name))
        .map(|(_, v)| v.elem_count())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SeededVarMap;
    use candle_core::{DType, Device};

    fn build(cfg: &ModelConfig, classes: usize) -> Result<(Model, VarMap)> {
        let map = VarMap::new();
        let vb = SeededVarMap::var_builder(&map, 0, DType::F32, &Device::Cpu);
        let m = build_model(cfg, InputShape { channels: 1, height: 28, width: 28 }, classes, vb)?;
        Ok((m, map))
    }

    #[test]
    fn shapes_and_parameter_counts() {
        let x = Tensor::zeros((5, 1, 28, 28), DType::F32, &Device::Cpu).unwrap();
        let (m, map) = build(&ModelConfig::Logistic, 2).unwrap();
        assert_eq!(m.forward_t(&x, false).unwrap().dims(), &[5]);
        assert_eq!(count_parameters(&map), 785);
        let (m, map) = build(&ModelConfig::Softmax, 10).unwrap();
        assert_eq!(m.forward_t(&x, false).unwrap().dims(), &[5, 10]);
        assert_eq!(count_parameters(&map), 7850);
        let mlp = ModelConfig::Mlp(MlpConfig { hidden: vec![256, 256, 128, 128], activation: Default::default(), dropout: 0.0, batch_norm: false });
        let (m, map) = build(&mlp, 10).unwrap();
        assert_eq!(m.forward_t(&x, true).unwrap().dims(), &[5, 10]);
        // 784*256+256 + 256*256+256 + 256*128+128 + 128*128+128 + 128*10+10
        assert_eq!(count_parameters(&map), 200_960 + 65_792 + 32_896 + 16_512 + 1_290);
        let bn = ModelConfig::Mlp(MlpConfig { hidden: vec![16], activation: Default::default(), dropout: 0.5, batch_norm: true });
        let (m, map) = build(&bn, 10).unwrap();
        assert_eq!(m.forward_t(&x, true).unwrap().dims(), &[5, 10]);
        assert_eq!(count_parameters(&map), 784 * 16 + 16 + 32 + 16 * 10 + 10);
    }

    #[test]
    fn logistic_needs_two_classes() {
        let e = build(&ModelConfig::Logistic, 10).unwrap_err().to_string();
        assert!(e.contains("binary") && e.contains("10 classes"), "{e}");
    }
}
