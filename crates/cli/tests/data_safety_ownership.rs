//! Issue 12, ownership: digitlab never deletes, reuses or mixes what it did not
//! write. Each test runs the real `digitlab` binary on the embedded digits,
//! snapshots the tree around the run folder before and after, and checks that
//! nothing outside the run folder changed (for refused commands: nothing at all)
//! and that the error names the path.
mod common;

use common::Snapshot;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn digitlab(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_digitlab"))
        .args(args)
        .current_dir(cwd)
        .env_remove("DIGITLAB_DATA")
        .env_remove("DIGITLAB_WEIGHTS")
        .output()
        .expect("run digitlab")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(o: &Output) -> String {
    let t = text(o);
    assert!(o.status.success(), "digitlab failed: {t}");
    assert!(!t.contains("panicked"), "{t}");
    t
}

fn refused(o: &Output) -> String {
    let t = text(o);
    assert!(!o.status.success(), "digitlab succeeded where it must refuse: {t}");
    assert!(!t.contains("panicked"), "{t}");
    t
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A small MLP on the embedded digits (seconds).
const MLP: &str = r#"
name = "NAME"
seed = 7
[data]
dataset = "digits"
val_fraction = 0.2
[model]
kind = "mlp"
hidden = [16]
[optim]
kind = "adam"
lr = 0.01
[train]
epochs = 2
batch_size = 64
loss = "cross_entropy"
"#;

/// Softmax regression on the embedded digits: a linear model, so it writes
/// `templates.png`.
const SOFTMAX: &str = r#"
name = "NAME"
seed = 7
[data]
dataset = "digits"
val_fraction = 0.2
[model]
kind = "softmax"
[optim]
kind = "adam"
lr = 0.05
[train]
epochs = 2
batch_size = 64
loss = "cross_entropy"
"#;

/// Writes `<root>/configs/<file>` with `name` set; returns its path.
fn write_config(root: &Path, file: &str, template: &str, name: &str) -> PathBuf {
    let dir = root.join("configs");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(file);
    std::fs::write(&p, template.replace("NAME", name)).unwrap();
    p
}

/// Writes `<root>/configs/suites/s.toml`: one train entry of `<root>/configs/e.toml`
/// with `set` overrides; returns the suite's path.
fn write_suite(root: &Path, set: &[&str]) -> PathBuf {
    write_config(root, "e.toml", MLP, "softmax_mnist");
    let dir = root.join("configs/suites");
    std::fs::create_dir_all(&dir).unwrap();
    let set: Vec<String> = set.iter().map(|o| format!("{o:?}")).collect();
    let p = dir.join("s.toml");
    std::fs::write(
        &p,
        format!(
            "name = \"s\"\n[[experiment]]\nconfig = \"e.toml\"\nmode = \"train\"\nset = [{}]\n",
            set.join(", ")
        ),
    )
    .unwrap();
    p
}

fn reproduce(root: &Path, suite: &Path, out: &Path) -> Output {
    digitlab(root, &["reproduce", "--suite", s(suite), "--out", s(out), "--quiet"])
}

/// A user's folder with a file in it.
fn users_folder(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("notes.txt"), b"my notes").unwrap();
}

// Case 1: `reproduce` deletes folders it does not own.

#[test]
fn case1_reproduce_refuses_entry_names_that_leave_out() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    users_folder(&root.join("victim"));
    let out = root.join("out");
    let abs = root.join("victim");
    for name in ["../victim", abs.to_str().unwrap(), ".", ""] {
        let set = format!("name={name:?}");
        let suite = write_suite(root, &[&set]);
        let before = Snapshot::take(root);
        let t = refused(&reproduce(root, &suite, &out));
        before.assert_unchanged(&Snapshot::take(root));
        assert!(
            t.contains(&format!("name = {name:?}")) && t.contains("e.toml") && t.contains("one folder name"),
            "{name}: {t}"
        );
    }
}

#[test]
fn case1_reproduce_never_deletes_a_users_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let suite = write_suite(root, &[]);
    // `--out` is the user's own folder.
    let mywork = root.join("mywork");
    users_folder(&mywork.join("softmax_mnist"));
    let before = Snapshot::take(root);
    let t = refused(&reproduce(root, &suite, &mywork));
    before.assert_unchanged(&Snapshot::take(root));
    assert!(
        t.contains(&format!(
            "{}: exists and is not a digitlab run folder",
            mywork.display()
        )),
        "{t}"
    );

    // `--out` is digitlab's, but the entry's folder is the user's and the config
    // changed (so the entry would run again).
    let out = root.join("out");
    ok(&reproduce(root, &suite, &out));
    std::fs::remove_dir_all(out.join("softmax_mnist")).unwrap();
    users_folder(&out.join("softmax_mnist"));
    let suite = write_suite(root, &["train.epochs=3"]);
    let before = Snapshot::take(root);
    let t = refused(&reproduce(root, &suite, &out));
    before.assert_unchanged(&Snapshot::take(root));
    let entry = out.join("softmax_mnist");
    assert!(
        t.contains(&format!("{}: exists and is not a digitlab run folder", entry.display())),
        "{t}"
    );
}

// Case 2: `reproduce` reuses a folder it did not write.

#[test]
fn case2_reproduce_reuses_only_its_own_finished_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let suite = write_suite(root, &[]);
    let out = root.join("out");
    ok(&reproduce(root, &suite, &out));
    let entry = out.join("softmax_mnist");
    let real: serde_json::Value = serde_json::from_slice(&std::fs::read(entry.join("summary.json")).unwrap()).unwrap();

    // Unchanged and marked: reused, and the report shows the real result.
    let before = Snapshot::take(root);
    let t = ok(&reproduce(root, &suite, &out));
    assert!(t.contains("unchanged and complete, reusing"), "{t}");
    before.assert_only_changed_within(&Snapshot::take(root), &[Path::new("out")]);
    assert_eq!(
        before.entries.get(Path::new("out/softmax_mnist/summary.json")),
        Snapshot::take(root)
            .entries
            .get(Path::new("out/softmax_mnist/summary.json"))
    );

    // The same folder made by hand (the old `.config-hash` and a summary of
    // another model, no marker): not reused, not touched.
    std::fs::remove_file(entry.join(".digitlab-run.json")).unwrap();
    std::fs::write(entry.join(".config-hash"), b"0123").unwrap();
    let mut fake = real.clone();
    fake["test_accuracy"] = serde_json::json!(0.1234);
    fake["model"] = serde_json::json!("mlp 3-vs-6");
    std::fs::write(entry.join("summary.json"), serde_json::to_vec(&fake).unwrap()).unwrap();
    let before = Snapshot::take(root);
    let t = refused(&reproduce(root, &suite, &out));
    before.assert_unchanged(&Snapshot::take(root));
    assert!(
        t.contains(&format!("{}: exists and is not a digitlab run folder", entry.display())),
        "{t}"
    );
    assert!(!t.contains("12.34%"), "{t}");
}

// Case 3: two runs into one `--out` mix silently.

#[test]
fn case3_two_concurrent_runs_one_runs_the_other_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let cfg = write_config(root, "c.toml", MLP, "cc");
    let out = root.join("cc/shared");
    std::fs::create_dir_all(root.join("cc")).unwrap();
    let before = Snapshot::take(root);
    // Long enough (a few seconds) that the two overlap.
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_digitlab"))
            .args([
                "train",
                "--config",
                s(&cfg),
                "--out",
                s(&out),
                "--quiet",
                "--set",
                "train.epochs=60",
                "--set",
                "train.batch_size=16",
            ])
            .current_dir(root)
            .env_remove("DIGITLAB_DATA")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn digitlab")
    };
    let mut a = spawn();
    let mut b = spawn();
    let (pa, pb) = (a.id(), b.id());
    // Whichever finishes first must be the refused one, while the other still runs.
    let (first, first_pid, mut second, second_pid) = loop {
        if a.try_wait().unwrap().is_some() {
            break (a, pa, b, pb);
        }
        if b.try_wait().unwrap().is_some() {
            break (b, pb, a, pa);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    let still_running = second.try_wait().unwrap().is_none();
    let first = first.wait_with_output().unwrap();
    let t = refused(&first);
    assert!(
        t.contains(&format!(
            "run folder {} is in use by process {second_pid}",
            out.display()
        )),
        "process {first_pid}: {t}"
    );
    assert!(still_running, "the refused run did not end before the other finished");
    let second = second.wait_with_output().unwrap();
    ok(&second);
    before.assert_only_changed_within(&Snapshot::take(root), &[Path::new("cc/shared")]);
    // Everything in the folder is from the one run that ran.
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["epochs"], 60);
    let printed = format!("test acc {:.2}%", 100.0 * summary["test_accuracy"].as_f64().unwrap());
    assert!(text(&second).contains(&printed), "{}", text(&second));
    for tag in ["last.json", "best.json"] {
        digitlab_train::checkpoint::load_inference_model(&out.join(tag), &candle_core::Device::Cpu)
            .unwrap_or_else(|e| panic!("{tag}: {e}"));
    }
    assert!(
        !out.join(".digitlab-lock").exists(),
        "the lock's pid file outlived the run"
    );
}

// Case 5: `name` escapes `runs/` for train, sweep and transfer.

#[test]
fn case5_names_cannot_leave_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let train_cfg = write_config(root, "t.toml", MLP, "t");
    let sweep_cfg = write_config(
        root,
        "s.toml",
        &format!("{MLP}[search]\nstrategy = \"grid\"\n[search.space]\n\"optim.lr\" = [0.01, 0.02]\n"),
        "s",
    );
    let transfer_cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/transfer_quick.toml");
    users_folder(&root.join("x"));
    let abs = root.join("x");
    for (cmd, cfg) in [
        ("train", &train_cfg),
        ("sweep", &sweep_cfg),
        ("transfer", &transfer_cfg),
    ] {
        for name in ["../../x", "../x", abs.to_str().unwrap(), "", ".", "a/b"] {
            let set = format!("name={name:?}");
            let before = Snapshot::take(root);
            let t = refused(&digitlab(root, &[cmd, "--config", s(cfg), "--set", &set, "--quiet"]));
            before.assert_unchanged(&Snapshot::take(root));
            assert!(
                t.contains(&format!("name = {name:?}")) && t.contains(s(cfg)),
                "{cmd} {name}: {t}"
            );
        }
    }
    // The same rule for backbone labels (one folder per backbone).
    let before = Snapshot::take(root);
    let t = refused(&digitlab(
        root,
        &[
            "transfer",
            "--config",
            s(&transfer_cfg),
            "--set",
            "backbones=[{model = \"lenet5\", pretrained = \"none\", label = \"../y\"}]",
        ],
    ));
    before.assert_unchanged(&Snapshot::take(root));
    assert!(t.contains("backbones[0].label = \"../y\""), "{t}");
}

// Case 6: files in the way are deleted or mixed.

#[test]
fn case6_stale_temp_cleanup_removes_only_digitlabs_own_temporary_files() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let cfg = write_config(root, "c.toml", MLP, "c");
    // A folder of the user's with files that look like old temporary files.
    let theirs = root.join("theirs");
    std::fs::create_dir_all(&theirs).unwrap();
    for f in ["notes.tmp3", "summary.json.tmp999999", "model-e1.safetensors.tmp1"] {
        std::fs::write(theirs.join(f), b"mine").unwrap();
    }
    let before = Snapshot::take(root);
    let t = refused(&digitlab(
        root,
        &["train", "--config", s(&cfg), "--out", s(&theirs), "--quiet"],
    ));
    before.assert_unchanged(&Snapshot::take(root));
    assert!(
        t.contains(&format!(
            "{}: exists and is not a digitlab run folder",
            theirs.display()
        )),
        "{t}"
    );

    // Inside digitlab's own run folder, resuming removes a dead run's temporary
    // file (`.<file>.<run id>.tmp`) and nothing else.
    let out = root.join("run");
    ok(&digitlab(
        root,
        &["train", "--config", s(&cfg), "--out", s(&out), "--quiet"],
    ));
    let stale = out.join(".last.json.18f00ba47c2-999999999.tmp");
    std::fs::write(&stale, b"half").unwrap();
    let users = ["notes.tmp3", "last.json.tmp999999", ".x.tmp", ".last.json.tmp"];
    for f in users {
        std::fs::write(out.join(f), b"mine").unwrap();
    }
    let before = Snapshot::take(root);
    ok(&digitlab(
        root,
        &[
            "train",
            "--config",
            s(&cfg),
            "--out",
            s(&out),
            "--resume",
            "--set",
            "train.epochs=3",
            "--quiet",
        ],
    ));
    let after = Snapshot::take(root);
    before.assert_only_changed_within(&after, &[Path::new("run")]);
    assert!(!stale.exists(), "the dead run's temporary file is still there");
    for f in users {
        assert_eq!(std::fs::read(out.join(f)).unwrap(), b"mine", "{f} was touched");
    }
}

#[test]
fn case6_out_over_another_configs_run_is_refused_unless_forced() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let linear = write_config(root, "lin.toml", SOFTMAX, "lin");
    let mlp = write_config(root, "mlp.toml", MLP, "mlp");
    let out = root.join("run");
    ok(&digitlab(
        root,
        &["train", "--config", s(&linear), "--out", s(&out), "--quiet"],
    ));
    assert!(out.join("templates.png").is_file());

    let before = Snapshot::take(root);
    let t = refused(&digitlab(
        root,
        &["train", "--config", s(&mlp), "--out", s(&out), "--quiet"],
    ));
    before.assert_unchanged(&Snapshot::take(root));
    assert!(
        t.contains(&format!(
            "{}: holds a digitlab run of a different config",
            out.display()
        )) && t.contains("--force"),
        "{t}"
    );

    // --force replaces the marked folder whole: nothing of the old run is left.
    let before = Snapshot::take(root);
    ok(&digitlab(
        root,
        &["train", "--config", s(&mlp), "--out", s(&out), "--force", "--quiet"],
    ));
    before.assert_only_changed_within(&Snapshot::take(root), &[Path::new("run")]);
    assert!(
        !out.join("templates.png").exists(),
        "the old run's templates.png is still there"
    );
    let cfg = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(cfg.contains("name = \"mlp\""), "{cfg}");

    // --force never replaces a folder that is not digitlab's.
    users_folder(&root.join("mine"));
    let before = Snapshot::take(root);
    let t = refused(&digitlab(
        root,
        &[
            "train",
            "--config",
            s(&mlp),
            "--out",
            s(&root.join("mine")),
            "--force",
            "--quiet",
        ],
    ));
    before.assert_unchanged(&Snapshot::take(root));
    assert!(t.contains("is not a digitlab run folder"), "{t}");
}

// Case 8 (the two `--resume` cases): what a run folder holds.

#[test]
fn resume_without_a_checkpoint_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let cfg = write_config(root, "c.toml", MLP, "c");
    let absent = root.join("absent");
    let before = Snapshot::take(root);
    let t = refused(&digitlab(
        root,
        &["train", "--config", s(&cfg), "--out", s(&absent), "--resume"],
    ));
    before.assert_unchanged(&Snapshot::take(root));
    assert!(
        t.contains(&format!("{}: does not exist: nothing to resume", absent.display())),
        "{t}"
    );

    // A digitlab run folder without last.json (checkpoints off): refused, best.json kept.
    let out = root.join("run");
    ok(&digitlab(
        root,
        &[
            "train",
            "--config",
            s(&cfg),
            "--out",
            s(&out),
            "--set",
            "train.checkpoints=false",
            "--quiet",
        ],
    ));
    std::fs::write(out.join("best.json"), b"kept").unwrap();
    let before = Snapshot::take(root);
    let t = refused(&digitlab(
        root,
        &[
            "train",
            "--config",
            s(&cfg),
            "--out",
            s(&out),
            "--set",
            "train.checkpoints=false",
            "--resume",
        ],
    ));
    before.assert_unchanged(&Snapshot::take(root));
    let last = out.join("last.json");
    assert!(
        t.contains(&format!("{}: does not exist: nothing to resume", last.display()))
            && t.contains("run without --resume"),
        "{t}"
    );
}

#[test]
fn resume_with_fewer_epochs_than_done_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let cfg = write_config(root, "c.toml", MLP, "c");
    let out = root.join("run");
    ok(&digitlab(
        root,
        &[
            "train",
            "--config",
            s(&cfg),
            "--out",
            s(&out),
            "--set",
            "train.epochs=4",
            "--quiet",
        ],
    ));
    let before = Snapshot::take(root);
    let t = refused(&digitlab(
        root,
        &[
            "train",
            "--config",
            s(&cfg),
            "--out",
            s(&out),
            "--set",
            "train.epochs=2",
            "--resume",
        ],
    ));
    before.assert_unchanged(&Snapshot::take(root));
    assert!(
        t.contains(&out.join("last.json").display().to_string())
            && t.contains("has 4 epochs done but train.epochs = 2"),
        "{t}"
    );
}
