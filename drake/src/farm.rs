//! CLI glue for the farm commands: `coordinator`, `worker`, `up` and `submit`.

use proto::exit;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term.recv() => {} }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap_or_else(|e| {
        proto::log!("drake: cannot start the async runtime: {e}");
        std::process::exit(exit::INTERNAL)
    })
}

fn drake_exe() -> PathBuf {
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("drake"))
}

async fn bind(listen: &str) -> Result<tokio::net::TcpListener, i32> {
    tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        proto::log!("drake: cannot listen on {listen}: {e}");
        exit::INTERNAL
    })
}

/// Operator settings shared by `coordinator` and `up`.
pub struct FarmSettings {
    pub database: Option<String>,
    pub max_upload_bytes: u64,
    pub lease_ttl_seconds: u64,
    pub storage_url: Option<String>,
    pub storage_authorization: Option<String>,
    pub allow_network: Vec<String>,
    pub min_free_disk_bytes: u64,
    pub capable_worker_wait_seconds: u64,
    pub store_stall_seconds: u64,
    pub engine_stall_seconds: u64,
    pub upload_expiry_seconds: u64,
    pub max_spool_bytes: u64,
    pub cors_origins: Vec<String>,
}

fn config(data: PathBuf, s: &FarmSettings) -> coordinator::server::Config {
    coordinator::server::Config {
        database: s.database.clone(),
        data_dir: data,
        drake_exe: drake_exe(),
        limits: coordinator::state::Limits {
            max_upload_bytes: s.max_upload_bytes,
            min_free_disk_bytes: s.min_free_disk_bytes,
            upload_expiry_ms: s.upload_expiry_seconds.clamp(1, 30 * 86400) as i64 * 1000,
            max_spool_bytes: s.max_spool_bytes,
            store_stall_seconds: s.store_stall_seconds,
            engine_stall_seconds: s.engine_stall_seconds,
            ..Default::default()
        },
        queue: coordinator::queue::QueueConfig {
            lease_ttl_ms: s.lease_ttl_seconds.clamp(3, 3600) as i64 * 1000,
            capable_worker_wait_ms: s.capable_worker_wait_seconds.clamp(1, 30 * 86400) as i64 * 1000,
            ..Default::default()
        },
        storage: s
            .storage_url
            .clone()
            .map(|url| coordinator::server::ExternalStorage { url, authorization: s.storage_authorization.clone() }),
        allow_network: s.allow_network.clone(),
        cors_origins: s.cors_origins.clone(),
        ui: Some(dashboard::router),
    }
}

pub fn coordinator(data: PathBuf, listen: &str, settings: FarmSettings) -> i32 {
    runtime().block_on(async {
        let listener = match bind(listen).await {
            Ok(l) => l,
            Err(code) => return code,
        };
        match coordinator::server::run(config(data, &settings), listener, shutdown_signal()).await {
            Ok(()) => 0,
            Err(e) => {
                proto::log!("drake: coordinator: {e}");
                exit::INTERNAL
            }
        }
    })
}

pub struct WorkerArgs {
    pub coordinators: Vec<String>,
    pub token: String,
    pub slots: u32,
    pub tags: Vec<String>,
    pub scratch: PathBuf,
    pub min_free_scratch_bytes: u64,
    pub name: Option<String>,
}

pub fn worker(args: WorkerArgs) -> i32 {
    if let Err(e) = worker::init() {
        proto::log!("drake: {e}");
        return e.exit_code();
    }
    let name = args.name.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "worker".into());
        format!("{host}-{}", std::process::id())
    });
    let cfg = worker::node::NodeConfig {
        coordinators: args.coordinators.iter().map(|c| c.trim_end_matches('/').to_string()).collect(),
        token: args.token,
        name,
        slots: args.slots.clamp(1, 64),
        tags: args.tags,
        scratch: args.scratch,
        min_free_scratch_bytes: args.min_free_scratch_bytes,
        drake_exe: drake_exe(),
    };
    match runtime().block_on(worker::node::run(cfg, shutdown_signal())) {
        Ok(()) => 0,
        Err(e) => {
            proto::log!("drake: worker: {e}");
            exit::INTERNAL
        }
    }
}

/// `drake up`: a coordinator plus `workers` local worker processes joined to it.
pub fn up(data: PathBuf, listen: &str, workers: u32, settings: FarmSettings) -> i32 {
    runtime().block_on(async {
        let listener = match bind(listen).await {
            Ok(l) => l,
            Err(code) => return code,
        };
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => {
                proto::log!("drake: {e}");
                return exit::INTERNAL;
            }
        };
        let prepared = match coordinator::server::prepare(config(data.clone(), &settings)).await {
            Ok(p) => p,
            Err(e) => {
                proto::log!("drake: coordinator: {e}");
                return exit::INTERNAL;
            }
        };
        let url = format!("http://{addr}");
        let _ = writeln!(std::io::stdout(), "drake farm up at {url}");
        match prepared.announce(&data, &url, true) {
            Ok(lines) => {
                for line in lines {
                    let _ = writeln!(std::io::stdout(), "{line}");
                }
            }
            Err(e) => {
                proto::log!("drake: writing the login link: {e}");
                return exit::INTERNAL;
            }
        }
        let _ = writeln!(std::io::stdout(), "submit with: drake submit FILE --coordinator {url} --wait");

        // Local workers join with a token minted for them, like any other machine.
        let join = coordinator::auth::generate(coordinator::auth::Role::Join);
        let now = coordinator::state::now_ms();
        if let Err(e) = prepared
            .state
            .queue
            .add_token(&join, coordinator::auth::Role::Join, None, Some(workers as i64), Some(now + 3_600_000), now)
            .await
        {
            proto::log!("drake: minting a join token: {e}");
            return exit::INTERNAL;
        }
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(coordinator::server::serve(prepared, listener, async move {
            let _ = stop_rx.await;
        }));
        let mut children = Vec::new();
        for i in 0..workers {
            let scratch = data.join("scratch").join(format!("worker-{i}"));
            let mut cmd = tokio::process::Command::new(drake_exe());
            cmd.args(["worker", "--coordinator", &url, "--slots", "1", "--name", &format!("local-{i}")])
                .arg("--scratch")
                .arg(&scratch)
                .env("DRAKE_TOKEN", &join)
                .kill_on_drop(true);
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    Ok(())
                });
            }
            match cmd.spawn() {
                Ok(c) => children.push(c),
                Err(e) => proto::log!("drake: starting local worker {i}: {e}"),
            }
        }
        shutdown_signal().await;
        proto::log!("drake: stopping: workers finish their tasks first");
        for c in &children {
            if let Some(pid) = c.id() {
                // SAFETY: plain signal to our own child.
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            }
        }
        for mut c in children {
            let _ = c.wait().await;
        }
        let _ = stop_tx.send(());
        let _ = server.await;
        0
    })
}

/// `drake submit`'s arguments.
#[derive(clap::Args)]
pub struct SubmitArgs {
    pub input: String,
    #[arg(long, default_value = "web")]
    pub profile: String,
    #[arg(long, default_value = "http://127.0.0.1:8600")]
    pub coordinator: String,
    /// Defaults to DRAKE_TOKEN, then ./drake-data/admin-token.
    #[arg(long)]
    pub token: Option<String>,
    #[arg(long)]
    pub wait: bool,
    #[arg(long, default_value_t = 0)]
    pub priority: i64,
    #[arg(long)]
    pub callback_url: Option<String>,
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// A worker tag the job's tasks need (repeatable, or comma-separated): only
    /// workers started with every one of them (`--tags`) take them.
    #[arg(long = "requires-tag", value_delimiter = ',')]
    pub requires_tags: Vec<String>,
    /// A caption file for the job, `LANG=FILE.srt|.vtt` or `LANG=URL` (repeatable).
    #[arg(long = "caption")]
    pub captions: Vec<String>,
    /// Files larger than this many bytes are sent by tus, in chunks, resumably.
    #[arg(long, default_value_t = 64 << 20)]
    pub tus_threshold: u64,
    /// Bytes per tus PATCH, each sent with its sha256.
    #[arg(long, default_value_t = 32 << 20, value_parser = clap::value_parser!(u64).range(1..=1 << 30))]
    pub chunk_size: u64,
    /// Attempts after a failed request, with backoff (1 s, 2 s, 4 s ... 30 s), before giving up.
    #[arg(long, default_value_t = 6)]
    pub retries: u32,
    /// Continue this file's interrupted upload from the coordinator's offset
    /// (running the same command again does too; this insists on it).
    #[arg(long)]
    pub resume: bool,
}

/// The token for `submit`: the flag, `DRAKE_TOKEN`, or a local farm's admin token.
fn submit_token(flag: Option<String>) -> Option<String> {
    flag.or_else(|| std::env::var("DRAKE_TOKEN").ok())
        .or_else(|| std::fs::read_to_string(Path::new("drake-data").join("admin-token")).ok().map(|t| t.trim().to_string()))
}

pub fn submit(args: SubmitArgs) -> i32 {
    let Some(token) = submit_token(args.token.clone()) else {
        proto::log!("drake: no token: pass --token, set DRAKE_TOKEN, or run from the directory of `drake up`");
        return 2;
    };
    runtime().block_on(async move {
        match submit_async(&args, &token).await {
            Ok(code) => code,
            Err(e) if e.starts_with(INTERRUPTED) => {
                proto::log!("drake: submit: {e}");
                crate::upload::INTERRUPTED
            }
            Err(e) => {
                proto::log!("drake: submit: {e}");
                exit::INTERNAL
            }
        }
    })
}

async fn submit_async(args: &SubmitArgs, token: &str) -> Result<i32, String> {
    let base = args.coordinator.trim_end_matches('/');
    let http = reqwest::Client::new();
    let url = format!("{base}/api/v1/jobs");
    let is_url = args.input.starts_with("http://") || args.input.starts_with("https://");
    let mut captions = Vec::new();
    for c in &args.captions {
        let (lang, at) = c.split_once('=').ok_or_else(|| format!("--caption {c}: give LANG=FILE or LANG=URL"))?;
        captions.push((lang.to_string(), at.to_string(), at.starts_with("http://") || at.starts_with("https://")));
    }
    if is_url && args.resume {
        return Err("--resume continues a file's upload; a URL source has none".into());
    }
    if !is_url && (args.resume || by_tus(args)?) {
        let id = submit_by_tus(args, token, &http, base, &captions).await?;
        return announce_and_wait(args, &http, base, token, &id).await;
    }
    let req = if is_url {
        let mut list = Vec::new();
        for (language, at, by_url) in &captions {
            if !by_url {
                return Err(format!("--caption {language}={at}: a URL source takes caption URLs only"));
            }
            list.push(serde_json::json!({"url": at, "language": language}));
        }
        let body = serde_json::json!({"source_url": args.input, "profile": args.profile, "priority": args.priority, "callback_url": args.callback_url, "idempotency_key": args.idempotency_key, "requires_tags": args.requires_tags, "captions": list});
        http.post(&url).json(&body)
    } else {
        let file = tokio::fs::File::open(&args.input).await.map_err(|e| format!("{}: {e}", args.input))?;
        let len = file.metadata().await.map_err(|e| e.to_string())?.len();
        let name = Path::new(&args.input).file_name().map_or("upload".into(), |n| n.to_string_lossy().into_owned());
        let part = reqwest::multipart::Part::stream_with_length(
            reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024)),
            len,
        )
        .file_name(name);
        let mut form = reqwest::multipart::Form::new()
            .text("profile", args.profile.clone())
            .text("priority", args.priority.to_string())
            .part("file", part);
        if let Some(cb) = &args.callback_url {
            form = form.text("callback_url", cb.clone());
        }
        if let Some(k) = &args.idempotency_key {
            form = form.text("idempotency_key", k.clone());
        }
        if !args.requires_tags.is_empty() {
            form = form.text("requires_tags", args.requires_tags.join(","));
        }
        for (language, at, by_url) in captions {
            form = if by_url {
                form.text(format!("caption_url.{language}"), at)
            } else {
                let bytes = tokio::fs::read(&at).await.map_err(|e| format!("--caption {language}={at}: {e}"))?;
                let name = Path::new(&at).file_name().map_or("captions".into(), |n| n.to_string_lossy().into_owned());
                form.part(format!("caption.{language}"), reqwest::multipart::Part::bytes(bytes).file_name(name))
            };
        }
        http.post(&url).multipart(form)
    };
    let resp = req.bearer_auth(token).send().await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let job: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("HTTP {status}: {}", job["message"].as_str().unwrap_or_default()));
    }
    let id = job["id"].as_str().unwrap_or_default().to_string();
    announce_and_wait(args, &http, base, token, &id).await
}

/// Says which job was made and, with `--wait`, follows it to its end.
async fn announce_and_wait(args: &SubmitArgs, http: &reqwest::Client, base: &str, token: &str, id: &str) -> Result<i32, String> {
    let _ = writeln!(std::io::stdout(), "job {id}");
    if !args.wait {
        return Ok(0);
    }
    let job = watch(http, base, token, id).await?;
    match job["state"].as_str() {
        Some("succeeded") => {
            let _ = writeln!(
                std::io::stdout(),
                "succeeded: master playlist {base}{}",
                job["outputs"]["master_playlist"].as_str().unwrap_or_default()
            );
            let _ = writeln!(std::io::stdout(), "manifest {base}{}", job["outputs"]["manifest"].as_str().unwrap_or_default());
            Ok(0)
        }
        state => {
            proto::log!("drake: job {id} {}: {}", state.unwrap_or("ended"), job["error"].as_str().unwrap_or("no reason given"));
            Ok(1)
        }
    }
}

/// How an error of an interrupted tus upload starts: `submit` exits with
/// [`crate::upload::INTERRUPTED`] so a script knows a rerun continues it.
const INTERRUPTED: &str = "the upload was interrupted";

fn by_tus(args: &SubmitArgs) -> Result<bool, String> {
    let len = std::fs::metadata(&args.input).map_err(|e| format!("{}: {e}", args.input))?.len();
    Ok(len > args.tus_threshold)
}

/// Sends a local file by tus (resumable) and returns the job it made.
async fn submit_by_tus(
    args: &SubmitArgs,
    token: &str,
    http: &reqwest::Client,
    base: &str,
    captions: &[(String, String, bool)],
) -> Result<String, String> {
    let file = Path::new(&args.input);
    let mut metadata = vec![("profile".to_string(), args.profile.clone()), ("priority".to_string(), args.priority.to_string())];
    if let Some(name) = file.file_name() {
        metadata.push(("filename".into(), name.to_string_lossy().into_owned()));
    }
    if let Some(cb) = &args.callback_url {
        metadata.push(("callback_url".into(), cb.clone()));
    }
    if let Some(k) = &args.idempotency_key {
        metadata.push(("idempotency_key".into(), k.clone()));
    }
    if !args.requires_tags.is_empty() {
        metadata.push(("requires_tags".into(), args.requires_tags.join(",")));
    }
    for (language, at, by_url) in captions {
        if !by_url {
            return Err(format!(
                "--caption {language}={at}: a resumable (tus) upload takes caption URLs only; \
                 give a URL, or raise --tus-threshold above the file's size to send both in one request"
            ));
        }
        metadata.push((format!("caption_url.{language}"), at.clone()));
    }
    let tus =
        crate::upload::Tus { http, base, token, file, metadata, chunk_size: args.chunk_size, retries: args.retries, resume: args.resume };
    tus.run().await.map_err(|f| match f {
        crate::upload::Failure::Interrupted(why) => {
            format!("{INTERRUPTED} ({why}); run the same command again, or add --resume, to continue where the coordinator stopped")
        }
        crate::upload::Failure::Refused(why) => why,
    })
}

/// Shows one progress bar per task until the job ends; returns the final job. The
/// job is fetched again whenever the coordinator's event stream mentions it (so the
/// end is seen at once), and every 2 s in case the stream is unavailable.
async fn watch(http: &reqwest::Client, base: &str, token: &str, id: &str) -> Result<serde_json::Value, String> {
    use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:>12.bold} [{elapsed_precise}] {wide_bar:.cyan/blue} {percent:>3}% {msg}")
        .map_err(|e| e.to_string())?
        .progress_chars("=> ");
    let mut by_task: std::collections::HashMap<String, ProgressBar> = Default::default();
    let changed = std::sync::Arc::new(tokio::sync::Notify::new());
    let events =
        tokio::spawn(follow_events(http.clone(), format!("{base}/api/v1/events"), token.to_string(), id.to_string(), changed.clone()));
    let result = loop {
        let resp = http.get(format!("{base}/api/v1/jobs/{id}")).bearer_auth(token).send().await.map_err(|e| e.to_string())?;
        let job: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
        for t in job["tasks"].as_array().into_iter().flatten() {
            let tid = t["id"].as_str().unwrap_or_default().to_string();
            let bar = by_task.entry(tid).or_insert_with(|| {
                let label = t["rendition"].as_str().unwrap_or("thumbnails").to_string();
                bars.add(ProgressBar::new(1000).with_style(style.clone()).with_prefix(label))
            });
            bar.set_position((t["progress"].as_f64().unwrap_or(0.0) * 1000.0) as u64);
            bar.set_message(t["state"].as_str().unwrap_or_default().to_string());
        }
        if matches!(job["state"].as_str(), Some("succeeded" | "failed" | "canceled")) {
            for b in by_task.values() {
                b.finish();
            }
            break Ok(job);
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), changed.notified()).await;
    };
    events.abort();
    result
}

/// Follows `/api/v1/events` and wakes `changed` on each event about job `id`.
/// Gives up quietly if the stream cannot be had; the caller also polls.
async fn follow_events(http: reqwest::Client, url: String, token: String, id: String, changed: std::sync::Arc<tokio::sync::Notify>) {
    let Ok(mut resp) = http.get(url).bearer_auth(token).send().await else { return };
    if !resp.status().is_success() {
        return;
    }
    let needle = format!("\"job_id\":\"{id}\"");
    let mut pending = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        pending.extend_from_slice(&chunk);
        // Events end at a blank line; look at complete ones only, and keep the buffer bounded.
        while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = pending.drain(..end + 2).collect();
            if String::from_utf8_lossy(&event).contains(&needle) {
                changed.notify_one();
            }
        }
        if pending.len() > 1 << 20 {
            pending.clear();
        }
    }
}

/// `drake db copy`: a farm's state into a new database.
pub fn db_copy(from: &str, to: &str) -> i32 {
    let parse = |flag: &str, url: &str| {
        coordinator::queue::DatabaseUrl::parse(url).map_err(|e| {
            proto::log!("drake: db copy: {flag}: {e}");
            2
        })
    };
    let (from, to) = match (parse("--from", from), parse("--to", to)) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(code), _) | (_, Err(code)) => return code,
    };
    runtime().block_on(async {
        match coordinator::dbcopy::copy(&from, &to).await {
            Ok(copied) => {
                let summary: Vec<String> = copied.iter().map(|(t, n)| format!("{n} {t}")).collect();
                let _ = writeln!(std::io::stdout(), "copied {} into {}: {}", from.redacted(), to.redacted(), summary.join(", "));
                0
            }
            Err(e) => {
                proto::log!("drake: db copy: {e}");
                exit::INTERNAL
            }
        }
    })
}
