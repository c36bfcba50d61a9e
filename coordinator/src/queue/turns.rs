//! Turns for reports: leases go before heartbeats, completions, promotions and
//! failures.
//!
//! A report takes a turn (a FIFO semaphore) around its statements, never across
//! the store's I/O, so a slow store cannot make heartbeats wait; a lease takes
//! none. A lease therefore waits behind at most as many reports as there are
//! turns, however many workers report at once: with 500 simulated workers
//! (`bench/queue.sh`) the p99 of a lease fell from 70 ms to 15 on SQLite and from
//! 240 ms to 12-20 on PostgreSQL, as the queue of reports moved from the
//! database's connections, where leases waited in it, to this FIFO of turns,
//! where they do not.
//!
//! How many turns:
//! - SQLite: one. Its one connection runs one statement at a time, so a second
//!   turn only queues a report at the connection, ahead of leases: one turn did 5%
//!   more task cycles than four, at 100 and at 500 workers, in all six paired runs.
//! - PostgreSQL: four for the whole farm, shared out among the live coordinators
//!   (at least one each). The server runs statements side by side and a report's
//!   round trip is most of its time: one turn capped a lone coordinator at 950
//!   task cycles a second, four did 1,250, eight 3% more than four with leases'
//!   p99 up by half. The server is shared, so the reports in front of a lease there
//!   are all coordinators' turns: two coordinators behind nginx with two turns
//!   each had a lease p99 of 26-31 ms at 500 workers, with four each 50-60 ms, for
//!   6% fewer task cycles (three paired runs).

use super::Backend;
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit};

pub(crate) struct Turns {
    turns: Arc<Semaphore>,
    /// Turns this coordinator leaves to the others.
    set_aside: Mutex<Vec<OwnedSemaphorePermit>>,
    farm: usize,
}

impl Turns {
    pub(crate) fn new(backend: Backend) -> Turns {
        let farm = match backend {
            Backend::Sqlite => 1,
            Backend::Postgres => 4,
        };
        Turns { turns: Arc::new(Semaphore::new(farm)), set_aside: Mutex::new(Vec::new()), farm }
    }

    /// A report's turn, held while its statements run.
    pub(crate) async fn take(&self) -> SemaphorePermit<'_> {
        self.turns.acquire().await.expect("the turns' semaphore is never closed")
    }

    /// Keeps this coordinator's share of the farm's turns while `coordinators`
    /// share the database (each reconciler pass says how many). Turns in use are
    /// set aside at a later call, once they are free: this never waits.
    pub(crate) fn share(&self, coordinators: usize) {
        let mine = (self.farm / coordinators.max(1)).max(1);
        let mut aside = self.set_aside.lock().unwrap_or_else(|e| e.into_inner());
        aside.truncate(self.farm - mine);
        while aside.len() < self.farm - mine {
            match self.turns.clone().try_acquire_owned() {
                Ok(turn) => aside.push(turn),
                Err(_) => break,
            }
        }
    }

    /// Turns free now (tests).
    #[cfg(test)]
    pub(crate) fn free(&self) -> usize {
        self.turns.available_permits()
    }
}
