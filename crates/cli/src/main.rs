//! `digitlab`: train, search, evaluate and run digit-recognition experiments
//! from TOML configs.
mod array;
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
        #[command(flatten)]
        common: Common,
    },
    /// Hyperparameter search (grid, random or successive halving) from a config with
    /// a [search] section; serially, or as a job array (--list-trials, --trial,
    /// --worker, --collect: see "Running on a cluster" in the README).
    Sweep {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        #[arg(long)]
        out: Option<PathBuf>,
        /// Replace a digitlab run folder of another config at the output folder
        /// (only one with digitlab's marker; anything else is never touched).
        /// With --trial: the trial's own folder.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        array: array::ArrayMode,
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
        /// Print the suite's experiments, one per line by index (0-based); nothing runs.
        #[arg(long, conflicts_with_all = ["entry", "collect"])]
        list: bool,
        /// Run only experiment I (0-based) into its folder under <out>; `env` takes I
        /// from DIGITLAB_TRIAL, SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX.
        #[arg(long, value_name = "I|env", conflicts_with = "collect")]
        entry: Option<String>,
        /// Write the report from the experiments that finished under <out> (nothing trains).
        #[arg(long)]
        collect: bool,
        /// With --collect: report the finished experiments when some have not (they are named).
        #[arg(long, requires = "collect")]
        allow_missing: bool,
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
    /// Transfer learning: per backbone, a new head on cached frozen features, or the
    /// last stages / the whole network fine-tuned (see configs/*transfer*.toml and
    /// configs/*finetune*.toml); writes one folder per backbone and compare.md.
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
            common,
        } => {
            let overrides = with_dtype(overrides, "train", dtype);
            commands::train(&config, &overrides, out, resume, force, &common)
        }
        Command::Sweep {
            config,
            overrides,
            out,
            force,
            array,
            common,
        } => {
            if array.is_serial() {
                commands::sweep(&config, &overrides, out, force, &common)
            } else {
                array::sweep(&config, &overrides, out, force, &array, &common)
            }
        }
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
            common,
        } => {
            let overrides = with_dtype(overrides, "transfer", dtype);
            transfer::run(&config, &overrides, out, cache_dir, force, &common)
        }
        Command::Compare { runs, out, overfit_gap } => compare::run(&runs, &out, overfit_gap),
        Command::Reproduce {
            suite,
            out,
            list,
            entry,
            collect,
            allow_missing,
            common,
        } => {
            if list {
                return reproduce::list(&suite);
            }
            let name = std::path::Path::new(&suite)
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or(suite.clone());
            let out = out.unwrap_or_else(|| PathBuf::from("runs").join(format!("reproduce-{name}")));
            let device = device::parse_device(&common.device)?;
            let data_dir = digitlab_data::resolve_data_dir(common.data_dir.as_deref());
            if let Some(e) = entry {
                let index = array::index_from(&e, "--entry")?;
                let done = digitlab_cli::suite::run_entry(&suite, index, &data_dir, &out, device, common.quiet)?;
                println!("{done}");
                return Ok(());
            }
            let report = if collect {
                reproduce::collect(&suite, &data_dir, &out, device, common.quiet, allow_missing)?
            } else {
                reproduce::run(&suite, &data_dir, &out, device, common.quiet)?
            };
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
