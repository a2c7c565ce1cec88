//! Bounded channels between subtasks, bounded by *rows* rather than by messages, so that
//! a few huge batches cannot blow memory. A sender waits for row permits before it
//! sends; the receiver returns them when it takes the message. Every message costs at
//! least one permit, so control messages are bounded too. The time a sender spends
//! waiting is the edge's backpressure, counted in [`ChannelStats`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::sync::{mpsc, Semaphore};

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
}

impl ChannelStats {
    /// The channel's capacity in rows.
    pub fn capacity(&self) -> u64 {
        self.capacity.load(Ordering::Relaxed)
    }
}

struct Shared {
    permits: Semaphore,
    capacity: u32,
    stats: Arc<ChannelStats>,
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
}

/// The receiver has gone: the downstream task ended or failed.
#[derive(Debug, thiserror::Error)]
#[error("channel closed: the downstream task has stopped")]
pub struct Closed;

/// Creates a channel that holds at most `capacity_rows` rows (at least 1).
pub fn channel(capacity_rows: usize) -> (Sender, Receiver) {
    let capacity = capacity_rows.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize)) as u32;
    let shared = Arc::new(Shared {
        permits: Semaphore::new(capacity as usize),
        capacity,
        stats: Arc::new(ChannelStats {
            capacity: AtomicU64::new(u64::from(capacity)),
            ..ChannelStats::default()
        }),
    });
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Sender {
            tx,
            shared: shared.clone(),
        },
        Receiver { rx, shared },
    )
}

impl Sender {
    /// Sends a message, waiting while the channel is full.
    pub async fn send(&self, msg: Message) -> Result<(), Closed> {
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
                self.shared
                    .stats
                    .queued_rows
                    .fetch_sub(msg.rows() as u64, Ordering::Relaxed);
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
