//! Our own extractors: every rejection becomes the contract's JSON error.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON body; a missing or malformed one is a 400 `invalid_request`.
#[derive(Debug)]
pub struct Body<T>(pub T);

impl<S, T> FromRequest<S> for Body<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::InvalidRequest(format!("unreadable body: {e}")))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return serde_json::from_slice(b"{}")
                .map(Body)
                .map_err(|e| ApiError::InvalidRequest(format!("request body is required: {e}")));
        }
        // Every JSON body of the API is an object (serde would also take an array for a struct).
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::InvalidRequest(format!("invalid JSON body: {e}")))?;
        if !value.is_object() {
            return Err(ApiError::InvalidRequest(
                "the request body must be a JSON object".into(),
            ));
        }
        serde_json::from_value(value)
            .map(Body)
            .map_err(|e| ApiError::InvalidRequest(format!("invalid JSON body: {e}")))
    }
}

/// A query string; a malformed one is a 400 `invalid_request`.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Query<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e| ApiError::InvalidRequest(format!("invalid query: {e}")))
    }
}
