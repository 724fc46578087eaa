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

/// The sections of a small model on the embedded digits (seconds to train).
macro_rules! small {
    () => {
        r#"
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
"#
    };
}

const GRID: &str = concat!(
    "name = \"grid\"\nseed = 3\n",
    small!(),
    r#"
[search]
retrain_on_train_val = true
[search.space]
"optim.lr" = [0.003, 0.03]
"train.l2" = [0.0, 0.01]
"#
);

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
                out.insert(
                    p.strip_prefix(dir).unwrap().display().to_string(),
                    std::fs::read(&p).unwrap(),
                );
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
        [
            "sweep",
            "--config",
            "grid.toml",
            "--out",
            "array",
            "--quiet",
            "--trial",
            i,
        ]
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
    assert!(
        e.contains("trial 2 (missing), trial 3 (missing)") && e.contains("--allow-missing"),
        "{e}"
    );
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

    let first = ok(
        root,
        &["sweep", "--config", cfg, "--out", "array", "--collect", "--quiet"],
        &[],
    );
    assert!(first.contains("final run retrained now"), "{first}");
    let final_files = files(&root.join("array/final"));
    let second = ok(
        root,
        &["sweep", "--config", cfg, "--out", "array", "--collect", "--quiet"],
        &[],
    );
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
    let o = digitlab(
        root,
        &["sweep", "--config", "grid.toml", "--out", "d", "--trial", "4"],
        &[],
    )
    .output()
    .unwrap();
    let t = text(&o);
    assert!(!o.status.success() && t.contains("4 trials (indices 0 to 3)"), "{t}");
    assert!(!root.join("d").exists(), "a refused trial created its folder");
    let o = digitlab(
        root,
        &["sweep", "--config", "grid.toml", "--out", "d", "--collect"],
        &[],
    )
    .output()
    .unwrap();
    assert!(
        !o.status.success() && text(&o).contains("nothing to collect"),
        "{}",
        text(&o)
    );
}

#[test]
fn a_failed_trial_is_named_and_can_be_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(root.join("grid.toml"), GRID).unwrap();
    let cfg = "grid.toml";
    for i in ["0", "1", "2", "3"] {
        ok(
            root,
            &["sweep", "--config", cfg, "--out", "d", "--quiet", "--trial", i],
            &[],
        );
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
    assert!(
        !o.status.success() && t.contains("trial 3 (failed: out of memory)"),
        "{t}"
    );
    let t = ok(
        root,
        &[
            "sweep",
            "--config",
            cfg,
            "--out",
            "d",
            "--collect",
            "--allow-missing",
            "--quiet",
        ],
        &[],
    );
    assert!(t.contains("collected without trial 3"), "{t}");
    assert_eq!(
        std::fs::read_to_string(root.join("d/trials.csv"))
            .unwrap()
            .lines()
            .count(),
        4
    );
}

const ASHA: &str = concat!(
    "name = \"asha\"\nseed = 5\n",
    small!(),
    r#"
[search]
strategy = "asha"
min_epochs = 1
max_epochs = 9
reduction_factor = 3
[search.space]
"optim.lr" = [0.001, 0.01, 0.1]
"train.batch_size" = [32, 64, 128]
"#
);

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
        let l = t
            .lines()
            .find(|l| l.contains("trained"))
            .unwrap_or_else(|| panic!("{t}"));
        l.split("trained ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    // Rungs of 9, 3 and 1 trials: 13 jobs between the two workers, none twice.
    assert_eq!(jobs(&ta) + jobs(&tb), 13, "{ta}\n{tb}");
    ok(
        root,
        &["sweep", "--config", cfg, "--out", "par", "--collect", "--quiet"],
        &[],
    );

    // Promotions follow the reduction factor: each rung keeps the best third.
    let state = json(&root.join("par/asha.json"));
    let results = state["results"].as_object().unwrap();
    assert_eq!(results.len(), 13);
    assert!(state["running"].as_object().unwrap().is_empty());
    let rung = |k: usize| -> Vec<(usize, f64)> {
        let mut v: Vec<(usize, f64)> = results
            .iter()
            .filter(|(key, _)| key.starts_with(&format!("r{k}-")))
            .map(|(_, t)| {
                (
                    t["index"].as_u64().unwrap() as usize,
                    t["val_accuracy"].as_f64().unwrap(),
                )
            })
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
    assert!(
        csv.lines().filter(|l| l.split(',').nth(2) == Some("9")).count() == 1,
        "{csv}"
    );

    let serial_csv = std::fs::read_to_string(root.join("serial/trials.csv")).unwrap();
    assert_eq!(without_seconds(&serial_csv), without_seconds(&csv));
    let s = json(&root.join("serial/summary.json"));
    assert_eq!(choice(&s), choice(&json(&root.join("par/summary.json"))));
    let best = rung(2)[0].0;
    assert_eq!(s["best_trial"]["index"], best);
    assert_eq!(json(&root.join("par/final/summary.json"))["epochs"], 9);
}

const SUITE: &str = r#"
name = "tiny"
[[experiment]]
config = "a.toml"
question = "first"
[[experiment]]
config = "a.toml"
set = ["name=b", "optim.lr=0.03"]
question = "second"
[[experiment]]
config = "a.toml"
set = ["name=c", "seed=9"]
question = "third"
"#;

const TRAIN: &str = concat!("name = \"a\"\nseed = 1\n", small!());

#[test]
fn suite_entries_run_at_once_then_collect_writes_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("configs/suites")).unwrap();
    std::fs::write(root.join("configs/suites/tiny.toml"), SUITE).unwrap();
    std::fs::write(root.join("configs/a.toml"), TRAIN).unwrap();
    let suite = "configs/suites/tiny.toml";
    let listed = ok(root, &["reproduce", "--suite", suite, "--list"], &[]);
    assert!(listed.starts_with("3 experiments\n0\ttrain\ta.toml\n"), "{listed}");

    ok(
        root,
        &["reproduce", "--suite", suite, "--out", "serial", "--quiet"],
        &[],
    );
    let e = |i: &str| -> Vec<String> {
        ["reproduce", "--suite", suite, "--out", "array", "--quiet", "--entry", i]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let (e0, e1) = (e("0"), e("env"));
    let a = spawn(root, &e0.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    let b = spawn(
        root,
        &e1.iter().map(String::as_str).collect::<Vec<_>>(),
        &[("JOB_COMPLETION_INDEX", "1")],
    );
    wait_ok(a);
    wait_ok(b);
    let collect = ["reproduce", "--suite", suite, "--out", "array", "--quiet", "--collect"];
    let o = digitlab(root, &collect, &[]).output().unwrap();
    let t = text(&o);
    assert!(
        !o.status.success() && t.contains("entry 2 (c (digits))") && t.contains("--allow-missing"),
        "{t}"
    );
    let mut partial = collect.to_vec();
    partial.push("--allow-missing");
    let t = ok(root, &partial, &[]);
    assert!(t.contains("entry 2") && root.join("array/report.md").is_file(), "{t}");
    ok(root, &e("2").iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    let before = files(&root.join("array/a"));
    ok(root, &collect, &[]);
    assert_eq!(files(&root.join("array/a")), before, "collect trains nothing");
    for name in ["a", "b", "c"] {
        let s = json(&root.join(format!("serial/{name}/summary.json")));
        let a = json(&root.join(format!("array/{name}/summary.json")));
        assert_eq!(s["test_accuracy"], a["test_accuracy"], "{name}");
        assert_eq!(s["test_loss"], a["test_loss"], "{name}");
    }
    let report = std::fs::read_to_string(root.join("array/report.md")).unwrap();
    assert!(!report.contains("not run yet"), "{report}");
}

fn repo() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `#SBATCH` directives sbatch reads: those before the first command line.
fn sbatch_directives(script: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in script.lines().skip(1) {
        let l = line.trim();
        if let Some(d) = l.strip_prefix("#SBATCH") {
            let d = d.trim();
            let (k, v) = d.split_once('=').unwrap_or((d, ""));
            out.push((k.to_string(), v.to_string()));
        } else if !(l.is_empty() || l.starts_with('#')) {
            break;
        }
    }
    out
}

#[test]
fn the_slurm_example_parses_and_runs_as_a_simulated_array() {
    let script_path = repo().join("examples/slurm/sweep.sbatch");
    let script = std::fs::read_to_string(&script_path).unwrap();
    assert!(script.starts_with("#!/bin/bash\n"));
    let d = sbatch_directives(&script);
    let known = [
        "--job-name",
        "--array",
        "--cpus-per-task",
        "--mem",
        "--time",
        "--output",
    ];
    for (k, v) in &d {
        assert!(
            known.contains(&k.as_str()) && !v.is_empty(),
            "unexpected directive {k}={v}"
        );
    }
    let get = |k: &str| d.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap();
    let config = repo().join("configs/cluster_sweep.toml");
    let cfg = digitlab_train::ExperimentConfig::load(&config, &[]).unwrap();
    let n = digitlab_train::array::list_trials(&cfg).unwrap().len();
    assert_eq!(get("--array"), format!("0-{}", n - 1), "the array covers every trial");
    let (h, m, s) = {
        let t: Vec<u32> = get("--time").split(':').map(|x| x.parse().unwrap()).collect();
        (t[0], t[1], t[2])
    };
    assert!(h * 3600 + m * 60 + s > 0 && get("--mem").ends_with('G'));
    let o = Command::new("bash").arg("-n").arg(&script_path).output().unwrap();
    assert!(o.status.success(), "bash -n: {}", text(&o));

    // Each array task as SLURM would start it, with a stand-in `sbatch` that
    // records the collect job it is given; then that job.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let bin = root.join("bin");
    std::fs::create_dir(&bin).unwrap();
    let fake = bin.join("sbatch");
    std::fs::write(&fake, "#!/bin/bash\nprintf '%s\\n' \"$@\" > \"$SBATCH_LOG\"\n").unwrap();
    let mut p = std::fs::metadata(&fake).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut p, 0o755);
    std::fs::set_permissions(&fake, p).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let log = root.join("sbatch.log");
    for i in 0..n {
        let o = Command::new("bash")
            .arg(&script_path)
            .current_dir(root)
            .env("PATH", &path)
            .env("SBATCH_LOG", &log)
            .env("DIGITLAB", env!("CARGO_BIN_EXE_digitlab"))
            .env("CONFIG", &config)
            .env("OUT", root.join("sweep"))
            .env("SLURM_ARRAY_JOB_ID", "77")
            .env("SLURM_ARRAY_TASK_ID", i.to_string())
            .env("SLURM_ARRAY_TASK_MIN", "0")
            .env("SLURM_ARRAY_TASK_MAX", (n - 1).to_string())
            .env_remove("DIGITLAB_TRIAL")
            .env_remove("DIGITLAB_DATA")
            .output()
            .unwrap();
        assert!(o.status.success(), "task {i}: {}", text(&o));
    }
    let args = std::fs::read_to_string(&log).expect("task 0 submitted the collect job");
    assert!(args.contains("--dependency=afterok:77"), "{args}");
    let wrap = args.lines().find_map(|l| l.strip_prefix("--wrap=")).unwrap();
    let o = Command::new("bash")
        .arg("-c")
        .arg(wrap)
        .current_dir(root)
        .output()
        .unwrap();
    assert!(o.status.success(), "collect: {}", text(&o));
    assert_eq!(
        std::fs::read_to_string(root.join("sweep/trials.csv"))
            .unwrap()
            .lines()
            .count(),
        n + 1
    );
    assert!(
        json(&root.join("sweep/summary.json"))["test_accuracy"]
            .as_f64()
            .unwrap()
            > 0.8
    );
}

/// The YAML the Kubernetes example uses: block maps and sequences, flow sequences
/// of scalars, quoted or plain scalars, `---` between documents, `#` comment lines.
#[derive(Debug, Clone, PartialEq)]
enum Yaml {
    Map(Vec<(String, Yaml)>),
    Seq(Vec<Yaml>),
    Str(String),
}

impl Yaml {
    fn get(&self, path: &str) -> &Yaml {
        path.split('.').fold(self, |y, k| match (y, k.parse::<usize>()) {
            (Yaml::Seq(s), Ok(i)) => &s[i],
            (Yaml::Map(m), _) => {
                &m.iter()
                    .find(|(n, _)| n == k)
                    .unwrap_or_else(|| panic!("no {k} in {path}"))
                    .1
            }
            _ => panic!("{path}: {k} is not in {y:?}"),
        })
    }
    fn s(&self, path: &str) -> &str {
        match self.get(path) {
            Yaml::Str(s) => s,
            y => panic!("{path} is not a scalar: {y:?}"),
        }
    }
    fn strs(&self, path: &str) -> Vec<&str> {
        match self.get(path) {
            Yaml::Seq(v) => v
                .iter()
                .map(|y| match y {
                    Yaml::Str(s) => s.as_str(),
                    _ => panic!("{path}: not scalars"),
                })
                .collect(),
            y => panic!("{path} is not a sequence: {y:?}"),
        }
    }
}

fn scalar(s: &str) -> Yaml {
    let s = s.trim();
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return Yaml::Seq(inner.split(',').filter(|p| !p.trim().is_empty()).map(scalar).collect());
    }
    assert!(
        !s.starts_with('{') && !s.starts_with('&') && !s.starts_with('*'),
        "unsupported YAML: {s}"
    );
    let unq = s
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .or_else(|| s.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')));
    Yaml::Str(unq.unwrap_or(s).to_string())
}

fn parse_yaml(text: &str) -> Vec<Yaml> {
    text.split("\n---\n")
        .map(|doc| {
            let mut lines = Vec::new();
            for l in doc.lines() {
                let t = l.trim_start();
                if t.is_empty() || t.starts_with('#') {
                    continue;
                }
                assert!(!l.contains('\t'), "a tab in YAML indentation: {l}");
                let indent = l.len() - t.len();
                // `- key: v` is an item holding a map whose first line is `key: v`.
                if let Some(rest) = t.strip_prefix("- ").filter(|r| r.contains(": ") || r.ends_with(':')) {
                    lines.push((indent, "-".to_string()));
                    lines.push((indent + 2, rest.to_string()));
                } else {
                    lines.push((indent, t.to_string()));
                }
            }
            let mut i = 0;
            let y = block(&lines, &mut i, 0);
            assert_eq!(i, lines.len(), "unparsed YAML from line {:?}", lines.get(i));
            y
        })
        .collect()
}

fn block(lines: &[(usize, String)], i: &mut usize, indent: usize) -> Yaml {
    if lines[*i].1 == "-" || lines[*i].1.starts_with("- ") {
        let mut items = Vec::new();
        while *i < lines.len() && lines[*i].0 == indent && (lines[*i].1 == "-" || lines[*i].1.starts_with("- ")) {
            let l = &lines[*i].1;
            *i += 1;
            if l == "-" {
                items.push(block(lines, i, indent + 2));
            } else {
                items.push(scalar(&l[2..]));
            }
        }
        return Yaml::Seq(items);
    }
    let mut map = Vec::new();
    while *i < lines.len() && lines[*i].0 == indent && !lines[*i].1.starts_with('-') {
        let l = lines[*i].1.clone();
        let (k, v) = l.split_once(':').unwrap_or_else(|| panic!("not `key: value`: {l}"));
        assert!(map.iter().all(|(n, _): &(String, Yaml)| n != k), "duplicate key {k}");
        *i += 1;
        let value = if v.trim().is_empty() {
            match lines.get(*i) {
                Some((n, _)) if *n > indent => block(lines, i, *n),
                Some((n, t)) if *n == indent && t.starts_with('-') => block(lines, i, *n),
                _ => Yaml::Str(String::new()),
            }
        } else {
            scalar(v)
        };
        map.push((k.to_string(), value));
    }
    assert!(
        *i >= lines.len() || lines[*i].0 < indent,
        "bad indentation at {:?}",
        lines.get(*i)
    );
    Yaml::Map(map)
}

#[test]
fn the_kubernetes_example_is_an_indexed_job_and_a_collect_job_on_one_volume() {
    let text = std::fs::read_to_string(repo().join("examples/kubernetes/sweep-indexed-job.yaml")).unwrap();
    let docs = parse_yaml(&text);
    assert_eq!(docs.len(), 3);
    let (pvc, sweep, collect) = (&docs[0], &docs[1], &docs[2]);
    assert_eq!((pvc.s("apiVersion"), pvc.s("kind")), ("v1", "PersistentVolumeClaim"));
    assert_eq!(pvc.strs("spec.accessModes"), ["ReadWriteMany"]);
    let claim = pvc.s("metadata.name");
    for job in [sweep, collect] {
        assert_eq!((job.s("apiVersion"), job.s("kind")), ("batch/v1", "Job"));
        assert_eq!(job.s("spec.template.spec.restartPolicy"), "Never");
        assert_eq!(
            job.s("spec.template.spec.volumes.0.persistentVolumeClaim.claimName"),
            claim
        );
        let c = job.get("spec.template.spec.containers.0");
        assert_eq!(c.s("volumeMounts.0.name"), job.s("spec.template.spec.volumes.0.name"));
        let mount = c.s("volumeMounts.0.mountPath");
        let cmd = c.strs("command");
        assert_eq!(cmd[..2], ["digitlab", "sweep"]);
        let arg = |flag: &str| cmd[cmd.iter().position(|a| *a == flag).unwrap() + 1];
        assert!(arg("--out").starts_with(&format!("{mount}/")), "{cmd:?}");
        assert!(repo().join(arg("--config")).is_file(), "{cmd:?}");
        assert!(job.s("spec.backoffLimit").parse::<u32>().unwrap() > 0);
    }
    // The Indexed Job: one pod per trial, the index from JOB_COMPLETION_INDEX.
    assert_eq!(sweep.s("spec.completionMode"), "Indexed");
    let cfg = digitlab_train::ExperimentConfig::load(&repo().join("configs/cluster_sweep.toml"), &[]).unwrap();
    let n = digitlab_train::array::list_trials(&cfg).unwrap().len();
    assert_eq!(sweep.s("spec.completions").parse::<usize>().unwrap(), n);
    assert!(sweep.s("spec.parallelism").parse::<usize>().unwrap() >= 1);
    let cmd = sweep.strs("spec.template.spec.containers.0.command");
    assert!(cmd.windows(2).any(|w| w == ["--trial", "env"]), "{cmd:?}");
    let cmd = collect.strs("spec.template.spec.containers.0.command");
    assert!(cmd.contains(&"--collect"), "{cmd:?}");
    assert_eq!(
        sweep.s("spec.template.spec.containers.0.command.3"),
        collect.s("spec.template.spec.containers.0.command.3"),
        "both use one config"
    );
}

#[test]
fn the_small_yaml_reader_rejects_what_it_does_not_understand() {
    let docs = parse_yaml("a: 1\nb:\n  - x: \"2\"\n    y: [p, q]\n  - z\n---\nc: d\n");
    assert_eq!(docs[0].s("b.0.x"), "2");
    assert_eq!(docs[0].strs("b.0.y"), ["p", "q"]);
    assert_eq!(docs[0].s("b.1"), "z");
    assert_eq!(docs[1].s("c"), "d");
    for bad in ["a: 1\n   b: 2\n", "a: 1\na: 2\n", "a: {b: 1}\n"] {
        assert!(std::panic::catch_unwind(|| parse_yaml(bad)).is_err(), "{bad}");
    }
}

#[test]
fn trials_and_the_collected_run_write_event_files_unless_no_tensorboard() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(root.join("grid.toml"), GRID).unwrap();
    let events = |dir: &Path| -> usize {
        std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("events.out.tfevents."))
            .count()
    };
    for (out, extra, want) in [("with", None, 1), ("without", Some("--no-tensorboard"), 0)] {
        for i in ["0", "1", "2", "3"] {
            let mut args = vec!["sweep", "--config", "grid.toml", "--quiet", "--out", out, "--trial", i];
            args.extend(extra);
            ok(root, &args, &[]);
        }
        let mut args = vec!["sweep", "--config", "grid.toml", "--quiet", "--out", out, "--collect"];
        args.extend(extra);
        ok(root, &args, &[]);
        let out = root.join(out);
        assert_eq!(events(&out.join("trials").join("0002")), want, "{}", out.display());
        assert_eq!(events(&out.join("final")), want, "{}", out.display());
    }
}
