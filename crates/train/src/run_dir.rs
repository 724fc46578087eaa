//! Run folders digitlab owns: a marker file, an exclusive lock, and the rules for
//! taking a folder.
//!
//! Every run folder digitlab creates holds [`MARKER_FILE`] (written atomically:
//! format version, run id, kind, config hash, whether the run completed). digitlab
//! deletes, replaces or reuses only folders that carry it, and only the folder it
//! was given: anything else in the way is an error naming the path, and nothing is
//! touched. The marker also lists the entries the run created in the folder
//! ([`Marker::outputs`], recorded when the run finishes or ends with an error).
//! Replacing a marked folder removes exactly those; a folder holding anything
//! else (a file you put there, or the outputs of a run killed before it could
//! record them) is refused with the names, and nothing is removed.
//!
//! A run holds an advisory lock (`flock` through `fs4`) on its folder for as long
//! as its [`RunDir`] lives; [`LOCK_FILE`] inside it names the holder's process id
//! while it runs. A second process is refused with "run folder X is in use by
//! process N" before it writes anything. Claims are re-entrant within a process:
//! a library function claiming a folder its caller already holds gets a no-op
//! guard, so the CLI can claim early (to refuse before any work) and the library
//! still protects direct callers.
use crate::io::{run_id, temp_file_run_id, write_json};
use crate::{Result, TrainError};
use fs4::fs_std::FileExt;
use sha2::Digest;
use std::collections::{BTreeSet, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The marker file of a digitlab run folder.
pub const MARKER_FILE: &str = ".digitlab-run.json";
/// Names the process holding the folder's lock, while it runs.
pub const LOCK_FILE: &str = ".digitlab-lock";
/// Version of the marker format.
pub const MARKER_VERSION: u32 = 1;

/// What [`MARKER_FILE`] holds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Marker {
    /// Always [`MARKER_VERSION`]; identifies the file as digitlab's.
    pub digitlab_run: u32,
    /// The run id of the process that wrote the marker ([`crate::io::run_id`]).
    pub run_id: String,
    /// `train`, `sweep`, `transfer`, `theory`, `reproduce`, `feature-cache`.
    pub kind: String,
    /// [`config_hash`] of the config the folder holds the outputs of.
    pub config_hash: String,
    /// Whether the run finished and wrote all its outputs.
    pub complete: bool,
    pub created_by: String,
    /// Top-level entries the runs in this folder created (besides the marker),
    /// sorted; `None` in markers of older digitlab versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<String>>,
}

/// SHA-256 of a run's kind, the digitlab version and its config (as JSON): two
/// runs reuse each other's folder only when these agree.
pub fn config_hash<T: serde::Serialize>(kind: &str, config: &T) -> String {
    let json = serde_json::to_string(config).unwrap_or_default();
    let text = format!(
        "digitlab-run {MARKER_VERSION}\n{kind}\n{}\n{json}",
        env!("CARGO_PKG_VERSION")
    );
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// The marker of `dir`: `None` when it has none, an error naming the file when
/// it is there but not a valid marker.
pub fn read_marker(dir: &Path) -> Result<Option<Marker>> {
    let path = dir.join(MARKER_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(TrainError::Io { path, source }),
    };
    let m: Marker = serde_json::from_slice(&bytes).map_err(|e| TrainError::RunFolder {
        path: path.clone(),
        message: format!("is not a valid digitlab marker ({e}); nothing was changed"),
    })?;
    if m.digitlab_run != MARKER_VERSION {
        return Err(TrainError::RunFolder {
            path,
            message: format!(
                "marker format {} is not supported (this digitlab writes {MARKER_VERSION}); nothing was changed",
                m.digitlab_run
            ),
        });
    }
    Ok(Some(m))
}

/// What may happen to what is already at the run folder's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// A new run: the folder must be absent, empty, or a digitlab run of the same
    /// kind and config (whose contents are then replaced).
    Fresh,
    /// Continue the run in the folder: it must be a digitlab run of the same kind
    /// (the caller checks the config); nothing is removed.
    Resume,
    /// Like `Fresh`, but a digitlab run folder of any config or kind is replaced
    /// (`--force`). A folder without the marker is still refused.
    Force,
    /// Use the folder as it is when it is a digitlab folder of this kind (a suite's
    /// output folder, a feature cache), creating it when absent or empty.
    Keep,
}

/// Canonical paths of the run folders this process holds.
fn held() -> &'static Mutex<HashSet<PathBuf>> {
    static HELD: std::sync::OnceLock<Mutex<HashSet<PathBuf>>> = std::sync::OnceLock::new();
    HELD.get_or_init(|| Mutex::new(HashSet::new()))
}

/// A claimed run folder; the lock is released when it is dropped.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    kind: String,
    config_hash: String,
    /// `None` for a re-entrant claim of a folder this process already holds.
    lock: Option<DirLock>,
    /// This claim created the folder: a run that ends having written nothing in it
    /// removes it again.
    created: bool,
    /// The outermost parent folder this claim created (removed again with the
    /// folder when they are empty).
    created_parent: Option<PathBuf>,
    /// Entries recorded as digitlab's before this claim (kept on resume / reuse).
    previous_outputs: BTreeSet<OsString>,
    /// Entries present when the folder was claimed that are not digitlab's (a
    /// reused shared folder may hold them): never recorded as outputs.
    foreign: BTreeSet<OsString>,
    /// Whether [`RunDir::finish`] ran (the marker says complete).
    finished: std::cell::Cell<bool>,
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if self.lock.is_none() {
            return;
        }
        // A run that ends early (an error) still records what it wrote, so that a
        // later run may replace exactly that.
        if !self.finished.get() && matches!(read_marker(&self.path), Ok(Some(m)) if m.run_id == run_id()) {
            let _ = self.write_marker(false);
        }
        if !self.created {
            return;
        }
        let only_ours = std::fs::read_dir(&self.path).is_ok_and(|entries| {
            entries
                .flatten()
                .all(|e| e.file_name() == MARKER_FILE || e.file_name() == LOCK_FILE)
        });
        if only_ours && matches!(read_marker(&self.path), Ok(Some(m)) if !m.complete && m.run_id == run_id()) {
            let _ = std::fs::remove_file(self.path.join(MARKER_FILE));
            if let Some(l) = &mut self.lock {
                if l.wrote_pid {
                    let _ = std::fs::remove_file(&l.pid_file);
                    l.wrote_pid = false;
                }
            }
            let _ = std::fs::remove_dir(&self.path);
            if let Some(top) = &self.created_parent {
                for p in self.path.ancestors().skip(1) {
                    if std::fs::remove_dir(p).is_err() || p == top {
                        break;
                    }
                }
            }
        }
    }
}

#[derive(Debug)]
struct DirLock {
    /// The open folder: `flock` on it is the lock (no lock file to race on).
    _dir: File,
    canonical: PathBuf,
    pid_file: PathBuf,
    wrote_pid: bool,
}

impl Drop for DirLock {
    fn drop(&mut self) {
        if self.wrote_pid {
            let _ = std::fs::remove_file(&self.pid_file);
        }
        if let Ok(mut h) = held().lock() {
            h.remove(&self.canonical);
        }
        // Closing `_dir` releases the lock.
    }
}

fn err(path: &Path, message: impl Into<String>) -> TrainError {
    TrainError::RunFolder {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Whether `dir` is a folder with nothing in it (but a lock's pid file).
fn is_empty_dir(dir: &Path) -> Result<bool> {
    Ok(std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .flatten()
        .all(|e| e.file_name() == LOCK_FILE))
}

/// The top-level entries of `dir` that are not digitlab bookkeeping (the marker,
/// the lock's pid file, temporary files of digitlab's atomic writes).
fn entries(dir: &Path) -> Result<BTreeSet<OsString>> {
    Ok(std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != MARKER_FILE && n != LOCK_FILE && n.to_str().is_none_or(|n| temp_file_run_id(n).is_none()))
        .collect())
}

/// The recorded outputs of `m`, as file names.
fn recorded(m: &Marker) -> BTreeSet<OsString> {
    m.outputs.iter().flatten().map(OsString::from).collect()
}

/// Whether `name` belongs to the recorded `outputs`: one of them, or the lock
/// file of one (`.<output>.lock`, left by a killed writer).
fn is_recorded(name: &OsString, outputs: &BTreeSet<OsString>) -> bool {
    outputs.contains(name)
        || name
            .to_str()
            .and_then(|n| n.strip_prefix('.')?.strip_suffix(".lock"))
            .is_some_and(|o| outputs.contains(&OsString::from(o)))
}

/// Entries of the marked folder `dir` that its marker does not record as digitlab's.
fn unrecorded(dir: &Path, m: &Marker) -> Result<Vec<String>> {
    let outputs = recorded(m);
    Ok(entries(dir)?
        .into_iter()
        .filter(|n| !is_recorded(n, &outputs))
        .map(|n| n.to_string_lossy().into_owned())
        .collect())
}

/// Checks, without changing anything, that `dir` could be claimed with `start`
/// for `kind`/`hash` as things are now (a suite checks all its folders before it
/// runs anything). Returns the folder's marker, if any.
pub fn check(dir: &Path, kind: &str, hash: &str, start: Start) -> Result<Option<Marker>> {
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if start == Start::Resume {
                return Err(err(
                    dir,
                    "does not exist: nothing to resume (run without --resume to start a new run)",
                ));
            }
            return Ok(None);
        }
        Err(source) => {
            return Err(TrainError::Io {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    if !meta.is_dir() {
        return Err(err(
            dir,
            "exists and is not a folder; nothing was changed (choose another output folder)",
        ));
    }
    let marker = read_marker(dir)?;
    let Some(m) = marker else {
        if start == Start::Resume {
            return Err(err(
                dir,
                format!("is not a digitlab run folder (no {MARKER_FILE}): nothing to resume; nothing was changed"),
            ));
        }
        if is_empty_dir(dir)? {
            return Ok(None);
        }
        return Err(err(
            dir,
            format!(
                "exists and is not a digitlab run folder (no {MARKER_FILE}); nothing was changed: \
                 move it away or choose another output folder"
            ),
        ));
    };
    if start == Start::Force {
        refuse_unrecorded(dir, &m)?;
        return Ok(Some(m));
    }
    // Suites and caches have no --force: a folder of another kind is never theirs.
    let hint = if start == Start::Keep {
        "choose another output folder"
    } else {
        "use --force to replace it, or choose another output folder"
    };
    if m.kind != kind {
        return Err(err(
            dir,
            format!(
                "holds a digitlab `{}` run, not a `{kind}` one; nothing was changed ({hint})",
                m.kind
            ),
        ));
    }
    if start == Start::Fresh && m.config_hash != hash {
        return Err(err(
            dir,
            "holds a digitlab run of a different config; nothing was changed \
             (use --force to replace it, or choose another output folder)",
        ));
    }
    if start == Start::Fresh {
        refuse_unrecorded(dir, &m)?;
    }
    Ok(Some(m))
}

/// Replacing a marked folder removes only what digitlab recorded there: anything
/// else is an error naming it.
fn refuse_unrecorded(dir: &Path, m: &Marker) -> Result<()> {
    let mut unknown = unrecorded(dir, m)?;
    if unknown.is_empty() {
        return Ok(());
    }
    let more = unknown.len().saturating_sub(8);
    unknown.truncate(8);
    let list = unknown.join(", ")
        + &if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
    Err(err(
        dir,
        format!(
            "holds entries digitlab did not record writing ({list}); nothing was changed: move them away, or \
             choose another output folder (the outputs of a run killed before it could record them are \
             listed too: remove that folder yourself, or continue it with --resume where the command has it)"
        ),
    ))
}

/// Removes what the marker `m` of `dir` records as digitlab's (and digitlab's
/// temporary files and lock files of those): [`check`] has refused anything else.
fn clear(dir: &Path, m: &Marker) -> Result<()> {
    let outputs = recorded(m);
    for e in std::fs::read_dir(dir).map_err(io_err(dir))?.flatten() {
        let name = e.file_name();
        let ours = is_recorded(&name, &outputs) || name.to_str().is_some_and(|n| temp_file_run_id(n).is_some());
        if !ours {
            continue;
        }
        let p = e.path();
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir() && !t.is_symlink());
        let r = if is_dir {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        r.map_err(io_err(&p))?;
    }
    Ok(())
}

/// Locks the folder `dir` (which exists) or reports who holds it.
fn lock(dir: &Path) -> Result<DirLock> {
    let canonical = dir.canonicalize().map_err(io_err(dir))?;
    let f = File::open(&canonical).map_err(io_err(dir))?;
    let pid_file = dir.join(LOCK_FILE);
    let got = FileExt::try_lock_exclusive(&f).map_err(io_err(dir))?;
    if !got {
        // The holder writes its pid right after it locks: give it a moment.
        let mut pid = String::new();
        for _ in 0..20 {
            pid = std::fs::read_to_string(&pid_file)
                .unwrap_or_default()
                .trim()
                .to_string();
            if !pid.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        let who = if pid.is_empty() {
            "another process".to_string()
        } else {
            format!("process {pid}")
        };
        return Err(TrainError::InUse {
            path: dir.to_path_buf(),
            holder: who,
        });
    }
    Ok(DirLock {
        _dir: f,
        canonical,
        pid_file,
        wrote_pid: false,
    })
}

/// Who holds the lock of the folder `dir` right now (`None`: nobody, or no such
/// folder). Only tries the lock: nothing in the folder changes.
pub fn holder(dir: &Path) -> Result<Option<String>> {
    if !dir.is_dir() {
        return Ok(None);
    }
    if let Ok(c) = dir.canonicalize() {
        if held().lock().is_ok_and(|h| h.contains(&c)) {
            return Ok(Some(format!("process {}", std::process::id())));
        }
    }
    match lock(dir) {
        Ok(l) => {
            drop(l);
            Ok(None)
        }
        Err(TrainError::InUse { holder, .. }) => Ok(Some(holder)),
        Err(e) => Err(e),
    }
}

impl RunDir {
    /// Claims `dir` for a run of `kind` with config hash `hash` (see [`Start`]),
    /// creating it (and its parents) when absent. Holds the folder's lock until
    /// dropped. A folder this process already holds gives a no-op guard.
    pub fn claim(dir: &Path, kind: &str, hash: &str, start: Start) -> Result<RunDir> {
        if let Ok(c) = dir.canonicalize() {
            if held().lock().is_ok_and(|h| h.contains(&c)) {
                return Ok(RunDir {
                    path: dir.to_path_buf(),
                    kind: kind.into(),
                    config_hash: hash.into(),
                    lock: None,
                    created: false,
                    created_parent: None,
                    previous_outputs: BTreeSet::new(),
                    foreign: BTreeSet::new(),
                    finished: std::cell::Cell::new(false),
                });
            }
        }
        let mut created = false;
        let mut created_parent = None;
        match std::fs::symlink_metadata(dir) {
            Ok(_) => {}
            // Refuse before creating anything.
            Err(_) if start == Start::Resume => {
                check(dir, kind, hash, start)?;
            }
            Err(_) => {
                if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                    created_parent = parent
                        .ancestors()
                        .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
                        .last()
                        .map(Path::to_path_buf);
                    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
                }
                match std::fs::create_dir(dir) {
                    Ok(()) => created = true,
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(source) => {
                        return Err(TrainError::Io {
                            path: dir.to_path_buf(),
                            source,
                        })
                    }
                }
            }
        }
        if !dir.is_dir() || dir.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) {
            check(dir, kind, hash, start)?;
            return Err(err(dir, "exists and is not a folder; nothing was changed"));
        }
        // The lock first (opening and locking a folder changes nothing in it), then
        // the decision, so that no other process changes the folder in between.
        let mut lock = lock(dir)?;
        let marker = check(dir, kind, hash, start)?;
        let reuse = match (start, &marker) {
            (Start::Resume | Start::Keep, Some(_)) => true,
            (Start::Fresh | Start::Force, Some(m)) => {
                clear(dir, m)?;
                false
            }
            (_, None) => false,
        };
        // What is ours from before (kept when reusing), and what is not (never recorded).
        let previous_outputs = match (&marker, reuse) {
            (Some(m), true) => recorded(m),
            _ => BTreeSet::new(),
        };
        let foreign = entries(dir)?
            .into_iter()
            .filter(|n| !is_recorded(n, &previous_outputs))
            .collect();
        // Informational: who holds the lock (removed when the run ends). A folder
        // that cannot take it (read-only) still fails at the first real write.
        lock.wrote_pid = std::fs::write(&lock.pid_file, format!("{}\n", std::process::id())).is_ok();
        if let Ok(mut h) = held().lock() {
            h.insert(lock.canonical.clone());
        }
        let run = RunDir {
            path: dir.to_path_buf(),
            kind: kind.into(),
            config_hash: hash.into(),
            lock: Some(lock),
            created,
            created_parent,
            previous_outputs,
            foreign,
            finished: std::cell::Cell::new(false),
        };
        if !reuse {
            run.write_marker(false)?;
        }
        Ok(run)
    }

    /// [`RunDir::claim`], waiting up to `wait` while another process holds the
    /// folder (for shared folders that processes hold only for moments).
    pub fn claim_waiting(
        dir: &Path,
        kind: &str,
        hash: &str,
        start: Start,
        wait: std::time::Duration,
    ) -> Result<RunDir> {
        let started = std::time::Instant::now();
        loop {
            match RunDir::claim(dir, kind, hash, start) {
                Err(TrainError::InUse { .. }) if started.elapsed() < wait => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                r => return r,
            }
        }
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_marker(&self, complete: bool) -> Result<()> {
        let now = entries(&self.path)?;
        let mut outputs: Vec<String> = now
            .iter()
            .filter(|n| self.previous_outputs.contains(*n) || !self.foreign.contains(*n))
            .filter_map(|n| n.to_str().map(String::from))
            .collect();
        outputs.sort();
        let m = Marker {
            digitlab_run: MARKER_VERSION,
            run_id: run_id().to_string(),
            kind: self.kind.clone(),
            config_hash: self.config_hash.clone(),
            complete,
            created_by: format!("digitlab {}", env!("CARGO_PKG_VERSION")),
            outputs: Some(outputs),
        };
        Ok(write_json(&self.path.join(MARKER_FILE), &m)?)
    }

    /// Records that the run finished and wrote all its outputs (for the config it
    /// was claimed with). A no-op on a re-entrant claim: the outer claim finishes.
    pub fn finish(&self) -> Result<()> {
        if self.lock.is_none() {
            return Ok(());
        }
        self.write_marker(true)?;
        self.finished.set(true);
        Ok(())
    }
}

/// Claims `dir` for training `cfg` (`train` kind): a new run, or `--resume`.
pub fn claim_for_training(dir: &Path, cfg: &crate::ExperimentConfig, resume: bool) -> Result<RunDir> {
    let start = if resume { Start::Resume } else { Start::Fresh };
    RunDir::claim(dir, "train", &config_hash("train", cfg), start)
}

/// Claims `dir` for the search `cfg` describes (`sweep` kind).
pub fn claim_for_sweep(dir: &Path, cfg: &crate::ExperimentConfig) -> Result<RunDir> {
    RunDir::claim(dir, "sweep", &config_hash("sweep", cfg), Start::Fresh)
}

/// Makes sure the shared folder `dir` (a feature cache) is digitlab's: creates it
/// with a marker of `kind` when absent or empty; refuses a folder without one.
pub fn ensure_shared_dir(dir: &Path, kind: &str) -> Result<()> {
    if check(dir, kind, "", Start::Keep)?.is_some() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let m = Marker {
        digitlab_run: MARKER_VERSION,
        run_id: run_id().to_string(),
        kind: kind.into(),
        config_hash: String::new(),
        complete: true,
        created_by: format!("digitlab {}", env!("CARGO_PKG_VERSION")),
        // A shared folder is never replaced, only reused: it records nothing.
        outputs: None,
    };
    Ok(write_json(&dir.join(MARKER_FILE), &m)?)
}

/// Removes the temporary files ([`crate::io::temp_path`]) that crashed or killed runs left in
/// the run folder `dir`: only names of exactly that form, of another run id whose
/// process no longer runs (checked on Linux), and only when `dir` carries
/// digitlab's marker. Anything else is left alone. Returns how
/// many went.
pub fn remove_stale_temp_files(dir: &Path) -> usize {
    if !matches!(read_marker(dir), Ok(Some(_))) {
        return 0;
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let can_check = Path::new("/proc/self").exists();
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(id) = name.to_str().and_then(temp_file_run_id) else {
            continue;
        };
        let pid = id.rsplit_once('-').map_or("", |(_, p)| p);
        let alive = id == run_id() || (can_check && Path::new("/proc").join(pid).exists());
        if !alive
            && e.file_type().is_ok_and(|t| t.is_file() || t.is_symlink())
            && std::fs::remove_file(e.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

/// An exclusive lock on one file being written (`.<name>.lock` beside it, removed
/// when dropped). Waits for another process writing the same file.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
    path: PathBuf,
}

/// Opens (creating it) the lock file `path` and tries to take its exclusive
/// `flock` without waiting: the file, and whether the lock was taken.
pub fn open_and_try_lock(path: &Path) -> Result<(File, bool)> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_err(path))?;
    let got = FileExt::try_lock_exclusive(&f).map_err(io_err(path))?;
    Ok((f, got))
}

impl FileLock {
    /// Locks `target` (its lock file), waiting while another process holds it;
    /// `waiting` is called once if it has to wait.
    pub fn acquire(target: &Path, waiting: impl FnOnce(&str)) -> Result<FileLock> {
        let name = target.file_name().unwrap_or_default().to_string_lossy();
        let path = target.with_file_name(format!(".{name}.lock"));
        let mut waiting = Some(waiting);
        loop {
            let (f, got) = open_and_try_lock(&path)?;
            if !got {
                if let Some(w) = waiting.take() {
                    let pid = std::fs::read_to_string(&path).unwrap_or_default();
                    let who = match pid.trim() {
                        "" => "another process".to_string(),
                        p => format!("process {p}"),
                    };
                    w(&who);
                }
                FileExt::lock_exclusive(&f).map_err(io_err(&path))?;
            }
            // The holder before us removes the file when done: lock only the file
            // that is still at the path, else start over.
            if same_file(&f, &path) {
                let _ = f.set_len(0);
                let _ = std::io::Write::write_all(&mut &f, format!("{}\n", std::process::id()).as_bytes());
                return Ok(FileLock { _file: f, path });
            }
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // Remove while still holding the lock; closing the file releases it.
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(unix)]
fn same_file(f: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (f.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_: &File, path: &Path) -> bool {
    path.exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replacing_a_run_removes_only_what_it_recorded() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("run");
        {
            let r = RunDir::claim(&dir, "train", "h1", Start::Fresh).unwrap();
            std::fs::create_dir(dir.join("plots")).unwrap();
            std::fs::write(dir.join("plots/loss.png"), b"png").unwrap();
            std::fs::write(dir.join("summary.json"), b"{}").unwrap();
            r.finish().unwrap();
        }
        // A file the user put into the run folder afterwards.
        std::fs::write(dir.join("my-notes.txt"), b"mine").unwrap();
        for start in [Start::Fresh, Start::Force] {
            let e = RunDir::claim(&dir, "train", "h1", start).unwrap_err().to_string();
            assert!(e.contains("my-notes.txt") && e.contains("nothing was changed"), "{e}");
            assert!(dir.join("summary.json").exists() && dir.join("plots/loss.png").exists());
        }
        // Resuming or reusing never removes anything, and never adopts the user's file.
        {
            let r = RunDir::claim(&dir, "train", "h1", Start::Resume).unwrap();
            std::fs::write(dir.join("last.json"), b"{}").unwrap();
            r.finish().unwrap();
        }
        let m = read_marker(&dir).unwrap().unwrap();
        assert_eq!(
            m.outputs.unwrap(),
            ["last.json", "plots", "summary.json"].map(String::from)
        );
        assert!(RunDir::claim(&dir, "train", "h2", Start::Force).is_err());
        std::fs::rename(dir.join("my-notes.txt"), root.path().join("my-notes.txt")).unwrap();
        drop(RunDir::claim(&dir, "train", "h2", Start::Force).unwrap());
        assert!(!dir.join("summary.json").exists() && !dir.join("plots").exists());

        // A run that ends with an error still records what it wrote (on drop).
        {
            let _r = RunDir::claim(&dir, "train", "h3", Start::Force).unwrap();
            std::fs::write(dir.join("partial.csv"), b"1").unwrap();
        }
        assert_eq!(
            read_marker(&dir).unwrap().unwrap().outputs.unwrap(),
            ["partial.csv".to_string()]
        );
        drop(RunDir::claim(&dir, "train", "h3", Start::Fresh).unwrap());
        assert!(!dir.join("partial.csv").exists());
    }

    #[test]
    fn claim_creates_marks_and_refuses_foreign_or_other_configs() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("run");
        {
            let r = RunDir::claim(&dir, "train", "h1", Start::Fresh).unwrap();
            let m = read_marker(&dir).unwrap().unwrap();
            assert_eq!(
                (m.kind.as_str(), m.config_hash.as_str(), m.complete),
                ("train", "h1", false)
            );
            assert_eq!(m.run_id, run_id());
            // Re-entrant in this process.
            RunDir::claim(&dir, "train", "h1", Start::Fresh)
                .unwrap()
                .finish()
                .unwrap();
            assert!(!read_marker(&dir).unwrap().unwrap().complete);
            std::fs::write(dir.join("summary.json"), b"{}").unwrap();
            r.finish().unwrap();
            let m = read_marker(&dir).unwrap().unwrap();
            assert!(m.complete);
            assert_eq!(m.outputs, Some(vec!["summary.json".to_string()]));
        }
        assert!(!dir.join(LOCK_FILE).exists(), "the pid file goes with the lock");
        let e = RunDir::claim(&dir, "train", "h2", Start::Fresh)
            .unwrap_err()
            .to_string();
        assert!(e.contains(&dir.display().to_string()) && e.contains("--force"), "{e}");
        assert!(dir.join("summary.json").exists());
        // Same config: the folder is rewritten from scratch.
        drop(RunDir::claim(&dir, "train", "h1", Start::Fresh).unwrap());
        assert!(!dir.join("summary.json").exists());
        // --force replaces another config's run.
        drop(RunDir::claim(&dir, "train", "h2", Start::Force).unwrap());
        assert_eq!(read_marker(&dir).unwrap().unwrap().config_hash, "h2");

        let mine = root.path().join("mine");
        std::fs::create_dir(&mine).unwrap();
        std::fs::write(mine.join("notes.txt"), b"keep").unwrap();
        for start in [Start::Fresh, Start::Force, Start::Keep, Start::Resume] {
            let e = RunDir::claim(&mine, "train", "h", start).unwrap_err().to_string();
            assert!(e.contains(&mine.display().to_string()), "{e}");
        }
        assert_eq!(std::fs::read_dir(&mine).unwrap().count(), 1);
        let file = root.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(RunDir::claim(&file, "train", "h", Start::Fresh)
            .unwrap_err()
            .to_string()
            .contains("not a folder"));
        let absent = root.path().join("absent");
        assert!(RunDir::claim(&absent, "train", "h", Start::Resume).is_err());
        assert!(!absent.exists());
        // A claim whose run wrote nothing leaves nothing, parents included.
        let deep = root.path().join("a/b/run");
        drop(RunDir::claim(&deep, "train", "h", Start::Fresh).unwrap());
        assert!(!root.path().join("a").exists());
    }

    #[test]
    fn stale_cleanup_needs_a_marker_and_the_exact_pattern() {
        let dir = tempfile::tempdir().unwrap();
        // A dead process's temporary file (pid 0 never runs) and a user's files.
        let stale = dir.path().join(".model-e1.safetensors.1a2b-0.tmp");
        for p in [&stale, &dir.path().join("notes.tmp3"), &dir.path().join("a.tmp0")] {
            std::fs::write(p, b"x").unwrap();
        }
        assert_eq!(remove_stale_temp_files(dir.path()), 0, "no marker: nothing may go");
        assert!(stale.exists());
        let run = RunDir::claim(dir.path(), "train", "h", Start::Fresh);
        assert!(run.is_err(), "a folder with foreign files is not taken");
        let marked = tempfile::tempdir().unwrap();
        let _run = RunDir::claim(marked.path(), "train", "h", Start::Fresh).unwrap();
        let stale = marked.path().join(".model-e1.safetensors.1a2b-0.tmp");
        let user = marked.path().join("notes.tmp3");
        std::fs::write(&stale, b"x").unwrap();
        std::fs::write(&user, b"x").unwrap();
        assert_eq!(remove_stale_temp_files(marked.path()), 1);
        assert!(!stale.exists() && user.exists());
    }

    #[test]
    fn a_second_writer_of_a_file_waits_for_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("f.safetensors");
        let first = FileLock::acquire(&target, |_| panic!("nobody else holds it")).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let t = target.clone();
        // flock locks belong to open files, so a second open in this process waits too.
        let second = std::thread::spawn(move || {
            let l = FileLock::acquire(&t, |who| tx.send(who.to_string()).unwrap()).unwrap();
            drop(l);
        });
        let who = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the second writer waits");
        assert_eq!(who, format!("process {}", std::process::id()));
        assert!(!second.is_finished());
        drop(first);
        second.join().unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn file_locks_are_removed_when_released() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("x.safetensors");
        let l = FileLock::acquire(&target, |_| panic!("nobody else holds it")).unwrap();
        assert!(dir.path().join(".x.safetensors.lock").exists());
        drop(l);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
