//! Max pooling with any kernel, stride and padding, forward and backward.
//!
//! candle's CPU `max_pool2d` has a backward pass only when kernel == stride, and no
//! padding. This op takes PyTorch's `nn.MaxPool2d(kernel, stride, padding)`
//! semantics (floor mode, padding never wins) and its backward sends each output's
//! gradient to the first maximal input of its window, as PyTorch does (a NaN in a
//! window is the maximum, like PyTorch).
use crate::cpu::{self, f32_data, View};
use crate::threading::{map_parts_mut, parts, LOOP_SERIAL_MAX_ELEMS};
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

/// Max pooling of `[B, C, H, W]` with a square `kernel`, `stride` and symmetric
/// `padding` (at most `kernel / 2`) to `[B, C, OH, OW]`.
///
/// Needs a CPU f32 tensor, except for `padding == 0`, where other devices and
/// dtypes use candle's own `max_pool2d_with_stride` (whose backward needs
/// `kernel == stride`).
pub fn max_pool2d(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let geo = Geometry::new(h, w, kernel, stride, padding)?;
    if crate::cpu::all_cpu_f32(&[x]) {
        crate::runtime::init();
        return x.apply_op1(MaxPool { geo });
    }
    if padding == 0 {
        return x.max_pool2d_with_stride(kernel, stride);
    }
    bail!(
        "max_pool2d with padding needs a CPU f32 tensor here (got {:?} on {:?})",
        x.dtype(),
        x.device().location()
    )
}

#[derive(Debug, Clone, Copy)]
struct Geometry {
    h: usize,
    w: usize,
    k: usize,
    s: usize,
    p: usize,
    oh: usize,
    ow: usize,
}

impl Geometry {
    fn new(h: usize, w: usize, k: usize, s: usize, p: usize) -> Result<Self> {
        if k == 0 || s == 0 {
            bail!("max_pool2d: kernel and stride must be at least 1, got {k} and {s}")
        }
        if 2 * p > k {
            bail!("max_pool2d: padding {p} must be at most half of kernel {k}")
        }
        if h + 2 * p < k || w + 2 * p < k {
            bail!("max_pool2d: kernel {k} does not fit a {h}x{w} input padded by {p}")
        }
        Ok(Self {
            h,
            w,
            k,
            s,
            p,
            oh: (h + 2 * p - k) / s + 1,
            ow: (w + 2 * p - k) / s + 1,
        })
    }

    /// Input range covered by output `o` along an axis of length `len`.
    #[inline]
    fn range(&self, o: usize, len: usize) -> (usize, usize) {
        let start = (o * self.s) as isize - self.p as isize;
        let end = (start + self.k as isize).min(len as isize);
        (start.max(0) as usize, end.max(0) as usize)
    }

    fn is_2x2(&self) -> bool {
        self.k == 2 && self.s == 2 && self.p == 0
    }

    /// For 2x2 / stride 2: the first maximum of `r0[2ox..2ox+2]`, `r1[2ox..2ox+2]`
    /// (scan order, NaN wins) as (value, offset from the start of `r0`).
    #[inline]
    fn first_max4(&self, r0: &[f32], r1: &[f32], ox: usize) -> (f32, usize) {
        let x0 = 2 * ox;
        let cands = [
            (r0[x0], x0),
            (r0[x0 + 1], x0 + 1),
            (r1[x0], self.w + x0),
            (r1[x0 + 1], self.w + x0 + 1),
        ];
        let mut best = cands[0];
        for &c in &cands[1..] {
            if c.0 > best.0 || (c.0.is_nan() && !best.0.is_nan()) {
                best = c;
            }
        }
        best
    }

    /// Index (within the plane) of the first maximum of output `(oy, ox)`'s window.
    #[inline]
    fn argmax(&self, plane: &[f32], oy: usize, ox: usize) -> usize {
        let (y0, y1) = self.range(oy, self.h);
        let (x0, x1) = self.range(ox, self.w);
        let mut best = y0 * self.w + x0;
        let mut best_v = plane[best];
        for y in y0..y1 {
            for (i, &v) in plane[y * self.w + x0..y * self.w + x1].iter().enumerate() {
                if v > best_v || (v.is_nan() && !best_v.is_nan()) {
                    best_v = v;
                    best = y * self.w + x0 + i;
                }
            }
        }
        best
    }
}

struct MaxPool {
    geo: Geometry,
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "digitlab-max-pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = l.shape().dims4()?;
        let g = self.geo;
        if (h, w) != (g.h, g.w) {
            bail!("max_pool2d: input is {h}x{w}, expected {}x{}", g.h, g.w)
        }
        let x = cpu::contiguous(f32_data(s, "max_pool2d")?, l)?;
        let planes = b * c;
        let (plane_in, plane_out) = (h * w, g.oh * g.ow);
        let mut out = cpu::zeros(planes * plane_out);
        let n_parts = parts(planes, plane_in, LOOP_SERIAL_MAX_ELEMS);
        map_parts_mut(&mut out, plane_out, planes, n_parts, |_, r, part| {
            for (i, p) in r.enumerate() {
                let plane = &x[p * plane_in..(p + 1) * plane_in];
                let dst = &mut part[i * plane_out..(i + 1) * plane_out];
                if g.is_2x2() {
                    // The common 2x2 / stride 2 case: two input rows per output row.
                    for oy in 0..g.oh {
                        let (r0, r1) = (&plane[2 * oy * g.w..], &plane[(2 * oy + 1) * g.w..]);
                        for (ox, d) in dst[oy * g.ow..(oy + 1) * g.ow].iter_mut().enumerate() {
                            *d = plane[g.first_max4(r0, r1, ox).1 + 2 * oy * g.w];
                        }
                    }
                } else {
                    for oy in 0..g.oh {
                        for ox in 0..g.ow {
                            dst[oy * g.ow + ox] = plane[g.argmax(plane, oy, ox)];
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, c, g.oh, g.ow))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        const OP: &str = "max_pool2d backward";
        let (b, c, h, w) = arg.dims4()?;
        let g = self.geo;
        let (arg, grad) = (arg.contiguous()?, grad.contiguous()?);
        let (xv, gv) = (View::new(&arg, OP)?, View::new(&grad, OP)?);
        let (x, gr) = (xv.get(), gv.get());
        let planes = b * c;
        let (plane_in, plane_out) = (h * w, g.oh * g.ow);
        if gr.len() != planes * plane_out {
            bail!(
                "{OP}: gradient has {} values, expected {}",
                gr.len(),
                planes * plane_out
            )
        }
        let n_parts = parts(planes, plane_in, LOOP_SERIAL_MAX_ELEMS);
        let mut dx = cpu::zeros(planes * plane_in);
        map_parts_mut(&mut dx, plane_in, planes, n_parts, |_, r, part| {
            for (i, p) in r.enumerate() {
                let plane = &x[p * plane_in..(p + 1) * plane_in];
                let gp = &gr[p * plane_out..(p + 1) * plane_out];
                let dp = &mut part[i * plane_in..(i + 1) * plane_in];
                for oy in 0..g.oh {
                    if g.is_2x2() {
                        let (r0, r1) = (&plane[2 * oy * g.w..], &plane[(2 * oy + 1) * g.w..]);
                        for ox in 0..g.ow {
                            dp[2 * oy * g.w + g.first_max4(r0, r1, ox).1] += gp[oy * g.ow + ox];
                        }
                    } else {
                        for ox in 0..g.ow {
                            dp[g.argmax(plane, oy, ox)] += gp[oy * g.ow + ox];
                        }
                    }
                }
            }
        });
        Ok(Some(cpu::tensor(dx, (b, c, h, w))?))
    }
}
