//! `wrenn capsule shell`: an interactive terminal in a capsule over the PTY WebSocket.
//!
//! The local terminal is put in raw mode, so Ctrl-C, Ctrl-D and every other key go to the
//! capsule's shell; SIGWINCH sends the new window size. The shell's exit status becomes ours.
//! When the connection drops, the shell keeps running in the capsule and `--attach TAG`
//! picks it up again.

use std::io::{IsTerminal, Read};

use anyhow::bail;
use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use wrenn_client::{Client, ClientError, PtyEvent, PtyInput, PtyOptions};

/// Restores the terminal's mode when dropped.
struct RawMode;

impl RawMode {
    fn enable() -> anyhow::Result<Self> {
        crossterm::terminal::enable_raw_mode()?;
        Ok(Self)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

/// The local window size, when stdin or stdout is a terminal.
fn window_size() -> Option<(u16, u16)> {
    crossterm::terminal::size()
        .ok()
        .filter(|(c, r)| *c > 0 && *r > 0)
}

/// Reads stdin on a plain thread (a blocking read cannot be cancelled; the process exits
/// under it) and forwards each chunk; the channel closes at end of input.
fn stdin_reader() -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 8192];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.blocking_send(Bytes::copy_from_slice(&buf[..n])).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// Gives an in-band WebSocket error (which has no code) the contract's nearest one.
fn in_band(e: ClientError) -> anyhow::Error {
    match e {
        ClientError::Stream(m) if m.contains("not found") => anyhow::anyhow!("not_found: {m}"),
        ClientError::Stream(m) => anyhow::anyhow!("agent_error: {m}"),
        other => other.into(),
    }
}

/// Runs the session; the result is the shell's exit status.
pub async fn run(
    client: &Client,
    id: &str,
    attach: Option<&str>,
    cmd: Option<String>,
) -> anyhow::Result<i32> {
    let (cols, rows) = window_size().unwrap_or((80, 24));
    let session = match attach {
        Some(tag) => {
            let s = client.pty_connect(id, tag).await.map_err(in_band)?;
            // The server keeps the old size; tell it ours.
            s.resize(cols, rows).await?;
            s
        }
        None => {
            let opts = PtyOptions {
                cmd: cmd.unwrap_or_default(),
                cols,
                rows,
                ..PtyOptions::default()
            };
            client.pty(id, &opts).await.map_err(in_band)?
        }
    };
    let tag = session.tag().to_owned();
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprint!(
            "[session {tag}; if the connection drops: wrenn capsule shell {id} --attach {tag}]\r\n"
        );
    }
    let raw = if interactive {
        Some(RawMode::enable()?)
    } else {
        None
    };
    let (input, mut events) = session.into_parts();
    let mut keys = stdin_reader();
    let mut stdin_open = true;
    let mut winch = signal(SignalKind::window_change())?;
    let mut stdout = tokio::io::stdout();
    let outcome = loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(PtyEvent::Output(b)) => {
                    stdout.write_all(&b).await?;
                    stdout.flush().await?;
                }
                Some(PtyEvent::Exit(code)) => break Ok(code),
                Some(PtyEvent::Error { message, fatal: true }) => {
                    break Err(anyhow::anyhow!("agent_error: {message}"))
                }
                Some(PtyEvent::Error { message, fatal: false }) => {
                    eprint!("[wrenn: {message}]\r\n");
                }
                None => break Err(anyhow::anyhow!(
                    "connection_lost: the connection to the capsule dropped; the shell is still \
                     running: wrenn capsule shell {id} --attach {tag}"
                )),
            },
            k = keys.recv(), if stdin_open => match k {
                Some(b) => {
                    if input.send(PtyInput::Data(b)).await.is_err() {
                        continue; // the event side reports why
                    }
                }
                // End of input: keep the session until the shell exits.
                None => stdin_open = false,
            },
            _ = winch.recv() => {
                if let Some((cols, rows)) = window_size() {
                    let _ = input.send(PtyInput::Resize { cols, rows }).await;
                }
            }
        }
    };
    drop(raw);
    if interactive && outcome.is_ok() {
        eprintln!();
    }
    match outcome {
        Ok(code) => Ok(code),
        Err(e) => bail!(e),
    }
}
