//! The client against a real server: starts `wrenn serve` (from `WRENN_BIN`) on a free port
//! with a fresh data directory, and drives a real capsule through every part of the API.
//!
//! Needs root, a built CLI and static agent, and the shared lock:
//! ```sh
//! WRENN_BIN=$CARGO_TARGET_DIR/debug/wrenn \
//! WRENN_AGENT=$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/wrenn-agent \
//!     flock /tmp/wrenn-heavy.lock cargo test -p wrenn-client --test live -- --ignored
//! ```

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::{FutureExt, StreamExt};
use sha2::{Digest, Sha256};
use wrenn_client::{
    shell, CapsuleStatus, Client, ClientError, CreateCapsuleRequest, EventKind, PtyEvent,
    PtyOptions, StreamEvent, TemplateType,
};

/// A `wrenn serve` child with its own data directory; killed and cleaned up on drop.
struct Server {
    child: Child,
    dir: PathBuf,
    base_url: String,
    key: String,
}

impl Server {
    fn start() -> anyhow::Result<Self> {
        let bin = PathBuf::from(std::env::var("WRENN_BIN").context("set WRENN_BIN")?);
        let agent = std::env::var("WRENN_AGENT").context("set WRENN_AGENT")?;
        let cache = std::env::var("WRENN_CACHE").unwrap_or("/var/cache/wrenn".into());
        let dir = std::env::temp_dir().join(format!("wrenn-client-live-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let out = Command::new(&bin)
            .args(["key", "create", "--team", "live", "--dir"])
            .arg(&dir)
            .env_remove("WRENN_API_KEY")
            .output()?;
        if !out.status.success() {
            bail!("key create: {}", String::from_utf8_lossy(&out.stderr));
        }
        let key = String::from_utf8(out.stdout)?.trim().to_owned();
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(&bin)
            .args([
                "serve",
                "--no-prebuild",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .arg("--dir")
            .arg(&dir)
            .args(["--cache-dir", &cache, "--agent", &agent])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Self {
            child,
            dir,
            base_url: format!("http://127.0.0.1:{port}"),
            key,
        })
    }

    async fn client(&self) -> anyhow::Result<Client> {
        let client = Client::new(&self.base_url, &self.key)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Err(e) = client.list_capsules().await {
            if Instant::now() > deadline {
                return Err(e).context("the server did not come up");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(client)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM: capsules were destroyed by the test; the server exits cleanly.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn drain(stream: &mut wrenn_client::ExecStream) -> anyhow::Result<(String, i32)> {
    let mut out = String::new();
    while let Some(ev) = stream.next().await {
        match ev? {
            StreamEvent::Stdout { data } => out.push_str(&data),
            StreamEvent::Exit { exit_code } => return Ok((out, exit_code)),
            StreamEvent::Error { data } => bail!("stream error: {data}"),
            StreamEvent::Start { .. } | StreamEvent::Stderr { .. } => {}
        }
    }
    bail!("the stream ended without exit")
}

/// Reads PTY output until it contains `want`.
async fn expect(events: &mut wrenn_client::PtyEvents, want: &str) -> anyhow::Result<()> {
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !seen.contains(want) {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(PtyEvent::Output(b))) => seen.push_str(&String::from_utf8_lossy(&b)),
            Ok(other) => bail!("waiting for {want:?}: {other:?}; output {seen:?}"),
            Err(_) => bail!("no {want:?} within 15 s; output {seen:?}"),
        }
    }
    Ok(())
}

#[tokio::test]
#[ignore = "needs root, WRENN_BIN and WRENN_AGENT; see the module docs"]
async fn the_client_drives_a_real_capsule_end_to_end() -> anyhow::Result<()> {
    let server = Server::start()?;
    let client = server.client().await?;
    let outcome = AssertUnwindSafe(drive(&client)).catch_unwind().await;
    // Pass or fail, leave no capsule behind.
    for c in client.list_capsules().await.unwrap_or_default() {
        let _ = client.destroy_capsule(&c.id).await;
        let _ = client
            .wait_status(&c.id, CapsuleStatus::Stopped, Duration::from_secs(60))
            .await;
    }
    drop(server);
    match outcome {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

async fn drive(client: &Client) -> anyhow::Result<()> {
    let mut events = client.events().await?;
    assert_eq!(
        events.next().await.context("no first event")??.event,
        EventKind::Connected
    );

    // Typed errors carry the contract's code.
    let unknown = client
        .get_capsule(&format!("cl-{}1", "0".repeat(24)))
        .await
        .unwrap_err();
    assert!(unknown.is_not_found(), "{unknown}");
    assert_eq!(
        client.get_capsule("bad").await.unwrap_err().code(),
        Some("invalid_request")
    );

    let made = client
        .create_capsule(&CreateCapsuleRequest {
            template: Some("busybox".into()),
            memory_mb: Some(256),
            ..Default::default()
        })
        .await?;
    let id = client.wait_running(&made.id).await?.id;
    assert!(client.list_capsules().await?.iter().any(|c| c.id == id));
    loop {
        let ev = events.next().await.context("events ended")??;
        if ev.event == EventKind::CapsuleCreate && ev.resource.is_some_and(|r| r.id == id) {
            break;
        }
    }

    // Exec: foreground, streamed, background + processes.
    let r = client.run(&id, "echo hi; echo oops >&2; exit 5").await?;
    assert_eq!(
        (r.stdout.as_str(), r.stderr.as_str(), r.exit_code),
        ("hi\n", "oops\n", 5)
    );
    let mut s = client
        .exec_stream(&id, &shell("echo a; sleep 0.2; echo b"))
        .await?;
    assert_eq!(drain(&mut s).await?, ("a\nb\n".into(), 0));
    let bg = client.exec_background(&id, &shell("sleep 30")).await?;
    let procs = client.list_processes(&id).await?;
    assert!(procs.processes.iter().any(|p| p.pid == bg.pid));
    client
        .kill_process(&id, &bg.tag, Default::default())
        .await?;

    // Files: streamed upload and download of 5 MiB, list, mkdir conflict, remove.
    let data: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        data.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    client
        .upload(&id, "/tmp/d/blob", futures_util::stream::iter(chunks))
        .await?;
    let mut back = Vec::new();
    let mut dl = client.download(&id, "/tmp/d/blob").await?;
    while let Some(chunk) = dl.next().await {
        back.extend_from_slice(&chunk?);
    }
    assert_eq!(Sha256::digest(&back), Sha256::digest(&data));
    let listed = client.list_dir(&id, "/tmp/d", 1).await?;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].size, data.len() as u64);
    client.write_file(&id, "/tmp/d/small", "small").await?;
    assert_eq!(&client.read_file(&id, "/tmp/d/small").await?[..], b"small");
    let conflict = client.make_dir(&id, "/tmp/d").await.unwrap_err();
    assert_eq!(conflict.code(), Some("conflict"), "{conflict}");
    client.remove(&id, "/tmp/d").await?;
    assert!(client
        .read_file(&id, "/tmp/d/small")
        .await
        .unwrap_err()
        .is_not_found());

    // PTY: type, resize, detach, re-attach by tag, exit status.
    let pty = client
        .pty(
            &id,
            &PtyOptions {
                cols: 90,
                rows: 20,
                ..Default::default()
            },
        )
        .await?;
    let tag = pty.tag().to_owned();
    let (input, mut out) = pty.into_parts();
    input
        .send(wrenn_client::PtyInput::Data("stty size\n".into()))
        .await?;
    expect(&mut out, "20 90").await?;
    input
        .send(wrenn_client::PtyInput::Resize {
            cols: 111,
            rows: 33,
        })
        .await?;
    input
        .send(wrenn_client::PtyInput::Data("stty size; X=kept\n".into()))
        .await?;
    expect(&mut out, "33 111").await?;
    drop(input); // detach: the shell keeps running
    let detached = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(ev) = out.recv().await {
            assert!(matches!(ev, PtyEvent::Output(_)), "{ev:?}");
        }
    });
    detached
        .await
        .context("the pty did not close after detaching")?;
    let mut again = client.pty_connect(&id, &tag).await?;
    again.write("echo x=$X; exit 9\n").await?;
    let mut seen = String::new();
    let code = loop {
        match again.recv().await {
            Some(PtyEvent::Output(b)) => seen.push_str(&String::from_utf8_lossy(&b)),
            Some(PtyEvent::Exit(code)) => break code,
            other => bail!("unexpected {other:?}; output {seen:?}"),
        }
    };
    assert!(seen.contains("x=kept"), "{seen:?}");
    assert_eq!(code, 9);

    // Snapshots and templates.
    let t = client
        .create_snapshot(&id, Some("live-snap"), false)
        .await?;
    assert_eq!(t.template_type, TemplateType::Snapshot);
    let snaps = client.list_templates(Some(TemplateType::Snapshot)).await?;
    assert!(snaps.iter().any(|t| t.name == "live-snap"));
    client.delete_template("live-snap").await?;
    let gone = client.delete_template("live-snap").await.unwrap_err();
    assert!(gone.is_not_found(), "{gone}");

    // Keys: a new key works, and stops working once revoked.
    let new = client.create_key(Some("live")).await?;
    assert!(client
        .list_keys()
        .await?
        .iter()
        .any(|k| k.id == new.info.id));
    let other = Client::new(client.base_url(), &new.key)?;
    other.list_capsules().await?;
    client.revoke_key(&new.info.id).await?;
    match other.list_capsules().await {
        Err(ClientError::Api {
            status: 401, code, ..
        }) => assert_eq!(code, "unauthorized"),
        other => bail!("a revoked key still answers {other:?}"),
    }

    // Lifecycle to the end.
    client.pause_capsule(&id).await?;
    client
        .wait_status(&id, CapsuleStatus::Paused, Duration::from_secs(30))
        .await?;
    let not_running = client.run(&id, "true").await.unwrap_err();
    assert_eq!(not_running.code(), Some("invalid_state"));
    client.resume_capsule(&id).await?;
    client.wait_running(&id).await?;
    client.ping_capsule(&id).await?;
    client.destroy_capsule(&id).await?;
    client
        .wait_status(&id, CapsuleStatus::Stopped, Duration::from_secs(60))
        .await?;
    Ok(())
}
