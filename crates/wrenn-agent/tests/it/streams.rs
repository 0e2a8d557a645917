//! `exec/stream` and `processes/{sel}/stream`.

use serde_json::json;
use wrenn_agent_client::{AgentError, PtyEvent, PtyEvents, StreamEvents};
use wrenn_types::agent::ProcessSpec;
use wrenn_types::stream::{PtyClientMessage, PtyServerMessage, PtyStart, StreamEvent};

use crate::common::*;
use crate::processes::background;

/// Collects events until `exit`/`error`, merging consecutive chunks per stream.
async fn collect(ws: &mut Ws) -> (String, String, StreamEvent) {
    let (mut out, mut err) = (String::new(), String::new());
    loop {
        match next_json::<StreamEvent>(ws).await {
            StreamEvent::Stdout { data } => out.push_str(&data),
            StreamEvent::Stderr { data } => err.push_str(&data),
            end @ (StreamEvent::Exit { .. } | StreamEvent::Error { .. }) => return (out, err, end),
            StreamEvent::Start { .. } => panic!("second start"),
        }
    }
}

#[tokio::test]
async fn exec_stream_sends_start_output_exit_then_closes() {
    let agent = TestAgent::start().await;
    let mut ws = agent.client.websocket("/exec/stream").await.expect("ws");
    send_json(
        &mut ws,
        json!({"type":"start","cmd":"/bin/sh","args":["-c","echo out; echo err >&2; printf 'é'; exit 2"]}),
    )
    .await;
    let StreamEvent::Start { pid } = next_json(&mut ws).await else {
        panic!("start first")
    };
    assert!(pid > 0);
    let (out, err, end) = collect(&mut ws).await;
    assert_eq!(out, "out\né");
    assert_eq!(err, "err\n");
    assert_eq!(end, StreamEvent::Exit { exit_code: 2 });
    expect_close(&mut ws).await;
}

#[tokio::test]
async fn exec_stream_rejects_a_bad_first_message() {
    let agent = TestAgent::start().await;
    for first in [
        json!({"type":"stop"}),
        json!({"type":"start"}),
        json!({"cmd":"/bin/true"}),
    ] {
        let mut ws = agent.client.websocket("/exec/stream").await.expect("ws");
        send_json(&mut ws, first).await;
        assert_eq!(
            next_json::<StreamEvent>(&mut ws).await,
            StreamEvent::Error {
                data: "first message must be type 'start' with a 'cmd' field".into()
            }
        );
        expect_close(&mut ws).await;
    }
}

#[tokio::test]
async fn exec_stream_stop_and_close_kill_the_process() {
    let agent = TestAgent::start().await;
    let mut ws = agent.client.websocket("/exec/stream").await.expect("ws");
    send_json(
        &mut ws,
        json!({"type":"start","cmd":"/bin/sleep","args":["60"]}),
    )
    .await;
    let StreamEvent::Start { .. } = next_json(&mut ws).await else {
        panic!("start first")
    };
    send_json(&mut ws, json!({"type":"stop"})).await;
    let (_, _, end) = collect(&mut ws).await;
    assert_eq!(end, StreamEvent::Exit { exit_code: 137 });

    let mut ws = agent.client.websocket("/exec/stream").await.expect("ws");
    send_json(
        &mut ws,
        json!({"type":"start","cmd":"/bin/sleep","args":["60"]}),
    )
    .await;
    let StreamEvent::Start { pid } = next_json(&mut ws).await else {
        panic!("start first")
    };
    drop(ws);
    assert!(wait_until(DEADLINE, || async move { !alive(pid) }).await);
}

#[tokio::test]
async fn attach_streams_output_after_start_then_exit() {
    let agent = TestAgent::start().await;
    let go = agent.path("go");
    let job = background(
        &agent,
        sh(&format!(
            "while [ ! -e {} ]; do sleep 0.02; done; echo one; echo two >&2; exit 5",
            go.display()
        )),
    )
    .await;
    let mut ws = agent
        .client
        .websocket(&format!("/processes/{}/stream", job.tag))
        .await
        .expect("ws");
    assert_eq!(
        next_json::<StreamEvent>(&mut ws).await,
        StreamEvent::Start { pid: job.pid }
    );
    std::fs::write(&go, "").expect("go");
    let (out, err, end) = collect(&mut ws).await;
    assert_eq!((out.as_str(), err.as_str()), ("one\n", "two\n"));
    assert_eq!(end, StreamEvent::Exit { exit_code: 5 });
    expect_close(&mut ws).await;

    // Finished or unknown: an error, then close.
    for sel in [job.tag.clone(), job.pid.to_string(), "proc-00000000".into()] {
        let mut ws = agent
            .client
            .websocket(&format!("/processes/{sel}/stream"))
            .await
            .expect("ws");
        assert!(matches!(
            next_json(&mut ws).await,
            StreamEvent::Error { .. }
        ));
        expect_close(&mut ws).await;
    }
}

/// The next typed event within [`MSG_DEADLINE`].
async fn next_event(rx: &mut StreamEvents) -> Option<StreamEvent> {
    tokio::time::timeout(MSG_DEADLINE, rx.next())
        .await
        .expect("event within deadline")
        .map(|r| r.expect("typed event"))
}

#[tokio::test]
async fn typed_exec_stream_and_attach() {
    let agent = TestAgent::start().await;
    let spec = ProcessSpec::new("/bin/sh", ["-c", "echo out; echo err >&2; exit 3"]);
    let (_tx, mut rx) = agent.client.exec_stream(&spec).await.expect("exec stream");
    let Some(StreamEvent::Start { pid }) = next_event(&mut rx).await else {
        panic!("start first")
    };
    assert!(pid > 0);
    let (mut out, mut err) = (String::new(), String::new());
    let end = loop {
        match next_event(&mut rx).await.expect("event before the end") {
            StreamEvent::Stdout { data } => out.push_str(&data),
            StreamEvent::Stderr { data } => err.push_str(&data),
            end => break end,
        }
    };
    assert_eq!((out.as_str(), err.as_str()), ("out\n", "err\n"));
    assert_eq!(end, StreamEvent::Exit { exit_code: 3 });
    assert_eq!(next_event(&mut rx).await, None);

    // A refused spec is an in-band error, as on the raw socket.
    let (_tx, mut rx) = agent
        .client
        .exec_stream(&ProcessSpec::default())
        .await
        .expect("exec stream");
    assert_eq!(
        next_event(&mut rx).await,
        Some(StreamEvent::Error {
            data: wrenn_types::stream::EXEC_FIRST_MESSAGE_ERROR.into()
        })
    );

    // stop kills the process.
    let (mut tx, mut rx) = agent
        .client
        .exec_stream(&ProcessSpec::new("/bin/sleep", ["60"]))
        .await
        .expect("exec stream");
    assert!(matches!(
        next_event(&mut rx).await,
        Some(StreamEvent::Start { .. })
    ));
    tx.stop().await.expect("stop");
    assert_eq!(
        next_event(&mut rx).await,
        Some(StreamEvent::Exit { exit_code: 137 })
    );

    // Attach by a tag that needs percent-encoding: not found, in band.
    let (_tx, mut rx) = agent.client.attach("no such/tag?").await.expect("attach");
    assert_eq!(
        next_event(&mut rx).await,
        Some(StreamEvent::Error {
            data: "process not found: no such/tag?".into()
        })
    );
    let job = background(&agent, sh("sleep 0.3; echo late")).await;
    let (_tx, mut rx) = agent.client.attach(&job.tag).await.expect("attach");
    assert_eq!(
        next_event(&mut rx).await,
        Some(StreamEvent::Start { pid: job.pid })
    );
    assert_eq!(
        next_event(&mut rx).await,
        Some(StreamEvent::Stdout {
            data: "late\n".into()
        })
    );
    assert_eq!(
        next_event(&mut rx).await,
        Some(StreamEvent::Exit { exit_code: 0 })
    );
}

/// The next PTY event within [`MSG_DEADLINE`].
async fn next(rx: &mut PtyEvents) -> Option<Result<PtyEvent, AgentError>> {
    tokio::time::timeout(MSG_DEADLINE, rx.next())
        .await
        .expect("pty event within deadline")
}

#[tokio::test]
async fn typed_pty_start_input_and_connect() {
    let agent = TestAgent::start().await;
    let start = PtyStart {
        process: ProcessSpec::new("/bin/sh", Vec::<String>::new()),
        cols: 90,
        rows: 30,
    };
    let (mut tx, mut rx) = agent.client.pty_start(&start).await.expect("pty");
    let Some(Ok(PtyEvent::Message(PtyServerMessage::Started { tag, pid }))) = next(&mut rx).await
    else {
        panic!("started first")
    };
    tx.input("stty size\n".into()).await.expect("input");
    let mut seen = String::new();
    while !seen.contains("30 90") {
        match next(&mut rx).await {
            Some(Ok(PtyEvent::Output(b))) => seen.push_str(&String::from_utf8_lossy(&b)),
            Some(Ok(PtyEvent::Message(PtyServerMessage::Ping))) => {}
            other => panic!("waiting for the size, got {other:?} after {seen:?}"),
        }
    }
    tx.close().await;
    drop((tx, rx));

    let (mut tx, mut rx) = agent.client.pty_connect(&tag).await.expect("pty");
    assert!(matches!(
        next(&mut rx).await,
        Some(Ok(PtyEvent::Message(PtyServerMessage::Started { pid: p, .. }))) if p == pid
    ));
    tx.send(&PtyClientMessage::Kill).await.expect("kill");
    loop {
        match next(&mut rx).await {
            Some(Ok(PtyEvent::Message(PtyServerMessage::Exit { exit_code }))) => {
                assert_eq!(exit_code, 137);
                break;
            }
            Some(Ok(_)) => {}
            other => panic!("waiting for exit, got {other:?}"),
        }
    }

    let (_tx, mut rx) = agent.client.pty_connect("pty-00000000").await.expect("pty");
    assert!(matches!(
        next(&mut rx).await,
        Some(Ok(PtyEvent::Message(PtyServerMessage::Error {
            fatal: true,
            ..
        })))
    ));
}
