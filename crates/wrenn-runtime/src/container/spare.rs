//! A launcher process started ahead of need, so a create does not wait for the launcher's exec.
//!
//! A launcher reads its whole request from stdin before it does anything (see
//! [`super::launcher`]), so a process spawned early just sits in that read. A create takes the
//! spare one (when there is one and it is still alive), hands it the request exactly as it
//! would a fresh launcher, and starts the next spare. At most one spare waits at a time; it is
//! a fresh exec of the configured launcher with the same environment, and holds nothing of a
//! capsule's until its request comes. It is killed when the runtime is dropped, and exits on
//! its own when the server dies (its stdin reaches end of file: an empty request fails).

use std::ffi::OsString;
use std::process::Stdio;
use std::sync::Mutex;

use tokio::process::{Child, Command};

/// Spawns launcher processes and keeps one started ahead.
#[derive(Debug)]
pub(super) struct Launchers {
    argv: Vec<OsString>,
    spare: Mutex<Option<Child>>,
}

impl Launchers {
    /// Launchers running `argv` (program and arguments; not empty).
    pub(super) fn new(argv: Vec<OsString>) -> Self {
        Self {
            argv,
            spare: Mutex::new(None),
        }
    }

    /// Starts a launcher now, stdin and stdout piped, stderr inherited.
    fn spawn(&self) -> std::io::Result<Child> {
        Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // libcontainer would preserve LISTEN_FDS more fds into the capsule.
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            .kill_on_drop(true)
            .spawn()
    }

    /// A launcher waiting for its request: the spare when it is alive, else a new one.
    pub(super) fn take(&self) -> std::io::Result<Child> {
        let spare = self.slot().take();
        if let Some(mut child) = spare {
            // Killed by somebody while it waited: dropped (and reaped by tokio).
            if matches!(child.try_wait(), Ok(None)) {
                return Ok(child);
            }
        }
        self.spawn()
    }

    /// Starts the next spare unless one waits already. Best effort: a failure only means the
    /// next create spawns its launcher itself.
    pub(super) fn refill(&self) {
        let mut slot = self.slot();
        if slot.is_some() {
            return;
        }
        match self.spawn() {
            Ok(child) => *slot = Some(child),
            Err(e) => tracing::warn!(error = %e, "cannot start a spare launcher"),
        }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.spare.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::Launchers;

    fn spare_pid(l: &Launchers) -> Option<u32> {
        l.slot().as_ref().and_then(|c| c.id())
    }

    /// `cat` stands in for the launcher: like it, it reads its stdin to the end.
    #[tokio::test]
    async fn take_hands_out_the_spare_and_replaces_a_dead_one() {
        let l = Launchers::new(vec!["cat".into()]);
        assert_eq!(spare_pid(&l), None);
        l.refill();
        let first = spare_pid(&l).expect("a spare");
        // A second refill keeps the one that waits.
        l.refill();
        assert_eq!(spare_pid(&l), Some(first));
        let taken = l.take().expect("take");
        assert_eq!(taken.id(), Some(first));
        assert_eq!(spare_pid(&l), None);

        l.refill();
        let mut dead = l.slot().take().expect("a spare");
        let pid = dead.id();
        dead.start_kill().expect("kill");
        dead.wait().await.expect("wait");
        *l.slot() = Some(dead);
        let mut fresh = l.take().expect("take");
        assert_ne!(fresh.id(), pid);
        assert!(matches!(fresh.try_wait(), Ok(None)), "a live launcher");
    }
}
