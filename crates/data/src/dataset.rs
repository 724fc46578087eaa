//! The in-memory [`Dataset`]: u8 images in NCHW order, labels and class names,
//! with the split / subset / filter operations the coursework uses.
use crate::error::{DataError, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Channels, height and width of every image in a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ImageShape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl ImageShape {
    pub const fn new(channels: usize, height: usize, width: usize) -> Self {
        Self {
            channels,
            height,
            width,
        }
    }
    /// Number of u8 values in one image.
    pub const fn numel(&self) -> usize {
        self.channels * self.height * self.width
    }
}

impl std::fmt::Display for ImageShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}x{}", self.channels, self.height, self.width)
    }
}

/// Images stored as raw u8 pixels (NCHW, row-major), one label per image.
///
/// Images stay u8 in memory (a quarter of f32); conversion to f32, resizing,
/// augmentation and normalisation happen per batch in [`crate::Pipeline`].
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    name: String,
    shape: ImageShape,
    images: Vec<u8>,
    labels: Vec<u8>,
    class_names: Vec<String>,
}

impl Dataset {
    /// Builds a dataset, checking that sizes agree and every label names a class.
    pub fn new(
        name: impl Into<String>,
        shape: ImageShape,
        images: Vec<u8>,
        labels: Vec<u8>,
        class_names: Vec<String>,
    ) -> Result<Self> {
        let name = name.into();
        if shape.numel() == 0 {
            return Err(DataError::Invalid(format!("{name}: image shape {shape} is empty")));
        }
        if images.len() != labels.len() * shape.numel() {
            return Err(DataError::Invalid(format!(
                "{name}: {} labels need {} pixel values of shape {shape}, found {}",
                labels.len(),
                labels.len() * shape.numel(),
                images.len()
            )));
        }
        if class_names.is_empty() || class_names.len() > 256 {
            return Err(DataError::Invalid(format!(
                "{name}: expected 1..=256 class names, found {}",
                class_names.len()
            )));
        }
        if let Some((i, &l)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= class_names.len())
        {
            return Err(DataError::Invalid(format!(
                "{name}: label {l} of image {i} is not below the number of classes {}",
                class_names.len()
            )));
        }
        Ok(Self {
            name,
            shape,
            images,
            labels,
            class_names,
        })
    }

    /// The dataset's name, e.g. `mnist/train`.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Renames the dataset (e.g. after a split).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    pub fn shape(&self) -> ImageShape {
        self.shape
    }
    /// All pixels, NCHW.
    pub fn images(&self) -> &[u8] {
        &self.images
    }
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }
    /// The pixels of image `i` (CHW). Panics if `i >= len()`, like slice indexing.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.shape.numel();
        &self.images[i * n..(i + 1) * n]
    }
    /// How many images each class has.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes()];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }

    /// A new dataset with the images at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Result<Dataset> {
        let n = self.shape.numel();
        let mut images = Vec::with_capacity(indices.len() * n);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            if i >= self.len() {
                return Err(DataError::Invalid(format!(
                    "{}: index {i} out of range for {} images",
                    self.name,
                    self.len()
                )));
            }
            images.extend_from_slice(self.image(i));
            labels.push(self.labels[i]);
        }
        Ok(Dataset {
            name: self.name.clone(),
            shape: self.shape,
            images,
            labels,
            class_names: self.class_names.clone(),
        })
    }

    /// Seeded split into (train, validation) with `val_fraction` of the images in
    /// validation. With `stratified`, each class is split in the same proportion.
    pub fn split(&self, val_fraction: f64, seed: u64, stratified: bool) -> Result<(Dataset, Dataset)> {
        check_fraction("validation fraction", val_fraction, false)?;
        let (val_idx, train_idx) = self.partition(val_fraction, seed, stratified);
        if train_idx.is_empty() || val_idx.is_empty() {
            return Err(DataError::Invalid(format!(
                "{}: a validation fraction of {val_fraction} of {} images leaves an empty side",
                self.name,
                self.len()
            )));
        }
        let train = self.select(&train_idx)?.with_name(format!("{}[train]", self.name));
        let val = self.select(&val_idx)?.with_name(format!("{}[val]", self.name));
        Ok((train, val))
    }

    /// A seeded random subset holding `fraction` of the images (e.g. 0.25).
    pub fn subset_fraction(&self, fraction: f64, seed: u64, stratified: bool) -> Result<Dataset> {
        check_fraction("subset fraction", fraction, true)?;
        if fraction == 1.0 {
            return Ok(self.clone());
        }
        let (mut keep, _) = self.partition(fraction, seed, stratified);
        keep.sort_unstable();
        if keep.is_empty() {
            return Err(DataError::Invalid(format!(
                "{}: a subset fraction of {fraction} of {} images is empty",
                self.name,
                self.len()
            )));
        }
        Ok(self
            .select(&keep)?
            .with_name(format!("{}[{:.0}%]", self.name, fraction * 100.0)))
    }

    /// The first `n` images (or all, if fewer).
    pub fn take(&self, n: usize) -> Result<Dataset> {
        let idx: Vec<usize> = (0..n.min(self.len())).collect();
        self.select(&idx)
    }

    /// Keeps only `classes` and relabels them 0, 1, ... in the order given, so
    /// `filter_classes(&[3, 6])` makes a binary "3 vs 6" problem with 3 -> 0, 6 -> 1.
    pub fn filter_classes(&self, classes: &[u8]) -> Result<Dataset> {
        if classes.is_empty() {
            return Err(DataError::Invalid(format!("{}: class filter is empty", self.name)));
        }
        let mut map = [u8::MAX; 256];
        for (new, &old) in classes.iter().enumerate() {
            if old as usize >= self.num_classes() {
                return Err(DataError::Invalid(format!(
                    "{}: class {old} does not exist (classes are 0..{})",
                    self.name,
                    self.num_classes()
                )));
            }
            if map[old as usize] != u8::MAX {
                return Err(DataError::Invalid(format!(
                    "{}: class {old} listed twice in the filter",
                    self.name
                )));
            }
            map[old as usize] = new as u8;
        }
        let idx: Vec<usize> = (0..self.len())
            .filter(|&i| map[self.labels[i] as usize] != u8::MAX)
            .collect();
        let mut out = self.select(&idx)?;
        for l in out.labels.iter_mut() {
            *l = map[*l as usize];
        }
        out.class_names = classes.iter().map(|&c| self.class_names[c as usize].clone()).collect();
        let tag: Vec<String> = classes.iter().map(|c| c.to_string()).collect();
        out.name = format!("{}[{}]", self.name, tag.join("v"));
        Ok(out)
    }

    /// Appends `other` (same shape and classes) to this dataset.
    pub fn concat(&self, other: &Dataset) -> Result<Dataset> {
        if self.shape != other.shape || self.class_names != other.class_names {
            return Err(DataError::Invalid(format!(
                "cannot concatenate {} ({}, {} classes) and {} ({}, {} classes)",
                self.name,
                self.shape,
                self.num_classes(),
                other.name,
                other.shape,
                other.num_classes()
            )));
        }
        let mut out = self.clone();
        out.images.extend_from_slice(&other.images);
        out.labels.extend_from_slice(&other.labels);
        out.name = format!("{}+{}", self.name, other.name);
        Ok(out)
    }

    /// Converts 1-channel images to 3 identical channels (no-op for RGB).
    pub fn to_rgb(&self) -> Result<Dataset> {
        match self.shape.channels {
            3 => Ok(self.clone()),
            1 => {
                let plane = self.shape.height * self.shape.width;
                let mut images = Vec::with_capacity(self.images.len() * 3);
                for img in self.images.chunks_exact(plane) {
                    for _ in 0..3 {
                        images.extend_from_slice(img);
                    }
                }
                let shape = ImageShape::new(3, self.shape.height, self.shape.width);
                Dataset::new(
                    self.name.clone(),
                    shape,
                    images,
                    self.labels.clone(),
                    self.class_names.clone(),
                )
            }
            c => Err(DataError::Invalid(format!(
                "{}: cannot convert {c}-channel images to RGB",
                self.name
            ))),
        }
    }

    /// Converts RGB images to one luma channel (ITU-R 601: 0.299 R + 0.587 G + 0.114 B,
    /// as torchvision's `Grayscale`); no-op for 1-channel images.
    pub fn to_grayscale(&self) -> Result<Dataset> {
        match self.shape.channels {
            1 => Ok(self.clone()),
            3 => {
                let plane = self.shape.height * self.shape.width;
                let mut images = Vec::with_capacity(self.images.len() / 3);
                for img in self.images.chunks_exact(3 * plane) {
                    let (r, rest) = img.split_at(plane);
                    let (g, b) = rest.split_at(plane);
                    images.extend(r.iter().zip(g).zip(b).map(|((&r, &g), &b)| {
                        (0.299 * r as f32 + 0.587 * g as f32 + 0.114 * b as f32)
                            .round()
                            .clamp(0.0, 255.0) as u8
                    }));
                }
                let shape = ImageShape::new(1, self.shape.height, self.shape.width);
                Dataset::new(
                    self.name.clone(),
                    shape,
                    images,
                    self.labels.clone(),
                    self.class_names.clone(),
                )
            }
            c => Err(DataError::Invalid(format!(
                "{}: cannot convert {c}-channel images to grayscale",
                self.name
            ))),
        }
    }

    /// Per-channel mean and standard deviation of the pixels scaled to [0, 1]
    /// (what `Normalization::MeanStd` expects).
    pub fn channel_stats(&self) -> (Vec<f32>, Vec<f32>) {
        let c = self.shape.channels;
        let plane = self.shape.height * self.shape.width;
        let mut sum = vec![0f64; c];
        let mut sq = vec![0f64; c];
        for img in self.images.chunks_exact(c * plane) {
            for ch in 0..c {
                for &p in &img[ch * plane..(ch + 1) * plane] {
                    let v = p as f64 / 255.0;
                    sum[ch] += v;
                    sq[ch] += v * v;
                }
            }
        }
        let count = (self.len() * plane).max(1) as f64;
        let mean: Vec<f32> = sum.iter().map(|s| (s / count) as f32).collect();
        let std: Vec<f32> = sum
            .iter()
            .zip(&sq)
            .map(|(s, q)| ((q / count - (s / count).powi(2)).max(0.0).sqrt()) as f32)
            .collect();
        (mean, std)
    }

    /// Indices split into (chosen `fraction`, rest), seeded; per class if stratified.
    fn partition(&self, fraction: f64, seed: u64, stratified: bool) -> (Vec<usize>, Vec<usize>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let groups: Vec<Vec<usize>> = if stratified {
            let mut g = vec![Vec::new(); self.num_classes()];
            for (i, &l) in self.labels.iter().enumerate() {
                g[l as usize].push(i);
            }
            g
        } else {
            vec![(0..self.len()).collect()]
        };
        let (mut chosen, mut rest) = (Vec::new(), Vec::new());
        for mut g in groups {
            g.shuffle(&mut rng);
            let k = (g.len() as f64 * fraction).round() as usize;
            chosen.extend_from_slice(&g[..k]);
            rest.extend_from_slice(&g[k..]);
        }
        (chosen, rest)
    }
}

fn check_fraction(what: &str, f: f64, allow_one: bool) -> Result<()> {
    let ok = f > 0.0 && (f < 1.0 || (allow_one && f == 1.0));
    if ok {
        Ok(())
    } else {
        let range = if allow_one { "(0, 1]" } else { "(0, 1)" };
        Err(DataError::Invalid(format!("{what} must be in {range}, got {f}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(n: usize, classes: usize) -> Dataset {
        let shape = ImageShape::new(1, 2, 2);
        let images = (0..n * 4).map(|v| (v % 256) as u8).collect();
        let labels = (0..n).map(|i| (i % classes) as u8).collect();
        let names = (0..classes).map(|c| c.to_string()).collect();
        Dataset::new("toy", shape, images, labels, names).unwrap()
    }

    #[test]
    fn new_rejects_inconsistent_sizes_and_labels() {
        let s = ImageShape::new(1, 2, 2);
        let e = Dataset::new("x", s, vec![0; 7], vec![0, 1], vec!["a".into(), "b".into()]).unwrap_err();
        assert!(e.to_string().contains("need 8 pixel values"), "{e}");
        let e = Dataset::new("x", s, vec![0; 8], vec![0, 2], vec!["a".into(), "b".into()]).unwrap_err();
        assert!(e.to_string().contains("label 2 of image 1"), "{e}");
    }

    #[test]
    fn split_is_seeded_disjoint_and_stratified() {
        let d = toy(100, 4);
        let (t1, v1) = d.split(0.2, 7, true).unwrap();
        let (t2, v2) = d.split(0.2, 7, true).unwrap();
        assert_eq!((t1.len(), v1.len()), (80, 20));
        assert_eq!(v1, v2);
        assert_eq!(t1, t2);
        assert_eq!(v1.class_counts(), vec![5, 5, 5, 5]);
        let (_, v3) = d.split(0.2, 8, true).unwrap();
        assert_ne!(v1.labels().len(), 0);
        assert_ne!(v1.images(), v3.images(), "another seed gives another split");
        // Every image ends up on exactly one side: compare the multiset of first pixels.
        let mut all: Vec<u8> = t1
            .images()
            .chunks(4)
            .chain(v1.images().chunks(4))
            .map(|c| c[0])
            .collect();
        let mut orig: Vec<u8> = d.images().chunks(4).map(|c| c[0]).collect();
        all.sort();
        orig.sort();
        assert_eq!(all, orig);
        assert!(d.split(1.0, 0, false).is_err());
        assert!(d.split(0.0, 0, false).is_err());
    }

    #[test]
    fn filter_relabels_in_given_order() {
        let d = toy(30, 10);
        let b = d.filter_classes(&[6, 3]).unwrap();
        assert_eq!(b.len(), 6);
        assert_eq!(b.class_names(), &["6".to_string(), "3".to_string()]);
        assert!(b.labels().iter().all(|&l| l < 2));
        assert_eq!(b.class_counts(), vec![3, 3]);
        let e = d.filter_classes(&[3, 12]).unwrap_err();
        assert!(e.to_string().contains("class 12 does not exist"), "{e}");
    }

    #[test]
    fn subset_and_colour_conversions() {
        let d = toy(40, 4);
        assert_eq!(d.subset_fraction(0.5, 1, true).unwrap().len(), 20);
        let rgb = d.to_rgb().unwrap();
        assert_eq!(rgb.shape().channels, 3);
        assert_eq!(&rgb.image(1)[..4], &rgb.image(1)[4..8]);
        assert_eq!(rgb.to_grayscale().unwrap(), d);
        let (mean, std) = d.channel_stats();
        assert_eq!(mean.len(), 1);
        assert!(mean[0] > 0.0 && std[0] > 0.0);
    }
}
