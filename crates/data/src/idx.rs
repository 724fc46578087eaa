//! Reader for the IDX format of MNIST and Fashion-MNIST (gzipped or raw).
//!
//! An IDX file is a big-endian header `0x00 0x00 <type> <ndim>`, `ndim` u32
//! dimensions, then the payload. Images are type 0x08 (u8) with 3 dimensions
//! (magic 0x00000803), labels type 0x08 with 1 dimension (magic 0x00000801).
use crate::dataset::{Dataset, ImageShape};
use crate::error::{DataError, Result};
use std::io::Read;
use std::path::Path;

/// Magic number of an IDX file of u8 images (N x rows x cols).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of u8 labels (N).
pub const LABELS_MAGIC: u32 = 0x0000_0801;

/// The content of one IDX file: dimensions and u8 payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads the payload of `path`, decompressing it if it starts with the gzip magic.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len() * 4);
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| DataError::format(path, format!("corrupt or truncated gzip stream: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses an IDX byte buffer that must carry `expected_magic`; `path` is for messages.
pub fn parse_idx(bytes: &[u8], expected_magic: u32, path: &Path) -> Result<IdxArray> {
    if bytes.len() < 4 {
        return Err(DataError::format(path, format!("file is {} bytes, too short for an IDX header", bytes.len())));
    }
    let magic = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if magic != expected_magic {
        return Err(DataError::format(
            path,
            format!("wrong IDX magic number: expected {expected_magic:#010x}, found {magic:#010x}"),
        ));
    }
    let ndim = (magic & 0xff) as usize;
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(DataError::format(path, format!("truncated header: expected {header} bytes, found {}", bytes.len())));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|d| u32::from_be_bytes(bytes[4 + 4 * d..8 + 4 * d].try_into().expect("4 bytes")) as usize)
        .collect();
    let numel = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let payload = bytes.len() - header;
    match numel {
        Some(n) if n == payload => Ok(IdxArray { dims, data: bytes[header..].to_vec() }),
        Some(n) if n > payload => Err(DataError::format(
            path,
            format!("truncated: dimensions {dims:?} need {n} bytes of data, found {payload}"),
        )),
        Some(n) => Err(DataError::format(
            path,
            format!("dimensions {dims:?} need {n} bytes of data, found {payload} (trailing bytes)"),
        )),
        None => Err(DataError::format(path, format!("dimensions {dims:?} overflow"))),
    }
}

/// Reads an IDX images file (3 dimensions) and its labels file into a [`Dataset`].
///
/// Errors name the file and say what was expected: wrong magic, truncation,
/// or image and label counts that disagree.
pub fn load_idx_pair(images: &Path, labels: &Path, name: &str, class_names: Vec<String>) -> Result<Dataset> {
    let img = parse_idx(&read_maybe_gz(images)?, IMAGES_MAGIC, images)?;
    let lab = parse_idx(&read_maybe_gz(labels)?, LABELS_MAGIC, labels)?;
    let (n, rows, cols) = (img.dims[0], img.dims[1], img.dims[2]);
    if lab.dims[0] != n {
        return Err(DataError::format(
            labels,
            format!("{} labels but {} has {n} images: the counts must agree", lab.dims[0], images.display()),
        ));
    }
    if let Some((i, &l)) = lab.data.iter().enumerate().find(|(_, &l)| l as usize >= class_names.len()) {
        return Err(DataError::format(
            labels,
            format!("label {l} at index {i} is outside 0..{}", class_names.len()),
        ));
    }
    Dataset::new(name, ImageShape::new(1, rows, cols), img.data, lab.data, class_names)
}

/// Serialises u8 images (N x rows x cols) as an IDX byte buffer (used by tests and tools).
pub fn encode_idx(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 4 * dims.len() + data.len());
    out.extend_from_slice(&[0, 0, 0x08, dims.len() as u8]);
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn names() -> Vec<String> {
        (0..10).map(|d| d.to_string()).collect()
    }

    fn write(dir: &Path, name: &str, bytes: &[u8], gz: bool) -> std::path::PathBuf {
        let p = dir.join(name);
        if gz {
            let mut e = flate2::write::GzEncoder::new(std::fs::File::create(&p).unwrap(), flate2::Compression::fast());
            e.write_all(bytes).unwrap();
            e.finish().unwrap();
        } else {
            std::fs::write(&p, bytes).unwrap();
        }
        p
    }

    #[test]
    fn round_trip_raw_and_gz() {
        let dir = tempfile::tempdir().unwrap();
        let pixels: Vec<u8> = (0..3 * 4 * 5).map(|v| v as u8).collect();
        for gz in [false, true] {
            let i = write(dir.path(), &format!("i{gz}"), &encode_idx(&[3, 4, 5], &pixels), gz);
            let l = write(dir.path(), &format!("l{gz}"), &encode_idx(&[3], &[7, 0, 9]), gz);
            let d = load_idx_pair(&i, &l, "t", names()).unwrap();
            assert_eq!(d.len(), 3);
            assert_eq!(d.shape(), ImageShape::new(1, 4, 5));
            assert_eq!(d.labels(), &[7, 0, 9]);
            assert_eq!(d.images(), &pixels[..]);
        }
    }

    #[test]
    fn corrupt_inputs_give_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let pixels = vec![1u8; 2 * 2 * 2];
        let good_i = write(dir.path(), "good-i", &encode_idx(&[2, 2, 2], &pixels), false);
        let good_l = write(dir.path(), "good-l", &encode_idx(&[2], &[1, 2]), false);

        // Labels file given where images are expected: wrong magic.
        let e = load_idx_pair(&good_l, &good_l, "t", names()).unwrap_err().to_string();
        assert!(e.contains("good-l") && e.contains("expected 0x00000803, found 0x00000801"), "{e}");

        // Truncated payload.
        let mut t = encode_idx(&[2, 2, 2], &pixels);
        t.truncate(t.len() - 3);
        let trunc = write(dir.path(), "trunc-i", &t, false);
        let e = load_idx_pair(&trunc, &good_l, "t", names()).unwrap_err().to_string();
        assert!(e.contains("trunc-i") && e.contains("need 8 bytes of data, found 5"), "{e}");

        // Truncated gzip stream.
        let gz = write(dir.path(), "gz-i", &encode_idx(&[2, 2, 2], &pixels), true);
        let bytes = std::fs::read(&gz).unwrap();
        let cut = write(dir.path(), "cut-i.gz", &bytes[..bytes.len() / 2], false);
        let e = load_idx_pair(&cut, &good_l, "t", names()).unwrap_err().to_string();
        assert!(e.contains("cut-i.gz") && e.contains("gzip"), "{e}");

        // Count mismatch.
        let three = write(dir.path(), "three-l", &encode_idx(&[3], &[1, 2, 3]), false);
        let e = load_idx_pair(&good_i, &three, "t", names()).unwrap_err().to_string();
        assert!(e.contains("three-l") && e.contains("3 labels but") && e.contains("2 images"), "{e}");

        // Label out of range.
        let bad = write(dir.path(), "bad-l", &encode_idx(&[2], &[1, 12]), false);
        let e = load_idx_pair(&good_i, &bad, "t", names()).unwrap_err().to_string();
        assert!(e.contains("label 12 at index 1"), "{e}");

        // Empty file.
        let empty = write(dir.path(), "empty", &[], false);
        let e = load_idx_pair(&empty, &good_l, "t", names()).unwrap_err().to_string();
        assert!(e.contains("too short"), "{e}");
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = parse_idx(&bytes, IMAGES_MAGIC, Path::new("fuzz"));
            let _ = parse_idx(&bytes, LABELS_MAGIC, Path::new("fuzz"));
        }
    }
}
