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
            .stderr(Stdio::null())
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
                admin = last;
            } else if line.starts_with("dashboard (one-time login link)") {
                login_link = last;
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
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        &format!("testsrc2=s={size}:r=30:d={seconds}"),
        "-f",
        "lavfi",
        "-i",
        &format!("sine=d={seconds}"),
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-c:a",
        "aac",
        &path,
    ]);
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

    // Draining a worker.
    b.goto(&format!("{}/workers", farm.url));
    b.wait_for(
        "the local worker",
        "return document.querySelector('tr[data-name=\"local-0\"]') !== null;",
        json!([]),
        Duration::from_secs(10),
    );
    b.click("tr[data-name=\"local-0\"] form[action$='/drain'] button");
    b.wait_for(
        "the worker to show draining",
        "const p = document.querySelector('tr[data-name=\"local-0\"] [data-worker-state]'); return p && p.textContent === 'draining';",
        json!([]),
        Duration::from_secs(10),
    );
    b.screenshot("06-worker-draining");

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
    b.screenshot("07-join-token");
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
    b.screenshot("08-worker-added");
    let _ = new_worker.kill();
    let _ = new_worker.wait();
}
