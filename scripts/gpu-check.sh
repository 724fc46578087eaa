#!/usr/bin/env bash
# One prepared check for a machine with an NVIDIA GPU (issue 15): runs digitlab's
# CUDA tests from prebuilt binaries, then prints one table of digitlab vs PyTorch on
# the same GPU (f32 and bf16) and writes it to a file. No Rust toolchain or network.
#
#   bash gpu-check.sh PACK_DIR [TABLE_FILE]       (PACK_DIR made by scripts/gpu-pack.sh)
#
# CUDA 13 libraries (libcudart.so.13, libcublas.so.13, libcublasLt.so.13,
# libcurand.so.10, libnvrtc.so.13) come from DIGITLAB_CUDA_LIBS (a colon-separated
# list of folders), else from the python3 environment's `nvidia` packages (PyTorch
# CUDA 13 wheels, or `pip install nvidia-cublas nvidia-cuda-nvrtc nvidia-curand
# nvidia-cuda-runtime` of 13.x); libcuda.so.1 is the NVIDIA driver's (580 or newer).
# The PyTorch column needs torch with CUDA in that python3 (DIGITLAB_PYTHON picks
# another interpreter); without it the column says so and the rest still runs.
# Environment: DIGITLAB_GPU_SECONDS (timed seconds per run, default 3).
set -uo pipefail
PACK="${1:?usage: gpu-check.sh PACK_DIR [TABLE_FILE]}"
PACK="$(cd "$PACK" && pwd)"
TABLE="${2:-$PWD/gpu-check-$(date -u +%Y%m%dT%H%M%SZ).md}"
PY="${DIGITLAB_PYTHON:-python3}"
SECONDS_PER_RUN="${DIGITLAB_GPU_SECONDS:-3}"
started=$SECONDS
fail=0

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

# Unpack the binaries (once) next to the pack.
BIN="$(mktemp -d "${TMPDIR:-/tmp}/digitlab-gpu.XXXXXX")"
trap 'rm -rf "$BIN"' EXIT
for f in digitlab digitlab-bench cli-cuda tests-cuda; do
  if [ -f "$PACK/$f.xz" ]; then xz -dc "$PACK/$f.xz" >"$BIN/$f"; elif [ -f "$PACK/$f" ]; then cp "$PACK/$f" "$BIN/$f"; else
    echo "error: $PACK has neither $f nor $f.xz (make it with scripts/gpu-pack.sh)" >&2; exit 1
  fi
  chmod +x "$BIN/$f"
done

# CUDA libraries.
libs="${DIGITLAB_CUDA_LIBS:-}"
if [ -z "$libs" ]; then
  libs="$("$PY" -c 'import nvidia, os, glob; print(":".join(sorted({os.path.dirname(p) for d in nvidia.__path__ for p in glob.glob(os.path.join(d, "**", "lib*.so*"), recursive=True)})))' 2>/dev/null || true)"
fi
[ -n "$libs" ] && export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
missing="$(ldd "$BIN/digitlab" | awk '/not found/ {print $1}')"
if [ -n "$missing" ]; then
  echo "error: these libraries are not found: $(echo $missing)" >&2
  echo "set DIGITLAB_CUDA_LIBS to the folders holding them, or use a python3 whose nvidia-* packages have them" >&2
  exit 1
fi

# 1. The CUDA tests (the cli tests find the binary and configs through these).
export DIGITLAB_BIN="$BIN/digitlab" DIGITLAB_CONFIGS="$PACK/configs"
tests_status="passed"
for t in tests-cuda cli-cuda; do
  echo "== $t"
  if ! timeout 240 "$BIN/$t" --test-threads 1 2>&1 | tee "$BIN/$t.log"; then tests_status="FAILED ($t)"; fail=1
  elif grep -Eq '; [1-9][0-9]* ignored' "$BIN/$t.log"; then tests_status="NOT RUN ($t ignored its tests: not a --features cuda build)"; fail=1; fi
done

# 2. The table.
has_torch=0
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null && has_torch=1
field() { "$PY" -c 'import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])[sys.argv[1]])' "$1" 2>/dev/null; }
fmt() { [ -n "$1" ] && printf "%'.0f" "$1" 2>/dev/null || echo "-"; }
rows=""
for w in gpu_mlp_sgd_b100 gpu_mlp_sgd_b1024 gpu_lenet5_adam_b256 gpu_resnet18_feat224_b256 gpu_vgg16_feat224_b256 gpu_transfer_svhn; do
  for dt in f32 bf16; do
    secs=$SECONDS_PER_RUN; warm=3
    [ "$w" = gpu_transfer_svhn ] && { secs=0; warm=1; }
    d="$(timeout 120 "$BIN/digitlab-bench" "$w" --device cuda --dtype "$dt" --seconds "$secs" --warmup "$warm" --min-steps 2 | field samples_per_second)"
    [ -z "$d" ] && { echo "warning: digitlab $w $dt failed" >&2; fail=1; }
    p=""
    if [ "$has_torch" = 1 ]; then
      p="$(timeout 120 "$PY" "$PACK/gpu_reference.py" "$w" --device cuda --dtype "$dt" --seconds "$secs" --warmup "$warm" --min-steps 2 | field samples_per_second)"
    fi
    ratio="-"
    [ -n "$d" ] && [ -n "$p" ] && ratio="$("$PY" -c "print(f'{$d/$p:.2f}')")"
    rows+="| $w | $dt | $(fmt "$d") | $(fmt "$p") | $ratio |"$'\n'
    echo "$w $dt: digitlab ${d:-failed} / pytorch ${p:-n/a} samples/s"
  done
done

gpu="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
torch_v="$([ "$has_torch" = 1 ] && "$PY" -c 'import torch; print(torch.__version__)' || echo "not available")"
{
  echo "# digitlab vs PyTorch on ${gpu:-unknown GPU} ($(date -u +%Y-%m-%d), commit $(cat "$PACK/commit" 2>/dev/null || echo unknown))"
  echo
  echo "CUDA tests: $tests_status. PyTorch: $torch_v. Samples (images, or training images of the transfer pipeline) per second, one timed run of at least ${SECONDS_PER_RUN} s after warm-up (the transfer pipeline: 2 full passes); bf16 = mixed precision (f32 weights) on both sides."
  echo
  echo "| workload | dtype | digitlab samples/s | PyTorch samples/s | ratio |"
  echo "| --- | --- | ---: | ---: | ---: |"
  printf '%s' "$rows"
  echo
  echo "Wall time of gpu-check.sh: $((SECONDS - started)) s."
} | tee "$TABLE"
echo "table written to $TABLE"
exit $fail
