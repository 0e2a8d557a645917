//! `wrenn key create|ls|revoke`: on this host's store (`--dir`), or the calling key's team
//! on a server.
//!
//! Local when `--dir`/`WRENN_DIR` is given or no API key is set (the server's own host, before
//! any key exists); remote otherwise. A server picks up a key revoked in its store within a
//! second (its key cache re-checks the store).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use wrenn_server::store::{KeyFormat, Store};

use crate::output::{self, Table};
use crate::remote::Remote;

/// The local data directory, when given.
#[derive(Debug, clap::Args)]
pub struct Local {
    /// Data directory of a server on this host (its store); default /var/lib/wrenn when no
    /// API key is set.
    #[arg(long, env = "WRENN_DIR", global = true)]
    dir: Option<PathBuf>,
}

/// Key commands.
#[derive(Debug, clap::Subcommand)]
pub enum KeyCommand {
    /// Create an API key; prints it (and nothing else) on one line. It is not shown again.
    Create {
        /// Team the key belongs to, created when missing (local only; remotely the key joins
        /// the calling key's team).
        #[arg(long)]
        team: Option<String>,
        /// A label for the key.
        #[arg(long, default_value = "cli")]
        name: String,
        /// Mint it in E2B's format (`e2b_` + 40 hex) for E2B's SDKs; it works for both APIs.
        #[arg(long)]
        e2b: bool,
    },
    /// List API keys (never their secrets).
    #[command(visible_alias = "list")]
    Ls {
        #[command(flatten)]
        format: crate::output::ListFormat,
    },
    /// Revoke API keys by id (`key-…`); they stop working within a second.
    #[command(visible_alias = "rm")]
    Revoke {
        /// Key ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

/// Runs a key command.
pub async fn run(local: &Local, remote: &Remote, cmd: KeyCommand) -> anyhow::Result<()> {
    match (&local.dir, remote.has_key()) {
        (Some(dir), _) => run_local(dir, cmd).await,
        (None, false) => run_local(Path::new(crate::DEFAULT_DIR), cmd).await,
        (None, true) => run_remote(remote, cmd).await,
    }
}

fn open_store(dir: &Path) -> anyhow::Result<Store> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(Store::open(&dir.join("wrenn.db"))?)
}

async fn run_local(dir: &Path, cmd: KeyCommand) -> anyhow::Result<()> {
    let store = open_store(dir)?;
    match cmd {
        KeyCommand::Create { team, name, e2b } => {
            let team = team.unwrap_or_else(|| "default".into());
            let format = if e2b {
                KeyFormat::E2b
            } else {
                KeyFormat::Wrenn
            };
            let key = store.create_key_as(&team, &name, format).await?;
            println!("{}", key.secret);
        }
        KeyCommand::Ls {
            format: crate::output::ListFormat { json, quiet },
        } => {
            let keys = store.list_keys(None).await?;
            if json {
                let list: Vec<_> = keys.iter().map(|k| &k.key).collect();
                return output::json(&list);
            }
            if quiet {
                for k in &keys {
                    println!("{}", k.key.id);
                }
                return Ok(());
            }
            let now = chrono::Utc::now();
            let mut t = Table::new(vec!["ID", "TEAM", "NAME", "PREFIX", "CREATED", "LAST USED"]);
            for k in &keys {
                t.row(vec![
                    k.key.id.as_str().into(),
                    k.team_name.as_str().into(),
                    k.key.name.as_str().into(),
                    k.key.prefix.as_str().into(),
                    format!("{} ago", output::age(k.key.created_at, now)).into(),
                    k.key
                        .last_used_at
                        .map(|t| format!("{} ago", output::age(t, now)))
                        .unwrap_or("never".into())
                        .into(),
                ]);
            }
            t.print();
        }
        KeyCommand::Revoke { ids } => {
            for id in ids {
                if !store.revoke_key(None, &id).await? {
                    bail!("not_found: api key {id} not found");
                }
                println!("{id}");
            }
        }
    }
    Ok(())
}

async fn run_remote(remote: &Remote, cmd: KeyCommand) -> anyhow::Result<()> {
    match cmd {
        KeyCommand::Create { team, name, e2b } => {
            if team.is_some() {
                bail!("invalid_request: --team only applies to a local store (--dir); a key made through the server joins the calling key's team");
            }
            let client = remote.client()?;
            let key = if e2b {
                client.create_e2b_key(Some(&name)).await?
            } else {
                client.create_key(Some(&name)).await?
            };
            println!("{}", key.key);
        }
        KeyCommand::Ls {
            format: crate::output::ListFormat { json, quiet },
        } => crate::admin::list_keys(remote, json, quiet).await?,
        KeyCommand::Revoke { ids } => {
            let client = remote.client()?;
            for id in ids {
                client.revoke_key(&id).await?;
                println!("{id}");
            }
        }
    }
    Ok(())
}
