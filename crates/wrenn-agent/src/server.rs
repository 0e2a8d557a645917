//! The HTTP router: which handler answers which path. Handlers live in their own modules and
//! never import this one.

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post, put};
use axum::Router;

use crate::state::SharedState;
use crate::{envd, exec, files, health, pty, stream};

/// Builds the router.
pub fn app(state: SharedState) -> Router {
    Router::new()
        .route("/health", get(health::health))
        .route("/exec", post(exec::exec))
        .route("/exec/stream", get(stream::exec_stream))
        .route("/processes", get(exec::processes))
        .route("/processes/{selector}", delete(exec::kill))
        .route("/processes/{selector}/stream", get(stream::attach))
        .route("/pty", get(pty::pty))
        .route("/files/read", post(files::read))
        .route(
            "/files/write",
            post(files::write).layer(DefaultBodyLimit::disable()),
        )
        .route("/files/list", post(files::list))
        .route("/files/mkdir", post(files::mkdir))
        .route("/files/remove", post(files::remove))
        .route("/files/stat", post(files::stat))
        .route(envd::ENVD_CONFIG_PATH, put(envd::http::put_config))
        .nest(envd::ENVD_PATH_PREFIX, envd::router())
        .with_state(state)
}
