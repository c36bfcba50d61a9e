//! The HTTP API (axum). Every `/api` route authenticates its caller and names the
//! roles it accepts; errors are JSON `{"code", "message"}` with stable codes.

use crate::auth::{self, Caller, Role};
use crate::queue::{NewJob, NewTask, Queue, QueueError, TaskKind};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::{StatusCode, request::Parts};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use proto::profile::Profile;
use serde::Deserialize;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    pub queue: Queue,
    /// The `drake` executable, run as a child for `drake probe` (the coordinator never links libav).
    pub drake_exe: Arc<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("this token may not call this route")]
    Forbidden,
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Queue(e) => (
                match e {
                    QueueError::NotFound(_) => StatusCode::NOT_FOUND,
                    QueueError::StaleLease { .. } | QueueError::Conflict(_) => StatusCode::CONFLICT,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                },
                e.code(),
            ),
        };
        (
            status,
            Json(json!({"code": code, "message": self.to_string()})),
        )
            .into_response()
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, ApiError> {
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(ApiError::Unauthorized)?;
        state
            .queue
            .authenticate(token.trim(), now_ms())
            .await?
            .ok_or(ApiError::Unauthorized)
    }
}

fn allow(caller: &Caller, roles: &[Role]) -> Result<(), ApiError> {
    if roles.contains(&caller.role) {
        Ok(())
    } else {
        Err(ApiError::Forbidden)
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"ok": true})) }))
        .route("/api/v1/jobs", post(create_job).get(list_jobs))
        .route("/api/v1/jobs/{id}", get(get_job))
        .route("/api/v1/jobs/{id}/cancel", post(cancel_job))
        .route("/api/v1/jobs/{id}/retry", post(retry_job))
        .route("/api/v1/join-tokens", post(create_join_token))
        .with_state(state)
}

/// Limits on what a caller can put in one request.
const MAX_URL_LEN: usize = 4096;
const MAX_KEY_LEN: usize = 200;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateJob {
    source_url: String,
    #[serde(default = "default_profile")]
    profile: String,
    callback_url: Option<String>,
    #[serde(default)]
    priority: i64,
    idempotency_key: Option<String>,
}

fn default_profile() -> String {
    "web".into()
}

fn check_url(what: &str, url: &str) -> Result<(), ApiError> {
    if url.len() > MAX_URL_LEN || !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(ApiError::BadRequest(format!(
            "{what} must be an http(s) URL of at most {MAX_URL_LEN} characters"
        )));
    }
    Ok(())
}

async fn create_job(
    State(st): State<AppState>,
    caller: Caller,
    Json(body): Json<CreateJob>,
) -> Result<Response, ApiError> {
    allow(&caller, &[Role::Admin, Role::Submit])?;
    check_url("source_url", &body.source_url)?;
    if let Some(cb) = &body.callback_url {
        check_url("callback_url", cb)?;
    }
    if body
        .idempotency_key
        .as_ref()
        .is_some_and(|k| k.len() > MAX_KEY_LEN)
    {
        return Err(ApiError::BadRequest(format!(
            "idempotency_key is limited to {MAX_KEY_LEN} characters"
        )));
    }
    if !(-100..=100).contains(&body.priority) {
        return Err(ApiError::BadRequest("priority must be -100..=100".into()));
    }
    let profile = Profile::load(&body.profile).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if body.profile.contains('/') || body.profile.ends_with(".toml") {
        return Err(ApiError::BadRequest(
            "profile must be a profile name".into(),
        ));
    }
    let new = NewJob {
        profile: body.profile,
        source: body.source_url,
        callback_url: body.callback_url,
        priority: body.priority,
        idempotency_key: body.idempotency_key,
    };
    let (job, created) = st.queue.create_job(&new, now_ms()).await?;
    if created {
        tokio::spawn(probe_and_plan(
            st.clone(),
            job.id.clone(),
            job.source.clone(),
            profile,
        ));
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(job)).into_response())
}

/// Probes the source in a child `drake probe` (so a libav crash cannot take the
/// coordinator down), plans the renditions and queues one task per rendition,
/// lowest rung first, plus the thumbnails task.
async fn probe_and_plan(st: AppState, job: String, source: String, profile: Profile) {
    let outcome = async {
        let child = tokio::process::Command::new(st.drake_exe.as_ref())
            .arg("probe")
            .arg(&source)
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(120), child)
            .await
            .map_err(|_| "probing timed out after 120 s".to_string())?
            .map_err(|e| format!("cannot run drake probe: {e}"))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let line = stderr
                .lines()
                .last()
                .unwrap_or("probe failed")
                .trim_start_matches("drake: ")
                .to_string();
            return Err(line);
        }
        let probe: proto::probe::Probe = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("unreadable probe output: {e}"))?;
        let plan = proto::plan::plan(&probe, &profile).map_err(|e| format!("bad input: {e}"))?;
        let mut tasks: Vec<NewTask> = plan
            .renditions
            .iter()
            .map(|r| NewTask {
                kind: TaskKind::Transcode,
                rendition: Some(r.name.clone()),
            })
            .collect();
        if probe.main_video().is_some() {
            tasks.push(NewTask {
                kind: TaskKind::Thumbnails,
                rendition: None,
            });
        }
        Ok((probe, tasks))
    }
    .await;
    let now = now_ms();
    let result = match outcome {
        Ok((probe, tasks)) => st
            .queue
            .set_probe(
                &job,
                &serde_json::to_value(&probe).unwrap_or(Value::Null),
                now,
            )
            .await
            .and(st.queue.add_tasks(&job, &tasks, now).await),
        Err(reason) => st.queue.fail_job(&job, &reason, now).await,
    };
    if let Err(e) = result {
        eprintln!("coordinator: planning job {job}: {e}");
    }
}

async fn get_job(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    allow(&caller, &[Role::Admin, Role::Submit])?;
    let job = st
        .queue
        .job(&id)
        .await?
        .ok_or_else(|| QueueError::NotFound(format!("job {id}")))?;
    Ok(Json(serde_json::to_value(job).unwrap_or(Value::Null)))
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

async fn list_jobs(
    State(st): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    allow(&caller, &[Role::Admin, Role::Submit])?;
    let per_page = q.per_page.clamp(1, 200);
    let jobs = st
        .queue
        .list_jobs(q.state.as_deref(), q.page as i64, per_page as i64)
        .await?;
    Ok(Json(
        json!({"jobs": jobs, "page": q.page, "per_page": per_page}),
    ))
}

async fn cancel_job(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    allow(&caller, &[Role::Admin, Role::Submit])?;
    Ok(Json(
        serde_json::to_value(st.queue.cancel_job(&id, now_ms()).await?).unwrap_or(Value::Null),
    ))
}

async fn retry_job(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    allow(&caller, &[Role::Admin, Role::Submit])?;
    Ok(Json(
        serde_json::to_value(st.queue.retry_job(&id, now_ms()).await?).unwrap_or(Value::Null),
    ))
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
    Json(body): Json<JoinTokenRequest>,
) -> Result<Response, ApiError> {
    allow(&caller, &[Role::Admin])?;
    if !(1..=1000).contains(&body.uses) || !(60..=30 * 86400).contains(&body.ttl_seconds) {
        return Err(ApiError::BadRequest(
            "uses must be 1..=1000 and ttl_seconds 60..=2592000".into(),
        ));
    }
    let token = auth::generate(Role::Join);
    let now = now_ms();
    let expires_at = now + body.ttl_seconds * 1000;
    st.queue
        .add_token(
            &token,
            Role::Join,
            None,
            Some(body.uses),
            Some(expires_at),
            now,
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"token": token, "uses": body.uses, "expires_at": expires_at})),
    )
        .into_response())
}
