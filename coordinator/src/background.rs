//! apalis runs the coordinator's own chores: probing and planning new jobs,
//! finalizing jobs whose tasks all succeeded, delivering webhooks (each retry is a
//! chore scheduled after its backoff), and, on an apalis-cron schedule, the
//! reconciler every second (`lifecycle::reconcile`: lapsed leases, owed chores,
//! overdue promotions and deliveries). apalis is only the executor: what a job is
//! owed lives in `drake.db` with the job, and a chore lost here is pushed again. The durable chores are queued in SQLite (`chores.db`,
//! beside `drake.db`: apalis's `Jobs`/`Workers` tables would collide with ours, as
//! SQLite table names ignore case), they survive a coordinator restart: a job
//! accepted just before a crash still gets planned. apalis workers are in-process only, so remote
//! transcode tasks use the coordinator's own lease tables instead (see `queue`).
//!
//! Settings follow the verified pitfalls of apalis 1.0: a named queue, batch size 1,
//! a short poll interval, few attempts, unique worker names per process start, a
//! monitor that restarts a worker after a database error, and its own migrations table.

use crate::chores;
use crate::state::AppState;
use apalis::prelude::*;
use apalis_cron::{CronScheduler, Tick};
use apalis_postgres::PostgresStorage;
use apalis_sqlite::{Config, SqlitePool, SqliteStorage};
use serde::{Deserialize, Serialize};
use std::str::FromStr;
use std::time::Duration;

/// Probe a new job's source and queue its tasks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeAndPlan {
    pub job_id: String,
    /// The seq it was armed with; only that one can claim the job's probe.
    #[serde(default)]
    pub seq: i64,
}

/// Write a finished job's master playlist and manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Finalize {
    pub job_id: String,
    #[serde(default)]
    pub seq: i64,
}

/// Make one delivery attempt of a webhook.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliverWebhook {
    pub delivery_id: String,
}

const PROBE_QUEUE: &str = "drake.probe_and_plan";
const FINALIZE_QUEUE: &str = "drake.finalize";
const WEBHOOK_QUEUE: &str = "drake.webhooks";

/// How often the reconciler runs (cron, seconds first).
const REAP_SCHEDULE: &str = "* * * * * *";

/// Wakes an apalis worker every `period` to look for new chores.
///
/// apalis 1.0's `IntervalStrategy` re-arms its timer without polling it, so after the
/// first tick nothing wakes an idle worker until its 30 s heartbeat (measured: a
/// finalize chore waited 21 s). Polling the tokio interval again right after a tick
/// registers the waker for the next one.
struct Ticker(tokio::time::Interval);

impl Ticker {
    fn every(period: Duration) -> Ticker {
        let mut i = tokio::time::interval(period);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ticker(i)
    }
}

impl PollStrategy for Ticker {
    fn poll_drive(&mut self, cx: &mut std::task::Context<'_>, _: &PollSnapshot) -> std::task::Poll<Option<()>> {
        match self.0.poll_tick(cx) {
            std::task::Poll::Ready(_) => {
                let _ = self.0.poll_tick(cx);
                std::task::Poll::Ready(Some(()))
            }
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}

/// Pushes chores; cheap to clone. On SQLite the chores are queued in `chores.db`
/// beside the farm's database; on PostgreSQL in the farm's database, in apalis's
/// own schema `apalis`, where every coordinator pushes and takes them.
#[derive(Clone)]
pub enum Chores {
    Sqlite { probe: SqliteStorage<ProbeAndPlan>, finalize: SqliteStorage<Finalize>, webhooks: SqliteStorage<DeliverWebhook> },
    Postgres { probe: PostgresStorage<ProbeAndPlan>, finalize: PostgresStorage<Finalize>, webhooks: PostgresStorage<DeliverWebhook> },
}

/// apalis's database, which [`run`] takes its chores from.
#[derive(Clone)]
pub enum ChorePool {
    Sqlite(SqlitePool),
    Postgres(apalis_postgres::PgPool),
}

fn config(queue: &str) -> Config {
    Config::default().queue(queue).batch_size(1)
}

fn pg_config(queue: &str) -> apalis_postgres::Config {
    apalis_postgres::Config::default().queue(queue).batch_size(1)
}

/// Pushes `task` (a `TaskBuilder`) into `sink`, mapping the error to text. A task
/// whose idempotency key is already queued counts as pushed: on PostgreSQL another
/// coordinator's push of the same owed chore shows up as this unique violation.
macro_rules! push {
    ($sink:expr, $task:expr) => {{
        let mut sink = $sink.clone();
        match sink.push_task($task.build()).await.map_err(|e| e.to_string()) {
            Err(e) if e.contains(IDEMPOTENCY_INDEX) => Ok(()),
            pushed => pushed.map(|_| ()),
        }
    }};
}

/// apalis-postgres's unique index on a task's idempotency key.
const IDEMPOTENCY_INDEX: &str = "idx_jobs_idempotency_key";

impl Chores {
    /// Opens (creating) apalis's SQLite database and its tables. Durable settings:
    /// WAL with `synchronous=NORMAL`, not the `OFF` that apalis's own `setup()` chooses.
    pub async fn open(path: &std::path::Path) -> Result<(Chores, ChorePool), sqlx::Error> {
        use apalis_sqlite::SqliteConnectOptions;
        use std::str::FromStr;
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        let pool = apalis_sqlite::SqlitePoolOptions::new().max_connections(4).connect_with(opts).await?;
        SqliteStorage::migrations().run(&pool).await?;
        let chores = Chores::Sqlite {
            probe: SqliteStorage::new(&pool).with_config(config(PROBE_QUEUE)),
            finalize: SqliteStorage::new(&pool).with_config(config(FINALIZE_QUEUE)),
            webhooks: SqliteStorage::new(&pool).with_config(config(WEBHOOK_QUEUE)),
        };
        Ok((chores, ChorePool::Sqlite(pool)))
    }

    /// Opens apalis's tables in the farm's PostgreSQL database (schema `apalis`,
    /// its own migration history), creating them on first use. Its pool is its own:
    /// apalis holds connections for its fetchers and heartbeats.
    pub async fn open_postgres(url: &str) -> Result<(Chores, ChorePool), String> {
        let pool = apalis_postgres::PgPool::connect(url).await.map_err(|e| e.to_string())?;
        PostgresStorage::setup(&pool).await.map_err(|e| format!("setting up apalis's schema: {e}"))?;
        let chores = Chores::Postgres {
            probe: PostgresStorage::new(&pool).with_config(pg_config(PROBE_QUEUE)),
            finalize: PostgresStorage::new(&pool).with_config(pg_config(FINALIZE_QUEUE)),
            webhooks: PostgresStorage::new(&pool).with_config(pg_config(WEBHOOK_QUEUE)),
        };
        Ok((chores, ChorePool::Postgres(pool)))
    }

    /// Pushes a job's owed probe, armed with `seq` (one push per seq). Retries are
    /// the queue's, with a backoff (`queue::owed`), so apalis makes one attempt.
    pub async fn probe_and_plan(&self, job_id: &str, seq: i64) -> Result<(), String> {
        let task = TaskBuilder::new(ProbeAndPlan { job_id: job_id.into(), seq }).max_attempts(1).idempotency_key(format!("{job_id}/{seq}"));
        match self {
            Chores::Sqlite { probe, .. } => push!(probe, task),
            Chores::Postgres { probe, .. } => push!(probe, task),
        }
    }

    /// Pushes a job's owed finalize, armed with `seq`.
    pub async fn finalize(&self, job_id: &str, seq: i64) -> Result<(), String> {
        let task = TaskBuilder::new(Finalize { job_id: job_id.into(), seq }).max_attempts(1).idempotency_key(format!("{job_id}/{seq}"));
        match self {
            Chores::Sqlite { finalize, .. } => push!(finalize, task),
            Chores::Postgres { finalize, .. } => push!(finalize, task),
        }
    }

    /// Schedules attempt `attempts + 1` of a delivery, at `due_ms` or now. Keyed by
    /// delivery, attempt and push, so scheduling the same attempt twice queues it
    /// once, while the reconciler's push of a lost one (a new `pushes`) is queued.
    pub async fn deliver_webhook(&self, delivery_id: &str, attempts: i64, pushes: i64, due_ms: Option<i64>) -> Result<(), String> {
        let mut task = TaskBuilder::new(DeliverWebhook { delivery_id: delivery_id.into() })
            .max_attempts(1)
            .idempotency_key(format!("{delivery_id}/{attempts}/{pushes}"));
        if let Some(ms) = due_ms {
            task = task.run_at_timestamp(u64::try_from(ms.div_euclid(1000)).unwrap_or(0));
        }
        match self {
            Chores::Sqlite { webhooks, .. } => push!(webhooks, task),
            Chores::Postgres { webhooks, .. } => push!(webhooks, task),
        }
    }
}

async fn probe_and_plan(task: ProbeAndPlan, st: Data<AppState>) -> Result<(), BoxDynError> {
    let (st, job) = ((*st).clone(), task.job_id.clone());
    detached(&task.job_id, "probe", async move { chores::probe_and_plan(&st, &job, task.seq).await }).await
}

async fn finalize(task: Finalize, st: Data<AppState>) -> Result<(), BoxDynError> {
    let (st, job) = ((*st).clone(), task.job_id.clone());
    detached(&task.job_id, "finalize", async move { chores::finalize(&st, &job, task.seq).await }).await
}

/// Runs a chore in a task of its own: an apalis worker that dies (its database
/// said busy) drops the futures it polls, and this one runs on to its outcome.
/// One that could not record its outcome (the database refused, or it panicked)
/// is said, and left to the reconciler, which finds its claim without a run
/// (`chores::Running`).
async fn detached(
    job: &str,
    chore: &str,
    run: impl std::future::Future<Output = Result<(), String>> + Send + 'static,
) -> Result<(), BoxDynError> {
    tokio::spawn(run).await.map_err(|e| e.to_string()).and_then(|r| r).map_err(|e| {
        proto::log!("coordinator: job {job}: {chore}: {e}");
        e.into()
    })
}

async fn deliver_webhook(task: DeliverWebhook, st: Data<AppState>) -> Result<(), BoxDynError> {
    chores::deliver_webhook(&st, &task.delivery_id).await.map_err(Into::into)
}

async fn reconcile(_: Tick, st: Data<AppState>) {
    crate::lifecycle::reconcile(&st, false).await;
}

/// Registers the probe, finalize and webhook workers of `$pool` on `$monitor`,
/// each backend built by `$storage(pool, config)`.
macro_rules! chore_workers {
    ($monitor:expr, $st:expr, $run_id:expr, $pool:expr, $storage:ident, $config:ident) => {{
        let (p_pool, p_st, p_id) = ($pool.clone(), $st.clone(), $run_id.clone());
        let (f_pool, f_st, f_id) = ($pool.clone(), $st.clone(), $run_id.clone());
        let (w_pool, w_st, w_id) = ($pool.clone(), $st.clone(), $run_id.clone());
        $monitor
            .register(move |restarts| {
                WorkerBuilder::new(format!("probe-{p_id}-{restarts}"))
                    .backend(
                        $storage::<ProbeAndPlan>::new(&p_pool)
                            .with_config($config(PROBE_QUEUE))
                            .poll_with_strategy(Ticker::every(Duration::from_millis(200))),
                    )
                    .data(p_st.clone())
                    // Mostly waiting on origins (ingest) and a light child: many at once,
                    // so a slow origin costs its own job, not the probes of everyone else.
                    .concurrency(32)
                    .build(probe_and_plan)
            })
            .register(move |restarts| {
                WorkerBuilder::new(format!("finalize-{f_id}-{restarts}"))
                    .backend(
                        $storage::<Finalize>::new(&f_pool)
                            .with_config($config(FINALIZE_QUEUE))
                            .poll_with_strategy(Ticker::every(Duration::from_millis(200))),
                    )
                    .data(f_st.clone())
                    .concurrency(2)
                    .build(finalize)
            })
            .register(move |restarts| {
                WorkerBuilder::new(format!("webhooks-{w_id}-{restarts}"))
                    .backend(
                        $storage::<DeliverWebhook>::new(&w_pool)
                            .with_config($config(WEBHOOK_QUEUE))
                            .poll_with_strategy(Ticker::every(Duration::from_millis(200))),
                    )
                    .data(w_st.clone())
                    .concurrency(4)
                    .build(deliver_webhook)
            })
    }};
}

/// Runs the chore workers until `shutdown` resolves.
pub async fn run(st: AppState, pool: ChorePool, shutdown: impl std::future::Future<Output = ()> + Send + 'static) {
    // Unique per process start: apalis refuses a worker name seen within its heartbeat
    // window, and on PostgreSQL every coordinator's workers share apalis's tables.
    let run_id = st.instance.to_string();
    let (r_st, r_id) = (st.clone(), run_id.clone());
    let every_second = cron::Schedule::from_str(REAP_SCHEDULE).expect("the reap schedule parses");
    let monitor = match &pool {
        ChorePool::Sqlite(pool) => chore_workers!(Monitor::new(), st, run_id, pool, SqliteStorage, config),
        ChorePool::Postgres(pool) => chore_workers!(Monitor::new(), st, run_id, pool, PostgresStorage, pg_config),
    };
    let monitor = monitor
        .register(move |restarts| {
            WorkerBuilder::new(format!("reconciler-{r_id}-{restarts}"))
                .backend(CronScheduler::new(every_second.clone()))
                .data(r_st.clone())
                .build(reconcile)
        })
        // A single SQLITE_BUSY kills an apalis worker; bring it back.
        .should_restart(|worker, e| {
            proto::log!("coordinator: chore worker {} stopped ({e}); restarting it", worker.name());
            true
        })
        .shutdown_timeout(Duration::from_secs(10));
    if let Err(e) = monitor
        .run_with_signal(async move {
            shutdown.await;
            Ok(())
        })
        .await
    {
        proto::log!("coordinator: background chores stopped: {e}");
    }
}
