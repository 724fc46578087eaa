//! Shared pieces of the fuzz targets: an allocator that turns any single
//! allocation out of proportion to the input into a crash, so that libFuzzer
//! records an input whose size fields make a parser allocate unboundedly.
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Bytes any single allocation may take per input byte. The parsers may
/// legitimately inflate compressed data (deflate reaches about 1032:1) into a
/// `Vec` that grows by doubling, so the bound is a little over twice that.
pub const BYTES_PER_INPUT_BYTE: usize = 2100;
/// Fixed allowance on top: read buffers (1 MiB chunks in the `.mat` reader,
/// 64 KiB elsewhere), parser tables and the like.
pub const FIXED_ALLOWANCE: usize = 8 << 20;

static LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);
static REPORTING: AtomicBool = AtomicBool::new(false);

/// The global allocator of every target: `System`, plus the check.
pub struct CappedAlloc;

#[inline]
fn check(size: usize) {
    if size > LIMIT.load(Ordering::Relaxed) && !REPORTING.swap(true, Ordering::SeqCst) {
        // Format without allocating: the message goes straight to stderr.
        let mut buf = [0u8; 160];
        let mut w = &mut buf[..];
        let _ = write!(
            w,
            "\ndigitlab-fuzz: allocation of {size} bytes exceeds the cap of {} bytes for this input\n",
            LIMIT.load(Ordering::Relaxed)
        );
        let used = 160 - w.len();
        let _ = std::io::stderr().write_all(&buf[..used]);
        std::process::abort();
    }
}

unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOC: CappedAlloc = CappedAlloc;

/// Caps single allocations at `BYTES_PER_INPUT_BYTE * input_len + FIXED_ALLOWANCE`
/// until dropped (libFuzzer's own allocations between inputs are not capped).
pub struct AllocCap(());

impl AllocCap {
    pub fn for_input(input_len: usize) -> Self {
        let cap = input_len
            .saturating_mul(BYTES_PER_INPUT_BYTE)
            .saturating_add(FIXED_ALLOWANCE);
        LIMIT.store(cap, Ordering::Relaxed);
        AllocCap(())
    }
}

impl Drop for AllocCap {
    fn drop(&mut self) {
        LIMIT.store(usize::MAX, Ordering::Relaxed);
    }
}

/// Splits `data` in two: a little-endian `u32` length prefix gives the size of
/// the first part (clamped to what is there), the rest is the second part.
pub fn split_two(data: &[u8]) -> (&[u8], &[u8]) {
    if data.len() < 4 {
        return (data, &[]);
    }
    let n = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
    let rest = &data[4..];
    rest.split_at(n.min(rest.len()))
}

/// The inverse of [`split_two`] (used to write seed inputs).
pub fn join_two(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut v = (a.len() as u32).to_le_bytes().to_vec();
    v.extend_from_slice(a);
    v.extend_from_slice(b);
    v
}
