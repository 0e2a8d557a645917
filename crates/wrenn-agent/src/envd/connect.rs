//! The Connect protocol with the JSON codec (E2B contract §3.1–§3.5), by hand.
//!
//! Why by hand: envd needs unary JSON bodies, 5-byte envelopes for streams and one error shape,
//! about 200 lines. The Rust Connect crates (`connectrpc`, `connectrpc-axum`, `axum-connect`)
//! are built around prost code generated from `.proto` files (a `protoc` build step for a wire we
//! only speak as JSON), and the axum one calls itself not ready for production.
//!
//! Framing: an envelope is `flags` (1 byte), `length` (u32 big-endian), then `length` bytes of
//! JSON. Flags `0x00` carry a message, `0x02` the end of a stream (`{}` or `{"error": ...}`).

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use tokio::sync::mpsc;

/// Content type of unary calls.
pub const UNARY_CONTENT_TYPE: &str = "application/json";
/// Content type of streaming calls; the SDK compares it exactly (no parameters).
pub const STREAM_CONTENT_TYPE: &str = "application/connect+json";
/// Flag of the end-of-stream envelope.
const END_STREAM: u8 = 0x02;
/// Flag of a compressed envelope, which we never accept.
const COMPRESSED: u8 = 0x01;
/// Largest request message accepted (a `SendInput` of a few MiB base64 fits).
pub const MAX_MESSAGE: usize = 32 * 1024 * 1024;
/// Keepalive period when the client names none (upstream's default).
const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(90);

/// A Connect error code (§3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// 400.
    InvalidArgument,
    /// 504.
    DeadlineExceeded,
    /// 404.
    NotFound,
    /// 409.
    AlreadyExists,
    /// 403.
    PermissionDenied,
    /// 429.
    ResourceExhausted,
    /// 400.
    FailedPrecondition,
    /// 501.
    Unimplemented,
    /// 500.
    Internal,
    /// 503.
    Unavailable,
    /// 401.
    Unauthenticated,
}

impl Code {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidArgument => "invalid_argument",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::NotFound => "not_found",
            Self::AlreadyExists => "already_exists",
            Self::PermissionDenied => "permission_denied",
            Self::ResourceExhausted => "resource_exhausted",
            Self::FailedPrecondition => "failed_precondition",
            Self::Unimplemented => "unimplemented",
            Self::Internal => "internal",
            Self::Unavailable => "unavailable",
            Self::Unauthenticated => "unauthenticated",
        }
    }

    /// The HTTP status of a unary error with this code.
    pub fn status(self) -> StatusCode {
        let n = match self {
            Self::Internal => 500,
            Self::InvalidArgument | Self::FailedPrecondition => 400,
            Self::DeadlineExceeded => 504,
            Self::NotFound => 404,
            Self::AlreadyExists => 409,
            Self::PermissionDenied => 403,
            Self::ResourceExhausted => 429,
            Self::Unimplemented => 501,
            Self::Unavailable => 503,
            Self::Unauthenticated => 401,
        };
        StatusCode::from_u16(n).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

/// An RPC error: answered as `{"code", "message"}` (unary) or in the end envelope (streams).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct RpcError {
    /// Code.
    pub code: Code,
    /// Message.
    pub message: String,
}

impl RpcError {
    /// Builds an error.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// An `invalid_argument` error.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    /// An `internal` error.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::Internal, message)
    }

    /// A `not_found` error.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({"code": self.code.as_str(), "message": self.message})
    }
}

impl IntoResponse for RpcError {
    fn into_response(self) -> Response {
        if self.code == Code::Internal {
            tracing::error!(message = %self.message, "envd call failed");
        }
        let mut resp = (self.code.status(), self.json().to_string()).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(UNARY_CONTENT_TYPE),
        );
        resp
    }
}

/// A unary success: the message as JSON.
pub fn unary<T: Serialize>(message: &T) -> Response {
    match serde_json::to_vec(message) {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(UNARY_CONTENT_TYPE),
            )],
            body,
        )
            .into_response(),
        Err(e) => RpcError::internal(format!("cannot encode response: {e}")).into_response(),
    }
}

/// Parses a unary request body (an empty body is the empty message).
pub fn parse_unary<T: DeserializeOwned>(headers: &HeaderMap, body: &[u8]) -> Result<T, RpcError> {
    let ct = content_type(headers);
    if !(ct.is_empty() || ct == UNARY_CONTENT_TYPE) {
        return Err(RpcError::invalid(format!(
            "unsupported content type {ct:?}: only {UNARY_CONTENT_TYPE} is served"
        )));
    }
    parse_message(if body.is_empty() { b"{}" } else { body })
}

/// Parses one JSON message.
pub fn parse_message<T: DeserializeOwned>(json: &[u8]) -> Result<T, RpcError> {
    serde_json::from_slice(json).map_err(|e| RpcError::invalid(format!("invalid message: {e}")))
}

fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim)
        .unwrap_or("")
}

/// Checks the content type of a streaming call.
pub fn check_stream_content_type(headers: &HeaderMap) -> Result<(), RpcError> {
    match content_type(headers) {
        STREAM_CONTENT_TYPE => Ok(()),
        ct => Err(RpcError::invalid(format!(
            "unsupported content type {ct:?}: streams need {STREAM_CONTENT_TYPE}"
        ))),
    }
}

/// One envelope.
pub fn envelope(flags: u8, payload: &[u8]) -> Bytes {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(flags);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// The end-of-stream envelope: `{}` or `{"error": ...}`.
pub fn end_envelope(error: Option<&RpcError>) -> Bytes {
    let payload = match error {
        None => serde_json::json!({}),
        Some(e) => serde_json::json!({"error": e.json()}),
    };
    envelope(END_STREAM, payload.to_string().as_bytes())
}

/// Decodes envelopes from a request body as they arrive.
#[derive(Debug, Default)]
pub struct EnvelopeReader {
    buf: Vec<u8>,
}

impl EnvelopeReader {
    /// Adds bytes read from the body.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete envelope as (flags, payload), if one is buffered.
    pub fn next_envelope(&mut self) -> Result<Option<(u8, Vec<u8>)>, RpcError> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let flags = self.buf[0];
        if flags & COMPRESSED != 0 {
            return Err(RpcError::invalid("compressed envelopes are not supported"));
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > MAX_MESSAGE {
            return Err(RpcError::new(
                Code::ResourceExhausted,
                format!("message of {len} bytes exceeds {MAX_MESSAGE}"),
            ));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        let payload = self.buf[5..5 + len].to_vec();
        self.buf.drain(..5 + len);
        Ok(Some((flags, payload)))
    }

    /// Whether bytes of an incomplete envelope remain.
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty()
    }
}

/// Reads the one request message of a server-streaming call.
pub async fn read_single_envelope<T: DeserializeOwned>(body: Body) -> Result<T, RpcError> {
    let mut reader = EnvelopeReader::default();
    let mut stream = body.into_data_stream();
    loop {
        if let Some((flags, payload)) = reader.next_envelope()? {
            if flags & END_STREAM != 0 {
                return Err(RpcError::invalid("request stream carries no message"));
            }
            tokio::spawn(drain(stream));
            return parse_message(&payload);
        }
        match stream.next().await {
            Some(Ok(chunk)) => reader.push(&chunk),
            Some(Err(e)) => return Err(RpcError::invalid(format!("reading request: {e}"))),
            None => return Err(RpcError::invalid("request ended before a whole message")),
        }
    }
}

/// Reads what follows the one message (the request's end) while the answer streams: hyper
/// keeps a connection for the next request only when the request was read to its end, and a
/// client that already reused it would see it reset.
async fn drain(mut stream: axum::body::BodyDataStream) {
    const LIMIT: usize = 64 << 10;
    let mut extra = 0;
    let read = async {
        while let Some(Ok(chunk)) = stream.next().await {
            extra += chunk.len();
            if extra > LIMIT {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(60), read).await;
}

/// The keepalive period a streaming client asked for (`Keepalive-Ping-Interval`, seconds).
pub fn keepalive_interval(headers: &HeaderMap) -> Duration {
    headers
        .get("keepalive-ping-interval")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_KEEPALIVE)
}

/// The deadline a client gave (`Connect-Timeout-Ms`), if any.
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get("connect-timeout-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
}

/// The sending half of a streamed response: messages are flushed as they are sent.
#[derive(Debug)]
pub struct StreamSender {
    tx: mpsc::Sender<Bytes>,
}

impl StreamSender {
    /// Sends one message; false when the client has gone.
    pub async fn send<T: Serialize>(&self, message: &T) -> bool {
        match serde_json::to_vec(message) {
            Ok(json) => self.tx.send(envelope(0, &json)).await.is_ok(),
            Err(_) => false,
        }
    }

    /// Ends the stream, with an error or without.
    pub async fn end(self, error: Option<RpcError>) {
        if let Some(e) = &error {
            tracing::debug!(code = e.code.as_str(), message = %e.message, "stream ended with error");
        }
        let _ = self.tx.send(end_envelope(error.as_ref())).await;
    }

    /// Waits until the client has gone (the response body was dropped).
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

/// A streamed `200 application/connect+json` response and the sender that feeds it.
pub fn stream_response() -> (Response, StreamSender) {
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    let resp = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(STREAM_CONTENT_TYPE),
        )],
        Body::from_stream(body),
    )
        .into_response();
    (resp, StreamSender { tx })
}

/// A streamed response that is only an end envelope carrying `error`.
pub fn stream_error(error: RpcError) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(STREAM_CONTENT_TYPE),
        )],
        end_envelope(Some(&error)),
    )
        .into_response()
}

/// Protobuf-JSON `bytes`: standard base64 with padding; URL-safe and unpadded accepted.
pub fn decode_bytes(s: &str) -> Result<Vec<u8>, RpcError> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    STANDARD
        .decode(s)
        .or_else(|_| STANDARD_NO_PAD.decode(s))
        .or_else(|_| URL_SAFE.decode(s))
        .or_else(|_| URL_SAFE_NO_PAD.decode(s))
        .map_err(|_| RpcError::invalid("bytes field is not base64"))
}

/// Protobuf-JSON `bytes` out.
pub fn encode_bytes(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Protobuf-JSON integers: a JSON number or a decimal string.
pub fn de_int<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i64> + Default,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int {
        N(i64),
        S(String),
        Null(()),
    }
    let n = match Int::deserialize(d)? {
        Int::N(n) => n,
        Int::S(s) => s
            .trim()
            .parse::<i64>()
            .map_err(|_| serde::de::Error::custom(format!("not an integer: {s:?}")))?,
        Int::Null(()) => return Ok(T::default()),
    };
    T::try_from(n).map_err(|_| serde::de::Error::custom(format!("integer out of range: {n}")))
}

/// Like [`de_int`] for optional fields.
pub fn de_opt_int<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i64> + Default,
{
    de_int(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_split() {
        let a = envelope(0, br#"{"a":1}"#);
        let b = end_envelope(None);
        assert_eq!(&a[..5], &[0, 0, 0, 0, 7]);
        assert_eq!(&b[..], b"\x02\x00\x00\x00\x02{}");
        let mut r = EnvelopeReader::default();
        let all = [a.to_vec(), b.to_vec()].concat();
        r.push(&all[..3]);
        assert_eq!(r.next_envelope().expect("ok"), None);
        r.push(&all[3..9]);
        assert_eq!(r.next_envelope().expect("ok"), None);
        r.push(&all[9..]);
        assert_eq!(
            r.next_envelope().expect("ok"),
            Some((0, br#"{"a":1}"#.to_vec()))
        );
        assert_eq!(r.next_envelope().expect("ok"), Some((2, b"{}".to_vec())));
        assert!(!r.has_partial());
        r.push(&[1, 0, 0, 0, 0]);
        assert!(r.next_envelope().is_err());
    }

    #[test]
    fn errors_carry_their_status() {
        let e = end_envelope(Some(&RpcError::not_found("no pid 4")));
        let json: serde_json::Value = serde_json::from_slice(&e[5..]).expect("json");
        assert_eq!(json["error"]["code"], "not_found");
        assert_eq!(Code::Unauthenticated.status().as_u16(), 401);
        assert_eq!(Code::DeadlineExceeded.status().as_u16(), 504);
    }

    #[test]
    fn integers_as_numbers_or_strings() {
        #[derive(Deserialize)]
        struct M {
            #[serde(default, deserialize_with = "de_int")]
            n: u32,
        }
        let m: M = serde_json::from_str(r#"{"n":"42"}"#).expect("string");
        assert_eq!(m.n, 42);
        let m: M = serde_json::from_str(r#"{"n":7}"#).expect("number");
        assert_eq!(m.n, 7);
        assert!(serde_json::from_str::<M>(r#"{"n":-1}"#).is_err());
        assert_eq!(decode_bytes("aGkK").expect("b64"), b"hi\n");
        assert_eq!(decode_bytes("_-8").expect("url-safe"), vec![0xff, 0xef]);
    }
}
