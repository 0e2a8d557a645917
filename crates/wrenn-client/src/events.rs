//! The team's lifecycle events (contract §10) over server-sent events.

use bytes::{Buf, BytesMut};
use futures_util::StreamExt;
use reqwest::Method;
use wrenn_types::api::Event;

use crate::files::ByteStream;
use crate::{Client, ClientError};

impl Client {
    /// Follows the team's events, starting with `connected`; never ends while the server runs.
    pub async fn events(&self) -> Result<EventStream, ClientError> {
        let resp = Self::send(
            self.request(Method::GET, "/events/stream")
                .header("accept", "text/event-stream"),
        )
        .await?;
        Ok(EventStream {
            body: Box::pin(resp.bytes_stream().map(|r| r.map_err(ClientError::Http))),
            buf: BytesMut::new(),
        })
    }
}

/// A stream of [`Event`]s parsed from SSE frames (only `data:` lines matter).
pub struct EventStream {
    body: ByteStream,
    buf: BytesMut,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream").finish_non_exhaustive()
    }
}

impl EventStream {
    /// The next event; `None` when the server ended the stream.
    pub async fn next(&mut self) -> Option<Result<Event, ClientError>> {
        loop {
            if let Some(frame) = take_frame(&mut self.buf) {
                if let Some(data) = frame_data(&frame) {
                    return Some(serde_json::from_str(&data).map_err(ClientError::Decode));
                }
                continue;
            }
            match self.body.next().await? {
                Ok(chunk) => self.buf.extend_from_slice(&chunk),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// Removes and returns the first complete frame (up to a blank line), if any.
fn take_frame(buf: &mut BytesMut) -> Option<String> {
    let text = std::str::from_utf8(buf).ok()?;
    let normalized_end = text.find("\n\n").map(|i| (i, 2));
    let crlf_end = text.find("\r\n\r\n").map(|i| (i, 4));
    let (end, sep) = match (normalized_end, crlf_end) {
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) => a,
        (None, Some(b)) => b,
        (None, None) => return None,
    };
    let frame = text[..end].to_owned();
    buf.advance(end + sep);
    Some(frame)
}

/// The joined `data:` lines of a frame; `None` for a comment-only frame.
fn frame_data(frame: &str) -> Option<String> {
    let lines: Vec<&str> = frame
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
        .collect();
    (!lines.is_empty()).then(|| lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_on_blank_lines_and_comments_are_skipped() {
        let mut buf = BytesMut::from(
            &b": keepalive\n\nevent: connected\ndata: {\"a\":1}\n\nevent: x\ndata: par"[..],
        );
        assert_eq!(frame_data(&take_frame(&mut buf).unwrap()), None);
        let f = take_frame(&mut buf).unwrap();
        assert_eq!(frame_data(&f).unwrap(), "{\"a\":1}");
        assert!(take_frame(&mut buf).is_none());
        buf.extend_from_slice(b"tial\n\n");
        assert_eq!(
            frame_data(&take_frame(&mut buf).unwrap()).unwrap(),
            "partial"
        );
    }
}
