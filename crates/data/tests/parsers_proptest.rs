//! Property tests over the IDX, `.mat` and SVHN readers (the same entry points
//! the fuzz targets in `fuzz/` drive): arbitrary and mutated bytes give errors,
//! never panics, and valid files round-trip.
use digitlab_data::idx::{decode_maybe_gz, encode_idx, idx_pair_from_bytes, parse_idx, IMAGES_MAGIC, LABELS_MAGIC};
use digitlab_data::mat::{list_mat_variables_from, read_mat_variables_from, MatData};
use digitlab_data::svhn::load_svhn_mat_from;
use proptest::prelude::*;
use std::io::{Cursor, Write};
use std::path::Path;

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn names() -> Vec<String> {
    (0..10).map(|d| d.to_string()).collect()
}

/// A little-endian level-5 MAT-file with `X` (uint8, 32x32x3xN, column-major) and
/// `y` (double, Nx1), each optionally in an miCOMPRESSED element.
fn svhn_mat(x: &[u8], y: &[f64], compress: bool) -> Vec<u8> {
    digitlab_test_support::mat::svhn(x, y, compress)
}

const FIXTURE: &[u8] = include_bytes!("fixtures/svhn_small_compressed.mat");

/// Flips bytes of `bytes` at the given (index, xor) pairs, then keeps a prefix.
fn mutate(mut bytes: Vec<u8>, flips: &[(prop::sample::Index, u8)], keep: prop::sample::Index) -> Vec<u8> {
    if bytes.is_empty() {
        return bytes;
    }
    for (i, x) in flips {
        let i = i.index(bytes.len());
        bytes[i] ^= x | 1;
    }
    let keep = keep.index(bytes.len() + 1);
    bytes.truncate(keep.max(1));
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn idx_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256), gz in any::<bool>()) {
        let bytes = if gz { gzip(&bytes) } else { bytes };
        let p = Path::new("any.idx");
        if let Ok(d) = decode_maybe_gz(bytes.clone(), p) {
            let _ = parse_idx(&d, IMAGES_MAGIC, p);
            let _ = parse_idx(&d, LABELS_MAGIC, p);
            let _ = idx_pair_from_bytes((&d, p), (&d, p), "t", names());
        }
    }

    #[test]
    fn idx_mutated_valid_files_never_panic(
        n in 1usize..5, rows in 1usize..6, cols in 1usize..6, gz in any::<bool>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        keep in any::<prop::sample::Index>(),
    ) {
        let images = encode_idx(&[n, rows, cols], &vec![7u8; n * rows * cols]);
        let labels = encode_idx(&[n], &vec![3u8; n]);
        let (images, labels) = if gz { (gzip(&images), gzip(&labels)) } else { (images, labels) };
        let images = mutate(images, &flips, keep);
        let (ip, lp) = (Path::new("i.idx"), Path::new("l.idx"));
        if let (Ok(i), Ok(l)) = (decode_maybe_gz(images, ip), decode_maybe_gz(labels, lp)) {
            if let Ok(d) = idx_pair_from_bytes((&i, ip), (&l, lp), "t", names()) {
                prop_assert_eq!(d.images().len(), d.len() * d.shape().numel());
            }
        }
    }

    #[test]
    fn idx_valid_files_round_trip(
        n in 1usize..6, rows in 1usize..9, cols in 1usize..9, gz in any::<bool>(), seed in any::<u8>(),
    ) {
        let pixels: Vec<u8> = (0..n * rows * cols).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
        let labels: Vec<u8> = (0..n).map(|i| ((i + seed as usize) % 10) as u8).collect();
        let (ib, lb) = (encode_idx(&[n, rows, cols], &pixels), encode_idx(&[n], &labels));
        let (ib, lb) = if gz { (gzip(&ib), gzip(&lb)) } else { (ib, lb) };
        let (ip, lp) = (Path::new("i.idx"), Path::new("l.idx"));
        let i = decode_maybe_gz(ib, ip).unwrap();
        let l = decode_maybe_gz(lb, lp).unwrap();
        let a = parse_idx(&i, IMAGES_MAGIC, ip).unwrap();
        prop_assert_eq!(&a.dims, &vec![n, rows, cols]);
        prop_assert_eq!(&a.data, &pixels);
        let d = idx_pair_from_bytes((&i, ip), (&l, lp), "t", names()).unwrap();
        prop_assert_eq!(d.images(), &pixels[..]);
        prop_assert_eq!(d.labels(), &labels[..]);
    }

    #[test]
    fn svhn_mutated_fixture_never_panics(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        keep in any::<prop::sample::Index>(),
    ) {
        let f = mutate(FIXTURE.to_vec(), &flips, keep);
        let p = Path::new("m.mat");
        let _ = list_mat_variables_from(Cursor::new(&f), p);
        if let Ok(d) = load_svhn_mat_from(Cursor::new(&f), p) {
            prop_assert_eq!(d.images().len(), d.len() * 3 * 32 * 32);
        }
    }

    #[test]
    fn svhn_valid_files_round_trip(n in 1usize..4, compress in any::<bool>(), seed in any::<u8>()) {
        // Column-major X: element (r, c, ch, i) at r + 32 c + 1024 ch + 3072 i.
        let x: Vec<u8> = (0..n * 3072).map(|k| (k as u8).wrapping_mul(13).wrapping_add(seed)).collect();
        let y: Vec<f64> = (0..n).map(|i| (1 + (i + seed as usize) % 10) as f64).collect();
        let f = svhn_mat(&x, &y, compress);
        let p = Path::new("rt.mat");
        let vars = read_mat_variables_from(Cursor::new(&f), p, &["y", "X"]).unwrap();
        prop_assert_eq!(&vars[0].data, &MatData::F64(y.clone()));
        prop_assert_eq!(&vars[1].data, &MatData::U8(x.clone()));
        let d = load_svhn_mat_from(Cursor::new(&f), p).unwrap();
        prop_assert_eq!(d.len(), n);
        for i in 0..n {
            prop_assert_eq!(d.labels()[i] as f64, y[i] % 10.0);
            for ch in 0..3 {
                for r in [0usize, 5, 31] {
                    for c in [0usize, 17, 31] {
                        let nchw = ((i * 3 + ch) * 32 + r) * 32 + c;
                        prop_assert_eq!(d.images()[nchw], x[r + 32 * c + 1024 * ch + 3072 * i]);
                    }
                }
            }
        }
    }
}
