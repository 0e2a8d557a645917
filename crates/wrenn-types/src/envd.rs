//! E2B's envd, served by `wrenn-agent` beside its own protocol (E2B contract §3–§5).
//!
//! The server owns routing and the access token; the agent owns the envd protocol:
//! 1. Sandbox traffic for port [`ENVD_PORT`] (`{port}-{id}.{domain}` or the `E2b-Sandbox-*`
//!    headers) is checked by the server (`X-Access-Token`, or a signed `/files` URL; `GET /health`
//!    needs neither) and forwarded over the capsule's agent endpoint with [`ENVD_PATH_PREFIX`]
//!    put in front of the path (`/process.Process/Start` → `/envd/process.Process/Start`),
//!    query, method, body and the remaining headers unchanged, streamed both ways.
//! 2. `PUT` [`ENVD_CONFIG_PATH`] with an [`EnvdConfig`] sets the sandbox's defaults. It lies
//!    outside the prefix, so sandbox traffic can never reach it. The server sends it before it
//!    answers an E2B create or connect.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The envd port inside an E2B sandbox.
pub const ENVD_PORT: u16 = 49983;

/// The envd version reported to E2B clients: the highest whose features all work (contract §5).
pub const ENVD_VERSION: &str = "0.6.1";

/// Agent path prefix under which envd's routes are served.
pub const ENVD_PATH_PREFIX: &str = "/envd";

/// Agent path of the sandbox defaults (server only, never proxied).
pub const ENVD_CONFIG_PATH: &str = "/envd-config";

/// A sandbox's defaults for envd calls.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvdConfig {
    /// Environment of every process envd starts (create's `envVars`), and of `GET /envs`.
    #[serde(default)]
    pub env_vars: BTreeMap<String, String>,
    /// User when the request names none (no `Authorization: Basic`); `None` = root.
    #[serde(default)]
    pub default_user: Option<String>,
    /// Working directory when the request names none; `None` = the user's home.
    #[serde(default)]
    pub default_workdir: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_wire_is_camel_case_and_defaults() {
        let c: EnvdConfig =
            serde_json::from_str(r#"{"envVars":{"A":"1"},"defaultUser":"user"}"#).expect("parse");
        assert_eq!(c.env_vars.get("A").map(String::as_str), Some("1"));
        assert_eq!(c.default_user.as_deref(), Some("user"));
        assert_eq!(c.default_workdir, None);
        let empty: EnvdConfig = serde_json::from_str("{}").expect("parse");
        assert_eq!(empty, EnvdConfig::default());
    }
}
