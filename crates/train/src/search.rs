//! Hyperparameter search: grid or random search over config keys, each trial
//! scored on the validation split.
use crate::config::{set_path, ExperimentConfig, MetricName};
use crate::TrainError;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

/// `[search]` of a config: which keys to vary and how to choose.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchConfig {
    #[serde(default)]
    pub strategy: Strategy,
    /// Number of trials for random search (grid search runs every combination).
    #[serde(default)]
    pub trials: Option<usize>,
    /// Metric that picks the best trial.
    #[serde(default)]
    pub metric: MetricName,
    /// After choosing, retrain on train + validation with the best values and test once.
    #[serde(default = "yes")]
    pub retrain_on_train_val: bool,
    /// Dotted config keys and the values to try, e.g. `"optim.lr" = [0.001, 0.01, 0.1]`.
    pub space: BTreeMap<String, Vec<toml::Value>>,
    /// Successive halving (`strategy = "asha"`): epochs of the first rung.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_epochs: Option<usize>,
    /// Successive halving: epochs of the last rung (and of the retrain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_epochs: Option<usize>,
    /// Successive halving: each rung keeps the best 1/`reduction_factor` of the one
    /// before and trains them `reduction_factor` times longer (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reduction_factor: Option<usize>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    #[default]
    Grid,
    Random,
    /// Successive halving: every trial starts with `min_epochs`, the better ones are
    /// promoted to longer budgets ([`crate::asha`]).
    Asha,
}

impl SearchConfig {
    pub fn validate(&self) -> Result<(), TrainError> {
        if self.space.is_empty() {
            return Err(TrainError::Config(
                "search.space is empty: name at least one key with values".into(),
            ));
        }
        if let Some((k, _)) = self.space.iter().find(|(_, v)| v.is_empty()) {
            return Err(TrainError::Config(format!("search.space.\"{k}\" has no values")));
        }
        if self.space.keys().any(|k| k.starts_with("search")) {
            return Err(TrainError::Config("search.space cannot vary the search itself".into()));
        }
        if self.strategy == Strategy::Random && self.trials.unwrap_or(0) == 0 {
            return Err(TrainError::Config("random search needs search.trials >= 1".into()));
        }
        if !self.metric.needs_validation() {
            return Err(TrainError::Config("search.metric must be a validation metric".into()));
        }
        if self.strategy == Strategy::Asha {
            return self.validate_asha();
        }
        for (key, set) in [
            ("min_epochs", self.min_epochs.is_some()),
            ("max_epochs", self.max_epochs.is_some()),
            ("reduction_factor", self.reduction_factor.is_some()),
        ] {
            if set {
                return Err(TrainError::Config(format!(
                    "search.{key} applies only to search.strategy = \"asha\""
                )));
            }
        }
        Ok(())
    }

    fn validate_asha(&self) -> Result<(), TrainError> {
        let (Some(min), Some(max)) = (self.min_epochs, self.max_epochs) else {
            return Err(TrainError::Config(
                "search.strategy = \"asha\" needs search.min_epochs and search.max_epochs".into(),
            ));
        };
        if min == 0 || max < min {
            return Err(TrainError::Config(format!(
                "search.min_epochs ({min}) must be >= 1 and at most search.max_epochs ({max})"
            )));
        }
        if self.trials == Some(0) {
            return Err(TrainError::Config("search.trials must be >= 1".into()));
        }
        if self.reduction_factor.is_some_and(|f| f < 2) {
            return Err(TrainError::Config("search.reduction_factor must be >= 2".into()));
        }
        if self.space.contains_key("train.epochs") {
            return Err(TrainError::Config(
                "search.space cannot vary train.epochs with strategy = \"asha\": the rungs set it".into(),
            ));
        }
        Ok(())
    }

    /// The reduction factor of successive halving (default 3).
    pub fn reduction(&self) -> usize {
        self.reduction_factor.unwrap_or(3)
    }

    /// Every assignment of the search space, in a fixed order (the last key varies
    /// fastest). Builds the whole product: use [`SearchConfig::trials`] for searches.
    pub fn grid(&self) -> Vec<BTreeMap<String, toml::Value>> {
        (0..self.grid_size().unwrap_or(0))
            .map(|i| self.assignment_at(i))
            .collect()
    }

    /// Number of points of the grid, `None` when it does not fit in a `u64`.
    pub fn grid_size(&self) -> Option<u64> {
        self.space
            .values()
            .try_fold(1u64, |acc, v| acc.checked_mul(v.len() as u64))
    }

    /// The grid's size as a product of the value counts (`20^8 = ...` style), for messages.
    fn size_text(&self) -> String {
        let factors: Vec<String> = self.space.values().map(|v| v.len().to_string()).collect();
        let total = self
            .space
            .values()
            .fold(1u128, |acc, v| acc.saturating_mul(v.len() as u128));
        format!("{} = {total}", factors.join(" x "))
    }

    /// The `index`-th point of the grid (same order as [`SearchConfig::grid`]),
    /// computed without building the others.
    pub fn assignment_at(&self, mut index: u64) -> BTreeMap<String, toml::Value> {
        let mut out = BTreeMap::new();
        for (key, values) in self.space.iter().rev() {
            let n = values.len() as u64;
            out.insert(key.clone(), values[(index % n) as usize].clone());
            index /= n;
        }
        out
    }

    /// The trials to run: the whole grid, or `trials` distinct seeded random draws
    /// from it. Only the chosen points are built, so a huge space with
    /// `strategy = "random"` costs nothing; a grid of more than [`MAX_GRID_TRIALS`]
    /// points is refused with its size.
    pub fn trials(&self, seed: u64) -> Result<Vec<BTreeMap<String, toml::Value>>, TrainError> {
        let size = self.grid_size();
        let indices: Vec<u64> = match self.strategy {
            Strategy::Grid => match size {
                Some(n) if n <= MAX_GRID_TRIALS => (0..n).collect(),
                _ => {
                    return Err(TrainError::Config(format!(
                        "search.space: a grid of {} trials is too large (at most {MAX_GRID_TRIALS}); \
                         use fewer values or search.strategy = \"random\" with search.trials",
                        self.size_text()
                    )))
                }
            },
            Strategy::Random => sample_indices(size, self.trials.unwrap_or(1), seed),
            // Successive halving starts from the grid, or from `trials` random draws.
            Strategy::Asha => match self.trials {
                Some(k) => sample_indices(size, k, seed),
                None => return Strategy::Grid.pick(self, seed),
            },
        };
        Ok(indices.into_iter().map(|i| self.assignment_at(i)).collect())
    }
}

impl Strategy {
    /// `search` read with this strategy instead of its own.
    fn pick(self, search: &SearchConfig, seed: u64) -> Result<Vec<BTreeMap<String, toml::Value>>, TrainError> {
        SearchConfig {
            strategy: self,
            ..search.clone()
        }
        .trials(seed)
    }
}

/// Most grid points a grid search runs.
pub const MAX_GRID_TRIALS: u64 = 100_000;

/// Grids up to this size are sampled by shuffling every index (the historical
/// draw, so seeded searches keep their trials); larger ones by rejection.
const SHUFFLE_LIMIT: u64 = 1 << 20;

/// `k` distinct indices below `size` (`None`: more than `u64::MAX`), seeded.
fn sample_indices(size: Option<u64>, k: usize, seed: u64) -> Vec<u64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    match size {
        Some(n) if n <= SHUFFLE_LIMIT => {
            let mut all: Vec<u64> = (0..n).collect();
            all.shuffle(&mut rng);
            all.truncate(k);
            all
        }
        _ => {
            let n = size.unwrap_or(u64::MAX);
            let k = (k as u64).min(n) as usize;
            let mut seen = std::collections::HashSet::with_capacity(k);
            let mut out = Vec::with_capacity(k);
            while out.len() < k {
                let i = rng.random_range(0..n);
                if seen.insert(i) {
                    out.push(i);
                }
            }
            out
        }
    }
}

/// `base` with the trial's values set; the result is type-checked and has no search.
pub fn trial_config(
    base: &ExperimentConfig,
    assignment: &BTreeMap<String, toml::Value>,
) -> Result<ExperimentConfig, TrainError> {
    let mut value = base.to_value();
    if let Some(t) = value.as_table_mut() {
        t.remove("search");
    }
    for (k, v) in assignment {
        set_path(&mut value, k, v.clone())?;
    }
    ExperimentConfig::from_value(value).map_err(|e| {
        let e = match e {
            TrainError::Config(m) => m,
            other => other.to_string(),
        };
        TrainError::Config(format!("search trial `{}`: {e}", describe(assignment)))
    })
}

/// A short label for an assignment, e.g. `optim.lr=0.01 train.l2=0.5`.
pub fn describe(assignment: &BTreeMap<String, toml::Value>) -> String {
    assignment
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space() -> SearchConfig {
        let mut s = BTreeMap::new();
        s.insert(
            "optim.lr".to_string(),
            vec![toml::Value::Float(0.1), toml::Value::Float(0.5)],
        );
        s.insert(
            "train.l2".to_string(),
            vec![
                toml::Value::Float(0.0),
                toml::Value::Float(0.01),
                toml::Value::Float(1.0),
            ],
        );
        SearchConfig {
            strategy: Strategy::Grid,
            trials: None,
            metric: MetricName::ValAccuracy,
            retrain_on_train_val: true,
            space: s,
            min_epochs: None,
            max_epochs: None,
            reduction_factor: None,
        }
    }

    #[test]
    fn grid_is_the_cartesian_product() {
        let g = space().grid();
        assert_eq!(g.len(), 6);
        let mut labels: Vec<String> = g.iter().map(describe).collect();
        labels.dedup();
        assert_eq!(labels.len(), 6);
        assert_eq!(labels[0], "optim.lr=0.1 train.l2=0.0");
    }

    #[test]
    fn random_draws_distinct_seeded_trials() {
        let mut s = space();
        s.strategy = Strategy::Random;
        s.trials = Some(4);
        let a = s.trials(1).unwrap();
        assert_eq!(a.len(), 4);
        assert_eq!(a, s.trials(1).unwrap());
        let mut l: Vec<String> = a.iter().map(describe).collect();
        l.sort();
        l.dedup();
        assert_eq!(l.len(), 4);
    }

    #[test]
    fn empty_space_is_rejected() {
        let mut s = space();
        s.space.clear();
        assert!(s.validate().unwrap_err().to_string().contains("search.space is empty"));
    }

    fn huge(strategy: Strategy) -> SearchConfig {
        let values: Vec<toml::Value> = (0..20).map(toml::Value::Integer).collect();
        let space = (0..8).map(|i| (format!("k{i}"), values.clone())).collect();
        SearchConfig {
            strategy,
            trials: Some(3),
            metric: MetricName::ValAccuracy,
            retrain_on_train_val: true,
            space,
            min_epochs: None,
            max_epochs: None,
            reduction_factor: None,
        }
    }

    #[test]
    fn a_huge_random_space_is_sampled_without_building_it() {
        let s = huge(Strategy::Random);
        assert_eq!(s.grid_size(), Some(20u64.pow(8)));
        let t = s.trials(7).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t, s.trials(7).unwrap());
        assert!(t.iter().all(|a| a.len() == 8));
    }

    #[test]
    fn a_huge_grid_is_refused_with_its_size() {
        let e = huge(Strategy::Grid).trials(0).unwrap_err().to_string();
        assert!(e.contains("25600000000") && e.contains("random"), "{e}");
    }

    #[test]
    fn assignment_at_matches_the_grid_order() {
        let s = space();
        let g = s.grid();
        for (i, a) in g.iter().enumerate() {
            assert_eq!(&s.assignment_at(i as u64), a);
        }
    }
}
