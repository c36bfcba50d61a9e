//! The durable task queue on SQLite: jobs, tasks, leases with epochs, retries with
//! backoff. Every function takes `now` (unix ms) from its caller, so lease expiry
//! and backoff are tested with a clock the test controls, never with sleeps.
//!
//! Lease protocol: `lease` grants a task to a worker with `epoch + 1` and an expiry;
//! the worker renews it with `heartbeat` (which also carries progress and returns the
//! cancel flag) and ends it with `complete` or `fail`. All three match on
//! (task, worker, epoch): once a lapsed lease was re-granted, the old holder's calls
//! change nothing and get [`QueueError::StaleLease`].

use serde::{Deserialize, Serialize};
use sql::Exec;
use sqlx::Executor;
use sqlx::{AnyConnection, AnyPool, any::AnyPoolOptions};
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migrating the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0} not found")]
    NotFound(String),
    #[error("task {task}: lease epoch {epoch} is no longer held by this worker")]
    StaleLease { task: String, epoch: i64 },
    #[error("{0}")]
    Conflict(String),
}

impl QueueError {
    /// Stable code for API errors.
    pub fn code(&self) -> &'static str {
        match self {
            QueueError::Db(_) | QueueError::Migrate(_) => "internal",
            QueueError::NotFound(_) => "not_found",
            QueueError::StaleLease { .. } => "stale_lease",
            QueueError::Conflict(_) => "conflict",
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, QueueError::Db(_))
    }
}

pub type Result<T, E = QueueError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy)]
pub struct QueueConfig {
    /// How long a lease lasts without a heartbeat.
    pub lease_ttl_ms: i64,
    /// First retry waits this long; each further attempt doubles it.
    pub backoff_base_ms: i64,
    pub backoff_max_ms: i64,
    /// Attempts per task before its job fails (infrastructure failures only).
    pub max_attempts: i64,
    /// How long a queued task may wait while no live worker has its encoder,
    /// before it fails with that reason.
    pub capable_worker_wait_ms: i64,
    /// How long an owed chore may wait for a full disk or an unreachable store (its
    /// attempts given back) before further attempts count as failed ones.
    pub space_wait_ms: i64,
    /// On PostgreSQL, the longest a queue statement may run (waiting for a lock
    /// included) and a connection may take to open, before it fails: a hung one
    /// would hold a report turn ([`turns`]) for good.
    pub statement_timeout_ms: i64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            lease_ttl_ms: 30_000,
            backoff_base_ms: 2_000,
            backoff_max_ms: 120_000,
            max_attempts: 4,
            capable_worker_wait_ms: 3_600_000,
            space_wait_ms: 3_600_000,
            statement_timeout_ms: 30_000,
        }
    }
}

impl QueueConfig {
    /// Wait before attempt `attempts + 1`.
    pub fn backoff(&self, attempts: i64) -> i64 {
        let shift = (attempts.max(1) - 1).min(20) as u32;
        (self.backoff_base_ms.saturating_mul(1 << shift)).min(self.backoff_max_ms)
    }
}

pub use proto::wire::{ChunkSpan, TaskKind};

/// A coordinator whose heartbeat is older than this is gone: what it claimed is
/// claimed again by the others. Coordinators heartbeat every second.
pub const COORDINATOR_TTL_MS: i64 = 10_000;

/// How long the coordinator that accepted a completion has to promote its outputs
/// before the reconciler does it instead.
pub const PROMOTE_GRACE_MS: i64 = 30_000;

/// How long after a retry is due only workers other than the one whose attempt
/// failed may take it, while another is live (written into `lease_claim!`, which a
/// unit test checks).
pub const RETRY_ELSEWHERE_MS: i64 = 60_000;

/// What one lease may carry besides its first task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bundling {
    /// Most renditions in the lease, the first included.
    pub max_renditions: usize,
    /// Whether the worker can make a job's thumbnails while it transcodes.
    pub thumbnails: bool,
}

impl Bundling {
    pub const NONE: Bundling = Bundling { max_renditions: 1, thumbnails: false };
}

fn kind_str(k: TaskKind) -> &'static str {
    k.as_str()
}

fn parse_kind(s: &str) -> TaskKind {
    TaskKind::parse(s).unwrap_or(TaskKind::Transcode)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewJob {
    /// The pipeline (submit token label) that owns it; `None` when an admin submitted it.
    pub pipeline: Option<String>,
    pub profile: String,
    pub source: String,
    pub callback_url: Option<String>,
    pub priority: i64,
    pub idempotency_key: Option<String>,
    /// Worker tags a machine must have all of to take the job's tasks.
    pub requires_tags: Vec<String>,
    /// Caption files sent with it.
    pub captions: Vec<proto::captions::Sidecar>,
}

#[derive(Debug, Clone)]
pub struct NewTask {
    pub kind: TaskKind,
    /// The rendition it makes (for an audio task: whose audio settings it uses).
    pub rendition: Option<String>,
    /// The encoder a worker must have to take this task.
    pub requires: Option<String>,
    /// A chunk task's frames.
    pub chunk: Option<ChunkSpan>,
    /// A chunk task's output frame size (width x height): what a chunk bundle weighs
    /// (see [`Queue::lease_bundle`]). Other tasks are not weighed.
    pub pixels: Option<u64>,
}

impl NewTask {
    pub fn transcode(rendition: &str, requires: Option<String>) -> NewTask {
        NewTask { kind: TaskKind::Transcode, rendition: Some(rendition.into()), requires, chunk: None, pixels: None }
    }

    pub fn thumbnails() -> NewTask {
        NewTask { kind: TaskKind::Thumbnails, rendition: None, requires: None, chunk: None, pixels: None }
    }

    pub fn chunk(rendition: &str, span: ChunkSpan, requires: Option<String>) -> NewTask {
        NewTask { kind: TaskKind::Chunk, rendition: Some(rendition.into()), requires, chunk: Some(span), pixels: None }
    }

    /// A job's audio, with `rendition`'s audio settings (every rung's are the profile's).
    pub fn audio(rendition: &str) -> NewTask {
        NewTask { kind: TaskKind::Audio, rendition: Some(rendition.into()), requires: None, chunk: None, pixels: None }
    }

    /// The text subtitles of a source without audio, which the audio task would
    /// extract beside it (named `subtitles`).
    pub fn subtitles() -> NewTask {
        NewTask { kind: TaskKind::Audio, rendition: None, requires: None, chunk: None, pixels: None }
    }

    /// Joins `rendition` once its chunks and the job's audio are done.
    pub fn join(rendition: &str) -> NewTask {
        NewTask { kind: TaskKind::Join, rendition: Some(rendition.into()), requires: None, chunk: None, pixels: None }
    }

    /// The same task, weighing `width` x `height` output pixels per frame.
    pub fn with_pixels(self, width: u32, height: u32) -> NewTask {
        NewTask { pixels: Some(u64::from(width) * u64::from(height)), ..self }
    }

    /// The task's name: where its outputs go (see [`crate::storage::output_dir`]).
    pub fn name(&self) -> String {
        task_name(self.kind, self.rendition.as_deref(), self.chunk.map(|c| c.index))
    }
}

/// A task's name: its rendition's, `thumbnails`, `audio`, `subtitles` (an audio
/// task without a rendition), or `RENDITION.cNNNN` for one chunk (rendition names
/// cannot hold a `.`, nor be one of `proto::profile::RESERVED_NAMES`).
pub fn task_name(kind: TaskKind, rendition: Option<&str>, chunk: Option<u32>) -> String {
    match (kind, rendition, chunk) {
        (TaskKind::Thumbnails, ..) => "thumbnails".into(),
        (TaskKind::Audio, None, _) => "subtitles".into(),
        (TaskKind::Audio, ..) => "audio".into(),
        (TaskKind::Chunk, Some(r), Some(i)) => format!("{r}.c{i:04}"),
        (_, r, _) => r.unwrap_or("thumbnails").into(),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub state: String,
    /// The pipeline that submitted it (`None`: an admin).
    #[serde(default)]
    pub pipeline: Option<String>,
    pub profile: String,
    pub source: String,
    pub callback_url: Option<String>,
    pub priority: i64,
    /// Worker tags its tasks need (from its profile and its submit).
    #[serde(default)]
    pub requires_tags: Vec<String>,
    /// Caption files sent with it, published as subtitles beside the source's own.
    #[serde(default)]
    pub captions: Vec<proto::captions::Sidecar>,
    pub error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// True as soon as one rendition is published.
    pub playable: bool,
    /// Paths (under `/dav/`) of the master playlist and manifest, once finalized.
    pub outputs: Option<serde_json::Value>,
    /// What the job waits for while it is live (its probe, a capable worker, a free
    /// worker, its running tasks, finalize); `None` once it has ended.
    #[serde(default)]
    pub waiting_for: Option<String>,
    pub probe: Option<serde_json::Value>,
    /// How a job cut in time chunks is split: `None` when it is encoded whole.
    #[serde(default)]
    pub chunks: Option<ChunksView>,
    pub tasks: Vec<Task>,
}

/// A chunked job's chunks: how many, and how many are done in every rendition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunksView {
    pub count: u32,
    pub done: u32,
}

impl ChunksView {
    fn of(tasks: &[Task]) -> Option<ChunksView> {
        let mut chunks: std::collections::BTreeMap<u32, bool> = Default::default();
        for t in tasks.iter().filter(|t| t.kind == TaskKind::Chunk) {
            let done = chunks.entry(t.chunk?).or_insert(true);
            *done &= t.state == "succeeded";
        }
        (!chunks.is_empty()).then(|| ChunksView { count: chunks.len() as u32, done: chunks.values().filter(|d| **d).count() as u32 })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub kind: TaskKind,
    pub rendition: Option<String>,
    /// Its name: the rendition's, `thumbnails`, `audio`, or `RENDITION.cNNNN`.
    #[serde(default)]
    pub name: String,
    /// A chunk task's chunk index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk: Option<u32>,
    pub state: String,
    pub progress: f64,
    pub attempts: i64,
    pub worker: Option<String>,
    pub error: Option<String>,
    /// The end of the failed child's stderr.
    pub log_tail: Option<String>,
    /// Unix ms: when it became runnable, was last leased, the child ran (from the
    /// worker's report), and when it ended.
    pub timing: TaskTiming,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskTiming {
    pub queued_at: Option<i64>,
    pub leased_at: Option<i64>,
    pub child_started_at: Option<i64>,
    pub child_exited_at: Option<i64>,
    pub finished_at: Option<i64>,
}

/// See [`Queue::task_target`].
#[derive(Debug, Clone, PartialEq)]
pub struct TaskTarget {
    pub job_id: String,
    pub kind: TaskKind,
    pub name: String,
    pub rendition: Option<String>,
    pub chunk: Option<ChunkSpan>,
}

/// See [`Queue::job_summary`].
#[derive(Debug, Clone, PartialEq)]
pub struct JobSummary {
    pub state: String,
    pub error: Option<String>,
    pub outputs: Option<serde_json::Value>,
    pub chore_due: bool,
    pub owes_delivery: bool,
}

/// What a worker can take: the encoders its libav has and the tags it was given.
#[derive(Debug, Clone, Copy)]
pub struct Fit<'a> {
    pub encoders: &'a [String],
    pub tags: &'a [String],
}

/// A granted lease: what the worker must echo back to heartbeat, complete or fail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub task_id: String,
    pub job_id: String,
    pub epoch: i64,
    pub kind: TaskKind,
    pub rendition: Option<String>,
    /// Where its outputs go (see [`task_name`]).
    pub name: String,
    pub chunk: Option<ChunkSpan>,
    pub profile: String,
    pub source: String,
    pub expires_at: i64,
    pub attempt: i64,
    /// The job's audio is a task of its own (every job with video and audio).
    pub has_audio: bool,
}

/// Which tasks a bundle's further claims may take: `job`'s of `kind` (of one
/// chunk, and of at most so many pixels, if given).
#[derive(Clone, Copy)]
struct Only<'a> {
    job: &'a str,
    kind: TaskKind,
    chunk: Option<i64>,
    max_pixels: Option<i64>,
}

/// A claimed task's lease, and its weight (see [`NewTask::pixels`]).
struct Claimed {
    lease: Lease,
    pixels: Option<i64>,
}

/// The database a queue runs on. The state machine is the same on both: the few
/// statements whose SQL differs (claims, locks, JSON) are chosen by `match` on it,
/// next to each other, and each backend has its own migrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded, one coordinator process: the default.
    Sqlite,
    /// Shared by several coordinators.
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// Where the farm's state lives, from `--database`: a path or `sqlite://PATH`, or a
/// `postgres://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Sqlite(std::path::PathBuf),
    Postgres(String),
}

impl DatabaseUrl {
    pub fn parse(s: &str) -> Result<DatabaseUrl, String> {
        let s = s.trim();
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return Ok(DatabaseUrl::Postgres(s.to_string()));
        }
        let path = s.strip_prefix("sqlite://").or_else(|| s.strip_prefix("sqlite:")).unwrap_or(s);
        if path.is_empty() || path.contains("://") || path.contains('?') {
            return Err(format!("{s:?} is neither a path, sqlite://PATH nor postgres://..."));
        }
        Ok(DatabaseUrl::Sqlite(path.into()))
    }

    pub fn backend(&self) -> Backend {
        match self {
            DatabaseUrl::Sqlite(_) => Backend::Sqlite,
            DatabaseUrl::Postgres(_) => Backend::Postgres,
        }
    }

    /// The URL with any password replaced, for logs.
    pub fn redacted(&self) -> String {
        match self {
            DatabaseUrl::Sqlite(p) => format!("sqlite://{}", p.display()),
            DatabaseUrl::Postgres(u) => match url::Url::parse(u) {
                Ok(mut url) if url.password().is_some() => {
                    let _ = url.set_password(Some("***"));
                    url.to_string()
                }
                _ => u.clone(),
            },
        }
    }
}

/// A bundle companion's part of [`lease_claim`]: `$5`/`$6` only this job's tasks of
/// this kind, `$8` of this chunk, and `$9` of at most this many pixels.
macro_rules! only_clause {
    () => {
        "AND t.job_id = $5 AND t.kind = $6 AND (CAST($8 AS BIGINT) IS NULL OR t.chunk = $8)
         AND (CAST($9 AS BIGINT) IS NULL OR t.pixels <= $9)"
    };
}

/// A worker `w` that takes tasks now: not removed, draining or paused, and seen
/// within a lease's TTL (`$2` now, `$3` the TTL). Whom a retry (see
/// [`lease_claim`]) and a rendition's pinned chunks wait for.
macro_rules! takes_tasks {
    () => {
        "w.removed = 0 AND w.draining = 0 AND w.paused IS NULL AND w.last_seen >= $2 - $3"
    };
}

/// A task `t` whose inputs are made (see [`lease_claim`]): the job's audio for a
/// rendition (transcode or join) and the thumbnails, and its rendition's chunks for
/// a join.
macro_rules! inputs_made {
    () => {
        "(t.kind NOT IN ('transcode', 'join', 'thumbnails') OR NOT EXISTS (SELECT 1 FROM tasks d
                                 WHERE d.job_id = t.job_id AND d.kind = 'audio' AND d.state <> 'succeeded' LIMIT 1 OFFSET 0))
                           AND (t.kind <> 'join' OR NOT EXISTS (SELECT 1 FROM tasks d
                                 WHERE d.job_id = t.job_id AND d.kind = 'chunk' AND d.rendition = t.rendition AND d.state <> 'succeeded'
                                 LIMIT 1 OFFSET 0))"
    };
}

/// The lease claim, with `$lock` after the candidate's `LIMIT 1` (PostgreSQL's row
/// lock; nothing on SQLite, whose writer is alone). `$1` worker, `$2` now, `$3` the
/// lease TTL, `$4` the worker's encoders, and its tags (",a,b,") in `$tags`; a
/// bundle's companions add `$only` ([`only_clause`]). The first claim's statement
/// has no such clause, so that PostgreSQL's plan for it is as good made once as
/// made for each call: with the clause, it planned every claim afresh (750-850 µs
/// of planning for 300-400 µs of running).
/// A rendition (transcode or join) and the thumbnails are runnable only once the
/// job's audio succeeded (the renditions mux it; the thumbnails wait to share the
/// last renditions' decode), and a join only once its rendition's chunks did too.
/// Those two checks end in `LIMIT 1 OFFSET 0`, which keeps PostgreSQL from
/// turning them into a hash of every unfinished audio (or chunk) task of the farm,
/// built for each claim: 2 ms a claim at 90,000 queued tasks, where a lookup per
/// candidate in `tasks_pending_by_kind` is a few buffers.
/// A retry goes elsewhere first: a worker an attempt failed or lapsed on (each is
/// in `failed_by`, ",w1,w2,") takes it again only when every live worker has failed
/// it (or [`RETRY_ELSEWHERE_MS`] after it is due, when the others are busy or
/// cannot run it), so a worker that fails everything (a broken disk, a bad libav
/// build), or two of them, cannot spend a task's attempts alone, and a farm of one
/// worker retries at once.
/// A chunk pinned to an encoder build (`encoder_build`: that of its rendition's
/// first checked chunk, see [`Queue::claim_chunk_headers`]) goes to a worker of
/// that build while one is live, since the join writes one set of codec headers
/// for all of a rendition's chunks; once none is, to any worker (whose chunk then
/// claims the rendition afresh).
macro_rules! lease_claim {
    ($lock:literal, $only:expr, $tags:literal) => {
        concat!(
            "UPDATE tasks SET state = 'leased', worker_id = $1, epoch = epoch + 1, attempts = attempts + 1, leased_at = $2,
                 lease_expires_at = $2 + $3, progress = 0, updated_at = $2
             WHERE state = 'queued' AND id = (SELECT t.id FROM tasks t
                         WHERE t.state = 'queued' AND t.run_after <= $2 AND t.cancel = 0
                           AND (SELECT j.state FROM jobs j WHERE j.id = t.job_id) IN ('queued', 'running')
                           AND (t.requires IS NULL OR instr($4, ',' || t.requires || ',') > 0)
                           AND NOT EXISTS (SELECT 1 FROM workers w WHERE w.id = $1 AND (w.draining <> 0 OR w.removed <> 0))
                           AND (t.failed_by IS NULL OR instr(t.failed_by, ',' || $1 || ',') = 0 OR t.run_after + 60000 <= $2
                                OR NOT EXISTS (SELECT 1 FROM workers w WHERE instr(t.failed_by, ',' || w.id || ',') = 0 AND ",
            takes_tasks!(),
            "))
                           AND (t.encoder_build IS NULL OR t.encoder_build = (SELECT w.encoder_build FROM workers w WHERE w.id = $1)
                                OR NOT EXISTS (SELECT 1 FROM workers w WHERE w.encoder_build = t.encoder_build AND ",
            takes_tasks!(),
            ")) ",
            $only,
            "
                           AND NOT EXISTS (SELECT 1 FROM job_tags jt WHERE jt.job_id = t.job_id AND instr(",
            $tags,
            ", ',' || jt.tag || ',') = 0)
                           AND ",
            inputs_made!(),
            "
                         ORDER BY t.priority DESC, t.due_at, t.job_created_at, t.seq LIMIT 1 ",
            $lock,
            ")
             RETURNING id, job_id, epoch, kind, rendition, lease_expires_at, attempts, name, chunk, first_frame, frames, pixels,
                 (SELECT j.profile FROM jobs j WHERE j.id = tasks.job_id) AS profile,
                 (SELECT COALESCE(j.stored_source, j.source) FROM jobs j WHERE j.id = tasks.job_id) AS source,
                 (SELECT j.state FROM jobs j WHERE j.id = tasks.job_id) AS job_state,
                 CASE WHEN EXISTS (SELECT 1 FROM tasks a WHERE a.job_id = tasks.job_id AND a.name = 'audio' AND a.kind = 'audio')
                      THEN 1 ELSE 0 END AS has_audio"
        )
    };
}

#[derive(Clone)]
pub struct Queue {
    /// SQLite: the dashboard's and the API's longer reads. PostgreSQL: migrations,
    /// `drake db copy` and tests.
    pool: AnyPool,
    /// SQLite's one connection for writes and a worker's reads (see `conn`).
    held: Option<std::sync::Arc<conn::Shared>>,
    /// PostgreSQL's connections for everything else (see `conn`).
    pg: Option<std::sync::Arc<conn::PgConns>>,
    backend: Backend,
    pub cfg: QueueConfig,
    /// Recently authenticated callers (see [`crate::auth::Callers`]).
    pub(crate) callers: std::sync::Arc<crate::auth::Callers>,
    /// The targets of tasks this coordinator leased (see [`Targets`]).
    targets: std::sync::Arc<Targets>,
    /// The workers calling this coordinator (see [`crate::registry::SeenWorkers`]).
    pub(crate) seen: std::sync::Arc<crate::registry::SeenWorkers>,
    /// Leases the store's writes were checked against (see [`holds::Holds`]).
    pub(crate) holds: std::sync::Arc<holds::Holds>,
    /// Turns for reports, so that leases go first (see [`turns`]).
    reports: std::sync::Arc<turns::Turns>,
    /// `/metrics`' counters up to a settled time (see [`crate::stats::Tally`]).
    pub(crate) tally: std::sync::Arc<crate::stats::Tally>,
}

/// The targets of tasks this coordinator leased, for their completions: a task's
/// target (job, kind, name, rendition, chunk) never changes once it is planned, so
/// a kept one is never stale, and a completion through another coordinator reads
/// its own. Taken on use; bounded by emptying it when full.
#[derive(Default)]
struct Targets(std::sync::Mutex<HashMap<String, TaskTarget>>);

impl Targets {
    /// A few times the tasks a large farm holds at once.
    const MAX: usize = 8192;

    fn put(&self, task: &str, target: TaskTarget) {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() >= Targets::MAX {
            kept.clear();
        }
        kept.insert(task.to_string(), target);
    }

    fn take(&self, task: &str) -> Option<TaskTarget> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(task)
    }
}

impl Queue {
    /// Connects to (creating, for SQLite, if needed) the database and migrates it.
    pub async fn connect(url: &DatabaseUrl, cfg: QueueConfig) -> Result<Queue> {
        sqlx::any::install_default_drivers();
        match url {
            DatabaseUrl::Sqlite(path) => {
                // No ping before each checkout: a dead SQLite connection is not a thing.
                let pool = AnyPoolOptions::new()
                    .test_before_acquire(false)
                    .max_connections(8)
                    .after_connect(|conn, _| Box::pin(async move { sqlite_pragmas(conn).await }))
                    .connect(&format!("sqlite://{}?mode=rwc", path.display()))
                    .await?;
                Queue::migrated(pool, Some(&path.display().to_string()), cfg).await
            }
            DatabaseUrl::Postgres(url) => {
                let pool = AnyPoolOptions::new().max_connections(4).connect(url).await?;
                let mut q = Queue::migrated(pool, None, cfg).await?;
                q.pg = Some(conn::PgConns::new(url, cfg.statement_timeout_ms));
                q.sync_clock().await?;
                Ok(q)
            }
        }
    }

    /// Opens (creating if needed) the SQLite queue at `path` and migrates it.
    pub async fn open(path: &Path, cfg: QueueConfig) -> Result<Queue> {
        Queue::connect(&DatabaseUrl::Sqlite(path.into()), cfg).await
    }

    /// An in-memory SQLite queue, for tests.
    pub async fn in_memory(cfg: QueueConfig) -> Result<Queue> {
        sqlx::any::install_default_drivers();
        // A named database in SQLite's shared cache, so that the pool's connections
        // and the held one see the same tables.
        let name = format!("file:drake-{}?mode=memory&cache=shared", uuid::Uuid::new_v4());
        let pool = AnyPoolOptions::new()
            .test_before_acquire(false)
            .max_connections(2)
            .after_connect(|conn, _| Box::pin(async move { sqlite_pragmas(conn).await }))
            .connect(&format!("sqlite:{name}"))
            .await?;
        Queue::migrated(pool, Some(&name), cfg).await
    }

    /// The pool, for reads that stream many rows (`drake db copy`) and tests.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// How stale a live worker's `last_seen` may be before its next call writes
    /// it (see [`Queue::worker_seen`]): a tenth of the lease TTL, at most a second.
    pub fn seen_every_ms(&self) -> i64 {
        (self.cfg.lease_ttl_ms / 10).min(1000)
    }

    /// Migrates the database; `sqlite` is the SQLite database to open the held
    /// connection to (`None` on PostgreSQL).
    async fn migrated(pool: AnyPool, sqlite: Option<&str>, cfg: QueueConfig) -> Result<Queue> {
        let backend = if sqlite.is_some() { Backend::Sqlite } else { Backend::Postgres };
        match backend {
            Backend::Sqlite => sqlx::migrate!("./migrations/sqlite").run(&pool).await?,
            // The migrator holds an advisory lock: coordinators starting together are safe.
            Backend::Postgres => sqlx::migrate!("./migrations/postgres").run(&pool).await?,
        }
        let held = sqlite.map(|target| sql::sqlite::open(target).map(conn::Shared::new)).transpose()?;
        Ok(Queue {
            pool,
            held,
            pg: None,
            backend,
            cfg,
            callers: Default::default(),
            targets: Default::default(),
            seen: Default::default(),
            holds: Default::default(),
            reports: std::sync::Arc::new(turns::Turns::new(backend)),
            tally: Default::default(),
        })
    }

    /// A report's turn at the database, held while its statements run (see [`turns`]).
    async fn report_turn(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.reports.take().await
    }

    /// Keeps this coordinator's share of the farm's report turns while
    /// `coordinators` share the database (see [`turns`]).
    pub fn share_report_turns(&self, coordinators: usize) {
        self.reports.share(coordinators);
    }

    /// Sets the process's farm clock ([`crate::state::now_ms`]) to the database's,
    /// so that lease expiry does not depend on which coordinator's wall clock is
    /// right. A no-op on SQLite, whose one process is the only clock.
    pub async fn sync_clock(&self) -> Result<()> {
        if self.backend == Backend::Postgres {
            let before = crate::state::system_ms();
            let db: i64 = sql::query_scalar("SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)")
                .fetch_one(&mut self.read().await?)
                .await?;
            let after = crate::state::system_ms();
            crate::state::set_clock_offset(db - (before + after) / 2);
        }
        Ok(())
    }

    /// Creates a job, or returns the existing one with the same idempotency key
    /// (the bool says whether it was created).
    pub async fn create_job(&self, new: &NewJob, now: i64) -> Result<(Job, bool)> {
        self.create_job_with_id(&uuid::Uuid::now_v7().to_string(), new, now).await
    }

    /// Like [`Queue::create_job`] with a chosen id (an upload's storage path uses it).
    pub async fn create_job_with_id(&self, id: &str, new: &NewJob, now: i64) -> Result<(Job, bool)> {
        let key = scoped_key(new);
        if let Some(key) = &key
            && let Some(job) = self.job_by_key(Some(key)).await?
        {
            return Ok((job, false));
        }
        // The probe is owed from the moment the job exists, in the same statement;
        // its required tags are written in the same transaction.
        let mut tx = self.begin().await?;
        let inserted = sql::query("INSERT INTO jobs (id, state, profile, source, callback_url, priority, idempotency_key, created_at, updated_at, chore, chore_due_at, pipeline, captions) VALUES ($1, 'queued', $2, $3, $4, $5, $6, $7, $7, 'probe', $7, $8, $9)")
            .bind(id)
            .bind(&new.profile)
            .bind(&new.source)
            .bind(&new.callback_url)
            .bind(new.priority)
            .bind(&key)
            .bind(now)
            .bind(&new.pipeline)
            .bind((!new.captions.is_empty()).then(|| serde_json::to_string(&new.captions).unwrap_or_default()))
            .execute(&mut tx)
            .await;
        match inserted {
            Ok(_) => {
                for tag in &new.requires_tags {
                    sql::query("INSERT INTO job_tags (job_id, tag) VALUES ($1, $2)").bind(id).bind(tag).execute(&mut tx).await?;
                }
                tx.commit().await?;
            }
            // Two requests with one key raced: the other one created the job.
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                drop(tx);
                if let Some(key) = &key
                    && let Some(job) = self.job_by_key(Some(key)).await?
                {
                    return Ok((job, false));
                }
                return Err(QueueError::Conflict(format!("job {id} already exists")));
            }
            Err(e) => return Err(e.into()),
        }
        Ok((self.job(id).await?.ok_or_else(|| QueueError::NotFound(id.to_string()))?, true))
    }

    /// The job made with (scoped, see [`scoped_key`]) idempotency key `key`, if any.
    pub async fn job_by_key(&self, key: Option<&str>) -> Result<Option<Job>> {
        let Some(key) = key else { return Ok(None) };
        let id: Option<String> =
            sql::query_scalar("SELECT id FROM jobs WHERE idempotency_key = $1").bind(key).fetch_optional(&mut self.read().await?).await?;
        match id {
            Some(id) => self.job(&id).await,
            None => Ok(None),
        }
    }

    /// Grants the next runnable task to `worker`, or `None` when nothing is runnable.
    /// Order: job priority; then the job due first (upload time plus media duration,
    /// so a short clip is not stuck behind a long film uploaded just before it); then
    /// the task's place in its job.
    pub async fn lease(&self, worker: &str, encoders: &[String], now: i64) -> Result<Option<Lease>> {
        Ok(self.lease_bundle(worker, &Fit { encoders, tags: &[] }, now, Bundling::NONE).await?.into_iter().next())
    }

    /// Like [`Queue::lease`], but a transcode task may come with more queued
    /// renditions of its job (up to `max_tasks` in all), for one child process to
    /// encode from a single decode of the source. The job's remaining renditions
    /// are split evenly over the farm's free slots, so a lone worker takes them all
    /// while a busy farm still spreads them. Until a job is playable, its lowest rung
    /// goes alone: it takes a fraction of the ladder's time, and the job is playable
    /// as soon as it is published. The bundle that takes the job's last queued
    /// rendition also takes its thumbnails task (if the worker can make them from the
    /// same decode), so no worker decodes the source just for pictures. Each task
    /// keeps its own lease and epoch.
    pub async fn lease_bundle(&self, worker: &str, fit: &Fit<'_>, now: i64, bundling: Bundling) -> Result<Vec<Lease>> {
        let max_tasks = bundling.max_renditions.max(1);
        // ",libx264,aac," so that instr() matches whole names only; tags the same.
        let (encoders, tags) = (format!(",{},", fit.encoders.join(",")), format!(",{},", fit.tags.join(",")));
        let encoders = (encoders.as_str(), tags.as_str());
        // A single task's claim is one statement, safe without the writer's lock on
        // PostgreSQL (see `lease_one`), so coordinators lease in parallel: one
        // round trip. A bundle reads the farm's free slots before it leases more,
        // so it takes the lock, and takes it first: the lock is always taken before
        // any row lock.
        if self.backend == Backend::Postgres && max_tasks == 1 {
            let claimed = self.lease_one(&mut self.auto(), worker, encoders, now, None).await?;
            let leased: Vec<Lease> = claimed.into_iter().map(|c| c.lease).collect();
            self.remember_leases(worker, &leased);
            return Ok(leased);
        }
        let mut tx = self.write_tx().await?;
        if self.backend == Backend::Postgres {
            // A queue table's statistics are always stale (thousands of rows change
            // state every second), and a plan made from them sorted every queued task
            // on each lease (measured: 1 s per lease at 40,000 queued). The claim walks
            // the lease-order index instead.
            sql::query("SELECT set_config('enable_sort', 'off', true), set_config('enable_bitmapscan', 'off', true)")
                .execute(&mut tx)
                .await?;
        }
        let Some(Claimed { lease: first, pixels }) = self.lease_one(&mut tx, worker, encoders, now, None).await? else {
            tx.commit().await?;
            return Ok(Vec::new());
        };
        let job = first.job_id.clone();
        let (kind, chunk) = (first.kind, first.chunk.map(|c| i64::from(c.index)));
        let mut leased = vec![first];
        if matches!(kind, TaskKind::Transcode | TaskKind::Chunk) && max_tasks > 1 {
            // More renditions of this job (for a chunk: of this chunk) from one decode:
            // how many are queued, how many of the job's tasks of this kind in all and
            // their pixels, and the pixels of the job's largest task of this kind.
            let counts = sql::query(
                "SELECT CAST(COALESCE(SUM(CASE WHEN $5 IS NULL OR t.chunk = $5 THEN 1 ELSE 0 END), 0) AS BIGINT), COUNT(*),
                        CAST(COALESCE(SUM(t.pixels), 0) AS BIGINT),
                        (SELECT MAX(a.pixels) FROM tasks a WHERE a.job_id = $1 AND a.kind = $4)
                 FROM tasks t WHERE t.job_id = $1 AND t.kind = $4 AND t.state = 'queued'
                   AND t.run_after <= $2 AND t.cancel = 0 AND (t.requires IS NULL OR instr($3, ',' || t.requires || ',') > 0)",
            )
            .bind(&job)
            .bind(now)
            .bind(encoders.0)
            .bind(kind_str(kind))
            .bind(chunk)
            .fetch_one(&mut tx)
            .await?;
            let (remaining, of_kind): (i64, i64) = (counts.get(0), counts.get(1));
            let (queued_pixels, largest): (i64, Option<i64>) = (counts.get(2), counts.get(3));
            // Free slots of live workers other than this one's just-taken slot, and all their slots.
            let slots = sql::query(
                "SELECT CAST(COALESCE(SUM(CASE WHEN w.slots > COALESCE(h.held, 0) THEN w.slots - COALESCE(h.held, 0) ELSE 0 END), 0) AS BIGINT),
                        CAST(COALESCE(SUM(w.slots), 0) AS BIGINT)
                 FROM workers w LEFT JOIN (SELECT worker_id, COUNT(*) AS held FROM tasks WHERE state IN ('leased', 'running') GROUP BY worker_id) h
                   ON h.worker_id = w.id
                 WHERE w.removed = 0 AND w.draining = 0 AND w.last_seen >= $1",
            )
            .bind(now - self.cfg.lease_ttl_ms)
            .fetch_one(&mut tx)
            .await?;
            let (free, live): (i64, i64) = (slots.get(0), slots.get(1));
            // The lowest rung (the job's first task of this kind) goes alone until the
            // job is playable.
            let playable_early: i64 = sql::query_scalar(
                "SELECT CASE WHEN t.rendition = (SELECT s.rendition FROM tasks s WHERE s.job_id = t.job_id AND s.kind = t.kind ORDER BY s.seq LIMIT 1)
                   AND NOT EXISTS (SELECT 1 FROM tasks s WHERE s.job_id = t.job_id AND s.kind IN ('transcode', 'join') AND s.state = 'succeeded') THEN 1 ELSE 0 END
                 FROM tasks t WHERE t.id = $1",
            )
            .bind(&leased[0].task_id)
            .fetch_one(&mut tx)
            .await?;
            let playable_early = playable_early != 0;
            let share = match kind {
                _ if playable_early => 1,
                // Whole renditions: the job's remaining rungs split evenly over the free slots.
                TaskKind::Transcode => (remaining.max(0) as u64 + 1).div_ceil(free.max(0) as u64 + 1) as usize,
                // Chunks: other chunks keep the farm busy, so bundle (one decode for
                // several rungs) while the job has at least two leases' worth per live
                // slot left, and no more: coarse bundles at the end leave one machine
                // finishing while the rest are idle.
                _ => ((of_kind.max(0) as u64 + 1) / (2 * live.max(1) as u64)).max(1) as usize,
            };
            // Beyond its share, a chunk lease takes more rungs of its chunk while their
            // pixels together stay within the job's largest rung's, and within a live
            // slot's even part of the job's queued chunks (this one included). The
            // largest rung's chunks go alone anyway, so a bundle no larger leaves the
            // job's granularity as it was and saves a decode of the source for each
            // rung it carries; near the end, the even part shrinks and the rungs
            // spread over the farm again.
            let mut budget = match (kind, playable_early, pixels, largest) {
                (TaskKind::Chunk, false, Some(first), Some(largest)) => largest.min((queued_pixels + first) / live.max(1)) - first,
                _ => 0,
            };
            while leased.len() < max_tasks {
                let max_pixels = match leased.len() < share {
                    true => None,
                    false if budget > 0 => Some(budget),
                    false => break,
                };
                let only = Only { job: &job, kind, chunk, max_pixels };
                match self.lease_one(&mut tx, worker, encoders, now, Some(only)).await? {
                    Some(c) => {
                        budget -= c.pixels.unwrap_or(0);
                        leased.push(c.lease);
                    }
                    None => break,
                }
            }
            let took_the_last = leased.len() as i64 == remaining + 1;
            if kind == TaskKind::Transcode
                && bundling.thumbnails
                && took_the_last
                && let Some(c) = self
                    .lease_one(
                        &mut tx,
                        worker,
                        encoders,
                        now,
                        Some(Only { job: &job, kind: TaskKind::Thumbnails, chunk: None, max_pixels: None }),
                    )
                    .await?
            {
                leased.push(c.lease);
            }
        }
        tx.commit().await?;
        self.remember_leases(worker, &leased);
        Ok(leased)
    }

    /// Keeps the targets of leased tasks for their completions (see [`Targets`]),
    /// and that `worker` holds them, for the store's write checks (see
    /// [`holds::Holds`]): the answer the database gives right after the
    /// lease's commit, so that a worker's first write costs no statement.
    fn remember_leases(&self, worker: &str, leased: &[Lease]) {
        for l in leased {
            self.holds.leased(worker, &l.job_id, &l.name, l.epoch);
            let target =
                TaskTarget { job_id: l.job_id.clone(), kind: l.kind, name: l.name.clone(), rendition: l.rendition.clone(), chunk: l.chunk };
            self.targets.put(&l.task_id, target);
        }
    }

    /// Leases the next runnable task (of one job's tasks of one kind only, if given).
    async fn lease_one(
        &self,
        tx: &mut impl Exec,
        worker: &str,
        (encoders, tags): (&str, &str),
        now: i64,
        only: Option<Only<'_>>,
    ) -> Result<Option<Claimed>> {
        // One statement claims the task: the first queued row of the lease-order index
        // (`tasks_lease_order`) that this worker can take. On PostgreSQL the subquery locks its row and
        // skips rows another coordinator holds, and the UPDATE checks the state again:
        // under Read Committed a plain `id = (SELECT ...)` can lease one task twice.
        // On PostgreSQL the first claim is `drake_claim` (migration 0024): this claim
        // as a function with its planner settings, which starts the job too.
        let sql = match (self.backend, only.is_some()) {
            (Backend::Sqlite, false) => lease_claim!("", "", "$5"),
            (Backend::Sqlite, true) => lease_claim!("", only_clause!(), "$7"),
            (Backend::Postgres, false) => "SELECT * FROM drake_claim($1, $2, $3, $4, $5)",
            (Backend::Postgres, true) => lease_claim!("FOR UPDATE SKIP LOCKED", only_clause!(), "$7"),
        };
        let query = sql::query(sql).bind(worker).bind(now).bind(self.cfg.lease_ttl_ms).bind(encoders);
        let query = match only {
            None => query.bind(tags),
            Some(o) => query.bind(o.job).bind(kind_str(o.kind)).bind(tags).bind(o.chunk).bind(o.max_pixels),
        };
        let row = query.fetch_optional(&mut *tx).await?;
        let Some(row) = row else {
            return Ok(None);
        };
        // The claim returns what the lease needs of its job, so that a lease is one
        // round trip on PostgreSQL.
        let job_id: String = row.get("job_id");
        if row.get::<String, _>("job_state") == "queued" {
            sql::query("UPDATE jobs SET state = 'running', updated_at = $1 WHERE id = $2 AND state = 'queued'")
                .bind(now)
                .bind(&job_id)
                .execute(&mut *tx)
                .await?;
        }
        let lease = Lease {
            task_id: row.get("id"),
            job_id,
            epoch: row.get("epoch"),
            kind: parse_kind(&row.get::<String, _>("kind")),
            rendition: row.get("rendition"),
            name: row.get("name"),
            chunk: chunk_span(&row),
            profile: row.get("profile"),
            source: row.get("source"),
            expires_at: row.get("lease_expires_at"),
            attempt: row.get("attempts"),
            has_audio: row.get::<i64, _>("has_audio") != 0,
        };
        Ok(Some(Claimed { lease, pixels: row.get("pixels") }))
    }

    /// Renews a lease and records progress. Returns true when the task was canceled
    /// and the worker should stop.
    pub async fn heartbeat(&self, task: &str, worker: &str, epoch: i64, progress: f64, now: i64) -> Result<bool> {
        let _turn = self.report_turn().await;
        let cancel: Option<i64> = sql::query_scalar(
            "UPDATE tasks SET state = 'running', progress = CASE WHEN progress > $4 THEN progress ELSE $4 END, lease_expires_at = $5 + $6, updated_at = $5
             WHERE id = $1 AND worker_id = $2 AND epoch = $3 AND state IN ('leased', 'running') RETURNING cancel",
        )
        .bind(task)
        .bind(worker)
        .bind(epoch)
        .bind(progress.clamp(0.0, 1.0))
        .bind(now)
        .bind(self.cfg.lease_ttl_ms)
        .fetch_optional(&mut self.auto())
        .await?;
        match cancel {
            Some(c) => Ok(c != 0),
            None => Err(QueueError::StaleLease { task: task.into(), epoch }),
        }
    }

    /// Ends a lease with the task's result: the task becomes `promoting`, which owes
    /// the promotion of that epoch's staging directory. It succeeds only once its
    /// files are in place ([`Queue::promoted`]); a promotion still owed after its
    /// deadline ([`PROMOTE_GRACE_MS`]) is redone by the reconciler. Returns the
    /// promotion owed.
    pub async fn complete(&self, task: &str, worker: &str, epoch: i64, result: &serde_json::Value, now: i64) -> Result<Promotion> {
        let _turn = self.report_turn().await;
        let row = sql::query(
            "UPDATE tasks SET state = 'promoting', progress = 1, result = $4, published_bytes = $7, lease_expires_at = $5 + $6, updated_at = $5
             WHERE id = $1 AND worker_id = $2 AND epoch = $3 AND state IN ('leased', 'running') AND cancel = 0
               AND (SELECT state FROM jobs WHERE id = tasks.job_id) IN ('queued', 'running')
             RETURNING id, job_id, kind, name, epoch, result",
        )
        .bind(task)
        .bind(worker)
        .bind(epoch)
        .bind(result.to_string())
        .bind(now)
        .bind(PROMOTE_GRACE_MS)
        .bind(published_bytes(result))
        .fetch_optional(&mut self.auto())
        .await?;
        self.holds.forget_worker(worker);
        row.map(promotion_row).ok_or_else(|| QueueError::StaleLease { task: task.into(), epoch })
    }

    /// A promoting task whose outputs are in place succeeds; when it was its job's
    /// last, the job moves to `finalizing` and owes its finalize. [`Promoted::No`]
    /// when the task was not promoting (canceled meanwhile, or promoted already).
    pub async fn promoted(&self, task: &str, now: i64) -> Result<Promoted> {
        let _turn = self.report_turn().await;
        if self.backend == Backend::Postgres {
            // One round trip: the database settles the job holding the job's row
            // lock (`drake_promoted`, migrations 0012, 0014 and 0017), so no lock is held
            // while a coordinator waits for an answer, and promotions of different
            // jobs never wait for each other. (`WRITE_LOCK` is an argument 0014 no
            // longer uses.)
            let row = sql::query("SELECT job_id, settled, changed FROM drake_promoted($1, $2, $3)")
                .bind(task)
                .bind(now)
                .bind(conn::WRITE_LOCK)
                .fetch_optional(&mut self.auto())
                .await?;
            let Some(row) = row else {
                return Ok(Promoted::No);
            };
            let mut job_changed = row.get::<i64, _>(2) != 0;
            if row.get::<i64, _>(1) == 0 {
                // A task of the job failed: settling ends it (only a race gets here).
                let mut tx = self.write_tx().await?;
                job_changed = settle_job(&mut tx, &row.get::<String, _>(0), now).await?;
                tx.commit().await?;
            }
            return Ok(Promoted::Succeeded { job_changed });
        }
        let mut tx = self.write_tx().await?;
        let job: Option<String> = sql::query_scalar(
            "UPDATE tasks SET state = 'succeeded', lease_expires_at = NULL, updated_at = $2, finished_at = $2
             WHERE id = $1 AND state = 'promoting' RETURNING job_id",
        )
        .bind(task)
        .bind(now)
        .fetch_optional(&mut tx)
        .await?;
        let Some(job) = job else {
            tx.commit().await?;
            return Ok(Promoted::No);
        };
        let job_changed = settle_job(&mut tx, &job, now).await?;
        tx.commit().await?;
        Ok(Promoted::Succeeded { job_changed })
    }

    /// A promoting task whose outputs could not be put in place (or were found
    /// missing): the attempt counts as failed and the task runs again.
    pub async fn promotion_failed(&self, task: &str, error: &str, now: i64) -> Result<()> {
        let _turn = self.report_turn().await;
        let mut tx = self.write_tx().await?;
        let row = sql::query("SELECT job_id, attempts, max_attempts FROM tasks WHERE id = $1 AND state = 'promoting'")
            .bind(task)
            .fetch_optional(&mut tx)
            .await?;
        if let Some(row) = row {
            let (job, attempts, max): (String, i64, i64) = (row.get(0), row.get(1), row.get(2));
            log_failure(&mut tx, task, &job, "failed", error, now).await?;
            requeue_or_fail(&mut tx, task, &job, attempts, max, error, true, &self.cfg, now).await?;
            settle_job(&mut tx, &job, now).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Promotions owed past their deadline (the coordinator doing them stopped), or
    /// all of them with `all` (at start, when no promotion can be in flight).
    pub async fn overdue_promotions(&self, now: i64, all: bool) -> Result<Vec<Promotion>> {
        let rows = sql::query(
            "SELECT id, job_id, kind, name, epoch, result FROM tasks WHERE state = 'promoting' AND ($2 OR lease_expires_at < $1) ORDER BY updated_at LIMIT 100",
        )
        .bind(now)
        .bind(all)
        .fetch_all(&mut self.auto())
        .await?;
        Ok(rows.into_iter().map(promotion_row).collect())
    }

    /// Ends a lease with a failure. Retryable failures go back to the queue after a
    /// backoff until the attempts run out; bad input fails the job at once.
    pub async fn fail(&self, task: &str, worker: &str, epoch: i64, error: &str, retryable: bool, log_tail: &str, now: i64) -> Result<()> {
        let _turn = self.report_turn().await;
        let mut tx = self.write_tx().await?;
        let row = sql::query("SELECT job_id, attempts, max_attempts FROM tasks WHERE id = $1 AND worker_id = $2 AND epoch = $3 AND state IN ('leased', 'running') AND cancel = 0")
            .bind(task)
            .bind(worker)
            .bind(epoch)
            .fetch_optional(&mut tx)
            .await?
            .ok_or_else(|| QueueError::StaleLease { task: task.into(), epoch })?;
        let (job, attempts, max): (String, i64, i64) = (row.get(0), row.get(1), row.get(2));
        sql::query("UPDATE tasks SET log_tail = $1 WHERE id = $2").bind(log_tail).bind(task).execute(&mut tx).await?;
        log_failure(&mut tx, task, &job, "failed", error, now).await?;
        requeue_or_fail(&mut tx, task, &job, attempts, max, error, retryable, &self.cfg, now).await?;
        settle_job(&mut tx, &job, now).await?;
        tx.commit().await?;
        self.holds.forget_worker(worker);
        self.holds.forget_jobs(std::slice::from_ref(&job));
        Ok(())
    }

    /// Takes back every lease whose heartbeats stopped. Returns how many were reaped.
    pub async fn reap(&self, now: i64) -> Result<Vec<String>> {
        let mut tx = self.write_tx().await?;
        let expired = sql::query(
            "SELECT id, job_id, attempts, max_attempts FROM tasks WHERE state IN ('leased', 'running') AND lease_expires_at < $1",
        )
        .bind(now)
        .fetch_all(&mut tx)
        .await?;
        let mut jobs = Vec::new();
        for row in &expired {
            let (task, job, attempts, max): (String, String, i64, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
            let why = "the worker stopped sending heartbeats (lease expired)";
            log_failure(&mut tx, &task, &job, "expired", why, now).await?;
            requeue_or_fail(&mut tx, &task, &job, attempts, max, why, true, &self.cfg, now).await?;
            settle_job(&mut tx, &job, now).await?;
            jobs.push(job);
        }
        tx.commit().await?;
        jobs.dedup();
        self.holds.forget_jobs(&jobs);
        Ok(jobs)
    }

    /// Cancels a job: queued tasks stop, running ones see the flag on their next
    /// heartbeat, an owed probe or finalize is dropped, and the end is reported.
    /// Cancels a live job; true when this call canceled it. Canceling a canceled job
    /// changes nothing and is no error (a client retrying a cancel whose answer it
    /// lost), while a job that succeeded or failed cannot be canceled.
    pub async fn cancel_job(&self, id: &str, now: i64) -> Result<(Job, bool)> {
        let mut tx = self.write_tx().await?;
        let state = job_state(&mut tx, id).await?;
        let canceled = match state.as_str() {
            "canceled" => false,
            s if is_terminal(s) => return Err(QueueError::Conflict(format!("job {id} has already ended"))),
            _ => {
                end_job(&mut tx, id, "canceled", None, now).await?;
                true
            }
        };
        tx.commit().await?;
        self.holds.forget_jobs(&[id.to_string()]);
        Ok((self.job(id).await?.ok_or_else(|| QueueError::NotFound(format!("job {id}")))?, canceled))
    }

    /// Retries a failed or canceled job as a new run: what failed or was canceled is
    /// queued again with fresh attempts, what succeeded is kept. A job that was never
    /// planned owes its probe again; one whose tasks all succeeded owes its finalize.
    pub async fn retry_job(&self, id: &str, now: i64) -> Result<Job> {
        let mut tx = self.write_tx().await?;
        if !matches!(job_state(&mut tx, id).await?.as_str(), "failed" | "canceled") {
            return Err(QueueError::Conflict(format!("job {id} has not failed or been canceled")));
        }
        // A chunked rendition not yet joined needs its chunks again, and a rendition
        // not yet made needs the audio packets again: the job's end swept them.
        sql::query("UPDATE tasks SET state = 'queued', cancel = 0, attempts = 0, error = NULL, run_after = 0, worker_id = NULL, failed_by = NULL, lease_expires_at = NULL, progress = 0, unrunnable_since = NULL, updated_at = $1, queued_at = $1
                     WHERE job_id = $2 AND (state != 'succeeded'
                       OR (kind = 'chunk' AND EXISTS (SELECT 1 FROM tasks j WHERE j.job_id = tasks.job_id
                         AND j.kind = 'join' AND j.state != 'succeeded' AND j.rendition = tasks.rendition))
                       OR (kind = 'audio' AND EXISTS (SELECT 1 FROM tasks r WHERE r.job_id = tasks.job_id
                         AND r.kind IN ('transcode', 'join') AND r.state != 'succeeded')))")
            .bind(now)
            .bind(id)
            .execute(&mut tx)
            .await?;
        let planned: i64 = sql::query_scalar("SELECT CASE WHEN EXISTS (SELECT 1 FROM tasks WHERE job_id = $1) THEN 1 ELSE 0 END")
            .bind(id)
            .fetch_one(&mut tx)
            .await?;
        let planned = planned != 0;
        // A new run: the seq bump makes any chore still in flight from the last run stale.
        sql::query(
            "UPDATE jobs SET state = 'queued', error = NULL, outputs = NULL, run = run + 1, swept = 0, chore = $3, chore_seq = chore_seq + 1,
                 chore_attempts = 0, chore_error = NULL, chore_claimed_by = NULL, chore_waiting_since = NULL, chore_due_at = $1, updated_at = $1
             WHERE id = $2",
        )
        .bind(now)
        .bind(id)
        .bind((!planned).then_some("probe"))
        .execute(&mut tx)
        .await?;
        if planned {
            settle_job(&mut tx, id, now).await?;
        }
        tx.commit().await?;
        self.job(id).await?.ok_or_else(|| QueueError::NotFound(format!("job {id}")))
    }

    /// The stored results of a job's succeeded tasks: (kind, rendition, result).
    /// (task id, kind, rendition, result), in the job's order.
    pub async fn task_results(&self, id: &str) -> Result<Vec<(String, TaskKind, Option<String>, serde_json::Value)>> {
        let rows = sql::query("SELECT kind, rendition, result, id FROM tasks WHERE job_id = $1 AND state = 'succeeded' ORDER BY seq")
            .bind(id)
            .fetch_all(&mut self.read().await?)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let result: Option<String> = r.get(2);
                (
                    r.get(3),
                    parse_kind(&r.get::<String, _>(0)),
                    r.get(1),
                    result.and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok()).unwrap_or(serde_json::Value::Null),
                )
            })
            .collect())
    }

    /// True when the task was canceled (directly or with its job).
    pub async fn task_canceled(&self, task: &str) -> Result<bool> {
        let c: Option<i64> =
            sql::query_scalar("SELECT cancel FROM tasks WHERE id = $1").bind(task).fetch_optional(&mut self.auto()).await?;
        Ok(c.unwrap_or(0) != 0)
    }

    pub async fn task_job(&self, task: &str) -> Result<String> {
        sql::query_scalar("SELECT job_id FROM tasks WHERE id = $1")
            .bind(task)
            .fetch_optional(&mut self.auto())
            .await?
            .ok_or_else(|| QueueError::NotFound(format!("task {task}")))
    }

    /// A job's profile name and probe (`null` before it was probed).
    pub async fn job_plan_inputs(&self, job: &str) -> Result<(String, serde_json::Value)> {
        let row = sql::query("SELECT profile, probe FROM jobs WHERE id = $1")
            .bind(job)
            .fetch_optional(&mut self.auto())
            .await?
            .ok_or_else(|| QueueError::NotFound(format!("job {job}")))?;
        let probe: Option<String> = row.get(1);
        Ok((row.get(0), probe.and_then(|p| serde_json::from_str(&p).ok()).unwrap_or_default()))
    }

    /// What a task makes and where its outputs go: from the targets this
    /// coordinator's leases kept ([`Targets`]), or read.
    pub async fn task_target(&self, task: &str) -> Result<TaskTarget> {
        if let Some(target) = self.targets.take(task) {
            return Ok(target);
        }
        let row = sql::query("SELECT job_id, kind, name, rendition, chunk, first_frame, frames FROM tasks WHERE id = $1")
            .bind(task)
            .fetch_optional(&mut self.auto())
            .await?
            .ok_or_else(|| QueueError::NotFound(format!("task {task}")))?;
        Ok(TaskTarget {
            job_id: row.get(0),
            kind: parse_kind(&row.get::<String, _>(1)),
            name: row.get(2),
            rendition: row.get(3),
            chunk: chunk_span(&row),
        })
    }

    /// What a join of `rendition` reads: the names of its chunk tasks, in chunk order.
    pub async fn join_parts(&self, job: &str, rendition: &str) -> Result<Vec<String>> {
        let names = sql::query_scalar("SELECT name FROM tasks WHERE job_id = $1 AND kind = 'chunk' AND rendition = $2 ORDER BY chunk")
            .bind(job)
            .bind(rendition)
            .fetch_all(&mut self.auto())
            .await?;
        Ok(names)
    }

    /// Decides whether the chunk `worker` made (holding `task` at `epoch`) may join
    /// its rendition by its codec headers (`headers`: their sha256), since the join
    /// writes one set for all of a rendition's chunks and only one encoder build
    /// writes them.
    ///
    /// The first chunk of a rendition to get here claims it: its headers, and its
    /// worker's build, which the rest of the chunks then go to while a worker has it
    /// (`lease_claim!`). The claim is read and taken in one write transaction (the
    /// farm's writer lock), so two chunks of different headers checked at once
    /// cannot both pass. A chunk that differs is rejected while a live worker has the claimed
    /// build. Once none has (the farm was upgraded under the job), no chunk made
    /// from now on can match: the accepted chunks (and any being promoted, whose
    /// promotion then changes nothing) are queued again with no attempt spent, and
    /// the rendition is claimed afresh for this chunk.
    pub async fn claim_chunk_headers(&self, (task, worker, epoch): (&str, &str, i64), headers: &str, now: i64) -> Result<HeadersClaim> {
        let _turn = self.report_turn().await;
        let mut tx = self.write_tx().await?;
        let held = sql::query(
            "SELECT t.job_id, t.rendition, me.encoder_build FROM tasks t JOIN workers me ON me.id = t.worker_id
             WHERE t.id = $1 AND t.worker_id = $2 AND t.epoch = $3 AND t.state IN ('leased', 'running') AND t.kind = 'chunk'",
        )
        .bind(task)
        .bind(worker)
        .bind(epoch)
        .fetch_optional(&mut tx)
        .await?;
        // Not held: the completion's own fence refuses it, and nothing is claimed.
        let Some(held) = held else {
            tx.commit().await?;
            return Ok(HeadersClaim::Match);
        };
        let (job, rendition, mine): (String, String, Option<String>) = (held.get(0), held.get(1), held.get(2));
        let claim = sql::query(
            "SELECT chunk_headers, encoder_build FROM tasks WHERE job_id = $1 AND kind = 'chunk' AND rendition = $2 ORDER BY chunk LIMIT 1",
        )
        .bind(&job)
        .bind(&rendition)
        .fetch_one(&mut tx)
        .await?;
        let (claimed, pinned): (Option<String>, Option<String>) = (claim.get(0), claim.get(1));
        // The outcome, and the pin the rendition is claimed with now (if it is).
        let keep_or_mine = "COALESCE(encoder_build, $4)";
        let (outcome, claim_with) = match (claimed.as_deref(), pinned.as_deref(), mine.as_deref()) {
            // First here, or the same: claimed (a build once pinned stays).
            (c, ..) if c.is_none_or(|c| c == headers) => {
                (HeadersClaim::Match, (c.is_none() || (pinned.is_none() && mine.is_some())).then_some(keep_or_mine))
            }
            (_, Some(pinned), Some(mine)) if pinned != mine && !self.build_takes_tasks(&mut tx, pinned, now).await? => {
                let redone = sql::query(
                    "UPDATE tasks SET state = 'queued', attempts = 0, error = NULL, run_after = $3, queued_at = $3, worker_id = NULL, failed_by = NULL,
                         lease_expires_at = NULL, progress = 0, unrunnable_since = NULL, updated_at = $3
                     WHERE job_id = $1 AND kind = 'chunk' AND rendition = $2 AND state IN ('promoting', 'succeeded')",
                )
                .bind(&job)
                .bind(&rendition)
                .bind(now)
                .execute(&mut tx)
                .await?
                .rows_affected();
                (HeadersClaim::Redone(redone), Some("$4"))
            }
            // Claimed by a worker that named no build (older than builds), and
            // nothing accepted: its chunk never got in, and nothing says whether its
            // build is live; these headers take the rendition over.
            (Some(_), None, _) if !self.chunks_accepted(&mut tx, &job, &rendition).await? => (HeadersClaim::Match, Some(keep_or_mine)),
            _ => (HeadersClaim::Differ, None),
        };
        if let Some(pin) = claim_with {
            sql::query(format!(
                "UPDATE tasks SET chunk_headers = $3, encoder_build = {pin} WHERE job_id = $1 AND kind = 'chunk' AND rendition = $2"
            ))
            .bind(&job)
            .bind(&rendition)
            .bind(headers)
            .bind(&mine)
            .execute(&mut tx)
            .await?;
        }
        tx.commit().await?;
        Ok(outcome)
    }

    /// Whether a live worker that takes tasks has encoder build `build`.
    async fn build_takes_tasks(&self, tx: &mut impl Exec, build: &str, now: i64) -> Result<bool> {
        let live: i64 = sql::query_scalar(concat!(
            "SELECT CASE WHEN EXISTS (SELECT 1 FROM workers w WHERE w.encoder_build = $1 AND ",
            takes_tasks!(),
            ") THEN 1 ELSE 0 END"
        ))
        .bind(build)
        .bind(now)
        .bind(self.cfg.lease_ttl_ms)
        .fetch_one(&mut *tx)
        .await?;
        Ok(live != 0)
    }

    /// Whether any chunk of `job`'s `rendition` was accepted (succeeded, or being promoted).
    async fn chunks_accepted(&self, tx: &mut impl Exec, job: &str, rendition: &str) -> Result<bool> {
        let any: i64 = sql::query_scalar(
            "SELECT CASE WHEN EXISTS (SELECT 1 FROM tasks WHERE job_id = $1 AND kind = 'chunk' AND rendition = $2
                 AND state IN ('promoting', 'succeeded')) THEN 1 ELSE 0 END",
        )
        .bind(job)
        .bind(rendition)
        .fetch_one(&mut *tx)
        .await?;
        Ok(any != 0)
    }

    /// Whether `worker` holds a live join lease of `job` that reads part `part` (a
    /// chunk of the join's rendition).
    pub async fn worker_joins(&self, worker: &str, job: &str, part: &str) -> Result<bool> {
        let held: i64 = sql::query_scalar(
            "SELECT CASE WHEN EXISTS (SELECT 1 FROM tasks WHERE job_id = $1 AND worker_id = $2 AND kind = 'join' AND state IN ('leased', 'running')
                 AND substr($3, 1, length(rendition) + 2) = rendition || '.c') THEN 1 ELSE 0 END",
        )
        .bind(job)
        .bind(worker)
        .bind(part)
        .fetch_one(&mut self.auto())
        .await?;
        Ok(held != 0)
    }

    /// How many jobs there are, optionally in one state.
    pub async fn count_jobs(&self, state: Option<&str>) -> Result<i64> {
        Ok(sql::query_scalar("SELECT COUNT(*) FROM jobs WHERE ($1 IS NULL OR state = $1)")
            .bind(state)
            .fetch_one(&mut self.read().await?)
            .await?)
    }

    /// The pipeline that owns a job (`None`: an admin's), or `NotFound`.
    pub async fn job_pipeline(&self, id: &str) -> Result<Option<String>> {
        let row: Option<Option<String>> =
            sql::query_scalar("SELECT pipeline FROM jobs WHERE id = $1").bind(id).fetch_optional(&mut self.auto()).await?;
        row.ok_or_else(|| QueueError::NotFound(format!("job {id}")))
    }

    /// Jobs, newest first, optionally in one state.
    pub async fn list_jobs(&self, state: Option<&str>, page: i64, per_page: i64) -> Result<Vec<Job>> {
        self.list_jobs_of(None, state, page, per_page).await
    }

    /// Jobs of one pipeline (all, with `None`), newest first, optionally in one state.
    pub async fn list_jobs_of(&self, pipeline: Option<&str>, state: Option<&str>, page: i64, per_page: i64) -> Result<Vec<Job>> {
        let ids: Vec<String> =
            sql::query_scalar("SELECT id FROM jobs WHERE ($1 IS NULL OR state = $1) AND ($4 IS NULL OR pipeline = $4) ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3")
                .bind(state)
                .bind(per_page)
                .bind(page.max(0) * per_page)
                .bind(pipeline)
                .fetch_all(&mut self.read().await?)
                .await?;
        self.jobs_by_id(&ids).await
    }

    /// What a transition's follow-up needs to know of a job, in one statement: its
    /// state, error and outputs (what its change events carry), whether a chore is
    /// owed and due at `now`, and whether a webhook delivery is owed.
    pub async fn job_summary(&self, id: &str, now: i64) -> Result<Option<JobSummary>> {
        let row = sql::query(
            "SELECT state, error, outputs, CASE WHEN chore IS NOT NULL AND chore_due_at <= $2 THEN 1 ELSE 0 END,
                    CASE WHEN EXISTS (SELECT 1 FROM webhooks w WHERE w.job_id = jobs.id AND w.delivered_at IS NULL AND w.gave_up = 0)
                         THEN 1 ELSE 0 END
             FROM jobs WHERE id = $1",
        )
        .bind(id)
        .bind(now)
        .fetch_optional(&mut self.auto())
        .await?;
        Ok(row.map(|r| JobSummary {
            state: r.get(0),
            error: r.get(1),
            outputs: r.get::<Option<String>, _>(2).and_then(|o| serde_json::from_str(&o).ok()),
            chore_due: r.get::<i64, _>(3) != 0,
            owes_delivery: r.get::<i64, _>(4) != 0,
        }))
    }

    pub async fn job(&self, id: &str) -> Result<Option<Job>> {
        Ok(self.jobs_by_id(&[id.to_string()]).await?.pop())
    }

    /// The views of jobs `ids`, in that order (an id with no job is left out), in
    /// three statements however many there are, plus [`Queue::waiting_for`]'s for
    /// each live one. A page of the job list read each job on its own: about 250
    /// statements, each a hand-off to a pooled connection's thread.
    async fn jobs_by_id(&self, ids: &[String]) -> Result<Vec<Job>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let list = (1..=ids.len()).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ");
        let bind_all = |mut q: sql::Query| {
            for id in ids {
                q = q.bind(id);
            }
            q
        };
        let mut conn = self.read().await?;
        let rows = bind_all(sql::query(format!(
            "SELECT id, state, profile, source, callback_url, priority, error, created_at, updated_at, outputs, probe, pipeline, captions FROM jobs WHERE id IN ({list})"
        )))
        .fetch_all(&mut conn)
        .await?;
        let mut tasks: HashMap<String, Vec<Task>> = HashMap::new();
        for t in bind_all(sql::query(format!(
            "SELECT id, kind, rendition, state, progress, attempts, worker_id, error, log_tail, queued_at, leased_at, finished_at, result, name, chunk, job_id FROM tasks WHERE job_id IN ({list}) ORDER BY job_id, seq"
        )))
        .fetch_all(&mut conn)
        .await?
        {
            tasks.entry(t.get(15)).or_default().push(task_view(&t));
        }
        let mut tags: HashMap<String, Vec<String>> = HashMap::new();
        for r in bind_all(sql::query(format!("SELECT job_id, tag FROM job_tags WHERE job_id IN ({list}) ORDER BY job_id, tag")))
            .fetch_all(&mut conn)
            .await?
        {
            tags.entry(r.get(0)).or_default().push(r.get(1));
        }
        drop(conn);
        let mut by_id: HashMap<String, Job> = HashMap::with_capacity(rows.len());
        for row in rows {
            let id: String = row.get(0);
            let tasks = tasks.remove(&id).unwrap_or_default();
            let json = |v: Option<String>| v.and_then(|t| serde_json::from_str(&t).ok());
            // An ended job waits for nothing; only a live one costs the lookups.
            let waiting_for = if is_terminal(&row.get::<String, _>(1)) { None } else { self.waiting_for(&id).await? };
            let job = Job {
                state: row.get(1),
                pipeline: row.get(11),
                profile: row.get(2),
                source: row.get(3),
                callback_url: row.get(4),
                priority: row.get(5),
                requires_tags: tags.remove(&id).unwrap_or_default(),
                captions: row.get::<Option<String>, _>(12).and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default(),
                error: row.get(6),
                created_at: row.get(7),
                updated_at: row.get(8),
                playable: tasks.iter().any(|t| matches!(t.kind, TaskKind::Transcode | TaskKind::Join) && t.state == "succeeded"),
                outputs: json(row.get(9)),
                probe: json(row.get(10)),
                waiting_for,
                chunks: ChunksView::of(&tasks),
                tasks,
                id: id.clone(),
            };
            by_id.insert(id, job);
        }
        Ok(ids.iter().filter_map(|id| by_id.remove(id)).collect())
    }
}

/// The bytes of a task result's files, which `/metrics` counts once it succeeds.
fn published_bytes(result: &serde_json::Value) -> i64 {
    let files = result["files"].as_array().map(Vec::as_slice).unwrap_or_default();
    files.iter().filter_map(|f| f["size"].as_i64()).fold(0, i64::saturating_add)
}

/// A task's view from a row of `id, kind, rendition, state, progress, attempts,
/// worker_id, error, log_tail, queued_at, leased_at, finished_at, result, name, chunk`.
fn task_view(t: &sql::Row) -> Task {
    // The child's times, from the worker's report.
    let result: Option<serde_json::Value> = t.get::<Option<String>, _>(12).and_then(|r| serde_json::from_str::<serde_json::Value>(&r).ok());
    let child = |k: &str| result.as_ref().and_then(|r| r["timing"][k].as_i64());
    Task {
        id: t.get(0),
        kind: parse_kind(&t.get::<String, _>(1)),
        rendition: t.get(2),
        name: t.get(13),
        chunk: t.get::<Option<i64>, _>(14).map(|c| c as u32),
        state: t.get(3),
        progress: t.get(4),
        attempts: t.get(5),
        worker: t.get(6),
        error: t.get(7),
        log_tail: t.get(8),
        timing: TaskTiming {
            queued_at: t.get(9),
            leased_at: t.get(10),
            finished_at: t.get(11),
            child_started_at: child("child_started_at"),
            child_exited_at: child("child_exited_at"),
        },
    }
}

/// A chunk task's span from its row's `chunk`, `first_frame` and `frames`.
fn chunk_span(row: &sql::Row) -> Option<ChunkSpan> {
    let index: Option<i64> = row.get("chunk");
    let first: Option<i64> = row.get("first_frame");
    let frames: Option<i64> = row.get("frames");
    Some(ChunkSpan { index: index? as u32, first_frame: first? as u64, frames: frames.map(|f| f as u64) })
}

/// What every SQLite connection needs: WAL (readers never wait for the writer),
/// synchronous=NORMAL (durable across process crashes), a busy timeout and
/// foreign keys.
const SQLITE_PRAGMAS: &str =
    "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON";

async fn sqlite_pragmas(conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    conn.execute(SQLITE_PRAGMAS).await?;
    Ok(())
}

/// The stored form of a job's idempotency key: a pipeline's keys are its own, so
/// two pipelines using the same key never see each other's job. Pipeline labels
/// cannot contain control characters, so the separator cannot be forged.
pub fn scoped_key(new: &NewJob) -> Option<String> {
    let key = new.idempotency_key.as_ref()?;
    Some(match &new.pipeline {
        Some(p) => format!("{p}\u{1f}{key}"),
        None => key.clone(),
    })
}

/// A job's state, or `NotFound`.
async fn job_state(tx: &mut impl Exec, id: &str) -> Result<String> {
    sql::query_scalar("SELECT state FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| QueueError::NotFound(format!("job {id}")))
}

/// Records a failed attempt (for failure rates; the task row keeps only the last error).
async fn log_failure(tx: &mut impl Exec, task: &str, job: &str, kind: &str, error: &str, now: i64) -> Result<()> {
    sql::query("INSERT INTO task_failures (task_id, job_id, kind, error, at) VALUES ($1, $2, $3, $4, $5)")
        .bind(task)
        .bind(job)
        .bind(kind)
        .bind(error)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

async fn requeue_or_fail(
    tx: &mut impl Exec,
    task: &str,
    job: &str,
    attempts: i64,
    max: i64,
    error: &str,
    retryable: bool,
    cfg: &QueueConfig,
    now: i64,
) -> Result<()> {
    if retryable && attempts < max {
        // `failed_by` (",w1,w2,"): the retry goes to a worker that has not failed it
        // first (see `lease_claim!`).
        sql::query("UPDATE tasks SET state = 'queued', failed_by = CASE WHEN worker_id IS NULL OR instr(COALESCE(failed_by, ','), ',' || worker_id || ',') > 0
                        THEN failed_by ELSE COALESCE(failed_by, ',') || worker_id || ',' END,
                        worker_id = NULL, lease_expires_at = NULL, run_after = $1, queued_at = $1, error = $2, updated_at = $3 WHERE id = $4")
            .bind(now + cfg.backoff(attempts))
            .bind(error)
            .bind(now)
            .bind(task)
            .execute(&mut *tx)
            .await?;
    } else {
        let why = if retryable { format!("{error} (gave up after {attempts} attempts)") } else { error.to_string() };
        sql::query(
            "UPDATE tasks SET state = 'failed', lease_expires_at = NULL, error = $1, updated_at = $2, finished_at = $2 WHERE id = $3",
        )
        .bind(&why)
        .bind(now)
        .bind(task)
        .execute(&mut *tx)
        .await?;
        sql::query("UPDATE jobs SET error = COALESCE(error, $1) WHERE id = $2").bind(&why).bind(job).execute(&mut *tx).await?;
    }
    Ok(())
}

/// Derives a live job's state from its tasks: any failed task fails the job (and
/// stops the rest); all succeeded means finalizing, which owes the finalize chore.
/// An ended job never moves again. Returns whether the job changed.
///
/// On PostgreSQL, a promotion settles its job in `drake_promoted` (postgres
/// migration 0017, first 0012), which does what this does: keep the two in step.
async fn settle_job(tx: &mut impl Exec, job: &str, now: i64) -> Result<bool> {
    // Whether some task exists, has failed, has not succeeded, has left the queue:
    // each the first entry of an index range (`tasks_job_outcome`, and
    // `tasks_pending_by_kind` for the unfinished), never a count of the job's
    // tasks. This runs on every completion, and a job may have hundreds of tasks.
    let row = sql::query(
        "SELECT j.state,
                CASE WHEN EXISTS (SELECT 1 FROM tasks t WHERE t.job_id = j.id) THEN 1 ELSE 0 END,
                CASE WHEN EXISTS (SELECT 1 FROM tasks t WHERE t.job_id = j.id AND t.state = 'failed') THEN 1 ELSE 0 END,
                CASE WHEN EXISTS (SELECT 1 FROM tasks t WHERE t.job_id = j.id AND t.state <> 'succeeded') THEN 1 ELSE 0 END,
                CASE WHEN EXISTS (SELECT 1 FROM tasks t WHERE t.job_id = j.id AND t.state <> 'queued') THEN 1 ELSE 0 END
         FROM jobs j WHERE j.id = $1",
    )
    .bind(job)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| QueueError::NotFound(format!("job {job}")))?;
    let current: String = row.get(0);
    let [any, failed, unfinished, started] = [1, 2, 3, 4].map(|i| row.get::<i64, _>(i) != 0);
    if is_terminal(&current) {
        return Ok(false);
    }
    if failed {
        end_job(tx, job, "failed", None, now).await?;
        return Ok(true);
    }
    if any && !unfinished {
        if current == "finalizing" {
            return Ok(false);
        }
        sql::query(
            "UPDATE jobs SET state = 'finalizing', chore = 'finalize', chore_attempts = 0, chore_error = NULL, chore_claimed_by = NULL,
                 chore_due_at = $1, updated_at = $1 WHERE id = $2",
        )
        .bind(now)
        .bind(job)
        .execute(&mut *tx)
        .await?;
        return Ok(true);
    }
    let next = if started { "running" } else { "queued" };
    if next == current {
        return Ok(false);
    }
    sql::query("UPDATE jobs SET state = $1, updated_at = $2 WHERE id = $3").bind(next).bind(now).bind(job).execute(&mut *tx).await?;
    Ok(true)
}

/// What [`Queue::claim_chunk_headers`] decided for a chunk.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadersClaim {
    /// Its headers are its rendition's: it may be accepted.
    Match,
    /// They differ, and a live worker has the rendition's build: it is rejected.
    Differ,
    /// They differ, and no live worker has the rendition's build: that many
    /// accepted chunks are queued again, and these headers are the rendition's.
    Redone(u64),
}

/// What [`Queue::promoted`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Promoted {
    /// Nothing: the task was not promoting (canceled meanwhile, or promoted already).
    No,
    /// The task succeeded. `job_changed` when that moved its job (to finalizing, or
    /// failed): only then does the job's follow-up owe anything (a chore, a
    /// webhook, a job event).
    Succeeded { job_changed: bool },
}

impl Promoted {
    pub fn succeeded(self) -> bool {
        matches!(self, Promoted::Succeeded { .. })
    }
}

pub fn is_terminal(state: &str) -> bool {
    matches!(state, "succeeded" | "failed" | "canceled")
}

mod conn;
mod holds;
mod owed;
pub(crate) mod sql;
mod turns;
pub use owed::{Chore, ChoreClaim, Owed, Promotion};
use owed::{end_job, promotion_row};

#[cfg(test)]
mod tests;
