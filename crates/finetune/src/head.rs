//! Training a new classification head on cached backbone features.
//!
//! The head is a [`digitlab_models::Head`] (optional dropout + one linear layer)
//! created in its *own* `VarMap` under the backbone's head prefix (`fc`,
//! `classifier.6`, ...), so only its weight and bias reach the optimizer and the
//! backbone's variables are never touched. Training reuses digitlab-train's
//! [`Optimizer`], loss ([`compute_loss`]) and metrics; each epoch visits the cached
//! features in a seeded random order (the permutation is a function of the seed and
//! the epoch, as in `digitlab_data::Batcher`).
use std::time::Instant;

use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::VarMap;
use digitlab_losses::{LossKind, Reduction};
use digitlab_models::{Head, OutputKind, SeededVarMap};
use digitlab_train::eval::{compute_loss, predict};
use digitlab_train::trainer::EpochMetrics;
use digitlab_train::{ConfusionMatrix, Evaluation, Optimizer, OptimizerConfig, TrainError, Verbosity};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::Result;

/// How the head is trained.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub optim: OptimizerConfig,
    /// Dropout before the linear layer during training (0 = none).
    pub dropout: f32,
    /// Seed of the head's initial weights and of the shuffling.
    pub seed: u64,
    /// Batch size of evaluation passes.
    pub eval_batch_size: usize,
}

impl Default for HeadConfig {
    /// 5 epochs, batch 64, Adam lr 1e-3, no dropout, seed 42.
    fn default() -> Self {
        Self {
            epochs: 5,
            batch_size: 64,
            optim: OptimizerConfig::Adam {
                lr: 1e-3,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.0,
            },
            dropout: 0.0,
            seed: 42,
            eval_batch_size: 1000,
        }
    }
}

/// Features `[N, D]` (f32) with their labels.
#[derive(Debug, Clone)]
pub struct LabeledFeatures {
    pub features: Tensor,
    /// `[N]` u32, on the same device.
    pub labels: Tensor,
}

impl LabeledFeatures {
    /// Pairs `features` with u8 `labels` (as a dataset stores them).
    pub fn new(features: Tensor, labels: &[u8]) -> Result<Self> {
        let device = features.device().clone();
        let n = features.dims2()?.0;
        if n != labels.len() {
            return Err(crate::FinetuneError::Config(format!(
                "{n} feature rows but {} labels",
                labels.len()
            )));
        }
        let labels = Tensor::from_vec(labels.iter().map(|&l| l as u32).collect::<Vec<u32>>(), n, &device)?;
        Ok(Self { features, labels })
    }
    pub fn len(&self) -> usize {
        self.features.dims()[0]
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn dim(&self) -> usize {
        self.features.dims()[1]
    }
}

/// Per-dimension standardisation of features, `(f - mean) / std`, with statistics
/// from the training features: the usual linear-probe preprocessing. It makes the
/// head's optimisation independent of the backbone's output scale (a randomly
/// initialised deep network in eval mode can emit features around 1e-3, which a
/// linear head trained with Adam at lr 1e-3 for a few epochs cannot use although
/// they may be linearly informative). Being affine, it folds into the linear head
/// afterwards ([`Standardizer::fold`]).
#[derive(Debug, Clone)]
pub struct Standardizer {
    /// `[1, D]`.
    pub mean: Tensor,
    /// `[1, D]`; dimensions that never vary get 1.
    pub std: Tensor,
}

impl Standardizer {
    /// Statistics of `features` (`[N, D]`, population standard deviation).
    pub fn fit(features: &Tensor) -> Result<Self> {
        let f = features.to_dtype(DType::F32)?;
        let mean = f.mean_keepdim(0)?;
        let var = f.broadcast_sub(&mean)?.sqr()?.mean_keepdim(0)?;
        let std = var.sqrt()?;
        // Constant dimensions (dead units): (f - mean) is exactly 0, any divisor works.
        let constant = std.le(1e-12)?;
        let std = constant.where_cond(&std.ones_like()?, &std)?;
        Ok(Self { mean, std })
    }
    /// `(features - mean) / std`.
    pub fn apply(&self, features: &Tensor) -> Result<Tensor> {
        Ok(features.broadcast_sub(&self.mean)?.broadcast_div(&self.std)?)
    }
    /// [`Standardizer::apply`] on labelled features.
    pub fn apply_to(&self, data: &LabeledFeatures) -> Result<LabeledFeatures> {
        Ok(LabeledFeatures {
            features: self.apply(&data.features)?,
            labels: data.labels.clone(),
        })
    }
    /// The weight and bias of one linear layer equal to `linear(standardize(f))`:
    /// `W' = W / std`, `b' = b - W' mean`.
    pub fn fold(&self, weight: &Tensor, bias: &Tensor) -> Result<(Tensor, Tensor)> {
        let w = weight.broadcast_div(&self.std)?;
        let shift = w.broadcast_mul(&self.mean)?.sum(1)?;
        Ok((w, (bias - shift)?))
    }
}

/// A trained head and its history.
pub struct HeadRun {
    pub head: Head,
    /// The head's variables only (`<prefix>.weight`, `<prefix>.bias`).
    pub varmap: VarMap,
    /// Names of the variables the optimizer updated.
    pub trainable: Vec<String>,
    /// Per epoch: `epoch`, `lr`, `train_loss`, `train_accuracy`, `val_loss`,
    /// `val_accuracy`, `val_macro_f1`, `seconds`, `train_samples_per_second`.
    pub history: Vec<EpochMetrics>,
    /// Seconds in optimisation steps.
    pub train_seconds: f64,
    /// Seconds in evaluation passes (validation every epoch).
    pub eval_seconds: f64,
    /// Feature vectors seen by optimisation steps (N x epochs).
    pub train_samples: u64,
    /// Validation result after the last epoch.
    pub val: Option<Evaluation>,
    /// Trainable parameter count.
    pub parameters: usize,
}

/// Trains a new `num_classes`-way head named `prefix` on `train`, evaluating on
/// `val` after every epoch. `name` labels progress lines.
pub fn train_head(
    cfg: &HeadConfig,
    prefix: &str,
    num_classes: usize,
    train: &LabeledFeatures,
    val: Option<&LabeledFeatures>,
    verbosity: Verbosity,
    name: &str,
) -> Result<HeadRun> {
    if cfg.epochs == 0 || cfg.batch_size == 0 || cfg.eval_batch_size == 0 {
        return Err(crate::FinetuneError::Config(format!(
            "head training needs epochs, batch_size and eval_batch_size >= 1 (got {}, {}, {})",
            cfg.epochs, cfg.batch_size, cfg.eval_batch_size
        )));
    }
    if train.is_empty() {
        return Err(crate::FinetuneError::Config("no training features".into()));
    }
    let device = train.features.device().clone();
    let varmap = VarMap::new();
    let vb = SeededVarMap::var_builder(&varmap, cfg.seed, DType::F32, &device);
    let head = Head::new(train.dim(), num_classes, cfg.dropout, vb.pp(prefix))?;
    let params = digitlab_train::trainable_params(&varmap);
    let trainable: Vec<String> = params.iter().map(|(n, _)| n.clone()).collect();
    let parameters = params.iter().map(|(_, v)| v.elem_count()).sum();
    let mut optimizer = Optimizer::new(cfg.optim.clone(), params);

    let n = train.len();
    let mut history = Vec::with_capacity(cfg.epochs);
    let (mut train_seconds, mut eval_seconds, mut train_samples) = (0.0, 0.0, 0u64);
    let mut val_eval = None;
    for epoch in 0..cfg.epochs {
        let t0 = Instant::now();
        let mut order: Vec<u32> = (0..n as u32).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        order.shuffle(&mut rng);
        let (mut loss_sum, mut correct) = (0.0f64, 0u64);
        for (step, chunk) in order.chunks(cfg.batch_size).enumerate() {
            let ids = Tensor::from_slice(chunk, chunk.len(), &device)?;
            let x = train.features.index_select(&ids, 0)?;
            let y = train.labels.index_select(&ids, 0)?;
            let logits = head.forward_t(&x, true)?;
            let loss = compute_loss(LossKind::CrossEntropy, &logits, &y, Reduction::Mean)?;
            let lv = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if !lv.is_finite() {
                return Err(TrainError::Diverged {
                    epoch: epoch + 1,
                    step: step + 1,
                    loss: lv,
                    lr: optimizer.lr(),
                }
                .into());
            }
            optimizer.step(&loss.backward()?)?;
            let (pred, _) = predict(OutputKind::Logits(num_classes), &logits)?;
            let labels: Vec<u32> = y.to_vec1()?;
            correct += pred.iter().zip(&labels).filter(|(p, l)| p == l).count() as u64;
            loss_sum += lv * chunk.len() as f64;
        }
        let secs = t0.elapsed().as_secs_f64();
        train_seconds += secs;
        train_samples += n as u64;
        let mut m = EpochMetrics::new();
        m.insert("epoch".into(), (epoch + 1) as f64);
        m.insert("lr".into(), optimizer.lr());
        m.insert("train_loss".into(), loss_sum / n as f64);
        m.insert("train_accuracy".into(), correct as f64 / n as f64);
        if let Some(v) = val {
            let t1 = Instant::now();
            let e = evaluate_head(&head, v, num_classes, cfg.eval_batch_size)?;
            eval_seconds += t1.elapsed().as_secs_f64();
            m.insert("val_loss".into(), e.loss);
            m.insert("val_accuracy".into(), e.accuracy());
            m.insert("val_macro_f1".into(), e.macro_f1());
            val_eval = Some(e);
        }
        m.insert("seconds".into(), t0.elapsed().as_secs_f64());
        m.insert("train_samples_per_second".into(), n as f64 / secs.max(1e-9));
        if verbosity != Verbosity::Silent {
            let mut line = format!(
                "{name} head epoch {}/{} train loss {:.4} acc {:.4}",
                epoch + 1,
                cfg.epochs,
                m["train_loss"],
                m["train_accuracy"]
            );
            if let (Some(l), Some(a)) = (m.get("val_loss"), m.get("val_accuracy")) {
                line += &format!(" | val loss {l:.4} acc {a:.4}");
            }
            eprintln!("{line} | {:.2}s", m["seconds"]);
        }
        history.push(m);
    }
    Ok(HeadRun {
        head,
        varmap,
        trainable,
        history,
        train_seconds,
        eval_seconds,
        train_samples,
        val: val_eval,
        parameters,
    })
}

/// Evaluates `head` (eval mode) on `data`: cross-entropy, confusion matrix and
/// per-row predictions, in row order.
pub fn evaluate_head(head: &Head, data: &LabeledFeatures, num_classes: usize, batch_size: usize) -> Result<Evaluation> {
    let n = data.len();
    let mut total_loss = 0.0;
    let mut predictions = Vec::with_capacity(n);
    let mut confidence = Vec::with_capacity(n);
    let mut start = 0;
    while start < n {
        let len = batch_size.max(1).min(n - start);
        let x = data.features.narrow(0, start, len)?;
        let y = data.labels.narrow(0, start, len)?;
        let logits = head.forward_t(&x, false)?;
        let l = compute_loss(LossKind::CrossEntropy, &logits, &y, Reduction::Sum)?;
        total_loss += l.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let (p, c) = predict(OutputKind::Logits(num_classes), &logits)?;
        predictions.extend(p);
        confidence.extend(c);
        start += len;
    }
    let labels: Vec<u32> = data.labels.to_device(&Device::Cpu)?.to_vec1()?;
    let confusion = ConfusionMatrix::from_predictions(num_classes, &labels, &predictions);
    Ok(Evaluation {
        loss: total_loss / n.max(1) as f64,
        confusion,
        predictions,
        confidence,
        labels,
    })
}
