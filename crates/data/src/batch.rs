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
use rayon::prelude::*;

/// One minibatch: `images` is `[B, C, H, W]` f32, `labels` is `[B]` u32, and
/// `indices` are the positions of its images in the dataset.
#[derive(Debug, Clone)]
pub struct Batch {
    pub images: Tensor,
    pub labels: Tensor,
    pub indices: Vec<usize>,
}

/// Datasets whose transformed f32 images fit in this many bytes are converted
/// once and kept on the device when no augmentation is asked for (and the
/// conversion is more than a table lookup per pixel, or the device is a GPU: see
/// [`Batcher`]).
pub const DEFAULT_CACHE_BYTES: usize = 1 << 30;

/// Conversions of fewer output values than this (1 MiB of f32) stay on the calling
/// thread.
const PARALLEL_MIN_VALUES: usize = 1 << 18;

/// Builds batches of a dataset through a pipeline on a device.
///
/// Without augmentation, the whole transformed dataset is kept as one tensor on
/// the device (when it fits in [`DEFAULT_CACHE_BYTES`]) and batches are gathered
/// from it, so the u8 -> f32 conversion and resize run once, not every epoch;
/// except on the CPU when the pipeline is one table lookup per pixel (the usual
/// normalisation), where converting each batch from the u8 pixels is cheaper than
/// gathering it from an f32 copy.
#[derive(Debug, Clone)]
pub struct Batcher<'a> {
    data: &'a Dataset,
    pipeline: &'a Pipeline,
    batch_size: usize,
    shuffle: bool,
    augment: bool,
    seed: u64,
    device: Device,
    cache_limit: usize,
    /// Built on first use, so a batcher that augments never converts everything.
    cache: std::sync::OnceLock<Option<(Tensor, Tensor)>>,
}

impl<'a> Batcher<'a> {
    /// A batcher for evaluation: no shuffle, no augmentation.
    pub fn new(data: &'a Dataset, pipeline: &'a Pipeline, batch_size: usize, device: &Device) -> Result<Self> {
        if batch_size == 0 {
            return Err(DataError::Invalid("batch size must be at least 1".into()));
        }
        if data.is_empty() {
            return Err(DataError::Invalid(format!(
                "{}: cannot batch an empty dataset",
                data.name()
            )));
        }
        pipeline.validate(data.shape())?;
        let b = Self {
            data,
            pipeline,
            batch_size,
            shuffle: false,
            augment: false,
            seed: 0,
            device: device.clone(),
            cache_limit: DEFAULT_CACHE_BYTES,
            cache: std::sync::OnceLock::new(),
        };
        Ok(b)
    }

    /// Shuffles each epoch with a permutation drawn from (`seed`, epoch), and
    /// applies the pipeline's augmentation: the training configuration.
    ///
    /// A batch holding the whole dataset is not shuffled: a mean loss over all
    /// images does not depend on their order.
    pub fn training(mut self, seed: u64) -> Self {
        self.shuffle = self.batch_size < self.data.len();
        self.augment = self.pipeline.augment.is_some();
        self.seed = seed;
        self
    }

    /// Caches the transformed dataset on the device only up to `max_bytes` (0: never).
    pub fn with_cache_limit(mut self, max_bytes: usize) -> Self {
        self.cache_limit = max_bytes;
        self.cache = std::sync::OnceLock::new();
        self
    }

    /// The cached (images, labels), converting them on first use when allowed.
    fn cached(&self) -> Result<Option<&(Tensor, Tensor)>> {
        if let Some(c) = self.cache.get() {
            return Ok(c.as_ref());
        }
        let bytes = self.data.len() * self.image_shape().numel() * 4;
        // On the CPU, images that one table lookup per byte converts (no resize) are
        // converted straight from their u8 pixels into each batch: that reads a
        // quarter of the bytes a gather from an f32 copy would, and there is no
        // copy (188 MB for MNIST, written once and then gathered again batch by
        // batch). On a GPU, or with a resize, the cache saves a host-to-device copy
        // or a resize per image and epoch.
        let table_on_cpu = self.device.is_cpu() && self.pipeline.pixel_table(self.data.shape(), false).is_some();
        let value = if !self.augment && !table_on_cpu && bytes <= self.cache_limit {
            let idx: Vec<usize> = (0..self.data.len()).collect();
            let b = self.convert(&idx, None, &mut Vec::new())?;
            Some((b.images, b.labels))
        } else {
            None
        };
        let _ = self.cache.set(value);
        Ok(self.cache.get().and_then(|c| c.as_ref()))
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
        BatchIter {
            batcher: self,
            order,
            pos: 0,
            rng,
            scratch: Vec::new(),
        }
    }

    /// The whole dataset as one `[N, C, H, W]` tensor and `[N]` labels, in order,
    /// without augmentation (for evaluation of small sets).
    pub fn all(&self) -> Result<(Tensor, Tensor)> {
        if let Some((x, y)) = self.cached()? {
            return Ok((x.clone(), y.clone()));
        }
        let idx: Vec<usize> = (0..self.data.len()).collect();
        let b = self.convert(&idx, None, &mut Vec::new())?;
        Ok((b.images, b.labels))
    }

    fn build(&self, idx: &[usize], rng: Option<&mut ChaCha8Rng>, scratch: &mut Vec<f32>) -> Result<Batch> {
        let Some((x, y)) = self.cached()? else {
            return self.convert(idx, rng, scratch);
        };
        if idx.len() == self.data.len() && idx.iter().enumerate().all(|(k, &i)| k == i) {
            return Ok(Batch {
                images: x.clone(),
                labels: y.clone(),
                indices: idx.to_vec(),
            });
        }
        let ids: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
        let ids = Tensor::from_vec(ids, idx.len(), &self.device)?;
        Ok(Batch {
            images: x.index_select(&ids, 0)?,
            labels: y.index_select(&ids, 0)?,
            indices: idx.to_vec(),
        })
    }

    /// Converts images `idx` through the pipeline (u8 -> f32, augment, resize, normalise).
    fn convert(&self, idx: &[usize], mut rng: Option<&mut ChaCha8Rng>, scratch: &mut Vec<f32>) -> Result<Batch> {
        let ishape = self.data.shape();
        let oshape = self.pipeline.output_shape(ishape);
        let n = oshape.numel();
        let mut buf = vec![0f32; idx.len() * n];
        // One table lookup per pixel where the pipeline allows it (normalisation
        // only: the trainer's usual case), the general path otherwise.
        let table = self.pipeline.pixel_table(ishape, rng.is_some());
        let convert_one =
            |i: usize, slot: &mut [f32], rng: Option<&mut ChaCha8Rng>, scratch: &mut Vec<f32>| match &table {
                Some(t) => t.apply(self.data.image(i), slot),
                None => self.pipeline.apply(self.data.image(i), ishape, rng, slot, scratch),
            };
        let threads = rayon::current_num_threads();
        if rng.is_none() && threads > 1 && buf.len() >= PARALLEL_MIN_VALUES {
            // Without augmentation each image's conversion depends on nothing else:
            // the same values in any order, so contiguous runs of images go to
            // rayon's threads (converting a whole split for the cache, or a big batch).
            let per_part = idx.len().div_ceil(threads);
            buf.par_chunks_mut(per_part * n)
                .zip(idx.par_chunks(per_part))
                .for_each(|(slots, ids)| {
                    let mut scratch = Vec::new();
                    for (slot, &i) in slots.chunks_exact_mut(n).zip(ids) {
                        convert_one(i, slot, None, &mut scratch);
                    }
                });
        } else {
            for (slot, &i) in buf.chunks_exact_mut(n).zip(idx) {
                convert_one(i, slot, rng.as_deref_mut(), scratch);
            }
        }
        let images = Tensor::from_vec(
            buf,
            (idx.len(), oshape.channels, oshape.height, oshape.width),
            &self.device,
        )?;
        let labels: Vec<u32> = idx.iter().map(|&i| self.data.labels()[i] as u32).collect();
        let labels = Tensor::from_vec(labels, idx.len(), &self.device)?;
        Ok(Batch {
            images,
            labels,
            indices: idx.to_vec(),
        })
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
        let rng = if self.batcher.augment {
            Some(&mut self.rng)
        } else {
            None
        };
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
        Dataset::new(
            "toy",
            ImageShape::new(1, 2, 2),
            images,
            labels,
            vec!["a".into(), "b".into(), "c".into()],
        )
        .unwrap()
    }

    #[test]
    fn every_image_once_per_epoch_with_partial_last_batch() {
        let d = toy(10);
        let p = Pipeline::default();
        let b = Batcher::new(&d, &p, 4, &Device::Cpu).unwrap().training(3);
        assert_eq!(b.num_batches(), 3);
        let batches: Vec<Batch> = b.epoch(0).collect::<Result<_>>().unwrap();
        assert_eq!(
            batches.iter().map(|b| b.indices.len()).collect::<Vec<_>>(),
            vec![4, 4, 2]
        );
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
        assert_eq!(
            again,
            batches.iter().flat_map(|b| b.indices.clone()).collect::<Vec<_>>()
        );
        assert_ne!(again, next);
    }

    #[test]
    fn cached_and_converted_batches_agree() {
        let d = toy(11);
        // A resize: the cache pays off (a plain normalisation is converted per
        // batch on the CPU, below).
        let p = Pipeline {
            resize: Some([3, 3]),
            ..Default::default()
        };
        let cached = Batcher::new(&d, &p, 4, &Device::Cpu).unwrap().training(9);
        let plain = cached.clone().with_cache_limit(0);
        assert!(cached.cached().unwrap().is_some() && plain.cached().unwrap().is_none());
        let table = Pipeline::default();
        let per_batch = Batcher::new(&d, &table, 4, &Device::Cpu).unwrap().training(9);
        assert!(
            per_batch.cached().unwrap().is_none(),
            "a table pipeline on the CPU converts per batch"
        );
        for (a, b) in cached.epoch(2).zip(plain.epoch(2)) {
            let (a, b) = (a.unwrap(), b.unwrap());
            assert_eq!(a.indices, b.indices);
            let av: Vec<f32> = a.images.flatten_all().unwrap().to_vec1().unwrap();
            let bv: Vec<f32> = b.images.flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(av, bv);
            assert_eq!(a.labels.to_vec1::<u32>().unwrap(), b.labels.to_vec1::<u32>().unwrap());
        }
        // A full batch is one unshuffled batch.
        let full = Batcher::new(&d, &p, 11, &Device::Cpu).unwrap().training(9);
        let only: Vec<Batch> = full.epoch(3).collect::<Result<_>>().unwrap();
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].indices, (0..11).collect::<Vec<_>>());
    }

    #[test]
    fn conversion_split_over_threads_is_bit_identical_to_one_image_at_a_time() {
        // Both paths: the per-pixel table (normalisation only) and the general one (a resize).
        let d = toy(70_000);
        let resized = Pipeline {
            resize: Some([4, 4]),
            ..Pipeline::default()
        };
        for p in [Pipeline::default(), resized] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
            let (x, _) = pool.install(|| Batcher::new(&d, &p, 10, &Device::Cpu).unwrap().all().unwrap());
            let got: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            assert!(got.len() >= PARALLEL_MIN_VALUES, "the test must take the parallel path");
            let n = p.output_shape(d.shape()).numel();
            let mut want = vec![0f32; d.len() * n];
            let mut scratch = Vec::new();
            for (i, slot) in want.chunks_exact_mut(n).enumerate() {
                p.apply(d.image(i), d.shape(), None::<&mut ChaCha8Rng>, slot, &mut scratch);
            }
            let same = got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same && got.len() == want.len(), "resize {:?}", p.resize);
        }
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
        let p = Pipeline {
            augment: Some(Augment {
                crop_padding: 1,
                ..Default::default()
            }),
            ..Default::default()
        };
        let eval = Batcher::new(&d, &p, 4, &Device::Cpu).unwrap();
        let (x, _) = eval.all().unwrap();
        let plain: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        assert!(plain.chunks(4).all(|c| c.iter().all(|v| *v == c[0])));
        let train = Batcher::new(&d, &p, 4, &Device::Cpu).unwrap().training(1);
        let a: Vec<f32> = train
            .epoch(0)
            .next()
            .unwrap()
            .unwrap()
            .images
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let b: Vec<f32> = train
            .epoch(0)
            .next()
            .unwrap()
            .unwrap()
            .images
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(a, b, "seeded");
    }
}
