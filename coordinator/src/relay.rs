//! Events and work wake-ups across coordinators.
//!
//! Each coordinator publishes job and task changes to its own SSE subscribers
//! (`AppState::events`) and wakes its own long-polling workers (`work_ready`). On
//! PostgreSQL, where several coordinators share one database, the relay also sends
//! both with NOTIFY on the channel `drake`, and every coordinator LISTENs there and
//! passes on what the others sent. A notification only says "look again": the
//! state is in the tables. One lost (NOTIFY is not durable, and sqlx's listener
//! drops what arrives while it reconnects) costs a worker at most one long-poll
//! recheck (every second) and a dashboard tab one periodic refresh.
//!
//! Sends are batched: at most one NOTIFY per [`BATCH`], each under the 8000-byte
//! payload limit, so a busy farm does not take PostgreSQL's notify lock per event.

use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, broadcast, mpsc};

/// The LISTEN/NOTIFY channel.
const CHANNEL: &str = "drake";
/// How long sends are gathered into one NOTIFY.
const BATCH: Duration = Duration::from_millis(20);
/// PostgreSQL refuses payloads of 8000 bytes or more.
const MAX_PAYLOAD: usize = 7000;
/// Events waiting to be sent; past this, new ones are dropped (they are hints).
const BACKLOG: usize = 10_000;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Payload {
    /// The sending coordinator, which ignores its own notifications.
    from: String,
    #[serde(default)]
    events: Vec<String>,
    #[serde(default)]
    work: bool,
}

enum Outgoing {
    Event(String),
    Work,
}

/// The sending half; cheap to clone. A relay for SQLite sends nothing.
#[derive(Clone, Default)]
pub struct Relay {
    tx: Option<mpsc::Sender<Outgoing>>,
}

impl Relay {
    /// A relay that keeps everything in this process (SQLite: one coordinator).
    pub fn local() -> Relay {
        Relay { tx: None }
    }

    /// Starts relaying through the PostgreSQL at `url`: a sender that batches this
    /// coordinator's events, and a listener that hands the others' to `events` and
    /// `work_ready`. Both run as long as the process.
    pub fn postgres(url: &str, me: &str, events: broadcast::Sender<String>, work_ready: Arc<Notify>) -> Relay {
        let (tx, rx) = mpsc::channel(BACKLOG);
        let url = url.to_string();
        tokio::spawn(send_loop(url.clone(), me.to_string(), rx));
        tokio::spawn(listen_loop(url, me.to_string(), events, work_ready));
        Relay { tx: Some(tx) }
    }

    pub fn event(&self, event: &str) {
        if let Some(tx) = &self.tx
            && event.len() < MAX_PAYLOAD - 200
        {
            let _ = tx.try_send(Outgoing::Event(event.to_string()));
        }
    }

    pub fn work(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.try_send(Outgoing::Work);
        }
    }
}

async fn send_loop(url: String, me: String, mut rx: mpsc::Receiver<Outgoing>) {
    let mut conn: Option<sqlx::PgConnection> = None;
    while let Some(first) = rx.recv().await {
        tokio::time::sleep(BATCH).await;
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        for payload in payloads(&me, batch) {
            if conn.is_none() {
                match <sqlx::PgConnection as sqlx::Connection>::connect(&url).await {
                    Ok(c) => conn = Some(c),
                    Err(e) => {
                        proto::log!("coordinator: relay: connecting to PostgreSQL: {e}");
                        break;
                    }
                }
            }
            let Some(c) = conn.as_mut() else { break };
            if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(&payload).execute(&mut *c).await {
                proto::log!("coordinator: relay: NOTIFY: {e}");
                conn = None;
            }
        }
    }
}

/// Packs a batch into as few payloads as fit under the size limit.
fn payloads(me: &str, batch: Vec<Outgoing>) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = Payload { from: me.to_string(), ..Default::default() };
    let mut size = 100;
    for item in batch {
        match item {
            Outgoing::Work => current.work = true,
            Outgoing::Event(e) => {
                if size + e.len() + 8 > MAX_PAYLOAD && !current.events.is_empty() {
                    out.push(serde_json::to_string(&current).unwrap_or_default());
                    current = Payload { from: me.to_string(), ..Default::default() };
                    size = 100;
                }
                size += e.len() + 8;
                current.events.push(e);
            }
        }
    }
    if current.work || !current.events.is_empty() {
        out.push(serde_json::to_string(&current).unwrap_or_default());
    }
    out
}

async fn listen_loop(url: String, me: String, events: broadcast::Sender<String>, work_ready: Arc<Notify>) {
    loop {
        let mut listener = match sqlx::postgres::PgListener::connect(&url).await {
            Ok(l) => l,
            Err(e) => {
                proto::log!("coordinator: relay: connecting the listener: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(CHANNEL).await {
            proto::log!("coordinator: relay: LISTEN: {e}");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        loop {
            match listener.recv().await {
                Ok(n) => {
                    let Ok(p) = serde_json::from_str::<Payload>(n.payload()) else { continue };
                    if p.from == me {
                        continue;
                    }
                    for e in p.events {
                        let _ = events.send(e);
                    }
                    if p.work {
                        work_ready.notify_waiters();
                    }
                }
                Err(e) => {
                    proto::log!("coordinator: relay: listening: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_fit_the_payload_limit() {
        let big = "x".repeat(3000);
        let batch = vec![Outgoing::Event(big.clone()), Outgoing::Work, Outgoing::Event(big.clone()), Outgoing::Event(big)];
        let out = payloads("me", batch);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|p| p.len() < MAX_PAYLOAD));
        let first: Payload = serde_json::from_str(&out[0]).unwrap();
        assert_eq!((first.events.len(), first.work, first.from.as_str()), (2, true, "me"));
    }
}
