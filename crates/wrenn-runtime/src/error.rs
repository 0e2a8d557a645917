//! Errors of the runtime crate.

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
        state: String,
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
