//! Encoding record batches as text for the sinks: JSON lines, CSV (with a header) and
//! pretty tables. Timestamps are written as RFC 3339 strings: a timestamp with a time
//! zone with its offset (`2024-01-01T10:00:00+01:00`), one without a time zone is taken
//! as UTC and written with `Z` (`2024-01-01T00:00:00.250Z`); fractional seconds are
//! written only when not zero, with 3, 6 or 9 digits.

use std::io::Write;

use arrow::datatypes::Schema;
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
}

/// Writes batches to `out` in one [`TextFormat`], remembering whether the CSV header
/// has been written.
#[derive(Debug)]
pub(crate) struct BatchEncoder {
    format: TextFormat,
    header_written: bool,
}

impl BatchEncoder {
    /// A new encoder; the CSV header goes before the first batch.
    pub(crate) fn new(format: TextFormat) -> Self {
        BatchEncoder {
            format,
            header_written: false,
        }
    }

    /// Writes `batch` to `out`. A CSV header is written once, before the first batch
    /// (even one with no rows).
    pub(crate) fn write<W: Write>(&mut self, out: &mut W, batch: &RecordBatch) -> Result<()> {
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
