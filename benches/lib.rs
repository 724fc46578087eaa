//! Shared helpers for the benchmarks, and the workloads of `cargo xtask bench`
//! ([`workloads`]).
pub mod gpu;
pub mod workloads;

/// Peak resident set size of this process in MiB (Linux `VmHWM`), if known.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The largest peak RSS of this process's finished children in MiB
/// (`getrusage(RUSAGE_CHILDREN)`), if any ran.
pub fn children_peak_rss_mib() -> Option<f64> {
    let u = children_usage()?;
    (u.ru_maxrss > 0).then(|| u.ru_maxrss as f64 / 1024.0)
}

/// CPU time (user + system) of this process's finished children, in seconds, if any ran.
pub fn children_cpu_seconds() -> Option<f64> {
    let u = children_usage()?;
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    let total = s(u.ru_utime) + s(u.ru_stime);
    (total > 0.0).then_some(total)
}

fn children_usage() -> Option<libc::rusage> {
    let mut u = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole `rusage` into the pointer it is given.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, u.as_mut_ptr()) };
    // SAFETY: zero-initialised and, when rc == 0, filled by getrusage.
    (rc == 0).then(|| unsafe { u.assume_init() })
}

/// Prints the peak RSS line every benchmark binary ends with.
pub fn report_peak_rss(name: &str) {
    match peak_rss_mib() {
        Some(m) => println!("{name}: peak RSS {m:.1} MiB"),
        None => println!("{name}: peak RSS unknown on this platform"),
    }
}

/// CPU time (user + system, all threads) this process has used, in seconds, from
/// `/proc/self/stat` (Linux; 10 ms resolution), if known.
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}
