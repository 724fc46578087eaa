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
    write_report(out, suite::run(suite, data_dir, out, device, quiet, tensorboard)?)
}

/// `--collect`: the report of the experiments that finished under `out`.
pub fn collect(
    suite: &str,
    data_dir: &Path,
    out: &Path,
    device: candle_core::Device,
    quiet: bool,
    allow_missing: bool,
) -> Result<PathBuf> {
    let run = suite::collect(suite, data_dir, out, device, quiet, allow_missing)?;
    for (i, label) in &run.unfinished {
        eprintln!("warning: entry {i} ({label}) has not finished; the report lists it as not run");
    }
    write_report(out, run)
}

/// `--list`: `N experiments`, then `I<TAB>mode<TAB>config` per line.
pub fn list(suite: &str) -> Result<()> {
    let lines = suite::list(suite)?;
    println!("{} experiments", lines.len());
    for (i, l) in lines.iter().enumerate() {
        println!("{i}\t{l}");
    }
    Ok(())
}

fn write_report(out: &Path, run: suite::SuiteRun) -> Result<PathBuf> {
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
