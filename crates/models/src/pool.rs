//! Pooling operations that candle lacks or cannot differentiate.
//!
//! candle's `max_pool2d` has a backward pass only when kernel == stride (and that
//! backward scales the gradient by 1/kernel², see `digitlab_kernels::pool`), and
//! it has no padding. [`max_pool2d`] here takes any kernel, stride and padding
//! (padding counts as `-inf`, as in PyTorch): on the CPU it is digitlab's kernel
//! (`digitlab_kernels::max_pool2d`), elsewhere it is built from strided views
//! combined with `maximum`, so gradients flow through it on every device. [`adaptive_avg_pool2d`] matches
//! PyTorch's `AdaptiveAvgPool2d` for every input size (overlapping bins included);
//! [`global_avg_pool`] is the `[B, C, H, W] -> [B, C]` special case.
use candle_core::{DType, Result, Tensor, D};

/// Window geometry along one spatial axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub kernel: usize,
    pub stride: usize,
    /// Padding before the first element.
    pub pad_before: usize,
    /// Padding after the last element.
    pub pad_after: usize,
}

impl Window {
    /// A window with the same padding on both sides (PyTorch's `padding=p`).
    pub fn symmetric(kernel: usize, stride: usize, padding: usize) -> Self {
        Self {
            kernel,
            stride,
            pad_before: padding,
            pad_after: padding,
        }
    }

    /// TensorFlow "SAME" padding for an input of length `len`: the output has
    /// `ceil(len / stride)` elements, and the odd padding element goes after
    /// (what `efficientnet_pytorch`'s `Conv2d{Static,Dynamic}SamePadding` do).
    pub fn tf_same(kernel: usize, stride: usize, len: usize) -> Self {
        let out = len.div_ceil(stride);
        let total = ((out.max(1) - 1) * stride + kernel).saturating_sub(len);
        Self {
            kernel,
            stride,
            pad_before: total / 2,
            pad_after: total - total / 2,
        }
    }

    /// Number of outputs for an input of length `len` (floor mode, like PyTorch).
    pub fn output_len(&self, len: usize) -> Result<usize> {
        let padded = len + self.pad_before + self.pad_after;
        if self.stride == 0 || self.kernel == 0 || padded < self.kernel {
            candle_core::bail!(
                "window kernel {} stride {} does not fit an input of length {len} padded by ({}, {})",
                self.kernel,
                self.stride,
                self.pad_before,
                self.pad_after
            )
        }
        Ok((padded - self.kernel) / self.stride + 1)
    }

    /// Length the padded axis must have for the strided-view reshape trick.
    fn needed_len(&self, out: usize) -> usize {
        self.stride * (out + (self.kernel - 1) / self.stride)
    }
}

/// Pads (or, with a negative amount, crops) `dim` of `x` with a constant.
fn pad_const(x: &Tensor, dim: usize, before: usize, after: isize, value: f64) -> Result<Tensor> {
    let mut x = x.clone();
    if after < 0 {
        let len = x.dim(dim)?;
        x = x.narrow(dim, 0, len - after.unsigned_abs())?;
    }
    let after = after.max(0) as usize;
    if before == 0 && after == 0 {
        return Ok(x);
    }
    if value == 0.0 {
        return x.pad_with_zeros(dim, before, after);
    }
    let mut parts = Vec::with_capacity(3);
    let block = |n: usize| -> Result<Tensor> {
        let mut dims = x.dims().to_vec();
        dims[dim] = n;
        Tensor::full(value, dims, x.device())?.to_dtype(x.dtype())
    };
    if before > 0 {
        parts.push(block(before)?);
    }
    parts.push(x.clone());
    if after > 0 {
        parts.push(block(after)?);
    }
    Tensor::cat(&parts, dim)
}

/// Every kernel offset's strided view of `x` (`[B, C, H, W]`), padded with `value`.
///
/// Returns `(views, oh, ow)`; view `dy * kw + dx` is `[B, C, oh, 1, ow, 1]` with
/// element `(i, j)` equal to `x_padded[.., dy + sh * i, dx + sw * j]`. All views
/// share one padded copy of the input; they are built by reshaping the padded
/// input to `[B, C, H'/sh, sh, W'/sw, sw]` and narrowing, so they are cheap and
/// differentiable.
pub fn window_views(x: &Tensor, wy: Window, wx: Window, value: f64) -> Result<(Vec<Tensor>, usize, usize)> {
    let (b, c, h, w) = x.dims4()?;
    let (oh, ow) = (wy.output_len(h)?, wx.output_len(w)?);
    let (hp, wp) = (wy.needed_len(oh), wx.needed_len(ow));
    let xp = pad_const(x, 2, wy.pad_before, hp as isize - (h + wy.pad_before) as isize, value)?;
    let xp = pad_const(&xp, 3, wx.pad_before, wp as isize - (w + wx.pad_before) as isize, value)?;
    let r = xp
        .contiguous()?
        .reshape((b, c, hp / wy.stride, wy.stride, wp / wx.stride, wx.stride))?;
    let mut views = Vec::with_capacity(wy.kernel * wx.kernel);
    for dy in 0..wy.kernel {
        let rows = r.narrow(2, dy / wy.stride, oh)?.narrow(3, dy % wy.stride, 1)?;
        for dx in 0..wx.kernel {
            views.push(rows.narrow(4, dx / wx.stride, ow)?.narrow(5, dx % wx.stride, 1)?);
        }
    }
    Ok((views, oh, ow))
}

/// Max pooling `[B, C, H, W] -> [B, C, OH, OW]` with square `kernel`, `stride` and
/// symmetric `padding` (PyTorch `nn.MaxPool2d(kernel, stride, padding)`, floor
/// mode). Padding never wins the max. Differentiable for any geometry. On ties the
/// CPU kernel gives the gradient to the first maximal input, as PyTorch does; the
/// strided-view path of other devices shares it between the tied inputs.
pub fn max_pool2d(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    if padding * 2 > kernel {
        candle_core::bail!("max_pool2d padding {padding} must be at most half of kernel {kernel}")
    }
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        return digitlab_kernels::max_pool2d(x, kernel, stride, padding);
    }
    max_pool2d_views(x, kernel, stride, padding)
}

/// [`max_pool2d`] from strided views and `maximum` (any device and dtype; the
/// path for non-CPU devices, and the reference the kernel is tested against).
pub fn max_pool2d_views(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    if padding * 2 > kernel {
        candle_core::bail!("max_pool2d padding {padding} must be at most half of kernel {kernel}")
    }
    let win = Window::symmetric(kernel, stride, padding);
    let (b, c, _, _) = x.dims4()?;
    let (views, oh, ow) = window_views(x, win, win, f64::NEG_INFINITY)?;
    let mut out = views[0].clone();
    for v in &views[1..] {
        out = out.maximum(v)?;
    }
    out.reshape((b, c, oh, ow))
}

/// Global average pooling `[B, C, H, W] -> [B, C]`.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    x.flatten_from(2)?.mean(D::Minus1)
}

/// `[out, len]` averaging matrix of PyTorch's adaptive pooling along one axis:
/// bin `i` averages inputs `floor(i * len / out) .. ceil((i + 1) * len / out)`.
fn adaptive_matrix(len: usize, out: usize, dtype: DType, device: &candle_core::Device) -> Result<Tensor> {
    let mut m = vec![0f32; out * len];
    for i in 0..out {
        let start = i * len / out;
        let end = ((i + 1) * len).div_ceil(out);
        let v = 1.0 / (end - start) as f32;
        for j in start..end {
            m[i * len + j] = v;
        }
    }
    Tensor::from_vec(m, (out, len), device)?.to_dtype(dtype)
}

/// Adaptive average pooling `[B, C, H, W] -> [B, C, oh, ow]`, identical to
/// PyTorch's `AdaptiveAvgPool2d((oh, ow))` for any `H, W` (smaller inputs are
/// replicated, e.g. 1x1 -> 7x7 copies the pixel, exactly as torchvision's VGG does
/// at 32 px). Computed as two small matrix products, so it is differentiable.
pub fn adaptive_avg_pool2d(x: &Tensor, oh: usize, ow: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if (h, w) == (oh, ow) {
        return Ok(x.clone());
    }
    if oh == 1 && ow == 1 {
        return global_avg_pool(x)?.reshape((b, c, 1, 1));
    }
    let pw = adaptive_matrix(w, ow, x.dtype(), x.device())?; // [ow, w]
    let ph = adaptive_matrix(h, oh, x.dtype(), x.device())?; // [oh, h]
                                                             // Along W: [B*C*H, W] x [W, ow].
    let y = x.contiguous()?.reshape((b * c * h, w))?.matmul(&pw.t()?)?;
    // Along H: [B*C*ow, H] x [H, oh].
    let y = y
        .reshape((b, c, h, ow))?
        .transpose(2, 3)?
        .contiguous()?
        .reshape((b * c * ow, h))?;
    let y = y.matmul(&ph.t()?)?;
    y.reshape((b, c, ow, oh))?.transpose(2, 3)?.contiguous()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn input(b: usize, c: usize, h: usize, w: usize) -> Tensor {
        let n = b * c * h * w;
        let v: Vec<f32> = (0..n)
            .map(|i| ((i as f32) * 0.731).sin() * 3.0 + ((i * 7 % 11) as f32) * 0.01)
            .collect();
        Tensor::from_vec(v, (b, c, h, w), &Device::Cpu).unwrap()
    }

    /// Straightforward loops, PyTorch semantics (padding is -inf, floor mode).
    fn naive_max_pool(x: &Tensor, k: usize, s: usize, p: usize) -> Vec<f32> {
        let (b, c, h, w) = x.dims4().unwrap();
        let v = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let oh = (h + 2 * p - k) / s + 1;
        let ow = (w + 2 * p - k) / s + 1;
        let mut out = Vec::new();
        for bi in 0..b {
            for ci in 0..c {
                for i in 0..oh {
                    for j in 0..ow {
                        let mut m = f32::NEG_INFINITY;
                        for dy in 0..k {
                            for dx in 0..k {
                                let y = (i * s + dy) as isize - p as isize;
                                let x = (j * s + dx) as isize - p as isize;
                                if y >= 0 && x >= 0 && (y as usize) < h && (x as usize) < w {
                                    m = m.max(v[((bi * c + ci) * h + y as usize) * w + x as usize]);
                                }
                            }
                        }
                        out.push(m);
                    }
                }
            }
        }
        out
    }

    #[test]
    fn max_pool_matches_naive_implementation() {
        for &(h, w) in &[(8, 8), (7, 9), (112, 112), (5, 6), (3, 3), (1, 1), (2, 2)] {
            for &(k, s, p) in &[(3, 2, 1), (2, 2, 0), (3, 1, 1), (3, 3, 0), (5, 2, 2)] {
                if h + 2 * p < k || w + 2 * p < k {
                    continue;
                }
                let x = input(2, 3, h, w);
                let got = max_pool2d(&x, k, s, p).unwrap();
                let want = naive_max_pool(&x, k, s, p);
                let oh = (h + 2 * p - k) / s + 1;
                let ow = (w + 2 * p - k) / s + 1;
                assert_eq!(got.dims(), &[2, 3, oh, ow], "h{h} w{w} k{k} s{s} p{p}");
                assert_eq!(
                    got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    want,
                    "h{h} w{w} k{k} s{s} p{p}"
                );
            }
        }
    }

    #[test]
    fn kernel_and_strided_views_agree() {
        for &(h, k, s, p) in &[
            (8usize, 3usize, 2usize, 1usize),
            (7, 2, 2, 0),
            (112, 3, 2, 1),
            (5, 3, 1, 1),
        ] {
            let x = Var::from_tensor(&input(2, 3, h, h)).unwrap();
            let a = max_pool2d(x.as_tensor(), k, s, p).unwrap();
            let b = max_pool2d_views(x.as_tensor(), k, s, p).unwrap();
            assert_eq!(
                a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
            // No ties in this input, so the two gradients are identical too.
            let ga = a.sum_all().unwrap().backward().unwrap();
            let gb = b.sum_all().unwrap().backward().unwrap();
            let (ga, gb) = (ga.get(x.as_tensor()).unwrap(), gb.get(x.as_tensor()).unwrap());
            let d: f32 = (ga - gb)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            assert_eq!(d, 0.0, "h{h} k{k} s{s} p{p}");
        }
    }

    #[test]
    fn max_pool_has_gradients() {
        let x = Var::from_tensor(&input(1, 2, 6, 6)).unwrap();
        let y = max_pool2d(x.as_tensor(), 3, 2, 1).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        let gx = g.get(x.as_tensor()).unwrap();
        // Every output sends exactly one unit of gradient to its window's max.
        let total: f32 = gx.sum_all().unwrap().to_scalar().unwrap();
        assert!((total - y.elem_count() as f32).abs() < 1e-4, "{total}");
        assert!(gx
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .all(|g| *g >= 0.0));
    }

    #[test]
    fn adaptive_avg_pool_matches_definition() {
        let x = input(2, 2, 5, 3);
        let y = adaptive_avg_pool2d(&x, 3, 2).unwrap();
        assert_eq!(y.dims(), &[2, 2, 3, 2]);
        let xv = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let yv = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (h, w, oh, ow) = (5usize, 3usize, 3usize, 2usize);
        for bc in 0..4 {
            for i in 0..oh {
                for j in 0..ow {
                    let (y0, y1) = (i * h / oh, ((i + 1) * h).div_ceil(oh));
                    let (x0, x1) = (j * w / ow, ((j + 1) * w).div_ceil(ow));
                    let mut s = 0.0;
                    for yy in y0..y1 {
                        for xx in x0..x1 {
                            s += xv[bc * h * w + yy * w + xx];
                        }
                    }
                    let want = s / ((y1 - y0) * (x1 - x0)) as f32;
                    let got = yv[bc * oh * ow + i * ow + j];
                    assert!((got - want).abs() < 1e-5, "{got} vs {want}");
                }
            }
        }
        // 1x1 -> 7x7 replicates the pixel; 7x7 -> 7x7 is the identity.
        let one = input(1, 4, 1, 1);
        let rep = adaptive_avg_pool2d(&one, 7, 7).unwrap();
        let want = one.broadcast_as((1, 4, 7, 7)).unwrap();
        assert_eq!(
            rep.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            want.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        let seven = input(1, 2, 7, 7);
        assert_eq!(adaptive_avg_pool2d(&seven, 7, 7).unwrap().dims(), &[1, 2, 7, 7]);
        assert_eq!(global_avg_pool(&seven).unwrap().dims(), &[1, 2]);
    }

    #[test]
    fn tf_same_padding() {
        // 224 px, 3x3 stride 2: output 112, pad (0, 1) — efficientnet's stem.
        assert_eq!(
            Window::tf_same(3, 2, 224),
            Window {
                kernel: 3,
                stride: 2,
                pad_before: 0,
                pad_after: 1
            }
        );
        assert_eq!(
            Window::tf_same(5, 2, 112),
            Window {
                kernel: 5,
                stride: 2,
                pad_before: 1,
                pad_after: 2
            }
        );
        assert_eq!(
            Window::tf_same(5, 1, 14),
            Window {
                kernel: 5,
                stride: 1,
                pad_before: 2,
                pad_after: 2
            }
        );
        assert_eq!(Window::tf_same(3, 2, 7).output_len(7).unwrap(), 4);
    }
}
