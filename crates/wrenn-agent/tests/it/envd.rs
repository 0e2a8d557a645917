//! envd (E2B contract §3–§4) over raw HTTP/1.1 on the agent's socket: Connect unary and
//! streamed calls with their envelopes parsed, processes, PTY, files and watchers.

use std::convert::Infallible;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::common::*;

type ReqBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

const STREAM_CT: &str = "application/connect+json";

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn unb64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64")
}

fn envelope(flags: u8, v: &Value) -> Vec<u8> {
    let json = v.to_string().into_bytes();
    let mut out = vec![flags];
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
    out
}

fn full(b: Vec<u8>) -> ReqBody {
    http_body_util::Full::new(Bytes::from(b)).boxed()
}

/// Sends one request over a fresh connection to the agent's socket.
async fn send(
    agent: &TestAgent,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: ReqBody,
) -> Response<Incoming> {
    let stream = tokio::net::UnixStream::connect(agent.path("agent.sock"))
        .await
        .expect("connect");
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "envd");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    tx.send_request(req.body(body).expect("request"))
        .await
        .expect("response")
}

async fn body_bytes(resp: Response<Incoming>) -> Vec<u8> {
    resp.into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec()
}

/// A unary Connect call: (status, JSON body).
async fn unary(agent: &TestAgent, rpc: &str, msg: Value, extra: &[(&str, &str)]) -> (u16, Value) {
    let mut headers = vec![
        ("content-type", "application/json"),
        ("connect-protocol-version", "1"),
    ];
    headers.extend_from_slice(extra);
    let resp = send(
        agent,
        "POST",
        &format!("/envd/{rpc}"),
        &headers,
        full(msg.to_string().into_bytes()),
    )
    .await;
    let status = resp.status().as_u16();
    let ct = resp.headers()["content-type"]
        .to_str()
        .expect("ct")
        .to_string();
    assert!(
        ct.starts_with("application/json"),
        "{rpc}: content type {ct}"
    );
    let body = body_bytes(resp).await;
    (status, serde_json::from_slice(&body).expect("json body"))
}

/// Envelopes of a streamed response, as they arrive.
struct Envelopes {
    body: Incoming,
    buf: Vec<u8>,
}

impl Envelopes {
    fn new(resp: Response<Incoming>) -> Self {
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], STREAM_CT);
        Self {
            body: resp.into_body(),
            buf: Vec::new(),
        }
    }

    /// The next (flags, message); `None` at the end of the body.
    async fn next(&mut self) -> Option<(u8, Value)> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if self.buf.len() >= 5 + len {
                    let flags = self.buf[0];
                    let v = serde_json::from_slice(&self.buf[5..5 + len]).expect("envelope json");
                    self.buf.drain(..5 + len);
                    return Some((flags, v));
                }
            }
            let frame = tokio::time::timeout(MSG_DEADLINE, self.body.frame())
                .await
                .expect("envelope in time");
            match frame {
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => panic!("body error: {e}"),
                None => {
                    assert!(self.buf.is_empty(), "partial envelope at the end");
                    return None;
                }
            }
        }
    }

    /// The next message, skipping keepalives; panics on the end envelope.
    async fn event(&mut self) -> Value {
        loop {
            let (flags, v) = self.next().await.expect("an event");
            assert_eq!(flags, 0, "expected a message, got end {v}");
            if v["event"].get("keepalive").is_none() {
                return v["event"].clone();
            }
        }
    }

    /// Collects stdout, stderr and pty output until `end`; returns (stdout, stderr, pty, end).
    async fn until_end(&mut self) -> (String, String, Vec<u8>, Value) {
        let (mut out, mut err, mut pty) = (Vec::new(), Vec::new(), Vec::new());
        loop {
            let ev = self.event().await;
            if let Some(d) = ev.get("data") {
                for (k, buf) in [
                    ("stdout", &mut out),
                    ("stderr", &mut err),
                    ("pty", &mut pty),
                ] {
                    if let Some(s) = d.get(k) {
                        buf.extend(unb64(s.as_str().expect("b64 string")));
                    }
                }
            } else if let Some(end) = ev.get("end") {
                return (
                    String::from_utf8(out).expect("utf8"),
                    String::from_utf8(err).expect("utf8"),
                    pty,
                    end.clone(),
                );
            } else {
                panic!("unexpected event {ev}");
            }
        }
    }

    /// The end envelope's JSON; asserts that nothing follows it.
    async fn end(&mut self) -> Value {
        let (flags, v) = self.next().await.expect("end envelope");
        assert_eq!(flags, 2, "expected the end envelope, got {v}");
        assert!(self.next().await.is_none(), "data after the end envelope");
        v
    }
}

/// Starts a streamed call with one request message.
async fn stream(agent: &TestAgent, rpc: &str, msg: Value, extra: &[(&str, &str)]) -> Envelopes {
    let mut headers = vec![
        ("content-type", STREAM_CT),
        ("connect-protocol-version", "1"),
    ];
    headers.extend_from_slice(extra);
    let resp = send(
        agent,
        "POST",
        &format!("/envd/{rpc}"),
        &headers,
        full(envelope(0, &msg)),
    )
    .await;
    Envelopes::new(resp)
}

async fn start(agent: &TestAgent, msg: Value, extra: &[(&str, &str)]) -> (u32, Envelopes) {
    let mut s = stream(agent, "process.Process/Start", msg, extra).await;
    let ev = s.event().await;
    let pid = ev["start"]["pid"].as_u64().expect("first event is start") as u32;
    (pid, s)
}

fn bash(script: &str) -> Value {
    json!({"process": {"cmd": "/bin/sh", "args": ["-c", script]}, "stdin": false})
}

async fn listed(agent: &TestAgent, pid: u32) -> bool {
    let (status, v) = unary(agent, "process.Process/List", json!({}), &[]).await;
    assert_eq!(status, 200);
    v["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .any(|p| p["pid"] == pid)
}

#[tokio::test]
async fn start_streams_output_env_and_exit() {
    let agent = TestAgent::start().await;
    let dir = agent.dir.path().to_string_lossy().into_owned();
    let resp = send(
        &agent,
        "PUT",
        "/envd-config",
        &[("content-type", "application/json")],
        full(
            json!({"envVars": {"FROM_SANDBOX": "s", "BOTH": "sandbox"}, "defaultWorkdir": dir})
                .to_string()
                .into_bytes(),
        ),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let (_, mut s) = start(
        &agent,
        json!({"process": {"cmd": "/bin/sh",
            "args": ["-c", "echo hi; echo oops >&2; echo $FROM_SANDBOX $BOTH $E2B_SANDBOX $USER; pwd; exit 3"],
            "envs": {"BOTH": "request"}}, "stdin": false}),
        &[("keepalive-ping-interval", "50")],
    )
    .await;
    let (out, err, _, end) = s.until_end().await;
    assert_eq!(out, format!("hi\ns request true root\n{dir}\n"));
    assert_eq!(err, "oops\n");
    assert_eq!(
        end,
        json!({"exitCode": 3, "exited": true, "status": "exit status 3", "error": "exit status 3"})
    );
    assert_eq!(s.end().await, json!({}));

    // /envs is the sandbox environment.
    let resp = send(&agent, "GET", "/envd/envs", &[], full(Vec::new())).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let envs: Value = serde_json::from_slice(&body_bytes(resp).await).expect("json");
    assert_eq!(
        envs,
        json!({"BOTH": "sandbox", "E2B_SANDBOX": "true", "FROM_SANDBOX": "s"})
    );
    let resp = send(&agent, "GET", "/envd/health", &[], full(Vec::new())).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);

    // "~" resolves against the user's home (root's here), over the sandbox's default.
    let (_, mut s) = start(
        &agent,
        json!({"process": {"cmd": "/bin/pwd", "cwd": "~"}}),
        &[],
    )
    .await;
    let (out, _, _, end) = s.until_end().await;
    assert_eq!(
        (out.as_str(), end["exitCode"].as_i64()),
        ("/root\n", Some(0))
    );
}

#[tokio::test]
async fn bad_input_is_invalid_argument_and_users_unauthenticated() {
    let agent = TestAgent::start().await;
    for msg in [
        json!({"process": {"cmd": "/bin/echo", "args": ["a\u{0}b"]}}),
        json!({"process": {"cmd": "/bin/ec\u{0}ho"}}),
        json!({"process": {"cmd": "/bin/echo", "envs": {"A\u{0}": "1"}}}),
        json!({"process": {"cmd": "/bin/echo", "envs": {"A=B": "1"}}}),
        json!({"process": {"cmd": "/bin/echo", "cwd": "/tmp/\u{0}x"}}),
        json!({"process": {"cmd": "/bin/echo", "cwd": "/definitely/not/here"}}),
        json!({"process": {"cmd": ""}}),
    ] {
        let mut s = stream(&agent, "process.Process/Start", msg.clone(), &[]).await;
        let end = s.end().await;
        assert_eq!(end["error"]["code"], "invalid_argument", "{msg}: {end}");
    }
    let mut s = stream(
        &agent,
        "process.Process/Start",
        json!({"process": {"cmd": "/bin/true"}}),
        &[("authorization", "Basic bm9ib2R5LWF0LWFsbDo=")],
    )
    .await;
    assert_eq!(s.end().await["error"]["code"], "unauthenticated");
    // A user name with a NUL byte: invalid, for RPCs and /files alike.
    let nul_user = format!("Basic {}", b64(b"ro\0ot:"));
    let mut s = stream(
        &agent,
        "process.Process/Start",
        json!({"process": {"cmd": "/bin/true"}}),
        &[("authorization", &nul_user)],
    )
    .await;
    assert_eq!(s.end().await["error"]["code"], "invalid_argument");
    let resp = send(
        &agent,
        "GET",
        "/envd/files?path=/etc/hostname&username=a%00b",
        &[],
        full(Vec::new()),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = send(
        &agent,
        "GET",
        "/envd/files?path=/etc/host%00name",
        &[],
        full(Vec::new()),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = serde_json::from_slice(&body_bytes(resp).await).expect("json error");
    assert_eq!(body["code"], 400);

    let (status, v) = unary(
        &agent,
        "filesystem.Filesystem/Stat",
        json!({"path": "/tmp/a\u{0}b"}),
        &[],
    )
    .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (400, Some("invalid_argument"))
    );
    let (status, v) = unary(
        &agent,
        "filesystem.Filesystem/Stat",
        json!({"path": 5}),
        &[],
    )
    .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (400, Some("invalid_argument"))
    );
    let (status, v) = unary(
        &agent,
        "process.Process/List",
        json!({}),
        &[("authorization", "Basic bm9ib2R5LWF0LWFsbDo=")],
    )
    .await;
    // List names no user; only user-dependent calls check it.
    assert_eq!(status, 200, "{v}");
    let (status, v) = unary(
        &agent,
        "filesystem.Filesystem/ListDir",
        json!({"path": "/"}),
        &[("authorization", "Basic bm9ib2R5LWF0LWFsbDo=")],
    )
    .await;
    assert_eq!((status, v["code"].as_str()), (401, Some("unauthenticated")));
    let (status, v) = unary(&agent, "process.Process/Nope", json!({}), &[]).await;
    assert_eq!((status, v["code"].as_str()), (501, Some("unimplemented")));
    let (status, v) = unary(
        &agent,
        "process.Process/SendSignal",
        json!({"process": {"pid": 999_999}, "signal": "SIGNAL_SIGKILL"}),
        &[],
    )
    .await;
    assert_eq!((status, v["code"].as_str()), (404, Some("not_found")));
}

#[tokio::test]
async fn timeout_kills_the_process_and_ends_the_stream() {
    let agent = TestAgent::start().await;
    let t0 = std::time::Instant::now();
    let (pid, mut s) = start(
        &agent,
        bash("echo started; sleep 30"),
        &[("connect-timeout-ms", "700")],
    )
    .await;
    assert_eq!(
        unb64(s.event().await["data"]["stdout"].as_str().expect("out")),
        b"started\n"
    );
    let end = s.end().await;
    assert_eq!(end["error"]["code"], "deadline_exceeded", "{end}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(
        wait_until(DEADLINE, || async { !alive(pid) }).await,
        "process {pid} survived its deadline"
    );

    // The deadline holds while a client does not read a flood of output.
    let (pid, stalled) = start(&agent, bash("yes"), &[("connect-timeout-ms", "1000")]).await;
    assert!(
        wait_until(DEADLINE, || async { !alive(pid) }).await,
        "process {pid} outlived its deadline behind an unread stream"
    );
    drop(stalled);

    // The deadline holds after the client has gone too.
    let (pid, s) = start(&agent, bash("sleep 30"), &[("connect-timeout-ms", "700")]).await;
    drop(s);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(alive(pid), "disconnect killed {pid} before its deadline");
    assert!(
        wait_until(DEADLINE, || async { !alive(pid) }).await,
        "process {pid} survived its deadline after a disconnect"
    );
}

#[tokio::test]
async fn stdin_close_stdin_and_stream_input() {
    let agent = TestAgent::start().await;
    let (pid, mut s) = start(&agent, json!({"process": {"cmd": "/bin/cat"}}), &[]).await;
    let sel = json!({"pid": pid});
    let (status, _) = unary(
        &agent,
        "process.Process/SendInput",
        json!({"process": sel, "input": {"stdin": b64(b"ping\n")}}),
        &[],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        unb64(s.event().await["data"]["stdout"].as_str().expect("out")),
        b"ping\n"
    );

    // StreamInput: chunked envelopes, written as they arrive.
    let (tx, rx) = mpsc::channel::<Vec<u8>>(4);
    let body = StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(Bytes::from(b))), rx))
    }));
    let agent_ref = &agent;
    let call = async move {
        send(
            agent_ref,
            "POST",
            "/envd/process.Process/StreamInput",
            &[("content-type", STREAM_CT)],
            body.boxed(),
        )
        .await
    };
    let feed = async {
        tx.send(envelope(0, &json!({"start": {"process": {"pid": pid}}})))
            .await
            .expect("feed");
        tx.send(envelope(
            0,
            &json!({"data": {"input": {"stdin": b64(b"pong\n")}}}),
        ))
        .await
        .expect("feed");
        // Output arrives while the request is still open.
        let ev = s.event().await;
        assert_eq!(
            unb64(ev["data"]["stdout"].as_str().expect("out")),
            b"pong\n"
        );
        tx.send(envelope(0, &json!({"keepalive": {}})))
            .await
            .expect("feed");
        drop(tx);
        s
    };
    let (resp, mut s) = tokio::join!(call, feed);
    let mut input = Envelopes::new(resp);
    assert_eq!(input.next().await, Some((0, json!({}))));
    assert_eq!(input.end().await, json!({}));

    let (status, _) = unary(
        &agent,
        "process.Process/CloseStdin",
        json!({"process": sel}),
        &[],
    )
    .await;
    assert_eq!(status, 200);
    let (_, _, _, end) = s.until_end().await;
    assert_eq!(end["exitCode"], 0);
    assert_eq!(s.end().await, json!({}));

    // stdin false: at EOF at once, and SendInput is refused.
    let (pid, mut s) = start(
        &agent,
        json!({"process": {"cmd": "/bin/sh", "args": ["-c", "cat; sleep 1"]}, "stdin": false}),
        &[],
    )
    .await;
    let (status, v) = unary(
        &agent,
        "process.Process/SendInput",
        json!({"process": {"pid": pid}, "input": {"stdin": b64(b"x")}}),
        &[],
    )
    .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (400, Some("failed_precondition"))
    );
    let (out, _, _, end) = s.until_end().await;
    assert_eq!((out.as_str(), end["exitCode"].as_i64()), ("", Some(0)));
}

#[tokio::test]
async fn disconnect_keeps_the_process_connect_reattaches_and_signals_end_it() {
    let agent = TestAgent::start().await;
    let (pid, s) = start(
        &agent,
        bash("i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done"),
        &[],
    )
    .await;
    drop(s);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        alive(pid) && listed(&agent, pid).await,
        "disconnect killed {pid}"
    );

    let mut c = stream(
        &agent,
        "process.Process/Connect",
        json!({"process": {"pid": pid}}),
        &[("keepalive-ping-interval", "1")],
    )
    .await;
    assert_eq!(c.event().await["start"]["pid"], pid);
    let out = unb64(c.event().await["data"]["stdout"].as_str().expect("output"));
    assert!(out.starts_with(b"tick "), "{out:?}");

    let (status, _) = unary(
        &agent,
        "process.Process/SendSignal",
        json!({"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"}),
        &[],
    )
    .await;
    assert_eq!(status, 200);
    let (_, _, _, end) = c.until_end().await;
    assert_eq!(
        end,
        json!({"exitCode": -1, "status": "signal: killed", "error": "signal: killed"})
    );
    assert_eq!(c.end().await, json!({}));
    assert!(wait_until(DEADLINE, || async { !listed(&agent, pid).await }).await);
    let (status, v) = unary(
        &agent,
        "process.Process/SendSignal",
        json!({"process": {"pid": pid}, "signal": "SIGNAL_SIGTERM"}),
        &[],
    )
    .await;
    assert_eq!((status, v["code"].as_str()), (404, Some("not_found")));
    let mut gone = stream(
        &agent,
        "process.Process/Connect",
        json!({"process": {"pid": pid}}),
        &[],
    )
    .await;
    assert_eq!(gone.end().await["error"]["code"], "not_found");

    // Keepalives flow on an idle stream; SIGTERM is reported as such; tags select.
    let (pid, mut s) = start(
        &agent,
        json!({"process": {"cmd": "/bin/sleep", "args": ["30"]}, "tag": "sleeper", "stdin": false}),
        &[("keepalive-ping-interval", "1")],
    )
    .await;
    let (flags, ka) = s.next().await.expect("keepalive");
    assert_eq!((flags, ka), (0, json!({"event": {"keepalive": {}}})));
    let (_, list) = unary(&agent, "process.Process/List", json!({}), &[]).await;
    let me = list["processes"]
        .as_array()
        .expect("list")
        .iter()
        .find(|p| p["pid"] == pid)
        .expect("listed")
        .clone();
    assert_eq!(me["tag"], "sleeper");
    assert_eq!(me["config"]["args"], json!(["30"]));
    let (status, _) = unary(
        &agent,
        "process.Process/SendSignal",
        json!({"process": {"tag": "sleeper"}, "signal": "SIGNAL_SIGTERM"}),
        &[],
    )
    .await;
    assert_eq!(status, 200);
    let (_, _, _, end) = s.until_end().await;
    assert_eq!(end["status"], "signal: terminated");
    let (status, v) = unary(
        &agent,
        "process.Process/SendSignal",
        json!({"process": {"pid": 1}, "signal": "SIGNAL_SIGHUP"}),
        &[],
    )
    .await;
    assert_eq!((status, v["code"].as_str()), (501, Some("unimplemented")));
}

async fn pty_until(s: &mut Envelopes, acc: &mut Vec<u8>, needle: &str) {
    let end = std::time::Instant::now() + DEADLINE;
    while !String::from_utf8_lossy(acc).contains(needle) {
        assert!(
            std::time::Instant::now() < end,
            "no {needle:?} in {:?}",
            String::from_utf8_lossy(acc)
        );
        let ev = s.event().await;
        let data = ev["data"]["pty"]
            .as_str()
            .unwrap_or_else(|| panic!("pty data, got {ev}"));
        acc.extend(unb64(data));
    }
}

#[tokio::test]
async fn pty_input_resize_and_exit() {
    let agent = TestAgent::start().await;
    let (pid, mut s) = start(
        &agent,
        json!({"process": {"cmd": "/bin/sh", "envs": {"PS1": "$ "}}, "pty": {"size": {"cols": 80, "rows": 24}}}),
        &[],
    )
    .await;
    let input = |data: &[u8]| json!({"process": {"pid": pid}, "input": {"pty": b64(data)}});
    let mut acc = Vec::new();
    let (status, _) = unary(
        &agent,
        "process.Process/SendInput",
        input(b"stty size\n"),
        &[],
    )
    .await;
    assert_eq!(status, 200);
    pty_until(&mut s, &mut acc, "24 80").await;
    let (status, _) = unary(
        &agent,
        "process.Process/Update",
        json!({"process": {"pid": pid}, "pty": {"size": {"cols": 100, "rows": 30}}}),
        &[],
    )
    .await;
    assert_eq!(status, 200);
    unary(
        &agent,
        "process.Process/SendInput",
        input(b"stty size\n"),
        &[],
    )
    .await;
    pty_until(&mut s, &mut acc, "30 100").await;
    // stdin input to a PTY process is refused.
    let (status, v) = unary(
        &agent,
        "process.Process/SendInput",
        json!({"process": {"pid": pid}, "input": {"stdin": b64(b"x")}}),
        &[],
    )
    .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (400, Some("failed_precondition"))
    );
    assert!(listed(&agent, pid).await);
    unary(&agent, "process.Process/SendInput", input(b"exit 5\n"), &[]).await;
    let (_, _, _, end) = s.until_end().await;
    assert_eq!(end["exitCode"], 5);
    assert_eq!(s.end().await, json!({}));
}

async fn upload(
    agent: &TestAgent,
    query: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, Value) {
    let resp = send(
        agent,
        "POST",
        &format!("/envd/files{query}"),
        headers,
        full(body),
    )
    .await;
    let status = resp.status().as_u16();
    let body = body_bytes(resp).await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn download(agent: &TestAgent, path: &str, headers: &[(&str, &str)]) -> (u16, Vec<u8>) {
    let q = format!("/envd/files?path={}", path.replace(' ', "%20"));
    let resp = send(agent, "GET", &q, headers, full(Vec::new())).await;
    let status = resp.status().as_u16();
    (status, body_bytes(resp).await)
}

fn multipart(parts: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "xXwrennBoundaryXx";
    let mut body = Vec::new();
    for (name, data) in parts {
        write!(
            body,
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .expect("write");
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    write!(body, "--{boundary}--\r\n").expect("write");
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[tokio::test]
async fn files_upload_download_multipart_gzip_and_errors() {
    let agent = TestAgent::start().await;
    let root = agent.dir.path().to_string_lossy().into_owned();
    let big: Vec<u8> = (0..5 * 1024 * 1024).map(|_| rand::random::<u8>()).collect();
    let path = format!("{root}/deep/er/big.bin");
    let (status, v) = upload(
        &agent,
        &format!("?path={path}"),
        &[("content-type", "application/octet-stream")],
        big.clone(),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v,
        json!([{"name": "big.bin", "type": "file", "path": path}])
    );
    let (status, back) = download(&agent, &path, &[]).await;
    assert_eq!(status, 200);
    assert!(back == big, "5 MiB round trip differs");

    // Multipart, several files, raw filenames as full paths; owned by the user.
    let (ct, body) = multipart(&[
        (&format!("{root}/m/one.txt"), b"one"),
        (&format!("{root}/m/sub/two.txt"), b"two"),
    ]);
    let (status, v) = upload(
        &agent,
        "",
        &[
            ("content-type", &ct),
            ("authorization", "Basic bm9ib2R5Og=="),
        ],
        body,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v.as_array().map(Vec::len), Some(2));
    assert_eq!(
        std::fs::read(format!("{root}/m/sub/two.txt")).expect("two"),
        b"two"
    );
    use std::os::unix::fs::MetadataExt;
    for p in ["m", "m/sub", "m/sub/two.txt", "m/one.txt"] {
        let uid = std::fs::metadata(format!("{root}/{p}"))
            .expect("meta")
            .uid();
        assert_eq!(uid, 65534, "{p} is not the user's");
    }
    // One file with ?path=, the SDK's single write.
    let (ct, body) = multipart(&[("ignored-name", b"single")]);
    let (status, v) = upload(
        &agent,
        &format!("?path={root}/s.txt"),
        &[("content-type", &ct)],
        body,
    )
    .await;
    assert_eq!((status, v.as_array().map(Vec::len)), (200, Some(1)));
    assert_eq!(
        std::fs::read(format!("{root}/s.txt")).expect("s"),
        b"single"
    );
    // Duplicate paths in one request.
    let dup = format!("{root}/dup.txt");
    let (ct, body) = multipart(&[(&dup, b"a"), (&dup, b"b")]);
    let (status, v) = upload(&agent, "", &[("content-type", &ct)], body).await;
    assert_eq!((status, v["code"].as_i64()), (400, Some(400)));

    // gzip-encoded octet-stream.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&big[..1024 * 1024]).expect("gz");
    let (status, _) = upload(
        &agent,
        &format!("?path={root}/gz.bin"),
        &[
            ("content-type", "application/octet-stream"),
            ("content-encoding", "gzip"),
        ],
        enc.finish().expect("gz"),
    )
    .await;
    assert_eq!(status, 200);
    assert!(std::fs::read(format!("{root}/gz.bin")).expect("gz") == big[..1024 * 1024]);
    let (status, _) = upload(
        &agent,
        &format!("?path={root}/badgz.bin"),
        &[
            ("content-type", "application/octet-stream"),
            ("content-encoding", "gzip"),
        ],
        b"not gzip".to_vec(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(!Path::new(&format!("{root}/badgz.bin")).exists());

    // Errors.
    let (status, _) = upload(
        &agent,
        "",
        &[("content-type", "application/octet-stream")],
        b"x".to_vec(),
    )
    .await;
    assert_eq!(status, 400, "octet-stream without a path");
    let (status, _) = upload(
        &agent,
        &format!("?path={root}/m"),
        &[("content-type", "application/octet-stream")],
        b"x".to_vec(),
    )
    .await;
    assert_eq!(status, 400, "a directory at the path");
    let (status, _) = upload(
        &agent,
        &format!("?path={root}/t"),
        &[("content-type", "text/plain")],
        b"x".to_vec(),
    )
    .await;
    assert_eq!(status, 400, "other content types");
    let (status, v) = download(&agent, &format!("{root}/missing"), &[]).await;
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&v));
    let err: Value = serde_json::from_slice(&v).expect("json error");
    assert_eq!(err["code"], 404);
    assert_eq!(download(&agent, &root, &[]).await.0, 400);
    assert_eq!(
        download(
            &agent,
            &path,
            &[("authorization", "Basic bm9ib2R5LWF0LWFsbDo=")]
        )
        .await
        .0,
        401
    );
}

#[tokio::test]
async fn filesystem_calls_and_watchers() {
    let agent = TestAgent::start().await;
    let root = agent.dir.path().to_string_lossy().into_owned();
    let fs = |m: &str| format!("filesystem.Filesystem/{m}");
    let d = format!("{root}/a/b");
    let (status, v) = unary(&agent, &fs("MakeDir"), json!({"path": d}), &[]).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["entry"]["type"], "FILE_TYPE_DIRECTORY");
    assert_eq!(v["entry"]["path"], d);
    let (status, v) = unary(&agent, &fs("MakeDir"), json!({"path": d}), &[]).await;
    assert_eq!((status, v["code"].as_str()), (409, Some("already_exists")));
    std::fs::write(format!("{d}/f.txt"), b"hello world").expect("write");
    let (status, v) = unary(
        &agent,
        &fs("Stat"),
        json!({"path": format!("{d}/f.txt")}),
        &[],
    )
    .await;
    assert_eq!(status, 200);
    let e = &v["entry"];
    assert_eq!(
        (e["name"].as_str(), e["type"].as_str(), e["size"].as_str()),
        (Some("f.txt"), Some("FILE_TYPE_FILE"), Some("11"))
    );
    assert_eq!(
        (e["owner"].as_str(), e["permissions"].as_str()),
        (Some("root"), Some("-rw-r--r--"))
    );
    assert_eq!(e["mode"], 0o644);
    assert!(e["modifiedTime"].as_str().expect("time").ends_with('Z'));
    let (status, v) = unary(
        &agent,
        &fs("MakeDir"),
        json!({"path": format!("{d}/f.txt")}),
        &[],
    )
    .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (400, Some("invalid_argument"))
    );

    let (status, v) = unary(
        &agent,
        &fs("ListDir"),
        json!({"path": format!("{root}/a"), "depth": 2}),
        &[],
    )
    .await;
    assert_eq!(status, 200);
    let paths: Vec<&str> = v["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["path"].as_str().expect("path"))
        .collect();
    assert_eq!(paths, vec![d.as_str(), &format!("{d}/f.txt")]);
    let (status, v) = unary(
        &agent,
        &fs("ListDir"),
        json!({"path": format!("{root}/a")}),
        &[],
    )
    .await;
    assert_eq!(
        (status, v["entries"].as_array().map(Vec::len)),
        (200, Some(1))
    );
    let (status, v) = unary(
        &agent,
        &fs("ListDir"),
        json!({"path": format!("{d}/f.txt")}),
        &[],
    )
    .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (400, Some("invalid_argument"))
    );

    let moved = format!("{root}/c/d/g.txt");
    let (status, v) = unary(
        &agent,
        &fs("Move"),
        json!({"source": format!("{d}/f.txt"), "destination": moved}),
        &[],
    )
    .await;
    assert_eq!(
        (status, v["entry"]["path"].as_str()),
        (200, Some(moved.as_str()))
    );
    let (status, v) = unary(
        &agent,
        &fs("Move"),
        json!({"source": format!("{d}/f.txt"), "destination": moved}),
        &[],
    )
    .await;
    assert_eq!((status, v["code"].as_str()), (404, Some("not_found")));
    let (status, _) = unary(
        &agent,
        &fs("Remove"),
        json!({"path": format!("{root}/c")}),
        &[],
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = unary(
        &agent,
        &fs("Remove"),
        json!({"path": format!("{root}/c")}),
        &[],
    )
    .await;
    assert_eq!(status, 200, "removing a missing path is fine");
    let (status, v) = unary(&agent, &fs("Stat"), json!({"path": moved}), &[]).await;
    assert_eq!((status, v["code"].as_str()), (404, Some("not_found")));

    // CreateWatcher / GetWatcherEvents / RemoveWatcher, recursive.
    let (status, v) = unary(
        &agent,
        &fs("CreateWatcher"),
        json!({"path": format!("{root}/a"), "recursive": true}),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let id = v["watcherId"].as_str().expect("id").to_string();
    std::fs::write(format!("{d}/new.txt"), b"x").expect("write");
    let mut names = Vec::new();
    let want = ("b/new.txt".to_string(), "EVENT_TYPE_CREATE".to_string());
    let until = std::time::Instant::now() + DEADLINE;
    while !names.contains(&want) {
        assert!(
            std::time::Instant::now() < until,
            "no create event: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (_, v) = unary(
            &agent,
            &fs("GetWatcherEvents"),
            json!({"watcherId": id}),
            &[],
        )
        .await;
        for e in v["events"].as_array().expect("events") {
            let field = |k: &str| e[k].as_str().expect("string").to_string();
            names.push((field("name"), field("type")));
        }
    }
    let (status, _) = unary(&agent, &fs("RemoveWatcher"), json!({"watcher_id": id}), &[]).await;
    assert_eq!(status, 200);
    let (status, v) = unary(
        &agent,
        &fs("GetWatcherEvents"),
        json!({"watcherId": id}),
        &[],
    )
    .await;
    assert_eq!((status, v["code"].as_str()), (404, Some("not_found")));

    // WatchDir, streamed.
    let mut w = stream(&agent, &fs("WatchDir"), json!({"path": d}), &[]).await;
    assert_eq!(w.next().await, Some((0, json!({"start": {}}))));
    std::fs::remove_file(format!("{d}/new.txt")).expect("rm");
    let (_, ev) = w.next().await.expect("event");
    assert_eq!(
        ev,
        json!({"filesystem": {"name": "new.txt", "type": "EVENT_TYPE_REMOVE"}})
    );
    let mut missing = stream(
        &agent,
        &fs("WatchDir"),
        json!({"path": format!("{root}/nope")}),
        &[],
    )
    .await;
    assert_eq!(missing.end().await["error"]["code"], "not_found");
}

/// A streamed call whose request ends only after its answer did (chunked, the last chunk late)
/// leaves the connection usable: the next request on it is answered, not reset.
#[tokio::test]
async fn a_late_request_end_keeps_the_connection_for_the_next_call() {
    let agent = TestAgent::start().await;
    let stream = tokio::net::UnixStream::connect(agent.path("agent.sock"))
        .await
        .expect("connect");
    let (mut conn_tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let call = |body: ReqBody| {
        Request::builder()
            .method("POST")
            .uri("/envd/process.Process/Start")
            .header("host", "envd")
            .header("content-type", STREAM_CT)
            .header("connect-protocol-version", "1")
            .body(body)
            .expect("request")
    };
    let (tx, rx) = mpsc::channel::<Vec<u8>>(1);
    let body = StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(Bytes::from(b))), rx))
    }));
    tx.send(envelope(0, &bash("echo one"))).await.expect("feed");
    let resp = conn_tx
        .send_request(call(body.boxed()))
        .await
        .expect("answer");
    let mut s = Envelopes::new(resp);
    assert!(s.event().await["start"]["pid"].is_u64());
    let (out, _, _, _) = s.until_end().await;
    assert_eq!(out, "one\n");
    s.end().await;
    // The answer is complete; the request's last chunk comes now.
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(tx);
    conn_tx
        .ready()
        .await
        .expect("connection kept for the next request");
    let resp = conn_tx
        .send_request(call(full(envelope(0, &bash("echo two")))))
        .await
        .expect("second answer on the same connection");
    let mut s = Envelopes::new(resp);
    s.event().await;
    assert_eq!(s.until_end().await.0, "two\n");
}
