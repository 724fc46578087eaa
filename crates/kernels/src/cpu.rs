//! Access to the f32 data of CPU storages and tensors (crate-private helpers).
use crate::sgemm::{self, Product, Strided};
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, DType, Layout, Result, Storage, Tensor};
use std::borrow::Cow;

/// Whether the fast CPU path applies: every tensor on the CPU with dtype f32.
pub(crate) fn all_cpu_f32(ts: &[&Tensor]) -> bool {
    ts.iter().all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// The f32 values of a CPU storage.
pub(crate) fn f32_data<'a>(s: &'a CpuStorage, op: &str) -> Result<&'a [f32]> {
    match s {
        CpuStorage::F32(v) => Ok(v.as_slice()),
        other => bail!("{op}: expected f32 data, got {:?}", other.dtype()),
    }
}

/// The elements of `l` over `s`, in row-major order: borrowed when contiguous,
/// gathered otherwise.
pub(crate) fn contiguous<'a, T: Copy>(s: &'a [T], l: &Layout) -> Result<Cow<'a, [T]>> {
    if let Some((a, b)) = l.contiguous_offsets() {
        if b > s.len() {
            bail!("layout {l:?} does not fit a storage of {} elements", s.len())
        }
        return Ok(Cow::Borrowed(&s[a..b]));
    }
    let (dims, stride) = (l.dims(), l.stride());
    let n = l.shape().elem_count();
    let max = l.start_offset()
        + dims
            .iter()
            .zip(stride)
            .map(|(d, s)| d.saturating_sub(1) * s)
            .sum::<usize>();
    if n > 0 && max >= s.len() {
        bail!("layout {l:?} does not fit a storage of {} elements", s.len())
    }
    let mut out = Vec::with_capacity(n);
    let mut index = vec![0usize; dims.len()];
    let mut offset = l.start_offset();
    for _ in 0..n {
        out.push(s[offset]);
        // Odometer increment over the multi-index, last dimension fastest.
        for d in (0..dims.len()).rev() {
            index[d] += 1;
            offset += stride[d];
            if index[d] < dims[d] {
                break;
            }
            offset -= stride[d] * dims[d];
            index[d] = 0;
        }
    }
    Ok(Cow::Owned(out))
}

/// A CPU f32 tensor of `shape` from `v`.
pub(crate) fn tensor(v: Vec<f32>, shape: impl Into<candle_core::Shape>) -> Result<Tensor> {
    Tensor::from_vec(v, shape, &candle_core::Device::Cpu)
}

/// `n` zeros.
pub(crate) fn zeros(n: usize) -> Vec<f32> {
    vec![0f32; n]
}

/// A new row-major `m x n` matrix `lhs @ rhs`, written by the product without first
/// zero-filling the buffer (one pass over the output instead of two).
pub(crate) fn gemm_new(m: usize, n: usize, k: usize, lhs: Mat, rhs: Mat, par: gemm::Parallelism) -> Result<Vec<f32>> {
    let len = m * n;
    if len == 0 || k == 0 {
        return Ok(zeros(len));
    }
    if !lhs.fits(m, k) || !rhs.fits(k, n) {
        bail!("gemm {m}x{k} @ {k}x{n}: an operand does not fit its buffer")
    }
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let dst = Strided {
        ptr: out.spare_capacity_mut().as_mut_ptr().cast::<f32>(),
        rs: n,
        cs: 1,
    };
    // SAFETY: the operands were bounds-checked above; the destination is the
    // `m * n` distinct elements of `out`'s allocation. Without accumulation neither
    // backend reads the destination, and every path stores each of its elements, so
    // all of them are initialised when it returns, and only then is the length set.
    let p = Product {
        m,
        n,
        k,
        c: dst,
        accumulate: false,
        a: lhs.strided(),
        b: rhs.strided(),
    };
    unsafe {
        sgemm::product(p, sgemm::threads_of(par));
        out.set_len(len);
    }
    Ok(out)
}

/// Row-major f32 values of a contiguous CPU tensor, holding its storage's read lock.
pub(crate) struct View<'a> {
    guard: candle_core::StorageRef<'a>,
    range: std::ops::Range<usize>,
}

impl<'a> View<'a> {
    /// `t` must be a contiguous CPU f32 tensor (call `.contiguous()` first).
    pub(crate) fn new(t: &'a Tensor, op: &str) -> Result<Self> {
        let (guard, l) = t.storage_and_layout();
        let Some((a, b)) = l.contiguous_offsets() else {
            bail!("{op}: expected a contiguous tensor")
        };
        match &*guard {
            Storage::Cpu(CpuStorage::F32(v)) if b <= v.len() => {}
            Storage::Cpu(CpuStorage::F32(_)) => bail!("{op}: layout does not fit its storage"),
            _ => bail!(
                "{op}: expected a CPU f32 tensor, got {:?} on {:?}",
                t.dtype(),
                t.device().location()
            ),
        }
        Ok(Self { guard, range: a..b })
    }

    pub(crate) fn get(&self) -> &[f32] {
        match &*self.guard {
            Storage::Cpu(CpuStorage::F32(v)) => &v[self.range.clone()],
            _ => &[],
        }
    }
}

/// A strided matrix operand of [`gemm`]: element `(i, j)` is `data[off + i*rs + j*cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    pub data: &'a [f32],
    pub off: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    pub(crate) fn new(data: &'a [f32], off: usize, rs: usize, cs: usize) -> Self {
        Self { data, off, rs, cs }
    }
    /// Row-major `rows x cols` matrix at the start of `data`.
    pub(crate) fn rows(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            off: 0,
            rs: cols,
            cs: 1,
        }
    }
    /// The operand by address, for [`sgemm::product`].
    fn strided(&self) -> Strided<*const f32> {
        Strided {
            ptr: self.data[self.off.min(self.data.len())..].as_ptr(),
            rs: self.rs,
            cs: self.cs,
        }
    }
    /// Whether every element of a `rows x cols` view lies inside `data`.
    fn fits(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || self.off + (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len()
    }
}

/// `dst = lhs @ rhs` (or `dst += lhs @ rhs` with `accumulate`) for an `m x k` lhs
/// and a `k x n` rhs, with `dst` element `(i, j)` at `dst_off + i*dst_rs + j*dst_cs`.
/// Bounds are checked before the (unsafe) call into [`sgemm::product`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_off: usize,
    dst_rs: usize,
    dst_cs: usize,
    accumulate: bool,
    lhs: Mat,
    rhs: Mat,
    par: gemm::Parallelism,
) -> Result<()> {
    if m == 0 || n == 0 {
        return Ok(());
    }
    let dst_fits = dst_off + (m - 1) * dst_rs + (n - 1) * dst_cs < dst.len();
    if !dst_fits || !lhs.fits(m, k) || !rhs.fits(k, n) {
        bail!("gemm {m}x{k} @ {k}x{n}: an operand does not fit its buffer")
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    dst[dst_off + i * dst_rs + j * dst_cs] = 0.0;
                }
            }
        }
        return Ok(());
    }
    // Distinct destination elements: one stride spans the other dimension.
    if m > 1 && n > 1 && dst_rs < n * dst_cs && dst_cs < m * dst_rs {
        bail!("gemm {m}x{k} @ {k}x{n}: destination strides ({dst_rs}, {dst_cs}) overlap")
    }
    let dst_ptr = dst[dst_off..].as_mut_ptr();
    // SAFETY: every element the product reads or writes was checked to be inside
    // its slice above, the destination's are distinct, and `dst` is borrowed
    // mutably, so nothing else aliases it.
    unsafe {
        let c = Strided {
            ptr: dst_ptr,
            rs: dst_rs,
            cs: dst_cs,
        };
        let p = Product {
            m,
            n,
            k,
            c,
            accumulate,
            a: lhs.strided(),
            b: rhs.strided(),
        };
        sgemm::product(p, sgemm::threads_of(par));
    }
    Ok(())
}

/// The gradient at the input of a fused activation: `grad` itself for the identity,
/// `grad` where the (forward) output `res` lets it through otherwise
/// ([`crate::Activation::passes`]). `None` means "use `grad` unchanged" (no copy).
pub(crate) fn activation_grad(
    act: crate::Activation,
    grad: &[f32],
    res: &Tensor,
    op: &str,
) -> Result<Option<Vec<f32>>> {
    match act {
        crate::Activation::Identity => Ok(None),
        crate::Activation::Relu | crate::Activation::Relu6 => {
            let res = res.contiguous()?;
            let r = View::new(&res, op)?;
            Ok(Some(
                grad.iter()
                    .zip(r.get())
                    .map(|(&g, &y)| if act.passes(y) { g } else { 0.0 })
                    .collect(),
            ))
        }
    }
}
