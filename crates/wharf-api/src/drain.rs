//! Reading what a client still sends after an early answer.
//!
//! A request can be answered before its body is read: a 401 to an anonymous
//! upload, a 413 to an oversized manifest, a 429. Dropping the unread body
//! then makes HTTP/2 reset the stream (RST_STREAM), and some clients (curl
//! 7.88, for one) report the reset instead of the answer they already
//! received; over HTTP/1.1 it costs the connection. So every request body
//! goes through [`Drainable`], and once the handler has answered, whatever
//! it left unread is read and discarded in the background, up to
//! [`DRAIN_LIMIT`] bytes (past it the body is dropped; the connection's
//! lingering close, in [`crate::server`], covers HTTP/1.1). The request
//! body's idle timeout still applies, so a client that stops sending is not
//! waited for.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;

/// The most a client may still send after its answer and have it read.
pub const DRAIN_LIMIT: u64 = 64 << 20;

type Shared = Arc<Mutex<Option<Body>>>;

/// A request body whose unread rest stays reachable after the handler has
/// dropped it.
struct Drainable(Shared);

impl HttpBody for Drainable {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match g.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        let g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        g.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        g.as_ref().map(|b| b.size_hint()).unwrap_or_default()
    }
}

/// The middleware: hands the handler a [`Drainable`] body and, after the
/// answer, drains what it left.
pub(crate) async fn drain_unread(req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    if body.is_end_stream() {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let shared: Shared = Arc::new(Mutex::new(Some(body)));
    let req = Request::from_parts(parts, Body::new(Drainable(shared.clone())));
    let resp = next.run(req).await;
    let rest = shared.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(rest) = rest
        && !rest.is_end_stream()
    {
        tokio::spawn(async move {
            let mut rest = rest;
            let mut read = 0u64;
            while let Some(frame) = rest.frame().await {
                let Ok(frame) = frame else { return };
                if let Some(d) = frame.data_ref() {
                    read += d.len() as u64;
                    if read > DRAIN_LIMIT {
                        return;
                    }
                }
            }
        });
    }
    resp
}
