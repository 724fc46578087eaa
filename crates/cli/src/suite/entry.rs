//! A suite file: its experiments and their modes.
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};

/// A suite file (`configs/suites/*.toml`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suite {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(rename = "experiment")]
    pub experiments: Vec<SuiteEntry>,
}

/// One experiment of a suite.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuiteEntry {
    /// Config file, relative to the suite's `configs/` folder (train and sweep).
    #[serde(default)]
    pub config: String,
    /// Theory-lab topics for `mode = "theory"` (`all`, a name or a number; default all).
    #[serde(default)]
    pub topic: Option<String>,
    #[serde(default)]
    pub mode: Mode,
    /// The question the experiment answers (shown in the report).
    #[serde(default)]
    pub question: String,
    /// Test accuracy reported in the coursework, for comparison.
    #[serde(default)]
    pub reported: Option<f64>,
    /// Per-backbone coursework results of a transfer entry (`label = accuracy`).
    #[serde(default)]
    pub reported_backbones: std::collections::BTreeMap<String, f64>,
    /// Overrides always applied.
    #[serde(default)]
    pub set: Vec<String>,
    /// Overrides applied instead when the config's dataset is absent (e.g. switch to
    /// the embedded digits); without them the experiment is skipped.
    #[serde(default)]
    pub fallback: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Train,
    Sweep,
    /// The theory lab (`digitlab theory`): its report becomes a section.
    Theory,
    /// Frozen-backbone transfer learning (`digitlab transfer`): every backbone whose
    /// weights are reachable (random weights, local files, the Hugging Face cache)
    /// runs; the others are skipped with a reason each.
    Transfer,
}

/// Finds a suite by name (`quick` -> `configs/suites/quick.toml`) or path.
pub fn suite_path(suite: &str) -> PathBuf {
    let p = PathBuf::from(suite);
    if p.extension().is_some_and(|e| e == "toml") || p.is_file() {
        p
    } else {
        PathBuf::from("configs/suites").join(format!("{suite}.toml"))
    }
}

pub fn load_suite(path: &Path) -> Result<Suite> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "{}: cannot read the suite (suites live in configs/suites/)",
            path.display()
        )
    })?;
    let suite: Suite = toml::from_str(&text).with_context(|| format!("{}: invalid suite", path.display()))?;
    suite.validate(path)?;
    Ok(suite)
}

impl Suite {
    /// Checks what types cannot, naming the suite file and the key.
    fn validate(&self, path: &Path) -> Result<()> {
        digitlab_train::config::validate_name("name", &self.name).map_err(|m| anyhow!("{}: {m}", path.display()))?;
        if self.experiments.is_empty() {
            bail!("{}: the suite lists no [[experiment]]", path.display());
        }
        for (i, e) in self.experiments.iter().enumerate() {
            if e.mode != Mode::Theory && e.config.is_empty() {
                bail!(
                    "{}: experiment {} needs `config = \"<file>.toml\"`",
                    path.display(),
                    i + 1
                );
            }
        }
        Ok(())
    }
}
