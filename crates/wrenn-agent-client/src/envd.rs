//! E2B's envd through the agent (`wrenn_types::envd`): the sandbox defaults, and raw
//! forwarding of envd traffic under [`ENVD_PATH_PREFIX`].

use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use wrenn_types::envd::{EnvdConfig, ENVD_CONFIG_PATH, ENVD_PATH_PREFIX};

use crate::deadline::{Upload, Watched};
use crate::{transport, AgentClient, AgentError, BoxError};

impl AgentClient {
    /// `PUT /envd-config`: the sandbox's envd defaults (environment, user, working directory).
    pub async fn put_envd_config(&self, config: &EnvdConfig) -> Result<(), AgentError> {
        let resp = self
            .send_json(Method::PUT, ENVD_CONFIG_PATH, config, self.wait())
            .await?;
        // Drain the (empty) answer so the connection closes cleanly.
        let _ = resp.into_body().collect().await;
        Ok(())
    }

    /// Sends `req` (an envd path such as `/files?path=a`) to the agent as
    /// `/envd/files?path=a` on a fresh connection and answers whatever the agent answers,
    /// any status, with its body streamed as it arrives: nothing is buffered either way.
    /// `Host` is set to the agent's; the other headers go unchanged.
    ///
    /// The agent must take the request body as the caller sends it and answer the head within
    /// [`Deadlines::request`](crate::Deadlines) of its last byte (a client-streaming call
    /// stays open as long as its caller keeps it open); the answer's body has no deadline.
    pub async fn forward_envd<B>(&self, req: Request<B>) -> Result<Response<Incoming>, AgentError>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let (mut parts, body) = req.into_parts();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = Uri::try_from(envd_path(path)).map_err(transport)?;
        parts
            .headers
            .insert(header::HOST, http::HeaderValue::from_static("localhost"));
        let (mut sender, conn) = self.http1().await?;
        let upload = Upload::new();
        let body = Watched::new(body, Arc::clone(&upload));
        let after = self.deadlines().request;
        let answer = tokio::select! {
            r = sender.send_request(Request::from_parts(parts, body)) => r.map_err(transport),
            phase = upload.stalled(after) => Err(AgentError::Timeout { phase, after }),
        };
        if answer.is_ok() {
            conn.keep();
        }
        answer
    }
}

/// The agent path of envd path `path_and_query` (which starts with `/`).
pub fn envd_path(path_and_query: &str) -> String {
    if path_and_query.starts_with('/') {
        format!("{ENVD_PATH_PREFIX}{path_and_query}")
    } else {
        format!("{ENVD_PATH_PREFIX}/{path_and_query}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envd_paths_get_the_prefix() {
        assert_eq!(
            envd_path("/process.Process/Start"),
            "/envd/process.Process/Start"
        );
        assert_eq!(envd_path("/files?path=a%20b"), "/envd/files?path=a%20b");
        assert_eq!(envd_path("health"), "/envd/health");
    }
}
