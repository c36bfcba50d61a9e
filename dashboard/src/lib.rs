//! The ops dashboard, served by the coordinator at `/`: server-rendered HTML with a
//! little JavaScript of our own that keeps pages live over server-sent events.
//! Assets are compiled into the binary; nothing loads from anywhere else.
//!
//! Sign-in: the admin token (a form) or a one-time login link printed at start,
//! either of which sets an HttpOnly, SameSite=Strict session cookie (stored hashed;
//! `Secure` when a TLS-terminating proxy says the browser used HTTPS).
//! Every state-changing request is a POST carrying the session's CSRF token, and
//! its `Origin`, when sent, must be this host.

mod html;
mod pages;

use axum::Router;
use axum::extract::{Form, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use coordinator::auth::Role;
use coordinator::sessions::{SESSION_COOKIE as COOKIE, SESSION_TTL_MS, Session, constant_time_eq, session_cookie as cookie_value};
use coordinator::state::{AppState, now_ms};
use serde::Deserialize;
use std::fmt::Write as _;

const APP_JS: &str = include_str!("../assets/app.js");
const EVENTS_JS: &str = include_str!("../assets/events.js");
const APP_CSS: &str = include_str!("../assets/app.css");
/// hls.js (npm, unmodified; see `assets/vendor/README.md`): the job page's player.
const HLS_JS: &str = include_str!("../assets/vendor/hls.min.js");
const HLS_JS_LICENSE: &str = include_str!("../assets/vendor/hls.js-LICENSE");
/// hls.js's URL carries its version, so a browser may cache it for a year.
pub const HLS_JS_PATH: &str = "/ui/hls-1.7.4.min.js";
/// tus-js-client (npm, unmodified; see `assets/vendor/README.md`): the upload page's client.
const TUS_JS: &str = include_str!("../assets/vendor/tus.min.js");
const TUS_JS_LICENSE: &str = include_str!("../assets/vendor/tus-js-client-LICENSE");
pub const TUS_JS_PATH: &str = "/ui/tus-js-client-4.3.1.min.js";
const UPLOAD_JS: &str = include_str!("../assets/upload.js");
/// Pages without events of their own (workers' heartbeats) refresh this often.
const WORKERS_REFRESH_MS: u32 = 3000;

pub fn router(st: AppState) -> Router {
    Router::new()
        .route("/", get(overview_page))
        .route("/jobs", get(jobs_page))
        .route("/jobs/{id}", get(job_page))
        .route("/jobs/{id}/{action}", post(job_action))
        .route("/workers", get(workers_page))
        .route("/workers/add", get(add_worker_page).post(create_join_token))
        .route("/workers/{id}/{action}", post(worker_action))
        .route("/join-tokens/{digest}/revoke", post(revoke_join_token))
        .route("/pipelines", get(pipelines_page).post(create_submit_token))
        .route("/upload", get(upload_page))
        .route("/pipelines/{id}/revoke", post(revoke_submit_token))
        .route("/login", get(login_page).post(login_form))
        .route("/logout", post(logout))
        .route("/metrics", get(metrics))
        .route("/ui/app.js", get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }))
        .route("/ui/events.js", get(|| async { asset(EVENTS_JS, "text/javascript; charset=utf-8") }))
        .route("/ui/app.css", get(|| async { asset(APP_CSS, "text/css; charset=utf-8") }))
        .route(HLS_JS_PATH, get(|| async { cached_asset(HLS_JS, "text/javascript; charset=utf-8") }))
        .route("/ui/hls.js-LICENSE.txt", get(|| async { asset(HLS_JS_LICENSE, "text/plain; charset=utf-8") }))
        .route(TUS_JS_PATH, get(|| async { cached_asset(TUS_JS, "text/javascript; charset=utf-8") }))
        .route("/ui/tus-js-client-LICENSE.txt", get(|| async { asset(TUS_JS_LICENSE, "text/plain; charset=utf-8") }))
        .route("/ui/upload.js", get(|| async { asset(UPLOAD_JS, "text/javascript; charset=utf-8") }))
        .route("/ui/events", get(events))
        .route("/ui/fragment/overview", get(overview_fragment))
        .route("/ui/fragment/jobs", get(jobs_fragment))
        .route("/ui/fragment/jobs/{id}", get(job_fragment))
        .route("/ui/fragment/workers", get(workers_fragment))
        .route("/ui/files/{*path}", get(file))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(st)
}

async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self'; media-src 'self' blob:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // The login link carries a token in its URL: never send it to another site. (Not
    // `no-referrer`: browsers then send `Origin: null` on form posts.)
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

/// An asset whose URL carries its version: cached for a year.
fn cached_asset(body: &'static str, content_type: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "public, max-age=31536000, immutable")], body).into_response()
}

/// The signed-in session of a request, if any.
async fn session(st: &AppState, headers: &HeaderMap) -> Option<Session> {
    let cookie = cookie_value(headers)?;
    st.queue.session(cookie, now_ms()).await.ok().flatten()
}

/// A page request without a session goes to the sign-in form.
enum Denied {
    ToLogin,
    Unauthorized,
    Forbidden(&'static str),
    Failed(String),
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        match self {
            Denied::ToLogin => Redirect::to("/login").into_response(),
            Denied::Unauthorized => (StatusCode::UNAUTHORIZED, "sign in first").into_response(),
            Denied::Forbidden(why) => (StatusCode::FORBIDDEN, why).into_response(),
            Denied::Failed(e) => (StatusCode::INTERNAL_SERVER_ERROR, Html(format!("<p>{}</p>", html::esc(&e)))).into_response(),
        }
    }
}

fn failed(e: impl std::fmt::Display) -> Denied {
    Denied::Failed(e.to_string())
}

async fn page_session(st: &AppState, headers: &HeaderMap) -> Result<Session, Denied> {
    session(st, headers).await.ok_or(Denied::ToLogin)
}

async fn api_session(st: &AppState, headers: &HeaderMap) -> Result<Session, Denied> {
    session(st, headers).await.ok_or(Denied::Unauthorized)
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

/// The checks every POST passes: a session, its CSRF token, and a same-origin `Origin`.
async fn checked_post(st: &AppState, headers: &HeaderMap, csrf: &str) -> Result<Session, Denied> {
    let s = api_session(st, headers).await?;
    if !constant_time_eq(s.csrf.as_bytes(), csrf.as_bytes()) {
        return Err(Denied::Forbidden("the form is stale or forged (CSRF token mismatch); reload the page"));
    }
    same_origin(headers)?;
    Ok(s)
}

/// A POST's `Origin`, when the browser sends one, must be this host.
fn same_origin(headers: &HeaderMap) -> Result<(), Denied> {
    if coordinator::sessions::same_origin(headers) { Ok(()) } else { Err(Denied::Forbidden("cross-origin request refused")) }
}

// ---- sign-in

#[derive(Deserialize)]
struct LoginQuery {
    token: Option<String>,
}

async fn start_session(st: &AppState, headers: &HeaderMap) -> Result<Response, Denied> {
    let (cookie, _) = st.queue.create_session(now_ms()).await.map_err(failed)?;
    let set = format!("{COOKIE}={cookie}; Path=/; HttpOnly; SameSite=Strict{}; Max-Age={}", secure(headers), SESSION_TTL_MS / 1000);
    Ok(([(header::SET_COOKIE, set)], Redirect::to("/")).into_response())
}

/// The scheme the browser used: `https` behind a TLS-terminating proxy that says so
/// (`X-Forwarded-Proto` or `Forwarded: proto=`), else `http`.
fn scheme(headers: &HeaderMap) -> &'static str {
    let says_https = |name: &str, prefix: &str| {
        headers.get(name).and_then(|v| v.to_str().ok()).is_some_and(|v| {
            v.split([',', ';'])
                .next()
                .is_some_and(|first| first.trim().strip_prefix(prefix).is_some_and(|p| p.eq_ignore_ascii_case("https")))
        })
    };
    if says_https("x-forwarded-proto", "") || says_https("forwarded", "proto=") { "https" } else { "http" }
}

/// `; Secure` for cookies set over HTTPS. (A client that claims HTTPS over plain
/// HTTP only gets a cookie its own browser will not send back.)
fn secure(headers: &HeaderMap) -> &'static str {
    if scheme(headers) == "https" { "; Secure" } else { "" }
}

async fn login_page(State(st): State<AppState>, headers: HeaderMap, Query(q): Query<LoginQuery>) -> Result<Response, Denied> {
    match q.token {
        Some(t) if t.len() <= 128 && st.queue.use_login_link(&t, now_ms()).await.map_err(failed)? => start_session(&st, &headers).await,
        Some(_) => Ok((
            StatusCode::UNAUTHORIZED,
            Html(pages::login(Some("This login link is invalid, used or expired. Sign in with the admin token."))),
        )
            .into_response()),
        None => Ok(Html(pages::login(None)).into_response()),
    }
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login_form(State(st): State<AppState>, headers: HeaderMap, Form(f): Form<LoginForm>) -> Result<Response, Denied> {
    // Like every other POST: a page elsewhere cannot sign a browser in (login CSRF).
    same_origin(&headers)?;
    let caller = if f.token.len() <= 256 { st.queue.authenticate(f.token.trim(), now_ms()).await.map_err(failed)? } else { None };
    match caller {
        Some(c) if c.role == Role::Admin => start_session(&st, &headers).await,
        _ => Ok((StatusCode::UNAUTHORIZED, Html(pages::login(Some("That is not an admin token.")))).into_response()),
    }
}

async fn logout(State(st): State<AppState>, headers: HeaderMap, Form(f): Form<CsrfForm>) -> Result<Response, Denied> {
    checked_post(&st, &headers, &f.csrf).await?;
    if let Some(c) = cookie_value(&headers) {
        st.queue.end_session(c).await.map_err(failed)?;
    }
    let clear = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict{}; Max-Age=0", secure(&headers));
    Ok(([(header::SET_COOKIE, clear)], Redirect::to("/login")).into_response())
}

// ---- pages and their live fragments

async fn overview_html(st: &AppState) -> Result<String, Denied> {
    Ok(pages::overview(&st.queue.overview(now_ms()).await.map_err(failed)?))
}

async fn overview_page(State(st): State<AppState>, headers: HeaderMap) -> Result<Html<String>, Denied> {
    let s = page_session(&st, &headers).await?;
    Ok(Html(html::page("Overview", "/", &s.csrf, "/ui/fragment/overview", 5000, &overview_html(&st).await?)))
}

async fn overview_fragment(State(st): State<AppState>, headers: HeaderMap) -> Result<Html<String>, Denied> {
    api_session(&st, &headers).await?;
    Ok(Html(overview_html(&st).await?))
}

#[derive(Deserialize)]
struct JobsQuery {
    state: Option<String>,
    page: Option<i64>,
}

impl JobsQuery {
    fn state(&self) -> Option<&str> {
        self.state.as_deref().filter(|s| pages::JOB_STATES.contains(s))
    }

    fn query_string(&self) -> String {
        let mut q = format!("?page={}", self.page.unwrap_or(0).max(0));
        if let Some(s) = self.state() {
            let _ = write!(q, "&state={s}");
        }
        q
    }
}

async fn jobs_html(st: &AppState, q: &JobsQuery) -> Result<String, Denied> {
    let page = q.page.unwrap_or(0).clamp(0, 1_000_000);
    let list = st.queue.list_jobs(q.state(), page, pages::JOBS_PER_PAGE).await.map_err(failed)?;
    let total = st.queue.count_jobs(q.state()).await.map_err(failed)?;
    Ok(pages::jobs(&list, q.state(), page, total, now_ms()))
}

async fn jobs_page(State(st): State<AppState>, headers: HeaderMap, Query(q): Query<JobsQuery>) -> Result<Html<String>, Denied> {
    let s = page_session(&st, &headers).await?;
    let fragment = format!("/ui/fragment/jobs{}", q.query_string());
    Ok(Html(html::page("Jobs", "/jobs", &s.csrf, &fragment, 0, &jobs_html(&st, &q).await?)))
}

async fn jobs_fragment(State(st): State<AppState>, headers: HeaderMap, Query(q): Query<JobsQuery>) -> Result<Html<String>, Denied> {
    api_session(&st, &headers).await?;
    Ok(Html(jobs_html(&st, &q).await?))
}

async fn job_html(st: &AppState, id: &str, csrf: &str) -> Result<Option<String>, Denied> {
    let Some(job) = st.queue.job(id).await.map_err(failed)? else { return Ok(None) };
    let results = st.queue.task_results(id).await.map_err(failed)?;
    let names = st.queue.job_worker_names(id).await.map_err(failed)?;
    Ok(Some(pages::job(&job, &results, &names, csrf, now_ms())))
}

async fn job_page(State(st): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Result<Response, Denied> {
    let s = page_session(&st, &headers).await?;
    let Some(body) = job_html(&st, &id, &s.csrf).await? else {
        return Ok(
            (StatusCode::NOT_FOUND, Html(html::page("No such job", "/jobs", &s.csrf, "", 0, "<h1>No such job</h1>"))).into_response()
        );
    };
    let fragment = format!("/ui/fragment/jobs/{}", html::esc(&id));
    // The player's library loads with the page, so a fragment that gains the
    // player when the job succeeds finds it there.
    Ok(Html(html::page_with_scripts("Job", "/jobs", &s.csrf, &fragment, 0, &body, &[HLS_JS_PATH])).into_response())
}

async fn job_fragment(State(st): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Result<Response, Denied> {
    let s = api_session(&st, &headers).await?;
    match job_html(&st, &id, &s.csrf).await? {
        Some(body) => Ok(Html(body).into_response()),
        None => Ok(StatusCode::NOT_FOUND.into_response()),
    }
}

/// The job page's buttons: cancel and retry.
async fn job_action(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Form(f): Form<CsrfForm>,
) -> Result<Response, Denied> {
    checked_post(&st, &headers, &f.csrf).await?;
    let done = match action.as_str() {
        "cancel" => coordinator::lifecycle::cancel(&st, &id).await,
        "retry" => coordinator::lifecycle::retry(&st, &id).await,
        _ => return Ok(StatusCode::NOT_FOUND.into_response()),
    };
    match done {
        Ok(_) => Ok(Redirect::to(&format!("/jobs/{id}")).into_response()),
        Err(e) => Ok(e.into_response()),
    }
}

async fn workers_html(st: &AppState, csrf: &str) -> Result<String, Denied> {
    let list = st.queue.list_workers(now_ms()).await.map_err(failed)?;
    Ok(pages::workers(&list, csrf, now_ms()))
}

async fn workers_page(State(st): State<AppState>, headers: HeaderMap) -> Result<Html<String>, Denied> {
    let s = page_session(&st, &headers).await?;
    Ok(Html(html::page("Workers", "/workers", &s.csrf, "/ui/fragment/workers", WORKERS_REFRESH_MS, &workers_html(&st, &s.csrf).await?)))
}

async fn workers_fragment(State(st): State<AppState>, headers: HeaderMap) -> Result<Html<String>, Denied> {
    let s = api_session(&st, &headers).await?;
    Ok(Html(workers_html(&st, &s.csrf).await?))
}

async fn worker_action(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Form(f): Form<CsrfForm>,
) -> Result<Response, Denied> {
    checked_post(&st, &headers, &f.csrf).await?;
    let done = match action.as_str() {
        "drain" => coordinator::workers_api::set_draining(&st, &id, true).await,
        "resume" => coordinator::workers_api::set_draining(&st, &id, false).await,
        "remove" => coordinator::workers_api::remove(&st, &id).await,
        _ => return Ok(StatusCode::NOT_FOUND.into_response()),
    };
    match done {
        Ok(()) => Ok(Redirect::to("/workers").into_response()),
        Err(e) => Ok(e.into_response()),
    }
}

async fn add_worker_html(st: &AppState, csrf: &str, command: Option<&str>) -> Result<String, Denied> {
    let tokens = st.queue.join_tokens(now_ms()).await.map_err(failed)?;
    Ok(pages::add_worker(&tokens, command, csrf, now_ms()))
}

async fn add_worker_page(State(st): State<AppState>, headers: HeaderMap) -> Result<Html<String>, Denied> {
    let s = page_session(&st, &headers).await?;
    Ok(Html(html::page("Add a worker", "/workers/add", &s.csrf, "", 0, &add_worker_html(&st, &s.csrf, None).await?)))
}

#[derive(Deserialize)]
struct JoinForm {
    csrf: String,
    uses: i64,
    ttl_seconds: i64,
}

async fn create_join_token(State(st): State<AppState>, headers: HeaderMap, Form(f): Form<JoinForm>) -> Result<Response, Denied> {
    let s = checked_post(&st, &headers, &f.csrf).await?;
    let token = match coordinator::api::mint_join_token(&st, f.uses, f.ttl_seconds).await {
        Ok((token, _)) => token,
        Err(e) => return Ok(e.into_response()),
    };
    // The address this browser reached us at is one the new machine can likely reach too.
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("COORDINATOR:8600");
    let command = format!("drake worker --coordinator {}://{host} --token {token}", scheme(&headers));
    let body = add_worker_html(&st, &s.csrf, Some(&command)).await?;
    Ok(([(header::CACHE_CONTROL, "no-store")], Html(html::page("Add a worker", "/workers/add", &s.csrf, "", 0, &body))).into_response())
}

async fn revoke_join_token(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(digest): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Result<Response, Denied> {
    checked_post(&st, &headers, &f.csrf).await?;
    st.queue.revoke_join_token(&digest).await.map_err(failed)?;
    coordinator::state::audit(&format!("join token {} revoked", digest.get(..12).unwrap_or_default()));
    Ok(Redirect::to("/workers/add").into_response())
}

async fn pipelines_html(st: &AppState, csrf: &str, new_token: Option<(&str, &str)>) -> Result<String, Denied> {
    let tokens = st.queue.submit_tokens().await.map_err(failed)?;
    Ok(pages::pipelines(&tokens, new_token, csrf, now_ms()))
}

async fn pipelines_page(State(st): State<AppState>, headers: HeaderMap) -> Result<Html<String>, Denied> {
    let s = page_session(&st, &headers).await?;
    Ok(Html(html::page("Pipelines", "/pipelines", &s.csrf, "", 0, &pipelines_html(&st, &s.csrf, None).await?)))
}

/// Ops send a test file from the browser: tus, resumable, as the signed-in session.
async fn upload_page(State(st): State<AppState>, headers: HeaderMap) -> Result<Html<String>, Denied> {
    let s = page_session(&st, &headers).await?;
    let profiles: Vec<&str> = proto::profile::Profile::builtin_names().collect();
    let body = pages::upload(&s.csrf, &profiles, st.limits.max_upload_bytes);
    Ok(Html(html::page_with_scripts("Upload", "/upload", &s.csrf, "", 0, &body, &[TUS_JS_PATH, "/ui/upload.js"])))
}

#[derive(Deserialize)]
struct PipelineForm {
    csrf: String,
    label: String,
}

/// A new submit token for an upload pipeline, shown once.
async fn create_submit_token(State(st): State<AppState>, headers: HeaderMap, Form(f): Form<PipelineForm>) -> Result<Response, Denied> {
    let s = checked_post(&st, &headers, &f.csrf).await?;
    let label = f.label.trim();
    if label.is_empty() || label.len() > 100 || label.chars().any(char::is_control) {
        return Ok(coordinator::api::ApiError::BadRequest("a pipeline's name is 1 to 100 characters".into()).into_response());
    }
    let token = match coordinator::api::mint_submit_token(&st, label).await {
        Ok(t) => t,
        Err(e) => return Ok(e.into_response()),
    };
    let body = pipelines_html(&st, &s.csrf, Some((label, &token))).await?;
    Ok(([(header::CACHE_CONTROL, "no-store")], Html(html::page("Pipelines", "/pipelines", &s.csrf, "", 0, &body))).into_response())
}

async fn revoke_submit_token(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Result<Response, Denied> {
    checked_post(&st, &headers, &f.csrf).await?;
    match coordinator::api::revoke_submit_token(&st, &id).await {
        Ok(()) => Ok(Redirect::to("/pipelines").into_response()),
        Err(e) => Ok(e.into_response()),
    }
}

// ---- live data

async fn events(State(st): State<AppState>, headers: HeaderMap) -> Result<Response, Denied> {
    api_session(&st, &headers).await?;
    let rx = st.events.subscribe();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let event = match rx.recv().await {
            Ok(data) => Event::default().data(data),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Event::default().data("{\"type\":\"lagged\"}"),
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok::<_, std::convert::Infallible>(event), rx))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

/// Stored files for the player and images: read-only, for signed-in browsers.
async fn file(State(st): State<AppState>, headers: HeaderMap, Path(path): Path<String>, req: Request) -> Result<Response, Denied> {
    api_session(&st, &headers).await?;
    let dav_path = format!("/dav/{path}");
    if !coordinator::dav::path_allowed(&dav_path) || path.split('/').any(|s| s.starts_with('.')) {
        return Err(Denied::Forbidden("that path is not served"));
    }
    match coordinator::dav::read_response(&st, &path, req.headers()).await {
        Ok(resp) => Ok(resp),
        Err(e) => Ok((StatusCode::BAD_GATEWAY, e.to_string()).into_response()),
    }
}

/// Prometheus text format. Scrapers present the admin token as a bearer token.
async fn metrics(State(st): State<AppState>, headers: HeaderMap) -> Result<Response, Denied> {
    let by_token = match bearer_of(&headers) {
        Some(t) => st.queue.authenticate(t, now_ms()).await.map_err(failed)?.is_some_and(|c| c.role == Role::Admin),
        None => false,
    };
    if !by_token && session(&st, &headers).await.is_none() {
        return Err(Denied::Unauthorized);
    }
    let m = st.queue.metrics(now_ms()).await.map_err(failed)?;
    let workers = st.queue.list_workers(now_ms()).await.map_err(failed)?;
    let mut out = String::new();
    out.push_str("# HELP drake_jobs Jobs by state.\n# TYPE drake_jobs gauge\n");
    for (s, n) in &m.jobs_by_state {
        let _ = writeln!(out, "drake_jobs{{state=\"{s}\"}} {n}");
    }
    out.push_str("# HELP drake_tasks Tasks by state (queue depth: state=\"queued\").\n# TYPE drake_tasks gauge\n");
    for (s, n) in &m.tasks_by_state {
        let _ = writeln!(out, "drake_tasks{{state=\"{s}\"}} {n}");
    }
    out.push_str("# HELP drake_task_duration_seconds Leased to succeeded, per task kind.\n# TYPE drake_task_duration_seconds histogram\n");
    for (kind, buckets, count, sum) in &m.task_durations {
        for (le, n) in coordinator::stats::DURATION_BUCKETS.iter().zip(buckets) {
            let _ = writeln!(out, "drake_task_duration_seconds_bucket{{kind=\"{kind}\",le=\"{le}\"}} {n}");
        }
        let _ = writeln!(out, "drake_task_duration_seconds_bucket{{kind=\"{kind}\",le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "drake_task_duration_seconds_sum{{kind=\"{kind}\"}} {sum}");
        let _ = writeln!(out, "drake_task_duration_seconds_count{{kind=\"{kind}\"}} {count}");
    }
    out.push_str("# HELP drake_task_failures_total Failed task attempts: reported by a worker, or lease expired.\n# TYPE drake_task_failures_total counter\n");
    for kind in ["failed", "expired"] {
        let n = m.failures.iter().find(|(k, _)| k == kind).map_or(0, |(_, n)| *n);
        let _ = writeln!(out, "drake_task_failures_total{{kind=\"{kind}\"}} {n}");
    }
    out.push_str("# HELP drake_workers Worker machines by state.\n# TYPE drake_workers gauge\n");
    for state in ["idle", "busy", "draining", "paused", "offline"] {
        let _ = writeln!(out, "drake_workers{{state=\"{state}\"}} {}", workers.iter().filter(|w| w.state == state).count());
    }
    out.push_str(
        "# HELP drake_published_bytes_total Bytes of outputs published by succeeded tasks.\n# TYPE drake_published_bytes_total counter\n",
    );
    let _ = writeln!(out, "drake_published_bytes_total {}", m.bytes_published);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out).into_response())
}

fn bearer_of(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).map(str::trim)
}
