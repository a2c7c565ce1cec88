//! Text columns to typed columns, for the text formats (`csv`, `regex`): each column is
//! converted with one cast kernel; the rows whose value does not convert are found with
//! null-mask kernels and only they are looked at one by one, to write their reasons.

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, RecordBatchOptions, StringArray};
use arrow::compute::kernels::boolean::{and, is_not_null, is_null};
use arrow::compute::kernels::zip::zip;
use arrow::compute::{can_cast_types, cast, filter};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use weir_engine::registry::FieldError;
use weir_engine::{EngineError, Result};

use super::{RowError, RowsDecoded};

/// Fails at build time for a field that no text can be cast to.
pub(crate) fn check_castable(schema: &SchemaRef, format: &str) -> Result<(), FieldError> {
    for f in schema.fields() {
        if !can_cast_types(&DataType::Utf8, f.data_type()) {
            return Err(FieldError::here(format!(
                "the {format} format cannot read field \"{}\" of type {} from text",
                f.name(),
                f.data_type()
            )));
        }
    }
    Ok(())
}

/// `value` for a message, cut at 64 characters.
fn shorten(value: &str) -> String {
    match value.char_indices().nth(64) {
        Some((cut, _)) => format!("{}…", &value[..cut]),
        None => value.to_string(),
    }
}

fn arrow_err(what: &'static str) -> impl Fn(arrow::error::ArrowError) -> EngineError {
    move |e| EngineError::arrow(what, e)
}

/// Converts one text column to `target`. Returns the converted column and, if some
/// non-null texts did not convert, the mask of those rows.
fn convert(text: &ArrayRef, target: &DataType) -> Result<(ArrayRef, Option<BooleanArray>)> {
    if target == &DataType::Utf8 {
        return Ok((text.clone(), None));
    }
    let mut converted = cast(text, target).map_err(arrow_err("converting text"))?;
    let failed = |converted: &ArrayRef| -> Result<BooleanArray> {
        and(
            &is_not_null(text.as_ref()).map_err(arrow_err("converting text"))?,
            &is_null(converted.as_ref()).map_err(arrow_err("converting text"))?,
        )
        .map_err(arrow_err("converting text"))
    };
    let mut failures = failed(&converted)?;
    if let (DataType::Timestamp(_, tz), true) = (target, failures.true_count() > 0) {
        // Not a date-time string: try integer epoch milliseconds.
        let ints = cast(text, &DataType::Int64).map_err(arrow_err("converting text"))?;
        let millis = cast(
            &ints,
            &DataType::Timestamp(TimeUnit::Millisecond, tz.clone()),
        )
        .and_then(|m| cast(&m, target))
        .map_err(arrow_err("converting epoch milliseconds"))?;
        converted = zip(&failures, &millis, &converted).map_err(arrow_err("converting text"))?;
        failures = failed(&converted)?;
    }
    let failures = (failures.true_count() > 0).then_some(failures);
    Ok((converted, failures))
}

/// Converts text columns (one per field of `schema`, all `Utf8`, one row per entry of
/// `rows`) to a batch of `schema`. Rows with a value that does not convert, or a null
/// in a non-nullable field, become errors (the first failing field names the reason);
/// `errors` may already hold errors of other records and comes back sorted by row.
pub(crate) fn finish_text_batch(
    schema: &SchemaRef,
    texts: Vec<ArrayRef>,
    mut rows: Vec<u32>,
    mut errors: Vec<RowError>,
) -> Result<RowsDecoded> {
    let n = rows.len();
    let mut bad: Option<Vec<Option<String>>> = None;
    let mut columns = Vec::with_capacity(texts.len());
    for (field, text) in schema.fields().iter().zip(&texts) {
        let (column, failures) = convert(text, field.data_type())?;
        if let Some(failures) = failures {
            let slots = bad.get_or_insert_with(|| vec![None; n]);
            let strings = text.as_any().downcast_ref::<StringArray>();
            for row in failures.values().set_indices() {
                if slots[row].is_none() {
                    let value = strings.map(|s| s.value(row)).unwrap_or_default();
                    let wanted = match field.data_type() {
                        DataType::Timestamp(..) => {
                            "a timestamp (RFC 3339 or epoch milliseconds)".to_string()
                        }
                        t => t.to_string(),
                    };
                    slots[row] = Some(format!(
                        "invalid value for field \"{}\": cannot read \"{}\" as {wanted}",
                        field.name(),
                        shorten(value)
                    ));
                }
            }
        }
        if !field.is_nullable() && column.null_count() > 0 {
            let slots = bad.get_or_insert_with(|| vec![None; n]);
            if let Some(nulls) = column.logical_nulls() {
                for row in (0..n).filter(|&r| nulls.is_null(r)) {
                    if slots[row].is_none() {
                        slots[row] = Some(format!("missing value for field \"{}\"", field.name()));
                    }
                }
            }
        }
        columns.push(column);
    }
    if let Some(slots) = bad {
        let keep: BooleanArray = slots.iter().map(|s| Some(s.is_none())).collect();
        columns = columns
            .iter()
            .map(|c| filter(c, &keep))
            .collect::<std::result::Result<_, _>>()
            .map_err(arrow_err("dropping records that did not convert"))?;
        let mut kept = Vec::with_capacity(keep.true_count());
        for (row, slot) in rows.iter().zip(slots) {
            match slot {
                None => kept.push(*row),
                Some(reason) => errors.push(RowError {
                    row: *row as usize,
                    reason,
                }),
            }
        }
        rows = kept;
    }
    errors.sort_by_key(|e| e.row);
    let options = RecordBatchOptions::new().with_row_count(Some(rows.len()));
    let batch = RecordBatch::try_new_with_options(schema.clone(), columns, &options)
        .map_err(arrow_err("building a decoded batch"))?;
    Ok(RowsDecoded {
        batch,
        rows,
        errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::test_util::{column_strings, schema};
    use std::sync::Arc;

    #[test]
    fn converts_and_reports() {
        let s = schema(&[
            ("n", DataType::Int32, true),
            ("t", DataType::Timestamp(TimeUnit::Nanosecond, None), false),
            ("b", DataType::Boolean, true),
        ]);
        let n: ArrayRef = Arc::new(StringArray::from(vec![
            Some("1"),
            Some("x"),
            None,
            Some("4"),
        ]));
        let t: ArrayRef = Arc::new(StringArray::from(vec![
            Some("2024-05-01T12:00:00Z"),
            Some("1714564800001"),
            Some("1714564800002"),
            None,
        ]));
        let b: ArrayRef = Arc::new(StringArray::from(vec![
            Some("true"),
            Some("false"),
            Some("maybe"),
            Some("false"),
        ]));
        let out = finish_text_batch(&s, vec![n, t, b], vec![10, 11, 12, 13], Vec::new())
            .expect("converts");
        assert_eq!(out.rows, vec![10]);
        assert_eq!(column_strings(&out.batch, "t"), vec!["2024-05-01T12:00:00"]);
        let reasons: Vec<(usize, &str)> = out
            .errors
            .iter()
            .map(|e| (e.row, e.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            vec![
                (
                    11,
                    "invalid value for field \"n\": cannot read \"x\" as Int32"
                ),
                (
                    12,
                    "invalid value for field \"b\": cannot read \"maybe\" as Boolean"
                ),
                (13, "missing value for field \"t\""),
            ]
        );
    }
}
