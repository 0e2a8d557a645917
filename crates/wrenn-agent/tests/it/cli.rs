//! Command line and startup hardening.

use std::process::{Command, Stdio};

use crate::common::*;

fn agent_cmd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wrenn-agent"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run agent")
}

#[test]
fn rejects_bad_arguments_and_unloadable_filters() {
    assert_eq!(agent_cmd(&[]).status.code(), Some(2));
    assert_eq!(
        agent_cmd(&["--socket", "/tmp/x", "--nope"]).status.code(),
        Some(2)
    );
    let dir = tempfile::tempdir().expect("dir");
    let bad = dir.path().join("bad.bpf");
    std::fs::write(&bad, [0u8; 7]).expect("write");
    let sock = dir.path().join("s.sock");
    let sock = sock.to_str().expect("utf8");
    let out = agent_cmd(&["--socket", sock, "--seccomp", bad.to_str().expect("utf8")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("seccomp"));
    let missing = agent_cmd(&["--socket", sock, "--seccomp", "/no/such/filter"]);
    assert!(!missing.status.success());
}

#[tokio::test]
async fn serves_under_a_seccomp_filter_inherited_by_children() {
    // One instruction: BPF_RET|BPF_K with SECCOMP_RET_ALLOW.
    let mut prog = Vec::new();
    prog.extend_from_slice(&0x0006u16.to_ne_bytes());
    prog.extend_from_slice(&[0, 0]);
    prog.extend_from_slice(&0x7fff_0000u32.to_ne_bytes());
    let dir = tempfile::tempdir().expect("dir");
    let filter = dir.path().join("allow.bpf");
    std::fs::write(&filter, &prog).expect("write");
    let agent = TestAgent::start_with(&["--seccomp", filter.to_str().expect("utf8")]).await;
    let r = agent
        .run(sh("grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status"))
        .await;
    assert!(r.stdout.contains("NoNewPrivs:\t1"), "{r:?}");
    assert!(r.stdout.contains("Seccomp:\t2"), "{r:?}");
}
