//! TensorBoard event files: per-step scalars, PNG images and the HParams plugin's
//! session records, readable by `tensorboard --logdir runs`.
//!
//! The format is TFRecord framing (length, masked CRC32C of the length, payload,
//! masked CRC32C of the payload) around `tensorflow.Event` protobufs. The few
//! messages needed are encoded by hand ([`pb`]): a protobuf code generator for a
//! handful of message types would cost more than it saves. [`read_records`] and
//! [`read_scalars`] read the files back (checking every CRC), for tests and tools.
//!
//! ```
//! use digitlab_report::tensorboard::{read_scalars, EventWriter};
//! let dir = tempfile::tempdir()?;
//! let mut w = EventWriter::create(dir.path())?;
//! w.scalar("loss/train", 1, 0.5)?;
//! w.flush()?;
//! assert!(w.path().file_name().unwrap().to_string_lossy().starts_with("events.out.tfevents."));
//! assert_eq!(read_scalars(w.path())?, vec![("loss/train".to_string(), 1, 0.5)]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The prefix of every event file's name (TensorBoard finds files by it).
pub const FILE_PREFIX: &str = "events.out.tfevents.";

/// A failure to create, write or read an event file, naming it.
#[derive(Debug, thiserror::Error)]
pub enum TensorBoardError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A record whose framing or CRC is wrong, or a PNG without its header.
    #[error("{}: {message}", path.display())]
    Format { path: PathBuf, message: String },
}

pub type Result<T> = std::result::Result<T, TensorBoardError>;

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> TensorBoardError + '_ {
    move |source| TensorBoardError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A hyperparameter's value in the HParams table.
#[derive(Debug, Clone, PartialEq)]
pub enum HParamValue {
    Number(f64),
    Text(String),
    Bool(bool),
}

/// Appends events to one new `events.out.tfevents.<secs>.<host>` file.
pub struct EventWriter {
    out: BufWriter<File>,
    path: PathBuf,
}

impl EventWriter {
    /// Creates a new event file in `dir` (which must exist). It never opens an
    /// existing file: when the name is taken (two writers in one second) a `.N`
    /// suffix is added, which TensorBoard still reads.
    pub fn create(dir: &Path) -> Result<Self> {
        let base = format!("{FILE_PREFIX}{}.{}", now().floor() as u64, hostname());
        let mut n = 0u32;
        loop {
            let name = if n == 0 { base.clone() } else { format!("{base}.{n}") };
            let path = dir.join(name);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    let mut w = EventWriter {
                        out: BufWriter::new(file),
                        path,
                    };
                    // The first record says which event format follows.
                    w.event(0, |e| e.string(3, "brain.Event:2"))?;
                    return Ok(w);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(source) => return Err(TensorBoardError::Io { path, source }),
            }
        }
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One scalar (TensorBoard's "Scalars" tab) at `step`; stored as f32, as
    /// TensorBoard's `simple_value` is.
    pub fn scalar(&mut self, tag: &str, step: i64, value: f64) -> Result<()> {
        self.summary(step, |v| {
            v.string(1, tag);
            v.f32(2, value as f32);
        })
    }

    /// A PNG image (the "Images" tab); `channels` is 1 (gray), 3 (RGB) or 4 (RGBA).
    pub fn image_png(
        &mut self,
        tag: &str,
        step: i64,
        png: &[u8],
        width: u32,
        height: u32,
        channels: u32,
    ) -> Result<()> {
        self.summary(step, |v| {
            v.string(1, tag);
            v.message(4, |img| {
                img.varint(1, height as u64);
                img.varint(2, width as u64);
                img.varint(3, channels as u64);
                img.bytes(4, png);
            });
        })
    }

    /// A PNG file (one digitlab just wrote) as an image; its size and channels
    /// come from the file's header.
    pub fn image_file(&mut self, tag: &str, step: i64, png: &Path) -> Result<()> {
        let bytes = std::fs::read(png).map_err(io_err(png))?;
        let (width, height, channels) = png_header(&bytes).ok_or_else(|| TensorBoardError::Format {
            path: png.to_path_buf(),
            message: "is not a PNG file (no IHDR header)".into(),
        })?;
        self.image_png(tag, step, &bytes, width, height, channels)
    }

    /// The HParams plugin's session start: this run's hyperparameter values.
    ///
    /// No experiment record is written: with none, TensorBoard builds the table's
    /// columns from the sessions of every run under `--logdir` (with one per run,
    /// it would show only the first run's keys).
    pub fn hparams(&mut self, hparams: &[(String, HParamValue)]) -> Result<()> {
        let start = pb::encode(|d| {
            d.message(3, |s| {
                for (name, value) in hparams {
                    // map<string, google.protobuf.Value>: entries of key 1, value 2.
                    s.message(1, |entry| {
                        entry.string(1, name);
                        entry.message(2, |v| match value {
                            HParamValue::Number(x) => v.f64(2, *x),
                            HParamValue::Text(t) => v.string(3, t),
                            HParamValue::Bool(b) => v.varint(4, *b as u64),
                        });
                    });
                }
                s.f64(5, now());
            });
        });
        self.plugin_record("_hparams_/session_start_info", &start)
    }

    /// The HParams plugin's session end (status success or failure).
    pub fn hparams_end(&mut self, success: bool) -> Result<()> {
        let end = pb::encode(|d| {
            d.message(4, |s| {
                // Status: STATUS_SUCCESS = 1, STATUS_FAILURE = 2.
                s.varint(1, if success { 1 } else { 2 });
                s.f64(2, now());
            });
        });
        self.plugin_record("_hparams_/session_end_info", &end)
    }

    /// A session (re)start at `step`: TensorBoard drops the events of earlier
    /// files at `step` and later, so a resumed run's epochs replace those an
    /// interrupted run logged after its last checkpoint.
    pub fn session_start(&mut self, step: i64) -> Result<()> {
        // Event.session_log (7) = SessionLog { status (1): START = 1 }.
        self.event(step, |e| e.message(7, |log| log.varint(1, 1)))
    }

    /// Writes buffered events to the file and syncs it.
    pub fn flush(&mut self) -> Result<()> {
        self.out.flush().map_err(io_err(&self.path))?;
        self.out.get_ref().sync_data().map_err(io_err(&self.path))
    }

    fn plugin_record(&mut self, tag: &str, content: &[u8]) -> Result<()> {
        self.summary(0, |v| {
            v.string(1, tag);
            // SummaryMetadata { plugin_data { plugin_name, content } }.
            v.message(9, |meta| {
                meta.message(1, |plugin| {
                    plugin.string(1, "hparams");
                    plugin.bytes(2, content);
                });
            });
            // An empty float tensor of shape [0], as the plugin's own writer sets.
            v.message(8, |t| {
                t.varint(1, 1);
                t.message(2, |shape| shape.message(2, |_| {}));
            });
        })
    }

    fn summary(&mut self, step: i64, value: impl FnOnce(&mut pb::Encoder)) -> Result<()> {
        self.event(step, |e| e.message(5, |s| s.message(1, value)))
    }

    fn event(&mut self, step: i64, body: impl FnOnce(&mut pb::Encoder)) -> Result<()> {
        let payload = pb::encode(|e| {
            e.f64(1, now());
            // int64 as a varint: two's complement for negative steps.
            e.varint(2, step as u64);
            body(e);
        });
        self.out.write_all(&frame(&payload)).map_err(io_err(&self.path))
    }
}

/// Width, height and channels of a PNG from its IHDR chunk.
fn png_header(bytes: &[u8]) -> Option<(u32, u32, u32)> {
    if bytes.len() < 26 || &bytes[..8] != b"\x89PNG\r\n\x1a\n" || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let be = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    // Colour type: 0 gray, 2 RGB, 3 palette (shown as RGB), 4 gray + alpha, 6 RGBA.
    let channels = match bytes[25] {
        0 => 1,
        4 => 2,
        6 => 4,
        _ => 3,
    };
    Some((be(16), be(20), channels))
}

/// TFRecord framing of one payload.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(payload.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&masked_crc(payload).to_le_bytes());
    out
}

/// CRC32C, rotated and offset as TFRecord requires (a CRC of data that holds
/// CRCs would otherwise degenerate).
pub fn masked_crc(data: &[u8]) -> u32 {
    crc32c::crc32c(data).rotate_right(15).wrapping_add(0xa282_ead8)
}

/// The payloads of every record of an event file, each frame's length and CRCs
/// checked; a truncated or corrupt record is an error naming the file and offset.
pub fn read_records(path: &Path) -> Result<Vec<Vec<u8>>> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let bad = |at: usize, what: &str| TensorBoardError::Format {
        path: path.to_path_buf(),
        message: format!("record at byte {at}: {what}"),
    };
    let u32_at = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let mut records = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        if bytes.len() - at < 12 {
            return Err(bad(at, "truncated header"));
        }
        if masked_crc(&bytes[at..at + 8]) != u32_at(at + 8) {
            return Err(bad(at, "length CRC mismatch"));
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&bytes[at..at + 8]);
        let len = u64::from_le_bytes(len);
        let start = at + 12;
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| start.checked_add(l))
            .filter(|&e| e.checked_add(4).is_some_and(|x| x <= bytes.len()))
            .ok_or_else(|| bad(at, "truncated payload"))?;
        if masked_crc(&bytes[start..end]) != u32_at(end) {
            return Err(bad(at, "payload CRC mismatch"));
        }
        records.push(bytes[start..end].to_vec());
        at = end + 4;
    }
    Ok(records)
}

/// Every scalar of an event file as (tag, step, value), in file order.
pub fn read_scalars(path: &Path) -> Result<Vec<(String, i64, f32)>> {
    let bad = |message: String| TensorBoardError::Format {
        path: path.to_path_buf(),
        message,
    };
    let mut out = Vec::new();
    for record in read_records(path)? {
        let event = pb::fields(&record).map_err(bad)?;
        let step = event.iter().find(|f| f.0 == 2).map_or(0, |f| f.1.varint() as i64);
        for summary in event.iter().filter(|f| f.0 == 5) {
            for value in pb::fields(summary.1.bytes()).map_err(bad)?.iter().filter(|f| f.0 == 1) {
                let v = pb::fields(value.1.bytes()).map_err(bad)?;
                let tag = v.iter().find(|f| f.0 == 1).map(|f| f.1.bytes());
                let simple = v.iter().find(|f| f.0 == 2).map(|f| f.1.fixed32());
                if let (Some(tag), Some(x)) = (tag, simple) {
                    out.push((String::from_utf8_lossy(tag).into_owned(), step, f32::from_bits(x)));
                }
            }
        }
    }
    Ok(out)
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The host name for the file name, reduced to characters safe in one.
fn hostname() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_default();
    let clean: String = raw
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    if clean.is_empty() {
        "localhost".into()
    } else {
        clean
    }
}

/// The protobuf wire format: just what the event messages need.
pub mod pb {
    /// Builds one message's bytes.
    #[derive(Default)]
    pub struct Encoder {
        buf: Vec<u8>,
    }

    /// Encodes a message with `f`.
    pub fn encode(f: impl FnOnce(&mut Encoder)) -> Vec<u8> {
        let mut e = Encoder::default();
        f(&mut e);
        e.buf
    }

    impl Encoder {
        fn raw_varint(&mut self, mut v: u64) {
            while v >= 0x80 {
                self.buf.push((v as u8) | 0x80);
                v >>= 7;
            }
            self.buf.push(v as u8);
        }

        fn key(&mut self, field: u32, wire: u8) {
            self.raw_varint(((field as u64) << 3) | wire as u64);
        }

        /// int32/int64/uint/bool/enum (negative int64 as two's complement).
        pub fn varint(&mut self, field: u32, v: u64) {
            self.key(field, 0);
            self.raw_varint(v);
        }

        pub fn f64(&mut self, field: u32, v: f64) {
            self.key(field, 1);
            self.buf.extend_from_slice(&v.to_le_bytes());
        }

        pub fn f32(&mut self, field: u32, v: f32) {
            self.key(field, 5);
            self.buf.extend_from_slice(&v.to_le_bytes());
        }

        pub fn bytes(&mut self, field: u32, b: &[u8]) {
            self.key(field, 2);
            self.raw_varint(b.len() as u64);
            self.buf.extend_from_slice(b);
        }

        pub fn string(&mut self, field: u32, s: &str) {
            self.bytes(field, s.as_bytes());
        }

        /// A nested message, length-prefixed.
        pub fn message(&mut self, field: u32, f: impl FnOnce(&mut Encoder)) {
            let inner = encode(f);
            self.bytes(field, &inner);
        }
    }

    /// One decoded field's value.
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub enum Value<'a> {
        Varint(u64),
        Fixed64(u64),
        Bytes(&'a [u8]),
        Fixed32(u32),
    }

    impl<'a> Value<'a> {
        /// The varint, or 0 for another wire type.
        pub fn varint(&self) -> u64 {
            if let Value::Varint(v) = self {
                *v
            } else {
                0
            }
        }
        /// The length-delimited bytes, or none for another wire type.
        pub fn bytes(&self) -> &'a [u8] {
            if let Value::Bytes(b) = self {
                b
            } else {
                &[]
            }
        }
        /// The 32-bit value, or 0 for another wire type.
        pub fn fixed32(&self) -> u32 {
            if let Value::Fixed32(v) = self {
                *v
            } else {
                0
            }
        }
    }

    /// The (field number, value) pairs of one message, in order.
    pub fn fields(mut b: &[u8]) -> Result<Vec<(u32, Value<'_>)>, String> {
        fn varint(b: &mut &[u8]) -> Result<u64, String> {
            let mut v = 0u64;
            for shift in (0..64).step_by(7) {
                let (&byte, rest) = b.split_first().ok_or("truncated varint")?;
                *b = rest;
                v |= u64::from(byte & 0x7f) << shift;
                if byte < 0x80 {
                    return Ok(v);
                }
            }
            Err("varint longer than 10 bytes".into())
        }
        fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
            if b.len() < n {
                return Err(format!("field needs {n} bytes, {} left", b.len()));
            }
            let (head, rest) = b.split_at(n);
            *b = rest;
            Ok(head)
        }
        let mut out = Vec::new();
        while !b.is_empty() {
            let key = varint(&mut b)?;
            let field = (key >> 3) as u32;
            let value = match key & 7 {
                0 => Value::Varint(varint(&mut b)?),
                1 => Value::Fixed64(u64::from_le_bytes(take(&mut b, 8)?.try_into().expect("8 bytes"))),
                2 => {
                    let n = usize::try_from(varint(&mut b)?).map_err(|_| "length too large")?;
                    Value::Bytes(take(&mut b, n)?)
                }
                5 => Value::Fixed32(u32::from_le_bytes(take(&mut b, 4)?.try_into().expect("4 bytes"))),
                w => return Err(format!("unsupported wire type {w} (field {field})")),
            };
            out.push((field, value));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_crc_matches_tensorflow() {
        // Values from TensorBoard's own `masked_crc32c` (tensorboard 2.21,
        // tensorflow_stub.pywrap_tensorflow) on the same bytes.
        assert_eq!(masked_crc(b""), 0xa282_ead8);
        assert_eq!(masked_crc(b"123456789"), 0xc78a_b0e5);
        assert_eq!(masked_crc(b"abc"), 0x21f1_576e);
        assert_eq!(masked_crc(&3u64.to_le_bytes()), 0x0e49_99b0);
    }

    #[test]
    fn varints_and_nested_messages_encode_as_protobuf() {
        let bytes = pb::encode(|e| {
            e.varint(1, 150);
            e.message(2, |m| m.string(1, "hi"));
            e.f32(3, 1.0);
        });
        // The protobuf documentation's examples: 150 is 08 96 01, "hi" in field 1 is 0a 02 68 69.
        assert_eq!(
            bytes,
            vec![0x08, 0x96, 0x01, 0x12, 0x04, 0x0a, 0x02, b'h', b'i', 0x1d, 0x00, 0x00, 0x80, 0x3f]
        );
        let f = pb::fields(&bytes).unwrap();
        assert_eq!(f[0], (1, pb::Value::Varint(150)));
        assert_eq!(pb::fields(f[1].1.bytes()).unwrap(), vec![(1, pb::Value::Bytes(b"hi"))]);
        assert_eq!(f32::from_bits(f[2].1.fixed32()), 1.0);
        // A negative step is ten bytes of two's complement.
        assert_eq!(pb::encode(|e| e.varint(1, -1i64 as u64)).len(), 11);
    }

    #[test]
    fn frames_records_with_length_and_crcs() {
        let rec = frame(b"abc");
        assert_eq!(&rec[..8], &3u64.to_le_bytes());
        assert_eq!(&rec[8..12], &0x0e49_99b0u32.to_le_bytes());
        assert_eq!(&rec[12..15], b"abc");
        assert_eq!(&rec[15..], &0x21f1_576eu32.to_le_bytes());
    }

    #[test]
    fn written_files_read_back_and_corruption_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        w.scalar("loss/train", 1, 0.25).unwrap();
        w.scalar("loss/train", 2, 0.125).unwrap();
        w.hparams(&[("optim.lr".into(), HParamValue::Number(0.01))]).unwrap();
        w.hparams_end(true).unwrap();
        w.flush().unwrap();
        let path = w.path().to_path_buf();
        assert_eq!(read_records(&path).unwrap().len(), 5, "version record + 4 events");
        assert_eq!(
            read_scalars(&path).unwrap(),
            vec![("loss/train".into(), 1, 0.25), ("loss/train".into(), 2, 0.125)]
        );
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 6] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let e = read_records(&path).unwrap_err().to_string();
        assert!(e.contains("payload CRC mismatch"), "{e}");
        std::fs::write(&path, &bytes[..n - 2]).unwrap();
        assert!(read_records(&path).unwrap_err().to_string().contains("truncated"));
    }

    #[test]
    fn images_take_their_size_from_the_png_header() {
        let dir = tempfile::tempdir().unwrap();
        let png = dir.path().join("p.png");
        image::RgbImage::new(7, 3).save(&png).unwrap();
        assert_eq!(png_header(&std::fs::read(&png).unwrap()), Some((7, 3, 3)));
        let mut w = EventWriter::create(dir.path()).unwrap();
        w.image_file("confusion_matrix", 5, &png).unwrap();
        std::fs::write(dir.path().join("not.png"), b"text").unwrap();
        assert!(w.image_file("x", 5, &dir.path().join("not.png")).is_err());
    }

    #[test]
    fn never_opens_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = EventWriter::create(dir.path()).unwrap();
        let b = EventWriter::create(dir.path()).unwrap();
        assert_ne!(a.path(), b.path());
    }
}
