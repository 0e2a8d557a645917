//! Turning a request (cmd, args, envs, cwd, user) into a running child.
//!
//! Design: everything that can fail with a clear message (unknown user, missing cwd) is checked
//! in the parent before the fork; the child only runs [`sys::child_setup`]. Every child leads its
//! own session and process group, so kills and deadlines hit all its descendants.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};

use wrenn_types::agent::ProcessSpec;
use wrenn_types::error::AgentErrorCode;

use crate::reaper::{ExitReceiver, Reaper};
use crate::sys::{self, ChildSetup};
use crate::users::{self, ResolveUserError};

/// `PATH` every process starts with.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Starting a process failed.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// `cmd` was empty.
    #[error("cmd is required")]
    MissingCmd,
    /// The user does not exist.
    #[error(transparent)]
    User(#[from] ResolveUserError),
    /// Switching users needs root.
    #[error("cannot run as user {user}: the agent is not root")]
    NotRoot {
        /// Requested user.
        user: String,
    },
    /// The working directory does not exist.
    #[error("working directory not found: {cwd}")]
    CwdNotFound {
        /// Requested cwd.
        cwd: String,
    },
    /// The working directory is not a directory.
    #[error("working directory is not a directory: {cwd}")]
    CwdNotADirectory {
        /// Requested cwd.
        cwd: String,
    },
    /// The working directory must be absolute.
    #[error("working directory must be absolute: {cwd}")]
    CwdRelative {
        /// Requested cwd.
        cwd: String,
    },
    /// `execve` found no such program.
    #[error("command not found: {cmd}")]
    CommandNotFound {
        /// Requested cmd.
        cmd: String,
    },
    /// `execve` refused the program (not executable, not a binary format, a directory, ...).
    #[error("command cannot be executed: {cmd}")]
    NotExecutable {
        /// Requested cmd.
        cmd: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Anything else (fork failure, pipes).
    #[error("cannot start {cmd}")]
    Io {
        /// Requested cmd.
        cmd: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

impl SpawnError {
    /// The agent error code of this failure. A program that does not exist is `not_found`
    /// (404), one that exists but cannot be run is `invalid_request` (400).
    pub fn code(&self) -> AgentErrorCode {
        match self {
            Self::MissingCmd | Self::User(_) | Self::CwdRelative { .. } => {
                AgentErrorCode::InvalidRequest
            }
            Self::NotExecutable { .. } => AgentErrorCode::InvalidRequest,
            Self::NotRoot { .. } => AgentErrorCode::PermissionDenied,
            Self::CwdNotFound { .. } | Self::CommandNotFound { .. } => AgentErrorCode::NotFound,
            Self::CwdNotADirectory { .. } => AgentErrorCode::NotADirectory,
            Self::Io { .. } => AgentErrorCode::Internal,
        }
    }
}

/// Where the child's stdio goes.
#[derive(Debug)]
pub enum ChildIo {
    /// stdin at EOF, stdout and stderr pipes.
    Pipes,
    /// stdin, stdout and stderr pipes; the parent keeps stdin's write end ([`Spawned::child`]).
    PipesWithStdin,
    /// All three on this PTY slave, which becomes the controlling terminal.
    Pty(std::os::fd::OwnedFd),
}

/// A started child. Its exit status comes only through `exit`.
#[derive(Debug)]
pub struct Spawned {
    /// Process id (also its process group id).
    pub pid: u32,
    /// The write end of its stdin pipe ([`ChildIo::PipesWithStdin`]).
    pub stdin: Option<OwnedFd>,
    /// The read end of its stdout pipe (not with a PTY).
    pub stdout: Option<OwnedFd>,
    /// The read end of its stderr pipe (not with a PTY).
    pub stderr: Option<OwnedFd>,
    /// Exit code from the reaper.
    pub exit: ExitReceiver,
}

/// Starts `spec` with `io`, registered with `reaper`.
pub fn spawn(reaper: &Reaper, spec: &ProcessSpec, io: ChildIo) -> Result<Spawned, SpawnError> {
    if spec.cmd.is_empty() {
        return Err(SpawnError::MissingCmd);
    }
    let user = users::resolve(spec.user.as_deref())?;
    let cwd = match &spec.cwd {
        Some(cwd) if !cwd.is_empty() => {
            if !cwd.starts_with('/') {
                return Err(SpawnError::CwdRelative { cwd: cwd.clone() });
            }
            match std::fs::metadata(cwd) {
                Ok(m) if m.is_dir() => cwd.clone(),
                Ok(_) => return Err(SpawnError::CwdNotADirectory { cwd: cwd.clone() }),
                Err(_) => return Err(SpawnError::CwdNotFound { cwd: cwd.clone() }),
            }
        }
        _ if Path::new(&user.home).is_dir() => user.home.clone(),
        _ => "/".to_string(),
    };
    let credentials = if user.uid == sys::euid() && spec.user.is_none() {
        None
    } else if sys::euid() == 0 {
        Some((user.uid, user.gid, user.groups.clone()))
    } else if user.uid == sys::euid() {
        None
    } else {
        return Err(SpawnError::NotRoot { user: user.name });
    };

    if credentials.is_none() && !matches!(io, ChildIo::Pty(_)) {
        // The common case needs only a new session: no fork of the agent (see
        // `sys::spawn_session`).
        return spawn_piped(
            reaper,
            spec,
            &user,
            &cwd,
            matches!(io, ChildIo::PipesWithStdin),
        );
    }
    let mut cmd = Command::new(&spec.cmd);
    cmd.args(&spec.args)
        .env_clear()
        .envs(child_env(spec, &user))
        .current_dir(&cwd);
    let setup = ChildSetup {
        controlling_tty: matches!(io, ChildIo::Pty(_)),
        credentials,
    };
    let keep_stdin = matches!(io, ChildIo::PipesWithStdin);
    match io {
        ChildIo::Pipes | ChildIo::PipesWithStdin => {
            // A pipe closed right after spawn rather than /dev/null, which a minimal root
            // filesystem may lack: reads see EOF either way.
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
        }
        ChildIo::Pty(slave) => {
            let io_err = |source| SpawnError::Io {
                cmd: spec.cmd.clone(),
                source,
            };
            let out = slave.try_clone().map_err(io_err)?;
            let err = slave.try_clone().map_err(io_err)?;
            cmd.stdin(Stdio::from(slave))
                .stdout(Stdio::from(out))
                .stderr(Stdio::from(err));
        }
    }
    sys::set_child_setup(&mut cmd, setup);
    // `cmd` (and with it the PTY slave copies) is dropped at the end of this function, so the
    // parent keeps no slave fd and the master sees EIO once the session's processes are gone.
    let (child, exit) = reaper
        .spawn(&mut cmd)
        .map_err(|source| spawn_error(spec, source))?;
    let mut child = child;
    let stdin = child.stdin.take().map(OwnedFd::from);
    Ok(Spawned {
        pid: child.id(),
        stdin: stdin.filter(|_| keep_stdin),
        stdout: child.stdout.take().map(OwnedFd::from),
        stderr: child.stderr.take().map(OwnedFd::from),
        exit,
    })
}

/// [`spawn`] with stdio pipes and the agent's own credentials, through
/// [`sys::spawn_session`]. `cmd` without a `/` is looked up in the child's `PATH`.
fn spawn_piped(
    reaper: &Reaper,
    spec: &ProcessSpec,
    user: &users::User,
    cwd: &str,
    keep_stdin: bool,
) -> Result<Spawned, SpawnError> {
    let io_err = |source| SpawnError::Io {
        cmd: spec.cmd.clone(),
        source,
    };
    let env = child_env(spec, user);
    let program =
        find_program(&spec.cmd, env.get("PATH").copied().unwrap_or("")).ok_or_else(|| {
            SpawnError::CommandNotFound {
                cmd: spec.cmd.clone(),
            }
        })?;
    let nul = |s: &str| {
        CString::new(s).map_err(|_| {
            io_err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a NUL byte in cmd, args, envs or cwd",
            ))
        })
    };
    let program = nul(&program)?;
    let argv = std::iter::once(spec.cmd.as_str())
        .chain(spec.args.iter().map(String::as_str))
        .map(nul)
        .collect::<Result<Vec<_>, _>>()?;
    let envp = env
        .iter()
        .map(|(k, v)| nul(&format!("{k}={v}")))
        .collect::<Result<Vec<_>, _>>()?;
    let cwd = nul(cwd)?;
    let (stdin_r, stdin_w) = sys::pipe().map_err(io_err)?;
    let (stdout_r, stdout_w) = sys::pipe().map_err(io_err)?;
    let (stderr_r, stderr_w) = sys::pipe().map_err(io_err)?;
    let (pid, exit) = reaper
        .spawn_with(|| {
            sys::spawn_session(&sys::SessionSpawn {
                program: &program,
                argv: &argv,
                envp: &envp,
                cwd: &cwd,
                stdio: [stdin_r.as_fd(), stdout_w.as_fd(), stderr_w.as_fd()],
            })
        })
        .map_err(|source| spawn_error(spec, source))?;
    Ok(Spawned {
        pid: pid as u32,
        stdin: keep_stdin.then_some(stdin_w),
        stdout: Some(stdout_r),
        stderr: Some(stderr_r),
        exit,
    })
}

/// A child's whole environment: the login basics for `user`, then `spec`'s own (which win).
fn child_env<'a>(spec: &'a ProcessSpec, user: &'a users::User) -> BTreeMap<&'a str, &'a str> {
    let mut env = BTreeMap::from([
        ("PATH", DEFAULT_PATH),
        ("HOME", user.home.as_str()),
        ("USER", user.name.as_str()),
        ("LOGNAME", user.name.as_str()),
        ("LANG", "C.UTF-8"),
    ]);
    env.extend(spec.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    env
}

/// Where `cmd` runs from: itself when it names a path, else the first regular file of that
/// name in `path`'s directories.
fn find_program(cmd: &str, path: &str) -> Option<String> {
    if cmd.contains('/') {
        return Some(cmd.to_owned());
    }
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| format!("{}/{cmd}", d.trim_end_matches('/')))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file()))
}

/// The [`SpawnError`] of a failed start of `spec`.
fn spawn_error(spec: &ProcessSpec, source: io::Error) -> SpawnError {
    match source.kind() {
        io::ErrorKind::NotFound => SpawnError::CommandNotFound {
            cmd: spec.cmd.clone(),
        },
        io::ErrorKind::PermissionDenied => SpawnError::NotExecutable {
            cmd: spec.cmd.clone(),
            source,
        },
        _ if matches!(
            source.raw_os_error(),
            Some(libc::ENOEXEC) | Some(libc::EISDIR) | Some(libc::ENOTDIR)
        ) =>
        {
            SpawnError::NotExecutable {
                cmd: spec.cmd.clone(),
                source,
            }
        }
        _ => SpawnError::Io {
            cmd: spec.cmd.clone(),
            source,
        },
    }
}

/// A fresh `prefix` + 8 lowercase hex digits tag.
pub fn new_tag(prefix: &str) -> String {
    format!("{prefix}{:08x}", rand::random::<u32>())
}

#[cfg(test)]
mod tests {
    use super::find_program;

    #[test]
    fn a_bare_name_is_the_first_regular_file_on_the_path_and_a_path_is_itself() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(a.join("tool")).expect("a dir named like the program");
        std::fs::create_dir_all(&b).expect("mkdir");
        std::fs::write(b.join("tool"), "").expect("write");
        let path = format!("/nonexistent::{}:{}/", a.display(), b.display());
        assert_eq!(
            find_program("tool", &path),
            Some(format!("{}/tool", b.display()))
        );
        assert_eq!(find_program("missing", &path), None);
        assert_eq!(find_program("./tool", ""), Some("./tool".to_owned()));
    }
}
