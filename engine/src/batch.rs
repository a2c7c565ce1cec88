//! Helpers for Arrow batches on the data plane: splitting a batch by target subtask for
//! hash partitioning, and concatenating small batches.

use arrow::array::UInt32Array;
use arrow::record_batch::RecordBatch;

use crate::error::{EngineError, Result};

/// Splits `batch` into one batch per target, where `targets[row]` is the target index
/// `< n`. Targets that receive no row get `None`. Row order within a target is kept.
pub fn split_by_target(
    batch: &RecordBatch,
    targets: &[usize],
    n: usize,
) -> Result<Vec<Option<RecordBatch>>> {
    if n == 1 {
        return Ok(vec![(batch.num_rows() > 0).then(|| batch.clone())]);
    }
    let mut idx: Vec<Vec<u32>> = vec![Vec::new(); n];
    for (row, &t) in targets.iter().enumerate() {
        if let Some(v) = idx.get_mut(t) {
            v.push(row as u32);
        }
    }
    idx.into_iter()
        .map(|rows| {
            if rows.is_empty() {
                Ok(None)
            } else if rows.len() == batch.num_rows() {
                Ok(Some(batch.clone()))
            } else {
                let indices = UInt32Array::from(rows);
                arrow::compute::take_record_batch(batch, &indices)
                    .map(Some)
                    .map_err(|e| EngineError::arrow("partitioning a batch", e))
            }
        })
        .collect()
}

/// Concatenates batches of one schema into one.
pub fn concat(batches: &[RecordBatch]) -> Result<Option<RecordBatch>> {
    match batches {
        [] => Ok(None),
        [one] => Ok(Some(one.clone())),
        many => arrow::compute::concat_batches(&many[0].schema(), many)
            .map(Some)
            .map_err(|e| EngineError::arrow("concatenating batches", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    #[test]
    fn split_keeps_every_row_once_in_order() {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let b = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from_iter_values(0..10))])
            .expect("batch");
        let targets: Vec<usize> = (0..10).map(|i| i % 3).collect();
        let parts = split_by_target(&b, &targets, 4).expect("split");
        assert!(parts[3].is_none());
        let mut seen = Vec::new();
        for (t, p) in parts.iter().enumerate().take(3) {
            let p = p.as_ref().expect("rows");
            let col = p
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("int64");
            let v: Vec<i64> = col.iter().flatten().collect();
            assert!(v.windows(2).all(|w| w[0] < w[1]));
            assert!(v.iter().all(|x| (*x as usize) % 3 == t));
            seen.extend(v);
        }
        seen.sort();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
    }
}
