//! The fault-injection suite: a coordinator, two workers and nginx (as external
//! storage, behind a fault proxy of our own) as real processes, a mix of good, bad
//! and canceled jobs, and faults at seeded random instants: SIGKILL and restart of
//! the coordinator and of workers, a worker stopped for longer than its lease, a
//! worker's engine hung, the store answering 503, stalling or resetting connections, the coordinator dying at
//! its worst instants (fault points), duplicated and racing client requests.
//!
//! After every run the invariants hold: every job ended as it should within a
//! bound, every output in a manifest is on the store with its size and sha256, no
//! staging or partial file is left, no child process is left, each job's run got
//! exactly one terminal webhook, and no task was published from two attempts.
//!
//! CI runs the fixed seeds below; `CHAOS_RUNS=N` runs N seeds from `CHAOS_SEED`
//! (default 1). A failure names the seed, the job and the invariant; replay it with
//! `CHAOS_SEED=S CHAOS_RUNS=1 cargo test -p drake --test chaos`, and explore the
//! instants around it with `CHAOS_SKEW_MS=MS` (every fault that much later, or earlier).

mod common;

use common::farm::*;
use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Seeds CI runs at every stop.
const CI_SEEDS: [u64; 10] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
const LEASE_TTL_SECONDS: u64 = 3;

/// SplitMix64: a small seeded generator, so a run is replayable from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo))
    }
}

/// How the fault proxy treats connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Mode {
    Pass = 0,
    /// Answer every request with 503 and close.
    Error = 1,
    /// Hold new connections without answering; drop open ones' traffic.
    Stall = 2,
    /// Close every connection at once.
    Reset = 3,
}

/// A TCP proxy in front of the store that can fail on command.
struct FaultProxy {
    url: String,
    mode: Arc<AtomicU8>,
}

impl FaultProxy {
    fn start(upstream: std::net::SocketAddr, path: &str) -> FaultProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}{path}", listener.local_addr().unwrap());
        let mode = Arc::new(AtomicU8::new(Mode::Pass as u8));
        let m = mode.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { continue };
                let m = m.clone();
                std::thread::spawn(move || serve(client, upstream, m));
            }
        });
        FaultProxy { url, mode }
    }

    fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }
}

fn serve(mut client: std::net::TcpStream, upstream: std::net::SocketAddr, mode: Arc<AtomicU8>) {
    let now = || mode.load(Ordering::SeqCst);
    match now() {
        m if m == Mode::Error as u8 => {
            let mut buf = [0u8; 8192];
            let _ = client.read(&mut buf);
            let _ = client.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            return;
        }
        m if m == Mode::Stall as u8 => {
            std::thread::sleep(Duration::from_secs(3));
            return;
        }
        m if m == Mode::Reset as u8 => return,
        _ => {}
    }
    let Ok(server) = std::net::TcpStream::connect(upstream) else { return };
    let pipe = |mut from: std::net::TcpStream, mut to: std::net::TcpStream, mode: Arc<AtomicU8>| {
        std::thread::spawn(move || {
            let _ = from.set_read_timeout(Some(Duration::from_millis(200)));
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                if mode.load(Ordering::SeqCst) != Mode::Pass as u8 {
                    break;
                }
                match from.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
                    Err(_) => break,
                }
            }
            let _ = to.shutdown(std::net::Shutdown::Both);
            let _ = from.shutdown(std::net::Shutdown::Both);
        })
    };
    let a = pipe(client.try_clone().unwrap(), server.try_clone().unwrap(), mode.clone());
    let b = pipe(server, client, mode);
    let _ = a.join();
    let _ = b.join();
}

/// Webhooks as a receiver sees them: (job, run, type, webhook-id).
type Hooks = Arc<Mutex<Vec<(String, i64, String, String)>>>;

fn hook_receiver() -> (String, Hooks) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let seen: Hooks = Default::default();
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let log = log.clone();
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let Some((head, body)) = read_request(&mut conn) else { return };
                let id = head
                    .lines()
                    .find_map(|l| {
                        l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("webhook-id")).map(|(_, v)| v.trim().to_string())
                    })
                    .unwrap_or_default();
                let v: Value = serde_json::from_str(&body).unwrap_or_default();
                let job = v["data"]["job_id"].as_str().unwrap_or_default().to_string();
                log.lock().unwrap().push((job, v["data"]["run"].as_i64().unwrap_or(-1), v["type"].as_str().unwrap_or_default().into(), id));
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            });
        }
    });
    (url, seen)
}

/// What a job should end as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Succeeded,
    Failed,
    Canceled,
    /// Canceled and retried at once: canceled, or succeeded if the retry came second.
    CanceledOrSucceeded,
}

struct Job {
    id: Option<String>,
    key: String,
    file: String,
    profile: &'static str,
    expect: Expect,
    /// When to cancel it (from the start of the run), if at all.
    cancel_at: Option<Duration>,
    retry_with_cancel: bool,
}

/// Media shared by all runs, made once: a good clip, a corrupt one, a longer one
/// that the `chunky` profile (in the dir's `profiles/`) cuts in 3 time chunks.
fn media() -> &'static (Dir, String, String) {
    static MEDIA: std::sync::OnceLock<(Dir, String, String)> = std::sync::OnceLock::new();
    MEDIA.get_or_init(|| {
        let dir = Dir::new();
        test_clip(&dir.s("good.mp4"), "426x240", 2);
        // Keyframes every 2 s: the planner keeps chunks of 6 s for keyframes up to 3 s apart.
        #[rustfmt::skip]
        ffmpeg(&["-f", "lavfi", "-i", "testsrc2=s=426x240:r=30:d=20", "-f", "lavfi", "-i", "sine=d=20",
                 "-c:v", "libx264", "-preset", "ultrafast", "-g", "60", "-c:a", "aac", &dir.s("long.mp4")]);
        std::fs::write(dir.path("bad.mp4"), vec![0x42u8; 20_000]).unwrap();
        let web = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../profiles/web.toml")).unwrap();
        std::fs::create_dir_all(dir.path("profiles")).unwrap();
        let chunky = format!("{}\n[chunking]\nmin_duration_s = 0\nchunk_s = 6\n", web.replace("name = \"web\"", "name = \"chunky\""));
        std::fs::write(dir.path("profiles/chunky.toml"), chunky).unwrap();
        let (good, bad) = (dir.s("good.mp4"), dir.s("bad.mp4"));
        (dir, good, bad)
    })
}

fn kill(pid: u32, signal: &str) {
    let _ = Command::new("kill").args([signal, &pid.to_string()]).status();
}

/// A live job in a line: its state, what it waits for, and each task's state,
/// attempts, worker and error (the whole view is too long for a CI log's excerpt).
fn stuck(v: &Value) -> String {
    let tasks: Vec<String> = v["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| format!("{} {} x{} {} {}", t["name"], t["state"], t["attempts"], t["worker"], t["error"]))
        .collect();
    format!("state {} waiting for {} error {}; tasks [{}]", v["state"], v["waiting_for"], v["error"], tasks.join("; "))
}

/// One seeded run; returns the violated invariants. With `database` (PostgreSQL),
/// two coordinators share it: clients alternate between them, workers know both,
/// and the faults kill either.
fn run(seed: u64, database: Option<&str>) -> Vec<String> {
    let mut rng = Rng(seed);
    let (media_dir, good, bad) = media();
    let (long, profiles) = (media_dir.s("long.mp4"), media_dir.s("profiles"));
    let env = [("DRAKE_PROFILES_DIR", profiles.as_str())];
    let nginx = Nginx::start();
    let port: u16 = nginx.url.trim_start_matches("http://127.0.0.1:").split('/').next().unwrap().parse().unwrap();
    let proxy = FaultProxy::start(([127, 0, 0, 1], port).into(), "/media");
    let (hook_url, hooks) = hook_receiver();
    let fault_point = match rng.below(4) {
        0 => coordinator::fault::AFTER_COMPLETE,
        1 => coordinator::fault::AFTER_OUTPUTS,
        _ => "",
    };
    let ttl = LEASE_TTL_SECONDS.to_string();
    let mut args = vec![
        "--lease-ttl-seconds",
        &ttl,
        "--allow-network",
        "127.0.0.0/8",
        "--storage-url",
        &proxy.url,
        "--storage-authorization",
        Nginx::AUTHORIZATION,
        "--min-free-disk-bytes",
        "65536",
        // A hung engine (a fault below) is stopped after this long without progress;
        // a transfer that moves no byte fails sooner, as the store's fault.
        "--engine-stall-seconds",
        "15",
        "--store-stall-seconds",
        "10",
    ];
    if let Some(db) = database {
        args.extend(["--database", db]);
    }
    // The first coordinator dies at this run's fault point; a second shares its database.
    let mut cs = vec![Coordinator::start_env(&args, fault_point, &env)];
    if database.is_some() {
        cs.push(Coordinator::start_env(&args, "", &env));
    }
    let every = cs.iter().map(|c| c.url.clone()).collect::<Vec<_>>().join(",");
    // Requests alternate between the coordinators, one per pass of the loop below.
    let mut pass = 0usize;
    // The spool on a small disk of its own (as root: a 16 MiB tmpfs), so it can fill up.
    let spool = cs[0].data.path("storage/uploads");
    let spool_disk = SpoolDisk::mount(&spool, 16);
    let join = cs[0].join_token(50);
    // Workers keep their scratch in the first coordinator's data dir and know every coordinator.
    let worker = |cs: &[Coordinator], name: &str| cs[0].worker_at(&every, name, &join, std::process::Stdio::inherit());
    let mut workers = vec![worker(&cs, "w1"), worker(&cs, "w2")];
    let mut restarts = 0;

    // An origin for a URL source (ingested through the spool, resumed by Range).
    let origin = RangeServer::start(std::path::Path::new(good).parent().unwrap().to_path_buf());
    let mut jobs: Vec<Job> = Vec::new();
    jobs.push(Job {
        id: None,
        key: format!("seed{seed}-url"),
        file: format!("{}/good.mp4", origin.url),
        profile: "web",
        expect: Expect::Succeeded,
        cancel_at: None,
        retry_with_cancel: false,
    });
    // Cut in chunks: its chunks, audio and joins go through the same faults.
    jobs.push(Job {
        id: None,
        key: format!("seed{seed}-chunked"),
        file: long,
        profile: "chunky",
        expect: Expect::Succeeded,
        cancel_at: None,
        retry_with_cancel: false,
    });
    for i in 0..6 {
        let (file, expect, cancel_at, retry_with_cancel) = match i {
            0..=2 => (good.clone(), Expect::Succeeded, None, false),
            3 => (bad.clone(), Expect::Failed, None, false),
            4 => (good.clone(), Expect::Canceled, Some(rng.ms(0, 3000)), false),
            _ => (good.clone(), Expect::CanceledOrSucceeded, Some(rng.ms(500, 3000)), true),
        };
        jobs.push(Job { id: None, key: format!("seed{seed}-job{i}"), file, profile: "web", expect, cancel_at, retry_with_cancel });
    }
    // The faults of this run, at random instants in its first seconds.
    #[derive(Debug)]
    enum Fault {
        KillCoordinator(usize),
        KillWorker(usize),
        StopWorker(usize),
        Store(Mode, Duration),
        /// Fill the spool disk for a while (only where it is a tmpfs of its own).
        FillSpool(Duration),
        /// Stop a worker's running engine for good, as a libav call that never
        /// returns would (nothing, when it runs none then).
        HangEngine(usize),
    }
    let mut faults: Vec<(Duration, Fault)> = (0..3)
        .map(|_| {
            let at = rng.ms(200, 6000);
            let f = match rng.below(8) {
                0 => Fault::KillCoordinator(rng.below(2) as usize),
                1 => Fault::KillWorker(rng.below(2) as usize),
                2 => Fault::StopWorker(rng.below(2) as usize),
                3 => Fault::Store(Mode::Error, rng.ms(500, 2500)),
                4 => Fault::Store(Mode::Stall, rng.ms(500, 2500)),
                5 => Fault::Store(Mode::Reset, rng.ms(500, 2500)),
                6 => Fault::FillSpool(rng.ms(500, 2500)),
                _ => Fault::HangEngine(rng.below(2) as usize),
            };
            (at, f)
        })
        .collect();
    // CHAOS_SKEW_MS shifts every fault by as much, to explore the instants around a
    // failing seed's (a slower machine reaches each step of a job later).
    if let Some(skew) = std::env::var("CHAOS_SKEW_MS").ok().and_then(|s| s.parse::<i64>().ok()) {
        for (at, _) in faults.iter_mut() {
            *at = Duration::from_millis((at.as_millis() as i64 + skew).max(0) as u64);
        }
    }
    faults.sort_by_key(|f| f.0);
    let log = format!("seed {seed}: fault point {fault_point:?}, faults {faults:?}");
    eprintln!("chaos: {log}");

    let start = Instant::now();
    let filler = spool.join("filler");
    let mut spool_back_at: Option<Instant> = None;
    let mut store_back_at: Option<Instant> = None;
    let mut stopped: Vec<(usize, Instant)> = Vec::new();
    let mut canceled_ok: BTreeSet<String> = BTreeSet::new();
    let deadline = start + Duration::from_secs(150);
    let mut problems = Vec::new();
    loop {
        let now = Instant::now();
        // A coordinator that died at its fault point (or was killed) comes back.
        for c in cs.iter_mut() {
            if c.child.try_wait().unwrap().is_some() {
                c.restart();
                restarts += 1;
            }
        }
        pass += 1;
        let c = &cs[pass % cs.len()];
        // Submissions, retried with the same key until the coordinator answers, and
        // sent twice at once (a pipeline's retry racing its first attempt).
        for j in jobs.iter_mut().filter(|j| j.id.is_none()) {
            let submit = || {
                if j.file.starts_with("http://") {
                    let body = serde_json::json!({"source_url": j.file, "idempotency_key": j.key, "callback_url": hook_url});
                    c.call("POST", "/api/v1/jobs", Some(&c.admin), Some(body))
                } else {
                    c.upload(&j.file, &[("idempotency_key", &j.key), ("callback_url", &hook_url), ("profile", j.profile)])
                }
            };
            let (status, made) = submit();
            if status == 201 || status == 200 {
                let (again, dup) = submit();
                if again == 200 && dup["id"] != made["id"] {
                    problems.push(format!("seed {seed}: job {}: one idempotency key made two jobs", made["id"]));
                }
                j.id = made["id"].as_str().map(String::from);
            }
        }
        let elapsed = now - start;
        for j in jobs.iter_mut() {
            let (Some(id), Some(at)) = (&j.id, j.cancel_at) else { continue };
            if elapsed < at {
                continue;
            }
            let (status, _) = c.call("POST", &format!("/api/v1/jobs/{id}/cancel"), Some(&c.admin), None);
            match status {
                200 => {
                    canceled_ok.insert(id.clone());
                    if j.retry_with_cancel {
                        let (r, _) = c.call("POST", &format!("/api/v1/jobs/{id}/retry"), Some(&c.admin), None);
                        if r == 200 {
                            canceled_ok.remove(id);
                        }
                    }
                    j.cancel_at = None;
                }
                // It ended first: then it ends as it would have.
                409 => j.cancel_at = None,
                _ => {} // the coordinator is down: try again
            }
        }
        while faults.first().is_some_and(|f| f.0 <= elapsed) {
            let (_, f) = faults.remove(0);
            match f {
                Fault::KillCoordinator(k) => {
                    kill(cs[k % cs.len()].child.id(), "-KILL");
                }
                Fault::KillWorker(i) => {
                    // SIGKILL (the Drop) and a new worker process in its place.
                    let fresh = worker(&cs, &format!("{}r", workers[i].name));
                    drop(std::mem::replace(&mut workers[i], fresh));
                }
                Fault::StopWorker(i) => {
                    kill(workers[i].child.id(), "-STOP");
                    stopped.push((i, Instant::now() + Duration::from_secs(LEASE_TTL_SECONDS + 2)));
                }
                Fault::Store(mode, d) => {
                    proxy.set(mode);
                    store_back_at = Some(Instant::now() + d);
                }
                Fault::FillSpool(d) if spool_disk.is_some() => {
                    // All of it: below the reserve, so uploads get 507 and spooling fails.
                    let mut f = std::fs::File::create(&filler).unwrap();
                    let chunk = vec![0u8; 1 << 20];
                    while f.write_all(&chunk).is_ok() {}
                    spool_back_at = Some(Instant::now() + d);
                }
                Fault::FillSpool(_) => {}
                Fault::HangEngine(i) => {
                    for (engine, args) in children_of(workers[i].child.id()) {
                        kill(engine, "-STOP");
                        eprintln!("chaos: seed {seed}: stopped {}'s engine {engine}: {}", workers[i].name, args.join(" "));
                    }
                }
            }
        }
        if spool_back_at.is_some_and(|t| t <= now) {
            let _ = std::fs::remove_file(&filler);
            spool_back_at = None;
        }
        if store_back_at.is_some_and(|t| t <= now) {
            proxy.set(Mode::Pass);
            store_back_at = None;
        }
        stopped.retain(|(i, at)| {
            if *at <= now {
                kill(workers[*i].child.id(), "-CONT");
                false
            } else {
                true
            }
        });
        let ended = jobs.iter().all(|j| {
            j.id.as_ref().is_some_and(|id| {
                let (_, v) = c.call("GET", &format!("/api/v1/jobs/{id}"), Some(&c.admin), None);
                matches!(v["state"].as_str(), Some("succeeded" | "failed" | "canceled")) && j.cancel_at.is_none()
            })
        });
        if ended && faults.is_empty() && stopped.is_empty() && store_back_at.is_none() && spool_back_at.is_none() {
            break;
        }
        if now > deadline {
            for j in &jobs {
                let Some(id) = &j.id else {
                    problems.push(format!("seed {seed}: job {}: never submitted within 150 s (bounded end)", j.key));
                    continue;
                };
                let (_, v) = c.call("GET", &format!("/api/v1/jobs/{id}"), Some(&c.admin), None);
                if !matches!(v["state"].as_str(), Some("succeeded" | "failed" | "canceled")) || j.cancel_at.is_some() {
                    problems.push(format!("seed {seed}: job {id} ({}): did not end within 150 s (bounded end): {}", j.key, stuck(&v)));
                }
            }
            return problems;
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    proxy.set(Mode::Pass);

    for c in cs.iter_mut() {
        if c.child.try_wait().unwrap().is_some() {
            c.restart();
        }
    }
    // Nothing left in staging or half written, on the store or in the spool: the
    // sweeps (two lease TTLs after a job's end) clear what faults left; checked
    // again at the end of the run, for a write that lands late.
    let leftovers = || -> Vec<String> {
        let store = files_under(&nginx.root.join("jobs"))
            .into_iter()
            .filter(|p| p.contains("/.staging") || p.contains("/.chunks") || p.contains(".part"));
        let spool = cs.iter().flat_map(|c| files_under(&c.data.path("storage/uploads")));
        store.chain(spool).collect()
    };
    let sweep_window = Instant::now() + Duration::from_secs(2 * LEASE_TTL_SECONDS + 3);
    while !leftovers().is_empty() && Instant::now() < sweep_window {
        std::thread::sleep(Duration::from_millis(250));
    }
    let left = leftovers();
    let was_clean = left.is_empty();
    if !was_clean {
        problems.push(format!("seed {seed}: staging, partial files or uploads left on the store or in the spool: {left:?}"));
    }
    let c = &cs[0];
    let mut finals: BTreeMap<String, Value> = BTreeMap::new();
    for j in &jobs {
        let id = j.id.clone().unwrap();
        let (_, v) = c.call("GET", &format!("/api/v1/jobs/{id}"), Some(&c.admin), None);
        let state = v["state"].as_str().unwrap_or_default().to_string();
        let ok = match j.expect {
            Expect::Succeeded => state == "succeeded",
            Expect::Failed => state == "failed" && v["error"].as_str().is_some_and(|e| e.starts_with("bad input")),
            Expect::Canceled => state == if canceled_ok.contains(&id) { "canceled" } else { "succeeded" },
            Expect::CanceledOrSucceeded => state == if canceled_ok.contains(&id) { "canceled" } else { "succeeded" },
        };
        if !ok {
            problems.push(format!(
                "seed {seed}: job {id}: expected {:?} (canceled: {}), got {state}: {}",
                j.expect,
                canceled_ok.contains(&id),
                v["error"]
            ));
        }
        finals.insert(id, v);
    }
    // Outputs: every manifest file on the store with its size and sha256, and each
    // rendition directory holding exactly one attempt's files.
    for (id, v) in &finals {
        if v["state"] != "succeeded" {
            continue;
        }
        let Some(manifest) = v["outputs"]["manifest"].as_str() else {
            problems.push(format!("seed {seed}: job {id}: succeeded without outputs"));
            continue;
        };
        let manifest: Value = serde_json::from_slice(&nginx.fetch(manifest)).unwrap_or_default();
        let parts = manifest["renditions"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .chain(std::iter::once(manifest["thumbnails"].clone()));
        for r in parts {
            let dir = r["dir"].as_str().unwrap_or_default();
            let listed: BTreeSet<String> = r["files"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|f| f["url"].as_str().unwrap_or_default().rsplit('/').next().unwrap().to_string())
                .collect();
            let on_disk: BTreeSet<String> = std::fs::read_dir(nginx.root.join(dir))
                .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            if listed != on_disk {
                problems.push(format!(
                    "seed {seed}: job {id}: {dir} holds {on_disk:?}, the manifest lists {listed:?} (published from two attempts?)"
                ));
            }
            for f in r["files"].as_array().into_iter().flatten() {
                use sha2::Digest;
                let name = f["url"].as_str().unwrap_or_default().rsplit('/').next().unwrap();
                let bytes = std::fs::read(nginx.root.join(dir).join(name)).unwrap_or_default();
                if bytes.len() as u64 != f["size"].as_u64().unwrap_or(0)
                    || hex::encode(sha2::Sha256::digest(&bytes)) != f["sha256"].as_str().unwrap_or("")
                {
                    problems.push(format!("seed {seed}: job {id}: {dir}/{name} is not what the manifest says"));
                }
            }
        }
    }
    // Exactly one terminal webhook per run of each job (deduplicated by webhook-id,
    // as receivers do), and the last one says how the job ended.
    let started_wait = Instant::now();
    loop {
        let seen = hooks.lock().unwrap().clone();
        let mut per_run: BTreeMap<(String, i64), BTreeSet<(String, String)>> = BTreeMap::new();
        for (job, run, kind, hook_id) in &seen {
            per_run.entry((job.clone(), *run)).or_default().insert((hook_id.clone(), kind.clone()));
        }
        let mut missing = Vec::new();
        for (id, v) in &finals {
            let runs: Vec<_> = per_run.iter().filter(|((j, _), _)| j == id).collect();
            let last = runs.iter().max_by_key(|((_, r), _)| *r);
            let good = !runs.is_empty()
                && runs.iter().all(|(_, ids)| ids.len() == 1)
                && last.is_some_and(|(_, ids)| ids.iter().next().unwrap().1 == format!("job.{}", v["state"].as_str().unwrap_or_default()));
            if !good {
                missing.push(format!("seed {seed}: job {id}: webhooks {runs:?} for a job that ended {}", v["state"]));
            }
        }
        if missing.is_empty() {
            break;
        }
        if started_wait.elapsed() > Duration::from_secs(40) {
            problems.extend(missing);
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let left = leftovers();
    if was_clean && !left.is_empty() {
        problems.push(format!("seed {seed}: written after the store and the spool were clean: {left:?}"));
    }
    // No child process outlives its worker.
    let data: Vec<String> = cs.iter().map(|c| c.data.tmp.path().to_string_lossy().into_owned()).collect();
    drop(workers);
    for c in cs.iter_mut() {
        let _ = c.child.kill();
        let _ = c.child.wait();
    }
    drop(spool_disk);
    drop(cs);
    std::thread::sleep(Duration::from_millis(500));
    let orphans: Vec<String> = data.iter().flat_map(|d| processes_mentioning(d)).collect();
    if !orphans.is_empty() {
        problems.push(format!("seed {seed}: processes left running: {orphans:?}"));
    }
    eprintln!("chaos: seed {seed}: {} jobs, {restarts} coordinator restarts, {:.1} s", jobs.len(), start.elapsed().as_secs_f64());
    problems
}

#[test]
fn the_lifecycle_holds_under_injected_faults() {
    run_seeds(None);
}

/// The same suite with two coordinators on one PostgreSQL database (a fresh one
/// per seed); skipped with a message on a machine without PostgreSQL, except in CI.
#[test]
fn the_lifecycle_holds_with_two_coordinators_on_postgres() {
    if tokio::runtime::Runtime::new().unwrap().block_on(coordinator::pgtest::database()).is_none() {
        return;
    }
    run_seeds(Some(()));
}

fn run_seeds(postgres: Option<()>) {
    // One suite at a time: both at once on a 2-core machine would stretch the
    // bounds every run is held to.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let seeds: Vec<u64> = match std::env::var("CHAOS_RUNS").ok().and_then(|n| n.parse::<u64>().ok()) {
        Some(n) => {
            let first = std::env::var("CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
            (first..first + n).collect()
        }
        None => CI_SEEDS.to_vec(),
    };
    let mut failures = Vec::new();
    for seed in &seeds {
        let db = postgres.map(|()| tokio::runtime::Runtime::new().unwrap().block_on(coordinator::pgtest::database()).unwrap());
        let problems = run(*seed, db.as_deref());
        for p in &problems {
            eprintln!("chaos: FAILED {p}");
        }
        failures.extend(problems);
    }
    eprintln!(
        "chaos: {} runs, {} with violations",
        seeds.len(),
        failures.iter().map(|f| f.split(':').next().unwrap().to_string()).collect::<BTreeSet<_>>().len()
    );
    assert!(failures.is_empty(), "{} invariant violations:\n{}", failures.len(), failures.join("\n"));
}
