//! One experiment end to end: prepare data, train, evaluate on test, and write
//! `summary.json` (with its interpretation), `metrics.csv`, `per_class.csv`, the plots
//! and a TensorBoard event file to the output folder.
use crate::config::ExperimentConfig;
use crate::eval::{evaluate, Evaluation};
use crate::io::{write_atomic, write_json};
use crate::trainer::{train, EpochMetrics, PreparedData, RunOptions, TrainedRun};
use crate::Result;
use candle_core::DType;
use digitlab_data::Dataset;
use digitlab_models::count_parameters;
use digitlab_report::interpretation::Interpretation;
use digitlab_report::plots;
use digitlab_report::summary::{RunExtras, RunSummary, TrainExtras};
use std::path::Path;

/// The flat results of a run, written as `summary.json`: a [`RunSummary`] of kind
/// `train`. The name is kept for callers; the type is the one run summary of the
/// workspace.
pub type Summary = RunSummary;

/// A finished experiment: its summary plus the trained model and evaluations.
pub struct ExperimentResult {
    pub summary: Summary,
    pub run: TrainedRun,
    pub test: Option<Evaluation>,
}

/// Trains `cfg` on prepared `data`, evaluates on its test split and, when
/// `opts.out_dir` is set, writes every output there.
pub fn run_experiment(cfg: &ExperimentConfig, data: &PreparedData, opts: &RunOptions) -> Result<ExperimentResult> {
    crate::validate::check_data(cfg, data)?;
    let run_dir = opts
        .out_dir
        .as_deref()
        .map(|d| crate::run_dir::claim_for_training(d, cfg, opts.resume))
        .transpose()?;
    let mut run = train(cfg, data, opts)?;
    let pipeline = cfg.data.pipeline();
    let eb = cfg.train.eval_batch_size;
    let train_eval = evaluate(&run.model, &data.train, &pipeline, eb, cfg.train.loss, &opts.device)?;
    let test = match &data.test {
        Some(t) if run.complete => Some(evaluate(&run.model, t, &pipeline, eb, cfg.train.loss, &opts.device)?),
        _ => None,
    };
    let interpretation = match (&test, &run.val) {
        (Some(t), _) => Some(crate::interpret::interpret(t, data.train.class_names(), "test")),
        (None, Some(v)) => Some(crate::interpret::interpret(v, data.train.class_names(), "validation")),
        _ => None,
    };
    let summary = RunSummary {
        name: cfg.name.clone(),
        dataset: data.train.name().to_string(),
        model: cfg.model.kind().to_string(),
        seed: cfg.seed,
        epochs: run.history.len(),
        train_images: data.train.len(),
        val_images: data.val.as_ref().map_or(0, |v| v.len()),
        test_images: data.test.as_ref().map_or(0, |t| t.len()),
        parameters: count_parameters(&run.varmap),
        train_accuracy: train_eval.accuracy(),
        val_accuracy: run.val.as_ref().map(|e| e.accuracy()),
        val_macro_f1: run.val.as_ref().map(|e| e.macro_f1()),
        test_accuracy: test.as_ref().map(|e| e.accuracy()),
        test_macro_f1: test.as_ref().map(|e| e.macro_f1()),
        test_loss: test.as_ref().map(|e| e.loss),
        wall_seconds: run.wall_seconds,
        train_seconds: run.train_seconds,
        train_samples_per_second: run.train_samples as f64 / run.train_seconds.max(1e-9),
        device: format!("{:?}", opts.device),
        interpretation,
        extras: RunExtras::Train(TrainExtras {
            best_epoch: run.best_epoch,
            stopped_early: run.stopped_early,
            ..Default::default()
        }),
    };
    if let Some(dir) = &opts.out_dir {
        write_outputs(dir, cfg, data, &run, test.as_ref(), &summary)?;
        let step = run.history.last().map_or(0, |h| h["epoch"] as i64);
        if let Some(tb) = run.tensorboard.as_mut() {
            tb.add_end_images(dir, step)?;
        }
    }
    run_dir.as_ref().map(crate::run_dir::RunDir::finish).transpose()?;
    Ok(ExperimentResult { summary, run, test })
}

/// Writes summary, per-epoch metrics, per-class metrics and plots into `dir`.
pub fn write_outputs(
    dir: &Path,
    cfg: &ExperimentConfig,
    data: &PreparedData,
    run: &TrainedRun,
    test: Option<&Evaluation>,
    summary: &Summary,
) -> Result<()> {
    write_json(&dir.join("summary.json"), summary)?;
    write_atomic(
        &dir.join("config.toml"),
        toml::to_string_pretty(cfg).unwrap_or_default().as_bytes(),
    )?;
    write_atomic(&dir.join("metrics.csv"), metrics_csv(&run.history).as_bytes())?;
    let final_eval = test.or(run.val.as_ref());
    if let Some(e) = final_eval {
        write_atomic(
            &dir.join("per_class.csv"),
            per_class_csv(e, data.train.class_names()).as_bytes(),
        )?;
    }
    write_plots(dir, cfg, data, run, test, summary)
}

/// `metrics.csv`: one row per epoch, one column per metric.
pub fn metrics_csv(history: &[EpochMetrics]) -> String {
    let mut keys: Vec<&String> = history.iter().flat_map(|h| h.keys()).collect();
    keys.sort();
    keys.dedup();
    // Put `epoch` first.
    keys.sort_by_key(|k| *k != "epoch");
    let mut s = keys.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(",") + "\n";
    for h in history {
        let row: Vec<String> = keys
            .iter()
            .map(|k| h.get(*k).map(|v| format!("{v}")).unwrap_or_default())
            .collect();
        s += &(row.join(",") + "\n");
    }
    s
}

fn per_class_csv(e: &Evaluation, names: &[String]) -> String {
    let mut s = String::from("class,name,precision,recall,f1,support\n");
    for (c, m) in e.confusion.per_class().iter().enumerate() {
        let name = names.get(c).map(|n| n.replace(',', " ")).unwrap_or_default();
        s += &format!(
            "{c},{name},{:.6},{:.6},{:.6},{}\n",
            m.precision, m.recall, m.f1, m.support
        );
    }
    s
}

fn curve(history: &[EpochMetrics], key: &str) -> Vec<(f64, f64)> {
    history
        .iter()
        .filter_map(|h| Some((h["epoch"], *h.get(key)?)))
        .collect()
}

fn write_plots(
    dir: &Path,
    cfg: &ExperimentConfig,
    data: &PreparedData,
    run: &TrainedRun,
    test: Option<&Evaluation>,
    summary: &Summary,
) -> Result<()> {
    let names = data.train.class_names();
    for (file, title, key) in [("loss.png", "Loss", "loss"), ("accuracy.png", "Accuracy", "accuracy")] {
        let tr = curve(&run.history, &format!("train_{key}"));
        let va = curve(&run.history, &format!("val_{key}"));
        let mut series = vec![plots::Series {
            label: "train",
            points: &tr,
        }];
        if !va.is_empty() {
            series.push(plots::Series {
                label: "validation",
                points: &va,
            });
        }
        plots::line_chart(
            &dir.join(file),
            &format!("{} — {title}", cfg.name),
            "epoch",
            key,
            &series,
        )?;
    }
    let (eval, which, ds) = match (test, &data.test, &run.val, &data.val) {
        (Some(t), Some(d), _, _) => (t, "test", d),
        (None, _, Some(v), Some(d)) => (v, "validation", d),
        _ => return Ok(()),
    };
    plots::confusion_matrix(
        &dir.join("confusion.png"),
        &format!(
            "{} — {which} confusion matrix (acc {:.2}%)",
            cfg.name,
            100.0 * eval.accuracy()
        ),
        &eval.confusion.rows(),
        names,
    )?;
    misclassified_grid(&dir.join("misclassified.png"), &cfg.name, which, eval, ds)?;
    if let Some(i) = &summary.interpretation {
        interpretation_plots(dir, &cfg.name, i, ds)?;
    }
    if let Some(w) = run.model.weight_templates() {
        templates_plot(&dir.join("templates.png"), &cfg.name, w, run, names)?;
    }
    Ok(())
}

/// The 20 most confidently misclassified images in a 4x5 grid.
fn misclassified_grid(path: &Path, name: &str, which: &str, eval: &Evaluation, ds: &Dataset) -> Result<()> {
    let names = ds.class_names();
    let images: Vec<(usize, String)> = eval
        .most_confident_errors(20)
        .into_iter()
        .map(|i| {
            let caption = format!(
                "true {} pred {} ({:.2})",
                names[eval.labels[i] as usize], names[eval.predictions[i] as usize], eval.confidence[i]
            );
            (i, caption)
        })
        .collect();
    image_grid_of(path, &format!("{name} — most confident {which} errors"), ds, &images, 5)
}

/// The interpretation's figures in `dir`: `reliability.png` (the reliability
/// diagram, its title giving the ECE) and `top_losses.png` (the highest-loss
/// images of `ds`, the evaluated split, with true/predicted class, the predicted
/// class's probability and the loss). Shared with transfer runs.
pub fn interpretation_plots(dir: &Path, name: &str, i: &Interpretation, ds: &Dataset) -> Result<()> {
    let c = &i.calibration;
    if c.bins.iter().any(|b| b.count > 0) {
        plots::reliability_diagram(
            &dir.join("reliability.png"),
            &format!(
                "{name} — {} reliability (ECE {:.4}, {} bins)",
                i.split,
                c.ece,
                c.bins.len()
            ),
            c,
        )?;
    }
    let images: Vec<(usize, String)> = i
        .top_losses
        .iter()
        .filter(|t| t.index < ds.len())
        .map(|t| {
            let caption = format!("{}→{} p={:.2} loss {:.2}", t.truth, t.predicted, t.probability, t.loss);
            (t.index, caption)
        })
        .collect();
    let title = format!("{name} — top {} losses (true→predicted, p(predicted), loss)", i.split);
    image_grid_of(&dir.join("top_losses.png"), &title, ds, &images, 4)
}

/// Images `(index, caption)` of `ds` in a grid of `cols` columns (nothing for none).
fn image_grid_of(path: &Path, title: &str, ds: &Dataset, images: &[(usize, String)], cols: usize) -> Result<()> {
    if images.is_empty() {
        return Ok(());
    }
    let shape = ds.shape();
    let pixels: Vec<Vec<f32>> = images
        .iter()
        .map(|(i, _)| ds.image(*i).iter().map(|&p| p as f32 / 255.0).collect())
        .collect();
    let grid: Vec<plots::GridImage> = images
        .iter()
        .zip(&pixels)
        .map(|((_, caption), px)| plots::GridImage {
            pixels: px,
            channels: shape.channels,
            height: shape.height,
            width: shape.width,
            caption: caption.clone(),
        })
        .collect();
    plots::image_grid(path, title, &grid, cols)?;
    Ok(())
}

/// Weight templates of a linear model, one panel per output (channels averaged).
fn templates_plot(path: &Path, name: &str, w: &candle_core::Tensor, run: &TrainedRun, names: &[String]) -> Result<()> {
    let s = run.input_shape;
    let rows: Vec<Vec<f32>> = w.to_dtype(DType::F32)?.to_vec2()?;
    let plane = s.height * s.width;
    let templates: Vec<(String, Vec<f32>)> = rows
        .iter()
        .enumerate()
        .map(|(k, r)| {
            let avg: Vec<f32> = (0..plane)
                .map(|p| (0..s.channels).map(|c| r[c * plane + p]).sum::<f32>() / s.channels as f32)
                .collect();
            let label = if rows.len() == 1 && names.len() == 2 {
                format!("+ {} / − {}", names[1], names[0])
            } else {
                names.get(k).cloned().unwrap_or_else(|| k.to_string())
            };
            (label, avg)
        })
        .collect();
    plots::weight_templates(
        path,
        &format!("{name} — weight templates (red: evidence for)"),
        &templates,
        s.height,
        s.width,
    )?;
    Ok(())
}
