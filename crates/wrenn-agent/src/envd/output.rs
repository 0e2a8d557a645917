//! The output side of `Start` and `Connect`: process events as Connect stream messages.
//!
//! A stream sends `start`, then `data` (stdout/stderr from a piped process's broadcast, or
//! terminal bytes from a PTY session) and keepalives, then one `end` and the end envelope.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use super::connect::{encode_bytes, Code, RpcError, StreamSender};
use super::process::EnvdProc;
use crate::processes::ProcEvent;
use crate::pty::{PtyOut, PtySession};
use crate::sys;

/// Where a stream's events come from.
pub(super) enum Source {
    Pipe(broadcast::Receiver<ProcEvent>),
    Pty {
        session: Arc<PtySession>,
        id: u64,
        rx: mpsc::Receiver<PtyOut>,
        /// Output before the stream attached (sent first, by `Start` only).
        replay: Option<Vec<u8>>,
    },
}

enum Next {
    Data(&'static str, Bytes),
    Exit(i32),
    Lost,
}

impl Source {
    async fn next(&mut self) -> Next {
        match self {
            Self::Pipe(rx) => loop {
                match rx.recv().await {
                    Ok(ProcEvent::Stdout(b)) => return Next::Data("stdout", b),
                    Ok(ProcEvent::Stderr(b)) => return Next::Data("stderr", b),
                    Ok(ProcEvent::Exit(code)) => return Next::Exit(code),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::debug!(n, "envd stream lagged, output lost");
                    }
                    Err(broadcast::error::RecvError::Closed) => return Next::Lost,
                }
            },
            Self::Pty { rx, replay, .. } => {
                if let Some(r) = replay.take().filter(|r| !r.is_empty()) {
                    return Next::Data("pty", Bytes::from(r));
                }
                match rx.recv().await {
                    Some(PtyOut::Output(b)) => Next::Data("pty", b),
                    Some(PtyOut::Exit(code)) => Next::Exit(code),
                    None => Next::Lost,
                }
            }
        }
    }

    fn detach(&self) {
        if let Self::Pty { session, id, .. } = self {
            session.detach(*id);
        }
    }
}

/// The `end` event of an exit `code` (128+N for a signal death).
pub(super) fn end_event(code: i32, proc: Option<&EnvdProc>) -> Value {
    let signal = proc.map(EnvdProc::signal).unwrap_or(0);
    if signal != 0 && code == 128 + signal {
        let text = match signal {
            libc::SIGKILL => "signal: killed",
            libc::SIGTERM => "signal: terminated",
            _ => "signal",
        };
        return json!({"exitCode": -1, "status": text, "error": text});
    }
    let status = format!("exit status {code}");
    let mut end = json!({"exitCode": code, "exited": true, "status": status});
    if code != 0 {
        end["error"] = Value::String(status);
    }
    end
}

/// A stream's client, which may leave while the stream still has a deadline to enforce.
struct Client {
    sender: StreamSender,
    gone: bool,
}

impl Client {
    /// Sends `msg` unless the client has gone (then it only notes that). False when `until`
    /// passed before a slow client took the message.
    async fn send(&mut self, msg: &Value, until: tokio::time::Instant) -> bool {
        if self.gone {
            return true;
        }
        match tokio::time::timeout_at(until, self.sender.send(msg)).await {
            Ok(true) => true,
            Ok(false) => {
                self.gone = true;
                true
            }
            Err(_) => false,
        }
    }
}

/// Kills `pid` because its deadline passed, and the error that ends its stream.
fn expire(pid: u32, proc: Option<&EnvdProc>) -> RpcError {
    if let Some(p) = proc {
        p.mark_signal(libc::SIGKILL);
    }
    let _ = sys::kill_group(pid, libc::SIGKILL);
    RpcError::new(
        Code::DeadlineExceeded,
        format!("process {pid} killed: the request deadline elapsed"),
    )
}

/// Feeds `source` to the client until the process ends. A client that leaves does not stop the
/// process; with a `deadline` the stream keeps watching (silently) to kill the process then.
pub(super) async fn run_stream(
    pid: u32,
    proc: Option<Arc<EnvdProc>>,
    mut source: Source,
    sender: StreamSender,
    keepalive: Duration,
    deadline: Option<tokio::time::Instant>,
) {
    let mut client = Client {
        sender,
        gone: false,
    };
    let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
    let until = deadline.unwrap_or(far);
    let mut ka = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
    let error = 'stream: {
        if !client
            .send(&json!({"event": {"start": {"pid": pid}}}), until)
            .await
        {
            break 'stream Some(expire(pid, proc.as_deref()));
        }
        loop {
            if client.gone && deadline.is_none() {
                return source.detach();
            }
            tokio::select! {
                next = source.next() => match next {
                    Next::Data(field, b) => {
                        if !client.gone {
                            let data = json!({"event": {"data": {field: encode_bytes(&b)}}});
                            if !client.send(&data, until).await {
                                break 'stream Some(expire(pid, proc.as_deref()));
                            }
                            ka.reset();
                        }
                    }
                    Next::Exit(code) => {
                        let end = json!({"event": {"end": end_event(code, proc.as_deref())}});
                        // The process is gone: a missed deadline has nothing left to kill.
                        let _ = client.send(&end, until).await;
                        break 'stream None;
                    }
                    Next::Lost => break 'stream Some(RpcError::new(
                        Code::Unavailable,
                        format!("output of process {pid} is attached elsewhere"),
                    )),
                },
                _ = ka.tick(), if !client.gone => {
                    if !client.send(&json!({"event": {"keepalive": {}}}), until).await {
                        break 'stream Some(expire(pid, proc.as_deref()));
                    }
                }
                _ = tokio::time::sleep_until(until), if deadline.is_some() => {
                    break 'stream Some(expire(pid, proc.as_deref()));
                }
                _ = client.sender.closed(), if !client.gone => client.gone = true,
            }
        }
    };
    source.detach();
    if !client.gone {
        client.sender.end(error).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_events_mirror_go() {
        assert_eq!(
            end_event(0, None),
            json!({"exitCode": 0, "exited": true, "status": "exit status 0"})
        );
        assert_eq!(end_event(3, None)["error"], "exit status 3");
        let p = EnvdProc::new(Default::default(), None);
        p.mark_signal(libc::SIGKILL);
        assert_eq!(
            end_event(137, Some(&p)),
            json!({"exitCode": -1, "status": "signal: killed", "error": "signal: killed"})
        );
        assert_eq!(end_event(137, None)["exitCode"], 137);
    }
}
