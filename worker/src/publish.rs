//! Publishing over WebDAV. dav-server's PUT (like many stores') writes in place and
//! is not atomic, so a file is never PUT at its final name: it is PUT under a
//! temporary name, read back to check its size and sha256, then MOVEd into place.

use crate::files::sum_file;
use futures_util::{StreamExt, TryStreamExt};
use proto::report::FileSum;
use proto::transfer::{MOVE_WITHIN, Progress, unless_stalled, watched};
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
    /// How long a transfer may go without moving a byte (see `proto::transfer`).
    stall: Duration,
}

impl<'a> Dav<'a> {
    /// A store whose transfers fail once they have gone `stall` without moving a byte.
    pub fn new(http: &'a reqwest::Client, base: String, authorization: Option<String>, stall: Duration) -> Dav<'a> {
        Dav { http, base, authorization, stall }
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

    /// [`Dav::send`] for a transfer, whose answer must come within the stall limit
    /// of the last byte `progress` saw sent (or of now, for a request without a body).
    async fn send_watched(
        &self,
        method: &'static str,
        url: &str,
        req: reqwest::RequestBuilder,
        progress: &Progress,
    ) -> Result<reqwest::Response, PublishError> {
        unless_stalled(progress, self.stall, self.send(method, url, req))
            .await
            .unwrap_or_else(|s| Err(PublishError::Http { method, url: url.into(), message: s.to_string() }))
    }

    /// A response's body, failing once it has not moved for the stall limit.
    fn body(&self, resp: reqwest::Response) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> {
        watched(resp.bytes_stream().map_err(std::io::Error::other), self.stall)
    }

    /// Copies a stored file to `dest`, resuming with `Range` after a dropped
    /// connection (up to a few times), and checks that it got as many bytes as the
    /// store said. A store blip then costs a retry here, not a misread source: libav
    /// only ever reads a complete local copy, so "not media" really means not media.
    pub async fn download(&self, path: &str, dest: &Path) -> Result<u64, PublishError> {
        use tokio::io::AsyncWriteExt;
        let url = self.url(path);
        let local = |e: std::io::Error| PublishError::Local(e);
        let mut file = tokio::fs::File::create(dest).await.map_err(local)?;
        let mut have = 0u64;
        let mut total: Option<u64> = None;
        let mut last_error = String::new();
        for attempt in 0..5u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
            }
            let mut req = self.http.get(&url).timeout(Duration::from_secs(3600));
            if have > 0 {
                req = req.header("range", format!("bytes={have}-"));
            }
            let resp = match self.send_watched("GET", &url, req, &Progress::new()).await {
                Ok(r) => r,
                Err(e) => {
                    last_error = e.to_string();
                    continue;
                }
            };
            let status = resp.status();
            if status.is_client_error() && status.as_u16() != 416 {
                return Err(PublishError::Http { method: "GET", url, message: format!("HTTP {status}") });
            }
            if !status.is_success() {
                last_error = format!("HTTP {status}");
                continue;
            }
            if have > 0 && status.as_u16() != 206 {
                // The store ignored the range: start over.
                file = tokio::fs::File::create(dest).await.map_err(local)?;
                have = 0;
            }
            if total.is_none() || have == 0 {
                total = resp.content_length().map(|n| n + have);
            }
            let mut body = std::pin::pin!(self.body(resp));
            let mut broke = false;
            while let Some(chunk) = body.next().await {
                match chunk {
                    Ok(c) => {
                        file.write_all(&c).await.map_err(local)?;
                        have += c.len() as u64;
                    }
                    Err(e) => {
                        last_error = e.to_string();
                        broke = true;
                        break;
                    }
                }
            }
            if !broke && total.is_none_or(|t| t == have) {
                file.sync_all().await.map_err(local)?;
                return Ok(have);
            }
            if !broke {
                last_error = format!("got {have} of {} bytes", total.unwrap_or(0));
            }
        }
        Err(PublishError::Http { method: "GET", url, message: last_error })
    }

    /// Creates `dir` and whatever of its parents is missing. The deepest level goes
    /// first, since its parents usually exist (a job's every task after its first):
    /// one request, walking up only while MKCOL answers 409 (a missing parent).
    pub async fn mkcol_all(&self, dir: &str) -> Result<(), PublishError> {
        let levels: Vec<&str> = dir.split('/').filter(|s| !s.is_empty()).collect();
        let mut made = levels.len();
        while made > 0 && !self.mkcol(&levels[..made].join("/")).await? {
            made -= 1;
        }
        for depth in made + 1..=levels.len() {
            if !self.mkcol(&levels[..depth].join("/")).await? {
                let url = self.url(&format!("{}/", levels[..depth].join("/")));
                return Err(PublishError::Http { method: "MKCOL", url, message: "HTTP 409 after its parent was made".into() });
            }
        }
        Ok(())
    }

    /// One MKCOL: true when the collection is there now (made, or 405: it existed),
    /// false when its parent is missing (409).
    async fn mkcol(&self, path: &str) -> Result<bool, PublishError> {
        let url = self.url(&format!("{path}/"));
        // A store that takes the request and never answers must not hold the task,
        // whose heartbeats go on while it publishes: the answer comes within the stall limit.
        let req = self.http.request(reqwest::Method::from_bytes(b"MKCOL").expect("method"), &url);
        let resp = self.send_watched("MKCOL", &url, req, &Progress::new()).await?;
        match resp.status().as_u16() {
            405 => Ok(true),
            409 => Ok(false),
            _ if resp.status().is_success() => Ok(true),
            code => Err(PublishError::Http { method: "MKCOL", url, message: format!("HTTP {code}") }),
        }
    }

    /// PUT to a temporary name, verify, MOVE to `dir/name`. Returns the verified sum.
    pub async fn publish(&self, local: &Path, dir: &str, name: &str, attempt: &str) -> Result<FileSum, PublishError> {
        let sum = sum_file(local, name).map_err(|e| PublishError::Local(std::io::Error::other(e.to_string())))?;
        let temp = self.url(&format!("{dir}/.{name}.part-{attempt}"));
        let file = tokio::fs::File::open(local).await.map_err(PublishError::Local)?;
        let progress = Progress::new();
        let body = reqwest::Body::wrap_stream(progress.counting(tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024)));
        let req = self.http.put(&temp).header("content-length", sum.size).body(body).timeout(Duration::from_secs(3600));
        let resp = self.send_watched("PUT", &temp, req, &progress).await?;
        if !resp.status().is_success() {
            return Err(PublishError::Http { method: "PUT", url: temp, message: format!("HTTP {}", resp.status()) });
        }
        // Read it back: what the store holds must be byte for byte what we wrote.
        let resp = self.send_watched("GET", &temp, self.http.get(&temp).timeout(Duration::from_secs(3600)), &Progress::new()).await?;
        if !resp.status().is_success() {
            return Err(PublishError::Http { method: "GET", url: temp, message: format!("HTTP {}", resp.status()) });
        }
        let (mut h, mut got_size) = (Sha256::new(), 0u64);
        let mut stream = std::pin::pin!(self.body(resp));
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
            .header("overwrite", "T")
            .timeout(MOVE_WITHIN);
        let resp = self.send("MOVE", &temp, req).await?;
        if !resp.status().is_success() {
            return Err(PublishError::Http { method: "MOVE", url: temp, message: format!("HTTP {}", resp.status()) });
        }
        Ok(sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{TcpListener, TcpStream};

    const STALL: Duration = Duration::from_secs(1);

    /// A store on a real socket that gives each connection, in order, to `serve`
    /// with its request's head (request line and headers, lower-cased).
    fn store(serve: impl Fn(usize, &str, TcpStream) + Send + 'static) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for (n, conn) in listener.incoming().enumerate() {
                let conn = conn.unwrap();
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut head = String::new();
                while reader.read_line(&mut head).unwrap() > 2 {}
                serve(n, &head.to_lowercase(), conn);
            }
        });
        base
    }

    fn hold(conn: TcpStream) {
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(60));
            drop(conn);
        });
    }

    #[tokio::test]
    async fn a_download_that_stops_moving_is_resumed_where_it_stopped() {
        let content: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let served = content.clone();
        let base = store(move |n, head, mut conn| {
            if n == 0 {
                // The headers and 1,000 bytes, then nothing, on a connection kept open.
                write!(conn, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", served.len()).unwrap();
                conn.write_all(&served[..1000]).unwrap();
                hold(conn);
            } else {
                assert!(head.contains("range: bytes=1000-"), "{head}");
                write!(conn, "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", served.len() - 1000)
                    .unwrap();
                conn.write_all(&served[1000..]).unwrap();
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let (http, dest) = (reqwest::Client::new(), dir.path().join("source"));
        let dav = Dav::new(&http, base, None, STALL);
        let got = tokio::time::timeout(Duration::from_secs(20), dav.download("jobs/j/source", &dest)).await.expect("not held");
        assert_eq!(got.unwrap(), content.len() as u64);
        assert_eq!(std::fs::read(&dest).unwrap(), content);
    }

    #[tokio::test]
    async fn a_store_that_stops_taking_an_upload_fails_it_soon() {
        // The store reads the request's head, then neither reads its body nor answers.
        let base = store(|_, _, conn| hold(conn));
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("v.mp4");
        // More than the sockets' buffers hold, so the sender is blocked.
        std::fs::write(&local, vec![7u8; 64 << 20]).unwrap();
        let http = reqwest::Client::new();
        let dav = Dav::new(&http, base, None, STALL);
        let started = std::time::Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(20), dav.publish(&local, "jobs/j/240p", "v.mp4", "t-1"))
            .await
            .expect("not held")
            .unwrap_err();
        assert!(err.to_string().contains("PUT") && err.to_string().contains("stalled"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_store_that_takes_an_upload_and_never_answers_fails_it_soon() {
        let base = store(|_, head, mut conn| {
            let size: usize = head.lines().find_map(|l| l.strip_prefix("content-length: ")).unwrap().trim().parse().unwrap();
            let mut body = vec![0u8; size];
            // What the store's head read buffered counts; read the rest, and keep quiet.
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = conn.read(&mut body);
            hold(conn);
        });
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("v.mp4");
        std::fs::write(&local, vec![7u8; 1000]).unwrap();
        let http = reqwest::Client::new();
        let dav = Dav::new(&http, base, None, STALL);
        let err = tokio::time::timeout(Duration::from_secs(20), dav.publish(&local, "jobs/j/240p", "v.mp4", "t-1"))
            .await
            .expect("not held")
            .unwrap_err();
        assert!(err.to_string().contains("stalled"), "{err}");
    }
}
