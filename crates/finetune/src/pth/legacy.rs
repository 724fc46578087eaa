//! The legacy `torch.save` format (PyTorch before 1.6, or
//! `_use_new_zipfile_serialization=False`), read as data.
//!
//! # Layout
//!
//! ```text
//! pickle  MAGIC_NUMBER                0x1950a86a20f9469cfc6c
//! pickle  PROTOCOL_VERSION            1001
//! pickle  sys_info                    {"protocol_version": 1001, "little_endian": True, "type_sizes": {...}}
//! pickle  the saved object            storages as persistent ids
//!                                     ("storage", torch.FloatStorage, key, location, numel, view_metadata)
//! pickle  the storage keys            sorted list of the keys above
//! then, for each key in that order:   numel as 8 bytes little-endian, then numel * element-size bytes
//! ```
//!
//! `view_metadata` is `None`, or `(view_key, offset, view_numel)` for the storage
//! views that PyTorch 0.x could save. Storage bytes are little-endian (PyTorch
//! converts on big-endian machines); a file whose `sys_info` says `little_endian:
//! False` is refused as unsupported rather than guessed at.
//!
//! # Limits
//!
//! The pickles at the head of the file are read into memory in growing windows,
//! never past [`super::MAX_PICKLE_BYTES`] or the file's length; every storage's
//! element count must equal the one its persistent id gave and fit in the bytes
//! left in the file before anything is allocated; storages no selected tensor uses
//! are skipped, not read. Views go through the same checks as in the zip format.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::rc::Rc;

use candle_core::Tensor;

use super::{
    materialize, select_tensors, well_known_alias, OutputBudget, PickleError, PthOptions, StorageKind, StorageRef,
    Unpickler, Value, MAX_PICKLE_BYTES,
};
use crate::error::{FinetuneError, Result};

/// The first pickle of every legacy file.
pub const MAGIC_NUMBER: i128 = 0x1950a86a20f9469cfc6c;

/// The second pickle: the only legacy protocol version PyTorch ever wrote.
pub const PROTOCOL_VERSION: i64 = 1001;

/// First window of the file read for the header pickles; doubled as needed.
const FIRST_WINDOW: u64 = 64 << 10;

/// Whether a file starting with `head` is in the legacy format: a pickle (protocol
/// 2 to 5 opcode, or protocol 0/1's text `L` of the magic number).
pub fn looks_legacy(head: &[u8]) -> bool {
    matches!(head, [0x80, 2..=5, ..]) || head.starts_with(b"L1195")
}

/// The five header pickles, parsed.
struct Header {
    root: Value,
    storages: Vec<Rc<StorageRef>>,
    keys: Vec<String>,
    /// File offset of the first raw storage.
    data_start: u64,
}

enum HeaderError {
    Pickle(PickleError),
    /// The window ended inside a pickle: retry with at least this many bytes.
    NeedMore(u64),
    /// A header value is not what torch writes.
    Invalid(String),
    Unsupported(String),
}

/// Parses the five pickles at the head of `buf`; `complete` says `buf` is the whole file.
fn parse_header(buf: &[u8], complete: bool) -> std::result::Result<Header, HeaderError> {
    const WHAT: [&str; 5] = [
        "magic number",
        "protocol version",
        "sys info",
        "saved object",
        "storage key list",
    ];
    let mut pos = 0usize;
    let mut values = Vec::with_capacity(5);
    let mut storages = Vec::new();
    for what in WHAT {
        let mut u = Unpickler::new(&buf[pos..]);
        let result = u.run();
        match (result, u.short_by) {
            (Ok(v), _) => {
                values.push(v);
                storages.append(&mut u.storages);
                pos += u.pos;
            }
            (Err(_), Some(short)) if !complete => {
                return Err(HeaderError::NeedMore((buf.len() as u64).saturating_add(short)))
            }
            (Err(PickleError::Invalid(reason)), _) => {
                return Err(HeaderError::Invalid(format!("{what} pickle at byte {pos}: {reason}")))
            }
            (Err(e), _) => return Err(HeaderError::Pickle(e)),
        }
        // Check each header value as soon as it is read: a file that is not a
        // legacy checkpoint fails on its first pickle.
        match (what, values.last()) {
            ("magic number", Some(Value::BigInt(Some(MAGIC_NUMBER)))) => {}
            ("magic number", _) => {
                return Err(HeaderError::Invalid(
                    "it starts with a pickle but not with torch.save's magic number, so it was not \
                     written by torch.save"
                        .into(),
                ))
            }
            ("protocol version", Some(Value::Int(PROTOCOL_VERSION))) => {}
            ("protocol version", v) => {
                return Err(HeaderError::Unsupported(format!(
                    "legacy protocol version {} (only {PROTOCOL_VERSION} exists)",
                    match v {
                        Some(Value::Int(i)) => i.to_string(),
                        Some(other) => format!("of type {}", other.kind()),
                        None => "missing".into(),
                    }
                )))
            }
            ("sys info", Some(Value::Dict(d))) => {
                let little = d
                    .borrow()
                    .items
                    .iter()
                    .find(|(k, _)| matches!(k, Value::Str(s) if &**s == "little_endian"))
                    .map(|(_, v)| v.clone());
                match little {
                    None | Some(Value::Bool(true)) => {}
                    Some(Value::Bool(false)) => {
                        return Err(HeaderError::Unsupported(
                            "written on a big-endian machine (sys_info little_endian = False); load and \
                             re-save it with PyTorch on a little-endian machine"
                                .into(),
                        ))
                    }
                    Some(other) => {
                        return Err(HeaderError::Invalid(format!(
                            "sys info's little_endian is a {}, not a bool",
                            other.kind()
                        )))
                    }
                }
            }
            ("sys info", v) => {
                return Err(HeaderError::Invalid(format!(
                    "sys info is a {}, not a dict",
                    v.map_or("nothing", Value::kind)
                )))
            }
            _ => {}
        }
    }
    let keys_value = values.pop().expect("five values");
    let root = values.pop().expect("five values");
    let Some(items) = keys_value.items() else {
        return Err(HeaderError::Invalid(format!(
            "storage key list is a {}, not a list",
            keys_value.kind()
        )));
    };
    let keys = items
        .iter()
        .map(|k| match k {
            Value::Str(s) => Ok(s.to_string()),
            Value::Int(i) => Ok(i.to_string()),
            other => Err(HeaderError::Invalid(format!(
                "storage key list holds a {}, not a string",
                other.kind()
            ))),
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(Header {
        root,
        storages,
        keys,
        data_start: pos as u64,
    })
}

/// Reads a legacy checkpoint of `file_len` bytes from `reader` (positioned anywhere).
pub(super) fn read_legacy<R: Read + Seek>(
    mut reader: R,
    path: &Path,
    file_len: u64,
    options: &PthOptions,
) -> Result<Vec<(String, Tensor)>> {
    let invalid = |reason: String| FinetuneError::InvalidCheckpoint {
        path: path.to_path_buf(),
        reason: format!("legacy (pre-1.6) torch.save file: {reason}"),
    };
    let io = |e: std::io::Error| FinetuneError::io(path, e);

    // 1. The header pickles, from a window of the file that grows until they fit.
    let max_window = file_len.min(MAX_PICKLE_BYTES);
    let mut buf: Vec<u8> = Vec::new();
    let mut window = FIRST_WINDOW.min(max_window);
    reader.seek(SeekFrom::Start(0)).map_err(io)?;
    let header = loop {
        let have = buf.len() as u64;
        (&mut reader).take(window - have).read_to_end(&mut buf).map_err(io)?;
        if (buf.len() as u64) < window {
            return Err(invalid(format!(
                "the file shrank while being read ({} of {window} bytes)",
                buf.len()
            )));
        }
        match parse_header(&buf, window == file_len) {
            Ok(h) => break h,
            Err(HeaderError::NeedMore(_)) if window >= max_window => {
                return Err(invalid(format!(
                    "its pickles do not end within the first {max_window} bytes (more than the \
                     {MAX_PICKLE_BYTES} accepted)"
                )))
            }
            Err(HeaderError::NeedMore(need)) => window = need.max(window.saturating_mul(2)).min(max_window),
            Err(HeaderError::Invalid(reason)) => return Err(invalid(reason)),
            Err(HeaderError::Unsupported(reason)) => {
                return Err(FinetuneError::UnsupportedCheckpoint {
                    path: path.to_path_buf(),
                    reason: format!("legacy (pre-1.6) torch.save file: {reason}"),
                })
            }
            Err(HeaderError::Pickle(PickleError::Refused { callable })) => {
                return Err(FinetuneError::UnsafePickle {
                    path: path.to_path_buf(),
                    alias: well_known_alias(&callable),
                    callable,
                })
            }
            Err(HeaderError::Pickle(PickleError::Invalid(reason))) => return Err(invalid(reason)),
        }
    };
    drop(buf);

    // 2. Element type and count of every storage, from its persistent ids.
    let mut roots: HashMap<&str, (StorageKind, u64)> = HashMap::new();
    for s in &header.storages {
        let (kind, numel) = *roots.entry(s.key.as_str()).or_insert((s.kind, s.numel));
        if kind.elem_size().checked_mul(numel) != s.kind.elem_size().checked_mul(s.numel) {
            return Err(invalid(format!(
                "storage `{}` is referenced as {numel} x {} and as {} x {}",
                s.key,
                kind.name(),
                s.numel,
                s.kind.name()
            )));
        }
    }
    let mut listed = HashSet::with_capacity(header.keys.len());
    for key in &header.keys {
        if !roots.contains_key(key.as_str()) {
            return Err(invalid(format!(
                "the storage key list names `{key}`, which the saved object does not use"
            )));
        }
        if !listed.insert(key.as_str()) {
            return Err(invalid(format!("storage `{key}` is listed twice")));
        }
    }
    if let Some(key) = roots.keys().find(|k| !listed.contains(*k)) {
        return Err(invalid(format!(
            "storage `{key}` is used but missing from the storage key list"
        )));
    }

    let specs = select_tensors(&header.root, options.key.as_deref()).map_err(invalid)?;
    let wanted: HashSet<&str> = specs.iter().map(|(_, s)| s.storage.key.as_str()).collect();

    // 3. The raw storages, in key-list order; unused ones are skipped.
    reader.seek(SeekFrom::Start(header.data_start)).map_err(io)?;
    let mut offset = header.data_start;
    let mut bytes_of: HashMap<&str, Vec<u8>> = HashMap::with_capacity(wanted.len());
    for key in &header.keys {
        let (kind, numel) = roots[key.as_str()];
        let what = || format!("storage `{key}` ({numel} x {})", kind.name());
        let mut count = [0u8; 8];
        if file_len.saturating_sub(offset) < 8 {
            return Err(invalid(format!(
                "{}: the file ends at byte {file_len}, before its element count at byte {offset} (truncated)",
                what()
            )));
        }
        reader.read_exact(&mut count).map_err(io)?;
        offset += 8;
        let count = u64::from_le_bytes(count);
        if count != numel {
            return Err(invalid(format!(
                "{}: the file gives {count} elements at byte {}, the pickle {numel}",
                what(),
                offset - 8
            )));
        }
        let nbytes = numel
            .checked_mul(kind.elem_size())
            .ok_or_else(|| invalid(format!("{}: size overflows", what())))?;
        let left = file_len - offset;
        if nbytes > left {
            return Err(invalid(format!(
                "{}: needs {nbytes} bytes at byte {offset} but only {left} remain (truncated)",
                what()
            )));
        }
        if wanted.contains(key.as_str()) {
            let mut data = vec![0u8; nbytes as usize];
            reader.read_exact(&mut data).map_err(io)?;
            bytes_of.insert(key.as_str(), data);
        } else {
            reader.seek(SeekFrom::Current(nbytes as i64)).map_err(io)?;
        }
        offset += nbytes;
    }

    // 4. Tensors from their views of the storages (always little-endian).
    let mut budget = OutputBudget::new(file_len);
    specs
        .into_iter()
        .map(|(name, spec)| {
            let bytes = &bytes_of[spec.storage.key.as_str()];
            let tensor = materialize(&spec, bytes, false).map_err(|e| invalid(format!("tensor `{name}`: {e}")))?;
            budget.add(&tensor).map_err(invalid)?;
            Ok((name, tensor))
        })
        .collect()
}
