//! Readiness probe: a raw `GET /health` over the agent's unix socket.
//!
//! Deliberately tiny (no agent-client dependency): connect, write one HTTP/1.1 request with
//! `Connection: close`, read the status line. The socket is bound and listening before the
//! agent runs (the launcher binds it), so a connect can succeed long before the agent accepts:
//! each probe is bounded by what is left of the deadline.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// One probe: `Ok(true)` for a 200.
pub async fn probe(socket: &Path) -> std::io::Result<bool> {
    let mut s = UnixStream::connect(socket).await?;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
        .await?;
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let r = s.read(&mut buf[n..]).await?;
        if r == 0 {
            break;
        }
        n += r;
    }
    Ok(buf[..n].starts_with(b"HTTP/1.1 200") || buf[..n].starts_with(b"HTTP/1.0 200"))
}

/// Polls [`probe`] until it answers 200 or `deadline` passes; also gives up early when
/// `alive()` turns false (the init died). Returns the time waited on success.
pub async fn wait_ready(
    socket: &Path,
    deadline: Duration,
    alive: impl Fn() -> bool,
) -> Result<Duration, Duration> {
    let start = Instant::now();
    let mut backoff = Duration::from_micros(250);
    loop {
        if socket.exists() {
            let left = deadline.saturating_sub(start.elapsed());
            if let Ok(Ok(true)) = tokio::time::timeout(left, probe(socket)).await {
                return Ok(start.elapsed());
            }
        }
        if start.elapsed() > deadline || !alive() {
            return Err(start.elapsed());
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(5));
    }
}
