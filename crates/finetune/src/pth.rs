//! A reader for PyTorch checkpoints (`.pth` / `.pt` / `.bin` written by `torch.save`)
//! that treats the pickle inside as DATA ONLY.
//!
//! # Format
//!
//! Since PyTorch 1.6, `torch.save` writes a zip archive (entries stored, not
//! compressed) with one top-level folder, named after the file (`archive/` in older
//! versions): `<folder>/data.pkl` is a pickle of the saved object in which every
//! tensor storage is a *persistent id* `("storage", torch.FloatStorage, "<key>",
//! "<device>", numel)`, whose bytes are in `<folder>/data/<key>`; `<folder>/byteorder`
//! says `little` or `big`.
//!
//! # Safety model
//!
//! A pickle is a program for a stack machine whose `GLOBAL`/`STACK_GLOBAL`/`INST`
//! opcodes import arbitrary Python callables and whose `REDUCE`/`NEWOBJ`/`OBJ`/`BUILD`
//! opcodes call them; `torch.load(weights_only=False)` on a hostile file runs e.g.
//! `os.system`. This module never executes anything (Rust cannot run Python), but it
//! goes further than merely not executing: it refuses a file as soon as its pickle
//! names any callable outside a short allow-list ([`ALLOWED_CALLABLES`]), with
//! [`FinetuneError::UnsafePickle`] naming the callable. The allow-listed callables
//! are not imported either: each has a small Rust re-implementation
//! (`_rebuild_tensor_v2` builds a tensor view description, `OrderedDict` a dict,
//! storage classes only tag persistent ids with a dtype). This is the same policy as
//! `torch.load(weights_only=True)`, reduced to what state dicts need.
//!
//! Why not wrap `candle_core::pickle`? It does not execute anything either, but it
//! silently skips unknown callables (a malicious file "loads" with the payload
//! ignored rather than being reported), allocates string buffers from unchecked
//! length fields, cannot read strided / offset views or `int32`/`bool` storages,
//! does not support protocol 4 opcodes, and merges an `OrderedDict`'s `_metadata`
//! attribute into its items. The interpreter here is small and stricter.
//!
//! # Resource limits
//!
//! Every length field is checked against the bytes actually present before
//! anything is allocated; zip entries must have sizes consistent with the archive
//! (a stored entry cannot be larger than the file, a deflated one cannot claim an
//! impossible ratio), and the zip reader stops at the declared size. Nesting depth,
//! the pickle size ([`MAX_PICKLE_BYTES`]) and views that read more elements than their
//! storage holds (stride 0 / overlapping, [`MAX_EXPANDED_VIEW_BYTES`]) are capped too.
//!
//! # Which tensors are returned
//!
//! With [`PthOptions::key`] set, the value under that top-level key is used. Otherwise,
//! when the top-level object is a dict holding one of [`STATE_DICT_KEYS`] (e.g.
//! `{"state_dict": ..., "epoch": 3}`) whose value is a dict with tensors, that dict is
//! used; else the whole object. The chosen value is flattened: nested dicts, lists and
//! tuples give dotted names (`a.b.0`), non-tensor leaves (ints, strings) are skipped.
//! Names keep the pickle's order; a repeated name keeps the last value.
//!
//! # Legacy format
//!
//! Files written before PyTorch 1.6 (or with `_use_new_zipfile_serialization=False`),
//! such as torchvision's VGG and AlexNet weights, are not zip archives but five
//! pickles in a row followed by raw storages; see [`legacy`]. They go through the
//! same interpreter, allow-list and limits.
//!
//! TorchScript archives (`torch.jit.save`) are reported as unsupported.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::rc::Rc;

use candle_core::{DType, Device, Tensor};
use zip::{CompressionMethod, ZipArchive};

use crate::error::{FinetuneError, Result};

pub mod legacy;

/// Largest `data.pkl` accepted (state-dict pickles are kilobytes to a few megabytes).
pub const MAX_PICKLE_BYTES: u64 = 512 << 20;

/// Largest tensor built from a view that reads more elements than its storage holds
/// (stride 0 or overlapping strides): such a view can describe any size from a tiny file.
pub const MAX_EXPANDED_VIEW_BYTES: u64 = 256 << 20;

/// Deepest nesting of pickled containers accepted.
pub const MAX_NESTING: u32 = 200;

/// A view that repeats storage elements (stride 0) may not be more than this many
/// times larger than the bytes it reads, so the output stays in proportion to the file.
pub const MAX_VIEW_EXPANSION: u64 = 1024;

/// Most container nodes visited while flattening (shared sub-objects count each time).
const MAX_FLATTEN_NODES: usize = 10_000_000;

/// Highest decompression ratio deflate can reach is about 1032:1.
const MAX_DEFLATE_RATIO: u64 = 1100;

/// Top-level keys that hold the state dict in training checkpoints, tried in order.
pub const STATE_DICT_KEYS: &[&str] = &[
    "state_dict",
    "model_state_dict",
    "model",
    "module",
    "net",
    "network",
    "params",
];

/// The Python callables a checkpoint's pickle may reference (as `module.name`). All
/// others are refused. None of them is executed: each has a Rust re-implementation.
pub const ALLOWED_CALLABLES: &[&str] = &[
    "collections.OrderedDict",
    "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state",
    "torch._tensor._rebuild_from_type_v2",
    "torch.Tensor",
    "torch.nn.parameter.Parameter",
    "torch.FloatStorage",
    "torch.DoubleStorage",
    "torch.HalfStorage",
    "torch.BFloat16Storage",
    "torch.LongStorage",
    "torch.IntStorage",
    "torch.ShortStorage",
    "torch.CharStorage",
    "torch.ByteStorage",
    "torch.BoolStorage",
    "torch.UntypedStorage",
    "torch.storage.UntypedStorage",
];

/// Options for [`read_pth_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PthOptions {
    /// Take the tensors under this top-level key (e.g. `"state_dict_ema"`) instead of
    /// choosing automatically. An error if the key is absent.
    pub key: Option<String>,
}

/// Reads every tensor of the state dict in a PyTorch checkpoint, on the CPU, with
/// automatic state-dict selection (see the module docs).
pub fn read_pth(path: impl AsRef<Path>) -> Result<Vec<(String, Tensor)>> {
    read_pth_with(path, &PthOptions::default())
}

/// [`read_pth`] with options.
pub fn read_pth_with(path: impl AsRef<Path>, options: &PthOptions) -> Result<Vec<(String, Tensor)>> {
    let path = path.as_ref();
    let file = File::open(path).map_err(|e| FinetuneError::io(path, e))?;
    read_pth_from(BufReader::new(file), path, options)
}

/// Reads a checkpoint from any seekable reader; `path` is only used in messages.
pub fn read_pth_from<R: Read + Seek>(
    mut reader: R,
    path: &Path,
    options: &PthOptions,
) -> Result<Vec<(String, Tensor)>> {
    let invalid = |reason: String| FinetuneError::InvalidCheckpoint {
        path: path.to_path_buf(),
        reason,
    };
    let unsupported = |reason: String| FinetuneError::UnsupportedCheckpoint {
        path: path.to_path_buf(),
        reason,
    };
    let io = |e: std::io::Error| FinetuneError::io(path, e);

    let archive_len = reader.seek(SeekFrom::End(0)).map_err(io)?;
    reader.seek(SeekFrom::Start(0)).map_err(io)?;
    let mut magic = [0u8; 4];
    let got = read_up_to(&mut reader, &mut magic).map_err(io)?;
    reader.seek(SeekFrom::Start(0)).map_err(io)?;
    if got == 0 {
        return Err(invalid("the file is empty".into()));
    }
    if legacy::looks_legacy(&magic[..got]) {
        return legacy::read_legacy(reader, path, archive_len, options);
    }
    if &magic[..got.min(2)] != b"PK" {
        return Err(invalid(format!(
            "not a zip archive (starts with bytes {:02x?}); torch.save writes zip files since \
             PyTorch 1.6",
            &magic[..got]
        )));
    }
    let mut zip = ZipArchive::new(reader).map_err(|e| invalid(format!("corrupt or truncated zip archive: {e}")))?;

    let names = zip
        .file_names()
        .map(|n| n.map(|n| n.into_owned()))
        .collect::<std::result::Result<Vec<String>, _>>()
        .map_err(|e| invalid(format!("bad entry name in zip archive: {e}")))?;
    let prefix = find_prefix(&names).map_err(|e| match e {
        PrefixError::Invalid(r) => invalid(r),
        PrefixError::Unsupported(r) => unsupported(r),
    })?;

    let big_endian = match read_small_entry(&mut zip, &format!("{prefix}byteorder"), archive_len) {
        Ok(Some(bytes)) => match String::from_utf8_lossy(&bytes).trim() {
            "little" => false,
            "big" => true,
            other => return Err(invalid(format!("unknown byteorder `{other}`"))),
        },
        Ok(None) => false,
        Err(e) => return Err(invalid(e)),
    };

    let pickle_name = format!("{prefix}data.pkl");
    let pickle = read_entry(&mut zip, &pickle_name, archive_len, MAX_PICKLE_BYTES, None)
        .map_err(|e| invalid(format!("{pickle_name}: {e}")))?;

    let root = Unpickler::new(&pickle).run().map_err(|e| match e {
        PickleError::Refused { callable } => FinetuneError::UnsafePickle {
            path: path.to_path_buf(),
            alias: well_known_alias(&callable),
            callable,
        },
        PickleError::Invalid(reason) => invalid(format!("{pickle_name}: {reason}")),
    })?;

    let specs = select_tensors(&root, options.key.as_deref()).map_err(invalid)?;

    let mut storages: HashMap<(String, u64), Rc<Vec<u8>>> = HashMap::new();
    let mut tensors = Vec::with_capacity(specs.len());
    let mut budget = OutputBudget::new(archive_len);
    for (name, spec) in specs {
        let kind = spec.storage.kind;
        let needed = spec
            .storage
            .numel
            .checked_mul(kind.elem_size())
            .ok_or_else(|| invalid(format!("tensor `{name}`: storage size overflows")))?;
        let cache_key = (spec.storage.key.clone(), needed);
        let bytes = match storages.get(&cache_key) {
            Some(b) => b.clone(),
            None => {
                let entry = format!("{prefix}data/{}", spec.storage.key);
                let bytes = read_entry(&mut zip, &entry, archive_len, needed, Some(needed)).map_err(|e| {
                    invalid(format!(
                        "tensor `{name}`: storage `{}` ({} x {}): {e}",
                        spec.storage.key,
                        spec.storage.numel,
                        kind.name()
                    ))
                })?;
                let bytes = Rc::new(bytes);
                storages.insert(cache_key, bytes.clone());
                bytes
            }
        };
        let tensor = materialize(&spec, &bytes, big_endian).map_err(|e| invalid(format!("tensor `{name}`: {e}")))?;
        budget.add(&tensor).map_err(invalid)?;
        tensors.push((name, tensor));
    }
    Ok(tensors)
}

/// The bytes all returned tensors may take together: [`MAX_VIEW_EXPANSION`] times the
/// file's size. Each tensor is bounded by its storage already, but one storage shared
/// by many names (pickle memo references) could otherwise make a small file
/// materialise without bound.
struct OutputBudget {
    limit: u64,
    total: u64,
}

impl OutputBudget {
    fn new(file_len: u64) -> Self {
        Self {
            limit: file_len.max(1).saturating_mul(MAX_VIEW_EXPANSION),
            total: 0,
        }
    }

    /// Counts a tensor just built; an error once the total is over the limit.
    fn add(&mut self, t: &Tensor) -> std::result::Result<(), String> {
        self.total = self
            .total
            .saturating_add((t.elem_count() as u64).saturating_mul(t.dtype().size_in_bytes() as u64));
        if self.total > self.limit {
            return Err(format!(
                "the tensors add up to more than {} bytes, {MAX_VIEW_EXPANSION} times the file's size \
                 (one storage repeated under many names?)",
                self.limit
            ));
        }
        Ok(())
    }
}

/// Whether `module.name` is one of [`ALLOWED_CALLABLES`].
pub fn is_allowed_callable(module: &str, name: &str) -> bool {
    resolve_global(module, name).is_some()
}

fn read_up_to<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn well_known_alias(callable: &str) -> Option<String> {
    let (module, name) = callable.rsplit_once('.')?;
    match module {
        "posix" | "nt" => Some(format!("os.{name}")),
        "__builtin__" => Some(format!("builtins.{name}")),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------
// Archive helpers

enum PrefixError {
    Invalid(String),
    Unsupported(String),
}

/// Finds the folder holding `data.pkl` (`"archive/"`, `"resnet18/"`, or `""`).
fn find_prefix(names: &[String]) -> std::result::Result<String, PrefixError> {
    let candidates: Vec<&str> = names
        .iter()
        .filter_map(|n| n.strip_suffix("data.pkl"))
        .filter(|p| p.is_empty() || (p.ends_with('/') && p.matches('/').count() == 1))
        .collect();
    let prefix = match candidates.as_slice() {
        [one] => one.to_string(),
        [] => {
            let shown: Vec<&str> = names.iter().take(8).map(String::as_str).collect();
            return Err(PrefixError::Invalid(format!(
                "no data.pkl in the zip archive, so it was not written by torch.save (entries: {}{})",
                shown.join(", "),
                if names.len() > 8 { ", ..." } else { "" }
            )));
        }
        many => {
            return Err(PrefixError::Invalid(format!(
                "several data.pkl entries in the zip archive ({}); expected one",
                many.iter()
                    .map(|p| format!("{p}data.pkl"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
    };
    let torchscript = names
        .iter()
        .any(|n| n == &format!("{prefix}constants.pkl") || n.starts_with(&format!("{prefix}code/")));
    if torchscript {
        return Err(PrefixError::Unsupported(
            "this is a TorchScript archive (torch.jit.save); save `model.state_dict()` with \
             torch.save, or export .safetensors, instead"
                .into(),
        ));
    }
    Ok(prefix)
}

/// Checks that an entry's declared sizes are possible for an archive of `archive_len` bytes.
fn check_entry_sizes(
    method: CompressionMethod,
    size: u64,
    compressed: u64,
    archive_len: u64,
) -> std::result::Result<(), String> {
    if compressed > archive_len {
        return Err(format!(
            "entry claims {compressed} compressed bytes but the whole file has {archive_len}"
        ));
    }
    match method {
        CompressionMethod::Stored if size != compressed => Err(format!(
            "stored entry claims {size} bytes but occupies {compressed} bytes"
        )),
        CompressionMethod::Stored => Ok(()),
        CompressionMethod::Deflated if size > compressed.saturating_mul(MAX_DEFLATE_RATIO).saturating_add(4096) => {
            Err(format!(
                "deflated entry claims {size} bytes from {compressed} compressed bytes, more than \
                 deflate can produce"
            ))
        }
        CompressionMethod::Deflated => Ok(()),
        other => Err(format!(
            "compression method {other:?} is not supported (torch.save stores entries uncompressed)"
        )),
    }
}

/// Reads a whole entry of at most `max` bytes (exactly `exact` bytes when given).
fn read_entry<R: Read + Seek>(
    zip: &mut ZipArchive<R>,
    name: &str,
    archive_len: u64,
    max: u64,
    exact: Option<u64>,
) -> std::result::Result<Vec<u8>, String> {
    let mut entry = zip
        .by_name(name)
        .map_err(|e| format!("entry `{name}` missing from the archive ({e})"))?;
    let size = entry.size();
    check_entry_sizes(entry.compression(), size, entry.compressed_size(), archive_len)?;
    if let Some(exact) = exact {
        if size < exact {
            return Err(format!(
                "entry `{name}` holds {size} bytes but {exact} are needed (truncated or corrupt)"
            ));
        }
    } else if size > max {
        return Err(format!(
            "entry `{name}` is {size} bytes, more than the {max} bytes accepted"
        ));
    }
    let want = exact.unwrap_or(size);
    // Capacity from sizes already checked against the real archive; the zip reader
    // also stops at the declared size.
    let mut buf = Vec::with_capacity(want.min(64 << 20) as usize);
    // Reading one byte past `want` makes the zip reader hit the end of the entry, which
    // is where it verifies the CRC.
    (&mut entry)
        .take(want.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read entry `{name}`: {e}"))?;
    if (buf.len() as u64) < want {
        return Err(format!(
            "entry `{name}` ended after {} of {want} bytes (truncated)",
            buf.len()
        ));
    }
    buf.truncate(want as usize);
    Ok(buf)
}

fn read_small_entry<R: Read + Seek>(
    zip: &mut ZipArchive<R>,
    name: &str,
    archive_len: u64,
) -> std::result::Result<Option<Vec<u8>>, String> {
    if zip.index_for_name(name).is_none() {
        return Ok(None);
    }
    read_entry(zip, name, archive_len, 64, None).map(Some)
}

// ---------------------------------------------------------------------------------
// Pickle values

/// Element type of a torch storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StorageKind {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
    /// `UntypedStorage`: raw bytes.
    Untyped,
}

impl StorageKind {
    fn from_class(name: &str) -> Option<Self> {
        Some(match name {
            "FloatStorage" => Self::F32,
            "DoubleStorage" => Self::F64,
            "HalfStorage" => Self::F16,
            "BFloat16Storage" => Self::BF16,
            "LongStorage" => Self::I64,
            "IntStorage" => Self::I32,
            "ShortStorage" => Self::I16,
            "CharStorage" => Self::I8,
            "ByteStorage" => Self::U8,
            "BoolStorage" => Self::Bool,
            "UntypedStorage" => Self::Untyped,
            _ => return None,
        })
    }

    fn elem_size(self) -> u64 {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::I8 | Self::U8 | Self::Bool | Self::Untyped => 1,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::F64 => "float64",
            Self::F32 => "float32",
            Self::F16 => "float16",
            Self::BF16 => "bfloat16",
            Self::I64 => "int64",
            Self::I32 => "int32",
            Self::I16 => "int16",
            Self::I8 => "int8",
            Self::U8 => "uint8",
            Self::Bool => "bool",
            Self::Untyped => "bytes",
        }
    }
}

/// An allow-listed Python callable, interpreted by Rust code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildTensorV2,
    RebuildParameter,
    RebuildParameterWithState,
    RebuildFromTypeV2,
    /// `torch.Tensor` / `torch.nn.parameter.Parameter`: only as `_rebuild_from_type_v2`'s type.
    TensorClass,
    Storage(StorageKind),
}

fn resolve_global(module: &str, name: &str) -> Option<Global> {
    Some(match (module, name) {
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch._utils", "_rebuild_tensor") => Global::RebuildTensor,
        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
        ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
        ("torch._utils", "_rebuild_parameter_with_state") => Global::RebuildParameterWithState,
        ("torch._tensor", "_rebuild_from_type_v2") => Global::RebuildFromTypeV2,
        ("torch", "Tensor") | ("torch.nn.parameter", "Parameter") => Global::TensorClass,
        ("torch", "UntypedStorage") | ("torch.storage", "UntypedStorage") => Global::Storage(StorageKind::Untyped),
        ("torch", class) if class != "UntypedStorage" => Global::Storage(StorageKind::from_class(class)?),
        _ => return None,
    })
}

#[derive(Debug)]
struct StorageRef {
    kind: StorageKind,
    key: String,
    /// Elements of the whole storage `key`.
    numel: u64,
    /// A legacy storage view: `(offset, numel)` in elements within storage `key`.
    view: Option<(u64, u64)>,
}

#[derive(Debug)]
struct TensorSpec {
    storage: Rc<StorageRef>,
    offset: u64,
    size: Vec<usize>,
    stride: Vec<u64>,
}

struct Container<T> {
    items: T,
    depth: u32,
}

type Pairs = Vec<(Value, Value)>;

#[derive(Clone)]
enum Value {
    None,
    /// Non-tensor leaves (floats, bytes) are kept only as markers: a state dict
    /// never needs their values. Bools and big integers are kept for the legacy
    /// header (its endianness flag and magic number).
    Bool(bool),
    Int(i64),
    /// An integer that does not fit in i64: its value when it fits in i128.
    BigInt(Option<i128>),
    Float,
    Str(Rc<str>),
    Bytes,
    Tuple(Rc<Container<Vec<Value>>>),
    List(Rc<RefCell<Container<Vec<Value>>>>),
    Dict(Rc<RefCell<Container<Pairs>>>),
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorSpec>),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float => "float",
            Value::Str(_) => "str",
            Value::Bytes => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "callable",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
        }
    }

    fn depth(&self) -> u32 {
        match self {
            Value::Tuple(t) => t.depth,
            Value::List(l) => l.borrow().depth,
            Value::Dict(d) => d.borrow().depth,
            _ => 0,
        }
    }

    /// Items of a tuple or list.
    fn items(&self) -> Option<Vec<Value>> {
        match self {
            Value::Tuple(t) => Some(t.items.clone()),
            Value::List(l) => Some(l.borrow().items.clone()),
            _ => None,
        }
    }
}

enum PickleError {
    /// A callable outside the allow-list, as `module.name`.
    Refused {
        callable: String,
    },
    Invalid(String),
}

type PResult<T> = std::result::Result<T, PickleError>;

fn bad<T>(msg: impl Into<String>) -> PResult<T> {
    Err(PickleError::Invalid(msg.into()))
}

// ---------------------------------------------------------------------------------
// The pickle stack machine

struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
    /// Every storage reference met, in order (the legacy reader needs them all).
    storages: Vec<Rc<StorageRef>>,
    /// Set when a read went past the end of `data`: how many more bytes were needed
    /// at least (the legacy reader then retries with more of the file).
    short_by: Option<u64>,
}

impl<'a> Unpickler<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self {
            data,
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            storages: Vec::new(),
            short_by: None,
        }
    }

    fn take(&mut self, n: u64) -> PResult<&'a [u8]> {
        let remaining = (self.data.len() - self.pos) as u64;
        if n > remaining {
            self.short_by = Some(n - remaining);
            return bad(format!(
                "truncated pickle: {n} bytes needed at offset {} but only {remaining} remain",
                self.pos
            ));
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.data[start..self.pos])
    }

    fn u8(&mut self) -> PResult<u8> {
        Ok(self.take(1)?[0])
    }

    fn le<const N: usize>(&mut self) -> PResult<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64)?);
        Ok(out)
    }

    fn line(&mut self) -> PResult<&'a str> {
        let rest = &self.data[self.pos..];
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            self.short_by = Some(1);
            return bad(format!("truncated pickle: unterminated line at offset {}", self.pos));
        };
        self.pos += end + 1;
        let line = &rest[..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        std::str::from_utf8(line)
            .map_err(|_| PickleError::Invalid(format!("non-UTF-8 text line before offset {}", self.pos)))
    }

    fn push(&mut self, v: Value) {
        self.stack.push(v);
    }

    fn pop(&mut self) -> PResult<Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        match self.stack.pop() {
            Some(v) if self.stack.len() >= floor => Ok(v),
            _ => bad(format!("stack underflow at offset {}", self.pos)),
        }
    }

    fn top(&self) -> PResult<&Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        match self.stack.last() {
            Some(v) if self.stack.len() > floor => Ok(v),
            _ => bad(format!("stack underflow at offset {}", self.pos)),
        }
    }

    fn pop_mark(&mut self) -> PResult<Vec<Value>> {
        let Some(mark) = self.marks.pop() else {
            return bad(format!("no MARK on the stack at offset {}", self.pos));
        };
        Ok(self.stack.split_off(mark))
    }

    fn check_depth(&self, depth: u32) -> PResult<u32> {
        if depth > MAX_NESTING {
            return bad(format!(
                "objects nested more than {MAX_NESTING} levels deep (offset {})",
                self.pos
            ));
        }
        Ok(depth)
    }

    fn tuple(&self, items: Vec<Value>) -> PResult<Value> {
        let depth = self.check_depth(1 + items.iter().map(Value::depth).max().unwrap_or(0))?;
        Ok(Value::Tuple(Rc::new(Container { items, depth })))
    }

    fn list(&self, items: Vec<Value>) -> PResult<Value> {
        let depth = self.check_depth(1 + items.iter().map(Value::depth).max().unwrap_or(0))?;
        Ok(Value::List(Rc::new(RefCell::new(Container { items, depth }))))
    }

    fn dict(&self, pairs: Pairs) -> PResult<Value> {
        let depth = self.check_depth(1 + pairs.iter().map(|(k, v)| k.depth().max(v.depth())).max().unwrap_or(0))?;
        Ok(Value::Dict(Rc::new(RefCell::new(Container { items: pairs, depth }))))
    }

    fn pairs(&self, mut flat: Vec<Value>) -> PResult<Pairs> {
        if !flat.len().is_multiple_of(2) {
            return bad(format!("odd number of items for a dict at offset {}", self.pos));
        }
        let mut pairs = Vec::with_capacity(flat.len() / 2);
        let mut it = flat.drain(..);
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            pairs.push((k, v));
        }
        Ok(pairs)
    }

    /// Appends to the list on top of the stack.
    fn extend_list(&mut self, items: Vec<Value>) -> PResult<()> {
        let added = items.iter().map(Value::depth).max().unwrap_or(0);
        let depth = self.check_depth(added + 1)?;
        match self.top()? {
            Value::List(l) => {
                let mut l = l.borrow_mut();
                l.depth = l.depth.max(depth);
                l.items.extend(items);
                Ok(())
            }
            other => bad(format!("APPEND(S) on a {} at offset {}", other.kind(), self.pos)),
        }
    }

    /// Sets items of the dict on top of the stack.
    fn extend_dict(&mut self, pairs: Pairs) -> PResult<()> {
        let added = pairs.iter().map(|(k, v)| k.depth().max(v.depth())).max().unwrap_or(0);
        let depth = self.check_depth(added + 1)?;
        match self.top()? {
            Value::Dict(d) => {
                let mut d = d.borrow_mut();
                d.depth = d.depth.max(depth);
                d.items.extend(pairs);
                Ok(())
            }
            other => bad(format!("SETITEM(S) on a {} at offset {}", other.kind(), self.pos)),
        }
    }

    fn global(&self, module: &str, name: &str) -> PResult<Value> {
        match resolve_global(module, name) {
            Some(g) => Ok(Value::Global(g)),
            None => Err(PickleError::Refused {
                callable: format!("{module}.{name}"),
            }),
        }
    }

    fn memo_get(&self, key: u64) -> PResult<Value> {
        match self.memo.get(&key) {
            Some(v) => Ok(v.clone()),
            None => bad(format!(
                "memo entry {key} read before it was written (offset {})",
                self.pos
            )),
        }
    }

    fn memo_put(&mut self, key: u64) -> PResult<()> {
        let v = self.top()?.clone();
        self.memo.insert(key, v);
        Ok(())
    }

    fn int_line(&mut self) -> PResult<Value> {
        let line = self.line()?;
        let digits = line.strip_suffix('L').unwrap_or(line);
        match digits {
            "00" => Ok(Value::Bool(false)),
            "01" => Ok(Value::Bool(true)),
            d => match d.parse::<i64>() {
                Ok(v) => Ok(Value::Int(v)),
                Err(_) if !d.is_empty() && d.trim_start_matches('-').bytes().all(|b| b.is_ascii_digit()) => {
                    Ok(Value::BigInt(d.parse::<i128>().ok()))
                }
                Err(_) => bad(format!("bad integer literal {d:?}")),
            },
        }
    }

    fn long_bytes(bytes: &[u8]) -> Value {
        if bytes.is_empty() {
            return Value::Int(0);
        }
        if bytes.len() > 16 {
            return Value::BigInt(None);
        }
        // Two's complement, little-endian, sign-extended.
        let mut buf = if bytes[bytes.len() - 1] & 0x80 != 0 {
            [0xffu8; 16]
        } else {
            [0u8; 16]
        };
        buf[..bytes.len()].copy_from_slice(bytes);
        let v = i128::from_le_bytes(buf);
        match i64::try_from(v) {
            Ok(v) => Value::Int(v),
            Err(_) => Value::BigInt(Some(v)),
        }
    }

    fn string(&self, bytes: &[u8]) -> PResult<Value> {
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(Value::Str(Rc::from(s))),
            Err(_) => bad(format!("invalid UTF-8 in a string before offset {}", self.pos)),
        }
    }

    /// Runs the pickle to its STOP opcode and returns the result; [`Self::pos`] is
    /// then just past the STOP.
    fn run(&mut self) -> PResult<Value> {
        loop {
            let at = self.pos;
            let Some(&op) = self.data.get(self.pos) else {
                self.short_by = Some(1);
                return bad("pickle ended without a STOP opcode (truncated)");
            };
            self.pos += 1;
            match op {
                // PROTO
                0x80 => {
                    let v = self.u8()?;
                    if v > 5 {
                        return bad(format!("unsupported pickle protocol {v}"));
                    }
                }
                // FRAME: framing is transparent to an in-memory reader.
                0x95 => {
                    self.le::<8>()?;
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    if self.marks.last() == Some(&self.stack.len()) {
                        self.marks.pop();
                    } else {
                        self.pop()?;
                    }
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.push(v);
                }
                b'N' => self.push(Value::None),
                0x88 => self.push(Value::Bool(true)),
                0x89 => self.push(Value::Bool(false)),
                b'I' | b'L' => {
                    let v = self.int_line()?;
                    self.push(v);
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.le::<4>()?);
                    self.push(Value::Int(v as i64));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.le::<2>()?);
                    self.push(Value::Int(v as i64));
                }
                // LONG1
                0x8a => {
                    let n = self.u8()? as u64;
                    let bytes = self.take(n)?;
                    self.push(Self::long_bytes(bytes));
                }
                // LONG4
                0x8b => {
                    let n = i32::from_le_bytes(self.le::<4>()?);
                    if n < 0 {
                        return bad("negative LONG4 length");
                    }
                    let bytes = self.take(n as u64)?;
                    self.push(Self::long_bytes(bytes));
                }
                b'G' => {
                    self.le::<8>()?;
                    self.push(Value::Float);
                }
                b'F' => {
                    let line = self.line()?;
                    line.trim()
                        .parse::<f64>()
                        .map_err(|_| PickleError::Invalid(format!("bad float literal {line:?}")))?;
                    self.push(Value::Float);
                }
                // BINUNICODE, SHORT_BINUNICODE, BINUNICODE8
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => u32::from_le_bytes(self.le::<4>()?) as u64,
                        0x8c => self.u8()? as u64,
                        _ => u64::from_le_bytes(self.le::<8>()?),
                    };
                    let bytes = self.take(n)?;
                    let v = self.string(bytes)?;
                    self.push(v);
                }
                // BINSTRING, SHORT_BINSTRING (Python 2 str): kept as text.
                b'T' | b'U' => {
                    let n = if op == b'T' {
                        let n = i32::from_le_bytes(self.le::<4>()?);
                        if n < 0 {
                            return bad("negative BINSTRING length");
                        }
                        n as u64
                    } else {
                        self.u8()? as u64
                    };
                    let bytes = self.take(n)?;
                    self.push(Value::Str(Rc::from(String::from_utf8_lossy(bytes).as_ref())));
                }
                // BINBYTES, SHORT_BINBYTES, BINBYTES8, BYTEARRAY8
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'B' => u32::from_le_bytes(self.le::<4>()?) as u64,
                        b'C' => self.u8()? as u64,
                        _ => u64::from_le_bytes(self.le::<8>()?),
                    };
                    self.take(n)?;
                    self.push(Value::Bytes);
                }
                b')' => {
                    let v = self.tuple(vec![])?;
                    self.push(v);
                }
                b't' => {
                    let items = self.pop_mark()?;
                    let v = self.tuple(items)?;
                    self.push(v);
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    let v = self.tuple(items)?;
                    self.push(v);
                }
                b']' => {
                    let v = self.list(vec![])?;
                    self.push(v);
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    let v = self.list(items)?;
                    self.push(v);
                }
                b'a' => {
                    let v = self.pop()?;
                    self.extend_list(vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.extend_list(items)?;
                }
                b'}' => {
                    let v = self.dict(vec![])?;
                    self.push(v);
                }
                b'd' => {
                    let flat = self.pop_mark()?;
                    let pairs = self.pairs(flat)?;
                    let v = self.dict(pairs)?;
                    self.push(v);
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.extend_dict(vec![(k, v)])?;
                }
                b'u' => {
                    let flat = self.pop_mark()?;
                    let pairs = self.pairs(flat)?;
                    self.extend_dict(pairs)?;
                }
                // EMPTY_SET, ADDITEMS, FROZENSET: sets are kept as lists (data only).
                0x8f => {
                    let v = self.list(vec![])?;
                    self.push(v);
                }
                0x90 => {
                    let items = self.pop_mark()?;
                    self.extend_list(items)?;
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    let v = self.list(items)?;
                    self.push(v);
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let v = self.global(module, name)?;
                    self.push(v);
                }
                // STACK_GLOBAL
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (&module, &name) else {
                        return bad(format!(
                            "STACK_GLOBAL with {} and {} instead of two strings",
                            module.kind(),
                            name.kind()
                        ));
                    };
                    let v = self.global(module, name)?;
                    self.push(v);
                }
                // INST: module and name inline, arguments since the last MARK.
                b'i' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = self.global(module, name)?;
                    let args = self.pop_mark()?;
                    let v = self.call_value(g, args)?;
                    self.push(v);
                }
                // OBJ: class and arguments since the last MARK.
                b'o' => {
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return bad("OBJ without a class");
                    }
                    let class = items.remove(0);
                    let v = self.call_value(class, items)?;
                    self.push(v);
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let Some(args) = args.items() else {
                        return bad(format!("REDUCE arguments are a {}, not a tuple", args.kind()));
                    };
                    let v = self.call_value(callable, args)?;
                    self.push(v);
                }
                // NEWOBJ
                0x81 => {
                    let args = self.pop()?;
                    let class = self.pop()?;
                    let Some(args) = args.items() else {
                        return bad(format!("NEWOBJ arguments are a {}, not a tuple", args.kind()));
                    };
                    let v = self.call_value(class, args)?;
                    self.push(v);
                }
                // NEWOBJ_EX
                0x92 => {
                    let kwargs = self.pop()?;
                    let args = self.pop()?;
                    let class = self.pop()?;
                    let Some(args) = args.items() else {
                        return bad(format!("NEWOBJ_EX arguments are a {}, not a tuple", args.kind()));
                    };
                    if let Value::Dict(d) = &kwargs {
                        if !d.borrow().items.is_empty() {
                            return bad("NEWOBJ_EX with keyword arguments is not supported");
                        }
                    }
                    let v = self.call_value(class, args)?;
                    self.push(v);
                }
                b'b' => {
                    let _state = self.pop()?;
                    match self.top()? {
                        // An OrderedDict's instance attributes (e.g. `_metadata` of a
                        // state dict) and a tensor's Python state are not items: dropped.
                        Value::Dict(_) | Value::Tensor(_) => {}
                        other => return bad(format!("BUILD (set object state) on a {} at offset {at}", other.kind())),
                    }
                }
                // PUT, BINPUT, LONG_BINPUT, MEMOIZE
                b'p' => {
                    let key = self.line()?;
                    let key = key
                        .parse::<u64>()
                        .map_err(|_| PickleError::Invalid(format!("bad PUT index {key:?}")))?;
                    self.memo_put(key)?;
                }
                b'q' => {
                    let key = self.u8()? as u64;
                    self.memo_put(key)?;
                }
                b'r' => {
                    let key = u32::from_le_bytes(self.le::<4>()?) as u64;
                    self.memo_put(key)?;
                }
                0x94 => {
                    let key = self.memo.len() as u64;
                    self.memo_put(key)?;
                }
                // GET, BINGET, LONG_BINGET
                b'g' => {
                    let key = self.line()?;
                    let key = key
                        .parse::<u64>()
                        .map_err(|_| PickleError::Invalid(format!("bad GET index {key:?}")))?;
                    let v = self.memo_get(key)?;
                    self.push(v);
                }
                b'h' => {
                    let key = self.u8()? as u64;
                    let v = self.memo_get(key)?;
                    self.push(v);
                }
                b'j' => {
                    let key = u32::from_le_bytes(self.le::<4>()?) as u64;
                    let v = self.memo_get(key)?;
                    self.push(v);
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(pid)?;
                    self.push(v);
                }
                b'P' => {
                    return bad("text persistent ids (PERSID) are not used by torch.save");
                }
                // EXT1, EXT2, EXT4: indirect imports through the copyreg registry.
                0x82..=0x84 => {
                    return Err(PickleError::Refused {
                        callable: "copyreg extension-registry code (EXT1/EXT2/EXT4)".into(),
                    });
                }
                other => {
                    return bad(format!(
                        "unsupported pickle opcode 0x{other:02x} ({:?}) at offset {at}",
                        other as char
                    ))
                }
            }
        }
    }

    fn call_value(&self, callable: Value, args: Vec<Value>) -> PResult<Value> {
        match callable {
            Value::Global(g) => self.call(g, args),
            other => bad(format!("call of a {} (not a callable)", other.kind())),
        }
    }

    /// Rust stand-ins for the allow-listed callables.
    fn call(&self, g: Global, args: Vec<Value>) -> PResult<Value> {
        match g {
            Global::OrderedDict => match args.as_slice() {
                [] => self.dict(vec![]),
                [items] => {
                    let Some(items) = items.items() else {
                        return bad("OrderedDict(...) argument is not a list of pairs");
                    };
                    let mut pairs = Vec::with_capacity(items.len());
                    for item in items {
                        match item.items().as_deref() {
                            Some([k, v]) => pairs.push((k.clone(), v.clone())),
                            _ => return bad("OrderedDict(...) item is not a (key, value) pair"),
                        }
                    }
                    self.dict(pairs)
                }
                _ => bad("OrderedDict called with more than one argument"),
            },
            Global::RebuildTensor | Global::RebuildTensorV2 => {
                if args.len() < 4 {
                    return bad("_rebuild_tensor called with fewer than 4 arguments");
                }
                let Value::Storage(storage) = &args[0] else {
                    return bad(format!("_rebuild_tensor storage is a {}", args[0].kind()));
                };
                let offset = match args[1] {
                    Value::Int(o) if o >= 0 => o as u64,
                    _ => return bad("_rebuild_tensor storage offset is not a non-negative int"),
                };
                let size = int_tuple(&args[2], "size")?;
                let stride = int_tuple(&args[3], "stride")?;
                if size.len() != stride.len() {
                    return bad(format!(
                        "tensor size has {} dims but stride has {}",
                        size.len(),
                        stride.len()
                    ));
                }
                let size = size
                    .into_iter()
                    .map(|s| usize::try_from(s).map_err(|_| PickleError::Invalid(format!("tensor dim {s} too large"))))
                    .collect::<PResult<Vec<_>>>()?;
                Ok(Value::Tensor(Rc::new(TensorSpec {
                    storage: storage.clone(),
                    offset,
                    size,
                    stride,
                })))
            }
            Global::RebuildParameter | Global::RebuildParameterWithState => match args.first() {
                Some(t @ Value::Tensor(_)) => Ok(t.clone()),
                _ => bad("_rebuild_parameter data is not a tensor"),
            },
            Global::RebuildFromTypeV2 => {
                let [Value::Global(func), Value::Global(Global::TensorClass), inner, ..] = args.as_slice() else {
                    return bad("_rebuild_from_type_v2 needs (rebuild function, torch.Tensor/Parameter, args, state)");
                };
                let Some(inner) = inner.items() else {
                    return bad("_rebuild_from_type_v2 args are not a tuple");
                };
                match self.call(*func, inner)? {
                    t @ Value::Tensor(_) => Ok(t),
                    other => bad(format!("_rebuild_from_type_v2 produced a {}", other.kind())),
                }
            }
            Global::TensorClass | Global::Storage(_) => {
                bad("a tensor or storage class is called directly; torch.save never does this")
            }
        }
    }

    /// `persistent_load` for torch's `("storage", StorageClass, key, location, numel)`
    /// (zip format) and `(..., numel, view_metadata)` (legacy format, where
    /// `view_metadata` is `None` or `(view_key, offset, view_numel)`).
    fn persistent_load(&mut self, pid: Value) -> PResult<Value> {
        let Some(items) = pid.items() else {
            return bad(format!("persistent id is a {}, not a tuple", pid.kind()));
        };
        let (tag, kind, key, numel, view) = match items.as_slice() {
            [Value::Str(tag), Value::Global(Global::Storage(kind)), key, _location, numel] => {
                (tag, *kind, key, numel, &Value::None)
            }
            [Value::Str(tag), Value::Global(Global::Storage(kind)), key, _location, numel, view] => {
                (tag, *kind, key, numel, view)
            }
            _ => return bad("persistent id is not a torch storage reference (\"storage\", type, key, location, size)"),
        };
        if &**tag != "storage" {
            return bad(format!(
                "persistent id of kind {tag:?}; only \"storage\" is read (whole pickled modules are not)"
            ));
        }
        let key = storage_key(key)?;
        let numel = match numel {
            Value::Int(n) if *n >= 0 => *n as u64,
            _ => return bad("storage size is not a non-negative int"),
        };
        let view = match view {
            Value::None => None,
            v => match v.items().as_deref() {
                Some([view_key, Value::Int(offset), Value::Int(size)]) if *offset >= 0 && *size >= 0 => {
                    storage_key(view_key)?;
                    Some((*offset as u64, *size as u64))
                }
                _ => return bad("storage view metadata is not (key, offset, size)"),
            },
        };
        let storage = Rc::new(StorageRef { kind, key, numel, view });
        self.storages.push(storage.clone());
        Ok(Value::Storage(storage))
    }
}

/// A storage key (a string, or an int in some writers), checked to be a plain name
/// since the zip format uses it as an entry name.
fn storage_key(key: &Value) -> PResult<String> {
    let key = match key {
        Value::Str(s) => s.to_string(),
        Value::Int(i) => i.to_string(),
        other => return bad(format!("storage key is a {}", other.kind())),
    };
    if key.is_empty() || key.contains(['/', '\\']) || key == "." || key == ".." {
        return bad(format!("invalid storage key {key:?}"));
    }
    Ok(key)
}

fn int_tuple(v: &Value, what: &str) -> PResult<Vec<u64>> {
    let Some(items) = v.items() else {
        return bad(format!("tensor {what} is a {}, not a tuple", v.kind()));
    };
    items
        .iter()
        .map(|i| match i {
            Value::Int(n) if *n >= 0 => Ok(*n as u64),
            _ => bad(format!("tensor {what} holds a non-integer or negative value")),
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// Choosing and flattening the state dict

fn dict_key(k: &Value) -> Option<String> {
    match k {
        Value::Str(s) => Some(s.to_string()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn contains_tensor(v: &Value, depth: u32, budget: &mut usize) -> bool {
    if depth > MAX_NESTING || *budget == 0 {
        return false;
    }
    *budget -= 1;
    match v {
        Value::Tensor(_) => true,
        Value::Dict(d) => d
            .borrow()
            .items
            .iter()
            .any(|(_, v)| contains_tensor(v, depth + 1, budget)),
        Value::Tuple(_) | Value::List(_) => v
            .items()
            .unwrap_or_default()
            .iter()
            .any(|v| contains_tensor(v, depth + 1, budget)),
        _ => false,
    }
}

fn select_tensors(root: &Value, key: Option<&str>) -> std::result::Result<Vec<(String, Rc<TensorSpec>)>, String> {
    let chosen = match (key, root) {
        (Some(key), Value::Dict(d)) => d
            .borrow()
            .items
            .iter()
            .rev()
            .find(|(k, _)| dict_key(k).as_deref() == Some(key))
            .map(|(_, v)| v.clone())
            .ok_or_else(|| {
                let keys: Vec<String> = d
                    .borrow()
                    .items
                    .iter()
                    .filter_map(|(k, _)| dict_key(k))
                    .take(10)
                    .collect();
                format!("top-level key `{key}` not found (keys: {})", keys.join(", "))
            })?,
        (Some(key), other) => {
            return Err(format!(
                "top-level object is a {}, so it has no key `{key}`",
                other.kind()
            ))
        }
        (None, Value::Dict(d)) => {
            let d = d.borrow();
            STATE_DICT_KEYS
                .iter()
                .find_map(|want| {
                    d.items.iter().rev().find_map(|(k, v)| {
                        let mut budget = MAX_FLATTEN_NODES;
                        (dict_key(k).as_deref() == Some(*want)
                            && matches!(v, Value::Dict(_))
                            && contains_tensor(v, 0, &mut budget))
                        .then(|| v.clone())
                    })
                })
                .unwrap_or_else(|| root.clone())
        }
        (None, _) => root.clone(),
    };
    let mut out = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut budget = MAX_FLATTEN_NODES;
    // A bare tensor under an explicit key is named after the key.
    let root_name = match (&chosen, key) {
        (Value::Tensor(_), Some(key)) => key.to_string(),
        _ => String::new(),
    };
    flatten(&chosen, root_name, 0, &mut budget, &mut out, &mut index)?;
    Ok(out)
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn flatten(
    v: &Value,
    name: String,
    depth: u32,
    budget: &mut usize,
    out: &mut Vec<(String, Rc<TensorSpec>)>,
    index: &mut HashMap<String, usize>,
) -> std::result::Result<(), String> {
    if depth > MAX_NESTING {
        return Err(format!("objects nested more than {MAX_NESTING} levels deep (cyclic?)"));
    }
    if *budget == 0 {
        return Err("too many nested objects to flatten".into());
    }
    *budget -= 1;
    match v {
        Value::Tensor(t) => {
            let name = if name.is_empty() { "tensor".to_string() } else { name };
            match index.get(&name) {
                Some(&i) => out[i].1 = t.clone(),
                None => {
                    index.insert(name.clone(), out.len());
                    out.push((name, t.clone()));
                }
            }
        }
        Value::Dict(d) => {
            for (k, v) in d.borrow().items.iter() {
                if let Some(k) = dict_key(k) {
                    flatten(v, join(&name, &k), depth + 1, budget, out, index)?;
                }
            }
        }
        Value::Tuple(_) | Value::List(_) => {
            for (i, v) in v.items().unwrap_or_default().iter().enumerate() {
                flatten(v, join(&name, &i.to_string()), depth + 1, budget, out, index)?;
            }
        }
        _ => {}
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Building candle tensors

fn materialize(spec: &TensorSpec, bytes: &[u8], big_endian: bool) -> std::result::Result<Tensor, String> {
    let kind = spec.storage.kind;
    let elem = kind.elem_size() as usize;
    // A legacy storage view narrows the bytes first.
    let (base, storage_numel) = spec.storage.view.unwrap_or((0, spec.storage.numel));
    let end = base
        .checked_add(storage_numel)
        .filter(|&e| e <= spec.storage.numel)
        .and_then(|e| e.checked_mul(elem as u64))
        .filter(|&e| e <= bytes.len() as u64)
        .ok_or_else(|| {
            format!(
                "storage view (offset {base}, {storage_numel} elements) reaches past its storage of {} elements",
                spec.storage.numel
            )
        })?;
    let bytes = &bytes[(base * elem as u64) as usize..end as usize];
    let numel = spec
        .size
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or("element count overflows")?;
    let dtype = match kind {
        StorageKind::F64 => DType::F64,
        StorageKind::F32 => DType::F32,
        StorageKind::F16 => DType::F16,
        StorageKind::BF16 => DType::BF16,
        StorageKind::I64 => DType::I64,
        StorageKind::I32 => DType::I32,
        // candle has no i8: widened to i16, losslessly.
        StorageKind::I16 | StorageKind::I8 => DType::I16,
        StorageKind::U8 | StorageKind::Bool | StorageKind::Untyped => DType::U8,
    };
    if numel == 0 {
        return Tensor::zeros(spec.size.as_slice(), dtype, &Device::Cpu).map_err(|e| e.to_string());
    }
    // Highest element index the view touches, with overflow checks.
    let mut last = spec.offset;
    for (&d, &s) in spec.size.iter().zip(&spec.stride) {
        last = (d as u64 - 1)
            .checked_mul(s)
            .and_then(|x| x.checked_add(last))
            .ok_or("view index overflows")?;
    }
    if last >= storage_numel {
        return Err(format!(
            "view (offset {}, size {:?}, stride {:?}) reads element {last} of a storage of {storage_numel}",
            spec.offset, spec.size, spec.stride
        ));
    }
    let out_bytes = numel.checked_mul(elem as u64).ok_or("byte count overflows")?;
    let read_bytes = storage_numel.saturating_mul(elem as u64);
    if numel > storage_numel
        && (out_bytes > MAX_EXPANDED_VIEW_BYTES || out_bytes > read_bytes.saturating_mul(MAX_VIEW_EXPANSION))
    {
        return Err(format!(
            "view of size {:?} repeats a storage of {storage_numel} elements into {out_bytes} bytes \
             (more than the {MAX_EXPANDED_VIEW_BYTES} bytes or {MAX_VIEW_EXPANSION} times the storage \
             accepted)",
            spec.size
        ));
    }

    let contiguous = {
        let mut expect = 1u64;
        let mut ok = true;
        for (&d, &s) in spec.size.iter().zip(&spec.stride).rev() {
            if d != 1 && s != expect {
                ok = false;
                break;
            }
            expect *= d as u64;
        }
        ok
    };
    let mut data: Vec<u8> = if contiguous {
        let start = spec.offset as usize * elem;
        bytes[start..start + out_bytes as usize].to_vec()
    } else {
        gather(spec, bytes, elem, out_bytes as usize)
    };
    if big_endian && elem > 1 {
        for chunk in data.chunks_exact_mut(elem) {
            chunk.reverse();
        }
    }
    let shape = spec.size.as_slice();
    let tensor = match kind {
        StorageKind::I8 => {
            let v: Vec<i16> = data.iter().map(|&b| b as i8 as i16).collect();
            Tensor::from_vec(v, shape, &Device::Cpu)
        }
        StorageKind::Bool => {
            for b in data.iter_mut() {
                *b = (*b != 0) as u8;
            }
            Tensor::from_raw_buffer(&data, dtype, shape, &Device::Cpu)
        }
        _ => Tensor::from_raw_buffer(&data, dtype, shape, &Device::Cpu),
    };
    tensor.map_err(|e| e.to_string())
}

/// Copies a strided view into a contiguous buffer (bounds were checked by the caller).
fn gather(spec: &TensorSpec, bytes: &[u8], elem: usize, out_bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(out_bytes);
    let rank = spec.size.len();
    // Copy the innermost dimension as one run when it is contiguous.
    let (outer, run) = if rank > 0 && spec.stride[rank - 1] == 1 {
        (rank - 1, spec.size[rank - 1])
    } else {
        (rank, 1)
    };
    let run_bytes = run * elem;
    let mut idx = vec![0usize; outer];
    loop {
        let pos = spec.offset as usize
            + idx
                .iter()
                .zip(&spec.stride)
                .map(|(&i, &s)| i * s as usize)
                .sum::<usize>();
        let start = pos * elem;
        out.extend_from_slice(&bytes[start..start + run_bytes]);
        // Odometer increment over the outer dimensions.
        let mut d = outer;
        loop {
            if d == 0 {
                return out;
            }
            d -= 1;
            idx[d] += 1;
            if idx[d] < spec.size[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(p: &[u8]) -> PResult<Value> {
        Unpickler::new(p).run()
    }

    #[test]
    fn big_integers_and_bools_keep_their_values() {
        // LONG1 with the 10-byte legacy magic number, protocol 2.
        let Ok(Value::BigInt(Some(v))) = run(b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.") else {
            panic!("expected a big int");
        };
        assert_eq!(v, 0x1950a86a20f9469cfc6c);
        // The same as a text LONG (protocol 0), and a negative LONG1.
        let Ok(Value::BigInt(Some(v))) = run(b"L119547037146038801333356L\n.") else {
            panic!("expected a big int");
        };
        assert_eq!(v, 0x1950a86a20f9469cfc6c);
        assert!(matches!(run(b"\x8a\x02\x00\x80."), Ok(Value::Int(-32768))));
        assert!(matches!(
            run(b"\x8a\x11\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01."),
            Ok(Value::BigInt(None))
        ));
        assert!(matches!(run(b"\x88."), Ok(Value::Bool(true))));
        assert!(matches!(run(b"I00\n."), Ok(Value::Bool(false))));
    }

    #[test]
    fn refuses_unknown_globals_immediately() {
        let Err(PickleError::Refused { callable }) = run(b"cposix\nsystem\n(S'echo'\ntR.") else {
            panic!("expected refusal");
        };
        assert_eq!(callable, "posix.system");
        // STACK_GLOBAL (protocol 4).
        let p = b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93.";
        let Err(PickleError::Refused { callable }) = run(p) else {
            panic!("expected refusal");
        };
        assert_eq!(callable, "builtins.eval");
        // INST.
        let Err(PickleError::Refused { callable }) = run(b"(isubprocess\nPopen\n.") else {
            panic!("expected refusal");
        };
        assert_eq!(callable, "subprocess.Popen");
        assert!(is_allowed_callable("torch._utils", "_rebuild_tensor_v2"));
        assert!(!is_allowed_callable("torch", "load"));
        assert!(!is_allowed_callable("torch", "UntypedStorageX"));
    }

    #[test]
    fn every_allow_listed_name_resolves() {
        for full in ALLOWED_CALLABLES {
            let (m, n) = full.rsplit_once('.').unwrap();
            assert!(is_allowed_callable(m, n), "{full}");
        }
    }

    #[test]
    fn malformed_pickles_are_errors_not_panics() {
        let cases: &[&[u8]] = &[
            b"",
            b"\x80\x02",
            b"X\xff\xff\xff\xff",                    // huge BINUNICODE length, no data
            b"\x8d\xff\xff\xff\xff\xff\xff\xff\xff", // BINUNICODE8 huge
            b"t.",                                   // TUPLE without MARK
            b"a.",                                   // APPEND on empty stack
            b"]N(a.",                                // APPEND across a MARK
            b"h\x05.",                               // GET of a missing memo
            b"NNR.",                                 // REDUCE of None
            b"}Ns.",                                 // SETITEM with missing value
            b"\x8b\xff\xff\xff\xff.",                // negative LONG4
            b"\xff",                                 // unknown opcode
            b"\x80\x09.",
        ];
        for c in cases {
            assert!(matches!(run(c), Err(PickleError::Invalid(_))), "{c:?}");
        }
    }

    #[test]
    fn deep_nesting_is_capped() {
        let mut p = vec![b'N'];
        p.extend(std::iter::repeat_n(0x85u8, 100_000));
        p.push(b'.');
        let Err(PickleError::Invalid(msg)) = run(&p) else {
            panic!()
        };
        assert!(msg.contains("nested"), "{msg}");
        // A self-referencing list: `l = []; l.append(l)` repeated.
        let mut p = b"]q\x00".to_vec();
        for _ in 0..1000 {
            p.extend_from_slice(b"h\x00a");
        }
        p.push(b'.');
        assert!(run(&p).is_err());
    }

    #[test]
    fn ordered_dict_metadata_is_not_an_item() {
        // OrderedDict() with one item then BUILD({'_metadata': {}}).
        let p = b"\x80\x02ccollections\nOrderedDict\n)R(X\x01\x00\x00\x00aK\x01u}X\x09\x00\x00\x00_metadata}sb.";
        let v = run(p).ok().unwrap();
        let Value::Dict(d) = v else { panic!() };
        assert_eq!(d.borrow().items.len(), 1);
    }

    #[test]
    fn strided_gather() {
        let storage = Rc::new(StorageRef {
            kind: StorageKind::U8,
            key: "0".into(),
            numel: 12,
            view: None,
        });
        let bytes: Vec<u8> = (0..12).collect();
        // base.reshape(3, 4).t() -> shape [4, 3], stride [1, 4]
        let spec = TensorSpec {
            storage: storage.clone(),
            offset: 0,
            size: vec![4, 3],
            stride: vec![1, 4],
        };
        let t = materialize(&spec, &bytes, false).unwrap();
        assert_eq!(
            t.to_vec2::<u8>().unwrap(),
            vec![vec![0, 4, 8], vec![1, 5, 9], vec![2, 6, 10], vec![3, 7, 11]]
        );
        // Out-of-bounds view is an error.
        let spec = TensorSpec {
            storage,
            offset: 5,
            size: vec![4, 3],
            stride: vec![1, 4],
        };
        assert!(materialize(&spec, &bytes, false).is_err());
    }
}
