//! Runs every theory topic (or the one named) and writes plots + theory.md.
//!
//! `cargo run --release -p digitlab-theory --example theory_demo -- [topic|all] [OUT] [--embedded]`
use digitlab_theory::{report, DataChoice, TheoryConfig, Topic};
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let embedded = args.iter().any(|a| a == "--embedded");
    let pos: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let topics = Topic::parse_list(pos.first().map(|s| s.as_str()).unwrap_or("all"))?;
    let out = PathBuf::from(pos.get(1).map(|s| s.as_str()).unwrap_or("/tmp/theory-demo"));
    let cfg = if embedded {
        TheoryConfig::embedded()
    } else {
        TheoryConfig {
            data: DataChoice::Auto(None),
            ..TheoryConfig::default()
        }
    };
    let report = report::run_topics(&topics, &cfg, &out, |s| println!("{}", s.to_text(&out)))?;
    println!("data: {}", report.data_description);
    println!("report: {}", report.markdown.display());
    if !report.all_hold() {
        return Err("a claim did not hold".into());
    }
    Ok(())
}
