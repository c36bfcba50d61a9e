//! Whether a worker holds a lease, as the embedded store asks before each of a
//! worker's requests, and a short memory of the answers.
//!
//! A worker publishing a rendition makes dozens of requests in a burst (a MKCOL,
//! then a PUT and a MOVE per file), each asking the same question. A yes is kept
//! for [`Holds::TTL`]; a no is never kept. A lease this coordinator grants is a
//! yes from its commit, so a worker's first write asks the database nothing.
//! This coordinator forgets the yeses a transition of its own ends (a completion or failure of the worker's, a cancel,
//! a reap, a removal), so the store refuses at once what it must. A lease ended
//! through another coordinator stops writes here within the TTL; what such a
//! write leaves is in a staging directory that no completion of a later epoch
//! promotes, and that the sweep removes (it waits two lease TTLs after the end).

use super::{Queue, Result, sql};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A kept yes: (worker, job, the lease's name and epoch if the question named one).
type Key = (String, String, Option<(String, i64)>);

#[derive(Default)]
pub(crate) struct Holds(Mutex<HashMap<Key, Instant>>);

impl Holds {
    /// How long a yes is kept.
    const TTL: Duration = Duration::from_secs(1);
    /// More leases than a farm holds at once; past it, the memory starts again.
    const MAX: usize = 10_000;

    fn kept(&self, key: &Key) -> bool {
        let kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        kept.get(key).is_some_and(|at| at.elapsed() < Holds::TTL)
    }

    fn keep(&self, keys: impl IntoIterator<Item = Key>) {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for key in keys {
            if kept.len() >= Holds::MAX {
                kept.clear();
            }
            kept.insert(key, Instant::now());
        }
    }

    /// Keeps the yeses a lease just committed makes true: `worker` holds the task
    /// `name` of `job` at `epoch`, and so a task of `job`.
    pub(crate) fn leased(&self, worker: &str, job: &str, name: &str, epoch: i64) {
        self.keep([(worker.to_string(), job.to_string(), Some((name.to_string(), epoch))), (worker.to_string(), job.to_string(), None)]);
    }

    /// Forgets the yeses of a worker (its lease ended, or it was removed).
    pub(crate) fn forget_worker(&self, worker: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).retain(|(w, _, _), _| w != worker);
    }

    /// Forgets the yeses on a job's tasks (leases of the job ended).
    pub(crate) fn forget_jobs(&self, jobs: &[String]) {
        if !jobs.is_empty() {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).retain(|(_, j, _), _| !jobs.contains(j));
        }
    }
}

impl Queue {
    /// Whether `worker` holds a live lease on a task of `job` (with `lease`: on the
    /// task of that name at that epoch). A yes may be up to [`Holds::TTL`] old.
    pub async fn worker_holds(&self, worker: &str, job: &str, lease: Option<(&str, i64)>) -> Result<bool> {
        let key: Key = (worker.to_string(), job.to_string(), lease.map(|(n, e)| (n.to_string(), e)));
        if self.holds.kept(&key) {
            return Ok(true);
        }
        // With a lease, the task by its name (`tasks_job_name`): one row, where the
        // job's leased tasks may be hundreds.
        let query = match lease {
            Some((name, epoch)) => sql::query_scalar(
                "SELECT CASE WHEN EXISTS (SELECT 1 FROM tasks WHERE job_id = $1 AND name = $3 AND epoch = $4 AND worker_id = $2
                     AND state IN ('leased', 'running')) THEN 1 ELSE 0 END",
            )
            .bind(job)
            .bind(worker)
            .bind(name)
            .bind(epoch),
            None => sql::query_scalar(
                "SELECT CASE WHEN EXISTS (SELECT 1 FROM tasks WHERE job_id = $1 AND worker_id = $2 AND state IN ('leased', 'running'))
                 THEN 1 ELSE 0 END",
            )
            .bind(job)
            .bind(worker),
        };
        let held: i64 = query.fetch_one(&mut self.auto()).await?;
        if held != 0 {
            self.holds.keep([key]);
        }
        Ok(held != 0)
    }
}
