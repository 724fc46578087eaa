//! The Markdown report (`theory.md`) that `digitlab theory all --out DIR` writes.
//!
//! [`run_topics`] runs the topics asked for through the [`registry`] (each topic
//! registers its run function there), writes every PNG into the output folder and
//! assembles `theory.md` with relative links to them. This module knows no topic by
//! name.
use crate::data::{TheoryConfig, TheoryData};
use crate::error::{Result, TheoryError};
use crate::registry;
use crate::result::{Plot, Table, Verdict};
use crate::Topic;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

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
pub fn compute_topic(topic: Topic, data: &TheoryData, cfg: &TheoryConfig) -> Result<Box<dyn crate::TopicResult>> {
    (registry::entry(topic).run)(data, cfg)
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
        let result = (registry::entry(topic).run)(&data, cfg)?;
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
    digitlab_report::io::write_atomic(&markdown, text.as_bytes())?;
    Ok(Report {
        sections,
        data_description: data.description,
        markdown,
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
    digitlab_report::html::slug(&format!("{}. {}", t.number(), t.title()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_match_github() {
        assert_eq!(anchor(Topic::CeVsMse), "1-ce-vs-mse-for-logistic-regression");
    }
}
