//! Lingering close: a request answered before its body was read (a refusal, most
//! often: 413, 429, 401) has the rest of its body read and dropped after the
//! answer goes out.
//!
//! A server that closes a connection with unread bytes makes the kernel reset it,
//! and a client still sending then sees the reset instead of the answer (curl
//! said `000` where a 413 was due, or `100` when the refusal came mid-upload,
//! after it had been invited to send). nginx's lingering close does the same as
//! this layer. It wraps every request's body; when the handler is done with a
//! body it had not read to its end, the rest comes back here. The answer is sent
//! at once, and the connection is kept reading, within [`LINGER_BYTES`] and
//! [`LINGER_TIME`], so that the client reads the answer and stops sending before
//! the connection closes. A client that sent `Expect: 100-continue` and was
//! never invited to send has sent nothing, and its connection closes at once.

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::header::EXPECT;
use axum::middleware::Next;
use axum::response::Response;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// At most what an answered request's body is read on for, and for how long.
const LINGER_BYTES: u64 = 4 << 20;
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// The middleware (see the module's doc).
pub async fn layer(req: Request, next: Next) -> Response {
    let expects_continue = req.headers().get(EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let left = Arc::new(Mutex::new(None));
    let req = req.map(|body| Body::new(Tracked { body, polled: false, ended: false, left: left.clone() }));
    let response = next.run(req).await;
    let rest = left.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(Left { body, polled }) = rest
        && (polled || !expects_continue)
    {
        // Held by this task, the body keeps the connection reading after the
        // answer is written.
        tokio::spawn(drain(body));
    }
    response
}

/// Reads and drops `body` within the linger bounds.
async fn drain(body: Body) {
    let mut stream = body.into_data_stream();
    let read_on = async {
        let mut read = 0;
        while let Some(Ok(chunk)) = futures_util::StreamExt::next(&mut stream).await {
            read += chunk.len() as u64;
            if read > LINGER_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, read_on).await;
}

/// What a handler left of a body it did not read to its end.
struct Left {
    body: Body,
    /// Whether anyone asked for its bytes (which, for a client that expects
    /// `100-continue`, invited it to send).
    polled: bool,
}

/// A request's body that hands its unread rest back to [`layer`] when dropped.
struct Tracked {
    body: Body,
    polled: bool,
    ended: bool,
    left: Arc<Mutex<Option<Left>>>,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        self.polled = true;
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        if matches!(frame, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.ended = true;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if !self.ended && !self.body.is_end_stream() {
            let body = std::mem::take(&mut self.body);
            *self.left.lock().unwrap_or_else(|e| e.into_inner()) = Some(Left { body, polled: self.polled });
        }
    }
}
