//! The job lifecycle under crashes at its worst instants, against real processes:
//! a coordinator aborted at a fault point and restarted on the same data must
//! finish every job with all its files, and a source that cannot be read must end
//! its job with the reason instead of leaving it queued.

mod common;

use common::farm::*;
use common::*;
use serde_json::{Value, json};
use std::time::Duration;

/// Checks a succeeded job's outputs as its upload pipeline would: every file the
/// manifest lists is served, at its size and sha256, and no staging file is left.
fn assert_outputs_complete(c: &Coordinator, job: &Value) {
    assert_outputs_served(job, |url| c.fetch(url));
    let job_dir = c.data.path(&format!("storage/jobs/{}", job["id"].as_str().unwrap()));
    assert!(!job_dir.join(".staging").exists(), "staging left behind");
}

/// Checks that every file a succeeded job's manifest lists is served (by `fetch`),
/// at its size and sha256.
fn assert_outputs_served(job: &Value, fetch: impl Fn(&str) -> Vec<u8>) {
    use sha2::Digest;
    assert_eq!(job["state"], "succeeded", "{job}");
    let manifest: Value = serde_json::from_slice(&fetch(job["outputs"]["manifest"].as_str().unwrap())).unwrap();
    let mut files = 0;
    for r in manifest["renditions"].as_array().unwrap().iter().chain(std::iter::once(&manifest["thumbnails"])) {
        for f in r["files"].as_array().unwrap() {
            let bytes = fetch(f["url"].as_str().unwrap());
            assert_eq!(bytes.len() as u64, f["size"].as_u64().unwrap(), "{}", f["url"]);
            assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), f["sha256"].as_str().unwrap(), "{}", f["url"]);
            files += 1;
        }
    }
    assert!(files > 10, "{manifest}");
}

/// One worker and a short clip; returns the coordinator, the worker and the job id.
fn farm_with_a_job(faults: &str) -> (Coordinator, Worker, String, Dir) {
    let c = Coordinator::start_faulty(&["--lease-ttl-seconds", "6"], faults);
    let w = c.worker("w1", &c.join_token(1));
    let dir = Dir::new();
    test_clip(&dir.s("clip.mp4"), "320x180", 3);
    let (status, job) = c.upload(&dir.s("clip.mp4"), &[]);
    assert_eq!(status, 201, "{job}");
    (c, w, job["id"].as_str().unwrap().to_string(), dir)
}

#[test]
fn a_coordinator_killed_between_a_completion_and_its_promotion_loses_nothing() {
    let (mut c, _w, id, _dir) = farm_with_a_job(coordinator::fault::AFTER_COMPLETE);
    c.wait_exit(Duration::from_secs(120));
    // The completion was recorded, its files were not moved: the restart moves them.
    c.restart();
    let job = c.wait_ended(&id, Duration::from_secs(120));
    assert_outputs_complete(&c, &job);
}

#[test]
fn a_coordinator_killed_during_finalize_finishes_the_job_after_a_restart() {
    let (mut c, _w, id, _dir) = farm_with_a_job(coordinator::fault::AFTER_OUTPUTS);
    c.wait_exit(Duration::from_secs(120));
    let (_, j) = {
        c.restart();
        c.call("GET", &format!("/api/v1/jobs/{id}"), Some(&c.admin), None)
    };
    assert!(matches!(j["state"].as_str(), Some("finalizing" | "succeeded")), "{j}");
    let job = c.wait_ended(&id, Duration::from_secs(60));
    assert_outputs_complete(&c, &job);
}

#[test]
fn a_job_accepted_just_before_a_crash_is_still_probed() {
    let mut c = Coordinator::start_faulty(&[], coordinator::fault::AFTER_CREATE);
    let dir = Dir::new();
    test_clip(&dir.s("clip.mp4"), "320x180", 2);
    // The coordinator dies right after recording the job: the client sees no answer.
    let (status, _) = c.upload(&dir.s("clip.mp4"), &[("idempotency_key", "crash-1")]);
    assert_eq!(status, 0, "no answer from a coordinator that died");
    c.wait_exit(Duration::from_secs(10));
    c.restart();
    // The client retries with its key and gets the same job, which gets planned.
    let (status, job) = c.upload(&dir.s("clip.mp4"), &[("idempotency_key", "crash-1")]);
    assert_eq!(status, 200, "{job}");
    let id = job["id"].as_str().unwrap();
    let job = c.wait_for(id, |j| j["tasks"].as_array().is_some_and(|t| !t.is_empty()));
    assert_eq!(job["state"], "queued");
    // This farm has no worker: the job waits for one, as the reconciler (at start,
    // then every tenth second) says once it has looked.
    let waiting = job["waiting_for"].as_str().unwrap_or_default();
    assert!(["a capable worker: no worker is live", "a free worker"].contains(&waiting), "{job}");
    let (_, listed) = c.call("GET", "/api/v1/jobs", Some(&c.admin), None);
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 1, "one job for one key");
}

/// A probe whose run stops without recording its outcome (as one does when the
/// apalis worker running it dies) is run again at the reconciler's next pass,
/// not after its claim's 3-minute timeout, and the job succeeds.
#[test]
fn a_chore_that_lost_its_run_is_run_again_at_once() {
    let (c, _w, id, _dir) = farm_with_a_job(coordinator::fault::LOSE_PROBE);
    let job = c.wait_ended(&id, Duration::from_secs(60));
    assert_outputs_complete(&c, &job);
}

/// Two promotions of one task at once, and both see it promoted, with every file
/// in place. On an external store, two coordinators redo one promotion (the one
/// that recorded the completion died, and its restart and another both find it
/// overdue): the MOVE of the one that comes second finds the staging area gone. On
/// a local store, the reply path and the reconciler (the promotion outlasted its
/// deadline) take turns: the second once removed the first one's files.
#[test]
fn two_promotions_of_one_task_at_once_both_find_it_in_place() {
    use coordinator::storage::Store;
    let nginx = Nginx::start();
    let spool = Dir::new();
    let remote = Store::remote(spool.path("spool"), &nginx.url, Some(Nginx::AUTHORIZATION.into()), proto::transfer::STALL_WITHIN).unwrap();
    promote_twice_at_once(&remote, &nginx.root, 3);
    let local = Dir::new();
    // More than a few files, so that each promotion runs on a blocking thread.
    promote_twice_at_once(&Store::local(local.path("storage")), &local.path("storage"), 40);
}

fn promote_twice_at_once(store: &coordinator::storage::Store, root: &std::path::Path, files: usize) {
    use coordinator::queue::TaskKind;
    use coordinator::storage::{output_dir, staging_dir};
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let names: Vec<String> = (0..files).map(|i| format!("f{i:03}.m4s")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let want: Vec<Option<u64>> = (0..names.len()).map(|i| Some(1000 + i as u64)).collect();
    for round in 0..10 {
        let job = format!("job{round}");
        for (i, name) in names.iter().enumerate() {
            rt.block_on(store.write(&format!("{}/{name}", staging_dir(&job, "240p", 1)), vec![b'x'; 1000 + i])).unwrap();
        }
        let promote = || store.promote(&job, TaskKind::Transcode, "240p", 1, names[0], &names);
        let (a, b) = rt.block_on(async { tokio::join!(promote(), promote()) });
        assert_eq!(a.unwrap(), want, "round {round}");
        assert_eq!(b.unwrap(), want, "round {round}");
        assert!(root.join(output_dir(&job, TaskKind::Transcode, "240p")).join(names[0]).exists());
        assert_eq!(rt.block_on(promote()).unwrap(), want, "round {round}: promoted once and for all");
    }
}

/// An HTTP origin that answers every request with `response`, then closes.
fn origin(response: &'static [u8]) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(response);
        }
    });
    url
}

#[test]
fn a_source_that_cannot_be_read_fails_its_job_with_the_reason() {
    let c = Coordinator::start_with(&["--allow-network", "127.0.0.0/8"]);
    // Nothing listens on this port any more.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/upload.mp4", l.local_addr().unwrap())
    };
    // An origin that sends a body without a Content-Length (and not a video).
    let no_length =
        format!("{}/upload.mp4", origin(b"HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nConnection: close\r\n\r\nnot a video at all"));
    let submit = |url: &str| {
        let (status, job) = c.call("POST", "/api/v1/jobs", Some(&c.admin), Some(json!({"source_url": url})));
        assert_eq!(status, 201, "{job}");
        job["id"].as_str().unwrap().to_string()
    };
    let (refused, unlengthed) = (submit(&closed), submit(&no_length));
    let job = c.wait_ended(&refused, Duration::from_secs(60));
    assert_eq!(job["state"], "failed", "{job}");
    let error = job["error"].as_str().unwrap();
    assert!(error.starts_with(&format!("fetching {closed} failed 3 times: ")), "{error}");
    assert!(error.to_lowercase().contains("refused"), "{error}");
    let job = c.wait_ended(&unlengthed, Duration::from_secs(60));
    assert_eq!(job["state"], "failed", "{job}");
    assert!(job["error"].as_str().unwrap().starts_with("bad input:"), "{job}");
}

/// A proxy to `upstream` that passes what clients send at about 130 KB/s: a slow
/// link to the store, for uploads that outlast a lease.
fn slow_uplink(upstream: std::net::SocketAddr) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = std::net::TcpStream::connect(upstream) else { continue };
            let pipe = |mut from: std::net::TcpStream, mut to: std::net::TcpStream, slow: bool| {
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; if slow { 4096 } else { 65536 }];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 || to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        if slow {
                            std::thread::sleep(Duration::from_millis(30));
                        }
                    }
                    let _ = to.shutdown(std::net::Shutdown::Both);
                })
            };
            pipe(client.try_clone().unwrap(), server.try_clone().unwrap(), true);
            pipe(server, client, false);
        }
    });
    port
}

#[test]
fn publishing_that_outlasts_the_lease_keeps_it() {
    let nginx = Nginx::start();
    let port: u16 = nginx.url.trim_start_matches("http://127.0.0.1:").split('/').next().unwrap().parse().unwrap();
    let slow = format!("http://127.0.0.1:{}/media", slow_uplink(([127, 0, 0, 1], port).into()));
    let c = Coordinator::start_with(&["--lease-ttl-seconds", "3", "--storage-url", &slow, "--storage-authorization", Nginx::AUTHORIZATION]);
    let _w = c.worker("w1", &c.join_token(1));
    let dir = Dir::new();
    test_clip(&dir.s("clip.mp4"), "426x240", 4);
    let (status, job) = c.upload(&dir.s("clip.mp4"), &[]);
    assert_eq!(status, 201, "{job}");
    let job = c.wait_ended(job["id"].as_str().unwrap(), Duration::from_secs(180));
    assert_eq!(job["state"], "succeeded", "{job}");
    for t in job["tasks"].as_array().unwrap() {
        let took = t["timing"]["finished_at"].as_i64().unwrap() - t["timing"]["child_exited_at"].as_i64().unwrap();
        assert_eq!(t["attempts"], 1, "no upload was thrown away over a lapsed lease: {t}");
        eprintln!("{} published in {took} ms with a 3 s lease", t["rendition"]);
    }
    let slowest = job["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["timing"]["finished_at"].as_i64().unwrap() - t["timing"]["child_exited_at"].as_i64().unwrap())
        .max()
        .unwrap();
    assert!(slowest > 3_000, "the test must publish for longer than the lease ({slowest} ms)");
}

#[test]
fn an_ingest_cut_off_midway_resumes_where_it_stopped() {
    use std::io::{Read, Write};
    let dir = Dir::new();
    test_clip(&dir.s("clip.mp4"), "320x180", 2);
    let bytes = std::fs::read(dir.path("clip.mp4")).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/clip.mp4", listener.local_addr().unwrap());
    let ranges = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    {
        let (bytes, ranges) = (bytes.clone(), ranges.clone());
        // The first answer promises the whole file and stops halfway; later ones
        // serve the Range asked for.
        std::thread::spawn(move || {
            for (n, conn) in listener.incoming().enumerate() {
                let Ok(mut conn) = conn else { continue };
                let mut buf = [0u8; 4096];
                let len = conn.read(&mut buf).unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..len]).to_lowercase();
                let from: Option<usize> =
                    request.lines().find_map(|l| l.strip_prefix("range: bytes=")).and_then(|r| r.trim_end_matches('-').parse().ok());
                ranges.lock().unwrap().push(from.map_or("none".into(), |f| f.to_string()));
                let _ = match from {
                    Some(f) => conn.write_all(
                        &[format!("HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {f}-{}/{}\r\nConnection: close\r\n\r\n", bytes.len() - f, bytes.len() - 1, bytes.len()).as_bytes(), &bytes[f..]].concat(),
                    ),
                    None if n == 0 => conn.write_all(&[format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n", bytes.len()).as_bytes(), &bytes[..bytes.len() / 2]].concat()),
                    None => conn.write_all(&[format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", bytes.len()).as_bytes(), &bytes[..]].concat()),
                };
            }
        });
    }
    let c = Coordinator::start_with(&["--allow-network", "127.0.0.1/32"]);
    let (status, job) = c.call("POST", "/api/v1/jobs", Some(&c.admin), Some(json!({"source_url": url})));
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().unwrap();
    let job = c.wait_for(id, |j| j["tasks"].as_array().is_some_and(|t| !t.is_empty()) || j["state"] == "failed");
    assert_eq!(job["state"], "queued", "{job}");
    assert_eq!(job["source"], url, "the job still names its origin");
    let seen = ranges.lock().unwrap().clone();
    assert_eq!(seen, ["none".to_string(), (bytes.len() / 2).to_string()], "resumed from where the copy stopped");
    let stored = std::fs::read(c.data.path(&format!("storage/jobs/{id}/source"))).unwrap();
    assert!(stored == bytes, "the stored copy is the origin's file, byte for byte");
}

#[test]
fn a_webhook_whose_chore_died_with_its_coordinator_is_delivered_after_the_restart() {
    let (hook, received) = webhook_receiver();
    let mut c = Coordinator::start_faulty(&["--allow-network", "127.0.0.0/8"], coordinator::fault::BEFORE_DELIVERY);
    let dir = Dir::new();
    std::fs::write(dir.path("bad.mp4"), vec![0x42u8; 10_000]).unwrap();
    let (status, job) = c.upload(&dir.s("bad.mp4"), &[("callback_url", &hook)]);
    assert_eq!(status, 201, "{job}");
    // The job fails, its delivery chore is taken, and the coordinator dies before posting.
    c.wait_exit(Duration::from_secs(30));
    assert!(received.lock().unwrap().is_empty());
    c.restart();
    let started = std::time::Instant::now();
    while received.lock().unwrap().len() < 2 {
        assert!(started.elapsed() < Duration::from_secs(20), "the owed webhook was not delivered after the restart");
        std::thread::sleep(Duration::from_millis(100));
    }
    let got = received.lock().unwrap().clone();
    let ids: std::collections::BTreeSet<String> = got.iter().map(|(head, _)| header(head, "webhook-id").to_string()).collect();
    assert_eq!(ids.len(), 1, "one webhook, delivered at least once: {got:?}");
    assert!(got[1].1.contains("\"job.failed\""), "{}", got[1].1);
}

/// A proxy to `upstream` that, while `silent` is on, takes connections and neither
/// answers nor closes them, and stops passing traffic on the open ones for good: a
/// store whose disk hung, or connections left half-open by a network partition.
/// Once armed with methods, the first request with one of them in a first
/// attempt's staging directory turns `silent` on before it is passed.
struct SilencingProxy {
    port: u16,
    silent: std::sync::Arc<std::sync::atomic::AtomicBool>,
    armed: std::sync::Arc<std::sync::Mutex<&'static [&'static str]>>,
}

impl SilencingProxy {
    fn start(upstream: std::net::SocketAddr) -> SilencingProxy {
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let silent = std::sync::Arc::new(AtomicBool::new(false));
        let armed: std::sync::Arc<std::sync::Mutex<&'static [&'static str]>> = std::sync::Arc::default();
        let proxy = SilencingProxy { port, silent: silent.clone(), armed: armed.clone() };
        // Held until the test ends: never answered, never closed.
        let hold = |sockets: Vec<std::net::TcpStream>| -> ! {
            loop {
                std::thread::sleep(Duration::from_secs(3600));
                let _ = &sockets;
            }
        };
        // Whether `request` starts with an armed method on a first attempt's staging
        // directory; if so, disarms.
        let trips = |request: &[u8], armed: &std::sync::Mutex<&'static [&'static str]>| {
            let line = String::from_utf8_lossy(&request[..request.len().min(300)]).into_owned();
            let mut methods = armed.lock().unwrap();
            let hit = methods.iter().any(|m| line.starts_with(&format!("{m} "))) && line.contains("/.staging/") && line.contains(".e1/");
            if hit {
                *methods = &[];
            }
            hit
        };
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if silent.load(Ordering::SeqCst) {
                    std::thread::spawn(move || hold(vec![client]));
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(upstream) else { continue };
                for (upward, mut from, mut to) in
                    [(true, client.try_clone().unwrap(), server.try_clone().unwrap()), (false, server, client)]
                {
                    let (silent, armed) = (silent.clone(), armed.clone());
                    std::thread::spawn(move || {
                        let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
                        let mut buf = vec![0u8; 65536];
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) => break,
                                Ok(n) => n,
                                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => 0,
                                Err(_) => break,
                            };
                            if upward && n > 0 && trips(&buf[..n], &armed) {
                                silent.store(true, Ordering::SeqCst);
                            }
                            if silent.load(Ordering::SeqCst) {
                                hold(vec![from, to]);
                            }
                            if n > 0 && to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        proxy
    }

    fn silence(&self, on: bool) {
        self.silent.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Waits (at most a minute) until an armed request has turned the store silent,
    /// keeps it silent for `long`, then lets traffic pass again.
    fn silent_at(&self, methods: &'static [&'static str], long: Duration) {
        *self.armed.lock().unwrap() = methods;
        let armed_at = std::time::Instant::now();
        while !self.silent.load(std::sync::atomic::Ordering::SeqCst) {
            assert!(armed_at.elapsed() < Duration::from_secs(60), "no {methods:?} came");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(long);
        self.silence(false);
    }
}

/// A store that goes silent (it takes connections, then neither answers nor closes
/// them) holds a job for the stall limit, not for a transfer's hour: the probe's
/// copy of the source waits for the store, a worker's publishing fails and its task
/// runs again, and the job ends with every file.
#[test]
fn a_store_that_goes_silent_holds_a_job_for_the_stall_limit_only() {
    let nginx = Nginx::start();
    let port: u16 = nginx.url.trim_start_matches("http://127.0.0.1:").split('/').next().unwrap().parse().unwrap();
    let proxy = SilencingProxy::start(([127, 0, 0, 1], port).into());
    let store = format!("http://127.0.0.1:{}/media", proxy.port);
    let c =
        Coordinator::start_with(&["--storage-url", &store, "--storage-authorization", Nginx::AUTHORIZATION, "--store-stall-seconds", "2"]);
    let dir = Dir::new();
    test_clip(&dir.s("clip.mp4"), "426x240", 4);
    let (status, job) = c.upload(&dir.s("clip.mp4"), &[]);
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let started = std::time::Instant::now();
    // The probe copies the source from the silent store: the job says it waits for it.
    proxy.silence(true);
    c.wait_for(&id, |j| j.to_string().contains("waiting for the farm") && j.to_string().contains("stalled"));
    eprintln!("the probe waited for the store after {:?}", started.elapsed());
    proxy.silence(false);
    // A worker comes, and the store goes silent when it starts to publish, for 5 s.
    let _w = c.worker("w1", &c.join_token(1));
    proxy.silent_at(&["MKCOL", "PUT"], Duration::from_secs(5));
    let job = c.wait_ended(&id, Duration::from_secs(120));
    let took = started.elapsed();
    eprintln!("the job ended after {took:?}");
    assert_outputs_served(&job, |url| nginx.fetch(url));
    let retried: Vec<&Value> = job["tasks"].as_array().unwrap().iter().filter(|t| t["attempts"].as_i64().unwrap() > 1).collect();
    assert!(
        retried.iter().any(|t| t["error"].as_str().is_some_and(|e| e.contains("publishing outputs") && e.contains("stalled"))),
        "the silent store failed a worker's publishing, and the task ran again: {job}"
    );
    // 15 s here. Without the stall limit, a held request waits for its timeout: a
    // MKCOL's 2 minutes, an engine's source read 30 s (it took 42 s with that).
    assert!(took < Duration::from_secs(40), "took {took:?}");

    // A second job: the store goes silent when the coordinator checks a worker's
    // published files for its completion. The completion is answered 503, and the
    // worker reports it again once the store is back: no work is thrown away.
    let (status, job) = c.upload(&dir.s("clip.mp4"), &[]);
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    proxy.silent_at(&["HEAD"], Duration::from_secs(5));
    let job = c.wait_ended(&id, Duration::from_secs(120));
    assert_outputs_served(&job, |url| nginx.fetch(url));
    for t in job["tasks"].as_array().unwrap() {
        assert_eq!(t["attempts"], 1, "reported again, not run again: {t}");
    }
}

/// An engine that hangs (a libav call that never returns; here the process is
/// stopped) holds its task for the engine stall limit, not for the task's 4 hours:
/// its worker stops it once it has printed no progress that long, the task runs
/// again, and the job ends with every file.
#[test]
fn a_hung_engine_holds_its_task_for_the_stall_limit_only() {
    // The engine's limit must outlast the store's (a silent store is the store's fault).
    let c = Coordinator::start_with(&["--engine-stall-seconds", "8", "--store-stall-seconds", "5"]);
    let dir = Dir::new();
    test_clip(&dir.s("clip.mp4"), "640x360", 10);
    let w = c.worker("w1", &c.join_token(1));
    let (status, job) = c.upload(&dir.s("clip.mp4"), &[]);
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    // The first rendition's engine (not the audio's) is stopped for good as it starts.
    let started = std::time::Instant::now();
    let engine = loop {
        let is_rendition = |args: &Vec<String>| args.iter().any(|a| a == "transcode") && !args.iter().any(|a| a == "--audio");
        if let Some((pid, _)) = children_of(w.child.id()).into_iter().find(|(_, args)| is_rendition(args)) {
            break pid;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no rendition's engine started");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(std::process::Command::new("kill").args(["-STOP", &engine.to_string()]).status().unwrap().success());
    let stopped = std::time::Instant::now();
    let job = c.wait_ended(&id, Duration::from_secs(60));
    let took = stopped.elapsed();
    eprintln!("the job ended {took:?} after its engine was stopped");
    assert_outputs_complete(&c, &job);
    let retried: Vec<&Value> = job["tasks"].as_array().unwrap().iter().filter(|t| t["attempts"].as_i64().unwrap() > 1).collect();
    assert_eq!(retried.len(), 1, "only the hung engine's task ran again: {job}");
    let error = retried[0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("the engine reported no progress for 8 s"), "{error}");
    // The stopped engine was killed, not left behind.
    let state = std::fs::read_to_string(format!("/proc/{engine}/stat")).unwrap_or_default();
    assert!(state.is_empty() || state.contains(") Z"), "the hung engine is gone: {state}");
    // The other engines never went 8 s without a line of progress, even as they started.
    assert!(took < Duration::from_secs(30), "took {took:?}");
}

/// A worker that fails everything it takes (here its engine is a script that fails
/// as a broken libav build would) costs each task one attempt: the retry goes to
/// the other live worker, never back to it, and every job succeeds. Once it has
/// failed tasks of three jobs in a row it rests, paused with why, taking nothing.
#[test]
fn a_worker_that_fails_everything_costs_each_task_one_attempt_then_rests() {
    use std::os::unix::fs::PermissionsExt;
    let c = Coordinator::start();
    let dir = Dir::new();
    test_clip(&dir.s("clip.mp4"), "640x360", 4);
    // The broken worker runs a copy of drake, replaced once it runs by a script: it
    // starts its engines from the path it started from.
    let broken = dir.path("broken-drake");
    std::fs::copy(drake_bin(), &broken).unwrap();
    let scratch = c.data.path("scratch-broken");
    let mut bad = Worker {
        child: std::process::Command::new(&broken)
            .args(["worker", "--coordinator", &c.url, "--name", "broken", "--slots", "1", "--scratch", scratch.to_str().unwrap()])
            .env("DRAKE_TOKEN", c.join_token(1))
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
        name: "broken".into(),
        scratch,
    };
    let listed = |name: &str| {
        let (_, list) = c.call("GET", "/api/v1/workers", Some(&c.admin), None);
        list["workers"].as_array().unwrap().iter().any(|w| w["name"] == name)
    };
    let started = std::time::Instant::now();
    while !listed("broken") {
        assert!(bad.child.try_wait().unwrap().is_none() && started.elapsed() < Duration::from_secs(20), "the broken worker never joined");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::remove_file(&broken).unwrap();
    std::fs::write(&broken, "#!/bin/sh\necho 'drake: libav: illegal instruction' >&2\nexit 70\n").unwrap();
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _good = c.worker("good", &c.join_token(1));
    while !listed("good") {
        assert!(started.elapsed() < Duration::from_secs(20), "the good worker never joined");
        std::thread::sleep(Duration::from_millis(50));
    }

    let ids: Vec<String> = (0..4)
        .map(|_| {
            let (status, job) = c.upload(&dir.s("clip.mp4"), &[]);
            assert_eq!(status, 201, "{job}");
            job["id"].as_str().unwrap().to_string()
        })
        .collect();
    let mut failures = 0;
    for id in &ids {
        let job = c.wait_ended(id, Duration::from_secs(120));
        assert_outputs_complete(&c, &job);
        for t in job["tasks"].as_array().unwrap() {
            let attempts = t["attempts"].as_i64().unwrap();
            assert!(attempts <= 2, "a retry went back to the broken worker: {t}");
            assert_eq!(t["state"], "succeeded", "{t}");
            if attempts == 2 {
                assert!(t["error"].as_str().is_some_and(|e| e.contains("illegal instruction")), "{t}");
                failures += 1;
            }
        }
    }
    // It failed tasks of three jobs, then rested: at most every task (audio,
    // renditions, thumbnails) of two of them and one of the third.
    assert!((3..=9).contains(&failures), "{failures} tasks failed on the broken worker");
    let (_, list) = c.call("GET", "/api/v1/workers", Some(&c.admin), None);
    let listed = list["workers"].as_array().unwrap().iter().find(|w| w["name"] == "broken").unwrap().clone();
    assert_eq!(listed["state"], "paused", "{listed}");
    let why = listed["paused"].as_str().unwrap_or_default();
    assert!(why.contains("failed tasks of 3 jobs in a row") && why.contains("illegal instruction"), "{why}");
    let _ = bad.child.kill();
}

/// An admin's drain and resume show in a job's `waiting_for` at once, not at the
/// reconciler's next check of the workers (every tenth second): right after the
/// drain answers, a job queued behind the only worker says it waits for a worker
/// that takes tasks, and right after the resume, it no longer does.
#[test]
fn a_drain_and_a_resume_show_in_waiting_for_at_once() {
    let c = Coordinator::start();
    let dir = Dir::new();
    test_clip(&dir.s("clip.mp4"), "320x240", 2);
    let _w = c.worker("w1", &c.join_token(1));
    let started = std::time::Instant::now();
    let id = loop {
        let (_, list) = c.call("GET", "/api/v1/workers", Some(&c.admin), None);
        if let Some(w) = list["workers"].as_array().and_then(|ws| ws.first()) {
            break w["id"].as_str().unwrap().to_string();
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the worker never joined");
        std::thread::sleep(Duration::from_millis(50));
    };
    let waiting_for = |job: &str| c.call("GET", &format!("/api/v1/jobs/{job}"), Some(&c.admin), None).1["waiting_for"].clone();
    // The worker runs a job first: it is live, and takes tasks.
    let (_, job) = c.upload(&dir.s("clip.mp4"), &[]);
    let job = job["id"].as_str().unwrap().to_string();
    c.wait_ended(&job, Duration::from_secs(60));
    let (status, _) = c.call("POST", &format!("/api/v1/workers/{id}/drain"), Some(&c.admin), None);
    assert_eq!(status, 204);
    let (status, queued) = c.upload(&dir.s("clip.mp4"), &[]);
    assert_eq!(status, 201, "{queued}");
    let queued = queued["id"].as_str().unwrap().to_string();
    let said = c.wait_for(&queued, |j| j["waiting_for"].as_str().is_some_and(|w| !w.starts_with("its probe")));
    assert_eq!(said["waiting_for"], "a worker that takes tasks: every live worker is paused or draining: 1 draining", "{said}");
    let (status, _) = c.call("POST", &format!("/api/v1/workers/{id}/resume"), Some(&c.admin), None);
    assert_eq!(status, 204);
    let now = waiting_for(&queued);
    assert!(!now.as_str().unwrap_or_default().contains("draining"), "right after the resume: {now}");
    assert_eq!(c.wait_ended(&queued, Duration::from_secs(60))["state"], "succeeded");
}
