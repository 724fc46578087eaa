//! Property tests over checkpoint loading (sidecar JSON, safetensors weights,
//! optimizer state) and config parsing — the entry points the fuzz targets in
//! `fuzz/` drive: arbitrary and mutated inputs give errors, never panics, and
//! valid inputs round-trip.
use candle_core::{DType, Device, Tensor, Var};
use digitlab_train::checkpoint::{self, Sidecar, FORMAT_VERSION};
use digitlab_train::ExperimentConfig;
use proptest::prelude::*;
use sha2::Digest;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

fn st_bytes(tensors: &[(String, Vec<f32>, Vec<usize>)]) -> Vec<u8> {
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(n, v, s)| {
            (
                n.clone(),
                Tensor::from_vec(v.clone(), s.as_slice(), &Device::Cpu).unwrap(),
            )
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.safetensors");
    candle_core::safetensors::save(&map, &p).unwrap();
    std::fs::read(&p).unwrap()
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

fn sidecar(epoch: usize, classes: usize, best: Option<usize>) -> Sidecar {
    let cfg = ExperimentConfig::from_toml_str(CONFIG, &[]).unwrap();
    let history: Vec<BTreeMap<String, f64>> = (1..=epoch)
        .map(|e| {
            BTreeMap::from([
                ("epoch".to_string(), e as f64),
                ("train_loss".to_string(), 1.0 / e as f64),
            ])
        })
        .collect();
    Sidecar {
        format_version: FORMAT_VERSION,
        created_by: "proptest".into(),
        config: serde_json::to_value(&cfg).unwrap(),
        epoch,
        optimizer_steps: 10 * epoch as u64,
        seed: 3,
        class_names: (0..classes).map(|c| c.to_string()).collect(),
        input_shape: [1, 8, 8],
        metrics: history.last().cloned().unwrap_or_default(),
        history,
        best_metric: Some(0.5),
        best_epoch: best,
        epochs_without_improvement: 0,
        model_file: format!("model-e{epoch}.safetensors"),
        model_sha256: "ab".repeat(32),
        optim_file: Some(format!("optim-e{epoch}.safetensors")),
        optim_sha256: Some("0f".repeat(32)),
    }
}

const CONFIG: &str = r#"
    name = "p"
    seed = 3
    [data]
    dataset = "digits"
    [model]
    kind = "mlp"
    hidden = [4]
    [optim]
    kind = "adam"
    lr = 0.01
    [train]
    epochs = 2
    batch_size = 16
    loss = "cross_entropy"
"#;

fn mutate(mut bytes: Vec<u8>, flips: &[(prop::sample::Index, u8)], keep: prop::sample::Index) -> Vec<u8> {
    for (i, x) in flips {
        if !bytes.is_empty() {
            let i = i.index(bytes.len());
            bytes[i] ^= x | 1;
        }
    }
    let keep = keep.index(bytes.len() + 1);
    bytes.truncate(keep);
    bytes
}

/// The variables of a 64-4-10 MLP as the trainer names them.
fn mlp_vars() -> (candle_nn::VarMap, Vec<(String, Var)>) {
    let map = candle_nn::VarMap::new();
    let mut params = Vec::new();
    let mut data = map.data().lock().unwrap();
    for (name, shape) in [
        ("layers.0.weight", vec![4, 64]),
        ("layers.0.bias", vec![4]),
        ("layers.1.weight", vec![10, 4]),
        ("layers.1.bias", vec![10]),
    ] {
        let v = Var::zeros(shape, DType::F32, &Device::Cpu).unwrap();
        data.insert(name.to_string(), v.clone());
        params.push((name.to_string(), v));
    }
    drop(data);
    (map, params)
}

fn tensor_spec() -> impl Strategy<Value = Vec<(String, Vec<f32>, Vec<usize>)>> {
    proptest::collection::vec(
        (
            "[a-z]{1,6}(\\.[a-z0-9]{1,4}){0,2}",
            proptest::collection::vec(1usize..5, 1..3),
        )
            .prop_flat_map(|(name, shape)| {
                let n: usize = shape.iter().product();
                (Just(name), proptest::collection::vec(-1e3f32..1e3, n), Just(shape))
            }),
        1..4,
    )
    .prop_map(|mut v| {
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.dedup_by(|a, b| a.0 == b.0);
        v
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let p = Path::new("any");
        let _ = checkpoint::parse_sidecar(&bytes, p);
        if let Ok(t) = checkpoint::tensors_from_bytes(&bytes, p, &Device::Cpu) {
            let (map, params) = mlp_vars();
            let _ = checkpoint::set_model_tensors(p, &t, &map);
            let _ = checkpoint::check_optim_state(p, t.into_iter().collect(), &params);
        }
        let _ = ExperimentConfig::from_toml_str(&String::from_utf8_lossy(&bytes), &[]);
    }

    #[test]
    fn safetensors_round_trip_and_mutations_never_panic(
        spec in tensor_spec(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        keep in any::<prop::sample::Index>(),
    ) {
        let bytes = st_bytes(&spec);
        let p = Path::new("w.safetensors");
        let t = checkpoint::tensors_from_verified_bytes(&bytes, &sha(&bytes), p, &Device::Cpu).unwrap();
        prop_assert_eq!(t.len(), spec.len());
        for (name, values, shape) in &spec {
            prop_assert_eq!(t[name].dims(), shape.as_slice());
            prop_assert_eq!(&t[name].flatten_all().unwrap().to_vec1::<f32>().unwrap(), values);
        }
        // The digest is checked before anything is parsed.
        let mutated = mutate(bytes.clone(), &flips, keep);
        if mutated != bytes {
            let e = checkpoint::tensors_from_verified_bytes(&mutated, &sha(&bytes), p, &Device::Cpu).unwrap_err().to_string();
            prop_assert!(e.contains("corrupt or replaced") && e.contains("w.safetensors"), "{}", e);
        }
        // With a matching digest, mutated files still only give errors.
        let _ = checkpoint::tensors_from_verified_bytes(&mutated, &sha(&mutated), p, &Device::Cpu);
    }

    #[test]
    fn sidecar_round_trip_and_mutations_never_panic(
        epoch in 1usize..6, classes in 1usize..12, best in proptest::option::of(1usize..6),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        keep in any::<prop::sample::Index>(),
    ) {
        let best = best.map(|b| b.min(epoch));
        let s = sidecar(epoch, classes, best);
        let json = serde_json::to_vec_pretty(&s).unwrap();
        let p = Path::new("last.json");
        let back = checkpoint::parse_sidecar(&json, p).unwrap();
        prop_assert_eq!(&back, &s);
        prop_assert_eq!(checkpoint::stored_config(p, &back).unwrap(), ExperimentConfig::from_toml_str(CONFIG, &[]).unwrap());
        if let Ok(m) = checkpoint::parse_sidecar(&mutate(json, &flips, keep), p) {
            prop_assert!(m.validate().is_ok());
            let _ = checkpoint::stored_config(p, &m);
        }
    }

    #[test]
    fn mutated_config_files_never_panic(
        which in 0usize..4,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 32u8..127), 1..6),
        keep in any::<prop::sample::Index>(),
    ) {
        let name = ["quickstart.toml", "mlp_mnist.toml", "logreg_3v6.toml", "svhn_cnn.toml"][which];
        let text = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs").join(name)).unwrap();
        let m = mutate(text, &flips, keep);
        if let Ok(c) = ExperimentConfig::from_toml_str(&String::from_utf8_lossy(&m), &[]) {
            prop_assert_eq!(ExperimentConfig::from_value(c.to_value()).unwrap(), c);
        }
    }

    #[test]
    fn valid_configs_round_trip(
        epochs in 1usize..500, batch in 0usize..512, lr in 1e-5f64..1.0, seed in 0u64..(i64::MAX as u64),
        hidden in proptest::collection::vec(1usize..300, 0..4), adam in any::<bool>(),
        val in 0.0f64..0.9, subset in 0.01f64..1.0, l2 in 0.0f64..1.0,
    ) {
        let hidden = hidden.iter().map(|h| h.to_string()).collect::<Vec<_>>().join(", ");
        let text = format!(
            "name = \"r\"\nseed = {seed}\n[data]\ndataset = \"digits\"\nval_fraction = {val:?}\nsubset = {subset:?}\n\
             [model]\nkind = \"mlp\"\nhidden = [{hidden}]\n[optim]\nkind = \"{}\"\nlr = {lr:?}\n\
             [train]\nepochs = {epochs}\nbatch_size = {batch}\nloss = \"cross_entropy\"\nl2 = {l2:?}\nselect_metric = \"train_loss\"\n",
            if adam { "adam" } else { "sgd" }
        );
        let c = ExperimentConfig::from_toml_str(&text, &[]).unwrap();
        prop_assert_eq!((c.train.epochs, c.train.batch_size, c.seed), (epochs, batch, seed));
        prop_assert_eq!(c.optim.lr(), lr);
        prop_assert_eq!(c.data.val_fraction, val);
        prop_assert_eq!(ExperimentConfig::from_value(c.to_value()).unwrap(), c.clone());
        let json: ExperimentConfig = serde_json::from_value(serde_json::to_value(&c).unwrap()).unwrap();
        prop_assert_eq!(json, c.clone());
        // Overrides land where they say.
        let o = ExperimentConfig::from_toml_str(&text, &[format!("train.epochs={}", epochs + 1)]).unwrap();
        prop_assert_eq!(o.train.epochs, epochs + 1);
    }
}
