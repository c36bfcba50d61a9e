//! Where the queue's statements run.
//!
//! On SQLite one connection, held for the process's life behind a FIFO lock, runs
//! every write and every read on a worker's path (authentication, leases,
//! heartbeats, completions). SQLite has one writer at a time anyway, and a pool
//! made that expensive: writers on different connections waited out each other's
//! locks in SQLite's sleeping busy handler, and every write emptied the other
//! connections' page caches. It is a rusqlite connection called on the holder's
//! own thread ([`super::sql`]): a statement costs what SQLite takes to run it,
//! with no hand-off to another thread. Operations share commits ([`Held`]). The
//! sqlx pool remains for the dashboard's and the API's longer reads, which then
//! never delay a lease.
//!
//! On PostgreSQL, where several coordinators write at once, statements and
//! transactions run on connections the queue keeps itself ([`PgConns`]), not on
//! sqlx's pool: that pool tests every connection given back to it with a round
//! trip to the server before anyone may have it again, which doubled the round
//! trips of a task cycle. sqlx's pool remains for migrations, `drake db copy` and
//! tests.

use super::sql::{Db, Exec, sqlite};
use super::{Backend, Queue, QueueError, Result};
use sqlx::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, OwnedMutexGuard, watch};

/// Longest wait for the held connection. Every holder runs a few statements, so a
/// wait this long is a bug (a holder waiting for the lock it holds); it fails the
/// caller instead of hanging the farm.
const HELD_WAIT: Duration = Duration::from_secs(30);

/// Group commit: most operations one commit carries, and the longest a batch
/// stays open while operations keep coming.
const GROUP_MAX_OPS: u32 = 64;
const GROUP_MAX_AGE: Duration = Duration::from_millis(4);

/// How long an operation waits for someone else to commit its batch before it
/// commits it itself (the one that would have was dropped mid-way).
const GROUP_FLUSH_AFTER: Duration = Duration::from_millis(10);

/// SQLite's held connection. Operations on it share transactions (group
/// commit): each transaction runs in a savepoint of the open batch (a single
/// statement needs none, see [`Shared::begin_op`]), and the batch commits
/// when no other operation is waiting for the connection, or it has carried
/// [`GROUP_MAX_OPS`], or it is [`GROUP_MAX_AGE`] old. Nothing an operation did
/// is answered before its batch commits: it waits for that. A commit writes the
/// WAL pages the whole batch changed once, instead of once per operation: the
/// tasks table and its indexes share most of their pages between operations.
pub(crate) struct Held {
    conn: rusqlite::Connection,
    /// An operation's savepoint is open (its holder is running it, or dropped it
    /// mid-way).
    op: bool,
    batch: Option<Batch>,
    next_seq: u64,
}

struct Batch {
    seq: u64,
    ops: u32,
    opened: Instant,
}

/// Which batches have ended: every batch up to `seq`; `failed` names the recent
/// ones whose commit failed, and why.
#[derive(Clone, Default)]
struct Ended {
    seq: u64,
    failed: Vec<(u64, String)>,
}

/// The held connection and what its operations share.
pub(crate) struct Shared {
    held: Arc<Mutex<Held>>,
    /// Operations waiting for the connection: while there are some, a finished
    /// operation leaves its batch open for them.
    waiting: AtomicUsize,
    ended: watch::Sender<Ended>,
}

impl Shared {
    pub(super) fn new(conn: rusqlite::Connection) -> Arc<Shared> {
        Arc::new(Shared {
            held: Arc::new(Mutex::new(Held { conn, op: false, batch: None, next_seq: 1 })),
            waiting: AtomicUsize::new(0),
            ended: watch::channel(Ended::default()).0,
        })
    }

    /// The connection, with any operation its last holder left unfinished undone.
    async fn lock(&self) -> Result<OwnedMutexGuard<Held>> {
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let waiting = Waiting(&self.waiting);
        let mut h = tokio::time::timeout(HELD_WAIT, self.held.clone().lock_owned())
            .await
            .map_err(|_| QueueError::Conflict("the database connection has been busy for 30 s".into()))?;
        drop(waiting);
        if h.op {
            h.undo_op(self, true);
        }
        Ok(h)
    }

    /// Starts an operation in the open batch (opening one if none is). A
    /// transaction's runs in a savepoint, so that it can be undone alone. A single
    /// statement needs none: SQLite undoes a failed statement by itself, and one
    /// that ran cannot be half done (the savepoint pair cost 40 µs a task cycle
    /// in `bench/queue.sh`).
    async fn begin_op(self: &Arc<Shared>, savepoint: bool) -> Result<Op> {
        let mut h = self.lock().await?;
        if h.batch.is_none() {
            // IMMEDIATE: the write lock from the first statement, so that a
            // reader-turned-writer never meets another process's write (`db copy`).
            h.batch("BEGIN IMMEDIATE")?;
            let seq = h.next_seq;
            h.next_seq += 1;
            h.batch = Some(Batch { seq, ops: 0, opened: Instant::now() });
        }
        if savepoint {
            h.batch("SAVEPOINT op")?;
            h.op = true;
        }
        let batch = h.batch.as_mut().expect("an open batch");
        batch.ops += 1;
        let seq = batch.seq;
        Ok(Op { held: Some(h), shared: self.clone(), seq, savepoint })
    }

    /// Resolves when batch `seq` has ended: its commit's outcome.
    async fn ended(&self, seq: u64) -> Result<()> {
        let mut rx = self.ended.subscribe();
        loop {
            {
                let ended = rx.borrow_and_update();
                if ended.seq >= seq {
                    return match ended.failed.iter().find(|(s, _)| *s == seq) {
                        Some((_, why)) => Err(QueueError::Db(sqlx::Error::Protocol(format!("committing: {why}")))),
                        None => Ok(()),
                    };
                }
            }
            if tokio::time::timeout(GROUP_FLUSH_AFTER, rx.changed()).await.is_err() {
                // Whoever would have committed it is gone: commit it here.
                let mut h = self.lock().await?;
                if h.batch.as_ref().is_some_and(|b| b.seq == seq) {
                    h.commit(self);
                }
            }
        }
    }
}

impl Held {
    /// Runs statements without parameters.
    fn batch(&mut self, sql: &str) -> Result<()> {
        Ok(sqlite::batch(&mut self.conn, sql)?)
    }

    /// Undoes the open operation, leaving the rest of its batch as it was (a
    /// single statement undid itself when it failed).
    fn undo_op(&mut self, shared: &Shared, savepoint: bool) {
        self.op = false;
        if (savepoint && self.batch("ROLLBACK TO op; RELEASE op").is_err()) || self.conn.is_autocommit() {
            // SQLite ended the whole transaction (a full disk, an I/O error): the
            // batch's other operations are lost too, and are told so.
            self.abandon(shared, "the transaction was rolled back");
        }
    }

    /// Commits the open batch and tells its operations.
    fn commit(&mut self, shared: &Shared) {
        if let Err(e) = self.batch("COMMIT") {
            self.abandon(shared, &e.to_string());
            return;
        }
        if let Some(b) = self.batch.take() {
            shared.ended.send_modify(|ended| ended.seq = b.seq);
        }
    }

    /// Ends the open batch as failed.
    fn abandon(&mut self, shared: &Shared, why: &str) {
        if !self.conn.is_autocommit() {
            let _ = self.batch("ROLLBACK");
        }
        if let Some(b) = self.batch.take() {
            shared.ended.send_modify(|ended| {
                ended.seq = b.seq;
                ended.failed.push((b.seq, why.to_string()));
                let len = ended.failed.len();
                ended.failed.drain(..len.saturating_sub(32));
            });
        }
    }

    /// Whether the open batch should commit now.
    fn due(&self, shared: &Shared) -> bool {
        self.batch
            .as_ref()
            .is_some_and(|b| shared.waiting.load(Ordering::Acquire) == 0 || b.ops >= GROUP_MAX_OPS || b.opened.elapsed() >= GROUP_MAX_AGE)
    }
}

/// One operation on the held connection: the lock, and the batch it is in.
/// Dropped before [`Op::finish`], it is undone.
pub(crate) struct Op {
    held: Option<OwnedMutexGuard<Held>>,
    shared: Arc<Shared>,
    seq: u64,
    /// It runs in a savepoint (a transaction; not a single statement).
    savepoint: bool,
}

impl Op {
    /// Ends the operation (kept when `keep`, else undone), lets the next one run,
    /// and when it was kept waits until its batch has committed.
    async fn finish(mut self, keep: bool) -> Result<()> {
        let mut h = self.held.take().expect("an open operation");
        let kept = keep && {
            h.op = false;
            !self.savepoint || h.batch("RELEASE op").is_ok()
        };
        if !kept {
            h.undo_op(&self.shared, self.savepoint);
        }
        if h.due(&self.shared) {
            h.commit(&self.shared);
        }
        drop(h);
        if !kept {
            return Ok(());
        }
        self.shared.ended(self.seq).await
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        if let Some(mut h) = self.held.take() {
            // At once, on this thread, while the lock is still held.
            h.undo_op(&self.shared, self.savepoint);
            if h.due(&self.shared) {
                h.commit(&self.shared);
            }
        }
    }
}

/// A connection to run statements on: SQLite's held one, or one of PostgreSQL's.
pub(crate) enum Conn {
    Held(Op),
    Pg(PgConn),
}

impl Exec for Conn {
    fn db(&mut self) -> Db<'_> {
        match self {
            Conn::Held(op) => Db::Sqlite(&mut op.held.as_mut().expect("an open operation").conn),
            Conn::Pg(c) => c.db(),
        }
    }
}

impl Conn {
    /// Ends a statement run on its own: kept if it succeeded, and on SQLite once
    /// its batch has committed.
    pub(crate) async fn finish(self, ok: bool) -> Result<()> {
        match self {
            Conn::Held(op) => op.finish(ok).await,
            Conn::Pg(_) => Ok(()),
        }
    }
}

/// A transaction. Dropped without [`Tx::commit`], it is undone at once (on
/// PostgreSQL in the background, before its connection is used again).
pub(crate) enum Tx {
    Held(Op),
    Pg(PgConn),
}

impl Tx {
    pub(crate) async fn commit(self) -> Result<()> {
        match self {
            Tx::Held(op) => op.finish(true).await,
            Tx::Pg(mut c) => {
                if let Err(e) = sqlx::raw_sql("COMMIT").execute(c.connection()).await {
                    c.discard();
                    return Err(e.into());
                }
                c.in_tx = false;
                Ok(())
            }
        }
    }
}

impl Exec for Tx {
    fn db(&mut self) -> Db<'_> {
        match self {
            Tx::Held(op) => Db::Sqlite(&mut op.held.as_mut().expect("an open transaction").conn),
            Tx::Pg(c) => c.db(),
        }
    }
}

/// A connection for longer reads: one of sqlx's pool (SQLite), or one of
/// PostgreSQL's kept ones.
pub(crate) enum Read {
    Pooled(sqlx::pool::PoolConnection<Any>),
    Pg(PgConn),
}

impl Exec for Read {
    fn db(&mut self) -> Db<'_> {
        match self {
            Read::Pooled(c) => Db::Any(&mut *c),
            Read::Pg(c) => c.db(),
        }
    }
}

/// PostgreSQL connections the queue keeps (see the module's doc): at most
/// [`PgConns::MAX`] at once, made when none is idle, given back without a round
/// trip. A statement cut off mid-way (its caller dropped) leaves its answer
/// unread, and sqlx reads it off before the connection's next statement; a
/// transaction dropped open is rolled back before its connection is kept. A
/// connection whose rollback fails is closed, and so is one whose statement or
/// commit failed for a reason other than the statement's own (a broken socket).
pub(crate) struct PgConns {
    url: String,
    /// `QueueConfig::statement_timeout_ms`, for each connection's statements and its opening.
    timeout_ms: i64,
    idle: std::sync::Mutex<Vec<sqlx::AnyConnection>>,
    permits: Arc<tokio::sync::Semaphore>,
}

/// One of [`PgConns`], given back when dropped.
pub(crate) struct PgConn {
    conn: Option<sqlx::AnyConnection>,
    keeper: Arc<PgConns>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    in_tx: bool,
}

impl PgConns {
    /// Connections per coordinator, as sqlx's pool had.
    pub(crate) const MAX: usize = 16;

    pub(crate) fn new(url: &str, timeout_ms: i64) -> Arc<PgConns> {
        Arc::new(PgConns {
            url: url.to_string(),
            timeout_ms: timeout_ms.max(1),
            idle: Default::default(),
            permits: Arc::new(tokio::sync::Semaphore::new(PgConns::MAX)),
        })
    }

    /// A new connection whose statements fail after the timeout.
    async fn open(&self) -> Result<sqlx::AnyConnection> {
        let limit = Duration::from_millis(self.timeout_ms as u64);
        let opening = async {
            let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&self.url).await?;
            sqlx::Executor::execute(&mut conn, sqlx::AssertSqlSafe(format!("SET statement_timeout = {}", self.timeout_ms))).await?;
            Ok::<_, QueueError>(conn)
        };
        tokio::time::timeout(limit, opening).await.map_err(|_| {
            let why = format!("opening a connection to PostgreSQL took longer than {} ms", self.timeout_ms);
            QueueError::Db(sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, why)))
        })?
    }

    async fn get(self: &Arc<PgConns>) -> Result<PgConn> {
        let permit = self.permits.clone().acquire_owned().await.map_err(|e| QueueError::Conflict(e.to_string()))?;
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match idle {
            Some(c) => c,
            None => self.open().await?,
        };
        Ok(PgConn { conn: Some(conn), keeper: self.clone(), permit: Some(permit), in_tx: false })
    }

    fn keep(&self, conn: sqlx::AnyConnection) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
    }
}

impl PgConn {
    fn db(&mut self) -> Db<'_> {
        Db::Pg(self)
    }

    pub(crate) fn connection(&mut self) -> &mut sqlx::AnyConnection {
        self.conn.as_mut().expect("a kept connection")
    }

    /// After a statement failed: a connection that failed, rather than its
    /// statement, is closed instead of kept.
    pub(crate) fn failed(&mut self, e: &sqlx::Error) {
        if matches!(e, sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::Tls(_) | sqlx::Error::WorkerCrashed) {
            self.discard();
        }
    }

    /// Closes the connection instead of keeping it.
    fn discard(&mut self) {
        self.conn = None;
        self.in_tx = false;
    }
}

impl Drop for PgConn {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else { return };
        if !self.in_tx {
            self.keeper.keep(conn);
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (keeper, permit) = (self.keeper.clone(), self.permit.take());
        runtime.spawn(async move {
            if sqlx::raw_sql("ROLLBACK").execute(&mut conn).await.is_ok() {
                keeper.keep(conn);
            }
            drop(permit);
        });
    }
}

/// The transaction-level advisory lock that serializes the state machine's
/// multi-statement transactions on PostgreSQL, as SQLite's single writer does.
pub(super) const WRITE_LOCK: i64 = 0x6472_616b_6500; // "drake\0"

impl Queue {
    /// A connection for one statement of the queue's own (see the module's doc).
    pub(crate) async fn conn(&self) -> Result<Conn> {
        match (&self.held, &self.pg) {
            (Some(shared), _) => Ok(Conn::Held(shared.begin_op(false).await?)),
            (None, Some(pg)) => Ok(Conn::Pg(pg.get().await?)),
            (None, None) => unreachable!("a queue is on SQLite or PostgreSQL"),
        }
    }

    /// Runs statements on their own, each on [`Queue::conn`]: `&mut q.auto()`
    /// is an executor.
    pub(crate) fn auto(&self) -> super::sql::Auto<'_> {
        super::sql::Auto(self)
    }

    /// A pooled connection for longer reads (the dashboard's, the API's).
    pub(crate) async fn read(&self) -> Result<Read> {
        match &self.pg {
            Some(pg) => Ok(Read::Pg(pg.get().await?)),
            None => Ok(Read::Pooled(self.pool.acquire().await?)),
        }
    }

    /// A plain transaction: it takes no lock of its own on PostgreSQL.
    pub(crate) async fn begin(&self) -> Result<Tx> {
        match (&self.held, &self.pg) {
            (Some(shared), _) => Ok(Tx::Held(shared.begin_op(true).await?)),
            (None, Some(pg)) => {
                let mut c = pg.get().await?;
                if let Err(e) = sqlx::raw_sql("BEGIN").execute(c.connection()).await {
                    c.discard();
                    return Err(e.into());
                }
                c.in_tx = true;
                Ok(Tx::Pg(c))
            }
            (None, None) => unreachable!("a queue is on SQLite or PostgreSQL"),
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
