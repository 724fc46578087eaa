//! The subcommands.
use crate::device::parse_device;
use crate::Common;
use anyhow::{bail, Context, Result};
use candle_core::{ModuleT, Tensor};
use digitlab_data::catalog::{self, FileState};
use digitlab_data::{resolve_data_dir, DatasetKind};
use digitlab_models::OutputKind;
use digitlab_train::checkpoint;
use digitlab_train::experiment::{run_experiment, Summary};
use digitlab_train::run_dir::{config_hash, RunDir, Start};
use digitlab_train::sweep::run_sweep;
use digitlab_train::{evaluate, ExperimentConfig, PreparedData, RunOptions, Verbosity};
use std::path::{Path, PathBuf};

fn verbosity(c: &Common) -> Verbosity {
    if c.quiet {
        Verbosity::Lines
    } else {
        Verbosity::Bars
    }
}

fn pct(v: Option<f64>) -> String {
    digitlab_report::format::pct(v, 2)
}

pub(crate) fn print_summary(s: &Summary, out: &Path) {
    println!(
        "{}: {} on {} ({} parameters, {} epochs, {:.1}s)",
        s.name, s.model, s.dataset, s.parameters, s.epochs, s.wall_seconds
    );
    println!(
        "  train acc {} | val acc {} | test acc {} | test macro-F1 {}",
        pct(Some(s.train_accuracy)),
        pct(s.val_accuracy),
        pct(s.test_accuracy),
        s.test_macro_f1.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into())
    );
    println!(
        "  {:.0} training images/s; outputs in {}",
        s.train_samples_per_second,
        out.display()
    );
}

/// How a command may treat what is at its output folder.
fn start(resume: bool, force: bool) -> Start {
    match (resume, force) {
        (true, _) => Start::Resume,
        (false, true) => Start::Force,
        (false, false) => Start::Fresh,
    }
}

pub fn train(
    config: &Path,
    overrides: &[String],
    out: Option<PathBuf>,
    resume: bool,
    force: bool,
    tensorboard: bool,
    common: &Common,
) -> Result<()> {
    let cfg = ExperimentConfig::load(config, overrides)?;
    let out = out.unwrap_or_else(|| PathBuf::from("runs").join(&cfg.name));
    let device = parse_device(&common.device)?;
    let data_dir = resolve_data_dir(common.data_dir.as_deref());
    check_paths(&out, &data_dir)?;
    // Before any work: refuse a folder that is not ours or in use.
    let run_dir = RunDir::claim(&out, "train", &config_hash("train", &cfg), start(resume, force))?;
    let data = PreparedData::load(&cfg, &data_dir)?;
    if data.test.is_none() {
        eprintln!(
            "note: no test split of {} under {}: reporting validation only",
            cfg.data.dataset,
            data_dir.display()
        );
    }
    let opts = RunOptions {
        out_dir: Some(out.clone()),
        device,
        verbosity: verbosity(common),
        resume,
        max_epochs_this_run: None,
        tensorboard,
    };
    let result = run_experiment(&cfg, &data, &opts)?;
    run_dir.finish()?;
    print_summary(&result.summary, &out);
    Ok(())
}

pub fn sweep(
    config: &Path,
    overrides: &[String],
    out: Option<PathBuf>,
    force: bool,
    tensorboard: bool,
    common: &Common,
) -> Result<()> {
    let cfg = ExperimentConfig::load(config, overrides)?;
    if cfg.search.is_none() {
        bail!(
            "{}: no [search] section; add one (see configs/logreg_3v6.toml) or use `digitlab train`",
            config.display()
        );
    }
    let out = out.unwrap_or_else(|| PathBuf::from("runs").join(&cfg.name));
    let data_dir = resolve_data_dir(common.data_dir.as_deref());
    check_paths(&out, &data_dir)?;
    let device = parse_device(&common.device)?;
    let run_dir = RunDir::claim(&out, "sweep", &config_hash("sweep", &cfg), start(false, force))?;
    let opts = RunOptions {
        out_dir: Some(out.clone()),
        device,
        verbosity: verbosity(common),
        resume: false,
        max_epochs_this_run: None,
        tensorboard,
    };
    let r = run_sweep(&cfg, &data_dir, &opts)?;
    run_dir.finish()?;
    print_trials(&r.trials, r.trials[r.best].index);
    print_summary(&r.final_run.summary, &out.join("final"));
    Ok(())
}

/// The trials table of a sweep, the best (by trial index) starred.
pub(crate) fn print_trials(trials: &[digitlab_train::sweep::Trial], best: usize) {
    println!("{:>5}  {:<50} {:>10} {:>10}", "trial", "values", "val acc", "val loss");
    for t in trials {
        let values: Vec<String> = t.assignment.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mark = if t.index == best { "*" } else { " " };
        println!(
            "{:>4}{mark}  {:<50} {:>10} {:>10.4}",
            t.index + 1,
            values.join(" "),
            pct(Some(t.val_accuracy)),
            t.val_loss
        );
    }
}

/// `RunOptions` of a command writing into `out` (`tensorboard`: event files, on
/// unless `--no-tensorboard`).
pub(crate) fn run_options(out: &Path, device: candle_core::Device, tensorboard: bool, common: &Common) -> RunOptions {
    RunOptions {
        out_dir: Some(out.to_path_buf()),
        device,
        verbosity: verbosity(common),
        resume: false,
        max_epochs_this_run: None,
        tensorboard,
    }
}

/// The output folder must be a folder or creatable, the data folder a folder when
/// it exists: checked before any work, so a refused command changes nothing.
pub fn check_paths(out: &Path, data_dir: &Path) -> Result<()> {
    digitlab_train::validate::check_output_dir(out, "--out")?;
    digitlab_data::check_data_dir(data_dir, None)?;
    Ok(())
}

/// A model to evaluate or apply, from any kind of checkpoint, with what it needs
/// to see data as it was trained: the data split and the preprocessing.
struct Loaded {
    name: String,
    sidecar: checkpoint::Sidecar,
    model: digitlab_models::Model,
    data: digitlab_train::DataConfig,
    seed: u64,
    /// Channels, resize and normalisation (never augmentation).
    pipeline: digitlab_data::Pipeline,
    eval_batch_size: usize,
    loss: digitlab_losses::LossKind,
}

/// The sidecar a `--checkpoint` path means: see [`checkpoint::resolve`]; a folder
/// without one whose sub-folders hold exactly one (a `digitlab transfer` output
/// folder with one backbone) means that one.
fn resolve_sidecar(path: &Path) -> Result<PathBuf> {
    let direct = checkpoint::resolve(path);
    if direct.is_ok() || !path.is_dir() {
        return Ok(direct?);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("{}: cannot list the folder", path.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| checkpoint::SIDECAR_NAMES.iter().any(|n| p.join(n).is_file()))
        .collect();
    found.sort();
    match found.as_slice() {
        [] => Ok(direct?),
        [one] => Ok(checkpoint::resolve(one)?),
        many => {
            let names: Vec<String> = many.iter().map(|p| p.display().to_string()).collect();
            bail!(
                "{}: holds several checkpoints; pass one of: {}",
                path.display(),
                names.join(", ")
            )
        }
    }
}

/// Rebuilds the model a sidecar describes from its verified weights, by the
/// checkpoint's kind (`digitlab train` or `digitlab transfer`).
fn load_checkpoint(path: &Path, device: &candle_core::Device) -> Result<Loaded> {
    let sidecar_path = resolve_sidecar(path)?;
    let sidecar = checkpoint::read_sidecar(&sidecar_path)?;
    match checkpoint::checkpoint_kind(&sidecar) {
        "train" => {
            let (cfg, sidecar, model) = checkpoint::load_inference_model(&sidecar_path, device)?;
            Ok(Loaded {
                name: cfg.name.clone(),
                sidecar,
                model,
                pipeline: cfg.data.pipeline(),
                data: cfg.data,
                seed: cfg.seed,
                eval_batch_size: cfg.train.eval_batch_size,
                loss: cfg.train.loss,
            })
        }
        digitlab_finetune::export::KIND => {
            let e = digitlab_finetune::export::load_exported(&sidecar_path, device)?;
            let t = e.config.transfer;
            let label = t.backbones.first().map(|b| b.label()).unwrap_or_default();
            Ok(Loaded {
                name: format!("{}/{label}", t.name),
                sidecar: e.sidecar,
                model: e.model,
                pipeline: e.config.preprocess,
                data: t.data,
                seed: t.seed,
                eval_batch_size: t.transfer.eval_batch_size,
                loss: digitlab_losses::LossKind::CrossEntropy,
            })
        }
        other => bail!(
            "{}: checkpoint kind `{other}` is not known to this digitlab version",
            sidecar_path.display()
        ),
    }
}

pub fn eval(path: &Path, split: &str, common: &Common) -> Result<()> {
    let device = parse_device(&common.device)?;
    let Loaded {
        name,
        sidecar,
        model,
        data: data_cfg,
        seed,
        pipeline,
        eval_batch_size,
        loss,
    } = load_checkpoint(path, &device)?;
    let data = PreparedData::from_data_config(&data_cfg, seed, &resolve_data_dir(common.data_dir.as_deref()))?;
    let ds = match split {
        "test" => data
            .test
            .context("the test split's files are not present (see `digitlab datasets`)")?,
        "val" => data
            .val
            .context("this config has no validation split (data.val_fraction = 0)")?,
        other => bail!("--split must be test or val, got `{other}`"),
    };
    let e = evaluate(&model, &ds, &pipeline, eval_batch_size, loss, &device)?;
    println!(
        "{} (epoch {}) on {} ({} images)",
        name,
        sidecar.epoch,
        ds.name(),
        ds.len()
    );
    println!(
        "  loss {:.4}  accuracy {:.2}%  macro-F1 {:.4}",
        e.loss,
        100.0 * e.accuracy(),
        e.macro_f1()
    );
    println!(
        "  {:<12} {:>9} {:>9} {:>9} {:>8}",
        "class", "precision", "recall", "f1", "support"
    );
    for (k, m) in e.confusion.per_class().iter().enumerate() {
        println!(
            "  {:<12} {:>9.4} {:>9.4} {:>9.4} {:>8}",
            sidecar.class_names[k], m.precision, m.recall, m.f1, m.support
        );
    }
    Ok(())
}

pub fn predict(path: &Path, images: &[PathBuf], invert: &str, common: &Common) -> Result<()> {
    if images.is_empty() {
        bail!("give at least one image file");
    }
    let device = parse_device(&common.device)?;
    let Loaded {
        sidecar,
        model,
        pipeline,
        ..
    } = load_checkpoint(path, &device)?;
    let [c, h, w] = sidecar.input_shape;
    for img_path in images {
        // Decoded as it looks on screen (alpha on white, 16-bit scaled), at its own size.
        let (mut px, src_shape) = digitlab_data::image_file::load_image_as_seen(img_path, c, [h, w])?;
        let mean = px.iter().map(|&v| v as f64).sum::<f64>() / px.len().max(1) as f64;
        let do_invert = match invert {
            "auto" => mean > 127.0,
            "yes" => true,
            "no" => false,
            other => bail!("--invert must be auto, yes or no, got `{other}`"),
        };
        if do_invert {
            px.iter_mut().for_each(|v| *v = 255 - *v);
        }
        // The training pipeline's bilinear resize and normalisation, without augmentation.
        let shape = digitlab_data::ImageShape::new(c, h, w);
        let p = digitlab_data::Pipeline {
            resize: Some([h, w]),
            channels: None,
            augment: None,
            ..pipeline.clone()
        };
        let mut out = vec![0f32; shape.numel()];
        p.apply::<rand_chacha::ChaCha8Rng>(&px, src_shape, None, &mut out, &mut Vec::new());
        let x = Tensor::from_vec(out, (1, c, h, w), &device)?;
        let logits = model.forward_t(&x, false)?;
        let probs: Vec<f32> = match model.output() {
            OutputKind::BinaryLogit => {
                let p1 = candle_nn::ops::sigmoid(&logits)?.flatten_all()?.to_vec1::<f32>()?[0];
                vec![1.0 - p1, p1]
            }
            OutputKind::Logits(_) => candle_nn::ops::softmax_last_dim(&logits)?.flatten_all()?.to_vec1()?,
        };
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
        let top: Vec<String> = order
            .iter()
            .take(3)
            .map(|&k| format!("{} {:.3}", sidecar.class_names[k], probs[k]))
            .collect();
        println!(
            "{}: {}{}",
            img_path.display(),
            top.join(", "),
            if do_invert { " (inverted)" } else { "" }
        );
    }
    Ok(())
}

pub fn datasets(verify: bool, common: &Common) -> Result<()> {
    let data_dir = resolve_data_dir(common.data_dir.as_deref());
    digitlab_data::check_data_dir(&data_dir, None)?;
    println!("data directory: {}", data_dir.display());
    println!("{:<14} {:<7} details", "dataset", "status");
    println!(
        "{:<14} {:<7} embedded UCI 8x8 digits, 1,797 images ({})",
        "digits",
        "ready",
        digitlab_data::digits::DIGITS_ATTRIBUTION
    );
    for kind in DatasetKind::ALL.into_iter().filter(|k| *k != DatasetKind::Digits) {
        let states = catalog::file_states(kind, &data_dir, verify);
        let missing: Vec<&str> = states
            .iter()
            .filter(|(_, s)| *s == FileState::Missing)
            .map(|(f, _)| f.name)
            .collect();
        let invalid: Vec<String> = states
            .iter()
            .filter_map(|(_, s)| {
                if let FileState::Invalid(_, e) = s {
                    Some(e.clone())
                } else {
                    None
                }
            })
            .collect();
        let (status, details) = if !invalid.is_empty() {
            ("invalid", invalid.join("; "))
        } else if missing.len() == states.len() {
            ("absent", format!("run `cargo xtask download {kind}` (or --from DIR)"))
        } else if !missing.is_empty() {
            ("partial", format!("missing {}", missing.join(", ")))
        } else if verify {
            ("valid", "all checksums verified".to_string())
        } else {
            ("present", "use --verify to check checksums".to_string())
        };
        println!("{:<14} {:<7} {}", kind.name(), status, details);
    }
    Ok(())
}
