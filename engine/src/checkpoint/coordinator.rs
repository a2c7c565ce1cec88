//! The checkpoint coordinator: one per job, next to the tasks. It triggers checkpoint
//! *n* at the sources (they inject barrier *n*), collects every task's acknowledgement
//! (its state handles, source position and sink pre-commit), writes the checkpoint's
//! metadata last, announces the completion (sinks commit), and applies retention. A
//! checkpoint that a task declines or that times out is aborted and the job goes on.
//!
//! Tasks that finished (bounded input) hand in their final state once; it stands in for
//! their acknowledgement of every later checkpoint. When every task has finished, the
//! coordinator writes a final checkpoint and stops.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use super::metadata::{
    CheckpointKind, CheckpointMetadata, NodeState, SubtaskState, METADATA_FORMAT,
};
use super::storage::CheckpointStorage;
use super::CheckpointConfig;
use crate::error::{EngineError, Result};
use crate::message::CheckpointBarrier;

/// A task of the job: (chain index, subtask).
pub type TaskId = (usize, usize);

/// What one task recorded for a checkpoint: per node of its chain, this subtask's state.
#[derive(Debug, Clone, Default)]
pub struct TaskSnapshot {
    /// The subtask index.
    pub subtask: usize,
    /// Per node name.
    pub nodes: Vec<(String, SubtaskState)>,
    /// How long the task's synchronous part took (operators' `handle_checkpoint` and
    /// table logs, timers, the backend's snapshot, the sink's pre-commit), µs.
    pub sync_us: u64,
}

/// What tasks tell the coordinator.
#[derive(Debug)]
pub enum TaskEvent {
    /// The task's snapshot for `epoch` is stored.
    Ack {
        /// The checkpoint.
        epoch: u64,
        /// Who.
        task: TaskId,
        /// What it stored.
        snapshot: TaskSnapshot,
    },
    /// The task could not store its snapshot for `epoch`: the checkpoint is aborted.
    Decline {
        /// The checkpoint.
        epoch: u64,
        /// Who.
        task: TaskId,
        /// Why.
        reason: String,
    },
    /// The task's input ended; this is its final state.
    Finished {
        /// Who.
        task: TaskId,
        /// The epoch after the last barrier the task handled: its final state stands in
        /// only for checkpoints from this epoch on (earlier ones need its ack).
        final_epoch: u64,
        /// Its final state.
        snapshot: TaskSnapshot,
    },
    /// A sink task committed `epoch`.
    Committed {
        /// The checkpoint.
        epoch: u64,
        /// Who.
        task: TaskId,
    },
}

/// Live checkpoint counters, for the CLI, the benchmark and metrics.
#[derive(Debug, Default)]
pub struct CheckpointStats {
    /// Checkpoints completed.
    pub completed: AtomicU64,
    /// Checkpoints aborted (declined, timed out, metadata not written).
    pub aborted: AtomicU64,
    /// The last completed epoch.
    pub last_epoch: AtomicU64,
    /// Duration of the last completed checkpoint (trigger to metadata written), ms.
    pub last_duration_ms: AtomicU64,
    /// Bytes uploaded by the last completed checkpoint.
    pub last_uploaded_bytes: AtomicU64,
    /// Bytes of state the last completed checkpoint refers to (shared files included).
    pub last_state_bytes: AtomicU64,
    /// Bytes uploaded by all completed checkpoints.
    pub total_uploaded_bytes: AtomicU64,
    /// Sum of the durations of all completed checkpoints, ms.
    pub total_duration_ms: AtomicU64,
    /// Longest completed checkpoint, ms.
    pub max_duration_ms: AtomicU64,
    /// When the last checkpoint completed, ms since the Unix epoch (0: none yet).
    pub last_completed_ms: std::sync::atomic::AtomicI64,
    /// The longest synchronous part of any task in the last completed checkpoint, µs.
    pub last_sync_us: AtomicU64,
    /// The longest synchronous part of any task in any completed checkpoint, µs.
    pub max_sync_us: AtomicU64,
    /// Sum over completed checkpoints of their longest synchronous part, µs.
    pub total_sync_us: AtomicU64,
    /// The latest checkpoints and savepoints, completed or failed, oldest first.
    history: std::sync::Mutex<std::collections::VecDeque<CheckpointRecord>>,
}

/// Checkpoints kept in [`CheckpointStats::history`].
const HISTORY: usize = 100;

/// One checkpoint or savepoint, for the REST API and the dashboard.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CheckpointRecord {
    /// Its epoch.
    pub epoch: u64,
    /// `checkpoint`, `savepoint` or `final`.
    pub kind: &'static str,
    /// `completed` or `failed`.
    pub status: &'static str,
    /// When it was triggered, ms since the Unix epoch.
    pub started_at_ms: i64,
    /// Trigger to metadata written (or to the failure), ms.
    pub duration_ms: u64,
    /// Bytes of state it refers to.
    pub size_bytes: u64,
    /// Bytes it uploaded.
    pub uploaded_bytes: u64,
    /// Where it is (completed ones), as a URL.
    pub location: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
}

impl CheckpointStats {
    /// The latest checkpoints and savepoints, oldest first.
    pub fn history(&self) -> Vec<CheckpointRecord> {
        self.history
            .lock()
            .map(|h| h.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The checkpoint a run started now would resume from: the latest completed one.
    pub fn latest_restore_point(&self) -> Option<CheckpointRecord> {
        self.history.lock().ok().and_then(|h| {
            h.iter()
                .rev()
                .find(|r| r.status == "completed" && r.kind != "savepoint")
                .cloned()
        })
    }

    fn push(&self, r: CheckpointRecord) {
        if let Ok(mut h) = self.history.lock() {
            if h.len() == HISTORY {
                h.pop_front();
            }
            h.push_back(r);
        }
    }

    fn record(&self, epoch: u64, duration: Duration, uploaded: u64, state: u64, sync_us: u64) {
        let ms = duration.as_millis() as u64;
        self.last_sync_us.store(sync_us, Ordering::Relaxed);
        self.max_sync_us.fetch_max(sync_us, Ordering::Relaxed);
        self.total_sync_us.fetch_add(sync_us, Ordering::Relaxed);
        self.last_completed_ms.store(now_ms(), Ordering::Relaxed);
        self.completed.fetch_add(1, Ordering::Relaxed);
        self.last_epoch.store(epoch, Ordering::Relaxed);
        self.last_duration_ms.store(ms, Ordering::Relaxed);
        self.last_uploaded_bytes.store(uploaded, Ordering::Relaxed);
        self.last_state_bytes.store(state, Ordering::Relaxed);
        self.total_uploaded_bytes
            .fetch_add(uploaded, Ordering::Relaxed);
        self.total_duration_ms.fetch_add(ms, Ordering::Relaxed);
        self.max_duration_ms.fetch_max(ms, Ordering::Relaxed);
    }
}

/// A request from outside the job (CLI, REST, signal).
#[derive(Debug)]
pub enum CoordinatorRequest {
    /// Take a savepoint now; reply with its reference once complete.
    Savepoint(oneshot::Sender<Result<String>>),
    /// Take a checkpoint now, wait until every sink committed it, then reply (the
    /// caller then cancels the job: it can resume from that checkpoint).
    StopWithCheckpoint(oneshot::Sender<Result<u64>>),
    /// The same with a savepoint (Flink's stop-with-savepoint): sinks commit it like a
    /// checkpoint, so the job resumes from it exactly where it stopped; reply with its
    /// epoch.
    StopWithSavepoint(oneshot::Sender<Result<u64>>),
}

/// The coordinator's ends of the channels the tasks use.
pub struct CoordinatorChannels {
    /// The latest triggered barrier (sources inject it).
    pub trigger: watch::Sender<Option<CheckpointBarrier>>,
    /// The latest completed epoch (tasks commit up to it).
    pub completed: watch::Sender<u64>,
    /// Task events.
    pub events: mpsc::UnboundedReceiver<TaskEvent>,
    /// Outside requests.
    pub requests: mpsc::UnboundedReceiver<CoordinatorRequest>,
}

/// A checkpoint being taken.
struct InFlight {
    barrier: CheckpointBarrier,
    started: Instant,
    deadline: tokio::time::Instant,
    acks: HashMap<TaskId, TaskSnapshot>,
    reply: Option<CoordinatorRequest>,
    /// A task declined: abort, never complete.
    declined: bool,
    /// Why the first task that declined did.
    decline_reason: Option<String>,
}

/// Drives checkpoints of one job.
pub struct Coordinator {
    config: CheckpointConfig,
    storage: CheckpointStorage,
    job: String,
    max_parallelism: u16,
    /// Parallelism by node name.
    nodes: BTreeMap<String, usize>,
    tasks: Vec<TaskId>,
    /// Tasks with a sink (they commit).
    sink_tasks: HashSet<TaskId>,
    channels: CoordinatorChannels,
    next_epoch: u64,
    retained: Vec<CheckpointMetadata>,
    /// Shared files the last few retentions deleted: an acknowledgement still naming
    /// one is stale (a task's base for incremental uploads lags by at most one
    /// completed checkpoint, so a short history suffices).
    deleted: std::collections::VecDeque<HashSet<String>>,
    /// Final states of finished tasks, with their final epoch.
    finished: HashMap<TaskId, (u64, TaskSnapshot)>,
    /// The highest epoch each sink task committed.
    sink_committed: HashMap<TaskId, u64>,
    stats: Arc<CheckpointStats>,
    /// Aborted checkpoints (their late uploads are deleted as they arrive).
    aborted: HashSet<u64>,
    /// Aborted checkpoints whose directory must be deleted again (a late upload).
    to_discard: Vec<u64>,
    /// Aborted checkpoints (not savepoints) whose directories were deleted: deleted
    /// once more when every task has finished, in case a task wrote late files whose
    /// acknowledgement was never processed.
    aborted_dirs: Vec<u64>,
    /// A stop request waiting for every sink to commit `epoch`.
    stopping: Option<(u64, HashSet<TaskId>, oneshot::Sender<Result<u64>>)>,
    /// Checkpoints (not savepoints) aborted since the last completed one.
    consecutive_failures: u32,
    /// Set when more consecutive checkpoints failed than the job tolerates: the
    /// coordinator returns it, which fails the job.
    fatal: Option<EngineError>,
}

/// How the coordinator is set up.
pub struct CoordinatorSetup {
    /// Interval, timeout, retention, storage.
    pub config: CheckpointConfig,
    /// The opened store.
    pub storage: CheckpointStorage,
    /// The job's name.
    pub job: String,
    /// Key groups.
    pub max_parallelism: u16,
    /// Parallelism by node name.
    pub nodes: BTreeMap<String, usize>,
    /// Every task.
    pub tasks: Vec<TaskId>,
    /// Tasks that end in a sink.
    pub sink_tasks: HashSet<TaskId>,
    /// The first epoch to use (above every epoch in the store).
    pub first_epoch: u64,
    /// Completed checkpoints already in the store, oldest first (for retention).
    pub retained: Vec<CheckpointMetadata>,
    /// Counters.
    pub stats: Arc<CheckpointStats>,
}

impl Coordinator {
    /// A coordinator over `channels`.
    pub fn new(setup: CoordinatorSetup, channels: CoordinatorChannels) -> Self {
        Coordinator {
            config: setup.config,
            storage: setup.storage,
            job: setup.job,
            max_parallelism: setup.max_parallelism,
            nodes: setup.nodes,
            tasks: setup.tasks,
            sink_tasks: setup.sink_tasks,
            channels,
            next_epoch: setup.first_epoch.max(1),
            retained: setup.retained,
            deleted: std::collections::VecDeque::new(),
            finished: HashMap::new(),
            sink_committed: HashMap::new(),
            stats: setup.stats,
            aborted: HashSet::new(),
            to_discard: Vec::new(),
            aborted_dirs: Vec::new(),
            stopping: None,
            consecutive_failures: 0,
            fatal: None,
        }
    }

    /// Runs until every task finished (after the final checkpoint) or every task
    /// dropped its event sender.
    pub async fn run(mut self) -> Result<()> {
        let interval = self.config.interval;
        let mut next_trigger = tokio::time::Instant::now() + interval;
        let mut inflight: Option<InFlight> = None;
        let mut queued: Vec<CoordinatorRequest> = Vec::new();
        let far = Duration::from_secs(86_400 * 365);
        loop {
            if inflight.is_none() && self.finished.len() == self.tasks.len() {
                self.sweep_aborted().await;
                return self.final_checkpoint().await;
            }
            let deadline = inflight
                .as_ref()
                .map(|f| f.deadline)
                .unwrap_or_else(|| tokio::time::Instant::now() + far);
            let can_trigger = inflight.is_none() && self.stopping.is_none();
            let trigger_at = if queued.is_empty() {
                next_trigger
            } else {
                tokio::time::Instant::now()
            };
            tokio::select! {
                ev = self.channels.events.recv() => {
                    let Some(ev) = ev else {
                        self.sweep_aborted().await;
                        return Ok(());
                    };
                    self.on_event(ev, &mut inflight);
                    for epoch in std::mem::take(&mut self.to_discard) {
                        if let Err(e) = self.storage.discard(epoch).await {
                            warn!(job = %self.job, epoch, error = %e, "could not delete the late files of an aborted checkpoint");
                        }
                    }
                }
                req = self.channels.requests.recv() => {
                    if let Some(r) = req {
                        queued.push(r);
                    }
                }
                _ = tokio::time::sleep_until(trigger_at), if can_trigger => {
                    let reply = if queued.is_empty() { None } else { Some(queued.remove(0)) };
                    inflight = Some(self.trigger(reply));
                }
                _ = tokio::time::sleep_until(deadline), if inflight.is_some() => {
                    if let Some(f) = inflight.take() {
                        self.abort(f, format!("not complete after {:?}", self.config.timeout)).await;
                        next_trigger = tokio::time::Instant::now() + interval;
                    }
                }
            }
            if let Some(f) = inflight.take() {
                if f.declined {
                    let reason = f
                        .decline_reason
                        .clone()
                        .unwrap_or_else(|| "a task declined it".into());
                    self.abort(f, reason).await;
                    next_trigger = tokio::time::Instant::now() + interval;
                } else if self.is_complete(&f) {
                    self.complete(f).await?;
                    next_trigger = tokio::time::Instant::now() + interval;
                } else {
                    inflight = Some(f);
                }
            }
            if let Some(e) = self.fatal.take() {
                return Err(e);
            }
        }
    }

    fn trigger(&mut self, reply: Option<CoordinatorRequest>) -> InFlight {
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        let savepoint = matches!(
            reply,
            Some(CoordinatorRequest::Savepoint(_)) | Some(CoordinatorRequest::StopWithSavepoint(_))
        );
        let barrier = CheckpointBarrier {
            epoch,
            timestamp_ms: now_ms(),
            savepoint,
        };
        debug!(job = %self.job, epoch, savepoint, "triggering checkpoint");
        let _ = self.channels.trigger.send(Some(barrier));
        InFlight {
            barrier,
            started: Instant::now(),
            deadline: tokio::time::Instant::now() + self.config.timeout,
            acks: HashMap::new(),
            reply,
            declined: false,
            decline_reason: None,
        }
    }

    fn on_event(&mut self, ev: TaskEvent, inflight: &mut Option<InFlight>) {
        match ev {
            TaskEvent::Ack {
                epoch,
                task,
                snapshot,
            } => match inflight.as_mut() {
                Some(f) if f.barrier.epoch == epoch => {
                    f.acks.insert(task, snapshot);
                }
                _ => {
                    debug!(job = %self.job, epoch, ?task, "late acknowledgement ignored");
                    if self.aborted.contains(&epoch) {
                        self.to_discard.push(epoch);
                    }
                }
            },
            TaskEvent::Decline {
                epoch,
                task,
                reason,
            } => match inflight.as_mut() {
                Some(f) if f.barrier.epoch == epoch => {
                    debug!(job = %self.job, epoch, ?task, %reason, "checkpoint declined");
                    if !f.declined {
                        f.decline_reason = Some(format!("task {task:?} declined it: {reason}"));
                    }
                    f.declined = true;
                }
                _ => {
                    if self.aborted.contains(&epoch) {
                        self.to_discard.push(epoch);
                    }
                }
            },
            TaskEvent::Finished {
                task,
                final_epoch,
                snapshot,
            } => {
                self.finished.insert(task, (final_epoch, snapshot));
            }
            TaskEvent::Committed { epoch, task } => {
                let c = self.sink_committed.entry(task).or_insert(0);
                *c = (*c).max(epoch);
                let gone = self.sink_done(&task);
                let done = match self.stopping.as_mut() {
                    Some((e, waiting, _)) => {
                        if epoch >= *e || gone {
                            waiting.remove(&task);
                        }
                        waiting.is_empty()
                    }
                    _ => false,
                };
                if done {
                    if let Some((e, _, reply)) = self.stopping.take() {
                        let _ = reply.send(Ok(e));
                    }
                }
            }
        }
    }

    /// A task's final state, if it stands in for checkpoint `epoch`.
    fn final_state(&self, t: &TaskId, epoch: u64) -> Option<&TaskSnapshot> {
        self.finished
            .get(t)
            .filter(|(final_epoch, _)| *final_epoch <= epoch)
            .map(|(_, s)| s)
    }

    /// Whether a finished sink task committed its final part (it has then exited).
    fn sink_done(&self, t: &TaskId) -> bool {
        match (self.finished.get(t), self.sink_committed.get(t)) {
            (Some((final_epoch, _)), Some(c)) => c >= final_epoch,
            _ => false,
        }
    }

    fn is_complete(&self, f: &InFlight) -> bool {
        let e = f.barrier.epoch;
        self.tasks
            .iter()
            .all(|t| f.acks.contains_key(t) || self.final_state(t, e).is_some())
    }

    /// Builds the metadata of a checkpoint from acknowledgements (preferred) and final
    /// states.
    fn metadata(
        &self,
        barrier: &CheckpointBarrier,
        acks: &HashMap<TaskId, TaskSnapshot>,
        kind: CheckpointKind,
    ) -> CheckpointMetadata {
        let mut nodes: BTreeMap<String, NodeState> = self
            .nodes
            .iter()
            .map(|(n, &p)| {
                (
                    n.clone(),
                    NodeState {
                        parallelism: p,
                        subtasks: vec![SubtaskState::default(); p],
                    },
                )
            })
            .collect();
        for t in &self.tasks {
            let Some(snap) = acks.get(t).or_else(|| self.final_state(t, barrier.epoch)) else {
                continue;
            };
            for (node, st) in &snap.nodes {
                if let Some(slot) = nodes
                    .get_mut(node)
                    .and_then(|n| n.subtasks.get_mut(snap.subtask))
                {
                    let mut st = st.clone();
                    if !acks.contains_key(t) {
                        // A final state reused: nothing uploaded for this checkpoint.
                        st.uploaded_bytes = 0;
                    }
                    *slot = st;
                }
            }
        }
        CheckpointMetadata {
            format: METADATA_FORMAT,
            job: self.job.clone(),
            epoch: barrier.epoch,
            timestamp_ms: barrier.timestamp_ms,
            completed_ms: now_ms(),
            kind,
            max_parallelism: self.max_parallelism,
            nodes,
        }
    }

    async fn complete(&mut self, f: InFlight) -> Result<()> {
        let epoch = f.barrier.epoch;
        let kind = match &f.reply {
            Some(CoordinatorRequest::Savepoint(_))
            | Some(CoordinatorRequest::StopWithSavepoint(_)) => CheckpointKind::Savepoint {
                name: savepoint_name(epoch),
            },
            _ => CheckpointKind::Checkpoint,
        };
        let meta = self.metadata(&f.barrier, &f.acks, kind.clone());
        if let Some(stale) = meta
            .referenced_paths()
            .into_iter()
            .find(|p| self.deleted.iter().any(|d| d.contains(p)))
        {
            self.abort(f, format!("it refers to {stale}, removed by retention"))
                .await;
            return Ok(());
        }
        if let Err(e) = self.storage.write_metadata(&meta).await {
            self.abort(f, format!("writing its metadata failed: {e}"))
                .await;
            return Ok(());
        }
        let uploaded: u64 = meta
            .nodes
            .values()
            .flat_map(|n| &n.subtasks)
            .map(|s| s.uploaded_bytes)
            .sum();
        let duration = f.started.elapsed();
        let sync_us = f.acks.values().map(|s| s.sync_us).max().unwrap_or(0);
        self.stats
            .record(epoch, duration, uploaded, meta.state_bytes(), sync_us);
        let kind_word = if f.barrier.savepoint {
            "savepoint"
        } else {
            "checkpoint"
        };
        self.push_completed(kind_word, &f.barrier, duration, uploaded, &meta);
        info!(
            job = %self.job,
            epoch,
            duration_ms = duration.as_millis() as u64,
            uploaded_bytes = uploaded,
            state_bytes = meta.state_bytes(),
            "checkpoint complete"
        );
        crate::fault::point("before_commit");
        let stop_savepoint = matches!(f.reply, Some(CoordinatorRequest::StopWithSavepoint(_)));
        if !f.barrier.savepoint || stop_savepoint {
            self.consecutive_failures = 0;
            // Sinks commit checkpoints only: a savepoint's pending output is published
            // by the next checkpoint (commit covers every earlier epoch), so a restore
            // from the latest checkpoint never finds output it does not cover. The
            // savepoint the job stops with is the exception: nothing comes after it.
            let _ = self.channels.completed.send(epoch);
        }
        match f.reply {
            Some(CoordinatorRequest::Savepoint(reply)) => {
                let _ = reply.send(Ok(savepoint_name(epoch)));
            }
            Some(CoordinatorRequest::StopWithCheckpoint(reply))
            | Some(CoordinatorRequest::StopWithSavepoint(reply)) => {
                // Every sink task commits `epoch`, finished ones too (they wait for
                // their final commit), except those that already exited.
                let waiting: HashSet<TaskId> = self
                    .sink_tasks
                    .iter()
                    .filter(|t| !self.sink_done(t) && self.sink_committed.get(t) < Some(&epoch))
                    .copied()
                    .collect();
                if waiting.is_empty() {
                    let _ = reply.send(Ok(epoch));
                } else {
                    self.stopping = Some((epoch, waiting, reply));
                }
            }
            None => {}
        }
        if kind == CheckpointKind::Checkpoint {
            self.retained.push(meta);
            self.retain().await;
        }
        Ok(())
    }

    /// Records a completed checkpoint in the history.
    fn push_completed(
        &self,
        kind: &'static str,
        barrier: &CheckpointBarrier,
        duration: Duration,
        uploaded: u64,
        meta: &CheckpointMetadata,
    ) {
        self.stats.push(CheckpointRecord {
            epoch: barrier.epoch,
            kind,
            status: "completed",
            started_at_ms: barrier.timestamp_ms,
            duration_ms: duration.as_millis() as u64,
            size_bytes: meta.state_bytes(),
            uploaded_bytes: uploaded,
            location: Some(
                self.storage
                    .describe_dir(&super::storage::CheckpointDir::of(meta)),
            ),
            error: None,
        });
    }

    async fn retain(&mut self) {
        let retain = self.config.retain.max(1);
        match self
            .storage
            .apply_retention(&mut self.retained, retain, &HashSet::new())
            .await
        {
            Ok(report) => {
                if !report.deleted_checkpoints.is_empty() {
                    debug!(job = %self.job, deleted = ?report.deleted_checkpoints, shared = report.deleted_shared.len(), "retention");
                }
                self.deleted
                    .push_back(report.deleted_shared.into_iter().collect());
                while self.deleted.len() > 3 {
                    self.deleted.pop_front();
                }
            }
            Err(e) => warn!(job = %self.job, error = %e, "retention failed; old checkpoints stay"),
        }
    }

    async fn abort(&mut self, f: InFlight, reason: String) {
        let epoch = f.barrier.epoch;
        self.stats.aborted.fetch_add(1, Ordering::Relaxed);
        self.stats.push(CheckpointRecord {
            epoch,
            kind: if f.barrier.savepoint {
                "savepoint"
            } else {
                "checkpoint"
            },
            status: "failed",
            started_at_ms: f.barrier.timestamp_ms,
            duration_ms: f.started.elapsed().as_millis() as u64,
            size_bytes: 0,
            uploaded_bytes: 0,
            location: None,
            error: Some(reason.clone()),
        });
        if !f.barrier.savepoint {
            self.consecutive_failures += 1;
            let tolerated = self.config.tolerable_failures;
            if self.consecutive_failures > tolerated {
                self.fatal = Some(EngineError::Checkpoint(format!(
                    "{} checkpoints in a row failed (the last, {epoch}: {reason}); the job \
                     tolerates {tolerated} (`checkpoint.tolerable_failures`) and stops \
                     rather than run on without committing its output",
                    self.consecutive_failures
                )));
            } else {
                warn!(
                    job = %self.job,
                    epoch,
                    %reason,
                    failures = self.consecutive_failures,
                    tolerated,
                    "checkpoint aborted; the job goes on"
                );
            }
        } else {
            warn!(job = %self.job, epoch, %reason, "savepoint aborted; the job goes on");
        }
        self.aborted.insert(epoch);
        match f.reply {
            Some(CoordinatorRequest::Savepoint(reply)) => {
                let _ = reply.send(Err(EngineError::Checkpoint(format!(
                    "savepoint {epoch} aborted: {reason}"
                ))));
            }
            Some(CoordinatorRequest::StopWithCheckpoint(reply))
            | Some(CoordinatorRequest::StopWithSavepoint(reply)) => {
                let _ = reply.send(Err(EngineError::Checkpoint(format!(
                    "checkpoint {epoch} aborted: {reason}"
                ))));
            }
            None => {}
        }
        if !f.barrier.savepoint {
            self.aborted_dirs.push(epoch);
            if let Err(e) = self.storage.discard(epoch).await {
                warn!(job = %self.job, epoch, error = %e, "could not delete the aborted checkpoint");
            }
        }
    }

    /// Deletes the aborted checkpoints' directories again: no task writes any more.
    async fn sweep_aborted(&mut self) {
        for epoch in std::mem::take(&mut self.aborted_dirs) {
            if let Err(e) = self.storage.discard(epoch).await {
                warn!(job = %self.job, epoch, error = %e, "could not delete the late files of an aborted checkpoint");
            }
        }
    }

    /// Every task finished: the final checkpoint, then the sinks' last commit.
    async fn final_checkpoint(&mut self) -> Result<()> {
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        let barrier = CheckpointBarrier {
            epoch,
            timestamp_ms: now_ms(),
            savepoint: false,
        };
        let started = Instant::now();
        let meta = self.metadata(&barrier, &HashMap::new(), CheckpointKind::Final);
        self.storage.write_metadata(&meta).await.map_err(|e| {
            EngineError::Checkpoint(format!(
                "writing the final checkpoint {epoch} of job {} failed: {e}",
                self.job
            ))
        })?;
        let uploaded = self
            .finished
            .values()
            .flat_map(|(_, s)| &s.nodes)
            .map(|(_, s)| s.uploaded_bytes)
            .sum();
        self.stats
            .record(epoch, started.elapsed(), uploaded, meta.state_bytes(), 0);
        self.push_completed("final", &barrier, started.elapsed(), uploaded, &meta);
        info!(job = %self.job, epoch, "final checkpoint complete");
        crate::fault::point("before_commit");
        let _ = self.channels.completed.send(epoch);
        self.retained.push(meta);
        self.retain().await;
        Ok(())
    }
}

/// The name of the savepoint taken as checkpoint `epoch`.
pub fn savepoint_name(epoch: u64) -> String {
    format!("savepoint-{epoch}")
}

/// Wall-clock ms since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
