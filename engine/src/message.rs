//! The message that flows on every edge of the graph: data, watermarks, checkpoint
//! barriers and end of stream, in order. Order is the protocol: control never overtakes
//! data, because all of them travel in one FIFO channel.

use arrow::record_batch::RecordBatch;

/// Event time in milliseconds since the Unix epoch (UTC).
pub type EventTime = i64;

/// A watermark: "no record with an event time at or below this will follow" — or the
/// statement that an input is idle and must be left out of the minimum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watermark {
    /// All records with event time `<= t` have been seen.
    EventTime(EventTime),
    /// The input is idle: exclude it from the minimum until it sends data again.
    Idle,
}

/// A checkpoint barrier, injected at the sources by the checkpoint coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointBarrier {
    /// The checkpoint's number, increasing.
    pub epoch: u64,
    /// Wall-clock time the checkpoint was triggered (ms since epoch).
    pub timestamp_ms: i64,
    /// Whether this is a savepoint (user-triggered, retained).
    pub savepoint: bool,
}

/// A latency marker (as in Flink): stamped with the wall-clock instant a source read
/// the data it follows, it travels the same channels as the data without waiting in
/// any operator's state, and a sink records how long it took to arrive. So it measures
/// the time data spends queued and processed between ingestion and the sink, not the
/// time a window holds it. Sources emit them only when asked
/// ([`crate::runtime::RunOptions::latency_markers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencyMarker {
    /// When the source read the batch the marker follows.
    pub emitted: std::time::Instant,
}

/// One message on an edge.
#[derive(Debug, Clone)]
pub enum Message {
    /// A batch of records with the edge's schema.
    Data(RecordBatch),
    /// A watermark or an idle marker.
    Watermark(Watermark),
    /// A checkpoint barrier.
    Barrier(CheckpointBarrier),
    /// A latency marker.
    LatencyMarker(LatencyMarker),
    /// The input has ended; no message follows.
    EndOfStream,
}

impl Message {
    /// Whether the message is control (not data).
    pub fn is_control(&self) -> bool {
        !matches!(self, Message::Data(_))
    }

    /// Rows the message carries (0 for control).
    pub fn rows(&self) -> usize {
        match self {
            Message::Data(b) => b.num_rows(),
            _ => 0,
        }
    }
}
