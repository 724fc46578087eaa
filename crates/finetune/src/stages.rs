//! Which parts of a backbone train when fine-tuning beyond the linear probe:
//! "the last N stages" (timm's `unfreeze`, fastai's `freeze_to(-N)`) or the whole
//! network, from the stages each architecture lists ([`digitlab_models::Backbone::stages`]).
use digitlab_models::Stage;

use crate::error::{FinetuneError, Result};
use crate::zoo::CreatedModel;

/// How much of the backbone trains (the new head always does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unfreeze {
    /// The last `n` stages (`0`: the head alone, a linear probe).
    Last(usize),
    /// Every stage.
    Full,
}

/// Parameter-name prefixes, trainable and frozen, for `unfreeze` on `created`:
/// `trainable` is the head prefix followed by the unfrozen stages' prefixes (in
/// stage order), `frozen` the prefixes of the other stages. Errors when the
/// architecture lists no stages or has fewer than `n`.
pub fn unfreeze_groups(created: &CreatedModel, unfreeze: Unfreeze) -> Result<(Vec<String>, Vec<String>)> {
    let backbone = created.backbone();
    split_stages(created.name, &backbone.stages(), backbone.head_prefix(), unfreeze)
}

/// [`unfreeze_groups`], and makes the frozen stages run in eval mode from now on
/// ([`digitlab_models::Backbone::freeze_stages`]): training the model then leaves their batch-norm
/// statistics untouched. Their parameters must still be kept out of the optimizer
/// (the `frozen` prefixes).
pub fn apply_unfreeze(created: &CreatedModel, unfreeze: Unfreeze) -> Result<(Vec<String>, Vec<String>)> {
    let backbone = created.backbone();
    let stages = backbone.stages();
    let groups = split_stages(created.name, &stages, backbone.head_prefix(), unfreeze)?;
    let n = match unfreeze {
        Unfreeze::Full => 0,
        Unfreeze::Last(n) => stages.len() - n,
    };
    backbone.freeze_stages(n)?;
    Ok(groups)
}

/// [`unfreeze_groups`] on a list of stages (`model` names it in errors).
pub fn split_stages(
    model: &str,
    stages: &[Stage],
    head_prefix: &str,
    unfreeze: Unfreeze,
) -> Result<(Vec<String>, Vec<String>)> {
    let n = match unfreeze {
        Unfreeze::Full => stages.len(),
        Unfreeze::Last(n) => n,
    };
    if stages.is_empty() && unfreeze != Unfreeze::Last(0) {
        return Err(FinetuneError::Config(format!(
            "{model} is not split into stages: only a frozen backbone (unfreeze = 0) is possible"
        )));
    }
    if n > stages.len() {
        let names: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
        return Err(FinetuneError::Config(format!(
            "unfreeze = {n}, but {model} has {} stages ({}); use at most {} or mode = \"full\"",
            stages.len(),
            names.join(", "),
            stages.len()
        )));
    }
    let split = stages.len() - n;
    let flat = |s: &[Stage]| -> Vec<String> { s.iter().flat_map(|s| s.prefixes.iter().cloned()).collect() };
    let mut trainable = vec![head_prefix.to_string()];
    trainable.extend(flat(&stages[split..]));
    Ok((trainable, flat(&stages[..split])))
}

/// Whether variable `name` lies under one of `prefixes` (a prefix followed by `.`).
pub fn under_any(name: &str, prefixes: &[String]) -> bool {
    prefixes
        .iter()
        .any(|p| name.strip_prefix(p.as_str()).is_some_and(|r| r.starts_with('.')))
}
