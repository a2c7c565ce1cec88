//! Sources and decoders. A [`Source`] reads from the outside world in *splits* (a file,
//! a Kafka partition, a datagen stream) and yields batches tagged with their split, so
//! that the runtime can generate watermarks per split. A source that reads bytes
//! (files, Kafka) yields *raw* batches ([`raw_schema`]); a [`Decoder`] chosen by the
//! job's `format` turns them into typed batches and dead letters.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    Array, ArrayRef, StringArray, TimestampMillisecondArray, UInt32Array, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;

use crate::error::{EngineError, Result};

/// What a source subtask knows about where it runs.
#[derive(Debug, Clone)]
pub struct SourceContext {
    /// The job's name.
    pub job: String,
    /// The source's name in the job.
    pub source: String,
    /// This subtask's index, `0..parallelism`.
    pub subtask: usize,
    /// The source's parallelism.
    pub parallelism: usize,
    /// Close a batch at this many rows.
    pub batch_size: usize,
    /// Close a non-empty batch after this long even if it is small.
    pub linger: Duration,
}

/// What a poll of a source gives.
#[derive(Debug)]
pub enum SourcePoll {
    /// A batch from one split.
    Batch {
        /// The split the rows come from (stable within the source subtask).
        split: u32,
        /// The rows (raw or typed, per [`Source::schema`]).
        batch: RecordBatch,
    },
    /// A split has ended (bounded input): leave it out of the watermark.
    SplitEnd(u32),
    /// These splits were assigned (a Kafka source's partitions, found at start or
    /// later): each holds the watermark back until it yields data or, quiet for the
    /// idle timeout, is left out of it.
    NewSplits(Vec<u32>),
    /// Nothing now; poll again after about this long (the runtime may emit idleness).
    Pending(Duration),
    /// Every split of this subtask has ended.
    Finished,
}

/// A source of records. Implementations are created per subtask by a
/// [`SourceFactory`](crate::registry::SourceFactory).
#[async_trait::async_trait]
pub trait Source: Send {
    /// The schema of the batches this source yields: [`raw_schema`] for byte sources.
    fn schema(&self) -> SchemaRef;

    /// Connects and positions the source. Called once before the first poll.
    async fn open(&mut self, _ctx: &SourceContext) -> Result<()> {
        Ok(())
    }

    /// Reads the next batch. Must not block forever: return [`SourcePoll::Pending`]
    /// when nothing is available.
    async fn poll_next(&mut self) -> Result<SourcePoll>;

    /// The splits this subtask will read that have not ended, known up front (e.g. the
    /// files assigned to it). The runtime holds the watermark back for a split it has
    /// not read yet, so that records of a file read later are not late because an
    /// earlier file ran ahead in event time. Empty: splits appear as they yield data.
    fn pending_splits(&self) -> Vec<u32> {
        Vec::new()
    }

    /// A human-readable name of a split for dead letters (e.g. `logs/a.jsonl`).
    fn split_description(&self, split: u32) -> String {
        format!("split {split}")
    }

    /// The source's position, to be stored in a checkpoint (e.g. file offsets).
    fn position(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// The position stored in checkpoint `epoch` (at its barrier). A source that acts
    /// when a checkpoint completes (committing offsets to a consumer group) remembers it
    /// here; the default is [`Source::position`].
    fn snapshot_position(&mut self, _epoch: u64) -> serde_json::Value {
        self.position()
    }

    /// Checkpoint `epoch` is complete: its positions are durable. E.g. a Kafka source
    /// commits them to its consumer group so that ordinary lag tools see progress. Must
    /// not block; a failure here is logged, never fatal (the checkpoint holds the truth).
    fn checkpoint_complete(&mut self, _epoch: u64) {}

    /// How many records wait in the source beyond what it has read (e.g. Kafka consumer
    /// lag summed over its partitions), if it knows.
    fn lag(&self) -> Option<u64> {
        None
    }

    /// Resumes from a position taken by [`Source::position`].
    fn restore(&mut self, _position: &serde_json::Value) -> Result<()> {
        Ok(())
    }

    /// Restores a source whose parallelism changed since the checkpoint: `positions`
    /// holds every old subtask's [`Source::position`], by old subtask index. Each new
    /// subtask gets all of them and resumes the part of the input it now owns. Sources
    /// that cannot redistribute their input refuse with a clear error (the default).
    fn restore_all(&mut self, positions: &[serde_json::Value]) -> Result<()> {
        Err(EngineError::Runtime(format!(
            "this source cannot be restored with another parallelism (the checkpoint has {}): \
             restore it with the parallelism it had",
            positions.len()
        )))
    }
}

/// Column of a raw batch holding each record's bytes.
pub const RAW_PAYLOAD: &str = "payload";
/// Column of a raw batch holding each record's position in its split (line number for
/// files, offset for Kafka).
pub const RAW_OFFSET: &str = "offset";

/// Key of a raw batch's schema metadata that lists the rows whose payload the source
/// truncated (the record was longer than the source's `max_record_bytes`): row indexes
/// in the batch, comma-separated, e.g. `"0,17"`. Absent when no row was truncated, so
/// ordinary batches have exactly [`raw_schema`]. Decoders turn these rows into dead
/// letters without trying to decode them.
pub const TRUNCATED_ROWS_METADATA: &str = "weir.truncated_rows";

/// The rows of a raw batch whose payload was truncated, per [`TRUNCATED_ROWS_METADATA`].
pub fn truncated_rows(batch: &RecordBatch) -> Vec<usize> {
    batch
        .schema()
        .metadata()
        .get(TRUNCATED_ROWS_METADATA)
        .map(|s| {
            s.split(',')
                .filter_map(|x| x.trim().parse::<usize>().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Key of a raw batch's schema metadata that lists rows the source already knows
/// cannot be decoded, with why: a JSON object from row index to reason, e.g.
/// `{"3": "tombstone: the message has no value"}`. Decoders turn them into dead letters
/// with that reason (their payload as it is) without trying to decode them.
pub const REJECTED_ROWS_METADATA: &str = "weir.rejected_rows";

/// The rows a source rejected, per [`REJECTED_ROWS_METADATA`], by row index.
pub fn rejected_rows(batch: &RecordBatch) -> Vec<(usize, String)> {
    let Some(text) = batch.schema_ref().metadata().get(REJECTED_ROWS_METADATA) else {
        return Vec::new();
    };
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str(text) else {
        return Vec::new();
    };
    let mut rows: Vec<(usize, String)> = map
        .into_iter()
        .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_str()?.to_string())))
        .collect();
    rows.sort();
    rows
}

/// Appends the columns a byte source yields besides `payload` and `offset` (record
/// metadata such as a Kafka message's key, partition or timestamp) to a decoded batch:
/// row `i` of `typed` came from row `source_rows[i]` of `raw`. A source's extra columns
/// follow the two raw ones in its schema and come after the decoded fields in the
/// output.
pub fn append_source_columns(
    typed: RecordBatch,
    raw: &RecordBatch,
    source_rows: Option<&[u32]>,
) -> Result<RecordBatch> {
    let raw_schema = raw.schema_ref();
    if raw_schema.fields().len() <= 2 {
        return Ok(typed);
    }
    let rows = source_rows.ok_or_else(|| {
        EngineError::Runtime(
            "the decoder did not say which records it decoded: the source's extra columns cannot be attached"
                .into(),
        )
    })?;
    let indices = UInt32Array::from(rows.to_vec());
    let mut fields: Vec<Field> = typed
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    let mut columns = typed.columns().to_vec();
    for (f, c) in raw_schema.fields().iter().zip(raw.columns()).skip(2) {
        fields.push(f.as_ref().clone());
        columns.push(
            arrow::compute::take(c, &indices, None)
                .map_err(|e| EngineError::arrow("attaching the source's columns", e))?,
        );
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map_err(|e| EngineError::arrow("attaching the source's columns", e))
}

/// The schema of raw batches: `payload: Binary`, `offset: UInt64`.
pub fn raw_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(RAW_PAYLOAD, DataType::Binary, false),
        Field::new(RAW_OFFSET, DataType::UInt64, false),
    ]))
}

/// A record that could not be decoded or processed, with why and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Why the record was rejected, e.g. `missing field "ts"`.
    pub reason: String,
    /// The source (and split) it came from, e.g. `logs: data/a.jsonl`.
    pub source: String,
    /// Where in the split: line number or offset.
    pub position: u64,
    /// The raw bytes (truncated for huge records, see the reason).
    pub payload: Vec<u8>,
    /// What went wrong, one of [`DEAD_LETTER_KINDS`].
    pub kind: &'static str,
    /// The node that rejected the record: a source or a step (empty: the runtime fills
    /// in the source's name).
    pub step: String,
}

/// The kinds of dead letters: `decode` (the format could not decode the record: bad
/// syntax, a missing field, a wrong type, too large), `future_time` (event time beyond
/// `max_future`), `expression` (a SQL expression failed on the row), `validation` (a
/// `validate` rule broken), `lookup` (an `enrich` key not in the table).
pub const DEAD_LETTER_KINDS: [&str; 5] = [
    "decode",
    "future_time",
    "expression",
    "validation",
    "lookup",
];

/// The schema of the dead-letter output.
pub fn dead_letter_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("reason", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("position", DataType::UInt64, false),
        Field::new("payload", DataType::Utf8, false),
        Field::new("step", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new(
            "time",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]))
}

/// Turns dead letters into a batch of [`dead_letter_schema`]. Payloads that are not
/// UTF-8 are written lossily (the reason says so).
pub fn dead_letters_to_batch(letters: &[DeadLetter]) -> Result<RecordBatch> {
    let reason: StringArray = letters.iter().map(|d| Some(d.reason.as_str())).collect();
    let source: StringArray = letters.iter().map(|d| Some(d.source.as_str())).collect();
    let position = UInt64Array::from_iter_values(letters.iter().map(|d| d.position));
    let payload: StringArray = letters
        .iter()
        .map(|d| Some(String::from_utf8_lossy(&d.payload).into_owned()))
        .collect();
    let step: StringArray = letters.iter().map(|d| Some(d.step.as_str())).collect();
    let kind: StringArray = letters.iter().map(|d| Some(d.kind)).collect();
    let now = crate::checkpoint::coordinator::now_ms();
    let time = TimestampMillisecondArray::from_iter_values(letters.iter().map(|_| now));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(reason),
        Arc::new(source),
        Arc::new(position),
        Arc::new(payload),
        Arc::new(step),
        Arc::new(kind),
        Arc::new(time),
    ];
    RecordBatch::try_new(dead_letter_schema(), cols)
        .map_err(|e| EngineError::arrow("building dead-letter batch", e))
}

/// The output of decoding one raw batch.
#[derive(Debug)]
pub struct Decoded {
    /// The records that decoded, in the decoder's output schema (may have 0 rows).
    pub batch: RecordBatch,
    /// The records that did not.
    pub dead_letters: Vec<DeadLetter>,
    /// For each row of `batch`, its row in the raw batch, when the decoder tracks it
    /// (so that a record rejected after decoding keeps its payload and position).
    pub source_rows: Option<Vec<u32>>,
}

/// Splits off the rows of `batch` whose event time (`field`, ms) is more than
/// `bound_ms` ahead of `now_ms`: the rows kept, and a dead letter for each other one.
/// A dead letter's payload and position come from `raw` (a raw batch, see
/// [`raw_schema`]) through `source_rows`, else the row itself is the payload (as JSON)
/// and its index in `batch` the position.
pub fn reject_future_rows(
    batch: RecordBatch,
    field: &str,
    bound_ms: i64,
    now_ms: i64,
    raw: &RecordBatch,
    source_rows: Option<&[u32]>,
    source: &str,
) -> Result<(RecordBatch, Vec<DeadLetter>)> {
    let limit = now_ms.saturating_add(bound_ms);
    let times = crate::time::event_times_ms(&batch, field)?;
    if times.iter().flatten().all(|&t| t <= limit) {
        return Ok((batch, Vec::new()));
    }
    let payloads = raw
        .column_by_name(RAW_PAYLOAD)
        .and_then(|c| c.as_any().downcast_ref::<arrow::array::BinaryArray>());
    let offsets = raw
        .column_by_name(RAW_OFFSET)
        .and_then(|c| c.as_any().downcast_ref::<UInt64Array>());
    let mut keep = Vec::with_capacity(times.len());
    let mut letters = Vec::new();
    for (row, t) in times.iter().enumerate() {
        let ahead = t.is_some_and(|t| t > limit);
        keep.push(!ahead);
        if !ahead {
            continue;
        }
        let raw_row = source_rows.and_then(|r| r.get(row)).map(|&r| r as usize);
        let (payload, position) = match (raw_row, payloads) {
            (Some(r), Some(p)) if r < p.len() => (
                p.value(r).to_vec(),
                offsets
                    .filter(|o| r < o.len())
                    .map_or(r as u64, |o| o.value(r)),
            ),
            _ => (row_as_json(&batch, row), row as u64),
        };
        let when = t.and_then(arrow::temporal_conversions::timestamp_ms_to_datetime);
        letters.push(DeadLetter {
            reason: format!(
                "event time {} is more than {} ahead of the wall clock \
                 (event_time.max_future): it would move the watermark past every later record",
                when.map_or_else(
                    || format!("{}", t.unwrap_or_default()),
                    |d| d.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
                ),
                crate::time::format_duration(std::time::Duration::from_millis(
                    u64::try_from(bound_ms).unwrap_or(0)
                ))
            ),
            source: source.to_string(),
            position,
            payload,
            kind: "future_time",
            step: String::new(),
        });
    }
    let kept = arrow::compute::filter_record_batch(&batch, &arrow::array::BooleanArray::from(keep))
        .map_err(|e| EngineError::arrow("dropping records from the future", e))?;
    Ok((kept, letters))
}

/// One row of `batch` as a JSON object (the payload of a dead letter made from a typed
/// row).
fn row_as_json(batch: &RecordBatch, row: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut writer = arrow::json::LineDelimitedWriter::new(&mut out);
    if writer.write(&batch.slice(row, 1)).is_err() || writer.finish().is_err() {
        return Vec::new();
    }
    drop(writer);
    while out.last() == Some(&b'\n') {
        out.pop();
    }
    out
}

/// Turns raw batches ([`raw_schema`]) into typed batches. Created per source subtask by
/// a [`FormatFactory`](crate::registry::FormatFactory). Must never panic on bad input:
/// every record either decodes or becomes a dead letter.
pub trait Decoder: Send {
    /// The schema of decoded batches.
    fn schema(&self) -> SchemaRef;
    /// Decodes a raw batch; `source` names the source and split for dead letters.
    fn decode(&mut self, raw: &RecordBatch, source: &str) -> Result<Decoded>;
}
