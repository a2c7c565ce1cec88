//! The `json` format: JSON Lines, one object per record, decoded on whole batches.
//!
//! Flat schemas go through the one-pass decoder of [`super::json_fast`]; the records it
//! is not sure of (and every record, for other schemas) go to Arrow's JSON decoder in
//! ranges, and the fast path resumes after each. In a range, every record is fed to one
//! Arrow decoder, flushed once. Records that break it are isolated without losing their neighbours: a record
//! that is not well-formed JSON is found while feeding (the decoder must have taken
//! exactly one complete value from it) and cut out; a record whose values do not fit the
//! schema fails the flush, and the failing range is bisected until the culprit is a
//! single record. A batch with one bad record costs about three decodes instead of one.
//!
//! Decoding runs on a *relaxed* schema — top-level fields nullable, timestamps in
//! milliseconds — and then, with batch kernels: timestamps are cast to the declared
//! unit (so integers always mean epoch milliseconds), and rows with a null in a
//! non-nullable field become `missing field "x"` dead letters (a field that is present
//! but `null` counts as missing).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BinaryArray, BooleanArray, RecordBatch};
use arrow::compute::{cast, concat_batches, filter};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::json::reader::{Decoder as ArrowJsonDecoder, ReaderBuilder};
use serde_json::{json, Value};
use weir_engine::registry::FieldError;
use weir_engine::{EngineError, Result};

use super::json_exact;
use super::json_fast::FastJson;
use super::{
    check_record, max_record_bytes, max_record_bytes_schema, Check, RowError, RowsDecoded,
    TextDecoder, TextFormat,
};
use crate::options::Options;

/// The `json` format: JSON Lines with a declared schema.
///
/// ```yaml
/// format: json
/// format: { type: json, max_record_bytes: 256KiB }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonFormat;

/// JSON Schema of the `json` format's options.
pub(crate) fn options_schema() -> Value {
    json!({
        "type": "object",
        "description": "JSON Lines: one object per record; keys not in the schema are ignored.",
        "properties": {
            "type": {"const": "json"},
            "max_record_bytes": max_record_bytes_schema()
        },
        "additionalProperties": false
    })
}

/// Builds the `json` decoder.
pub(crate) fn build(options: &Value, schema: Option<SchemaRef>) -> Result<TextFormat, FieldError> {
    let mut opts = Options::new("format json", options)?;
    let max = max_record_bytes(&mut opts)?;
    opts.finish()?;
    let schema = schema.ok_or_else(|| {
        FieldError::here(
            "the json format needs a schema: declare the fields with `schema: {name: type, ...}`",
        )
    })?;
    if schema.fields().is_empty() {
        return Err(FieldError::here("the json format needs at least one field"));
    }
    let decoder = JsonDecoder::new(schema.clone(), max).map_err(FieldError::here)?;
    Ok(TextFormat {
        describe: format!("json ({} fields)", schema.fields().len()),
        decoder: Arc::new(decoder),
        max_record_bytes: max,
    })
}

/// Decodes JSON Lines into a declared schema.
pub(crate) struct JsonDecoder {
    /// The declared schema.
    schema: SchemaRef,
    /// What Arrow decodes: top-level fields nullable, timestamps in milliseconds.
    relaxed: SchemaRef,
    /// Columns whose relaxed type differs and must be cast to the declared one.
    cast_columns: Vec<usize>,
    max_record_bytes: usize,
    /// The one-pass decoder for flat schemas (see [`super::json_fast`]); records it
    /// does not take go through Arrow's decoder.
    fast: Option<FastJson>,
}

/// A run of at least this many records taken by the fast path sets Arrow's share of the
/// next records back to one.
const LONG_FAST_RUN: usize = 64;

/// One record fed to Arrow's decoder: its input row and its text.
type Line<'a> = (u32, &'a str);

/// Why feeding a range stopped.
enum Failure {
    /// The record at this index of the range is not one well-formed JSON value.
    Record(usize, String),
    /// The range is well-formed but did not convert (a type error somewhere).
    Flush(String),
}

impl JsonDecoder {
    fn new(schema: SchemaRef, max_record_bytes: usize) -> Result<Self, String> {
        let mut cast_columns = Vec::new();
        let fields: Vec<Field> = schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let relaxed_type = match f.data_type() {
                    DataType::Timestamp(unit, tz) if *unit != TimeUnit::Millisecond => {
                        cast_columns.push(i);
                        DataType::Timestamp(TimeUnit::Millisecond, tz.clone())
                    }
                    t => t.clone(),
                };
                f.as_ref()
                    .clone()
                    .with_data_type(relaxed_type)
                    .with_nullable(true)
            })
            .collect();
        let relaxed = Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()));
        // Check once that Arrow can decode this schema at all.
        ReaderBuilder::new(relaxed.clone())
            .build_decoder()
            .map_err(|e| format!("the json format cannot decode this schema: {e}"))?;
        Ok(JsonDecoder {
            fast: FastJson::new(&relaxed),
            schema,
            relaxed,
            cast_columns,
            max_record_bytes,
        })
    }

    fn arrow_decoder(&self, rows: usize) -> Result<ArrowJsonDecoder> {
        ReaderBuilder::new(self.relaxed.clone())
            .with_batch_size(rows + 1)
            .with_strict_mode(false)
            .build_decoder()
            .map_err(|e| EngineError::arrow("creating the JSON decoder", e))
    }

    /// Feeds `lines` to a fresh decoder and flushes it.
    fn try_decode(&self, lines: &[Line<'_>]) -> Result<Result<RecordBatch, Failure>> {
        let mut decoder = self.arrow_decoder(lines.len())?;
        for (k, (_, line)) in lines.iter().enumerate() {
            let before = decoder.len();
            let consumed = match decoder.decode(line.as_bytes()) {
                Ok(n) => n,
                Err(e) => return Ok(Err(Failure::Record(k, syntax_error(line, &e.to_string())))),
            };
            let after = decoder.len();
            if consumed < line.len() || after > before + 1 {
                return Ok(Err(Failure::Record(
                    k,
                    "more than one JSON value in the record".into(),
                )));
            }
            if decoder.has_partial_record() || after == before {
                return Ok(Err(Failure::Record(
                    k,
                    syntax_error(line, "truncated JSON: the record ends inside a value"),
                )));
            }
        }
        match decoder.flush() {
            Ok(Some(batch)) => Ok(Ok(batch)),
            Ok(None) => Ok(Ok(RecordBatch::new_empty(self.relaxed.clone()))),
            Err(e) => {
                // One record: its value is shown from its own text (Arrow's rendering
                // of nested values drops separators).
                let line = match lines {
                    [(_, line)] => Some(*line),
                    _ => None,
                };
                Ok(Err(Failure::Flush(value_error(&e.to_string(), line))))
            }
        }
    }

    /// Decodes `lines`, isolating bad records: good ones go to `pieces` (in order, with
    /// their rows), bad ones to `errors`.
    fn decode_lines(
        &self,
        lines: &[Line<'_>],
        pieces: &mut Vec<RecordBatch>,
        rows: &mut Vec<u32>,
        errors: &mut Vec<RowError>,
    ) -> Result<()> {
        // Arrow's decoder is lenient (it truncates 1.5 into an int, accepts a trailing
        // comma): only records that decode exactly are given to it.
        let mut exact: Vec<Line<'_>> = Vec::with_capacity(lines.len());
        for &(row, text) in lines {
            match json_exact::check_record(text, self.relaxed.fields()) {
                Ok(()) => exact.push((row, text)),
                Err(reason) => errors.push(RowError {
                    row: row as usize,
                    reason,
                }),
            }
        }
        let lines = exact.as_slice();
        // Ranges still to decode, as a stack whose top is the leftmost range, so that
        // pieces come out in input order.
        let mut work = vec![(0, lines.len())];
        while let Some((lo, hi)) = work.pop() {
            if lo >= hi {
                continue;
            }
            let range = &lines[lo..hi];
            match self.try_decode(range)? {
                Ok(batch) => {
                    pieces.push(batch);
                    rows.extend(range.iter().map(|(r, _)| *r));
                }
                Err(Failure::Record(k, reason)) => {
                    // The reason as the record alone gives it: in a longer range, what
                    // the decoder reads past a record's first value depends on how many
                    // records the range has room for.
                    let reason = match range.len() {
                        1 => reason,
                        _ => match self.try_decode(&range[k..k + 1])? {
                            Err(Failure::Record(_, alone) | Failure::Flush(alone)) => alone,
                            Ok(_) => reason,
                        },
                    };
                    errors.push(RowError {
                        row: range[k].0 as usize,
                        reason,
                    });
                    // Right first: the stack pops the left part first.
                    work.push((lo + k + 1, hi));
                    work.push((lo, lo + k));
                }
                Err(Failure::Flush(reason)) => {
                    if range.len() == 1 {
                        errors.push(RowError {
                            row: range[0].0 as usize,
                            reason,
                        });
                    } else {
                        let mid = lo + range.len() / 2;
                        work.push((mid, hi));
                        work.push((lo, mid));
                    }
                }
            }
        }
        Ok(())
    }
}

/// The reason for a record that is not well-formed JSON: serde_json's precise message
/// if it rejects the text too, else `fallback` (Arrow's view).
fn syntax_error(line: &str, fallback: &str) -> String {
    match serde_json::from_str::<serde::de::IgnoredAny>(line) {
        Err(e) => format!("invalid JSON: {e}"),
        Ok(_) => format!(
            "invalid JSON: {}",
            fallback.strip_prefix("Json error: ").unwrap_or(fallback)
        ),
    }
}

/// Arrow's conversion error as `invalid value for field "a.b": …`; with the record's
/// text, "expected T got V" shows V as the record has it (compact JSON, shortened).
fn value_error(message: &str, line: Option<&str>) -> String {
    let mut rest = message.strip_prefix("Json error: ").unwrap_or(message);
    let mut path: Vec<&str> = Vec::new();
    while let Some(r) = rest.strip_prefix("whilst decoding field '") {
        match r.split_once("': ") {
            Some((name, tail)) => {
                path.push(name);
                rest = tail;
            }
            None => break,
        }
    }
    let shown;
    if let (Some(line), Some((expected, _))) = (line, rest.split_once(" got ")) {
        if let Some(expected) = expected.strip_prefix("expected ") {
            let value = serde_json::from_str::<Value>(line).ok().and_then(|v| {
                path.iter().try_fold(v, |v, name| match v {
                    Value::Object(mut m) => m.remove(*name),
                    _ => None,
                })
            });
            if let Some(value) = value {
                let expected = match expected {
                    "[" => "a list",
                    "{" => "an object",
                    other => other,
                };
                shown = format!("expected {expected}, found {}", shorten(&value.to_string()));
                rest = &shown;
            }
        }
    }
    if path.is_empty() {
        format!("invalid value: {rest}")
    } else {
        format!("invalid value for field \"{}\": {rest}", path.join("."))
    }
}

/// At most 120 characters of `text`, with `…` when cut.
fn shorten(text: &str) -> String {
    const MAX: usize = 120;
    match text.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

/// The reason for a record whose first character shows it is not an object.
fn not_an_object(text: &str) -> String {
    let found = match text.trim_start().as_bytes().first() {
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b'-' | b'0'..=b'9') => "a number",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => return syntax_error(text, "expected a JSON object"),
    };
    match serde_json::from_str::<serde::de::IgnoredAny>(text) {
        Ok(_) => format!("not a JSON object: found {found}"),
        Err(e) => format!("invalid JSON: {e}"),
    }
}

impl TextDecoder for JsonDecoder {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn decode_values(&self, values: &BinaryArray) -> Result<RowsDecoded> {
        let mut errors = Vec::new();
        let mut lines: Vec<Line<'_>> = Vec::with_capacity(values.len());
        for i in 0..values.len() {
            match check_record(values, i, self.max_record_bytes, true, false) {
                Check::Blank => {}
                Check::Bad(reason) => errors.push(RowError { row: i, reason }),
                Check::Text(text) => {
                    if text.trim_start().starts_with('{') {
                        lines.push((i as u32, text));
                    } else {
                        errors.push(RowError {
                            row: i,
                            reason: not_an_object(text),
                        });
                    }
                }
            }
        }

        let mut pieces = Vec::new();
        let mut rows = Vec::with_capacity(lines.len());
        match &self.fast {
            None => self.decode_lines(&lines, &mut pieces, &mut rows, &mut errors)?,
            Some(fast) => {
                // Fast runs, and in between Arrow's decoder for the records the fast path
                // stops at: one record after a long fast run, else twice as many as last
                // time (so records it does not take, in a row or every other one, cost a
                // few attempts and pieces, not one per record).
                let mut at = 0;
                let mut chunk = 1;
                while at < lines.len() {
                    let rest = &lines[at..];
                    let (batch, n) = fast.decode_prefix(rest.iter().map(|(_, l)| *l))?;
                    if n > 0 {
                        pieces.push(batch);
                        rows.extend(rest[..n].iter().map(|(r, _)| *r));
                        at += n;
                    }
                    chunk = if n >= LONG_FAST_RUN.max(2 * chunk) {
                        1
                    } else {
                        (chunk * 2).min(lines.len())
                    };
                    let end = (at + chunk).min(lines.len());
                    self.decode_lines(&lines[at..end], &mut pieces, &mut rows, &mut errors)?;
                    at = end;
                }
            }
        }
        let relaxed = match pieces.len() {
            0 => RecordBatch::new_empty(self.relaxed.clone()),
            1 => pieces.swap_remove(0),
            _ => concat_batches(&self.relaxed, &pieces)
                .map_err(|e| EngineError::arrow("concatenating decoded JSON", e))?,
        };
        let batch = self.finish_batch(relaxed, &mut rows, &mut errors)?;
        errors.sort_by_key(|e| e.row);
        Ok(RowsDecoded {
            batch,
            rows,
            errors,
        })
    }
}

impl JsonDecoder {
    /// Casts the relaxed columns to the declared types and dead-letters rows with a null
    /// in a non-nullable field.
    fn finish_batch(
        &self,
        relaxed: RecordBatch,
        rows: &mut Vec<u32>,
        errors: &mut Vec<RowError>,
    ) -> Result<RecordBatch> {
        let mut columns: Vec<ArrayRef> = relaxed.columns().to_vec();
        for &i in &self.cast_columns {
            let target = self.schema.field(i).data_type();
            columns[i] = cast(&columns[i], target)
                .map_err(|e| EngineError::arrow("casting decoded JSON timestamps", e))?;
        }

        // Rows with a null in a non-nullable field: the first such field names the reason.
        let n = relaxed.num_rows();
        let mut missing: Option<Vec<Option<usize>>> = None;
        for (i, field) in self.schema.fields().iter().enumerate() {
            if field.is_nullable() || columns[i].null_count() == 0 {
                continue;
            }
            let slots = missing.get_or_insert_with(|| vec![None; n]);
            let nulls = columns[i].logical_nulls();
            for (row, slot) in slots.iter_mut().enumerate() {
                if slot.is_none() && nulls.as_ref().is_some_and(|b| b.is_null(row)) {
                    *slot = Some(i);
                }
            }
        }
        if let Some(slots) = missing {
            let keep: BooleanArray = slots.iter().map(|s| Some(s.is_none())).collect();
            for (row, slot) in slots.iter().enumerate() {
                if let Some(i) = slot {
                    errors.push(RowError {
                        row: rows[row] as usize,
                        reason: format!("missing field \"{}\"", self.schema.field(*i).name()),
                    });
                }
            }
            let mut k = 0;
            rows.retain(|_| {
                k += 1;
                slots[k - 1].is_none()
            });
            columns = columns
                .iter()
                .map(|c| filter(c, &keep))
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| EngineError::arrow("dropping records with missing fields", e))?;
        }
        if columns.is_empty() {
            return Ok(RecordBatch::new_empty(self.schema.clone()));
        }
        RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(|e| EngineError::arrow("building the decoded JSON batch", e))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    #[test]
    fn good_batch_decodes_in_one_go() {
        let s = schema(&[
            ("a", DataType::Int64, false),
            ("b", DataType::Utf8, true),
            (
                "t",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
        ]);
        let d = decode(
            "json",
            Value::Null,
            Some(s.clone()),
            &[
                br#"{"a":1,"b":"x","t":"2024-05-01T12:00:00.123456Z"}"#,
                br#"  {"b":null,"a":"2","t":1714564800000}  "#,
                b"",
                br#"{"a":3,"zzz":[1,{"q":2}]}"#,
            ],
        );
        assert!(d.dead_letters.is_empty(), "{:?}", d.dead_letters);
        assert_eq!(d.batch.schema(), s);
        assert_eq!(column_strings(&d.batch, "a"), vec!["1", "2", "3"]);
        assert_eq!(column_strings(&d.batch, "b"), vec!["x", "null", "null"]);
        // Strings keep millisecond precision; integers are epoch milliseconds even for a
        // microsecond column.
        assert_eq!(
            column_strings(&d.batch, "t"),
            vec!["2024-05-01T12:00:00.123Z", "2024-05-01T12:00:00Z", "null"]
        );
    }

    #[test]
    fn many_bad_records_in_a_row() {
        let s = schema(&[("a", DataType::Int64, false)]);
        let mut records: Vec<Vec<u8>> = Vec::new();
        for i in 0..200 {
            records.push(match i % 4 {
                0 => format!("{{\"a\":{i}}}").into_bytes(),
                1 => b"{\"a\":".to_vec(),
                2 => b"{\"a\":\"x\"}".to_vec(),
                _ => b"{}".to_vec(),
            });
        }
        let refs: Vec<&[u8]> = records.iter().map(|r| r.as_slice()).collect();
        let d = decode("json", Value::Null, Some(s), &refs);
        assert_eq!(d.batch.num_rows(), 50);
        assert_eq!(d.dead_letters.len(), 150);
        let expected: Vec<String> = (0..200).step_by(4).map(|i| i.to_string()).collect();
        assert_eq!(column_strings(&d.batch, "a"), expected);
        for l in &d.dead_letters {
            let expected = match (l.position - 100) % 4 {
                1 => "invalid JSON: EOF while parsing a value",
                2 => "invalid value for field \"a\": ",
                _ => "missing field \"a\"",
            };
            assert!(
                l.reason.starts_with(expected),
                "{}: {}",
                l.position,
                l.reason
            );
        }
    }

    /// Values of every kind, well-formed and not, in the forms the fast path takes and
    /// the ones it leaves to Arrow.
    const VALUES: &[&str] = &[
        r#""abc""#,
        r#""a\"b\\c\/d""#,
        r#""\u00e9t\u00e9 \n\t""#,
        r#""\ud83d\ude00""#,
        r#""\ud800""#,
        "\"tab\there\"",
        r#""héllo wörld""#,
        r#""""#,
        r#""\x""#,
        r#""\u12""#,
        "0",
        "-0",
        "12",
        "-7",
        "1.5",
        "1e3",
        "-2.5E-3",
        "01",
        "1.",
        ".5",
        "-",
        "9223372036854775807",
        "9223372036854775808",
        "-9223372036854775808",
        "1e400",
        "+1",
        r#""12""#,
        "NaN",
        "true",
        "false",
        "tru",
        r#""true""#,
        "null",
        "nul",
        r#"{"a":[1,{"b":null}],"c":"\u0041"}"#,
        "[]",
        "{}",
        "[1,2",
        r#"[1,,2]"#,
        "[[[[[[1]]]]]]",
        r#""2024-05-01T12:00:00Z""#,
        r#""2024-05-01T12:00:00.123456+02:00""#,
        r#""2024-05-01 12:00:00""#,
        r#""2024-02-30T00:00:00Z""#,
        "1714564800000",
        "1714564800000.5",
        r#""2024-05-01""#,
        r#""1969-12-31T23:59:59.9999Z""#,
        r#""2024-05-01T12:00:00.1234567891Z""#,
        r#""2024-05-01T12:00:00z""#,
    ];
    const KEYS: &[&str] = &[
        r#""s""#,
        r#""n""#,
        r#""f""#,
        r#""b""#,
        r#""t""#,
        r#""tu""#,
        r#""zz""#,
        r#""\u0073""#,
        r#""s\n""#,
        r#""""#,
    ];
    /// Mostly a value of the right kind for the key (so that whole records take the
    /// fast path), sometimes any value.
    fn value_for(key: usize, pick: usize) -> &'static str {
        const STRINGS: &[&str] = &[
            r#""abc""#,
            r#""a\"b\\c\/d""#,
            r#""\u00e9t\u00e9 \n\t""#,
            r#""héllo wörld""#,
            r#""""#,
            "null",
        ];
        const INTS: &[&str] = &[
            "0",
            "-0",
            "12",
            "-7",
            "9223372036854775807",
            "-9223372036854775808",
            "null",
            "1.0",
            "1.5",
            "1e3",
            "9223372036854775808",
            r#""7""#,
            r#""7.5""#,
        ];
        const FLOATS: &[&str] = &[
            "0", "1.5", "1e3", "-2.5E-3", "12", "-0", "0.1", "null", "1e400", r#""NaN""#,
            r#""inf""#, r#""2.5""#, "1e308",
        ];
        const BOOLS: &[&str] = &["true", "false", "null"];
        const TIMES: &[&str] = &[
            r#""2024-05-01T12:00:00Z""#,
            r#""2024-05-01T12:00:00.123456+02:00""#,
            r#""1969-12-31T23:59:59.9999Z""#,
            r#""2000-02-29T23:59:59.5-11:30""#,
            r#""1970-01-01T00:00:00.0Z""#,
            "1714564800000",
            "-1",
            "null",
            "1.5",
            "1e30",
            "8210266876799999",
            "8210266876800000",
            "-8334601228800001",
        ];
        const OTHER: &[&str] = &[
            r#"{"a":[1,{"b":null}],"c":"\u0041"}"#,
            "[]",
            "{}",
            "[[[[[[1]]]]]]",
            r#""x""#,
            "-1.5e-7",
            "true",
        ];
        if pick % 10 >= 7 {
            return VALUES[(pick / 10) % VALUES.len()];
        }
        let table = match KEYS[key] {
            r#""s""# | r#""\u0073""# => STRINGS,
            r#""n""# => INTS,
            r#""f""# => FLOATS,
            r#""b""# => BOOLS,
            r#""t""# | r#""tu""# => TIMES,
            _ => OTHER,
        };
        table[(pick / 10) % table.len()]
    }

    const SPACES: &[&str] = &["", "", "", " ", "\t", "\r\n", "  "];

    /// One record built from `picks` (indexes into the tables above) and maybe mangled.
    fn record(picks: &[(usize, usize, usize)], mangle: (u8, usize, u8)) -> Vec<u8> {
        let mut out = String::from(SPACES[mangle.1 % SPACES.len()]);
        out.push('{');
        for (k, &(key, value, space)) in picks.iter().enumerate() {
            if k > 0 {
                out.push(',');
            }
            let sp = SPACES[space % SPACES.len()];
            out.push_str(sp);
            out.push_str(KEYS[key % KEYS.len()]);
            out.push_str(sp);
            out.push(':');
            out.push_str(sp);
            out.push_str(value_for(key % KEYS.len(), value));
        }
        out.push('}');
        let mut bytes = out.into_bytes();
        let at = mangle.1 % (bytes.len() + 1);
        match mangle.0 % 12 {
            0 => bytes.truncate(at),
            1 => bytes.insert(at, mangle.2),
            2 if at < bytes.len() => bytes[at] = mangle.2,
            3 => bytes.extend_from_slice(b" {}"),
            4 => bytes.push(b'\n'),
            _ => {}
        }
        bytes
    }

    /// The fast path and Arrow's decoder alone give the same batch, rows and errors.
    fn same_as_arrow(schema: &SchemaRef, records: &[Vec<u8>]) {
        let fast = JsonDecoder::new(schema.clone(), 1 << 20).expect("decoder");
        assert!(fast.fast.is_some());
        let mut slow = JsonDecoder::new(schema.clone(), 1 << 20).expect("decoder");
        slow.fast = None;
        let values = BinaryArray::from_iter_values(records.iter());
        let a = fast.decode_values(&values).expect("decodes");
        let b = slow.decode_values(&values).expect("decodes");
        let shown: Vec<String> = records
            .iter()
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .collect();
        assert_eq!(a.batch, b.batch, "{shown:#?}");
        assert_eq!(a.rows, b.rows, "{shown:#?}");
        assert_eq!(a.errors, b.errors, "{shown:#?}");
    }

    /// Every decoded number is exactly the number the record holds (read with
    /// serde_json): ints, floats and epoch-millisecond timestamps are never rounded,
    /// truncated or saturated; a record that cannot be decoded exactly is an error.
    fn exactly_as_written(schema: &SchemaRef, records: &[Vec<u8>]) {
        use arrow::array::AsArray;
        use arrow::datatypes::{Float64Type, Int64Type, TimestampMillisecondType};
        let decoder = JsonDecoder::new(schema.clone(), 1 << 20).expect("decoder");
        let values = BinaryArray::from_iter_values(records.iter());
        let out = decoder.decode_values(&values).expect("decodes");
        for (i, &row) in out.rows.iter().enumerate() {
            let text = String::from_utf8_lossy(&records[row as usize]).into_owned();
            // (An undeclared value serde_json cannot hold, such as 1e400, is fine in an
            // accepted record; such records are not compared here.)
            let Ok(json) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            for (c, field) in schema.fields().iter().enumerate() {
                let col = out.batch.column(c);
                let written = json.get(field.name());
                let Some(Value::Number(n)) = written else {
                    continue;
                };
                match field.data_type() {
                    DataType::Int64 => {
                        let got = col.as_primitive::<Int64Type>().value(i);
                        assert_eq!(Some(got as f64), n.as_f64(), "{text}: {}", field.name());
                        if let Some(exact) = n.as_i64() {
                            assert_eq!(got, exact, "{text}");
                        }
                    }
                    DataType::Float64 => {
                        let got = col.as_primitive::<Float64Type>().value(i);
                        assert_eq!(Some(got), n.as_f64(), "{text}");
                    }
                    DataType::Timestamp(TimeUnit::Millisecond, _) => {
                        let got = col.as_primitive::<TimestampMillisecondType>().value(i);
                        // `1e3` is the integer 1000.
                        assert_eq!(Some(got as f64), n.as_f64(), "{text}");
                        if let Some(exact) = n.as_i64() {
                            assert_eq!(got, exact, "{text}");
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn oracle_schemas() -> [SchemaRef; 2] {
        [
            schema(&[
                ("s", DataType::Utf8, true),
                ("n", DataType::Int64, true),
                ("f", DataType::Float64, true),
                ("b", DataType::Boolean, true),
                ("t", DataType::Timestamp(TimeUnit::Millisecond, None), true),
                (
                    "tu",
                    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                    true,
                ),
            ]),
            schema(&[
                ("t", DataType::Timestamp(TimeUnit::Millisecond, None), false),
                ("s", DataType::Utf8, false),
                ("n", DataType::Int64, true),
            ]),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(400))]

        #[test]
        fn fast_path_decodes_as_arrow_does(
            records in proptest::collection::vec(
                (
                    proptest::collection::vec((0..KEYS.len() + 3, 0..1000usize, 0..20usize), 0..7),
                    (0u8..40, 0..400usize, proptest::prelude::any::<u8>()),
                ),
                1..24,
            ),
        ) {
            let records: Vec<Vec<u8>> = records
                .iter()
                .map(|(picks, mangle)| record(picks, *mangle))
                .collect();
            for s in oracle_schemas() {
                same_as_arrow(&s, &records);
                for r in &records {
                    same_as_arrow(&s, std::slice::from_ref(r));
                }
                exactly_as_written(&s, &records);
            }
        }
    }

    #[test]
    fn fast_path_takes_the_usual_records() {
        let s = &oracle_schemas()[0];
        let fast = FastJson::new(
            &JsonDecoder::new(s.clone(), 1 << 20)
                .expect("decoder")
                .relaxed,
        )
        .expect("flat schema");
        let lines = [
            r#"{"t":"2024-01-01T00:00:00.001Z","s":"cart","n":196,"b":true,"f":1.5e3}"#,
            r#" { "s" : "a\"b\u00e9" , "zz" : {"x":[1,2.5,"q",null,true,{}]}, "tu": 1714564800000 } "#,
            r#"{"s":null,"n":-3,"f":-0,"b":false,"t":"2024-02-29T23:59:59+05:30"}"#,
            "{}",
        ];
        let (batch, n) = fast.decode_prefix(lines.iter().copied()).expect("decodes");
        assert_eq!(n, lines.len());
        assert_eq!(batch.num_rows(), lines.len());
        assert_eq!(
            column_strings(&batch, "s"),
            vec!["cart", "a\"bé", "null", "null"]
        );
        assert_eq!(
            column_strings(&batch, "t"),
            vec![
                "2024-01-01T00:00:00.001",
                "null",
                "2024-02-29T18:29:59",
                "null"
            ]
        );
        // A string in an integer field leaves the fast path there.
        let (_, n) = fast
            .decode_prefix([r#"{"n":1}"#, r#"{"n":"2"}"#, r#"{"n":3}"#].into_iter())
            .expect("decodes");
        assert_eq!(n, 1);
    }

    #[test]
    fn needs_a_schema() {
        let err = build(&Value::Null, None).err().expect("no schema");
        assert!(err.message.contains("needs a schema"));
        let err = build(&json!({"max_record_bytes": "lots"}), None)
            .err()
            .expect("bad size");
        assert_eq!(err.path, "/max_record_bytes");
    }

    #[test]
    fn a_nested_value_in_a_reason_is_shown_as_the_record_has_it() {
        let schema = Arc::new(Schema::new(vec![Field::new("user", DataType::Utf8, true)]));
        let decoder = JsonDecoder::new(schema, 1 << 20).expect("decoder");
        let values = BinaryArray::from_iter_values([
            r#"{"user": {"id": 1, "name": "a"}}"#.as_bytes(),
            r#"{"user": "ok"}"#.as_bytes(),
        ]);
        let decoded = decoder.decode_values(&values).expect("decodes");
        assert_eq!(decoded.errors.len(), 1);
        assert_eq!(
            decoded.errors[0].reason,
            r#"invalid value for field "user": expected string, found {"id":1,"name":"a"}"#
        );
        assert_eq!(
            value_error(
                "Json error: whilst decoding field 'a': expected [ got 1",
                Some(r#"{"a": {"b": [1, 2, 3]}}"#)
            ),
            r#"invalid value for field "a": expected a list, found {"b":[1,2,3]}"#
        );
        let long = format!(r#"{{"a": "{}"}}"#, "x".repeat(500));
        let shown = value_error(
            "Json error: whilst decoding field 'a': expected int got …",
            Some(&long),
        );
        assert!(shown.ends_with("…"), "{shown}");
        assert!(shown.chars().count() < 200, "{shown}");
    }

    #[test]
    fn value_errors_name_nested_fields() {
        assert_eq!(
            value_error("Json error: whilst decoding field 'a': whilst decoding field 'b': failed to parse \"x\" as Int64", None),
            "invalid value for field \"a.b\": failed to parse \"x\" as Int64"
        );
    }
}
