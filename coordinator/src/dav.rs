//! The coordinator's own WebDAV server under `/dav/` (dav-server over the data dir's
//! `storage/`), behind the same bearer tokens as the API, and stored files as HTTP
//! responses for the dashboard. The HTTP side of storage; [`crate::storage`] is the
//! store itself and knows nothing of requests.

use crate::auth::{Role, bearer};
use crate::error::ApiError;
use crate::state::{AppState, now_ms};
use crate::storage::{FEW_BYTES, StoreError, local_io};
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use dav_server::{DavConfig, DavHandler, localfs::LocalFs, memls::MemLs};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

pub fn handler(root: &Path) -> DavHandler {
    DavHandler::builder()
        .filesystem(LocalFs::new(root, false, false, false))
        .locksystem(MemLs::new())
        .strip_prefix("/dav")
        .read_buf_size(256 * 1024)
        .build_handler()
}

pub fn routes() -> Router<AppState> {
    Router::new().route("/dav", any(dav)).route("/dav/", any(dav)).route("/dav/{*path}", any(dav))
}

/// A stored file as an HTTP response for a signed-in browser (the dashboard's
/// player and images): GET with the request's `Range` and conditional headers,
/// served from the data dir by dav-server or fetched from the external store.
pub async fn read_response(st: &AppState, rel: &str, headers: &axum::http::HeaderMap) -> Result<Response, StoreError> {
    const PASSED: [&str; 3] = ["range", "if-none-match", "if-modified-since"];
    match st.storage.is_remote() {
        false => {
            let mut req = axum::http::Request::builder().method("GET").uri(format!("/dav/{rel}"));
            for h in PASSED {
                if let Some(v) = headers.get(h) {
                    req = req.header(h, v);
                }
            }
            let req = req.body(axum::body::Body::empty()).map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
            Ok(st.dav.handle(req).await.into_response())
        }
        true => {
            let passed: Vec<(&str, &[u8])> = PASSED.iter().filter_map(|h| headers.get(*h).map(|v| (*h, v.as_bytes()))).collect();
            let (status, headers, body) = st.storage.get_remote(rel, &passed).await?;
            let mut out = Response::builder().status(status.as_u16());
            for h in ["content-type", "content-length", "content-range", "accept-ranges", "etag", "last-modified"] {
                if let Some(v) = headers.get(h) {
                    out = out.header(h, v.as_bytes());
                }
            }
            out.body(axum::body::Body::from_stream(body)).map_err(|e| StoreError::Io(std::io::Error::other(e)))
        }
    }
}

const READ_METHODS: &[&str] = &["GET", "HEAD", "OPTIONS", "PROPFIND"];

/// True when a request path stays inside the served tree and out of `uploads/`.
pub fn path_allowed(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/dav") else {
        return false;
    };
    let decoded = percent_decode(rest);
    !decoded.split('/').any(|seg| seg == ".." || seg == ".")
        && !decoded.contains('\\')
        && !decoded.contains('\0')
        && !decoded.trim_start_matches('/').starts_with("uploads")
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn dav(State(st): State<AppState>, req: Request) -> Response {
    if st.storage.is_remote() {
        let why = "storage is on an external WebDAV server; see the jobs' output URLs";
        return ApiError::Queue(crate::queue::QueueError::NotFound(why.into())).into_response();
    }
    let (parts, body) = req.into_parts();
    let caller = match bearer(&parts) {
        Some(t) => st.queue.authenticate(t, now_ms()).await.ok().flatten(),
        None => None,
    };
    let Some(caller) = caller else {
        return ApiError::Unauthorized.into_response();
    };
    let read_only = READ_METHODS.contains(&parts.method.as_str());
    // MOVE and COPY name a second path in the Destination header; check it too.
    let destination = parts.headers.get("destination").map(|v| {
        let d = v.to_str().unwrap_or("");
        d.find("/dav").map(|i| d[i..].to_string()).unwrap_or_default()
    });
    if !path_allowed(parts.uri.path())
        || destination.as_deref().is_some_and(|d| !path_allowed(d))
        || parts.method == Method::from_bytes(b"PROPPATCH").expect("method")
    {
        return ApiError::Forbidden.into_response();
    }
    let allowed = match caller.role {
        Role::Admin => true,
        Role::Submit => {
            // A pipeline reads its own jobs' outputs only.
            let path = percent_decode(parts.uri.path().trim_start_matches("/dav"));
            let job = path.split('/').filter(|s| !s.is_empty()).collect::<Vec<_>>();
            read_only
                && match job.as_slice() {
                    ["jobs", id, _, ..] => {
                        st.queue.job_pipeline(id).await.ok().flatten().is_some_and(|p| Some(p.as_str()) == caller.label.as_deref())
                    }
                    _ => false,
                }
        }
        Role::Worker => {
            let worker = caller.label.as_deref().unwrap_or_default();
            let path = percent_decode(parts.uri.path().trim_start_matches("/dav"));
            let dest = destination.map(|d| percent_decode(d.trim_start_matches("/dav")));
            worker_may(&st, worker, parts.method.as_str(), &path, dest.as_deref()).await
        }
        Role::Join => false,
    };
    if !allowed {
        return ApiError::Forbidden.into_response();
    }
    if caller.role == Role::Worker && matches!(parts.method.as_str(), "MKCOL" | "PUT") {
        let rel = percent_decode(parts.uri.path().trim_start_matches("/dav")).trim_start_matches('/').to_string();
        return write_direct(st.storage.root(), &parts.method, &rel, &parts.headers, body).await;
    }
    let principal = caller.label.unwrap_or_else(|| caller.role.as_str().to_string());
    let req = Request::from_parts(parts, body);
    st.dav.handle_with(DavConfig::new().principal(principal), req).await.into_response()
}

/// A PUT's body is written to its file in pieces of this size: a smaller body is
/// one call of [`local_io`], opening the file included.
const WRITE_PIECE: usize = 1024 * 1024;

/// A worker's MKCOL or PUT (always inside its staging directory, see
/// [`worker_may`]), done here rather than by dav-server. Its `LocalFs` runs every
/// filesystem call of a request in `block_in_place`, each handing the runtime
/// thread's work to another thread: five for a small PUT. Here a MKCOL, or a PUT
/// of up to [`FEW_BYTES`], runs on the runtime's thread, and a larger PUT makes
/// one trip to the blocking pool per [`WRITE_PIECE`]. The answers are
/// WebDAV's (RFC 4918): 201 made, 204 replaced, 405 a collection is there, 409
/// the parent is missing, 415 a MKCOL with a body.
async fn write_direct(root: &Path, method: &Method, rel: &str, headers: &HeaderMap, body: Body) -> Response {
    let path = root.join(rel);
    let status = match method.as_str() {
        "MKCOL" => {
            let has_body = declared_length(headers).is_some_and(|n| n > 0) || headers.contains_key("transfer-encoding");
            if has_body {
                return StatusCode::UNSUPPORTED_MEDIA_TYPE.into_response();
            }
            match local_io(true, move || std::fs::create_dir(&path)).await.and_then(|r| r) {
                Ok(()) => StatusCode::CREATED,
                Err(e) if e.kind() == ErrorKind::AlreadyExists => StatusCode::METHOD_NOT_ALLOWED,
                Err(e) => io_status(&e),
            }
        }
        _ => match put_file(path, declared_length(headers), body).await {
            Ok(true) => StatusCode::NO_CONTENT,
            Ok(false) => StatusCode::CREATED,
            Err(e) if e.kind() == ErrorKind::IsADirectory => StatusCode::METHOD_NOT_ALLOWED,
            Err(e) => io_status(&e),
        },
    };
    status.into_response()
}

/// A request's Content-Length, if it gave one.
fn declared_length(headers: &HeaderMap) -> Option<usize> {
    headers.get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

/// Writes a PUT's body to `path`: true when it replaced a file. A body that breaks
/// off leaves no file behind.
async fn put_file(path: PathBuf, declared: Option<usize>, body: Body) -> std::io::Result<bool> {
    use futures_util::StreamExt as _;
    struct Open {
        file: std::fs::File,
        replaced: bool,
    }
    // One call of `local_io`: opens the file on the first piece, then writes the piece.
    async fn write(path: &Path, open: Option<Open>, piece: Vec<u8>) -> std::io::Result<(Open, Vec<u8>)> {
        let path = path.to_path_buf();
        local_io(piece.len() <= FEW_BYTES, move || {
            let mut open = match open {
                Some(o) => o,
                None => {
                    let replaced = match std::fs::symlink_metadata(&path) {
                        Ok(m) if m.is_dir() => return Err(ErrorKind::IsADirectory.into()),
                        Ok(_) => true,
                        Err(_) => false,
                    };
                    Open { file: std::fs::File::create(&path)?, replaced }
                }
            };
            std::io::Write::write_all(&mut open.file, &piece)?;
            let mut piece = piece;
            piece.clear();
            Ok((open, piece))
        })
        .await?
    }
    let mut stream = body.into_data_stream();
    let mut open: Option<Open> = None;
    // Room for the declared body, so that a small one is never copied on the way.
    let mut piece = Vec::with_capacity(declared.unwrap_or(0).min(WRITE_PIECE));
    loop {
        let next = match stream.next().await.transpose() {
            Ok(next) => next,
            Err(e) => {
                // The client broke off: no partial file stays (nor after a failed write).
                if open.is_some() {
                    let _ = tokio::fs::remove_file(&path).await;
                }
                return Err(std::io::Error::new(ErrorKind::ConnectionAborted, e));
            }
        };
        let end = next.is_none();
        if let Some(data) = next {
            piece.extend_from_slice(&data);
        }
        if piece.len() >= WRITE_PIECE || (end && (open.is_none() || !piece.is_empty())) {
            match write(&path, open.take(), std::mem::take(&mut piece)).await {
                Ok((o, p)) => (open, piece) = (Some(o), p),
                Err(e) => {
                    if e.kind() != ErrorKind::IsADirectory {
                        let _ = tokio::fs::remove_file(&path).await;
                    }
                    return Err(e);
                }
            }
        }
        if end {
            return Ok(open.is_some_and(|o| o.replaced));
        }
    }
}

/// The status of a failed filesystem call: a missing parent is 409 (RFC 4918).
fn io_status(e: &std::io::Error) -> StatusCode {
    match e.kind() {
        ErrorKind::NotFound => StatusCode::CONFLICT,
        ErrorKind::NotADirectory => StatusCode::CONFLICT,
        // The body broke off.
        ErrorKind::ConnectionAborted => StatusCode::BAD_REQUEST,
        // The disk is full (RFC 4918 9.7.1).
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => StatusCode::INSUFFICIENT_STORAGE,
        _ => {
            proto::log!("coordinator: writing to storage: {e}");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

/// What a worker credential reaches in `/dav/`: it reads the source and the audio
/// packets (`jobs/J/audio/audio.pkts`) of a job it holds a lease of, and the
/// chunks a join lease it holds joins (its rendition's, in `jobs/J/.chunks/`), and
/// writes only inside the staging directory of a lease it holds now (`jobs/J/.staging/NAME.eEPOCH/`), creating its parent collections on
/// the way. Nothing else: not other jobs, not published outputs, not its own
/// earlier epochs, nothing at all once the lease is gone (at once when it ended
/// through this coordinator, within a second through another: see
/// `queue/holds.rs`).
async fn worker_may(st: &AppState, worker: &str, method: &str, path: &str, destination: Option<&str>) -> bool {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let holds = |job: &str, staging: Option<&str>| {
        let (job, staging) = (job.to_string(), staging.map(String::from));
        async move {
            let lease = staging.as_deref().and_then(|s| {
                let (name, epoch) = s.rsplit_once(".e")?;
                Some((name.to_string(), epoch.parse::<i64>().ok()?))
            });
            if staging.is_some() && lease.is_none() {
                return false;
            }
            st.queue.worker_holds(worker, &job, lease.as_ref().map(|(n, e)| (n.as_str(), *e))).await.unwrap_or(false)
        }
    };
    match (method, segments.as_slice()) {
        ("GET" | "HEAD", ["jobs", job, "source"]) => holds(job, None).await,
        // The job's audio packets, which every rendition's MP4 muxes.
        ("GET" | "HEAD", ["jobs", job, crate::storage::AUDIO_DIR, "audio.pkts"]) => holds(job, None).await,
        ("GET" | "HEAD", ["jobs", job, crate::storage::PARTS, part, _file]) => {
            st.queue.worker_joins(worker, job, part).await.unwrap_or(false)
        }
        ("MKCOL", ["jobs"]) => true,
        ("MKCOL", ["jobs", job] | ["jobs", job, ".staging"]) => holds(job, None).await,
        (_, ["jobs", job, ".staging", lease, rest @ ..]) if !matches!(method, "PROPFIND" | "COPY" | "LOCK" | "UNLOCK") => {
            let inside = |p: &str| {
                let s: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
                s.len() == 5 && s[..4] == ["jobs", job, ".staging", lease]
            };
            let shape_ok = match method {
                "MKCOL" => rest.is_empty(),
                "MOVE" => rest.len() == 1 && destination.is_some_and(inside),
                _ => rest.len() == 1,
            };
            shape_ok && holds(job, Some(lease)).await
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside() {
        for (p, ok) in [
            ("/dav/jobs/1/720p/seg_00000.m4s", true),
            ("/dav/", true),
            ("/dav/jobs/../../etc/passwd", false),
            ("/dav/jobs/%2e%2e/%2e%2e/etc", false),
            ("/dav/uploads/x", false),
            ("/dav/jobs/a\\b", false),
            ("/api/v1/jobs", false),
        ] {
            assert_eq!(path_allowed(p), ok, "{p}");
        }
    }

    /// A body of `pieces` data frames, optionally breaking off after them.
    fn body(pieces: Vec<Vec<u8>>, broken: bool) -> Body {
        let mut frames: Vec<Result<Vec<u8>, std::io::Error>> = pieces.into_iter().map(Ok).collect();
        if broken {
            frames.push(Err(std::io::Error::other("the client went away")));
        }
        Body::from_stream(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn direct_writes_answer_as_webdav_does() {
        let root = std::env::temp_dir().join(format!("drake-dav-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(root.join("jobs")).unwrap();
        let (mkcol, put) = (Method::from_bytes(b"MKCOL").unwrap(), Method::PUT);
        let none = HeaderMap::new();
        let status = |r: Response| r.status().as_u16();

        assert_eq!(status(write_direct(&root, &mkcol, "jobs/j/", &none, Body::empty()).await), 201);
        assert_eq!(status(write_direct(&root, &mkcol, "jobs/j", &none, Body::empty()).await), 405, "it is there");
        assert_eq!(status(write_direct(&root, &mkcol, "jobs/x/y/", &none, Body::empty()).await), 409, "no parent");
        let mut with_body = HeaderMap::new();
        with_body.insert("content-length", "3".parse().unwrap());
        assert_eq!(status(write_direct(&root, &mkcol, "jobs/k/", &with_body, Body::from("abc")).await), 415);
        assert!(!root.join("jobs/k").exists());

        // Made, then replaced; a body of several pieces lands byte for byte.
        assert_eq!(status(write_direct(&root, &put, "jobs/j/a", &none, body(vec![b"one".to_vec()], false)).await), 201);
        let big: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 64 * 1024 + 7]).collect();
        let expected: Vec<u8> = big.concat();
        assert!(expected.len() > 2 * WRITE_PIECE);
        assert_eq!(status(write_direct(&root, &put, "jobs/j/a", &none, body(big, false)).await), 204);
        assert_eq!(std::fs::read(root.join("jobs/j/a")).unwrap(), expected);
        assert_eq!(status(write_direct(&root, &put, "jobs/j/empty", &none, Body::empty()).await), 201);
        assert_eq!(std::fs::read(root.join("jobs/j/empty")).unwrap(), b"");

        // Refused: a collection, a missing parent. A body that breaks off leaves nothing.
        assert_eq!(status(write_direct(&root, &put, "jobs/j", &none, body(vec![b"x".to_vec()], false)).await), 405);
        assert!(root.join("jobs/j").is_dir());
        assert_eq!(status(write_direct(&root, &put, "jobs/nope/a", &none, body(vec![b"x".to_vec()], false)).await), 409);
        let pieces = vec![vec![1u8; WRITE_PIECE + 1], vec![2u8; 10]];
        assert_eq!(status(write_direct(&root, &put, "jobs/j/broken", &none, body(pieces, true)).await), 400);
        assert!(!root.join("jobs/j/broken").exists());
        // A full disk is 507 Insufficient Storage, not a server fault.
        assert_eq!(io_status(&std::io::Error::from(ErrorKind::StorageFull)), StatusCode::INSUFFICIENT_STORAGE);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
