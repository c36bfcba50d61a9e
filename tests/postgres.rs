//! Past one machine, as real processes: the farm's state on a throwaway PostgreSQL
//! cluster, two coordinators, nginx as the shared store and as the load balancer
//! in front of them, workers pointed at the balancer, a tus upload begun through
//! one coordinator and finished through the other; and `drake db copy` moving a
//! farm from SQLite to PostgreSQL.
//!
//! Without PostgreSQL on the machine these tests say so and pass, except under
//! `CI=true` (see `coordinator::pgtest`).

mod browser;
mod common;

use browser::Browser;
use common::farm::*;
use common::*;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A new database on the test cluster, or `None` on a machine without PostgreSQL.
fn database() -> Option<String> {
    tokio::runtime::Runtime::new().unwrap().block_on(coordinator::pgtest::database())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A coordinator on `port` sharing `db` and the store.
fn coordinator(port: u16, db: &str, store: &Nginx) -> Coordinator {
    let data = Dir::new();
    let extra =
        ["--database", db, "--storage-url", &store.url, "--storage-authorization", Nginx::AUTHORIZATION, "--lease-ttl-seconds", "4"];
    let (child, url, admin) = Coordinator::spawn(&data, &format!("127.0.0.1:{port}"), &extra, true);
    Coordinator { child, url, admin, data, args: extra.iter().map(|s| s.to_string()).collect(), env: Vec::new() }
}

/// An event stream's lines, each with when it arrived.
type Lines = Arc<Mutex<Vec<(Instant, String)>>>;

/// `curl -N` on an event stream, its lines collected as they come.
fn listen(url: &str, token: &str) -> (std::process::Child, Lines) {
    let mut child = Command::new("curl")
        .args(["-sN", "-H", &format!("Authorization: Bearer {token}"), &format!("{url}/api/v1/events")])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines: Lines = Default::default();
    let out = child.stdout.take().unwrap();
    let l = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            l.lock().unwrap().push((Instant::now(), line));
        }
    });
    (child, lines)
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn two_coordinators_behind_a_balancer_lose_one_mid_job() {
    let Some(db) = database() else { return };
    let (pa, pb) = (free_port(), free_port());
    let lb = Nginx::start_balancing(&[format!("127.0.0.1:{pa}"), format!("127.0.0.1:{pb}")]);
    let mut a = coordinator(pa, &db, &lb);
    let b = coordinator(pb, &db, &lb);
    // Each coordinator's admin token is in the shared database: either works anywhere.
    assert_eq!(call_at(&a.url, "GET", "/api/v1/workers", Some(&b.admin), None).0, 200);
    // Both sign webhooks with the farm's one secret.
    let secret = |c: &Coordinator| std::fs::read_to_string(c.data.path("webhook-secret")).unwrap().trim().to_string();
    assert_eq!(secret(&a), secret(&b));

    // A tus upload begun through A continues through B: its parts are on the shared
    // store and its offset in the shared database.
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let media = Dir::new();
    std::fs::write(media.path("first"), &bytes[..100_000]).unwrap();
    std::fs::write(media.path("rest"), &bytes[100_000..]).unwrap();
    let tus = |base: &str, method: &str, path: &str, headers: &[String], body: Option<String>| {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-o", "/dev/null", "-D", "-", "-X", method, "-H", "Tus-Resumable: 1.0.0"]);
        cmd.args(["-H", &format!("Authorization: Bearer {}", a.admin)]);
        for h in headers {
            cmd.args(["-H", h]);
        }
        if let Some(file) = body {
            cmd.args(["-H", "Content-Type: application/offset+octet-stream", "--data-binary", &format!("@{file}")]);
        }
        String::from_utf8_lossy(&cmd.arg(format!("{base}{path}")).output().unwrap().stdout).to_lowercase()
    };
    let created = tus(&a.url, "POST", "/api/v1/uploads/", &[format!("Upload-Length: {}", bytes.len())], Some(media.s("first")));
    assert!(created.contains("201 created") && header(&created, "upload-offset") == "100000", "{created}");
    let at = header(&created, "location").to_string();
    let head = tus(&b.url, "HEAD", &at, &[], None);
    assert_eq!(header(&head, "upload-offset"), "100000", "B knows the offset: {head}");
    let done = tus(&b.url, "PATCH", &at, &["Upload-Offset: 100000".to_string()], Some(media.s("rest")));
    let upload_job = header(&done, "drake-job").to_string();
    assert!(!upload_job.is_empty(), "B completes it: {done}");
    assert!(lb.fetch(&format!("{}/jobs/{upload_job}/source", lb.url)) == bytes, "joined on the store, byte for byte");
    assert_eq!(call_at(&a.url, "GET", &at, Some(&a.admin), None).1["job_id"], upload_job.as_str(), "A names the job B made");

    // An event stream on A, a dashboard tab on B.
    let (mut sse, events) = listen(&a.url, &a.admin);
    let browser = Browser::start();
    browser.goto(std::fs::read_to_string(b.data.path("login-link")).unwrap().trim());
    browser.wait_for("the overview", "return document.title.startsWith('Overview');", json!([]), Duration::from_secs(10));
    browser.goto(&format!("{}/jobs", b.url));
    browser.wait_for("the tab to be live", "return document.body.dataset.live === 'connected';", json!([]), Duration::from_secs(10));

    // Two workers, both pointed at the balancer only.
    let join = a.join_token(2);
    let _w1 = a.worker_at(&lb.base, "w1", &join, Stdio::null());
    let _w2 = a.worker_at(&lb.base, "w2", &join, Stdio::null());

    // A change made through B reaches A's event stream within a second: a drain
    // (A plays no part in it, so only the relay can tell A).
    wait_until("both workers to register", Duration::from_secs(30), || {
        call_at(&lb.base, "GET", "/api/v1/workers", Some(&a.admin), None).1["workers"].as_array().is_some_and(|w| w.len() == 2)
    });
    let (_, workers) = call_at(&b.url, "GET", "/api/v1/workers", Some(&b.admin), None);
    let w2 = workers["workers"].as_array().unwrap().iter().find(|w| w["name"] == "w2").unwrap()["id"].as_str().unwrap().to_string();
    let asked = Instant::now();
    assert_eq!(call_at(&b.url, "POST", &format!("/api/v1/workers/{w2}/drain"), Some(&b.admin), None).0, 204);
    let drained = |l: &str| l.contains(&w2) && l.contains("draining");
    wait_until("A's event stream to hear of the drain made through B", Duration::from_secs(1), || {
        events.lock().unwrap().iter().any(|(_, l)| drained(l))
    });
    let heard = events.lock().unwrap().iter().find(|(_, l)| drained(l)).map(|(at, _)| *at).unwrap();
    eprintln!("a drain through B reached A's event stream {:?} later", heard.duration_since(asked));
    assert_eq!(call_at(&b.url, "POST", &format!("/api/v1/workers/{w2}/resume"), Some(&b.admin), None).0, 204);

    // A ladder job submitted through B reaches A's event stream.
    let media = Dir::new();
    let clip = media.s("clip.mp4");
    test_clip(&clip, "1280x720", 24);
    let submitted = Instant::now();
    let (status, job) = upload_at(&b.url, &b.admin, &clip, &[("profile", "web")]);
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    wait_until("A's event stream to mention the job submitted through B", Duration::from_secs(5), || {
        events.lock().unwrap().iter().any(|(_, l)| l.contains(&id))
    });
    let seen = events.lock().unwrap().iter().find(|(_, l)| l.contains(&id)).map(|(at, _)| *at).unwrap();
    eprintln!("the job reached A's event stream {:?} after its submit to B", seen.duration_since(submitted));

    // Mid-job (a rendition leased), A dies.
    wait_until("a task of the job to run", Duration::from_secs(60), || {
        let (_, j) = call_at(&lb.base, "GET", &format!("/api/v1/jobs/{id}"), Some(&a.admin), None);
        j["tasks"].as_array().is_some_and(|ts| ts.iter().any(|t| matches!(t["state"].as_str(), Some("leased" | "running"))))
    });
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let _ = sse.kill();

    // The job still succeeds, through B.
    let started = Instant::now();
    let job = loop {
        let (_, j) = call_at(&lb.base, "GET", &format!("/api/v1/jobs/{id}"), Some(&b.admin), None);
        if matches!(j["state"].as_str(), Some("succeeded" | "failed" | "canceled")) {
            break j;
        }
        assert!(started.elapsed() < Duration::from_secs(180), "the job did not end after A died: {j}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(job["state"], "succeeded", "{job}");

    // The tab on B heard of it without a reload.
    let row = format!("tr[data-job=\"{id}\"]");
    browser.wait_for(
        "the tab on B to show the job succeeded",
        "const p = document.querySelector(arguments[0] + ' [data-job-state]'); \
         return p && p.textContent === 'succeeded' && document.body.dataset.live === 'connected';",
        json!([row]),
        Duration::from_secs(15),
    );
    browser.screenshot("postgres-survivor-tab");

    // It plays through the balancer, and every file it published is one attempt's:
    // the store holds exactly the manifest's files, each with its size and sha256.
    let master = job["outputs"]["master_playlist"].as_str().unwrap();
    assert!(master.starts_with(&lb.base), "{master}");
    let probe = ffprobe(&["-headers", &format!("Authorization: {}\r\n", Nginx::AUTHORIZATION), "-show_streams", master]);
    assert!(probe["streams"].as_array().is_some_and(|s| !s.is_empty()), "{probe}");
    let manifest: Value = serde_json::from_slice(&lb.fetch(job["outputs"]["manifest"].as_str().unwrap())).unwrap();
    let parts = manifest["renditions"].as_array().unwrap().iter().cloned().chain(std::iter::once(manifest["thumbnails"].clone()));
    for r in parts {
        let dir = r["dir"].as_str().unwrap();
        let mut listed = BTreeSet::new();
        for f in r["files"].as_array().unwrap() {
            let body = lb.fetch(f["url"].as_str().unwrap());
            use sha2::Digest;
            assert_eq!(
                (body.len() as u64, hex::encode(sha2::Sha256::digest(&body))),
                (f["size"].as_u64().unwrap(), f["sha256"].as_str().unwrap().to_string()),
                "{f}"
            );
            listed.insert(f["url"].as_str().unwrap().rsplit('/').next().unwrap().to_string());
        }
        let on_disk: BTreeSet<String> =
            std::fs::read_dir(lb.root.join(dir)).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(on_disk, listed, "{dir} holds exactly one attempt's files");
    }
    let leftovers: Vec<String> =
        files_under(&lb.root.join("jobs")).into_iter().filter(|p| p.contains("/.staging") || p.contains(".part")).collect();
    assert!(leftovers.iter().all(|p| !p.contains(".part")), "no half-written file: {leftovers:?}");
}

#[test]
fn db_copy_moves_a_farm_from_sqlite_to_postgres() {
    let Some(db) = database() else { return };
    // A farm on SQLite with a finished, a failed and a queued job.
    let mut c = Coordinator::start();
    let (status, t) = c.call("POST", "/api/v1/tokens", Some(&c.admin), Some(json!({"role": "submit", "label": "pipeline"})));
    assert_eq!(status, 201, "{t}");
    let submit = t["token"].as_str().unwrap().to_string();
    let media = Dir::new();
    test_clip(&media.s("clip.mp4"), "320x240", 3);
    std::fs::write(media.path("junk.mp4"), b"this is not a video, it is a text file with an .mp4 name").unwrap();
    let worker = c.worker_with_stderr("w", &c.join_token(1), Stdio::null());
    let upload = |file: &str| {
        let (status, j) = upload_at(&c.url, &submit, &media.s(file), &[]);
        assert_eq!(status, 201, "{j}");
        j["id"].as_str().unwrap().to_string()
    };
    let done = upload("clip.mp4");
    assert_eq!(c.wait_ended(&done, Duration::from_secs(120))["state"], "succeeded");
    let failed = upload("junk.mp4");
    assert_eq!(c.wait_ended(&failed, Duration::from_secs(60))["state"], "failed");
    drop(worker);
    let queued = upload("clip.mp4");
    c.wait_for(&queued, |j| j["tasks"].as_array().is_some_and(|t| !t.is_empty()) && j["state"] == "queued");
    let before: Vec<Value> =
        [&done, &failed, &queued].iter().map(|id| c.call("GET", &format!("/api/v1/jobs/{id}"), Some(&c.admin), None).1).collect();
    // And a resumable upload the pipeline has sent half of.
    let clip = std::fs::read(media.path("clip.mp4")).unwrap();
    let half = clip.len() / 2;
    std::fs::write(media.path("first-half"), &clip[..half]).unwrap();
    std::fs::write(media.path("second-half"), &clip[half..]).unwrap();
    let length = format!("Upload-Length: {}", clip.len());
    let (status, h) = tus_at(&c.url, &submit, "POST", "/api/v1/uploads/", &[&length], Some(&media.s("first-half")));
    assert_eq!(status, 201, "{h}");
    let upload = header(&h, "location").to_string();
    // Not while the farm runs.
    let live = drake(&["db", "copy", "--from", &c.data.s("drake.db"), "--to", &db]);
    assert!(!live.status.success());
    assert!(String::from_utf8_lossy(&live.stderr).contains("still serve"), "{}", String::from_utf8_lossy(&live.stderr));
    // A coordinator that stops cleanly is gone at once.
    sigterm(c.child.id());
    c.child.wait().unwrap();

    // The copy, and a second one that the target refuses.
    let from = c.data.s("drake.db");
    let out = drake(&["db", "copy", "--from", &from, "--to", &db]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(said.contains("3 jobs") && said.contains("tokens") && said.contains("1 uploads"), "{said}");
    let again = drake(&["db", "copy", "--from", &from, "--to", &db]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("is not empty (it holds 3 jobs"), "{}", String::from_utf8_lossy(&again.stderr));

    // The farm on the copy: every job as it was, the old tokens work, the queued job finishes.
    let (child, url, admin) = Coordinator::spawn(&c.data, c.url.trim_start_matches("http://"), &["--database", &db], false);
    c.child = child;
    assert_eq!((url.as_str(), admin.as_str()), (c.url.as_str(), c.admin.as_str()));
    for (id, was) in [&done, &failed, &queued].iter().zip(&before) {
        let (status, now) = c.call("GET", &format!("/api/v1/jobs/{id}"), Some(&submit), None);
        assert_eq!(status, 200, "the pipeline's submit token still works");
        for field in ["state", "error", "outputs", "profile", "source", "pipeline"] {
            assert_eq!(now[field], was[field], "job {id}: {field}");
        }
    }
    // The upload goes on where it was, and becomes a job.
    let (status, h) = tus_at(&c.url, &submit, "HEAD", &upload, &[], None);
    assert_eq!((status, header(&h, "upload-offset")), (200, half.to_string().as_str()), "{h}");
    let offset = format!("Upload-Offset: {half}");
    let (status, h) = tus_at(&c.url, &submit, "PATCH", &upload, &[&offset], Some(&media.s("second-half")));
    assert_eq!(status, 204, "{h}");
    let uploaded = header(&h, "drake-job").to_string();
    let _w = c.worker_with_stderr("w2", &c.join_token(1), Stdio::null());
    for id in [&queued, &uploaded] {
        assert_eq!(c.wait_ended(id, Duration::from_secs(120))["state"], "succeeded", "{id}");
    }
}
