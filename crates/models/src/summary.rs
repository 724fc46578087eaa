//! A torchinfo-style summary of a built model: every layer with parameters, in the
//! order the forward pass runs it, with its output shape, parameter count and
//! multiply-accumulates (MACs) per image, from a real forward pass.
//!
//! candle has no forward hooks, so the layers of this crate report themselves: each
//! convolution, linear layer and batch norm calls [`record`] after computing its
//! output. The recorder is a per-thread list that exists only while [`summarize`]
//! runs on that thread; everywhere else `record` finds none and does nothing (one
//! thread-local read per layer). Layers are named by their weight's variable name in
//! the `VarMap` (`layer1.0.conv1`), which is also the torchvision / timm module name.
//!
//! MACs count what fvcore and torchinfo count for convolutions and linear layers:
//! one per weight element per output position (`out_elems * in_channels/groups *
//! kh * kw` for a convolution, `out_features * in_features` for a linear layer),
//! biases, batch norm, activations and pooling excluded. ResNet-18 at 224 px gives
//! 1.814 G, as both tools report.
//!
//! The pass runs on an empty batch (`[0, C, H, W]`): every shape is computed and no
//! arithmetic is done, so even VGG-19 at 224 px takes no time; shapes are shown for
//! a batch of one. [`zeros_var_builder`] builds a model to summarise without drawing
//! random weights.
//!
//! Parameter-free operations (ReLU, pooling, flatten, residual additions) are not
//! rows; their effect shows in the next row's output shape.
use crate::model::{is_buffer, InputShape, Model};
use candle_core::{DType, Device, ModuleT, Result, Shape, Tensor, TensorId};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use std::cell::RefCell;
use std::collections::HashMap;

/// One layer with parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerSummary {
    /// Module name (the variable-name prefix: `conv1`, `layer1.0.bn2`, `fc`).
    pub name: String,
    /// `Conv2d`, `Linear`, `BatchNorm2d`, ...
    pub kind: &'static str,
    /// Output shape for a batch of one, `[1, C, H, W]` or `[1, D]`.
    pub output: Vec<usize>,
    /// Parameters (running statistics excluded).
    pub parameters: usize,
    /// Whether the caller's predicate called the layer's parameters trainable.
    pub trainable: bool,
    /// Multiply-accumulates for one image (see the module docs).
    pub macs: u64,
}

/// The whole table and its totals.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSummary {
    pub input: InputShape,
    /// The model's output for a batch of one (the pass itself runs on an empty batch).
    pub output: Vec<usize>,
    pub layers: Vec<LayerSummary>,
    /// Every parameter of the `VarMap`, running statistics excluded.
    pub parameters: usize,
    /// The trainable part of [`ModelSummary::parameters`].
    pub trainable: usize,
    /// Sum of the layers' MACs.
    pub macs: u64,
    /// Buffers (batch-norm running statistics), in values.
    pub buffers: usize,
}

struct Call {
    kind: &'static str,
    key: TensorId,
    output: Vec<usize>,
    macs: u64,
}

thread_local! {
    static TRACE: RefCell<Option<Vec<Call>>> = const { RefCell::new(None) };
}

/// Notes that a layer whose variable `key` (its weight, or a batch norm's running
/// mean) produced `output`, with `macs_per_output` multiply-accumulates per output
/// element. Does nothing outside [`summarize`].
pub(crate) fn record(kind: &'static str, key: &Tensor, output: &Tensor, macs_per_output: usize) {
    TRACE.with(|t| {
        if let Some(calls) = t.borrow_mut().as_mut() {
            let mut shape = output.dims().to_vec();
            if let Some(batch) = shape.first_mut() {
                *batch = 1;
            }
            calls.push(Call {
                kind,
                key: key.id(),
                output: shape,
                // Per image: the pass may run on an empty batch.
                macs: (output.dims().iter().skip(1).product::<usize>() as u64).saturating_mul(macs_per_output as u64),
            });
        }
    });
}

/// [`record`] for a convolution with weight `[O, I/groups, kh, kw]`.
pub(crate) fn record_conv(kind: &'static str, weight: &Tensor, output: &Tensor) {
    let per_output = weight.dims().iter().skip(1).product();
    record(kind, weight, output, per_output);
}

/// [`record`] for a linear layer with weight `[out, in]`.
pub(crate) fn record_linear(weight: &Tensor, output: &Tensor) {
    record("Linear", weight, output, weight.dims().get(1).copied().unwrap_or(0));
}

/// [`record`] for a batch norm (no MACs counted).
pub(crate) fn record_batch_norm(bn: &candle_nn::BatchNorm, output: &Tensor) {
    let kind = if output.rank() == 4 {
        "BatchNorm2d"
    } else {
        "BatchNorm1d"
    };
    record(kind, bn.running_mean(), output, 0);
}

/// Every variable created in `varmap` as zeros: a model to count and trace, built
/// in the time it takes to allocate its weights.
pub fn zeros_var_builder(varmap: &VarMap, device: &Device) -> VarBuilder<'static> {
    VarBuilder::from_backend(Box::new(Zeros(varmap.clone())), DType::F32, device.clone())
}

struct Zeros(VarMap);

impl SimpleBackend for Zeros {
    fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        self.0.get(s, name, Init::Const(0.0), dtype, dev)
    }
    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        SimpleBackend::get_unchecked(&self.0, name, dtype, dev)
    }
    fn contains_tensor(&self, name: &str) -> bool {
        self.0.data().lock().expect("varmap lock poisoned").contains_key(name)
    }
}

/// Removes the recorder even when the forward pass fails or panics.
struct Recording;

impl Recording {
    fn start() -> Self {
        TRACE.with(|t| *t.borrow_mut() = Some(Vec::new()));
        Recording
    }
    fn take(self) -> Vec<Call> {
        TRACE.with(|t| t.borrow_mut().take()).unwrap_or_default()
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        TRACE.with(|t| t.borrow_mut().take());
    }
}

/// Runs `model` (built into `varmap` for `input`) in eval mode on an empty batch and
/// returns its layer table. `trainable(name)` says whether the variable `name` is
/// trained (`|_| true` for a model trained from scratch).
pub fn summarize(
    model: &Model,
    varmap: &VarMap,
    input: InputShape,
    trainable: &dyn Fn(&str) -> bool,
) -> Result<ModelSummary> {
    let vars: Vec<(String, Tensor)> = {
        let data = varmap.data().lock().expect("varmap lock poisoned");
        data.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect()
    };
    let device = vars.first().map(|(_, t)| t.device().clone()).unwrap_or(Device::Cpu);
    let x = Tensor::zeros((0, input.channels, input.height, input.width), DType::F32, &device)?;
    let recording = Recording::start();
    let out = model.forward_t(&x, false)?;
    let calls = recording.take();

    let by_id: HashMap<TensorId, &str> = vars.iter().map(|(n, t)| (t.id(), n.as_str())).collect();
    let mut layers = Vec::with_capacity(calls.len());
    for call in calls {
        let Some(var) = by_id.get(&call.key) else {
            candle_core::bail!("summary: a {} layer's weight is not in the model's VarMap", call.kind)
        };
        let name = var.rsplit_once('.').map_or(*var, |(prefix, _)| prefix).to_string();
        let own = |n: &str| {
            n.strip_prefix(name.as_str())
                .is_some_and(|r| r.matches('.').count() == 1 && r.starts_with('.'))
        };
        let params: Vec<&(String, Tensor)> = vars.iter().filter(|(n, _)| own(n) && !is_buffer(n)).collect();
        layers.push(LayerSummary {
            trainable: !params.is_empty() && params.iter().all(|(n, _)| trainable(n)),
            parameters: params.iter().map(|(_, t)| t.elem_count()).sum(),
            name,
            kind: call.kind,
            output: call.output,
            macs: call.macs,
        });
    }
    let params = vars.iter().filter(|(n, _)| !is_buffer(n));
    Ok(ModelSummary {
        input,
        output: std::iter::once(1).chain(out.dims().iter().skip(1).copied()).collect(),
        parameters: params.clone().map(|(_, t)| t.elem_count()).sum(),
        trainable: params.filter(|(n, _)| trainable(n)).map(|(_, t)| t.elem_count()).sum(),
        macs: layers.iter().map(|l| l.macs).sum(),
        buffers: vars
            .iter()
            .filter(|(n, _)| is_buffer(n))
            .map(|(_, t)| t.elem_count())
            .sum(),
        layers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{build_model, count_parameters, ModelConfig, ResNetConfig, SeededVarMap};

    fn summary(cfg: &ModelConfig, input: InputShape, k: usize) -> (ModelSummary, usize) {
        let varmap = VarMap::new();
        let vb = SeededVarMap::var_builder(&varmap, 0, DType::F32, &Device::Cpu);
        let model = build_model(cfg, input, k, vb).unwrap();
        (
            summarize(&model, &varmap, input, &|_| true).unwrap(),
            count_parameters(&varmap),
        )
    }

    #[test]
    fn lenet_rows_shapes_and_macs() {
        let input = InputShape {
            channels: 1,
            height: 28,
            width: 28,
        };
        let (s, total) = summary(&ModelConfig::Lenet5, input, 10);
        let names: Vec<&str> = s.layers.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "features.0",
                "features.3",
                "classifier.0",
                "classifier.2",
                "classifier.4"
            ]
        );
        // conv1 pads 28 px to 32: 6 x 28 x 28 outputs of 25 taps each.
        assert_eq!(s.layers[0].output, [1, 6, 28, 28]);
        assert_eq!(s.layers[0].macs, 6 * 28 * 28 * 25);
        assert_eq!(s.layers[0].parameters, 6 * 25 + 6);
        assert_eq!(s.layers[4].output, [1, 10]);
        assert_eq!(s.layers[4].macs, 84 * 10);
        assert_eq!(s.output, [1, 10]);
        assert_eq!(s.parameters, total);
        assert_eq!(s.layers.iter().map(|l| l.parameters).sum::<usize>(), total);
        assert_eq!(s.buffers, 0);
    }

    #[test]
    fn every_parameter_belongs_to_a_row_and_the_recorder_is_gone_afterwards() {
        let input = InputShape {
            channels: 3,
            height: 32,
            width: 32,
        };
        let cfg = ModelConfig::Resnet(ResNetConfig {
            depth: 18,
            cifar_stem: true,
        });
        let (s, total) = summary(&cfg, input, 10);
        assert_eq!(s.layers.iter().map(|l| l.parameters).sum::<usize>(), total);
        assert!(s.buffers > 0);
        assert_eq!(s.layers[0].name, "conv1");
        assert_eq!(s.layers[0].output, [1, 64, 32, 32]);
        assert_eq!(s.layers.last().unwrap().name, "fc");
        let frozen = {
            let varmap = VarMap::new();
            let vb = SeededVarMap::var_builder(&varmap, 0, DType::F32, &Device::Cpu);
            let model = build_model(&cfg, input, 10, vb).unwrap();
            summarize(&model, &varmap, input, &|n| n.starts_with("fc.")).unwrap()
        };
        assert_eq!(frozen.trainable, 512 * 10 + 10);
        assert!(frozen.layers.iter().all(|l| l.trainable == (l.name == "fc")));
        TRACE.with(|t| assert!(t.borrow().is_none()));
    }
}
