//! `digitlab transfer`: frozen-backbone transfer learning from a config
//! (see `digitlab_finetune::transfer`).
use crate::device::parse_device;
use crate::Common;
use anyhow::{bail, Result};
use digitlab_data::resolve_data_dir;
use digitlab_finetune::transfer::run_transfer_all;
use digitlab_finetune::{TransferConfig, TransferRunOptions, TRANSFER_KIND};
use digitlab_train::run_dir::{config_hash, RunDir, Start};
use digitlab_train::Verbosity;
use std::path::{Path, PathBuf};

pub fn run(
    config: &Path,
    overrides: &[String],
    out: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
    force: bool,
    tensorboard: bool,
    common: &Common,
) -> Result<()> {
    let cfg = TransferConfig::load(config, overrides)?;
    let out = out.unwrap_or_else(|| PathBuf::from("runs").join(&cfg.name));
    let data_dir = resolve_data_dir(common.data_dir.as_deref());
    crate::commands::check_paths(&out, &data_dir)?;
    let cache = cache_dir.clone().or_else(|| cfg.transfer.cache_dir.clone());
    let cache = cache.unwrap_or_else(|| PathBuf::from(digitlab_finetune::transfer::DEFAULT_CACHE_DIR));
    digitlab_train::validate::check_output_dir(&cache, "--cache-dir")?;
    let device = parse_device(&common.device)?;
    let start = if force { Start::Force } else { Start::Fresh };
    let run_dir = RunDir::claim(&out, TRANSFER_KIND, &config_hash(TRANSFER_KIND, &cfg), start)?;
    let opts = TransferRunOptions {
        out_dir: Some(out.clone()),
        device,
        verbosity: if common.quiet {
            Verbosity::Lines
        } else {
            Verbosity::Bars
        },
        cache_dir,
        tensorboard,
        ..Default::default()
    };
    let run = run_transfer_all(&cfg, &data_dir, &opts)?;
    run_dir.finish()?;
    let outcomes = &run.outcomes;
    let table = std::fs::read_to_string(out.join("compare.md")).unwrap_or_default();
    println!("{table}");
    for o in outcomes {
        if let Some(dir) = &o.out_dir {
            println!("{}: {}", o.label, dir.display());
        }
    }
    println!("comparison: {}", out.join("compare.md").display());
    if !run.failed.is_empty() {
        let names: Vec<&str> = run.failed.iter().map(|f| f.label.as_str()).collect();
        bail!(
            "{} of {} backbones failed: {} (the others ran; reasons in {})",
            run.failed.len(),
            cfg.backbones.len(),
            names.join(", "),
            out.join("compare.md").display()
        );
    }
    Ok(())
}
