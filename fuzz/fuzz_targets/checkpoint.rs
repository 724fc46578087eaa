//! Checkpoint loading: the JSON sidecar (parsing and consistency checks), the
//! safetensors weights (digest check, parsing, dtype filter), loading them into
//! a model's variables and optimizer state, and building the model a sidecar
//! describes from the weights (as `digitlab eval` does).
//!
//! Input: `u32` little-endian length of the sidecar JSON, the JSON, then the
//! safetensors bytes (see `digitlab_fuzz::split_two`).
#![no_main]
use candle_core::{DType, Device, Var};
use candle_nn::VarMap;
use digitlab_fuzz::{split_two, AllocCap};
use digitlab_train::checkpoint;
use libfuzzer_sys::fuzz_target;
use sha2::Digest;
use std::collections::BTreeMap;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let _cap = AllocCap::for_input(data.len());
    let (json, weights) = split_two(data);
    let (sp, wp) = (Path::new("fuzz/last.json"), Path::new("fuzz/model-e1.safetensors"));
    let dev = Device::Cpu;
    let sidecar = checkpoint::parse_sidecar(json, sp);
    if let Ok(s) = &sidecar {
        // Whatever parses must pass its own checks and name files inside its folder.
        assert!(s.validate().is_ok());
        assert!(!s.model_file.contains('/'));
        // Digest from the sidecar: almost always a mismatch, which must be an error.
        let _ = checkpoint::tensors_from_verified_bytes(weights, &s.model_sha256, wp, &dev);
    }
    let sha = hex::encode(sha2::Sha256::digest(weights));
    let Ok(tensors) = checkpoint::tensors_from_verified_bytes(weights, &sha, wp, &dev) else {
        return;
    };
    for t in tensors.values() {
        assert!(t.dtype().is_float());
    }
    // Into a small model's variables, as on resume.
    let map = small_mlp();
    let _ = checkpoint::set_model_tensors(wp, &tensors, &map.0);
    let state: BTreeMap<_, _> = tensors.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let _ = checkpoint::check_optim_state(wp, state, &map.1);
    // The model the sidecar's config describes, built from these tensors.
    if let Ok(s) = &sidecar {
        let _ = checkpoint::inference_model_from_parts(sp, s, wp, tensors, &dev);
    }
});

/// The variables of a 64-4-10 MLP as the trainer names them (the seed's model),
/// and the same list as optimizer parameters.
fn small_mlp() -> (VarMap, Vec<(String, Var)>) {
    let map = VarMap::new();
    let mut params = Vec::new();
    {
        let mut data = map.data().lock().expect("fresh lock");
        let shapes = [
            ("layers.0.weight", vec![4, 64]),
            ("layers.0.bias", vec![4]),
            ("layers.1.weight", vec![10, 4]),
            ("layers.1.bias", vec![10]),
        ];
        for (name, shape) in shapes {
            let v = Var::zeros(shape, DType::F32, &Device::Cpu).expect("small zeros");
            data.insert(name.to_string(), v.clone());
            params.push((name.to_string(), v));
        }
    }
    (map, params)
}
