//! Interpretation of a finished evaluation, after fastai's
//! `ClassificationInterpretation`: the most-confused class pairs, the
//! highest-loss images, and calibration (expected calibration error and the bins
//! of a reliability diagram). The results are plain data
//! ([`digitlab_report::interpretation`]) for `summary.json` and the reports.
use crate::eval::Evaluation;
use crate::metrics::ConfusionMatrix;
use digitlab_report::interpretation::{Calibration, CalibrationBin, ConfusedPair, Interpretation, TopLoss};

/// Confidence bins of the calibration (Guo et al. 2017 use 15).
pub const CALIBRATION_BINS: usize = 15;
/// Images in the top-losses list and grid.
pub const TOP_LOSSES: usize = 16;
/// The loss of an image whose true class got probability 0 (instead of +inf,
/// which JSON cannot hold): `-ln` of the smallest positive f32.
const MAX_LOSS: f64 = 103.28;

/// Off-diagonal cells with at least `min_count` images (and at least one), most
/// frequent first, ties by true class then predicted class, like fastai's
/// `most_confused`. Class `c` is named `names[c]` (its index when missing).
pub fn most_confused(cm: &ConfusionMatrix, names: &[String], min_count: u64) -> Vec<ConfusedPair> {
    let n = cm.classes();
    let mut cells: Vec<(usize, usize, u64)> = (0..n)
        .flat_map(|t| (0..n).map(move |p| (t, p)))
        .filter(|(t, p)| t != p)
        .map(|(t, p)| (t, p, cm.get(t, p)))
        .filter(|c| c.2 >= min_count.max(1))
        .collect();
    cells.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)).then(a.1.cmp(&b.1)));
    cells
        .into_iter()
        .map(|(t, p, count)| ConfusedPair {
            truth: class_name(names, t),
            predicted: class_name(names, p),
            count,
        })
        .collect()
}

fn class_name(names: &[String], c: usize) -> String {
    names.get(c).cloned().unwrap_or_else(|| c.to_string())
}

/// An image's loss for top losses: `-ln p(true class)` (the cross-entropy of
/// that image, whatever loss trained the model), capped at [`MAX_LOSS`].
pub fn image_loss(true_probability: f32) -> f64 {
    let p = f64::from(true_probability);
    if p > 0.0 {
        (-p.ln()).min(MAX_LOSS)
    } else {
        MAX_LOSS
    }
}

/// Indices of the `n` images with the highest loss ([`image_loss`]), highest
/// first; ties keep dataset order.
pub fn top_losses(eval: &Evaluation, n: usize) -> Vec<usize> {
    let loss: Vec<f64> = eval.true_probability.iter().map(|&p| image_loss(p)).collect();
    let mut idx: Vec<usize> = (0..loss.len()).collect();
    idx.sort_by(|&a, &b| loss[b].total_cmp(&loss[a]).then(a.cmp(&b)));
    idx.truncate(n);
    idx
}

/// Bins predicted-class `confidence` (in [0, 1]) into `bins` equal-width bins
/// `(lower, upper]` (0 goes to the first) and measures the gap between each
/// bin's accuracy (`correct`) and mean confidence.
pub fn calibration(confidence: &[f32], correct: &[bool], bins: usize) -> Calibration {
    let bins = bins.max(1);
    let mut count = vec![0usize; bins];
    let mut conf_sum = vec![0f64; bins];
    let mut right = vec![0usize; bins];
    for (&c, &ok) in confidence.iter().zip(correct) {
        let c = if c.is_finite() {
            f64::from(c).clamp(0.0, 1.0)
        } else {
            0.0
        };
        let b = ((c * bins as f64).ceil() as usize).clamp(1, bins) - 1;
        count[b] += 1;
        conf_sum[b] += c;
        right[b] += usize::from(ok);
    }
    let total = confidence.len().min(correct.len()).max(1) as f64;
    let (mut ece, mut max_gap) = (0.0, 0.0f64);
    let bins = (0..bins)
        .map(|b| {
            let n = count[b];
            let (confidence, accuracy) = if n == 0 {
                (0.0, 0.0)
            } else {
                (conf_sum[b] / n as f64, right[b] as f64 / n as f64)
            };
            if n > 0 {
                let gap = (accuracy - confidence).abs();
                ece += n as f64 / total * gap;
                max_gap = max_gap.max(gap);
            }
            CalibrationBin {
                lower: b as f64 / bins as f64,
                upper: (b + 1) as f64 / bins as f64,
                count: n,
                confidence,
                accuracy,
            }
        })
        .collect();
    Calibration { ece, max_gap, bins }
}

/// The interpretation of `eval` (on `split`, classes named `names`): every
/// confused pair, the [`TOP_LOSSES`] highest-loss images and the calibration in
/// [`CALIBRATION_BINS`] bins.
pub fn interpret(eval: &Evaluation, names: &[String], split: &str) -> Interpretation {
    let correct: Vec<bool> = eval.predictions.iter().zip(&eval.labels).map(|(p, l)| p == l).collect();
    let top_losses = top_losses(eval, TOP_LOSSES)
        .into_iter()
        .map(|i| TopLoss {
            index: i,
            truth: class_name(names, eval.labels[i] as usize),
            predicted: class_name(names, eval.predictions[i] as usize),
            probability: f64::from(eval.confidence[i]),
            loss: image_loss(eval.true_probability[i]),
        })
        .collect();
    Interpretation {
        split: split.into(),
        images: eval.labels.len(),
        most_confused: most_confused(&eval.confusion, names, 1),
        top_losses,
        calibration: calibration(&eval.confidence, &correct, CALIBRATION_BINS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("c{i}")).collect()
    }

    fn pair(t: &str, p: &str, count: u64) -> ConfusedPair {
        ConfusedPair {
            truth: t.into(),
            predicted: p.into(),
            count,
        }
    }

    #[test]
    fn most_confused_orders_off_diagonal_cells_by_count() {
        // Off-diagonal cells: (0,1) twice, (1,0) once, (2,0) three times, (2,1) once.
        let labels = [0, 0, 0, 1, 1, 2, 2, 2, 2];
        let preds = [1, 1, 0, 0, 1, 1, 0, 0, 0];
        let cm = ConfusionMatrix::from_predictions(3, &labels, &preds);
        assert_eq!(
            most_confused(&cm, &names(3), 1),
            vec![
                pair("c2", "c0", 3),
                pair("c0", "c1", 2),
                pair("c1", "c0", 1),
                pair("c2", "c1", 1)
            ]
        );
        assert_eq!(most_confused(&cm, &names(3), 2).len(), 2);
        // min_count 0 still leaves out empty cells; a missing name is the index.
        assert_eq!(most_confused(&cm, &[], 0)[0], pair("2", "0", 3));
        assert_eq!(most_confused(&cm, &[], 0).len(), 4);
    }

    #[test]
    fn calibrated_confidences_have_zero_ece() {
        // 20 images at confidence 0.75, 15 right; 20 at 0.25, 5 right (both exact in f32).
        let mut conf = vec![0.75f32; 20];
        conf.extend([0.25f32; 20]);
        let ok: Vec<bool> = (0..40).map(|i| if i < 20 { i < 15 } else { i < 25 }).collect();
        let c = calibration(&conf, &ok, 10);
        assert!(c.ece < 1e-12, "{c:?}");
        assert_eq!(c.bins.iter().map(|b| b.count).sum::<usize>(), 40);
        assert_eq!((c.bins[7].count, c.bins[2].count), (20, 20));
        assert_eq!((c.bins[7].accuracy, c.bins[2].accuracy), (0.75, 0.25));
    }

    #[test]
    fn ece_is_the_count_weighted_gap() {
        // Bin (0.8, 1.0]: 4 images at 0.9, 2 right -> gap 0.4.
        // Bin (0.4, 0.6]: 6 images at 0.5, 6 right -> gap 0.5.
        // ECE = 0.4 * 0.4 + 0.6 * 0.5 = 0.46; max gap 0.5.
        let mut conf = vec![0.9f32; 4];
        conf.extend([0.5f32; 6]);
        let ok = [true, true, false, false, true, true, true, true, true, true];
        let c = calibration(&conf, &ok, 5);
        assert!((c.ece - 0.46).abs() < 1e-6, "{}", c.ece);
        assert!((c.max_gap - 0.5).abs() < 1e-6);
        assert!((c.bins[4].accuracy - 0.5).abs() < 1e-12 && (c.bins[4].confidence - 0.9).abs() < 1e-6);
        // Always 0.95 sure, right half the time: ECE = 0.45.
        let c = calibration(&[0.95f32; 100], &(0..100).map(|i| i % 2 == 0).collect::<Vec<_>>(), 15);
        assert!((c.ece - 0.45).abs() < 1e-6, "{}", c.ece);
    }

    #[test]
    fn bins_are_half_open_on_the_left() {
        let c = calibration(&[0.0, 0.5, 0.5001, 1.0, f32::NAN], &[true; 5], 2);
        assert_eq!(c.bins[0].count, 3); // 0.0, 0.5 and NaN (as 0)
        assert_eq!(c.bins[1].count, 2); // 0.5001 and 1.0
        assert_eq!((c.bins[1].lower, c.bins[1].upper), (0.5, 1.0));
    }

    #[test]
    fn top_losses_rank_by_the_true_class_probability() {
        let eval = Evaluation {
            loss: 0.0,
            confusion: ConfusionMatrix::from_predictions(2, &[0, 1, 1, 0], &[0, 0, 1, 1]),
            labels: vec![0, 1, 1, 0],
            predictions: vec![0, 0, 1, 1],
            confidence: vec![0.9, 0.7, 0.6, 0.99],
            true_probability: vec![0.9, 0.3, 0.6, 0.0],
        };
        assert_eq!(top_losses(&eval, 3), vec![3, 1, 2]);
        let i = interpret(&eval, &names(2), "test");
        assert_eq!(i.top_losses[0].loss, MAX_LOSS);
        assert!((i.top_losses[1].loss - -(0.3f32 as f64).ln()).abs() < 1e-12);
        assert_eq!(
            (i.top_losses[1].truth.as_str(), i.top_losses[1].predicted.as_str()),
            ("c1", "c0")
        );
        assert!((i.top_losses[1].probability - 0.7).abs() < 1e-6);
        assert_eq!(i.most_confused, vec![pair("c0", "c1", 1), pair("c1", "c0", 1)]);
        assert_eq!((i.images, i.split.as_str()), (4, "test"));
        assert_eq!(i.calibration.bins.len(), CALIBRATION_BINS);
    }
}
