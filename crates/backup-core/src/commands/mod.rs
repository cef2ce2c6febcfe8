//! Commands: what the binaries run, each a library call with `*Options` in and a `*Report`
//! out — backup, restore (plan, apply), check, GC, prune, and a run's metrics.

pub mod backup;
pub mod check;
pub mod gc;
pub mod prune;
pub mod restore;
pub mod run_metrics;
