//! The training loop: epochs of shuffled minibatches, evaluation, best/last
//! checkpoints, early stopping, divergence guard and resume.
use crate::checkpoint::{self, Sidecar};
use crate::config::{DataConfig, ExperimentConfig, L2Scale, MetricName};
use crate::eval::{compute_loss, evaluate_batches, predict, Evaluation};
use crate::optim::{clip_grad_norm, Optimizer};
use crate::{Result, TrainError};
use candle_core::{DType, Device, ModuleT, Tensor, Var};
use candle_nn::VarMap;
use digitlab_data::{catalog, Batcher, Dataset, Split};
use digitlab_losses::{l2_penalty, L2Convention, Reduction};
use digitlab_models::{build_model, is_buffer, InputShape, Model, SeededVarMap};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The datasets of one experiment after class filtering, subsetting and splitting.
#[derive(Debug, Clone)]
pub struct PreparedData {
    pub train: Dataset,
    pub val: Option<Dataset>,
    pub test: Option<Dataset>,
}

impl PreparedData {
    /// Loads and prepares the data a config asks for from `data_dir`. The test split
    /// is `None` when its files are absent (the embedded digits always have one).
    pub fn load(cfg: &ExperimentConfig, data_dir: &Path) -> Result<Self> {
        Self::from_data_config(&cfg.data, cfg.seed, data_dir)
    }

    /// [`PreparedData::load`] for any `[data]` section: subset and split with `seed`.
    pub fn from_data_config(d: &DataConfig, seed: u64, data_dir: &Path) -> Result<Self> {
        let filter = |ds: Dataset| -> Result<Dataset> {
            Ok(match &d.classes {
                Some(c) => ds.filter_classes(c)?,
                None => ds,
            })
        };
        let mut train = filter(catalog::load(d.dataset, Split::Train, data_dir)?)?;
        if d.subset < 1.0 {
            train = train.subset_fraction(d.subset, seed, d.stratified)?;
        }
        let (train, val) = if d.val_fraction > 0.0 {
            let (t, v) = train.split(d.val_fraction, seed, d.stratified)?;
            (t, Some(v))
        } else {
            (train, None)
        };
        let test = if catalog::is_available(d.dataset, Split::Test, data_dir) {
            let t = filter(catalog::load(d.dataset, Split::Test, data_dir)?)?;
            Some(match d.test_limit {
                Some(n) => t.take(n)?,
                None => t,
            })
        } else {
            None
        };
        Ok(Self { train, val, test })
    }
}

/// The trainable variables of `varmap` (batch-norm buffers excluded), sorted by
/// name: the order the optimizer and checkpoints see them in.
pub fn trainable_params(varmap: &VarMap) -> Vec<(String, Var)> {
    let mut params: Vec<(String, Var)> = varmap
        .data()
        .lock()
        .expect("varmap lock poisoned")
        .iter()
        .filter(|(n, _)| !is_buffer(n))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    params
}

/// How much the trainer prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verbosity {
    /// Progress bars for epochs and batches (on a terminal).
    #[default]
    Bars,
    /// One log line per epoch (`--quiet`).
    Lines,
    /// Nothing.
    Silent,
}

/// Options of one training run that are not part of the experiment itself.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Where checkpoints go (required for checkpoints and resume).
    pub out_dir: Option<PathBuf>,
    pub device: Device,
    pub verbosity: Verbosity,
    /// Continue from `<out_dir>/last.json`.
    pub resume: bool,
    /// Stop after this many epochs of this invocation (to test resume).
    pub max_epochs_this_run: Option<usize>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            out_dir: None,
            device: Device::Cpu,
            verbosity: Verbosity::Silent,
            resume: false,
            max_epochs_this_run: None,
        }
    }
}

/// Metrics of one epoch, by name (`epoch`, `lr`, `train_loss`, `train_accuracy`,
/// `val_loss`, `val_accuracy`, `val_macro_f1`, `seconds`).
pub type EpochMetrics = BTreeMap<String, f64>;

/// Everything a finished run produced.
pub struct TrainedRun {
    pub model: Model,
    pub varmap: VarMap,
    pub input_shape: InputShape,
    pub history: Vec<EpochMetrics>,
    pub best_epoch: Option<usize>,
    pub stopped_early: bool,
    /// Seconds spent in training steps (not evaluation).
    pub train_seconds: f64,
    /// Images processed by training steps.
    pub train_samples: u64,
    pub wall_seconds: f64,
    pub val: Option<Evaluation>,
    /// Finished all epochs (false when `max_epochs_this_run` cut it short).
    pub complete: bool,
}

fn monitored(metrics: &EpochMetrics, m: MetricName) -> Option<f64> {
    metrics.get(m.as_str()).copied()
}

fn improved(metric: MetricName, new: f64, best: Option<f64>, min_delta: f64) -> bool {
    match best {
        None => true,
        Some(b) if metric.higher_is_better() => new > b + min_delta,
        Some(b) => new < b - min_delta,
    }
}

/// Trains the model a config describes on `data`.
pub fn train(cfg: &ExperimentConfig, data: &PreparedData, opts: &RunOptions) -> Result<TrainedRun> {
    let started = Instant::now();
    let device = &opts.device;
    let pipeline = cfg.data.pipeline();
    let shape = pipeline.output_shape(data.train.shape());
    let input_shape = InputShape {
        channels: shape.channels,
        height: shape.height,
        width: shape.width,
    };
    let num_classes = data.train.num_classes();

    let varmap = VarMap::new();
    let vb = SeededVarMap::var_builder(&varmap, cfg.seed, DType::F32, device);
    // bf16: f32 variables, bf16 compute, f32 logits (digitlab_models::precision).
    let model = build_model(&cfg.model, input_shape, num_classes, vb)?.with_precision(cfg.train.dtype);
    let params = trainable_params(&varmap);
    // L2 applies to weight matrices / kernels, not biases or norm scales.
    let l2_vars: Vec<Var> = params
        .iter()
        .filter(|(n, v)| n.ends_with("weight") && v.rank() >= 2)
        .map(|(_, v)| v.clone())
        .collect();
    let l2_convention = match cfg.train.l2_scale {
        L2Scale::HalfOverM => L2Convention::HalfOverM { m: data.train.len() },
        L2Scale::Plain => L2Convention::Plain,
    };
    let mut optimizer = Optimizer::new(cfg.optim.clone(), params.clone());

    let mut history: Vec<EpochMetrics> = Vec::new();
    let mut best: Option<f64> = None;
    let mut best_epoch = None;
    let mut bad_epochs = 0usize;
    let mut start_epoch = 0usize;
    let config_json = serde_json::to_value(cfg).map_err(|e| TrainError::Config(e.to_string()))?;

    if opts.resume {
        let dir = opts
            .out_dir
            .as_ref()
            .ok_or_else(|| TrainError::Config("--resume needs --out DIR".into()))?;
        let path = dir.join("last.json");
        if path.is_file() {
            let s = checkpoint::read_sidecar(&path)?;
            let mut saved = s.config.clone();
            let mut now = config_json.clone();
            // The epoch count may grow on resume; everything else must match.
            for v in [&mut saved, &mut now] {
                if let Some(t) = v.get_mut("train").and_then(|t| t.as_object_mut()) {
                    t.remove("epochs");
                }
            }
            if saved != now {
                return Err(TrainError::Checkpoint {
                    path,
                    message:
                        "was written by a different config; resume with the same config (only train.epochs may change)"
                            .into(),
                });
            }
            checkpoint::load_model(&path, &s, &varmap, device)?;
            let state = checkpoint::load_optim(&path, &s, device)?;
            let optim_path = s.optim_file.as_ref().map_or_else(|| path.clone(), |f| dir.join(f));
            optimizer.load_state(
                checkpoint::check_optim_state(&optim_path, state, &params)?,
                s.optimizer_steps,
            );
            start_epoch = s.epoch;
            history = s.history.clone();
            best = s.best_metric;
            best_epoch = s.best_epoch;
            bad_epochs = s.epochs_without_improvement;
            if opts.verbosity != Verbosity::Silent {
                eprintln!("resuming {} from epoch {} ({})", cfg.name, s.epoch, path.display());
            }
        } else if opts.verbosity != Verbosity::Silent {
            eprintln!("no checkpoint at {}: starting from scratch", path.display());
        }
    }

    let batch_size = if cfg.train.batch_size == 0 {
        data.train.len()
    } else {
        cfg.train.batch_size
    };
    let batcher = Batcher::new(&data.train, &pipeline, batch_size, device)?.training(cfg.seed);
    let nb = batcher.num_batches();
    let val_batcher = match &data.val {
        Some(v) => Some(Batcher::new(v, &pipeline, cfg.train.eval_batch_size, device)?),
        None => None,
    };
    let epochs = cfg.train.epochs;
    let base_lr = cfg.optim.lr();
    let mut train_seconds = 0.0;
    let mut train_samples = 0u64;
    let mut stopped_early = false;
    let mut val_eval = None;
    let mut complete = true;

    let epoch_bar = match opts.verbosity {
        Verbosity::Bars => ProgressBar::new(epochs as u64),
        _ => ProgressBar::hidden(),
    };
    epoch_bar.set_style(
        ProgressStyle::with_template("{prefix} epoch {pos}/{len} [{bar:25}] {elapsed}<{eta} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    epoch_bar.set_prefix(cfg.name.clone());
    epoch_bar.set_position(start_epoch as u64);

    let mut epochs_run = 0;
    for epoch in start_epoch..epochs {
        if opts.max_epochs_this_run.is_some_and(|m| epochs_run >= m) {
            complete = false;
            break;
        }
        epochs_run += 1;
        let t0 = Instant::now();
        let batch_bar = if opts.verbosity == Verbosity::Bars && nb > 1 {
            let b = ProgressBar::new(nb as u64);
            b.set_style(
                ProgressStyle::with_template("  {pos}/{len} batches [{bar:25}] {per_sec} {msg}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            b
        } else {
            ProgressBar::hidden()
        };
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0u64, 0u64);
        for (step, batch) in batcher.epoch(epoch as u64).enumerate() {
            let batch = batch?;
            let lr = cfg
                .schedule
                .lr_at(base_lr, epoch as f64 + step as f64 / nb as f64, epochs);
            optimizer.set_lr(lr);
            let out = model.forward_t(&batch.images, true)?;
            let mut loss = compute_loss(cfg.train.loss, &out, &batch.labels, Reduction::Mean)?;
            if cfg.train.l2 > 0.0 && !l2_vars.is_empty() {
                let ws: Vec<&Tensor> = l2_vars.iter().map(|v| v.as_tensor()).collect();
                loss = (loss + l2_penalty(&ws, cfg.train.l2, l2_convention)?)?;
            }
            let lv = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if !lv.is_finite() {
                epoch_bar.abandon();
                return Err(TrainError::Diverged {
                    epoch: epoch + 1,
                    step: step + 1,
                    loss: lv,
                    lr,
                });
            }
            let mut grads = loss.backward()?;
            if let Some(max) = cfg.train.grad_clip {
                clip_grad_norm(&params, &mut grads, max)?;
            }
            optimizer.step(&grads)?;
            let n = batch.indices.len() as u64;
            let (pred, _) = predict(model.output(), &out)?;
            let labels: Vec<u32> = batch.labels.to_vec1()?;
            correct += pred.iter().zip(&labels).filter(|(p, l)| p == l).count() as u64;
            loss_sum += lv * n as f64;
            seen += n;
            batch_bar.inc(1);
            if step % 20 == 0 {
                batch_bar.set_message(format!("loss {:.4}", loss_sum / seen as f64));
            }
        }
        batch_bar.finish_and_clear();
        let epoch_train_secs = t0.elapsed().as_secs_f64();
        train_seconds += epoch_train_secs;
        train_samples += seen;

        let mut m = EpochMetrics::new();
        m.insert("epoch".into(), (epoch + 1) as f64);
        m.insert("lr".into(), optimizer.lr());
        m.insert("train_loss".into(), loss_sum / seen.max(1) as f64);
        m.insert("train_accuracy".into(), correct as f64 / seen.max(1) as f64);
        if let Some(vb) = &val_batcher {
            let e = evaluate_batches(&model, vb, cfg.train.loss)?;
            m.insert("val_loss".into(), e.loss);
            m.insert("val_accuracy".into(), e.accuracy());
            m.insert("val_macro_f1".into(), e.macro_f1());
            val_eval = Some(e);
        }
        m.insert("seconds".into(), t0.elapsed().as_secs_f64());
        m.insert(
            "train_samples_per_second".into(),
            seen as f64 / epoch_train_secs.max(1e-9),
        );

        let line = epoch_line(&m);
        match opts.verbosity {
            Verbosity::Bars => epoch_bar.println(format!("{} {line}", cfg.name)),
            Verbosity::Lines => eprintln!("{} {line}", cfg.name),
            Verbosity::Silent => {}
        }
        epoch_bar.set_message(line);
        epoch_bar.inc(1);

        let select = cfg.train.select_metric;
        let is_best = monitored(&m, select).is_some_and(|v| improved(select, v, best, 0.0));
        if is_best {
            best = monitored(&m, select);
            best_epoch = Some(epoch + 1);
        }
        if let Some(es) = &cfg.train.early_stopping {
            // Improvement for early stopping is judged against the best of its own metric.
            let current = monitored(&m, es.metric);
            let prior = history
                .iter()
                .filter_map(|h| monitored(h, es.metric))
                .fold(None, |acc: Option<f64>, v| {
                    Some(match acc {
                        None => v,
                        Some(a) if es.metric.higher_is_better() => a.max(v),
                        Some(a) => a.min(v),
                    })
                });
            match current {
                Some(v) if improved(es.metric, v, prior, es.min_delta) => bad_epochs = 0,
                _ => bad_epochs += 1,
            }
        }
        history.push(m.clone());

        if let (Some(dir), true) = (&opts.out_dir, cfg.train.checkpoints) {
            let sidecar = Sidecar {
                format_version: checkpoint::FORMAT_VERSION,
                created_by: format!("digitlab-train {}", env!("CARGO_PKG_VERSION")),
                config: config_json.clone(),
                epoch: epoch + 1,
                optimizer_steps: optimizer.steps(),
                seed: cfg.seed,
                class_names: data.train.class_names().to_vec(),
                input_shape: [shape.channels, shape.height, shape.width],
                metrics: m.clone(),
                history: history.clone(),
                best_metric: best,
                best_epoch,
                epochs_without_improvement: bad_epochs,
                model_file: String::new(),
                model_sha256: String::new(),
                optim_file: None,
                optim_sha256: None,
            };
            if is_best {
                checkpoint::save(dir, "best", &varmap, None, sidecar.clone())?;
            }
            checkpoint::save(dir, "last", &varmap, Some(optimizer.state()), sidecar)?;
            checkpoint::prune(dir)?;
        }
        if let Some(es) = &cfg.train.early_stopping {
            if bad_epochs >= es.patience {
                stopped_early = true;
                let msg = format!(
                    "{}: early stop after epoch {} ({} epochs without improvement)",
                    cfg.name,
                    epoch + 1,
                    bad_epochs
                );
                match opts.verbosity {
                    Verbosity::Bars => epoch_bar.println(msg),
                    Verbosity::Lines => eprintln!("{msg}"),
                    Verbosity::Silent => {}
                }
                break;
            }
        }
    }
    epoch_bar.finish_and_clear();

    // Restore the best weights when a validation metric chose them.
    if complete && best_epoch.is_some() && best_epoch != history.last().map(|h| h["epoch"] as usize) {
        if let Some(dir) = &opts.out_dir {
            let p = dir.join("best.json");
            if p.is_file() {
                let s = checkpoint::read_sidecar(&p)?;
                checkpoint::load_model(&p, &s, &varmap, device)?;
                if let Some(vb) = &val_batcher {
                    val_eval = Some(evaluate_batches(&model, vb, cfg.train.loss)?);
                }
            }
        }
    }
    // A resumed run that had no epochs left still reports validation metrics.
    if val_eval.is_none() && !history.is_empty() {
        if let Some(vb) = &val_batcher {
            val_eval = Some(evaluate_batches(&model, vb, cfg.train.loss)?);
        }
    }
    Ok(TrainedRun {
        model,
        varmap,
        input_shape,
        history,
        best_epoch,
        stopped_early,
        train_seconds,
        train_samples,
        wall_seconds: started.elapsed().as_secs_f64(),
        val: val_eval,
        complete,
    })
}

fn epoch_line(m: &EpochMetrics) -> String {
    let mut s = format!(
        "epoch {:>3} lr {:.2e} train loss {:.4} acc {:.4}",
        m["epoch"], m["lr"], m["train_loss"], m["train_accuracy"]
    );
    if let (Some(l), Some(a)) = (m.get("val_loss"), m.get("val_accuracy")) {
        s += &format!(" | val loss {l:.4} acc {a:.4}");
    }
    s += &format!(" | {:.1}s", m["seconds"]);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn improvement_respects_direction_and_delta() {
        assert!(improved(MetricName::ValAccuracy, 0.9, None, 0.0));
        assert!(improved(MetricName::ValAccuracy, 0.91, Some(0.9), 0.0));
        assert!(!improved(MetricName::ValAccuracy, 0.905, Some(0.9), 0.01));
        assert!(improved(MetricName::ValLoss, 0.2, Some(0.3), 0.0));
        assert!(!improved(MetricName::ValLoss, 0.3, Some(0.3), 0.0));
    }
}
