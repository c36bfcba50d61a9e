//! `drake coordinator`: opens the queue and storage in the data directory, makes
//! sure an admin token and a webhook secret exist, serves the API on a listener the
//! caller bound, and runs the background chores until shutdown.

use crate::api;
use crate::auth::{self, Role};
use crate::chores;
use crate::queue::{Backend, DatabaseUrl, Queue, QueueConfig};
use crate::state::{AppState, Limits, now_ms};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct Config {
    /// `--database`: a path, `sqlite://PATH` or `postgres://...`; `None` is
    /// `DATA/drake.db`.
    pub database: Option<String>,
    pub data_dir: PathBuf,
    pub drake_exe: PathBuf,
    pub limits: Limits,
    pub queue: QueueConfig,
    /// External WebDAV storage; `None` serves the data dir at `/dav/`.
    pub storage: Option<ExternalStorage>,
    /// Non-public networks that caller-named URLs may reach (`--allow-network`).
    pub allow_network: Vec<String>,
    /// Web origins whose pages may call the API from a browser (`--cors-origin`).
    pub cors_origins: Vec<String>,
    /// More routes served beside the API (the dashboard, which builds on this crate).
    pub ui: Option<fn(AppState) -> axum::Router>,
}

/// An external WebDAV server for sources and outputs, e.g. nginx with its dav module.
pub struct ExternalStorage {
    pub url: String,
    /// The `Authorization` header value it expects, e.g. `Basic ...`.
    pub authorization: Option<String>,
}

/// A prepared coordinator: state opened, secrets in place, not yet serving.
pub struct Prepared {
    pub state: AppState,
    pub admin_token: String,
    /// True when the admin token was generated now (print it once).
    pub admin_token_generated: bool,
    /// apalis's own database (see `background`).
    pub chores_pool: crate::background::ChorePool,
    /// A one-time dashboard login token for `/login?token=...`, minted at start.
    pub login_token: String,
    ui: Option<fn(AppState) -> axum::Router>,
}

impl Prepared {
    /// The lines that tell an operator how to sign in. Secrets are printed only to a
    /// terminal; where stdout goes to a log collector, the admin token's file and a
    /// 0600 file holding the login link are named instead.
    /// `always_token`: name the admin token even when it was not generated now.
    pub fn announce(&self, data_dir: &Path, base_url: &str, always_token: bool) -> std::io::Result<Vec<String>> {
        use std::io::IsTerminal;
        let terminal = std::io::stdout().is_terminal();
        let mut lines = Vec::new();
        let token_file = data_dir.join("admin-token");
        if self.admin_token_generated || always_token {
            lines.push(if terminal {
                format!("admin token (kept in {}): {}", token_file.display(), self.admin_token)
            } else {
                format!("admin token: kept in {} (mode 0600)", token_file.display())
            });
        }
        if self.ui.is_some() {
            let link = self.login_url(base_url);
            if terminal {
                lines.push(format!("dashboard (one-time login link): {link}"));
            } else {
                let file = data_dir.join("login-link");
                write_secret(&file, &link)?;
                lines.push(format!("dashboard (one-time login link): kept in {} (mode 0600)", file.display()));
            }
        }
        Ok(lines)
    }

    /// The one-time dashboard login URL for a coordinator at `base_url`.
    pub fn login_url(&self, base_url: &str) -> String {
        format!("{base_url}/login?token={}", self.login_token)
    }
}

/// A secret kept in a data-dir file (mode 0600): read it, or create it with `make`.
/// A file that exists but is unreadable or holds no valid secret (`valid`) is an
/// error: a secret never silently weakens (an empty file is not an empty token).
fn kept_secret(path: &Path, make: impl FnOnce() -> String, valid: fn(&str) -> Result<(), String>) -> std::io::Result<(String, bool)> {
    match std::fs::read_to_string(path) {
        Ok(t) => {
            let t = t.trim().to_string();
            valid(&t).map_err(|why| {
                std::io::Error::other(format!("{}: {why}; fix it, or delete it to have a new one generated", path.display()))
            })?;
            return Ok((t, false));
        }
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(std::io::Error::other(format!("{}: {e}", path.display())));
        }
        Err(_) => {}
    }
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let secret = make();
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(secret.as_bytes())?;
    Ok((secret, true))
}

/// A secret from shared configuration: the variable `NAME`, or the file named by
/// `NAME_FILE` (a Docker or Kubernetes secret). `None` when neither is set.
fn configured_secret(name: &str, valid: fn(&str) -> Result<(), String>) -> std::io::Result<Option<String>> {
    let (value, from) = if let Ok(v) = std::env::var(name) {
        (v, name.to_string())
    } else if let Ok(path) = std::env::var(format!("{name}_FILE")) {
        let v = std::fs::read_to_string(&path).map_err(|e| std::io::Error::other(format!("{name}_FILE={path}: {e}")))?;
        (v, format!("{name}_FILE={path}"))
    } else {
        return Ok(None);
    };
    let value = value.trim().to_string();
    valid(&value).map_err(|why| std::io::Error::other(format!("{from}: {why}")))?;
    Ok(Some(value))
}

/// The admin token: `DRAKE_ADMIN_TOKEN` (or the file `DRAKE_ADMIN_TOKEN_FILE`
/// names) if set, else the one kept in the data dir, else a new one written there.
/// Returns it and whether it was generated. Every coordinator registers its admin
/// token in the shared database, so each one accepts all of them.
pub fn admin_token(data_dir: &Path) -> std::io::Result<(String, bool)> {
    if let Some(t) = configured_secret("DRAKE_ADMIN_TOKEN", valid_token)? {
        return Ok((t, false));
    }
    kept_secret(&data_dir.join("admin-token"), || auth::generate(Role::Admin), valid_token)
}

/// The farm's webhook signing secret, one for every coordinator: the database's
/// setting. The first coordinator to start stores it, from `DRAKE_WEBHOOK_SECRET`
/// (or `DRAKE_WEBHOOK_SECRET_FILE`), else from its data dir's `webhook-secret`
/// (a farm from before the setting), else a new one. A configured secret that
/// differs from the stored one is an error: receivers verify with one secret. The
/// data dir keeps a copy (mode 0600) for the operator to give receivers.
async fn webhook_secret(queue: &Queue, data_dir: &Path) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    const KEY: &str = "webhook_secret";
    let configured = configured_secret("DRAKE_WEBHOOK_SECRET", valid_webhook_secret)?;
    let file = data_dir.join("webhook-secret");
    let stored = match queue.setting(KEY).await? {
        Some(s) => s,
        None => {
            let candidate = match &configured {
                Some(c) => c.clone(),
                None => kept_secret(&file, chores::new_webhook_secret, valid_webhook_secret)?.0,
            };
            queue.setting_or_insert(KEY, &candidate).await?
        }
    };
    if configured.as_ref().is_some_and(|c| *c != stored) {
        return Err("DRAKE_WEBHOOK_SECRET differs from the farm's webhook secret stored in its database; \
                    receivers verify one secret, so give every coordinator the same one"
            .into());
    }
    if std::fs::read_to_string(&file).map(|f| f.trim() != stored).unwrap_or(true) {
        write_secret(&file, &stored)?;
    }
    Ok(stored)
}

/// An admin token must be long and plain enough to be a secret and a header value.
fn valid_token(t: &str) -> Result<(), String> {
    if t.len() < 24 || t.len() > 256 || !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("an admin token must be 24 to 256 printable characters without spaces".into());
    }
    Ok(())
}

/// A Standard Webhooks secret: `whsec_` and base64 of at least 16 random bytes.
fn valid_webhook_secret(s: &str) -> Result<(), String> {
    use base64::Engine as _;
    let key = s.strip_prefix("whsec_").and_then(|k| base64::engine::general_purpose::STANDARD.decode(k).ok());
    match key {
        Some(k) if k.len() >= 16 => Ok(()),
        _ => Err("a webhook secret must be whsec_ followed by base64 of at least 16 bytes".into()),
    }
}

/// At start, no upload is in flight: every spooled upload is a leftover of a
/// connection that died with the last process. A URL source's partial copy is
/// kept while its job still owes the probe that resumes it.
async fn remove_partial_uploads(spool: &Path, queue: &Queue) {
    let Ok(entries) = std::fs::read_dir(spool) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let resumable = match name.strip_prefix("ingest-").and_then(|n| n.strip_suffix(".part")) {
            Some(job) => queue.owes_probe(job).await.unwrap_or(false),
            None => false,
        };
        if !resumable {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Writes a secret to a file only its owner can read, replacing what was there.
pub fn write_secret(path: &Path, secret: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    f.write_all(secret.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

pub async fn prepare(cfg: Config) -> Result<Prepared, Box<dyn std::error::Error + Send + Sync>> {
    let root = cfg.data_dir.join("storage");
    std::fs::create_dir_all(root.join("jobs"))?;
    let dav = crate::dav::handler(&root);
    let storage = match &cfg.storage {
        Some(ext) => crate::storage::Store::remote(
            root.clone(),
            &ext.url,
            ext.authorization.clone(),
            std::time::Duration::from_secs(cfg.limits.store_stall_seconds),
        )?,
        None => crate::storage::Store::local(root.clone()),
    };
    let database = match &cfg.database {
        Some(url) => DatabaseUrl::parse(url).map_err(|e| format!("--database: {e}"))?,
        None => DatabaseUrl::Sqlite(cfg.data_dir.join("drake.db")),
    };
    let queue = Queue::connect(&database, cfg.queue).await.map_err(|e| format!("opening {}: {e}", database.redacted()))?;
    if queue.backend() == Backend::Postgres && cfg.storage.is_none() {
        proto::log!(
            "coordinator: warning: the state is in PostgreSQL, but sources and outputs are in this machine's {}: \
             other coordinators cannot share them; give every coordinator the same --storage-url",
            root.display()
        );
    }
    remove_partial_uploads(&storage.spool_dir(), &queue).await;
    let (token, generated) = admin_token(&cfg.data_dir)?;
    queue.add_token(&token, Role::Admin, Some("admin"), None, None, now_ms()).await?;
    let webhook_secret = webhook_secret(&queue, &cfg.data_dir).await?;
    let (events, _) = tokio::sync::broadcast::channel(1024);
    let work_ready = Arc::new(tokio::sync::Notify::new());
    let instance = format!("coordinator-{}", uuid::Uuid::now_v7().simple());
    let relay = match &database {
        DatabaseUrl::Postgres(url) => crate::relay::Relay::postgres(url, &instance, events.clone(), work_ready.clone()),
        DatabaseUrl::Sqlite(_) => crate::relay::Relay::local(),
    };
    let (chores, chores_pool) = match &database {
        DatabaseUrl::Postgres(url) => crate::background::Chores::open_postgres(url).await?,
        DatabaseUrl::Sqlite(_) => crate::background::Chores::open(&cfg.data_dir.join("chores.db")).await?,
    };
    let state = AppState {
        queue,
        drake_exe: Arc::new(cfg.drake_exe),
        dav,
        storage,
        events,
        work_ready,
        limits: cfg.limits,
        webhook_secret: Arc::new(webhook_secret),
        chores,
        chores_running: Default::default(),
        gate: Default::default(),
        network: Arc::new(crate::fetch::NetPolicy::parse(&cfg.allow_network)?),
        instance: Arc::new(instance),
        relay,
        cors: Arc::new(crate::cors::Origins::parse(&cfg.cors_origins)?),
    };
    // A restart revokes every unused login link; only the one made now works. With
    // several coordinators on one database, the others' links stay valid.
    if state.queue.backend() == Backend::Sqlite {
        state.queue.revoke_login_links().await?;
    }
    let login_token = state.queue.create_login_link(now_ms()).await?;
    Ok(Prepared { state, admin_token: token, admin_token_generated: generated, chores_pool, login_token, ui: cfg.ui })
}

/// Serves until `shutdown` resolves; background chores stop with it.
pub async fn serve(
    p: Prepared,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Whatever a coordinator that stopped here still owed, before serving anyone.
    crate::lifecycle::reconcile(&p.state, true).await;
    let (queue, instance) = (p.state.queue.clone(), p.state.instance.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let background = tokio::spawn(crate::background::run(p.state.clone(), p.chores_pool.clone(), async move {
        let _ = stopped.await;
    }));
    let app = match p.ui {
        Some(ui) => api::router(p.state.clone()).merge(ui(p.state)),
        None => api::router(p.state),
    };
    // Every route: a body left unread is read on for a moment, so an answer given
    // early reaches a client that is still sending.
    let app = app.layer(axum::middleware::from_fn(crate::linger::layer));
    // Event streams (browsers, `curl -N`) never end on their own: after the shutdown
    // signal, in-flight requests get a grace period, then the server stops anyway.
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(true);
    });
    let (mut graceful, mut deadline) = (rx.clone(), rx);
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = graceful.wait_for(|stop| *stop).await;
    });
    let result = tokio::select! {
        r = server.into_future() => r,
        _ = async move {
            let _ = deadline.wait_for(|stop| *stop).await;
            tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        } => Ok(()),
    };
    let _ = stop.send(());
    let _ = background.await;
    if let Err(e) = queue.coordinator_stopped(&instance).await {
        proto::log!("coordinator: recording this coordinator's stop: {e}");
    }
    result
}

pub async fn run(
    cfg: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let data_dir = cfg.data_dir.clone();
    let p = prepare(cfg).await?;
    let addr = listener.local_addr()?;
    let mut lines = vec![format!("drake coordinator listening on http://{addr}")];
    lines.extend(p.announce(&data_dir, &format!("http://{addr}"), false)?);
    for line in lines {
        let _ = writeln!(std::io::stdout(), "{line}");
    }
    serve(p, listener, shutdown).await?;
    Ok(())
}
