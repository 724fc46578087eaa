//! `digitlab compare`: one table of any runs' `summary.json` (see `digitlab_finetune::compare`).
use anyhow::Result;
use std::path::{Path, PathBuf};

pub fn run(runs: &[PathBuf], out: &Path, overfit_gap: f64) -> Result<()> {
    let rows = digitlab_finetune::compare(runs, out, overfit_gap)?;
    print!("{}", digitlab_finetune::compare::markdown(&rows, overfit_gap));
    println!(
        "wrote {}, {} and {}",
        out.join("compare.md").display(),
        out.join("compare.csv").display(),
        out.join("compare.png").display()
    );
    Ok(())
}
