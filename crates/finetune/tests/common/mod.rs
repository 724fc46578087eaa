//! Shared helpers of the transfer tests: a synthetic SVHN-layout `.mat` writer, a
//! hand-built Hugging Face cache, small checkpoints.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use digitlab_models::{build_model, InputShape, ModelConfig, SeededVarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Writes an SVHN "cropped digits" file: `X` uint8 32x32x3xN (column-major, MATLAB's
/// (row, column, channel, image) order) and `y` double Nx1 with labels 1..10 (10 =
/// digit 0), from NCHW `images` and labels 0..9.
pub fn write_svhn_mat(path: &Path, images: &[u8], labels: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, digitlab_test_support::mat::svhn_from_nchw(images, labels)).unwrap();
}

/// `n` synthetic 32x32 RGB "digits" (NCHW) and labels 0..9: class k is a bright
/// horizontal bar at rows 3k..3k+2 on a noisy background of random tint. Easy for
/// any feature extractor, but not constant within a class.
pub fn synthetic_svhn(n: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut images = vec![0u8; n * 3 * 32 * 32];
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let k = (i % 10) as u8;
        labels.push(k);
        let tint: [u8; 3] = [
            rng.random_range(0..80),
            rng.random_range(0..80),
            rng.random_range(0..80),
        ];
        let (c0, c1) = (rng.random_range(2..8), rng.random_range(24..30));
        for ch in 0..3 {
            for r in 0..32 {
                for c in 0..32 {
                    let bar = (3 * k as usize..3 * k as usize + 2).contains(&r) && (c0..c1).contains(&c);
                    let v = if bar {
                        255 - rng.random_range(0..40)
                    } else {
                        tint[ch] + rng.random_range(0..40)
                    };
                    images[((i * 3 + ch) * 32 + r) * 32 + c] = v;
                }
            }
        }
    }
    (images, labels)
}

/// A data dir holding `svhn/train_32x32.mat` (`n_train` images) and
/// `svhn/test_32x32.mat` (`n_test`).
pub fn svhn_data_dir(root: &Path, n_train: usize, n_test: usize) -> PathBuf {
    let dir = root.join("data");
    let (x, y) = synthetic_svhn(n_train, 1);
    write_svhn_mat(&dir.join("svhn/train_32x32.mat"), &x, &y);
    let (x, y) = synthetic_svhn(n_test, 2);
    write_svhn_mat(&dir.join("svhn/test_32x32.mat"), &x, &y);
    dir
}

/// Every tensor of a seeded `cfg` model for `input` with `classes` outputs, with
/// batch-norm running statistics set to non-trivial values (as a trained
/// checkpoint has) and a `num_batches_tracked` per batch norm (as torch writes).
pub fn seeded_checkpoint(cfg: &ModelConfig, input: InputShape, classes: usize, seed: u64) -> HashMap<String, Tensor> {
    let map = VarMap::new();
    let vb = SeededVarMap::var_builder(&map, seed, DType::F32, &Device::Cpu);
    build_model(cfg, input, classes, vb).unwrap();
    let data = map.data().lock().unwrap();
    let mut out = HashMap::new();
    for (name, var) in data.iter() {
        let t = var.as_tensor().clone();
        let n = t.elem_count();
        let t = if name.ends_with("running_var") {
            Tensor::from_vec(
                (0..n).map(|i| 0.5 + (i % 7) as f32 * 0.25).collect::<Vec<f32>>(),
                n,
                &Device::Cpu,
            )
            .unwrap()
        } else if name.ends_with("running_mean") {
            Tensor::from_vec(
                (0..n).map(|i| ((i % 5) as f32 - 2.0) * 0.05).collect::<Vec<f32>>(),
                n,
                &Device::Cpu,
            )
            .unwrap()
        } else {
            t
        };
        if let Some(prefix) = name.strip_suffix("running_mean") {
            out.insert(
                format!("{prefix}num_batches_tracked"),
                Tensor::new(&[100i64], &Device::Cpu).unwrap().squeeze(0).unwrap(),
            );
        }
        out.insert(name.clone(), t);
    }
    out
}

/// Builds `<cache>/models--{org}--{name}/{refs/main, blobs/<etag>, snapshots/<hash>/model.safetensors}`
/// the way huggingface_hub lays it out (the snapshot entry is a symlink into blobs/).
pub fn hub_cache(cache: &Path, repo: &str, tensors: &HashMap<String, Tensor>) -> PathBuf {
    const HASH: &str = "5d3e1f2a4b6c8d0e1f2a3b4c5d6e7f8091a2b3c4";
    let repo_dir = cache.join(format!("models--{}", repo.replace('/', "--")));
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::create_dir_all(repo_dir.join("blobs")).unwrap();
    let snapshot = repo_dir.join("snapshots").join(HASH);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::write(repo_dir.join("refs/main"), HASH).unwrap();
    let blob = repo_dir.join("blobs/0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0");
    candle_core::safetensors::save(tensors, &blob).unwrap();
    let file = snapshot.join("model.safetensors");
    #[cfg(unix)]
    std::os::unix::fs::symlink(&blob, &file).unwrap();
    #[cfg(not(unix))]
    std::fs::copy(&blob, &file).unwrap();
    file
}

/// Bitwise equality of two f32 tensors.
pub fn bit_identical(a: &Tensor, b: &Tensor) -> bool {
    if a.dims() != b.dims() {
        return false;
    }
    let a: Vec<u32> = a
        .flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect();
    let b: Vec<u32> = b
        .flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect();
    a == b
}

fn pickle_unicode(s: &str) -> Vec<u8> {
    let mut out = vec![b'X'];
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    out
}

fn pickle_long(v: i64) -> Vec<u8> {
    let mut out = vec![0x8a, 8];
    out.extend_from_slice(&v.to_le_bytes());
    out
}

/// Writes f32 `tensors` as a `torch.save` zip archive of a plain state dict, the
/// way torch lays it out: a protocol-2 `data.pkl` rebuilding each tensor with
/// `torch._utils._rebuild_tensor_v2` from a persistent storage `data/<i>`.
pub fn write_pth(path: &Path, tensors: &HashMap<String, Tensor>) {
    use std::io::Write;
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut p = b"\x80\x02}(".to_vec();
    let mut storages = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let t = tensors[*name].to_dtype(DType::F32).unwrap();
        let dims: Vec<i64> = t.dims().iter().map(|&d| d as i64).collect();
        let mut strides = vec![1i64; dims.len()];
        for k in (0..dims.len().saturating_sub(1)).rev() {
            strides[k] = strides[k + 1] * dims[k + 1];
        }
        p.extend(pickle_unicode(name));
        p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n((");
        p.extend(pickle_unicode("storage"));
        p.extend_from_slice(b"ctorch\nFloatStorage\n");
        p.extend(pickle_unicode(&i.to_string()));
        p.extend(pickle_unicode("cpu"));
        p.extend(pickle_long(t.elem_count() as i64));
        p.extend_from_slice(b"tQ");
        p.extend(pickle_long(0));
        p.push(b'(');
        for d in &dims {
            p.extend(pickle_long(*d));
        }
        p.extend_from_slice(b"t(");
        for s in &strides {
            p.extend(pickle_long(*s));
        }
        p.extend_from_slice(b"t\x89ccollections\nOrderedDict\n)RtR");
        let values: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        storages.push(values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
    }
    p.extend_from_slice(b"u.");
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    w.start_file("ckpt/data.pkl", opts).unwrap();
    w.write_all(&p).unwrap();
    for (i, s) in storages.iter().enumerate() {
        w.start_file(format!("ckpt/data/{i}"), opts).unwrap();
        w.write_all(s).unwrap();
    }
    w.start_file("ckpt/byteorder", opts).unwrap();
    w.write_all(b"little").unwrap();
    std::fs::write(path, w.finish().unwrap().into_inner()).unwrap();
}
