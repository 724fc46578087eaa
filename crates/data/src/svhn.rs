//! SVHN "cropped digits" (format 2) `.mat` files: `train_32x32.mat`,
//! `test_32x32.mat`, `extra_32x32.mat` from <http://ufldl.stanford.edu/housenumbers/>.
//!
//! Each file holds two variables: `X`, a `uint8` array of dims `32x32x3xN`
//! (row, column, channel, image; column-major), and `y`, an `Nx1` `double` array
//! of labels `1..=10`, where `10` stands for the digit 0.
use crate::dataset::{Dataset, ImageShape};
use crate::error::{DataError, Result};
use crate::mat::{read_mat_variables, read_mat_variables_from, MatArray, MatClass, MatData};
use std::io::{Read, Seek};
use std::path::Path;

const SIDE: usize = 32;
const CHANNELS: usize = 3;
const PLANE: usize = SIDE * SIDE;

/// Loads an SVHN cropped-digits `.mat` file as a [`Dataset`] named
/// `svhn/<file stem>` with shape 3x32x32 (NCHW) and classes `"0"`..`"9"`
/// (label = `y % 10`, so SVHN's label 10 becomes digit 0).
///
/// `X` must be `uint8` with dims exactly `32x32x3xN` (`32x32x3` is accepted for
/// N = 1, since MATLAB drops trailing singleton dimensions); `y` must hold N
/// integer labels in `1..=10` as an `Nx1` (or `1xN`) array of any numeric class.
/// Errors name the file and the offending variable.
///
/// # Memory
///
/// The file is streamed through a 64 KiB buffer and `X` is inflated straight into
/// a single `Vec<u8>`; each 32x32 column-major plane of `(row, col)` is then
/// transposed *in place* to row-major, which turns MATLAB's `(r, c, ch, n)`
/// layout into NCHW `(n, ch, r, c)` with no second buffer, and that `Vec` is moved
/// into the dataset. For the real training file (182 MB on disk, 73 257 images)
/// the peak is therefore about the size of `X` itself — 32·32·3·73 257 =
/// 225 017 856 bytes ≈ 215 MiB — plus `y` as `f64` (0.6 MB), the labels, and
/// about 0.2 MB of read buffers and zlib state: **≈ 216 MiB in total**.
/// Measured: loading a synthetic file of the same size (73 257 images, 219 MB
/// compressed) peaked at 224 500 kB resident (`VmHWM`, test harness included) and
/// took 1.2 s; see the ignored `real_file_from_env` test in `tests/svhn.rs`.
pub fn load_svhn_mat(path: &Path) -> Result<Dataset> {
    let vars = read_mat_variables(path, &["X", "y"])?;
    svhn_from_variables(path, vars)
}

/// [`load_svhn_mat`] on any seekable reader (an in-memory `Cursor`, for
/// instance); `source` names the data in errors and gives the dataset its name.
pub fn load_svhn_mat_from<R: Read + Seek>(reader: R, source: &Path) -> Result<Dataset> {
    let vars = read_mat_variables_from(reader, source, &["X", "y"])?;
    svhn_from_variables(source, vars)
}

fn svhn_from_variables(path: &Path, vars: Vec<MatArray>) -> Result<Dataset> {
    let mut vars = vars.into_iter();
    let (Some(x), Some(y)) = (vars.next(), vars.next()) else {
        return Err(DataError::format(path, "expected variables `X` and `y`"));
    };
    let n = check_x(path, &x)?;
    let labels = check_y(path, &y, n)?;
    let MatData::U8(mut pixels) = x.data else {
        return Err(DataError::format(
            path,
            format!("variable `X`: expected class uint8, found {}", x.data.class()),
        ));
    };
    column_major_planes_to_row_major(&mut pixels);
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "svhn".into());
    let class_names = (0..10).map(|d| d.to_string()).collect();
    Dataset::new(
        format!("svhn/{stem}"),
        ImageShape::new(CHANNELS, SIDE, SIDE),
        pixels,
        labels,
        class_names,
    )
}

/// Checks `X` and returns the number of images.
fn check_x(path: &Path, x: &MatArray) -> Result<usize> {
    if x.class != MatClass::Uint8 || x.logical {
        let found = if x.logical {
            "logical".to_string()
        } else {
            x.class.name()
        };
        return Err(DataError::format(
            path,
            format!("variable `X`: expected class uint8, found {found}"),
        ));
    }
    let n = match x.dims.as_slice() {
        [32, 32, 3, n] => *n,
        [32, 32, 3] => 1,
        _ => {
            return Err(DataError::format(
                path,
                format!("variable `X`: expected dims 32x32x3xN, found {}", x.dims_string()),
            ))
        }
    };
    if n == 0 {
        return Err(DataError::format(
            path,
            "variable `X`: expected at least one image, found dims 32x32x3x0",
        ));
    }
    if x.numel() != n * CHANNELS * PLANE {
        // Cannot happen for a well-formed reader result; checked so slicing below is safe.
        return Err(DataError::format(
            path,
            format!(
                "variable `X`: dims {} need {} values, found {}",
                x.dims_string(),
                n * CHANNELS * PLANE,
                x.numel()
            ),
        ));
    }
    Ok(n)
}

/// Checks `y` against `n` images and maps labels 1..=10 to digits (10 -> 0).
fn check_y(path: &Path, y: &MatArray, n: usize) -> Result<Vec<u8>> {
    let count = match y.dims.as_slice() {
        [rows, 1] => *rows,
        [1, cols] => *cols,
        _ => {
            return Err(DataError::format(
                path,
                format!(
                    "variable `y`: expected dims Nx1 (one label per image), found {}",
                    y.dims_string()
                ),
            ))
        }
    };
    if count != n {
        return Err(DataError::format(
            path,
            format!("label count mismatch: variable `X` holds {n} images but variable `y` holds {count} labels"),
        ));
    }
    let values = y.data.to_i64_vec().map_err(|(i, v)| {
        DataError::format(
            path,
            format!(
                "variable `y`: expected integer labels 1..=10, found {v} at row {}",
                i + 1
            ),
        )
    })?;
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            if (1..=10).contains(&v) {
                Ok((v % 10) as u8)
            } else {
                Err(DataError::format(
                    path,
                    format!("variable `y`: expected labels 1..=10, found {v} at row {}", i + 1),
                ))
            }
        })
        .collect()
}

/// Transposes every 32x32 plane in place: column-major `(r, c)` at `r + 32 c`
/// becomes row-major at `32 r + c`. Planes follow each other in `(ch, n)` order
/// in both layouts, so this is the whole MATLAB -> NCHW conversion.
fn column_major_planes_to_row_major(pixels: &mut [u8]) {
    for plane in pixels.chunks_exact_mut(PLANE) {
        for r in 0..SIDE {
            for c in r + 1..SIDE {
                plane.swap(r + SIDE * c, SIDE * r + c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plane_transpose_matches_index_formula() {
        // Column-major source: value at (r, c, ch, n) encodes its coordinates.
        let n = 2;
        let code = |r: usize, c: usize, ch: usize, i: usize| ((r * 7 + c * 3 + ch * 5 + i * 11) % 251) as u8;
        let mut src = vec![0u8; n * CHANNELS * PLANE];
        for i in 0..n {
            for ch in 0..CHANNELS {
                for c in 0..SIDE {
                    for r in 0..SIDE {
                        src[r + SIDE * c + PLANE * ch + PLANE * CHANNELS * i] = code(r, c, ch, i);
                    }
                }
            }
        }
        column_major_planes_to_row_major(&mut src);
        for i in 0..n {
            for ch in 0..CHANNELS {
                for r in 0..SIDE {
                    for c in 0..SIDE {
                        assert_eq!(src[((i * CHANNELS + ch) * SIDE + r) * SIDE + c], code(r, c, ch, i));
                    }
                }
            }
        }
    }
}
