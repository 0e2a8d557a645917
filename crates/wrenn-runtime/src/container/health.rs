//! Readiness probe: a raw `GET /health` over the agent's unix socket.
//!
//! Deliberately tiny (no agent-client dependency): connect, write one HTTP/1.1 request with
//! `Connection: close`, read the answer to its end. The answer's body (the agent's version and
//! the guest kernel's) is handed on, so the server does not ask again. The socket is bound and listening before the
//! agent runs (the launcher binds it), so a connect can succeed long before the agent accepts:
//! each probe is bounded by what is left of the deadline.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use wrenn_types::agent::Health;

/// The most of an answer a probe reads; a health answer is a few dozen bytes.
const MAX_ANSWER: u64 = 16 * 1024;

/// One probe: `Ok(Some(_))` for a 200, with the body when it is a [`Health`] sent whole (not
/// chunked), `Ok(None)` for any other answer.
pub async fn probe(socket: &Path) -> std::io::Result<Option<Option<Health>>> {
    let mut s = UnixStream::connect(socket).await?;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
        .await?;
    let mut buf = Vec::new();
    s.take(MAX_ANSWER).read_to_end(&mut buf).await?;
    if !(buf.starts_with(b"HTTP/1.1 200") || buf.starts_with(b"HTTP/1.0 200")) {
        return Ok(None);
    }
    Ok(Some(health_body(&buf)))
}

/// The [`Health`] in the body of a whole HTTP answer, unless it is chunked or does not parse.
fn health_body(answer: &[u8]) -> Option<Health> {
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&answer[..split]).to_ascii_lowercase();
    if head.contains("transfer-encoding:") {
        return None;
    }
    serde_json::from_slice(&answer[split + 4..]).ok()
}

/// Polls [`probe`] until it answers 200 or `deadline` passes; also gives up early when
/// `alive()` turns false (the init died). Returns the time waited and the agent's answer (see
/// [`probe`]) on success.
pub async fn wait_ready(
    socket: &Path,
    deadline: Duration,
    alive: impl Fn() -> bool,
) -> Result<(Duration, Option<Health>), Duration> {
    let start = Instant::now();
    let mut backoff = Duration::from_micros(250);
    loop {
        if socket.exists() {
            let left = deadline.saturating_sub(start.elapsed());
            if let Ok(Ok(Some(health))) = tokio::time::timeout(left, probe(socket)).await {
                return Ok((start.elapsed(), health));
            }
        }
        if start.elapsed() > deadline || !alive() {
            return Err(start.elapsed());
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::health_body;

    #[test]
    fn a_whole_answer_gives_its_health_and_a_chunked_one_none() {
        let whole = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 55\r\n\r\n{\"status\":\"ok\",\"version\":\"0.1.0\",\"kernel_version\":\"6.1\"}";
        let h = health_body(whole).expect("health");
        assert_eq!(
            (h.version.as_str(), h.kernel_version.as_deref()),
            ("0.1.0", Some("6.1"))
        );
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2f\r\n{\"status\":\"ok\",\"version\":\"0.1.0\"}\r\n0\r\n\r\n";
        assert!(health_body(chunked).is_none());
        assert!(health_body(b"HTTP/1.1 200 OK\r\n\r\nnot json").is_none());
    }
}
