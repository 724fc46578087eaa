//! Checks that run before any work: values a config can be refused for on its own,
//! a config against the data it will train on (shapes, class count, augmentation,
//! estimated memory), output folders, and the diagnosis of a diverged step.
//!
//! Everything here only reads: a refused command has changed nothing.
use crate::config::{DataConfig, ExperimentConfig};
use crate::trainer::PreparedData;
use crate::{Result, TrainError};
use candle_core::{DType, Tensor, Var};
use digitlab_data::ImageShape;
use digitlab_models::{estimate_size, InputShape, ModelConfig};
use std::path::Path;

/// Values that are wrong whatever the data: fewer than two (or repeated) classes,
/// an empty test limit, an empty resize.
pub fn check_values(cfg: &ExperimentConfig) -> Result<()> {
    check_data_values(&cfg.data).map_err(TrainError::Config)
}

/// The `[data]` part of [`check_values`] (shared with transfer configs); the
/// message names the key.
pub fn check_data_values(data: &DataConfig) -> std::result::Result<(), String> {
    let bad = |m: String| Err(m);
    if let Some(classes) = &data.classes {
        if classes.len() < 2 {
            return bad(format!(
                "data.classes must name at least 2 classes to tell apart, got {classes:?}"
            ));
        }
        if let Some(c) = classes.iter().enumerate().find(|&(i, c)| classes[..i].contains(c)) {
            return bad(format!("data.classes names class {} twice: {classes:?}", c.1));
        }
    }
    if data.test_limit == Some(0) {
        return bad("data.test_limit must be at least 1 (leave it out to use the whole test split)".into());
    }
    if let Some([h, w]) = data.resize {
        if h == 0 || w == 0 {
            return bad(format!("data.resize must be at least [1, 1], got [{h}, {w}]"));
        }
    }
    Ok(())
}

/// An override value that is an integer literal too large for TOML (i64) is an
/// error naming the key, instead of being taken as a string ("invalid type: string").
pub fn check_integer_literal(key: &str, raw: &str) -> Result<()> {
    let digits = raw.strip_prefix(['+', '-']).unwrap_or(raw);
    let is_integer = !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit() || c == '_');
    if is_integer && raw.replace('_', "").parse::<i64>().is_err() {
        return Err(TrainError::Config(if raw.starts_with('-') {
            format!("{key}: number too small (min {})", i64::MIN)
        } else {
            format!("{key}: number too large (max {})", i64::MAX)
        }));
    }
    Ok(())
}

/// `cfg` against prepared `data`, before the first step: validation and test images
/// have the training images' shape, the pipeline (augmentation included) fits the
/// images, and the estimated memory fits in what is available.
pub fn check_data(cfg: &ExperimentConfig, data: &PreparedData) -> Result<()> {
    let shape = data.train.shape();
    for (split, ds) in [("validation", &data.val), ("test", &data.test)] {
        if let Some(ds) = ds {
            if ds.shape() != shape {
                return Err(TrainError::Config(format!(
                    "the {split} images of {} are {}, the training images {}: the model is built for the training size",
                    ds.name(),
                    shape_text(ds.shape()),
                    shape_text(shape)
                )));
            }
        }
    }
    if data.train.num_classes() < 2 {
        return Err(TrainError::Config(format!(
            "{} has {} class after data.classes: at least 2 are needed",
            data.train.name(),
            data.train.num_classes()
        )));
    }
    let pipeline = cfg.data.pipeline();
    pipeline
        .validate(shape)
        .map_err(|e| TrainError::Config(format!("data: {e}")))?;
    let out = pipeline.output_shape(shape);
    let input = InputShape {
        channels: out.channels,
        height: out.height,
        width: out.width,
    };
    check_memory(cfg, input, shape, data.train.num_classes(), data.train.len())
}

fn shape_text(s: ImageShape) -> String {
    format!("{}x{}x{}", s.channels, s.height, s.width)
}

/// Bytes one training run needs by the estimate of [`digitlab_models::estimate_size`]:
/// weights, gradients and two optimizer states (Adam's moments), plus activations
/// (and their gradients) of the larger of a training and an evaluation batch.
pub fn estimated_bytes(cfg: &ExperimentConfig, input: InputShape, num_classes: usize, train_len: usize) -> (f64, f64) {
    let size = estimate_size(&cfg.model, input, num_classes);
    let batch = if cfg.train.batch_size == 0 {
        train_len
    } else {
        cfg.train.batch_size.min(train_len.max(1))
    };
    let eval_batch = cfg.train.eval_batch_size.min(train_len.max(1));
    let params = 4.0 * 4.0 * size.parameters;
    let activations = 4.0 * size.activations_per_image * (2.0 * batch as f64).max(eval_batch as f64);
    (params, activations)
}

/// Refuses a config whose estimated memory exceeds the available memory, naming the
/// field to shrink: `data.resize` when the data's own size would fit, else the
/// model's width (`model.hidden`) or `train.batch_size`.
fn check_memory(
    cfg: &ExperimentConfig,
    input: InputShape,
    native: ImageShape,
    num_classes: usize,
    train_len: usize,
) -> Result<()> {
    let (available, source) = available_memory();
    let total = |input: InputShape, cfg: &ExperimentConfig| {
        let (p, a) = estimated_bytes(cfg, input, num_classes, train_len);
        p + a
    };
    let (params, activations) = estimated_bytes(cfg, input, num_classes, train_len);
    if params + activations <= available {
        return Ok(());
    }
    let native_input = InputShape {
        height: native.height,
        width: native.width,
        ..input
    };
    let mut one_batch = cfg.clone();
    one_batch.train.batch_size = 1;
    one_batch.train.eval_batch_size = 1;
    let field = if cfg.data.resize.is_some() && total(native_input, cfg) <= available {
        format!("data.resize = {:?}", cfg.data.resize.unwrap_or_default())
    } else if total(input, &one_batch) <= available {
        format!(
            "train.batch_size = {} (train.eval_batch_size = {})",
            cfg.train.batch_size, cfg.train.eval_batch_size
        )
    } else {
        match &cfg.model {
            ModelConfig::Mlp(m) => format!("model.hidden = {:?}", m.hidden),
            m if cfg.data.resize.is_some() => format!(
                "data.resize = {:?} (model `{}`)",
                cfg.data.resize.unwrap_or_default(),
                m.kind()
            ),
            m => format!("model `{}`", m.kind()),
        }
    };
    Err(TrainError::Config(format!(
        "{field}: the run needs an estimated {} ({} for {} parameters with gradients and optimizer state, \
         {} for activations of {}x{}x{} inputs), more than the {} available ({source}); make it smaller",
        bytes_text(params + activations),
        bytes_text(params),
        count_text(params / 16.0),
        bytes_text(activations),
        input.channels,
        input.height,
        input.width,
        bytes_text(available),
    )))
}

/// Bytes of memory available to this process and where the figure comes from:
/// `MemAvailable` of `/proc/meminfo`, else 1 TiB (a bound no real run reaches) on
/// systems without it.
pub fn available_memory() -> (f64, &'static str) {
    let from_proc = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kib| kib * 1024.0)
    });
    match from_proc {
        Some(b) => (b, "MemAvailable in /proc/meminfo"),
        None => (1024f64.powi(4), "no /proc/meminfo: assumed at most 1 TiB"),
    }
}

fn bytes_text(b: f64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

fn count_text(n: f64) -> String {
    if n >= 1e9 {
        format!("{:.1} G", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1} M", n / 1e6)
    } else {
        format!("{n:.0}")
    }
}

/// Checks that `path` (given as `what`, e.g. `--out`) is a folder or can be created
/// as one: it and every existing ancestor must be folders. Creates nothing.
pub fn check_output_dir(path: &Path, what: &str) -> Result<()> {
    let mut cur = path;
    loop {
        match std::fs::metadata(cur) {
            Ok(m) if m.is_dir() => return Ok(()),
            Ok(_) if cur == path => {
                return Err(TrainError::Config(format!(
                    "{what} {}: is a file, expected a folder",
                    path.display()
                )))
            }
            Ok(_) => {
                return Err(TrainError::Config(format!(
                    "{what} {}: cannot be created, {} is a file, expected a folder",
                    path.display(),
                    cur.display()
                )))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                match cur.parent() {
                    Some(p) if !p.as_os_str().is_empty() => cur = p,
                    _ => return Ok(()), // a relative path under the current folder
                }
            }
            Err(e) => {
                return Err(TrainError::Io {
                    path: cur.to_path_buf(),
                    source: e,
                })
            }
        }
    }
}

/// [`diverged`] for a training step: reads the data loss and L2 penalty tensors
/// and checks whether the weights are still finite.
pub fn diverged_step(
    epoch: usize,
    step: usize,
    data_loss: &Tensor,
    l2_penalty: Option<&Tensor>,
    params: &[(String, Var)],
    lr: f64,
) -> TrainError {
    let value = |t: &Tensor| {
        t.to_dtype(DType::F64)
            .and_then(|t| t.to_scalar::<f64>())
            .unwrap_or(f64::NAN)
    };
    let weights_finite = params.iter().all(|(_, v)| {
        v.as_tensor()
            .to_dtype(DType::F64)
            .and_then(|t| t.sum_all())
            .and_then(|t| t.to_scalar::<f64>())
            .is_ok_and(f64::is_finite)
    });
    diverged(epoch, step, value(data_loss), l2_penalty.map(value), weights_finite, lr)
}

/// The error for a step whose loss is not finite, blaming the part that is: the
/// weights (non-finite after the previous update: the gradients blew up), the L2
/// penalty, or the data loss.
pub fn diverged(
    epoch: usize,
    step: usize,
    data_loss: f64,
    l2_penalty: Option<f64>,
    weights_finite: bool,
    lr: f64,
) -> TrainError {
    let total = data_loss + l2_penalty.unwrap_or(0.0);
    let lr_hint = format!("try a lower learning rate (currently {lr}) or gradient clipping (train.grad_clip)");
    let (part, hint) = if !weights_finite {
        (
            "the weights are no longer finite: the gradients of the previous update overflowed",
            lr_hint,
        )
    } else if l2_penalty.is_some_and(|p| !p.is_finite()) {
        (
            "the L2 penalty is not finite",
            "lower train.l2 (the penalty overflows f32)".to_string(),
        )
    } else {
        ("the data loss is not finite", lr_hint)
    };
    TrainError::DivergedPart(format!(
        "training diverged at epoch {epoch}, step {step}: loss is {total}: {part} (data loss {data_loss}, \
         L2 penalty {}); {hint}",
        l2_penalty.map_or("none".to_string(), |p| p.to_string())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_dir_that_is_a_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        let e = check_output_dir(&f, "--out").unwrap_err().to_string();
        assert!(e.contains("is a file, expected a folder") && e.contains("--out"), "{e}");
        let e = check_output_dir(&f.join("sub"), "--cache-dir").unwrap_err().to_string();
        assert!(e.contains("cannot be created") && e.contains("--cache-dir"), "{e}");
        check_output_dir(&dir.path().join("new/deeper"), "--out").unwrap();
        check_output_dir(dir.path(), "--out").unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "nothing was created");
    }

    #[test]
    fn integer_literals_out_of_range_name_the_key() {
        let e = check_integer_literal("train.epochs", "99999999999999999999")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("train.epochs: number too large (max 9223372036854775807)"),
            "{e}"
        );
        let e = check_integer_literal("seed", "-99_999_999_999_999_999_999")
            .unwrap_err()
            .to_string();
        assert!(e.contains("seed: number too small"), "{e}");
        for ok in ["12", "-3", "1_000", "1e308", "\"x\"", "[1, 2]"] {
            check_integer_literal("k", ok).unwrap();
        }
    }

    #[test]
    fn divergence_blames_the_l2_term() {
        let e = diverged(1, 1, 2.3, Some(f64::INFINITY), true, 0.1).to_string();
        assert!(e.contains("L2 penalty is not finite") && e.contains("train.l2"), "{e}");
        let e = diverged(3, 2, f64::NAN, None, false, 10.0).to_string();
        assert!(
            e.contains("weights are no longer finite") && e.contains("overflowed"),
            "{e}"
        );
        let e = diverged(3, 2, f64::NAN, None, true, 10.0).to_string();
        assert!(e.contains("data loss is not finite"), "{e}");
    }
}
