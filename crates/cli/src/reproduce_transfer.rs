//! `mode = "transfer"` suite entries: a `digitlab transfer` config run inside a
//! suite. Only backbones whose weights are reachable without the network run
//! (random weights, an existing local file, a file already in the Hugging Face
//! cache); each other backbone is skipped with a one-line reason, so a suite never
//! stalls on a download and says exactly what to fetch.
use crate::report::Outcome;
use crate::reproduce::SuiteEntry;
use anyhow::{Context, Result};
use digitlab_data::{catalog, Split};
use digitlab_finetune::hub::{lookup_cache, CacheLookup, HubFile};
use digitlab_finetune::{
    run_transfer, BackboneSpec, HubConfig, TransferConfig, TransferRunOptions, TransferSummary, WeightsSource,
    DEFAULT_FILE, FALLBACK_FILES,
};
use digitlab_train::Verbosity;
use indicatif::ProgressBar;
use sha2::Digest;
use std::path::Path;
use std::time::Instant;

/// Where a backbone's weights come from, or why they cannot be had offline.
fn reachable(
    spec: &BackboneSpec,
    var: &dyn Fn(&str) -> Option<String>,
    hub: &HubConfig,
) -> std::result::Result<String, String> {
    match spec.source(var).map_err(|e| e.to_string())? {
        WeightsSource::None => Ok("random weights".into()),
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

/// Runs one transfer entry into `<out>/<config name>/`, reusing a finished run whose
/// config and weights are unchanged. Features are cached in `<out>/feature-cache`.
pub fn run(
    entry: &SuiteEntry,
    configs_dir: &Path,
    data_dir: &Path,
    out: &Path,
    device: candle_core::Device,
    quiet: bool,
    bar: &ProgressBar,
) -> Result<Outcome> {
    let t0 = Instant::now();
    let path = configs_dir.join(&entry.config);
    let say = |line: String| if quiet { eprintln!("{line}") } else { bar.println(line) };
    let mut cfg = TransferConfig::load(&path, &entry.set)?;
    if !catalog::is_available(cfg.data.dataset, Split::Train, data_dir) {
        if entry.fallback.is_empty() {
            let reason = format!(
                "{} is not in {} (cargo xtask download {})",
                cfg.data.dataset,
                data_dir.display(),
                cfg.data.dataset
            );
            say(format!("skip {}: {reason}", entry.config));
            return Ok(Outcome::Skipped(reason));
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
            Err(reason) => {
                say(format!("skip {} / {}: {reason}", cfg.name, spec.label()));
                skipped.push((spec.label(), reason));
            }
        }
    }
    cfg.backbones = kept;
    let dir = out.join(&cfg.name);
    let labels: Vec<String> = cfg.backbones.iter().map(BackboneSpec::label).collect();
    let hash = hex::encode(sha2::Sha256::digest(
        format!(
            "transfer\n{}\n{}\n{}",
            toml::to_string(&cfg).unwrap_or_default(),
            sources.join("\n"),
            env!("CARGO_PKG_VERSION")
        )
        .as_bytes(),
    ));
    let hash_file = dir.join(".config-hash");
    let reused = std::fs::read_to_string(&hash_file).is_ok_and(|h| h.trim() == hash)
        && labels.iter().all(|l| dir.join(l).join("summary.json").is_file());
    if reused {
        say(format!(
            "{}: unchanged and complete, reusing {}",
            cfg.name,
            dir.display()
        ));
    } else if !cfg.backbones.is_empty() {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        if quiet {
            eprintln!(
                "running {} on {} ({} backbone(s))",
                cfg.name,
                cfg.data.dataset,
                cfg.backbones.len()
            );
        }
        let opts = TransferRunOptions {
            out_dir: Some(dir.clone()),
            device,
            verbosity: Verbosity::Silent,
            hub: Some(hub),
            cache_dir: Some(out.join("feature-cache")),
            vars: Box::new(|name| std::env::var(name).ok()),
        };
        run_transfer(&cfg, data_dir, &opts).with_context(|| format!("transfer {}", cfg.name))?;
        digitlab_train::io::write_atomic(&hash_file, hash.as_bytes())?;
    }
    let mut rows = Vec::new();
    for label in &labels {
        let file = dir.join(label).join("summary.json");
        let s: TransferSummary =
            serde_json::from_slice(&std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?)
                .with_context(|| format!("{}: unreadable summary", file.display()))?;
        say(format!(
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
        cfg: Box::new(cfg),
        dir,
        rows,
        skipped,
        seconds: t0.elapsed().as_secs_f64(),
        reused,
    })
}
