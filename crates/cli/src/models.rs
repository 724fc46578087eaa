//! `digitlab models` (every architecture `create_model` knows) and `digitlab
//! summary` (a torchinfo-style layer table of one model), both from a real build
//! and one forward pass of a zero image (`digitlab_models::summary`).
use anyhow::{bail, Context, Result};
use candle_core::Device;
use candle_nn::VarMap;
use digitlab_finetune::zoo::resolve_arch;
use digitlab_finetune::MODEL_NAMES;
use digitlab_models::{build_model, summarize, zeros_var_builder, InputShape, ModelSummary};
use digitlab_report::Table;
use digitlab_train::ExperimentConfig;
use std::path::Path;

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `1814073344` as `1.81 G`.
fn si(n: u64) -> String {
    let v = n as f64;
    match v {
        v if v >= 1e9 => format!("{:.2} G", v / 1e9),
        v if v >= 1e6 => format!("{:.2} M", v / 1e6),
        v if v >= 1e3 => format!("{:.2} K", v / 1e3),
        v => format!("{v}"),
    }
}

fn shape_text(input: InputShape) -> String {
    format!("{}x{}x{}", input.channels, input.height, input.width)
}

/// Parses `CxHxW` (`3x224x224`).
pub fn parse_input(s: &str) -> Result<InputShape> {
    let parts: Vec<&str> = s.trim().split(['x', 'X']).collect();
    let dims: Option<Vec<usize>> = parts.iter().map(|p| p.trim().parse().ok().filter(|&d| d > 0)).collect();
    match dims.as_deref() {
        Some(&[channels, height, width]) => Ok(InputShape {
            channels,
            height,
            width,
        }),
        _ => bail!("--input {s:?}: expected CxHxW with positive sizes, e.g. 3x224x224"),
    }
}

/// The summary of zoo model `name` at `input` with `classes` outputs.
pub fn zoo_summary(name: &str, input: Option<InputShape>, classes: Option<usize>) -> Result<(String, ModelSummary)> {
    let arch = resolve_arch(name)?;
    let input = input.unwrap_or_else(|| arch.default_input());
    let classes = classes.unwrap_or_else(|| arch.default_classes());
    if classes == 0 {
        bail!("--classes must be at least 1");
    }
    // The architecture create_model builds, with zero weights (none are drawn).
    let varmap = VarMap::new();
    let model = build_model(&arch.config, input, classes, zeros_var_builder(&varmap, &Device::Cpu))
        .with_context(|| format!("{}: cannot be built for input {}", arch.name, shape_text(input)))?;
    let s = summarize(&model, &varmap, input, &|_| true)
        .with_context(|| format!("{}: forward pass at {}", arch.name, shape_text(input)))?;
    let title = if arch.is_frozen_only() {
        format!(
            "{} (candle-transformers backbone: its layers are not traced, the table shows the head only; \
             the parameter total is complete)",
            arch.name
        )
    } else {
        arch.name.to_string()
    };
    Ok((title, s))
}

/// `digitlab models`.
pub fn list() -> Result<()> {
    let mut t = Table::new(
        "Models (parameters and MACs per image at the default input and class count)",
        &["name", "parameters", "input", "classes", "MACs", "pretrained sources"],
    );
    for name in MODEL_NAMES {
        let arch = resolve_arch(name)?;
        let (_, s) = zoo_summary(name, None, None)?;
        let sources = arch.pretrained_sources();
        t.push(vec![
            name.to_string(),
            thousands(s.parameters as u64),
            shape_text(s.input),
            arch.default_classes().to_string(),
            // candle-transformers' layers do not report to the summary recorder.
            if arch.is_frozen_only() {
                "not traced".into()
            } else {
                si(s.macs)
            },
            if sources.is_empty() {
                "-".into()
            } else {
                sources.join(", ")
            },
        ]);
    }
    print!("{}", t.to_text());
    println!(
        "\nNames are case-insensitive; timm-style tags are ignored (resnet18.a1_in1k). \
         `digitlab summary --model NAME [--input CxHxW]` shows the layers.\n\
         convnext_tiny ... tf_efficientnet_b0 are candle-transformers backbones in timm's layout: frozen only \
         (mode = \"frozen\" in transfer configs), and their layers are not traced (parameters are counted, \
         MACs and the layer table are not; see docs/modern-backbones.md)."
    );
    Ok(())
}

/// The summary of the model a train/sweep config builds, for its data's input size
/// and class count (from the config alone: no data is read).
pub fn config_summary(path: &Path, overrides: &[String]) -> Result<(String, ModelSummary)> {
    let cfg = ExperimentConfig::load(path, overrides)?;
    let shape = cfg.data.pipeline().output_shape(cfg.data.dataset.image_shape());
    let input = InputShape {
        channels: shape.channels,
        height: shape.height,
        width: shape.width,
    };
    let classes = match &cfg.data.classes {
        Some(c) => c.len(),
        None => cfg.data.dataset.class_names().len(),
    };
    let varmap = VarMap::new();
    let model = build_model(&cfg.model, input, classes, zeros_var_builder(&varmap, &Device::Cpu))
        .with_context(|| format!("{}: building model `{}`", path.display(), cfg.model.kind()))?;
    let s = summarize(&model, &varmap, input, &|_| true)?;
    Ok((format!("{} ({})", cfg.name, cfg.model.kind()), s))
}

/// The layer table and totals, as `digitlab summary` prints them.
pub fn render(title: &str, s: &ModelSummary) -> String {
    let mut t = Table::new(
        format!("{title}, input {}", shape_text(s.input)),
        &["layer", "type", "output shape", "parameters", "trainable", "MACs"],
    );
    for l in &s.layers {
        let dims: Vec<String> = l.output.iter().map(|d| d.to_string()).collect();
        t.push(vec![
            l.name.clone(),
            l.kind.to_string(),
            format!("[{}]", dims.join(", ")),
            thousands(l.parameters as u64),
            if l.parameters == 0 {
                "-".into()
            } else if l.trainable {
                "yes".into()
            } else {
                "no".into()
            },
            thousands(l.macs),
        ]);
    }
    let dims: Vec<String> = s.output.iter().map(|d| d.to_string()).collect();
    format!(
        "{}\noutput: [{}]\ntotal parameters: {}\ntrainable parameters: {}\nnon-trainable parameters: {}\n\
         buffers (batch-norm statistics): {}\nMACs per image: {} ({})\n",
        t.to_text(),
        dims.join(", "),
        thousands(s.parameters as u64),
        thousands(s.trainable as u64),
        thousands((s.parameters - s.trainable) as u64),
        thousands(s.buffers as u64),
        thousands(s.macs),
        si(s.macs)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_shapes_format() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(11_689_512), "11,689,512");
        assert_eq!(si(1_814_073_344), "1.81 G");
        let i = parse_input("3x224x224").unwrap();
        assert_eq!((i.channels, i.height, i.width), (3, 224, 224));
        for bad in ["3x224", "0x2x2", "axbxc", "", "3x2x2x2"] {
            assert!(parse_input(bad).is_err(), "{bad}");
        }
    }
}
