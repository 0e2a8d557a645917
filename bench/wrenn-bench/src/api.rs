//! The capsule benchmarks: create → first exec, exec round trip, 1 MiB file write and read,
//! PTY echo, pause and resume, and 256 MiB streamed up and down.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use bytes::Bytes;
use futures_util::StreamExt;
use wrenn_client::{
    CapsuleStatus, Client, CreateCapsuleRequest, ExecRequest, PtyEvent, PtyOptions,
};

use crate::{ms, Line};

/// How long a capsule may take to reach a status.
const STATUS_WAIT: Duration = Duration::from_secs(60);

/// Runs every capsule benchmark on `template` and destroys what it made.
pub async fn run(c: &Client, n: usize, template: &str) -> anyhow::Result<()> {
    let mut ids = Vec::new();
    let result = measure(c, n, template, &mut ids).await;
    destroy_all(c, &ids).await?;
    result
}

async fn measure(
    c: &Client,
    n: usize,
    template: &str,
    ids: &mut Vec<String>,
) -> anyhow::Result<()> {
    let create = CreateCapsuleRequest {
        template: Some(template.to_owned()),
        ..CreateCapsuleRequest::default()
    };
    let true_cmd = ExecRequest::from(wrenn_client::ProcessSpec::new("true", [""; 0]));

    // The exec goes right after the 202: the server holds it until the capsule runs
    // (contract §6), so this is what an SDK user waits for.
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        let cap = c.create_capsule(&create).await?;
        ids.push(cap.id.clone());
        c.exec(&cap.id, &true_cmd).await?;
        samples.push(ms(t0));
    }
    Line {
        template: Some(template.to_owned()),
        ..Line::new("api.create_to_first_exec", &samples)
    }
    .print()?;
    let keep = ids.first().cloned().context("no capsule made (--n 0?)")?;
    let rest = ids.split_off(1);
    destroy_all(c, &rest).await?;
    let id = keep.as_str();
    wait_for(c, id, CapsuleStatus::Running).await?;

    let mut samples = Vec::with_capacity(n * 3);
    for _ in 0..n * 3 {
        let t0 = Instant::now();
        c.exec(id, &true_cmd).await?;
        samples.push(ms(t0));
    }
    Line::new("api.exec_roundtrip", &samples).print()?;

    let blob = Bytes::from(random(1024 * 1024));
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        c.write_file(id, "/tmp/bench.bin", blob.clone()).await?;
        samples.push(ms(t0));
    }
    Line::new("api.file_write_1mib", &samples).print()?;
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        let got = c.read_file(id, "/tmp/bench.bin").await?;
        ensure!(
            got == blob,
            "read back {} bytes, not the ones written",
            got.len()
        );
        samples.push(ms(t0));
    }
    Line::new("api.file_read_1mib", &samples).print()?;

    pty_echo(c, id, n * 3).await?;
    pause_resume(c, id, n).await?;
    stream(c, id, (n / 10).max(2)).await
}

/// A keystroke to `cat` on a terminal comes back as the line discipline's echo.
async fn pty_echo(c: &Client, id: &str, n: usize) -> anyhow::Result<()> {
    let opts = PtyOptions {
        cmd: "/bin/cat".into(),
        cols: 80,
        rows: 24,
        ..PtyOptions::default()
    };
    let mut pty = c.pty(id, &opts).await?;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let ch = b'a' + (i % 26) as u8;
        let t0 = Instant::now();
        pty.write(Bytes::from(vec![ch])).await?;
        loop {
            match pty.recv().await {
                Some(PtyEvent::Output(b)) if b.contains(&ch) => break,
                Some(PtyEvent::Output(_)) => {}
                Some(other) => bail!("pty: {other:?}"),
                None => bail!("the pty closed"),
            }
        }
        samples.push(ms(t0));
    }
    pty.kill().await?;
    Line::new("api.pty_echo_roundtrip", &samples).print()
}

/// Pause until `paused`, then resume until `running`, each as the client sees it.
async fn pause_resume(c: &Client, id: &str, n: usize) -> anyhow::Result<()> {
    let (mut pause, mut resume) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let t0 = Instant::now();
        c.pause_capsule(id).await?;
        wait_for(c, id, CapsuleStatus::Paused).await?;
        pause.push(ms(t0));
        let t0 = Instant::now();
        c.resume_capsule(id).await?;
        wait_for(c, id, CapsuleStatus::Running).await?;
        resume.push(ms(t0));
    }
    Line::new("api.pause", &pause).print()?;
    Line::new("api.resume", &resume).print()
}

/// 256 MiB up (chunked multipart) and down, `runs` times each.
async fn stream(c: &Client, id: &str, runs: usize) -> anyhow::Result<()> {
    const MIB: usize = 1024 * 1024;
    const SIZE_MIB: usize = 256;
    let chunk = Bytes::from(random(MIB));
    let (mut up, mut down) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t0 = Instant::now();
        let part = chunk.clone();
        let body = futures_util::stream::iter(
            (0..SIZE_MIB).map(move |_| Ok::<_, std::io::Error>(part.clone())),
        );
        c.upload(id, "/tmp/big.bin", body).await?;
        up.push(ms(t0));
        let t0 = Instant::now();
        let mut s = c.download(id, "/tmp/big.bin").await?;
        let mut got = 0;
        while let Some(b) = s.next().await {
            got += b?.len();
        }
        ensure!(got == SIZE_MIB * MIB, "downloaded {got} bytes");
        down.push(ms(t0));
    }
    let rate = |v: &[f64]| {
        let l = Line::new("", v);
        (SIZE_MIB as f64 / (l.p50_ms / 1000.0) * 10.0).round() / 10.0
    };
    let (u, d) = (rate(&up), rate(&down));
    let all: Vec<f64> = up.into_iter().chain(down).collect();
    Line {
        size_mib: Some(SIZE_MIB as f64),
        upload_mib_per_s: Some(u),
        download_mib_per_s: Some(d),
        ..Line::new("api.stream_mib_per_s", &all)
    }
    .print()
}

/// Polls (every 2 ms, as the Python benchmark) until the capsule is `want`.
pub async fn wait_for(c: &Client, id: &str, want: CapsuleStatus) -> anyhow::Result<()> {
    let deadline = Instant::now() + STATUS_WAIT;
    loop {
        let cap = c.get_capsule(id).await?;
        if cap.status == want {
            return Ok(());
        }
        if cap.status.is_terminal() {
            bail!("capsule {id} is {}", cap.status);
        }
        if Instant::now() > deadline {
            bail!("capsule {id} is still {} after {STATUS_WAIT:?}", cap.status);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Destroys `ids` and waits until each is stopped, so nothing outlives the benchmark.
pub async fn destroy_all(c: &Client, ids: &[String]) -> anyhow::Result<()> {
    for id in ids {
        c.destroy_capsule(id).await?;
    }
    for id in ids {
        c.wait_status(id, CapsuleStatus::Stopped, STATUS_WAIT)
            .await?;
    }
    Ok(())
}

/// `len` random bytes.
fn random(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::Rng::fill(&mut rand::thread_rng(), v.as_mut_slice());
    v
}
