//! The `wrenn` binary: `serve`, `key create`, `bench`, and the hidden launcher entry point the
//! container runtime re-executes for every capsule it starts.

mod bench;
mod remote;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use wrenn_runtime::container::{ContainerConfig, ContainerRuntime};

/// Default data directory.
const DEFAULT_DIR: &str = "/var/lib/wrenn";

#[derive(Debug, Parser)]
#[command(
    name = "wrenn",
    version,
    about = "Secure, disposable computers for AI agents"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct DirArgs {
    /// Data directory (store, templates, capsules).
    #[arg(long, env = "WRENN_DIR", default_value = DEFAULT_DIR)]
    dir: PathBuf,
}

#[derive(Debug, clap::Args)]
struct RuntimeArgs {
    #[command(flatten)]
    dir: DirArgs,
    /// Where built base templates are cached (kept across data directories).
    #[arg(long, env = "WRENN_CACHE")]
    cache_dir: Option<PathBuf>,
    /// The static `wrenn-agent` binary put into every capsule.
    #[arg(long, env = "WRENN_AGENT")]
    agent: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the Wrenn API.
    Serve {
        /// Address to listen on; use 0.0.0.0:8080 to expose it (put TLS in front).
        #[arg(long, env = "WRENN_LISTEN", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[command(flatten)]
        runtime: RuntimeArgs,
        /// Do not build the `minimal` template in the background at start-up.
        #[arg(long)]
        no_prebuild: bool,
        /// Memory limits of live capsules may add up to host memory × this; beyond, creates
        /// answer 503 `host_unavailable`.
        #[arg(long, env = "WRENN_MEMORY_OVERCOMMIT", default_value_t = 4.0)]
        memory_overcommit: f64,
        /// Live capsules at most.
        #[arg(long, env = "WRENN_MAX_CAPSULES", default_value_t = 2000)]
        max_capsules: usize,
        /// Size of every capsule's own disk for what it writes, MiB (writes past it fail with
        /// ENOSPC inside the capsule); 0 = no limit.
        #[arg(long, env = "WRENN_DISK_MB", default_value_t = 10240)]
        disk_mb: u32,
        /// Keep COUNT ready capsules of TEMPLATE (`TEMPLATE=COUNT`, repeatable or
        /// comma-separated; 0 turns a pool off). Default `code-runner-beta=1`; a pool fills
        /// once its template is built.
        #[arg(long, env = "WRENN_WARM", value_name = "TEMPLATE=COUNT")]
        warm: Vec<String>,
    },
    /// Manage API keys.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Measure the runtime on this host; prints one JSON object per line.
    Bench {
        #[command(flatten)]
        runtime: RuntimeArgs,
        /// Iterations per measurement.
        #[arg(long, default_value_t = 50)]
        n: usize,
    },
    /// Work with capsules on a running server (`WRENN_BASE_URL`, `WRENN_API_KEY`).
    Capsule {
        #[command(flatten)]
        remote: remote::Remote,
        #[command(subcommand)]
        command: remote::CapsuleCommand,
    },
    /// Work with templates: build one here, or list, snapshot and delete on a running server.
    Template {
        #[command(flatten)]
        remote: remote::Remote,
        #[command(subcommand)]
        command: TemplateCommand,
    },
    /// Internal: the single-threaded launcher the container runtime runs per capsule.
    #[command(name = "__launch", hide = true)]
    Launch {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

#[derive(Debug, Subcommand)]
enum TemplateCommand {
    /// Build a template from its recipe on this host ahead of first use (as root; the server
    /// would build it on first use otherwise). Each step is logged; slow trees are cached.
    Build {
        /// Template (recipe) name, e.g. `code-runner-beta`.
        name: String,
        /// Rebuild from scratch (drops the built and the cached tree; stop capsules of it first).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        runtime: RuntimeArgs,
    },
    #[command(flatten)]
    Remote(remote::TemplateCommand),
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Create an API key; prints it (and nothing else) on one line.
    Create {
        /// Team the key belongs to (created when missing).
        #[arg(long, default_value = "default")]
        team: String,
        /// A label for the key.
        #[arg(long, default_value = "cli")]
        name: String,
        #[command(flatten)]
        dir: DirArgs,
    },
}

fn main() -> ExitCode {
    // The launcher must stay single-threaded: dispatch it before any runtime exists.
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "__launch") {
        return wrenn_runtime::container::launcher::launcher_main(args[2..].to_vec());
    }
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WRENN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a command; the result is the process exit code.
async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Capsule { remote, command } => remote::capsule(&remote, command).await,
        Command::Template {
            remote,
            command: TemplateCommand::Remote(command),
        } => remote::template(&remote, command).await.map(|()| 0),
        Command::Template {
            remote: _,
            command:
                TemplateCommand::Build {
                    name,
                    force,
                    runtime,
                },
        } => {
            let started = std::time::Instant::now();
            let info = container_runtime(&runtime)?
                .build_template(&name, force)
                .await
                .map_err(|e| anyhow::anyhow!(wrenn_types::error::chain(&e)))?;
            eprintln!(
                "template {} ready: {} MB, {:.1} s",
                info.name,
                info.size_bytes / 1_000_000,
                started.elapsed().as_secs_f64()
            );
            Ok(0)
        }
        Command::Serve {
            listen,
            runtime,
            no_prebuild,
            memory_overcommit,
            max_capsules,
            disk_mb,
            warm,
        } => {
            let warm = wrenn_server::WarmTargets::parse(&warm).map_err(anyhow::Error::msg)?;
            let data_dir = runtime.dir.dir.clone();
            let rt = container_runtime(&runtime)?;
            let config = wrenn_server::ServerConfig {
                listen,
                data_dir,
                prebuild_templates: if no_prebuild {
                    vec![]
                } else {
                    vec!["minimal".into()]
                },
                memory_overcommit,
                max_capsules,
                disk_mb,
                warm,
            };
            wrenn_server::serve(config, rt).await.map(|()| 0)
        }
        Command::Key {
            command: KeyCommand::Create { team, name, dir },
        } => {
            std::fs::create_dir_all(&dir.dir)
                .with_context(|| format!("creating {}", dir.dir.display()))?;
            let store = wrenn_server::store::Store::open(&dir.dir.join("wrenn.db"))?;
            let key = store.create_key(&team, &name).await?;
            println!("{}", key.secret);
            Ok(0)
        }
        Command::Bench { runtime, n } => bench::run(container_runtime(&runtime)?, n)
            .await
            .map(|()| 0),
        Command::Launch { .. } => unreachable!("dispatched before parsing"),
    }
}

fn container_runtime(args: &RuntimeArgs) -> anyhow::Result<Arc<ContainerRuntime>> {
    let data_dir = args.dir.dir.clone();
    let cache_dir = args
        .cache_dir
        .clone()
        .unwrap_or_else(|| data_dir.join("cache"));
    let agent_binary = match &args.agent {
        Some(p) => p.clone(),
        None => find_agent()?,
    };
    // The launcher is this very binary, run through /proc/self/exe: it is the same inode even
    // when the file on disk has been replaced by an upgrade since the server started.
    let config = ContainerConfig {
        data_dir,
        cache_dir,
        agent_binary,
        launcher: vec!["/proc/self/exe".into(), "__launch".into()],
        extra_recipes: None,
    };
    Ok(Arc::new(ContainerRuntime::new(config)?))
}

/// The agent next to this binary, or in the workspace's static build output.
fn find_agent() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().unwrap_or(Path::new("/"));
    let mut candidates = vec![dir.join("wrenn-agent")];
    // target/{debug,release}/wrenn → target/x86_64-unknown-linux-gnu/release/wrenn-agent
    if let Some(target) = dir.parent() {
        candidates.push(target.join("x86_64-unknown-linux-gnu/release/wrenn-agent"));
    }
    candidates.into_iter().find(|p| p.is_file()).context(
        "no wrenn-agent found next to wrenn; build it with scripts/build-agent.sh or pass --agent",
    )
}
