//! The sandbox defaults envd needs before a create or connect answers (`PUT /envd-config`):
//! the create-time environment, and E2B's default user when the template has one.

use std::collections::BTreeMap;

use futures_util::TryStreamExt;
use wrenn_agent_client::{AgentClient, AgentError};
use wrenn_types::envd::EnvdConfig;

/// E2B's conventional default user (template `base` and those built on it).
const E2B_USER: &str = "user";
/// The most of `/etc/passwd` read.
const MAX_PASSWD: usize = 1 << 20;

/// Sends the sandbox's defaults to its agent: `env_vars`, and user `user` in its home when the
/// template has that account (root otherwise).
pub(super) async fn configure(
    agent: &AgentClient,
    env_vars: &BTreeMap<String, String>,
) -> Result<(), AgentError> {
    let passwd = read_passwd(agent).await?;
    let (default_user, default_workdir) = match home_of(&passwd, E2B_USER) {
        Some(home) => (Some(E2B_USER.to_owned()), Some(home)),
        None => (None, None),
    };
    agent
        .put_envd_config(&EnvdConfig {
            env_vars: env_vars.clone(),
            default_user,
            default_workdir,
        })
        .await
}

/// The guest's `/etc/passwd` (read by the agent, never from the host), at most [`MAX_PASSWD`].
async fn read_passwd(agent: &AgentClient) -> Result<String, AgentError> {
    let (_, mut stream) = agent.read("/etc/passwd").await?;
    let mut buf = Vec::new();
    while let Some(chunk) = stream.try_next().await? {
        buf.extend_from_slice(&chunk);
        if buf.len() > MAX_PASSWD {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// The home directory of `user` in `passwd` text.
fn home_of(passwd: &str, user: &str) -> Option<String> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 7 && fields[0] == user && !fields[5].is_empty())
            .then(|| fields[5].to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_account_is_found_by_name() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/bash\n";
        assert_eq!(home_of(passwd, "user").as_deref(), Some("/home/user"));
        assert_eq!(home_of("root:x:0:0:root:/root:/bin/sh\n", "user"), None);
        assert_eq!(home_of("username:x:1:1::/home/u:/bin/sh\n", "user"), None);
        assert_eq!(home_of("user:x:1\n", "user"), None);
    }
}
