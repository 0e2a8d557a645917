//! `exec/stream` and `processes/{sel}/stream`.

use serde_json::json;
use wrenn_types::stream::StreamEvent;

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
