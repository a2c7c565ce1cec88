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

    /// Two columns `v`, `d` (Int64).
    fn division_input(rows: &[(i64, i64)]) -> RecordBatch {
        let s = schema(&[("v", DataType::Int64, false), ("d", DataType::Int64, false)]);
        RecordBatch::try_new(
            s,
            vec![
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
            ],
        )
        .expect("batch")
    }

    /// The dead letters of `side` as (reason, source, position, payload).
    fn letters(side: &[(String, RecordBatch)]) -> Vec<(String, String, String, String)> {
        let mut out = Vec::new();
        for (name, b) in side {
            assert_eq!(name, weir_engine::graph::DEAD_LETTER_OUTPUT);
            assert_eq!(b.schema(), weir_engine::source::dead_letter_schema());
            let reason = column_strings(b, "reason");
            let source = column_strings(b, "source");
            let position = column_strings(b, "position");
            let payload = column_strings(b, "payload");
            for (((r, s), p), j) in reason.into_iter().zip(source).zip(position).zip(payload) {
                out.push((r, s, p, j));
            }
        }
        out
    }

    #[test]
    fn rows_failing_at_run_time_become_dead_letters() {
        let good = division_input(&[(10, 2), (3, 3), (9, 1)]);
        let mixed = division_input(&[(10, 2), (5, 0), (3, 3), (8, 0), (9, 1), (4, 2)]);
        let step = build(&FilterStep, json!("v / d > 1"), &[mixed.schema()]).expect("builds");
        assert_eq!(
            step.side_outputs,
            vec![(
                weir_engine::graph::DEAD_LETTER_OUTPUT.to_string(),
                weir_engine::source::dead_letter_schema()
            )]
        );
        let (main, side) = run(&step, vec![(0, good), (0, mixed.clone()), (0, mixed)]);
        // The good rows, in order: one batch per input batch.
        assert_eq!(main.len(), 3);
        assert_eq!(column_strings(&main[0], "v"), vec!["10", "9"]);
        for b in &main[1..] {
            assert_eq!(b.schema(), step.schema);
            assert_eq!(column_strings(b, "v"), vec!["10", "9", "4"]);
        }
        // One dead letter per bad row; positions count the subtask's rows (3 + 6).
        let letters = letters(&side);
        let positions: Vec<&str> = letters.iter().map(|l| l.2.as_str()).collect();
        assert_eq!(positions, vec!["4", "6", "10", "12"]);
        let payloads: Vec<&str> = letters.iter().map(|l| l.3.as_str()).collect();
        assert_eq!(
            payloads,
            vec![
                r#"{"v":5,"d":0}"#,
                r#"{"v":8,"d":0}"#,
                r#"{"v":5,"d":0}"#,
                r#"{"v":8,"d":0}"#
            ]
        );
        for (reason, source, _, _) in &letters {
            assert_eq!(source, "step step");
            assert!(reason.starts_with("step `step`: "), "{reason}");
            assert!(reason.contains("`v / d > 1`"), "{reason}");
            assert!(reason.to_lowercase().contains("divide by zero"), "{reason}");
        }
    }

    #[test]
    fn isolation_keeps_order_in_a_large_batch() {
        let rows: Vec<(i64, i64)> = (0..1000)
            .map(|i| (i, if i % 97 == 13 || i == 999 { 0 } else { 1 }))
            .collect();
        let b = division_input(&rows);
        let step = build(&FilterStep, json!("v / d > 1"), &[b.schema()]).expect("builds");
        let (main, side) = run(&step, vec![(0, b)]);
        let kept: Vec<String> = main.iter().flat_map(|b| column_strings(b, "v")).collect();
        let expected: Vec<String> = rows
            .iter()
            .filter(|(v, d)| *d != 0 && v / d > 1)
            .map(|(v, _)| v.to_string())
            .collect();
        assert_eq!(kept, expected);
        let positions: Vec<String> = letters(&side).into_iter().map(|l| l.2).collect();
        let bad: Vec<String> = rows
            .iter()
            .filter(|(_, d)| *d == 0)
            .map(|(v, _)| v.to_string())
            .collect();
        assert_eq!(positions, bad);
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
