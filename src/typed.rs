//! Typed row-level operators for the Rust API: `map`, `flat_map` and `filter_rows` over
//! the user's serde types. Batches are converted to and from rows with `serde_arrow`;
//! this is per-row work by nature, so prefer SQL `filter`/`select` on hot paths.

use std::marker::PhantomData;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_arrow::schema::{SchemaLike, TracingOptions};
use weir_engine::operator::{Collector, Operator, OperatorContext};
use weir_engine::{EngineError, Result};

/// The Arrow schema of a serde type, with strings as `Utf8` (not `LargeUtf8`).
pub fn typed_schema<T: Serialize + DeserializeOwned>() -> std::result::Result<SchemaRef, String> {
    let fields = Vec::<FieldRef>::from_type::<T>(TracingOptions::default())
        .map_err(|e| format!("cannot derive an Arrow schema from the row type: {e}"))?;
    let fields: Vec<Field> = fields
        .iter()
        .map(|f| {
            let dt = match f.data_type() {
                DataType::LargeUtf8 => DataType::Utf8,
                DataType::LargeBinary => DataType::Binary,
                other => other.clone(),
            };
            Field::new(f.name(), dt, f.is_nullable())
        })
        .collect();
    Ok(Arc::new(Schema::new(fields)))
}

fn rows_of<I: DeserializeOwned>(op: &str, batch: &RecordBatch) -> Result<Vec<I>> {
    serde_arrow::from_record_batch::<Vec<I>>(batch)
        .map_err(|e| EngineError::operator(op, format!("cannot read rows into the row type: {e}")))
}

/// A typed flat map: each input row gives zero or more output rows.
pub struct FlatMapRows<I, O, F> {
    name: String,
    schema: SchemaRef,
    fields: Vec<FieldRef>,
    f: F,
    _types: PhantomData<fn(I) -> O>,
}

impl<I, O, F> FlatMapRows<I, O, F> {
    /// An operator writing rows of `schema` (from [`typed_schema`]).
    pub fn new(name: &str, schema: SchemaRef, f: F) -> Self {
        FlatMapRows {
            name: name.into(),
            fields: schema.fields().iter().cloned().collect(),
            schema,
            f,
            _types: PhantomData,
        }
    }
}

impl<I, O, F> Operator for FlatMapRows<I, O, F>
where
    I: DeserializeOwned,
    O: Serialize,
    F: Fn(I) -> Box<dyn Iterator<Item = O>> + Send,
{
    fn process_batch(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        _ctx: &mut OperatorContext,
        out: &mut Collector,
    ) -> Result<()> {
        let rows: Vec<I> = rows_of(&self.name, &batch)?;
        let outs: Vec<O> = rows.into_iter().flat_map(|r| (self.f)(r)).collect();
        if outs.is_empty() {
            return Ok(());
        }
        let b = serde_arrow::to_record_batch(&self.fields, &outs).map_err(|e| {
            EngineError::operator(&self.name, format!("cannot write output rows: {e}"))
        })?;
        let b = RecordBatch::try_new(self.schema.clone(), b.columns().to_vec())
            .map_err(|e| EngineError::arrow(format!("output of {}", self.name), e))?;
        out.emit(b);
        Ok(())
    }
}

/// A typed filter: keeps the rows for which the predicate holds.
pub struct FilterRows<I, F> {
    name: String,
    f: F,
    _types: PhantomData<fn(I)>,
}

impl<I, F> FilterRows<I, F> {
    /// A filter with predicate `f`.
    pub fn new(name: &str, f: F) -> Self {
        FilterRows {
            name: name.into(),
            f,
            _types: PhantomData,
        }
    }
}

impl<I, F> Operator for FilterRows<I, F>
where
    I: DeserializeOwned,
    F: Fn(&I) -> bool + Send,
{
    fn process_batch(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        _ctx: &mut OperatorContext,
        out: &mut Collector,
    ) -> Result<()> {
        let rows: Vec<I> = rows_of(&self.name, &batch)?;
        let mask: arrow::array::BooleanArray = rows.iter().map(|r| Some((self.f)(r))).collect();
        let b = arrow::compute::filter_record_batch(&batch, &mask)
            .map_err(|e| EngineError::arrow(format!("filter {}", self.name), e))?;
        out.emit(b);
        Ok(())
    }
}
