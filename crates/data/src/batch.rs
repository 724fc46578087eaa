//! Shuffled minibatches as candle tensors.
//!
//! A [`Batcher`] holds only a borrowed dataset and a permutation of indices: an
//! epoch never copies the dataset, each batch is built from u8 pixels on demand.
use crate::dataset::{Dataset, ImageShape};
use crate::error::{DataError, Result};
use crate::transform::Pipeline;
use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// One minibatch: `images` is `[B, C, H, W]` f32, `labels` is `[B]` u32, and
/// `indices` are the positions of its images in the dataset.
#[derive(Debug, Clone)]
pub struct Batch {
    pub images: Tensor,
    pub labels: Tensor,
    pub indices: Vec<usize>,
}

/// Builds batches of a dataset through a pipeline on a device.
#[derive(Debug, Clone)]
pub struct Batcher<'a> {
    data: &'a Dataset,
    pipeline: &'a Pipeline,
    batch_size: usize,
    shuffle: bool,
    augment: bool,
    seed: u64,
    device: Device,
}

impl<'a> Batcher<'a> {
    /// A batcher for evaluation: no shuffle, no augmentation.
    pub fn new(data: &'a Dataset, pipeline: &'a Pipeline, batch_size: usize, device: &Device) -> Result<Self> {
        if batch_size == 0 {
            return Err(DataError::Invalid("batch size must be at least 1".into()));
        }
        if data.is_empty() {
            return Err(DataError::Invalid(format!("{}: cannot batch an empty dataset", data.name())));
        }
        pipeline.validate(data.shape())?;
        Ok(Self { data, pipeline, batch_size, shuffle: false, augment: false, seed: 0, device: device.clone() })
    }

    /// Shuffles each epoch with a permutation drawn from (`seed`, epoch), and
    /// applies the pipeline's augmentation: the training configuration.
    pub fn training(mut self, seed: u64) -> Self {
        self.shuffle = true;
        self.augment = self.pipeline.augment.is_some();
        self.seed = seed;
        self
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }
    /// Batches per epoch, counting a partial last batch.
    pub fn num_batches(&self) -> usize {
        self.data.len().div_ceil(self.batch_size)
    }
    /// Shape of each image in a batch.
    pub fn image_shape(&self) -> ImageShape {
        self.pipeline.output_shape(self.data.shape())
    }
    pub fn dataset(&self) -> &'a Dataset {
        self.data
    }

    /// The batches of epoch `epoch` (0-based). The same seed and epoch always give
    /// the same order and the same augmentation.
    pub fn epoch(&self, epoch: u64) -> BatchIter<'_, 'a> {
        let mut order: Vec<usize> = (0..self.data.len()).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        if self.shuffle {
            order.shuffle(&mut rng);
        }
        BatchIter { batcher: self, order, pos: 0, rng, scratch: Vec::new() }
    }

    /// The whole dataset as one `[N, C, H, W]` tensor and `[N]` labels, in order,
    /// without augmentation (for evaluation of small sets).
    pub fn all(&self) -> Result<(Tensor, Tensor)> {
        let idx: Vec<usize> = (0..self.data.len()).collect();
        let b = self.build(&idx, None, &mut Vec::new())?;
        Ok((b.images, b.labels))
    }

    fn build(&self, idx: &[usize], mut rng: Option<&mut ChaCha8Rng>, scratch: &mut Vec<f32>) -> Result<Batch> {
        let ishape = self.data.shape();
        let oshape = self.pipeline.output_shape(ishape);
        let n = oshape.numel();
        let mut buf = vec![0f32; idx.len() * n];
        for (slot, &i) in buf.chunks_exact_mut(n).zip(idx) {
            self.pipeline.apply(self.data.image(i), ishape, rng.as_deref_mut(), slot, scratch);
        }
        let images = Tensor::from_vec(buf, (idx.len(), oshape.channels, oshape.height, oshape.width), &self.device)?;
        let labels: Vec<u32> = idx.iter().map(|&i| self.data.labels()[i] as u32).collect();
        let labels = Tensor::from_vec(labels, idx.len(), &self.device)?;
        Ok(Batch { images, labels, indices: idx.to_vec() })
    }
}

/// Iterator over the batches of one epoch; the last batch may be smaller.
pub struct BatchIter<'b, 'a> {
    batcher: &'b Batcher<'a>,
    order: Vec<usize>,
    pos: usize,
    rng: ChaCha8Rng,
    scratch: Vec<f32>,
}

impl Iterator for BatchIter<'_, '_> {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.order.len() {
            return None;
        }
        let end = (self.pos + self.batcher.batch_size).min(self.order.len());
        let idx = &self.order[self.pos..end];
        self.pos = end;
        let rng = if self.batcher.augment { Some(&mut self.rng) } else { None };
        Some(self.batcher.build(idx, rng, &mut self.scratch))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.order.len() - self.pos).div_ceil(self.batcher.batch_size);
        (left, Some(left))
    }
}

impl ExactSizeIterator for BatchIter<'_, '_> {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::augment::Augment;

    fn toy(n: usize) -> Dataset {
        let images = (0..n * 4).map(|v| (v / 4) as u8).collect();
        let labels = (0..n).map(|i| (i % 3) as u8).collect();
        Dataset::new("toy", ImageShape::new(1, 2, 2), images, labels, vec!["a".into(), "b".into(), "c".into()]).unwrap()
    }

    #[test]
    fn every_image_once_per_epoch_with_partial_last_batch() {
        let d = toy(10);
        let p = Pipeline::default();
        let b = Batcher::new(&d, &p, 4, &Device::Cpu).unwrap().training(3);
        assert_eq!(b.num_batches(), 3);
        let batches: Vec<Batch> = b.epoch(0).collect::<Result<_>>().unwrap();
        assert_eq!(batches.iter().map(|b| b.indices.len()).collect::<Vec<_>>(), vec![4, 4, 2]);
        let mut seen: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
        assert_ne!(seen, (0..10).collect::<Vec<_>>(), "shuffled");
        seen.sort();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        // Images and labels line up with the indices.
        let first = &batches[0];
        assert_eq!(first.images.dims(), &[4, 1, 2, 2]);
        let px: Vec<f32> = first.images.flatten_all().unwrap().to_vec1().unwrap();
        let labels: Vec<u32> = first.labels.to_vec1().unwrap();
        for (k, &i) in first.indices.iter().enumerate() {
            assert!((px[4 * k] - i as f32 / 255.0).abs() < 1e-7);
            assert_eq!(labels[k], (i % 3) as u32);
        }
        // Same seed and epoch: same order; next epoch: another order.
        let again: Vec<usize> = b.epoch(0).flat_map(|b| b.unwrap().indices).collect();
        let next: Vec<usize> = b.epoch(1).flat_map(|b| b.unwrap().indices).collect();
        assert_eq!(again, batches.iter().flat_map(|b| b.indices.clone()).collect::<Vec<_>>());
        assert_ne!(again, next);
    }

    #[test]
    fn batch_size_one_and_eval_order() {
        let d = toy(3);
        let p = Pipeline::default();
        let b = Batcher::new(&d, &p, 1, &Device::Cpu).unwrap();
        let order: Vec<usize> = b.epoch(0).flat_map(|b| b.unwrap().indices).collect();
        assert_eq!(order, vec![0, 1, 2]);
        let (x, y) = b.all().unwrap();
        assert_eq!(x.dims(), &[3, 1, 2, 2]);
        assert_eq!(y.to_vec1::<u32>().unwrap(), vec![0, 1, 2]);
        assert!(Batcher::new(&d, &p, 0, &Device::Cpu).is_err());
    }

    #[test]
    fn augmentation_only_in_training() {
        let d = toy(4);
        let p = Pipeline { augment: Some(Augment { crop_padding: 1, ..Default::default() }), ..Default::default() };
        let eval = Batcher::new(&d, &p, 4, &Device::Cpu).unwrap();
        let (x, _) = eval.all().unwrap();
        let plain: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        assert!(plain.chunks(4).all(|c| c.iter().all(|v| *v == c[0])));
        let train = Batcher::new(&d, &p, 4, &Device::Cpu).unwrap().training(1);
        let a: Vec<f32> = train.epoch(0).next().unwrap().unwrap().images.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = train.epoch(0).next().unwrap().unwrap().images.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a, b, "seeded");
    }
}
