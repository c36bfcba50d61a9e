//! Where the queue's statements run.
//!
//! On SQLite one connection, held for the process's life behind a FIFO lock, runs
//! every write and every read on a worker's path (authentication, leases,
//! heartbeats, completions). SQLite has one writer at a time anyway, and a pool
//! made that expensive: writers on different connections waited out each other's
//! locks in SQLite's sleeping busy handler, and every write emptied the other
//! connections' page caches. It is a rusqlite connection called on the holder's
//! own thread ([`super::sql`]): a statement costs what SQLite takes to run it,
//! with no hand-off to another thread. The sqlx pool remains for the dashboard's
//! and the API's longer reads, which then never delay a lease.
//!
//! On PostgreSQL, where several coordinators write at once, everything runs on the
//! pool.

use super::sql::{Db, Exec, sqlite};
use super::{Backend, Queue, QueueError, Result};
use sqlx::Any;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, OwnedMutexGuard};

/// Longest wait for the held connection. Every holder runs a few statements, so a
/// wait this long is a bug (a holder waiting for the lock it holds); it fails the
/// caller instead of hanging the farm.
const HELD_WAIT: Duration = Duration::from_secs(30);

/// SQLite's held connection, and whether a transaction that was never committed
/// (its holder returned early or was dropped) is still open on it.
pub(crate) struct Held {
    conn: rusqlite::Connection,
    in_tx: bool,
}

impl Held {
    pub(super) fn new(conn: rusqlite::Connection) -> Arc<Mutex<Held>> {
        Arc::new(Mutex::new(Held { conn, in_tx: false }))
    }

    /// Runs statements without parameters; a failure ends the transaction, if any.
    fn batch(&mut self, sql: &str) -> Result<()> {
        Ok(sqlite::batch(&mut self.conn, sql)?)
    }
}

/// A connection to run statements on: SQLite's held one, or one from the pool.
pub(crate) enum Conn {
    Held(OwnedMutexGuard<Held>),
    Pooled(sqlx::pool::PoolConnection<Any>),
}

impl Exec for Conn {
    fn db(&mut self) -> Db<'_> {
        match self {
            Conn::Held(h) => Db::Sqlite(&mut h.conn),
            Conn::Pooled(c) => Db::Any(&mut *c),
        }
    }
}

/// A transaction. Dropped without [`Tx::commit`], it rolls back at once (sqlx's
/// own transaction does the same on the pool, in the background).
pub(crate) enum Tx {
    // Each `Some` until it commits or drops.
    Held(Option<OwnedMutexGuard<Held>>),
    Pooled(Option<sqlx::Transaction<'static, Any>>),
}

impl Tx {
    pub(crate) async fn commit(mut self) -> Result<()> {
        match &mut self {
            Tx::Held(h) => {
                let mut h = h.take().expect("an open transaction");
                h.batch("COMMIT")?;
                h.in_tx = false;
            }
            Tx::Pooled(tx) => tx.take().expect("an open transaction").commit().await?,
        }
        Ok(())
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        if let Tx::Held(h) = self
            && let Some(mut h) = h.take()
            && h.in_tx
        {
            // At once, on this thread, while the lock is still held.
            let _ = h.batch("ROLLBACK");
            h.in_tx = false;
        }
    }
}

impl Exec for Tx {
    fn db(&mut self) -> Db<'_> {
        match self {
            Tx::Held(h) => Db::Sqlite(&mut h.as_mut().expect("an open transaction").conn),
            Tx::Pooled(t) => Db::Any(&mut *t.as_mut().expect("an open transaction")),
        }
    }
}

/// The transaction-level advisory lock that serializes the state machine's
/// multi-statement transactions on PostgreSQL, as SQLite's single writer does.
const WRITE_LOCK: i64 = 0x6472_616b_6500; // "drake\0"

impl Queue {
    /// The connection for the queue's own statements (see the module's doc).
    pub(crate) async fn conn(&self) -> Result<Conn> {
        match &self.held {
            Some(_) => Ok(Conn::Held(self.lock_held().await?)),
            None => Ok(Conn::Pooled(self.pool.acquire().await?)),
        }
    }

    /// A pooled connection for longer reads (the dashboard's, the API's).
    pub(crate) async fn read(&self) -> Result<sqlx::pool::PoolConnection<Any>> {
        Ok(self.pool.acquire().await?)
    }

    async fn lock_held(&self) -> Result<OwnedMutexGuard<Held>> {
        let held = self.held.clone().expect("a held connection");
        let mut h = tokio::time::timeout(HELD_WAIT, held.lock_owned())
            .await
            .map_err(|_| QueueError::Conflict("the database connection has been busy for 30 s".into()))?;
        if h.in_tx {
            // A transaction its holder left: roll it back (it may already be gone,
            // if a failed statement ended it).
            let _ = h.batch("ROLLBACK");
            h.in_tx = false;
        }
        Ok(h)
    }

    /// A plain transaction: it takes no lock of its own on PostgreSQL.
    pub(crate) async fn begin(&self) -> Result<Tx> {
        match &self.held {
            Some(_) => {
                let mut h = self.lock_held().await?;
                // IMMEDIATE: the write lock from the first statement, so that a
                // reader-turned-writer never meets another process's write (`db copy`).
                h.batch("BEGIN IMMEDIATE")?;
                h.in_tx = true;
                Ok(Tx::Held(Some(h)))
            }
            None => Ok(Tx::Pooled(Some(self.pool.begin().await?))),
        }
    }

    /// A transaction that holds the writer's lock from its first statement, so that
    /// what it reads stays true until it commits: SQLite's write lock, or on
    /// PostgreSQL a transaction-level advisory lock that every coordinator takes.
    pub(crate) async fn write_tx(&self) -> Result<Tx> {
        let mut tx = self.begin().await?;
        if self.backend == Backend::Postgres {
            super::sql::query("SELECT pg_advisory_xact_lock($1)").bind(WRITE_LOCK).execute(&mut tx).await?;
        }
        Ok(tx)
    }
}
