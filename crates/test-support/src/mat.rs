//! A minimal little-endian MATLAB level-5 `.mat` writer: the 128-byte header, data
//! elements, numeric `miMATRIX` arrays, `miCOMPRESSED` wrapping, and SVHN
//! "cropped digits" files (`X` uint8 32x32x3xN, `y` double Nx1).
//!
//! ```
//! use digitlab_test_support::mat;
//! let x = vec![0u8; 32 * 32 * 3];
//! let file = mat::svhn(&x, &[10.0], false);
//! assert_eq!(&file[..10], b"MATLAB 5.0");
//! assert_eq!(file.len() % 8, 0);
//! ```
use std::io::Write;

pub const MI_INT8: u32 = 1;
pub const MI_UINT8: u32 = 2;
pub const MI_INT32: u32 = 5;
pub const MI_UINT32: u32 = 6;
pub const MI_DOUBLE: u32 = 9;
pub const MI_MATRIX: u32 = 14;
pub const MI_COMPRESSED: u32 = 15;
/// Array classes (low byte of the array flags).
pub const CLASS_DOUBLE: u8 = 6;
pub const CLASS_UINT8: u8 = 9;

/// The 128-byte header: descriptive text, no subsystem offset, version 0x0100, "IM"
/// (little-endian).
pub fn header() -> Vec<u8> {
    let mut f = vec![b' '; 128];
    f[..22].copy_from_slice(b"MATLAB 5.0 MAT-file, t");
    f[116..124].fill(0);
    f[124..126].copy_from_slice(&0x0100u16.to_le_bytes());
    f[126..128].copy_from_slice(b"IM");
    f
}

/// A data element whose tag claims `claimed` bytes, holding `data`, padded to 8 bytes.
/// Malformed-input tests pass a `claimed` that differs from `data.len()`.
pub fn element_claiming(dtype: u32, claimed: u32, data: &[u8]) -> Vec<u8> {
    let mut v = dtype.to_le_bytes().to_vec();
    v.extend_from_slice(&claimed.to_le_bytes());
    v.extend_from_slice(data);
    while !v.len().is_multiple_of(8) {
        v.push(0);
    }
    v
}

/// A well-formed data element (tag, `data`, padding).
pub fn element(dtype: u32, data: &[u8]) -> Vec<u8> {
    element_claiming(dtype, data.len() as u32, data)
}

/// The sub-elements of a real numeric array: flags, dimensions, name, real part.
pub fn matrix_body(class: u8, dims: &[u32], name: &str, dtype: u32, data: &[u8]) -> Vec<u8> {
    let mut body = element(MI_UINT32, &[class, 0, 0, 0, 0, 0, 0, 0]);
    body.extend(element(
        MI_INT32,
        &dims.iter().flat_map(|d| d.to_le_bytes()).collect::<Vec<_>>(),
    ));
    body.extend(element(MI_INT8, name.as_bytes()));
    body.extend(element(dtype, data));
    body
}

/// One uncompressed `miMATRIX` element: a real numeric array.
pub fn matrix(class: u8, dims: &[u32], name: &str, dtype: u32, data: &[u8]) -> Vec<u8> {
    element(MI_MATRIX, &matrix_body(class, dims, name, dtype, data))
}

/// `element` (a whole `miMATRIX`, tag included) inside an `miCOMPRESSED` element.
pub fn compressed(element: &[u8]) -> Vec<u8> {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(element).expect("in-memory write");
    let z = z.finish().expect("in-memory write");
    let mut v = MI_COMPRESSED.to_le_bytes().to_vec();
    v.extend_from_slice(&(z.len() as u32).to_le_bytes());
    v.extend(z);
    v
}

/// An SVHN file from `x` (uint8, 32x32x3xN, column-major: MATLAB's (row, column,
/// channel, image) order) and `y` (labels as doubles, 1..=10 with 10 = digit 0), each
/// array optionally in an `miCOMPRESSED` element.
pub fn svhn(x: &[u8], y: &[f64], compress: bool) -> Vec<u8> {
    let n = y.len() as u32;
    let ybytes: Vec<u8> = y.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut f = header();
    for m in [
        matrix(CLASS_UINT8, &[32, 32, 3, n], "X", MI_UINT8, x),
        matrix(CLASS_DOUBLE, &[n, 1], "y", MI_DOUBLE, &ybytes),
    ] {
        f.extend(if compress { compressed(&m) } else { m });
    }
    f
}

/// An SVHN file from NCHW `images` (3x32x32 each) and labels 0..=9.
pub fn svhn_from_nchw(images: &[u8], labels: &[u8]) -> Vec<u8> {
    let n = labels.len();
    assert_eq!(images.len(), n * 3 * 32 * 32, "3x32x32 images, one per label");
    let mut x = vec![0u8; images.len()];
    for i in 0..n {
        for ch in 0..3 {
            for r in 0..32 {
                for c in 0..32 {
                    x[r + 32 * (c + 32 * (ch + 3 * i))] = images[((i * 3 + ch) * 32 + r) * 32 + c];
                }
            }
        }
    }
    let y: Vec<f64> = labels.iter().map(|&l| if l == 0 { 10.0 } else { l as f64 }).collect();
    svhn(&x, &y, false)
}
