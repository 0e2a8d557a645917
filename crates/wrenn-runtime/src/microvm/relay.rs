//! The host side of a VM's agent channel: one persistent connection to QEMU's virtio-serial
//! chardev socket carrying a yamux session (host = client), and a unix socket on the host
//! (the capsule's [`crate::AgentEndpoint::Unix`]) whose every accepted connection becomes one
//! yamux stream. Clients therefore speak plain HTTP/1.1 and WebSocket to the agent, exactly as
//! with containers.
//!
//! On connect the relay writes `SERIAL_MUX_HELLO`; the guest drops whatever it read before it
//! (the tail of a session of an earlier server process). When the serial connection ends (QEMU
//! stopped, migrated away, or crashed), the relay reconnects while the socket file exists;
//! connections accepted meanwhile wait for the next session.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::future::poll_fn;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::compat::{FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};
use wrenn_types::agent::{SerialIdentity, SerialSync, SERIAL_MUX_ACK, SERIAL_MUX_HELLO};

/// Pending stream opens per session.
const OPEN_QUEUE: usize = 64;
/// Longest pause between two connect attempts to the chardev socket.
const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// How long the guest may take to answer the hello before the relay reconnects.
const ACK_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest junk read before the ack (what an old guest session still wrote).
const MAX_PREAMBLE: usize = 1 << 20;

type OpenReply = oneshot::Sender<std::io::Result<yamux::Stream>>;

/// A running relay; dropping it stops it and removes the host socket.
#[derive(Debug)]
pub struct Relay {
    task: JoinHandle<()>,
    socket: PathBuf,
}

impl Relay {
    /// Binds `socket` (replacing a stale file) and relays its connections to the guest behind
    /// the chardev socket `serial`, telling the guest `identity` on every connect.
    pub fn start(
        serial: &Path,
        socket: &Path,
        identity: Option<SerialIdentity>,
    ) -> std::io::Result<Self> {
        match std::fs::remove_file(socket) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(socket)?;
        let task = tokio::spawn(run(serial.to_owned(), listener, identity));
        Ok(Self {
            task,
            socket: socket.to_owned(),
        })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}

async fn run(serial: PathBuf, listener: UnixListener, identity: Option<SerialIdentity>) {
    let (open_tx, mut open_rx) = mpsc::channel::<OpenReply>(OPEN_QUEUE);
    let accept = async {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let open_tx = open_tx.clone();
            tokio::spawn(async move {
                let (tx, rx) = oneshot::channel();
                if open_tx.send(tx).await.is_err() {
                    return;
                }
                if let Ok(Ok(stream)) = rx.await {
                    pipe(conn, stream).await;
                }
            });
        }
    };
    let sessions = async {
        let mut backoff = Duration::from_millis(5);
        loop {
            let t0 = std::time::Instant::now();
            match connect(&serial, identity.as_ref()).await {
                Ok(sock) => {
                    tracing::debug!(
                        serial = %serial.display(),
                        ms = t0.elapsed().as_secs_f64() * 1e3,
                        "agent channel acknowledged"
                    );
                    backoff = Duration::from_millis(5);
                    let conn = yamux::Connection::new(
                        sock.compat(),
                        yamux::Config::default(),
                        yamux::Mode::Client,
                    );
                    if let Err(error) = drive(conn, &mut open_rx).await {
                        tracing::debug!(%error, serial = %serial.display(), "agent channel ended");
                    }
                }
                Err(_) => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    };
    tokio::select! {
        () = accept => {}
        () = sessions => {}
    }
}

/// Connects, sends the host's time and randomness ([`SerialSync`]), the capsule's identity and
/// the hello, and waits for the guest's ack.
async fn connect(serial: &Path, identity: Option<&SerialIdentity>) -> std::io::Result<UnixStream> {
    let mut s = UnixStream::connect(serial).await?;
    let unix_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let sync = SerialSync {
        unix_ns,
        seed: rand::random(),
    };
    let mut hello = sync.line();
    if let Some(id) = identity {
        hello.push_str(&id.line());
    }
    hello.push_str(SERIAL_MUX_HELLO);
    s.write_all(hello.as_bytes()).await?;
    match tokio::time::timeout(ACK_TIMEOUT, read_marker(&mut s, SERIAL_MUX_ACK.as_bytes())).await {
        Ok(Ok(true)) => Ok(s),
        Ok(Ok(false)) => Err(std::io::ErrorKind::UnexpectedEof.into()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// Reads up to and including `marker`; `false` on EOF first.
async fn read_marker<R: AsyncRead + Unpin>(r: &mut R, marker: &[u8]) -> std::io::Result<bool> {
    let (mut matched, mut seen) = (0, 0);
    let mut byte = [0u8; 1];
    while matched < marker.len() {
        if r.read(&mut byte).await? == 0 {
            return Ok(false);
        }
        seen += 1;
        if seen > MAX_PREAMBLE {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "no ack from the guest",
            ));
        }
        matched = if byte[0] == marker[matched] {
            matched + 1
        } else if byte[0] == marker[0] {
            1
        } else {
            0
        };
    }
    Ok(true)
}

/// Copies both ways between a host client and its stream until both sides are done.
async fn pipe(mut conn: UnixStream, stream: yamux::Stream) {
    let mut stream = stream.compat();
    let _ = tokio::io::copy_bidirectional(&mut conn, &mut stream).await;
}

/// Serves stream opens on one session until it fails.
async fn drive<T>(
    mut conn: yamux::Connection<T>,
    opens: &mut mpsc::Receiver<OpenReply>,
) -> Result<(), yamux::ConnectionError>
where
    T: futures::AsyncRead + futures::AsyncWrite + Unpin,
{
    let mut pending: Option<OpenReply> = None;
    poll_fn(|cx| loop {
        if pending.is_none() {
            if let std::task::Poll::Ready(Some(tx)) = opens.poll_recv(cx) {
                pending = Some(tx);
            }
        }
        if let Some(tx) = pending.take() {
            match conn.poll_new_outbound(cx) {
                std::task::Poll::Ready(Ok(s)) => {
                    let _ = tx.send(Ok(s));
                    continue;
                }
                std::task::Poll::Ready(Err(e)) => {
                    let _ = tx.send(Err(std::io::Error::other(e.to_string())));
                    return std::task::Poll::Ready(Err(e));
                }
                std::task::Poll::Pending => pending = Some(tx),
            }
        }
        match conn.poll_next_inbound(cx) {
            // The guest never opens streams; drop any it does.
            std::task::Poll::Ready(Some(Ok(_))) => continue,
            std::task::Poll::Ready(Some(Err(e))) => return std::task::Poll::Ready(Err(e)),
            std::task::Poll::Ready(None) => return std::task::Poll::Ready(Ok(())),
            std::task::Poll::Pending => return std::task::Poll::Pending,
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A guest stand-in: accepts on the chardev socket, checks that the sync line comes before
    /// the hello, and echoes every stream upper-cased.
    async fn fake_guest(l: UnixListener) {
        loop {
            let (mut s, _) = l.accept().await.expect("accept");
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            while byte[0] != b'\n' {
                s.read_exact(&mut byte).await.expect("sync line");
                line.push(byte[0]);
            }
            assert!(
                SerialSync::parse(&line[..line.len() - 1]).is_some(),
                "{line:?}"
            );
            let mut hello = vec![0u8; SERIAL_MUX_HELLO.len()];
            s.read_exact(&mut hello).await.expect("hello");
            assert_eq!(hello, SERIAL_MUX_HELLO.as_bytes());
            s.write_all(b"stale frames").await.expect("junk");
            s.write_all(SERIAL_MUX_ACK.as_bytes()).await.expect("ack");
            // One session at a time, owned by this task: aborting it ends the session.
            let mut conn =
                yamux::Connection::new(s.compat(), yamux::Config::default(), yamux::Mode::Server);
            while let Some(Ok(st)) = poll_fn(|cx| conn.poll_next_inbound(cx)).await {
                tokio::spawn(async move {
                    let mut st = st.compat();
                    let mut buf = [0u8; 64];
                    loop {
                        let n = st.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        let up = buf[..n].to_ascii_uppercase();
                        if st.write_all(&up).await.is_err() {
                            break;
                        }
                    }
                    let _ = st.shutdown().await;
                });
            }
        }
    }

    #[tokio::test]
    async fn a_guest_that_never_acks_is_reconnected() {
        let dir = std::env::temp_dir().join(format!("wrenn-relay-ack-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let serial = dir.join("serial.sock");
        let l = UnixListener::bind(&serial).expect("bind");
        // The first connection gets no answer (a guest still in an old session)...
        let silent = tokio::spawn(async move {
            let (first, _) = l.accept().await.expect("accept");
            let (second, _) = l.accept().await.expect("second accept");
            (first, second)
        });
        let err = connect(&serial, None).await.expect_err("no ack");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        // ... and a reconnect is a fresh connection.
        let relay_side = tokio::spawn({
            let serial = serial.clone();
            async move { connect(&serial, None).await }
        });
        let (_first, mut second) = silent.await.expect("accepts");
        let mut hello = vec![0u8; SERIAL_MUX_HELLO.len()];
        second.read_exact(&mut hello).await.expect("hello");
        second
            .write_all(SERIAL_MUX_ACK.as_bytes())
            .await
            .expect("ack");
        relay_side.await.expect("task").expect("acked");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn many_connections_share_one_channel_and_survive_a_reconnect() {
        let dir = std::env::temp_dir().join(format!("wrenn-relay-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let (serial, sock) = (dir.join("serial.sock"), dir.join("agent.sock"));
        let guest = tokio::spawn(fake_guest(UnixListener::bind(&serial).expect("bind")));
        let relay = Relay::start(&serial, &sock, None).expect("relay");
        let talk = |sock: PathBuf, word: String| async move {
            let mut c = UnixStream::connect(&sock).await.expect("connect");
            c.write_all(word.as_bytes()).await.expect("write");
            let mut buf = vec![0u8; word.len()];
            c.read_exact(&mut buf).await.expect("read");
            String::from_utf8(buf).expect("utf8")
        };
        let replies =
            futures::future::join_all((0..20).map(|i| talk(sock.clone(), format!("hello-{i}"))))
                .await;
        for (i, r) in replies.iter().enumerate() {
            assert_eq!(r, &format!("HELLO-{i}"));
        }
        // The guest side goes away and comes back (QEMU restored): the relay reconnects.
        guest.abort();
        let _ = guest.await;
        std::fs::remove_file(&serial).expect("rm");
        let guest = tokio::spawn(fake_guest(UnixListener::bind(&serial).expect("bind")));
        let r = tokio::time::timeout(Duration::from_secs(5), talk(sock.clone(), "again".into()))
            .await
            .expect("reconnected in time");
        assert_eq!(r, "AGAIN");
        drop(relay);
        assert!(!sock.exists());
        guest.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
