//! The ops dashboard in a real browser (Debian's headless chromium through
//! chromedriver) against a real farm, plus its access rules over plain HTTP and
//! its speed with a thousand jobs. Screenshots land in `target/screenshots/`.

mod browser;
mod common;

use browser::Browser;
use common::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `drake up` (or `drake coordinator`) on port 0, with what it printed.
struct Farm {
    child: Child,
    url: String,
    admin: String,
    login_link: String,
    /// Holds the data dir until the farm is gone.
    data: Dir,
}

impl Farm {
    fn up(workers: u32) -> Farm {
        let data = Dir::new();
        Farm::start(data, &["up", "--workers", &workers.to_string(), "--lease-ttl-seconds", "8"])
    }

    fn start(data: Dir, args: &[&str]) -> Farm {
        let mut child = Command::new(drake_bin())
            .args(args)
            .args(["--listen", "127.0.0.1:0", "--data", data.tmp.path().to_str().unwrap()])
            .current_dir(data.tmp.path())
            .env_remove("DRAKE_ADMIN_TOKEN")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(data.path("farm.log")).unwrap())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut url, mut admin, mut login_link) = (String::new(), String::new(), String::new());
        while login_link.is_empty() {
            let line = lines.next().expect("drake printed its URLs").unwrap();
            let last = line.rsplit(' ').next().unwrap_or_default().to_string();
            if line.starts_with("drake farm up at") || line.starts_with("drake coordinator listening on") {
                url = last;
            } else if line.starts_with("admin token") {
                // Not a terminal: the farm names the 0600 files instead of printing secrets.
                assert!(!line.contains("drk_admin_"), "{line}");
                admin = std::fs::read_to_string(data.path("admin-token")).unwrap().trim().to_string();
            } else if line.starts_with("dashboard (one-time login link)") {
                assert!(!line.contains("drk_login_"), "{line}");
                login_link = std::fs::read_to_string(data.path("login-link")).unwrap().trim().to_string();
            }
        }
        // Keep draining stdout so the farm never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        assert!(login_link.starts_with(&format!("{url}/login?token=drk_login_")), "{login_link}");
        Farm { child, url, admin, login_link, data }
    }

    fn upload(&self, file: &str) -> String {
        let out = Command::new("curl")
            .args([
                "-sf",
                "-H",
                &format!("Authorization: Bearer {}", self.admin),
                "-F",
                &format!("file=@{file}"),
                &format!("{}/api/v1/jobs", self.url),
            ])
            .output()
            .unwrap();
        assert!(out.status.success());
        let job: Value = serde_json::from_slice(&out.stdout).unwrap();
        job["id"].as_str().unwrap().to_string()
    }

    fn job(&self, id: &str) -> Value {
        let out = Command::new("curl")
            .args(["-sf", "-H", &format!("Authorization: Bearer {}", self.admin), &format!("{}/api/v1/jobs/{id}", self.url)])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Farm {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let started = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() && started.elapsed() < Duration::from_secs(15) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn clip(dir: &Dir, name: &str, size: &str, seconds: u32) -> String {
    let path = dir.s(name);
    test_clip(&path, size, seconds);
    path
}

const NO_RELOAD_MARK: &str = "window.__drakeNoReload = 'still here'; return true;";
const STILL_MARKED: &str = "return window.__drakeNoReload === 'still here';";

#[test]
fn ops_watch_and_act_from_a_real_browser() {
    let farm = Farm::up(1);
    let media = Dir::new();
    let short = clip(&media, "short.mp4", "640x360", 40);
    let long = clip(&media, "long.mp4", "1280x720", 60);
    let b = Browser::start();

    // Signing in through the printed one-time login link lands on the overview.
    b.goto(&farm.login_link);
    b.wait_for(
        "the overview",
        "return document.title.startsWith('Overview') && location.pathname === '/';",
        json!([]),
        Duration::from_secs(10),
    );
    assert!(!b.url().contains("token="), "the token leaves the address bar: {}", b.url());
    b.screenshot("01-overview-after-login");
    // The link worked once: in a fresh context it is refused.
    let again = Command::new("curl").args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &farm.login_link]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&again.stdout), "401");

    // A real job's progress bars move to done without a reload.
    let id = farm.upload(&short);
    b.goto(&format!("{}/jobs", farm.url));
    b.js(NO_RELOAD_MARK, json!([]));
    let row = format!("tr[data-job=\"{id}\"]");
    b.wait_for(
        "the job's renditions to show",
        "return document.querySelectorAll(arguments[0] + ' .bar').length >= 2;",
        json!([row]),
        Duration::from_secs(30),
    );
    let moving = b.wait_for(
        "a progress bar between 1% and 99%",
        "const w = [...document.querySelectorAll(arguments[0] + ' .bar .fill')].map(f => parseFloat(f.style.width)); \
         return w.some(x => x > 0 && x < 100) ? w : null;",
        json!([row]),
        Duration::from_secs(60),
    );
    b.screenshot("02-jobs-progress");
    b.wait_for(
        "every bar done and the job succeeded",
        "const bars = [...document.querySelectorAll(arguments[0] + ' .bar')]; \
         const pill = document.querySelector(arguments[0] + ' [data-job-state]'); \
         return bars.length > 0 && bars.every(b => b.dataset.state === 'succeeded' && b.querySelector('.fill').style.width === '100%') \
                && pill && pill.textContent === 'succeeded';",
        json!([row]),
        Duration::from_secs(120),
    );
    assert_eq!(b.js(STILL_MARKED, json!([])), json!(true), "the page was never reloaded (bars were {moving})");
    b.screenshot("03-jobs-done");

    // The job's page: probe, renditions, thumbnails, storyboard and a working player.
    b.click(&format!("{row} a"));
    b.wait_for("the job page", "return document.getElementById('renditions') !== null;", json!([]), Duration::from_secs(10));
    let rows = b.js("return [...document.querySelectorAll('#renditions tbody tr')].map(r => r.cells[0].textContent);", json!([]));
    assert_eq!(rows, json!(["240p", "360p"]), "a 360p source gets 240p and 360p");
    let tracks = b.js("return [...document.querySelectorAll('#audio-tracks tbody tr')].map(r => [r.cells[0].textContent, r.cells[1].textContent, r.cells[4].textContent]);", json!([]));
    assert_eq!(tracks, json!([["a0", "Track 1", "yes"]]), "the source's one (untagged, default) audio track");
    assert!(b.text("#probe").contains("h264"), "{}", b.text("#probe"));
    b.wait_for(
        "thumbnails and storyboard images to load",
        "const imgs = [...document.querySelectorAll('.thumbs img, .storyboard img')]; \
         return imgs.length >= 5 && imgs.every(i => i.complete && i.naturalWidth > 0);",
        json!([]),
        Duration::from_secs(15),
    );
    let duration = b.wait_for(
        "the player to load the MP4",
        "const v = document.getElementById('player'); return v && v.readyState >= 1 ? v.duration : null;",
        json!([]),
        Duration::from_secs(15),
    );
    assert!((duration.as_f64().unwrap() - 40.0).abs() < 0.2, "player duration {duration}");
    b.screenshot("04-job-page");

    // Cancelling a running job from its page.
    let long_id = farm.upload(&long);
    b.goto(&format!("{}/jobs/{long_id}", farm.url));
    b.wait_for(
        "the long job to run",
        "return [...document.querySelectorAll('.bar')].some(b => parseFloat(b.querySelector('.fill').style.width) > 0);",
        json!([]),
        Duration::from_secs(60),
    );
    b.click("form[action$='/cancel'] button");
    b.wait_for(
        "the job to show canceled",
        "const p = document.getElementById('job-state'); return p && p.textContent === 'canceled';",
        json!([]),
        Duration::from_secs(20),
    );
    assert_eq!(farm.job(&long_id)["state"], "canceled");
    b.screenshot("05-job-canceled");

    // A corrupt upload: its page says why, with the end of the engine's log.
    std::fs::write(media.path("corrupt.mp4"), vec![0x42u8; 50_000]).unwrap();
    let bad = farm.upload(&media.s("corrupt.mp4"));
    b.goto(&format!("{}/jobs/{bad}", farm.url));
    let why = b.wait_for(
        "the failure reason",
        "const e = document.getElementById('job-error'); return e && e.textContent;",
        json!([]),
        Duration::from_secs(30),
    );
    assert!(why.as_str().unwrap().contains("bad input"), "{why}");
    // Retry probes it again (it never got as far as tasks), and it fails again, for the same reason.
    let before = farm.job(&bad)["updated_at"].as_i64().unwrap();
    b.click("form[action$='/retry'] button");
    let started = Instant::now();
    loop {
        let j = farm.job(&bad);
        if j["state"] == "failed" && j["updated_at"].as_i64().unwrap() > before {
            assert!(j["error"].as_str().unwrap().contains("bad input"), "{j}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the retried job did not run again: {j}");
        std::thread::sleep(Duration::from_millis(200));
    }
    b.wait_for(
        "the page to show it failed again",
        "const p = document.getElementById('job-state'); return p && p.textContent === 'failed' && document.getElementById('job-error');",
        json!([]),
        Duration::from_secs(15),
    );
    b.screenshot("06-job-failed");

    // Draining a worker.
    b.goto(&format!("{}/workers", farm.url));
    b.wait_for(
        "the local worker",
        "return document.querySelector('tr[data-name=\"local-0\"]') !== null;",
        json!([]),
        Duration::from_secs(10),
    );
    b.click("tr[data-name=\"local-0\"] form[action$='/drain'] button");
    // The drain took effect (the API says so)...
    let started = Instant::now();
    loop {
        let state = worker_state(&farm, "local-0");
        if state == "draining" {
            break;
        }
        if started.elapsed() > Duration::from_secs(20) {
            b.screenshot("timeout-drain");
            let page = b.js("return location.href + ' ' + document.readyState + ': ' + document.body.innerText.slice(0, 600);", json!([]));
            let log = std::fs::read_to_string(farm.data.path("farm.log")).unwrap_or_default();
            panic!("the drain button did not drain: the API says {state}; page {page}; farm log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // ...the coordinator's log says who and when...
    let log = std::fs::read_to_string(farm.data.path("farm.log")).unwrap();
    assert!(log.lines().any(|l| l.ends_with(" draining") && l.contains(" worker ")), "{log}");
    // ...and the page shows it.
    b.wait_for(
        "the worker to show draining",
        "const p = document.querySelector('tr[data-name=\"local-0\"] [data-worker-state]'); return p && p.textContent === 'draining';",
        json!([]),
        Duration::from_secs(10),
    );
    b.screenshot("07-worker-draining");
    // Buttons keep working while the page refreshes itself (events, the 3 s tick).
    for round in 0..4 {
        for (button, state) in [("resume", "idle"), ("drain", "draining")] {
            b.click(&format!("tr[data-name=\"local-0\"] form[action$='/{button}'] button"));
            b.wait_for(
                &format!("round {round}: {state}"),
                "const p = document.querySelector('tr[data-name=\"local-0\"] [data-worker-state]'); return p && p.textContent === arguments[0];",
                json!([state]),
                Duration::from_secs(10),
            );
        }
    }

    // Adding a machine: create a join token, run the command line the page shows,
    // and watch the new worker appear on the workers page without a reload.
    b.goto(&format!("{}/workers/add", farm.url));
    b.type_into("#join-form input[name=uses]", "1");
    b.click("#join-form button");
    let command = b.wait_for(
        "the command line",
        "const c = document.getElementById('join-command'); return c && c.textContent;",
        json!([]),
        Duration::from_secs(10),
    );
    let command = command.as_str().unwrap().to_string();
    assert!(command.starts_with(&format!("drake worker --coordinator {} --token drk_join_", farm.url)), "{command}");
    b.screenshot("08-join-token");
    b.goto(&format!("{}/workers", farm.url));
    b.js(NO_RELOAD_MARK, json!([]));
    let machine = Dir::new();
    let args: Vec<&str> = command.split_whitespace().skip(1).collect();
    let mut new_worker =
        Command::new(drake_bin()).args(&args).current_dir(machine.tmp.path()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let rows = b.wait_for(
        "the new worker on the page",
        "const rows = document.querySelectorAll('tr[data-worker]'); return rows.length === 2 ? rows.length : null;",
        json!([]),
        Duration::from_secs(20),
    );
    assert_eq!(rows, json!(2));
    assert_eq!(b.js(STILL_MARKED, json!([])), json!(true), "the worker appeared without a reload");
    b.screenshot("09-worker-added");
    let _ = new_worker.kill();
    let _ = new_worker.wait();
}

/// (status, headers, body) of a request through curl, without following redirects.
fn http(method: &str, url: &str, headers: &[&str], form: Option<&str>) -> (u16, String, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--path-as-is", "-D", "-", "-X", method, url]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    if let Some(f) = form {
        cmd.args(["--data", f]);
    }
    let out = String::from_utf8_lossy(&cmd.output().unwrap().stdout).into_owned();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// Signs in with the admin token; returns the `Cookie` header.
fn sign_in(farm: &Farm) -> String {
    let (status, head, _) = http("POST", &format!("{}/login", farm.url), &[], Some(&format!("token={}", farm.admin)));
    assert_eq!(status, 303, "{head}");
    let cookie = head.lines().find_map(|l| l.strip_prefix("set-cookie: ")).expect("a session cookie").to_string();
    assert!(cookie.contains("httponly") && cookie.contains("samesite=strict"), "{cookie}");
    format!("Cookie: {}", cookie.split(';').next().unwrap())
}

fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    page[at..at + page[at..].find('"').unwrap()].to_string()
}

#[test]
fn every_dashboard_route_checks_the_session_and_csrf() {
    let farm = Farm::start(Dir::new(), &["coordinator"]);
    let u = |p: &str| format!("{}{p}", farm.url);

    // Without a session: pages go to sign-in, everything else is refused.
    let (status, head, _) = http("GET", &u("/"), &[], None);
    assert_eq!((status, head.contains("location: /login")), (303, true), "{head}");
    for path in ["/ui/fragment/jobs", "/ui/fragment/overview", "/ui/events", "/ui/files/jobs/x/240p/240p.mp4", "/metrics"] {
        assert_eq!(http("GET", &u(path), &[], None).0, 401, "{path}");
    }
    assert_eq!(http("POST", &u("/workers/add"), &[], Some("csrf=x&uses=1&ttl_seconds=3600")).0, 401);
    // Assets are public (the sign-in page needs them) and contain no data.
    assert_eq!(http("GET", &u("/ui/app.js"), &[], None).0, 200);
    // A wrong token or a non-admin token does not sign in.
    assert_eq!(http("POST", &u("/login"), &[], Some("token=drk_admin_guess")).0, 401);
    let (_, _, t) = http(
        "POST",
        &u("/api/v1/tokens"),
        &[&format!("Authorization: Bearer {}", farm.admin), "Content-Type: application/json"],
        Some(r#"{"role":"submit","label":"p"}"#),
    );
    let submit: Value = serde_json::from_str(&t).unwrap();
    let submit = submit["token"].as_str().unwrap();
    assert_eq!(http("POST", &u("/login"), &[], Some(&format!("token={submit}"))).0, 401);
    assert_eq!(http("GET", &u("/metrics"), &[&format!("Authorization: Bearer {submit}")], None).0, 401);

    // The sign-in form checks Origin like every other POST: another site cannot
    // sign a browser in to an attacker's session.
    let evil = http("POST", &u("/login"), &["Origin: http://evil.example"], Some(&format!("token={}", farm.admin)));
    assert_eq!((evil.0, evil.1.contains("set-cookie")), (403, false), "{}", evil.1);

    // The login link works once.
    assert_eq!(http("GET", &farm.login_link, &[], None).0, 303);
    assert_eq!(http("GET", &farm.login_link, &[], None).0, 401);

    let cookie = sign_in(&farm);
    let (status, head, page) = http("GET", &u("/workers/add"), &[&cookie], None);
    assert_eq!(status, 200);
    assert!(head.contains("content-security-policy: default-src 'self'"), "{head}");
    let csrf = csrf_of(&page);
    let form = |c: &str| format!("csrf={c}&uses=1&ttl_seconds=3600");
    // Actions need the session's CSRF token, and a same-origin Origin when one is sent.
    assert_eq!(http("POST", &u("/workers/add"), &[&cookie], Some(&form("0000"))).0, 403);
    assert_eq!(http("POST", &u("/workers/add"), &[&cookie, "Origin: http://evil.example"], Some(&form(&csrf))).0, 403);
    let (status, _, page) = http("POST", &u("/workers/add"), &[&cookie, &format!("Origin: {}", farm.url)], Some(&form(&csrf)));
    assert_eq!(status, 200);
    assert!(page.contains(&format!("drake worker --coordinator {} --token drk_join_", farm.url)));
    // Listed, and revocable.
    let (_, _, page) = http("GET", &u("/workers/add"), &[&cookie], None);
    let marker = "action=\"/join-tokens/";
    let at = page.find(marker).expect("the token is listed") + marker.len();
    let digest = &page[at..at + 64];
    assert_eq!(http("POST", &u(&format!("/join-tokens/{digest}/revoke")), &[&cookie], Some(&format!("csrf={csrf}"))).0, 303);
    let (_, _, page) = http("GET", &u("/workers/add"), &[&cookie], None);
    assert!(!page.contains(digest) && page.contains("No usable join tokens"), "revoked");
    // Pipelines: an admin makes a submit token on the dashboard (shown once), and revokes it.
    assert_eq!(http("POST", &u("/pipelines"), &[&cookie], Some("csrf=0000&label=ingest")).0, 403);
    let (status, _, page) = http("POST", &u("/pipelines"), &[&cookie], Some(&format!("csrf={csrf}&label=ingest")));
    assert_eq!(status, 200);
    let at = page.find("drk_submit_").expect("the new token is shown");
    let submit_token: String = page[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
    let api = |t: &str| http("GET", &u("/api/v1/jobs"), &[&format!("Authorization: Bearer {t}")], None).0;
    assert_eq!(api(&submit_token), 200);
    let (_, _, page) = http("GET", &u("/pipelines"), &[&cookie], None);
    assert!(page.contains("ingest") && !page.contains(&submit_token), "listed, never shown again");
    let marker = "action=\"/pipelines/";
    let at = page.find(marker).expect("revocable") + marker.len();
    let id = &page[at..at + 16];
    assert_eq!(http("POST", &u(&format!("/pipelines/{id}/revoke")), &[&cookie], Some(&format!("csrf={csrf}"))).0, 303);
    assert_eq!(api(&submit_token), 401, "a revoked pipeline token stops at once");
    assert_ne!(http("GET", &u("/pipelines"), &[], None).0, 200, "the page needs a session");

    // Behind a TLS-terminating proxy the command says https, and cookies are Secure.
    let https = "X-Forwarded-Proto: https";
    let (_, _, page) = http("POST", &u("/workers/add"), &[&cookie, https], Some(&form(&csrf)));
    let host = farm.url.trim_start_matches("http://");
    assert!(page.contains(&format!("drake worker --coordinator https://{host} --token drk_join_")));
    let (_, head, _) = http("POST", &u("/login"), &[https], Some(&format!("token={}", farm.admin)));
    assert!(head.lines().any(|l| l.starts_with("set-cookie: ") && l.contains("; secure")), "{head}");
    let (_, head, _) = http("POST", &u("/login"), &[], Some(&format!("token={}", farm.admin)));
    assert!(!head.contains("; secure"), "plain HTTP: {head}");

    // Files: no way out of the storage tree, and not into uploads.
    for path in ["/ui/files/../admin-token", "/ui/files/jobs/%2e%2e/%2e%2e/admin-token", "/ui/files/uploads/x", "/ui/files/jobs/.staging/x"]
    {
        let (status, _, body) = http("GET", &u(path), &[&cookie], None);
        assert!(matches!(status, 403 | 404), "{path}: {status}");
        assert!(!body.contains(&farm.admin), "{path}");
    }
    // Metrics for Prometheus, with the admin token.
    let (status, head, metrics) = http("GET", &u("/metrics"), &[&format!("Authorization: Bearer {}", farm.admin)], None);
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/plain; version=0.0.4"), "{head}");
    for name in [
        "drake_tasks",
        "drake_task_duration_seconds_bucket{kind=\"transcode\",le=\"+Inf\"}",
        "drake_task_failures_total{kind=\"expired\"} 0",
        "drake_workers{state=\"idle\"} 0",
        "drake_published_bytes_total 0",
    ] {
        assert!(metrics.contains(name), "{name} in\n{metrics}");
    }
    // Signing out ends the session.
    assert_eq!(http("POST", &u("/logout"), &[&cookie], Some(&format!("csrf={csrf}"))).0, 303);
    assert_eq!(http("GET", &u("/"), &[&cookie], None).0, 303);
}

#[test]
fn pages_cost_no_more_with_five_thousand_jobs_than_with_five_hundred() {
    // Pages list at most a page of rows (both farms fill every page), so their
    // cost is independent of the history behind them: the ideal ratio between
    // the two farms is 1. The overview summarises the last hour, which holds ten
    // times as many jobs on the big farm: linear is its bound (×10). A query that
    // scans history for every row grows with the square (the overview's
    // first-playable once did: 305 ms at 1,000 jobs against 12 ms at 100, ×25).
    // `/metrics` is linear too: its gauges count every job and task by state
    // (index-only scans), ×1.8 here and ×3.05 once in CI. Its counters add up only
    // what settled since the last scrape; adding up all history on each scrape
    // cost ×4.7 (19.8 ms against 4.2), too close to noise for a timing to tell, so
    // the conformance test `metrics_add_up_each_settled_row_once_and_never_go_down`
    // proves that instead.
    let small = seeded_farm(500);
    let big = seeded_farm(5000);
    let pages = |first_job: &str| {
        [
            ("/".to_string(), 10.0),
            ("/metrics".into(), 10.0),
            ("/jobs".into(), 3.0),
            ("/jobs?page=1".into(), 3.0),
            ("/jobs?state=failed".into(), 3.0),
            (format!("/jobs/{first_job}"), 3.0),
            ("/workers".into(), 3.0),
            ("/workers/add".into(), 3.0),
            ("/ui/fragment/jobs?page=0".into(), 3.0),
        ]
    };
    let (small_pages, big_pages) = (pages(&small.2), pages(&big.2));
    // The least of seven times each. The two farms are interleaved, so a noisy
    // moment hits both alike, and each round goes through every page, so one
    // page's seven times are seconds apart: the browser tests that run alongside
    // can only add to a page's time, and a burst of theirs once made a median
    // ×3.6 (41.4 ms against 11.5), then a least of seven taken within half a
    // second ×4.2 (44.1 ms against 10.4).
    let mut least = vec![(f64::MAX, f64::MAX); small_pages.len()];
    for _ in 0..7 {
        for (((s, _), (b, _)), (ms, mb)) in small_pages.iter().zip(&big_pages).zip(&mut least) {
            *ms = ms.min(page_time(&small.0, &small.1, s));
            *mb = mb.min(page_time(&big.0, &big.1, b));
        }
    }
    let mut report = Vec::new();
    let mut over = Vec::new();
    for (((s, _), (b, bound)), (ms, mb)) in small_pages.iter().zip(&big_pages).zip(&least) {
        let ratio = mb / ms.max(0.001);
        report.push(format!("{s}: {:.1} ms at 500 jobs, {:.1} ms at 5,000 (×{ratio:.2})", ms * 1000.0, mb * 1000.0));
        if ratio >= *bound {
            over.push(format!("{b} costs ×{ratio:.2} more at 5,000 jobs than at 500 ({:.1} ms vs {:.1} ms)", mb * 1000.0, ms * 1000.0));
        }
    }
    assert!(over.is_empty(), "{}\nall pages:\n{}", over.join("\n"), report.join("\n"));
    let (farm, cookie, _) = &big;
    let (_, _, jobs) = http("GET", &format!("{}/jobs", farm.url), &[cookie], None);
    assert!(jobs.contains("5000 jobs · page 1 of 100"), "paged, not all at once");
    let (_, _, workers) = http("GET", &format!("{}/workers", farm.url), &[cookie], None);
    assert_eq!(workers.matches("<tr data-worker=").count(), 50);

    // And in the browser: the pages load and render (times reported, not judged).
    let b = Browser::start();
    b.goto(&farm.login_link);
    b.wait_for("sign-in", "return location.pathname === '/';", json!([]), Duration::from_secs(10));
    for p in ["/jobs", "/workers", "/"] {
        b.goto(&format!("{}{p}", farm.url));
        let ms = b.wait_for(
            "navigation timing",
            "const n = performance.getEntriesByType('navigation')[0]; return n && n.loadEventEnd > 0 ? n.loadEventEnd : null;",
            json!([]),
            Duration::from_secs(10),
        );
        report.push(format!("browser {p}: loaded in {:.0} ms", ms.as_f64().unwrap()));
    }
    b.screenshot("10-overview-5000-jobs");
    println!("{}", report.join("\n"));
}

/// A coordinator over a seeded database of `jobs` jobs: the farm, a signed-in
/// cookie header and the first job's id.
fn seeded_farm(jobs: i64) -> (Farm, String, String) {
    let data = Dir::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let first_job = rt.block_on(seed(&data.path("drake.db"), jobs));
    let farm = Farm::start(data, &["coordinator"]);
    let cookie = sign_in(&farm);
    (farm, cookie, first_job)
}

/// One request's total time in seconds, as curl measures it; the page must be 200.
fn page_time(farm: &Farm, cookie: &str, path: &str) -> f64 {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code} %{time_total}", "-H", cookie, &format!("{}{path}", farm.url)])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, t) = text.split_once(' ').unwrap();
    assert_eq!(status, "200", "{path}");
    t.parse().unwrap()
}

/// `jobs` jobs in every state with 5 tasks each, spread over the last hour, and 50
/// workers (half of them busy, with 50 running tasks). Returns the first job's id.
async fn seed(db: &std::path::Path, jobs: i64) -> String {
    use coordinator::queue::{NewJob, NewTask, Queue, QueueConfig};
    let q = Queue::open(db, QueueConfig::default()).await.unwrap();
    let now = coordinator::state::now_ms();
    let caps = proto::wire::Capabilities { encoders: vec!["libx264".into(), "aac".into()], cores: 16, tags: vec![], encoder_build: None };
    for w in 0..50 {
        q.register_worker(&format!("w{w:02}"), &format!("machine-{w:02}"), 2, &caps, "0.1.0", now).await.unwrap();
    }
    let mut first = String::new();
    let spacing = 3_000_000 / jobs;
    for i in 0..jobs {
        let new = NewJob {
            pipeline: None,
            profile: "web".into(),
            source: format!("https://example.com/{i}.mp4"),
            callback_url: None,
            priority: 0,
            idempotency_key: None,
            requires_tags: vec![],
            captions: vec![],
        };
        let (job, _) = q.create_job(&new, now - 3_500_000 + i * spacing).await.unwrap();
        let tasks: Vec<NewTask> = ["240p", "360p", "480p", "720p"]
            .iter()
            .map(|r| NewTask::transcode(r, None))
            .chain(std::iter::once(NewTask::thumbnails()))
            .collect();
        q.add_tasks(&job.id, &tasks, now - 3_500_000 + i * spacing).await.unwrap();
        if first.is_empty() {
            first = job.id.clone();
        }
    }
    let pool = q.pool();
    sqlx::query(
        "UPDATE jobs SET probe = '{\"container\":\"mov,mp4\",\"duration\":60.0,\"bitrate\":2000000,\"size_bytes\":15000000,\"streams\":[]}',
                         state = CASE abs(random()) % 7 WHEN 0 THEN 'failed' WHEN 1 THEN 'canceled' WHEN 2 THEN 'running' WHEN 3 THEN 'queued' ELSE 'succeeded' END,
                         error = 'bad input: the source cannot be read to its end', updated_at = created_at + 40000,
                         chore = NULL",
    )
    .execute(pool)
    .await
    .unwrap();
    // Ended an hour ago at most, their staging areas were swept long since: the
    // big farm swept 3,500 of them, a hundred a second, while its pages were timed.
    sqlx::query("UPDATE jobs SET swept = 1 WHERE state IN ('succeeded', 'failed', 'canceled')").execute(pool).await.unwrap();
    sqlx::query(
        "UPDATE tasks SET state = (SELECT CASE j.state WHEN 'running' THEN 'running' WHEN 'queued' THEN 'queued' WHEN 'succeeded' THEN 'succeeded' ELSE 'failed' END FROM jobs j WHERE j.id = tasks.job_id),
                          progress = 0.5, leased_at = created_at + 1000, finished_at = created_at + 30000, published_bytes = 1000000,
                          result = '{\"files\":[{\"path\":\"a.mp4\",\"size\":1000000,\"sha256\":\"x\"}],\"dir\":\"jobs/x/240p\",\"report\":{}}'",
    )
    .execute(pool)
    .await
    .unwrap();
    // A worker runs at most its slots: 25 busy workers, 2 tasks each.
    sqlx::query(
        "UPDATE tasks SET state = 'queued' WHERE state = 'running'
           AND id NOT IN (SELECT id FROM tasks WHERE state = 'running' ORDER BY created_at DESC LIMIT 50)",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("UPDATE tasks SET worker_id = 'w' || printf('%02d', abs(random()) % 25) WHERE state = 'running'")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO task_failures (task_id, job_id, kind, error, at) SELECT id, job_id, 'failed', 'x', finished_at FROM tasks WHERE state = 'failed'")
        .execute(pool)
        .await
        .unwrap();
    first
}

/// The API's view of a worker's state.
fn worker_state(farm: &Farm, name: &str) -> String {
    let out = Command::new("curl")
        .args(["-sf", "-H", &format!("Authorization: Bearer {}", farm.admin), &format!("{}/api/v1/workers", farm.url)])
        .output()
        .unwrap();
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    list["workers"].as_array().unwrap().iter().find(|w| w["name"] == name).map_or(String::new(), |w| w["state"].as_str().unwrap().into())
}

#[test]
fn many_tabs_share_one_event_stream_and_stay_live() {
    // Browsers allow six HTTP/1.1 connections per host; a stream per tab froze the
    // seventh tab (it never loaded) and any action in it.
    let farm = Farm::up(1);
    let b = Browser::start();
    b.goto(&farm.login_link);
    b.wait_for("the overview", "return document.title.startsWith('Overview');", json!([]), Duration::from_secs(10));
    let mut tabs = Vec::new();
    for n in 0..8 {
        tabs.push(b.new_tab());
        b.goto(&format!("{}/workers", farm.url));
        b.wait_for(
            &format!("tab {n} to be live"),
            "return document.body.dataset.live === 'connected';",
            json!([]),
            Duration::from_secs(10),
        );
    }
    b.screenshot("11-eighth-tab-live");
    let started = Instant::now();
    b.click("tr[data-name=\"local-0\"] form[action$='/drain'] button");
    while worker_state(&farm, "local-0") != "draining" {
        assert!(started.elapsed() < Duration::from_secs(10), "the drain from the eighth tab did not arrive");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The first tab hears of it through the shared stream, without a reload.
    b.switch_to(&tabs[0]);
    b.wait_for(
        "the first tab to show draining",
        "const p = document.querySelector('tr[data-name=\"local-0\"] [data-worker-state]'); return p && p.textContent === 'draining';",
        json!([]),
        Duration::from_secs(10),
    );
}

/// A 20 s source with two audio languages (English default, French) and English
/// subtitles whose cues span the whole clip.
fn languages_clip(dir: &Dir) -> String {
    let srt: String =
        (0..10).map(|k| format!("{}\n00:00:{:02},000 --> 00:00:{:02},900\nHello cue {k}\n\n", k + 1, 2 * k, 2 * k + 1)).collect();
    std::fs::write(dir.path("en.srt"), srt).unwrap();
    let path = dir.s("languages.mp4");
    let args = format!(
        "-f lavfi -i testsrc2=s=640x360:r=30:d=20 -f lavfi -i sine=f=440:d=20 -f lavfi -i sine=f=880:d=20 -i {} \
         -map 0 -map 1 -map 2 -map 3 -c:v libx264 -preset ultrafast -c:a aac -c:s mov_text \
         -metadata:s:a:0 language=eng -metadata:s:a:1 language=fre -disposition:a:0 default -disposition:a:1 0 \
         -metadata:s:s:0 language=eng {path}",
        dir.s("en.srt")
    );
    ffmpeg(&args.split_whitespace().collect::<Vec<_>>());
    path
}

#[test]
fn the_job_page_plays_hls_with_rung_audio_and_captions_pickers_and_dashjs_plays_the_mpd() {
    let farm = Farm::up(2);
    let media = Dir::new();
    let id = farm.upload(&languages_clip(&media));
    let started = Instant::now();
    while !matches!(farm.job(&id)["state"].as_str(), Some("succeeded" | "failed" | "canceled")) {
        assert!(started.elapsed() < Duration::from_secs(180), "the job did not end");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(farm.job(&id)["state"], "succeeded");

    let b = Browser::start();
    b.goto(&farm.login_link);
    b.wait_for("the overview", "return location.pathname === '/';", json!([]), Duration::from_secs(10));
    b.goto(&format!("{}/jobs/{id}", farm.url));
    // hls.js starts on the lowest rung, and lists both rungs, both languages and the captions.
    b.wait_for(
        "the HLS player to play",
        "const v = document.getElementById('player'); if (v.paused) v.play().catch(() => {}); \
         return window.drakeHls && v.currentTime > 0.5 ? v.videoWidth : null;",
        json!([]),
        Duration::from_secs(30),
    );
    let pickers = b.js(
        "return ['rung-select', 'audio-select', 'captions-select'].map(id => [...document.getElementById(id).options].map(o => o.textContent));",
        json!([]),
    );
    assert_eq!(
        pickers,
        json!([["auto", "240p", "360p"], ["English (en)", "French (fr)"], ["off", "English (en)"]]),
        "the pickers list what the master playlist declares"
    );
    b.screenshot("12-hls-player");

    // Picking the top rung lands: the picture is 640 wide.
    b.js("const s = document.getElementById('rung-select'); s.value = '1'; s.dispatchEvent(new Event('change'));", json!([]));
    b.wait_for(
        "the top rung's picture",
        "const v = document.getElementById('player'); return v.videoWidth === 640 && !v.paused ? v.currentTime : null;",
        json!([]),
        Duration::from_secs(30),
    );

    // A seek past a segment boundary (segments are 6 s) keeps playing.
    b.js("document.getElementById('player').currentTime = 7.5;", json!([]));
    b.wait_for(
        "playback past the seek",
        "const v = document.getElementById('player'); return !v.paused && !v.error && v.currentTime > 8.5 ? v.currentTime : null;",
        json!([]),
        Duration::from_secs(30),
    );

    // The second language: hls.js switches its audio track and keeps playing.
    let before = b.js("return document.getElementById('player').currentTime;", json!([])).as_f64().unwrap();
    b.js("const s = document.getElementById('audio-select'); s.value = '1'; s.dispatchEvent(new Event('change'));", json!([]));
    b.wait_for(
        "the French track",
        "const h = window.drakeHls, v = document.getElementById('player'); \
         return h.audioTrack === 1 && h.audioTracks[1].lang === 'fr' && v.currentTime > arguments[0] + 1 && !v.error;",
        json!([before]),
        Duration::from_secs(30),
    );

    // Captions on: a cue shows.
    b.js("const s = document.getElementById('captions-select'); s.value = '0'; s.dispatchEvent(new Event('change'));", json!([]));
    let cue = b.wait_for(
        "a caption cue",
        "const v = document.getElementById('player'); \
         for (const t of v.textTracks) { if (t.mode === 'showing' && t.activeCues && t.activeCues.length) return t.activeCues[0].text; } \
         return null;",
        json!([]),
        Duration::from_secs(30),
    );
    assert!(cue.as_str().unwrap().starts_with("Hello cue"), "{cue}");
    b.screenshot("13-hls-player-captions");

    // dash.js (npm `dashjs`) plays the job's MPD over the very same files: a copy of
    // the job's directory served by a plain HTTP server next to a page that loads it.
    let dashjs = npm_package("dashjs", "5.2.1");
    let site = Dir::new();
    let job_dir = farm.data.path(&format!("storage/jobs/{id}"));
    let copied = Command::new("cp").args(["-r", job_dir.to_str().unwrap(), site.s("job").as_str()]).status().unwrap();
    assert!(copied.success());
    std::fs::copy(dashjs.join("dist/modern/umd/dash.all.min.js"), site.path("dash.all.min.js")).unwrap();
    std::fs::write(
        site.path("dash.html"),
        "<!doctype html><video id=v muted playsinline></video><script src=dash.all.min.js></script><script>\
         window.errors = []; const p = dashjs.MediaPlayer().create(); window.player = p;\
         p.on('error', e => window.errors.push(JSON.stringify(e.error || e)));\
         p.initialize(document.getElementById('v'), 'job/manifest.mpd', true);</script>",
    )
    .unwrap();
    let server = StaticSite::serve(&site);
    b.goto(&format!("{}/dash.html", server.url));
    let played = b.wait_for(
        "dash.js to play the MPD",
        "const v = document.getElementById('v'); if (window.errors.length) return 'errors: ' + window.errors.join('; '); \
         return v.currentTime > 3 ? [v.videoWidth, window.player.getTracksFor('audio').map(t => t.lang), \
                                      window.player.getTracksFor('text').map(t => t.lang), window.player.duration()] : null;",
        json!([]),
        Duration::from_secs(30),
    );
    drop(server);
    assert!(played.is_array(), "{played}");
    assert_eq!((&played[1], &played[2]), (&json!(["en", "fr"]), &json!(["en"])), "{played}");
    assert!((played[3].as_f64().unwrap() - 20.0).abs() < 0.2, "{played}");
}

#[test]
fn ops_upload_a_test_file_from_the_browser_with_tus() {
    let farm = Farm::up(1);
    let media = Dir::new();
    let file = clip(&media, "test upload.mp4", "320x240", 4);
    let size = std::fs::metadata(&file).unwrap().len();
    let b = Browser::start();
    b.goto(&farm.login_link);
    b.wait_for("the overview", "return location.pathname === '/';", json!([]), Duration::from_secs(10));
    b.click("header nav a[href='/upload']");
    b.wait_for(
        "the upload page with tus-js-client",
        "return location.pathname === '/upload' && typeof tus !== 'undefined' && tus.isSupported;",
        json!([]),
        Duration::from_secs(10),
    );

    // The session's cookie alone may not upload: without the page's CSRF header, 401.
    b.js(
        "window.__bare = null; fetch('/api/v1/uploads/', {method: 'POST', headers: {'Tus-Resumable': '1.0.0', 'Upload-Length': '5'}})\
         .then(r => { window.__bare = r.status; });",
        json!([]),
    );
    let bare = b.wait_for("the bare POST's answer", "return window.__bare;", json!([]), Duration::from_secs(10));
    assert_eq!(bare, 401);

    b.choose_file("#upload-form input[name=file]", &file);
    b.click("#upload-form button");
    let href = b.wait_for(
        "the uploaded file's job link",
        "const a = document.getElementById('upload-job'); return a ? a.getAttribute('href') : null;",
        json!([]),
        Duration::from_secs(60),
    );
    assert_eq!(b.js("return document.getElementById('upload-progress').value;", json!([])), 100);
    b.screenshot("14-upload-done");
    let href = href.as_str().unwrap().to_string();
    b.click("#upload-job");
    b.wait_for("the job page", "return location.pathname === arguments[0];", json!([href]), Duration::from_secs(10));
    let id = href.strip_prefix("/jobs/").unwrap();
    let started = Instant::now();
    while !matches!(farm.job(id)["state"].as_str(), Some("succeeded" | "failed" | "canceled")) {
        assert!(started.elapsed() < Duration::from_secs(120), "the job did not end");
        std::thread::sleep(Duration::from_millis(300));
    }
    let job = farm.job(id);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["probe"]["size_bytes"].as_u64(), Some(size), "the whole file arrived");
}
