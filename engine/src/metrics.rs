//! Counters of a running job, per logical node (summed over its subtasks): records in
//! and out, dead letters, late records, watermark, and time blocked on output
//! (backpressure). The CLI's progress line and the end-of-job summary read them; a later
//! issue exports them to Prometheus.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

/// Counters of one node.
#[derive(Debug)]
pub struct OperatorMetrics {
    /// Rows received (sources: rows read).
    pub records_in: AtomicU64,
    /// Rows emitted on the main output (sinks: rows written).
    pub records_out: AtomicU64,
    /// Batches received.
    pub batches_in: AtomicU64,
    /// Records sent to the dead-letter output.
    pub dead_letters: AtomicU64,
    /// Records that arrived behind the watermark plus allowed lateness.
    pub late_records: AtomicU64,
    /// Nanoseconds spent waiting for downstream capacity.
    pub backpressure_nanos: AtomicU64,
    /// Lowest watermark over the node's subtasks, ms (i64::MIN: none yet).
    watermarks: Vec<AtomicI64>,
    /// Sources: records waiting beyond what each subtask has read (e.g. Kafka
    /// consumer lag), -1 where unknown.
    lags: Vec<AtomicI64>,
}

impl Default for OperatorMetrics {
    fn default() -> Self {
        Self::new(1)
    }
}

impl OperatorMetrics {
    /// Counters for a node with `parallelism` subtasks.
    pub fn new(parallelism: usize) -> Self {
        OperatorMetrics {
            records_in: AtomicU64::new(0),
            records_out: AtomicU64::new(0),
            batches_in: AtomicU64::new(0),
            dead_letters: AtomicU64::new(0),
            late_records: AtomicU64::new(0),
            backpressure_nanos: AtomicU64::new(0),
            watermarks: (0..parallelism.max(1))
                .map(|_| AtomicI64::new(i64::MIN))
                .collect(),
            lags: (0..parallelism.max(1))
                .map(|_| AtomicI64::new(-1))
                .collect(),
        }
    }

    /// Records subtask `subtask`'s source lag.
    pub fn set_lag(&self, subtask: usize, lag: u64) {
        if let Some(l) = self.lags.get(subtask) {
            l.store(i64::try_from(lag).unwrap_or(i64::MAX), Ordering::Relaxed);
        }
    }

    /// The source's lag summed over the subtasks that know theirs, if any does.
    pub fn lag(&self) -> Option<u64> {
        let known: Vec<i64> = self
            .lags
            .iter()
            .map(|l| l.load(Ordering::Relaxed))
            .filter(|&l| l >= 0)
            .collect();
        (!known.is_empty()).then(|| known.iter().map(|&l| l as u64).sum())
    }

    /// Records subtask `subtask`'s watermark.
    pub fn set_watermark(&self, subtask: usize, wm: i64) {
        if let Some(w) = self.watermarks.get(subtask) {
            w.store(wm, Ordering::Relaxed);
        }
    }

    /// The node's watermark: the minimum over its subtasks, if all have one.
    pub fn watermark(&self) -> Option<i64> {
        let min = self
            .watermarks
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .min()?;
        (min != i64::MIN).then_some(min)
    }

    /// Adds to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Counters of a whole job: one [`OperatorMetrics`] per logical node.
#[derive(Debug, Default)]
pub struct JobMetrics {
    /// `(node name, kind, counters)` in graph order.
    pub nodes: Vec<(String, &'static str, Arc<OperatorMetrics>)>,
    /// Latency samples recorded by the sinks from latency markers.
    pub latency: LatencyRecorder,
}

/// Most latency samples kept; later ones are dropped (a bench run takes far fewer).
const MAX_LATENCY_SAMPLES: usize = 1 << 20;

/// Ingestion-to-sink latencies measured with latency markers, in microseconds.
#[derive(Debug, Default)]
pub struct LatencyRecorder {
    samples: std::sync::Mutex<Vec<u64>>,
}

/// Percentiles of the recorded latencies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LatencySummary {
    /// Markers that reached a sink.
    pub samples: u64,
    /// Median, microseconds.
    pub p50_us: u64,
    /// 99th percentile, microseconds.
    pub p99_us: u64,
    /// Largest, microseconds.
    pub max_us: u64,
}

impl LatencyRecorder {
    /// Records one marker's latency.
    pub fn record(&self, latency: std::time::Duration) {
        let us = latency.as_micros().min(u64::MAX as u128) as u64;
        if let Ok(mut s) = self.samples.lock() {
            if s.len() < MAX_LATENCY_SAMPLES {
                s.push(us);
            }
        }
    }

    /// Percentiles so far (nearest rank); `None` without samples.
    pub fn summary(&self) -> Option<LatencySummary> {
        let mut s = self.samples.lock().ok()?.clone();
        if s.is_empty() {
            return None;
        }
        s.sort_unstable();
        let rank = |q: f64| s[((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1];
        Some(LatencySummary {
            samples: s.len() as u64,
            p50_us: rank(0.50),
            p99_us: rank(0.99),
            max_us: s[s.len() - 1],
        })
    }
}

impl JobMetrics {
    /// Total rows read by all sources.
    pub fn records_read(&self) -> u64 {
        self.sum("source", |m| OperatorMetrics::get(&m.records_in))
    }

    /// Total rows written by all sinks (dead letters excluded).
    pub fn records_written(&self) -> u64 {
        self.nodes
            .iter()
            .filter(|(n, k, _)| *k == "sink" && n != crate::graph::DEAD_LETTER_SINK)
            .map(|(_, _, m)| OperatorMetrics::get(&m.records_out))
            .sum()
    }

    /// Total dead letters.
    pub fn dead_letters(&self) -> u64 {
        self.nodes
            .iter()
            .map(|(_, _, m)| OperatorMetrics::get(&m.dead_letters))
            .sum()
    }

    /// Records waiting in the sources beyond what they read (Kafka consumer lag), if
    /// any source knows.
    pub fn source_lag(&self) -> Option<u64> {
        let lags: Vec<u64> = self
            .nodes
            .iter()
            .filter(|(_, k, _)| *k == "source")
            .filter_map(|(_, _, m)| m.lag())
            .collect();
        (!lags.is_empty()).then(|| lags.iter().sum())
    }

    /// The lowest watermark over the sinks' inputs, if any.
    pub fn watermark(&self) -> Option<i64> {
        self.nodes
            .iter()
            .filter(|(_, k, _)| *k == "sink")
            .filter_map(|(_, _, m)| m.watermark())
            .min()
    }

    fn sum(&self, kind: &str, f: impl Fn(&OperatorMetrics) -> u64) -> u64 {
        self.nodes
            .iter()
            .filter(|(_, k, _)| *k == kind)
            .map(|(_, _, m)| f(m))
            .sum()
    }
}
