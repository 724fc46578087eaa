//! `cargo xtask mkl`: Intel MKL's static libraries for the `mkl` feature of
//! digitlab-kernels, from PyPI's `mkl-static` wheel (MKL's Intel Simplified Software
//! License), into a marked folder (default `target/mkl`).
//!
//! stdout carries only the `export MKLROOT=...` line, so `eval "$(cargo xtask mkl)"`
//! works; progress goes to stderr. With the same stamp nothing is downloaded again.
use crate::wheels::{self, absolute, sh_quote};
use anyhow::Result;
use std::path::PathBuf;

/// The wheel (the one the README's sgemm table was measured with).
pub const WHEELS: &[&str] = &["mkl-static==2026.2.0"];

const KIND: wheels::Kind = wheels::Kind {
    stamp_file: "digitlab-mkl.json",
    marker: "digitlab mkl",
    what: "a digitlab MKL folder",
    size: "about 250 MB",
    sentinel: "lib/libmkl_core.a",
    layout: wheels::Layout::DataFiles,
};

pub struct Options {
    pub dir: PathBuf,
    pub python: String,
}

pub fn run(opts: &Options) -> Result<()> {
    let dir = absolute(&opts.dir)?;
    let wheels: Vec<String> = WHEELS.iter().map(|s| s.to_string()).collect();
    let stamp = KIND.read_stamp(&dir)?;
    if KIND.is_installed(&dir, stamp.as_ref(), &wheels) {
        eprintln!(
            "mkl: {} already in {} (nothing to download)",
            wheels.join(" "),
            dir.display()
        );
    } else {
        KIND.install(&dir, &opts.python, &wheels, stamp.is_some())?;
    }
    println!("export MKLROOT={}", sh_quote(&dir));
    Ok(())
}
