//! Bounded runtime work: at most `N` capsule starts and `N` teardowns run at once, in arrival
//! order. A storm of creates is accepted at once (every capsule is recorded `starting` and
//! answered); the capsules beyond the bound wait in a queue, so each start takes about as long
//! as a start alone and the host's load stays a small multiple of its cores.
//!
//! A place in a [`Lane`] is taken synchronously ([`Lane::enter`]) when the request is made, not
//! when its task first runs, so the queue keeps the order in which requests arrived (tokio's
//! semaphore is fair: waiters are served first in, first out). Dropping a queued [`Place`]
//! leaves the queue (a capsule destroyed while it waits never starts).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::task::noop_waker_ref;
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

/// Starts (and teardowns) at once per host core when `--max-starting` is not given.
pub const STARTS_PER_CORE: usize = 3;

/// The bound for this host: [`STARTS_PER_CORE`] per core, at least 2.
pub fn default_width() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores * STARTS_PER_CORE).max(2)
}

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// A fair queue in front of at most `width` concurrent operations of one kind.
#[derive(Debug)]
pub struct Lane {
    permits: Arc<Semaphore>,
    width: AtomicUsize,
    queued: Arc<AtomicUsize>,
    done: AtomicU64,
}

impl Lane {
    /// A lane running `width` operations at once (at least 1).
    pub fn new(width: usize) -> Self {
        let width = width.max(1);
        Self {
            permits: Arc::new(Semaphore::new(width)),
            width: AtomicUsize::new(width),
            queued: Arc::new(AtomicUsize::new(0)),
            done: AtomicU64::new(0),
        }
    }

    /// Changes the width (at least 1). Narrowing takes effect as running operations finish.
    pub fn set_width(&self, width: usize) {
        let width = width.max(1);
        let old = self.width.swap(width, Ordering::SeqCst);
        if width > old {
            self.permits.add_permits(width - old);
        } else if width < old {
            let permits = self.permits.clone();
            let mut missing = old - width;
            missing -= permits.forget_permits(missing);
            if missing > 0 {
                // Busy permits: take them back as they are released.
                tokio::spawn(async move {
                    if let Ok(p) = permits.acquire_many_owned(missing as u32).await {
                        p.forget();
                    }
                });
            }
        }
    }

    /// Takes a place in the queue now; [`Place::ready`] waits for the turn.
    pub fn enter(&self) -> Place {
        let mut acquire: Acquire = Box::pin(self.permits.clone().acquire_owned());
        // One poll registers the waiter in the semaphore's queue in arrival order; the task
        // that later awaits the place installs its own waker.
        let mut cx = Context::from_waker(noop_waker_ref());
        match acquire.as_mut().poll(&mut cx) {
            Poll::Ready(permit) => Place(Waiting::Ready(Turn {
                _permit: permit.ok(),
            })),
            Poll::Pending => {
                self.queued.fetch_add(1, Ordering::SeqCst);
                Place(Waiting::Queued(acquire, Counted(self.queued.clone())))
            }
        }
    }

    /// Operations waiting for their turn.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    /// Operations running now.
    pub fn running(&self) -> usize {
        self.width
            .load(Ordering::SeqCst)
            .saturating_sub(self.permits.available_permits())
    }

    /// The bound.
    pub fn width(&self) -> usize {
        self.width.load(Ordering::SeqCst)
    }

    /// Operations that had their turn since start-up.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    fn finished(&self) {
        self.done.fetch_add(1, Ordering::Relaxed);
    }
}

/// Decrements a lane's queue count when a queued place leaves the queue (turn or drop).
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A place in a [`Lane`]'s queue.
#[derive(Debug)]
pub struct Place(Waiting);

enum Waiting {
    /// The turn came at once.
    Ready(Turn),
    /// Waiting in the queue: the acquire is registered; `Counted` leaves the count on drop.
    Queued(Acquire, Counted),
}

impl std::fmt::Debug for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ready(_) => f.write_str("ready"),
            Self::Queued(..) => f.write_str("queued"),
        }
    }
}

impl Place {
    /// Whether the turn came at once.
    pub fn is_ready(&self) -> bool {
        matches!(self.0, Waiting::Ready(_))
    }

    /// Waits for the turn; the operation runs while the [`Turn`] is held.
    pub async fn ready(self, lane: &Lane) -> Turn {
        let turn = match self.0 {
            Waiting::Ready(t) => t,
            Waiting::Queued(acquire, queued) => {
                // The semaphore is never closed; an error would only mean "unbounded".
                let permit = acquire.await.ok();
                drop(queued);
                Turn { _permit: permit }
            }
        };
        lane.finished();
        turn
    }
}

/// The right to run one operation; the next in the queue goes when it is dropped.
#[derive(Debug)]
pub struct Turn {
    _permit: Option<OwnedSemaphorePermit>,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn turns_come_in_arrival_order_within_the_width() {
        let lane = Arc::new(Lane::new(2));
        let a = lane.enter();
        let b = lane.enter();
        let places: Vec<Place> = (0..5).map(|_| lane.enter()).collect();
        assert!(a.is_ready() && b.is_ready());
        assert_eq!(lane.queued(), 5);
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // Spawned in reverse: the order still follows `enter`.
        for (i, p) in places.into_iter().enumerate().rev() {
            let (lane, order) = (lane.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _turn = p.ready(&lane).await;
                order.lock().unwrap().push(i);
                assert!(lane.running() <= 2);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            order.lock().unwrap().is_empty(),
            "nobody goes before a turn"
        );
        drop((a, b));
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4]);
        assert_eq!((lane.queued(), lane.running()), (0, 0));
    }

    #[tokio::test]
    async fn a_dropped_place_leaves_the_queue() {
        let lane = Lane::new(1);
        let first = lane.enter().ready(&lane).await;
        let gone = lane.enter();
        let next = lane.enter();
        assert_eq!(lane.queued(), 2);
        drop(gone);
        assert_eq!(lane.queued(), 1);
        drop(first);
        let _t = tokio::time::timeout(Duration::from_secs(1), next.ready(&lane))
            .await
            .expect("the next place gets the turn");
        assert_eq!(lane.running(), 1);
    }

    #[tokio::test]
    async fn width_can_change() {
        let lane = Lane::new(1);
        lane.set_width(3);
        let turns: Vec<_> = (0..3).map(|_| lane.enter()).collect();
        assert!(turns.iter().all(Place::is_ready));
        drop(turns);
        lane.set_width(1);
        let _one = lane.enter();
        assert!(!lane.enter().is_ready());
    }
}
