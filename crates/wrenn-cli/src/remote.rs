//! Talking to a running server: where it is, who we are, and capsule ids by unique prefix.

use anyhow::bail;
use wrenn_client::{Capsule, CapsuleStatus, Client};

/// Where the server is and who we are.
#[derive(Debug, Clone, clap::Args)]
pub struct Remote {
    /// Server base URL (plain HTTP; put TLS in front with a proxy).
    #[arg(
        long,
        env = "WRENN_BASE_URL",
        default_value = wrenn_client::DEFAULT_BASE_URL,
        global = true
    )]
    base_url: String,
    /// API key.
    #[arg(long, env = "WRENN_API_KEY", hide_env_values = true, global = true)]
    api_key: Option<String>,
}

impl Remote {
    /// Whether an API key was given.
    pub fn has_key(&self) -> bool {
        self.api_key.as_deref().is_some_and(|k| !k.is_empty())
    }

    /// A client of the server.
    pub fn client(&self) -> anyhow::Result<Client> {
        let Some(key) = self.api_key.as_deref().filter(|k| !k.is_empty()) else {
            bail!("unauthorized: no API key; set WRENN_API_KEY or pass --api-key");
        };
        Ok(Client::new(&self.base_url, key)?)
    }
}

/// The id-shaped part of a prefix: `cl-` is optional.
fn normalise(prefix: &str) -> String {
    if prefix.starts_with("cl-") {
        prefix.to_owned()
    } else {
        format!("cl-{prefix}")
    }
}

/// Whether `s` is a whole capsule id (`cl-` + 25 base36).
fn is_full_id(s: &str) -> bool {
    s.strip_prefix("cl-").is_some_and(|rest| {
        rest.len() == 25
            && rest
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
    })
}

/// Picks the one capsule whose id starts with `prefix`.
pub fn pick<'a>(capsules: &'a [Capsule], prefix: &str) -> anyhow::Result<&'a Capsule> {
    if prefix.is_empty() || prefix == "cl-" {
        bail!("invalid_request: empty capsule id");
    }
    let want = normalise(prefix);
    let hits: Vec<&Capsule> = capsules
        .iter()
        .filter(|c| c.id.starts_with(&want))
        .collect();
    match hits.as_slice() {
        [one] => Ok(one),
        [] => bail!("not_found: no capsule matches {prefix:?}"),
        many => {
            let ids: Vec<&str> = many.iter().map(|c| c.id.as_str()).collect();
            bail!(
                "invalid_request: capsule id prefix {prefix:?} is ambiguous: it matches {}",
                ids.join(", ")
            )
        }
    }
}

/// The full id of the capsule `prefix` names: a whole id as it is (a stopped capsule too),
/// else the one live capsule of the team whose id starts with it.
pub async fn resolve(client: &Client, prefix: &str) -> anyhow::Result<String> {
    if is_full_id(prefix) {
        return Ok(prefix.to_owned());
    }
    let capsules = client.list_capsules().await?;
    Ok(pick(&capsules, prefix)?.id.clone())
}

/// Like [`resolve`], and the capsule must be running: a WebSocket reports a stopped or paused
/// capsule only in-band, without the contract's code, so ask first.
pub async fn resolve_running(client: &Client, prefix: &str) -> anyhow::Result<String> {
    let id = resolve(client, prefix).await?;
    let capsule = client.get_capsule(&id).await?;
    if capsule.status != CapsuleStatus::Running {
        bail!(
            "invalid_state: capsule {id} is not running (status: {})",
            capsule.status
        );
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capsule(id: &str) -> Capsule {
        serde_json::from_value(serde_json::json!({
            "id": id, "status": "running", "template": "minimal", "vcpus": 1, "memory_mb": 512,
            "timeout_sec": 0, "disk_size_mb": 0, "created_at": "2026-05-02T10:00:00Z",
            "last_updated": "2026-05-02T10:00:00Z"
        }))
        .unwrap()
    }

    #[test]
    fn prefixes_pick_one_capsule_or_say_why_not() {
        let all = [capsule("cl-abc1"), capsule("cl-abd2"), capsule("cl-x99")];
        assert_eq!(pick(&all, "cl-abc").unwrap().id, "cl-abc1");
        assert_eq!(pick(&all, "x").unwrap().id, "cl-x99");
        let amb = pick(&all, "ab").unwrap_err().to_string();
        assert!(
            amb.starts_with("invalid_request:") && amb.contains("cl-abd2"),
            "{amb}"
        );
        let none = pick(&all, "zz").unwrap_err().to_string();
        assert!(none.starts_with("not_found:"), "{none}");
        assert!(pick(&all, "").is_err());
        assert!(is_full_id(&format!("cl-{}", "a".repeat(25))));
        assert!(!is_full_id("cl-abc"));
    }
}
