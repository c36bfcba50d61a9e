//! CORS for browser clients of the API (a web uploader using tus-js-client or Uppy,
//! a page polling its jobs): only origins the operator named (`--cors-origin`) get
//! the headers, and they are never sent with credentials, since the API
//! authenticates with a bearer token, not a cookie. A request from any other origin
//! is served as if CORS did not exist, so the browser refuses its answer to the page.
//!
//! A preflight (OPTIONS with `Access-Control-Request-Method`) from an allowed
//! origin is answered here; a plain OPTIONS still reaches tus's own discovery.

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// What a browser may send: the bearer token and tus's request headers.
const ALLOW_HEADERS: &str = "authorization, content-type, idempotency-key, tus-resumable, upload-length, upload-metadata, upload-offset, upload-defer-length, upload-checksum, upload-concat, x-http-method-override, x-requested-with";
const ALLOW_METHODS: &str = "GET, POST, HEAD, PATCH, DELETE, OPTIONS";
/// What a page may read of an answer: tus's response headers and the job an upload made.
const EXPOSE_HEADERS: &str = "location, upload-offset, upload-length, upload-defer-length, upload-expires, upload-metadata, tus-resumable, tus-version, tus-extension, tus-max-size, tus-checksum-algorithm, drake-job";
/// How long a browser may cache a preflight.
const MAX_AGE_SECONDS: &str = "86400";

/// The origins allowed to call the API from a browser.
#[derive(Debug, Default)]
pub struct Origins {
    any: bool,
    listed: Vec<String>,
}

impl Origins {
    /// `*` (any origin) or origins such as `https://upload.example.com`.
    pub fn parse(origins: &[String]) -> Result<Origins, String> {
        let mut o = Origins::default();
        for raw in origins.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
            if raw == "*" {
                o.any = true;
                continue;
            }
            let url = url::Url::parse(raw).map_err(|e| format!("--cors-origin {raw}: {e}"))?;
            let origin = url.origin().ascii_serialization();
            if !matches!(url.scheme(), "http" | "https") || origin.trim_end_matches('/') != raw.trim_end_matches('/') {
                return Err(format!("--cors-origin {raw}: give an origin, scheme://host[:port], without a path"));
            }
            o.listed.push(origin);
        }
        Ok(o)
    }

    fn allows(&self, origin: &str) -> bool {
        self.any || self.listed.iter().any(|o| o == origin)
    }

    pub fn is_empty(&self) -> bool {
        !self.any && self.listed.is_empty()
    }
}

/// The middleware: `origins` is the coordinator's list.
pub async fn layer(origins: std::sync::Arc<Origins>, req: Request, next: Next) -> Response {
    if origins.is_empty() {
        return next.run(req).await;
    }
    let origin = req.headers().get(header::ORIGIN).and_then(|v| v.to_str().ok()).map(str::to_string);
    let Some(origin) = origin.filter(|o| origins.allows(o)) else {
        let mut resp = next.run(req).await;
        // The answer differs by origin: caches must not give this one to an allowed page.
        resp.headers_mut().append(header::VARY, HeaderValue::from_static("origin"));
        return resp;
    };
    let preflight = req.method() == Method::OPTIONS && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut resp = if preflight { StatusCode::NO_CONTENT.into_response() } else { next.run(req).await };
    let h = resp.headers_mut();
    allow(h, &origin);
    if preflight {
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(ALLOW_METHODS));
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static(ALLOW_HEADERS));
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(MAX_AGE_SECONDS));
    } else {
        h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(EXPOSE_HEADERS));
    }
    resp
}

fn allow(h: &mut HeaderMap, origin: &str) {
    if let Ok(v) = HeaderValue::from_str(origin) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    h.append(header::VARY, HeaderValue::from_static("origin"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_exact_and_without_paths() {
        let o = Origins::parse(&["https://up.example.com".into(), "http://localhost:8080".into()]).unwrap();
        assert!(o.allows("https://up.example.com") && o.allows("http://localhost:8080"));
        assert!(!o.allows("https://up.example.com.evil.net") && !o.allows("http://up.example.com") && !o.allows("null"));
        assert!(Origins::parse(&["https://up.example.com/path".into()]).is_err());
        assert!(Origins::parse(&["ftp://x".into()]).is_err());
        assert!(Origins::parse(&["*".into()]).unwrap().allows("https://anything.example"));
        assert!(Origins::parse(&[]).unwrap().is_empty());
    }
}
