//! The HTTP API (axum). Every `/api` route authenticates its caller and names the
//! roles it accepts; errors are JSON `{"code", "message"}` with stable codes.

use crate::auth::{self, Caller, Role, bearer};
pub use crate::error::ApiError;
use crate::gate::Kind;
use crate::lifecycle;
use crate::queue::{NewJob, QueueError};
use crate::state::{AppState, audit, now_ms};
use crate::{dav, storage, workers_api};
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Multipart, Path, Query, Request, State};
use axum::http::{StatusCode, header, request::Parts};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use proto::captions::{self, Sidecar};
use proto::profile::Profile;
use serde::Deserialize;
use serde_json::{Value, json};
use std::path::PathBuf;
use tokio::io::AsyncWriteExt;

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, ApiError> {
        let token = bearer(parts).ok_or(ApiError::Unauthorized)?;
        let mut caller = state.queue.authenticate(token, now_ms()).await?.ok_or(ApiError::Unauthorized)?;
        caller.presented = Some(token.to_string());
        Ok(caller)
    }
}

/// A JSON body, parsed only after the caller was authorized, so that a caller
/// without the right role learns nothing from validation errors.
pub fn parsed<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(v)| v).map_err(|e| ApiError::BadRequest(e.body_text()))
}

pub fn allow(caller: &Caller, roles: &[Role]) -> Result<(), ApiError> {
    if roles.contains(&caller.role) { Ok(()) } else { Err(ApiError::Forbidden) }
}

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/healthz", get(|| async { Json(json!({"ok": true})) }))
        // Uploads are streamed to disk and limited by `Limits::max_upload_bytes`.
        .route("/api/v1/jobs", post(create_job).get(list_jobs).layer(DefaultBodyLimit::disable()))
        .route("/api/v1/jobs/{id}", get(get_job))
        .route("/api/v1/jobs/{id}/cancel", post(cancel_job))
        .route("/api/v1/jobs/{id}/retry", post(retry_job))
        .route("/api/v1/events", get(events))
        .route("/api/v1/join-tokens", post(create_join_token))
        .route("/api/v1/tokens", post(create_token).get(list_tokens))
        .route("/api/v1/tokens/{id}/revoke", post(revoke_token))
        .layer(DefaultBodyLimit::max(crate::state::MAX_JSON_BYTES));
    // Browsers may call the job and upload routes from the origins the operator named.
    let cors = state.cors.clone();
    let browser_facing =
        api.merge(crate::tus::routes()).layer(axum::middleware::from_fn(move |req, next| crate::cors::layer(cors.clone(), req, next)));
    browser_facing
        .merge(workers_api::routes().layer(DefaultBodyLimit::max(crate::state::MAX_WORKER_BODY_BYTES)))
        .merge(dav::routes())
        .with_state(state)
}

/// Limits on fields of a job request.
const MAX_URL_LEN: usize = 4096;
const MAX_KEY_LEN: usize = 200;
const MAX_FIELD_LEN: usize = 8192;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct JobFields {
    pub(crate) source_url: Option<String>,
    pub(crate) profile: Option<String>,
    pub(crate) callback_url: Option<String>,
    pub(crate) priority: Option<i64>,
    pub(crate) idempotency_key: Option<String>,
    /// Worker tags the job's tasks need, besides its profile's (multipart: comma-separated).
    pub(crate) requires_tags: Option<Vec<String>>,
    /// Caption files by URL (an upload sends `caption.LANG` and `caption_url.LANG` fields).
    pub(crate) captions: Option<Vec<CaptionUrl>>,
}

/// A caption file named by URL in a JSON submit.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CaptionUrl {
    pub(crate) url: String,
    pub(crate) language: String,
    pub(crate) label: Option<String>,
}

/// The caption files of a JSON submit, checked (the files themselves are read
/// when the job is probed).
fn caption_urls(st: &AppState, list: Vec<CaptionUrl>) -> Result<Vec<Sidecar>, ApiError> {
    if list.len() > captions::MAX_SIDECARS {
        return Err(ApiError::BadRequest(format!("at most {} caption files", captions::MAX_SIDECARS)));
    }
    let mut out = Vec::new();
    for c in list {
        check_url("a caption url", &c.url)?;
        check_network(st, &c.url)?;
        let file = c.url.split(['?', '#']).next().unwrap_or_default().to_string();
        out.push(Sidecar::new(&c.language, c.label.as_deref(), &file, Some(c.url)).map_err(ApiError::BadRequest)?);
    }
    Ok(out)
}

fn check_url(what: &str, url: &str) -> Result<(), ApiError> {
    if url.len() > MAX_URL_LEN || !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(ApiError::BadRequest(format!("{what} must be an http(s) URL of at most {MAX_URL_LEN} characters")));
    }
    Ok(())
}

/// Refuses a URL whose host is an address callers may not reach (known without DNS).
fn check_network(st: &AppState, url: &str) -> Result<(), ApiError> {
    st.network.check_literal(url).map_err(|e| ApiError::Unprocessable(e.to_string()))
}

/// Validates a request's fields into a job (source filled in by the caller).
pub(crate) fn new_job(st: &AppState, caller: &Caller, mut f: JobFields, source: String) -> Result<NewJob, ApiError> {
    let captions = caption_urls(st, f.captions.take().unwrap_or_default())?;
    if let Some(cb) = &f.callback_url {
        check_url("callback_url", cb)?;
        check_network(st, cb)?;
    }
    if f.idempotency_key.as_ref().is_some_and(|k| k.is_empty() || k.len() > MAX_KEY_LEN) {
        return Err(ApiError::BadRequest(format!("idempotency_key must be 1..={MAX_KEY_LEN} characters")));
    }
    let priority = f.priority.unwrap_or(0);
    if !(-100..=100).contains(&priority) {
        return Err(ApiError::BadRequest("priority must be -100..=100".into()));
    }
    let name = f.profile.unwrap_or_else(|| "web".into());
    if name.contains('/') || name.ends_with(".toml") {
        return Err(ApiError::BadRequest("profile must be a profile name".into()));
    }
    // Validate the profile now, so a typo is a 400 rather than a failed job.
    let profile = Profile::load(&name).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let mut tags = f.requires_tags.unwrap_or_default();
    tags.extend(profile.requires_tags);
    let requires_tags = proto::profile::valid_tags(tags).map_err(|e| ApiError::BadRequest(format!("requires_tags: {e}")))?;
    Ok(NewJob {
        requires_tags,
        pipeline: pipeline_of(caller),
        profile: name,
        source,
        callback_url: f.callback_url,
        priority,
        idempotency_key: f.idempotency_key,
        captions,
    })
}

/// `POST /api/v1/jobs`: a multipart upload (field `file`) or JSON `{"source_url"}`.
async fn create_job(State(st): State<AppState>, caller: Caller, req: Request) -> Result<Response, ApiError> {
    allow(&caller, &[Role::Admin, Role::Submit])?;
    let is_multipart =
        req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("multipart/form-data"));
    let declared: Option<u64> = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    // A refusal before or while the body is read reaches a client still sending
    // it (`crate::linger`).
    let (job, created) = if is_multipart {
        // Over the limit by its own account: refused before a byte is read.
        if declared.is_some_and(|n| n > st.limits.max_upload_bytes + MULTIPART_OVERHEAD) {
            return Err(ApiError::TooLarge(st.limits.max_upload_bytes));
        }
        let who = crate::auth::digest(caller.presented.as_deref().unwrap_or_default());
        let _uploading = st.gate.enter(Kind::Upload, &who).ok_or(ApiError::TooMany("too many uploads in flight for this token"))?;
        check_disk(&st, declared.unwrap_or(0))?;
        let multipart = Multipart::from_request(req, &st).await.map_err(|e| ApiError::BadRequest(e.to_string()))?;
        create_from_upload(&st, &caller, multipart).await?
    } else {
        let limit = crate::state::MAX_JSON_BYTES;
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(ApiError::TooLarge(limit as u64));
        }
        let body = axum::body::to_bytes(req.into_body(), limit).await.map_err(|_| ApiError::TooLarge(limit as u64))?;
        let f: JobFields =
            serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("the JSON body is not a job request: {e}")))?;
        let url = f.source_url.clone().ok_or_else(|| ApiError::BadRequest("give source_url, or upload a multipart field `file`".into()))?;
        check_url("source_url", &url)?;
        check_network(&st, &url)?;
        let new = new_job(&st, &caller, f, url)?;
        st.queue.create_job(&new, now_ms()).await?
    };
    if created {
        crate::fault::point(crate::fault::AFTER_CREATE);
        // The job row already owes its probe; this pushes it at once.
        lifecycle::kick(&st, &job.id).await;
    }
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(job)).into_response())
}

/// Room for multipart boundaries, the text fields and the caption files beside the file.
const MULTIPART_OVERHEAD: u64 = 256 * 1024 + (captions::MAX_SIDECARS * captions::MAX_CAPTION_BYTES) as u64;

/// How long an upload may go without sending a byte before it is dropped (and its
/// partial file removed).
pub(crate) const UPLOAD_STALL: std::time::Duration = std::time::Duration::from_secs(120);

/// Refuses an upload (507) that would leave less than the reserve free on the spool disk.
pub(crate) fn check_disk(st: &AppState, more: u64) -> Result<(), ApiError> {
    let short = crate::gate::spool_short_of(&st.storage.spool_dir(), more, st.limits.min_free_disk_bytes);
    match short.map_err(|e| ApiError::Storage(e.to_string()))? {
        Some(why) => Err(ApiError::InsufficientStorage(format!("{why}; try again later"))),
        None => Ok(()),
    }
}

/// Reads a multipart field, refusing it once it passes `limit` bytes.
async fn bounded_bytes(field: &mut axum::extract::multipart::Field<'_>, limit: usize) -> Result<Vec<u8>, ApiError> {
    let mut bytes = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(|e| ApiError::BadRequest(e.body_text()))? {
        if bytes.len() + chunk.len() > limit {
            let name = field.name().unwrap_or_default().to_string();
            return Err(ApiError::BadRequest(format!("form field {name:?} is longer than {limit} bytes")));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Reads a multipart text field, refusing it once it passes `limit` bytes.
async fn bounded_text(field: &mut axum::extract::multipart::Field<'_>, limit: usize) -> Result<String, ApiError> {
    String::from_utf8(bounded_bytes(field, limit).await?).map_err(|_| ApiError::BadRequest("a form field is not UTF-8".into()))
}

/// Streams the `file` field to storage (never holding it in memory), then creates the job.
async fn create_from_upload(st: &AppState, caller: &Caller, mut multipart: Multipart) -> Result<(crate::queue::Job, bool), ApiError> {
    let uploads = st.storage.spool_dir();
    tokio::fs::create_dir_all(&uploads).await.map_err(|e| ApiError::Storage(e.to_string()))?;
    let temp = uploads.join(uuid::Uuid::now_v7().to_string());
    // Removes the temporary file on every early return.
    struct Cleanup(Option<PathBuf>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            if let Some(p) = self.0.take() {
                let _ = std::fs::remove_file(p);
            }
        }
    }
    let mut cleanup = Cleanup(None);
    let mut fields = serde_json::Map::new();
    let mut size = 0u64;
    let mut got_file = false;
    // Caption files in the order sent: uploaded ones with their bytes.
    let mut caption_files: Vec<(Sidecar, Option<Vec<u8>>)> = Vec::new();
    while let Some(mut field) = multipart.next_field().await.map_err(|e| ApiError::BadRequest(e.body_text()))? {
        let name = field.name().unwrap_or_default().to_string();
        let caption = name.strip_prefix("caption.").map(|l| (l, false)).or_else(|| name.strip_prefix("caption_url.").map(|l| (l, true)));
        if let Some((language, by_url)) = caption {
            if caption_files.len() == captions::MAX_SIDECARS {
                return Err(ApiError::BadRequest(format!("at most {} caption files", captions::MAX_SIDECARS)));
            }
            if by_url {
                let url = bounded_text(&mut field, MAX_URL_LEN).await?;
                let mut list = caption_urls(st, vec![CaptionUrl { url, language: language.to_string(), label: None }])?;
                caption_files.push((list.remove(0), None));
            } else {
                let file = field.file_name().unwrap_or("captions").to_string();
                let sidecar = Sidecar::new(language, None, &file, None).map_err(ApiError::BadRequest)?;
                let bytes = bounded_bytes(&mut field, captions::MAX_CAPTION_BYTES).await?;
                caption_files.push((sidecar, Some(bytes)));
            }
        } else if name == "file" {
            if got_file {
                return Err(ApiError::BadRequest("only one `file` field is accepted".into()));
            }
            got_file = true;
            let mut out = tokio::fs::File::create(&temp).await.map_err(|e| ApiError::Storage(e.to_string()))?;
            cleanup.0 = Some(temp.clone());
            let mut checked = 0u64;
            loop {
                let chunk = tokio::time::timeout(UPLOAD_STALL, field.chunk())
                    .await
                    .map_err(|_| ApiError::BadRequest(format!("the upload sent nothing for {} s", UPLOAD_STALL.as_secs())))?
                    .map_err(|e| ApiError::BadRequest(e.body_text()))?;
                let Some(chunk) = chunk else { break };
                size += chunk.len() as u64;
                if size > st.limits.max_upload_bytes {
                    return Err(ApiError::TooLarge(st.limits.max_upload_bytes));
                }
                // Uploads without a Content-Length are checked as they grow.
                if size - checked > 64 << 20 {
                    check_disk(st, 0)?;
                    checked = size;
                }
                out.write_all(&chunk).await.map_err(|e| ApiError::Storage(e.to_string()))?;
            }
            out.sync_all().await.map_err(|e| ApiError::Storage(e.to_string()))?;
        } else {
            if fields.len() >= 16 {
                return Err(ApiError::BadRequest("too many form fields".into()));
            }
            let text = bounded_text(&mut field, MAX_FIELD_LEN).await?;
            let value = if name == "priority" {
                json!(text.parse::<i64>().map_err(|_| ApiError::BadRequest("priority must be a number".into()))?)
            } else if name == "requires_tags" {
                json!(text.split(',').map(str::trim).filter(|t| !t.is_empty()).collect::<Vec<_>>())
            } else {
                json!(text)
            };
            fields.insert(name, value);
        }
    }
    if !got_file || size == 0 {
        return Err(ApiError::BadRequest("the upload has no (or an empty) `file` field".into()));
    }
    let f: JobFields = serde_json::from_value(Value::Object(fields)).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if f.source_url.is_some() {
        return Err(ApiError::BadRequest("give either an upload or source_url, not both".into()));
    }
    if f.captions.is_some() {
        return Err(ApiError::BadRequest(
            "an upload sends its caption files as `caption.LANG` (a file) or `caption_url.LANG` fields".into(),
        ));
    }
    let mut new = new_job(st, caller, f, String::new())?;
    if let Some(job) = st.queue.job_by_key(crate::queue::scoped_key(&new).as_deref()).await? {
        return Ok((job, false));
    }
    // The source and its caption files are stored before the job exists, so no job
    // ever owes a probe of a file that is not there. Their directory is owed a
    // removal from before the first byte until the job exists: a failed write, a
    // lost race for the idempotency key or a crash in between leaves nothing on
    // the store for good.
    let id = uuid::Uuid::now_v7().to_string();
    new.source = storage::source_path(&id);
    st.queue.owe_unclaimed_dir(&id, &st.instance, now_ms()).await?;
    let stored = store_upload(st, &id, &temp, &new.source, caption_files, &mut new.captions).await;
    if let Err(e) = stored {
        lifecycle::remove_unclaimed_dir(st, &id).await;
        return Err(e);
    }
    cleanup.0 = None;
    match st.queue.create_job_with_id(&id, &new, now_ms()).await {
        Ok((job, true)) => {
            if let Err(e) = st.queue.forget_unclaimed_dir(&id).await {
                // The reconciler sees that the job exists, and forgets it then.
                proto::log!("coordinator: job {id}: {e}");
            }
            Ok((job, true))
        }
        // Another request with the same key won the race: this copy is not needed.
        Ok((job, false)) => {
            lifecycle::remove_unclaimed_dir(st, &id).await;
            Ok((job, false))
        }
        Err(e) => {
            // The job may exist all the same (a commit whose answer was lost): the
            // reconciler looks before it removes anything.
            if let Err(owed) = st.queue.unclaimed_dir_failed(&id, &st.instance, &e.to_string(), now_ms()).await {
                // Then it is due after the grace, or once this coordinator is gone.
                proto::log!("coordinator: job {id}: {owed}");
            }
            Err(e.into())
        }
    }
}

/// Stores an upload's source (from the spooled `temp`) and caption files in job
/// `id`'s directory, and lists the captions in `captions`.
async fn store_upload(
    st: &AppState,
    id: &str,
    temp: &std::path::Path,
    source: &str,
    caption_files: Vec<(Sidecar, Option<Vec<u8>>)>,
    captions: &mut Vec<Sidecar>,
) -> Result<(), ApiError> {
    st.storage.import(temp, source).await?;
    for (i, (sidecar, bytes)) in caption_files.into_iter().enumerate() {
        if let Some(bytes) = bytes {
            st.storage.write(&crate::sidecars::stored_path(id, i), bytes).await?;
        }
        captions.push(sidecar);
    }
    Ok(())
}

/// The pipeline a caller submits for and sees: a submit token's label; `None` for
/// an admin, who sees every job.
fn pipeline_of(caller: &Caller) -> Option<String> {
    (caller.role == Role::Submit).then(|| caller.label.clone().unwrap_or_default())
}

/// Checks that the caller may see job `id`: an admin sees all, a submit token only
/// its pipeline's (another pipeline's job is reported as not found).
async fn visible(st: &AppState, caller: &Caller, id: &str) -> Result<(), ApiError> {
    allow(caller, &[Role::Admin, Role::Submit])?;
    let owner = st.queue.job_pipeline(id).await?;
    match pipeline_of(caller) {
        Some(mine) if owner.as_deref() != Some(mine.as_str()) => Err(QueueError::NotFound(format!("job {id}")).into()),
        _ => Ok(()),
    }
}

async fn get_job(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    visible(&st, &caller, &id).await?;
    let job = st.queue.job(&id).await?.ok_or_else(|| QueueError::NotFound(format!("job {id}")))?;
    Ok(Json(json!(job)))
}

#[derive(Deserialize)]
struct ListQuery {
    state: Option<String>,
    #[serde(default)]
    page: u32,
    #[serde(default = "default_per_page")]
    per_page: u32,
}

fn default_per_page() -> u32 {
    50
}

async fn list_jobs(State(st): State<AppState>, caller: Caller, Query(q): Query<ListQuery>) -> Result<Json<Value>, ApiError> {
    allow(&caller, &[Role::Admin, Role::Submit])?;
    let per_page = q.per_page.clamp(1, 200);
    let jobs = st.queue.list_jobs_of(pipeline_of(&caller).as_deref(), q.state.as_deref(), q.page as i64, per_page as i64).await?;
    Ok(Json(json!({"jobs": jobs, "page": q.page, "per_page": per_page})))
}

async fn cancel_job(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    visible(&st, &caller, &id).await?;
    Ok(Json(json!(lifecycle::cancel(&st, &id).await?)))
}

async fn retry_job(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    visible(&st, &caller, &id).await?;
    Ok(Json(json!(lifecycle::retry(&st, &id).await?)))
}

/// A new join token with `uses` and a lifetime; returns it and its expiry (unix ms).
pub async fn mint_join_token(st: &AppState, uses: i64, ttl_seconds: i64) -> Result<(String, i64), ApiError> {
    if !(1..=1000).contains(&uses) || !(60..=30 * 86400).contains(&ttl_seconds) {
        return Err(ApiError::BadRequest("uses must be 1..=1000 and ttl_seconds 60..=2592000".into()));
    }
    let token = auth::generate(Role::Join);
    let now = now_ms();
    let expires_at = now + ttl_seconds * 1000;
    st.queue.add_token(&token, Role::Join, None, Some(uses), Some(expires_at), now).await?;
    audit(&format!("join token {} created ({uses} uses, {ttl_seconds} s)", &auth::digest(&token)[..12]));
    Ok((token, expires_at))
}

/// `GET /api/v1/events`: server-sent events for every job and task change.
async fn events(State(st): State<AppState>, caller: Caller) -> Result<impl IntoResponse, ApiError> {
    allow(&caller, &[Role::Admin, Role::Submit])?;
    let who = crate::auth::digest(caller.presented.as_deref().unwrap_or_default());
    let permit = st.gate.enter(Kind::Events, &who).ok_or(ApiError::TooMany("too many event streams open for this token"))?;
    let rx = st.events.subscribe();
    // A pipeline hears only of its own jobs; whose a job is, is cached per stream.
    let filter = pipeline_of(&caller).map(|p| (p, std::collections::HashMap::<String, bool>::new()));
    let stream = futures_util::stream::unfold((rx, filter, st), |(mut rx, mut filter, st)| async move {
        let event = loop {
            match rx.recv().await {
                Ok(data) => {
                    if let Some((mine, seen)) = &mut filter {
                        let job = serde_json::from_str::<Value>(&data).ok().and_then(|v| v["job_id"].as_str().map(String::from));
                        let Some(job) = job else { continue };
                        let ours = match seen.get(&job) {
                            Some(o) => *o,
                            None => {
                                let o = st.queue.job_pipeline(&job).await.ok().flatten().as_deref() == Some(mine.as_str());
                                if seen.len() > 10_000 {
                                    seen.clear();
                                }
                                seen.insert(job, o);
                                o
                            }
                        };
                        if !ours {
                            continue;
                        }
                    }
                    break Event::default().data(data);
                }
                // A slow reader missed events; tell it to refetch.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break Event::default().event("lagged").data("{}"),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        };
        Some((Ok::<_, std::convert::Infallible>(event), (rx, filter, st)))
    });
    // The stream holds its place until the client goes away.
    let stream = futures_util::StreamExt::map(stream, move |e| {
        let _held = &permit;
        e
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinTokenRequest {
    uses: i64,
    ttl_seconds: i64,
}

async fn create_join_token(
    State(st): State<AppState>,
    caller: Caller,
    body: Result<Json<JoinTokenRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    allow(&caller, &[Role::Admin])?;
    let body = parsed(body)?;
    let (token, expires_at) = mint_join_token(&st, body.uses, body.ttl_seconds).await?;
    Ok((StatusCode::CREATED, Json(json!({"token": token, "uses": body.uses, "expires_at": expires_at}))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    /// Only `submit` tokens are minted here; workers get theirs by joining.
    role: String,
    label: String,
}

/// `POST /api/v1/tokens` (admin): a token for an upload pipeline (`{"role": "submit", "label"}`).
async fn create_token(
    State(st): State<AppState>,
    caller: Caller,
    body: Result<Json<TokenRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    allow(&caller, &[Role::Admin])?;
    let body = parsed(body)?;
    if body.role != "submit" {
        return Err(ApiError::BadRequest("role must be \"submit\" (workers join with a join token)".into()));
    }
    if body.label.is_empty() || body.label.len() > 100 || body.label.chars().any(char::is_control) {
        return Err(ApiError::BadRequest("label (the pipeline's name) must be 1..=100 characters, none of them control characters".into()));
    }
    let token = mint_submit_token(&st, &body.label).await?;
    Ok((StatusCode::CREATED, Json(json!({"token": token, "role": "submit", "label": body.label}))).into_response())
}

/// `GET /api/v1/tokens` (admin): the submit tokens, each with its pipeline, id
/// (a prefix of its digest; the token itself is never stored) and state.
async fn list_tokens(State(st): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    allow(&caller, &[Role::Admin])?;
    Ok(Json(json!({"tokens": st.queue.submit_tokens().await?})))
}

/// `POST /api/v1/tokens/{id}/revoke` (admin): the pipeline's token stops working at once.
async fn revoke_token(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    allow(&caller, &[Role::Admin])?;
    revoke_submit_token(&st, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Revokes a submit token by its id (the API and the dashboard share this).
pub async fn revoke_submit_token(st: &AppState, id: &str) -> Result<(), ApiError> {
    st.queue.revoke_submit_token(id).await?;
    audit(&format!("submit token {id} revoked"));
    Ok(())
}

/// A new submit token for pipeline `label` (the API and the dashboard share this).
pub async fn mint_submit_token(st: &AppState, label: &str) -> Result<String, ApiError> {
    let token = auth::generate(Role::Submit);
    st.queue.add_token(&token, Role::Submit, Some(label), None, None, now_ms()).await?;
    audit(&format!("submit token {} created for pipeline {label:?}", &auth::digest(&token)[..16]));
    Ok(token)
}
