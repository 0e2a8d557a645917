//! Errors of the runtime crate.

use std::fmt;

/// Why a runtime operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No capsule with this id exists in this runtime.
    #[error("capsule {0} not found")]
    CapsuleNotFound(String),
    /// No built-in or snapshot template with this name.
    #[error("template {0} not found")]
    TemplateNotFound(String),
    /// The capsule is not in a state that allows the operation.
    #[error("capsule {id} is {state}")]
    InvalidState {
        /// Capsule id.
        id: String,
        /// What it is now.
        state: CapsuleState,
    },
    /// A capsule or template of this name exists already.
    #[error("{kind} {name} already exists")]
    AlreadyExists {
        /// What kind of thing.
        kind: ResourceKind,
        /// Its id or name.
        name: String,
    },
    /// The template may not be deleted.
    #[error("template {name} is {reason}")]
    Protected {
        /// Template name.
        name: String,
        /// Why.
        reason: Protection,
    },
    /// Building a template failed.
    #[error("building template {name} failed")]
    TemplateBuild {
        /// Template name.
        name: String,
        /// Cause.
        #[source]
        source: anyhow::Error,
    },
    /// Starting the capsule failed.
    #[error("starting capsule {id} failed")]
    Launch {
        /// Capsule id.
        id: String,
        /// Cause.
        #[source]
        source: anyhow::Error,
    },
    /// The agent did not answer in time.
    #[error("agent of capsule {id} not ready after {waited_ms} ms")]
    AgentNotReady {
        /// Capsule id.
        id: String,
        /// How long we waited.
        waited_ms: u64,
    },
    /// A service of the capsule's template did not start or did not pass its readiness probe
    /// in time.
    #[error("service {service} of capsule {id} not ready")]
    ServiceNotReady {
        /// Capsule id.
        id: String,
        /// Service name (from the template's recipe).
        service: String,
        /// What went wrong (start failed, probe failing at the deadline, process exited).
        #[source]
        source: anyhow::Error,
    },
    /// Any other host-side failure (cgroups, mounts, network), with the step that failed.
    #[error("{step} failed for capsule {id}")]
    Host {
        /// Capsule id (or `-`).
        id: String,
        /// The step, e.g. `freeze cgroup`.
        step: &'static str,
        /// Cause.
        #[source]
        source: anyhow::Error,
    },
}

/// What a capsule is, as far as the runtime can tell, when it refuses an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapsuleState {
    /// Running.
    Running,
    /// Paused (frozen, or its state saved).
    Paused,
    /// Its init exited on its own with this code; only destroy is left.
    Exited {
        /// Exit code (128 + signal for a signal).
        code: i32,
    },
}

impl fmt::Display for CapsuleState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Running => f.write_str("running"),
            Self::Paused => f.write_str("paused"),
            Self::Exited { code } => write!(f, "dead (init exited with {code})"),
        }
    }
}

/// The kind of a named runtime resource, for [`RuntimeError::AlreadyExists`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceKind {
    /// A capsule (by id).
    Capsule,
    /// A template (by name).
    Template,
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Capsule => "capsule",
            Self::Template => "template",
        })
    }
}

/// Why a template may not be deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protection {
    /// It is built from a recipe (a base template).
    Base,
    /// A capsule still runs on it.
    InUse {
        /// One capsule that does.
        capsule: String,
    },
}

impl fmt::Display for Protection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Base => f.write_str("a protected base template"),
            Self::InUse { capsule } => write!(f, "in use by capsule {capsule}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_keep_their_wording() {
        let e = RuntimeError::InvalidState {
            id: "cl-x".into(),
            state: CapsuleState::Exited { code: 137 },
        };
        assert_eq!(e.to_string(), "capsule cl-x is dead (init exited with 137)");
        let e = RuntimeError::AlreadyExists {
            kind: ResourceKind::Template,
            name: "t".into(),
        };
        assert_eq!(e.to_string(), "template t already exists");
        let e = RuntimeError::Protected {
            name: "t".into(),
            reason: Protection::InUse {
                capsule: "cl-y".into(),
            },
        };
        assert_eq!(e.to_string(), "template t is in use by capsule cl-y");
    }
}
