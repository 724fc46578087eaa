//! Resolving a [`WeightsSource::Hub`] to a file on disk, through the standard
//! Hugging Face cache and, when allowed, hf-hub's blocking download API.
//!
//! # Cache layout
//!
//! The cache is the one shared with Python's `huggingface_hub` (`huggingface-cli
//! download` fills it):
//!
//! ```text
//! <cache>/models--{org}--{name}/refs/{revision}          a file holding a commit hash
//! <cache>/models--{org}--{name}/snapshots/{hash}/{file}  the file (usually a symlink into blobs/)
//! <cache>/models--{org}--{name}/blobs/{etag}
//! ```
//!
//! # Environment
//!
//! hf-hub 0.5 honours only `HF_HOME` (in `Cache::from_env` / `ApiBuilder::from_env`)
//! and `HF_ENDPOINT` (in `ApiBuilder::from_env`), reads the token from
//! `<cache>/../token`, and its `Cache::default()` panics when there is no home
//! directory. [`HubConfig::from_vars`] therefore does the whole lookup itself, with
//! the same precedence as Python's `huggingface_hub`:
//!
//! 1. `HF_HUB_CACHE`, then the older `HUGGINGFACE_HUB_CACHE`;
//! 2. `$HF_HOME/hub`;
//! 3. `$XDG_CACHE_HOME/huggingface/hub`;
//! 4. `~/.cache/huggingface/hub` (`HOME`, or `USERPROFILE` on Windows).
//!
//! `HF_HUB_OFFLINE` set to `1`/`true`/`yes`/`on` forbids network access;
//! `HF_ENDPOINT` changes the server; `HF_TOKEN` (or `HUGGING_FACE_HUB_TOKEN`) is the
//! access token, otherwise hf-hub reads `<cache>/../token`. Empty variables count as
//! unset; a leading `~/` is expanded.
//!
//! # Resolution
//!
//! [`resolve`] looks in the cache first, without any network access (a `refs/`
//! entry, or a snapshot folder named after the revision when the revision is a
//! commit hash). Only when the file is absent and [`HubConfig::offline`] is false
//! does it download with hf-hub, into the same cache. Failures become
//! [`HubUnavailable`], whose message names the repo, revision, file, the cache paths
//! looked at, and how to pre-download the file on a machine with internet access.

use std::fmt;
use std::path::PathBuf;

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

use crate::error::{FinetuneError, Result};
use crate::source::{validate_repo_file, validate_repo_id, validate_revision, WeightsSource};

/// File fetched from a repo when none is named (timm and most transformers repos).
pub const DEFAULT_FILE: &str = "model.safetensors";

/// Files tried, in order, after [`DEFAULT_FILE`] when no file is named.
pub const FALLBACK_FILES: &[&str] = &["pytorch_model.bin"];

/// Revision used when none is given.
pub const DEFAULT_REVISION: &str = "main";

/// Where the hub cache is and whether the network may be used.
///
/// Build it with [`HubConfig::from_env`] in programs, or directly (or with
/// [`HubConfig::new`]) in tests, so that tests never touch the process environment.
#[derive(Clone, PartialEq, Eq)]
pub struct HubConfig {
    /// The hub cache directory (the folder holding `models--org--name`).
    pub cache_dir: PathBuf,
    /// When true, never touch the network: only the cache is used.
    pub offline: bool,
    /// Hub server, e.g. a mirror; `None` means hf-hub's default `https://huggingface.co`.
    pub endpoint: Option<String>,
    /// Access token; `None` lets hf-hub read `<cache_dir>/../token` if it exists.
    pub token: Option<String>,
    /// Whether downloads show a progress bar on stderr.
    pub progress: bool,
}

impl fmt::Debug for HubConfig {
    /// Like a derived `Debug`, with the token redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubConfig")
            .field("cache_dir", &self.cache_dir)
            .field("offline", &self.offline)
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("progress", &self.progress)
            .finish()
    }
}

impl HubConfig {
    /// An online configuration with the given cache and hf-hub's defaults otherwise.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            cache_dir: cache_dir.into(),
            offline: false,
            endpoint: None,
            token: None,
            progress: true,
        }
    }

    /// Reads the configuration from the process environment (see the module docs).
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `var` (a stand-in for `std::env::var`), so the
    /// lookup can be tested without changing the process environment.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let get = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let home = || get("HOME").or_else(|| get("USERPROFILE")).map(PathBuf::from);
        let expand = |value: String| -> PathBuf {
            match value.strip_prefix("~/").or_else(|| value.strip_prefix("~\\")) {
                Some(rest) => match home() {
                    Some(h) => h.join(rest),
                    None => PathBuf::from(value),
                },
                None if value == "~" => home().unwrap_or_else(|| PathBuf::from(value)),
                None => PathBuf::from(value),
            }
        };
        let cache_dir = if let Some(dir) = get("HF_HUB_CACHE").or_else(|| get("HUGGINGFACE_HUB_CACHE")) {
            expand(dir)
        } else if let Some(hf_home) = get("HF_HOME") {
            expand(hf_home).join("hub")
        } else if let Some(xdg) = get("XDG_CACHE_HOME") {
            expand(xdg).join("huggingface").join("hub")
        } else if let Some(home) = home() {
            home.join(".cache").join("huggingface").join("hub")
        } else {
            return Err(FinetuneError::CacheDir(
                "none of HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE, HF_HOME, XDG_CACHE_HOME or HOME is \
                 set; set HF_HUB_CACHE to the folder holding the models--org--name directories"
                    .into(),
            ));
        };
        let offline = get("HF_HUB_OFFLINE")
            .is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"));
        let endpoint = get("HF_ENDPOINT").map(|e| e.trim().trim_end_matches('/').to_string());
        let token = get("HF_TOKEN")
            .or_else(|| get("HUGGING_FACE_HUB_TOKEN"))
            .map(|t| t.trim().to_string());
        Ok(Self {
            cache_dir,
            offline,
            endpoint,
            token,
            progress: true,
        })
    }

    /// The cache folder of a model repo: `<cache_dir>/models--{org}--{name}`.
    pub fn repo_dir(&self, repo: &str) -> PathBuf {
        self.cache_dir
            .join(Repo::new(repo.to_string(), RepoType::Model).folder_name())
    }
}

/// One file of one revision of a hub model repo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubFile {
    /// `org/name`.
    pub repo: String,
    /// Branch, tag or commit hash.
    pub revision: String,
    /// Path of the file inside the repo.
    pub file: String,
}

impl HubFile {
    /// Validates the parts (they become cache paths).
    pub fn new(repo: impl Into<String>, revision: impl Into<String>, file: impl Into<String>) -> Result<Self> {
        let (repo, revision, file) = (repo.into(), revision.into(), file.into());
        let check = |r: std::result::Result<(), String>| {
            r.map_err(|reason| FinetuneError::InvalidSource {
                input: format!("{repo}@{revision}:{file}"),
                reason,
            })
        };
        check(validate_repo_id(&repo))?;
        check(validate_revision(&revision))?;
        check(validate_repo_file(&file))?;
        Ok(Self { repo, revision, file })
    }
}

/// The outcome of a cache lookup: the file, or the paths that were looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheLookup {
    /// The file is in the cache at this path.
    Found(PathBuf),
    /// Not in the cache; these are the paths that were checked, in order.
    Missing(Vec<PathBuf>),
}

/// Looks `file` up in the cache only, never touching the network.
///
/// `refs/<revision>` is read (and trimmed) when it exists; otherwise the revision is
/// taken as a commit hash and `snapshots/<revision>/` is tried directly. The commit
/// hash read from `refs/` must be a single path component.
pub fn lookup_cache(config: &HubConfig, file: &HubFile) -> CacheLookup {
    let repo_dir = config.repo_dir(&file.repo);
    let ref_path = repo_dir.join("refs").join(&file.revision);
    let mut looked_at = vec![];
    let mut snapshots = vec![];
    match std::fs::read_to_string(&ref_path) {
        Ok(hash) => {
            let hash = hash.trim();
            if is_single_component(hash) {
                snapshots.push(hash.to_string());
            }
        }
        Err(_) => looked_at.push(ref_path),
    }
    if !snapshots.contains(&file.revision) && is_single_component(&file.revision) {
        snapshots.push(file.revision.clone());
    }
    for hash in snapshots {
        let candidate = repo_dir.join("snapshots").join(hash).join(&file.file);
        // `is_file` follows symlinks: a dangling link into blobs/ counts as missing.
        if candidate.is_file() {
            return CacheLookup::Found(candidate);
        }
        looked_at.push(candidate);
    }
    CacheLookup::Missing(looked_at)
}

fn is_single_component(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\\']) && !s.contains('\0')
}

/// Why a hub file could not be made available locally, with everything needed to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubUnavailable {
    /// `org/name`.
    pub repo: String,
    /// The revision asked for.
    pub revision: String,
    /// The file(s) tried, in order (the default file then the fallbacks when no file
    /// was named).
    pub files: Vec<String>,
    /// The cache directory in use.
    pub cache_dir: PathBuf,
    /// The exact paths looked at in the cache.
    pub looked_at: Vec<PathBuf>,
    /// Whether the network was forbidden (`HF_HUB_OFFLINE`).
    pub offline: bool,
    /// The download error(s), one per file tried; empty when offline.
    pub download_errors: Vec<String>,
}

impl fmt::Display for HubUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let first = self.files.first().map(String::as_str).unwrap_or(DEFAULT_FILE);
        write!(
            f,
            "cannot get `{first}` from Hugging Face repo `{}` (revision `{}`)",
            self.repo, self.revision
        )?;
        if self.files.len() > 1 {
            write!(f, "; also tried: {}", self.files[1..].join(", "))?;
        }
        writeln!(f)?;
        if self.offline {
            writeln!(
                f,
                "  it is not in the local cache and HF_HUB_OFFLINE is set, so no download was attempted"
            )?;
        } else {
            writeln!(f, "  it is not in the local cache and the download failed:")?;
            for (file, e) in self.files.iter().zip(&self.download_errors) {
                writeln!(f, "    {file}: {e}")?;
            }
        }
        writeln!(f, "  cache directory: {}", self.cache_dir.display())?;
        writeln!(f, "  looked at:")?;
        for p in &self.looked_at {
            writeln!(f, "    {}", p.display())?;
        }
        let rev = if self.revision == DEFAULT_REVISION {
            String::new()
        } else {
            format!(" --revision {}", self.revision)
        };
        writeln!(f, "  to fix, either:")?;
        writeln!(
            f,
            "    - on a machine with internet access run `huggingface-cli download {} {first}{rev}`,",
            self.repo
        )?;
        writeln!(
            f,
            "      then copy its cache folder (~/.cache/huggingface/hub/{}) into {} here",
            Repo::new(self.repo.clone(), RepoType::Model).folder_name(),
            self.cache_dir.display()
        )?;
        writeln!(f, "      (or point HF_HUB_CACHE / HF_HOME at a copy of that cache), or")?;
        write!(
            f,
            "    - download the file yourself and give its local path as the backbone's weights instead of `hf:{}`: \
             `pretrained = \"path/to/{}\"` in the config's [[backbones]] entry",
            self.repo,
            first.rsplit('/').next().unwrap_or(first)
        )
    }
}

/// Resolves a hub file to a local path: the cache first, then (unless offline) a
/// download into the cache with hf-hub.
///
/// With `file: None`, [`DEFAULT_FILE`] is tried, then each of [`FALLBACK_FILES`]:
/// first all of them in the cache, then all of them on the network.
pub fn resolve(config: &HubConfig, repo: &str, revision: Option<&str>, file: Option<&str>) -> Result<PathBuf> {
    let revision = revision.unwrap_or(DEFAULT_REVISION);
    let files: Vec<&str> = match file {
        Some(f) => vec![f],
        None => std::iter::once(DEFAULT_FILE)
            .chain(FALLBACK_FILES.iter().copied())
            .collect(),
    };
    let files = files
        .into_iter()
        .map(|f| HubFile::new(repo, revision, f))
        .collect::<Result<Vec<_>>>()?;

    let mut looked_at = vec![];
    for hub_file in &files {
        match lookup_cache(config, hub_file) {
            CacheLookup::Found(path) => return Ok(path),
            CacheLookup::Missing(paths) => {
                for p in paths {
                    if !looked_at.contains(&p) {
                        looked_at.push(p);
                    }
                }
            }
        }
    }

    let mut download_errors = vec![];
    if !config.offline {
        for hub_file in &files {
            match download(config, hub_file) {
                Ok(path) => return Ok(path),
                Err(e) => download_errors.push(e),
            }
        }
    }
    Err(FinetuneError::HubUnavailable(Box::new(HubUnavailable {
        repo: repo.to_string(),
        revision: revision.to_string(),
        files: files.into_iter().map(|f| f.file).collect(),
        cache_dir: config.cache_dir.clone(),
        looked_at,
        offline: config.offline,
        download_errors,
    })))
}

/// Resolves any [`WeightsSource`] to a local file: `None` gives `Ok(None)`, `Local`
/// its path (checked to exist), `Hub` goes through [`resolve`], `Torchvision`
/// through [`crate::torchhub::resolve`] with settings from the environment.
/// `Builtin` is an error: those weights are in memory, not in a file
/// ([`crate::builtin::find`] gives their bytes; [`crate::create_model`] reads them).
pub fn resolve_source(config: &HubConfig, source: &WeightsSource) -> Result<Option<PathBuf>> {
    match source {
        WeightsSource::None => Ok(None),
        WeightsSource::Local(path) => {
            if path.is_file() {
                Ok(Some(path.clone()))
            } else {
                Err(FinetuneError::io(
                    path,
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "weights file not found (or not a regular file)",
                    ),
                ))
            }
        }
        WeightsSource::Hub { repo, revision, file } => {
            resolve(config, repo, revision.as_deref(), file.as_deref()).map(Some)
        }
        // Not a Hugging Face file: torch.hub's cache, configured from the environment.
        WeightsSource::Torchvision { model } => {
            crate::torchhub::resolve(&crate::torchhub::TorchHubConfig::from_env()?, model).map(Some)
        }
        WeightsSource::Builtin { file } => Err(FinetuneError::InvalidSource {
            input: source.to_string(),
            reason: format!("{file} is compiled into digitlab, not a file on disk"),
        }),
    }
}

/// Downloads one file into the cache with hf-hub's blocking API. Returns the error
/// text on failure. hf-hub asserts on some unexpected server behaviour, so the call
/// is also guarded against panics.
fn download(config: &HubConfig, file: &HubFile) -> std::result::Result<PathBuf, String> {
    let mut builder = ApiBuilder::from_cache(Cache::new(config.cache_dir.clone())).with_progress(config.progress);
    if let Some(endpoint) = &config.endpoint {
        builder = builder.with_endpoint(endpoint.clone());
    }
    if let Some(token) = &config.token {
        builder = builder.with_token(Some(token.clone()));
    }
    let api = builder.build().map_err(|e| e.to_string())?;
    let repo = api.repo(Repo::with_revision(
        file.repo.clone(),
        RepoType::Model,
        file.revision.clone(),
    ));
    let name = file.file.clone();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| repo.download(&name))) {
        Ok(Ok(path)) => Ok(path),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("hf-hub panicked while downloading (unexpected server response)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn env_precedence() {
        let all = [
            ("HF_HUB_CACHE", "/a/hub-cache"),
            ("HUGGINGFACE_HUB_CACHE", "/b/old-cache"),
            ("HF_HOME", "/c/hf-home"),
            ("XDG_CACHE_HOME", "/d/xdg"),
            ("HOME", "/e/home"),
        ];
        let cfg = HubConfig::from_vars(vars(&all)).unwrap();
        assert_eq!(cfg.cache_dir, PathBuf::from("/a/hub-cache"));
        let cfg = HubConfig::from_vars(vars(&all[1..])).unwrap();
        assert_eq!(cfg.cache_dir, PathBuf::from("/b/old-cache"));
        let cfg = HubConfig::from_vars(vars(&all[2..])).unwrap();
        assert_eq!(cfg.cache_dir, PathBuf::from("/c/hf-home/hub"));
        let cfg = HubConfig::from_vars(vars(&all[3..])).unwrap();
        assert_eq!(cfg.cache_dir, PathBuf::from("/d/xdg/huggingface/hub"));
        let cfg = HubConfig::from_vars(vars(&all[4..])).unwrap();
        assert_eq!(cfg.cache_dir, PathBuf::from("/e/home/.cache/huggingface/hub"));
        // Empty values are ignored.
        let cfg = HubConfig::from_vars(vars(&[("HF_HUB_CACHE", ""), ("HOME", "/h")])).unwrap();
        assert_eq!(cfg.cache_dir, PathBuf::from("/h/.cache/huggingface/hub"));
        // `~` expansion.
        let cfg = HubConfig::from_vars(vars(&[("HF_HOME", "~/hf"), ("HOME", "/h")])).unwrap();
        assert_eq!(cfg.cache_dir, PathBuf::from("/h/hf/hub"));
        // No home at all: an error, not a panic.
        let e = HubConfig::from_vars(vars(&[])).unwrap_err();
        assert!(matches!(e, FinetuneError::CacheDir(_)), "{e}");
    }

    #[test]
    fn env_offline_endpoint_token() {
        for (v, expected) in [
            ("1", true),
            ("TRUE", true),
            ("yes", true),
            ("on", true),
            ("0", false),
            ("false", false),
            ("", false),
        ] {
            let cfg = HubConfig::from_vars(vars(&[("HOME", "/h"), ("HF_HUB_OFFLINE", v)])).unwrap();
            assert_eq!(cfg.offline, expected, "HF_HUB_OFFLINE={v}");
        }
        let cfg = HubConfig::from_vars(vars(&[
            ("HOME", "/h"),
            ("HF_ENDPOINT", "https://mirror.example/"),
            ("HUGGING_FACE_HUB_TOKEN", "tok"),
        ]))
        .unwrap();
        assert_eq!(cfg.endpoint.as_deref(), Some("https://mirror.example"));
        assert_eq!(cfg.token.as_deref(), Some("tok"));
        assert!(!format!("{cfg:?}").contains("tok\""), "token leaked in Debug");
        assert!(!cfg.offline);
    }

    #[test]
    fn repo_dir_uses_the_standard_folder_name() {
        let cfg = HubConfig::new("/cache");
        assert_eq!(
            cfg.repo_dir("timm/resnet18.a1_in1k"),
            PathBuf::from("/cache/models--timm--resnet18.a1_in1k")
        );
    }
}
