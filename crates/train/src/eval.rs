//! Evaluation of a model on a dataset: loss, confusion matrix and per-image
//! predictions with confidences.
use crate::metrics::ConfusionMatrix;
use crate::source::BatchSource;
use crate::Result;
use candle_core::{DType, ModuleT, Tensor, D};
use digitlab_data::{Batcher, Dataset, Pipeline};
use digitlab_losses::{LossKind, Reduction};
use digitlab_models::{Model, OutputKind};

/// Results of one pass over a dataset.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// Mean loss per image.
    pub loss: f64,
    pub confusion: ConfusionMatrix,
    /// Predicted class, confidence (probability of the predicted class) and true
    /// label of every image, in dataset order.
    pub predictions: Vec<u32>,
    pub confidence: Vec<f32>,
    pub labels: Vec<u32>,
    /// Probability the model gives each image's true class (its loss for top
    /// losses is `-ln` of it), in dataset order.
    pub true_probability: Vec<f32>,
}

impl Evaluation {
    pub fn accuracy(&self) -> f64 {
        self.confusion.accuracy()
    }
    pub fn macro_f1(&self) -> f64 {
        self.confusion.macro_f1()
    }
    /// Indices of misclassified images, most confident first.
    pub fn most_confident_errors(&self, n: usize) -> Vec<usize> {
        let mut wrong: Vec<usize> = (0..self.labels.len())
            .filter(|&i| self.predictions[i] != self.labels[i])
            .collect();
        wrong.sort_by(|&a, &b| self.confidence[b].total_cmp(&self.confidence[a]));
        wrong.truncate(n);
        wrong
    }
}

/// Applies what a loss expects to the raw model output (sigmoid for `bce`,
/// log-softmax for `nll`; logits otherwise) and computes it.
pub fn compute_loss(kind: LossKind, output: &Tensor, labels: &Tensor, reduction: Reduction) -> Result<Tensor> {
    let input = match kind {
        LossKind::Bce => candle_nn::ops::sigmoid(output)?,
        LossKind::Nll => digitlab_losses::log_softmax(output, D::Minus1)?,
        _ => output.clone(),
    };
    Ok(kind.compute(&input, labels, reduction)?)
}

/// Predicted classes and their probabilities from raw model outputs.
pub fn predict(output_kind: OutputKind, output: &Tensor) -> Result<(Vec<u32>, Vec<f32>)> {
    match output_kind {
        OutputKind::BinaryLogit => {
            let z: Vec<f32> = output.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
            let pred = z.iter().map(|&v| u32::from(v > 0.0)).collect();
            let conf = z.iter().map(|&v| 1.0 / (1.0 + (-v.abs()).exp())).collect();
            Ok((pred, conf))
        }
        OutputKind::Logits(_) => {
            let probs = candle_nn::ops::softmax_last_dim(&output.to_dtype(DType::F32)?)?;
            let pred: Vec<u32> = probs.argmax(D::Minus1)?.to_vec1()?;
            let conf: Vec<f32> = probs.max(D::Minus1)?.to_vec1()?;
            Ok((pred, conf))
        }
    }
}

/// The probability of each example's true class (`labels`) from raw model outputs.
pub fn true_class_probability(output_kind: OutputKind, output: &Tensor, labels: &Tensor) -> Result<Vec<f32>> {
    let labels = labels.to_dtype(DType::U32)?;
    match output_kind {
        OutputKind::BinaryLogit => {
            let z: Vec<f32> = output.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
            let y: Vec<u32> = labels.flatten_all()?.to_vec1()?;
            Ok(z.iter()
                .zip(&y)
                .map(|(&v, &l)| {
                    let p1 = 1.0 / (1.0 + (-v).exp());
                    if l == 1 {
                        p1
                    } else {
                        1.0 - p1
                    }
                })
                .collect())
        }
        OutputKind::Logits(_) => {
            let probs = candle_nn::ops::softmax_last_dim(&output.to_dtype(DType::F32)?)?;
            let idx = labels.flatten_all()?.unsqueeze(1)?;
            Ok(probs.gather(&idx, 1)?.flatten_all()?.to_vec1()?)
        }
    }
}

/// Evaluates `model` (in eval mode) on every image of `data`.
pub fn evaluate(
    model: &Model,
    data: &Dataset,
    pipeline: &Pipeline,
    batch_size: usize,
    loss: LossKind,
    device: &candle_core::Device,
) -> Result<Evaluation> {
    evaluate_batches(model, &Batcher::new(data, pipeline, batch_size, device)?, loss)
}

/// Evaluates `model` on the batches of an (unshuffled) batcher; reuse one batcher
/// across epochs so its cached tensors are converted once.
pub fn evaluate_batches(model: &Model, batcher: &Batcher, loss: LossKind) -> Result<Evaluation> {
    evaluate_source(model, model.output(), batcher, batcher.dataset().num_classes(), loss)
}

/// Evaluates any model (in eval mode) on epoch 0 of `source`: mean `loss` per
/// example, and predictions read as `output` says, over `num_classes` classes.
pub fn evaluate_source<M: ModuleT + ?Sized>(
    model: &M,
    output: OutputKind,
    source: &dyn BatchSource,
    num_classes: usize,
    loss: LossKind,
) -> Result<Evaluation> {
    let mut total_loss = 0.0;
    let mut predictions = Vec::new();
    let mut confidence = Vec::new();
    let mut labels = Vec::new();
    let mut true_probability = Vec::new();
    for batch in source.batches(0) {
        let batch = batch?;
        let out = model.forward_t(&batch.inputs, false)?;
        let l = compute_loss(loss, &out, &batch.labels, Reduction::Sum)?;
        total_loss += l.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let (p, c) = predict(output, &out)?;
        predictions.extend(p);
        confidence.extend(c);
        true_probability.extend(true_class_probability(output, &out, &batch.labels)?);
        labels.extend(batch.labels.to_dtype(DType::U32)?.to_vec1::<u32>()?);
    }
    let confusion = ConfusionMatrix::from_predictions(num_classes, &labels, &predictions);
    Ok(Evaluation {
        loss: total_loss / labels.len().max(1) as f64,
        confusion,
        predictions,
        confidence,
        labels,
        true_probability,
    })
}
