//! SVHN `.mat` loading against fixtures written by `scipy.io.savemat`
//! (see `tests/fixtures/make_svhn_fixtures.py`).
use digitlab_data::dataset::ImageShape;
use digitlab_data::mat::{list_mat_variables, read_mat_variables, MatClass, MatData};
use digitlab_data::svhn::load_svhn_mat;
use std::path::PathBuf;

/// Images in the valid fixtures.
const N: usize = 33;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// (NCHW pixels, labels 0..9) as computed by numpy.
fn expected() -> (Vec<u8>, Vec<u8>) {
    let raw = std::fs::read(fixture("svhn_small_expected.bin")).unwrap();
    assert_eq!(raw.len(), N * 3 * 32 * 32 + N, "expected file has an unexpected size");
    let (pixels, labels) = raw.split_at(N * 3 * 32 * 32);
    (pixels.to_vec(), labels.to_vec())
}

#[test]
fn compressed_and_uncompressed_fixtures_load_pixel_exactly() {
    let (pixels, labels) = expected();
    assert!(labels.contains(&0), "the fixture must exercise the 10 -> 0 mapping");
    for (file, stem) in [
        ("svhn_small_uncompressed.mat", "svhn_small_uncompressed"),
        ("svhn_small_compressed.mat", "svhn_small_compressed"),
    ] {
        let d = load_svhn_mat(&fixture(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(d.name(), format!("svhn/{stem}"));
        assert_eq!(d.shape(), ImageShape::new(3, 32, 32));
        assert_eq!(d.len(), N);
        assert_eq!(d.class_names(), (0..10).map(|i| i.to_string()).collect::<Vec<_>>());
        assert_eq!(d.labels(), &labels[..], "{file}: labels");
        if d.images() != &pixels[..] {
            let i = d.images().iter().zip(&pixels).position(|(a, b)| a != b).unwrap();
            panic!("{file}: first differing pixel at flat NCHW index {i}");
        }
    }
}

#[test]
fn mat_reader_reports_classes_and_skips_other_variables() {
    let path = fixture("svhn_small_compressed.mat");
    let infos = list_mat_variables(&path).unwrap();
    let summary: Vec<String> = infos.iter().map(|i| i.to_string()).collect();
    assert_eq!(
        summary,
        ["comment (char 1x29)", "X (uint8 32x32x3x33)", "y (double 33x1)"]
    );
    let vars = read_mat_variables(&path, &["y"]).unwrap();
    assert_eq!(vars[0].class, MatClass::Double);
    assert_eq!(vars[0].dims, vec![N, 1]);
    let MatData::F64(y) = &vars[0].data else {
        panic!("y is not double")
    };
    let (_, labels) = expected();
    for (v, l) in y.iter().zip(&labels) {
        assert_eq!((*v as u8) % 10, *l);
    }
    let err = read_mat_variables(&path, &["comment"]).unwrap_err().to_string();
    assert!(
        err.contains("variable `comment`: expected a numeric array, found class char"),
        "{err}"
    );
}

/// Loads `file`, expecting an error whose message names the file and contains `phrase`.
fn assert_load_error(file: &str, phrase: &str) {
    let err = load_svhn_mat(&fixture(file)).expect_err(file).to_string();
    assert!(err.contains(file), "error for {file} does not name the file: {err}");
    assert!(err.contains(phrase), "error for {file} lacks `{phrase}`: {err}");
}

#[test]
fn wrong_dtype_is_rejected() {
    assert_load_error("svhn_bad_dtype.mat", "variable `X`: expected class uint8, found double");
}

#[test]
fn wrong_shape_is_rejected() {
    assert_load_error(
        "svhn_bad_shape.mat",
        "variable `X`: expected dims 32x32x3xN, found 28x28x3x4",
    );
}

#[test]
fn count_mismatch_is_rejected() {
    assert_load_error(
        "svhn_bad_count.mat",
        "variable `X` holds 4 images but variable `y` holds 3 labels",
    );
}

#[test]
fn out_of_range_label_is_rejected() {
    assert_load_error(
        "svhn_bad_label.mat",
        "variable `y`: expected labels 1..=10, found 11 at row 3",
    );
}

#[test]
fn truncated_file_is_rejected() {
    assert_load_error("svhn_truncated.mat", "file is truncated");
}

#[test]
fn missing_file_is_an_io_error() {
    let err = load_svhn_mat(&fixture("no_such_file.mat")).unwrap_err();
    assert!(matches!(err, digitlab_data::error::DataError::Io { .. }), "{err}");
    assert!(err.to_string().contains("no_such_file.mat"), "{err}");
}

/// Loads a real SVHN file named by `DIGITLAB_SVHN_MAT` and prints the time and
/// the peak resident memory (Linux `VmHWM`). Run with
/// `DIGITLAB_SVHN_MAT=data/svhn/train_32x32.mat cargo test --release -p digitlab-data --test svhn -- --ignored --nocapture`.
#[test]
#[ignore = "needs a real SVHN .mat file in DIGITLAB_SVHN_MAT"]
fn real_file_from_env() {
    let Some(path) = std::env::var_os("DIGITLAB_SVHN_MAT") else {
        eprintln!("DIGITLAB_SVHN_MAT is not set; nothing to do");
        return;
    };
    let start = std::time::Instant::now();
    let d = load_svhn_mat(std::path::Path::new(&path)).unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(d.shape(), ImageShape::new(3, 32, 32));
    assert!(!d.is_empty());
    let hwm = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM")).map(|l| l.to_string()))
        .unwrap_or_else(|| "VmHWM unavailable".into());
    eprintln!(
        "{}: {} images ({} MB of pixels) in {secs:.2}s; class counts {:?}; peak memory {hwm}",
        d.name(),
        d.len(),
        d.images().len() / 1_000_000,
        d.class_counts()
    );
}
