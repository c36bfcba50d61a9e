//! Storage: the data dir's `storage/` served over WebDAV under `/dav/` (dav-server),
//! behind the same bearer tokens as the API. Workers read sources and publish
//! outputs here; upload pipelines read results.
//!
//! Layout: `jobs/ID/source` (an upload), `jobs/ID/RENDITION/...`,
//! `jobs/ID/thumbnails/...`, `jobs/ID/master.m3u8`, `jobs/ID/manifest.json`;
//! `uploads/` holds uploads in flight and is never served.

use crate::api::{ApiError, AppState, bearer, now_ms};
use crate::auth::Role;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use dav_server::{DavConfig, DavHandler, localfs::LocalFs, memls::MemLs};
use std::path::Path;

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

/// Storage path of an uploaded source.
pub fn source_path(job: &str) -> String {
    format!("jobs/{job}/source")
}

/// Final storage directory of one task's outputs.
pub fn output_dir(job: &str, rendition: Option<&str>) -> String {
    format!("jobs/{job}/{}", rendition.unwrap_or("thumbnails"))
}

/// Where the holder of lease `epoch` publishes. Only the epoch whose completion the
/// queue accepts is promoted to [`output_dir`], so a worker that lost its lease can
/// never overwrite the outputs of the one that holds it now.
pub fn staging_dir(job: &str, rendition: Option<&str>, epoch: i64) -> String {
    format!("jobs/{job}/.staging/{}.e{epoch}", rendition.unwrap_or("thumbnails"))
}

/// Moves an accepted attempt's staging directory into place and removes every
/// other attempt's leftovers (partial uploads of lost leases).
pub async fn promote(root: &Path, job: &str, rendition: Option<&str>, epoch: i64) -> std::io::Result<String> {
    let final_dir = output_dir(job, rendition);
    let target = root.join(&final_dir);
    if tokio::fs::metadata(&target).await.is_ok() {
        tokio::fs::remove_dir_all(&target).await?;
    }
    tokio::fs::rename(root.join(staging_dir(job, rendition, epoch)), &target).await?;
    let staging = root.join(format!("jobs/{job}/.staging"));
    let prefix = format!("{}.e", rendition.unwrap_or("thumbnails"));
    if let Ok(mut entries) = tokio::fs::read_dir(&staging).await {
        while let Ok(Some(e)) = entries.next_entry().await {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = tokio::fs::remove_dir_all(e.path()).await;
            }
        }
    }
    let _ = tokio::fs::remove_dir(&staging).await;
    Ok(final_dir)
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
    let (parts, body) = req.into_parts();
    let caller = match bearer(&parts) {
        Some(t) => st.queue.authenticate(t, now_ms()).await.ok().flatten(),
        None => None,
    };
    let Some(caller) = caller else {
        return ApiError::Unauthorized.into_response();
    };
    let read_only = READ_METHODS.contains(&parts.method.as_str());
    let allowed = match caller.role {
        Role::Admin | Role::Worker => true,
        Role::Submit => read_only,
        Role::Join => false,
    };
    if !allowed {
        return ApiError::Forbidden.into_response();
    }
    // MOVE and COPY name a second path in the Destination header; check it too.
    let destination_ok = match parts.headers.get("destination").and_then(|v| v.to_str().ok()) {
        Some(d) => {
            let path = d.find("/dav").map(|i| &d[i..]).unwrap_or("");
            path_allowed(path)
        }
        None => true,
    };
    if !path_allowed(parts.uri.path()) || !destination_ok || parts.method == Method::from_bytes(b"PROPPATCH").expect("method") {
        return ApiError::Forbidden.into_response();
    }
    let principal = caller.label.unwrap_or_else(|| caller.role.as_str().to_string());
    let req = Request::from_parts(parts, body);
    st.dav.handle_with(DavConfig::new().principal(principal), req).await.into_response()
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
}
