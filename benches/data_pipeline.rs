//! Data pipeline: load MNIST (or the embedded digits when DIGITLAB_DATA is unset),
//! normalise, and run one shuffled epoch of batches of 100 as candle tensors.
//!
//! `cargo bench -p digitlab-benches --bench data_pipeline`
use candle_core::Device;
use digitlab_data::{catalog, Batcher, DatasetKind, Normalization, Pipeline, Split};
use divan::counter::ItemsCount;
use divan::Bencher;

fn dataset() -> (DatasetKind, digitlab_data::Dataset) {
    let dir = digitlab_data::resolve_data_dir(None);
    let kind = if catalog::is_available(DatasetKind::Mnist, Split::Train, &dir) {
        DatasetKind::Mnist
    } else {
        DatasetKind::Digits
    };
    (
        kind,
        catalog::load(kind, Split::Train, &dir).expect("load training split"),
    )
}

fn main() {
    let (kind, d) = dataset();
    println!("data_pipeline on {kind} train ({} images)", d.len());
    divan::main();
    digitlab_benches::report_peak_rss("data_pipeline");
}

/// Load from disk (IDX parse, gunzip) only.
#[divan::bench(sample_count = 5)]
fn load(b: Bencher) {
    let n = dataset().1.len();
    b.counter(ItemsCount::new(n)).bench(|| dataset().1.len());
}

/// One shuffled epoch of batches of 100, converting u8 -> normalised f32 per batch.
#[divan::bench(sample_count = 5)]
fn epoch_batches_100_converted(b: Bencher) {
    let (_, d) = dataset();
    let p = Pipeline {
        normalize: Normalization::Symmetric,
        ..Default::default()
    };
    b.counter(ItemsCount::new(d.len())).bench(|| {
        let batcher = Batcher::new(&d, &p, 100, &Device::Cpu)
            .unwrap()
            .training(0)
            .with_cache_limit(0);
        batcher.epoch(1).map(|x| x.unwrap().indices.len()).sum::<usize>()
    });
}

/// Load + normalise + one shuffled epoch of batches of 100 (the cached path the
/// trainer uses: convert once, gather batches from the device tensor).
#[divan::bench(sample_count = 5)]
fn load_normalise_epoch_100(b: Bencher) {
    let n = dataset().1.len();
    let p = Pipeline {
        normalize: Normalization::Symmetric,
        ..Default::default()
    };
    b.counter(ItemsCount::new(n)).bench(|| {
        let (_, d) = dataset();
        let batcher = Batcher::new(&d, &p, 100, &Device::Cpu).unwrap().training(0);
        batcher.epoch(1).map(|x| x.unwrap().indices.len()).sum::<usize>()
    });
}
