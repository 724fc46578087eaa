#!/usr/bin/env bash
# Bounded fuzzing of every cargo-fuzz target, for CI and for longer local runs.
#
#   fuzz/smoke.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Defaults: 20 seconds per target, all targets (idx mat checkpoint config pth).
# Builds the targets (the first build compiles candle with coverage
# instrumentation: minutes), then runs each from its seed corpus for the given
# time. Exits 1 if a target crashes (the input is saved under
# fuzz/artifacts/<target>/; replay it with `cargo fuzz run <target> <file>`),
# and 0 with "skipped: <reason>" when cargo-fuzz or a C++ compiler is missing,
# so that CI can call it unconditionally.
#
# Environment: FUZZ_SANITIZER (default `none`; `address` needs a nightly
# toolchain or RUSTC_BOOTSTRAP=1 and rebuilds everything), FUZZ_ARGS (extra
# libFuzzer flags); CARGO_BUILD_JOBS limits build parallelism as usual.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS="${1:-20}"
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=(idx mat checkpoint config pth)
case "$SECS" in '' | *[!0-9]*) echo "fuzz smoke: SECONDS_PER_TARGET must be a whole number, got '$SECS'" >&2; exit 2 ;; esac

skip() {
  echo "fuzz smoke: skipped: $1"
  exit 0
}
command -v cargo >/dev/null || skip "cargo is not installed"
cargo fuzz --version >/dev/null 2>&1 || skip "cargo-fuzz is not installed (install it with: cargo install cargo-fuzz)"
command -v c++ >/dev/null || command -v g++ >/dev/null || command -v clang++ >/dev/null ||
  skip "no C++ compiler (libFuzzer is C++; install g++ or clang)"

SANITIZER="${FUZZ_SANITIZER:-none}"
BUILD_FLAGS=(--sanitizer "$SANITIZER" --codegen-units 16)

# Seed corpora: small valid inputs kept in git, plus the repository's own files.
seeds_for() {
  case "$1" in
    idx) echo fuzz/seeds/idx ;;
    mat) echo fuzz/seeds/mat ;;
    checkpoint) echo fuzz/seeds/checkpoint ;;
    config) echo configs ;;
    pth) echo fuzz/seeds/pth ;;
    *) echo "fuzz smoke: unknown target '$1' (known: idx mat checkpoint config pth)" >&2; exit 2 ;;
  esac
}

start=$(date +%s)
echo "fuzz smoke: building targets (sanitizer: $SANITIZER)"
cargo fuzz build "${BUILD_FLAGS[@]}"
echo "fuzz smoke: build took $(($(date +%s) - start)) s"

failed=()
for t in "${TARGETS[@]}"; do
  seeds=$(seeds_for "$t")
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  log="fuzz/artifacts/$t/smoke.log"
  # -rss_limit_mb: no input may make a target use 2 GiB. The targets also abort
  # on any single allocation out of proportion to the input (fuzz/src/lib.rs).
  # Inputs that once crashed or over-allocated (also replayed by the normal test suite).
  [ -d "fuzz/regressions/$t" ] && seeds="$seeds fuzz/regressions/$t"
  # shellcheck disable=SC2086
  if cargo fuzz run "${BUILD_FLAGS[@]}" "$t" "fuzz/corpus/$t" $seeds -- \
    -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="fuzz/artifacts/$t/" ${FUZZ_ARGS:-} >"$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    echo "fuzz smoke: $t: ok, ${runs:-?} inputs in ${SECS} s"
  else
    echo "fuzz smoke: $t: FAILED (log: $log)"
    grep -E "panicked|ERROR|allocation of|SUMMARY|Test unit written" "$log" | head -n 10 || tail -n 20 "$log"
    failed+=("$t")
  fi
done
echo "fuzz smoke: total $(($(date +%s) - start)) s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz smoke: crashes in: ${failed[*]}"
  exit 1
fi
