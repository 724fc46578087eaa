//! torchvision weights through torch.hub's cache: a hand-built cache, offline
//! errors, and downloads from a local HTTP server (download.pytorch.org is not
//! reachable from the test machines).

use std::io::{BufRead, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use digitlab_finetune::pth::read_pth;
use digitlab_finetune::torchhub::{self, TorchHubConfig};
use digitlab_finetune::{FinetuneError, WeightsSource};
use sha2::Digest;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name)
}

/// A torch.hub-style name for `bytes`: `stem-<first 8 hex digits of its SHA-256>.pth`.
fn hub_name(stem: &str, bytes: &[u8]) -> String {
    let sha = hex::encode(sha2::Sha256::digest(bytes));
    format!("{stem}-{}.pth", &sha[..8])
}

fn config(dir: &Path, offline: bool, base_url: &str) -> TorchHubConfig {
    TorchHubConfig {
        offline,
        base_url: base_url.to_string(),
        progress: false,
        ..TorchHubConfig::new(dir)
    }
}

/// A loopback HTTP server answering `requests` requests with `body`; when `cut`
/// is set it announces the full length but closes after that many bytes.
fn serve(body: Vec<u8>, requests: usize, cut: Option<usize>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(requests) {
            let mut stream = stream.unwrap();
            let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                    break;
                }
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).unwrap();
            let n = cut.unwrap_or(body.len()).min(body.len());
            let _ = stream.write_all(&body[..n]);
            let _ = stream.flush();
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    });
    format!("http://{addr}/")
}

/// Names in `dir` (no temporary files may be left behind).
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn a_hand_built_cache_works_offline() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("legacy.pth")).unwrap();
    let name = hub_name("tiny", &bytes);
    std::fs::write(dir.path().join(&name), &bytes).unwrap();
    // Offline, with a server that cannot be reached: the cache alone answers.
    let cfg = config(dir.path(), true, "http://127.0.0.1:9/");
    let path = torchhub::resolve_file(&cfg, &name).unwrap();
    assert_eq!(path, dir.path().join(&name));
    assert_eq!(read_pth(&path).unwrap().len(), 15);
}

#[test]
fn a_cached_file_with_the_wrong_hash_is_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = b"not the published file".to_vec();
    let sha = hex::encode(sha2::Sha256::digest(&bytes));
    let wrong = if sha.starts_with("00") { "11111111" } else { "00000000" };
    let name = format!("resnet18-{wrong}.pth");
    std::fs::write(dir.path().join(&name), &bytes).unwrap();
    let cfg = config(dir.path(), true, "http://127.0.0.1:9/");
    let e = torchhub::resolve_file(&cfg, &name).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, FinetuneError::HashMismatch { .. }), "{e:?}");
    assert!(
        msg.contains(&name) && msg.contains(wrong) && msg.contains(&sha),
        "{msg}"
    );
    // Not ours: left in place.
    assert_eq!(std::fs::read(dir.path().join(&name)).unwrap(), bytes);
}

#[test]
fn offline_and_missing_names_the_file_url_and_folder() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = TorchHubConfig {
        offline: true,
        ..TorchHubConfig::new(dir.path())
    };
    for (model, file) in [("vgg16", "vgg16-397923af.pth"), ("alexnet", "alexnet-owt-7be5be79.pth")] {
        let e = torchhub::resolve(&cfg, model).unwrap_err();
        assert!(matches!(e, FinetuneError::TorchHubUnavailable(_)), "{e:?}");
        let msg = e.to_string();
        let url = format!("https://download.pytorch.org/models/{file}");
        assert!(
            msg.contains(file) && msg.contains(&url) && msg.contains(&dir.path().display().to_string()),
            "{msg}"
        );
        assert!(msg.contains("downloads are off"), "{msg}");
    }
    // Nothing was created.
    assert!(listing(dir.path()).is_empty());
    let e = torchhub::resolve(&cfg, "resnet152").unwrap_err().to_string();
    assert!(e.contains("resnet152") && e.contains("valid"), "{e}");
}

#[test]
fn downloads_verify_the_hash_prefix_and_rename_into_place() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("hub").join("checkpoints");
    let bytes = std::fs::read(fixture("good.pth")).unwrap();
    let name = hub_name("tiny", &bytes);
    let url = serve(bytes.clone(), 1, None);
    let cfg = config(&cache, false, &url);
    let path = torchhub::resolve_file(&cfg, &name).unwrap();
    assert_eq!(path, cache.join(&name));
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert_eq!(listing(&cache), std::slice::from_ref(&name));
    // Now cached: a second call needs no server (the one above served one request).
    assert_eq!(torchhub::resolve_file(&cfg, &name).unwrap(), path);
}

#[test]
fn a_download_with_the_wrong_hash_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("good.pth")).unwrap();
    let name = hub_name("tiny", b"some other content");
    let url = serve(bytes, 1, None);
    let e = torchhub::resolve_file(&config(dir.path(), false, &url), &name).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, FinetuneError::HashMismatch { .. }), "{e:?}");
    assert!(
        msg.contains("deleted") && msg.contains(&format!("{url}{name}")),
        "{msg}"
    );
    assert!(listing(dir.path()).is_empty(), "{:?}", listing(dir.path()));
}

#[test]
fn a_cut_connection_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("good.pth")).unwrap();
    let name = hub_name("tiny", &bytes);
    let url = serve(bytes.clone(), 1, Some(bytes.len() / 2));
    let e = torchhub::resolve_file(&config(dir.path(), false, &url), &name).unwrap_err();
    assert!(matches!(e, FinetuneError::TorchHubUnavailable(_)), "{e:?}");
    assert!(e.to_string().contains(&name), "{e}");
    assert!(listing(dir.path()).is_empty(), "{:?}", listing(dir.path()));
}

#[test]
fn an_unreachable_server_is_reported_with_the_url() {
    let dir = tempfile::tempdir().unwrap();
    // Port 9 on loopback (discard) is closed: connection refused.
    let cfg = config(dir.path(), false, "http://127.0.0.1:9/");
    let e = torchhub::resolve(&cfg, "resnet18").unwrap_err().to_string();
    assert!(
        e.contains("http://127.0.0.1:9/resnet18-f37072fd.pth") && e.contains("downloading") && e.contains("failed"),
        "{e}"
    );
    assert!(listing(dir.path()).is_empty());
}

#[test]
fn torchvision_sources_parse_and_print() {
    let src: WeightsSource = "torchvision:vgg16_bn".parse().unwrap();
    assert_eq!(
        src,
        WeightsSource::Torchvision {
            model: "vgg16_bn".into()
        }
    );
    assert_eq!(src.to_string(), "torchvision:vgg16_bn");
    let json = serde_json::to_string(&src).unwrap();
    assert_eq!(serde_json::from_str::<WeightsSource>(&json).unwrap(), src);
}
