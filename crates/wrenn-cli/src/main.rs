//! The `wrenn` binary: `serve` and `bench` on the host, `capsule`, `snapshot`, `template`,
//! `events` and `key` against a server (Docker's habits: tables, `--json`, `-q`, id prefixes),
//! and the hidden launcher entry point the container runtime re-executes for every capsule.
#![forbid(unsafe_code)]

mod admin;
mod bench;
mod capsule;
mod cp;
mod keys;
mod output;
mod remote;
mod shell;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
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
    /// microvm: boot every capsule cold instead of cloning its template's warm image (a saved
    /// running VM, made on first use per template and guest size).
    #[arg(long, env = "WRENN_NO_WARM_TEMPLATES")]
    no_warm_templates: bool,
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
        /// Capsule backend: `container` (namespaces), `microvm` (QEMU guests: KVM when a
        /// probe guest boots with it, else software emulation, TCG), `both` (container by
        /// default, microvm for creates that ask for it with `"runtime": "microvm"`) or `auto`
        /// (microvm by default when a KVM probe guest boots within a few seconds, else
        /// container; the other one serves creates that ask for it when it can start). The log
        /// says which and why.
        #[arg(long = "runtime", env = "WRENN_RUNTIME", value_enum, default_value_t = RuntimeChoice::Container)]
        runtime_kind: RuntimeChoice,
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
        /// Capsule disks are sparse: their sizes may add up to (the data dir's free space +
        /// what capsules use) × this; beyond, creates answer 503 `host_unavailable`.
        #[arg(long, env = "WRENN_DISK_OVERCOMMIT", default_value_t = 100.0)]
        disk_overcommit: f64,
        /// Live capsules per team (402 `concurrent_sandbox_limit` beyond); 0 = no limit.
        #[arg(long, env = "WRENN_TEAM_MAX_CAPSULES", default_value_t = 500)]
        team_max_capsules: u32,
        /// vCPUs of a team's live capsules, added up (402 `vcpu_limit`); 0 = no limit.
        #[arg(long, env = "WRENN_TEAM_MAX_VCPUS", default_value_t = 256)]
        team_max_vcpus: u32,
        /// Memory of a team's live capsules, MiB (402 `memory_limit`); 0 = no limit.
        #[arg(long, env = "WRENN_TEAM_MAX_MEMORY_MB", default_value_t = 262_144)]
        team_max_memory_mb: u64,
        /// Snapshots a team keeps (402 `snapshot_limit`); 0 = no limit.
        #[arg(long, env = "WRENN_TEAM_MAX_SNAPSHOTS", default_value_t = 100)]
        team_max_snapshots: u32,
        /// MiB a team's snapshots take (402 `snapshot_limit`); 0 = no limit.
        #[arg(long, env = "WRENN_TEAM_MAX_SNAPSHOT_MB", default_value_t = 102_400)]
        team_max_snapshot_mb: u64,
        /// Keep COUNT ready capsules of TEMPLATE (`TEMPLATE=COUNT`, repeatable or
        /// comma-separated; 0 turns a pool off). Default `code-runner-beta=1` and
        /// `code-interpreter-v1=1`; a pool fills once its template is built.
        #[arg(long, env = "WRENN_WARM", value_name = "TEMPLATE=COUNT")]
        warm: Vec<String>,
        /// Capsule starts (and teardowns) run at once; more creates are accepted and stay
        /// `starting` in arrival order. 0 = 3 per host core.
        #[arg(long, env = "WRENN_MAX_STARTING", default_value_t = 0)]
        max_starting: usize,
    },
    /// Manage API keys: on this host's data directory (`--dir`, or when no API key is set),
    /// else the calling key's team on the server.
    Key {
        #[command(flatten)]
        local: keys::Local,
        #[command(flatten)]
        remote: remote::Remote,
        #[command(subcommand)]
        command: keys::KeyCommand,
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
        command: capsule::CapsuleCommand,
    },
    /// Snapshot capsules into templates, list and delete snapshots.
    Snapshot {
        #[command(flatten)]
        remote: remote::Remote,
        #[command(subcommand)]
        command: admin::SnapshotCommand,
    },
    /// Build templates here; list and delete them on a server.
    Template {
        #[command(flatten)]
        remote: remote::Remote,
        #[command(subcommand)]
        command: TemplateCommand,
    },
    /// Follow the team's lifecycle events as they happen (until Ctrl-C).
    Events {
        #[command(flatten)]
        remote: remote::Remote,
        /// Keep following (the default: the server keeps no history to print).
        #[arg(short, long)]
        follow: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script: `wrenn completions bash > /etc/bash_completion.d/wrenn`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
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
    Remote(admin::TemplateCommand),
}

fn main() -> ExitCode {
    // The launcher must stay single-threaded: dispatch it before any runtime exists.
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "__launch") {
        return wrenn_runtime::container::launcher::launcher_main(args[2..].to_vec());
    }
    wrenn_runtime::seal_inherited_fds();
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
    let result = rt.block_on(run(cli));
    // A shell's stdin thread may still be blocked in read(2): do not wait for it.
    rt.shutdown_background();
    match result {
        Ok(0) => ExitCode::SUCCESS,
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            let label = if output::stderr_colour() {
                "\x1b[31merror\x1b[0m"
            } else {
                "error"
            };
            eprintln!("{label}: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// Runs a command; the result is the process exit code.
async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Capsule { remote, command } => capsule::run(&remote, command).await,
        Command::Snapshot { remote, command } => {
            admin::snapshot(&remote, command).await.map(|()| 0)
        }
        Command::Template {
            remote,
            command: TemplateCommand::Remote(command),
        } => admin::template(&remote, command).await.map(|()| 0),
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
        Command::Events {
            remote,
            follow: _,
            json,
        } => admin::events(&remote, json).await.map(|()| 0),
        Command::Key {
            local,
            remote,
            command,
        } => keys::run(&local, &remote, command).await.map(|()| 0),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "wrenn", &mut script);
            match std::io::Write::write_all(&mut std::io::stdout(), &script) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
                _ => Ok(0),
            }
        }
        Command::Serve {
            listen,
            runtime,
            no_prebuild,
            runtime_kind,
            memory_overcommit,
            max_capsules,
            disk_mb,
            disk_overcommit,
            team_max_capsules,
            team_max_vcpus,
            team_max_memory_mb,
            team_max_snapshots,
            team_max_snapshot_mb,
            warm,
            max_starting,
        } => {
            let warm = wrenn_server::WarmTargets::parse(&warm).map_err(anyhow::Error::msg)?;
            let data_dir = runtime.dir.dir.clone();
            let rt = select_runtime(&runtime, runtime_kind).await?;
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
                disk_overcommit,
                team_limits: wrenn_server::service::TeamLimits {
                    capsules: team_max_capsules,
                    vcpus: team_max_vcpus,
                    memory_mb: team_max_memory_mb,
                    snapshots: team_max_snapshots,
                    snapshot_mb: team_max_snapshot_mb,
                },
                warm,
                max_starting,
            };
            wrenn_server::serve(config, rt).await.map(|()| 0)
        }
        Command::Bench { runtime, n } => bench::run(container_runtime(&runtime)?, n)
            .await
            .map(|()| 0),
        Command::Launch { .. } => unreachable!("dispatched before parsing"),
    }
}

/// The error and its causes on one line, API errors first with their contract code.
fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string().replace('\n', " ");
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
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

/// `wrenn serve --runtime`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RuntimeChoice {
    /// Namespaces, cgroups, seccomp.
    Container,
    /// QEMU microVMs.
    Microvm,
    /// Both: container by default, microvm when a create asks for it.
    Both,
    /// microvm with KVM when it boots a guest, else container; the other one serves creates
    /// that ask for it when it can start here.
    Auto,
}

/// How long the KVM probe guest may take to boot.
const KVM_PROBE_BOUND: std::time::Duration = std::time::Duration::from_secs(5);

/// The backend(s) `choice` names (see [`RuntimeChoice`]), logging which and why.
async fn select_runtime(
    args: &RuntimeArgs,
    choice: RuntimeChoice,
) -> anyhow::Result<Arc<dyn wrenn_runtime::Runtime>> {
    use wrenn_runtime::microvm::Accel;
    use wrenn_runtime::{Runtime, Runtimes};
    if choice == RuntimeChoice::Container {
        tracing::info!(
            runtime = "container",
            "capsule runtime: container (--runtime container)"
        );
        return Ok(container_runtime(args)?);
    }
    let probe = microvm_runtime(args, Accel::Tcg);
    let (kvm, remembered) = match &probe {
        Ok(rt) => rt.probe_kvm(KVM_PROBE_BOUND).await,
        Err(e) => (Err(format!("{e:#}")), false),
    };
    let kvm_boots = kvm.is_ok();
    let microvm: anyhow::Result<Arc<dyn Runtime>> = match (kvm, probe) {
        (Ok(took), _) => {
            tracing::info!(
                accel = "kvm",
                boot_ms = took.as_millis() as u64,
                remembered,
                "microvm: accel=kvm (a KVM probe guest booted)"
            );
            Ok(Arc::new(microvm_runtime(args, Accel::Kvm)?))
        }
        (Err(why), Ok(rt)) => {
            tracing::warn!(accel = "tcg", reason = %why, remembered,
                "microvm: accel=tcg (software emulation: guest CPU work is about 14x slower)");
            Ok(Arc::new(rt))
        }
        (Err(_), Err(e)) => Err(e),
    };
    let container = || -> anyhow::Result<Arc<dyn Runtime>> { Ok(container_runtime(args)?) };
    let (default, other): (Arc<dyn Runtime>, Option<Arc<dyn Runtime>>) = match choice {
        RuntimeChoice::Microvm => (microvm?, None),
        RuntimeChoice::Both => (container()?, Some(microvm?)),
        RuntimeChoice::Auto if kvm_boots => (microvm?, container().ok()),
        _ => match microvm {
            Ok(vm) => (container()?, Some(vm)),
            Err(e) => {
                tracing::info!(reason = %format!("{e:#}"), "--runtime auto: no microvm backend");
                (container()?, None)
            }
        },
    };
    let Some(other) = other else {
        tracing::info!(
            runtime = default.kind(),
            "capsule runtime: {} (--runtime {})",
            default.kind(),
            format!("{choice:?}").to_lowercase()
        );
        return Ok(default);
    };
    tracing::info!(
        runtime = default.kind(),
        on_request = other.kind(),
        "capsule runtimes: {} by default, {} when a create asks for it (--runtime {})",
        default.kind(),
        other.kind(),
        format!("{choice:?}").to_lowercase()
    );
    Ok(Arc::new(Runtimes::new(default, vec![other])?))
}

fn microvm_runtime(
    args: &RuntimeArgs,
    accel: wrenn_runtime::microvm::Accel,
) -> anyhow::Result<wrenn_runtime::MicroVmRuntime> {
    let data_dir = args.dir.dir.clone();
    let cache_dir = args
        .cache_dir
        .clone()
        .unwrap_or_else(|| data_dir.join("cache"));
    let agent_binary = match &args.agent {
        Some(p) => p.clone(),
        None => find_agent()?,
    };
    Ok(wrenn_runtime::MicroVmRuntime::new(
        wrenn_runtime::MicroVmConfig {
            data_dir,
            cache_dir,
            agent_binary,
            extra_recipes: None,
            accel,
            compress_state: true,
            warm_templates: !args.no_warm_templates,
        },
    )?)
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
