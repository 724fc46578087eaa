//! Early stopping as a callback.
use super::{improved, monitored, Callback, Control, EpochEnd};
use crate::config::MetricName;
use crate::Result;

/// Stops when `metric` has not improved by more than `min_delta` on its best
/// value so far for `patience` epochs. Its counter lives in
/// [`super::FitState::epochs_without_improvement`], so it survives a resume.
#[derive(Debug, Clone, PartialEq)]
pub struct EarlyStopping {
    pub metric: MetricName,
    pub patience: usize,
    pub min_delta: f64,
}

impl From<&crate::config::EarlyStopping> for EarlyStopping {
    fn from(c: &crate::config::EarlyStopping) -> Self {
        Self {
            metric: c.metric,
            patience: c.patience,
            min_delta: c.min_delta,
        }
    }
}

impl Callback for EarlyStopping {
    fn on_epoch_end(&mut self, end: &mut EpochEnd<'_>) -> Result<Control> {
        let metric = self.metric;
        let (current, earlier) = end
            .state
            .history
            .split_last()
            .expect("fit pushes the epoch's metrics first");
        // Improvement is judged against the best of this metric so far.
        let prior = earlier
            .iter()
            .filter_map(|h| monitored(h, metric))
            .fold(None, |acc: Option<f64>, v| {
                Some(match acc {
                    None => v,
                    Some(a) if metric.higher_is_better() => a.max(v),
                    Some(a) => a.min(v),
                })
            });
        match monitored(current, metric) {
            Some(v) if improved(metric, v, prior, self.min_delta) => end.state.epochs_without_improvement = 0,
            _ => end.state.epochs_without_improvement += 1,
        }
        Ok(if end.state.epochs_without_improvement >= self.patience {
            Control::Stop
        } else {
            Control::Continue
        })
    }
}
