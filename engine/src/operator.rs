//! The operator trait: the one interface every processing step implements, built-in or
//! custom. Every lifecycle hook but [`Operator::process_batch`] has a default, so a
//! simple operator implements one method.
//!
//! ```
//! use arrow::record_batch::RecordBatch;
//! use weir_engine::operator::{Collector, Operator, OperatorContext};
//!
//! /// Passes every batch through unchanged.
//! struct PassThrough;
//!
//! impl Operator for PassThrough {
//!     fn process_batch(
//!         &mut self,
//!         _input: usize,
//!         batch: RecordBatch,
//!         _ctx: &mut OperatorContext,
//!         out: &mut Collector,
//!     ) -> weir_engine::Result<()> {
//!         out.emit(batch);
//!         Ok(())
//!     }
//! }
//! ```

use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

use crate::error::Result;
use crate::message::EventTime;
use crate::metrics::SubtaskMetrics;
use crate::state::{InMemoryStateBackend, KeyGroupRange, KeyedStateBackend, TimerService};

/// Where an operator's output goes: the main output and named side outputs (late
/// records, dead letters). The runtime drains it after every call.
#[derive(Debug, Default)]
pub struct Collector {
    main: Vec<RecordBatch>,
    side: Vec<(String, RecordBatch)>,
}

impl Collector {
    /// Emits a batch on the main output. Empty batches are dropped.
    pub fn emit(&mut self, batch: RecordBatch) {
        if batch.num_rows() > 0 {
            self.main.push(batch);
        }
    }

    /// Emits a batch on the side output `name` (declared by [`Operator::side_outputs`]).
    pub fn emit_side(&mut self, name: &str, batch: RecordBatch) {
        if batch.num_rows() > 0 {
            self.side.push((name.to_string(), batch));
        }
    }

    /// Takes the main output.
    pub fn take_main(&mut self) -> Vec<RecordBatch> {
        std::mem::take(&mut self.main)
    }

    /// Takes the side outputs.
    pub fn take_side(&mut self) -> Vec<(String, RecordBatch)> {
        std::mem::take(&mut self.side)
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.main.is_empty() && self.side.is_empty()
    }
}

/// What an operator subtask can reach: who it is, its keyed state, its timers, the
/// current watermark and its metrics.
pub struct OperatorContext {
    /// The job's name.
    pub job: String,
    /// The operator's name (the step name in YAML).
    pub operator: String,
    /// This subtask's index.
    pub subtask: usize,
    /// The operator's parallelism.
    pub parallelism: usize,
    /// Number of key groups (max parallelism).
    pub max_parallelism: u16,
    /// The key groups this subtask owns.
    pub key_groups: KeyGroupRange,
    /// Keyed state of this subtask, addressed by (key group, key, namespace).
    pub state: Box<dyn KeyedStateBackend>,
    /// Per-key event-time and processing-time timers.
    pub timers: TimerService,
    /// The operator's current input watermark (`i64::MIN` before the first).
    pub watermark: EventTime,
    /// Counters shown in the progress line and metrics.
    pub metrics: std::sync::Arc<SubtaskMetrics>,
    /// The live entries of the operator's table (see [`Operator::snapshot_table`])
    /// replayed from the checkpoint the job restored, for the key groups this subtask
    /// owns: `Some` (possibly empty) when the checkpoint holds a table log for the
    /// operator; `open` takes them.
    pub restored_table: Option<Vec<crate::state::TableEntry>>,
    /// The operator's watermark as the restored checkpoint recorded it, per key-group
    /// range of the old subtasks that owned this subtask's key groups (the runtime
    /// stores every operator's watermark; `watermark` starts at their minimum).
    pub restored_watermarks: Vec<(KeyGroupRange, EventTime)>,
    /// Bytes the operator may keep in memory for state it can also hold in `state`
    /// (open windows): beyond it, it moves its coldest keys there. `None`: unbounded.
    /// Set when the backend keeps state off-heap and the job gives a memory budget.
    pub memory_budget: Option<usize>,
}

impl OperatorContext {
    /// A context for tests and for running an operator outside the runtime: subtask 0
    /// of 1, all key groups, in-memory state.
    pub fn for_test(operator: &str) -> Self {
        let max_parallelism = 128;
        OperatorContext {
            job: "test".into(),
            operator: operator.into(),
            subtask: 0,
            parallelism: 1,
            max_parallelism,
            key_groups: KeyGroupRange::for_subtask(max_parallelism, 1, 0),
            state: Box::new(InMemoryStateBackend::new()),
            timers: TimerService::new(),
            watermark: i64::MIN,
            metrics: std::sync::Arc::new(SubtaskMetrics::default()),
            restored_table: None,
            restored_watermarks: Vec::new(),
            memory_budget: None,
        }
    }

    /// The key group of `key` (encoded key bytes) in this job.
    pub fn key_group_of(&self, key: &[u8]) -> u16 {
        crate::state::key_group_for_hash(crate::state::hash_key(key), self.max_parallelism)
    }

    /// The watermark the restored checkpoint recorded for the subtask that owned
    /// `key_group` (`EventTime::MIN` when there is none): state of that key group is
    /// as of that watermark, e.g. windows it passed have fired.
    pub fn restored_watermark(&self, key_group: u16) -> EventTime {
        self.restored_watermarks
            .iter()
            .find(|(r, _)| r.contains(key_group))
            .map_or(EventTime::MIN, |(_, w)| *w)
    }
}

/// What [`Operator::snapshot_table`] did.
#[derive(Debug)]
pub enum TableSnapshot {
    /// The operator keeps no table.
    NoTable,
    /// The log, complete.
    Done(crate::state::TableLogWriter),
    /// The operator kept the log and finishes it in
    /// [`Operator::continue_table_snapshot`].
    Deferred,
}

/// A processing step. One instance runs per subtask; the runtime calls it from one task,
/// so it needs no locking. Operators chained 1:1 run in the same task and hand batches
/// over without a channel.
pub trait Operator: Send {
    /// Called once before the first batch (after state is restored).
    fn open(&mut self, _ctx: &mut OperatorContext) -> Result<()> {
        Ok(())
    }

    /// Processes one batch from input `input` (0 for single-input operators; a join's
    /// left is 0, right is 1). Output goes to `out`.
    fn process_batch(
        &mut self,
        input: usize,
        batch: RecordBatch,
        ctx: &mut OperatorContext,
        out: &mut Collector,
    ) -> Result<()>;

    /// The input watermark advanced to `watermark` (already stored in
    /// `ctx.watermark`). Fire event-time timers and emit what is complete here; the
    /// runtime forwards the watermark downstream after this returns, so output emitted
    /// here precedes it.
    fn handle_watermark(
        &mut self,
        _watermark: EventTime,
        _ctx: &mut OperatorContext,
        _out: &mut Collector,
    ) -> Result<()> {
        Ok(())
    }

    /// Whether the last [`Operator::handle_watermark`], [`Operator::handle_tick`] or
    /// [`Operator::handle_end_of_input`] stopped part-way so that its output can flow
    /// (e.g. windows read back from RocksDB in chunks): the runtime sends the output
    /// on, then calls the same method again with the same argument, until this is
    /// `false`, before it forwards the watermark or takes the next message. So the
    /// output of a large firing never waits in memory as a whole. Default: `false`.
    fn more_to_fire(&self) -> bool {
        false
    }

    /// The watermark forwarded downstream once the input watermark is `input` (after
    /// [`Operator::handle_watermark`]). The default forwards it unchanged; an operator
    /// whose output rows may carry event times behind its input watermark (an interval
    /// join) holds it back by that much. It must not decrease as `input` grows, and the
    /// runtime never forwards more than `input`.
    fn output_watermark(&self, input: EventTime) -> EventTime {
        input
    }

    /// How often [`Operator::handle_tick`] should run (processing-time timers,
    /// flushing). `None`: never.
    fn tick_interval(&self) -> Option<Duration> {
        None
    }

    /// Periodic call at [`Operator::tick_interval`] with the wall-clock time in ms.
    fn handle_tick(
        &mut self,
        _now_ms: i64,
        _ctx: &mut OperatorContext,
        _out: &mut Collector,
    ) -> Result<()> {
        Ok(())
    }

    /// A checkpoint barrier reached this operator: write in-memory accumulators into
    /// `ctx.state` so that the snapshot that follows holds them.
    fn handle_checkpoint(&mut self, _epoch: u64, _ctx: &mut OperatorContext) -> Result<()> {
        Ok(())
    }

    /// For operators that keep their state in a table of their own (windows): after
    /// `handle_checkpoint`, append to `log` what changed since the previous call — or
    /// every live entry and reset the record of changes when `log.is_full()`. Return
    /// [`TableSnapshot::Done`] with the log, or [`TableSnapshot::Deferred`] after taking
    /// the log and marking what it still has to write: the runtime then calls
    /// [`Operator::continue_table_snapshot`] between batches until it hands the log
    /// back, and the operator writes an entry's barrier-time value before it changes
    /// it (copy-on-write). Either way this is the operator's snapshot; the task stores
    /// the log incrementally (see [`crate::state::table_log`]) and hands the replayed
    /// entries back in [`OperatorContext::restored_table`] on restore. The default
    /// ([`TableSnapshot::NoTable`]): the operator has no table.
    fn snapshot_table(
        &mut self,
        _epoch: u64,
        _log: crate::state::TableLogWriter,
    ) -> Result<TableSnapshot> {
        Ok(TableSnapshot::NoTable)
    }

    /// Writes about `budget` more entries of a deferred table snapshot; the log once it
    /// is complete. Called only after [`TableSnapshot::Deferred`], until it returns
    /// `Some` (with `usize::MAX` to finish at once).
    fn continue_table_snapshot(
        &mut self,
        _budget: usize,
    ) -> Result<Option<crate::state::TableLogWriter>> {
        Ok(None)
    }

    /// Checkpoint `epoch` completed everywhere.
    fn handle_commit(&mut self, _epoch: u64, _ctx: &mut OperatorContext) -> Result<()> {
        Ok(())
    }

    /// Every input has ended (after the final watermark). Emit what remains.
    fn handle_end_of_input(
        &mut self,
        _ctx: &mut OperatorContext,
        _out: &mut Collector,
    ) -> Result<()> {
        Ok(())
    }

    /// Side outputs this operator may emit, with their schemas.
    fn side_outputs(&self) -> Vec<(String, SchemaRef)> {
        Vec::new()
    }

    /// Queryable state: the schema of the keyed input and its key columns, if this
    /// operator answers [`Operator::read_state`] (the runtime then routes reads of a
    /// key to the subtask that owns its key group).
    fn queryable_key(&self) -> Option<(SchemaRef, Vec<usize>)> {
        None
    }

    /// Answers a read of its keyed state from outside the job, between two batches: it
    /// sees every record this subtask has processed.
    fn read_state(&mut self, _read: &StateRead, _ctx: &mut OperatorContext) -> Result<StateAnswer> {
        Ok(StateAnswer::Entries(Vec::new()))
    }
}

/// A read of an operator's keyed state ([`Operator::read_state`]).
#[derive(Debug, Clone)]
pub enum StateRead {
    /// One key: its encoded bytes ([`crate::state::KeyCodec`]) and key group.
    Get {
        /// The encoded key.
        key: Vec<u8>,
        /// Its key group.
        key_group: u16,
    },
    /// Keys of this subtask whose text form starts with `prefix`, after `after` (in key
    /// order), at most `limit`.
    Scan {
        /// Text prefix of the keys.
        prefix: Option<String>,
        /// Only keys greater than this one (paging).
        after: Option<String>,
        /// At most this many.
        limit: usize,
    },
}

/// The answer to a [`StateRead`].
#[derive(Debug, Clone, PartialEq)]
pub enum StateAnswer {
    /// The key's value as JSON, if it has one.
    Value(Option<serde_json::Value>),
    /// (key as text, value) in key order.
    Entries(Vec<(String, serde_json::Value)>),
}
