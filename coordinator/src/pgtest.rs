//! A throwaway PostgreSQL for tests: one cluster per test binary, one fresh database
//! per test.
//!
//! `DRAKE_TEST_DATABASE_URL` (a `postgres://` URL to a server the tests may create
//! databases on) is used when set. Otherwise the newest `/usr/lib/postgresql/*/bin`
//! makes a cluster in a temporary directory, listening only on a Unix socket there.
//! `initdb` refuses to run as root, so as root the cluster belongs to the `postgres`
//! user. A watchdog shell stops the server and removes its directory once the test
//! process is gone, however it ends.
//!
//! Without PostgreSQL the PostgreSQL half of a suite is skipped with a message, but
//! never when `CI=true`: CI always runs it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The server the tests use: a URL to its maintenance database, with `{db}` where
/// a database name goes.
struct Server {
    template: String,
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
static NEXT_DB: AtomicU64 = AtomicU64::new(0);

/// A URL to a new, empty database, or `None` (after saying why) when this machine
/// has no PostgreSQL and this is not CI.
pub async fn database() -> Option<String> {
    let server = SERVER.get_or_init(|| std::thread::spawn(start).join().unwrap_or_else(|_| Err("starting PostgreSQL panicked".into())));
    let server = match server {
        Ok(s) => s,
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => panic!("CI must run the PostgreSQL tests: {why}"),
        Err(why) => {
            eprintln!("skipping the PostgreSQL half of this test: {why}");
            return None;
        }
    };
    let name = format!("t{}_{}", std::process::id(), NEXT_DB.fetch_add(1, Ordering::Relaxed));
    let admin = server.template.replace("{db}", "postgres");
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await.expect("connecting to the test PostgreSQL");
    sqlx::Executor::execute(&mut conn, sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).await.expect("creating a test database");
    Some(server.template.replace("{db}", &name))
}

fn start() -> Result<Server, String> {
    if let Ok(url) = std::env::var("DRAKE_TEST_DATABASE_URL") {
        let mut u = url::Url::parse(&url).map_err(|e| format!("DRAKE_TEST_DATABASE_URL: {e}"))?;
        u.set_path("/{db}");
        return Ok(Server { template: u.to_string().replace("%7Bdb%7D", "{db}") });
    }
    let bin = newest_bin().ok_or("no PostgreSQL found under /usr/lib/postgresql (scripts/setup.sh installs it)")?;
    let root = unsafe { libc::geteuid() } == 0;
    let dir = std::env::temp_dir().join(format!("drake-pg-{}-{}", std::process::id(), crate::state::system_ms()));
    std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let data = dir.join("data");
    if root {
        let ok = Command::new("chown").arg("postgres:postgres").arg(&dir).status().map_err(|e| e.to_string())?.success();
        if !ok {
            return Err("chown to the postgres user failed (is the postgresql package installed?)".into());
        }
    }
    let initdb = format!(
        "{} -D {} -A trust -U postgres --no-sync -E UTF8 >{}/initdb.log 2>&1",
        bin.join("initdb").display(),
        data.display(),
        dir.display()
    );
    if !as_owner(root, &initdb).status().map_err(|e| e.to_string())?.success() {
        let log = std::fs::read_to_string(dir.join("initdb.log")).unwrap_or_default();
        return Err(format!("initdb failed: {log}"));
    }
    // The server listens on a socket in `dir` only. The watchdog loop outlives the test
    // process by at most a second, then stops the server and removes its files.
    let script = format!(
        "{postgres} -D {data} -k {dir} -c listen_addresses= -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
           -c max_connections=400 -c shared_buffers=64MB >{dir}/server.log 2>&1 &
         pg=$!
         while [ -d /proc/{parent} ] && kill -0 $pg 2>/dev/null; do sleep 1; done
         kill -QUIT $pg 2>/dev/null; wait $pg; rm -rf {dir}",
        postgres = bin.join("postgres").display(),
        data = data.display(),
        dir = dir.display(),
        parent = std::process::id(),
    );
    as_owner(root, &script).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let ready = || Command::new(bin.join("pg_isready")).arg("-q").arg("-h").arg(&dir).status().is_ok_and(|s| s.success());
    while !ready() {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
            return Err(format!("PostgreSQL did not start: {log}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Server { template: format!("postgres://postgres@localhost/{{db}}?host={}", dir.display()) })
}

/// A shell running `script` as the `postgres` user when we are root, else as us.
fn as_owner(root: bool, script: &str) -> Command {
    let mut cmd = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", "sh", "-c", script]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    };
    cmd.current_dir("/");
    cmd
}

fn newest_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| Path::new(&bin.join("initdb")).exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}
