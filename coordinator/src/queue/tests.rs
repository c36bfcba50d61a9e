//! Lease expiry, stale completions, retry limits and backoff, with a clock the
//! tests move by hand.

use super::*;
use crate::auth::{Role, digest, generate};
use crate::queue::owed::CHORE_PUSH_GRACE_MS;
use crate::registry::Slots;
use crate::sessions::{LOGIN_LINK_TTL_MS, SESSION_TTL_MS};

const T0: i64 = 1_000_000;

impl Queue {
    /// `lease_bundle` for a worker with these encoders and no tags.
    async fn lease_bundle_for(&self, worker: &str, encoders: &[String], now: i64, bundling: Bundling) -> Result<Vec<Lease>> {
        self.lease_bundle(worker, &Fit { encoders, tags: &[] }, now, bundling).await
    }
}

fn config() -> QueueConfig {
    QueueConfig {
        lease_ttl_ms: 10_000,
        backoff_base_ms: 1_000,
        backoff_max_ms: 8_000,
        max_attempts: 3,
        capable_worker_wait_ms: 60_000,
        space_wait_ms: 600_000,
        statement_timeout_ms: 30_000,
    }
}

/// A new, empty queue on `backend`, or `None` (said why) without PostgreSQL.
async fn fresh_or_skip(backend: Backend) -> Option<Queue> {
    match backend {
        Backend::Sqlite => Some(Queue::in_memory(config()).await.unwrap()),
        Backend::Postgres => {
            let url = crate::pgtest::database().await?;
            Some(Queue::connect(&DatabaseUrl::Postgres(url), config()).await.unwrap())
        }
    }
}

/// A new, empty queue on `backend`, in a test that already has one there.
async fn fresh(backend: Backend) -> Queue {
    fresh_or_skip(backend).await.expect("PostgreSQL was there for this test's first queue")
}

#[test]
fn database_urls_name_a_backend_and_never_print_a_password() {
    assert_eq!(DatabaseUrl::parse("drake-data/drake.db").unwrap(), DatabaseUrl::Sqlite("drake-data/drake.db".into()));
    assert_eq!(DatabaseUrl::parse("sqlite:///var/lib/drake/drake.db").unwrap(), DatabaseUrl::Sqlite("/var/lib/drake/drake.db".into()));
    let pg = DatabaseUrl::parse("postgres://drake:s3cret@db.internal:5432/farm").unwrap();
    assert_eq!(pg.backend(), Backend::Postgres);
    assert_eq!(pg.redacted(), "postgres://drake:***@db.internal:5432/farm");
    assert!(DatabaseUrl::parse("mysql://x/y").is_err());
    assert!(DatabaseUrl::parse("").is_err());
}

/// Runs each conformance test on both backends: `sqlite::NAME` always, and
/// `postgres::NAME` on a throwaway cluster (skipped with a message on a machine
/// without PostgreSQL, except under `CI=true`).
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::fresh(super::Backend::Sqlite).await).await
            })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $name() {
                if let Some(q) = super::fresh_or_skip(super::Backend::Postgres).await {
                    super::$name(q).await
                }
            })*
        }
    };
}

conformance!(
    tasks_go_only_to_workers_with_every_required_tag,
    a_task_whose_tags_no_worker_has_fails_after_the_wait_with_that_reason,
    overview_and_metrics_count_what_happened,
    the_published_bytes_backfill_gives_what_complete_writes,
    workers_register_drain_and_leave,
    tokens_are_stored_hashed_and_checked,
    login_links_work_once_and_sessions_expire,
    tasks_lease_lowest_rung_first_and_complete,
    expired_leases_are_requeued_and_stale_completions_rejected,
    retries_back_off_exponentially,
    a_retry_goes_to_another_live_worker_first,
    a_renditions_chunks_stay_with_one_encoder_build_while_it_is_live,
    a_chunk_claim_that_never_got_in_gives_way,
    the_chunk_headers_backfill_claims_renditions_with_accepted_chunks,
    chunks_checked_at_once_claim_their_rendition_once,
    metrics_add_up_each_settled_row_once_and_never_go_down,
    the_retry_limit_fails_the_job_with_the_last_error,
    bad_input_fails_the_job_at_once,
    cancel_reaches_running_tasks_through_heartbeats,
    idempotency_keys_return_the_same_job,
    a_page_of_jobs_is_each_jobs_own_view_newest_first,
    tasks_go_only_to_workers_with_the_encoder,
    bundles_split_a_jobs_renditions_over_the_free_workers,
    a_short_clip_is_not_queued_behind_a_long_film,
    a_probe_that_keeps_failing_backs_off_then_fails_the_job_with_its_reason,
    a_probe_waits_for_a_full_disk_without_spending_attempts_up_to_the_limit,
    a_chore_whose_coordinator_died_is_pushed_again_and_counts_as_an_attempt,
    a_chore_whose_run_was_lost_here_is_due_again_at_once,
    cancel_during_a_probe_stops_the_job_and_cancel_plus_retry_plans_it_once,
    a_failed_job_stays_failed_and_reports_its_end_once,
    a_task_leased_before_its_job_ended_is_never_handed_out_after,
    retrying_a_job_resumes_it,
    finalize_runs_once_and_a_missing_output_reruns_its_task,
    an_unfinished_promotion_is_redone_not_papered_over,
    a_task_no_live_worker_can_run_waits_then_fails_with_that_reason,
    concurrent_submits_with_one_key_make_one_job,
    a_farm_with_no_live_worker_says_so_and_fails_its_tasks_after_the_wait,
    a_job_says_when_it_waits_for_its_own_tasks_or_for_a_worker_that_takes_tasks,
    a_chunked_job_joins_each_rung_once_its_chunks_and_audio_are_done,
    chunk_bundles_stay_within_the_largest_rung_and_shrink_at_the_job_end,
    uploads_append_at_their_offset_within_limits_and_one_coordinator_joins_them,
    a_job_directory_written_ahead_of_its_job_is_owed_until_the_job_exists,
    a_lease_is_a_kept_hold_until_it_ends_here_or_for_a_second,
    leases_never_wait_behind_reports,
);

/// Reports take turns at the database and leases do not: with every turn taken
/// (as by a crowd of heartbeats and completions), a lease is still granted at
/// once, while a heartbeat waits until a report ends. Coordinators sharing a
/// database share its turns.
async fn leases_never_wait_behind_reports(q: Queue) {
    let farm = q.reports.free();
    assert_eq!(farm, if q.backend == Backend::Sqlite { 1 } else { 4 });
    job_with(&q, &["240p", "720p"]).await;
    let a = q.lease("w1", &[], T0).await.unwrap().unwrap();
    let turns: Vec<_> = (0..farm).map(|_| q.reports.take()).collect::<futures_util::future::JoinAll<_>>().await;
    let soon = std::time::Duration::from_secs(5);
    let b = tokio::time::timeout(soon, q.lease("w2", &[], T0)).await.expect("a lease waited for a report's turn").unwrap();
    assert_eq!(b.unwrap().rendition.as_deref(), Some("720p"));
    let mut heartbeat = std::pin::pin!(q.heartbeat(&a.task_id, "w1", a.epoch, 0.5, T0 + 1));
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(200), heartbeat.as_mut()).await.is_err(),
        "a heartbeat ran with every turn taken"
    );
    // Two coordinators: this one keeps half the turns, setting aside those in use
    // once they are free.
    q.share_report_turns(2);
    assert_eq!(q.reports.free(), 0);
    drop(turns);
    assert!(!tokio::time::timeout(soon, heartbeat).await.expect("the heartbeat got a turn").unwrap());
    q.share_report_turns(2);
    assert_eq!(q.reports.free(), (farm / 2).max(1));
    q.share_report_turns(9);
    assert_eq!(q.reports.free(), 1, "at least one turn each");
    q.share_report_turns(1);
    assert_eq!(q.reports.free(), farm, "alone again: all of them");
}

/// A multipart upload's directory, written before its job exists: owed a removal
/// when it is due or its coordinator is gone, retried with a backoff, and
/// forgotten (never removed) once the job exists.
async fn a_job_directory_written_ahead_of_its_job_is_owed_until_the_job_exists(q: Queue) {
    use owed::UNCLAIMED_DIR_GRACE_MS;
    q.coordinator_seen("a", T0).await.unwrap();
    q.coordinator_seen("b", T0).await.unwrap();
    q.owe_unclaimed_dir("lost", "a", T0).await.unwrap();
    q.owe_unclaimed_dir("kept", "a", T0).await.unwrap();
    q.owe_unclaimed_dir("stored", "a", T0).await.unwrap();
    // Its job is created: the row goes at once.
    let (job, _) = q.create_job_with_id("stored", &web_job(), T0).await.unwrap();
    assert_eq!(job.id, "stored");
    q.forget_unclaimed_dir("stored").await.unwrap();
    // While "a" heartbeats, "b" leaves its uploads alone until they are due.
    assert!(q.unclaimed_dirs_due("b", T0 + 1_000).await.unwrap().is_empty(), "in progress");
    // "a" dies: its directories are owed at once, to anyone else.
    let gone = T0 + COORDINATOR_TTL_MS + 1;
    q.coordinator_seen("b", gone).await.unwrap();
    let mut due = q.unclaimed_dirs_due("b", gone).await.unwrap();
    due.sort();
    assert_eq!(due, [("kept".to_string(), false), ("lost".to_string(), false)]);
    // A removal that fails is "b"'s to retry, after a growing backoff.
    q.unclaimed_dir_failed("lost", "b", "HTTP 503", gone).await.unwrap();
    q.forget_unclaimed_dir("kept").await.unwrap();
    assert!(q.unclaimed_dirs_due("b", gone + 999).await.unwrap().is_empty(), "backing off");
    assert_eq!(q.unclaimed_dirs_due("b", gone + 1_000).await.unwrap(), [("lost".to_string(), false)]);
    q.unclaimed_dir_failed("lost", "b", "HTTP 503", gone + 1_000).await.unwrap();
    assert!(q.unclaimed_dirs_due("b", gone + 2_999).await.unwrap().is_empty(), "twice as long");
    q.forget_unclaimed_dir("lost").await.unwrap();
    // A live coordinator's upload is due after the grace; a job created meanwhile
    // (an answer lost after its commit) keeps its directory.
    q.owe_unclaimed_dir("late", "b", gone).await.unwrap();
    q.create_job_with_id("late", &web_job(), gone).await.unwrap();
    q.coordinator_seen("b", gone + UNCLAIMED_DIR_GRACE_MS).await.unwrap();
    assert!(q.unclaimed_dirs_due("b", gone + UNCLAIMED_DIR_GRACE_MS - 1).await.unwrap().is_empty());
    assert_eq!(q.unclaimed_dirs_due("b", gone + UNCLAIMED_DIR_GRACE_MS).await.unwrap(), [("late".to_string(), true)]);
}

/// A job of the `web` profile on an uploaded source, as tests submit it.
fn web_job() -> NewJob {
    NewJob {
        pipeline: None,
        profile: "web".into(),
        source: "/dav/src".into(),
        callback_url: None,
        priority: 0,
        idempotency_key: None,
        requires_tags: vec![],
        captions: vec![],
    }
}

async fn job_with(q: &Queue, renditions: &[&str]) -> Job {
    let new = web_job();
    let (job, _) = q.create_job(&new, T0).await.unwrap();
    let tasks: Vec<NewTask> = renditions.iter().map(|r| NewTask::transcode(r, None)).collect();
    q.add_tasks(&job.id, &tasks, T0).await.unwrap();
    job
}

/// Completes a lease and promotes its outputs, as the coordinator does.
async fn done(q: &Queue, l: &Lease, worker: &str, now: i64) -> Promoted {
    q.complete(&l.task_id, worker, l.epoch, &serde_json::json!({}), now).await.unwrap();
    let promoted = q.promoted(&l.task_id, now).await.unwrap();
    assert!(promoted.succeeded());
    promoted
}

/// The target a lease kept for its completion is the one the database holds.
async fn assert_kept_target_is_read_target(q: &Queue, l: &Lease) {
    let kept = q.task_target(&l.task_id).await.unwrap();
    let read = q.task_target(&l.task_id).await.unwrap();
    assert_eq!(kept, read);
    assert_eq!((kept.job_id.as_str(), kept.kind, kept.name.as_str(), kept.chunk), (l.job_id.as_str(), l.kind, l.name.as_str(), l.chunk));
}

/// Arms a job's owed chore and claims it, as a pushed chore does.
async fn claim(q: &Queue, job: &str, chore: Chore, now: i64) -> Option<ChoreClaim> {
    let armed = q.arm_chores(Some(job), "me", now).await.unwrap();
    let owed = armed.into_iter().find(|o| o.chore == chore)?;
    q.claim_chore(job, chore, owed.seq, "me", now).await.unwrap()
}

/// The store's write check: a lease this coordinator grants holds from its commit
/// (kept, so the worker's first write asks the database nothing); its end here
/// stops writes at once; an end the cache cannot see (another coordinator's,
/// written here straight to the database) stops them within the kept second.
async fn a_lease_is_a_kept_hold_until_it_ends_here_or_for_a_second(q: Queue) {
    let job = job_with(&q, &["240p", "720p"]).await;
    let a = q.lease("w1", &[], T0).await.unwrap().unwrap();
    let named = Some((a.name.as_str(), a.epoch));
    assert!(q.worker_holds("w1", &job.id, named).await.unwrap());
    assert!(q.worker_holds("w1", &job.id, None).await.unwrap());
    assert!(!q.worker_holds("w1", &job.id, Some((a.name.as_str(), a.epoch + 1))).await.unwrap(), "another epoch");
    assert!(!q.worker_holds("w2", &job.id, None).await.unwrap(), "another worker");
    done(&q, &a, "w1", T0 + 1).await;
    assert!(!q.worker_holds("w1", &job.id, named).await.unwrap(), "its completion here ends it at once");

    let b = q.lease("w1", &[], T0 + 2).await.unwrap().unwrap();
    let named = Some((b.name.as_str(), b.epoch));
    sqlx::query("UPDATE tasks SET state = 'queued', worker_id = NULL WHERE id = $1").bind(&b.task_id).execute(q.pool()).await.unwrap();
    assert!(q.worker_holds("w1", &job.id, named).await.unwrap(), "kept for up to a second");
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    assert!(!q.worker_holds("w1", &job.id, named).await.unwrap(), "not past it");
}

async fn tasks_lease_lowest_rung_first_and_complete(q: Queue) {
    let job = job_with(&q, &["240p", "720p"]).await;
    let a = q.lease("w1", &[], T0).await.unwrap().unwrap();
    assert_eq!((a.rendition.as_deref(), a.epoch, a.attempt), (Some("240p"), 1, 1));
    assert_kept_target_is_read_target(&q, &a).await;
    let b = q.lease("w2", &[], T0).await.unwrap().unwrap();
    assert_eq!(b.rendition.as_deref(), Some("720p"));
    assert!(q.lease("w3", &[], T0).await.unwrap().is_none(), "nothing else to lease");
    assert!(!q.heartbeat(&a.task_id, "w1", a.epoch, 0.5, T0 + 1).await.unwrap());
    assert_eq!(done(&q, &a, "w1", T0 + 2).await, Promoted::Succeeded { job_changed: false }, "the job was running and still is");
    assert_eq!(q.job(&job.id).await.unwrap().unwrap().state, "running");
    q.complete(&b.task_id, "w2", b.epoch, &serde_json::json!({}), T0 + 3).await.unwrap();
    let j = q.job(&job.id).await.unwrap().unwrap();
    assert_eq!((j.state.as_str(), j.tasks[1].state.as_str()), ("running", "promoting"), "no success before its files are in place");
    assert_eq!(q.promoted(&b.task_id, T0 + 3).await.unwrap(), Promoted::Succeeded { job_changed: true }, "the job's last task");
    assert_eq!(q.promoted(&b.task_id, T0 + 3).await.unwrap(), Promoted::No, "promoted already");
    let j = q.job(&job.id).await.unwrap().unwrap();
    assert_eq!((j.state.as_str(), j.playable), ("finalizing", true));
    let claim = claim(&q, &job.id, Chore::Finalize, T0 + 4).await.unwrap();
    assert!(q.finish_job(&job.id, claim, &serde_json::json!({"master_playlist": "m"}), T0 + 4).await.unwrap());
    assert_eq!(q.job(&job.id).await.unwrap().unwrap().state, "succeeded");
}

async fn expired_leases_are_requeued_and_stale_completions_rejected(q: Queue) {
    let job = job_with(&q, &["240p"]).await;
    let first = q.lease("w1", &[], T0).await.unwrap().unwrap();
    // Heartbeats keep it alive past the original expiry.
    q.heartbeat(&first.task_id, "w1", first.epoch, 0.2, T0 + 8_000).await.unwrap();
    assert!(q.reap(T0 + 12_000).await.unwrap().is_empty());
    // Then w1 goes silent (a partition): the lease lapses and is reaped.
    assert_eq!(q.reap(T0 + 18_001).await.unwrap(), std::slice::from_ref(&job.id));
    assert!(q.lease("w2", &[], T0 + 18_001).await.unwrap().is_none(), "backoff holds it back");
    let second = q.lease("w2", &[], T0 + 19_001).await.unwrap().unwrap();
    assert_eq!((second.epoch, second.attempt), (2, 2));
    // w1 comes back and tries to finish: rejected, and nothing changes.
    let late = q.complete(&first.task_id, "w1", first.epoch, &serde_json::json!({}), T0 + 19_500).await;
    assert!(matches!(late, Err(QueueError::StaleLease { .. })), "{late:?}");
    assert!(matches!(q.heartbeat(&first.task_id, "w1", first.epoch, 0.9, T0 + 19_500).await, Err(QueueError::StaleLease { .. })));
    assert!(matches!(q.fail(&first.task_id, "w1", first.epoch, "x", true, "", T0 + 19_500).await, Err(QueueError::StaleLease { .. })));
    let t = &q.job(&job.id).await.unwrap().unwrap().tasks[0];
    assert_eq!((t.state.as_str(), t.worker.as_deref()), ("leased", Some("w2")));
    done(&q, &second, "w2", T0 + 20_000).await;
    assert_eq!(q.job(&job.id).await.unwrap().unwrap().state, "finalizing");
}

async fn retries_back_off_exponentially(q: Queue) {
    job_with(&q, &["240p"]).await;
    let mut now = T0;
    for (attempt, wait) in [(1, 1_000), (2, 2_000)] {
        let l = q.lease("w", &[], now).await.unwrap().unwrap();
        assert_eq!(l.attempt, attempt);
        q.fail(&l.task_id, "w", l.epoch, "storage returned 503", true, "", now).await.unwrap();
        assert!(q.lease("w", &[], now + wait - 1).await.unwrap().is_none(), "attempt {attempt}: still backing off");
        now += wait;
    }
    assert_eq!(q.lease("w", &[], now).await.unwrap().unwrap().attempt, 3);
    assert_eq!(q.cfg.backoff(10), 8_000, "capped");
}

/// A retry goes elsewhere first: a worker an attempt failed on (or whose lease
/// lapsed) takes the task again only when every live worker has failed it, or once
/// it has been due for `RETRY_ELSEWHERE_MS`.
async fn a_retry_goes_to_another_live_worker_first(q: Queue) {
    let backend = q.backend();

    // w2 is live: the retry waits for it, and w2 takes it.
    let (q, due) = failed_on_w1(q, false).await;
    assert!(q.lease("w1", &[], due).await.unwrap().is_none(), "w2 is live: not back to w1");
    assert_eq!(q.lease("w2", &[], due).await.unwrap().unwrap().attempt, 2);

    // A lapsed lease counts as a failed attempt.
    let (q, due) = failed_on_w1(fresh(backend).await, true).await;
    set(&q, "UPDATE workers SET last_seen = $1 WHERE id = 'w2'", due).await;
    assert!(q.lease("w1", &[], due).await.unwrap().is_none(), "the lapsed lease's worker waits too");
    assert_eq!(q.lease("w2", &[], due).await.unwrap().unwrap().attempt, 2);

    // w2 is gone (not seen for a lease's TTL), paused, or draining: w1 takes it.
    for (what, change) in [
        ("gone", "UPDATE workers SET last_seen = $1 WHERE id = 'w2'"),
        ("paused", "UPDATE workers SET paused = 'scratch disk full' WHERE id = 'w2' AND $1 = $1"),
        ("draining", "UPDATE workers SET draining = 1 WHERE id = 'w2' AND $1 = $1"),
    ] {
        let (q, due) = failed_on_w1(fresh(backend).await, false).await;
        set(&q, change, 0).await;
        assert_eq!(q.lease("w1", &[], due).await.unwrap().map(|l| l.attempt), Some(2), "w2 {what}");
    }

    // Every worker it failed on waits while one that has not is live: failed on
    // w1, then on w2, the third attempt goes to w3.
    let (q, due) = failed_on_w1(fresh(backend).await, false).await;
    let caps = proto::wire::Capabilities { encoders: vec![], cores: 2, tags: vec![], encoder_build: None };
    q.register_worker("w3", "w3", 1, &caps, "0", T0).await.unwrap();
    let second = q.lease("w2", &[], due).await.unwrap().unwrap();
    q.fail(&second.task_id, "w2", second.epoch, "the engine crashed", true, "", due).await.unwrap();
    let due = due + q.cfg.backoff(2);
    assert!(q.lease("w1", &[], due).await.unwrap().is_none(), "w3 is live: not back to w1");
    assert!(q.lease("w2", &[], due).await.unwrap().is_none(), "nor to w2");
    assert_eq!(q.lease("w3", &[], due).await.unwrap().unwrap().attempt, 3);
    // With w3 gone, w1 and w2 are all there is: either takes it.
    let (q, due) = failed_on_w1(fresh(backend).await, false).await;
    let second = q.lease("w2", &[], due).await.unwrap().unwrap();
    q.fail(&second.task_id, "w2", second.epoch, "the engine crashed", true, "", due).await.unwrap();
    let due = due + q.cfg.backoff(2);
    assert_eq!(q.lease("w1", &[], due).await.unwrap().unwrap().attempt, 3);

    // w2 stays live but takes nothing (busy with a long film, or without the
    // encoder): w1 takes the retry once it has been due for RETRY_ELSEWHERE_MS.
    let (q, due) = failed_on_w1(fresh(backend).await, false).await;
    let later = due + RETRY_ELSEWHERE_MS;
    set(&q, "UPDATE workers SET last_seen = $1 WHERE id = 'w2'", later).await;
    assert!(q.lease("w1", &[], later - 1).await.unwrap().is_none());
    assert_eq!(q.lease("w1", &[], later).await.unwrap().unwrap().attempt, 2);
}

/// A rendition's chunks go to workers of the encoder build that made its first
/// accepted chunk while one is live; once none is, to any. A chunk of another
/// build then has the accepted ones made again, by its own build.
async fn a_renditions_chunks_stay_with_one_encoder_build_while_it_is_live(q: Queue) {
    let caps = |b: &str| proto::wire::Capabilities { encoders: vec![], cores: 2, tags: vec![], encoder_build: Some(b.into()) };
    q.register_worker("old", "old", 2, &caps("x264 core 163"), "0", T0).await.unwrap();
    q.register_worker("new", "new", 2, &caps("x264 core 164"), "0", T0).await.unwrap();
    let (job, _) = q.create_job(&web_job(), T0).await.unwrap();
    let span = |i: u32| ChunkSpan { index: i, first_frame: u64::from(i) * 100, frames: (i < 4).then_some(100) };
    let chunks: Vec<NewTask> = (0..5).map(|i| NewTask::chunk("240p", span(i), None)).collect();
    q.add_tasks(&job.id, &chunks, T0).await.unwrap();
    let view = |j: &Job, i: usize| (j.tasks[i].state.clone(), j.tasks[i].attempts);
    let claim = |l: &Lease, worker: &'static str, headers: &'static str, now: i64| {
        let (q, task, epoch) = (q.clone(), l.task_id.clone(), l.epoch);
        async move { q.claim_chunk_headers((&task, worker, epoch), headers, now).await.unwrap() }
    };

    // Nothing claimed yet: either build takes chunks.
    let c0 = q.lease("old", &[], T0).await.unwrap().unwrap();
    let c1 = q.lease("new", &[], T0).await.unwrap().unwrap();
    // Both are checked before either is accepted: the first claims the rendition,
    // and the other's headers differ from its claim while old is live (comparing
    // only accepted chunks, both passed, and the join failed the job).
    assert_eq!(claim(&c0, "old", "h163", T0 + 1).await, HeadersClaim::Match);
    assert_eq!(claim(&c1, "new", "h164", T0 + 1).await, HeadersClaim::Differ);
    done(&q, &c0, "old", T0 + 1).await;
    // Pinned to old's build: new takes none of them while old is live.
    assert!(q.lease("new", &[], T0 + 2).await.unwrap().is_none(), "old is live: its build makes the rest");
    let c2 = q.lease("old", &[], T0 + 2).await.unwrap().unwrap();
    assert_eq!(claim(&c2, "old", "h163", T0 + 2).await, HeadersClaim::Match);
    done(&q, &c2, "old", T0 + 3).await;
    // A build whose headers are the same passes, and does not move the pin.
    assert_eq!(claim(&c1, "new", "h163", T0 + 3).await, HeadersClaim::Match);
    assert!(q.lease("new", &[], T0 + 3).await.unwrap().is_none());

    // old is gone (not seen for a lease's TTL, or removed): new takes the rest.
    let gone = T0 + 10_001;
    q.worker_seen("new", None, None, gone).await.unwrap();
    let c3 = q.lease("new", &[], gone).await.unwrap().unwrap();
    assert_eq!(c3.chunk.unwrap().index, 3);
    // new's chunk differs from the accepted ones, which no live worker can match
    // any more: they are queued again, afresh, and the rendition is new's.
    assert_eq!(claim(&c1, "new", "h164", gone).await, HeadersClaim::Redone(2));
    assert_eq!(claim(&c1, "new", "h164", gone).await, HeadersClaim::Match, "once");
    let j = q.job(&job.id).await.unwrap().unwrap();
    assert_eq!((view(&j, 0), view(&j, 2)), ((String::from("queued"), 0), (String::from("queued"), 0)));
    assert_eq!(j.chunks, Some(ChunksView { count: 5, done: 0 }));
    done(&q, &c1, "new", gone + 1).await;
    let mut made = vec![];
    while let Some(l) = q.lease("new", &[], gone + 2).await.unwrap() {
        made.push(l.chunk.unwrap().index);
        assert_eq!(claim(&l, "new", "h164", gone + 2).await, HeadersClaim::Match);
        done(&q, &l, "new", gone + 2).await;
    }
    assert_eq!(made, [0, 2, 4], "new makes what old made, and the last");
    assert_eq!(claim(&c3, "new", "h164", gone + 3).await, HeadersClaim::Match);
    done(&q, &c3, "new", gone + 3).await;
    let j = q.job(&job.id).await.unwrap().unwrap();
    assert_eq!(j.chunks, Some(ChunksView { count: 5, done: 5 }));
}

/// Chunks of two builds checked at the same moment: one claims the rendition, and
/// the other differs.
async fn chunks_checked_at_once_claim_their_rendition_once(q: Queue) {
    let caps = |b: &str| proto::wire::Capabilities { encoders: vec![], cores: 2, tags: vec![], encoder_build: Some(b.into()) };
    q.register_worker("a", "a", 8, &caps("x264 core 163"), "0", T0).await.unwrap();
    q.register_worker("b", "b", 8, &caps("x264 core 164"), "0", T0).await.unwrap();
    for round in 0..8 {
        let (job, _) = q.create_job(&web_job(), T0).await.unwrap();
        let span = |i: u32| ChunkSpan { index: i, first_frame: u64::from(i) * 100, frames: (i < 1).then_some(100) };
        q.add_tasks(&job.id, &[NewTask::chunk("240p", span(0), None), NewTask::chunk("240p", span(1), None)], T0).await.unwrap();
        let la = q.lease("a", &[], T0).await.unwrap().unwrap();
        let lb = q.lease("b", &[], T0).await.unwrap().unwrap();
        let (ca, cb) = tokio::join!(
            q.claim_chunk_headers((&la.task_id, "a", la.epoch), "ha", T0),
            q.claim_chunk_headers((&lb.task_id, "b", lb.epoch), "hb", T0)
        );
        let mut got = [ca.unwrap(), cb.unwrap()];
        got.sort_by_key(|c| *c != HeadersClaim::Match);
        assert_eq!(got, [HeadersClaim::Match, HeadersClaim::Differ], "round {round}");
    }
}

/// A claim whose chunk never got in (its lease lapsed) does not hold its rendition
/// once its build is gone, nor, from a worker that named no build, once another
/// chunk passes.
async fn a_chunk_claim_that_never_got_in_gives_way(q: Queue) {
    let caps = |b: Option<&str>| proto::wire::Capabilities { encoders: vec![], cores: 2, tags: vec![], encoder_build: b.map(String::from) };
    q.register_worker("old", "old", 2, &caps(Some("x264 core 163")), "0", T0).await.unwrap();
    q.register_worker("anon", "anon", 2, &caps(None), "0", T0).await.unwrap();
    q.register_worker("new", "new", 2, &caps(Some("x264 core 164")), "0", T0).await.unwrap();
    let span = |i: u32| ChunkSpan { index: i, first_frame: u64::from(i) * 100, frames: (i < 1).then_some(100) };
    let mut jobs = vec![];
    for worker in ["old", "anon"] {
        let (job, _) = q.create_job(&web_job(), T0).await.unwrap();
        q.add_tasks(&job.id, &[NewTask::chunk("240p", span(0), None), NewTask::chunk("240p", span(1), None)], T0).await.unwrap();
        let l = q.lease(worker, &[], T0).await.unwrap().unwrap();
        assert_eq!(l.job_id, job.id);
        let claimed = q.claim_chunk_headers((&l.task_id, worker, l.epoch), worker, T0).await.unwrap();
        assert_eq!(claimed, HeadersClaim::Match);
        // It holds the other chunk too (unclaimed), so the next job's go to anon.
        assert_eq!(q.lease(worker, &[], T0).await.unwrap().unwrap().job_id, job.id);
        jobs.push(job.id);
    }
    // Both lapse before they complete, and old and anon are seen no more.
    let later = T0 + q.cfg.lease_ttl_ms + 1;
    q.reap(later).await.unwrap();
    // Past the retries' backoff.
    let later = later + 120_000;
    q.worker_seen("new", None, None, later).await.unwrap();
    // old's build is known and gone; anon's is not known, and nothing got in.
    let mut first = std::collections::HashMap::from([(jobs[0].clone(), HeadersClaim::Redone(0)), (jobs[1].clone(), HeadersClaim::Match)]);
    while let Some(l) = q.lease("new", &[], later).await.unwrap() {
        let claimed = q.claim_chunk_headers((&l.task_id, "new", l.epoch), "new", later).await.unwrap();
        match first.remove(&l.job_id) {
            Some(was) => assert_eq!(claimed, was, "{}", l.job_id),
            None => {
                // Taken over: the rest of the rendition goes with new's headers.
                assert_eq!(claimed, HeadersClaim::Match);
                let other = q.claim_chunk_headers((&l.task_id, "new", l.epoch), "other", later).await.unwrap();
                assert_eq!(other, HeadersClaim::Differ, "{}: a chunk is accepted now", l.job_id);
            }
        }
        done(&q, &l, "new", later).await;
    }
    assert!(first.is_empty());
}

/// Two live workers of one slot, and w1 failed a one-task job's task (or its
/// lease lapsed): the queue and when the retry is due.
async fn failed_on_w1(q: Queue, lapse: bool) -> (Queue, i64) {
    let caps = proto::wire::Capabilities { encoders: vec![], cores: 2, tags: vec![], encoder_build: None };
    for w in ["w1", "w2"] {
        q.register_worker(w, w, 1, &caps, "0", T0).await.unwrap();
    }
    job_with(&q, &["240p"]).await;
    let a = q.lease("w1", &[], T0).await.unwrap().unwrap();
    let at = if lapse {
        q.reap(T0 + 10_001).await.unwrap();
        T0 + 10_001
    } else {
        q.fail(&a.task_id, "w1", a.epoch, "the engine crashed", true, "", T0).await.unwrap();
        T0
    };
    let due = at + q.cfg.backoff(1);
    (q, due)
}

/// Runs one statement of a test's own, with `$1` bound to `at`.
async fn set(q: &Queue, statement: &'static str, at: i64) {
    let mut tx = q.begin().await.unwrap();
    sql::query(statement).bind(at).execute(&mut tx).await.unwrap();
    tx.commit().await.unwrap();
}

async fn the_retry_limit_fails_the_job_with_the_last_error(q: Queue) {
    let job = job_with(&q, &["240p", "360p"]).await;
    let mut now = T0;
    for _ in 0..3 {
        now += 10_000;
        let l = q.lease("w", &[], now).await.unwrap().unwrap();
        assert_eq!(l.rendition.as_deref(), Some("240p"));
        q.fail(&l.task_id, "w", l.epoch, "storage returned 503", true, "", now).await.unwrap();
    }
    let j = q.job(&job.id).await.unwrap().unwrap();
    assert_eq!(j.state, "failed");
    assert_eq!(j.error.as_deref(), Some("storage returned 503 (gave up after 3 attempts)"));
    assert_eq!(j.tasks[1].state, "canceled", "the rest of the job stops");
    assert!(q.lease("w", &[], now + 100_000).await.unwrap().is_none());
}

async fn bad_input_fails_the_job_at_once(q: Queue) {
    let job = job_with(&q, &["240p"]).await;
    let l = q.lease("w", &[], T0).await.unwrap().unwrap();
    q.fail(
        &l.task_id,
        "w",
        l.epoch,
        "bad input: the source ends at 2.00 s but its header declares 6.00 s",
        false,
        "[mov,mp4] stream 0, offset 0x2f1a: partial file",
        T0,
    )
    .await
    .unwrap();
    let j = q.job(&job.id).await.unwrap().unwrap();
    assert_eq!((j.state.as_str(), j.tasks[0].attempts), ("failed", 1));
    assert!(j.error.unwrap().contains("header declares"));
    assert!(j.tasks[0].log_tail.as_deref().unwrap().contains("partial file"), "the log tail is kept for ops");
    // Retry brings it back with fresh attempts.
    let j = q.retry_job(&job.id, T0 + 1).await.unwrap();
    assert_eq!((j.state.as_str(), j.tasks[0].state.as_str(), j.tasks[0].attempts), ("queued", "queued", 0));
}

async fn cancel_reaches_running_tasks_through_heartbeats(q: Queue) {
    let job = job_with(&q, &["240p", "360p"]).await;
    let l = q.lease("w", &[], T0).await.unwrap().unwrap();
    q.cancel_job(&job.id, T0 + 1).await.unwrap();
    assert!(matches!(q.heartbeat(&l.task_id, "w", l.epoch, 0.5, T0 + 2).await, Err(QueueError::StaleLease { .. })));
    assert!(q.lease("w", &[], T0 + 3).await.unwrap().is_none());
    let before = q.job(&job.id).await.unwrap().unwrap();
    assert_eq!(before.state, "canceled");
    // Canceling again (a client retrying a lost answer) changes nothing.
    let (again, canceled) = q.cancel_job(&job.id, T0 + 4).await.unwrap();
    assert_eq!((again.state.as_str(), again.updated_at, canceled), ("canceled", before.updated_at, false));
}

async fn idempotency_keys_return_the_same_job(q: Queue) {
    let new = NewJob { source: "s".into(), idempotency_key: Some("upload-42".into()), ..web_job() };
    let (a, created_a) = q.create_job(&new, T0).await.unwrap();
    let (b, created_b) = q.create_job(&new, T0 + 5).await.unwrap();
    assert_eq!((a.id, created_a, created_b), (b.id, true, false));
}

async fn a_page_of_jobs_is_each_jobs_own_view_newest_first(q: Queue) {
    // A page is read in a few statements for all its jobs (`Queue::jobs_by_id`):
    // each job must get its own tasks and tags, in the page's order.
    let mut ids = Vec::new();
    for i in 0..5 {
        let new = NewJob { requires_tags: (0..i % 3).map(|t| format!("tag{t}")).collect(), ..web_job() };
        let (job, _) = q.create_job(&new, T0 + i).await.unwrap();
        let tasks: Vec<NewTask> = ["240p", "360p", "720p"][..1 + i as usize % 3].iter().map(|r| NewTask::transcode(r, None)).collect();
        q.add_tasks(&job.id, &tasks, T0 + i).await.unwrap();
        ids.push(job.id);
    }
    q.cancel_job(&ids[1], T0 + 10).await.unwrap();
    let page = q.list_jobs(None, 0, 3).await.unwrap();
    let newest: Vec<&String> = ids.iter().rev().take(3).collect();
    assert_eq!(page.iter().map(|j| &j.id).collect::<Vec<_>>(), newest);
    for j in page.iter().chain(&q.list_jobs(None, 1, 3).await.unwrap()) {
        assert_eq!(Some(j), q.job(&j.id).await.unwrap().as_ref());
    }
    let last = q.list_jobs(None, 1, 3).await.unwrap();
    assert_eq!(last.iter().map(|j| &j.id).collect::<Vec<_>>(), [&ids[1], &ids[0]]);
    assert_eq!((last[0].state.as_str(), last[0].tasks.len(), last[0].requires_tags.as_slice()), ("canceled", 2, &["tag0".to_string()][..]));
    assert_eq!(page[0].tasks.iter().map(|t| t.rendition.as_deref().unwrap()).collect::<Vec<_>>(), ["240p", "360p"]);
    assert_eq!(page[0].requires_tags, ["tag0"]);
    assert!(page[0].waiting_for.is_some() && last[0].waiting_for.is_none());
    assert_eq!(q.list_jobs(Some("canceled"), 0, 50).await.unwrap().iter().map(|j| &j.id).collect::<Vec<_>>(), [&ids[1]]);
}

async fn tasks_go_only_to_workers_with_the_encoder(q: Queue) {
    let new = NewJob { profile: "vp9".into(), source: "s".into(), ..web_job() };
    let (job, _) = q.create_job(&new, T0).await.unwrap();
    q.add_tasks(&job.id, &[NewTask::transcode("360p", Some("libvpx-vp9".into()))], T0).await.unwrap();
    assert!(q.lease("w", &["libx264".into(), "libvpx".into()], T0).await.unwrap().is_none(), "libvpx is not libvpx-vp9");
    assert!(q.lease("w", &["libx264".into(), "libvpx-vp9".into()], T0).await.unwrap().is_some());
}

async fn bundles_split_a_jobs_renditions_over_the_free_workers(q: Queue) {
    let backend = q.backend();
    let caps = proto::wire::Capabilities { encoders: vec![], cores: 2, tags: vec![], encoder_build: None };
    let rungs = ["240p", "720p", "480p", "360p"];
    let names = |ls: &[Lease]| ls.iter().map(|l| l.rendition.clone().unwrap_or_else(|| "thumbnails".into())).collect::<Vec<_>>();
    let up_to = |max_renditions| Bundling { max_renditions, thumbnails: true };
    let with_thumbnails = |q: Queue| async move {
        let new = web_job();
        let (job, _) = q.create_job(&new, T0).await.unwrap();
        let mut tasks: Vec<NewTask> = rungs.iter().map(|r| NewTask::transcode(r, None)).collect();
        tasks.push(NewTask::thumbnails());
        q.add_tasks(&job.id, &tasks, T0).await.unwrap();
        q
    };

    // Three idle workers: the lowest rung goes alone, so the job is playable early;
    // the rest are split over the other two, and the bundle with the job's last
    // renditions makes the thumbnails from its decode.
    let q = with_thumbnails(fresh(backend).await).await;
    for w in ["w1", "w2", "w3"] {
        q.register_worker(w, w, 1, &caps, "0", T0).await.unwrap();
    }
    assert_eq!(names(&q.lease_bundle_for("w1", &[], T0, up_to(4)).await.unwrap()), ["240p"]);
    let b = q.lease_bundle_for("w2", &[], T0, up_to(4)).await.unwrap();
    assert_eq!(names(&b), ["720p", "480p"]);
    assert_ne!(b[0].task_id, b[1].task_id);
    let c = q.lease_bundle_for("w3", &[], T0, up_to(4)).await.unwrap();
    assert_eq!(names(&c), ["360p", "thumbnails"]);
    assert_eq!(c[1].kind, TaskKind::Thumbnails);
    assert!(q.lease_bundle_for("w1", &[], T0, up_to(4)).await.unwrap().is_empty());
    // Bundled leases are independent: one completes, its mate's lease lapses alone.
    q.complete(&b[0].task_id, "w2", b[0].epoch, &serde_json::json!({}), T0 + 1).await.unwrap();
    assert!(!q.heartbeat(&b[1].task_id, "w2", b[1].epoch, 0.5, T0 + 2).await.unwrap());

    // Two idle workers: the lowest rung alone, the rest of the ladder in one decode.
    let q = with_thumbnails(fresh(backend).await).await;
    for w in ["w1", "w2"] {
        q.register_worker(w, w, 1, &caps, "0", T0).await.unwrap();
    }
    let a = q.lease_bundle_for("w1", &[], T0, up_to(4)).await.unwrap();
    assert_eq!(names(&a), ["240p"]);
    assert_eq!(names(&q.lease_bundle_for("w2", &[], T0, up_to(4)).await.unwrap()), ["720p", "480p", "360p", "thumbnails"]);
    // Once a job is playable, its lowest rung bundles like any other (here, a retry).
    let q = with_thumbnails(fresh(backend).await).await;
    q.register_worker("w1", "w1", 1, &caps, "0", T0).await.unwrap();
    let a = q.lease_bundle_for("w1", &[], T0, up_to(4)).await.unwrap();
    let rest = q.lease_bundle_for("w1", &[], T0, up_to(4)).await.unwrap();
    done(&q, &rest[0], "w1", T0 + 1).await;
    q.fail(&a[0].task_id, "w1", a[0].epoch, "disk full", true, "", T0 + 1).await.unwrap();
    let retry = q.lease_bundle_for("w1", &[], T0 + 600_000, up_to(4)).await.unwrap();
    assert_eq!(names(&retry), ["240p"], "{retry:?}");

    // A worker that cannot make thumbnails in its transcode gets them on their own.
    let q = with_thumbnails(fresh(backend).await).await;
    q.register_worker("old", "old", 1, &caps, "0", T0).await.unwrap();
    let old = Bundling { max_renditions: 4, thumbnails: false };
    assert_eq!(names(&q.lease_bundle_for("old", &[], T0, old).await.unwrap()), ["240p"]);
    assert_eq!(names(&q.lease_bundle_for("old", &[], T0, old).await.unwrap()), rungs[1..]);
    assert_eq!(names(&q.lease_bundle_for("old", &[], T0, old).await.unwrap()), ["thumbnails"]);

    // One worker alone: the lowest rung, then the rest of the ladder in one lease; a
    // limit caps it, and the thumbnails come with the last renditions.
    let q = with_thumbnails(fresh(backend).await).await;
    q.register_worker("solo", "solo", 1, &caps, "0", T0).await.unwrap();
    assert_eq!(names(&q.lease_bundle_for("solo", &[], T0, up_to(2)).await.unwrap()), ["240p"]);
    assert_eq!(names(&q.lease_bundle_for("solo", &[], T0, up_to(2)).await.unwrap()), ["720p", "480p"]);
    assert_eq!(names(&q.lease_bundle_for("solo", &[], T0, up_to(2)).await.unwrap()), ["360p", "thumbnails"]);

    // Workers whose heartbeats stopped are not counted as free.
    let q = fresh(backend).await;
    job_with(&q, &rungs).await;
    q.register_worker("gone", "gone", 1, &caps, "0", T0 - 60_000).await.unwrap();
    q.register_worker("here", "here", 1, &caps, "0", T0).await.unwrap();
    assert_eq!(q.lease_bundle_for("here", &[], T0, up_to(4)).await.unwrap().len(), 1, "the lowest rung");
    assert_eq!(q.lease_bundle_for("here", &[], T0, up_to(4)).await.unwrap().len(), 3, "the rest in one lease");
}

async fn a_short_clip_is_not_queued_behind_a_long_film(q: Queue) {
    let job = |at: i64, seconds: f64, priority: i64| {
        let q = &q;
        async move {
            let new = NewJob { source: "s".into(), priority, ..web_job() };
            let (job, _) = q.create_job(&new, at).await.unwrap();
            let tasks = [NewTask::transcode("240p", None)];
            let claim = claim(q, &job.id, Chore::Probe, at).await.unwrap();
            assert!(q.plan_job(&job.id, claim, None, &serde_json::json!({"duration": seconds}), &tasks, at).await.unwrap());
            job.id
        }
    };
    let film = job(T0, 7200.0, 0).await; // two hours, due at T0 + 2 h
    let clip = job(T0 + 60_000, 10.0, 0).await; // a minute later, due at T0 + 70 s
    let late_clip = job(T0 + 7_300_000, 10.0, 0).await; // uploaded after the film was due
    let urgent = job(T0 + 90_000, 600.0, 1).await; // priority still comes first
    let now = T0 + 7_400_000;
    let mut order = Vec::new();
    while let Some(l) = q.lease("w", &[], now).await.unwrap() {
        order.push(l.job_id);
    }
    assert_eq!(order, [urgent, clip, film, late_clip]);
}

fn url_job(key: Option<&str>) -> NewJob {
    NewJob {
        source: "http://origin.example/v.mp4".into(),
        callback_url: Some("http://hooks.example/drake".into()),
        idempotency_key: key.map(String::from),
        ..web_job()
    }
}

/// The terminal webhooks recorded for a job: (run, type).
async fn ends(q: &Queue, job: &str) -> Vec<(i64, String)> {
    let rows: Vec<(i64, String)> =
        sqlx::query_as("SELECT run, payload FROM webhooks WHERE job_id = $1 ORDER BY run").bind(job).fetch_all(q.pool()).await.unwrap();
    rows.into_iter()
        .map(|(run, payload)| (run, serde_json::from_str::<serde_json::Value>(&payload).unwrap()["type"].as_str().unwrap().to_string()))
        .collect()
}

async fn a_probe_that_keeps_failing_backs_off_then_fails_the_job_with_its_reason(q: Queue) {
    let (job, _) = q.create_job(&url_job(None), T0).await.unwrap();
    let mut now = T0;
    for attempt in 1..=3 {
        let c = claim(&q, &job.id, Chore::Probe, now).await.unwrap_or_else(|| panic!("attempt {attempt} is due at {now}"));
        assert_eq!(c.attempt, attempt);
        assert!(q.chore_failed(&job.id, Chore::Probe, c, None, "connection refused", now).await.unwrap());
        if attempt < 3 {
            let j = q.job(&job.id).await.unwrap().unwrap();
            assert_eq!(j.state, "queued");
            assert!(j.waiting_for.unwrap().contains("its probe (attempt"), "the job view says what it waits for");
            // Backing off: nothing is due before the backoff has passed.
            assert!(q.arm_chores(Some(&job.id), "me", now + q.cfg.backoff(attempt) - 1).await.unwrap().is_empty());
            now += q.cfg.backoff(attempt);
        }
    }
    let j = q.job(&job.id).await.unwrap().unwrap();
    assert_eq!(j.state, "failed");
    assert_eq!(j.error.as_deref(), Some("probing http://origin.example/v.mp4 failed 3 times: connection refused"));
    assert_eq!(j.waiting_for, None);
    assert_eq!(ends(&q, &job.id).await, [(0, "job.failed".to_string())]);
    assert!(q.arm_chores(None, "me", now + 1_000_000).await.unwrap().is_empty(), "nothing is owed any more");
}

async fn a_probe_waits_for_a_full_disk_without_spending_attempts_up_to_the_limit(q: Queue) {
    let (job, _) = q.create_job(&url_job(None), T0).await.unwrap();
    let full = "storage: No space left on device (os error 28)";
    // One ordinary failure first: it stays counted.
    let c = claim(&q, &job.id, Chore::Probe, T0).await.unwrap();
    assert!(q.chore_failed(&job.id, Chore::Probe, c, None, "connection refused", T0).await.unwrap());
    let mut now = T0 + q.cfg.backoff(1);
    // Full for longer than three attempts' backoffs: every attempt is given back.
    let mut waits = 0;
    while now - (T0 + q.cfg.backoff(1)) < q.cfg.space_wait_ms {
        let c = claim(&q, &job.id, Chore::Probe, now).await.unwrap_or_else(|| panic!("an attempt is due at {now}"));
        assert_eq!(c.attempt, 2, "the wait gives its attempts back");
        assert!(q.chore_waits(&job.id, Chore::Probe, c, None, full, now).await.unwrap());
        let j = q.job(&job.id).await.unwrap().unwrap();
        assert_eq!(j.state, "queued");
        let why = j.waiting_for.unwrap();
        assert!(why.contains("waiting for the farm: storage: No space left on device"), "the job view says it waits for space: {why}");
        let next = q.arm_chores(Some(&job.id), "me", now).await.unwrap();
        assert!(next.is_empty(), "not due again at once");
        // The wait grows with the time spent waiting, up to a minute.
        let mut due = now + 1;
        while q.arm_chores(Some(&job.id), "peek", due).await.unwrap().is_empty() {
            due += 1_000;
        }
        assert!(due - now <= 61_000, "waited {} ms", due - now);
        // `peek` armed it; the next claim pushes it again.
        now = due + CHORE_PUSH_GRACE_MS;
        waits += 1;
    }
    assert!(waits > 3, "{waits} waits");
    // Past the limit, a full disk counts: two more attempts and the job fails with it.
    for attempt in 2..=3 {
        let c = claim(&q, &job.id, Chore::Probe, now).await.unwrap();
        assert_eq!(c.attempt, attempt);
        assert!(q.chore_waits(&job.id, Chore::Probe, c, None, full, now).await.unwrap());
        now += q.cfg.backoff(attempt) + CHORE_PUSH_GRACE_MS;
    }
    let j = q.job(&job.id).await.unwrap().unwrap();
    assert_eq!(j.state, "failed");
    assert_eq!(j.error.as_deref(), Some(format!("probing http://origin.example/v.mp4 failed 3 times: {full}").as_str()));
}

async fn a_chore_whose_coordinator_died_is_pushed_again_and_counts_as_an_attempt(q: Queue) {
    let (job, _) = q.create_job(&url_job(None), T0).await.unwrap();
    // Nothing in memory: the job row itself says a probe is owed.
    let armed = q.arm_chores(None, "first", T0).await.unwrap();
    assert_eq!(armed.iter().map(|o| (o.job_id.as_str(), o.chore)).collect::<Vec<_>>(), [(job.id.as_str(), Chore::Probe)]);
    // Pushed, but lost (the push failed): pushed again after the grace, with a new seq.
    let again = q.arm_chores(None, "first", T0 + owed::CHORE_PUSH_GRACE_MS).await.unwrap();
    assert_eq!(again.len(), 1);
    assert!(q.claim_chore(&job.id, Chore::Probe, armed[0].seq, "first", T0).await.unwrap().is_none(), "a superseded push claims nothing");
    let c = q.claim_chore(&job.id, Chore::Probe, again[0].seq, "first", T0 + 60_000).await.unwrap().unwrap();
    assert!(q.claim_chore(&job.id, Chore::Probe, again[0].seq, "first", T0 + 60_000).await.unwrap().is_none(), "claimed once");
    // While its coordinator heartbeats, another one leaves the claim alone.
    q.coordinator_seen("first", T0 + 60_000).await.unwrap();
    assert!(q.arm_chores(None, "second", T0 + 61_000).await.unwrap().is_empty(), "not yet due");
    // It dies mid-probe: once its heartbeat is stale, the other re-arms the claim.
    let gone = T0 + 60_000 + COORDINATOR_TTL_MS + 1;
    let restarted = q.arm_chores(None, "second", gone).await.unwrap();
    assert_eq!(restarted.len(), 1, "a claim of a process that is gone");
    // The stale claim can no longer plan the job.
    let tasks = [NewTask::transcode("240p", None)];
    assert!(!q.plan_job(&job.id, c, None, &serde_json::json!({}), &tasks, gone + 1).await.unwrap());
    // Two more lost claims, and the job fails instead of staying queued.
    let mut seq = restarted[0].seq;
    let mut now = gone + 1;
    for _ in 0..2 {
        q.claim_chore(&job.id, Chore::Probe, seq, "second", now).await.unwrap().unwrap();
        now += Chore::Probe.claim_timeout_ms();
        let armed = q.arm_chores(None, "second", now).await.unwrap();
        seq = armed.first().map_or(-1, |o| o.seq);
    }
    let j = q.job(&job.id).await.unwrap().unwrap();
    assert_eq!(j.state, "failed");
    assert!(j.error.unwrap().contains("failed 3 times: the coordinator running it stopped"));
    assert!(j.tasks.is_empty());
}

/// A chore this coordinator claimed whose run is no longer here (its future was
/// dropped, or its outcome could not be written) is due again at the reconciler's
/// next pass, not after its claim's timeout; a running one, another coordinator's
/// and one whose outcome was recorded are left alone.
async fn a_chore_whose_run_was_lost_here_is_due_again_at_once(q: Queue) {
    let (lost, _) = q.create_job(&url_job(Some("lost")), T0).await.unwrap();
    let (running, _) = q.create_job(&url_job(Some("running")), T0).await.unwrap();
    let (failed, _) = q.create_job(&url_job(Some("failed")), T0).await.unwrap();
    let (theirs, _) = q.create_job(&url_job(Some("theirs")), T0).await.unwrap();
    claim(&q, &lost.id, Chore::Probe, T0).await.unwrap();
    claim(&q, &running.id, Chore::Probe, T0).await.unwrap();
    // This one recorded its outcome: due after its backoff, claimed by nobody.
    let c = claim(&q, &failed.id, Chore::Probe, T0).await.unwrap();
    assert!(q.chore_failed(&failed.id, Chore::Probe, c, None, "the origin said 503", T0).await.unwrap());
    let seq = q.arm_chores(Some(&theirs.id), "other", T0).await.unwrap()[0].seq;
    q.claim_chore(&theirs.id, Chore::Probe, seq, "other", T0).await.unwrap().unwrap();
    q.coordinator_seen("other", T0).await.unwrap();

    let now = T0 + 1_000;
    let again = q.rearm_lost_chores("me", |job| job == running.id, now).await.unwrap();
    assert_eq!(again, std::slice::from_ref(&lost.id));
    assert!(q.rearm_lost_chores("me", |job| job == running.id, now).await.unwrap().is_empty(), "once");
    // The reconciler's arming then pushes it again; the lost attempt counts.
    let armed = q.arm_chores(Some(&lost.id), "me", now).await.unwrap();
    assert_eq!(armed.len(), 1);
    let j = q.job(&lost.id).await.unwrap().unwrap();
    assert!(j.waiting_for.unwrap().contains("attempt 1 of 3 failed: its last run stopped before it recorded an outcome"));
    let c = q.claim_chore(&lost.id, Chore::Probe, armed[0].seq, "me", now).await.unwrap().unwrap();
    assert_eq!(c.attempt, 2);
}

async fn cancel_during_a_probe_stops_the_job_and_cancel_plus_retry_plans_it_once(q: Queue) {
    let tasks = [NewTask::transcode("240p", None)];
    let (job, _) = q.create_job(&url_job(None), T0).await.unwrap();
    let first = claim(&q, &job.id, Chore::Probe, T0).await.unwrap();
    q.cancel_job(&job.id, T0 + 1).await.unwrap();
    assert!(!q.plan_job(&job.id, first, None, &serde_json::json!({}), &tasks, T0 + 2).await.unwrap(), "no tasks for a canceled job");
    assert!(q.job(&job.id).await.unwrap().unwrap().tasks.is_empty());
    assert!(q.lease("w", &[], T0 + 3).await.unwrap().is_none());
    // Cancel and retry while one probe runs: only the retry's probe plans.
    let (job, _) = q.create_job(&url_job(None), T0).await.unwrap();
    let stale = claim(&q, &job.id, Chore::Probe, T0).await.unwrap();
    q.cancel_job(&job.id, T0 + 1).await.unwrap();
    q.retry_job(&job.id, T0 + 2).await.unwrap();
    let fresh = claim(&q, &job.id, Chore::Probe, T0 + 3).await.unwrap();
    assert!(!q.plan_job(&job.id, stale, None, &serde_json::json!({}), &tasks, T0 + 4).await.unwrap());
    assert!(q.plan_job(&job.id, fresh, None, &serde_json::json!({}), &tasks, T0 + 5).await.unwrap());
    assert_eq!(q.job(&job.id).await.unwrap().unwrap().tasks.len(), 1, "planned once");
    assert_eq!(ends(&q, &job.id).await, [(0, "job.canceled".to_string())], "the canceled run reported its end once");
}

async fn a_failed_job_stays_failed_and_reports_its_end_once(q: Queue) {
    let (job, _) = q.create_job(&url_job(None), T0).await.unwrap();
    let tasks: Vec<NewTask> = ["240p", "360p", "480p"].iter().map(|r| NewTask::transcode(r, None)).collect();
    q.add_tasks(&job.id, &tasks, T0).await.unwrap();
    let a = q.lease("w1", &[], T0).await.unwrap().unwrap();
    let b = q.lease("w2", &[], T0).await.unwrap().unwrap();
    let c = q.lease("w3", &[], T0).await.unwrap().unwrap();
    q.fail(&a.task_id, "w1", a.epoch, "bad input: corrupt", false, "", T0 + 1).await.unwrap();
    // Its running mates see the cancel, and their late reports change nothing.
    assert!(matches!(q.heartbeat(&b.task_id, "w2", b.epoch, 0.5, T0 + 2).await, Err(QueueError::StaleLease { .. })));
    assert!(q.task_canceled(&b.task_id).await.unwrap());
    assert!(matches!(q.complete(&b.task_id, "w2", b.epoch, &serde_json::json!({}), T0 + 3).await, Err(QueueError::StaleLease { .. })));
    assert!(matches!(q.fail(&c.task_id, "w3", c.epoch, "x", true, "", T0 + 3).await, Err(QueueError::StaleLease { .. })));
    assert!(q.reap(T0 + 100_000).await.unwrap().is_empty());
    let j = q.job(&job.id).await.unwrap().unwrap();
    assert_eq!(j.state, "failed");
    assert_eq!(j.tasks.iter().map(|t| t.state.as_str()).collect::<Vec<_>>(), ["failed", "canceled", "canceled"]);
    assert_eq!(ends(&q, &job.id).await, [(0, "job.failed".to_string())]);
    assert!(matches!(q.cancel_job(&job.id, T0 + 4).await, Err(QueueError::Conflict(_))));
}

async fn a_task_leased_before_its_job_ended_is_never_handed_out_after(q: Queue) {
    let job = job_with(&q, &["240p", "360p"]).await;
    // Fail the job some other way than through its tasks (here, a lost probe re-run).
    let claim_ = {
        sqlx::query("UPDATE jobs SET chore = 'finalize', chore_due_at = 0 WHERE id = $1").bind(&job.id).execute(q.pool()).await.unwrap();
        claim(&q, &job.id, Chore::Finalize, T0).await.unwrap()
    };
    q.chore_rejected(&job.id, Chore::Finalize, claim_, "bad input: x", T0).await.unwrap();
    assert_eq!(q.job(&job.id).await.unwrap().unwrap().state, "failed");
    assert!(q.lease("w", &[], T0 + 1).await.unwrap().is_none());
}

async fn retrying_a_job_resumes_it(q: Queue) {
    // Everything succeeded, then finalize failed: the retry goes straight to finalize.
    let (job, _) = q.create_job(&url_job(None), T0).await.unwrap();
    q.add_tasks(&job.id, &[NewTask::transcode("240p", None)], T0).await.unwrap();
    let l = q.lease("w", &[], T0).await.unwrap().unwrap();
    done(&q, &l, "w", T0).await;
    for i in 0..3 {
        let c = claim(&q, &job.id, Chore::Finalize, T0 + 1_000_000 * i).await.unwrap();
        q.chore_failed(&job.id, Chore::Finalize, c, None, "storage: HTTP 503", T0 + 1_000_000 * i).await.unwrap();
    }
    let j = q.job(&job.id).await.unwrap().unwrap();
    assert_eq!((j.state.as_str(), j.error.as_deref()), ("failed", Some("finalizing failed 3 times: storage: HTTP 503")));
    let j = q.retry_job(&job.id, T0 + 5_000_000).await.unwrap();
    assert_eq!((j.state.as_str(), j.tasks[0].state.as_str()), ("finalizing", "succeeded"), "what succeeded is kept");
    let c = claim(&q, &job.id, Chore::Finalize, T0 + 5_000_000).await.expect("finalize is owed at once");
    assert!(q.finish_job(&job.id, c, &serde_json::json!({}), T0 + 5_000_001).await.unwrap());
    assert_eq!(ends(&q, &job.id).await, [(0, "job.failed".into()), (1, "job.succeeded".into())], "one end per run");
    // Only the failed task runs again.
    let job = job_with(&q, &["240p", "360p"]).await;
    let a = q.lease("w", &[], T0).await.unwrap().unwrap();
    done(&q, &a, "w", T0).await;
    let b = q.lease("w", &[], T0).await.unwrap().unwrap();
    q.fail(&b.task_id, "w", b.epoch, "bad input", false, "", T0).await.unwrap();
    q.retry_job(&job.id, T0 + 1).await.unwrap();
    let again = q.lease("w", &[], T0 + 2).await.unwrap().unwrap();
    assert_eq!(again.task_id, b.task_id);
    assert!(q.lease("w", &[], T0 + 2).await.unwrap().is_none());
}

async fn finalize_runs_once_and_a_missing_output_reruns_its_task(q: Queue) {
    let job = job_with(&q, &["240p"]).await;
    let l = q.lease("w", &[], T0).await.unwrap().unwrap();
    done(&q, &l, "w", T0).await;
    // Two triggers at once: both arm, but only the latest push can claim, once.
    let first = q.arm_chores(Some(&job.id), "me", T0).await.unwrap();
    let second = q.arm_chores(None, "me", T0 + owed::CHORE_PUSH_GRACE_MS).await.unwrap();
    assert!(q.claim_chore(&job.id, Chore::Finalize, first[0].seq, "me", T0).await.unwrap().is_none());
    let c = q.claim_chore(&job.id, Chore::Finalize, second[0].seq, "me", T0).await.unwrap().unwrap();
    assert!(q.claim_chore(&job.id, Chore::Finalize, second[0].seq, "me", T0).await.unwrap().is_none());
    // It found the task's files missing on the store: the task runs again.
    assert!(q.reopen_task(&job.id, c, &l.task_id, "jobs/x/240p/rendition.json is missing from the store", T0).await.unwrap());
    assert!(!q.finish_job(&job.id, c, &serde_json::json!({}), T0).await.unwrap(), "the claim is spent");
    let j = q.job(&job.id).await.unwrap().unwrap();
    assert_eq!((j.state.as_str(), j.tasks[0].state.as_str()), ("queued", "queued"));
    let again = q.lease("w", &[], T0 + 10_000).await.unwrap().unwrap();
    assert_eq!(again.epoch, 2);
}

async fn an_unfinished_promotion_is_redone_not_papered_over(q: Queue) {
    let job = job_with(&q, &["240p"]).await;
    let l = q.lease("w", &[], T0).await.unwrap().unwrap();
    q.complete(&l.task_id, "w", l.epoch, &serde_json::json!({"files": [{"path": "rendition.json", "size": 3}]}), T0).await.unwrap();
    // The coordinator dies before promoting: the task is not a success, and not reaped.
    assert!(q.reap(T0 + 100_000).await.unwrap().is_empty());
    assert_eq!(q.job(&job.id).await.unwrap().unwrap().tasks[0].state, "promoting");
    assert!(q.overdue_promotions(T0 + 1, false).await.unwrap().is_empty(), "its coordinator still has time");
    let owed = q.overdue_promotions(T0 + PROMOTE_GRACE_MS + 1, false).await.unwrap();
    assert_eq!((owed.len(), owed[0].epoch, owed[0].files.len()), (1, l.epoch, 1));
    assert_eq!(q.overdue_promotions(T0, true).await.unwrap().len(), 1, "at start, all of them");
    // Its files were lost: the attempt failed and the task runs again.
    q.promotion_failed(&l.task_id, "storage: jobs/x/240p/rendition.json is missing after promotion", T0 + 40_000).await.unwrap();
    let t = &q.job(&job.id).await.unwrap().unwrap().tasks[0];
    assert_eq!(t.state, "queued");
}

async fn a_task_no_live_worker_can_run_waits_then_fails_with_that_reason(q: Queue) {
    let caps = |e: &[&str]| proto::wire::Capabilities {
        encoders: e.iter().map(|s| s.to_string()).collect(),
        cores: 2,
        tags: vec![],
        encoder_build: None,
    };
    let (job, _) = q.create_job(&url_job(None), T0).await.unwrap();
    q.add_tasks(&job.id, &[NewTask::transcode("360p", Some("libsvtav1".into()))], T0).await.unwrap();
    // Another job's task needs an encoder that stays live.
    let (other, _) = q.create_job(&url_job(Some("other")), T0).await.unwrap();
    q.add_tasks(&other.id, &[NewTask::transcode("360p", Some("libx264".into()))], T0).await.unwrap();
    q.register_worker("x264", "x264", 1, &caps(&["libx264"]), "0", T0).await.unwrap();
    q.register_worker("av1", "av1", 1, &caps(&["libsvtav1"]), "0", T0).await.unwrap();
    assert!(q.check_capable_workers(60_000, T0).await.unwrap().is_empty());
    assert_eq!(q.job(&job.id).await.unwrap().unwrap().waiting_for.as_deref(), Some("a free worker"));
    // The only capable worker goes silent.
    let later = T0 + q.cfg.lease_ttl_ms + 1;
    q.worker_seen("x264", None, None, later).await.unwrap();
    assert!(q.check_capable_workers(60_000, later).await.unwrap().is_empty());
    let j = q.job(&job.id).await.unwrap().unwrap();
    assert_eq!(j.waiting_for.as_deref(), Some("a capable worker: no live worker has the encoder libsvtav1"));
    assert_eq!(q.job(&other.id).await.unwrap().unwrap().waiting_for.as_deref(), Some("a free worker"));
    assert_eq!(q.check_capable_workers(60_000, later + 60_001).await.unwrap(), std::slice::from_ref(&job.id));
    let j = q.job(&job.id).await.unwrap().unwrap();
    assert_eq!(j.state, "failed");
    assert_eq!(j.error.as_deref(), Some("no live worker has the encoder libsvtav1 (waited 60 s for one)"));
}

async fn a_job_says_when_it_waits_for_its_own_tasks_or_for_a_worker_that_takes_tasks(q: Queue) {
    let (job, _) = q.create_job(&web_job(), T0).await.unwrap();
    q.add_tasks(&job.id, &[NewTask::audio("240p"), NewTask::transcode("240p", None)], T0).await.unwrap();
    let caps = proto::wire::Capabilities { encoders: vec!["libx264".into()], cores: 2, tags: vec![], encoder_build: None };
    q.register_worker("w", "w", 1, &caps, "0", T0).await.unwrap();
    q.register_worker("w2", "w2", 1, &caps, "0", T0).await.unwrap();
    let waiting = |q: Queue, now: i64| {
        let id = job.id.clone();
        async move {
            assert!(q.check_capable_workers(60_000, now).await.unwrap().is_empty());
            q.job(&id).await.unwrap().unwrap().waiting_for.unwrap()
        }
    };
    assert_eq!(waiting(q.clone(), T0).await, "a free worker", "the audio is queued");
    let audio = q.lease("w", &[], T0 + 1_000).await.unwrap().unwrap();
    assert_eq!(audio.kind, TaskKind::Audio);
    // The rendition is queued, but it muxes the audio: it waits for that, not for
    // a worker (w2 is idle).
    assert_eq!(waiting(q.clone(), T0 + 2_000).await, "its running tasks");
    done(&q, &audio, "w", T0 + 3_000).await;
    assert_eq!(waiting(q.clone(), T0 + 4_000).await, "a free worker");
    // Every live worker is paused or draining: the farm is not busy, it takes nothing.
    let full = Slots { free: 1, paused: Some("scratch disk full") };
    q.worker_seen("w", Some(full), None, T0 + 5_000).await.unwrap();
    q.set_draining("w2", true).await.unwrap();
    q.worker_seen("w2", None, None, T0 + 5_000).await.unwrap();
    let why = "a worker that takes tasks: every live worker is paused or draining: 1 paused (scratch disk full), 1 draining";
    assert_eq!(waiting(q.clone(), T0 + 6_000).await, why);
    q.worker_seen("w", Some(Slots { free: 1, paused: None }), None, T0 + 7_000).await.unwrap();
    assert_eq!(waiting(q.clone(), T0 + 8_000).await, "a free worker");
}

async fn concurrent_submits_with_one_key_make_one_job(q: Queue) {
    let key = Some("pipeline/42");
    let made = futures_util::future::join_all((0..8).map(|i| {
        let q = q.clone();
        async move { q.create_job(&url_job(key), T0 + i).await.unwrap() }
    }))
    .await;
    assert_eq!(made.iter().filter(|(_, created)| *created).count(), 1);
    assert!(made.iter().all(|(j, _)| j.id == made[0].0.id));
    assert_eq!(q.arm_chores(None, "me", T0 + 10).await.unwrap().len(), 1, "one probe owed");
}

async fn a_farm_with_no_live_worker_says_so_and_fails_its_tasks_after_the_wait(q: Queue) {
    let job = job_with(&q, &["240p"]).await;
    assert!(q.check_capable_workers(60_000, T0).await.unwrap().is_empty());
    assert_eq!(q.job(&job.id).await.unwrap().unwrap().waiting_for.as_deref(), Some("a capable worker: no worker is live"));
    // The farm says it once: no task is rewritten.
    let marked: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM tasks WHERE unrunnable_since IS NOT NULL").fetch_one(q.pool()).await.unwrap();
    assert_eq!(marked, 0);
    // A worker seen meanwhile, then gone: the wait counts from when it was last live.
    let caps = proto::wire::Capabilities { encoders: vec!["libx264".into()], cores: 2, tags: vec![], encoder_build: None };
    q.register_worker("brief", "brief", 1, &caps, "0", T0 + 20_000).await.unwrap();
    assert!(q.check_capable_workers(60_000, T0 + 20_001).await.unwrap().is_empty());
    assert_eq!(q.job(&job.id).await.unwrap().unwrap().waiting_for.as_deref(), Some("a free worker"));
    assert!(q.check_capable_workers(60_000, T0 + 60_001).await.unwrap().is_empty(), "idle only since T0 + 30 s");
    let idle_from = T0 + 20_000 + q.cfg.lease_ttl_ms;
    assert_eq!(q.check_capable_workers(60_000, idle_from + 60_001).await.unwrap(), std::slice::from_ref(&job.id));
    let j = q.job(&job.id).await.unwrap().unwrap();
    assert_eq!((j.state.as_str(), j.error.as_deref()), ("failed", Some("no worker is live (waited 60 s for one)")));
}

// The registry: workers, tokens, sessions and login links.

async fn tokens_are_stored_hashed_and_checked(q: Queue) {
    let admin = generate(Role::Admin);
    q.add_token(&admin, Role::Admin, None, None, None, 0).await.unwrap();
    let stored: Vec<String> = sqlx::query_scalar("SELECT hash FROM tokens").fetch_all(q.pool()).await.unwrap();
    assert_eq!(stored, [digest(&admin)]);
    assert!(!stored[0].contains(&admin[10..]));
    assert_eq!(q.authenticate(&admin, 1).await.unwrap().unwrap().role, Role::Admin);
    assert!(q.authenticate("drk_admin_wrong", 1).await.unwrap().is_none());

    let join = generate(Role::Join);
    q.add_token(&join, Role::Join, None, Some(1), Some(100), 0).await.unwrap();
    assert!(q.spend_join_token(&join, 50).await.unwrap());
    assert!(!q.spend_join_token(&join, 51).await.unwrap(), "one use only");
    let join2 = generate(Role::Join);
    q.add_token(&join2, Role::Join, None, Some(5), Some(100), 0).await.unwrap();
    assert!(!q.spend_join_token(&join2, 100).await.unwrap(), "expired");
    q.revoke_token(&digest(&admin)).await.unwrap();
    assert!(q.authenticate(&admin, 2).await.unwrap().is_none(), "a revoked token answered from memory");
    // A caller kept in memory still expires with its token.
    let expiring = generate(Role::Submit);
    q.add_token(&expiring, Role::Submit, Some("p"), None, Some(100), 0).await.unwrap();
    assert!(q.authenticate(&expiring, 99).await.unwrap().is_some());
    assert!(q.authenticate(&expiring, 100).await.unwrap().is_none(), "an expired token answered from memory");
    // A removed worker's credential stops at once.
    let caps = proto::wire::Capabilities { encoders: vec![], cores: 1, tags: vec![], encoder_build: None };
    let worker = generate(Role::Worker);
    q.register_worker("w9", "box-9", 1, &caps, "1.0", 0).await.unwrap();
    q.add_token(&worker, Role::Worker, Some("w9"), None, None, 0).await.unwrap();
    assert_eq!(q.authenticate(&worker, 1).await.unwrap().unwrap().label.as_deref(), Some("w9"));
    q.remove_worker("w9").await.unwrap();
    assert!(q.authenticate(&worker, 2).await.unwrap().is_none(), "a removed worker answered from memory");
}

async fn login_links_work_once_and_sessions_expire(q: Queue) {
    let link = q.create_login_link(0).await.unwrap();
    assert!(!q.use_login_link("drk_login_guess", 1).await.unwrap());
    assert!(q.use_login_link(&link, 1).await.unwrap());
    assert!(!q.use_login_link(&link, 2).await.unwrap(), "a login link works once");
    let unused = q.create_login_link(0).await.unwrap();
    q.revoke_login_links().await.unwrap();
    assert!(!q.use_login_link(&unused, 1).await.unwrap(), "a restart revokes unused links");
    let late = q.create_login_link(0).await.unwrap();
    assert!(!q.use_login_link(&late, LOGIN_LINK_TTL_MS + 1).await.unwrap(), "expired");

    let (cookie, s) = q.create_session(10).await.unwrap();
    assert_eq!(q.session(&cookie, 11).await.unwrap(), Some(s));
    let stored: Vec<String> = sqlx::query_scalar("SELECT hash FROM sessions").fetch_all(q.pool()).await.unwrap();
    assert!(!stored.contains(&cookie), "cookies are stored hashed");
    assert_eq!(q.session(&cookie, 10 + SESSION_TTL_MS + 1).await.unwrap(), None);
    q.end_session(&cookie).await.unwrap();
    assert_eq!(q.session(&cookie, 12).await.unwrap(), None);
}

async fn workers_register_drain_and_leave(q: Queue) {
    let caps = proto::wire::Capabilities { encoders: vec!["libx264".into()], cores: 2, tags: vec!["gpu".into()], encoder_build: None };
    q.register_worker("w1", "box-1", 2, &caps, "1.0", T0).await.unwrap();
    let free = |n| Some(Slots { free: n, paused: None });
    assert_eq!(*q.worker_seen("w1", free(1), Some(0.5), T0 + 1).await.unwrap(), caps);
    assert_eq!(*q.worker_seen("w1", None, None, T0 + 2).await.unwrap(), caps);
    let listed = q.list_workers(T0 + 2).await.unwrap();
    assert_eq!((listed.len(), listed[0].name.as_str(), listed[0].slots), (1, "box-1", 2));
    // Liveness is written once per `seen_every_ms` (a call within it only reads),
    // and at once when the free slots change.
    assert_eq!(listed[0].last_heartbeat, T0 + 1, "a call within the interval wrote last_seen");
    let every = q.seen_every_ms();
    assert!(every > 0 && every <= 1000, "{every}");
    q.worker_seen("w1", free(1), None, T0 + 1 + every).await.unwrap();
    assert_eq!(q.list_workers(T0 + 2).await.unwrap()[0].last_heartbeat, T0 + 1 + every);
    q.worker_seen("w1", free(2), None, T0 + 2 + every).await.unwrap();
    assert_eq!(q.list_workers(T0 + 2).await.unwrap()[0].last_heartbeat, T0 + 2 + every);
    // A pause (a full scratch disk) is written at once with the free slots, shown as
    // the state, kept by heartbeats, and ended by the next poll that takes work.
    let full = Some(Slots { free: 0, paused: Some("the scratch disk is full") });
    q.worker_seen("w1", full, None, T0 + 3 + every).await.unwrap();
    let w = q.list_workers(T0 + 4).await.unwrap().remove(0);
    assert_eq!((w.state.as_str(), w.paused.as_deref(), w.free_slots), ("paused", Some("the scratch disk is full"), 0));
    q.worker_seen("w1", None, None, T0 + 4 + 2 * every).await.unwrap();
    assert_eq!(q.list_workers(T0 + 4).await.unwrap()[0].state, "paused");
    q.worker_seen("w1", free(2), None, T0 + 5 + 2 * every).await.unwrap();
    let w = q.list_workers(T0 + 4).await.unwrap().remove(0);
    assert_eq!((w.state.as_str(), w.paused, w.free_slots), ("idle", None, 2));
    // A draining worker's claim gets nothing; resumed, it gets work again.
    let job = job_with(&q, &["240p"]).await;
    q.set_draining("w1", true).await.unwrap();
    assert_eq!(q.list_workers(T0 + 2).await.unwrap()[0].state, "draining");
    assert!(q.lease("w1", &[], T0 + 2).await.unwrap().is_none(), "a draining worker was given a task");
    q.set_draining("w1", false).await.unwrap();
    q.lease("w1", &[], T0 + 2).await.unwrap().unwrap();
    q.remove_worker("w1").await.unwrap();
    assert!(matches!(q.worker_seen("w1", None, None, T0 + 3).await, Err(QueueError::NotFound(_))));
    assert!(q.list_workers(T0 + 3).await.unwrap().is_empty());
    let names = q.job_worker_names(&job.id).await.unwrap();
    assert_eq!(names.get("w1").map(String::as_str), Some("box-1"), "a job's history names a removed worker");
    assert_eq!(names.len(), 1);
}

/// PostgreSQL only: K connection pools, standing in for K coordinators, race on
/// the same rows. (SQLite has one writer and one coordinator process.)
mod races {
    use super::*;
    use std::collections::{HashMap, HashSet};

    const POOLS: usize = 6;

    /// K queues on one fresh database, or `None` when this machine has no PostgreSQL.
    async fn coordinators() -> Option<Vec<Queue>> {
        let url = DatabaseUrl::Postgres(crate::pgtest::database().await?);
        let mut qs = Vec::new();
        for _ in 0..POOLS {
            qs.push(Queue::connect(&url, config()).await.unwrap());
        }
        Some(qs)
    }

    /// Every pool leases as fast as it can, with single leases and bundles, until
    /// the queue is empty; then every lease lapses and they race again.
    #[tokio::test]
    async fn no_task_is_ever_held_by_two_leases_and_epochs_only_grow() {
        let Some(qs) = coordinators().await else { return };
        let caps = proto::wire::Capabilities { encoders: vec![], cores: 2, tags: vec![], encoder_build: None };
        let mut tasks = 0;
        for _ in 0..30 {
            job_with(&qs[0], &["240p", "360p", "480p", "720p"]).await;
            tasks += 4;
        }
        let mut last_epoch: HashMap<String, i64> = HashMap::new();
        for round in 0..3 {
            // Every lease of the round before has lapsed; leasing starts after the backoff.
            qs[0].reap(T0 + round as i64 * 100_000).await.unwrap();
            let now = T0 + round as i64 * 100_000 + 20_000;
            let mut racers = Vec::new();
            for (k, q) in qs.iter().enumerate() {
                for i in 0..4 {
                    let q = q.clone();
                    let worker = format!("w{k}-{i}-r{round}");
                    q.register_worker(&worker, &worker, 1, &caps, "0", now).await.unwrap();
                    let bundling = if i % 2 == 0 { Bundling::NONE } else { Bundling { max_renditions: 3, thumbnails: false } };
                    racers.push(tokio::spawn(async move {
                        let mut got = Vec::new();
                        loop {
                            let leases = q.lease_bundle_for(&worker, &[], now, bundling).await.unwrap();
                            if leases.is_empty() {
                                return got;
                            }
                            got.extend(leases.into_iter().map(|l| (l.task_id, l.epoch, worker.clone())));
                        }
                    }));
                }
            }
            let mut held: HashSet<String> = HashSet::new();
            for r in racers {
                for (task, epoch, worker) in r.await.unwrap() {
                    assert!(held.insert(task.clone()), "round {round}: task {task} leased twice (second time to {worker})");
                    let before = last_epoch.insert(task.clone(), epoch).unwrap_or(0);
                    assert!(epoch > before, "round {round}: task {task} epoch went from {before} to {epoch}");
                }
            }
            assert_eq!(held.len(), tasks, "round {round}: every task leased exactly once");
        }
    }

    /// A statement stuck behind a lock fails after the statement timeout and gives
    /// its report turn back, so a lock never released cannot stall a coordinator's
    /// reports for good.
    #[tokio::test]
    async fn a_report_stuck_behind_a_lock_fails_and_gives_its_turn_back() {
        let Some(url) = crate::pgtest::database().await else { return };
        let url = DatabaseUrl::Postgres(url);
        let q = Queue::connect(&url, QueueConfig { statement_timeout_ms: 300, ..config() }).await.unwrap();
        job_with(&q, &["240p"]).await;
        let a = q.lease("w1", &[], T0).await.unwrap().unwrap();
        // Another session holds the task's row (as a coordinator that hung mid-transaction would).
        let mut other = q.pool().begin().await.unwrap();
        sqlx::query("SELECT id FROM tasks WHERE id = $1 FOR UPDATE").bind(&a.task_id).fetch_one(&mut *other).await.unwrap();
        let stuck = tokio::time::timeout(std::time::Duration::from_secs(5), q.heartbeat(&a.task_id, "w1", a.epoch, 0.5, T0 + 1))
            .await
            .expect("the heartbeat still waits for the lock");
        assert!(matches!(stuck, Err(QueueError::Db(_))), "{stuck:?}");
        assert_eq!(q.reports.free(), 4, "the turn came back");
        other.rollback().await.unwrap();
        assert!(!q.heartbeat(&a.task_id, "w1", a.epoch, 0.6, T0 + 2).await.unwrap(), "the next heartbeat runs");
    }

    #[tokio::test]
    async fn concurrent_submits_with_one_key_across_coordinators_make_one_job() {
        let Some(qs) = coordinators().await else { return };
        for round in 0..10 {
            let key = format!("upload-{round}");
            let racers: Vec<_> = qs
                .iter()
                .cloned()
                .map(|q| {
                    let new = url_job(Some(&key));
                    tokio::spawn(async move { q.create_job(&new, T0).await.unwrap() })
                })
                .collect();
            let mut ids = HashSet::new();
            let mut created = 0;
            for r in racers {
                let (job, new) = r.await.unwrap();
                ids.insert(job.id);
                created += new as usize;
            }
            assert_eq!((ids.len(), created), (1, 1), "round {round}");
        }
        assert_eq!(qs[0].count_jobs(None).await.unwrap(), 10);
    }

    /// A job's last promotions land on every coordinator at once, in half the rounds
    /// with a cancel among them: the job ends finalizing (owing one finalize) or
    /// canceled, never running with every task done, and a cancel is never undone.
    #[tokio::test]
    async fn concurrent_promotions_settle_a_job_once() {
        let Some(qs) = coordinators().await else { return };
        for round in 0..12 {
            let job = job_with(&qs[0], &["240p", "360p", "480p", "720p"]);
            let job = job.await;
            let now = T0 + round * 1_000;
            let mut promoting = Vec::new();
            while let Some(l) = qs[0].lease("w", &[], now).await.unwrap() {
                qs[0].complete(&l.task_id, "w", l.epoch, &serde_json::json!({"files": []}), now).await.unwrap();
                promoting.push(l.task_id);
            }
            assert_eq!(promoting.len(), 4, "round {round}");
            let mut racers: Vec<tokio::task::JoinHandle<bool>> = promoting
                .into_iter()
                .enumerate()
                .map(|(k, task)| {
                    let q = qs[k % qs.len()].clone();
                    tokio::spawn(async move { q.promoted(&task, now + 1).await.unwrap().succeeded() })
                })
                .collect();
            let cancel = round % 2 == 1;
            if cancel {
                let (q, id) = (qs[1].clone(), job.id.clone());
                racers.push(tokio::spawn(async move { q.cancel_job(&id, now + 1).await.unwrap().1 }));
            }
            let outcomes: Vec<bool> = futures_util::future::join_all(racers).await.into_iter().map(|r| r.unwrap()).collect();
            let j = qs[2].job(&job.id).await.unwrap().unwrap();
            if cancel && outcomes[4] {
                assert_eq!(j.state, "canceled", "round {round}: the cancel stands");
            } else {
                assert!(outcomes[..4].iter().all(|p| *p), "round {round}: every promotion went through");
                assert_eq!(j.state, "finalizing", "round {round}: {:?}", j.tasks.iter().map(|t| &t.state).collect::<Vec<_>>());
                let owed = qs[0].arm_chores(Some(&job.id), "me", now + 2).await.unwrap();
                assert_eq!(owed.iter().map(|o| o.chore).collect::<Vec<_>>(), [Chore::Finalize], "round {round}");
            }
        }
    }

    #[tokio::test]
    async fn concurrent_triggers_finalize_a_job_once() {
        let Some(qs) = coordinators().await else { return };
        for round in 0..5 {
            let (job, _) = qs[0].create_job(&url_job(None), T0).await.unwrap();
            let c = claim(&qs[0], &job.id, Chore::Probe, T0).await.unwrap();
            let tasks = [NewTask::transcode("240p", None)];
            assert!(qs[0].plan_job(&job.id, c, None, &serde_json::json!({"duration": 1.0}), &tasks, T0).await.unwrap());
            let l = qs[0].lease("w", &[], T0).await.unwrap().unwrap();
            done(&qs[0], &l, "w", T0 + 1).await;
            // Every coordinator's reconciler arms the owed finalize and runs what it armed.
            let racers: Vec<_> = qs
                .iter()
                .cloned()
                .enumerate()
                .map(|(k, q)| {
                    let job = job.id.clone();
                    tokio::spawn(async move {
                        let me = format!("c{k}");
                        q.coordinator_seen(&me, T0 + 2).await.unwrap();
                        let mut finished = 0;
                        for owed in q.arm_chores(Some(&job), &me, T0 + 2).await.unwrap() {
                            if let Some(c) = q.claim_chore(&job, owed.chore, owed.seq, &me, T0 + 2).await.unwrap()
                                && q.finish_job(&job, c, &serde_json::json!({"master": "m.m3u8"}), T0 + 3).await.unwrap()
                            {
                                finished += 1;
                            }
                        }
                        finished
                    })
                })
                .collect();
            let mut finished = 0;
            for r in racers {
                finished += r.await.unwrap();
            }
            assert_eq!(finished, 1, "round {round}: one finalize finished the job");
            assert_eq!(qs[1].job(&job.id).await.unwrap().unwrap().state, "succeeded");
            assert_eq!(ends(&qs[2], &job.id).await, [(0, "job.succeeded".to_string())], "one webhook");
        }
    }
}

/// The dashboard's and `/metrics`' numbers, computed in each backend's SQL.
async fn overview_and_metrics_count_what_happened(q: Queue) {
    let job = job_with(&q, &["240p"]).await;
    sqlx::query("UPDATE jobs SET probe = $1 WHERE id = $2").bind(r#"{"duration": 120.0}"#).bind(&job.id).execute(q.pool()).await.unwrap();
    let l = q.lease("w", &[], T0 + 1_000).await.unwrap().unwrap();
    let result = serde_json::json!({"files": [{"path": "a.mp4", "size": 1000}, {"path": "b.m3u8", "size": 24}]});
    q.complete(&l.task_id, "w", l.epoch, &result, T0 + 61_000).await.unwrap();
    assert!(q.promoted(&l.task_id, T0 + 61_000).await.unwrap().succeeded());
    // A chunked job of 60 s, whose one rendition its join publishes at T0 + 100 s.
    let (chunked, _) = q.create_job(&web_job(), T0).await.unwrap();
    sqlx::query("UPDATE jobs SET probe = $1 WHERE id = $2")
        .bind(r#"{"duration": 60.0}"#)
        .bind(&chunked.id)
        .execute(q.pool())
        .await
        .unwrap();
    let span = ChunkSpan { index: 0, first_frame: 0, frames: None };
    q.add_tasks(&chunked.id, &[NewTask::audio("240p"), NewTask::chunk("240p", span, None), NewTask::join("240p")], T0).await.unwrap();
    for (at, kind) in [(70_000, TaskKind::Audio), (80_000, TaskKind::Chunk), (90_000, TaskKind::Join)] {
        let l = q.lease("w", &[], T0 + at).await.unwrap().unwrap();
        assert_eq!(l.kind, kind);
        done(&q, &l, "w", T0 + at + if kind == TaskKind::Join { 10_000 } else { 5_000 }).await;
    }
    let o = q.overview(T0 + 120_000).await.unwrap();
    assert_eq!(o.jobs_by_state, [("finalizing".to_string(), 2)]);
    assert_eq!(o.tasks_by_state, [("succeeded".to_string(), 4)]);
    // 120 s and 60 s of media: the join's rendition counts, its chunk does not.
    assert!((o.throughput_per_minute.iter().sum::<f64>() - 3.0).abs() < 1e-9, "{:?}", o.throughput_per_minute);
    assert_eq!(o.avg_queue_wait_ms, Some((1_000.0 + 70_000.0 + 80_000.0 + 90_000.0) / 4.0));
    // Playable after 61 s and 100 s (finalizing jobs were playable too): the median of two is the later.
    assert_eq!(o.median_first_playable_ms, Some(100_000));
    let m = q.metrics(T0 + 120_000).await.unwrap();
    assert_eq!(m.bytes_published, 1024);
    let kind = |k: &str| m.task_durations.iter().find(|d| d.0 == k).unwrap().clone();
    let transcode = kind("transcode");
    assert_eq!((transcode.1[3], transcode.2, transcode.3), (1, 1, 60.0), "one task of 60 s");
    for (k, seconds) in [("audio", 5.0), ("chunk", 5.0), ("join", 10.0)] {
        assert_eq!((kind(k).1[2], kind(k).2, kind(k).3), (1, 1, seconds), "{k}");
    }
    assert_eq!(kind("thumbnails").2, 0, "a kind without tasks yet is reported, with zeros");
}

/// `/metrics`' counters take in each row once it has settled, adding only the
/// rows since on each scrape, and never go down: a task counted and then queued
/// again (a file of it found missing) still counts, and counts again when it
/// succeeds again. A failed attempt counts once.
async fn metrics_add_up_each_settled_row_once_and_never_go_down(q: Queue) {
    use crate::stats::SETTLE_MS;
    job_with(&q, &["240p", "360p"]).await;
    let transcodes = |m: &crate::stats::Metrics| {
        let t = m.task_durations.iter().find(|d| d.0 == "transcode").unwrap();
        (t.1[0], t.2, t.3)
    };
    let first = q.lease("w", &[], T0).await.unwrap().unwrap();
    done(&q, &first, "w", T0 + 500).await;
    let second = q.lease("w", &[], T0 + 1_000).await.unwrap().unwrap();
    q.fail(&second.task_id, "w", second.epoch, "the engine crashed", true, "", T0 + 2_000).await.unwrap();
    let failed = |m: &crate::stats::Metrics| m.failures.clone();
    for now in [T0 + 3_000, T0 + SETTLE_MS + 3_000, T0 + SETTLE_MS + 4_000, T0 + 10 * SETTLE_MS] {
        let m = q.metrics(now).await.unwrap();
        assert_eq!(transcodes(&m), (1, 1, 0.5), "at {now}: one task of 0.5 s, once");
        assert_eq!(failed(&m), [("failed".to_string(), 1)], "at {now}");
    }
    set(&q, "UPDATE tasks SET state = 'queued', finished_at = NULL WHERE rendition = '240p' AND $1 = $1", 0).await;
    let later = T0 + 10 * SETTLE_MS;
    assert_eq!(transcodes(&q.metrics(later + 1).await.unwrap()), (1, 1, 0.5), "a counter never goes down");
    let again = q.lease("w", &[], later).await.unwrap().unwrap();
    assert_eq!(again.rendition.as_deref(), Some("240p"));
    done(&q, &again, "w", later + 2_000).await;
    for now in [later + 3_000, later + SETTLE_MS + 3_000, later + SETTLE_MS + 3_001] {
        assert_eq!(transcodes(&q.metrics(now).await.unwrap()), (1, 2, 2.5), "at {now}: counted again, once");
    }
    // A coordinator starting afresh counts what is there now.
    let m = Queue { tally: Default::default(), ..q.clone() }.metrics(later + SETTLE_MS + 3_001).await.unwrap();
    assert_eq!((transcodes(&m), m.bytes_published), ((0, 1, 2.0), 0));
}

/// The migration that added `tasks.chunk_headers` claims each rendition with
/// accepted chunks for the first one's headers, as its check would have.
async fn the_chunk_headers_backfill_claims_renditions_with_accepted_chunks(q: Queue) {
    let migration = match q.backend() {
        Backend::Sqlite => include_str!("../../migrations/sqlite/0027_chunk_headers.sql"),
        Backend::Postgres => include_str!("../../migrations/postgres/0023_chunk_headers.sql"),
    };
    let backfill = &migration[migration.find("UPDATE tasks").expect("the backfill")..];
    let caps = proto::wire::Capabilities { encoders: vec![], cores: 2, tags: vec![], encoder_build: None };
    q.register_worker("w", "w", 2, &caps, "0", T0).await.unwrap();
    let (job, _) = q.create_job(&web_job(), T0).await.unwrap();
    let span = |i: u32| ChunkSpan { index: i, first_frame: u64::from(i) * 100, frames: (i < 2).then_some(100) };
    let tasks: Vec<NewTask> = ["240p", "360p"].iter().flat_map(|r| (0..3).map(move |i| NewTask::chunk(r, span(i), None))).collect();
    q.add_tasks(&job.id, &tasks, T0).await.unwrap();
    // 240p's chunk 1 was accepted before claims existed; 360p has none accepted.
    let (first, second) = (q.lease("w", &[], T0).await.unwrap().unwrap(), q.lease("w", &[], T0).await.unwrap().unwrap());
    assert_eq!((first.chunk.unwrap().index, second.chunk.unwrap().index), (0, 1));
    q.complete(&second.task_id, "w", second.epoch, &serde_json::json!({"report": {"extradata_sha256": "h1"}}), T0).await.unwrap();
    q.promoted(&second.task_id, T0).await.unwrap();
    sqlx::query(backfill).execute(q.pool()).await.unwrap();
    let claims: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT rendition, chunk_headers FROM tasks WHERE job_id = $1 ORDER BY rendition, chunk")
            .bind(&job.id)
            .fetch_all(q.pool())
            .await
            .unwrap();
    let h1 = Some(String::from("h1"));
    let want = [("240p", &h1), ("240p", &h1), ("240p", &h1), ("360p", &None), ("360p", &None), ("360p", &None)];
    assert_eq!(claims.iter().map(|(r, h)| (r.as_str(), h)).collect::<Vec<_>>(), want);
    // Other headers from chunk 0 no longer pass; the same do.
    assert_eq!(q.claim_chunk_headers((&first.task_id, "w", first.epoch), "h2", T0).await.unwrap(), HeadersClaim::Differ);
    assert_eq!(q.claim_chunk_headers((&first.task_id, "w", first.epoch), "h1", T0).await.unwrap(), HeadersClaim::Match);
}

/// The migration that added `tasks.published_bytes` fills it from the results
/// already stored, as `complete` writes it for new ones: run again over tasks
/// whose column was emptied, it gives back what `complete` wrote.
async fn the_published_bytes_backfill_gives_what_complete_writes(q: Queue) {
    let migration = match q.backend() {
        Backend::Sqlite => include_str!("../../migrations/sqlite/0023_published_bytes.sql"),
        Backend::Postgres => include_str!("../../migrations/postgres/0019_published_bytes.sql"),
    };
    let backfill = &migration[migration.find("UPDATE tasks").expect("the backfill")..];
    let job = job_with(&q, &["240p", "360p", "480p", "720p"]).await;
    let results = [
        serde_json::json!({"files": [{"path": "a.mp4", "size": 1000}, {"path": "b.m3u8", "size": 24}]}),
        // Over 4 GiB: a long film's MP4.
        serde_json::json!({"files": [{"path": "v.mp4", "size": 6_000_000_000u64}, {"path": "i.m3u8", "size": 1}]}),
        serde_json::json!({"files": []}),
        serde_json::json!({}),
    ];
    for (i, result) in results.iter().enumerate() {
        let l = q.lease("w", &[], T0 + i as i64).await.unwrap().unwrap();
        q.complete(&l.task_id, "w", l.epoch, result, T0 + 10 + i as i64).await.unwrap();
    }
    let bytes = |q: &Queue| {
        let (pool, job) = (q.pool().clone(), job.id.clone());
        async move {
            sqlx::query("SELECT name, CAST(COALESCE(published_bytes, 0) AS BIGINT) FROM tasks WHERE job_id = $1 ORDER BY name")
                .bind(job)
                .fetch_all(&pool)
                .await
                .unwrap()
                .into_iter()
                .map(|r| (sqlx::Row::get::<String, _>(&r, 0), sqlx::Row::get::<i64, _>(&r, 1)))
                .collect::<Vec<_>>()
        }
    };
    let written = bytes(&q).await;
    let named = |n: &str, b: i64| (n.to_string(), b);
    assert_eq!(written, [named("240p", 1024), named("360p", 6_000_000_001), named("480p", 0), named("720p", 0)]);
    sqlx::query("UPDATE tasks SET published_bytes = NULL").execute(q.pool()).await.unwrap();
    sqlx::query(backfill).execute(q.pool()).await.unwrap();
    assert_eq!(bytes(&q).await, written);
}

async fn tasks_go_only_to_workers_with_every_required_tag(q: Queue) {
    let mut new = url_job(None);
    new.requires_tags = vec!["eu".into(), "gpu".into()];
    let (job, _) = q.create_job(&new, T0).await.unwrap();
    assert_eq!(job.requires_tags, ["eu", "gpu"]);
    let c = claim(&q, &job.id, Chore::Probe, T0).await.unwrap();
    let tasks = [NewTask::transcode("240p", None)];
    assert!(q.plan_job(&job.id, c, None, &serde_json::json!({}), &tasks, T0).await.unwrap());
    let tags = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let caps = |t: &[&str]| proto::wire::Capabilities { encoders: vec!["libx264".into()], cores: 2, tags: tags(t), encoder_build: None };
    // A worker with only one of the tags is live but cannot take it: the wait shows.
    q.register_worker("gpu-us", "gpu-us", 1, &caps(&["gpu", "us"]), "0", T0).await.unwrap();
    q.check_capable_workers(60_000, T0).await.unwrap();
    let waiting = q.job(&job.id).await.unwrap().unwrap().waiting_for;
    assert_eq!(waiting.as_deref(), Some("a capable worker: no live worker has the tags eu, gpu"));
    let gpu_us = tags(&["gpu", "us"]);
    assert!(q.lease_bundle("gpu-us", &Fit { encoders: &[], tags: &gpu_us }, T0, Bundling::NONE).await.unwrap().is_empty());
    // One with both (and more) takes it, and the wait is over.
    q.register_worker("gpu-eu", "gpu-eu", 1, &caps(&["eu", "gpu", "ssd"]), "0", T0).await.unwrap();
    q.check_capable_workers(60_000, T0 + 1).await.unwrap();
    assert_eq!(q.job(&job.id).await.unwrap().unwrap().waiting_for.as_deref(), Some("a free worker"));
    let all = tags(&["eu", "gpu", "ssd"]);
    assert_eq!(q.lease_bundle("gpu-eu", &Fit { encoders: &[], tags: &all }, T0 + 1, Bundling::NONE).await.unwrap().len(), 1);
    // A job without tags goes to any worker.
    job_with(&q, &["240p"]).await;
    assert_eq!(q.lease_bundle("gpu-us", &Fit { encoders: &[], tags: &gpu_us }, T0 + 2, Bundling::NONE).await.unwrap().len(), 1);
}

async fn a_task_whose_tags_no_worker_has_fails_after_the_wait_with_that_reason(q: Queue) {
    let mut new = url_job(None);
    new.requires_tags = vec!["gpu".into()];
    let (job, _) = q.create_job(&new, T0).await.unwrap();
    let c = claim(&q, &job.id, Chore::Probe, T0).await.unwrap();
    let tasks = [NewTask::transcode("240p", Some("libx264".into()))];
    assert!(q.plan_job(&job.id, c, None, &serde_json::json!({}), &tasks, T0).await.unwrap());
    let caps = proto::wire::Capabilities { encoders: vec!["libx264".into()], cores: 2, tags: vec![], encoder_build: None };
    q.register_worker("plain", "plain", 1, &caps, "0", T0).await.unwrap();
    q.check_capable_workers(60_000, T0).await.unwrap();
    q.worker_seen("plain", None, None, T0 + 60_000).await.unwrap();
    assert_eq!(q.check_capable_workers(60_000, T0 + 60_001).await.unwrap(), std::slice::from_ref(&job.id));
    let j = q.job(&job.id).await.unwrap().unwrap();
    assert_eq!(
        (j.state.as_str(), j.error.as_deref()),
        ("failed", Some("no live worker has both the encoder libx264 and the tags gpu (waited 60 s for one)"))
    );
}

/// A chunked job: the lowest rung's chunks go first and alone, over every free
/// worker; a join waits for its rendition's chunks and the audio; the other rungs'
/// chunks go one chunk at a time, the same chunk of several rungs in one lease.
async fn a_chunked_job_joins_each_rung_once_its_chunks_and_audio_are_done(q: Queue) {
    let caps = proto::wire::Capabilities { encoders: vec![], cores: 2, tags: vec![], encoder_build: None };
    for w in ["w1", "w2"] {
        q.register_worker(w, w, 1, &caps, "0", T0).await.unwrap();
    }
    let (job, _) = q.create_job(&web_job(), T0).await.unwrap();
    let span = |i: u32| ChunkSpan { index: i, first_frame: u64::from(i) * 100, frames: (i < 2).then_some(100) };
    let mut tasks = vec![NewTask::audio("240p")];
    tasks.extend((0..3).map(|i| NewTask::chunk("240p", span(i), None)));
    tasks.extend(["240p", "360p"].map(NewTask::join));
    tasks.extend((0..3).map(|i| NewTask::chunk("360p", span(i), None)));
    q.add_tasks(&job.id, &tasks, T0).await.unwrap();
    let names = |ls: &[Lease]| ls.iter().map(|l| l.name.clone()).collect::<Vec<_>>();
    let up_to_4 = Bundling { max_renditions: 4, thumbnails: true };

    let audio = q.lease_bundle_for("w1", &[], T0, up_to_4).await.unwrap();
    assert_eq!(names(&audio), ["audio"]);
    // The lowest rung's chunks, one per lease, with their frames.
    let c0 = q.lease_bundle_for("w2", &[], T0, up_to_4).await.unwrap();
    assert_eq!(names(&c0), ["240p.c0000"]);
    assert_eq!(c0[0].chunk, Some(span(0)));
    assert_kept_target_is_read_target(&q, &c0[0]).await;
    done(&q, &c0[0], "w2", T0 + 1).await;
    done(&q, &audio[0], "w1", T0 + 1).await;
    let c1 = q.lease_bundle_for("w1", &[], T0 + 2, up_to_4).await.unwrap();
    let c2 = q.lease_bundle_for("w2", &[], T0 + 2, up_to_4).await.unwrap();
    assert_eq!((names(&c1), names(&c2)), (vec!["240p.c0001".to_string()], vec!["240p.c0002".to_string()]));
    assert_eq!(c2[0].chunk.unwrap().frames, None, "the last chunk runs to the source's end");
    done(&q, &c1[0], "w1", T0 + 3).await;
    // No join yet: chunk 2 is still running. The 360p chunks go, each alone while
    // the job is not playable and another worker is free.
    let next = q.lease_bundle_for("w1", &[], T0 + 3, up_to_4).await.unwrap();
    assert_eq!(names(&next), ["360p.c0000"]);
    done(&q, &next[0], "w1", T0 + 4).await;
    done(&q, &c2[0], "w2", T0 + 4).await;
    // 240p's parts are all done: its join comes before any more chunks; 360p's waits.
    let join = q.lease_bundle_for("w1", &[], T0 + 5, up_to_4).await.unwrap();
    assert_eq!((names(&join), join[0].kind), (vec!["240p".to_string()], TaskKind::Join));
    let more = q.lease_bundle_for("w2", &[], T0 + 5, up_to_4).await.unwrap();
    assert_eq!(names(&more), ["360p.c0001"]);
    done(&q, &join[0], "w1", T0 + 6).await;
    assert!(q.job(&job.id).await.unwrap().unwrap().playable);
    done(&q, &more[0], "w2", T0 + 6).await;
    let last = q.lease_bundle_for("w1", &[], T0 + 7, up_to_4).await.unwrap();
    assert_eq!(names(&last), ["360p.c0002"]);
    assert!(q.lease_bundle_for("w2", &[], T0 + 7, up_to_4).await.unwrap().is_empty(), "360p's join waits for its last chunk");
    done(&q, &last[0], "w1", T0 + 8).await;
    let join = q.lease_bundle_for("w2", &[], T0 + 9, up_to_4).await.unwrap();
    assert_eq!((names(&join), join[0].kind), (vec!["360p".to_string()], TaskKind::Join));
    done(&q, &join[0], "w2", T0 + 10).await;
    let j = q.job(&job.id).await.unwrap().unwrap();
    assert_eq!(j.state, "finalizing");
    assert_eq!(j.chunks, Some(ChunksView { count: 3, done: 3 }));

    // Once playable, a lone worker's lease takes the same chunk of every remaining rung.
    q.set_draining("w2", true).await.unwrap();
    let (job, _) = q.create_job(&web_job(), T0).await.unwrap();
    let mut tasks = vec![NewTask::chunk("240p", span(0), None), NewTask::join("240p")];
    for i in 0..2 {
        tasks.extend(["720p", "360p"].map(|r| NewTask::chunk(r, span(i), None)));
    }
    q.add_tasks(&job.id, &tasks, T0).await.unwrap();
    let first = q.lease_bundle_for("w1", &[], T0 + 20, up_to_4).await.unwrap();
    done(&q, &first[0], "w1", T0 + 21).await;
    let join = q.lease_bundle_for("w1", &[], T0 + 21, up_to_4).await.unwrap();
    done(&q, &join[0], "w1", T0 + 22).await;
    let bundle = q.lease_bundle_for("w1", &[], T0 + 23, up_to_4).await.unwrap();
    assert_eq!(names(&bundle), ["720p.c0000", "360p.c0000"]);
    // A canceled job cancels every chunk.
    q.cancel_job(&job.id, T0 + 24).await.unwrap();
    let j = q.job(&job.id).await.unwrap().unwrap();
    assert!(j.tasks.iter().filter(|t| t.kind == TaskKind::Chunk).all(|t| t.state == "canceled" || t.state == "succeeded"), "{:?}", j.tasks);
}

/// With more chunks queued than a bundle's share (a busy farm), the largest rung's
/// chunks go alone, and the smaller rungs of a chunk share one lease (one decode)
/// while their pixels together stay within the largest rung's.
async fn chunk_bundles_stay_within_the_largest_rung_and_shrink_at_the_job_end(q: Queue) {
    let caps = proto::wire::Capabilities { encoders: vec![], cores: 2, tags: vec![], encoder_build: None };
    for i in 0..8 {
        q.register_worker(&format!("w{i}"), "w", 1, &caps, "0", T0).await.unwrap();
    }
    let (job, _) = q.create_job(&web_job(), T0).await.unwrap();
    // The benchmark's job: ten chunks of the web ladder on eight machines.
    let n = 10;
    let span = |i: u32| ChunkSpan { index: i, first_frame: u64::from(i) * 100, frames: (i + 1 < n).then_some(100) };
    let rungs = [("720p", 1280, 720), ("480p", 854, 480), ("360p", 640, 360)];
    // Already playable: its lowest rung (here 240p, one chunk) is joined.
    let mut tasks = vec![NewTask::chunk("240p", span(0), None), NewTask::join("240p")];
    for (r, w, h) in rungs {
        tasks.extend((0..n).map(|i| NewTask::chunk(r, span(i), None).with_pixels(w, h)));
    }
    q.add_tasks(&job.id, &tasks, T0).await.unwrap();
    let up_to_4 = Bundling { max_renditions: 4, thumbnails: true };
    for w in ["w0", "w0"] {
        let l = q.lease_bundle_for(w, &[], T0, up_to_4).await.unwrap();
        done(&q, &l[0], w, T0 + 1).await;
    }
    // Every lease until the job's chunks are all out, each finished at once.
    let mut bundles = Vec::new();
    for i in 0.. {
        let w = format!("w{}", i % 8);
        let leased = q.lease_bundle_for(&w, &[], T0 + 2, up_to_4).await.unwrap();
        if leased.is_empty() {
            break;
        }
        for l in &leased {
            done(&q, l, &w, T0 + 3).await;
        }
        bundles.push(leased.iter().map(|l| l.name.clone()).collect::<Vec<_>>());
    }
    let mut each: Vec<&String> = bundles.iter().flatten().collect();
    each.sort();
    each.dedup();
    assert_eq!(each.len(), 3 * n as usize, "each task once: {bundles:?}");
    // The largest rung's chunks go alone, however much is left.
    assert!(bundles[..10].iter().enumerate().all(|(i, b)| *b == [format!("720p.c{i:04}")]), "{bundles:?}");
    // 480p + 360p = 640,320 pixels, within 720p's 921,600, go from one decode while
    // a live slot's even part of what is left holds them: for the first three chunks.
    for i in 0..3 {
        assert_eq!(bundles[10 + i], ["480p", "360p"].map(|r| format!("{r}.c{i:04}")), "{bundles:?}");
    }
    // Then the rungs spread over the farm again.
    assert_eq!(bundles[13], ["480p.c0003"], "{bundles:?}");
    assert_eq!(bundles.len(), 10 + 3 + 2 * 7, "{bundles:?}");
}

async fn uploads_append_at_their_offset_within_limits_and_one_coordinator_joins_them(q: Queue) {
    use crate::uploads::{AppendRefused, CreateRefused, MAX_OPEN_UPLOADS};
    let job = web_job();
    let later = T0 + 60_000;
    assert_eq!(q.create_upload("u1", "alice", &job, Some("a.mp4"), Some(100), 250, T0, later).await.unwrap(), Ok(()));
    assert_eq!(q.create_upload("u2", "bob", &job, None, Some(100), 250, T0, later).await.unwrap(), Ok(()));
    // 200 of the 250-byte spool are promised: 100 more do not fit.
    assert_eq!(q.create_upload("u3", "bob", &job, None, Some(100), 250, T0, later).await.unwrap(), Err(CreateRefused::SpoolFull(200)));
    for i in 0..MAX_OPEN_UPLOADS - 1 {
        assert_eq!(q.create_upload(&format!("d{i}"), "bob", &job, None, None, 250, T0, later).await.unwrap(), Ok(()));
    }
    assert_eq!(q.create_upload("d-last", "bob", &job, None, None, 250, T0, later).await.unwrap(), Err(CreateRefused::TooMany));

    // Parts append only at the offset, and never past the length.
    assert_eq!(q.append_part("u1", 0, "tus/u1/0", 60, None, T0, later).await.unwrap(), Ok(60));
    assert_eq!(q.append_part("u1", 0, "tus/u1/0b", 60, None, T0, later).await.unwrap(), Err(AppendRefused::Offset));
    assert_eq!(q.append_part("u1", 60, "tus/u1/1", 50, None, T0, later).await.unwrap(), Err(AppendRefused::TooLong));
    assert!(!q.lease_completion("u1", T0, T0 + 1_000).await.unwrap(), "an incomplete upload has no completion");
    assert_eq!(q.append_part("u1", 60, "tus/u1/1", 40, None, T0, later).await.unwrap(), Ok(100));
    assert_eq!(q.append_part("u1", 100, "tus/u1/2", 1, None, T0, later).await.unwrap(), Err(AppendRefused::TooLong));
    assert_eq!(q.upload_parts("u1").await.unwrap().len(), 2);

    // The completion is owed; one coordinator holds its lease, and the reconciler
    // looks away until it lapses.
    assert_eq!(q.owed_completions(T0, 10).await.unwrap(), vec!["u1".to_string()]);
    assert!(q.lease_completion("u1", T0, T0 + 1_000).await.unwrap());
    assert!(!q.lease_completion("u1", T0 + 500, T0 + 1_500).await.unwrap(), "held");
    assert!(q.owed_completions(T0 + 500, 10).await.unwrap().is_empty());
    q.renew_completion("u1", T0 + 2_000).await.unwrap();
    assert!(!q.lease_completion("u1", T0 + 1_500, T0 + 2_500).await.unwrap(), "renewed");
    assert_eq!(q.owed_completions(T0 + 2_001, 10).await.unwrap(), vec!["u1".to_string()], "lapsed: its holder died");
    assert!(q.lease_completion("u1", T0 + 2_001, T0 + 3_000).await.unwrap());
    assert!(q.claim_upload("u1", "job-1").await.unwrap());
    q.upload_done("u1", "job-1").await.unwrap();
    q.release_completion("u1").await.unwrap();
    assert!(q.owed_completions(T0 + 2_001, 10).await.unwrap().is_empty(), "done");
}

/// SQLite's group commit: many operations at once share commits, and each one
/// answers only once its batch is durable, so another connection (the pool, as
/// the dashboard reads) already sees what it wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_answer_only_once_their_shared_commit_is_done() {
    let dir = std::env::temp_dir().join(format!("drake-group-commit-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let q = Queue::open(&dir.join("drake.db"), config()).await.unwrap();
    let caps = proto::wire::Capabilities { encoders: vec!["libx264".into()], cores: 2, tags: vec![], encoder_build: None };
    let mut writers = Vec::new();
    for i in 0..64 {
        let (q, caps) = (q.clone(), caps.clone());
        writers.push(tokio::spawn(async move {
            let id = format!("w{i}");
            q.register_worker(&id, &id, 1, &caps, "test", T0).await.unwrap();
            // Seen at once from another connection: committed before it returned.
            let seen: i64 = sql::query_scalar("SELECT COUNT(*) FROM workers WHERE id = $1")
                .bind(&id)
                .fetch_one(&mut q.read().await.unwrap())
                .await
                .unwrap();
            assert_eq!(seen, 1, "{id} was answered before its commit");
            // A single statement runs without a savepoint: one that fails undoes
            // only itself, and the batch it was in commits the others' writes.
            assert!(q.register_worker(&id, "again", 1, &caps, "test", T0).await.is_err(), "{id} registered twice");
            // A transaction that fails leaves the others' writes alone.
            let mut tx = q.begin().await.unwrap();
            sql::query("UPDATE workers SET name = 'undone' WHERE id = $1").bind(&id).execute(&mut tx).await.unwrap();
            drop(tx);
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let rows: Vec<(String, String)> =
        sql::query_as("SELECT id, name FROM workers ORDER BY id").fetch_all(&mut q.read().await.unwrap()).await.unwrap();
    assert_eq!(rows.len(), 64);
    assert!(rows.iter().all(|(id, name)| id == name), "a dropped transaction was kept: {rows:?}");
    drop(q);
    let _ = std::fs::remove_dir_all(&dir);
}

/// PostgreSQL's first claim (`drake_claim`, migration 0024) runs the claim
/// SQLite runs and a bundle's companions build on, word for word.
#[test]
fn the_postgres_claim_function_runs_the_same_claim() {
    let words = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let function = words(include_str!("../../migrations/postgres/0024_failed_by_every_worker.sql"));
    let claim = words(lease_claim!("FOR UPDATE SKIP LOCKED", "", "$5"));
    assert!(function.contains(&claim), "drake_claim differs from lease_claim!:\n{claim}");
    assert!(claim.contains(&format!("t.run_after + {RETRY_ELSEWHERE_MS} <= $2")), "the claim's wait for another worker");
}
