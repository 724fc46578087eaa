//! The command line of `digitlab`: every subcommand and option (clap derive), in
//! the library so that tests can walk the whole tree (`Cli::command()`).
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "digitlab", version, about = "Digit-recognition deep-learning lab on candle", long_about = None)]
pub struct Cli {
    /// On an error, also print the backtrace (as RUST_BACKTRACE=1 does).
    #[arg(long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by commands that run models and show progress.
#[derive(clap::Args, Clone, Debug)]
pub struct Common {
    /// Data directory (default: $DIGITLAB_DATA, else ./data).
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// cpu, cuda or cuda:N (CUDA needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu", global = true)]
    pub device: String,
    /// Plain log lines (one per epoch, or per step of a suite) instead of progress bars.
    #[arg(long, short, global = true)]
    pub quiet: bool,
}

/// [`Common`] without `--quiet`, for commands that show no progress.
#[derive(clap::Args, Clone, Debug)]
pub struct DataArgs {
    /// Data directory (default: $DIGITLAB_DATA, else ./data).
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// cpu, cuda or cuda:N (CUDA needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu", global = true)]
    pub device: String,
}

impl From<DataArgs> for Common {
    fn from(d: DataArgs) -> Self {
        Common {
            data_dir: d.data_dir,
            device: d.device,
            quiet: false,
        }
    }
}

/// [`DataArgs`] without `--device`, for commands that run no model.
#[derive(clap::Args, Clone, Debug)]
pub struct DataDir {
    /// Data directory (default: $DIGITLAB_DATA, else ./data).
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
}

impl From<DataDir> for Common {
    fn from(d: DataDir) -> Self {
        Common {
            data_dir: d.data_dir,
            device: "cpu".into(),
            quiet: false,
        }
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Train one experiment from a config.
    Train {
        /// The experiment's TOML config (see configs/).
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
    /// Hyperparameter search (grid, random or successive halving) from a config with
    /// a [search] section; serially, or as a job array (--list-trials, --trial,
    /// --worker, --collect: see "Running on a cluster" in the README).
    Sweep {
        /// The experiment's TOML config, with a [search] section.
        #[arg(long, short)]
        config: PathBuf,
        /// Override a config value: --set optim.lr=0.01 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Output folder (default: runs/<name>; the retrained best run goes to <out>/final).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Replace a digitlab run folder of another config at the output folder
        /// (only one with digitlab's marker; anything else is never touched).
        /// With --trial: the trial's own folder.
        #[arg(long)]
        force: bool,
        /// Write no TensorBoard event file (by default every run folder gets
        /// one: `tensorboard --logdir runs`).
        #[arg(long)]
        no_tensorboard: bool,
        #[command(flatten)]
        array: ArrayMode,
        #[command(flatten)]
        common: Common,
    },
    /// Evaluate a checkpoint (run folder, best.json/last.json, or its .safetensors).
    Eval {
        /// A run folder, its best.json / last.json, or a model .safetensors.
        #[arg(long)]
        checkpoint: PathBuf,
        /// test or val.
        #[arg(long, default_value = "test")]
        split: String,
        #[command(flatten)]
        common: DataArgs,
    },
    /// Classify PNG/JPEG images with a checkpoint, or (with --model and --pretrained)
    /// print the top-5 ImageNet classes of photos under pretrained ImageNet weights.
    Predict {
        /// A run folder (train, sweep or transfer backbone), its best.json / last.json,
        /// or a model .safetensors, whose model classifies the images.
        #[arg(long, required_unless_present = "model", conflicts_with = "model")]
        checkpoint: Option<PathBuf>,
        /// An ImageNet model name (resnet18, vgg16, alexnet, efficientnet_lite0, ...).
        #[arg(long, requires = "pretrained")]
        model: Option<String>,
        /// Its weights: torchvision:NAME, hf:org/repo, or a local .pth/.safetensors file.
        #[arg(long, requires = "model")]
        pretrained: Option<String>,
        /// PNG or JPEG files to classify (one or more).
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// Invert colours: auto (dark digit on light background is inverted), yes, no.
        #[arg(long, default_value = "auto")]
        invert: String,
        #[command(flatten)]
        common: DataArgs,
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
        /// Which question: ce-vs-mse, deep-linear, backprop, cross-entropy, softmax,
        /// l2-gradient, minibatch, their numbers 1-7, or all.
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
        common: DataDir,
    },
    /// Transfer learning: per backbone, a new head on cached frozen features, or the
    /// last stages / the whole network fine-tuned (see configs/*transfer*.toml and
    /// configs/*finetune*.toml); writes one folder per backbone and compare.md.
    Transfer {
        /// The transfer TOML config ([[backbones]] and a [transfer] section).
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
        /// Folder for compare.md, compare.csv and compare.png.
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
        common: DataDir,
    },
    /// List every model `create_model` builds by name: parameters, default input,
    /// MACs at that input, and where pretrained weights come from.
    Models,
    /// Print a model's layers (output shape, parameters, trainable, MACs) and totals,
    /// for a train/sweep config or a model name.
    Summary {
        /// A train or sweep config: its [model], at its [data]'s input size and classes.
        #[arg(long, short, required_unless_present = "model", conflicts_with = "model")]
        config: Option<PathBuf>,
        /// Override a config value: --set model.hidden=[64] (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE", requires = "config")]
        overrides: Vec<String>,
        /// A model name (see `digitlab models`).
        #[arg(long)]
        model: Option<String>,
        /// Input size CxHxW for --model (default: the model's own, e.g. 3x224x224).
        #[arg(long, value_name = "CxHxW", requires = "model")]
        input: Option<String>,
        /// Class count for --model (default: 1000 for ImageNet models, else 10).
        #[arg(long, requires = "model")]
        classes: Option<usize>,
    },
}

/// The job-array modes of `digitlab sweep` (at most one; none: the serial sweep).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ArrayMode {
    /// Print the number of trials and each one's values, one per line by index
    /// (0-based, as `--trial` takes them); nothing is run.
    #[arg(long)]
    pub list_trials: bool,
    /// Run only trial I (0-based) into <out>/trials/NNNN; `env` takes I from
    /// DIGITLAB_TRIAL, SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX.
    #[arg(long, value_name = "I|env")]
    pub trial: Option<String>,
    /// Successive halving (strategy = "asha"): pull jobs from <out>/asha.json until
    /// none is left; start as many workers as you like.
    #[arg(long)]
    pub worker: bool,
    /// Merge the finished trials under <out> into trials.csv, pick the best, and
    /// retrain and test it once (a second collect reuses that run).
    #[arg(long)]
    pub collect: bool,
    /// With --list-trials: JSON instead of lines.
    #[arg(long, requires = "list_trials")]
    pub json: bool,
    /// With --collect: go on when some trials have no result (they are named).
    #[arg(long, requires = "collect")]
    pub allow_missing: bool,
}

impl ArrayMode {
    /// No job-array flag: the ordinary serial sweep.
    pub fn is_serial(&self) -> bool {
        self.modes() == 0
    }

    /// How many job-array modes were asked for (more than one is an error).
    pub fn modes(&self) -> usize {
        [self.list_trials, self.trial.is_some(), self.worker, self.collect]
            .iter()
            .filter(|b| **b)
            .count()
    }
}
