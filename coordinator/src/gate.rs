//! Per-caller caps on long-lived requests: event streams per token, long polls per
//! worker, uploads in flight per token. A count of open connections is the one
//! thing kept only in memory, because it dies with them: a restart has none open.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// What is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Events,
    LongPoll,
    Upload,
}

impl Kind {
    /// How many one caller may hold open at once.
    pub fn cap(self) -> usize {
        match self {
            // A dashboard shares one stream per browser; a pipeline needs a few.
            Kind::Events => 16,
            // A worker polls once per free slot round; a few spare for restarts.
            Kind::LongPoll => 4,
            Kind::Upload => 8,
        }
    }
}

#[derive(Clone, Default)]
pub struct Gate {
    open: Arc<Mutex<HashMap<(Kind, String), usize>>>,
}

/// Held while the request runs; dropping it frees the place.
pub struct Permit {
    gate: Gate,
    key: (Kind, String),
}

impl Gate {
    /// A place for `caller` (a token digest or worker id), or `None` at its cap.
    pub fn enter(&self, kind: Kind, caller: &str) -> Option<Permit> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let key = (kind, caller.to_string());
        let n = open.entry(key.clone()).or_insert(0);
        if *n >= kind.cap() {
            return None;
        }
        *n += 1;
        Some(Permit { gate: self.clone(), key })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut open = self.gate.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Why the spool disk cannot take `more` bytes and still keep `reserve` free, if
/// it cannot. The spool directory's own file system (a disk of its own may be
/// mounted there), or its parent's before the first upload made it.
pub fn spool_short_of(spool: &std::path::Path, more: u64, reserve: u64) -> std::io::Result<Option<String>> {
    let disk = if spool.is_dir() { spool } else { spool.parent().unwrap_or(spool) };
    let short = proto::disk::short_of(disk, more, reserve)?;
    Ok(short.map(|free| format!("the coordinator's spool disk has {free} bytes free, and keeps {reserve} in reserve")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_caller_holds_at_most_its_cap() {
        let g = super::Gate::default();
        let held: Vec<_> = (0..4).map(|_| g.enter(super::Kind::LongPoll, "w1").unwrap()).collect();
        assert!(g.enter(super::Kind::LongPoll, "w1").is_none());
        assert!(g.enter(super::Kind::LongPoll, "w2").is_some(), "caps are per caller");
        drop(held);
        assert!(g.enter(super::Kind::LongPoll, "w1").is_some());
    }
}
