//! The line formats: `regex` (named groups of a pattern become fields) and `raw` (the
//! whole line as one `Utf8` column).
//!
//! `regex` matches each record with one compiled pattern and reusable capture slots (no
//! allocation per record), gathers the groups into text columns and converts them to
//! the schema's types with cast kernels. The pattern is not anchored unless it says so
//! (`^…$`). A group that did not take part in the match is null. Without a schema, every
//! named group becomes a nullable `Utf8` field, in the pattern's order.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BinaryArray, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use regex::Regex;
use serde_json::{json, Value};
use weir_engine::registry::FieldError;
use weir_engine::Result;

use super::typed::{check_castable, finish_text_batch};
use super::{
    check_record, max_record_bytes, max_record_bytes_schema, Check, RowError, RowsDecoded,
    TextDecoder, TextFormat,
};
use crate::options::Options;

/// The `regex` format: named groups of a pattern become fields.
///
/// ```yaml
/// format: { type: regex, pattern: "^(?P<ts>\\S+) (?P<level>\\w+) (?P<msg>.*)$" }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct RegexFormat;

/// The `raw` format: each record as one `Utf8` column `line` (or the single `Utf8` field
/// of a declared schema). With a `pattern` it is the `regex` format.
///
/// ```yaml
/// format: raw
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct RawFormat;

fn pattern_schema(required: bool) -> Value {
    let pattern = json!({
        "type": "string",
        "description": "A regular expression (Rust regex syntax) whose named groups `(?P<name>...)` become fields."
    });
    json!({
        "type": "object",
        "properties": {
            "type": {"const": if required { "regex" } else { "raw" }},
            "pattern": pattern,
            "max_record_bytes": max_record_bytes_schema()
        },
        "required": if required { json!(["pattern"]) } else { json!([]) },
        "additionalProperties": false
    })
}

/// JSON Schema of the `regex` format's options.
pub(crate) fn regex_options_schema() -> Value {
    pattern_schema(true)
}

/// JSON Schema of the `raw` format's options.
pub(crate) fn raw_options_schema() -> Value {
    pattern_schema(false)
}

/// Builds `regex` (`pattern_required`) or `raw`.
pub(crate) fn build(
    options: &Value,
    schema: Option<SchemaRef>,
    pattern_required: bool,
) -> Result<TextFormat, FieldError> {
    let name = if pattern_required { "regex" } else { "raw" };
    let mut opts = Options::new(format!("format {name}"), options)?;
    let pattern = opts.string("pattern")?;
    let max = max_record_bytes(&mut opts)?;
    opts.finish()?;
    match pattern {
        Some(p) => build_regex(p, schema, max),
        None if pattern_required => Err(FieldError::here(
            "the regex format needs a `pattern` with named groups, e.g. \"^(?P<level>\\\\w+) (?P<msg>.*)$\"",
        )),
        None => build_raw(schema, max),
    }
}

fn build_raw(schema: Option<SchemaRef>, max: usize) -> Result<TextFormat, FieldError> {
    let schema = match schema {
        None => Arc::new(Schema::new(vec![Field::new("line", DataType::Utf8, false)])),
        Some(s) => {
            let ok = s.fields().len() == 1 && s.field(0).data_type() == &DataType::Utf8;
            if !ok {
                return Err(FieldError::here(
                    "the raw format yields one string column: declare no schema (the column is `line`) or one string field",
                ));
            }
            s
        }
    };
    Ok(TextFormat {
        describe: format!("raw ({})", schema.field(0).name()),
        decoder: Arc::new(RawDecoder {
            schema,
            max_record_bytes: max,
        }),
        max_record_bytes: max,
    })
}

fn build_regex(
    pattern: &str,
    schema: Option<SchemaRef>,
    max: usize,
) -> Result<TextFormat, FieldError> {
    let regex = Regex::new(pattern)
        .map_err(|e| FieldError::at("/pattern", format!("invalid regular expression: {e}")))?;
    let names: Vec<(usize, &str)> = regex
        .capture_names()
        .enumerate()
        .filter_map(|(i, n)| n.map(|n| (i, n)))
        .collect();
    if names.is_empty() {
        return Err(FieldError::at(
            "/pattern",
            "the pattern has no named groups: write `(?P<name>...)` for each field",
        ));
    }
    let (schema, groups) = match schema {
        None => {
            let fields: Vec<Field> = names
                .iter()
                .map(|(_, n)| Field::new(*n, DataType::Utf8, true))
                .collect();
            let groups = names.iter().map(|(i, _)| *i).collect();
            (Arc::new(Schema::new(fields)), groups)
        }
        Some(s) => {
            let mut groups = Vec::with_capacity(s.fields().len());
            for f in s.fields() {
                match names.iter().find(|(_, n)| *n == f.name()) {
                    Some((i, _)) => groups.push(*i),
                    None => {
                        let known: Vec<&str> = names.iter().map(|(_, n)| *n).collect();
                        return Err(FieldError::at(
                            "/pattern",
                            format!(
                                "the pattern has no group named \"{}\" for the schema field (its groups: {})",
                                f.name(),
                                known.join(", ")
                            ),
                        ));
                    }
                }
            }
            check_castable(&s, "regex")?;
            (s, groups)
        }
    };
    Ok(TextFormat {
        describe: format!("regex {pattern}"),
        decoder: Arc::new(RegexDecoder {
            schema,
            regex,
            groups,
            max_record_bytes: max,
        }),
        max_record_bytes: max,
    })
}

/// Decodes records with a pattern's named groups.
struct RegexDecoder {
    schema: SchemaRef,
    regex: Regex,
    /// The capture group index of each schema field.
    groups: Vec<usize>,
    max_record_bytes: usize,
}

impl TextDecoder for RegexDecoder {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn decode_values(&self, values: &BinaryArray) -> Result<RowsDecoded> {
        let n = values.len();
        let bytes = values.value_data().len();
        let mut builders: Vec<StringBuilder> = self
            .groups
            .iter()
            .map(|_| StringBuilder::with_capacity(n, bytes / self.groups.len().max(1)))
            .collect();
        let mut locations = self.regex.capture_locations();
        let mut rows = Vec::with_capacity(n);
        let mut errors = Vec::new();
        for i in 0..n {
            let text = match check_record(values, i, self.max_record_bytes, true, true) {
                Check::Blank => continue,
                Check::Bad(reason) => {
                    errors.push(RowError { row: i, reason });
                    continue;
                }
                Check::Text(t) => t,
            };
            if self.regex.captures_read(&mut locations, text).is_none() {
                errors.push(RowError {
                    row: i,
                    reason: "does not match the pattern".into(),
                });
                continue;
            }
            for (b, &g) in builders.iter_mut().zip(&self.groups) {
                match locations.get(g) {
                    Some((start, end)) => b.append_value(&text[start..end]),
                    None => b.append_null(),
                }
            }
            rows.push(i as u32);
        }
        let texts: Vec<ArrayRef> = builders
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef)
            .collect();
        finish_text_batch(&self.schema, texts, rows, errors)
    }
}

/// Each record as one string.
struct RawDecoder {
    schema: SchemaRef,
    max_record_bytes: usize,
}

impl TextDecoder for RawDecoder {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn decode_values(&self, values: &BinaryArray) -> Result<RowsDecoded> {
        let n = values.len();
        let mut builder = StringBuilder::with_capacity(n, values.value_data().len());
        let mut rows = Vec::with_capacity(n);
        let mut errors = Vec::new();
        for i in 0..n {
            match check_record(values, i, self.max_record_bytes, false, true) {
                Check::Text(t) => {
                    builder.append_value(t);
                    rows.push(i as u32);
                }
                Check::Blank => {}
                Check::Bad(reason) => errors.push(RowError { row: i, reason }),
            }
        }
        let line: ArrayRef = Arc::new(builder.finish());
        finish_text_batch(&self.schema, vec![line], rows, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    #[test]
    fn raw_lines() {
        let d = decode(
            "raw",
            Value::Null,
            None,
            &[b"hello\n", b"", b"caf\xc3\xa9\r\n", b"\xff"],
        );
        assert_eq!(d.batch.schema().field(0).name(), "line");
        assert_eq!(column_strings(&d.batch, "line"), vec!["hello", "", "café"]);
        assert_eq!(
            letters(&d),
            vec![(3, "invalid UTF-8 at byte 0".to_string())]
        );
    }

    #[test]
    fn raw_with_a_pattern_is_regex() {
        let d = decode(
            "raw",
            json!({"type": "raw", "pattern": "(?P<word>\\w+)"}),
            None,
            &[b"  hi there", b"!!!"],
        );
        assert_eq!(column_strings(&d.batch, "word"), vec!["hi"]);
        assert_eq!(d.dead_letters.len(), 1);
    }

    #[test]
    fn regex_without_schema_gives_strings() {
        let d = decode(
            "regex",
            json!({"pattern": "^(?P<ts>\\S+) (?P<level>\\w+) (?P<msg>.*)$"}),
            None,
            &[b"2024-05-01T00:00:00Z INFO started up", b"garbage"],
        );
        let s = d.batch.schema();
        let names: Vec<&str> = s.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, vec!["ts", "level", "msg"]);
        assert!(s.fields().iter().all(|f| f.data_type() == &DataType::Utf8));
        assert_eq!(column_strings(&d.batch, "msg"), vec!["started up"]);
        assert_eq!(
            letters(&d),
            vec![(1, "does not match the pattern".to_string())]
        );
    }

    #[test]
    fn build_errors() {
        let err = build(&json!({"pattern": "("}), None, true)
            .err()
            .expect("bad regex");
        assert_eq!(err.path, "/pattern");
        let err = build(&json!({"pattern": "(\\w+)"}), None, true)
            .err()
            .expect("no names");
        assert!(err.message.contains("no named groups"));
        let err = build(&Value::Null, None, true).err().expect("no pattern");
        assert!(err.message.contains("needs a `pattern`"));
        let s = schema(&[
            ("level", DataType::Utf8, true),
            ("nope", DataType::Utf8, true),
        ]);
        let err = build(&json!({"pattern": "(?P<level>\\w+)"}), Some(s), true)
            .err()
            .expect("missing group");
        assert!(
            err.message.contains("no group named \"nope\""),
            "{}",
            err.message
        );
        let s = schema(&[("n", DataType::Int64, true)]);
        assert!(build(&Value::Null, Some(s), false).is_err());
    }
}
