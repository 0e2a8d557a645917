//! Serving over a virtio-serial port (`--listen-serial NAME`): the agent's transport in a
//! microVM without vhost-vsock.
//!
//! The port is one byte stream to the host, so many agent connections are multiplexed over it
//! with yamux (the host runs the client side, see `wrenn_types::agent::SERIAL_MUX_HELLO`):
//!
//! 1. open the port (`/dev/vportNpM`, found by its name under `/sys/class/virtio-ports`);
//! 2. read until the host's hello line; reading EOF means no host is connected (the port
//!    returns EOF at once then, so the agent waits [`RECONNECT_DELAY`] before opening again);
//!    answer it with the ack line;
//! 3. serve a yamux session in server mode, handing every inbound stream to axum;
//! 4. on EOF or an error (the host went away: server restart, pause), drop the session and go
//!    back to 1. Streams of the old session fail; agent state (processes, PTY sessions) stays.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::future::poll_fn;
use tokio::io::AsyncWriteExt;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};
use wrenn_types::agent::{SerialIdentity, SerialSync, SERIAL_MUX_ACK, SERIAL_MUX_HELLO};

use crate::fdstream::FdStream;
use crate::reaper::Reaper;

/// Wait before reopening the port while no host is connected (a guest cloned from a warm
/// image, saved with no host connected, waits up to this long for its new host).
const RECONNECT_DELAY: Duration = Duration::from_millis(200);
/// Ends a host's yamux session that this side has left (see [`session`]).
const RESET: &[u8] = b"WRENN-RESET\n";
/// Longest wait to write [`RESET`] (no host may be reading).
const RESET_TIMEOUT: Duration = Duration::from_millis(100);
/// Longest junk read before the hello line (the tail of an old session) before giving up on it.
const MAX_PREAMBLE: usize = 1 << 20;
/// Accepted streams queued for axum.
const ACCEPT_QUEUE: usize = 64;

/// One multiplexed stream, as axum sees it.
pub type SerialConn = Compat<yamux::Stream>;

/// Streams of the current session, as a listener axum serves on.
#[derive(Debug)]
pub struct SerialListener {
    name: String,
    rx: mpsc::Receiver<yamux::Stream>,
}

impl SerialListener {
    /// Finds port `name` and starts the session loop in the background.
    pub fn bind(name: &str, reaper: Arc<Reaper>) -> io::Result<Self> {
        let path = find_port(Path::new("/sys/class/virtio-ports"), name)?;
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        tokio::spawn(session_loop(path, tx, reaper));
        Ok(Self {
            name: name.to_owned(),
            rx,
        })
    }
}

impl axum::serve::Listener for SerialListener {
    type Io = SerialConn;
    /// The port name.
    type Addr = String;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(stream) => (stream.compat(), self.name.clone()),
            // The session loop never ends on its own.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.name.clone())
    }
}

/// `/dev/<port>` of the virtio-serial port called `name`.
fn find_port(class_dir: &Path, name: &str) -> io::Result<PathBuf> {
    for entry in std::fs::read_dir(class_dir)? {
        let entry = entry?;
        let port_name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if port_name.trim() == name {
            return Ok(Path::new("/dev").join(entry.file_name()));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no virtio-serial port named {name:?}"),
    ))
}

async fn session_loop(path: PathBuf, tx: mpsc::Sender<yamux::Stream>, reaper: Arc<Reaper>) {
    let mut reset = false;
    loop {
        let ended = session(&path, &tx, &reaper, reset).await;
        reset = ended.is_err();
        match ended {
            Ok(()) => tracing::debug!("serial host not connected"),
            Err(error) => tracing::info!(%error, "serial session ended"),
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

/// One host connection: hello, then yamux until EOF. `Ok` when no host was connected. With
/// `reset` (the last session ended, possibly on this side only: a second hello read as a yamux
/// frame), the host is first sent [`RESET`]: a host still in that session reads it as a bad
/// frame and reconnects, a host waiting for the ack skips it.
async fn session(
    path: &Path,
    tx: &mpsc::Sender<yamux::Stream>,
    reaper: &Reaper,
    reset: bool,
) -> io::Result<()> {
    let mut port = SerialPort::open(path)?;
    if reset {
        let _ = tokio::time::timeout(RESET_TIMEOUT, port.write_all(RESET)).await;
    }
    let pre = match read_hello(&mut port).await? {
        Hello::NoHost => return Ok(()),
        Hello::Found(pre) => pre,
    };
    // Before the ack: once the host hears it, it sends requests that may read the clock or
    // the network.
    if let Some(sync) = pre.sync {
        apply_sync(&sync);
    }
    if let Some(id) = pre.identity {
        crate::identity::apply(&id, reaper).await;
    }
    port.write_all(SERIAL_MUX_ACK.as_bytes()).await?;
    tracing::info!("serial host connected");
    let mut conn =
        yamux::Connection::new(port.compat(), yamux::Config::default(), yamux::Mode::Server);
    loop {
        match poll_fn(|cx| conn.poll_next_inbound(cx)).await {
            Some(Ok(stream)) => {
                if tx.send(stream).await.is_err() {
                    return Ok(());
                }
            }
            Some(Err(e)) => return Err(io::Error::other(e)),
            None => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
        }
    }
}

/// What came before the first yamux byte.
#[derive(Debug, PartialEq, Eq)]
enum Hello {
    /// EOF before a hello: no host connected.
    NoHost,
    /// The hello, with the lines that came before it.
    Found(Preamble),
}

/// The host's lines before its hello that the guest acts on.
#[derive(Debug, Default, PartialEq, Eq)]
struct Preamble {
    sync: Option<SerialSync>,
    identity: Option<SerialIdentity>,
}

/// Longest line kept while looking for the sync line.
const MAX_LINE: usize = 256;

/// Reads up to and including the hello line, keeping the [`SerialSync`] and
/// [`SerialIdentity`] lines before it.
async fn read_hello<R: AsyncRead + Unpin>(port: &mut R) -> io::Result<Hello> {
    let hello = SERIAL_MUX_HELLO.as_bytes();
    let mut matched = 0;
    let mut seen = 0;
    let mut line: Vec<u8> = Vec::new();
    let mut pre = Preamble::default();
    let mut byte = [0u8; 1];
    while matched < hello.len() {
        if port.read(&mut byte).await? == 0 {
            return Ok(Hello::NoHost);
        }
        seen += 1;
        if seen > MAX_PREAMBLE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "no hello from the host",
            ));
        }
        if byte[0] == b'\n' {
            if let Some(s) = SerialSync::parse(&line) {
                pre.sync = Some(s);
            } else if let Some(id) = SerialIdentity::parse(&line) {
                pre.identity = Some(id);
            }
            line.clear();
        } else if line.len() < MAX_LINE {
            line.push(byte[0]);
        }
        matched = if byte[0] == hello[matched] {
            matched + 1
        } else if byte[0] == hello[0] {
            1
        } else {
            0
        };
    }
    Ok(Hello::Found(pre))
}

/// Sets the guest's clock from the host's and reseeds its RNG: a guest restored from saved
/// state would otherwise run behind by the time it spent saved, and clones of one state would
/// draw the same random numbers. Failures are logged: serving matters more.
fn apply_sync(sync: &SerialSync) {
    if let Err(e) = crate::sys::set_realtime_clock(sync.unix_ns) {
        tracing::warn!(error = %e, "cannot set the clock from the host");
    }
    if let Err(e) = crate::sys::reseed_rng(&sync.seed) {
        tracing::warn!(error = %e, "cannot reseed the RNG");
    }
}

/// The port's character device, non-blocking under tokio.
struct SerialPort;

impl SerialPort {
    fn open(path: &Path) -> io::Result<FdStream> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
            .open(path)?;
        FdStream::device(OwnedFd::from(file))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hello_is_found_after_junk_and_eof_means_no_host() {
        let mut input: &[u8] = b"old session tail WRENN\x00WRENN-MUX/1\nrest";
        assert_eq!(
            read_hello(&mut input).await.expect("read"),
            Hello::Found(Preamble::default())
        );
        assert_eq!(input, b"rest");
        let mut empty: &[u8] = b"WRENN-MU";
        assert_eq!(read_hello(&mut empty).await.expect("read"), Hello::NoHost);
    }

    #[tokio::test]
    async fn the_sync_line_before_the_hello_is_kept() {
        let sync = SerialSync {
            unix_ns: 42_000_000_001,
            seed: [7; 32],
        };
        let identity = SerialIdentity {
            hostname: "cl-x".into(),
            machine_id: "a".repeat(32),
            ..Default::default()
        };
        let bytes = format!(
            "tail\n{}{}{SERIAL_MUX_HELLO}rest",
            sync.line(),
            identity.line()
        );
        let mut input = bytes.as_bytes();
        assert_eq!(
            read_hello(&mut input).await.expect("read"),
            Hello::Found(Preamble {
                sync: Some(sync),
                identity: Some(identity)
            })
        );
        assert_eq!(input, b"rest");
    }

    #[test]
    fn finds_a_port_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (port, name) in [("vport0p0", "console"), ("vport0p1", "agent")] {
            std::fs::create_dir(dir.path().join(port)).expect("mkdir");
            std::fs::write(dir.path().join(port).join("name"), format!("{name}\n")).expect("w");
        }
        assert_eq!(
            find_port(dir.path(), "agent").expect("found"),
            Path::new("/dev/vport0p1")
        );
        assert!(find_port(dir.path(), "other").is_err());
    }
}
