//! Commands: what the binaries run, each a library call with `*Options` in and a `*Report`
//! out — backup, restore (plan, apply), browse (ls, find, diff, dump by file catalog), check,
//! GC, prune, and a run's metrics.

pub mod backup;
pub mod browse;
pub mod check;
pub mod gc;
pub mod prune;
pub mod restore;
pub mod run_metrics;
