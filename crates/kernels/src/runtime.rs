//! Process-wide settings the kernels apply once, on first use.
//!
//! 1. Denormal flushing ([`crate::denormal::flush_denormals`]).
//! 2. glibc malloc: tensors of a few hundred KiB (weights, their gradients, the
//!    optimizer's temporaries) are allocated and freed every step. By default glibc
//!    serves blocks above its mmap threshold with a fresh `mmap` (and the heap top
//!    is trimmed back to the OS when more than the trim threshold is free), so every
//!    step pays page faults and zeroing by the kernel for memory it just released:
//!    measured here, an MLP batch-1 SGD step went from ~1.7 ms to ~0.55 ms without
//!    it (per-phase timing, one thread). [`tune_malloc`] raises
//!    the mmap threshold to 32 MiB (glibc's maximum) and the trim threshold to
//!    256 MiB, so freed blocks are reused. Peak RSS is what the program holds at
//!    once plus at most 256 MiB of free heap kept for reuse.
//!
//! Opt out with `DIGITLAB_KEEP_DENORMALS=1` and `DIGITLAB_DEFAULT_MALLOC=1`.
//!
//! For binaries, [`pin_thread_count`] (called first thing in `main`) spares candle
//! a `/proc/cpuinfo` parse per matrix product, and [`shorten_pool_spin`] keeps
//! candle's idle workers from spinning on the cores the kernels' threads need.
use std::sync::Once;

/// Sets `RAYON_NUM_THREADS` to candle's thread count (the physical cores) when it is
/// unset. candle's `get_num_threads`, which each of its CPU matrix products calls,
/// then reads one environment variable instead of parsing `/proc/cpuinfo`; in a
/// batch-1 MLP step that parse was about 15% of the main thread's time (perf,
/// 2026-12-01). rayon's global pool gets the same size candle uses. Returns the
/// count.
///
/// Call it at the start of `main`, before any thread is started: changing the
/// environment races with other threads (C code included) reading it.
pub fn pin_thread_count() -> usize {
    if let Some(n) = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
    {
        return n;
    }
    let n = candle_core::utils::get_num_threads().max(1);
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    n
}

/// Spins of candle's barrier-pool workers before they sleep, set by
/// [`shorten_pool_spin`] (candle's default is 25,000).
pub const POOL_SPIN_LIMIT: u32 = 300;

/// Sets `CANDLE_BARRIER_POOL_SPIN_LIMIT` to [`POOL_SPIN_LIMIT`] when it is unset, and
/// returns the limit in force. After each of candle's parallel elementwise ops its
/// workers spin up to 25,000 pause instructions (about half a millisecond) waiting
/// for the next one; meanwhile the kernels here run on rayon's threads, which
/// need those same cores. In a LeNet-5 training step candle's worker thread took
/// 15% of all samples (perf, 2 cores), 2% with the shorter limit, and the step ran
/// 15-30% faster (alternating runs, 2026-12-02, in the README). With it a worker
/// sleeps after a few microseconds and is woken by candle's next op.
///
/// Call it at the start of `main`, before any thread is started (like
/// [`pin_thread_count`]).
pub fn shorten_pool_spin() -> u32 {
    const VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
    if let Some(n) = std::env::var(VAR).ok().and_then(|v| v.parse::<u32>().ok()) {
        return n;
    }
    std::env::set_var(VAR, POOL_SPIN_LIMIT.to_string());
    POOL_SPIN_LIMIT
}

/// Applies the settings (once per process; later calls only cover the calling
/// thread's denormal mode).
#[inline]
pub fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        tune_malloc();
    });
    crate::denormal::flush_denormals();
}

/// Whether [`tune_malloc`] may change the allocator (`DIGITLAB_DEFAULT_MALLOC` unset or `0`).
pub fn malloc_tuning_enabled() -> bool {
    std::env::var("DIGITLAB_DEFAULT_MALLOC")
        .map(|v| v.is_empty() || v == "0")
        .unwrap_or(true)
}

/// Raises glibc's mmap and trim thresholds (see the module docs); returns whether
/// both settings were accepted. Does nothing on other C libraries, or when disabled.
pub fn tune_malloc() -> bool {
    if !malloc_tuning_enabled() {
        return false;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const M_TRIM_THRESHOLD: std::os::raw::c_int = -1;
        const M_MMAP_THRESHOLD: std::os::raw::c_int = -3;
        extern "C" {
            fn mallopt(param: std::os::raw::c_int, value: std::os::raw::c_int) -> std::os::raw::c_int;
        }
        // SAFETY: mallopt only adjusts allocator parameters; glibc documents both
        // parameters and returns 0 for values it rejects.
        unsafe { mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 && mallopt(M_TRIM_THRESHOLD, 256 << 20) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_accepts_the_settings() {
        if super::malloc_tuning_enabled() {
            assert!(super::tune_malloc());
        }
    }
}
