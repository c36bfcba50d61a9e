//! Worker routes: registration with a join token, long-poll leasing, heartbeats,
//! completion and failure; plus the admin's view and control of workers.
//! A worker credential can call these routes (and `/dav/`) and nothing else.

use crate::api::{allow, parsed};
use crate::auth::{self, Caller, Role};
use crate::error::ApiError;
use crate::lifecycle;
use crate::queue::{Bundling, Fit, QueueError};
use crate::registry::Slots;
use crate::state::{AppState, audit, now_ms};
use crate::storage;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use proto::wire::{
    Capabilities, Complete, Fail, Heartbeat, HeartbeatReply, JoinInputs, LeaseRequest, RegisterRequest, RegisterResponse, TaskKind,
    TaskLease,
};
use serde_json::json;
use std::time::Duration;

const MAX_WAIT_SECONDS: u64 = 30;
/// Most of a worker's reason for a pause that is kept.
const MAX_PAUSED_CHARS: usize = 300;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/workers", get(list))
        .route("/api/v1/workers/register", post(register))
        .route("/api/v1/workers/lease", post(lease))
        .route("/api/v1/workers/{id}/drain", post(drain))
        .route("/api/v1/workers/{id}/resume", post(resume))
        .route("/api/v1/workers/{id}/remove", post(remove_route))
        .route("/api/v1/tasks/{id}/heartbeat", post(heartbeat))
        .route("/api/v1/tasks/{id}/complete", post(complete))
        .route("/api/v1/tasks/{id}/fail", post(fail))
}

/// The worker id of a worker caller.
fn worker_id(caller: &Caller) -> Result<String, ApiError> {
    allow(caller, &[Role::Worker])?;
    caller.label.clone().ok_or(ApiError::Forbidden)
}

/// Exchanges a join token (one use) for a worker identity and credential.
async fn register(
    State(st): State<AppState>,
    caller: Caller,
    req: Result<Json<RegisterRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    allow(&caller, &[Role::Join])?;
    let req = parsed(req)?;
    if req.name.is_empty() || req.name.len() > 100 || !(1..=64).contains(&req.slots) {
        return Err(ApiError::BadRequest("name must be 1..=100 characters and slots 1..=64".into()));
    }
    check_capabilities(&req.capabilities)?;
    // The join token is in the Authorization header; spend it atomically.
    let now = now_ms();
    let id = uuid::Uuid::now_v7().to_string();
    let token = auth::generate(Role::Worker);
    if !st.queue.spend_join_token(caller.presented.as_deref().unwrap_or_default(), now).await? {
        return Err(ApiError::Unauthorized);
    }
    st.queue.register_worker(&id, &req.name, req.slots as i64, &req.capabilities, &req.drake_version, now).await?;
    st.queue.add_token(&token, Role::Worker, Some(&id), None, None, now).await?;
    st.emit("worker", json!({"worker_id": id, "state": "idle"}));
    lifecycle::check_capable_workers(&st, now).await;
    Ok((
        StatusCode::CREATED,
        Json(RegisterResponse {
            worker_id: id,
            token,
            heartbeat_seconds: ((st.queue.cfg.lease_ttl_ms / 4000).max(1) as u64).min(HEARTBEAT_MAX_SECONDS),
        }),
    )
        .into_response())
}

/// Long poll: answers a lease as soon as a task this worker can run is queued,
/// or 204 after `wait_seconds`.
/// Heartbeats carry progress to the dashboard, so they come at least this often
/// (and four per lease TTL, so one lost heartbeat never costs a lease).
const HEARTBEAT_MAX_SECONDS: u64 = 2;

/// Bounds what a worker says it can do.
fn check_capabilities(caps: &Capabilities) -> Result<(), ApiError> {
    let bounded = |v: &[String]| v.len() <= 500 && v.iter().all(|s| s.len() <= 100);
    if !bounded(&caps.encoders) || !bounded(&caps.tags) || caps.encoder_build.as_ref().is_some_and(|b| b.is_empty() || b.len() > 200) {
        return Err(ApiError::BadRequest("at most 500 encoders and tags of 100 characters, and an encoder_build of 1..=200".into()));
    }
    Ok(())
}

/// Most renditions one lease may bundle (the engine's limit per process).
const MAX_BUNDLE: usize = 4;

async fn lease(State(st): State<AppState>, caller: Caller, req: Result<Json<LeaseRequest>, JsonRejection>) -> Result<Response, ApiError> {
    let worker = worker_id(&caller)?;
    let req = parsed(req)?;
    let _polling =
        st.gate.enter(crate::gate::Kind::LongPoll, &worker).ok_or(ApiError::TooMany("too many lease polls open for this worker"))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(req.wait_seconds.min(MAX_WAIT_SECONDS));
    let paused = req.paused.as_deref().map(|p| p.chars().take(MAX_PAUSED_CHARS).collect::<String>());
    let slots = Slots { free: req.free_slots as i64, paused: paused.as_deref() };
    if let Some(caps) = &req.capabilities {
        check_capabilities(caps)?;
        let version = req.drake_version.as_deref().filter(|v| !v.is_empty() && v.len() <= 100);
        st.queue.update_capabilities(&worker, caps, version).await?;
    }
    loop {
        let now = now_ms();
        let caps = st.queue.worker_seen(&worker, Some(slots), req.load, now).await?;
        // A worker an admin drains gets nothing from the claim.
        if req.free_slots > 0 && !req.draining {
            // Register interest before looking, so a task queued in between wakes us.
            let notified = st.work_ready.notified();
            let bundling = Bundling { max_renditions: (req.max_tasks as usize).clamp(1, MAX_BUNDLE), thumbnails: req.bundle_thumbnails };
            let granted = st.queue.lease_bundle(&worker, &Fit { encoders: &caps.encoders, tags: &caps.tags }, now, bundling).await?;
            let mut leased = Vec::with_capacity(granted.len());
            for l in granted {
                st.emit("task", json!({"job_id": l.job_id, "task_id": l.task_id, "state": "leased", "worker": worker}));
                let join = match (l.kind, l.rendition.as_deref()) {
                    (TaskKind::Join, Some(r)) => Some(join_inputs(&st, &l.job_id, r).await?),
                    _ => None,
                };
                let audio = match l.kind {
                    TaskKind::Transcode | TaskKind::Join if l.has_audio => {
                        Some(storage::output_dir(&l.job_id, TaskKind::Audio, storage::AUDIO_DIR))
                    }
                    _ => None,
                };
                leased.push(TaskLease {
                    version: proto::WIRE_VERSION,
                    output_dir: storage::staging_dir(&l.job_id, &l.name, l.epoch),
                    task_id: l.task_id,
                    job_id: l.job_id,
                    epoch: l.epoch,
                    attempt: l.attempt,
                    kind: l.kind,
                    rendition: l.rendition,
                    profile: l.profile,
                    source: l.source,
                    timeout_seconds: st.limits.task_timeout_seconds,
                    stall_seconds: st.limits.store_stall_seconds,
                    engine_stall_seconds: st.limits.engine_stall_seconds,
                    companions: Vec::new(),
                    chunk: l.chunk,
                    join,
                    audio,
                    storage: st.storage.access(),
                });
            }
            let mut leased = leased.into_iter();
            if let Some(mut first) = leased.next() {
                first.companions = leased.collect();
                return Ok(Json(first).into_response());
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(StatusCode::NO_CONTENT.into_response());
            }
            // Backoffs and reaped leases make tasks runnable by time alone: look again each second.
            let _ = tokio::time::timeout(Duration::from_secs(1).min(deadline - tokio::time::Instant::now()), notified).await;
        } else {
            if tokio::time::Instant::now() >= deadline {
                return Ok(StatusCode::NO_CONTENT.into_response());
            }
            tokio::time::sleep(Duration::from_secs(1).min(deadline - tokio::time::Instant::now())).await;
        }
    }
}

/// What a join of `rendition` reads: its chunks' directories in chunk order and
/// the job's probe (the join recomputes the chunk plan from it).
async fn join_inputs(st: &AppState, job: &str, rendition: &str) -> Result<JoinInputs, ApiError> {
    let chunks = st.queue.join_parts(job, rendition).await?;
    let (_, probe) = st.queue.job_plan_inputs(job).await?;
    Ok(JoinInputs { chunks: chunks.iter().map(|name| storage::output_dir(job, TaskKind::Chunk, name)).collect(), probe })
}

async fn heartbeat(
    State(st): State<AppState>,
    caller: Caller,
    Path(task): Path<String>,
    hb: Result<Json<Heartbeat>, JsonRejection>,
) -> Result<Json<HeartbeatReply>, ApiError> {
    let worker = worker_id(&caller)?;
    let hb = parsed(hb)?;
    let now = now_ms();
    st.queue.worker_seen(&worker, None, hb.load, now).await.ok();
    match st.queue.heartbeat(&task, &worker, hb.epoch, hb.progress, now).await {
        Ok(cancel) => {
            st.emit("task", json!({"task_id": task, "state": "running", "progress": hb.progress.clamp(0.0, 1.0), "worker": worker}));
            Ok(Json(HeartbeatReply { cancel }))
        }
        Err(e @ QueueError::StaleLease { .. }) => {
            // A canceled task's lease is gone too: tell the worker to stop either way.
            if st.queue.task_canceled(&task).await? { Ok(Json(HeartbeatReply { cancel: true })) } else { Err(e.into()) }
        }
        Err(e) => Err(e.into()),
    }
}

async fn complete(
    State(st): State<AppState>,
    caller: Caller,
    Path(task): Path<String>,
    c: Result<Json<Complete>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let worker = worker_id(&caller)?;
    let c = parsed(c)?;
    lifecycle::complete(&st, &worker, &task, &c).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn fail(
    State(st): State<AppState>,
    caller: Caller,
    Path(task): Path<String>,
    f: Result<Json<Fail>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let worker = worker_id(&caller)?;
    let f = parsed(f)?;
    lifecycle::fail(&st, &worker, &task, &f).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list(State(st): State<AppState>, caller: Caller) -> Result<Json<serde_json::Value>, ApiError> {
    allow(&caller, &[Role::Admin])?;
    Ok(Json(json!({"workers": st.queue.list_workers(now_ms()).await?})))
}

async fn drain(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    allow(&caller, &[Role::Admin])?;
    set_draining(&st, &id, true).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn resume(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    allow(&caller, &[Role::Admin])?;
    set_draining(&st, &id, false).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn remove_route(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    allow(&caller, &[Role::Admin])?;
    remove(&st, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Drains a worker (it finishes what it runs, takes nothing new) or resumes it.
pub async fn set_draining(st: &AppState, id: &str, draining: bool) -> Result<(), ApiError> {
    st.queue.set_draining(id, draining).await?;
    audit(&format!("worker {id} {}", if draining { "draining" } else { "resumed" }));
    st.emit("worker", json!({"worker_id": id, "state": if draining { "draining" } else { "idle" }}));
    // A job's `waiting_for` says at once whether any worker still takes tasks.
    lifecycle::check_capable_workers(st, now_ms()).await;
    Ok(())
}

/// Removes a worker: its credential is revoked and its leases lapse at once.
pub async fn remove(st: &AppState, id: &str) -> Result<(), ApiError> {
    st.queue.remove_worker(id).await?;
    audit(&format!("worker {id} removed"));
    st.emit("worker", json!({"worker_id": id, "state": "removed"}));
    lifecycle::check_capable_workers(st, now_ms()).await;
    Ok(())
}
