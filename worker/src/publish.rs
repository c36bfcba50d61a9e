//! Publishing over WebDAV. dav-server's PUT (like many stores') writes in place and
//! is not atomic, so a file is never PUT at its final name: it is PUT under a
//! temporary name, read back to check its size and sha256, then MOVEd into place.

use crate::files::sum_file;
use futures_util::StreamExt;
use proto::report::FileSum;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("reading the local output: {0}")]
    Local(std::io::Error),
    #[error("{method} {url}: {message}")]
    Http { method: &'static str, url: String, message: String },
    #[error("{url}: stored {got_size} bytes with sha256 {got_sha}, expected {size} bytes with {sha}")]
    Mismatch { url: String, size: u64, sha: String, got_size: u64, got_sha: String },
}

pub struct Dav<'a> {
    http: &'a reqwest::Client,
    /// Base URL of the store, without a trailing slash.
    base: String,
    /// The `Authorization` header value, if the store wants one.
    authorization: Option<String>,
}

impl<'a> Dav<'a> {
    pub fn new(http: &'a reqwest::Client, base: String, authorization: Option<String>) -> Dav<'a> {
        Dav { http, base, authorization }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path.trim_start_matches('/'))
    }

    async fn send(&self, method: &'static str, url: &str, req: reqwest::RequestBuilder) -> Result<reqwest::Response, PublishError> {
        let req = match &self.authorization {
            Some(a) => req.header("authorization", a),
            None => req,
        };
        req.send().await.map_err(|e| PublishError::Http { method, url: url.into(), message: e.to_string() })
    }

    /// Creates every level of `dir` (MKCOL answers 405 for one that exists).
    pub async fn mkcol_all(&self, dir: &str) -> Result<(), PublishError> {
        let mut path = String::new();
        for seg in dir.split('/').filter(|s| !s.is_empty()) {
            path = if path.is_empty() { seg.to_string() } else { format!("{path}/{seg}") };
            let url = self.url(&format!("{path}/"));
            let req = self.http.request(reqwest::Method::from_bytes(b"MKCOL").expect("method"), &url);
            let resp = self.send("MKCOL", &url, req).await?;
            if !(resp.status().is_success() || resp.status().as_u16() == 405) {
                return Err(PublishError::Http { method: "MKCOL", url, message: format!("HTTP {}", resp.status()) });
            }
        }
        Ok(())
    }

    /// PUT to a temporary name, verify, MOVE to `dir/name`. Returns the verified sum.
    pub async fn publish(&self, local: &Path, dir: &str, name: &str, attempt: &str) -> Result<FileSum, PublishError> {
        let sum = sum_file(local, name).map_err(|e| PublishError::Local(std::io::Error::other(e.to_string())))?;
        let temp = self.url(&format!("{dir}/.{name}.part-{attempt}"));
        let file = tokio::fs::File::open(local).await.map_err(PublishError::Local)?;
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024));
        let req = self.http.put(&temp).header("content-length", sum.size).body(body).timeout(Duration::from_secs(3600));
        let resp = self.send("PUT", &temp, req).await?;
        if !resp.status().is_success() {
            return Err(PublishError::Http { method: "PUT", url: temp, message: format!("HTTP {}", resp.status()) });
        }
        // Read it back: what the store holds must be byte for byte what we wrote.
        let resp = self.send("GET", &temp, self.http.get(&temp).timeout(Duration::from_secs(3600))).await?;
        if !resp.status().is_success() {
            return Err(PublishError::Http { method: "GET", url: temp, message: format!("HTTP {}", resp.status()) });
        }
        let (mut h, mut got_size) = (Sha256::new(), 0u64);
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| PublishError::Http { method: "GET", url: temp.clone(), message: e.to_string() })?;
            got_size += chunk.len() as u64;
            h.update(&chunk);
        }
        let got_sha = hex::encode(h.finalize());
        if got_size != sum.size || got_sha != sum.sha256 {
            return Err(PublishError::Mismatch { url: temp, size: sum.size, sha: sum.sha256, got_size, got_sha });
        }
        let dest = self.url(&format!("{dir}/{name}"));
        let req = self
            .http
            .request(reqwest::Method::from_bytes(b"MOVE").expect("method"), &temp)
            .header("destination", &dest)
            .header("overwrite", "T");
        let resp = self.send("MOVE", &temp, req).await?;
        if !resp.status().is_success() {
            return Err(PublishError::Http { method: "MOVE", url: temp, message: format!("HTTP {}", resp.status()) });
        }
        Ok(sum)
    }
}
