//! Direct convolution for few channels at stride 1 (LeNet's 3→6 and 6→16 5x5
//! layers, small stems): no im2col copy and no gemm packing, which cost more than
//! the arithmetic when the output channels and `C*kh*kw` are few.
//!
//! Every plane is laid out on the zero-padded input's row pitch `pw`: output pixel
//! `(y, x)` sits at flat position `y*pw + x`, and tap `(ky, kx)` reads the padded
//! input at that position plus `ky*pw + kx`. A convolution is then a 1-D
//! correlation over flat positions, which vectorises across row ends; the `kw - 1`
//! positions past each row's end are computed and dropped (and are zero in the
//! gradients). The input gradient is the same correlation of the zero-bordered
//! output gradient with the flipped kernel, input and output channels swapped; the
//! weight gradient is a dot product per (output channel, input channel, tap).
//!
//! Sums run in a fixed order (positions, then images in order), so the results are
//! the same from run to run; they are not bit-identical to the im2col path.
use super::{grow, Geo};
use crate::Activation;
use std::cell::RefCell;
use std::ops::Range;

/// Flat positions per forward tile: three 8-lane vectors.
const P: usize = 24;
/// Output channels that share a forward tile's input loads: 3 x 3 accumulators.
/// With 4 x 3 (all 16 AVX2 registers with the inputs and the broadcast) the
/// compiler spilled one accumulator to the stack, and the tile ran slower.
const MAX_J: usize = 3;
/// Output channels that share a weight-gradient tile's input loads.
const MAX_JW: usize = 3;
/// Taps per weight-gradient tile.
const TT: usize = 3;
/// Lanes of the weight-gradient partial sums.
const L: usize = 8;

impl Geo {
    /// Whether the direct kernels take this convolution: stride 1, not pointwise
    /// (that one reads the input in place already), and few channels, where gemm's
    /// packing and the im2col copy dominate (measured: see the README's speed notes).
    pub(super) fn direct(&self) -> bool {
        available() && self.s == 1 && !self.pointwise() && self.c <= 16 && self.o <= 64 && self.o * self.c <= 512
    }
}

/// The flat-position layout of one image's planes.
struct Grid {
    pw: usize,
    /// Padded input positions `(H+2p) * pw`.
    pin: usize,
    /// Output positions on the padded pitch, `OH * pw`.
    len: usize,
    /// Stride of a padded input plane: room for every tile's reads past the end.
    xs: usize,
    /// Offset of the output gradient inside its zero-bordered plane:
    /// `(kh-1)*pw + kw-1`, the largest tap offset.
    shift: usize,
    /// Stride of a zero-bordered output-gradient plane.
    zs: usize,
    /// Tap offsets `ky*pw + kx`, row-major like the weight's last two axes.
    offs: Vec<usize>,
}

impl Grid {
    fn new(g: &Geo) -> Self {
        let (ph, pw) = g.padded();
        let shift = (g.kh - 1) * pw + g.kw - 1;
        let pin = ph * pw;
        // Forward tiles read up to len + P - 1 + shift = pin + kw + P - 2, weight
        // gradients up to len + L - 1 + shift; input-gradient tiles read the
        // output-gradient plane up to pin + P - 1 + shift.
        let slack = P + L + g.kw;
        Self {
            pw,
            pin,
            len: g.oh * pw,
            xs: (pin + slack).next_multiple_of(L),
            shift,
            zs: (pin + shift + slack).next_multiple_of(L),
            offs: (0..g.kh).flat_map(|ky| (0..g.kw).map(move |kx| ky * pw + kx)).collect(),
        }
    }

    /// One image (`C*H*W`) zero-padded onto planes of stride `xs`.
    fn pad_input(&self, g: &Geo, x: &[f32], dst: &mut [f32]) {
        dst.fill(0.0);
        for c in 0..g.c {
            for y in 0..g.h {
                let from = (c * g.h + y) * g.w;
                let to = c * self.xs + (y + g.p) * self.pw + g.p;
                dst[to..to + g.w].copy_from_slice(&x[from..from + g.w]);
            }
        }
    }

    /// One image's output gradient (`O*OH*OW`) onto zero planes of stride `zs`, at
    /// offset `shift`.
    fn border_grad(&self, g: &Geo, dz: &[f32], dst: &mut [f32]) {
        dst.fill(0.0);
        for o in 0..g.o {
            for y in 0..g.oh {
                let from = (o * g.oh + y) * g.ow;
                let to = o * self.zs + self.shift + y * self.pw;
                dst[to..to + g.ow].copy_from_slice(&dz[from..from + g.ow]);
            }
        }
    }
}

thread_local! {
    /// Per-thread scratch: padded input, zero-bordered output gradient, result grid.
    static SCRATCH: RefCell<[Vec<f32>; 3]> = const { RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
}

/// `[C][T][O]`: the forward weights with the output channels innermost, so a tile's
/// channels read one contiguous run per tap.
fn forward_weights(g: &Geo, wt: &[f32]) -> Vec<f32> {
    let t = g.kh * g.kw;
    let mut out = vec![0f32; wt.len()];
    for o in 0..g.o {
        for c in 0..g.c {
            for k in 0..t {
                out[(c * t + k) * g.o + o] = wt[(o * g.c + c) * t + k];
            }
        }
    }
    out
}

/// `[O][T][C]` with each kernel flipped: the weights of the input-gradient
/// correlation.
fn flipped_weights(g: &Geo, wt: &[f32]) -> Vec<f32> {
    let t = g.kh * g.kw;
    let mut out = vec![0f32; wt.len()];
    for o in 0..g.o {
        for c in 0..g.c {
            for k in 0..t {
                out[(o * t + k) * g.c + c] = wt[(o * g.c + c) * t + (t - 1 - k)];
            }
        }
    }
    out
}

/// Splits `n` channels into blocks of at most `max`, as even as possible
/// (6 → 3 + 3 rather than 4 + 2).
fn channel_blocks(n: usize, max: usize) -> impl Iterator<Item = Range<usize>> {
    let nb = n.div_ceil(max).max(1);
    let (base, extra) = (n / nb, n % nb);
    (0..nb).scan(0, move |start, i| {
        let len = base + usize::from(i < extra);
        let r = *start..*start + len;
        *start += len;
        Some(r)
    })
}

/// Whether this CPU runs the direct kernels (written with AVX2 and FMA
/// intrinsics: left to the auto-vectoriser, the tiles were vectorised at some
/// sizes and fell back to scalar code at others).
fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// One correlation:
/// `out[j*os + q] = init[j] + Σ_k Σ_t w[(k*T + t)*jn + j] · inp[k*is + q + offs[t]]`
/// for every channel `j < jn` and position `q < n` (a multiple of [`P`]).
struct Correlation<'a> {
    inp: &'a [f32],
    is: usize,
    k: usize,
    w: &'a [f32],
    jn: usize,
    offs: &'a [usize],
    init: Option<&'a [f32]>,
}

impl Correlation<'_> {
    fn compute(&self, out: &mut [f32], os: usize, n: usize) {
        let t_n = self.offs.len();
        let max_off = self.offs.iter().copied().max().unwrap_or(0);
        // Every read and write of the tiles below lies inside these bounds.
        assert!(
            n.is_multiple_of(P)
                && self.k > 0
                && self.jn > 0
                && self.inp.len() >= (self.k - 1) * self.is + max_off + n
                && self.w.len() >= self.k * t_n * self.jn
                && out.len() >= (self.jn - 1) * os + n
                && self.init.is_none_or(|b| b.len() >= self.jn),
            "direct convolution: buffers too small for the tiles"
        );
        #[cfg(target_arch = "x86_64")]
        if available() {
            // No bias: the tiles start from zeros (at most MAX_J of them per tile).
            const ZEROS: [f32; MAX_J] = [0.0; MAX_J];
            for js in channel_blocks(self.jn, MAX_J) {
                let tile = match js.len() {
                    1 => avx2::correlation_tile::<1>,
                    2 => avx2::correlation_tile::<2>,
                    _ => avx2::correlation_tile::<3>,
                };
                for q0 in (0..n).step_by(P) {
                    // SAFETY: AVX2 and FMA are present; the tile reads
                    // inp[k*is + q0 + off .. + P] for k < self.k, off <= max_off, the
                    // weights w[(k*T + t)*jn + js], js.len() <= MAX_J initial values
                    // (init[js] or ZEROS), and writes out[j*os + q0 .. + P] for j in
                    // js: all inside the bounds asserted above.
                    unsafe {
                        tile(
                            self.inp.as_ptr().add(q0),
                            self.is,
                            self.k,
                            self.w.as_ptr().add(js.start),
                            self.jn,
                            self.offs,
                            match self.init {
                                Some(b) => b.as_ptr().add(js.start),
                                None => ZEROS.as_ptr(),
                            },
                            out.as_mut_ptr().add(js.start * os + q0),
                            os,
                        )
                    }
                }
            }
            return;
        }
        unreachable!("direct convolution without AVX2: Geo::direct checks available()")
    }
}

/// One weight-gradient pass over one image: for every (o, c, t),
/// `part[((o*C + c)*T3 + t)*L + l] += Σ_{q ≡ l mod L} dy[o*zs + shift + q] · x[c*xs + q + offs[t]]`
/// over the `n` (a multiple of [`L`]) positions; `T3` is the tap count rounded up
/// to [`TT`] (the extra taps read offset 0 and are dropped).
struct WeightGrad<'a> {
    dy: &'a [f32],
    zs: usize,
    shift: usize,
    x: &'a [f32],
    xs: usize,
    c: usize,
    o: usize,
    offs: &'a [usize],
}

impl WeightGrad<'_> {
    fn accumulate(&self, n: usize, part: &mut [f32]) {
        let t3 = self.offs.len();
        let max_off = self.offs.iter().copied().max().unwrap_or(0);
        assert!(
            n.is_multiple_of(L)
                && t3.is_multiple_of(TT)
                && self.o > 0
                && self.c > 0
                && self.dy.len() >= (self.o - 1) * self.zs + self.shift + n
                && self.x.len() >= (self.c - 1) * self.xs + max_off + n
                && part.len() >= self.o * self.c * t3 * L,
            "direct convolution: buffers too small for the weight-gradient tiles"
        );
        #[cfg(target_arch = "x86_64")]
        if available() {
            for os in channel_blocks(self.o, MAX_JW) {
                let tile = match os.len() {
                    1 => avx2::weight_grad_tile::<1>,
                    2 => avx2::weight_grad_tile::<2>,
                    _ => avx2::weight_grad_tile::<3>,
                };
                for c in 0..self.c {
                    for t0 in (0..t3).step_by(TT) {
                        // SAFETY: AVX2 and FMA are present; the tile reads
                        // dy[o*zs + shift .. + n] for o in os, x[c*xs + off .. + n] for
                        // the TT offsets from t0, and reads and writes the L partial
                        // sums of its (o, c, t) slots: all inside the bounds asserted above.
                        unsafe {
                            tile(
                                self.dy.as_ptr().add(os.start * self.zs + self.shift),
                                self.zs,
                                self.x.as_ptr().add(c * self.xs),
                                &self.offs[t0..t0 + TT],
                                n,
                                part.as_mut_ptr().add(((os.start * self.c + c) * t3 + t0) * L),
                                self.c * t3 * L,
                            )
                        }
                    }
                }
            }
            return;
        }
        unreachable!("direct convolution without AVX2: Geo::direct checks available()")
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{L, P, TT};
    use std::arch::x86_64::*;

    const V: usize = P / 8;

    /// `J` channels × [`P`] positions of a correlation: `J` × 3 accumulators, three
    /// input loads and `J` broadcasts per tap.
    ///
    /// # Safety
    /// AVX2 and FMA; `inp + k*is + off .. + P` readable for `k < ks` and every
    /// `off` in `offs`; `w + (k*T + t)*jn + j` and `init + j` readable and
    /// `out + j*os .. + P` writable for `j < J`.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn correlation_tile<const J: usize>(
        inp: *const f32,
        is: usize,
        ks: usize,
        w: *const f32,
        jn: usize,
        offs: &[usize],
        init: *const f32,
        out: *mut f32,
        os: usize,
    ) {
        let mut acc = [[_mm256_setzero_ps(); V]; J];
        for (j, a) in acc.iter_mut().enumerate() {
            *a = [_mm256_broadcast_ss(&*init.add(j)); V];
        }
        let t_n = offs.len();
        for k in 0..ks {
            let plane = inp.add(k * is);
            let wk = w.add(k * t_n * jn);
            for (t, &off) in offs.iter().enumerate() {
                let xp = plane.add(off);
                let mut x = [_mm256_setzero_ps(); V];
                for (v, xv) in x.iter_mut().enumerate() {
                    *xv = _mm256_loadu_ps(xp.add(8 * v));
                }
                let wt = wk.add(t * jn);
                for (j, a) in acc.iter_mut().enumerate() {
                    let wv = _mm256_broadcast_ss(&*wt.add(j));
                    for (av, &xv) in a.iter_mut().zip(&x) {
                        *av = _mm256_fmadd_ps(wv, xv, *av);
                    }
                }
            }
        }
        for (j, a) in acc.iter().enumerate() {
            for (v, &av) in a.iter().enumerate() {
                _mm256_storeu_ps(out.add(j * os + 8 * v), av);
            }
        }
    }

    /// `J` output channels × [`TT`] taps of a weight gradient, [`L`] partial sums
    /// each: 9 accumulators, `J` gradient loads and three input loads per 8
    /// positions.
    ///
    /// # Safety
    /// AVX2 and FMA; `dy + j*zs .. + n` and `x + off .. + n` readable for `j < J`
    /// and every `off` in `offs` (length [`TT`]); `part + j*ps + tt*L .. + L`
    /// readable and writable for `j < J`, `tt < TT`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn weight_grad_tile<const J: usize>(
        dy: *const f32,
        zs: usize,
        x: *const f32,
        offs: &[usize],
        n: usize,
        part: *mut f32,
        ps: usize,
    ) {
        let mut acc = [[_mm256_setzero_ps(); TT]; J];
        for (j, aj) in acc.iter_mut().enumerate() {
            for (tt, a) in aj.iter_mut().enumerate() {
                *a = _mm256_loadu_ps(part.add(j * ps + tt * L));
            }
        }
        let mut o = [0usize; TT];
        o.copy_from_slice(&offs[..TT]);
        for q0 in (0..n).step_by(L) {
            let mut d = [_mm256_setzero_ps(); J];
            for (j, dv) in d.iter_mut().enumerate() {
                *dv = _mm256_loadu_ps(dy.add(j * zs + q0));
            }
            for (tt, &off) in o.iter().enumerate() {
                let xv = _mm256_loadu_ps(x.add(q0 + off));
                for (aj, &dv) in acc.iter_mut().zip(&d) {
                    aj[tt] = _mm256_fmadd_ps(dv, xv, aj[tt]);
                }
            }
        }
        for (j, aj) in acc.iter().enumerate() {
            for (tt, &a) in aj.iter().enumerate() {
                _mm256_storeu_ps(part.add(j * ps + tt * L), a);
            }
        }
    }
}

/// Forward of images `imgs` into `out` (`imgs.len() * O * OH * OW`): bias, then `act`.
pub(super) fn forward_part(
    g: &Geo,
    x: &[f32],
    wt: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
    imgs: Range<usize>,
    out: &mut [f32],
) {
    let grid = Grid::new(g);
    let wf = forward_weights(g, wt);
    let n = grid.len.next_multiple_of(P);
    let (chw, item) = (g.chw(), g.o * g.ohw());
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        let [xpad, _, res] = &mut *s;
        let xpad = grow(xpad, g.c * grid.xs);
        let res = grow(res, g.o * n);
        for (local, img) in imgs.enumerate() {
            grid.pad_input(g, &x[img * chw..(img + 1) * chw], xpad);
            let corr = Correlation {
                inp: xpad,
                is: grid.xs,
                k: g.c,
                w: &wf,
                jn: g.o,
                offs: &grid.offs,
                init: bias,
            };
            corr.compute(res, n, n);
            let dst = &mut out[local * item..(local + 1) * item];
            for o in 0..g.o {
                for y in 0..g.oh {
                    let from = o * n + y * grid.pw;
                    let row = &mut dst[(o * g.oh + y) * g.ow..(o * g.oh + y + 1) * g.ow];
                    row.copy_from_slice(&res[from..from + g.ow]);
                    act.apply_in_place(row);
                }
            }
        }
    })
}

/// Backward of images `imgs` from their output gradient `dz` (activation already
/// applied): returns this part's weight gradient (`[O, C, kh, kw]`, when `need_w`)
/// and writes the input gradient of its images into `dx` (when non-empty).
pub(super) fn backward_part(
    g: &Geo,
    x: &[f32],
    wt: &[f32],
    dz: &[f32],
    need_w: bool,
    imgs: Range<usize>,
    dx: &mut [f32],
) -> Vec<f32> {
    let grid = Grid::new(g);
    let t = g.kh * g.kw;
    let t3 = t.next_multiple_of(TT);
    let mut offs3 = grid.offs.clone();
    offs3.resize(t3, 0);
    let mut part = if need_w {
        vec![0f32; g.o * g.c * t3 * L]
    } else {
        Vec::new()
    };
    let wflip = if dx.is_empty() {
        Vec::new()
    } else {
        flipped_weights(g, wt)
    };
    let nx = grid.pin.next_multiple_of(P);
    let (chw, ohw, hw) = (g.chw(), g.ohw(), g.h * g.w);
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        let [xpad, dyz, res] = &mut *s;
        let xpad = grow(xpad, g.c * grid.xs);
        let dyz = grow(dyz, g.o * grid.zs);
        let res = grow(res, g.c * nx);
        for (local, img) in imgs.enumerate() {
            grid.border_grad(g, &dz[img * g.o * ohw..(img + 1) * g.o * ohw], dyz);
            if need_w {
                grid.pad_input(g, &x[img * chw..(img + 1) * chw], xpad);
                let wg = WeightGrad {
                    dy: dyz,
                    zs: grid.zs,
                    shift: grid.shift,
                    x: xpad,
                    xs: grid.xs,
                    c: g.c,
                    o: g.o,
                    offs: &offs3,
                };
                wg.accumulate(grid.len.next_multiple_of(L), &mut part);
            }
            if !dx.is_empty() {
                let corr = Correlation {
                    inp: dyz,
                    is: grid.zs,
                    k: g.o,
                    w: &wflip,
                    jn: g.c,
                    offs: &grid.offs,
                    init: None,
                };
                corr.compute(res, nx, nx);
                let dst = &mut dx[local * chw..(local + 1) * chw];
                for c in 0..g.c {
                    for y in 0..g.h {
                        let from = c * nx + (y + g.p) * grid.pw + g.p;
                        dst[c * hw + y * g.w..c * hw + (y + 1) * g.w].copy_from_slice(&res[from..from + g.w]);
                    }
                }
            }
        }
    });
    if !need_w {
        return Vec::new();
    }
    let mut dw = vec![0f32; g.o * g.c * t];
    for (oc, d) in dw.chunks_exact_mut(t).enumerate() {
        for (k, v) in d.iter_mut().enumerate() {
            let from = (oc * t3 + k) * L;
            *v = part[from..from + L].iter().sum();
        }
    }
    dw
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    /// (b, c, h, w, o, kh, kw, p): LeNet's layers, odd and rectangular maps,
    /// channel counts that leave partial blocks, kernels wider than the map's pad.
    type Shape = (usize, usize, usize, usize, usize, usize, usize, usize);
    const SHAPES: &[Shape] = &[
        (3, 3, 32, 32, 6, 5, 5, 0),
        (3, 6, 14, 14, 16, 5, 5, 0),
        (2, 1, 28, 28, 6, 5, 5, 2),
        (2, 2, 7, 9, 5, 3, 3, 1),
        (2, 16, 5, 6, 32, 3, 3, 1),
        (1, 4, 6, 3, 7, 3, 2, 0),
        (2, 3, 4, 4, 1, 1, 3, 1),
        (2, 5, 3, 8, 9, 3, 5, 2),
        (2, 3, 9, 9, 64, 3, 3, 1),
    ];

    #[test]
    fn direct_kernels_agree_with_im2col_and_gemm() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX2/FMA, so convolutions keep im2col + gemm");
            return;
        }
        for &(b, c, h, w, o, kh, kw, p) in SHAPES {
            let g = Geo::new(c, h, w, o, kh, kw, 1, p).unwrap();
            assert!(g.direct(), "{g:?} should take the direct kernels");
            let what = format!("b{b} c{c} {h}x{w} o{o} k{kh}x{kw} p{p}");
            let x = values(b * g.chw(), 1);
            let wt = values(o * g.ckk(), 2);
            let bias = values(o, 3);
            let dz = values(b * o * g.ohw(), 4);
            for act in [Activation::Identity, Activation::Relu, Activation::Relu6] {
                let n = b * o * g.ohw();
                let (mut want, mut got) = (vec![0f32; n], vec![f32::NAN; n]);
                super::super::forward_part(&g, &x, &wt, Some(&bias), act, 0..b, &mut want, gemm::Parallelism::None)
                    .unwrap();
                forward_part(&g, &x, &wt, Some(&bias), act, 0..b, &mut got);
                assert!(max_rel_diff(&got, &want) < 1e-5, "forward {what} {act:?}");
                forward_part(&g, &x, &wt, None, act, 0..b, &mut got);
                super::super::forward_part(&g, &x, &wt, None, act, 0..b, &mut want, gemm::Parallelism::None).unwrap();
                assert!(max_rel_diff(&got, &want) < 1e-5, "forward without bias {what} {act:?}");
            }
            // Both gradients, then each alone; images 1.. only, so the image offset counts.
            for (need_w, need_x) in [(true, true), (true, false), (false, true)] {
                let imgs = usize::from(b > 1)..b;
                let nx = if need_x { imgs.len() * g.chw() } else { 0 };
                let (mut want_dx, mut got_dx) = (vec![0f32; nx], vec![f32::NAN; nx]);
                let want_dw = super::super::backward_part(
                    &g,
                    &x,
                    &wt,
                    &dz,
                    need_w,
                    imgs.clone(),
                    &mut want_dx,
                    gemm::Parallelism::None,
                )
                .unwrap();
                let got_dw = backward_part(&g, &x, &wt, &dz, need_w, imgs, &mut got_dx);
                assert_eq!(got_dw.len(), want_dw.len(), "{what}");
                assert!(max_rel_diff(&got_dw, &want_dw) < 1e-5, "dw {what}");
                assert!(max_rel_diff(&got_dx, &want_dx) < 1e-5, "dx {what}");
            }
        }
    }

    #[test]
    fn channel_blocks_are_even_and_cover_every_channel() {
        let sizes = |n| channel_blocks(n, 4).map(|r| r.len()).collect::<Vec<_>>();
        assert_eq!(sizes(6), [3, 3]);
        assert_eq!(sizes(16), [4, 4, 4, 4]);
        assert_eq!(sizes(10), [4, 3, 3]);
        assert_eq!(sizes(1), [1]);
        for n in 1..40 {
            let blocks: Vec<_> = channel_blocks(n, MAX_J).collect();
            assert_eq!(blocks.first().map(|r| r.start), Some(0));
            assert!(blocks.windows(2).all(|w| w[0].end == w[1].start));
            assert_eq!(blocks.last().map(|r| r.end), Some(n));
            assert!(blocks.iter().all(|r| (1..=MAX_J).contains(&r.len())));
        }
    }

    /// Not a test: times both paths at the workloads' shapes, to set [`Geo::direct`].
    /// `cargo test --release -p digitlab-kernels direct_vs_im2col_timings -- --ignored --nocapture`
    #[test]
    #[ignore = "timings, run by hand"]
    fn direct_vs_im2col_timings() {
        assert!(available(), "the direct kernels need AVX2 and FMA");
        use std::time::Instant;
        let time = |f: &mut dyn FnMut()| {
            f();
            let start = Instant::now();
            let mut n = 0;
            while start.elapsed().as_secs_f64() < 0.3 {
                f();
                n += 1;
            }
            start.elapsed().as_secs_f64() * 1e3 / f64::from(n)
        };
        println!("shape | forward im2col / direct ms | backward im2col / direct ms");
        for &(b, c, h, o, k, p) in &[
            (32usize, 3usize, 32usize, 6usize, 5usize, 0usize),
            (32, 6, 14, 16, 5, 0),
            (32, 3, 32, 16, 3, 1),
            (32, 3, 32, 32, 3, 1),
            (32, 16, 16, 16, 3, 1),
            (32, 16, 16, 32, 3, 1),
            (32, 16, 8, 32, 3, 1),
            (32, 32, 8, 32, 3, 1),
            (32, 3, 32, 64, 3, 1),
        ] {
            let g = Geo::new(c, h, h, o, k, k, 1, p).unwrap();
            let x = values(b * g.chw(), 1);
            let wt = values(o * g.ckk(), 2);
            let dz = values(b * o * g.ohw(), 4);
            let mut out = vec![0f32; b * o * g.ohw()];
            let mut dx = vec![0f32; b * g.chw()];
            let par = gemm::Parallelism::None;
            let f_gemm = time(&mut || {
                super::super::forward_part(&g, &x, &wt, None, Activation::Relu, 0..b, &mut out, par).unwrap()
            });
            let f_direct = time(&mut || forward_part(&g, &x, &wt, None, Activation::Relu, 0..b, &mut out));
            let b_gemm = time(&mut || {
                super::super::backward_part(&g, &x, &wt, &dz, true, 0..b, &mut dx, par).unwrap();
            });
            let b_direct = time(&mut || {
                backward_part(&g, &x, &wt, &dz, true, 0..b, &mut dx);
            });
            println!("b{b} c{c} h{h} o{o} k{k} | {f_gemm:.3} / {f_direct:.3} | {b_gemm:.3} / {b_direct:.3}");
        }
    }
}
