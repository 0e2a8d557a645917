//! `wrenn capsule …` and `wrenn template …`: a small client of a running server's REST API
//! (`WRENN_BASE_URL`, `WRENN_API_KEY`), printing JSON.

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

/// Where the server is and who we are.
#[derive(Debug, Clone, clap::Args)]
pub struct Remote {
    /// Server base URL (plain HTTP; put TLS in front with a proxy).
    #[arg(long, env = "WRENN_BASE_URL", default_value = "http://127.0.0.1:8080")]
    base_url: String,
    /// API key (needed by every command that talks to a server).
    #[arg(
        long,
        env = "WRENN_API_KEY",
        hide_env_values = true,
        default_value = ""
    )]
    api_key: String,
}

/// Capsule commands.
#[derive(Debug, clap::Subcommand)]
pub enum CapsuleCommand {
    /// Create a capsule and wait until it runs; prints it.
    Create {
        /// Template (default: the server's, `minimal`).
        #[arg(long)]
        template: Option<String>,
        /// CPUs.
        #[arg(long)]
        vcpus: Option<u32>,
        /// Memory in MiB.
        #[arg(long)]
        memory_mb: Option<u32>,
        /// Pause after this many idle seconds (0 = never).
        #[arg(long)]
        timeout_sec: Option<u32>,
    },
    /// List capsules.
    List,
    /// Show one capsule.
    Get {
        /// Capsule id.
        id: String,
    },
    /// Run a command through `/bin/sh -c`; prints its output and exits with its status.
    Exec {
        /// Capsule id.
        id: String,
        /// The command line.
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
    /// Pause a capsule.
    Pause {
        /// Capsule id.
        id: String,
    },
    /// Resume a capsule.
    Resume {
        /// Capsule id.
        id: String,
    },
    /// Destroy a capsule.
    Destroy {
        /// Capsule id.
        id: String,
    },
}

/// Template commands.
#[derive(Debug, clap::Subcommand)]
pub enum TemplateCommand {
    /// List base templates and this team's snapshots.
    List,
    /// Snapshot a capsule's filesystem into a template.
    Snapshot {
        /// Capsule id.
        id: String,
        /// Template name.
        #[arg(long)]
        name: Option<String>,
    },
    /// Delete a snapshot template.
    Delete {
        /// Template name.
        name: String,
    },
}

impl Remote {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        if self.api_key.is_empty() {
            bail!("no API key: pass --api-key or set WRENN_API_KEY");
        }
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let url = format!("{}{}", self.base_url.trim_end_matches('/'), path);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(&url)
            .header("x-api-key", &self.api_key);
        let payload = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Bytes::from(serde_json::to_vec(&v)?)
            }
            None => Bytes::new(),
        };
        let resp = client
            .request(req.body(Full::new(payload))?)
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        let value: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)))
        };
        if !status.is_success() {
            let code = value["error"]["code"].as_str().unwrap_or("error");
            let msg = value["error"]["message"].as_str().unwrap_or("");
            bail!("{status} {code}: {msg}");
        }
        Ok(value)
    }

    async fn wait_for(&self, id: &str, want: &str) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let c = self
                .call("GET", &format!("/v1/capsules/{id}"), None)
                .await?;
            match c["status"].as_str() {
                Some(s) if s == want => return Ok(c),
                Some("error" | "stopped") => {
                    bail!("capsule {id} ended up {}: {}", c["status"], c["error"])
                }
                _ => {}
            }
            if tokio::time::Instant::now() > deadline {
                bail!("capsule {id} is still {} after 120 s", c["status"]);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

fn print(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Runs a capsule command; returns the process exit code.
pub async fn capsule(remote: &Remote, cmd: CapsuleCommand) -> anyhow::Result<i32> {
    match cmd {
        CapsuleCommand::Create {
            template,
            vcpus,
            memory_mb,
            timeout_sec,
        } => {
            let mut body = serde_json::Map::new();
            if let Some(t) = template {
                body.insert("template".into(), json!(t));
            }
            if let Some(v) = vcpus {
                body.insert("vcpus".into(), json!(v));
            }
            if let Some(m) = memory_mb {
                body.insert("memory_mb".into(), json!(m));
            }
            if let Some(t) = timeout_sec {
                body.insert("timeout_sec".into(), json!(t));
            }
            let c = remote
                .call("POST", "/v1/capsules", Some(Value::Object(body)))
                .await?;
            let id = c["id"].as_str().context("no id in the answer")?.to_owned();
            print(&remote.wait_for(&id, "running").await?)?;
        }
        CapsuleCommand::List => print(&remote.call("GET", "/v1/capsules", None).await?)?,
        CapsuleCommand::Get { id } => print(
            &remote
                .call("GET", &format!("/v1/capsules/{id}"), None)
                .await?,
        )?,
        CapsuleCommand::Exec { id, command } => {
            let body =
                json!({"cmd": "/bin/sh", "args": ["-c", command.join(" ")], "background": false});
            let r = remote
                .call("POST", &format!("/v1/capsules/{id}/exec"), Some(body))
                .await?;
            let decode = |s: &Value| -> Vec<u8> {
                let s = s.as_str().unwrap_or("");
                if r["encoding"] == "base64" {
                    use base64::Engine;
                    base64::engine::general_purpose::STANDARD
                        .decode(s)
                        .unwrap_or_default()
                } else {
                    s.as_bytes().to_vec()
                }
            };
            use std::io::Write;
            std::io::stdout().write_all(&decode(&r["stdout"]))?;
            std::io::stderr().write_all(&decode(&r["stderr"]))?;
            return Ok(r["exit_code"].as_i64().unwrap_or(1) as i32);
        }
        CapsuleCommand::Pause { id } => {
            remote
                .call("POST", &format!("/v1/capsules/{id}/pause"), None)
                .await?;
            print(&remote.wait_for(&id, "paused").await?)?;
        }
        CapsuleCommand::Resume { id } => {
            remote
                .call("POST", &format!("/v1/capsules/{id}/resume"), None)
                .await?;
            print(&remote.wait_for(&id, "running").await?)?;
        }
        CapsuleCommand::Destroy { id } => {
            remote
                .call("DELETE", &format!("/v1/capsules/{id}"), None)
                .await?;
            print(&remote.wait_for(&id, "stopped").await.or_else(|e| {
                if e.to_string().contains("ended up \"stopped\"") {
                    Ok(Value::Null)
                } else {
                    Err(e)
                }
            })?)?;
        }
    }
    Ok(0)
}

/// Runs a template command.
pub async fn template(remote: &Remote, cmd: TemplateCommand) -> anyhow::Result<()> {
    match cmd {
        TemplateCommand::List => print(&remote.call("GET", "/v1/snapshots", None).await?),
        TemplateCommand::Snapshot { id, name } => {
            let body = json!({"sandbox_id": id, "name": name});
            print(&remote.call("POST", "/v1/snapshots", Some(body)).await?)
        }
        TemplateCommand::Delete { name } => {
            remote
                .call("DELETE", &format!("/v1/snapshots/{name}"), None)
                .await?;
            Ok(())
        }
    }
}
