//! Restore drills: restore a snapshot into scratch servers the drill starts itself, check the
//! data against the facts recorded at backup time, measure RTO and RPO against budgets, and
//! write reports (JSON, Markdown, Prometheus textfile).
//!
//! | module | role |
//! |---|---|
//! | [`demo`] | the demo: fixtures (compiled in) backed up into a temporary repository |
//! | [`file`] | the drill file (TOML) |
//! | [`run`] | the runner: scratch targets, restore, checks, timings |
//! | [`report`] | the report and its JSON / Markdown / Prometheus renderings |

#![forbid(unsafe_code)]

pub mod demo;
pub mod file;
pub mod pitr;
pub mod report;
pub mod run;

pub use file::DrillFile;
pub use report::{CheckResult, DrillReport};
pub use run::{DrillOptions, run_drill};
