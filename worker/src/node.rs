//! `drake worker`: a farm node. It registers with a join token, advertises what its
//! libav can encode, leases up to `slots` tasks, and runs each as a child process
//! (`drake transcode` or `drake thumbnails`) that dies with it. A lease may bundle
//! several renditions of one job, and its thumbnails, for one child that decodes
//! the source once. It relays progress as heartbeats, publishes outputs over WebDAV
//! (PUT under a temporary name, verify size and sha256, MOVE into place) and reports
//! each task's result on its own.
//!
//! It keeps no durable state: its scratch space is emptied after every task, and
//! losing the machine loses at most the leases it held.

use crate::health::Health;
use crate::publish::{Dav, PublishError};
use crate::thumbnails;
use proto::report::{FileSum, ProgressLine};
use proto::wire::{
    Capabilities, ChildTiming, Complete, Fail, Heartbeat, HeartbeatReply, JoinInputs, LeaseRequest, RegisterRequest, RegisterResponse,
    TaskKind, TaskLease,
};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::Semaphore;

pub struct NodeConfig {
    /// Base URLs of the coordinators, e.g. `http://10.0.0.5:8600`: several
    /// coordinators of one farm, or one load balancer in front of them. The worker
    /// talks to one at a time and moves to the next when it stops answering.
    pub coordinators: Vec<String>,
    /// A join token (`drk_join_...`) or an already issued worker credential.
    pub token: String,
    pub name: String,
    pub slots: u32,
    pub tags: Vec<String>,
    pub scratch: PathBuf,
    /// The worker takes no task while its scratch disk has less than this free.
    pub min_free_scratch_bytes: u64,
    /// The `drake` executable the children run.
    pub drake_exe: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("registering with {url}: {message}")]
    Register { url: String, message: String },
    #[error("scratch directory {0}: {1}")]
    Scratch(PathBuf, std::io::Error),
}

/// Encoders this machine's libav has, of those a profile can ask for, and their build.
pub fn capabilities(tags: Vec<String>) -> Capabilities {
    let encoders = ["libx264", "libx265", "libvpx-vp9", "libsvtav1", "libaom-av1", "aac", "libopus"]
        .into_iter()
        .filter(|n| ffmpeg_next::encoder::find_by_name(n).is_some())
        .map(String::from)
        .collect();
    Capabilities { encoders, cores: machine_cores(), tags, encoder_build: Some(crate::build::encoder_build()) }
}

/// The cores this worker may use: its affinity and its cgroup's CPU quota (v1 or
/// v2), as the standard library counts them, at least one.
fn machine_cores() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// The cores each task's child may use: the machine's, shared evenly among the
/// slots, at least one. Passed as `--cores` to children that decode.
fn task_cores(machine: u32, slots: u32) -> u32 {
    (machine / slots.max(1)).max(1)
}

/// Whether a lease's child reads the source from storage over HTTP rather than from
/// a copy in scratch: chunks (only their part, with range requests), and a job's
/// audio and thumbnails, which read it once from start to end. They start at once,
/// where a copy of a long source would hold back the audio every join waits for,
/// and take no scratch. A read error on a URL is internal, so the task is retried.
/// A rendition encoded whole still reads a copy: its encode may take hours (a long
/// source too sparse in keyframes to cut), and the copy resumes after a storage blip
/// where the encode would start over.
fn streams_source(tasks: &[TaskLease]) -> bool {
    tasks.iter().all(|t| matches!(t.kind, TaskKind::Chunk | TaskKind::Audio | TaskKind::Thumbnails))
}

/// Most renditions one child encodes from one decode of the source.
const MAX_BUNDLE: u32 = 4;
/// How long a lease poll waits for work.
const LEASE_WAIT_SECONDS: u64 = 20;
/// How often a worker whose scratch disk is full (or who rests) looks again (each
/// look a poll that keeps it live).
const PAUSED_RECHECK_SECONDS: u64 = 5;

struct Node {
    cfg: NodeConfig,
    /// Which of `cfg.coordinators` the worker talks to now.
    current: AtomicUsize,
    http: reqwest::Client,
    token: String,
    heartbeat: Duration,
    draining: AtomicBool,
    /// Wakes the lease long-poll when draining starts.
    drain: tokio::sync::Notify,
    /// Whether its engine keeps failing, and so it rests.
    health: std::sync::Mutex<Health>,
    /// Whether the coordinator has this process's capabilities: from its
    /// registration, or else sent with its first lease request.
    announced: AtomicBool,
}

pub async fn run(cfg: NodeConfig, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> Result<(), NodeError> {
    std::fs::create_dir_all(&cfg.scratch).map_err(|e| NodeError::Scratch(cfg.scratch.clone(), e))?;
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| NodeError::Register { url: cfg.coordinators.join(", "), message: e.to_string() })?;
    let issued = cfg.token.starts_with("drk_worker_");
    let (token, heartbeat, current) = if issued {
        (cfg.token.clone(), Duration::from_secs(5), 0)
    } else {
        let (reg, current) = register(&http, &cfg).await?;
        let _ = writeln!(std::io::stdout(), "drake worker {} registered as {}", cfg.name, reg.worker_id);
        (reg.token, Duration::from_secs(reg.heartbeat_seconds.max(1)), current)
    };
    let node = Arc::new(Node {
        cfg,
        current: AtomicUsize::new(current),
        http,
        token,
        heartbeat,
        draining: AtomicBool::new(false),
        announced: AtomicBool::new(!issued),
        drain: tokio::sync::Notify::new(),
        health: Default::default(),
    });
    {
        let node = node.clone();
        tokio::spawn(async move {
            shutdown.await;
            proto::log!("drake worker: draining: finishing running tasks, taking no new ones");
            node.draining.store(true, Ordering::SeqCst);
            node.drain.notify_waiters();
        });
    }
    let slots = Arc::new(Semaphore::new(node.cfg.slots as usize));
    let mut errors = 0u32;
    let mut scratch_short: Option<String> = None;
    let mut was_resting = false;
    loop {
        let free = slots.available_permits() as u32;
        if node.draining.load(Ordering::SeqCst) {
            // Wait for every running task, then stop.
            let _all = slots.acquire_many(node.cfg.slots).await.expect("semaphore open");
            return Ok(());
        }
        if free == 0 {
            // Wait for a slot (or for draining to begin).
            tokio::select! {
                permit = slots.clone().acquire_owned() => drop(permit),
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        let drained = node.drain.notified();
        if node.draining.load(Ordering::SeqCst) {
            continue;
        }
        // A full scratch disk would fail every task it took: poll with no free slot
        // (live, leasing nothing) until there is room again.
        let short = node.scratch_short();
        if short.is_some() != scratch_short.is_some() {
            match &short {
                Some(why) => proto::log!("drake worker: taking no tasks: {why}"),
                None => proto::log!("drake worker: the scratch disk has room again; taking tasks"),
            }
        }
        scratch_short = short;
        // A worker whose engine keeps failing rests the same way (see `health`).
        let resting = node.health.lock().ok().and_then(|mut h| h.resting(std::time::Instant::now()).map(String::from));
        if resting.is_none() && was_resting {
            proto::log!("drake worker: rested; taking tasks again");
        }
        was_resting = resting.is_some();
        let paused = scratch_short.clone().or(resting);
        let (free, wait_seconds) = if paused.is_some() { (0, PAUSED_RECHECK_SECONDS) } else { (free, LEASE_WAIT_SECONDS) };
        let leased = tokio::select! {
            r = node.lease(free, wait_seconds, paused.as_deref()) => r,
            // Stop waiting for work at once; a lease granted meanwhile lapses and is requeued.
            _ = drained => continue,
        };
        match leased {
            Ok(Some(lease)) => {
                errors = 0;
                let permit = slots.clone().acquire_owned().await.expect("semaphore open");
                let node = node.clone();
                tokio::spawn(async move {
                    node.run_task(lease).await;
                    drop(permit);
                });
            }
            Ok(None) => errors = 0,
            Err(e) => {
                // Backing off: grows with consecutive errors, so a coordinator restart is not hammered.
                errors += 1;
                let wait = Duration::from_millis(500 * 2u64.pow(errors.min(6)));
                proto::log!("drake worker: leasing: {e}; retrying in {wait:?}");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Registers with the first coordinator that answers; returns which one did.
async fn register(http: &reqwest::Client, cfg: &NodeConfig) -> Result<(RegisterResponse, usize), NodeError> {
    let mut last = None;
    for (i, base) in cfg.coordinators.iter().enumerate() {
        match register_with(http, cfg, base).await {
            Ok(reg) => return Ok((reg, i)),
            Err(e) => {
                proto::log!("drake worker: {e}");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| NodeError::Register { url: String::new(), message: "no coordinator given".into() }))
}

async fn register_with(http: &reqwest::Client, cfg: &NodeConfig, base: &str) -> Result<RegisterResponse, NodeError> {
    let url = format!("{base}/api/v1/workers/register");
    let req = RegisterRequest {
        version: proto::WIRE_VERSION,
        name: cfg.name.clone(),
        drake_version: env!("CARGO_PKG_VERSION").into(),
        slots: cfg.slots,
        capabilities: capabilities(cfg.tags.clone()),
    };
    let err = |message: String| NodeError::Register { url: url.clone(), message };
    let resp = http.post(&url).bearer_auth(&cfg.token).json(&req).send().await.map_err(|e| err(e.to_string()))?;
    if !resp.status().is_success() {
        let status = resp.status();
        return Err(err(format!("HTTP {status}: {}", resp.text().await.unwrap_or_default())));
    }
    resp.json().await.map_err(|e| err(e.to_string()))
}

/// A join's inputs, copied into scratch.
struct Parts {
    probe: PathBuf,
    chunks: Vec<PathBuf>,
}

/// How a task's child ended.
enum Outcome {
    Succeeded {
        timing: ChildTiming,
        log_tail: String,
    },
    /// The engine failed, or could not start.
    Failed {
        error: String,
        retryable: bool,
        log_tail: String,
    },
    /// Storage failed the task (retryable): its inputs could not be copied, or the
    /// engine could not read its source. Not this machine's fault.
    StoreFailed {
        error: String,
        log_tail: String,
    },
    /// Canceled, or the lease was lost: drop the work silently.
    Abandoned,
}

impl Node {
    /// The coordinator the worker talks to now.
    fn base(&self) -> &str {
        &self.cfg.coordinators[self.current.load(Ordering::Relaxed) % self.cfg.coordinators.len()]
    }

    /// Sends a request to the current coordinator, moving on to the next one when
    /// it does not answer (connection refused, timeout) or its load balancer says
    /// it is down (502, 503, 504). Every coordinator is tried once, and the first
    /// once more after a moment (a load balancer's next pick is another one).
    async fn send(&self, request: impl Fn(&str) -> reqwest::RequestBuilder) -> Result<reqwest::Response, String> {
        let mut last = String::new();
        for attempt in 0..=self.cfg.coordinators.len() {
            if attempt == self.cfg.coordinators.len() {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            let at = self.current.load(Ordering::Relaxed);
            let base = &self.cfg.coordinators[at % self.cfg.coordinators.len()];
            match request(base).send().await {
                Ok(r) if !matches!(r.status().as_u16(), 502..=504) => return Ok(r),
                Ok(r) => last = format!("{base}: HTTP {}", r.status()),
                Err(e) => last = format!("{base}: {e}"),
            }
            if self.cfg.coordinators.len() > 1 && self.current.compare_exchange(at, at + 1, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
                let next = &self.cfg.coordinators[(at + 1) % self.cfg.coordinators.len()];
                proto::log!("drake worker: {last}; moving to {next}");
            }
        }
        Err(last)
    }

    /// Counts the engine's outcome towards the worker's health (see `health`): its
    /// success, or its own failure (not bad input, not storage), which may start a
    /// rest.
    fn note_health(&self, lease: &TaskLease, outcome: &Outcome) {
        let Ok(mut health) = self.health.lock() else { return };
        match outcome {
            Outcome::Succeeded { .. } => health.succeeded(),
            Outcome::Failed { error, retryable: true, .. } => {
                if let Some(why) = health.failed(&lease.job_id, error, std::time::Instant::now()) {
                    proto::log!("drake worker: taking no tasks: {why}");
                }
            }
            Outcome::Failed { retryable: false, .. } | Outcome::StoreFailed { .. } | Outcome::Abandoned => {}
        }
    }

    /// Why the scratch disk is too full to take a task, if it is. The same words
    /// while the disk stays short, so the coordinator writes a pause once.
    fn scratch_short(&self) -> Option<String> {
        let (scratch, reserve) = (&self.cfg.scratch, self.cfg.min_free_scratch_bytes);
        match proto::disk::short_of(scratch, 0, reserve) {
            Ok(short) => short.map(|_| format!("the scratch disk ({}) has less than the {reserve} it keeps free", scratch.display())),
            Err(e) => Some(format!("cannot measure the scratch disk ({}): {e}", scratch.display())),
        }
    }

    async fn lease(&self, free: u32, wait_seconds: u64, paused: Option<&str>) -> Result<Option<TaskLease>, String> {
        let req = LeaseRequest {
            version: proto::WIRE_VERSION,
            free_slots: free,
            wait_seconds,
            draining: false,
            max_tasks: MAX_BUNDLE,
            bundle_thumbnails: true,
            load: load_average(),
            paused: paused.map(String::from),
            capabilities: (!self.announced.load(Ordering::Relaxed)).then(|| capabilities(self.cfg.tags.clone())),
            drake_version: (!self.announced.load(Ordering::Relaxed)).then(|| env!("CARGO_PKG_VERSION").into()),
        };
        let resp = self
            .send(|base| {
                self.http.post(format!("{base}/api/v1/workers/lease")).bearer_auth(&self.token).json(&req).timeout(Duration::from_secs(40))
            })
            .await?;
        if resp.status().is_success() {
            self.announced.store(true, Ordering::Relaxed);
        }
        match resp.status().as_u16() {
            200 => resp.json().await.map(Some).map_err(|e| e.to_string()),
            204 => Ok(None),
            s => Err(format!("HTTP {s}: {}", resp.text().await.unwrap_or_default())),
        }
    }

    /// Runs a lease (and its companions, in the same child), then publishes and
    /// reports each task on its own.
    async fn run_task(self: Arc<Self>, mut lease: TaskLease) {
        let companions = std::mem::take(&mut lease.companions);
        let tasks: Vec<TaskLease> = std::iter::once(lease).chain(companions).collect();
        let dirs: Vec<PathBuf> = tasks.iter().map(|l| self.cfg.scratch.join(format!("{}-{}", l.task_id, l.epoch))).collect();
        for dir in &dirs {
            let _ = tokio::fs::remove_dir_all(dir).await;
        }
        let outcome = self.execute(&tasks, &dirs).await;
        self.note_health(&tasks[0], &outcome);
        // Publishing a large bundle can outlast the lease TTL: keep every lease not
        // yet reported alive until its completion or failure is posted.
        // A task whose lease is lost (or canceled) meanwhile stops publishing.
        let unreported = Arc::new(std::sync::Mutex::new(tasks.clone()));
        let lost: Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        let keeper = {
            let (node, unreported, lost) = (self.clone(), unreported.clone(), lost.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(node.heartbeat).await;
                    let pending = unreported.lock().map(|p| p.clone()).unwrap_or_default();
                    for task in &pending {
                        match node.heartbeat(task, 1.0).await {
                            Ok(false) => {}
                            Ok(true) => {
                                if let Ok(mut l) = lost.lock() {
                                    l.push(task.task_id.clone());
                                }
                            }
                            Err(e) => proto::log!("drake worker: heartbeat while publishing {}: {e}", task.task_id),
                        }
                    }
                }
            })
        };
        for (lease, dir) in tasks.iter().zip(&dirs) {
            let result = match &outcome {
                // Thumbnails made alongside renditions fail on their own; their
                // retry runs as a task of its own.
                Outcome::Succeeded { log_tail, .. } if lease.kind == TaskKind::Thumbnails && !dir.join(thumbnails::REPORT).exists() => {
                    let reason =
                        log_tail.lines().rev().find_map(|l| l.strip_prefix("drake: ").and_then(|l| l.strip_prefix(thumbnails::NOT_MADE)));
                    let error = format!("{}{}", thumbnails::NOT_MADE, reason.unwrap_or("the engine wrote no thumbnails.json"));
                    self.post(lease, "fail", &Fail { epoch: lease.epoch, error, retryable: true, log_tail: log_tail.clone() }).await
                }
                Outcome::Succeeded { timing, .. } => match self.publish(lease, dir, timing.clone(), &lost).await {
                    Ok(complete) => self.post(lease, "complete", &complete).await,
                    // Storage trouble is infrastructure: another attempt may succeed.
                    Err(e) => {
                        let fail = Fail {
                            epoch: lease.epoch,
                            error: format!("publishing outputs: {e}"),
                            retryable: true,
                            log_tail: String::new(),
                        };
                        self.post(lease, "fail", &fail).await
                    }
                },
                Outcome::Failed { error, retryable, log_tail } => {
                    let fail = Fail { epoch: lease.epoch, error: error.clone(), retryable: *retryable, log_tail: log_tail.clone() };
                    self.post(lease, "fail", &fail).await
                }
                Outcome::StoreFailed { error, log_tail } => {
                    let fail = Fail { epoch: lease.epoch, error: error.clone(), retryable: true, log_tail: log_tail.clone() };
                    self.post(lease, "fail", &fail).await
                }
                // The canceled or lost task is dropped silently; bundle mates that still
                // hold their leases go back to the queue at once (their posts may be
                // refused if the whole job was canceled).
                Outcome::Abandoned => {
                    if tasks.len() > 1 {
                        let error = "stopped because a task leased with it was canceled or lost".to_string();
                        let _ =
                            self.post(lease, "fail", &Fail { epoch: lease.epoch, error, retryable: true, log_tail: String::new() }).await;
                    }
                    Ok(())
                }
            };
            if let Err(e) = result {
                proto::log!("drake worker: task {}: reporting: {e}", lease.task_id);
            }
            if let Ok(mut p) = unreported.lock() {
                p.retain(|t| t.task_id != lease.task_id);
            }
            // Cleanup runs on every path.
            let _ = tokio::fs::remove_dir_all(dir).await;
        }
        let _ = tokio::fs::remove_file(dirs[0].with_extension("source")).await;
        let _ = tokio::fs::remove_dir_all(dirs[0].with_extension("parts")).await;
        keeper.abort();
    }

    /// Reports a task's end. A coordinator that cannot be reached, or answers 502
    /// to 504 (503: its store cannot be reached to check the files), is asked
    /// again, with a growing wait, for up to [`REPORT_RETRY_FOR`]; the task's
    /// heartbeats keep its lease meanwhile, so the work done is not thrown away
    /// over a blip.
    async fn post<T: serde::Serialize>(&self, lease: &TaskLease, what: &str, body: &T) -> Result<(), String> {
        let started = tokio::time::Instant::now();
        let mut wait = Duration::from_millis(500);
        loop {
            let sent = self
                .send(|base| {
                    self.http
                        .post(format!("{base}/api/v1/tasks/{}/{what}", lease.task_id))
                        .bearer_auth(&self.token)
                        .json(body)
                        .timeout(Duration::from_secs(60))
                })
                .await;
            // `send` tells an answer worth asking again for (none, or 502 to 504) by its error.
            let error = match sent {
                Ok(resp) if resp.status().is_success() => return Ok(()),
                Ok(resp) => return Err(format!("HTTP {}: {}", resp.status(), resp.text().await.unwrap_or_default())),
                Err(e) => e,
            };
            if started.elapsed() + wait > REPORT_RETRY_FOR {
                return Err(error);
            }
            proto::log!("drake worker: task {}: reporting: {error}; trying again in {wait:?}", lease.task_id);
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(10));
        }
    }

    /// Runs the child, relaying progress as heartbeats, until it exits, times out,
    /// or a task is canceled or its lease lost. `tasks` share one source (a lease
    /// and its companions); `dirs` are their output directories.
    async fn execute(&self, tasks: &[TaskLease], dirs: &[PathBuf]) -> Outcome {
        let lease = &tasks[0];
        let mut cmd = tokio::process::Command::new(&self.cfg.drake_exe);
        // A rendition muxes the job's audio, encoded once by its audio task.
        let audio = match self.fetch_audio(lease, &dirs[0]).await {
            Ok(a) => a,
            Err(outcome) => return outcome,
        };
        if let Some(join) = &lease.join {
            // A join reads its parts and the probe, never the source.
            let parts = match self.fetch_parts(lease, join, &dirs[0]).await {
                Ok(p) => p,
                Err(outcome) => return outcome,
            };
            cmd.arg("join").arg("--probe").arg(&parts.probe).args(["--profile", &lease.profile]);
            cmd.args(["--rendition", lease.rendition.as_deref().unwrap_or_default()]);
            for chunk in &parts.chunks {
                cmd.arg("--chunk").arg(chunk);
            }
            if let Some(audio) = &audio {
                cmd.arg("--audio").arg(audio.parent().expect("in the parts directory"));
            }
            cmd.arg("--out").arg(&dirs[0]);
        } else {
            let in_storage = !(lease.source.starts_with("http://") || lease.source.starts_with("https://"));
            let source = if in_storage && streams_source(tasks) {
                // libav reads the source over HTTP (a chunk only its part, seeking
                // with range requests), with the storage credential from the environment.
                let (base, authorization) = self.storage(lease);
                if let Some(a) = authorization {
                    cmd.env(proto::HTTP_AUTHORIZATION_ENV, a);
                }
                cmd.env(
                    proto::HTTP_USER_AGENT_ENV,
                    format!("drake/{} ({} {})", env!("CARGO_PKG_VERSION"), lease.kind.as_str(), lease.task_id),
                );
                cmd.env(proto::HTTP_STALL_SECONDS_ENV, lease.stall_seconds.max(1).to_string());
                format!("{base}/{}", lease.source.trim_start_matches('/'))
            } else if in_storage {
                match self.fetch_source(tasks, &dirs[0]).await {
                    Ok(local) => local.to_string_lossy().into_owned(),
                    Err(outcome) => return outcome,
                }
            } else {
                // A lease from before sources were ingested: libav reads the URL itself.
                lease.source.clone()
            };
            let cores = task_cores(machine_cores(), self.cfg.slots).to_string();
            if lease.kind == TaskKind::Thumbnails {
                cmd.arg("thumbnails").arg(&source).arg("--out").arg(&dirs[0]).args(["--cores", &cores]);
            } else {
                cmd.arg("transcode").arg(&source).args(["--profile", &lease.profile, "--cores", &cores]);
                for (task, dir) in tasks.iter().zip(dirs) {
                    match (task.kind, task.rendition.as_deref()) {
                        (TaskKind::Thumbnails, _) => cmd.arg("--thumbnails").arg(dir),
                        // The subtitles of a source without audio (an audio task without a rendition).
                        (TaskKind::Audio, None) => cmd.arg("--subtitles").arg("--out").arg(dir),
                        (_, rendition) => cmd.args(["--rendition", rendition.unwrap_or_default()]).arg("--out").arg(dir),
                    };
                }
                match (lease.kind, lease.chunk) {
                    (TaskKind::Chunk, Some(c)) => {
                        let frames = c.frames.map_or_else(|| "end".to_string(), |f| f.to_string());
                        cmd.arg("--chunk").arg(format!("{}:{}:{frames}", c.index, c.first_frame));
                    }
                    (TaskKind::Audio, _) if lease.rendition.is_some() => {
                        cmd.arg("--audio");
                    }
                    _ => {}
                }
                if let Some(audio) = &audio {
                    cmd.arg("--audio-packets").arg(audio);
                }
            }
        }
        cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).kill_on_drop(true);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // Die with the worker, even on SIGKILL; and lead a process group we can kill whole.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                libc::setpgid(0, 0);
                Ok(())
            });
        }
        let started_at = unix_ms();
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                return Outcome::Failed {
                    error: format!("cannot start {}: {e}", self.cfg.drake_exe.display()),
                    retryable: true,
                    log_tail: String::new(),
                };
            }
        };
        let pid = child.id();
        let progress = Arc::new(AtomicU64::new(0f64.to_bits()));
        // When the engine last reported progress, in ms since it was started.
        let spawned = tokio::time::Instant::now();
        let last_progress = Arc::new(AtomicU64::new(0));
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let reader = {
            let (progress, last_progress) = (progress.clone(), last_progress.clone());
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(f) = parse_progress(&line) {
                        progress.store(f.to_bits(), Ordering::Relaxed);
                        last_progress.store(spawned.elapsed().as_millis() as u64, Ordering::Relaxed);
                    }
                }
            })
        };
        let stderr_task = tokio::spawn(log_tail(stderr, LOG_TAIL_BYTES));
        let kill = |pid: Option<u32>| {
            if let Some(pid) = pid {
                // SAFETY: signalling the child's process group (it called setpgid).
                unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
            }
        };
        // Each rendition of a bundle gets the per-task allowance.
        let timeout = lease.timeout_seconds.max(1) * tasks.len() as u64;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        // The engine prints progress at least every half second while it works; one
        // that goes quiet this long is hung (a libav call that never returns, a
        // stopped process) and is stopped, rather than holding its task for `timeout`.
        let quiet_limit = Duration::from_secs(lease.engine_stall_seconds.max(1));
        let quiet_until = || spawned + Duration::from_millis(last_progress.load(Ordering::Relaxed)) + quiet_limit;
        // Why the worker stops the child, if it does.
        enum Stop {
            Hung,
            TimedOut,
            Abandoned,
        }
        let mut tick = tokio::time::interval(self.heartbeat);
        let ended = 'run: loop {
            tokio::select! {
                status = child.wait() => break Ok(status),
                _ = tokio::time::sleep_until(quiet_until()) => {
                    if quiet_until() <= tokio::time::Instant::now() {
                        break Err(Stop::Hung);
                    } // else progress came while it slept
                }
                _ = tick.tick() => {
                    let p = f64::from_bits(progress.load(Ordering::Relaxed));
                    for task in tasks {
                        match self.heartbeat(task, p).await {
                            Ok(false) => {}
                            Ok(true) => break 'run Err(Stop::Abandoned),
                            Err(e) => proto::log!("drake worker: heartbeat for {}: {e}", task.task_id),
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline) => break Err(Stop::TimedOut),
            }
        };
        let status = match ended {
            Ok(status) => status,
            Err(stop) => {
                kill(pid);
                let _ = child.wait().await;
                let log_tail = stderr_task.await.unwrap_or_default();
                let error = match stop {
                    Stop::Abandoned => return Outcome::Abandoned,
                    Stop::Hung => format!("the engine reported no progress for {} s; stopped", quiet_limit.as_secs()),
                    Stop::TimedOut => format!("timed out after {timeout} s"),
                };
                return Outcome::Failed { error, retryable: true, log_tail };
            }
        };
        let exited_at = unix_ms();
        let _ = reader.await;
        let log_tail = stderr_task.await.unwrap_or_default();
        let last = log_tail.lines().last().unwrap_or_default().trim_start_matches("drake: ").to_string();
        match status {
            Ok(s) if s.success() => Outcome::Succeeded {
                timing: ChildTiming { child_started_at: Some(started_at), child_exited_at: Some(exited_at) },
                log_tail,
            },
            Ok(s) if s.code() == Some(proto::exit::BAD_INPUT) => Outcome::Failed { error: last, retryable: false, log_tail },
            Ok(s) if s.code() == Some(proto::exit::UNREACHABLE) => Outcome::StoreFailed { error: last, log_tail },
            Ok(s) => Outcome::Failed {
                error: if last.is_empty() { format!("the engine exited with {s}") } else { last },
                retryable: true,
                log_tail,
            },
            Err(e) => Outcome::Failed { error: format!("waiting for the engine: {e}"), retryable: true, log_tail },
        }
    }

    /// Copies a lease's source from storage into scratch (beside its first output
    /// directory), heartbeating every task meanwhile. A failed copy is retryable;
    /// a task canceled or lost meanwhile is abandoned.
    async fn fetch_source(&self, tasks: &[TaskLease], first_dir: &Path) -> Result<PathBuf, Outcome> {
        let lease = &tasks[0];
        let dest = first_dir.with_extension("source");
        let dav = self.dav(lease);
        match self.beating(tasks, "copying the source from storage", dav.download(&lease.source, &dest)).await {
            Ok(_) => Ok(dest),
            Err(o) => {
                let _ = tokio::fs::remove_file(&dest).await;
                Err(o)
            }
        }
    }

    /// Copies the job's audio packets (`audio.pkts`), which a rendition lease's MP4
    /// muxes, into scratch (in the parts directory beside its output directory).
    async fn fetch_audio(&self, lease: &TaskLease, out_dir: &Path) -> Result<Option<PathBuf>, Outcome> {
        let Some(from) = &lease.audio else { return Ok(None) };
        let dest = out_dir.with_extension("parts").join("audio").join(crate::transcode::AUDIO_PACKETS);
        let dav = self.dav(lease);
        let copy = async {
            tokio::fs::create_dir_all(dest.parent().expect("a directory")).await.map_err(PublishError::Local)?;
            dav.download(&format!("{from}/{}", crate::transcode::AUDIO_PACKETS), &dest).await
        };
        match self.beating(std::slice::from_ref(lease), "copying the audio from storage", copy).await {
            Ok(_) => Ok(Some(dest)),
            Err(o) => {
                let _ = tokio::fs::remove_file(&dest).await;
                Err(o)
            }
        }
    }

    /// Copies what a join reads into scratch (beside its output directory): every
    /// chunk's packets and report, and the probe.
    async fn fetch_parts(&self, lease: &TaskLease, join: &JoinInputs, out_dir: &Path) -> Result<Parts, Outcome> {
        let root = out_dir.with_extension("parts");
        let parts =
            Parts { probe: root.join("probe.json"), chunks: (0..join.chunks.len()).map(|i| root.join(format!("c{i:04}"))).collect() };
        let dav = self.dav(lease);
        let copy = async {
            for dir in &parts.chunks {
                tokio::fs::create_dir_all(dir).await.map_err(PublishError::Local)?;
            }
            tokio::fs::write(&parts.probe, join.probe.to_string()).await.map_err(PublishError::Local)?;
            for (from, to) in join.chunks.iter().zip(&parts.chunks) {
                for name in [crate::transcode::CHUNK_PACKETS, crate::transcode::CHUNK_REPORT] {
                    dav.download(&format!("{from}/{name}"), &to.join(name)).await?;
                }
            }
            Ok(())
        };
        match self.beating(std::slice::from_ref(lease), "copying the chunks from storage", copy).await {
            Ok(()) => Ok(parts),
            Err(o) => {
                let _ = tokio::fs::remove_dir_all(&root).await;
                Err(o)
            }
        }
    }

    /// Runs `work` (a copy from storage) while heartbeating every task. Its failure
    /// is retryable; a task canceled or lost meanwhile abandons it.
    async fn beating<T>(
        &self,
        tasks: &[TaskLease],
        what: &str,
        work: impl std::future::Future<Output = Result<T, PublishError>>,
    ) -> Result<T, Outcome> {
        tokio::pin!(work);
        let mut tick = tokio::time::interval(self.heartbeat);
        loop {
            tokio::select! {
                done = &mut work => {
                    return done.map_err(|e| Outcome::StoreFailed { error: format!("{what}: {e}"), log_tail: String::new() });
                }
                _ = tick.tick() => {
                    for task in tasks {
                        if let Ok(true) = self.heartbeat(task, 0.0).await {
                            return Err(Outcome::Abandoned);
                        }
                    }
                }
            }
        }
    }

    /// The base URL of a lease's storage and the Authorization header for it: the
    /// external store the coordinator named, or the coordinator's own `/dav/`.
    fn storage(&self, lease: &TaskLease) -> (String, Option<String>) {
        match &lease.storage {
            Some(s) => (s.url.trim_end_matches('/').to_string(), s.authorization.clone()),
            None => (format!("{}/dav", self.base()), Some(format!("Bearer {}", self.token))),
        }
    }

    /// The store a lease's files are on, with the farm's stall limit.
    fn dav(&self, lease: &TaskLease) -> Dav<'_> {
        let (base, authorization) = self.storage(lease);
        Dav::new(&self.http, base, authorization, Duration::from_secs(lease.stall_seconds.max(1)))
    }

    /// Sends one heartbeat; Ok(true) means stop (canceled or lease lost).
    async fn heartbeat(&self, lease: &TaskLease, progress: f64) -> Result<bool, String> {
        let beat = Heartbeat { epoch: lease.epoch, progress, load: load_average() };
        let resp = self
            .send(|base| {
                self.http
                    .post(format!("{base}/api/v1/tasks/{}/heartbeat", lease.task_id))
                    .bearer_auth(&self.token)
                    .json(&beat)
                    .timeout(Duration::from_secs(10))
            })
            .await?;
        match resp.status().as_u16() {
            200 => Ok(resp.json::<HeartbeatReply>().await.map_err(|e| e.to_string())?.cancel),
            409 => Ok(true),
            s => Err(format!("HTTP {s}")),
        }
    }

    /// Publishes every output file (the report last) and builds the completion.
    async fn publish(
        &self,
        lease: &TaskLease,
        dir: &Path,
        timing: ChildTiming,
        lost: &std::sync::Mutex<Vec<String>>,
    ) -> Result<Complete, PublishError> {
        let report_name = lease.kind.report_file();
        let report: serde_json::Value = serde_json::from_slice(&tokio::fs::read(dir.join(report_name)).await.map_err(PublishError::Local)?)
            .map_err(|e| PublishError::Local(std::io::Error::other(e)))?;
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map_err(PublishError::Local)?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != report_name)
            .collect();
        names.sort();
        names.push(report_name.to_string());
        let dav = self.dav(lease);
        dav.mkcol_all(&lease.output_dir).await?;
        let mut files: Vec<FileSum> = Vec::with_capacity(names.len());
        for name in names {
            if lost.lock().is_ok_and(|l| l.contains(&lease.task_id)) {
                return Err(PublishError::Local(std::io::Error::other("the lease was lost or the task canceled while publishing")));
            }
            files.push(dav.publish(&dir.join(&name), &lease.output_dir, &name, &format!("{}-{}", lease.task_id, lease.epoch)).await?);
        }
        Ok(Complete { epoch: lease.epoch, report, files, timing })
    }
}

/// How long a task's report is tried again while the coordinator, or its store,
/// cannot be reached.
const REPORT_RETRY_FOR: Duration = Duration::from_secs(120);

/// How much of a child's stderr is kept: its end, shown to ops with a failure.
const LOG_TAIL_BYTES: usize = 8000;

/// Reads a child's stderr to its end, keeping only the last `keep` bytes (at most
/// twice that in memory), so a chatty or hostile engine log cannot fill the worker.
async fn log_tail(mut stderr: impl tokio::io::AsyncRead + Unpin, keep: usize) -> String {
    let mut tail: Vec<u8> = Vec::with_capacity(2 * keep);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match stderr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > 2 * keep {
                    tail.drain(..tail.len() - keep);
                }
            }
        }
    }
    let start = tail.len().saturating_sub(keep);
    let text = String::from_utf8_lossy(&tail[start..]).into_owned();
    // Drop a character cut in half at the start.
    text.trim_start_matches('\u{fffd}').to_string()
}

/// The 1-minute load average (Linux), shown on the dashboard.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Progress fraction from one engine stdout line, e.g.
/// `{"type":"progress","fraction":0.42,"fps":212.0,"frame":127,"out_time":4.2}`.
pub fn parse_progress(line: &str) -> Option<f64> {
    match serde_json::from_str::<ProgressLine>(line).ok()? {
        ProgressLine::Progress { fraction, .. } | ProgressLine::Done { fraction } => Some(fraction.clamp(0.0, 1.0)),
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn only_the_end_of_a_huge_log_is_kept() {
        let log: Vec<u8> = (0..200_000u32).flat_map(|i| format!("line {i}\n").into_bytes()).collect();
        let tail = super::log_tail(&log[..], 8000).await;
        assert!(tail.len() <= 8000 && tail.len() > 7000, "{}", tail.len());
        assert!(tail.ends_with("line 199999\n"));
    }

    #[test]
    fn each_slot_gets_an_even_share_of_the_cores_and_at_least_one() {
        assert_eq!([(2, 1), (2, 2), (1, 4), (8, 3), (64, 0)].map(|(m, s)| super::task_cores(m, s)), [2, 1, 1, 2, 64]);
    }

    #[test]
    fn progress_lines() {
        assert_eq!(super::parse_progress(r#"{"type":"progress","fraction":0.42,"fps":212.0,"frame":127,"out_time":4.2}"#), Some(0.42));
        assert_eq!(super::parse_progress(r#"{"type":"done","fraction":1.0}"#), Some(1.0));
        assert_eq!(super::parse_progress("garbage"), None);
    }
}
