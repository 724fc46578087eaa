//! The formula sequence both parity fixtures' weights are made of (see
//! `make_fixtures.py`), and the comparison they use.
use candle_core::Tensor;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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

/// A file of `tests/parity/`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/parity").join(name)
}

/// State-dict keys and shapes per model from a fixture of `model key d0xd1x...` lines.
pub fn read_keys(name: &str) -> BTreeMap<String, BTreeMap<String, Vec<usize>>> {
    let text = std::fs::read_to_string(fixture(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"));
    let mut out: BTreeMap<String, BTreeMap<String, Vec<usize>>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut parts = line.split_whitespace();
        let (model, key, shape) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
        let shape = shape.split('x').map(|d| d.parse().unwrap()).collect();
        out.entry(model.to_string()).or_default().insert(key.to_string(), shape);
    }
    out
}
