//! Serving over `AF_VSOCK` (`--listen-vsock PORT`): the agent's transport in a microVM, where
//! the host reaches it through vhost-vsock or a hypervisor's vsock-over-UDS forwarder.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::sys;

/// A listening vsock socket; axum serves on it like on a unix listener.
#[derive(Debug)]
pub struct VsockListener {
    fd: AsyncFd<OwnedFd>,
    port: u32,
}

impl VsockListener {
    /// Listens on `port` of every local context id.
    pub fn bind(port: u32) -> io::Result<Self> {
        Ok(Self {
            fd: sys::async_fd(sys::vsock_listen(port)?)?,
            port,
        })
    }

    async fn accept_one(&self) -> io::Result<VsockConn> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| sys::accept_nonblocking(fd.get_ref().as_fd())) {
                Ok(conn) => {
                    return Ok(VsockConn {
                        fd: sys::async_fd(conn?)?,
                    })
                }
                Err(_would_block) => continue,
            }
        }
    }
}

impl axum::serve::Listener for VsockListener {
    type Io = VsockConn;
    /// The listening port.
    type Addr = u32;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.accept_one().await {
                Ok(conn) => return (conn, self.port),
                Err(error) => {
                    // As axum's own listeners: a full descriptor table clears up with time.
                    tracing::warn!(%error, "vsock accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.port)
    }
}

/// One accepted vsock connection.
#[derive(Debug)]
pub struct VsockConn {
    fd: AsyncFd<OwnedFd>,
}

impl AsyncRead for VsockConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| sys::read_fd(fd.get_ref().as_fd(), unfilled)) {
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

impl AsyncWrite for VsockConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| sys::write_fd(fd.get_ref().as_fd(), buf)) {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let fd = self.fd.get_ref().as_raw_fd();
        Poll::Ready(
            nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Write)
                .map_err(io::Error::from),
        )
    }
}
