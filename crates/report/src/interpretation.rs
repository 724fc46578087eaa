//! A run's interpretation as plain data (computed by `digitlab-train`'s
//! `interpret` module, after fastai's `ClassificationInterpretation`): the
//! most-confused class pairs, the highest-loss images and calibration. It is
//! stored in `summary.json` ([`crate::RunSummary::interpretation`]) and rendered
//! as a Markdown section ([`markdown`]) and a reliability diagram
//! ([`crate::plots::reliability_diagram`]).
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// What the interpretation of one evaluation found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interpretation {
    /// The split it was computed on: `test`, or `validation` when there is no test split.
    pub split: String,
    pub images: usize,
    /// Off-diagonal confusion-matrix cells, most frequent first.
    pub most_confused: Vec<ConfusedPair>,
    /// The highest-loss images, highest first.
    pub top_losses: Vec<TopLoss>,
    pub calibration: Calibration,
}

/// Images of class `truth` predicted as `predicted`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfusedPair {
    pub truth: String,
    pub predicted: String,
    pub count: u64,
}

/// One high-loss image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopLoss {
    /// Index of the image in the evaluated split.
    pub index: usize,
    pub truth: String,
    pub predicted: String,
    /// Probability of the predicted class.
    pub probability: f64,
    /// `-ln p(true class)`.
    pub loss: f64,
}

/// Calibration of the predicted-class confidences.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    /// Expected calibration error: Σ_b (n_b / N) · |accuracy_b − confidence_b|.
    pub ece: f64,
    /// The largest |accuracy_b − confidence_b| over non-empty bins.
    pub max_gap: f64,
    /// Equal-width confidence bins covering [0, 1].
    pub bins: Vec<CalibrationBin>,
}

/// One confidence bin of a reliability diagram.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationBin {
    /// The bin covers confidences in `(lower, upper]` (the first bin includes 0).
    pub lower: f64,
    pub upper: f64,
    pub count: usize,
    /// Mean confidence and accuracy of the images in the bin (0 when empty).
    pub confidence: f64,
    pub accuracy: f64,
}

/// The interpretation as Markdown: ECE, then the most-confused pairs and the top
/// losses as tables of at most `max_rows` rows each.
pub fn markdown(i: &Interpretation, max_rows: usize) -> String {
    let mut md = String::new();
    let c = &i.calibration;
    let _ = writeln!(
        md,
        "Interpretation on {} {} images: expected calibration error {:.4} over {} bins \
         (largest bin gap {:.4}).\n",
        i.images,
        i.split,
        c.ece,
        c.bins.len(),
        c.max_gap
    );
    if i.most_confused.is_empty() {
        let _ = writeln!(md, "No image was misclassified.\n");
    } else {
        let _ = writeln!(
            md,
            "Most confused (true → predicted):\n\n| true | predicted | images |\n| --- | --- | --- |"
        );
        for p in i.most_confused.iter().take(max_rows) {
            let _ = writeln!(md, "| {} | {} | {} |", p.truth, p.predicted, p.count);
        }
        md.push('\n');
    }
    if !i.top_losses.is_empty() {
        let _ = writeln!(
            md,
            "Top losses:\n\n| image | true | predicted | p(predicted) | loss |\n| --- | --- | --- | --- | --- |"
        );
        for t in i.top_losses.iter().take(max_rows) {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.3} | {:.3} |",
                t.index, t.truth, t.predicted, t.probability, t.loss
            );
        }
        md.push('\n');
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_lists_pairs_and_losses() {
        let i = Interpretation {
            split: "test".into(),
            images: 10,
            most_confused: vec![
                ConfusedPair {
                    truth: "3".into(),
                    predicted: "5".into(),
                    count: 2,
                },
                ConfusedPair {
                    truth: "4".into(),
                    predicted: "9".into(),
                    count: 1,
                },
            ],
            top_losses: vec![TopLoss {
                index: 7,
                truth: "3".into(),
                predicted: "5".into(),
                probability: 0.9,
                loss: 3.2,
            }],
            calibration: Calibration {
                ece: 0.05,
                max_gap: 0.2,
                bins: vec![],
            },
        };
        let md = markdown(&i, 1);
        assert!(md.contains("expected calibration error 0.0500"), "{md}");
        assert!(md.contains("| 3 | 5 | 2 |") && !md.contains("| 4 | 9 | 1 |"), "{md}");
        assert!(md.contains("| 7 | 3 | 5 | 0.900 | 3.200 |"), "{md}");
        let json = serde_json::to_string(&i).unwrap();
        assert_eq!(serde_json::from_str::<Interpretation>(&json).unwrap(), i);
    }
}
