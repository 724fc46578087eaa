//! Tables, verdicts, plots and the Markdown report (`theory.md`) that
//! `digitlab theory all --out DIR` writes.
//!
//! Every topic returns a typed result that implements [`TopicResult`]: the verdict
//! (the answer and the evidence), its tables and its plots. [`run_topics`] runs the
//! topics asked for, writes every PNG into the output folder and assembles
//! `theory.md` with relative links to them.
use crate::data::{TheoryConfig, TheoryData};
use crate::error::{Result, TheoryError};
use crate::Topic;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A small table of results.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub title: String,
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(title: impl Into<String>, headers: &[&str]) -> Self {
        Self {
            title: title.into(),
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row (must have one cell per header).
    pub fn push(&mut self, row: Vec<String>) {
        debug_assert_eq!(row.len(), self.headers.len(), "table `{}`: row width", self.title);
        self.rows.push(row);
    }

    /// GitHub-flavoured Markdown, with the title in bold above.
    pub fn to_markdown(&self) -> String {
        let esc = |s: &str| s.replace('|', "\\|");
        let mut out = format!("**{}**\n\n", self.title);
        out += &format!(
            "| {} |\n",
            self.headers.iter().map(|h| esc(h)).collect::<Vec<_>>().join(" | ")
        );
        out += &format!("|{}\n", "---|".repeat(self.headers.len()));
        for r in &self.rows {
            out += &format!("| {} |\n", r.iter().map(|c| esc(c)).collect::<Vec<_>>().join(" | "));
        }
        out
    }

    /// Plain text with aligned columns, for the terminal.
    pub fn to_text(&self) -> String {
        let width = |s: &str| s.chars().count();
        let mut w: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                if i < w.len() {
                    w[i] = w[i].max(width(c));
                }
            }
        }
        let line = |cells: &[String]| {
            cells
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c}{}", " ".repeat(w[i].saturating_sub(width(c)))))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        };
        let mut out = format!("{}\n", self.title);
        out += &line(&self.headers);
        out.push('\n');
        out += &w.iter().map(|n| "-".repeat(*n)).collect::<Vec<_>>().join("  ");
        out.push('\n');
        for r in &self.rows {
            out += &line(r);
            out.push('\n');
        }
        out
    }
}

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

/// One topic of the report.
#[derive(Debug, Clone)]
pub struct Section {
    pub topic: Topic,
    pub verdict: Verdict,
    pub tables: Vec<Table>,
    pub plots: Vec<Plot>,
    /// Wall time of the computation (plots excluded).
    pub seconds: f64,
    /// Wall time of writing the plots.
    pub plot_seconds: f64,
}

impl Section {
    /// The section as terminal text: question, verdict, evidence, tables, plot files.
    pub fn to_text(&self, out: &Path) -> String {
        let mut s = format!(
            "== {}. {} ({}) ==\n",
            self.topic.number(),
            self.topic.title(),
            self.topic.name()
        );
        let _ = writeln!(s, "Q: {}", self.topic.question());
        let _ = writeln!(
            s,
            "Verdict [{}]: {}",
            if self.verdict.holds {
                "claim holds"
            } else {
                "CLAIM FAILED"
            },
            self.verdict.answer
        );
        for e in &self.verdict.evidence {
            let _ = writeln!(s, "  - {e}");
        }
        for t in &self.tables {
            s.push('\n');
            s += &t.to_text();
        }
        if !self.plots.is_empty() {
            let _ = writeln!(s, "\nplots:");
            for p in &self.plots {
                let _ = writeln!(s, "  {}", out.join(&p.file).display());
            }
        }
        let _ = writeln!(s, "({:.1}s compute, {:.1}s plots)", self.seconds, self.plot_seconds);
        s
    }
}

/// Everything a run of [`run_topics`] produced.
#[derive(Debug, Clone)]
pub struct Report {
    pub sections: Vec<Section>,
    pub data_description: String,
    /// `<out>/theory.md`.
    pub markdown: PathBuf,
}

impl Report {
    /// True when every topic's claim held.
    pub fn all_hold(&self) -> bool {
        self.sections.iter().all(|s| s.verdict.holds)
    }
}

/// Runs one topic on already loaded data (no plots).
pub fn compute_topic(topic: Topic, data: &TheoryData, cfg: &TheoryConfig) -> Result<Box<dyn TopicResult>> {
    Ok(match topic {
        Topic::CeVsMse => Box::new(crate::ce_vs_mse::run(data, cfg)?),
        Topic::DeepLinear => Box::new(crate::deep_linear::run(data, cfg)?),
        Topic::Backprop => Box::new(crate::backprop::run(data, cfg)?),
        Topic::CrossEntropy => Box::new(crate::cross_entropy::run(data, cfg)?),
        Topic::Softmax => Box::new(crate::softmax::run(data, cfg)?),
        Topic::L2Gradient => Box::new(crate::l2_gradient::run(data, cfg)?),
        Topic::Minibatch => Box::new(crate::minibatch::run(data, cfg)?),
    })
}

/// Runs `topics` in order, writes their plots and `theory.md` into `out`, and calls
/// `on_section` as each topic finishes (the CLI prints it).
pub fn run_topics(
    topics: &[Topic],
    cfg: &TheoryConfig,
    out: &Path,
    mut on_section: impl FnMut(&Section),
) -> Result<Report> {
    if topics.is_empty() {
        return Err(TheoryError::invalid("no topics to run"));
    }
    std::fs::create_dir_all(out).map_err(|e| TheoryError::Io {
        path: out.to_path_buf(),
        source: e,
    })?;
    let data = TheoryData::load(cfg)?;
    let mut sections = Vec::new();
    for &topic in topics {
        let t0 = Instant::now();
        let result = compute_topic(topic, &data, cfg)?;
        let seconds = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let plots = result.write_plots(out)?;
        let section = Section {
            topic,
            verdict: result.verdict(),
            tables: result.tables(),
            plots,
            seconds,
            plot_seconds: t1.elapsed().as_secs_f64(),
        };
        on_section(&section);
        sections.push(section);
    }
    let markdown = out.join("theory.md");
    let text = render_markdown(&sections, &data.description, cfg);
    write_atomically(&markdown, &text)?;
    Ok(Report {
        sections,
        data_description: data.description,
        markdown,
    })
}

fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("md.tmp");
    std::fs::write(&tmp, text).map_err(|e| TheoryError::Io {
        path: tmp.clone(),
        source: e,
    })?;
    std::fs::rename(&tmp, path).map_err(|e| TheoryError::Io {
        path: path.to_path_buf(),
        source: e,
    })
}

/// The Markdown page: one section per topic with question, verdict, evidence,
/// tables and plots.
pub fn render_markdown(sections: &[Section], data_description: &str, cfg: &TheoryConfig) -> String {
    let mut s = String::from("# Losses and gradients: the coursework's claims, checked\n\n");
    let _ = writeln!(
        s,
        "Each section states a question, the verdict, and the numbers behind it. Every number is recomputed by \
         `digitlab theory <topic>` (library: `digitlab-theory`), and each claim is also a test of that crate, \
         which fails if the claim is false.\n"
    );
    let _ = writeln!(s, "- Real data: {data_description}.");
    let _ = writeln!(
        s,
        "- Seed: {} (random directions, points, starts and initialisations).",
        cfg.seed
    );
    let _ = writeln!(s, "- All numerical checks in f64 unless stated.\n");
    let _ = writeln!(s, "| # | topic | verdict | claim holds | time |\n|---|---|---|---|---|");
    for sec in sections {
        let _ = writeln!(
            s,
            "| {} | [{}](#{}) | {} | {} | {:.1}s |",
            sec.topic.number(),
            sec.topic.title(),
            anchor(sec.topic),
            sec.verdict.answer.replace('|', "\\|"),
            if sec.verdict.holds { "yes" } else { "**no**" },
            sec.seconds + sec.plot_seconds
        );
    }
    s.push('\n');
    for sec in sections {
        let _ = writeln!(s, "## {}. {}\n", sec.topic.number(), sec.topic.title());
        let _ = writeln!(s, "**Question.** {}\n", sec.topic.question());
        let _ = writeln!(
            s,
            "**Verdict{}.** {}\n",
            if sec.verdict.holds { "" } else { " (a check FAILED)" },
            sec.verdict.answer
        );
        if !sec.verdict.evidence.is_empty() {
            let _ = writeln!(s, "**Evidence.**\n");
            for e in &sec.verdict.evidence {
                let _ = writeln!(s, "- {e}");
            }
            s.push('\n');
        }
        for t in &sec.tables {
            s += &t.to_markdown();
            s.push('\n');
        }
        for p in &sec.plots {
            let _ = writeln!(
                s,
                "![{}]({})\n\n*{}*\n",
                p.caption.replace(['[', ']'], ""),
                p.file,
                p.caption
            );
        }
        let _ = writeln!(
            s,
            "<sub>`digitlab theory {}`: {:.1}s compute, {:.1}s plots.</sub>\n",
            sec.topic.name(),
            sec.seconds,
            sec.plot_seconds
        );
    }
    s
}

/// GitHub's heading anchor for a topic's section.
fn anchor(t: Topic) -> String {
    let heading = format!("{}. {}", t.number(), t.title()).to_lowercase();
    heading
        .chars()
        .filter_map(|c| {
            if c.is_alphanumeric() || c == '-' || c == '_' {
                Some(c)
            } else if c == ' ' {
                Some('-')
            } else {
                None
            }
        })
        .collect()
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

/// A percentage with one decimal.
pub fn pct(part: usize, whole: usize) -> String {
    if whole == 0 {
        "-".into()
    } else {
        format!("{:.1}%", 100.0 * part as f64 / whole as f64)
    }
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
    fn tables_render_in_both_forms() {
        let mut t = Table::new("T", &["a", "long header"]);
        t.push(vec!["1|2".into(), "x".into()]);
        let md = t.to_markdown();
        assert!(md.contains("| a | long header |") && md.contains("1\\|2"), "{md}");
        let txt = t.to_text();
        assert!(txt.contains("a    long header"), "{txt}");
        assert_eq!(num(0.000123456), "1.235e-4");
        assert_eq!(num(12.3456), "12.35");
        assert_eq!(num(f64::NAN), "NaN");
        assert_eq!(anchor(Topic::CeVsMse), "1-ce-vs-mse-for-logistic-regression");
    }
}
