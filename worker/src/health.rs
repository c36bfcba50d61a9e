//! A worker's own health. An engine that fails task after task, for different
//! jobs, says more about the machine (a bad libav build, a failing disk or memory)
//! than about the uploads: such a worker rests, taking no tasks and saying why in
//! its lease polls (the dashboard shows it paused), and then tries again. Without
//! it, a broken machine fails every task it can lease, as fast as it can lease
//! them, each at the cost of one of the task's attempts.
//!
//! Only the engine's own failures count: a crash, an internal error, a hang, a
//! timeout, an engine that cannot start. Bad input does not (it is the upload's),
//! nor storage trouble (the farm's, shared by every worker), nor a job failed more
//! than once (a poison upload that crashes libav on every machine counts once).

use std::time::{Duration, Instant};

/// Failures of this many different jobs in a row, with no success between, and the
/// worker rests.
pub const REST_AFTER_JOBS: usize = 3;
/// The first rest; each rest after another failure, before any success, doubles
/// up to [`LONGEST_REST`].
pub const FIRST_REST: Duration = Duration::from_secs(300);
pub const LONGEST_REST: Duration = Duration::from_secs(3600);

#[derive(Debug, Default)]
pub struct Health {
    /// The jobs whose tasks the engine failed since its last success, each once.
    failed_jobs: Vec<String>,
    /// Until when it rests, and why (the same words for the whole rest, so that the
    /// coordinator records the pause once).
    resting: Option<(Instant, String)>,
    /// The length of the rest after the next failure.
    next_rest: Option<Duration>,
}

impl Health {
    /// The engine made a task's outputs: the worker is well.
    pub fn succeeded(&mut self) {
        *self = Health::default();
    }

    /// The engine failed a task of `job` with `error`. Returns why the worker
    /// rests, when this failure starts a rest.
    pub fn failed(&mut self, job: &str, error: &str, now: Instant) -> Option<String> {
        if !self.failed_jobs.iter().any(|j| j == job) {
            self.failed_jobs.push(job.to_string());
        }
        if self.failed_jobs.len() < REST_AFTER_JOBS {
            return None;
        }
        let rest = self.next_rest.unwrap_or(FIRST_REST);
        self.next_rest = Some((rest * 2).min(LONGEST_REST));
        let error: String = error.chars().take(300).collect();
        let why = format!(
            "its engine failed tasks of {} jobs in a row (last: {error}); resting {} s before taking tasks again",
            self.failed_jobs.len(),
            rest.as_secs()
        );
        self.resting = Some((now + rest, why.clone()));
        Some(why)
    }

    /// Why the worker takes no tasks now, while it rests.
    pub fn resting(&mut self, now: Instant) -> Option<&str> {
        if self.resting.as_ref().is_some_and(|(until, _)| *until <= now) {
            self.resting = None;
        }
        self.resting.as_ref().map(|(_, why)| why.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_of_different_jobs_in_a_row_rest_the_worker_longer_each_time() {
        let t0 = Instant::now();
        let mut h = Health::default();
        // One job failed on every attempt (a poison upload) counts once.
        for _ in 0..5 {
            assert_eq!(h.failed("a", "exit 70", t0), None);
        }
        assert_eq!(h.failed("b", "exit 70", t0), None);
        let why = h.failed("c", "the engine exited with signal 4", t0).expect("three jobs in a row");
        assert!(why.contains("3 jobs") && why.contains("signal 4") && why.contains("300 s"), "{why}");
        assert_eq!(h.resting(t0 + FIRST_REST - Duration::from_millis(1)), Some(why.as_str()));
        assert_eq!(h.resting(t0 + FIRST_REST), None, "rested");
        // Still failing after its rest: at once a rest twice as long, up to an hour.
        let t1 = t0 + FIRST_REST;
        assert!(h.failed("d", "exit 70", t1).unwrap().contains("600 s"));
        let mut rests = Vec::new();
        for k in 0..5 {
            let why = h.failed("e", "exit 70", t1 + Duration::from_secs(k)).unwrap();
            rests.push(why.split("resting ").nth(1).unwrap().to_string());
        }
        assert_eq!(
            rests,
            ["1200 s before taking tasks again", "2400 s before taking tasks again"]
                .iter()
                .chain(&["3600 s before taking tasks again"; 3])
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
        );
        // A success ends it all: the next failures count from none.
        h.succeeded();
        assert_eq!(h.resting(t1), None);
        assert_eq!(h.failed("f", "exit 70", t1), None);
        assert_eq!(h.failed("g", "exit 70", t1), None);
        assert!(h.failed("h", "exit 70", t1).unwrap().contains("300 s"));
    }
}
