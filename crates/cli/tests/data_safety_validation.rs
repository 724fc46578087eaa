//! Issue 12, validation part: the real `digitlab` binary on the embedded digits and
//! small synthetic inputs. Every test snapshots the folder around the run before and
//! after: a refused command must have changed nothing at all (the error came before
//! any work), a run may change only its own output folders.
mod common;

use common::Snapshot;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn digitlab_in(cwd: &Path, args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_digitlab"));
    c.args(args)
        .current_dir(cwd)
        .env_remove("DIGITLAB_DATA")
        .env_remove("DIGITLAB_WEIGHTS")
        .env("HF_HUB_OFFLINE", "1");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run digitlab")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn quickstart() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../configs/quickstart.toml")
        .display()
        .to_string()
}

/// A scratch folder with an `out` path inside it.
struct Scene {
    dir: tempfile::TempDir,
}

impl Scene {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        // Something of the user's next to the run, which must survive everything.
        std::fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
        Scene { dir }
    }
    fn root(&self) -> &Path {
        self.dir.path()
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn s(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
    fn run(&self, args: &[&str]) -> Output {
        digitlab_in(self.root(), args, &[])
    }
    /// Runs a command that must fail before any work: non-zero exit, a message
    /// containing every one of `needles`, and nothing changed under the root.
    fn refused(&self, args: &[&str], needles: &[&str]) -> String {
        self.refused_env(args, &[], needles)
    }
    fn refused_env(&self, args: &[&str], env: &[(&str, &Path)], needles: &[&str]) -> String {
        let before = Snapshot::take(self.root());
        let o = digitlab_in(self.root(), args, env);
        let after = Snapshot::take(self.root());
        let t = text(&o);
        assert!(!o.status.success(), "expected a refusal: {t}");
        for n in needles {
            assert!(t.contains(n), "message lacks `{n}`: {t}");
        }
        assert!(!t.contains("panicked"), "{t}");
        before.assert_unchanged(&after);
        t
    }
}

fn train_args<'a>(out: &'a str, sets: &[&'a str]) -> Vec<String> {
    let mut a: Vec<String> = ["train", "--config", &quickstart(), "--out", out, "--quiet"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for s in sets {
        a.push("--set".into());
        a.push(s.to_string());
    }
    a
}

fn refuse_train(scene: &Scene, sets: &[&str], needles: &[&str]) -> String {
    let out = scene.s("out");
    let args = train_args(&out, sets);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    scene.refused(&args, needles)
}

// ---- case 7: oversized configs name the field and the estimate ----

#[test]
fn oversized_models_and_inputs_are_refused_naming_the_field() {
    let scene = Scene::new();
    for (sets, field) in [
        (vec!["model.hidden=[1000000000]"], "model.hidden"),
        (vec!["model.hidden=[100000, 100000]"], "model.hidden"),
        (vec!["data.resize=[100000, 100000]"], "data.resize"),
    ] {
        let t = refuse_train(&scene, &sets, &[field, "estimated", "available"]);
        assert!(!t.contains("memory allocation"), "{t}");
    }
}

const HUGE_SEARCH: &str = r#"
name = "huge"
[data]
dataset = "digits"
[model]
kind = "softmax"
[optim]
kind = "sgd"
lr = 0.1
[train]
epochs = 1
batch_size = 64
loss = "cross_entropy"
[search]
strategy = "STRATEGY"
trials = 1
retrain_on_train_val = false
[search.space]
"optim.lr" = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1, 0.11, 0.12, 0.13, 0.14, 0.15, 0.16, 0.17, 0.18, 0.19, 0.2]
"train.l2" = [0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1, 0.11, 0.12, 0.13, 0.14, 0.15, 0.16, 0.17, 0.18, 0.19]
"train.batch_size" = [16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35]
"train.eval_batch_size" = [100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111, 112, 113, 114, 115, 116, 117, 118, 119]
"train.grad_clip" = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0, 16.0, 17.0, 18.0, 19.0, 20.0]
"data.val_fraction" = [0.1, 0.11, 0.12, 0.13, 0.14, 0.15, 0.16, 0.17, 0.18, 0.19, 0.2, 0.21, 0.22, 0.23, 0.24, 0.25, 0.26, 0.27, 0.28, 0.29]
"data.subset" = [0.81, 0.82, 0.83, 0.84, 0.85, 0.86, 0.87, 0.88, 0.89, 0.9, 0.91, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 1.0]
"seed" = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]
"#;

#[test]
fn a_random_search_over_a_huge_grid_runs_one_trial_without_building_it() {
    let scene = Scene::new();
    let cfg = scene.path("huge.toml");
    std::fs::write(&cfg, HUGE_SEARCH.replace("STRATEGY", "random")).unwrap();
    let before = Snapshot::take(scene.root());
    let out = scene.s("out");
    let t0 = std::time::Instant::now();
    let o = scene.run(&["sweep", "--config", cfg.to_str().unwrap(), "--out", &out, "--quiet"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(t0.elapsed().as_secs() < 120, "took {:?}", t0.elapsed());
    let csv = std::fs::read_to_string(scene.path("out/trials.csv")).unwrap();
    assert_eq!(csv.lines().count(), 2, "one trial: {csv}");
    Snapshot::take(scene.root()).assert_only_changed_within(&before, &[Path::new("out")]);
    // The same space as a grid is refused with its size.
    std::fs::write(&cfg, HUGE_SEARCH.replace("STRATEGY", "grid")).unwrap();
    let out2 = scene.s("out2");
    scene.refused(
        &["sweep", "--config", cfg.to_str().unwrap(), "--out", &out2],
        &["search.space", "25600000000", "random"],
    );
}

// ---- case 8: late or misleading errors ----

const TWO_TRIALS: &str = r#"
name = "late"
[data]
dataset = "digits"
[model]
kind = "softmax"
[optim]
kind = "sgd"
lr = 0.1
[train]
epochs = 1
batch_size = 64
loss = "cross_entropy"
[search]
[search.space]
"optim.lr" = [0.1, -1]
"#;

#[test]
fn a_bad_value_in_a_later_trial_is_refused_before_any_training() {
    let scene = Scene::new();
    let cfg = scene.path("late.toml");
    std::fs::write(&cfg, TWO_TRIALS).unwrap();
    let out = scene.s("out");
    let t = scene.refused(
        &["sweep", "--config", cfg.to_str().unwrap(), "--out", &out],
        &["search trial `optim.lr=-1`", "optim.lr must be a positive number"],
    );
    assert!(!t.contains("trial 1/2"), "a trial trained first: {t}");
}

#[test]
fn an_out_or_cache_dir_that_is_a_file_is_refused_up_front() {
    let scene = Scene::new();
    std::fs::write(scene.path("taken"), b"a file").unwrap();
    let taken = scene.s("taken");
    let args = train_args(&taken, &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    scene.refused(&args, &["--out", "taken", "is a file, expected a folder"]);
    let sub = scene.s("taken/run");
    let args = train_args(&sub, &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    scene.refused(&args, &["--out", "is a file, expected a folder"]);

    let cfg = scene.path("t.toml");
    std::fs::write(&cfg, TRANSFER).unwrap();
    let out = scene.s("out");
    scene.refused(
        &[
            "transfer",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            &out,
            "--cache-dir",
            &taken,
        ],
        &["--cache-dir", "taken", "is a file, expected a folder"],
    );
    let search = scene.path("late.toml");
    std::fs::write(&search, TWO_TRIALS.replace("-1", "0.2")).unwrap();
    scene.refused(
        &["sweep", "--config", search.to_str().unwrap(), "--out", &taken],
        &["--out", "taken", "is a file, expected a folder"],
    );
}

#[test]
fn test_limit_zero_is_refused_naming_the_key() {
    let scene = Scene::new();
    refuse_train(&scene, &["data.test_limit=0"], &["data.test_limit"]);
}

/// An MNIST folder of synthetic IDX files: `train` images of `train_side` pixels,
/// `test` images of `test_side`.
fn synthetic_mnist(root: &Path, train_side: usize, test_side: usize) -> PathBuf {
    let data = root.join("data");
    let dir = data.join("mnist");
    std::fs::create_dir_all(&dir).unwrap();
    let idx = |dims: &[usize], fill: &dyn Fn(usize) -> u8| {
        let mut b = vec![0u8, 0, 8, dims.len() as u8];
        for d in dims {
            b.extend((*d as u32).to_be_bytes());
        }
        let n: usize = dims.iter().product();
        b.extend((0..n).map(fill));
        b
    };
    for (prefix, n, side) in [("train", 60, train_side), ("t10k", 20, test_side)] {
        let images = idx(&[n, side, side], &|i| ((i * 37) % 256) as u8);
        let labels = idx(&[n], &|i| (i % 10) as u8);
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), labels).unwrap();
    }
    data
}

#[test]
fn test_images_of_another_size_are_refused_before_training() {
    let scene = Scene::new();
    let data = synthetic_mnist(scene.root(), 10, 8);
    let out = scene.s("out");
    let mut args = train_args(&out, &["data.dataset=\"mnist\""]);
    args.extend(["--data-dir".to_string(), data.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let t = scene.refused(&args, &["test images", "1x8x8", "1x10x10"]);
    assert!(!t.contains("epoch"), "trained first: {t}");
}

#[test]
fn a_gz_idx_with_a_wrong_magic_is_reported_as_such() {
    use std::io::Write;
    let scene = Scene::new();
    let data = synthetic_mnist(scene.root(), 8, 8);
    let dir = data.join("mnist");
    let raw = dir.join("train-images-idx3-ubyte");
    let mut bytes = std::fs::read(&raw).unwrap();
    bytes[3] = 1; // the magic now says 1 dimension
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&bytes).unwrap();
    std::fs::write(dir.join("train-images-idx3-ubyte.gz"), gz.finish().unwrap()).unwrap();
    std::fs::remove_file(&raw).unwrap();
    let out = scene.s("out");
    let mut args = train_args(&out, &["data.dataset=\"mnist\""]);
    args.extend(["--data-dir".to_string(), data.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let t = scene.refused(
        &args,
        &[
            "train-images-idx3-ubyte.gz",
            "wrong IDX magic number",
            "found 0x00000801",
        ],
    );
    assert!(!t.contains("trailing"), "{t}");
}

#[test]
fn an_overflowing_epoch_count_says_number_too_large() {
    let scene = Scene::new();
    let t = refuse_train(
        &scene,
        &["train.epochs=99999999999999999999"],
        &["train.epochs: number too large (max"],
    );
    assert!(!t.contains("invalid type"), "{t}");
}

#[test]
fn a_data_dir_that_is_a_file_is_named() {
    let scene = Scene::new();
    std::fs::write(scene.path("datafile"), b"not a folder").unwrap();
    let f = scene.s("datafile");
    let out = scene.s("out");
    let mut args = train_args(&out, &["data.dataset=\"mnist\""]);
    args.extend(["--data-dir".to_string(), f.clone()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    scene.refused(&args, &["datafile", "is a file, expected a folder"]);
    let t = scene.refused(
        &["datasets", "--data-dir", &f],
        &["datafile", "is a file, expected a folder"],
    );
    assert!(!t.contains("absent"), "{t}");
}

#[test]
fn l2_divergence_is_blamed_on_the_l2_term() {
    let scene = Scene::new();
    let before = Snapshot::take(scene.root());
    let out = scene.s("out");
    let args = train_args(&out, &["train.l2=1e308"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = scene.run(&args);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("L2 penalty is not finite") && t.contains("train.l2"), "{t}");
    assert!(!t.contains("lower learning rate"), "{t}");
    Snapshot::take(scene.root()).assert_only_changed_within(&before, &[Path::new("out")]);
}

#[test]
fn the_offline_hub_error_suggests_what_really_works() {
    let scene = Scene::new();
    let hub = scene.path("hf-cache");
    std::fs::create_dir(&hub).unwrap();
    let cfg = scene.path("t.toml");
    std::fs::write(
        &cfg,
        TRANSFER.replace(
            "model = \"small_cnn\"",
            "model = \"resnet18\"\npretrained = \"hf:timm/resnet18.a1_in1k\"",
        ),
    )
    .unwrap();
    let (out, cache) = (scene.s("out"), scene.s("cache"));
    // The backbone that cannot load is a failed row of the comparison (issue 14,
    // continue on failure): the run exits non-zero and writes only inside `out`.
    let before = Snapshot::take(scene.root());
    let o = digitlab_in(
        scene.root(),
        &[
            "transfer",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            &out,
            "--cache-dir",
            &cache,
        ],
        &[("HF_HUB_CACHE", hub.as_path()), ("HF_HOME", hub.as_path())],
    );
    let after = Snapshot::take(scene.root());
    let t = text(&o);
    assert!(!o.status.success(), "expected a failure: {t}");
    for n in ["timm/resnet18.a1_in1k", "pretrained = \"path/to/model.safetensors\""] {
        assert!(t.contains(n), "message lacks `{n}`: {t}");
    }
    assert!(!t.contains("--weights"), "{t}");
    before.assert_only_changed_within(&after, &[Path::new("out")]);
    let table = std::fs::read_to_string(scene.path("out").join("compare.md")).unwrap();
    assert!(table.contains("FAILED"), "{table}");
}

// ---- case 9: degenerate inputs ----

#[test]
fn fewer_than_two_classes_are_refused_naming_the_key() {
    let scene = Scene::new();
    refuse_train(&scene, &["data.classes=[3]"], &["data.classes", "at least 2"]);
}

#[test]
fn an_absurd_crop_padding_is_refused_with_the_limit() {
    let scene = Scene::new();
    refuse_train(
        &scene,
        &["data.augment={crop_padding = 1000000000}"],
        &["augment.crop_padding", "at most 4"],
    );
}

// ---- case 4: the feature cache verifies its files ----

const TRANSFER: &str = r#"
name = "cache_check"
[data]
dataset = "digits"
val_fraction = 0.25
[transfer]
epochs = 3
[[backbones]]
model = "small_cnn"
"#;

/// The cache file of `split` (`train`, `val`, `test`).
fn cache_file(cache: &Path, split: &str) -> PathBuf {
    std::fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let n = p.file_name().unwrap().to_string_lossy().to_string();
            n.starts_with(&format!("small_cnn-{split}-")) && n.ends_with(".safetensors")
        })
        .unwrap_or_else(|| panic!("no {split} cache file in {}", cache.display()))
}

/// A safetensors file's header and where the `features` bytes are: (header JSON,
/// data start, features begin, features end, feature width).
fn layout(bytes: &[u8]) -> (serde_json::Value, usize, usize, usize, usize) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let f = &header["features"];
    let (b, e) = (
        f["data_offsets"][0].as_u64().unwrap() as usize,
        f["data_offsets"][1].as_u64().unwrap() as usize,
    );
    let d = f["shape"][1].as_u64().unwrap() as usize;
    (header, 8 + n, b, e, d)
}

#[test]
fn corrupt_reordered_or_non_finite_cache_files_are_recomputed_with_a_warning() {
    let scene = Scene::new();
    let cfg = scene.path("t.toml");
    std::fs::write(&cfg, TRANSFER).unwrap();
    let (out, cache) = (scene.s("out"), scene.s("cache"));
    let args = [
        "transfer",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        &out,
        "--cache-dir",
        &cache,
        "--quiet",
    ];
    let o = scene.run(&args);
    assert!(o.status.success(), "{}", text(&o));
    let summary = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(scene.path("out/small_cnn-random/summary.json")).unwrap()).unwrap()
    };
    let first = summary()["test_accuracy"].as_f64().unwrap();
    let cache = scene.path("cache");

    type Corrupt = fn(&mut [u8]);
    let zero: Corrupt = |b| {
        // Zero 128 KiB (or all) of the features.
        let (_, start, fb, fe, _) = layout(b);
        let end = (start + fe).min(start + fb + (128 << 10));
        b[start + fb..end].iter_mut().for_each(|v| *v = 0);
    };
    let reverse: Corrupt = |b| {
        let (_, start, fb, fe, d) = layout(b);
        let rows: Vec<Vec<u8>> = b[start + fb..start + fe]
            .chunks(4 * d)
            .rev()
            .map(|r| r.to_vec())
            .collect();
        b[start + fb..start + fe].copy_from_slice(&rows.concat());
    };
    for (split, corrupt, reason) in [
        ("test", zero, "SHA-256"),
        ("train", reverse, "SHA-256"),
        ("val", nan_with_a_valid_digest as Corrupt, "non-finite"),
    ] {
        let file = cache_file(&cache, split);
        let mut bytes = std::fs::read(&file).unwrap();
        corrupt(&mut bytes);
        std::fs::write(&file, &bytes).unwrap();
        let before = Snapshot::take(scene.root());
        let o = scene.run(&args);
        let t = text(&o);
        assert!(o.status.success(), "{t}");
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            t.contains("warning") && t.contains(&name) && t.contains(reason),
            "{split}: no warning naming {name} ({reason}): {t}"
        );
        assert_eq!(summary()["test_accuracy"].as_f64().unwrap(), first, "{split}: {t}");
        assert_eq!(summary()["cache_misses"].as_u64(), Some(1), "{split}");
        Snapshot::take(scene.root()).assert_only_changed_within(&before, &[Path::new("out"), Path::new("cache")]);
        // Rewritten: the next run trusts it again.
        let o = scene.run(&args);
        assert!(!text(&o).contains("warning"), "{}", text(&o));
    }
}

/// Puts a NaN into the first feature and updates the stored digest, so only the
/// finiteness check can catch it.
fn nan_with_a_valid_digest(b: &mut [u8]) {
    use sha2::Digest;
    let (header, start, fb, fe, _) = layout(b);
    b[start + fb..start + fb + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    let l = &header["labels"]["data_offsets"];
    let (lb, le) = (l[0].as_u64().unwrap() as usize, l[1].as_u64().unwrap() as usize);
    let mut h = sha2::Sha256::new();
    h.update(&b[start + fb..start + fe]);
    h.update(&b[start + lb..start + le]);
    let new = hex::encode(h.finalize());
    let old = header["__metadata__"]["digitlab.sha256"].as_str().unwrap().to_string();
    let head = String::from_utf8(b[8..start].to_vec()).unwrap().replace(&old, &new);
    b[8..start].copy_from_slice(head.as_bytes());
}

// ---- predict: images as a person sees them ----

#[test]
fn predict_reads_every_colour_type_and_refuses_far_off_sizes() {
    let scene = Scene::new();
    let out = scene.s("run");
    let args = train_args(&out, &["train.epochs=3"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = scene.run(&args);
    assert!(o.status.success(), "{}", text(&o));

    use image::{ImageBuffer, LumaA, Rgba};
    // A black "1" on a transparent canvas, 8-bit gray+alpha and 16-bit RGBA: both
    // are black on white as seen, inverted by --invert auto.
    ImageBuffer::from_fn(8, 8, |x, _| LumaA(if x == 4 { [0u8, 255] } else { [0, 0] }))
        .save(scene.path("la.png"))
        .unwrap();
    ImageBuffer::from_fn(16, 16, |x, _| {
        Rgba(if x / 2 == 4 { [0u16, 0, 0, 65535] } else { [0, 0, 0, 0] })
    })
    .save(scene.path("rgba16.png"))
    .unwrap();
    image::RgbImage::from_fn(8, 8, |x, _| image::Rgb(if x == 4 { [0; 3] } else { [255; 3] }))
        .save(scene.path("rgb.jpg"))
        .unwrap();
    ImageBuffer::from_fn(100, 8, |_, _| LumaA([0u8, 255]))
        .save(scene.path("wide.png"))
        .unwrap();
    let before = Snapshot::take(scene.root());
    for name in ["la.png", "rgba16.png", "rgb.jpg"] {
        let o = scene.run(&["predict", "--checkpoint", &out, &scene.s(name)]);
        let t = text(&o);
        assert!(o.status.success(), "{name}: {t}");
        assert!(
            t.contains(&format!("{name}:")) && t.contains("(inverted)"),
            "{name}: {t}"
        );
    }
    // The two transparent images look alike: the same top class.
    let top = |name: &str| {
        let o = scene.run(&["predict", "--checkpoint", &out, &scene.s(name)]);
        let t = String::from_utf8_lossy(&o.stdout).to_string();
        t.split(": ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(top("la.png"), top("rgba16.png"));
    before.assert_unchanged(&Snapshot::take(scene.root()));
    scene.refused(
        &["predict", "--checkpoint", &out, &scene.s("wide.png")],
        &["wide.png", "100x8", "8x8"],
    );
}
