//! The `key_by` step: partitions the stream by the hash of key columns.
//!
//! ```yaml
//! steps:
//!   by_user: { from: clicks, key_by: [user_id] }
//!   by_pair: { from: clicks, key_by: [tenant, user_id] }
//!   by_one:  { from: clicks, key_by: user_id }
//! ```
//!
//! The operator passes batches through unchanged; its input edge is hash-partitioned
//! by the keys (through key groups), and its output is marked as keyed by them, so a
//! following keyed step on the same keys needs no further shuffle.

use arrow::datatypes::SchemaRef;
use serde_json::{json, Value};
use weir_engine::registry::{BuildContext, FieldError, Partitioning, StepBuild, StepFactory};

use super::{clone_per_subtask, PassThrough};
use crate::options::{kind, unknown_column};

/// Factory of the `key_by` step.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyByStep;

/// Reads `key_by: col` or `key_by: [col, ...]` and checks the columns against `input`.
pub(crate) fn read_keys(value: &Value, input: &SchemaRef) -> Result<Vec<String>, FieldError> {
    let keys: Vec<(String, String)> = match value {
        Value::String(s) => vec![(s.clone(), String::new())],
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok((s.clone(), format!("/{i}"))),
                other => Err(FieldError::at(
                    format!("/{i}"),
                    format!("expected a column name, found {}", kind(other)),
                )),
            })
            .collect::<Result<_, _>>()?,
        other => {
            return Err(FieldError::here(format!(
                "key_by takes a column name or a list of column names; found {}",
                kind(other)
            )))
        }
    };
    if keys.is_empty() {
        return Err(FieldError::here("key_by needs at least one column"));
    }
    let mut out: Vec<String> = Vec::with_capacity(keys.len());
    for (key, path) in keys {
        if input.field_with_name(&key).is_err() {
            return Err(FieldError::at(path, unknown_column(&key, input)));
        }
        if out.contains(&key) {
            return Err(FieldError::at(
                path,
                format!("column \"{key}\" is listed twice"),
            ));
        }
        out.push(key);
    }
    Ok(out)
}

impl StepFactory for KeyByStep {
    fn name(&self) -> &'static str {
        "key_by"
    }

    fn options_schema(&self) -> Value {
        json!({
            "description": "Key columns: the stream is hash-partitioned by them.",
            "oneOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}, "minItems": 1, "uniqueItems": true}
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
            .ok_or_else(|| FieldError::here("key_by needs one input"))?;
        let keys = read_keys(value, input)?;
        Ok(StepBuild {
            schema: input.clone(),
            side_outputs: Vec::new(),
            input_partitioning: Some(Partitioning::Hash(keys.clone())),
            partitioning_per_input: Vec::new(),
            keyed_by: Some(keys.clone()),
            describe: format!("key_by {}", keys.join(", ")),
            create: clone_per_subtask(PassThrough),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::build;
    use super::*;
    use crate::formats::test_util::schema;
    use arrow::datatypes::DataType;

    #[test]
    fn keys() {
        let s = schema(&[("a", DataType::Utf8, false), ("b", DataType::Int64, false)]);
        let step = build(&KeyByStep, json!(["b", "a"]), std::slice::from_ref(&s)).expect("builds");
        assert_eq!(
            step.input_partitioning,
            Some(Partitioning::Hash(vec!["b".into(), "a".into()]))
        );
        assert_eq!(step.keyed_by, Some(vec!["b".into(), "a".into()]));
        assert_eq!(step.schema, s);
        let step = build(&KeyByStep, json!("a"), std::slice::from_ref(&s)).expect("builds");
        assert_eq!(step.keyed_by, Some(vec!["a".into()]));

        let err = build(&KeyByStep, json!(["a", "c"]), std::slice::from_ref(&s))
            .err()
            .expect("unknown");
        assert_eq!(err.path, "/1");
        assert_eq!(err.message, "unknown column \"c\" (known columns: a, b)");
        let err = build(&KeyByStep, json!("c"), std::slice::from_ref(&s))
            .err()
            .expect("unknown");
        assert_eq!(err.path, "");
        assert!(build(&KeyByStep, json!([]), std::slice::from_ref(&s)).is_err());
        assert!(build(&KeyByStep, json!(["a", "a"]), std::slice::from_ref(&s)).is_err());
        assert!(build(&KeyByStep, json!({"a": 1}), &[s]).is_err());
    }
}
