//! `train`: the config front-end of [`crate::fit`]. It builds the model, the
//! optimizer and the batches an `ExperimentConfig` describes and runs the loop
//! with progress, divergence guard, early stopping and checkpoint callbacks.
use crate::config::{DataConfig, ExperimentConfig, L2Scale};
use crate::eval::{evaluate_batches, Evaluation};
use crate::fit::{
    Checkpoints, DivergenceGuard, EarlyStopping, Fit, FitState, L2Penalty, Progress, RunInfo, TensorBoard,
};
pub use crate::fit::{EpochMetrics, Verbosity};
use crate::optim::ParamGroup;
use crate::run_dir;
use crate::{Result, TrainError};
use candle_core::{DType, Device, Var};
use candle_nn::VarMap;
use digitlab_data::{catalog, Batcher, Dataset, Split};
use digitlab_losses::L2Convention;
use digitlab_models::{build_model, is_buffer, InputShape, Model, SeededVarMap};
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
    /// Write a TensorBoard event file into `out_dir` (on by default).
    pub tensorboard: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            out_dir: None,
            device: Device::Cpu,
            verbosity: Verbosity::Silent,
            resume: false,
            max_epochs_this_run: None,
            tensorboard: true,
        }
    }
}

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
    /// The run's TensorBoard event file, still open for the end-of-run images.
    pub tensorboard: Option<TensorBoard>,
}

/// Trains the model a config describes on `data`: builds the model, the
/// optimizer (one trainable group of every parameter) and the batches from `cfg`,
/// restores `<out_dir>/last.json` when resuming, and runs [`Fit`] with progress,
/// divergence guard, early stopping and checkpoint callbacks. When a validation
/// metric chose an earlier epoch, the returned model holds that epoch's weights.
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
    let l2 = L2Penalty {
        vars: params
            .iter()
            .filter(|(n, v)| n.ends_with("weight") && v.rank() >= 2)
            .map(|(_, v)| v.clone())
            .collect(),
        strength: cfg.train.l2,
        convention: match cfg.train.l2_scale {
            L2Scale::HalfOverM => L2Convention::HalfOverM { m: data.train.len() },
            L2Scale::Plain => L2Convention::Plain,
        },
    };
    let mut optimizer = cfg.optim.build_groups(vec![ParamGroup::trainable("model", params)])?;

    let config_json = serde_json::to_value(cfg).map_err(|e| TrainError::Config(e.to_string()))?;
    let checkpoint_dir = match (&opts.out_dir, opts.resume) {
        (None, true) => return Err(TrainError::Config("--resume needs --out DIR".into())),
        (dir, _) => dir.as_deref(),
    };
    let checkpoints = checkpoint_dir.map(|dir| {
        Checkpoints::new(
            dir,
            &varmap,
            RunInfo {
                config: config_json.clone(),
                seed: cfg.seed,
                class_names: data.train.class_names().to_vec(),
                input_shape: [shape.channels, shape.height, shape.width],
            },
        )
    });
    // Held for the whole run (a no-op when the caller already holds the folder).
    let _run_dir = opts
        .out_dir
        .as_deref()
        .map(|d| run_dir::claim_for_training(d, cfg, opts.resume))
        .transpose()?;
    let mut state = FitState::default();
    if let (true, Some(c)) = (opts.resume, &checkpoints) {
        // A missing last.json or fewer epochs than done is an error (resume_point).
        let s = c.resume(optimizer.as_mut(), device, cfg.train.epochs)?;
        if opts.verbosity != Verbosity::Silent {
            eprintln!(
                "resuming {} from epoch {} ({})",
                cfg.name,
                s.epochs_done(),
                c.last_path().display()
            );
        }
        state = s;
    }

    let batch_size = if cfg.train.batch_size == 0 {
        data.train.len()
    } else {
        cfg.train.batch_size
    };
    let batcher = Batcher::new(&data.train, &pipeline, batch_size, device)?.training(cfg.seed);
    let val_batcher = match &data.val {
        Some(v) => Some(Batcher::new(v, &pipeline, cfg.train.eval_batch_size, device)?),
        None => None,
    };

    // Last before training: after the claim (a fresh run's folder has been cleared of
    // an earlier run's files) and after every check that can refuse the run (a
    // refused resume leaves the folder as it was).
    let mut tensorboard = match (&opts.out_dir, opts.tensorboard) {
        (Some(dir), true) => Some(TensorBoard::create(dir, &config_json)?),
        _ => None,
    };
    let mut progress = Progress::new(cfg.name.clone(), opts.verbosity);
    let mut guard = DivergenceGuard;
    let mut early = cfg.train.early_stopping.as_ref().map(EarlyStopping::from);
    let mut saving = checkpoints.filter(|_| cfg.train.checkpoints);
    let mut fit = Fit::new(&model, model.output(), optimizer.as_mut(), &batcher)
        .epochs(cfg.train.epochs)
        .loss(cfg.train.loss)
        .schedule(&cfg.schedule, cfg.optim.lr())
        .grad_clip(cfg.train.grad_clip)
        .l2(l2)
        .select(cfg.train.select_metric)
        .resume_from(state)
        .stop_after(opts.max_epochs_this_run)
        .callback(&mut progress)
        .callback(&mut guard);
    if let Some(v) = &val_batcher {
        fit = fit.validation(v);
    }
    if let Some(e) = early.as_mut() {
        fit = fit.callback(e);
    }
    // Before the checkpoints: an epoch is in the event file before its checkpoint
    // exists, so a resumed run never has an epoch missing there (a repeated one
    // is superseded, see TensorBoard::on_fit_start).
    if let Some(t) = tensorboard.as_mut() {
        fit = fit.callback(t);
    }
    if let Some(c) = saving.as_mut() {
        fit = fit.callback(c);
    }
    let outcome = fit.run()?;

    let mut val = outcome.val;
    let history = outcome.state.history;
    let best_epoch = outcome.state.best_epoch;
    // Restore the best weights when a validation metric chose them.
    if outcome.complete && best_epoch.is_some() && best_epoch != history.last().map(|h| h["epoch"] as usize) {
        if let Some(c) = &saving {
            if c.restore_best(device)? {
                if let Some(vb) = &val_batcher {
                    val = Some(evaluate_batches(&model, vb, cfg.train.loss)?);
                }
            }
        }
    }
    Ok(TrainedRun {
        model,
        varmap,
        input_shape,
        history,
        best_epoch,
        stopped_early: outcome.stopped_early,
        train_seconds: outcome.train_seconds,
        train_samples: outcome.train_samples,
        wall_seconds: started.elapsed().as_secs_f64(),
        val,
        complete: outcome.complete,
        tensorboard,
    })
}
