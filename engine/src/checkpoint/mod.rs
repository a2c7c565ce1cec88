//! Checkpoints: where a running job's state, source positions and sinks' pending
//! commits go so that the job can resume after a crash with exactly-once output.
//!
//! - [`metadata`]: what one completed checkpoint (or savepoint) records; its
//!   `_metadata` object is written last, so a checkpoint without one is half-written
//!   and never used.
//! - [`storage`]: the object store layout (`file://`, `s3://`, `memory://`), uploading
//!   subtask state (full snapshots, or a RocksDB backend's files incrementally), finding
//!   the latest completed checkpoint, and retention with reference-counted shared
//!   files.
//! - [`coordinator`]: triggers checkpoints at an interval, collects the subtasks'
//!   acknowledgements, writes the metadata, and tells the sinks to commit.
//!
//! The protocol (aligned barriers, as Flink's asynchronous barrier snapshots) is
//! described in `docs/ARCHITECTURE.md`.

pub mod coordinator;
pub mod metadata;
pub mod storage;
pub mod task;

use std::path::PathBuf;
use std::time::Duration;

pub use metadata::{
    CheckpointKind, CheckpointMetadata, FileHandle, NodeState, StateHandle, SubtaskState,
};
pub use storage::{CheckpointDir, CheckpointStorage, RetentionReport};

/// Where checkpoints go and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StorageConfig {
    /// An object store URL: `file:///abs/dir`, `file://./relative/dir` (relative to the
    /// working directory), `s3://bucket/prefix`, or `memory://` (this process only).
    pub url: String,
    /// S3 options (ignored by other schemes). Unset fields fall back to the usual AWS
    /// environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_REGION`, `AWS_ENDPOINT_URL`, …).
    pub s3: S3Options,
}

/// Options of an `s3://` checkpoint store.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct S3Options {
    /// Endpoint of an S3-compatible server, e.g. `http://127.0.0.1:9000`.
    pub endpoint: Option<String>,
    /// The region (default `us-east-1`).
    pub region: Option<String>,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
    /// Session token, for temporary credentials.
    pub session_token: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`), as most S3-compatible servers
    /// need; AWS itself uses virtual-hosted style.
    pub path_style: bool,
    /// Allow `http://` endpoints (local servers, tests).
    pub allow_http: bool,
    /// How long connecting may take (default [`DEFAULT_S3_CONNECT_TIMEOUT`]).
    pub connect_timeout: Option<Duration>,
    /// How long one request may take, response included (default
    /// [`DEFAULT_S3_REQUEST_TIMEOUT`]); a request that takes longer is retried.
    pub request_timeout: Option<Duration>,
}

/// Default connect timeout of S3 requests: a server that is not there fails fast.
pub const DEFAULT_S3_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Default timeout of one S3 request, upload included (large state files take a while).
pub const DEFAULT_S3_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the first request to a checkpoint store may take at job start, per attempt
/// (at most the request timeout): a server that accepts connections and never answers
/// fails start-up within seconds, with a log line per retry.
pub const STARTUP_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Attempts of the start-up request.
pub const STARTUP_PROBE_ATTEMPTS: u32 = 3;

/// Consecutive failed checkpoints a job tolerates before it fails (Flink's
/// `tolerable-failed-checkpoints`), by default.
pub const DEFAULT_TOLERABLE_FAILURES: u32 = 3;

/// The default checkpoint store of a job built in Rust: `./.weir/checkpoints` in the
/// working directory. A YAML job's default is `.weir/checkpoints` next to its job file.
pub const DEFAULT_STORAGE_URL: &str = "file://./.weir/checkpoints";

/// How a job checkpoints.
#[derive(Debug, Clone)]
pub struct CheckpointConfig {
    /// Time between the end of one checkpoint and the trigger of the next.
    pub interval: Duration,
    /// A checkpoint not complete after this long is aborted; the job goes on.
    pub timeout: Duration,
    /// Completed checkpoints to keep (at least 1).
    pub retain: usize,
    /// Consecutive failed (aborted) checkpoints after which the job fails: without it
    /// a job whose store is full or down would run on and never publish exactly-once
    /// output.
    pub tolerable_failures: u32,
    /// Where they go.
    pub storage: StorageConfig,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(600),
            retain: 3,
            tolerable_failures: DEFAULT_TOLERABLE_FAILURES,
            storage: StorageConfig {
                url: DEFAULT_STORAGE_URL.into(),
                s3: S3Options::default(),
            },
        }
    }
}

/// Which keyed state backend the job's operators use.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StateBackendConfig {
    /// Hash maps in memory (the default).
    #[default]
    Memory,
    /// RocksDB on local disk: state larger than memory, incremental checkpoints.
    RocksDb {
        /// Directory of the working databases (default `./.weir/state`).
        dir: Option<PathBuf>,
        /// Memory RocksDB may use per subtask for its block cache and write buffers.
        memory_budget_bytes: usize,
        /// Memory each stateful operator subtask may use for the state it keeps in
        /// memory (open windows) before it moves its coldest keys into RocksDB; `None`:
        /// unbounded (all open windows in memory, the fastest path).
        operator_memory_bytes: Option<usize>,
    },
}

/// The default RocksDB memory budget per subtask.
pub const DEFAULT_ROCKSDB_MEMORY_BUDGET: usize = 64 * 1024 * 1024;
