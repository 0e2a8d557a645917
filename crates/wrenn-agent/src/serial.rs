//! Serving over a virtio-serial port (`--listen-serial NAME`): the agent's transport in a
//! microVM without vhost-vsock.
//!
//! The port is one byte stream to the host, so many agent connections are multiplexed over it
//! with yamux (the host runs the client side, see `wrenn_types::agent::SERIAL_MUX_HELLO`):
//!
//! 1. open the port (`/dev/vportNpM`, found by its name under `/sys/class/virtio-ports`) once;
//!    it stays open (closing it drops what the host already sent);
//! 2. wait for a host: while none is connected the port polls `IN|HUP` and reads EOF at once,
//!    but the port's wait queue is woken when the host connects and when data arrives, so an
//!    edge-triggered epoll sleeps until then (or [`HOST_WAIT_FALLBACK`]);
//! 3. read until the host's hello line, act on the lines before it, answer with the ack line;
//! 4. serve a yamux session in server mode, handing every inbound stream to axum;
//! 5. on EOF or an error (the host went away: server restart, pause), drop the session and go
//!    back to 2. Streams of the old session fail; agent state (processes, PTY sessions) stays.
//!
//! A guest saved mid-session (a pause, a full-state snapshot) and restored under a new host
//! may never see the old host leave: the new host's preamble then arrives inside the old
//! session. The host sends whole yamux frames and every frame starts with version byte 0, while
//! every preamble line starts with `W`, so a non-zero byte at a frame boundary is a new host
//! ([`FrameWatch`]): the session ends there and those bytes are read as the next preamble.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::poll_fn;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};
use wrenn_types::agent::{SerialIdentity, SerialSync, SERIAL_MUX_ACK, SERIAL_MUX_HELLO};

use crate::fdstream::FdStream;

/// Longest sleep while no host is connected before looking again (the host connecting wakes
/// the guest earlier; this only bounds a missed wake-up).
const HOST_WAIT_FALLBACK: Duration = Duration::from_secs(1);
/// Wait before retrying a port that failed to open or to register.
const OPEN_RETRY: Duration = Duration::from_millis(200);
/// Pause after a session failed for another reason than its host leaving or a new host
/// arriving, so a port that keeps failing does not spin.
const ERROR_PAUSE: Duration = Duration::from_millis(20);
/// Ends a host's yamux session that this side has left (see [`session`]).
const RESET: &[u8] = b"WRENN-RESET\n";
/// Longest wait to write [`RESET`] (no host may be reading).
const RESET_TIMEOUT: Duration = Duration::from_millis(100);
/// Longest junk read before the hello line (the tail of an old session) before giving up on it.
const MAX_PREAMBLE: usize = 1 << 20;
/// Accepted streams queued for axum.
const ACCEPT_QUEUE: usize = 64;
/// A yamux frame header: version, type, flags (2), stream id (4), length (4).
const FRAME_HEADER: usize = 12;
/// The yamux frame type whose length field counts the body bytes that follow.
const FRAME_DATA: u8 = 0;

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
    pub fn bind(name: &str) -> io::Result<Self> {
        let path = find_port(Path::new("/sys/class/virtio-ports"), name)?;
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        tokio::spawn(session_loop(path, tx));
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

/// How a session ended.
#[derive(Debug)]
enum Ended {
    /// EOF before a hello: no host connected.
    NoHost,
    /// A new host's preamble arrived inside the session: these bytes, read as the next one's.
    NewHost(Vec<u8>),
    /// The host left or the session failed.
    Lost(io::Error),
    /// The listener is gone.
    Closed,
}

async fn session_loop(path: PathBuf, tx: mpsc::Sender<yamux::Stream>) {
    loop {
        let fd = match open_port(&path) {
            Ok(fd) => fd,
            Err(error) => {
                tracing::warn!(%error, "cannot open the serial port");
                tokio::time::sleep(OPEN_RETRY).await;
                continue;
            }
        };
        serve_port(fd, &tx).await;
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(OPEN_RETRY).await;
    }
}

/// Serves sessions on the open port `fd` until the port fails or the listener is gone.
async fn serve_port(mut fd: OwnedFd, tx: &mpsc::Sender<yamux::Stream>) {
    let (mut carry, mut reset) = (Vec::new(), false);
    loop {
        if carry.is_empty() {
            fd = match wait_for_host(fd).await {
                Ok(fd) => fd,
                Err(error) => {
                    tracing::warn!(%error, "waiting for the serial host failed");
                    return;
                }
            };
        }
        let port = match FdStream::device(fd) {
            Ok(p) => Arc::new(p),
            Err(error) => {
                tracing::warn!(%error, "cannot register the serial port");
                return;
            }
        };
        let ended = session(Arc::clone(&port), std::mem::take(&mut carry), tx, reset).await;
        reset = false;
        match ended {
            Ended::NoHost => tracing::debug!("serial host not connected"),
            Ended::NewHost(bytes) => {
                tracing::info!("serial session ended: a new host connected");
                carry = bytes;
            }
            Ended::Lost(error) => {
                tracing::info!(%error, "serial session ended");
                // Possibly on this side only: a host still in it must hear it ended.
                reset = true;
                if error.kind() != io::ErrorKind::UnexpectedEof {
                    tokio::time::sleep(ERROR_PAUSE).await;
                }
            }
            Ended::Closed => return,
        }
        // The session and its yamux connection are gone: this is the last reference.
        fd = match Arc::try_unwrap(port) {
            Ok(p) => p.into_inner(),
            Err(_) => return,
        };
    }
}

/// Returns once a host is connected to the port (it polls without `HUP`) or has sent data.
/// The wait is an edge-triggered epoll of its own: the reactor's registration would keep the
/// port's `HUP` as a closed state for good.
async fn wait_for_host(fd: OwnedFd) -> io::Result<OwnedFd> {
    tokio::task::spawn_blocking(move || wait_for_host_blocking(&fd).map(|()| fd))
        .await
        .map_err(io::Error::other)?
}

fn wait_for_host_blocking(fd: &OwnedFd) -> io::Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    epoll.add(
        fd.as_fd(),
        EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLET, 0),
    )?;
    let fallback = u16::try_from(HOST_WAIT_FALLBACK.as_millis()).unwrap_or(u16::MAX);
    let mut events = [EpollEvent::empty()];
    // Takes the edge the registration itself reports; a wake-up after it is the next edge.
    epoll.wait(&mut events, PollTimeout::ZERO)?;
    loop {
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::ZERO)?;
        let hup = fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLHUP));
        if !hup {
            return Ok(());
        }
        match epoll.wait(&mut events, fallback) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// One host connection: hello, then yamux until it ends. `carry` is what the last session read
/// of this one's preamble. With `reset` (the last session ended, possibly on this side only: a
/// second hello read as a yamux frame), the host is first sent [`RESET`]: a host still in that
/// session reads it as a bad frame and reconnects, a host waiting for the ack skips it.
async fn session(
    port: Arc<FdStream>,
    carry: Vec<u8>,
    tx: &mpsc::Sender<yamux::Stream>,
    reset: bool,
) -> Ended {
    let new_host = Arc::new(Mutex::new(None));
    let mut io = PortIo {
        port,
        prefix: carry,
        pos: 0,
        watch: None,
        new_host: Arc::clone(&new_host),
    };
    if reset {
        let _ = tokio::time::timeout(RESET_TIMEOUT, io.write_all(RESET)).await;
    }
    let t0 = std::time::Instant::now();
    let pre = match read_hello(&mut io).await {
        Ok(Hello::NoHost) => return Ended::NoHost,
        Ok(Hello::Found(pre)) => pre,
        Err(e) => return Ended::Lost(e),
    };
    // Before the ack: once the host hears it, it sends requests that may read the clock or
    // the network.
    let hello_ms = t0.elapsed().as_secs_f64() * 1e3;
    if let Some(sync) = pre.sync {
        apply_sync(&sync);
    }
    let t1 = std::time::Instant::now();
    if let Some(id) = pre.identity {
        crate::identity::apply(&id);
    }
    let identity_ms = t1.elapsed().as_secs_f64() * 1e3;
    if let Err(e) = io.write_all(SERIAL_MUX_ACK.as_bytes()).await {
        return Ended::Lost(e);
    }
    tracing::info!(hello_ms, identity_ms, "serial host connected");
    io.watch = Some(FrameWatch::default());
    let mut conn =
        yamux::Connection::new(io.compat(), yamux::Config::default(), yamux::Mode::Server);
    let ended = loop {
        match poll_fn(|cx| conn.poll_next_inbound(cx)).await {
            Some(Ok(stream)) => {
                if tx.send(stream).await.is_err() {
                    break Ended::Closed;
                }
            }
            Some(Err(e)) => break Ended::Lost(io::Error::other(e)),
            None => break Ended::Lost(io::Error::from(io::ErrorKind::UnexpectedEof)),
        };
    };
    drop(conn);
    let taken = new_host.lock().map(|mut g| g.take()).unwrap_or(None);
    match (taken, ended) {
        (_, Ended::Closed) => Ended::Closed,
        (Some(bytes), _) => Ended::NewHost(bytes),
        (None, ended) => ended,
    }
}

/// Finds where a new host's preamble starts in what a yamux session reads: the first byte at
/// a frame boundary that is not yamux's version 0.
#[derive(Debug, Default)]
struct FrameWatch {
    /// Header bytes of the current frame read so far.
    header: [u8; FRAME_HEADER],
    got: usize,
    /// Body bytes of the current data frame still to come.
    body: u64,
}

impl FrameWatch {
    /// Follows `bytes`; the offset of a new host's first byte in them, if one starts there.
    fn scan(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < bytes.len() {
            if self.body > 0 {
                let take = self.body.min((bytes.len() - i) as u64);
                self.body -= take;
                i += take as usize;
                continue;
            }
            if self.got == 0 && bytes[i] != 0 {
                return Some(i);
            }
            self.header[self.got] = bytes[i];
            self.got += 1;
            i += 1;
            if self.got == FRAME_HEADER {
                self.got = 0;
                if self.header[1] == FRAME_DATA {
                    let len: [u8; 4] = [
                        self.header[8],
                        self.header[9],
                        self.header[10],
                        self.header[11],
                    ];
                    self.body = u64::from(u32::from_be_bytes(len));
                }
            }
        }
        None
    }
}

/// The port as one session sees it: `prefix` (what the last session read of this one's
/// preamble) first, then the device. Once `watch` is set (yamux reads), a new host's preamble
/// ends the reads: its bytes go to `new_host` and reading fails from there on.
struct PortIo {
    port: Arc<FdStream>,
    prefix: Vec<u8>,
    pos: usize,
    watch: Option<FrameWatch>,
    new_host: Arc<Mutex<Option<Vec<u8>>>>,
}

impl PortIo {
    fn ended(&self) -> bool {
        self.new_host.lock().map(|g| g.is_some()).unwrap_or(true)
    }
}

impl AsyncRead for PortIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.ended() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "a new host connected",
            )));
        }
        let start = buf.filled().len();
        if this.pos < this.prefix.len() {
            let n = (this.prefix.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
        } else {
            std::task::ready!(this.port.poll_read_shared(cx, buf))?;
        }
        let Some(watch) = this.watch.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        if let Some(at) = watch.scan(&buf.filled()[start..]) {
            let mut rest = buf.filled()[start + at..].to_vec();
            rest.extend_from_slice(&this.prefix[this.pos..]);
            this.pos = this.prefix.len();
            buf.set_filled(start + at);
            if let Ok(mut g) = this.new_host.lock() {
                *g = Some(rest);
            }
            if at == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "a new host connected",
                )));
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for PortIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.port.poll_write_shared(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
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

/// Opens the port's character device, non-blocking.
fn open_port(path: &Path) -> io::Result<OwnedFd> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)?;
    Ok(OwnedFd::from(file))
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

    /// A yamux frame header.
    fn header(kind: u8, stream: u32, len: u32) -> Vec<u8> {
        let mut h = vec![0, kind, 0, 0];
        h.extend_from_slice(&stream.to_be_bytes());
        h.extend_from_slice(&len.to_be_bytes());
        h
    }

    /// An old session's frames: a data frame whose body starts like a preamble, a window
    /// update whose length field is not a body, an empty data frame.
    fn old_session() -> Vec<u8> {
        let mut b = header(FRAME_DATA, 1, 6);
        b.extend_from_slice(b"WRENN-");
        b.extend(header(1, 1, 0x5752_454e));
        b.extend(header(FRAME_DATA, 3, 0));
        b
    }

    #[test]
    fn a_new_host_is_found_at_a_frame_boundary_however_the_bytes_are_split() {
        let mut bytes = old_session();
        let at = bytes.len();
        bytes.extend_from_slice(SERIAL_MUX_HELLO.as_bytes());
        for chunk in [1, 5, 12, 13, bytes.len()] {
            let mut w = FrameWatch::default();
            let mut found = None;
            for (i, c) in bytes.chunks(chunk).enumerate() {
                if let Some(off) = w.scan(c) {
                    found = Some(i * chunk + off);
                    break;
                }
            }
            assert_eq!(found, Some(at), "chunks of {chunk}");
        }
        let mut w = FrameWatch::default();
        assert_eq!(w.scan(&old_session()), None);
    }

    fn socket_pair() -> (Arc<FdStream>, std::os::unix::net::UnixStream) {
        let (a, b) = std::os::unix::net::UnixStream::pair().expect("pair");
        a.set_nonblocking(true).expect("nonblocking");
        let port = FdStream::device(OwnedFd::from(a)).expect("register");
        (Arc::new(port), b)
    }

    #[tokio::test]
    async fn a_preamble_inside_a_session_ends_it_and_is_read_as_the_next_one() {
        use std::io::Write;
        let (port, mut host) = socket_pair();
        let sync = SerialSync {
            unix_ns: 7,
            seed: [1; 32],
        };
        let mut sent = old_session();
        sent.extend_from_slice(format!("{}{SERIAL_MUX_HELLO}", sync.line()).as_bytes());
        host.write_all(&sent).expect("write");
        drop(host);
        let new_host = Arc::new(Mutex::new(None));
        let mut io = PortIo {
            port: Arc::clone(&port),
            prefix: Vec::new(),
            pos: 0,
            watch: Some(FrameWatch::default()),
            new_host: Arc::clone(&new_host),
        };
        let mut session = Vec::new();
        let err = io.read_to_end(&mut session).await.expect_err("ends");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(session, old_session());
        let carry = new_host.lock().expect("lock").take().expect("new host");
        let mut next = PortIo {
            port,
            prefix: carry,
            pos: 0,
            watch: None,
            new_host: Arc::new(Mutex::new(None)),
        };
        assert_eq!(
            read_hello(&mut next).await.expect("read"),
            Hello::Found(Preamble {
                sync: Some(sync),
                identity: None
            })
        );
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
