//! `compare` over `digitlab train` and `digitlab transfer` summaries.
use std::path::Path;

use digitlab_finetune::compare::{compare, read_rows};
use digitlab_finetune::FinetuneError;
use digitlab_report::summary::{RunExtras, RunSummary, TrainExtras, TransferExtras};

fn train_summary(dir: &Path, name: &str, train: f64, val: f64, test: f64) {
    let mut s = RunSummary::new(
        name,
        "svhn/train_32x32[train]",
        "lenet5",
        RunExtras::Train(TrainExtras {
            best_epoch: Some(5),
            ..Default::default()
        }),
    );
    s.seed = 42;
    s.epochs = 5;
    (s.train_images, s.val_images, s.test_images) = (100, 10, 10);
    s.parameters = 62_006;
    s.train_accuracy = train;
    s.val_accuracy = Some(val);
    s.val_macro_f1 = Some(val);
    s.test_accuracy = Some(test);
    s.test_macro_f1 = Some(test - 0.01);
    s.test_loss = Some(0.5);
    s.wall_seconds = 12.5;
    s.train_seconds = 11.0;
    s.train_samples_per_second = 800.0;
    s.device = "Cpu".into();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("summary.json"), serde_json::to_string_pretty(&s).unwrap()).unwrap();
}

fn transfer_summary(dir: &Path, name: &str) {
    let mut s = RunSummary::new(
        name,
        "svhn/train_32x32[25%][train]",
        "resnet18",
        RunExtras::Transfer(Box::new(TransferExtras {
            backbone_seconds: 25.0,
            head_seconds: 0.4,
            params_total: 11_181_642,
            params_trainable: 5_130,
            ..Default::default()
        })),
    );
    s.train_accuracy = 0.80;
    s.val_accuracy = Some(0.78);
    s.test_accuracy = Some(0.77);
    s.test_macro_f1 = Some(0.76);
    s.epochs = 5;
    s.wall_seconds = 30.0;
    s.train_samples_per_second = 1e5;
    s.parameters = 11_181_642;
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("summary.json"), serde_json::to_string(&s).unwrap()).unwrap();
}

#[test]
fn one_table_of_train_and_transfer_runs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    train_summary(&d.join("svhn_lenet"), "svhn_lenet", 0.95, 0.85, 0.84);
    train_summary(&d.join("svhn_cnn"), "svhn_cnn", 0.90, 0.88, 0.87);
    // A transfer output folder: its backbones are one level down.
    transfer_summary(&d.join("svhn_transfer/resnet18-pretrained"), "resnet18-pretrained");
    transfer_summary(&d.join("svhn_transfer/resnet50-pretrained"), "resnet50-pretrained");
    let runs = vec![
        d.join("svhn_lenet"),
        d.join("svhn_cnn/summary.json"),
        d.join("svhn_transfer"),
    ];
    let out = d.join("cmp");
    let rows = compare(&runs, &out, 0.05).unwrap();
    assert_eq!(
        rows.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["svhn_lenet", "svhn_cnn", "resnet18-pretrained", "resnet50-pretrained"]
    );
    let lenet = &rows[0];
    assert_eq!(lenet.kind, "train");
    assert!((lenet.gap.unwrap() - 0.10).abs() < 1e-12);
    assert_eq!(lenet.overfit, Some(true));
    assert_eq!(
        (lenet.params_total, lenet.params_trainable),
        (Some(62_006), Some(62_006))
    );
    assert_eq!((lenet.backbone_seconds, lenet.head_seconds), (None, None));
    assert_eq!(rows[1].overfit, Some(false), "gap 0.02 <= 0.05");
    let r18 = &rows[2];
    assert_eq!(r18.kind, "transfer");
    assert_eq!(
        (r18.params_total, r18.params_trainable),
        (Some(11_181_642), Some(5_130))
    );
    assert_eq!((r18.backbone_seconds, r18.head_seconds), (Some(25.0), Some(0.4)));

    let md = std::fs::read_to_string(out.join("compare.md")).unwrap();
    assert!(md.contains("| svhn_lenet | train | lenet5 | - | svhn/train_32x32[train] | 84.00 | 0.8300 | 95.00 | 85.00 | - | +10.00 | yes | - | - | 12.50 | 62006 | 62006 |"), "{md}");
    assert!(
        md.contains("| resnet18-pretrained | transfer | resnet18 |") && md.contains("| 25.00 | 0.40 |"),
        "{md}"
    );
    let csv = std::fs::read_to_string(out.join("compare.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5);
    assert!(
        csv.lines()
            .nth(1)
            .unwrap()
            .starts_with("svhn_lenet,train,lenet5,,svhn/train_32x32[train],0.84,0.83,0.95,0.85,,"),
        "{csv}"
    );
    let png = std::fs::read(out.join("compare.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    // A stricter threshold flags more runs.
    let rows = read_rows(&runs, 0.0).unwrap();
    assert_eq!(rows.iter().filter(|r| r.overfit == Some(true)).count(), 4);
}

#[test]
fn duplicate_names_get_their_folder_and_bad_inputs_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    train_summary(&d.join("a/run"), "same", 0.9, 0.9, 0.9);
    train_summary(&d.join("b/run"), "same", 0.9, 0.9, 0.9);
    let rows = read_rows(&[d.join("a/run"), d.join("b/run")], 0.05).unwrap();
    assert_ne!(rows[0].name, rows[1].name);
    assert!(
        rows[0].name.starts_with("same (") && rows[0].name.contains("a/run"),
        "{}",
        rows[0].name
    );

    let e = compare(&[d.join("nowhere")], &d.join("out"), 0.05).unwrap_err();
    assert!(
        matches!(e, FinetuneError::Summary { .. }) && e.to_string().contains("nowhere"),
        "{e}"
    );
    std::fs::create_dir_all(d.join("empty")).unwrap();
    let e = compare(&[d.join("empty")], &d.join("out"), 0.05)
        .unwrap_err()
        .to_string();
    assert!(e.contains("empty") && e.contains("no summary.json"), "{e}");
    std::fs::create_dir_all(d.join("broken")).unwrap();
    std::fs::write(d.join("broken/summary.json"), b"{ not json").unwrap();
    let e = compare(&[d.join("broken")], &d.join("out"), 0.05)
        .unwrap_err()
        .to_string();
    assert!(e.contains("broken/summary.json") && e.contains("not valid JSON"), "{e}");
    assert!(compare(&[d.join("a/run")], &d.join("out"), -1.0).is_err());
}
