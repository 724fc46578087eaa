//! `cargo xtask cuda-toolchain`: a CUDA compiler and link-time stand-ins for the
//! `cuda` build on any Linux machine, from PyPI wheels alone.
//!
//! The folder it fills (default `target/cuda-toolchain`) holds:
//! - `nvidia/cu13/`: NVIDIA's `nvcc`, headers, `cicc`/NVVM and the real CUDA runtime
//!   (`lib/libcudart.so.13`), installed by one `pip install --no-deps --target` call
//!   (a later `--target --upgrade` of one wheel would wipe the others);
//! - `nvidia/cu13/lib/stubs/`: link-time stand-ins for the libraries candle's cudarc
//!   links against (`libcuda`, `libnvrtc`, `libcurand`, `libcublas`, `libcublasLt`,
//!   `libcudnn`), tiny shared objects with every function name cudarc declares, under
//!   the real sonames, plus `libcudart.so` pointing at the real runtime (candle-kernels'
//!   static `moe` library needs its internal `__cuda*` symbols). cudarc's build script
//!   searches `$CUDA_ROOT/lib/stubs` itself, like the `stubs` folder of NVIDIA's
//!   toolkit, so no `RUSTFLAGS` is needed. The files are named `libX.so`, not the
//!   soname, so a run-time loader looking for `libcuda.so.1` never picks them up; and
//!   if one is ever loaded anyway, its constructor aborts with a message;
//! - `digitlab-cuda-toolchain.json`: the marker and stamp (wheels and the cudarc
//!   version the stand-ins were made from). Same stamp: nothing is downloaded again.
//!
//! stdout carries only the `export` lines, so `eval "$(cargo xtask cuda-toolchain)"`
//! works; progress goes to stderr.
use crate::wheels::{self, absolute, sh_quote};
use anyhow::{ensure, Context, Result};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The wheels, installed together (see the module docs). `nvidia-nvvm` provides
/// `cicc`, without which nvcc fails.
pub const WHEELS: &[&str] = &[
    "nvidia-cuda-nvcc==13.0.*",
    "nvidia-cuda-runtime==13.0.*",
    "nvidia-cuda-cccl==13.0.*",
    "nvidia-cuda-crt==13.0.*",
    "nvidia-nvvm==13.0.*",
];

/// Libraries cudarc links with `dynamic-linking`: (cudarc `sys` module, link name,
/// soname of the CUDA 13 release).
const STAND_INS: &[(&str, &str, &str)] = &[
    ("driver", "cuda", "libcuda.so.1"),
    ("nvrtc", "nvrtc", "libnvrtc.so.13"),
    ("curand", "curand", "libcurand.so.10"),
    ("cublas", "cublas", "libcublas.so.13"),
    ("cublaslt", "cublasLt", "libcublasLt.so.13"),
    // Only linked with the `cudnn` feature.
    ("cudnn", "cudnn", "libcudnn.so.9"),
];

const KIND: wheels::Kind = wheels::Kind {
    stamp_file: "digitlab-cuda-toolchain.json",
    marker: "digitlab cuda-toolchain",
    what: "a digitlab CUDA toolchain",
    size: "about 270 MB",
    sentinel: "nvidia/cu13/bin/nvcc",
    layout: wheels::Layout::Packages,
};
/// The CUDA root inside the folder, as the wheels lay it out.
const CUDA_SUBDIR: &str = "nvidia/cu13";

pub struct Options {
    pub dir: PathBuf,
    pub compute_cap: u32,
    pub python: String,
    pub target_dir: PathBuf,
}

pub fn run(opts: &Options) -> Result<()> {
    ensure!(
        (30..=200).contains(&opts.compute_cap),
        "--compute-cap {}: expected a CUDA compute capability as major*10+minor, e.g. 90 for H100/H200, 80 for A100, 89 for L4/RTX 40xx",
        opts.compute_cap
    );
    let dir = absolute(&opts.dir)?;
    let wheels: Vec<String> = WHEELS.iter().map(|s| s.to_string()).collect();
    let stamp = KIND.read_stamp(&dir)?;
    let cuda_root = dir.join(CUDA_SUBDIR);

    if KIND.is_installed(&dir, stamp.as_ref(), &wheels) {
        eprintln!(
            "cuda-toolchain: wheels already in {} (nothing to download)",
            dir.display()
        );
    } else {
        KIND.install(&dir, &opts.python, &wheels, stamp.is_some())?;
    }

    let cudarc = cudarc_source()?;
    let from = format!("cudarc {}", cudarc.version);
    let stamp = KIND
        .read_stamp(&dir)?
        .context("the toolchain stamp vanished during the install")?;
    let stubs = cuda_root.join("lib/stubs");
    if stamp.stand_ins_from != from || !stubs.join("libcuda.so").is_file() {
        build_stand_ins(&cuda_root, &cudarc.src)?;
        KIND.write_stamp(
            &dir,
            &wheels::Stamp {
                stand_ins_from: from,
                ..stamp
            },
        )?;
    } else {
        eprintln!("cuda-toolchain: link stand-ins up to date ({from})");
    }

    let bin = cuda_root.join("bin");
    println!("export PATH={}:\"$PATH\"", sh_quote(&bin));
    println!("export CUDA_ROOT={}", sh_quote(&cuda_root));
    println!("export CUDA_PATH={}", sh_quote(&cuda_root));
    println!("export CUDA_COMPUTE_CAP={}", opts.compute_cap);
    println!("export CARGO_TARGET_DIR={}", sh_quote(&absolute(&opts.target_dir)?));
    Ok(())
}

struct CudarcSource {
    version: String,
    src: PathBuf,
}

/// cudarc's source, found by `cargo metadata` with the `cuda` feature on (which also
/// downloads it when it is not in the cargo registry yet).
fn cudarc_source() -> Result<CudarcSource> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo)
        .current_dir(crate::workspace_root())
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--features",
            "digitlab-cli/cuda",
        ])
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run `{cargo} metadata`"))?;
    ensure!(out.status.success(), "`cargo metadata` failed ({})", out.status);
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("`cargo metadata` printed invalid JSON")?;
    let pkg = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "cudarc")
        .context("cudarc is not among the workspace's packages with the `cuda` feature")?;
    let manifest = PathBuf::from(pkg["manifest_path"].as_str().context("cudarc has no manifest_path")?);
    Ok(CudarcSource {
        version: pkg["version"].as_str().unwrap_or("?").to_string(),
        src: manifest
            .parent()
            .context("cudarc's manifest has no folder")?
            .join("src"),
    })
}

/// Every function name a cudarc `sys/mod.rs` declares (`pub unsafe fn NAME(` or
/// `pub fn NAME(` at the start of a line).
pub fn declared_functions(source: &str) -> BTreeSet<String> {
    source
        .lines()
        .filter_map(|l| l.strip_prefix("pub unsafe fn ").or_else(|| l.strip_prefix("pub fn ")))
        .filter_map(|rest| {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            (!name.is_empty() && rest[name.len()..].starts_with(['(', '<'])).then_some(name)
        })
        .collect()
}

/// The C source of one stand-in: each name a function that aborts, and a constructor
/// that aborts with a message if the library is ever loaded at run time.
pub fn stand_in_source(soname: &str, names: &BTreeSet<String>) -> String {
    let mut c = format!(
        "/* Link-time stand-in for {soname}, generated by `cargo xtask cuda-toolchain`.\n   \
         It lets a CPU-only machine link digitlab's cuda build; it must never be loaded. */\n\
         #include <stdio.h>\n#include <stdlib.h>\n\
         __attribute__((constructor)) static void digitlab_stand_in_loaded(void) {{\n  \
         fputs(\"digitlab: the link-time stand-in of {soname} was loaded; install the NVIDIA driver / CUDA libraries and keep target/cuda-toolchain off LD_LIBRARY_PATH\\n\", stderr);\n  \
         abort();\n}}\n"
    );
    for n in names {
        c.push_str(&format!("void {n}(void) {{ abort(); }}\n"));
    }
    c
}

fn build_stand_ins(cuda_root: &Path, cudarc_src: &Path) -> Result<()> {
    let stubs = cuda_root.join("lib/stubs");
    let staging = cuda_root.join(format!("lib/.stubs.partial-{}", std::process::id()));
    std::fs::create_dir_all(&staging).with_context(|| format!("cannot create {}", staging.display()))?;
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    for (module, link_name, soname) in STAND_INS {
        let rs = cudarc_src.join(module).join("sys/mod.rs");
        let text = std::fs::read_to_string(&rs).with_context(|| format!("cannot read {}", rs.display()))?;
        let names = declared_functions(&text);
        ensure!(
            !names.is_empty(),
            "{}: no `pub unsafe fn` found (cudarc's layout changed)",
            rs.display()
        );
        let c_file = staging.join(format!("{link_name}.c"));
        std::fs::write(&c_file, stand_in_source(soname, &names))
            .with_context(|| format!("cannot write {}", c_file.display()))?;
        let so = staging.join(format!("lib{link_name}.so"));
        let out = Command::new(&cc)
            .args(["-shared", "-fPIC", "-O0", "-w"])
            .arg(format!("-Wl,-soname,{soname}"))
            .arg("-o")
            .arg(&so)
            .arg(&c_file)
            .output()
            .with_context(|| format!("cannot run the C compiler `{cc}` (set CC)"))?;
        ensure!(
            out.status.success(),
            "`{cc}` failed on {}:\n{}",
            c_file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("cuda-toolchain: stand-in {soname}: {} functions", names.len());
    }
    // The real runtime, under the name the linker looks for.
    let cudart = cuda_root.join("lib/libcudart.so.13");
    ensure!(
        cudart.is_file(),
        "{} is missing (nvidia-cuda-runtime wheel)",
        cudart.display()
    );
    std::os::unix::fs::symlink("../libcudart.so.13", staging.join("libcudart.so"))
        .context("cannot link libcudart.so")?;
    if stubs.exists() {
        std::fs::remove_dir_all(&stubs).with_context(|| format!("cannot replace {}", stubs.display()))?;
    }
    std::fs::rename(&staging, &stubs).with_context(|| format!("cannot move the stand-ins to {}", stubs.display()))?;
    check_link(&cc, &stubs)
}

/// Links a tiny C program the way cargo links the cuda build (`-lcuda -lnvrtc
/// -lcurand -lcublas -lcublasLt -lcudart` from the stubs folder): the stand-ins and
/// the real runtime resolve, under the sonames a GPU machine provides.
fn check_link(cc: &str, stubs: &Path) -> Result<()> {
    let dir = stubs.join(format!(".link-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let c = dir.join("main.c");
    std::fs::write(
        &c,
        "int cuInit(unsigned); int nvrtcVersion(int*, int*); int curandCreateGenerator(void*, int);\n\
         int cublasCreate_v2(void*); int cublasLtCreate(void*); int cudaGetDeviceCount(int*);\n\
         int main(void) { int n = 0; return cudaGetDeviceCount(&n) + cuInit(0) + nvrtcVersion(0, 0)\n\
         + curandCreateGenerator(0, 0) + cublasCreate_v2(0) + cublasLtCreate(0); }\n",
    )?;
    let out = Command::new(cc)
        .arg("-o")
        .arg(dir.join("main"))
        .arg(&c)
        .arg("-L")
        .arg(stubs)
        .args(["-lcuda", "-lnvrtc", "-lcurand", "-lcublas", "-lcublasLt", "-lcudart"])
        .output()
        .with_context(|| format!("cannot run `{cc}`"))?;
    let _ = std::fs::remove_dir_all(&dir);
    ensure!(
        out.status.success(),
        "linking a test program against the stand-ins in {} failed:\n{}",
        stubs.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("cuda-toolchain: a test program links against the stand-ins and the real libcudart");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_functions_finds_pub_fns_only() {
        let src = "pub type X = u32;\npub unsafe fn cuInit(Flags: u32) -> u32 {\n    extern \"C\" { fn cuInit(f: u32) -> u32; }\n}\npub fn helper<T>() {}\n  pub unsafe fn nested() {}\npub unsafe fn cuMemAlloc_v2(p: *mut u64) -> u32 {}\npub struct S;\n";
        let names: Vec<_> = declared_functions(src).into_iter().collect();
        assert_eq!(names, ["cuInit", "cuMemAlloc_v2", "helper"]);
    }

    #[test]
    fn stand_in_source_defines_each_name() {
        let names: BTreeSet<String> = ["cuInit".to_string(), "cuLaunchKernel".to_string()].into();
        let c = stand_in_source("libcuda.so.1", &names);
        assert!(c.contains("void cuInit(void) { abort(); }"));
        assert!(c.contains("void cuLaunchKernel(void) { abort(); }"));
        assert!(c.contains("constructor"));
    }
}
