//! PyTorch checkpoint reading on real `torch.save` fixtures (written by
//! `tests/fixtures/make_pth_fixtures.py`, zip and legacy format) and on
//! hand-crafted corrupt files.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use digitlab_finetune::pth::{read_pth, read_pth_with, PthOptions};
use digitlab_finetune::{load_weights, FinetuneError};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name)
}

fn as_map(v: Vec<(String, Tensor)>) -> HashMap<String, Tensor> {
    v.into_iter().collect()
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

#[test]
fn good_checkpoint_loads_with_exact_values() {
    let tensors = read_pth(fixture("good.pth")).unwrap();
    let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
    // The state dict under "state_dict" is picked, in pickle order; "param", "epoch"
    // and "arch" at the top level are not part of it, nor is `_metadata`.
    assert_eq!(
        names,
        [
            "0.weight",
            "0.bias",
            "1.weight",
            "1.bias",
            "1.running_mean",
            "1.running_var",
            "1.num_batches_tracked",
            "head.half",
            "head.bf16",
            "head.f64",
            "head.i32",
            "head.bool",
            "view.transposed",
            "view.sliced",
            "view.base",
        ]
    );
    let m = as_map(tensors);
    let w = &m["0.weight"];
    assert_eq!(w.dtype(), DType::F32);
    assert_eq!(w.dims(), [2, 1, 2, 2]);
    assert_eq!(f32s(w), [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5]);
    assert_eq!(f32s(&m["0.bias"]), [0.25, -0.75]);
    assert_eq!(f32s(&m["1.weight"]), [1.0, 1.0]);
    assert_eq!(f32s(&m["1.bias"]), [0.0, 0.0]);
    assert_eq!(f32s(&m["1.running_mean"]), [0.5, 1.5]);
    assert_eq!(f32s(&m["1.running_var"]), [2.0, 4.0]);

    let n = &m["1.num_batches_tracked"];
    assert_eq!(n.dtype(), DType::I64);
    assert_eq!(n.dims(), [] as [usize; 0]);
    assert_eq!(n.to_scalar::<i64>().unwrap(), 7);

    let h = &m["head.half"];
    assert_eq!(h.dtype(), DType::F16);
    assert_eq!(f32s(h), [1.0, -2.5, 0.125]);

    let b = &m["head.bf16"];
    assert_eq!(b.dtype(), DType::BF16);
    assert_eq!(b.dims(), [2, 2]);
    assert_eq!(f32s(b), [1.0, 2.0, -3.0, 0.5]);

    let d = &m["head.f64"];
    assert_eq!(d.dtype(), DType::F64);
    assert_eq!(d.to_vec1::<f64>().unwrap(), [1.5, -0.25]);

    let i = &m["head.i32"];
    assert_eq!(i.dtype(), DType::I32);
    assert_eq!(i.to_vec1::<i32>().unwrap(), [-1, 0, i32::MAX]);

    let bl = &m["head.bool"];
    assert_eq!(bl.dtype(), DType::U8);
    assert_eq!(bl.to_vec1::<u8>().unwrap(), [1, 0, 1]);

    // Views of one shared storage `base = arange(12).reshape(3, 4)`.
    let t = &m["view.transposed"];
    assert_eq!(t.dims(), [4, 3]);
    assert!(t.is_contiguous());
    assert_eq!(
        t.to_vec2::<f32>().unwrap(),
        [[0.0, 4.0, 8.0], [1.0, 5.0, 9.0], [2.0, 6.0, 10.0], [3.0, 7.0, 11.0]]
    );
    let s = &m["view.sliced"];
    assert_eq!(s.to_vec2::<f32>().unwrap(), [[4.0, 6.0], [8.0, 10.0]]);
    let base = &m["view.base"];
    assert_eq!(f32s(base), (0..12).map(|x| x as f32).collect::<Vec<_>>());
}

#[test]
fn explicit_key_selects_a_top_level_entry() {
    let opts = PthOptions {
        key: Some("param".into()),
    };
    let tensors = read_pth_with(fixture("good.pth"), &opts).unwrap();
    assert_eq!(tensors.len(), 1);
    assert_eq!(tensors[0].0, "param");
    assert_eq!(f32s(&tensors[0].1), [3.0, 4.0]);

    let opts = PthOptions {
        key: Some("state_dict".into()),
    };
    assert_eq!(read_pth_with(fixture("good.pth"), &opts).unwrap().len(), 15);

    let opts = PthOptions {
        key: Some("nope".into()),
    };
    let e = read_pth_with(fixture("good.pth"), &opts).unwrap_err().to_string();
    assert!(e.contains("`nope` not found") && e.contains("state_dict"), "{e}");
}

#[test]
fn protocol4_and_deflated_entries_load() {
    // Saved with pickle_protocol=4 and re-zipped with DEFLATE; its folder is not `archive`.
    let m = as_map(read_pth(fixture("good_proto4.pth")).unwrap());
    assert_eq!(m.len(), 2);
    assert_eq!(m["fc.weight"].to_vec2::<f32>().unwrap(), [[1.0, 2.0], [3.0, 4.0]]);
    assert_eq!(m["fc.bias"].to_vec1::<f32>().unwrap(), [0.5, -0.5]);
}

#[test]
fn load_weights_dispatches_pth_by_magic() {
    let m = load_weights(fixture("good.pth")).unwrap();
    assert_eq!(m.len(), 15);
    // The extension does not matter: a `.bin` copy (like pytorch_model.bin) loads too.
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("pytorch_model.bin");
    std::fs::copy(fixture("good.pth"), &bin).unwrap();
    assert_eq!(load_weights(&bin).unwrap().len(), 15);
}

fn assert_refused(path: &Path, callable: &str, alias: Option<&str>) {
    let err = read_pth(path).unwrap_err();
    let msg = err.to_string();
    match &err {
        FinetuneError::UnsafePickle {
            callable: c, alias: a, ..
        } => {
            assert_eq!(c, callable);
            assert_eq!(a.as_deref(), alias);
        }
        other => panic!("expected UnsafePickle, got {other:?}"),
    }
    assert!(msg.contains(callable), "{msg}");
    if let Some(alias) = alias {
        assert!(msg.contains(alias), "{msg}");
    }
    assert!(msg.contains("Nothing was executed"), "{msg}");
    // Through load_weights as well.
    assert!(matches!(
        load_weights(path).unwrap_err(),
        FinetuneError::UnsafePickle { .. }
    ));
}

#[test]
fn malicious_os_system_is_refused() {
    // `__reduce__` returning (os.system, ("echo pwned",)): pickled as posix.system on Linux.
    assert_refused(&fixture("malicious.pth"), "posix.system", Some("os.system"));
}

#[test]
fn malicious_stack_global_eval_is_refused() {
    assert_refused(&fixture("malicious_eval_p4.pth"), "builtins.eval", None);
}

fn invalid_reason(result: digitlab_finetune::Result<Vec<(String, Tensor)>>) -> String {
    match result {
        Err(e @ FinetuneError::InvalidCheckpoint { .. }) => e.to_string(),
        Err(other) => panic!("expected InvalidCheckpoint, got {other:?}"),
        Ok(t) => panic!("expected an error, got {} tensors", t.len()),
    }
}

#[test]
fn truncated_and_corrupt_archives_give_clear_errors() {
    let good = std::fs::read(fixture("good.pth")).unwrap();
    let dir = tempfile::tempdir().unwrap();

    for cut in [good.len() / 2, good.len() - 10, 30] {
        let p = dir.path().join(format!("cut{cut}.pth"));
        std::fs::write(&p, &good[..cut]).unwrap();
        let e = invalid_reason(read_pth(&p));
        assert!(e.contains("corrupt or truncated zip archive"), "{e}");
        assert!(e.contains(&format!("cut{cut}.pth")), "{e}");
    }

    // Flip one byte inside storage 0 (f32 -1.0 = 00 00 80 bf): the CRC check fails.
    let needle = [0x00, 0x00, 0x80, 0xbf, 0x00, 0x00, 0x00, 0xbf];
    let at = good.windows(8).position(|w| w == needle).expect("storage bytes");
    let mut bad = good.clone();
    bad[at + 3] ^= 0x40;
    let p = dir.path().join("flipped.pth");
    std::fs::write(&p, &bad).unwrap();
    let e = invalid_reason(read_pth(&p));
    assert!(e.contains("checksum"), "{e}");

    let p = dir.path().join("empty.pth");
    std::fs::write(&p, b"").unwrap();
    assert!(invalid_reason(read_pth(&p)).contains("empty"));

    let p = dir.path().join("text.pth");
    std::fs::write(&p, b"hello, not a checkpoint").unwrap();
    assert!(invalid_reason(read_pth(&p)).contains("not a zip archive"));

    // A legacy file cut after its magic number.
    let p = dir.path().join("legacy.pth");
    std::fs::write(&p, b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.").unwrap();
    let e = invalid_reason(read_pth(&p));
    assert!(e.contains("legacy") && e.contains("protocol version"), "{e}");

    let missing = dir.path().join("does-not-exist.pth");
    assert!(matches!(read_pth(&missing).unwrap_err(), FinetuneError::Io { .. }));
}

// ---- hand-made archives -----------------------------------------------------------

fn zip_bytes(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in entries {
        w.start_file(*name, opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn long1(v: i64) -> Vec<u8> {
    let mut out = vec![0x8a, 8];
    out.extend_from_slice(&v.to_le_bytes());
    out
}

fn unicode(s: &str) -> Vec<u8> {
    let mut out = vec![b'X'];
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    out
}

/// A protocol-2 pickle of `{"w": _rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())}`.
fn one_tensor_pickle(storage_class: &str, numel: i64, offset: i64, size: &[i64], stride: &[i64]) -> Vec<u8> {
    let mut p = b"\x80\x02}(".to_vec();
    p.extend(unicode("w"));
    p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n((");
    p.extend(unicode("storage"));
    p.extend_from_slice(format!("ctorch\n{storage_class}\n").as_bytes());
    p.extend(unicode("0"));
    p.extend(unicode("cpu"));
    p.extend(long1(numel));
    p.extend_from_slice(b"tQ");
    p.extend(long1(offset));
    p.push(b'(');
    for s in size {
        p.extend(long1(*s));
    }
    p.extend_from_slice(b"t(");
    for s in stride {
        p.extend(long1(*s));
    }
    p.extend_from_slice(b"t\x89ccollections\nOrderedDict\n)RtRu.");
    p
}

fn write_archive(dir: &Path, name: &str, pickle: &[u8], storage: &[u8]) -> PathBuf {
    let bytes = zip_bytes(&[
        ("ckpt/data.pkl", pickle),
        ("ckpt/data/0", storage),
        ("ckpt/byteorder", b"little"),
    ]);
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn hand_made_archive_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
        .iter()
        .flat_map(|f| f.to_le_bytes())
        .collect();
    // A [2, 2] view at offset 1 with strides [2, 1]: [[2, 3], [4, 5]].
    let p = write_archive(
        dir.path(),
        "ok.pth",
        &one_tensor_pickle("FloatStorage", 6, 1, &[2, 2], &[2, 1]),
        &data,
    );
    let t = read_pth(&p).unwrap();
    assert_eq!(t[0].0, "w");
    assert_eq!(t[0].1.to_vec2::<f32>().unwrap(), [[2.0, 3.0], [4.0, 5.0]]);
    // Stride 0 (an expanded view) works when small.
    let p = write_archive(
        dir.path(),
        "exp.pth",
        &one_tensor_pickle("FloatStorage", 6, 0, &[3, 2], &[0, 1]),
        &data,
    );
    assert_eq!(read_pth(&p).unwrap()[0].1.to_vec2::<f32>().unwrap(), [[1.0, 2.0]; 3]);
    // Big-endian archives are byte-swapped.
    let be: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|f| f.to_be_bytes()).collect();
    let bytes = zip_bytes(&[
        ("ckpt/data.pkl", &one_tensor_pickle("FloatStorage", 2, 0, &[2], &[1])),
        ("ckpt/data/0", &be),
        ("ckpt/byteorder", b"big"),
    ]);
    let p = dir.path().join("be.pth");
    std::fs::write(&p, bytes).unwrap();
    assert_eq!(read_pth(&p).unwrap()[0].1.to_vec1::<f32>().unwrap(), [1.0, 2.0]);
}

#[test]
fn lying_sizes_are_refused_without_huge_allocations() {
    let dir = tempfile::tempdir().unwrap();
    let data = vec![0u8; 24];
    // The pickle claims 2^40 floats (4 TiB) but the entry holds 24 bytes.
    let p = write_archive(
        dir.path(),
        "numel.pth",
        &one_tensor_pickle("FloatStorage", 1 << 40, 0, &[1 << 20, 1 << 20], &[1 << 20, 1]),
        &data,
    );
    let e = invalid_reason(read_pth(&p));
    assert!(e.contains("holds 24 bytes") && e.contains("needed"), "{e}");
    // A view reaching past its storage.
    let p = write_archive(
        dir.path(),
        "oob.pth",
        &one_tensor_pickle("FloatStorage", 6, 4, &[2, 2], &[2, 1]),
        &data,
    );
    let e = invalid_reason(read_pth(&p));
    assert!(e.contains("reads element"), "{e}");
    // A stride-0 view that would expand 6 floats into 2^40 elements.
    let p = write_archive(
        dir.path(),
        "expand.pth",
        &one_tensor_pickle("FloatStorage", 6, 0, &[1 << 20, 1 << 20], &[0, 0]),
        &data,
    );
    let e = invalid_reason(read_pth(&p));
    assert!(e.contains("repeats a storage"), "{e}");
    // Negative sizes, overflowing element counts.
    let p = write_archive(
        dir.path(),
        "neg.pth",
        &one_tensor_pickle("FloatStorage", 6, 0, &[-1], &[1]),
        &data,
    );
    invalid_reason(read_pth(&p));
    let p = write_archive(
        dir.path(),
        "ovf.pth",
        &one_tensor_pickle("FloatStorage", 6, 0, &[1 << 62, 1 << 62], &[0, 0]),
        &data,
    );
    invalid_reason(read_pth(&p));
    // A string length of 4 GiB in the pickle.
    let p = write_archive(dir.path(), "str.pth", b"\x80\x02X\xff\xff\xff\xffabc", &data);
    let e = invalid_reason(read_pth(&p));
    assert!(e.contains("truncated pickle"), "{e}");
    // Unknown storage class: refused as a callable.
    let p = write_archive(
        dir.path(),
        "cls.pth",
        &one_tensor_pickle("ComplexFloatStorage", 6, 0, &[6], &[1]),
        &data,
    );
    assert!(
        matches!(read_pth(&p).unwrap_err(), FinetuneError::UnsafePickle { ref callable, .. } if callable == "torch.ComplexFloatStorage")
    );
    // Storage entry missing.
    let bytes = zip_bytes(&[("ckpt/data.pkl", &one_tensor_pickle("FloatStorage", 6, 0, &[6], &[1]))]);
    let p = dir.path().join("nostorage.pth");
    std::fs::write(&p, bytes).unwrap();
    let e = invalid_reason(read_pth(&p));
    assert!(e.contains("missing from the archive"), "{e}");
    // No data.pkl at all.
    let bytes = zip_bytes(&[("x/other.txt", b"hi")]);
    let p = dir.path().join("nopickle.pth");
    std::fs::write(&p, bytes).unwrap();
    let e = invalid_reason(read_pth(&p));
    assert!(e.contains("no data.pkl"), "{e}");
    // A TorchScript archive.
    let bytes = zip_bytes(&[("m/data.pkl", b"N."), ("m/constants.pkl", b"N."), ("m/code/m.py", b"")]);
    let p = dir.path().join("script.pt");
    std::fs::write(&p, bytes).unwrap();
    let e = read_pth(&p).unwrap_err();
    assert!(e.to_string().contains("TorchScript"), "{e}");
}

// ---- legacy (pre-1.6) format ---------------------------------------------------------

/// Every tensor as (name, dtype, dims, values as f64).
fn contents(v: &[(String, Tensor)]) -> Vec<(String, DType, Vec<usize>, Vec<f64>)> {
    v.iter()
        .map(|(n, t)| {
            let values = t
                .to_dtype(DType::F64)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            (n.clone(), t.dtype(), t.dims().to_vec(), values)
        })
        .collect()
}

#[test]
fn legacy_checkpoint_loads_the_same_tensors_as_the_zip_one() {
    // good.pth and legacy.pth hold the same checkpoint (see make_pth_fixtures.py),
    // whose values good_checkpoint_loads_with_exact_values checks one by one.
    let zip = read_pth(fixture("good.pth")).unwrap();
    let legacy = read_pth(fixture("legacy.pth")).unwrap();
    assert_eq!(legacy.len(), 15);
    assert_eq!(contents(&legacy), contents(&zip));
    let m = as_map(legacy);
    assert_eq!(m["view.sliced"].to_vec2::<f32>().unwrap(), [[4.0, 6.0], [8.0, 10.0]]);
    assert_eq!(m["1.num_batches_tracked"].to_scalar::<i64>().unwrap(), 7);

    let opts = PthOptions {
        key: Some("param".into()),
    };
    let t = read_pth_with(fixture("legacy.pth"), &opts).unwrap();
    assert_eq!(t[0].0, "param");
    assert_eq!(f32s(&t[0].1), [3.0, 4.0]);

    // Protocol 4 (FRAME, MEMOIZE, STACK_GLOBAL) in the legacy layout.
    let m = as_map(read_pth(fixture("legacy_proto4.pth")).unwrap());
    assert_eq!(m["fc.weight"].to_vec2::<f32>().unwrap(), [[1.0, 2.0], [3.0, 4.0]]);
    assert_eq!(m["fc.bias"].to_vec1::<f32>().unwrap(), [0.5, -0.5]);
    // And through load_weights (format detected from the first bytes).
    assert_eq!(load_weights(fixture("legacy.pth")).unwrap().len(), 15);
    assert_eq!(
        digitlab_finetune::detect_format(fixture("legacy.pth")).unwrap(),
        digitlab_finetune::WeightsFormat::PyTorch
    );
}

#[test]
fn legacy_malicious_os_system_is_refused() {
    assert_refused(&fixture("legacy_malicious.pth"), "posix.system", Some("os.system"));
}

#[test]
fn every_truncation_and_byte_flip_of_a_legacy_file_is_handled() {
    let good = std::fs::read(fixture("legacy.pth")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cut.pth");
    // The file ends right after its last storage: any cut loses data.
    for cut in 2..good.len() {
        std::fs::write(&p, &good[..cut]).unwrap();
        let e = invalid_reason(read_pth(&p));
        assert!(e.contains("legacy") && e.contains("cut.pth"), "cut at {cut}: {e}");
    }
    // A flipped byte gives an error or (inside storage bytes) other values, never a panic.
    let mut loaded = 0;
    for at in (0..good.len()).step_by(3) {
        let mut bad = good.clone();
        bad[at] ^= 0x5a;
        std::fs::write(&p, &bad).unwrap();
        if read_pth(&p).is_ok() {
            loaded += 1;
        }
    }
    assert!(loaded > 0, "no flip inside the storages loaded");
}

fn binunicode(s: &str) -> Vec<u8> {
    unicode(s)
}

/// A legacy file: the header pickles, `object`, the key list, then each storage.
fn legacy_file(
    little_endian: bool,
    protocol_version: u16,
    object: &[u8],
    keys: &[&str],
    storages: &[(u64, &[u8])],
) -> Vec<u8> {
    let mut f = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.".to_vec();
    f.extend_from_slice(b"\x80\x02M");
    f.extend_from_slice(&protocol_version.to_le_bytes());
    f.push(b'.');
    f.extend_from_slice(b"\x80\x02}(");
    f.extend(binunicode("little_endian"));
    f.push(if little_endian { 0x88 } else { 0x89 });
    f.extend_from_slice(b"u.");
    f.extend_from_slice(object);
    f.extend_from_slice(b"\x80\x02](");
    for k in keys {
        f.extend(binunicode(k));
    }
    f.extend_from_slice(b"e.");
    for (count, bytes) in storages {
        f.extend_from_slice(&count.to_le_bytes());
        f.extend_from_slice(bytes);
    }
    f
}

/// `{"w": _rebuild_tensor_v2(storage, offset, size, stride, ...)}` whose storage `"0"`
/// (numel elements of float32) is referenced with the legacy 6-tuple persistent id,
/// optionally as a view `(view_offset, view_numel)`.
fn legacy_tensor_pickle(numel: i64, view: Option<(i64, i64)>, offset: i64, size: &[i64], stride: &[i64]) -> Vec<u8> {
    let mut p = b"\x80\x02}(".to_vec();
    p.extend(unicode("w"));
    p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n((");
    p.extend(unicode("storage"));
    p.extend_from_slice(b"ctorch\nFloatStorage\n");
    p.extend(unicode("0"));
    p.extend(unicode("cpu"));
    p.extend(long1(numel));
    match view {
        None => p.push(b'N'),
        Some((o, n)) => {
            p.push(b'(');
            p.extend(unicode("0v"));
            p.extend(long1(o));
            p.extend(long1(n));
            p.push(b't');
        }
    }
    p.extend_from_slice(b"tQ");
    p.extend(long1(offset));
    p.push(b'(');
    for s in size {
        p.extend(long1(*s));
    }
    p.extend_from_slice(b"t(");
    for s in stride {
        p.extend(long1(*s));
    }
    p.extend_from_slice(b"t\x89ccollections\nOrderedDict\n)RtRu.");
    p
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|f| f.to_le_bytes()).collect()
}

#[test]
fn hand_made_legacy_files() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: Vec<u8>| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let data = f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let obj = legacy_tensor_pickle(6, None, 1, &[2, 2], &[2, 1]);
    let p = write("ok.pth", legacy_file(true, 1001, &obj, &["0"], &[(6, &data)]));
    assert_eq!(
        read_pth(&p).unwrap()[0].1.to_vec2::<f32>().unwrap(),
        [[2.0, 3.0], [4.0, 5.0]]
    );

    // A PyTorch 0.x storage view: elements 2..5 of storage "0", then offset 1 in it.
    let obj = legacy_tensor_pickle(6, Some((2, 3)), 1, &[2], &[1]);
    let p = write("view.pth", legacy_file(true, 1001, &obj, &["0"], &[(6, &data)]));
    assert_eq!(read_pth(&p).unwrap()[0].1.to_vec1::<f32>().unwrap(), [4.0, 5.0]);
    // A view reaching past its storage, and a tensor reaching past its view.
    let obj = legacy_tensor_pickle(6, Some((4, 3)), 0, &[1], &[1]);
    let p = write("view_oob.pth", legacy_file(true, 1001, &obj, &["0"], &[(6, &data)]));
    assert!(invalid_reason(read_pth(&p)).contains("reaches past its storage"));
    let obj = legacy_tensor_pickle(6, Some((2, 3)), 1, &[3], &[1]);
    let p = write("view_oob2.pth", legacy_file(true, 1001, &obj, &["0"], &[(6, &data)]));
    assert!(invalid_reason(read_pth(&p)).contains("reads element"));

    let obj = legacy_tensor_pickle(6, None, 0, &[6], &[1]);
    // The raw element count disagrees with the pickle.
    let p = write("count.pth", legacy_file(true, 1001, &obj, &["0"], &[(5, &data)]));
    let e = invalid_reason(read_pth(&p));
    assert!(e.contains("gives 5 elements") && e.contains("the pickle 6"), "{e}");
    // Storage bytes missing at the end.
    let p = write("short.pth", legacy_file(true, 1001, &obj, &["0"], &[(6, &data[..20])]));
    let e = invalid_reason(read_pth(&p));
    assert!(e.contains("needs 24 bytes") && e.contains("truncated"), "{e}");
    // Key list and persistent ids disagree.
    let p = write("nokey.pth", legacy_file(true, 1001, &obj, &[], &[]));
    assert!(invalid_reason(read_pth(&p)).contains("missing from the storage key list"));
    let p = write(
        "extrakey.pth",
        legacy_file(true, 1001, &obj, &["0", "9"], &[(6, &data)]),
    );
    assert!(invalid_reason(read_pth(&p)).contains("does not use"));
    let p = write("twice.pth", legacy_file(true, 1001, &obj, &["0", "0"], &[(6, &data)]));
    assert!(invalid_reason(read_pth(&p)).contains("listed twice"));
    // 2^40 floats claimed (and "confirmed" by the count): refused before allocating.
    let huge = legacy_tensor_pickle(1 << 40, None, 0, &[1 << 20, 1 << 20], &[1 << 20, 1]);
    let p = write("huge.pth", legacy_file(true, 1001, &huge, &["0"], &[(1 << 40, &data)]));
    let e = invalid_reason(read_pth(&p));
    assert!(
        e.contains("needs 4398046511104 bytes") && e.contains("only 24 remain"),
        "{e}"
    );
    // A stride-0 view expanding 6 floats a million times.
    let exp = legacy_tensor_pickle(6, None, 0, &[1 << 20, 6], &[0, 1]);
    let p = write("expand.pth", legacy_file(true, 1001, &exp, &["0"], &[(6, &data)]));
    assert!(invalid_reason(read_pth(&p)).contains("repeats a storage"));

    // One storage under a million names (a list of memo references): refused before
    // anything is materialised.
    let mut many = b"\x80\x02}(".to_vec();
    many.extend(unicode("w"));
    many.push(b']');
    many.push(b'(');
    let tensor = legacy_tensor_pickle(4096, None, 0, &[4096], &[1]);
    // The tensor expression of `{"w": T}` is between the key and the final `u.`.
    let start = 4 + 5 + 1; // after `\x80\x02}(` and X"w"
    many.extend_from_slice(&tensor[start..tensor.len() - 2]);
    many.extend_from_slice(b"q\x00");
    // 10,000 views of 16 KiB from a file of about 37 KiB.
    for _ in 0..10_000 {
        many.extend_from_slice(b"h\x00");
    }
    many.extend_from_slice(b"eu.");
    let big = vec![0u8; 4096 * 4];
    let p = write("many.pth", legacy_file(true, 1001, &many, &["0"], &[(4096, &big)]));
    let e = invalid_reason(read_pth(&p));
    assert!(e.contains("tensors add up to"), "{e}");

    // Header values torch never writes.
    let p = write("be.pth", legacy_file(false, 1001, &obj, &["0"], &[(6, &data)]));
    let e = read_pth(&p).unwrap_err();
    assert!(
        matches!(e, FinetuneError::UnsupportedCheckpoint { .. }) && e.to_string().contains("big-endian"),
        "{e}"
    );
    let p = write("proto.pth", legacy_file(true, 1000, &obj, &["0"], &[(6, &data)]));
    let e = read_pth(&p).unwrap_err();
    assert!(
        matches!(e, FinetuneError::UnsupportedCheckpoint { .. }) && e.to_string().contains("version 1000"),
        "{e}"
    );
    let p = write("notmagic.pth", b"\x80\x02K\x01.".to_vec());
    assert!(invalid_reason(read_pth(&p)).contains("magic number"));

    // An object pickle far larger than the first 64 KiB window.
    let mut big = b"\x80\x02}(".to_vec();
    big.extend(unicode("pad"));
    big.extend(unicode(&"x".repeat(300_000)));
    big.extend_from_slice(&legacy_tensor_pickle(6, None, 0, &[6], &[1])[4..]);
    let p = write("bigpickle.pth", legacy_file(true, 1001, &big, &["0"], &[(6, &data)]));
    let t = read_pth(&p).unwrap();
    assert_eq!(t.len(), 1);
    assert_eq!(f32s(&t[0].1), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
}

#[test]
#[ignore = "needs full-size legacy torchvision files: `python3 crates/finetune/tests/fixtures/make_pth_fixtures.py torchvision DIR`, then DIGITLAB_TORCHVISION_LEGACY=DIR cargo test --release --workspace --test pth -- --ignored"]
fn full_size_legacy_torchvision_checkpoints_match_pytorch() {
    use candle_core::ModuleT;
    use digitlab_finetune::zoo::CreateOptions;
    use digitlab_finetune::{create_model, WeightsSource};
    let dir = PathBuf::from(
        std::env::var_os("DIGITLAB_TORCHVISION_LEGACY")
            .expect("set DIGITLAB_TORCHVISION_LEGACY to the folder make_pth_fixtures.py torchvision wrote"),
    );
    let reference =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &candle_core::Device::Cpu).unwrap();
    let input = digitlab_models::InputShape {
        channels: 3,
        height: 224,
        width: 224,
    };
    for name in ["alexnet", "resnet18"] {
        let path = dir.join(format!("{name}-legacy.pth"));
        let t0 = std::time::Instant::now();
        let m = create_model(name, &WeightsSource::Local(path), 1000, &CreateOptions::new(input)).unwrap();
        let load_s = t0.elapsed().as_secs_f64();
        let info = m.pretrained.as_ref().unwrap();
        assert!(
            info.report.missing.is_empty()
                && info.report.unexpected.is_empty()
                && info.report.reinitialized().next().is_none(),
            "{name}: {}",
            info.report
        );
        let logits = m.model.forward_t(&reference["input"], false).unwrap();
        let want = &reference[&format!("{name}.logits")];
        let diff: f32 = (&logits - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        let scale: f32 = want.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
        println!(
            "{name}: loaded in {load_s:.1}s, relative max logit error {:.2e}",
            diff / scale
        );
        assert!(diff / scale < 1e-4, "{name}: {}", diff / scale);
    }
}
