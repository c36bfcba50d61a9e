//! Fault points for the fault-injection tests. `DRAKE_FAULT_POINTS=a,b` makes the
//! coordinator abort (no cleanup, like SIGKILL) the first time it reaches a named
//! point, so a test can stop it in exactly the window it means to prove safe: after
//! a completion and before its promotion, after finalize wrote its files and before
//! the job succeeded. Unset, each point costs one lookup in an empty set. A few
//! points lose work instead of the process ([`lose`]).

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
/// In the probe chore, once claimed: that run stops without recording an outcome,
/// as one whose apalis worker died under it does, and the process goes on.
pub const LOSE_PROBE: &str = "lose-probe";

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

/// True the first time `name` is reached, if it is armed (see [`LOSE_PROBE`]):
/// the caller then drops its work there.
pub fn lose(name: &str) -> bool {
    static SPENT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    if !armed().contains(name) {
        return false;
    }
    let mut spent = SPENT.lock().unwrap_or_else(|e| e.into_inner());
    if spent.iter().any(|s| s == name) {
        return false;
    }
    spent.push(name.to_string());
    proto::log!("coordinator: fault point {name}: dropping this run");
    true
}
