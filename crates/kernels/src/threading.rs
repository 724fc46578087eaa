//! Thread policy of the kernels: small shapes stay on the calling thread.
//!
//! Waking other threads costs microseconds, and on a busy machine a thread that
//! waits at a barrier for a descheduled partner costs a whole time slice. Below
//! the thresholds here the work is done where it is asked for; above them it is
//! split over [`threads`] threads (candle's setting: `RAYON_NUM_THREADS`, else the
//! number of physical cores), with gemm's own rayon parallelism for big products.
use std::ops::Range;

/// Threads the kernels may use (candle's `get_num_threads`, at least 1), read once
/// per process: candle's reads `RAYON_NUM_THREADS` and parses `/proc/cpuinfo` on
/// every call, which was about 15% of a batch-1 MLP step (perf, 2026-12-01).
pub fn threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| candle_core::utils::get_num_threads().max(1))
}

/// Matrix products with fewer multiply-adds than this run single-threaded
/// (about 50 µs of work for one core).
pub const GEMM_SERIAL_MAX_MACS: usize = 1 << 21;

/// Loops over fewer elements than this run single-threaded.
pub const LOOP_SERIAL_MAX_ELEMS: usize = 1 << 18;

/// Parallelism for an `m x k` by `k x n` product.
pub fn gemm_parallelism(m: usize, n: usize, k: usize) -> gemm::Parallelism {
    let t = threads();
    if t <= 1 || m.saturating_mul(n).saturating_mul(k) < GEMM_SERIAL_MAX_MACS {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(t)
    }
}

/// How many parts to split `items` independent items into, when each costs about
/// `work_per_item` (elements or multiply-adds) and parallel work must reach
/// `serial_max` to be worth it.
pub fn parts(items: usize, work_per_item: usize, serial_max: usize) -> usize {
    let t = threads();
    if t <= 1 || items <= 1 || items.saturating_mul(work_per_item) < serial_max {
        1
    } else {
        t.min(items)
    }
}

/// Splits `0..items` into `parts` contiguous ranges of nearly equal length.
pub fn split(items: usize, parts: usize) -> Vec<Range<usize>> {
    let parts = parts.clamp(1, items.max(1));
    let base = items / parts;
    let extra = items % parts;
    let mut out = Vec::with_capacity(parts);
    let mut start = 0;
    for p in 0..parts {
        let len = base + usize::from(p < extra);
        out.push(start..start + len);
        start += len;
    }
    out
}

/// Runs `f(part_index, range)` for each range of `split(items, parts)`, on rayon's
/// pool when there is more than one part, and collects the results in order.
pub fn map_ranges<R: Send>(items: usize, parts: usize, f: impl Fn(usize, Range<usize>) -> R + Sync) -> Vec<R> {
    let ranges = split(items, parts);
    if ranges.len() == 1 {
        return vec![f(0, ranges[0].clone())];
    }
    let mut results: Vec<Option<R>> = (0..ranges.len()).map(|_| None).collect();
    rayon::scope(|s| {
        for ((i, r), slot) in ranges.into_iter().enumerate().zip(results.iter_mut()) {
            let f = &f;
            s.spawn(move |_| {
                crate::denormal::ensure_current_thread();
                *slot = Some(f(i, r));
            });
        }
    });
    results.into_iter().flatten().collect()
}

/// Calls `f(start, chunk)` on consecutive chunks of `out` (`start` is the chunk's
/// offset), split over threads when `out` has at least [`LOOP_SERIAL_MAX_ELEMS`]
/// elements.
pub fn for_each_chunk(out: &mut [f32], f: impl Fn(usize, &mut [f32]) + Sync) {
    let n = parts(out.len(), 1, LOOP_SERIAL_MAX_ELEMS);
    if n <= 1 {
        f(0, out);
        return;
    }
    let size = out.len().div_ceil(n);
    rayon::scope(|s| {
        for (i, chunk) in out.chunks_mut(size).enumerate() {
            let f = &f;
            s.spawn(move |_| {
                crate::denormal::ensure_current_thread();
                f(i * size, chunk)
            });
        }
    });
}

/// Splits `out` (made of `items` consecutive items of `item_len` elements) into
/// `parts` contiguous item ranges and calls `f(part, items_range, slice)` on each,
/// on rayon's pool when there is more than one part; returns the results in order.
pub fn map_parts_mut<R: Send>(
    out: &mut [f32],
    item_len: usize,
    items: usize,
    parts: usize,
    f: impl Fn(usize, Range<usize>, &mut [f32]) -> R + Sync,
) -> Vec<R> {
    let ranges = split(items, parts);
    if ranges.len() == 1 {
        return vec![f(0, ranges[0].clone(), out)];
    }
    let mut slices = Vec::with_capacity(ranges.len());
    let mut rest = out;
    for r in &ranges {
        let (head, tail) = rest.split_at_mut((r.len() * item_len).min(rest.len()));
        slices.push(head);
        rest = tail;
    }
    let mut results: Vec<Option<R>> = (0..ranges.len()).map(|_| None).collect();
    rayon::scope(|s| {
        for (((i, r), slice), slot) in ranges.into_iter().enumerate().zip(slices).zip(results.iter_mut()) {
            let f = &f;
            s.spawn(move |_| {
                crate::denormal::ensure_current_thread();
                *slot = Some(f(i, r, slice));
            });
        }
    });
    results.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_everything_once() {
        for items in 0..20 {
            for parts in 1..6 {
                let r = split(items, parts);
                assert_eq!(r.first().map(|r| r.start), Some(0));
                assert_eq!(r.last().map(|r| r.end), Some(items));
                for w in r.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                }
                let lens: Vec<usize> = r.iter().map(|r| r.len()).collect();
                let (mn, mx) = (lens.iter().min().unwrap(), lens.iter().max().unwrap());
                assert!(mx - mn <= 1, "{items} {parts} {lens:?}");
            }
        }
    }

    #[test]
    fn small_work_stays_serial() {
        assert_eq!(parts(1000, 10, LOOP_SERIAL_MAX_ELEMS), 1);
        assert!(matches!(gemm_parallelism(1, 256, 784), gemm::Parallelism::None));
        let got = map_ranges(10, 3, |i, r| (i, r.len()));
        assert_eq!(got.iter().map(|g| g.1).sum::<usize>(), 10);
        assert_eq!(
            got.iter().map(|g| g.0).collect::<Vec<_>>(),
            (0..got.len()).collect::<Vec<_>>()
        );
    }
}
