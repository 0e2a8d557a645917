//! The one mapping of the capsule service's errors to the Wrenn API's codes (contract §2).

use wrenn_runtime::RuntimeError;

use crate::error::ApiError;
use crate::service::CapsuleError;
use crate::store::StoreError;

impl From<CapsuleError> for ApiError {
    fn from(e: CapsuleError) -> Self {
        use CapsuleError as E;
        match e {
            E::Invalid(_) => Self::InvalidRequest(e.to_string()),
            E::NotFound(_) | E::TemplateNotFound(_) => Self::NotFound(e.to_string()),
            E::InvalidState { .. } => Self::InvalidState(e.to_string()),
            E::BaseTemplateName(_)
            | E::SnapshotExists(_)
            | E::SnapshotInUse { .. }
            | E::Store(StoreError::Exists(_)) => Self::Conflict(chain_tail(&e)),
            E::Protected(_) => Self::Forbidden(e.to_string()),
            E::NoCapacity(_) => Self::HostUnavailable(e.to_string()),
            E::Quota { code, message } => Self::Quota(code, message),
            E::Runtime(r) => runtime(r),
            E::Snapshot { .. } | E::Store(_) | E::Task { .. } => Self::internal(e),
        }
    }
}

/// The message a 4xx shows: the innermost cause for a store conflict ("x already exists"),
/// the error itself otherwise.
fn chain_tail(e: &CapsuleError) -> String {
    match e {
        CapsuleError::Store(inner) => inner.to_string(),
        other => other.to_string(),
    }
}

fn runtime(e: RuntimeError) -> ApiError {
    use RuntimeError as R;
    match e {
        R::CapsuleNotFound(id) => ApiError::NotFound(format!("capsule {id} not found")),
        R::TemplateNotFound(n) => ApiError::NotFound(format!("template {n} not found")),
        R::InvalidState { id, state } => {
            ApiError::InvalidState(format!("capsule {id} is not running (status: {state})"))
        }
        e @ (R::AlreadyExists { .. } | R::Protected { .. }) => {
            ApiError::InvalidState(e.to_string())
        }
        other => ApiError::internal(other),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use wrenn_types::api::CapsuleStatus;

    use super::*;
    use crate::service::Needed;

    fn mapped(e: CapsuleError) -> (StatusCode, &'static str, String) {
        let api = ApiError::from(e);
        let (status, code) = api.status_and_code();
        (status, code, api.body().error.message)
    }

    #[test]
    fn every_domain_error_has_its_code() {
        let state = CapsuleError::InvalidState {
            id: "cl-x".into(),
            status: CapsuleStatus::Paused,
            needed: Needed::Running,
        };
        assert_eq!(
            mapped(state),
            (
                StatusCode::CONFLICT,
                "invalid_state",
                "capsule cl-x is not running (status: paused)".into()
            )
        );
        assert_eq!(mapped(CapsuleError::NotFound("cl-x".into())).1, "not_found");
        assert_eq!(
            mapped(CapsuleError::Store(StoreError::Exists("snapshot a".into()))),
            (
                StatusCode::CONFLICT,
                "conflict",
                "snapshot a already exists".into()
            )
        );
        assert_eq!(
            mapped(CapsuleError::NoCapacity("full".into())).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            mapped(CapsuleError::Protected("minimal".into())).0,
            StatusCode::FORBIDDEN
        );
    }

    #[test]
    fn server_errors_keep_their_cause_out_of_the_body() {
        let e = CapsuleError::Runtime(RuntimeError::Host {
            id: "cl-x".into(),
            step: "freeze cgroup",
            source: anyhow::anyhow!("secret host path"),
        });
        assert_eq!(
            mapped(e),
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "internal error".into()
            )
        );
    }
}
