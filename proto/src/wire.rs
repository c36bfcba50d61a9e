//! The worker protocol: JSON bodies exchanged between `drake worker` and the
//! coordinator's `/api/v1/workers` and `/api/v1/tasks` routes.
//!
//! Who renews what: a worker holding a lease sends a heartbeat at least every
//! `heartbeat_seconds`; each one extends the lease by the coordinator's TTL. If
//! heartbeats stop, the lease lapses, the task is queued again, and the next lease
//! of that task carries a higher `epoch`. Every heartbeat, completion and failure
//! names the epoch it holds; the coordinator answers 409 `stale_lease` to an old one.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Capabilities {
    /// libav encoder names this worker can use, e.g. `libx264`, `libvpx-vp9`, `aac`.
    pub encoders: Vec<String>,
    pub cores: u32,
    #[serde(default)]
    pub tags: Vec<String>,
    /// What decides the codec headers its encoders write (Drake's, libavcodec's and
    /// libx264's versions): a rendition's chunks go to workers of one build, whose
    /// headers the join can use for all of them. Absent from an older worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder_build: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterRequest {
    pub version: u32,
    pub name: String,
    pub drake_version: String,
    pub slots: u32,
    pub capabilities: Capabilities,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub worker_id: String,
    /// The worker's credential; shown once, stored hashed by the coordinator.
    pub token: String,
    pub heartbeat_seconds: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseRequest {
    pub version: u32,
    pub free_slots: u32,
    /// How long the coordinator may hold the request open waiting for work.
    pub wait_seconds: u64,
    #[serde(default)]
    pub draining: bool,
    /// Most tasks the worker takes in one lease (renditions of one job that its
    /// child encodes from a single decode). 1, the default, means one task.
    #[serde(default = "one")]
    pub max_tasks: u32,
    /// Whether the worker's child can make a job's thumbnails from the decode of a
    /// bundle (`drake transcode --thumbnails`); then a job's thumbnails task comes
    /// with the lease that takes its last renditions.
    #[serde(default)]
    pub bundle_thumbnails: bool,
    /// The machine's 1-minute load average, for the dashboard.
    #[serde(default)]
    pub load: Option<f64>,
    /// Why the worker takes no task now (its scratch disk is full), for the
    /// dashboard; it then polls with no slot free.
    #[serde(default)]
    pub paused: Option<String>,
    /// What the worker can do, sent with its first lease request after it starts: a
    /// worker started with an issued credential does not register again, so this is
    /// how an upgraded machine's encoders and encoder build replace those recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
    /// Its version, sent with `capabilities`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drake_version: Option<String>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// Renditions encoded whole.
    Transcode,
    Thumbnails,
    /// One time chunk of a long source, video only, as packets for its join.
    Chunk,
    /// A job's audio, encoded once, whole: every kept track as HLS of its own,
    /// and the default track's packets, which every rendition's MP4 muxes.
    Audio,
    /// A chunked rendition's outputs, remuxed from its chunks and the audio.
    Join,
}

impl TaskKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Transcode => "transcode",
            TaskKind::Thumbnails => "thumbnails",
            TaskKind::Chunk => "chunk",
            TaskKind::Audio => "audio",
            TaskKind::Join => "join",
        }
    }

    pub fn parse(s: &str) -> Option<TaskKind> {
        [TaskKind::Transcode, TaskKind::Thumbnails, TaskKind::Chunk, TaskKind::Audio, TaskKind::Join].into_iter().find(|k| k.as_str() == s)
    }

    /// The report the engine writes last, which the worker publishes last.
    pub fn report_file(self) -> &'static str {
        match self {
            TaskKind::Transcode | TaskKind::Join => "rendition.json",
            TaskKind::Thumbnails => "thumbnails.json",
            TaskKind::Chunk => "chunk.json",
            TaskKind::Audio => "audio.json",
        }
    }

    /// Whether the task makes part of a chunked job's work, never published itself.
    pub fn is_part(self) -> bool {
        self == TaskKind::Chunk
    }
}

/// One time chunk on the job's frame grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkSpan {
    pub index: u32,
    pub first_frame: u64,
    /// `None` for the last chunk: to the source's end.
    pub frames: Option<u64>,
}

/// What a join task joins: every chunk's directory in chunk order (the audio is
/// the lease's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinInputs {
    /// Storage directories, each holding `chunk.pkts` and `chunk.json`.
    pub chunks: Vec<String>,
    /// The job's probe, from which the join recomputes the chunk plan.
    pub probe: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskLease {
    pub version: u32,
    pub task_id: String,
    pub job_id: String,
    pub epoch: i64,
    pub attempt: i64,
    pub kind: TaskKind,
    pub rendition: Option<String>,
    pub profile: String,
    /// An http(s) URL, or a storage path (under the coordinator's `/dav/`, fetched
    /// with the worker's own credential, or under `storage`).
    pub source: String,
    /// Where to publish, as a storage path, e.g. `jobs/ID/.staging/720p.e1`.
    pub output_dir: String,
    /// Hard limit for the child process.
    pub timeout_seconds: u64,
    /// How long a transfer to or from storage may go without moving a byte before
    /// it fails and is tried again (see `transfer`).
    #[serde(default = "stall_seconds")]
    pub stall_seconds: u64,
    /// How long the child process may go without a line of progress before the
    /// worker stops it and the task is tried again: a hung engine (a libav call
    /// that never returns, a stopped process) holds its task this long, not for
    /// `timeout_seconds`.
    #[serde(default = "engine_stall_seconds")]
    pub engine_stall_seconds: u64,
    /// More transcode tasks of the same job, leased with this one to share its
    /// decode: one child makes them all. Each has its own epoch and is
    /// heartbeated, completed or failed on its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub companions: Vec<TaskLease>,
    /// A chunk task's chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk: Option<ChunkSpan>,
    /// A join task's inputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<JoinInputs>,
    /// A rendition (transcode or join) of a job with audio: the storage directory
    /// of the job's audio task, whose `audio.pkts` its MP4 muxes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<String>,
    /// External WebDAV storage holding `source` and `output_dir`; absent when
    /// storage is the coordinator's own `/dav/` (reached with the worker's token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageAccess>,
}

fn stall_seconds() -> u64 {
    crate::transfer::STALL_WITHIN.as_secs()
}

/// The default `engine_stall_seconds`: well past the engine's longest silent step
/// (packaging and checking a long film's outputs after its last frame).
pub const ENGINE_STALL_SECONDS: u64 = 600;

fn engine_stall_seconds() -> u64 {
    ENGINE_STALL_SECONDS
}

/// How to reach an external WebDAV store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StorageAccess {
    /// Base URL; storage paths are relative to it.
    pub url: String,
    /// The `Authorization` header value the store expects, if any.
    pub authorization: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub epoch: i64,
    pub progress: f64,
    /// The machine's 1-minute load average, for the dashboard.
    #[serde(default)]
    pub load: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// The task was canceled: kill the child and drop the work.
    pub cancel: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Complete {
    pub epoch: i64,
    /// The engine's report (`rendition.json` or `thumbnails.json`).
    pub report: serde_json::Value,
    /// Every file published, with the size and sha256 verified after upload.
    pub files: Vec<crate::report::FileSum>,
    /// When the child ran, for measuring orchestration overhead.
    #[serde(default)]
    pub timing: ChildTiming,
}

/// Unix milliseconds on the worker's clock.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChildTiming {
    pub child_started_at: Option<i64>,
    pub child_exited_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fail {
    pub epoch: i64,
    /// One readable line.
    pub error: String,
    /// False for bad input: the job fails at once.
    pub retryable: bool,
    /// The end of the child's stderr, for ops.
    #[serde(default)]
    pub log_tail: String,
}
