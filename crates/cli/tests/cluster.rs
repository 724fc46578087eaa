//! Issue 17: sweeps as job arrays. Trial processes running at the same time into
//! one shared folder, then `--collect`, give what the serial sweep gives (the same
//! trials, bit for bit on the CPU, and the same choice), with one retrain; and a
//! successive-halving search with two workers matches its serial run.
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

fn digitlab(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_digitlab"));
    c.args(args).current_dir(cwd).env_remove("DIGITLAB_DATA");
    for v in ["DIGITLAB_TRIAL", "SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"] {
        c.env_remove(v);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let o = digitlab(cwd, args, env).output().expect("run digitlab");
    assert!(o.status.success(), "digitlab {args:?} failed: {}", text(&o));
    text(&o)
}

fn spawn(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Child {
    digitlab(cwd, args, env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start digitlab")
}

fn wait_ok(c: Child) -> String {
    let o = c.wait_with_output().expect("wait for digitlab");
    assert!(o.status.success(), "{}", text(&o));
    text(&o)
}

const GRID: &str = r#"
name = "grid"
seed = 3
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
[search]
retrain_on_train_val = true
[search.space]
"optim.lr" = [0.003, 0.03]
"train.l2" = [0.0, 0.01]
"#;

/// A CSV without its `seconds` column (wall time differs between runs).
fn without_seconds(csv: &str) -> Vec<String> {
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let col = header.iter().position(|h| *h == "seconds").expect("a seconds column");
    csv.lines()
        .map(|l| {
            let mut f: Vec<&str> = l.split(',').collect();
            f.remove(col);
            f.join(",")
        })
        .collect()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// The summary's choice and test figures, without the times.
fn choice(summary: &serde_json::Value) -> serde_json::Value {
    let mut best = summary["best_trial"].clone();
    best.as_object_mut().unwrap().remove("seconds");
    serde_json::json!({
        "best": best,
        "test_accuracy": summary["test_accuracy"],
        "test_macro_f1": summary["test_macro_f1"],
        "test_loss": summary["test_loss"],
        "val_accuracy": summary["val_accuracy"],
        "trials": summary["trials"],
    })
}

/// Every file under `dir` with its bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(dir).unwrap().display().to_string(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

#[test]
fn trial_processes_at_once_then_collect_give_the_serial_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(root.join("grid.toml"), GRID).unwrap();
    let cfg = "grid.toml";

    let listed = ok(root, &["sweep", "--config", cfg, "--list-trials"], &[]);
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines[0], "4 trials", "{listed}");
    assert_eq!(lines[1], "0\toptim.lr=0.003 train.l2=0.0");
    assert_eq!(lines[4], "3\toptim.lr=0.03 train.l2=0.01");
    let j: serde_json::Value =
        serde_json::from_str(&ok(root, &["sweep", "--config", cfg, "--list-trials", "--json"], &[])).unwrap();
    assert_eq!(j["trials"], 4);
    assert_eq!(j["assignments"][2]["values"]["optim.lr"], 0.03);

    ok(root, &["sweep", "--config", cfg, "--out", "serial", "--quiet"], &[]);

    // Two trial processes at a time into one folder, indices from the command
    // line and from each scheduler's variable.
    fn t(i: &str) -> [&str; 8] {
        ["sweep", "--config", "grid.toml", "--out", "array", "--quiet", "--trial", i]
    }
    let a = spawn(root, &t("0"), &[]);
    let b = spawn(root, &t("env"), &[("SLURM_ARRAY_TASK_ID", "1")]);
    wait_ok(a);
    wait_ok(b);
    let early = digitlab(root, &["sweep", "--config", cfg, "--out", "array", "--collect"], &[])
        .output()
        .unwrap();
    assert!(!early.status.success());
    let e = text(&early);
    assert!(e.contains("trial 2 (missing), trial 3 (missing)") && e.contains("--allow-missing"), "{e}");
    let a = spawn(root, &t("env"), &[("JOB_COMPLETION_INDEX", "2")]);
    // The first variable set wins.
    let b = spawn(
        root,
        &t("env"),
        &[("DIGITLAB_TRIAL", "3"), ("SLURM_ARRAY_TASK_ID", "0")],
    );
    wait_ok(a);
    wait_ok(b);
    let again = ok(root, &t("3"), &[]);
    assert!(again.contains("had already finished"), "{again}");

    let first = ok(root, &["sweep", "--config", cfg, "--out", "array", "--collect", "--quiet"], &[]);
    assert!(first.contains("final run retrained now"), "{first}");
    let final_files = files(&root.join("array/final"));
    let second = ok(root, &["sweep", "--config", cfg, "--out", "array", "--collect", "--quiet"], &[]);
    assert!(second.contains("reused from an earlier collect"), "{second}");
    assert_eq!(files(&root.join("array/final")), final_files, "the retrain ran once");

    let serial_csv = std::fs::read_to_string(root.join("serial/trials.csv")).unwrap();
    let array_csv = std::fs::read_to_string(root.join("array/trials.csv")).unwrap();
    assert_eq!(without_seconds(&serial_csv), without_seconds(&array_csv));
    assert_eq!(serial_csv.lines().count(), 5);
    let s = json(&root.join("serial/summary.json"));
    assert_eq!(choice(&s), choice(&json(&root.join("array/summary.json"))));
    assert!(s["test_accuracy"].as_f64().unwrap() > 0.5, "{s}");

    // Bit for bit: every trial's f64 metrics against the library's serial sweep.
    let c = digitlab_train::ExperimentConfig::from_toml_str(GRID, &[]).unwrap();
    let opts = digitlab_train::RunOptions::default();
    let serial = digitlab_train::sweep::run_sweep(&c, Path::new("no-data"), &opts).unwrap();
    for t in &serial.trials {
        let a = json(&root.join(format!("array/trials/{:04}/trial.json", t.index)));
        for (k, v) in [
            ("val_accuracy", t.val_accuracy),
            ("val_loss", t.val_loss),
            ("val_macro_f1", t.val_macro_f1),
            ("train_accuracy", t.train_accuracy),
        ] {
            assert_eq!(a[k].as_f64().unwrap().to_bits(), v.to_bits(), "trial {} {k}", t.index);
        }
    }
}

#[test]
fn trial_env_without_a_variable_names_them_and_a_bad_index_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(root.join("grid.toml"), GRID).unwrap();
    let args = ["sweep", "--config", "grid.toml", "--out", "d", "--trial", "env"];
    let o = digitlab(root, &args, &[]).output().unwrap();
    let t = text(&o);
    assert!(!o.status.success());
    assert!(
        t.contains("DIGITLAB_TRIAL") && t.contains("SLURM_ARRAY_TASK_ID") && t.contains("JOB_COMPLETION_INDEX"),
        "{t}"
    );
    let o = digitlab(root, &["sweep", "--config", "grid.toml", "--out", "d", "--trial", "4"], &[])
        .output()
        .unwrap();
    let t = text(&o);
    assert!(!o.status.success() && t.contains("4 trials (indices 0 to 3)"), "{t}");
    assert!(!root.join("d").exists(), "a refused trial created its folder");
    let o = digitlab(root, &["sweep", "--config", "grid.toml", "--out", "d", "--collect"], &[])
        .output()
        .unwrap();
    assert!(!o.status.success() && text(&o).contains("nothing to collect"), "{}", text(&o));
}

#[test]
fn a_failed_trial_is_named_and_can_be_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(root.join("grid.toml"), GRID).unwrap();
    let cfg = "grid.toml";
    for i in ["0", "1", "2", "3"] {
        ok(root, &["sweep", "--config", cfg, "--out", "d", "--quiet", "--trial", i], &[]);
    }
    // Trial 3 as a trial that stopped without a result leaves it: marked, incomplete.
    let t3 = root.join("d/trials/0003");
    let mut m = json(&t3.join(".digitlab-run.json")).as_object().unwrap().clone();
    m.insert("complete".into(), false.into());
    std::fs::write(t3.join(".digitlab-run.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    std::fs::remove_file(t3.join("trial.json")).unwrap();
    std::fs::write(t3.join("error.txt"), "out of memory\n").unwrap();
    let o = digitlab(root, &["sweep", "--config", cfg, "--out", "d", "--collect"], &[])
        .output()
        .unwrap();
    let t = text(&o);
    assert!(!o.status.success() && t.contains("trial 3 (failed: out of memory)"), "{t}");
    let t = ok(root, &["sweep", "--config", cfg, "--out", "d", "--collect", "--allow-missing", "--quiet"], &[]);
    assert!(t.contains("collected without trial 3"), "{t}");
    assert_eq!(std::fs::read_to_string(root.join("d/trials.csv")).unwrap().lines().count(), 4);
}

const ASHA: &str = r#"
name = "asha"
seed = 5
[data]
dataset = "digits"
val_fraction = 0.2
[model]
kind = "softmax"
[optim]
kind = "sgd"
lr = 0.01
[train]
epochs = 1
batch_size = 64
loss = "cross_entropy"
[search]
strategy = "asha"
min_epochs = 1
max_epochs = 9
reduction_factor = 3
[search.space]
"optim.lr" = [0.001, 0.01, 0.1]
"train.batch_size" = [32, 64, 128]
"#;

#[test]
fn successive_halving_with_two_workers_matches_the_serial_run() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(root.join("asha.toml"), ASHA).unwrap();
    let cfg = "asha.toml";
    ok(root, &["sweep", "--config", cfg, "--out", "serial", "--quiet"], &[]);
    let w = ["sweep", "--config", cfg, "--out", "par", "--quiet", "--worker"];
    let a = spawn(root, &w, &[("DIGITLAB_TRIAL", "0")]);
    let b = spawn(root, &w, &[("DIGITLAB_TRIAL", "1")]);
    let (ta, tb) = (wait_ok(a), wait_ok(b));
    let jobs = |t: &str| -> usize {
        let l = t.lines().find(|l| l.contains("trained")).unwrap_or_else(|| panic!("{t}"));
        l.split("trained ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap()
    };
    // Rungs of 9, 3 and 1 trials: 13 jobs between the two workers, none twice.
    assert_eq!(jobs(&ta) + jobs(&tb), 13, "{ta}\n{tb}");
    ok(root, &["sweep", "--config", cfg, "--out", "par", "--collect", "--quiet"], &[]);

    // Promotions follow the reduction factor: each rung keeps the best third.
    let state = json(&root.join("par/asha.json"));
    let results = state["results"].as_object().unwrap();
    assert_eq!(results.len(), 13);
    assert!(state["running"].as_object().unwrap().is_empty());
    let rung = |k: usize| -> Vec<(usize, f64)> {
        let mut v: Vec<(usize, f64)> = results
            .iter()
            .filter(|(key, _)| key.starts_with(&format!("r{k}-")))
            .map(|(_, t)| (t["index"].as_u64().unwrap() as usize, t["val_accuracy"].as_f64().unwrap()))
            .collect();
        v.sort_by_key(|x| x.0);
        v
    };
    let sizes: Vec<usize> = (0..3).map(|k| rung(k).len()).collect();
    assert_eq!(sizes, vec![9, 3, 1]);
    for k in 0..2 {
        let mut ranked = rung(k);
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut top: Vec<usize> = ranked.iter().take(sizes[k + 1]).map(|x| x.0).collect();
        top.sort_unstable();
        let next: Vec<usize> = rung(k + 1).iter().map(|x| x.0).collect();
        assert_eq!(top, next, "rung {} holds the best of rung {k}", k + 1);
    }
    let csv = std::fs::read_to_string(root.join("par/trials.csv")).unwrap();
    assert!(csv.starts_with("trial,rung,epochs,optim.lr,train.batch_size,"), "{csv}");
    assert!(csv.lines().filter(|l| l.split(',').nth(2) == Some("9")).count() == 1, "{csv}");

    let serial_csv = std::fs::read_to_string(root.join("serial/trials.csv")).unwrap();
    assert_eq!(without_seconds(&serial_csv), without_seconds(&csv));
    let s = json(&root.join("serial/summary.json"));
    assert_eq!(choice(&s), choice(&json(&root.join("par/summary.json"))));
    let best = rung(2)[0].0;
    assert_eq!(s["best_trial"]["index"], best);
    assert_eq!(json(&root.join("par/final/summary.json"))["epochs"], 9);
}
