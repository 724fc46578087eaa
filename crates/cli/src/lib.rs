//! The library side of the `digitlab` CLI: its arguments ([`args`]), suites of
//! experiments ([`suite`]) and their report ([`report`]).
pub mod args;
pub mod report;
pub mod suite;
