//! Topic 7: online vs minibatch vs full-batch gradients, through the real trainer.
//!
//! A minibatch gradient `g_B` (mean over `B` examples) is an unbiased estimate of the
//! full gradient `g`. Drawing the `B` examples without replacement from `N` (what an
//! epoch of shuffled minibatches does), its mean squared error is
//!
//! ```text
//! E‖g_B - g‖² = (σ² / B) · (N - B)/(N - 1),      σ² = (1/N) Σ_i ‖g_i - g‖²
//! ```
//!
//! (`σ²/B` with replacement): the noise falls like `1/B`, and vanishes at `B = N`.
//! Online learning (`B = 1`) takes `N` noisy steps per epoch, full batch one exact step.
//!
//! What is measured, on the 3-vs-6 logistic model of `digitlab-models` with the
//! trainer's own batching (`Batcher::training`, shuffled each epoch) and loss code
//! (`eval::compute_loss`, BCE on logits), gradients by candle autograd:
//!
//! * at the initial (zero) weights and after training with `digitlab_train::train`
//!   (SGD, batch 16, 5 epochs): `E‖g_B - g‖²` averaged over whole shuffled epochs (at
//!   least 256 minibatches per size `B`), against the formula with `σ²` from the `N`
//!   per-example gradients;
//! * training curves of the trainer with `B = 1` (online), `B = 16` and full batch at
//!   the same learning rate and number of epochs (loss on the whole training set at the
//!   end of each epoch).
use crate::data::{TheoryConfig, TheoryData};
use crate::error::{Result, TheoryError};
use crate::result::{num, plot_path, Plot, Table, TopicResult, Verdict};
use crate::Topic;
use candle_core::{DType, Device, ModuleT, Tensor, Var};
use candle_nn::VarMap;
use digitlab_data::{Batcher, Dataset, Pipeline};
use digitlab_losses::{LossKind, Reduction};
use digitlab_models::{build_model, InputShape, Model, ModelConfig, SeededVarMap};
use digitlab_report::plots::{line_chart, Series};
use digitlab_train::eval::compute_loss;
use digitlab_train::{train, ExperimentConfig, PreparedData, RunOptions};
use std::path::Path;
use std::time::Instant;

/// Minibatches measured per batch size, at least (whole shuffled epochs are used).
pub const MIN_BATCHES: usize = 256;

/// Noise of one batch size.
#[derive(Debug, Clone)]
pub struct NoiseRow {
    pub batch: usize,
    /// Minibatches measured.
    pub samples: usize,
    /// Mean of `‖g_B - g‖²`.
    pub mean_sq_dev: f64,
    /// `σ²/B · (N-B)/(N-1)`.
    pub theory: f64,
    /// `σ²/B`.
    pub theory_with_replacement: f64,
    /// Mean cosine between `g_B` and `g`.
    pub mean_cosine: f64,
}

/// Noise vs batch size at one point in weight space.
#[derive(Debug, Clone)]
pub struct NoiseCurve {
    pub point: String,
    pub full_grad_norm: f64,
    /// `σ² = (1/N) Σ ‖g_i - g‖²`.
    pub per_example_variance: f64,
    pub rows: Vec<NoiseRow>,
    /// Least-squares slope of `log(noise · (N-1)/(N-B))` against `log B` (theory: -1).
    pub slope: f64,
}

impl NoiseCurve {
    /// Largest `|measured / theory - 1|`.
    pub fn worst_ratio_error(&self) -> f64 {
        self.rows
            .iter()
            .map(|r| (r.mean_sq_dev / r.theory - 1.0).abs())
            .fold(0.0, f64::max)
    }
}

/// A training run of the trainer.
#[derive(Debug, Clone)]
pub struct TrainingCurve {
    /// Batch size (the data size for full batch).
    pub batch: usize,
    pub label: String,
    pub steps_per_epoch: usize,
    /// `(epoch, loss on the whole training set)`, from epoch 0 (initial weights).
    pub loss: Vec<(f64, f64)>,
    pub seconds: f64,
}

/// Everything topic 7 measured.
#[derive(Debug, Clone)]
pub struct MinibatchResult {
    pub problem: String,
    pub n: usize,
    pub lr: f64,
    pub noise: Vec<NoiseCurve>,
    pub training: Vec<TrainingCurve>,
}

fn experiment(batch: usize, lr: f64, epochs: usize, seed: u64, mnist: bool) -> Result<ExperimentConfig> {
    let text = format!(
        r#"
name = "theory-minibatch-b{batch}"
seed = {seed}
[data]
dataset = "{}"
classes = [3, 6]
val_fraction = 0.0
[model]
kind = "logistic"
[optim]
kind = "sgd"
lr = {lr:e}
[train]
epochs = {epochs}
batch_size = {batch}
loss = "bce_with_logits"
select_metric = "train_loss"
checkpoints = false
"#,
        if mnist { "mnist" } else { "digits" }
    );
    Ok(ExperimentConfig::from_toml_str(&text, &[])?)
}

/// The trainable variables of a logistic model, weight then bias.
fn params(varmap: &VarMap) -> Result<Vec<Var>> {
    let data = varmap.data().lock().expect("varmap lock");
    ["linear.weight", "linear.bias"]
        .iter()
        .map(|n| {
            data.get(*n)
                .cloned()
                .ok_or_else(|| TheoryError::invalid(format!("logistic model has no `{n}`")))
        })
        .collect()
}

/// Mean-loss gradient of `model` on one batch, flattened to f64 (weight, then bias).
fn gradient(model: &Model, vars: &[Var], images: &Tensor, labels: &Tensor) -> Result<Vec<f64>> {
    let out = model.forward_t(images, false)?;
    let loss = compute_loss(LossKind::BceWithLogits, &out, labels, Reduction::Mean)?;
    let grads = loss.backward()?;
    let mut g = Vec::new();
    for v in vars {
        let t = grads
            .get(v.as_tensor())
            .ok_or_else(|| TheoryError::invalid("no gradient for a parameter"))?;
        g.extend(t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?);
    }
    Ok(g)
}

fn sq_dist(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum()
}

/// Gradient noise vs batch size for `model` on `data`.
pub fn noise_curve(
    point: &str,
    model: &Model,
    varmap: &VarMap,
    data: &Dataset,
    sizes: &[usize],
    seed: u64,
) -> Result<NoiseCurve> {
    let dev = Device::Cpu;
    let pipeline = Pipeline::default();
    let vars = params(varmap)?;
    let n = data.len();
    let full = Batcher::new(data, &pipeline, n, &dev)?;
    let (x, y) = full.all()?;
    let g = gradient(model, &vars, &x, &y)?;
    let mut sigma2 = 0.0;
    for batch in Batcher::new(data, &pipeline, 1, &dev)?.epoch(0) {
        let b = batch?;
        sigma2 += sq_dist(&gradient(model, &vars, &b.images, &b.labels)?, &g);
    }
    sigma2 /= n as f64;
    let gnorm = crate::linalg::norm(&g);
    let mut rows = Vec::new();
    for &bs in sizes {
        let batcher = Batcher::new(data, &pipeline, bs, &dev)?.training(seed.wrapping_add(bs as u64));
        let (mut sum, mut cos, mut count) = (0.0, 0.0, 0usize);
        // Whole epochs only, until at least MIN_BATCHES batches: every example is used
        // equally often, which matters when a few examples carry most of sigma² (after
        // training, the misclassified ones); for B = 1 one epoch gives sigma² exactly.
        for epoch in 0.. {
            for batch in batcher.epoch(epoch) {
                let b = batch?;
                if b.indices.len() != bs {
                    continue;
                }
                let gb = gradient(model, &vars, &b.images, &b.labels)?;
                sum += sq_dist(&gb, &g);
                let nb = crate::linalg::norm(&gb);
                cos += if nb > 0.0 && gnorm > 0.0 {
                    crate::linalg::dot(&gb, &g) / (nb * gnorm)
                } else {
                    0.0
                };
                count += 1;
            }
            if count >= MIN_BATCHES {
                break;
            }
        }
        let with_repl = sigma2 / bs as f64;
        rows.push(NoiseRow {
            batch: bs,
            samples: count,
            mean_sq_dev: sum / count as f64,
            theory: with_repl * (n - bs) as f64 / (n - 1) as f64,
            theory_with_replacement: with_repl,
            mean_cosine: cos / count as f64,
        });
    }
    let pts: Vec<(f64, f64)> = rows
        .iter()
        .map(|r| {
            (
                (r.batch as f64).ln(),
                (r.mean_sq_dev * (n - 1) as f64 / (n - r.batch) as f64).ln(),
            )
        })
        .collect();
    let mx = pts.iter().map(|p| p.0).sum::<f64>() / pts.len() as f64;
    let my = pts.iter().map(|p| p.1).sum::<f64>() / pts.len() as f64;
    let slope =
        pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum::<f64>() / pts.iter().map(|p| (p.0 - mx).powi(2)).sum::<f64>();
    Ok(NoiseCurve {
        point: point.to_string(),
        full_grad_norm: gnorm,
        per_example_variance: sigma2,
        rows,
        slope,
    })
}

/// Runs topic 7.
pub fn run(data: &TheoryData, cfg: &TheoryConfig) -> Result<MinibatchResult> {
    let ds = &data.binary;
    let n = ds.len();
    let shape = ds.shape();
    let input = InputShape {
        channels: shape.channels,
        height: shape.height,
        width: shape.width,
    };
    // A safe SGD step for the mean BCE: 1 / (¼ λmax(X̃ᵀX̃/N)).
    let lr = 4.0 / data.problem.gram_max_eigenvalue();
    let epochs = 5;
    let sizes: Vec<usize> = (0..).map(|k| 1usize << k).take_while(|&b| b <= n / 2).collect();

    let init_map = VarMap::new();
    let init_model = build_model(
        &ModelConfig::Logistic,
        input,
        2,
        SeededVarMap::var_builder(&init_map, cfg.seed, DType::F32, &Device::Cpu),
    )?;
    let mut noise = vec![noise_curve(
        "initial weights (zero)",
        &init_model,
        &init_map,
        ds,
        &sizes,
        cfg.seed,
    )?];

    let prepared = PreparedData {
        train: ds.clone(),
        val: Some(ds.clone()),
        test: None,
    };
    let opts = RunOptions::default();
    let init_loss = std::f64::consts::LN_2; // zero weights: σ = 1/2 for every image
    let mut training = Vec::new();
    let mut trained = None;
    for (bs, label) in [
        (1usize, "online (B = 1)".to_string()),
        (16, "minibatch (B = 16)".into()),
        (0, format!("full batch (B = {n})")),
    ] {
        let exp = experiment(bs, lr, epochs, cfg.seed, data.is_mnist)?;
        let t0 = Instant::now();
        let run = train(&exp, &prepared, &opts)?;
        let seconds = t0.elapsed().as_secs_f64();
        let mut loss = vec![(0.0, init_loss)];
        for h in &run.history {
            let v = h
                .get("val_loss")
                .copied()
                .ok_or_else(|| TheoryError::invalid("trainer history has no val_loss"))?;
            loss.push((h["epoch"], v));
        }
        let effective = if bs == 0 { n } else { bs };
        training.push(TrainingCurve {
            batch: effective,
            label,
            steps_per_epoch: n.div_ceil(effective),
            loss,
            seconds,
        });
        if bs == 16 {
            trained = Some(run);
        }
    }
    let run = trained.expect("batch 16 was trained");
    noise.push(noise_curve(
        &format!("after {epochs} epochs of SGD, batch 16"),
        &run.model,
        &run.varmap,
        ds,
        &sizes,
        cfg.seed.wrapping_add(1),
    )?);
    Ok(MinibatchResult {
        problem: data.problem.name.clone(),
        n,
        lr,
        noise,
        training,
    })
}

impl TopicResult for MinibatchResult {
    fn verdict(&self) -> Verdict {
        let worst = self.noise.iter().map(|c| c.worst_ratio_error()).fold(0.0, f64::max);
        let slopes_ok = self.noise.iter().all(|c| (c.slope + 1.0).abs() < 0.15);
        let final_loss = |i: usize| self.training[i].loss.last().map(|p| p.1).unwrap_or(f64::NAN);
        let holds = worst < 0.25 && slopes_ok;
        let mut evidence = Vec::new();
        for c in &self.noise {
            evidence.push(format!(
                "{} ({}): sigma² = {}, ||g|| = {}; measured E||g_B - g||² over whole epochs (at least {} minibatches \
                 per size) is within {:.1}% of sigma²/B·(N-B)/(N-1) for B = {}..{}; log-log slope {} (theory -1); mean cos(g_B, g) rises from {} \
                 (B = 1) to {}.",
                self.problem,
                c.point,
                num(c.per_example_variance),
                num(c.full_grad_norm),
                MIN_BATCHES,
                100.0 * c.worst_ratio_error(),
                c.rows.first().map(|r| r.batch).unwrap_or(0),
                c.rows.last().map(|r| r.batch).unwrap_or(0),
                num(c.slope),
                num(c.rows.first().map(|r| r.mean_cosine).unwrap_or(f64::NAN)),
                num(c.rows.last().map(|r| r.mean_cosine).unwrap_or(f64::NAN))
            ));
        }
        evidence.push(format!(
            "The trainer, same step {} and {} epochs: online ends at loss {} after {} updates, batch 16 at {} after {}, \
             full batch at {} after {}: per epoch, more (noisier) steps make more progress.",
            num(self.lr),
            self.training[0].loss.len() - 1,
            num(final_loss(0)),
            self.training[0].steps_per_epoch * (self.training[0].loss.len() - 1),
            num(final_loss(1)),
            self.training[1].steps_per_epoch * (self.training[1].loss.len() - 1),
            num(final_loss(2)),
            self.training[2].steps_per_epoch * (self.training[2].loss.len() - 1)
        ));
        if !holds {
            evidence.push("FAILED check: measured noise departs from sigma²/B·(N-B)/(N-1) by more than 25% or the slope is not -1".into());
        }
        Verdict {
            holds,
            answer:
                "The minibatch gradient is unbiased and its mean squared error is sigma²/B·(N-B)/(N-1): noise falls \
                     like 1/B (online learning is the noisiest, full batch exact). Measured through the trainer's own \
                     batching it matches the formula within sampling error."
                    .into(),
            evidence,
        }
    }

    fn tables(&self) -> Vec<Table> {
        let mut tables = Vec::new();
        for c in &self.noise {
            let mut t = Table::new(
                format!(
                    "Gradient noise vs batch size at {} ({}, N = {})",
                    c.point, self.problem, self.n
                ),
                &[
                    "B",
                    "minibatches",
                    "E||g_B - g||² measured",
                    "sigma²/B·(N-B)/(N-1)",
                    "measured / theory",
                    "sigma²/B (with replacement)",
                    "mean cos(g_B, g)",
                ],
            );
            for r in &c.rows {
                t.push(vec![
                    r.batch.to_string(),
                    r.samples.to_string(),
                    num(r.mean_sq_dev),
                    num(r.theory),
                    num(r.mean_sq_dev / r.theory),
                    num(r.theory_with_replacement),
                    num(r.mean_cosine),
                ]);
            }
            tables.push(t);
        }
        let mut t = Table::new(
            format!(
                "The trainer (SGD, step {}): loss on the whole training set after each epoch",
                num(self.lr)
            ),
            &[
                "batches",
                "updates per epoch",
                "epoch 0",
                "epoch 1",
                "epoch 2",
                "epoch 3",
                "epoch 4",
                "epoch 5",
                "seconds",
            ],
        );
        for c in &self.training {
            let mut row = vec![c.label.clone(), c.steps_per_epoch.to_string()];
            row.extend((0..=5).map(|e| c.loss.get(e).map(|p| num(p.1)).unwrap_or_else(|| "-".into())));
            row.push(format!("{:.2}", c.seconds));
            t.push(row);
        }
        tables.push(t);
        tables
    }

    fn write_plots(&self, dir: &Path) -> Result<Vec<Plot>> {
        let mut curves = Vec::new();
        let mut names = Vec::new();
        for c in &self.noise {
            curves.push(
                c.rows
                    .iter()
                    .map(|r| ((r.batch as f64).log10(), r.mean_sq_dev.log10()))
                    .collect::<Vec<_>>(),
            );
            names.push(format!("measured, {}", c.point));
            curves.push(
                c.rows
                    .iter()
                    .map(|r| ((r.batch as f64).log10(), r.theory.log10()))
                    .collect::<Vec<_>>(),
            );
            names.push(format!("sigma²/B·(N-B)/(N-1), {}", c.point));
        }
        let series: Vec<Series> = curves
            .iter()
            .zip(&names)
            .map(|(c, n)| Series { label: n, points: c })
            .collect();
        let (path, file) = plot_path(dir, Topic::Minibatch, "gradient_noise");
        line_chart(
            &path,
            &format!("Minibatch gradient noise, {}", self.problem),
            "log10 batch size B",
            "log10 E||g_B - g||²",
            &series,
        )?;
        let mut plots = vec![Plot {
            file,
            caption:
                "Mean squared distance of minibatch gradients from the full gradient (trainer's shuffled batches, \
                      whole epochs, at least 256 per size) against the without-replacement formula: a line of slope -1 bending down as B \
                      approaches N."
                    .into(),
        }];
        let series: Vec<Series> = self
            .training
            .iter()
            .map(|c| Series {
                label: &c.label,
                points: &c.loss,
            })
            .collect();
        let (path, file) = plot_path(dir, Topic::Minibatch, "training");
        line_chart(
            &path,
            &format!("Trainer runs on {}: same step, same epochs", self.problem),
            "epoch",
            "training-set BCE",
            &series,
        )?;
        plots.push(Plot {
            file,
            caption: "digitlab-train with SGD at one step size: online learning makes N updates per epoch and gets \
                      furthest per epoch; full batch makes one exact update per epoch."
                .into(),
        });
        Ok(plots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minibatch_noise_falls_like_one_over_b() {
        let data = TheoryData::load(&TheoryConfig::embedded()).unwrap();
        let r = run(&data, &TheoryConfig::embedded()).unwrap();
        assert_eq!(r.noise.len(), 2);
        for c in &r.noise {
            assert!(c.per_example_variance > 0.0);
            assert!(c.worst_ratio_error() < 0.25, "{}: {:?}", c.point, c.rows);
            assert!((c.slope + 1.0).abs() < 0.15, "{}: slope {}", c.point, c.slope);
            // Monotone: bigger batches, less noise.
            assert!(c.rows.windows(2).all(|w| w[1].mean_sq_dev < w[0].mean_sq_dev));
        }
        // Online learning gets furthest in 5 epochs, full batch the least far.
        let last = |i: usize| r.training[i].loss.last().unwrap().1;
        assert!(
            last(0) < last(1) && last(1) < last(2),
            "{} {} {}",
            last(0),
            last(1),
            last(2)
        );
        assert!(r.verdict().holds, "{:#?}", r.verdict());
    }
}
