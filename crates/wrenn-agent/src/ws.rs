//! WebSocket helpers shared by the stream and PTY endpoints.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use wrenn_types::stream::FIRST_MESSAGE_TIMEOUT_SEC;

/// How long a client may take to send its first message.
pub const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(FIRST_MESSAGE_TIMEOUT_SEC);
/// Keepalive period of pings.
pub const PING_PERIOD: Duration = Duration::from_secs(30);
/// How long a side that closes waits for the peer's close reply.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Sends one JSON text frame; false when the socket is gone.
pub async fn send_json<T: serde::Serialize>(socket: &mut WebSocket, msg: &T) -> bool {
    match serde_json::to_string(msg) {
        Ok(text) => socket.send(Message::Text(text.into())).await.is_ok(),
        Err(_) => false,
    }
}

/// Sends a normal close frame (1000) and waits (at most [`CLOSE_GRACE`]) for the peer's close
/// reply, as RFC 6455 §7.1.1 asks of the side that closes: dropping the connection at once
/// makes a write the peer still has pending (a pong to our last ping) fail with EPIPE, and its
/// WebSocket library then reports that error instead of the frames we sent before the close.
/// Errors are irrelevant at that point.
pub async fn close(socket: &mut WebSocket) {
    let sent = socket
        .send(Message::Close(Some(CloseFrame {
            code: 1000,
            reason: "".into(),
        })))
        .await;
    if sent.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(msg)) = socket.recv().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// The next text frame, skipping control frames; `None` for anything else.
pub async fn next_text(socket: &mut WebSocket) -> Option<String> {
    loop {
        match socket.recv().await {
            Some(Ok(Message::Text(t))) => return Some(t.to_string()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            _ => return None,
        }
    }
}

/// The first text frame, waiting at most [`FIRST_MESSAGE_TIMEOUT`].
pub async fn first_text(socket: &mut WebSocket) -> Option<String> {
    tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, next_text(socket))
        .await
        .ok()
        .flatten()
}
