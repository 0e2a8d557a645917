//! A small QMP client: JSON lines over QEMU's unix socket.
//!
//! Connect reads the greeting and sends `qmp_capabilities`; [`Qmp::execute`] sends one command
//! and reads lines until its `return` or `error`, skipping the asynchronous events QEMU
//! interleaves (`STOP`, `MIGRATION`, ...).

use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// Longest wait for one reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// One line QEMU sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// The greeting.
    Greeting,
    /// A command succeeded with this value.
    Return(Value),
    /// A command failed.
    Error {
        /// QMP error class.
        class: String,
        /// Human-readable description.
        desc: String,
    },
    /// An asynchronous event.
    Event(String),
}

/// Parses one QMP line.
pub fn parse_reply(line: &str) -> anyhow::Result<Reply> {
    let v: Value = serde_json::from_str(line).context("QMP line is not JSON")?;
    if v.get("QMP").is_some() {
        return Ok(Reply::Greeting);
    }
    if let Some(r) = v.get("return") {
        return Ok(Reply::Return(r.clone()));
    }
    if let Some(e) = v.get("error") {
        let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        return Ok(Reply::Error {
            class: s("class"),
            desc: s("desc"),
        });
    }
    if let Some(ev) = v.get("event").and_then(Value::as_str) {
        return Ok(Reply::Event(ev.to_owned()));
    }
    bail!("unknown QMP line: {line}")
}

/// `command` with `arguments` as one QMP line.
fn command_line(command: &str, arguments: Option<Value>) -> anyhow::Result<Vec<u8>> {
    let mut msg = json!({ "execute": command });
    if let Some(a) = arguments {
        msg["arguments"] = a;
    }
    let mut line = serde_json::to_vec(&msg).context("encode QMP command")?;
    line.push(b'\n');
    Ok(line)
}

/// A connected, negotiated QMP session.
#[derive(Debug)]
pub struct Qmp {
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
}

impl Qmp {
    /// Connects to `path` and leaves capability negotiation.
    pub async fn connect(path: &Path) -> anyhow::Result<Self> {
        let s = UnixStream::connect(path)
            .await
            .with_context(|| format!("connect QMP {}", path.display()))?;
        let (rd, wr) = s.into_split();
        let mut q = Self {
            rd: BufReader::new(rd),
            wr,
        };
        match q.next().await? {
            Reply::Greeting => {}
            other => bail!("QMP greeting expected, got {other:?}"),
        }
        q.execute("qmp_capabilities", None).await?;
        Ok(q)
    }

    async fn next(&mut self) -> anyhow::Result<Reply> {
        let mut line = String::new();
        let n = tokio::time::timeout(REPLY_TIMEOUT, self.rd.read_line(&mut line))
            .await
            .context("QMP reply timed out")?
            .context("read QMP")?;
        if n == 0 {
            bail!("QMP connection closed");
        }
        parse_reply(line.trim_end())
    }

    /// Runs `command` with `arguments`; its `return` value.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> anyhow::Result<Value> {
        let line = command_line(command, arguments)?;
        self.wr.write_all(&line).await.context("write QMP")?;
        self.reply(command).await
    }

    /// Hands `fd` to QEMU under `name` (`getfd`, the fd riding the command as `SCM_RIGHTS`), for
    /// an `fd:<name>` migration URI on this same connection: QEMU then reads or writes a
    /// saved state without opening any host file itself.
    pub async fn send_fd(&mut self, name: &str, fd: BorrowedFd<'_>) -> anyhow::Result<()> {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
        let line = command_line("getfd", Some(json!({ "fdname": name })))?;
        let sock: &UnixStream = self.wr.as_ref();
        let fds = [fd.as_raw_fd()];
        let sent = loop {
            sock.writable().await.context("write QMP")?;
            let attempt = sock.try_io(tokio::io::Interest::WRITABLE, || {
                sendmsg::<UnixAddr>(
                    sock.as_raw_fd(),
                    &[std::io::IoSlice::new(&line)],
                    &[ControlMessage::ScmRights(&fds)],
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(std::io::Error::from)
            });
            match attempt {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e).context("send fd over QMP"),
            }
        };
        // The fd went with the first byte; the rest of a short write is plain.
        self.wr
            .write_all(&line[sent..])
            .await
            .context("write QMP")?;
        self.reply("getfd").await.map(drop)
    }

    /// Reads until `command`'s answer, skipping events.
    async fn reply(&mut self, command: &str) -> anyhow::Result<Value> {
        loop {
            match self.next().await? {
                Reply::Return(v) => return Ok(v),
                Reply::Error { class, desc } => bail!("QMP {command}: {class}: {desc}"),
                Reply::Event(_) | Reply::Greeting => {}
            }
        }
    }

    /// The guest console's newest output (what is still in the ring, see
    /// [`super::qemu::CONSOLE`]).
    pub async fn console(&mut self) -> anyhow::Result<String> {
        let v = self
            .execute(
                "ringbuf-read",
                Some(json!({
                    "device": super::qemu::CONSOLE,
                    "size": super::qemu::CONSOLE_BYTES,
                    "format": "utf8",
                })),
            )
            .await?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }

    /// `query-status`'s `status` (`running`, `paused`, `inmigrate`, `postmigrate`, ...).
    pub async fn status(&mut self) -> anyhow::Result<String> {
        let v = self.execute("query-status", None).await?;
        Ok(v.get("status")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned())
    }

    /// `query-migrate`'s `status` (`active`, `completed`, `failed`, ...) and error, if any.
    pub async fn migrate_status(&mut self) -> anyhow::Result<(String, Option<String>)> {
        let v = self.execute("query-migrate", None).await?;
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        Ok((s("status").unwrap_or_default(), s("error-desc")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind_of_line() {
        assert_eq!(
            parse_reply(r#"{"QMP": {"version": {}, "capabilities": ["oob"]}}"#).expect("ok"),
            Reply::Greeting
        );
        assert_eq!(
            parse_reply(r#"{"return": {"status": "running", "running": true}}"#).expect("ok"),
            Reply::Return(json!({"status": "running", "running": true}))
        );
        assert_eq!(
            parse_reply(r#"{"error": {"class": "GenericError", "desc": "no"}}"#).expect("ok"),
            Reply::Error {
                class: "GenericError".into(),
                desc: "no".into()
            }
        );
        assert_eq!(
            parse_reply(r#"{"timestamp": {"seconds": 1}, "event": "STOP"}"#).expect("ok"),
            Reply::Event("STOP".into())
        );
        assert!(parse_reply("{}").is_err());
        assert!(parse_reply("not json").is_err());
    }

    #[tokio::test]
    async fn execute_skips_events_and_reports_errors() {
        let dir = std::env::temp_dir().join(format!("wrenn-qmp-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let l = tokio::net::UnixListener::bind(&dir).expect("bind");
        let server = tokio::spawn(async move {
            let (s, _) = l.accept().await.expect("accept");
            let (rd, mut wr) = s.into_split();
            let mut rd = BufReader::new(rd).lines();
            wr.write_all(b"{\"QMP\": {}}\n").await.expect("w");
            let cap = rd.next_line().await.expect("r").expect("line");
            assert!(cap.contains("qmp_capabilities"));
            wr.write_all(b"{\"return\": {}}\n").await.expect("w");
            let q = rd.next_line().await.expect("r").expect("line");
            assert!(q.contains("query-status"));
            wr.write_all(b"{\"event\": \"STOP\"}\n{\"return\": {\"status\": \"paused\"}}\n")
                .await
                .expect("w");
            let _ = rd.next_line().await;
            wr.write_all(b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"bad\"}}\n")
                .await
                .expect("w");
        });
        let mut q = Qmp::connect(&dir).await.expect("connect");
        assert_eq!(q.status().await.expect("status"), "paused");
        let e = q.execute("cont", None).await.expect_err("error");
        assert!(e.to_string().contains("GenericError: bad"), "{e}");
        server.await.expect("server");
        let _ = std::fs::remove_file(&dir);
    }
}
