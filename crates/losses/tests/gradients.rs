//! Gradients: finite-difference checks in f64, closed forms, and stability at |z| = 1e4.

mod common;

use candle_core::{DType, Tensor, Var};
use common::*;
use digitlab_losses::*;

fn grad_of(x: &Tensor, f: impl Fn(&Tensor) -> Tensor) -> (Tensor, Tensor) {
    let var = Var::from_tensor(x).unwrap();
    let loss = f(var.as_tensor());
    let grads = loss.backward().unwrap();
    let g = grads.get(var.as_tensor()).expect("no gradient").clone();
    (loss, g)
}

fn all_finite(t: &Tensor) -> bool {
    values(t).iter().all(|v| v.is_finite())
}

// ---------------------------------------------------------------- stability

#[test]
fn huge_logits_give_finite_losses_and_gradients() {
    for dtype in [DType::F32, DType::F64] {
        // bce_with_logits at z = ±1e4 for both targets.
        let z = t64(&[1e4, -1e4, 1e4, -1e4], &[4]).to_dtype(dtype).unwrap();
        let y = t64(&[0.0, 0.0, 1.0, 1.0], &[4]).to_dtype(dtype).unwrap();
        let (loss, g) = grad_of(&z, |z| bce_with_logits(z, &y, Reduction::Sum).unwrap());
        assert!(all_finite(&loss) && all_finite(&g), "{dtype:?}");
        let per = values(&bce_with_logits(&z, &y, Reduction::None).unwrap());
        assert_all_close(&per, &[1e4, 0.0, 0.0, 1e4], 1e-3, "bce_with_logits values");
        // σ(z) - y = 1, 0, 0, -1
        assert_all_close(&values(&g), &[1.0, 0.0, 0.0, -1.0], 1e-6, "bce_with_logits grad");

        // softmax cross-entropy with logits of magnitude 1e4, both signs.
        let logits = t64(&[1e4, -1e4, 0.0, -1e4, -1e4, 1e4, 1e4, 1e4, -1e4], &[3, 3])
            .to_dtype(dtype)
            .unwrap();
        let labels = labels_u32(&[1, 2, 0]);
        let (loss, g) = grad_of(&logits, |z| softmax_cross_entropy(z, &labels, Reduction::Mean).unwrap());
        assert!(
            all_finite(&loss) && all_finite(&g),
            "{dtype:?} CE: loss {loss} grad {g}"
        );
        let per = values(&softmax_cross_entropy(&logits, &labels, Reduction::None).unwrap());
        assert_all_close(&per, &[2e4, 0.0, 2f64.ln()], 1e-3, "CE values");
        let expected_g: Vec<f64> = [1.0, -1.0, 0.0, 0.0, 0.0, 0.0, -0.5, 0.5, 0.0]
            .iter()
            .map(|v| v / 3.0)
            .collect();
        assert_all_close(&values(&g), &expected_g, 1e-6, "CE grad");

        // log_softmax: gradient of a weighted sum of all outputs.
        let w = t64(&[0.3, -1.2, 0.5, 2.0, 0.1, -0.7, 1.0, 1.0, 1.0], &[3, 3])
            .to_dtype(dtype)
            .unwrap();
        let (ls, g) = grad_of(&logits, |z| {
            (log_softmax(z, 1).unwrap() * &w).unwrap().sum_all().unwrap()
        });
        assert!(all_finite(&ls) && all_finite(&g), "{dtype:?} log_softmax");
        assert!(all_finite(&log_softmax(&logits, 1).unwrap()));
        // d/dz Σ w·log_softmax(z) = w - softmax(z)·Σw (row-wise).
        let sm = softmax_rows(&values(&logits), 3);
        let wv = values(&w);
        let expected: Vec<f64> = (0..9)
            .map(|i| wv[i] - sm[i] * wv[i / 3 * 3..i / 3 * 3 + 3].iter().sum::<f64>())
            .collect();
        assert_all_close(&values(&g), &expected, 1e-5, "log_softmax grad");

        // Soft targets and nll(log_softmax) too.
        let soft = t64(&[0.0, 1.0, 0.0, 0.2, 0.0, 0.8, 0.5, 0.5, 0.0], &[3, 3])
            .to_dtype(dtype)
            .unwrap();
        let (loss, g) = grad_of(&logits, |z| {
            softmax_cross_entropy_soft(z, &soft, Reduction::Mean).unwrap()
        });
        assert!(all_finite(&loss) && all_finite(&g), "{dtype:?} soft CE");
        let (loss, g) = grad_of(&logits, |z| {
            nll(&log_softmax(z, 1).unwrap(), &labels, Reduction::Mean).unwrap()
        });
        assert!(all_finite(&loss) && all_finite(&g), "{dtype:?} nll∘log_softmax");
    }
}

#[test]
fn saturated_probabilities_and_zero_masses_have_finite_gradients() {
    for dtype in [DType::F32, DType::F64] {
        let p = t64(&[0.0, 1.0, 0.0, 1.0, 0.5], &[5]).to_dtype(dtype).unwrap();
        let y = t64(&[1.0, 0.0, 0.0, 1.0, 1.0], &[5]).to_dtype(dtype).unwrap();
        let (loss, g) = grad_of(&p, |p| bce(p, &y, Reduction::Mean).unwrap());
        assert!(all_finite(&loss) && all_finite(&g), "{dtype:?} bce: {g}");
        let (loss, g) = grad_of(&t64(&[0.0, 1.0, 0.5], &[3]).to_dtype(dtype).unwrap(), |p| {
            bce_strict(p, &t64(&[0.0, 1.0, 1.0], &[3]).to_dtype(dtype).unwrap(), Reduction::Sum).unwrap()
        });
        assert!(all_finite(&loss) && all_finite(&g), "{dtype:?} bce_strict: {g}");
        // d/dp = -y/p + (1-y)/(1-p), with the term of weight 0 skipped exactly.
        assert_all_close(&values(&g), &[1.0, -1.0, -2.0], 1e-6, "bce_strict grad");

        // KL / entropy / CE with zeros in p (and -inf in log q where p = 0).
        let pd = t64(&[0.5, 0.5, 0.0], &[3]).to_dtype(dtype).unwrap();
        let qd = t64(&[0.25, 0.75, 0.0], &[3]).to_dtype(dtype).unwrap();
        let (l, g) = grad_of(&qd.log().unwrap(), |lq| kl_div(&pd, lq, Reduction::Sum).unwrap());
        assert!(all_finite(&l) && all_finite(&g), "kl wrt log q: {g}");
        assert_all_close(&values(&g), &[-0.5, -0.5, 0.0], 1e-7, "dKL/dlog q = -p");
        let (l, g) = grad_of(&pd, |p| kl_div(p, &qd.log().unwrap(), Reduction::Sum).unwrap());
        assert!(all_finite(&l) && all_finite(&g), "kl wrt p: {g}");
        let (l, g) = grad_of(&pd, |p| entropy(p).unwrap());
        assert!(all_finite(&l) && all_finite(&g), "entropy: {g}");
        let (l, g) = grad_of(&qd, |q| cross_entropy_probs(&pd, q).unwrap());
        assert!(all_finite(&l) && all_finite(&g), "cross_entropy_probs wrt q: {g}");
        assert_all_close(&values(&g), &[-2.0, -2.0 / 3.0, 0.0], 1e-6, "dH/dq = -p/q");
    }
}

// ---------------------------------------------------------------- closed forms

#[test]
fn softmax_ce_gradient_is_softmax_minus_one_hot() {
    let mut rng = Rng::new(21);
    let (b, c) = (7, 5);
    let z = rng.vec(b * c, -4.0, 4.0);
    let labels = rng.labels(b, c);
    let expected: Vec<f64> = softmax_rows(&z, c)
        .iter()
        .zip(one_hot_rows(&labels, c))
        .map(|(s, o)| s - o)
        .collect();
    for (red, scale) in [(Reduction::Sum, 1.0), (Reduction::Mean, 1.0 / b as f64)] {
        for lab in [labels_u32(&labels), labels_i64(&labels)] {
            let (_, g) = autograd(&z, &[b, c], |t| softmax_cross_entropy(t, &lab, red).unwrap());
            let exp_scaled: Vec<f64> = expected.iter().map(|v| v * scale).collect();
            assert_all_close(&g, &exp_scaled, 1e-12, "dCE/dz = softmax - onehot");
            let (_, g) = autograd(&z, &[b, c], |t| nll(&log_softmax(t, 1).unwrap(), &lab, red).unwrap());
            assert_all_close(&g, &exp_scaled, 1e-12, "d nll(log_softmax)/dz");
            let oh = t64(&one_hot_rows(&labels, c), &[b, c]);
            let (_, g) = autograd(&z, &[b, c], |t| softmax_cross_entropy_soft(t, &oh, red).unwrap());
            assert_all_close(&g, &exp_scaled, 1e-12, "d soft CE/dz");
        }
    }
    // f32 as well.
    let zt = t32(&z, &[b, c]);
    let (_, g) = grad_of(&zt, |t| {
        softmax_cross_entropy(t, &labels_u32(&labels), Reduction::Mean).unwrap()
    });
    assert_eq!(g.dtype(), DType::F32);
    let exp_scaled: Vec<f64> = expected.iter().map(|v| v / b as f64).collect();
    assert_all_close(&values(&g), &exp_scaled, 1e-6, "f32 dCE/dz");
}

#[test]
fn softmax_ce_gradient_with_tied_maxima() {
    // All logits equal: every class ties for the max; the shift must not leak gradient.
    let (_, g) = autograd(&[1.0, 1.0, 1.0, 5.0, 5.0, -2.0], &[2, 3], |t| {
        softmax_cross_entropy(t, &labels_u32(&[0, 2]), Reduction::Sum).unwrap()
    });
    let e = (-7f64).exp();
    let s = 2.0 + e;
    let expected = [1.0 / 3.0 - 1.0, 1.0 / 3.0, 1.0 / 3.0, 1.0 / s, 1.0 / s, e / s - 1.0];
    assert_all_close(&g, &expected, 1e-12, "tied maxima");
}

#[test]
fn bce_with_logits_gradient_is_sigmoid_minus_target() {
    let mut rng = Rng::new(23);
    let n = 40;
    let mut z = rng.vec(n, -10.0, 10.0);
    z[0] = 0.0; // the kink of max(z, 0) and |z|: the gradient must still be σ(0) - y
    z[1] = 0.0;
    let y: Vec<f64> = (0..n)
        .map(|i| if i % 5 == 4 { rng.uniform() } else { (i % 2) as f64 })
        .collect();
    let yt = t64(&y, &[n]);
    let expected: Vec<f64> = z.iter().zip(&y).map(|(&zi, &yi)| sigmoid(zi) - yi).collect();
    let (_, g) = autograd(&z, &[n], |t| bce_with_logits(t, &yt, Reduction::Sum).unwrap());
    assert_all_close(&g, &expected, 1e-12, "dBCE/dz = σ(z) - y");
    assert_close(g[0], 0.5, 1e-15, "z = 0, y = 0");
    assert_close(g[1], -0.5, 1e-15, "z = 0, y = 1");
    let (_, g) = autograd(&z, &[n], |t| bce_with_logits(t, &yt, Reduction::Mean).unwrap());
    let scaled: Vec<f64> = expected.iter().map(|v| v / n as f64).collect();
    assert_all_close(&g, &scaled, 1e-12, "Mean divides by N");
    // [B, 1] shape and f32.
    let (_, g) = grad_of(&t32(&z, &[n, 1]), |t| {
        bce_with_logits(t, &t32(&y, &[n, 1]), Reduction::Sum).unwrap()
    });
    assert_eq!(g.dims(), &[n, 1]);
    assert_all_close(&values(&g), &expected, 1e-6, "f32 [N,1]");
}

#[test]
fn l2_gradients_follow_the_convention() {
    let w = [0.5, -1.5, 2.0, 3.0];
    let lambda = 0.3;
    let (v, g) = autograd(&w, &[2, 2], |t| {
        l2_penalty(&[t], lambda, L2Convention::HalfOverM { m: 6 }).unwrap()
    });
    assert_close(v, lambda / 12.0 * 15.5, 1e-14, "value");
    let expected: Vec<f64> = w.iter().map(|x| lambda / 6.0 * x).collect();
    assert_all_close(&g, &expected, 1e-14, "λ/m · w");
    let (v, g) = autograd(&w, &[2, 2], |t| l2_penalty(&[t], lambda, L2Convention::Plain).unwrap());
    assert_close(v, lambda * 15.5, 1e-14, "value");
    let expected: Vec<f64> = w.iter().map(|x| 2.0 * lambda * x).collect();
    assert_all_close(&g, &expected, 1e-14, "2λ · w");
}

// ---------------------------------------------------------------- finite differences (f64)

const REDUCTIONS: [Reduction; 2] = [Reduction::Mean, Reduction::Sum];

#[test]
fn finite_differences_binary() {
    let mut rng = Rng::new(31);
    let n = 12;
    let p = rng.vec(n, 0.05, 0.95);
    let z = rng.vec(n, -6.0, 6.0);
    let y: Vec<f64> = (0..n)
        .map(|i| if i % 3 == 0 { rng.uniform() } else { (i % 2) as f64 })
        .collect();
    let yt = t64(&y, &[3, 4]);
    for red in REDUCTIONS {
        check_grad("bce", &p, &[3, 4], |t| bce(t, &yt, red).unwrap());
        check_grad("bce_strict", &p, &[3, 4], |t| bce_strict(t, &yt, red).unwrap());
        check_grad("bce_with_logits", &z, &[3, 4], |t| {
            bce_with_logits(t, &yt, red).unwrap()
        });
        // w.r.t. the (soft) targets as well.
        let pt = t64(&p, &[3, 4]);
        let zt = t64(&z, &[3, 4]);
        check_grad("bce wrt targets", &y, &[3, 4], |t| bce(&pt, t, red).unwrap());
        check_grad("bce_with_logits wrt targets", &y, &[3, 4], |t| {
            bce_with_logits(&zt, t, red).unwrap()
        });
    }
}

#[test]
fn finite_differences_regression() {
    let mut rng = Rng::new(37);
    let pred = rng.vec(10, -3.0, 3.0);
    let target = t64(&rng.vec(10, -3.0, 3.0), &[5, 2]);
    for red in REDUCTIONS {
        check_grad("mse", &pred, &[5, 2], |t| mse(t, &target, red).unwrap());
    }
}

#[test]
fn finite_differences_multiclass() {
    let mut rng = Rng::new(41);
    let (b, c) = (5, 4);
    let z = rng.vec(b * c, -4.0, 4.0);
    let labels = labels_u32(&rng.labels(b, c));
    let soft = t64(&rng.distributions(b, c, 0.3), &[b, c]);
    let w = t64(&rng.vec(b * c, -1.0, 1.0), &[b, c]);
    let lp = rng.vec(b * c, -5.0, 0.0);
    for red in REDUCTIONS {
        check_grad("softmax_cross_entropy", &z, &[b, c], |t| {
            softmax_cross_entropy(t, &labels, red).unwrap()
        });
        check_grad("softmax_cross_entropy_soft", &z, &[b, c], |t| {
            softmax_cross_entropy_soft(t, &soft, red).unwrap()
        });
        check_grad("nll", &lp, &[b, c], |t| nll(t, &labels, red).unwrap());
    }
    for dim in [0, 1] {
        check_grad("log_softmax", &z, &[b, c], |t| {
            (log_softmax(t, dim).unwrap() * &w).unwrap().sum_all().unwrap()
        });
    }
}

#[test]
fn finite_differences_divergences() {
    let mut rng = Rng::new(43);
    let (b, c) = (4, 5);
    // p strictly positive so that ±h perturbations stay in the domain of ln p.
    let p = rng.distributions(b, c, 0.0);
    let q = rng.distributions(b, c, 0.0);
    let pt = t64(&p, &[b, c]);
    let qt = t64(&q, &[b, c]);
    let log_q: Vec<f64> = q.iter().map(|v| v.ln()).collect();
    let lqt = t64(&log_q, &[b, c]);
    for red in REDUCTIONS {
        check_grad("kl_div wrt p", &p, &[b, c], |t| kl_div(t, &lqt, red).unwrap());
        check_grad("kl_div wrt log q", &log_q, &[b, c], |t| kl_div(&pt, t, red).unwrap());
    }
    check_grad("entropy", &p, &[b, c], |t| entropy(t).unwrap().sum_all().unwrap());
    check_grad("cross_entropy_probs wrt p", &p, &[b, c], |t| {
        cross_entropy_probs(t, &qt).unwrap().sum_all().unwrap()
    });
    check_grad("cross_entropy_probs wrt q", &q, &[b, c], |t| {
        cross_entropy_probs(&pt, t).unwrap().sum_all().unwrap()
    });
}

#[test]
fn finite_differences_penalty_and_kinds() {
    let mut rng = Rng::new(47);
    let w = rng.vec(6, -2.0, 2.0);
    let other = t64(&[0.5, -0.25], &[2]);
    for conv in [L2Convention::Plain, L2Convention::HalfOverM { m: 3 }] {
        check_grad("l2_penalty", &w, &[2, 3], |t| {
            l2_penalty(&[t, &other], 0.7, conv).unwrap()
        });
    }
    let (b, c) = (4, 3);
    let labels = labels_u32(&rng.labels(b, c));
    let z = rng.vec(b * c, -3.0, 3.0);
    check_grad("LossKind::Mse one-hot", &z, &[b, c], |t| {
        LossKind::Mse.compute(t, &labels, Reduction::Mean).unwrap()
    });
    check_grad("LossKind::CrossEntropy", &z, &[b, c], |t| {
        LossKind::CrossEntropy.compute(t, &labels, Reduction::Mean).unwrap()
    });
    let bin = labels_u32(&[0, 1, 1, 0]);
    let zb = rng.vec(b, -3.0, 3.0);
    check_grad("LossKind::BceWithLogits", &zb, &[b, 1], |t| {
        LossKind::BceWithLogits.compute(t, &bin, Reduction::Mean).unwrap()
    });
}
