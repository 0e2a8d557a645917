//! `wrenn snapshot …`, `wrenn template …`, `wrenn events` and the remote half of
//! `wrenn key …`.

use wrenn_client::{Event, EventKind, Outcome, TemplateType};

use crate::output::{self, Table};
use crate::remote::{resolve, Remote};

/// Snapshot commands.
#[derive(Debug, clap::Subcommand)]
pub enum SnapshotCommand {
    /// Snapshot a capsule's filesystem into a template of the team; prints its name.
    Create {
        /// Capsule id or a unique prefix of it.
        id: String,
        /// Template name (default `template-` + 8 hex).
        #[arg(long)]
        name: Option<String>,
        /// Replace a snapshot of the same name.
        #[arg(long)]
        overwrite: bool,
        /// Print the template as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the team's snapshots.
    #[command(visible_alias = "list")]
    Ls {
        #[command(flatten)]
        format: crate::output::ListFormat,
    },
    /// Delete snapshots.
    #[command(visible_alias = "delete")]
    Rm {
        /// Snapshot names.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// Template commands.
#[derive(Debug, clap::Subcommand)]
pub enum TemplateCommand {
    /// List base templates and the team's snapshots.
    #[command(visible_alias = "list")]
    Ls {
        #[command(flatten)]
        format: crate::output::ListFormat,
    },
    /// Delete templates (the team's snapshots; base templates are protected).
    #[command(visible_alias = "delete")]
    Rm {
        /// Template names.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// Runs a snapshot command.
pub async fn snapshot(remote: &Remote, cmd: SnapshotCommand) -> anyhow::Result<()> {
    let client = remote.client()?;
    match cmd {
        SnapshotCommand::Create {
            id,
            name,
            overwrite,
            json,
        } => {
            let id = resolve(&client, &id).await?;
            let t = client
                .create_snapshot(&id, name.as_deref(), overwrite)
                .await?;
            if json {
                output::json(&t)?;
            } else {
                println!("{}", t.name);
            }
        }
        SnapshotCommand::Ls {
            format: crate::output::ListFormat { json, quiet },
        } => templates(&client, Some(TemplateType::Snapshot), json, quiet).await?,
        SnapshotCommand::Rm { names } => delete(&client, &names).await?,
    }
    Ok(())
}

/// Runs a template command.
pub async fn template(remote: &Remote, cmd: TemplateCommand) -> anyhow::Result<()> {
    let client = remote.client()?;
    match cmd {
        TemplateCommand::Ls {
            format: crate::output::ListFormat { json, quiet },
        } => templates(&client, None, json, quiet).await,
        TemplateCommand::Rm { names } => delete(&client, &names).await,
    }
}

async fn templates(
    client: &wrenn_client::Client,
    kind: Option<TemplateType>,
    json: bool,
    quiet: bool,
) -> anyhow::Result<()> {
    let list = client.list_templates(kind).await?;
    if json {
        return output::json(&list);
    }
    if quiet {
        for t in &list {
            println!("{}", t.name);
        }
        return Ok(());
    }
    let now = chrono::Utc::now();
    let mut t = Table::new(vec!["NAME", "TYPE", "VCPUS", "MEMORY", "SIZE", "AGE"]);
    for tpl in &list {
        let kind = match tpl.template_type {
            TemplateType::Base => "base",
            TemplateType::Snapshot => "snapshot",
        };
        t.row(vec![
            tpl.name.as_str().into(),
            kind.into(),
            tpl.vcpus
                .map(|v| v.to_string())
                .unwrap_or("-".into())
                .into(),
            tpl.memory_mb
                .map(output::memory_mb)
                .unwrap_or("-".into())
                .into(),
            output::size(tpl.size_bytes).into(),
            output::age(tpl.created_at, now).into(),
        ]);
    }
    t.print();
    Ok(())
}

async fn delete(client: &wrenn_client::Client, names: &[String]) -> anyhow::Result<()> {
    for name in names {
        client.delete_template(name).await?;
        println!("{name}");
    }
    Ok(())
}

/// Follows the team's events until interrupted.
pub async fn events(remote: &Remote, json: bool) -> anyhow::Result<()> {
    let client = remote.client()?;
    let mut stream = client.events().await?;
    let colour = output::stdout_colour();
    while let Some(ev) = stream.next().await {
        let ev = ev?;
        if json {
            println!("{}", serde_json::to_string(&ev)?);
        } else if ev.event == EventKind::Connected {
            eprintln!(
                "connected to {}; following events (Ctrl-C to stop)",
                client.base_url()
            );
        } else {
            println!("{}", event_line(&ev, colour));
        }
    }
    anyhow::bail!("internal_error: the server ended the event stream")
}

/// `TIME  EVENT  RESOURCE  OUTCOME  details`.
fn event_line(ev: &Event, colour: bool) -> String {
    let (outcome, code) = match ev.outcome {
        Some(Outcome::Success) => ("success", "32"),
        Some(Outcome::Error) => ("error", "31"),
        None => ("-", ""),
    };
    let outcome = format!("{outcome:<7}");
    let outcome = if colour && !code.is_empty() {
        format!("\x1b[{code}m{outcome}\x1b[0m")
    } else {
        outcome
    };
    let mut details = Vec::new();
    if let Some(m) = &ev.metadata {
        if let (Some(f), Some(t)) = (m.get("from"), m.get("to")) {
            details.push(format!("{f}->{t}"));
        }
        for (k, v) in m
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "from" | "to"))
        {
            details.push(format!("{k}={v}"));
        }
    }
    if let Some(e) = &ev.error {
        details.push(format!("error={e}"));
    }
    let resource = ev.resource.as_ref().map(|r| r.id.as_str()).unwrap_or("-");
    let line = format!(
        "{}  {:<24}  {resource:<28}  {outcome}  {}",
        ev.timestamp.format("%H:%M:%S"),
        ev.event.as_str(),
        details.join(" ")
    );
    line.trim_end().to_owned()
}

/// Remote key commands.
pub async fn list_keys(remote: &Remote, json: bool, quiet: bool) -> anyhow::Result<()> {
    let keys = remote.client()?.list_keys().await?;
    if json {
        return output::json(&keys);
    }
    if quiet {
        for k in &keys {
            println!("{}", k.id);
        }
        return Ok(());
    }
    let now = chrono::Utc::now();
    let mut t = Table::new(vec!["ID", "NAME", "PREFIX", "CREATED", "LAST USED"]);
    for k in &keys {
        t.row(vec![
            k.id.as_str().into(),
            k.name.as_str().into(),
            k.prefix.as_str().into(),
            format!("{} ago", output::age(k.created_at, now)).into(),
            k.last_used_at
                .map(|t| format!("{} ago", output::age(t, now)))
                .unwrap_or("never".into())
                .into(),
        ]);
    }
    t.print();
    Ok(())
}
