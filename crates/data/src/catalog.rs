//! The datasets digitlab knows: where their files come from, how to verify them,
//! and how to load a split from a data directory (`<data-dir>/<dataset>/<file>`).
use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::idx::{load_idx_pair, read_maybe_gz};
use sha2::Digest;
use std::io::Read;
use std::path::{Path, PathBuf};

/// A dataset digitlab can load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    /// The embedded UCI 8x8 digits (no download).
    Digits,
    Mnist,
    FashionMnist,
    /// SVHN cropped digits, 32x32 RGB.
    Svhn,
}

/// Which part of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Split {
    Train,
    Test,
    /// SVHN's 531,131 extra training images.
    Extra,
}

/// How a downloaded file is verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checksum {
    /// SHA-256 of the decompressed payload (mirrors re-gzip, so wrapper digests differ).
    PayloadSha256(&'static str),
    /// MD5 of the file as published (SVHN publishes only MD5).
    FileMd5(&'static str),
}

/// One file of a dataset as published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteFile {
    /// File name on the hosts and on disk (gzipped files may also be stored unzipped,
    /// without the `.gz`).
    pub name: &'static str,
    pub split: Split,
    /// Base URLs tried in order; the file URL is base + name.
    pub mirrors: &'static [&'static str],
    pub checksum: Checksum,
    /// Published size in bytes, when known (used for progress bars and size limits).
    pub size: Option<u64>,
}

const MNIST_MIRRORS: &[&str] = &[
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
];
const FASHION_MIRRORS: &[&str] = &["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"];
const SVHN_MIRRORS: &[&str] = &["http://ufldl.stanford.edu/housenumbers/"];

const MNIST_FILES: &[RemoteFile] = &[
    RemoteFile {
        name: "train-images-idx3-ubyte.gz",
        split: Split::Train,
        mirrors: MNIST_MIRRORS,
        checksum: Checksum::PayloadSha256("ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
        size: Some(9_912_422),
    },
    RemoteFile {
        name: "train-labels-idx1-ubyte.gz",
        split: Split::Train,
        mirrors: MNIST_MIRRORS,
        checksum: Checksum::PayloadSha256("65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
        size: Some(28_881),
    },
    RemoteFile {
        name: "t10k-images-idx3-ubyte.gz",
        split: Split::Test,
        mirrors: MNIST_MIRRORS,
        checksum: Checksum::PayloadSha256("0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
        size: Some(1_648_877),
    },
    RemoteFile {
        name: "t10k-labels-idx1-ubyte.gz",
        split: Split::Test,
        mirrors: MNIST_MIRRORS,
        checksum: Checksum::PayloadSha256("ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
        size: Some(4_542),
    },
];
const FASHION_FILES: &[RemoteFile] = &[
    RemoteFile {
        name: "train-images-idx3-ubyte.gz",
        split: Split::Train,
        mirrors: FASHION_MIRRORS,
        checksum: Checksum::PayloadSha256("c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
        size: Some(26_421_880),
    },
    RemoteFile {
        name: "train-labels-idx1-ubyte.gz",
        split: Split::Train,
        mirrors: FASHION_MIRRORS,
        checksum: Checksum::PayloadSha256("bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
        size: Some(29_515),
    },
    RemoteFile {
        name: "t10k-images-idx3-ubyte.gz",
        split: Split::Test,
        mirrors: FASHION_MIRRORS,
        checksum: Checksum::PayloadSha256("5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
        size: Some(4_422_102),
    },
    RemoteFile {
        name: "t10k-labels-idx1-ubyte.gz",
        split: Split::Test,
        mirrors: FASHION_MIRRORS,
        checksum: Checksum::PayloadSha256("0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
        size: Some(5_148),
    },
];
const SVHN_FILES: &[RemoteFile] = &[
    RemoteFile {
        name: "train_32x32.mat",
        split: Split::Train,
        mirrors: SVHN_MIRRORS,
        checksum: Checksum::FileMd5("e26dedcc434d2e4c54c9b2d4a06d8373"),
        size: Some(182_040_794),
    },
    RemoteFile {
        name: "test_32x32.mat",
        split: Split::Test,
        mirrors: SVHN_MIRRORS,
        checksum: Checksum::FileMd5("eb5a983be6a315427106f1b164d9cef3"),
        size: Some(64_275_384),
    },
    RemoteFile {
        name: "extra_32x32.mat",
        split: Split::Extra,
        mirrors: SVHN_MIRRORS,
        checksum: Checksum::FileMd5("a93ce644f1a588dc4d68dda5feec44a7"),
        size: Some(1_329_278_602),
    },
];

const FASHION_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

impl DatasetKind {
    /// Every known dataset.
    pub const ALL: [DatasetKind; 4] = [
        DatasetKind::Digits,
        DatasetKind::Mnist,
        DatasetKind::FashionMnist,
        DatasetKind::Svhn,
    ];

    /// The name used in configs, on the command line and as the sub-folder of the data dir.
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Digits => "digits",
            DatasetKind::Mnist => "mnist",
            DatasetKind::FashionMnist => "fashion-mnist",
            DatasetKind::Svhn => "svhn",
        }
    }

    /// Parses a dataset name; the error lists the valid names.
    pub fn from_name(name: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name).ok_or_else(|| {
            let valid: Vec<&str> = Self::ALL.iter().map(|k| k.name()).collect();
            DataError::Invalid(format!(
                "unknown dataset `{name}`; valid datasets: {}",
                valid.join(", ")
            ))
        })
    }

    /// The published files (empty for the embedded digits).
    pub fn files(self) -> &'static [RemoteFile] {
        match self {
            DatasetKind::Digits => &[],
            DatasetKind::Mnist => MNIST_FILES,
            DatasetKind::FashionMnist => FASHION_FILES,
            DatasetKind::Svhn => SVHN_FILES,
        }
    }

    /// The shape of every image of the dataset, as loaded (before any pipeline).
    pub fn image_shape(self) -> crate::dataset::ImageShape {
        match self {
            DatasetKind::Digits => crate::dataset::ImageShape::new(1, 8, 8),
            DatasetKind::Mnist | DatasetKind::FashionMnist => crate::dataset::ImageShape::new(1, 28, 28),
            DatasetKind::Svhn => crate::dataset::ImageShape::new(3, 32, 32),
        }
    }

    /// Human-readable class names, index = label.
    pub fn class_names(self) -> Vec<String> {
        match self {
            DatasetKind::FashionMnist => FASHION_CLASSES.iter().map(|s| s.to_string()).collect(),
            _ => (0..10).map(|d| d.to_string()).collect(),
        }
    }

    /// Folder of this dataset under `data_dir`.
    pub fn dir(self, data_dir: &Path) -> PathBuf {
        data_dir.join(self.name())
    }
}

impl std::fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Test => "test",
            Split::Extra => "extra",
        })
    }
}

/// Where `file` is on disk under `dir`: the published name, or for a `.gz` file
/// also its decompressed name. `None` if neither exists.
pub fn locate(dir: &Path, file: &RemoteFile) -> Option<PathBuf> {
    let published = dir.join(file.name);
    if published.is_file() {
        return Some(published);
    }
    let raw = dir.join(file.name.strip_suffix(".gz")?);
    raw.is_file().then_some(raw)
}

/// Checks `path` against the published checksum of `file`.
pub fn verify_file(path: &Path, file: &RemoteFile) -> Result<()> {
    let (algorithm, expected, actual) = match file.checksum {
        Checksum::PayloadSha256(expected) => {
            let payload = read_maybe_gz(path)?;
            (
                "sha256 (decompressed payload)",
                expected,
                hex::encode(sha2::Sha256::digest(&payload)),
            )
        }
        Checksum::FileMd5(expected) => {
            let mut f = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
            let mut hasher = md5::Md5::new();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f.read(&mut buf).map_err(|e| DataError::io(path, e))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            ("md5", expected, hex::encode(hasher.finalize()))
        }
    };
    if actual == expected {
        Ok(())
    } else {
        Err(DataError::Checksum {
            path: path.to_path_buf(),
            algorithm,
            expected: expected.to_string(),
            actual,
        })
    }
}

/// The state of one file of a dataset in a data dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileState {
    Missing,
    /// Present; checksum verified only when asked for.
    Present(PathBuf),
    Valid(PathBuf),
    Invalid(PathBuf, String),
}

/// The state of every file of `kind` under `data_dir`; with `verify`, checksums too.
pub fn file_states(kind: DatasetKind, data_dir: &Path, verify: bool) -> Vec<(RemoteFile, FileState)> {
    let dir = kind.dir(data_dir);
    kind.files()
        .iter()
        .map(|f| {
            let state = match locate(&dir, f) {
                None => FileState::Missing,
                Some(p) if !verify => FileState::Present(p),
                Some(p) => match verify_file(&p, f) {
                    Ok(()) => FileState::Valid(p),
                    Err(e) => FileState::Invalid(p, e.to_string()),
                },
            };
            (*f, state)
        })
        .collect()
}

/// True when every file of `kind` needed for `split` is present (not verified).
pub fn is_available(kind: DatasetKind, split: Split, data_dir: &Path) -> bool {
    kind == DatasetKind::Digits
        || kind
            .files()
            .iter()
            .filter(|f| f.split == split)
            .all(|f| locate(&kind.dir(data_dir), f).is_some())
            && kind.files().iter().any(|f| f.split == split)
}

/// Loads one split of a dataset from `data_dir` (the embedded digits need none).
pub fn load(kind: DatasetKind, split: Split, data_dir: &Path) -> Result<Dataset> {
    let name = format!("{kind}/{split}");
    let missing = |what: &str| {
        DataError::NotFound {
        dataset: kind.name().to_string(),
        message: format!(
            "{what} is not in {}; run `cargo xtask download {kind} --data-dir {}` (or `--from DIR` to import local copies)",
            kind.dir(data_dir).display(),
            data_dir.display()
        ),
    }
    };
    if kind != DatasetKind::Digits {
        crate::location::check_data_dir(data_dir, Some(&kind.dir(data_dir)))?;
    }
    match kind {
        DatasetKind::Digits => {
            let (train, test) = crate::digits::load_digits_split()?;
            match split {
                Split::Train => Ok(train),
                Split::Test => Ok(test),
                Split::Extra => Err(DataError::Invalid("the embedded digits have no `extra` split".into())),
            }
        }
        DatasetKind::Mnist | DatasetKind::FashionMnist => {
            let files: Vec<&RemoteFile> = kind.files().iter().filter(|f| f.split == split).collect();
            if files.len() != 2 {
                return Err(DataError::Invalid(format!(
                    "{kind} has no `{split}` split (use train or test)"
                )));
            }
            let dir = kind.dir(data_dir);
            let images = locate(&dir, files[0]).ok_or_else(|| missing(files[0].name))?;
            let labels = locate(&dir, files[1]).ok_or_else(|| missing(files[1].name))?;
            load_idx_pair(&images, &labels, &name, kind.class_names())
        }
        DatasetKind::Svhn => {
            let file = kind
                .files()
                .iter()
                .find(|f| f.split == split)
                .expect("every SVHN split has a file");
            let path = locate(&kind.dir(data_dir), file).ok_or_else(|| missing(file.name))?;
            Ok(crate::svhn::load_svhn_mat(&path)?.with_name(name))
        }
    }
}

impl RemoteFile {
    /// The expected digest as hex.
    pub fn checksum_hex(&self) -> &'static str {
        match self.checksum {
            Checksum::PayloadSha256(h) | Checksum::FileMd5(h) => h,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_digits_have_the_stated_shape() {
        let d = load(DatasetKind::Digits, Split::Train, Path::new("no-data")).unwrap();
        assert_eq!(d.shape(), DatasetKind::Digits.image_shape());
    }

    #[test]
    fn names_round_trip_and_unknown_lists_valid() {
        for k in DatasetKind::ALL {
            assert_eq!(DatasetKind::from_name(k.name()).unwrap(), k);
        }
        let e = DatasetKind::from_name("cifar").unwrap_err().to_string();
        assert!(e.contains("digits, mnist, fashion-mnist, svhn"), "{e}");
    }

    #[test]
    fn missing_files_tell_how_to_download() {
        let dir = tempfile::tempdir().unwrap();
        let e = load(DatasetKind::Mnist, Split::Train, dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("train-images-idx3-ubyte.gz") && e.contains("cargo xtask download mnist"),
            "{e}"
        );
        assert!(!is_available(DatasetKind::Mnist, Split::Train, dir.path()));
        assert!(is_available(DatasetKind::Digits, Split::Train, dir.path()));
        assert!(load(DatasetKind::Digits, Split::Test, dir.path()).is_ok());
    }

    #[test]
    fn checksum_mismatch_shows_both_digests() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t10k-labels-idx1-ubyte");
        std::fs::write(&p, b"not mnist").unwrap();
        let e = verify_file(&p, &MNIST_FILES[3]).unwrap_err().to_string();
        assert!(
            e.contains("expected sha256") && e.contains(MNIST_FILES[3].checksum_hex()) && e.contains("found"),
            "{e}"
        );
    }
}
