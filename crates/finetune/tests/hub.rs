//! Hub resolution against a hand-built Hugging Face cache folder (the hub itself is
//! never contacted: configs are offline, or point at a closed loopback port).

use std::path::{Path, PathBuf};

use digitlab_finetune::hub::{self, lookup_cache, CacheLookup, HubFile};
use digitlab_finetune::{load_weights, FinetuneError, HubConfig, WeightsSource};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

const REPO: &str = "timm/resnet18.a1_in1k";
const HASH: &str = "0123456789abcdef0123456789abcdef01234567";

/// A tiny real safetensors file: `fc.weight` = [[1, 2], [3, 4]] (f32), `fc.bias` = [0.5, -0.5].
fn tiny_safetensors() -> Vec<u8> {
    let w: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|f| f.to_le_bytes()).collect();
    let b: Vec<u8> = [0.5f32, -0.5].iter().flat_map(|f| f.to_le_bytes()).collect();
    let tensors = vec![
        ("fc.weight", TensorView::new(Dtype::F32, vec![2, 2], &w).unwrap()),
        ("fc.bias", TensorView::new(Dtype::F32, vec![2], &b).unwrap()),
    ];
    safetensors::serialize(tensors, None).unwrap()
}

/// Builds `<cache>/models--timm--resnet18.a1_in1k/{refs/main, blobs/<etag>, snapshots/<hash>/model.safetensors}`
/// the way huggingface_hub does (the snapshot entry is a symlink into blobs/ on Unix).
fn build_cache(cache: &Path) -> PathBuf {
    let repo_dir = cache.join("models--timm--resnet18.a1_in1k");
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::create_dir_all(repo_dir.join("blobs")).unwrap();
    let snapshot = repo_dir.join("snapshots").join(HASH);
    std::fs::create_dir_all(&snapshot).unwrap();
    // Python writes the hash without a newline; tolerate one anyway.
    std::fs::write(repo_dir.join("refs").join("main"), format!("{HASH}\n")).unwrap();
    let blob = repo_dir
        .join("blobs")
        .join("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    std::fs::write(&blob, tiny_safetensors()).unwrap();
    let file = snapshot.join("model.safetensors");
    #[cfg(unix)]
    std::os::unix::fs::symlink(&blob, &file).unwrap();
    #[cfg(not(unix))]
    std::fs::copy(&blob, &file).unwrap();
    file
}

fn offline(cache: &Path) -> HubConfig {
    HubConfig {
        cache_dir: cache.to_path_buf(),
        offline: true,
        endpoint: None,
        token: None,
        progress: false,
    }
}

#[test]
fn resolves_from_the_cache_and_loads() {
    let dir = tempfile::tempdir().unwrap();
    let expected = build_cache(dir.path());
    let cfg = offline(dir.path());

    let path = hub::resolve(&cfg, REPO, None, None).unwrap();
    assert_eq!(path, expected);
    let path = hub::resolve(&cfg, REPO, Some("main"), Some("model.safetensors")).unwrap();
    assert_eq!(path, expected);

    let weights = load_weights(&path).unwrap();
    assert_eq!(weights["fc.weight"].to_vec2::<f32>().unwrap(), [[1.0, 2.0], [3.0, 4.0]]);
    assert_eq!(weights["fc.bias"].to_vec1::<f32>().unwrap(), [0.5, -0.5]);

    // Through a parsed source.
    let src: WeightsSource = "hf:timm/resnet18.a1_in1k@main".parse().unwrap();
    assert_eq!(hub::resolve_source(&cfg, &src).unwrap(), Some(expected));
    assert_eq!(hub::resolve_source(&cfg, &WeightsSource::None).unwrap(), None);
}

#[test]
fn resolves_a_revision_given_by_commit_hash() {
    let dir = tempfile::tempdir().unwrap();
    let expected = build_cache(dir.path());
    let cfg = offline(dir.path());
    // No refs/<hash> file: the snapshot folder is found directly.
    assert!(!dir
        .path()
        .join("models--timm--resnet18.a1_in1k/refs")
        .join(HASH)
        .exists());
    assert_eq!(hub::resolve(&cfg, REPO, Some(HASH), None).unwrap(), expected);
    let file = HubFile::new(REPO, HASH, "model.safetensors").unwrap();
    assert_eq!(lookup_cache(&cfg, &file), CacheLookup::Found(expected));
}

#[test]
fn missing_file_offline_names_repo_file_and_cache_path() {
    let dir = tempfile::tempdir().unwrap();
    build_cache(dir.path());
    let cfg = offline(dir.path());

    let err = hub::resolve(&cfg, REPO, None, Some("open_clip_model.safetensors")).unwrap_err();
    let FinetuneError::HubUnavailable(info) = &err else {
        panic!("expected HubUnavailable, got {err:?}");
    };
    assert!(info.offline);
    assert!(info.download_errors.is_empty());
    let msg = err.to_string();
    let snapshot_file = dir
        .path()
        .join("models--timm--resnet18.a1_in1k/snapshots")
        .join(HASH)
        .join("open_clip_model.safetensors");
    for needle in [
        REPO,
        "revision `main`",
        "open_clip_model.safetensors",
        "HF_HUB_OFFLINE",
        &dir.path().display().to_string(),
        &snapshot_file.display().to_string(),
        "huggingface-cli download timm/resnet18.a1_in1k open_clip_model.safetensors",
        "local path",
    ] {
        assert!(msg.contains(needle), "`{needle}` not in:\n{msg}");
    }
}

#[test]
fn unknown_revision_and_repo_list_default_and_fallback_files() {
    let dir = tempfile::tempdir().unwrap();
    build_cache(dir.path());
    let cfg = offline(dir.path());

    let msg = hub::resolve(&cfg, REPO, Some("v2"), None).unwrap_err().to_string();
    assert!(msg.contains("revision `v2`") && msg.contains("--revision v2"), "{msg}");
    assert!(msg.contains("refs/v2") || msg.contains("refs\\v2"), "{msg}");

    let msg = hub::resolve(&cfg, "timm/vgg11.tv_in1k", None, None)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("timm/vgg11.tv_in1k"), "{msg}");
    assert!(
        msg.contains("model.safetensors") && msg.contains("also tried: pytorch_model.bin"),
        "{msg}"
    );
    assert!(msg.contains("models--timm--vgg11.tv_in1k"), "{msg}");
}

#[test]
fn falls_back_to_pytorch_model_bin() {
    let dir = tempfile::tempdir().unwrap();
    let repo_dir = dir.path().join("models--org--legacy");
    let snapshot = repo_dir.join("snapshots").join(HASH);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs/main"), HASH).unwrap();
    let bin = snapshot.join("pytorch_model.bin");
    let good = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/good_proto4.pth");
    std::fs::copy(good, &bin).unwrap();

    let path = hub::resolve(&offline(dir.path()), "org/legacy", None, None).unwrap();
    assert_eq!(path, bin);
    // A torch zip archive despite the .bin extension.
    let w = load_weights(&path).unwrap();
    assert_eq!(w["fc.bias"].to_vec1::<f32>().unwrap(), [0.5, -0.5]);
}

#[test]
fn failed_download_is_reported_with_the_same_guidance() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = HubConfig {
        cache_dir: dir.path().to_path_buf(),
        offline: false,
        // A closed port on loopback: the connection is refused at once.
        endpoint: Some("http://127.0.0.1:9".into()),
        token: None,
        progress: false,
    };
    let err = hub::resolve(&cfg, REPO, None, Some("model.safetensors")).unwrap_err();
    let FinetuneError::HubUnavailable(info) = &err else {
        panic!("expected HubUnavailable, got {err:?}");
    };
    assert!(!info.offline);
    assert_eq!(info.download_errors.len(), 1);
    let msg = err.to_string();
    assert!(msg.contains("the download failed"), "{msg}");
    assert!(
        msg.contains("huggingface-cli download timm/resnet18.a1_in1k model.safetensors"),
        "{msg}"
    );
}

#[test]
fn invalid_names_never_escape_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = offline(dir.path());
    for (repo, rev, file) in [
        ("../etc", None, None),
        (REPO, Some("../../x"), None),
        (REPO, None, Some("../../secret")),
        (REPO, None, Some("/etc/passwd")),
    ] {
        let e = hub::resolve(&cfg, repo, rev, file).unwrap_err();
        assert!(matches!(e, FinetuneError::InvalidSource { .. }), "{e}");
    }
    // A refs/ file pointing outside snapshots/ is ignored.
    let repo_dir = dir.path().join("models--timm--resnet18.a1_in1k");
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs/main"), "../../..").unwrap();
    assert!(hub::resolve(&cfg, REPO, None, None).is_err());
}

#[test]
fn local_sources_must_exist() {
    let cfg = offline(Path::new("/nonexistent-cache"));
    let src = WeightsSource::Local("/nonexistent/weights.safetensors".into());
    assert!(matches!(
        hub::resolve_source(&cfg, &src).unwrap_err(),
        FinetuneError::Io { .. }
    ));
}
