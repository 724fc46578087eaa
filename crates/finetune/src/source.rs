//! Where pretrained weights come from: nowhere, the Hugging Face hub, torchvision's
//! published files, a local file, or the copy built into digitlab.
//!
//! [`WeightsSource`] parses from the strings a user types (CLI flags, config files):
//!
//! | string | source |
//! | --- | --- |
//! | `none` (any case) | [`WeightsSource::None`] |
//! | `hf:timm/resnet18.a1_in1k` | hub repo, revision `main`, default file |
//! | `hf:timm/resnet18.a1_in1k@v1.0` | hub repo at a branch, tag or commit hash |
//! | `hf:timm/resnet18.a1_in1k@main:pytorch_model.bin` | ... and a specific file |
//! | `timm/resnet18.a1_in1k` | hub repo too: one `/` and not an existing path |
//! | `torchvision:vgg16`, `torchvision:resnet18`, ... | [`WeightsSource::Torchvision`]: the IMAGENET1K_V1 file via torch.hub's cache ([`crate::torchhub`]) |
//! | `weights/resnet18.safetensors`, `x.pth`, `x.pt`, `x.bin` | [`WeightsSource::Local`] |
//! | `file:some/path` or any existing path | [`WeightsSource::Local`] |
//! | `builtin:ccexam-svhn-cnn.safetensors` (or `builtin:/...`) | [`WeightsSource::Builtin`]: compiled into digitlab ([`crate::builtin`]) |
//!
//! Repo ids, revisions and file names are validated (no `..`, no absolute paths,
//! Hugging Face's repo-id alphabet), because they end up as parts of cache paths.
//! With serde, a `WeightsSource` (de)serialises as that same string.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{FinetuneError, Result};

/// File extensions that make a string a local weights path.
pub const WEIGHT_EXTENSIONS: &[&str] = &["safetensors", "pth", "pt", "bin"];

/// Where to take pretrained weights from.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum WeightsSource {
    /// Train from scratch: no pretrained weights.
    #[default]
    None,
    /// A file in a Hugging Face model repository.
    Hub {
        /// `org/name`, e.g. `timm/resnet18.a1_in1k`.
        repo: String,
        /// Branch, tag or commit hash; `None` means `main`.
        revision: Option<String>,
        /// File inside the repo; `None` means [`crate::hub::DEFAULT_FILE`]
        /// (with [`crate::hub::FALLBACK_FILES`] tried after it).
        file: Option<String>,
    },
    /// A local `.safetensors` or PyTorch checkpoint file.
    Local(PathBuf),
    /// torchvision's published ImageNet weights of `model` (a name of
    /// [`crate::torchhub::TORCHVISION_WEIGHTS`], e.g. `vgg16`).
    Torchvision {
        /// Canonical model name.
        model: String,
    },
    /// Weights compiled into digitlab ([`crate::builtin::BUILTIN_WEIGHTS`]).
    Builtin {
        /// File name, e.g. `ccexam-svhn-cnn.safetensors`.
        file: String,
    },
}

impl WeightsSource {
    /// A hub source for `repo` at its default revision and default file.
    pub fn hub(repo: impl Into<String>) -> Self {
        Self::Hub {
            repo: repo.into(),
            revision: None,
            file: None,
        }
    }

    /// Parses `input`, using `exists` to decide whether a string naming an existing
    /// path is a local file (the [`FromStr`] implementation uses the real file system).
    pub fn parse_with(input: &str, exists: impl Fn(&Path) -> bool) -> Result<Self> {
        let s = input.trim();
        let err = |reason: String| FinetuneError::InvalidSource {
            input: input.to_string(),
            reason,
        };
        if s.is_empty() {
            return Err(err(format!("empty string; {}", accepted_forms())));
        }
        if s.eq_ignore_ascii_case("none") {
            return Ok(Self::None);
        }
        if let Some(rest) = strip_prefix_ci(s, "hf://").or_else(|| strip_prefix_ci(s, "hf:")) {
            return parse_hub(rest).map_err(err);
        }
        if let Some(rest) = strip_prefix_ci(s, "torchvision:") {
            let model = crate::torchhub::canonical_model(rest).map_err(err)?;
            return Ok(Self::Torchvision {
                model: model.to_string(),
            });
        }
        if let Some(rest) = strip_prefix_ci(s, "builtin:") {
            let w = crate::builtin::find(rest)?;
            return Ok(Self::Builtin {
                file: w.file.to_string(),
            });
        }
        if let Some(rest) = strip_prefix_ci(s, "file:") {
            if rest.is_empty() {
                return Err(err("`file:` needs a path after it".into()));
            }
            return Ok(Self::Local(PathBuf::from(rest)));
        }
        let path = Path::new(s);
        if exists(path) || has_weight_extension(path) {
            return Ok(Self::Local(path.to_path_buf()));
        }
        let repo_part = s.split(['@', ':']).next().unwrap_or(s);
        if repo_part.matches('/').count() == 1 && !s.starts_with(['/', '.', '~', '\\']) {
            return parse_hub(s).map_err(|reason| {
                err(format!(
                    "{reason} (it is not an existing path either; {})",
                    accepted_forms()
                ))
            });
        }
        Err(err(format!(
            "not an existing file, not a path ending in .{}, and not a hub repo id; {}",
            WEIGHT_EXTENSIONS.join("/."),
            accepted_forms()
        )))
    }

    /// Whether this is [`WeightsSource::None`].
    pub fn is_none(&self) -> bool {
        matches!(self, Self::None)
    }
}

fn accepted_forms() -> String {
    "expected `none`, `hf:org/name[@revision][:file]`, `org/name`, `torchvision:<model>`, \
     `builtin:<file>`, or a path to a .safetensors/.pth/.pt/.bin file"
        .to_string()
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    if s.len() >= prefix.len() && s.is_char_boundary(prefix.len()) && s[..prefix.len()].eq_ignore_ascii_case(prefix) {
        Some(&s[prefix.len()..])
    } else {
        None
    }
}

fn has_weight_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| WEIGHT_EXTENSIONS.iter().any(|w| w.eq_ignore_ascii_case(e)))
}

/// Parses `org/name[@revision][:file]`.
fn parse_hub(spec: &str) -> std::result::Result<WeightsSource, String> {
    let (head, file) = match spec.split_once(':') {
        Some((h, f)) => (h, Some(f)),
        None => (spec, None),
    };
    let (repo, revision) = match head.split_once('@') {
        Some((r, rev)) => (r, Some(rev)),
        None => (head, None),
    };
    validate_repo_id(repo)?;
    if let Some(rev) = revision {
        validate_revision(rev)?;
    }
    if let Some(f) = file {
        validate_repo_file(f)?;
    }
    Ok(WeightsSource::Hub {
        repo: repo.to_string(),
        revision: revision.map(str::to_string),
        file: file.map(str::to_string),
    })
}

/// Checks a Hugging Face repo id `org/name`: exactly one `/`, each part made of
/// ASCII letters, digits, `-`, `_`, `.`, not starting or ending with `-`/`.`, no
/// `--` or `..`, at most 96 characters per part.
pub fn validate_repo_id(repo: &str) -> std::result::Result<(), String> {
    let mut parts = repo.split('/');
    let (Some(org), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("hub repo id `{repo}` must look like `org/name`"));
    };
    for part in [org, name] {
        if part.is_empty() || part.len() > 96 {
            return Err(format!(
                "hub repo id `{repo}`: each of org and name must be 1 to 96 characters"
            ));
        }
        if !part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(format!(
                "hub repo id `{repo}`: only ASCII letters, digits, `-`, `_` and `.` are allowed"
            ));
        }
        if part.starts_with(['-', '.']) || part.ends_with(['-', '.']) {
            return Err(format!(
                "hub repo id `{repo}`: parts may not start or end with `-` or `.`"
            ));
        }
        if part.contains("--") || part.contains("..") {
            return Err(format!("hub repo id `{repo}`: `--` and `..` are not allowed"));
        }
    }
    Ok(())
}

/// Checks a revision (branch, tag or commit): non-empty, no whitespace or control
/// characters, no `..` and no leading `/`, so it stays inside the cache's `refs/`.
pub fn validate_revision(rev: &str) -> std::result::Result<(), String> {
    if rev.is_empty() {
        return Err("empty revision after `@`".into());
    }
    if rev.len() > 256
        || rev.chars().any(|c| c.is_whitespace() || c.is_control() || c == '\\')
        || rev.starts_with('/')
        || rev.ends_with('/')
        || rev.split('/').any(|p| p.is_empty() || p == "." || p == "..")
    {
        return Err(format!("invalid revision `{rev}`"));
    }
    Ok(())
}

/// Checks a file path inside a repo: relative, `/`-separated, no `.`/`..`/empty parts.
pub fn validate_repo_file(file: &str) -> std::result::Result<(), String> {
    if file.is_empty() {
        return Err("empty file name after `:`".into());
    }
    if file.len() > 1024
        || file.chars().any(|c| c.is_control() || c == '\\')
        || file.split('/').any(|p| p.is_empty() || p == "." || p == "..")
    {
        return Err(format!(
            "invalid file name `{file}` (must be a relative path inside the repo)"
        ));
    }
    Ok(())
}

impl FromStr for WeightsSource {
    type Err = FinetuneError;

    fn from_str(s: &str) -> Result<Self> {
        Self::parse_with(s, |p| p.exists())
    }
}

impl TryFrom<String> for WeightsSource {
    type Error = FinetuneError;

    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<WeightsSource> for String {
    fn from(s: WeightsSource) -> String {
        s.to_string()
    }
}

impl fmt::Display for WeightsSource {
    /// Writes the string form that parses back to the same source.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("none"),
            Self::Hub { repo, revision, file } => {
                write!(f, "hf:{repo}")?;
                if let Some(rev) = revision {
                    write!(f, "@{rev}")?;
                }
                if let Some(file) = file {
                    write!(f, ":{file}")?;
                }
                Ok(())
            }
            Self::Torchvision { model } => write!(f, "torchvision:{model}"),
            Self::Builtin { file } => write!(f, "builtin:{file}"),
            Self::Local(path) => {
                if has_weight_extension(path) {
                    write!(f, "{}", path.display())
                } else {
                    write!(f, "file:{}", path.display())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<WeightsSource> {
        WeightsSource::parse_with(s, |_| false)
    }

    fn hub(repo: &str, rev: Option<&str>, file: Option<&str>) -> WeightsSource {
        WeightsSource::Hub {
            repo: repo.into(),
            revision: rev.map(Into::into),
            file: file.map(Into::into),
        }
    }

    #[test]
    fn parses_none() {
        assert_eq!(parse("none").unwrap(), WeightsSource::None);
        assert_eq!(parse(" NONE ").unwrap(), WeightsSource::None);
    }

    #[test]
    fn parses_hub_forms() {
        let r = "timm/resnet18.a1_in1k";
        assert_eq!(parse("hf:timm/resnet18.a1_in1k").unwrap(), hub(r, None, None));
        assert_eq!(
            parse("hf:timm/resnet18.a1_in1k@main").unwrap(),
            hub(r, Some("main"), None)
        );
        assert_eq!(parse("timm/resnet18.a1_in1k").unwrap(), hub(r, None, None));
        assert_eq!(
            parse("hf://timm/resnet18.a1_in1k@refs/pr/1:sub/pytorch_model.bin").unwrap(),
            hub(r, Some("refs/pr/1"), Some("sub/pytorch_model.bin"))
        );
        assert_eq!(
            parse("timm/resnet18.a1_in1k@0123abcd").unwrap(),
            hub(r, Some("0123abcd"), None)
        );
    }

    #[test]
    fn parses_torchvision_names() {
        let tv = |m: &str| WeightsSource::Torchvision { model: m.into() };
        assert_eq!(parse("torchvision:vgg16").unwrap(), tv("vgg16"));
        assert_eq!(parse("TorchVision:ResNet18").unwrap(), tv("resnet18"));
        assert_eq!(parse("torchvision:vgg16-bn").unwrap(), tv("vgg16_bn"));
        assert_eq!(parse("torchvision:alexnet").unwrap().to_string(), "torchvision:alexnet");
        for bad in ["torchvision:", "torchvision:resnet152", "torchvision:../x"] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("valid: alexnet, resnet18"), "{bad}: {e}");
        }
    }

    #[test]
    fn parses_local_paths() {
        for s in ["w.safetensors", "dir/x.pth", "/abs/y.PT", "pytorch_model.bin"] {
            assert_eq!(parse(s).unwrap(), WeightsSource::Local(s.into()), "{s}");
        }
        assert_eq!(parse("file:some/dir").unwrap(), WeightsSource::Local("some/dir".into()));
        // An existing path wins over the `org/name` reading.
        let src = WeightsSource::parse_with("timm/resnet18", |_| true).unwrap();
        assert_eq!(src, WeightsSource::Local("timm/resnet18".into()));
    }

    #[test]
    fn rejects_bad_input_without_panicking() {
        for s in [
            "",
            "   ",
            "hf:",
            "hf:noslash",
            "hf:a/b/c",
            "hf:../etc",
            "hf:org/na me",
            "hf:org/name@",
            "hf:org/name@../../x",
            "hf:org/name:",
            "hf:org/name:../secret",
            "hf:org/name:/abs",
            "just-a-word",
            "./relative/thing",
            "a/b/c",
            "hf:ü/ß",
        ] {
            let e = parse(s).unwrap_err();
            assert!(matches!(e, FinetuneError::InvalidSource { .. }), "{s}: {e}");
            assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn builtin_acts_as_a_folder() {
        let cc = WeightsSource::Builtin {
            file: "ccexam-svhn-cnn.safetensors".into(),
        };
        assert_eq!(parse("builtin:ccexam-svhn-cnn.safetensors").unwrap(), cc);
        assert_eq!(parse("builtin:/ccexam-svhn-cnn.safetensors").unwrap(), cc);
        assert_eq!(parse("BUILTIN:ccexam-svhn-cnn.safetensors").unwrap(), cc);
        for bad in ["builtin:", "builtin:/", "builtin:resnet18.safetensors"] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("builtin:ccexam-svhn-cnn.safetensors"), "{bad}: {e}");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "none",
            "hf:timm/resnet18.a1_in1k",
            "hf:timm/resnet18.a1_in1k@main",
            "hf:timm/resnet18.a1_in1k@main:model.safetensors",
            "weights/r.safetensors",
            "file:weights/dir",
            "torchvision:vgg19_bn",
            "builtin:ccexam-svhn-cnn.safetensors",
        ] {
            let src = parse(s).unwrap();
            assert_eq!(src.to_string(), s);
            assert_eq!(parse(&src.to_string()).unwrap(), src);
        }
    }

    #[test]
    fn serde_uses_the_string_form() {
        let src: WeightsSource = serde_json::from_str("\"hf:timm/resnet18.a1_in1k@main\"").unwrap();
        assert_eq!(src, hub("timm/resnet18.a1_in1k", Some("main"), None));
        assert_eq!(
            serde_json::to_string(&src).unwrap(),
            "\"hf:timm/resnet18.a1_in1k@main\""
        );
        assert!(serde_json::from_str::<WeightsSource>("\"hf:bad\"").is_err());
        assert!(serde_json::from_str::<WeightsSource>("3").is_err());
    }
}
