//! Errors answered before the request's body was read to its end (an upload the agent stopped
//! taking, a refused one) say `Connection: close`. hyper closes such a connection after the
//! answer anyway, since the rest of the body is still on the wire; without the header a client
//! that had already sent everything pools the connection, and its next request on it is reset.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use hyper::body::{Body as _, Frame, SizeHint};

/// The middleware (see the module doc).
pub async fn close_if_body_unread(req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    if body.is_end_stream() {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let ended = Arc::new(AtomicBool::new(false));
    let body = Body::new(EndWatch {
        inner: body,
        ended: Arc::clone(&ended),
    });
    let mut resp = next.run(Request::from_parts(parts, body)).await;
    let status = resp.status();
    if (status.is_client_error() || status.is_server_error()) && !ended.load(Ordering::Acquire) {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// A request body that records when it was read to its end.
struct EndWatch {
    inner: Body,
    ended: Arc<AtomicBool>,
}

impl hyper::body::Body for EndWatch {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.ended.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use axum::routing::post;
    use axum::Router;
    use tower::ServiceExt;

    use super::*;

    fn app() -> Router {
        Router::new()
            .route("/refuse", post(|| async { StatusCode::BAD_GATEWAY }))
            .route(
                "/read",
                post(|body: Bytes| async move { (StatusCode::BAD_REQUEST, body) }),
            )
            .route("/ok", post(|| async { StatusCode::OK }))
            .layer(axum::middleware::from_fn(close_if_body_unread))
    }

    async fn connection(path: &str, body: &'static str) -> Option<String> {
        let req = Request::post(path).body(Body::from(body)).unwrap();
        let resp = app().oneshot(req).await.unwrap();
        resp.headers()
            .get(header::CONNECTION)
            .map(|v| v.to_str().unwrap().to_owned())
    }

    #[tokio::test]
    async fn only_errors_that_left_the_body_unread_close() {
        assert_eq!(
            connection("/refuse", "data").await.as_deref(),
            Some("close")
        );
        assert_eq!(connection("/read", "data").await, None);
        assert_eq!(connection("/refuse", "").await, None);
        assert_eq!(connection("/ok", "data").await, None);
    }
}
