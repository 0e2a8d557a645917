//! Foreground exec.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use base64::Engine;
use wrenn_types::agent::{ExecRequest, OutputEncoding};
use wrenn_types::error::AgentErrorCode;

use crate::common::*;

#[tokio::test]
async fn health_reports_version() {
    let agent = TestAgent::start().await;
    let h = agent.client.health().await.expect("health");
    assert_eq!(h.status, "ok");
    assert_eq!(h.version, env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn exec_applies_env_cwd_and_user() {
    let agent = TestAgent::start().await;
    let cwd = agent.dir.path().to_string_lossy().into_owned();
    let mut req = sh("echo $FOO; pwd; id -u; id -G; echo oops >&2; exit 7");
    req.process.envs.insert("FOO".into(), "bar baz".into());
    req.process.cwd = Some(cwd.clone());
    req.process.user = Some("nobody".into());
    let r = agent.run(req).await;
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines[..3], ["bar baz", cwd.as_str(), "65534"], "{r:?}");
    assert!(
        !lines[3].split(' ').any(|g| g == "0"),
        "root group kept: {r:?}"
    );
    assert_eq!(r.stderr, "oops\n");
    assert_eq!(r.exit_code, 7);
    assert_eq!(r.encoding, OutputEncoding::Utf8);
    assert!(!r.timed_out);
}

#[tokio::test]
async fn exec_sets_default_environment() {
    let agent = TestAgent::start().await;
    let r = agent
        .run(sh(
            "echo $PATH; echo $HOME $USER $LOGNAME $LANG; pwd; env | wc -l",
        ))
        .await;
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines[0],
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    );
    assert_eq!(lines[1], "/root root root C.UTF-8");
    let home_ok = std::path::Path::new("/root").is_dir();
    assert_eq!(lines[2], if home_ok { "/root" } else { "/" });
    assert_eq!(r.exit_code, 0);
}

#[tokio::test]
async fn exec_base64_encodes_both_streams_for_binary_output() {
    let agent = TestAgent::start().await;
    let r = agent
        .run(sh(r"printf '\377\000ab'; printf 'text' >&2"))
        .await;
    assert_eq!(r.encoding, OutputEncoding::Base64);
    let b64 = base64::engine::general_purpose::STANDARD;
    assert_eq!(b64.decode(&r.stdout).expect("stdout b64"), b"\xff\x00ab");
    assert_eq!(b64.decode(&r.stderr).expect("stderr b64"), b"text");
}

#[tokio::test]
async fn exec_deadline_kills_the_whole_process_group() {
    let agent = TestAgent::start().await;
    let pidfile = agent.path("child.pid");
    let mut req = sh(&format!(
        "sleep 60 & echo $! > {}; echo started; sleep 60",
        pidfile.display()
    ));
    req.timeout_sec = Some(1);
    let r = agent.run(req).await;
    assert_eq!(r.exit_code, 124);
    assert!(r.timed_out);
    assert_eq!(r.stdout, "started\n");
    assert!(r.duration_ms >= 1000 && r.duration_ms < 5000, "{r:?}");
    let child: u32 = std::fs::read_to_string(&pidfile)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    assert!(
        wait_until(DEADLINE, || async move { !alive(child) }).await,
        "grandchild {child} survived the deadline"
    );
}

#[tokio::test]
async fn exec_reports_signal_deaths_as_128_plus_n() {
    let agent = TestAgent::start().await;
    assert_eq!(agent.run(sh("kill -TERM $$")).await.exit_code, 143);
    assert_eq!(agent.run(sh("kill -KILL $$")).await.exit_code, 137);
}

#[tokio::test]
async fn exec_rejects_bad_requests_with_clear_codes() {
    let agent = TestAgent::start().await;
    let c = &agent.client;
    let empty = ExecRequest::default();
    assert!(
        assert_code(c.exec(&empty).await, AgentErrorCode::InvalidRequest)
            .contains("cmd is required")
    );
    let missing = ExecRequest {
        process: wrenn_types::agent::ProcessSpec {
            cmd: "/no/such/program".into(),
            ..Default::default()
        },
        ..Default::default()
    };
    assert!(
        assert_code(c.exec(&missing).await, AgentErrorCode::NotFound).contains("command not found")
    );
    let by_name = ExecRequest {
        process: wrenn_types::agent::ProcessSpec {
            cmd: "no-such-program-anywhere".into(),
            ..Default::default()
        },
        ..Default::default()
    };
    assert_code(c.exec(&by_name).await, AgentErrorCode::NotFound);
    let script = agent.path("not-executable.sh");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").expect("write");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let not_exec = ExecRequest {
        process: wrenn_types::agent::ProcessSpec {
            cmd: script.to_string_lossy().into_owned(),
            ..Default::default()
        },
        ..Default::default()
    };
    assert!(
        assert_code(c.exec(&not_exec).await, AgentErrorCode::InvalidRequest)
            .contains("cannot be executed")
    );
    let mut bad_cwd = sh("true");
    bad_cwd.process.cwd = Some("/no/such/dir".into());
    assert!(
        assert_code(c.exec(&bad_cwd).await, AgentErrorCode::NotFound)
            .contains("working directory not found")
    );
    let mut bad_user = sh("true");
    bad_user.process.user = Some("no-such-user".into());
    assert_code(c.exec(&bad_user).await, AgentErrorCode::InvalidRequest);
}

#[tokio::test]
async fn exec_by_uid_without_passwd_entry() {
    let agent = TestAgent::start().await;
    let mut req = sh("id -u; id -g");
    req.process.user = Some("4242".into());
    let r = agent.run(req).await;
    assert_eq!(r.stdout, "4242\n4242\n");
}

#[tokio::test]
async fn no_zombies_after_many_short_execs() {
    let agent = TestAgent::start().await;
    for i in 0..60 {
        // Every run also orphans a grandchild, which the agent must reap too.
        let r = agent.run(sh("(sleep 0.01 &) ; echo ok")).await;
        assert_eq!(r.stdout, "ok\n", "run {i}");
    }
    let pid = agent.pid();
    assert!(
        wait_until(DEADLINE, || async move { zombies_of(pid).is_empty() }).await,
        "zombies left: {:?}",
        zombies_of(pid)
    );
    assert!(agent
        .client
        .processes()
        .await
        .expect("list")
        .processes
        .is_empty());
}

#[tokio::test]
async fn exec_output_is_capped_not_failed() {
    let agent = TestAgent::start().await;
    let mut req = sh("head -c 20000000 /dev/zero | tr '\\0' a; echo done >&2");
    req.timeout_sec = Some(20);
    let r = tokio::time::timeout(Duration::from_secs(30), agent.run(req))
        .await
        .expect("in time");
    assert_eq!(r.stdout.len(), 16 * 1024 * 1024);
    assert_eq!(r.stderr, "done\n");
    assert_eq!(r.exit_code, 0);
}
