//! A small WebDriver client: Debian's chromium, headless, driven through
//! chromedriver over the W3C WebDriver protocol. Screenshots are kept in
//! `target/screenshots/` as test artifacts.

#![allow(dead_code)]

use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    driver: Child,
    base: String,
    session: String,
}

impl Browser {
    pub fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (scripts/setup.sh installs chromium-driver)");
        let base = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        while ureq::get(&format!("{base}/status")).call().is_err() {
            assert!(started.elapsed() < Duration::from_secs(20), "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        // A page that does not load within 20 s fails the test (the default waits 300 s).
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "timeouts": {"pageLoad": 20_000}, "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-dev-shm-usage", "--window-size=1400,1000", "--autoplay-policy=no-user-gesture-required"]
        }}}});
        let mut b = Browser { driver, base, session: String::new() };
        let v = b.call("POST", "/session", caps);
        b.session = v["sessionId"].as_str().expect("a WebDriver session").to_string();
        b
    }

    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let resp = match method {
            "GET" => ureq::get(&url).call(),
            "DELETE" => ureq::delete(&url).call(),
            _ => ureq::post(&url).send_json(body),
        };
        let v: Value = match resp {
            Ok(r) => r.into_json().unwrap(),
            Err(ureq::Error::Status(code, r)) => panic!("WebDriver {method} {path}: HTTP {code}: {}", r.into_string().unwrap_or_default()),
            Err(e) => panic!("WebDriver {method} {path}: {e}"),
        };
        v.get("value").cloned().unwrap_or(v)
    }

    fn s(&self, path: &str) -> String {
        format!("/session/{}{path}", self.session)
    }

    pub fn goto(&self, url: &str) {
        self.call("POST", &self.s("/url"), json!({"url": url}));
    }

    /// Opens a new tab, switches to it, and returns its handle.
    pub fn new_tab(&self) -> String {
        let v = self.call("POST", &self.s("/window/new"), json!({"type": "tab"}));
        let handle = v["handle"].as_str().expect("a window handle").to_string();
        self.switch_to(&handle);
        handle
    }

    pub fn switch_to(&self, handle: &str) {
        self.call("POST", &self.s("/window"), json!({"handle": handle}));
    }

    pub fn url(&self) -> String {
        self.call("GET", &self.s("/url"), Value::Null).as_str().unwrap_or_default().to_string()
    }

    /// Runs JavaScript in the page; `arguments` are available to it.
    pub fn js(&self, script: &str, args: Value) -> Value {
        self.call("POST", &self.s("/execute/sync"), json!({"script": script, "args": args}))
    }

    fn find(&self, css: &str) -> String {
        let v = self.call("POST", &self.s("/element"), json!({"using": "css selector", "value": css}));
        v[ELEMENT].as_str().unwrap_or_else(|| panic!("no element {css}: {v}")).to_string()
    }

    /// Clicks an element the way a user does (WebDriver moves the mouse there).
    pub fn click(&self, css: &str) {
        let id = self.find(css);
        self.call("POST", &self.s(&format!("/element/{id}/click")), json!({}));
    }

    pub fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css);
        self.call("POST", &self.s(&format!("/element/{id}/clear")), json!({}));
        self.call("POST", &self.s(&format!("/element/{id}/value")), json!({"text": text}));
    }

    /// Picks a file in an `<input type="file">`, as a user does in the file dialog.
    pub fn choose_file(&self, css: &str, path: &str) {
        let id = self.find(css);
        self.call("POST", &self.s(&format!("/element/{id}/value")), json!({"text": path}));
    }

    pub fn text(&self, css: &str) -> String {
        self.js("const e = document.querySelector(arguments[0]); return e ? e.textContent : null;", json!([css]))
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub fn accept_alert(&self) {
        self.call("POST", &self.s("/alert/accept"), json!({}));
    }

    /// Polls a JavaScript condition until it returns a truthy value.
    pub fn wait_for(&self, what: &str, script: &str, args: Value, limit: Duration) -> Value {
        let started = Instant::now();
        loop {
            let v = self.js(script, args.clone());
            if !(v.is_null() || v == Value::Bool(false)) {
                return v;
            }
            if started.elapsed() > limit {
                self.screenshot(&format!("timeout-{}", what.replace(' ', "-")));
                let page =
                    self.js("return location.href + ' ' + document.readyState + ': ' + document.body.innerText.slice(0, 600);", json!([]));
                panic!("timed out after {limit:?} waiting for {what}; last value {v}; page {page}");
            }
            std::thread::sleep(Duration::from_millis(150));
        }
    }

    /// Saves a PNG of the page in `target/screenshots/NAME.png`.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        use base64::Engine;
        let b64 = self.call("GET", &self.s("/screenshot"), Value::Null);
        let png = base64::engine::general_purpose::STANDARD.decode(b64.as_str().unwrap_or_default()).unwrap();
        let dir = screenshots_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }
}

pub fn screenshots_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots")
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = ureq::delete(&format!("{}/session/{}", self.base, self.session)).call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
