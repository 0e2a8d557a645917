//! Template services: started through the capsule's agent as tagged background processes
//! (`service-<name>`) when a capsule starts, in recipe order; each must pass its readiness
//! probe before its deadline, or create fails naming it.
//!
//! A command probe runs through the agent (exit 0 = ready). A port probe is the backend's:
//! it knows how to reach the capsule's loopback (the container backend connects from inside
//! the capsule's network namespace, see `container::net::port_open`).

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use wrenn_agent_client::{AgentClient, ExecOutcome};
use wrenn_types::agent::{ExecRequest, ProcessSpec};

use crate::templates::{Probe, RunConfig, Service};
use crate::RuntimeError;

/// Longest pause between two probes of one service.
const MAX_PROBE_INTERVAL: Duration = Duration::from_millis(200);
/// Deadline of one command probe.
const PROBE_COMMAND_TIMEOUT_SEC: u64 = 5;

/// Starts every service of `run` in capsule `id` and waits until each passes its probe.
/// `port_open(port)` says whether a TCP connect to the capsule's loopback port succeeds.
pub(crate) async fn start_all<F, Fut>(
    id: &str,
    agent: &AgentClient,
    run: &RunConfig,
    port_open: F,
) -> Result<(), RuntimeError>
where
    F: Fn(u16) -> Fut,
    Fut: Future<Output = bool>,
{
    for svc in &run.services {
        start_one(agent, run, svc, &port_open)
            .await
            .map_err(|source| RuntimeError::ServiceNotReady {
                id: id.to_owned(),
                service: svc.name.clone(),
                source,
            })?;
    }
    Ok(())
}

async fn start_one<F, Fut>(
    agent: &AgentClient,
    run: &RunConfig,
    svc: &Service,
    port_open: &F,
) -> anyhow::Result<()>
where
    F: Fn(u16) -> Fut,
    Fut: Future<Output = bool>,
{
    let t0 = Instant::now();
    let deadline = Duration::from_secs(svc.timeout_sec);
    let mut envs: BTreeMap<String, String> = run.env.clone();
    envs.extend(svc.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let req = ExecRequest {
        process: ProcessSpec {
            cmd: svc.cmd.clone(),
            args: svc.args.clone(),
            envs: envs.clone(),
            cwd: svc.cwd.clone(),
            user: svc.user.clone().or_else(|| run.user.clone()),
        },
        background: true,
        tag: Some(svc.tag()),
        ..Default::default()
    };
    match agent.exec(&req).await {
        Ok(ExecOutcome::Started(_)) => {}
        Ok(other) => anyhow::bail!("start answered {other:?}"),
        Err(e) => return Err(anyhow::Error::new(e).context("start")),
    }
    let Some(probe) = &svc.probe else {
        return Ok(());
    };
    let mut interval = Duration::from_millis(10);
    let mut last;
    loop {
        let ready = match probe {
            Probe::Port(port) => {
                last = format!("nothing listens on port {port}");
                port_open(*port).await
            }
            Probe::Command(argv) => {
                let (ok, why) = command_probe(agent, argv, &envs, &req.process.user).await;
                last = why;
                ok
            }
        };
        if ready {
            tracing::debug!(service = %svc.name, ms = t0.elapsed().as_millis() as u64, "service ready");
            return Ok(());
        }
        if !running(agent, &svc.tag()).await {
            anyhow::bail!("its process exited before it was ready ({last})");
        }
        if t0.elapsed() >= deadline {
            anyhow::bail!("probe still failing after {} s ({last})", svc.timeout_sec);
        }
        tokio::time::sleep(interval.min(deadline.saturating_sub(t0.elapsed()))).await;
        interval = (interval * 2).min(MAX_PROBE_INTERVAL);
    }
}

/// Runs the probe command; `(exit 0, what happened)`.
async fn command_probe(
    agent: &AgentClient,
    argv: &[String],
    envs: &BTreeMap<String, String>,
    user: &Option<String>,
) -> (bool, String) {
    let req = ExecRequest {
        process: ProcessSpec {
            cmd: argv[0].clone(),
            args: argv[1..].to_vec(),
            envs: envs.clone(),
            cwd: None,
            user: user.clone(),
        },
        timeout_sec: Some(PROBE_COMMAND_TIMEOUT_SEC),
        ..Default::default()
    };
    match agent.exec(&req).await {
        Ok(ExecOutcome::Finished(r)) if r.exit_code == 0 => (true, String::new()),
        Ok(ExecOutcome::Finished(r)) => (
            false,
            format!(
                "probe command exited {}: {}",
                r.exit_code,
                r.stderr.trim().chars().take(200).collect::<String>()
            ),
        ),
        Ok(other) => (false, format!("probe command answered {other:?}")),
        Err(e) => (false, format!("probe command failed: {e}")),
    }
}

/// Whether the agent still runs a process tagged `tag` (an agent error counts as running:
/// the deadline decides then).
async fn running(agent: &AgentClient, tag: &str) -> bool {
    match agent.processes().await {
        Ok(list) => list.processes.iter().any(|p| p.tag.as_deref() == Some(tag)),
        Err(_) => true,
    }
}
