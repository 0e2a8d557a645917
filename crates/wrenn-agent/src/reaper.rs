//! The central child reaper.
//!
//! Design: the agent is PID 1 of the capsule (or a child subreaper), so every orphan in the
//! capsule becomes its child and must be reaped, or zombies pile up. One task owns `waitpid`: on
//! each SIGCHLD (and on a slow tick, in case signals coalesce around a race) it calls
//! `waitpid(-1, WNOHANG)` until nothing is left, and hands each status to the waiter registered
//! for that pid. Nobody else may call `wait` (so no `tokio::process::Child::wait`).
//!
//! Spawning and reaping take the same lock: [`Reaper::spawn`] forks, execs and registers the
//! waiter while holding it, and the reaper holds it around `waitpid`. So a child that exits at
//! once is reaped only after its waiter exists, and std's own `waitpid` on a failed exec (inside
//! `Command::spawn`) never races with us. Statuses of unregistered pids are orphans (grandchildren
//! re-parented to us); nobody can wait for them, and keeping them would hand a stale status to a
//! later child that reuses the pid, so they are dropped.

use std::collections::HashMap;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

use crate::sys;

/// Resolves with the exit code (128+N for signal N) of one child.
pub type ExitReceiver = oneshot::Receiver<i32>;

/// Owns `waitpid` for the whole agent.
#[derive(Debug, Default)]
pub struct Reaper {
    waiters: Mutex<HashMap<i32, oneshot::Sender<i32>>>,
}

impl Reaper {
    fn lock(&self) -> MutexGuard<'_, HashMap<i32, oneshot::Sender<i32>>> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Spawns `cmd` and registers for its exit status, atomically with respect to reaping.
    pub fn spawn(&self, cmd: &mut Command) -> std::io::Result<(Child, ExitReceiver)> {
        let mut child = None;
        let (_, rx) = self.spawn_with(|| {
            let c = cmd.spawn()?;
            // Pids are positive and fit in i32 (pid_max ≤ 2^22).
            let pid = c.id() as i32;
            child = Some(c);
            Ok(pid)
        })?;
        let child = child.ok_or_else(|| std::io::Error::other("spawned no child"))?;
        Ok((child, rx))
    }

    /// Reaps every exited child now.
    pub fn reap_all(&self) {
        let mut waiters = self.lock();
        loop {
            match sys::reap_one() {
                Ok(Some((pid, code))) => match waiters.remove(&pid) {
                    Some(tx) => {
                        let _ = tx.send(code);
                    }
                    None => tracing::debug!(pid, code, "reaped orphan"),
                },
                Ok(None) => break,
                Err(error) => {
                    tracing::warn!(%error, "waitpid failed");
                    break;
                }
            }
        }
    }

    /// Runs `start` (which starts a child and returns its pid) and registers for the child's
    /// exit status, atomically with respect to reaping.
    pub fn spawn_with(
        &self,
        start: impl FnOnce() -> std::io::Result<i32>,
    ) -> std::io::Result<(i32, ExitReceiver)> {
        let mut waiters = self.lock();
        let pid = start()?;
        let (tx, rx) = oneshot::channel();
        waiters.insert(pid, tx);
        Ok((pid, rx))
    }

    /// Runs the reaper loop forever.
    pub fn start(self: &Arc<Self>) -> std::io::Result<()> {
        let mut sigchld = signal(SignalKind::child())?;
        let reaper = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                reaper.reap_all();
                tokio::select! {
                    _ = sigchld.recv() => {}
                    _ = tick.tick() => {}
                }
            }
        });
        Ok(())
    }
}
