//! Owed work: the chores a job's state makes owed (its probe, its finalize), the
//! promotions completed tasks owe, and the one webhook each job's end owes. Each is
//! recorded by the transaction that makes it owed, so a crash at any instant leaves
//! it in the database for the reconciler, never only in memory.
//!
//! Chore protocol. A job row carries `chore` (what it is owed), `chore_seq`,
//! `chore_attempts` and `chore_due_at`. [`Queue::arm_chores`] takes every owed chore
//! that is due, bumps its seq and returns it for pushing to apalis (keyed by that
//! seq, so one push per arm). A chore first [`Queue::claim_chore`]s with the seq it
//! was pushed with; the claim bumps the seq again and is the only token that can
//! finish it ([`Queue::plan_job`], [`Queue::finish_job`]) or record its failure
//! ([`Queue::chore_failed`]). A duplicate or stale chore claims nothing and does
//! nothing. A claim that never finishes (its coordinator died) falls due again after
//! the claim's timeout and counts as a failed attempt; attempts are bounded, and the
//! last one ends the job `failed` with the reason.

use super::sql::{self, Exec};
use super::{Backend, NewTask, Queue, QueueError, Result, is_terminal, job_state, kind_str, settle_job};
use serde_json::json;

/// A chore a job can be owed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chore {
    /// Probe the source and plan the tasks.
    Probe,
    /// Verify the published outputs, write the master playlist and manifest.
    Finalize,
}

impl Chore {
    pub fn as_str(self) -> &'static str {
        match self {
            Chore::Probe => "probe",
            Chore::Finalize => "finalize",
        }
    }

    fn parse(s: &str) -> Option<Chore> {
        match s {
            "probe" => Some(Chore::Probe),
            "finalize" => Some(Chore::Finalize),
            _ => None,
        }
    }

    /// How long a claim may run before it counts as lost.
    pub fn claim_timeout_ms(self) -> i64 {
        match self {
            // The probe child has 120 s.
            Chore::Probe => 180_000,
            // Reading back every output for its checksum.
            Chore::Finalize => 900_000,
        }
    }
}

/// Attempts at one owed chore before the job fails.
pub const CHORE_ATTEMPTS: i64 = 3;

/// The `settings` key that says since when no worker has been live (absent while
/// some are), written by [`Queue::check_capable_workers`].
const NO_LIVE_WORKER: &str = "no_live_worker_since";

/// The `settings` key that says why no live worker takes tasks (every one is paused
/// or draining; absent while one does), written by [`Queue::check_capable_workers`].
const NONE_TAKES_TASKS: &str = "no_worker_takes_tasks";

/// Longest wait between a chore's attempts while a disk is full.
const SPACE_RETRY_MAX_MS: i64 = 60_000;

/// After an owed chore is pushed, how long before it is pushed again if nothing
/// claimed it (apalis lost it, or its push failed).
pub const CHORE_PUSH_GRACE_MS: i64 = 60_000;

/// How long a job directory written ahead of its job may wait for the job: longer
/// than storing the largest upload may take. A directory whose coordinator died
/// is removed sooner ([`Queue::unclaimed_dirs_due`]).
pub const UNCLAIMED_DIR_GRACE_MS: i64 = 24 * 3_600_000;

/// The longest wait between two tries at removing an unclaimed job directory.
const UNCLAIMED_DIR_RETRY_MAX_MS: i64 = 300_000;

/// An owed chore, armed for one push: the seq it must claim with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owed {
    pub job_id: String,
    pub chore: Chore,
    pub seq: i64,
}

/// A claimed chore: the token that finishes it, and which attempt this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChoreClaim {
    pub token: i64,
    pub attempt: i64,
}

/// A promotion a completed task owes: move `jobs/JOB/.staging/NAME.eEPOCH` into place.
#[derive(Debug, Clone, PartialEq)]
pub struct Promotion {
    pub task_id: String,
    pub job_id: String,
    pub kind: super::TaskKind,
    /// The task's name (see [`super::task_name`]).
    pub name: String,
    pub epoch: i64,
    /// Files the worker published, `{"path", "size", "sha256"}`.
    pub files: Vec<serde_json::Value>,
}

pub(super) fn promotion_row(r: sql::Row) -> Promotion {
    let result: Option<String> = r.get(5);
    let result: serde_json::Value = result.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
    Promotion {
        task_id: r.get(0),
        job_id: r.get(1),
        kind: super::parse_kind(&r.get::<String, _>(2)),
        name: r.get(3),
        epoch: r.get(4),
        files: result["files"].as_array().cloned().unwrap_or_default(),
    }
}

/// Whether a live worker can take the queued task `tasks`: it has the task's
/// encoder (if it needs one) and every tag the task's job requires. `$2` is the
/// oldest heartbeat that counts as live.
macro_rules! capable_sqlite {
    () => {
        "EXISTS (SELECT 1 FROM workers w WHERE w.removed = 0 AND w.last_seen >= $2
             AND (tasks.requires IS NULL
                  OR EXISTS (SELECT 1 FROM json_each(w.capabilities, '$.encoders') e WHERE e.value = tasks.requires))
             AND NOT EXISTS (SELECT 1 FROM job_tags jt WHERE jt.job_id = tasks.job_id
                  AND NOT EXISTS (SELECT 1 FROM json_each(w.capabilities, '$.tags') g WHERE g.value = jt.tag)))"
    };
}

/// [`capable_sqlite`] in PostgreSQL's JSON functions.
macro_rules! capable_postgres {
    () => {
        "EXISTS (SELECT 1 FROM workers w WHERE w.removed = 0 AND w.last_seen >= $2
             AND (tasks.requires IS NULL
                  OR EXISTS (SELECT 1 FROM jsonb_array_elements_text(w.capabilities::jsonb -> 'encoders') e(value) WHERE e.value = tasks.requires))
             AND NOT EXISTS (SELECT 1 FROM job_tags jt WHERE jt.job_id = tasks.job_id
                  AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements_text(w.capabilities::jsonb -> 'tags') g(value) WHERE g.value = jt.tag)))"
    };
}

impl Queue {
    /// Arms every owed chore that is due (or, with `job`, that job's), and ends the
    /// jobs whose chore has no attempts left. A chore claimed by another coordinator
    /// whose heartbeats stopped ([`Queue::coordinator_seen`]) is due at once: its
    /// claim died with that process.
    pub async fn arm_chores(&self, job: Option<&str>, me: &str, now: i64) -> Result<Vec<Owed>> {
        let mut tx = self.write_tx().await?;
        let due = sql::query(
            "SELECT id, chore, chore_attempts, chore_error, source, chore_step FROM jobs
             WHERE chore IS NOT NULL AND ($1 IS NULL OR id = $1)
               AND (chore_due_at <= $2
                    OR (chore_claimed_by IS NOT NULL AND chore_claimed_by != $3
                        AND chore_claimed_by NOT IN (SELECT id FROM coordinators WHERE last_seen >= $4)))
             ORDER BY chore_due_at LIMIT 500",
        )
        .bind(job)
        .bind(now)
        .bind(me)
        .bind(now - super::COORDINATOR_TTL_MS)
        .fetch_all(&mut tx)
        .await?;
        let mut armed = Vec::new();
        for row in due {
            let (id, chore, attempts, error, source, step): (String, String, i64, Option<String>, String, Option<String>) =
                (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4), row.get(5));
            let Some(chore) = Chore::parse(&chore) else { continue };
            if attempts >= CHORE_ATTEMPTS {
                // The last claim never finished: its coordinator stopped mid-chore.
                let error = error.unwrap_or_else(|| "the coordinator running it stopped".into());
                let reason = gave_up(&step.unwrap_or_else(|| default_step(chore, &source)), attempts, &error);
                end_job(&mut tx, &id, "failed", Some(&reason), now).await?;
                continue;
            }
            let seq: i64 = sql::query_scalar(
                "UPDATE jobs SET chore_seq = chore_seq + 1, chore_due_at = $2, chore_claimed_by = NULL WHERE id = $1 RETURNING chore_seq",
            )
            .bind(&id)
            .bind(now + CHORE_PUSH_GRACE_MS)
            .fetch_one(&mut tx)
            .await?;
            armed.push(Owed { job_id: id, chore, seq });
        }
        tx.commit().await?;
        Ok(armed)
    }

    /// Makes due at once the chores claimed by coordinator `me` whose run is no
    /// longer in this process (`running` says which jobs' are): the run ended
    /// without recording its outcome (an apalis worker died under it, or the
    /// database refused the record). Otherwise they would wait out their claim's
    /// timeout. The attempt counts, as a claim that died with its coordinator does.
    /// Returns the jobs made due.
    pub async fn rearm_lost_chores(&self, me: &str, running: impl Fn(&str) -> bool, now: i64) -> Result<Vec<String>> {
        // A live claim is due in the future (its timeout); the index on due times
        // keeps this to the chores armed or claimed lately.
        let claimed = sql::query("SELECT id, chore_seq FROM jobs WHERE chore IS NOT NULL AND chore_due_at > $1 AND chore_claimed_by = $2")
            .bind(now)
            .bind(me)
            .fetch_all(&mut self.read().await?)
            .await?;
        let mut lost = Vec::new();
        for row in claimed {
            let (job, seq): (String, i64) = (row.get(0), row.get(1));
            // Runs enter `running` before they claim, so a claim read above whose
            // job is not there now has ended; the seq keeps a newer claim out.
            if running(&job) {
                continue;
            }
            let rearmed = sql::query(
                "UPDATE jobs SET chore_due_at = $4, chore_error = $5, updated_at = $4
                 WHERE id = $1 AND chore IS NOT NULL AND chore_seq = $2 AND chore_claimed_by = $3",
            )
            .bind(&job)
            .bind(seq)
            .bind(me)
            .bind(now)
            .bind("its last run stopped before it recorded an outcome")
            .execute(&mut self.auto())
            .await?;
            if rearmed.rows_affected() > 0 {
                lost.push(job);
            }
        }
        Ok(lost)
    }

    /// Ended jobs whose staging area is owed a sweep: ended at least two lease TTLs
    /// ago, so no worker holding one of their leases can still be publishing.
    pub async fn unswept_jobs(&self, now: i64) -> Result<Vec<String>> {
        Ok(sql::query_scalar(
            "SELECT id FROM jobs WHERE swept = 0 AND state IN ('succeeded', 'failed', 'canceled') AND updated_at < $1 ORDER BY updated_at LIMIT 100",
        )
        .bind(now - 2 * self.cfg.lease_ttl_ms)
        .fetch_all(&mut self.auto())
        .await?)
    }

    /// Records that an ended job's staging area was swept.
    pub async fn swept(&self, job: &str) -> Result<()> {
        sql::query("UPDATE jobs SET swept = 1 WHERE id = $1 AND state IN ('succeeded', 'failed', 'canceled')")
            .bind(job)
            .execute(&mut self.auto())
            .await?;
        Ok(())
    }

    /// Records that coordinator `me` is about to write job `job`'s directory on the
    /// store before the job exists (see migration sqlite 0021). Unless
    /// [`Queue::forget_unclaimed_dir`] follows, the reconciler removes the directory
    /// once it is [`UNCLAIMED_DIR_GRACE_MS`] old, or as soon as `me` is gone.
    pub async fn owe_unclaimed_dir(&self, job: &str, me: &str, now: i64) -> Result<()> {
        sql::query(
            "INSERT INTO unclaimed_job_dirs (job_id, coordinator, due_at) VALUES ($1, $2, $3)
             ON CONFLICT (job_id) DO UPDATE SET coordinator = excluded.coordinator, due_at = excluded.due_at",
        )
        .bind(job)
        .bind(me)
        .bind(now + UNCLAIMED_DIR_GRACE_MS)
        .execute(&mut self.auto())
        .await?;
        Ok(())
    }

    /// Nothing more is owed for job `job`'s directory: its job exists, or it was removed.
    pub async fn forget_unclaimed_dir(&self, job: &str) -> Result<()> {
        sql::query("DELETE FROM unclaimed_job_dirs WHERE job_id = $1").bind(job).execute(&mut self.auto()).await?;
        Ok(())
    }

    /// A removal of job `job`'s unclaimed directory failed, or must wait for the
    /// reconciler to see whether the job exists: coordinator `me` tries again after
    /// a backoff that grows with the attempts (1 s first).
    pub async fn unclaimed_dir_failed(&self, job: &str, me: &str, error: &str, now: i64) -> Result<()> {
        sql::query(
            "UPDATE unclaimed_job_dirs SET coordinator = $2, attempts = attempts + 1, error = $3,
                    due_at = $4 + CASE WHEN attempts >= 8 THEN $5 ELSE 1000 * (1 << attempts) END
             WHERE job_id = $1",
        )
        .bind(job)
        .bind(me)
        .bind(error)
        .bind(now)
        .bind(UNCLAIMED_DIR_RETRY_MAX_MS)
        .execute(&mut self.auto())
        .await?;
        Ok(())
    }

    /// Unclaimed job directories owed a removal now: due, or written by a
    /// coordinator that is gone. Each with whether its job exists after all (then
    /// the directory is the job's, and only the row goes).
    pub async fn unclaimed_dirs_due(&self, me: &str, now: i64) -> Result<Vec<(String, bool)>> {
        let rows = sql::query(
            "SELECT o.job_id, CASE WHEN EXISTS (SELECT 1 FROM jobs j WHERE j.id = o.job_id) THEN 1 ELSE 0 END
             FROM unclaimed_job_dirs o
             WHERE o.due_at <= $1
                OR (o.coordinator <> $2 AND o.coordinator NOT IN (SELECT id FROM coordinators WHERE last_seen >= $3))
             ORDER BY o.due_at LIMIT 100",
        )
        .bind(now)
        .bind(me)
        .bind(now - super::COORDINATOR_TTL_MS)
        .fetch_all(&mut self.auto())
        .await?;
        Ok(rows.iter().map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1) != 0)).collect())
    }

    /// Whether a job still owes its probe.
    pub async fn owes_probe(&self, job: &str) -> Result<bool> {
        let owed: i64 =
            sql::query_scalar("SELECT CASE WHEN EXISTS (SELECT 1 FROM jobs WHERE id = $1 AND chore = 'probe') THEN 1 ELSE 0 END")
                .bind(job)
                .fetch_one(&mut self.auto())
                .await?;
        Ok(owed != 0)
    }

    /// Claims an owed chore pushed with `seq`, for process `me`. `None`: it is not
    /// owed any more, or a later push superseded this one.
    pub async fn claim_chore(&self, job: &str, chore: Chore, seq: i64, me: &str, now: i64) -> Result<Option<ChoreClaim>> {
        let row = sql::query(
            "UPDATE jobs SET chore_seq = chore_seq + 1, chore_attempts = chore_attempts + 1, chore_due_at = $4, chore_claimed_by = $5
             WHERE id = $1 AND chore = $2 AND chore_seq = $3 RETURNING chore_seq, chore_attempts",
        )
        .bind(job)
        .bind(chore.as_str())
        .bind(seq)
        .bind(now + chore.claim_timeout_ms())
        .bind(me)
        .fetch_optional(&mut self.auto())
        .await?;
        Ok(row.map(|r| ChoreClaim { token: r.get(0), attempt: r.get(1) }))
    }

    /// Records a failed attempt at a claimed chore, at `step` (e.g. "fetching URL";
    /// `None`: the chore's own name): the next is due after a backoff, or, with no
    /// attempts left, the job fails with the reason, e.g. `fetching URL failed 3
    /// times: connection refused`. False when the claim was superseded (the job was
    /// canceled or retried meanwhile).
    pub async fn chore_failed(
        &self,
        job: &str,
        chore: Chore,
        claim: ChoreClaim,
        step: Option<&str>,
        error: &str,
        now: i64,
    ) -> Result<bool> {
        self.count_chore_failure(job, chore, claim, step, error, false, now).await
    }

    /// [`Queue::chore_failed`]; `waited`: the failure is a farm condition's, so a
    /// wait for the farm that has run out goes on counting (rather than ending).
    #[allow(clippy::too_many_arguments)]
    async fn count_chore_failure(
        &self,
        job: &str,
        chore: Chore,
        claim: ChoreClaim,
        step: Option<&str>,
        error: &str,
        waited: bool,
        now: i64,
    ) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let source: Option<String> = sql::query_scalar("SELECT source FROM jobs WHERE id = $1 AND chore = $2 AND chore_seq = $3")
            .bind(job)
            .bind(chore.as_str())
            .bind(claim.token)
            .fetch_optional(&mut tx)
            .await?;
        let Some(source) = source else {
            tx.commit().await?;
            return Ok(false);
        };
        let step = step.map_or_else(|| default_step(chore, &source), String::from);
        if claim.attempt >= CHORE_ATTEMPTS {
            end_job(&mut tx, job, "failed", Some(&gave_up(&step, claim.attempt, error)), now).await?;
        } else {
            sql::query(
                "UPDATE jobs SET chore_error = $2, chore_step = $5, chore_due_at = $3, chore_claimed_by = NULL,
                     chore_waiting_since = CASE WHEN $6 THEN chore_waiting_since END, updated_at = $4 WHERE id = $1",
            )
            .bind(job)
            .bind(error)
            .bind(now + self.cfg.backoff(claim.attempt))
            .bind(now)
            .bind(&step)
            .bind(waited)
            .execute(&mut tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Records that a claimed chore found a disk full (the spool's, or the store's),
    /// or the store unreachable: a condition of the farm that passes, not of the
    /// job. The attempt is given back and the chore is due again after a wait that
    /// grows with the time spent waiting (from the first backoff up to a minute).
    /// Once it has waited `space_wait_ms`, the attempt counts as a failed one
    /// ([`Queue::chore_failed`]), so a disk that stays full or a store that stays
    /// away still ends the job with the reason. False when the claim was superseded.
    pub async fn chore_waits(&self, job: &str, chore: Chore, claim: ChoreClaim, step: Option<&str>, error: &str, now: i64) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let since: Option<Option<i64>> =
            sql::query_scalar("SELECT chore_waiting_since FROM jobs WHERE id = $1 AND chore = $2 AND chore_seq = $3")
                .bind(job)
                .bind(chore.as_str())
                .bind(claim.token)
                .fetch_optional(&mut tx)
                .await?;
        let Some(since) = since else {
            tx.commit().await?;
            return Ok(false);
        };
        let since = since.unwrap_or(now);
        if now - since >= self.cfg.space_wait_ms {
            tx.commit().await?;
            return self.count_chore_failure(job, chore, claim, step, error, true, now).await;
        }
        let wait = ((now - since) / 2).clamp(self.cfg.backoff_base_ms, SPACE_RETRY_MAX_MS);
        sql::query(
            "UPDATE jobs SET chore_attempts = chore_attempts - 1, chore_error = $2, chore_step = $3, chore_due_at = $4,
                 chore_claimed_by = NULL, chore_waiting_since = $5, updated_at = $6 WHERE id = $1",
        )
        .bind(job)
        .bind(error)
        .bind(step)
        .bind(now + wait)
        .bind(since)
        .bind(now)
        .execute(&mut tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Ends a job whose claimed chore found bad input (an unreadable source, a
    /// profile that plans nothing): failed at once, with the reason.
    pub async fn chore_rejected(&self, job: &str, chore: Chore, claim: ChoreClaim, reason: &str, now: i64) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let held = holds(&mut tx, job, chore, claim).await?;
        if held {
            end_job(&mut tx, job, "failed", Some(reason), now).await?;
        }
        tx.commit().await?;
        Ok(held)
    }

    /// Finishes a claimed probe: records the probe and the job's due time (upload
    /// time plus media duration, see [`Queue::lease`]) and queues its tasks, in one
    /// transaction. False (and nothing written) when the job was canceled or retried
    /// while it was probed.
    /// `stored_source`: where an ingested URL source was copied to.
    pub async fn plan_job(
        &self,
        job: &str,
        claim: ChoreClaim,
        stored_source: Option<&str>,
        probe: &serde_json::Value,
        tasks: &[NewTask],
        now: i64,
    ) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        if !holds(&mut tx, job, Chore::Probe, claim).await? || job_state(&mut tx, job).await? != "queued" {
            tx.commit().await?;
            return Ok(false);
        }
        let media_ms = (probe["duration"].as_f64().unwrap_or(0.0).clamp(0.0, 1e9) * 1000.0) as i64;
        sql::query(
            "UPDATE jobs SET probe = $1, due_at = created_at + $2, chore = NULL, chore_error = NULL, chore_step = NULL, chore_claimed_by = NULL,
                 chore_waiting_since = NULL, updated_at = $3, stored_source = COALESCE($4, stored_source) WHERE id = $5",
        )
            .bind(probe.to_string())
            .bind(media_ms)
            .bind(now)
            .bind(stored_source)
            .bind(job)
            .execute(&mut tx)
            .await?;
        insert_tasks(&mut tx, job, tasks, self.cfg.max_attempts, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Plans a job directly, without its probe: for tests and fixtures.
    pub async fn add_tasks(&self, job_id: &str, tasks: &[NewTask], now: i64) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sql::query("UPDATE jobs SET chore = NULL WHERE id = $1 AND chore = 'probe'").bind(job_id).execute(&mut tx).await?;
        insert_tasks(&mut tx, job_id, tasks, self.cfg.max_attempts, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Finishes a claimed finalize: the job succeeds with its output paths. False
    /// when the claim was superseded.
    pub async fn finish_job(&self, id: &str, claim: ChoreClaim, outputs: &serde_json::Value, now: i64) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let held = holds(&mut tx, id, Chore::Finalize, claim).await? && job_state(&mut tx, id).await? == "finalizing";
        if held {
            sql::query("UPDATE jobs SET outputs = $1 WHERE id = $2").bind(outputs.to_string()).bind(id).execute(&mut tx).await?;
            end_job(&mut tx, id, "succeeded", None, now).await?;
        }
        tx.commit().await?;
        Ok(held)
    }

    /// A claimed finalize found a task's published outputs missing or changed: that
    /// task runs again (the attempt counts as failed), and the job waits for it.
    pub async fn reopen_task(&self, job: &str, claim: ChoreClaim, task: &str, error: &str, now: i64) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let held = holds(&mut tx, job, Chore::Finalize, claim).await?;
        if held {
            let row = sql::query("SELECT attempts, max_attempts FROM tasks WHERE id = $1 AND job_id = $2 AND state = 'succeeded'")
                .bind(task)
                .bind(job)
                .fetch_optional(&mut tx)
                .await?;
            if let Some(row) = row {
                sql::query("UPDATE jobs SET state = 'running', chore = NULL, chore_claimed_by = NULL, chore_waiting_since = NULL, updated_at = $1 WHERE id = $2")
                    .bind(now)
                    .bind(job)
                    .execute(&mut tx)
                    .await?;
                super::log_failure(&mut tx, task, job, "failed", error, now).await?;
                super::requeue_or_fail(&mut tx, task, job, row.get(0), row.get(1), error, true, &self.cfg, now).await?;
                settle_job(&mut tx, job, now).await?;
            }
        }
        tx.commit().await?;
        Ok(held)
    }

    /// What a job waits for, for its view: its probe, a capable worker, a worker
    /// that takes tasks (every live one is paused or draining), a free worker, its
    /// running tasks (those its queued tasks need), or its finalize. `None` once it
    /// has ended.
    pub async fn waiting_for(&self, id: &str) -> Result<Option<String>> {
        let row =
            sql::query("SELECT state, chore, chore_attempts, chore_error, chore_claimed_by, chore_waiting_since FROM jobs WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut self.read().await?)
                .await?
                .ok_or_else(|| QueueError::NotFound(format!("job {id}")))?;
        let (state, chore, attempts, error, claimed): (String, Option<String>, i64, Option<String>, Option<String>) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        let waiting_since: Option<i64> = row.get(5);
        if is_terminal(&state) {
            return Ok(None);
        }
        if let Some(chore) = chore {
            let what = if chore == "probe" { "its probe" } else { "finalize" };
            return Ok(Some(match (claimed, error) {
                (Some(_), _) if waiting_since.is_some() => format!("{what} (running again after waiting for the farm)"),
                (Some(_), _) => format!("{what} (attempt {attempts} of {CHORE_ATTEMPTS} running)"),
                (None, Some(e)) if waiting_since.is_some() => format!("{what} (waiting for the farm: {e}; trying again)"),
                (None, Some(e)) => format!("{what} (attempt {attempts} of {CHORE_ATTEMPTS} failed: {e}; retrying after a backoff)"),
                (None, None) => format!("{what} (queued)"),
            }));
        }
        // What the farm says of its workers: none live, or none taking tasks (why).
        let farm: Vec<(String, String)> = sql::query_as("SELECT key, value FROM settings WHERE key IN ($1, $2)")
            .bind(NO_LIVE_WORKER)
            .bind(NONE_TAKES_TASKS)
            .fetch_all(&mut self.read().await?)
            .await?;
        let said = |key: &str| farm.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        let (idle, none_takes) = (said(NO_LIVE_WORKER), said(NONE_TAKES_TASKS));
        let unrunnable: Option<Option<String>> =
            sql::query_scalar("SELECT requires FROM tasks WHERE job_id = $1 AND state = 'queued' AND unrunnable_since IS NOT NULL LIMIT 1")
                .bind(id)
                .fetch_optional(&mut self.read().await?)
                .await?;
        if let Some(encoder) = unrunnable {
            let tags = job_tags(&mut self.read().await?, id).await?;
            return Ok(Some(format!("a capable worker: {}", no_capable_worker(encoder.as_deref(), &tags))));
        }
        // (any task queued, one of them with its inputs made): a queued task whose
        // inputs are not made yet (a rendition's audio, a join's chunks) waits for the
        // tasks making them, not for a worker.
        let row = sql::query(concat!(
            "SELECT CASE WHEN EXISTS (SELECT 1 FROM tasks WHERE job_id = $1 AND state = 'queued') THEN 1 ELSE 0 END,
                    CASE WHEN EXISTS (SELECT 1 FROM tasks t WHERE t.job_id = $1 AND t.state = 'queued' AND ",
            inputs_made!(),
            ") THEN 1 ELSE 0 END"
        ))
        .bind(id)
        .fetch_one(&mut self.read().await?)
        .await?;
        let (queued, ready): (i64, i64) = (row.get(0), row.get(1));
        match (queued != 0, idle.is_some(), ready != 0) {
            (false, ..) | (true, false, false) => return Ok(Some("its running tasks".into())),
            (true, true, _) => return Ok(Some(format!("a capable worker: {}", no_capable_worker(None, &[])))),
            (true, false, true) => {}
        }
        Ok(Some(match none_takes {
            Some(why) => format!("a worker that takes tasks: {why}"),
            None => "a free worker".into(),
        }))
    }

    /// Marks queued tasks that no live worker can run, and fails those that have
    /// waited for a capable worker longer than `wait_ms`. Returns the jobs changed.
    pub async fn check_capable_workers(&self, wait_ms: i64, now: i64) -> Result<Vec<String>> {
        let live_since = now - self.cfg.lease_ttl_ms;
        let mut tx = self.write_tx().await?;
        let rows = sql::query("SELECT capabilities, paused, draining FROM workers WHERE removed = 0 AND last_seen >= $1")
            .bind(live_since)
            .fetch_all(&mut tx)
            .await?;
        let live: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        let paused: Vec<String> = rows.iter().filter_map(|r| r.get::<Option<String>, _>(1)).collect();
        let draining = rows.iter().filter(|r| r.get::<Option<String>, _>(1).is_none() && r.get::<i64, _>(2) != 0).count();
        // With no live worker at all, the farm says so once (`settings`), rather
        // than on each queued task: a restart with a long queue rewrote every task,
        // holding the writer's lock for seconds, then again once the workers were
        // back. Its tasks have waited since the last worker was seen, or since they
        // were queued.
        let idle_since = if live.is_empty() {
            let last: Option<i64> = sql::query_scalar("SELECT MAX(last_seen) FROM workers WHERE removed = 0").fetch_one(&mut tx).await?;
            let since = last.map_or(0, |l| l + self.cfg.lease_ttl_ms);
            sql::query("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
                .bind(NO_LIVE_WORKER)
                .bind(since.to_string())
                .execute(&mut tx)
                .await?;
            Some(since)
        } else {
            sql::query("DELETE FROM settings WHERE key = $1").bind(NO_LIVE_WORKER).execute(&mut tx).await?;
            match none_takes_tasks(&paused, draining, live.len()) {
                Some(why) => {
                    sql::query("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
                        .bind(NONE_TAKES_TASKS)
                        .bind(why)
                        .execute(&mut tx)
                        .await?;
                }
                None => {
                    sql::query("DELETE FROM settings WHERE key = $1").bind(NONE_TAKES_TASKS).execute(&mut tx).await?;
                }
            }
            self.mark_unrunnable(&mut tx, &live, now, live_since).await?;
            None
        };
        // Only tasks whose answer changed are written: a farm with thousands of queued
        // tasks rewrote all of them every tenth second, holding the writer's lock. The
        // marked ones are read through their own index (SQLite, without statistics,
        // would walk every queued task).
        let (clear, stuck) = match self.backend {
            Backend::Sqlite => (
                concat!(
                    "UPDATE tasks INDEXED BY tasks_waiting_for_worker SET unrunnable_since = NULL WHERE state = 'queued' AND unrunnable_since <= $1 AND ",
                    capable_sqlite!()
                ),
                "SELECT id, job_id, requires FROM tasks INDEXED BY tasks_waiting_for_worker WHERE state = 'queued' AND unrunnable_since < $1",
            ),
            Backend::Postgres => (
                concat!(
                    "UPDATE tasks SET unrunnable_since = NULL WHERE state = 'queued' AND unrunnable_since <= $1 AND ",
                    capable_postgres!()
                ),
                "SELECT id, job_id, requires FROM tasks WHERE state = 'queued' AND unrunnable_since < $1",
            ),
        };
        sql::query(clear).bind(now).bind(live_since).execute(&mut tx).await?;
        // (task, job, why it waits: its encoder, or `None` for a farm with no live worker)
        let mut stuck: Vec<(String, String, Option<Option<String>>)> = sql::query(stuck)
            .bind(now - wait_ms)
            .fetch_all(&mut tx)
            .await?
            .into_iter()
            .map(|r| (r.get(0), r.get(1), Some(r.get(2))))
            .collect();
        if idle_since.is_some_and(|since| since < now - wait_ms) {
            let idle = sql::query("SELECT id, job_id FROM tasks WHERE state = 'queued' AND queued_at < $1 AND unrunnable_since IS NULL")
                .bind(now - wait_ms)
                .fetch_all(&mut tx)
                .await?;
            stuck.extend(idle.into_iter().map(|r| (r.get(0), r.get(1), None)));
        }
        let mut jobs = Vec::new();
        for (task, job, encoder) in stuck {
            let why = match encoder {
                None => no_capable_worker(None, &[]),
                Some(encoder) => no_capable_worker(encoder.as_deref(), &job_tags(&mut tx, &job).await?),
            };
            let why = format!("{why} (waited {} s for one)", wait_ms / 1000);
            sql::query("UPDATE tasks SET state = 'failed', error = $1, updated_at = $2, finished_at = $2 WHERE id = $3")
                .bind(&why)
                .bind(now)
                .bind(&task)
                .execute(&mut tx)
                .await?;
            sql::query("UPDATE jobs SET error = COALESCE(error, $1) WHERE id = $2").bind(&why).bind(&job).execute(&mut tx).await?;
            settle_job(&mut tx, &job, now).await?;
            jobs.push(job);
        }
        tx.commit().await?;
        jobs.dedup();
        self.holds.forget_jobs(&jobs);
        Ok(jobs)
    }

    /// Marks the queued tasks, not marked yet, that none of the `live` workers
    /// (their capabilities) can run. A task's answer depends only on its encoder
    /// and its job's tags, so this asks per encoder and per tagged job, not per
    /// task: asking each queued task held the writer's lock for a second at 90,000
    /// queued (a JSON lookup per task), every tenth second. It writes the tasks
    /// needing an encoder no live worker has, and those of a tagged job that no
    /// live worker fits.
    async fn mark_unrunnable(&self, tx: &mut impl Exec, live: &[String], now: i64, live_since: i64) -> Result<()> {
        let encoders: std::collections::HashSet<String> = live
            .iter()
            .filter_map(|c| serde_json::from_str::<serde_json::Value>(c).ok())
            .flat_map(|c| c["encoders"].as_array().cloned().unwrap_or_default())
            .filter_map(|e| e.as_str().map(String::from))
            .collect();
        // The distinct encoders queued tasks need, one index probe each (a loose
        // index scan of `tasks_unrunnable`). SQLite, without statistics, would walk
        // the lease order's index instead.
        macro_rules! needed {
            ($indexed:literal) => {
                concat!(
                    "WITH RECURSIVE needed(e) AS (
                         SELECT MIN(requires) FROM tasks ",
                    $indexed,
                    " WHERE state = 'queued' AND requires IS NOT NULL
                         UNION ALL
                         SELECT (SELECT MIN(t.requires) FROM tasks t ",
                    $indexed,
                    " WHERE t.state = 'queued' AND t.requires > needed.e)
                         FROM needed WHERE needed.e IS NOT NULL)
                     SELECT e FROM needed WHERE e IS NOT NULL"
                )
            };
        }
        macro_rules! mark {
            ($indexed:literal) => {
                concat!(
                    "UPDATE tasks ",
                    $indexed,
                    " SET unrunnable_since = $1 WHERE state = 'queued' AND requires = $2 AND unrunnable_since IS NULL"
                )
            };
        }
        let (needed, mark, tagged) = match self.backend {
            Backend::Sqlite => (
                needed!("INDEXED BY tasks_unrunnable"),
                mark!("INDEXED BY tasks_unrunnable"),
                concat!(
                    "UPDATE tasks SET unrunnable_since = $1 WHERE job_id = $3 AND state = 'queued' AND unrunnable_since IS NULL AND NOT ",
                    capable_sqlite!()
                ),
            ),
            Backend::Postgres => (
                needed!(""),
                mark!(""),
                concat!(
                    "UPDATE tasks SET unrunnable_since = $1 WHERE job_id = $3 AND state = 'queued' AND unrunnable_since IS NULL AND NOT ",
                    capable_postgres!()
                ),
            ),
        };
        let needed: Vec<String> = sql::query_scalar(needed).fetch_all(&mut *tx).await?;
        for missing in needed.iter().filter(|e| !encoders.contains(*e)) {
            sql::query(mark).bind(now).bind(missing).execute(&mut *tx).await?;
        }
        // A tagged job's tasks need a worker with its tags too: asked per task, but
        // only of the unfinished jobs that require tags (usually none).
        let jobs: Vec<String> = sql::query_scalar(
            "SELECT j.id FROM jobs j WHERE j.state IN ('queued', 'running') AND EXISTS (SELECT 1 FROM job_tags jt WHERE jt.job_id = j.id)",
        )
        .fetch_all(&mut *tx)
        .await?;
        for job in jobs {
            sql::query(tagged).bind(now).bind(live_since).bind(&job).execute(&mut *tx).await?;
        }
        Ok(())
    }

    /// Webhook deliveries owed for `job`, to push right after it ended: (delivery
    /// id, attempts made, pushes, due at).
    pub async fn owed_deliveries(&self, job: &str) -> Result<Vec<(String, i64, i64, i64)>> {
        let rows = sql::query(
            "SELECT id, attempts, pushes, next_attempt_at FROM webhooks WHERE delivered_at IS NULL AND gave_up = 0 AND job_id = $1",
        )
        .bind(job)
        .fetch_all(&mut self.auto())
        .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect())
    }

    /// Deliveries whose attempt is overdue by `overdue_ms` (its chore was lost, or
    /// is stuck with a coordinator that died), or all owed ones `at_start`: each gets
    /// a new push (a new chore key) and is not due again for `grace_ms`.
    pub async fn rearm_deliveries(&self, overdue_ms: i64, grace_ms: i64, at_start: bool, now: i64) -> Result<Vec<(String, i64, i64, i64)>> {
        let rows = sql::query(
            "UPDATE webhooks SET pushes = pushes + 1, next_attempt_at = $3
             WHERE id IN (SELECT id FROM webhooks WHERE delivered_at IS NULL AND gave_up = 0 AND ($2 OR next_attempt_at <= $1)
                          ORDER BY next_attempt_at LIMIT 500)
             RETURNING id, attempts, pushes, next_attempt_at",
        )
        .bind(now - overdue_ms)
        .bind(at_start)
        .bind(now + grace_ms)
        .fetch_all(&mut self.auto())
        .await?;
        // Pushed to run now; `next_attempt_at` only says when to look again.
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1), r.get(2), now)).collect())
    }
}

/// True when `claim` is still the token of the job's owed `chore`.
async fn holds(tx: &mut impl Exec, job: &str, chore: Chore, claim: ChoreClaim) -> Result<bool> {
    let held: i64 =
        sql::query_scalar("SELECT CASE WHEN EXISTS (SELECT 1 FROM jobs WHERE id = $1 AND chore = $2 AND chore_seq = $3) THEN 1 ELSE 0 END")
            .bind(job)
            .bind(chore.as_str())
            .bind(claim.token)
            .fetch_one(&mut *tx)
            .await?;
    Ok(held != 0)
}

/// Why no live worker can take a task that needs `encoder` and `tags`.
fn no_capable_worker(encoder: Option<&str>, tags: &[String]) -> String {
    match (encoder, tags) {
        (Some(e), []) => format!("no live worker has the encoder {e}"),
        (None, []) => "no worker is live".into(),
        (Some(e), t) => format!("no live worker has both the encoder {e} and the tags {}", t.join(", ")),
        (None, t) => format!("no live worker has the tags {}", t.join(", ")),
    }
}

/// Why no live worker takes tasks, if none does: each is paused (its reasons,
/// `paused`) or draining (`draining` more).
fn none_takes_tasks(paused: &[String], draining: usize, live: usize) -> Option<String> {
    if live == 0 || paused.len() + draining < live {
        return None;
    }
    let mut reasons: Vec<&str> = paused.iter().map(String::as_str).collect();
    reasons.sort_unstable();
    reasons.dedup();
    let mut why = Vec::new();
    match reasons.len() {
        0 => {}
        1..=3 => why.push(format!("{} paused ({})", paused.len(), reasons.join("; "))),
        n => why.push(format!("{} paused ({}; and {} more reasons)", paused.len(), reasons[..3].join("; "), n - 3)),
    }
    if draining > 0 {
        why.push(format!("{draining} draining"));
    }
    Some(format!("every live worker is paused or draining: {}", why.join(", ")))
}

/// The worker tags a job requires.
async fn job_tags(conn: &mut impl Exec, job: &str) -> Result<Vec<String>> {
    Ok(sql::query_scalar("SELECT tag FROM job_tags WHERE job_id = $1 ORDER BY tag").bind(job).fetch_all(&mut *conn).await?)
}

fn default_step(chore: Chore, source: &str) -> String {
    match chore {
        Chore::Probe => format!("probing {source}"),
        Chore::Finalize => "finalizing".into(),
    }
}

fn gave_up(step: &str, attempts: i64, error: &str) -> String {
    format!("{step} failed {attempts} times: {error}")
}

async fn insert_tasks(tx: &mut impl Exec, job: &str, tasks: &[NewTask], max_attempts: i64, now: i64) -> Result<()> {
    for (seq, t) in tasks.iter().enumerate() {
        // The job's place in the lease order goes with each task (see `lease_one`).
        sql::query(
            "INSERT INTO tasks (id, job_id, kind, rendition, requires, seq, state, max_attempts, created_at, updated_at, queued_at,
                                priority, due_at, job_created_at, name, chunk, first_frame, frames, pixels)
             SELECT $1, $2, $3, $4, $5, $6, 'queued', $7, $8, $8, $8, j.priority, COALESCE(j.due_at, j.created_at), j.created_at, $9, $10, $11, $12, $13
             FROM jobs j WHERE j.id = $2",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(job)
        .bind(kind_str(t.kind))
        .bind(&t.rendition)
        .bind(&t.requires)
        .bind(seq as i64)
        .bind(max_attempts)
        .bind(now)
        .bind(t.name())
        .bind(t.chunk.map(|c| i64::from(c.index)))
        .bind(t.chunk.map(|c| c.first_frame as i64))
        .bind(t.chunk.and_then(|c| c.frames).map(|f| f as i64))
        .bind(t.pixels.map(|p| p as i64))
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// Ends a live job (`succeeded`, `failed` or `canceled`): the rest of its tasks stop,
/// whatever chore it was owed is dropped (and any in flight made stale), and the one
/// webhook of this run's end is recorded, in the caller's transaction. An ended job
/// is left as it is.
pub(super) async fn end_job(tx: &mut impl Exec, job: &str, state: &str, error: Option<&str>, now: i64) -> Result<()> {
    // On PostgreSQL the job's row is locked before its tasks', the order a promotion
    // takes them in (`drake_promoted`), so the two cannot deadlock.
    let current = if sql::on_postgres(&mut *tx) {
        sql::query_scalar("SELECT state FROM jobs WHERE id = $1 FOR UPDATE")
            .bind(job)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| QueueError::NotFound(format!("job {job}")))?
    } else {
        job_state(&mut *tx, job).await?
    };
    if is_terminal(&current) {
        return Ok(());
    }
    sql::query(
        "UPDATE tasks SET cancel = 1, lease_expires_at = CASE WHEN state = 'promoting' THEN NULL ELSE lease_expires_at END,
             state = CASE WHEN state IN ('queued', 'leased', 'running', 'promoting') THEN 'canceled' ELSE state END, updated_at = $2
         WHERE job_id = $1 AND state NOT IN ('succeeded', 'failed')",
    )
    .bind(job)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    sql::query(
        "UPDATE jobs SET state = $2, error = COALESCE($3, error), chore = NULL, chore_seq = chore_seq + 1, chore_claimed_by = NULL,
             updated_at = $4 WHERE id = $1",
    )
    .bind(job)
    .bind(state)
    .bind(error)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let row = sql::query("SELECT callback_url, run, error, outputs FROM jobs WHERE id = $1").bind(job).fetch_one(&mut *tx).await?;
    let (callback, run, error, outputs): (Option<String>, i64, Option<String>, Option<String>) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    if let Some(url) = callback {
        let outputs: serde_json::Value = outputs.and_then(|o| serde_json::from_str(&o).ok()).unwrap_or_default();
        let payload = json!({
            "type": format!("job.{state}"),
            "timestamp": proto::time::rfc3339(now / 1000),
            "data": {"job_id": job, "state": state, "error": error, "outputs": outputs, "run": run},
        });
        // One per (job, run): a second end of the same run cannot record another.
        sql::query(
            "INSERT INTO webhooks (id, job_id, run, url, payload, next_attempt_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, $6)
             ON CONFLICT (job_id, run) DO NOTHING",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(job)
        .bind(run)
        .bind(url)
        .bind(payload.to_string())
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}
