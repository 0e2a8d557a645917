//! The Wrenn API server: authenticates callers, owns the truth about capsules (store), drives
//! their lifecycle through a [`wrenn_runtime::Runtime`], and proxies work inside a capsule to
//! its agent. It never runs a user's command itself.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod auth;
pub mod error;
pub mod events;
pub mod extract;
pub mod ids;
pub mod lifecycle;
pub mod metrics;
pub mod proxy;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use wrenn_runtime::Runtime;

use crate::auth::KeyResolver;
use crate::events::EventBus;
use crate::lifecycle::{Capacity, Capsules};
use crate::store::Store;

/// Shared state of every request handler.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The capsule service.
    pub capsules: Arc<Capsules>,
    /// API key → team.
    pub keys: KeyResolver,
    /// Lifecycle events.
    pub events: EventBus,
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
}

/// Builds the state over an opened store and a runtime.
pub fn state(store: Store, runtime: Arc<dyn Runtime>, capacity: Capacity) -> AppState {
    let events = EventBus::new();
    AppState {
        capsules: Capsules::new(store.clone(), runtime, events.clone(), capacity),
        keys: KeyResolver::new(store),
        events,
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
        ..Capacity::of_host(config.memory_overcommit, config.max_capsules)
    };
    let state = state(store, runtime.clone(), capacity);
    state
        .capsules
        .recover()
        .await
        .context("recovering capsules")?;

    for name in config.prebuild_templates {
        let rt = runtime.clone();
        tokio::spawn(async move {
            tracing::info!(template = %name, "making sure the template is built");
            match rt.ensure_template(&name).await {
                Ok(t) => {
                    tracing::info!(template = %t.name, size_bytes = t.size_bytes, "template ready")
                }
                Err(e) => {
                    tracing::error!(template = %name, error = format!("{:#}", anyhow::Error::from(e)), "template build failed")
                }
            }
        });
    }

    let capsules = state.capsules.clone();
    let housekeeping = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tick.tick().await;
            capsules.reap_idle().await;
            capsules.reap_dead().await;
            capsules.sample().await;
            capsules.flush_activity().await;
        }
    });

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    tracing::info!(listen = %config.listen, runtime = runtime.kind(), "wrenn serving");
    let app = api::router(state.clone());
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving")?;
    housekeeping.abort();
    state.capsules.flush_activity().await;
    tracing::info!("stopped; capsules keep running");
    Ok(())
}

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
