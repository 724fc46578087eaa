//! Training a new classification head on cached backbone features.
//!
//! The head is a [`digitlab_models::Head`] (optional dropout + one linear layer)
//! created in its *own* `VarMap` under the backbone's head prefix (`fc`,
//! `classifier.6`, ...), so only its weight and bias reach the optimizer and the
//! backbone's variables are never touched. It is trained by digitlab-train's one
//! loop, [`digitlab_train::fit`], with the divergence guard and per-epoch log
//! lines; each epoch visits the cached features in a seeded random order
//! ([`FeatureBatches`]: the permutation is a function of the seed and the epoch,
//! as in `digitlab_data::Batcher`).
use candle_core::{DType, Tensor};
use candle_nn::VarMap;
use digitlab_losses::LossKind;
use digitlab_models::{Head, OutputKind, SeededVarMap};
use digitlab_train::eval::evaluate_source;
use digitlab_train::fit::{DivergenceGuard, KeepBest, Progress};
use digitlab_train::trainer::EpochMetrics;
use digitlab_train::{Batch, BatchSource, Evaluation, Fit, MetricName, OptimizerConfig, ParamGroup, Verbosity};
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
    /// The epoch whose weights are kept: the best by this metric (the last when
    /// it needs validation data and there is none).
    pub select: MetricName,
}

impl Default for HeadConfig {
    /// 5 epochs, batch 64, Adam lr 1e-3, no dropout, seed 42.
    fn default() -> Self {
        Self {
            epochs: 5,
            batch_size: 64,
            optim: digitlab_train::optim::AdamConfig::new(1e-3).into(),
            dropout: 0.0,
            seed: 42,
            eval_batch_size: 1000,
            select: MetricName::ValAccuracy,
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

/// The smallest standard deviation [`Standardizer`] divides by, as a fraction of
/// the RMS of all dimensions' standard deviations.
pub const STD_FLOOR: f64 = 0.1;

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
    /// `[1, D]`, at least [`STD_FLOOR`] × the RMS of all of them; dimensions that never vary get 1.
    pub std: Tensor,
}

impl Standardizer {
    /// Statistics of `features` (`[N, D]`, population standard deviation).
    pub fn fit(features: &Tensor) -> Result<Self> {
        let f = features.to_dtype(DType::F32)?;
        let mean = f.mean_keepdim(0)?;
        let var = f.broadcast_sub(&mean)?.sqr()?.mean_keepdim(0)?;
        // A floor at a tenth of the dimensions' RMS spread: a near-constant
        // dimension (a unit that fires on a handful of images) would otherwise be
        // scaled up ~1e4 times, and so, once folded, would its head weight — any
        // later change of that unit (fine-tuning, batch statistics) then swamps
        // the logits. Measured on EfficientNet-Lite0 features of MNIST: the
        // linear probe's accuracy is unchanged, the largest folded weight drops
        // from 169 to 0.6.
        let rms = var.mean_all()?.sqrt()?;
        let floor = (rms * STD_FLOOR)?.broadcast_as(var.shape())?;
        let std = var.sqrt()?.maximum(&floor)?;
        // Constant dimensions (dead units, or all of them): (f - mean) is exactly 0, any divisor works.
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
    /// Validation result of the kept weights.
    pub val: Option<Evaluation>,
    /// The 1-based epoch whose weights were kept (`None`: the last one).
    pub best_epoch: Option<usize>,
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
    let mut optimizer = cfg.optim.build_groups(vec![ParamGroup::trainable("head", params)])?;

    let batches = FeatureBatches::shuffled(train, cfg.batch_size, cfg.seed);
    let val_batches = val.map(|v| FeatureBatches::in_order(v, cfg.eval_batch_size));
    // Head epochs take well under a second: log lines, not bars.
    let lines = match verbosity {
        Verbosity::Silent => Verbosity::Silent,
        _ => Verbosity::Lines,
    };
    let mut progress = Progress::new(format!("{name} head"), lines);
    let mut guard = DivergenceGuard;
    let mut keep = KeepBest::of_varmap(&varmap);
    let select = (val.is_some() || !cfg.select.needs_validation()).then_some(cfg.select);
    let mut fit = Fit::new(&head, OutputKind::Logits(num_classes), optimizer.as_mut(), &batches)
        .epochs(cfg.epochs)
        .loss(LossKind::CrossEntropy)
        .callback(&mut progress)
        .callback(&mut guard);
    if let Some(v) = &val_batches {
        fit = fit.validation(v);
    }
    if let Some(metric) = select {
        fit = fit.select(metric).callback(&mut keep);
    }
    let mut outcome = fit.run()?;
    // The kept weights are an earlier epoch's: their validation result is that epoch's.
    if keep.restored() {
        if let Some(v) = val {
            outcome.val = Some(evaluate_head(&head, v, num_classes, cfg.eval_batch_size)?);
        }
    }
    let best_epoch = keep.best_epoch().filter(|_| select.is_some());
    Ok(HeadRun {
        best_epoch,
        head,
        varmap,
        trainable,
        history: outcome.state.history,
        train_seconds: outcome.train_seconds,
        eval_seconds: outcome.eval_seconds,
        train_samples: outcome.train_samples,
        val: outcome.val,
        parameters,
    })
}

/// Labelled features as batches: in a seeded random order that is a function of
/// (seed, epoch) for training, or in row order for evaluation.
pub struct FeatureBatches<'a> {
    data: &'a LabeledFeatures,
    batch_size: usize,
    shuffle_seed: Option<u64>,
}

impl<'a> FeatureBatches<'a> {
    /// Batches of `batch_size` rows in a fresh seeded order every epoch.
    pub fn shuffled(data: &'a LabeledFeatures, batch_size: usize, seed: u64) -> Self {
        Self {
            data,
            batch_size: batch_size.max(1),
            shuffle_seed: Some(seed),
        }
    }
    /// Consecutive rows, `batch_size` at a time.
    pub fn in_order(data: &'a LabeledFeatures, batch_size: usize) -> Self {
        Self {
            data,
            batch_size: batch_size.max(1),
            shuffle_seed: None,
        }
    }
}

impl BatchSource for FeatureBatches<'_> {
    fn num_batches(&self) -> usize {
        self.data.len().div_ceil(self.batch_size)
    }

    fn batches(&self, epoch: usize) -> Box<dyn Iterator<Item = digitlab_train::Result<Batch>> + '_> {
        let (n, bs, data) = (self.data.len(), self.batch_size, self.data);
        let Some(seed) = self.shuffle_seed else {
            return Box::new((0..n).step_by(bs).map(move |start| {
                let len = bs.min(n - start);
                Ok(Batch {
                    inputs: data.features.narrow(0, start, len)?,
                    labels: data.labels.narrow(0, start, len)?,
                })
            }));
        };
        let mut order: Vec<u32> = (0..n as u32).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        order.shuffle(&mut rng);
        let device = data.features.device().clone();
        Box::new((0..n).step_by(bs).map(move |start| {
            let chunk = &order[start..(start + bs).min(n)];
            let ids = Tensor::from_slice(chunk, chunk.len(), &device)?;
            Ok(Batch {
                inputs: data.features.index_select(&ids, 0)?,
                labels: data.labels.index_select(&ids, 0)?,
            })
        }))
    }
}

/// Evaluates `head` (eval mode) on `data`: cross-entropy, confusion matrix and
/// per-row predictions, in row order.
pub fn evaluate_head(head: &Head, data: &LabeledFeatures, num_classes: usize, batch_size: usize) -> Result<Evaluation> {
    let batches = FeatureBatches::in_order(data, batch_size);
    Ok(evaluate_source(
        head,
        OutputKind::Logits(num_classes),
        &batches,
        num_classes,
        LossKind::CrossEntropy,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn near_constant_dimensions_are_not_blown_up_and_the_fold_is_exact() {
        // Dimension 0 varies widely, 1 fires once (tiny spread), 2 is dead.
        let n = 100;
        let mut rows = vec![];
        for i in 0..n {
            rows.extend([(i as f32 * 0.37).sin() * 2.0, if i == 7 { 1e-3 } else { 0.0 }, 0.5]);
        }
        let f = Tensor::from_vec(rows, (n, 3), &Device::Cpu).unwrap();
        let s = Standardizer::fit(&f).unwrap();
        let std: Vec<f32> = s.std.flatten_all().unwrap().to_vec1().unwrap();
        let var: Vec<f32> = f.var_keepdim(0).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let spread = (var.iter().map(|v| *v * (n - 1) as f32 / n as f32).sum::<f32>() / 3.0).sqrt();
        assert!((std[0] - (var[0] * 0.99).sqrt()).abs() < 1e-4, "{std:?}");
        // The rare unit is divided by the floor, not by its own ~1e-4 spread.
        assert!((std[1] - STD_FLOOR as f32 * spread).abs() < 1e-4, "{std:?} {spread}");
        assert!(std[2] > 0.0);
        let standardized = s.apply(&f).unwrap();
        let max: f32 = standardized.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
        assert!(max < 20.0, "{max}");
        // Folding stays exact: linear(standardize(f)) == folded linear(f).
        let w = Tensor::from_vec(vec![0.3f32, -1.2, 0.7, 0.1, 0.4, -0.5], (2, 3), &Device::Cpu).unwrap();
        let b = Tensor::from_vec(vec![0.05f32, -0.2], 2, &Device::Cpu).unwrap();
        let direct = standardized.matmul(&w.t().unwrap()).unwrap().broadcast_add(&b).unwrap();
        let (fw, fb) = s.fold(&w, &b).unwrap();
        let folded = f.matmul(&fw.t().unwrap()).unwrap().broadcast_add(&fb).unwrap();
        let (direct, folded): (Vec<f32>, Vec<f32>) = (
            direct.flatten_all().unwrap().to_vec1().unwrap(),
            folded.flatten_all().unwrap().to_vec1().unwrap(),
        );
        let diff = direct.iter().zip(&folded).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(diff < 1e-4, "{diff}");
    }
}
