//! Fixtures shared by digitlab's test suites (a dev-dependency only).
//!
//! [`mat`]: the one MATLAB level-5 `.mat` writer of the tests (SVHN-layout files,
//! compressed or not, and hand-made elements for malformed-input tests).
pub mod mat;
