//! The coordinator as a real process on loopback: auth, job submission, probing
//! and planning in a child `drake probe`, and failures with readable reasons.

mod common;

use common::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A coordinator on port 0 in a temp dir; killed when dropped.
struct Coordinator {
    child: Child,
    url: String,
    admin: String,
    _data: Dir,
}

impl Coordinator {
    fn start() -> Coordinator {
        let data = Dir::new();
        let mut child = Command::new(drake_bin())
            .args([
                "coordinator",
                "--data",
                data.tmp.path().to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
            ])
            .env_remove("DRAKE_ADMIN_TOKEN")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let url = lines
            .next()
            .unwrap()
            .unwrap()
            .rsplit(' ')
            .next()
            .unwrap()
            .to_string();
        let admin = lines
            .next()
            .unwrap()
            .unwrap()
            .rsplit(' ')
            .next()
            .unwrap()
            .to_string();
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        assert!(admin.starts_with("drk_admin_"));
        let stored = std::fs::read_to_string(data.path("admin-token")).unwrap();
        assert_eq!(
            stored, admin,
            "the generated admin token is kept in the data dir"
        );
        Coordinator {
            child,
            url,
            admin,
            _data: data,
        }
    }

    /// (status, JSON body) of a request with the given token.
    fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-s",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-X",
            method,
            &format!("{}{path}", self.url),
        ]);
        if let Some(t) = token {
            cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        if let Some(b) = body {
            cmd.args(["-H", "Content-Type: application/json", "-d", &b.to_string()]);
        }
        let out = String::from_utf8(cmd.output().unwrap().stdout).unwrap();
        let (body, status) = out.rsplit_once('\n').unwrap();
        (
            status.parse().unwrap(),
            serde_json::from_str(body).unwrap_or(Value::Null),
        )
    }

    fn wait_for(&self, job: &str, mut done: impl FnMut(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let (_, j) = self.call(
                "GET",
                &format!("/api/v1/jobs/{job}"),
                Some(&self.admin),
                None,
            );
            if done(&j) {
                return j;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "timed out; last: {j}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn every_api_route_checks_the_caller() {
    let c = Coordinator::start();
    assert_eq!(c.call("GET", "/healthz", None, None).0, 200);
    for (method, path) in [
        ("GET", "/api/v1/jobs"),
        ("POST", "/api/v1/jobs"),
        ("GET", "/api/v1/jobs/x"),
        ("POST", "/api/v1/jobs/x/cancel"),
        ("POST", "/api/v1/join-tokens"),
    ] {
        let (status, body) = c.call(method, path, None, Some(json!({})));
        assert_eq!(
            (status, body["code"].as_str()),
            (401, Some("unauthorized")),
            "{method} {path}"
        );
        let (status, _) = c.call(method, path, Some("drk_admin_forged"), Some(json!({})));
        assert_eq!(status, 401, "{method} {path} with a forged token");
    }
    // A join token may only join: it cannot submit or mint.
    let (status, t) = c.call(
        "POST",
        "/api/v1/join-tokens",
        Some(&c.admin),
        Some(json!({"uses": 1, "ttl_seconds": 600})),
    );
    assert_eq!(status, 201);
    let join = t["token"].as_str().unwrap();
    assert_eq!(
        c.call(
            "POST",
            "/api/v1/jobs",
            Some(join),
            Some(json!({"source_url": "http://x/y.mp4"}))
        )
        .0,
        403
    );
    assert_eq!(
        c.call(
            "POST",
            "/api/v1/join-tokens",
            Some(join),
            Some(json!({"uses": 1, "ttl_seconds": 600}))
        )
        .0,
        403
    );
    let (status, body) = c.call(
        "POST",
        "/api/v1/join-tokens",
        Some(&c.admin),
        Some(json!({"uses": 0, "ttl_seconds": 600})),
    );
    assert_eq!((status, body["code"].as_str()), (400, Some("bad_request")));
}

#[test]
fn submitted_jobs_are_probed_and_planned_lowest_rung_first() {
    let dir = Dir::new();
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=s=854x480:r=30:d=2",
        "-f",
        "lavfi",
        "-i",
        "sine=d=2",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-c:a",
        "aac",
        &dir.s("src.mp4"),
    ]);
    std::fs::write(dir.path("garbage.mp4"), vec![0x5au8; 50_000]).unwrap();
    let server = RangeServer::start(dir.tmp.path().to_path_buf());
    let c = Coordinator::start();

    let body =
        json!({"source_url": format!("{}/src.mp4", server.url), "idempotency_key": "upload-1"});
    let (status, job) = c.call("POST", "/api/v1/jobs", Some(&c.admin), Some(body.clone()));
    assert_eq!(status, 201, "{job}");
    assert_eq!(job["state"], "queued");
    let id = job["id"].as_str().unwrap();
    let (status, again) = c.call("POST", "/api/v1/jobs", Some(&c.admin), Some(body));
    assert_eq!(
        (status, again["id"].as_str()),
        (200, Some(id)),
        "same idempotency key, same job"
    );

    let job = c.wait_for(id, |j| j["tasks"].as_array().is_some_and(|t| !t.is_empty()));
    let tasks: Vec<String> = job["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            format!(
                "{}:{}",
                t["kind"].as_str().unwrap(),
                t["rendition"].as_str().unwrap_or("-")
            )
        })
        .collect();
    assert_eq!(
        tasks,
        [
            "transcode:240p",
            "transcode:360p",
            "transcode:480p",
            "thumbnails:-"
        ]
    );

    let (_, listed) = c.call(
        "GET",
        "/api/v1/jobs?state=queued&per_page=10",
        Some(&c.admin),
        None,
    );
    assert_eq!(listed["jobs"][0]["id"].as_str(), Some(id));

    // A corrupt upload fails its own job with the engine's reason.
    let (_, bad) = c.call(
        "POST",
        "/api/v1/jobs",
        Some(&c.admin),
        Some(json!({"source_url": format!("{}/garbage.mp4", server.url)})),
    );
    let bad = c.wait_for(bad["id"].as_str().unwrap(), |j| j["state"] == "failed");
    assert!(
        bad["error"].as_str().unwrap().starts_with("bad input:"),
        "{bad}"
    );

    // Cancel, then retry.
    let (status, canceled) = c.call(
        "POST",
        &format!("/api/v1/jobs/{id}/cancel"),
        Some(&c.admin),
        None,
    );
    assert_eq!(
        (status, canceled["state"].as_str()),
        (200, Some("canceled"))
    );
    let (status, _) = c.call(
        "POST",
        &format!("/api/v1/jobs/{id}/cancel"),
        Some(&c.admin),
        None,
    );
    assert_eq!(status, 409);
    let (status, retried) = c.call(
        "POST",
        &format!("/api/v1/jobs/{id}/retry"),
        Some(&c.admin),
        None,
    );
    assert_eq!((status, retried["state"].as_str()), (200, Some("queued")));

    let (status, e) = c.call(
        "POST",
        "/api/v1/jobs",
        Some(&c.admin),
        Some(json!({"source_url": "file:///etc/passwd"})),
    );
    assert_eq!((status, e["code"].as_str()), (400, Some("bad_request")));
    let (status, e) = c.call(
        "POST",
        "/api/v1/jobs",
        Some(&c.admin),
        Some(json!({"source_url": "http://x/a.mp4", "profile": "../../etc/x.toml"})),
    );
    assert_eq!((status, e["code"].as_str()), (400, Some("bad_request")));
    assert_eq!(
        c.call("GET", "/api/v1/jobs/nope", Some(&c.admin), None).0,
        404
    );
}
