//! Links Intel MKL statically when the `mkl` feature is on (see `src/mkl.rs`).
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=MKLROOT");
    if std::env::var_os("CARGO_FEATURE_MKL").is_none() {
        return;
    }
    let Some(root) = std::env::var_os("MKLROOT") else {
        panic!(
            "digitlab-kernels: the `mkl` feature needs MKLROOT, a folder with lib/libmkl_core.a \
             (PyPI's mkl-static wheel or oneAPI MKL): run `eval \"$(cargo xtask mkl)\"` first"
        );
    };
    let lib = PathBuf::from(root).join("lib");
    for name in ["mkl_intel_lp64", "mkl_sequential", "mkl_core"] {
        let file = lib.join(format!("lib{name}.a"));
        if !file.is_file() {
            panic!(
                "digitlab-kernels: the `mkl` feature needs {} (MKLROOT/lib/lib{name}.a)",
                file.display()
            );
        }
        println!("cargo:rerun-if-changed={}", file.display());
    }
    // The three archives call each other, so the linker must see them as one group,
    // which Cargo cannot say (no --start-group, and a library named twice is refused).
    // An implicit linker script can: GNU ld and lld read a text "library" as a script.
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let group: Vec<String> = ["mkl_intel_lp64", "mkl_sequential", "mkl_core"]
        .iter()
        .map(|name| format!("\"{}\"", lib.join(format!("lib{name}.a")).display()))
        .collect();
    let script = out.join("libdigitlab_mkl.so");
    std::fs::write(&script, format!("GROUP ( {} )\n", group.join(" ")))
        .unwrap_or_else(|e| panic!("digitlab-kernels: cannot write {}: {e}", script.display()));
    println!("cargo:rustc-link-search=native={}", out.display());
    println!("cargo:rustc-link-lib=dylib=digitlab_mkl");
    for name in ["pthread", "m", "dl"] {
        println!("cargo:rustc-link-lib=dylib={name}");
    }
}
