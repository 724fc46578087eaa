//! Real MNIST and Fashion-MNIST through DIGITLAB_DATA.
use digitlab_data::catalog::{self, FileState};
use digitlab_data::{DatasetKind, ImageShape, Split};
use digitlab_integration_tests::data_dir;

#[test]
#[cfg_attr(
    not(has_digitlab_data),
    ignore = "needs real MNIST: run `cargo xtask download mnist` and set DIGITLAB_DATA"
)]
fn mnist_has_the_published_sizes_and_first_labels() {
    let dir = data_dir();
    let train = catalog::load(DatasetKind::Mnist, Split::Train, &dir).unwrap();
    let test = catalog::load(DatasetKind::Mnist, Split::Test, &dir).unwrap();
    assert_eq!(train.len(), 60_000);
    assert_eq!(test.len(), 10_000);
    assert_eq!(train.shape(), ImageShape::new(1, 28, 28));
    assert_eq!(&train.labels()[..5], &[5, 0, 4, 1, 9]);
    assert_eq!(train.class_counts().iter().sum::<usize>(), 60_000);
    // The 3 vs 6 test set has 1,968 images (1,010 threes and 958 sixes).
    let b = test.filter_classes(&[3, 6]).unwrap();
    assert_eq!(b.class_counts(), vec![1010, 958]);
}

#[test]
#[cfg_attr(
    not(has_digitlab_data),
    ignore = "needs real MNIST: run `cargo xtask download mnist` and set DIGITLAB_DATA"
)]
fn imported_files_verify_against_published_checksums() {
    let states = catalog::file_states(DatasetKind::Mnist, &data_dir(), true);
    assert_eq!(states.len(), 4);
    for (f, s) in states {
        assert!(matches!(s, FileState::Valid(_)), "{}: {s:?}", f.name);
    }
}

#[test]
#[cfg_attr(
    not(has_fashion_mnist),
    ignore = "needs real Fashion-MNIST: run `cargo xtask download fashion-mnist` and set DIGITLAB_DATA"
)]
fn fashion_mnist_loads_with_class_names() {
    let dir = data_dir();
    let test = catalog::load(DatasetKind::FashionMnist, Split::Test, &dir).unwrap();
    assert_eq!(test.len(), 10_000);
    assert_eq!(test.class_names()[9], "Ankle boot");
    assert!(test.class_counts().iter().all(|&c| c == 1000));
}
