//! A non-blocking byte-stream fd (a vsock connection, a virtio-serial port) as tokio I/O.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::sys;

/// A stream over a non-blocking fd, read and written through the reactor.
#[derive(Debug)]
pub struct FdStream {
    fd: AsyncFd<OwnedFd>,
    /// Whether `poll_shutdown` half-closes the fd (sockets); devices have no half-close.
    socket: bool,
}

impl FdStream {
    /// A socket: shutdown half-closes its write side.
    pub fn socket(fd: OwnedFd) -> io::Result<Self> {
        Ok(Self {
            fd: sys::async_fd(fd)?,
            socket: true,
        })
    }

    /// A character device: shutdown does nothing.
    pub fn device(fd: OwnedFd) -> io::Result<Self> {
        Ok(Self {
            fd: sys::async_fd(fd)?,
            socket: false,
        })
    }

    /// The fd, no longer registered with the reactor.
    pub fn into_inner(self) -> OwnedFd {
        self.fd.into_inner()
    }

    /// [`AsyncRead::poll_read`] through a shared reference.
    pub fn poll_read_shared(
        &self,
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

    /// [`AsyncWrite::poll_write`] through a shared reference.
    pub fn poll_write_shared(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| sys::write_fd(fd.get_ref().as_fd(), buf)) {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncRead for FdStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.poll_read_shared(cx, buf)
    }
}

impl AsyncWrite for FdStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_shared(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.socket {
            return Poll::Ready(Ok(()));
        }
        let fd = self.fd.get_ref().as_raw_fd();
        Poll::Ready(
            nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Write)
                .map_err(io::Error::from),
        )
    }
}
