//! Crash safety of `digitlab train` on the embedded digits, tested on the real
//! binary as a child process:
//!
//! - SIGKILL at arbitrary points of a run, then `--resume`, repeatedly: the end
//!   result (metrics, summary, checkpoint bytes) equals an uninterrupted run;
//! - SIGKILL in the middle of an epoch's training steps (checked: the previous
//!   epoch's checkpoint complete, nothing of the next one written), then
//!   `--resume`: the same;
//! - SIGKILL in the middle of writing each checkpoint file (deterministically,
//!   through the `DIGITLAB_TEST_HANG_WRITING` hook): the half-written file is
//!   never loaded, and resuming still ends exactly like the uninterrupted run;
//! - truncated checkpoint files are refused with an error naming them;
//! - a read-only output folder gives an error naming the path and leaves the
//!   last good checkpoint valid;
//! - two runs with the same config and seed give bit-identical checkpoints.
use digitlab_train::checkpoint;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

const HANG: &str = digitlab_train::io::HANG_WRITING_ENV;

fn config() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../configs/quickstart.toml")
        .display()
        .to_string()
}

/// `digitlab train` on the quickstart config for `epochs` epochs into `out`.
fn train(out: &Path, epochs: usize, resume: bool) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_digitlab"));
    let epochs = format!("train.epochs={epochs}");
    c.args([
        "train",
        "--config",
        &config(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
        "--set",
        &epochs,
    ]);
    if resume {
        c.arg("--resume");
    }
    c.env_remove("DIGITLAB_DATA").env_remove(HANG);
    c
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn run_ok(mut c: Command) -> String {
    let o = c.output().expect("run digitlab");
    assert!(o.status.success(), "digitlab failed: {}", text(&o));
    text(&o)
}

/// A child process that is SIGKILLed when dropped (so a failing test leaves none).
struct Killable(Child);

impl Drop for Killable {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `c` with stderr piped and reads its lines until `stop` returns true,
/// then SIGKILLs it. Returns the line that stopped it.
fn kill_when(mut c: Command, mut stop: impl FnMut(&str) -> bool) -> String {
    let mut child = Killable(
        c.stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn digitlab"),
    );
    let mut seen = Vec::new();
    let stderr = child.0.stderr.take().expect("piped stderr");
    for line in BufReader::new(stderr).lines() {
        let line = line.expect("read stderr");
        if stop(&line) {
            child.0.kill().expect("SIGKILL");
            let status = child.0.wait().expect("wait");
            assert_eq!(
                status.signal(),
                Some(9),
                "the child was not killed by SIGKILL: {status:?}"
            );
            return line;
        }
        seen.push(line);
    }
    let status = child.0.wait().expect("wait");
    panic!(
        "the child ended ({status:?}) before it could be killed; its output:\n{}",
        seen.join("\n")
    );
}

/// The epoch number of a `--quiet` progress line (`quickstart epoch   3 lr ...`).
fn epoch_of(line: &str) -> Option<usize> {
    let mut words = line.strip_prefix("quickstart epoch")?.split_whitespace();
    words.next()?.parse().ok()
}

/// What a finished run produced, minus wall-clock timings.
#[derive(Debug, PartialEq)]
struct Outcome {
    metrics_csv: Vec<BTreeMap<String, String>>,
    summary: serde_json::Value,
    /// File name -> bytes, for the weight files the final sidecars name.
    checkpoints: BTreeMap<String, Vec<u8>>,
}

const TIMINGS: [&str; 4] = ["seconds", "train_samples_per_second", "wall_seconds", "train_seconds"];

fn outcome(dir: &Path) -> Outcome {
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).expect("metrics.csv");
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().expect("csv header").split(',').collect();
    let metrics_csv = lines
        .map(|l| {
            header
                .iter()
                .zip(l.split(','))
                .filter(|(k, _)| !TIMINGS.contains(k))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect();
    let mut summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap();
    for k in TIMINGS {
        summary.as_object_mut().unwrap().remove(k);
    }
    let mut checkpoints = BTreeMap::new();
    for tag in ["last.json", "best.json"] {
        let s = checkpoint::read_sidecar(&dir.join(tag)).unwrap();
        for f in std::iter::once(s.model_file).chain(s.optim_file) {
            let bytes = std::fs::read(dir.join(&f)).unwrap();
            checkpoints.insert(f, bytes);
        }
    }
    Outcome {
        metrics_csv,
        summary,
        checkpoints,
    }
}

/// Checks that `<dir>/last.json` and every file it names load and verify, and
/// returns its epoch.
fn last_checkpoint_is_valid(dir: &Path) -> usize {
    let p = dir.join("last.json");
    let s = checkpoint::read_sidecar(&p).unwrap_or_else(|e| panic!("last.json unreadable after a kill: {e}"));
    checkpoint::load_inference_model(&p, &candle_core::Device::Cpu)
        .unwrap_or_else(|e| panic!("last checkpoint invalid: {e}"));
    checkpoint::load_optim(&p, &s, &candle_core::Device::Cpu)
        .unwrap_or_else(|e| panic!("optimizer state invalid: {e}"));
    s.epoch
}

fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect()
}

fn reference(epochs: usize) -> (tempfile::TempDir, Outcome) {
    let dir = tempfile::tempdir().unwrap();
    run_ok(train(&dir.path().join("run"), epochs, false));
    let o = outcome(&dir.path().join("run"));
    (dir, o)
}

#[test]
fn sigkill_at_arbitrary_points_then_resume_matches_an_uninterrupted_run() {
    const EPOCHS: usize = 40;
    let (_ref_dir, expected) = reference(EPOCHS);
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    // Three kills: each once the child reports epoch `k`, after a short delay
    // that varies where in the epoch (training, evaluation or checkpoint
    // writing) the signal lands.
    let mut resume = false;
    for (k, delay_ms) in [(3, 0), (9, 7), (17, 13)] {
        let line = kill_when(train(&run, EPOCHS, resume), |l| {
            let hit = epoch_of(l).is_some_and(|e| e >= k);
            if hit {
                std::thread::sleep(std::time::Duration::from_millis(delay_ms));
            }
            hit
        });
        let saved = last_checkpoint_is_valid(&run);
        eprintln!("killed after `{line}` (+{delay_ms} ms); last.json holds epoch {saved}");
        assert!(
            (k - 1..EPOCHS).contains(&saved),
            "last.json epoch {saved} after a kill at epoch {k}"
        );
        resume = true;
    }
    let out = run_ok(train(&run, EPOCHS, true));
    assert!(out.contains("resuming quickstart from epoch"), "{out}");
    assert_eq!(
        outcome(&run),
        expected,
        "resumed run differs from the uninterrupted one"
    );
    assert!(
        temp_files(&run).is_empty(),
        "temporary files left: {:?}",
        temp_files(&run)
    );
}

/// The epoch time a `--quiet` progress line reports (`... | 0.3s`), in seconds.
fn epoch_seconds(line: &str) -> Option<f64> {
    line.rsplit_once("| ")?.1.trim().strip_suffix('s')?.parse().ok()
}

#[test]
fn sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run() {
    // Batch size 1 and a wider layer make an epoch last long enough (about 0.3 s
    // on a loaded 2-core machine) for a kill to land inside its training steps.
    const EPOCHS: usize = 8;
    let slow = |c: &mut Command| {
        c.args(["--set", "train.batch_size=1", "--set", "model.hidden=[256]"]);
    };
    let ref_dir = tempfile::tempdir().unwrap();
    let mut c = train(&ref_dir.path().join("run"), EPOCHS, false);
    slow(&mut c);
    run_ok(c);
    let expected = outcome(&ref_dir.path().join("run"));

    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut mid_epoch = Vec::new();
    for (attempt, k) in [2usize, 4, 6].into_iter().enumerate() {
        let mut c = train(&run, EPOCHS, attempt > 0);
        slow(&mut c);
        // Once epoch k is reported, its checkpoint takes milliseconds to write;
        // then epoch k+1 trains. Half an epoch's time later it is mid-training.
        let line = kill_when(c, |l| {
            let hit = epoch_of(l).is_some_and(|e| e >= k);
            if hit {
                let half = epoch_seconds(l).unwrap_or(0.2).max(0.1) / 2.0;
                std::thread::sleep(std::time::Duration::from_secs_f64(half));
            }
            hit
        });
        let saved = last_checkpoint_is_valid(&run);
        // Mid-epoch: epoch k's checkpoint is complete and nothing of epoch k+1 is
        // being written (no temporary file, no epoch k+1 weights).
        let next = format!("-e{}.safetensors", k + 1);
        let writing =
            temp_files(&run).into_iter().any(|f| f.contains(&next)) || run.join(format!("model{next}")).exists();
        let landed_mid_epoch = saved == k && !writing;
        eprintln!("killed {:.0} ms into epoch {} (after `{line}`): last.json holds epoch {saved}, mid-epoch: {landed_mid_epoch}",
            epoch_seconds(&line).unwrap_or(0.2).max(0.1) / 2.0 * 1000.0, k + 1);
        assert!(
            (k - 1..=k + 1).contains(&saved),
            "last.json epoch {saved} after a kill after epoch {k}"
        );
        mid_epoch.push(landed_mid_epoch);
    }
    // Timing decides where each kill lands; at least one must have been mid-epoch
    // for this test to say anything (each one is, on the machines tried).
    assert!(mid_epoch.iter().any(|&m| m), "no kill landed mid-epoch: {mid_epoch:?}");
    let mut c = train(&run, EPOCHS, true);
    slow(&mut c);
    let out = run_ok(c);
    assert!(out.contains("resuming quickstart from epoch"), "{out}");
    assert_eq!(
        outcome(&run),
        expected,
        "resumed run differs from the uninterrupted one"
    );
    assert!(
        temp_files(&run).is_empty(),
        "temporary files left: {:?}",
        temp_files(&run)
    );
}

#[test]
fn sigkill_mid_checkpoint_write_never_loads_the_partial_file() {
    const EPOCHS: usize = 6;
    let (_ref_dir, expected) = reference(EPOCHS);
    // Epoch 3's weights, optimizer state and sidecar (`last.json` is written once
    // per epoch, so its third write is epoch 3's).
    for (file, hook) in [
        ("model-e3.safetensors", "model-e3.safetensors"),
        ("optim-e3.safetensors", "optim-e3.safetensors"),
        ("last.json", "last.json#3"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let mut c = train(&run, EPOCHS, false);
        c.env(HANG, hook);
        let line = kill_when(c, |l| l.contains("stopped halfway through writing"));
        // The half-written temporary file is there, and is not what any sidecar names.
        let tmp: PathBuf = line
            .rsplit_once("writing ")
            .map(|(_, p)| PathBuf::from(p))
            .expect("path in the hook's line");
        // `.<file>.<run id>.tmp` (digitlab_train::io::temp_path).
        let tmp_name = tmp.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            tmp_name.starts_with(&format!(".{file}.")) && digitlab_train::io::temp_file_run_id(&tmp_name).is_some(),
            "{line}"
        );
        let partial = std::fs::metadata(&tmp)
            .unwrap_or_else(|e| panic!("{}: {e}", tmp.display()))
            .len();
        assert!(
            !run.join(file).exists() || file == "last.json",
            "{file} was renamed into place"
        );
        assert_eq!(
            last_checkpoint_is_valid(&run),
            2,
            "killed writing {file}: last.json must still be epoch 2"
        );

        let out = run_ok(train(&run, EPOCHS, true));
        assert!(out.contains("resuming quickstart from epoch 2"), "{out}");
        assert_eq!(
            outcome(&run),
            expected,
            "killed writing {file} ({partial} bytes written): resumed run differs"
        );
        assert!(
            temp_files(&run).is_empty(),
            "killed writing {file}: temporary files left: {:?}",
            temp_files(&run)
        );
    }
}

#[test]
fn truncated_checkpoints_are_refused_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    run_ok(train(&run, 3, false));
    let s = checkpoint::read_sidecar(&run.join("last.json")).unwrap();
    let weights = run.join(&s.model_file);
    let good = std::fs::read(&weights).unwrap();

    std::fs::write(&weights, &good[..good.len() / 2]).unwrap();
    for mut c in [train(&run, 5, true), {
        let mut e = Command::new(env!("CARGO_BIN_EXE_digitlab"));
        e.args(["eval", "--checkpoint", run.join("last.json").to_str().unwrap()])
            .env_remove("DIGITLAB_DATA");
        e
    }] {
        let o = c.output().unwrap();
        let t = text(&o);
        assert!(!o.status.success(), "a truncated weights file was accepted: {t}");
        assert!(
            t.contains(&weights.display().to_string()) && t.contains("corrupt or replaced"),
            "{t}"
        );
        assert!(!t.contains("panicked"), "{t}");
    }
    std::fs::write(&weights, &good).unwrap();

    let sidecar = run.join("last.json");
    let json = std::fs::read(&sidecar).unwrap();
    std::fs::write(&sidecar, &json[..json.len() / 2]).unwrap();
    let o = train(&run, 5, true).output().unwrap();
    let t = text(&o);
    assert!(!o.status.success(), "a truncated sidecar was accepted: {t}");
    assert!(
        t.contains(&sidecar.display().to_string()) && t.contains("invalid sidecar JSON"),
        "{t}"
    );
    assert!(!t.contains("panicked"), "{t}");
}

/// Runs `c` as an unprivileged user when this process can write to read-only
/// folders (root); `None` when that is impossible here.
fn unprivileged(c: Command, probe_dir: &Path) -> Option<Command> {
    let probe = probe_dir.join(".write-probe");
    if std::fs::write(&probe, b"x").is_err() {
        return Some(c); // permissions apply to us
    }
    let _ = std::fs::remove_file(&probe);
    let setpriv = Command::new("setpriv")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !setpriv {
        return None;
    }
    let mut s = Command::new("setpriv");
    s.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(c.get_program())
        .args(c.get_args());
    s.env_remove("DIGITLAB_DATA").env_remove(HANG);
    Some(s)
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn read_only_output_folder_names_the_path_and_keeps_the_last_checkpoint() {
    const EPOCHS: usize = 6;
    let (_ref_dir, expected) = reference(EPOCHS);
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o755);
    let run = dir.path().join("run");
    run_ok(train(&run, 3, false));
    let last_before = std::fs::read(run.join("last.json")).unwrap();

    for e in std::fs::read_dir(&run).unwrap().flatten() {
        chmod(&e.path(), 0o444);
    }
    chmod(&run, 0o555);
    let Some(mut c) = unprivileged(train(&run, EPOCHS, true), &run) else {
        chmod(&run, 0o755);
        eprintln!("skipped: running with privileges that ignore folder permissions, and setpriv is not available");
        return;
    };
    // The resumed run's first write is its new TensorBoard event file.
    let o = c.output().unwrap();
    let t = text(&o);
    assert!(!o.status.success(), "training into a read-only folder succeeded: {t}");
    let events = run.join("events.out.tfevents.").display().to_string();
    assert!(t.contains(&events) && t.contains("Permission denied"), "{t}");
    assert!(!t.contains("panicked"), "{t}");
    // Without it, the first write is epoch 4's checkpoint.
    let mut without = train(&run, EPOCHS, true);
    without.arg("--no-tensorboard");
    let mut c = unprivileged(without, &run).expect("setpriv worked above");
    let o = c.output().unwrap();
    chmod(&run, 0o755);
    let t = text(&o);
    assert!(!o.status.success(), "training into a read-only folder succeeded: {t}");
    let target = run.join("model-e4.safetensors");
    assert!(
        t.contains(&target.display().to_string()) && t.contains("Permission denied"),
        "{t}"
    );
    assert!(!t.contains("panicked"), "{t}");
    assert_eq!(
        std::fs::read(run.join("last.json")).unwrap(),
        last_before,
        "last.json changed"
    );
    assert_eq!(last_checkpoint_is_valid(&run), 3);

    // Writable again: the run resumes from epoch 3 and ends like an uninterrupted one.
    for e in std::fs::read_dir(&run).unwrap().flatten() {
        chmod(&e.path(), 0o644);
    }
    let out = run_ok(train(&run, EPOCHS, true));
    assert!(out.contains("resuming quickstart from epoch 3"), "{out}");
    assert_eq!(outcome(&run), expected);
}

#[test]
fn same_config_and_seed_give_bit_identical_checkpoints_and_metrics() {
    let runs: Vec<(tempfile::TempDir, Outcome)> = (0..2).map(|_| reference(5)).collect();
    let (a, b) = (&runs[0].1, &runs[1].1);
    assert!(!a.checkpoints.is_empty());
    assert_eq!(
        a.checkpoints.keys().collect::<Vec<_>>(),
        b.checkpoints.keys().collect::<Vec<_>>()
    );
    for (name, bytes) in &a.checkpoints {
        assert!(
            bytes == &b.checkpoints[name],
            "{name} differs between two runs with the same seed"
        );
    }
    assert_eq!(a, b);
    // The comparison can fail: another seed gives other weights.
    let dir = tempfile::tempdir().unwrap();
    let mut c = train(&dir.path().join("run"), 5, false);
    c.args(["--set", "seed=43"]);
    run_ok(c);
    let other = outcome(&dir.path().join("run"));
    assert_ne!(
        other.checkpoints.values().collect::<Vec<_>>(),
        a.checkpoints.values().collect::<Vec<_>>()
    );
}
