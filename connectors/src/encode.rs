//! Encoding record batches as text for the sinks: JSON lines, CSV (with a header) and
//! pretty tables. Timestamps are written as RFC 3339 strings: a timestamp with a time
//! zone with its offset (`2024-01-01T10:00:00+01:00`), one without a time zone is taken
//! as UTC and written with `Z` (`2024-01-01T00:00:00.250Z`); fractional seconds are
//! written only when not zero, with 3, 6 or 9 digits.

use std::io::Write;

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use schemars::JsonSchema;
use serde::Deserialize;
use weir_engine::error::{EngineError, Result};

/// chrono format of timestamps without a time zone (taken as UTC).
const TS_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.fZ";
/// chrono format of timestamps with a time zone.
const TS_TZ_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.f%:z";

/// A text format of sink output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TextFormat {
    /// One JSON object per line; null fields are left out.
    #[default]
    Jsonl,
    /// Comma-separated values with a header line.
    Csv,
    /// A pretty-printed table per batch (stdout only).
    Table,
}

impl TextFormat {
    /// The YAML name.
    pub fn name(self) -> &'static str {
        match self {
            TextFormat::Jsonl => "jsonl",
            TextFormat::Csv => "csv",
            TextFormat::Table => "table",
        }
    }

    /// Checks at build time that rows of `schema` can be written in this format: CSV
    /// has no place for nested values (structs, lists). The error is for the sink's
    /// `format` key.
    pub fn check_schema(self, schema: &arrow::datatypes::Schema) -> Result<(), String> {
        if self != TextFormat::Csv {
            return Ok(());
        }
        match schema.fields().iter().find(|f| f.data_type().is_nested()) {
            Some(f) => Err(format!(
                "CSV cannot hold the nested field `{}` ({}): write `format: jsonl`, or \
                 select its parts into plain columns first",
                f.name(),
                weir_engine::spec::field_type_text(f.data_type(), false)
            )),
            None => Ok(()),
        }
    }
}

/// A timestamp column without a time zone as UTC instants at `unit`, one per value.
fn naive_datetime(unit: TimeUnit, v: i64) -> Option<chrono::NaiveDateTime> {
    use arrow::temporal_conversions as tc;
    match unit {
        TimeUnit::Second => tc::timestamp_s_to_datetime(v),
        TimeUnit::Millisecond => tc::timestamp_ms_to_datetime(v),
        TimeUnit::Microsecond => tc::timestamp_us_to_datetime(v),
        TimeUnit::Nanosecond => tc::timestamp_ns_to_datetime(v),
    }
}

/// Writes batches to `out` in one [`TextFormat`], remembering whether the CSV header
/// has been written.
#[derive(Debug)]
pub(crate) struct BatchEncoder {
    format: TextFormat,
    header_written: bool,
    /// [`TS_FORMAT`], parsed once: Arrow's writers would parse the format string again
    /// for every value, which dominated output-heavy jobs.
    ts_items: Vec<chrono::format::Item<'static>>,
}

impl BatchEncoder {
    /// A new encoder; the CSV header goes before the first batch.
    pub(crate) fn new(format: TextFormat) -> Self {
        BatchEncoder {
            format,
            header_written: false,
            ts_items: chrono::format::StrftimeItems::new(TS_FORMAT)
                .parse_to_owned()
                .unwrap_or_default(),
        }
    }

    /// `batch` with every time-zone-less timestamp column formatted as text with the
    /// pre-parsed [`TS_FORMAT`] (the same text Arrow's writers would produce).
    fn timestamps_as_text(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let schema = batch.schema();
        if !schema
            .fields()
            .iter()
            .any(|f| matches!(f.data_type(), DataType::Timestamp(_, None)))
        {
            return Ok(batch.clone());
        }
        let mut fields = Vec::with_capacity(schema.fields().len());
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns());
        let mut text = String::new();
        for (f, col) in schema.fields().iter().zip(batch.columns()) {
            let DataType::Timestamp(unit, None) = f.data_type() else {
                fields.push(f.as_ref().clone());
                columns.push(col.clone());
                continue;
            };
            let values = arrow::compute::cast(col, &DataType::Int64)
                .map_err(|e| EngineError::arrow("formatting timestamps", e))?;
            let values = values.as_primitive::<arrow::datatypes::Int64Type>();
            let mut out = StringBuilder::with_capacity(values.len(), values.len() * 24);
            for v in values.iter() {
                match v {
                    None => out.append_null(),
                    Some(v) => {
                        text.clear();
                        match naive_datetime(*unit, v) {
                            Some(dt) => {
                                use std::fmt::Write as _;
                                let _ =
                                    write!(text, "{}", dt.format_with_items(self.ts_items.iter()));
                            }
                            None => text.push_str(&v.to_string()),
                        }
                        out.append_value(&text);
                    }
                }
            }
            fields.push(Field::new(f.name(), DataType::Utf8, f.is_nullable()));
            columns.push(Arc::new(out.finish()));
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
            .map_err(|e| EngineError::arrow("formatting timestamps", e))
    }

    /// An encoder that never writes a CSV header (one message per row).
    #[cfg_attr(not(feature = "kafka"), allow(dead_code))]
    pub(crate) fn without_header(format: TextFormat) -> Self {
        BatchEncoder {
            header_written: true,
            ..BatchEncoder::new(format)
        }
    }

    /// Writes `batch` to `out`. A CSV header is written once, before the first batch
    /// (even one with no rows).
    pub(crate) fn write<W: Write>(&mut self, out: &mut W, batch: &RecordBatch) -> Result<()> {
        let text_ts;
        let batch = if self.format != TextFormat::Table && !self.ts_items.is_empty() {
            text_ts = self.timestamps_as_text(batch)?;
            &text_ts
        } else {
            batch
        };
        match self.format {
            TextFormat::Jsonl => {
                if batch.num_rows() == 0 {
                    return Ok(());
                }
                let mut w = arrow::json::WriterBuilder::new()
                    .with_explicit_nulls(false)
                    .with_timestamp_format(TS_FORMAT.to_string())
                    .with_timestamp_tz_format(TS_TZ_FORMAT.to_string())
                    .build::<_, arrow::json::writer::LineDelimited>(out);
                w.write(batch)
                    .and_then(|_| w.finish())
                    .map_err(|e| EngineError::arrow("writing JSON lines", e))
            }
            TextFormat::Csv => {
                if batch.num_rows() == 0 && self.header_written {
                    return Ok(());
                }
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(!self.header_written)
                    .with_timestamp_format(TS_FORMAT.to_string())
                    .with_timestamp_tz_format(TS_TZ_FORMAT.to_string())
                    .build(out);
                w.write(batch)
                    .map_err(|e| EngineError::arrow("writing CSV", e))?;
                self.header_written = true;
                Ok(())
            }
            TextFormat::Table => {
                if batch.num_rows() == 0 {
                    return Ok(());
                }
                let table = arrow::util::pretty::pretty_format_batches(std::slice::from_ref(batch))
                    .map_err(|e| EngineError::arrow("formatting a table", e))?;
                writeln!(out, "{table}").map_err(|e| EngineError::io("writing", "<output>", e))
            }
        }
    }

    /// Writes what an output with no rows still needs: the CSV header.
    pub(crate) fn finish<W: Write>(&mut self, out: &mut W, schema: &Schema) -> Result<()> {
        if self.format == TextFormat::Csv && !self.header_written {
            let empty = RecordBatch::new_empty(std::sync::Arc::new(schema.clone()));
            self.write(out, &empty)?;
        }
        Ok(())
    }
}
