//! Classification metrics: confusion matrix, accuracy, per-class precision /
//! recall / F1 and macro-F1.
//!
//! Conventions (as scikit-learn with `zero_division=0`): a class never predicted
//! has precision 0, a class absent from the labels has recall 0, and F1 is 0
//! when precision + recall = 0. Macro-F1 averages F1 over all classes.
use serde::{Deserialize, Serialize};

/// Counts of (true class, predicted class) pairs; rows are true classes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfusionMatrix {
    classes: usize,
    counts: Vec<u64>,
}

/// Precision, recall, F1 and support of one class.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: u64,
}

impl ConfusionMatrix {
    pub fn new(classes: usize) -> Self {
        Self {
            classes,
            counts: vec![0; classes * classes],
        }
    }

    /// Builds a matrix from parallel label / prediction slices.
    pub fn from_predictions(classes: usize, labels: &[u32], predictions: &[u32]) -> Self {
        let mut m = Self::new(classes);
        for (&t, &p) in labels.iter().zip(predictions) {
            m.add(t as usize, p as usize);
        }
        m
    }

    /// Records one example; out-of-range classes are ignored (never panics).
    pub fn add(&mut self, truth: usize, predicted: usize) {
        if truth < self.classes && predicted < self.classes {
            self.counts[truth * self.classes + predicted] += 1;
        }
    }

    pub fn classes(&self) -> usize {
        self.classes
    }
    pub fn get(&self, truth: usize, predicted: usize) -> u64 {
        self.counts[truth * self.classes + predicted]
    }
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
    /// Rows of counts (row = true class).
    pub fn rows(&self) -> Vec<Vec<u64>> {
        self.counts.chunks(self.classes.max(1)).map(|r| r.to_vec()).collect()
    }

    /// Fraction of examples on the diagonal (0 for an empty matrix).
    pub fn accuracy(&self) -> f64 {
        let total = self.total();
        if total == 0 {
            return 0.0;
        }
        (0..self.classes).map(|c| self.get(c, c)).sum::<u64>() as f64 / total as f64
    }

    /// Per-class precision / recall / F1 / support.
    pub fn per_class(&self) -> Vec<ClassMetrics> {
        (0..self.classes)
            .map(|c| {
                let tp = self.get(c, c) as f64;
                let predicted: u64 = (0..self.classes).map(|t| self.get(t, c)).sum();
                let support: u64 = (0..self.classes).map(|p| self.get(c, p)).sum();
                let precision = if predicted > 0 { tp / predicted as f64 } else { 0.0 };
                let recall = if support > 0 { tp / support as f64 } else { 0.0 };
                let f1 = if precision + recall > 0.0 {
                    2.0 * precision * recall / (precision + recall)
                } else {
                    0.0
                };
                ClassMetrics {
                    precision,
                    recall,
                    f1,
                    support,
                }
            })
            .collect()
    }

    /// Unweighted mean of per-class F1.
    pub fn macro_f1(&self) -> f64 {
        let pc = self.per_class();
        if pc.is_empty() {
            return 0.0;
        }
        pc.iter().map(|m| m.f1).sum::<f64>() / pc.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_three_class_example() {
        // truth:  0 0 0 1 1 2 2 2 2
        // pred:   0 0 1 1 2 2 2 2 0
        let t = [0, 0, 0, 1, 1, 2, 2, 2, 2];
        let p = [0, 0, 1, 1, 2, 2, 2, 2, 0];
        let m = ConfusionMatrix::from_predictions(3, &t, &p);
        assert_eq!(m.rows(), vec![vec![2, 1, 0], vec![0, 1, 1], vec![1, 0, 3]]);
        assert!((m.accuracy() - 6.0 / 9.0).abs() < 1e-12);
        let pc = m.per_class();
        // class 0: P = 2/3, R = 2/3, F1 = 2/3
        assert!((pc[0].precision - 2.0 / 3.0).abs() < 1e-12 && (pc[0].recall - 2.0 / 3.0).abs() < 1e-12);
        // class 1: P = 1/2, R = 1/2
        assert!((pc[1].f1 - 0.5).abs() < 1e-12);
        // class 2: P = 3/4, R = 3/4
        assert!((pc[2].f1 - 0.75).abs() < 1e-12);
        assert_eq!(pc[2].support, 4);
        assert!((m.macro_f1() - (2.0 / 3.0 + 0.5 + 0.75) / 3.0).abs() < 1e-12);
    }

    #[test]
    fn zero_division_convention() {
        // Class 1 is never predicted and class 2 never occurs.
        let m = ConfusionMatrix::from_predictions(3, &[0, 1], &[0, 0]);
        let pc = m.per_class();
        assert_eq!(pc[1].precision, 0.0);
        assert_eq!(pc[2].recall, 0.0);
        assert_eq!(pc[2].f1, 0.0);
        assert!((pc[0].precision - 0.5).abs() < 1e-12);
        assert_eq!(ConfusionMatrix::new(2).accuracy(), 0.0);
    }
}
