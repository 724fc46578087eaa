//! # digitlab-finetune
//!
//! Pretrained weights for fine-tuning digit models: where they come from, how they
//! are read, and whether they fit the model.
//!
//! - [`source`]: [`WeightsSource`] — `none`, a Hugging Face hub repo
//!   (`hf:timm/resnet18.a1_in1k[@revision][:file]`), or a local file — parsed from
//!   strings (CLI flags, config files, serde).
//! - [`hub`]: [`HubConfig`] (cache directory, offline mode, endpoint, from the
//!   `HF_*` environment variables or built directly) and [`hub::resolve`], which finds
//!   a hub file in the standard Hugging Face cache and otherwise downloads it with
//!   hf-hub, failing with a message that says how to pre-download it.
//! - [`pth`]: a reader for PyTorch `torch.save` checkpoints that interprets the
//!   pickle as data only and refuses any callable outside a tensor-rebuild
//!   allow-list (so a malicious `.pth` is rejected, never run).
//! - [`weights`]: [`load_weights`] for `.safetensors` and PyTorch files,
//!   [`check_against`] / [`LoadReport`] listing every missing, unexpected or
//!   mis-shaped tensor at once (with classification-head tensors re-initialised
//!   rather than failing), and [`strip_common_prefixes`] for `module.` / `model.`.
//! - [`error`]: [`FinetuneError`] and [`Result`].
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

pub mod error;
pub mod hub;
pub mod pth;
pub mod source;
pub mod weights;
// Planned next to these (not written yet): `pub mod backbone;` (pretrained backbones
// built from `digitlab-models` with loaded weights) and `pub mod features;` (frozen-
// backbone feature caching).

pub use error::{FinetuneError, Result};
pub use hub::{HubConfig, HubUnavailable, DEFAULT_FILE, FALLBACK_FILES};
pub use pth::{read_pth, read_pth_with, PthOptions};
pub use source::WeightsSource;
pub use weights::{
    check_against, detect_format, load_weights, strip_common_prefixes, LoadReport, LoadedWeights,
    WeightsFormat,
};
