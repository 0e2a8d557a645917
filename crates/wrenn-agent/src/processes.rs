//! The table of running processes the agent started, and the output pump of piped children.
//!
//! Design: a process is in the table from spawn until its exit status is known and its pipes
//! are drained (or a short grace after exit ran out). Background processes carry a broadcast
//! channel; the pump sends their output there and [`ProcessTable::finish`] sends `Exit` under the
//! table lock, so an attached client either subscribed before the exit (and sees it last) or
//! finds the process gone.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::{broadcast, mpsc};
use wrenn_types::agent::{KillSignal, ProcessInfo, ProcessList};
use wrenn_types::error::AgentErrorCode;

use crate::reaper::ExitReceiver;
use crate::sys;

/// Processes the agent tracks at most by default (foreground, background and PTY ones): below
/// the capsule's pids limit, so a full table answers a clear error before `fork` fails.
pub const DEFAULT_MAX_PROCESSES: usize = 512;

/// How long output is still collected after the process exited, for pipes that a detached
/// grandchild keeps open.
const DRAIN_GRACE: Duration = Duration::from_millis(300);

/// A process-table operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// No tracked process has this pid or tag.
    #[error("process not found: {selector}")]
    NotFound {
        /// The decimal pid or tag asked for.
        selector: String,
    },
    /// A running process carries the tag already.
    #[error("a running process already has tag {tag}")]
    TagTaken {
        /// The tag.
        tag: String,
    },
    /// The process has no broadcast of its output (only background processes do).
    #[error("process {selector} has no output stream (not a background process)")]
    NoOutputStream {
        /// The decimal pid or tag asked for.
        selector: String,
    },
    /// The table holds its cap of processes already.
    #[error("too many processes: the capsule's agent tracks at most {max}")]
    TooMany {
        /// The cap.
        max: usize,
    },
    /// `kill(2)` failed for another reason than the group being gone.
    #[error("cannot signal process {pid}")]
    Signal {
        /// The process group.
        pid: u32,
        /// Cause.
        #[source]
        source: nix::errno::Errno,
    },
}

impl ProcessError {
    /// The agent error code of this failure.
    pub fn code(&self) -> AgentErrorCode {
        match self {
            Self::NotFound { .. } => AgentErrorCode::NotFound,
            Self::TagTaken { .. } => AgentErrorCode::AlreadyExists,
            Self::NoOutputStream { .. } => AgentErrorCode::InvalidRequest,
            Self::TooMany { .. } => AgentErrorCode::LimitReached,
            Self::Signal { .. } => AgentErrorCode::Internal,
        }
    }
}

/// Output and exit of one process.
#[derive(Debug, Clone)]
pub enum ProcEvent {
    /// A stdout chunk.
    Stdout(Bytes),
    /// A stderr chunk.
    Stderr(Bytes),
    /// Exit code, last.
    Exit(i32),
}

#[derive(Debug)]
struct Tracked {
    tag: Option<String>,
    cmd: String,
    args: Vec<String>,
    events: Option<broadcast::Sender<ProcEvent>>,
}

/// Running processes by pid, at most `max` of them. A record leaves the table when its process
/// has exited and its output is drained, so finished processes hold nothing.
#[derive(Debug)]
pub struct ProcessTable {
    inner: Mutex<HashMap<u32, Tracked>>,
    max: usize,
}

impl Default for ProcessTable {
    fn default() -> Self {
        Self::with_max(DEFAULT_MAX_PROCESSES)
    }
}

impl ProcessTable {
    /// An empty table tracking at most `max` processes.
    pub fn with_max(max: usize) -> Self {
        Self {
            inner: Mutex::new(HashMap::new()),
            max,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u32, Tracked>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fails with [`ProcessError::TooMany`] when the table is full: checked before a spawn so
    /// a full table never forks (`insert` checks again).
    pub fn check_room(&self) -> Result<(), ProcessError> {
        if self.lock().len() >= self.max {
            return Err(ProcessError::TooMany { max: self.max });
        }
        Ok(())
    }

    /// Whether a running process carries `tag`.
    pub fn tag_in_use(&self, tag: &str) -> bool {
        self.lock().values().any(|t| t.tag.as_deref() == Some(tag))
    }

    /// Tracks `pid`; fails with `already_exists` when `tag` is taken, `limit_reached` when the
    /// table is full.
    pub fn insert(
        &self,
        pid: u32,
        tag: Option<String>,
        cmd: &str,
        args: &[String],
        events: Option<broadcast::Sender<ProcEvent>>,
    ) -> Result<(), ProcessError> {
        let mut inner = self.lock();
        if inner.len() >= self.max {
            return Err(ProcessError::TooMany { max: self.max });
        }
        if let Some(tag) = &tag {
            if inner.values().any(|t| t.tag.as_ref() == Some(tag)) {
                return Err(ProcessError::TagTaken { tag: tag.clone() });
            }
        }
        inner.insert(
            pid,
            Tracked {
                tag,
                cmd: cmd.to_string(),
                args: args.to_vec(),
                events,
            },
        );
        Ok(())
    }

    /// Untracks `pid` and tells attached clients its exit code.
    pub fn finish(&self, pid: u32, code: i32) {
        let mut inner = self.lock();
        if let Some(t) = inner.remove(&pid) {
            if let Some(events) = t.events {
                let _ = events.send(ProcEvent::Exit(code));
            }
        }
    }

    /// Every tracked process.
    pub fn list(&self) -> ProcessList {
        let mut processes: Vec<ProcessInfo> = self
            .lock()
            .iter()
            .map(|(pid, t)| ProcessInfo {
                pid: *pid,
                tag: t.tag.clone(),
                cmd: t.cmd.clone(),
                args: t.args.clone(),
            })
            .collect();
        processes.sort_by_key(|p| p.pid);
        ProcessList { processes }
    }

    /// Every tracked pid.
    pub fn pids(&self) -> Vec<u32> {
        self.lock().keys().copied().collect()
    }

    fn find(inner: &HashMap<u32, Tracked>, selector: &str) -> Option<u32> {
        if let Ok(pid) = selector.parse::<u32>() {
            if inner.contains_key(&pid) {
                return Some(pid);
            }
        }
        inner
            .iter()
            .find(|(_, t)| t.tag.as_deref() == Some(selector))
            .map(|(pid, _)| *pid)
    }

    /// Signals the process group of the process selected by decimal pid or tag.
    pub fn kill(&self, selector: &str, signal: KillSignal) -> Result<u32, ProcessError> {
        let pid = Self::find(&self.lock(), selector).ok_or_else(|| unknown(selector))?;
        match sys::kill_group(pid, signal.number()) {
            // Already gone, only not yet reaped and untracked.
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(pid),
            Err(source) => Err(ProcessError::Signal { pid, source }),
        }
    }

    /// Subscribes to the output of the background process selected by pid or tag.
    pub fn subscribe(
        &self,
        selector: &str,
    ) -> Result<(u32, broadcast::Receiver<ProcEvent>), ProcessError> {
        let inner = self.lock();
        let pid = Self::find(&inner, selector).ok_or_else(|| unknown(selector))?;
        match inner.get(&pid).and_then(|t| t.events.as_ref()) {
            Some(events) => Ok((pid, events.subscribe())),
            None => Err(ProcessError::NoOutputStream {
                selector: selector.to_string(),
            }),
        }
    }
}

fn unknown(selector: &str) -> ProcessError {
    ProcessError::NotFound {
        selector: selector.to_string(),
    }
}

/// Where a pump sends output.
#[derive(Debug)]
pub enum Sink {
    /// One reader that sees everything (foreground exec, exec stream); `Exit` is sent last.
    Direct(mpsc::Sender<ProcEvent>),
    /// Any number of attached readers; `Exit` comes from [`ProcessTable::finish`].
    Broadcast(broadcast::Sender<ProcEvent>),
}

impl Sink {
    async fn send(&self, event: ProcEvent) {
        match self {
            // A gone reader does not stop the pump: the pipes must still be drained.
            Self::Direct(tx) => {
                let _ = tx.send(event).await;
            }
            Self::Broadcast(tx) => {
                let _ = tx.send(event);
            }
        }
    }
}

/// Reads both pipes in chunks of at most `chunk` bytes until both hit EOF and the exit status is
/// known (or [`DRAIN_GRACE`] after the exit), then untracks `pid`.
pub async fn pump(
    table: &ProcessTable,
    pid: u32,
    mut stdout: pipe::Receiver,
    mut stderr: pipe::Receiver,
    mut exit: ExitReceiver,
    sink: Sink,
    chunk: usize,
) {
    let (mut out_open, mut err_open) = (true, true);
    let mut code: Option<i32> = None;
    let mut grace = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
    let (mut obuf, mut ebuf) = (vec![0u8; chunk], vec![0u8; chunk]);
    while out_open || err_open || code.is_none() {
        tokio::select! {
            r = stdout.read(&mut obuf), if out_open => match r {
                Ok(n) if n > 0 => sink.send(ProcEvent::Stdout(Bytes::copy_from_slice(&obuf[..n]))).await,
                _ => out_open = false,
            },
            r = stderr.read(&mut ebuf), if err_open => match r {
                Ok(n) if n > 0 => sink.send(ProcEvent::Stderr(Bytes::copy_from_slice(&ebuf[..n]))).await,
                _ => err_open = false,
            },
            c = &mut exit, if code.is_none() => {
                // A dropped sender cannot happen while the reaper lives; report -1 then.
                code = Some(c.unwrap_or(-1));
                grace = tokio::time::Instant::now() + DRAIN_GRACE;
            }
            _ = tokio::time::sleep_until(grace), if code.is_some() => break,
        }
    }
    let code = code.unwrap_or(-1);
    table.finish(pid, code);
    if let Sink::Direct(tx) = &sink {
        let _ = tx.send(ProcEvent::Exit(code)).await;
    }
}
