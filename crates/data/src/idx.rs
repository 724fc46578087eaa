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

/// Largest decompressed / compressed size ratio deflate can reach (about 1032:1);
/// used to bound allocations while inflating.
pub const MAX_GZIP_RATIO: usize = 1032;

/// Reads the payload of `path`, decompressing it if it starts with the gzip magic.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    decode_maybe_gz(raw, path)
}

/// [`read_maybe_gz`] for a file that must carry `expected_magic`: a gzip stream
/// whose content starts with another magic is reported as a wrong magic number
/// (before inflating it, so the mismatched header's dimensions cannot produce a
/// misleading "trailing bytes" or size error).
pub fn read_idx_file(path: &Path, expected_magic: u32) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut head = Vec::new();
        let mut dec = flate2::read::MultiGzDecoder::new(&raw[..]);
        if read_up_to(&mut dec, &mut head, 4).is_ok() && head.len() == 4 {
            let magic = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            if magic != expected_magic {
                return Err(DataError::format(
                    path,
                    format!(
                        "wrong IDX magic number: expected {expected_magic:#010x}, found {magic:#010x} (in the gzip-compressed data)"
                    ),
                ));
            }
        }
    }
    decode_maybe_gz(raw, path)
}

/// Returns `raw` itself, or its decompressed content if it starts with the gzip
/// magic; `path` is only used in error messages.
///
/// Memory: the output is never pre-sized beyond [`MAX_GZIP_RATIO`] times the
/// compressed length. When the decompressed data starts with an IDX header,
/// inflating stops as soon as the data its dimensions call for has arrived: a
/// stream that goes on beyond that (a "gzip bomb" behind a small header, or
/// trailing garbage) is refused without being inflated further.
pub fn decode_maybe_gz(raw: Vec<u8>, path: &Path) -> Result<Vec<u8>> {
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(raw);
    }
    let gzip_err = |e: std::io::Error| DataError::format(path, format!("corrupt or truncated gzip stream: {e}"));
    let mut dec = flate2::read::MultiGzDecoder::new(&raw[..]);
    let mut out = Vec::new();
    read_up_to(&mut dec, &mut out, 4).map_err(gzip_err)?;
    if out.len() < 4 {
        return Ok(out); // too short for a header: `parse_idx` says so
    }
    let header = 4 + 4 * out[3] as usize;
    read_up_to(&mut dec, &mut out, header).map_err(gzip_err)?;
    if out.len() < header {
        return Ok(out);
    }
    let total = out[4..header]
        .chunks_exact(4)
        .try_fold(1usize, |acc, d| {
            acc.checked_mul(u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize)
        })
        .and_then(|numel| numel.checked_add(header));
    let Some(total) = total else {
        return Ok(out); // dimensions overflow: `parse_idx` says so
    };
    let cap = total.min(raw.len().saturating_mul(MAX_GZIP_RATIO));
    out.try_reserve_exact(cap.saturating_sub(out.len()))
        .map_err(|_| DataError::format(path, format!("cannot allocate {cap} bytes for the decompressed data")))?;
    read_up_to(&mut dec, &mut out, total).map_err(gzip_err)?;
    if out.len() == total {
        // Anything after the data the dimensions call for is an error; reading to
        // the end also verifies the gzip checksum.
        let mut probe = [0u8; 1];
        if read_up_to_slice(&mut dec, &mut probe).map_err(gzip_err)? > 0 {
            return Err(DataError::format(
                path,
                format!(
                    "the decompressed data continues past the {} bytes that its header's dimensions call for (trailing bytes)",
                    total
                ),
            ));
        }
    }
    Ok(out)
}

/// Appends bytes from `r` to `out` until it holds `target` bytes or `r` ends.
fn read_up_to(r: &mut impl Read, out: &mut Vec<u8>, target: usize) -> std::io::Result<()> {
    const STEP: usize = 1 << 16;
    while out.len() < target {
        let old = out.len();
        let want = STEP.min(target - old);
        out.resize(old + want, 0);
        let n = read_up_to_slice(r, &mut out[old..])?;
        out.truncate(old + n);
        if n < want {
            break;
        }
    }
    Ok(())
}

/// Fills `buf` from `r` as far as it goes; returns the bytes read (less at the end).
fn read_up_to_slice(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Parses an IDX byte buffer that must carry `expected_magic`; `path` is for messages.
pub fn parse_idx(bytes: &[u8], expected_magic: u32, path: &Path) -> Result<IdxArray> {
    if bytes.len() < 4 {
        return Err(DataError::format(
            path,
            format!("file is {} bytes, too short for an IDX header", bytes.len()),
        ));
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
        return Err(DataError::format(
            path,
            format!("truncated header: expected {header} bytes, found {}", bytes.len()),
        ));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|d| u32::from_be_bytes(bytes[4 + 4 * d..8 + 4 * d].try_into().expect("4 bytes")) as usize)
        .collect();
    let numel = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let payload = bytes.len() - header;
    match numel {
        Some(n) if n == payload => Ok(IdxArray {
            dims,
            data: bytes[header..].to_vec(),
        }),
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
    let img = read_idx_file(images, IMAGES_MAGIC)?;
    let lab = read_idx_file(labels, LABELS_MAGIC)?;
    idx_pair_from_bytes((&img, images), (&lab, labels), name, class_names)
}

/// [`load_idx_pair`] on decompressed file contents; each path only names its
/// bytes in error messages.
pub fn idx_pair_from_bytes(
    (images, images_path): (&[u8], &Path),
    (labels, labels_path): (&[u8], &Path),
    name: &str,
    class_names: Vec<String>,
) -> Result<Dataset> {
    let img = parse_idx(images, IMAGES_MAGIC, images_path)?;
    let lab = parse_idx(labels, LABELS_MAGIC, labels_path)?;
    let (images, labels) = (images_path, labels_path);
    let (n, rows, cols) = (img.dims[0], img.dims[1], img.dims[2]);
    if n == 0 || rows == 0 || cols == 0 {
        // With a zero anywhere the payload is empty and says nothing about the
        // other dimensions, which could then be anything up to 2^32 - 1.
        return Err(DataError::format(
            images,
            format!("expected at least one image of at least 1x1 pixels, found dimensions {n}x{rows}x{cols}"),
        ));
    }
    if lab.dims[0] != n {
        return Err(DataError::format(
            labels,
            format!(
                "{} labels but {} has {n} images: the counts must agree",
                lab.dims[0],
                images.display()
            ),
        ));
    }
    if let Some((i, &l)) = lab
        .data
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= class_names.len())
    {
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
        assert!(
            e.contains("good-l") && e.contains("expected 0x00000803, found 0x00000801"),
            "{e}"
        );

        // Truncated payload.
        let mut t = encode_idx(&[2, 2, 2], &pixels);
        t.truncate(t.len() - 3);
        let trunc = write(dir.path(), "trunc-i", &t, false);
        let e = load_idx_pair(&trunc, &good_l, "t", names()).unwrap_err().to_string();
        assert!(
            e.contains("trunc-i") && e.contains("need 8 bytes of data, found 5"),
            "{e}"
        );

        // A gzipped labels file where images are expected: wrong magic, not "trailing bytes".
        let lab_gz = write(dir.path(), "swapped-l", &encode_idx(&[8], &[1; 8]), true);
        let img_gz = write(dir.path(), "swapped-i", &encode_idx(&[2, 2, 2], &pixels), true);
        let e = load_idx_pair(&img_gz, &img_gz, "t", names()).unwrap_err().to_string();
        assert!(e.contains("wrong IDX magic") && !e.contains("trailing"), "{e}");
        let e = load_idx_pair(&lab_gz, &lab_gz, "t", names()).unwrap_err().to_string();
        assert!(e.contains("wrong IDX magic") && e.contains("swapped-l"), "{e}");
        // An images file whose magic says 1 dimension: its header's "dimensions" end
        // long before the data does.
        let mut m = encode_idx(&[2, 2, 2], &pixels);
        m[3] = 1;
        let bad_magic = write(dir.path(), "magic-i.gz", &m, true);
        let e = load_idx_pair(&bad_magic, &good_l, "t", names())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("magic-i.gz") && e.contains("expected 0x00000803, found 0x00000801") && !e.contains("trailing"),
            "{e}"
        );
        // Truncated gzip stream.
        let gz = write(dir.path(), "gz-i", &encode_idx(&[2, 2, 2], &pixels), true);
        let bytes = std::fs::read(&gz).unwrap();
        let cut = write(dir.path(), "cut-i.gz", &bytes[..bytes.len() / 2], false);
        let e = load_idx_pair(&cut, &good_l, "t", names()).unwrap_err().to_string();
        assert!(e.contains("cut-i.gz") && e.contains("gzip"), "{e}");

        // Count mismatch.
        let three = write(dir.path(), "three-l", &encode_idx(&[3], &[1, 2, 3]), false);
        let e = load_idx_pair(&good_i, &three, "t", names()).unwrap_err().to_string();
        assert!(
            e.contains("three-l") && e.contains("3 labels but") && e.contains("2 images"),
            "{e}"
        );

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
