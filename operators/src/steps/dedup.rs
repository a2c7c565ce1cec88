//! The `dedup` step: keeps the first row of every key and drops later rows with the
//! same key, remembering keys in keyed state (optionally for a limited time).
//!
//! ```yaml
//! steps:
//!   unique: { from: payments, dedup: { key: [payment_id], ttl: 1h } }
//! ```
//!
//! The stream is hash-partitioned by the key. Each key costs one state entry, read and
//! written through the state backend per row: with `state: { backend: rocksdb }` the
//! set of seen keys may be far larger than memory. With `ttl` a key is forgotten when it
//! was last seen longer ago (processing time) and a later row with it passes again.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::UInt32Array;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use serde_json::{json, Value};
use weir_engine::error::{EngineError, Result};
use weir_engine::operator::{Collector, Operator, OperatorContext};
use weir_engine::registry::{BuildContext, FieldError, Partitioning, StepBuild, StepFactory};
use weir_engine::state::{hash_key, key_group_for_hash, KeyCodec, StateDescriptor};
use weir_engine::time::parse_duration;

use super::key_by::read_keys;
use crate::options::kind;
use weir_engine::state::StateAddr;

/// The state holding seen keys.
pub const SEEN_STATE: &str = "seen";

/// Factory of the `dedup` step.
#[derive(Debug, Clone, Copy, Default)]
pub struct DedupStep;

struct DedupOperator {
    codec: KeyCodec,
    seen: StateDescriptor,
}

impl Operator for DedupOperator {
    fn process_batch(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        ctx: &mut OperatorContext,
        out: &mut Collector,
    ) -> Result<()> {
        let keys = self.codec.encode(&batch)?;
        let mut keep: Vec<u32> = Vec::new();
        for (row, key) in keys.iter().enumerate() {
            let kg = key_group_for_hash(hash_key(key), ctx.max_parallelism);
            if ctx
                .state
                .value_get(&self.seen, StateAddr::key(kg, key))?
                .is_none()
            {
                ctx.state
                    .value_put(&self.seen, StateAddr::key(kg, key), &[])?;
                keep.push(row as u32);
            } else if self.seen.ttl.is_some() {
                // Seen again: the key is remembered for another `ttl`.
                ctx.state
                    .value_put(&self.seen, StateAddr::key(kg, key), &[])?;
            }
        }
        if keep.len() == batch.num_rows() {
            out.emit(batch);
        } else if !keep.is_empty() {
            let idx = UInt32Array::from(keep);
            let rows = arrow::compute::take_record_batch(&batch, &idx)
                .map_err(|e| EngineError::arrow("dedup", e))?;
            out.emit(rows);
        }
        Ok(())
    }
}

impl StepFactory for DedupStep {
    fn name(&self) -> &'static str {
        "dedup"
    }

    fn options_schema(&self) -> Value {
        json!({
            "description": "Keeps the first row of every key.",
            "type": "object",
            "additionalProperties": false,
            "required": ["key"],
            "properties": {
                "key": {
                    "description": "Key columns.",
                    "oneOf": [
                        {"type": "string"},
                        {"type": "array", "items": {"type": "string"}, "minItems": 1, "uniqueItems": true}
                    ]
                },
                "ttl": {
                    "type": "string",
                    "description": "Forget a key not seen for this long (processing time), e.g. 1h. Default: never."
                }
            }
        })
    }

    fn build(
        &self,
        _ctx: &BuildContext,
        _name: &str,
        value: &Value,
        inputs: &[SchemaRef],
    ) -> std::result::Result<StepBuild, FieldError> {
        let input = inputs
            .first()
            .ok_or_else(|| FieldError::here("dedup needs one input"))?;
        let obj = value.as_object().ok_or_else(|| {
            FieldError::here(format!(
                "expected an object with `key`, found {}",
                kind(value)
            ))
        })?;
        let key_value = obj
            .get("key")
            .ok_or_else(|| FieldError::here("dedup needs `key`"))?;
        let keys = read_keys(key_value, input).map_err(|e| e.under("/key"))?;
        let ttl: Option<Duration> = match obj.get("ttl") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => {
                let d = parse_duration(s).map_err(|m| FieldError::at("/ttl", m))?;
                if d.is_zero() {
                    return Err(FieldError::at("/ttl", "the ttl must be longer than 0s"));
                }
                Some(d)
            }
            Some(other) => {
                return Err(FieldError::at(
                    "/ttl",
                    format!("expected a duration like 1h, found {}", kind(other)),
                ))
            }
        };
        let cols: Vec<usize> = keys
            .iter()
            .map(|k| input.index_of(k))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| FieldError::here(e.to_string()))?;
        let codec = KeyCodec::for_columns(input, &cols)
            .map_err(|e| FieldError::at("/key", e.to_string()))?;
        let mut seen = StateDescriptor::new(SEEN_STATE);
        if let Some(t) = ttl {
            seen = seen.with_ttl(t);
        }
        let describe = match ttl {
            Some(t) => format!("dedup by {} (ttl {})", keys.join(", "), humanize(t)),
            None => format!("dedup by {}", keys.join(", ")),
        };
        Ok(StepBuild {
            schema: input.clone(),
            side_outputs: Vec::new(),
            input_partitioning: Some(Partitioning::Hash(keys.clone())),
            partitioning_per_input: Vec::new(),
            keyed_by: Some(keys),
            describe,
            create: Arc::new(move |_subtask, _parallelism| {
                Ok(Box::new(DedupOperator {
                    codec: codec.clone(),
                    seen: seen.clone(),
                }) as Box<dyn Operator>)
            }),
        })
    }
}

fn humanize(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::test_util::build;
    use super::*;
    use crate::formats::test_util::schema;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::DataType;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn batch(s: &SchemaRef, ids: &[i64]) -> RecordBatch {
        let tags: Vec<String> = ids.iter().map(|i| format!("t{i}")).collect();
        RecordBatch::try_new(
            s.clone(),
            vec![
                Arc::new(Int64Array::from(ids.to_vec())),
                Arc::new(StringArray::from(tags)),
            ],
        )
        .unwrap()
    }

    proptest! {
        /// Against a brute-force oracle: the output is the first occurrence of every
        /// id, in input order, whatever the batch boundaries.
        #[test]
        fn keeps_exactly_the_first_of_each_key(
            ids in proptest::collection::vec(0i64..40, 0..200),
            cuts in proptest::collection::vec(1usize..30, 1..20),
        ) {
            let s = schema(&[("id", DataType::Int64, false), ("tag", DataType::Utf8, false)]);
            let step = build(&DedupStep, json!({"key": "id"}), std::slice::from_ref(&s)).unwrap();
            let mut op = (step.create)(0, 1).unwrap();
            let mut ctx = OperatorContext::for_test("dedup");
            let mut got = Vec::new();
            let mut rest: &[i64] = &ids;
            let mut c = cuts.iter().cycle();
            while !rest.is_empty() {
                let n = (*c.next().unwrap()).min(rest.len());
                let mut out = Collector::default();
                op.process_batch(0, batch(&s, &rest[..n]), &mut ctx, &mut out).unwrap();
                for b in out.take_main() {
                    let a = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                    got.extend(a.values().iter().copied());
                }
                rest = &rest[n..];
            }
            let mut seen = HashSet::new();
            let want: Vec<i64> = ids.iter().copied().filter(|i| seen.insert(*i)).collect();
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn options() {
        let s = schema(&[
            ("id", DataType::Int64, false),
            ("tag", DataType::Utf8, false),
        ]);
        let step = build(
            &DedupStep,
            json!({"key": ["id"], "ttl": "1h"}),
            std::slice::from_ref(&s),
        )
        .unwrap();
        assert_eq!(
            step.input_partitioning,
            Some(Partitioning::Hash(vec!["id".into()]))
        );
        assert_eq!(step.describe, "dedup by id (ttl 1h)");
        let e = build(&DedupStep, json!({"key": "nope"}), std::slice::from_ref(&s))
            .err()
            .unwrap();
        assert_eq!(e.path, "/key");
        let e = build(
            &DedupStep,
            json!({"key": "id", "ttl": "soon"}),
            std::slice::from_ref(&s),
        )
        .err()
        .unwrap();
        assert_eq!(e.path, "/ttl");
    }
}
