//! The job lifecycle: every transition that HTTP handlers, chores and the reconciler
//! make goes through here. The queue records each transition together with the work
//! it makes owed (a probe, a promotion, a finalize, a webhook) in one transaction;
//! this module then does that work at once as a fast path (`kick`), and the
//! reconciler does whatever is still owed after a crash, a lost push or a failed
//! attempt. Nothing here is remembered only in memory.
//!
//! ```text
//!  submit ──▶ queued (owes probe) ──probe──▶ queued/running (tasks) ──all promoted──▶ finalizing (owes finalize)
//!                 │                                  │                                         │
//!                 └──── bad input / attempts spent ──┴──── a task failed ─────────────────────┴──▶ failed
//!  any live state ──cancel──▶ canceled          finalizing ──verified, written──▶ succeeded
//!  failed/canceled ──retry──▶ a new run: what did not succeed runs again
//! ```
//! Every end (succeeded, failed, canceled) records exactly one webhook for its run.

use crate::error::ApiError;
use crate::queue::{Backend, Chore, HeadersClaim, Job, Promoted, Promotion, QueueError, TaskKind, TaskTarget};
use crate::state::{AppState, audit, now_ms};
use crate::storage;
use proto::chunk::ChunkReport;
use serde_json::json;

/// After a transition on `job`: push its owed chore if one is due now, push its
/// owed webhook deliveries, and tell event subscribers. Failures here only delay
/// the work: the reconciler pushes whatever is still owed. One read says what is
/// owed, so the common case (nothing) costs one statement.
pub async fn kick(st: &AppState, job: &str) {
    let now = now_ms();
    let mut summary = match st.queue.job_summary(job, now).await {
        Ok(Some(s)) => s,
        Ok(None) => return,
        Err(e) => {
            proto::log!("coordinator: job {job}: reading it after a change: {e}");
            return;
        }
    };
    if summary.chore_due {
        match st.queue.arm_chores(Some(job), &st.instance, now).await {
            Ok(armed) => {
                for owed in armed {
                    push(st, &owed).await;
                }
            }
            Err(e) => proto::log!("coordinator: job {job}: arming its chore: {e}"),
        }
        // A chore out of attempts ends the job as it is armed.
        if let Ok(Some(s)) = st.queue.job_summary(job, now).await {
            summary = s;
        }
    }
    if summary.owes_delivery || crate::queue::is_terminal(&summary.state) {
        push_deliveries(st, Some(job), false, now).await;
    }
    st.emit("job", json!({"job_id": job, "state": summary.state, "error": summary.error, "outputs": summary.outputs}));
}

async fn push(st: &AppState, owed: &crate::queue::Owed) {
    let pushed = match owed.chore {
        Chore::Probe => st.chores.probe_and_plan(&owed.job_id, owed.seq).await,
        Chore::Finalize => st.chores.finalize(&owed.job_id, owed.seq).await,
    };
    if let Err(e) = pushed {
        // Still owed: the reconciler pushes it again after the push grace.
        proto::log!("coordinator: job {}: queueing its {} chore: {e}", owed.job_id, owed.chore.as_str());
    }
}

/// Pushes webhook deliveries still owed: a job's (right after it ended), or, from
/// the reconciler, every delivery whose attempt is overdue (its chore was lost or
/// died with a coordinator), each under a new key.
async fn push_deliveries(st: &AppState, job: Option<&str>, at_start: bool, now: i64) {
    let owed = match job {
        Some(job) => st.queue.owed_deliveries(job).await,
        // A chore may take 10 s to resolve and 10 s to post; past 30 s it is lost.
        None => st.queue.rearm_deliveries(30_000, 60_000, at_start, now).await,
    };
    match owed {
        Ok(owed) => {
            for (id, attempts, pushes, due) in owed {
                if let Err(e) = st.chores.deliver_webhook(&id, attempts, pushes, Some(due)).await {
                    proto::log!("coordinator: queueing webhook {id}: {e}");
                }
            }
        }
        Err(e) => proto::log!("coordinator: listing owed webhooks: {e}"),
    }
}

/// One pass of the reconciler: heartbeats this coordinator, takes back lapsed
/// leases, pushes owed chores that are due (or were claimed by a coordinator that
/// is gone), redoes overdue promotions, fails tasks no live worker can run, and
/// pushes overdue webhook deliveries. Runs at start and every second, on every
/// coordinator at once: each step is idempotent, and the multi-row ones hold the
/// writer's lock.
pub async fn reconcile(st: &AppState, at_start: bool) {
    let now = now_ms();
    if let Err(e) = st.queue.coordinator_seen(&st.instance, now).await {
        proto::log!("coordinator: recording this coordinator's heartbeat: {e}");
    }
    // Coordinators sharing a database share its report turns (`queue::turns`).
    if st.queue.backend() == Backend::Postgres {
        match st.queue.live_coordinators(now).await {
            Ok(live) => st.queue.share_report_turns(live.len()),
            Err(e) => proto::log!("coordinator: counting live coordinators: {e}"),
        }
    }
    // The only coordinator of its database (SQLite) knows at start that nothing it
    // did not start can be in flight: every other process is gone, and so are the
    // promotions and deliveries they were making.
    let sole = at_start && st.queue.backend() == Backend::Sqlite;
    if at_start {
        // Dead coordinators' rows: all others when sole, else those silent for an hour.
        let older_than = if sole { i64::MAX } else { now - 3_600_000 };
        if let Err(e) = st.queue.forget_coordinators(&st.instance, older_than).await {
            proto::log!("coordinator: forgetting earlier coordinators: {e}");
        }
    }
    match st.queue.reap(now).await {
        Ok(jobs) if !jobs.is_empty() => {
            st.wake_workers();
            for job in jobs {
                kick(st, &job).await;
            }
        }
        Ok(_) => {}
        Err(e) => proto::log!("coordinator: lease reaper: {e}"),
    }
    match st.queue.rearm_lost_chores(&st.instance, |job| st.chores_running.contains(job), now).await {
        Ok(lost) => {
            for job in lost {
                proto::log!("coordinator: job {job}: its chore stopped before it recorded an outcome; due again");
            }
        }
        Err(e) => proto::log!("coordinator: reconciler: looking for lost chores: {e}"),
    }
    match st.queue.arm_chores(None, &st.instance, now).await {
        Ok(armed) => {
            for owed in &armed {
                push(st, owed).await;
            }
        }
        Err(e) => proto::log!("coordinator: reconciler: arming chores: {e}"),
    }
    crate::tus::finish_owed(st, now).await;
    match st.queue.overdue_promotions(now, sole).await {
        Ok(owed) => {
            for p in owed {
                promote(st, &p).await;
            }
        }
        Err(e) => proto::log!("coordinator: reconciler: listing promotions: {e}"),
    }
    // Every queued task with an encoder to match: every tenth second is often enough.
    if at_start || (now / 1000) % 10 == 0 {
        check_capable_workers(st, now).await;
    }
    push_deliveries(st, None, sole, now).await;
    // The farm clock follows the shared database's (PostgreSQL), checked twice a minute.
    if (now / 1000) % 30 == 0
        && let Err(e) = st.queue.sync_clock().await
    {
        proto::log!("coordinator: reading the database's clock: {e}");
    }
    remove_unclaimed_dirs(st, now).await;
    match st.queue.unswept_jobs(now).await {
        Ok(jobs) => {
            for job in jobs {
                sweep(st, &job).await;
            }
        }
        Err(e) => proto::log!("coordinator: reconciler: listing jobs to sweep: {e}"),
    }
}

/// What the farm's live workers can take, checked against the queue: marks the
/// tasks none can run (and fails those that waited too long), and says whether any
/// worker takes tasks at all, which the jobs' `waiting_for` reads. The reconciler
/// runs it every tenth second; a worker's joining, and an admin's drain, resume or
/// removal of one, run it at once.
pub async fn check_capable_workers(st: &AppState, now: i64) {
    match st.queue.check_capable_workers(st.queue.cfg.capable_worker_wait_ms, now).await {
        Ok(jobs) => {
            for job in jobs {
                kick(st, &job).await;
            }
        }
        Err(e) => proto::log!("coordinator: checking capable workers: {e}"),
    }
}

/// Removes the job directories written ahead of jobs that never came to be (see
/// [`remove_unclaimed_dir`]), and forgets those whose job exists after all.
async fn remove_unclaimed_dirs(st: &AppState, now: i64) {
    match st.queue.unclaimed_dirs_due(&st.instance, now).await {
        Ok(due) => {
            for (job, exists) in due {
                if exists {
                    if let Err(e) = st.queue.forget_unclaimed_dir(&job).await {
                        proto::log!("coordinator: job {job}: {e}");
                    }
                } else {
                    remove_unclaimed_dir(st, &job).await;
                }
            }
        }
        Err(e) => proto::log!("coordinator: reconciler: listing unclaimed job directories: {e}"),
    }
}

/// Removes job `id`'s directory, written ahead of a job that will not exist; when
/// the store refuses, the reconciler tries again ([`remove_unclaimed_dirs`]).
pub async fn remove_unclaimed_dir(st: &AppState, id: &str) {
    let outcome = match st.storage.remove_job_dir(id).await {
        Ok(()) => st.queue.forget_unclaimed_dir(id).await,
        Err(e) => st.queue.unclaimed_dir_failed(id, &st.instance, &e.to_string(), now_ms()).await,
    };
    if let Err(e) = outcome {
        proto::log!("coordinator: job {id}: recording its directory's removal: {e}");
    }
}

/// Removes what an ended job left in staging (attempts that were never promoted,
/// uploads of lapsed leases) and a partial copy of its URL source.
async fn sweep(st: &AppState, job: &str) {
    let _ = tokio::fs::remove_file(st.storage.spool_dir().join(format!("ingest-{job}.part"))).await;
    match st.storage.remove_staging(job).await {
        Ok(()) => {
            if let Err(e) = st.queue.swept(job).await {
                proto::log!("coordinator: job {job}: recording its sweep: {e}");
            }
        }
        Err(e) => proto::log!("coordinator: job {job}: sweeping its staging area: {e} (will retry)"),
    }
}

/// A worker's completion of task `task` with epoch `epoch`: its staged files must
/// all be there at their sizes; then the queue fences it (only the current lease's
/// completion is accepted) and records the promotion it owes; then the outputs move
/// into place, and only then does the task succeed.
pub async fn complete(st: &AppState, worker: &str, task: &str, c: &proto::wire::Complete) -> Result<(), ApiError> {
    let target = st.queue.task_target(task).await?;
    let job = target.job_id.clone();
    let out_dir = storage::staging_dir(&job, &target.name, c.epoch);
    if let Some(f) = c.files.iter().find(|f| f.path.is_empty() || f.path.contains("..") || f.path.contains('/') || f.path.starts_with('.'))
    {
        return Err(ApiError::BadRequest(format!("bad file path {}", f.path)));
    }
    let names: Vec<&str> = c.files.iter().map(|f| f.path.as_str()).collect();
    let stored = st.storage.sizes(&out_dir, &names).await?;
    for (f, stored) in c.files.iter().zip(stored) {
        let len = stored.ok_or_else(|| ApiError::BadRequest(format!("{} was not published", f.path)))?;
        if len != f.size {
            return Err(ApiError::BadRequest(format!("{} is {len} bytes, not {}", f.path, f.size)));
        }
    }
    if target.kind == TaskKind::Chunk
        && let Err(why) = check_chunk(st, &target, &c.report, (task, worker, c.epoch)).await
    {
        // A bad chunk never reaches a join: this attempt failed, and the chunk runs again alone.
        let why = format!("chunk rejected: {why}");
        st.queue.fail(task, worker, c.epoch, &why, true, "", now_ms()).await?;
        st.emit("task", json!({"job_id": job, "task_id": task, "state": "failed", "error": why}));
        st.wake_workers();
        kick(st, &job).await;
        return Err(ApiError::Unprocessable(why));
    }
    let result =
        json!({"report": c.report, "files": c.files, "timing": c.timing, "dir": storage::output_dir(&job, target.kind, &target.name)});
    let owed = st.queue.complete(task, worker, c.epoch, &result, now_ms()).await?;
    crate::fault::point(crate::fault::AFTER_COMPLETE);
    st.emit("task", json!({"job_id": job, "task_id": task, "state": "promoting", "progress": 1.0}));
    promote(st, &owed).await;
    Ok(())
}

/// Does a promotion a task owes, idempotently: moves the epoch's staging directory
/// into place if it is still there, then checks every file at its final path. All
/// there: the task succeeds. Some missing: the attempt failed and the task runs
/// again. The store failing: it stays owed, and the reconciler tries again.
pub async fn promote(st: &AppState, p: &Promotion) {
    let final_dir = storage::output_dir(&p.job_id, p.kind, &p.name);
    let first = p.files.first().and_then(|f| f["path"].as_str()).unwrap_or("rendition.json");
    let outcome: Result<Option<String>, storage::StoreError> = async {
        let names: Vec<&str> = p.files.iter().map(|f| f["path"].as_str().unwrap_or_default()).collect();
        let sizes = st.storage.promote(&p.job_id, p.kind, &p.name, p.epoch, first, &names).await?;
        match p.files.iter().zip(&names).zip(sizes).find(|((f, _), size)| *size != f["size"].as_u64()) {
            Some(((_, path), _)) => Ok(Some(format!("{final_dir}/{path} is missing after promotion"))),
            None => Ok(None),
        }
    }
    .await;
    let now = now_ms();
    let recorded = match outcome {
        Ok(None) => st.queue.promoted(&p.task_id, now).await.inspect(|promoted| {
            if promoted.succeeded() {
                st.emit("task", json!({"job_id": p.job_id, "task_id": p.task_id, "state": "succeeded", "progress": 1.0}));
                // Tasks that waited for this one (renditions for the audio, joins for
                // their chunks) may run now.
                st.wake_workers();
            }
        }),
        Ok(Some(lost)) => {
            st.wake_workers();
            st.queue.promotion_failed(&p.task_id, &format!("storage: {lost}"), now).await.map(|()| Promoted::No)
        }
        Err(e) => {
            proto::log!("coordinator: task {}: promoting its outputs: {e} (will retry)", p.task_id);
            return;
        }
    };
    match recorded {
        Err(e) => proto::log!("coordinator: task {}: recording its promotion: {e}", p.task_id),
        // A success that left its job as it was owes the job nothing: no read of it.
        Ok(Promoted::Succeeded { job_changed: false }) => {}
        Ok(_) => kick(st, &p.job_id).await,
    }
}

/// Checks a chunk's report against the job's chunk plan (recomputed from its probe
/// and profile, as the join does): its frames, its first IDR, every IDR on the 2 s
/// grid, rising decode times, and the codec parameters the rendition's first
/// checked chunk claimed (the accepted ones have them). Those parameters differ
/// only between encoder builds, and a rendition's chunks go to the claimant's build
/// while a worker has it; once none has, the accepted chunks are made again by the
/// new build ([`crate::queue::Queue::claim_chunk_headers`]; `lease` the task's
/// lease: id, worker, epoch).
async fn check_chunk(st: &AppState, target: &TaskTarget, report: &serde_json::Value, lease: (&str, &str, i64)) -> Result<(), String> {
    let report: ChunkReport = serde_json::from_value(report.clone()).map_err(|e| format!("unreadable chunk.json: {e}"))?;
    let (Some(span), Some(rendition)) = (target.chunk, target.rendition.as_deref()) else {
        return Err("the task names no chunk".into());
    };
    if report.rendition != rendition {
        return Err(format!("reported for rendition {}, not {rendition}", report.rendition));
    }
    let (profile, probe) = st.queue.job_plan_inputs(&target.job_id).await.map_err(|e| e.to_string())?;
    let profile = proto::profile::Profile::load(&profile).map_err(|e| e.to_string())?;
    let probe: proto::probe::Probe = serde_json::from_value(probe).map_err(|e| format!("the job's probe: {e}"))?;
    let plan = proto::plan::plan(&probe, &profile).map_err(|e| e.to_string())?;
    let cut = proto::plan::chunks(&plan, &probe, &profile.chunking).ok_or("the job is no longer cut in chunks")?;
    let planned = cut.chunks.get(span.index as usize).ok_or_else(|| format!("the plan has no chunk {}", span.index))?;
    let video = plan.renditions.iter().find(|r| r.name == rendition).and_then(|r| r.video.as_ref()).ok_or("the rendition has no video")?;
    let rate = video.frame_rate.split_once('/').and_then(|(n, d)| Some((n.parse().ok()?, d.parse().ok()?))).ok_or("a bad frame rate")?;
    let last = span.index as usize + 1 == cut.chunks.len();
    proto::chunk::check(&report, planned, last, rate, video.gop_seconds)?;
    let claim = st.queue.claim_chunk_headers(lease, &report.extradata_sha256, now_ms()).await.map_err(|e| e.to_string())?;
    match claim {
        HeadersClaim::Match => Ok(()),
        HeadersClaim::Differ => Err(format!("chunk {}: its codec parameters differ from those its rendition's chunks have", span.index)),
        HeadersClaim::Redone(0) => Ok(()),
        HeadersClaim::Redone(redone) => {
            let worker = lease.1;
            audit(&format!(
                "job {}: {rendition}: {redone} chunks made by an encoder build no live worker has are made again by worker {worker}'s build",
                target.job_id
            ));
            st.wake_workers();
            Ok(())
        }
    }
}

/// A worker's report that a task's attempt failed.
pub async fn fail(st: &AppState, worker: &str, task: &str, f: &proto::wire::Fail) -> Result<(), ApiError> {
    let error: String = f.error.chars().take(2000).collect();
    let tail: String = f.log_tail.chars().rev().take(8000).collect::<Vec<_>>().into_iter().rev().collect();
    st.queue.fail(task, worker, f.epoch, &error, f.retryable, &tail, now_ms()).await?;
    let job = st.queue.task_job(task).await?;
    st.emit("task", json!({"job_id": job, "task_id": task, "state": "failed", "error": error}));
    st.wake_workers();
    kick(st, &job).await;
    Ok(())
}

/// Cancels a job and tells everyone (the API and the dashboard share this).
pub async fn cancel(st: &AppState, id: &str) -> Result<Job, ApiError> {
    let (job, canceled) = st.queue.cancel_job(id, now_ms()).await?;
    if !canceled {
        return Ok(job);
    }
    audit(&format!("job {id} canceled"));
    kick(st, id).await;
    Ok(st.queue.job(id).await?.ok_or_else(|| QueueError::NotFound(format!("job {id}")))?)
}

/// Starts a failed or canceled job's next run.
pub async fn retry(st: &AppState, id: &str) -> Result<Job, ApiError> {
    st.queue.retry_job(id, now_ms()).await?;
    audit(&format!("job {id} retried"));
    st.wake_workers();
    kick(st, id).await;
    Ok(st.queue.job(id).await?.ok_or_else(|| QueueError::NotFound(format!("job {id}")))?)
}
