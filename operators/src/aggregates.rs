//! The built-in aggregate functions of windows: `count`, `sum`, `min`, `max`, `avg`,
//! `first`, `last` and the exact distinct count `count_distinct` (what
//! `count(distinct x)` calls). They implement
//! [`weir_engine::aggregate::AggregateFunction`] and are added to a registry by
//! [`crate::register`].
//!
//! | function | argument types | result |
//! |----------|----------------|--------|
//! | `count(*)` / `count()` | none | `Int64`, the number of rows |
//! | `count(x)` | any | `Int64`, the number of non-null values |
//! | `count_distinct(x)` | integers, floats, strings, booleans, timestamps, dates, times, durations | `Int64` |
//! | `sum(x)` | integers (wrapping) / floats | `Int64` / `Float64` |
//! | `avg(x)` | integers, floats | `Float64` |
//! | `min(x)`, `max(x)` | integers, floats, strings, booleans, timestamps, dates, times, durations | the argument's type |
//! | `first(x)`, `last(x)` | same as `min` | the argument's type: the value of the row with the smallest / largest event time (ties: earliest / latest arrival) |
//!
//! Nulls are skipped by everything but `count(*)`; an aggregate that saw no non-null
//! value is null (`count`: 0). Accumulators read whole Arrow columns at the given row
//! indexes with one type dispatch per call, never one boxed value per row; they
//! serialise (postcard) only in [`Accumulator::state`].

use std::cmp::Ordering;

use ahash::AHashSet;
use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{
    DataType, Date32Type, Date64Type, DurationMicrosecondType, DurationMillisecondType,
    DurationNanosecondType, DurationSecondType, Float32Type, Float64Type, Int16Type, Int32Type,
    Int64Type, Int8Type, Time32MillisecondType, Time32SecondType, Time64MicrosecondType,
    Time64NanosecondType, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use datafusion::common::ScalarValue;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use weir_engine::aggregate::{Accumulator, AggregateFunction};
use weir_engine::{EngineError, Result};

/// The built-in aggregate functions. Each variant is an [`AggregateFunction`]; register
/// them all with [`BuiltinAggregate::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BuiltinAggregate {
    /// `count(*)` counts rows, `count(x)` non-null values.
    Count,
    /// `count_distinct(x)` (written `count(distinct x)` in a window): exact number of
    /// distinct non-null values.
    CountDistinct,
    /// `sum(x)`: `Int64` (wrapping) for integers, `Float64` for floats.
    Sum,
    /// `min(x)`: the smallest value (floats: NaN is the largest).
    Min,
    /// `max(x)`: the largest value (floats: NaN is the largest).
    Max,
    /// `avg(x)`: the mean as `Float64`.
    Avg,
    /// `first(x)`: the value of the row with the smallest event time.
    First,
    /// `last(x)`: the value of the row with the largest event time.
    Last,
}

impl BuiltinAggregate {
    /// Every built-in aggregate.
    pub const ALL: [BuiltinAggregate; 8] = [
        BuiltinAggregate::Count,
        BuiltinAggregate::CountDistinct,
        BuiltinAggregate::Sum,
        BuiltinAggregate::Min,
        BuiltinAggregate::Max,
        BuiltinAggregate::Avg,
        BuiltinAggregate::First,
        BuiltinAggregate::Last,
    ];
}

/// The value categories the accumulators handle, each read with one native type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Signed integers and everything stored as one (timestamps, dates, times,
    /// durations): read as `i64`.
    Signed,
    /// Unsigned integers: read as `u64`.
    Unsigned,
    /// Floats: read as `f64`.
    Float,
    /// Strings of every layout: read as `&str`.
    Str,
    /// Booleans.
    Bool,
}

fn kind_of(dt: &DataType) -> Option<Kind> {
    use DataType as D;
    Some(match dt {
        D::Int8 | D::Int16 | D::Int32 | D::Int64 | D::Date32 | D::Date64 => Kind::Signed,
        D::Time32(TimeUnit::Second | TimeUnit::Millisecond) => Kind::Signed,
        D::Time64(TimeUnit::Microsecond | TimeUnit::Nanosecond) => Kind::Signed,
        D::Timestamp(_, _) | D::Duration(_) => Kind::Signed,
        D::UInt8 | D::UInt16 | D::UInt32 | D::UInt64 => Kind::Unsigned,
        D::Float32 | D::Float64 => Kind::Float,
        D::Utf8 | D::LargeUtf8 | D::Utf8View => Kind::Str,
        D::Boolean => Kind::Bool,
        _ => return None,
    })
}

fn is_integer(dt: &DataType) -> bool {
    use DataType as D;
    matches!(
        dt,
        D::Int8 | D::Int16 | D::Int32 | D::Int64 | D::UInt8 | D::UInt16 | D::UInt32 | D::UInt64
    )
}

fn is_float(dt: &DataType) -> bool {
    matches!(dt, DataType::Float32 | DataType::Float64)
}

fn agg_error(message: impl Into<String>) -> EngineError {
    EngineError::operator("aggregate", message)
}

fn mismatch(dt: &DataType) -> EngineError {
    agg_error(format!("unexpected argument column of type {dt}"))
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    postcard::to_allocvec(v).map_err(|e| agg_error(format!("serialising state: {e}")))
}

fn encode_into<T: Serialize>(v: &T, out: &mut Vec<u8>) -> Result<()> {
    let buf = std::mem::take(out);
    *out = postcard::to_extend(v, buf).map_err(|e| agg_error(format!("serialising state: {e}")))?;
    Ok(())
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|e| agg_error(format!("reading state: {e}")))
}

/// The argument column, or an error for functions that need one.
fn need<'a>(values: Option<&'a ArrayRef>, what: &str) -> Result<&'a dyn Array> {
    values
        .map(|a| a.as_ref())
        .ok_or_else(|| agg_error(format!("{what} needs an argument column")))
}

/// Calls `$f(position in rows, native value)` for every non-null row of a primitive
/// array of Arrow type `$t`.
macro_rules! each_valid_primitive {
    ($values:expr, $t:ty, $rows:expr, $f:expr) => {{
        let a = $values
            .as_primitive_opt::<$t>()
            .ok_or_else(|| mismatch($values.data_type()))?;
        let vals = a.values();
        if a.null_count() == 0 {
            for (p, &r) in $rows.iter().enumerate() {
                if let Some(&v) = vals.get(r as usize) {
                    $f(p, v);
                }
            }
        } else {
            for (p, &r) in $rows.iter().enumerate() {
                let r = r as usize;
                if a.is_valid(r) {
                    if let Some(&v) = vals.get(r) {
                        $f(p, v);
                    }
                }
            }
        }
    }};
}

/// Every non-null value of a signed column (integers, timestamps, dates, times,
/// durations) at `rows`, as `i64`, with its position in `rows`.
fn each_signed(values: &dyn Array, rows: &[u32], mut f: impl FnMut(usize, i64)) -> Result<()> {
    use DataType as D;
    let mut g = |p: usize, v: i64| f(p, v);
    macro_rules! go {
        ($t:ty) => {
            each_valid_primitive!(values, $t, rows, |p, v| g(p, i64::from(v)))
        };
    }
    match values.data_type() {
        D::Int8 => go!(Int8Type),
        D::Int16 => go!(Int16Type),
        D::Int32 => go!(Int32Type),
        D::Int64 => go!(Int64Type),
        D::Date32 => go!(Date32Type),
        D::Date64 => go!(Date64Type),
        D::Time32(TimeUnit::Second) => go!(Time32SecondType),
        D::Time32(TimeUnit::Millisecond) => go!(Time32MillisecondType),
        D::Time64(TimeUnit::Microsecond) => go!(Time64MicrosecondType),
        D::Time64(TimeUnit::Nanosecond) => go!(Time64NanosecondType),
        D::Timestamp(TimeUnit::Second, _) => go!(TimestampSecondType),
        D::Timestamp(TimeUnit::Millisecond, _) => go!(TimestampMillisecondType),
        D::Timestamp(TimeUnit::Microsecond, _) => go!(TimestampMicrosecondType),
        D::Timestamp(TimeUnit::Nanosecond, _) => go!(TimestampNanosecondType),
        D::Duration(TimeUnit::Second) => go!(DurationSecondType),
        D::Duration(TimeUnit::Millisecond) => go!(DurationMillisecondType),
        D::Duration(TimeUnit::Microsecond) => go!(DurationMicrosecondType),
        D::Duration(TimeUnit::Nanosecond) => go!(DurationNanosecondType),
        other => return Err(mismatch(other)),
    }
    Ok(())
}

/// Every non-null value of an unsigned integer column at `rows`, as `u64`.
fn each_unsigned(values: &dyn Array, rows: &[u32], mut f: impl FnMut(usize, u64)) -> Result<()> {
    use DataType as D;
    let mut g = |p: usize, v: u64| f(p, v);
    macro_rules! go {
        ($t:ty) => {
            each_valid_primitive!(values, $t, rows, |p, v| g(p, u64::from(v)))
        };
    }
    match values.data_type() {
        D::UInt8 => go!(UInt8Type),
        D::UInt16 => go!(UInt16Type),
        D::UInt32 => go!(UInt32Type),
        D::UInt64 => go!(UInt64Type),
        other => return Err(mismatch(other)),
    }
    Ok(())
}

/// Every non-null value of a float column at `rows`, as `f64`.
fn each_float(values: &dyn Array, rows: &[u32], mut f: impl FnMut(usize, f64)) -> Result<()> {
    let mut g = |p: usize, v: f64| f(p, v);
    match values.data_type() {
        DataType::Float32 => {
            each_valid_primitive!(values, Float32Type, rows, |p, v| g(p, f64::from(v)))
        }
        DataType::Float64 => each_valid_primitive!(values, Float64Type, rows, &mut g),
        other => return Err(mismatch(other)),
    }
    Ok(())
}

/// Every non-null value of a string column (`Utf8`, `LargeUtf8`, `Utf8View`) at `rows`.
fn each_str<'a>(
    values: &'a dyn Array,
    rows: &[u32],
    mut f: impl FnMut(usize, &'a str),
) -> Result<()> {
    macro_rules! go {
        ($a:expr) => {{
            let a = $a;
            let len = a.len();
            for (p, &r) in rows.iter().enumerate() {
                let r = r as usize;
                if r < len && a.is_valid(r) {
                    f(p, a.value(r));
                }
            }
        }};
    }
    match values.data_type() {
        DataType::Utf8 => go!(values
            .as_string_opt::<i32>()
            .ok_or_else(|| mismatch(values.data_type()))?),
        DataType::LargeUtf8 => go!(values
            .as_string_opt::<i64>()
            .ok_or_else(|| mismatch(values.data_type()))?),
        DataType::Utf8View => go!(values
            .as_string_view_opt()
            .ok_or_else(|| mismatch(values.data_type()))?),
        other => return Err(mismatch(other)),
    }
    Ok(())
}

/// Every non-null value of a boolean column at `rows`.
fn each_bool(values: &dyn Array, rows: &[u32], mut f: impl FnMut(usize, bool)) -> Result<()> {
    let a = values
        .as_boolean_opt()
        .ok_or_else(|| mismatch(values.data_type()))?;
    let len = a.len();
    for (p, &r) in rows.iter().enumerate() {
        let r = r as usize;
        if r < len && a.is_valid(r) {
            f(p, a.value(r));
        }
    }
    Ok(())
}

/// One value of any supported kind, as kept by `min`/`max`/`first`/`last`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Val {
    I(i64),
    U(u64),
    F(f64),
    S(String),
    B(bool),
}

impl Val {
    /// Total order within one kind (floats by `total_cmp`: NaN is the largest).
    fn cmp(&self, other: &Val) -> Ordering {
        match (self, other) {
            (Val::I(a), Val::I(b)) => a.cmp(b),
            (Val::U(a), Val::U(b)) => a.cmp(b),
            (Val::F(a), Val::F(b)) => canonical(*a).total_cmp(&canonical(*b)),
            (Val::S(a), Val::S(b)) => a.cmp(b),
            (Val::B(a), Val::B(b)) => a.cmp(b),
            // Different kinds never meet in one accumulator.
            _ => Ordering::Equal,
        }
    }
}

/// `-0.0` as `0.0` and every NaN as the canonical NaN.
fn canonical(v: f64) -> f64 {
    if v.is_nan() {
        f64::NAN
    } else if v == 0.0 {
        0.0
    } else {
        v
    }
}

/// The scalar of type `dt` holding `v` (null for `None`).
fn scalar(dt: &DataType, v: Option<&Val>) -> Result<ScalarValue> {
    use DataType as D;
    use ScalarValue as S;
    let i = |v: Option<&Val>| match v {
        Some(Val::I(x)) => Some(*x),
        _ => None,
    };
    let iv = i(v);
    // Narrowing casts only undo the widening done when reading the column.
    let out = match dt {
        D::Int8 => S::Int8(iv.map(|x| x as i8)),
        D::Int16 => S::Int16(iv.map(|x| x as i16)),
        D::Int32 => S::Int32(iv.map(|x| x as i32)),
        D::Int64 => S::Int64(iv),
        D::Date32 => S::Date32(iv.map(|x| x as i32)),
        D::Date64 => S::Date64(iv),
        D::Time32(TimeUnit::Second) => S::Time32Second(iv.map(|x| x as i32)),
        D::Time32(TimeUnit::Millisecond) => S::Time32Millisecond(iv.map(|x| x as i32)),
        D::Time64(TimeUnit::Microsecond) => S::Time64Microsecond(iv),
        D::Time64(TimeUnit::Nanosecond) => S::Time64Nanosecond(iv),
        D::Timestamp(TimeUnit::Second, tz) => S::TimestampSecond(iv, tz.clone()),
        D::Timestamp(TimeUnit::Millisecond, tz) => S::TimestampMillisecond(iv, tz.clone()),
        D::Timestamp(TimeUnit::Microsecond, tz) => S::TimestampMicrosecond(iv, tz.clone()),
        D::Timestamp(TimeUnit::Nanosecond, tz) => S::TimestampNanosecond(iv, tz.clone()),
        D::Duration(TimeUnit::Second) => S::DurationSecond(iv),
        D::Duration(TimeUnit::Millisecond) => S::DurationMillisecond(iv),
        D::Duration(TimeUnit::Microsecond) => S::DurationMicrosecond(iv),
        D::Duration(TimeUnit::Nanosecond) => S::DurationNanosecond(iv),
        D::UInt8 | D::UInt16 | D::UInt32 | D::UInt64 => {
            let u = match v {
                Some(Val::U(x)) => Some(*x),
                _ => None,
            };
            match dt {
                D::UInt8 => S::UInt8(u.map(|x| x as u8)),
                D::UInt16 => S::UInt16(u.map(|x| x as u16)),
                D::UInt32 => S::UInt32(u.map(|x| x as u32)),
                _ => S::UInt64(u),
            }
        }
        D::Float32 | D::Float64 => {
            let f = match v {
                Some(Val::F(x)) => Some(*x),
                _ => None,
            };
            if dt == &D::Float32 {
                S::Float32(f.map(|x| x as f32))
            } else {
                S::Float64(f)
            }
        }
        D::Utf8 | D::LargeUtf8 | D::Utf8View => {
            let s = match v {
                Some(Val::S(x)) => Some(x.clone()),
                _ => None,
            };
            match dt {
                D::Utf8 => S::Utf8(s),
                D::LargeUtf8 => S::LargeUtf8(s),
                _ => S::Utf8View(s),
            }
        }
        D::Boolean => S::Boolean(match v {
            Some(Val::B(x)) => Some(*x),
            _ => None,
        }),
        other => return Err(mismatch(other)),
    };
    Ok(out)
}

/// The value at `row` of a column of kind `kind` (`None` if null).
fn value_at(kind: Kind, values: &dyn Array, row: u32) -> Result<Option<Val>> {
    let mut out = None;
    let rows = [row];
    match kind {
        Kind::Signed => each_signed(values, &rows, |_, v| out = Some(Val::I(v)))?,
        Kind::Unsigned => each_unsigned(values, &rows, |_, v| out = Some(Val::U(v)))?,
        Kind::Float => each_float(values, &rows, |_, v| out = Some(Val::F(v)))?,
        Kind::Str => each_str(values, &rows, |_, v| out = Some(Val::S(v.to_string())))?,
        Kind::Bool => each_bool(values, &rows, |_, v| out = Some(Val::B(v)))?,
    }
    Ok(out)
}

fn supported_types() -> &'static str {
    "integers, floats, strings, booleans, timestamps, dates, times and durations"
}

impl AggregateFunction for BuiltinAggregate {
    fn name(&self) -> &str {
        match self {
            BuiltinAggregate::Count => "count",
            BuiltinAggregate::CountDistinct => "count_distinct",
            BuiltinAggregate::Sum => "sum",
            BuiltinAggregate::Min => "min",
            BuiltinAggregate::Max => "max",
            BuiltinAggregate::Avg => "avg",
            BuiltinAggregate::First => "first",
            BuiltinAggregate::Last => "last",
        }
    }

    fn return_type(&self, arg: Option<&DataType>) -> std::result::Result<DataType, String> {
        let name = self.name();
        match (self, arg) {
            (BuiltinAggregate::Count, _) => Ok(DataType::Int64),
            (_, None) => Err(format!("{name} needs an argument, e.g. {name}(amount)")),
            (BuiltinAggregate::CountDistinct, Some(t)) => match kind_of(t) {
                Some(_) => Ok(DataType::Int64),
                None => Err(format!(
                    "count(distinct …) does not support arguments of type {t} (supported: {})",
                    supported_types()
                )),
            },
            (BuiltinAggregate::Sum, Some(t)) if is_integer(t) => Ok(DataType::Int64),
            (BuiltinAggregate::Sum | BuiltinAggregate::Avg, Some(t)) if is_float(t) => {
                Ok(DataType::Float64)
            }
            (BuiltinAggregate::Avg, Some(t)) if is_integer(t) => Ok(DataType::Float64),
            (BuiltinAggregate::Sum | BuiltinAggregate::Avg, Some(t)) => Err(format!(
                "{name} needs a numeric argument (an integer or a float), not {t}"
            )),
            (_, Some(t)) => match kind_of(t) {
                Some(_) => Ok(t.clone()),
                None => Err(format!(
                    "{name} does not support arguments of type {t} (supported: {})",
                    supported_types()
                )),
            },
        }
    }

    fn create_accumulator(&self, arg: Option<&DataType>) -> Result<Box<dyn Accumulator>> {
        let dt = self.return_type(arg).map_err(agg_error)?;
        let kind = || {
            arg.and_then(kind_of)
                .ok_or_else(|| agg_error(format!("{} needs an argument", self.name())))
        };
        Ok(match self {
            BuiltinAggregate::Count => Box::new(Count {
                n: 0,
                star: arg.is_none(),
            }),
            BuiltinAggregate::CountDistinct => Box::new(CountDistinct::new(kind()?)),
            BuiltinAggregate::Sum if dt == DataType::Int64 => Box::new(SumInt::default()),
            BuiltinAggregate::Sum => Box::new(SumFloat::default()),
            BuiltinAggregate::Avg if arg.is_some_and(is_integer) => Box::new(AvgInt::default()),
            BuiltinAggregate::Avg => Box::new(AvgFloat::default()),
            BuiltinAggregate::Min | BuiltinAggregate::Max => Box::new(MinMax {
                max: *self == BuiltinAggregate::Max,
                kind: kind()?,
                dt,
                cur: None,
            }),
            BuiltinAggregate::First | BuiltinAggregate::Last => Box::new(FirstLast {
                last: *self == BuiltinAggregate::Last,
                kind: kind()?,
                dt,
                cur: None,
            }),
        })
    }
}

/// `count(*)` / `count(x)`.
#[derive(Debug)]
struct Count {
    n: i64,
    /// Count rows (no argument) rather than non-null values.
    star: bool,
}

impl Accumulator for Count {
    fn update(&mut self, values: Option<&ArrayRef>, rows: &[u32], _: &[i64]) -> Result<()> {
        match values {
            Some(v) if !self.star => {
                let nulls = v.logical_nulls();
                let valid = match nulls {
                    None => rows.iter().filter(|&&r| (r as usize) < v.len()).count(),
                    Some(n) => rows
                        .iter()
                        .filter(|&&r| (r as usize) < n.len() && n.is_valid(r as usize))
                        .count(),
                };
                self.n = self.n.wrapping_add(valid as i64);
            }
            _ => self.n = self.n.wrapping_add(rows.len() as i64),
        }
        Ok(())
    }

    fn evaluate(&self) -> Result<ScalarValue> {
        Ok(ScalarValue::Int64(Some(self.n)))
    }

    fn state(&self) -> Result<Vec<u8>> {
        encode(&self.n)
    }

    fn write_state(&self, out: &mut Vec<u8>) -> Result<()> {
        encode_into(&self.n, out)
    }

    fn merge_state(&mut self, state: &[u8]) -> Result<()> {
        let n: i64 = decode(state)?;
        self.n = self.n.wrapping_add(n);
        Ok(())
    }
}

/// `sum` of integers: `Int64`, wrapping on overflow.
#[derive(Debug, Default)]
struct SumInt {
    sum: i64,
    seen: bool,
}

impl Accumulator for SumInt {
    fn update(&mut self, values: Option<&ArrayRef>, rows: &[u32], _: &[i64]) -> Result<()> {
        let values = need(values, "sum")?;
        let (mut sum, mut seen) = (self.sum, self.seen);
        if matches!(kind_of(values.data_type()), Some(Kind::Unsigned)) {
            each_unsigned(values, rows, |_, v| {
                sum = sum.wrapping_add(v as i64);
                seen = true;
            })?;
        } else {
            each_signed(values, rows, |_, v| {
                sum = sum.wrapping_add(v);
                seen = true;
            })?;
        }
        self.sum = sum;
        self.seen = seen;
        Ok(())
    }

    fn evaluate(&self) -> Result<ScalarValue> {
        Ok(ScalarValue::Int64(self.seen.then_some(self.sum)))
    }

    fn state(&self) -> Result<Vec<u8>> {
        encode(&(self.sum, self.seen))
    }

    fn write_state(&self, out: &mut Vec<u8>) -> Result<()> {
        encode_into(&(self.sum, self.seen), out)
    }

    fn merge_state(&mut self, state: &[u8]) -> Result<()> {
        let (sum, seen): (i64, bool) = decode(state)?;
        if seen {
            self.sum = self.sum.wrapping_add(sum);
            self.seen = true;
        }
        Ok(())
    }
}

/// `sum` of floats: `Float64`.
#[derive(Debug, Default)]
struct SumFloat {
    sum: f64,
    seen: bool,
}

impl Accumulator for SumFloat {
    fn update(&mut self, values: Option<&ArrayRef>, rows: &[u32], _: &[i64]) -> Result<()> {
        let values = need(values, "sum")?;
        let (mut sum, mut seen) = (self.sum, self.seen);
        each_float(values, rows, |_, v| {
            sum += v;
            seen = true;
        })?;
        self.sum = sum;
        self.seen = seen;
        Ok(())
    }

    fn evaluate(&self) -> Result<ScalarValue> {
        Ok(ScalarValue::Float64(self.seen.then_some(self.sum)))
    }

    fn state(&self) -> Result<Vec<u8>> {
        encode(&(self.sum, self.seen))
    }

    fn write_state(&self, out: &mut Vec<u8>) -> Result<()> {
        encode_into(&(self.sum, self.seen), out)
    }

    fn merge_state(&mut self, state: &[u8]) -> Result<()> {
        let (sum, seen): (f64, bool) = decode(state)?;
        if seen {
            self.sum += sum;
            self.seen = true;
        }
        Ok(())
    }
}

/// `avg` of integers: the exact sum (`i128`) and count, divided at the end.
#[derive(Debug, Default)]
struct AvgInt {
    sum: i128,
    n: i64,
}

impl Accumulator for AvgInt {
    fn update(&mut self, values: Option<&ArrayRef>, rows: &[u32], _: &[i64]) -> Result<()> {
        let values = need(values, "avg")?;
        let (mut sum, mut n) = (self.sum, self.n);
        if matches!(kind_of(values.data_type()), Some(Kind::Unsigned)) {
            each_unsigned(values, rows, |_, v| {
                sum = sum.wrapping_add(i128::from(v));
                n += 1;
            })?;
        } else {
            each_signed(values, rows, |_, v| {
                sum = sum.wrapping_add(i128::from(v));
                n += 1;
            })?;
        }
        self.sum = sum;
        self.n = n;
        Ok(())
    }

    fn evaluate(&self) -> Result<ScalarValue> {
        Ok(ScalarValue::Float64(
            (self.n > 0).then(|| self.sum as f64 / self.n as f64),
        ))
    }

    fn state(&self) -> Result<Vec<u8>> {
        encode(&(self.sum, self.n))
    }

    fn write_state(&self, out: &mut Vec<u8>) -> Result<()> {
        encode_into(&(self.sum, self.n), out)
    }

    fn merge_state(&mut self, state: &[u8]) -> Result<()> {
        let (sum, n): (i128, i64) = decode(state)?;
        self.sum = self.sum.wrapping_add(sum);
        self.n += n;
        Ok(())
    }
}

/// `avg` of floats.
#[derive(Debug, Default)]
struct AvgFloat {
    sum: f64,
    n: i64,
}

impl Accumulator for AvgFloat {
    fn update(&mut self, values: Option<&ArrayRef>, rows: &[u32], _: &[i64]) -> Result<()> {
        let values = need(values, "avg")?;
        let (mut sum, mut n) = (self.sum, self.n);
        each_float(values, rows, |_, v| {
            sum += v;
            n += 1;
        })?;
        self.sum = sum;
        self.n = n;
        Ok(())
    }

    fn evaluate(&self) -> Result<ScalarValue> {
        Ok(ScalarValue::Float64(
            (self.n > 0).then(|| self.sum / self.n as f64),
        ))
    }

    fn state(&self) -> Result<Vec<u8>> {
        encode(&(self.sum, self.n))
    }

    fn write_state(&self, out: &mut Vec<u8>) -> Result<()> {
        encode_into(&(self.sum, self.n), out)
    }

    fn merge_state(&mut self, state: &[u8]) -> Result<()> {
        let (sum, n): (f64, i64) = decode(state)?;
        self.sum += sum;
        self.n += n;
        Ok(())
    }
}

/// `min` / `max`.
#[derive(Debug)]
struct MinMax {
    max: bool,
    kind: Kind,
    dt: DataType,
    cur: Option<Val>,
}

impl MinMax {
    /// Whether `candidate` should replace `current`.
    fn better(&self, candidate: Ordering) -> bool {
        if self.max {
            candidate == Ordering::Greater
        } else {
            candidate == Ordering::Less
        }
    }

    fn offer(&mut self, v: Val) {
        let replace = match &self.cur {
            None => true,
            Some(c) => self.better(v.cmp(c)),
        };
        if replace {
            self.cur = Some(v);
        }
    }
}

impl Accumulator for MinMax {
    fn update(&mut self, values: Option<&ArrayRef>, rows: &[u32], _: &[i64]) -> Result<()> {
        let values = need(values, if self.max { "max" } else { "min" })?;
        let max = self.max;
        match self.kind {
            Kind::Signed => {
                let mut best: Option<i64> = None;
                each_signed(values, rows, |_, v| {
                    best = Some(match best {
                        None => v,
                        Some(b) if max => b.max(v),
                        Some(b) => b.min(v),
                    })
                })?;
                if let Some(b) = best {
                    self.offer(Val::I(b));
                }
            }
            Kind::Unsigned => {
                let mut best: Option<u64> = None;
                each_unsigned(values, rows, |_, v| {
                    best = Some(match best {
                        None => v,
                        Some(b) if max => b.max(v),
                        Some(b) => b.min(v),
                    })
                })?;
                if let Some(b) = best {
                    self.offer(Val::U(b));
                }
            }
            Kind::Float => {
                let mut best: Option<f64> = None;
                each_float(values, rows, |_, v| {
                    let v = canonical(v);
                    best = Some(match best {
                        None => v,
                        Some(b) => {
                            let o = v.total_cmp(&b);
                            if (max && o == Ordering::Greater) || (!max && o == Ordering::Less) {
                                v
                            } else {
                                b
                            }
                        }
                    })
                })?;
                if let Some(b) = best {
                    self.offer(Val::F(b));
                }
            }
            Kind::Str => {
                let mut best: Option<&str> = None;
                each_str(values, rows, |_, v| {
                    best = Some(match best {
                        None => v,
                        Some(b) if max => b.max(v),
                        Some(b) => b.min(v),
                    })
                })?;
                if let Some(b) = best {
                    let replace = match &self.cur {
                        Some(Val::S(c)) => self.better(b.cmp(c.as_str())),
                        _ => true,
                    };
                    if replace {
                        self.cur = Some(Val::S(b.to_string()));
                    }
                }
            }
            Kind::Bool => {
                let mut best: Option<bool> = None;
                each_bool(values, rows, |_, v| {
                    best = Some(match best {
                        None => v,
                        Some(b) if max => b || v,
                        Some(b) => b && v,
                    })
                })?;
                if let Some(b) = best {
                    self.offer(Val::B(b));
                }
            }
        }
        Ok(())
    }

    fn evaluate(&self) -> Result<ScalarValue> {
        scalar(&self.dt, self.cur.as_ref())
    }

    fn state(&self) -> Result<Vec<u8>> {
        encode(&self.cur)
    }

    fn write_state(&self, out: &mut Vec<u8>) -> Result<()> {
        encode_into(&self.cur, out)
    }

    fn merge_state(&mut self, state: &[u8]) -> Result<()> {
        let other: Option<Val> = decode(state)?;
        if let Some(v) = other {
            self.offer(v);
        }
        Ok(())
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self)
            + match &self.cur {
                Some(Val::S(s)) => s.capacity(),
                _ => 0,
            }
    }
}

/// `first` / `last`: the value of the row with the smallest / largest event time;
/// ties go to the earliest / latest arrival.
#[derive(Debug)]
struct FirstLast {
    last: bool,
    kind: Kind,
    dt: DataType,
    /// (event time, value).
    cur: Option<(i64, Val)>,
}

impl FirstLast {
    /// Whether a value at `t` that arrived after the current one replaces it.
    fn later_wins(&self, t: i64) -> bool {
        match &self.cur {
            None => true,
            Some((c, _)) if self.last => t >= *c,
            Some((c, _)) => t < *c,
        }
    }
}

impl Accumulator for FirstLast {
    fn update(
        &mut self,
        values: Option<&ArrayRef>,
        rows: &[u32],
        event_times: &[i64],
    ) -> Result<()> {
        let values = need(values, if self.last { "last" } else { "first" })?;
        if event_times.len() != rows.len() {
            return Err(agg_error(format!(
                "{} rows but {} event times",
                rows.len(),
                event_times.len()
            )));
        }
        let last = self.last;
        // The winning position among the new rows (arrival order = order of `rows`).
        let mut best: Option<(usize, i64)> = None;
        let mut offer = |p: usize| {
            let t = event_times[p];
            let take = match best {
                None => true,
                Some((_, b)) if last => t >= b,
                Some((_, b)) => t < b,
            };
            if take {
                best = Some((p, t));
            }
        };
        match self.kind {
            Kind::Signed => each_signed(values, rows, |p, _| offer(p))?,
            Kind::Unsigned => each_unsigned(values, rows, |p, _| offer(p))?,
            Kind::Float => each_float(values, rows, |p, _| offer(p))?,
            Kind::Str => each_str(values, rows, |p, _| offer(p))?,
            Kind::Bool => each_bool(values, rows, |p, _| offer(p))?,
        }
        if let Some((p, t)) = best {
            if self.later_wins(t) {
                if let Some(v) = value_at(self.kind, values, rows[p])? {
                    self.cur = Some((t, v));
                }
            }
        }
        Ok(())
    }

    fn evaluate(&self) -> Result<ScalarValue> {
        scalar(&self.dt, self.cur.as_ref().map(|(_, v)| v))
    }

    fn state(&self) -> Result<Vec<u8>> {
        encode(&self.cur)
    }

    fn write_state(&self, out: &mut Vec<u8>) -> Result<()> {
        encode_into(&self.cur, out)
    }

    fn merge_state(&mut self, state: &[u8]) -> Result<()> {
        let other: Option<(i64, Val)> = decode(state)?;
        if let Some((t, v)) = other {
            // The merged state counts as the later arrival.
            if self.later_wins(t) {
                self.cur = Some((t, v));
            }
        }
        Ok(())
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self)
            + match &self.cur {
                Some((_, Val::S(s))) => s.capacity(),
                _ => 0,
            }
    }
}

/// The distinct values seen, by kind. Floats are kept as the bits of their canonical
/// value (so `-0.0` = `0.0` and all NaNs are one value); booleans as a 2-bit mask.
#[derive(Debug)]
enum DistinctSet {
    I(AHashSet<i64>),
    U(AHashSet<u64>),
    F(AHashSet<u64>),
    S(AHashSet<String>),
    B(u8),
}

/// The serialised form of a [`DistinctSet`].
#[derive(Serialize, Deserialize)]
enum DistinctState {
    I(Vec<i64>),
    U(Vec<u64>),
    F(Vec<u64>),
    S(Vec<String>),
    B(u8),
}

/// `count_distinct` (`count(distinct x)`): exact.
#[derive(Debug)]
struct CountDistinct {
    set: DistinctSet,
}

impl CountDistinct {
    fn new(kind: Kind) -> Self {
        let set = match kind {
            Kind::Signed => DistinctSet::I(AHashSet::new()),
            Kind::Unsigned => DistinctSet::U(AHashSet::new()),
            Kind::Float => DistinctSet::F(AHashSet::new()),
            Kind::Str => DistinctSet::S(AHashSet::new()),
            Kind::Bool => DistinctSet::B(0),
        };
        CountDistinct { set }
    }
}

fn bool_bit(v: bool) -> u8 {
    if v {
        2
    } else {
        1
    }
}

impl Accumulator for CountDistinct {
    fn update(&mut self, values: Option<&ArrayRef>, rows: &[u32], _: &[i64]) -> Result<()> {
        let values = need(values, "count(distinct …)")?;
        match &mut self.set {
            DistinctSet::I(s) => each_signed(values, rows, |_, v| {
                s.insert(v);
            })?,
            DistinctSet::U(s) => each_unsigned(values, rows, |_, v| {
                s.insert(v);
            })?,
            DistinctSet::F(s) => each_float(values, rows, |_, v| {
                s.insert(canonical(v).to_bits());
            })?,
            DistinctSet::S(s) => each_str(values, rows, |_, v| {
                if !s.contains(v) {
                    s.insert(v.to_string());
                }
            })?,
            DistinctSet::B(mask) => each_bool(values, rows, |_, v| *mask |= bool_bit(v))?,
        }
        Ok(())
    }

    fn evaluate(&self) -> Result<ScalarValue> {
        let n = match &self.set {
            DistinctSet::I(s) => s.len(),
            DistinctSet::U(s) => s.len(),
            DistinctSet::F(s) => s.len(),
            DistinctSet::S(s) => s.len(),
            DistinctSet::B(m) => m.count_ones() as usize,
        };
        Ok(ScalarValue::Int64(Some(n as i64)))
    }

    fn state(&self) -> Result<Vec<u8>> {
        let state = match &self.set {
            DistinctSet::I(s) => DistinctState::I(s.iter().copied().collect()),
            DistinctSet::U(s) => DistinctState::U(s.iter().copied().collect()),
            DistinctSet::F(s) => DistinctState::F(s.iter().copied().collect()),
            DistinctSet::S(s) => DistinctState::S(s.iter().cloned().collect()),
            DistinctSet::B(m) => DistinctState::B(*m),
        };
        encode(&state)
    }

    fn merge_state(&mut self, state: &[u8]) -> Result<()> {
        let other: DistinctState = decode(state)?;
        match (&mut self.set, other) {
            (DistinctSet::I(s), DistinctState::I(v)) => s.extend(v),
            (DistinctSet::U(s), DistinctState::U(v)) => s.extend(v),
            (DistinctSet::F(s), DistinctState::F(v)) => s.extend(v),
            (DistinctSet::S(s), DistinctState::S(v)) => s.extend(v),
            (DistinctSet::B(m), DistinctState::B(o)) => *m |= o,
            _ => return Err(agg_error("count(distinct …): state of another type")),
        }
        Ok(())
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self)
            + match &self.set {
                DistinctSet::I(s) => s.capacity() * 9,
                DistinctSet::U(s) | DistinctSet::F(s) => s.capacity() * 9,
                DistinctSet::S(s) => s.iter().map(|x| x.capacity() + 25).sum(),
                DistinctSet::B(_) => 0,
            }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use arrow::array::{
        BooleanArray, Float64Array, Int32Array, Int64Array, StringArray, TimestampMillisecondArray,
        UInt64Array,
    };
    use std::sync::Arc;

    fn acc(f: BuiltinAggregate, arg: Option<&DataType>) -> Box<dyn Accumulator> {
        f.create_accumulator(arg).unwrap()
    }

    /// Updates in two calls (rows split at `split`) and checks `evaluate`, then a
    /// restore through `state`/`merge_state` and a merge of two halves.
    fn check(f: BuiltinAggregate, col: ArrayRef, rows: &[u32], times: &[i64], want: ScalarValue) {
        let dt = col.data_type().clone();
        let mut a = acc(f, Some(&dt));
        let split = rows.len() / 2;
        a.update(Some(&col), &rows[..split], &times[..split])
            .unwrap();
        a.update(Some(&col), &rows[split..], &times[split..])
            .unwrap();
        assert_eq!(a.evaluate().unwrap(), want, "{f:?} on {dt}");
        assert_eq!(
            f.return_type(Some(&dt)).unwrap(),
            want.data_type(),
            "{f:?} return type"
        );
        // Restore into a fresh accumulator.
        let mut b = acc(f, Some(&dt));
        b.merge_state(&a.state().unwrap()).unwrap();
        assert_eq!(b.evaluate().unwrap(), want, "{f:?} restored");
        // Merge of two halves (as sessions do): the first half, then the second.
        let mut h1 = acc(f, Some(&dt));
        h1.update(Some(&col), &rows[..split], &times[..split])
            .unwrap();
        let mut h2 = acc(f, Some(&dt));
        h2.update(Some(&col), &rows[split..], &times[split..])
            .unwrap();
        h1.merge_state(&h2.state().unwrap()).unwrap();
        assert_eq!(h1.evaluate().unwrap(), want, "{f:?} merged");
    }

    fn ints() -> ArrayRef {
        Arc::new(Int64Array::from(vec![
            Some(5),
            None,
            Some(-3),
            Some(10),
            Some(5),
            None,
        ]))
    }

    #[test]
    fn integer_aggregates_skip_nulls() {
        let rows = [0, 1, 2, 3, 4, 5];
        let t = [10, 20, 5, 30, 40, 1];
        use BuiltinAggregate as B;
        check(B::Count, ints(), &rows, &t, ScalarValue::Int64(Some(4)));
        check(B::Sum, ints(), &rows, &t, ScalarValue::Int64(Some(17)));
        check(B::Min, ints(), &rows, &t, ScalarValue::Int64(Some(-3)));
        check(B::Max, ints(), &rows, &t, ScalarValue::Int64(Some(10)));
        check(B::Avg, ints(), &rows, &t, ScalarValue::Float64(Some(4.25)));
        check(
            B::CountDistinct,
            ints(),
            &rows,
            &t,
            ScalarValue::Int64(Some(3)),
        );
        // first: smallest event time among non-null values (row 2 at t=5; row 5 at
        // t=1 is null); last: largest (row 4 at t=40).
        check(B::First, ints(), &rows, &t, ScalarValue::Int64(Some(-3)));
        check(B::Last, ints(), &rows, &t, ScalarValue::Int64(Some(5)));
        // A subset of rows only.
        let mut a = acc(B::Sum, Some(&DataType::Int64));
        a.update(Some(&ints()), &[2, 3], &[0, 0]).unwrap();
        assert_eq!(a.evaluate().unwrap(), ScalarValue::Int64(Some(7)));
    }

    #[test]
    fn all_null_and_empty_give_null_but_count_zero() {
        let col: ArrayRef = Arc::new(Int64Array::from(vec![None, None]));
        use BuiltinAggregate as B;
        for f in [B::Sum, B::Min, B::Max, B::Avg, B::First, B::Last] {
            let mut a = acc(f, Some(&DataType::Int64));
            a.update(Some(&col), &[0, 1], &[1, 2]).unwrap();
            assert!(a.evaluate().unwrap().is_null(), "{f:?}");
            let fresh = acc(f, Some(&DataType::Int64));
            assert!(fresh.evaluate().unwrap().is_null(), "{f:?} fresh");
        }
        let mut c = acc(B::Count, Some(&DataType::Int64));
        c.update(Some(&col), &[0, 1], &[1, 2]).unwrap();
        assert_eq!(c.evaluate().unwrap(), ScalarValue::Int64(Some(0)));
        let mut d = acc(B::CountDistinct, Some(&DataType::Int64));
        d.update(Some(&col), &[0, 1], &[1, 2]).unwrap();
        assert_eq!(d.evaluate().unwrap(), ScalarValue::Int64(Some(0)));
        // count(*) counts rows, nulls included.
        let mut star = acc(B::Count, None);
        star.update(None, &[0, 1, 1], &[1, 2, 3]).unwrap();
        assert_eq!(star.evaluate().unwrap(), ScalarValue::Int64(Some(3)));
    }

    #[test]
    fn integer_sum_wraps() {
        let col: ArrayRef = Arc::new(Int64Array::from(vec![i64::MAX, 2]));
        let mut a = acc(BuiltinAggregate::Sum, Some(&DataType::Int64));
        a.update(Some(&col), &[0, 1], &[0, 0]).unwrap();
        assert_eq!(
            a.evaluate().unwrap(),
            ScalarValue::Int64(Some(i64::MIN + 1))
        );
        // Narrow and unsigned integers sum as Int64 too.
        let col: ArrayRef = Arc::new(Int32Array::from(vec![i32::MAX, i32::MAX]));
        let mut a = acc(BuiltinAggregate::Sum, Some(&DataType::Int32));
        a.update(Some(&col), &[0, 1], &[0, 0]).unwrap();
        assert_eq!(
            a.evaluate().unwrap(),
            ScalarValue::Int64(Some(2 * i64::from(i32::MAX)))
        );
        let col: ArrayRef = Arc::new(UInt64Array::from(vec![3u64, 4]));
        check(
            BuiltinAggregate::Sum,
            col.clone(),
            &[0, 1],
            &[0, 0],
            ScalarValue::Int64(Some(7)),
        );
        check(
            BuiltinAggregate::Max,
            col,
            &[0, 1],
            &[0, 0],
            ScalarValue::UInt64(Some(4)),
        );
    }

    #[test]
    fn float_aggregates() {
        let col: ArrayRef = Arc::new(Float64Array::from(vec![
            Some(1.5),
            None,
            Some(-2.0),
            Some(0.0),
            Some(-0.0),
        ]));
        let rows = [0, 1, 2, 3, 4];
        let t = [1, 2, 3, 4, 5];
        use BuiltinAggregate as B;
        check(
            B::Sum,
            col.clone(),
            &rows,
            &t,
            ScalarValue::Float64(Some(-0.5)),
        );
        check(
            B::Avg,
            col.clone(),
            &rows,
            &t,
            ScalarValue::Float64(Some(-0.125)),
        );
        check(
            B::Min,
            col.clone(),
            &rows,
            &t,
            ScalarValue::Float64(Some(-2.0)),
        );
        check(
            B::Max,
            col.clone(),
            &rows,
            &t,
            ScalarValue::Float64(Some(1.5)),
        );
        // 0.0 and -0.0 are one value.
        check(
            B::CountDistinct,
            col.clone(),
            &rows,
            &t,
            ScalarValue::Int64(Some(3)),
        );
        check(B::First, col, &rows, &t, ScalarValue::Float64(Some(1.5)));
    }

    #[test]
    fn string_boolean_and_timestamp_aggregates() {
        let s: ArrayRef = Arc::new(StringArray::from(vec![
            Some("pear"),
            Some("apple"),
            None,
            Some("zoo"),
            Some("apple"),
        ]));
        let rows = [0, 1, 2, 3, 4];
        let t = [3, 3, 9, 1, 3];
        use BuiltinAggregate as B;
        let utf8 = |v: &str| ScalarValue::Utf8(Some(v.to_string()));
        check(B::Min, s.clone(), &rows, &t, utf8("apple"));
        check(B::Max, s.clone(), &rows, &t, utf8("zoo"));
        check(
            B::CountDistinct,
            s.clone(),
            &rows,
            &t,
            ScalarValue::Int64(Some(3)),
        );
        check(B::Count, s.clone(), &rows, &t, ScalarValue::Int64(Some(4)));
        check(B::First, s.clone(), &rows, &t, utf8("zoo"));
        // Ties on the largest time (3): the latest arrival (row 4) wins for last.
        check(B::Last, s.clone(), &rows, &t, utf8("apple"));
        // Ties on the smallest time: the earliest arrival wins for first.
        let mut f = acc(B::First, Some(&DataType::Utf8));
        f.update(Some(&s), &[0, 1, 4], &[3, 3, 3]).unwrap();
        assert_eq!(f.evaluate().unwrap(), utf8("pear"));
        f.update(Some(&s), &[3], &[3]).unwrap();
        assert_eq!(f.evaluate().unwrap(), utf8("pear"), "a later tie loses");
        let mut l = acc(B::Last, Some(&DataType::Utf8));
        l.update(Some(&s), &[0, 1, 4], &[3, 3, 3]).unwrap();
        l.update(Some(&s), &[3], &[3]).unwrap();
        assert_eq!(l.evaluate().unwrap(), utf8("zoo"), "a later tie wins");

        let b: ArrayRef = Arc::new(BooleanArray::from(vec![Some(true), None, Some(false)]));
        check(
            B::Min,
            b.clone(),
            &[0, 1, 2],
            &[1, 2, 3],
            ScalarValue::Boolean(Some(false)),
        );
        check(
            B::Max,
            b.clone(),
            &[0, 1, 2],
            &[1, 2, 3],
            ScalarValue::Boolean(Some(true)),
        );
        check(
            B::CountDistinct,
            b.clone(),
            &[0, 1, 2],
            &[1, 2, 3],
            ScalarValue::Int64(Some(2)),
        );
        check(
            B::Last,
            b,
            &[0, 1, 2],
            &[1, 2, 3],
            ScalarValue::Boolean(Some(false)),
        );

        let ts: ArrayRef = Arc::new(TimestampMillisecondArray::from(vec![
            Some(7),
            None,
            Some(3),
        ]));
        check(
            B::Min,
            ts.clone(),
            &[0, 1, 2],
            &[1, 2, 3],
            ScalarValue::TimestampMillisecond(Some(3), None),
        );
        check(
            B::First,
            ts,
            &[0, 1, 2],
            &[1, 2, 3],
            ScalarValue::TimestampMillisecond(Some(7), None),
        );
    }

    #[test]
    fn unsupported_types_are_reported() {
        use BuiltinAggregate as B;
        let err = B::Sum.return_type(Some(&DataType::Utf8)).unwrap_err();
        assert!(err.contains("numeric"), "{err}");
        assert!(B::Sum.return_type(None).is_err());
        assert!(B::Min.return_type(Some(&DataType::Binary)).is_err());
        assert_eq!(B::Count.return_type(None).unwrap(), DataType::Int64);
        assert_eq!(
            B::Avg.return_type(Some(&DataType::Int32)).unwrap(),
            DataType::Float64
        );
        assert!(B::Sum
            .return_type(Some(&DataType::Timestamp(TimeUnit::Millisecond, None)))
            .is_err());
        // A column of another type than declared is an error, not a panic.
        let mut a = acc(B::Max, Some(&DataType::Int64));
        let wrong: ArrayRef = Arc::new(StringArray::from(vec!["x"]));
        assert!(a.update(Some(&wrong), &[0], &[0]).is_err());
        assert!(a.merge_state(b"\xff\xff\xff").is_err());
    }
}
