//! Experiment configs: TOML parsing, `--set key=value` overrides, type checks
//! and validation, and the TOML round trip that sweeps rely on.
//!
//! Input: TOML text, then optionally a NUL byte and `--set` overrides, one a line.
#![no_main]
use digitlab_fuzz::AllocCap;
use digitlab_train::config::{parse_value, split_key_path};
use digitlab_train::ExperimentConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _cap = AllocCap::for_input(data.len());
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (toml_text, overrides) = text.split_once('\0').unwrap_or((text, ""));
    let overrides: Vec<String> = overrides.lines().map(str::to_string).collect();
    for o in &overrides {
        let _ = split_key_path(o);
        let _ = parse_value(o);
    }
    let Ok(cfg) = ExperimentConfig::from_toml_str(toml_text, &overrides) else {
        return;
    };
    // What validated once must serialise, and read back to the same config.
    let again = ExperimentConfig::from_value(cfg.to_value()).expect("a valid config survives its own round trip");
    if cfg == cfg {
        // (NaN-free configs only: NaN != NaN.)
        assert_eq!(again, cfg);
    }
    // Checkpoint sidecars store the config as JSON; it must come back from there too.
    let json = serde_json::to_value(&cfg).expect("a valid config serialises to JSON");
    let back: ExperimentConfig = serde_json::from_value(json).expect("a valid config reads back from JSON");
    if cfg == cfg {
        assert_eq!(back, cfg);
    }
});
