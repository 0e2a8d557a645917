//! Noticing a capsule init's exit: a pidfd awaited through tokio's `AsyncFd`.
//!
//! The runtime's process is a child subreaper, so a capsule init re-parents to it once the
//! launcher has exited; we reap that one pid with `waitid(P_PID)` (never `waitpid(-1)`: the
//! server owns other children through tokio::process). A `WNOHANG` check runs first so an exit
//! before registration is not missed.

use std::sync::Arc;

use tokio::sync::watch;

use crate::sys::{self, Reap};

/// Shared liveness of one capsule init.
#[derive(Debug, Clone)]
pub struct InitWatch {
    exited: watch::Receiver<Option<i32>>,
}

impl InitWatch {
    /// Starts watching `pid`. Must be called inside a tokio runtime.
    pub fn start(id: &str, pid: i32) -> std::io::Result<Self> {
        let (tx, rx) = watch::channel(None);
        let tx = Arc::new(tx);
        let id = id.to_owned();
        // Readiness of a pidfd means the process exited.
        let afd = sys::pidfd_async(pid)?;
        tokio::spawn(async move {
            let code = loop {
                match sys::reap_nohang(pid) {
                    Ok(Reap::Exited(code)) => break Some(code),
                    Ok(Reap::NotChild) if !sys::pid_exists(pid) => break None,
                    Ok(_) | Err(_) => {}
                }
                match afd.readable().await {
                    Ok(mut guard) => guard.clear_ready(),
                    Err(_) => break None,
                }
                // Exited: reap (a non-child is reaped by its own parent).
                match sys::reap_nohang(pid) {
                    Ok(Reap::Exited(code)) => break Some(code),
                    Ok(Reap::NotChild) => break None,
                    _ => {}
                }
            };
            // Expected on destroy; the server reports exits it did not ask for.
            tracing::debug!(capsule = %id, pid, code = ?code, "capsule init exited");
            let _ = tx.send(Some(code.unwrap_or(-1)));
        });
        Ok(Self { exited: rx })
    }

    /// Exit code if the init has exited (-1 when not known).
    pub fn exit_code(&self) -> Option<i32> {
        *self.exited.borrow()
    }

    /// Whether the init is still running.
    pub fn alive(&self) -> bool {
        self.exit_code().is_none()
    }

    /// Waits until the init has exited.
    pub async fn exited(&self) {
        let mut rx = self.exited.clone();
        let _ = rx.wait_for(|v| v.is_some()).await;
    }
}
