//! Resumable uploads: tus 1.0.0 at `/api/v1/uploads/`, with the creation,
//! creation-with-upload, creation-defer-length, termination, expiration and
//! checksum (sha1, sha256) extensions.
//!
//! An upload is a job submission: the same bearer tokens and roles as
//! `POST /api/v1/jobs`, and its metadata (`profile`, `callback_url`, ...) is
//! checked at creation, so a bad profile is refused before a byte is sent. Each
//! PATCH stores its bytes as one object of the store (`tus/ID/...`) and appends
//! it in the database only once all of it arrived (and matched its checksum), so
//! an upload continues through any coordinator and across restarts, on local or
//! WebDAV storage alike. When the offset reaches the length, the parts are joined,
//! streaming, into the job's source and the job is created; a completion cut short
//! is finished by the reconciler ([`finish_owed`]).

use crate::api::{JobFields, allow, check_disk, new_job};
use crate::auth::{Caller, Role, digest};
use crate::error::ApiError;
use crate::state::{AppState, now_ms};
use crate::uploads::{AppendRefused, CreateRefused, Upload};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use futures_util::StreamExt as _;
use serde_json::json;
use sha2::Digest as _;
use std::sync::{Arc, Mutex};

const TUS_VERSION: &str = "1.0.0";
const EXTENSIONS: &str = "creation,creation-with-upload,creation-defer-length,termination,expiration,checksum";
const CHECKSUMS: &str = "sha1,sha256";
const OFFSET_OCTET_STREAM: &str = "application/offset+octet-stream";
/// Longest `Upload-Metadata` header.
const MAX_METADATA_BYTES: usize = 16 * 1024;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/uploads", post(create).options(options))
        .route("/api/v1/uploads/", post(create).options(options))
        .route("/api/v1/uploads/{id}", axum::routing::head(head).patch(patch).delete(terminate).get(get_upload).options(options))
        // A PATCH streams up to the upload limit; `Upload-Length` bounds it.
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::map_response(|mut r: Response| async move {
            r.headers_mut().insert("tus-resumable", HeaderValue::from_static(TUS_VERSION));
            r
        }))
}

/// Who uploads: a bearer token's caller, or the dashboard's upload page, which
/// sends its session's CSRF token in a header (a cookie alone is not enough, so
/// another site's page cannot upload in a signed-in operator's name).
pub struct Uploader(Caller);

/// The owner of uploads made from the dashboard: any signed-in session may resume them.
const DASHBOARD_OWNER: &str = "dashboard session";

impl FromRequestParts<AppState> for Uploader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Uploader, ApiError> {
        if crate::auth::bearer(parts).is_some() {
            return Caller::from_request_parts(parts, st).await.map(Uploader);
        }
        let cookie = crate::sessions::session_cookie(&parts.headers).ok_or(ApiError::Unauthorized)?;
        // The dashboard's own page, on this host.
        if !crate::sessions::same_origin(&parts.headers) {
            return Err(ApiError::Unauthorized);
        }
        let csrf = parts.headers.get(crate::sessions::CSRF_HEADER).and_then(|v| v.to_str().ok()).ok_or(ApiError::Unauthorized)?;
        let session = st.queue.session(cookie, now_ms()).await?.ok_or(ApiError::Unauthorized)?;
        if !crate::sessions::constant_time_eq(session.csrf.as_bytes(), csrf.as_bytes()) {
            return Err(ApiError::Unauthorized);
        }
        // A dashboard session is the operator's, signed in with the admin token.
        Ok(Uploader(Caller { role: Role::Admin, label: None, presented: Some(DASHBOARD_OWNER.into()) }))
    }
}

/// A tus response: its status, headers and a short text body.
struct Answer(StatusCode, Vec<(&'static str, String)>, String);

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut r = (self.0, self.2).into_response();
        for (k, v) in self.1 {
            if let Ok(v) = HeaderValue::from_str(&v) {
                r.headers_mut().insert(k, v);
            }
        }
        r
    }
}

fn refuse(status: StatusCode, why: impl Into<String>) -> Answer {
    Answer(status, vec![], why.into())
}

/// 460 Checksum Mismatch (tus checksum extension).
fn checksum_mismatch() -> StatusCode {
    StatusCode::from_u16(460).expect("a valid status code")
}

async fn options(State(st): State<AppState>) -> Response {
    Answer(
        StatusCode::NO_CONTENT,
        vec![
            ("tus-version", TUS_VERSION.into()),
            ("tus-extension", EXTENSIONS.into()),
            ("tus-max-size", st.limits.max_upload_bytes.to_string()),
            ("tus-checksum-algorithm", CHECKSUMS.into()),
        ],
        String::new(),
    )
    .into_response()
}

/// Every request but OPTIONS names the protocol version it speaks.
fn check_version(headers: &HeaderMap) -> Result<(), Answer> {
    match headers.get("tus-resumable").and_then(|v| v.to_str().ok()) {
        Some(TUS_VERSION) => Ok(()),
        _ => Err(Answer(
            StatusCode::PRECONDITION_FAILED,
            vec![("tus-version", TUS_VERSION.into())],
            format!("send Tus-Resumable: {TUS_VERSION}"),
        )),
    }
}

fn number(headers: &HeaderMap, name: &str) -> Result<Option<i64>, Answer> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|n| *n >= 0)
            .map(Some)
            .ok_or_else(|| refuse(StatusCode::BAD_REQUEST, format!("{name} must be a non-negative integer"))),
    }
}

/// `Upload-Metadata`: comma-separated `key base64value` pairs.
fn metadata(headers: &HeaderMap) -> Result<Vec<(String, String)>, Answer> {
    let Some(raw) = headers.get("upload-metadata") else { return Ok(vec![]) };
    let bad = |why: &str| refuse(StatusCode::BAD_REQUEST, format!("Upload-Metadata: {why}"));
    let raw = raw.to_str().map_err(|_| bad("not ASCII"))?;
    if raw.len() > MAX_METADATA_BYTES {
        return Err(bad(&format!("longer than {MAX_METADATA_BYTES} bytes")));
    }
    let mut pairs = Vec::new();
    for item in raw.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (key, value) = item.split_once(' ').unwrap_or((item, ""));
        let value = base64::engine::general_purpose::STANDARD.decode(value.trim()).map_err(|_| bad(&format!("{key}: not base64")))?;
        let value = String::from_utf8(value).map_err(|_| bad(&format!("{key}: not UTF-8")))?;
        pairs.push((key.to_string(), value));
    }
    Ok(pairs)
}

/// The job request an upload's metadata makes (validated as `POST /api/v1/jobs`
/// validates its fields); its filename.
fn job_request(st: &AppState, caller: &Caller, pairs: Vec<(String, String)>) -> Result<(crate::queue::NewJob, Option<String>), ApiError> {
    let mut f = JobFields::default();
    let mut filename = None;
    let mut captions = Vec::new();
    for (key, value) in pairs {
        match key.as_str() {
            "filename" => filename = Some(value.chars().filter(|c| !c.is_control()).take(255).collect()),
            "profile" => f.profile = Some(value),
            "callback_url" => f.callback_url = Some(value),
            "priority" => f.priority = Some(value.parse().map_err(|_| ApiError::BadRequest("priority must be a number".into()))?),
            "idempotency_key" => f.idempotency_key = Some(value),
            "requires_tags" => {
                f.requires_tags = Some(value.split(',').map(str::trim).filter(|t| !t.is_empty()).map(String::from).collect())
            }
            k => {
                if let Some(language) = k.strip_prefix("caption_url.") {
                    captions.push(crate::api::CaptionUrl { url: value, language: language.to_string(), label: None });
                }
                // Other keys (filetype, name...) are the client's own.
            }
        }
    }
    if !captions.is_empty() {
        f.captions = Some(captions);
    }
    Ok((new_job(st, caller, f, String::new())?, filename))
}

async fn create(State(st): State<AppState>, Uploader(caller): Uploader, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    allow(&caller, &[Role::Admin, Role::Submit])?;
    if let Err(r) = check_version(&headers) {
        return Ok(r.into_response());
    }
    let length = match number(&headers, "upload-length") {
        Ok(l) => l,
        Err(r) => return Ok(r.into_response()),
    };
    let deferred = headers.get("upload-defer-length").is_some_and(|v| v == "1");
    match length {
        None if !deferred => return Ok(refuse(StatusCode::BAD_REQUEST, "send Upload-Length, or Upload-Defer-Length: 1").into_response()),
        Some(0) => return Ok(refuse(StatusCode::BAD_REQUEST, "an upload of no bytes is no video").into_response()),
        Some(n) if n as u64 > st.limits.max_upload_bytes => return Err(ApiError::TooLarge(st.limits.max_upload_bytes)),
        _ => {}
    }
    let pairs = match metadata(&headers) {
        Ok(p) => p,
        Err(r) => return Ok(r.into_response()),
    };
    let (request, filename) = job_request(&st, &caller, pairs)?;
    check_disk(&st, length.unwrap_or(0) as u64)?;
    let id = uuid::Uuid::now_v7().to_string();
    let owner = digest(caller.presented.as_deref().unwrap_or_default());
    let now = now_ms();
    let expires_at = now + st.limits.upload_expiry_ms;
    let limit = spool_limit(&st);
    match st.queue.create_upload(&id, &owner, &request, filename.as_deref(), length, limit, now, expires_at).await? {
        Ok(()) => {}
        Err(CreateRefused::TooMany) => {
            return Err(ApiError::TooMany("this token has too many unfinished uploads; finish or delete one first"));
        }
        Err(CreateRefused::SpoolFull(held)) => return Err(spool_full(held, limit)),
    }
    let location = format!("/api/v1/uploads/{id}");
    let mut extra = vec![("location", location), ("upload-expires", httpdate(expires_at))];
    // creation-with-upload: the first bytes come with the creation.
    let with_bytes = headers.get(header::CONTENT_TYPE).is_some_and(|v| v == OFFSET_OCTET_STREAM)
        && headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).is_some_and(|v| v != "0");
    if with_bytes {
        let upload = st.queue.upload(&id).await?.ok_or_else(|| ApiError::Storage("the upload vanished".into()))?;
        let appended = append(&st, &upload, 0, &headers, body).await?;
        if appended.0 != StatusCode::NO_CONTENT {
            // The upload exists; the client resumes it from its HEAD.
            return Ok(Answer(appended.0, extra, appended.2).into_response());
        }
        extra.extend(appended.1);
    }
    Ok(Answer(StatusCode::CREATED, extra, String::new()).into_response())
}

/// The caller's upload `id`: another token's is not found.
async fn owned(st: &AppState, caller: &Caller, id: &str) -> Result<Upload, ApiError> {
    allow(caller, &[Role::Admin, Role::Submit])?;
    let upload = st.queue.upload(id).await?;
    match upload {
        Some(u) if u.owner == digest(caller.presented.as_deref().unwrap_or_default()) => Ok(u),
        _ => Err(crate::queue::QueueError::NotFound(format!("upload {id}")).into()),
    }
}

fn expired(u: &Upload) -> bool {
    u.job_id.is_none() && u.expires_at <= now_ms()
}

async fn head(
    State(st): State<AppState>,
    Uploader(caller): Uploader,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let u = owned(&st, &caller, &id).await?;
    if let Err(r) = check_version(&headers) {
        return Ok(r.into_response());
    }
    if expired(&u) {
        return Ok(refuse(StatusCode::GONE, "this upload expired").into_response());
    }
    if u.is_complete() && u.job_id.is_none() {
        let _ = finish(&st, &id).await;
    }
    let mut h = vec![("upload-offset", u.offset.to_string()), ("cache-control", "no-store".into())];
    match u.length {
        Some(l) => h.push(("upload-length", l.to_string())),
        None => h.push(("upload-defer-length", "1".into())),
    }
    if u.job_id.is_none() {
        h.push(("upload-expires", httpdate(u.expires_at)));
    }
    Ok(Answer(StatusCode::OK, h, String::new()).into_response())
}

async fn patch(
    State(st): State<AppState>,
    Uploader(caller): Uploader,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let u = owned(&st, &caller, &id).await?;
    if let Err(r) = check_version(&headers) {
        return Ok(r.into_response());
    }
    if headers.get(header::CONTENT_TYPE).is_none_or(|v| v != OFFSET_OCTET_STREAM) {
        return Ok(refuse(StatusCode::UNSUPPORTED_MEDIA_TYPE, format!("send Content-Type: {OFFSET_OCTET_STREAM}")).into_response());
    }
    let offset = match number(&headers, "upload-offset") {
        Ok(Some(o)) => o,
        Ok(None) => return Ok(refuse(StatusCode::BAD_REQUEST, "send Upload-Offset").into_response()),
        Err(r) => return Ok(r.into_response()),
    };
    if expired(&u) {
        return Ok(refuse(StatusCode::GONE, "this upload expired").into_response());
    }
    let a = append(&st, &u, offset, &headers, body).await?;
    Ok(a.into_response())
}

/// The checksum a PATCH declares: its algorithm's hasher and the expected digest.
enum Checksum {
    Sha1(sha1::Sha1, Vec<u8>),
    Sha256(sha2::Sha256, Vec<u8>),
}

fn declared_checksum(headers: &HeaderMap) -> Result<Option<Checksum>, Answer> {
    let Some(raw) = headers.get("upload-checksum") else { return Ok(None) };
    let bad = || refuse(StatusCode::BAD_REQUEST, "Upload-Checksum: send `sha1 BASE64` or `sha256 BASE64`");
    let (algorithm, value) = raw.to_str().ok().and_then(|v| v.split_once(' ')).ok_or_else(bad)?;
    let expected = base64::engine::general_purpose::STANDARD.decode(value.trim()).map_err(|_| bad())?;
    match algorithm {
        "sha1" => Ok(Some(Checksum::Sha1(sha1::Sha1::new(), expected))),
        "sha256" => Ok(Some(Checksum::Sha256(sha2::Sha256::new(), expected))),
        // 400 for an algorithm the server does not support, as tus says.
        _ => Err(bad()),
    }
}

/// Stores a PATCH's bytes as one part and appends it at `offset`.
async fn append(st: &AppState, u: &Upload, offset: i64, headers: &HeaderMap, body: Body) -> Result<Answer, ApiError> {
    let answer = |status: StatusCode, why: &str| Ok(Answer(status, vec![], why.to_string()));
    // On the local store the parts are written in place, into one file (so the
    // completion is a rename, not a copy): one PATCH of an upload at a time, and
    // the offset read again once it holds the upload.
    // (An upload begun by a version that stored local parts as objects goes on so.)
    let in_place = st.storage.is_local() && (u.parts == 0 || st.queue.first_part(&u.id).await?.is_some_and(|p| p == in_place_file(&u.id)));
    let _writing = match in_place.then(|| Writing::begin(&u.id)) {
        Some(None) => return answer(StatusCode::LOCKED, "another PATCH of this upload is in flight; ask HEAD and try again"),
        held => held.flatten(),
    };
    let fresh;
    let u = if in_place {
        fresh = st.queue.upload(&u.id).await?.ok_or_else(|| crate::queue::QueueError::NotFound(format!("upload {}", u.id)))?;
        &fresh
    } else {
        u
    };
    let size = match number(headers, "content-length") {
        Ok(Some(n)) => n,
        Ok(None) => return answer(StatusCode::LENGTH_REQUIRED, "send Content-Length"),
        Err(r) => return Ok(r),
    };
    let declared_length = match number(headers, "upload-length") {
        Ok(l) => l,
        Err(r) => return Ok(r),
    };
    if offset != u.offset || u.job_id.is_some() {
        return answer(StatusCode::CONFLICT, &format!("the upload is at offset {}", u.offset));
    }
    let limit = u.length.or(declared_length).unwrap_or(st.limits.max_upload_bytes as i64).min(st.limits.max_upload_bytes as i64);
    if offset + size > limit {
        return Err(ApiError::TooLarge(limit as u64));
    }
    let mut checksum = match declared_checksum(headers) {
        Ok(c) => c,
        Err(r) => return Ok(r),
    };
    if size == 0 {
        // A PATCH of no bytes may still tell a deferred length.
        if let Some(l) = declared_length
            && u.length.is_none()
            && !st.queue.set_upload_length(&u.id, l).await?
        {
            return answer(StatusCode::CONFLICT, "the upload's length cannot change");
        }
        return Ok(Answer(StatusCode::NO_CONTENT, vec![("upload-offset", offset.to_string())], String::new()));
    }
    check_disk(st, size as u64)?;
    if u.length.is_none() {
        // A deferred length reserved nothing at creation: its bytes count as they come.
        let held = st.queue.spool_held(now_ms()).await?;
        let limit = spool_limit(st);
        if held.saturating_add(declared_length.map_or(size, |l| l - offset)) > limit {
            return Err(spool_full(held, limit));
        }
    }
    let part =
        if in_place { in_place_file(&u.id) } else { format!("{}/{:06}-{}", parts_dir(&u.id), u.parts, uuid::Uuid::now_v7().simple()) };
    // The body, hashed as it streams to the store.
    let hasher: Arc<Mutex<Option<Checksum>>> = Arc::new(Mutex::new(checksum.take()));
    let h = hasher.clone();
    let stream = stalls_end(body, crate::api::UPLOAD_STALL).map(move |chunk: std::io::Result<Bytes>| {
        let chunk = chunk?;
        match h.lock().expect("the hasher's lock").as_mut() {
            Some(Checksum::Sha1(s, _)) => s.update(&chunk),
            Some(Checksum::Sha256(s, _)) => s.update(&chunk),
            None => {}
        }
        Ok(chunk)
    });
    let stored = if in_place {
        st.storage.write_at(&part, offset as u64, stream, size as u64).await
    } else {
        st.storage.put_stream(&part, stream, size as u64).await
    };
    if let Err(e) = stored {
        // The client went away or the store failed: nothing was appended.
        proto::log!("coordinator: upload {}: a part of {size} bytes was not stored: {e}", u.id);
        return answer(StatusCode::BAD_REQUEST, "the part did not arrive whole; resume from the upload's offset");
    }
    let matches = match hasher.lock().expect("the hasher's lock").take() {
        Some(Checksum::Sha1(s, want)) => s.finalize().as_slice() == want.as_slice(),
        Some(Checksum::Sha256(s, want)) => s.finalize().as_slice() == want.as_slice(),
        None => true,
    };
    // A part refused from here on is not in the upload: its object is removed, and
    // bytes written in place past the offset are overwritten by the next PATCH.
    let discard = |part: String| async move {
        if !in_place {
            let _ = st.storage.remove(&part).await;
        }
    };
    if !matches {
        discard(part).await;
        return answer(checksum_mismatch(), "Checksum Mismatch: nothing was appended");
    }
    let expires_at = now_ms() + st.limits.upload_expiry_ms;
    let appended = st.queue.append_part(&u.id, offset, &part, size, declared_length, now_ms(), expires_at).await?;
    let new_offset = match appended {
        Ok(o) => o,
        Err(refused) => {
            discard(part).await;
            return match refused {
                AppendRefused::Offset => answer(StatusCode::CONFLICT, "another request moved the offset; ask HEAD"),
                AppendRefused::TooLong => answer(StatusCode::PAYLOAD_TOO_LARGE, "the part goes past the upload's length"),
                AppendRefused::Closed => answer(StatusCode::GONE, "this upload is complete or expired"),
            };
        }
    };
    if u.parts == 1 {
        // The second part is recorded and its answer not yet sent.
        crate::fault::point(crate::fault::TUS_AFTER_SECOND_PART);
    }
    let mut h = vec![("upload-offset", new_offset.to_string()), ("upload-expires", httpdate(expires_at))];
    if u.length.or(declared_length) == Some(new_offset) {
        match finish(st, &u.id).await {
            Ok(job) => h.push(("drake-job", job)),
            // Every byte is stored and recorded: the reconciler finishes it.
            Err(e) => proto::log!("coordinator: upload {}: making its job: {e}; the reconciler will", u.id),
        }
    }
    Ok(Answer(StatusCode::NO_CONTENT, h, String::new()))
}

/// A PATCH's body that ends in an error when it sends nothing for `stall`
/// ([`crate::api::UPLOAD_STALL`]), so a stalled client holds no upload or connection.
fn stalls_end(body: Body, stall: std::time::Duration) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    futures_util::stream::unfold(Some(body.into_data_stream()), move |inner| async move {
        let mut inner = inner?;
        match tokio::time::timeout(stall, inner.next()).await {
            Ok(Some(chunk)) => Some((chunk.map_err(std::io::Error::other), Some(inner))),
            Ok(None) => None,
            Err(_) => {
                let why = format!("the PATCH sent nothing for {:?}", stall);
                Some((Err(std::io::Error::other(why)), None))
            }
        }
    })
}

/// An upload being written in place by a PATCH of this coordinator (local store).
struct Writing(String);

impl Writing {
    /// `None` while another PATCH of upload `id` is writing.
    fn begin(id: &str) -> Option<Writing> {
        writing().lock().expect("the writers' lock").insert(id.to_string()).then(|| Writing(id.to_string()))
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        writing().lock().expect("the writers' lock").remove(&self.0);
    }
}

fn writing() -> &'static Mutex<std::collections::HashSet<String>> {
    static WRITING: std::sync::OnceLock<Mutex<std::collections::HashSet<String>>> = std::sync::OnceLock::new();
    WRITING.get_or_init(Default::default)
}

/// `--max-spool-bytes`, as the database counts.
fn spool_limit(st: &AppState) -> i64 {
    st.limits.max_spool_bytes.min(i64::MAX as u64) as i64
}

fn spool_full(held: i64, limit: i64) -> ApiError {
    ApiError::InsufficientStorage(format!(
        "unfinished uploads hold {held} bytes of the farm's {limit}-byte upload spool; try again when some finish or expire"
    ))
}

/// Where an upload's parts are stored.
fn parts_dir(id: &str) -> String {
    format!("tus/{id}")
}

/// The one file a local store's upload is written into, every part in place.
fn in_place_file(id: &str) -> String {
    format!("{}/data", parts_dir(id))
}

/// Turns a complete upload into its job: claims the completion, joins the parts
/// into the job's source, creates the job (or finds the one its idempotency key
/// made) and removes the parts. Safe to run again, and on several coordinators.
pub async fn finish(st: &AppState, id: &str) -> Result<String, String> {
    let e = |e: crate::queue::QueueError| e.to_string();
    let u = st.queue.upload(id).await.map_err(e)?.ok_or("the upload is gone")?;
    if !u.is_complete() {
        return Err("the upload is not complete".into());
    }
    if let Some(job) = done(st, &u).await? {
        return Ok(job);
    }
    // One coordinator joins at a time: a join of many gigabytes outlasts a reconciler pass.
    if !st.queue.lease_completion(id, now_ms(), now_ms() + COMPLETION_LEASE_MS).await.map_err(e)? {
        return Err(FINISHING.into());
    }
    // Read again under the lease: the previous holder may have finished it.
    let u = st.queue.upload(id).await.map_err(e)?.ok_or("the upload is gone")?;
    let renewing = {
        let (st, id) = (st.clone(), id.to_string());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(COMPLETION_LEASE_MS as u64 / 3)).await;
                if let Err(e) = st.queue.renew_completion(&id, now_ms() + COMPLETION_LEASE_MS).await {
                    proto::log!("coordinator: upload {id}: renewing its completion lease: {e}");
                }
            }
        })
    };
    let finished = finish_leased(st, &u).await;
    renewing.abort();
    if let Err(err) = st.queue.release_completion(id).await {
        proto::log!("coordinator: upload {id}: releasing its completion lease: {err}; it lapses");
    }
    finished
}

/// How long a completion's lease lasts unless renewed (every third of it).
const COMPLETION_LEASE_MS: i64 = 60_000;
/// What [`finish`] says when another request or coordinator is joining the upload.
const FINISHING: &str = "another request is joining its parts";

/// The job of an upload whose completion is over, if it is.
async fn done(st: &AppState, u: &Upload) -> Result<Option<String>, String> {
    match &u.job_id {
        Some(job) if st.queue.upload_parts(&u.id).await.map_err(|e| e.to_string())?.is_empty() => Ok(Some(job.clone())),
        _ => Ok(None),
    }
}

async fn finish_leased(st: &AppState, u: &Upload) -> Result<String, String> {
    let e = |e: crate::queue::QueueError| e.to_string();
    let id = u.id.as_str();
    if let Some(job) = done(st, u).await? {
        return Ok(job);
    }
    let job_id = match &u.job_id {
        Some(j) => j.clone(),
        None => {
            let j = uuid::Uuid::now_v7().to_string();
            if st.queue.claim_upload(id, &j).await.map_err(e)? {
                j
            } else {
                st.queue.upload(id).await.map_err(e)?.and_then(|u| u.job_id).ok_or("the upload is gone")?
            }
        }
    };
    // Unless an earlier run got as far as the job, make it from the parts.
    let parts = st.queue.upload_parts(id).await.map_err(e)?;
    let mut made = job_id.clone();
    if st.queue.job(&job_id).await.map_err(e)?.is_none() && !parts.is_empty() {
        let mut new = u.request.clone();
        made = match st.queue.job_by_key(crate::queue::scoped_key(&new).as_deref()).await.map_err(e)? {
            Some(earlier) => earlier.id,
            None => {
                new.source = crate::storage::source_path(&job_id);
                let parts: Vec<(String, u64)> = parts.iter().map(|(p, n)| (p.clone(), (*n).max(0) as u64)).collect();
                st.storage.concat(&parts, &new.source, u.offset as u64).await.map_err(|e| format!("joining the parts: {e}"))?;
                match st.queue.create_job_with_id(&job_id, &new, now_ms()).await {
                    Ok((job, created)) => {
                        if created {
                            crate::lifecycle::kick(st, &job.id).await;
                        }
                        job.id
                    }
                    // Another coordinator finished it at the same time.
                    Err(crate::queue::QueueError::Conflict(_)) => job_id.clone(),
                    Err(err) => return Err(err.to_string()),
                }
            }
        };
    }
    st.queue.upload_done(id, &made).await.map_err(e)?;
    let _ = st.storage.remove_tree(&parts_dir(id)).await;
    Ok(made)
}

/// The reconciler's share: finishes complete uploads whose completion was cut
/// short, and removes expired ones with their parts.
pub async fn finish_owed(st: &AppState, now: i64) {
    match st.queue.owed_completions(now, 10).await {
        Ok(ids) => {
            for id in ids {
                if let Err(e) = finish(st, &id).await
                    && e != FINISHING
                {
                    proto::log!("coordinator: upload {id}: making its job: {e}");
                }
            }
        }
        Err(e) => proto::log!("coordinator: listing owed uploads: {e}"),
    }
    match st.queue.expired_uploads(now, 100).await {
        Ok(ids) => {
            for id in ids {
                if st.storage.remove_tree(&parts_dir(&id)).await.is_ok() {
                    let _ = st.queue.delete_upload(&id).await;
                }
            }
        }
        Err(e) => proto::log!("coordinator: listing expired uploads: {e}"),
    }
}

async fn terminate(
    State(st): State<AppState>,
    Uploader(caller): Uploader,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let u = owned(&st, &caller, &id).await?;
    if let Err(r) = check_version(&headers) {
        return Ok(r.into_response());
    }
    if u.job_id.is_some() {
        return Ok(refuse(StatusCode::CONFLICT, "this upload is a job now; cancel the job instead").into_response());
    }
    st.storage.remove_tree(&parts_dir(&id)).await?;
    st.queue.delete_upload(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /api/v1/uploads/{id}`: the upload's progress, and once complete its job.
async fn get_upload(State(st): State<AppState>, Uploader(caller): Uploader, Path(id): Path<String>) -> Result<Response, ApiError> {
    let u = owned(&st, &caller, &id).await?;
    let job = match &u.job_id {
        Some(j) => st.queue.job(j).await?,
        None => None,
    };
    Ok(axum::Json(json!({
        "id": u.id,
        "filename": u.filename,
        "offset": u.offset,
        "length": u.length,
        "expires_at": u.expires_at,
        "expired": expired(&u),
        "job_id": job.as_ref().map(|j| j.id.clone()),
        "job": job,
    }))
    .into_response())
}

/// An HTTP date (RFC 9110) for a time in Unix milliseconds.
fn httpdate(ms: i64) -> String {
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_that_sends_nothing_for_the_stall_limit_ends_in_an_error() {
        let first = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"abc"))]);
        let body = Body::from_stream(first.chain(futures_util::stream::pending()));
        let mut s = std::pin::pin!(stalls_end(body, std::time::Duration::from_millis(50)));
        assert_eq!(s.next().await.unwrap().unwrap(), "abc");
        let stalled =
            tokio::time::timeout(std::time::Duration::from_secs(5), s.next()).await.expect("the stall ends it").unwrap().unwrap_err();
        assert!(stalled.to_string().contains("sent nothing for 50ms"), "{stalled}");
        assert!(s.next().await.is_none(), "and then it ends");
    }
}
