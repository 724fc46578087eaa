//! ReLU as one op: one pass forward, one pass backward.
//!
//! candle's backward of `relu` builds `arg >= 0` as a u8 mask, converts it to
//! floats and multiplies: three passes and three allocations. The gradient here is
//! the same (`grad` where `arg >= 0`, else 0), in one pass.
use crate::cpu::{self, all_cpu_f32, f32_data, View};
use crate::threading::for_each_chunk;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

/// `max(x, 0)`; CPU f32 tensors use the kernel, others candle's `relu`.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if all_cpu_f32(&[x]) {
        crate::runtime::init();
        x.apply_op1(ReluOp)
    } else {
        x.relu()
    }
}

struct ReluOp;

impl CustomOp1 for ReluOp {
    fn name(&self) -> &'static str {
        "digitlab-relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu::contiguous(f32_data(s, "relu")?, l)?;
        let mut out = cpu::zeros(x.len());
        for_each_chunk(&mut out, |start, chunk| {
            for (o, v) in chunk.iter_mut().zip(&x[start..]) {
                *o = v.max(0.0);
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (arg, grad) = (arg.contiguous()?, grad.contiguous()?);
        let (a, g) = (View::new(&arg, "relu backward")?, View::new(&grad, "relu backward")?);
        let (a, g) = (a.get(), g.get());
        if a.len() != g.len() {
            candle_core::bail!("relu backward: gradient has {} values for {} inputs", g.len(), a.len())
        }
        let mut out = cpu::zeros(a.len());
        for_each_chunk(&mut out, |start, chunk| {
            for ((o, &x), &g) in chunk.iter_mut().zip(&a[start..]).zip(&g[start..]) {
                *o = if x >= 0.0 { g } else { 0.0 };
            }
        });
        Ok(Some(cpu::tensor(out, arg.shape().clone())?))
    }
}
