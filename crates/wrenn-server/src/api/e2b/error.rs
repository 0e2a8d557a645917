//! The one mapping of the capsule service's errors to E2B's answers: every non-2xx body is
//! `{"code": <int status>, "message": ...}` (contract §2.1). Server errors keep their cause
//! out of the body and hand it to the logging middleware.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use wrenn_runtime::RuntimeError;

use super::ids::sandbox_id;
use crate::error::ServerError;
use crate::service::CapsuleError;
use crate::store::StoreError;

/// An E2B API error.
#[derive(Debug)]
pub struct E2bError {
    status: StatusCode,
    message: String,
    cause: Option<anyhow::Error>,
}

impl E2bError {
    /// An error with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            cause: None,
        }
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404 for sandbox `sandbox_id` (an E2B id).
    pub fn sandbox_not_found(sandbox_id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            format!("sandbox {sandbox_id} not found"),
        )
    }

    /// 500 with a generic message; `cause` is logged.
    pub fn internal(message: impl Into<String>, cause: impl Into<anyhow::Error>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            cause: Some(cause.into()),
        }
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl IntoResponse for E2bError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"code": self.status.as_u16(), "message": self.message});
        let mut response = (self.status, Json(body)).into_response();
        if let Some(cause) = self.cause {
            response
                .extensions_mut()
                .insert(ServerError(Arc::new(cause)));
        }
        response
    }
}

impl From<CapsuleError> for E2bError {
    fn from(e: CapsuleError) -> Self {
        use CapsuleError as E;
        match e {
            E::Invalid(m) => Self::bad_request(m),
            E::NotFound(id) => Self::sandbox_not_found(sandbox_id(&id)),
            E::TemplateNotFound(_) => Self::new(StatusCode::NOT_FOUND, e.to_string()),
            E::InvalidState { id, status, .. } => Self::new(
                StatusCode::CONFLICT,
                format!("sandbox {} is {status}", sandbox_id(&id)),
            ),
            E::BaseTemplateName(_) | E::SnapshotExists(_) | E::SnapshotInUse { .. } => {
                Self::new(StatusCode::CONFLICT, e.to_string())
            }
            E::Store(StoreError::Exists(what)) => {
                Self::new(StatusCode::CONFLICT, format!("{what} already exists"))
            }
            E::Protected(_) => Self::new(StatusCode::FORBIDDEN, e.to_string()),
            // A team limit and a full host are both "try again later" (contract §2.1).
            E::Quota { message, .. } => Self::new(StatusCode::TOO_MANY_REQUESTS, message),
            E::NoCapacity(m) => Self::new(StatusCode::SERVICE_UNAVAILABLE, m),
            E::Runtime(r) => runtime(r),
            E::Snapshot { .. } | E::Store(_) | E::Task { .. } => {
                Self::internal("internal error", e)
            }
        }
    }
}

fn runtime(e: RuntimeError) -> E2bError {
    use RuntimeError as R;
    match e {
        R::CapsuleNotFound(id) => E2bError::sandbox_not_found(sandbox_id(&id)),
        R::TemplateNotFound(n) => {
            E2bError::new(StatusCode::NOT_FOUND, format!("template {n} not found"))
        }
        R::InvalidState { id, state } => E2bError::new(
            StatusCode::CONFLICT,
            format!("sandbox {} is {state}", sandbox_id(&id)),
        ),
        other => E2bError::internal("internal error", other),
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use wrenn_types::api::CapsuleStatus;

    use super::*;
    use crate::service::Needed;

    async fn answer(e: impl Into<E2bError>) -> (StatusCode, serde_json::Value, bool) {
        let r = e.into().into_response();
        let logged = r.extensions().get::<ServerError>().is_some();
        let status = r.status();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap(), logged)
    }

    #[tokio::test]
    async fn bodies_carry_the_int_status_and_e2b_ids() {
        let (s, b, logged) = answer(CapsuleError::NotFound("cl-abc".into())).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert_eq!(
            b,
            serde_json::json!({"code": 404, "message": "sandbox abc not found"})
        );
        assert!(!logged);
        let paused = CapsuleError::InvalidState {
            id: "cl-abc".into(),
            status: CapsuleStatus::Paused,
            needed: Needed::Running,
        };
        let (s, b, _) = answer(paused).await;
        assert_eq!((s, b["code"].as_u64()), (StatusCode::CONFLICT, Some(409)));
        assert_eq!(b["message"], "sandbox abc is paused");
        let quota = CapsuleError::Quota {
            code: "vcpu_limit",
            message: "too many".into(),
        };
        assert_eq!(answer(quota).await.0, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            answer(CapsuleError::NoCapacity("full".into())).await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[tokio::test]
    async fn server_errors_hide_their_cause() {
        let e = CapsuleError::Runtime(RuntimeError::Host {
            id: "cl-x".into(),
            step: "freeze",
            source: anyhow::anyhow!("/var/lib/secret"),
        });
        let (s, b, logged) = answer(e).await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            b,
            serde_json::json!({"code": 500, "message": "internal error"})
        );
        assert!(logged);
    }
}
