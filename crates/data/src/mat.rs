//! A reader for MATLAB level-5 MAT-files (the `-v5`/`-v6`/`-v7` formats, the ones
//! `scipy.io.savemat` writes and the SVHN "cropped digits" files use).
//!
//! This is hand-written on purpose: at the time of writing no maintained Rust crate
//! reads level-5 files with `miCOMPRESSED` elements well — `matfile`, the
//! best-known one, calls itself alpha quality, reads the whole file into a
//! buffer before parsing it and reports every parse failure as one generic
//! error — while SVHN needs only a small, well-specified subset of the format.
//!
//! What is supported:
//!
//! * the 128-byte header in both byte orders (`IM` = little-endian, `MI` = big-endian);
//!   version-7.3 (HDF5) and level-4 files are rejected with a message saying so;
//! * top-level `miMATRIX` (14) and `miCOMPRESSED` (15, a zlib stream holding one
//!   `miMATRIX`) elements, the "small data element" format (size in the upper
//!   two bytes of a 4-byte tag, data in the next 4 bytes) and 8-byte padding;
//! * real, non-sparse numeric arrays of every class (`double`, `single`,
//!   `int8`..`int64`, `uint8`..`uint64`; logical arrays read as `uint8`). The
//!   stored element type may differ from the class (MATLAB stores a `double` array
//!   of small integers as `miUINT8`, for instance): values are converted to the
//!   class and a value that does not fit is an error.
//!
//! Complex, sparse, char, cell, struct, object and opaque arrays are rejected with
//! an error naming the variable — but only when they are asked for: other
//! variables are skipped. An uncompressed variable is skipped by seeking past it
//! after reading its name; a compressed one needs only the first few dozen bytes
//! of its zlib stream inflated to learn its name.
//!
//! Memory: the file is read through a [`BufReader`], never whole. A wanted
//! variable's data is inflated straight into its final `Vec`, pre-sized from its
//! dimensions but never beyond what the file could plausibly hold (the element's
//! size for stored data, [`MAX_ZLIB_RATIO`] times the compressed size for zlib
//! data) — a corrupt size field cannot make the reader allocate more than that;
//! beyond the bound the `Vec` grows as data actually arrives. Arrays with more
//! than [`MAX_NUMEL`] elements are refused outright.
//!
//! All data is column-major, as in MATLAB: element `(i0, i1, i2, ...)` of an array
//! with dims `[d0, d1, d2, ...]` is at `i0 + d0 * (i1 + d1 * (i2 + ...))`.
use crate::error::{DataError, Result};
use flate2::read::ZlibDecoder;
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

/// Largest number of elements accepted for one array (2^33, 8 GiB of `uint8`).
pub const MAX_NUMEL: u64 = 1 << 33;
/// Largest decompressed / compressed size ratio deflate can reach (about 1032:1);
/// used to bound allocations for compressed variables.
pub const MAX_ZLIB_RATIO: u64 = 1032;

const HEADER_LEN: u64 = 128;
/// Bytes read per step when streaming array data.
const CHUNK: usize = 1 << 20;
/// Caps on the small header sub-elements of a matrix.
const MAX_NAME_BYTES: u32 = 4096;
const MAX_DIMS: u32 = 64;

// Data element types (the `mi*` constants of the MAT-file format).
const MI_INT8: u32 = 1;
const MI_UINT8: u32 = 2;
const MI_INT16: u32 = 3;
const MI_UINT16: u32 = 4;
const MI_INT32: u32 = 5;
const MI_UINT32: u32 = 6;
const MI_SINGLE: u32 = 7;
const MI_DOUBLE: u32 = 9;
const MI_INT64: u32 = 12;
const MI_UINT64: u32 = 13;
const MI_MATRIX: u32 = 14;
const MI_COMPRESSED: u32 = 15;
const MI_UTF8: u32 = 16;

// Array flag bits (second byte of the first flags word).
const FLAG_COMPLEX: u32 = 0x0800;
const FLAG_LOGICAL: u32 = 0x0200;

/// Byte order of a MAT-file, from its header's endian indicator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endian {
    /// Indicator `IM`.
    Little,
    /// Indicator `MI`.
    Big,
}

impl Endian {
    fn u16(self, b: [u8; 2]) -> u16 {
        match self {
            Endian::Little => u16::from_le_bytes(b),
            Endian::Big => u16::from_be_bytes(b),
        }
    }
    fn u32(self, b: [u8; 4]) -> u32 {
        match self {
            Endian::Little => u32::from_le_bytes(b),
            Endian::Big => u32::from_be_bytes(b),
        }
    }
}

/// The MATLAB class of an array (`mx*_CLASS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatClass {
    Cell,
    Struct,
    Object,
    Char,
    Sparse,
    Double,
    Single,
    Int8,
    Uint8,
    Int16,
    Uint16,
    Int32,
    Uint32,
    Int64,
    Uint64,
    Function,
    Opaque,
    /// A class code this reader does not know.
    Unknown(u8),
}

impl MatClass {
    /// The class for an `mx*_CLASS` code.
    pub fn from_code(code: u8) -> Self {
        match code {
            1 => MatClass::Cell,
            2 => MatClass::Struct,
            3 => MatClass::Object,
            4 => MatClass::Char,
            5 => MatClass::Sparse,
            6 => MatClass::Double,
            7 => MatClass::Single,
            8 => MatClass::Int8,
            9 => MatClass::Uint8,
            10 => MatClass::Int16,
            11 => MatClass::Uint16,
            12 => MatClass::Int32,
            13 => MatClass::Uint32,
            14 => MatClass::Int64,
            15 => MatClass::Uint64,
            16 => MatClass::Function,
            17 => MatClass::Opaque,
            c => MatClass::Unknown(c),
        }
    }

    /// MATLAB's name for the class (`double`, `uint8`, `struct`, ...).
    pub fn name(&self) -> String {
        match self {
            MatClass::Cell => "cell".into(),
            MatClass::Struct => "struct".into(),
            MatClass::Object => "object".into(),
            MatClass::Char => "char".into(),
            MatClass::Sparse => "sparse".into(),
            MatClass::Double => "double".into(),
            MatClass::Single => "single".into(),
            MatClass::Int8 => "int8".into(),
            MatClass::Uint8 => "uint8".into(),
            MatClass::Int16 => "int16".into(),
            MatClass::Uint16 => "uint16".into(),
            MatClass::Int32 => "int32".into(),
            MatClass::Uint32 => "uint32".into(),
            MatClass::Int64 => "int64".into(),
            MatClass::Uint64 => "uint64".into(),
            MatClass::Function => "function handle".into(),
            MatClass::Opaque => "opaque".into(),
            MatClass::Unknown(c) => format!("unknown class {c}"),
        }
    }

    /// Whether this reader can load arrays of this class.
    pub fn is_numeric(&self) -> bool {
        matches!(
            self,
            MatClass::Double
                | MatClass::Single
                | MatClass::Int8
                | MatClass::Uint8
                | MatClass::Int16
                | MatClass::Uint16
                | MatClass::Int32
                | MatClass::Uint32
                | MatClass::Int64
                | MatClass::Uint64
        )
    }
}

impl fmt::Display for MatClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// The values of a numeric array, converted to its class, column-major.
#[derive(Debug, Clone, PartialEq)]
pub enum MatData {
    I8(Vec<i8>),
    U8(Vec<u8>),
    I16(Vec<i16>),
    U16(Vec<u16>),
    I32(Vec<i32>),
    U32(Vec<u32>),
    I64(Vec<i64>),
    U64(Vec<u64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl MatData {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            MatData::I8(v) => v.len(),
            MatData::U8(v) => v.len(),
            MatData::I16(v) => v.len(),
            MatData::U16(v) => v.len(),
            MatData::I32(v) => v.len(),
            MatData::U32(v) => v.len(),
            MatData::I64(v) => v.len(),
            MatData::U64(v) => v.len(),
            MatData::F32(v) => v.len(),
            MatData::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The class these values belong to.
    pub fn class(&self) -> MatClass {
        match self {
            MatData::I8(_) => MatClass::Int8,
            MatData::U8(_) => MatClass::Uint8,
            MatData::I16(_) => MatClass::Int16,
            MatData::U16(_) => MatClass::Uint16,
            MatData::I32(_) => MatClass::Int32,
            MatData::U32(_) => MatClass::Uint32,
            MatData::I64(_) => MatClass::Int64,
            MatData::U64(_) => MatClass::Uint64,
            MatData::F32(_) => MatClass::Single,
            MatData::F64(_) => MatClass::Double,
        }
    }

    /// The values as integers (labels stored as `double`, for instance).
    ///
    /// Fails with `(index, value)` of the first value that is not an integer
    /// representable as `i64` (a fraction, NaN, infinity, or a `uint64` above
    /// `i64::MAX`).
    pub fn to_i64_vec(&self) -> std::result::Result<Vec<i64>, (usize, f64)> {
        fn ints<T: Copy + Into<i64>>(v: &[T]) -> std::result::Result<Vec<i64>, (usize, f64)> {
            Ok(v.iter().map(|&x| x.into()).collect())
        }
        fn floats(v: impl Iterator<Item = f64>) -> std::result::Result<Vec<i64>, (usize, f64)> {
            v.enumerate()
                .map(|(i, x)| {
                    // 2^63 is exactly representable; i64 covers [-2^63, 2^63).
                    if x.is_finite()
                        && x.fract() == 0.0
                        && (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&x)
                    {
                        Ok(x as i64)
                    } else {
                        Err((i, x))
                    }
                })
                .collect()
        }
        match self {
            MatData::I8(v) => ints(v),
            MatData::U8(v) => ints(v),
            MatData::I16(v) => ints(v),
            MatData::U16(v) => ints(v),
            MatData::I32(v) => ints(v),
            MatData::U32(v) => ints(v),
            MatData::I64(v) => Ok(v.clone()),
            MatData::U64(v) => v
                .iter()
                .enumerate()
                .map(|(i, &x)| i64::try_from(x).map_err(|_| (i, x as f64)))
                .collect(),
            MatData::F32(v) => floats(v.iter().map(|&x| x as f64)),
            MatData::F64(v) => floats(v.iter().copied()),
        }
    }
}

/// One numeric variable of a MAT-file.
#[derive(Debug, Clone, PartialEq)]
pub struct MatArray {
    pub name: String,
    pub class: MatClass,
    /// MATLAB dimensions (at least 2), e.g. `[32, 32, 3, 73257]`.
    pub dims: Vec<usize>,
    /// Whether the array is a MATLAB `logical` (its class is then `uint8`).
    pub logical: bool,
    /// The values, column-major, converted to `class`.
    pub data: MatData,
}

impl MatArray {
    /// Number of elements (the product of `dims`).
    pub fn numel(&self) -> usize {
        self.data.len()
    }
    /// The dimensions written MATLAB-style: `32x32x3x40`.
    pub fn dims_string(&self) -> String {
        dims_string(&self.dims)
    }
}

/// Name, class and size of a variable, as listed by [`list_mat_variables`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatVarInfo {
    pub name: String,
    pub class: MatClass,
    /// Empty for opaque objects, whose layout has no dimensions.
    pub dims: Vec<usize>,
    pub complex: bool,
    /// Whether the variable is stored in an `miCOMPRESSED` element.
    pub compressed: bool,
    /// Byte offset of the variable's top-level data element.
    pub offset: u64,
}

impl fmt::Display for MatVarInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}{} {})",
            self.name,
            if self.complex { "complex " } else { "" },
            self.class,
            dims_string(&self.dims)
        )
    }
}

fn dims_string(dims: &[usize]) -> String {
    if dims.is_empty() {
        return "?".into();
    }
    dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x")
}

/// Reads the variables named in `wanted` from the MAT-file at `path`, in the order
/// of `wanted`. Other variables are skipped without reading their data; reading
/// stops as soon as all wanted variables are found. A wanted variable that is
/// missing, or that is not a real, non-sparse numeric array, is an error.
pub fn read_mat_variables(path: &Path, wanted: &[&str]) -> Result<Vec<MatArray>> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    read_mat_variables_from(BufReader::with_capacity(1 << 16, file), path, wanted)
}

/// [`read_mat_variables`] on any seekable reader (a file, an in-memory
/// `Cursor`); `source` is only used to name the data in error messages.
pub fn read_mat_variables_from<R: Read + Seek>(mut reader: R, source: &Path, wanted: &[&str]) -> Result<Vec<MatArray>> {
    let (infos, mut found) = scan(&mut reader, source, Some(wanted))?;
    let mut out: Vec<MatArray> = Vec::with_capacity(wanted.len());
    for (i, name) in wanted.iter().enumerate() {
        // A name listed twice is read once (into the slot of its first listing).
        let first = wanted.iter().position(|w| w == name).unwrap_or(i);
        let array = if first == i {
            found.get_mut(i).and_then(Option::take)
        } else {
            out.get(first).cloned()
        };
        out.push(array.ok_or_else(|| not_found(source, name, &infos))?);
    }
    Ok(out)
}

/// Lists every variable of the MAT-file at `path` (name, class, dims) without
/// reading any array data.
pub fn list_mat_variables(path: &Path) -> Result<Vec<MatVarInfo>> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    list_mat_variables_from(BufReader::with_capacity(1 << 16, file), path)
}

/// [`list_mat_variables`] on any seekable reader; `source` names the data in errors.
pub fn list_mat_variables_from<R: Read + Seek>(mut reader: R, source: &Path) -> Result<Vec<MatVarInfo>> {
    Ok(scan(&mut reader, source, None)?.0)
}

fn not_found(source: &Path, name: &str, infos: &[MatVarInfo]) -> DataError {
    let held = if infos.is_empty() {
        "no variables".to_string()
    } else {
        infos.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
    };
    DataError::format(source, format!("variable `{name}` not found: the file holds {held}"))
}

/// Reads and checks the 128-byte header; returns the byte order.
fn read_header<R: Read>(reader: &mut R, source: &Path, file_len: u64) -> Result<Endian> {
    if file_len < HEADER_LEN {
        return Err(DataError::format(
            source,
            format!("not a MAT-file: expected a 128-byte level-5 header, found only {file_len} bytes"),
        ));
    }
    let mut h = [0u8; HEADER_LEN as usize];
    reader.read_exact(&mut h).map_err(|e| DataError::io(source, e))?;
    let endian = match &h[126..128] {
        b"IM" => Endian::Little,
        b"MI" => Endian::Big,
        other => {
            let text = if h.starts_with(b"MATLAB") {
                ""
            } else {
                " (and no \"MATLAB\" header text: a level-4 MAT-file or not a MAT-file?)"
            };
            return Err(DataError::format(
                source,
                format!(
                    "not a level-5 MAT-file: expected endian indicator \"IM\" or \"MI\" at bytes 126..128, found {:?}{text}",
                    String::from_utf8_lossy(other)
                ),
            ));
        }
    };
    let version = endian.u16([h[124], h[125]]);
    match version {
        0x0100 => Ok(endian),
        0x0200 => Err(DataError::format(
            source,
            "this is a MATLAB v7.3 (HDF5) MAT-file, which this reader does not support: expected a level-5 file \
             (version 0x0100); re-save it with `save -v7` or `scipy.io.savemat`",
        )),
        v => Err(DataError::format(
            source,
            format!("unsupported MAT-file version: expected 0x0100, found 0x{v:04x}"),
        )),
    }
}

/// What to do with each variable while scanning.
struct Wanted<'a> {
    names: &'a [&'a str],
}

/// Walks the top-level data elements. Returns the variables seen and, per entry
/// of `wanted`, the array if it was found (the first one of that name).
fn scan<R: Read + Seek>(
    reader: &mut R,
    source: &Path,
    wanted: Option<&[&str]>,
) -> Result<(Vec<MatVarInfo>, Vec<Option<MatArray>>)> {
    let file_len = reader.seek(SeekFrom::End(0)).map_err(|e| DataError::io(source, e))?;
    reader.seek(SeekFrom::Start(0)).map_err(|e| DataError::io(source, e))?;
    let endian = read_header(reader, source, file_len)?;
    let wanted = wanted.map(|names| Wanted { names });
    let mut found: Vec<Option<MatArray>> = wanted.as_ref().map(|w| vec![None; w.names.len()]).unwrap_or_default();
    let mut still_missing = wanted.as_ref().map(|w| distinct(w.names)).unwrap_or(usize::MAX);
    let mut infos = Vec::new();
    let mut pos = HEADER_LEN;
    while pos < file_len && still_missing > 0 {
        let left = file_len - pos;
        if left < 8 {
            return Err(DataError::format(
                source,
                format!(
                    "file is truncated: expected an 8-byte data element tag at offset {pos}, found only {left} bytes"
                ),
            ));
        }
        reader
            .seek(SeekFrom::Start(pos))
            .map_err(|e| DataError::io(source, e))?;
        let mut tag = [0u8; 8];
        reader.read_exact(&mut tag).map_err(|e| DataError::io(source, e))?;
        let (dtype, nbytes) = (
            endian.u32([tag[0], tag[1], tag[2], tag[3]]),
            endian.u32([tag[4], tag[5], tag[6], tag[7]]),
        );
        let nbytes = nbytes as u64;
        let body_left = left - 8;
        if nbytes > body_left {
            return Err(DataError::format(
                source,
                format!(
                    "file is truncated: the data element at offset {pos} declares {nbytes} bytes, but only {body_left} remain"
                ),
            ));
        }
        let body_start = pos + 8;
        let context = format!("data element at offset {pos}");
        let (header, array, next) = match dtype {
            MI_MATRIX => {
                let mut sub = Sub::new((&mut *reader).take(nbytes), nbytes, nbytes, endian, source, context);
                let (header, array) = read_variable(&mut sub, wanted.as_ref())?;
                // Uncompressed elements are padded to 8 bytes.
                let padded = body_start + nbytes + (8 - nbytes % 8) % 8;
                (header, array, padded.min(file_len))
            }
            MI_COMPRESSED => {
                let mut dec = ZlibDecoder::new((&mut *reader).take(nbytes));
                // The zlib stream holds one complete miMATRIX element, tag included.
                let plausible = nbytes.saturating_mul(MAX_ZLIB_RATIO).saturating_add(4096);
                let mut sub = Sub::new(&mut dec, plausible, plausible, endian, source, context.clone());
                let inner = sub.read_tag()?;
                if inner.dtype != MI_MATRIX {
                    return Err(DataError::format(
                        source,
                        format!(
                            "{context}: expected an miMATRIX (type 14) element inside the compressed data, found type {}",
                            inner.dtype
                        ),
                    ));
                }
                if inner.inline.is_some() {
                    return Err(DataError::format(source, format!("{context}: malformed miMATRIX tag in compressed data")));
                }
                let inner_len = inner.nbytes as u64;
                sub.remaining = inner_len;
                sub.plausible = inner_len.min(plausible);
                let (header, array) = read_variable(&mut sub, wanted.as_ref())?;
                if array.is_some() {
                    // Inflate the rest so that the zlib checksum gets verified.
                    let what = sub.what.clone();
                    io::copy(&mut dec, &mut io::sink()).map_err(|e| stream_error(source, &what, e))?;
                }
                (header, array, body_start + nbytes)
            }
            other => {
                return Err(DataError::format(
                    source,
                    format!(
                        "data element at offset {pos}: expected type miMATRIX (14) or miCOMPRESSED (15), found type {other}"
                    ),
                ))
            }
        };
        if let Some(mut h) = header {
            h.compressed = dtype == MI_COMPRESSED;
            h.offset = pos;
            if let (Some(array), Some(w)) = (array, wanted.as_ref()) {
                if let Some(i) = w.names.iter().position(|n| *n == h.name) {
                    if found[i].is_none() {
                        found[i] = Some(array);
                        still_missing -= 1;
                    }
                }
            }
            infos.push(h);
        }
        pos = next;
    }
    Ok((infos, found))
}

fn distinct(names: &[&str]) -> usize {
    names
        .iter()
        .enumerate()
        .filter(|(i, n)| !names[..*i].contains(n))
        .count()
}

/// Reads a matrix element's header and, when it is wanted (and not found yet),
/// its data. Returns `None` as header for an empty placeholder matrix.
fn read_variable<R: Read>(
    sub: &mut Sub<'_, R>,
    wanted: Option<&Wanted<'_>>,
) -> Result<(Option<MatVarInfo>, Option<MatArray>)> {
    let Some(header) = read_matrix_header(sub)? else {
        return Ok((None, None));
    };
    let is_wanted = wanted.is_some_and(|w| w.names.contains(&header.info.name.as_str()));
    if !is_wanted {
        return Ok((Some(header.info), None));
    }
    let array = read_matrix_data(sub, &header)?;
    Ok((Some(header.info), Some(array)))
}

struct MatrixHeader {
    info: MatVarInfo,
    logical: bool,
}

fn read_matrix_header<R: Read>(sub: &mut Sub<'_, R>) -> Result<Option<MatrixHeader>> {
    if sub.remaining == 0 {
        // An empty miMATRIX is a placeholder some writers use; it has no name.
        return Ok(None);
    }
    let (ftype, flags) = sub.read_small_element(16, "array flags")?;
    if ftype != MI_UINT32 || flags.len() != 8 {
        return Err(sub.err(format!(
            "expected array flags as 8 bytes of miUINT32 (type 6), found {} bytes of type {ftype}",
            flags.len()
        )));
    }
    let word = sub.endian.u32([flags[0], flags[1], flags[2], flags[3]]);
    let class = MatClass::from_code((word & 0xff) as u8);
    let complex = word & FLAG_COMPLEX != 0;
    let logical = word & FLAG_LOGICAL != 0;
    let dims = if class == MatClass::Opaque {
        // Opaque objects (MATLAB strings, tables, ...) have no dimensions element.
        Vec::new()
    } else {
        let (dtype, raw) = sub.read_small_element(MAX_DIMS * 4, "dimensions")?;
        if dtype != MI_INT32 || raw.len() % 4 != 0 || raw.len() < 8 {
            return Err(sub.err(format!(
                "expected dimensions as at least 2 values of miINT32 (type 5), found {} bytes of type {dtype}",
                raw.len()
            )));
        }
        let mut dims = Vec::with_capacity(raw.len() / 4);
        for c in raw.chunks_exact(4) {
            let d = sub.endian.u32([c[0], c[1], c[2], c[3]]) as i32;
            if d < 0 {
                return Err(sub.err(format!("expected non-negative dimensions, found {d}")));
            }
            dims.push(d as usize);
        }
        dims
    };
    let (ntype, raw) = sub.read_small_element(MAX_NAME_BYTES, "array name")?;
    if ntype != MI_INT8 && ntype != MI_UINT8 && ntype != MI_UTF8 {
        return Err(sub.err(format!(
            "expected the array name as miINT8 (type 1), found type {ntype}"
        )));
    }
    let name = String::from_utf8_lossy(&raw).into_owned();
    sub.what = format!("variable `{name}`");
    Ok(Some(MatrixHeader {
        info: MatVarInfo {
            name,
            class,
            dims,
            complex,
            compressed: false,
            offset: 0,
        },
        logical,
    }))
}

fn read_matrix_data<R: Read>(sub: &mut Sub<'_, R>, header: &MatrixHeader) -> Result<MatArray> {
    let info = &header.info;
    if !info.class.is_numeric() {
        let hint = match info.class {
            MatClass::Sparse => "sparse arrays are not supported",
            MatClass::Cell | MatClass::Struct | MatClass::Object => "cell, struct and object arrays are not supported",
            _ => "only numeric arrays are supported",
        };
        return Err(sub.err(format!("expected a numeric array, found class {} ({hint})", info.class)));
    }
    if info.complex {
        return Err(sub.err(format!(
            "expected a real array, found a complex {} array (complex data is not supported)",
            info.class
        )));
    }
    let numel = info
        .dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .filter(|&n| n <= MAX_NUMEL)
        .ok_or_else(|| {
            sub.err(format!(
                "dims {} hold more than the {MAX_NUMEL} elements this reader accepts",
                dims_string(&info.dims)
            ))
        })?;
    let tag = sub.read_tag()?;
    let storage = Storage::from_type(tag.dtype).ok_or_else(|| {
        sub.err(format!(
            "expected the real part as a numeric data element (types 1-7, 9, 12, 13), found type {}",
            tag.dtype
        ))
    })?;
    let expected = numel * storage.size() as u64;
    if tag.nbytes as u64 != expected {
        return Err(sub.err(format!(
            "real part holds {} bytes of {storage}, expected {expected} ({} elements of dims {} x {} bytes)",
            tag.nbytes,
            numel,
            dims_string(&info.dims),
            storage.size()
        )));
    }
    let numel = usize::try_from(numel)
        .map_err(|_| sub.err(format!("{numel} elements do not fit in memory on this platform")))?;
    let data = match tag.inline {
        Some(bytes) => {
            let n = tag.nbytes as usize;
            let mut inline = Sub::new(
                &bytes[..n.min(4)],
                n as u64,
                n as u64,
                sub.endian,
                sub.source,
                sub.what.clone(),
            );
            read_values(&mut inline, storage, numel, info.class)?
        }
        None => {
            if expected > sub.remaining {
                return Err(sub.err(format!(
                    "real part declares {expected} bytes, but only {} remain in the matrix element",
                    sub.remaining
                )));
            }
            let data = read_values(sub, storage, numel, info.class)?;
            sub.skip_padding(expected)?;
            data
        }
    };
    Ok(MatArray {
        name: info.name.clone(),
        class: info.class,
        dims: info.dims.clone(),
        logical: header.logical,
        data,
    })
}

/// Reads `numel` values stored as `storage` and converts them to `class`.
fn read_values<R: Read>(sub: &mut Sub<'_, R>, storage: Storage, numel: usize, class: MatClass) -> Result<MatData> {
    Ok(match class {
        MatClass::Uint8 if storage == Storage::U8 => MatData::U8(read_bytes(sub, numel)?),
        MatClass::Int8 if storage == Storage::I8 => {
            MatData::I8(read_bytes(sub, numel)?.into_iter().map(|b| b as i8).collect())
        }
        MatClass::Uint8 => MatData::U8(convert(sub, storage, numel, class)?),
        MatClass::Int8 => MatData::I8(convert(sub, storage, numel, class)?),
        MatClass::Int16 => MatData::I16(convert(sub, storage, numel, class)?),
        MatClass::Uint16 => MatData::U16(convert(sub, storage, numel, class)?),
        MatClass::Int32 => MatData::I32(convert(sub, storage, numel, class)?),
        MatClass::Uint32 => MatData::U32(convert(sub, storage, numel, class)?),
        MatClass::Int64 => MatData::I64(convert(sub, storage, numel, class)?),
        MatClass::Uint64 => MatData::U64(convert(sub, storage, numel, class)?),
        MatClass::Single => MatData::F32(convert(sub, storage, numel, class)?),
        MatClass::Double => MatData::F64(convert(sub, storage, numel, class)?),
        other => return Err(sub.err(format!("expected a numeric array, found class {other}"))),
    })
}

/// Reads `n` raw bytes straight into the returned `Vec`, in chunks.
fn read_bytes<R: Read>(sub: &mut Sub<'_, R>, n: usize) -> Result<Vec<u8>> {
    let mut v: Vec<u8> = Vec::new();
    let initial = (n as u64).min(sub.plausible) as usize;
    v.try_reserve_exact(initial)
        .map_err(|_| sub.err(format!("cannot allocate {initial} bytes")))?;
    while v.len() < n {
        let k = CHUNK.min(n - v.len());
        let old = v.len();
        v.try_reserve(k)
            .map_err(|_| sub.err(format!("cannot allocate {} bytes", old + k)))?;
        v.resize(old + k, 0);
        sub.read_exact(&mut v[old..])?;
    }
    Ok(v)
}

/// Reads `numel` values stored as `storage`, converting each to `T`.
fn convert<R: Read, T: FromNum>(
    sub: &mut Sub<'_, R>,
    storage: Storage,
    numel: usize,
    class: MatClass,
) -> Result<Vec<T>> {
    let size = storage.size();
    let mut out: Vec<T> = Vec::new();
    let initial = (numel as u64).min(sub.plausible / size as u64) as usize;
    out.try_reserve_exact(initial)
        .map_err(|_| sub.err(format!("cannot allocate {initial} values of class {class}")))?;
    let per_chunk = (CHUNK / size).max(1);
    let mut buf = vec![0u8; per_chunk.min(numel.max(1)) * size];
    let mut done = 0usize;
    while done < numel {
        let k = per_chunk.min(numel - done);
        let bytes = &mut buf[..k * size];
        sub.read_exact(bytes)?;
        out.try_reserve(k)
            .map_err(|_| sub.err(format!("cannot allocate {} values of class {class}", done + k)))?;
        for (j, b) in bytes.chunks_exact(size).enumerate() {
            let v = storage.decode(b, sub.endian);
            match T::from_num(v) {
                Some(x) => out.push(x),
                None => {
                    return Err(sub.err(format!(
                        "element {} is {v}, stored as {storage}: expected a value that fits class {class}",
                        done + j
                    )))
                }
            }
        }
        done += k;
    }
    Ok(out)
}

/// How the values of a numeric data element are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Storage {
    I8,
    U8,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    F32,
    F64,
}

impl Storage {
    fn from_type(t: u32) -> Option<Self> {
        Some(match t {
            MI_INT8 => Storage::I8,
            MI_UINT8 => Storage::U8,
            MI_INT16 => Storage::I16,
            MI_UINT16 => Storage::U16,
            MI_INT32 => Storage::I32,
            MI_UINT32 => Storage::U32,
            MI_SINGLE => Storage::F32,
            MI_DOUBLE => Storage::F64,
            MI_INT64 => Storage::I64,
            MI_UINT64 => Storage::U64,
            _ => return None,
        })
    }
    fn size(self) -> usize {
        match self {
            Storage::I8 | Storage::U8 => 1,
            Storage::I16 | Storage::U16 => 2,
            Storage::I32 | Storage::U32 | Storage::F32 => 4,
            Storage::I64 | Storage::U64 | Storage::F64 => 8,
        }
    }
    /// Decodes one value; `b` has exactly `self.size()` bytes.
    fn decode(self, b: &[u8], e: Endian) -> Num {
        fn arr<const N: usize>(b: &[u8], e: Endian) -> [u8; N] {
            let mut a = [0u8; N];
            let n = N.min(b.len());
            a[..n].copy_from_slice(&b[..n]);
            if e == Endian::Big {
                a.reverse();
            }
            a // now little-endian
        }
        match self {
            Storage::I8 => Num::I(i8::from_le_bytes(arr(b, e)) as i64),
            Storage::U8 => Num::U(u8::from_le_bytes(arr(b, e)) as u64),
            Storage::I16 => Num::I(i16::from_le_bytes(arr(b, e)) as i64),
            Storage::U16 => Num::U(u16::from_le_bytes(arr(b, e)) as u64),
            Storage::I32 => Num::I(i32::from_le_bytes(arr(b, e)) as i64),
            Storage::U32 => Num::U(u32::from_le_bytes(arr(b, e)) as u64),
            Storage::I64 => Num::I(i64::from_le_bytes(arr(b, e))),
            Storage::U64 => Num::U(u64::from_le_bytes(arr(b, e))),
            Storage::F32 => Num::F(f32::from_le_bytes(arr(b, e)) as f64),
            Storage::F64 => Num::F(f64::from_le_bytes(arr(b, e))),
        }
    }
}

impl fmt::Display for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Storage::I8 => "miINT8",
            Storage::U8 => "miUINT8",
            Storage::I16 => "miINT16",
            Storage::U16 => "miUINT16",
            Storage::I32 => "miINT32",
            Storage::U32 => "miUINT32",
            Storage::I64 => "miINT64",
            Storage::U64 => "miUINT64",
            Storage::F32 => "miSINGLE",
            Storage::F64 => "miDOUBLE",
        })
    }
}

/// A decoded stored value, before conversion to the array's class.
#[derive(Debug, Clone, Copy)]
enum Num {
    I(i64),
    U(u64),
    F(f64),
}

impl fmt::Display for Num {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Num::I(v) => write!(f, "{v}"),
            Num::U(v) => write!(f, "{v}"),
            Num::F(v) => write!(f, "{v}"),
        }
    }
}

/// Conversion of a stored value to a class's element type; `None` if it does not fit.
trait FromNum: Sized {
    fn from_num(n: Num) -> Option<Self>;
}

macro_rules! from_num_int {
    ($($t:ty),*) => {$(
        impl FromNum for $t {
            fn from_num(n: Num) -> Option<Self> {
                match n {
                    Num::I(v) => <$t>::try_from(v).ok(),
                    Num::U(v) => <$t>::try_from(v).ok(),
                    // Integral floats within ±2^100 convert exactly to i128 first.
                    Num::F(v) if v.is_finite() && v.fract() == 0.0 && v.abs() < 1.0e30 => <$t>::try_from(v as i128).ok(),
                    Num::F(_) => None,
                }
            }
        }
    )*};
}
from_num_int!(i8, u8, i16, u16, i32, u32, i64, u64);

impl FromNum for f64 {
    fn from_num(n: Num) -> Option<Self> {
        Some(match n {
            Num::I(v) => v as f64,
            Num::U(v) => v as f64,
            Num::F(v) => v,
        })
    }
}

impl FromNum for f32 {
    fn from_num(n: Num) -> Option<Self> {
        Some(match n {
            Num::I(v) => v as f32,
            Num::U(v) => v as f32,
            Num::F(v) => v as f32,
        })
    }
}

/// A data element tag. `inline` holds the data of a small data element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tag {
    dtype: u32,
    nbytes: u32,
    inline: Option<[u8; 4]>,
}

/// Decodes an 8-byte tag. In the small format the first 4-byte word holds the
/// byte count in its upper 16 bits and the type in its lower 16 bits, and the
/// (at most 4) data bytes follow in the second word.
fn parse_tag(b: [u8; 8], e: Endian) -> Tag {
    let w0 = e.u32([b[0], b[1], b[2], b[3]]);
    if w0 >> 16 != 0 {
        Tag {
            dtype: w0 & 0xffff,
            nbytes: w0 >> 16,
            inline: Some([b[4], b[5], b[6], b[7]]),
        }
    } else {
        Tag {
            dtype: w0,
            nbytes: e.u32([b[4], b[5], b[6], b[7]]),
            inline: None,
        }
    }
}

/// A reader bounded by the bytes left in the enclosing element, which turns
/// every failure into a [`DataError`] naming the file and the variable.
struct Sub<'p, R> {
    inner: R,
    /// Bytes left in the enclosing element (as declared; untrusted for zlib data).
    remaining: u64,
    /// Upper bound on the bytes this element can really deliver (for allocations).
    plausible: u64,
    endian: Endian,
    source: &'p Path,
    /// "variable `X`" once the name is known, else "data element at offset N".
    what: String,
}

impl<'p, R: Read> Sub<'p, R> {
    fn new(inner: R, remaining: u64, plausible: u64, endian: Endian, source: &'p Path, what: String) -> Self {
        Self {
            inner,
            remaining,
            plausible,
            endian,
            source,
            what,
        }
    }

    fn err(&self, message: String) -> DataError {
        DataError::format(self.source, format!("{}: {message}", self.what))
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<()> {
        let n = buf.len() as u64;
        if n > self.remaining {
            return Err(self.err(format!(
                "expected {n} more bytes, but the enclosing element has only {} left",
                self.remaining
            )));
        }
        self.inner
            .read_exact(buf)
            .map_err(|e| stream_error(self.source, &self.what, e))?;
        self.remaining -= n;
        self.plausible = self.plausible.saturating_sub(n);
        Ok(())
    }

    fn read_tag(&mut self) -> Result<Tag> {
        let mut b = [0u8; 8];
        self.read_exact(&mut b)?;
        let tag = parse_tag(b, self.endian);
        if tag.inline.is_some() && tag.nbytes > 4 {
            return Err(self.err(format!(
                "malformed small data element: expected at most 4 bytes, found a size of {}",
                tag.nbytes
            )));
        }
        Ok(tag)
    }

    /// Skips the padding after `nbytes` of element data (to a multiple of 8); at
    /// the very end of the enclosing element missing padding is tolerated.
    fn skip_padding(&mut self, nbytes: u64) -> Result<()> {
        let pad = ((8 - nbytes % 8) % 8).min(self.remaining);
        let mut b = [0u8; 8];
        self.read_exact(&mut b[..pad as usize])
    }

    /// Reads a whole (small) element of at most `max` bytes: its type and data.
    fn read_small_element(&mut self, max: u32, what: &str) -> Result<(u32, Vec<u8>)> {
        let tag = self.read_tag()?;
        if let Some(bytes) = tag.inline {
            return Ok((tag.dtype, bytes[..tag.nbytes as usize].to_vec()));
        }
        if tag.nbytes > max {
            return Err(self.err(format!(
                "expected the {what} element to hold at most {max} bytes, found {}",
                tag.nbytes
            )));
        }
        let mut v = vec![0u8; tag.nbytes as usize];
        self.read_exact(&mut v)?;
        self.skip_padding(tag.nbytes as u64)?;
        Ok((tag.dtype, v))
    }
}

/// Maps a read failure: running out of data means truncation, bad zlib data
/// means corruption, anything else is an I/O error.
fn stream_error(source: &Path, what: &str, e: io::Error) -> DataError {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => DataError::format(
            source,
            format!("{what}: unexpected end of data (file truncated or corrupt)"),
        ),
        io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput => {
            DataError::format(source, format!("{what}: corrupt compressed data: {e}"))
        }
        _ => DataError::io(source, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::ZlibEncoder;
    use flate2::Compression;
    use proptest::prelude::*;
    use std::io::{Cursor, Write};

    /// Builds MAT-file bytes in either byte order.
    struct Builder {
        e: Endian,
    }

    impl Builder {
        fn u32(&self, v: u32) -> [u8; 4] {
            match self.e {
                Endian::Little => v.to_le_bytes(),
                Endian::Big => v.to_be_bytes(),
            }
        }
        fn header(&self, version: u16) -> Vec<u8> {
            let mut h = vec![b' '; 128];
            let text = b"MATLAB 5.0 MAT-file, hand-built test";
            h[..text.len()].copy_from_slice(text);
            h[116..124].fill(0);
            let v = match self.e {
                Endian::Little => version.to_le_bytes(),
                Endian::Big => version.to_be_bytes(),
            };
            h[124..126].copy_from_slice(&v);
            h[126..128].copy_from_slice(if self.e == Endian::Little { b"IM" } else { b"MI" });
            h
        }
        /// A normal element: tag + data + padding.
        fn elem(&self, dtype: u32, data: &[u8]) -> Vec<u8> {
            let mut v = Vec::new();
            v.extend_from_slice(&self.u32(dtype));
            v.extend_from_slice(&self.u32(data.len() as u32));
            v.extend_from_slice(data);
            while v.len() % 8 != 0 {
                v.push(0);
            }
            v
        }
        /// A small element (at most 4 bytes of data).
        fn small(&self, dtype: u32, data: &[u8]) -> Vec<u8> {
            assert!(data.len() <= 4);
            let mut v = self.u32(((data.len() as u32) << 16) | dtype).to_vec();
            let mut d = [0u8; 4];
            d[..data.len()].copy_from_slice(data);
            v.extend_from_slice(&d);
            v
        }
        /// A full miMATRIX element.
        fn matrix(&self, class: u8, flags: u32, dims: &[i32], name: &str, data: Option<(u32, Vec<u8>)>) -> Vec<u8> {
            let mut body = Vec::new();
            let mut f = self.u32(flags | class as u32).to_vec();
            f.extend_from_slice(&self.u32(0));
            body.extend(self.elem(MI_UINT32, &f));
            let d: Vec<u8> = dims.iter().flat_map(|&x| self.u32(x as u32)).collect();
            body.extend(self.elem(MI_INT32, &d));
            if name.len() <= 4 {
                body.extend(self.small(MI_INT8, name.as_bytes()));
            } else {
                body.extend(self.elem(MI_INT8, name.as_bytes()));
            }
            if let Some((t, bytes)) = data {
                if bytes.len() <= 4 && t != MI_DOUBLE {
                    body.extend(self.small(t, &bytes));
                } else {
                    body.extend(self.elem(t, &bytes));
                }
            }
            self.elem(MI_MATRIX, &body)
        }
        fn compressed(&self, element: &[u8]) -> Vec<u8> {
            let mut enc = ZlibEncoder::new(Vec::new(), Compression::default());
            enc.write_all(element).unwrap();
            let z = enc.finish().unwrap();
            let mut v = self.u32(MI_COMPRESSED).to_vec();
            v.extend_from_slice(&self.u32(z.len() as u32));
            v.extend(z); // compressed elements are not padded
            v
        }
        fn f64s(&self, vals: &[f64]) -> Vec<u8> {
            vals.iter()
                .flat_map(|v| match self.e {
                    Endian::Little => v.to_le_bytes(),
                    Endian::Big => v.to_be_bytes(),
                })
                .collect()
        }
        fn i16s(&self, vals: &[i16]) -> Vec<u8> {
            vals.iter()
                .flat_map(|v| match self.e {
                    Endian::Little => v.to_le_bytes(),
                    Endian::Big => v.to_be_bytes(),
                })
                .collect()
        }
    }

    fn read(bytes: &[u8], wanted: &[&str]) -> Result<Vec<MatArray>> {
        read_mat_variables_from(Cursor::new(bytes), Path::new("mem.mat"), wanted)
    }

    #[test]
    fn small_element_tag() {
        // Little-endian: type 1 (miINT8), 1 byte, data "X".
        let t = parse_tag([1, 0, 1, 0, b'X', 0, 0, 0], Endian::Little);
        assert_eq!(
            t,
            Tag {
                dtype: MI_INT8,
                nbytes: 1,
                inline: Some([b'X', 0, 0, 0])
            }
        );
        // Big-endian: the same word byte-swapped.
        let t = parse_tag([0, 3, 0, 2, 7, 8, 9, 0], Endian::Big);
        assert_eq!(
            t,
            Tag {
                dtype: MI_UINT8,
                nbytes: 3,
                inline: Some([7, 8, 9, 0])
            }
        );
        // Normal format: type and size in separate words.
        let t = parse_tag([14, 0, 0, 0, 0x10, 0x27, 0, 0], Endian::Little);
        assert_eq!(
            t,
            Tag {
                dtype: MI_MATRIX,
                nbytes: 10_000,
                inline: None
            }
        );
    }

    fn sample_file(e: Endian, compress: bool) -> Vec<u8> {
        let b = Builder { e };
        let mut f = b.header(0x0100);
        // A struct-classed variable that is never asked for (skipped, not rejected).
        let skip = b.matrix(2, 0, &[1, 1], "meta", None);
        // uint8 2x3 stored as miUINT8: columns [1 2], [3 4], [5 6].
        let x = b.matrix(9, 0, &[2, 3], "X", Some((MI_UINT8, vec![1, 2, 3, 4, 5, 6])));
        // double 3x1 stored as miUINT8, as MATLAB does for small integers.
        let y = b.matrix(6, 0, &[3, 1], "y", Some((MI_UINT8, vec![10, 1, 9])));
        // int16 1x2 stored as miINT16.
        let z = b.matrix(10, 0, &[1, 2], "zeta_long", Some((MI_INT16, b.i16s(&[-300, 7]))));
        for m in [skip, x, y, z] {
            f.extend(if compress { b.compressed(&m) } else { m });
        }
        f
    }

    #[test]
    fn hand_built_files_in_both_byte_orders() {
        for e in [Endian::Little, Endian::Big] {
            for compress in [false, true] {
                let f = sample_file(e, compress);
                let v = read(&f, &["y", "X", "zeta_long"]).unwrap();
                assert_eq!(v[0].name, "y");
                assert_eq!(v[0].class, MatClass::Double);
                assert_eq!(v[0].dims, vec![3, 1]);
                assert_eq!(v[0].data, MatData::F64(vec![10.0, 1.0, 9.0]));
                assert_eq!(v[0].data.to_i64_vec().unwrap(), vec![10, 1, 9]);
                assert_eq!(v[1].data, MatData::U8(vec![1, 2, 3, 4, 5, 6]));
                assert_eq!(v[1].dims_string(), "2x3");
                assert_eq!(v[2].data, MatData::I16(vec![-300, 7]));
            }
        }
    }

    #[test]
    fn double_stored_as_double_and_small_inline_data() {
        let b = Builder { e: Endian::Little };
        let mut f = b.header(0x0100);
        f.extend(b.matrix(6, 0, &[1, 2], "d", Some((MI_DOUBLE, b.f64s(&[0.5, -2.0])))));
        // 3 uint8 values fit in a small data element.
        f.extend(b.matrix(9, FLAG_LOGICAL, &[1, 3], "l", Some((MI_UINT8, vec![1, 0, 1]))));
        let v = read(&f, &["d", "l"]).unwrap();
        assert_eq!(v[0].data, MatData::F64(vec![0.5, -2.0]));
        assert_eq!(v[0].data.to_i64_vec(), Err((0, 0.5)));
        assert_eq!(v[1].data, MatData::U8(vec![1, 0, 1]));
        assert!(v[1].logical);
    }

    #[test]
    fn rejects_unsupported_and_inconsistent_variables() {
        let b = Builder { e: Endian::Little };
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                b.matrix(2, 0, &[1, 1], "s", None),
                "variable `s`: expected a numeric array, found class struct",
            ),
            (
                b.matrix(1, 0, &[1, 1], "c", None),
                "variable `c`: expected a numeric array, found class cell",
            ),
            (
                b.matrix(6, FLAG_COMPLEX, &[1, 1], "z", Some((MI_DOUBLE, b.f64s(&[1.0])))),
                "variable `z`: expected a real array, found a complex double array",
            ),
            (
                b.matrix(9, 0, &[2, 2], "u", Some((MI_UINT8, vec![1, 2, 3]))),
                "variable `u`: real part holds 3 bytes of miUINT8, expected 4",
            ),
            (
                b.matrix(9, 0, &[1, 2], "u", Some((MI_INT16, b.i16s(&[3, 300])))),
                "variable `u`: element 1 is 300, stored as miINT16: expected a value that fits class uint8",
            ),
            (
                b.matrix(9, 0, &[65536, 65536, 65536], "big", Some((MI_UINT8, vec![0; 8]))),
                "variable `big`: dims 65536x65536x65536 hold more than",
            ),
        ];
        for (m, msg) in cases {
            let mut f = b.header(0x0100);
            f.extend(m);
            let name = ["s", "c", "z", "u", "big"];
            let e = read(&f, &name).unwrap_err().to_string();
            assert!(e.starts_with("mem.mat: "), "{e}");
            assert!(e.contains(msg), "expected `{msg}` in `{e}`");
        }
    }

    #[test]
    fn missing_variable_lists_what_the_file_holds() {
        let f = sample_file(Endian::Little, true);
        let e = read(&f, &["X", "labels"]).unwrap_err().to_string();
        assert!(
            e.contains("variable `labels` not found: the file holds meta (struct 1x1), X (uint8 2x3)"),
            "{e}"
        );
        // Duplicates in `wanted` are fine.
        let v = read(&f, &["X", "X"]).unwrap();
        assert_eq!(v[0], v[1]);
    }

    #[test]
    fn header_errors() {
        let b = Builder { e: Endian::Little };
        let e = read(&b.header(0x0200), &["X"]).unwrap_err().to_string();
        assert!(e.contains("v7.3 (HDF5)"), "{e}");
        let e = read(&b.header(0x0300), &["X"]).unwrap_err().to_string();
        assert!(e.contains("expected 0x0100, found 0x0300"), "{e}");
        let mut h = b.header(0x0100);
        h[126..128].copy_from_slice(b"XX");
        let e = read(&h, &["X"]).unwrap_err().to_string();
        assert!(e.contains("expected endian indicator \"IM\" or \"MI\""), "{e}");
        let e = read(&h[..100], &["X"]).unwrap_err().to_string();
        assert!(e.contains("found only 100 bytes"), "{e}");
        let mut f = sample_file(Endian::Little, false);
        f.truncate(f.len() - 3);
        let e = read(&f, &["zeta_long"]).unwrap_err().to_string();
        assert!(e.contains("file is truncated"), "{e}");
    }

    #[test]
    fn corrupt_zlib_data_is_reported() {
        let mut f = sample_file(Endian::Little, true);
        let n = f.len();
        // Flip bytes in the last compressed stream (zeta_long), keeping its size.
        for b in &mut f[n - 10..n - 2] {
            *b ^= 0x5a;
        }
        let e = read(&f, &["zeta_long"]).unwrap_err().to_string();
        assert!(
            e.contains("corrupt compressed data") || e.contains("unexpected end of data") || e.contains("zeta_long"),
            "{e}"
        );
    }

    #[test]
    fn lists_variables_without_data() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.mat");
        std::fs::write(&p, sample_file(Endian::Big, true)).unwrap();
        let infos = list_mat_variables(&p).unwrap();
        let names: Vec<_> = infos.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["meta", "X", "y", "zeta_long"]);
        assert!(infos.iter().all(|i| i.compressed));
        assert_eq!(infos[3].to_string(), "zeta_long (int16 1x2)");
        let v = read_mat_variables(&p, &["X"]).unwrap();
        assert_eq!(v[0].dims, vec![2, 3]);
    }

    const FIXTURE_COMPRESSED: &[u8] = include_bytes!("../tests/fixtures/svhn_small_compressed.mat");
    const FIXTURE_UNCOMPRESSED: &[u8] = include_bytes!("../tests/fixtures/svhn_small_uncompressed.mat");

    #[test]
    fn fixtures_parse() {
        for f in [FIXTURE_COMPRESSED, FIXTURE_UNCOMPRESSED] {
            let v = read(f, &["X", "y"]).unwrap();
            assert_eq!(v[0].class, MatClass::Uint8);
            assert_eq!(&v[0].dims[..3], &[32, 32, 3]);
            assert_eq!(v[1].class, MatClass::Double);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn random_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..2048), with_header in any::<bool>()) {
            let mut f = if with_header { Builder { e: Endian::Little }.header(0x0100) } else { Vec::new() };
            f.extend(body);
            let _ = read(&f, &["X", "y"]);
        }

        #[test]
        fn truncations_never_panic(frac in 0.0f64..1.0, compressed in any::<bool>()) {
            let src = if compressed { FIXTURE_COMPRESSED } else { FIXTURE_UNCOMPRESSED };
            let n = ((src.len() as f64) * frac) as usize;
            prop_assert!(read(&src[..n], &["X", "y"]).is_err());
        }

        #[test]
        fn corruptions_never_panic(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            compressed in any::<bool>(),
        ) {
            let src = if compressed { FIXTURE_COMPRESSED } else { FIXTURE_UNCOMPRESSED };
            let mut f = src.to_vec();
            // Mostly hit the header region and tags, where sizes live.
            for (i, v) in flips {
                let idx = if v % 2 == 0 { 128 + i.index(256) } else { i.index(f.len()) };
                f[idx] ^= v | 1;
            }
            let _ = read(&f, &["X", "y"]);
        }
    }
}
