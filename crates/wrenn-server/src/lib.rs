//! The Wrenn API server: authenticates callers, owns the truth about capsules (store), drives
//! their lifecycle through a [`wrenn_runtime::Runtime`], and proxies work inside a capsule to
//! its agent. It never runs a user's command itself.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod auth;
pub mod dashboard;
pub mod error;
pub mod events;
pub mod extract;
pub mod ids;
pub mod metrics;
pub mod proxy;
pub mod service;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use wrenn_runtime::Runtime;

use crate::auth::KeyResolver;
use crate::events::EventBus;
pub use crate::service::WarmTargets;
use crate::service::{Capacity, Capsules, E2bSandboxes};
use crate::store::Store;

/// How often failed teardowns are looked at (each has its own backoff).
const TEARDOWN_RETRY_TICK: Duration = Duration::from_secs(1);
/// How long shutdown waits for the warm-pool filler to finish the capsule it is making; a start
/// cut short is removed by recovery at the next start, so a slow template never holds a stop.
const POOL_STOP_WAIT: Duration = Duration::from_secs(10);

/// Shared state of every request handler.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The capsule service.
    pub capsules: Arc<Capsules>,
    /// API key → team.
    pub keys: KeyResolver,
    /// Lifecycle events.
    pub events: EventBus,
    /// What the E2B front end knows about the sandboxes it created.
    pub e2b: Arc<E2bSandboxes>,
}

/// How to run the server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Data directory (store, templates, capsules).
    pub data_dir: PathBuf,
    /// Templates to build in the background at start-up when missing.
    pub prebuild_templates: Vec<String>,
    /// Memory limits of live capsules may add up to host memory × this.
    pub memory_overcommit: f64,
    /// Live capsules at most.
    pub max_capsules: usize,
    /// Size of every capsule's disk, MiB; 0 = no limit.
    pub disk_mb: u32,
    /// Promised disks may add up to the data dir's free space (plus what capsules use) × this.
    pub disk_overcommit: f64,
    /// Per-team limits.
    pub team_limits: service::TeamLimits,
    /// Warm capsules to keep per template.
    pub warm: WarmTargets,
    /// Capsule starts (and teardowns) at once; the rest queue in arrival order. 0: a few per
    /// host core ([`service::lanes::default_width`]).
    pub max_starting: usize,
}

/// Builds the state over an opened store and a runtime, without warm pools.
pub fn state(store: Store, runtime: Arc<dyn Runtime>, capacity: Capacity) -> AppState {
    state_with_pools(store, runtime, capacity, WarmTargets::default())
}

/// Builds the state over an opened store and a runtime, with warm pools of `warm`.
pub fn state_with_pools(
    store: Store,
    runtime: Arc<dyn Runtime>,
    capacity: Capacity,
    warm: WarmTargets,
) -> AppState {
    let events = EventBus::new();
    AppState {
        capsules: Capsules::with_pools(store.clone(), runtime, events.clone(), capacity, warm),
        keys: KeyResolver::new(store.clone()),
        events,
        e2b: E2bSandboxes::new(store),
    }
}

/// Runs the server until SIGINT/SIGTERM. Capsules keep running across restarts.
pub async fn serve(config: ServerConfig, runtime: Arc<dyn Runtime>) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    restrict(&config.data_dir, 0o700)?;
    let db = config.data_dir.join("wrenn.db");
    let store = Store::open(&db).context("opening the store")?;
    restrict(&db, 0o600)?;
    if store.key_count().await? == 0 {
        tracing::info!(
            "no API keys yet: create one with `wrenn key create --dir {}`",
            config.data_dir.display()
        );
    }
    let capacity = Capacity {
        disk_mb: config.disk_mb,
        disk_overcommit: config.disk_overcommit,
        disk_dir: Some(config.data_dir.clone()),
        team: config.team_limits,
        ..Capacity::of_host(config.memory_overcommit, config.max_capsules)
    };
    let state = state_with_pools(store, runtime.clone(), capacity, config.warm.clone());
    if config.max_starting > 0 {
        state.capsules.set_max_starting(config.max_starting);
    }
    state
        .capsules
        .recover()
        .await
        .context("recovering capsules")?;
    state.e2b.load().await.context("loading e2b sandboxes")?;

    for name in config.prebuild_templates {
        let rt = runtime.clone();
        tokio::spawn(async move {
            tracing::info!(template = %name, "making sure the template is built");
            match rt.ensure_template(&name).await {
                Ok(t) => {
                    tracing::info!(template = %t.name, size_bytes = t.size_bytes, "template ready")
                }
                Err(e) => {
                    let error = wrenn_types::error::chain(&e);
                    tracing::error!(template = %name, %error, "template build failed")
                }
            }
        });
    }

    let capsules = state.capsules.clone();
    let e2b = state.e2b.clone();
    let housekeeping = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tick.tick().await;
            capsules.reap_idle().await;
            e2b.reap(&capsules, chrono::Utc::now()).await;
            capsules.reap_dead().await;
            capsules.sample().await;
            capsules.flush_activity().await;
        }
    });

    // Failed teardowns are retried apart from the tick: one can take seconds.
    let capsules = state.capsules.clone();
    let teardowns = tokio::spawn(async move {
        let mut tick = tokio::time::interval(TEARDOWN_RETRY_TICK);
        loop {
            tick.tick().await;
            capsules.retry_teardowns().await;
        }
    });

    let pools = tokio::spawn(state.capsules.clone().fill_pools());

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?
        // Small writes (WebSocket frames, SSE events, proxied replies) go out at once rather
        // than wait for the peer's delayed ACK.
        .tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "TCP_NODELAY");
            }
        });
    tracing::info!(listen = %config.listen, runtime = runtime.kind(), "wrenn serving");
    let app = api::router(state.clone());
    // Open event streams (a dashboard, `events.stream()`) never end by themselves: after the
    // signal, in-flight requests get DRAIN to finish, then the server stops regardless.
    let stopping = tokio_util::sync::CancellationToken::new();
    let on_signal = {
        let stopping = stopping.clone();
        async move {
            shutdown_signal().await;
            stopping.cancel();
        }
    };
    let server = axum::serve(listener, app).with_graceful_shutdown(on_signal);
    tokio::select! {
        served = std::future::IntoFuture::into_future(server) => served.context("serving")?,
        () = async {
            stopping.cancelled().await;
            tokio::time::sleep(DRAIN).await;
        } => tracing::info!(drain_secs = DRAIN.as_secs(), "closing connections still open"),
    }
    housekeeping.abort();
    teardowns.abort();
    state.capsules.stop_pools();
    if tokio::time::timeout(POOL_STOP_WAIT, pools).await.is_err() {
        // Still making one: what it leaves is removed by recovery at the next start.
        tracing::warn!("warm pool filler did not stop in time");
    }
    state.capsules.drain_pool().await;
    state.capsules.flush_activity().await;
    tracing::info!("stopped; capsules keep running");
    Ok(())
}

/// How long a stopping server waits for open requests (event streams never end by themselves).
const DRAIN: Duration = Duration::from_secs(5);

/// Limits `path` to root: the data directory holds key hashes and capsules' files.
fn restrict(path: &std::path::Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("restricting {}", path.display()))
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
