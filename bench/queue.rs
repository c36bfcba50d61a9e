//! Benchmark (not a test) of the coordinator's queue under load: simulated
//! workers, HTTP clients that register, then lease, heartbeat, publish a tiny file
//! over WebDAV and complete, as fast as they can. No transcoding.
//!
//! Setups: one coordinator on SQLite; one on PostgreSQL; two on PostgreSQL
//! behind nginx (the load balancer of `tests/postgres.rs`). Each runs with 10,
//! 100 and 500 simulated workers. Prints task cycles per second and the p50/p99
//! latency of a lease request that got a task (and the p99 of a whole cycle), each
//! PostgreSQL setup's throughput as a ratio to SQLite's at the same worker count,
//! and every setup's ratio to the ideal: the same clients making a cycle's five
//! requests to a route that does nothing, which is what HTTP alone costs these
//! clients and a coordinator on this machine.
//!
//! Run it with `bench/queue.sh [SECONDS=8] [WORKERS=10,100,500]` (a release build;
//! PostgreSQL from `scripts/setup.sh`); `BENCH_SETUPS=1,2` runs only those setups,
//! and `BENCH_COORDINATOR_CPUS=1` runs the coordinators on those CPUs only.

use coordinator::queue::{Chore, DatabaseUrl, NewJob, NewTask, Queue, QueueConfig};
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const TASKS_PER_JOB: usize = 100;

struct Setup {
    name: &'static str,
    postgres: bool,
    coordinators: usize,
    /// The ideal: the same clients making a cycle's number of requests to a
    /// coordinator route that does nothing (`/healthz`).
    ceiling: bool,
}

/// HTTP requests in one task cycle: lease, heartbeat, MKCOL (a job's staging
/// directory is there after its first task), PUT, complete.
const REQUESTS_PER_CYCLE: usize = 5;

struct Outcome {
    cycles_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// The p99 of a whole cycle (lease to completion), in ms: what a lease served
    /// sooner must not just move elsewhere.
    cycle_p99_ms: f64,
    errors: u64,
    /// The coordinators' CPU time (user and system) per task cycle, in µs: steadier
    /// than cycles/s on a noisy machine, and what a change to the coordinator moves.
    cpu_us_per_cycle: f64,
    /// The same for the PostgreSQL server's processes (`None` on SQLite, where the
    /// database runs inside the coordinator).
    db_us_per_cycle: Option<f64>,
    /// The same for the simulated workers (this process).
    sims_us_per_cycle: f64,
}

fn main() {
    let seconds: u64 = std::env::var("BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(8);
    let counts: Vec<usize> = std::env::var("BENCH_WORKERS")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10, 100, 500]);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let setups = [
        Setup { name: "ceiling: 5 no-op requests per cycle", postgres: false, coordinators: 1, ceiling: true },
        Setup { name: "1 coordinator, SQLite", postgres: false, coordinators: 1, ceiling: false },
        Setup { name: "1 coordinator, PostgreSQL", postgres: true, coordinators: 1, ceiling: false },
        Setup { name: "2 coordinators, PostgreSQL, nginx", postgres: true, coordinators: 2, ceiling: false },
    ];
    let only: Option<Vec<usize>> =
        std::env::var("BENCH_SETUPS").ok().map(|s| s.split(',').filter_map(|n| n.trim().parse::<usize>().ok()).map(|n| n - 1).collect());
    let setups: Vec<&Setup> =
        setups.iter().enumerate().filter(|(i, _)| only.as_ref().is_none_or(|o| o.contains(i))).map(|(_, s)| s).collect();
    println!("queue benchmark: {seconds} s per run, {} cores", std::thread::available_parallelism().map_or(1, |n| n.get()));
    println!(
        "{:<36} {:>8} {:>12} {:>10} {:>10} {:>12} {:>8} {:>10} {:>10} {:>12} {:>12} {:>12}",
        "setup",
        "workers",
        "cycles/s",
        "p50 ms",
        "p99 ms",
        "cyc p99 ms",
        "errors",
        "vs SQLite",
        "vs ceiling",
        "coord µs/cyc",
        "db µs/cyc",
        "sims µs/cyc"
    );
    // (workers, cycles/s) of the SQLite and the ideal runs, for the ratios.
    let mut sqlite: Vec<(usize, f64)> = Vec::new();
    let mut ceiling: Vec<(usize, f64)> = Vec::new();
    let ratio = |base: &[(usize, f64)], n: usize, x: f64| {
        base.iter().find(|(w, _)| *w == n).map_or("-".to_string(), |(_, b)| format!("{:.2}x", x / b))
    };
    for setup in setups {
        for &n in &counts {
            let o = rt.block_on(run(setup, n, seconds));
            if setup.ceiling {
                ceiling.push((n, o.cycles_per_second));
            } else if !setup.postgres {
                sqlite.push((n, o.cycles_per_second));
            }
            let vs_sqlite = if setup.ceiling { "-".to_string() } else { ratio(&sqlite, n, o.cycles_per_second) };
            println!(
                "{:<36} {:>8} {:>12.0} {:>10.1} {:>10.1} {:>12.1} {:>8} {:>10} {:>10} {:>12.0} {:>12} {:>12.0}",
                setup.name,
                n,
                o.cycles_per_second,
                o.p50_ms,
                o.p99_ms,
                o.cycle_p99_ms,
                o.errors,
                vs_sqlite,
                ratio(&ceiling, n, o.cycles_per_second),
                o.cpu_us_per_cycle,
                o.db_us_per_cycle.map_or("-".to_string(), |d| format!("{d:.0}")),
                o.sims_us_per_cycle
            );
        }
    }
}

/// A coordinator process.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn run(setup: &Setup, workers: usize, seconds: u64) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let database = if setup.postgres {
        DatabaseUrl::Postgres(coordinator::pgtest::database().await.expect("PostgreSQL (scripts/setup.sh installs it)"))
    } else {
        DatabaseUrl::Sqlite(dir.path().join("c0/drake.db"))
    };
    // Enough planned tasks that the run never drains the queue.
    let tasks = (3_000 * seconds as usize).clamp(10_000, 400_000);
    std::fs::create_dir_all(dir.path().join("c0")).unwrap();
    if !setup.ceiling {
        seed(&database, tasks).await;
    }

    // The coordinators, sharing the database and (with two) an nginx store.
    let store = (setup.coordinators > 1).then(|| Store::start(dir.path()));
    let mut procs = Vec::new();
    let mut urls = Vec::new();
    for i in 0..setup.coordinators {
        let data = dir.path().join(format!("c{i}"));
        std::fs::create_dir_all(&data).unwrap();
        let port = free_port();
        // BENCH_COORDINATOR_CPUS=1 pins the coordinators to those CPUs (`taskset`).
        let mut cmd = match std::env::var("BENCH_COORDINATOR_CPUS") {
            Ok(cpus) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpus, env!("CARGO_BIN_EXE_drake")]);
                c
            }
            Err(_) => Command::new(env!("CARGO_BIN_EXE_drake")),
        };
        cmd.args(["coordinator", "--data", data.to_str().unwrap(), "--listen", &format!("127.0.0.1:{port}")]);
        cmd.args(["--lease-ttl-seconds", "30"]);
        if let DatabaseUrl::Postgres(url) = &database {
            cmd.args(["--database", url]);
        }
        if let Some(s) = &store {
            cmd.args(["--storage-url", &s.media, "--storage-authorization", "Bearer bench"]);
        }
        let log = std::fs::File::create(data.join("coordinator.log")).unwrap();
        let child = cmd.env_remove("DRAKE_ADMIN_TOKEN").stdout(Stdio::null()).stderr(log).spawn().unwrap();
        procs.push(Proc(child));
        urls.push(format!("http://127.0.0.1:{port}"));
    }
    let http = reqwest::Client::builder().pool_max_idle_per_host(workers + 16).build().unwrap();
    for url in &urls {
        let started = Instant::now();
        while http.get(format!("{url}/healthz")).send().await.is_err() {
            assert!(started.elapsed() < Duration::from_secs(30), "the coordinator at {url} did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let balancer = match &store {
        Some(s) => s.balance(&urls),
        None => urls[0].clone(),
    };
    let admin = std::fs::read_to_string(dir.path().join("c0/admin-token")).unwrap().trim().to_string();
    let join = post_json(&http, &format!("{balancer}/api/v1/join-tokens"), &admin, &json!({"uses": workers, "ttl_seconds": 3600}))
        .await
        .expect("a join token");
    let join = join["token"].as_str().unwrap().to_string();

    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let cycles = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut sims = Vec::new();
    for i in 0..workers {
        let sim =
            Sim { http: http.clone(), base: balancer.clone(), token: String::new(), name: format!("sim-{i}"), ceiling: setup.ceiling };
        let (join, stop, measuring, cycles, errors) = (join.clone(), stop.clone(), measuring.clone(), cycles.clone(), errors.clone());
        sims.push(tokio::spawn(async move { sim.run(&join, &stop, &measuring, &cycles, &errors).await }));
    }
    // A second of warm-up (registration, connections), then the measured window.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = cycles.load(Ordering::Relaxed);
    let coordinators: Vec<u32> = procs.iter().map(|p| p.0.id()).collect();
    let server = match &database {
        DatabaseUrl::Postgres(url) => postgres_pids(url),
        DatabaseUrl::Sqlite(_) => Vec::new(),
    };
    let cpu_before = (cpu_seconds(&coordinators), cpu_seconds(&server), cpu_seconds(&[std::process::id()]));
    measuring.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let done = cycles.load(Ordering::Relaxed) - before;
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu =
        (cpu_seconds(&coordinators) - cpu_before.0, cpu_seconds(&server) - cpu_before.1, cpu_seconds(&[std::process::id()]) - cpu_before.2);
    stop.store(true, Ordering::Relaxed);
    let mut all = Latencies::default();
    for s in sims {
        let l = s.await.unwrap();
        all.lease.extend(l.lease);
        all.cycle.extend(l.cycle);
    }
    all.lease.sort_by(|a, b| a.total_cmp(b));
    all.cycle.sort_by(|a, b| a.total_cmp(b));
    let pct = |of: &[f64], p: f64| of.get(((of.len() as f64 * p) as usize).min(of.len().saturating_sub(1))).copied().unwrap_or(0.0);
    drop(procs);
    // What the coordinators said about failed requests, if any failed.
    if errors.load(Ordering::Relaxed) > 0 {
        for i in 0..setup.coordinators {
            let log = std::fs::read_to_string(dir.path().join(format!("c{i}/coordinator.log"))).unwrap_or_default();
            for line in log.lines().filter(|l| !l.contains(" join token ")).take(3) {
                eprintln!("  coordinator {i}: {line}");
            }
        }
    }
    Outcome {
        cycles_per_second: done as f64 / elapsed,
        p50_ms: pct(&all.lease, 0.50),
        p99_ms: pct(&all.lease, 0.99),
        cycle_p99_ms: pct(&all.cycle, 0.99),
        errors: errors.load(Ordering::Relaxed),
        cpu_us_per_cycle: cpu.0 * 1e6 / done.max(1) as f64,
        db_us_per_cycle: (!server.is_empty()).then(|| cpu.1 * 1e6 / done.max(1) as f64),
        sims_us_per_cycle: cpu.2 * 1e6 / done.max(1) as f64,
    }
}

/// The CPU time (user and system) processes have used so far, in seconds, from
/// `/proc/PID/stat` (with `taskset`, the coordinator's process is the coordinator).
fn cpu_seconds(pids: &[u32]) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    pids.iter()
        .filter_map(|pid| stat_fields(*pid))
        .filter_map(|f| Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / ticks))
        .sum()
}

/// The fields of `/proc/PID/stat` after the command's closing parenthesis (the
/// state is the first, the parent's pid the second).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat[stat.rfind(')')? + 2..].split_whitespace().map(str::to_string).collect())
}

/// The PostgreSQL server behind `url` and its backends, when it runs on this
/// machine the way `pgtest` starts it (its socket directory holds `data/`). The
/// coordinators keep their connections for the run, so the backends do not change.
fn postgres_pids(url: &str) -> Vec<u32> {
    let Some(host) = url::Url::parse(url).ok().and_then(|u| u.query_pairs().find(|(k, _)| k == "host").map(|(_, v)| v.into_owned())) else {
        return Vec::new();
    };
    let Some(postmaster) = std::fs::read_to_string(format!("{host}/data/postmaster.pid"))
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
    else {
        return Vec::new();
    };
    let children = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| stat_fields(*pid).is_some_and(|f| f.get(1).is_some_and(|p| p.parse() == Ok(postmaster))));
    std::iter::once(postmaster).chain(children).collect()
}

/// Plans `tasks` transcode tasks, in jobs of [`TASKS_PER_JOB`], the way a probe does.
async fn seed(database: &DatabaseUrl, tasks: usize) {
    let q = Queue::connect(database, QueueConfig::default()).await.unwrap();
    let now = coordinator::state::now_ms();
    q.coordinator_seen("bench-seed", now).await.unwrap();
    for j in 0..tasks.div_ceil(TASKS_PER_JOB) {
        let new = NewJob {
            pipeline: None,
            profile: "web".into(),
            source: format!("/bench/{j}"),
            callback_url: None,
            priority: 0,
            idempotency_key: None,
            requires_tags: vec![],
            captions: vec![],
        };
        let (job, _) = q.create_job(&new, now).await.unwrap();
        let owed = q.arm_chores(Some(&job.id), "bench-seed", now).await.unwrap();
        let claim = q.claim_chore(&job.id, Chore::Probe, owed[0].seq, "bench-seed", now).await.unwrap().unwrap();
        let planned: Vec<NewTask> = (0..TASKS_PER_JOB).map(|r| NewTask::transcode(&format!("r{r}"), None)).collect();
        q.plan_job(&job.id, claim, None, &json!({"duration": 1.0}), &planned, now).await.unwrap();
    }
    // Done, as a coordinator that stops cleanly: the coordinators measured share
    // the database with each other only.
    q.coordinator_stopped("bench-seed").await.unwrap();
}

/// One simulated worker's latencies (ms) inside the measured window.
#[derive(Default)]
struct Latencies {
    /// From asking for a lease to holding one.
    lease: Vec<f64>,
    /// From asking for a lease to its task's completion answered.
    cycle: Vec<f64>,
}

/// A simulated worker.
struct Sim {
    http: reqwest::Client,
    base: String,
    token: String,
    name: String,
    ceiling: bool,
}

impl Sim {
    /// Registers, then runs task cycles until `stop`; returns its latencies.
    async fn run(mut self, join: &str, stop: &AtomicBool, measuring: &AtomicBool, cycles: &AtomicU64, errors: &AtomicU64) -> Latencies {
        if self.ceiling {
            return self.no_ops(stop, measuring, cycles, errors).await;
        }
        let reg = json!({"version": 1, "name": self.name, "drake_version": "bench", "slots": 1,
                         "capabilities": {"encoders": ["libx264", "aac"], "cores": 1, "tags": []}});
        let registered = post_json(&self.http, &format!("{}/api/v1/workers/register", self.base), join, &reg).await;
        let Some(token) = registered.as_ref().ok().and_then(|r| r["token"].as_str()) else {
            eprintln!("{}: registering: {registered:?}", self.name);
            errors.fetch_add(1, Ordering::Relaxed);
            return Latencies::default();
        };
        self.token = token.to_string();
        let mut latencies = Latencies::default();
        while !stop.load(Ordering::Relaxed) {
            match self.cycle(measuring, &mut latencies).await {
                Ok(true) => {
                    cycles.fetch_add(1, Ordering::Relaxed);
                }
                Ok(false) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(e) => {
                    if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                        eprintln!("{}: {e}", self.name);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        latencies
    }

    /// Lease, heartbeat, publish, complete: true when a task went round.
    async fn cycle(&self, measuring: &AtomicBool, latencies: &mut Latencies) -> Result<bool, String> {
        let asked = Instant::now();
        let lease = json!({"version": 1, "free_slots": 1, "wait_seconds": 0, "max_tasks": 1, "bundle_thumbnails": false});
        let r = self.post("/api/v1/workers/lease", &lease).await?;
        if r.status().as_u16() == 204 {
            return Ok(false);
        }
        if !r.status().is_success() {
            return Err(format!("lease: HTTP {}", r.status()));
        }
        let l: Value = r.json().await.map_err(|e| e.to_string())?;
        let measured = measuring.load(Ordering::Relaxed);
        if measured {
            latencies.lease.push(asked.elapsed().as_secs_f64() * 1000.0);
        }
        let (task, epoch) = (l["task_id"].as_str().unwrap_or_default().to_string(), l["epoch"].as_i64().unwrap_or(0));
        let hb = self.post(&format!("/api/v1/tasks/{task}/heartbeat"), &json!({"epoch": epoch, "progress": 0.5})).await?;
        if !hb.status().is_success() {
            return Err(format!("heartbeat: HTTP {}", hb.status()));
        }
        // The tiny output, put where the lease says (the store the lease names, or /dav).
        let (store, auth) = match l["storage"]["url"].as_str() {
            Some(u) => (u.trim_end_matches('/').to_string(), l["storage"]["authorization"].as_str().unwrap_or_default().to_string()),
            None => (format!("{}/dav", self.base), format!("Bearer {}", self.token)),
        };
        let dir = l["output_dir"].as_str().unwrap_or_default();
        // The staging directory, made the way a worker makes it.
        worker::publish::Dav::new(&self.http, store.clone(), Some(auth.clone()), proto::transfer::STALL_WITHIN)
            .mkcol_all(dir)
            .await
            .map_err(|e| e.to_string())?;
        let body = format!("{task} {epoch}\n");
        let put = self
            .http
            .put(format!("{store}/{dir}/out.txt"))
            .header("authorization", &auth)
            .body(body.clone())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !put.status().is_success() {
            return Err(format!("PUT: HTTP {}", put.status()));
        }
        use sha2::Digest;
        let sum = hex::encode(sha2::Sha256::digest(body.as_bytes()));
        let complete = json!({"epoch": epoch, "report": {}, "files": [{"path": "out.txt", "size": body.len(), "sha256": sum}]});
        let c = self.post(&format!("/api/v1/tasks/{task}/complete"), &complete).await?;
        if !c.status().is_success() {
            return Err(format!("complete: HTTP {} {}", c.status(), c.text().await.unwrap_or_default()));
        }
        if measured {
            latencies.cycle.push(asked.elapsed().as_secs_f64() * 1000.0);
        }
        Ok(true)
    }

    /// The ceiling's cycles: [`REQUESTS_PER_CYCLE`] GETs of `/healthz`, the first
    /// one's latency standing for the lease's.
    async fn no_ops(&self, stop: &AtomicBool, measuring: &AtomicBool, cycles: &AtomicU64, errors: &AtomicU64) -> Latencies {
        let mut latencies = Latencies::default();
        while !stop.load(Ordering::Relaxed) {
            let asked = Instant::now();
            for i in 0..REQUESTS_PER_CYCLE {
                match self.http.get(format!("{}/healthz", self.base)).send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if i == 0 && measuring.load(Ordering::Relaxed) {
                    latencies.lease.push(asked.elapsed().as_secs_f64() * 1000.0);
                }
            }
            if measuring.load(Ordering::Relaxed) {
                latencies.cycle.push(asked.elapsed().as_secs_f64() * 1000.0);
            }
            cycles.fetch_add(1, Ordering::Relaxed);
        }
        latencies
    }

    async fn post(&self, path: &str, body: &Value) -> Result<reqwest::Response, String> {
        self.http.post(format!("{}{path}", self.base)).bearer_auth(&self.token).json(body).send().await.map_err(|e| e.to_string())
    }
}

/// POSTs JSON with a bearer token and reads the JSON answer.
async fn post_json(http: &reqwest::Client, url: &str, token: &str, body: &Value) -> Result<Value, String> {
    let r = http.post(url).bearer_auth(token).json(body).send().await.map_err(|e| e.to_string())?;
    r.json().await.map_err(|e| e.to_string())
}

/// nginx as the shared store (and, once the coordinators are up, their balancer).
struct Store {
    dir: std::path::PathBuf,
    media: String,
    port: u16,
    child: Option<Child>,
}

impl Store {
    fn start(base: &std::path::Path) -> Store {
        let dir = base.join("nginx");
        std::fs::create_dir_all(dir.join("root")).unwrap();
        let port = free_port();
        let mut s = Store { dir, media: format!("http://127.0.0.1:{port}/media"), port, child: None };
        s.child = Some(s.nginx(&[]));
        s
    }

    /// Restarts nginx balancing over `upstreams`; returns the balancer's URL.
    fn balance(&self, upstreams: &[String]) -> String {
        let _ = Command::new("nginx").args(["-p", &format!("{}/", self.dir.display()), "-c", "nginx.conf", "-s", "stop"]).status();
        std::thread::sleep(Duration::from_millis(300));
        let child = self.nginx(upstreams);
        std::mem::forget(child);
        format!("http://127.0.0.1:{}", self.port)
    }

    fn nginx(&self, upstreams: &[String]) -> Child {
        let d = self.dir.display();
        let servers: String = upstreams.iter().map(|u| format!("server {};", u.trim_start_matches("http://"))).collect();
        let balancer = if upstreams.is_empty() {
            String::new()
        } else {
            "location / { proxy_pass http://coordinators; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering off; }"
                .to_string()
        };
        let upstream = if upstreams.is_empty() { String::new() } else { format!("upstream coordinators {{ {servers} keepalive 256; }}") };
        let user = if unsafe { libc::geteuid() } == 0 { "user root;" } else { "" };
        let conf = format!(
            "daemon off; {user} worker_processes 2; pid {d}/nginx.pid; error_log {d}/error.log; events {{ worker_connections 4096; }}
             http {{ access_log off; client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/f;
               uwsgi_temp_path {d}/u; scgi_temp_path {d}/s; client_max_body_size 0; {upstream}
               server {{ listen 127.0.0.1:{port};
                 location /media/ {{ alias {d}/root/; dav_methods PUT DELETE MKCOL COPY MOVE; create_full_put_path on; }}
                 {balancer} }} }}",
            port = self.port,
        );
        std::fs::write(self.dir.join("nginx.conf"), conf).unwrap();
        let child = Command::new("nginx")
            .args(["-p", &format!("{d}/"), "-c", "nginx.conf"])
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx (scripts/setup.sh installs nginx-core)");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(10), "nginx did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        child
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = Command::new("nginx").args(["-p", &format!("{}/", self.dir.display()), "-c", "nginx.conf", "-s", "stop"]).status();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
