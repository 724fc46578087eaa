//! What happened to each suite entry, as the report renders it.
use crate::suite::{Mode, SuiteEntry};
use digitlab_finetune::{TransferConfig, TransferSummary};
use digitlab_train::{ExperimentConfig, Summary};
use std::path::PathBuf;

/// What happened to one suite entry.
pub enum Outcome {
    Skipped(String),
    Ran {
        cfg: Box<ExperimentConfig>,
        summary: Box<Summary>,
        dir: PathBuf,
        seconds: f64,
        reused: bool,
    },
    /// The theory lab: how many of its claims held, on which data.
    Theory {
        dir: PathBuf,
        seconds: f64,
        reused: bool,
        holds: usize,
        total: usize,
        data: String,
    },
    /// Frozen-backbone transfer: one summary per backbone that ran, and the
    /// backbones skipped (label, reason).
    Transfer {
        cfg: Box<TransferConfig>,
        dir: PathBuf,
        rows: Vec<TransferSummary>,
        skipped: Vec<(String, String)>,
        seconds: f64,
        reused: bool,
    },
}

pub struct ExperimentReport {
    pub title: String,
    pub question: String,
    pub mode: Mode,
    pub reported: Option<f64>,
    /// Coursework results per transfer backbone label.
    pub reported_backbones: std::collections::BTreeMap<String, f64>,
    pub outcome: Outcome,
}

impl ExperimentReport {
    pub fn new(entry: &SuiteEntry, outcome: Outcome) -> Self {
        let title = match &outcome {
            Outcome::Ran { cfg, .. } => cfg.name.clone(),
            Outcome::Theory { .. } => "theory".into(),
            Outcome::Transfer { cfg, .. } => cfg.name.clone(),
            Outcome::Skipped(_) => entry.config.trim_end_matches(".toml").to_string(),
        };
        Self {
            title,
            question: entry.question.clone(),
            mode: entry.mode,
            reported: entry.reported,
            reported_backbones: entry.reported_backbones.clone(),
            outcome,
        }
    }
    pub fn skipped(entry: &SuiteEntry, reason: String) -> Self {
        Self::new(entry, Outcome::Skipped(reason))
    }
}
