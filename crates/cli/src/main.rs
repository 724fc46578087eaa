//! `digitlab`: train, search, evaluate and run digit-recognition experiments
//! from TOML configs.
mod commands;
mod compare;
mod device;
mod imagenet;
mod reproduce;
mod theory;
mod transfer;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "digitlab", version, about = "Digit-recognition deep-learning lab on candle", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options shared by commands that run models.
#[derive(clap::Args, Clone, Debug)]
pub struct Common {
    /// Data directory (default: $DIGITLAB_DATA, else ./data).
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// cpu, cuda or cuda:N (CUDA needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu", global = true)]
    pub device: String,
    /// Log one line per epoch instead of progress bars.
    #[arg(long, short, global = true)]
    pub quiet: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Train one experiment from a config.
    Train {
        #[arg(long, short)]
        config: PathBuf,
        /// Override a config value: --set optim.lr=0.01 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Output folder (default: runs/<name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Continue from <out>/last.json (an error when there is none).
        #[arg(long, conflicts_with = "force")]
        resume: bool,
        /// Replace a digitlab run folder of another config at the output folder
        /// (only one with digitlab's marker; anything else is never touched).
        #[arg(long)]
        force: bool,
        /// Compute precision, f32 or bf16 (mixed: f32 weights, loss and metrics);
        /// the same as --set train.dtype="bf16".
        #[arg(long)]
        dtype: Option<digitlab_models::Precision>,
        /// Write no TensorBoard event file (by default every run folder gets
        /// one: `tensorboard --logdir runs`).
        #[arg(long)]
        no_tensorboard: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Hyperparameter search (grid or random) from a config with a [search] section.
    Sweep {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        #[arg(long)]
        out: Option<PathBuf>,
        /// Replace a digitlab run folder of another config at the output folder
        /// (only one with digitlab's marker; anything else is never touched).
        #[arg(long)]
        force: bool,
        /// Write no TensorBoard event file (by default every run folder gets
        /// one: `tensorboard --logdir runs`).
        #[arg(long)]
        no_tensorboard: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Evaluate a checkpoint (run folder, best.json/last.json, or its .safetensors).
    Eval {
        #[arg(long)]
        checkpoint: PathBuf,
        /// test or val.
        #[arg(long, default_value = "test")]
        split: String,
        #[command(flatten)]
        common: Common,
    },
    /// Classify PNG/JPEG images with a checkpoint, or (with --model and --pretrained)
    /// print the top-5 ImageNet classes of photos under pretrained ImageNet weights.
    Predict {
        #[arg(long, required_unless_present = "model", conflicts_with = "model")]
        checkpoint: Option<PathBuf>,
        /// An ImageNet model name (resnet18, vgg16, alexnet, efficientnet_lite0, ...).
        #[arg(long, requires = "pretrained")]
        model: Option<String>,
        /// Its weights: torchvision:NAME, hf:org/repo, or a local .pth/.safetensors file.
        #[arg(long, requires = "model")]
        pretrained: Option<String>,
        images: Vec<PathBuf>,
        /// Invert colours: auto (dark digit on light background is inverted), yes, no.
        #[arg(long, default_value = "auto")]
        invert: String,
        #[command(flatten)]
        common: Common,
    },
    /// Run a whole suite of coursework experiments and write one report.
    Reproduce {
        /// quick, full, or a path to a suite TOML.
        #[arg(long, default_value = "quick")]
        suite: String,
        /// Output folder (default: runs/reproduce-<suite>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Write no TensorBoard event file (by default every run folder gets
        /// one: `tensorboard --logdir runs`).
        #[arg(long)]
        no_tensorboard: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Run the coursework's theory questions as checks (CE vs MSE convexity,
    /// backprop vs autograd, stable softmax, ...): ce-vs-mse, deep-linear, backprop,
    /// cross-entropy, softmax, l2-gradient, minibatch, 1-7, or all.
    Theory {
        #[arg(default_value = "all")]
        topic: String,
        /// Output folder for theory.md and plots (default: runs/theory).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Replace a digitlab run folder of another config at the output folder
        /// (only one with digitlab's marker; anything else is never touched).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Frozen-backbone transfer learning: per backbone, cached features and a new
    /// head (see configs/*transfer*.toml); writes one folder per backbone and compare.md.
    Transfer {
        #[arg(long, short)]
        config: PathBuf,
        /// Override a config value: --set transfer.epochs=2 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Output folder (default: runs/<name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Feature cache folder (default: transfer.cache_dir, else runs/feature-cache).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// Replace a digitlab run folder of another config at the output folder
        /// (only one with digitlab's marker; anything else is never touched).
        #[arg(long)]
        force: bool,
        /// Precision of the backbone pass, f32 or bf16 (features and head stay f32);
        /// the same as --set transfer.dtype="bf16".
        #[arg(long)]
        dtype: Option<digitlab_models::Precision>,
        /// Write no TensorBoard event file (by default every run folder gets
        /// one: `tensorboard --logdir runs`).
        #[arg(long)]
        no_tensorboard: bool,
        #[command(flatten)]
        common: Common,
    },
    /// One table (compare.md, compare.csv, compare.png) of the summary.json of any runs.
    Compare {
        /// Run folders (or their summary.json); a folder of run folders counts as all of them.
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        /// Train minus validation accuracy above which a run is flagged as over-fitting.
        #[arg(long, default_value_t = 0.05)]
        overfit_gap: f64,
    },
    /// List datasets and whether their files are present and valid.
    Datasets {
        /// Verify checksums (reads every file).
        #[arg(long)]
        verify: bool,
        #[command(flatten)]
        common: Common,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Train {
            config,
            overrides,
            out,
            resume,
            force,
            dtype,
            no_tensorboard,
            common,
        } => {
            let overrides = with_dtype(overrides, "train", dtype);
            commands::train(&config, &overrides, out, resume, force, !no_tensorboard, &common)
        }
        Command::Sweep {
            config,
            overrides,
            out,
            force,
            no_tensorboard,
            common,
        } => commands::sweep(&config, &overrides, out, force, !no_tensorboard, &common),
        Command::Eval {
            checkpoint,
            split,
            common,
        } => commands::eval(&checkpoint, &split, &common),
        Command::Predict {
            checkpoint,
            model,
            pretrained,
            images,
            invert,
            common,
        } => match (model, pretrained, checkpoint) {
            (Some(model), Some(pretrained), _) => imagenet::predict(&model, &pretrained, &images, &common),
            (_, _, Some(checkpoint)) => commands::predict(&checkpoint, &images, &invert, &common),
            _ => anyhow::bail!("predict needs --checkpoint, or --model with --pretrained"),
        },
        Command::Theory {
            topic,
            out,
            force,
            common,
        } => {
            let out = out.unwrap_or_else(|| PathBuf::from("runs").join("theory"));
            theory::run(&topic, &out, force, common.data_dir.as_deref())
        }
        Command::Datasets { verify, common } => commands::datasets(verify, &common),
        Command::Transfer {
            config,
            overrides,
            out,
            cache_dir,
            force,
            dtype,
            no_tensorboard,
            common,
        } => {
            let overrides = with_dtype(overrides, "transfer", dtype);
            transfer::run(&config, &overrides, out, cache_dir, force, !no_tensorboard, &common)
        }
        Command::Compare { runs, out, overfit_gap } => compare::run(&runs, &out, overfit_gap),
        Command::Reproduce {
            suite,
            out,
            no_tensorboard,
            common,
        } => {
            let name = std::path::Path::new(&suite)
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or(suite.clone());
            let out = out.unwrap_or_else(|| PathBuf::from("runs").join(format!("reproduce-{name}")));
            let device = device::parse_device(&common.device)?;
            let data_dir = digitlab_data::resolve_data_dir(common.data_dir.as_deref());
            let report = reproduce::run(&suite, &data_dir, &out, device, common.quiet, !no_tensorboard)?;
            println!("report: {}", report.display());
            Ok(())
        }
    }
}

/// `--dtype D` as the last override of `<section>.dtype`.
fn with_dtype(mut overrides: Vec<String>, section: &str, dtype: Option<digitlab_models::Precision>) -> Vec<String> {
    if let Some(d) = dtype {
        overrides.push(format!("{section}.dtype=\"{d}\""));
    }
    overrides
}
