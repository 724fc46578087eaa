//! Pretrained weights compiled into the crate, so a fresh machine has one real
//! pretrained network with no download and no environment variable.
//!
//! | source string | file | model | license |
//! | --- | --- | --- | --- |
//! | `builtin:ccexam-svhn-cnn.safetensors` | `assets/weights/ccexam-svhn-cnn.safetensors` (3.2 MB) | `ccexam_svhn_cnn` | MIT, `assets/weights/LICENSE-ccexam` |
//!
//! `builtin:` acts as a folder: `builtin:NAME` and `builtin:/NAME` name the same
//! file, so a config can write `"${DIGITLAB_WEIGHTS:-builtin:}/ccexam-svhn-cnn.safetensors"`
//! (the file in `$DIGITLAB_WEIGHTS` when that is set, else the built-in copy).
//! The bytes are embedded with `include_bytes!` (the file lies inside this crate, so
//! an installed binary or a crate used outside this workspace has it too) and read
//! from memory; nothing is written to disk.
use sha2::{Digest, Sha256};

use crate::error::{FinetuneError, Result};

/// One file of built-in weights.
#[derive(Debug, Clone, Copy)]
pub struct BuiltinWeights {
    /// File name, the `NAME` of `builtin:NAME`.
    pub file: &'static str,
    /// The [`crate::zoo`] model the weights are for.
    pub model: &'static str,
    /// Where the weights come from.
    pub origin: &'static str,
    /// Full license text.
    pub license: &'static str,
    /// The safetensors file.
    pub bytes: &'static [u8],
}

impl BuiltinWeights {
    /// SHA-256 of [`BuiltinWeights::bytes`], hex (the same as the file's `sha256sum`).
    pub fn sha256(&self) -> String {
        hex::encode(Sha256::digest(self.bytes))
    }
}

/// Every built-in weights file.
pub const BUILTIN_WEIGHTS: &[BuiltinWeights] = &[BuiltinWeights {
    file: "ccexam-svhn-cnn.safetensors",
    model: "ccexam_svhn_cnn",
    origin: "the SVHN CNN of PyPI ccexam 1.0.0 (svhn.pth), trained on SVHN cropped digits; \
             FYS-8805-Collaborative-Coding, MIT",
    license: include_str!("../assets/weights/LICENSE-ccexam"),
    bytes: include_bytes!("../assets/weights/ccexam-svhn-cnn.safetensors"),
}];

/// The built-in file named `name` (`ccexam-svhn-cnn.safetensors`; a leading `/` is
/// ignored), or an error listing the built-in files.
pub fn find(name: &str) -> Result<&'static BuiltinWeights> {
    let name = name.trim().trim_start_matches('/');
    BUILTIN_WEIGHTS.iter().find(|w| w.file == name).ok_or_else(|| {
        let valid: Vec<String> = BUILTIN_WEIGHTS.iter().map(|w| format!("builtin:{}", w.file)).collect();
        FinetuneError::InvalidSource {
            input: format!("builtin:{name}"),
            reason: format!("no built-in weights of that name; built in: {}", valid.join(", ")),
        }
    })
}

/// The built-in weights for model `model` (a canonical [`crate::zoo`] name), if any.
pub fn for_model(model: &str) -> Option<&'static BuiltinWeights> {
    BUILTIN_WEIGHTS.iter().find(|w| w.model == model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_file_is_the_published_one() {
        let w = find("ccexam-svhn-cnn.safetensors").unwrap();
        assert_eq!(
            w.sha256(),
            "33a24cd532ba63944f9bd584edfed63907d3e1db6e81a2b0edf16b0fae5eb178"
        );
        assert_eq!(find("/ccexam-svhn-cnn.safetensors").unwrap().file, w.file);
        assert!(w.license.starts_with("MIT License"));
        assert_eq!(for_model("ccexam_svhn_cnn").unwrap().file, w.file);
        let e = find("resnet18.safetensors").unwrap_err().to_string();
        assert!(e.contains("builtin:ccexam-svhn-cnn.safetensors"), "{e}");
    }
}
