//! The datagen source (`type: datagen`): typed rows of the declared `schema`, generated
//! deterministically, modelled on Flink's datagen connector.
//!
//! Rows have a global index `0, 1, 2, …`; subtask `i` of `p` produces rows
//! `i, i + p, i + 2p, …`, and every value of row `r` is derived from `(seed, field
//! name, r)` only. So the same seed and row count always give the same rows, whatever
//! the parallelism: parallelism only decides who produces which row. With a `rate`,
//! row `r` is due `r / rate` seconds after the start, so that all subtasks together
//! produce `rate` rows per second; the source sleeps on tokio's clock until rows are
//! due, it never spins.
//!
//! A subtask's position is the index of its next row. A job restores it with the same
//! parallelism only: restoring with another one is refused with a clear error (the
//! default [`Source::restore_all`]), because the old subtasks stopped at different rows,
//! so what is left is not a set of rows the new subtasks' strides could produce.
//!
//! Default generators by type: integers uniform over the type's range, floats uniform
//! in `[0, 1)`, booleans uniform, strings of 10 random letters and digits, timestamps
//! (and dates) `start + r × step` from 2024-01-01T00:00:00Z in steps of 1 ms.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Date64Array, Float32Array, Float64Array, Int16Array,
    Int32Array, Int64Array, Int8Array, LargeStringBuilder, StringBuilder,
    TimestampMicrosecondArray, TimestampMillisecondArray, TimestampNanosecondArray,
    TimestampSecondArray, UInt16Array, UInt32Array, UInt64Array, UInt8Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use tokio::time::Instant;
use weir_engine::error::{EngineError, Result};
use weir_engine::registry::{BuildContext, FieldError, SourceBuild, SourceFactory};
use weir_engine::source::{Source, SourceContext, SourcePoll};

use crate::options::{kind_of, parse_options, pointer_segment, schema_for};
use crate::rng::{stride_at_or_after, Rng};

/// Default first timestamp: 2024-01-01T00:00:00Z, in ns since the epoch.
const DEFAULT_START_NS: i128 = 1_704_067_200_000_000_000;
/// Default timestamp step: 1 ms.
const DEFAULT_STEP_NS: i128 = 1_000_000;
/// Default length of random strings.
const DEFAULT_STRING_LENGTH: usize = 10;
/// Longest sleep inside one poll; a longer wait is handed back as `Pending`.
const MAX_SLEEP: Duration = Duration::from_millis(100);
/// Characters of random strings.
const ALPHANUMERIC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// Options of `type: datagen` sources.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct DatagenOptions {
    /// Total number of rows over all subtasks. Absent: unbounded.
    rows: Option<u64>,
    /// Rows per second over all subtasks. Absent: as fast as possible.
    #[schemars(range(min = 0))]
    rate: Option<f64>,
    /// Seed of the random values (default 0). The same seed and rows always give the
    /// same rows, whatever the parallelism.
    #[serde(default)]
    seed: u64,
    /// Generators per field of the schema, by field name. Fields not listed get the
    /// default generator of their type.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, FieldOptions>")]
    fields: BTreeMap<String, Value>,
}

/// How one field is generated.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct FieldOptions {
    /// Pick one of these values uniformly at random (any type; timestamps as RFC 3339
    /// strings or epoch milliseconds).
    values: Option<Vec<Value>>,
    /// Numbers: smallest value, inclusive (default: the type's minimum for integers, 0
    /// for floats).
    #[schemars(with = "Option<f64>")]
    min: Option<Value>,
    /// Numbers: largest value, inclusive for integers, exclusive for floats (default:
    /// the type's maximum for integers, 1 for floats).
    #[schemars(with = "Option<f64>")]
    max: Option<Value>,
    /// Integers: row `r` gets `start + r`; with an `end`, the source ends after the
    /// value `end`.
    sequence: Option<SequenceOptions>,
    /// Strings: length of the random strings (default 10).
    length: Option<usize>,
    /// Fraction of rows in which the field is null, from 0 to 1 (default 0).
    #[schemars(range(min = 0, max = 1))]
    null_rate: Option<f64>,
    /// Timestamps and dates: the value of row 0, as RFC 3339 (`2024-01-01T00:00:00Z`)
    /// or epoch milliseconds (default 2024-01-01T00:00:00Z).
    #[schemars(with = "Option<StartSchema>")]
    start: Option<Value>,
    /// Timestamps and dates: increase per row, a duration such as `10ms` (default `1ms`).
    step: Option<String>,
    /// Timestamps and dates: subtract a random delay of up to this duration from each
    /// value, to make out-of-order data (default none).
    max_delay: Option<String>,
}

/// An integer sequence.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SequenceOptions {
    /// First value (default 0).
    #[serde(default)]
    start: i64,
    /// Last value, inclusive; the source ends after it. Absent: unbounded.
    end: Option<i64>,
}

/// Only for the JSON Schema of `start`: RFC 3339 text or epoch milliseconds.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum StartSchema {
    /// RFC 3339 timestamp.
    Text(String),
    /// Epoch milliseconds.
    Millis(i64),
}

/// The kind of values a column holds, for generation.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Class {
    Int { min: i128, max: i128 },
    Float,
    Bool,
    Str,
    Time,
}

impl Class {
    fn of(dt: &DataType) -> Option<Class> {
        let int = |min: i128, max: i128| Some(Class::Int { min, max });
        match dt {
            DataType::Int8 => int(i8::MIN.into(), i8::MAX.into()),
            DataType::Int16 => int(i16::MIN.into(), i16::MAX.into()),
            DataType::Int32 => int(i32::MIN.into(), i32::MAX.into()),
            DataType::Int64 => int(i64::MIN.into(), i64::MAX.into()),
            DataType::UInt8 => int(0, u8::MAX.into()),
            DataType::UInt16 => int(0, u16::MAX.into()),
            DataType::UInt32 => int(0, u32::MAX.into()),
            DataType::UInt64 => int(0, u64::MAX.into()),
            DataType::Float32 | DataType::Float64 => Some(Class::Float),
            DataType::Boolean => Some(Class::Bool),
            DataType::Utf8 | DataType::LargeUtf8 => Some(Class::Str),
            DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64 => Some(Class::Time),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Class::Int { .. } => "integer",
            Class::Float => "float",
            Class::Bool => "boolean",
            Class::Str => "string",
            Class::Time => "timestamp",
        }
    }
}

/// One generated value, before it is put into the column's type.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Int(i128),
    Float(f64),
    Bool(bool),
    Str(String),
    /// Nanoseconds since the epoch.
    Nanos(i128),
}

/// A generated value as [`FieldGen::cell`] hands it out: strings borrow the field's
/// value list or the caller's scratch buffer, so generating one allocates nothing.
#[derive(Debug, Clone, Copy)]
enum CellRef<'a> {
    Int(i128),
    Float(f64),
    Bool(bool),
    Str(&'a str),
    Nanos(i128),
}

impl<'a> From<&'a Cell> for CellRef<'a> {
    fn from(c: &'a Cell) -> Self {
        match c {
            Cell::Int(i) => CellRef::Int(*i),
            Cell::Float(f) => CellRef::Float(*f),
            Cell::Bool(b) => CellRef::Bool(*b),
            Cell::Str(s) => CellRef::Str(s),
            Cell::Nanos(n) => CellRef::Nanos(*n),
        }
    }
}

/// How a field's values are made.
#[derive(Debug, Clone)]
enum GenKind {
    Values(Vec<Cell>),
    IntRange {
        min: i128,
        max: i128,
    },
    IntSequence {
        start: i128,
    },
    FloatRange {
        min: f64,
        max: f64,
    },
    Bool,
    Str {
        length: usize,
    },
    Time {
        start: i128,
        step: i128,
        max_delay: i128,
    },
}

/// The generator of one field.
#[derive(Debug, Clone)]
struct FieldGen {
    data_type: DataType,
    /// Hash of the field name: values depend on the name, not on the field's position.
    key: u64,
    null_rate: f64,
    kind: GenKind,
}

/// Everything the subtasks of one datagen source share.
#[derive(Debug)]
pub struct DatagenConfig {
    schema: SchemaRef,
    fields: Vec<FieldGen>,
    seed: u64,
    /// Rows over all subtasks (`rows`, or fewer when a sequence ends first).
    total: Option<u64>,
    rate: Option<f64>,
}

/// Factory of `type: datagen` sources.
#[derive(Debug, Default, Clone, Copy)]
pub struct DatagenFactory;

impl SourceFactory for DatagenFactory {
    fn name(&self) -> &'static str {
        "datagen"
    }

    fn options_schema(&self) -> Value {
        schema_for::<DatagenOptions>()
    }

    fn build(
        &self,
        _ctx: &BuildContext,
        name: &str,
        options: &Value,
        schema: Option<SchemaRef>,
    ) -> Result<SourceBuild, FieldError> {
        let opts: DatagenOptions = parse_options(options)?;
        let schema = schema.ok_or_else(|| {
            FieldError::at(
                "/schema",
                "a datagen source needs a `schema` (e.g. `schema: { id: int, ts: timestamp }`)",
            )
        })?;
        if schema.fields().is_empty() {
            return Err(FieldError::at("/schema", "the schema has no fields"));
        }
        if let Some(rate) = opts.rate {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(FieldError::at(
                    "/rate",
                    "rate must be a positive number of rows per second",
                ));
            }
        }
        for key in opts.fields.keys() {
            if schema.field_with_name(key).is_err() {
                return Err(FieldError::at(
                    format!("/fields/{}", pointer_segment(key)),
                    format!(
                        "`{key}` is not a field of the schema (fields: {})",
                        schema
                            .fields()
                            .iter()
                            .map(|f| f.name().as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
        let mut total = opts.rows;
        let mut gens = Vec::with_capacity(schema.fields().len());
        let mut out_fields = Vec::with_capacity(schema.fields().len());
        for field in schema.fields() {
            let fname = field.name();
            let prefix = format!("/fields/{}", pointer_segment(fname));
            let fopts = match opts.fields.get(fname) {
                Some(v) => parse_options::<FieldOptions>(v).map_err(|e| e.under(&prefix))?,
                None => FieldOptions::default(),
            };
            let (gen, limit) = field_gen(field, &fopts).map_err(|e| {
                if opts.fields.contains_key(fname) {
                    e.under(&prefix)
                } else {
                    e.under(&format!("/schema/{}", pointer_segment(fname)))
                }
            })?;
            if let Some(limit) = limit {
                total = Some(total.map_or(limit, |t| t.min(limit)));
            }
            let nullable = field.is_nullable() || gen.null_rate > 0.0;
            out_fields.push(Field::new(fname, field.data_type().clone(), nullable));
            gens.push(gen);
        }
        let out_schema = Arc::new(Schema::new_with_metadata(
            out_fields,
            schema.metadata().clone(),
        ));
        let mut describe = String::from("datagen");
        match total {
            Some(t) => describe.push_str(&format!(" {t} rows")),
            None => describe.push_str(" unbounded"),
        }
        if let Some(r) = opts.rate {
            describe.push_str(&format!(" at {r} rows/s"));
        }
        describe.push_str(&format!(", seed {}", opts.seed));
        tracing::debug!(source = name, %describe, "datagen source built");
        let config = Arc::new(DatagenConfig {
            schema: out_schema.clone(),
            fields: gens,
            seed: opts.seed,
            total,
            rate: opts.rate,
        });
        Ok(SourceBuild {
            schema: out_schema,
            needs_format: false,
            bounded: total.is_some(),
            describe,
            max_parallelism: None,
            create: Arc::new(move |ctx: &SourceContext| {
                Ok(Box::new(DatagenSource::new(config.clone(), ctx)) as Box<dyn Source>)
            }),
        })
    }
}

/// Parses a JSON number as an integer within `[lo, hi]`.
fn int_value(v: &Value, lo: i128, hi: i128, path: &str) -> Result<i128, FieldError> {
    let n = match v {
        Value::Number(n) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 1e38)
                    .map(|f| f as i128)
            }),
        _ => None,
    }
    .ok_or_else(|| FieldError::at(path, format!("expected an integer, found {}", kind_of(v))))?;
    if n < lo || n > hi {
        return Err(FieldError::at(
            path,
            format!("{n} is out of range ({lo} to {hi})"),
        ));
    }
    Ok(n)
}

fn float_value(v: &Value, path: &str) -> Result<f64, FieldError> {
    v.as_f64()
        .filter(|f| f.is_finite())
        .ok_or_else(|| FieldError::at(path, format!("expected a number, found {}", kind_of(v))))
}

/// Parses a timestamp: RFC 3339 text or epoch milliseconds; returns ns.
fn time_value(v: &Value, path: &str) -> Result<i128, FieldError> {
    match v {
        Value::String(s) => arrow::compute::kernels::cast_utils::string_to_timestamp_nanos(s)
            .map(i128::from)
            .map_err(|e| {
                FieldError::at(
                    path,
                    format!(
                        "`{s}` is not an RFC 3339 timestamp such as `2024-01-01T00:00:00Z` ({e})"
                    ),
                )
            }),
        Value::Number(n) => n
            .as_i64()
            .map(|ms| i128::from(ms) * 1_000_000)
            .ok_or_else(|| FieldError::at(path, "expected epoch milliseconds (an integer)")),
        other => Err(FieldError::at(
            path,
            format!(
                "expected an RFC 3339 timestamp or epoch milliseconds, found {}",
                kind_of(other)
            ),
        )),
    }
}

fn duration_ns(s: &str, path: &str) -> Result<i128, FieldError> {
    weir_engine::time::parse_duration(s)
        .map(|d| d.as_nanos() as i128)
        .map_err(|m| FieldError::at(path, m))
}

/// Builds a field's generator from its options; also returns how many rows the
/// generator can make, if limited (a sequence with an end). Paths are relative to the
/// field's options.
fn field_gen(field: &Field, o: &FieldOptions) -> Result<(FieldGen, Option<u64>), FieldError> {
    let class = Class::of(field.data_type()).ok_or_else(|| {
        FieldError::here(format!(
            "datagen cannot generate values of type {} (field `{}`)",
            field.data_type(),
            field.name()
        ))
    })?;
    // Options that do not apply to the field's type.
    let applies: &[(&str, bool, &[&str])] = &[
        ("min", o.min.is_some(), &["integer", "float"]),
        ("max", o.max.is_some(), &["integer", "float"]),
        ("sequence", o.sequence.is_some(), &["integer"]),
        ("length", o.length.is_some(), &["string"]),
        ("start", o.start.is_some(), &["timestamp"]),
        ("step", o.step.is_some(), &["timestamp"]),
        ("max_delay", o.max_delay.is_some(), &["timestamp"]),
    ];
    for (key, set, classes) in applies {
        if *set && !classes.contains(&class.name()) {
            return Err(FieldError::at(
                format!("/{key}"),
                format!(
                    "`{key}` applies to {} fields, and `{}` is of type {}",
                    classes.join(" and "),
                    field.name(),
                    field.data_type()
                ),
            ));
        }
        if *set && o.values.is_some() {
            return Err(FieldError::at(
                format!("/{key}"),
                format!("`{key}` cannot be combined with `values`"),
            ));
        }
    }
    if o.sequence.is_some() && (o.min.is_some() || o.max.is_some()) {
        return Err(FieldError::at(
            "/sequence",
            "`sequence` cannot be combined with `min`/`max`",
        ));
    }
    let null_rate = o.null_rate.unwrap_or(0.0);
    if !(0.0..=1.0).contains(&null_rate) {
        return Err(FieldError::at(
            "/null_rate",
            "null_rate must be between 0 and 1",
        ));
    }
    let mut limit = None;
    let kind = if let Some(values) = &o.values {
        if values.is_empty() {
            return Err(FieldError::at("/values", "values must not be empty"));
        }
        let mut cells = Vec::with_capacity(values.len());
        for (i, v) in values.iter().enumerate() {
            let path = format!("/values/{i}");
            let cell = match class {
                Class::Int { min, max } => Cell::Int(int_value(v, min, max, &path)?),
                Class::Float => Cell::Float(float_value(v, &path)?),
                Class::Bool => Cell::Bool(v.as_bool().ok_or_else(|| {
                    FieldError::at(&path, format!("expected a boolean, found {}", kind_of(v)))
                })?),
                Class::Str => Cell::Str(
                    v.as_str()
                        .ok_or_else(|| {
                            FieldError::at(
                                &path,
                                format!("expected a string, found {}", kind_of(v)),
                            )
                        })?
                        .to_string(),
                ),
                Class::Time => Cell::Nanos(time_value(v, &path)?),
            };
            cells.push(cell);
        }
        GenKind::Values(cells)
    } else {
        match class {
            Class::Int {
                min: tmin,
                max: tmax,
            } => {
                if let Some(seq) = &o.sequence {
                    let start = i128::from(seq.start);
                    if start < tmin || start > tmax {
                        return Err(FieldError::at(
                            "/sequence/start",
                            format!(
                                "{start} is out of range of {} ({tmin} to {tmax})",
                                field.data_type()
                            ),
                        ));
                    }
                    let end = match seq.end {
                        Some(e) => {
                            let e = i128::from(e);
                            if e < start {
                                return Err(FieldError::at(
                                    "/sequence/end",
                                    format!("end ({e}) is before start ({start})"),
                                ));
                            }
                            if e > tmax {
                                return Err(FieldError::at(
                                    "/sequence/end",
                                    format!(
                                        "{e} is out of range of {} (up to {tmax})",
                                        field.data_type()
                                    ),
                                ));
                            }
                            e
                        }
                        // Ends at the type's maximum at the latest.
                        None => tmax,
                    };
                    if seq.end.is_some() || end - start < i128::from(u32::MAX) {
                        limit = Some(u64::try_from(end - start + 1).unwrap_or(u64::MAX));
                    }
                    GenKind::IntSequence { start }
                } else {
                    let min = match &o.min {
                        Some(v) => int_value(v, tmin, tmax, "/min")?,
                        None => tmin,
                    };
                    let max = match &o.max {
                        Some(v) => int_value(v, tmin, tmax, "/max")?,
                        None => tmax,
                    };
                    if min > max {
                        return Err(FieldError::at(
                            "/min",
                            format!("min ({min}) is greater than max ({max})"),
                        ));
                    }
                    GenKind::IntRange { min, max }
                }
            }
            Class::Float => {
                let min = match &o.min {
                    Some(v) => float_value(v, "/min")?,
                    None => 0.0,
                };
                let max = match &o.max {
                    Some(v) => float_value(v, "/max")?,
                    None => 1.0,
                };
                if min > max {
                    return Err(FieldError::at(
                        "/min",
                        format!("min ({min}) is greater than max ({max})"),
                    ));
                }
                GenKind::FloatRange { min, max }
            }
            Class::Bool => GenKind::Bool,
            Class::Str => GenKind::Str {
                length: o.length.unwrap_or(DEFAULT_STRING_LENGTH),
            },
            Class::Time => {
                let start = match &o.start {
                    Some(v) => time_value(v, "/start")?,
                    None => DEFAULT_START_NS,
                };
                let step = match &o.step {
                    Some(s) => duration_ns(s, "/step")?,
                    None => DEFAULT_STEP_NS,
                };
                let max_delay = match &o.max_delay {
                    Some(s) => duration_ns(s, "/max_delay")?,
                    None => 0,
                };
                GenKind::Time {
                    start,
                    step,
                    max_delay,
                }
            }
        }
    };
    Ok((
        FieldGen {
            data_type: field.data_type().clone(),
            key: fnv1a(field.name().as_bytes()),
            null_rate,
            kind,
        },
        limit,
    ))
}

/// FNV-1a, 64 bits: a stable hash of field names.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl FieldGen {
    /// The value of this field in row `row`; a random string is written into `scratch`.
    fn cell<'a>(&'a self, seed: u64, row: u64, scratch: &'a mut String) -> Option<CellRef<'a>> {
        let mut rng = Rng::new(seed, self.key, row);
        if self.null_rate > 0.0 && rng.next_f64() < self.null_rate {
            return None;
        }
        Some(match &self.kind {
            GenKind::Values(v) => CellRef::from(&v[rng.below(v.len() as u64) as usize]),
            GenKind::IntRange { min, max } => CellRef::Int(rng.int_in(*min, *max)),
            GenKind::IntSequence { start } => CellRef::Int(start + i128::from(row)),
            GenKind::FloatRange { min, max } => CellRef::Float(min + rng.next_f64() * (max - min)),
            GenKind::Bool => CellRef::Bool(rng.next_u64() & 1 == 1),
            GenKind::Str { length } => {
                scratch.clear();
                scratch.extend(
                    (0..*length).map(|_| {
                        ALPHANUMERIC[rng.below(ALPHANUMERIC.len() as u64) as usize] as char
                    }),
                );
                CellRef::Str(scratch.as_str())
            }
            GenKind::Time {
                start,
                step,
                max_delay,
            } => {
                let delay = if *max_delay > 0 {
                    rng.int_in(0, *max_delay)
                } else {
                    0
                };
                CellRef::Nanos(start + step * i128::from(row) - delay)
            }
        })
    }

    /// The column of this field for `rows`.
    fn column(&self, seed: u64, rows: &[u64]) -> Result<ArrayRef> {
        let mut scratch = String::new();
        // Strings go straight into the column's buffers.
        let strings = |append: &mut dyn FnMut(Option<&str>), scratch: &mut String| {
            for &r in rows {
                match self.cell(seed, r, scratch) {
                    Some(CellRef::Str(s)) => append(Some(s)),
                    _ => append(None),
                }
            }
        };
        match &self.data_type {
            DataType::Utf8 => {
                let mut b = StringBuilder::with_capacity(rows.len(), rows.len() * 8);
                strings(&mut |v| b.append_option(v), &mut scratch);
                return Ok(Arc::new(b.finish()));
            }
            DataType::LargeUtf8 => {
                let mut b = LargeStringBuilder::with_capacity(rows.len(), rows.len() * 8);
                strings(&mut |v| b.append_option(v), &mut scratch);
                return Ok(Arc::new(b.finish()));
            }
            _ => {}
        }
        // Other types hold no strings: their cells are plain values.
        let cells: Vec<Option<Cell>> = rows
            .iter()
            .map(|&r| match self.cell(seed, r, &mut scratch)? {
                CellRef::Int(i) => Some(Cell::Int(i)),
                CellRef::Float(f) => Some(Cell::Float(f)),
                CellRef::Bool(b) => Some(Cell::Bool(b)),
                CellRef::Nanos(n) => Some(Cell::Nanos(n)),
                CellRef::Str(_) => None,
            })
            .collect();
        let ints = || {
            cells.iter().map(|c| match c {
                Some(Cell::Int(i)) => Some(*i),
                _ => None,
            })
        };
        let floats = || {
            cells.iter().map(|c| match c {
                Some(Cell::Float(f)) => Some(*f),
                _ => None,
            })
        };
        // Timestamps in a unit: ns divided (floor) by `div`, clamped to i64.
        let nanos = |div: i128| {
            cells
                .iter()
                .map(move |c| match c {
                    Some(Cell::Nanos(n)) => {
                        Some(n.div_euclid(div).clamp(i64::MIN.into(), i64::MAX.into()) as i64)
                    }
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        // Values were range-checked against the type at build time: `as` does not wrap.
        let array: ArrayRef = match &self.data_type {
            DataType::Int8 => Arc::new(Int8Array::from_iter(ints().map(|v| v.map(|x| x as i8)))),
            DataType::Int16 => Arc::new(Int16Array::from_iter(ints().map(|v| v.map(|x| x as i16)))),
            DataType::Int32 => Arc::new(Int32Array::from_iter(ints().map(|v| v.map(|x| x as i32)))),
            DataType::Int64 => Arc::new(Int64Array::from_iter(ints().map(|v| v.map(|x| x as i64)))),
            DataType::UInt8 => Arc::new(UInt8Array::from_iter(ints().map(|v| v.map(|x| x as u8)))),
            DataType::UInt16 => {
                Arc::new(UInt16Array::from_iter(ints().map(|v| v.map(|x| x as u16))))
            }
            DataType::UInt32 => {
                Arc::new(UInt32Array::from_iter(ints().map(|v| v.map(|x| x as u32))))
            }
            DataType::UInt64 => {
                Arc::new(UInt64Array::from_iter(ints().map(|v| v.map(|x| x as u64))))
            }
            DataType::Float32 => Arc::new(Float32Array::from_iter(
                floats().map(|v| v.map(|x| x as f32)),
            )),
            DataType::Float64 => Arc::new(Float64Array::from_iter(floats())),
            DataType::Boolean => Arc::new(BooleanArray::from_iter(cells.iter().map(|c| match c {
                Some(Cell::Bool(b)) => Some(*b),
                _ => None,
            }))),
            DataType::Timestamp(unit, tz) => match unit {
                TimeUnit::Second => Arc::new(
                    TimestampSecondArray::from(nanos(1_000_000_000)).with_timezone_opt(tz.clone()),
                ),
                TimeUnit::Millisecond => Arc::new(
                    TimestampMillisecondArray::from(nanos(1_000_000)).with_timezone_opt(tz.clone()),
                ),
                TimeUnit::Microsecond => Arc::new(
                    TimestampMicrosecondArray::from(nanos(1_000)).with_timezone_opt(tz.clone()),
                ),
                TimeUnit::Nanosecond => {
                    Arc::new(TimestampNanosecondArray::from(nanos(1)).with_timezone_opt(tz.clone()))
                }
            },
            DataType::Date32 => Arc::new(Date32Array::from_iter(
                nanos(86_400_000_000_000)
                    .into_iter()
                    .map(|v| v.map(|d| d.clamp(i32::MIN.into(), i32::MAX.into()) as i32)),
            )),
            DataType::Date64 => Arc::new(Date64Array::from(nanos(1_000_000))),
            other => {
                return Err(EngineError::connector(
                    "datagen",
                    format!("cannot generate values of type {other}"),
                    false,
                ))
            }
        };
        Ok(array)
    }
}

/// One subtask of a datagen source.
#[derive(Debug)]
pub struct DatagenSource {
    config: Arc<DatagenConfig>,
    subtask: u64,
    parallelism: u64,
    /// Global index of the next row this subtask produces (`≡ subtask mod parallelism`).
    next: u64,
    batch_size: u64,
    linger: Duration,
    /// With a rate: when row `base` was due (rows after it are due `(r - base) / rate`
    /// seconds later). Set at the first poll (after a restore: from the restored row).
    clock: Option<(Instant, u64)>,
    split_ended: bool,
    source: String,
}

impl DatagenSource {
    /// Subtask `ctx.subtask` of a datagen source.
    pub fn new(config: Arc<DatagenConfig>, ctx: &SourceContext) -> Self {
        DatagenSource {
            config,
            subtask: ctx.subtask as u64,
            parallelism: ctx.parallelism.max(1) as u64,
            next: ctx.subtask as u64,
            batch_size: ctx.batch_size.max(1) as u64,
            linger: ctx.linger,
            clock: None,
            split_ended: false,
            source: ctx.source.clone(),
        }
    }

    /// Rows this subtask has still to produce (`None`: unbounded).
    fn remaining(&self) -> Option<u64> {
        self.config.total.map(|t| {
            if self.next >= t {
                0
            } else {
                (t - self.next).div_ceil(self.parallelism)
            }
        })
    }

    /// The `k`-th row of this subtask from `next`.
    fn row(&self, k: u64) -> u64 {
        self.next.saturating_add(k.saturating_mul(self.parallelism))
    }

    /// When (after the clock's start) row `r` is due.
    fn due(&self, r: u64, base: u64, rate: f64) -> Duration {
        let secs = r.saturating_sub(base) as f64 / rate;
        // Capped so that `Instant + due` cannot overflow for absurdly small rates.
        const CAP: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
        Duration::try_from_secs_f64(secs).unwrap_or(CAP).min(CAP)
    }

    /// How many of the next `want` rows are due `elapsed` after the clock's start.
    fn due_count(&self, want: u64, elapsed: Duration, base: u64, rate: f64) -> u64 {
        // Due times grow with k: binary search the first row not yet due.
        let (mut lo, mut hi) = (0u64, want);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.due(self.row(mid), base, rate) <= elapsed {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    fn batch(&self, n: u64) -> Result<RecordBatch> {
        let rows: Vec<u64> = (0..n).map(|k| self.row(k)).collect();
        let cols = self
            .config
            .fields
            .iter()
            .map(|g| g.column(self.config.seed, &rows))
            .collect::<Result<Vec<_>>>()?;
        RecordBatch::try_new(self.config.schema.clone(), cols)
            .map_err(|e| EngineError::arrow("building a datagen batch", e))
    }
}

#[async_trait::async_trait]
impl Source for DatagenSource {
    fn schema(&self) -> SchemaRef {
        self.config.schema.clone()
    }

    async fn poll_next(&mut self) -> Result<SourcePoll> {
        let split = u32::try_from(self.subtask).unwrap_or(u32::MAX);
        let remaining = self.remaining();
        if remaining == Some(0) {
            if !self.split_ended {
                self.split_ended = true;
                tracing::debug!(source = %self.source, subtask = self.subtask, "datagen done");
                return Ok(SourcePoll::SplitEnd(split));
            }
            return Ok(SourcePoll::Finished);
        }
        let want = remaining.map_or(self.batch_size, |r| r.min(self.batch_size));
        let n = match self.config.rate {
            None => want,
            Some(rate) => {
                let next = self.next;
                // Row `base` (a multiple of the parallelism) is due at `t0`: the subtasks
                // share one timeline, row `r` due `(r - base) / rate` after the start.
                let base = next - next % self.parallelism;
                let (t0, base) = *self.clock.get_or_insert_with(|| (Instant::now(), base));
                let now = Instant::now();
                let due = self.due_count(want, now.duration_since(t0), base, rate);
                let first = t0 + self.due(self.row(0), base, rate);
                let linger_end = first + self.linger;
                if due == want || (due > 0 && now >= linger_end) {
                    due
                } else {
                    // Wait until the batch is full or the first row has lingered.
                    let full = t0 + self.due(self.row(want - 1), base, rate);
                    let target = full.min(linger_end);
                    let wait = target.saturating_duration_since(now);
                    if wait > MAX_SLEEP {
                        tokio::time::sleep(MAX_SLEEP).await;
                        return Ok(SourcePoll::Pending(wait - MAX_SLEEP));
                    }
                    tokio::time::sleep_until(target).await;
                    // The first row is due by `target`: at least one row.
                    self.due_count(want, target.duration_since(t0), base, rate)
                        .max(1)
                }
            }
        };
        let batch = self.batch(n)?;
        self.next = self.row(n);
        Ok(SourcePoll::Batch { split, batch })
    }

    fn split_description(&self, split: u32) -> String {
        format!("datagen subtask {split}")
    }

    fn position(&self) -> Value {
        Value::from(self.next)
    }

    fn restore(&mut self, position: &Value) -> Result<()> {
        if position.is_null() {
            return Ok(());
        }
        let n = position
            .as_u64()
            .or_else(|| position.get("next_row").and_then(Value::as_u64))
            .ok_or_else(|| {
                EngineError::connector(
                    format!("datagen source {}", self.source),
                    format!("invalid position {position}: expected the next row index"),
                    false,
                )
            })?;
        // The first row of this subtask at or after `n`.
        let aligned = stride_at_or_after(n, self.subtask, self.parallelism);
        if aligned != n {
            tracing::warn!(
                source = %self.source,
                position = n,
                resumed_at = aligned,
                "datagen position is not a row of this subtask; resuming at its next row"
            );
        }
        self.next = aligned;
        self.clock = None;
        self.split_ended = false;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests fail loudly on purpose.
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Int64Type, TimestampMillisecondType};
    use serde_json::json;

    /// The error of a build that must fail.
    fn err<T>(r: Result<T, FieldError>) -> FieldError {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => e,
        }
    }

    fn ctx(subtask: usize, parallelism: usize, batch_size: usize) -> SourceContext {
        SourceContext {
            job: "job".into(),
            source: "gen".into(),
            subtask,
            parallelism,
            batch_size,
            linger: Duration::from_millis(200),
        }
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            Field::new("level", DataType::Utf8, false),
            Field::new("name", DataType::Utf8, false),
            Field::new("score", DataType::Float64, false),
            Field::new("small", DataType::Int8, false),
            Field::new("flag", DataType::Boolean, false),
        ]))
    }

    fn build(options: Value, schema: Option<SchemaRef>) -> Result<SourceBuild, FieldError> {
        let bctx = BuildContext {
            checkpoints: Default::default(),
            aggregates: Default::default(),
            job: "job".into(),
            base_dir: ".".into(),
        };
        DatagenFactory.build(&bctx, "gen", &options, schema)
    }

    /// Runs every subtask to the end (sleeping on `Pending`); returns each row as a JSON
    /// line, per subtask.
    async fn run(b: &SourceBuild, parallelism: usize, batch_size: usize) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        for s in 0..parallelism {
            let mut src = (b.create)(&ctx(s, parallelism, batch_size)).unwrap();
            let mut rows = Vec::new();
            let mut ended = false;
            loop {
                match src.poll_next().await.unwrap() {
                    SourcePoll::Batch { split, batch } => {
                        assert_eq!(split as usize, s);
                        assert!(batch.num_rows() > 0 && batch.num_rows() <= batch_size);
                        assert_eq!(batch.schema(), b.schema);
                        rows.extend(to_json(&batch));
                    }
                    SourcePoll::SplitEnd(split) => {
                        assert_eq!(split as usize, s);
                        ended = true;
                    }
                    SourcePoll::Pending(d) => tokio::time::sleep(d).await,
                    SourcePoll::NewSplits(_) => {}
                    SourcePoll::Finished => break,
                }
            }
            assert!(ended);
            out.push(rows);
        }
        out
    }

    fn to_json(batch: &RecordBatch) -> Vec<String> {
        let mut buf = Vec::new();
        let mut w = arrow::json::LineDelimitedWriter::new(&mut buf);
        w.write(batch).unwrap();
        w.finish().unwrap();
        String::from_utf8(buf)
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    }

    fn options() -> Value {
        json!({
            "rows": 100,
            "seed": 7,
            "fields": {
                "id": {"sequence": {"start": 1000}},
                "ts": {"start": "2024-06-01T00:00:00Z", "step": "10ms", "max_delay": "50ms"},
                "level": {"values": ["INFO", "WARN", "ERROR"]},
                "name": {"length": 5},
                "score": {"min": 10, "max": 20},
                "small": {"min": -3, "max": 3},
            }
        })
    }

    #[tokio::test]
    async fn same_seed_same_rows_whatever_the_parallelism() {
        let b = build(options(), Some(schema())).unwrap();
        assert!(b.bounded && !b.needs_format);
        let one = run(&b, 1, 16).await.concat();
        assert_eq!(one.len(), 100);
        assert_eq!(run(&b, 1, 7).await.concat(), one, "batch size changes rows");
        let again = build(options(), Some(schema())).unwrap();
        assert_eq!(run(&again, 1, 16).await.concat(), one);
        let three = run(&b, 3, 16).await;
        assert_eq!(
            three.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![34, 33, 33]
        );
        let mut a = one.clone();
        let mut c = three.concat();
        a.sort();
        c.sort();
        assert_eq!(a, c);
        // Subtask 1 of 3 produces rows 1, 4, 7, … of the single-subtask run.
        let expect: Vec<_> = one.iter().skip(1).step_by(3).cloned().collect();
        assert_eq!(three[1], expect);
        // Another seed gives other rows.
        let mut o = options();
        o["seed"] = json!(8);
        let other = run(&build(o, Some(schema())).unwrap(), 1, 16)
            .await
            .concat();
        assert_ne!(other, one);
        // Adding a field does not change the others' values.
        let mut o = options();
        o["fields"]["extra"] = json!({"min": 1, "max": 2});
        let mut fields: Vec<Field> = schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.insert(0, Field::new("extra", DataType::Int32, false));
        let wider = build(o, Some(Arc::new(Schema::new(fields)))).unwrap();
        let w = run(&wider, 1, 100).await.concat();
        let strip = |s: &String| {
            let mut v: Value = serde_json::from_str(s).unwrap();
            v.as_object_mut().unwrap().remove("extra");
            v
        };
        let one_v: Vec<Value> = one
            .iter()
            .map(|s| serde_json::from_str(s).unwrap())
            .collect();
        assert_eq!(w.iter().map(strip).collect::<Vec<_>>(), one_v);
    }

    #[tokio::test]
    async fn field_generators() {
        let b = build(options(), Some(schema())).unwrap();
        let mut src = (b.create)(&ctx(0, 1, 1000)).unwrap();
        let SourcePoll::Batch { batch, .. } = src.poll_next().await.unwrap() else {
            panic!("expected a batch")
        };
        assert_eq!(batch.num_rows(), 100);
        let id = batch.column(0).as_primitive::<Int64Type>();
        assert_eq!(id.values().to_vec(), (1000..1100).collect::<Vec<i64>>());
        let ts = batch.column(1).as_primitive::<TimestampMillisecondType>();
        let start = 1_717_200_000_000i64; // 2024-06-01T00:00:00Z
        let mut out_of_order = 0;
        for i in 0..100 {
            let nominal = start + 10 * i as i64;
            let t = ts.value(i);
            assert!(t <= nominal && t >= nominal - 50, "row {i}: {t}");
            if i > 0 && t < ts.value(i - 1) {
                out_of_order += 1;
            }
        }
        assert!(
            out_of_order > 0,
            "max_delay should make some rows out of order"
        );
        let level = batch.column(2).as_string::<i32>();
        let mut seen = std::collections::BTreeSet::new();
        for v in level.iter() {
            let v = v.unwrap();
            assert!(["INFO", "WARN", "ERROR"].contains(&v));
            seen.insert(v.to_string());
        }
        assert_eq!(seen.len(), 3);
        let name = batch.column(3).as_string::<i32>();
        assert!(name.iter().all(
            |n| n.unwrap().len() == 5 && n.unwrap().bytes().all(|c| c.is_ascii_alphanumeric())
        ));
        let score = batch
            .column(4)
            .as_primitive::<arrow::datatypes::Float64Type>();
        assert!(score.values().iter().all(|s| (10.0..20.0).contains(s)));
        let small = batch.column(5).as_primitive::<arrow::datatypes::Int8Type>();
        assert!(small.values().iter().all(|s| (-3..=3).contains(s)));
        assert!(small.values().contains(&-3) && small.values().contains(&3));
        let flag = batch.column(6).as_boolean();
        assert!(flag.true_count() > 20 && flag.false_count() > 20);
        assert_eq!(batch.column(6).null_count(), 0);
        // After the rows: the split ends, then the source is finished.
        assert!(matches!(
            src.poll_next().await.unwrap(),
            SourcePoll::SplitEnd(0)
        ));
        assert!(matches!(
            src.poll_next().await.unwrap(),
            SourcePoll::Finished
        ));
    }

    #[tokio::test]
    async fn nulls_sequences_and_defaults() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int32, false),
            Field::new("maybe", DataType::Utf8, false),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new("d", DataType::Date32, false),
            Field::new("u", DataType::UInt64, false),
        ]));
        let b = build(
            json!({
                "fields": {
                    "n": {"sequence": {"start": 5, "end": 14}},
                    "maybe": {"null_rate": 0.5},
                    "ts": {"start": 0},
                }
            }),
            Some(schema),
        )
        .unwrap();
        // The sequence bounds the source: 10 rows.
        assert!(b.bounded);
        assert!(b.schema.field_with_name("maybe").unwrap().is_nullable());
        assert!(!b.schema.field_with_name("n").unwrap().is_nullable());
        let rows = run(&b, 2, 3).await.concat();
        assert_eq!(rows.len(), 10);
        let mut src = (b.create)(&ctx(0, 1, 100)).unwrap();
        let SourcePoll::Batch { batch, .. } = src.poll_next().await.unwrap() else {
            panic!("expected a batch")
        };
        let maybe = batch.column(1);
        assert!(maybe.null_count() > 0 && maybe.null_count() < 10);
        let ts = batch
            .column(2)
            .as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
        assert_eq!(ts.value(0), 0);
        assert_eq!(ts.value(3), 3_000);
        let d = batch
            .column(3)
            .as_primitive::<arrow::datatypes::Date32Type>();
        assert_eq!(d.value(0), 19_723); // 2024-01-01
                                        // An unbounded source keeps going.
        let s = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)]));
        let b = build(json!({}), Some(s)).unwrap();
        assert!(!b.bounded);
        let mut src = (b.create)(&ctx(0, 1, 50)).unwrap();
        for _ in 0..5 {
            let SourcePoll::Batch { batch, .. } = src.poll_next().await.unwrap() else {
                panic!("expected a batch")
            };
            assert_eq!(batch.num_rows(), 50);
        }
        assert_eq!(src.position(), json!(250));
    }

    #[tokio::test(start_paused = true)]
    async fn rate_is_honoured_on_the_paused_clock() {
        let s = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let b = build(json!({"rows": 100, "rate": 50}), Some(s)).unwrap();
        for parallelism in [1usize, 2] {
            for subtask in 0..parallelism {
                let mut src = (b.create)(&ctx(subtask, parallelism, 10)).unwrap();
                let start = Instant::now();
                let mut rows = 0;
                let mut polls = 0;
                let mut times = Vec::new();
                loop {
                    polls += 1;
                    assert!(polls < 1000, "too many polls: busy waiting?");
                    match src.poll_next().await.unwrap() {
                        SourcePoll::Batch { batch, .. } => {
                            rows += batch.num_rows();
                            times.push((start.elapsed(), rows));
                        }
                        SourcePoll::Pending(d) => tokio::time::sleep(d).await,
                        SourcePoll::SplitEnd(_) => {}
                        SourcePoll::NewSplits(_) => {}
                        SourcePoll::Finished => break,
                    }
                }
                assert_eq!(rows, 100 / parallelism);
                let took = start.elapsed();
                // The last row (98 or 99) is due at about 1.97 s.
                assert!(
                    took >= Duration::from_millis(1950) && took <= Duration::from_millis(2100),
                    "p={parallelism}: took {took:?}"
                );
                // Never ahead of the rate: n rows of this subtask by t need t ≥ ((n-1)·p + s) / rate.
                for (t, n) in times {
                    let due = ((n - 1) * parallelism + subtask) as f64 / 50.0;
                    assert!(t.as_secs_f64() + 1e-6 >= due, "{n} rows at {t:?}");
                }
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn slow_rate_closes_batches_by_linger() {
        let s = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        // 5 rows/s, batches of 100, linger 200 ms: batches of about one row.
        let b = build(json!({"rows": 6, "rate": 5}), Some(s)).unwrap();
        let mut src = (b.create)(&ctx(0, 1, 100)).unwrap();
        let start = Instant::now();
        let mut sizes = Vec::new();
        loop {
            match src.poll_next().await.unwrap() {
                SourcePoll::Batch { batch, .. } => {
                    sizes.push((start.elapsed().as_millis(), batch.num_rows()))
                }
                SourcePoll::Pending(d) => tokio::time::sleep(d).await,
                SourcePoll::SplitEnd(_) => {}
                SourcePoll::NewSplits(_) => {}
                SourcePoll::Finished => break,
            }
        }
        // Rows are due at 0, 200, …, 1000 ms; a batch closes when its first row has
        // lingered 200 ms.
        assert_eq!(sizes, vec![(200, 2), (600, 2), (1000, 2)]);
    }

    #[tokio::test]
    async fn position_and_restore() {
        let b = build(options(), Some(schema())).unwrap();
        let whole = run(&b, 2, 8).await;
        for (subtask, expected) in whole.iter().enumerate() {
            let mut first = (b.create)(&ctx(subtask, 2, 8)).unwrap();
            let mut rows = Vec::new();
            for _ in 0..3 {
                let SourcePoll::Batch { batch, .. } = first.poll_next().await.unwrap() else {
                    panic!("expected a batch")
                };
                rows.extend(to_json(&batch));
            }
            let pos = first.position();
            assert_eq!(pos, json!(48 + subtask));
            let mut second = (b.create)(&ctx(subtask, 2, 8)).unwrap();
            second.restore(&pos).unwrap();
            loop {
                match second.poll_next().await.unwrap() {
                    SourcePoll::Batch { batch, .. } => rows.extend(to_json(&batch)),
                    SourcePoll::NewSplits(_) => {}
                    SourcePoll::Finished => break,
                    _ => {}
                }
            }
            assert_eq!(&rows, expected);
        }
    }

    #[test]
    fn restore_with_another_parallelism_is_refused() {
        let b = build(options(), Some(schema())).unwrap();
        let mut src = (b.create)(&ctx(0, 3, 8)).unwrap();
        let e = src.restore_all(&[json!(16), json!(9)]).unwrap_err();
        assert!(e.to_string().contains("another parallelism"), "{e}");
        assert!(e.to_string().contains("(the checkpoint has 2)"), "{e}");
    }

    #[test]
    fn option_errors() {
        let e = err(build(json!({"rows": 1}), None));
        assert_eq!(e.path, "/schema");
        let cases = [
            (json!({"rowz": 1}), "/rowz"),
            (json!({"rate": 0}), "/rate"),
            (json!({"rate": "fast"}), "/rate"),
            (json!({"fields": {"nope": {}}}), "/fields/nope"),
            (
                json!({"fields": {"id": {"lenght": 3}}}),
                "/fields/id/lenght",
            ),
            (
                json!({"fields": {"id": {"length": 3}}}),
                "/fields/id/length",
            ),
            (
                json!({"fields": {"level": {"min": 3}}}),
                "/fields/level/min",
            ),
            (
                json!({"fields": {"small": {"max": 300}}}),
                "/fields/small/max",
            ),
            (
                json!({"fields": {"small": {"min": 3, "max": 1}}}),
                "/fields/small/min",
            ),
            (
                json!({"fields": {"small": {"values": [1, "x"]}}}),
                "/fields/small/values/1",
            ),
            (
                json!({"fields": {"small": {"values": [1], "min": 0}}}),
                "/fields/small/min",
            ),
            (
                json!({"fields": {"small": {"values": []}}}),
                "/fields/small/values",
            ),
            (
                json!({"fields": {"ts": {"step": "often"}}}),
                "/fields/ts/step",
            ),
            (
                json!({"fields": {"ts": {"max_delay": "5 parsecs"}}}),
                "/fields/ts/max_delay",
            ),
            (
                json!({"fields": {"ts": {"start": "yesterday"}}}),
                "/fields/ts/start",
            ),
            (
                json!({"fields": {"ts": {"start": true}}}),
                "/fields/ts/start",
            ),
            (
                json!({"fields": {"id": {"sequence": {"start": 5, "end": 1}}}}),
                "/fields/id/sequence/end",
            ),
            (
                json!({"fields": {"id": {"sequence": {"begin": 5}}}}),
                "/fields/id/sequence",
            ),
            (
                json!({"fields": {"id": {"sequence": {"start": "one"}}}}),
                "/fields/id/sequence",
            ),
            (
                json!({"fields": {"id": {"null_rate": 2}}}),
                "/fields/id/null_rate",
            ),
            (json!({"fields": {"level": "INFO"}}), "/fields/level"),
        ];
        for (opts, path) in cases {
            let e = err(build(opts.clone(), Some(schema())));
            assert_eq!(e.path, path, "{opts}: {e}");
        }
        // A type datagen cannot make, not configured: error at the schema field.
        let s = Arc::new(Schema::new(vec![Field::new("b", DataType::Binary, false)]));
        let e = err(build(json!({}), Some(s)));
        assert_eq!(e.path, "/schema/b");
        let e = err(build(json!({}), Some(Arc::new(Schema::empty()))));
        assert_eq!(e.path, "/schema");
    }

    #[test]
    fn options_schema_documents_the_keys() {
        let s = DatagenFactory.options_schema();
        assert_eq!(s["type"], "object");
        let props = s["properties"].as_object().unwrap();
        for k in ["rows", "rate", "seed", "fields"] {
            assert!(props[k]["description"].is_string(), "{k}");
        }
        let field = &props["fields"]["additionalProperties"];
        assert_eq!(field["additionalProperties"], false);
        for k in [
            "values",
            "min",
            "max",
            "sequence",
            "length",
            "null_rate",
            "start",
            "step",
            "max_delay",
        ] {
            assert!(field["properties"][k].is_object(), "{k}");
        }
        assert!(!s.to_string().contains("$ref"), "{s}");
    }
}
