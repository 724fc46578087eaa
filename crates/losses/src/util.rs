//! Input validation shared by the loss modules (crate-private).

use candle_core::{DType, Tensor};

use crate::error::{dtype_name, LossError, Result};

/// Checks that `t` is a floating point tensor. Half precision inputs (`f16`, `bf16`)
/// are upcast to `f32` (the cast is differentiable), so the loss is computed in at
/// least single precision; `f32` and `f64` are used as is.
pub(crate) fn float_input(op: &'static str, name: &str, t: &Tensor) -> Result<Tensor> {
    match t.dtype() {
        DType::F32 | DType::F64 => Ok(t.clone()),
        DType::F16 | DType::BF16 => Ok(t.to_dtype(DType::F32)?),
        other => Err(LossError::dtype(
            op,
            format!(
                "{name} must be a floating point tensor (f32 or f64), got {}",
                dtype_name(other)
            ),
        )),
    }
}

/// Checks that `target` is floating point and casts it to `dtype` (the prediction's).
pub(crate) fn float_target(op: &'static str, name: &str, t: &Tensor, dtype: DType) -> Result<Tensor> {
    if !t.dtype().is_float() {
        return Err(LossError::dtype(
            op,
            format!("{name} must be a floating point tensor, got {}", dtype_name(t.dtype())),
        ));
    }
    if t.dtype() == dtype {
        Ok(t.clone())
    } else {
        Ok(t.to_dtype(dtype)?)
    }
}

/// Requires `a` and `b` to have exactly the same shape (no implicit broadcasting: a
/// `[B]` target against a `[B, 1]` prediction would silently broadcast to `[B, B]`).
pub(crate) fn same_shape(op: &'static str, a_name: &str, a: &Tensor, b_name: &str, b: &Tensor) -> Result<()> {
    if a.dims() != b.dims() {
        return Err(LossError::shape(
            op,
            format!(
                "{a_name} and {b_name} must have the same shape, got {:?} and {:?}",
                a.dims(),
                b.dims()
            ),
        ));
    }
    Ok(())
}

/// Requires a rank-2 `[batch, classes]` tensor with `batch, classes >= 1` and returns
/// `(batch, classes)`.
pub(crate) fn batch_classes(op: &'static str, name: &str, t: &Tensor) -> Result<(usize, usize)> {
    match *t.dims() {
        [b, c] => {
            if b == 0 {
                return Err(LossError::shape(
                    op,
                    format!("{name} must have a non-empty batch, got {:?}", t.dims()),
                ));
            }
            if c == 0 {
                return Err(LossError::shape(
                    op,
                    format!("{name} must have at least one class, got {:?}", t.dims()),
                ));
            }
            Ok((b, c))
        }
        _ => Err(LossError::shape(
            op,
            format!("{name} must be [batch, classes], got {:?}", t.dims()),
        )),
    }
}

/// Validates integer class labels: shape `[batch]`, dtype `u32` or `i64`, every value in
/// `0..num_classes`. Returns the labels as a contiguous `[batch, 1]` tensor ready for
/// `gather` along dim 1.
///
/// The range check copies the labels to the host: an out-of-range label would otherwise
/// be silently mapped to 0 or read out of bounds on some backends.
pub(crate) fn class_labels(op: &'static str, labels: &Tensor, batch: usize, num_classes: usize) -> Result<Tensor> {
    let values = label_values(op, labels)?;
    if values.len() != batch {
        return Err(LossError::shape(
            op,
            format!(
                "labels must be [batch] = [{batch}] to match the batch size, got {:?}",
                labels.dims()
            ),
        ));
    }
    check_range(op, &values, num_classes)?;
    Ok(labels.reshape((batch, 1))?.contiguous()?)
}

/// Checks dtype (`u32`/`i64`) and rank (1) of a label tensor and returns its values.
pub(crate) fn label_values(op: &'static str, labels: &Tensor) -> Result<Vec<i64>> {
    match labels.dtype() {
        DType::U32 | DType::I64 => {}
        other => {
            return Err(LossError::dtype(
                op,
                format!(
                    "labels must be an integer tensor of dtype u32 or i64, got {}",
                    dtype_name(other)
                ),
            ))
        }
    }
    if labels.rank() != 1 {
        return Err(LossError::shape(
            op,
            format!("labels must be [batch], got {:?}", labels.dims()),
        ));
    }
    Ok(labels.to_dtype(DType::I64)?.to_vec1::<i64>()?)
}

/// Every value must lie in `0..num_classes`.
pub(crate) fn check_range(op: &'static str, values: &[i64], num_classes: usize) -> Result<()> {
    for (index, &label) in values.iter().enumerate() {
        if label < 0 || label as u64 >= num_classes as u64 {
            return Err(LossError::LabelOutOfRange {
                op,
                label,
                index,
                num_classes,
            });
        }
    }
    Ok(())
}

/// Number of non-zero entries of a comparison mask (`u8` tensor).
pub(crate) fn count_nonzero(mask: &Tensor) -> Result<usize> {
    let n = mask.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
    Ok(n as usize)
}
