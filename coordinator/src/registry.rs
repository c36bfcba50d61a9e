//! Worker machines and webhook deliveries: the rest of the coordinator's durable
//! state, beside the task queue.

use crate::queue::sql;
use crate::queue::{Queue, QueueError, Result};
use proto::wire::Capabilities;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A worker counts as offline when it has not polled for this long.
pub const OFFLINE_AFTER_MS: i64 = 60_000;

#[derive(Debug, Clone, Serialize)]
pub struct WorkerView {
    pub id: String,
    pub name: String,
    /// idle, busy, draining, paused (see `paused`) or offline.
    pub state: String,
    /// Why the worker takes no task now (its scratch disk is full), as it last said.
    pub paused: Option<String>,
    pub slots: i64,
    pub free_slots: i64,
    pub capabilities: Capabilities,
    pub drake_version: String,
    pub last_heartbeat: i64,
    /// The machine's 1-minute load average, as the worker last reported it.
    pub load: Option<f64>,
    pub current_tasks: Vec<CurrentTask>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CurrentTask {
    pub task_id: String,
    pub job_id: String,
    pub kind: String,
    pub rendition: Option<String>,
    /// Its name (a rendition's, `thumbnails`, `audio`, or `RENDITION.cNNNN`).
    pub name: String,
    pub progress: f64,
}

#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: String,
    pub url: String,
    pub payload: String,
    pub attempts: i64,
    /// How often the reconciler pushed it again (part of its chore's key).
    pub pushes: i64,
}

/// A failed delivery's next attempt: the attempts made so far, and when (ms) it is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    pub attempts: i64,
    pub at: i64,
}

impl Queue {
    pub async fn register_worker(&self, id: &str, name: &str, slots: i64, caps: &Capabilities, version: &str, now: i64) -> Result<()> {
        sql::query(
            "INSERT INTO workers (id, name, slots, free_slots, capabilities, drake_version, last_seen, created_at, encoder_build)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(id)
        .bind(name)
        .bind(slots)
        .bind(slots)
        .bind(serde_json::to_string(caps).unwrap_or_default())
        .bind(version)
        .bind(now)
        .bind(now)
        .bind(caps.encoder_build.as_deref())
        .execute(&mut self.auto())
        .await?;
        Ok(())
    }

    /// Replaces what a worker can do, and its version if given (it started again,
    /// maybe upgraded, with its issued credential).
    pub async fn update_capabilities(&self, id: &str, caps: &Capabilities, version: Option<&str>) -> Result<()> {
        sql::query(
            "UPDATE workers SET capabilities = $2, encoder_build = $3, drake_version = COALESCE($4, drake_version) WHERE id = $1 AND removed = 0",
        )
        .bind(id)
        .bind(serde_json::to_string(caps).unwrap_or_default())
        .bind(caps.encoder_build.as_deref())
        .bind(version)
            .execute(&mut self.auto())
            .await?;
        self.seen.forget(id);
        Ok(())
    }

    /// Records a worker's poll or heartbeat (free slots and load when it reports
    /// them; with the free slots, a poll says why it takes no task now, if it is
    /// paused). Returns its capabilities, or NotFound for a removed worker.
    ///
    /// A worker calls several times a second under load, and liveness is judged
    /// against the lease TTL: the row is written only when this coordinator last
    /// wrote it [`Queue::seen_every_ms`] ago or more, or the free slots or the
    /// pause changed; otherwise the call costs no statement ([`SeenWorkers`]).
    /// Whether the worker is draining is not answered here: the claim checks it.
    pub async fn worker_seen(&self, id: &str, slots: Option<Slots<'_>>, load: Option<f64>, now: i64) -> Result<Arc<Capabilities>> {
        if let Some(caps) = self.seen.fresh(id, slots, now - self.seen_every_ms()) {
            return Ok(caps);
        }
        let caps: Option<String> = sql::query_scalar(
            "UPDATE workers SET last_seen = $1, free_slots = COALESCE($2, free_slots), load = COALESCE($3, load),
                                paused = CASE WHEN $2 IS NULL THEN paused ELSE $5 END
             WHERE id = $4 AND removed = 0
             RETURNING capabilities",
        )
        .bind(now)
        .bind(slots.map(|s| s.free))
        .bind(load.filter(|l| l.is_finite() && *l >= 0.0))
        .bind(id)
        .bind(slots.and_then(|s| s.paused))
        .fetch_optional(&mut self.auto())
        .await?;
        let caps = caps.ok_or_else(|| QueueError::NotFound(format!("worker {id}")))?;
        let caps: Capabilities = serde_json::from_str(&caps).map_err(|e| QueueError::Conflict(e.to_string()))?;
        Ok(self.seen.keep(id, caps, now, slots))
    }

    pub async fn set_draining(&self, id: &str, draining: bool) -> Result<()> {
        let n = sql::query("UPDATE workers SET draining = $1 WHERE id = $2 AND removed = 0")
            .bind(draining as i64)
            .bind(id)
            .execute(&mut self.auto())
            .await?
            .rows_affected();
        if n == 0 {
            return Err(QueueError::NotFound(format!("worker {id}")));
        }
        Ok(())
    }

    /// Removes a worker: its credential stops working and its leases are reaped.
    pub async fn remove_worker(&self, id: &str) -> Result<()> {
        let n = sql::query("UPDATE workers SET removed = 1 WHERE id = $1 AND removed = 0")
            .bind(id)
            .execute(&mut self.auto())
            .await?
            .rows_affected();
        if n == 0 {
            return Err(QueueError::NotFound(format!("worker {id}")));
        }
        sql::query("UPDATE tokens SET revoked = 1 WHERE role = 'worker' AND label = $1").bind(id).execute(&mut self.auto()).await?;
        self.callers.forget();
        self.seen.forget(id);
        self.holds.forget_worker(id);
        sql::query("UPDATE tasks SET lease_expires_at = 0 WHERE worker_id = $1 AND state IN ('leased', 'running')")
            .bind(id)
            .execute(&mut self.auto())
            .await?;
        Ok(())
    }

    /// The names of the workers that held any of a job's tasks, by worker id,
    /// removed workers included: a job's history names the machines it ran on.
    pub async fn job_worker_names(&self, job_id: &str) -> Result<std::collections::HashMap<String, String>> {
        let rows = sql::query("SELECT DISTINCT w.id, w.name FROM tasks t JOIN workers w ON w.id = t.worker_id WHERE t.job_id = $1")
            .bind(job_id)
            .fetch_all(&mut self.read().await?)
            .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    pub async fn list_workers(&self, now: i64) -> Result<Vec<WorkerView>> {
        let rows = sql::query("SELECT id, name, slots, free_slots, capabilities, drake_version, last_seen, draining, load, paused FROM workers WHERE removed = 0 ORDER BY created_at").fetch_all(&mut self.read().await?).await?;
        let tasks =
            sql::query("SELECT id, job_id, kind, rendition, progress, worker_id, name FROM tasks WHERE state IN ('leased', 'running')")
                .fetch_all(&mut self.read().await?)
                .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let id: String = r.get(0);
                let current_tasks: Vec<CurrentTask> = tasks
                    .iter()
                    .filter(|t| t.get::<Option<String>, _>(5).as_deref() == Some(id.as_str()))
                    .map(|t| CurrentTask {
                        task_id: t.get(0),
                        job_id: t.get(1),
                        kind: t.get(2),
                        rendition: t.get(3),
                        name: t.get(6),
                        progress: t.get(4),
                    })
                    .collect();
                let last_seen: i64 = r.get(6);
                let state = if now - last_seen > OFFLINE_AFTER_MS {
                    "offline"
                } else if r.get::<i64, _>(7) != 0 {
                    "draining"
                } else if r.get::<Option<String>, _>(9).is_some() {
                    "paused"
                } else if current_tasks.is_empty() {
                    "idle"
                } else {
                    "busy"
                };
                WorkerView {
                    id,
                    name: r.get(1),
                    state: state.into(),
                    paused: r.get(9),
                    slots: r.get(2),
                    free_slots: r.get(3),
                    capabilities: serde_json::from_str(&r.get::<String, _>(4)).unwrap_or(Capabilities {
                        encoders: vec![],
                        cores: 0,
                        tags: vec![],
                        encoder_build: None,
                    }),
                    drake_version: r.get(5),
                    last_heartbeat: last_seen,
                    load: r.get(8),
                    current_tasks,
                }
            })
            .collect())
    }

    /// Records a webhook to deliver and returns its id, which is also its `webhook-id`.
    pub async fn enqueue_webhook(&self, job_id: &str, url: &str, payload: &str, now: i64) -> Result<String> {
        let id = uuid::Uuid::now_v7().to_string();
        sql::query("INSERT INTO webhooks (id, job_id, url, payload, next_attempt_at, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(&id)
            .bind(job_id)
            .bind(url)
            .bind(payload)
            .bind(now)
            .bind(now)
            .execute(&mut self.auto())
            .await?;
        Ok(id)
    }

    /// A delivery that is still owed (neither delivered nor given up), if any.
    pub async fn owed_webhook(&self, id: &str) -> Result<Option<Delivery>> {
        let row =
            sql::query("SELECT id, url, payload, attempts, pushes FROM webhooks WHERE id = $1 AND delivered_at IS NULL AND gave_up = 0")
                .bind(id)
                .fetch_optional(&mut self.auto())
                .await?;
        Ok(row.map(|r| Delivery { id: r.get(0), url: r.get(1), payload: r.get(2), attempts: r.get(3), pushes: r.get(4) }))
    }

    /// Records one delivery attempt. After an `Err` it returns when the retry is due
    /// (after a backoff), or `None` once `max_attempts` are spent.
    pub async fn webhook_attempted(
        &self,
        id: &str,
        outcome: std::result::Result<(), String>,
        max_attempts: i64,
        now: i64,
    ) -> Result<Option<Retry>> {
        match outcome {
            Ok(()) => {
                sql::query("UPDATE webhooks SET attempts = attempts + 1, delivered_at = $1 WHERE id = $2")
                    .bind(now)
                    .bind(id)
                    .execute(&mut self.auto())
                    .await?;
                Ok(None)
            }
            Err(e) => {
                let attempts: i64 =
                    sql::query_scalar("UPDATE webhooks SET attempts = attempts + 1, last_error = $1 WHERE id = $2 RETURNING attempts")
                        .bind(&e)
                        .bind(id)
                        .fetch_one(&mut self.auto())
                        .await?;
                let next = now + self.cfg.backoff(attempts);
                sql::query("UPDATE webhooks SET next_attempt_at = $1, gave_up = $2 WHERE id = $3")
                    .bind(next)
                    .bind((attempts >= max_attempts) as i64)
                    .bind(id)
                    .execute(&mut self.auto())
                    .await?;
                Ok((attempts < max_attempts).then_some(Retry { attempts, at: next }))
            }
        }
    }

    /// Records a coordinator's heartbeat (every reconciler pass).
    pub async fn coordinator_seen(&self, id: &str, now: i64) -> Result<()> {
        sql::query(
            "INSERT INTO coordinators (id, started_at, last_seen) VALUES ($1, $2, $2)
             ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen",
        )
        .bind(id)
        .bind(now)
        .execute(&mut self.auto())
        .await?;
        Ok(())
    }

    /// A coordinator that stops cleanly says so: it is gone at once, not after its
    /// heartbeat lapses.
    pub async fn coordinator_stopped(&self, id: &str) -> Result<()> {
        sql::query("DELETE FROM coordinators WHERE id = $1").bind(id).execute(&mut self.auto()).await?;
        Ok(())
    }

    /// Forgets every other coordinator, and heartbeats from dead ones. On SQLite
    /// (one process per database) at start every other one is gone.
    pub async fn forget_coordinators(&self, me: &str, older_than: i64) -> Result<()> {
        sql::query("DELETE FROM coordinators WHERE id != $1 AND last_seen < $2")
            .bind(me)
            .bind(older_than)
            .execute(&mut self.auto())
            .await?;
        Ok(())
    }

    /// Coordinators that heartbeat within [`crate::queue::COORDINATOR_TTL_MS`]: (id, started_at).
    pub async fn live_coordinators(&self, now: i64) -> Result<Vec<(String, i64)>> {
        Ok(sql::query_as("SELECT id, started_at FROM coordinators WHERE last_seen >= $1 ORDER BY started_at")
            .bind(now - crate::queue::COORDINATOR_TTL_MS)
            .fetch_all(&mut self.read().await?)
            .await?)
    }

    /// A farm-wide setting.
    pub async fn setting(&self, key: &str) -> Result<Option<String>> {
        Ok(sql::query_scalar("SELECT value FROM settings WHERE key = $1").bind(key).fetch_optional(&mut self.read().await?).await?)
    }

    /// Stores `value` under `key` unless one is there; returns the stored value (the
    /// first coordinator's, when several start at once).
    pub async fn setting_or_insert(&self, key: &str, value: &str) -> Result<String> {
        sql::query("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
            .bind(key)
            .bind(value)
            .execute(&mut self.auto())
            .await?;
        Ok(self.setting(key).await?.unwrap_or_else(|| value.to_string()))
    }
}

/// What this coordinator knows of the workers that call it, so that most polls
/// and heartbeats cost no statement: each worker's capabilities (fixed at
/// registration: a worker id never changes them), and when this coordinator last
/// wrote its `last_seen`, with what free slots. Only a cache: draining and removal
/// are not kept (the claim checks them), and a worker seen through another
/// coordinator is written there too.
#[derive(Default)]
pub(crate) struct SeenWorkers(Mutex<HashMap<String, Seen>>);

struct Seen {
    caps: Arc<Capabilities>,
    /// When (farm ms) this coordinator last wrote the row.
    written_at: i64,
    free_slots: Option<i64>,
    /// Why the worker took no task, written with the free slots.
    paused: Option<String>,
}

/// What a worker's lease poll says of its slots: how many are free, and why it
/// takes no task now (its scratch disk is full), if it is paused.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slots<'a> {
    pub free: i64,
    pub paused: Option<&'a str>,
}

impl SeenWorkers {
    /// More workers than a farm has; past it, the cache starts again.
    const MAX: usize = 10_000;

    /// The worker's capabilities, if its row was written after `since` with these
    /// slots (`None`: not reported).
    fn fresh(&self, id: &str, slots: Option<Slots>, since: i64) -> Option<Arc<Capabilities>> {
        let seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let s = seen.get(id)?;
        let same = |n: Slots| s.free_slots == Some(n.free) && s.paused.as_deref() == n.paused;
        (s.written_at > since && slots.is_none_or(same)).then(|| s.caps.clone())
    }

    fn keep(&self, id: &str, caps: Capabilities, now: i64, slots: Option<Slots>) -> Arc<Capabilities> {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= SeenWorkers::MAX {
            seen.clear();
        }
        let caps = Arc::new(caps);
        let (free_slots, paused) = match slots {
            Some(n) => (Some(n.free), n.paused.map(String::from)),
            None => seen.get(id).map_or((None, None), |s| (s.free_slots, s.paused.clone())),
        };
        seen.insert(id.to_string(), Seen { caps: caps.clone(), written_at: now, free_slots, paused });
        caps
    }

    fn forget(&self, id: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }
}
