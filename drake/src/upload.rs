//! `drake submit`'s resumable upload: tus 1.0 to the coordinator's
//! `/api/v1/uploads/`, in chunks each sent with its sha256, retried with backoff.
//!
//! The upload's URL is recorded in a small state file as soon as it is created, so
//! after an interruption (the network, the coordinator, or this process killed)
//! running the same command again, or with `--resume`, asks the coordinator how
//! far it got (HEAD) and sends only the rest. The record is keyed by the
//! coordinator, the file (path, size, modification time) and the job's metadata,
//! so a changed file or another profile starts a new upload.

use base64::Engine as _;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::StatusCode;
use sha2::Digest as _;
use std::io::{Read as _, Seek as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Exit status when an upload stopped part way and can be resumed (EX_TEMPFAIL).
pub const INTERRUPTED: i32 = 75;
/// Slices of a chunk handed to the HTTP client, so the bar moves within a chunk.
const SLICE: usize = 256 * 1024;
/// The longest pause between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How to upload.
pub struct Tus<'a> {
    pub http: &'a reqwest::Client,
    pub base: &'a str,
    pub token: &'a str,
    pub file: &'a Path,
    /// `Upload-Metadata` pairs (filename, profile, ...).
    pub metadata: Vec<(String, String)>,
    pub chunk_size: u64,
    /// Attempts after a failed request before giving up (the upload stays resumable).
    pub retries: u32,
    /// Insist on continuing a recorded upload.
    pub resume: bool,
}

/// Why an upload did not end in a job.
pub enum Failure {
    /// Stopped part way; the same command continues it.
    Interrupted(String),
    /// Refused, or nothing to resume: trying again as is will not help.
    Refused(String),
}

/// What the state file keeps about an upload in progress.
#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    url: String,
    file: PathBuf,
    size: u64,
}

/// What one request taught.
enum Step {
    /// The server's offset.
    At(u64),
    /// The last bytes arrived: the job the upload made, if the answer named it.
    Done(Option<String>),
}

/// A request that failed: worth another attempt, or not.
enum Error {
    Transient(String),
    Fatal(String),
    /// The upload is not on the server (404, 410): expired, terminated or unknown.
    Gone(String),
}

impl Tus<'_> {
    /// Uploads the file (or its rest) and returns the id of the job it made.
    pub async fn run(&self) -> Result<String, Failure> {
        let meta = std::fs::metadata(self.file).map_err(|e| Failure::Refused(format!("{}: {e}", self.file.display())))?;
        let size = meta.len();
        let record_path = self.record_path(&meta);
        let recorded = record_path.as_ref().and_then(|p| std::fs::read(p).ok()).and_then(|b| serde_json::from_slice::<Record>(&b).ok());
        if self.resume && recorded.is_none() {
            return Err(Failure::Refused(format!(
                "--resume: no upload of {} to {} is recorded; run without --resume to start one",
                self.file.display(),
                self.base
            )));
        }
        let bar = progress_bar(size);
        let mut resumed = None;
        if let Some(r) = recorded {
            match self.head(&r.url).await {
                Ok(Step::At(offset)) => resumed = Some((r.url, offset)),
                Ok(Step::Done(_)) => resumed = Some((r.url, size)),
                Err(Error::Gone(why)) => {
                    say(&bar, format!("drake: the recorded upload is gone ({why}); starting over"));
                    forget(record_path.as_deref());
                }
                Err(Error::Transient(why) | Error::Fatal(why)) => {
                    return Err(Failure::Interrupted(format!("asking the coordinator how far the upload got: {why}")));
                }
            }
        }
        let (url, mut offset) = match resumed {
            Some((url, offset)) => {
                say(&bar, format!("drake: resuming the upload at {offset} of {size} bytes"));
                (url, offset)
            }
            None => {
                let url = self.create(size).await.map_err(|e| match e {
                    Error::Transient(why) => Failure::Interrupted(format!("creating the upload: {why}")),
                    Error::Fatal(why) | Error::Gone(why) => Failure::Refused(format!("creating the upload: {why}")),
                })?;
                if let Some(p) = &record_path {
                    remember(p, &Record { url: url.clone(), file: absolute(self.file), size });
                }
                (url, 0)
            }
        };
        bar.set_position(offset);
        let mut job = None;
        let mut known = Some(offset);
        let mut failures = 0;
        // The next chunk is read and hashed while this one is on the wire.
        let mut next: Option<tokio::task::JoinHandle<std::io::Result<Chunk>>> = None;
        while offset < size || known.is_none() {
            let step = match known {
                Some(at) => match self.chunk_at(next.take(), at, size).await {
                    Ok(chunk) => {
                        let after = at + chunk.data.len() as u64;
                        if after < size {
                            let (file, len) = (self.file.to_path_buf(), self.chunk_size.min(size - after));
                            next = Some(tokio::task::spawn_blocking(move || Chunk::read(&file, after, len)));
                        }
                        self.patch(&url, chunk, size, &bar).await
                    }
                    Err(e) => Err(e),
                },
                None => self.head(&url).await,
            };
            match step {
                Ok(Step::At(at)) => {
                    if at > offset {
                        failures = 0;
                    }
                    offset = at;
                    known = Some(at);
                    bar.set_position(at);
                }
                Ok(Step::Done(j)) => {
                    offset = size;
                    known = Some(size);
                    job = j;
                }
                Err(Error::Gone(why)) => {
                    forget(record_path.as_deref());
                    bar.abandon();
                    return Err(Failure::Refused(format!("the upload is gone ({why}); run the command again to start over")));
                }
                Err(Error::Fatal(why)) => {
                    bar.abandon();
                    return Err(Failure::Refused(why));
                }
                Err(Error::Transient(why)) => {
                    failures += 1;
                    if failures > self.retries {
                        bar.abandon();
                        return Err(Failure::Interrupted(format!("stopped at {offset} of {size} bytes: {why}")));
                    }
                    let pause = backoff(failures);
                    say(&bar, format!("drake: {why}; trying again in {}s", pause.as_secs()));
                    tokio::time::sleep(pause).await;
                    // The server may have kept bytes whose answer was lost.
                    known = None;
                }
            }
        }
        bar.finish();
        let job = match job {
            Some(j) => j,
            None => self.job_of(&url).await.map_err(Failure::Interrupted)?,
        };
        forget(record_path.as_deref());
        Ok(job)
    }

    /// The state file for this file, coordinator and metadata, if there is a place for one.
    fn record_path(&self, meta: &std::fs::Metadata) -> Option<PathBuf> {
        use std::os::unix::fs::MetadataExt as _;
        let mut key = sha2::Sha256::new();
        for part in [self.base.trim_end_matches('/').to_string(), absolute(self.file).display().to_string()] {
            key.update(part.as_bytes());
            key.update([0]);
        }
        key.update(meta.len().to_le_bytes());
        key.update(meta.mtime().to_le_bytes());
        key.update(meta.mtime_nsec().to_le_bytes());
        for (k, v) in &self.metadata {
            key.update(k.as_bytes());
            key.update([0]);
            key.update(v.as_bytes());
            key.update([0]);
        }
        let name = hex::encode(&key.finalize()[..16]);
        Some(state_dir()?.join("uploads").join(format!("{name}.json")))
    }

    async fn create(&self, size: u64) -> Result<String, Error> {
        let encoded: Vec<String> =
            self.metadata.iter().map(|(k, v)| format!("{k} {}", base64::engine::general_purpose::STANDARD.encode(v))).collect();
        let mut failures = 0;
        loop {
            let sent = self
                .request(reqwest::Method::POST, &format!("{}/api/v1/uploads/", self.base))
                .header("upload-length", size)
                .header("upload-metadata", encoded.join(","))
                .send()
                .await;
            let outcome = match sent {
                Ok(resp) if resp.status() == StatusCode::CREATED => {
                    let location = header(&resp, "location").ok_or_else(|| Error::Fatal("the answer has no Location".into()))?;
                    return reqwest::Url::parse(self.base)
                        .and_then(|b| b.join(&location))
                        .map(String::from)
                        .map_err(|e| Error::Fatal(format!("Location {location}: {e}")));
                }
                Ok(resp) => refusal(resp).await,
                Err(e) => Error::Transient(e.to_string()),
            };
            match outcome {
                Error::Transient(why) if failures < self.retries => {
                    failures += 1;
                    tokio::time::sleep(backoff(failures)).await;
                    proto::log!("drake: creating the upload: {why}; trying again");
                }
                e => return Err(e),
            }
        }
    }

    async fn head(&self, url: &str) -> Result<Step, Error> {
        let resp = self.request(reqwest::Method::HEAD, url).send().await.map_err(|e| Error::Transient(e.to_string()))?;
        if resp.status() != StatusCode::OK {
            return Err(refusal(resp).await);
        }
        let offset = number(&resp, "upload-offset")?;
        match number(&resp, "upload-length") {
            Ok(length) if offset >= length => Ok(Step::Done(None)),
            _ => Ok(Step::At(offset)),
        }
    }

    /// The chunk at `at`: the one read ahead if it is that one, else read now.
    async fn chunk_at(&self, ahead: Option<tokio::task::JoinHandle<std::io::Result<Chunk>>>, at: u64, size: u64) -> Result<Chunk, Error> {
        let unreadable = |e: std::io::Error| Error::Fatal(format!("{}: {e}", self.file.display()));
        if let Some(handle) = ahead {
            match handle.await {
                Ok(Ok(chunk)) if chunk.offset == at => return Ok(chunk),
                Ok(Err(e)) => return Err(unreadable(e)),
                _ => {}
            }
        }
        let (file, len) = (self.file.to_path_buf(), self.chunk_size.min(size - at));
        tokio::task::spawn_blocking(move || Chunk::read(&file, at, len)).await.map_err(|e| Error::Fatal(e.to_string()))?.map_err(unreadable)
    }

    /// Sends a chunk with its sha256.
    async fn patch(&self, url: &str, chunk: Chunk, size: u64, bar: &ProgressBar) -> Result<Step, Error> {
        let Chunk { offset, data, sum } = chunk;
        let len = data.len();
        let moving = bar.clone();
        let body = futures_util::stream::iter((0..len).step_by(SLICE).map(move |from| {
            let slice = data.slice(from..(from + SLICE).min(len));
            moving.inc(slice.len() as u64);
            Ok::<_, std::io::Error>(slice)
        }));
        let sent = self
            .request(reqwest::Method::PATCH, url)
            .header("content-type", "application/offset+octet-stream")
            .header("content-length", len)
            .header("upload-offset", offset)
            .header("upload-checksum", format!("sha256 {sum}"))
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await
            .map_err(|e| Error::Transient(e.to_string()))?;
        match sent.status() {
            StatusCode::NO_CONTENT => {
                let at = number(&sent, "upload-offset")?;
                if at >= size {
                    return Ok(Step::Done(header(&sent, "drake-job")));
                }
                Ok(Step::At(at))
            }
            // Another request moved the offset, or the chunk was damaged on the way: ask again.
            StatusCode::CONFLICT => Err(Error::Transient("the coordinator's offset differs (409)".into())),
            s if s.as_u16() == 460 => Err(Error::Transient("a chunk arrived damaged (checksum mismatch)".into())),
            _ => Err(refusal(sent).await),
        }
    }

    /// The job a complete upload made; a completion the coordinator has yet to
    /// finish (its reconciler will) is waited for a little.
    async fn job_of(&self, url: &str) -> Result<String, String> {
        for attempt in 0..30 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let Ok(resp) = self.http.get(url).bearer_auth(self.token).send().await else { continue };
            let Ok(upload) = resp.json::<serde_json::Value>().await else { continue };
            if let Some(job) = upload["job_id"].as_str() {
                return Ok(job.to_string());
            }
        }
        Err(format!("every byte arrived, but {url} names no job yet; run the command again to ask"))
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        self.http.request(method, url).bearer_auth(self.token).header("tus-resumable", "1.0.0")
    }
}

/// A line for the user: above the bar on a terminal, else plainly on stderr
/// (a hidden bar prints nothing).
fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        proto::log!("{line}");
    } else {
        bar.println(line);
    }
}

fn progress_bar(size: u64) -> ProgressBar {
    let bar = ProgressBar::new(size);
    if let Ok(style) = ProgressStyle::with_template(
        "{prefix:>12.bold} [{elapsed_precise}] {wide_bar:.cyan/blue} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.with_prefix("upload")
}

/// 1, 2, 4 ... seconds, at most [`MAX_BACKOFF`].
fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(5)).min(MAX_BACKOFF)
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

fn number(resp: &reqwest::Response, name: &str) -> Result<u64, Error> {
    header(resp, name).and_then(|v| v.trim().parse().ok()).ok_or_else(|| Error::Fatal(format!("the answer has no {name}")))
}

/// What a non-success answer means for the upload.
async fn refusal(resp: reqwest::Response) -> Error {
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    // The API's errors are JSON with a message; tus's own answers are plain text.
    let why = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or(body.chars().take(300).collect());
    let why = format!("HTTP {status}: {}", why.trim());
    match status.as_u16() {
        404 | 410 => Error::Gone(why),
        429 | 500.. => Error::Transient(why),
        _ => Error::Fatal(why),
    }
}

/// A chunk of the file, read with its sha256 (base64), ready to send.
struct Chunk {
    offset: u64,
    data: bytes::Bytes,
    sum: String,
}

impl Chunk {
    fn read(file: &Path, offset: u64, len: u64) -> std::io::Result<Chunk> {
        let mut f = std::fs::File::open(file)?;
        f.seek(std::io::SeekFrom::Start(offset))?;
        let mut data = Vec::with_capacity(len as usize);
        f.take(len).read_to_end(&mut data)?;
        if data.len() as u64 != len {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the file shrank while it was uploaded"));
        }
        let sum = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&data));
        Ok(Chunk { offset, data: data.into(), sum })
    }
}

fn absolute(file: &Path) -> PathBuf {
    std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf())
}

/// `$DRAKE_STATE_DIR`, `$XDG_STATE_HOME/drake` or `~/.local/state/drake`.
pub fn state_dir() -> Option<PathBuf> {
    let from = |var: &str| std::env::var_os(var).filter(|v| !v.is_empty()).map(PathBuf::from);
    from("DRAKE_STATE_DIR")
        .or_else(|| from("XDG_STATE_HOME").map(|d| d.join("drake")))
        .or_else(|| from("HOME").map(|h| h.join(".local/state/drake")))
}

/// Writes the record whole or not at all; an upload without one still works, it
/// just cannot be resumed by another run.
fn remember(path: &Path, record: &Record) {
    use std::os::unix::fs::OpenOptionsExt as _;
    let write = || -> std::io::Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        std::io::Write::write_all(&mut f, &serde_json::to_vec(record).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        proto::log!("drake: cannot record the upload in {}: {e}; it cannot be resumed by another run", path.display());
    }
}

fn forget(path: Option<&Path>) {
    if let Some(p) = path {
        let _ = std::fs::remove_file(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let pauses: Vec<u64> = (1..=8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 30, 30, 30]);
    }
}
