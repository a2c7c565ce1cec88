//! The task side of checkpoints: choosing and restoring each operator's state backend,
//! taking a task's snapshot at a barrier (the synchronous part) and storing it
//! (asynchronously, then acknowledging to the coordinator), and committing sinks when a
//! checkpoint completes.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use super::coordinator::{savepoint_name, TaskEvent, TaskId, TaskSnapshot};
use super::metadata::{CheckpointMetadata, FileHandle, StateHandle, SubtaskState};
use super::storage::{CheckpointDir, CheckpointStorage};
use super::StateBackendConfig;
use crate::error::{EngineError, Result};
use crate::message::CheckpointBarrier;
use crate::state::{
    InMemoryStateBackend, KeyGroupRange, KeyedStateBackend, PreparedSnapshot, TimerService,
};
#[cfg(feature = "rocksdb")]
use crate::state::{RocksDbStateBackend, SystemClock};

/// Shared files known to be in storage, by `"{instance}/{name}"`.
pub type KnownFiles = HashMap<String, FileHandle>;

/// What a restored job starts from.
#[derive(Clone)]
pub struct RestorePoint {
    /// The checkpoint.
    pub metadata: Arc<CheckpointMetadata>,
    /// The store its handles point into.
    pub storage: CheckpointStorage,
}

/// A task's link to the coordinator.
pub struct TaskCheckpointing {
    /// Who this task is.
    pub id: TaskId,
    /// Where snapshots go.
    pub storage: CheckpointStorage,
    /// To the coordinator.
    pub events: mpsc::UnboundedSender<TaskEvent>,
    /// Triggered barriers (source tasks inject them).
    pub trigger: watch::Receiver<Option<CheckpointBarrier>>,
    /// Completed epochs.
    pub completed: watch::Receiver<u64>,
    /// The last barrier this task handled.
    pub last_barrier: u64,
    /// The last epoch this task committed.
    pub last_committed: u64,
    /// Shared files of the last completed checkpoint.
    pub known: KnownFiles,
    /// Shared files each checkpoint in flight referenced, filled by the uploads.
    pub in_flight: Arc<Mutex<BTreeMap<u64, KnownFiles>>>,
    /// Table-log chains of this task's operators, as of the last stored snapshot.
    pub logs: Arc<Mutex<LogChains>>,
    /// Resolves when the previous `store_async` finished: stores run one after another,
    /// since a delta extends the chain the previous one left.
    pub previous_store: Option<tokio::sync::oneshot::Receiver<()>>,
}

/// The table-log chain of each operator of a task (by node name), as of the last
/// snapshot the task stored; an operator without an entry (or marked `needs_full`)
/// writes a full file at its next barrier.
#[derive(Debug, Default)]
pub struct LogChains {
    /// Unique to this process and task: names its log files.
    pub token: String,
    /// Per node.
    pub chains: HashMap<String, LogChain>,
}

/// One operator's chain of table-log files.
#[derive(Debug, Clone, Default)]
pub struct LogChain {
    /// A full file, then deltas, oldest first.
    pub files: Vec<FileHandle>,
    /// The full file's size.
    pub full_bytes: u64,
    /// The deltas' size.
    pub delta_bytes: u64,
    /// A store failed or a savepoint took the changes: the next file must be full.
    pub needs_full: bool,
}

/// Deltas are compacted into a new full file once they outgrow the full one (and this).
pub const LOG_COMPACT_MIN_BYTES: u64 = 8 << 20;

/// [`LOG_COMPACT_MIN_BYTES`], or `WEIR_TABLE_LOG_COMPACT_BYTES` (tests use a small value
/// so that compaction happens in small jobs too).
fn log_compact_min_bytes() -> u64 {
    static MIN: std::sync::LazyLock<u64> = std::sync::LazyLock::new(|| {
        std::env::var("WEIR_TABLE_LOG_COMPACT_BYTES")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(LOG_COMPACT_MIN_BYTES)
    });
    *MIN
}

impl LogChains {
    /// A fresh set, with a token unique to this process and task.
    pub fn new(task: TaskId) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        LogChains {
            token: format!(
                "{:x}-{:x}-{}-{}",
                std::process::id(),
                nanos & 0xffff_ffff_ffff,
                task.0,
                task.1
            ),
            chains: HashMap::new(),
        }
    }

    /// Whether `node`'s next table log must be full.
    pub fn needs_full(&self, node: &str) -> bool {
        self.chains.get(node).is_none_or(|c| c.needs_full)
    }

    /// Every chain starts over at the next barrier (a store failed, or a savepoint or
    /// final state consumed the operators' changes).
    pub fn reset_all(&mut self) {
        for c in self.chains.values_mut() {
            c.needs_full = true;
        }
    }
}

/// A source's or sink's part of a task's snapshot: its position or pre-commit, and the
/// sink's checkpoint data to store beside (see `Sink::checkpoint_data`).
pub struct ExtraState {
    /// The node's name.
    pub node: String,
    /// The position or pre-commit.
    pub state: SubtaskState,
    /// Bytes to store in the checkpoint's directory and refer to from `state`.
    pub sink_data: Option<Vec<u8>>,
}

/// One operator's prepared snapshot, ready to be stored.
pub struct PreparedMember {
    /// The node's name.
    pub node: String,
    /// The state (none when the operator holds no keyed state).
    pub snapshot: Option<PreparedSnapshot>,
    /// The operator's table log (see `Operator::snapshot_table`), if it keeps a table.
    pub log: Option<PreparedLog>,
    /// The operator's input watermark at the barrier.
    pub watermark: i64,
}

/// The bytes of a table-log file written at a barrier.
pub struct PreparedLog {
    /// The file.
    pub bytes: LogBytes,
    /// Whether it is a full file (starts a new chain).
    pub full: bool,
}

/// A table-log file: written, or still being written by its operator (a deferred
/// snapshot, see `Operator::continue_table_snapshot`).
pub enum LogBytes {
    /// Complete.
    Ready(Vec<u8>),
    /// The task sends the bytes when the operator finished them (or drops the sender
    /// when it fails or stops).
    Pending(tokio::sync::oneshot::Receiver<Vec<u8>>),
}

impl TaskCheckpointing {
    /// The completed epoch, if a newer one than last committed was announced.
    pub fn newly_completed(&mut self) -> Option<u64> {
        let e = *self.completed.borrow_and_update();
        (e > self.last_committed).then_some(e)
    }

    /// Records that `epoch` completed: its shared files become the base of the next
    /// incremental snapshot.
    pub fn mark_committed(&mut self, epoch: u64) {
        self.last_committed = epoch;
        if let Ok(mut m) = self.in_flight.lock() {
            let mut done: Vec<u64> = m.range(..=epoch).map(|(e, _)| *e).collect();
            if let Some(last) = done.pop() {
                if let Some(files) = m.remove(&last) {
                    self.known = files;
                }
            }
            for e in done {
                m.remove(&e);
            }
        }
    }

    /// A newly triggered barrier for a source task.
    pub fn triggered(&mut self) -> Option<CheckpointBarrier> {
        // Compare epochs rather than rely on the watch's "changed" flag: waiting on
        // `changed()` elsewhere marks the value seen.
        let b = (*self.trigger.borrow_and_update())?;
        (b.epoch > self.last_barrier).then_some(b)
    }

    /// Stores the prepared snapshots in the background and acknowledges (or declines)
    /// checkpoint `barrier`.
    pub fn store_async(
        &mut self,
        barrier: CheckpointBarrier,
        subtask: usize,
        members: Vec<PreparedMember>,
        extra: Vec<ExtraState>,
        sync_us: u64,
    ) {
        self.last_barrier = self.last_barrier.max(barrier.epoch);
        let storage = self.storage.clone();
        let known = self.known.clone();
        let events = self.events.clone();
        let in_flight = self.in_flight.clone();
        let logs = self.logs.clone();
        let previous = self.previous_store.take();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        self.previous_store = Some(done_rx);
        let task = self.id;
        let dir = if barrier.savepoint {
            CheckpointDir::Savepoint(savepoint_name(barrier.epoch))
        } else {
            CheckpointDir::Epoch(barrier.epoch)
        };
        let epoch = barrier.epoch;
        tokio::spawn(async move {
            if let Some(p) = previous {
                let _ = p.await;
            }
            let stored = store(
                &storage, &dir, subtask, members, extra, &known, &logs, epoch,
            )
            .await;
            if stored.is_err() {
                if let Ok(mut l) = logs.lock() {
                    l.reset_all();
                }
            }
            let _ = done_tx.send(());
            let ev = match stored {
                Ok((mut snapshot, files)) => {
                    snapshot.sync_us = sync_us;
                    crate::fault::point("checkpoint_write");
                    if let Ok(mut m) = in_flight.lock() {
                        m.insert(epoch, files);
                    }
                    TaskEvent::Ack {
                        epoch,
                        task,
                        snapshot,
                    }
                }
                Err(e) => TaskEvent::Decline {
                    epoch,
                    task,
                    reason: e.to_string(),
                },
            };
            let _ = events.send(ev);
        });
    }

    /// Stores the task's final state (end of input) and hands it to the coordinator.
    pub async fn store_final(
        &mut self,
        final_epoch: u64,
        subtask: usize,
        members: Vec<PreparedMember>,
        extra: Vec<ExtraState>,
    ) -> Result<()> {
        let dir = CheckpointDir::Final(final_epoch);
        if let Some(p) = self.previous_store.take() {
            let _ = p.await;
        }
        let (snapshot, _) = store(
            &self.storage,
            &dir,
            subtask,
            members,
            extra,
            &self.known,
            &self.logs,
            final_epoch,
        )
        .await
        .map_err(|e| EngineError::Checkpoint(format!("storing the final state failed: {e}")))?;
        crate::fault::point("checkpoint_write");
        let _ = self.events.send(TaskEvent::Finished {
            task: self.id,
            final_epoch,
            snapshot,
        });
        Ok(())
    }

    /// Tells the coordinator a sink committed `epoch`.
    pub fn committed(&self, epoch: u64) {
        let _ = self.events.send(TaskEvent::Committed {
            epoch,
            task: self.id,
        });
    }
}

/// Writes the members' snapshots; the task snapshot and the shared files it refers to.
#[allow(clippy::too_many_arguments)]
async fn store(
    storage: &CheckpointStorage,
    dir: &CheckpointDir,
    subtask: usize,
    members: Vec<PreparedMember>,
    extra: Vec<ExtraState>,
    known: &KnownFiles,
    logs: &Arc<Mutex<LogChains>>,
    epoch: u64,
) -> Result<(TaskSnapshot, KnownFiles)> {
    let mut nodes = Vec::new();
    let mut files = KnownFiles::new();
    for m in members {
        let mut st = SubtaskState {
            watermark: (m.watermark > i64::MIN).then_some(m.watermark),
            ..SubtaskState::default()
        };
        if let Some(log) = m.log {
            let (chain, up) = store_log(storage, dir, &m.node, log, logs, epoch).await?;
            st.table_log = Some(chain);
            st.uploaded_bytes += up;
        }
        match m.snapshot {
            None => {}
            Some(PreparedSnapshot::Full(snap)) => {
                let (h, up) = storage.write_full(dir, &m.node, subtask, &snap).await?;
                st.state = Some(h);
                st.uploaded_bytes += up;
            }
            Some(PreparedSnapshot::Files(local)) => {
                let r = storage
                    .upload_files(dir, &m.node, subtask, &local, known)
                    .await;
                if let Err(e) = std::fs::remove_dir_all(&local.dir) {
                    debug!(dir = %local.dir.display(), error = %e, "could not remove a local checkpoint");
                }
                let (h, up) = r?;
                st.uploaded_bytes += up;
                if let StateHandle::Files {
                    instance,
                    files: fs,
                } = &h
                {
                    for f in fs.iter().filter(|f| f.shared) {
                        files.insert(format!("{instance}/{}", f.name), f.clone());
                    }
                }
                st.state = Some(h);
            }
        }
        nodes.push((m.node, st));
    }
    for e in extra {
        let mut st = e.state;
        if let Some(data) = e.sink_data {
            let (path, bytes) = storage.write_sink_data(dir, &e.node, subtask, data).await?;
            st.sink_data = Some(path);
            st.uploaded_bytes += bytes;
        }
        nodes.push((e.node, st));
    }
    Ok((
        TaskSnapshot {
            subtask,
            nodes,
            sync_us: 0,
        },
        files,
    ))
}

/// Stores one operator's table-log file and returns the chain the snapshot refers to
/// and the bytes uploaded. A checkpoint's file goes to the shared space and extends the
/// chain the previous store left (a full file starts a new one); when the deltas
/// outgrow the full file they are compacted into a new one here, in the background.
/// A savepoint's or final state's file is full and self-contained; the chain of the
/// next checkpoint starts over.
async fn store_log(
    storage: &CheckpointStorage,
    dir: &CheckpointDir,
    node: &str,
    log: PreparedLog,
    logs: &Arc<Mutex<LogChains>>,
    epoch: u64,
) -> Result<(Vec<FileHandle>, u64)> {
    let lock_err = || EngineError::Checkpoint("table-log chains poisoned".into());
    let (token, chain) = {
        let l = logs.lock().map_err(|_| lock_err())?;
        (l.token.clone(), l.chains.get(node).cloned())
    };
    let kind = if log.full { "full" } else { "delta" };
    let name = format!("log-{token}-{epoch}.{kind}");
    let bytes = match log.bytes {
        LogBytes::Ready(b) => b,
        LogBytes::Pending(rx) => rx.await.map_err(|_| {
            EngineError::Checkpoint(format!(
                "operator `{node}` did not finish its table log for checkpoint {epoch}"
            ))
        })?,
    };
    let mut up = bytes.len() as u64;
    let file = storage.write_table_log(dir, node, &name, bytes).await?;
    if !matches!(dir, CheckpointDir::Epoch(_)) {
        if !log.full {
            return Err(EngineError::Checkpoint(format!(
                "operator `{node}` wrote a delta table log into a savepoint or final state"
            )));
        }
        let mut l = logs.lock().map_err(|_| lock_err())?;
        l.reset_all();
        return Ok((vec![file], up));
    }
    let mut next = if log.full {
        LogChain {
            full_bytes: file.bytes,
            files: vec![file],
            ..Default::default()
        }
    } else {
        let mut c = match chain {
            Some(c) if !c.needs_full => c,
            _ => {
                return Err(EngineError::Checkpoint(format!(
                    "operator `{node}`: a table-log delta without the chain it extends \
                     (an earlier store failed); the next checkpoint writes a full file"
                )))
            }
        };
        c.delta_bytes += file.bytes;
        c.files.push(file);
        c
    };
    if next.files.len() > 1 && next.delta_bytes > next.full_bytes.max(log_compact_min_bytes()) {
        let started = std::time::Instant::now();
        let mut parts = Vec::with_capacity(next.files.len());
        for f in &next.files {
            parts.push(storage.read_object(&f.path).await?);
        }
        let merged = tokio::task::spawn_blocking(move || crate::state::table_log::compact(&parts))
            .await
            .map_err(|e| EngineError::Checkpoint(format!("compacting a table log: {e}")))??;
        up += merged.len() as u64;
        let name = format!("log-{token}-{epoch}.compacted");
        let file = storage.write_table_log(dir, node, &name, merged).await?;
        debug!(
            node,
            epoch,
            files = next.files.len(),
            bytes = file.bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "compacted a table log"
        );
        next = LogChain {
            full_bytes: file.bytes,
            files: vec![file],
            ..Default::default()
        };
    }
    let files = next.files.clone();
    logs.lock()
        .map_err(|_| lock_err())?
        .chains
        .insert(node.to_string(), next);
    Ok((files, up))
}

/// Reads the table-log chains of `node` for the old subtasks overlapping this
/// subtask's key groups and replays them; the live entries, and the chain to extend
/// when the subtask continues exactly one old subtask's chain of shared files.
pub async fn restore_table_log(
    restore: &RestorePoint,
    node: &str,
    subtask: usize,
    parallelism: usize,
    range: &KeyGroupRange,
) -> Result<Option<(Vec<crate::state::TableEntry>, Option<LogChain>)>> {
    let Some(ns) = restore.metadata.nodes.get(node) else {
        return Ok(None);
    };
    let olds = overlapping_subtasks(
        restore.metadata.max_parallelism,
        ns.parallelism,
        parallelism,
        subtask,
    );
    let chains: Vec<&Vec<FileHandle>> = olds
        .iter()
        .filter_map(|&o| ns.subtasks.get(o).and_then(|s| s.table_log.as_ref()))
        .collect();
    if chains.is_empty() {
        return Ok(None);
    }
    let mut entries = Vec::new();
    for chain in &chains {
        let mut parts = Vec::with_capacity(chain.len());
        for f in chain.iter() {
            parts.push(restore.storage.read_object(&f.path).await?);
        }
        let range = *range;
        let mut e =
            tokio::task::spawn_blocking(move || crate::state::table_log::replay(&parts, &range))
                .await
                .map_err(|e| EngineError::Checkpoint(format!("replaying a table log: {e}")))??;
        entries.append(&mut e);
    }
    let continued = match chains.as_slice() {
        [only]
            if ns.parallelism == parallelism
                && !only.is_empty()
                && only.iter().all(|f| f.shared) =>
        {
            let full_bytes = only[0].bytes;
            Some(LogChain {
                files: (*only).clone(),
                full_bytes,
                delta_bytes: only[1..].iter().map(|f| f.bytes).sum(),
                needs_full: false,
            })
        }
        _ => None,
    };
    Ok(Some((entries, continued)))
}

/// The watermarks the restored checkpoint recorded for `node`, per key-group range of
/// the old subtasks overlapping `range` (`i64::MIN` for one that had none).
pub fn restored_watermarks(
    restore: &RestorePoint,
    node: &str,
    subtask: usize,
    parallelism: usize,
) -> Vec<(KeyGroupRange, i64)> {
    let Some(ns) = restore.metadata.nodes.get(node) else {
        return Vec::new();
    };
    let maxp = restore.metadata.max_parallelism;
    overlapping_subtasks(maxp, ns.parallelism, parallelism, subtask)
        .into_iter()
        .filter_map(|o| {
            let st = ns.subtasks.get(o)?;
            Some((
                KeyGroupRange::for_subtask(maxp, ns.parallelism, o),
                st.watermark.unwrap_or(i64::MIN),
            ))
        })
        .collect()
}

/// Which old subtasks' state a new subtask needs: its own when the parallelism is
/// unchanged, else every old subtask whose key groups overlap its range.
pub fn overlapping_subtasks(
    max_parallelism: u16,
    old_parallelism: usize,
    new_parallelism: usize,
    subtask: usize,
) -> Vec<usize> {
    if old_parallelism == new_parallelism {
        return vec![subtask];
    }
    let mine = KeyGroupRange::for_subtask(max_parallelism, new_parallelism, subtask);
    (0..old_parallelism)
        .filter(|&o| {
            let r = KeyGroupRange::for_subtask(max_parallelism, old_parallelism, o);
            r.start < mine.end && mine.start < r.end
        })
        .collect()
}

/// A suffix unique to this process and moment, for instance ids of restored databases.
#[cfg(feature = "rocksdb")]
fn restore_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}{:x}", std::process::id(), nanos & 0xffff_ffff_ffff)
}

/// Where a subtask's working RocksDB lives.
pub fn rocksdb_dir(base: &Path, job: &str, node: &str, subtask: usize) -> PathBuf {
    base.join(sanitize(job)).join(format!(
        "{}-{subtask}-{}",
        sanitize(node),
        std::process::id()
    ))
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Creates an operator's state backend and restores it from `restore` (its node's
/// handles for the subtasks overlapping `range`); then restores the timers.
#[allow(clippy::too_many_arguments)]
pub async fn open_backend(
    config: &StateBackendConfig,
    keyed: bool,
    job: &str,
    node: &str,
    subtask: usize,
    parallelism: usize,
    range: &KeyGroupRange,
    restore: Option<&RestorePoint>,
    timers: &mut TimerService,
) -> Result<OpenedBackend> {
    let handles: Vec<StateHandle> = match restore {
        Some(r) => match r.metadata.nodes.get(node) {
            Some(ns) => overlapping_subtasks(
                r.metadata.max_parallelism,
                ns.parallelism,
                parallelism,
                subtask,
            )
            .into_iter()
            .filter_map(|o| ns.subtasks.get(o).and_then(|s| s.state.clone()))
            .collect(),
            None => Vec::new(),
        },
        None => Vec::new(),
    };
    let started = std::time::Instant::now();
    let mut known = KnownFiles::new();
    let mut working_dir = None;
    let mut backend: Box<dyn KeyedStateBackend> = match (config, keyed) {
        (
            StateBackendConfig::RocksDb {
                dir,
                memory_budget_bytes,
                ..
            },
            true,
        ) => {
            open_rocksdb(
                dir,
                memory_budget_bytes,
                job,
                node,
                subtask,
                parallelism,
                range,
                restore,
                &handles,
                &mut known,
                &mut working_dir,
            )
            .await?
        }
        _ => {
            let mut mem = InMemoryStateBackend::new();
            for (i, h) in handles.iter().enumerate() {
                let r = restore.ok_or_else(|| EngineError::Runtime("no restore point".into()))?;
                let snap = match h {
                    StateHandle::Full { .. } => r.storage.read_full(h).await?,
                    StateHandle::Files { instance, .. } => {
                        // RocksDB state restored into memory: read it through RocksDB.
                        let tmp = std::env::temp_dir().join(format!(
                            "weir-import-{}-{}-{subtask}-{i}",
                            std::process::id(),
                            sanitize(node)
                        ));
                        r.storage.download_files(h, &tmp).await?;
                        let snap = read_rocksdb_files(&tmp, instance);
                        let _ = std::fs::remove_dir_all(&tmp);
                        snap?
                    }
                };
                mem.restore(&snap, range)?;
            }
            Box::new(mem)
        }
    };
    if !handles.is_empty() {
        let n = timers.restore_from_backend(&*backend, range)?;
        let bytes: u64 = handles.iter().map(StateHandle::bytes).sum();
        tracing::info!(
            job,
            node,
            subtask,
            timers = n,
            bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "state restored"
        );
    }
    if restore.is_some() && handles.is_empty() {
        if let Some(r) = restore {
            if !r.metadata.nodes.contains_key(node) {
                warn!(
                    job,
                    node, "the checkpoint holds no state for this step: it starts empty"
                );
            }
        }
    }
    backend.purge_expired()?;
    Ok(OpenedBackend {
        backend,
        known,
        working_dir,
    })
}

/// Opens a subtask's RocksDB backend in its working directory under `dir` (default
/// `.weir/state`): the restored files directly when the subtask owns the same key groups
/// as one old subtask, else a fresh database into which the owned key groups are imported.
#[cfg(feature = "rocksdb")]
#[allow(clippy::too_many_arguments)]
async fn open_rocksdb(
    dir: &Option<PathBuf>,
    memory_budget_bytes: &usize,
    job: &str,
    node: &str,
    subtask: usize,
    parallelism: usize,
    range: &KeyGroupRange,
    restore: Option<&RestorePoint>,
    handles: &[StateHandle],
    known: &mut KnownFiles,
    working_dir: &mut Option<PathBuf>,
) -> Result<Box<dyn KeyedStateBackend>> {
    let base = dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(".weir").join("state"));
    let db_dir = rocksdb_dir(&base, job, node, subtask);
    remove_stale_dirs(&base.join(sanitize(job)));
    *working_dir = Some(db_dir.clone());
    let clock = Arc::new(SystemClock);
    // Same key groups as one old subtask: open its files directly.
    let same = match (handles, restore) {
        ([StateHandle::Files { instance, files }], Some(r)) => {
            let ns = r.metadata.nodes.get(node);
            (ns.map(|n| n.parallelism) == Some(parallelism))
                .then(|| (instance.clone(), files.clone()))
        }
        _ => None,
    };
    if let (Some((instance, files)), Some(r)) = (same, restore) {
        if db_dir.exists() {
            std::fs::remove_dir_all(&db_dir)
                .map_err(|e| EngineError::io("removing", &db_dir, e))?;
        }
        r.storage.download_files(&handles[0], &db_dir).await?;
        // A new instance id: RocksDB numbers new SST files on from the restored
        // checkpoint, and a later checkpoint of the old instance may already
        // have uploaded other contents under those names. The restored files
        // stay known under the new id, so they are not uploaded again.
        let fresh = format!("{instance}.{}", restore_suffix());
        for f in files.iter().filter(|f| f.shared) {
            known.insert(format!("{fresh}/{}", f.name), f.clone());
        }
        let db = RocksDbStateBackend::open_restored(&db_dir, &fresh, *memory_budget_bytes, clock)?;
        Ok(Box::new(db))
    } else {
        let mut db = RocksDbStateBackend::create(&db_dir, *memory_budget_bytes, clock)?;
        for (i, h) in handles.iter().enumerate() {
            let r = restore.ok_or_else(|| EngineError::Runtime("no restore point".into()))?;
            match h {
                StateHandle::Full { .. } => {
                    let snap = r.storage.read_full(h).await?;
                    db.restore(&snap, range)?;
                }
                StateHandle::Files { .. } => {
                    let tmp = db_dir.with_extension(format!("import-{i}"));
                    r.storage.download_files(h, &tmp).await?;
                    let res = db.import_range(&tmp, range);
                    let _ = std::fs::remove_dir_all(&tmp);
                    res?;
                }
            }
        }
        Ok(Box::new(db))
    }
}

#[cfg(not(feature = "rocksdb"))]
#[allow(clippy::too_many_arguments)]
async fn open_rocksdb(
    _dir: &Option<PathBuf>,
    _memory_budget_bytes: &usize,
    _job: &str,
    _node: &str,
    _subtask: usize,
    _parallelism: usize,
    _range: &KeyGroupRange,
    _restore: Option<&RestorePoint>,
    _handles: &[StateHandle],
    _known: &mut KnownFiles,
    _working_dir: &mut Option<PathBuf>,
) -> Result<Box<dyn KeyedStateBackend>> {
    Err(EngineError::Config(crate::state::NO_ROCKSDB.into()))
}

/// Reads a RocksDB checkpoint's files (downloaded to `dir`) into a full snapshot, for a
/// job restored onto the in-memory backend.
#[cfg(feature = "rocksdb")]
fn read_rocksdb_files(dir: &Path, instance: &str) -> Result<crate::state::StateSnapshot> {
    RocksDbStateBackend::open_restored(dir, instance, 8 * 1024 * 1024, Arc::new(SystemClock))
        .and_then(|db| db.snapshot())
}

#[cfg(not(feature = "rocksdb"))]
fn read_rocksdb_files(_dir: &Path, _instance: &str) -> Result<crate::state::StateSnapshot> {
    Err(EngineError::Config(crate::state::NO_ROCKSDB.into()))
}

/// A subtask's state backend, opened and restored.
pub struct OpenedBackend {
    /// The backend.
    pub backend: Box<dyn KeyedStateBackend>,
    /// Shared files already in storage (a RocksDB database opened from a checkpoint).
    pub known: KnownFiles,
    /// The local working directory, to remove when the task ends.
    pub working_dir: Option<PathBuf>,
}

/// Removes local working directories (and their checkpoint copies) when dropped: keep
/// it after the backends that use them, so that they are closed first.
#[derive(Debug, Default)]
pub struct WorkingDirs(pub Vec<PathBuf>);

impl Drop for WorkingDirs {
    fn drop(&mut self) {
        for d in &self.0 {
            remove_with_checkpoints(d);
        }
    }
}

/// Removes `dir` and the `<dir>.chk-*` / `<dir>.import-*` siblings made from it.
fn remove_with_checkpoints(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return;
    };
    let prefix = format!("{}.", name.to_string_lossy());
    if let Ok(entries) = std::fs::read_dir(parent) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Removes working directories of earlier runs of the job whose process is gone (a
/// killed run cannot clean up after itself). Directory names end in `-<pid>`.
#[cfg(feature = "rocksdb")]
fn remove_stale_dirs(job_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(job_dir) else {
        return;
    };
    let me = std::process::id();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let base = name.split('.').next().unwrap_or("");
        let Some(pid) = base.rsplit('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let alive = pid == me || Path::new(&format!("/proc/{pid}")).exists();
        if !alive && cfg!(target_os = "linux") {
            debug!(dir = %e.path().display(), "removing the working state of a dead run");
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

#[cfg(all(test, feature = "rocksdb"))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::checkpoint::metadata::{CheckpointKind, NodeState, METADATA_FORMAT};
    use crate::checkpoint::{S3Options, StorageConfig};
    use crate::state::StateDescriptor;

    fn storage(name: &str) -> CheckpointStorage {
        CheckpointStorage::open(
            &StorageConfig {
                url: format!("memory://{name}"),
                s3: S3Options::default(),
            },
            "job",
        )
        .unwrap()
    }

    /// One table-log store through `store`, as the runtime does it.
    async fn store_table(
        st: &CheckpointStorage,
        logs: &Arc<Mutex<LogChains>>,
        dir: CheckpointDir,
        epoch: u64,
        w: crate::state::TableLogWriter,
    ) -> Result<SubtaskState> {
        let full = w.is_full();
        let (snap, _) = store(
            st,
            &dir,
            0,
            vec![PreparedMember {
                node: "win".into(),
                snapshot: None,
                log: Some(PreparedLog {
                    bytes: LogBytes::Ready(w.finish()),
                    full,
                }),
                watermark: i64::MIN,
            }],
            Vec::new(),
            &KnownFiles::new(),
            logs,
            epoch,
        )
        .await?;
        Ok(snap.nodes[0].1.clone())
    }

    fn metadata_with(
        node: &str,
        epoch: u64,
        parallelism: usize,
        subtasks: Vec<SubtaskState>,
    ) -> CheckpointMetadata {
        let mut nodes = BTreeMap::new();
        nodes.insert(
            node.to_string(),
            NodeState {
                parallelism,
                subtasks,
            },
        );
        CheckpointMetadata {
            format: METADATA_FORMAT,
            job: "job".into(),
            epoch,
            timestamp_ms: 0,
            completed_ms: 0,
            kind: CheckpointKind::Checkpoint,
            max_parallelism: 128,
            nodes,
        }
    }

    /// The watermark each old subtask recorded comes back with its key groups: the same
    /// subtask at the same parallelism, both old ones (each with its range) when two
    /// merge into one, the one owning the range when one is split; none recorded reads
    /// as the start of time.
    #[test]
    fn restored_watermarks_follow_the_old_subtasks_key_groups() {
        let st = storage("restored-watermarks");
        let old = |w: Option<i64>| SubtaskState {
            watermark: w,
            ..Default::default()
        };
        let restore = RestorePoint {
            metadata: Arc::new(metadata_with(
                "win",
                3,
                2,
                vec![old(Some(1_000)), old(Some(2_000))],
            )),
            storage: st.clone(),
        };
        let r0 = KeyGroupRange::for_subtask(128, 2, 0);
        let r1 = KeyGroupRange::for_subtask(128, 2, 1);
        assert_eq!(
            restored_watermarks(&restore, "win", 1, 2),
            vec![(r1, 2_000)]
        );
        assert_eq!(
            restored_watermarks(&restore, "win", 0, 1),
            vec![(r0, 1_000), (r1, 2_000)]
        );
        let split = restored_watermarks(&restore, "win", 3, 4);
        assert_eq!(split, vec![(r1, 2_000)]);
        assert!(restored_watermarks(&restore, "other", 0, 1).is_empty());
        let none = RestorePoint {
            metadata: Arc::new(metadata_with("win", 3, 1, vec![old(None)])),
            storage: st,
        };
        assert_eq!(
            restored_watermarks(&none, "win", 0, 1),
            vec![(KeyGroupRange::all(128), i64::MIN)]
        );
    }

    /// A table log: the first file is full, later ones are deltas that extend the
    /// chain; deltas outgrowing the full file are compacted into one; a savepoint is
    /// self-contained and makes the next checkpoint start over; a delta after a failed
    /// store is refused; restoring replays the chain for the subtask's key groups and
    /// continues it when the parallelism is the same.
    #[tokio::test]
    async fn table_log_chains_grow_compact_and_restore() {
        use crate::state::TableLogWriter;
        let st = storage("table-log-chains");
        let logs = Arc::new(Mutex::new(LogChains::new((0, 0))));
        assert!(logs.lock().unwrap().needs_full("win"));
        let mut w = TableLogWriter::new(true);
        for i in 0..1000u32 {
            w.put((i % 128) as u16, &i.to_be_bytes(), &[1u8; 100]);
        }
        let s1 = store_table(&st, &logs, CheckpointDir::Epoch(1), 1, w)
            .await
            .unwrap();
        let c1 = s1.table_log.clone().unwrap();
        assert_eq!(c1.len(), 1);
        assert!(c1[0].shared && c1[0].path.starts_with("shared/win/"));
        assert!(!logs.lock().unwrap().needs_full("win"));
        // A small delta: uploaded alone, the chain grows.
        let mut w = TableLogWriter::new(false);
        w.put(5, &5u32.to_be_bytes(), &[2u8; 100]);
        w.delete(6, &6u32.to_be_bytes());
        let s2 = store_table(&st, &logs, CheckpointDir::Epoch(2), 2, w)
            .await
            .unwrap();
        let c2 = s2.table_log.clone().unwrap();
        assert_eq!(c2.len(), 2);
        assert_eq!(c2[0], c1[0]);
        assert!(
            s2.uploaded_bytes < 200,
            "{} bytes uploaded",
            s2.uploaded_bytes
        );
        // Deltas beyond the full file's size (and the minimum) are compacted.
        let mut epoch = 2;
        let mut last = s2;
        while last.table_log.as_ref().unwrap().len() > 1 {
            epoch += 1;
            let mut w = TableLogWriter::new(false);
            for i in 0..20_000u32 {
                w.put(
                    (i % 128) as u16,
                    &(i + 1_000_000 * epoch as u32).to_be_bytes(),
                    &[3u8; 100],
                );
                w.delete(
                    (i % 128) as u16,
                    &(i + 1_000_000 * epoch as u32).to_be_bytes(),
                );
            }
            last = store_table(&st, &logs, CheckpointDir::Epoch(epoch), epoch, w)
                .await
                .unwrap();
            assert!(epoch < 20, "never compacted");
        }
        let compacted = last.table_log.clone().unwrap();
        assert!(compacted[0].name.ends_with(".compacted"));
        let restore = RestorePoint {
            metadata: Arc::new(metadata_with("win", epoch, 1, vec![last.clone()])),
            storage: st.clone(),
        };
        let (entries, chain) = restore_table_log(&restore, "win", 0, 1, &KeyGroupRange::all(128))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(entries.len(), 999);
        assert!(entries
            .iter()
            .any(|(kg, k, v)| *kg == 5 && k == &5u32.to_be_bytes() && v == &vec![2u8; 100]));
        assert_eq!(chain.unwrap().files, compacted);
        // Two subtasks after a restore: each replays its key groups, none continues.
        let mut total = 0;
        for sub in 0..2 {
            let range = KeyGroupRange::for_subtask(128, 2, sub);
            let (e, chain) = restore_table_log(&restore, "win", sub, 2, &range)
                .await
                .unwrap()
                .unwrap();
            assert!(e.iter().all(|(kg, _, _)| range.contains(*kg)));
            assert!(chain.is_none());
            total += e.len();
        }
        assert_eq!(total, 999);
        // A savepoint: full, in its directory; the next checkpoint starts over.
        let sp = store_table(
            &st,
            &logs,
            CheckpointDir::Savepoint("sp".into()),
            epoch + 1,
            TableLogWriter::new(true),
        )
        .await
        .unwrap();
        let f = &sp.table_log.unwrap()[0];
        assert!(!f.shared && f.path.starts_with("savepoints/"));
        assert!(logs.lock().unwrap().needs_full("win"));
        let delta = store_table(
            &st,
            &logs,
            CheckpointDir::Epoch(epoch + 2),
            epoch + 2,
            TableLogWriter::new(false),
        )
        .await;
        assert!(delta.is_err(), "a delta without its chain must be refused");
        let full = store_table(
            &st,
            &logs,
            CheckpointDir::Epoch(epoch + 3),
            epoch + 3,
            TableLogWriter::new(true),
        )
        .await
        .unwrap();
        assert_eq!(full.table_log.unwrap().len(), 1);
    }

    fn rocks(dir: &Path) -> StateBackendConfig {
        StateBackendConfig::RocksDb {
            dir: Some(dir.to_path_buf()),
            memory_budget_bytes: 4 * 1024 * 1024,
            operator_memory_bytes: None,
        }
    }

    fn fill(b: &mut dyn KeyedStateBackend, from: u32, to: u32) {
        let d = StateDescriptor::new("s");
        for i in from..to {
            let key = i.to_be_bytes();
            let kg = (i % 128) as u16;
            b.value_put(&d, crate::state::StateAddr::key(kg, &key), &[7u8; 100])
                .unwrap();
        }
    }

    fn metadata(epoch: u64, parallelism: usize, handles: Vec<StateHandle>) -> CheckpointMetadata {
        let subtasks = handles
            .into_iter()
            .map(|h| SubtaskState {
                state: Some(h),
                ..Default::default()
            })
            .collect();
        metadata_with("op", epoch, parallelism, subtasks)
    }

    /// Bytes of the files of `cur` that `prev` does not have (by name, shared only),
    /// and of its private files.
    fn new_and_private(prev: &StateHandle, cur: &StateHandle) -> (u64, u64) {
        let (StateHandle::Files { files: p, .. }, StateHandle::Files { files: c, .. }) =
            (prev, cur)
        else {
            panic!("RocksDB handles expected")
        };
        let old: std::collections::HashSet<&str> = p.iter().map(|f| f.name.as_str()).collect();
        let fresh = c
            .iter()
            .filter(|f| f.shared && !old.contains(f.name.as_str()))
            .map(|f| f.bytes)
            .sum();
        let private = c.iter().filter(|f| !f.shared).map(|f| f.bytes).sum();
        (fresh, private)
    }

    async fn snapshot_and_store(
        b: &mut dyn KeyedStateBackend,
        st: &CheckpointStorage,
        epoch: u64,
        known: &KnownFiles,
    ) -> (StateHandle, u64, KnownFiles) {
        let prepared = b.prepare_snapshot(epoch).unwrap();
        let logs = Arc::new(Mutex::new(LogChains::new((0, 0))));
        let (snap, files) = store(
            st,
            &CheckpointDir::Epoch(epoch),
            0,
            vec![PreparedMember {
                node: "op".into(),
                snapshot: Some(prepared),
                log: None,
                watermark: i64::MIN,
            }],
            Vec::new(),
            known,
            &logs,
            epoch,
        )
        .await
        .unwrap();
        let s = &snap.nodes[0].1;
        (s.state.clone().unwrap(), s.uploaded_bytes, files)
    }

    /// Through the same functions the runtime uses: the first RocksDB checkpoint uploads
    /// the SST files, an unchanged state uploads only a few KB of private files, a small
    /// change uploads a small SST; restoring with the same parallelism opens the files
    /// (and does not upload them again), restoring with another parallelism imports
    /// exactly the owned key groups.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rocksdb_checkpoints_are_incremental_and_restore_by_key_group() {
        let tmp = tempfile::tempdir().unwrap();
        let st = storage("task-incremental");
        let all = KeyGroupRange::all(128);
        let mut timers = TimerService::new();
        let mut opened = open_backend(
            &rocks(&tmp.path().join("a")),
            true,
            "job",
            "op",
            0,
            1,
            &all,
            None,
            &mut timers,
        )
        .await
        .unwrap();
        let b = opened.backend.as_mut();
        fill(b, 0, 50_000);
        let (h1, up1, known1) = snapshot_and_store(b, &st, 1, &KnownFiles::new()).await;
        assert!(up1 > 400_000, "first checkpoint uploads the state: {up1}");
        let (h2, up2, known2) = snapshot_and_store(b, &st, 2, &known1).await;
        // Unchanged state: only private files, unless a background compaction wrote
        // new SST files in between (then exactly those).
        let (fresh2, private2) = new_and_private(&h1, &h2);
        assert_eq!(up2, fresh2 + private2);
        assert!(private2 < 64 * 1024, "private files only: {private2}");
        fill(b, 50_000, 50_100);
        let (h3, up3, _) = snapshot_and_store(b, &st, 3, &known2).await;
        let (fresh3, private3) = new_and_private(&h2, &h3);
        assert_eq!(up3, fresh3 + private3);
        assert!(fresh3 > 0, "the change is uploaded");
        let want = b.snapshot().unwrap();

        // Same parallelism: the files are opened as they are, and known.
        let point = RestorePoint {
            metadata: Arc::new(metadata(3, 1, vec![h3.clone()])),
            storage: st.clone(),
        };
        let mut t2 = TimerService::new();
        let mut restored = open_backend(
            &rocks(&tmp.path().join("b")),
            true,
            "job",
            "op",
            0,
            1,
            &all,
            Some(&point),
            &mut t2,
        )
        .await
        .unwrap();
        assert_eq!(restored.backend.snapshot().unwrap(), want);
        assert!(!restored.known.is_empty());
        let (h4, up4, _) =
            snapshot_and_store(restored.backend.as_mut(), &st, 4, &restored.known).await;
        // The restored files are not uploaded again: checkpoint 4 refers to the very
        // objects of checkpoint 3 and uploads only files RocksDB wrote since (a
        // compaction may run after opening) plus its private files.
        let (StateHandle::Files { files: f3, .. }, StateHandle::Files { files: f4, .. }) =
            (&h3, &h4)
        else {
            panic!("RocksDB handles expected")
        };
        let old: HashMap<&str, &FileHandle> = f3.iter().map(|f| (f.name.as_str(), f)).collect();
        let mut expected = 0;
        for f in f4 {
            match old.get(f.name.as_str()) {
                Some(o) if f.shared => assert_eq!(f.path, o.path, "{} re-uploaded", f.name),
                _ => expected += f.bytes,
            }
        }
        assert_eq!(up4, expected, "only new files are uploaded");
        assert!(f4
            .iter()
            .any(|f| f.shared && old.contains_key(f.name.as_str())));

        // Another parallelism: subtask 1 of 2 imports key groups 64..128 only; the
        // in-memory backend reads RocksDB files too.
        for cfg in [rocks(&tmp.path().join("c")), StateBackendConfig::Memory] {
            let mut t3 = TimerService::new();
            let half = KeyGroupRange::for_subtask(128, 2, 1);
            let o = open_backend(&cfg, true, "job", "op", 1, 2, &half, Some(&point), &mut t3)
                .await
                .unwrap();
            let got = o.backend.snapshot().unwrap();
            let want_half: Vec<_> = want
                .key_groups
                .iter()
                .filter(|g| half.contains(g.key_group))
                .cloned()
                .collect();
            assert_eq!(got.key_groups, want_half, "{cfg:?}");
        }
    }
}
