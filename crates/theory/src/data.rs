//! The data the checks run on: MNIST "3 vs 6" when its files are present, the
//! embedded UCI 8x8 digits otherwise, plus small hand-made toy problems.
//!
//! Pixels are scaled to `[0, 1]` (`u8 / 255`, the trainer's default `Unit`
//! normalisation); the label of "6" is 1 and of "3" is 0 (the order of
//! `filter_classes(&[3, 6])`).
use crate::error::{Result, TheoryError};
use digitlab_data::{catalog, resolve_data_dir, Dataset, DatasetKind, Split};
use std::path::PathBuf;

/// Where the real-data checks get their images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataChoice {
    /// MNIST from `--data-dir`, else `$DIGITLAB_DATA`, else `./data`
    /// ([`resolve_data_dir`]) when its training files are there; the embedded digits
    /// otherwise.
    Auto(Option<PathBuf>),
    /// Always the embedded 8x8 digits (fast, no files; what the tests use).
    Embedded,
}

/// Settings shared by every topic.
#[derive(Debug, Clone)]
pub struct TheoryConfig {
    pub data: DataChoice,
    /// Seed of every random direction, point, split and initialisation.
    pub seed: u64,
    /// MNIST 3-vs-6 has 12,049 training images; the checks use a stratified random
    /// subsample of this many (the embedded digits, 290 images, are used whole).
    pub mnist_samples: usize,
}

impl Default for TheoryConfig {
    fn default() -> Self {
        Self {
            data: DataChoice::Auto(None),
            seed: 7,
            mnist_samples: 1000,
        }
    }
}

impl TheoryConfig {
    /// Embedded digits, default seed: what the tests use.
    pub fn embedded() -> Self {
        Self {
            data: DataChoice::Embedded,
            ..Self::default()
        }
    }
}

/// A binary classification problem as a dense f64 design matrix.
#[derive(Debug, Clone)]
pub struct BinaryProblem {
    /// Short name for tables, e.g. `digits 3v6 (290 x 64)`.
    pub name: String,
    /// `n x d` inputs, row-major.
    pub x: Vec<f64>,
    /// Labels in `{0, 1}`.
    pub y: Vec<f64>,
    pub n: usize,
    pub d: usize,
}

impl BinaryProblem {
    /// Builds a problem from rows and labels.
    pub fn new(name: impl Into<String>, x: Vec<f64>, y: Vec<f64>, d: usize) -> Result<Self> {
        if d == 0 || !x.len().is_multiple_of(d) || x.len() / d != y.len() || y.is_empty() {
            return Err(TheoryError::invalid(format!(
                "binary problem: {} inputs of width {d} do not match {} labels",
                x.len(),
                y.len()
            )));
        }
        if y.iter().any(|&v| v != 0.0 && v != 1.0) {
            return Err(TheoryError::invalid("binary problem: labels must be 0 or 1"));
        }
        Ok(Self {
            name: name.into(),
            n: y.len(),
            x,
            y,
            d,
        })
    }

    /// A two-class [`Dataset`] as a problem (pixels / 255, label = class index).
    pub fn from_dataset(ds: &Dataset, name: impl Into<String>) -> Result<Self> {
        if ds.num_classes() != 2 {
            return Err(TheoryError::invalid(format!(
                "{}: expected 2 classes, found {}",
                ds.name(),
                ds.num_classes()
            )));
        }
        let x = ds.images().iter().map(|&p| p as f64 / 255.0).collect();
        let y = ds.labels().iter().map(|&l| l as f64).collect();
        Self::new(name, x, y, ds.shape().numel())
    }

    /// Row `i` of the inputs.
    #[inline]
    pub fn row(&self, i: usize) -> &[f64] {
        &self.x[i * self.d..(i + 1) * self.d]
    }

    /// Parameters of a logistic model on this problem: `d` weights and a bias.
    pub fn params(&self) -> usize {
        self.d + 1
    }

    /// The 1-D "bump" toy problem used for the CE-vs-MSE question: 13 points
    /// `x = -6..=6`, label 1 in the middle and 0 at both ends, with one flipped label
    /// near each edge, so that no threshold separates the classes:
    ///
    /// ```text
    /// x: -6 -5 -4 -3 -2 -1  0  1  2  3  4  5  6
    /// y:  0  0  1  0  1  1  1  1  1  0  1  0  0
    /// ```
    ///
    /// A single sigmoid can fit the rising edge, the falling edge, or neither; with
    /// MSE each choice is its own local minimum (found by a seeded search when the
    /// toy was designed, and re-checked by the tests); the cross-entropy has one
    /// minimum.
    pub fn toy_bump() -> Self {
        let x: Vec<f64> = (-6..=6).map(|v| v as f64).collect();
        let y = vec![0., 0., 1., 0., 1., 1., 1., 1., 1., 0., 1., 0., 0.];
        Self::new("toy 1-D bump (13 points)", x, y, 1).expect("valid toy")
    }

    /// A 1-D threshold toy (`y = 1` for `x > 0`, one flipped label), used for the
    /// 1-1-1 linear network: unlike the symmetric bump, `Σ x·y ≠ 0`, so the
    /// origin is a saddle and not a flat point.
    pub fn toy_threshold() -> Self {
        let x = vec![-3., -2., -1., -0.5, 0.5, 1., 2., 3.];
        let y = vec![0., 0., 0., 1., 0., 1., 1., 1.];
        Self::new("toy 1-D threshold (8 points)", x, y, 1).expect("valid toy")
    }

    /// Two seeded Gaussian blobs in 2-D (`n` points per class, centres `±(1, 0.5)`,
    /// unit variance): a non-separable problem for the 2-2-1 linear network.
    pub fn toy_blobs(n: usize, seed: u64) -> Self {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut x = Vec::with_capacity(4 * n);
        let mut y = Vec::with_capacity(2 * n);
        for class in 0..2 {
            let s = if class == 1 { 1.0 } else { -1.0 };
            for _ in 0..n {
                x.push(s * 1.0 + crate::linalg::gaussian(&mut rng));
                x.push(s * 0.5 + crate::linalg::gaussian(&mut rng));
                y.push(class as f64);
            }
        }
        Self::new(format!("toy 2-D blobs ({} points)", 2 * n), x, y, 2).expect("valid toy")
    }
}

/// The real data of one run: a 3-vs-6 problem and a 10-class sample.
#[derive(Debug, Clone)]
pub struct TheoryData {
    /// The 3-vs-6 training images (subsampled for MNIST), labels 0 (= 3) and 1 (= 6).
    pub binary: Dataset,
    /// The same images as a dense problem.
    pub problem: BinaryProblem,
    /// About 256 images of all ten classes (a seeded stratified sample of the training
    /// split, in shuffled order), for the multi-class checks.
    pub multiclass: Dataset,
    /// Which data, from where, and how it was subsampled (a sentence for the report).
    pub description: String,
    pub is_mnist: bool,
}

impl TheoryData {
    /// Loads the data `cfg` asks for.
    pub fn load(cfg: &TheoryConfig) -> Result<Self> {
        let mnist_dir = match &cfg.data {
            DataChoice::Embedded => None,
            DataChoice::Auto(flag) => {
                let dir = resolve_data_dir(flag.as_deref());
                catalog::is_available(DatasetKind::Mnist, Split::Train, &dir).then_some(dir)
            }
        };
        match mnist_dir {
            Some(dir) => {
                let train = catalog::load(DatasetKind::Mnist, Split::Train, &dir)?;
                let full = train.filter_classes(&[3, 6])?;
                let fraction = (cfg.mnist_samples as f64 / full.len() as f64).min(1.0);
                let binary = if fraction < 1.0 {
                    full.subset_fraction(fraction, cfg.seed, true)?
                } else {
                    full.clone()
                };
                let multiclass = mixed_sample(&train, 256, cfg.seed)?;
                let problem = BinaryProblem::from_dataset(&binary, format!("MNIST 3v6 ({} x {})", binary.len(), 784))?;
                let description = format!(
                    "MNIST \"3 vs 6\" from {}: a stratified random subsample (seed {}) of {} of the {} training images \
                     (28x28 = 784 pixels scaled to [0, 1]; label 1 = \"6\")",
                    dir.display(),
                    cfg.seed,
                    binary.len(),
                    full.len()
                );
                Ok(Self {
                    binary,
                    problem,
                    multiclass,
                    description,
                    is_mnist: true,
                })
            }
            None => {
                let train = catalog::load(DatasetKind::Digits, Split::Train, std::path::Path::new("."))?;
                let binary = train.filter_classes(&[3, 6])?;
                let multiclass = mixed_sample(&train, 256, cfg.seed)?;
                let problem = BinaryProblem::from_dataset(&binary, format!("digits 3v6 ({} x {})", binary.len(), 64))?;
                let why = match &cfg.data {
                    DataChoice::Embedded => "as asked".to_string(),
                    DataChoice::Auto(flag) => format!(
                        "because no MNIST training files were found under {} (set DIGITLAB_DATA or --data-dir to use MNIST)",
                        resolve_data_dir(flag.as_deref()).display()
                    ),
                };
                let description = format!(
                    "the embedded UCI 8x8 digits \"3 vs 6\" ({} training images, 64 pixels scaled to [0, 1]; label 1 = \"6\"), {why}",
                    binary.len()
                );
                Ok(Self {
                    binary,
                    problem,
                    multiclass,
                    description,
                    is_mnist: false,
                })
            }
        }
    }

    /// The 10-class sample as `(inputs n x d, labels)`, pixels / 255.
    pub fn multiclass_rows(&self, n: usize) -> (Vec<f64>, Vec<usize>, usize) {
        let n = n.min(self.multiclass.len());
        let d = self.multiclass.shape().numel();
        let x = self.multiclass.images()[..n * d]
            .iter()
            .map(|&p| p as f64 / 255.0)
            .collect();
        let y = self.multiclass.labels()[..n].iter().map(|&l| l as usize).collect();
        (x, y, d)
    }
}

/// A seeded stratified sample of about `n` images, shuffled (the embedded digits'
/// training split is ordered by class, so its first images are all zeros).
fn mixed_sample(ds: &Dataset, n: usize, seed: u64) -> Result<Dataset> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let fraction = (n as f64 / ds.len() as f64).min(1.0);
    let sub = ds.subset_fraction(fraction, seed, true)?;
    let mut idx: Vec<usize> = (0..sub.len()).collect();
    idx.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    Ok(sub.select(&idx)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_three_vs_six_loads() {
        let d = TheoryData::load(&TheoryConfig::embedded()).unwrap();
        assert!(!d.is_mnist);
        assert_eq!(d.problem.d, 64);
        assert_eq!(d.problem.n, d.binary.len());
        assert!(d.problem.n > 250, "{}", d.problem.n);
        let ones = d.problem.y.iter().filter(|&&y| y == 1.0).count();
        assert!(ones > 100 && d.problem.n - ones > 100);
        assert!(d.problem.x.iter().all(|&v| (0.0..=1.0).contains(&v)));
        let (x, y, dim) = d.multiclass_rows(100);
        assert_eq!((x.len(), y.len(), dim), (6400, 100, 64));
        // All ten classes among the first 32 (topic 3 uses 32 images).
        let mut seen = [false; 10];
        y[..32].iter().for_each(|&l| seen[l] = true);
        assert!(seen.iter().filter(|&&s| s).count() >= 8, "{:?}", &y[..32]);
    }

    #[test]
    fn toys_are_valid_and_not_separable() {
        let b = BinaryProblem::toy_bump();
        assert_eq!((b.n, b.d), (13, 1));
        let t = BinaryProblem::toy_threshold();
        let sxy: f64 = (0..t.n).map(|i| t.x[i] * t.y[i]).sum();
        assert!(sxy.abs() > 1.0);
        let blobs = BinaryProblem::toy_blobs(20, 1);
        assert_eq!((blobs.n, blobs.d), (40, 2));
        assert!(BinaryProblem::new("bad", vec![1.0, 2.0], vec![0.5, 1.0], 1).is_err());
    }
}
