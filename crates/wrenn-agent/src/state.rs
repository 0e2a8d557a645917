//! State shared by every handler.

use std::sync::Arc;

use crate::envd::EnvdState;
use crate::processes::ProcessTable;
use crate::pty::PtyTable;
use crate::reaper::Reaper;

/// The agent's tables.
#[derive(Debug, Default)]
pub struct AppState {
    /// The only owner of `waitpid`.
    pub reaper: Arc<Reaper>,
    /// Running processes.
    pub procs: ProcessTable,
    /// Live PTY sessions.
    pub ptys: PtyTable,
    /// E2B envd's defaults and its view of its processes.
    pub envd: EnvdState,
}

/// Handle to [`AppState`].
pub type SharedState = Arc<AppState>;
