//! Property tests: cross-entropy is finite and non-negative for arbitrary logits.

use candle_core::{DType, Device, Tensor};
use digitlab_losses::{bce_with_logits, softmax_cross_entropy, Reduction};
use proptest::prelude::*;

/// (batch, classes, logits, labels) with logits anywhere in [-1e4, 1e4].
fn ce_case() -> impl Strategy<Value = (usize, usize, Vec<f32>, Vec<u32>)> {
    (1usize..9, 1usize..12).prop_flat_map(|(b, c)| {
        (
            Just(b),
            Just(c),
            prop::collection::vec(prop_oneof![-1e4f32..1e4f32, -10f32..10f32, Just(0.0f32)], b * c),
            prop::collection::vec(0u32..c as u32, b),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn softmax_ce_is_finite_and_nonnegative((b, c, logits, labels) in ce_case()) {
        for dtype in [DType::F32, DType::F64] {
            let z = Tensor::from_vec(logits.clone(), (b, c), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
            let y = Tensor::from_vec(labels.clone(), b, &Device::Cpu).unwrap();
            let per = softmax_cross_entropy(&z, &y, Reduction::None).unwrap()
                .to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
            prop_assert_eq!(per.len(), b);
            for v in &per {
                prop_assert!(v.is_finite() && *v >= 0.0, "per-sample CE {} for {:?}", v, dtype);
            }
            for red in [Reduction::Mean, Reduction::Sum] {
                let l = softmax_cross_entropy(&z, &y, red).unwrap()
                    .to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
                prop_assert!(l.is_finite() && l >= 0.0, "{:?} CE {}", red, l);
            }
        }
    }

    #[test]
    fn bce_with_logits_is_finite_and_nonnegative(
        zs in prop::collection::vec(-1e4f32..1e4f32, 1..32),
        seed in any::<u64>(),
    ) {
        let n = zs.len();
        let ys: Vec<f32> = (0..n).map(|i| ((seed >> (i % 64)) & 1) as f32).collect();
        let z = Tensor::from_vec(zs, n, &Device::Cpu).unwrap();
        let y = Tensor::from_vec(ys, n, &Device::Cpu).unwrap();
        let per = bce_with_logits(&z, &y, Reduction::None).unwrap().to_vec1::<f32>().unwrap();
        for v in per {
            prop_assert!(v.is_finite() && v >= 0.0, "{}", v);
        }
    }
}
