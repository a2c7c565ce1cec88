//! Formats: decoders from bytes (raw batches of a file or Kafka source, or a string
//! column for the `parse` step) to typed batches of a declared schema.
//!
//! | YAML | decodes | schema |
//! |------|---------|--------|
//! | `format: json` / `{type: json, max_record_bytes: 1MiB}` | JSON Lines, one object per record; unknown keys ignored | required |
//! | `format: csv` / `{type: csv, delimiter: ",", quote: "\"", escape: "\\", header: false}` | one CSV record per record, columns in schema order | required |
//! | `format: {type: regex, pattern: "^(?P<ts>\\S+) (?P<msg>.*)$"}` | named groups become fields | optional (all groups as nullable `Utf8`) |
//! | `format: raw` | the whole line as one `Utf8` column `line` | optional (one `Utf8` field) |
//!
//! Every format takes `max_record_bytes` (default 1 MiB). Every record either decodes
//! or becomes a [`DeadLetter`] with the reason, the source and its position (the raw
//! `offset`); decoding never panics and one bad record never costs its neighbours.
//! What counts as bad:
//! - a null record, a record over `max_record_bytes` (its dead-letter payload is cut to
//!   its first [`PREVIEW_BYTES`] bytes and the reason says so), invalid UTF-8;
//! - JSON: invalid or truncated JSON, a value that is not an object, more than one
//!   value in a record, a wrong type (the reason names the field), a non-nullable field
//!   that is missing or null (`missing field "x"`), a timestamp that does not parse;
//! - CSV: the wrong number of columns, an unterminated quote, a value that does not
//!   convert, an empty value for a non-nullable field;
//! - regex: a record the pattern does not match, a group value that does not convert.
//!
//! Empty and whitespace-only records are skipped by `json`, `csv` and `regex` (they are
//! neither decoded nor dead letters); `raw` keeps them as empty lines. `csv`, `regex` and
//! `raw` drop one trailing line break (`\n` or `\r\n`) of a record.
//!
//! Timestamps (`json`, `csv`, `regex`) accept RFC 3339 strings (and the forms of
//! Arrow's timestamp parser, e.g. `2024-05-01 12:00:00`) and integer epoch milliseconds,
//! whatever the unit of the declared column.

mod csv;
mod json;
mod json_exact;
mod json_fast;
mod text;
mod typed;

use std::sync::Arc;

use arrow::array::{Array, BinaryArray, BooleanArray, RecordBatch, UInt64Array};
use arrow::datatypes::SchemaRef;
use serde_json::{json, Value};
use weir_engine::registry::{DecoderBuild, FieldError, FormatFactory};
use weir_engine::source::{truncated_rows, DeadLetter, Decoded, Decoder, RAW_OFFSET, RAW_PAYLOAD};
use weir_engine::{EngineError, Result};

use crate::options::{kind, Options};

pub use self::csv::CsvFormat;
pub use self::json::JsonFormat;
pub use self::text::{RawFormat, RegexFormat};

/// Default limit on the size of one record.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1 << 20;
/// How many bytes of an oversized record its dead letter keeps.
pub const PREVIEW_BYTES: usize = 1024;

/// A record that did not decode: its row in the input and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RowError {
    /// Row index in the decoded input array.
    pub row: usize,
    /// Why, e.g. `missing field "ts"`.
    pub reason: String,
}

/// The result of decoding an array of records.
#[derive(Debug)]
pub(crate) struct RowsDecoded {
    /// The decoded records in input order, in the decoder's schema.
    pub batch: RecordBatch,
    /// For each row of `batch`, its row in the input.
    pub rows: Vec<u32>,
    /// The records that did not decode, in input order.
    pub errors: Vec<RowError>,
}

/// A format's decoder over an array of records (one record per element). Stateless, so
/// one instance is shared by all subtasks of a source or step.
pub(crate) trait TextDecoder: Send + Sync {
    /// The schema of decoded batches.
    fn schema(&self) -> SchemaRef;
    /// Decodes every non-null element of `values`. Nulls are dead letters.
    fn decode_values(&self, values: &BinaryArray) -> Result<RowsDecoded>;
}

/// A format built for one schema, shared by sources (through [`FormatDecoder`]) and the
/// `parse` step.
#[derive(Clone)]
pub(crate) struct TextFormat {
    /// The decoder.
    pub decoder: Arc<dyn TextDecoder>,
    /// The format's record size limit (oversized dead letters are truncated).
    pub max_record_bytes: usize,
    /// One line for `weir explain`.
    pub describe: String,
}

impl TextFormat {
    /// Turns row errors into dead letters: `position(row)` gives a record's position,
    /// oversized payloads are cut to [`PREVIEW_BYTES`].
    pub(crate) fn dead_letters(
        &self,
        values: &BinaryArray,
        errors: Vec<RowError>,
        source: &str,
        position: impl Fn(usize) -> u64,
    ) -> Vec<DeadLetter> {
        errors
            .into_iter()
            .map(|e| {
                let bytes: &[u8] = if values.is_valid(e.row) {
                    values.value(e.row)
                } else {
                    &[]
                };
                let bytes = if bytes.len() > self.max_record_bytes {
                    &bytes[..PREVIEW_BYTES.min(bytes.len())]
                } else {
                    bytes
                };
                DeadLetter {
                    reason: e.reason,
                    source: source.to_string(),
                    position: position(e.row),
                    payload: bytes.to_vec(),
                    kind: "decode",
                    step: String::new(),
                }
            })
            .collect()
    }
}

/// The names of the built-in formats.
pub(crate) const FORMAT_NAMES: [&str; 4] = ["csv", "json", "raw", "regex"];

/// Builds a built-in format by name from its options (`null`, the name as a string, or
/// the options object) and the declared schema.
pub(crate) fn build_text_format(
    name: &str,
    options: &Value,
    schema: Option<SchemaRef>,
) -> Result<TextFormat, FieldError> {
    if let Value::Object(m) = options {
        match m.get("type") {
            None => {}
            Some(Value::String(t)) if t == name => {}
            Some(other) => {
                return Err(FieldError::at(
                    "/type",
                    format!("expected \"{name}\", found {other}"),
                ))
            }
        }
    }
    match name {
        "json" => json::build(options, schema),
        "csv" => csv::build(options, schema),
        "regex" => text::build(options, schema, true),
        "raw" => text::build(options, schema, false),
        other => Err(FieldError::here(format!(
            "unknown format \"{other}\" (expected one of: {})",
            FORMAT_NAMES.join(", ")
        ))),
    }
}

/// Reads `format: NAME` or `format: {type: NAME, ...}` to the format's name.
pub(crate) fn format_name(value: &Value) -> Result<&str, FieldError> {
    match value {
        Value::String(s) => Ok(s),
        Value::Object(m) => match m.get("type") {
            Some(Value::String(s)) => Ok(s),
            Some(other) => Err(FieldError::at(
                "/type",
                format!("expected a format name, found {}", kind(other)),
            )),
            None => Err(FieldError::here(format!(
                "a format object needs `type` (one of: {})",
                FORMAT_NAMES.join(", ")
            ))),
        },
        other => Err(FieldError::here(format!(
            "expected a format name or a map with `type`, found {}",
            kind(other)
        ))),
    }
}

/// Reads `max_record_bytes` (default 1 MiB).
pub(crate) fn max_record_bytes(opts: &mut Options<'_>) -> Result<usize, FieldError> {
    Ok(opts
        .byte_size("max_record_bytes")?
        .unwrap_or(DEFAULT_MAX_RECORD_BYTES))
}

/// JSON Schema of `max_record_bytes`.
pub(crate) fn max_record_bytes_schema() -> Value {
    json!({
        "description": "Largest record in bytes (default 1 MiB); larger ones become dead letters with a truncated payload.",
        "oneOf": [
            {"type": "integer", "minimum": 1},
            {"type": "string", "pattern": "^\\s*[0-9]+\\s*([kKmMgG]([iI]?[bB])?|[bB])?\\s*$"}
        ]
    })
}

/// The first checks every format makes on a record.
pub(crate) enum Check<'a> {
    /// The record as text (a trailing line break removed if asked).
    Text(&'a str),
    /// Empty or whitespace only: skip it.
    Blank,
    /// Not decodable: the reason.
    Bad(String),
}

/// Null, size and UTF-8 checks of record `i`; `skip_blank` skips whitespace-only records
/// and `trim_newline` drops one trailing `\n` / `\r\n`.
pub(crate) fn check_record(
    values: &BinaryArray,
    i: usize,
    max_record_bytes: usize,
    skip_blank: bool,
    trim_newline: bool,
) -> Check<'_> {
    if values.is_null(i) {
        return Check::Bad("null record".into());
    }
    let bytes = values.value(i);
    if bytes.len() > max_record_bytes {
        return Check::Bad(format!(
            "record of {} bytes is over max_record_bytes ({max_record_bytes}); payload truncated to its first {} bytes",
            bytes.len(),
            PREVIEW_BYTES.min(bytes.len())
        ));
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => return Check::Bad(format!("invalid UTF-8 at byte {}", e.valid_up_to())),
    };
    let text = if trim_newline {
        let t = text.strip_suffix('\n').unwrap_or(text);
        t.strip_suffix('\r').unwrap_or(t)
    } else {
        text
    };
    if skip_blank && text.bytes().all(|b| b.is_ascii_whitespace()) {
        return Check::Blank;
    }
    Check::Text(text)
}

/// A [`Decoder`] for raw batches ([`weir_engine::source::raw_schema`]) over one of the
/// built-in formats.
pub struct FormatDecoder {
    format: TextFormat,
}

impl FormatDecoder {
    fn new(format: TextFormat) -> Self {
        FormatDecoder { format }
    }
}

impl Decoder for FormatDecoder {
    fn schema(&self) -> SchemaRef {
        self.format.decoder.schema()
    }

    fn decode(&mut self, raw: &RecordBatch, source: &str) -> Result<Decoded> {
        let bad_raw = |what: &str| {
            EngineError::operator(
                format!("decoder {}", self.format.describe),
                format!("{source}: raw batch {what}"),
            )
        };
        let values = raw
            .column_by_name(RAW_PAYLOAD)
            .ok_or_else(|| bad_raw("has no `payload` column"))?
            .as_any()
            .downcast_ref::<BinaryArray>()
            .ok_or_else(|| bad_raw("has a `payload` column that is not Binary"))?;
        let offsets = match raw.column_by_name(RAW_OFFSET) {
            Some(c) => Some(
                c.as_any()
                    .downcast_ref::<UInt64Array>()
                    .ok_or_else(|| bad_raw("has an `offset` column that is not UInt64"))?,
            ),
            None => None,
        };
        let mut rejected: Vec<(usize, String)> = truncated_rows(raw)
            .into_iter()
            .map(|row| {
                let len = if row < values.len() && values.is_valid(row) {
                    values.value(row).len()
                } else {
                    0
                };
                (
                    row,
                    format!(
                        "record longer than the source's max_record_bytes ({len} bytes kept); payload truncated to its first {} bytes",
                        PREVIEW_BYTES.min(len)
                    ),
                )
            })
            .collect();
        rejected.extend(weir_engine::source::rejected_rows(raw));
        if !rejected.is_empty() {
            return self.decode_with_rejected(raw, rejected, source, values, offsets);
        }
        let decoded = self.format.decoder.decode_values(values)?;
        let dead_letters = self
            .format
            .dead_letters(values, decoded.errors, source, |row| match offsets {
                Some(o) if o.is_valid(row) => o.value(row),
                _ => row as u64,
            });
        Ok(Decoded {
            batch: decoded.batch,
            dead_letters,
            source_rows: Some(decoded.rows),
        })
    }
}

impl FormatDecoder {
    /// Rows the source rejected (truncated ones, tombstones) become dead letters with
    /// the source's reason; the others decode.
    fn decode_with_rejected(
        &mut self,
        raw: &RecordBatch,
        rejected: Vec<(usize, String)>,
        source: &str,
        values: &BinaryArray,
        offsets: Option<&UInt64Array>,
    ) -> Result<Decoded> {
        let mut keep = vec![true; raw.num_rows()];
        let mut letters = Vec::new();
        for (row, reason) in rejected {
            if row >= keep.len() || !keep[row] {
                continue;
            }
            keep[row] = false;
            let bytes = if values.is_valid(row) {
                values.value(row)
            } else {
                &[]
            };
            let preview = &bytes[..PREVIEW_BYTES.min(bytes.len())];
            letters.push(DeadLetter {
                reason,
                source: source.to_string(),
                position: match offsets {
                    Some(o) if o.is_valid(row) => o.value(row),
                    _ => row as u64,
                },
                payload: preview.to_vec(),
                kind: "decode",
                step: String::new(),
            });
        }
        // Rows of `rest` back to rows of `raw`.
        let kept_rows: Vec<u32> = keep
            .iter()
            .enumerate()
            .filter(|(_, k)| **k)
            .map(|(r, _)| u32::try_from(r).unwrap_or(u32::MAX))
            .collect();
        let rest = arrow::compute::filter_record_batch(raw, &BooleanArray::from(keep))
            .map_err(|e| EngineError::arrow("dropping rejected records", e))?;
        // Same columns without the rejection metadata.
        let plain = Arc::new(arrow::datatypes::Schema::new(
            rest.schema().fields().clone(),
        ));
        let rest = RecordBatch::try_new(plain, rest.columns().to_vec())
            .map_err(|e| EngineError::arrow("dropping rejected records", e))?;
        let mut decoded = self.decode(&rest, source)?;
        decoded.dead_letters.extend(letters);
        decoded.source_rows = decoded.source_rows.map(|rows| {
            rows.iter()
                .map(|&r| kept_rows.get(r as usize).copied().unwrap_or(r))
                .collect()
        });
        Ok(decoded)
    }
}

/// A [`DecoderBuild`] over a built format.
fn decoder_build(format: TextFormat) -> DecoderBuild {
    let schema = format.decoder.schema();
    let describe = format.describe.clone();
    DecoderBuild {
        schema,
        describe,
        create: Arc::new(move || {
            Ok(Box::new(FormatDecoder::new(format.clone())) as Box<dyn Decoder>)
        }),
    }
}

/// Implements [`FormatFactory`] for a unit struct over [`build_text_format`].
macro_rules! format_factory {
    ($ty:ty, $name:literal, $schema:path) => {
        impl FormatFactory for $ty {
            fn name(&self) -> &'static str {
                $name
            }

            fn options_schema(&self) -> Value {
                $schema()
            }

            fn build(
                &self,
                options: &Value,
                schema: Option<SchemaRef>,
            ) -> std::result::Result<DecoderBuild, FieldError> {
                build_text_format($name, options, schema).map(decoder_build)
            }
        }
    };
}

format_factory!(JsonFormat, "json", json::options_schema);
format_factory!(CsvFormat, "csv", csv::options_schema);
format_factory!(RegexFormat, "regex", text::regex_options_schema);
format_factory!(RawFormat, "raw", text::raw_options_schema);

#[cfg(test)]
pub(crate) mod test_util {
    //! Helpers for decoder tests.
    use super::*;
    use arrow::datatypes::{DataType, Field, Schema};

    /// A raw batch of `records` at offsets 100, 101, ….
    pub fn raw_batch(records: &[&[u8]]) -> RecordBatch {
        let payload = BinaryArray::from_iter_values(records.iter().copied());
        let offsets = UInt64Array::from_iter_values((0..records.len() as u64).map(|i| 100 + i));
        RecordBatch::try_new(
            weir_engine::source::raw_schema(),
            vec![Arc::new(payload), Arc::new(offsets)],
        )
        .expect("raw batch")
    }

    /// Decodes `records` with the format `name` built from `options` and `schema`.
    pub fn decode(
        name: &str,
        options: Value,
        schema: Option<SchemaRef>,
        records: &[&[u8]],
    ) -> Decoded {
        let format = build_text_format(name, &options, schema).expect("format builds");
        let mut decoder = FormatDecoder::new(format);
        decoder
            .decode(&raw_batch(records), "test: input")
            .expect("decode never fails on bad records")
    }

    /// Dead letters as (offset - 100, reason).
    pub fn letters(d: &Decoded) -> Vec<(u64, String)> {
        d.dead_letters
            .iter()
            .map(|l| (l.position - 100, l.reason.clone()))
            .collect()
    }

    /// A schema from (name, type, nullable).
    pub fn schema(fields: &[(&str, DataType, bool)]) -> SchemaRef {
        Arc::new(Schema::new(
            fields
                .iter()
                .map(|(n, t, null)| Field::new(*n, t.clone(), *null))
                .collect::<Vec<_>>(),
        ))
    }

    /// Column `name` rendered as strings (nulls as `null`).
    pub fn column_strings(batch: &RecordBatch, name: &str) -> Vec<String> {
        let col = batch.column_by_name(name).expect("column exists");
        let opts = arrow::util::display::FormatOptions::default().with_null("null");
        let f =
            arrow::util::display::ArrayFormatter::try_new(col.as_ref(), &opts).expect("formatter");
        (0..col.len()).map(|i| f.value(i).to_string()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::*;
    use super::*;
    use arrow::datatypes::{DataType, TimeUnit};
    use proptest::prelude::*;

    #[test]
    fn unknown_format_and_mismatched_type() {
        let err = build_text_format("xml", &Value::Null, None)
            .err()
            .expect("unknown format");
        assert!(err.message.contains("unknown format \"xml\""));
        let err = build_text_format("csv", &json!({"type": "json"}), None)
            .err()
            .expect("type mismatch");
        assert_eq!(err.path, "/type");
    }

    #[test]
    fn dead_letter_positions_are_raw_offsets() {
        let s = schema(&[("a", DataType::Int64, false)]);
        let d = decode(
            "json",
            Value::Null,
            Some(s),
            &[b"{\"a\":1}", b"oops", b"{\"a\":2}"],
        );
        assert_eq!(d.batch.num_rows(), 2);
        assert_eq!(d.dead_letters.len(), 1);
        assert_eq!(d.dead_letters[0].position, 101);
        assert_eq!(d.dead_letters[0].source, "test: input");
        assert_eq!(d.dead_letters[0].payload, b"oops".to_vec());
    }

    /// Every kind of bad record, mixed with good ones, through every format.
    #[test]
    fn bad_records_of_every_kind() {
        let s = schema(&[
            (
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            ("user", DataType::Utf8, false),
            ("amount", DataType::Int64, true),
        ]);
        let huge = format!("{{\"ts\":1,\"user\":\"{}\"}}", "x".repeat(2000));
        let records: Vec<&[u8]> = vec![
            br#"{"ts":"2024-05-01T12:00:00Z","user":"ann","amount":5}"#, // 0 good
            br#"{"ts":"2024-05-01T12:00:01Z","user":"bob""#,             // 1 truncated
            br#"{"ts":1714564800000,"user":"cy","amount":"lots"}"#,      // 2 wrong type
            br#"{"ts":1714564800000,"amount":3}"#,                       // 3 missing field
            br#"{"ts":"yesterday","user":"dee"}"#,                       // 4 bad timestamp
            huge.as_bytes(),                                             // 5 huge line
            b"{\"ts\":1,\"user\":\"\xff\xfe\"}",                         // 6 invalid UTF-8
            b"[1,2]",                                                    // 7 array
            b"\"x\"",                                                    // 8 string
            b"42",                                                       // 9 number
            b"   ",                                                      // 10 blank: skipped
            br#"{"ts":1714564800000,"user":"eve","extra":{"x":[1]}}"#,   // 11 good, extra key
            br#"{"ts":1,"user":"fay"} {"ts":2,"user":"gus"}"#,           // 12 two objects
            br#"{"ts":1714564800000,"user":null}"#,                      // 13 null non-nullable
            br#"{"ts":1714564800000,"user":"hal","amount":null}"#,       // 14 good
            br#"{"ts":1714564800000,"user":5}"#,                         // 15 wrong type
        ];
        let d = decode(
            "json",
            json!({"type": "json", "max_record_bytes": 1024}),
            Some(s),
            &records,
        );
        assert_eq!(column_strings(&d.batch, "user"), vec!["ann", "eve", "hal"]);
        assert_eq!(
            column_strings(&d.batch, "ts"),
            vec![
                "2024-05-01T12:00:00",
                "2024-05-01T12:00:00",
                "2024-05-01T12:00:00"
            ]
        );
        assert_eq!(
            column_strings(&d.batch, "amount"),
            vec!["5", "null", "null"]
        );
        let got = letters(&d);
        let rows: Vec<u64> = got.iter().map(|(r, _)| *r).collect();
        assert_eq!(rows, vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 15]);
        let reason = |r: u64| {
            got.iter()
                .find(|(row, _)| *row == r)
                .map(|(_, s)| s.clone())
                .unwrap_or_default()
        };
        assert!(
            reason(1).starts_with("invalid JSON: EOF while parsing"),
            "{}",
            reason(1)
        );
        assert!(
            reason(2).starts_with("invalid value for field \"amount\": ")
                && reason(2).contains("lots"),
            "{}",
            reason(2)
        );
        assert_eq!(reason(3), "missing field \"user\"");
        assert!(
            reason(4).starts_with("invalid value for field \"ts\": ")
                && reason(4).contains("yesterday"),
            "{}",
            reason(4)
        );
        assert_eq!(
            reason(5),
            format!(
                "record of {} bytes is over max_record_bytes (1024); payload truncated to its first 1024 bytes",
                huge.len()
            )
        );
        assert_eq!(reason(6), "invalid UTF-8 at byte 16");
        assert_eq!(reason(7), "not a JSON object: found an array");
        assert_eq!(reason(8), "not a JSON object: found a string");
        assert_eq!(reason(9), "not a JSON object: found a number");
        assert!(
            reason(12).contains("invalid JSON: trailing characters"),
            "{}",
            reason(12)
        );
        assert_eq!(reason(13), "missing field \"user\"");
        assert!(
            reason(15).starts_with("invalid value for field \"user\": "),
            "{}",
            reason(15)
        );
        // The oversized record's payload is truncated.
        let huge_letter = d
            .dead_letters
            .iter()
            .find(|l| l.position == 105)
            .expect("huge letter");
        assert_eq!(huge_letter.payload.len(), PREVIEW_BYTES);

        // The same kinds of trouble in CSV.
        let s = schema(&[
            (
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            ("user", DataType::Utf8, false),
            ("amount", DataType::Int64, true),
        ]);
        let records: Vec<&[u8]> = vec![
            b"2024-05-01T12:00:00Z,ann,5",      // 0 good
            b"1714564800000,bob",               // 1 too few columns
            b"1714564800000,cy,1,2",            // 2 too many columns
            b"1714564800000,dee,lots",          // 3 wrong type
            b"yesterday,eve,1",                 // 4 bad timestamp
            b"1714564800000,\"fay,1",           // 5 unterminated quote
            b"",                                // 6 blank: skipped
            b"1714564800000,\"g,u\"\"s\",\r\n", // 7 good: quoted, empty amount, CRLF
            b"1714564800000,,3",                // 8 empty non-nullable
            b"17145648\xff,hal,1",              // 9 invalid UTF-8
        ];
        let d = decode("csv", Value::Null, Some(s), &records);
        assert_eq!(column_strings(&d.batch, "user"), vec!["ann", "g,u\"s"]);
        assert_eq!(column_strings(&d.batch, "amount"), vec!["5", "null"]);
        assert_eq!(
            letters(&d),
            vec![
                (1, "wrong number of columns: expected 3, got 2".to_string()),
                (2, "wrong number of columns: expected 3, got 4".to_string()),
                (
                    3,
                    "invalid value for field \"amount\": cannot read \"lots\" as Int64"
                        .to_string()
                ),
                (
                    4,
                    "invalid value for field \"ts\": cannot read \"yesterday\" as a timestamp (RFC 3339 or epoch milliseconds)"
                        .to_string()
                ),
                (5, "unterminated quoted field".to_string()),
                (8, "missing value for field \"user\"".to_string()),
                (9, "invalid UTF-8 at byte 8".to_string()),
            ]
        );

        // And in regex.
        let s = schema(&[
            (
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            ("level", DataType::Utf8, false),
            ("code", DataType::Int32, true),
        ]);
        let records: Vec<&[u8]> = vec![
            b"2024-05-01T12:00:00Z INFO 200",
            b"not a log line",
            b"2024-05-01T12:00:00Z WARN abc",
            b"1714564800000 ERROR",
        ];
        let d = decode(
            "regex",
            json!({"pattern": r"^(?P<ts>\S+) (?P<level>[A-Z]+)(?: (?P<code>\w+))?$"}),
            Some(s),
            &records,
        );
        assert_eq!(column_strings(&d.batch, "level"), vec!["INFO", "ERROR"]);
        assert_eq!(column_strings(&d.batch, "code"), vec!["200", "null"]);
        assert_eq!(
            letters(&d),
            vec![
                (1, "does not match the pattern".to_string()),
                (
                    2,
                    "invalid value for field \"code\": cannot read \"abc\" as Int32".to_string()
                ),
            ]
        );
    }

    fn garbage_line() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            // Arbitrary bytes.
            proptest::collection::vec(any::<u8>(), 0..40),
            // JSON-ish and CSV-ish fragments, so that the interesting paths run.
            proptest::collection::vec(
                prop_oneof![
                    Just(b"{".to_vec()),
                    Just(b"}".to_vec()),
                    Just(b"\"a\":".to_vec()),
                    Just(b"\"b\":".to_vec()),
                    Just(b"1".to_vec()),
                    Just(b"\"x\"".to_vec()),
                    Just(b"null".to_vec()),
                    Just(b",".to_vec()),
                    Just(b"\"".to_vec()),
                    Just(b"[".to_vec()),
                    Just(b"\n".to_vec()),
                    Just(b" ".to_vec()),
                    Just(b"\xff".to_vec()),
                    Just(b"2024-05-01T00:00:00Z".to_vec()),
                ],
                0..12
            )
            .prop_map(|parts| parts.concat()),
        ]
    }

    /// What `check_record` skips as blank.
    fn is_blank(line: &[u8]) -> bool {
        line.iter().all(|b| b.is_ascii_whitespace())
    }

    /// Decodes `records` with the internal API and checks that every record is decoded,
    /// dead-lettered or skipped as blank, exactly once.
    fn check_conservation(
        name: &str,
        options: Value,
        schema: SchemaRef,
        records: &[&[u8]],
        blank: impl Fn(&[u8]) -> bool,
    ) -> std::result::Result<(), TestCaseError> {
        let format = build_text_format(name, &options, Some(schema)).expect("builds");
        let values = BinaryArray::from_iter_values(records.iter().copied());
        let d = format
            .decoder
            .decode_values(&values)
            .expect("never fails on bad input");
        prop_assert_eq!(d.batch.num_rows(), d.rows.len());
        let mut fate = vec![0u8; records.len()];
        for r in &d.rows {
            fate[*r as usize] += 1;
        }
        for e in &d.errors {
            fate[e.row] += 1;
        }
        for (i, r) in records.iter().enumerate() {
            let skipped = r.len() <= format.max_record_bytes && blank(r);
            prop_assert_eq!(
                fate[i] + u8::from(skipped),
                1,
                "record {} ({:?}) of {}",
                i,
                String::from_utf8_lossy(r),
                name
            );
        }
        // Through the source-facing decoder the counts agree too.
        let mut decoder = FormatDecoder::new(format);
        let out = decoder.decode(&raw_batch(records), "p").expect("decodes");
        prop_assert_eq!(out.batch.num_rows(), d.rows.len());
        prop_assert_eq!(out.dead_letters.len(), d.errors.len());
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Garbage never panics the decoders, and every record is decoded,
        /// dead-lettered or (blank) skipped, exactly once.
        #[test]
        fn garbage_is_conserved(lines in proptest::collection::vec(garbage_line(), 0..30)) {
            let records: Vec<&[u8]> = lines.iter().map(|l| l.as_slice()).collect();
            let s = schema(&[
                ("a", DataType::Int64, false),
                ("b", DataType::Utf8, true),
                ("t", DataType::Timestamp(TimeUnit::Microsecond, None), true),
            ]);
            check_conservation("json", json!({"max_record_bytes": 30}), s.clone(), &records, is_blank)?;
            // CSV and regex drop one trailing line break before the blank check.
            let trimmed_blank = |r: &[u8]| {
                let r = r.strip_suffix(b"\n").unwrap_or(r);
                let r = r.strip_suffix(b"\r").unwrap_or(r);
                is_blank(r)
            };
            check_conservation("csv", Value::Null, s, &records, trimmed_blank)?;
            check_conservation(
                "regex",
                json!({"pattern": "(?P<a>\\d+)(?P<b>,.*)?"}),
                schema(&[("a", DataType::Int32, false), ("b", DataType::Utf8, true)]),
                &records,
                trimmed_blank,
            )?;
        }
    }
}
