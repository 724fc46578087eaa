//! `digitlab theory <topic>`: the coursework's written questions about losses and
//! gradients as runnable checks (library: `digitlab-theory`).
//!
//! Topics: `ce-vs-mse`, `deep-linear`, `backprop`, `cross-entropy`, `softmax`,
//! `l2-gradient`, `minibatch` (or their numbers 1-7), or `all`.
use anyhow::{bail, Context, Result};
use digitlab_theory::{report, DataChoice, TheoryConfig, Topic};
use digitlab_train::run_dir::{RunDir, Start};
use std::path::Path;

/// Runs `topic` (a name, its number 1-7, or `all`).
///
/// Prints each topic's question, verdict, evidence and tables to stdout as soon as it
/// finishes, and writes its PNG plots plus `theory.md` (one Markdown page with every
/// question, verdict, table and plot of the topics run) into `out`. The real-data
/// checks use MNIST "3 vs 6" when its files are under `data_dir` (else
/// `$DIGITLAB_DATA`, else `./data`), subsampled to 1,000 images, and the embedded 8x8
/// digits otherwise. Returns an error, after writing everything, if a claim did not
/// hold.
pub fn run(topic: &str, out: &Path, force: bool, data_dir: Option<&Path>) -> Result<()> {
    let topics = Topic::parse_list(topic)?;
    let start = if force { Start::Force } else { Start::Fresh };
    let run_dir = RunDir::claim(out, "theory", "", start)?;
    let cfg = TheoryConfig {
        data: DataChoice::Auto(data_dir.map(Path::to_path_buf)),
        ..TheoryConfig::default()
    };
    let report = report::run_topics(&topics, &cfg, out, |section| println!("{}", section.to_text(out)))
        .with_context(|| format!("digitlab theory {topic} --out {}", out.display()))?;
    run_dir.finish()?;
    println!("data: {}", report.data_description);
    println!("report: {}", report.markdown.display());
    let failed: Vec<&str> = report
        .sections
        .iter()
        .filter(|s| !s.verdict.holds)
        .map(|s| s.topic.name())
        .collect();
    if !failed.is_empty() {
        bail!(
            "the claim of {} did not hold; see {}",
            failed.join(", "),
            report.markdown.display()
        );
    }
    Ok(())
}
