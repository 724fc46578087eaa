#!/usr/bin/env bash
# Builds digitlab's cuda binaries and collects everything scripts/gpu-check.sh needs
# into one folder (default target/gpu-pack), xz-compressed to stay under 64 MiB, for
# a machine with an NVIDIA GPU but no Rust toolchain or network.
#
#   scripts/gpu-pack.sh [OUT_DIR]
#   DIGITLAB_GPU_FEATURES=cuda,cudnn scripts/gpu-pack.sh target/gpu-pack-cudnn   # with cuDNN
#
# Needs the CUDA toolchain (`cargo xtask cuda-toolchain`, run here when CUDA_ROOT
# is not set) and builds in target/cuda. OUT_DIR must be new, empty, or a folder this
# script made (it carries the file .digitlab-gpu-pack); it is never reused otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-target/gpu-pack}"
LIMIT_MIB=64
FEATURES="${DIGITLAB_GPU_FEATURES:-cuda}"

if [ -e "$OUT" ] && [ -n "$(ls -A "$OUT")" ] && [ ! -f "$OUT/.digitlab-gpu-pack" ]; then
  echo "error: $OUT exists and was not made by gpu-pack.sh (no .digitlab-gpu-pack): choose another folder" >&2
  exit 1
fi

if [ -z "${CUDA_ROOT:-}" ]; then
  command -v cargo >/dev/null || { echo "error: cargo is needed to build" >&2; exit 1; }
  # The xtask of the CPU build when there is one (`cargo xtask` would resolve its own
  # feature set and compile candle once more).
  if [ -x target/release/xtask ]; then env_lines="$(target/release/xtask cuda-toolchain)"; else env_lines="$(cargo xtask cuda-toolchain)"; fi
  eval "$env_lines"
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target/cuda}"

# The binaries: digitlab, digitlab-bench and the two CUDA test executables, whose
# paths cargo reports in its JSON messages.
msgs="$(mktemp)"
trap 'rm -f "$msgs"' EXIT
cargo build --release --workspace --features "$FEATURES" --all-targets >&2
cargo test --release --workspace --features "$FEATURES" --no-run --message-format=json >"$msgs"
tests_exe="$(python3 - "$msgs" <<'EOF'
import json, sys
found = {}
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cuda":
        pkg = m["package_id"]
        key = "cli-cuda" if "crates/cli" in pkg or "digitlab-cli" in pkg else "tests-cuda"
        found[key] = m["executable"]
for k, v in sorted(found.items()):
    print(f"{k}\t{v}")
EOF
)"
[ "$(printf '%s\n' "$tests_exe" | grep -c .)" = 2 ] || { echo "error: expected two cuda test executables, got: $tests_exe" >&2; exit 1; }

stage="$(mktemp -d "${OUT%/}.partial.XXXXXX")"
cp "$CARGO_TARGET_DIR/release/digitlab" "$CARGO_TARGET_DIR/release/digitlab-bench" "$stage/"
while IFS=$'\t' read -r name exe; do cp "$exe" "$stage/$name"; done <<<"$tests_exe"
mkdir -p "$stage/configs"
cp configs/quickstart.toml "$stage/configs/"
cp scripts/gpu-check.sh scripts/gpu_reference.py benches/reference/bench.py "$stage/"
xz -T0 -6 "$stage/digitlab" "$stage/digitlab-bench" "$stage/cli-cuda" "$stage/tests-cuda"
{ git rev-parse HEAD 2>/dev/null || echo unknown; } | sed "s/\$/ (features $FEATURES)/" >"$stage/commit"
touch "$stage/.digitlab-gpu-pack"
size_mib=$(( $(du -sk "$stage" | cut -f1) / 1024 ))
if [ "$size_mib" -gt "$LIMIT_MIB" ]; then
  rm -rf "$stage"
  echo "error: the pack is ${size_mib} MiB, over ${LIMIT_MIB} MiB" >&2
  exit 1
fi
# Only a folder this script made (checked above) is replaced.
rm -rf "$OUT"
mv "$stage" "$OUT"
echo "gpu pack: $OUT (${size_mib} MiB); on the GPU machine: bash $OUT/gpu-check.sh $OUT" >&2
