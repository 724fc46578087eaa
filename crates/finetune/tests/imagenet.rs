//! `imagenet_top5` on seeded (formula) weights: not meaningful classes, but the
//! shape of the answer, the probabilities and the ordering are checked, and that
//! a model without an ImageNet head is refused.

use candle_core::{ModuleT, Tensor};
use digitlab_finetune::imagenet::{class_names, imagenet_topk, preprocess, NUM_CLASSES};
use digitlab_finetune::zoo::CreateOptions;
use digitlab_finetune::{create_model, imagenet_top5, RgbImage, WeightsSource};
use digitlab_models::InputShape;

const RGB224: InputShape = InputShape {
    channels: 3,
    height: 224,
    width: 224,
};

fn photo() -> RgbImage {
    // 300x200 with smooth colour gradients and a bright square.
    let (w, h) = (300, 200);
    let mut px = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            let square = (100..180).contains(&x) && (60..140).contains(&y);
            px.push(if square { 250 } else { (x * 255 / w) as u8 });
            px.push((y * 255 / h) as u8);
            px.push(((x + y) % 256) as u8);
        }
    }
    RgbImage::new(w, h, px).unwrap()
}

#[test]
fn top5_is_the_head_of_the_softmax_in_order() {
    let opts = CreateOptions {
        seed: 3,
        ..CreateOptions::new(RGB224)
    };
    let m = create_model("resnet18", &WeightsSource::None, NUM_CLASSES, &opts).unwrap();
    let img = photo();
    let top5 = imagenet_top5(&m, &img).unwrap();
    assert_eq!(top5.len(), 5);
    let all = imagenet_topk(&m, &img, NUM_CLASSES).unwrap();
    assert_eq!(all.len(), NUM_CLASSES);
    assert_eq!(&all[..5], &top5[..]);
    let sum: f32 = all.iter().map(|(_, p)| p).sum();
    assert!((sum - 1.0).abs() < 1e-4, "probabilities sum to {sum}");
    assert!(all.windows(2).all(|w| w[0].1 >= w[1].1), "not sorted");
    assert!(top5.iter().all(|(_, p)| *p > 0.0 && *p <= 1.0));
    // Each class once, names from torchvision's list.
    let names = class_names();
    let mut seen: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
    seen.sort();
    let mut want = names.clone();
    want.sort();
    assert_eq!(seen, want);
    // The same numbers as running the model by hand on the preprocessed image.
    let norm = m.arch.normalization.clone().unwrap();
    let x = Tensor::from_vec(
        preprocess(&img, 224, 224, &norm).unwrap(),
        (1, 3, 224, 224),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let probs: Vec<f32> = candle_nn::ops::softmax_last_dim(&m.model.forward_t(&x, false).unwrap())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let best = (0..NUM_CLASSES).max_by(|&a, &b| probs[a].total_cmp(&probs[b])).unwrap();
    assert_eq!(top5[0].0, names[best]);
    assert_eq!(top5[0].1, probs[best]);
    // Deterministic.
    assert_eq!(imagenet_top5(&m, &img).unwrap(), top5);
}

#[test]
fn models_without_an_imagenet_head_are_refused() {
    let m = create_model("resnet18", &WeightsSource::None, 10, &CreateOptions::new(RGB224)).unwrap();
    let e = imagenet_top5(&m, &photo()).unwrap_err().to_string();
    assert!(e.contains("1000-class") && e.contains("10 classes"), "{e}");
    // A 10-class checkpoint loaded for 1000 classes gets a fresh head: refused too.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ten.safetensors");
    m.varmap.save(&path).unwrap();
    let m = create_model(
        "resnet18",
        &WeightsSource::Local(path),
        NUM_CLASSES,
        &CreateOptions::new(RGB224),
    )
    .unwrap();
    let e = imagenet_top5(&m, &photo()).unwrap_err().to_string();
    assert!(e.contains("re-initialised") && e.contains("fc.weight"), "{e}");
}
