//! Launching a piped child: spawn, track in the process table, and pump its output.

use std::io;

use tokio::net::unix::pipe;
use wrenn_types::agent::ProcessSpec;

use crate::processes::{self, ProcessError, Sink};
use crate::spawn::{self, ChildIo, SpawnError};
use crate::state::SharedState;
use crate::sys;

/// Read size of streamed pipes: a JSON frame of it stays under 64 KiB even fully escaped.
pub const STREAM_CHUNK: usize = 8 * 1024;

/// Launching a piped child failed.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The child could not be started.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// The child started without the pipes it was spawned with.
    #[error("child has no pipes")]
    MissingPipes,
    /// The pipes could not be registered with the runtime.
    #[error("cannot watch pipes")]
    WatchPipes(#[source] io::Error),
    /// The process table refused the child (its tag is taken, or the table is full).
    #[error(transparent)]
    Track(#[from] ProcessError),
}

/// Spawns `spec` on pipes, tracks it under `tag`, and pumps its output into `sink` in reads of
/// at most `chunk` bytes. Returns the pid. On failure after the spawn, the child's group is
/// killed.
pub fn launch(
    state: &SharedState,
    spec: &ProcessSpec,
    tag: Option<String>,
    sink: Sink,
    chunk: usize,
) -> Result<u32, LaunchError> {
    launch_io(state, spec, tag, sink, chunk, false).map(|(pid, _)| pid)
}

/// [`launch`], and with `keep_stdin` a pipe to the child's stdin (else stdin is at EOF).
pub fn launch_io(
    state: &SharedState,
    spec: &ProcessSpec,
    tag: Option<String>,
    sink: Sink,
    chunk: usize,
    keep_stdin: bool,
) -> Result<(u32, Option<pipe::Sender>), LaunchError> {
    state.procs.check_room()?;
    let io = if keep_stdin {
        ChildIo::PipesWithStdin
    } else {
        ChildIo::Pipes
    };
    let mut spawned = spawn::spawn(&state.reaper, spec, io)?;
    let pid = spawned.pid;
    let stdin = spawned
        .stdin
        .take()
        .map(pipe::Sender::from_owned_fd)
        .transpose()
        .map_err(LaunchError::WatchPipes);
    let pipes = spawned
        .stdout
        .take()
        .zip(spawned.stderr.take())
        .ok_or(LaunchError::MissingPipes)
        .and_then(|(o, e)| {
            let o = pipe::Receiver::from_owned_fd(o);
            let e = pipe::Receiver::from_owned_fd(e);
            o.and_then(|o| e.map(|e| (o, e)))
                .map_err(LaunchError::WatchPipes)
        })
        .and_then(|(o, e)| stdin.map(|i| (o, e, i)));
    let events = match &sink {
        Sink::Broadcast(tx) => Some(tx.clone()),
        Sink::Direct(_) => None,
    };
    let tracked = pipes.and_then(|pipes| {
        state
            .procs
            .insert(pid, tag, &spec.cmd, &spec.args, events)
            .map(|()| pipes)
            .map_err(LaunchError::from)
    });
    let (stdout, stderr, stdin) = match tracked {
        Ok(p) => p,
        Err(e) => {
            // The exit status still arrives at the reaper, which drops it with the receiver.
            let _ = sys::kill_group(pid, libc::SIGKILL);
            return Err(e);
        }
    };
    let state = SharedState::clone(state);
    tokio::spawn(async move {
        processes::pump(&state.procs, pid, stdout, stderr, spawned.exit, sink, chunk).await;
    });
    Ok((pid, stdin))
}

/// Kills a process group when dropped while armed (a request whose client left).
#[derive(Debug)]
pub struct KillOnDrop {
    /// The group.
    pub pid: u32,
    /// Whether to kill.
    pub armed: bool,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.armed {
            let _ = sys::kill_group(self.pid, libc::SIGKILL);
        }
    }
}
