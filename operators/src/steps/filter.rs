//! The `filter` step: keeps the rows where a SQL predicate is true.
//!
//! ```yaml
//! steps:
//!   errors: { from: logs, filter: "level = 'ERROR' AND amount > 10.5" }
//! ```
//!
//! The predicate is compiled once for the input schema and must be boolean; a null
//! result drops the row. The output schema is the input schema. A row on which the
//! predicate fails at run time (e.g. `v / 0` on integers) goes to the `dead_letter` side
//! output with the error; the other rows are filtered as usual (see
//! [`row_errors`](super::row_errors)).

use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use serde_json::{json, Value};
use weir_engine::expr::{filter_batch, SqlExpr};
use weir_engine::operator::{Collector, Operator, OperatorContext};
use weir_engine::registry::{BuildContext, FieldError, StepBuild, StepFactory};

use super::row_errors::{self, RowErrors};
use super::{clone_per_subtask, simple_build};
use crate::options::kind;

/// Factory of the `filter` step.
#[derive(Debug, Clone, Copy, Default)]
pub struct FilterStep;

/// Keeps the rows of each batch where the predicate is true.
#[derive(Debug, Clone)]
pub struct FilterOperator {
    predicate: SqlExpr,
    rows: RowErrors,
}

impl FilterOperator {
    /// A filter on a compiled predicate; fails unless it is boolean.
    pub fn new(predicate: SqlExpr) -> Result<Self, String> {
        match predicate.data_type() {
            DataType::Boolean => Ok(FilterOperator {
                predicate,
                rows: RowErrors::default(),
            }),
            other => Err(format!(
                "expression `{}`: a filter must be a boolean condition, this yields {other}",
                predicate.sql()
            )),
        }
    }

    /// Compiles `sql` for `schema` into a filter.
    pub fn compile(sql: &str, schema: &SchemaRef) -> Result<Self, String> {
        Self::new(SqlExpr::compile(sql, schema)?)
    }
}

impl Operator for FilterOperator {
    fn process_batch(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        ctx: &mut OperatorContext,
        out: &mut Collector,
    ) -> weir_engine::Result<()> {
        let predicate = &self.predicate;
        self.rows.process(
            &ctx.operator,
            &batch,
            predicate.input_schema().fields().len(),
            &batch.schema(),
            out,
            |b| filter_batch(b, predicate),
        )
    }

    fn side_outputs(&self) -> Vec<(String, SchemaRef)> {
        row_errors::side_outputs()
    }
}

impl StepFactory for FilterStep {
    fn name(&self) -> &'static str {
        "filter"
    }

    fn options_schema(&self) -> Value {
        json!({
            "type": "string",
            "description": "A SQL predicate over the input's columns, e.g. \"level = 'ERROR'\"; rows where it is true are kept (null counts as false).",
            "minLength": 1
        })
    }

    fn build(
        &self,
        _ctx: &BuildContext,
        _name: &str,
        value: &Value,
        inputs: &[SchemaRef],
    ) -> Result<StepBuild, FieldError> {
        let sql = value.as_str().ok_or_else(|| {
            FieldError::here(format!(
                "filter takes a SQL predicate as a string, e.g. \"level = 'ERROR'\"; found {}",
                kind(value)
            ))
        })?;
        let input = inputs
            .first()
            .ok_or_else(|| FieldError::here("filter needs one input"))?;
        let op = FilterOperator::compile(sql, input).map_err(FieldError::here)?;
        let mut step = simple_build(
            input.clone(),
            format!("filter {sql}"),
            clone_per_subtask(op),
        );
        step.side_outputs = row_errors::side_outputs();
        Ok(step)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{build, run};
    use super::*;
    use crate::formats::test_util::{column_strings, schema};
    use arrow::array::{Int64Array, StringArray};
    use std::sync::Arc;

    fn input() -> RecordBatch {
        let s = schema(&[
            ("amount", DataType::Int64, false),
            ("level", DataType::Utf8, true),
        ]);
        RecordBatch::try_new(
            s,
            vec![
                Arc::new(Int64Array::from(vec![5, 11, 20])),
                Arc::new(StringArray::from(vec![Some("ERROR"), None, Some("ERROR")])),
            ],
        )
        .expect("batch")
    }

    #[test]
    fn filters_batches() {
        let b = input();
        let step = build(
            &FilterStep,
            json!("level = 'ERROR' AND amount > 10.5"),
            &[b.schema()],
        )
        .expect("builds");
        assert_eq!(step.schema, b.schema());
        assert_eq!(step.describe, "filter level = 'ERROR' AND amount > 10.5");
        let (main, side) = run(&step, vec![(0, b.clone()), (0, b)]);
        assert!(side.is_empty());
        assert_eq!(main.len(), 2);
        assert_eq!(column_strings(&main[0], "amount"), vec!["20"]);
    }

    #[test]
    fn build_errors() {
        let s = input().schema();
        let err = build(&FilterStep, json!("amount + 1"), std::slice::from_ref(&s))
            .err()
            .expect("not boolean");
        assert_eq!(err.path, "");
        assert!(
            err.message
                .contains("must be a boolean condition, this yields Int64"),
            "{}",
            err.message
        );
        let err = build(&FilterStep, json!("amout > 1"), std::slice::from_ref(&s))
            .err()
            .expect("unknown column");
        assert!(
            err.message.contains("known columns: amount, level"),
            "{}",
            err.message
        );
        let err = build(&FilterStep, json!({"x": 1}), &[s])
            .err()
            .expect("not a string");
        assert!(err.message.contains("found a map"));
    }
}
