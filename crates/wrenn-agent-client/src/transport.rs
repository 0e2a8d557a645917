//! Connecting to an agent endpoint: one boxed byte stream for every transport, so HTTP and
//! WebSocket code never knows which one it speaks over.
//!
//! - `Unix`: connect to the socket.
//! - `HybridVsock` (Firecracker's and Cloud Hypervisor's vsock-over-UDS):
//!   1. connect to the host unix socket;
//!   2. write `CONNECT <port>\n`;
//!   3. read one line, which must be `OK <host port>\n`; anything else (or EOF) refuses;
//!   4. from then on the socket is a byte stream to the guest's port.
//! - `Vsock`: an `AF_VSOCK` stream socket connected to `(cid, port)`.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, VsockAddr};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::UnixStream;
use wrenn_types::agent::AgentEndpoint;

/// A connected byte stream to an agent, whatever the transport.
pub trait AgentIo: AsyncRead + AsyncWrite + Send + Unpin + std::fmt::Debug {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + std::fmt::Debug> AgentIo for T {}

/// The stream every request and WebSocket runs over.
pub type AgentStream = Box<dyn AgentIo>;

/// Longest handshake answer line read before giving up.
const MAX_HANDSHAKE_LINE: usize = 64;
/// How long the hybrid handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens a byte stream to `endpoint`.
pub(crate) async fn connect(endpoint: &AgentEndpoint) -> io::Result<AgentStream> {
    match endpoint {
        AgentEndpoint::Unix { path } => Ok(Box::new(UnixStream::connect(path).await?)),
        AgentEndpoint::HybridVsock { path, port } => {
            let stream = UnixStream::connect(path).await?;
            let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, hybrid_handshake(stream, *port))
                .await
                .map_err(|_| {
                    io::Error::new(io::ErrorKind::TimedOut, "vsock handshake timed out")
                })??;
            Ok(Box::new(stream))
        }
        AgentEndpoint::Vsock { cid, port } => {
            Ok(Box::new(VsockStream::connect(*cid, *port).await?))
        }
    }
}

/// Speaks the `CONNECT <port>` handshake on `stream`; the stream then reaches the guest port.
async fn hybrid_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    port: u32,
) -> io::Result<S> {
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await?;
    // Byte by byte: whatever follows the line already belongs to the guest's stream.
    let mut line = Vec::new();
    loop {
        let b = stream.read_u8().await.map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                refused(&line, "connection closed")
            } else {
                e
            }
        })?;
        if b == b'\n' {
            break;
        }
        line.push(b);
        if line.len() > MAX_HANDSHAKE_LINE {
            return Err(refused(&line, "answer too long"));
        }
    }
    let text = String::from_utf8_lossy(&line);
    match text.strip_prefix("OK ") {
        Some(n) if n.trim().parse::<u32>().is_ok() => Ok(stream),
        _ => Err(refused(&line, "unexpected answer")),
    }
}

fn refused(line: &[u8], why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionRefused,
        format!(
            "vsock handshake refused ({why}): {:?}",
            String::from_utf8_lossy(line)
        ),
    )
}

/// A non-blocking `AF_VSOCK` stream registered with the tokio reactor.
#[derive(Debug)]
pub struct VsockStream {
    fd: AsyncFd<OwnedFd>,
}

impl VsockStream {
    /// Connects to `port` of the guest with context id `cid`.
    pub async fn connect(cid: u32, port: u32) -> io::Result<Self> {
        let fd = socket::socket(
            AddressFamily::Vsock,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        let addr = VsockAddr::new(cid, port);
        match socket::connect(fd.as_raw_fd(), &addr) {
            Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => {}
            Err(e) => return Err(e.into()),
        }
        // `AsyncFd::new` is deprecated because a `T: AsRawFd` need not own its descriptor; an
        // `OwnedFd` does, so this use is sound. Its successor `register` is `unsafe`, which this
        // crate forbids.
        #[allow(deprecated)]
        let fd = AsyncFd::new(fd)?;
        // connect(2): a non-blocking connect completes when the socket turns writable, and
        // SO_ERROR then tells whether it succeeded.
        let mut guard = fd.writable().await?;
        match socket::getsockopt(&fd.get_ref().as_fd(), socket::sockopt::SocketError)? {
            0 => {}
            errno => return Err(io::Error::from_raw_os_error(errno)),
        }
        guard.retain_ready();
        drop(guard);
        Ok(Self { fd })
    }
}

impl AsyncRead for VsockStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| Ok(nix::unistd::read(fd.get_ref().as_raw_fd(), unfilled)?)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for VsockStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| Ok(nix::unistd::write(fd.get_ref(), buf)?)) {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(
            socket::shutdown(self.fd.get_ref().as_raw_fd(), socket::Shutdown::Write)
                .map_err(io::Error::from),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn handshake_accepts_ok_and_keeps_what_follows() {
        let (client, mut forwarder) = tokio::io::duplex(256);
        let fwd = tokio::spawn(async move {
            let mut buf = [0u8; 13];
            forwarder.read_exact(&mut buf).await.expect("connect line");
            assert_eq!(&buf, b"CONNECT 1024\n");
            forwarder
                .write_all(b"OK 1073741824\nguest")
                .await
                .expect("answer");
            forwarder
        });
        let mut stream = hybrid_handshake(client, 1024).await.expect("handshake");
        let mut rest = [0u8; 5];
        stream.read_exact(&mut rest).await.expect("rest");
        assert_eq!(&rest, b"guest");
        fwd.await.expect("forwarder");
    }

    #[tokio::test]
    async fn handshake_refusals() {
        for answer in [&b"NO\n"[..], b"OK\n", b"OK x\n", b"", b"OK 1", &[b'O'; 100]] {
            let (client, mut forwarder) = tokio::io::duplex(256);
            let reply = answer.to_vec();
            tokio::spawn(async move {
                let mut buf = [0u8; 10];
                let _ = forwarder.read_exact(&mut buf).await;
                let _ = forwarder.write_all(&reply).await;
            });
            let e = hybrid_handshake(client, 52).await.expect_err("refused");
            assert_eq!(
                e.kind(),
                io::ErrorKind::ConnectionRefused,
                "{answer:?}: {e}"
            );
        }
    }
}
