//! 2-D convolution as im2col + gemm, forward and backward, with bias and ReLU fused.
//!
//! Forward: the output pixels are cut into blocks (a tile of one image's pixels,
//! or several whole images when their maps are small); each block's patches are
//! unfolded into a `[C*kh*kw, n]` matrix (skipped for 1x1 stride-1 convolutions,
//! whose patches are the input itself) and multiplied by the `[O, C*kh*kw]`
//! weight, straight into the NCHW output that was pre-filled with the bias.
//! Blocks hold about 1 MiB of patches, so they stay in cache.
//!
//! Backward, per block: `dW += dY_block @ patches^T` and `dpatches = W^T @ dY_block`,
//! folded back onto the input gradient (col2im). candle's CPU backward computes the
//! input gradient with a direct `conv_transpose2d` loop instead. Gradients are
//! computed only for the inputs that track them (not for the image batch fed to
//! the first layer).
//!
//! Few channels at stride 1 (LeNet's layers, small stems) take the direct kernels
//! of [`direct`] instead, on CPUs with AVX2 and FMA: there the im2col copy and
//! gemm's packing cost more than the arithmetic.
//!
//! Threads: images are split over threads when the work is big enough, each with
//! its own scratch buffers (kept per thread and reused across calls) and a
//! single-threaded gemm; a lone image uses gemm's own threads instead.
use crate::cpu::{self, all_cpu_f32, f32_data, Mat, View};
use crate::precision::{cast_like, cast_opt_like, widen};
use crate::threading::{gemm_parallelism, map_parts_mut, parts, GEMM_SERIAL_MAX_MACS};
use crate::Activation;
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use std::cell::RefCell;
use std::ops::Range;

mod direct;

/// Geometry options of [`conv2d`], as in candle's `Conv2dConfig`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dParams {
    pub padding: usize,
    pub stride: usize,
    pub dilation: usize,
    pub groups: usize,
}

impl Default for Conv2dParams {
    fn default() -> Self {
        Self {
            padding: 0,
            stride: 1,
            dilation: 1,
            groups: 1,
        }
    }
}

/// `act(conv2d(x, w) + b)` for `x` `[B, C, H, W]`, `w` `[O, C, kh, kw]`, `b` `[O]`.
///
/// CPU f32 tensors with `dilation == 1` and `groups == 1` take the kernel; anything
/// else runs candle's `conv2d` (+ bias, as candle_nn's `Conv2d` adds it) and the
/// activation ([`conv2d_reference`]).
pub fn conv2d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, p: Conv2dParams, act: Activation) -> Result<Tensor> {
    if crate::precision::is_half(x.dtype()) {
        let (w, b) = (cast_like(w, x)?, cast_opt_like(b, x)?);
        if x.device().is_cpu() {
            // candle's CPU conv2d has no half kernel: the half values widened to f32
            // (exactly), convolved with f32 sums as GPUs do, rounded back.
            let (x32, w32, b32) = widen(x, &w, b.as_ref())?;
            return conv2d(&x32, &w32, b32.as_ref(), p, act)?.to_dtype(x.dtype());
        }
        return conv2d_reference(x, &w, b.as_ref(), p, act);
    }
    let mut ts = vec![x, w];
    ts.extend(b);
    if p.dilation == 1 && p.groups == 1 && x.rank() == 4 && w.rank() == 4 && all_cpu_f32(&ts) {
        crate::runtime::init();
        let (_, c, h, wd) = x.dims4()?;
        let (o, cw, kh, kw) = w.dims4()?;
        if cw != c {
            bail!("conv2d: input has {c} channels but the weight is {:?}", w.dims())
        }
        if let Some(b) = b {
            if b.dims() != [o] {
                bail!("conv2d: bias must be [{o}], got {:?}", b.dims())
            }
        }
        let geo = Geo::new(c, h, wd, o, kh, kw, p.stride, p.padding)?;
        return match b {
            Some(b) => x.apply_op3(w, b, ConvOp { geo, act }),
            None => x.apply_op2(w, ConvNoBiasOp { geo, act }),
        };
    }
    conv2d_reference(x, w, b, p, act)
}

/// candle's `conv2d` plus the bias as candle_nn's `Conv2d` adds it, then `act`.
pub fn conv2d_reference(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    p: Conv2dParams,
    act: Activation,
) -> Result<Tensor> {
    let y = x.conv2d(w, p.padding, p.stride, p.dilation, p.groups)?;
    let y = match b {
        Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?)?,
        None => y,
    };
    act.apply_reference(&y)
}

/// Patches of this many floats (1 MiB) per block.
const BLOCK_FLOATS: usize = 1 << 18;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geo {
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    s: usize,
    p: usize,
    oh: usize,
    ow: usize,
}

/// A unit of work: a tile of one image's output pixels, or whole images.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Block {
    Pixels { img: usize, pix: Range<usize> },
    Images(Range<usize>),
}

impl Geo {
    #[allow(clippy::too_many_arguments)]
    fn new(c: usize, h: usize, w: usize, o: usize, kh: usize, kw: usize, s: usize, p: usize) -> Result<Self> {
        if s == 0 || kh == 0 || kw == 0 {
            bail!("conv2d: kernel {kh}x{kw} and stride {s} must be at least 1")
        }
        if h + 2 * p < kh || w + 2 * p < kw {
            bail!("conv2d: kernel {kh}x{kw} does not fit a {h}x{w} input padded by {p}")
        }
        Ok(Self {
            c,
            h,
            w,
            o,
            kh,
            kw,
            s,
            p,
            oh: (h + 2 * p - kh) / s + 1,
            ow: (w + 2 * p - kw) / s + 1,
        })
    }
    fn ckk(&self) -> usize {
        self.c * self.kh * self.kw
    }
    fn ohw(&self) -> usize {
        self.oh * self.ow
    }
    fn chw(&self) -> usize {
        self.c * self.h * self.w
    }
    /// 1x1, stride 1, no padding: the patches are the input pixels themselves.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.s == 1 && self.p == 0
    }
    fn blocks(&self, imgs: Range<usize>) -> Vec<Block> {
        let ohw = self.ohw().max(1);
        let target = (BLOCK_FLOATS / self.ckk().max(1)).clamp(64, 4096);
        let mut out = Vec::new();
        if ohw * 2 >= target || self.pointwise() {
            let target = if self.pointwise() { 4096 } else { target };
            let tiles = ohw.div_ceil(target);
            let size = ohw.div_ceil(tiles);
            for img in imgs {
                let mut p0 = 0;
                while p0 < ohw {
                    let p1 = (p0 + size).min(ohw);
                    out.push(Block::Pixels { img, pix: p0..p1 });
                    p0 = p1;
                }
            }
        } else {
            let group = (target / ohw).max(1);
            let mut b0 = imgs.start;
            while b0 < imgs.end {
                let b1 = (b0 + group).min(imgs.end);
                out.push(Block::Images(b0..b1));
                b0 = b1;
            }
        }
        out
    }

    /// The runs of output pixels of `pix` that share an output row:
    /// `(offset in the block, oy, ox0, len)`.
    fn runs(&self, pix: &Range<usize>) -> Vec<(usize, usize, usize, usize)> {
        let mut out = Vec::with_capacity(pix.len() / self.ow.max(1) + 2);
        let (mut p, mut j) = (pix.start, 0);
        while p < pix.end {
            let (oy, ox0) = (p / self.ow, p % self.ow);
            let len = (self.ow - ox0).min(pix.end - p);
            out.push((j, oy, ox0, len));
            p += len;
            j += len;
        }
        out
    }

    /// Padded height and width.
    fn padded(&self) -> (usize, usize) {
        (self.h + 2 * self.p, self.w + 2 * self.p)
    }

    /// One image zero-padded by `p` on every side into `buf` (`C*(H+2p)*(W+2p)`);
    /// returns the image itself when there is no padding.
    fn pad<'a>(&self, x: &'a [f32], buf: &'a mut Vec<f32>) -> &'a [f32] {
        if self.p == 0 {
            return x;
        }
        let (hp, wp) = self.padded();
        let (h, w, p) = (self.h, self.w, self.p);
        let out = grow(buf, self.c * hp * wp);
        out.fill(0.0);
        for c in 0..self.c {
            for y in 0..h {
                let src = &x[(c * h + y) * w..(c * h + y + 1) * w];
                let dst = (c * hp + y + p) * wp + p;
                copy_run(&mut out[dst..dst + w], src, 1);
            }
        }
        out
    }

    /// Unfolds the patches of output pixels `pix` of one image (`x` = its `C*H*W`
    /// values) into rows `(c, ky, kx)` of `dst`: `dst[row * ld + col0 + j]`.
    /// `pad_buf` is scratch for the zero-padded image, which makes every patch
    /// element a plain (strided) copy.
    fn im2col(&self, x: &[f32], pix: &Range<usize>, dst: &mut [f32], ld: usize, col0: usize, pad_buf: &mut Vec<f32>) {
        let xp = self.pad(x, pad_buf);
        let (hp, wp) = self.padded();
        let s = self.s;
        if self.ow < 16 {
            // Short rows (small feature maps): per-run copies would be mostly
            // overhead, so gather through a table of each pixel's patch origin.
            let base: Vec<usize> = pix
                .clone()
                .map(|q| (q / self.ow) * s * wp + (q % self.ow) * s)
                .collect();
            // Every index read below is at most max(base) + (kh-1)*wp + (kw-1), which
            // is inside a padded channel plane by construction of the geometry.
            let max_read = base.iter().max().copied().unwrap_or(0) + (self.kh - 1) * wp + (self.kw - 1);
            if max_read < hp * wp {
                for c in 0..self.c {
                    let xc = &xp[c * hp * wp..(c + 1) * hp * wp];
                    for ky in 0..self.kh {
                        for kx in 0..self.kw {
                            let row = (c * self.kh + ky) * self.kw + kx;
                            let drow = &mut dst[row * ld + col0..row * ld + col0 + pix.len()];
                            let off = ky * wp + kx;
                            for (d, &b) in drow.iter_mut().zip(&base) {
                                // SAFETY: off + b <= max_read < hp * wp == xc.len() (checked above).
                                *d = unsafe { *xc.get_unchecked(off + b) };
                            }
                        }
                    }
                }
                return;
            }
        }
        let runs = self.runs(pix);
        for c in 0..self.c {
            let xc = &xp[c * hp * wp..(c + 1) * hp * wp];
            for ky in 0..self.kh {
                for kx in 0..self.kw {
                    let row = (c * self.kh + ky) * self.kw + kx;
                    let drow = &mut dst[row * ld + col0..row * ld + col0 + pix.len()];
                    for &(j, oy, ox0, len) in &runs {
                        let src = &xc[(oy * s + ky) * wp + ox0 * s + kx..];
                        copy_run(&mut drow[j..j + len], src, s);
                    }
                }
            }
        }
    }

    /// Adds the patch gradients `src[row * ld + col0 + j]` of output pixels `pix`
    /// back onto one image's input gradient `dx` (`C*H*W`): the adjoint of im2col.
    fn col2im(&self, src: &[f32], ld: usize, col0: usize, pix: &Range<usize>, dx: &mut [f32], pad_buf: &mut Vec<f32>) {
        let (hp, wp) = self.padded();
        let (h, w, p, s) = (self.h, self.w, self.p, self.s);
        let runs = self.runs(pix);
        let scatter = |dp: &mut [f32]| {
            for c in 0..self.c {
                let dc = &mut dp[c * hp * wp..(c + 1) * hp * wp];
                for ky in 0..self.kh {
                    for kx in 0..self.kw {
                        let row = (c * self.kh + ky) * self.kw + kx;
                        let srow = &src[row * ld + col0..row * ld + col0 + pix.len()];
                        for &(j, oy, ox0, len) in &runs {
                            let base = (oy * s + ky) * wp + ox0 * s + kx;
                            let sr = &srow[j..j + len];
                            if s == 1 {
                                for (d, v) in dc[base..base + len].iter_mut().zip(sr) {
                                    *d += v;
                                }
                            } else {
                                for (t, v) in sr.iter().enumerate() {
                                    dc[base + t * s] += v;
                                }
                            }
                        }
                    }
                }
            }
        };
        if p == 0 {
            scatter(dx);
            return;
        }
        let dp = grow(pad_buf, self.c * hp * wp);
        dp.fill(0.0);
        scatter(dp);
        for c in 0..self.c {
            for y in 0..h {
                let from = (c * hp + y + p) * wp + p;
                for (d, v) in dx[(c * h + y) * w..(c * h + y + 1) * w]
                    .iter_mut()
                    .zip(&dp[from..from + w])
                {
                    *d += v;
                }
            }
        }
    }
}

/// `d[t] = src[t * s]`; short unit-stride runs (the rows of small feature maps) are
/// copied with fixed-size moves instead of a `memcpy` call each.
#[inline(always)]
fn copy_run(d: &mut [f32], src: &[f32], s: usize) {
    if s != 1 {
        for (t, v) in d.iter_mut().enumerate() {
            *v = src[t * s];
        }
        return;
    }
    macro_rules! fixed {
        ($($n:literal)*) => {
            match d.len() {
                $($n => {
                    if let (Ok(dd), Some(ss)) = (<&mut [f32; $n]>::try_from(&mut *d), src.get(..$n)) {
                        if let Ok(ss) = <&[f32; $n]>::try_from(ss) {
                            *dd = *ss;
                            return;
                        }
                    }
                })*
                _ => {}
            }
        };
    }
    fixed!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16);
    let n = d.len();
    d.copy_from_slice(&src[..n]);
}

thread_local! {
    /// Per-thread scratch: patches, a gathered output-gradient block, patch
    /// gradients, a padded image.
    static SCRATCH: RefCell<[Vec<f32>; 4]> = const { RefCell::new([Vec::new(), Vec::new(), Vec::new(), Vec::new()]) };
}

fn grow(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

/// How many threads to split `b` images over, and the gemm parallelism inside.
fn plan(g: &Geo, b: usize) -> (usize, gemm::Parallelism) {
    let per_image = g.o * g.ckk() * g.ohw();
    let n = parts(b, per_image, GEMM_SERIAL_MAX_MACS);
    if n > 1 {
        (n, gemm::Parallelism::None)
    } else {
        (1, gemm_parallelism(g.o, g.ohw() * b, g.ckk()))
    }
}

/// Forward (im2col + gemm) of images `imgs`, whose outputs are `out`
/// (`imgs.len() * O * OH * OW`).
#[allow(clippy::too_many_arguments)]
fn forward_part(
    g: &Geo,
    x: &[f32],
    wt: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
    imgs: Range<usize>,
    out: &mut [f32],
    par: gemm::Parallelism,
) -> Result<()> {
    let (o, ohw, ckk, chw) = (g.o, g.ohw(), g.ckk(), g.chw());
    if let Some(b) = bias {
        for img in out.chunks_exact_mut(o * ohw) {
            for (plane, &bv) in img.chunks_exact_mut(ohw.max(1)).zip(b) {
                plane.fill(bv);
            }
        }
    }
    let acc = bias.is_some();
    let relu = |v: &mut [f32]| act.apply_in_place(v);
    SCRATCH.with(|s| -> Result<()> {
        let mut s = s.borrow_mut();
        let [cols, tmp, _, pad] = &mut *s;
        for block in g.blocks(imgs.clone()) {
            match block {
                Block::Pixels { img, pix } => {
                    let n = pix.len();
                    let dst_off = (img - imgs.start) * o * ohw + pix.start;
                    // out^T [n, O] = patches^T [n, ckk] @ W^T [ckk, O]: the pixels are the
                    // gemm's long side (O can be as small as 6), the patches are read in
                    // place (column-major), and the result lands in NCHW directly.
                    let patches_t = if g.pointwise() {
                        Mat::new(x, img * chw + pix.start, 1, g.h * g.w)
                    } else {
                        let c = grow(cols, ckk * n);
                        g.im2col(&x[img * chw..(img + 1) * chw], &pix, c, n, 0, pad);
                        Mat::new(c, 0, 1, n)
                    };
                    cpu::gemm(
                        n,
                        o,
                        ckk,
                        out,
                        dst_off,
                        1,
                        ohw,
                        acc,
                        patches_t,
                        Mat::new(wt, 0, 1, ckk),
                        par,
                    )?;
                    for oc in 0..o {
                        relu(&mut out[dst_off + oc * ohw..dst_off + oc * ohw + n]);
                    }
                }
                Block::Images(r) => {
                    let n = r.len() * ohw;
                    let c = grow(cols, ckk * n);
                    for (gi, img) in r.clone().enumerate() {
                        g.im2col(&x[img * chw..(img + 1) * chw], &(0..ohw), c, n, gi * ohw, pad);
                    }
                    let t = grow(tmp, o * n);
                    cpu::gemm(
                        n,
                        o,
                        ckk,
                        t,
                        0,
                        1,
                        n,
                        false,
                        Mat::new(c, 0, 1, n),
                        Mat::new(wt, 0, 1, ckk),
                        par,
                    )?;
                    for (gi, img) in r.enumerate() {
                        let base = (img - imgs.start) * o * ohw;
                        for oc in 0..o {
                            let src = &t[oc * n + gi * ohw..oc * n + (gi + 1) * ohw];
                            let dst = &mut out[base + oc * ohw..base + (oc + 1) * ohw];
                            if acc {
                                for (d, v) in dst.iter_mut().zip(src) {
                                    *d += v;
                                }
                            } else {
                                dst.copy_from_slice(src);
                            }
                            relu(dst);
                        }
                    }
                }
            }
        }
        Ok(())
    })
}

fn forward(
    g: &Geo,
    x: (&CpuStorage, &Layout),
    w: (&CpuStorage, &Layout),
    b: Option<(&CpuStorage, &Layout)>,
    act: Activation,
) -> Result<(CpuStorage, Shape)> {
    const OP: &str = "conv2d";
    let (bn, c, h, wd) = x.1.shape().dims4()?;
    if (c, h, wd) != (g.c, g.h, g.w) || w.1.shape().dims4()? != (g.o, g.c, g.kh, g.kw) {
        bail!("{OP}: shapes changed since the op was built")
    }
    let xd = cpu::contiguous(f32_data(x.0, OP)?, x.1)?;
    let wt = cpu::contiguous(f32_data(w.0, OP)?, w.1)?;
    let bias = match b {
        Some((s, l)) => Some(cpu::contiguous(f32_data(s, OP)?, l)?),
        None => None,
    };
    let item = g.o * g.ohw();
    let mut out = cpu::zeros(bn * item);
    let (n_parts, par) = plan(g, bn);
    let results = map_parts_mut(&mut out, item, bn, n_parts, |_, imgs, part| {
        if g.direct() {
            direct::forward_part(g, &xd, &wt, bias.as_deref(), act, imgs, part);
            return Ok(());
        }
        forward_part(g, &xd, &wt, bias.as_deref(), act, imgs, part, par)
    });
    results.into_iter().collect::<Result<Vec<()>>>()?;
    Ok((CpuStorage::F32(out), Shape::from((bn, g.o, g.oh, g.ow))))
}

/// Backward (im2col + gemm) of images `imgs`: returns this part's weight gradient (when `need_w`)
/// and writes the input gradient of its images into `dx` (when non-empty).
#[allow(clippy::too_many_arguments)]
fn backward_part(
    g: &Geo,
    x: &[f32],
    wt: &[f32],
    dz: &[f32],
    need_w: bool,
    imgs: Range<usize>,
    dx: &mut [f32],
    par: gemm::Parallelism,
) -> Result<Vec<f32>> {
    let (o, ohw, ckk, chw, hw) = (g.o, g.ohw(), g.ckk(), g.chw(), g.h * g.w);
    let need_x = !dx.is_empty();
    let mut dw = if need_w { cpu::zeros(o * ckk) } else { Vec::new() };
    // W^T: element (kk, oc) = w[oc * ckk + kk].
    let wt_t = Mat::new(wt, 0, 1, ckk);
    SCRATCH.with(|s| -> Result<()> {
        let mut s = s.borrow_mut();
        let [cols, tmp, dcols, pad] = &mut *s;
        for block in g.blocks(imgs.clone()) {
            match block {
                Block::Pixels { img, pix } => {
                    let n = pix.len();
                    let dz_blk = Mat::new(dz, img * o * ohw + pix.start, ohw, 1);
                    if need_w {
                        // dW^T [ckk, O] += patches [ckk, n] @ dz^T [n, O].
                        let patches = if g.pointwise() {
                            Mat::new(x, img * chw + pix.start, hw, 1)
                        } else {
                            let c = grow(cols, ckk * n);
                            g.im2col(&x[img * chw..(img + 1) * chw], &pix, c, n, 0, pad);
                            Mat::rows(c, n)
                        };
                        let dz_t = Mat::new(dz, img * o * ohw + pix.start, 1, ohw);
                        cpu::gemm(ckk, o, n, &mut dw, 0, 1, ckk, true, patches, dz_t, par)?;
                    }
                    if need_x {
                        let local = (img - imgs.start) * chw;
                        if g.pointwise() {
                            cpu::gemm(g.c, n, o, dx, local + pix.start, hw, 1, false, wt_t, dz_blk, par)?;
                        } else {
                            let d = grow(dcols, ckk * n);
                            cpu::gemm(ckk, n, o, d, 0, n, 1, false, wt_t, dz_blk, par)?;
                            g.col2im(d, n, 0, &pix, &mut dx[local..local + chw], pad);
                        }
                    }
                }
                Block::Images(r) => {
                    let n = r.len() * ohw;
                    let t = grow(tmp, o * n);
                    for (gi, img) in r.clone().enumerate() {
                        for oc in 0..o {
                            let src = &dz[img * o * ohw + oc * ohw..img * o * ohw + (oc + 1) * ohw];
                            t[oc * n + gi * ohw..oc * n + (gi + 1) * ohw].copy_from_slice(src);
                        }
                    }
                    let dz_blk = Mat::rows(t, n);
                    if need_w {
                        let c = grow(cols, ckk * n);
                        for (gi, img) in r.clone().enumerate() {
                            g.im2col(&x[img * chw..(img + 1) * chw], &(0..ohw), c, n, gi * ohw, pad);
                        }
                        cpu::gemm(
                            ckk,
                            o,
                            n,
                            &mut dw,
                            0,
                            1,
                            ckk,
                            true,
                            Mat::rows(c, n),
                            Mat::new(t, 0, 1, n),
                            par,
                        )?;
                    }
                    if need_x {
                        let d = grow(dcols, ckk * n);
                        cpu::gemm(ckk, n, o, d, 0, n, 1, false, wt_t, dz_blk, par)?;
                        for (gi, img) in r.enumerate() {
                            let local = (img - imgs.start) * chw;
                            g.col2im(d, n, gi * ohw, &(0..ohw), &mut dx[local..local + chw], pad);
                        }
                    }
                }
            }
        }
        Ok(())
    })?;
    Ok(dw)
}

fn backward(
    g: &Geo,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    res: &Tensor,
    grad: &Tensor,
    act: Activation,
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    const OP: &str = "conv2d backward";
    let (bn, _, _, _) = x.dims4()?;
    let (o, ohw) = (g.o, g.ohw());
    let grad = grad.contiguous()?;
    let gv = View::new(&grad, OP)?;
    let masked = cpu::activation_grad(act, gv.get(), res, OP)?;
    let dz: &[f32] = masked.as_deref().unwrap_or(gv.get());
    if dz.len() != bn * o * ohw {
        bail!("{OP}: gradient has {} values, expected {}", dz.len(), bn * o * ohw)
    }
    let db = match b {
        Some(b) if b.track_op() => {
            let mut db = vec![0f32; o];
            for img in dz.chunks_exact(o * ohw) {
                for (d, plane) in db.iter_mut().zip(img.chunks_exact(ohw.max(1))) {
                    *d += plane.iter().sum::<f32>();
                }
            }
            Some(cpu::tensor(db, o)?)
        }
        _ => None,
    };
    let (need_w, need_x) = (w.track_op(), x.track_op());
    if !need_w && !need_x {
        return Ok((None, None, db));
    }
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    let (xv, wv) = (View::new(&x, OP)?, View::new(&w, OP)?);
    let item = if need_x { g.chw() } else { 0 };
    let mut dx = cpu::zeros(bn * item);
    let (n_parts, par) = plan(g, bn);
    let parts = map_parts_mut(&mut dx, item, bn, n_parts, |_, imgs, part| {
        if g.direct() {
            return Ok(direct::backward_part(g, xv.get(), wv.get(), dz, need_w, imgs, part));
        }
        backward_part(g, xv.get(), wv.get(), dz, need_w, imgs, part, par)
    });
    let mut dw: Option<Vec<f32>> = None;
    for p in parts {
        let p = p?;
        dw = Some(match dw {
            None => p,
            Some(mut acc) => {
                for (a, v) in acc.iter_mut().zip(&p) {
                    *a += v;
                }
                acc
            }
        });
    }
    let dw = if need_w {
        dw.map(|d| cpu::tensor(d, (g.o, g.c, g.kh, g.kw))).transpose()?
    } else {
        None
    };
    let dx = if need_x {
        Some(cpu::tensor(dx, (bn, g.c, g.h, g.w))?)
    } else {
        None
    };
    Ok((dx, dw, db))
}

struct ConvOp {
    geo: Geo,
    act: Activation,
}

struct ConvNoBiasOp {
    geo: Geo,
    act: Activation,
}

impl CustomOp3 for ConvOp {
    fn name(&self) -> &'static str {
        "digitlab-conv2d"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        forward(&self.geo, (s1, l1), (s2, l2), Some((s3, l3)), self.act)
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        backward(&self.geo, x, w, Some(b), res, grad, self.act)
    }
}

impl CustomOp2 for ConvNoBiasOp {
    fn name(&self) -> &'static str {
        "digitlab-conv2d-nobias"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        forward(&self.geo, (s1, l1), (s2, l2), None, self.act)
    }
    fn bwd(&self, x: &Tensor, w: &Tensor, res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = backward(&self.geo, x, w, None, res, grad, self.act)?;
        Ok((dx, dw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_every_pixel_once() {
        for &(c, h, k, s, p) in &[
            (3usize, 32usize, 5usize, 1usize, 0usize),
            (512, 2, 3, 1, 1),
            (3, 224, 7, 2, 3),
            (64, 8, 1, 1, 0),
        ] {
            let g = Geo::new(c, h, h, 8, k, k, s, p).unwrap();
            let blocks = g.blocks(2..7);
            let mut seen = vec![0usize; 9 * g.ohw()];
            for b in blocks {
                match b {
                    Block::Pixels { img, pix } => pix.for_each(|q| seen[img * g.ohw() + q] += 1),
                    Block::Images(r) => r.for_each(|img| (0..g.ohw()).for_each(|q| seen[img * g.ohw() + q] += 1)),
                }
            }
            for (i, n) in seen.iter().enumerate() {
                let img = i / g.ohw();
                assert_eq!(*n, usize::from((2..7).contains(&img)), "c{c} h{h} k{k}: pixel {i}");
            }
        }
    }

    /// im2col by definition: element (row, pixel) is the input at the patch
    /// position, or 0 in the padding.
    fn naive_im2col(g: &Geo, x: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; g.ckk() * g.ohw()];
        for c in 0..g.c {
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    let row = (c * g.kh + ky) * g.kw + kx;
                    for oy in 0..g.oh {
                        for ox in 0..g.ow {
                            let (iy, ix) = (
                                (oy * g.s + ky) as isize - g.p as isize,
                                (ox * g.s + kx) as isize - g.p as isize,
                            );
                            if iy >= 0 && ix >= 0 && (iy as usize) < g.h && (ix as usize) < g.w {
                                out[row * g.ohw() + oy * g.ow + ox] = x[(c * g.h + iy as usize) * g.w + ix as usize];
                            }
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn im2col_matches_definition_for_any_pixel_range() {
        for &(c, h, w, k, s, p) in &[
            (2usize, 7usize, 9usize, 3usize, 1usize, 1usize),
            (3, 8, 8, 3, 2, 1),
            (1, 9, 6, 5, 2, 2),
            (2, 5, 5, 1, 2, 0),
            (2, 6, 7, 7, 3, 3),
            (4, 1, 1, 3, 1, 1),
        ] {
            let g = Geo::new(c, h, w, 1, k, k, s, p).unwrap();
            let x: Vec<f32> = (0..c * h * w).map(|i| i as f32 + 1.0).collect();
            let want = naive_im2col(&g, &x);
            let mut pad = Vec::new();
            for (a, b) in [(0, g.ohw()), (1, g.ohw()), (0, 1), (g.ohw() / 2, g.ohw())] {
                if a >= b {
                    continue;
                }
                let n = b - a;
                let mut got = vec![f32::NAN; g.ckk() * (n + 3)];
                g.im2col(&x, &(a..b), &mut got, n + 3, 2, &mut pad);
                for row in 0..g.ckk() {
                    assert_eq!(
                        &got[row * (n + 3) + 2..row * (n + 3) + 2 + n],
                        &want[row * g.ohw() + a..row * g.ohw() + b],
                        "c{c} h{h} w{w} k{k} s{s} p{p} pixels {a}..{b} row {row}"
                    );
                }
                // col2im is the adjoint: <im2col(x), y> = <x, col2im(y)>.
                let y: Vec<f32> = (0..g.ckk() * n).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
                let mut cols = vec![0f32; g.ckk() * n];
                g.im2col(&x, &(a..b), &mut cols, n, 0, &mut pad);
                let lhs: f64 = cols.iter().zip(&y).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum();
                let mut dx = vec![0f32; x.len()];
                g.col2im(&y, n, 0, &(a..b), &mut dx, &mut pad);
                let rhs: f64 = x.iter().zip(&dx).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum();
                assert!((lhs - rhs).abs() < 1e-6 * lhs.abs().max(1.0), "adjoint: {lhs} vs {rhs}");
            }
        }
    }
}
