//! Crash-safe file output, the one copy in the workspace: write to a temporary file in
//! the same folder, fsync it, rename it over the target and fsync the folder, so
//! readers see the old file or the new one, never half of one.
//!
//! The temporary file has a fixed, predictable name (`<name>.tmp<pid>`, [`temp_path`])
//! rather than a random one: crash-safety tests stop a write halfway
//! ([`HANG_WRITING_ENV`]) or point that name at `/dev/full`, and
//! `digitlab_train::run_dir::remove_stale_temp_files` finds what killed processes left behind.
use std::io::Write;
use std::path::{Path, PathBuf};

/// A write that failed, naming the file (or the folder that could not be created).
#[derive(Debug, thiserror::Error)]
#[error("failed to write {}: {source}", path.display())]
pub struct WriteError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// This process's run id: `<microseconds since 1970, hex>-<pid>`. Run folders
/// record it in their marker and every temporary file carries it, so a cleanup can
/// tell digitlab's own temporary files from anything else.
pub fn run_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        format!("{micros:x}-{}", std::process::id())
    })
}

/// Temporary sibling of `path` (same folder, so the rename is atomic):
/// `.<file name>.<run id>.tmp`.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}.{}.tmp", run_id()))
}

/// The run id in a temporary file name made by [`temp_path`], or `None` when the
/// name does not have exactly that form.
pub fn temp_file_run_id(name: &str) -> Option<&str> {
    let inner = name.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (file, id) = inner.rsplit_once('.')?;
    let (time, pid) = id.split_once('-')?;
    let ok = !file.is_empty()
        && !time.is_empty()
        && time.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        && !pid.is_empty()
        && pid.bytes().all(|b| b.is_ascii_digit());
    ok.then_some(id)
}

/// Test hook for crash-safety tests: when this environment variable holds the
/// file name of a file being written atomically (`last.json`,
/// `model-e3.safetensors`, ...), optionally followed by `#N` for its N-th write
/// in this process (`last.json#3`), the write stops halfway — the temporary file is
/// cut to half its length, a line naming it is printed to stderr, and the process
/// sleeps until it is killed — so that a test can SIGKILL it in the middle of a
/// checkpoint write, deterministically. Unset, it costs one lookup per write.
pub const HANG_WRITING_ENV: &str = "DIGITLAB_TEST_HANG_WRITING";

fn maybe_hang_halfway(path: &Path, tmp: &Path) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static MATCHES: AtomicUsize = AtomicUsize::new(0);
    let Some(target) = std::env::var(HANG_WRITING_ENV).ok() else {
        return;
    };
    // `NAME` stops the first write of NAME, `NAME#N` the N-th one.
    let (name, nth) = match target.rsplit_once('#') {
        Some((name, n)) => (name, n.parse::<usize>().unwrap_or(1)),
        None => (target.as_str(), 1),
    };
    if path.file_name().and_then(|n| n.to_str()) != Some(name) || MATCHES.fetch_add(1, Ordering::SeqCst) + 1 != nth {
        return;
    }
    if let Ok(f) = std::fs::OpenOptions::new().write(true).open(tmp) {
        if let Ok(m) = f.metadata() {
            let _ = f.set_len(m.len() / 2);
            let _ = f.sync_all();
        }
    }
    eprintln!(
        "digitlab: {HANG_WRITING_ENV}: stopped halfway through writing {}",
        tmp.display()
    );
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// Atomically replaces `path` with `bytes` (missing parent folders are created).
///
/// ```
/// let dir = tempfile::tempdir()?;
/// let file = dir.path().join("out/summary.json");
/// digitlab_report::io::write_atomic(&file, b"{}")?;
/// assert_eq!(std::fs::read(&file)?, b"{}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    write_atomic_with(path, |tmp| {
        let mut f = std::fs::File::create(tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })
}

/// Atomically replaces `path` with whatever `write` puts in the temporary file (which
/// `write` must create, and should fsync).
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&Path) -> std::io::Result<()>) -> Result<(), WriteError> {
    let io = |source| WriteError {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| WriteError {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let tmp = temp_path(path);
    if let Err(e) = write(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    maybe_hang_halfway(path, &tmp);
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })?;
    // Persist the rename itself.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Writes `value` as pretty JSON, atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), WriteError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| WriteError {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })?;
    write_atomic(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b.txt");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn unwritable_target_names_the_path_and_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keep.txt");
        write_atomic(&p, b"old").unwrap();
        let e = write_atomic_with(&p, |_| Err(std::io::Error::other("disk full")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("keep.txt") && e.contains("disk full"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn temp_names_carry_the_run_id_and_only_they_parse() {
        let t = temp_path(Path::new("/x/last.json"));
        let name = t.file_name().unwrap().to_str().unwrap();
        assert_eq!(name, format!(".last.json.{}.tmp", run_id()));
        assert_eq!(temp_file_run_id(name), Some(run_id()));
        for other in [
            "last.json.tmp123",
            "notes.tmp3",
            ".x.tmp",
            ".x.12-ab.tmp",
            ".x.ab-.tmp",
            "x.ab-1.tmp",
            ".ab-1.tmp",
        ] {
            assert_eq!(temp_file_run_id(other), None, "{other}");
        }
    }
}
