//! Sinks: where a job's results leave the engine. A sink takes part in checkpoints by a
//! two-phase commit: [`Sink::pre_commit`] at the barrier, [`Sink::commit`] once the
//! checkpoint is complete. Without checkpoints a bounded job calls
//! [`Sink::finish`] at the end of input.

use arrow::record_batch::RecordBatch;

use crate::error::Result;

/// What a sink subtask knows about where it runs.
#[derive(Debug, Clone)]
pub struct SinkContext {
    /// The job's name.
    pub job: String,
    /// The sink's name in the job.
    pub sink: String,
    /// This subtask's index.
    pub subtask: usize,
    /// The sink's parallelism.
    pub parallelism: usize,
    /// Whether the job checkpoints: output must then become visible only through
    /// [`Sink::commit`] (exactly-once), and [`Sink::finish`] is not called.
    pub exactly_once: bool,
}

/// What a sink subtask gets when its job is restored from a checkpoint.
#[derive(Debug, Clone, Default)]
pub struct SinkRecovery {
    /// The checkpoint's epoch.
    pub epoch: u64,
    /// What `pre_commit` returned, for the old subtasks this subtask takes over: its own
    /// when the parallelism is unchanged; after a change of parallelism, subtask 0 gets
    /// every old subtask's and the others none.
    pub pending: Vec<serde_json::Value>,
    /// The sink's parallelism when the checkpoint was taken.
    pub old_parallelism: usize,
    /// What [`Sink::checkpoint_data`] gave at the same pre-commits, in the order of
    /// `pending` (`None` where it gave nothing).
    pub data: Vec<Option<Vec<u8>>>,
}

/// A destination for records. Created per subtask by a
/// [`SinkFactory`](crate::registry::SinkFactory).
#[async_trait::async_trait]
pub trait Sink: Send {
    /// Opens files or connections. Called once before the first batch.
    async fn open(&mut self, _ctx: &SinkContext) -> Result<()> {
        Ok(())
    }

    /// Writes (or buffers) a batch.
    async fn write_batch(&mut self, batch: RecordBatch) -> Result<()>;

    /// Flushes what belongs to checkpoint `epoch` so that it can be committed later;
    /// returns what recovery needs to commit it (e.g. a transaction id).
    async fn pre_commit(&mut self, _epoch: u64) -> Result<serde_json::Value> {
        Ok(serde_json::Value::Null)
    }

    /// Data to store in the checkpoint with the pre-commit just made, given back to
    /// [`Sink::recover`]: e.g. the epoch's records, for a sink whose external system
    /// cannot resume another process's transaction and so must be able to write them
    /// again. Called right after [`Sink::pre_commit`]; `None` (the default) stores
    /// nothing.
    fn checkpoint_data(&mut self) -> Option<Vec<u8>> {
        None
    }

    /// Makes checkpoint `epoch`'s output visible, with that of every earlier epoch not
    /// yet committed. Must be idempotent.
    async fn commit(&mut self, _epoch: u64) -> Result<()> {
        Ok(())
    }

    /// Restoring from a checkpoint, after [`Sink::open`] and before the first batch:
    /// commit what the checkpoint's pre-commits list (the checkpoint completed, but the
    /// commit may not have happened before the crash), idempotently, and discard what
    /// was written after it and never committed.
    async fn recover(&mut self, _recovery: &SinkRecovery) -> Result<()> {
        Ok(())
    }

    /// End of input: flush and publish everything.
    async fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}
