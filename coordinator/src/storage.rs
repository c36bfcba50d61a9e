//! Storage: by default the data dir's `storage/` (served under `/dav/` by
//! [`crate::dav`]); or an external WebDAV server (nginx's dav module, ...) given by
//! its base URL. Workers read sources and
//! publish outputs there; upload pipelines read results. [`Store`] is everything the
//! coordinator itself does to storage, for either kind.
//!
//! Layout: `jobs/ID/source` (an upload), `jobs/ID/RENDITION/...`,
//! `jobs/ID/thumbnails/...`, `jobs/ID/master.m3u8`, `jobs/ID/manifest.json`;
//! `uploads/` holds uploads in flight and is never served.

use axum::body::Bytes;
use futures_util::{StreamExt as _, TryStreamExt as _};
use proto::transfer::{MOVE_WITHIN, Progress, unless_stalled, watched};
use proto::wire::{StorageAccess, TaskKind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The size of a local file; `None` if it is not there or is not a file.
fn file_size(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().filter(|m| m.is_file()).map(|m| m.len())
}

/// Most files a call may touch and still run on the runtime's thread (see
/// [`local_io`]).
pub(crate) const FEW_FILES: usize = 32;

/// Most bytes a call may write and still run on the runtime's thread.
pub(crate) const FEW_BYTES: usize = 64 * 1024;

/// Runs a call on the local store: right here when `small` (a few metadata
/// calls, or a write of up to [`FEW_BYTES`]), else on tokio's blocking pool.
///
/// A trip to the blocking pool hands the call to another thread and the answer
/// back: two wake-ups and context switches, which cost more than a `mkdir`, a
/// `stat` or a small write on a local disk. A task cycle makes four such calls
/// (MKCOL, PUT, the completion's sizes, the promotion's rename); run here, they
/// took the coordinator's CPU per cycle from 740–860 to 510–770 µs at 100
/// simulated workers (`bench/queue.sh`, three alternating runs), and `futex`
/// from 13 % of its profile to 1.4 %. Calls that may walk a tree or move many
/// bytes stay off the runtime's threads.
pub(crate) async fn local_io<T: Send + 'static>(small: bool, call: impl FnOnce() -> T + Send + 'static) -> std::io::Result<T> {
    if small {
        return Ok(call());
    }
    tokio::task::spawn_blocking(call).await.map_err(std::io::Error::other)
}

/// Where sources and outputs live, and how the coordinator reaches them.
#[derive(Clone)]
pub struct Store {
    /// The data dir's `storage/`: the store itself when local, and always where
    /// uploads are spooled (`uploads/`) before they are stored.
    root: PathBuf,
    remote: Option<Arc<Remote>>,
    /// The local promotions under way, by task output directory.
    promoting: Arc<Promoting>,
}

/// Local promotions of one task go one at a time. The reply path and the
/// reconciler can promote one task at once (a promotion that outlasts its
/// deadline is redone); each removes what is at the target before its rename, so
/// the second removed the first one's promoted files, then found no staging area
/// to rename, and the task ran again. One after the other, the second finds the
/// staging area gone and the files in place. A local store has one coordinator,
/// so a lock in the process is enough (a remote store's MOVE answers 404 instead).
#[derive(Default)]
struct Promoting(std::sync::Mutex<std::collections::HashMap<String, Queued>>);

/// A task directory's lock, and how many promotions hold it or wait for it.
struct Queued {
    lock: Arc<tokio::sync::Mutex<()>>,
    interested: usize,
}

/// One task's turn to promote, or its wait for it; the last to hold or leave it
/// (a wait given up included) forgets the lock.
struct PromotingTurn {
    promoting: Arc<Promoting>,
    dir: String,
    held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Promoting {
    async fn turn(self: &Arc<Self>, dir: &str) -> PromotingTurn {
        let lock = {
            let mut locks = self.0.lock().expect("promotions' lock");
            let queued = locks.entry(dir.to_string()).or_insert_with(|| Queued { lock: Arc::default(), interested: 0 });
            queued.interested += 1;
            queued.lock.clone()
        };
        let mut turn = PromotingTurn { promoting: self.clone(), dir: dir.to_string(), held: None };
        turn.held = Some(lock.lock_owned().await);
        turn
    }
}

impl Drop for PromotingTurn {
    fn drop(&mut self) {
        self.held = None;
        let mut locks = self.promoting.0.lock().expect("promotions' lock");
        if let Some(queued) = locks.get_mut(&self.dir) {
            queued.interested -= 1;
            if queued.interested == 0 {
                locks.remove(&self.dir);
            }
        }
    }
}

/// An external WebDAV server.
struct Remote {
    /// Base URL without a trailing slash, e.g. `http://media.internal/drake`.
    base: String,
    /// The `Authorization` header value it expects, if any.
    authorization: Option<String>,
    http: reqwest::Client,
    /// How long a transfer may go without moving a byte (see `proto::transfer`).
    stall: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{method} {url}: {message}")]
    Http { method: String, url: String, message: String },
}

type StoreResult<T> = std::result::Result<T, StoreError>;

impl StoreError {
    /// The disk written to is full (or over quota): local, or the store's (WebDAV's
    /// 507 Insufficient Storage). A condition of the farm that passes, not of a job.
    pub fn is_out_of_space(&self) -> bool {
        match self {
            StoreError::Io(e) => proto::disk::is_out_of_space(e),
            StoreError::Http { message, .. } => message.starts_with("HTTP 507"),
        }
    }

    /// The external store could not be reached or failed on its side: a transport
    /// error, a transfer cut short, or a 5xx answer other than 507. A condition of
    /// the farm that passes, as a full disk does, and not of a job.
    pub fn is_unreachable(&self) -> bool {
        match self {
            StoreError::Io(_) => false,
            StoreError::Http { message, .. } => !message.starts_with("HTTP ") || (message.starts_with("HTTP 5") && !self.is_out_of_space()),
        }
    }
}

impl Store {
    pub fn local(root: PathBuf) -> Store {
        Store { root, remote: None, promoting: Arc::default() }
    }

    /// Storage on an external WebDAV server; `root` still spools uploads.
    /// Its transfers fail once they have gone `stall` without moving a byte.
    pub fn remote(root: PathBuf, base: &str, authorization: Option<String>, stall: Duration) -> Result<Store, String> {
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(format!("--storage-url must be an http(s) URL, not {base}"));
        }
        let http = reqwest::Client::builder().connect_timeout(Duration::from_secs(10)).build().map_err(|e| e.to_string())?;
        let remote = Remote { base: base.trim_end_matches('/').to_string(), authorization, http, stall };
        Ok(Store { root, remote: Some(Arc::new(remote)), promoting: Arc::default() })
    }

    pub fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    /// The local tree (`storage/` in the data dir).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where an upload is written while it streams in.
    pub fn spool_dir(&self) -> PathBuf {
        self.root.join("uploads")
    }

    /// The URL clients use for a storage path: `/dav/...` on the coordinator, or
    /// the external server's absolute URL.
    pub fn url(&self, rel: &str) -> String {
        match &self.remote {
            Some(r) => format!("{}/{rel}", r.base),
            None => format!("/dav/{rel}"),
        }
    }

    /// What a worker needs to reach external storage (`None`: the coordinator's `/dav/`).
    pub fn access(&self) -> Option<StorageAccess> {
        self.remote.as_ref().map(|r| StorageAccess { url: r.base.clone(), authorization: r.authorization.clone() })
    }

    /// A local file holding a stored file, for `drake probe`: the file itself when
    /// storage is local, else a complete copy fetched into `spool` (the bool says it
    /// is a copy, to remove). libav never reads storage over the network, so a
    /// storage blip is a retry, never a source misread as corrupt.
    pub async fn local_copy(&self, rel: &str, spool: &Path) -> StoreResult<(PathBuf, bool)> {
        let Some(r) = &self.remote else { return Ok((self.root.join(rel), false)) };
        use tokio::io::AsyncWriteExt;
        tokio::fs::create_dir_all(spool).await?;
        let dest = spool.join(format!("probe-{}", uuid::Uuid::now_v7().simple()));
        let resp = r.send("GET", rel, None).await?;
        r.expect_ok("GET", rel, &resp)?;
        let expected = resp.content_length();
        let mut file = tokio::fs::File::create(&dest).await?;
        let mut got = 0u64;
        let copied: StoreResult<()> = async {
            let mut body = std::pin::pin!(r.body(resp));
            while let Some(chunk) = body.try_next().await.map_err(|e| r.error("GET", rel, e.to_string()))? {
                file.write_all(&chunk).await?;
                got += chunk.len() as u64;
            }
            if expected.is_some_and(|n| n != got) {
                return Err(r.error("GET", rel, format!("got {got} of {} bytes", expected.unwrap_or(0))));
            }
            Ok(())
        }
        .await;
        if let Err(e) = copied {
            let _ = tokio::fs::remove_file(&dest).await;
            return Err(e);
        }
        Ok((dest, true))
    }

    /// Moves a spooled upload to `rel`.
    pub async fn import(&self, spooled: &Path, rel: &str) -> StoreResult<()> {
        match &self.remote {
            None => {
                let dest = self.root.join(rel);
                tokio::fs::create_dir_all(dest.parent().expect("a storage path has a parent")).await?;
                tokio::fs::rename(spooled, &dest).await?;
            }
            Some(r) => {
                let size = tokio::fs::metadata(spooled).await?.len();
                let file = tokio::fs::File::open(spooled).await?;
                r.put_verified(rel, tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024), size).await?;
                tokio::fs::remove_file(spooled).await?;
            }
        }
        Ok(())
    }

    /// Writes a small file in one step (readers never see it half written).
    pub async fn write(&self, rel: &str, bytes: Vec<u8>) -> StoreResult<()> {
        match &self.remote {
            None => {
                let (tmp, dest) = (self.root.join(temp_path(rel)), self.root.join(rel));
                for dir in [tmp.parent(), dest.parent()].into_iter().flatten() {
                    tokio::fs::create_dir_all(dir).await?;
                }
                tokio::fs::write(&tmp, &bytes).await?;
                tokio::fs::rename(&tmp, dest).await?;
            }
            Some(r) => {
                let size = bytes.len() as u64;
                r.put_verified(rel, futures_util::stream::once(std::future::ready(Ok(Bytes::from(bytes)))), size).await?;
            }
        }
        Ok(())
    }

    /// Reads a small stored file (playlists, reports), at most `limit` bytes.
    pub async fn read(&self, rel: &str, limit: u64) -> StoreResult<Vec<u8>> {
        let bytes = match &self.remote {
            None => tokio::fs::read(self.root.join(rel)).await?,
            Some(r) => {
                let resp = r.send("GET", rel, None).await?;
                r.expect_ok("GET", rel, &resp)?;
                let body = r.body(resp).try_fold(Vec::new(), |mut all, chunk| {
                    all.extend_from_slice(&chunk);
                    std::future::ready(Ok(all))
                });
                body.await.map_err(|e| r.error("GET", rel, e.to_string()))?
            }
        };
        if bytes.len() as u64 > limit {
            return Err(StoreError::Io(std::io::Error::other(format!("{rel} is larger than {limit} bytes"))));
        }
        Ok(bytes)
    }

    /// The size of a stored file, or `None` if it is not there.
    pub async fn size(&self, rel: &str) -> StoreResult<Option<u64>> {
        match &self.remote {
            None => {
                let path = self.root.join(rel);
                Ok(local_io(true, move || file_size(&path)).await?)
            }
            Some(r) => {
                let resp = r.send("HEAD", rel, None).await?;
                if resp.status().as_u16() == 404 {
                    return Ok(None);
                }
                r.expect_ok("HEAD", rel, &resp)?;
                Ok(resp.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()))
            }
        }
    }

    /// The sizes of the files `names` in the directory `dir` (`None` for one that is
    /// not there); in one call of [`local_io`] when local.
    pub async fn sizes(&self, dir: &str, names: &[&str]) -> StoreResult<Vec<Option<u64>>> {
        match &self.remote {
            None => {
                let dir = self.root.join(dir);
                let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
                Ok(local_io(names.len() <= FEW_FILES, move || names.iter().map(|n| file_size(&dir.join(n))).collect()).await?)
            }
            Some(_) => {
                let mut sizes = Vec::with_capacity(names.len());
                for n in names {
                    sizes.push(self.size(&format!("{dir}/{n}")).await?);
                }
                Ok(sizes)
            }
        }
    }

    /// The size and sha256 of a stored file, read back in full; `None` if it is not there.
    pub async fn checksum(&self, rel: &str) -> StoreResult<Option<(u64, String)>> {
        use sha2::Digest;
        let mut hash = sha2::Sha256::new();
        let mut size = 0u64;
        match &self.remote {
            None => {
                use tokio::io::AsyncReadExt;
                let mut f = match tokio::fs::File::open(self.root.join(rel)).await {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(e.into()),
                };
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let n = f.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    hash.update(&buf[..n]);
                    size += n as u64;
                }
            }
            Some(r) => {
                let resp = r.send("GET", rel, None).await?;
                if resp.status().as_u16() == 404 {
                    return Ok(None);
                }
                r.expect_ok("GET", rel, &resp)?;
                let mut body = std::pin::pin!(r.body(resp));
                while let Some(chunk) = body.try_next().await.map_err(|e| r.error("GET", rel, e.to_string()))? {
                    hash.update(&chunk);
                    size += chunk.len() as u64;
                }
            }
        }
        Ok(Some((size, hex::encode(hash.finalize()))))
    }

    /// Promotes an accepted attempt, idempotently: moves its staging directory into
    /// place if it is still there (it holds `first`), removing every other
    /// attempt's leftovers (partial uploads of lost leases), then returns the sizes
    /// of `names` at the final place (`None` for one that is not there). Local, it
    /// is one call of [`local_io`], on the runtime's thread for a first attempt
    /// with few files (nothing else to remove).
    pub async fn promote(
        &self,
        job: &str,
        kind: TaskKind,
        name: &str,
        epoch: i64,
        first: &str,
        names: &[&str],
    ) -> StoreResult<Vec<Option<u64>>> {
        let final_dir = output_dir(job, kind, name);
        let staging = staging_dir(job, name, epoch);
        match &self.remote {
            None => {
                let _turn = self.promoting.turn(&final_dir).await;
                let root = self.root.clone();
                let (first, names) = (first.to_string(), names.iter().map(|n| n.to_string()).collect::<Vec<_>>());
                let (job, name) = (job.to_string(), name.to_string());
                let small = epoch == 1 && names.len() <= FEW_FILES;
                local_io(small, move || -> std::io::Result<Vec<Option<u64>>> {
                    let target = root.join(&final_dir);
                    if file_size(&root.join(&staging).join(&first)).is_some() {
                        if std::fs::metadata(&target).is_ok() {
                            std::fs::remove_dir_all(&target)?;
                        }
                        if kind.is_part() {
                            std::fs::create_dir_all(target.parent().expect("a job's directory"))?;
                        }
                        std::fs::rename(root.join(&staging), &target)?;
                        // Earlier epochs are the only other attempts. `.staging` itself stays
                        // for the job's other tasks; the job's sweep removes it at its end.
                        for e in 1..epoch {
                            let _ = std::fs::remove_dir_all(root.join(staging_dir(&job, &name, e)));
                        }
                    }
                    Ok(names.iter().map(|n| file_size(&target.join(n))).collect())
                })
                .await?
                .map_err(StoreError::from)
            }
            Some(r) => {
                if self.size(&format!("{staging}/{first}")).await?.is_some() {
                    // MOVE onto an existing collection replaces it (Overwrite: T).
                    let dest = format!("{}/{final_dir}/", r.base);
                    let from = format!("{staging}/");
                    if kind.is_part() {
                        r.mkcol_parents(&final_dir).await?;
                    }
                    let resp = r.move_to(&from, &dest).await?;
                    if resp.status() == reqwest::StatusCode::NOT_FOUND {
                        // Gone since the HEAD: another coordinator redoing this promotion
                        // moved it first. Its files in place are the promotion; until
                        // they all are, it stays owed.
                        let sizes = self.sizes(&final_dir, names).await?;
                        if sizes.iter().any(Option::is_none) {
                            return Err(r.error("MOVE", &from, "HTTP 404: another promotion of it is moving its files".into()));
                        }
                        return Ok(sizes);
                    }
                    r.expect_ok("MOVE", &from, &resp)?;
                    // No PROPFIND on nginx: earlier epochs are the only other attempts.
                    for e in 1..epoch {
                        r.delete(&format!("{}/", staging_dir(job, name, e))).await?;
                    }
                }
                self.sizes(&final_dir, names).await
            }
        }
    }

    /// A streaming GET from the external store, passing `headers` (Range and
    /// conditional ones) through; the caller relays status and body (which fails
    /// once the store stops sending it).
    pub async fn get_remote(
        &self,
        rel: &str,
        headers: &[(&str, &[u8])],
    ) -> StoreResult<(reqwest::StatusCode, reqwest::header::HeaderMap, impl futures_util::Stream<Item = std::io::Result<Bytes>> + use<>)>
    {
        let r = self.remote.as_ref().ok_or_else(|| StoreError::Io(std::io::Error::other("storage is local")))?;
        let mut req = r.http.get(r.url(rel)).timeout(Duration::from_secs(3600));
        if let Some(a) = &r.authorization {
            req = req.header("authorization", a);
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let resp = unless_stalled(&Progress::new(), r.stall, req.send())
            .await
            .map_err(|s| r.error("GET", rel, s.to_string()))?
            .map_err(|e| r.error("GET", rel, e.to_string()))?;
        Ok((resp.status(), resp.headers().clone(), r.body(resp)))
    }

    /// Removes a job's whole directory (a source stored for a job that was not made).
    pub async fn remove_job_dir(&self, job: &str) -> StoreResult<()> {
        self.remove_dir(&format!("jobs/{job}")).await
    }

    /// Removes a job's work in progress, at its end: its staging area, a chunked
    /// job's chunks, which its joins have used, and the audio packets its
    /// renditions muxed (a retry encodes the audio again).
    pub async fn remove_staging(&self, job: &str) -> StoreResult<()> {
        self.remove_dir(&format!("jobs/{job}/.staging")).await?;
        self.remove_dir(&format!("jobs/{job}/{PARTS}")).await?;
        let packets = format!("jobs/{job}/{AUDIO_DIR}/{AUDIO_PACKETS}");
        match &self.remote {
            None => match tokio::fs::remove_file(self.root.join(&packets)).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
                _ => Ok(()),
            },
            Some(r) => r.delete(&packets).await,
        }
    }

    /// Stores a stream of exactly `size` bytes at `rel`, never holding it in memory;
    /// nothing is at `rel` unless all of it arrived.
    pub async fn put_stream<S>(&self, rel: &str, stream: S, size: u64) -> StoreResult<()>
    where
        S: futures_util::Stream<Item = Result<axum::body::Bytes, std::io::Error>> + Send + 'static,
    {
        match &self.remote {
            None => {
                let (tmp, dest) = (self.root.join(temp_path(rel)), self.root.join(rel));
                for dir in [tmp.parent(), dest.parent()].into_iter().flatten() {
                    tokio::fs::create_dir_all(dir).await?;
                }
                let written: StoreResult<()> = async {
                    let mut file = tokio::fs::File::create(&tmp).await?;
                    write_whole(&mut file, stream, rel, size).await?;
                    file.sync_all().await?;
                    Ok(())
                }
                .await;
                if let Err(e) = written {
                    let _ = tokio::fs::remove_file(&tmp).await;
                    return Err(e);
                }
                tokio::fs::rename(&tmp, dest).await?;
                Ok(())
            }
            Some(r) => r.put_verified(rel, stream, size).await,
        }
    }

    /// Whether the store is the coordinator's own disk (not external WebDAV).
    pub fn is_local(&self) -> bool {
        self.remote.is_none()
    }

    /// Local store only: writes the `size` bytes of `stream` into `rel` at
    /// `offset` (creating the file), durably. Bytes past them are left as they were.
    pub async fn write_at<S>(&self, rel: &str, offset: u64, stream: S, size: u64) -> StoreResult<()>
    where
        S: futures_util::Stream<Item = Result<axum::body::Bytes, std::io::Error>> + Send + 'static,
    {
        use tokio::io::AsyncSeekExt;
        if self.remote.is_some() {
            return Err(std::io::Error::other("writing in place needs the local store").into());
        }
        let path = self.root.join(rel);
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        let mut file = tokio::fs::OpenOptions::new().write(true).create(true).truncate(false).open(&path).await?;
        file.seek(std::io::SeekFrom::Start(offset)).await?;
        write_whole(&mut file, stream, rel, size).await?;
        file.sync_data().await?;
        Ok(())
    }

    /// Joins an upload's stored parts, in order, into `rel` of `size` bytes,
    /// streaming: no part is ever read whole into memory. A part is a path and its
    /// bytes. Consecutive parts of one path are one file written in place
    /// ([`Store::write_at`]), and its share is its first bytes, as many as theirs
    /// (a PATCH cut short may have left more). An upload written in place on a
    /// local store becomes `rel` by a rename. On another store it is read once, as
    /// it is when the store moved (a local farm's upload finished on WebDAV).
    pub async fn concat(&self, parts: &[(String, u64)], rel: &str, size: u64) -> StoreResult<()> {
        let mut files: Vec<(String, u64)> = Vec::new();
        for (path, bytes) in parts {
            match files.last_mut() {
                Some((last, share)) if last == path => *share += bytes,
                _ => files.push((path.clone(), *bytes)),
            }
        }
        match &self.remote {
            None if files.len() == 1 => self.adopt(&files[0].0, rel, size).await,
            None => {
                let root = self.root.clone();
                let stream = futures_util::stream::iter(files)
                    .then(move |(path, share)| {
                        let path = root.join(path);
                        async move {
                            use tokio::io::AsyncReadExt as _;
                            let file = tokio::fs::File::open(path).await?;
                            Ok::<_, std::io::Error>(tokio_util::io::ReaderStream::with_capacity(file.take(share), 256 * 1024))
                        }
                    })
                    .try_flatten();
                self.put_stream(rel, stream, size).await
            }
            Some(r) => {
                let remote = r.clone();
                let stream = futures_util::stream::iter(files)
                    .then(move |(path, share)| {
                        let remote = remote.clone();
                        async move {
                            let range = format!("bytes=0-{}", share.saturating_sub(1));
                            let resp = remote.send("GET", &path, Some(("range", &range))).await.map_err(std::io::Error::other)?;
                            remote.expect_ok("GET", &path, &resp).map_err(std::io::Error::other)?;
                            // A server that ignores the range sends the whole file.
                            Ok::<_, std::io::Error>(first_bytes(remote.body(resp), share))
                        }
                    })
                    .try_flatten();
                self.put_stream(rel, stream, size).await
            }
        }
    }

    /// Makes the local file `from` (its first `size` bytes) the file `rel`, by a rename.
    async fn adopt(&self, from: &str, rel: &str, size: u64) -> StoreResult<()> {
        let (src, dest) = (self.root.join(from), self.root.join(rel));
        match tokio::fs::OpenOptions::new().write(true).open(&src).await {
            Ok(file) => {
                let len = file.metadata().await?.len();
                if len < size {
                    return Err(std::io::Error::other(format!("{from}: {len} bytes, not {size}")).into());
                }
                // A PATCH cut short may have left bytes past the last recorded part.
                file.set_len(size).await?;
                file.sync_all().await?;
                if let Some(dir) = dest.parent() {
                    tokio::fs::create_dir_all(dir).await?;
                }
                tokio::fs::rename(&src, &dest).await?;
                Ok(())
            }
            // A join cut short after its rename: the file is already in place.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && tokio::fs::metadata(&dest).await.is_ok_and(|m| m.len() == size) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes a stored file; one that is not there is no error.
    pub async fn remove(&self, rel: &str) -> StoreResult<()> {
        match &self.remote {
            None => match tokio::fs::remove_file(self.root.join(rel)).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
                _ => Ok(()),
            },
            Some(r) => r.delete(rel).await,
        }
    }

    /// Removes a directory and everything in it; one that is not there is no error.
    pub async fn remove_tree(&self, rel: &str) -> StoreResult<()> {
        self.remove_dir(rel).await
    }

    /// Removes a directory and everything in it; one that is not there is no error.
    async fn remove_dir(&self, rel: &str) -> StoreResult<()> {
        match &self.remote {
            None => match tokio::fs::remove_dir_all(self.root.join(rel)).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
                _ => Ok(()),
            },
            Some(r) => r.delete(&format!("{rel}/")).await,
        }
    }
}

impl Remote {
    fn url(&self, rel: &str) -> String {
        format!("{}/{}", self.base, rel.trim_start_matches('/'))
    }

    fn error(&self, method: &str, rel: &str, message: String) -> StoreError {
        StoreError::Http { method: method.into(), url: self.url(rel), message }
    }

    fn expect_ok(&self, method: &str, rel: &str, resp: &reqwest::Response) -> StoreResult<()> {
        if resp.status().is_success() { Ok(()) } else { Err(self.error(method, rel, format!("HTTP {}", resp.status()))) }
    }

    /// A request without a body, whose answer must come within the stall limit.
    async fn send(&self, method: &str, rel: &str, header: Option<(&str, &str)>) -> StoreResult<reqwest::Response> {
        self.unless_stalled(method, rel, &Progress::new(), self.request(method, rel, header, None)).await
    }

    /// MOVEs `rel` to the URL `dest`. Nothing moves on the connection meanwhile, and
    /// a store without renames copies on its side, so the answer may take up to
    /// `MOVE_WITHIN` rather than the stall limit.
    async fn move_to(&self, rel: &str, dest: &str) -> StoreResult<reqwest::Response> {
        let moved = self.request("MOVE", rel, Some(("destination", dest)), None);
        tokio::time::timeout(MOVE_WITHIN, moved)
            .await
            .unwrap_or_else(|_| Err(self.error("MOVE", rel, format!("no answer within {MOVE_WITHIN:?}"))))
    }

    /// Fails `work` once the transfer `progress` follows has not moved for the stall limit.
    async fn unless_stalled<T>(
        &self,
        method: &str,
        rel: &str,
        progress: &Progress,
        work: impl std::future::Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        unless_stalled(progress, self.stall, work).await.unwrap_or_else(|s| Err(self.error(method, rel, s.to_string())))
    }

    /// A response's body, which fails once it has not moved for the stall limit.
    fn body(&self, resp: reqwest::Response) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + use<> {
        watched(resp.bytes_stream().map_err(std::io::Error::other), self.stall)
    }

    async fn request(
        &self,
        method: &str,
        rel: &str,
        header: Option<(&str, &str)>,
        body: Option<reqwest::Body>,
    ) -> StoreResult<reqwest::Response> {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("a WebDAV method name");
        let mut req = self.http.request(m, self.url(rel)).timeout(Duration::from_secs(3600));
        if let Some(a) = &self.authorization {
            req = req.header("authorization", a);
        }
        if let Some((k, v)) = header {
            req = req.header(k, v);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        req.send().await.map_err(|e| self.error(method, rel, e.to_string()))
    }

    async fn delete(&self, rel: &str) -> StoreResult<()> {
        let resp = self.send("DELETE", rel, None).await?;
        if resp.status().as_u16() == 404 { Ok(()) } else { self.expect_ok("DELETE", rel, &resp) }
    }

    /// Creates every parent collection of `rel` (405: it exists already).
    async fn mkcol_parents(&self, rel: &str) -> StoreResult<()> {
        let mut path = String::new();
        let segments: Vec<&str> = rel.split('/').filter(|s| !s.is_empty()).collect();
        for seg in &segments[..segments.len().saturating_sub(1)] {
            path = if path.is_empty() { seg.to_string() } else { format!("{path}/{seg}") };
            let dir = format!("{path}/");
            let resp = self.send("MKCOL", &dir, None).await?;
            if !(resp.status().is_success() || resp.status().as_u16() == 405) {
                return Err(self.error("MKCOL", &dir, format!("HTTP {}", resp.status())));
            }
        }
        Ok(())
    }

    /// PUT under a temporary name, check the stored size, MOVE into place: a
    /// WebDAV PUT is not atomic, so nothing is ever written at its final name.
    async fn put_verified<S>(&self, rel: &str, stream: S, size: u64) -> StoreResult<()>
    where
        S: futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    {
        self.mkcol_parents(rel).await?;
        let temp = temp_path(rel);
        self.mkcol_parents(&temp).await?;
        let progress = Progress::new();
        let body = reqwest::Body::wrap_stream(progress.counting(stream));
        let length = size.to_string();
        let put = self.request("PUT", &temp, Some(("content-length", &length)), Some(body));
        let resp = self.unless_stalled("PUT", &temp, &progress, put).await?;
        self.expect_ok("PUT", &temp, &resp)?;
        let head = self.send("HEAD", &temp, None).await?;
        let stored: Option<u64> = head.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        if stored != Some(size) {
            let _ = self.delete(&temp).await;
            return Err(self.error("PUT", &temp, format!("stored {stored:?} bytes of {size}")));
        }
        let resp = self.move_to(&temp, &self.url(rel)).await?;
        self.expect_ok("MOVE", &temp, &resp)
    }
}

/// Where a file is written before it is moved to `rel`: a name of its own per
/// write, so two writers never share one; for a job's file, inside the job's
/// staging area, which the job's sweep removes with whatever a crash left there.
/// Writes all of `stream` into `file` (for `rel`), which must come to `size` bytes.
async fn write_whole<S>(file: &mut tokio::fs::File, stream: S, rel: &str, size: u64) -> StoreResult<()>
where
    S: futures_util::Stream<Item = Result<axum::body::Bytes, std::io::Error>>,
{
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    let mut got = 0u64;
    let mut stream = std::pin::pin!(stream);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        got += chunk.len() as u64;
        file.write_all(&chunk).await?;
    }
    if got != size {
        return Err(std::io::Error::other(format!("{rel}: got {got} of {size} bytes")).into());
    }
    Ok(())
}

/// The first `n` bytes of a stream, which ends there.
fn first_bytes<S>(stream: S, n: u64) -> impl futures_util::Stream<Item = std::io::Result<axum::body::Bytes>>
where
    S: futures_util::Stream<Item = std::io::Result<axum::body::Bytes>>,
{
    stream.scan(n, |left, chunk| {
        let next = match chunk {
            Ok(_) if *left == 0 => None,
            Ok(mut bytes) => {
                bytes.truncate(bytes.len().min(*left as usize));
                *left -= bytes.len() as u64;
                Some(Ok(bytes))
            }
            Err(e) => Some(Err(e)),
        };
        futures_util::future::ready(next)
    })
}

fn temp_path(rel: &str) -> String {
    let unique = uuid::Uuid::now_v7().simple();
    let mut parts = rel.splitn(3, '/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("jobs"), Some(job), Some(rest)) => format!("jobs/{job}/.staging/.{}.part-{unique}", rest.replace('/', "-")),
        _ => {
            let (dir, name) = rel.rsplit_once('/').unwrap_or(("", rel));
            format!("{dir}/.{name}.part-{unique}")
        }
    }
}

/// Storage path of an uploaded source.
pub fn source_path(job: &str) -> String {
    format!("jobs/{job}/source")
}

/// Final storage directory of one task's outputs: the job's directory for what is
/// published, [`PARTS`] for the chunks and audio only joins read.
pub fn output_dir(job: &str, kind: TaskKind, name: &str) -> String {
    if kind.is_part() { format!("jobs/{job}/{PARTS}/{name}") } else { format!("jobs/{job}/{name}") }
}

/// Where a chunked job's parts live until it ends, out of its published tree.
pub const PARTS: &str = ".chunks";

/// The job's audio task's directory (its tasks are named so): published, every
/// track's HLS, and `audio.pkts` for the renditions' MP4s until the job ends.
pub const AUDIO_DIR: &str = "audio";
/// The audio packets in [`AUDIO_DIR`]: never published, removed when the job ends.
pub const AUDIO_PACKETS: &str = "audio.pkts";

/// Where the holder of lease `epoch` publishes. Only the epoch whose completion the
/// queue accepts is promoted to [`output_dir`], so a worker that lost its lease can
/// never overwrite the outputs of the one that holds it now.
pub fn staging_dir(job: &str, name: &str, epoch: i64) -> String {
    format!("jobs/{job}/.staging/{name}.e{epoch}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_told_from_other_storage_trouble() {
        // /dev/full answers every write with ENOSPC, as a full disk does.
        use std::io::Write as _;
        let e = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap().write_all(b"x").unwrap_err();
        assert!(StoreError::Io(e).is_out_of_space());
        let denied = std::fs::File::open("/nonexistent/drake").unwrap_err();
        assert!(!StoreError::Io(denied).is_out_of_space());
        let http = |message: &str| StoreError::Http { method: "PUT".into(), url: "http://store/x".into(), message: message.into() };
        assert!(http("HTTP 507 Insufficient Storage").is_out_of_space());
        assert!(!http("HTTP 503 Service Unavailable").is_out_of_space());
    }

    #[tokio::test]
    async fn a_store_that_cannot_be_reached_is_told_from_one_that_refuses() {
        let http = |message: &str| StoreError::Http { method: "GET".into(), url: "http://store/x".into(), message: message.into() };
        // What reqwest says of a connection that is refused, reset or timed out.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let refused = reqwest::get(format!("http://{closed}/x")).await.unwrap_err().to_string();
        for unreachable in [refused.as_str(), "got 10 of 100 bytes", "HTTP 503 Service Unavailable", "HTTP 502 Bad Gateway"] {
            assert!(http(unreachable).is_unreachable(), "{unreachable}");
        }
        for refusal in ["HTTP 404 Not Found", "HTTP 403 Forbidden", "HTTP 507 Insufficient Storage"] {
            assert!(!http(refusal).is_unreachable(), "{refusal}");
        }
        assert!(!StoreError::Io(std::io::Error::other("local")).is_unreachable());
    }

    #[tokio::test]
    async fn a_promotion_lock_is_forgotten_by_the_last_to_hold_or_leave_it() {
        let promoting = Arc::new(Promoting::default());
        let dir = "jobs/j/240p";
        // Held, then handed to a second that waited for it.
        let first = promoting.turn(dir).await;
        let mut second = Box::pin(promoting.turn(dir));
        assert!(futures_util::poll!(second.as_mut()).is_pending(), "the second waits its turn");
        drop(first);
        drop(second.await);
        assert!(promoting.0.lock().unwrap().is_empty(), "no lock is left behind");
        // Held, and a wait given up (a promotion past its deadline) after the
        // holder is done: the one who leaves last forgets it.
        let first = promoting.turn(dir).await;
        let mut second = Box::pin(promoting.turn(dir));
        assert!(futures_util::poll!(second.as_mut()).is_pending());
        drop(first);
        drop(second);
        assert!(promoting.0.lock().unwrap().is_empty(), "no lock is left behind by a wait given up");
        // And the lock still works for the next.
        drop(tokio::time::timeout(Duration::from_secs(10), promoting.turn(dir)).await.expect("a turn"));
    }

    /// A store on a real socket that reads each request's head, answers it with
    /// `answer` (nothing, for `None`), and then neither sends nor closes.
    fn hanging_store(answer: Option<&'static [u8]>) -> String {
        use std::io::{BufRead as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming() {
                let mut conn = conn.unwrap();
                let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap() > 2 {
                    line.clear();
                }
                if let Some(answer) = answer {
                    conn.write_all(answer).unwrap();
                }
                held.push(conn);
            }
        });
        base
    }

    /// `what`'s outcome, which must come within a few seconds.
    async fn timed<T>(what: impl std::future::Future<Output = T>) -> T {
        let started = std::time::Instant::now();
        let out = tokio::time::timeout(Duration::from_secs(20), what).await.expect("not held");
        assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
        out
    }

    #[tokio::test]
    async fn a_store_that_stops_moving_fails_its_transfers_soon_as_unreachable() {
        let stall = Duration::from_secs(1);
        let dir = tempfile::tempdir().unwrap();
        // A GET whose body stops after its first bytes: a finalize's checksum, a probe's copy.
        let slow = Store::remote(
            dir.path().into(),
            &hanging_store(Some(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\nfirst bytes")),
            None,
            stall,
        )
        .unwrap();
        let err = timed(slow.checksum("jobs/j/240p/v.mp4")).await.unwrap_err();
        assert!(err.is_unreachable() && err.to_string().contains("stalled"), "{err}");
        let err = timed(slow.local_copy("jobs/j/source", dir.path())).await.unwrap_err();
        assert!(err.is_unreachable() && err.to_string().contains("stalled"), "{err}");
        let (_, _, body) = timed(slow.get_remote("jobs/j/240p/v.mp4", &[])).await.unwrap();
        let err = timed(body.try_collect::<Vec<Bytes>>()).await.unwrap_err();
        assert!(err.to_string().contains("stalled"), "{err}");
        // A store that takes requests and never answers: an upload's MKCOL, a read.
        let mute = Store::remote(dir.path().into(), &hanging_store(None), None, stall).unwrap();
        let err = timed(mute.write("jobs/j/manifest.json", b"{}".to_vec())).await.unwrap_err();
        assert!(err.is_unreachable() && err.to_string().contains("MKCOL") && err.to_string().contains("stalled"), "{err}");
        let err = timed(mute.read("jobs/j/240p/index.m3u8", 1000)).await.unwrap_err();
        assert!(err.is_unreachable() && err.to_string().contains("stalled"), "{err}");
    }
}
