//! Every kernel against candle's reference composition (forward and gradients)
//! and against finite differences.
mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::*;
use digitlab_kernels::conv::conv2d_reference;
use digitlab_kernels::depthwise::{depthwise_conv2d_reference, DepthwiseParams};
use digitlab_kernels::linear::linear_reference;
use digitlab_kernels::loss::softmax_cross_entropy_reference;
use digitlab_kernels::norm::batch_norm_eval_reference;
use digitlab_kernels::{
    batch_norm_eval, batch_norm_train, conv2d, depthwise_conv2d, linear, max_pool2d, relu, softmax_cross_entropy,
    Activation, Conv2dParams,
};

const TOL: f32 = 2e-5;

/// Forward and gradients (w.r.t. every input) of the kernel and the reference.
fn compare_grads(
    inputs: &[Var],
    seed: u64,
    what: &str,
    kernel: impl Fn(&[Tensor]) -> Tensor,
    reference: impl Fn(&[Tensor]) -> Tensor,
) {
    let ts: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
    let yk = kernel(&ts);
    let yr = reference(&ts);
    let e = rel_err(&yk, &yr);
    assert!(e < TOL, "{what}: forward rel err {e}");
    let gk = weighted_sum(&yk, seed).unwrap().backward().unwrap();
    let gr = weighted_sum(&yr, seed).unwrap().backward().unwrap();
    for (i, v) in inputs.iter().enumerate() {
        let a = gk
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("{what}: kernel gave no gradient for input {i}"));
        let b = gr.get(v.as_tensor()).unwrap();
        let e = rel_err(a, b);
        assert!(e < TOL, "{what}: gradient {i} rel err {e}");
    }
}

#[test]
fn linear_matches_candle_linear() {
    for &(b, k, n) in &[
        (1usize, 784usize, 256usize),
        (32, 20, 7),
        (3, 5, 1),
        (100, 128, 10),
        (7, 1, 3),
    ] {
        for act in [Activation::Identity, Activation::Relu, Activation::Relu6] {
            let (x, w, bias) = (var(&[b, k], 1), var(&[n, k], 2), var(&[n], 3));
            let what = format!("linear {b}x{k}->{n} {act:?}");
            compare_grads(
                &[x.clone(), w.clone(), bias.clone()],
                4,
                &what,
                |t| linear(&t[0], &t[1], Some(&t[2]), act).unwrap(),
                |t| linear_reference(&t[0], &t[1], Some(&t[2]), act).unwrap(),
            );
            compare_grads(
                &[x, w],
                5,
                &format!("{what} no bias"),
                |t| linear(&t[0], &t[1], None, act).unwrap(),
                |t| linear_reference(&t[0], &t[1], None, act).unwrap(),
            );
        }
    }
}

#[test]
fn linear_handles_strided_and_batched_inputs() {
    // A transposed (non-contiguous) input and weight.
    let x = var(&[9, 4], 1);
    let w = var(&[9, 6], 2);
    compare_grads(
        &[x, w],
        3,
        "linear strided",
        |t| linear(&t[0].t().unwrap(), &t[1].t().unwrap(), None, Activation::Identity).unwrap(),
        |t| linear_reference(&t[0].t().unwrap(), &t[1].t().unwrap(), None, Activation::Identity).unwrap(),
    );
    // Rank-3 input, folded into the batch.
    let x = var(&[2, 3, 5], 4);
    let (w, b) = (var(&[4, 5], 5), var(&[4], 6));
    compare_grads(
        &[x, w, b],
        7,
        "linear rank 3",
        |t| linear(&t[0], &t[1], Some(&t[2]), Activation::Relu).unwrap(),
        |t| linear_reference(&t[0], &t[1], Some(&t[2]), Activation::Relu).unwrap(),
    );
}

#[test]
fn linear_skips_gradients_nobody_needs() {
    let x = tensor(&[4, 6], 1);
    let w = var(&[3, 6], 2);
    let b = tensor(&[3], 3);
    let y = linear(&x, w.as_tensor(), Some(&b), Activation::Relu).unwrap();
    let g = y.sum_all().unwrap().backward().unwrap();
    assert!(g.get(w.as_tensor()).is_some());
    assert!(g.get(&x).is_none(), "data input got a gradient");
    assert!(g.get(&b).is_none(), "constant bias got a gradient");
}

#[test]
fn linear_gradients_match_finite_differences() {
    let (x, w, b) = (tensor(&[3, 5], 1), tensor(&[4, 5], 2), tensor(&[4], 3));
    let loss = |x: &Tensor, w: &Tensor, b: &Tensor| -> f64 {
        let y = linear(x, w, Some(b), Activation::Relu).unwrap();
        f64::from(weighted_sum(&y, 9).unwrap().to_scalar::<f32>().unwrap())
    };
    let (xv, wv, bv) = (
        Var::from_tensor(&x).unwrap(),
        Var::from_tensor(&w).unwrap(),
        Var::from_tensor(&b).unwrap(),
    );
    let y = linear(xv.as_tensor(), wv.as_tensor(), Some(bv.as_tensor()), Activation::Relu).unwrap();
    // No pre-activation may sit on the ReLU kink for finite differences to be valid.
    let pre = linear(&x, &w, Some(&b), Activation::Identity).unwrap();
    assert!(
        to_f64(&pre).iter().all(|v| v.abs() > 0.02),
        "test data too close to the kink"
    );
    let g = weighted_sum(&y, 9).unwrap().backward().unwrap();
    let eps = 1e-3;
    assert_close(
        &to_f64(g.get(xv.as_tensor()).unwrap()),
        &finite_difference(&x, eps, |t| loss(t, &w, &b)),
        1e-3,
        "dx",
    );
    assert_close(
        &to_f64(g.get(wv.as_tensor()).unwrap()),
        &finite_difference(&w, eps, |t| loss(&x, t, &b)),
        1e-3,
        "dw",
    );
    assert_close(
        &to_f64(g.get(bv.as_tensor()).unwrap()),
        &finite_difference(&b, eps, |t| loss(&x, &w, t)),
        1e-3,
        "db",
    );
}

#[test]
fn linear_rejects_bad_shapes_and_falls_back_for_f64() {
    let x = tensor(&[2, 3], 1);
    assert!(linear(&x, &tensor(&[4, 5], 2), None, Activation::Identity).is_err());
    assert!(linear(&x, &tensor(&[4, 3], 2), Some(&tensor(&[5], 3)), Activation::Identity).is_err());
    let (x64, w64) = (
        x.to_dtype(DType::F64).unwrap(),
        tensor(&[4, 3], 2).to_dtype(DType::F64).unwrap(),
    );
    let y = linear(&x64, &w64, None, Activation::Relu).unwrap();
    assert_eq!(y.dtype(), DType::F64);
    assert!(rel_err(&y, &linear_reference(&x64, &w64, None, Activation::Relu).unwrap()) < 1e-12);
}

#[test]
fn relu_matches_candle_relu() {
    let x = var(&[5, 70_000], 1); // big enough to be split over threads
    compare_grads(&[x], 2, "relu", |t| relu(&t[0]).unwrap(), |t| t[0].relu().unwrap());
    let x = var(&[3, 4], 3);
    compare_grads(
        &[x],
        4,
        "relu strided",
        |t| relu(&t[0].t().unwrap()).unwrap(),
        |t| t[0].t().unwrap().relu().unwrap(),
    );
}

#[test]
fn cross_entropy_matches_log_softmax_composition() {
    for dtype in [DType::F32, DType::F64] {
        for &(b, c) in &[(1usize, 10usize), (64, 10), (5, 1), (3, 1000)] {
            let logits = Var::from_tensor(&(tensor(&[b, c], 1) * 8.0).unwrap().to_dtype(dtype).unwrap()).unwrap();
            let labels = Tensor::from_vec(
                (0..b as u32).map(|i| (i * 7) % c as u32).collect::<Vec<_>>(),
                b,
                &Device::Cpu,
            )
            .unwrap();
            let what = format!("ce {b}x{c} {dtype:?}");
            compare_grads(
                &[logits],
                2,
                &what,
                |t| softmax_cross_entropy(&t[0], &labels).unwrap(),
                |t| softmax_cross_entropy_reference(&t[0], &labels).unwrap(),
            );
        }
    }
    // i64 labels, huge logits (stable), ties.
    let logits = Tensor::new(&[[1e4f32, 1e4, -1e4], [0.0, 0.0, 0.0]], &Device::Cpu).unwrap();
    let labels = Tensor::new(&[1i64, 2], &Device::Cpu).unwrap();
    let l: Vec<f32> = softmax_cross_entropy(&logits, &labels).unwrap().to_vec1().unwrap();
    assert!(
        (l[0] - std::f32::consts::LN_2).abs() < 1e-6 && (l[1] - 3f32.ln()).abs() < 1e-6,
        "{l:?}"
    );
}

#[test]
fn cross_entropy_gradient_matches_finite_differences() {
    let z = (tensor(&[4, 6], 3) * 3.0).unwrap().to_dtype(DType::F64).unwrap();
    let labels = Tensor::new(&[0u32, 5, 2, 2], &Device::Cpu).unwrap();
    let zv = Var::from_tensor(&z).unwrap();
    let g = softmax_cross_entropy(zv.as_tensor(), &labels)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let analytic = to_f64(g.get(zv.as_tensor()).unwrap());
    let base = to_f64(&z);
    let eps = 1e-6;
    let fd: Vec<f64> = (0..base.len())
        .map(|i| {
            let f = |d: f64| {
                let mut v = base.clone();
                v[i] += d;
                let t = Tensor::from_vec(v, (4, 6), &Device::Cpu).unwrap();
                softmax_cross_entropy(&t, &labels)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
            };
            (f(eps) - f(-eps)) / (2.0 * eps)
        })
        .collect();
    assert_close(&analytic, &fd, 1e-7, "ce dlogits");
}

#[test]
fn cross_entropy_rejects_bad_labels() {
    let z = tensor(&[2, 3], 1);
    assert!(softmax_cross_entropy(&z, &Tensor::new(&[0u32, 3], &Device::Cpu).unwrap()).is_err());
    assert!(softmax_cross_entropy(&z, &Tensor::new(&[0i64, -1], &Device::Cpu).unwrap()).is_err());
    assert!(softmax_cross_entropy(&z, &Tensor::new(&[0u32], &Device::Cpu).unwrap()).is_err());
}

/// Straightforward max pooling (PyTorch semantics).
fn naive_max_pool(x: &Tensor, k: usize, s: usize, p: usize) -> Vec<f32> {
    let (b, c, h, w) = x.dims4().unwrap();
    let v: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
    let (oh, ow) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
    let mut out = Vec::new();
    for plane in 0..b * c {
        for i in 0..oh {
            for j in 0..ow {
                let mut m = f32::NEG_INFINITY;
                for dy in 0..k {
                    for dx in 0..k {
                        let (y, x) = ((i * s + dy) as isize - p as isize, (j * s + dx) as isize - p as isize);
                        if y >= 0 && x >= 0 && (y as usize) < h && (x as usize) < w {
                            m = m.max(v[plane * h * w + y as usize * w + x as usize]);
                        }
                    }
                }
                out.push(m);
            }
        }
    }
    out
}

#[test]
fn max_pool_matches_naive_and_candle() {
    for &(h, w) in &[(8usize, 8usize), (7, 9), (112, 112), (5, 6), (3, 3), (2, 2)] {
        for &(k, s, p) in &[(3usize, 2usize, 1usize), (2, 2, 0), (3, 1, 1), (3, 3, 0), (5, 2, 2)] {
            if h + 2 * p < k || w + 2 * p < k {
                continue;
            }
            let x = tensor(&[2, 3, h, w], (h * 31 + k) as u64);
            let got: Vec<f32> = max_pool2d(&x, k, s, p)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(got, naive_max_pool(&x, k, s, p), "h{h} w{w} k{k} s{s} p{p}");
        }
    }
}

/// Gradient of `sum(maxpool(x) * r)`: each output's weight goes to its window's
/// first maximum (PyTorch's rule).
fn naive_max_pool_grad(x: &Tensor, r: &[f32], k: usize, s: usize, p: usize) -> Vec<f64> {
    let (b, c, h, w) = x.dims4().unwrap();
    let v: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
    let (oh, ow) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
    let mut g = vec![0f64; v.len()];
    for plane in 0..b * c {
        for i in 0..oh {
            for j in 0..ow {
                let mut best: Option<(usize, f32)> = None;
                for dy in 0..k {
                    for dx in 0..k {
                        let (y, x) = ((i * s + dy) as isize - p as isize, (j * s + dx) as isize - p as isize);
                        if y >= 0 && x >= 0 && (y as usize) < h && (x as usize) < w {
                            let idx = plane * h * w + y as usize * w + x as usize;
                            if best.is_none_or(|(_, m)| v[idx] > m) {
                                best = Some((idx, v[idx]));
                            }
                        }
                    }
                }
                g[best.unwrap().0] += f64::from(r[plane * oh * ow + i * ow + j]);
            }
        }
    }
    g
}

#[test]
fn max_pool_gradient_sends_each_output_to_its_maximum() {
    // candle's own max_pool2d backward (kernel == stride only) scales the gradient by
    // 1/kernel^2, so it is not a usable reference; compare with the definition.
    for &(b, c, h, k, s, p) in &[
        (4usize, 3usize, 28usize, 2usize, 2usize, 0usize),
        (64, 6, 28, 2, 2, 0),
        (2, 3, 9, 3, 2, 1),
        (1, 2, 7, 3, 1, 1),
    ] {
        let x = Var::from_tensor(&tensor(&[b, c, h, h], 5)).unwrap();
        let y = max_pool2d(x.as_tensor(), k, s, p).unwrap();
        let r = values(y.elem_count(), 6);
        let rt = Tensor::from_vec(r.clone(), y.dims(), &Device::Cpu).unwrap();
        let g = (&y * &rt).unwrap().sum_all().unwrap().backward().unwrap();
        let got = to_f64(g.get(x.as_tensor()).unwrap());
        assert_close(
            &got,
            &naive_max_pool_grad(x.as_tensor(), &r, k, s, p),
            1e-6,
            &format!("max_pool b{b} h{h} k{k} s{s} p{p}"),
        );
    }
}

#[test]
fn max_pool_gradient_matches_finite_differences() {
    // Distinct values, so every window has one maximum and the function is smooth there.
    let n = 2 * 7 * 7;
    let v: Vec<f32> = (0..n).map(|i| ((i * 37) % n) as f32 * 0.1).collect();
    let x = Tensor::from_vec(v, (1, 2, 7, 7), &Device::Cpu).unwrap();
    let xv = Var::from_tensor(&x).unwrap();
    let y = max_pool2d(xv.as_tensor(), 3, 2, 1).unwrap();
    let g = weighted_sum(&y, 3).unwrap().backward().unwrap();
    let fd = finite_difference(&x, 2e-2, |t| {
        f64::from(
            weighted_sum(&max_pool2d(t, 3, 2, 1).unwrap(), 3)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
        )
    });
    assert_close(&to_f64(g.get(xv.as_tensor()).unwrap()), &fd, 1e-3, "max_pool dx");
}

#[test]
fn max_pool_rejects_bad_geometry() {
    let x = tensor(&[1, 1, 4, 4], 1);
    assert!(max_pool2d(&x, 3, 2, 2).is_err());
    assert!(max_pool2d(&x, 0, 1, 0).is_err());
    assert!(max_pool2d(&x, 5, 1, 0).is_err());
    assert!(max_pool2d(&tensor(&[4, 4], 1), 2, 2, 0).is_err());
}

#[test]
fn conv2d_matches_candle_conv2d() {
    // (batch, c, h, o, k, stride, padding): LeNet, ResNet stem / 3x3 / 1x1 downsample,
    // pointwise, small maps grouped over images, odd sizes.
    let cases: &[(usize, usize, usize, usize, usize, usize, usize)] = &[
        (4, 3, 32, 6, 5, 1, 0),
        (2, 6, 14, 16, 5, 1, 0),
        (2, 3, 40, 8, 7, 2, 3),
        (3, 8, 9, 8, 3, 1, 1),
        (3, 8, 9, 16, 1, 2, 0),
        (2, 16, 6, 8, 1, 1, 0),
        (5, 32, 2, 16, 3, 1, 1),
        (2, 4, 7, 3, 3, 2, 1),
        (1, 2, 5, 2, 5, 1, 2),
        (9, 16, 4, 24, 3, 2, 1),
    ];
    for &(b, c, h, o, k, s, p) in cases {
        let params = Conv2dParams {
            padding: p,
            stride: s,
            ..Default::default()
        };
        for act in [Activation::Identity, Activation::Relu, Activation::Relu6] {
            let what = format!("conv b{b} c{c} h{h} o{o} k{k} s{s} p{p} {act:?}");
            // Square inputs: candle's backward (the reference) mis-sizes the input gradient
            // of strided convolutions on non-square inputs; those are covered by the
            // finite-difference test.
            let (x, w, bias) = (var(&[b, c, h, h], 1), var(&[o, c, k, k], 2), var(&[o], 3));
            compare_grads(
                &[x.clone(), w.clone(), bias],
                4,
                &what,
                |t| conv2d(&t[0], &t[1], Some(&t[2]), params, act).unwrap(),
                |t| conv2d_reference(&t[0], &t[1], Some(&t[2]), params, act).unwrap(),
            );
            compare_grads(
                &[x, w],
                5,
                &format!("{what} no bias"),
                |t| conv2d(&t[0], &t[1], None, params, act).unwrap(),
                |t| conv2d_reference(&t[0], &t[1], None, params, act).unwrap(),
            );
        }
    }
}

#[test]
fn conv2d_big_batches_split_over_threads_agree() {
    let params = Conv2dParams {
        padding: 1,
        stride: 1,
        ..Default::default()
    };
    let (x, w) = (var(&[16, 16, 16, 16], 1), var(&[32, 16, 3, 3], 2));
    compare_grads(
        &[x, w],
        3,
        "conv big",
        |t| conv2d(&t[0], &t[1], None, params, Activation::Relu).unwrap(),
        |t| conv2d_reference(&t[0], &t[1], None, params, Activation::Relu).unwrap(),
    );
}

#[test]
fn conv2d_gradients_match_finite_differences() {
    // Strided (im2col + gemm) and stride 1 with few channels (the direct kernels
    // on CPUs with AVX2), both on non-square maps.
    for (stride, padding, xs, ws) in [(2, 1, [2, 2, 5, 6], [3, 2, 3, 3]), (1, 2, [2, 3, 6, 5], [5, 3, 5, 3])] {
        conv2d_gradients_match_finite_differences_for(
            Conv2dParams {
                padding,
                stride,
                ..Default::default()
            },
            &xs,
            &ws,
        );
    }
}

fn conv2d_gradients_match_finite_differences_for(params: Conv2dParams, xs: &[usize], ws: &[usize]) {
    let (x, w, b) = (tensor(xs, 1), tensor(ws, 2), tensor(&[ws[0]], 3));
    let loss = |x: &Tensor, w: &Tensor, b: &Tensor| -> f64 {
        f64::from(
            weighted_sum(&conv2d(x, w, Some(b), params, Activation::Identity).unwrap(), 4)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
        )
    };
    let (xv, wv, bv) = (
        Var::from_tensor(&x).unwrap(),
        Var::from_tensor(&w).unwrap(),
        Var::from_tensor(&b).unwrap(),
    );
    let y = conv2d(
        xv.as_tensor(),
        wv.as_tensor(),
        Some(bv.as_tensor()),
        params,
        Activation::Identity,
    )
    .unwrap();
    let g = weighted_sum(&y, 4).unwrap().backward().unwrap();
    let eps = 1e-2;
    assert_close(
        &to_f64(g.get(xv.as_tensor()).unwrap()),
        &finite_difference(&x, eps, |t| loss(t, &w, &b)),
        1e-3,
        "dx",
    );
    assert_close(
        &to_f64(g.get(wv.as_tensor()).unwrap()),
        &finite_difference(&w, eps, |t| loss(&x, t, &b)),
        1e-3,
        "dw",
    );
    assert_close(
        &to_f64(g.get(bv.as_tensor()).unwrap()),
        &finite_difference(&b, eps, |t| loss(&x, &w, t)),
        1e-3,
        "db",
    );
}

#[test]
fn conv2d_skips_the_data_gradient_and_falls_back_for_groups() {
    let x = tensor(&[2, 4, 6, 6], 1);
    let w = var(&[4, 4, 3, 3], 2);
    let y = conv2d(&x, w.as_tensor(), None, Conv2dParams::default(), Activation::Relu).unwrap();
    let g = y.sum_all().unwrap().backward().unwrap();
    assert!(g.get(w.as_tensor()).is_some() && g.get(&x).is_none());
    // Grouped convolution: candle's path, same answer as candle.
    let wg = tensor(&[4, 2, 3, 3], 3);
    let p = Conv2dParams {
        groups: 2,
        padding: 1,
        ..Default::default()
    };
    let got = conv2d(&x, &wg, None, p, Activation::Identity).unwrap();
    assert!(rel_err(&got, &x.conv2d(&wg, 1, 1, 1, 2).unwrap()) < 1e-6);
    assert!(conv2d(
        &x,
        &tensor(&[4, 3, 3, 3], 1),
        None,
        Conv2dParams::default(),
        Activation::Identity
    )
    .is_err());
    assert!(conv2d(
        &x,
        &tensor(&[4, 4, 9, 9], 1),
        None,
        Conv2dParams::default(),
        Activation::Identity
    )
    .is_err());
}

/// TensorFlow "SAME" padding (odd element after) of `len` for kernel `k`, stride `s`.
fn tf_same(len: usize, k: usize, s: usize) -> (usize, usize) {
    let total = ((len.div_ceil(s) - 1) * s + k).saturating_sub(len);
    (total / 2, total - total / 2)
}

#[test]
fn depthwise_matches_padded_grouped_conv() {
    // (b, c, h, w, k, stride, Some(symmetric padding) or None for TF "SAME").
    type Case = (usize, usize, usize, usize, usize, usize, Option<usize>);
    let cases: &[Case] = &[
        (1, 3, 7, 7, 3, 1, Some(1)),
        (2, 5, 8, 9, 3, 2, Some(1)),
        (3, 7, 9, 6, 5, 2, Some(2)),
        (1, 4, 6, 5, 5, 1, Some(2)),
        (2, 3, 8, 8, 3, 2, None),
        (1, 6, 9, 7, 3, 2, None),
        (2, 5, 7, 10, 5, 2, None),
        (1, 3, 5, 5, 5, 1, None),
        (2, 2, 1, 1, 3, 1, Some(1)),
        (1, 3, 2, 3, 5, 2, None),
        (2, 3, 1, 1, 5, 1, None),
        (1, 2, 1, 2, 5, 2, None),
        (2, 3, 2, 1, 3, 2, None),
        (2, 4, 6, 6, 3, 1, Some(0)),
        // Big enough to be split over threads.
        (4, 33, 17, 16, 3, 1, None),
        (3, 40, 18, 19, 5, 2, None),
    ];
    for (i, &(b, c, h, w, k, s, pad)) in cases.iter().enumerate() {
        let ((pt, pb), (pl, pr)) = match pad {
            Some(p) => ((p, p), (p, p)),
            None => (tf_same(h, k, s), tf_same(w, k, s)),
        };
        let p = DepthwiseParams {
            stride: s,
            pad_top: pt,
            pad_bottom: pb,
            pad_left: pl,
            pad_right: pr,
        };
        let what = format!("depthwise b{b} c{c} {h}x{w} k{k} s{s} pad {pt},{pb},{pl},{pr}");
        let inputs = [var(&[b, c, h, w], i as u64), var(&[c, 1, k, k], i as u64 + 50)];
        compare_grads(
            &inputs,
            i as u64 + 100,
            &what,
            |t| depthwise_conv2d(&t[0], &t[1], p).unwrap(),
            |t| depthwise_conv2d_reference(&t[0], &t[1], p).unwrap(),
        );
        let y = depthwise_conv2d(inputs[0].as_tensor(), inputs[1].as_tensor(), p).unwrap();
        let (oh, ow) = ((h + pt + pb - k) / s + 1, (w + pl + pr - k) / s + 1);
        assert_eq!(y.dims(), [b, c, oh, ow], "{what}");
        if pad.is_none() {
            assert_eq!((oh, ow), (h.div_ceil(s), w.div_ceil(s)), "{what}");
        }
    }
}

#[test]
fn depthwise_gradients_match_finite_differences() {
    let p = DepthwiseParams {
        stride: 2,
        pad_top: 1,
        pad_bottom: 2,
        pad_left: 2,
        pad_right: 1,
    };
    let (x, w) = (tensor(&[2, 3, 6, 7], 1), tensor(&[3, 1, 3, 3], 2));
    let loss = |x: &Tensor, w: &Tensor| -> f64 {
        f64::from(
            weighted_sum(&depthwise_conv2d(x, w, p).unwrap(), 4)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
        )
    };
    let (xv, wv) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&w).unwrap());
    let y = depthwise_conv2d(xv.as_tensor(), wv.as_tensor(), p).unwrap();
    let g = weighted_sum(&y, 4).unwrap().backward().unwrap();
    let eps = 1e-2;
    assert_close(
        &to_f64(g.get(xv.as_tensor()).unwrap()),
        &finite_difference(&x, eps, |t| loss(t, &w)),
        1e-3,
        "dx",
    );
    assert_close(
        &to_f64(g.get(wv.as_tensor()).unwrap()),
        &finite_difference(&w, eps, |t| loss(&x, t)),
        1e-3,
        "dw",
    );
}

#[test]
fn depthwise_skips_untracked_gradients_rejects_bad_shapes_and_falls_back_for_f64() {
    let p = DepthwiseParams::symmetric(1, 1);
    let x = tensor(&[2, 4, 6, 6], 1);
    let w = var(&[4, 1, 3, 3], 2);
    let g = depthwise_conv2d(&x, w.as_tensor(), p)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(g.get(w.as_tensor()).is_some() && g.get(&x).is_none());
    assert!(depthwise_conv2d(&x, &tensor(&[4, 2, 3, 3], 1), p).is_err());
    assert!(depthwise_conv2d(&x, &tensor(&[3, 1, 3, 3], 1), p).is_err());
    assert!(depthwise_conv2d(&x, &tensor(&[4, 1, 3, 2], 1), p).is_err());
    assert!(depthwise_conv2d(&x, &tensor(&[4, 1, 9, 9], 1), p).is_err());
    assert!(depthwise_conv2d(&x, w.as_tensor(), DepthwiseParams::symmetric(0, 1)).is_err());
    let (x64, w64) = (
        x.to_dtype(DType::F64).unwrap(),
        w.as_tensor().to_dtype(DType::F64).unwrap(),
    );
    let got = depthwise_conv2d(&x64, &w64, p).unwrap();
    assert_eq!(got.dtype(), DType::F64);
    let want = depthwise_conv2d(&x, w.as_tensor(), p).unwrap();
    assert!(rel_err(&got, &want) < 1e-6);
    // bf16 activations with the f32 weight: computed in f32, rounded to bf16.
    let xh = x.to_dtype(DType::BF16).unwrap();
    let got = depthwise_conv2d(&xh, w.as_tensor(), p).unwrap();
    assert_eq!(got.dtype(), DType::BF16);
    let want = depthwise_conv2d(&xh.to_dtype(DType::F32).unwrap(), w.as_tensor(), p).unwrap();
    assert!(rel_err(&got, &want) < 1e-2);
}

#[test]
fn batch_norm_eval_matches_candle_nn() {
    let x = tensor(&[3, 5, 4, 4], 1);
    let mean = tensor(&[5], 2);
    let var = (tensor(&[5], 3).abs().unwrap() + 0.5).unwrap();
    let (w, b) = (tensor(&[5], 4), tensor(&[5], 5));
    for act in [Activation::Identity, Activation::Relu, Activation::Relu6] {
        let got = batch_norm_eval(&x, &mean, &var, Some((&w, &b)), 1e-5, act).unwrap();
        let want = batch_norm_eval_reference(&x, &mean, &var, Some((&w, &b)), 1e-5, act).unwrap();
        assert!(rel_err(&got, &want) < 1e-5, "{act:?}");
    }
    // With a trainable input the reference (differentiable) path runs.
    let xv = Var::from_tensor(&x).unwrap();
    let y = batch_norm_eval(xv.as_tensor(), &mean, &var, None, 1e-5, Activation::Identity).unwrap();
    assert!(y.sum_all().unwrap().backward().unwrap().get(xv.as_tensor()).is_some());
}

#[test]
fn denormals_are_flushed_on_the_calling_thread() {
    std::thread::spawn(|| {
        let _ = relu(&tensor(&[2, 2], 1)).unwrap();
        if digitlab_kernels::denormal::enabled() {
            assert!(digitlab_kernels::denormal::is_set_on_current_thread());
        }
    })
    .join()
    .unwrap();
}

/// candle_nn's train-mode batch norm over `x` with the given statistics and affine
/// parameters, then `act`: the reference of `batch_norm_train`.
fn candle_batch_norm(
    x: &Tensor,
    stats: (&Tensor, &Tensor),
    affine: Option<(&Tensor, &Tensor)>,
    momentum: f64,
    act: Activation,
) -> (candle_nn::BatchNorm, Tensor) {
    let (m, v) = (stats.0.copy().unwrap(), stats.1.copy().unwrap());
    let bn = match affine {
        Some((w, b)) => {
            candle_nn::BatchNorm::new_with_momentum(x.dim(1).unwrap(), m, v, w.clone(), b.clone(), 1e-5, momentum)
        }
        None => candle_nn::BatchNorm::new_no_bias_with_momentum(x.dim(1).unwrap(), m, v, 1e-5, momentum),
    }
    .unwrap();
    let y = candle_nn::ModuleT::forward_t(&bn, x, true).unwrap();
    (bn, act.apply_reference(&y).unwrap())
}

#[test]
fn batch_norm_train_matches_candle_nn_forward_gradients_and_running_statistics() {
    // Rank 2 (an MLP's), 3 and 4 (a CNN's), and one big enough to split over threads.
    for dims in [vec![6usize, 5], vec![2, 3, 7], vec![3, 4, 5, 5], vec![4, 16, 64, 64]] {
        let c = dims[1];
        for act in [Activation::Identity, Activation::Relu, Activation::Relu6] {
            for affine in [true, false] {
                let what = format!("batch_norm_train {dims:?} {act:?} affine={affine}");
                let (x, w, b) = (var(&dims, 1), var(&[c], 2), var(&[c], 3));
                let mean0 = tensor(&[c], 4);
                let var0 = (tensor(&[c], 5).abs().unwrap() + 0.5).unwrap();
                let (m, v) = (mean0.copy().unwrap(), var0.copy().unwrap());
                let stats = digitlab_kernels::norm_train::RunningStats {
                    mean: &m,
                    var: &v,
                    momentum: 0.1,
                };
                let wb = affine.then(|| (w.as_tensor(), b.as_tensor()));
                let got = batch_norm_train(x.as_tensor(), stats, wb, 1e-5, act)
                    .unwrap()
                    .unwrap_or_else(|| panic!("{what}: the kernel did not apply"));
                let (bn, want) = candle_batch_norm(x.as_tensor(), (&mean0, &var0), wb, 0.1, act);
                assert!(rel_err(&got, &want) < TOL, "{what}: forward {}", rel_err(&got, &want));
                assert!(rel_err(&m, bn.running_mean()) < 1e-6, "{what}: running mean");
                assert!(rel_err(&v, bn.running_var()) < 1e-6, "{what}: running var");
                let gk = weighted_sum(&got, 6).unwrap().backward().unwrap();
                let gr = weighted_sum(&want, 6).unwrap().backward().unwrap();
                let mut params = vec![("dx", &x)];
                if affine {
                    params.extend([("dw", &w), ("db", &b)]);
                }
                for (name, p) in params {
                    let (a, r) = (gk.get(p.as_tensor()).unwrap(), gr.get(p.as_tensor()).unwrap());
                    // dx is a difference of terms of the size of dy: judge it against dy's scale.
                    let e = rel_err(a, r);
                    assert!(e < 1e-4, "{what}: {name} rel err {e}");
                }
            }
        }
    }
}

#[test]
fn batch_norm_train_gradients_match_finite_differences() {
    let dims = [4usize, 3, 2, 2];
    let (x, w, b) = (tensor(&dims, 1), tensor(&[3], 2), tensor(&[3], 3));
    let stats = || {
        (
            Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
            Tensor::ones(3, DType::F32, &Device::Cpu).unwrap(),
        )
    };
    let loss = |x: &Tensor, w: &Tensor, b: &Tensor| -> f64 {
        let x64 = x.to_dtype(DType::F64).unwrap();
        let (x64, w64, b64) = (x64, w.to_dtype(DType::F64).unwrap(), b.to_dtype(DType::F64).unwrap());
        // The same function in f64 with candle's ops (the kernel is f32 only).
        let mean = x64
            .mean_keepdim(0)
            .unwrap()
            .mean_keepdim(2)
            .unwrap()
            .mean_keepdim(3)
            .unwrap();
        let d = x64.broadcast_sub(&mean).unwrap();
        let var = d
            .sqr()
            .unwrap()
            .mean_keepdim(0)
            .unwrap()
            .mean_keepdim(2)
            .unwrap()
            .mean_keepdim(3)
            .unwrap();
        let y = d
            .broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(&w64.reshape((1, 3, 1, 1)).unwrap())
            .unwrap()
            .broadcast_add(&b64.reshape((1, 3, 1, 1)).unwrap())
            .unwrap()
            .relu()
            .unwrap();
        weighted_sum(&y, 6).unwrap().to_scalar::<f64>().unwrap()
    };
    let (xv, wv, bv) = (
        Var::from_tensor(&x).unwrap(),
        Var::from_tensor(&w).unwrap(),
        Var::from_tensor(&b).unwrap(),
    );
    let (m, v) = stats();
    let rs = digitlab_kernels::norm_train::RunningStats {
        mean: &m,
        var: &v,
        momentum: 0.1,
    };
    let y = batch_norm_train(
        xv.as_tensor(),
        rs,
        Some((wv.as_tensor(), bv.as_tensor())),
        1e-5,
        Activation::Relu,
    )
    .unwrap()
    .unwrap();
    let g = weighted_sum(&y, 6).unwrap().backward().unwrap();
    let eps = 1e-3;
    assert_close(
        &to_f64(g.get(xv.as_tensor()).unwrap()),
        &finite_difference(&x, eps, |t| loss(t, &w, &b)),
        2e-3,
        "dx",
    );
    assert_close(
        &to_f64(g.get(wv.as_tensor()).unwrap()),
        &finite_difference(&w, eps, |t| loss(&x, t, &b)),
        2e-3,
        "dw",
    );
    assert_close(
        &to_f64(g.get(bv.as_tensor()).unwrap()),
        &finite_difference(&b, eps, |t| loss(&x, &w, t)),
        2e-3,
        "db",
    );
}

#[test]
fn batch_norm_train_declines_what_it_does_not_cover_and_touches_nothing() {
    let (m, v) = (tensor(&[3], 1), tensor(&[3], 2));
    let stats = digitlab_kernels::norm_train::RunningStats {
        mean: &m,
        var: &v,
        momentum: 0.1,
    };
    let before = (to_f64(&m), to_f64(&v));
    // One value per channel (no unbiased variance), f64 input, wrong channel count, rank 1.
    for x in [
        tensor(&[1, 3], 3),
        tensor(&[4, 3], 3).to_dtype(DType::F64).unwrap(),
        tensor(&[4, 2], 3),
        tensor(&[3], 3),
    ] {
        assert!(
            batch_norm_train(&x, stats, None, 1e-5, Activation::Identity)
                .unwrap()
                .is_none(),
            "{:?}",
            x.dims()
        );
    }
    assert_eq!((to_f64(&m), to_f64(&v)), before);
    // Only what tracks a gradient gets one (a frozen affine, a data input).
    let w = var(&[3], 4);
    let b = tensor(&[3], 5);
    let y = batch_norm_train(
        &tensor(&[4, 3], 3),
        stats,
        Some((w.as_tensor(), &b)),
        1e-5,
        Activation::Identity,
    )
    .unwrap()
    .unwrap();
    let g = y.sum_all().unwrap().backward().unwrap();
    assert!(g.get(w.as_tensor()).is_some() && g.get(&b).is_none());
}

/// ReLU6 through every kernel that fuses an activation, on inputs big enough that
/// the outputs clamp at both ends (the loops above rarely reach 6).
#[test]
fn relu6_clamps_at_both_ends_in_every_fused_kernel() {
    let act = Activation::Relu6;
    let big = |shape: &[usize], seed| Var::from_tensor(&(tensor(shape, seed) * 4.0).unwrap()).unwrap();
    let clamped = |y: &Tensor, what: &str| {
        let v: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        assert!(
            v.contains(&6.0) && v.contains(&0.0) && v.iter().any(|&a| a > 0.0 && a < 6.0),
            "{what}: the outputs do not reach both clamps"
        );
    };
    let (x, w, b) = (big(&[16, 20], 1), var(&[7, 20], 2), var(&[7], 3));
    clamped(
        &linear(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()), act).unwrap(),
        "linear",
    );
    compare_grads(
        &[x, w, b],
        4,
        "linear relu6",
        |t| linear(&t[0], &t[1], Some(&t[2]), act).unwrap(),
        |t| linear_reference(&t[0], &t[1], Some(&t[2]), act).unwrap(),
    );
    // Stride 1 with few channels (the direct kernels on AVX2) and stride 2 (im2col).
    for stride in [1, 2] {
        let params = Conv2dParams {
            padding: 1,
            stride,
            ..Default::default()
        };
        let what = format!("conv2d relu6 stride {stride}");
        let (x, w, b) = (big(&[2, 3, 9, 9], 5), var(&[6, 3, 3, 3], 6), var(&[6], 7));
        clamped(
            &conv2d(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()), params, act).unwrap(),
            &what,
        );
        compare_grads(
            &[x, w, b],
            8,
            &what,
            |t| conv2d(&t[0], &t[1], Some(&t[2]), params, act).unwrap(),
            |t| conv2d_reference(&t[0], &t[1], Some(&t[2]), params, act).unwrap(),
        );
    }
    // Batch norm: weights that carry the normalised values past 6.
    let x = var(&[4, 3, 5, 5], 9);
    let w = Var::from_tensor(&Tensor::new(&[8f32, -6.0, 0.7], &Device::Cpu).unwrap()).unwrap();
    let b = var(&[3], 10);
    let mean0 = tensor(&[3], 11);
    let var0 = (tensor(&[3], 12).abs().unwrap() + 0.5).unwrap();
    let m = mean0.copy().unwrap();
    let v = var0.copy().unwrap();
    let stats = digitlab_kernels::norm_train::RunningStats {
        mean: &m,
        var: &v,
        momentum: 0.1,
    };
    let wb = Some((w.as_tensor(), b.as_tensor()));
    let got = batch_norm_train(x.as_tensor(), stats, wb, 1e-5, act).unwrap().unwrap();
    let (_, want) = candle_batch_norm(x.as_tensor(), (&mean0, &var0), wb, 0.1, act);
    clamped(&got, "batch_norm_train");
    assert!(rel_err(&got, &want) < TOL, "batch_norm_train relu6: forward");
    let gk = weighted_sum(&got, 13).unwrap().backward().unwrap();
    let gr = weighted_sum(&want, 13).unwrap().backward().unwrap();
    for (name, p) in [("dx", &x), ("dw", &w), ("db", &b)] {
        let e = rel_err(gk.get(p.as_tensor()).unwrap(), gr.get(p.as_tensor()).unwrap());
        assert!(e < 1e-4, "batch_norm_train relu6: {name} rel err {e}");
    }
    let (xe, we, be) = (x.as_tensor().detach(), w.as_tensor().detach(), b.as_tensor().detach());
    let got = batch_norm_eval(&xe, &mean0, &var0, Some((&we, &be)), 1e-5, act).unwrap();
    let want = batch_norm_eval_reference(&xe, &mean0, &var0, Some((&we, &be)), 1e-5, act).unwrap();
    clamped(&got, "batch_norm_eval");
    assert!(rel_err(&got, &want) < 1e-5, "batch_norm_eval relu6");
}
