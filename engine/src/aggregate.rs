//! Aggregate functions for windows (and later SQL-style group-bys): the contract between
//! the window operator and each aggregate, built-in (`count`, `sum`, `min`, `max`, `avg`,
//! `first`, `last`, `count(distinct …)`) or user-defined in Rust. Aggregates are looked
//! up by name in the [`Registry`](crate::registry::Registry), so a function registered
//! in Rust is usable from YAML too (`aggregate: { p95: "p95(latency_ms)" }`).
//!
//! An accumulator is updated with whole columns and a list of row indexes (the rows of a
//! batch that fall into one window), never one boxed value at a time; it serialises its
//! state only at checkpoints ([`Accumulator::state`]) and merges states when session
//! windows merge ([`Accumulator::merge_state`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::datatypes::DataType;
/// The value type an accumulator evaluates to (DataFusion's), re-exported for UDAFs.
pub use datafusion::common::ScalarValue;

use crate::error::Result;

/// One aggregate function, e.g. `sum`.
pub trait AggregateFunction: Send + Sync {
    /// The name used in expressions, lower case (`sum`, `p95`).
    fn name(&self) -> &str;

    /// The output type for an argument of type `arg` (`None` for `count(*)`-style calls
    /// without argument); an error message when the argument type is not supported.
    fn return_type(&self, arg: Option<&DataType>) -> std::result::Result<DataType, String>;

    /// A fresh accumulator for an argument of type `arg`.
    fn create_accumulator(&self, arg: Option<&DataType>) -> Result<Box<dyn Accumulator>>;
}

/// The running state of one aggregate in one window of one key.
pub trait Accumulator: Send {
    /// Adds the rows `rows` of `values` (the evaluated argument column; `None` for
    /// calls without argument, where only the row count matters). `event_times[i]` is
    /// the event time of row `rows[i]` (for `first`/`last`). Nulls are skipped by every
    /// built-in except `count(*)`.
    fn update(
        &mut self,
        values: Option<&ArrayRef>,
        rows: &[u32],
        event_times: &[i64],
    ) -> Result<()>;

    /// The current result.
    fn evaluate(&self) -> Result<ScalarValue>;

    /// The state, serialised (for checkpoints and for merging sessions).
    fn state(&self) -> Result<Vec<u8>>;

    /// Appends [`Accumulator::state`] to `out` (checkpoints write every changed window
    /// this way; built-ins override it to skip the allocation).
    fn write_state(&self, out: &mut Vec<u8>) -> Result<()> {
        out.extend_from_slice(&self.state()?);
        Ok(())
    }

    /// Merges a state produced by [`Accumulator::state`] of the same function and
    /// argument type into this one (restore: into a fresh accumulator).
    fn merge_state(&mut self, state: &[u8]) -> Result<()>;

    /// Approximate heap size in bytes (for state-size metrics).
    fn size(&self) -> usize {
        std::mem::size_of_val(self)
    }
}

/// Aggregate functions by name.
#[derive(Clone, Default)]
pub struct AggregateTable(BTreeMap<String, Arc<dyn AggregateFunction>>);

impl AggregateTable {
    /// Adds (or replaces) a function under its lower-case name.
    pub fn add(&mut self, f: Arc<dyn AggregateFunction>) {
        self.0.insert(f.name().to_ascii_lowercase(), f);
    }

    /// A function by name (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&Arc<dyn AggregateFunction>> {
        self.0.get(&name.to_ascii_lowercase())
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

impl std::fmt::Debug for AggregateTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}
