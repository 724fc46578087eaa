//! Where datasets live: `--data-dir`, else `$DIGITLAB_DATA`, else `./data`.
use std::path::{Path, PathBuf};

/// Environment variable naming the data directory.
pub const DATA_ENV: &str = "DIGITLAB_DATA";

/// Resolves the data directory from an explicit flag, the environment, or the default.
pub fn resolve_data_dir(flag: Option<&Path>) -> PathBuf {
    resolve_with(flag, std::env::var_os(DATA_ENV).map(PathBuf::from))
}

/// [`resolve_data_dir`] with the environment value passed in (testable, no global state).
pub fn resolve_with(flag: Option<&Path>, env: Option<PathBuf>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or(env.filter(|p| !p.as_os_str().is_empty()))
        .unwrap_or_else(|| PathBuf::from("data"))
}

/// Checks that the data folder `dir` (and `sub`, a dataset folder inside it) is a
/// folder when it exists: a file there is named, instead of the dataset being
/// reported as absent.
pub fn check_data_dir(dir: &Path, sub: Option<&Path>) -> crate::Result<()> {
    for p in std::iter::once(dir).chain(sub) {
        if p.exists() && !p.is_dir() {
            return Err(crate::DataError::Invalid(format!(
                "data folder {}: is a file, expected a folder (--data-dir or $DIGITLAB_DATA)",
                p.display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_beats_env_beats_default() {
        let env = Some(PathBuf::from("/env"));
        assert_eq!(
            resolve_with(Some(Path::new("/flag")), env.clone()),
            PathBuf::from("/flag")
        );
        assert_eq!(resolve_with(None, env), PathBuf::from("/env"));
        assert_eq!(resolve_with(None, Some(PathBuf::new())), PathBuf::from("data"));
        assert_eq!(resolve_with(None, None), PathBuf::from("data"));
    }
}
