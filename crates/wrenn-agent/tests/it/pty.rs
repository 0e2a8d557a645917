//! PTY sessions: round trip, resize, re-attach with state intact, errors.

use futures_util::SinkExt;
use serde_json::json;
use wrenn_agent_client::tokio_tungstenite::tungstenite::Message;
use wrenn_types::stream::PtyServerMessage;

use crate::common::*;

/// Reads binary output until it contains `needle`; returns everything read.
async fn read_until(ws: &mut Ws, needle: &str) -> String {
    let mut seen = String::new();
    while !seen.contains(needle) {
        let msg = tokio::time::timeout(MSG_DEADLINE / 2, next_msg(ws)).await;
        let msg = msg.unwrap_or_else(|_| panic!("no {needle:?} within deadline; got {seen:?}"));
        match msg {
            Some(Message::Binary(b)) => seen.push_str(&String::from_utf8_lossy(&b)),
            Some(Message::Text(t)) => {
                let msg: PtyServerMessage = serde_json::from_str(t.as_str()).expect("json");
                assert_eq!(msg, PtyServerMessage::Ping, "unexpected control message");
            }
            other => panic!("waiting for {needle:?}, got {other:?} after {seen:?}"),
        }
    }
    seen
}

async fn keys(ws: &mut Ws, s: &str) {
    ws.send(Message::binary(s.as_bytes().to_vec()))
        .await
        .expect("send keys");
}

#[tokio::test]
async fn pty_round_trip_resize_and_reattach() {
    let agent = TestAgent::start().await;
    let mut ws = agent.client.websocket("/pty").await.expect("ws");
    send_json(
        &mut ws,
        json!({"type":"start","cmd":"/bin/sh","cols":80,"rows":24}),
    )
    .await;
    let PtyServerMessage::Started { tag, pid } = next_json(&mut ws).await else {
        panic!("started first")
    };
    let hex = tag.strip_prefix("pty-").expect("pty- prefix");
    assert_eq!(hex.len(), 8);
    let listed = agent.client.processes().await.expect("list");
    assert!(listed
        .processes
        .iter()
        .any(|p| p.pid == pid && p.tag.as_deref() == Some(tag.as_str())));

    keys(&mut ws, "stty size; echo TERM=$TERM\n").await;
    // Wait for the last line; everything before it arrived in the same reads.
    let seen = read_until(&mut ws, "TERM=xterm-256color").await;
    assert!(seen.contains("24 80"), "{seen:?}");
    send_json(&mut ws, json!({"type":"resize","cols":100,"rows":40})).await;
    send_json(&mut ws, json!({"type":"resize","cols":0,"rows":10})).await;
    send_json(&mut ws, json!({"type":"pong"})).await;
    send_json(&mut ws, json!({"type":"bogus"})).await;
    ws.send(Message::text("not json")).await.expect("send");
    keys(&mut ws, "stty size\n").await;
    read_until(&mut ws, "40 100").await;
    keys(&mut ws, "export X=42; echo set-$X\n").await;
    read_until(&mut ws, "set-42").await;
    drop(ws);

    // The shell lives on; re-attach by tag, get the replay, and the state is intact.
    let mut ws = agent.client.websocket("/pty").await.expect("ws");
    send_json(&mut ws, json!({"type":"connect","tag":tag})).await;
    assert_eq!(
        next_json::<PtyServerMessage>(&mut ws).await,
        PtyServerMessage::Started {
            tag: tag.clone(),
            pid
        }
    );
    read_until(&mut ws, "set-42").await;
    keys(&mut ws, "echo got-$X\n").await;
    read_until(&mut ws, "got-42").await;

    send_json(&mut ws, json!({"type":"kill"})).await;
    loop {
        match next_msg(&mut ws).await {
            Some(Message::Binary(_)) => continue,
            Some(Message::Text(t)) => {
                match serde_json::from_str::<PtyServerMessage>(t.as_str()).expect("json") {
                    PtyServerMessage::Exit { exit_code } => {
                        assert_eq!(exit_code, 137);
                        break;
                    }
                    PtyServerMessage::Ping => continue,
                    other => panic!("unexpected {other:?}"),
                }
            }
            other => panic!("expected exit, got {other:?}"),
        }
    }
    expect_close(&mut ws).await;
    let mut ws = agent.client.websocket("/pty").await.expect("ws");
    send_json(&mut ws, json!({"type":"connect","tag":tag})).await;
    assert!(matches!(
        next_json(&mut ws).await,
        PtyServerMessage::Error { fatal: true, .. }
    ));
}

#[tokio::test]
async fn pty_exit_of_the_shell_ends_the_session() {
    let agent = TestAgent::start().await;
    let mut ws = agent.client.websocket("/pty").await.expect("ws");
    send_json(
        &mut ws,
        json!({"type":"start","cmd":"/bin/sh","args":["-c","echo bye; exit 4"]}),
    )
    .await;
    let PtyServerMessage::Started { .. } = next_json(&mut ws).await else {
        panic!("started first")
    };
    read_until(&mut ws, "bye").await;
    loop {
        match next_msg(&mut ws).await {
            Some(Message::Binary(_)) => continue,
            Some(Message::Text(t)) => {
                assert_eq!(
                    serde_json::from_str::<PtyServerMessage>(t.as_str()).expect("json"),
                    PtyServerMessage::Exit { exit_code: 4 }
                );
                break;
            }
            other => panic!("expected exit, got {other:?}"),
        }
    }
    expect_close(&mut ws).await;
}

#[tokio::test]
async fn pty_rejects_bad_first_messages() {
    let agent = TestAgent::start().await;
    let mut ws = agent.client.websocket("/pty").await.expect("ws");
    send_json(&mut ws, json!({"type":"resize","cols":10,"rows":10})).await;
    assert_eq!(
        next_json::<PtyServerMessage>(&mut ws).await,
        PtyServerMessage::Error {
            data: "first message must be type 'start' or 'connect'".into(),
            fatal: true
        }
    );
    expect_close(&mut ws).await;

    let mut ws = agent.client.websocket("/pty").await.expect("ws");
    send_json(&mut ws, json!({"type":"connect","tag":"pty-00000000"})).await;
    let PtyServerMessage::Error { data, fatal } = next_json(&mut ws).await else {
        panic!("error expected")
    };
    assert!(fatal && data.contains("not found"), "{data}");
    expect_close(&mut ws).await;
}

/// Starts `sleep 1000` in a new PTY session; the open socket keeps it attached.
async fn start_sleeping_pty(agent: &TestAgent) -> Ws {
    let mut ws = agent.client.websocket("/pty").await.expect("ws");
    send_json(
        &mut ws,
        json!({"type":"start","cmd":"sleep","args":["1000"]}),
    )
    .await;
    let PtyServerMessage::Started { .. } = next_json(&mut ws).await else {
        panic!("started first")
    };
    ws
}

/// PTY ends opened while another request forks must not leak into that child.
#[tokio::test]
async fn pty_fds_do_not_leak_into_concurrent_children() {
    use futures_util::future::join_all;
    use wrenn_agent_client::ExecOutcome;

    // 384 sessions and 384 processes: above the default caps.
    let agent = TestAgent::start_with(&["--max-ptys", "512", "--max-processes", "1024"]).await;
    let mut sockets = Vec::new();
    let mut pids = Vec::new();
    for _ in 0..16 {
        let ptys = join_all((0..24).map(|_| start_sleeping_pty(&agent)));
        let children = join_all((0..24).map(|_| async {
            let req = wrenn_types::agent::ExecRequest {
                process: wrenn_types::agent::ProcessSpec {
                    cmd: "sleep".into(),
                    args: vec!["1000".into()],
                    ..Default::default()
                },
                background: true,
                ..Default::default()
            };
            match agent.client.exec(&req).await.expect("exec") {
                ExecOutcome::Started(s) => s.pid,
                other => panic!("expected a background start, got {other:?}"),
            }
        }));
        let (ws, started) = tokio::join!(ptys, children);
        sockets.extend(ws);
        pids.extend(started);
    }
    for pid in pids {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("fd dir");
        for fd in fds.flatten() {
            let target = std::fs::read_link(fd.path()).unwrap_or_default();
            let target = target.to_string_lossy();
            assert!(
                !target.starts_with("/dev/pts") && !target.starts_with("/dev/ptmx"),
                "pid {pid} inherited a PTY: {} -> {target}",
                fd.path().display()
            );
        }
    }
    drop(sockets);
}

/// A program that never reads its terminal must not stall the session: input beyond the queue
/// is dropped (with a non-fatal error), and `kill` still ends the session at once.
#[tokio::test]
async fn pty_unread_input_does_not_block_kill() {
    let agent = TestAgent::start().await;
    let mut ws = agent.client.websocket("/pty").await.expect("ws");
    // Raw mode: the terminal takes a few KiB and then blocks the writer (canonical mode would
    // discard the overflow instead), and no echo.
    send_json(
        &mut ws,
        json!({"type":"start","cmd":"/bin/sh","args":["-c","stty raw -echo; echo ready; exec sleep 1000"]}),
    )
    .await;
    let PtyServerMessage::Started { .. } = next_json(&mut ws).await else {
        panic!("started first")
    };
    read_until(&mut ws, "ready").await;
    // 2 MiB: far beyond the terminal's buffers and the agent's input queue (1 MiB).
    let frame = vec![b'x'; 64 * 1024];
    let sent = tokio::time::timeout(MSG_DEADLINE, async {
        for _ in 0..32 {
            ws.send(Message::binary(frame.clone()))
                .await
                .expect("send input");
        }
        send_json(&mut ws, json!({"type":"kill"})).await;
    })
    .await;
    assert!(sent.is_ok(), "the agent stopped reading the socket");
    let mut dropped = false;
    loop {
        match next_msg(&mut ws).await {
            Some(Message::Binary(b)) => panic!("no echo expected, got {} bytes", b.len()),
            Some(Message::Text(t)) => {
                match serde_json::from_str::<PtyServerMessage>(t.as_str()).expect("json") {
                    PtyServerMessage::Exit { exit_code } => {
                        assert_eq!(exit_code, 137);
                        break;
                    }
                    PtyServerMessage::Error { data, fatal: false } => {
                        assert!(data.contains("input dropped"), "{data}");
                        assert!(!dropped, "told once per stall");
                        dropped = true;
                    }
                    PtyServerMessage::Ping => continue,
                    other => panic!("unexpected {other:?}"),
                }
            }
            other => panic!("expected exit, got {other:?}"),
        }
    }
    assert!(dropped, "input beyond the queue is reported dropped");
    expect_close(&mut ws).await;
    // The input still queued for the dead terminal is abandoned, not retried in a busy loop.
    let cpu = || {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", agent.pid())).expect("stat");
        let fields: Vec<u64> = stat
            .rsplit_once(')')
            .expect("comm")
            .1
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|f| f.parse().expect("ticks"))
            .collect();
        fields.iter().sum::<u64>()
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let before = cpu();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let spent = cpu() - before;
    assert!(
        spent < 20,
        "agent busy after the session ended: {spent} ticks in 500 ms"
    );
}
