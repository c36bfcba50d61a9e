//! Dashboard sign-in: browser sessions (a cookie, stored as its sha256 like every
//! token) with a CSRF token each, and one-time login links printed at start.

use crate::auth::{Role, digest};
use crate::queue::sql;
use crate::queue::{Queue, Result};
use rand::RngCore;
use serde::Serialize;

/// The dashboard session's cookie.
pub const SESSION_COOKIE: &str = "drake_session";
/// The header in which a dashboard page's script sends its session's CSRF token.
pub const CSRF_HEADER: &str = "x-drake-csrf";

/// How long a dashboard session lasts.
pub const SESSION_TTL_MS: i64 = 12 * 3600 * 1000;
/// How long a printed login link stays valid (it works once).
pub const LOGIN_LINK_TTL_MS: i64 = 24 * 3600 * 1000;

/// A signed-in browser.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub csrf: String,
}

/// A join token as the dashboard lists it (the token itself is never stored).
#[derive(Debug, Clone, Serialize)]
pub struct JoinTokenView {
    /// The token's sha256: names it for revocation, reveals nothing.
    pub digest: String,
    pub uses_left: i64,
    pub expires_at: i64,
    pub created_at: i64,
}

/// Whether a browser request's `Origin`, when it sends one, is this host: a
/// session's request from another site's page is refused.
pub fn same_origin(headers: &axum::http::HeaderMap) -> bool {
    use axum::http::header;
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else { return true };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
    origin.split_once("://").map_or(origin, |(_, h)| h) == host
}

/// The session cookie's value among a request's cookies.
pub fn session_cookie(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| kv.trim().strip_prefix(SESSION_COOKIE)?.strip_prefix('='))
        .filter(|v| v.len() <= 128)
}

/// Compares secrets without telling, by its time, where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

impl Queue {
    /// A new one-time login link token (`drk_login_...`).
    pub async fn create_login_link(&self, now: i64) -> Result<String> {
        let token = format!("drk_login_{}", random_hex(24));
        sql::query("INSERT INTO login_links (hash, expires_at) VALUES ($1, $2)")
            .bind(digest(&token))
            .bind(now + LOGIN_LINK_TTL_MS)
            .execute(&mut self.auto())
            .await?;
        Ok(token)
    }

    /// Revokes every login link not used yet (at start: links printed by an earlier
    /// run stop working).
    pub async fn revoke_login_links(&self) -> Result<()> {
        sql::query("DELETE FROM login_links WHERE used_at IS NULL").execute(&mut self.auto()).await?;
        Ok(())
    }

    /// Spends a login link; false if unknown, used or expired.
    pub async fn use_login_link(&self, token: &str, now: i64) -> Result<bool> {
        let n = sql::query("UPDATE login_links SET used_at = $1 WHERE hash = $2 AND used_at IS NULL AND expires_at > $3")
            .bind(now)
            .bind(digest(token))
            .bind(now)
            .execute(&mut self.auto())
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    /// Starts a session; returns the cookie value and the session.
    pub async fn create_session(&self, now: i64) -> Result<(String, Session)> {
        let cookie = random_hex(32);
        let csrf = random_hex(24);
        sql::query("DELETE FROM sessions WHERE expires_at < $1").bind(now).execute(&mut self.auto()).await?;
        sql::query("INSERT INTO sessions (hash, csrf, created_at, expires_at) VALUES ($1, $2, $3, $4)")
            .bind(digest(&cookie))
            .bind(&csrf)
            .bind(now)
            .bind(now + SESSION_TTL_MS)
            .execute(&mut self.auto())
            .await?;
        Ok((cookie, Session { csrf }))
    }

    pub async fn session(&self, cookie: &str, now: i64) -> Result<Option<Session>> {
        let row = sql::query("SELECT csrf FROM sessions WHERE hash = $1 AND expires_at > $2")
            .bind(digest(cookie))
            .bind(now)
            .fetch_optional(&mut self.auto())
            .await?;
        Ok(row.map(|r| Session { csrf: r.get(0) }))
    }

    pub async fn end_session(&self, cookie: &str) -> Result<()> {
        sql::query("DELETE FROM sessions WHERE hash = $1").bind(digest(cookie)).execute(&mut self.auto()).await?;
        Ok(())
    }

    /// Join tokens that can still be used, newest first.
    pub async fn join_tokens(&self, now: i64) -> Result<Vec<JoinTokenView>> {
        let rows = sql::query(
            "SELECT hash, uses_left, expires_at, created_at FROM tokens
             WHERE role = $1 AND revoked = 0 AND uses_left > 0 AND expires_at > $2 ORDER BY created_at DESC LIMIT 200",
        )
        .bind(Role::Join.as_str())
        .bind(now)
        .fetch_all(&mut self.read().await?)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| JoinTokenView { digest: r.get(0), uses_left: r.get(1), expires_at: r.get(2), created_at: r.get(3) })
            .collect())
    }

    /// Revokes a join token by its digest (only join tokens: the dashboard cannot
    /// revoke the admin token it signed in with).
    pub async fn revoke_join_token(&self, token_digest: &str) -> Result<bool> {
        let n = sql::query("UPDATE tokens SET revoked = 1 WHERE hash = $1 AND role = $2")
            .bind(token_digest)
            .bind(Role::Join.as_str())
            .execute(&mut self.auto())
            .await?
            .rows_affected();
        Ok(n == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue, header};

    #[test]
    fn finds_the_session_cookie_among_others() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; drake_session=abc; b=2"));
        assert_eq!(session_cookie(&h), Some("abc"));
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("drake_sessionx=1"));
        assert_eq!(session_cookie(&h), None);
    }

    #[test]
    fn compares_in_constant_time() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
