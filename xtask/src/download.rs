//! Downloads and imports of dataset files, verified against published checksums.
//!
//! Every file is written to `<name>.part` (downloads) or a private temporary file
//! (imports) first, verified there, and only then moved into place without
//! replacing anything, so an interrupted or corrupt transfer never leaves a file
//! that looks valid, and the bytes the loader reads are the bytes that were
//! verified. A file already in place that does not match the published checksum
//! is not digitlab's: it is reported, never overwritten.
use anyhow::{anyhow, bail, Context, Result};
use digitlab_data::catalog::{self, RemoteFile, Split};
use digitlab_data::DatasetKind;
use indicatif::{ProgressBar, ProgressStyle};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Refuse responses larger than this multiple of the published size (or 4 GiB).
const SIZE_SLACK: u64 = 2;
const MAX_UNKNOWN_SIZE: u64 = 4 << 30;

pub struct Options {
    pub quiet: bool,
    pub include_extra: bool,
}

/// Gets every file of `kind` into `<data_dir>/<kind>/`, from `from` or the network.
pub fn fetch_dataset(kind: DatasetKind, data_dir: &Path, from: Option<&Path>, opts: &Options) -> Result<()> {
    let dir = kind.dir(data_dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for file in kind.files() {
        if file.split == Split::Extra && !opts.include_extra {
            continue;
        }
        fetch_file(kind, file, &dir, from, opts)?;
    }
    Ok(())
}

fn fetch_file(kind: DatasetKind, file: &RemoteFile, dir: &Path, from: Option<&Path>, opts: &Options) -> Result<()> {
    if let Some(existing) = catalog::locate(dir, file) {
        match catalog::verify_file(&existing, file) {
            Ok(()) => {
                println!("{kind}: {} already present and valid", existing.display());
                return Ok(());
            }
            Err(e) => bail!(
                "{e}\n{} is not the published {}; digitlab does not overwrite a file it cannot tell is its own: \
                 move or delete it, then run this again",
                existing.display(),
                file.name
            ),
        }
    }
    let target = dir.join(file.name);
    let placed = match from {
        Some(src_dir) => import(kind, file, src_dir, &target)?,
        None => {
            download(kind, file, &target, opts)?;
            target
        }
    };
    check_loader_reads(dir, file, &placed)
}

/// The file the loader will read for `file` ([`catalog::locate`]) must be the one
/// just verified and placed.
fn check_loader_reads(dir: &Path, file: &RemoteFile, placed: &Path) -> Result<()> {
    match catalog::locate(dir, file) {
        Some(read) if read == placed => Ok(()),
        Some(read) => bail!(
            "placed {} but the loader would read {} instead; move or delete {}",
            placed.display(),
            read.display(),
            read.display()
        ),
        None => bail!("placed {} but it is gone", placed.display()),
    }
}

/// Moves `from` to `to` unless `to` exists (then an error naming it): a hard link
/// plus unlink, which is atomic and never replaces; a plain rename after a check
/// where links are not supported.
fn move_noclobber(from: &Path, to: &Path) -> Result<()> {
    match fs::hard_link(from, to) {
        Ok(()) => fs::remove_file(from).with_context(|| format!("removing {}", from.display())),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let _ = fs::remove_file(from);
            bail!(
                "{} appeared while it was being fetched; not replacing it (the verified copy was discarded)",
                to.display()
            )
        }
        Err(_) if to.exists() => bail!("{} exists; not replacing it", to.display()),
        Err(_) => fs::rename(from, to).with_context(|| format!("renaming {} to {}", from.display(), to.display())),
    }
}

/// Imports a local copy: `<from>/<name>`, `<from>/<name without .gz>`, or the
/// same under `<from>/<dataset>/`. The copy (not the source, which could change
/// meanwhile) is verified, then moved into place; returns where it was placed.
fn import(kind: DatasetKind, file: &RemoteFile, from: &Path, target: &Path) -> Result<PathBuf> {
    let candidates = [from.to_path_buf(), kind.dir(from)];
    let src = candidates
        .iter()
        .find_map(|d| catalog::locate(d, file))
        .ok_or_else(|| {
            anyhow!(
                "{} not found in {} (nor in {})",
                file.name,
                from.display(),
                kind.dir(from).display()
            )
        })?;
    let dest = if src.extension().is_some_and(|e| e == "gz") {
        target.to_path_buf()
    } else {
        target.with_extension("")
    };
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    let part = dest.with_file_name(format!(".{name}.digitlab-import-{}.part", std::process::id()));
    let copied = fs::copy(&src, &part)
        .with_context(|| format!("copying {} to {}", src.display(), part.display()))
        .and_then(|_| {
            File::open(&part)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("syncing {}", part.display()))
        })
        .and_then(|()| catalog::verify_file(&part, file).map_err(|e| anyhow!("{e} (copied from {})", src.display())));
    if let Err(e) = copied {
        let _ = fs::remove_file(&part);
        return Err(e);
    }
    move_noclobber(&part, &dest)?;
    println!("{kind}: imported {} -> {} (verified)", src.display(), dest.display());
    Ok(dest)
}

fn part_path(target: &Path) -> PathBuf {
    let mut name = target.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    target.with_file_name(name)
}

/// Tries each mirror in turn; reports every mirror's failure if none works.
fn download(kind: DatasetKind, file: &RemoteFile, target: &Path, opts: &Options) -> Result<()> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(20)))
        .timeout_recv_body(Some(Duration::from_secs(120)))
        .build()
        .into();
    let mut errors = Vec::new();
    for base in file.mirrors {
        let url = format!("{base}{}", file.name);
        match fetch_url(&agent, &url, file, target, opts) {
            Ok(()) => {
                println!("{kind}: downloaded {url} -> {} (verified)", target.display());
                return Ok(());
            }
            Err(e) => {
                eprintln!("{kind}: {url}: {e:#}");
                errors.push(format!("  {url}: {e:#}"));
            }
        }
    }
    bail!(
        "no mirror of {} could be used:\n{}\nIf this machine is offline, copy the files from elsewhere and run \
         `cargo xtask download {kind} --from DIR`.",
        file.name,
        errors.join("\n")
    )
}

/// Downloads `url` into `<target>.part` (resuming a previous partial download when
/// the server honours a Range request), verifies it, then renames it to `target`.
pub(crate) fn fetch_url(
    agent: &ureq::Agent,
    url: &str,
    file: &RemoteFile,
    target: &Path,
    opts: &Options,
) -> Result<()> {
    let part = part_path(target);
    let have = fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    let mut req = agent.get(url);
    if have > 0 {
        req = req.header("Range", &format!("bytes={have}-"));
    }
    let mut resp = req.call().map_err(|e| anyhow!("request failed: {e}"))?;
    let resumed = have > 0 && resp.status().as_u16() == 206;
    let length = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let total = length.map(|l| if resumed { l + have } else { l }).or(file.size);
    let limit = file.size.map(|s| s * SIZE_SLACK).unwrap_or(MAX_UNKNOWN_SIZE);
    if total.is_some_and(|t| t > limit) {
        bail!(
            "server announces {} bytes, more than the limit of {limit}",
            total.unwrap_or(0)
        );
    }
    let mut out = if resumed {
        OpenOptions::new().append(true).open(&part)
    } else {
        File::create(&part)
    }
    .with_context(|| format!("opening {}", part.display()))?;
    let start = if resumed { have } else { 0 };
    let bar = progress_bar(file.name, total, start, opts.quiet);
    let mut reader = resp.body_mut().with_config().limit(limit).reader();
    let mut buf = vec![0u8; 1 << 16];
    let mut written = start;
    loop {
        let n = reader.read(&mut buf).with_context(|| format!("reading {url}"))?;
        if n == 0 {
            break;
        }
        written += n as u64;
        if written > limit {
            bail!("download exceeds the size limit of {limit} bytes");
        }
        out.write_all(&buf[..n])
            .with_context(|| format!("writing {}", part.display()))?;
        bar.set_position(written);
    }
    out.sync_all().with_context(|| format!("syncing {}", part.display()))?;
    drop(out);
    bar.finish_and_clear();
    if let Err(e) = catalog::verify_file(&part, file) {
        let _ = fs::remove_file(&part);
        bail!("{e} (the partial file was deleted)");
    }
    move_noclobber(&part, target)
}

fn progress_bar(name: &str, total: Option<u64>, start: u64, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(t) => ProgressBar::new(t),
        None => ProgressBar::no_length(),
    };
    bar.set_style(
        ProgressStyle::with_template("{msg:30} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(name.to_string());
    bar.set_position(start);
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use digitlab_data::catalog::Checksum;
    use sha2::Digest;
    use std::io::BufRead;
    use std::net::TcpListener;

    /// A one-file HTTP server on loopback that honours `Range: bytes=N-`, serving
    /// `body` for `requests` requests, then stopping.
    fn serve(body: Vec<u8>, requests: usize) -> String {
        serve_with(body, requests, true, None)
    }

    /// [`serve`], optionally ignoring `Range` (always `200 OK` and the whole body),
    /// and optionally dropping the connection of the first response after
    /// `cut_after` bytes of its body (while announcing the full length).
    fn serve_with(body: Vec<u8>, requests: usize, honour_range: bool, mut cut_after: Option<usize>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(requests) {
                let mut stream = stream.unwrap();
                let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                let mut from = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(r) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                        if honour_range {
                            from = r.trim().trim_end_matches('-').parse().unwrap();
                        }
                    }
                }
                let status = if from > 0 { "206 Partial Content" } else { "200 OK" };
                let part = &body[from..];
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    part.len()
                );
                stream.write_all(head.as_bytes()).unwrap();
                match cut_after.take() {
                    Some(n) => {
                        // The connection drops mid-body.
                        let _ = stream.write_all(&part[..n.min(part.len())]);
                        let _ = stream.flush();
                        let _ = stream.shutdown(std::net::Shutdown::Both);
                    }
                    None => stream.write_all(part).unwrap(),
                }
            }
        });
        format!("http://{addr}/")
    }

    fn leak_file(name: &str, payload: &[u8]) -> &'static RemoteFile {
        let sha = hex::encode(sha2::Sha256::digest(payload));
        Box::leak(Box::new(RemoteFile {
            name: Box::leak(name.to_string().into_boxed_str()),
            split: Split::Test,
            mirrors: &[],
            checksum: Checksum::PayloadSha256(Box::leak(sha.into_boxed_str())),
            size: Some(payload.len() as u64),
        }))
    }

    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into()
    }

    const QUIET: Options = Options {
        quiet: true,
        include_extra: false,
    };

    #[test]
    fn downloads_verifies_and_renames() {
        let payload = b"0123456789abcdef".repeat(100);
        let url = serve(payload.clone(), 1);
        let dir = tempfile::tempdir().unwrap();
        let file = leak_file("t10k-labels-idx1-ubyte", &payload);
        let target = dir.path().join(file.name);
        fetch_url(&agent(), &format!("{url}{}", file.name), file, &target, &QUIET).unwrap();
        assert_eq!(fs::read(&target).unwrap(), payload);
        assert!(!part_path(&target).exists());
    }

    #[test]
    fn resumes_a_partial_download_with_range() {
        let payload: Vec<u8> = (0..5000u32).map(|v| (v % 251) as u8).collect();
        let url = serve(payload.clone(), 1);
        let dir = tempfile::tempdir().unwrap();
        let file = leak_file("resume.bin", &payload);
        let target = dir.path().join(file.name);
        fs::write(part_path(&target), &payload[..1234]).unwrap();
        fetch_url(&agent(), &format!("{url}x"), file, &target, &QUIET).unwrap();
        assert_eq!(fs::read(&target).unwrap(), payload);
    }

    #[test]
    fn checksum_mismatch_deletes_the_partial_file() {
        let url = serve(b"corrupted bytes".to_vec(), 1);
        let dir = tempfile::tempdir().unwrap();
        let file = leak_file("bad.bin", b"the real payload");
        let target = dir.path().join(file.name);
        let e = format!(
            "{:#}",
            fetch_url(&agent(), &format!("{url}x"), file, &target, &QUIET).unwrap_err()
        );
        assert!(
            e.contains("checksum mismatch") && e.contains(file.checksum_hex()) && e.contains("deleted"),
            "{e}"
        );
        // The digest of what actually arrived is shown too.
        let actual = hex::encode(sha2::Sha256::digest(b"corrupted bytes"));
        assert!(e.contains(&actual), "actual digest {actual} missing: {e}");
        assert!(!target.exists() && !part_path(&target).exists());
    }

    #[test]
    fn interrupted_download_keeps_the_part_file_and_resumes() {
        let payload: Vec<u8> = (0..50_000u32).map(|v| (v % 253) as u8).collect();
        // First request: the connection drops after 20 000 bytes; second: resumed with Range.
        let url = serve_with(payload.clone(), 2, true, Some(20_000));
        let dir = tempfile::tempdir().unwrap();
        let file = leak_file("interrupted.bin", &payload);
        let target = dir.path().join(file.name);
        let e = format!(
            "{:#}",
            fetch_url(&agent(), &format!("{url}x"), file, &target, &QUIET).unwrap_err()
        );
        assert!(!target.exists(), "an interrupted download was renamed into place: {e}");
        let kept = fs::read(part_path(&target)).unwrap();
        assert!(
            !kept.is_empty() && kept.len() < payload.len() && payload.starts_with(&kept),
            "{} bytes kept",
            kept.len()
        );
        fetch_url(&agent(), &format!("{url}x"), file, &target, &QUIET).unwrap();
        assert_eq!(fs::read(&target).unwrap(), payload);
        assert!(!part_path(&target).exists());
    }

    #[test]
    fn restarts_from_scratch_when_the_server_ignores_range() {
        let payload: Vec<u8> = (0..5000u32).map(|v| (v % 241) as u8).collect();
        let url = serve_with(payload.clone(), 1, false, None);
        let dir = tempfile::tempdir().unwrap();
        let file = leak_file("restart.bin", &payload);
        let target = dir.path().join(file.name);
        // A stale partial file whose bytes are not a prefix of the payload.
        fs::write(part_path(&target), vec![0xEEu8; 1234]).unwrap();
        fetch_url(&agent(), &format!("{url}x"), file, &target, &QUIET).unwrap();
        assert_eq!(
            fs::read(&target).unwrap(),
            payload,
            "the stale prefix was kept instead of restarting"
        );
    }

    #[test]
    fn oversized_response_is_refused() {
        let url = serve(vec![7u8; 10_000], 1);
        let dir = tempfile::tempdir().unwrap();
        let file = leak_file("small.bin", &[1, 2, 3]);
        let e = format!(
            "{:#}",
            fetch_url(
                &agent(),
                &format!("{url}x"),
                file,
                &dir.path().join("small.bin"),
                &QUIET
            )
            .unwrap_err()
        );
        assert!(e.contains("limit"), "{e}");
    }

    #[test]
    fn unreachable_host_is_reported_per_mirror() {
        // Port 9 on loopback (discard) is closed here: connection refused.
        let file = RemoteFile {
            mirrors: &["http://127.0.0.1:9/"],
            ..*leak_file("gone.bin", b"x")
        };
        let dir = tempfile::tempdir().unwrap();
        let e = format!(
            "{:#}",
            download(DatasetKind::Mnist, &file, &dir.path().join("gone.bin"), &QUIET).unwrap_err()
        );
        assert!(
            e.contains("http://127.0.0.1:9/gone.bin") && e.contains("--from DIR"),
            "{e}"
        );
    }

    #[test]
    fn import_verifies_and_rejects_corrupt_copies() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let payload = b"payload".to_vec();
        let file = leak_file("labels.gz", &payload);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&payload).unwrap();
        fs::write(src.path().join("labels.gz"), gz.finish().unwrap()).unwrap();
        import(DatasetKind::Mnist, file, src.path(), &dst.path().join("labels.gz")).unwrap();
        catalog::verify_file(&dst.path().join("labels.gz"), file).unwrap();

        let bad = leak_file("other.gz", b"something else");
        fs::write(src.path().join("other"), b"not it").unwrap();
        let e = import(DatasetKind::Mnist, bad, src.path(), &dst.path().join("other.gz"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("checksum mismatch"), "{e}");
        assert!(!dst.path().join("other").exists());
        assert_eq!(fs::read_dir(dst.path()).unwrap().count(), 1, "no temporary file left");
    }

    #[test]
    fn a_users_file_in_the_way_is_never_overwritten() {
        let src = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let payload = b"payload".to_vec();
        let file = leak_file("t10k-labels-idx1-ubyte.gz", &payload);
        fs::write(src.path().join("t10k-labels-idx1-ubyte"), &payload).unwrap();
        let dir = DatasetKind::Mnist.dir(data.path());
        fs::create_dir_all(&dir).unwrap();
        // The user's own (different) file under the published name.
        fs::write(dir.join("t10k-labels-idx1-ubyte.gz"), b"my notes").unwrap();
        let e = format!(
            "{:#}",
            fetch_file(DatasetKind::Mnist, file, &dir, Some(src.path()), &QUIET).unwrap_err()
        );
        assert!(
            e.contains("t10k-labels-idx1-ubyte.gz") && e.contains("does not overwrite"),
            "{e}"
        );
        assert_eq!(fs::read(dir.join("t10k-labels-idx1-ubyte.gz")).unwrap(), b"my notes");
        assert!(!dir.join("t10k-labels-idx1-ubyte").exists());

        // Without it, the imported file is the one the loader reads, and it verifies.
        fs::remove_file(dir.join("t10k-labels-idx1-ubyte.gz")).unwrap();
        fetch_file(DatasetKind::Mnist, file, &dir, Some(src.path()), &QUIET).unwrap();
        let read = catalog::locate(&dir, file).unwrap();
        assert_eq!(read, dir.join("t10k-labels-idx1-ubyte"));
        catalog::verify_file(&read, file).unwrap();
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "no temporary file left");
    }

    #[test]
    fn a_file_that_appears_meanwhile_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("a.part");
        let to = dir.path().join("a");
        fs::write(&from, b"verified").unwrap();
        fs::write(&to, b"someone else's").unwrap();
        let e = move_noclobber(&from, &to).unwrap_err().to_string();
        assert!(e.contains("not replacing"), "{e}");
        assert_eq!(fs::read(&to).unwrap(), b"someone else's");
    }
}
