//! Typed per-parameter optimizer state, and its named-tensor form for checkpoints
//! (`<param>.<slot>`, the format `optim-e{N}.safetensors` has always had).
use super::Param;
use candle_core::{Result, Tensor};
use std::collections::BTreeMap;

/// What an optimizer keeps for one parameter (a momentum buffer, Adam's moments).
pub trait ParamState: Sized {
    /// Slot names; a slot is stored as `<param>.<slot>`.
    const SLOTS: &'static [&'static str];
    /// The slot tensors, in [`ParamState::SLOTS`] order.
    fn tensors(&self) -> Vec<&Tensor>;
    /// The state from its slot tensors, in [`ParamState::SLOTS`] order.
    fn from_tensors(tensors: Vec<Tensor>) -> Self;
}

/// One optional state per parameter, aligned with the optimizer's parameters
/// (`None` until the parameter's first update).
#[derive(Debug, Clone)]
pub struct PerParam<S> {
    states: Vec<Option<S>>,
}

impl<S: ParamState> PerParam<S> {
    /// No state yet for `n` parameters.
    pub fn new(n: usize) -> Self {
        Self {
            states: (0..n).map(|_| None).collect(),
        }
    }

    pub fn get(&self, i: usize) -> Option<&S> {
        self.states[i].as_ref()
    }

    pub fn set(&mut self, i: usize, state: S) {
        self.states[i] = Some(state);
    }

    /// The named tensors of every parameter that has state: copies, since the fused
    /// updates ([`super::fused`]) write state in place.
    pub fn to_tensors(&self, params: &[Param]) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for (p, s) in params.iter().zip(&self.states) {
            if let Some(s) = s {
                for (slot, t) in S::SLOTS.iter().zip(s.tensors()) {
                    // State is written in place only on the CPU, where a copy cannot
                    // fail; elsewhere sharing the tensor is safe.
                    out.insert(format!("{}.{slot}", p.name), t.copy().unwrap_or_else(|_| t.clone()));
                }
            }
        }
        out
    }

    /// Reads named tensors back: every entry must be a slot of one of `params`
    /// with its shape, and a parameter has all its slots or none. Values take the
    /// parameter's dtype and device.
    pub fn from_tensors(params: &[Param], mut named: BTreeMap<String, Tensor>) -> Result<Self> {
        let mut states = Vec::with_capacity(params.len());
        for p in params {
            let keys: Vec<String> = S::SLOTS.iter().map(|s| format!("{}.{s}", p.name)).collect();
            let found: Vec<Option<Tensor>> = keys.iter().map(|k| named.remove(k)).collect();
            if found.iter().all(Option::is_none) {
                states.push(None);
                continue;
            }
            let mut tensors = Vec::with_capacity(keys.len());
            for (key, t) in keys.iter().zip(found) {
                let Some(t) = t else {
                    candle_core::bail!("optimizer state has other slots of `{}` but not `{key}`", p.name);
                };
                if t.dims() != p.var.dims() {
                    candle_core::bail!(
                        "optimizer state `{key}`: expected shape {:?}, found {:?}",
                        p.var.dims(),
                        t.dims()
                    );
                }
                // A copy: the caller's tensor must not change when the state is
                // updated in place.
                tensors.push(t.to_dtype(p.var.dtype())?.to_device(p.var.device())?.copy()?);
            }
            states.push(Some(S::from_tensors(tensors)));
        }
        if let Some(key) = named.keys().next() {
            candle_core::bail!(
                "optimizer state `{key}` is not a slot ({}) of a parameter this optimizer updates",
                S::SLOTS.join(", ")
            );
        }
        Ok(Self { states })
    }
}
