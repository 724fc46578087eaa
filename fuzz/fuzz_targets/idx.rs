//! IDX (MNIST) reader: gzip detection and bounded inflating, header and
//! dimension checks, and building a dataset from an images/labels pair.
#![no_main]
use digitlab_data::idx::{decode_maybe_gz, idx_pair_from_bytes, parse_idx, IMAGES_MAGIC, LABELS_MAGIC};
use digitlab_fuzz::{split_two, AllocCap};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let _cap = AllocCap::for_input(data.len());
    let (images, labels) = split_two(data);
    let (ip, lp) = (Path::new("fuzz-images.idx"), Path::new("fuzz-labels.idx"));
    let Ok(images) = decode_maybe_gz(images.to_vec(), ip) else {
        return;
    };
    let Ok(labels) = decode_maybe_gz(labels.to_vec(), lp) else {
        return;
    };
    for bytes in [&images, &labels] {
        if let Ok(a) = parse_idx(bytes, IMAGES_MAGIC, ip) {
            assert_eq!(a.dims.len(), 3);
            assert_eq!(a.dims.iter().product::<usize>(), a.data.len());
        }
        if let Ok(a) = parse_idx(bytes, LABELS_MAGIC, lp) {
            assert_eq!(a.dims, vec![a.data.len()]);
        }
    }
    let names: Vec<String> = (0..10).map(|d| d.to_string()).collect();
    if let Ok(d) = idx_pair_from_bytes((&images, ip), (&labels, lp), "fuzz", names) {
        assert!(!d.is_empty());
        assert_eq!(d.images().len(), d.len() * d.shape().numel());
    }
});
