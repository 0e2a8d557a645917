//! E2B's envd (E2B contract §3–§5), served under [`ENVD_PATH_PREFIX`] on the agent's own
//! process table, PTY sessions and file code.
//!
//! Modules: [`connect`] (framing, errors, JSON conventions), [`process`] (`process.Process`),
//! [`filesystem`] (`filesystem.Filesystem`), [`http`] (`/health`, `/files`, `/envs` and
//! `PUT /envd-config`), [`envfile`] (the default environment for in-capsule services). The
//! server checks the access token before it forwards anything here; this module decides the
//! user of each call (`Authorization: Basic`, else the sandbox's default user) and resolves
//! `~` and relative paths against that user's home.

pub mod connect;
pub mod envfile;
pub mod filesystem;
pub mod http;
mod output;
pub mod process;

use std::sync::{Mutex, MutexGuard, RwLock};

use axum::extract::DefaultBodyLimit;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::Router;
use base64::Engine;
use wrenn_types::envd::EnvdConfig;

use crate::state::SharedState;
use crate::users::{self, User};
use connect::{Code, RpcError};

pub use wrenn_types::envd::{ENVD_CONFIG_PATH, ENVD_PATH_PREFIX};

/// envd's own state beside the agent's tables.
#[derive(Debug, Default)]
pub struct EnvdState {
    config: RwLock<EnvdConfig>,
    /// envd's view of the processes it started (stdin, original config, signals sent).
    pub procs: process::EnvdProcs,
    /// Directory watchers of `CreateWatcher`.
    pub watchers: Mutex<filesystem::Watchers>,
}

impl EnvdState {
    /// The sandbox defaults now in force.
    pub fn config(&self) -> EnvdConfig {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the sandbox defaults.
    pub fn set_config(&self, config: EnvdConfig) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = config;
    }

    fn watchers(&self) -> MutexGuard<'_, filesystem::Watchers> {
        self.watchers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The routes under [`ENVD_PATH_PREFIX`].
pub fn router() -> Router<SharedState> {
    Router::new()
        .route("/health", get(http::health))
        .route("/envs", get(http::envs))
        .route(
            "/files",
            get(http::download)
                .post(http::upload)
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/process.Process/{method}", post(process::call))
        .route("/filesystem.Filesystem/{method}", post(filesystem::call))
        .layer(DefaultBodyLimit::max(connect::MAX_MESSAGE))
}

/// Rejects text with a NUL byte (it cannot reach the kernel intact).
pub fn check_text(what: &str, s: &str) -> Result<(), RpcError> {
    if s.contains('\0') {
        return Err(RpcError::invalid(format!("{what} contains a NUL byte")));
    }
    Ok(())
}

/// The user named by `Authorization: Basic base64(user:)` (or `name`, when given), else the
/// sandbox default user, else root. An unknown user is `unauthenticated`.
pub fn request_user(
    state: &SharedState,
    headers: &HeaderMap,
    name: Option<&str>,
) -> Result<User, RpcError> {
    let from_header = match headers
        .get(axum::http::header::AUTHORIZATION)
        .map(|v| v.as_bytes())
    {
        Some(v) => basic_user(v)?,
        None => None,
    };
    let name = match name.filter(|n| !n.is_empty()).map(str::to_string) {
        Some(n) => Some(n),
        None => from_header.or(state.envd.config().default_user),
    };
    if let Some(n) = &name {
        check_text("user", n)?;
    }
    users::resolve(name.as_deref()).map_err(|e| RpcError::new(Code::Unauthenticated, e.to_string()))
}

fn basic_user(value: &[u8]) -> Result<Option<String>, RpcError> {
    let bad = || RpcError::invalid("authorization header is not Basic base64(user:)");
    let text = std::str::from_utf8(value).map_err(|_| bad())?;
    let Some(encoded) = text
        .strip_prefix("Basic ")
        .or_else(|| text.strip_prefix("basic "))
    else {
        return Err(bad());
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| bad())?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
    let user = decoded.split(':').next().unwrap_or("");
    Ok((!user.is_empty()).then(|| user.to_string()))
}

/// `path` as an absolute path: `~`, `~/x` and relative paths resolve against `home`; an empty
/// path is the home itself. Trailing slashes are dropped.
pub fn resolve_path(path: &str, home: &str) -> Result<String, RpcError> {
    check_text("path", path)?;
    let joined = if path.is_empty() || path == "~" {
        home.to_string()
    } else if let Some(rest) = path.strip_prefix("~/") {
        format!("{}/{rest}", home.trim_end_matches('/'))
    } else if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{}/{path}", home.trim_end_matches('/'))
    };
    let trimmed = joined.trim_end_matches('/');
    Ok(if trimmed.is_empty() { "/" } else { trimmed }.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_against_home() {
        let p = |s| resolve_path(s, "/home/user").expect("valid");
        assert_eq!(p(""), "/home/user");
        assert_eq!(p("~"), "/home/user");
        assert_eq!(p("~/a/b/"), "/home/user/a/b");
        assert_eq!(p("a.txt"), "/home/user/a.txt");
        assert_eq!(p("/tmp/x"), "/tmp/x");
        assert_eq!(p("/"), "/");
        assert_eq!(resolve_path("a", "/").expect("root home"), "/a");
        assert_eq!(
            resolve_path("/a\0b", "/").expect_err("nul").code,
            Code::InvalidArgument
        );
    }

    #[test]
    fn basic_auth_names_the_user() {
        assert_eq!(
            basic_user(b"Basic dXNlcjo=").expect("ok"),
            Some("user".into())
        );
        assert_eq!(
            basic_user(b"Basic cm9vdDo=").expect("ok"),
            Some("root".into())
        );
        assert_eq!(basic_user(b"Basic Og==").expect("ok"), None);
        assert!(basic_user(b"Bearer x").is_err());
        assert!(basic_user(b"Basic !!!").is_err());
    }
}
