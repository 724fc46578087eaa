//! Depthwise 2-D convolution (one `k` x `k` filter per channel, no bias), forward
//! and backward, as direct loops over each image's channel planes.
//!
//! candle runs a grouped convolution as one convolution per group, and the
//! composition of shifted strided views the models use elsewhere has a slow
//! backward (one padded full-size gradient per kernel tap). Here the forward, the
//! input gradient and the weight gradient are each one pass over the planes,
//! split over threads by planes; nothing full-size is allocated besides the
//! results. Any stride and any (also asymmetric, TensorFlow "SAME") zero padding.
use crate::cpu::{self, all_cpu_f32, f32_data, View};
use crate::threading::{map_parts_mut, parts, LOOP_SERIAL_MAX_ELEMS};
use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

/// Stride and zero padding of [`depthwise_conv2d`] (padding may differ per side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DepthwiseParams {
    pub stride: usize,
    pub pad_top: usize,
    pub pad_bottom: usize,
    pub pad_left: usize,
    pub pad_right: usize,
}

impl DepthwiseParams {
    /// The same padding `p` on every side (PyTorch's `padding=p`).
    pub fn symmetric(stride: usize, p: usize) -> Self {
        Self {
            stride,
            pad_top: p,
            pad_bottom: p,
            pad_left: p,
            pad_right: p,
        }
    }
}

/// Depthwise convolution of `x` `[B, C, H, W]` with `w` `[C, 1, k, k]` to
/// `[B, C, OH, OW]`, `OH = (H + pad_top + pad_bottom - k) / stride + 1` (floor,
/// likewise `OW`); element `(b, c, oy, ox)` is
/// `sum_{ky,kx} w[c, 0, ky, kx] * x[b, c, oy*stride + ky - pad_top, ox*stride + kx - pad_left]`
/// with zeros outside the input.
///
/// CPU f32 tensors take the kernel (differentiable in `x` and `w`, first order);
/// half-precision CPU activations are widened to f32 for it and the result rounded
/// back; anything else runs [`depthwise_conv2d_reference`].
pub fn depthwise_conv2d(x: &Tensor, w: &Tensor, p: DepthwiseParams) -> Result<Tensor> {
    if crate::precision::is_half(x.dtype()) {
        let w = crate::precision::cast_like(w, x)?;
        if x.device().is_cpu() {
            let (x32, w32, _) = crate::precision::widen(x, &w, None)?;
            return depthwise_conv2d(&x32, &w32, p)?.to_dtype(x.dtype());
        }
        return depthwise_conv2d_reference(x, &w, p);
    }
    let (_, c, h, wd) = x.dims4()?;
    let geo = Geo::new(c, h, wd, w.dims(), p)?;
    if all_cpu_f32(&[x, w]) {
        crate::runtime::init();
        return x.apply_op2(w, DepthwiseOp { geo });
    }
    depthwise_conv2d_reference(x, w, p)
}

/// [`depthwise_conv2d`] with candle's ops: explicit zero padding, then a grouped
/// `conv2d` (any device and dtype; slow for many channels). The reference the
/// kernel is tested against.
pub fn depthwise_conv2d_reference(x: &Tensor, w: &Tensor, p: DepthwiseParams) -> Result<Tensor> {
    let (_, c, h, wd) = x.dims4()?;
    let g = Geo::new(c, h, wd, w.dims(), p)?;
    // Rows and columns no window reaches are cropped: candle's conv2d backward
    // needs the input to end with a window.
    x.pad_with_zeros(2, p.pad_top, p.pad_bottom)?
        .pad_with_zeros(3, p.pad_left, p.pad_right)?
        .narrow(2, 0, (g.oh - 1) * g.s + g.k)?
        .narrow(3, 0, (g.ow - 1) * g.s + g.k)?
        .conv2d(w, 0, p.stride, 1, c)
}

#[derive(Debug, Clone, Copy)]
struct Geo {
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    s: usize,
    pt: usize,
    pl: usize,
    oh: usize,
    ow: usize,
}

impl Geo {
    fn new(c: usize, h: usize, w: usize, wdims: &[usize], p: DepthwiseParams) -> Result<Self> {
        let k = match *wdims {
            [wc, 1, kh, kw] if wc == c && kh == kw => kh,
            _ => bail!("depthwise_conv2d: weight must be [{c}, 1, k, k] for {c} channels, got {wdims:?}"),
        };
        if k == 0 || p.stride == 0 {
            bail!(
                "depthwise_conv2d: kernel and stride must be at least 1, got {k} and {}",
                p.stride
            )
        }
        let (hp, wp) = (h + p.pad_top + p.pad_bottom, w + p.pad_left + p.pad_right);
        if hp < k || wp < k {
            bail!("depthwise_conv2d: kernel {k} does not fit a {h}x{w} input padded to {hp}x{wp}")
        }
        Ok(Self {
            c,
            h,
            w,
            k,
            s: p.stride,
            pt: p.pad_top,
            pl: p.pad_left,
            oh: (hp - k) / p.stride + 1,
            ow: (wp - k) / p.stride + 1,
        })
    }

    fn kk(&self) -> usize {
        self.k * self.k
    }

    /// Input row read by output row `oy` at kernel row `ky`, if inside the input.
    #[inline]
    fn in_row(&self, oy: usize, ky: usize) -> Option<usize> {
        (oy * self.s + ky).checked_sub(self.pt).filter(|&iy| iy < self.h)
    }

    /// For each kernel column `kx`: the outputs `lo..hi` whose input column
    /// `ox * s + kx - pl` lies inside the input, and that column for `ox = lo`.
    fn columns(&self) -> Vec<Cols> {
        (0..self.k)
            .map(|kx| {
                // ox * s + kx >= pl  and  ox * s + kx < w + pl.
                let lo = self.pl.saturating_sub(kx).div_ceil(self.s);
                let hi = if self.w + self.pl > kx {
                    (self.w + self.pl - kx).div_ceil(self.s).min(self.ow)
                } else {
                    0
                };
                let lo = lo.min(hi);
                // An empty range starts at column 0, so its (empty) slices stay in bounds.
                let first = if lo < hi { lo * self.s + kx - self.pl } else { 0 };
                Cols { lo, hi, first }
            })
            .collect()
    }
}

#[derive(Debug, Clone, Copy)]
struct Cols {
    lo: usize,
    hi: usize,
    first: usize,
}

/// `out[lo..hi] += wv * row[first + s * i]` for `i = 0, 1, ...`.
#[inline]
fn axpy_gather(out: &mut [f32], row: &[f32], wv: f32, s: usize, c: Cols) {
    let out = &mut out[c.lo..c.hi];
    let n = out.len();
    if s == 1 {
        for (o, &v) in out.iter_mut().zip(&row[c.first..c.first + n]) {
            *o += wv * v;
        }
    } else {
        for (i, o) in out.iter_mut().enumerate() {
            *o += wv * row[c.first + s * i];
        }
    }
}

/// `row[first + s * i] += wv * g[lo + i]` (the adjoint of [`axpy_gather`]).
#[inline]
fn axpy_scatter(row: &mut [f32], g: &[f32], wv: f32, s: usize, c: Cols) {
    let g = &g[c.lo..c.hi];
    if s == 1 {
        for (r, &v) in row[c.first..c.first + g.len()].iter_mut().zip(g) {
            *r += wv * v;
        }
    } else {
        for (i, &v) in g.iter().enumerate() {
            row[c.first + s * i] += wv * v;
        }
    }
}

/// `sum_i g[lo + i] * row[first + s * i]`.
#[inline]
fn dot_gather(g: &[f32], row: &[f32], s: usize, c: Cols) -> f32 {
    let g = &g[c.lo..c.hi];
    if s == 1 {
        g.iter().zip(&row[c.first..c.first + g.len()]).map(|(a, b)| a * b).sum()
    } else {
        g.iter().enumerate().map(|(i, &a)| a * row[c.first + s * i]).sum()
    }
}

struct DepthwiseOp {
    geo: Geo,
}

impl CustomOp2 for DepthwiseOp {
    fn name(&self) -> &'static str {
        "digitlab-depthwise-conv2d"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        const OP: &str = "depthwise_conv2d";
        let g = self.geo;
        let (b, c, h, w) = l1.shape().dims4()?;
        if (c, h, w) != (g.c, g.h, g.w) || l2.shape().elem_count() != g.c * g.kk() {
            bail!(
                "{OP}: shapes {:?} and {:?} do not match the geometry",
                l1.dims(),
                l2.dims()
            )
        }
        let x = cpu::contiguous(f32_data(s1, OP)?, l1)?;
        let wt = cpu::contiguous(f32_data(s2, OP)?, l2)?;
        let (plane_in, plane_out, kk) = (h * w, g.oh * g.ow, g.kk());
        let planes = b * c;
        let cols = g.columns();
        let mut out = cpu::zeros(planes * plane_out);
        let n_parts = parts(planes, plane_out * kk, LOOP_SERIAL_MAX_ELEMS);
        map_parts_mut(&mut out, plane_out, planes, n_parts, |_, r, part| {
            for (i, p) in r.enumerate() {
                let xp = &x[p * plane_in..(p + 1) * plane_in];
                let wp = &wt[(p % c) * kk..(p % c + 1) * kk];
                let op = &mut part[i * plane_out..(i + 1) * plane_out];
                // Taps are added in (ky, kx) order to each output, as the strided
                // view composition does.
                for (oy, orow) in op.chunks_exact_mut(g.ow).enumerate() {
                    for ky in 0..g.k {
                        let Some(iy) = g.in_row(oy, ky) else { continue };
                        let xrow = &xp[iy * w..(iy + 1) * w];
                        for (kx, &cl) in cols.iter().enumerate() {
                            axpy_gather(orow, xrow, wp[ky * g.k + kx], g.s, cl);
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, c, g.oh, g.ow))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        const OP: &str = "depthwise_conv2d backward";
        let g = self.geo;
        let (need_x, need_w) = (x.track_op(), w.track_op());
        if !need_x && !need_w {
            return Ok((None, None));
        }
        let (b, c, h, wd) = x.dims4()?;
        let (x, w, grad) = (x.contiguous()?, w.contiguous()?, grad.contiguous()?);
        let (xv, wv, gv) = (View::new(&x, OP)?, View::new(&w, OP)?, View::new(&grad, OP)?);
        let (xs, wt, gr) = (xv.get(), wv.get(), gv.get());
        let (plane_in, plane_out, kk) = (h * wd, g.oh * g.ow, g.kk());
        let planes = b * c;
        if gr.len() != planes * plane_out {
            bail!(
                "{OP}: gradient has {} values, expected {}",
                gr.len(),
                planes * plane_out
            )
        }
        let cols = g.columns();
        let item = if need_x { plane_in } else { 0 };
        let mut dx = cpu::zeros(planes * item);
        let n_parts = parts(
            planes,
            plane_out * kk * (usize::from(need_x) + usize::from(need_w)),
            LOOP_SERIAL_MAX_ELEMS,
        );
        // Each part returns its planes' weight gradients, [planes in part, k*k].
        let dw_parts = map_parts_mut(&mut dx, item, planes, n_parts, |_, r, part| {
            let mut dw = if need_w { cpu::zeros(r.len() * kk) } else { Vec::new() };
            for (i, p) in r.enumerate() {
                let xp = &xs[p * plane_in..(p + 1) * plane_in];
                let wp = &wt[(p % c) * kk..(p % c + 1) * kk];
                let gp = &gr[p * plane_out..(p + 1) * plane_out];
                for (oy, grow) in gp.chunks_exact(g.ow).enumerate() {
                    for ky in 0..g.k {
                        let Some(iy) = g.in_row(oy, ky) else { continue };
                        if need_w {
                            let xrow = &xp[iy * wd..(iy + 1) * wd];
                            let dwp = &mut dw[i * kk + ky * g.k..i * kk + (ky + 1) * g.k];
                            for (d, &cl) in dwp.iter_mut().zip(&cols) {
                                *d += dot_gather(grow, xrow, g.s, cl);
                            }
                        }
                        if need_x {
                            let dxrow = &mut part[i * plane_in + iy * wd..i * plane_in + (iy + 1) * wd];
                            for (kx, &cl) in cols.iter().enumerate() {
                                axpy_scatter(dxrow, grow, wp[ky * g.k + kx], g.s, cl);
                            }
                        }
                    }
                }
            }
            dw
        });
        let dx = if need_x {
            Some(cpu::tensor(dx, (b, c, h, wd))?)
        } else {
            None
        };
        let dw = if need_w {
            // Per-plane partials in plane order, summed over the batch.
            let mut dw = cpu::zeros(c * kk);
            for (p, v) in dw_parts.concat().chunks_exact(kk).enumerate() {
                for (d, &e) in dw[(p % c) * kk..(p % c + 1) * kk].iter_mut().zip(v) {
                    *d += e;
                }
            }
            Some(cpu::tensor(dw, (c, 1, g.k, g.k))?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_cover_exactly_the_inside_of_the_input() {
        for &(w, k, s, pl, pr) in &[
            (7usize, 3usize, 1usize, 1usize, 1usize),
            (8, 3, 2, 0, 1),
            (9, 5, 2, 2, 2),
            (4, 5, 1, 2, 2),
            (3, 5, 2, 1, 2),
            (1, 3, 1, 1, 1),
            (1, 5, 1, 2, 2),
            (2, 5, 2, 2, 2),
        ] {
            let p = DepthwiseParams {
                stride: s,
                pad_top: 0,
                pad_bottom: 0,
                pad_left: pl,
                pad_right: pr,
            };
            let g = Geo::new(1, k, w, &[1, 1, k, k], p).unwrap();
            for (kx, c) in g.columns().iter().enumerate() {
                for ox in 0..g.ow {
                    let ix = (ox * s + kx) as isize - pl as isize;
                    let inside = ix >= 0 && (ix as usize) < w;
                    assert_eq!(
                        (c.lo..c.hi).contains(&ox),
                        inside,
                        "w{w} k{k} s{s} pl{pl} kx{kx} ox{ox}"
                    );
                    if inside {
                        assert_eq!(c.first + s * (ox - c.lo), ix as usize);
                    }
                    // The slices the loops take stay inside the row.
                    assert!(c.lo <= c.hi && c.hi <= g.ow);
                    assert!(c.lo == c.hi || c.first + s * (c.hi - c.lo - 1) < w);
                }
            }
        }
    }
}
