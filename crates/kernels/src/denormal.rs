//! Flushing denormal floats to zero.
//!
//! Arithmetic on denormal (subnormal) floats is ~100x slower on x86 than on normal
//! ones. Training makes them: Adam's moment estimates of parameters whose gradient
//! is exactly zero (dead ReLU units) decay geometrically through the denormal range.
//! Setting the FTZ (flush-to-zero) and DAZ (denormals-are-zero) bits of MXCSR makes
//! the CPU treat them as zero; values below 1.2e-38 are far beneath anything that
//! changes a float32 training run.
//!
//! The kernels call [`ensure_current_thread`] on every thread they run on, and
//! [`flush_denormals`] once per process (which also covers candle's and rayon's
//! worker threads, where candle's own element-wise ops run). Set
//! `DIGITLAB_KEEP_DENORMALS=1` to keep IEEE denormals.
use std::cell::Cell;
use std::sync::Once;

/// Whether flushing is enabled (`DIGITLAB_KEEP_DENORMALS` unset or `0`).
pub fn enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| {
        std::env::var("DIGITLAB_KEEP_DENORMALS")
            .map(|v| v.is_empty() || v == "0")
            .unwrap_or(true)
    })
}

/// Sets FTZ and DAZ on the calling thread; returns whether it could.
pub fn set_current_thread() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let mut csr: u32 = 0;
        // SAFETY: stmxcsr/ldmxcsr read and write the SSE control register of this
        // thread; 0x8040 sets FTZ (bit 15) and DAZ (bit 6), both supported by every
        // x86-64 CPU with SSE2 (DAZ: every CPU since the Pentium 4).
        unsafe {
            std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr as *mut u32, options(nostack, preserves_flags));
            csr |= 0x8040;
            std::arch::asm!("ldmxcsr [{}]", in(reg) &csr as *const u32, options(nostack, preserves_flags));
        }
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether FTZ and DAZ are set on the calling thread.
pub fn is_set_on_current_thread() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let mut csr: u32 = 0;
        // SAFETY: reads this thread's SSE control register.
        unsafe { std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr as *mut u32, options(nostack, preserves_flags)) };
        csr & 0x8040 == 0x8040
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

thread_local! {
    static DONE: Cell<bool> = const { Cell::new(false) };
}

/// Flushes denormals on the calling thread (once per thread), when enabled.
#[inline]
pub fn ensure_current_thread() {
    if DONE.with(|d| d.get()) {
        return;
    }
    DONE.with(|d| d.set(true));
    if enabled() {
        set_current_thread();
    }
}

/// Flushes denormals on the calling thread, rayon's global pool, candle's thread
/// pool and candle's barrier pool (where its element-wise ops run); the pools only
/// the first time. Does nothing when disabled by `DIGITLAB_KEEP_DENORMALS`.
pub fn flush_denormals() {
    ensure_current_thread();
    static POOLS: Once = Once::new();
    if !enabled() {
        return;
    }
    POOLS.call_once(|| {
        rayon::broadcast(|_| {
            set_current_thread();
            DONE.with(|d| d.set(true));
        });
        candle_core::utils::with_threadpool(|| {
            rayon::broadcast(|_| {
                set_current_thread();
                DONE.with(|d| d.set(true));
            })
        });
        candle_core::utils::barrier_pool().execute(|_| {
            set_current_thread();
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn flushing_turns_denormal_results_into_zero() {
        // Run on a fresh thread so the test does not depend on what others did.
        std::thread::spawn(|| {
            let tiny = std::hint::black_box(1e-30f32);
            let before = std::hint::black_box(tiny) * std::hint::black_box(1e-10f32);
            assert!(
                before > 0.0 && before < f32::MIN_POSITIVE,
                "IEEE default keeps the denormal: {before:e}"
            );
            assert!(set_current_thread());
            assert!(is_set_on_current_thread());
            let after = std::hint::black_box(tiny) * std::hint::black_box(1e-10f32);
            assert_eq!(after, 0.0);
        })
        .join()
        .unwrap();
    }
}
