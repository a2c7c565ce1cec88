//! Bounded channels between subtasks, bounded by *rows* rather than by messages, so that
//! a few huge batches cannot blow memory. A sender waits for row permits before it
//! sends; the receiver returns them when it takes the message. Every message costs at
//! least one permit, so control messages are bounded too. The time a sender spends
//! waiting is the edge's backpressure, counted in [`ChannelStats`].
//!
//! **Buffer debloating** (Flink's, [`Debloat`]): when the consumer is the bottleneck (its
//! queue never drains), the receiver measures how many rows per second it takes and
//! lowers a *soft limit* to `throughput × target` rows; a sender waits while the queue
//! is over it (a message into an empty queue always passes). A checkpoint barrier
//! queued behind the data then waits about `target` per hop instead of a full channel
//! (16k rows at a few hundred rows per second is minutes). While the queue drains, the
//! limit doubles each period, up to the capacity.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify, Semaphore};

use crate::message::Message;

/// Counters of one channel.
#[derive(Debug, Default)]
pub struct ChannelStats {
    /// Nanoseconds senders spent blocked waiting for capacity.
    pub blocked_nanos: AtomicU64,
    /// Rows currently queued.
    pub queued_rows: AtomicU64,
    /// Largest number of rows ever queued at once.
    pub peak_rows: AtomicU64,
    /// The channel's capacity in rows.
    capacity: AtomicU64,
    /// The soft limit buffer debloating set (the capacity without it), rows.
    limit: AtomicU64,
}

impl ChannelStats {
    /// The channel's capacity in rows.
    pub fn capacity(&self) -> u64 {
        self.capacity.load(Ordering::Relaxed)
    }

    /// The rows a sender may queue now: the capacity, or less while buffer debloating
    /// holds the queue to its consumer's throughput × target.
    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }
}

/// Buffer debloating settings (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Debloat {
    /// The time a full queue should take its consumer to drain.
    pub target: Duration,
    /// The soft limit never goes below this many rows.
    pub min_rows: u64,
}

impl Default for Debloat {
    fn default() -> Self {
        Debloat {
            target: Duration::from_secs(1),
            min_rows: 256,
        }
    }
}

/// How often the receiver re-measures its throughput.
const DEBLOAT_PERIOD: Duration = Duration::from_millis(200);
/// The soft limit before the first measurement: a slow consumer's queue does not fill
/// the whole capacity while the first period runs (a fast one lifts it after one period).
const DEBLOAT_INITIAL_ROWS: u64 = 4096;

struct Shared {
    permits: Semaphore,
    capacity: u32,
    stats: Arc<ChannelStats>,
    /// Wakes senders waiting on the soft limit.
    room: Notify,
    /// A sender waits on `room`.
    waiting: AtomicBool,
}

/// The receiver's throughput measurement.
struct Measure {
    settings: Debloat,
    started: Instant,
    rows: u64,
    /// The queue was empty at some point of the period: the consumer keeps up.
    drained: bool,
}

/// The sending half. Cloneable only through [`channel`]; one sender per edge.
pub struct Sender {
    tx: mpsc::UnboundedSender<(Message, u32)>,
    shared: Arc<Shared>,
}

/// The receiving half.
pub struct Receiver {
    rx: mpsc::UnboundedReceiver<(Message, u32)>,
    shared: Arc<Shared>,
    measure: Option<Measure>,
}

/// The receiver has gone: the downstream task ended or failed.
#[derive(Debug, thiserror::Error)]
#[error("channel closed: the downstream task has stopped")]
pub struct Closed;

/// Creates a channel that holds at most `capacity_rows` rows (at least 1).
pub fn channel(capacity_rows: usize) -> (Sender, Receiver) {
    channel_with(capacity_rows, None)
}

/// Creates a channel that holds at most `capacity_rows` rows (at least 1), with buffer
/// debloating when `debloat` is given.
pub fn channel_with(capacity_rows: usize, debloat: Option<Debloat>) -> (Sender, Receiver) {
    let capacity = capacity_rows.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize)) as u32;
    let shared = Arc::new(Shared {
        permits: Semaphore::new(capacity as usize),
        capacity,
        stats: Arc::new(ChannelStats {
            capacity: AtomicU64::new(u64::from(capacity)),
            limit: AtomicU64::new(match debloat {
                Some(d) => DEBLOAT_INITIAL_ROWS
                    .max(d.min_rows)
                    .min(u64::from(capacity)),
                None => u64::from(capacity),
            }),
            ..ChannelStats::default()
        }),
        room: Notify::new(),
        waiting: AtomicBool::new(false),
    });
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Sender {
            tx,
            shared: shared.clone(),
        },
        Receiver {
            rx,
            shared,
            measure: debloat.map(|settings| Measure {
                settings,
                started: Instant::now(),
                rows: 0,
                drained: false,
            }),
        },
    )
}

impl Sender {
    /// Whether a message of `rows` rows must wait for the soft limit.
    fn over_limit(&self, rows: u64) -> bool {
        let st = &self.shared.stats;
        let queued = st.queued_rows.load(Ordering::SeqCst);
        queued > 0 && queued + rows > st.limit.load(Ordering::Relaxed)
    }

    /// Waits while the queue is over the debloated soft limit.
    async fn wait_for_room(&self, rows: u64) -> Result<(), Closed> {
        let start = Instant::now();
        loop {
            let notified = self.shared.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.shared.waiting.store(true, Ordering::SeqCst);
            if !self.over_limit(rows) {
                break;
            }
            if self.shared.permits.is_closed() {
                return Err(Closed);
            }
            notified.await;
        }
        self.shared
            .stats
            .blocked_nanos
            .fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Sends a message, waiting while the channel is full.
    pub async fn send(&self, msg: Message) -> Result<(), Closed> {
        if self.over_limit(msg.rows() as u64) {
            self.wait_for_room(msg.rows() as u64).await?;
        }
        let cost = (msg.rows().max(1) as u64).min(self.shared.capacity as u64) as u32;
        let permit = match self.shared.permits.try_acquire_many(cost) {
            Ok(p) => p,
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                let start = Instant::now();
                let p = self
                    .shared
                    .permits
                    .acquire_many(cost)
                    .await
                    .map_err(|_| Closed)?;
                self.shared
                    .stats
                    .blocked_nanos
                    .fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
                p
            }
            Err(tokio::sync::TryAcquireError::Closed) => return Err(Closed),
        };
        permit.forget();
        let q = self
            .shared
            .stats
            .queued_rows
            .fetch_add(msg.rows() as u64, Ordering::Relaxed)
            + msg.rows() as u64;
        self.shared.stats.peak_rows.fetch_max(q, Ordering::Relaxed);
        self.tx.send((msg, cost)).map_err(|_| Closed)
    }

    /// The channel's counters.
    pub fn stats(&self) -> Arc<ChannelStats> {
        self.shared.stats.clone()
    }
}

impl Receiver {
    /// Receives the next message; `None` when every sender has gone.
    pub async fn recv(&mut self) -> Option<Message> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next message, returning its permits to the senders.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some((msg, cost))) => {
                self.shared.permits.add_permits(cost as usize);
                let rows = msg.rows() as u64;
                let left = self
                    .shared
                    .stats
                    .queued_rows
                    .fetch_sub(rows, Ordering::SeqCst)
                    .saturating_sub(rows);
                if let Some(m) = self.measure.as_mut() {
                    m.rows += rows;
                    m.drained |= left == 0;
                    let elapsed = m.started.elapsed();
                    if elapsed >= DEBLOAT_PERIOD {
                        let capacity = u64::from(self.shared.capacity);
                        let limit = if m.drained {
                            // The consumer kept up: its rate says little about what it
                            // could take. Grow, but not at once to the capacity (a
                            // moment of starved producers would undo the limit).
                            self.shared
                                .stats
                                .limit
                                .load(Ordering::Relaxed)
                                .saturating_mul(2)
                        } else {
                            let rate = m.rows as f64 / elapsed.as_secs_f64();
                            (rate * m.settings.target.as_secs_f64()) as u64
                        }
                        .clamp(m.settings.min_rows.min(capacity), capacity);
                        self.shared.stats.limit.store(limit, Ordering::Relaxed);
                        m.started = Instant::now();
                        m.rows = 0;
                        m.drained = false;
                    }
                }
                if self.shared.waiting.swap(false, Ordering::SeqCst) {
                    self.shared.room.notify_waiters();
                }
                Poll::Ready(Some(msg))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    /// The channel's counters.
    pub fn stats(&self) -> Arc<ChannelStats> {
        self.shared.stats.clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        // Wake blocked senders so that they see the closed channel.
        self.shared.permits.close();
        self.shared.room.notify_waiters();
    }
}

/// Receives from several inputs fairly, skipping inputs that are blocked (for barrier
/// alignment) or finished. Yields `(input index, message)`.
pub struct InputSet {
    inputs: Vec<Option<Receiver>>,
    blocked: Vec<bool>,
    next: usize,
}

impl InputSet {
    /// Wraps the receivers; their order gives the input indexes.
    pub fn new(inputs: Vec<Receiver>) -> Self {
        let n = inputs.len();
        InputSet {
            inputs: inputs.into_iter().map(Some).collect(),
            blocked: vec![false; n],
            next: 0,
        }
    }

    /// Number of inputs, finished or not.
    pub fn len(&self) -> usize {
        self.inputs.len()
    }

    /// Whether there are no inputs at all.
    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty()
    }

    /// Stops (or resumes) reading one input.
    pub fn set_blocked(&mut self, input: usize, blocked: bool) {
        if let Some(b) = self.blocked.get_mut(input) {
            *b = blocked;
        }
    }

    /// Marks an input finished; it is not polled again.
    pub fn finish(&mut self, input: usize) {
        if let Some(slot) = self.inputs.get_mut(input) {
            *slot = None;
        }
    }

    /// Whether every input has finished.
    pub fn all_finished(&self) -> bool {
        self.inputs.iter().all(Option::is_none)
    }

    /// The next message from any unblocked input; `None` when no input can yield one
    /// (all finished). A sender that vanished without EndOfStream is reported as
    /// `Some((i, None))` so that the caller can fail the job.
    pub async fn recv(&mut self) -> Option<(usize, Option<Message>)> {
        std::future::poll_fn(|cx| self.poll(cx)).await
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<(usize, Option<Message>)>> {
        let n = self.inputs.len();
        let mut any_open = false;
        for k in 0..n {
            let i = (self.next + k) % n;
            if self.blocked[i] {
                if self.inputs[i].is_some() {
                    any_open = true;
                }
                continue;
            }
            if let Some(rx) = self.inputs[i].as_mut() {
                any_open = true;
                match rx.poll_recv(cx) {
                    Poll::Ready(Some(m)) => {
                        self.next = (i + 1) % n;
                        return Poll::Ready(Some((i, Some(m))));
                    }
                    Poll::Ready(None) => {
                        self.inputs[i] = None;
                        return Poll::Ready(Some((i, None)));
                    }
                    Poll::Pending => {}
                }
            }
        }
        if any_open {
            Poll::Pending
        } else {
            Poll::Ready(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::record_batch::RecordBatch;
    use std::time::Duration;

    fn batch(rows: usize) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let col = Int64Array::from_iter_values(0..rows as i64);
        RecordBatch::try_new(schema, vec![Arc::new(col)]).expect("valid batch")
    }

    #[tokio::test]
    async fn sender_blocks_when_rows_exceed_capacity() {
        let (tx, mut rx) = channel(100);
        tx.send(Message::Data(batch(60))).await.expect("send");
        // 60 + 60 > 100: the second send must wait until the first is received.
        let second =
            tokio::time::timeout(Duration::from_millis(50), tx.send(Message::Data(batch(60))));
        assert!(second.await.is_err(), "second send should block");
        assert_eq!(rx.recv().await.map(|m| m.rows()), Some(60));
        tokio::time::timeout(
            Duration::from_millis(500),
            tx.send(Message::Data(batch(60))),
        )
        .await
        .expect("send proceeds after receive")
        .expect("open");
        assert_eq!(rx.recv().await.map(|m| m.rows()), Some(60));
        assert!(tx.stats().peak_rows.load(Ordering::Relaxed) <= 100);
    }

    #[tokio::test]
    async fn huge_batch_still_passes_alone() {
        let (tx, mut rx) = channel(10);
        tx.send(Message::Data(batch(1000))).await.expect("send");
        assert_eq!(rx.recv().await.map(|m| m.rows()), Some(1000));
    }

    #[tokio::test]
    async fn order_is_preserved_and_control_does_not_overtake() {
        let (tx, mut rx) = channel(1000);
        tx.send(Message::Data(batch(3))).await.expect("send");
        tx.send(Message::Watermark(crate::message::Watermark::EventTime(5)))
            .await
            .expect("send");
        tx.send(Message::EndOfStream).await.expect("send");
        assert!(matches!(rx.recv().await, Some(Message::Data(_))));
        assert!(matches!(rx.recv().await, Some(Message::Watermark(_))));
        assert!(matches!(rx.recv().await, Some(Message::EndOfStream)));
    }

    #[tokio::test]
    async fn closed_receiver_unblocks_sender() {
        let (tx, rx) = channel(1);
        tx.send(Message::Data(batch(1))).await.expect("send");
        let t = tokio::spawn(async move { tx.send(Message::Data(batch(1))).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(rx);
        let r = tokio::time::timeout(Duration::from_secs(1), t)
            .await
            .expect("sender woke up")
            .expect("task ok");
        assert!(r.is_err());
    }

    /// A consumer that takes 50 rows every 10 ms (≤ 5k rows/s) from a 100k-row channel:
    /// with debloating (target 100 ms) the queue settles near 500 rows, without it the
    /// producer fills the whole capacity.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn debloating_holds_a_slow_consumers_queue_to_its_target() {
        for debloat in [false, true] {
            let settings = Debloat {
                target: Duration::from_millis(100),
                min_rows: 50,
            };
            let (tx, mut rx) = channel_with(100_000, debloat.then_some(settings));
            let stats = tx.stats();
            let producer =
                tokio::spawn(
                    async move { while tx.send(Message::Data(batch(50))).await.is_ok() {} },
                );
            let mut queued_late = 0;
            for i in 0..200 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                assert!(rx.recv().await.is_some());
                if i >= 160 {
                    queued_late = queued_late.max(stats.queued_rows.load(Ordering::Relaxed));
                }
            }
            drop(rx);
            let _ = producer.await;
            if debloat {
                assert!(
                    queued_late <= 2_000,
                    "debloated queue {queued_late} rows (limit {})",
                    stats.limit()
                );
                assert!(stats.limit() < 100_000);
            } else {
                assert!(queued_late > 90_000, "plain queue {queued_late} rows");
                assert_eq!(stats.limit(), 100_000);
            }
        }
    }

    #[tokio::test]
    async fn a_drained_queue_raises_the_soft_limit() {
        let settings = Debloat {
            target: Duration::from_millis(1),
            min_rows: 10,
        };
        let (tx, mut rx) = channel_with(1_000, Some(settings));
        // Slow, never drained: the limit falls to the minimum.
        for _ in 0..5 {
            tx.send(Message::Data(batch(10))).await.expect("send");
        }
        tokio::time::sleep(DEBLOAT_PERIOD).await;
        assert!(rx.recv().await.is_some());
        assert_eq!(tx.stats().limit(), 10);
        // A message into a non-empty queue over the limit waits...
        let blocked =
            tokio::time::timeout(Duration::from_millis(50), tx.send(Message::Data(batch(10))));
        assert!(blocked.await.is_err(), "must wait for the soft limit");
        // ...and the queue drains: each period doubles the limit, up to the capacity.
        while tx.stats().queued_rows.load(Ordering::Relaxed) > 0 {
            assert!(rx.recv().await.is_some());
        }
        for want in [20, 40, 80] {
            tokio::time::sleep(DEBLOAT_PERIOD).await;
            tx.send(Message::Data(batch(10)))
                .await
                .expect("send into an empty queue");
            assert!(rx.recv().await.is_some());
            assert_eq!(tx.stats().limit(), want);
        }
    }

    #[tokio::test]
    async fn input_set_skips_blocked_inputs() {
        let (t0, r0) = channel(10);
        let (t1, r1) = channel(10);
        let mut set = InputSet::new(vec![r0, r1]);
        t0.send(Message::Data(batch(1))).await.expect("send");
        t1.send(Message::Data(batch(2))).await.expect("send");
        set.set_blocked(0, true);
        let (i, m) = set.recv().await.expect("message");
        assert_eq!(i, 1);
        assert_eq!(m.map(|m| m.rows()), Some(2));
        set.set_blocked(0, false);
        let (i, _) = set.recv().await.expect("message");
        assert_eq!(i, 0);
    }
}
