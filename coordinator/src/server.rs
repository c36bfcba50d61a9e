//! `drake coordinator`: opens the queue in the data directory, makes sure an admin
//! token exists, serves the API on a listener the caller bound, and runs the lease
//! reaper until shutdown.

use crate::api::{self, AppState, now_ms};
use crate::auth::{self, Role};
use crate::queue::{Queue, QueueConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub struct Config {
    pub data_dir: PathBuf,
    pub drake_exe: PathBuf,
}

/// The admin token: `DRAKE_ADMIN_TOKEN` if set, else the one kept in the data dir,
/// else a new one written there (mode 0600). Returns it and whether it was generated.
pub fn admin_token(data_dir: &Path) -> std::io::Result<(String, bool)> {
    if let Ok(t) = std::env::var("DRAKE_ADMIN_TOKEN") {
        if !t.trim().is_empty() {
            return Ok((t.trim().to_string(), false));
        }
    }
    let path = data_dir.join("admin-token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        return Ok((t.trim().to_string(), false));
    }
    let token = auth::generate(Role::Admin);
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    f.write_all(token.as_bytes())?;
    Ok((token, true))
}

pub async fn run(
    cfg: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    std::fs::create_dir_all(&cfg.data_dir)?;
    let queue = Queue::open(&cfg.data_dir.join("drake.db"), QueueConfig::default()).await?;
    let (token, generated) = admin_token(&cfg.data_dir)?;
    queue
        .add_token(&token, Role::Admin, Some("admin"), None, None, now_ms())
        .await?;
    let addr = listener.local_addr()?;
    println!("drake coordinator listening on http://{addr}");
    if generated {
        println!(
            "admin token (kept in {}): {token}",
            cfg.data_dir.join("admin-token").display()
        );
    }

    let reaper_queue = queue.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            if let Err(e) = reaper_queue.reap(now_ms()).await {
                eprintln!("coordinator: lease reaper: {e}");
            }
        }
    });

    let state = AppState {
        queue,
        drake_exe: Arc::new(cfg.drake_exe),
    };
    axum::serve(listener, api::router(state))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
