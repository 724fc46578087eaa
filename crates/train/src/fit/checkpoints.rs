//! Best/last checkpoints and resume, as a callback (format: [`crate::checkpoint`]).
use super::{Callback, EpochEnd, FitState};
use crate::checkpoint::{self, Sidecar};
use crate::optim::Optimizer;
use crate::{Result, TrainError};
use candle_core::{Device, Var};
use candle_nn::VarMap;
use std::path::{Path, PathBuf};

/// What a sidecar records about the run besides its progress.
#[derive(Debug, Clone)]
pub struct RunInfo {
    /// The run's full config (JSON form); resume refuses a different one, except
    /// for `train.epochs`.
    pub config: serde_json::Value,
    pub seed: u64,
    pub class_names: Vec<String>,
    /// Input `[channels, height, width]` the model takes.
    pub input_shape: [usize; 3],
}

/// After every epoch writes `model-e{N}.safetensors`, `optim-e{N}.safetensors`
/// and `last.json` into `dir` (and `best.json` with the weights when the epoch is
/// the best so far), then removes weight files no sidecar names.
pub struct Checkpoints<'a> {
    dir: PathBuf,
    varmap: &'a VarMap,
    info: RunInfo,
}

impl<'a> Checkpoints<'a> {
    /// Checkpoints of the variables of `varmap` (all of them: parameters and
    /// buffers) in `dir`, which must exist.
    pub fn new(dir: &Path, varmap: &'a VarMap, info: RunInfo) -> Self {
        Self {
            dir: dir.to_path_buf(),
            varmap,
            info,
        }
    }

    /// `<dir>/last.json`.
    pub fn last_path(&self) -> PathBuf {
        self.dir.join("last.json")
    }

    /// Restores the model weights, the optimizer state and the run's progress
    /// from `<dir>/last.json`. It is an error when there is none, when it was
    /// written for another config (only `train.epochs` may differ), when it has
    /// more epochs done than `epochs`, or when any file fails to verify
    /// ([`checkpoint::resume_point`]).
    pub fn resume(&self, optimizer: &mut dyn Optimizer, device: &Device, epochs: usize) -> Result<FitState> {
        let (path, s) = checkpoint::resume_point(&self.dir, &self.info.config, epochs)?;
        checkpoint::load_model(&path, &s, self.varmap, device)?;
        let state = checkpoint::load_optim(&path, &s, device)?;
        let optim_path = s.optim_file.as_ref().map_or_else(|| path.clone(), |f| self.dir.join(f));
        let params: Vec<(String, Var)> = optimizer
            .params()
            .iter()
            .map(|p| (p.name.clone(), p.var.clone()))
            .collect();
        let state = checkpoint::check_optim_state(&optim_path, state, &params)?;
        optimizer
            .load_state_tensors(state, s.optimizer_steps)
            .map_err(|e| TrainError::Checkpoint {
                path: optim_path,
                message: e.to_string(),
            })?;
        Ok(FitState {
            history: s.history,
            best_metric: s.best_metric,
            best_epoch: s.best_epoch,
            epochs_without_improvement: s.epochs_without_improvement,
        })
    }

    /// Loads the weights `<dir>/best.json` names into the varmap; false when
    /// there is no `best.json`.
    pub fn restore_best(&self, device: &Device) -> Result<bool> {
        let p = self.dir.join("best.json");
        if !p.is_file() {
            return Ok(false);
        }
        let s = checkpoint::read_sidecar(&p)?;
        checkpoint::load_model(&p, &s, self.varmap, device)?;
        Ok(true)
    }
}

impl Callback for Checkpoints<'_> {
    fn after_epoch(&mut self, end: &EpochEnd<'_>) -> Result<()> {
        let sidecar = Sidecar {
            format_version: checkpoint::FORMAT_VERSION,
            created_by: format!("digitlab-train {}", env!("CARGO_PKG_VERSION")),
            config: self.info.config.clone(),
            epoch: end.epoch(),
            optimizer_steps: end.optimizer.steps(),
            seed: self.info.seed,
            class_names: self.info.class_names.clone(),
            input_shape: self.info.input_shape,
            metrics: end.metrics().clone(),
            history: end.state.history.clone(),
            best_metric: end.state.best_metric,
            best_epoch: end.state.best_epoch,
            epochs_without_improvement: end.state.epochs_without_improvement,
            model_file: String::new(),
            model_sha256: String::new(),
            optim_file: None,
            optim_sha256: None,
        };
        if end.is_best {
            checkpoint::save(&self.dir, "best", self.varmap, None, sidecar.clone())?;
        }
        let state = end.optimizer.state_tensors();
        checkpoint::save(&self.dir, "last", self.varmap, Some(&state), sidecar)?;
        checkpoint::prune(&self.dir)
    }
}
