//! `wrenn capsule …`: create, list, inspect, exec, pause, resume, destroy, ping, shell, cp.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::AsyncWriteExt;
use wrenn_client::{CapsuleStatus, Client, CreateCapsuleRequest, ExecRequest, StreamEvent};

use crate::output::{self, Cell, Table};
use crate::remote::{resolve, resolve_running, Remote};

/// Capsule commands.
#[derive(Debug, clap::Subcommand)]
pub enum CapsuleCommand {
    /// Create a capsule and wait until it runs; prints its id.
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
        /// A label, `KEY=VALUE` (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// Backend, `container` or `microvm` (default: the server's).
        #[arg(long)]
        runtime: Option<String>,
        /// Open a shell in it once it runs; exits with the shell's status.
        #[arg(long)]
        shell: bool,
        /// Print the whole capsule as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List live capsules.
    #[command(visible_alias = "list")]
    Ls {
        #[command(flatten)]
        format: crate::output::ListFormat,
    },
    /// Show one capsule as JSON.
    #[command(visible_alias = "get")]
    Inspect {
        /// Capsule id or a unique prefix of it.
        id: String,
    },
    /// Run a command through `/bin/sh -c`, streaming its output; exits with its status.
    Exec {
        /// Capsule id or a unique prefix of it.
        id: String,
        /// Working directory.
        #[arg(long, short = 'w')]
        cwd: Option<String>,
        /// Environment variable, `KEY=VALUE` (repeatable).
        #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
        envs: Vec<String>,
        /// User name or uid.
        #[arg(long, short)]
        user: Option<String>,
        /// The command line.
        #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Open an interactive shell (a PTY) in a capsule; exits with the shell's status.
    Shell {
        /// Capsule id or a unique prefix of it.
        id: String,
        /// Re-attach to a session that was dropped, by its tag (`pty-…`).
        #[arg(long, value_name = "TAG")]
        attach: Option<String>,
        /// Program to run instead of the capsule's shell.
        #[arg(long)]
        cmd: Option<String>,
    },
    /// Copy files or directories between a capsule and here: `ID:PATH` is the capsule side.
    Cp {
        /// Source: a local path or `ID:PATH`.
        src: String,
        /// Destination: a local path or `ID:PATH`.
        dst: String,
    },
    /// Pause capsules.
    Pause {
        /// Capsule ids or unique prefixes.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Resume paused capsules.
    Resume {
        /// Capsule ids or unique prefixes.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Destroy capsules.
    #[command(visible_alias = "rm")]
    Destroy {
        /// Capsule ids or unique prefixes.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Reset a capsule's inactivity timer.
    Ping {
        /// Capsule id or a unique prefix of it.
        id: String,
    },
}

/// Parses `KEY=VALUE` pairs.
fn pairs(items: &[String], what: &str) -> anyhow::Result<BTreeMap<String, String>> {
    items
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => bail!("invalid_request: {what} {kv:?} is not KEY=VALUE"),
        })
        .collect()
}

/// How long lifecycle commands wait for the capsule to settle.
const WAIT: Duration = Duration::from_secs(120);

/// Runs a capsule command; returns the process exit code.
pub async fn run(remote: &Remote, cmd: CapsuleCommand) -> anyhow::Result<i32> {
    let client = remote.client()?;
    match cmd {
        CapsuleCommand::Create {
            template,
            vcpus,
            memory_mb,
            timeout_sec,
            labels,
            runtime,
            shell,
            json,
        } => {
            let labels = pairs(&labels, "label")?;
            let req = CreateCapsuleRequest {
                template,
                vcpus: vcpus.map(i64::from),
                memory_mb: memory_mb.map(i64::from),
                timeout_sec: timeout_sec.map(i64::from),
                metadata: (!labels.is_empty()).then_some(labels),
                runtime,
            };
            let made = client.create_capsule(&req).await?;
            let capsule = client.wait_running(&made.id).await?;
            if json {
                output::json(&capsule)?;
            } else if !shell {
                println!("{}", capsule.id);
            }
            if shell {
                return crate::shell::run(&client, &capsule.id, None, None).await;
            }
        }
        CapsuleCommand::Ls {
            format: crate::output::ListFormat { json, quiet },
        } => {
            let capsules = client.list_capsules().await?;
            if json {
                output::json(&capsules)?;
            } else if quiet {
                for c in &capsules {
                    println!("{}", c.id);
                }
            } else {
                let now = chrono::Utc::now();
                let mut t = Table::new(vec!["ID", "STATUS", "TEMPLATE", "VCPUS", "MEMORY", "AGE"]);
                for c in &capsules {
                    t.row(vec![
                        c.id.as_str().into(),
                        Cell::coloured(c.status.as_str(), output::status_colour(c.status)),
                        c.template.as_str().into(),
                        c.vcpus.to_string().into(),
                        output::memory_mb(c.memory_mb).into(),
                        output::age(c.created_at, now).into(),
                    ]);
                }
                t.print();
            }
        }
        CapsuleCommand::Inspect { id } => {
            let id = resolve(&client, &id).await?;
            output::json(&client.get_capsule(&id).await?)?;
        }
        CapsuleCommand::Exec {
            id,
            cwd,
            envs,
            user,
            command,
        } => {
            let envs = pairs(&envs, "environment variable")?;
            let id = resolve_running(&client, &id).await?;
            let mut req: ExecRequest = wrenn_client::shell(&command.join(" "));
            req.process.cwd = cwd;
            req.process.envs = envs;
            req.process.user = user;
            return exec(&client, &id, &req).await;
        }
        CapsuleCommand::Shell { id, attach, cmd } => {
            let id = resolve_running(&client, &id).await?;
            return crate::shell::run(&client, &id, attach.as_deref(), cmd).await;
        }
        CapsuleCommand::Cp { src, dst } => crate::cp::run(&client, &src, &dst).await?,
        CapsuleCommand::Pause { ids } => {
            for id in ids {
                let id = resolve(&client, &id).await?;
                client.pause_capsule(&id).await?;
                client.wait_status(&id, CapsuleStatus::Paused, WAIT).await?;
                println!("{id}");
            }
        }
        CapsuleCommand::Resume { ids } => {
            for id in ids {
                let id = resolve(&client, &id).await?;
                client.resume_capsule(&id).await?;
                client
                    .wait_status(&id, CapsuleStatus::Running, WAIT)
                    .await?;
                println!("{id}");
            }
        }
        CapsuleCommand::Destroy { ids } => {
            for id in ids {
                let id = resolve(&client, &id).await?;
                client.destroy_capsule(&id).await?;
                client
                    .wait_status(&id, CapsuleStatus::Stopped, WAIT)
                    .await
                    .map(|_| ())
                    .or_else(|e| match e {
                        // Already stopped before we looked (or forgotten): that is done too.
                        wrenn_client::ClientError::Failed { ref status, .. }
                            if status == "stopped" =>
                        {
                            Ok(())
                        }
                        e if e.is_not_found() => Ok(()),
                        e => Err(e),
                    })?;
                println!("{id}");
            }
        }
        CapsuleCommand::Ping { id } => {
            let id = resolve(&client, &id).await?;
            client.ping_capsule(&id).await?;
            println!("{id}");
        }
    }
    Ok(0)
}

/// Streams a command's output as it comes; the result is its exit status.
async fn exec(client: &Client, id: &str, req: &ExecRequest) -> anyhow::Result<i32> {
    let mut stream = client.exec_stream(id, req).await?;
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    while let Some(event) = stream.next().await {
        match event? {
            StreamEvent::Start { .. } => {}
            StreamEvent::Stdout { data } => {
                stdout.write_all(data.as_bytes()).await?;
                stdout.flush().await?;
            }
            StreamEvent::Stderr { data } => {
                stderr.write_all(data.as_bytes()).await?;
                stderr.flush().await?;
            }
            StreamEvent::Exit { exit_code } => return Ok(exit_code),
            StreamEvent::Error { data } => bail!("agent_error: {data}"),
        }
    }
    Err(anyhow::anyhow!(
        "agent_error: the command's stream ended without an exit status"
    ))
    .context("exec")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_need_an_equals_sign_and_a_key() {
        let p = pairs(&["A=1".into(), "B=x=y".into(), "C=".into()], "label").unwrap();
        assert_eq!(p["B"], "x=y");
        assert_eq!(p["C"], "");
        assert!(pairs(&["=1".into()], "label").is_err());
        assert!(pairs(&["A".into()], "label").is_err());
    }
}
