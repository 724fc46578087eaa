//! `cargo xtask`: developer tasks for digitlab (dataset downloads, benchmarks).
mod bench;
mod cuda_toolchain;
mod download;
mod mkl;
mod wheels;

use anyhow::Result;
use clap::{Parser, Subcommand};
use digitlab_data::DatasetKind;
use std::path::PathBuf;

use bench::workspace_root;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "digitlab developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download (or import with --from) and verify datasets into the data directory.
    Download {
        /// mnist, fashion-mnist, svhn or all
        dataset: String,
        /// Data directory (default: $DIGITLAB_DATA, else ./data).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Import verified copies from a local folder instead of the network.
        #[arg(long)]
        from: Option<PathBuf>,
        /// Also fetch SVHN's 1.3 GB `extra` split.
        #[arg(long)]
        extra: bool,
        /// No progress bars.
        #[arg(long)]
        quiet: bool,
    },
    /// Run the benchmark workloads (each in its own process), optionally side by side
    /// with the PyTorch reference (benches/reference/bench.py); print one table and
    /// write benches/results/<date>.json.
    Bench {
        /// Only workloads whose name contains one of these comma-separated substrings.
        #[arg(long)]
        filter: Option<String>,
        /// Also run the PyTorch reference (needs python3 with torch and numpy).
        #[arg(long)]
        compare_pytorch: bool,
        /// Timed seconds per run (after the warm-up steps).
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// Untimed warm-up steps per run.
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Rounds; sides alternate which goes first, the table shows the median.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Threads for both sides.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Python interpreter of the reference side (default: $DIGITLAB_PYTHON, else python3).
        #[arg(long)]
        python: Option<String>,
        /// Directory of the results file (default: benches/results).
        #[arg(long)]
        results_dir: Option<PathBuf>,
        /// Print the table only, write no results file.
        #[arg(long)]
        no_save: bool,
    },
    /// Install a CUDA compiler and link-time stand-ins from PyPI wheels into a folder
    /// under target/ (idempotent) and print the environment for the `cuda` build:
    /// `eval "$(cargo xtask cuda-toolchain)"; cargo build --release --features cuda`.
    CudaToolchain {
        /// Toolchain folder (default: target/cuda-toolchain).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Compute capability the kernels are compiled for (major*10+minor: 90 for
        /// H100/H200, 80 for A100, 89 for L4 / RTX 40xx).
        #[arg(long, default_value_t = 90)]
        compute_cap: u32,
        /// Python interpreter whose pip installs the wheels.
        #[arg(long, default_value = "python3")]
        python: String,
        /// CARGO_TARGET_DIR printed for the cuda build (default: target/cuda; a
        /// separate folder keeps the CPU build's artifacts untouched).
        #[arg(long)]
        target_dir: Option<PathBuf>,
    },
    /// Install Intel MKL's static libraries from PyPI's mkl-static wheel into a folder
    /// under target/ (idempotent) and print MKLROOT for the `mkl` feature:
    /// `eval "$(cargo xtask mkl)"; cargo build --release --features digitlab-kernels/mkl`.
    Mkl {
        /// MKL folder (default: target/mkl).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Python interpreter whose pip downloads the wheel.
        #[arg(long, default_value = "python3")]
        python: String,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Download {
            dataset,
            data_dir,
            from,
            extra,
            quiet,
        } => {
            let kinds: Vec<DatasetKind> = if dataset == "all" {
                vec![DatasetKind::Mnist, DatasetKind::FashionMnist, DatasetKind::Svhn]
            } else {
                let k = DatasetKind::from_name(&dataset)?;
                anyhow::ensure!(
                    k != DatasetKind::Digits,
                    "the `digits` dataset is embedded in digitlab: nothing to download"
                );
                vec![k]
            };
            let data_dir = digitlab_data::resolve_data_dir(data_dir.as_deref());
            let opts = download::Options {
                quiet,
                include_extra: extra,
            };
            let mut failures = Vec::new();
            for kind in kinds {
                if let Err(e) = download::fetch_dataset(kind, &data_dir, from.as_deref(), &opts) {
                    eprintln!("error: {kind}: {e:#}");
                    failures.push(kind.name());
                }
            }
            anyhow::ensure!(failures.is_empty(), "could not get: {}", failures.join(", "));
            Ok(())
        }
        Command::Bench {
            filter,
            compare_pytorch,
            seconds,
            warmup,
            rounds,
            threads,
            python,
            results_dir,
            no_save,
        } => bench::run(bench::Options {
            filter,
            compare_pytorch,
            seconds,
            warmup,
            rounds,
            threads,
            python,
            results_dir,
            no_save,
        }),
        Command::CudaToolchain {
            dir,
            compute_cap,
            python,
            target_dir,
        } => {
            let target = workspace_root().join("target");
            cuda_toolchain::run(&cuda_toolchain::Options {
                dir: dir.unwrap_or_else(|| target.join("cuda-toolchain")),
                compute_cap,
                python,
                target_dir: target_dir.unwrap_or_else(|| target.join("cuda")),
            })
        }
        Command::Mkl { dir, python } => mkl::run(&mkl::Options {
            dir: dir.unwrap_or_else(|| workspace_root().join("target/mkl")),
            python,
        }),
    }
}
