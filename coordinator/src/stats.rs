//! Numbers for the ops dashboard and `/metrics`, computed in SQL over the queue's
//! own tables: by time, through its indexes, so they stay cheap with a long history.

use crate::queue::sql;
use crate::queue::{Backend, Queue, QueueError, Result};
use proto::wire::TaskKind;
use serde::Serialize;

/// The window the overview looks back over.
pub const HOUR_MS: i64 = 3600 * 1000;

#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    pub jobs_by_state: Vec<(String, i64)>,
    pub tasks_by_state: Vec<(String, i64)>,
    pub running: Vec<RunningTask>,
    /// Media seconds encoded per wall second, per minute of the last hour (oldest first).
    pub throughput_per_minute: Vec<f64>,
    /// The same over the whole hour.
    pub throughput: f64,
    /// Failed task attempts (worker-reported or lapsed leases) in the last hour.
    pub failed_attempts: i64,
    /// Jobs that ended failed in the last hour.
    pub failed_jobs: i64,
    /// Mean time from queued to leased of tasks leased in the last hour.
    pub avg_queue_wait_ms: Option<f64>,
    /// Medians over jobs of the last hour: created -> first rendition published, and -> succeeded.
    pub median_first_playable_ms: Option<i64>,
    pub median_done_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunningTask {
    pub task_id: String,
    pub job_id: String,
    pub kind: String,
    pub rendition: Option<String>,
    pub name: String,
    pub progress: f64,
    pub worker: Option<String>,
}

/// Upper bounds (seconds) of the task duration histogram.
pub const DURATION_BUCKETS: [f64; 8] = [1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0];

#[derive(Debug, Clone, Serialize)]
pub struct Metrics {
    pub jobs_by_state: Vec<(String, i64)>,
    pub tasks_by_state: Vec<(String, i64)>,
    /// Per task kind: cumulative counts per bucket of [`DURATION_BUCKETS`], count, sum (s).
    pub task_durations: Vec<(String, Vec<i64>, i64, f64)>,
    /// Failed attempts by kind (`failed`, `expired`).
    pub failures: Vec<(String, i64)>,
    pub bytes_published: i64,
}

/// How long after a task's `finished_at` (or a failure's `at`) `/metrics` takes
/// its row as settled: longer than any transaction that writes one is open, and
/// than the coordinators' clocks differ.
pub const SETTLE_MS: i64 = 5 * 60 * 1000;

/// `/metrics`' counters (task durations, failed attempts, bytes published) over
/// the rows settled by `mark`, kept by each coordinator: a scrape adds up only the
/// rows since, so it costs the last minutes' tasks, not the farm's history (which
/// took 4-5 s at 900,000 tasks). The first scrape adds up everything once. A task
/// that succeeds again after it was counted (a reopened or retried one) counts
/// again, as a counter should: they never go down.
#[derive(Default)]
pub struct Tally(tokio::sync::Mutex<Option<Counters>>);

/// Counters over rows up to `mark`.
#[derive(Debug, Clone, Default, PartialEq)]
struct Counters {
    mark: i64,
    /// Per task kind: cumulative counts per bucket of [`DURATION_BUCKETS`], count, sum (ms).
    durations: std::collections::HashMap<String, (Vec<i64>, i64, i64)>,
    failures: std::collections::HashMap<String, i64>,
    bytes: i64,
}

impl Counters {
    fn add(&mut self, other: &Counters) {
        for (kind, (buckets, count, ms)) in &other.durations {
            let e = self.durations.entry(kind.clone()).or_insert_with(|| (vec![0; DURATION_BUCKETS.len()], 0, 0));
            e.0.iter_mut().zip(buckets).for_each(|(a, b)| *a += b);
            e.1 += count;
            e.2 += ms;
        }
        for (kind, n) in &other.failures {
            *self.failures.entry(kind.clone()).or_default() += n;
        }
        self.bytes += other.bytes;
    }
}

fn median(mut v: Vec<i64>) -> Option<i64> {
    v.sort_unstable();
    (!v.is_empty()).then(|| v[v.len() / 2])
}

impl Queue {
    async fn counts(&self, jobs: bool) -> Result<Vec<(String, i64)>> {
        let sql = if jobs {
            "SELECT state, COUNT(*) FROM jobs GROUP BY state ORDER BY state"
        } else {
            "SELECT state, COUNT(*) FROM tasks GROUP BY state ORDER BY state"
        };
        Ok(sql::query(sql).fetch_all(&mut self.read().await?).await?.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// `sql`'s one count, of rows since `start` (its `$1`).
    async fn count_since(&self, sql: &'static str, start: i64) -> Result<i64> {
        Ok(sql::query_scalar(sql).bind(start).fetch_one(&mut self.read().await?).await?)
    }

    /// The overview's numbers. Its statements are independent reads, each on its
    /// own pooled connection at once: the page waits for the slowest, not for all
    /// of them one after another (their work grows with the last hour's jobs).
    pub async fn overview(&self, now: i64) -> Result<Overview> {
        let start = now - HOUR_MS;
        let running = async {
            let rows = sql::query(
                "SELECT t.id, t.job_id, t.kind, t.rendition, t.progress, w.name, t.name FROM tasks t LEFT JOIN workers w ON w.id = t.worker_id
                 WHERE t.state IN ('leased', 'running') ORDER BY t.leased_at LIMIT 200",
            )
            .fetch_all(&mut self.read().await?)
            .await?;
            Ok::<_, QueueError>(
                rows.into_iter()
                    .map(|r| RunningTask {
                        task_id: r.get(0),
                        job_id: r.get(1),
                        kind: r.get(2),
                        rendition: r.get(3),
                        name: r.get(6),
                        progress: r.get(4),
                        worker: r.get(5),
                    })
                    .collect::<Vec<_>>(),
            )
        };
        // A rendition is published by its transcode task, or a chunked one's by its
        // join (a chunk is a part of one, never published itself): the job view's
        // `playable` says the same. Tasks are counted per job and minute first, so
        // a job's duration is read from its probe once per minute, not per task.
        // SQLite, without statistics, would rather walk every succeeded task ever
        // by its state (1 s at 900,000 tasks) than the last hour's by the time.
        let throughput = async {
            let sql = match self.backend() {
                Backend::Sqlite => {
                    "SELECT m.minute, CAST(SUM(m.n * COALESCE(json_extract(j.probe, '$.duration'), 0)) AS DOUBLE PRECISION)
                     FROM (SELECT job_id, (finished_at - $1) / 60000 AS minute, COUNT(*) AS n FROM tasks INDEXED BY tasks_finished
                           WHERE kind IN ('transcode', 'join') AND state = 'succeeded' AND finished_at >= $1 GROUP BY job_id, minute) m
                     JOIN jobs j ON j.id = m.job_id GROUP BY m.minute"
                }
                Backend::Postgres => {
                    "SELECT m.minute, SUM(m.n * COALESCE((j.probe::jsonb ->> 'duration')::DOUBLE PRECISION, 0))
                     FROM (SELECT job_id, (finished_at - $1) / 60000 AS minute, COUNT(*) AS n FROM tasks
                           WHERE kind IN ('transcode', 'join') AND state = 'succeeded' AND finished_at >= $1 GROUP BY job_id, minute) m
                     JOIN jobs j ON j.id = m.job_id GROUP BY m.minute"
                }
            };
            let mut per_minute = vec![0.0; 60];
            for r in sql::query(sql).bind(start).fetch_all(&mut self.read().await?).await? {
                let (minute, media): (i64, f64) = (r.get(0), r.get(1));
                if let Some(slot) = per_minute.get_mut(minute.clamp(0, 59) as usize) {
                    *slot += media / 60.0;
                }
            }
            Ok::<_, QueueError>(per_minute)
        };
        let failed_attempts = self.count_since("SELECT COUNT(*) FROM task_failures WHERE at >= $1", start);
        let failed_jobs = self.count_since("SELECT COUNT(*) FROM jobs WHERE state = 'failed' AND updated_at >= $1", start);
        let avg_queue_wait_ms = async {
            let ms: Option<f64> = sql::query_scalar(
                "SELECT CAST(AVG(leased_at - queued_at) AS DOUBLE PRECISION) FROM tasks WHERE leased_at >= $1 AND queued_at IS NOT NULL",
            )
            .bind(start)
            .fetch_one(&mut self.read().await?)
            .await?;
            Ok::<_, QueueError>(ms)
        };
        // First playable: the hour's jobs out of the queue that have a published
        // rendition (finalizing ones, and ones failed or canceled after it, too);
        // done: the succeeded.
        let medians = async {
            let jobs = sql::query(
                "SELECT j.created_at, j.updated_at, j.state,
                        (SELECT MIN(t.finished_at) FROM tasks t WHERE t.job_id = j.id AND t.kind IN ('transcode', 'join') AND t.state = 'succeeded')
                 FROM jobs j WHERE j.updated_at >= $1 AND j.state <> 'queued' LIMIT 10000",
            )
            .bind(start)
            .fetch_all(&mut self.read().await?)
            .await?;
            let (mut playable, mut done) = (Vec::new(), Vec::new());
            for r in jobs {
                let (created, updated, state, first): (i64, i64, String, Option<i64>) = (r.get(0), r.get(1), r.get(2), r.get(3));
                if let Some(f) = first {
                    playable.push(f - created);
                }
                if state == "succeeded" {
                    done.push(updated - created);
                }
            }
            Ok::<_, QueueError>((median(playable), median(done)))
        };
        let (running, per_minute, failed_attempts, failed_jobs, avg_queue_wait_ms, (playable, done), jobs_by_state, tasks_by_state) = tokio::try_join!(
            running,
            throughput,
            failed_attempts,
            failed_jobs,
            avg_queue_wait_ms,
            medians,
            self.counts(true),
            self.counts(false)
        )?;
        Ok(Overview {
            jobs_by_state,
            tasks_by_state,
            running,
            throughput: per_minute.iter().sum::<f64>() / 60.0,
            throughput_per_minute: per_minute,
            failed_attempts,
            failed_jobs,
            avg_queue_wait_ms,
            median_first_playable_ms: playable,
            median_done_ms: done,
        })
    }

    /// The counters and gauges of `/metrics` at `now` (see [`Tally`]).
    pub async fn metrics(&self, now: i64) -> Result<Metrics> {
        let settled = now - SETTLE_MS;
        let mut kept = self.tally.0.lock().await;
        let mut counters = match kept.take() {
            Some(c) if c.mark >= settled => c,
            kept => {
                let mut c = kept.unwrap_or(Counters { mark: i64::MIN, ..Counters::default() });
                c.add(&self.counters_between(c.mark, settled).await?);
                c.mark = settled;
                c
            }
        };
        *kept = Some(counters.clone());
        drop(kept);
        counters.add(&self.counters_between(counters.mark, i64::MAX).await?);
        let n = DURATION_BUCKETS.len();
        let task_durations = [TaskKind::Transcode, TaskKind::Chunk, TaskKind::Join, TaskKind::Audio, TaskKind::Thumbnails]
            .map(|k| {
                let (buckets, count, ms) = counters.durations.remove(k.as_str()).unwrap_or_else(|| (vec![0; n], 0, 0));
                (k.as_str().to_string(), buckets, count, ms as f64 / 1000.0)
            })
            .into();
        let mut failures: Vec<(String, i64)> = counters.failures.into_iter().collect();
        failures.sort();
        Ok(Metrics {
            jobs_by_state: self.counts(true).await?,
            tasks_by_state: self.counts(false).await?,
            task_durations,
            failures,
            bytes_published: counters.bytes,
        })
    }

    /// The counters over succeeded tasks that finished, and failed attempts, in
    /// `(after, to]`, read through the time indexes.
    async fn counters_between(&self, after: i64, to: i64) -> Result<Counters> {
        // Prometheus' buckets are cumulative, and so add up over time ranges.
        let mut cols: Vec<String> = DURATION_BUCKETS
            .iter()
            .map(|b| {
                format!(
                    "CAST(SUM(CASE WHEN leased_at IS NOT NULL AND finished_at - leased_at <= {} THEN 1 ELSE 0 END) AS BIGINT)",
                    (b * 1000.0) as i64
                )
            })
            .collect();
        cols.push("CAST(SUM(CASE WHEN leased_at IS NOT NULL THEN 1 ELSE 0 END) AS BIGINT)".into());
        cols.push("CAST(COALESCE(SUM(CASE WHEN leased_at IS NOT NULL THEN finished_at - leased_at ELSE 0 END), 0) AS BIGINT)".into());
        cols.push("CAST(COALESCE(SUM(published_bytes), 0) AS BIGINT)".into());
        // SQLite, without statistics, would rather walk every succeeded task by its
        // state than the last minutes' by the time; but the first count, of every
        // task, is faster in the table's order (2 s, not 21 s, at 900,000 tasks).
        let index = if self.backend() == Backend::Sqlite && after > i64::MIN { "INDEXED BY tasks_finished" } else { "" };
        // Built from the constant buckets above only.
        let sql = format!(
            "SELECT kind, {} FROM tasks {index} WHERE finished_at > $1 AND finished_at <= $2 AND state = 'succeeded' GROUP BY kind",
            cols.join(", ")
        );
        let tasks = sql::query(sql).bind(after).bind(to);
        let failures = sql::query("SELECT kind, COUNT(*) FROM task_failures WHERE at > $1 AND at <= $2 GROUP BY kind").bind(after).bind(to);
        let (tasks, failures) = if self.backend() == Backend::Postgres {
            // A prepared statement's generic plan, made without the range's bounds,
            // walks every task (140 ms a scrape at 180,000 tasks): plan it for them.
            let mut tx = self.begin().await?;
            sql::query("SELECT set_config('plan_cache_mode', 'force_custom_plan', true)").execute(&mut tx).await?;
            let read = (tasks.fetch_all(&mut tx).await?, failures.fetch_all(&mut tx).await?);
            tx.commit().await?;
            read
        } else {
            // SQLite's reads go to the pool, never to the writer's connection.
            (tasks.fetch_all(&mut self.read().await?).await?, failures.fetch_all(&mut self.read().await?).await?)
        };
        let n = DURATION_BUCKETS.len();
        let mut c = Counters::default();
        for r in tasks {
            let buckets: Vec<i64> = (1..=n).map(|i| r.get::<Option<i64>, _>(i).unwrap_or(0)).collect();
            let count = r.get::<Option<i64>, _>(n + 1).unwrap_or(0);
            c.durations.insert(r.get(0), (buckets, count, r.get::<Option<i64>, _>(n + 2).unwrap_or(0)));
            c.bytes += r.get::<Option<i64>, _>(n + 3).unwrap_or(0);
        }
        c.failures = failures.into_iter().map(|r| (r.get(0), r.get(1))).collect();
        Ok(c)
    }
}
