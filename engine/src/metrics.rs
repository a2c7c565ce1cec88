//! Counters of a running job, per node and subtask: records and bytes in and out,
//! dead letters by kind, late records, busy time, time blocked on output
//! (backpressure), input queue fill, watermark, source lag and the sinks' commit
//! durations. The tasks write them with relaxed atomics (no locks on the data
//! path); the CLI's progress line, the end-of-job summary, the REST API and the
//! Prometheus endpoint read them.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::channel::ChannelStats;

/// Dead-letter kinds counted apart ([`crate::source::DEAD_LETTER_KINDS`], then `other`).
pub const COUNTED_KINDS: [&str; 7] = [
    "decode",
    "future_time",
    "expression",
    "validation",
    "lookup",
    "sink",
    "other",
];

/// Counters of one subtask of a node.
#[derive(Debug)]
pub struct SubtaskMetrics {
    /// Rows received (sources: rows read).
    pub records_in: AtomicU64,
    /// Rows emitted on the main output (sinks: rows written).
    pub records_out: AtomicU64,
    /// Bytes received, as Arrow buffers (sources: the raw records read).
    pub bytes_in: AtomicU64,
    /// Bytes emitted on the main output, as Arrow buffers.
    pub bytes_out: AtomicU64,
    /// Batches received.
    pub batches_in: AtomicU64,
    /// Records sent to the dead-letter output.
    pub dead_letters: AtomicU64,
    /// Records that arrived behind the watermark plus allowed lateness.
    pub late_records: AtomicU64,
    /// Nanoseconds spent processing (decoding, operators, writing).
    pub busy_nanos: AtomicU64,
    /// Duration of the sink's last commit, nanoseconds.
    pub commit_nanos: AtomicU64,
    dead_letter_kinds: [AtomicU64; COUNTED_KINDS.len()],
    last_dead_letter: Mutex<Option<String>>,
    /// Watermark, ms (i64::MIN: none yet).
    watermark: AtomicI64,
    /// Sources: records waiting beyond what this subtask has read, -1 if unknown.
    lag: AtomicI64,
    /// The channels this subtask sends to (their blocked time is its backpressure).
    outputs: Mutex<Vec<Arc<ChannelStats>>>,
    /// The channels it reads (their fill is its input queue).
    inputs: Mutex<Vec<Arc<ChannelStats>>>,
}

impl Default for SubtaskMetrics {
    fn default() -> Self {
        SubtaskMetrics {
            records_in: AtomicU64::new(0),
            records_out: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            batches_in: AtomicU64::new(0),
            dead_letters: AtomicU64::new(0),
            late_records: AtomicU64::new(0),
            busy_nanos: AtomicU64::new(0),
            commit_nanos: AtomicU64::new(0),
            dead_letter_kinds: Default::default(),
            last_dead_letter: Mutex::new(None),
            watermark: AtomicI64::new(i64::MIN),
            lag: AtomicI64::new(-1),
            outputs: Mutex::new(Vec::new()),
            inputs: Mutex::new(Vec::new()),
        }
    }
}

impl SubtaskMetrics {
    /// Records the source lag.
    pub fn set_lag(&self, lag: u64) {
        self.lag
            .store(i64::try_from(lag).unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    /// The source lag, if known.
    pub fn lag(&self) -> Option<u64> {
        let l = self.lag.load(Ordering::Relaxed);
        (l >= 0).then_some(l as u64)
    }

    /// Records the watermark.
    pub fn set_watermark(&self, wm: i64) {
        self.watermark.store(wm, Ordering::Relaxed);
    }

    /// The watermark, if there is one yet.
    pub fn watermark(&self) -> Option<i64> {
        let w = self.watermark.load(Ordering::Relaxed);
        (w != i64::MIN).then_some(w)
    }

    /// Counts dead letters of `kind`, and keeps `reason` as the latest.
    pub fn dead_letter(&self, kind: &str, n: u64, reason: Option<&str>) {
        let i = COUNTED_KINDS
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(COUNTED_KINDS.len() - 1);
        self.dead_letter_kinds[i].fetch_add(n, Ordering::Relaxed);
        if let (Some(r), Ok(mut last)) = (reason, self.last_dead_letter.lock()) {
            *last = Some(r.chars().take(500).collect());
        }
    }

    /// Dead letters by kind ([`COUNTED_KINDS`] order).
    pub fn dead_letters_by_kind(&self) -> [u64; COUNTED_KINDS.len()] {
        std::array::from_fn(|i| self.dead_letter_kinds[i].load(Ordering::Relaxed))
    }

    /// The reason of the latest dead letter.
    pub fn last_dead_letter(&self) -> Option<String> {
        self.last_dead_letter.lock().ok().and_then(|l| l.clone())
    }

    /// Adds a channel this subtask sends to.
    pub fn add_output(&self, c: Arc<ChannelStats>) {
        if let Ok(mut o) = self.outputs.lock() {
            o.push(c);
        }
    }

    /// Adds a channel this subtask reads.
    pub fn add_input(&self, c: Arc<ChannelStats>) {
        if let Ok(mut i) = self.inputs.lock() {
            i.push(c);
        }
    }

    /// Nanoseconds spent blocked on full output channels.
    pub fn backpressure_nanos(&self) -> u64 {
        self.outputs.lock().map_or(0, |o| {
            o.iter()
                .map(|c| c.blocked_nanos.load(Ordering::Relaxed))
                .sum()
        })
    }

    /// How full the input channels are, 0 to 1 (None: no inputs, e.g. a source):
    /// queued rows over what senders may queue now (the capacity, or the lower limit
    /// buffer debloating set while this subtask is the bottleneck).
    pub fn input_queue_fill(&self) -> Option<f64> {
        let inputs = self.inputs.lock().ok()?;
        let capacity: u64 = inputs.iter().map(|c| c.limit()).sum();
        if capacity == 0 {
            return None;
        }
        let queued: u64 = inputs
            .iter()
            .map(|c| c.queued_rows.load(Ordering::Relaxed))
            .sum();
        Some((queued as f64 / capacity as f64).min(1.0))
    }
}

/// Counters of one node: one [`SubtaskMetrics`] per subtask.
#[derive(Debug)]
pub struct OperatorMetrics {
    subtasks: Vec<Arc<SubtaskMetrics>>,
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
            subtasks: (0..parallelism.max(1))
                .map(|_| Arc::new(SubtaskMetrics::default()))
                .collect(),
        }
    }

    /// The counters of subtask `i` (the last one if out of range).
    pub fn subtask(&self, i: usize) -> Arc<SubtaskMetrics> {
        self.subtasks[i.min(self.subtasks.len() - 1)].clone()
    }

    /// Every subtask's counters.
    pub fn subtasks(&self) -> &[Arc<SubtaskMetrics>] {
        &self.subtasks
    }

    /// A counter summed over the subtasks.
    pub fn total(&self, f: impl Fn(&SubtaskMetrics) -> &AtomicU64) -> u64 {
        self.subtasks
            .iter()
            .map(|s| f(s).load(Ordering::Relaxed))
            .sum()
    }

    /// Rows in, summed over the subtasks.
    pub fn records_in(&self) -> u64 {
        self.total(|s| &s.records_in)
    }

    /// Rows out, summed over the subtasks.
    pub fn records_out(&self) -> u64 {
        self.total(|s| &s.records_out)
    }

    /// Dead letters, summed over the subtasks.
    pub fn dead_letters(&self) -> u64 {
        self.total(|s| &s.dead_letters)
    }

    /// Late records, summed over the subtasks.
    pub fn late_records(&self) -> u64 {
        self.total(|s| &s.late_records)
    }

    /// The source's lag summed over the subtasks that know theirs, if any does.
    pub fn lag(&self) -> Option<u64> {
        let known: Vec<u64> = self.subtasks.iter().filter_map(|s| s.lag()).collect();
        (!known.is_empty()).then(|| known.iter().sum())
    }

    /// The node's watermark: the minimum over its subtasks, if all have one.
    pub fn watermark(&self) -> Option<i64> {
        self.subtasks
            .iter()
            .map(|s| s.watermark())
            .collect::<Option<Vec<i64>>>()?
            .into_iter()
            .min()
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
    /// When the job started, ms since the Unix epoch.
    pub started_ms: AtomicI64,
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
        self.sum("source", |m| m.records_in())
    }

    /// Total rows written by all sinks (dead letters excluded).
    pub fn records_written(&self) -> u64 {
        self.nodes
            .iter()
            .filter(|(n, k, _)| *k == "sink" && n != crate::graph::DEAD_LETTER_SINK)
            .map(|(_, _, m)| m.records_out())
            .sum()
    }

    /// Total dead letters.
    pub fn dead_letters(&self) -> u64 {
        self.nodes.iter().map(|(_, _, m)| m.dead_letters()).sum()
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
