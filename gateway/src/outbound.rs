//! A connection's bounded outbound queue: the [`EventSink`] rooms, presence
//! and the session push to, drained by the socket's writer.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use switchboard_protocol::{Bytes, CloseCode, EventSink};
use switchboard_telemetry::names;
use tokio::sync::Notify;

/// How the connection is to be closed.
#[derive(Debug, Clone)]
pub enum Closing {
    /// The server closes with this code.
    Server(CloseCode, &'static str),
    /// The client sent a close frame: echo its payload back.
    Echo(Bytes),
}

/// What the writer takes from the queue in one go.
#[derive(Default)]
pub struct Batch {
    pub events: Vec<(Bytes, Option<Instant>)>,
    pub closing: Option<Closing>,
}

#[derive(Default)]
struct Queue {
    events: VecDeque<(Bytes, Option<Instant>)>,
    closing: Option<Closing>,
}

/// The per-connection queue. Nothing that pushes to it ever waits: a full
/// queue closes the connection (1008, slow consumer) instead.
pub struct Outbound {
    queue: Mutex<Queue>,
    capacity: usize,
    /// Wakes the writer: something to write, or closing.
    ready: Notify,
    /// Set once the connection is closing (a flag, not a CancellationToken:
    /// that is an allocation of its own per connection).
    closed: AtomicBool,
    /// Milliseconds since [`epoch`] when the client last sent anything.
    last_seen_ms: AtomicU64,
    /// When the oldest queued event was queued: milliseconds since
    /// [`epoch`], wrapping (an age is far shorter than 49 days). Four bytes
    /// that fit beside `closed`, so an idle connection costs nothing more.
    oldest_ms: AtomicU32,
}

/// What a connection has queued and not yet written: its delivery lag.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Backlog {
    pub events: usize,
    pub bytes: usize,
    /// How long the oldest queued event has waited (zero when none).
    pub oldest_age: Duration,
}

/// A process-wide reference point, so that `last_seen` fits in an atomic.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds since [`epoch`], wrapping at 2^32.
fn now_ms() -> u32 {
    epoch().elapsed().as_millis() as u32
}

impl Outbound {
    pub fn new(capacity: usize) -> Self {
        let out = Self {
            queue: Mutex::new(Queue::default()),
            capacity,
            ready: Notify::new(),
            closed: AtomicBool::new(false),
            last_seen_ms: AtomicU64::new(0),
            oldest_ms: AtomicU32::new(0),
        };
        out.touch();
        out
    }

    /// Events queued and not yet taken by the writer.
    pub fn queued(&self) -> usize {
        self.queue.lock().events.len()
    }

    /// What is queued and for how long (read at scrape: it walks the queue,
    /// at most `limits.outbound_queue` events).
    pub fn backlog(&self) -> Backlog {
        let q = self.queue.lock();
        if q.events.is_empty() {
            return Backlog::default();
        }
        let waited = now_ms().wrapping_sub(self.oldest_ms.load(Ordering::Relaxed));
        Backlog {
            events: q.events.len(),
            bytes: q.events.iter().map(|(e, _)| e.len()).sum(),
            oldest_age: Duration::from_millis(u64::from(waited)),
        }
    }

    /// Records that the client sent something.
    pub fn touch(&self) {
        let ms = epoch().elapsed().as_millis() as u64;
        self.last_seen_ms.store(ms, Ordering::Relaxed);
    }

    /// Starts closing with the client's own close payload echoed.
    pub fn close_echo(&self, payload: Bytes) {
        self.begin_close(Closing::Echo(payload));
    }

    fn begin_close(&self, closing: Closing) {
        let mut q = self.queue.lock();
        if q.closing.is_some() {
            return;
        }
        q.closing = Some(closing);
        drop(q);
        self.closed.store(true, Ordering::Release);
        self.ready.notify_one();
    }

    fn enqueue(&self, event: Bytes, published: Option<Instant>) -> bool {
        let mut q = self.queue.lock();
        if q.closing.is_some() {
            return false;
        }
        if q.events.len() >= self.capacity {
            // The client is not reading fast enough. What is queued is
            // dropped with the connection; the client recovers with `since`.
            q.events.clear();
            q.closing = Some(Closing::Server(CloseCode::Policy, "slow consumer"));
            drop(q);
            metrics::counter!(names::SLOW_CONSUMERS_TOTAL).increment(1);
            self.closed.store(true, Ordering::Release);
            self.ready.notify_one();
            return false;
        }
        let was_empty = q.events.is_empty();
        if was_empty {
            // The writer takes everything at once: the first event queued
            // after it did is the oldest one waiting.
            self.oldest_ms.store(now_ms(), Ordering::Relaxed);
        }
        q.events.push_back((event, published));
        drop(q);
        if was_empty {
            self.ready.notify_one();
        }
        true
    }

    /// Waits until there is something to write, then takes all of it.
    pub async fn next_batch(&self) -> Batch {
        loop {
            {
                let mut q = self.queue.lock();
                if !q.events.is_empty() || q.closing.is_some() {
                    // The queue's buffer goes with the batch: an idle
                    // connection's queue holds no allocation.
                    return Batch {
                        events: Vec::from(std::mem::take(&mut q.events)),
                        closing: q.closing.clone(),
                    };
                }
            }
            self.ready.notified().await;
        }
    }

    /// Resolves once the connection is closing.
    pub async fn closing(&self) {
        // Only the connection's writer waits on `ready`, and never here and
        // in `next_batch` at once; a wake-up for an event is not a close.
        while !self.is_closed() {
            self.ready.notified().await;
        }
    }

    /// The close reason, once closing; `None` while open.
    pub fn closing_reason(&self) -> Option<Closing> {
        self.queue.lock().closing.clone()
    }

    pub fn idle_for(&self) -> Duration {
        epoch().elapsed().saturating_sub(Duration::from_millis(
            self.last_seen_ms.load(Ordering::Relaxed),
        ))
    }
}

impl EventSink for Outbound {
    fn push(&self, event: Bytes) -> bool {
        self.enqueue(event, None)
    }

    fn deliver(&self, event: Bytes, published: Instant) -> bool {
        self.enqueue(event, Some(published))
    }

    fn close(&self, code: CloseCode, reason: &'static str) {
        self.begin_close(Closing::Server(code, reason));
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn last_seen(&self) -> Instant {
        epoch() + Duration::from_millis(self.last_seen_ms.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn backlog_counts_what_waits_and_since_when() {
        let out = Outbound::new(8);
        assert_eq!(out.backlog(), Backlog::default());
        out.push(Bytes::from_static(b"abc"));
        tokio::time::sleep(Duration::from_millis(20)).await;
        out.push(Bytes::from_static(b"de"));
        let b = out.backlog();
        assert_eq!((b.events, b.bytes), (2, 5));
        assert!(b.oldest_age >= Duration::from_millis(20), "{b:?}");
        out.next_batch().await;
        assert_eq!(out.backlog(), Backlog::default());
    }

    #[tokio::test]
    async fn full_queue_closes_as_slow_consumer_without_waiting() {
        let out = Outbound::new(2);
        assert!(out.push(Bytes::from_static(b"a")));
        assert!(out.push(Bytes::from_static(b"b")));
        assert!(!out.push(Bytes::from_static(b"c")));
        assert!(out.is_closed());
        let batch = out.next_batch().await;
        assert!(batch.events.is_empty());
        assert!(matches!(
            batch.closing,
            Some(Closing::Server(CloseCode::Policy, "slow consumer"))
        ));
        assert!(!out.push(Bytes::from_static(b"d")));
    }

    #[tokio::test]
    async fn batch_takes_everything_queued() {
        let out = Outbound::new(10);
        for i in 0..5u8 {
            out.push(Bytes::from(vec![i]));
        }
        let batch = out.next_batch().await;
        assert_eq!(batch.events.len(), 5);
        assert!(batch.closing.is_none());
    }
}
