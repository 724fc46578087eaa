//! Shared helpers for the integration tests that use real data.
use std::path::PathBuf;

/// The data directory given by `DIGITLAB_DATA` (these tests only run when it is set).
pub fn data_dir() -> PathBuf {
    PathBuf::from(std::env::var_os("DIGITLAB_DATA").expect("DIGITLAB_DATA is set when these tests are compiled in"))
}
