//! Regression tests for the IDX and `.mat` readers' hardening (issue 8): inputs
//! whose size fields lie must give an error naming the file, never a panic, and
//! never an allocation sized from the lie instead of from the bytes really there.
//!
//! This test binary counts the largest single allocation made by the current
//! thread while a check runs (the same rule as the fuzz targets' capped
//! allocator in `fuzz/src/lib.rs`). The inputs are also in
//! `fuzz/regressions/{idx,mat}/`, which `replay_fuzz_regression_inputs` runs.
use digitlab_data::idx::{decode_maybe_gz, encode_idx, idx_pair_from_bytes, parse_idx, IMAGES_MAGIC, LABELS_MAGIC};
use digitlab_data::mat::{list_mat_variables_from, read_mat_variables_from};
use digitlab_data::svhn::load_svhn_mat_from;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

struct PeakAlloc;

fn note(size: usize) {
    let _ = TRACKING.try_with(|t| {
        if t.get() {
            let _ = PEAK.try_with(|p| p.set(p.get().max(size)));
        }
    });
}

unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

/// Runs `f`, returning its result and the largest single allocation it made.
fn peak_alloc<T>(f: impl FnOnce() -> T) -> (T, usize) {
    PEAK.with(|p| p.set(0));
    TRACKING.with(|t| t.set(true));
    let out = f();
    TRACKING.with(|t| t.set(false));
    (out, PEAK.with(|p| p.get()))
}

/// The fuzz targets' cap: 2100 bytes per input byte plus 8 MiB.
fn cap(input_len: usize) -> usize {
    input_len * 2100 + (8 << 20)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn names() -> Vec<String> {
    (0..10).map(|d| d.to_string()).collect()
}

/// An IDX images header with the given dimensions and no data.
fn images_header(dims: [u32; 3]) -> Vec<u8> {
    let mut v = IMAGES_MAGIC.to_be_bytes().to_vec();
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v
}

fn regressions_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/regressions")
        .join(target)
}

/// A zero dimension makes the payload empty whatever the others say; the other
/// dimensions (up to 2^32 - 1) were then used to size images.
#[test]
fn the_allocation_tracker_sees_large_allocations() {
    let (v, peak) = peak_alloc(|| vec![1u8; 5 << 20]);
    assert_eq!(v.len(), 5 << 20);
    assert!(peak >= 5 << 20, "{peak}");
    let ((), peak) = peak_alloc(|| ());
    assert_eq!(peak, 0);
}

#[test]
fn idx_zero_image_count_with_huge_sides_is_an_error() {
    let images = images_header([0, u32::MAX, u32::MAX]);
    let labels = encode_idx(&[0], &[]);
    let (ip, lp) = (Path::new("images.idx"), Path::new("labels.idx"));
    let (r, peak) = peak_alloc(|| idx_pair_from_bytes((&images, ip), (&labels, lp), "t", names()));
    let e = r.expect_err("zero images accepted").to_string();
    assert!(e.contains("images.idx") && e.contains("at least one image"), "{e}");
    assert!(peak < 1 << 20, "allocated {peak} bytes for an empty file");
    for dims in [[5, 0, 7], [5, 7, 0]] {
        let images = images_header(dims);
        let labels = encode_idx(&[5], &[1; 5]);
        assert!(
            idx_pair_from_bytes((&images, ip), (&labels, lp), "t", names()).is_err(),
            "{dims:?}"
        );
    }
}

/// A gzip stream behind a small IDX header that inflates far beyond what the
/// header's dimensions call for (a "gzip bomb"): refused without inflating it all.
#[test]
fn idx_gzip_bomb_behind_a_small_header_is_refused_early() {
    let mut payload = encode_idx(&[10], &[3; 10]);
    payload.resize(64 << 20, 0); // 64 MiB of trailing zeros, about 64 KiB gzipped
    let gz = gzip(&payload);
    assert!(gz.len() < 200_000);
    let p = Path::new("labels.idx.gz");
    let (r, peak) = peak_alloc(|| decode_maybe_gz(gz.clone(), p));
    let e = r.expect_err("trailing data accepted").to_string();
    assert!(
        e.contains("labels.idx.gz") && e.contains("continues past the 18 bytes"),
        "{e}"
    );
    assert!(
        peak < 1 << 20,
        "allocated {peak} bytes while refusing a bomb of {} bytes",
        gz.len()
    );
}

/// A gzipped header that claims 60000x28x28 images but holds a few bytes: the
/// output is never pre-sized from the claim.
#[test]
fn idx_gzip_header_claiming_more_than_it_holds_allocates_little() {
    let mut bytes = images_header([60_000, 28, 28]);
    bytes.extend_from_slice(&[1; 100]);
    let gz = gzip(&bytes);
    let p = Path::new("images.idx.gz");
    let (r, peak) = peak_alloc(|| decode_maybe_gz(gz.clone(), p).and_then(|d| parse_idx(&d, IMAGES_MAGIC, p)));
    let e = r.expect_err("truncated file accepted").to_string();
    assert!(e.contains("images.idx.gz") && e.contains("truncated"), "{e}");
    assert!(
        peak <= gz.len() * 1032 + (1 << 16),
        "allocated {peak} bytes for {} gzipped bytes",
        gz.len()
    );
    // Labels too.
    let mut bytes = LABELS_MAGIC.to_be_bytes().to_vec();
    bytes.extend_from_slice(&u32::MAX.to_be_bytes());
    let (r, peak) = peak_alloc(|| decode_maybe_gz(gzip(&bytes), p).and_then(|d| parse_idx(&d, LABELS_MAGIC, p)));
    assert!(r.is_err() && peak < 1 << 20, "{peak}");
}

/// A little-endian MAT-file with one uint8 matrix `X` of `dims` whose data
/// element claims `claimed` bytes but holds `held`.
fn lying_mat(dims: [u32; 2], claimed: u32, held: usize) -> Vec<u8> {
    use digitlab_test_support::mat::{
        element, element_claiming, header, CLASS_UINT8, MI_INT32, MI_INT8, MI_MATRIX, MI_UINT32, MI_UINT8,
    };
    let mut body = element(MI_UINT32, &[CLASS_UINT8, 0, 0, 0, 0, 0, 0, 0]);
    let d: Vec<u8> = dims.iter().flat_map(|x| x.to_le_bytes()).collect();
    body.extend(element(MI_INT32, &d));
    body.extend(element(MI_INT8, b"X"));
    body.extend(element_claiming(MI_UINT8, claimed, &vec![7; held]));
    let len = body.len() as u32;
    let mut f = header();
    f.extend(element_claiming(MI_MATRIX, len.max(claimed.saturating_add(48)), &body));
    f
}

/// Dimensions of 2^31 elements (under the 2^33 limit) and a data element that
/// claims 2 GiB but holds 16 bytes: an error, with no 2 GiB allocation.
#[test]
fn mat_lying_sizes_allocate_from_the_real_length() {
    let f = lying_mat([1 << 16, 1 << 15], 1 << 31, 16);
    let p = Path::new("lying.mat");
    let (r, peak) = peak_alloc(|| read_mat_variables_from(Cursor::new(&f), p, &["X"]));
    let e = r.expect_err("a lying file was accepted").to_string();
    assert!(e.starts_with("lying.mat: "), "{e}");
    assert!(
        peak < cap(f.len()),
        "allocated {peak} bytes for a {}-byte file",
        f.len()
    );
    let (r, peak) = peak_alloc(|| load_svhn_mat_from(Cursor::new(&f), p));
    assert!(r.is_err() && peak < cap(f.len()), "{peak}");
    let (_, peak) = peak_alloc(|| list_mat_variables_from(Cursor::new(&f), p));
    assert!(peak < cap(f.len()), "{peak}");
}

/// Every input kept in `fuzz/regressions/` goes through the same calls as the
/// fuzz targets, with their allocation cap.
#[test]
fn replay_fuzz_regression_inputs() {
    let mut n = 0;
    for target in ["idx", "mat"] {
        let Ok(entries) = std::fs::read_dir(regressions_dir(target)) else {
            continue;
        };
        for e in entries.flatten() {
            let data = std::fs::read(e.path()).unwrap();
            let name = e.path().display().to_string();
            let ((), peak) = peak_alloc(|| match target {
                "idx" => {
                    let (a, b) = split_two(&data);
                    let (ip, lp) = (Path::new("i"), Path::new("l"));
                    if let (Ok(i), Ok(l)) = (decode_maybe_gz(a.to_vec(), ip), decode_maybe_gz(b.to_vec(), lp)) {
                        let _ = parse_idx(&i, IMAGES_MAGIC, ip);
                        let _ = parse_idx(&l, LABELS_MAGIC, lp);
                        let _ = idx_pair_from_bytes((&i, ip), (&l, lp), "t", names());
                    }
                }
                _ => {
                    let p = Path::new("m.mat");
                    let _ = list_mat_variables_from(Cursor::new(&data), p);
                    let _ = read_mat_variables_from(Cursor::new(&data), p, &["X", "y"]);
                    let _ = load_svhn_mat_from(Cursor::new(&data), p);
                }
            });
            assert!(
                peak <= cap(data.len()),
                "{name}: allocated {peak} bytes for {} input bytes",
                data.len()
            );
            n += 1;
        }
    }
    assert!(n >= 3, "expected the regression inputs in fuzz/regressions/, found {n}");
}

/// `digitlab_fuzz::split_two`: a little-endian `u32` length, then two parts.
fn split_two(data: &[u8]) -> (&[u8], &[u8]) {
    if data.len() < 4 {
        return (data, &[]);
    }
    let n = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
    let rest = &data[4..];
    rest.split_at(n.min(rest.len()))
}
