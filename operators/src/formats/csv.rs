//! The `csv` format: one CSV record per record, columns in schema order.
//!
//! Records are split into text columns with Arrow's CSV decoder (fed record by record so
//! that a record with the wrong number of columns or an unterminated quote is pinned to
//! itself), then converted to the schema's types with cast kernels (see `typed`). An
//! empty value reads as null. A quoted value may hold the delimiter and doubled quotes;
//! a record cannot span several lines (each record of the source is one record).
//!
//! A header line is skipped by the file source (`header: true` on the source), not here:
//! the decoder decodes every record it is given, and `header` on the format is an error
//! that says where it belongs.

use std::sync::Arc;

use arrow::array::{Array, BinaryArray, RecordBatch};
use arrow::compute::concat_batches;
use arrow::csv::reader::{Decoder as ArrowCsvDecoder, ReaderBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde_json::{json, Value};
use weir_engine::registry::FieldError;
use weir_engine::{EngineError, Result};

use super::typed::{check_castable, finish_text_batch};
use super::{
    check_record, max_record_bytes, max_record_bytes_schema, Check, RowError, RowsDecoded,
    TextDecoder, TextFormat,
};
use crate::options::Options;

/// The `csv` format.
///
/// ```yaml
/// format: csv
/// format: { type: csv, delimiter: ";", quote: "'", escape: "\\" }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct CsvFormat;

/// JSON Schema of the `csv` format's options.
pub(crate) fn options_schema() -> Value {
    let one_char =
        |what: &str| json!({"type": "string", "minLength": 1, "maxLength": 1, "description": what});
    json!({
        "type": "object",
        "description": "CSV: one record per line, columns in schema order; an empty value is null.",
        "properties": {
            "type": {"const": "csv"},
            "delimiter": one_char("Column delimiter (default \",\")."),
            "quote": one_char("Quote character (default '\"'); a doubled quote inside quotes is a quote."),
            "escape": one_char("Escape character inside quotes (default: none)."),
            "header": {"type": "boolean", "description": "Not here: put `header: true` on the file source, which skips the first line of each file."},
            "max_record_bytes": max_record_bytes_schema()
        },
        "additionalProperties": false
    })
}

/// Builds the `csv` decoder.
pub(crate) fn build(options: &Value, schema: Option<SchemaRef>) -> Result<TextFormat, FieldError> {
    let mut opts = Options::new("format csv", options)?;
    let delimiter = opts.ascii_char("delimiter")?.unwrap_or(b',');
    let quote = opts.ascii_char("quote")?.unwrap_or(b'"');
    let escape = opts.ascii_char("escape")?;
    if opts.boolean("header")?.is_some() {
        return Err(FieldError::at(
            "/header",
            "`header` belongs on the file source (`header: true` there skips the first line of each file), not on the csv format",
        ));
    }
    let max = max_record_bytes(&mut opts)?;
    opts.finish()?;
    if delimiter == quote {
        return Err(FieldError::at(
            "/quote",
            "the quote character must differ from the delimiter",
        ));
    }
    let schema = schema.ok_or_else(|| {
        FieldError::here(
            "the csv format needs a schema: declare the columns in order with `schema: {name: type, ...}`",
        )
    })?;
    if schema.fields().is_empty() {
        return Err(FieldError::here("the csv format needs at least one column"));
    }
    check_castable(&schema, "csv")?;
    let text_schema = Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| Field::new(f.name(), DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ));
    let describe = format!(
        "csv ({} columns, delimiter {:?})",
        schema.fields().len(),
        delimiter as char
    );
    Ok(TextFormat {
        decoder: Arc::new(CsvDecoder {
            schema,
            text_schema,
            delimiter,
            quote,
            escape,
            max_record_bytes: max,
        }),
        max_record_bytes: max,
        describe,
    })
}

/// Decodes CSV records into a declared schema.
pub(crate) struct CsvDecoder {
    schema: SchemaRef,
    /// The same columns, all nullable `Utf8`: what Arrow's decoder produces.
    text_schema: SchemaRef,
    delimiter: u8,
    quote: u8,
    escape: Option<u8>,
    max_record_bytes: usize,
}

impl CsvDecoder {
    fn arrow_decoder(&self, rows: usize) -> ArrowCsvDecoder {
        let mut b = ReaderBuilder::new(self.text_schema.clone())
            .with_header(false)
            .with_delimiter(self.delimiter)
            .with_quote(self.quote)
            .with_batch_size(rows + 1);
        if let Some(e) = self.escape {
            b = b.with_escape(e);
        }
        b.build_decoder()
    }

    /// Feeds one record; `Err` holds why it is not one record of the right width (the
    /// decoder is then unusable).
    fn feed(&self, decoder: &mut ArrowCsvDecoder, line: &str) -> Result<(), String> {
        // A record that ends one CSV record and then opens a quote that never closes
        // (`a,b\n,"`) completes exactly one record but leaves the decoder inside the
        // next one, which would fail the flush of every record after it: refuse it
        // here, where it can be pinned to this record.
        if self.leaves_open_quote(line.as_bytes()) {
            return Err(
                "a line break outside quotes followed by an unterminated quoted field".into(),
            );
        }
        let capacity = decoder.capacity();
        let mut consumed = decoder.decode(line.as_bytes()).map_err(csv_error)?;
        if consumed == line.len() {
            consumed += decoder.decode(b"\n").map_err(csv_error)?;
        }
        let records = capacity - decoder.capacity();
        if consumed < line.len() + 1 || records > 1 {
            return Err(
                "more than one CSV record in the record (a line break outside quotes)".into(),
            );
        }
        if records == 0 {
            return Err("unterminated quoted field".into());
        }
        Ok(())
    }

    /// Whether `line`, followed by a line break, leaves a quoted field open after a
    /// complete record (the lexical rules of Arrow's CSV reader: a quote opens a
    /// quoted field only at the start of a field; inside, a doubled quote or the
    /// escape character escapes).
    fn leaves_open_quote(&self, line: &[u8]) -> bool {
        #[derive(Clone, Copy, PartialEq)]
        enum S {
            FieldStart,
            Unquoted,
            Quoted,
            QuotedEscape,
            QuoteInQuoted,
        }
        let mut s = S::FieldStart;
        let mut records_ended = false;
        for &b in line {
            let newline = b == b'\n' || b == b'\r';
            s = match s {
                S::FieldStart | S::Unquoted | S::QuoteInQuoted if newline => {
                    records_ended = true;
                    S::FieldStart
                }
                S::FieldStart if b == self.quote => S::Quoted,
                S::QuoteInQuoted if b == self.quote => S::Quoted,
                S::FieldStart | S::Unquoted | S::QuoteInQuoted if b == self.delimiter => {
                    S::FieldStart
                }
                S::FieldStart | S::Unquoted | S::QuoteInQuoted => S::Unquoted,
                S::Quoted if Some(b) == self.escape => S::QuotedEscape,
                S::Quoted if b == self.quote => S::QuoteInQuoted,
                S::Quoted | S::QuotedEscape => S::Quoted,
            };
        }
        records_ended && matches!(s, S::Quoted | S::QuotedEscape)
    }

    /// Feeds known-good records and flushes them.
    fn decode_good(&self, lines: &[(u32, &str)]) -> Result<RecordBatch> {
        let mut decoder = self.arrow_decoder(lines.len());
        for (_, line) in lines {
            self.feed(&mut decoder, line).map_err(|e| {
                EngineError::operator("csv decoder", format!("re-reading a good record: {e}"))
            })?;
        }
        Ok(decoder
            .flush()
            .map_err(|e| EngineError::arrow("flushing the CSV decoder", e))?
            .unwrap_or_else(|| RecordBatch::new_empty(self.text_schema.clone())))
    }
}

/// Arrow's CSV error as a reason.
fn csv_error(e: arrow::error::ArrowError) -> String {
    let msg = e.to_string();
    if msg.contains("incorrect number of fields") {
        if let Some((_, counts)) = msg.split_once("expected ") {
            if let Some((expected, got)) = counts.split_once(" got ") {
                return format!("wrong number of columns: expected {expected}, got {got}");
            }
        }
    }
    format!(
        "invalid CSV: {}",
        msg.strip_prefix("Csv error: ").unwrap_or(&msg)
    )
}

impl TextDecoder for CsvDecoder {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn decode_values(&self, values: &BinaryArray) -> Result<RowsDecoded> {
        let mut errors = Vec::new();
        let mut lines: Vec<(u32, &str)> = Vec::with_capacity(values.len());
        for i in 0..values.len() {
            match check_record(values, i, self.max_record_bytes, true, true) {
                Check::Blank => {}
                Check::Bad(reason) => errors.push(RowError { row: i, reason }),
                Check::Text(text) => lines.push((i as u32, text)),
            }
        }

        // Feed records until one fails; decode the good run before it again with a
        // fresh decoder (the failed one is mid-record) and go on after it. Every record
        // is fed at most twice.
        let mut pieces = Vec::new();
        let mut rows: Vec<u32> = Vec::with_capacity(lines.len());
        let mut start = 0;
        while start < lines.len() {
            let mut decoder = self.arrow_decoder(lines.len() - start);
            let mut failure = None;
            for (k, (_, line)) in lines.iter().enumerate().skip(start) {
                if let Err(reason) = self.feed(&mut decoder, line) {
                    failure = Some((k, reason));
                    break;
                }
            }
            match failure {
                None => {
                    if let Some(batch) = decoder
                        .flush()
                        .map_err(|e| EngineError::arrow("flushing the CSV decoder", e))?
                    {
                        pieces.push(batch);
                    }
                    rows.extend(lines[start..].iter().map(|(r, _)| *r));
                    start = lines.len();
                }
                Some((k, reason)) => {
                    errors.push(RowError {
                        row: lines[k].0 as usize,
                        reason,
                    });
                    if k > start {
                        pieces.push(self.decode_good(&lines[start..k])?);
                        rows.extend(lines[start..k].iter().map(|(r, _)| *r));
                    }
                    start = k + 1;
                }
            }
        }
        let texts = match pieces.len() {
            0 => RecordBatch::new_empty(self.text_schema.clone()),
            1 => pieces.swap_remove(0),
            _ => concat_batches(&self.text_schema, &pieces)
                .map_err(|e| EngineError::arrow("concatenating decoded CSV", e))?,
        };
        finish_text_batch(&self.schema, texts.columns().to_vec(), rows, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    #[test]
    fn options() {
        let s = schema(&[("a", DataType::Utf8, true), ("b", DataType::Float64, true)]);
        let d = decode(
            "csv",
            json!({"type": "csv", "delimiter": ";", "quote": "'"}),
            Some(s.clone()),
            &[b"x;1.5", b"'y;z';2", b"w;"],
        );
        assert!(d.dead_letters.is_empty(), "{:?}", d.dead_letters);
        assert_eq!(column_strings(&d.batch, "a"), vec!["x", "y;z", "w"]);
        assert_eq!(column_strings(&d.batch, "b"), vec!["1.5", "2.0", "null"]);

        let err = build(&json!({"delimiter": ";;"}), Some(s.clone()))
            .err()
            .expect("two chars");
        assert_eq!(err.path, "/delimiter");
        let err = build(&json!({"quote": ","}), Some(s.clone()))
            .err()
            .expect("quote = delimiter");
        assert_eq!(err.path, "/quote");
        let err = build(&json!({"sep": ","}), Some(s)).err().expect("unknown");
        assert_eq!(err.path, "/sep");
        assert!(build(&Value::Null, None).is_err());
    }

    #[test]
    fn a_record_ending_in_an_open_quote_after_a_line_break_is_dead_lettered() {
        // Found by `garbage_is_conserved`: `,,\n,"` completes one record and leaves the
        // decoder inside a quoted field, which used to fail the whole batch's flush.
        let s = schema(&[("a", DataType::Utf8, true), ("b", DataType::Utf8, true)]);
        let d = decode(
            "csv",
            json!({"type": "csv"}),
            Some(s),
            &[b"x,1", b",\n,\"", b"y,2", b"\"q\"\"\",3"],
        );
        assert_eq!(d.dead_letters.len(), 1, "{:?}", d.dead_letters);
        assert!(
            d.dead_letters[0].reason.contains("unterminated"),
            "{:?}",
            d.dead_letters
        );
        assert_eq!(column_strings(&d.batch, "a"), vec!["x", "y", "q\""]);
    }

    #[test]
    fn embedded_line_break() {
        let s = schema(&[("a", DataType::Utf8, true), ("b", DataType::Utf8, true)]);
        let d = decode(
            "csv",
            Value::Null,
            Some(s),
            &[b"1,2\n3,4", b"\"multi\nline\",ok", b"5,6"],
        );
        assert_eq!(column_strings(&d.batch, "a"), vec!["multi\nline", "5"]);
        assert_eq!(
            letters(&d),
            vec![(
                0,
                "more than one CSV record in the record (a line break outside quotes)".to_string()
            )]
        );
    }
}
