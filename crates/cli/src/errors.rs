//! How the CLI prints an error: one readable message, then one `caused by:` line per
//! underlying cause, and a backtrace only when the user asked for one (`--verbose`,
//! or `RUST_BACKTRACE` / `RUST_LIB_BACKTRACE` as anyhow documents).
use std::backtrace::BacktraceStatus;
use std::fmt::Write;

/// Whether the environment asks for backtraces, as `std::backtrace::Backtrace::capture`
/// (and so anyhow) reads it: `RUST_LIB_BACKTRACE` wins over `RUST_BACKTRACE`, and any
/// value but `0` means yes.
pub fn backtrace_requested(var: impl Fn(&str) -> Option<String>) -> bool {
    let on = |v: String| v != "0";
    match var("RUST_LIB_BACKTRACE") {
        Some(v) => on(v),
        None => var("RUST_BACKTRACE").is_some_and(on),
    }
}

/// `error: <message>`, `caused by: <cause>` lines, and, with `backtrace`, the
/// backtrace anyhow captured (when it captured one). A cause whose text is already
/// part of what is printed (errors that show their source in their own message) is
/// not repeated.
pub fn render(e: &anyhow::Error, backtrace: bool) -> String {
    let mut out = format!("error: {e}\n");
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !out.contains(&text) {
            let _ = writeln!(out, "caused by: {text}");
        }
    }
    if backtrace {
        let bt = e.backtrace();
        if bt.status() == BacktraceStatus::Captured {
            let _ = write!(out, "\nbacktrace:\n{bt}");
        } else {
            out.push_str("\n(no backtrace was captured)\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn one_message_then_its_causes() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = Err::<(), _>(io)
            .context("reading configs/x.toml")
            .context("loading the suite")
            .unwrap_err();
        assert_eq!(
            render(&e, false),
            "error: loading the suite\ncaused by: reading configs/x.toml\ncaused by: no such file\n"
        );
        assert!(render(&e, true).starts_with("error: loading the suite\ncaused by: reading configs/x.toml\n"));
    }

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        #[derive(Debug)]
        struct WithSource(std::io::Error);
        impl std::fmt::Display for WithSource {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "x.toml: {}", self.0)
            }
        }
        impl std::error::Error for WithSource {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = anyhow::Error::new(WithSource(std::io::Error::other("disk full")));
        assert_eq!(render(&e, false), "error: x.toml: disk full\n");
    }

    #[test]
    fn the_environment_decides_like_std() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        };
        assert!(!backtrace_requested(env(&[])));
        assert!(backtrace_requested(env(&[("RUST_BACKTRACE", "1")])));
        assert!(backtrace_requested(env(&[("RUST_BACKTRACE", "full")])));
        assert!(!backtrace_requested(env(&[("RUST_BACKTRACE", "0")])));
        assert!(!backtrace_requested(env(&[
            ("RUST_BACKTRACE", "1"),
            ("RUST_LIB_BACKTRACE", "0")
        ])));
        assert!(backtrace_requested(env(&[
            ("RUST_BACKTRACE", "0"),
            ("RUST_LIB_BACKTRACE", "1")
        ])));
    }
}
