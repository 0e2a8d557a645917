//! What the capsule service answers when a verb is refused or fails. No HTTP here: each API
//! front end maps these to its own codes (the Wrenn API in `api::wrenn::error`).

use wrenn_runtime::RuntimeError;
use wrenn_types::api::CapsuleStatus;

use crate::store::StoreError;

/// The status a verb needed the capsule to be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needed {
    /// Work inside the capsule, pausing.
    Running,
    /// Resuming.
    Paused,
    /// Snapshotting.
    RunningOrPaused,
}

/// Why a capsule service call was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum CapsuleError {
    /// The request is malformed or out of bounds.
    #[error("{0}")]
    Invalid(String),
    /// No capsule with this id for this team (another team's capsule is a missing one).
    #[error("capsule {0} not found")]
    NotFound(String),
    /// No base template or team snapshot with this name.
    #[error("template {0} not found")]
    TemplateNotFound(String),
    /// The capsule's status does not allow the verb.
    #[error("{}", invalid_state(.id, *.status, *.needed))]
    InvalidState {
        /// Capsule id.
        id: String,
        /// What it is now.
        status: CapsuleStatus,
        /// What the verb needed.
        needed: Needed,
    },
    /// A snapshot may not take a base template's name.
    #[error("{0} is the name of a base template")]
    BaseTemplateName(String),
    /// A snapshot with this name exists and overwriting was not asked for.
    #[error("snapshot {0} already exists")]
    SnapshotExists(String),
    /// The snapshot is in use (a capsule runs on it).
    #[error("snapshot {name} is {state}")]
    SnapshotInUse {
        /// Snapshot name.
        name: String,
        /// What the runtime says it is.
        state: String,
    },
    /// Base templates cannot be deleted.
    #[error("{0} is a protected base template")]
    Protected(String),
    /// The team is at one of its limits (`code` is upstream's quota code).
    #[error("{message}")]
    Quota {
        /// e.g. `concurrent_sandbox_limit`, `vcpu_limit`, `memory_limit`, `snapshot_limit`.
        code: &'static str,
        /// What limit, in words.
        message: String,
    },
    /// The host cannot take another capsule of this size now.
    #[error("{0}")]
    NoCapacity(String),
    /// The runtime failed or refused.
    #[error("runtime call failed")]
    Runtime(#[source] RuntimeError),
    /// Taking a snapshot failed in the runtime.
    #[error("snapshot {name} failed")]
    Snapshot {
        /// Snapshot name.
        name: String,
        /// Cause.
        #[source]
        source: RuntimeError,
    },
    /// The store failed.
    #[error("store call failed")]
    Store(#[source] StoreError),
    /// A task running the verb died.
    #[error("{what} task failed")]
    Task {
        /// Which task.
        what: &'static str,
        /// Cause.
        #[source]
        source: tokio::task::JoinError,
    },
}

fn invalid_state(id: &str, status: CapsuleStatus, needed: Needed) -> String {
    match needed {
        Needed::Running => format!("capsule {id} is not running (status: {status})"),
        Needed::Paused => format!("capsule {id} is not paused (status: {status})"),
        Needed::RunningOrPaused => {
            format!("capsule {id} is {status}; snapshots need running or paused")
        }
    }
}

impl From<RuntimeError> for CapsuleError {
    fn from(e: RuntimeError) -> Self {
        Self::Runtime(e)
    }
}

impl From<StoreError> for CapsuleError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// Result of a capsule service call.
pub type CapsuleResult<T> = Result<T, CapsuleError>;
