//! The farm as real processes for the integration tests: a coordinator and workers
//! on loopback ports in temp dirs, nginx as external storage, a webhook receiver.

use super::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A coordinator on port 0 in a temp dir; killed when dropped.
pub struct Coordinator {
    pub child: Child,
    pub url: String,
    pub admin: String,
    pub data: Dir,
    /// Flags it was started with, kept across restarts.
    pub args: Vec<String>,
    /// Environment it and its workers were started with.
    pub env: Vec<(String, String)>,
}

impl Coordinator {
    pub fn start() -> Coordinator {
        Coordinator::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Coordinator {
        Coordinator::start_faulty(extra, "")
    }

    /// A coordinator that aborts at the named fault points (`coordinator::fault`)
    /// the first time it reaches one; restarts run without faults.
    pub fn start_faulty(extra: &[&str], faults: &str) -> Coordinator {
        Coordinator::start_env(extra, faults, &[])
    }

    /// A coordinator (and its workers) with more environment variables.
    pub fn start_env(extra: &[&str], faults: &str, env: &[(&str, &str)]) -> Coordinator {
        let data = Dir::new();
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let (child, url, admin) = Coordinator::spawn_with(&data, "127.0.0.1:0", extra, true, faults, &env);
        Coordinator { child, url, admin, data, args: extra.iter().map(|s| s.to_string()).collect(), env }
    }

    /// Waits for the coordinator to exit on its own (a fault point), at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) {
        let started = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            assert!(started.elapsed() < limit, "the coordinator did not reach its fault point in {limit:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts a coordinator on `data`; `fresh` says the data dir is new, so an admin
    /// token is generated and printed.
    pub fn spawn(data: &Dir, listen: &str, extra: &[&str], fresh: bool) -> (Child, String, String) {
        Coordinator::spawn_with(data, listen, extra, fresh, "", &[])
    }

    fn spawn_with(
        data: &Dir,
        listen: &str,
        extra: &[&str],
        fresh: bool,
        faults: &str,
        env: &[(String, String)],
    ) -> (Child, String, String) {
        let mut child = Command::new(drake_bin())
            .args(["coordinator", "--data", data.tmp.path().to_str().unwrap(), "--listen", listen])
            .args(extra)
            .env_remove("DRAKE_ADMIN_TOKEN")
            .env("DRAKE_FAULT_POINTS", faults)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let url = lines.next().unwrap().unwrap().rsplit(' ').next().unwrap().to_string();
        let second = lines.next().unwrap().unwrap();
        // Keep reading, so the coordinator never writes into a closed pipe.
        std::thread::spawn(move || for _ in lines {});
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        let stored = std::fs::read_to_string(data.path("admin-token")).unwrap().trim().to_string();
        assert!(stored.starts_with("drk_admin_"));
        // A generated token is named when it is made; a restart keeps the stored one.
        // Its value goes only to a terminal, never into a pipe a log collector keeps.
        assert_eq!(second.starts_with("admin token"), fresh, "{second}");
        if fresh {
            assert_eq!(second, format!("admin token: kept in {} (mode 0600)", data.path("admin-token").display()));
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(data.path("admin-token")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "the admin token file is private");
        }
        (child, url, stored)
    }

    /// Kills the coordinator and starts it again on the same address and data.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let (child, url, admin) = Coordinator::spawn_with(&self.data, self.url.trim_start_matches("http://"), &args, false, "", &self.env);
        self.child = child;
        assert_eq!((url.as_str(), admin.as_str()), (self.url.as_str(), self.admin.as_str()));
    }

    /// (status, JSON body) of a request with the given token.
    pub fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        call_at(&self.url, method, path, token, body)
    }

    pub fn wait_for(&self, job: &str, mut done: impl FnMut(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let (_, j) = self.call("GET", &format!("/api/v1/jobs/{job}"), Some(&self.admin), None);
            if done(&j) {
                return j;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "timed out; last: {j}");
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

/// A `drake worker` process; killed when dropped.
pub struct Worker {
    pub child: Child,
    pub name: String,
    pub scratch: std::path::PathBuf,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Coordinator {
    pub fn join_token(&self, uses: i64) -> String {
        let (status, t) = self.call("POST", "/api/v1/join-tokens", Some(&self.admin), Some(json!({"uses": uses, "ttl_seconds": 600})));
        assert_eq!(status, 201);
        t["token"].as_str().unwrap().to_string()
    }

    pub fn worker(&self, name: &str, token: &str) -> Worker {
        self.worker_with_stderr(name, token, Stdio::inherit())
    }

    pub fn worker_with_stderr(&self, name: &str, token: &str, stderr: Stdio) -> Worker {
        self.worker_at(&self.url, name, token, stderr)
    }

    /// A worker that talks to `coordinator` (a load balancer, say), with its scratch
    /// in this coordinator's data dir.
    pub fn worker_at(&self, coordinator: &str, name: &str, token: &str, stderr: Stdio) -> Worker {
        let scratch = self.data.path(&format!("scratch-{name}"));
        let child = Command::new(drake_bin())
            .args(["worker", "--coordinator", coordinator, "--name", name, "--slots", "1", "--scratch", scratch.to_str().unwrap()])
            .env("DRAKE_TOKEN", token)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        Worker { child, name: name.to_string(), scratch }
    }

    /// A multipart upload through curl, as an upload pipeline would send it.
    pub fn upload(&self, file: &str, fields: &[(&str, &str)]) -> (u16, Value) {
        upload_at(&self.url, &self.admin, file, fields)
    }

    pub fn fetch(&self, path: &str) -> Vec<u8> {
        let out = Command::new("curl")
            .args(["-sf", "-H", &format!("Authorization: Bearer {}", self.admin), &format!("{}{path}", self.url)])
            .output()
            .unwrap();
        assert!(out.status.success(), "GET {path}");
        out.stdout
    }

    pub fn wait_ended(&self, job: &str, limit: Duration) -> Value {
        let started = Instant::now();
        loop {
            let (_, j) = self.call("GET", &format!("/api/v1/jobs/{job}"), Some(&self.admin), None);
            if matches!(j["state"].as_str(), Some("succeeded" | "failed" | "canceled")) {
                return j;
            }
            assert!(started.elapsed() < limit, "job did not end in {limit:?}: {j}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// (status, JSON body) of a request to the coordinator (or balancer) at `base`.
pub fn call_at(base: &str, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", method, &format!("{base}{path}")]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "-d", &b.to_string()]);
    }
    let out = String::from_utf8(cmd.output().unwrap().stdout).unwrap();
    let (body, status) = out.rsplit_once('\n').unwrap();
    (status.parse().unwrap(), serde_json::from_str(body).unwrap_or(Value::Null))
}

/// A multipart upload to the coordinator (or balancer) at `base` with `token`.
pub fn upload_at(base: &str, token: &str, file: &str, fields: &[(&str, &str)]) -> (u16, Value) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-o", "-", "-w", "\n%{http_code}", "-H", &format!("Authorization: Bearer {}", token), "-F", &format!("file=@{file}")]);
    // A large body waits for the coordinator's `100 Continue` however slow the
    // machine is (curl's default is 1 s). An upload refused by its Content-Length
    // is then answered before a byte is sent; otherwise the connection the refusal
    // closes can lose the answer under curl's send.
    cmd.args(["--expect100-timeout", "60"]);
    for (k, v) in fields {
        cmd.args(["-F", &format!("{k}={v}")]);
    }
    cmd.arg(format!("{base}/api/v1/jobs"));
    let out = String::from_utf8(cmd.output().unwrap().stdout).unwrap();
    let (body, status) = out.rsplit_once('\n').unwrap();
    (status.parse().unwrap(), serde_json::from_str(body).unwrap_or(Value::Null))
}

/// Reads one HTTP request with a Content-Length body: (head, body), or `None` if
/// the connection closed first.
pub fn read_request(conn: &mut std::net::TcpStream) -> Option<(String, String)> {
    use std::io::Read;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = conn.read(&mut chunk).unwrap_or(0);
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
                .unwrap_or(0);
            if body.len() >= len {
                return Some((head.to_string(), body[..len].to_string()));
            }
        }
    }
}

pub type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>;

/// Receives webhooks on loopback: answers 500 to the first delivery and 200 after,
/// recording (headers, body) of each.
pub fn webhook_receiver() -> (String, Received) {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let (head, body) = read_request(&mut conn).unwrap_or_default();
            let first = {
                let mut l = log.lock().unwrap();
                l.push((head, body));
                l.len() == 1
            };
            let status = if first { "500 Internal Server Error" } else { "200 OK" };
            let _ = conn.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes());
        }
    });
    (url, seen)
}

/// A tus request to the coordinator at `base` with `token`, by curl: (status,
/// headers lowercased). `body` is a file to send.
pub fn tus_at(base: &str, token: &str, method: &str, path: &str, headers: &[&str], body: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "-o",
        "/dev/null",
        "-D",
        "-",
        "-X",
        method,
        "-H",
        &format!("Authorization: Bearer {token}"),
        "-H",
        "Tus-Resumable: 1.0.0",
    ]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    if let Some(file) = body {
        cmd.args(["-H", "Content-Type: application/offset+octet-stream", "--data-binary", &format!("@{file}")]);
    }
    if method == "HEAD" {
        cmd.arg("-I");
    }
    let out = String::from_utf8_lossy(&cmd.arg(format!("{base}{path}")).output().unwrap().stdout).to_lowercase();
    // The last head is the answer (a large body first gets "100 continue").
    let out = out.rfind("http/1.1 ").map_or(out.clone(), |at| out[at..].to_string());
    let status = out.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, out)
}

pub fn header<'a>(head: &'a str, name: &str) -> &'a str {
    head.lines().find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim())).unwrap_or("")
}

/// Processes whose command line mentions `needle` (orphans of a killed worker).
pub fn processes_mentioning(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(needle))
        .collect()
}

pub fn sigterm(pid: u32) {
    let status = Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert!(status.success());
}

/// nginx with its dav module, on loopback, as production's external storage.
pub struct Nginx {
    pub child: Child,
    /// The store's root URL (`.../media`).
    pub url: String,
    /// The server's own root: the load balancer, when it balances.
    pub base: String,
    pub root: std::path::PathBuf,
    pub _dir: Dir,
}

impl Nginx {
    pub const AUTHORIZATION: &str = "Bearer store-s3cret";

    pub fn start() -> Nginx {
        Nginx::start_balancing(&[])
    }

    /// The store, and also a load balancer in front of coordinators at `upstreams`
    /// (host:port) on the same address, as a platform runs several: every path
    /// outside `/media/` goes to a coordinator, and to the next one when the one
    /// picked is down; event streams are not buffered; uploads of any size pass.
    pub fn start_balancing(upstreams: &[String]) -> Nginx {
        let dir = Dir::new();
        let root = dir.path("root");
        std::fs::create_dir_all(&root).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let as_root = Command::new("id").arg("-u").output().unwrap().stdout.starts_with(b"0");
        let conf = format!(
            "daemon off;\n{user}pid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{\n  log_format drake '$request_method $uri $status $body_bytes_sent \"$http_range\" \"$http_user_agent\"';\n  access_log {d}/access.log drake;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  client_max_body_size 0;\n  server {{\n    listen 127.0.0.1:{port};\n    location /media/ {{\n      if ($http_authorization != \"{auth}\") {{ return 401; }}\n      alias {root}/;\n      dav_methods PUT DELETE MKCOL COPY MOVE;\n      dav_access user:rw group:r all:r;\n    }}\n{balancer}  }}\n{upstream}}}\n",
            balancer = if upstreams.is_empty() {
                String::new()
            } else {
                "    location / {\n      proxy_pass http://coordinators;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_buffering off;\n      proxy_read_timeout 1h;\n      proxy_connect_timeout 2s;\n      proxy_next_upstream error timeout http_502 http_503 non_idempotent;\n    }\n".to_string()
            },
            upstream = if upstreams.is_empty() {
                String::new()
            } else {
                let servers: String = upstreams.iter().map(|u| format!("    server {u} max_fails=1 fail_timeout=5s;\n")).collect();
                format!("  upstream coordinators {{\n{servers}  }}\n")
            },
            user = if as_root { "user root;\n" } else { "" },
            d = dir.tmp.path().display(),
            auth = Nginx::AUTHORIZATION,
            root = root.display(),
        );
        std::fs::write(dir.path("nginx.conf"), conf).unwrap();
        let child = Command::new("nginx")
            .args(["-e", &dir.s("error.log"), "-p", &dir.s(""), "-c", &dir.s("nginx.conf")])
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx (scripts/setup.sh installs nginx-core)");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "nginx did not start: {}",
                std::fs::read_to_string(dir.path("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Nginx { child, url: format!("http://127.0.0.1:{port}/media"), base: format!("http://127.0.0.1:{port}"), root, _dir: dir }
    }

    /// Each request so far: `METHOD URI STATUS BODY_BYTES "RANGE"`.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self._dir.path("access.log")).unwrap_or_default()
    }

    pub fn fetch(&self, url: &str) -> Vec<u8> {
        let out = Command::new("curl").args(["-sf", "-H", &format!("Authorization: {}", Nginx::AUTHORIZATION), url]).output().unwrap();
        assert!(out.status.success(), "GET {url}");
        out.stdout
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM lets the master stop its workers; SIGKILL would orphan them.
        sigterm(self.child.id());
        let _ = self.child.wait();
    }
}

pub fn files_under(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.push(format!("{}/", e.path().display()));
            out.extend(files_under(&e.path()));
        } else {
            out.push(e.path().display().to_string());
        }
    }
    out
}

/// A tmpfs mounted over a directory for a test's life (as root only).
pub struct SpoolDisk(std::path::PathBuf);

impl SpoolDisk {
    pub fn mount(at: &std::path::Path, mib: u32) -> Option<SpoolDisk> {
        std::fs::create_dir_all(at).unwrap();
        let size = format!("size={mib}m");
        let mounted =
            Command::new("mount").args(["-t", "tmpfs", "-o", &size, "tmpfs"]).arg(at).stderr(std::process::Stdio::null()).status();
        mounted.is_ok_and(|s| s.success()).then(|| SpoolDisk(at.to_path_buf()))
    }

    /// Fills the disk until `free` bytes are left, with a file whose path it returns.
    pub fn fill_to(&self, free: u64) -> std::path::PathBuf {
        let avail = proto::disk::free_bytes(&self.0).unwrap();
        let ballast = self.0.join("ballast");
        std::fs::write(&ballast, vec![0u8; avail.checked_sub(free).expect("a disk big enough") as usize]).unwrap();
        ballast
    }
}

impl Drop for SpoolDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
