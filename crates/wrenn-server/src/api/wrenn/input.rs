//! Checks on the strings of exec, process, PTY and file requests, at the API edge: a NUL byte
//! (which no path, argument or environment entry can hold), an empty or relative path, an
//! environment name with `=`, or more argument bytes than the kernel takes is 400
//! `invalid_request` here, never an agent error.

use wrenn_types::agent::{ExecRequest, ProcessSpec};
use wrenn_types::stream::PtyStart;

use crate::error::{ApiError, ApiResult};

/// The longest path, bytes (`PATH_MAX` counts the terminating NUL).
pub const MAX_PATH: usize = 4095;
/// The longest path component (`NAME_MAX`).
pub const MAX_NAME: usize = 255;
/// Command, arguments and environment together at most (the kernel's `ARG_MAX` is 2 MiB,
/// shared with the agent's own environment).
pub const MAX_ARG_BYTES: usize = 1024 * 1024;
/// The longest foreground exec timeout, s (a day).
pub const MAX_EXEC_TIMEOUT_SEC: u64 = 86_400;
/// The longest process selector (a pid or a tag).
pub const MAX_SELECTOR: usize = 256;

fn invalid(message: String) -> ApiError {
    ApiError::InvalidRequest(message)
}

fn no_nul(field: &str, value: &str) -> ApiResult<()> {
    if value.contains('\0') {
        return Err(invalid(format!("{field} must not contain NUL bytes")));
    }
    Ok(())
}

/// A path in a capsule: present, absolute, no NUL, at most [`MAX_PATH`] bytes, no component
/// longer than [`MAX_NAME`].
pub fn path(path: &str) -> ApiResult<()> {
    if path.is_empty() {
        return Err(invalid("path is required".into()));
    }
    no_nul("path", path)?;
    if !path.starts_with('/') {
        return Err(invalid(format!("path {path:?} must be absolute")));
    }
    if path.len() > MAX_PATH {
        return Err(invalid(format!("path is longer than {MAX_PATH} bytes")));
    }
    if path.split('/').any(|c| c.len() > MAX_NAME) {
        return Err(invalid(format!(
            "a path component is longer than {MAX_NAME} bytes"
        )));
    }
    Ok(())
}

/// What to run: command (required unless `allow_empty_cmd`), arguments, environment, working
/// directory and user.
pub fn process(p: &ProcessSpec, allow_empty_cmd: bool) -> ApiResult<()> {
    if p.cmd.is_empty() && !allow_empty_cmd {
        return Err(invalid("cmd is required".into()));
    }
    no_nul("cmd", &p.cmd)?;
    let mut bytes = p.cmd.len();
    for a in &p.args {
        no_nul("args", a)?;
        bytes += a.len() + 1;
    }
    for (k, v) in &p.envs {
        if k.is_empty() || k.contains('=') {
            return Err(invalid(format!(
                "environment variable name {k:?} must be non-empty and without '='"
            )));
        }
        no_nul("envs", k)?;
        no_nul("envs", v)?;
        bytes += k.len() + v.len() + 2;
    }
    if bytes > MAX_ARG_BYTES {
        return Err(invalid(format!(
            "cmd, args and envs are longer than {MAX_ARG_BYTES} bytes"
        )));
    }
    if let Some(cwd) = &p.cwd {
        no_nul("cwd", cwd)?;
        if !cwd.is_empty() && !cwd.starts_with('/') {
            return Err(invalid(format!("cwd {cwd:?} must be absolute")));
        }
        if cwd.len() > MAX_PATH {
            return Err(invalid(format!("cwd is longer than {MAX_PATH} bytes")));
        }
    }
    if let Some(user) = &p.user {
        no_nul("user", user)?;
    }
    Ok(())
}

/// An exec request.
pub fn exec(req: &ExecRequest) -> ApiResult<()> {
    process(&req.process, false)?;
    if req.timeout_sec.is_some_and(|t| t > MAX_EXEC_TIMEOUT_SEC) {
        return Err(invalid(format!(
            "timeout_sec must be at most {MAX_EXEC_TIMEOUT_SEC}"
        )));
    }
    if let Some(tag) = &req.tag {
        no_nul("tag", tag)?;
    }
    Ok(())
}

/// A PTY session's start (an empty `cmd` means a shell).
pub fn pty(start: &PtyStart) -> ApiResult<()> {
    process(&start.process, true)
}

/// A process selector (a pid or a tag).
pub fn selector(s: &str) -> ApiResult<()> {
    if s.is_empty() || s.len() > MAX_SELECTOR || s.chars().any(char::is_control) {
        return Err(invalid(format!(
            "process selector must be 1 to {MAX_SELECTOR} characters without control characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_bytes_and_bad_names_are_refused() {
        let ok = ProcessSpec::new("echo", ["hi"]);
        assert!(process(&ok, false).is_ok());
        let mut p = ProcessSpec::new("echo", ["a\0b"]);
        assert!(process(&p, false).is_err());
        p.args.clear();
        p.cmd = "ec\0ho".into();
        assert!(process(&p, false).is_err());
        let mut p = ProcessSpec::new("env", Vec::<String>::new());
        p.envs.insert("A=B".into(), "x".into());
        assert!(process(&p, false).is_err());
        p.envs.clear();
        p.envs.insert("A".into(), "x\0".into());
        assert!(process(&p, false).is_err());
        p.envs.clear();
        p.cwd = Some("/tmp\0".into());
        assert!(process(&p, false).is_err());
        p.cwd = Some("tmp".into());
        assert!(process(&p, false).is_err());
        p.cwd = Some(String::new());
        assert!(process(&p, false).is_ok());
        let empty = ProcessSpec::new("", Vec::<String>::new());
        assert!(process(&empty, false).is_err());
        assert!(process(&empty, true).is_ok());
        let big = ProcessSpec::new("echo", [("x".repeat(MAX_ARG_BYTES))]);
        assert!(process(&big, false).is_err());
    }

    #[test]
    fn paths_must_be_absolute_short_and_without_nul() {
        assert!(path("/tmp/x").is_ok());
        for bad in ["", "tmp/x", "/tmp/\0x"] {
            assert!(path(bad).is_err(), "{bad:?}");
        }
        assert!(path(&format!("/{}", "a".repeat(MAX_PATH))).is_err());
        let mut longest = format!("/{}", vec!["a".repeat(MAX_NAME); 16].join("/"));
        longest.pop();
        assert_eq!(longest.len(), MAX_PATH);
        assert!(path(&longest).is_ok());
        assert!(path(&format!("{longest}a")).is_err());
        assert!(path(&format!("/{}", "a".repeat(MAX_NAME + 1))).is_err());
        assert!(path(&format!("/{}/b", "a".repeat(MAX_NAME))).is_ok());
    }

    #[test]
    fn selectors_are_short_printable_text() {
        assert!(selector("123").is_ok());
        assert!(selector("my-tag").is_ok());
        assert!(selector("").is_err());
        assert!(selector("a\0").is_err());
        assert!(selector(&"a".repeat(MAX_SELECTOR + 1)).is_err());
    }
}
