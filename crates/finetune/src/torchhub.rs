//! torchvision's published ImageNet weights (`torchvision:vgg16`, ...) through
//! torch.hub's checkpoint cache, shared with Python.
//!
//! # Files
//!
//! The IMAGENET1K_V1 weights of torchvision's `models/*.py` (`url=` of each
//! `Weights` enum), the files `models.vgg16(pretrained=True)` and friends load,
//! downloaded from [`DEFAULT_BASE_URL`]:
//!
//! | model | file |
//! | --- | --- |
//! | `alexnet` | `alexnet-owt-7be5be79.pth` |
//! | `resnet18` | `resnet18-f37072fd.pth` |
//! | `resnet34` | `resnet34-b627a593.pth` |
//! | `resnet50` | `resnet50-0676ba61.pth` |
//! | `resnet101` | `resnet101-63fe2227.pth` |
//! | `vgg11` / `vgg11_bn` | `vgg11-8a719046.pth` / `vgg11_bn-6002323d.pth` |
//! | `vgg13` / `vgg13_bn` | `vgg13-19584684.pth` / `vgg13_bn-abd245e5.pth` |
//! | `vgg16` / `vgg16_bn` | `vgg16-397923af.pth` / `vgg16_bn-6c64b313.pth` |
//! | `vgg19` / `vgg19_bn` | `vgg19-dcbb9e9d.pth` / `vgg19_bn-c79401a0.pth` |
//!
//! # Cache
//!
//! Like `torch.hub.get_dir()`: `$TORCH_HOME/hub/checkpoints`, else
//! `$XDG_CACHE_HOME/torch/hub/checkpoints`, else `~/.cache/torch/hub/checkpoints`.
//! A file already there is used without any network access (after its hash check);
//! `DIGITLAB_OFFLINE=1` (or `HF_HUB_OFFLINE=1`) forbids downloads, and the error
//! then names the file, its URL and the folder to put it in.
//! `DIGITLAB_TORCHVISION_URL` replaces the download server (a mirror).
//!
//! # Hash check
//!
//! As torch.hub's `check_hash`: the hex digits after the last `-` of the file name
//! (`vgg16-397923af.pth` -> `397923af`) must start the file's SHA-256. A download
//! is written to a temporary file in the cache folder, hashed while it arrives,
//! and renamed into place only when it matches, never over an existing file; a
//! mismatch deletes the temporary file. A cached file that fails the check is an
//! error naming it (it is not deleted: digitlab did not write it).

use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::error::{FinetuneError, Result};

/// Where torchvision publishes its weights.
pub const DEFAULT_BASE_URL: &str = "https://download.pytorch.org/models/";

/// `(model, file)`: torchvision's IMAGENET1K_V1 weights of every model this crate
/// builds in torchvision's layout.
pub const TORCHVISION_WEIGHTS: &[(&str, &str)] = &[
    ("alexnet", "alexnet-owt-7be5be79.pth"),
    ("resnet18", "resnet18-f37072fd.pth"),
    ("resnet34", "resnet34-b627a593.pth"),
    ("resnet50", "resnet50-0676ba61.pth"),
    ("resnet101", "resnet101-63fe2227.pth"),
    ("vgg11", "vgg11-8a719046.pth"),
    ("vgg11_bn", "vgg11_bn-6002323d.pth"),
    ("vgg13", "vgg13-19584684.pth"),
    ("vgg13_bn", "vgg13_bn-abd245e5.pth"),
    ("vgg16", "vgg16-397923af.pth"),
    ("vgg16_bn", "vgg16_bn-6c64b313.pth"),
    ("vgg19", "vgg19-dcbb9e9d.pth"),
    ("vgg19_bn", "vgg19_bn-c79401a0.pth"),
];

/// Largest download accepted (the largest file above, vgg19_bn, is 549 MiB).
pub const MAX_DOWNLOAD_BYTES: u64 = 2 << 30;

/// Where torch.hub's checkpoints are and whether the network may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorchHubConfig {
    /// The folder holding the `.pth` files (`<torch home>/hub/checkpoints`).
    pub checkpoints_dir: PathBuf,
    /// Never download; only the cache is used.
    pub offline: bool,
    /// Download server, ending in `/`: [`DEFAULT_BASE_URL`] or a mirror.
    pub base_url: String,
    /// Whether downloads show a progress bar on stderr.
    pub progress: bool,
}

impl TorchHubConfig {
    /// An online configuration with the given checkpoints folder and torchvision's server.
    pub fn new(checkpoints_dir: impl Into<PathBuf>) -> Self {
        Self {
            checkpoints_dir: checkpoints_dir.into(),
            offline: false,
            base_url: DEFAULT_BASE_URL.to_string(),
            progress: true,
        }
    }

    /// Reads the configuration from the process environment (see the module docs).
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `var` (a stand-in for `std::env::var`).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let get = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let home = get("HOME").or_else(|| get("USERPROFILE")).map(PathBuf::from);
        let expand = |value: String| -> PathBuf {
            match (value.strip_prefix("~/"), &home) {
                (Some(rest), Some(h)) => h.join(rest),
                _ => PathBuf::from(value),
            }
        };
        let torch_home = if let Some(dir) = get("TORCH_HOME") {
            expand(dir)
        } else if let Some(xdg) = get("XDG_CACHE_HOME") {
            expand(xdg).join("torch")
        } else if let Some(h) = &home {
            h.join(".cache").join("torch")
        } else {
            return Err(FinetuneError::CacheDir(
                "none of TORCH_HOME, XDG_CACHE_HOME or HOME is set, so torch.hub's cache folder is \
                 unknown; set TORCH_HOME (its hub/checkpoints folder holds the .pth files)"
                    .into(),
            ));
        };
        let truthy = |name: &str| {
            get(name).is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        };
        let mut base_url = get("DIGITLAB_TORCHVISION_URL").unwrap_or_else(|| DEFAULT_BASE_URL.to_string());
        if !base_url.ends_with('/') {
            base_url.push('/');
        }
        Ok(Self {
            checkpoints_dir: torch_home.join("hub").join("checkpoints"),
            offline: truthy("DIGITLAB_OFFLINE") || truthy("HF_HUB_OFFLINE"),
            base_url,
            progress: true,
        })
    }

    /// The URL `file` is downloaded from.
    pub fn url(&self, file: &str) -> String {
        format!("{}{file}", self.base_url)
    }
}

/// The canonical model name of `name` in [`TORCHVISION_WEIGHTS`] (case-insensitive,
/// `-` for `_`), or an error listing the valid ones.
pub fn canonical_model(name: &str) -> std::result::Result<&'static str, String> {
    let n = name.trim().to_ascii_lowercase().replace('-', "_");
    TORCHVISION_WEIGHTS
        .iter()
        .find(|(m, _)| *m == n)
        .map(|(m, _)| *m)
        .ok_or_else(|| {
            format!(
                "torchvision has no weights for `{name}` here; valid: {}",
                TORCHVISION_WEIGHTS
                    .iter()
                    .map(|(m, _)| *m)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// The published file of `model` (see [`TORCHVISION_WEIGHTS`]).
pub fn weights_file(model: &str) -> std::result::Result<&'static str, String> {
    let model = canonical_model(model)?;
    Ok(TORCHVISION_WEIGHTS
        .iter()
        .find(|(m, _)| *m == model)
        .map(|(_, f)| *f)
        .expect("canonical names are in the table"))
}

/// The hash prefix in a torch.hub file name, as torch.hub's `HASH_REGEX`
/// (`-([a-f0-9]*)\.`, first match) finds it: `vgg16-397923af.pth` -> `397923af`,
/// `alexnet-owt-7be5be79.pth` -> `7be5be79`.
pub fn hash_prefix(file: &str) -> Option<&str> {
    file.match_indices('-').find_map(|(i, _)| {
        let rest = &file[i + 1..];
        let n = rest
            .bytes()
            .take_while(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
            .count();
        (rest.as_bytes().get(n) == Some(&b'.')).then(|| &rest[..n])
    })
}

/// Why a torchvision file could not be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorchHubUnavailable {
    pub file: String,
    pub url: String,
    /// The checkpoints folder it was looked for in.
    pub dir: PathBuf,
    /// `None` when offline; else what went wrong with the download.
    pub download_error: Option<String>,
}

impl fmt::Display for TorchHubUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "torchvision weights `{}` are not in torch.hub's cache {}",
            self.file,
            self.dir.display()
        )?;
        match &self.download_error {
            None => write!(f, " and downloads are off (DIGITLAB_OFFLINE / HF_HUB_OFFLINE is set)")?,
            Some(e) => write!(f, " and downloading {} failed: {e}", self.url)?,
        }
        write!(
            f,
            ". To fix: download {} on a machine with internet access (or run \
             `torch.hub.load_state_dict_from_url(\"{}\")` there) and copy it to {}",
            self.url,
            self.url,
            self.dir.join(&self.file).display()
        )
    }
}

/// SHA-256 of a file, hex.
fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| FinetuneError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| FinetuneError::io(path, e))?;
        if n == 0 {
            return Ok(hex::encode(h.finalize()));
        }
        h.update(&buf[..n]);
    }
}

/// Checks `path` against the hash prefix of its name (no prefix: nothing to check).
pub fn check_hash(path: &Path) -> Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let Some(prefix) = hash_prefix(name).filter(|p| !p.is_empty()) else {
        return Ok(());
    };
    let actual = sha256_file(path)?;
    if actual.starts_with(prefix) {
        Ok(())
    } else {
        Err(FinetuneError::HashMismatch {
            path: path.to_path_buf(),
            expected_prefix: prefix.to_string(),
            actual,
            note: "it was not written by digitlab, so it is left as it is: delete it and run again to \
                   download it anew"
                .into(),
        })
    }
}

/// The cached copy of `file`, if there is one (not hash-checked).
pub fn lookup_cache(config: &TorchHubConfig, file: &str) -> Option<PathBuf> {
    let p = config.checkpoints_dir.join(file);
    p.is_file().then_some(p)
}

/// torchvision's weights for `model` (e.g. `vgg16`), from the cache or downloaded
/// into it; see the module docs.
pub fn resolve(config: &TorchHubConfig, model: &str) -> Result<PathBuf> {
    let file = weights_file(model).map_err(|reason| FinetuneError::InvalidSource {
        input: format!("torchvision:{model}"),
        reason,
    })?;
    resolve_file(config, file)
}

/// Any torch.hub-style file name (`name-<hash prefix>.ext`) from the cache, or
/// downloaded from `config.base_url` into it, hash-checked either way.
pub fn resolve_file(config: &TorchHubConfig, file: &str) -> Result<PathBuf> {
    if file.is_empty() || file.contains(['/', '\\']) || file.starts_with('.') {
        return Err(FinetuneError::InvalidSource {
            input: file.to_string(),
            reason: "a torch.hub file name must be a plain file name".into(),
        });
    }
    if let Some(p) = lookup_cache(config, file) {
        check_hash(&p)?;
        return Ok(p);
    }
    let unavailable = |download_error| {
        FinetuneError::TorchHubUnavailable(Box::new(TorchHubUnavailable {
            file: file.to_string(),
            url: config.url(file),
            dir: config.checkpoints_dir.clone(),
            download_error,
        }))
    };
    if config.offline {
        return Err(unavailable(None));
    }
    match download(config, file) {
        Ok(p) => Ok(p),
        Err(DownloadError::Hash(e)) => Err(e),
        Err(DownloadError::Other(e)) => Err(unavailable(Some(e))),
    }
}

enum DownloadError {
    /// The file arrived but its hash is wrong (the temporary file is deleted).
    Hash(FinetuneError),
    Other(String),
}

fn download(config: &TorchHubConfig, file: &str) -> std::result::Result<PathBuf, DownloadError> {
    let other = DownloadError::Other;
    let dir = &config.checkpoints_dir;
    let dest = dir.join(file);
    let url = config.url(file);
    std::fs::create_dir_all(dir).map_err(|e| other(format!("cannot create {}: {e}", dir.display())))?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(20)))
        .timeout_recv_body(Some(Duration::from_secs(1800)))
        .build()
        .into();
    let mut resp = agent
        .get(&url)
        .call()
        .map_err(|e| other(format!("request failed: {e}")))?;
    let length = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = length.filter(|&n| n > MAX_DOWNLOAD_BYTES) {
        return Err(other(format!(
            "the server announces {n} bytes, more than the {MAX_DOWNLOAD_BYTES} accepted"
        )));
    }
    // Temporary name in the same folder (a rename stays on one file system); it is
    // deleted on every early return.
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{file}."))
        .suffix(".partial")
        .tempfile_in(dir)
        .map_err(|e| other(format!("cannot create a temporary file in {}: {e}", dir.display())))?;
    let bar = if config.progress {
        let bar = match length {
            Some(n) => indicatif::ProgressBar::new(n),
            None => indicatif::ProgressBar::no_length(),
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_message(file.to_string());
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut reader = resp.body_mut().with_config().limit(MAX_DOWNLOAD_BYTES).reader();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut written = 0u64;
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| other(format!("reading {url}: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        tmp.write_all(&buf[..n])
            .map_err(|e| other(format!("writing {}: {e}", tmp.path().display())))?;
        written += n as u64;
        bar.set_position(written);
    }
    bar.finish_and_clear();
    if let Some(n) = length.filter(|&n| n != written) {
        return Err(other(format!("the connection ended after {written} of {n} bytes")));
    }
    tmp.as_file()
        .sync_all()
        .map_err(|e| other(format!("syncing {}: {e}", tmp.path().display())))?;
    let actual = hex::encode(hasher.finalize());
    if let Some(prefix) = hash_prefix(file).filter(|p| !p.is_empty()) {
        if !actual.starts_with(prefix) {
            return Err(DownloadError::Hash(FinetuneError::HashMismatch {
                path: dest,
                expected_prefix: prefix.to_string(),
                actual,
                note: format!("downloaded from {url}; the download was deleted"),
            }));
        }
    }
    match tmp.persist_noclobber(&dest) {
        Ok(_) => Ok(dest),
        // Someone else (another process, Python) put the file there meanwhile: use
        // theirs if it is valid, never replace it.
        Err(e) if dest.is_file() => {
            drop(e);
            check_hash(&dest).map_err(DownloadError::Hash)?;
            Ok(dest)
        }
        Err(e) => Err(other(format!(
            "cannot rename the download to {}: {}",
            dest.display(),
            e.error
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_prefixes_as_torch_hub_finds_them() {
        assert_eq!(hash_prefix("vgg16-397923af.pth"), Some("397923af"));
        assert_eq!(hash_prefix("alexnet-owt-7be5be79.pth"), Some("7be5be79"));
        assert_eq!(hash_prefix("vgg16_features-amdegroot-88682ab5.pth"), Some("88682ab5"));
        assert_eq!(hash_prefix("resnet18.pth"), None);
        assert_eq!(hash_prefix("x-.pth"), Some(""));
        for (model, file) in TORCHVISION_WEIGHTS {
            let p = hash_prefix(file).unwrap();
            assert_eq!(p.len(), 8, "{file}");
            assert!(file.starts_with(model), "{file}");
            assert_eq!(weights_file(model).unwrap(), *file);
        }
        assert_eq!(canonical_model("VGG16-BN").unwrap(), "vgg16_bn");
        let e = canonical_model("resnet152").unwrap_err();
        assert!(e.contains("resnet152") && e.contains("vgg19_bn"), "{e}");
    }

    #[test]
    fn cache_folder_follows_torch_hub() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        let c =
            TorchHubConfig::from_vars(vars(&[("TORCH_HOME", "/t"), ("XDG_CACHE_HOME", "/x"), ("HOME", "/h")])).unwrap();
        assert_eq!(c.checkpoints_dir, PathBuf::from("/t/hub/checkpoints"));
        assert!(!c.offline);
        assert_eq!(c.url("a-1.pth"), "https://download.pytorch.org/models/a-1.pth");
        let c = TorchHubConfig::from_vars(vars(&[("XDG_CACHE_HOME", "/x"), ("HOME", "/h")])).unwrap();
        assert_eq!(c.checkpoints_dir, PathBuf::from("/x/torch/hub/checkpoints"));
        let c = TorchHubConfig::from_vars(vars(&[("HOME", "/h"), ("DIGITLAB_OFFLINE", "1")])).unwrap();
        assert_eq!(c.checkpoints_dir, PathBuf::from("/h/.cache/torch/hub/checkpoints"));
        assert!(c.offline);
        let c = TorchHubConfig::from_vars(vars(&[
            ("TORCH_HOME", "~/th"),
            ("HOME", "/h"),
            ("HF_HUB_OFFLINE", "true"),
            ("DIGITLAB_TORCHVISION_URL", "http://mirror/m"),
        ]))
        .unwrap();
        assert_eq!(c.checkpoints_dir, PathBuf::from("/h/th/hub/checkpoints"));
        assert!(c.offline);
        assert_eq!(c.url("f.pth"), "http://mirror/m/f.pth");
        assert!(TorchHubConfig::from_vars(|_| None).is_err());
    }
}
