//! `enrich` against a changelog stream, as of each record's event time (Flink's
//! event-time temporal table join): the step's second input carries versions of the
//! reference rows (a key, a version time, the values); a record of the first input at
//! event time `t` gets the values of its key's newest version with version time ≤ `t`.
//!
//! ```yaml
//! steps:
//!   with_rate:
//!     from: [payments, fx_rates]          # the stream, then the changelog
//!     enrich:
//!       changelog: { time: ts, version_time: valid_from }
//!       on: { currency: currency }        # stream column: changelog column
//!       columns: [eur_rate]               # default: every changelog column but the key
//!       missing: dead_letter              # or null, or drop
//! ```
//!
//! A record waits until the watermark (the minimum over both inputs) passes its event
//! time: then every version that can apply has arrived, even one that came after the
//! record. Versions are kept per key, and as the watermark advances only the newest one
//! at or below `watermark − retention` (and any newer) survives (`retention`, default 0,
//! keeps history for late records). A record already behind the watermark when it
//! arrives is joined at once with the versions kept; one older than every version kept
//! is missing (the dead letter says the history was not kept that far back). Both inputs are
//! hash-partitioned by the key (the key columns must have the same type), and versions
//! and waiting records are written to keyed state at checkpoints.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, UInt32Array};
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
use serde::{Deserialize, Serialize};
use weir_engine::graph::DEAD_LETTER_OUTPUT;
use weir_engine::message::EventTime;
use weir_engine::operator::{Collector, Operator, OperatorContext};
use weir_engine::registry::{FieldError, Partitioning, StepBuild};
use weir_engine::source::dead_letters_to_batch;
use weir_engine::state::{hash_key, key_group_for_hash, KeyCodec, StateDescriptor, StateKey};
use weir_engine::time::event_times_ms;
use weir_engine::{EngineError, Result};

use super::row_errors::{self, row_dead_letter};
use weir_engine::state::StateAddr;

/// Name of the keyed state of each key: its versions and its waiting records.
pub const AS_OF_STATE: &str = "as-of";

/// What `missing` says of a record with no version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MissingVersion {
    DeadLetter,
    Null,
    Drop,
}

/// The step's settings, resolved against the input schemas.
#[derive(Debug)]
pub(super) struct AsOfPlan {
    pub left: SchemaRef,
    pub right: SchemaRef,
    pub output: SchemaRef,
    pub left_time: String,
    pub right_time: String,
    pub left_key: usize,
    pub right_key: usize,
    /// Indices of the changelog columns added to the output.
    pub columns: Vec<usize>,
    pub missing: MissingVersion,
    pub key_name: String,
    /// How far behind the watermark superseded versions are kept (ms).
    pub retention_ms: i64,
}

/// Resolves the plan, or a field error.
pub(super) fn plan(
    inputs: &[SchemaRef],
    left_time: &str,
    right_time: &str,
    left_key: &str,
    right_key: &str,
    columns: Option<&[String]>,
    missing: MissingVersion,
) -> std::result::Result<AsOfPlan, FieldError> {
    let (left, right) = (inputs[0].clone(), inputs[1].clone());
    let names = |s: &SchemaRef| {
        s.fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let is_time = |s: &SchemaRef, c: &str| {
        s.field_with_name(c)
            .map(|f| matches!(f.data_type(), arrow::datatypes::DataType::Timestamp(..)))
            .unwrap_or(false)
    };
    if !is_time(&left, left_time) {
        return Err(FieldError::at(
            "/changelog/time",
            format!(
                "the stream has no timestamp column `{left_time}` (columns: {})",
                names(&left)
            ),
        ));
    }
    if !is_time(&right, right_time) {
        return Err(FieldError::at(
            "/changelog/version_time",
            format!(
                "the changelog has no timestamp column `{right_time}` (columns: {})",
                names(&right)
            ),
        ));
    }
    let lk = left.index_of(left_key).map_err(|_| {
        FieldError::at(
            "/on",
            format!(
                "the stream has no column `{left_key}` (columns: {})",
                names(&left)
            ),
        )
    })?;
    let rk = right.index_of(right_key).map_err(|_| {
        FieldError::at(
            "/on",
            format!(
                "the changelog has no column `{right_key}` (columns: {})",
                names(&right)
            ),
        )
    })?;
    if left.field(lk).data_type() != right.field(rk).data_type() {
        return Err(FieldError::at(
            "/on",
            format!(
                "`{left_key}` is {} in the stream but `{right_key}` is {} in the changelog: \
                 the keys must have one type (cast one in a `select` first)",
                left.field(lk).data_type(),
                right.field(rk).data_type()
            ),
        ));
    }
    let wanted: Vec<String> = match columns {
        Some(c) => c.to_vec(),
        None => right
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .filter(|n| n != right_key && n != right_time)
            .collect(),
    };
    let mut idx = Vec::new();
    for (i, c) in wanted.iter().enumerate() {
        let at = if columns.is_some() {
            format!("/columns/{i}")
        } else {
            "/on".to_string()
        };
        let j = right.index_of(c).map_err(|_| {
            FieldError::at(at.clone(), format!("the changelog has no column `{c}`"))
        })?;
        if left.index_of(c).is_ok() {
            return Err(FieldError::at(
                at,
                format!(
                    "the stream already has a column `{c}`: list the changelog columns to add \
                     with `columns:` and leave it out"
                ),
            ));
        }
        idx.push(j);
    }
    let mut fields: Vec<Field> = left.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.extend(idx.iter().map(|&j| {
        let f = right.field(j);
        Field::new(f.name(), f.data_type().clone(), true)
    }));
    Ok(AsOfPlan {
        output: Arc::new(Schema::new(fields)),
        left_time: left_time.to_string(),
        right_time: right_time.to_string(),
        left_key: lk,
        right_key: rk,
        columns: idx,
        missing,
        key_name: left_key.to_string(),
        retention_ms: 0,
        left,
        right,
    })
}

/// The step build: both inputs hashed by their key.
pub(super) fn build(plan: AsOfPlan, describe: String) -> StepBuild {
    let output = plan.output.clone();
    let partitioning = vec![
        Partitioning::Hash(vec![plan.left.field(plan.left_key).name().clone()]),
        Partitioning::Hash(vec![plan.right.field(plan.right_key).name().clone()]),
    ];
    let plan = Arc::new(plan);
    StepBuild {
        schema: output,
        side_outputs: row_errors::side_outputs(),
        input_partitioning: None,
        partitioning_per_input: partitioning,
        keyed_by: None,
        describe,
        create: Arc::new(move |_subtask, _parallelism| {
            Ok(Box::new(AsOfOperator::new(plan.clone())?) as Box<dyn Operator>)
        }),
    }
}

/// One key's versions and waiting records, as written at checkpoints.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Stored {
    versions: Vec<(i64, Vec<u8>)>,
    waiting: Vec<(i64, u64, Vec<u8>)>,
}

/// One key's data.
#[derive(Default)]
struct KeyData {
    key_group: u16,
    /// Version time → the added columns' values (row format of `right_rows`).
    versions: BTreeMap<i64, Vec<u8>>,
    /// Records waiting for the watermark: (event time, arrival sequence, row of the
    /// whole record in `left_rows` format).
    waiting: Vec<(i64, u64, Vec<u8>)>,
    /// Written to keyed state (and so to be deleted when empty).
    persisted: bool,
}

/// The operator of one subtask.
pub(super) struct AsOfOperator {
    plan: Arc<AsOfPlan>,
    left_codec: KeyCodec,
    right_codec: KeyCodec,
    left_rows: RowConverter,
    right_rows: RowConverter,
    keys: HashMap<Vec<u8>, KeyData>,
    dirty: HashSet<Vec<u8>>,
    watermark: EventTime,
    seq: u64,
    state: StateDescriptor,
    max_parallelism: u16,
    /// Records received on the first input (dead letters' positions).
    seen: u64,
}

fn op_error(message: impl Into<String>) -> EngineError {
    EngineError::operator("enrich", message)
}

fn converter(fields: Vec<SortField>) -> Result<RowConverter> {
    RowConverter::new(fields)
        .map_err(|e| EngineError::arrow("enrich: these columns cannot be kept", e))
}

impl AsOfOperator {
    fn new(plan: Arc<AsOfPlan>) -> Result<Self> {
        let left_rows = converter(
            plan.left
                .fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )?;
        let right_rows = converter(
            plan.columns
                .iter()
                .map(|&j| SortField::new(plan.right.field(j).data_type().clone()))
                .collect(),
        )?;
        Ok(AsOfOperator {
            left_codec: KeyCodec::for_columns(&plan.left, &[plan.left_key])?,
            right_codec: KeyCodec::for_columns(&plan.right, &[plan.right_key])?,
            left_rows,
            right_rows,
            keys: HashMap::new(),
            dirty: HashSet::new(),
            watermark: EventTime::MIN,
            seq: 0,
            state: StateDescriptor::new(AS_OF_STATE),
            max_parallelism: weir_engine::state::DEFAULT_MAX_PARALLELISM,
            seen: 0,
            plan,
        })
    }

    fn key_data(&mut self, key: &[u8]) -> &mut KeyData {
        let kg = key_group_for_hash(hash_key(key), self.max_parallelism);
        self.dirty.insert(key.to_vec());
        self.keys.entry(key.to_vec()).or_insert_with(|| KeyData {
            key_group: kg,
            ..KeyData::default()
        })
    }

    /// Joins `ready` (key, event time, left row) and emits the output batch, dead
    /// letters as `missing` says.
    fn emit(
        &mut self,
        ready: Vec<(Vec<u8>, i64, Vec<u8>)>,
        ctx: &OperatorContext,
        out: &mut Collector,
    ) -> Result<()> {
        if ready.is_empty() {
            return Ok(());
        }
        let parser = self.left_rows.parser();
        let left_rows: Vec<_> = ready.iter().map(|(_, _, r)| parser.parse(r)).collect();
        let left = self
            .left_rows
            .convert_rows(left_rows)
            .map_err(|e| EngineError::arrow("enrich: decoding records", e))?;
        let mut versions: Vec<&[u8]> = Vec::new();
        let mut index: Vec<Option<u32>> = Vec::with_capacity(ready.len());
        for (key, t, _) in &ready {
            let v = self
                .keys
                .get(key)
                .and_then(|k| k.versions.range(..=*t).next_back())
                .map(|(_, row)| row.as_slice());
            index.push(v.map(|row| {
                versions.push(row);
                (versions.len() - 1) as u32
            }));
        }
        let rparser = self.right_rows.parser();
        let right = self
            .right_rows
            .convert_rows(versions.iter().map(|r| rparser.parse(r)))
            .map_err(|e| EngineError::arrow("enrich: decoding versions", e))?;
        let keep: Vec<u32> = match self.plan.missing {
            MissingVersion::Null => (0..ready.len() as u32).collect(),
            _ => (0..ready.len() as u32)
                .filter(|&i| index[i as usize].is_some())
                .collect(),
        };
        if self.plan.missing == MissingVersion::DeadLetter && keep.len() < ready.len() {
            let batch = RecordBatch::try_new(self.plan.left.clone(), left.clone())
                .map_err(|e| EngineError::arrow("enrich", e))?;
            let keys = arrow::compute::kernels::cast::cast(
                batch.column(self.plan.left_key),
                &arrow::datatypes::DataType::Utf8,
            )
            .map_err(|e| EngineError::arrow("enrich", e))?;
            let keys = keys.as_any().downcast_ref::<arrow::array::StringArray>();
            let mut letters = Vec::new();
            for (i, found) in index.iter().enumerate() {
                if found.is_some() {
                    continue;
                }
                let key = match keys {
                    Some(k) if k.is_valid(i) => format!("`{}`", k.value(i)),
                    _ => "null".to_string(),
                };
                let when = arrow::temporal_conversions::timestamp_ms_to_datetime(ready[i].1)
                    .map_or_else(
                        || ready[i].1.to_string(),
                        |d| d.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
                    );
                let pruned = self
                    .keys
                    .get(&ready[i].0)
                    .is_some_and(|k| !k.versions.is_empty())
                    && ready[i].1 < self.watermark.saturating_sub(self.plan.retention_ms);
                let reason = format!(
                    "step `{}`: no version of {} = {key} at or before {when}{}",
                    ctx.operator,
                    self.plan.key_name,
                    if pruned {
                        format!(
                            " (the record is later than the history kept: versions are kept \
                             {} behind the watermark, see `changelog.retention`)",
                            weir_engine::time::format_duration(std::time::Duration::from_millis(
                                self.plan.retention_ms.max(0) as u64
                            ))
                        )
                    } else {
                        String::new()
                    }
                );
                letters.push(row_dead_letter(
                    &ctx.operator,
                    &batch,
                    i,
                    0,
                    "lookup",
                    reason,
                ));
            }
            out.emit_side(DEAD_LETTER_OUTPUT, dead_letters_to_batch(&letters)?);
        }
        if keep.is_empty() {
            return Ok(());
        }
        let take = UInt32Array::from(keep.clone());
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.plan.output.fields().len());
        for c in &left {
            columns.push(
                arrow::compute::take(c, &take, None)
                    .map_err(|e| EngineError::arrow("enrich", e))?,
            );
        }
        let vidx = UInt32Array::from(keep.iter().map(|&i| index[i as usize]).collect::<Vec<_>>());
        for c in &right {
            columns.push(
                arrow::compute::take(c, &vidx, None)
                    .map_err(|e| EngineError::arrow("enrich", e))?,
            );
        }
        let batch = RecordBatch::try_new(self.plan.output.clone(), columns)
            .map_err(|e| EngineError::arrow("enrich", e))?;
        out.emit(batch);
        Ok(())
    }

    /// The watermark reached `w`: records at or below it are joined (in event-time
    /// order), and versions no later record can need are dropped.
    fn advance(&mut self, w: EventTime, ctx: &OperatorContext, out: &mut Collector) -> Result<()> {
        if w <= self.watermark {
            return Ok(());
        }
        self.watermark = w;
        let mut ready: Vec<(i64, u64, Vec<u8>, Vec<u8>)> = Vec::new();
        for (key, data) in self.keys.iter_mut() {
            if data.waiting.iter().any(|(t, _, _)| *t <= w) {
                let (now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut data.waiting)
                    .into_iter()
                    .partition(|(t, _, _)| *t <= w);
                data.waiting = later;
                for (t, s, row) in now {
                    ready.push((t, s, key.clone(), row));
                }
                self.dirty.insert(key.clone());
            }
        }
        ready.sort_by_key(|(t, s, _, _)| (*t, *s));
        self.emit(
            ready.into_iter().map(|(t, _, k, r)| (k, t, r)).collect(),
            ctx,
            out,
        )?;
        // Prune: keep the newest version at or below `w − retention` and every newer one.
        if w != EventTime::MAX {
            let cut = w.saturating_sub(self.plan.retention_ms);
            for (key, data) in self.keys.iter_mut() {
                let Some((&newest_due, _)) = data.versions.range(..=cut).next_back() else {
                    continue;
                };
                if data.versions.range(..newest_due).next().is_some() {
                    data.versions = data.versions.split_off(&newest_due);
                    self.dirty.insert(key.clone());
                }
            }
        }
        Ok(())
    }
}

impl Operator for AsOfOperator {
    fn open(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        self.max_parallelism = ctx.max_parallelism;
        let addresses: Vec<StateKey> = ctx.state.keys(&self.state)?.collect::<Result<Vec<_>>>()?;
        for a in addresses {
            if !ctx.key_groups.contains(a.key_group) {
                continue;
            }
            let Some(bytes) = ctx.state.value_get(&self.state, a.addr())? else {
                continue;
            };
            let stored: Stored = postcard::from_bytes(&bytes)
                .map_err(|e| op_error(format!("corrupt as-of state: {e}")))?;
            for (_, _, _) in &stored.waiting {
                self.seq += 1;
            }
            self.keys.insert(
                a.key.to_vec(),
                KeyData {
                    key_group: a.key_group,
                    versions: stored.versions.into_iter().collect(),
                    waiting: stored.waiting,
                    persisted: true,
                },
            );
        }
        Ok(())
    }

    fn process_batch(
        &mut self,
        input: usize,
        batch: RecordBatch,
        ctx: &mut OperatorContext,
        out: &mut Collector,
    ) -> Result<()> {
        self.max_parallelism = ctx.max_parallelism;
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        match input {
            0 => {
                self.seen += n as u64;
                let times = event_times_ms(&batch, &self.plan.left_time)?;
                let keys = self.left_codec.encode(&batch)?;
                let rows = self
                    .left_rows
                    .convert_columns(batch.columns())
                    .map_err(|e| EngineError::arrow("enrich: encoding records", e))?;
                let mut now = Vec::new();
                for (i, time) in times.iter().enumerate() {
                    // A record without an event time is joined with the newest version.
                    let t = time.unwrap_or(EventTime::MAX);
                    let row = rows.row(i).data().to_vec();
                    if t <= self.watermark || time.is_none() {
                        now.push((keys.row(i).to_vec(), t, row));
                        continue;
                    }
                    self.seq += 1;
                    let seq = self.seq;
                    self.key_data(keys.row(i)).waiting.push((t, seq, row));
                }
                self.emit(now, ctx, out)
            }
            1 => {
                let times = event_times_ms(&batch, &self.plan.right_time)?;
                let keys = self.right_codec.encode(&batch)?;
                let cols: Vec<ArrayRef> = self
                    .plan
                    .columns
                    .iter()
                    .map(|&j| batch.column(j).clone())
                    .collect();
                let rows = self
                    .right_rows
                    .convert_columns(&cols)
                    .map_err(|e| EngineError::arrow("enrich: encoding versions", e))?;
                for (i, time) in times.iter().enumerate() {
                    let Some(t) = *time else {
                        continue; // a version without a time cannot be placed
                    };
                    let row = rows.row(i).data().to_vec();
                    self.key_data(keys.row(i)).versions.insert(t, row);
                }
                Ok(())
            }
            other => Err(op_error(format!(
                "enrich with a changelog has two inputs, got input {other}"
            ))),
        }
    }

    fn handle_watermark(
        &mut self,
        watermark: EventTime,
        ctx: &mut OperatorContext,
        out: &mut Collector,
    ) -> Result<()> {
        self.advance(watermark, ctx, out)
    }

    fn handle_checkpoint(&mut self, _epoch: u64, ctx: &mut OperatorContext) -> Result<()> {
        for key in std::mem::take(&mut self.dirty) {
            let Some(data) = self.keys.get_mut(&key) else {
                continue;
            };
            if data.versions.is_empty() && data.waiting.is_empty() {
                if data.persisted {
                    ctx.state
                        .value_delete(&self.state, StateAddr::key(data.key_group, &key))?;
                }
                self.keys.remove(&key);
                continue;
            }
            let stored = Stored {
                versions: data.versions.iter().map(|(t, r)| (*t, r.clone())).collect(),
                waiting: data.waiting.clone(),
            };
            let bytes = postcard::to_allocvec(&stored)
                .map_err(|e| op_error(format!("serialising as-of state: {e}")))?;
            ctx.state
                .value_put(&self.state, StateAddr::key(data.key_group, &key), &bytes)?;
            data.persisted = true;
        }
        Ok(())
    }

    fn handle_end_of_input(
        &mut self,
        ctx: &mut OperatorContext,
        out: &mut Collector,
    ) -> Result<()> {
        self.advance(EventTime::MAX, ctx, out)
    }

    fn side_outputs(&self) -> Vec<(String, SchemaRef)> {
        row_errors::side_outputs()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests fail loudly on purpose.
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray, TimestampMillisecondArray};
    use arrow::datatypes::{DataType, TimeUnit};
    use proptest::prelude::*;
    use serde_json::json;
    use weir_engine::registry::StepFactory;

    fn schemas() -> (SchemaRef, SchemaRef) {
        let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
        (
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Int64, false),
                Field::new("key", DataType::Utf8, true),
                Field::new("ts", ts.clone(), false),
            ])),
            Arc::new(Schema::new(vec![
                Field::new("key", DataType::Utf8, false),
                Field::new("valid_from", ts, false),
                Field::new("rate", DataType::Int64, false),
            ])),
        )
    }

    /// The value of key `k`'s version at `vt` (so that duplicated updates agree).
    fn rate(k: u8, vt: i64) -> i64 {
        i64::from(k) * 100_000 + vt
    }

    #[derive(Debug, Clone)]
    enum Event {
        /// id, key, event time
        Record(i64, u8, i64),
        /// key, version time
        Version(u8, i64),
    }

    impl Event {
        fn time(&self) -> i64 {
            match self {
                Event::Record(_, _, t) | Event::Version(_, t) => *t,
            }
        }
    }

    fn batch(e: &Event) -> (usize, RecordBatch) {
        let (left, right) = schemas();
        match e {
            Event::Record(id, k, t) => (
                0,
                RecordBatch::try_new(
                    left,
                    vec![
                        Arc::new(Int64Array::from(vec![*id])),
                        Arc::new(StringArray::from(vec![format!("k{k}")])),
                        Arc::new(TimestampMillisecondArray::from(vec![*t])),
                    ],
                )
                .unwrap(),
            ),
            Event::Version(k, vt) => (
                1,
                RecordBatch::try_new(
                    right,
                    vec![
                        Arc::new(StringArray::from(vec![format!("k{k}")])),
                        Arc::new(TimestampMillisecondArray::from(vec![*vt])),
                        Arc::new(Int64Array::from(vec![rate(*k, *vt)])),
                    ],
                )
                .unwrap(),
            ),
        }
    }

    fn step(missing: &str) -> StepBuild {
        step_keeping(missing, "0s")
    }

    fn step_keeping(missing: &str, retention: &str) -> StepBuild {
        let (left, right) = schemas();
        super::super::EnrichStep
            .build(
                &super::super::test_util::ctx(),
                "e",
                &json!({
                    "changelog": { "time": "ts", "version_time": "valid_from", "retention": retention },
                    "on": { "key": "key" },
                    "missing": missing,
                }),
                &[left, right],
            )
            .map_err(|e| e.message)
            .unwrap()
    }

    /// (id, rate or None) of the output, by id.
    fn results(batches: &[RecordBatch]) -> Vec<(i64, Option<i64>)> {
        let mut v = Vec::new();
        for b in batches {
            let ids = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            let rates = b.column(3).as_any().downcast_ref::<Int64Array>().unwrap();
            for i in 0..b.num_rows() {
                v.push((ids.value(i), rates.is_valid(i).then(|| rates.value(i))));
            }
        }
        v.sort_unstable();
        v
    }

    /// Brute force: every record with the newest version of its key at or before its
    /// time, over all versions.
    fn oracle(events: &[Event]) -> Vec<(i64, Option<i64>)> {
        let mut v: Vec<(i64, Option<i64>)> = events
            .iter()
            .filter_map(|e| match e {
                Event::Record(id, k, t) => {
                    let best = events
                        .iter()
                        .filter_map(|v| match v {
                            Event::Version(vk, vt) if vk == k && vt <= t => Some(*vt),
                            _ => None,
                        })
                        .max();
                    Some((*id, best.map(|vt| rate(*k, vt))))
                }
                Event::Version(..) => None,
            })
            .collect();
        v.sort_unstable();
        v
    }

    /// Runs events in arrival order with watermarks `max seen − disorder − 1` every few
    /// events, a checkpoint and a restore into a fresh operator at `restart`.
    fn run(
        step: &StepBuild,
        arrivals: &[Event],
        disorder: i64,
        restart: usize,
    ) -> Vec<RecordBatch> {
        let mut ctx = OperatorContext::for_test("e");
        let mut op = (step.create)(0, 1).unwrap();
        op.open(&mut ctx).unwrap();
        let mut out = Collector::default();
        let mut max_seen = i64::MIN;
        for (i, e) in arrivals.iter().enumerate() {
            if i == restart {
                op.handle_checkpoint(1, &mut ctx).unwrap();
                op = (step.create)(0, 1).unwrap();
                op.open(&mut ctx).unwrap();
            }
            let (input, b) = batch(e);
            op.process_batch(input, b, &mut ctx, &mut out).unwrap();
            max_seen = max_seen.max(e.time());
            if i % 3 == 2 {
                op.handle_watermark(max_seen - disorder - 1, &mut ctx, &mut out)
                    .unwrap();
            }
        }
        op.handle_end_of_input(&mut ctx, &mut out).unwrap();
        out.take_main()
    }

    fn events() -> impl Strategy<Value = (Vec<Event>, i64, Vec<i64>, usize)> {
        (
            proptest::collection::vec((0u8..4, 0i64..2_000), 1..40),
            proptest::collection::vec((0u8..4, 0i64..2_000, any::<bool>()), 0..25),
            0i64..300,
            any::<u64>(),
        )
            .prop_flat_map(|(records, versions, disorder, seed)| {
                let mut events: Vec<Event> = records
                    .iter()
                    .enumerate()
                    .map(|(i, (k, t))| Event::Record(i as i64, *k, *t))
                    .collect();
                for (k, vt, twice) in versions {
                    events.push(Event::Version(k, vt));
                    if twice {
                        events.push(Event::Version(k, vt)); // a duplicated update
                    }
                }
                let n = events.len();
                (
                    Just(events),
                    Just(disorder),
                    proptest::collection::vec(0..=disorder, n),
                    0..=n,
                )
                    .prop_map(move |(e, d, delays, restart)| {
                        let _ = seed;
                        (e, d, delays, restart)
                    })
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Shuffled within a bounded disorder, with late and duplicated updates and a
        /// restore from a checkpoint: the output equals the brute-force as-of join.
        #[test]
        fn as_of_join_matches_the_oracle((events, disorder, delays, restart) in events()) {
            // Arrival order: event time plus a delay of at most `disorder`.
            let mut order: Vec<(i64, usize)> =
                events.iter().zip(&delays).enumerate().map(|(i, (e, d))| (e.time() + d, i)).collect();
            order.sort_unstable();
            let arrivals: Vec<Event> = order.iter().map(|&(_, i)| events[i].clone()).collect();
            let got = results(&run(&step("null"), &arrivals, disorder, restart));
            prop_assert_eq!(got, oracle(&events));
        }
    }

    /// A record far behind the watermark (a replayed dead letter) gets the version valid
    /// at its time when `retention` kept it; without, it is a dead letter that says the
    /// history was not kept that far back.
    #[test]
    fn retention_keeps_history_for_late_records() {
        for (retention, want) in [("2s", Some(rate(1, 100))), ("0s", None)] {
            let s = step_keeping("dead_letter", retention);
            let mut ctx = OperatorContext::for_test("e");
            let mut op = (s.create)(0, 1).unwrap();
            op.open(&mut ctx).unwrap();
            let mut out = Collector::default();
            for e in [Event::Version(1, 100), Event::Version(1, 200)] {
                let (i, b) = batch(&e);
                op.process_batch(i, b, &mut ctx, &mut out).unwrap();
            }
            op.handle_watermark(2_000, &mut ctx, &mut out).unwrap();
            // Checkpoint and restore: what was kept survives.
            op.handle_checkpoint(1, &mut ctx).unwrap();
            let mut op = (s.create)(0, 1).unwrap();
            op.open(&mut ctx).unwrap();
            let (i, b) = batch(&Event::Record(7, 1, 150));
            op.process_batch(i, b, &mut ctx, &mut out).unwrap();
            op.handle_watermark(2_001, &mut ctx, &mut out).unwrap();
            let got = results(&out.take_main());
            match want {
                Some(r) => assert_eq!(got, vec![(7, Some(r))], "retention {retention}"),
                None => {
                    assert!(got.is_empty(), "retention {retention}: {got:?}");
                    let side = out.take_side();
                    let reasons = side[0]
                        .1
                        .column(0)
                        .as_any()
                        .downcast_ref::<StringArray>()
                        .unwrap()
                        .value(0)
                        .to_string();
                    assert!(reasons.contains("changelog.retention"), "{reasons}");
                }
            }
        }
    }

    #[test]
    fn a_record_waits_for_an_update_that_arrives_after_it() {
        let s = step("dead_letter");
        let mut ctx = OperatorContext::for_test("e");
        let mut op = (s.create)(0, 1).unwrap();
        op.open(&mut ctx).unwrap();
        let mut out = Collector::default();
        let feed = |op: &mut Box<dyn Operator>,
                    ctx: &mut OperatorContext,
                    out: &mut Collector,
                    e: Event| {
            let (i, b) = batch(&e);
            op.process_batch(i, b, ctx, out).unwrap();
        };
        feed(&mut op, &mut ctx, &mut out, Event::Version(1, 100));
        feed(&mut op, &mut ctx, &mut out, Event::Record(1, 1, 500));
        feed(&mut op, &mut ctx, &mut out, Event::Record(2, 2, 500));
        op.handle_watermark(400, &mut ctx, &mut out).unwrap();
        assert!(
            out.take_main().is_empty(),
            "nothing is due before the watermark passes 500"
        );
        // The update valid from 450 arrives after the record it applies to.
        feed(&mut op, &mut ctx, &mut out, Event::Version(1, 450));
        op.handle_watermark(600, &mut ctx, &mut out).unwrap();
        assert_eq!(results(&out.take_main()), vec![(1, Some(rate(1, 450)))]);
        let side = out.take_side();
        assert_eq!(side.len(), 1);
        let reasons = side[0]
            .1
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert!(
            reasons
                .value(0)
                .contains("no version of key = `k2` at or before"),
            "{}",
            reasons.value(0)
        );
    }

    #[test]
    fn keys_of_two_types_are_refused() {
        let (left, _) = schemas();
        let right = Arc::new(Schema::new(vec![
            Field::new("key", DataType::Int64, false),
            Field::new(
                "valid_from",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
        ]));
        let e = super::super::EnrichStep
            .build(
                &super::super::test_util::ctx(),
                "e",
                &json!({ "changelog": { "time": "ts", "version_time": "valid_from" }, "on": { "key": "key" } }),
                &[left, right],
            )
            .err()
            .unwrap();
        assert_eq!(e.path, "/on");
        assert!(e.message.contains("must have one type"), "{}", e.message);
    }
}
