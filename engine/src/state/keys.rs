//! Keys of keyed state and hash partitioning: a stable byte encoding of the key columns
//! of a batch ([`KeyCodec`]), a stable 64-bit hash of those bytes ([`hash_key`]), and
//! the batch-wise [`hash_columns`] that the hash-partitioned edges and keyed operators
//! use.
//!
//! Both the encoding and the hash are defined here, not borrowed from Arrow's row format
//! or DataFusion's hash tables, because they are *persisted*: key bytes are the keys of
//! checkpointed state, and the hash decides the key group a key's state is filed under.
//! Neither may change when a dependency is upgraded, or a checkpoint could no longer be
//! restored. Work is done column by column over the whole batch; there is no per-row
//! type dispatch.
//!
//! # Encoding (version 1)
//!
//! For each key column in order: one tag byte, `0` for null (nothing follows) or `1`
//! for a value, then the value:
//!
//! - booleans: one byte `0`/`1`;
//! - signed integers, decimals, dates, times, timestamps, durations: big-endian at the
//!   type's width with the sign bit flipped (byte order is numeric order);
//! - unsigned integers: big-endian;
//! - floats: `-0.0` as `0.0`, every NaN as the canonical NaN, then the IEEE bits
//!   transformed so that byte order is numeric order, big-endian;
//! - strings and binaries of every offset width and view: 4-byte big-endian length,
//!   then the bytes (so `Utf8`, `LargeUtf8` and `Utf8View` keys are equal);
//! - fixed-size binaries: the bytes;
//! - dictionaries: as their values.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryViewBuilder, BooleanBuilder, FixedSizeBinaryBuilder,
    GenericBinaryBuilder, GenericStringBuilder, PrimitiveBuilder, StringViewBuilder,
};
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, Date32Type, Date64Type, Decimal128Type, DurationMicrosecondType,
    DurationMillisecondType, DurationNanosecondType, DurationSecondType, Float32Type, Float64Type,
    Int16Type, Int32Type, Int64Type, Int8Type, Schema, Time32MillisecondType, Time32SecondType,
    Time64MicrosecondType, Time64NanosecondType, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType, UInt16Type, UInt32Type,
    UInt64Type, UInt8Type,
};
use arrow::record_batch::RecordBatch;

use super::key_group::{fmix64, key_group_for_hash};
use super::state_error;
use crate::error::{EngineError, Result};

const KEY: &str = "key columns";

/// A native value that has a fixed-width, order-preserving key encoding.
trait KeyNative: Copy {
    /// Encoded width in bytes.
    const WIDTH: usize;
    /// Writes the value into `out[..WIDTH]`.
    fn write(self, out: &mut [u8]);
    /// Reads a value from `b[..WIDTH]` (the caller checked the length).
    fn read(b: &[u8]) -> Self;
}

macro_rules! key_native_int {
    ($t:ty, $u:ty, $flip:expr) => {
        impl KeyNative for $t {
            const WIDTH: usize = std::mem::size_of::<$t>();
            #[inline]
            fn write(self, out: &mut [u8]) {
                let u = (self as $u) ^ $flip;
                out[..Self::WIDTH].copy_from_slice(&u.to_be_bytes());
            }
            #[inline]
            fn read(b: &[u8]) -> Self {
                let mut a = [0u8; std::mem::size_of::<$t>()];
                a.copy_from_slice(&b[..Self::WIDTH]);
                (<$u>::from_be_bytes(a) ^ $flip) as $t
            }
        }
    };
}

key_native_int!(i8, u8, 1 << 7);
key_native_int!(i16, u16, 1 << 15);
key_native_int!(i32, u32, 1 << 31);
key_native_int!(i64, u64, 1 << 63);
key_native_int!(i128, u128, 1 << 127);
key_native_int!(u8, u8, 0);
key_native_int!(u16, u16, 0);
key_native_int!(u32, u32, 0);
key_native_int!(u64, u64, 0);

macro_rules! key_native_float {
    ($t:ty, $u:ty) => {
        impl KeyNative for $t {
            const WIDTH: usize = std::mem::size_of::<$t>();
            #[inline]
            fn write(self, out: &mut [u8]) {
                const SIGN: $u = 1 << (<$u>::BITS - 1);
                let v = if self.is_nan() {
                    <$t>::NAN
                } else if self == 0.0 {
                    0.0
                } else {
                    self
                };
                let bits = v.to_bits();
                let ordered = if bits & SIGN != 0 { !bits } else { bits | SIGN };
                out[..Self::WIDTH].copy_from_slice(&ordered.to_be_bytes());
            }
            #[inline]
            fn read(b: &[u8]) -> Self {
                const SIGN: $u = 1 << (<$u>::BITS - 1);
                let mut a = [0u8; std::mem::size_of::<$t>()];
                a.copy_from_slice(&b[..Self::WIDTH]);
                let ordered = <$u>::from_be_bytes(a);
                let bits = if ordered & SIGN != 0 {
                    ordered ^ SIGN
                } else {
                    !ordered
                };
                <$t>::from_bits(bits)
            }
        }
    };
}

key_native_float!(f32, u32);
key_native_float!(f64, u64);

/// Calls `$f::<ArrowType>($args)` for the primitive Arrow type of `$dt`, as `Some(..)`,
/// or gives `None` for a type that is not primitive.
macro_rules! with_primitive {
    ($dt:expr, $f:ident, $($args:expr),*) => {
        match $dt {
            DataType::Int8 => Some($f::<Int8Type>($($args),*)),
            DataType::Int16 => Some($f::<Int16Type>($($args),*)),
            DataType::Int32 => Some($f::<Int32Type>($($args),*)),
            DataType::Int64 => Some($f::<Int64Type>($($args),*)),
            DataType::UInt8 => Some($f::<UInt8Type>($($args),*)),
            DataType::UInt16 => Some($f::<UInt16Type>($($args),*)),
            DataType::UInt32 => Some($f::<UInt32Type>($($args),*)),
            DataType::UInt64 => Some($f::<UInt64Type>($($args),*)),
            DataType::Float32 => Some($f::<Float32Type>($($args),*)),
            DataType::Float64 => Some($f::<Float64Type>($($args),*)),
            DataType::Date32 => Some($f::<Date32Type>($($args),*)),
            DataType::Date64 => Some($f::<Date64Type>($($args),*)),
            DataType::Time32(TimeUnit::Second) => Some($f::<Time32SecondType>($($args),*)),
            DataType::Time32(TimeUnit::Millisecond) => {
                Some($f::<Time32MillisecondType>($($args),*))
            }
            DataType::Time64(TimeUnit::Microsecond) => {
                Some($f::<Time64MicrosecondType>($($args),*))
            }
            DataType::Time64(TimeUnit::Nanosecond) => {
                Some($f::<Time64NanosecondType>($($args),*))
            }
            DataType::Timestamp(TimeUnit::Second, _) => {
                Some($f::<TimestampSecondType>($($args),*))
            }
            DataType::Timestamp(TimeUnit::Millisecond, _) => {
                Some($f::<TimestampMillisecondType>($($args),*))
            }
            DataType::Timestamp(TimeUnit::Microsecond, _) => {
                Some($f::<TimestampMicrosecondType>($($args),*))
            }
            DataType::Timestamp(TimeUnit::Nanosecond, _) => {
                Some($f::<TimestampNanosecondType>($($args),*))
            }
            DataType::Duration(TimeUnit::Second) => Some($f::<DurationSecondType>($($args),*)),
            DataType::Duration(TimeUnit::Millisecond) => {
                Some($f::<DurationMillisecondType>($($args),*))
            }
            DataType::Duration(TimeUnit::Microsecond) => {
                Some($f::<DurationMicrosecondType>($($args),*))
            }
            DataType::Duration(TimeUnit::Nanosecond) => {
                Some($f::<DurationNanosecondType>($($args),*))
            }
            DataType::Decimal128(_, _) => Some($f::<Decimal128Type>($($args),*)),
            _ => None,
        }
    };
}

/// The physical encoding of one key column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Bool,
    /// A primitive of this many bytes.
    Fixed(usize),
    /// Length-prefixed bytes.
    Var,
    /// Fixed-size binary of this many bytes.
    FixedBinary(usize),
}

/// How one key column is read, encoded and decoded.
#[derive(Debug, Clone)]
struct ColumnCodec {
    /// The type of the column in input batches.
    input: DataType,
    /// The type it is encoded as and decoded to (the value type of a dictionary).
    value: DataType,
    encoding: Encoding,
}

fn width<T: ArrowPrimitiveType>() -> usize
where
    T::Native: KeyNative,
{
    <T::Native as KeyNative>::WIDTH
}

fn encoding_of(value: &DataType) -> Option<Encoding> {
    if let Some(w) = with_primitive!(value, width,) {
        return Some(Encoding::Fixed(w));
    }
    match value {
        DataType::Boolean => Some(Encoding::Bool),
        DataType::Utf8
        | DataType::LargeUtf8
        | DataType::Utf8View
        | DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView => Some(Encoding::Var),
        DataType::FixedSizeBinary(n) => usize::try_from(*n).ok().map(Encoding::FixedBinary),
        _ => None,
    }
}

impl ColumnCodec {
    fn new(input: &DataType) -> Result<Self> {
        let value = match input {
            DataType::Dictionary(_, v) => v.as_ref().clone(),
            other => other.clone(),
        };
        let encoding = encoding_of(&value).ok_or_else(|| {
            state_error(
                KEY,
                format!("a column of type {input} cannot be used as a key"),
            )
        })?;
        Ok(ColumnCodec {
            input: input.clone(),
            value,
            encoding,
        })
    }
}

/// Encodes the key columns of batches into stable per-row key bytes, and decodes key
/// bytes back into columns (to emit keys of fired timers, for instance). See the
/// module documentation for the format.
#[derive(Debug, Clone)]
pub struct KeyCodec {
    /// Indexes of the key columns in input batches.
    columns: Vec<usize>,
    codecs: Vec<ColumnCodec>,
}

impl KeyCodec {
    /// A codec for key columns of the given types, which [`KeyCodec::encode`] reads
    /// from columns `0..types.len()` of a batch.
    pub fn new(types: &[DataType]) -> Result<Self> {
        Ok(KeyCodec {
            columns: (0..types.len()).collect(),
            codecs: types.iter().map(ColumnCodec::new).collect::<Result<_>>()?,
        })
    }

    /// A codec for the columns `columns` (indexes into `schema`).
    pub fn for_columns(schema: &Schema, columns: &[usize]) -> Result<Self> {
        let codecs = columns
            .iter()
            .map(|&i| {
                let field = schema.fields().get(i).ok_or_else(|| {
                    state_error(
                        KEY,
                        format!(
                            "key column {i} does not exist: the schema has {} columns",
                            schema.fields().len()
                        ),
                    )
                })?;
                ColumnCodec::new(field.data_type())
            })
            .collect::<Result<_>>()?;
        Ok(KeyCodec {
            columns: columns.to_vec(),
            codecs,
        })
    }

    /// The indexes of the key columns in input batches.
    pub fn columns(&self) -> &[usize] {
        &self.columns
    }

    /// The types that [`KeyCodec::decode`] produces: the key columns' types, with
    /// dictionaries replaced by their value types.
    pub fn decoded_types(&self) -> Vec<DataType> {
        self.codecs.iter().map(|c| c.value.clone()).collect()
    }

    /// Encodes the key columns of every row of `batch`.
    pub fn encode(&self, batch: &RecordBatch) -> Result<EncodedKeys> {
        let arrays = self
            .columns
            .iter()
            .map(|&i| {
                if i < batch.num_columns() {
                    Ok(Arc::clone(batch.column(i)))
                } else {
                    Err(state_error(
                        KEY,
                        format!(
                            "key column {i} does not exist: the batch has {} columns",
                            batch.num_columns()
                        ),
                    ))
                }
            })
            .collect::<Result<Vec<_>>>()?;
        self.encode_rows(&arrays, batch.num_rows())
    }

    /// Encodes the rows of `arrays`, one array per key column in the codec's order.
    pub fn encode_arrays(&self, arrays: &[ArrayRef]) -> Result<EncodedKeys> {
        let rows = arrays.first().map_or(0, |a| a.len());
        self.encode_rows(arrays, rows)
    }

    fn encode_rows(&self, arrays: &[ArrayRef], rows: usize) -> Result<EncodedKeys> {
        if arrays.len() != self.codecs.len() {
            return Err(state_error(
                KEY,
                format!(
                    "expected {} key columns, got {}",
                    self.codecs.len(),
                    arrays.len()
                ),
            ));
        }
        let mut values = Vec::with_capacity(arrays.len());
        for (array, codec) in arrays.iter().zip(&self.codecs) {
            if array.data_type() != &codec.input {
                return Err(state_error(
                    KEY,
                    format!(
                        "key column has type {}, expected {}",
                        array.data_type(),
                        codec.input
                    ),
                ));
            }
            if array.len() != rows {
                return Err(state_error(
                    KEY,
                    format!("key column has {} rows, expected {rows}", array.len()),
                ));
            }
            let array = if codec.input == codec.value {
                Arc::clone(array)
            } else {
                arrow::compute::cast(array, &codec.value)
                    .map_err(|e| EngineError::arrow("decoding a dictionary key column", e))?
            };
            values.push(array);
        }

        // Pass 1: the length of every row.
        let mut lens = vec![0usize; rows];
        for (array, codec) in values.iter().zip(&self.codecs) {
            add_lengths(array.as_ref(), codec, &mut lens)?;
        }
        let mut offsets = Vec::with_capacity(rows + 1);
        let mut total = 0usize;
        offsets.push(0);
        for len in &lens {
            total += len;
            offsets.push(total);
        }
        // Pass 2: write every column into every row.
        let mut data = vec![0u8; total];
        let mut cursors = offsets[..rows].to_vec();
        for (array, codec) in values.iter().zip(&self.codecs) {
            write_column(array.as_ref(), codec, &mut data, &mut cursors)?;
        }
        Ok(EncodedKeys { data, offsets })
    }

    /// Decodes key bytes (as made by this codec) back into columns of
    /// [`KeyCodec::decoded_types`]. Corrupt or foreign bytes give an error, never a
    /// panic.
    pub fn decode<'a, I>(&self, keys: I) -> Result<Vec<ArrayRef>>
    where
        I: IntoIterator<Item = &'a [u8]>,
    {
        let keys: Vec<&[u8]> = keys.into_iter().collect();
        let mut cursors = vec![0usize; keys.len()];
        let mut out = Vec::with_capacity(self.codecs.len());
        for codec in &self.codecs {
            out.push(decode_column(codec, &keys, &mut cursors)?);
        }
        for (key, cursor) in keys.iter().zip(&cursors) {
            if *cursor != key.len() {
                return Err(state_error(
                    KEY,
                    format!(
                        "key of {} bytes has {} trailing bytes",
                        key.len(),
                        key.len() - cursor
                    ),
                ));
            }
        }
        Ok(out)
    }
}

fn downcast_error(dt: &DataType) -> EngineError {
    state_error(KEY, format!("unexpected key array of type {dt}"))
}

fn add_lengths(array: &dyn Array, codec: &ColumnCodec, lens: &mut [usize]) -> Result<()> {
    let nulls = array.logical_nulls();
    let fixed = match codec.encoding {
        Encoding::Bool => Some(1),
        Encoding::Fixed(w) | Encoding::FixedBinary(w) => Some(w),
        Encoding::Var => None,
    };
    match (fixed, nulls) {
        (Some(w), None) => lens.iter_mut().for_each(|l| *l += 1 + w),
        (Some(w), Some(nulls)) => {
            for (l, valid) in lens.iter_mut().zip(nulls.iter()) {
                *l += if valid { 1 + w } else { 1 };
            }
        }
        (None, nulls) => {
            let valid = |i: usize| nulls.as_ref().is_none_or(|n| n.is_valid(i));
            let mut add = |i: usize, len: usize| -> Result<()> {
                if u32::try_from(len).is_err() {
                    return Err(state_error(
                        KEY,
                        format!("a key value of {len} bytes is too long"),
                    ));
                }
                lens[i] += if valid(i) { 5 + len } else { 1 };
                Ok(())
            };
            let dt = array.data_type();
            match dt {
                DataType::Utf8 => {
                    let a = array
                        .as_string_opt::<i32>()
                        .ok_or_else(|| downcast_error(dt))?;
                    for (i, w) in a.offsets().windows(2).enumerate() {
                        add(i, (w[1] - w[0]) as usize)?;
                    }
                }
                DataType::LargeUtf8 => {
                    let a = array
                        .as_string_opt::<i64>()
                        .ok_or_else(|| downcast_error(dt))?;
                    for (i, w) in a.offsets().windows(2).enumerate() {
                        add(i, (w[1] - w[0]) as usize)?;
                    }
                }
                DataType::Binary => {
                    let a = array
                        .as_binary_opt::<i32>()
                        .ok_or_else(|| downcast_error(dt))?;
                    for (i, w) in a.offsets().windows(2).enumerate() {
                        add(i, (w[1] - w[0]) as usize)?;
                    }
                }
                DataType::LargeBinary => {
                    let a = array
                        .as_binary_opt::<i64>()
                        .ok_or_else(|| downcast_error(dt))?;
                    for (i, w) in a.offsets().windows(2).enumerate() {
                        add(i, (w[1] - w[0]) as usize)?;
                    }
                }
                DataType::Utf8View | DataType::BinaryView => {
                    // The low 32 bits of a view are the value's length.
                    let views = match dt {
                        DataType::Utf8View => array.as_string_view_opt().map(|a| a.views()),
                        _ => array.as_binary_view_opt().map(|a| a.views()),
                    }
                    .ok_or_else(|| downcast_error(dt))?;
                    for (i, v) in views.iter().enumerate() {
                        add(i, (*v as u32) as usize)?;
                    }
                }
                _ => return Err(downcast_error(dt)),
            }
        }
    }
    Ok(())
}

/// Writes the tag and, for valid rows, calls `value(row, out)`; advances the cursors.
#[inline]
fn write_rows(
    nulls: Option<&arrow::buffer::NullBuffer>,
    data: &mut [u8],
    cursors: &mut [usize],
    mut value: impl FnMut(usize, &mut [u8]) -> usize,
) {
    for (i, c) in cursors.iter_mut().enumerate() {
        if nulls.is_some_and(|n| n.is_null(i)) {
            data[*c] = 0;
            *c += 1;
        } else {
            data[*c] = 1;
            let n = value(i, &mut data[*c + 1..]);
            *c += 1 + n;
        }
    }
}

fn write_primitive<T: ArrowPrimitiveType>(
    array: &dyn Array,
    data: &mut [u8],
    cursors: &mut [usize],
) -> Result<()>
where
    T::Native: KeyNative,
{
    let a = array
        .as_primitive_opt::<T>()
        .ok_or_else(|| downcast_error(array.data_type()))?;
    let values = a.values();
    write_rows(a.nulls(), data, cursors, |i, out| {
        values[i].write(out);
        <T::Native as KeyNative>::WIDTH
    });
    Ok(())
}

fn write_bytes(out: &mut [u8], v: &[u8]) -> usize {
    // Lengths were checked to fit in u32 in `add_lengths`.
    out[..4].copy_from_slice(&(v.len() as u32).to_be_bytes());
    out[4..4 + v.len()].copy_from_slice(v);
    4 + v.len()
}

fn write_column(
    array: &dyn Array,
    codec: &ColumnCodec,
    data: &mut [u8],
    cursors: &mut [usize],
) -> Result<()> {
    let dt = array.data_type();
    if let Some(r) = with_primitive!(dt, write_primitive, array, data, cursors) {
        return r;
    }
    let logical_nulls = array.logical_nulls();
    let nulls = logical_nulls.as_ref();
    match (dt, codec.encoding) {
        (DataType::Boolean, _) => {
            let a = array.as_boolean_opt().ok_or_else(|| downcast_error(dt))?;
            write_rows(nulls, data, cursors, |i, out| {
                out[0] = u8::from(a.value(i));
                1
            });
        }
        (DataType::Utf8, _) => {
            let a = array
                .as_string_opt::<i32>()
                .ok_or_else(|| downcast_error(dt))?;
            write_rows(nulls, data, cursors, |i, out| {
                write_bytes(out, a.value(i).as_bytes())
            });
        }
        (DataType::LargeUtf8, _) => {
            let a = array
                .as_string_opt::<i64>()
                .ok_or_else(|| downcast_error(dt))?;
            write_rows(nulls, data, cursors, |i, out| {
                write_bytes(out, a.value(i).as_bytes())
            });
        }
        (DataType::Utf8View, _) => {
            let a = array
                .as_string_view_opt()
                .ok_or_else(|| downcast_error(dt))?;
            write_rows(nulls, data, cursors, |i, out| {
                write_bytes(out, a.value(i).as_bytes())
            });
        }
        (DataType::Binary, _) => {
            let a = array
                .as_binary_opt::<i32>()
                .ok_or_else(|| downcast_error(dt))?;
            write_rows(nulls, data, cursors, |i, out| write_bytes(out, a.value(i)));
        }
        (DataType::LargeBinary, _) => {
            let a = array
                .as_binary_opt::<i64>()
                .ok_or_else(|| downcast_error(dt))?;
            write_rows(nulls, data, cursors, |i, out| write_bytes(out, a.value(i)));
        }
        (DataType::BinaryView, _) => {
            let a = array
                .as_binary_view_opt()
                .ok_or_else(|| downcast_error(dt))?;
            write_rows(nulls, data, cursors, |i, out| write_bytes(out, a.value(i)));
        }
        (DataType::FixedSizeBinary(_), Encoding::FixedBinary(w)) => {
            let a = array
                .as_fixed_size_binary_opt()
                .ok_or_else(|| downcast_error(dt))?;
            write_rows(nulls, data, cursors, |i, out| {
                out[..w].copy_from_slice(a.value(i));
                w
            });
        }
        _ => return Err(downcast_error(dt)),
    }
    Ok(())
}

/// Reads the tag of `key` at `cursor`: `Ok(true)` when a value follows.
fn read_tag(key: &[u8], cursor: &mut usize) -> Result<bool> {
    match key.get(*cursor) {
        Some(0) => {
            *cursor += 1;
            Ok(false)
        }
        Some(1) => {
            *cursor += 1;
            Ok(true)
        }
        Some(t) => Err(state_error(KEY, format!("corrupt key: bad tag {t}"))),
        None => Err(truncated()),
    }
}

fn truncated() -> EngineError {
    state_error(KEY, "corrupt key: truncated")
}

fn read_fixed<'a>(key: &'a [u8], cursor: &mut usize, n: usize) -> Result<&'a [u8]> {
    let v = key.get(*cursor..*cursor + n).ok_or_else(truncated)?;
    *cursor += n;
    Ok(v)
}

fn read_var<'a>(key: &'a [u8], cursor: &mut usize) -> Result<&'a [u8]> {
    let len = read_fixed(key, cursor, 4)?;
    let mut l = [0u8; 4];
    l.copy_from_slice(len);
    read_fixed(key, cursor, u32::from_be_bytes(l) as usize)
}

fn decode_primitive<T: ArrowPrimitiveType>(
    dt: &DataType,
    keys: &[&[u8]],
    cursors: &mut [usize],
) -> Result<ArrayRef>
where
    T::Native: KeyNative,
{
    let mut b = PrimitiveBuilder::<T>::with_capacity(keys.len()).with_data_type(dt.clone());
    for (key, c) in keys.iter().zip(cursors.iter_mut()) {
        if read_tag(key, c)? {
            let v = read_fixed(key, c, <T::Native as KeyNative>::WIDTH)?;
            b.append_value(<T::Native as KeyNative>::read(v));
        } else {
            b.append_null();
        }
    }
    Ok(Arc::new(b.finish()))
}

fn utf8(v: &[u8]) -> Result<&str> {
    std::str::from_utf8(v).map_err(|_| state_error(KEY, "corrupt key: not UTF-8"))
}

/// Reads one variable-length value (or null) of every key and hands it to `append`.
fn decode_var(
    keys: &[&[u8]],
    cursors: &mut [usize],
    mut append: impl FnMut(Option<&[u8]>) -> Result<()>,
) -> Result<()> {
    for (key, c) in keys.iter().zip(cursors.iter_mut()) {
        if read_tag(key, c)? {
            append(Some(read_var(key, c)?))?;
        } else {
            append(None)?;
        }
    }
    Ok(())
}

fn decode_column(codec: &ColumnCodec, keys: &[&[u8]], cursors: &mut [usize]) -> Result<ArrayRef> {
    let dt = &codec.value;
    if let Some(r) = with_primitive!(dt, decode_primitive, dt, keys, cursors) {
        return r;
    }
    let array = match dt {
        DataType::Boolean => {
            let mut b = BooleanBuilder::with_capacity(keys.len());
            for (key, c) in keys.iter().zip(cursors.iter_mut()) {
                if read_tag(key, c)? {
                    b.append_value(read_fixed(key, c, 1)?[0] != 0);
                } else {
                    b.append_null();
                }
            }
            Arc::new(b.finish()) as ArrayRef
        }
        DataType::Utf8 => {
            let mut b = GenericStringBuilder::<i32>::new();
            decode_var(keys, cursors, |v| {
                match v {
                    Some(v) => b.append_value(utf8(v)?),
                    None => b.append_null(),
                }
                Ok(())
            })?;
            Arc::new(b.finish()) as ArrayRef
        }
        DataType::LargeUtf8 => {
            let mut b = GenericStringBuilder::<i64>::new();
            decode_var(keys, cursors, |v| {
                match v {
                    Some(v) => b.append_value(utf8(v)?),
                    None => b.append_null(),
                }
                Ok(())
            })?;
            Arc::new(b.finish()) as ArrayRef
        }
        DataType::Utf8View => {
            let mut b = StringViewBuilder::new();
            decode_var(keys, cursors, |v| {
                match v {
                    Some(v) => b.append_value(utf8(v)?),
                    None => b.append_null(),
                }
                Ok(())
            })?;
            Arc::new(b.finish()) as ArrayRef
        }
        DataType::Binary => {
            let mut b = GenericBinaryBuilder::<i32>::new();
            decode_var(keys, cursors, |v| {
                b.append_option(v);
                Ok(())
            })?;
            Arc::new(b.finish()) as ArrayRef
        }
        DataType::LargeBinary => {
            let mut b = GenericBinaryBuilder::<i64>::new();
            decode_var(keys, cursors, |v| {
                b.append_option(v);
                Ok(())
            })?;
            Arc::new(b.finish()) as ArrayRef
        }
        DataType::BinaryView => {
            let mut b = BinaryViewBuilder::new();
            decode_var(keys, cursors, |v| {
                b.append_option(v);
                Ok(())
            })?;
            Arc::new(b.finish()) as ArrayRef
        }
        DataType::FixedSizeBinary(n) => {
            let w = usize::try_from(*n).map_err(|_| downcast_error(dt))?;
            let mut b = FixedSizeBinaryBuilder::with_capacity(keys.len(), *n);
            for (key, c) in keys.iter().zip(cursors.iter_mut()) {
                if read_tag(key, c)? {
                    b.append_value(read_fixed(key, c, w)?)
                        .map_err(|e| EngineError::arrow("decoding a key", e))?;
                } else {
                    b.append_null();
                }
            }
            Arc::new(b.finish()) as ArrayRef
        }
        _ => return Err(downcast_error(dt)),
    };
    Ok(array)
}

/// The key bytes of every row of a batch, in one buffer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodedKeys {
    data: Vec<u8>,
    /// `offsets[i]..offsets[i + 1]` is row `i`; `rows + 1` entries.
    offsets: Vec<usize>,
}

impl EncodedKeys {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key bytes of row `row`. Panics if `row >= len()`, like slice indexing.
    pub fn row(&self, row: usize) -> &[u8] {
        &self.data[self.offsets[row]..self.offsets[row + 1]]
    }

    /// The key bytes of row `row`, or `None` past the end.
    pub fn get(&self, row: usize) -> Option<&[u8]> {
        let start = *self.offsets.get(row)?;
        let end = *self.offsets.get(row + 1)?;
        self.data.get(start..end)
    }

    /// The key bytes of every row, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        self.offsets.windows(2).map(move |w| &self.data[w[0]..w[1]])
    }

    /// The stable hash ([`hash_key`]) of every row.
    pub fn hashes(&self) -> Vec<u64> {
        self.iter().map(hash_key).collect()
    }

    /// The key group of every row for `max_parallelism` key groups.
    pub fn key_groups(&self, max_parallelism: u16) -> Vec<u16> {
        self.iter()
            .map(|k| key_group_for_hash(hash_key(k), max_parallelism))
            .collect()
    }
}

const SEED: u64 = 0x243f_6a88_85a3_08d3;
const K1: u64 = 0x9e37_79b9_7f4a_7c15;
const K2: u64 = 0xa076_1d64_78bd_642f;
const K3: u64 = 0xe703_7ed1_a0b4_28db;

#[inline]
fn folded_multiply(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

/// The stable 64-bit hash of key bytes: the same on every platform, in every process
/// and in every version of weir (it decides where checkpointed state lives; a test pins
/// its values). Not meant to resist hash flooding.
pub fn hash_key(bytes: &[u8]) -> u64 {
    let mut h = SEED ^ (bytes.len() as u64).wrapping_mul(K1);
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        h = folded_multiply(h ^ u64::from_le_bytes(w), K2);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = folded_multiply(h ^ u64::from_le_bytes(w), K3);
    }
    fmix64(h)
}

/// Hashes the key columns `columns` of every row of `batch`: the [`hash_key`] of the
/// row's [`KeyCodec`] bytes, so equal keys hash equally in any batch, process or
/// restart, whatever the string or dictionary layout of the batch.
pub fn hash_columns(batch: &RecordBatch, columns: &[usize]) -> Result<Vec<u64>> {
    Ok(KeyCodec::for_columns(batch.schema_ref(), columns)?
        .encode(batch)?
        .hashes())
}

/// The key group of every row of `batch` keyed by `columns`.
pub fn key_groups_for_batch(
    batch: &RecordBatch,
    columns: &[usize],
    max_parallelism: u16,
) -> Result<Vec<u16>> {
    Ok(KeyCodec::for_columns(batch.schema_ref(), columns)?
        .encode(batch)?
        .key_groups(max_parallelism))
}

/// The key bytes of one row. To key a whole batch, use [`KeyCodec::encode`] once.
pub fn key_bytes(batch: &RecordBatch, columns: &[usize], row: usize) -> Result<Vec<u8>> {
    if row >= batch.num_rows() {
        return Err(state_error(
            KEY,
            format!(
                "row {row} is past the end of a batch of {}",
                batch.num_rows()
            ),
        ));
    }
    let codec = KeyCodec::for_columns(batch.schema_ref(), columns)?;
    let keys = codec.encode(&batch.slice(row, 1))?;
    Ok(keys.get(0).map(<[u8]>::to_vec).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{
        BinaryArray, BooleanArray, DictionaryArray, FixedSizeBinaryArray, Float64Array, Int32Array,
        Int64Array, LargeStringArray, StringArray, StringViewArray, TimestampMillisecondArray,
        UInt8Array,
    };
    use arrow::datatypes::Field;
    use proptest::prelude::*;

    fn batch(cols: Vec<(&str, ArrayRef)>) -> RecordBatch {
        let fields: Vec<Field> = cols
            .iter()
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
            .collect();
        let arrays = cols.into_iter().map(|(_, a)| a).collect();
        RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).expect("valid batch")
    }

    #[test]
    fn hash_is_pinned() {
        // These values are part of the checkpoint format: never change them.
        assert_eq!(hash_key(b""), 0x7acd_bb98_b134_4213, "{:#x}", hash_key(b""));
        assert_eq!(
            hash_key(b"hello world!"),
            0x9da4_9ae2_f043_dcb9,
            "{:#x}",
            hash_key(b"hello world!")
        );
        let b = batch(vec![
            ("s", Arc::new(StringArray::from(vec!["a"])) as ArrayRef),
            ("n", Arc::new(Int64Array::from(vec![42]))),
        ]);
        let h = hash_columns(&b, &[0, 1]).expect("hash");
        assert_eq!(h, vec![0x9c7f_f205_988a_92c6], "{:#x}", h[0]);
        let kg = key_groups_for_batch(&b, &[0, 1], 128).expect("kg");
        assert_eq!(kg, vec![16], "{kg:?}");
        // The encoding of ("a", 42_i64) is part of the format too.
        assert_eq!(
            key_bytes(&b, &[0, 1], 0).expect("bytes"),
            vec![1, 0, 0, 0, 1, b'a', 1, 0x80, 0, 0, 0, 0, 0, 0, 42]
        );
    }

    #[test]
    fn equal_keys_hash_equally_across_batches_and_layouts() {
        let a = batch(vec![
            (
                "k",
                Arc::new(StringArray::from(vec!["x", "y", "z", "y"])) as ArrayRef,
            ),
            ("n", Arc::new(Int64Array::from(vec![1, 2, 3, 4]))),
        ]);
        let b = batch(vec![
            ("n", Arc::new(Int64Array::from(vec![9, 9]))),
            (
                "k",
                Arc::new(LargeStringArray::from(vec!["y", "q"])) as ArrayRef,
            ),
        ]);
        let c = batch(vec![(
            "k",
            Arc::new(StringViewArray::from(vec![
                "a very long string key over 12",
                "y",
            ])) as ArrayRef,
        )]);
        let d = batch(vec![(
            "k",
            Arc::new(DictionaryArray::<Int32Type>::from_iter(["z", "y", "x"])) as ArrayRef,
        )]);
        let ha = hash_columns(&a, &[0]).expect("a");
        let hb = hash_columns(&b, &[1]).expect("b");
        let hc = hash_columns(&c, &[0]).expect("c");
        let hd = hash_columns(&d, &[0]).expect("d");
        assert_eq!(ha[1], ha[3]);
        assert_ne!(ha[0], ha[1]);
        assert_ne!(ha[1], ha[2]);
        assert_eq!(ha[1], hb[0]);
        assert_eq!(ha[1], hc[1]);
        assert_eq!(hd, vec![ha[2], ha[1], ha[0]]);
        // Deterministic: the same batch hashes the same twice.
        assert_eq!(ha, hash_columns(&a, &[0]).expect("again"));
        // Two columns: the order of the key columns matters, the values do too.
        let ab = hash_columns(&a, &[0, 1]).expect("ab");
        assert_ne!(ab[1], ab[3]);
        assert_ne!(ab, hash_columns(&a, &[1, 0]).expect("ba"));
    }

    #[test]
    fn nulls_are_keys_and_differ_from_values() {
        let a = batch(vec![(
            "k",
            Arc::new(StringArray::from(vec![Some(""), None, Some(""), None])) as ArrayRef,
        )]);
        let h = hash_columns(&a, &[0]).expect("hash");
        assert_eq!(h[0], h[2]);
        assert_eq!(h[1], h[3]);
        assert_ne!(h[0], h[1]);
    }

    #[test]
    fn floats_normalise_zero_and_nan() {
        let a = batch(vec![(
            "f",
            Arc::new(Float64Array::from(vec![
                0.0,
                -0.0,
                f64::NAN,
                -f64::NAN,
                1.5,
            ])) as ArrayRef,
        )]);
        let keys = KeyCodec::for_columns(a.schema_ref(), &[0])
            .expect("codec")
            .encode(&a)
            .expect("encode");
        assert_eq!(keys.row(0), keys.row(1));
        assert_eq!(keys.row(2), keys.row(3));
        assert_ne!(keys.row(0), keys.row(4));
    }

    #[test]
    fn roundtrip_many_types() {
        let ts = TimestampMillisecondArray::from(vec![Some(-5), None, Some(i64::MAX)])
            .with_timezone("UTC");
        let a = batch(vec![
            (
                "i",
                Arc::new(Int32Array::from(vec![Some(-1), Some(0), None])) as ArrayRef,
            ),
            (
                "u",
                Arc::new(UInt8Array::from(vec![Some(255), None, Some(0)])),
            ),
            (
                "b",
                Arc::new(BooleanArray::from(vec![Some(true), Some(false), None])),
            ),
            (
                "f",
                Arc::new(Float64Array::from(vec![Some(-2.5), Some(1e300), None])),
            ),
            (
                "s",
                Arc::new(StringArray::from(vec![Some("héllo"), None, Some("")])),
            ),
            (
                "y",
                Arc::new(BinaryArray::from(vec![
                    Some(&b"\x00\x01"[..]),
                    Some(b""),
                    None,
                ])),
            ),
            (
                "x",
                Arc::new(
                    FixedSizeBinaryArray::try_from_sparse_iter_with_size(
                        vec![Some(vec![1u8, 2]), None, Some(vec![3, 4])].into_iter(),
                        2,
                    )
                    .expect("fsb"),
                ),
            ),
            ("t", Arc::new(ts)),
        ]);
        let cols: Vec<usize> = (0..a.num_columns()).collect();
        let codec = KeyCodec::for_columns(a.schema_ref(), &cols).expect("codec");
        let keys = codec.encode(&a).expect("encode");
        assert_eq!(keys.len(), 3);
        let decoded = codec.decode(keys.iter()).expect("decode");
        for (i, col) in decoded.iter().enumerate() {
            assert_eq!(col.as_ref(), a.column(i).as_ref(), "column {i}");
        }
        // One row at a time gives the same bytes.
        for r in 0..3 {
            assert_eq!(key_bytes(&a, &cols, r).expect("row"), keys.row(r));
        }
        assert!(key_bytes(&a, &cols, 3).is_err());
    }

    #[test]
    fn dictionary_decodes_to_values() {
        let a = batch(vec![(
            "k",
            Arc::new(DictionaryArray::<Int32Type>::from_iter([
                Some("a"),
                None,
                Some("a"),
            ])) as ArrayRef,
        )]);
        let codec = KeyCodec::for_columns(a.schema_ref(), &[0]).expect("codec");
        assert_eq!(codec.decoded_types(), vec![DataType::Utf8]);
        let keys = codec.encode(&a).expect("encode");
        let decoded = codec.decode(keys.iter()).expect("decode");
        let expected: ArrayRef = Arc::new(StringArray::from(vec![Some("a"), None, Some("a")]));
        assert_eq!(decoded[0].as_ref(), expected.as_ref());
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let codec = KeyCodec::new(&[DataType::Utf8, DataType::Int64]).expect("codec");
        for bad in [
            &b""[..],
            b"\x02",
            b"\x01\x00\x00",
            b"\x01\x00\x00\x00\x09ab",
        ] {
            assert!(codec.decode([bad]).is_err(), "{bad:?}");
        }
        let ok = codec
            .encode_arrays(&[
                Arc::new(StringArray::from(vec!["ab"])) as ArrayRef,
                Arc::new(Int64Array::from(vec![7])),
            ])
            .expect("encode");
        let mut trailing = ok.row(0).to_vec();
        trailing.push(0);
        assert!(codec.decode([trailing.as_slice()]).is_err());
        assert!(codec.decode([ok.row(0)]).is_ok());
        // Wrong column type, missing column, unsupported type.
        let a = batch(vec![("n", Arc::new(Int32Array::from(vec![1])) as ArrayRef)]);
        assert!(codec.encode(&a).is_err());
        assert!(hash_columns(&a, &[1]).is_err());
        assert!(KeyCodec::new(&[DataType::Null]).is_err());
    }

    #[test]
    fn integer_encoding_preserves_order() {
        let a = batch(vec![(
            "n",
            Arc::new(Int64Array::from(vec![i64::MIN, -1, 0, 1, i64::MAX])) as ArrayRef,
        )]);
        let keys = KeyCodec::for_columns(a.schema_ref(), &[0])
            .expect("codec")
            .encode(&a)
            .expect("encode");
        let rows: Vec<&[u8]> = keys.iter().collect();
        assert!(rows.windows(2).all(|w| w[0] < w[1]));
    }

    proptest! {
        #[test]
        fn hash_depends_only_on_the_key(
            rows in proptest::collection::vec((proptest::option::of("[a-c]{0,3}"), -3i64..3), 1..40),
            split in 0usize..40,
        ) {
            let split = split.min(rows.len());
            let make = |rows: &[(Option<String>, i64)]| batch(vec![
                ("s", Arc::new(StringArray::from(rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>())) as ArrayRef),
                ("n", Arc::new(Int64Array::from(rows.iter().map(|r| r.1).collect::<Vec<_>>()))),
            ]);
            let whole = hash_columns(&make(&rows), &[0, 1]).expect("whole");
            let mut parts = hash_columns(&make(&rows[..split]), &[0, 1]).expect("head");
            parts.extend(hash_columns(&make(&rows[split..]), &[0, 1]).expect("tail"));
            prop_assert_eq!(&whole, &parts);
            for i in 0..rows.len() {
                for j in 0..rows.len() {
                    prop_assert_eq!(rows[i] == rows[j], whole[i] == whole[j]);
                }
            }
            let codec = KeyCodec::new(&[DataType::Utf8, DataType::Int64]).expect("codec");
            let keys = codec.encode(&make(&rows)).expect("encode");
            let decoded = codec.decode(keys.iter()).expect("decode");
            let again = make(&rows);
            prop_assert_eq!(decoded[0].as_ref(), again.column(0).as_ref());
            prop_assert_eq!(decoded[1].as_ref(), again.column(1).as_ref());
        }
    }
}
