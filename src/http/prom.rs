//! The Prometheus exposition of the jobs' counters: a `prometheus-client` collector that
//! reads the live atomics at each scrape (nothing is copied or kept between scrapes).
//! Names follow Prometheus conventions: `weir_` prefix, the unit as a suffix, `_total`
//! on counters; per-node series are labelled `job`, `node` and `subtask`.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use weir_engine::metrics::{SubtaskMetrics, COUNTED_KINDS};

use super::{now_ms, Jobs};

/// Every metric family the endpoint exports, as the samples are named (for the docs and
/// the check of `deploy/`).
pub const EXPORTED: &[&str] = &[
    "weir_records_in_total",
    "weir_records_out_total",
    "weir_input_bytes_total",
    "weir_output_bytes_total",
    "weir_busy_seconds_total",
    "weir_idle_seconds_total",
    "weir_backpressured_seconds_total",
    "weir_late_records_total",
    "weir_dead_letters_total",
    "weir_input_queue_fill_ratio",
    "weir_watermark_timestamp_seconds",
    "weir_watermark_lag_seconds",
    "weir_source_lag_records",
    "weir_sink_commit_duration_seconds",
    "weir_checkpoints_total",
    "weir_checkpoint_failures_total",
    "weir_checkpoint_duration_seconds",
    "weir_checkpoint_sync_duration_seconds",
    "weir_checkpoint_size_bytes",
    "weir_checkpoint_uploaded_bytes",
    "weir_state_size_bytes",
    "weir_last_checkpoint_timestamp_seconds",
    "weir_job_uptime_seconds",
];

#[derive(Debug)]
struct JobsCollector(Jobs);

type Labels = Vec<(&'static str, String)>;

/// A per-subtask counter: name, help, unit, how to read it, scale.
type CounterDef = (
    &'static str,
    &'static str,
    Option<Unit>,
    fn(&SubtaskMetrics) -> u64,
    f64,
);

/// One family: its samples as (labels, value).
struct Family {
    name: &'static str,
    help: &'static str,
    unit: Option<Unit>,
    counter: bool,
    samples: Vec<(Labels, f64)>,
}

impl Family {
    fn new(name: &'static str, help: &'static str, unit: Option<Unit>, counter: bool) -> Self {
        Family {
            name,
            help,
            unit,
            counter,
            samples: Vec::new(),
        }
    }

    fn encode(&self, encoder: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        if self.samples.is_empty() {
            return Ok(());
        }
        let ty = if self.counter {
            MetricType::Counter
        } else {
            MetricType::Gauge
        };
        let mut m = encoder.encode_descriptor(self.name, self.help, self.unit.as_ref(), ty)?;
        for (labels, v) in &self.samples {
            let f = m.encode_family(labels)?;
            if self.counter {
                ConstCounter::new(*v).encode(f)?;
            } else {
                ConstGauge::new(*v).encode(f)?;
            }
        }
        Ok(())
    }
}

const NANOS: f64 = 1e9;

impl Collector for JobsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let jobs = self.0.list();
        let other = |s: &str| Some(Unit::Other(s.to_string()));
        let per_subtask: [CounterDef; 5] = [
            (
                "weir_records_in",
                "Records received (sources: read).",
                None,
                |s| s.records_in.load(std::sync::atomic::Ordering::Relaxed),
                1.0,
            ),
            (
                "weir_records_out",
                "Records emitted on the main output (sinks: written).",
                None,
                |s| s.records_out.load(std::sync::atomic::Ordering::Relaxed),
                1.0,
            ),
            (
                "weir_input",
                "Bytes received, as Arrow buffers (sources: the raw records).",
                Some(Unit::Bytes),
                |s| s.bytes_in.load(std::sync::atomic::Ordering::Relaxed),
                1.0,
            ),
            (
                "weir_output",
                "Bytes emitted on the main output, as Arrow buffers.",
                Some(Unit::Bytes),
                |s| s.bytes_out.load(std::sync::atomic::Ordering::Relaxed),
                1.0,
            ),
            (
                "weir_late_records",
                "Records behind the watermark plus allowed lateness.",
                None,
                |s| s.late_records.load(std::sync::atomic::Ordering::Relaxed),
                1.0,
            ),
        ];
        let mut counters: Vec<Family> = per_subtask
            .iter()
            .map(|(n, h, u, _, _)| Family::new(n, h, u.clone(), true))
            .collect();
        let mut busy = Family::new(
            "weir_busy",
            "Time spent processing.",
            Some(Unit::Seconds),
            true,
        );
        let mut idle = Family::new(
            "weir_idle",
            "Time neither processing nor blocked on output (waiting for input).",
            Some(Unit::Seconds),
            true,
        );
        let mut blocked = Family::new(
            "weir_backpressured",
            "Time blocked on full output channels (backpressure).",
            Some(Unit::Seconds),
            true,
        );
        let mut dead = Family::new(
            "weir_dead_letters",
            "Records sent to the dead-letter output, by kind.",
            None,
            true,
        );
        let mut fill = Family::new(
            "weir_input_queue_fill",
            "How full the input channels are (0 to 1).",
            other("ratio"),
            false,
        );
        let mut wm = Family::new(
            "weir_watermark_timestamp",
            "The event-time watermark.",
            Some(Unit::Seconds),
            false,
        );
        let mut wm_lag = Family::new(
            "weir_watermark_lag",
            "Wall clock minus the watermark.",
            Some(Unit::Seconds),
            false,
        );
        let mut lag = Family::new(
            "weir_source_lag",
            "Records waiting beyond what the source subtask read (Kafka consumer lag).",
            other("records"),
            false,
        );
        let mut commit = Family::new(
            "weir_sink_commit_duration",
            "Duration of the sink subtask's last commit.",
            Some(Unit::Seconds),
            false,
        );
        let mut ckpts = Family::new("weir_checkpoints", "Checkpoints completed.", None, true);
        let mut ckpt_fail = Family::new(
            "weir_checkpoint_failures",
            "Checkpoints and savepoints aborted.",
            None,
            true,
        );
        let mut ckpt_dur = Family::new(
            "weir_checkpoint_duration",
            "Duration of the last completed checkpoint.",
            Some(Unit::Seconds),
            false,
        );
        let mut ckpt_sync = Family::new(
            "weir_checkpoint_sync_duration",
            "Synchronous part of the last completed checkpoint: the longest time a task held its barrier (operator snapshots, timers, the backend's snapshot, the sink's pre-commit).",
            Some(Unit::Seconds),
            false,
        );
        let mut ckpt_size = Family::new(
            "weir_checkpoint_size",
            "State the last completed checkpoint refers to.",
            Some(Unit::Bytes),
            false,
        );
        let mut ckpt_up = Family::new(
            "weir_checkpoint_uploaded",
            "Bytes the last completed checkpoint uploaded.",
            Some(Unit::Bytes),
            false,
        );
        let mut state = Family::new(
            "weir_state_size",
            "Keyed state of the job, as of its last checkpoint.",
            Some(Unit::Bytes),
            false,
        );
        let mut last_ckpt = Family::new(
            "weir_last_checkpoint_timestamp",
            "When the last checkpoint completed.",
            Some(Unit::Seconds),
            false,
        );
        let mut uptime = Family::new(
            "weir_job_uptime",
            "Time since the job started.",
            Some(Unit::Seconds),
            false,
        );
        let now = now_ms();
        for job in &jobs {
            let jl: Labels = vec![("job", job.name.clone())];
            let started = job
                .metrics
                .started_ms
                .load(std::sync::atomic::Ordering::Relaxed);
            let up_ms = (now - started).max(0) as f64;
            uptime.samples.push((jl.clone(), up_ms / 1e3));
            for (node, _kind, m) in &job.metrics.nodes {
                for (i, s) in m.subtasks().iter().enumerate() {
                    let l: Labels = vec![
                        ("job", job.name.clone()),
                        ("node", node.clone()),
                        ("subtask", i.to_string()),
                    ];
                    for (f, (_, _, _, get, scale)) in counters.iter_mut().zip(per_subtask.iter()) {
                        f.samples.push((l.clone(), get(s) as f64 * scale));
                    }
                    let b = s.busy_nanos.load(std::sync::atomic::Ordering::Relaxed) as f64 / NANOS;
                    let bp = s.backpressure_nanos() as f64 / NANOS;
                    busy.samples.push((l.clone(), b));
                    blocked.samples.push((l.clone(), bp));
                    idle.samples
                        .push((l.clone(), (up_ms / 1e3 - b - bp).max(0.0)));
                    for (k, n) in COUNTED_KINDS.iter().zip(s.dead_letters_by_kind()) {
                        let mut kl = l.clone();
                        kl.push(("kind", k.to_string()));
                        dead.samples.push((kl, n as f64));
                    }
                    if let Some(q) = s.input_queue_fill() {
                        fill.samples.push((l.clone(), q));
                    }
                    if let Some(w) = s.watermark().filter(|w| *w > i64::MIN && *w < i64::MAX) {
                        wm.samples.push((l.clone(), w as f64 / 1e3));
                        wm_lag.samples.push((l.clone(), (now - w) as f64 / 1e3));
                    }
                    if let Some(x) = s.lag() {
                        lag.samples.push((l.clone(), x as f64));
                    }
                    if *_kind == "sink" {
                        let c = s.commit_nanos.load(std::sync::atomic::Ordering::Relaxed);
                        commit.samples.push((l, c as f64 / NANOS));
                    }
                }
            }
            if let Some(c) = &job.checkpoints {
                let g = |a: &std::sync::atomic::AtomicU64| {
                    a.load(std::sync::atomic::Ordering::Relaxed) as f64
                };
                ckpts.samples.push((jl.clone(), g(&c.completed)));
                ckpt_fail.samples.push((jl.clone(), g(&c.aborted)));
                ckpt_dur
                    .samples
                    .push((jl.clone(), g(&c.last_duration_ms) / 1e3));
                ckpt_sync
                    .samples
                    .push((jl.clone(), g(&c.last_sync_us) / 1e6));
                ckpt_size.samples.push((jl.clone(), g(&c.last_state_bytes)));
                ckpt_up
                    .samples
                    .push((jl.clone(), g(&c.last_uploaded_bytes)));
                state.samples.push((jl.clone(), g(&c.last_state_bytes)));
                let last = c
                    .last_completed_ms
                    .load(std::sync::atomic::Ordering::Relaxed);
                if last > 0 {
                    last_ckpt.samples.push((jl, last as f64 / 1e3));
                }
            }
        }
        counters.extend([busy, idle, blocked, dead]);
        for f in counters.iter().chain([
            &fill, &wm, &wm_lag, &lag, &commit, &ckpts, &ckpt_fail, &ckpt_dur, &ckpt_sync,
            &ckpt_size, &ckpt_up, &state, &last_ckpt, &uptime,
        ]) {
            f.encode(&mut encoder)?;
        }
        Ok(())
    }
}

/// A registry exporting the jobs' metrics.
pub(super) fn registry(jobs: Jobs) -> Arc<Registry> {
    let mut r = Registry::default();
    r.register_collector(Box::new(JobsCollector(jobs)));
    Arc::new(r)
}

/// The exposition text (OpenMetrics, which Prometheus reads).
pub(super) fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}
