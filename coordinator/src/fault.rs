//! Fault points for the fault-injection tests. `DRAKE_FAULT_POINTS=a,b` makes the
//! coordinator abort (no cleanup, like SIGKILL) the first time it reaches a named
//! point, so a test can stop it in exactly the window it means to prove safe: after
//! a completion and before its promotion, after finalize wrote its files and before
//! the job succeeded. Unset, each point costs one lookup in an empty set.

use std::collections::HashSet;
use std::sync::OnceLock;

/// Where a crash is interesting.
pub const AFTER_COMPLETE: &str = "after-complete";
pub const AFTER_OUTPUTS: &str = "after-outputs";
pub const AFTER_CREATE: &str = "after-create";
/// In a webhook delivery chore, before it posts (the chore is claimed in apalis).
pub const BEFORE_DELIVERY: &str = "before-delivery";
/// In a tus PATCH, once an upload's second part is recorded, before the answer.
pub const TUS_AFTER_SECOND_PART: &str = "tus-after-second-part";

fn armed() -> &'static HashSet<String> {
    static POINTS: OnceLock<HashSet<String>> = OnceLock::new();
    POINTS.get_or_init(|| {
        std::env::var("DRAKE_FAULT_POINTS").unwrap_or_default().split(',').filter(|s| !s.is_empty()).map(String::from).collect()
    })
}

/// Aborts the process if `name` is armed.
pub fn point(name: &str) {
    if armed().contains(name) {
        proto::log!("coordinator: fault point {name}: aborting");
        std::process::abort();
    }
}
