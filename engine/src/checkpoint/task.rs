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
    InMemoryStateBackend, KeyGroupRange, KeyedStateBackend, PreparedSnapshot, RocksDbStateBackend,
    SystemClock, TimerService,
};

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
}

/// One operator's prepared snapshot, ready to be stored.
pub struct PreparedMember {
    /// The node's name.
    pub node: String,
    /// The state (none when the operator holds no keyed state).
    pub snapshot: Option<PreparedSnapshot>,
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
        extra: Vec<(String, SubtaskState)>,
    ) {
        self.last_barrier = self.last_barrier.max(barrier.epoch);
        let storage = self.storage.clone();
        let known = self.known.clone();
        let events = self.events.clone();
        let in_flight = self.in_flight.clone();
        let task = self.id;
        let dir = if barrier.savepoint {
            CheckpointDir::Savepoint(savepoint_name(barrier.epoch))
        } else {
            CheckpointDir::Epoch(barrier.epoch)
        };
        let epoch = barrier.epoch;
        tokio::spawn(async move {
            let ev = match store(&storage, &dir, subtask, members, extra, &known).await {
                Ok((snapshot, files)) => {
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
        extra: Vec<(String, SubtaskState)>,
    ) -> Result<()> {
        let dir = CheckpointDir::Final(final_epoch);
        let (snapshot, _) = store(&self.storage, &dir, subtask, members, extra, &self.known)
            .await
            .map_err(|e| EngineError::Checkpoint(format!("storing the final state failed: {e}")))?;
        crate::fault::point("checkpoint_write");
        let _ = self.events.send(TaskEvent::Finished {
            task: self.id,
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
async fn store(
    storage: &CheckpointStorage,
    dir: &CheckpointDir,
    subtask: usize,
    members: Vec<PreparedMember>,
    extra: Vec<(String, SubtaskState)>,
    known: &KnownFiles,
) -> Result<(TaskSnapshot, KnownFiles)> {
    let mut nodes = Vec::new();
    let mut files = KnownFiles::new();
    for m in members {
        let mut st = SubtaskState::default();
        match m.snapshot {
            None => {}
            Some(PreparedSnapshot::Full(snap)) => {
                let (h, up) = storage.write_full(dir, &m.node, subtask, &snap).await?;
                st.state = Some(h);
                st.uploaded_bytes = up;
            }
            Some(PreparedSnapshot::Files(local)) => {
                let r = storage
                    .upload_files(dir, &m.node, subtask, &local, known)
                    .await;
                if let Err(e) = std::fs::remove_dir_all(&local.dir) {
                    debug!(dir = %local.dir.display(), error = %e, "could not remove a local checkpoint");
                }
                let (h, up) = r?;
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
                st.uploaded_bytes = up;
            }
        }
        nodes.push((m.node, st));
    }
    nodes.extend(extra);
    Ok((TaskSnapshot { subtask, nodes }, files))
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
) -> Result<(Box<dyn KeyedStateBackend>, KnownFiles)> {
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
    let mut known = KnownFiles::new();
    let mut backend: Box<dyn KeyedStateBackend> = match (config, keyed) {
        (
            StateBackendConfig::RocksDb {
                dir,
                memory_budget_bytes,
            },
            true,
        ) => {
            let base = dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(".weir").join("state"));
            let db_dir = rocksdb_dir(&base, job, node, subtask);
            let clock = Arc::new(SystemClock);
            // Same key groups as one old subtask: open its files directly.
            let same = match (handles.as_slice(), restore) {
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
                let db = RocksDbStateBackend::open_restored(
                    &db_dir,
                    &fresh,
                    *memory_budget_bytes,
                    clock,
                )?;
                Box::new(db)
            } else {
                let mut db = RocksDbStateBackend::create(&db_dir, *memory_budget_bytes, clock)?;
                for (i, h) in handles.iter().enumerate() {
                    let r =
                        restore.ok_or_else(|| EngineError::Runtime("no restore point".into()))?;
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
                Box::new(db)
            }
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
                        let snap = RocksDbStateBackend::open_restored(
                            &tmp,
                            instance,
                            8 * 1024 * 1024,
                            Arc::new(SystemClock),
                        )
                        .and_then(|db| db.snapshot());
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
        debug!(job, node, subtask, timers = n, "state restored");
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
    Ok((backend, known))
}
