//! `fit` trains a model it knows nothing about: a `ModuleT` defined here (not a
//! `ModelConfig`), with parameter groups that are frozen, scaled to a zero
//! learning rate or trained, and checkpoints/resume through the callback.
use candle_core::{DType, Device, Module, ModuleT, Tensor, Var};
use candle_nn::{Linear, VarMap};
use digitlab_data::{catalog, Batcher, Dataset, DatasetKind, Pipeline, Split};
use digitlab_models::{OutputKind, SeededVarMap};
use digitlab_train::fit::{Checkpoints, DivergenceGuard, RunInfo};
use digitlab_train::optim::{AdamConfig, OptimizerConfig};
use digitlab_train::{trainable_params, Fit, FitState, MetricName, ParamGroup};
use std::path::Path;

/// A two-layer network: random ReLU features of the flattened image, then a linear head.
struct FeaturesAndHead {
    backbone: Linear,
    head: Linear,
}

impl ModuleT for FeaturesAndHead {
    fn forward_t(&self, xs: &Tensor, _train: bool) -> candle_core::Result<Tensor> {
        let h = self.backbone.forward(&xs.flatten_from(1)?)?.relu()?;
        self.head.forward(&h)
    }
}

fn model(seed: u64) -> (FeaturesAndHead, VarMap) {
    let varmap = VarMap::new();
    let vb = SeededVarMap::var_builder(&varmap, seed, DType::F32, &Device::Cpu);
    let m = FeaturesAndHead {
        backbone: candle_nn::linear(64, 48, vb.pp("backbone")).unwrap(),
        head: candle_nn::linear(48, 10, vb.pp("head")).unwrap(),
    };
    (m, varmap)
}

/// The variables whose names start with `prefix`.
fn group(varmap: &VarMap, prefix: &str) -> Vec<(String, Var)> {
    trainable_params(varmap)
        .into_iter()
        .filter(|(n, _)| n.starts_with(prefix))
        .collect()
}

/// The exact bits of every variable in `params`, by name.
fn bits(params: &[(String, Var)]) -> Vec<(String, Vec<u32>)> {
    params
        .iter()
        .map(|(n, v)| {
            let vals: Vec<f32> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            (n.clone(), vals.iter().map(|x| x.to_bits()).collect())
        })
        .collect()
}

fn digits() -> (Dataset, Dataset) {
    let all = catalog::load(DatasetKind::Digits, Split::Train, Path::new("/nonexistent")).unwrap();
    all.split(0.2, 5, true).unwrap()
}

fn adam() -> OptimizerConfig {
    AdamConfig::new(0.01).into()
}

#[test]
fn a_frozen_group_stays_bit_identical_while_the_trainable_group_learns() {
    let (train, val) = digits();
    let pipeline = Pipeline::default();
    let batches = Batcher::new(&train, &pipeline, 64, &Device::Cpu).unwrap().training(5);
    let val_batches = Batcher::new(&val, &pipeline, 500, &Device::Cpu).unwrap();
    let (net, varmap) = model(1);
    let (backbone, head) = (group(&varmap, "backbone."), group(&varmap, "head."));
    let (backbone_before, head_before) = (bits(&backbone), bits(&head));
    let mut optimizer = adam()
        .build_groups(vec![
            ParamGroup::frozen("backbone", backbone.clone()),
            ParamGroup::trainable("head", head.clone()),
        ])
        .unwrap();
    let names: Vec<&str> = optimizer.params().iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["head.bias", "head.weight"]);

    let mut guard = DivergenceGuard;
    let outcome = Fit::new(&net, OutputKind::Logits(10), optimizer.as_mut(), &batches)
        .epochs(4)
        .validation(&val_batches)
        .select(MetricName::ValAccuracy)
        .callback(&mut guard)
        .run()
        .unwrap();

    assert_eq!(bits(&backbone), backbone_before, "frozen tensors are bit-identical");
    let after = bits(&head);
    for ((name, a), (_, b)) in after.iter().zip(&head_before) {
        assert_ne!(a, b, "{name} was trained");
    }
    let h = &outcome.state.history;
    assert_eq!(h.len(), 4);
    assert!(h[3]["train_loss"] < h[0]["train_loss"], "{h:?}");
    // Ten classes: chance is 0.1; a linear probe on random ReLU features does far better.
    let val_acc = outcome.val.as_ref().unwrap().accuracy();
    assert!(val_acc > 0.6, "validation accuracy {val_acc}");
    assert!(outcome.state.best_epoch.is_some() && outcome.complete && !outcome.stopped_early);
    assert!(optimizer.state_tensors().keys().all(|k| k.starts_with("head.")));
}

#[test]
fn a_learning_rate_multiplier_of_zero_keeps_values_and_one_trains() {
    let (train, _) = digits();
    let pipeline = Pipeline::default();
    let batches = Batcher::new(&train, &pipeline, 64, &Device::Cpu).unwrap().training(5);
    let run = |backbone_scale: f64| {
        let (net, varmap) = model(2);
        let (backbone, head) = (group(&varmap, "backbone."), group(&varmap, "head."));
        let before = (bits(&backbone), bits(&head));
        let mut optimizer = adam()
            .build_groups(vec![
                ParamGroup::trainable("backbone", backbone.clone()).with_lr_scale(backbone_scale),
                ParamGroup::trainable("head", head.clone()),
            ])
            .unwrap();
        Fit::new(&net, OutputKind::Logits(10), optimizer.as_mut(), &batches)
            .epochs(1)
            .run()
            .unwrap();
        let state: Vec<String> = optimizer.state_tensors().into_keys().collect();
        (
            bits(&backbone) == before.0,
            bits(&head) == before.1,
            state.iter().any(|k| k.starts_with("backbone.")),
        )
    };
    // Multiplier 0: the values stay, the moments are still accumulated (unlike frozen).
    assert_eq!(run(0.0), (true, false, true));
    // Multiplier 1: the group trains like any other.
    assert_eq!(run(1.0), (false, false, true));
}

#[test]
fn checkpoints_and_resume_of_a_custom_model_are_bit_identical() {
    let (train, val) = digits();
    let pipeline = Pipeline::default();
    let batches = Batcher::new(&train, &pipeline, 64, &Device::Cpu).unwrap().training(9);
    let val_batches = Batcher::new(&val, &pipeline, 500, &Device::Cpu).unwrap();
    let info = RunInfo {
        config: serde_json::json!({"model": "features-and-head", "train": {"epochs": 3}}),
        seed: 3,
        class_names: train.class_names().to_vec(),
        input_shape: [1, 8, 8],
    };
    // Runs to epoch 3 in `dir`, stopping after `first` epochs and resuming when given.
    let run = |dir: &Path, first: Option<usize>| -> Vec<u8> {
        for stop_after in [first, None] {
            let (net, varmap) = model(3);
            let groups = vec![
                ParamGroup::frozen("backbone", group(&varmap, "backbone.")),
                ParamGroup::trainable("head", group(&varmap, "head.")),
            ];
            let mut optimizer = adam().build_groups(groups).unwrap();
            let mut saving = Checkpoints::new(dir, &varmap, info.clone());
            // Resuming needs a last.json; the first pass starts fresh.
            let state = if saving.last_path().is_file() {
                saving.resume(optimizer.as_mut(), &Device::Cpu, 3).unwrap()
            } else {
                FitState::default()
            };
            let outcome = Fit::new(&net, OutputKind::Logits(10), optimizer.as_mut(), &batches)
                .epochs(3)
                .validation(&val_batches)
                .select(MetricName::ValLoss)
                .resume_from(state)
                .stop_after(stop_after)
                .callback(&mut saving)
                .run()
                .unwrap();
            assert_eq!(outcome.complete, stop_after.is_none());
            if first.is_none() {
                break;
            }
        }
        let s = digitlab_train::checkpoint::read_sidecar(&dir.join("last.json")).unwrap();
        assert_eq!(s.epoch, 3);
        let mut bytes = std::fs::read(dir.join(&s.model_file)).unwrap();
        bytes.extend(std::fs::read(dir.join(s.optim_file.unwrap())).unwrap());
        bytes
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    assert_eq!(run(a.path(), None), run(b.path(), Some(1)), "resumed = uninterrupted");
}

/// Validation batches whose labels are shifted by one class: the better the model
/// learns the training labels, the worse its validation loss.
struct ShiftedLabels<'a>(Batcher<'a>);

impl digitlab_train::BatchSource for ShiftedLabels<'_> {
    fn num_batches(&self) -> usize {
        digitlab_train::BatchSource::num_batches(&self.0)
    }
    fn batches(&self, epoch: usize) -> Box<dyn Iterator<Item = digitlab_train::Result<digitlab_train::Batch>> + '_> {
        let shift = Tensor::new(&[1u32, 2, 3, 4, 5, 6, 7, 8, 9, 0], &Device::Cpu).unwrap();
        Box::new(self.0.batches(epoch).map(move |b| {
            let mut b = b?;
            b.labels = shift.index_select(&b.labels, 0)?;
            Ok(b)
        }))
    }
}

#[test]
fn keep_best_restores_the_best_epoch_not_the_last() {
    use digitlab_train::fit::KeepBest;
    let (train, val) = digits();
    let pipeline = Pipeline::default();
    let batches = Batcher::new(&train, &pipeline, 64, &Device::Cpu).unwrap().training(5);
    let val_batches = ShiftedLabels(Batcher::new(&val, &pipeline, 500, &Device::Cpu).unwrap());
    // (the weights' bits, the kept epoch, the validation losses)
    type Run = (Vec<(String, Vec<u32>)>, Option<usize>, Vec<f64>);
    let run = |epochs: usize, keep: bool| -> Run {
        let (net, varmap) = model(1);
        let params = trainable_params(&varmap);
        let mut optimizer = adam()
            .build_groups(vec![ParamGroup::trainable("all", params.clone())])
            .unwrap();
        let mut keep_best = KeepBest::of_varmap(&varmap);
        let mut fit = Fit::new(&net, OutputKind::Logits(10), optimizer.as_mut(), &batches)
            .epochs(epochs)
            .validation(&val_batches)
            .select(MetricName::ValLoss);
        if keep {
            fit = fit.callback(&mut keep_best);
        }
        let outcome = fit.run().unwrap();
        let losses = outcome.state.history.iter().map(|h| h["val_loss"]).collect();
        (bits(&params), keep_best.best_epoch(), losses)
    };
    let (after_one, _, _) = run(1, false);
    let (last, _, losses) = run(4, false);
    // Validation loss on shifted labels rises once the model learns: epoch 1 is best.
    assert!(losses.windows(2).all(|w| w[1] > w[0]), "{losses:?}");
    let (kept, best_epoch, _) = run(4, true);
    assert_eq!(best_epoch, Some(1));
    assert_eq!(kept, after_one, "the weights of epoch 1 are put back");
    assert_ne!(kept, last);
}

#[test]
fn an_incumbent_no_epoch_beats_is_put_back() {
    use digitlab_train::fit::KeepBest;
    let (train, val) = digits();
    let pipeline = Pipeline::default();
    let batches = Batcher::new(&train, &pipeline, 64, &Device::Cpu).unwrap().training(5);
    let val_batches = ShiftedLabels(Batcher::new(&val, &pipeline, 500, &Device::Cpu).unwrap());
    // (the weights' bits before and after, the kept epoch)
    let run = |margin: f64| {
        let (net, varmap) = model(1);
        let params = trainable_params(&varmap);
        let before = bits(&params);
        // The starting weights' own score: validation loss on the shifted labels.
        let start = digitlab_train::eval::evaluate_source(
            &net,
            OutputKind::Logits(10),
            &val_batches,
            10,
            digitlab_losses::LossKind::CrossEntropy,
        )
        .unwrap()
        .loss;
        let mut optimizer = adam()
            .build_groups(vec![ParamGroup::trainable("all", params.clone())])
            .unwrap();
        let mut keep = KeepBest::of_varmap(&varmap).with_incumbent().unwrap();
        Fit::new(&net, OutputKind::Logits(10), optimizer.as_mut(), &batches)
            .epochs(3)
            .validation(&val_batches)
            .select(MetricName::ValLoss)
            .baseline(Some(start + margin))
            .callback(&mut keep)
            .run()
            .unwrap();
        (before, bits(&params), keep.best_epoch())
    };
    // Learning the true labels only raises the loss on shifted ones: the start wins.
    let (before, after, kept) = run(0.0);
    assert_eq!(kept, Some(0));
    assert_eq!(after, before, "the starting weights are put back");
    // A weaker incumbent (its score made worse by hand) is beaten by epoch 1.
    let (before, after, kept) = run(100.0);
    assert_eq!(kept, Some(1));
    assert_ne!(after, before);
}
