//! `digitlab`: train, search, evaluate and run digit-recognition experiments
//! from TOML configs.
mod array;
mod commands;
mod compare;
mod device;
mod errors;
mod imagenet;
mod models;
mod reproduce;
mod theory;
mod transfer;

use anyhow::Result;
use clap::Parser;
use digitlab_cli::args::{Cli, Command, Common};
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    // First, while this is the only thread.
    digitlab_kernels::runtime::pin_thread_count();
    digitlab_kernels::runtime::shorten_pool_spin();
    let cli = Cli::parse();
    let backtrace = cli.verbose || errors::backtrace_requested(|n| std::env::var(n).ok());
    if cli.verbose {
        // Before any error exists: anyhow (std's Backtrace) reads this once.
        std::env::set_var("RUST_LIB_BACKTRACE", "1");
    }
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprint!("{}", errors::render(&e, backtrace));
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<()> {
    match command {
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
            array,
            common,
        } => {
            if array.is_serial() {
                commands::sweep(&config, &overrides, out, force, !no_tensorboard, &common)
            } else {
                array::sweep(&config, &overrides, out, force, !no_tensorboard, &array, &common)
            }
        }
        Command::Eval {
            checkpoint,
            split,
            common,
        } => commands::eval(&checkpoint, &split, &common.into()),
        Command::Predict {
            checkpoint,
            model,
            pretrained,
            images,
            invert,
            common,
        } => match (model, pretrained, checkpoint, Common::from(common)) {
            (Some(model), Some(pretrained), _, common) => imagenet::predict(&model, &pretrained, &images, &common),
            (_, _, Some(checkpoint), common) => commands::predict(&checkpoint, &images, &invert, &common),
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
        Command::Datasets { verify, common } => commands::datasets(verify, &common.into()),
        Command::Models => models::list(),
        Command::Summary {
            config,
            overrides,
            model,
            input,
            classes,
        } => {
            let (title, summary) = match (config, model) {
                (Some(config), _) => models::config_summary(&config, &overrides)?,
                (None, Some(model)) => {
                    let input = input.as_deref().map(models::parse_input).transpose()?;
                    models::zoo_summary(&model, input, classes)?
                }
                (None, None) => anyhow::bail!("summary needs --config or --model"),
            };
            print!("{}", models::render(&title, &summary));
            Ok(())
        }
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
            list,
            entry,
            collect,
            allow_missing,
            no_tensorboard,
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
                let done = digitlab_cli::suite::run_entry(
                    &suite,
                    index,
                    &data_dir,
                    &out,
                    device,
                    common.quiet,
                    !no_tensorboard,
                )?;
                println!("{done}");
                return Ok(());
            }
            let report = if collect {
                reproduce::collect(&suite, &data_dir, &out, device, common.quiet, allow_missing)?
            } else {
                reproduce::run(&suite, &data_dir, &out, device, common.quiet, !no_tensorboard)?
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
