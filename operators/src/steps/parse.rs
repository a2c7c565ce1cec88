//! The `parse` step: decodes a string column with a format.
//!
//! ```yaml
//! steps:
//!   events:
//!     from: envelopes
//!     parse:
//!       field: body                 # a Utf8 (or Binary) column of the input
//!       format: json                # json | csv | regex | raw, or {type: csv, delimiter: ";"}
//!       schema: { ts: timestamp, user: string, amount: int }
//!       keep: [key]                 # optional: input columns carried over, first
//! ```
//!
//! The output holds the `keep` columns followed by the decoded fields. A value that
//! does not decode goes to the `dead_letter` side output
//! ([`dead_letter_schema`]) with the reason, the source `STEP: field FIELD`, and as position the
//! record's index among the records this subtask has seen (counted from 0 since it
//! started; not carried across restarts). The formats are those of byte sources, with
//! the same rules (see [`crate::formats`]); `schema` is required except for `regex`
//! and `raw`.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BinaryArray, UInt32Array};
use arrow::compute::{cast, take};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use serde_json::{json, Value};
use weir_engine::operator::{Collector, Operator, OperatorContext};
use weir_engine::registry::{BuildContext, FieldError, StepBuild, StepFactory};
use weir_engine::source::{dead_letter_schema, dead_letters_to_batch};
use weir_engine::EngineError;

use crate::formats::{build_text_format, format_name, TextFormat, FORMAT_NAMES};
use crate::options::{kind, unknown_column, Options};

/// The side output a `parse` step sends undecodable values to.
pub use weir_engine::graph::DEAD_LETTER_OUTPUT;

/// Factory of the `parse` step.
#[derive(Debug, Clone, Copy, Default)]
pub struct ParseStep;

/// Decodes one column of each batch.
#[derive(Clone)]
pub struct ParseOperator {
    format: TextFormat,
    /// Index of the column to decode.
    field: usize,
    /// Indices of the input columns carried over.
    keep: Arc<[usize]>,
    schema: SchemaRef,
    /// `STEP: field FIELD`, the dead letters' source.
    source: Arc<str>,
    /// Records seen by this subtask: the base of dead-letter positions.
    seen: u64,
}

impl std::fmt::Debug for ParseOperator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParseOperator")
            .field("format", &self.format.describe)
            .field("field", &self.field)
            .field("keep", &self.keep)
            .finish()
    }
}

/// The column as one Binary array (zero-copy for `Utf8`).
fn as_binary(column: &ArrayRef) -> Result<BinaryArray, EngineError> {
    match column.data_type() {
        DataType::Binary => Ok(column.as_binary::<i32>().clone()),
        DataType::Utf8 => Ok(BinaryArray::from(column.as_string::<i32>().clone())),
        _ => {
            let cast = cast(column, &DataType::Binary)
                .map_err(|e| EngineError::arrow("reading the column to parse", e))?;
            Ok(cast.as_binary::<i32>().clone())
        }
    }
}

impl Operator for ParseOperator {
    fn process_batch(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        ctx: &mut OperatorContext,
        out: &mut Collector,
    ) -> weir_engine::Result<()> {
        let values = as_binary(batch.column(self.field))?;
        let decoded = self.format.decoder.decode_values(&values)?;
        let base = self.seen;
        self.seen += batch.num_rows() as u64;

        if !decoded.errors.is_empty() {
            let mut letters =
                self.format
                    .dead_letters(&values, decoded.errors, &self.source, |row| {
                        base + row as u64
                    });
            for d in &mut letters {
                d.step = ctx.operator.clone();
            }
            out.emit_side(DEAD_LETTER_OUTPUT, dead_letters_to_batch(&letters)?);
        }
        if self.keep.is_empty() {
            out.emit(decoded.batch);
            return Ok(());
        }
        let indices = UInt32Array::from(decoded.rows);
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        for &k in self.keep.iter() {
            columns.push(
                take(batch.column(k).as_ref(), &indices, None)
                    .map_err(|e| EngineError::arrow("carrying kept columns", e))?,
            );
        }
        columns.extend(decoded.batch.columns().iter().cloned());
        let batch = RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(|e| EngineError::arrow("building the parsed batch", e))?;
        out.emit(batch);
        Ok(())
    }

    fn side_outputs(&self) -> Vec<(String, SchemaRef)> {
        vec![(DEAD_LETTER_OUTPUT.to_string(), dead_letter_schema())]
    }
}

impl StepFactory for ParseStep {
    fn name(&self) -> &'static str {
        "parse"
    }

    fn options_schema(&self) -> Value {
        json!({
            "type": "object",
            "description": "Decodes a string column with a format; undecodable values go to the `dead_letter` side output.",
            "properties": {
                "field": {"type": "string", "description": "The string (or binary) column to decode."},
                "format": {
                    "description": "A format name or a format object {type: NAME, ...options}.",
                    "oneOf": [
                        {"type": "string", "enum": FORMAT_NAMES},
                        {"type": "object", "required": ["type"], "properties": {"type": {"type": "string", "enum": FORMAT_NAMES}}}
                    ]
                },
                "schema": {"type": "object", "description": "The decoded fields {name: type} (required except for regex and raw)."},
                "keep": {"type": "array", "items": {"type": "string"}, "uniqueItems": true, "description": "Input columns carried over, before the decoded ones."}
            },
            "required": ["field", "format"],
            "additionalProperties": false
        })
    }

    fn build(
        &self,
        _ctx: &BuildContext,
        name: &str,
        value: &Value,
        inputs: &[SchemaRef],
    ) -> Result<StepBuild, FieldError> {
        let input = inputs
            .first()
            .ok_or_else(|| FieldError::here("parse needs one input"))?;
        if !value.is_object() {
            return Err(FieldError::here(format!(
                "parse takes a map {{field: COLUMN, format: FORMAT, schema: {{...}}}}; found {}",
                kind(value)
            )));
        }
        let mut opts = Options::new("parse", value)?;
        let field = opts
            .string("field")?
            .ok_or_else(|| FieldError::here("parse needs `field`: the column to decode"))?;
        let format_value = opts.value("format").ok_or_else(|| {
            FieldError::here(format!(
                "parse needs `format` (one of: {})",
                FORMAT_NAMES.join(", ")
            ))
        })?;
        let schema_value = opts.value("schema");
        let keep_value = opts.value("keep");
        opts.finish()?;

        let field_index = input
            .index_of(field)
            .map_err(|_| FieldError::at("/field", unknown_column(field, input)))?;
        match input.field(field_index).data_type() {
            DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView => {}
            other => {
                return Err(FieldError::at(
                    "/field",
                    format!("column \"{field}\" is {other}; parse needs a string or binary column"),
                ))
            }
        }

        let declared = match schema_value {
            None | Some(Value::Null) => None,
            Some(v) => Some(weir_engine::spec::parse_schema(v).map_err(|e| e.under("/schema"))?),
        };
        let format_kind = format_name(format_value).map_err(|e| e.under("/format"))?;
        let format = build_text_format(format_kind, format_value, declared)
            .map_err(|e| e.under("/format"))?;
        let decoded_schema = format.decoder.schema();

        let mut keep = Vec::new();
        let mut fields = Vec::new();
        match keep_value {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let path = format!("/keep/{i}");
                    let col = item.as_str().ok_or_else(|| {
                        FieldError::at(
                            path.clone(),
                            format!("expected a column name, found {}", kind(item)),
                        )
                    })?;
                    let k = input
                        .index_of(col)
                        .map_err(|_| FieldError::at(path.clone(), unknown_column(col, input)))?;
                    if keep.contains(&k) {
                        return Err(FieldError::at(
                            path,
                            format!("column \"{col}\" is kept twice"),
                        ));
                    }
                    if decoded_schema.field_with_name(col).is_ok() {
                        return Err(FieldError::at(
                            path,
                            format!("column \"{col}\" is also a decoded field; rename one of them"),
                        ));
                    }
                    keep.push(k);
                    fields.push(input.field(k).clone());
                }
            }
            Some(other) => {
                return Err(FieldError::at(
                    "/keep",
                    format!("expected a list of column names, found {}", kind(other)),
                ))
            }
        }
        let schema = if keep.is_empty() {
            decoded_schema
        } else {
            fields.extend(decoded_schema.fields().iter().map(|f| f.as_ref().clone()));
            Arc::new(Schema::new(fields))
        };

        let describe = format!("parse {field} as {}", format.describe);
        let op = ParseOperator {
            format,
            field: field_index,
            keep: keep.into(),
            schema: schema.clone(),
            source: Arc::from(format!("{name}: field {field}")),
            seen: 0,
        };
        Ok(StepBuild {
            schema,
            side_outputs: vec![(DEAD_LETTER_OUTPUT.to_string(), dead_letter_schema())],
            input_partitioning: None,
            partitioning_per_input: Vec::new(),
            keyed_by: None,
            describe,
            create: Arc::new(move |_, _| Ok(Box::new(op.clone()) as Box<dyn Operator>)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{build, run};
    use super::*;
    use crate::formats::test_util::{column_strings, schema};
    use arrow::array::{Int64Array, StringArray};

    fn input() -> RecordBatch {
        let s = schema(&[
            ("key", DataType::Int64, false),
            ("body", DataType::Utf8, true),
        ]);
        RecordBatch::try_new(
            s,
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
                Arc::new(StringArray::from(vec![
                    Some("INFO 200 ok"),
                    Some("garbage"),
                    None,
                    Some("WARN 404 not found"),
                ])),
            ],
        )
        .expect("batch")
    }

    #[test]
    fn parses_a_column_with_regex() {
        let b = input();
        let step = build(
            &ParseStep,
            json!({
                "field": "body",
                "format": {"type": "regex", "pattern": "^(?P<level>[A-Z]+) (?P<code>\\d+) (?P<msg>.*)$"},
                "keep": ["key"]
            }),
            &[b.schema()],
        )
        .expect("builds");
        let names: Vec<&str> = step
            .schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(names, vec!["key", "level", "code", "msg"]);
        assert_eq!(step.side_outputs[0].0, "dead_letter");
        let (main, side) = run(&step, vec![(0, b.clone()), (0, b)]);
        assert_eq!(main.len(), 2);
        assert_eq!(column_strings(&main[0], "key"), vec!["1", "4"]);
        assert_eq!(column_strings(&main[0], "msg"), vec!["ok", "not found"]);
        assert_eq!(side.len(), 2);
        assert!(side.iter().all(|(n, _)| n == "dead_letter"));
        assert_eq!(side[0].1.schema(), dead_letter_schema());
        assert_eq!(
            column_strings(&side[0].1, "reason"),
            vec!["does not match the pattern", "null record"]
        );
        assert_eq!(
            column_strings(&side[0].1, "source"),
            vec!["step: field body"; 2]
        );
        // Positions count records across batches.
        assert_eq!(column_strings(&side[0].1, "position"), vec!["1", "2"]);
        assert_eq!(column_strings(&side[1].1, "position"), vec!["5", "6"]);
    }

    #[test]
    fn parses_json_with_a_declared_schema() {
        let s = schema(&[("body", DataType::Utf8, true)]);
        let b = RecordBatch::try_new(
            s.clone(),
            vec![Arc::new(StringArray::from(vec![
                Some(r#"{"ts":"2024-05-01T12:00:00Z","user":"ann","amount":3,"day":"2024-05-01"}"#),
                Some(r#"{"ts":1714564800000,"user":"bob"}"#),
                Some(r#"{"ts":1714564800000}"#),
                Some(r#"{"ts":"soon","user":"cy"}"#),
            ]))],
        )
        .expect("batch");
        let step = build(
            &ParseStep,
            json!({
                "field": "body",
                "format": {"type": "json"},
                "schema": {"ts": "timestamp", "user": "string", "amount": "int?", "day": "date?"}
            }),
            &[s],
        )
        .expect("builds");
        let names: Vec<&str> = step
            .schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(names, vec!["ts", "user", "amount", "day"]);
        let (main, side) = run(&step, vec![(0, b)]);
        assert_eq!(column_strings(&main[0], "user"), vec!["ann", "bob"]);
        assert_eq!(column_strings(&main[0], "day"), vec!["2024-05-01", "null"]);
        assert_eq!(
            column_strings(&side[0].1, "reason")[0],
            "missing field \"user\""
        );
        assert!(
            column_strings(&side[0].1, "reason")[1].starts_with("invalid value for field \"ts\"")
        );

        let err = build(
            &ParseStep,
            json!({"field": "body", "format": "json", "schema": {"x": "nope"}}),
            &[schema(&[("body", DataType::Utf8, true)])],
        )
        .err()
        .expect("bad type");
        assert_eq!(err.path, "/schema/x");
    }

    #[test]
    fn parses_raw_without_keep() {
        let b = input();
        let step = build(
            &ParseStep,
            json!({"field": "body", "format": "raw"}),
            &[b.schema()],
        )
        .expect("builds");
        let (main, side) = run(&step, vec![(0, b)]);
        assert_eq!(column_strings(&main[0], "line").len(), 3);
        assert_eq!(side.len(), 1);
    }

    #[test]
    fn build_errors() {
        let s = input().schema();
        let err = build(
            &ParseStep,
            json!({"field": "nope", "format": "raw"}),
            std::slice::from_ref(&s),
        )
        .err()
        .expect("unknown field");
        assert_eq!(err.path, "/field");
        let err = build(
            &ParseStep,
            json!({"field": "key", "format": "raw"}),
            std::slice::from_ref(&s),
        )
        .err()
        .expect("not a string");
        assert_eq!(err.path, "/field");
        let err = build(
            &ParseStep,
            json!({"field": "body", "format": "xml"}),
            std::slice::from_ref(&s),
        )
        .err()
        .expect("unknown format");
        assert_eq!(err.path, "/format");
        let err = build(
            &ParseStep,
            json!({"field": "body", "format": {"type": "regex", "pattern": "("}}),
            std::slice::from_ref(&s),
        )
        .err()
        .expect("bad pattern");
        assert_eq!(err.path, "/format/pattern");
        let err = build(
            &ParseStep,
            json!({"field": "body", "format": "json"}),
            std::slice::from_ref(&s),
        )
        .err()
        .expect("json needs a schema");
        assert_eq!(err.path, "/format");
        let err = build(
            &ParseStep,
            json!({"field": "body", "format": "raw", "keep": ["line"]}),
            std::slice::from_ref(&s),
        )
        .err()
        .expect("unknown keep column");
        assert_eq!(err.path, "/keep/0");
        let err = build(
            &ParseStep,
            json!({"field": "body", "format": "raw", "extra": 1}),
            &[s],
        )
        .err()
        .expect("unknown key");
        assert_eq!(err.path, "/extra");
    }
}
