//! What every topic returns: a [`Verdict`], [`Table`]s and [`Plot`]s, behind the
//! [`TopicResult`] trait, plus the number formatting the topics share. Topics depend
//! on this module only; the [`registry`](crate::registry) and the
//! [`report`](crate::report) depend on the topics, never the other way round.
use crate::error::Result;
use crate::Topic;
use std::path::{Path, PathBuf};

/// A small table of results (title, headers, rows; Markdown or terminal text).
pub use digitlab_report::Table;

/// The answer to a topic's question and the evidence for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// True when every check of the topic came out as the claim says.
    pub holds: bool,
    /// One or two sentences: the answer.
    pub answer: String,
    /// Bullet points with the numbers behind the answer.
    pub evidence: Vec<String>,
}

/// One PNG written by a topic (file name relative to the output folder).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plot {
    pub file: String,
    pub caption: String,
}

/// What every topic's result provides.
pub trait TopicResult {
    fn verdict(&self) -> Verdict;
    fn tables(&self) -> Vec<Table>;
    /// Writes the topic's PNGs into `dir` (created if missing); returns them in order.
    fn write_plots(&self, dir: &Path) -> Result<Vec<Plot>>;
}

/// Compact number formatting for tables: 4 significant digits, scientific outside
/// `[1e-3, 1e5)`, `-` for NaN.
pub fn num(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if x == 0.0 {
        return "0".into();
    }
    let a = x.abs();
    if (1e-3..1e5).contains(&a) {
        let decimals = (3 - a.log10().floor() as i32).clamp(0, 6) as usize;
        format!("{x:.decimals$}")
    } else {
        format!("{x:.3e}")
    }
}

/// `part / whole` as a percentage with one decimal (`-` when `whole` is 0).
pub fn pct(part: usize, whole: usize) -> String {
    digitlab_report::format::pct((whole > 0).then(|| part as f64 / whole as f64), 1)
}

/// Path of a plot file in `dir` (`<topic>_<name>.png`) and its relative name.
pub(crate) fn plot_path(dir: &Path, topic: Topic, name: &str) -> (PathBuf, String) {
    let file = format!("{}_{name}.png", topic.name());
    (dir.join(&file), file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_percentages() {
        assert_eq!(num(0.000123456), "1.235e-4");
        assert_eq!(num(12.3456), "12.35");
        assert_eq!(num(f64::NAN), "NaN");
        assert_eq!(pct(1, 3), "33.3%");
        assert_eq!(pct(1, 0), "-");
    }
}
