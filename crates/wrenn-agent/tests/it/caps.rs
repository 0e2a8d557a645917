//! Per-capsule caps and refusals, attacked: a full process or PTY table answers
//! `limit_reached` and frees up again; FIFOs, sockets and devices are refused by the files API
//! at once, never hanging a request.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream;
use serde_json::json;
use wrenn_types::agent::KillSignal;
use wrenn_types::error::AgentErrorCode;
use wrenn_types::stream::PtyServerMessage;

use crate::common::*;
use crate::processes::background;

/// Every refusal below must come this fast (a hang would take [`DEADLINE`]).
const PROMPT: Duration = Duration::from_secs(3);

#[tokio::test]
async fn a_full_process_table_refuses_then_frees_up() {
    let agent = TestAgent::start_with(&["--max-processes", "4"]).await;
    let mut jobs = Vec::new();
    for _ in 0..4 {
        jobs.push(background(&agent, sh("sleep 60")).await);
    }
    let mut req = sh("sleep 60");
    req.background = true;
    let msg = assert_code(agent.client.exec(&req).await, AgentErrorCode::LimitReached);
    assert!(msg.contains("at most 4"), "{msg}");
    // Foreground runs count too, and nothing was forked for the refused ones.
    let forked = agent.path("forked");
    let touch = sh(&format!("touch {}", forked.display()));
    assert_code(
        agent.client.exec(&touch).await,
        AgentErrorCode::LimitReached,
    );
    assert!(!exists(&forked), "a refused request forked");
    assert_eq!(
        agent
            .client
            .processes()
            .await
            .expect("list")
            .processes
            .len(),
        4
    );

    let first = jobs.remove(0);
    agent
        .client
        .kill(&first.tag, KillSignal::Kill)
        .await
        .expect("kill");
    let client = agent.client.clone();
    assert!(
        wait_until(DEADLINE, || {
            let c = client.clone();
            async move {
                c.processes()
                    .await
                    .map(|l| l.processes.len() == 3)
                    .unwrap_or(false)
            }
        })
        .await,
        "the killed process's record was not dropped"
    );
    assert_eq!(agent.run(sh("echo room")).await.stdout, "room\n");
}

#[tokio::test]
async fn a_full_pty_table_refuses_then_frees_up() {
    let agent = TestAgent::start_with(&["--max-ptys", "2"]).await;
    let mut sessions = Vec::new();
    for _ in 0..2 {
        let mut ws = agent.client.websocket("/pty").await.expect("ws");
        send_json(&mut ws, json!({"type":"start","cmd":"sleep","args":["60"]})).await;
        let PtyServerMessage::Started { tag, .. } = next_json(&mut ws).await else {
            panic!("started first")
        };
        sessions.push((ws, tag));
    }
    let mut ws = agent.client.websocket("/pty").await.expect("ws");
    send_json(&mut ws, json!({"type":"start","cmd":"/bin/sh"})).await;
    let PtyServerMessage::Error { data, fatal } = next_json(&mut ws).await else {
        panic!("error expected")
    };
    assert!(fatal && data.contains("too many pty sessions"), "{data}");
    expect_close(&mut ws).await;

    let (_, tag) = sessions.remove(0);
    agent
        .client
        .kill(&tag, KillSignal::Kill)
        .await
        .expect("kill");
    let client = agent.client.clone();
    assert!(
        wait_until(DEADLINE, || {
            let c = client.clone();
            async move {
                c.processes()
                    .await
                    .map(|l| l.processes.len() == 1)
                    .unwrap_or(false)
            }
        })
        .await,
        "the killed session was not dropped"
    );
    let mut ws = agent.client.websocket("/pty").await.expect("ws");
    send_json(&mut ws, json!({"type":"start","cmd":"sleep","args":["60"]})).await;
    assert!(matches!(
        next_json(&mut ws).await,
        PtyServerMessage::Started { .. }
    ));
}

#[tokio::test]
async fn special_files_are_refused_at_once() {
    let agent = TestAgent::start().await;
    let dir = agent.dir.path();
    let fifo = dir.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o666)).expect("mkfifo");
    let link = dir.join("to-fifo");
    std::os::unix::fs::symlink(&fifo, &link).expect("symlink");
    let sock = dir.join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    let paths = [
        fifo.to_string_lossy().into_owned(),
        link.to_string_lossy().into_owned(),
        sock.to_string_lossy().into_owned(),
        "/dev/zero".to_string(),
        "/dev/null".to_string(),
    ];
    for path in &paths {
        let started = Instant::now();
        let read = tokio::time::timeout(PROMPT, agent.client.read(path))
            .await
            .unwrap_or_else(|_| panic!("read {path} hung"));
        let msg = assert_code(read.map(|_| ()), AgentErrorCode::InvalidRequest);
        assert!(msg.contains("not a regular file"), "{msg}");
        let body = stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"x"))]);
        let write = tokio::time::timeout(PROMPT, agent.client.write(path, body))
            .await
            .unwrap_or_else(|_| panic!("write {path} hung"));
        let msg = assert_code(write, AgentErrorCode::InvalidRequest);
        assert!(msg.contains("not a regular file"), "{msg}");
        assert!(
            started.elapsed() < PROMPT,
            "{path}: {:?}",
            started.elapsed()
        );
    }
    // Still what they were: nothing replaced them.
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::metadata(&fifo)
        .expect("fifo")
        .file_type()
        .is_fifo());
    assert!(std::fs::metadata("/dev/null")
        .expect("null")
        .file_type()
        .is_char_device());
    // The agent is fine and regular files still work.
    assert_eq!(agent.run(sh("echo ok")).await.stdout, "ok\n");
}
