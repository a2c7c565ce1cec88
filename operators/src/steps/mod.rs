//! Stateless steps: `filter`, `select`, `key_by`, `union` and `parse`.
//!
//! | YAML | does |
//! |------|------|
//! | `filter: "level = 'ERROR'"` | keeps the rows where the SQL predicate is true (null = false) |
//! | `select: {out: "amount * 2", level: level}` / `select: [a, b]` | projection and computed columns |
//! | `key_by: [service]` / `key_by: service` | hash-partitions by the columns; later keyed steps on them need no shuffle |
//! | `union: {}` (or `null`, `true`), `from: [a, b]` | merges inputs of the same columns |
//! | `parse: {field: body, format: json, schema: {...}, keep: [key]}` | decodes a string column with a format; bad values go to the `dead_letter` side output |
//!
//! Expressions are compiled once when the job is built and evaluated on whole batches.
//! A row on which a `filter` or `select` expression fails at run time (division by zero,
//! a bad cast) goes to the step's `dead_letter` side output; the other rows go on.

mod as_of;
mod dedup;
mod enrich;
mod filter;
mod key_by;
mod parse;
#[cfg(feature = "postgres")]
mod pg_lookup;
mod row_errors;
mod select;
mod table;
mod union;
mod validate;

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use weir_engine::operator::{Collector, Operator, OperatorContext};
use weir_engine::registry::{OperatorCreate, StepBuild};

pub use self::dedup::DedupStep;
pub use self::enrich::EnrichStep;
pub use self::filter::{FilterOperator, FilterStep};
pub use self::key_by::KeyByStep;
pub use self::parse::{ParseOperator, ParseStep, DEAD_LETTER_OUTPUT};
pub use self::select::{SelectOperator, SelectStep};
pub use self::table::TableStep;
pub(crate) use self::table::{key_texts, rows_json, scan_choice};
pub use self::union::{UnionOperator, UnionStep};
pub use self::validate::{ValidateOperator, ValidateStep};

/// Passes every batch through unchanged (the operator of `key_by`: the work is done by
/// the hash partitioning of its input edge).
#[derive(Debug, Clone, Copy, Default)]
pub struct PassThrough;

impl Operator for PassThrough {
    fn process_batch(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        _ctx: &mut OperatorContext,
        out: &mut Collector,
    ) -> weir_engine::Result<()> {
        out.emit(batch);
        Ok(())
    }
}

/// A [`StepBuild`] with no side outputs, partitioning chosen by the planner.
fn simple_build(
    schema: arrow::datatypes::SchemaRef,
    describe: String,
    create: OperatorCreate,
) -> StepBuild {
    StepBuild {
        schema,
        side_outputs: Vec::new(),
        input_partitioning: None,
        partitioning_per_input: Vec::new(),
        keyed_by: None,
        describe,
        create,
    }
}

/// An [`OperatorCreate`] cloning `op` for every subtask.
fn clone_per_subtask<O: Operator + Clone + Sync + 'static>(op: O) -> OperatorCreate {
    Arc::new(move |_subtask, _parallelism| Ok(Box::new(op.clone()) as Box<dyn Operator>))
}

#[cfg(test)]
pub(crate) mod test_util {
    //! Helpers for step tests.
    use super::*;
    use arrow::datatypes::SchemaRef;
    use weir_engine::registry::{BuildContext, StepFactory};

    /// A build context for tests.
    pub fn ctx() -> BuildContext {
        BuildContext {
            checkpoints: Default::default(),
            aggregates: Default::default(),
            job: "test".into(),
            base_dir: std::path::PathBuf::from("."),
        }
    }

    /// Builds a step from its value.
    pub fn build(
        f: &dyn StepFactory,
        value: serde_json::Value,
        inputs: &[SchemaRef],
    ) -> Result<StepBuild, weir_engine::registry::FieldError> {
        f.build(&ctx(), "step", &value, inputs)
    }

    /// Runs `batches` (input index, batch) through one instance of the step, returning
    /// its main output and its side outputs.
    pub fn run(
        build: &StepBuild,
        batches: Vec<(usize, RecordBatch)>,
    ) -> (Vec<RecordBatch>, Vec<(String, RecordBatch)>) {
        let mut op = (build.create)(0, 1).expect("operator");
        let mut ctx = OperatorContext::for_test("step");
        op.open(&mut ctx).expect("open");
        let mut out = Collector::default();
        for (input, batch) in batches {
            op.process_batch(input, batch, &mut ctx, &mut out)
                .expect("process");
        }
        op.handle_end_of_input(&mut ctx, &mut out).expect("end");
        (out.take_main(), out.take_side())
    }
}
