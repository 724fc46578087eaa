//! Fused linear layer: `act(x @ w^T + b)` in one op.
//!
//! candle's `Linear` is `x.matmul(&w.t())` then `broadcast_add(b)`; its backward
//! produces the weight gradient as a transposed view, which candle then adds into
//! the zero gradient element by element through strided indexing, and it always
//! computes the input gradient, even for the first layer whose input is data. Here
//! one op computes the product with the bias as the gemm's initial value and the
//! activation applied in place; the backward masks the incoming gradient once and
//! computes `dW` in `[out, in]` layout, `db`, and `dx` only for the inputs that need
//! them (`Tensor::track_op`).
use crate::cpu::{self, all_cpu_f32, f32_data, Mat, View};
use crate::precision::{cast_like, cast_opt_like, widen};
use crate::threading::gemm_parallelism;
use crate::Activation;
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

/// `act(x @ w^T + b)` for `x` `[batch, in]` (or `[.., batch, in]`), `w` `[out, in]`,
/// `b` `[out]`.
///
/// CPU f32 tensors take the fused kernel (inputs of rank > 2 when contiguous, by
/// folding the leading dimensions into the batch, as candle_nn's `Linear` does);
/// anything else (other devices or dtypes) runs candle_nn's `Linear` composition
/// (`x.matmul(&w.t())`, `broadcast_add`) followed by the activation.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>, act: Activation) -> Result<Tensor> {
    if crate::precision::is_half(x.dtype()) {
        let (w, b) = (cast_like(w, x)?, cast_opt_like(b, x)?);
        if x.device().is_cpu() {
            // candle's CPU matmul widens half inputs to f32 anyway: do it once and
            // use the fused kernel.
            let (x32, w32, b32) = widen(x, &w, b.as_ref())?;
            return linear(&x32, &w32, b32.as_ref(), act)?.to_dtype(x.dtype());
        }
        return linear_reference(x, &w, b.as_ref(), act);
    }
    let mut ts = vec![x, w];
    ts.extend(b);
    let foldable = x.rank() == 2 || (x.rank() > 2 && x.is_contiguous());
    if foldable && w.rank() == 2 && all_cpu_f32(&ts) {
        crate::runtime::init();
        let k = x.dim(candle_core::D::Minus1)?;
        let (n, kw) = w.dims2()?;
        if k != kw {
            bail!("linear: input has {k} features but the weight is {:?}", w.dims())
        }
        if let Some(b) = b {
            if b.dims() != [n] {
                bail!("linear: bias must be [{n}], got {:?}", b.dims())
            }
        }
        let x2 = if x.rank() == 2 { x.clone() } else { x.reshape(((), k))? };
        let y = match b {
            Some(b) => x2.apply_op3(w, b, LinearOp { act })?,
            None => x2.apply_op2(w, LinearNoBiasOp { act })?,
        };
        if x.rank() == 2 {
            return Ok(y);
        }
        let mut dims = x.dims().to_vec();
        *dims.last_mut().expect("rank > 2") = n;
        return y.reshape(dims);
    }
    linear_reference(x, w, b, act)
}

/// candle_nn's `Linear::forward` followed by `act`: the path for non-CPU devices and
/// the reference the kernel is tested against.
pub fn linear_reference(x: &Tensor, w: &Tensor, b: Option<&Tensor>, act: Activation) -> Result<Tensor> {
    let y = match *x.dims() {
        [b1, b2, m, k] if x.is_contiguous() => {
            x.reshape((b1 * b2 * m, k))?.matmul(&w.t()?)?.reshape((b1, b2, m, ()))?
        }
        [b1, b2, _, _] => x.matmul(&w.broadcast_left((b1, b2))?.t()?)?,
        [bsize, m, k] if x.is_contiguous() => x.reshape((bsize * m, k))?.matmul(&w.t()?)?.reshape((bsize, m, ()))?,
        [bsize, _, _] => x.matmul(&w.broadcast_left(bsize)?.t()?)?,
        _ => x.matmul(&w.t()?)?,
    };
    let y = match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    act.apply_reference(&y)
}

struct LinearOp {
    act: Activation,
}

struct LinearNoBiasOp {
    act: Activation,
}

type Operand<'a> = (&'a CpuStorage, &'a Layout);

fn forward(x: Operand, w: Operand, b: Option<Operand>, act: Activation) -> Result<(CpuStorage, Shape)> {
    const OP: &str = "linear";
    let (bsz, k) = x.1.shape().dims2()?;
    let (n, kw) = w.1.shape().dims2()?;
    if k != kw {
        bail!("{OP}: input has {k} features but the weight is [{n}, {kw}]")
    }
    let (xd, wd) = (f32_data(x.0, OP)?, f32_data(w.0, OP)?);
    let (xs, ws) = (x.1.stride(), w.1.stride());
    let lhs = Mat::new(xd, x.1.start_offset(), xs[0], xs[1]);
    // w^T: element (i, j) of the [in, out] matrix is w[j, i].
    let rhs = Mat::new(wd, w.1.start_offset(), ws[1], ws[0]);
    let par = gemm_parallelism(bsz, n, k);
    let mut out = match b {
        // The bias rows are the gemm's initial value.
        Some((bs, bl)) => {
            let bias = cpu::contiguous(f32_data(bs, OP)?, bl)?;
            if bias.len() != n {
                bail!("{OP}: bias has {} values for {n} outputs", bias.len())
            }
            let mut out = Vec::with_capacity(bsz * n);
            for _ in 0..bsz {
                out.extend_from_slice(&bias);
            }
            cpu::gemm(bsz, n, k, &mut out, 0, n, 1, true, lhs, rhs, par)?;
            out
        }
        None => cpu::gemm_new(bsz, n, k, lhs, rhs, par)?,
    };
    act.apply_in_place(&mut out);
    Ok((CpuStorage::F32(out), Shape::from((bsz, n))))
}

/// `(dx, dw, db)` of `y = act(x @ w^T + b)` given `grad = dL/dy`; each only when
/// the corresponding input tracks gradients.
fn backward(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    res: &Tensor,
    grad: &Tensor,
    act: Activation,
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    const OP: &str = "linear backward";
    let (bsz, k) = x.dims2()?;
    let (n, _) = w.dims2()?;
    let grad = grad.contiguous()?;
    let g = View::new(&grad, OP)?;
    // dz = dL/d(x w^T + b): the incoming gradient where the ReLU was active.
    let masked = cpu::activation_grad(act, g.get(), res, OP)?;
    let dz: &[f32] = masked.as_deref().unwrap_or(g.get());
    if dz.len() != bsz * n {
        bail!("{OP}: gradient has {} values for a [{bsz}, {n}] output", dz.len())
    }

    let db = match b {
        Some(b) if b.track_op() => {
            let mut db = vec![0f32; n];
            for row in dz.chunks_exact(n) {
                for (d, v) in db.iter_mut().zip(row) {
                    *d += v;
                }
            }
            Some(cpu::tensor(db, n)?)
        }
        _ => None,
    };
    let dw = if w.track_op() {
        let x = x.contiguous()?;
        let xv = View::new(&x, OP)?;
        // dW [n, k] = dz^T [n, bsz] @ x [bsz, k].
        let dw = cpu::gemm_new(
            n,
            k,
            bsz,
            Mat::new(dz, 0, 1, n),
            Mat::rows(xv.get(), k),
            gemm_parallelism(n, k, bsz),
        )?;
        Some(cpu::tensor(dw, (n, k))?)
    } else {
        None
    };
    let dx = if x.track_op() {
        let w = w.contiguous()?;
        let wv = View::new(&w, OP)?;
        // dx [bsz, k] = dz [bsz, n] @ w [n, k].
        let dx = cpu::gemm_new(
            bsz,
            k,
            n,
            Mat::rows(dz, n),
            Mat::rows(wv.get(), k),
            gemm_parallelism(bsz, k, n),
        )?;
        Some(cpu::tensor(dx, (bsz, k))?)
    } else {
        None
    };
    Ok((dx, dw, db))
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "digitlab-linear"
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
        forward((s1, l1), (s2, l2), Some((s3, l3)), self.act)
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        backward(x, w, Some(b), res, grad, self.act)
    }
}

impl CustomOp2 for LinearNoBiasOp {
    fn name(&self) -> &'static str {
        "digitlab-linear-nobias"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        forward((s1, l1), (s2, l2), None, self.act)
    }
    fn bwd(&self, x: &Tensor, w: &Tensor, res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = backward(x, w, None, res, grad, self.act)?;
        Ok((dx, dw))
    }
}
