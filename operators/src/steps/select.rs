//! The `select` step: projection and computed columns.
//!
//! ```yaml
//! steps:
//!   shaped:
//!     from: orders
//!     select:                      # output column: SQL expression, in this order
//!       id: id                     # a plain column
//!       total: "price * quantity"
//!       band: "CASE WHEN price > 100 THEN 'high' ELSE 'low' END"
//!   slim: { from: orders, select: [id, price] }             # a list of columns
//!   mixed: { from: orders, select: [id, {total: "price * quantity"}] }
//! ```
//!
//! Each expression is compiled once for the input schema. A plain column keeps its
//! type, nullability and metadata under its new name; computed string columns are `Utf8`.
//! The map form relies on the job file's key order being kept; the list form
//! (`[col, {name: expr}]`) states the order explicitly. A row on which an expression
//! fails at run time (e.g. `CAST('x' AS INT)`) goes to the `dead_letter` side output with
//! the error; the other rows are projected as usual (see [`row_errors`](super::row_errors)).

use std::sync::Arc;

use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use serde_json::{json, Value};
use weir_engine::expr::SqlExpr;
use weir_engine::operator::{Collector, Operator, OperatorContext};
use weir_engine::registry::{BuildContext, FieldError, StepBuild, StepFactory};
use weir_engine::EngineError;

use super::row_errors::{self, RowErrors};
use super::{clone_per_subtask, simple_build};
use crate::options::{kind, pointer, pointer_segment, unknown_column};

/// Factory of the `select` step.
#[derive(Debug, Clone, Copy, Default)]
pub struct SelectStep;

/// Computes the output columns of each batch.
#[derive(Debug, Clone)]
pub struct SelectOperator {
    exprs: Vec<SqlExpr>,
    schema: SchemaRef,
    /// The input's number of columns.
    input_columns: usize,
    rows: RowErrors,
}

impl SelectOperator {
    /// Compiles `(output name, SQL expression)` pairs for `input`. Errors carry the
    /// output name of the failing column.
    pub fn compile(
        columns: &[(String, String)],
        input: &SchemaRef,
    ) -> Result<Self, (String, String)> {
        let mut exprs = Vec::with_capacity(columns.len());
        let mut fields = Vec::with_capacity(columns.len());
        for (name, sql) in columns {
            if fields.iter().any(|f: &Field| f.name() == name) {
                return Err((name.clone(), format!("column \"{name}\" is selected twice")));
            }
            let expr = SqlExpr::compile(sql, input).map_err(|e| (name.clone(), e))?;
            let field = match expr.column_index() {
                Some(i) => input.field(i).clone().with_name(name.clone()),
                None => Field::new(name.clone(), expr.data_type().clone(), expr.nullable()),
            };
            fields.push(field);
            exprs.push(expr);
        }
        if exprs.is_empty() {
            return Err((String::new(), "select needs at least one column".into()));
        }
        Ok(SelectOperator {
            exprs,
            schema: Arc::new(Schema::new(fields)),
            input_columns: input.fields().len(),
            rows: RowErrors::default(),
        })
    }

    /// The output schema.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }
}

impl Operator for SelectOperator {
    fn process_batch(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        ctx: &mut OperatorContext,
        out: &mut Collector,
    ) -> weir_engine::Result<()> {
        let (exprs, schema) = (&self.exprs, &self.schema);
        self.rows.process(
            &ctx.operator,
            &batch,
            self.input_columns,
            schema,
            out,
            |b| project(exprs, schema, b),
        )
    }

    fn side_outputs(&self) -> Vec<(String, SchemaRef)> {
        row_errors::side_outputs()
    }
}

/// Evaluates `exprs` on `batch` into a batch of `schema`.
fn project(
    exprs: &[SqlExpr],
    schema: &SchemaRef,
    batch: &RecordBatch,
) -> weir_engine::Result<RecordBatch> {
    let columns = exprs
        .iter()
        .map(|e| e.evaluate(batch))
        .collect::<weir_engine::Result<Vec<_>>>()?;
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(schema.clone(), columns, &options)
        .map_err(|e| EngineError::arrow("building the selected columns", e))
}

/// An expression given as a YAML scalar: a string, or a number/boolean literal.
fn expr_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Reads the step's value into `(name, expression, JSON pointer)` triples.
fn read_columns(value: &Value) -> Result<Vec<(String, String, String)>, FieldError> {
    let expected = "expected a SQL expression as a string";
    match value {
        Value::Object(map) => map
            .iter()
            .map(|(name, v)| {
                let sql = expr_text(v).ok_or_else(|| {
                    FieldError::at(pointer(name), format!("{expected}, found {}", kind(v)))
                })?;
                Ok((name.clone(), sql, pointer(name)))
            })
            .collect(),
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::String(col) => out.push((col.clone(), col.clone(), format!("/{i}"))),
                    Value::Object(m) if m.len() == 1 => {
                        for (name, v) in m {
                            let path = format!("/{i}/{}", pointer_segment(name));
                            let sql = expr_text(v).ok_or_else(|| {
                                FieldError::at(path.clone(), format!("{expected}, found {}", kind(v)))
                            })?;
                            out.push((name.clone(), sql, path));
                        }
                    }
                    other => {
                        return Err(FieldError::at(
                            format!("/{i}"),
                            format!(
                                "expected a column name or a one-entry map {{name: expression}}, found {}",
                                kind(other)
                            ),
                        ))
                    }
                }
            }
            Ok(out)
        }
        other => Err(FieldError::here(format!(
            "select takes a map {{output column: SQL expression}} or a list of columns; found {}",
            kind(other)
        ))),
    }
}

impl StepFactory for SelectStep {
    fn name(&self) -> &'static str {
        "select"
    }

    fn options_schema(&self) -> Value {
        let expr = json!({"type": ["string", "number", "boolean"], "description": "A SQL expression over the input's columns."});
        json!({
            "description": "Output columns: a map {name: SQL expression} in output order, or a list of column names and one-entry maps.",
            "oneOf": [
                {"type": "object", "minProperties": 1, "additionalProperties": expr},
                {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "oneOf": [
                            {"type": "string", "description": "An input column."},
                            {"type": "object", "minProperties": 1, "maxProperties": 1, "additionalProperties": expr}
                        ]
                    }
                }
            ]
        })
    }

    fn build(
        &self,
        _ctx: &BuildContext,
        _name: &str,
        value: &Value,
        inputs: &[SchemaRef],
    ) -> Result<StepBuild, FieldError> {
        let input = inputs
            .first()
            .ok_or_else(|| FieldError::here("select needs one input"))?;
        let columns = read_columns(value)?;
        // A bare name in the list form must be a column.
        if let Value::Array(items) = value {
            for (i, item) in items.iter().enumerate() {
                if let Value::String(col) = item {
                    if input.field_with_name(col).is_err() {
                        return Err(FieldError::at(format!("/{i}"), unknown_column(col, input)));
                    }
                }
            }
        }
        let pairs: Vec<(String, String)> = columns
            .iter()
            .map(|(n, s, _)| (n.clone(), s.clone()))
            .collect();
        let op = SelectOperator::compile(&pairs, input).map_err(|(name, message)| {
            let path = columns
                .iter()
                .rev()
                .find(|(n, _, _)| *n == name)
                .map(|(_, _, p)| p.clone())
                .unwrap_or_default();
            FieldError::at(path, message)
        })?;
        let names: Vec<&str> = columns.iter().map(|(n, _, _)| n.as_str()).collect();
        let mut step = simple_build(
            op.schema().clone(),
            format!("select {}", names.join(", ")),
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
    use arrow::datatypes::DataType;

    fn input() -> RecordBatch {
        let s = schema(&[
            ("price", DataType::Int64, false),
            ("qty", DataType::Int64, true),
            ("name", DataType::Utf8, false),
        ]);
        RecordBatch::try_new(
            s,
            vec![
                Arc::new(Int64Array::from(vec![5, 150, 20])),
                Arc::new(Int64Array::from(vec![Some(2), None, Some(3)])),
                Arc::new(StringArray::from(vec!["a", "b", "c"])),
            ],
        )
        .expect("batch")
    }

    fn names(s: &SchemaRef) -> Vec<String> {
        s.fields().iter().map(|f| f.name().clone()).collect()
    }

    #[test]
    fn computed_columns_in_list_order() {
        let b = input();
        let step = build(
            &SelectStep,
            json!([
                "name",
                {"total": "price * qty"},
                {"band": "CASE WHEN price > 100 THEN 'high' ELSE 'low' END"},
                {"shout": "upper(name) || '!'"},
                {"one": 1}
            ]),
            &[b.schema()],
        )
        .expect("builds");
        assert_eq!(
            names(&step.schema),
            vec!["name", "total", "band", "shout", "one"]
        );
        let s = &step.schema;
        assert!(!s.field(0).is_nullable());
        assert!(s.field(1).is_nullable());
        assert_eq!(s.field(2).data_type(), &DataType::Utf8);
        assert_eq!(s.field(3).data_type(), &DataType::Utf8);
        let (main, _) = run(&step, vec![(0, b)]);
        assert_eq!(main[0].schema(), step.schema);
        assert_eq!(column_strings(&main[0], "total"), vec!["10", "null", "60"]);
        assert_eq!(column_strings(&main[0], "band"), vec!["low", "high", "low"]);
        assert_eq!(column_strings(&main[0], "shout"), vec!["A!", "B!", "C!"]);
        assert_eq!(column_strings(&main[0], "one"), vec!["1", "1", "1"]);
    }

    #[test]
    fn map_form_and_renames() {
        let b = input();
        let step = build(
            &SelectStep,
            json!({"p": "price", "n": "name"}),
            &[b.schema()],
        )
        .expect("builds");
        // The map's order is the output order (serde_json's `preserve_order`).
        assert_eq!(names(&step.schema), vec!["p", "n"]);
        let (main, _) = run(&step, vec![(0, b)]);
        assert_eq!(column_strings(&main[0], "p"), vec!["5", "150", "20"]);
    }

    #[test]
    fn rows_failing_at_run_time_become_dead_letters() {
        let s = schema(&[("id", DataType::Int64, false), ("s", DataType::Utf8, true)]);
        let b = RecordBatch::try_new(
            s.clone(),
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3, 4, 5])),
                Arc::new(StringArray::from(vec![
                    Some("1"),
                    Some("x"),
                    Some("3"),
                    None,
                    Some("y"),
                ])),
            ],
        )
        .expect("batch");
        let step = build(
            &SelectStep,
            json!(["id", {"n": "CAST(s AS INT)"}]),
            std::slice::from_ref(&s),
        )
        .expect("builds");
        assert_eq!(
            step.side_outputs,
            vec![(
                weir_engine::graph::DEAD_LETTER_OUTPUT.to_string(),
                weir_engine::source::dead_letter_schema()
            )]
        );
        let (main, side) = run(&step, vec![(0, b)]);
        assert_eq!(main.len(), 1);
        assert_eq!(main[0].schema(), step.schema);
        assert_eq!(column_strings(&main[0], "id"), vec!["1", "3", "4"]);
        assert_eq!(column_strings(&main[0], "n"), vec!["1", "3", "null"]);
        assert_eq!(side.len(), 1);
        let (name, dl) = &side[0];
        assert_eq!(name, "dead_letter");
        assert_eq!(column_strings(dl, "source"), vec!["step step"; 2]);
        assert_eq!(column_strings(dl, "position"), vec!["1", "4"]);
        assert_eq!(
            column_strings(dl, "payload"),
            vec![r#"{"id":2,"s":"x"}"#, r#"{"id":5,"s":"y"}"#]
        );
        for reason in column_strings(dl, "reason") {
            assert!(reason.starts_with("step `step`: "), "{reason}");
            assert!(reason.contains("`CAST(s AS INT)`"), "{reason}");
            assert!(reason.contains('x') || reason.contains('y'), "{reason}");
        }
    }

    #[test]
    fn errors_point_at_the_column() {
        let s = input().schema();
        let err = build(
            &SelectStep,
            json!({"ok": "price", "out_name": "nope + 1"}),
            std::slice::from_ref(&s),
        )
        .err()
        .expect("unknown column");
        assert_eq!(err.path, "/out_name");
        assert!(
            err.message.contains("unknown column \"nope\""),
            "{}",
            err.message
        );
        let err = build(
            &SelectStep,
            json!(["price", "nope"]),
            std::slice::from_ref(&s),
        )
        .err()
        .expect("unknown column");
        assert_eq!(err.path, "/1");
        let err = build(
            &SelectStep,
            json!([{"x": "price +"}]),
            std::slice::from_ref(&s),
        )
        .err()
        .expect("syntax");
        assert_eq!(err.path, "/0/x");
        let err = build(
            &SelectStep,
            json!(["price", "price"]),
            std::slice::from_ref(&s),
        )
        .err()
        .expect("twice");
        assert!(err.message.contains("twice"));
        let err = build(&SelectStep, json!([]), std::slice::from_ref(&s))
            .err()
            .expect("empty");
        assert!(err.message.contains("at least one"));
        let err = build(&SelectStep, json!("price"), &[s])
            .err()
            .expect("string");
        assert!(err.message.contains("found a string"));
    }
}
