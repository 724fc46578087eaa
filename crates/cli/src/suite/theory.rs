//! The runner of `mode = "theory"` entries: the theory lab into `<out>/theory/`.
use super::{claim_entry, finished, Context, Job, Outcome, SuiteEntry};
use anyhow::{Context as _, Result};
use digitlab_data::{catalog, Split};
use digitlab_theory::{report as theory_report, DataChoice, TheoryConfig, Topic};
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The marker kind of theory-lab folders.
pub const KIND: &str = "theory";

/// What the theory lab recorded beside its `theory.md` (to reuse a finished run).
#[derive(serde::Serialize, serde::Deserialize)]
struct TheoryRecord {
    hash: String,
    holds: usize,
    total: usize,
    data: String,
}

/// A theory entry, ready to run.
pub struct TheoryJob {
    topic: String,
    topics: Vec<Topic>,
    dir: PathBuf,
    hash: String,
}

/// Parses the entry's topics; changes nothing.
pub fn prepare(entry: &SuiteEntry, ctx: &Context) -> Result<Box<dyn Job>> {
    let topic = entry.topic.clone().unwrap_or_else(|| "all".into());
    let topics = Topic::parse_list(&topic)?;
    let mnist = catalog::is_available(digitlab_data::DatasetKind::Mnist, Split::Train, &ctx.data_dir);
    // The topics, the data they would use and the digitlab version.
    let hash = hex::encode(sha2::Sha256::digest(
        format!(
            "{topic}\n{}\n{mnist}\n{}",
            ctx.data_dir.display(),
            env!("CARGO_PKG_VERSION")
        )
        .as_bytes(),
    ));
    Ok(Box::new(TheoryJob {
        topic,
        topics,
        dir: ctx.out.join("theory"),
        hash,
    }))
}

impl Job for TheoryJob {
    fn target(&self) -> Option<(&Path, &str, &str)> {
        Some((&self.dir, KIND, &self.hash))
    }

    fn label(&self) -> String {
        "theory lab".into()
    }

    /// Runs the theory lab, or reuses it when its marker and record say it finished
    /// with the same topics, data and digitlab version.
    fn run(self: Box<Self>, ctx: &Context) -> Result<Outcome> {
        let t0 = Instant::now();
        let dir = &self.dir;
        let record_file = dir.join("theory.json");
        let previous: Option<TheoryRecord> = finished(dir, KIND, &self.hash)
            .then(|| std::fs::read(&record_file).ok())
            .flatten()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let (record, reused) = match previous {
            Some(r) if r.hash == self.hash && dir.join("theory.md").is_file() => (r, true),
            _ => {
                let run_dir = claim_entry(dir, KIND, &self.hash)?;
                if ctx.quiet {
                    eprintln!("running the theory lab ({})", self.topic);
                }
                let cfg = TheoryConfig {
                    data: DataChoice::Auto(Some(ctx.data_dir.clone())),
                    ..TheoryConfig::default()
                };
                let report = theory_report::run_topics(&self.topics, &cfg, dir, |_| {})
                    .with_context(|| format!("theory lab into {}", dir.display()))?;
                let record = TheoryRecord {
                    hash: self.hash.clone(),
                    holds: report.sections.iter().filter(|s| s.verdict.holds).count(),
                    total: report.sections.len(),
                    data: report.data_description.clone(),
                };
                digitlab_train::io::write_atomic(&record_file, &serde_json::to_vec_pretty(&record)?)?;
                run_dir.finish()?;
                (record, false)
            }
        };
        ctx.say(format!(
            "{:<22} {}/{} claims hold  ({:.1}s)",
            "theory",
            record.holds,
            record.total,
            t0.elapsed().as_secs_f64()
        ));
        Ok(Outcome::Theory {
            dir: self.dir,
            seconds: t0.elapsed().as_secs_f64(),
            reused,
            holds: record.holds,
            total: record.total,
            data: record.data,
        })
    }
}
