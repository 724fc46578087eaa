//! The runner of `mode = "transfer"` entries: a `digitlab transfer` config run
//! inside a suite. Only backbones whose weights are reachable without the network
//! run (random weights, weights built into digitlab, an existing local file, a file
//! already in the Hugging Face cache); each other backbone is skipped with a one-line reason, so a suite never
//! stalls on a download and says exactly what to fetch.
use super::{claim_entry, finished, Context, Job, Outcome, Skip, SuiteEntry};
use anyhow::{Context as _, Result};
use digitlab_data::{catalog, Split};
use digitlab_finetune::hub::{lookup_cache, CacheLookup, HubFile};
use digitlab_finetune::{
    run_transfer, BackboneSpec, HubConfig, TransferConfig, TransferRunOptions, TransferSummary, WeightsSource,
    DEFAULT_FILE, FALLBACK_FILES,
};
use digitlab_train::Verbosity;
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The marker kind of transfer folders.
pub const KIND: &str = "transfer";
/// The suite's feature cache, `<out>/feature-cache`.
pub const FEATURE_CACHE: &str = "feature-cache";

/// Where a backbone's weights come from, or why they cannot be had offline.
fn reachable(
    spec: &BackboneSpec,
    var: &dyn Fn(&str) -> Option<String>,
    hub: &HubConfig,
) -> std::result::Result<String, String> {
    match spec.source(var).map_err(|e| e.to_string())? {
        WeightsSource::None => Ok("random weights".into()),
        WeightsSource::Builtin { file } => {
            let w = digitlab_finetune::builtin::find(&file).map_err(|e| e.to_string())?;
            Ok(format!("builtin:{file} (sha256 {})", w.sha256()))
        }
        WeightsSource::Local(p) if p.is_file() => Ok(p.display().to_string()),
        WeightsSource::Local(p) => Err(format!("{} does not exist", p.display())),
        WeightsSource::Torchvision { model } => {
            let cfg = digitlab_finetune::torchhub::TorchHubConfig::from_vars(var).map_err(|e| e.to_string())?;
            let file = digitlab_finetune::torchhub::weights_file(&model)?;
            match digitlab_finetune::torchhub::lookup_cache(&cfg, file) {
                Some(p) => Ok(p.display().to_string()),
                None => Err(format!(
                    "torchvision:{model}: {file} is not in torch.hub's cache {} (fetch {} where there is internet)",
                    cfg.checkpoints_dir.display(),
                    cfg.url(file)
                )),
            }
        }
        WeightsSource::Hub { repo, revision, file } => {
            let revision = revision.unwrap_or_else(|| "main".into());
            let files: Vec<String> = match file {
                Some(f) => vec![f],
                None => std::iter::once(DEFAULT_FILE)
                    .chain(FALLBACK_FILES.iter().copied())
                    .map(String::from)
                    .collect(),
            };
            for f in &files {
                let hf = HubFile::new(repo.clone(), revision.clone(), f.clone()).map_err(|e| e.to_string())?;
                if let CacheLookup::Found(p) = lookup_cache(hub, &hf) {
                    return Ok(p.display().to_string());
                }
            }
            Err(format!(
                "hf:{repo} is not in the Hugging Face cache {} (fetch it where there is internet: \
                 `huggingface-cli download {repo} {}`)",
                hub.cache_dir.display(),
                files[0]
            ))
        }
    }
}

/// A transfer entry, ready to run: the backbones that can run offline, and the
/// skipped ones with their reasons.
pub struct TransferJob {
    cfg: TransferConfig,
    hub: HubConfig,
    labels: Vec<String>,
    skipped: Vec<(String, String)>,
    dir: PathBuf,
    hash: String,
}

/// Loads and checks the entry's config and finds which backbones' weights are on
/// disk; changes nothing.
pub fn prepare(entry: &SuiteEntry, ctx: &Context) -> Result<Box<dyn Job>> {
    let path = ctx.configs_dir.join(&entry.config);
    let mut cfg = TransferConfig::load(&path, &entry.set)?;
    if !catalog::is_available(cfg.data.dataset, Split::Train, &ctx.data_dir) {
        if entry.fallback.is_empty() {
            let reason = format!(
                "{} is not in {} (cargo xtask download {})",
                cfg.data.dataset,
                ctx.data_dir.display(),
                cfg.data.dataset
            );
            return Ok(Box::new(Skip {
                config: entry.config.clone(),
                reason,
            }));
        }
        let mut o = entry.set.clone();
        o.extend(entry.fallback.iter().cloned());
        cfg = TransferConfig::load(&path, &o)?;
    }
    let var = |name: &str| std::env::var(name).ok();
    // The suite only uses what is already on disk: never the network.
    let hub = HubConfig {
        offline: true,
        progress: false,
        ..HubConfig::from_env()?
    };
    let mut kept = Vec::new();
    let mut sources = Vec::new();
    let mut skipped = Vec::new();
    for spec in &cfg.backbones {
        match reachable(spec, &var, &hub) {
            Ok(src) => {
                kept.push(spec.clone());
                sources.push(src);
            }
            Err(reason) => skipped.push((spec.label(), reason)),
        }
    }
    cfg.backbones = kept;
    let labels: Vec<String> = cfg.backbones.iter().map(BackboneSpec::label).collect();
    // The config, where each backbone's weights come from, and the digitlab version.
    let hash = hex::encode(sha2::Sha256::digest(
        format!(
            "transfer\n{}\n{}\n{}",
            toml::to_string(&cfg).unwrap_or_default(),
            sources.join("\n"),
            env!("CARGO_PKG_VERSION")
        )
        .as_bytes(),
    ));
    Ok(Box::new(TransferJob {
        dir: ctx.out.join(&cfg.name),
        cfg,
        hub,
        labels,
        skipped,
        hash,
    }))
}

impl Job for TransferJob {
    fn target(&self) -> Option<(&Path, &str, &str)> {
        Some((&self.dir, KIND, &self.hash))
    }

    fn label(&self) -> String {
        format!("transfer {}", self.cfg.name)
    }

    /// Runs into `<out>/<config name>/`, reusing a finished run whose config and
    /// weights are unchanged. Features are cached in `<out>/feature-cache`.
    fn run(self: Box<Self>, ctx: &Context) -> Result<Outcome> {
        let t0 = Instant::now();
        let (cfg, dir) = (&self.cfg, &self.dir);
        for (label, reason) in &self.skipped {
            ctx.say(format!("skip {} / {label}: {reason}", cfg.name));
        }
        let reused =
            finished(dir, KIND, &self.hash) && self.labels.iter().all(|l| dir.join(l).join("summary.json").is_file());
        if reused {
            ctx.say(format!(
                "{}: unchanged and complete, reusing {}",
                cfg.name,
                dir.display()
            ));
        } else if !cfg.backbones.is_empty() {
            let run_dir = claim_entry(dir, KIND, &self.hash)?;
            if ctx.quiet {
                eprintln!(
                    "running {} on {} ({} backbone(s))",
                    cfg.name,
                    cfg.data.dataset,
                    cfg.backbones.len()
                );
            }
            let opts = TransferRunOptions {
                out_dir: Some(dir.clone()),
                device: ctx.device.clone(),
                verbosity: Verbosity::Silent,
                hub: Some(self.hub.clone()),
                cache_dir: Some(ctx.out.join(FEATURE_CACHE)),
                vars: Box::new(|name| std::env::var(name).ok()),
                tensorboard: ctx.tensorboard,
            };
            run_transfer(cfg, &ctx.data_dir, &opts).with_context(|| format!("transfer {}", cfg.name))?;
            run_dir.finish()?;
        }
        let mut rows = Vec::new();
        for label in &self.labels {
            let file = dir.join(label).join("summary.json");
            let s: TransferSummary = digitlab_report::RunSummary::read(&file)?;
            ctx.say(format!(
                "{:<22} test acc {:>7}  ({:.1}s)",
                format!("{} / {}", cfg.name, label),
                s.test_accuracy
                    .map(|a| format!("{:.2}%", 100.0 * a))
                    .unwrap_or_else(|| "-".into()),
                s.wall_seconds
            ));
            rows.push(s);
        }
        Ok(Outcome::Transfer {
            cfg: Box::new(self.cfg),
            dir: self.dir,
            rows,
            skipped: self.skipped,
            seconds: t0.elapsed().as_secs_f64(),
            reused,
        })
    }
}
