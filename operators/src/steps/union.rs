//! The `union` step: merges two or more inputs with the same columns.
//!
//! ```yaml
//! steps:
//!   all_logs: { from: [web_logs, api_logs], union: {} }   # or `union: null` / `union: true`
//! ```
//!
//! The inputs must have the same column names and types in the same order (the error
//! names the columns that differ). A column is nullable in the output if it is in any
//! input. Batches pass through unchanged (their schema is relabelled when an input's
//! nullability or metadata differs from the output's).

use std::sync::Arc;

use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use serde_json::{json, Value};
use weir_engine::operator::{Collector, Operator, OperatorContext};
use weir_engine::registry::{BuildContext, FieldError, StepBuild, StepFactory};
use weir_engine::EngineError;

use super::{clone_per_subtask, simple_build};
use crate::options::kind;

/// Factory of the `union` step.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnionStep;

/// Passes the batches of every input to one output.
#[derive(Debug, Clone)]
pub struct UnionOperator {
    schema: SchemaRef,
    /// Per input: whether its batches must be relabelled with the output schema.
    relabel: Arc<[bool]>,
}

impl UnionOperator {
    /// A union of `inputs`; the error names the columns that differ.
    pub fn new(inputs: &[SchemaRef]) -> Result<Self, String> {
        let schema = union_schema(inputs)?;
        let relabel = inputs.iter().map(|s| s != &schema).collect();
        Ok(UnionOperator { schema, relabel })
    }

    /// The output schema.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }
}

/// The columns of `other` that differ from `first`, described.
fn differences(first: &Schema, other: &Schema) -> Vec<String> {
    let mut out = Vec::new();
    for (i, f) in first.fields().iter().enumerate() {
        match other.fields().get(i) {
            None => match other.field_with_name(f.name()) {
                Ok(_) => out.push(format!("\"{}\" is at another position", f.name())),
                Err(_) => out.push(format!("\"{}\" is missing", f.name())),
            },
            Some(g) if g.name() != f.name() => {
                if other.field_with_name(f.name()).is_ok() {
                    out.push(format!(
                        "\"{}\" is at another position (found \"{}\" in its place)",
                        f.name(),
                        g.name()
                    ));
                } else {
                    out.push(format!(
                        "\"{}\" is missing (found \"{}\" in its place)",
                        f.name(),
                        g.name()
                    ));
                }
            }
            Some(g) if g.data_type() != f.data_type() => out.push(format!(
                "\"{}\" is {} here but {} in the first input",
                f.name(),
                g.data_type(),
                f.data_type()
            )),
            Some(_) => {}
        }
    }
    for g in other.fields().iter().skip(first.fields().len()) {
        out.push(format!("\"{}\" is extra", g.name()));
    }
    out
}

/// The output schema of a union, or why the inputs do not fit together.
fn union_schema(inputs: &[SchemaRef]) -> Result<SchemaRef, String> {
    let first = inputs
        .first()
        .ok_or_else(|| "union needs at least two inputs".to_string())?;
    if inputs.len() < 2 {
        return Err("union needs at least two inputs (`from: [a, b]`)".into());
    }
    let mut problems = Vec::new();
    for (i, other) in inputs.iter().enumerate().skip(1) {
        let diff = differences(first, other);
        if !diff.is_empty() {
            problems.push(format!("input {} ({})", i + 1, diff.join("; ")));
        }
    }
    if !problems.is_empty() {
        return Err(format!(
            "the inputs of a union must have the same columns as the first input: {}",
            problems.join(", ")
        ));
    }
    let fields: Vec<Field> = first
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let nullable = inputs.iter().any(|s| s.field(i).is_nullable());
            f.as_ref().clone().with_nullable(nullable)
        })
        .collect();
    Ok(Arc::new(Schema::new_with_metadata(
        fields,
        first.metadata().clone(),
    )))
}

impl Operator for UnionOperator {
    fn process_batch(
        &mut self,
        input: usize,
        batch: RecordBatch,
        _ctx: &mut OperatorContext,
        out: &mut Collector,
    ) -> weir_engine::Result<()> {
        if self.relabel.get(input).copied().unwrap_or(true) && batch.schema_ref() != &self.schema {
            let relabelled = RecordBatch::try_new(self.schema.clone(), batch.columns().to_vec())
                .map_err(|e| EngineError::arrow(format!("union input {input}"), e))?;
            out.emit(relabelled);
        } else {
            out.emit(batch);
        }
        Ok(())
    }
}

impl StepFactory for UnionStep {
    fn name(&self) -> &'static str {
        "union"
    }

    fn options_schema(&self) -> Value {
        json!({
            "description": "Merges the step's inputs (`from: [a, b, ...]`), which must have the same columns.",
            "oneOf": [
                {"type": "null"},
                {"const": true},
                {"type": "object", "maxProperties": 0}
            ]
        })
    }

    fn inputs(&self) -> (usize, usize) {
        (2, usize::MAX)
    }

    fn build(
        &self,
        _ctx: &BuildContext,
        _name: &str,
        value: &Value,
        inputs: &[SchemaRef],
    ) -> Result<StepBuild, FieldError> {
        match value {
            Value::Null | Value::Bool(true) => {}
            Value::Object(m) if m.is_empty() => {}
            Value::Object(m) => {
                let key = m.keys().next().cloned().unwrap_or_default();
                return Err(FieldError::at(
                    crate::options::pointer(&key),
                    format!("union takes no options (found \"{key}\"); write `union: {{}}`"),
                ));
            }
            other => {
                return Err(FieldError::here(format!(
                    "union takes no options: write `union: {{}}`; found {}",
                    kind(other)
                )))
            }
        }
        let op = UnionOperator::new(inputs).map_err(FieldError::here)?;
        Ok(simple_build(
            op.schema().clone(),
            format!("union of {} inputs", inputs.len()),
            clone_per_subtask(op),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{build, run};
    use super::*;
    use crate::formats::test_util::schema;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::DataType;

    #[test]
    fn merges_inputs() {
        let a = schema(&[("k", DataType::Utf8, false), ("v", DataType::Int64, false)]);
        let b = schema(&[("k", DataType::Utf8, false), ("v", DataType::Int64, true)]);
        let step = build(&UnionStep, json!({}), &[a.clone(), b.clone()]).expect("builds");
        assert!(step.schema.field(1).is_nullable());
        assert!(!step.schema.field(0).is_nullable());
        assert_eq!(UnionStep.inputs(), (2, usize::MAX));
        let batch = |s: &SchemaRef, k: &str| {
            RecordBatch::try_new(
                s.clone(),
                vec![
                    Arc::new(StringArray::from(vec![k])),
                    Arc::new(Int64Array::from(vec![1])),
                ],
            )
            .expect("batch")
        };
        let (main, _) = run(&step, vec![(0, batch(&a, "x")), (1, batch(&b, "y"))]);
        assert_eq!(main.len(), 2);
        assert!(main.iter().all(|m| m.schema() == step.schema));
        assert!(build(&UnionStep, Value::Null, &[a.clone(), b.clone()]).is_ok());
        assert!(build(&UnionStep, json!(true), &[a.clone(), b]).is_ok());
        assert!(build(&UnionStep, json!({"x": 1}), &[a.clone(), a.clone()]).is_err());
        assert!(build(&UnionStep, json!({}), &[a]).is_err());
    }

    #[test]
    fn names_the_differing_columns() {
        let a = schema(&[("k", DataType::Utf8, false), ("v", DataType::Int64, false)]);
        let b = schema(&[("k", DataType::Utf8, false), ("v", DataType::Utf8, false)]);
        let c = schema(&[("k", DataType::Utf8, false), ("w", DataType::Int64, false)]);
        let d = schema(&[
            ("k", DataType::Utf8, false),
            ("v", DataType::Int64, false),
            ("k", DataType::Utf8, false),
        ]);
        let err = build(&UnionStep, json!({}), &[a.clone(), d])
            .err()
            .expect("extra");
        assert!(
            err.message.ends_with("input 2 (\"k\" is extra)"),
            "{}",
            err.message
        );
        let err = build(&UnionStep, json!({}), &[a, b, c])
            .err()
            .expect("differs");
        assert_eq!(
            err.message,
            "the inputs of a union must have the same columns as the first input: \
             input 2 (\"v\" is Utf8 here but Int64 in the first input), \
             input 3 (\"v\" is missing (found \"w\" in its place))"
        );
    }
}
