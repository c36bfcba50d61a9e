//! Bearer tokens with roles. Only sha256 digests are stored; the plaintext is shown
//! once, when the token is made. Every route names the roles it accepts.

use crate::queue::sql;
use crate::queue::{Queue, QueueError, Result};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// The bearer token of a request, if any.
pub fn bearer(parts: &axum::http::request::Parts) -> Option<&str> {
    parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything, including minting join tokens.
    Admin,
    /// The upload pipeline: submit and read jobs.
    Submit,
    /// A registered worker: only the worker routes.
    Worker,
    /// A join token: only registration.
    Join,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Submit => "submit",
            Role::Worker => "worker",
            Role::Join => "join",
        }
    }

    fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "admin" => Role::Admin,
            "submit" => Role::Submit,
            "worker" => Role::Worker,
            "join" => Role::Join,
            _ => return None,
        })
    }
}

/// A fresh random token with a role prefix, for example `drk_admin_3f9c...`.
pub fn generate(role: Role) -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    format!("drk_{}_{}", role.as_str(), hex::encode(bytes))
}

pub fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Who is calling: the role and, for workers, the token's label (the worker id).
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    pub role: Role,
    pub label: Option<String>,
    /// The token as presented (needed only to spend a join token).
    pub presented: Option<String>,
}

impl Queue {
    /// Stores a token's digest. `uses` and `expires_at` limit join tokens.
    pub async fn add_token(
        &self,
        token: &str,
        role: Role,
        label: Option<&str>,
        uses: Option<i64>,
        expires_at: Option<i64>,
        now: i64,
    ) -> Result<()> {
        sql::query("INSERT INTO tokens (hash, role, label, uses_left, expires_at, created_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING")
            .bind(digest(token))
            .bind(role.as_str())
            .bind(label)
            .bind(uses)
            .bind(expires_at)
            .bind(now)
            .execute(&mut self.auto())
            .await?;
        Ok(())
    }

    /// The caller a presented token stands for, if it is valid now. Answers from
    /// [`Callers`] when it can.
    pub async fn authenticate(&self, token: &str, now: i64) -> Result<Option<Caller>> {
        let hash = digest(token);
        if let Some(caller) = self.callers.get(&hash, now) {
            return Ok(Some(caller));
        }
        let row = sql::query("SELECT role, label, expires_at FROM tokens WHERE hash = $1 AND revoked = 0 AND (expires_at IS NULL OR expires_at > $2) AND (uses_left IS NULL OR uses_left > 0)")
            .bind(&hash)
            .bind(now)
            .fetch_optional(&mut self.auto())
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let Some(role) = Role::parse(&row.get::<String, _>(0)) else {
            return Ok(None);
        };
        let caller = Caller { role, label: row.get(1), presented: None };
        // A join token's uses run out: it is always read.
        if role != Role::Join {
            self.callers.keep(hash, &caller, row.get(2));
        }
        Ok(Some(caller))
    }

    /// Spends one use of a join token; false when it had none left.
    pub async fn spend_join_token(&self, token: &str, now: i64) -> Result<bool> {
        let n = sql::query("UPDATE tokens SET uses_left = uses_left - 1 WHERE hash = $1 AND role = 'join' AND revoked = 0 AND uses_left > 0 AND (expires_at IS NULL OR expires_at > $2)")
            .bind(digest(token))
            .bind(now)
            .execute(&mut self.auto())
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    /// Submit tokens: id (16 hex digits of the digest), pipeline, created, revoked.
    pub async fn submit_tokens(&self) -> Result<Vec<serde_json::Value>> {
        let rows = sql::query(
            "SELECT substr(hash, 1, 16), label, created_at, revoked FROM tokens WHERE role = 'submit' ORDER BY created_at DESC LIMIT 1000",
        )
        .fetch_all(&mut self.read().await?)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                serde_json::json!({"id": r.get::<String, _>(0), "pipeline": r.get::<Option<String>, _>(1), "created_at": r.get::<i64, _>(2), "revoked": r.get::<i64, _>(3) != 0})
            })
            .collect())
    }

    /// Revokes the submit token whose digest starts with `id` (16 hex digits).
    pub async fn revoke_submit_token(&self, id: &str) -> Result<()> {
        if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(QueueError::NotFound(format!("token {id}")));
        }
        let n = sql::query("UPDATE tokens SET revoked = 1 WHERE role = 'submit' AND substr(hash, 1, 16) = $1")
            .bind(id.to_ascii_lowercase())
            .execute(&mut self.auto())
            .await?
            .rows_affected();
        self.callers.forget();
        if n == 0 {
            return Err(QueueError::NotFound(format!("token {id}")));
        }
        Ok(())
    }

    pub async fn revoke_token(&self, token_digest: &str) -> Result<()> {
        let n =
            sql::query("UPDATE tokens SET revoked = 1 WHERE hash = $1").bind(token_digest).execute(&mut self.auto()).await?.rows_affected();
        self.callers.forget();
        if n == 0 {
            return Err(QueueError::NotFound("token".into()));
        }
        Ok(())
    }
}

/// How long an authenticated caller is answered from memory.
const CALLER_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// Most callers kept; more empties the cache (only valid tokens get in).
const CALLERS_KEPT: usize = 10_000;

/// Callers authenticated within [`CALLER_TTL`], by token digest. A worker
/// authenticates every request, several a second, and the lookup was a fifth of
/// a task cycle's statements. A revocation through this coordinator empties the
/// cache at once ([`Callers::forget`]); one through another coordinator takes
/// effect here within the TTL. An expiring token is checked against its expiry
/// on every hit.
#[derive(Default)]
pub struct Callers(std::sync::Mutex<std::collections::HashMap<String, Kept>>);

struct Kept {
    caller: Caller,
    expires_at: Option<i64>,
    at: std::time::Instant,
}

impl Callers {
    fn get(&self, hash: &str, now: i64) -> Option<Caller> {
        let kept = self.0.lock().expect("the callers cache");
        let k = kept.get(hash)?;
        (k.at.elapsed() < CALLER_TTL && k.expires_at.is_none_or(|e| e > now)).then(|| k.caller.clone())
    }

    fn keep(&self, hash: String, caller: &Caller, expires_at: Option<i64>) {
        let mut kept = self.0.lock().expect("the callers cache");
        if kept.len() >= CALLERS_KEPT {
            kept.clear();
        }
        kept.insert(hash, Kept { caller: caller.clone(), expires_at, at: std::time::Instant::now() });
    }

    /// Forgets every caller (a token was revoked).
    pub fn forget(&self) {
        self.0.lock().expect("the callers cache").clear();
    }
}
