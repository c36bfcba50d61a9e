//! State shared by the HTTP layer, the chores and the reconciler: the queue, the
//! store, the event bus, limits and secrets. It sits below every handler, so the
//! queue, storage and chores never depend on HTTP code.

use crate::queue::Queue;
use crate::storage;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// The farm's clock, unix ms: this machine's clock plus the offset to the shared
/// database's (see [`crate::queue::Queue::sync_clock`]; zero on SQLite). Leases,
/// backoffs and deadlines written by several coordinators compare on it.
pub fn now_ms() -> i64 {
    system_ms() + CLOCK_OFFSET_MS.load(std::sync::atomic::Ordering::Relaxed)
}

/// This machine's wall clock, unix ms.
pub fn system_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

static CLOCK_OFFSET_MS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

pub(crate) fn set_clock_offset(ms: i64) {
    CLOCK_OFFSET_MS.store(ms, std::sync::atomic::Ordering::Relaxed);
}

/// Limits on what a caller can send.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_upload_bytes: u64,
    /// Hard runtime cap given to every task's child process.
    pub task_timeout_seconds: u64,
    /// How long copying a URL source into storage may take, per attempt.
    pub ingest_timeout_seconds: u64,
    /// Uploads are refused (507) when they would leave less than this free on the
    /// spool disk.
    pub min_free_disk_bytes: u64,
    /// How long an unfinished resumable upload is kept after its last part.
    pub upload_expiry_ms: i64,
    /// Most bytes all unfinished resumable uploads together may hold (507 past it).
    pub max_spool_bytes: u64,
    /// How long a transfer to or from storage may go without moving a byte (the
    /// coordinator's own, and its workers', told in each lease).
    pub store_stall_seconds: u64,
    /// How long a task's child process may go without reporting progress before
    /// its worker stops it (told in each lease).
    pub engine_stall_seconds: u64,
}

/// Largest JSON body on the API (jobs, tokens); over it, 413 at once.
pub const MAX_JSON_BYTES: usize = 1 << 20;
/// Largest body of a worker's call (a completion lists every segment of a long film).
pub const MAX_WORKER_BODY_BYTES: usize = 16 << 20;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_upload_bytes: 20 * 1024 * 1024 * 1024,
            task_timeout_seconds: 4 * 3600,
            ingest_timeout_seconds: 2 * 3600,
            min_free_disk_bytes: 1 << 30,
            upload_expiry_ms: 24 * 3_600_000,
            max_spool_bytes: 100 * 1024 * 1024 * 1024,
            store_stall_seconds: proto::transfer::STALL_WITHIN.as_secs(),
            engine_stall_seconds: proto::wire::ENGINE_STALL_SECONDS,
        }
    }
}

/// Shared state of the HTTP handlers and chores.
#[derive(Clone)]
pub struct AppState {
    pub queue: Queue,
    /// The `drake` executable, run as a child for `drake probe` (the coordinator never links libav).
    pub drake_exe: Arc<PathBuf>,
    /// Root of the files served under `/dav/`.
    pub storage: storage::Store,
    pub dav: dav_server::DavHandler,
    /// Every job and task change, as JSON, for `/api/v1/events`.
    pub events: tokio::sync::broadcast::Sender<String>,
    /// Woken when tasks become leasable, so long-polling workers answer at once.
    pub work_ready: Arc<tokio::sync::Notify>,
    pub limits: Limits,
    pub webhook_secret: Arc<String>,
    /// Durable background chores (apalis).
    pub chores: crate::background::Chores,
    /// The jobs whose chore runs in this process now (see `chores::Running`).
    pub chores_running: crate::chores::Running,
    /// Per-caller caps on open streams, long polls and uploads.
    pub gate: crate::gate::Gate,
    /// Which networks caller-named URLs (sources, webhooks) may reach.
    pub network: Arc<crate::fetch::NetPolicy>,
    /// This coordinator process, unique per start: the owner of the chores it claims.
    pub instance: Arc<String>,
    /// Carries events and wake-ups to the other coordinators of a shared database.
    pub relay: crate::relay::Relay,
    /// Web origins whose pages may call the API (`--cors-origin`).
    pub cors: Arc<crate::cors::Origins>,
}

impl AppState {
    /// Publishes an event to SSE subscribers (dropped when nobody listens), here
    /// and on the other coordinators.
    pub fn emit(&self, kind: &str, data: Value) {
        let mut data = data;
        data["type"] = json!(kind);
        let event = data.to_string();
        self.relay.event(&event);
        let _ = self.events.send(event);
    }

    /// Wakes long-polling workers, here and on the other coordinators: tasks
    /// became leasable.
    pub fn wake_workers(&self) {
        self.work_ready.notify_waiters();
        self.relay.work();
    }
}

/// One line on the coordinator's log for an operator's action, with the time.
pub fn audit(what: &str) {
    let now = now_ms();
    proto::log!("{}.{:03}Z {what}", proto::time::rfc3339(now / 1000).trim_end_matches('Z'), now % 1000);
}
