//! `digitlab predict --model NAME --pretrained SRC photo.jpg`: the ImageNet top-5,
//! on seeded ResNet-18 weights written to a file (no real ImageNet weights are
//! reachable from the test machines), and its errors.
use std::path::Path;
use std::process::{Command, Output};

use digitlab_finetune::zoo::CreateOptions;
use digitlab_finetune::{create_model, imagenet_top5, RgbImage, WeightsSource};
use digitlab_models::InputShape;

fn digitlab(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_digitlab"));
    c.args(args).env_remove("DIGITLAB_DATA");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run digitlab")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn predict_prints_the_imagenet_top5_of_a_jpeg() {
    let dir = tempfile::tempdir().unwrap();
    let input = InputShape {
        channels: 3,
        height: 224,
        width: 224,
    };
    let opts = CreateOptions {
        seed: 5,
        ..CreateOptions::new(input)
    };
    let m = create_model("resnet18", &WeightsSource::None, 1000, &opts).unwrap();
    let weights = dir.path().join("resnet18-seeded.safetensors");
    m.varmap.save(&weights).unwrap();
    let photo = dir.path().join("photo.jpg");
    image::RgbImage::from_fn(320, 240, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x * y) % 256) as u8])
    })
    .save(&photo)
    .unwrap();

    let o = digitlab(
        &[
            "predict",
            "--model",
            "resnet18",
            "--pretrained",
            weights.to_str().unwrap(),
            photo.to_str().unwrap(),
        ],
        &[],
    );
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("resnet18") && stdout.contains("top-5"), "{stdout}");
    let ranked: Vec<(String, f64)> = stdout
        .lines()
        .filter_map(|l| {
            let (rank, rest) = l.trim().split_once(". ")?;
            rank.parse::<usize>().ok()?;
            let (pct, name) = rest.trim().split_once("%  ")?;
            Some((name.to_string(), pct.trim().parse().ok()?))
        })
        .collect();
    assert_eq!(ranked.len(), 5, "{stdout}");
    assert!(ranked.windows(2).all(|w| w[0].1 >= w[1].1), "{stdout}");
    // The library's answer on the same decoded image (same weights, loaded back).
    let rgb = image::open(&photo).unwrap().to_rgb8();
    let img = RgbImage::new(rgb.width() as usize, rgb.height() as usize, rgb.into_raw()).unwrap();
    let loaded = create_model(
        "resnet18",
        &WeightsSource::Local(weights.clone()),
        1000,
        &CreateOptions::new(input),
    )
    .unwrap();
    let want = imagenet_top5(&loaded, &img).unwrap();
    for ((name, pct), (want_name, p)) in ranked.iter().zip(&want) {
        assert_eq!(name, want_name, "{stdout}");
        assert!((pct - 100.0 * *p as f64).abs() < 0.006, "{stdout}");
    }
}

#[test]
fn predict_imagenet_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let photo = dir.path().join("p.png");
    image::RgbImage::new(64, 64).save(&photo).unwrap();
    let p = photo.to_str().unwrap();
    // --model needs --pretrained, and excludes --checkpoint.
    let o = digitlab(&["predict", "--model", "resnet18", p], &[]);
    assert!(!o.status.success() && text(&o).contains("--pretrained"), "{}", text(&o));
    let o = digitlab(
        &[
            "predict",
            "--checkpoint",
            "x",
            "--model",
            "resnet18",
            "--pretrained",
            "y.pth",
            p,
        ],
        &[],
    );
    assert!(!o.status.success(), "{}", text(&o));
    // Not an ImageNet model.
    let o = digitlab(
        &["predict", "--model", "lenet5", "--pretrained", "w.safetensors", p],
        &[],
    );
    assert!(
        !o.status.success() && text(&o).contains("not an ImageNet model"),
        "{}",
        text(&o)
    );
    // torchvision weights missing from an empty torch.hub cache, offline.
    let o = digitlab(
        &[
            "predict",
            "--model",
            "resnet18",
            "--pretrained",
            "torchvision:resnet18",
            p,
        ],
        &[("TORCH_HOME", dir.path()), ("DIGITLAB_OFFLINE", Path::new("1"))],
    );
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains("resnet18-f37072fd.pth") && t.contains("https://download.pytorch.org/models/resnet18-f37072fd.pth"),
        "{t}"
    );
    // An unreadable image is named before any weights are loaded.
    let o = digitlab(
        &[
            "predict",
            "--model",
            "resnet18",
            "--pretrained",
            "torchvision:resnet18",
            "nope.jpg",
        ],
        &[("TORCH_HOME", dir.path()), ("DIGITLAB_OFFLINE", Path::new("1"))],
    );
    assert!(!o.status.success() && text(&o).contains("nope.jpg"), "{}", text(&o));
}
