//! The `table` step: materialises per key the latest row, or running aggregates without
//! a window, in keyed state (memory or RocksDB, checkpointed like any state), and emits
//! the key's new value each time it changes (a changelog). Its state is **queryable**
//! while the job runs: `GET /api/jobs/{job}/state/{step}?key=…` on the job's HTTP
//! endpoint reads one key, `?prefix=…&limit=…` scans.
//!
//! ```yaml
//! steps:
//!   last_price: { from: ticks, table: { key: [symbol] } }     # the latest row per key
//!   stats:
//!     from: ticks
//!     table:
//!       key: [symbol]
//!       aggregate:                                           # running, no window
//!         price: "last(price)"
//!         high: "max(price)"
//!         low: "min(price)"
//!         notional: "sum(price * volume)"
//!         volume: "sum(volume)"
//!       derive: { vwap: "notional / volume" }                # over the aggregates
//! ```
//!
//! "Latest" is by event time when the input has an event-time column (a late row does
//! not replace a newer one; ties go to the later arrival), else by arrival. Aggregates
//! are the window step's (`count`, `sum`, `min`, `max`, `avg`, `first`, `last`,
//! `count(distinct …)`, and those registered in Rust); `derive` adds SQL expressions over
//! the result. Each batch reads and writes the state of the keys it touches once.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
use serde_json::{json, Value};
use weir_engine::aggregate::ScalarValue;
use weir_engine::error::{EngineError, Result};
use weir_engine::expr::SqlExpr;
use weir_engine::operator::{Collector, Operator, OperatorContext, StateAnswer, StateRead};
use weir_engine::registry::{BuildContext, FieldError, Partitioning, StepBuild, StepFactory};
use weir_engine::state::{hash_key, key_group_for_hash, KeyCodec, StateDescriptor};

use super::key_by::read_keys;
use crate::options::kind;
use crate::window::plan::PlannedAggregate;
use crate::window::{WindowOptions, WindowPlan};
use weir_engine::state::StateAddr;

/// The state holding each key's value.
pub const TABLE_STATE: &str = "table";

/// Factory of the `table` step.
#[derive(Debug, Clone, Copy, Default)]
pub struct TableStep;

enum Mode {
    /// The latest row; the event-time column, if the input has one.
    Latest { time: Option<String> },
    /// Running aggregates.
    Aggregate(Vec<PlannedAggregate>),
}

struct Plan {
    input: SchemaRef,
    /// Keys and aggregates (aggregate mode) or the input (latest), before `derive`.
    base: SchemaRef,
    output: SchemaRef,
    key_columns: Vec<usize>,
    codec: KeyCodec,
    mode: Mode,
    derive: Vec<SqlExpr>,
}

fn op_error(m: impl Into<String>) -> EngineError {
    EngineError::operator("table", m)
}

struct TableOperator {
    plan: Arc<Plan>,
    state: StateDescriptor,
    rows: RowConverter,
    /// Arrival counter (the order of rows without event time).
    seq: i64,
}

impl TableOperator {
    fn new(plan: Arc<Plan>) -> Result<Self> {
        let rows = RowConverter::new(
            plan.input
                .fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )
        .map_err(|e| EngineError::arrow("table: these columns cannot be kept", e))?;
        Ok(TableOperator {
            plan,
            state: StateDescriptor::new(TABLE_STATE),
            rows,
            seq: 0,
        })
    }

    /// Event time (or arrival order) of every row.
    fn times(&mut self, batch: &RecordBatch, field: Option<&str>) -> Result<Vec<i64>> {
        if let Some(f) = field {
            let t = weir_engine::time::event_times_ms(batch, f)?;
            return Ok(t.into_iter().map(|t| t.unwrap_or(i64::MIN)).collect());
        }
        let start = self.seq;
        self.seq += batch.num_rows() as i64;
        Ok((start..self.seq).collect())
    }

    /// Accumulators of a stored state, or fresh ones.
    fn accumulators(
        aggs: &[PlannedAggregate],
        stored: Option<&[u8]>,
    ) -> Result<Vec<Box<dyn weir_engine::aggregate::Accumulator>>> {
        let states: Option<Vec<Vec<u8>>> = match stored {
            Some(b) => {
                Some(postcard::from_bytes(b).map_err(|e| op_error(format!("corrupt state: {e}")))?)
            }
            None => None,
        };
        let mut out = Vec::with_capacity(aggs.len());
        for (i, a) in aggs.iter().enumerate() {
            let mut acc = a.function.create_accumulator(a.argument_type.as_ref())?;
            if let Some(s) = states.as_ref().and_then(|s| s.get(i)) {
                acc.merge_state(s)?;
            }
            out.push(acc);
        }
        Ok(out)
    }

    /// The output rows (before `derive`) of `keys` (encoded) from their stored values.
    fn base_rows(&self, keys: &[&[u8]], values: &[Vec<u8>]) -> Result<RecordBatch> {
        match &self.plan.mode {
            Mode::Latest { .. } => {
                let parser = self.rows.parser();
                let mut rows = Vec::with_capacity(values.len());
                for v in values {
                    let (_, row): (i64, Vec<u8>) = postcard::from_bytes(v)
                        .map_err(|e| op_error(format!("corrupt state: {e}")))?;
                    rows.push(row);
                }
                let columns = self
                    .rows
                    .convert_rows(rows.iter().map(|r| parser.parse(r)))
                    .map_err(|e| EngineError::arrow("table: decoding rows", e))?;
                RecordBatch::try_new(self.plan.base.clone(), columns)
                    .map_err(|e| EngineError::arrow("table", e))
            }
            Mode::Aggregate(aggs) => {
                let mut columns = self.plan.codec.decode(keys.iter().copied())?;
                let mut results: Vec<Vec<ScalarValue>> = vec![Vec::new(); aggs.len()];
                for v in values {
                    let accs = Self::accumulators(aggs, Some(v))?;
                    for (i, acc) in accs.iter().enumerate() {
                        results[i].push(acc.evaluate()?);
                    }
                }
                for (i, vals) in results.into_iter().enumerate() {
                    let a = if vals.is_empty() {
                        arrow::array::new_empty_array(&aggs[i].return_type)
                    } else {
                        ScalarValue::iter_to_array(vals)
                            .map_err(|e| op_error(format!("evaluating aggregates: {e}")))?
                    };
                    columns.push(cast_to(&a, &aggs[i].return_type)?);
                }
                // Key columns decode to their key types; align with the base schema.
                let columns = columns
                    .iter()
                    .zip(self.plan.base.fields())
                    .map(|(c, f)| cast_to(c, f.data_type()))
                    .collect::<Result<Vec<_>>>()?;
                RecordBatch::try_new(self.plan.base.clone(), columns)
                    .map_err(|e| EngineError::arrow("table", e))
            }
        }
    }

    /// Adds the `derive` columns.
    fn finish(&self, base: RecordBatch) -> Result<RecordBatch> {
        if self.plan.derive.is_empty() {
            return Ok(base);
        }
        let mut columns = base.columns().to_vec();
        for (e, f) in self
            .plan
            .derive
            .iter()
            .zip(self.plan.output.fields().iter().skip(base.num_columns()))
        {
            columns.push(cast_to(&e.evaluate(&base)?, f.data_type())?);
        }
        RecordBatch::try_new(self.plan.output.clone(), columns)
            .map_err(|e| EngineError::arrow("table", e))
    }

    /// The value of each key as JSON objects.
    fn values_json(&self, keys: &[&[u8]], values: &[Vec<u8>]) -> Result<Vec<Value>> {
        rows_json(&self.finish(self.base_rows(keys, values)?)?)
    }
}

/// The rows of `batch` as JSON objects.
pub(crate) fn rows_json(batch: &RecordBatch) -> Result<Vec<Value>> {
    let mut w = arrow::json::ArrayWriter::new(Vec::new());
    w.write(batch)
        .map_err(|e| EngineError::arrow("state as JSON", e))?;
    w.finish()
        .map_err(|e| EngineError::arrow("state as JSON", e))?;
    let v: Value = serde_json::from_slice(&w.into_inner())
        .map_err(|e| op_error(format!("state as JSON: {e}")))?;
    Ok(match v {
        Value::Array(a) => a,
        _ => Vec::new(),
    })
}

/// The text form of encoded keys: the value of a one-column key, a JSON array of the
/// values otherwise.
pub(crate) fn key_texts(codec: &KeyCodec, keys: &[&[u8]]) -> Result<Vec<String>> {
    let cols = codec.decode(keys.iter().copied())?;
    let texts: Vec<StringArray> = cols
        .iter()
        .map(|c| {
            let s = arrow::compute::cast(c, &DataType::Utf8)
                .map_err(|e| EngineError::arrow("key as text", e))?;
            s.as_any()
                .downcast_ref::<StringArray>()
                .cloned()
                .ok_or_else(|| op_error("key as text"))
        })
        .collect::<Result<_>>()?;
    Ok((0..keys.len())
        .map(|i| {
            let part = |a: &StringArray| a.is_valid(i).then(|| a.value(i).to_string());
            if texts.len() == 1 {
                part(&texts[0]).unwrap_or_default()
            } else {
                json!(texts.iter().map(part).collect::<Vec<_>>()).to_string()
            }
        })
        .collect())
}

/// Of keys with text forms `texts`, those a scan wants (starting with `prefix`, after
/// `after`), sorted, at most `limit`: (text, index into `texts`).
pub(crate) fn scan_choice(
    texts: Vec<String>,
    prefix: Option<&str>,
    after: Option<&str>,
    limit: usize,
) -> Vec<(String, usize)> {
    let mut chosen: Vec<(String, usize)> = texts
        .into_iter()
        .enumerate()
        .filter(|(_, t)| prefix.is_none_or(|p| t.starts_with(p)))
        .filter(|(_, t)| after.is_none_or(|a| t.as_str() > a))
        .map(|(i, t)| (t, i))
        .collect();
    chosen.sort();
    chosen.truncate(limit);
    chosen
}

fn cast_to(a: &ArrayRef, t: &DataType) -> Result<ArrayRef> {
    if a.data_type() == t {
        return Ok(a.clone());
    }
    arrow::compute::cast(a, t).map_err(|e| EngineError::arrow("table", e))
}

impl Operator for TableOperator {
    fn process_batch(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        ctx: &mut OperatorContext,
        out: &mut Collector,
    ) -> Result<()> {
        let keys = self.plan.codec.encode(&batch)?;
        // Distinct keys in order of first appearance, with their rows.
        let mut index: HashMap<&[u8], usize> = HashMap::new();
        let mut groups: Vec<(&[u8], Vec<u32>)> = Vec::new();
        for (row, key) in keys.iter().enumerate() {
            let g = *index.entry(key).or_insert_with(|| {
                groups.push((key, Vec::new()));
                groups.len() - 1
            });
            groups[g].1.push(row as u32);
        }
        let plan = self.plan.clone();
        let mut changed_keys: Vec<&[u8]> = Vec::with_capacity(groups.len());
        let mut changed_values: Vec<Vec<u8>> = Vec::with_capacity(groups.len());
        match &plan.mode {
            Mode::Latest { time } => {
                let times = self.times(&batch, time.as_deref())?;
                let rows = self
                    .rows
                    .convert_columns(batch.columns())
                    .map_err(|e| EngineError::arrow("table: keeping rows", e))?;
                for (key, members) in &groups {
                    // The latest row of the batch for this key (ties: the later one).
                    let Some(&best) = members.iter().max_by_key(|&&r| (times[r as usize], r))
                    else {
                        continue;
                    };
                    let t = times[best as usize];
                    let kg = key_group_for_hash(hash_key(key), ctx.max_parallelism);
                    if let Some(old) = ctx.state.value_get(&self.state, StateAddr::key(kg, key))? {
                        let (old_t, _): (i64, Vec<u8>) = postcard::from_bytes(&old)
                            .map_err(|e| op_error(format!("corrupt state: {e}")))?;
                        if old_t > t {
                            continue; // a late row does not replace a newer one
                        }
                    }
                    let value =
                        postcard::to_allocvec(&(t, rows.row(best as usize).as_ref().to_vec()))
                            .map_err(|e| op_error(e.to_string()))?;
                    ctx.state
                        .value_put(&self.state, StateAddr::key(kg, key), &value)?;
                    changed_keys.push(key);
                    changed_values.push(value);
                }
            }
            Mode::Aggregate(aggs) => {
                let time_field = weir_engine::time::event_time_column(&plan.input)
                    .map(|i| plan.input.field(i).name().clone());
                let times = self.times(&batch, time_field.as_deref())?;
                let args: Vec<Option<ArrayRef>> = aggs
                    .iter()
                    .map(|a| a.argument.as_ref().map(|e| e.evaluate(&batch)).transpose())
                    .collect::<Result<_>>()?;
                for (key, members) in &groups {
                    let kg = key_group_for_hash(hash_key(key), ctx.max_parallelism);
                    let stored = ctx
                        .state
                        .value_get(&self.state, StateAddr::key(kg, key))?
                        .map(|c| c.into_owned());
                    let mut accs = Self::accumulators(aggs, stored.as_deref())?;
                    let row_times: Vec<i64> = members.iter().map(|&r| times[r as usize]).collect();
                    for (acc, arg) in accs.iter_mut().zip(&args) {
                        acc.update(arg.as_ref(), members, &row_times)?;
                    }
                    let states: Vec<Vec<u8>> =
                        accs.iter().map(|a| a.state()).collect::<Result<_>>()?;
                    let value =
                        postcard::to_allocvec(&states).map_err(|e| op_error(e.to_string()))?;
                    ctx.state
                        .value_put(&self.state, StateAddr::key(kg, key), &value)?;
                    changed_keys.push(key);
                    changed_values.push(value);
                }
            }
        }
        if !changed_keys.is_empty() {
            let base = self.base_rows(&changed_keys, &changed_values)?;
            out.emit(self.finish(base)?);
        }
        Ok(())
    }

    fn queryable_key(&self) -> Option<(SchemaRef, Vec<usize>)> {
        Some((self.plan.input.clone(), self.plan.key_columns.clone()))
    }

    fn read_state(&mut self, read: &StateRead, ctx: &mut OperatorContext) -> Result<StateAnswer> {
        match read {
            StateRead::Get { key, key_group } => {
                let Some(v) = ctx
                    .state
                    .value_get(&self.state, StateAddr::key(*key_group, key))?
                    .map(|c| c.into_owned())
                else {
                    return Ok(StateAnswer::Value(None));
                };
                let mut values = self.values_json(&[key.as_slice()], &[v])?;
                Ok(StateAnswer::Value(values.pop()))
            }
            StateRead::Scan {
                prefix,
                after,
                limit,
            } => {
                let mut keys: Vec<(u16, Vec<u8>)> = Vec::new();
                for k in ctx.state.keys(&self.state)? {
                    let k = k?;
                    keys.push((k.key_group, k.key));
                }
                let texts = key_texts(
                    &self.plan.codec,
                    &keys.iter().map(|(_, k)| k.as_slice()).collect::<Vec<_>>(),
                )?;
                let chosen = scan_choice(texts, prefix.as_deref(), after.as_deref(), *limit);
                let mut ks: Vec<&[u8]> = Vec::with_capacity(chosen.len());
                let mut vs: Vec<Vec<u8>> = Vec::with_capacity(chosen.len());
                for (_, i) in &chosen {
                    let (kg, k) = &keys[*i];
                    if let Some(v) = ctx.state.value_get(&self.state, StateAddr::key(*kg, k))? {
                        vs.push(v.into_owned());
                        ks.push(k);
                    }
                }
                let values = self.values_json(&ks, &vs)?;
                Ok(StateAnswer::Entries(
                    chosen.into_iter().map(|(t, _)| t).zip(values).collect(),
                ))
            }
        }
    }
}

impl StepFactory for TableStep {
    fn name(&self) -> &'static str {
        "table"
    }

    fn options_schema(&self) -> Value {
        json!({
            "description": "Materialises per key the latest row, or running aggregates (no window), in keyed state that can be read over HTTP while the job runs; emits each key's new value when it changes.",
            "type": "object",
            "additionalProperties": false,
            "required": ["key"],
            "properties": {
                "key": {
                    "description": "Key columns.",
                    "oneOf": [
                        {"type": "string"},
                        {"type": "array", "items": {"type": "string"}, "minItems": 1, "uniqueItems": true}
                    ]
                },
                "aggregate": {
                    "description": "Running aggregates by output column, e.g. `high: \"max(price)\"`. Without: the latest row per key.",
                    "type": "object",
                    "additionalProperties": {"type": "string"}
                },
                "derive": {
                    "description": "Columns computed from the result (SQL over the key and aggregate columns, or the row), e.g. `vwap: \"notional / volume\"`.",
                    "type": "object",
                    "additionalProperties": {"type": "string"}
                }
            }
        })
    }

    fn build(
        &self,
        ctx: &BuildContext,
        _name: &str,
        value: &Value,
        inputs: &[SchemaRef],
    ) -> std::result::Result<StepBuild, FieldError> {
        let input = inputs
            .first()
            .ok_or_else(|| FieldError::here("table needs one input"))?;
        let obj = value.as_object().ok_or_else(|| {
            FieldError::here(format!(
                "expected an object with `key`, found {}",
                kind(value)
            ))
        })?;
        let key_value = obj
            .get("key")
            .ok_or_else(|| FieldError::here("table needs `key`"))?;
        let keys = read_keys(key_value, input).map_err(|e| e.under("/key"))?;
        let key_columns: Vec<usize> = keys
            .iter()
            .map(|k| input.index_of(k))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| FieldError::here(e.to_string()))?;
        let codec = KeyCodec::for_columns(input, &key_columns)
            .map_err(|e| FieldError::at("/key", e.to_string()))?;
        let (mode, base) = match obj.get("aggregate") {
            None | Some(Value::Null) => {
                let time = weir_engine::time::event_time_column(input)
                    .map(|i| input.field(i).name().clone());
                (Mode::Latest { time }, input.clone())
            }
            Some(aggregate) => {
                // The window step's aggregates, bound the same way.
                let options = WindowOptions::parse(&json!({
                    "tumbling": "1s", "key": keys, "aggregate": aggregate, "time": "processing",
                }))?;
                let plan = WindowPlan::new(options, input, &ctx.aggregates)?;
                let mut fields: Vec<Field> = key_columns
                    .iter()
                    .map(|&i| input.field(i).as_ref().clone())
                    .collect();
                for a in &plan.aggregates {
                    fields.push(Field::new(&a.output, a.return_type.clone(), true));
                }
                (
                    Mode::Aggregate(plan.aggregates.clone()),
                    Arc::new(Schema::new(fields)) as SchemaRef,
                )
            }
        };
        let mut derive = Vec::new();
        let mut fields: Vec<Field> = base.fields().iter().map(|f| f.as_ref().clone()).collect();
        match obj.get("derive") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (name, sql) in m {
                    let path = format!("/derive/{name}");
                    let Value::String(sql) = sql else {
                        return Err(FieldError::at(path, "expected a SQL expression"));
                    };
                    if base.index_of(name).is_ok() {
                        return Err(FieldError::at(
                            path,
                            format!("`{name}` is already a column; choose another name"),
                        ));
                    }
                    let e = SqlExpr::compile(sql, &base).map_err(|m| FieldError::at(path, m))?;
                    fields.push(Field::new(name, e.data_type().clone(), true));
                    derive.push(e);
                }
            }
            Some(other) => {
                return Err(FieldError::at(
                    "/derive",
                    format!("expected a map of SQL expressions, found {}", kind(other)),
                ))
            }
        }
        for k in obj.keys() {
            if !["key", "aggregate", "derive"].contains(&k.as_str()) {
                return Err(FieldError::at(
                    format!("/{k}"),
                    "unknown option (table takes key, aggregate, derive)",
                ));
            }
        }
        let output: SchemaRef = Arc::new(Schema::new(fields));
        let describe = match &mode {
            Mode::Latest { .. } => format!("table: latest row by {}", keys.join(", ")),
            Mode::Aggregate(a) => format!(
                "table: {} by {}",
                a.iter()
                    .map(|a| a.output.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                keys.join(", ")
            ),
        };
        let plan = Arc::new(Plan {
            input: input.clone(),
            base,
            output: output.clone(),
            key_columns,
            codec,
            mode,
            derive,
        });
        Ok(StepBuild {
            schema: output,
            side_outputs: Vec::new(),
            input_partitioning: Some(Partitioning::Hash(keys.clone())),
            partitioning_per_input: Vec::new(),
            keyed_by: Some(keys),
            describe,
            create: Arc::new(move |_subtask, _parallelism| {
                Ok(Box::new(TableOperator::new(plan.clone())?) as Box<dyn Operator>)
            }),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests fail loudly on purpose.
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array, TimestampMillisecondArray};
    use arrow::datatypes::TimeUnit;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn schema() -> SchemaRef {
        let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
        let s = Schema::new(vec![
            Field::new("ts", ts, false),
            Field::new("symbol", DataType::Utf8, false),
            Field::new("price", DataType::Float64, false),
            Field::new("volume", DataType::Int64, false),
        ]);
        weir_engine::time::mark_event_time(&s, "ts")
    }

    use crate::window::tests::build_ctx;

    fn build(value: Value) -> StepBuild {
        TableStep
            .build(&build_ctx(), "t", &value, &[schema()])
            .map_err(|e| e.message)
            .unwrap()
    }

    /// (ts, symbol index, price, volume)
    type Tick = (i64, u8, i64, i64);

    fn batch(ticks: &[Tick]) -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(TimestampMillisecondArray::from(
                    ticks.iter().map(|t| t.0).collect::<Vec<_>>(),
                )),
                Arc::new(StringArray::from(
                    ticks
                        .iter()
                        .map(|t| format!("S{}", t.1))
                        .collect::<Vec<_>>(),
                )),
                Arc::new(Float64Array::from(
                    ticks.iter().map(|t| t.2 as f64).collect::<Vec<_>>(),
                )),
                Arc::new(Int64Array::from(
                    ticks.iter().map(|t| t.3).collect::<Vec<_>>(),
                )),
            ],
        )
        .unwrap()
    }

    /// Feeds `ticks` in batches of `chunk`, restoring into a fresh operator (same state
    /// backend, as a restore from a checkpoint would) at `restart`; then reads every
    /// key back through `read_state`.
    fn run(
        step: &StepBuild,
        ticks: &[Tick],
        chunk: usize,
        restart: usize,
    ) -> BTreeMap<String, Value> {
        let mut ctx = OperatorContext::for_test("t");
        let mut op = (step.create)(0, 1).unwrap();
        op.open(&mut ctx).unwrap();
        let mut out = Collector::default();
        for (i, c) in ticks.chunks(chunk.max(1)).enumerate() {
            if i == restart {
                op.handle_checkpoint(1, &mut ctx).unwrap();
                op = (step.create)(0, 1).unwrap();
                op.open(&mut ctx).unwrap();
            }
            op.process_batch(0, batch(c), &mut ctx, &mut out).unwrap();
        }
        let read = StateRead::Scan {
            prefix: None,
            after: None,
            limit: 1000,
        };
        match op.read_state(&read, &mut ctx).unwrap() {
            StateAnswer::Entries(e) => e.into_iter().collect(),
            other => panic!("{other:?}"),
        }
    }

    fn ticks() -> impl Strategy<Value = (Vec<Tick>, usize, usize)> {
        (
            proptest::collection::vec((0i64..1_000, 0u8..5, 1i64..200, 1i64..50), 1..120),
            any::<bool>(),
            1usize..20,
            0usize..10,
        )
            .prop_map(|(mut t, dup, chunk, restart)| {
                if dup {
                    // An upstream retry: some ticks arrive twice.
                    let again: Vec<Tick> = t.iter().step_by(3).copied().collect();
                    t.extend(again);
                }
                (t, chunk, restart)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(150))]

        /// Shuffled, late and duplicated ticks, with a restore midway: the latest row per
        /// key (by event time, ties to the later arrival) and the running aggregates
        /// equal a brute-force computation over all ticks.
        #[test]
        fn table_matches_the_oracle((ticks, chunk, restart) in ticks()) {
            let latest = run(&build(json!({"key": ["symbol"]})), &ticks, chunk, restart);
            let stats = run(
                &build(json!({
                    "key": "symbol",
                    "aggregate": {"n": "count(*)", "high": "max(price)", "low": "min(price)",
                                  "notional": "sum(price * volume)", "volume": "sum(volume)",
                                  "last": "last(price)"},
                    "derive": {"vwap": "notional / volume"}
                })),
                &ticks,
                chunk,
                restart,
            );
            let mut by_key: BTreeMap<String, Vec<(usize, Tick)>> = BTreeMap::new();
            for (i, t) in ticks.iter().enumerate() {
                by_key.entry(format!("S{}", t.1)).or_default().push((i, *t));
            }
            prop_assert_eq!(latest.len(), by_key.len());
            prop_assert_eq!(stats.len(), by_key.len());
            for (k, rows) in &by_key {
                // Latest by event time; among equal times the later arrival.
                let (_, best) = rows.iter().max_by_key(|(i, t)| (t.0, *i)).unwrap();
                let l = &latest[k];
                prop_assert_eq!(l["price"].as_f64().unwrap(), best.2 as f64, "{}", k);
                let s = &stats[k];
                prop_assert_eq!(s["n"].as_i64().unwrap(), rows.len() as i64);
                let high = rows.iter().map(|(_, t)| t.2).max().unwrap() as f64;
                let low = rows.iter().map(|(_, t)| t.2).min().unwrap() as f64;
                prop_assert_eq!(s["high"].as_f64().unwrap(), high);
                prop_assert_eq!(s["low"].as_f64().unwrap(), low);
                let notional: i64 = rows.iter().map(|(_, t)| t.2 * t.3).sum();
                let volume: i64 = rows.iter().map(|(_, t)| t.3).sum();
                prop_assert_eq!(s["volume"].as_i64().unwrap(), volume);
                let vwap = s["vwap"].as_f64().unwrap();
                prop_assert!((vwap - notional as f64 / volume as f64).abs() < 1e-9);
                // `last` is the value at the latest event time.
                let latest_t = rows.iter().map(|(_, t)| t.0).max().unwrap();
                let candidates: Vec<f64> = rows.iter().filter(|(_, t)| t.0 == latest_t).map(|(_, t)| t.2 as f64).collect();
                prop_assert!(candidates.contains(&s["last"].as_f64().unwrap()));
            }
        }
    }

    #[test]
    fn a_read_of_one_key_and_bad_options() {
        let step = build(json!({"key": ["symbol"], "aggregate": {"n": "count(*)"}}));
        let mut ctx = OperatorContext::for_test("t");
        let mut op = (step.create)(0, 1).unwrap();
        let mut out = Collector::default();
        op.process_batch(
            0,
            batch(&[(1, 1, 10, 1), (2, 1, 11, 1), (3, 2, 5, 1)]),
            &mut ctx,
            &mut out,
        )
        .unwrap();
        // The changelog: one row per key touched.
        let emitted = out.take_main();
        assert_eq!(emitted.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
        let (schema, keys) = op.queryable_key().unwrap();
        let key = KeyCodec::for_columns(&schema, &keys)
            .unwrap()
            .encode(&batch(&[(0, 1, 0, 0)]).project(&[0, 1, 2, 3]).unwrap())
            .unwrap();
        let read = StateRead::Get {
            key: key.row(0).to_vec(),
            key_group: key.key_groups(ctx.max_parallelism)[0],
        };
        assert_eq!(
            op.read_state(&read, &mut ctx).unwrap(),
            StateAnswer::Value(Some(json!({"symbol": "S1", "n": 2})))
        );
        let ctx = build_ctx();
        let err = |v: Value| {
            TableStep
                .build(&ctx, "t", &v, std::slice::from_ref(&schema))
                .err()
                .unwrap()
        };
        assert_eq!(err(json!({"key": ["nope"]})).path, "/key/0");
        assert_eq!(
            err(json!({"key": "symbol", "aggregate": {"x": "p99(price)"}})).path,
            "/aggregate/x"
        );
        assert_eq!(
            err(json!({"key": "symbol", "derive": {"y": "nope + 1"}})).path,
            "/derive/y"
        );
        assert_eq!(
            err(json!({"key": "symbol", "window": "1m"})).path,
            "/window"
        );
    }
}
