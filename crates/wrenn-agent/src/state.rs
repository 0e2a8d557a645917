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

impl AppState {
    /// Empty tables capped at `max_processes` tracked processes and `max_ptys` PTY sessions.
    pub fn new(max_processes: usize, max_ptys: usize) -> Self {
        Self {
            reaper: Arc::default(),
            procs: ProcessTable::with_max(max_processes),
            ptys: PtyTable::with_max(max_ptys),
            envd: EnvdState::default(),
        }
    }
}

/// Handle to [`AppState`].
pub type SharedState = Arc<AppState>;
