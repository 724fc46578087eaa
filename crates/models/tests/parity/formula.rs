//! The formula sequence both parity fixtures' weights are made of (see
//! `make_fixtures.py`), and the comparison they use.
use candle_core::Tensor;

/// Relative tolerance: max |got - want| / max |want|.
pub const TOL: f32 = 1e-4;

/// `s(i) = sin(2 pi k / 2^32)`, `k = (j^2 * 40503 + j * 2654435761 + h * 12345) mod 2^32`, `j = i + 1`.
pub fn hashed_sin(n: usize, h: u64) -> Vec<f64> {
    let c = h * 12345;
    (0..n as u64)
        .map(|i| {
            let j = i + 1;
            let k = j
                .wrapping_mul(j)
                .wrapping_mul(40503)
                .wrapping_add(j.wrapping_mul(2654435761))
                .wrapping_add(c)
                & 0xFFFF_FFFF;
            (2.0 * std::f64::consts::PI * k as f64 / 4294967296.0).sin()
        })
        .collect()
}

/// max |got - want| / max |want|.
pub fn rel_err(got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.dims(), want.dims());
    let diff: f32 = (got - want)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    let scale: f32 = want.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
    diff / scale.max(1e-12)
}
