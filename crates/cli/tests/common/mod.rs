//! Helpers shared by the CLI's data-safety tests: a snapshot of a folder tree,
//! so a test can assert that a command changed nothing outside the run folder it
//! was given.
#![allow(dead_code)]
use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

/// What a snapshot records for one entry: a folder, or a file with its length and
/// a hash of its bytes (enough to see any change a test makes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir,
    File { len: u64, hash: u64 },
    Other,
}

/// Every entry under a root, keyed by its path relative to that root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub root: PathBuf,
    pub entries: BTreeMap<PathBuf, Entry>,
}

impl Snapshot {
    /// Walks `root` (links are recorded, not followed).
    pub fn take(root: &Path) -> Snapshot {
        let mut entries = BTreeMap::new();
        walk(root, root, &mut entries);
        Snapshot {
            root: root.to_path_buf(),
            entries,
        }
    }

    /// The relative paths that were added, removed or changed between `self` and
    /// `after`.
    pub fn changes(&self, after: &Snapshot) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for (p, e) in &self.entries {
            if after.entries.get(p) != Some(e) {
                out.push(p.clone());
            }
        }
        for p in after.entries.keys() {
            if !self.entries.contains_key(p) {
                out.push(p.clone());
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Panics, listing them, if anything changed outside the folders `allowed`
    /// (relative to the root; a change to an allowed folder itself or anything
    /// below it is fine).
    pub fn assert_only_changed_within(&self, after: &Snapshot, allowed: &[&Path]) {
        let outside: Vec<PathBuf> = self
            .changes(after)
            .into_iter()
            .filter(|p| !allowed.iter().any(|a| p.starts_with(a)))
            .collect();
        assert!(
            outside.is_empty(),
            "changed outside {allowed:?} under {}: {outside:?}",
            self.root.display()
        );
    }

    /// Panics if anything at all changed.
    pub fn assert_unchanged(&self, after: &Snapshot) {
        let changed = self.changes(after);
        assert!(changed.is_empty(), "changed under {}: {changed:?}", self.root.display());
    }
}

fn walk(root: &Path, dir: &Path, entries: &mut BTreeMap<PathBuf, Entry>) {
    let Ok(read) = std::fs::read_dir(dir) else { return };
    for item in read.flatten() {
        let path = item.path();
        let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            entries.insert(rel, Entry::Dir);
            walk(root, &path, entries);
        } else if meta.is_file() {
            let bytes = std::fs::read(&path).unwrap_or_default();
            let mut h = DefaultHasher::new();
            bytes.hash(&mut h);
            entries.insert(
                rel,
                Entry::File {
                    len: meta.len(),
                    hash: h.finish(),
                },
            );
        } else {
            entries.insert(rel, Entry::Other);
        }
    }
}
