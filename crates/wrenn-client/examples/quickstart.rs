//! Create a capsule, run a command with streamed output, copy a file in and out, destroy it.
//!
//! Run with:
//! ```sh
//! WRENN_BASE_URL=http://127.0.0.1:8080 WRENN_API_KEY=wrn_... \
//!     cargo run -p wrenn-client --example quickstart
//! ```

use futures_util::StreamExt;
use wrenn_client::{shell, Client, CreateCapsuleRequest, StreamEvent};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let client = Client::from_env()?;
    let capsule = client
        .create_capsule(&CreateCapsuleRequest {
            template: Some("minimal".into()),
            ..Default::default()
        })
        .await?;
    let capsule = client.wait_running(&capsule.id).await?;
    println!("capsule {} is {}", capsule.id, capsule.status);

    let mut stream = client
        .exec_stream(
            &capsule.id,
            &shell("for i in 1 2 3; do echo tick $i; sleep 0.2; done"),
        )
        .await?;
    while let Some(event) = stream.next().await {
        match event? {
            StreamEvent::Stdout { data } | StreamEvent::Stderr { data } => print!("{data}"),
            StreamEvent::Exit { exit_code } => println!("exited with {exit_code}"),
            StreamEvent::Error { data } => println!("error: {data}"),
            StreamEvent::Start { pid } => println!("started pid {pid}"),
        }
    }

    let chunks = futures_util::stream::iter(
        ["hello ", "from ", "rust\n"].map(|s| Ok::<_, std::io::Error>(s.as_bytes().to_vec())),
    );
    client.upload(&capsule.id, "/tmp/hello.txt", chunks).await?;
    let mut back = Vec::new();
    let mut download = client.download(&capsule.id, "/tmp/hello.txt").await?;
    while let Some(chunk) = download.next().await {
        back.extend_from_slice(&chunk?);
    }
    print!("read back: {}", String::from_utf8_lossy(&back));

    client.destroy_capsule(&capsule.id).await?;
    Ok(())
}
