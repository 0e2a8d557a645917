//! PTY sessions (contract §7): `GET /pty`.
//!
//! Exchange: first text frame `start` (new session) or `connect` {tag} (re-attach) → `started`
//! {tag, pid} → replay of the last [`RING_BYTES`] of output (binary, re-attach only has any) →
//! binary frames both ways, `resize`/`kill`/`pong` text frames in, `ping` every 30 s out →
//! `exit` {exit_code} and close when the process ends.
//!
//! Design: a session outlives its socket. One reader task per session always drains the master
//! (so the shell never blocks on a full terminal), keeps a ring of recent output and forwards to
//! the one attached client, if any. A new `connect` replaces the attached client; a client that
//! falls behind is detached (it can re-attach and gets the ring replayed).
//!
//! Input goes the other way through one writer task per session and a queue of at most
//! [`INPUT_QUEUE_BYTES`]: a program that does not read its terminal blocks only that task, never
//! the client loop, so output, `resize` and `kill` keep working. Input beyond the queue is
//! dropped, and the client told once (a non-fatal `error`) until input flows again.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use wrenn_types::error::AgentErrorCode;
use wrenn_types::stream::{PtyClientMessage, PtyServerMessage, PtyStart, PTY_FIRST_MESSAGE_ERROR};

use crate::error::ApiError;
use crate::reaper::ExitReceiver;
use crate::spawn::{self, ChildIo};
use crate::state::SharedState;
use crate::sys;
use crate::ws::{close, first_text, send_json, PING_PERIOD};

/// Live PTY sessions per capsule by default; another `start` is refused with `limit_reached`.
pub const DEFAULT_MAX_SESSIONS: usize = 64;
/// Output kept for replay on re-attach.
pub const RING_BYTES: usize = 64 * 1024;
/// Largest binary frame sent.
const FRAME_BYTES: usize = 64 * 1024;
/// Output still read after the process exited, for the last bytes in the terminal buffer.
const EXIT_GRACE: Duration = Duration::from_millis(200);
/// Terminal input queued for the program at most; more is dropped until it reads.
pub const INPUT_QUEUE_BYTES: usize = 1024 * 1024;
/// Non-fatal error sent when input starts being dropped.
const INPUT_DROPPED: &str = "input dropped: the program is not reading its terminal";

/// What a session sends its attached client.
#[derive(Debug)]
pub(crate) enum PtyOut {
    /// Terminal output.
    Output(Bytes),
    /// Exit code, last.
    Exit(i32),
}

/// Input on its way to the session's writer task; every queued byte holds a permit of `budget`.
#[derive(Debug)]
struct InputQueue {
    tx: mpsc::UnboundedSender<(Bytes, OwnedSemaphorePermit)>,
    budget: Arc<Semaphore>,
    /// Dropped when the session ends, which stops the writer even mid-write.
    _stop: oneshot::Sender<()>,
}

#[derive(Debug, Default)]
struct Shared {
    ring: VecDeque<u8>,
    client: Option<(u64, mpsc::Sender<PtyOut>)>,
    next_client: u64,
    exited: bool,
    /// `None` once the session has ended.
    input: Option<InputQueue>,
}

/// One live PTY session.
#[derive(Debug)]
pub struct PtySession {
    tag: String,
    pid: u32,
    master: AsyncFd<OwnedFd>,
    shared: Mutex<Shared>,
}

impl PtySession {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.master.readable().await?;
            if let Ok(r) = guard.try_io(|fd| sys::read_fd(fd.get_ref().as_fd(), buf)) {
                return r;
            }
        }
    }

    async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            // A closed readiness never clears: without this the loop below could spin forever
            // without yielding.
            tokio::task::consume_budget().await;
            let mut guard = self.master.writable().await?;
            let hung_up = guard.ready().is_write_closed();
            match guard.try_io(|fd| sys::write_fd(fd.get_ref().as_fd(), data)) {
                Ok(r) => match r? {
                    // Would spin forever; a terminal that takes nothing reports EAGAIN instead.
                    0 => return Err(io::ErrorKind::WriteZero.into()),
                    n => data = &data[n..],
                },
                // Every slave fd is closed and the full terminal will never drain.
                Err(_would_block) if hung_up => {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "terminal closed with input pending",
                    ))
                }
                Err(_would_block) => {}
            }
        }
        Ok(())
    }

    fn output(&self, bytes: &[u8]) {
        let mut shared = self.lock();
        shared.ring.extend(bytes);
        let excess = shared.ring.len().saturating_sub(RING_BYTES);
        shared.ring.drain(..excess);
        if let Some((_, tx)) = &shared.client {
            if tx
                .try_send(PtyOut::Output(Bytes::copy_from_slice(bytes)))
                .is_err()
            {
                shared.client = None;
            }
        }
    }

    /// Queues `bytes` for the writer task; false when they were dropped (queue full, or the
    /// session has ended).
    pub(crate) fn queue_input(&self, bytes: Bytes) -> bool {
        if bytes.is_empty() {
            return true;
        }
        let shared = self.lock();
        let Some(input) = &shared.input else {
            return false;
        };
        let Ok(n) = u32::try_from(bytes.len()) else {
            return false;
        };
        match Arc::clone(&input.budget).try_acquire_many_owned(n) {
            Ok(permit) => input.tx.send((bytes, permit)).is_ok(),
            Err(_) => false,
        }
    }

    fn finish(&self, code: i32) {
        let mut shared = self.lock();
        shared.exited = true;
        shared.input = None;
        if let Some((_, tx)) = shared.client.take() {
            let _ = tx.try_send(PtyOut::Exit(code));
        }
    }

    /// Becomes the attached client: its id, its output and the replay.
    pub(crate) fn attach(&self) -> Option<(u64, mpsc::Receiver<PtyOut>, Vec<u8>)> {
        let mut shared = self.lock();
        if shared.exited {
            return None;
        }
        let (tx, rx) = mpsc::channel(256);
        shared.next_client += 1;
        let id = shared.next_client;
        shared.client = Some((id, tx));
        Some((id, rx, shared.ring.iter().copied().collect()))
    }

    /// The session's process (group) id.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Resizes the terminal (the kernel sends SIGWINCH to its foreground group).
    pub(crate) fn resize(&self, cols: u16, rows: u16) -> io::Result<()> {
        sys::set_winsize(self.master.get_ref().as_fd(), cols, rows)
    }

    pub(crate) fn detach(&self, id: u64) {
        let mut shared = self.lock();
        if shared.client.as_ref().is_some_and(|(c, _)| *c == id) {
            shared.client = None;
        }
    }
}

/// Live sessions by tag, at most `max` of them.
#[derive(Debug)]
pub struct PtyTable {
    inner: Mutex<HashMap<String, Arc<PtySession>>>,
    max: usize,
}

impl Default for PtyTable {
    fn default() -> Self {
        Self::with_max(DEFAULT_MAX_SESSIONS)
    }
}

impl PtyTable {
    /// An empty table holding at most `max` live sessions.
    pub fn with_max(max: usize) -> Self {
        Self {
            inner: Mutex::new(HashMap::new()),
            max,
        }
    }

    /// The `limit_reached` error of a full table.
    fn full(&self) -> ApiError {
        ApiError::new(
            AgentErrorCode::LimitReached,
            format!(
                "too many pty sessions: the capsule's agent keeps at most {}",
                self.max
            ),
        )
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<PtySession>>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn get(&self, tag: &str) -> Option<Arc<PtySession>> {
        self.lock().get(tag).cloned()
    }
}

/// Starts a session of `start` and registers it in the PTY and process tables.
pub(crate) fn start_session(
    state: &SharedState,
    start: PtyStart,
) -> Result<Arc<PtySession>, ApiError> {
    let PtyStart {
        process: mut spec,
        cols,
        rows,
    } = start;
    if spec.cmd.is_empty() {
        spec.cmd = if std::path::Path::new("/bin/bash").exists() {
            "/bin/bash".to_string()
        } else {
            "/bin/sh".to_string()
        };
    }
    spec.envs
        .entry("TERM".to_string())
        .or_insert_with(|| "xterm-256color".to_string());
    let (cols, rows) = (
        if cols == 0 { 80 } else { cols },
        if rows == 0 { 24 } else { rows },
    );
    // Checked before the fork so a full table costs nothing; checked again on insert.
    if state.ptys.lock().len() >= state.ptys.max {
        return Err(state.ptys.full());
    }
    state.procs.check_room()?;
    let internal = |what: &str, e: io::Error| {
        ApiError::new(AgentErrorCode::Internal, format!("cannot {what}: {e}"))
    };
    let (master, slave) = sys::open_pty(cols, rows).map_err(|e| internal("open pty", e))?;
    let spawned = spawn::spawn(&state.reaper, &spec, ChildIo::Pty(slave))?;
    let pid = spawned.pid;
    let master = sys::set_nonblocking(master.as_fd())
        .and_then(|()| sys::async_fd(master))
        .map_err(|e| {
            let _ = sys::kill_group(pid, libc::SIGKILL);
            internal("watch pty", e)
        })?;
    let (input_tx, input_rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = oneshot::channel();
    let input = InputQueue {
        tx: input_tx,
        budget: Arc::new(Semaphore::new(INPUT_QUEUE_BYTES)),
        _stop: stop_tx,
    };
    let session = {
        let mut ptys = state.ptys.lock();
        if ptys.len() >= state.ptys.max {
            let _ = sys::kill_group(pid, libc::SIGKILL);
            return Err(state.ptys.full());
        }
        let mut tag = spawn::new_tag("pty-");
        while ptys.contains_key(&tag) || state.procs.tag_in_use(&tag) {
            tag = spawn::new_tag("pty-");
        }
        let session = Arc::new(PtySession {
            tag: tag.clone(),
            pid,
            master,
            shared: Mutex::new(Shared {
                input: Some(input),
                ..Shared::default()
            }),
        });
        ptys.insert(tag.clone(), Arc::clone(&session));
        session
    };
    let writer = Arc::clone(&session);
    tokio::spawn(async move { run_writer(writer, input_rx, stop_rx).await });
    let _ = state
        .procs
        .insert(pid, Some(session.tag.clone()), &spec.cmd, &spec.args, None);
    let reader = Arc::clone(&session);
    let st = SharedState::clone(state);
    tokio::spawn(async move { run_reader(st, reader, spawned.exit).await });
    Ok(session)
}

/// Writes queued input to the master until the session ends. A program that does not read
/// stalls only this task; the permits of a frame are released once it is written.
async fn run_writer(
    session: Arc<PtySession>,
    mut input: mpsc::UnboundedReceiver<(Bytes, OwnedSemaphorePermit)>,
    mut stop: oneshot::Receiver<()>,
) {
    loop {
        let next = tokio::select! {
            _ = &mut stop => None,
            next = input.recv() => next,
        };
        let Some((bytes, _permit)) = next else {
            break;
        };
        tokio::select! {
            _ = &mut stop => break,
            r = session.write_all(&bytes) => {
                if let Err(error) = r {
                    tracing::debug!(%error, "pty write failed");
                }
            }
        }
    }
}

async fn run_reader(state: SharedState, session: Arc<PtySession>, mut exit: ExitReceiver) {
    let mut buf = vec![0u8; FRAME_BYTES];
    let mut eof = false;
    let mut code: Option<i32> = None;
    let mut grace = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
    while !(eof && code.is_some()) {
        tokio::select! {
            r = session.read(&mut buf), if !eof => match r {
                Ok(n) if n > 0 => session.output(&buf[..n]),
                // EIO: every slave fd is closed.
                _ => eof = true,
            },
            c = &mut exit, if code.is_none() => {
                code = Some(c.unwrap_or(-1));
                grace = tokio::time::Instant::now() + EXIT_GRACE;
            }
            _ = tokio::time::sleep_until(grace), if code.is_some() => break,
        }
    }
    let code = code.unwrap_or(-1);
    state.ptys.lock().remove(&session.tag);
    state.procs.finish(session.pid, code);
    session.finish(code);
    tracing::debug!(tag = %session.tag, code, "pty session ended");
}

/// `GET /pty`.
pub async fn pty(State(state): State<SharedState>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| run_pty(state, socket))
}

async fn fatal(socket: &mut WebSocket, data: String) {
    send_json(socket, &PtyServerMessage::Error { data, fatal: true }).await;
    close(socket).await;
}

async fn run_pty(state: SharedState, mut socket: WebSocket) {
    let first = first_text(&mut socket)
        .await
        .and_then(|t| serde_json::from_str::<PtyClientMessage>(&t).ok());
    let session = match first {
        Some(PtyClientMessage::Start(start)) => match start_session(&state, start) {
            Ok(s) => s,
            Err(e) => return fatal(&mut socket, e.message).await,
        },
        Some(PtyClientMessage::Connect { tag }) if tag.is_empty() => {
            return fatal(&mut socket, "connect requires a tag".to_string()).await
        }
        Some(PtyClientMessage::Connect { tag }) => match state.ptys.get(&tag) {
            Some(s) => s,
            None => return fatal(&mut socket, format!("pty session not found: {tag}")).await,
        },
        _ => return fatal(&mut socket, PTY_FIRST_MESSAGE_ERROR.to_string()).await,
    };
    let Some((id, mut rx, replay)) = session.attach() else {
        return fatal(
            &mut socket,
            format!("pty session has ended: {}", session.tag),
        )
        .await;
    };
    serve_client(&mut socket, &session, &mut rx, replay).await;
    session.detach(id);
}

async fn serve_client(
    socket: &mut WebSocket,
    session: &PtySession,
    rx: &mut mpsc::Receiver<PtyOut>,
    replay: Vec<u8>,
) {
    let started = PtyServerMessage::Started {
        tag: session.tag.clone(),
        pid: session.pid,
    };
    if !send_json(socket, &started).await {
        return;
    }
    for chunk in replay.chunks(FRAME_BYTES) {
        if socket
            .send(Message::Binary(Bytes::copy_from_slice(chunk)))
            .await
            .is_err()
        {
            return;
        }
    }
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_PERIOD, PING_PERIOD);
    let mut dropping = false;
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(PtyOut::Output(b)) => {
                    if socket.send(Message::Binary(b)).await.is_err() {
                        return;
                    }
                }
                Some(PtyOut::Exit(exit_code)) => {
                    send_json(socket, &PtyServerMessage::Exit { exit_code }).await;
                    return close(socket).await;
                }
                // Another client took over, or we fell behind.
                None => return close(socket).await,
            },
            msg = socket.recv() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    if session.queue_input(b) {
                        dropping = false;
                    } else if !dropping {
                        dropping = true;
                        tracing::debug!(tag = %session.tag, "pty input dropped");
                        let error = PtyServerMessage::Error { data: INPUT_DROPPED.to_string(), fatal: false };
                        if !send_json(socket, &error).await {
                            return;
                        }
                    }
                }
                Some(Ok(Message::Text(t))) => match serde_json::from_str::<PtyClientMessage>(&t) {
                    Ok(PtyClientMessage::Resize { cols, rows }) if cols > 0 && rows > 0 => {
                        if let Err(error) = sys::set_winsize(session.master.get_ref().as_fd(), cols, rows) {
                            tracing::debug!(%error, "pty resize failed");
                        }
                    }
                    Ok(PtyClientMessage::Kill) => {
                        let _ = sys::kill_group(session.pid, libc::SIGKILL);
                    }
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
            _ = ping.tick() => {
                if !send_json(socket, &PtyServerMessage::Ping).await {
                    return;
                }
            }
        }
    }
}
