//! Bad rows in expression steps (`filter`, `select`): a SQL expression that fails at run
//! time on some rows (integer division by zero, `CAST('x' AS INT)`, …) must not stop the
//! job (DESIGN §8). The fast path is one evaluation per batch; only when it fails with an
//! expression error is the batch bisected, recursively, until the failing rows are
//! isolated. The good rows go on, in their order; every failing row becomes one dead
//! letter on the `dead_letter` side output, which the graph builder routes to the job's
//! dead-letter sink and the runtime counts.

use arrow::compute::concat_batches;
use arrow::datatypes::SchemaRef;
use arrow::json::writer::LineDelimited;
use arrow::json::WriterBuilder;
use arrow::record_batch::RecordBatch;
use weir_engine::graph::DEAD_LETTER_OUTPUT;
use weir_engine::operator::Collector;
use weir_engine::source::{dead_letter_schema, dead_letters_to_batch, DeadLetter};
use weir_engine::{EngineError, Result};

/// The side outputs of an expression step: `dead_letter`.
pub(super) fn side_outputs() -> Vec<(String, SchemaRef)> {
    vec![(DEAD_LETTER_OUTPUT.to_string(), dead_letter_schema())]
}

/// Per-subtask bookkeeping of an expression step's bad rows.
///
/// The dead letters' `position` is a running row counter of the subtask: the row's index
/// among all rows this subtask has received (counted from 0 when it started; not carried
/// across restarts), as for the `parse` step.
#[derive(Debug, Clone, Default)]
pub(super) struct RowErrors {
    /// Rows received before the current batch.
    seen: u64,
}

impl RowErrors {
    /// Runs `eval` on `batch` and emits its result on the main output of `out`. If that
    /// fails with an expression error, the failing rows are isolated by bisection: the
    /// results of the good rows are emitted (one batch of `schema`, in input order) and
    /// every failing row is emitted as a dead letter of step `step`. Any other error
    /// (and an expression error on a batch of the wrong shape, which is no row's fault)
    /// is returned.
    pub(super) fn process(
        &mut self,
        step: &str,
        batch: &RecordBatch,
        expected_columns: usize,
        schema: &SchemaRef,
        out: &mut Collector,
        mut eval: impl FnMut(&RecordBatch) -> Result<RecordBatch>,
    ) -> Result<()> {
        let base = self.seen;
        self.seen += batch.num_rows() as u64;
        let first = match eval(batch) {
            Ok(result) => {
                out.emit(result);
                return Ok(());
            }
            Err(e) => e,
        };
        if !isolatable(&first) || batch.num_rows() == 0 || batch.num_columns() != expected_columns {
            return Err(first);
        }
        let mut good = Vec::new();
        let mut bad = Vec::new();
        if batch.num_rows() == 1 {
            bad.push((0, first));
        } else {
            let half = batch.num_rows() / 2;
            bisect(batch, 0, half, &mut eval, &mut good, &mut bad)?;
            bisect(
                batch,
                half,
                batch.num_rows() - half,
                &mut eval,
                &mut good,
                &mut bad,
            )?;
        }
        if !good.is_empty() {
            let merged = concat_batches(schema, &good)
                .map_err(|e| EngineError::arrow("joining the rows that evaluated", e))?;
            out.emit(merged);
        }
        let letters: Vec<DeadLetter> = bad
            .into_iter()
            .map(|(row, e)| dead_letter(step, batch, row, base, &e))
            .collect();
        out.emit_side(DEAD_LETTER_OUTPUT, dead_letters_to_batch(&letters)?);
        Ok(())
    }
}

/// Whether an error can be caused by the values of some rows (and so is worth
/// isolating): the expression errors of [`weir_engine::expr::SqlExpr`].
fn isolatable(e: &EngineError) -> bool {
    matches!(e, EngineError::Expr { .. })
}

/// Evaluates rows `offset..offset + len` of `batch`, halving failing ranges down to single
/// rows. Results go to `good` and failing rows (index in `batch`, error) to `bad`, both in
/// row order.
fn bisect(
    batch: &RecordBatch,
    offset: usize,
    len: usize,
    eval: &mut impl FnMut(&RecordBatch) -> Result<RecordBatch>,
    good: &mut Vec<RecordBatch>,
    bad: &mut Vec<(usize, EngineError)>,
) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    match eval(&batch.slice(offset, len)) {
        Ok(result) => good.push(result),
        Err(e) if !isolatable(&e) => return Err(e),
        Err(e) if len == 1 => bad.push((offset, e)),
        Err(_) => {
            let half = len / 2;
            bisect(batch, offset, half, eval, good, bad)?;
            bisect(batch, offset + half, len - half, eval, good, bad)?;
        }
    }
    Ok(())
}

/// The dead letter of row `row` of `batch`: the error naming the step and expression,
/// source `step STEP`, position `base + row` (the subtask's running row counter), and
/// the row as one JSON object (nulls written out).
fn dead_letter(
    step: &str,
    batch: &RecordBatch,
    row: usize,
    base: u64,
    e: &EngineError,
) -> DeadLetter {
    row_dead_letter(
        step,
        batch,
        row,
        base + row as u64,
        "expression",
        format!("step `{step}`: {e}"),
    )
}

/// The dead letter of row `row` of `batch`, rejected by step `step` for `reason`: the
/// row as one JSON object for its payload (if it cannot be written so, the reason says
/// why and the payload is empty).
pub(super) fn row_dead_letter(
    step: &str,
    batch: &RecordBatch,
    row: usize,
    position: u64,
    kind: &'static str,
    mut reason: String,
) -> DeadLetter {
    let payload = match row_json(&batch.slice(row, 1)) {
        Ok(json) => json,
        Err(err) => {
            reason.push_str(&format!(" (the row could not be written as JSON: {err})"));
            Vec::new()
        }
    };
    DeadLetter {
        reason,
        source: format!("step {step}"),
        position,
        payload,
        kind,
        step: step.to_string(),
    }
}

/// A one-row batch as one JSON object, without the line break.
fn row_json(row: &RecordBatch) -> std::result::Result<Vec<u8>, arrow::error::ArrowError> {
    let mut writer = WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, LineDelimited>(Vec::new());
    writer.write(row)?;
    writer.finish()?;
    let mut bytes = writer.into_inner();
    while bytes.last() == Some(&b'\n') {
        bytes.pop();
    }
    Ok(bytes)
}
