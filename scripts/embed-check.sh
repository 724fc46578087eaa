#!/usr/bin/env bash
# Builds and runs a scratch Cargo project OUTSIDE the workspace that depends on
# digitlab-data, digitlab-models and digitlab-finetune by path, so a crate that only
# works inside the workspace (a path, a feature or a file it silently borrows from
# its neighbours) fails here.
#
# It builds into the workspace's target dir with the workspace's release profile and
# lock file, and enables the same features the workspace unifies (see
# crates/cli/Cargo.toml), so candle is reused from `cargo build --release
# --workspace`, not compiled again.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/digitlab-embed.XXXXXX")"
trap 'rm -rf "$SCRATCH"' EXIT
mkdir -p "$SCRATCH/src"

cat > "$SCRATCH/Cargo.toml" <<TOML
[package]
name = "digitlab-embed-check"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
digitlab-data = { path = "$ROOT/crates/data" }
digitlab-models = { path = "$ROOT/crates/models" }
digitlab-finetune = { path = "$ROOT/crates/finetune" }
candle-core = "0.11.1"
candle-nn = "0.11.1"
# The features the workspace's dev-dependencies enable (crates/cli/Cargo.toml), so
# the dependency graph, and with it the build of candle, is the workspace's.
getrandom = { version = "0.4", features = ["std", "sys_rng"] }
rustix = { version = "1", features = ["termios"] }

# Host dependencies (build scripts, proc macros) unify their features among
# themselves: the workspace builds syn 3 with "full" (for a dev-dependency's proc
# macro), and every proc macro built on syn, and every crate using those macros,
# hashes that in. Without this line candle is compiled a second time.
[build-dependencies]
syn = { version = "3", features = ["full"] }

# The workspace's release profile (same settings, same artifacts).
[profile.release]
debug = false
incremental = true
codegen-units = 16

[profile.release.package."*"]
opt-level = 3
TOML

# Same dependency versions as the workspace.
cp "$ROOT/Cargo.lock" "$SCRATCH/Cargo.lock"

cat > "$SCRATCH/src/main.rs" <<'RUST'
use candle_core::{DType, Device, Tensor};
use candle_nn::{ModuleT, VarMap};
use digitlab_data::{catalog, Batcher, DatasetKind, Pipeline, Split};
use digitlab_finetune::{create_model, CreateOptions, WeightsSource};
use digitlab_models::{build_model, InputShape, ModelConfig, SeededVarMap};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // digitlab-data: the embedded digits, one batch.
    let train = catalog::load(DatasetKind::Digits, Split::Train, "data".as_ref())?;
    let pipeline = Pipeline::default();
    let batch = Batcher::new(&train, &pipeline, 16, &Device::Cpu)?
        .training(1)
        .epoch(0)
        .next()
        .expect("one batch")?;
    assert_eq!(batch.images.dims(), [16, 1, 8, 8]);

    // digitlab-models: a softmax regression on that batch.
    let varmap = VarMap::new();
    let vb = SeededVarMap::var_builder(&varmap, 1, DType::F32, &Device::Cpu);
    let input = InputShape { channels: 1, height: 8, width: 8 };
    let model = build_model(&ModelConfig::Softmax, input, 10, vb)?;
    assert_eq!(model.forward_t(&batch.images, false)?.dims(), [16, 10]);

    // digitlab-finetune: a backbone by name with a new head.
    let input = InputShape { channels: 3, height: 32, width: 32 };
    let created = create_model("lenet5", &WeightsSource::None, 10, &CreateOptions::new(input))?;
    let x = Tensor::zeros((2, 3, 32, 32), DType::F32, &Device::Cpu)?;
    assert_eq!(created.model.forward_t(&x, false)?.dims(), [2, 10]);

    // digitlab-finetune's built-in weights (include_bytes! of a file inside the crate).
    let builtin: WeightsSource = "builtin:ccexam-svhn-cnn.safetensors".parse()?;
    let cc = create_model("ccexam_svhn_cnn", &builtin, 10, &CreateOptions::new(input))?;
    assert!(cc.pretrained.is_some());
    assert_eq!(cc.model.forward_t(&x, false)?.dims(), [2, 10]);

    println!("embed-check: digitlab-data, digitlab-models and digitlab-finetune work outside the workspace");
    Ok(())
}
RUST

cd "$SCRATCH"
# --offline: everything is in the lock file and the local registry already.
cargo run --release --offline
