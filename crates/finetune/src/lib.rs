//! # digitlab-finetune
//!
//! Pretrained weights and frozen-backbone transfer learning for digit models: where
//! weights come from, how they are read, whether they fit the model, and how a new
//! head is trained on cached backbone features.
//!
//! - [`source`]: [`WeightsSource`] — `none`, a Hugging Face hub repo
//!   (`hf:timm/resnet18.a1_in1k[@revision][:file]`), or a local file — parsed from
//!   strings (CLI flags, config files, serde).
//! - [`hub`]: [`HubConfig`] (cache directory, offline mode, endpoint, from the
//!   `HF_*` environment variables or built directly) and [`hub::resolve`], which finds
//!   a hub file in the standard Hugging Face cache and otherwise downloads it with
//!   hf-hub, failing with a message that says how to pre-download it.
//! - [`builtin`]: the ccexam SVHN CNN's weights, compiled in
//!   (`builtin:ccexam-svhn-cnn.safetensors`), for a pretrained network with no files.
//! - [`torchhub`]: torchvision's published ImageNet weights (`torchvision:vgg16`)
//!   through torch.hub's checkpoint cache, hash-checked as torch.hub does.
//! - [`pth`]: a reader for PyTorch `torch.save` checkpoints that interprets the
//!   pickle as data only and refuses any callable outside a tensor-rebuild
//!   allow-list (so a malicious `.pth` is rejected, never run).
//! - [`weights`]: [`load_weights`] for `.safetensors` and PyTorch files,
//!   [`check_against`] / [`LoadReport`] listing every missing, unexpected or
//!   mis-shaped tensor at once (with classification-head tensors re-initialised
//!   rather than failing), and [`strip_common_prefixes`] for `module.` / `model.`.
//! - [`zoo`]: [`create_model`]`(name, pretrained, num_classes, options)` — ResNet,
//!   VGG, EfficientNet-Lite0, the ccexam SVHN CNN, LeNet-5 by name, torchvision and
//!   timm layouts, every mismatch reported at once, the head re-initialised.
//! - [`imagenet`]: [`imagenet_top5`] — the top-5 ImageNet classes of a photo under a
//!   1000-class model, with torchvision's evaluation preprocessing.
//! - [`features`]: eval-mode backbone embeddings computed once and kept in a
//!   [`FeatureCache`] (safetensors, keyed by model, weights, data and preprocessing).
//! - [`head`]: [`train_head`] — a new linear head trained on cached features with
//!   digitlab-train's optimizers, losses and metrics; the backbone stays frozen.
//! - [`transfer`]: [`TransferConfig`] (TOML) and [`run_transfer`] — several backbones
//!   under one frozen-head protocol, one `summary.json` each (`digitlab transfer`).
//! - [`export`]: the complete classifier of each transfer backbone, `model.safetensors`
//!   (torchvision / timm names, the new head included) and its `model.json` sidecar.
//! - [`stages`]: [`stages::unfreeze_groups`] — the trainable and frozen parameter
//!   prefixes for "the last N stages" or the full network.
//! - [`compare`]: one Markdown / CSV / PNG table of any runs' `summary.json`
//!   (`digitlab compare`).
//! - [`error`]: [`FinetuneError`] and [`Result`].
//!
//! A randomly initialised backbone with a new 10-class head (no files, no network):
//!
//! ```
//! use digitlab_finetune::{create_model, CreateOptions, WeightsSource};
//! use digitlab_models::InputShape;
//! let input = InputShape { channels: 3, height: 32, width: 32 };
//! let created = create_model("lenet5", &WeightsSource::None, 10, &CreateOptions::new(input))?;
//! assert_eq!((created.name, created.num_classes), ("lenet5", 10));
//! assert!(created.pretrained.is_none());
//! # Ok::<(), digitlab_finetune::FinetuneError>(())
//! ```
//!
//! Pretrained weights from the hub, checked against the tensors a model expects:
//!
//! ```no_run
//! use digitlab_finetune::{hub, load_weights, check_against, HubConfig, WeightsSource};
//!
//! # fn main() -> digitlab_finetune::Result<()> {
//! let source: WeightsSource = "hf:timm/resnet18.a1_in1k".parse()?;
//! let config = HubConfig::from_env()?;
//! if let Some(path) = hub::resolve_source(&config, &source)? {
//!     let found = load_weights(&path)?;
//!     let expected = vec![("fc.weight".to_string(), vec![10, 512])];
//!     let report = check_against(&expected, &found, &["fc."]).into_result()?;
//!     println!("{report}");
//! }
//! # Ok(())
//! # }
//! ```

pub mod builtin;
pub mod compare;
pub mod error;
pub mod export;
pub mod features;
pub mod head;
pub mod hub;
pub mod imagenet;
pub mod protocol;
pub mod pth;
pub mod source;
pub mod stages;
pub mod torchhub;
pub mod transfer;
pub mod tune;
pub mod weights;
pub mod zoo;

pub use compare::{compare, RunRow};
pub use error::{FinetuneError, Result};
pub use features::{CacheStats, FeatureCache, FeatureKey};
pub use head::{train_head, HeadConfig, HeadRun, LabeledFeatures, Standardizer};
pub use hub::{HubConfig, HubUnavailable, DEFAULT_FILE, FALLBACK_FILES};
pub use imagenet::{imagenet_top5, RgbImage};
pub use pth::{read_pth, read_pth_with, PthOptions};
pub use source::WeightsSource;
pub use transfer::{
    run_transfer, run_transfer_all, BackboneFailure, BackboneSpec, TransferConfig, TransferOutcome, TransferRun,
    TransferRunOptions, TransferSummary, TRANSFER_KIND,
};
pub use weights::{
    check_against, detect_format, load_weights, strip_common_prefixes, LoadReport, LoadedWeights, WeightsFormat,
};
pub use zoo::{create_model, CreateOptions, CreatedModel, MODEL_NAMES};
