//! The suite report: `report.md` (links to PNGs beside it) and `report.html`
//! (self-contained: PNGs embedded as data URIs).
use crate::suite::{ExperimentReport, Mode, Outcome};
use anyhow::Result;
use digitlab_finetune::{TransferConfig, TransferSummary};
use digitlab_report::html::{embedded_figure, escape, markdown_to_html, slug};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn pct(v: Option<f64>) -> String {
    digitlab_report::format::pct(v, 2)
}

/// Where the run's plots are (sweeps keep the final run in `final/`).
fn result_dir(dir: &Path, mode: Mode) -> PathBuf {
    match mode {
        Mode::Sweep => dir.join("final"),
        Mode::Train | Mode::Theory | Mode::Transfer => dir.to_path_buf(),
    }
}

const PLOTS: [(&str, &str); 5] = [
    ("loss.png", "Loss curves (train vs validation)"),
    ("accuracy.png", "Accuracy curves"),
    ("confusion.png", "Confusion matrix"),
    ("misclassified.png", "Most confidently misclassified images"),
    ("templates.png", "Weight templates"),
];

fn environment() -> Vec<(String, String)> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    vec![
        ("digitlab".into(), env!("CARGO_PKG_VERSION").into()),
        ("candle".into(), "0.11".into()),
        ("CPU".into(), cpu),
        ("threads".into(), threads.to_string()),
        (
            "OS".into(),
            format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
        ),
        (
            "CUDA built in".into(),
            candle_core::utils::cuda_is_available().to_string(),
        ),
    ]
}

/// Markdown body shared by both outputs; `img` renders an image reference.
fn markdown(
    suite: &str,
    description: &str,
    reports: &[ExperimentReport],
    wall: f64,
    img: &dyn Fn(&Path, &str) -> Option<String>,
) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# digitlab report: suite `{suite}`\n\n{description}\n");
    let _ = writeln!(md, "## Summary\n");
    let _ = writeln!(
        md,
        "| experiment | dataset | test accuracy | macro-F1 | coursework reported | wall time |"
    );
    let _ = writeln!(md, "| --- | --- | --- | --- | --- | --- |");
    for r in reports {
        match &r.outcome {
            Outcome::Skipped(why) => {
                let _ = writeln!(md, "| {} | – | skipped: {why} | – | {} | – |", r.title, pct(r.reported));
            }
            Outcome::Theory {
                seconds,
                reused,
                holds,
                total,
                ..
            } => {
                let note = if *reused { " (reused)" } else { "" };
                let _ = writeln!(
                    md,
                    "| [theory lab](#theory) | – | {holds}/{total} claims hold | – | – | {seconds:.1}s{note} |"
                );
            }
            Outcome::Transfer {
                rows, skipped, reused, ..
            } => {
                let note = if *reused { " (reused)" } else { "" };
                for s in rows {
                    let _ = writeln!(
                        md,
                        "| [{}](#{}) / {} | {} | {} | {} | {} | {:.1}s{note} |",
                        r.title,
                        r.title,
                        s.name,
                        s.dataset,
                        pct(s.test_accuracy),
                        s.test_macro_f1.map(|v| format!("{v:.4}")).unwrap_or_else(|| "–".into()),
                        pct(r.reported_backbones.get(&s.name).copied()),
                        s.wall_seconds
                    );
                }
                for (label, why) in skipped {
                    let _ = writeln!(
                        md,
                        "| {} / {label} | – | skipped: {why} | – | {} | – |",
                        r.title,
                        pct(r.reported_backbones.get(label).copied())
                    );
                }
            }
            Outcome::Ran {
                summary: s,
                seconds,
                reused,
                ..
            } => {
                let note = if *reused { " (reused)" } else { "" };
                let _ = writeln!(
                    md,
                    "| [{}](#{}) | {} | {} | {} | {} | {:.1}s{note} |",
                    r.title,
                    r.title,
                    s.dataset,
                    pct(s.test_accuracy),
                    s.test_macro_f1.map(|v| format!("{v:.4}")).unwrap_or_else(|| "–".into()),
                    pct(r.reported),
                    seconds
                );
            }
        }
    }
    let _ = writeln!(md, "\nTotal wall time: {wall:.1}s.\n");
    for r in reports {
        let _ = writeln!(md, "<h2 id=\"{}\">{}</h2>\n", r.title, r.title);
        if !r.question.is_empty() {
            let _ = writeln!(md, "**Question.** {}\n", r.question);
        }
        match &r.outcome {
            Outcome::Skipped(why) => {
                let _ = writeln!(md, "Skipped: {why}.\n");
            }
            Outcome::Theory {
                dir,
                holds,
                total,
                data,
                ..
            } => {
                let _ = writeln!(md, "{holds} of {total} claims held. Data: {data}\n");
                md += &theory_section(dir, img);
            }
            Outcome::Transfer {
                cfg,
                dir,
                rows,
                skipped,
                seconds,
                reused,
            } => {
                md += &transfer_section(cfg, dir, rows, skipped, (*seconds, *reused), &r.reported_backbones, img);
            }
            Outcome::Ran {
                cfg,
                summary: s,
                dir,
                seconds,
                ..
            } => {
                let _ = writeln!(md, "| metric | digitlab | coursework |\n| --- | --- | --- |");
                let _ = writeln!(md, "| test accuracy | {} | {} |", pct(s.test_accuracy), pct(r.reported));
                let _ = writeln!(
                    md,
                    "| test macro-F1 | {} | |",
                    s.test_macro_f1.map(|v| format!("{v:.4}")).unwrap_or_else(|| "–".into())
                );
                let _ = writeln!(md, "| validation accuracy | {} | |", pct(s.val_accuracy));
                let _ = writeln!(md, "| train accuracy | {} | |", pct(Some(s.train_accuracy)));
                let _ = writeln!(md, "| epochs | {} | |", s.epochs);
                let _ = writeln!(md, "| parameters | {} | |", s.parameters);
                let _ = writeln!(
                    md,
                    "| images train / val / test | {} / {} / {} | |",
                    s.train_images, s.val_images, s.test_images
                );
                let _ = writeln!(
                    md,
                    "| training throughput | {:.0} images/s | |",
                    s.train_samples_per_second
                );
                let _ = writeln!(md, "| wall time | {seconds:.1}s | |\n");
                if r.mode == Mode::Sweep {
                    if let Ok(csv) = std::fs::read_to_string(dir.join("trials.csv")) {
                        let _ = writeln!(
                            md,
                            "Search trials (validation scores; the best was retrained and tested once):\n"
                        );
                        for (i, line) in csv.lines().enumerate() {
                            let cells: Vec<&str> = line.split(',').collect();
                            let _ = writeln!(md, "| {} |", cells.join(" | "));
                            if i == 0 {
                                let _ = writeln!(md, "|{}", " --- |".repeat(cells.len()));
                            }
                        }
                        md.push('\n');
                    }
                }
                let rd = result_dir(dir, r.mode);
                for (file, caption) in PLOTS {
                    if let Some(tag) = img(&rd.join(file), caption) {
                        let _ = writeln!(md, "{tag}\n");
                    }
                }
                md += &interpretation_section(s, &rd, img);
                let toml = toml::to_string_pretty(cfg).unwrap_or_default();
                let _ = writeln!(
                    md,
                    "<details><summary>Configuration</summary>\n\n```toml\n{toml}```\n\n</details>\n"
                );
            }
        }
    }
    let _ = writeln!(md, "## Environment\n\n| | |\n| --- | --- |");
    for (k, v) in environment() {
        let _ = writeln!(md, "| {k} | {v} |");
    }
    let seeds: Vec<String> = reports
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::Ran { cfg, .. } => Some(format!("{}={}", cfg.name, cfg.seed)),
            Outcome::Transfer { cfg, .. } => Some(format!("{}={}", cfg.name, cfg.seed)),
            _ => None,
        })
        .collect();
    let _ = writeln!(md, "| seeds | {} |", seeds.join(", "));
    md
}

/// A run's interpretation (from its `summary.json`): ECE, most-confused pairs and
/// top losses as tables, then the reliability diagram and top-losses grid from `dir`.
fn interpretation_section(
    s: &digitlab_report::RunSummary,
    dir: &Path,
    img: &dyn Fn(&Path, &str) -> Option<String>,
) -> String {
    let Some(i) = &s.interpretation else {
        return String::new();
    };
    let mut md = digitlab_report::interpretation::markdown(i, 10);
    for (file, caption) in [
        ("reliability.png", "Reliability diagram (calibration)"),
        ("top_losses.png", "Top losses"),
    ] {
        if let Some(tag) = img(&dir.join(file), caption) {
            let _ = writeln!(md, "{tag}\n");
        }
    }
    md
}

/// A transfer entry: one row per backbone (frozen features, new linear head), the
/// skipped backbones with their reasons, the comparison chart and confusion matrices.
fn transfer_section(
    cfg: &TransferConfig,
    dir: &Path,
    rows: &[TransferSummary],
    skipped: &[(String, String)],
    (seconds, reused): (f64, bool),
    reported: &std::collections::BTreeMap<String, f64>,
    img: &dyn Fn(&Path, &str) -> Option<String>,
) -> String {
    let mut md = String::new();
    if !rows.is_empty() {
        let s0 = &rows[0];
        let _ = writeln!(
            md,
            "Backbones frozen (eval-mode features computed once and cached), a new linear head trained for {} epochs; \
             {} train / {} validation / {} test images of {}.\n",
            s0.epochs, s0.train_images, s0.val_images, s0.test_images, s0.dataset
        );
        // The coursework column only when the suite gives values to compare with.
        let with_reported = !reported.is_empty();
        let _ = writeln!(
            md,
            "| backbone | weights | input | feature dim | train acc | val acc | test acc | test macro-F1 |{} backbone / head time |",
            if with_reported { " coursework |" } else { "" }
        );
        let _ = writeln!(md, "|{}", " --- |".repeat(if with_reported { 10 } else { 9 }));
        for s in rows {
            let Some(t) = s.transfer() else { continue };
            // Local files by name (the full path is in the configuration below).
            let weights = match t.pretrained.as_str() {
                "none" => "random".to_string(),
                p if p.starts_with("hf:") => format!("`{p}`"),
                p => format!(
                    "`{}`",
                    Path::new(p)
                        .file_name()
                        .map(|f| f.to_string_lossy().into_owned())
                        .unwrap_or_else(|| p.to_string())
                ),
            };
            let coursework = if with_reported {
                format!(" {} |", pct(reported.get(&s.name).copied()))
            } else {
                String::new()
            };
            let _ = writeln!(
                md,
                "| {} | {} | {}x{}x{} | {} | {} | {} | {} | {} |{} {:.1}s / {:.1}s |",
                s.name,
                weights,
                t.input_channels,
                t.input_height,
                t.input_width,
                t.feature_dim,
                pct(Some(s.train_accuracy)),
                pct(s.val_accuracy),
                pct(s.test_accuracy),
                s.test_macro_f1.map(|v| format!("{v:.4}")).unwrap_or_else(|| "–".into()),
                coursework,
                t.backbone_seconds,
                t.head_seconds
            );
        }
        md.push('\n');
    }
    if !skipped.is_empty() {
        let _ = writeln!(md, "Skipped backbones:\n");
        for (label, why) in skipped {
            let _ = writeln!(md, "- **{label}**: {why}");
        }
        md.push('\n');
    }
    if reused {
        let then: f64 = rows.iter().map(|s| s.wall_seconds).sum();
        let _ = writeln!(
            md,
            "Reused from an earlier run of the same config (its backbones took {then:.1}s then).\n"
        );
    } else {
        let _ = writeln!(md, "Step wall time: {seconds:.1}s.\n");
    }
    if let Some(tag) = img(&dir.join("compare.png"), "Backbones compared") {
        let _ = writeln!(md, "{tag}\n");
    }
    for s in rows {
        if let Some(tag) = img(
            &dir.join(&s.name).join("confusion.png"),
            &format!("Confusion matrix, {}", s.name),
        ) {
            let _ = writeln!(md, "{tag}\n");
        }
        if s.interpretation.is_some() {
            let _ = writeln!(md, "**{}**\n", s.name);
            md += &interpretation_section(s, &dir.join(&s.name), img);
        }
    }
    let toml = toml::to_string_pretty(cfg).unwrap_or_default();
    let _ = writeln!(
        md,
        "<details><summary>Configuration</summary>\n\n```toml\n{toml}```\n\n</details>\n"
    );
    md
}

/// The theory lab's `theory.md`, nested under the report's own heading: its title
/// dropped, its sections as `<h3>` with GitHub-style ids (its table of contents links
/// to them) and its images rendered by `img`.
fn theory_section(dir: &Path, img: &dyn Fn(&Path, &str) -> Option<String>) -> String {
    let Ok(text) = std::fs::read_to_string(dir.join("theory.md")) else {
        return format!("(missing: {})\n\n", dir.join("theory.md").display());
    };
    let mut md = String::new();
    for line in text.lines() {
        if line.starts_with("# ") {
            continue;
        } else if let Some(h) = line.strip_prefix("## ") {
            let _ = writeln!(md, "<h3 id=\"{}\">{}</h3>", slug(h), escape(h));
        } else if let Some((alt, file)) = line
            .strip_prefix("![")
            .and_then(|l| l.strip_suffix(')'))
            .and_then(|l| l.rsplit_once("]("))
        {
            match img(&dir.join(file), alt) {
                Some(tag) => md += &tag,
                None => {
                    let _ = write!(md, "(missing image {file})");
                }
            }
            md.push('\n');
        } else if let Some(h) = line.strip_prefix("### ") {
            let _ = writeln!(md, "#### {h}");
        } else {
            md += line;
            md.push('\n');
        }
    }
    md.push('\n');
    md
}

/// Writes `report.md` and `report.html`; returns the HTML path.
pub fn write(out: &Path, suite: &str, description: &str, reports: &[ExperimentReport], wall: f64) -> Result<PathBuf> {
    let rel = |p: &Path, caption: &str| -> Option<String> {
        p.is_file()
            .then(|| format!("![{caption}]({})", p.strip_prefix(out).unwrap_or(p).display()))
    };
    let md = markdown(suite, description, reports, wall, &rel);
    digitlab_report::io::write_atomic(&out.join("report.md"), md.as_bytes())?;

    let body = markdown_to_html(&markdown(suite, description, reports, wall, &embedded_figure));
    let html = digitlab_report::html::page(&format!("digitlab report: {suite}"), &body);
    let path = out.join("report.html");
    digitlab_report::io::write_atomic(&path, html.as_bytes())?;
    Ok(path)
}

/// The final summary table on the terminal.
pub fn print_table(reports: &[ExperimentReport]) {
    println!(
        "{:<24} {:<26} {:>10} {:>10} {:>9}",
        "experiment", "dataset", "test acc", "reported", "seconds"
    );
    for r in reports {
        match &r.outcome {
            Outcome::Skipped(why) => println!("{:<24} skipped: {why}", r.title),
            Outcome::Theory {
                holds, total, seconds, ..
            } => {
                println!(
                    "{:<24} {:<26} {:>10} {:>10} {:>9.1}",
                    r.title,
                    "theory lab",
                    format!("{holds}/{total} ok"),
                    "",
                    seconds
                )
            }
            Outcome::Transfer { rows, skipped, .. } => {
                for s in rows {
                    println!(
                        "{:<24} {:<26} {:>10} {:>10} {:>9.1}",
                        r.title,
                        s.name,
                        pct(s.test_accuracy),
                        pct(r.reported_backbones.get(&s.name).copied()),
                        s.wall_seconds
                    )
                }
                for (label, why) in skipped {
                    println!("{:<24} {label} skipped: {why}", r.title)
                }
            }
            Outcome::Ran {
                summary: s, seconds, ..
            } => println!(
                "{:<24} {:<26} {:>10} {:>10} {:>9.1}",
                r.title,
                s.dataset,
                pct(s.test_accuracy),
                pct(r.reported),
                seconds
            ),
        }
    }
}

#[cfg(test)]
mod theory_tests {
    use super::*;

    #[test]
    fn theory_section_nests_headings_and_renders_images() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("theory.md"),
            "# Title\n\n## 1. A b\n\ntext\n\n![a plot](p.png)\n\n### Sub\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("p.png"), b"png").unwrap();
        let img = |p: &Path, alt: &str| p.is_file().then(|| format!("<img alt=\"{alt}\">"));
        let md = theory_section(dir.path(), &img);
        assert!(!md.contains("# Title"));
        assert!(md.contains("<h3 id=\"1-a-b\">1. A b</h3>"), "{md}");
        assert!(md.contains("<img alt=\"a plot\">"), "{md}");
        assert!(md.contains("#### Sub"));
    }
}
