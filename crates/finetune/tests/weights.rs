//! `load_weights` dispatch and `check_against` on real files.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use digitlab_finetune::weights::LoadedWeights;
use digitlab_finetune::{check_against, detect_format, load_weights, FinetuneError, WeightsFormat};

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

#[test]
fn safetensors_and_pth_load_through_one_function() {
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("w.safetensors");
    let t: HashMap<String, Tensor> = [(
        "module.conv.weight".to_string(),
        Tensor::new(&[[1.0f32, 2.0], [3.0, 4.0]], &Device::Cpu).unwrap(),
    )]
    .into_iter()
    .collect();
    candle_core::safetensors::save(&t, &st).unwrap();
    assert_eq!(detect_format(&st).unwrap(), WeightsFormat::Safetensors);
    let m = load_weights(&st).unwrap();
    assert_eq!(
        m["module.conv.weight"].to_vec2::<f32>().unwrap(),
        [[1.0, 2.0], [3.0, 4.0]]
    );

    let loaded = LoadedWeights::read(&st).unwrap();
    assert_eq!(loaded.stripped_prefixes, ["module."]);
    assert!(loaded.tensors.contains_key("conv.weight"));

    assert_eq!(detect_format(fixture("good.pth")).unwrap(), WeightsFormat::PyTorch);

    // Garbage with a weights extension.
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"definitely not weights").unwrap();
    let e = load_weights(&junk).unwrap_err();
    assert!(matches!(e, FinetuneError::UnknownFormat { .. }), "{e}");
    assert!(e.to_string().contains("junk.safetensors"));

    // Safetensors magic but a corrupt header.
    let bad = dir.path().join("bad.safetensors");
    let mut bytes = 1_000_000u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{\"a\":1}");
    std::fs::write(&bad, bytes).unwrap();
    let e = load_weights(&bad).unwrap_err();
    assert!(matches!(e, FinetuneError::Safetensors { .. }), "{e}");
}

#[test]
fn check_a_pth_against_a_model_with_a_new_head() {
    let found = load_weights(fixture("good.pth")).unwrap();
    // A "model" whose conv and batch norm match, whose head has a different number of
    // classes, and that lacks one tensor the checkpoint does not have.
    let expected: Vec<(String, Vec<usize>)> = vec![
        ("0.weight".into(), vec![2, 1, 2, 2]),
        ("0.bias".into(), vec![2]),
        ("1.weight".into(), vec![2]),
        ("1.bias".into(), vec![2]),
        ("1.running_mean".into(), vec![2]),
        ("1.running_var".into(), vec![2]),
        ("head.half".into(), vec![10]),
        ("view.base".into(), vec![3, 4]),
        ("view.transposed".into(), vec![4, 3]),
        ("view.sliced".into(), vec![2, 2]),
    ];
    let report = check_against(&expected, &found, &["head."]);
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.loaded.len(), 9);
    assert_eq!(report.ignored, ["1.num_batches_tracked"]);
    assert_eq!(report.reinitialized().collect::<Vec<_>>(), ["head.half"]);
    // head.bf16 / f64 / i32 / bool are dropped.
    assert_eq!(report.head.len(), 5);

    // Without the head prefix, everything is an error, all listed at once.
    let err = check_against(&expected, &found, &[]).into_result().unwrap_err();
    let msg = err.to_string();
    for needle in [
        "head.half: model expects [10], checkpoint has [3]",
        "head.bf16 [2, 2]",
        "head.i32 [3]",
        "1 shape mismatches",
        "4 unexpected",
    ] {
        assert!(msg.contains(needle), "`{needle}` not in:\n{msg}");
    }
}
