//! Batch sources: what [`crate::fit`] trains on and evaluates on, an image
//! [`Batcher`] or anything else that yields (inputs, labels) batches.
use crate::Result;
use candle_core::Tensor;
use digitlab_data::Batcher;

/// One minibatch: model inputs and `[B]` u32 class labels on the same device.
#[derive(Debug, Clone)]
pub struct Batch {
    pub inputs: Tensor,
    pub labels: Tensor,
}

impl Batch {
    /// Examples in the batch.
    pub fn examples(&self) -> Result<usize> {
        Ok(self.labels.dims1()?)
    }
}

/// Yields the batches of an epoch. For reproducible runs (and bit-identical
/// resume) the batches of an epoch must be a function of the epoch number alone,
/// e.g. a permutation seeded by (seed, epoch).
pub trait BatchSource {
    /// Batches per epoch.
    fn num_batches(&self) -> usize;
    /// The batches of epoch `epoch` (0-based); evaluation passes ask for epoch 0.
    fn batches(&self, epoch: usize) -> Box<dyn Iterator<Item = Result<Batch>> + '_>;
}

impl BatchSource for Batcher<'_> {
    fn num_batches(&self) -> usize {
        Batcher::num_batches(self)
    }

    fn batches(&self, epoch: usize) -> Box<dyn Iterator<Item = Result<Batch>> + '_> {
        Box::new(self.epoch(epoch as u64).map(|b| {
            let b = b?;
            Ok(Batch {
                inputs: b.images,
                labels: b.labels,
            })
        }))
    }
}
