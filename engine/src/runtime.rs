//! The task runtime: wires a [`PhysicalPlan`] into tokio tasks — one per chain subtask —
//! joined by bounded channels, and drives them. A task reads its inputs fairly, keeps
//! the minimum watermark over them, aligns checkpoint barriers, pushes every batch
//! through its chain of operators and routes the output (forward, hash through key
//! groups, broadcast or rebalance). Source tasks poll their source, decode raw bytes,
//! send bad records to the dead-letter output and generate watermarks per split. The job
//! ends when every sink has seen end of stream; the first error stops every task.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::batch::split_by_target;
use crate::channel::{channel_with, ChannelStats, InputSet, Sender};
use crate::checkpoint::coordinator::{
    CheckpointStats, Coordinator, CoordinatorChannels, CoordinatorRequest, CoordinatorSetup,
    TaskEvent,
};
use crate::checkpoint::metadata::{CheckpointKind, SubtaskState};
use crate::checkpoint::task::{
    open_backend, restore_table_log, restored_watermarks, ExtraState, LogBytes, LogChains,
    PreparedLog, PreparedMember, RestorePoint, TaskCheckpointing, WorkingDirs,
};
use crate::checkpoint::{CheckpointConfig, CheckpointStorage, StateBackendConfig};
use crate::error::{EngineError, Result};
use crate::graph::{LogicalGraph, NodeId, NodeKind, StreamRef, DEAD_LETTER_OUTPUT};
use crate::message::{CheckpointBarrier, EventTime, LatencyMarker, Message, Watermark};
use crate::metrics::{JobMetrics, OperatorMetrics, SubtaskMetrics};
use crate::operator::{Collector, Operator, OperatorContext, TableSnapshot};
use crate::planner::PhysicalPlan;
use crate::registry::Partitioning;
use crate::sink::{Sink, SinkContext, SinkRecovery};
use crate::source::{dead_letters_to_batch, Decoder, Source, SourceContext, SourcePoll};
use crate::state::{
    hash_columns, key_group_for_hash, subtask_for_key_group, InMemoryStateBackend, KeyGroupRange,
    PreparedSnapshot, TableLogWriter, TimerService,
};
use crate::time::{WatermarkCombiner, WatermarkGenerator};

/// Counts a dead-letter batch by kind on `m`, and keeps its last reason.
fn count_dead_letters(m: &SubtaskMetrics, b: &RecordBatch) {
    use arrow::array::{Array, StringArray};
    let col = |name: &str| {
        b.column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
    };
    let (Some(kinds), reasons) = (col("kind"), col("reason")) else {
        m.dead_letter("other", b.num_rows() as u64, None);
        return;
    };
    for i in 0..b.num_rows() {
        let kind = if kinds.is_valid(i) {
            kinds.value(i)
        } else {
            "other"
        };
        let last = (i + 1 == b.num_rows())
            .then(|| reasons.filter(|r| r.is_valid(i)).map(|r| r.value(i)))
            .flatten();
        m.dead_letter(kind, 1, last);
    }
}

/// Per-node figures at the end of a job.
#[derive(Debug, Clone)]
pub struct NodeSummary {
    /// Node name.
    pub name: String,
    /// `source`, `step` or `sink`.
    pub kind: &'static str,
    /// Subtasks.
    pub parallelism: usize,
    /// Rows in.
    pub records_in: u64,
    /// Rows out.
    pub records_out: u64,
    /// Dead letters.
    pub dead_letters: u64,
    /// Late records.
    pub late_records: u64,
    /// Time blocked on full output channels, summed over subtasks.
    pub backpressure: Duration,
}

/// What a finished job did.
#[derive(Debug, Clone)]
pub struct JobSummary {
    /// The job's name.
    pub job: String,
    /// Wall-clock run time.
    pub elapsed: Duration,
    /// Per node, in graph order.
    pub nodes: Vec<NodeSummary>,
    /// Largest number of rows queued in any one channel.
    pub peak_channel_rows: u64,
    /// Checkpoints taken, when the job checkpoints.
    pub checkpoints: Option<CheckpointSummary>,
    /// Set when the job was stopped after a checkpoint (it resumes from it when run
    /// again) rather than running to its end.
    pub stopped_at_checkpoint: Option<u64>,
    /// Ingestion-to-sink latency from latency markers, when they were on
    /// ([`RunOptions::latency_markers`]) and at least one reached a sink.
    pub latency: Option<crate::metrics::LatencySummary>,
    /// The checkpoint the job resumed from, if it did: its epoch and whether the job had
    /// already finished in it (then nothing new was read).
    pub restored_from: Option<(u64, bool)>,
    /// Where each sink's output went (sink name, location), in graph order; the
    /// dead-letter output is the sink named [`crate::graph::DEAD_LETTER_SINK`].
    pub outputs: Vec<(String, String)>,
}

/// Checkpoint figures of a job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckpointSummary {
    /// Completed checkpoints (the final one included).
    pub completed: u64,
    /// Aborted ones.
    pub aborted: u64,
    /// The last completed epoch.
    pub last_epoch: u64,
    /// Its duration, ms.
    pub last_duration_ms: u64,
    /// Bytes it uploaded.
    pub last_uploaded_bytes: u64,
    /// Bytes of state it refers to.
    pub last_state_bytes: u64,
    /// Bytes uploaded by all checkpoints.
    pub total_uploaded_bytes: u64,
    /// Sum of all completed checkpoints' durations, ms.
    pub total_duration_ms: u64,
    /// The longest completed checkpoint, ms.
    pub max_duration_ms: u64,
    /// The longest synchronous part of a task in any completed checkpoint, µs.
    pub max_sync_us: u64,
    /// Sum over completed checkpoints of their longest synchronous part, µs.
    pub total_sync_us: u64,
}

impl CheckpointSummary {
    fn from_stats(s: &CheckpointStats) -> Self {
        let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        CheckpointSummary {
            completed: g(&s.completed),
            aborted: g(&s.aborted),
            last_epoch: g(&s.last_epoch),
            last_duration_ms: g(&s.last_duration_ms),
            last_uploaded_bytes: g(&s.last_uploaded_bytes),
            last_state_bytes: g(&s.last_state_bytes),
            total_uploaded_bytes: g(&s.total_uploaded_bytes),
            total_duration_ms: g(&s.total_duration_ms),
            max_duration_ms: g(&s.max_duration_ms),
            max_sync_us: g(&s.max_sync_us),
            total_sync_us: g(&s.total_sync_us),
        }
    }
}

impl JobSummary {
    /// Rows read by all sources.
    pub fn records_read(&self) -> u64 {
        self.nodes
            .iter()
            .filter(|n| n.kind == "source")
            .map(|n| n.records_in)
            .sum()
    }

    /// Rows written by a sink, by name.
    pub fn sink_rows(&self, sink: &str) -> Option<u64> {
        self.nodes
            .iter()
            .find(|n| n.kind == "sink" && n.name == sink)
            .map(|n| n.records_out)
    }

    /// Dead letters over all nodes.
    pub fn dead_letters(&self) -> u64 {
        self.nodes.iter().map(|n| n.dead_letters).sum()
    }
}

impl std::fmt::Display for JobSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        writeln!(
            f,
            "job {} finished in {:.2}s: {} records read ({:.0}/s), {} dead letters",
            self.job,
            secs,
            self.records_read(),
            self.records_read() as f64 / secs,
            self.dead_letters()
        )?;
        match self.restored_from {
            Some((epoch, true)) => writeln!(
                f,
                "  resumed from checkpoint {epoch}, in which the job had already finished: \
                 nothing new to read (`weir run --fresh` starts over)"
            )?,
            Some((epoch, false)) => writeln!(f, "  resumed from checkpoint {epoch}")?,
            None => {}
        }
        let late: u64 = self.nodes.iter().map(|n| n.late_records).sum();
        if late > 0 {
            writeln!(
                f,
                "  late records: {late} arrived behind the watermark (dropped, or sent to a \
                 step's `late` output where one is read; see the `late` column)"
            )?;
        }
        for (sink, location) in &self.outputs {
            let rows = self.sink_rows(sink).unwrap_or(0);
            if sink == crate::graph::DEAD_LETTER_SINK {
                writeln!(f, "  dead letters: {rows} -> {location}")?;
            } else {
                writeln!(f, "  output {sink}: {rows} rows -> {location}")?;
            }
        }
        if let Some(c) = &self.checkpoints {
            writeln!(
                f,
                "  checkpoints: {} completed, {} aborted; last #{} took {} ms, uploaded {} of {} bytes of state; {} bytes uploaded in all",
                c.completed,
                c.aborted,
                c.last_epoch,
                c.last_duration_ms,
                c.last_uploaded_bytes,
                c.last_state_bytes,
                c.total_uploaded_bytes
            )?;
        }
        if let Some(l) = &self.latency {
            writeln!(
                f,
                "  latency (ingestion to sink, {} markers): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                l.samples,
                l.p50_us as f64 / 1000.0,
                l.p99_us as f64 / 1000.0,
                l.max_us as f64 / 1000.0
            )?;
        }
        if let Some(e) = self.stopped_at_checkpoint {
            writeln!(
                f,
                "  stopped after checkpoint {e}: run the job again to resume from it"
            )?;
        }
        writeln!(
            f,
            "  {:<20} {:<6} {:>3} {:>12} {:>12} {:>8} {:>8} {:>10}",
            "node", "kind", "par", "in", "out", "dlq", "late", "blocked"
        )?;
        for n in &self.nodes {
            writeln!(
                f,
                "  {:<20} {:<6} {:>3} {:>12} {:>12} {:>8} {:>8} {:>9.2}s",
                n.name,
                n.kind,
                n.parallelism,
                n.records_in,
                n.records_out,
                n.dead_letters,
                n.late_records,
                n.backpressure.as_secs_f64()
            )?;
        }
        Ok(())
    }
}

/// A started job: its live metrics and the future of its end.
pub struct JobHandle {
    /// Live counters (for progress display).
    pub metrics: Arc<JobMetrics>,
    /// Reads of the queryable steps' state.
    pub queries: Arc<crate::query::QueryRegistry>,
    /// Checkpoint counters, when the job checkpoints.
    pub checkpoints: Option<Arc<CheckpointStats>>,
    /// The checkpoint the job was restored from, if any.
    pub restored_from: Option<(u64, CheckpointKind)>,
    done: tokio::task::JoinHandle<Result<JobSummary>>,
    stop: Arc<AtomicBool>,
    requests: Option<mpsc::UnboundedSender<CoordinatorRequest>>,
    cancel: Arc<tokio::sync::Notify>,
    stopped_at: Arc<std::sync::atomic::AtomicU64>,
    runtime: tokio::runtime::Handle,
}

impl JobHandle {
    /// Waits for the job to end.
    pub async fn wait(self) -> Result<JobSummary> {
        self.done
            .await
            .map_err(|e| EngineError::Runtime(format!("job supervisor failed: {e}")))?
    }

    /// Whether the job has ended.
    pub fn is_finished(&self) -> bool {
        self.done.is_finished()
    }

    /// Stops the job (its tasks are cancelled; sinks publish nothing more).
    pub fn abort(&self) {
        self.done.abort();
    }

    /// Stops the job gracefully: see [`JobControl::stop`].
    pub fn stop(&self) {
        self.control().stop();
    }

    /// A handle that can stop or abort the job while another task waits for it.
    pub fn control(&self) -> JobControl {
        JobControl {
            stop: self.stop.clone(),
            abort: self.done.abort_handle(),
            requests: self.requests.clone(),
            cancel: self.cancel.clone(),
            stopped_at: self.stopped_at.clone(),
            runtime: self.runtime.clone(),
        }
    }
}

/// Stops or aborts a running job from anywhere (e.g. a signal handler).
#[derive(Clone)]
pub struct JobControl {
    stop: Arc<AtomicBool>,
    abort: tokio::task::AbortHandle,
    requests: Option<mpsc::UnboundedSender<CoordinatorRequest>>,
    cancel: Arc<tokio::sync::Notify>,
    stopped_at: Arc<std::sync::atomic::AtomicU64>,
    runtime: tokio::runtime::Handle,
}

impl JobControl {
    /// Stops the job gracefully.
    ///
    /// Without checkpoints it drains: every source stops reading and ends its input as
    /// if it were bounded (a final watermark fires every window), so that every sink
    /// flushes and publishes what it has. With checkpoints it takes a checkpoint, waits
    /// until every sink committed it and cancels the tasks: windows keep their state and
    /// the job resumes from that checkpoint when run again. [`JobHandle::wait`] then
    /// returns (an error if the job was cancelled).
    pub fn stop(&self) {
        let Some(requests) = self.requests.clone() else {
            self.stop.store(true, Ordering::Relaxed);
            return;
        };
        let (tx, rx) = oneshot::channel();
        if requests
            .send(CoordinatorRequest::StopWithCheckpoint(tx))
            .is_err()
        {
            return;
        }
        let cancel = self.cancel.clone();
        let stopped_at = self.stopped_at.clone();
        self.runtime.spawn(async move {
            match rx.await {
                Ok(Ok(epoch)) => {
                    info!(
                        epoch,
                        "stopped after checkpoint {epoch}; run the job again to resume"
                    );
                    stopped_at.store(epoch, Ordering::Relaxed);
                    cancel.notify_one();
                }
                Ok(Err(e)) => warn!(error = %e, "stop: the checkpoint failed; the job goes on"),
                Err(_) => {}
            }
        });
    }

    /// Takes a savepoint of the running job; its name once complete.
    pub async fn savepoint(&self) -> Result<String> {
        let requests = self.requests.clone().ok_or_else(|| {
            EngineError::Checkpoint("the job does not checkpoint: no savepoint can be taken".into())
        })?;
        let (tx, rx) = oneshot::channel();
        requests
            .send(CoordinatorRequest::Savepoint(tx))
            .map_err(|_| EngineError::Checkpoint("the job has ended".into()))?;
        rx.await
            .map_err(|_| EngineError::Checkpoint("the job ended before the savepoint".into()))?
    }

    /// Stops the job with a savepoint (Flink's stop-with-savepoint): sinks commit it,
    /// then the tasks are cancelled; the job resumes from it (`--restore NAME`) exactly
    /// where it stopped. Returns the savepoint's name once the sinks committed.
    pub async fn stop_with_savepoint(&self) -> Result<String> {
        let requests = self.requests.clone().ok_or_else(|| {
            EngineError::Checkpoint("the job does not checkpoint: no savepoint can be taken".into())
        })?;
        let (tx, rx) = oneshot::channel();
        requests
            .send(CoordinatorRequest::StopWithSavepoint(tx))
            .map_err(|_| EngineError::Checkpoint("the job has ended".into()))?;
        let epoch = rx
            .await
            .map_err(|_| EngineError::Checkpoint("the job ended before the savepoint".into()))??;
        info!(epoch, "stopped with a savepoint");
        self.stopped_at.store(epoch, Ordering::Relaxed);
        self.cancel.notify_one();
        Ok(crate::checkpoint::coordinator::savepoint_name(epoch))
    }

    /// Cancels every task at once; sinks publish nothing more.
    pub fn abort(&self) {
        self.abort.abort();
    }
}

/// Where a job's state comes from when it starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Restore {
    /// The latest completed checkpoint of a job with the same name in the job's
    /// checkpoint storage, if there is one (the default with checkpoints).
    #[default]
    Auto,
    /// Start empty, ignoring existing checkpoints (new ones are numbered after them).
    Fresh,
    /// The latest completed checkpoint; an error if there is none.
    Latest,
    /// A checkpoint or savepoint: an epoch (`12`), `chk-12`, a savepoint name, or the
    /// path or URL of a checkpoint directory.
    From(String),
}

/// How to run a job beyond its graph.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Checkpoints, if the job takes them.
    pub checkpoint: Option<CheckpointConfig>,
    /// The keyed state backend of keyed steps.
    pub state_backend: StateBackendConfig,
    /// Where state comes from.
    pub restore: Restore,
    /// Sources emit a [latency marker](crate::message::LatencyMarker) this often, and
    /// sinks record how long markers took to arrive ([`JobSummary::latency`]). Off
    /// (`None`) by default; `weir bench` turns it on.
    pub latency_markers: Option<Duration>,
}

/// Runs `graph` to completion (bounded jobs) or until an error.
pub async fn run(graph: LogicalGraph) -> Result<JobSummary> {
    start(graph)?.wait().await
}

/// Runs `graph` with `options` to completion or until an error.
pub async fn run_with(graph: LogicalGraph, options: RunOptions) -> Result<JobSummary> {
    start_with(graph, options).await?.wait().await
}

/// Starts `graph` on the current tokio runtime (no checkpoints, in-memory state).
pub fn start(graph: LogicalGraph) -> Result<JobHandle> {
    start_inner(graph, RunOptions::default(), None, None)
}

/// Finds the checkpoint to restore from.
async fn restore_point(options: &RunOptions, job: &str) -> Result<Option<RestorePoint>> {
    let storage_config = options
        .checkpoint
        .as_ref()
        .map(|c| c.storage.clone())
        .unwrap_or_else(|| CheckpointConfig::default().storage);
    let open = || CheckpointStorage::open(&storage_config, job);
    let point = match &options.restore {
        Restore::Fresh => None,
        Restore::Auto => {
            if options.checkpoint.is_none() {
                return Ok(None);
            }
            let storage = open()?;
            storage.latest().await?.map(|m| RestorePoint {
                metadata: Arc::new(m),
                storage,
            })
        }
        Restore::Latest => {
            let storage = open()?;
            let m = storage.latest().await?.ok_or_else(|| {
                EngineError::Checkpoint(format!(
                    "--restore latest: no completed checkpoint of job `{job}` in {}",
                    storage.describe()
                ))
            })?;
            Some(RestorePoint {
                metadata: Arc::new(m),
                storage,
            })
        }
        Restore::From(r) => {
            let looks_like_path =
                r.contains('/') || r.contains('\\') || std::path::Path::new(r).exists();
            if looks_like_path {
                let (storage, m) =
                    CheckpointStorage::open_checkpoint_dir(&storage_config, r).await?;
                Some(RestorePoint {
                    metadata: Arc::new(m),
                    storage,
                })
            } else {
                let storage = open()?;
                let m = storage.load(r).await?;
                Some(RestorePoint {
                    metadata: Arc::new(m),
                    storage,
                })
            }
        }
    };
    if let Some(p) = &point {
        if p.metadata.max_parallelism == 0 {
            return Err(EngineError::Checkpoint(
                "the checkpoint has no key groups".into(),
            ));
        }
    }
    Ok(point)
}

/// Starts `graph` with checkpoints, a state backend and a restore point as `options`
/// say.
pub async fn start_with(graph: LogicalGraph, options: RunOptions) -> Result<JobHandle> {
    if let Some(c) = &options.checkpoint {
        // Before anything else asks the store: an endpoint that never answers is an
        // error in seconds, not a silent wait.
        CheckpointStorage::open(&c.storage, &graph.job)?
            .probe(
                CheckpointStorage::probe_timeout(&c.storage),
                crate::checkpoint::STARTUP_PROBE_ATTEMPTS,
            )
            .await?;
    }
    let restore = restore_point(&options, &graph.job).await?;
    if let Some(r) = &restore {
        if r.metadata.max_parallelism != graph.settings.max_parallelism {
            return Err(EngineError::Checkpoint(format!(
                "checkpoint {} has {} key groups, the job {}: max_parallelism cannot change",
                r.metadata.epoch, r.metadata.max_parallelism, graph.settings.max_parallelism
            )));
        }
        if r.metadata.kind == CheckpointKind::Final {
            info!(job = %graph.job, epoch = r.metadata.epoch,
                "the job finished in this checkpoint: resuming reads nothing new (run with --fresh to start over)");
        } else {
            info!(job = %graph.job, epoch = r.metadata.epoch, from = %r.storage.describe(), "restoring");
        }
    }
    let ckpt = match &options.checkpoint {
        None => None,
        Some(c) => {
            let storage = CheckpointStorage::open(&c.storage, &graph.job)?;
            let swept = storage.sweep_orphans().await?;
            if swept > 0 {
                debug!(job = %graph.job, objects = swept, "removed half-written checkpoint objects");
            }
            let mut first_epoch = storage.max_epoch().await? + 1;
            if let Some(r) = &restore {
                first_epoch = first_epoch.max(r.metadata.epoch + 1);
            }
            let retained = storage.list_completed().await?;
            Some((c.clone(), storage, first_epoch, retained))
        }
    };
    start_inner(graph, options, restore, ckpt)
}

type CkptStart = (
    CheckpointConfig,
    CheckpointStorage,
    u64,
    Vec<crate::checkpoint::CheckpointMetadata>,
);

fn start_inner(
    graph: LogicalGraph,
    options: RunOptions,
    restore: Option<RestorePoint>,
    ckpt: Option<CkptStart>,
) -> Result<JobHandle> {
    let plan = PhysicalPlan::new(&graph);
    let metrics = Arc::new(JobMetrics {
        nodes: graph
            .nodes
            .iter()
            .map(|n| {
                (
                    n.name.clone(),
                    n.kind_name(),
                    Arc::new(OperatorMetrics::new(n.parallelism)),
                )
            })
            .collect(),
        latency: Default::default(),
        started_ms: std::sync::atomic::AtomicI64::new(crate::checkpoint::coordinator::now_ms()),
    });
    let wiring = wire(&graph, &plan, &metrics)?;
    let m2 = metrics.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let restored_from = restore
        .as_ref()
        .map(|r| (r.metadata.epoch, r.metadata.kind.clone()));
    let mut checkpoints = None;
    let mut requests = None;
    let mut links = None;
    if let Some((config, storage, first_epoch, retained)) = ckpt {
        let stats = Arc::new(CheckpointStats::default());
        let (trigger_tx, trigger_rx) = watch::channel(None);
        let (completed_tx, completed_rx) = watch::channel(first_epoch - 1);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (req_tx, req_rx) = mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        let mut sink_tasks = HashSet::new();
        for (ci, c) in plan.chains.iter().enumerate() {
            let has_sink = c
                .nodes
                .iter()
                .any(|&n| matches!(graph.nodes[n].kind, NodeKind::Sink(_)));
            for st in 0..c.parallelism {
                tasks.push((ci, st));
                if has_sink {
                    sink_tasks.insert((ci, st));
                }
            }
        }
        let nodes: BTreeMap<String, usize> = graph
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.parallelism))
            .collect();
        let coordinator = Coordinator::new(
            CoordinatorSetup {
                config,
                storage: storage.clone(),
                job: graph.job.clone(),
                max_parallelism: graph.settings.max_parallelism,
                nodes,
                tasks,
                sink_tasks,
                first_epoch,
                retained,
                stats: stats.clone(),
            },
            CoordinatorChannels {
                trigger: trigger_tx,
                completed: completed_tx,
                events: events_rx,
                requests: req_rx,
            },
        );
        checkpoints = Some(stats);
        requests = Some(req_tx);
        links = Some(TaskLinks {
            storage,
            events: events_tx,
            trigger: trigger_rx,
            completed: completed_rx,
            coordinator: Some(coordinator),
            first_epoch,
        });
    }
    let cancel = Arc::new(tokio::sync::Notify::new());
    let stopped_at = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let queries = Arc::new(crate::query::QueryRegistry::default());
    let run = RunContext {
        backend: options.state_backend,
        restore,
        links,
        stats: checkpoints.clone(),
        cancel: cancel.clone(),
        stopped_at: stopped_at.clone(),
        latency_markers: options.latency_markers,
        queries: queries.clone(),
    };
    let done = tokio::spawn(supervise(graph, plan, wiring, m2, stop.clone(), run));
    Ok(JobHandle {
        metrics,
        queries,
        checkpoints,
        restored_from,
        done,
        stop,
        requests,
        cancel,
        stopped_at,
        runtime: tokio::runtime::Handle::current(),
    })
}

/// What tasks need to take part in checkpoints.
struct TaskLinks {
    storage: CheckpointStorage,
    events: mpsc::UnboundedSender<TaskEvent>,
    trigger: watch::Receiver<Option<CheckpointBarrier>>,
    completed: watch::Receiver<u64>,
    coordinator: Option<Coordinator>,
    first_epoch: u64,
}

/// Job-wide settings the tasks share.
struct RunContext {
    backend: StateBackendConfig,
    restore: Option<RestorePoint>,
    links: Option<TaskLinks>,
    stats: Option<Arc<CheckpointStats>>,
    /// Notified to cancel every task (stop after a checkpoint).
    cancel: Arc<tokio::sync::Notify>,
    /// The checkpoint a stop happened after (0: none).
    stopped_at: Arc<std::sync::atomic::AtomicU64>,
    /// How often sources emit latency markers.
    latency_markers: Option<Duration>,
    /// Where the queryable operators' subtasks are reached.
    queries: Arc<crate::query::QueryRegistry>,
}

/// One output edge of a task, as seen from one upstream subtask.
struct Route {
    partitioning: Partitioning,
    key_columns: Vec<usize>,
    /// Indexed by downstream subtask; `None` where this subtask does not send (forward).
    senders: Vec<Option<Sender>>,
    next: usize,
    max_parallelism: u16,
}

impl Route {
    async fn send_batch(&mut self, batch: RecordBatch) -> Result<()> {
        let n = self.senders.len();
        match &self.partitioning {
            // Forward routes hold exactly one sender; broadcast routes hold them all.
            Partitioning::Forward | Partitioning::Broadcast => {
                for s in self.senders.iter().flatten() {
                    s.send(Message::Data(batch.clone())).await.map_err(closed)?;
                }
            }
            Partitioning::Rebalance => {
                let i = self.next % n.max(1);
                self.next = self.next.wrapping_add(1);
                if let Some(Some(s)) = self.senders.get(i) {
                    s.send(Message::Data(batch)).await.map_err(closed)?;
                }
            }
            // One downstream subtask: every key goes there, nothing to hash.
            Partitioning::Hash(_) if n == 1 => {
                if let Some(Some(s)) = self.senders.first() {
                    s.send(Message::Data(batch)).await.map_err(closed)?;
                }
            }
            Partitioning::Hash(_) => {
                let hashes = hash_columns(&batch, &self.key_columns)?;
                let targets: Vec<usize> = hashes
                    .iter()
                    .map(|h| {
                        let kg = key_group_for_hash(*h, self.max_parallelism);
                        subtask_for_key_group(kg, self.max_parallelism, n)
                    })
                    .collect();
                let parts = split_by_target(&batch, &targets, n)?;
                for (i, part) in parts.into_iter().enumerate() {
                    if let (Some(part), Some(Some(s))) = (part, self.senders.get(i)) {
                        s.send(Message::Data(part)).await.map_err(closed)?;
                    }
                }
            }
        }
        Ok(())
    }

    async fn send_control(&self, msg: Message) -> Result<()> {
        for s in self.senders.iter().flatten() {
            s.send(msg.clone()).await.map_err(closed)?;
        }
        Ok(())
    }
}

fn closed(_: crate::channel::Closed) -> EngineError {
    EngineError::Disconnected("a downstream task stopped")
}

/// Channels of one chain subtask.
#[derive(Default)]
struct TaskWiring {
    /// Receivers, with the logical input of the chain's head each one feeds.
    inputs: Vec<(usize, crate::channel::Receiver)>,
    /// Output routes by stream.
    routes: HashMap<StreamRef, Vec<Route>>,
}

struct Wiring {
    tasks: Vec<Vec<TaskWiring>>,
    channel_stats: Vec<(NodeId, Arc<ChannelStats>)>,
}

fn wire(graph: &LogicalGraph, plan: &PhysicalPlan, metrics: &JobMetrics) -> Result<Wiring> {
    let mut tasks: Vec<Vec<TaskWiring>> = plan
        .chains
        .iter()
        .map(|c| (0..c.parallelism).map(|_| TaskWiring::default()).collect())
        .collect();
    let mut channel_stats = Vec::new();
    let cap = graph.settings.channel_capacity_rows;
    for &ei in &plan.channel_edges {
        let e = &graph.edges[ei];
        let (from_chain, _) = plan.placement[e.from.node];
        let (to_chain, to_pos) = plan.placement[e.to];
        if to_pos != 0 {
            return Err(EngineError::Runtime(format!(
                "planner bug: edge into {} is not at a chain head",
                graph.nodes[e.to].name
            )));
        }
        let p_from = plan.chains[from_chain].parallelism;
        let p_to = plan.chains[to_chain].parallelism;
        let mut partitioning = e.partitioning.clone();
        if partitioning == Partitioning::Forward && p_from != p_to {
            partitioning = Partitioning::Rebalance;
        }
        let schema = graph.nodes[e.from.node].schema.clone();
        let stream_schema = match &e.from.side {
            None => schema,
            Some(side) => graph.nodes[e.from.node]
                .side_outputs
                .iter()
                .find(|(n, _)| n == side)
                .map(|(_, s)| s.clone())
                .ok_or_else(|| EngineError::Runtime(format!("unknown side output {side}")))?,
        };
        let key_columns = match &partitioning {
            Partitioning::Hash(cols) => cols
                .iter()
                .map(|c| {
                    stream_schema.index_of(c).map_err(|_| {
                        EngineError::Config(format!(
                            "key column `{c}` is not in the input of `{}`",
                            graph.nodes[e.to].name
                        ))
                    })
                })
                .collect::<Result<Vec<_>>>()?,
            _ => Vec::new(),
        };
        for u in 0..p_from {
            let mut senders: Vec<Option<Sender>> = (0..p_to).map(|_| None).collect();
            for (d, slot) in senders.iter_mut().enumerate() {
                if partitioning == Partitioning::Forward && u != d {
                    continue;
                }
                let (tx, rx) = channel_with(cap, graph.settings.debloat);
                channel_stats.push((e.from.node, tx.stats()));
                metrics.nodes[e.from.node]
                    .2
                    .subtask(u)
                    .add_output(tx.stats());
                metrics.nodes[e.to].2.subtask(d).add_input(tx.stats());
                *slot = Some(tx);
                tasks[to_chain][d].inputs.push((e.input, rx));
            }
            tasks[from_chain][u]
                .routes
                .entry(e.from.clone())
                .or_default()
                .push(Route {
                    partitioning: partitioning.clone(),
                    key_columns: key_columns.clone(),
                    senders,
                    next: u,
                    max_parallelism: graph.settings.max_parallelism,
                });
        }
    }
    Ok(Wiring {
        tasks,
        channel_stats,
    })
}

async fn supervise(
    graph: LogicalGraph,
    plan: PhysicalPlan,
    wiring: Wiring,
    metrics: Arc<JobMetrics>,
    stop: Arc<AtomicBool>,
    mut run: RunContext,
) -> Result<JobSummary> {
    let started = Instant::now();
    let graph = Arc::new(graph);
    let exactly_once = run.links.is_some();
    let mut set: JoinSet<Result<()>> = JoinSet::new();
    let channel_stats = wiring.channel_stats;
    if let Some(c) = run.links.as_mut().and_then(|l| l.coordinator.take()) {
        set.spawn(async move {
            c.run().await.map_err(|e| {
                debug!(error = %e, "checkpoint coordinator failed");
                e
            })
        });
    }
    let backend = Arc::new(run.backend);
    // Set when the job is cancelled after a stop checkpoint: tasks then fail only
    // because their neighbours are gone, which is not an error.
    let cancelling = Arc::new(AtomicBool::new(false));
    // Restoring a checkpointing job: sinks open, then recover, then sources start.
    let sink_tasks: usize = plan
        .chains
        .iter()
        .filter(|c| {
            c.nodes
                .iter()
                .any(|&n| matches!(graph.nodes[n].kind, NodeKind::Sink(_)))
        })
        .map(|c| c.parallelism)
        .sum();
    let recovery_gate =
        (run.restore.is_some() && run.links.is_some() && sink_tasks > 0).then(|| {
            Arc::new(RecoveryGate {
                opened: Latch::new(sink_tasks),
                recovered: RecoveredLatch(Latch::new(sink_tasks)),
            })
        });
    for (ci, subtasks) in wiring.tasks.into_iter().enumerate() {
        for (st, tw) in subtasks.into_iter().enumerate() {
            let mut task = ChainTask::new(&graph, &plan, ci, st, tw, &metrics, exactly_once)?;
            task.register_queries(&run.queries, graph.settings.max_parallelism);
            task.stop = stop.clone();
            task.latency = run.latency_markers.map(|every| (every, metrics.clone()));
            task.backend = backend.clone();
            task.restore = run.restore.clone();
            task.recovery_gate = recovery_gate.clone();
            task.ckpt = run.links.as_ref().map(|l| TaskCheckpointing {
                id: (ci, st),
                storage: l.storage.clone(),
                events: l.events.clone(),
                trigger: l.trigger.clone(),
                completed: l.completed.clone(),
                last_barrier: l.first_epoch - 1,
                last_committed: l.first_epoch - 1,
                known: Default::default(),
                in_flight: Default::default(),
                logs: Arc::new(std::sync::Mutex::new(LogChains::new((ci, st)))),
                previous_store: None,
            });
            task.last_aligned = run.links.as_ref().map_or(0, |l| l.first_epoch - 1);
            let name = format!(
                "{}[{st}]",
                plan.chains[ci]
                    .nodes
                    .iter()
                    .map(|&n| graph.nodes[n].name.as_str())
                    .collect::<Vec<_>>()
                    .join("->")
            );
            let cancelling = cancelling.clone();
            set.spawn(async move {
                task.run().await.map_err(|e| {
                    // The job's error is returned (and shown) once, by whoever waits
                    // for the job; here only the trace of which task saw what.
                    if cancelling.load(Ordering::Relaxed) {
                        debug!(task = %name, error = %e, "task ended while the job was cancelled");
                    } else {
                        debug!(task = %name, error = %e, "task failed");
                    }
                    e
                })
            });
        }
    }
    // Tasks hold the only event senders: the coordinator ends when they all did.
    drop(run.links);
    info!(job = %graph.job, tasks = set.len(), "job started");
    let mut first_err: Option<EngineError> = None;
    loop {
        let r = tokio::select! {
            r = set.join_next() => r,
            _ = run.cancel.notified() => {
                cancelling.store(true, Ordering::Relaxed);
                set.abort_all();
                continue;
            }
        };
        let Some(r) = r else { break };
        if cancelling.load(Ordering::Relaxed) {
            continue;
        }
        let err = match r {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(e) if e.is_cancelled() => None,
            Err(e) => Some(EngineError::Runtime(format!("a task panicked: {e}"))),
        };
        if let Some(e) = err {
            // The first real failure is the job's error: a task that failed only
            // because a neighbour's channel closed reports a consequence, so a real
            // cause found later (tasks that already ended still report after the
            // abort) replaces it.
            match &first_err {
                None => {
                    first_err = Some(e);
                    set.abort_all();
                }
                Some(first) if first.is_disconnected() && !e.is_disconnected() => {
                    first_err = Some(e);
                }
                Some(_) => {}
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    let mut nodes = Vec::new();
    for (i, (name, kind, m)) in metrics.nodes.iter().enumerate() {
        let blocked: u64 = channel_stats
            .iter()
            .filter(|(n, _)| *n == i)
            .map(|(_, s)| s.blocked_nanos.load(Ordering::Relaxed))
            .sum();
        nodes.push(NodeSummary {
            name: name.clone(),
            kind,
            parallelism: graph.nodes[i].parallelism,
            records_in: m.records_in(),
            records_out: m.records_out(),
            dead_letters: m.dead_letters(),
            late_records: m.late_records(),
            backpressure: Duration::from_nanos(blocked),
        });
    }
    let peak_channel_rows = channel_stats
        .iter()
        .map(|(_, s)| s.peak_rows.load(Ordering::Relaxed))
        .max()
        .unwrap_or(0);
    let summary = JobSummary {
        job: graph.job.clone(),
        elapsed: started.elapsed(),
        nodes,
        peak_channel_rows,
        checkpoints: run.stats.as_deref().map(CheckpointSummary::from_stats),
        stopped_at_checkpoint: match run.stopped_at.load(Ordering::Relaxed) {
            0 => None,
            e => Some(e),
        },
        latency: metrics.latency.summary(),
        restored_from: run
            .restore
            .as_ref()
            .map(|r| (r.metadata.epoch, r.metadata.kind == CheckpointKind::Final)),
        outputs: graph
            .nodes
            .iter()
            .filter_map(|n| match &n.kind {
                NodeKind::Sink(b) => b
                    .output
                    .as_ref()
                    .map(|o| (n.name.clone(), o(exactly_once, n.parallelism))),
                _ => None,
            })
            .collect(),
    };
    info!(job = %graph.job, elapsed_ms = summary.elapsed.as_millis() as u64, "job finished");
    Ok(summary)
}

/// A count that tasks wait on until `total` arrivals.
struct Latch {
    total: usize,
    arrived: std::sync::atomic::AtomicUsize,
    done: tokio::sync::Notify,
}

impl Latch {
    fn new(total: usize) -> Self {
        Latch {
            total,
            arrived: std::sync::atomic::AtomicUsize::new(0),
            done: tokio::sync::Notify::new(),
        }
    }

    fn arrive(&self) {
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 >= self.total {
            self.done.notify_waiters();
        }
    }

    async fn wait_all(&self) {
        loop {
            let notified = self.done.notified();
            if self.arrived.load(Ordering::Acquire) >= self.total {
                return;
            }
            notified.await;
        }
    }

    /// Arrives and waits for the others.
    async fn wait(&self) {
        self.arrive();
        self.wait_all().await;
    }
}

/// The order of a restore across tasks: every sink task opens (`opened`, a barrier of
/// the sink tasks), then recovers; sources start once every sink recovered
/// (`recovered`).
struct RecoveryGate {
    opened: Latch,
    recovered: RecoveredLatch,
}

/// `recovered` of [`RecoveryGate`]: sinks arrive, sources wait.
struct RecoveredLatch(Latch);

impl RecoveredLatch {
    fn arrive(&self) {
        self.0.arrive();
    }

    async fn wait(&self) {
        self.0.wait_all().await;
    }
}

/// Gives the scheduler back its thread now and then. A source chained to its sinks
/// never waits when its input and output are ready (a generator into a file), so its
/// task would never return to tokio: the tasks it spawned (checkpoint uploads sit in
/// the worker's LIFO slot, which other workers cannot steal), and an abort, would wait
/// forever. Yielding every [`Turns::SLICE`] costs nothing measurable.
#[derive(Debug)]
struct Turns {
    since: Instant,
}

impl Default for Turns {
    fn default() -> Self {
        Turns {
            since: Instant::now(),
        }
    }
}

impl Turns {
    /// Longest a task runs without yielding.
    const SLICE: Duration = Duration::from_millis(2);

    async fn yield_now_and_then(&mut self) {
        if self.since.elapsed() >= Self::SLICE {
            tokio::task::yield_now().await;
            self.since = Instant::now();
        }
    }
}

struct Member {
    node: NodeId,
    op: Box<dyn Operator>,
    ctx: OperatorContext,
    metrics: Arc<SubtaskMetrics>,
    /// Where the log of a deferred table snapshot goes when the operator finished it.
    deferred: Option<tokio::sync::oneshot::Sender<Vec<u8>>>,
}

/// Entries a deferred table snapshot writes per step between batches.
const DEFERRED_BUDGET: usize = 4096;

impl Member {
    /// Lets a deferred table snapshot write up to `budget` more entries; sends the log
    /// to the waiting upload when it is complete.
    fn progress_table_snapshot(&mut self, budget: usize) -> Result<()> {
        if self.deferred.is_none() {
            return Ok(());
        }
        let started = Instant::now();
        let done = self.op.continue_table_snapshot(budget)?;
        OperatorMetrics::add(
            &self.metrics.busy_nanos,
            started.elapsed().as_nanos() as u64,
        );
        if let Some(log) = done {
            if let Some(tx) = self.deferred.take() {
                let _ = tx.send(log.finish());
            }
        }
        Ok(())
    }

    /// Finishes a deferred table snapshot now.
    fn finish_table_snapshot(&mut self) -> Result<()> {
        self.progress_table_snapshot(usize::MAX)?;
        if self.deferred.is_some() {
            return Err(EngineError::Runtime(format!(
                "operator `{}` did not finish its table snapshot",
                self.ctx.operator
            )));
        }
        Ok(())
    }
}

struct SourceHead {
    node: NodeId,
    source: Box<dyn Source>,
    ctx: SourceContext,
    decoder: Option<Box<dyn Decoder>>,
    watermarks: Option<WatermarkGenerator>,
    metrics: Arc<SubtaskMetrics>,
}

struct SinkTail {
    sink: Box<dyn Sink>,
    ctx: SinkContext,
    metrics: Arc<SubtaskMetrics>,
}

/// What woke a task waiting for input.
enum Wake<M> {
    Input(M),
    Tick,
    Completed,
    Query(Option<crate::query::QueryMsg>),
    Deferred,
}

/// Ready at once when `pending`, else never.
async fn ready_if(pending: bool) {
    if !pending {
        std::future::pending::<()>().await;
    }
}

/// The next tick, or never without a ticker.
async fn maybe_tick(t: Option<&mut tokio::time::Interval>) {
    match t {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The next completed checkpoint, or never without checkpoints.
async fn maybe_changed(c: Option<&mut watch::Receiver<u64>>) {
    match c {
        Some(c) => {
            let _ = c.changed().await;
        }
        None => std::future::pending().await,
    }
}

/// The next read of the state, or never without queryable operators.
async fn maybe_query(
    q: Option<&mut mpsc::Receiver<crate::query::QueryMsg>>,
) -> Option<crate::query::QueryMsg> {
    match q {
        Some(q) => q.recv().await,
        None => std::future::pending().await,
    }
}

/// One subtask of a chain.
struct ChainTask {
    job: String,
    subtask: usize,
    source: Option<SourceHead>,
    members: Vec<Member>,
    sink: Option<SinkTail>,
    /// Logical inputs of the head step (for two-input operators), per channel.
    input_ports: Vec<usize>,
    inputs: Option<InputSet>,
    routes: HashMap<StreamRef, Vec<Route>>,
    /// The node whose main output leaves the chain.
    tail: NodeId,
    combiner: WatermarkCombiner,
    chain_nodes: Vec<(NodeId, Arc<SubtaskMetrics>)>,
    /// Set by [`JobHandle::stop`]: a source task ends its input.
    stop: Arc<AtomicBool>,
    /// Which backend keyed steps use.
    backend: Arc<StateBackendConfig>,
    /// The checkpoint to restore from.
    restore: Option<RestorePoint>,
    /// Restoring: orders sink opening, sink recovery and source start across tasks.
    recovery_gate: Option<Arc<RecoveryGate>>,
    /// The link to the checkpoint coordinator, when the job checkpoints.
    ckpt: Option<TaskCheckpointing>,
    /// Whether each member is keyed (hash-partitioned input): it gets the configured
    /// backend; others keep in-memory state.
    keyed: Vec<bool>,
    /// Node names of the chain's source, members and sink.
    source_name: Option<String>,
    sink_name: Option<String>,
    /// Local working directories of RocksDB backends: removed when the task is dropped
    /// (after `members`, which closes the databases first).
    working_dirs: WorkingDirs,
    /// The epoch of the last barrier this task aligned on (older ones are stale).
    last_aligned: u64,
    /// Latency markers: how often a source emits them, and where sinks record them.
    latency: Option<(Duration, Arc<JobMetrics>)>,
    /// Reads of the queryable operators' state ([`crate::query`]).
    queries: Option<mpsc::Receiver<crate::query::QueryMsg>>,
}

impl ChainTask {
    fn new(
        graph: &LogicalGraph,
        plan: &PhysicalPlan,
        ci: usize,
        subtask: usize,
        tw: TaskWiring,
        metrics: &JobMetrics,
        exactly_once: bool,
    ) -> Result<Self> {
        let chain = &plan.chains[ci];
        let p = chain.parallelism;
        let mut source = None;
        let mut members = Vec::new();
        let mut sink = None;
        let mut keyed = Vec::new();
        let mut source_name = None;
        let mut sink_name = None;
        for &id in &chain.nodes {
            let node = &graph.nodes[id];
            match &node.kind {
                NodeKind::Source { .. } => source_name = Some(node.name.clone()),
                NodeKind::Sink(_) => sink_name = Some(node.name.clone()),
                NodeKind::Step(sb) => keyed.push(
                    matches!(sb.input_partitioning, Some(Partitioning::Hash(_)))
                        || sb
                            .partitioning_per_input
                            .iter()
                            .any(|p| matches!(p, Partitioning::Hash(_))),
                ),
            }
            let m = metrics.nodes[id].2.subtask(subtask);
            match &node.kind {
                NodeKind::Source {
                    source: sb,
                    decoder,
                    event_time,
                } => {
                    let ctx = SourceContext {
                        job: graph.job.clone(),
                        source: node.name.clone(),
                        subtask,
                        parallelism: p,
                        batch_size: graph.settings.batch_size,
                        linger: graph.settings.linger,
                    };
                    let s = (sb.create)(&ctx)?;
                    let d = match decoder {
                        Some(db) => Some((db.create)()?),
                        None => None,
                    };
                    source = Some(SourceHead {
                        node: id,
                        source: s,
                        ctx,
                        decoder: d,
                        watermarks: event_time.clone().map(WatermarkGenerator::new),
                        metrics: m,
                    });
                }
                NodeKind::Step(sb) => {
                    let op = (sb.create)(subtask, p)?;
                    let maxp = graph.settings.max_parallelism;
                    members.push(Member {
                        node: id,
                        op,
                        ctx: OperatorContext {
                            job: graph.job.clone(),
                            operator: node.name.clone(),
                            subtask,
                            parallelism: p,
                            max_parallelism: maxp,
                            key_groups: KeyGroupRange::for_subtask(maxp, p, subtask),
                            state: Box::new(InMemoryStateBackend::new()),
                            timers: TimerService::new(),
                            watermark: EventTime::MIN,
                            metrics: m.clone(),
                            restored_table: None,
                            restored_watermarks: Vec::new(),
                            memory_budget: None,
                        },
                        metrics: m,
                        deferred: None,
                    });
                }
                NodeKind::Sink(sb) => {
                    let ctx = SinkContext {
                        exactly_once,
                        job: graph.job.clone(),
                        sink: node.name.clone(),
                        subtask,
                        parallelism: p,
                    };
                    sink = Some(SinkTail {
                        sink: (sb.create)(&ctx)?,
                        ctx,
                        metrics: m,
                    });
                }
            }
        }
        let tail = *chain
            .nodes
            .last()
            .ok_or_else(|| EngineError::Runtime("empty chain".into()))?;
        let (input_ports, receivers): (Vec<usize>, Vec<_>) = tw.inputs.into_iter().unzip();
        let n_inputs = receivers.len();
        let inputs = (source.is_none()).then(|| InputSet::new(receivers));
        let chain_nodes = chain
            .nodes
            .iter()
            .map(|&id| (id, metrics.nodes[id].2.subtask(subtask)))
            .collect();
        Ok(ChainTask {
            job: graph.job.clone(),
            subtask,
            source,
            members,
            sink,
            input_ports,
            inputs,
            routes: tw.routes,
            tail,
            combiner: WatermarkCombiner::new(n_inputs),
            chain_nodes,
            stop: Arc::new(AtomicBool::new(false)),
            backend: Arc::new(StateBackendConfig::Memory),
            restore: None,
            ckpt: None,
            keyed,
            source_name,
            sink_name,
            working_dirs: WorkingDirs::default(),
            last_aligned: 0,
            latency: None,
            queries: None,
            recovery_gate: None,
        })
    }

    async fn run(mut self) -> Result<()> {
        self.open_state().await?;
        for m in &mut self.members {
            m.op.open(&mut m.ctx)?;
        }
        if let Some(s) = &mut self.sink {
            s.sink.open(&s.ctx).await?;
        }
        // Restoring: every sink opens (fencing what earlier processes left open)
        // before any recovers, and every sink recovers before any source reads, so a
        // sink that inspects its external system to recover sees no transaction of
        // this run.
        let gate = self.recovery_gate.clone();
        if let (Some(g), true) = (&gate, self.sink.is_some()) {
            g.opened.wait().await;
        }
        self.recover_sink().await?;
        if let Some(g) = &gate {
            if self.sink.is_some() {
                g.recovered.arrive();
            }
            if self.source.is_some() {
                g.recovered.wait().await;
            }
        }
        if self.source.is_some() {
            self.run_source().await?;
        } else {
            self.run_inputs().await?;
        }
        self.end_of_input().await
    }

    async fn run_source(&mut self) -> Result<()> {
        let Some(head) = self.source.as_mut() else {
            return Ok(());
        };
        head.source.open(&head.ctx).await?;
        if let (Some(r), Some(name)) = (&self.restore, &self.source_name) {
            if let Some(ns) = r.metadata.nodes.get(name) {
                let positions: Vec<serde_json::Value> = ns
                    .subtasks
                    .iter()
                    .map(|s| s.source_position.clone().unwrap_or(serde_json::Value::Null))
                    .collect();
                if ns.parallelism == head.ctx.parallelism {
                    if let Some(p) = positions.get(self.subtask) {
                        head.source.restore(p)?;
                    }
                } else {
                    head.source.restore_all(&positions).map_err(|e| {
                        EngineError::Checkpoint(format!(
                            "restoring source `{name}` from parallelism {} to {}: {e}",
                            ns.parallelism, head.ctx.parallelism
                        ))
                    })?;
                }
            }
        }
        if let Some(g) = head.watermarks.as_mut() {
            let now = Instant::now();
            for split in head.source.pending_splits() {
                g.register_pending(split, now);
            }
        }
        let source_name = head.ctx.source.clone();
        // Operators chained to the source get their ticks between polls.
        let tick_every = self
            .members
            .iter()
            .filter_map(|m| m.op.tick_interval())
            .min();
        let mut last_tick = Instant::now();
        let marker_every = self.latency.as_ref().map(|(every, _)| *every);
        let mut last_marker = Instant::now();
        let mut turn = Turns::default();
        loop {
            turn.yield_now_and_then().await;
            if self.stop.load(Ordering::Relaxed) {
                info!(job = %self.job, source = %source_name, subtask = self.subtask, "stopping: ending input");
                return Ok(());
            }
            self.commit_completed().await?;
            if let Some(b) = self.ckpt.as_mut().and_then(|c| c.triggered()) {
                self.checkpoint(b).await?;
            }
            for m in &mut self.members {
                m.progress_table_snapshot(DEFERRED_BUDGET)?;
            }
            if let Some(every) = tick_every {
                if last_tick.elapsed() >= every {
                    last_tick = Instant::now();
                    self.tick().await?;
                }
            }
            let Some(head) = self.source.as_mut() else {
                return Ok(());
            };
            let poll = head.source.poll_next().await?;
            let now = Instant::now();
            match poll {
                SourcePoll::Batch { split, batch } => {
                    if let Some(lag) = head.source.lag() {
                        head.metrics.set_lag(lag);
                    }
                    OperatorMetrics::add(&head.metrics.records_in, batch.num_rows() as u64);
                    OperatorMetrics::add(
                        &head.metrics.bytes_in,
                        batch.get_array_memory_size() as u64,
                    );
                    OperatorMetrics::add(&head.metrics.batches_in, 1);
                    let bound = head.watermarks.as_ref().and_then(|g| {
                        g.config()
                            .max_future_ms()
                            .map(|b| (g.config().field.clone(), b))
                    });
                    let desc = if head.decoder.is_some() || bound.is_some() {
                        format!("{source_name}: {}", head.source.split_description(split))
                    } else {
                        String::new()
                    };
                    let (typed, mut dead, source_rows) = match head.decoder.as_mut() {
                        Some(d) => {
                            let decoded = d.decode(&batch, &desc)?;
                            let typed = crate::source::append_source_columns(
                                decoded.batch,
                                &batch,
                                decoded.source_rows.as_deref(),
                            )?;
                            (typed, decoded.dead_letters, decoded.source_rows)
                        }
                        None => (batch.clone(), Vec::new(), None),
                    };
                    // Records from the far future go to the dead letters before they
                    // can move the watermark.
                    let typed = match bound {
                        Some((field, bound_ms)) => {
                            let (kept, future) = crate::source::reject_future_rows(
                                typed,
                                &field,
                                bound_ms,
                                crate::checkpoint::coordinator::now_ms(),
                                &batch,
                                source_rows.as_deref(),
                                &desc,
                            )?;
                            dead.extend(future);
                            kept
                        }
                        None => typed,
                    };
                    OperatorMetrics::add(&head.metrics.records_out, typed.num_rows() as u64);
                    OperatorMetrics::add(
                        &head.metrics.bytes_out,
                        typed.get_array_memory_size() as u64,
                    );
                    if let Some(g) = head.watermarks.as_mut() {
                        g.observe(split, &typed, now)?;
                    }
                    // Busy: decoding and the watermark (waiting for data is idle).
                    OperatorMetrics::add(&head.metrics.busy_nanos, now.elapsed().as_nanos() as u64);
                    let node = head.node;
                    if !dead.is_empty() {
                        OperatorMetrics::add(&head.metrics.dead_letters, dead.len() as u64);
                        for d in dead.iter_mut().filter(|d| d.step.is_empty()) {
                            d.step = source_name.to_string();
                        }
                        for d in &dead {
                            head.metrics.dead_letter(d.kind, 1, Some(&d.reason));
                        }
                        let b = dead_letters_to_batch(&dead)?;
                        self.route(
                            &StreamRef {
                                node,
                                side: Some(DEAD_LETTER_OUTPUT.to_string()),
                            },
                            b,
                        )
                        .await?;
                    }
                    if typed.num_rows() > 0 {
                        self.push(0, 0, typed).await?;
                    }
                    if marker_every.is_some_and(|every| last_marker.elapsed() >= every) {
                        last_marker = Instant::now();
                        // Stamped with the instant the batch was read: the marker
                        // measures the batch's own hand-off too.
                        self.on_latency_marker(LatencyMarker { emitted: now })
                            .await?;
                    }
                }
                SourcePoll::SplitEnd(split) => {
                    if let Some(g) = head.watermarks.as_mut() {
                        g.split_ended(split);
                    }
                }
                SourcePoll::NewSplits(splits) => {
                    if let Some(g) = head.watermarks.as_mut() {
                        for s in splits {
                            g.register_assigned(s, now);
                        }
                    }
                }
                SourcePoll::Pending(d) => {
                    let nap = tokio::time::sleep(d.min(Duration::from_millis(200)));
                    match self.ckpt.as_mut() {
                        // Wake up for a checkpoint trigger or completion.
                        Some(c) => {
                            let (trigger, completed) = (&mut c.trigger, &mut c.completed);
                            tokio::select! {
                                _ = nap => {}
                                _ = trigger.changed() => {}
                                _ = completed.changed() => {}
                            }
                        }
                        None => nap.await,
                    }
                }
                SourcePoll::Finished => return Ok(()),
            }
            let wm = self
                .source
                .as_mut()
                .and_then(|h| h.watermarks.as_mut())
                .and_then(|g| g.poll(Instant::now()));
            match wm {
                Some(Watermark::EventTime(t)) => self.advance_watermark(t).await?,
                Some(Watermark::Idle) => {
                    self.broadcast(Message::Watermark(Watermark::Idle)).await?
                }
                None => {}
            }
        }
    }

    async fn run_inputs(&mut self) -> Result<()> {
        let tick_every = self
            .members
            .iter()
            .filter_map(|m| m.op.tick_interval())
            .min();
        let mut ticker = tick_every.map(|d| {
            let mut t = tokio::time::interval(d.max(Duration::from_millis(1)));
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        let n = self.input_ports.len();
        let mut barrier_seen: Vec<Option<CheckpointBarrier>> = vec![None; n];
        let mut finished = vec![false; n];
        let mut turn = Turns::default();
        loop {
            turn.yield_now_and_then().await;
            let Some(inputs) = self.inputs.as_mut() else {
                return Ok(());
            };
            let deferred = self.members.iter().any(|m| m.deferred.is_some());
            let completed = self.ckpt.as_mut().map(|c| &mut c.completed);
            let queries = self.queries.as_mut();
            let next = tokio::select! {
                m = inputs.recv() => Wake::Input(m),
                _ = maybe_tick(ticker.as_mut()) => Wake::Tick,
                _ = maybe_changed(completed) => Wake::Completed,
                q = maybe_query(queries) => Wake::Query(q),
                _ = ready_if(deferred) => Wake::Deferred,
            };
            let next = match next {
                Wake::Input(m) => m,
                Wake::Deferred => {
                    for m in &mut self.members {
                        m.progress_table_snapshot(DEFERRED_BUDGET)?;
                    }
                    continue;
                }
                Wake::Tick => {
                    self.tick().await?;
                    continue;
                }
                Wake::Completed => {
                    self.commit_completed().await?;
                    continue;
                }
                Wake::Query(q) => {
                    match q {
                        Some(q) => {
                            self.answer_query(q);
                            // Every read already waiting, before the next batch.
                            let mut more = Vec::new();
                            if let Some(rx) = self.queries.as_mut() {
                                while more.len() < crate::query::QUEUE {
                                    match rx.try_recv() {
                                        Ok(q) => more.push(q),
                                        Err(_) => break,
                                    }
                                }
                            }
                            for q in more {
                                self.answer_query(q);
                            }
                        }
                        None => self.queries = None,
                    }
                    continue;
                }
            };
            let Some((i, msg)) = next else {
                return Ok(()); // every input finished
            };
            match msg {
                None => {
                    return Err(EngineError::Disconnected(
                        "an upstream task stopped without end of stream",
                    ))
                }
                Some(Message::Data(batch)) => {
                    self.combiner.mark_active(i);
                    let port = self.input_ports[i];
                    self.push(0, port, batch).await?;
                }
                Some(Message::Watermark(wm)) => {
                    if let Some(t) = self.combiner.update(i, wm) {
                        self.advance_watermark(t).await?;
                    } else if self.combiner.all_idle() && wm == Watermark::Idle {
                        self.broadcast(Message::Watermark(Watermark::Idle)).await?;
                    }
                }
                Some(Message::Barrier(b)) => {
                    let current = barrier_seen.iter().flatten().map(|x| x.epoch).max();
                    if b.epoch <= self.last_aligned || current.is_some_and(|e| b.epoch < e) {
                        // A barrier of a checkpoint that was aborted (or superseded)
                        // while it travelled: never align on it.
                        debug!(job = %self.job, subtask = self.subtask, epoch = b.epoch, "stale barrier ignored");
                        continue;
                    }
                    if current.is_some_and(|e| b.epoch > e) {
                        // A newer checkpoint overtook the one being aligned (that one
                        // was aborted): abandon it, as Flink does.
                        debug!(job = %self.job, subtask = self.subtask, epoch = b.epoch, "alignment abandoned for a newer barrier");
                        for (j, s) in barrier_seen.iter_mut().enumerate() {
                            *s = None;
                            if let Some(inputs) = self.inputs.as_mut() {
                                inputs.set_blocked(j, false);
                            }
                        }
                    }
                    barrier_seen[i] = Some(b);
                    if let Some(inputs) = self.inputs.as_mut() {
                        inputs.set_blocked(i, true);
                    }
                    self.try_complete_alignment(&mut barrier_seen, &finished)
                        .await?;
                }
                Some(Message::LatencyMarker(m)) => self.on_latency_marker(m).await?,
                Some(Message::EndOfStream) => {
                    finished[i] = true;
                    if let Some(inputs) = self.inputs.as_mut() {
                        inputs.finish(i);
                    }
                    if let Some(t) = self.combiner.finish(i) {
                        self.advance_watermark(t).await?;
                    }
                    self.try_complete_alignment(&mut barrier_seen, &finished)
                        .await?;
                }
            }
        }
    }

    /// When every open input has delivered barrier n: snapshot, forward, unblock.
    async fn try_complete_alignment(
        &mut self,
        seen: &mut [Option<CheckpointBarrier>],
        finished: &[bool],
    ) -> Result<()> {
        let Some(b) = seen.iter().flatten().next().copied() else {
            return Ok(());
        };
        if !seen.iter().zip(finished).all(|(s, f)| *f || s.is_some()) {
            return Ok(());
        }
        debug!(job = %self.job, subtask = self.subtask, epoch = b.epoch, "barrier aligned");
        self.last_aligned = b.epoch;
        self.checkpoint(b).await?;
        for (i, s) in seen.iter_mut().enumerate() {
            *s = None;
            if let Some(inputs) = self.inputs.as_mut() {
                inputs.set_blocked(i, false);
            }
        }
        Ok(())
    }

    /// Creates each member's state backend and restores its state and timers.
    async fn open_state(&mut self) -> Result<()> {
        let journal = self.ckpt.is_some();
        for (k, m) in self.members.iter_mut().enumerate() {
            let keyed = self.keyed.get(k).copied().unwrap_or(false);
            if !keyed && self.restore.is_none() && !journal {
                continue; // stays in memory, empty
            }
            let opened = open_backend(
                &self.backend,
                keyed,
                &self.job,
                &m.ctx.operator,
                self.subtask,
                m.ctx.parallelism,
                &m.ctx.key_groups,
                self.restore.as_ref(),
                &mut m.ctx.timers,
            )
            .await?;
            m.ctx.state = opened.backend;
            if let (
                StateBackendConfig::RocksDb {
                    operator_memory_bytes: Some(b),
                    ..
                },
                true,
            ) = (&*self.backend, keyed)
            {
                m.ctx.memory_budget = Some(*b);
            }
            self.working_dirs.0.extend(opened.working_dir);
            if let Some(r) = self.restore.as_ref() {
                m.ctx.restored_watermarks =
                    restored_watermarks(r, &m.ctx.operator, self.subtask, m.ctx.parallelism);
                if let Some(w) = m.ctx.restored_watermarks.iter().map(|(_, w)| *w).min() {
                    m.ctx.watermark = w;
                }
                if let Some((entries, chain)) = restore_table_log(
                    r,
                    &m.ctx.operator,
                    self.subtask,
                    m.ctx.parallelism,
                    &m.ctx.key_groups,
                )
                .await?
                {
                    m.ctx.restored_table = Some(entries);
                    if let (Some(chain), Some(c)) = (chain, self.ckpt.as_ref()) {
                        if let Ok(mut l) = c.logs.lock() {
                            l.chains.insert(m.ctx.operator.clone(), chain);
                        }
                    }
                }
            }
            if journal {
                m.ctx.timers.enable_journal();
            }
            if let Some(c) = self.ckpt.as_mut() {
                c.known.extend(opened.known);
            }
        }
        Ok(())
    }

    /// Restoring: the sink commits what the checkpoint pre-committed and drops what
    /// was written after it.
    async fn recover_sink(&mut self) -> Result<()> {
        let (Some(r), Some(name), Some(s)) = (&self.restore, &self.sink_name, self.sink.as_mut())
        else {
            return Ok(());
        };
        let Some(ns) = r.metadata.nodes.get(name) else {
            return Ok(());
        };
        let taken: Vec<&SubtaskState> = if ns.parallelism == s.ctx.parallelism {
            ns.subtasks.get(self.subtask).into_iter().collect()
        } else if self.subtask == 0 {
            ns.subtasks.iter().collect()
        } else {
            Vec::new()
        };
        let mut pending = Vec::new();
        let mut data = Vec::new();
        for st in taken {
            let Some(commit) = st.sink_commit.clone() else {
                continue;
            };
            pending.push(commit);
            data.push(match &st.sink_data {
                Some(path) => Some(r.storage.read_object(path).await?),
                None => None,
            });
        }
        s.sink
            .recover(&SinkRecovery {
                epoch: r.metadata.epoch,
                pending,
                old_parallelism: ns.parallelism,
                data,
            })
            .await
    }

    /// Gives the chain's queryable operators one channel of reads, registered under
    /// each of their names for this subtask.
    fn register_queries(&mut self, registry: &crate::query::QueryRegistry, max_parallelism: u16) {
        let queryable: Vec<(String, arrow::datatypes::SchemaRef, Vec<usize>, usize)> = self
            .members
            .iter()
            .filter_map(|m| {
                let (schema, keys) = m.op.queryable_key()?;
                Some((m.ctx.operator.clone(), schema, keys, m.ctx.parallelism))
            })
            .collect();
        if queryable.is_empty() {
            return;
        }
        let (tx, rx) = mpsc::channel(crate::query::QUEUE);
        for (name, schema, keys, p) in queryable {
            registry.register(
                &name,
                schema,
                keys,
                max_parallelism,
                p,
                self.subtask,
                tx.clone(),
            );
        }
        self.queries = Some(rx);
    }

    /// Answers one read of a member's state.
    fn answer_query(&mut self, q: crate::query::QueryMsg) {
        let answer = match self.members.iter_mut().find(|m| m.ctx.operator == q.node) {
            Some(m) => m.op.read_state(&q.read, &mut m.ctx),
            None => Err(EngineError::Runtime(format!(
                "no operator `{}` here",
                q.node
            ))),
        };
        let _ = q.reply.send(answer);
    }

    /// Commits sinks and notifies operators of checkpoints completed since the last
    /// call.
    async fn commit_completed(&mut self) -> Result<()> {
        let Some(epoch) = self.ckpt.as_mut().and_then(|c| c.newly_completed()) else {
            return Ok(());
        };
        if let Some(s) = self.sink.as_mut() {
            let started = Instant::now();
            s.sink.commit(epoch).await?;
            s.metrics
                .commit_nanos
                .store(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
        if let Some(h) = self.source.as_mut() {
            h.source.checkpoint_complete(epoch);
        }
        for m in &mut self.members {
            m.op.handle_commit(epoch, &mut m.ctx)?;
        }
        if let Some(c) = self.ckpt.as_mut() {
            c.mark_committed(epoch);
            if self.sink.is_some() {
                c.committed(epoch);
            }
        }
        Ok(())
    }

    /// The synchronous part of a snapshot: operators write their in-memory state into
    /// their backend, timers are flushed, and each backend hands over a consistent copy;
    /// the source's position and the sink's pre-commit complete it.
    async fn prepare_snapshot(
        &mut self,
        epoch: u64,
        savepoint: bool,
        final_state: bool,
    ) -> Result<(Vec<PreparedMember>, Vec<ExtraState>)> {
        let mut prepared = Vec::with_capacity(self.members.len());
        let logs = self.ckpt.as_ref().map(|c| c.logs.clone());
        for m in &mut self.members {
            // The previous checkpoint's log first: this one extends it.
            m.finish_table_snapshot()?;
            m.op.handle_checkpoint(epoch, &mut m.ctx)?;
            let full = savepoint
                || final_state
                || logs
                    .as_ref()
                    .and_then(|l| l.lock().ok().map(|l| l.needs_full(&m.ctx.operator)))
                    .unwrap_or(true);
            let log = match m.op.snapshot_table(epoch, TableLogWriter::new(full))? {
                TableSnapshot::NoTable => None,
                TableSnapshot::Done(w) => Some(PreparedLog {
                    bytes: LogBytes::Ready(w.finish()),
                    full,
                }),
                TableSnapshot::Deferred => {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    m.deferred = Some(tx);
                    if savepoint || final_state {
                        // Self-contained and final: written before the barrier goes on.
                        m.finish_table_snapshot()?;
                    }
                    Some(PreparedLog {
                        bytes: LogBytes::Pending(rx),
                        full,
                    })
                }
            };
            m.ctx.timers.flush_journal(&mut *m.ctx.state)?;
            let snapshot = if m.ctx.state.states().is_empty() {
                None
            } else if savepoint {
                Some(PreparedSnapshot::Full(m.ctx.state.snapshot()?))
            } else {
                Some(m.ctx.state.prepare_snapshot(epoch)?)
            };
            prepared.push(PreparedMember {
                node: m.ctx.operator.clone(),
                snapshot,
                log,
                watermark: m.ctx.watermark,
            });
        }
        let mut extra = Vec::new();
        if let (Some(h), Some(name)) = (self.source.as_mut(), &self.source_name) {
            extra.push(ExtraState {
                node: name.clone(),
                state: SubtaskState {
                    source_position: Some(h.source.snapshot_position(epoch)),
                    ..Default::default()
                },
                sink_data: None,
            });
        }
        if let (Some(s), Some(name)) = (self.sink.as_mut(), &self.sink_name) {
            let handle = s.sink.pre_commit(epoch).await?;
            extra.push(ExtraState {
                node: name.clone(),
                state: SubtaskState {
                    sink_commit: Some(handle),
                    ..Default::default()
                },
                sink_data: s.sink.checkpoint_data(),
            });
        }
        Ok((prepared, extra))
    }

    /// Barrier `b` reached this task (aligned on every input, or triggered at the
    /// source): snapshot, forward the barrier, store the snapshot in the background.
    async fn checkpoint(&mut self, b: CheckpointBarrier) -> Result<()> {
        if self.ckpt.is_none() {
            for m in &mut self.members {
                m.op.handle_checkpoint(b.epoch, &mut m.ctx)?;
            }
            if let Some(s) = self.sink.as_mut() {
                s.sink.pre_commit(b.epoch).await?;
            }
            return self.broadcast(Message::Barrier(b)).await;
        }
        self.commit_completed().await?;
        let started = Instant::now();
        let (prepared, extra) = self.prepare_snapshot(b.epoch, b.savepoint, false).await?;
        let sync_us = started.elapsed().as_micros() as u64;
        self.broadcast(Message::Barrier(b)).await?;
        let subtask = self.subtask;
        if let Some(c) = self.ckpt.as_mut() {
            c.store_async(b, subtask, prepared, extra, sync_us);
        }
        Ok(())
    }

    async fn tick(&mut self) -> Result<()> {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        for k in 0..self.members.len() {
            let mut out = Collector::default();
            {
                let m = &mut self.members[k];
                if m.op.tick_interval().is_none() {
                    continue;
                }
                m.op.handle_tick(now_ms, &mut m.ctx, &mut out)?;
            }
            self.drain(k, out).await?;
            // What a tick left (a large firing in chunks) continues at once.
            while self.members[k].op.more_to_fire() {
                let mut out = Collector::default();
                {
                    let m = &mut self.members[k];
                    m.op.handle_tick(now_ms, &mut m.ctx, &mut out)?;
                }
                self.drain(k, out).await?;
            }
        }
        Ok(())
    }

    /// Pushes `batch` into member `k` (input `port`), and its results down the chain.
    async fn push(&mut self, k: usize, port: usize, batch: RecordBatch) -> Result<()> {
        let mut stack: Vec<(usize, usize, RecordBatch)> = vec![(k, port, batch)];
        while let Some((k, port, batch)) = stack.pop() {
            if k >= self.members.len() {
                self.emit_tail(batch).await?;
                continue;
            }
            let mut out = Collector::default();
            {
                let m = &mut self.members[k];
                OperatorMetrics::add(&m.metrics.records_in, batch.num_rows() as u64);
                OperatorMetrics::add(&m.metrics.bytes_in, batch.get_array_memory_size() as u64);
                OperatorMetrics::add(&m.metrics.batches_in, 1);
                let started = Instant::now();
                m.op.process_batch(port, batch, &mut m.ctx, &mut out)?;
                OperatorMetrics::add(&m.metrics.busy_nanos, started.elapsed().as_nanos() as u64);
            }
            self.route_side(k, out.take_side()).await?;
            let main = out.take_main();
            let rows: u64 = main.iter().map(|b| b.num_rows() as u64).sum();
            let bytes: u64 = main.iter().map(|b| b.get_array_memory_size() as u64).sum();
            OperatorMetrics::add(&self.members[k].metrics.records_out, rows);
            OperatorMetrics::add(&self.members[k].metrics.bytes_out, bytes);
            for b in main.into_iter().rev() {
                stack.push((k + 1, 0, b));
            }
        }
        Ok(())
    }

    /// Routes what member `k` emitted outside `process_batch` (watermark, tick, end).
    async fn drain(&mut self, k: usize, mut out: Collector) -> Result<()> {
        self.route_side(k, out.take_side()).await?;
        let main = out.take_main();
        let rows: u64 = main.iter().map(|b| b.num_rows() as u64).sum();
        let bytes: u64 = main.iter().map(|b| b.get_array_memory_size() as u64).sum();
        if let Some(m) = self.members.get(k) {
            OperatorMetrics::add(&m.metrics.records_out, rows);
            OperatorMetrics::add(&m.metrics.bytes_out, bytes);
        }
        for b in main {
            self.push(k + 1, 0, b).await?;
        }
        Ok(())
    }

    async fn route_side(&mut self, k: usize, side: Vec<(String, RecordBatch)>) -> Result<()> {
        if side.is_empty() {
            return Ok(());
        }
        let (node, metrics) = match self.members.get(k) {
            Some(m) => (m.node, m.metrics.clone()),
            None => return Ok(()),
        };
        for (name, b) in side {
            if name == DEAD_LETTER_OUTPUT {
                OperatorMetrics::add(&metrics.dead_letters, b.num_rows() as u64);
                count_dead_letters(&metrics, &b);
            }
            self.route(
                &StreamRef {
                    node,
                    side: Some(name),
                },
                b,
            )
            .await?;
        }
        Ok(())
    }

    async fn emit_tail(&mut self, batch: RecordBatch) -> Result<()> {
        if let Some(s) = self.sink.as_mut() {
            crate::fault::point("processing");
            OperatorMetrics::add(&s.metrics.records_in, batch.num_rows() as u64);
            OperatorMetrics::add(&s.metrics.records_out, batch.num_rows() as u64);
            let bytes = batch.get_array_memory_size() as u64;
            OperatorMetrics::add(&s.metrics.bytes_in, bytes);
            OperatorMetrics::add(&s.metrics.bytes_out, bytes);
            let started = Instant::now();
            let r = s.sink.write_batch(batch).await;
            OperatorMetrics::add(&s.metrics.busy_nanos, started.elapsed().as_nanos() as u64);
            return r;
        }
        let tail = StreamRef::main(self.tail);
        self.route(&tail, batch).await
    }

    async fn route(&mut self, stream: &StreamRef, batch: RecordBatch) -> Result<()> {
        if let Some(routes) = self.routes.get_mut(stream) {
            let n = routes.len();
            for (i, r) in routes.iter_mut().enumerate() {
                if i + 1 == n {
                    return r.send_batch(batch).await;
                }
                r.send_batch(batch.clone()).await?;
            }
        }
        // No consumer: e.g. a `late` side output nobody reads (still counted).
        Ok(())
    }

    /// A latency marker reached this task: a sink records it, others pass it on
    /// (after everything the chain did with the data before it).
    async fn on_latency_marker(&mut self, m: LatencyMarker) -> Result<()> {
        if self.sink.is_some() {
            if let Some((_, metrics)) = &self.latency {
                metrics.latency.record(m.emitted.elapsed());
            }
            return Ok(());
        }
        self.broadcast(Message::LatencyMarker(m)).await
    }

    async fn broadcast(&mut self, msg: Message) -> Result<()> {
        for routes in self.routes.values() {
            for r in routes {
                r.send_control(msg.clone()).await?;
            }
        }
        Ok(())
    }

    /// The chain's input watermark advanced to `t`: let each member fire what is
    /// complete (its output flowing down the chain first), then forward `t`.
    async fn advance_watermark(&mut self, input: EventTime) -> Result<()> {
        let mut t = input;
        for k in 0..self.members.len() {
            loop {
                let mut out = Collector::default();
                let more = {
                    let m = &mut self.members[k];
                    m.ctx.watermark = t;
                    let started = Instant::now();
                    m.op.handle_watermark(t, &mut m.ctx, &mut out)?;
                    OperatorMetrics::add(
                        &m.metrics.busy_nanos,
                        started.elapsed().as_nanos() as u64,
                    );
                    m.op.more_to_fire()
                };
                self.drain(k, out).await?;
                if !more {
                    break;
                }
            }
            // An operator may hold the watermark back (a join whose output rows carry
            // times up to its interval behind its input watermark).
            t = self.members[k].op.output_watermark(t).min(t);
        }
        for (_, m) in &self.chain_nodes {
            m.set_watermark(t);
        }
        self.broadcast(Message::Watermark(Watermark::EventTime(t)))
            .await
    }

    async fn end_of_input(mut self) -> Result<()> {
        if self.source.is_some() {
            // Bounded input: a final watermark closes every window downstream.
            self.advance_watermark(EventTime::MAX).await?;
        }
        for k in 0..self.members.len() {
            loop {
                let mut out = Collector::default();
                let more = {
                    let m = &mut self.members[k];
                    m.op.handle_end_of_input(&mut m.ctx, &mut out)?;
                    m.op.more_to_fire()
                };
                self.drain(k, out).await?;
                if !more {
                    break;
                }
            }
        }
        if self.ckpt.is_none() {
            if let Some(s) = self.sink.as_mut() {
                s.sink.finish().await?;
            }
            self.broadcast(Message::EndOfStream).await?;
            debug!(job = %self.job, subtask = self.subtask, "task finished");
            return Ok(());
        }
        // Checkpointing: the final state goes to the coordinator, whose final
        // checkpoint (or a later periodic one) commits the sink's last part.
        self.commit_completed().await?;
        let final_epoch = self.ckpt.as_ref().map(|c| c.last_barrier + 1).unwrap_or(1);
        let (prepared, extra) = self.prepare_snapshot(final_epoch, false, true).await?;
        let subtask = self.subtask;
        if let Some(c) = self.ckpt.as_mut() {
            c.store_final(final_epoch, subtask, prepared, extra).await?;
        }
        self.broadcast(Message::EndOfStream).await?;
        if self.sink.is_some() {
            loop {
                let done = self
                    .ckpt
                    .as_ref()
                    .is_none_or(|c| c.last_committed >= final_epoch);
                if done {
                    break;
                }
                let changed = match self.ckpt.as_mut() {
                    Some(c) => c.completed.changed().await.is_ok(),
                    None => false,
                };
                if !changed {
                    return Err(EngineError::Checkpoint(
                        "the checkpoint coordinator stopped before the final commit".into(),
                    ));
                }
                self.commit_completed().await?;
            }
        }
        debug!(job = %self.job, subtask = self.subtask, "task finished");
        Ok(())
    }
}
