//! What a completed checkpoint records: per node and subtask, a handle to the keyed
//! state, the source position and the sink's pending commit. Stored as JSON in the
//! checkpoint's `_metadata` object, which is written last.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The metadata format version.
pub const METADATA_FORMAT: u32 = 1;

/// Periodic checkpoint, savepoint, or the final checkpoint of a bounded job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CheckpointKind {
    /// A periodic checkpoint, subject to retention.
    Checkpoint,
    /// A user-triggered savepoint: self-contained (state in the canonical format, no
    /// shared files) and never deleted by retention.
    Savepoint {
        /// Its name.
        name: String,
    },
    /// Taken when every input of a bounded job ended: restoring it only finishes the
    /// sinks' commits.
    Final,
}

/// One completed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointMetadata {
    /// [`METADATA_FORMAT`].
    pub format: u32,
    /// The job's name.
    pub job: String,
    /// The checkpoint's number.
    pub epoch: u64,
    /// When it was triggered (ms since the Unix epoch).
    pub timestamp_ms: i64,
    /// When it completed.
    pub completed_ms: i64,
    /// What kind.
    pub kind: CheckpointKind,
    /// The job's number of key groups.
    pub max_parallelism: u16,
    /// Per node (by name), the state of each subtask.
    pub nodes: BTreeMap<String, NodeState>,
}

impl CheckpointMetadata {
    /// Every object (relative to the job's root) a handle of this checkpoint refers to.
    pub fn referenced_paths(&self) -> Vec<String> {
        let mut out = Vec::new();
        for n in self.nodes.values() {
            for s in &n.subtasks {
                if let Some(h) = &s.state {
                    match h {
                        StateHandle::Full { path, .. } => out.push(path.clone()),
                        StateHandle::Files { files, .. } => {
                            out.extend(files.iter().map(|f| f.path.clone()))
                        }
                    }
                }
                if let Some(path) = &s.sink_data {
                    out.push(path.clone());
                }
                if let Some(files) = &s.table_log {
                    out.extend(files.iter().map(|f| f.path.clone()));
                }
            }
        }
        out
    }

    /// Bytes of state the checkpoint refers to (shared files included).
    pub fn state_bytes(&self) -> u64 {
        self.nodes
            .values()
            .flat_map(|n| &n.subtasks)
            .map(|s| {
                s.state.as_ref().map_or(0, StateHandle::bytes)
                    + s.table_log.iter().flatten().map(|f| f.bytes).sum::<u64>()
            })
            .sum()
    }
}

/// The state of one node: one entry per subtask of the parallelism it ran with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    /// The node's parallelism when the checkpoint was taken.
    pub parallelism: usize,
    /// Per subtask.
    pub subtasks: Vec<SubtaskState>,
}

/// What one subtask of a node stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubtaskState {
    /// Keyed state and timers (operators), or none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<StateHandle>,
    /// The source position (sources).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_position: Option<serde_json::Value>,
    /// What the sink's `pre_commit` returned (sinks): committed on restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink_commit: Option<serde_json::Value>,
    /// The sink's checkpoint data (`Sink::checkpoint_data`), stored beside: its object
    /// path relative to the job's root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink_data: Option<String>,
    /// Bytes this subtask uploaded for this checkpoint (not counting files an earlier
    /// checkpoint already holds).
    #[serde(default)]
    pub uploaded_bytes: u64,
    /// The chain of table-log files of an operator that keeps its own table (see
    /// `state::table_log`): a full file, then deltas, oldest first. Absent in
    /// checkpoints written before table logs (format 1 without it): such windows are
    /// in `state`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_log: Option<Vec<FileHandle>>,
    /// The operator's input watermark at the barrier (operators), stored by the
    /// runtime; absent before the first watermark and in checkpoints written before
    /// the runtime stored it (then windows and joins kept it in keyed state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<i64>,
}

/// Where a subtask's keyed state is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StateHandle {
    /// A [`StateSnapshot`](crate::state::StateSnapshot) in its binary form.
    Full {
        /// Object path relative to the job's root.
        path: String,
        /// Its size.
        bytes: u64,
    },
    /// The files of a RocksDB checkpoint.
    Files {
        /// The database instance the files belong to.
        instance: String,
        /// Every file, with where it is stored.
        files: Vec<FileHandle>,
    },
}

impl StateHandle {
    /// Bytes of state behind the handle.
    pub fn bytes(&self) -> u64 {
        match self {
            StateHandle::Full { bytes, .. } => *bytes,
            StateHandle::Files { files, .. } => files.iter().map(|f| f.bytes).sum(),
        }
    }
}

/// One file of a [`StateHandle::Files`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileHandle {
    /// The file's name in the database directory.
    pub name: String,
    /// Object path relative to the job's root (`shared/...` for shared files).
    pub path: String,
    /// Its size.
    pub bytes: u64,
    /// Whether it lives in `shared/` and may be referenced by several checkpoints.
    pub shared: bool,
}
