//! Every backbone's stages partition its non-head parameters, and "the last N
//! stages" selects what it says.
use candle_core::Device;
use digitlab_finetune::stages::{split_stages, under_any, unfreeze_groups, Unfreeze};
use digitlab_finetune::{create_model, CreateOptions, WeightsSource};
use digitlab_models::InputShape;

/// Every architecture family once (VGG's two naming schemes, ResNet's two block types).
const MODELS: &[&str] = &[
    "lenet5",
    "small_cnn",
    "ccexam_svhn_cnn",
    "resnet18",
    "resnet50",
    "resnet18_cifar",
    "vgg11",
    "vgg11_bn",
    "efficientnet_lite0",
    "alexnet",
];

#[test]
fn stages_partition_every_non_head_parameter_exactly() {
    let input = InputShape {
        channels: 3,
        height: 32,
        width: 32,
    };
    for name in MODELS {
        // AlexNet's three stride-2 pools need at least 63 px.
        let side = if *name == "alexnet" { 64 } else { 32 };
        let mut opts = CreateOptions::new(InputShape {
            height: side,
            width: side,
            ..input
        });
        opts.device = Device::Cpu;
        let created = create_model(name, &WeightsSource::None, 10, &opts).unwrap();
        let backbone = created.backbone();
        let stages = backbone.stages();
        assert!(stages.len() >= 3, "{name}: {} stages", stages.len());
        let head = format!("{}.", created.head_prefix());
        let names: Vec<String> = created.varmap.data().lock().unwrap().keys().cloned().collect();
        for n in names.iter().filter(|n| !n.starts_with(&head)) {
            let owners: Vec<&str> = stages
                .iter()
                .filter(|s| s.contains(n))
                .map(|s| s.name.as_str())
                .collect();
            assert_eq!(owners.len(), 1, "{name}: `{n}` is in stages {owners:?}");
        }
        for s in &stages {
            assert!(!s.prefixes.is_empty(), "{name}: stage {} is empty", s.name);
            for p in &s.prefixes {
                let hits = names.iter().filter(|n| under_any(n, std::slice::from_ref(p))).count();
                assert!(hits > 0, "{name}: prefix `{p}` of stage {} names no parameter", s.name);
            }
            assert!(
                !names.iter().any(|n| n.starts_with(&head) && s.contains(n)),
                "{name}: stage {} holds head parameters",
                s.name
            );
        }

        // unfreeze = 1: the head and the last stage train, every other stage is frozen.
        let last = stages.last().unwrap();
        let (trainable, frozen) = unfreeze_groups(&created, Unfreeze::Last(1)).unwrap();
        let mut want = vec![created.head_prefix().to_string()];
        want.extend(last.prefixes.iter().cloned());
        assert_eq!(trainable, want, "{name}");
        let want_frozen: Vec<String> = stages[..stages.len() - 1]
            .iter()
            .flat_map(|s| s.prefixes.clone())
            .collect();
        assert_eq!(frozen, want_frozen, "{name}");
        for n in &names {
            assert!(
                under_any(n, &trainable) != under_any(n, &frozen),
                "{name}: `{n}` must be exactly one of trainable / frozen"
            );
        }
        // The linear probe and the full network.
        let (t0, f0) = unfreeze_groups(&created, Unfreeze::Last(0)).unwrap();
        assert_eq!(t0, vec![created.head_prefix().to_string()]);
        assert_eq!(f0.len(), stages.iter().map(|s| s.prefixes.len()).sum::<usize>());
        let (tf, ff) = unfreeze_groups(&created, Unfreeze::Full).unwrap();
        assert!(ff.is_empty(), "{name}");
        assert_eq!(tf.len(), 1 + f0.len());
        let e = unfreeze_groups(&created, Unfreeze::Last(stages.len() + 1))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("unfreeze = {}", stages.len() + 1)) && e.contains(name),
            "{e}"
        );
    }
}

#[test]
fn resnet_and_vgg_stages_are_the_documented_ones() {
    let input = InputShape {
        channels: 3,
        height: 32,
        width: 32,
    };
    let created = create_model("resnet18", &WeightsSource::None, 10, &CreateOptions::new(input)).unwrap();
    let names: Vec<String> = created.backbone().stages().iter().map(|s| s.name.clone()).collect();
    assert_eq!(names, ["stem", "layer1", "layer2", "layer3", "layer4"]);
    assert_eq!(created.backbone().stages()[0].prefixes, ["conv1", "bn1"]);
    let created = create_model("vgg11_bn", &WeightsSource::None, 10, &CreateOptions::new(input)).unwrap();
    let stages = created.backbone().stages();
    // vgg11_bn: [64, M, 128, M, 256, 256, M, ...], each conv + batch norm + ReLU = 3 indices.
    assert_eq!(stages[0].prefixes, ["features.0", "features.1"]);
    assert_eq!(stages[1].prefixes, ["features.4", "features.5"]);
    assert_eq!(
        stages[2].prefixes,
        ["features.8", "features.9", "features.11", "features.12"]
    );
    assert_eq!(stages.len(), 6);
    assert_eq!(stages[5].prefixes, ["classifier.0", "classifier.3"]);
}

#[test]
fn no_stages_allows_only_the_linear_probe() {
    assert_eq!(
        split_stages("mlp", &[], "fc", Unfreeze::Last(0)).unwrap(),
        (vec!["fc".to_string()], vec![])
    );
    let e = split_stages("mlp", &[], "fc", Unfreeze::Full).unwrap_err().to_string();
    assert!(e.contains("mlp") && e.contains("not split into stages"), "{e}");
}

/// Batch-norm running statistics (`running_mean` / `running_var`) by name.
fn bn_stats(created: &digitlab_finetune::CreatedModel) -> Vec<(String, Vec<f32>)> {
    let data = created.varmap.data().lock().unwrap();
    let mut out: Vec<(String, Vec<f32>)> = data
        .iter()
        .filter(|(n, _)| n.ends_with("running_mean") || n.ends_with("running_var"))
        .map(|(n, v)| (n.clone(), v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn frozen_stages_keep_their_batch_norm_statistics_in_a_train_mode_forward() {
    use digitlab_finetune::stages::apply_unfreeze;
    let input = InputShape {
        channels: 3,
        height: 32,
        width: 32,
    };
    let x = {
        let v: Vec<f32> = (0..4 * 3 * 32 * 32)
            .map(|i| ((i as f32) * 0.37).sin() * 2.0 + 0.3)
            .collect();
        candle_core::Tensor::from_vec(v, (4, 3, 32, 32), &Device::Cpu).unwrap()
    };
    for name in ["resnet18", "small_cnn", "efficientnet_lite0"] {
        let created = create_model(name, &WeightsSource::None, 10, &CreateOptions::new(input)).unwrap();
        let backbone = created.backbone();
        // The last two stages: each architecture has batch norm in one of them.
        let (trainable, frozen) = apply_unfreeze(&created, Unfreeze::Last(2)).unwrap();
        assert_eq!(backbone.frozen_stages(), backbone.stages().len() - 2);
        let before = bn_stats(&created);
        candle_core::ModuleT::forward_t(&created.model, &x, true).unwrap();
        let after = bn_stats(&created);
        let (mut kept, mut changed) = (0, 0);
        for ((n, a), (_, b)) in before.iter().zip(&after) {
            let same = a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits());
            if under_any(n, &frozen) {
                assert!(same, "{name}: frozen `{n}` changed in a train-mode forward");
                kept += 1;
            } else {
                assert!(under_any(n, &trainable), "{name}: `{n}`");
                assert!(
                    !same,
                    "{name}: trainable `{n}` kept its statistics in a train-mode forward"
                );
                changed += 1;
            }
        }
        assert!(kept > 0 && changed > 0, "{name}: {kept} kept, {changed} changed");

        // Full: every stage trains again and updates its statistics.
        apply_unfreeze(&created, Unfreeze::Full).unwrap();
        assert_eq!(backbone.frozen_stages(), 0);
        let before = bn_stats(&created);
        candle_core::ModuleT::forward_t(&created.model, &x, true).unwrap();
        let after = bn_stats(&created);
        assert!(
            before.iter().zip(&after).all(|((_, a), (_, b))| a != b),
            "{name}: with nothing frozen every batch norm updates"
        );
        assert!(backbone.freeze_stages(backbone.stages().len() + 1).is_err());
    }
}

#[test]
fn backward_stops_at_the_last_frozen_stage() {
    use digitlab_finetune::stages::apply_unfreeze;
    for name in MODELS {
        let side = if *name == "alexnet" { 64 } else { 32 };
        let input = InputShape {
            channels: 3,
            height: side,
            width: side,
        };
        let created = create_model(name, &WeightsSource::None, 10, &CreateOptions::new(input)).unwrap();
        let x = candle_core::Tensor::randn(0f32, 1.0, (2, 3, side, side), &Device::Cpu).unwrap();
        for unfreeze in [Unfreeze::Last(1), Unfreeze::Last(2), Unfreeze::Full] {
            let (trainable, frozen) = apply_unfreeze(&created, unfreeze).unwrap();
            let out = candle_core::ModuleT::forward_t(&created.model, &x, true).unwrap();
            let grads = out.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            for (n, v) in digitlab_train::trainable_params(&created.varmap) {
                let has = grads.get(v.as_tensor()).is_some();
                if under_any(&n, &frozen) {
                    assert!(!has, "{name} {unfreeze:?}: frozen `{n}` got a gradient");
                } else {
                    assert!(under_any(&n, &trainable), "{name}: `{n}`");
                    assert!(has, "{name} {unfreeze:?}: trainable `{n}` got no gradient");
                }
            }
        }
    }
}
