//! `digitlab models`, `digitlab summary`, how errors are printed, and `--help`.
use clap::CommandFactory;
use digitlab_cli::args::Cli;
use std::process::{Command, Output};

/// `digitlab ARGS` with no backtrace requested by the environment (this project's
/// shell sets RUST_BACKTRACE=1) and no data or weights folders.
fn digitlab(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_digitlab"));
    c.args(args)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .env_remove("DIGITLAB_DATA")
        .env_remove("DIGITLAB_WEIGHTS");
    c
}

fn run(c: &mut Command) -> (Output, String, String) {
    let o = c.output().expect("run digitlab");
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    (o, out, err)
}

#[test]
fn models_lists_every_name_with_its_numbers() {
    let (o, out, err) = run(&mut digitlab(&["models"]));
    assert!(o.status.success(), "{out}{err}");
    for name in digitlab_finetune::MODEL_NAMES {
        let line = out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no line for {name}:\n{out}"));
        assert!(line.contains('x'), "{name}: no input size: {line}");
    }
    let line = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap()
            .to_string()
    };
    let r18 = line("resnet18");
    assert!(
        r18.contains("11,689,512")
            && r18.contains("3x224x224")
            && r18.contains("1.81 G")
            && r18.contains("torchvision:resnet18"),
        "{r18}"
    );
    assert!(line("ccexam_svhn_cnn").contains("builtin:ccexam-svhn-cnn.safetensors"));
    let convnext = line("convnext_tiny");
    assert!(
        convnext.contains("28,589,128")
            && convnext.contains("3x224x224")
            && convnext.contains("not traced")
            && convnext.contains("hf:timm/convnext_tiny.fb_in1k"),
        "{convnext}"
    );
    assert!(line("dinov2_vitb14").contains("3x518x518"));
    assert!(out.contains("frozen only"), "{out}");
}

#[test]
fn summary_of_resnet18_at_224() {
    let (o, out, err) = run(&mut digitlab(&[
        "summary",
        "--model",
        "resnet18",
        "--input",
        "3x224x224",
    ]));
    assert!(o.status.success(), "{out}{err}");
    for want in [
        "total parameters: 11,689,512",
        "trainable parameters: 11,689,512",
        "buffers (batch-norm statistics): 9,600",
        "MACs per image: 1,814,073,344 (1.81 G)",
        "output: [1, 1000]",
    ] {
        assert!(out.contains(want), "missing {want:?}:\n{out}");
    }
    let conv1 = out.lines().find(|l| l.starts_with("conv1 ")).expect("a conv1 row");
    let cells: Vec<&str> = conv1.split("  ").map(str::trim).filter(|c| !c.is_empty()).collect();
    assert_eq!(
        cells,
        ["conv1", "Conv2d", "[1, 64, 112, 112]", "9,408", "yes", "118,013,952"],
        "{conv1}"
    );
    assert!(out
        .lines()
        .any(|l| l.starts_with("fc ") && l.contains("[1, 1000]") && l.contains("513,000")));
}

#[test]
fn summary_of_a_config_uses_its_input_and_classes() {
    let cfg = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/logreg_3v6.toml");
    let (o, out, err) = run(&mut digitlab(&["summary", "--config", cfg]));
    assert!(o.status.success(), "{out}{err}");
    // 784 weights + 1 bias, one logit.
    assert!(
        out.contains("input 1x28x28") && out.contains("total parameters: 785"),
        "{out}"
    );
    let (o, out, err) = run(&mut digitlab(&[
        "summary",
        "--config",
        cfg,
        "--set",
        "data.resize=[14, 14]",
    ]));
    assert!(o.status.success(), "{out}{err}");
    assert!(out.contains("total parameters: 197"), "{out}");
}

#[test]
fn errors_are_one_message_and_their_causes_without_a_backtrace() {
    let (o, out, err) = run(&mut digitlab(&["summary", "--model", "googlenet"]));
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("googlenet") && err.contains("resnet18"), "{err}");
    assert!(!err.contains("backtrace") && !err.contains("Stack"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // A missing config: the message, then what caused it.
    let (o, _, err) = run(&mut digitlab(&["summary", "--config", "no/such/config.toml"]));
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("error: ") && err.contains("no/such/config.toml"),
        "{err}"
    );
    assert!(err.lines().skip(1).all(|l| l.starts_with("caused by: ")), "{err}");
    assert!(!err.contains("backtrace"), "{err}");
}

#[test]
fn a_backtrace_only_when_asked_for() {
    let args = ["summary", "--model", "googlenet"];
    let (_, _, err) = run(digitlab(&args).arg("--verbose"));
    assert!(err.starts_with("error: ") && err.contains("\nbacktrace:\n"), "{err}");
    for (var, value, shown) in [
        ("RUST_BACKTRACE", "1", true),
        ("RUST_LIB_BACKTRACE", "1", true),
        ("RUST_BACKTRACE", "0", false),
    ] {
        let (_, _, err) = run(digitlab(&args).env(var, value));
        assert!(err.starts_with("error: "), "{err}");
        assert_eq!(err.contains("backtrace:"), shown, "{var}={value}: {err}");
    }
}

#[test]
fn every_argument_of_every_subcommand_has_a_description() {
    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        if cmd.get_about().is_none() && !path.is_empty() {
            missing.push(format!("`{path}` (the command itself)"));
        }
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version") {
                continue;
            }
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                missing.push(format!("`{path}`: {id}"));
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, format!("{path} {}", sub.get_name()).trim(), missing);
        }
    }
    let mut cmd = Cli::command();
    cmd.build();
    let mut missing = Vec::new();
    walk(&cmd, "", &mut missing);
    assert!(missing.is_empty(), "no description: {missing:#?}");
    assert!(cmd.get_subcommands().count() >= 11);

    // --quiet says what it does, and only where it does something.
    let help = |sub: &str| {
        let mut c = Cli::command();
        c.build();
        c.find_subcommand_mut(sub).unwrap().render_help().to_string()
    };
    for sub in ["train", "sweep", "transfer", "reproduce"] {
        assert!(help(sub).contains("--quiet"), "{sub}");
    }
    for sub in ["eval", "predict", "theory", "datasets", "models", "summary"] {
        assert!(!help(sub).contains("--quiet"), "{sub}: {}", help(sub));
    }
    assert!(!help("train").contains("one line per epoch instead"));
}
