//! The library side of the `digitlab` CLI: suites of experiments ([`suite`]) and
//! their report ([`report`]).
pub mod report;
pub mod suite;
