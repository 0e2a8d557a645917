//! Serving over `AF_VSOCK` (`--listen-vsock PORT`): the agent's transport in a microVM, where
//! the host reaches it through vhost-vsock or a hypervisor's vsock-over-UDS forwarder.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use tokio::io::unix::AsyncFd;

use crate::fdstream::FdStream;
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
                Ok(conn) => return FdStream::socket(conn?),
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
pub type VsockConn = FdStream;
