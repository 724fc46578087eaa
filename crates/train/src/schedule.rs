//! Learning-rate schedules, evaluated per optimizer step.
use std::f64::consts::PI;

/// How the learning rate changes over training (`[schedule]` in a config).
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    #[serde(default)]
    pub kind: ScheduleKind,
    /// Linear warm-up from lr/100 to lr over this many epochs (fractional allowed).
    #[serde(default)]
    pub warmup_epochs: f64,
    /// `step`: multiply by `gamma` every `step_epochs` epochs.
    #[serde(default = "one")]
    pub step_epochs: usize,
    #[serde(default = "half")]
    pub gamma: f64,
    /// `cosine`: final learning rate as a fraction of the base rate.
    #[serde(default)]
    pub min_lr_fraction: f64,
}

fn one() -> usize {
    1
}
fn half() -> f64 {
    0.5
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    #[default]
    Constant,
    Step,
    Cosine,
}

impl ScheduleConfig {
    /// Learning rate at fractional epoch `progress` (epoch + batch/batches) of `epochs`.
    pub fn lr_at(&self, base: f64, progress: f64, epochs: usize) -> f64 {
        let decayed = match self.kind {
            ScheduleKind::Constant => base,
            ScheduleKind::Step => {
                base * self
                    .gamma
                    .powi((progress.floor() as usize / self.step_epochs.max(1)) as i32)
            }
            ScheduleKind::Cosine => {
                let t = (progress / epochs.max(1) as f64).clamp(0.0, 1.0);
                let floor = base * self.min_lr_fraction;
                floor + (base - floor) * 0.5 * (1.0 + (PI * t).cos())
            }
        };
        if self.warmup_epochs > 0.0 && progress < self.warmup_epochs {
            let w = progress / self.warmup_epochs;
            decayed * (0.01 + 0.99 * w)
        } else {
            decayed
        }
    }
}

/// A learning-rate schedule as [`crate::fit`] uses it: the rate at fractional
/// epoch `progress` (epoch + batch / batches) of `epochs`, from the base rate.
pub trait LrSchedule {
    fn lr_at(&self, base: f64, progress: f64, epochs: usize) -> f64;
}

impl LrSchedule for ScheduleConfig {
    fn lr_at(&self, base: f64, progress: f64, epochs: usize) -> f64 {
        ScheduleConfig::lr_at(self, base, progress, epochs)
    }
}

/// The base rate throughout.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConstantLr;

impl LrSchedule for ConstantLr {
    fn lr_at(&self, base: f64, _progress: f64, _epochs: usize) -> f64 {
        base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_of_schedules() {
        let c = ScheduleConfig::default();
        assert_eq!(c.lr_at(0.1, 3.5, 10), 0.1);
        let s = ScheduleConfig {
            kind: ScheduleKind::Step,
            step_epochs: 2,
            gamma: 0.1,
            ..Default::default()
        };
        assert!((s.lr_at(1.0, 1.9, 10) - 1.0).abs() < 1e-12);
        assert!((s.lr_at(1.0, 2.0, 10) - 0.1).abs() < 1e-12);
        assert!((s.lr_at(1.0, 5.0, 10) - 0.01).abs() < 1e-12);
        let cos = ScheduleConfig {
            kind: ScheduleKind::Cosine,
            ..Default::default()
        };
        assert!((cos.lr_at(1.0, 0.0, 10) - 1.0).abs() < 1e-12);
        assert!((cos.lr_at(1.0, 5.0, 10) - 0.5).abs() < 1e-12);
        assert!(cos.lr_at(1.0, 10.0, 10).abs() < 1e-12);
        let w = ScheduleConfig {
            warmup_epochs: 2.0,
            ..Default::default()
        };
        assert!((w.lr_at(1.0, 0.0, 10) - 0.01).abs() < 1e-12);
        assert!((w.lr_at(1.0, 1.0, 10) - 0.505).abs() < 1e-12);
        assert_eq!(w.lr_at(1.0, 2.0, 10), 1.0);
    }
}
