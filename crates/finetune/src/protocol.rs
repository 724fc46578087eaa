//! How much of a backbone trains, and how: the fine-tuning protocol of one
//! `[[backbones]]` entry.
//!
//! ```toml
//! [[backbones]]
//! model = "resnet18"
//! pretrained = "torchvision:resnet18"
//! mode = "unfreeze"        # frozen (default) | unfreeze | full
//! unfreeze = 1             # mode = "unfreeze": the last N stages train
//! head_epochs = 1          # train the head alone first (fastai's fine_tune)
//! epochs = 3               # epochs with the backbone trainable (default [transfer].epochs)
//! backbone_lr_mult = 0.1   # backbone learning rate = lr x this (default 0.1)
//! layer_decay = 0.5        # and x this per stage further from the head (default 1)
//! frozen_bn = "eval"       # eval (default) | train: the coursework's model.train() protocol
//! unfrozen_bn = "eval"     # batch norm of the stages that train: eval (default) | train
//! augment = { crop_padding = 2 }   # only when the backbone runs every epoch
//! ```
//!
//! `mode = "frozen"` with `frozen_bn = "eval"` is the linear probe on cached
//! features. Everything else runs the backbone on every batch through
//! [`digitlab_train::fit`]: the head and the unfrozen stages are trainable
//! parameter groups, the frozen stages run in eval mode (batch-norm statistics
//! untouched) unless `frozen_bn = "train"`, which reproduces the coursework: its
//! "frozen" backbones ran in `model.train()` mode, so batch norm used batch
//! statistics and its running statistics drifted.
//!
//! The stages that train keep batch norm on its running statistics too
//! (`unfrozen_bn = "eval"`, the default; their weights and batch-norm affine
//! parameters still train), as Keras advises for fine-tuning. With batch
//! statistics instead (`"train"`, PyTorch's `model.train()`), the features the
//! head phase was trained on change at the first step and the running
//! statistics that evaluation uses drift towards the new data's. Measured on
//! MNIST with ImageNet EfficientNet-Lite0 (`configs/mnist_finetune.toml`, 898
//! training images): after the head phase's 78.1% validation accuracy,
//! unfreezing the last stage reached 83.1% in eval mode and 79.4% in train mode
//! (85.8% and 79.8% on the test images); the SVHN CNN, whose statistics come
//! from real digits, is indifferent (87.4% and 88.2% test).
use serde::{Deserialize, Serialize};

use crate::stages::Unfreeze;

/// What trains besides the new head (`mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The backbone is fixed: a linear probe (on cached features unless `frozen_bn = "train"`).
    #[default]
    Frozen,
    /// The last `unfreeze` stages train with the head.
    Unfreeze,
    /// Every stage trains.
    Full,
}

impl Mode {
    pub fn is_frozen(&self) -> bool {
        *self == Mode::Frozen
    }
    /// The config spelling.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Frozen => "frozen",
            Mode::Unfreeze => "unfreeze",
            Mode::Full => "full",
        }
    }
}

/// The mode batch norm (and dropout) runs in: in the frozen stages (`frozen_bn`)
/// or in the stages that train (`unfrozen_bn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BnMode {
    /// Eval mode: running statistics used and never updated (the right default
    /// for frozen stages).
    #[default]
    Eval,
    /// Train mode: batch statistics, running statistics updated (for frozen
    /// stages, the coursework's protocol).
    Train,
}

impl BnMode {
    pub fn is_eval(&self) -> bool {
        *self == BnMode::Eval
    }
}

/// Default `unfrozen_bn`: eval mode (see the module docs for the measurement behind it).
pub const DEFAULT_UNFROZEN_BN: BnMode = BnMode::Eval;

/// Default `backbone_lr_mult`: pretrained layers move ten times slower than the new head.
pub const DEFAULT_BACKBONE_LR_MULT: f64 = 0.1;

/// The resolved protocol of one backbone (defaults filled in).
#[derive(Debug, Clone, PartialEq)]
pub struct Protocol {
    pub mode: Mode,
    /// Stages that train in the backbone phase (`None`: all of them).
    pub unfreeze: Unfreeze,
    /// Head-only epochs before the backbone phase.
    pub head_epochs: usize,
    /// Epochs of the main phase (head alone for `frozen`, else with the backbone).
    pub epochs: usize,
    pub backbone_lr_mult: f64,
    pub layer_decay: f64,
    pub frozen_bn: BnMode,
    /// Batch norm of the stages that train.
    pub unfrozen_bn: BnMode,
}

impl Protocol {
    /// Whether the backbone runs on every training batch (no feature cache for the main phase).
    pub fn is_live(&self) -> bool {
        !self.mode.is_frozen() || !self.frozen_bn.is_eval()
    }

    /// A short name for tables: `frozen`, `frozen (bn train)`, `unfreeze 2`,
    /// `full`, with `+ head 1` when a head-only phase comes first.
    pub fn describe(&self) -> String {
        let mut s = match (self.mode, self.unfreeze) {
            (Mode::Frozen, _) => "frozen".to_string(),
            (Mode::Unfreeze, Unfreeze::Last(n)) => format!("unfreeze {n}"),
            (_, _) => "full".to_string(),
        };
        if !self.frozen_bn.is_eval() {
            s += " (bn train)";
        }
        if !self.mode.is_frozen() && self.frozen_bn.is_eval() && self.unfrozen_bn != DEFAULT_UNFROZEN_BN {
            s += match self.unfrozen_bn {
                BnMode::Eval => " (unfrozen bn eval)",
                BnMode::Train => " (unfrozen bn train)",
            };
        }
        if self.head_epochs > 0 {
            s = format!("head {} + {s}", self.head_epochs);
        }
        s
    }

    /// Learning-rate multipliers of the trainable stages, in stage order (last =
    /// nearest the head): `backbone_lr_mult × layer_decay^k`, `k` counting stages
    /// from the head (0 for the last one), as timm's layer-wise decay does.
    pub fn stage_lr_scales(&self, trainable_stages: usize) -> Vec<f64> {
        (0..trainable_stages)
            .map(|i| {
                let from_head = trainable_stages - 1 - i;
                self.backbone_lr_mult * self.layer_decay.powi(from_head as i32)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proto(mode: Mode) -> Protocol {
        Protocol {
            mode,
            unfreeze: Unfreeze::Last(2),
            head_epochs: 0,
            epochs: 3,
            backbone_lr_mult: 0.1,
            layer_decay: 0.5,
            frozen_bn: BnMode::Eval,
            unfrozen_bn: DEFAULT_UNFROZEN_BN,
        }
    }

    #[test]
    fn layer_decay_counts_from_the_head() {
        let s = proto(Mode::Unfreeze).stage_lr_scales(3);
        assert_eq!(s, vec![0.1 * 0.25, 0.1 * 0.5, 0.1]);
        assert!(proto(Mode::Full).stage_lr_scales(0).is_empty());
    }

    #[test]
    fn live_and_names() {
        assert!(!proto(Mode::Frozen).is_live());
        assert!(proto(Mode::Unfreeze).is_live());
        let mut p = proto(Mode::Frozen);
        p.frozen_bn = BnMode::Train;
        assert!(p.is_live());
        assert_eq!(p.describe(), "frozen (bn train)");
        let mut p = proto(Mode::Unfreeze);
        p.head_epochs = 1;
        assert_eq!(p.describe(), "head 1 + unfreeze 2");
        p.unfreeze = Unfreeze::Full;
        p.mode = Mode::Full;
        assert_eq!(p.describe(), "head 1 + full");
    }
}
