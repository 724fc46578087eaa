//! Loss values: worked examples, information-theoretic identities, conventions, errors.

mod common;

use candle_core::{DType, Tensor};
use common::*;
use digitlab_losses::*;

// ---------------------------------------------------------------- worked examples

#[test]
#[allow(clippy::approx_constant)] // 2.3026 is the worked number from the notes, on purpose
fn worked_example_bce_y0_yhat09() {
    let expected = -(0.1f64).ln(); // 2.302585...
    assert_close(expected, 2.3026, 5e-5, "-ln 0.1");
    for dtype in [DType::F32, DType::F64] {
        let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
        let p = t64(&[0.9], &[1]).to_dtype(dtype).unwrap();
        let y = t64(&[0.0], &[1]).to_dtype(dtype).unwrap();
        for red in [Reduction::Mean, Reduction::Sum] {
            let l = bce(&p, &y, red).unwrap();
            assert_eq!(l.dtype(), dtype);
            assert_close(scalar(&l), expected, tol, "bce");
            assert_close(scalar(&bce_strict(&p, &y, red).unwrap()), expected, tol, "bce_strict");
        }
        // Same example through logits: z = ln(0.9/0.1).
        let z = t64(&[(9.0f64).ln()], &[1]).to_dtype(dtype).unwrap();
        assert_close(
            scalar(&bce_with_logits(&z, &y, Reduction::Mean).unwrap()),
            expected,
            tol,
            "bce_with_logits",
        );
    }
}

#[test]
fn worked_example_mean_over_true_class_probs() {
    let expected = -((0.1f64).ln() + (0.8f64).ln() + (0.3f64).ln()) / 3.0;
    assert_close(expected, 1.2432, 5e-5, "hand value");
    for dtype in [DType::F32, DType::F64] {
        let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
        // As binary cross-entropy with all targets 1.
        let p = t64(&[0.1, 0.8, 0.3], &[3]).to_dtype(dtype).unwrap();
        let y = t64(&[1.0, 1.0, 1.0], &[3]).to_dtype(dtype).unwrap();
        assert_close(
            scalar(&bce(&p, &y, Reduction::Mean).unwrap()),
            expected,
            tol,
            "bce mean",
        );
        // As multi-class: rows whose true-class probabilities are 0.1, 0.8, 0.3.
        let probs = [0.1, 0.6, 0.3, 0.1, 0.1, 0.8, 0.3, 0.5, 0.2];
        let labels = labels_u32(&[0, 2, 0]);
        let log_probs = t64(&probs, &[3, 3]).to_dtype(dtype).unwrap().log().unwrap();
        assert_close(
            scalar(&nll(&log_probs, &labels, Reduction::Mean).unwrap()),
            expected,
            tol,
            "nll",
        );
        // log-probabilities are valid logits: softmax(ln p) = p.
        let ce = softmax_cross_entropy(&log_probs, &labels, Reduction::Mean).unwrap();
        assert_close(scalar(&ce), expected, tol, "softmax_cross_entropy");
        let none = softmax_cross_entropy(&log_probs, &labels, Reduction::None).unwrap();
        assert_eq!(none.dims(), &[3]);
        assert_all_close(
            &values(&none),
            &[-(0.1f64).ln(), -(0.8f64).ln(), -(0.3f64).ln()],
            tol,
            "per-sample CE",
        );
        let sum = softmax_cross_entropy(&log_probs, &labels, Reduction::Sum).unwrap();
        assert_close(scalar(&sum), 3.0 * expected, 3.0 * tol, "sum CE");
    }
}

#[test]
fn mse_hand_computed() {
    let pred = t64(&[1.0, 2.0, 3.0, 4.0], &[2, 2]);
    let target = t64(&[0.0, 2.0, 5.0, 4.0], &[2, 2]);
    // squared errors 1, 0, 4, 0
    assert_close(
        scalar(&mse(&pred, &target, Reduction::Mean).unwrap()),
        1.25,
        1e-15,
        "mean over all elements",
    );
    assert_close(scalar(&mse(&pred, &target, Reduction::Sum).unwrap()), 5.0, 1e-15, "sum");
    let none = mse(&pred, &target, Reduction::None).unwrap();
    assert_eq!(none.dims(), &[2, 2]);
    assert_all_close(&values(&none), &[1.0, 0.0, 4.0, 0.0], 0.0, "none");
    let f32_mean = mse(
        &pred.to_dtype(DType::F32).unwrap(),
        &target.to_dtype(DType::F32).unwrap(),
        Reduction::Mean,
    )
    .unwrap();
    assert_eq!(f32_mean.dtype(), DType::F32);
    assert_close(scalar(&f32_mean), 1.25, 1e-7, "f32");
}

#[test]
fn bce_clamps_saturated_probabilities() {
    for dtype in [DType::F32, DType::F64] {
        let p = t64(&[0.0, 1.0, 0.0, 1.0], &[4]).to_dtype(dtype).unwrap();
        let y = t64(&[1.0, 0.0, 0.0, 1.0], &[4]).to_dtype(dtype).unwrap();
        let v = values(&bce(&p, &y, Reduction::None).unwrap());
        assert!(v.iter().all(|x| x.is_finite()), "{dtype:?}: {v:?}");
        // Wrong and certain: capped at about -ln(BCE_EPS) = 16.12.
        let cap = -(BCE_EPS).ln();
        assert_close(v[0], cap, 1e-3, "p=0,y=1");
        // In f32, 1 - 1e-7 rounds to 1 - 2^-23, so the cap is -ln(1.19e-7) = 15.94.
        let cap1 = if dtype == DType::F32 {
            -(2f64.powi(-23)).ln()
        } else {
            cap
        };
        assert_close(v[1], cap1, 1e-3, "p=1,y=0");
        // Right and certain: about 0.
        assert!(v[2] < 1e-6 && v[3] < 1e-6, "{v:?}");
    }
}

#[test]
fn bce_strict_handles_zero_weight_terms_and_reports_log_of_zero() {
    // 0·ln 0 = 0: a certain, correct prediction is fine.
    let p = t64(&[0.0, 1.0, 0.5], &[3]);
    let y = t64(&[0.0, 1.0, 1.0], &[3]);
    let v = values(&bce_strict(&p, &y, Reduction::None).unwrap());
    assert_all_close(&v, &[0.0, 0.0, (2f64).ln()], 1e-15, "strict values");

    // Certain and wrong: an error, not inf.
    let err = bce_strict(&t64(&[0.0, 0.5], &[2]), &t64(&[1.0, 1.0], &[2]), Reduction::Mean).unwrap_err();
    assert!(matches!(err, LossError::LogOfZero { count: 1, .. }), "{err}");
    // Soft target needs both logs.
    let err = bce_strict(&t64(&[1.0], &[1]), &t64(&[0.9], &[1]), Reduction::Mean).unwrap_err();
    assert!(matches!(err, LossError::LogOfZero { count: 1, .. }), "{err}");

    // The swapped formula: labels passed as probabilities.
    let probs = t32(&[0.9, 0.2, 0.7], &[3]);
    let labels = t32(&[0.0, 1.0, 1.0], &[3]);
    assert!(bce_strict(&probs, &labels, Reduction::Mean).is_ok());
    let err = bce_strict(&labels, &probs, Reduction::Mean).unwrap_err();
    assert!(matches!(err, LossError::LogOfZero { count: 3, .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.starts_with("bce_strict: 3 probabilities are exactly 0 or 1"),
        "{msg}"
    );
    assert!(msg.contains("swapped"), "{msg}");
    // ... which the clamped version hides behind a finite number.
    let hidden = scalar(&bce(&labels, &probs, Reduction::Mean).unwrap());
    assert!(hidden.is_finite() && hidden > 5.0, "{hidden}");

    // Out-of-range probabilities.
    let err = bce_strict(&t64(&[1.5], &[1]), &t64(&[1.0], &[1]), Reduction::Mean).unwrap_err();
    assert!(matches!(err, LossError::InvalidArgument { .. }), "{err}");
}

// ---------------------------------------------------------------- identities

#[test]
fn cross_entropy_is_entropy_plus_kl() {
    let mut rng = Rng::new(7);
    for (rows, cols, zero_prob) in [(1, 2, 0.0), (5, 4, 0.0), (8, 10, 0.3), (3, 7, 0.6)] {
        let p = rng.distributions(rows, cols, zero_prob);
        let q = rng.distributions(rows, cols, 0.0);
        let pt = t64(&p, &[rows, cols]);
        let qt = t64(&q, &[rows, cols]);
        let h_pq = values(&cross_entropy_probs(&pt, &qt).unwrap());
        let h_p = values(&entropy(&pt).unwrap());
        let kl = values(&kl_div(&pt, &qt.log().unwrap(), Reduction::None).unwrap());
        assert_eq!(h_pq.len(), rows);
        for r in 0..rows {
            // Independent reference computed on the host.
            let (prow, qrow) = (&p[r * cols..(r + 1) * cols], &q[r * cols..(r + 1) * cols]);
            let ref_h_pq: f64 = prow
                .iter()
                .zip(qrow)
                .filter(|(a, _)| **a > 0.0)
                .map(|(a, b)| -a * b.ln())
                .sum();
            let ref_h_p: f64 = prow.iter().filter(|a| **a > 0.0).map(|a| -a * a.ln()).sum();
            assert_close(h_pq[r], ref_h_pq, 1e-12, "H(p,q) vs reference");
            assert_close(h_p[r], ref_h_p, 1e-12, "H(p) vs reference");
            assert_close(h_pq[r], h_p[r] + kl[r], 1e-12, "H(p,q) = H(p) + KL(p||q)");
            assert!(h_pq[r] >= 0.0, "CE >= 0");
            assert!(kl[r] >= -1e-15, "KL >= 0, got {}", kl[r]);
            assert!(h_pq[r] >= h_p[r] - 1e-12, "Gibbs' inequality");
        }
        // Reductions of kl_div: Mean is over distributions (batchmean).
        let kl_sum: f64 = kl.iter().sum();
        assert_close(
            scalar(&kl_div(&pt, &qt.log().unwrap(), Reduction::Sum).unwrap()),
            kl_sum,
            1e-12,
            "KL sum",
        );
        assert_close(
            scalar(&kl_div(&pt, &qt.log().unwrap(), Reduction::Mean).unwrap()),
            kl_sum / rows as f64,
            1e-12,
            "KL batchmean",
        );
    }
}

#[test]
fn kl_of_distribution_with_itself_is_zero() {
    let mut rng = Rng::new(11);
    for dtype in [DType::F32, DType::F64] {
        let p = t64(&rng.distributions(6, 5, 0.3), &[6, 5]).to_dtype(dtype).unwrap();
        // ln 0 = -inf in log_q where p = 0: masked by the 0·ln 0 convention.
        let kl = values(&kl_div(&p, &p.log().unwrap(), Reduction::None).unwrap());
        for v in kl {
            assert!(v.is_finite() && v.abs() < 1e-6, "{dtype:?}: KL(p||p) = {v}");
        }
    }
}

#[test]
fn zero_log_zero_convention() {
    // p has zeros exactly where q has zeros: everything finite.
    let p = t64(&[0.5, 0.5, 0.0], &[3]);
    let q = t64(&[0.25, 0.75, 0.0], &[3]);
    let h = scalar(&entropy(&p).unwrap());
    assert_close(h, (2f64).ln(), 1e-15, "entropy with a zero");
    let ce = scalar(&cross_entropy_probs(&p, &q).unwrap());
    assert_close(
        ce,
        -0.5 * (0.25f64).ln() - 0.5 * (0.75f64).ln(),
        1e-15,
        "CE with 0·ln 0",
    );
    let kl = scalar(&kl_div(&p, &q.log().unwrap(), Reduction::Mean).unwrap());
    assert_close(kl, ce - h, 1e-15, "KL with 0·ln 0");
    // One-hot has zero entropy, uniform has ln C.
    assert_close(
        scalar(&entropy(&t64(&[0.0, 1.0, 0.0, 0.0], &[4])).unwrap()),
        0.0,
        0.0,
        "one-hot",
    );
    assert_close(
        scalar(&entropy(&t64(&[0.25; 4], &[4])).unwrap()),
        (4f64).ln(),
        1e-15,
        "uniform",
    );
    // q = 0 where p > 0: the divergence is genuinely infinite.
    let kl_inf = scalar(&kl_div(&q, &p.log().unwrap(), Reduction::Sum).unwrap());
    assert!(
        kl_inf.is_finite(),
        "q has a zero where p = 0 only, so KL(q||p) is finite: {kl_inf}"
    );
    let ce_inf = scalar(&cross_entropy_probs(&t64(&[0.5, 0.5], &[2]), &t64(&[1.0, 0.0], &[2])).unwrap());
    assert!(ce_inf == f64::INFINITY, "{ce_inf}");
}

#[test]
fn bce_with_logits_matches_bce_of_sigmoid() {
    let mut rng = Rng::new(3);
    let z = rng.vec(64, -8.0, 8.0);
    let y: Vec<f64> = (0..64)
        .map(|i| if i % 3 == 0 { rng.uniform() } else { (i % 2) as f64 })
        .collect();
    let p: Vec<f64> = z.iter().map(|&v| sigmoid(v)).collect();
    for (dtype, tol) in [(DType::F64, 1e-9), (DType::F32, 1e-4)] {
        let zt = t64(&z, &[8, 8]).to_dtype(dtype).unwrap();
        let yt = t64(&y, &[8, 8]).to_dtype(dtype).unwrap();
        let pt = t64(&p, &[8, 8]).to_dtype(dtype).unwrap();
        let a = values(&bce_with_logits(&zt, &yt, Reduction::None).unwrap());
        let b = values(&bce(&pt, &yt, Reduction::None).unwrap());
        assert_all_close(&a, &b, tol, "bce_with_logits vs bce(sigmoid)");
        let am = scalar(&bce_with_logits(&zt, &yt, Reduction::Mean).unwrap());
        let bm = scalar(&bce(&pt, &yt, Reduction::Mean).unwrap());
        assert_close(am, bm, tol, "mean");
    }
}

#[test]
fn softmax_ce_equals_nll_of_log_softmax_and_soft_with_one_hot() {
    let mut rng = Rng::new(5);
    for (batch, classes) in [(1, 1), (1, 2), (4, 3), (16, 10)] {
        let z = rng.vec(batch * classes, -6.0, 6.0);
        let labels = rng.labels(batch, classes);
        for dtype in [DType::F32, DType::F64] {
            let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
            let zt = t64(&z, &[batch, classes]).to_dtype(dtype).unwrap();
            let onehot = one_hot(&labels_u32(&labels), classes, dtype).unwrap();
            assert_all_close(&values(&onehot), &one_hot_rows(&labels, classes), 0.0, "one_hot");
            for lab in [labels_u32(&labels), labels_i64(&labels)] {
                for red in [Reduction::None, Reduction::Mean, Reduction::Sum] {
                    let ce = values(&softmax_cross_entropy(&zt, &lab, red).unwrap());
                    let via_nll = values(&nll(&log_softmax(&zt, 1).unwrap(), &lab, red).unwrap());
                    let soft = values(&softmax_cross_entropy_soft(&zt, &onehot, red).unwrap());
                    assert_all_close(&ce, &via_nll, tol, "CE vs nll(log_softmax)");
                    assert_all_close(&ce, &soft, tol, "CE vs soft CE with one-hot");
                }
            }
            // Against a host reference.
            let sm = softmax_rows(&z, classes);
            let reference: Vec<f64> = labels
                .iter()
                .enumerate()
                .map(|(b, &l)| -sm[b * classes + l as usize].ln())
                .collect();
            let ce = values(&softmax_cross_entropy(&zt, &labels_u32(&labels), Reduction::None).unwrap());
            assert_all_close(&ce, &reference, tol, "CE vs host reference");
        }
    }
}

#[test]
fn soft_cross_entropy_matches_distribution_cross_entropy() {
    let mut rng = Rng::new(9);
    let (b, c) = (6, 5);
    let z = rng.vec(b * c, -3.0, 3.0);
    let t = rng.distributions(b, c, 0.2);
    let q = softmax_rows(&z, c);
    let soft = values(&softmax_cross_entropy_soft(&t64(&z, &[b, c]), &t64(&t, &[b, c]), Reduction::None).unwrap());
    let direct = values(&cross_entropy_probs(&t64(&t, &[b, c]), &t64(&q, &[b, c])).unwrap());
    assert_all_close(&soft, &direct, 1e-12, "soft CE = H(t, softmax(z))");
}

#[test]
fn log_softmax_normalises_along_any_dim() {
    let mut rng = Rng::new(13);
    let z = rng.vec(2 * 3 * 4, -5.0, 5.0);
    let zt = t64(&z, &[2, 3, 4]);
    for dim in 0..3 {
        let ls = log_softmax(&zt, dim).unwrap();
        assert_eq!(ls.dims(), &[2, 3, 4]);
        let sums = values(&ls.exp().unwrap().sum(dim).unwrap());
        assert_all_close(&sums, &vec![1.0; sums.len()], 1e-12, "exp(log_softmax) sums to 1");
    }
    let last = values(&log_softmax(&zt, candle_core::D::Minus1).unwrap());
    let reference: Vec<f64> = softmax_rows(&z, 4).iter().map(|p| p.ln()).collect();
    assert_all_close(&last, &reference, 1e-12, "log_softmax vs host");
}

#[test]
fn l2_conventions_hand_computed() {
    let w1 = t64(&[1.0, 2.0], &[2]);
    let w2 = t64(&[3.0], &[1, 1]);
    let ws = [&w1, &w2]; // Σ w² = 14
    assert_close(
        scalar(&l2_penalty(&ws, 0.1, L2Convention::Plain).unwrap()),
        1.4,
        1e-15,
        "plain",
    );
    assert_close(
        scalar(&l2_penalty(&ws, 0.1, L2Convention::HalfOverM { m: 7 }).unwrap()),
        0.1,
        1e-15,
        "0.1/(2·7)·14",
    );
    assert_close(
        scalar(&l2_penalty(&ws, 1.0, L2Convention::HalfOverM { m: 1 }).unwrap()),
        7.0,
        1e-15,
        "1/2·14",
    );
    assert_close(
        scalar(&l2_penalty(&ws, 0.0, L2Convention::Plain).unwrap()),
        0.0,
        0.0,
        "lambda = 0",
    );
    assert_close(
        L2Convention::HalfOverM { m: 100 }.coefficient(2.0).unwrap(),
        0.01,
        1e-18,
        "coefficient",
    );
    assert_close(L2Convention::Plain.coefficient(2.0).unwrap(), 2.0, 0.0, "coefficient");
    let w1f = w1.to_dtype(DType::F32).unwrap();
    let w2f = w2.to_dtype(DType::F32).unwrap();
    let refs = [&w1f, &w2f];
    let l = l2_penalty(&refs, 0.5, L2Convention::HalfOverM { m: 2 }).unwrap();
    assert_eq!(l.dtype(), DType::F32);
    assert_close(scalar(&l), 1.75, 1e-6, "f32 0.5/4·14");
    // Errors.
    assert!(matches!(
        l2_penalty(&ws, 0.1, L2Convention::HalfOverM { m: 0 }),
        Err(LossError::InvalidArgument { .. })
    ));
    assert!(matches!(
        l2_penalty(&ws, -0.1, L2Convention::Plain),
        Err(LossError::InvalidArgument { .. })
    ));
    assert!(matches!(
        l2_penalty(&ws, f64::NAN, L2Convention::Plain),
        Err(LossError::InvalidArgument { .. })
    ));
    assert!(matches!(
        l2_penalty(&[], 0.1, L2Convention::Plain),
        Err(LossError::InvalidArgument { .. })
    ));
    let mixed = [&w1, &w2f];
    assert!(matches!(
        l2_penalty(&mixed, 0.1, L2Convention::Plain),
        Err(LossError::DType { .. })
    ));
}

// ---------------------------------------------------------------- LossKind

#[test]
fn loss_kind_matches_direct_calls() {
    let mut rng = Rng::new(17);
    let labels01 = [0u32, 1, 1, 0, 1];
    let b = labels01.len();
    let y01: Vec<f64> = labels01.iter().map(|&l| l as f64).collect();
    let z = rng.vec(b, -3.0, 3.0);
    let p: Vec<f64> = z.iter().map(|&v| sigmoid(v)).collect();
    for red in [Reduction::Mean, Reduction::Sum] {
        for shape in [vec![b], vec![b, 1]] {
            for lab in [labels_u32(&labels01), labels_i64(&labels01)] {
                let k = LossKind::BceWithLogits.compute(&t64(&z, &shape), &lab, red).unwrap();
                let d = bce_with_logits(&t64(&z, &[b]), &t64(&y01, &[b]), red).unwrap();
                assert_close(scalar(&k), scalar(&d), 1e-14, "bce_with_logits kind");
                let k = LossKind::Bce.compute(&t64(&p, &shape), &lab, red).unwrap();
                let d = bce(&t64(&p, &[b]), &t64(&y01, &[b]), red).unwrap();
                assert_close(scalar(&k), scalar(&d), 1e-14, "bce kind");
                let k = LossKind::Mse.compute(&t64(&p, &shape), &lab, red).unwrap();
                let d = mse(&t64(&p, &[b]), &t64(&y01, &[b]), red).unwrap();
                assert_close(scalar(&k), scalar(&d), 1e-14, "mse kind, single output");
            }
        }
        // Multi-class kinds.
        let (b, c) = (6, 4);
        let labels = rng.labels(b, c);
        let logits = t64(&rng.vec(b * c, -4.0, 4.0), &[b, c]);
        let lab = labels_u32(&labels);
        let k = LossKind::CrossEntropy.compute(&logits, &lab, red).unwrap();
        assert_close(
            scalar(&k),
            scalar(&softmax_cross_entropy(&logits, &lab, red).unwrap()),
            0.0,
            "ce kind",
        );
        let lp = log_softmax(&logits, 1).unwrap();
        let k = LossKind::Nll.compute(&lp, &lab, red).unwrap();
        assert_close(scalar(&k), scalar(&nll(&lp, &lab, red).unwrap()), 0.0, "nll kind");
        let k = LossKind::Mse.compute(&logits, &lab, red).unwrap();
        let onehot = t64(&one_hot_rows(&labels, c), &[b, c]);
        assert_close(
            scalar(&k),
            scalar(&mse(&logits, &onehot, red).unwrap()),
            1e-14,
            "mse kind, one-hot",
        );
    }
}

#[test]
fn loss_kind_rejects_bad_shapes_and_labels() {
    let out = t64(&[0.3, 0.7, 0.1, 0.9], &[2, 2]);
    let err = LossKind::Bce
        .compute(&out, &labels_u32(&[0, 1]), Reduction::Mean)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "bce: output must be [batch] or [batch, 1] for a binary loss, got [2, 2]"
    );
    let err = LossKind::BceWithLogits
        .compute(&t64(&[0.3, 0.7], &[2]), &labels_u32(&[0, 2]), Reduction::Mean)
        .unwrap_err();
    assert!(
        matches!(
            err,
            LossError::LabelOutOfRange {
                label: 2,
                index: 1,
                num_classes: 2,
                ..
            }
        ),
        "{err}"
    );
    let err = LossKind::Mse
        .compute(&out, &labels_u32(&[0, 5]), Reduction::Mean)
        .unwrap_err();
    assert!(matches!(err, LossError::LabelOutOfRange { label: 5, .. }), "{err}");
    let err = LossKind::Bce
        .compute(&t64(&[0.3, 0.7], &[2]), &labels_u32(&[0, 1, 1]), Reduction::Mean)
        .unwrap_err();
    assert!(matches!(err, LossError::Shape { .. }), "{err}");
    let err = LossKind::Nll
        .compute(&t64(&[0.3, 0.7], &[2]), &labels_u32(&[0, 1]), Reduction::Mean)
        .unwrap_err();
    assert_eq!(err.to_string(), "nll: log_probs must be [batch, classes], got [2]");
}

#[test]
fn serde_names_are_snake_case() {
    for (kind, name) in [
        (LossKind::Bce, "bce"),
        (LossKind::BceWithLogits, "bce_with_logits"),
        (LossKind::Mse, "mse"),
        (LossKind::CrossEntropy, "cross_entropy"),
        (LossKind::Nll, "nll"),
    ] {
        assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{name}\""));
        assert_eq!(serde_json::from_str::<LossKind>(&format!("\"{name}\"")).unwrap(), kind);
        assert_eq!(name.parse::<LossKind>().unwrap(), kind);
        assert_eq!(kind.to_string(), name);
    }
    assert!("cross-entropy".parse::<LossKind>().is_err());
    assert!(serde_json::from_str::<LossKind>("\"CrossEntropy\"").is_err());
    assert_eq!(LossKind::ALL.len(), 5);
    assert!(LossKind::Bce.is_binary() && LossKind::BceWithLogits.is_binary() && !LossKind::Mse.is_binary());

    assert_eq!(Reduction::default(), Reduction::Mean);
    for (r, name) in [
        (Reduction::Mean, "mean"),
        (Reduction::Sum, "sum"),
        (Reduction::None, "none"),
    ] {
        assert_eq!(serde_json::to_string(&r).unwrap(), format!("\"{name}\""));
        assert_eq!(serde_json::from_str::<Reduction>(&format!("\"{name}\"")).unwrap(), r);
    }
    let c: L2Convention = serde_json::from_str(r#"{"half_over_m":{"m":60000}}"#).unwrap();
    assert_eq!(c, L2Convention::HalfOverM { m: 60000 });
    assert_eq!(
        serde_json::from_str::<L2Convention>("\"plain\"").unwrap(),
        L2Convention::Plain
    );
}

// ---------------------------------------------------------------- errors

#[test]
fn clear_error_messages() {
    let labels = labels_u32(&[0, 1, 2]);
    let err = softmax_cross_entropy(&t32(&[1.0, 2.0, 3.0], &[3]), &labels, Reduction::Mean).unwrap_err();
    assert_eq!(
        err.to_string(),
        "softmax_cross_entropy: logits must be [batch, classes], got [3]"
    );

    let logits = t32(&[0.0; 6], &[3, 2]);
    let err = softmax_cross_entropy(&logits, &labels, Reduction::Mean).unwrap_err();
    assert_eq!(
        err.to_string(),
        "softmax_cross_entropy: label 2 at position 2 is out of range for 2 classes (expected 0..2)"
    );
    let neg = Tensor::new(&[0i64, -1, 1], &DEV).unwrap();
    assert!(matches!(
        softmax_cross_entropy(&logits, &neg, Reduction::Mean),
        Err(LossError::LabelOutOfRange {
            label: -1,
            index: 1,
            ..
        })
    ));
    let err = softmax_cross_entropy(&logits, &t32(&[0.0, 1.0, 1.0], &[3]), Reduction::Mean).unwrap_err();
    assert_eq!(
        err.to_string(),
        "softmax_cross_entropy: labels must be an integer tensor of dtype u32 or i64, got f32"
    );
    let err = softmax_cross_entropy(&logits, &labels_u32(&[0, 1]), Reduction::Mean).unwrap_err();
    assert_eq!(
        err.to_string(),
        "softmax_cross_entropy: labels must be [batch] = [3] to match the batch size, got [2]"
    );
    let err = softmax_cross_entropy(&labels.reshape((3, 1)).unwrap(), &labels, Reduction::Mean).unwrap_err();
    assert_eq!(
        err.to_string(),
        "softmax_cross_entropy: logits must be a floating point tensor (f32 or f64), got u32"
    );

    let err = bce(&t32(&[0.5; 4], &[4, 1]), &t32(&[1.0; 4], &[4]), Reduction::Mean).unwrap_err();
    assert_eq!(
        err.to_string(),
        "bce: probs and targets must have the same shape, got [4, 1] and [4]"
    );
    let err = bce_with_logits(&t32(&[0.5; 4], &[4]), &labels_u32(&[0, 1, 0, 1]), Reduction::Mean).unwrap_err();
    assert_eq!(
        err.to_string(),
        "bce_with_logits: targets must be a floating point tensor, got u32"
    );
    let err = mse(&t32(&[0.5; 4], &[4]), &t32(&[0.5; 2], &[2]), Reduction::Mean).unwrap_err();
    assert_eq!(
        err.to_string(),
        "mse: pred and target must have the same shape, got [4] and [2]"
    );
    let err = softmax_cross_entropy_soft(&logits, &t32(&[0.5; 6], &[2, 3]), Reduction::Mean).unwrap_err();
    assert!(matches!(err, LossError::Shape { .. }), "{err}");
    let err = kl_div(&t32(&[0.5; 2], &[2]), &t32(&[0.5; 3], &[3]), Reduction::Mean).unwrap_err();
    assert_eq!(
        err.to_string(),
        "kl_div: p_target and log_q must have the same shape, got [2] and [3]"
    );
    assert!(matches!(
        entropy(&Tensor::new(0.5f32, &DEV).unwrap()),
        Err(LossError::Shape { .. })
    ));
    assert!(matches!(
        log_softmax(&Tensor::new(0.5f32, &DEV).unwrap(), 0),
        Err(LossError::Shape { .. })
    ));
    assert!(matches!(log_softmax(&logits, 2), Err(LossError::Candle(_))));

    // Empty inputs: an empty batch of logits is a shape error; Mean of an empty loss
    // tensor is an error rather than NaN, Sum is 0.
    let empty = Tensor::zeros((0, 3), DType::F32, &DEV).unwrap();
    let no_labels = Tensor::zeros(0, DType::U32, &DEV).unwrap();
    let err = softmax_cross_entropy(&empty, &no_labels, Reduction::Sum).unwrap_err();
    assert_eq!(
        err.to_string(),
        "softmax_cross_entropy: logits must have a non-empty batch, got [0, 3]"
    );
    assert!(matches!(log_softmax(&empty, 1), Err(LossError::Shape { .. })));
    let e = Tensor::zeros(0, DType::F32, &DEV).unwrap();
    let err = mse(&e, &e, Reduction::Mean).unwrap_err();
    assert_eq!(
        err.to_string(),
        "reduction: cannot take the mean of an empty loss tensor"
    );
    assert_close(scalar(&mse(&e, &e, Reduction::Sum).unwrap()), 0.0, 0.0, "empty sum");
}

#[test]
fn half_precision_inputs_are_upcast() {
    let z = t64(&[2.0, -1.0, 0.5, 0.0, 1.0, 3.0], &[2, 3]);
    let labels = labels_u32(&[0, 2]);
    let ref32 = scalar(&softmax_cross_entropy(&z.to_dtype(DType::F32).unwrap(), &labels, Reduction::Mean).unwrap());
    for dtype in [DType::F16, DType::BF16] {
        let l = softmax_cross_entropy(&z.to_dtype(dtype).unwrap(), &labels, Reduction::Mean).unwrap();
        assert_eq!(l.dtype(), DType::F32);
        assert_close(scalar(&l), ref32, 1e-6, "half CE (inputs exactly representable)");
        let p = t64(&[1.0, 0.0], &[2]).to_dtype(dtype).unwrap();
        let y = t64(&[0.0, 1.0], &[2]).to_dtype(dtype).unwrap();
        assert!(scalar(&bce(&p, &y, Reduction::Mean).unwrap()).is_finite());
    }
}
