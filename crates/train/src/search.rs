//! Hyperparameter search: grid or random search over config keys, each trial
//! scored on the validation split.
use crate::config::{set_path, ExperimentConfig, MetricName};
use crate::TrainError;
use rand::seq::SliceRandom;
use rand::SeedableRng;
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
        Ok(())
    }

    /// Every assignment of the search space, in a fixed order.
    pub fn grid(&self) -> Vec<BTreeMap<String, toml::Value>> {
        let mut out = vec![BTreeMap::new()];
        for (key, values) in &self.space {
            out = out
                .into_iter()
                .flat_map(|partial| {
                    values.iter().map(move |v| {
                        let mut p = partial.clone();
                        p.insert(key.clone(), v.clone());
                        p
                    })
                })
                .collect();
        }
        out
    }

    /// The trials to run: the whole grid, or `trials` distinct random draws from it.
    pub fn trials(&self, seed: u64) -> Vec<BTreeMap<String, toml::Value>> {
        let mut grid = self.grid();
        match self.strategy {
            Strategy::Grid => grid,
            Strategy::Random => {
                grid.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
                grid.truncate(self.trials.unwrap_or(1));
                grid
            }
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
    ExperimentConfig::from_value(value).map_err(|e| TrainError::Config(format!("search trial {assignment:?}: {e}")))
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
        let a = s.trials(1);
        assert_eq!(a.len(), 4);
        assert_eq!(a, s.trials(1));
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
}
