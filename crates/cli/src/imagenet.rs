//! `digitlab predict --model NAME --pretrained SRC photo.jpg`: the top-5 ImageNet
//! classes of each photo, the sanity check of new weights
//! (`digitlab_finetune::imagenet`).
use crate::device::parse_device;
use crate::Common;
use anyhow::{bail, Context, Result};
use digitlab_finetune::imagenet::{self, RgbImage};
use digitlab_finetune::zoo::{resolve_arch, CreateOptions};
use digitlab_finetune::{create_model, WeightsSource};
use std::path::PathBuf;

pub fn predict(model: &str, pretrained: &str, images: &[PathBuf], common: &Common) -> Result<()> {
    if images.is_empty() {
        bail!("give at least one image file");
    }
    let source: WeightsSource = pretrained.parse()?;
    if source.is_none() {
        bail!("--pretrained none: random weights have no ImageNet classes; give ImageNet weights (e.g. torchvision:{model})");
    }
    let arch = resolve_arch(model)?;
    // The model's ImageNet input (224 px RGB); models without one are refused.
    let Some(input) = arch.native_input.filter(|i| i.channels == 3) else {
        bail!("{}: not an ImageNet model (no RGB input size of its own)", arch.name);
    };
    // Decode every image before the (slow) weight loading, so a bad file fails early.
    let decoded = images
        .iter()
        .map(|p| {
            let img = image::open(p).with_context(|| format!("{}: not a readable image", p.display()))?;
            let rgb = img.to_rgb8();
            let (w, h) = (rgb.width() as usize, rgb.height() as usize);
            Ok(RgbImage::new(w, h, rgb.into_raw())?)
        })
        .collect::<Result<Vec<_>>>()?;
    let opts = CreateOptions {
        device: parse_device(&common.device)?,
        ..CreateOptions::new(input)
    };
    let created = create_model(arch.name, &source, imagenet::NUM_CLASSES, &opts)?;
    println!("{} ({source}), ImageNet top-5:", arch.name);
    for (path, img) in images.iter().zip(&decoded) {
        println!("{}:", path.display());
        for (rank, (name, p)) in imagenet::imagenet_top5(&created, img)?.iter().enumerate() {
            println!("  {}. {:>6.2}%  {name}", rank + 1, 100.0 * p);
        }
    }
    Ok(())
}
