//! Shared helpers for the benchmarks.

/// Peak resident set size of this process in MiB (Linux `VmHWM`), if known.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Prints the peak RSS line every benchmark binary ends with.
pub fn report_peak_rss(name: &str) {
    match peak_rss_mib() {
        Some(m) => println!("{name}: peak RSS {m:.1} MiB"),
        None => println!("{name}: peak RSS unknown on this platform"),
    }
}
