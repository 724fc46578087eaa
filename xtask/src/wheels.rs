//! Folders filled from PyPI wheels by one `pip install --no-deps --target` call,
//! marked as digitlab's by a stamp file (`cargo xtask cuda-toolchain`, `cargo xtask
//! mkl`): a folder without the stamp is never written into unless it is empty, and
//! an install goes to a staging folder that is swapped in only when complete.
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// What a folder holds.
pub struct Kind {
    /// The stamp's file name inside the folder.
    pub stamp_file: &'static str,
    /// The stamp's `marker` value.
    pub marker: &'static str,
    /// For messages: "a digitlab CUDA toolchain".
    pub what: &'static str,
    /// For messages: the download size.
    pub size: &'static str,
    /// A file the wheels must have installed (relative to the folder).
    pub sentinel: &'static str,
    pub layout: Layout,
}

/// Which part of the wheels ends up in the folder.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// What `pip install --target` installs (the packages).
    Packages,
    /// The wheels' data files (`<name>.data/data/...`, e.g. `lib/libmkl_core.a`),
    /// which `pip install --target` drops: the wheels are downloaded and unpacked.
    DataFiles,
}

#[derive(serde::Serialize, serde::Deserialize, PartialEq, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct Stamp {
    pub marker: String,
    pub wheels: Vec<String>,
    /// CUDA toolchain only: `cudarc <version>` the stand-ins were generated from;
    /// empty before they are.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stand_ins_from: String,
}

pub fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("cannot make {} absolute", p.display()))
}

/// Single-quoted for `sh`, so folders with spaces survive `eval`.
pub fn sh_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

impl Kind {
    /// The folder's stamp; `None` for a missing or empty folder; an error for a
    /// folder that is someone else's.
    pub fn read_stamp(&self, dir: &Path) -> Result<Option<Stamp>> {
        let stamp_file = self.stamp_file;
        let path = dir.join(stamp_file);
        if !dir.exists() {
            return Ok(None);
        }
        if !path.exists() {
            let empty = std::fs::read_dir(dir)
                .with_context(|| format!("cannot read {}", dir.display()))?
                .next()
                .is_none();
            ensure!(
                empty,
                "{} exists and is not {} (no {stamp_file}): refusing to install into it; pass --dir with a new or empty folder",
                dir.display(),
                self.what
            );
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let stamp: Stamp = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a valid stamp (expected marker, wheels)", path.display()))?;
        ensure!(
            stamp.marker == self.marker,
            "{}: marker is not {:?}",
            path.display(),
            self.marker
        );
        Ok(Some(stamp))
    }

    pub fn write_stamp(&self, dir: &Path, stamp: &Stamp) -> Result<()> {
        let path = dir.join(self.stamp_file);
        let tmp = dir.join(format!("{}.tmp-{}", self.stamp_file, std::process::id()));
        std::fs::write(&tmp, serde_json::to_string_pretty(stamp)?)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
    }

    /// Whether `dir` already holds exactly `wheels`.
    pub fn is_installed(&self, dir: &Path, stamp: Option<&Stamp>, wheels: &[String]) -> bool {
        stamp.is_some_and(|s| s.wheels == wheels) && dir.join(self.sentinel).is_file()
    }

    /// Installs the wheels into a staging folder beside `dir`, then swaps it in, so
    /// an interrupted or failed install leaves the previous folder (or nothing).
    /// `replace`: `dir` carries this kind's stamp (checked by `read_stamp`).
    pub fn install(&self, dir: &Path, python: &str, wheels: &[String], replace: bool) -> Result<()> {
        let parent = dir.parent().context("the folder has no parent")?;
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        let name = dir.file_name().context("the folder has no name")?.to_string_lossy();
        let staging = parent.join(format!(".{name}.partial-{}", std::process::id()));
        let old = parent.join(format!(".{name}.old-{}", std::process::id()));
        // Both are removed later, so they must be ours: refuse names already taken.
        for p in [&staging, &old] {
            ensure!(
                !p.exists(),
                "{} already exists and is not ours to remove: move it away and run again",
                p.display()
            );
        }
        eprintln!(
            "installing {} into {} (pip, {})",
            wheels.join(" "),
            dir.display(),
            self.size
        );
        if let Err(e) = self.fetch(&staging, python, wheels) {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
        let sentinel = staging.join(self.sentinel);
        if !sentinel.is_file() {
            let _ = std::fs::remove_dir_all(&staging);
            bail!(
                "the wheels installed, but {} is missing: the wheel layout changed",
                sentinel.display()
            );
        }
        self.write_stamp(
            &staging,
            &Stamp {
                marker: self.marker.into(),
                wheels: wheels.to_vec(),
                stand_ins_from: String::new(),
            },
        )?;
        if replace {
            std::fs::rename(dir, &old).with_context(|| format!("cannot move {} aside", dir.display()))?;
            std::fs::rename(&staging, dir)
                .with_context(|| format!("cannot move the new folder to {}", dir.display()))?;
            std::fs::remove_dir_all(&old).with_context(|| format!("cannot remove {}", old.display()))?;
        } else {
            if dir.exists() {
                // Empty (checked by read_stamp).
                std::fs::remove_dir(dir).with_context(|| format!("cannot replace the empty {}", dir.display()))?;
            }
            std::fs::rename(&staging, dir).with_context(|| format!("cannot move the folder to {}", dir.display()))?;
        }
        Ok(())
    }
}

impl Kind {
    /// Fills `staging` with the wheels' files as [`Layout`] says.
    fn fetch(&self, staging: &Path, python: &str, wheels: &[String]) -> Result<()> {
        let pip = |args: &[&str], extra: &[&std::ffi::OsStr]| -> Result<()> {
            let status = Command::new(python)
                .args(["-m", "pip"])
                .args(args)
                .args(["--no-deps", "--disable-pip-version-check", "--no-input", "--retries", "2", "--timeout", "30"])
                .args(extra)
                .args(wheels)
                .stdin(Stdio::null())
                .stdout(std::io::stderr())
                .status()
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot run `{python} -m pip` ({e}): python3 with pip is needed to fetch the wheels (or use --python)"
                    )
                })?;
            ensure!(
                status.success(),
                "`{python} -m pip {}` of {} failed ({status}): is PyPI reachable? (a mirror can be set with PIP_INDEX_URL)",
                args[0],
                wheels.join(" ")
            );
            Ok(())
        };
        match self.layout {
            Layout::Packages => pip(&["install"], &["--target".as_ref(), staging.as_os_str()]),
            Layout::DataFiles => {
                let downloads = staging.join(".wheels");
                pip(
                    &["download", "--only-binary", ":all:"],
                    &["-d".as_ref(), downloads.as_os_str()],
                )?;
                let unpacked = staging.join(".unpacked");
                for entry in
                    std::fs::read_dir(&downloads).with_context(|| format!("cannot read {}", downloads.display()))?
                {
                    let whl = entry?.path();
                    let status = Command::new(python)
                        .args(["-m", "zipfile", "-e"])
                        .arg(&whl)
                        .arg(&unpacked)
                        .status()
                        .with_context(|| format!("cannot run `{python} -m zipfile`"))?;
                    ensure!(status.success(), "cannot unpack {} ({status})", whl.display());
                }
                // `<name>-<version>.data/data/<dir>` becomes `<staging>/<dir>`.
                for entry in
                    std::fs::read_dir(&unpacked).with_context(|| format!("cannot read {}", unpacked.display()))?
                {
                    let data = entry?.path().join("data");
                    if !data.is_dir() {
                        continue;
                    }
                    for item in std::fs::read_dir(&data)? {
                        let item = item?;
                        let to = staging.join(item.file_name());
                        ensure!(!to.exists(), "two wheels both install {}", to.display());
                        std::fs::rename(item.path(), &to)
                            .with_context(|| format!("cannot move {} to {}", item.path().display(), to.display()))?;
                    }
                }
                std::fs::remove_dir_all(&downloads)?;
                std::fs::remove_dir_all(&unpacked)?;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIND: Kind = Kind {
        stamp_file: "digitlab-test.json",
        marker: "digitlab test",
        what: "a digitlab test folder",
        size: "0 MB",
        sentinel: "lib/x",
        layout: Layout::Packages,
    };

    #[test]
    fn foreign_folder_is_refused() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("someone-elses.txt"), "x").unwrap();
        let err = KIND.read_stamp(d.path()).err().unwrap().to_string();
        assert!(err.contains("not a digitlab test folder"), "{err}");
        // An empty folder is fine (nothing to lose), and the file is untouched.
        assert!(KIND.read_stamp(tempfile::tempdir().unwrap().path()).unwrap().is_none());
        assert!(d.path().join("someone-elses.txt").exists());
    }

    #[test]
    fn stamps_round_trip_and_other_markers_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let stamp = Stamp {
            marker: KIND.marker.into(),
            wheels: vec!["w==1".into()],
            stand_ins_from: String::new(),
        };
        KIND.write_stamp(d.path(), &stamp).unwrap();
        assert_eq!(KIND.read_stamp(d.path()).unwrap(), Some(stamp));
        let other = Kind {
            marker: "digitlab other",
            ..KIND
        };
        assert!(other.read_stamp(d.path()).is_err());
    }

    #[test]
    fn a_taken_staging_name_is_refused_and_left_alone() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("tool");
        let taken = parent.path().join(format!(".tool.partial-{}", std::process::id()));
        std::fs::create_dir(&taken).unwrap();
        std::fs::write(taken.join("someone-elses.txt"), "x").unwrap();
        // The check comes before pip runs (this interpreter does not exist).
        let err = KIND
            .install(&dir, "/nonexistent/python", &["w==1".into()], false)
            .unwrap_err();
        assert!(err.to_string().contains("not ours to remove"), "{err}");
        assert!(taken.join("someone-elses.txt").exists());
        assert!(!dir.exists());
    }

    #[test]
    fn sh_quote_survives_quotes() {
        assert_eq!(sh_quote(Path::new("/a b/c'd")), r"'/a b/c'\''d'");
    }
}
