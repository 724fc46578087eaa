//! Bilinear resizing of f32 CHW images.
//!
//! Hand-written rather than using the `image` crate because that works on u8/u16
//! interleaved buffers and uses different sampling; this one reproduces PyTorch's
//! `F.interpolate(mode="bilinear", align_corners=False, antialias=False)`, which
//! pretrained backbones' preprocessing is checked against.

/// Source coordinate and weights along one axis, PyTorch's half-pixel convention.
fn axis_weights(in_len: usize, out_len: usize) -> Vec<(usize, usize, f32)> {
    let scale = in_len as f32 / out_len as f32;
    (0..out_len)
        .map(|o| {
            let src = ((o as f32 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(in_len - 1);
            let i1 = (i0 + 1).min(in_len - 1);
            (i0, i1, src - i0 as f32)
        })
        .collect()
}

/// Resizes `src` (channels x in_h x in_w) into `dst` (channels x out_h x out_w).
pub fn resize_bilinear(
    src: &[f32],
    channels: usize,
    in_h: usize,
    in_w: usize,
    out_h: usize,
    out_w: usize,
    dst: &mut [f32],
) {
    assert_eq!(src.len(), channels * in_h * in_w, "resize_bilinear: source length");
    assert_eq!(
        dst.len(),
        channels * out_h * out_w,
        "resize_bilinear: destination length"
    );
    let ys = axis_weights(in_h, out_h);
    let xs = axis_weights(in_w, out_w);
    for c in 0..channels {
        let plane = &src[c * in_h * in_w..(c + 1) * in_h * in_w];
        let out = &mut dst[c * out_h * out_w..(c + 1) * out_h * out_w];
        for (oy, &(y0, y1, wy)) in ys.iter().enumerate() {
            let (r0, r1) = (&plane[y0 * in_w..(y0 + 1) * in_w], &plane[y1 * in_w..(y1 + 1) * in_w]);
            for (ox, &(x0, x1, wx)) in xs.iter().enumerate() {
                let top = r0[x0] + (r0[x1] - r0[x0]) * wx;
                let bottom = r1[x0] + (r1[x1] - r1[x0]) * wx;
                out[oy * out_w + ox] = top + (bottom - top) * wy;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_and_constant_images() {
        let src: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let mut dst = vec![0.0; 12];
        resize_bilinear(&src, 1, 3, 4, 3, 4, &mut dst);
        assert_eq!(src, dst);
        let mut big = vec![0.0; 2 * 7 * 9];
        resize_bilinear(&[0.5; 2 * 2 * 2], 2, 2, 2, 7, 9, &mut big);
        assert!(big.iter().all(|v| (v - 0.5).abs() < 1e-7));
    }

    #[test]
    fn matches_pytorch_2x_upsample() {
        // torch.nn.functional.interpolate(torch.tensor([[[[0., 1.], [2., 3.]]]]), size=(4, 4),
        //     mode="bilinear", align_corners=False)
        let expected = [
            0.0, 0.25, 0.75, 1.0, 0.5, 0.75, 1.25, 1.5, 1.5, 1.75, 2.25, 2.5, 2.0, 2.25, 2.75, 3.0,
        ];
        let mut dst = vec![0.0; 16];
        resize_bilinear(&[0.0, 1.0, 2.0, 3.0], 1, 2, 2, 4, 4, &mut dst);
        for (a, b) in dst.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{dst:?}");
        }
    }
}
