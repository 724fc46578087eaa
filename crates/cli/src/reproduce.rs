//! `digitlab reproduce`: run a suite of experiments (see [`digitlab_cli::suite`])
//! and write one report. Completed experiments whose config is unchanged are
//! reused (their run folder's marker records the config hash), so an interrupted
//! suite resumes where it stopped.
use anyhow::Result;
use digitlab_cli::{report, suite};
use std::path::{Path, PathBuf};

/// Runs `suite` and writes `report.md` and `report.html` into `out`.
pub fn run(
    suite: &str,
    data_dir: &Path,
    out: &Path,
    device: candle_core::Device,
    quiet: bool,
    tensorboard: bool,
) -> Result<PathBuf> {
    let run = suite::run(suite, data_dir, out, device, quiet, tensorboard)?;
    let index = report::write(
        out,
        &run.suite.name,
        &run.suite.description,
        &run.reports,
        run.wall_seconds,
    )?;
    report::print_table(&run.reports);
    run.out_dir.finish()?;
    Ok(index)
}
