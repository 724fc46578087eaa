//! `digitlab reproduce` end to end, and its `report.html` checked in a real browser
//! (headless Chromium): every section is there and every image loads.
//!
//! The browser part needs Chromium (`apt-get install chromium`). Without it the test
//! prints why and checks only the files, unless `DIGITLAB_REQUIRE_BROWSER=1` (set by
//! CI, which installs Chromium) makes a missing browser a failure. With
//! `DIGITLAB_REPORT=<report.html>` it checks that report (CI passes the quick
//! suite's, made by the README's first command) instead of building a small one.
//! A screenshot goes to `$DIGITLAB_ARTIFACTS/report.png` when that is set.
use std::path::{Path, PathBuf};
use std::process::Command;

fn configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs")
}

/// A two-experiment suite (quickstart + one theory topic) run into `dir`.
fn small_report(dir: &Path) -> PathBuf {
    let suites = dir.join("configs/suites");
    std::fs::create_dir_all(&suites).unwrap();
    std::fs::copy(configs().join("quickstart.toml"), dir.join("configs/quickstart.toml")).unwrap();
    std::fs::write(
        suites.join("tiny.toml"),
        r#"name = "tiny"
description = "Two steps."

[[experiment]]
config = "quickstart.toml"
question = "Does the smallest MLP learn the 8x8 digits?"
set = ["train.epochs=3"]

[[experiment]]
mode = "theory"
topic = "softmax"
question = "Why subtract the max?"
"#,
    )
    .unwrap();
    let out = dir.join("out");
    let reproduce = || {
        let o = Command::new(env!("CARGO_BIN_EXE_digitlab"))
            .args(["reproduce", "--suite"])
            .arg(suites.join("tiny.toml"))
            .arg("--out")
            .arg(&out)
            .args(["--quiet", "--data-dir"])
            .arg(dir.join("no-data"))
            .output()
            .expect("run digitlab");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(o.status.success(), "{text}");
        text
    };
    let text = reproduce();
    assert!(text.contains("1/1 claims hold"), "{text}");
    // A second run reuses both finished steps instead of recomputing them.
    let text = reproduce();
    assert!(text.contains("unchanged and complete"), "{text}");
    assert!(!text.contains("running the theory lab"), "{text}");
    out.join("report.html")
}

fn find_browser() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH")?
                .to_str()?
                .split(':')
                .map(|d| Path::new(d).join(name))
                .find(|p| p.is_file())
        })
}

fn attr(body_tag: &str, name: &str) -> Option<usize> {
    let key = format!("{name}=\"");
    let rest = &body_tag[body_tag.find(&key)? + key.len()..];
    rest[..rest.find('"')?].parse().ok()
}

#[test]
fn report_has_every_section_and_every_image_loads_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let report = match std::env::var("DIGITLAB_REPORT") {
        Ok(p) => PathBuf::from(p),
        Err(_) => small_report(dir.path()),
    };
    let html = std::fs::read_to_string(&report).unwrap_or_else(|e| panic!("{}: {e}", report.display()));
    let md = std::fs::read_to_string(report.with_file_name("report.md")).unwrap();

    // Every experiment of the summary table has its own section.
    let summary = md
        .split("## Summary")
        .nth(1)
        .unwrap()
        .split("Total wall time")
        .next()
        .unwrap();
    let anchors: Vec<&str> = summary
        .lines()
        .filter_map(|l| l.split("](#").nth(1))
        .filter_map(|l| l.split(')').next())
        .collect();
    assert!(!anchors.is_empty(), "no experiments in the summary:\n{summary}");
    for a in &anchors {
        assert!(html.contains(&format!("id=\"{a}\"")), "report.html has no section {a}");
    }
    assert!(html.contains("Environment"), "no environment section");
    let embedded = html.matches("src=\"data:image/png;base64,").count();
    assert!(embedded >= 2, "only {embedded} embedded images");
    assert!(!html.contains("(missing image"), "the theory section lost an image");

    let Some(browser) = find_browser() else {
        assert!(
            std::env::var("DIGITLAB_REQUIRE_BROWSER").is_err(),
            "DIGITLAB_REQUIRE_BROWSER is set but no chromium was found on PATH (apt-get install chromium)"
        );
        eprintln!("skipping the browser check: no chromium on PATH (apt-get install chromium)");
        return;
    };
    let url = format!("file://{}", report.canonicalize().unwrap().display());
    let common = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--virtual-time-budget=10000",
    ];
    let o = Command::new(&browser)
        .args(common)
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .expect("run chromium");
    let dom = String::from_utf8_lossy(&o.stdout);
    let body = dom
        .split("<body")
        .nth(1)
        .and_then(|b| b.split('>').next())
        .unwrap_or("");
    let images = attr(body, "data-images").unwrap_or_else(|| {
        panic!(
            "the page's load handler did not run (no data-images on <body>): {body}\n{}",
            String::from_utf8_lossy(&o.stderr)
        )
    });
    assert_eq!(
        images, embedded,
        "the browser saw {images} images, the file embeds {embedded}"
    );
    assert_eq!(
        attr(body, "data-broken-images"),
        Some(0),
        "broken images in {}: {body}",
        report.display()
    );
    for a in &anchors {
        assert!(
            dom.contains(&format!("id=\"{a}\"")),
            "the rendered page has no section {a}"
        );
    }

    if let Ok(artifacts) = std::env::var("DIGITLAB_ARTIFACTS") {
        std::fs::create_dir_all(&artifacts).unwrap();
        let shot = Path::new(&artifacts).join("report.png");
        let o = Command::new(&browser)
            .args(common)
            .arg("--window-size=1280,4000")
            .arg(format!("--screenshot={}", shot.display()))
            .arg(&url)
            .output()
            .expect("run chromium");
        assert!(shot.is_file(), "no screenshot: {}", String::from_utf8_lossy(&o.stderr));
    }
}
