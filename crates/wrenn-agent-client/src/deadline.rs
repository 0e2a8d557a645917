//! Deadlines of calls to the agent. The agent runs in a capsule, whose code may stop it
//! (SIGSTOP), starve it or make it hang, so no call may wait on it without bound:
//!
//! - connecting (with a vsock handshake) has [`Deadlines::connect`];
//! - a request has [`Deadlines::request`] from being sent to its answer's head (a refused
//!   answer's error body included), and again to read a JSON answer's body; a WebSocket's
//!   upgrade has it too;
//! - a foreground exec waits its own timeout plus [`Deadlines::exec_grace`] (the agent kills
//!   the process and answers when the timeout runs out);
//! - an upload fails when the agent has not taken the next chunk for [`Deadlines::request`],
//!   or has not answered that long after the last byte ([`Upload`]).
//!
//! Streams once set up (a download's bytes, WebSocket traffic) have no deadline: their reader
//! decides how long to wait.

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use hyper::body::{Body, Frame, SizeHint};

/// How long each phase of a call to the agent may take (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// Connecting to the endpoint.
    pub connect: Duration,
    /// Waiting for an answer's head, reading a JSON body, an upload's progress.
    pub request: Duration,
    /// Added to a foreground exec's own timeout.
    pub exec_grace: Duration,
}

impl Default for Deadlines {
    /// 5 s to connect, 20 s per request, 5 s of exec grace: a stuck agent is reported well
    /// before an SDK's 30 s read timeout (or its exec's `timeout + 10` s).
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            request: Duration::from_secs(20),
            exec_grace: Duration::from_secs(5),
        }
    }
}

/// The phase of a call that ran out of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Connecting.
    Connect,
    /// Waiting for the answer's head or body (or a WebSocket upgrade).
    Answer,
    /// The agent stopped taking an upload's bytes.
    Upload,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Connect => "connect",
            Self::Answer => "answer",
            Self::Upload => "take the upload",
        })
    }
}

/// Where an upload is.
const SOURCE: u8 = 0;
const AGENT: u8 = 1;
const DONE: u8 = 2;

/// The progress of an upload body, shared between the body (which hyper polls as the agent
/// takes bytes) and [`Upload::stalled`].
#[derive(Debug)]
pub(crate) struct Upload {
    /// [`SOURCE`]: waiting for the caller's next chunk (not the agent's fault); [`AGENT`]: a
    /// chunk was handed over and the agent has not taken it; [`DONE`]: the body ended.
    state: AtomicU8,
    since: Mutex<Instant>,
}

impl Upload {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            state: AtomicU8::new(SOURCE),
            since: Mutex::new(Instant::now()),
        })
    }

    fn set(&self, state: u8) {
        let mut since = self.since.lock().unwrap_or_else(|p| p.into_inner());
        *since = Instant::now();
        self.state.store(state, Ordering::Release);
    }

    /// The caller's next chunk arrived while nobody was asking: from now on the wait is the
    /// agent's (hyper asks for more only when the agent has taken what it holds).
    fn source_ready(&self) {
        let mut since = self.since.lock().unwrap_or_else(|p| p.into_inner());
        if self
            .state
            .compare_exchange(SOURCE, AGENT, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            *since = Instant::now();
        }
    }

    /// Resolves once the agent has waited on for `limit`: a chunk not taken, or no answer after
    /// the last byte. Never resolves while the caller's own stream is slow.
    pub(crate) async fn stalled(&self, limit: Duration) -> Phase {
        let tick = (limit / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        loop {
            tokio::time::sleep(tick).await;
            let state = self.state.load(Ordering::Acquire);
            let since = *self.since.lock().unwrap_or_else(|p| p.into_inner());
            if state != SOURCE && since.elapsed() >= limit {
                return if state == DONE {
                    Phase::Answer
                } else {
                    Phase::Upload
                };
            }
        }
    }
}

/// A request body that reports its progress to an [`Upload`]; its size and end pass through.
pub(crate) struct Watched<B> {
    inner: B,
    upload: Arc<Upload>,
}

impl<B: Body> Watched<B> {
    pub(crate) fn new(inner: B, upload: Arc<Upload>) -> Self {
        // A body over before it starts (a GET's) is never asked for: the wait is the answer's.
        if inner.is_end_stream() {
            upload.set(DONE);
        }
        Self { inner, upload }
    }
}

/// Wakes the body's poller when the caller's next chunk arrives, and marks that from then on
/// the upload waits on the agent: a poller stuck writing to a stopped agent never asks again,
/// so without this a chunk that arrived after a `Pending` would never count as stalled.
struct SourceWaker {
    upload: Arc<Upload>,
    poller: Waker,
}

impl Wake for SourceWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.upload.source_ready();
        self.poller.wake_by_ref();
    }
}

impl<B: Body + Unpin> Body for Watched<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        // Asked for more: the agent took everything so far.
        self.upload.set(SOURCE);
        let waker = Waker::from(Arc::new(SourceWaker {
            upload: Arc::clone(&self.upload),
            poller: cx.waker().clone(),
        }));
        let polled = Pin::new(&mut self.inner).poll_frame(&mut Context::from_waker(&waker));
        match &polled {
            // hyper does not ask past a declared length, so the last chunk ends the upload.
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.upload.set(DONE),
            Poll::Ready(Some(Ok(_))) => self.upload.set(AGENT),
            Poll::Ready(_) => self.upload.set(DONE),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use futures_util::stream;
    use http_body_util::{BodyExt, Empty, Full, StreamBody};

    use super::*;

    fn chunks<S>(s: S) -> StreamBody<S> {
        StreamBody::new(s)
    }

    fn data(b: &'static [u8]) -> Result<Frame<Bytes>, ()> {
        Ok(Frame::data(Bytes::from_static(b)))
    }

    #[tokio::test]
    async fn an_untaken_chunk_stalls_but_a_slow_source_does_not() {
        let upload = Upload::new();
        let limit = Duration::from_millis(50);
        // A source that never yields: the caller is slow, not the agent.
        let mut pending = Watched::new(
            chunks(stream::pending::<Result<Frame<Bytes>, ()>>()),
            Arc::clone(&upload),
        );
        assert!(futures_util::poll!(pending.frame()).is_pending());
        assert!(tokio::time::timeout(limit * 4, upload.stalled(limit))
            .await
            .is_err());
        // A chunk handed over and never asked past.
        let upload = Upload::new();
        let mut two = Watched::new(
            chunks(stream::iter([data(b"1"), data(b"2")])),
            Arc::clone(&upload),
        );
        assert!(two.frame().await.is_some());
        assert_eq!(upload.stalled(limit).await, Phase::Upload);
        // The whole body taken and no answer.
        assert!(two.frame().await.is_some());
        assert!(two.frame().await.is_none());
        assert_eq!(upload.stalled(limit).await, Phase::Answer);
    }

    #[tokio::test]
    async fn a_body_of_known_length_ends_with_its_last_chunk_and_an_empty_one_at_once() {
        let limit = Duration::from_millis(50);
        // hyper never asks past a declared length: the last chunk is the end.
        let upload = Upload::new();
        let mut full = Watched::new(Full::new(Bytes::from_static(b"x")), Arc::clone(&upload));
        assert_eq!(full.size_hint().exact(), Some(1));
        assert!(full.frame().await.is_some());
        assert_eq!(upload.stalled(limit).await, Phase::Answer);
        // A body empty from the start is never asked for.
        let upload = Upload::new();
        let empty = Watched::new(Empty::<Bytes>::new(), Arc::clone(&upload));
        assert!(empty.is_end_stream());
        assert_eq!(upload.stalled(limit).await, Phase::Answer);
    }

    #[tokio::test]
    async fn a_chunk_that_arrives_while_nobody_asks_stalls() {
        let upload = Upload::new();
        let limit = Duration::from_millis(50);
        // A one-slot source: a chunk, and the waker of whoever asked while it was empty.
        type Slot = (Option<&'static [u8]>, Option<Waker>);
        let slot: Arc<Mutex<Slot>> = Arc::default();
        let source = {
            let slot = Arc::clone(&slot);
            stream::poll_fn(move |cx| {
                let mut slot = slot.lock().unwrap();
                match slot.0.take() {
                    Some(b) => Poll::Ready(Some(data(b))),
                    None => {
                        slot.1 = Some(cx.waker().clone());
                        Poll::Pending
                    }
                }
            })
        };
        let mut body = Watched::new(chunks(source), Arc::clone(&upload));
        // Asked while the caller had nothing: not stalled...
        assert!(futures_util::poll!(body.frame()).is_pending());
        assert!(tokio::time::timeout(limit * 4, upload.stalled(limit))
            .await
            .is_err());
        // ...until the caller's chunk arrives and the poller (stuck on the agent) never asks.
        let waker = {
            let mut slot = slot.lock().unwrap();
            slot.0 = Some(b"1");
            slot.1.take().expect("the poller's waker")
        };
        waker.wake();
        assert_eq!(upload.stalled(limit).await, Phase::Upload);
    }
}
