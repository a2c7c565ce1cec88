//! The `json` format's fast path: flat objects decoded in one pass, straight into Arrow
//! builders, for schemas whose fields are all strings, integers, floats, booleans or
//! timestamps (every schema a YAML `schema:` can declare except `date` and `binary`).
//!
//! Arrow's JSON decoder first builds a tape of the whole batch and then walks it once
//! per column; for the flat records of log pipelines that is most of the cost of a
//! parse-and-filter job. This path reads each record once, matches keys against the
//! schema (guessing that fields come in the same order as in the previous record),
//! parses values in place and appends them to column builders.
//!
//! It never decides anything Arrow's decoder would decide differently: it accepts only
//! strict JSON, and only the value forms whose result is unambiguous (a string for a
//! string field, a JSON integer for an integer field, any number for a float field,
//! `true`/`false`, `null`, an RFC 3339 `YYYY-MM-DDTHH:MM:SS[.fff…](Z|±HH:MM)` string or an
//! integer of epoch milliseconds for a timestamp). At the first record that is anything
//! else — bad JSON, a duplicate key, an escaped key, a string in an integer field, a
//! timestamp in another form, nesting deeper than [`MAX_DEPTH`] in an ignored field — it
//! stops, and that record goes through Arrow's decoder, which decodes it or says why it
//! is bad; then the fast path goes on (see `JsonDecoder::decode_values`). A property test holds the two
//! paths to the same output on arbitrary input.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use weir_engine::{EngineError, Result};

/// Deepest nesting of an ignored value the fast path skips itself.
pub(crate) const MAX_DEPTH: usize = 64;

/// What a field decodes to.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Utf8,
    Int64,
    Float64,
    Bool,
    /// Milliseconds since the epoch.
    TimestampMs,
}

/// One field's value in the record being parsed.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Absent,
    Null,
    /// A string without escapes: a byte range of the record.
    Raw(usize, usize),
    /// A string with escapes, unescaped: a byte range of the scratch string.
    Unescaped(usize, usize),
    Int(i64),
    Float(f64),
    Bool(bool),
}

/// The column builders of one batch.
enum Column {
    Utf8(StringBuilder),
    Int64(Int64Builder),
    Float64(Float64Builder),
    Bool(BooleanBuilder),
    TimestampMs(TimestampMillisecondBuilder),
}

/// The fast decoder for one (relaxed: nullable, millisecond timestamps) schema.
#[derive(Debug)]
pub(crate) struct FastJson {
    schema: SchemaRef,
    names: Vec<Box<[u8]>>,
    kinds: Vec<Kind>,
}

impl FastJson {
    /// The fast decoder of `relaxed`, or `None` if a field's type is not one it decodes.
    pub(crate) fn new(relaxed: &SchemaRef) -> Option<FastJson> {
        let mut kinds = Vec::with_capacity(relaxed.fields().len());
        for f in relaxed.fields() {
            kinds.push(match f.data_type() {
                DataType::Utf8 => Kind::Utf8,
                DataType::Int64 => Kind::Int64,
                DataType::Float64 => Kind::Float64,
                DataType::Boolean => Kind::Bool,
                DataType::Timestamp(TimeUnit::Millisecond, _) => Kind::TimestampMs,
                _ => return None,
            });
        }
        Some(FastJson {
            schema: relaxed.clone(),
            names: relaxed
                .fields()
                .iter()
                .map(|f| f.name().as_bytes().into())
                .collect(),
            kinds,
        })
    }

    /// Decodes records from the start of `lines` for as long as they take the fast
    /// path. Returns their batch (in the relaxed schema) and how many records it holds;
    /// the records from that count on are left to Arrow's decoder.
    pub(crate) fn decode_prefix<'a>(
        &self,
        lines: impl ExactSizeIterator<Item = &'a str>,
    ) -> Result<(RecordBatch, usize)> {
        // Capped: after a record left to Arrow, the decoder is called again for the rest
        // of the batch, and a batch of alternating records must not allocate its whole
        // size each time. Builders grow past the cap as needed.
        let capacity = lines.len().min(4096);
        let mut columns: Vec<Column> = self
            .schema
            .fields()
            .iter()
            .zip(&self.kinds)
            .map(|(f, kind)| match kind {
                Kind::Utf8 => Column::Utf8(StringBuilder::with_capacity(capacity, capacity * 16)),
                Kind::Int64 => Column::Int64(Int64Builder::with_capacity(capacity)),
                Kind::Float64 => Column::Float64(Float64Builder::with_capacity(capacity)),
                Kind::Bool => Column::Bool(BooleanBuilder::with_capacity(capacity)),
                Kind::TimestampMs => Column::TimestampMs(
                    TimestampMillisecondBuilder::with_capacity(capacity)
                        .with_data_type(f.data_type().clone()),
                ),
            })
            .collect();
        let mut slots = vec![Slot::Absent; self.kinds.len()];
        let mut scratch = String::new();
        let mut days = DayCache::default();
        let mut done = 0;
        for line in lines {
            scratch.clear();
            if self
                .parse(line, &mut slots, &mut scratch, &mut days)
                .is_none()
            {
                break;
            }
            for (slot, column) in slots.iter_mut().zip(columns.iter_mut()) {
                append(column, *slot, line, &scratch);
                *slot = Slot::Absent;
            }
            done += 1;
        }
        let arrays: Vec<ArrayRef> = columns
            .into_iter()
            .map(|c| -> ArrayRef {
                match c {
                    Column::Utf8(mut b) => Arc::new(b.finish()),
                    Column::Int64(mut b) => Arc::new(b.finish()),
                    Column::Float64(mut b) => Arc::new(b.finish()),
                    Column::Bool(mut b) => Arc::new(b.finish()),
                    Column::TimestampMs(mut b) => Arc::new(b.finish()),
                }
            })
            .collect();
        let batch = RecordBatch::try_new(self.schema.clone(), arrays)
            .map_err(|e| EngineError::arrow("building the decoded JSON batch", e))?;
        Ok((batch, done))
    }

    /// Parses one record into `slots`; `None` if it does not take the fast path (then
    /// `slots` are all reset).
    fn parse(
        &self,
        line: &str,
        slots: &mut [Slot],
        scratch: &mut String,
        days: &mut DayCache,
    ) -> Option<()> {
        let mut c = Cursor {
            s: line,
            i: 0,
            days,
        };
        let parsed = self.parse_object(&mut c, slots, scratch);
        if parsed.is_none() {
            slots.fill(Slot::Absent);
        }
        parsed
    }

    fn parse_object(
        &self,
        c: &mut Cursor<'_, '_>,
        slots: &mut [Slot],
        scratch: &mut String,
    ) -> Option<()> {
        c.ws();
        if c.peek()? != b'{' {
            return None;
        }
        let mut guess = 0;
        c.items(b'}', |c| {
            c.eat(b'"')?;
            let key = c.plain_string()?;
            c.ws();
            c.eat(b':')?;
            c.ws();
            match self.field(key, guess) {
                Some(f) => {
                    if !matches!(slots[f], Slot::Absent) {
                        return None; // duplicate key: Arrow's rules decide
                    }
                    slots[f] = c.value(self.kinds[f], scratch)?;
                    guess = f + 1;
                    Some(())
                }
                None => c.skip_value(0),
            }
        })?;
        c.ws();
        (c.i == c.s.len()).then_some(())
    }

    /// The field named `key`, trying `guess` first.
    fn field(&self, key: &[u8], guess: usize) -> Option<usize> {
        if self.names.get(guess).is_some_and(|n| same(n, key)) {
            return Some(guess);
        }
        self.names.iter().position(|n| same(n, key))
    }
}

/// Appends one slot's value (the parser made sure it fits the column; debug builds
/// check it).
fn append(column: &mut Column, slot: Slot, line: &str, scratch: &str) {
    match (column, slot) {
        (Column::Utf8(b), Slot::Raw(start, end)) => b.append_option(line.get(start..end)),
        (Column::Utf8(b), Slot::Unescaped(start, end)) => b.append_option(scratch.get(start..end)),
        (Column::Int64(b), Slot::Int(v)) => b.append_value(v),
        (Column::Float64(b), Slot::Float(v)) => b.append_value(v),
        (Column::Bool(b), Slot::Bool(v)) => b.append_value(v),
        (Column::TimestampMs(b), Slot::Int(v)) => b.append_value(v),
        (column, slot) => {
            debug_assert!(
                matches!(slot, Slot::Null | Slot::Absent),
                "{slot:?} does not fit its column"
            );
            match column {
                Column::Utf8(b) => b.append_null(),
                Column::Int64(b) => b.append_null(),
                Column::Float64(b) => b.append_null(),
                Column::Bool(b) => b.append_null(),
                Column::TimestampMs(b) => b.append_null(),
            }
        }
    }
}

/// Byte-wise equality of two short slices (a key and a field name), without a call.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// The last date a timestamp named and its day number: the records of a batch mostly
/// fall on the same day.
#[derive(Debug, Default)]
struct DayCache {
    /// `year * 10_000 + month * 100 + day`, 0 when empty (no valid date has it).
    key: i64,
    days: i64,
}

impl DayCache {
    fn days(&mut self, year: i64, month: i64, day: i64) -> i64 {
        let key = year * 10_000 + month * 100 + day;
        if key != self.key {
            self.key = key;
            self.days = days_from_civil(year, month, day);
        }
        self.days
    }
}

/// A position in one record. Every method returns `None` where the record leaves the
/// fast path.
struct Cursor<'a, 'c> {
    s: &'a str,
    i: usize,
    days: &'c mut DayCache,
}

impl<'a> Cursor<'a, '_> {
    fn bytes(&self) -> &'a [u8] {
        self.s.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.i += 1;
        Some(b)
    }

    fn eat(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i.checked_add(word.len())?;
        (self.bytes().get(self.i..end)? == word).then(|| self.i = end)
    }

    /// Skips JSON whitespace.
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    /// The rest of a string after its opening quote, if it has no escapes; the cursor
    /// moves past the closing quote.
    fn plain_string(&mut self) -> Option<&'a [u8]> {
        let rest = self.bytes().get(self.i..)?;
        let n = string_stop(rest)?;
        if rest[n] != b'"' {
            return None;
        }
        self.i += n + 1;
        Some(&rest[..n])
    }

    /// The rest of a string after its opening quote as a slot: a range of the record,
    /// or, if it has escapes, of `scratch` (where it is unescaped). With `scratch` =
    /// `None` the string is only checked and skipped.
    fn string(&mut self, mut scratch: Option<&mut String>) -> Option<Slot> {
        let start = self.i;
        let mut unescaped_from: Option<usize> = None;
        loop {
            let rest = self.bytes().get(self.i..)?;
            let n = string_stop(rest)?;
            let segment = self.s.get(self.i..self.i + n)?;
            self.i += n + 1;
            if rest[n] == b'"' {
                return Some(match (unescaped_from, scratch) {
                    (Some(from), Some(out)) => {
                        out.push_str(segment);
                        Slot::Unescaped(from, out.len())
                    }
                    _ => Slot::Raw(start, self.i - 1),
                });
            }
            // A backslash.
            if let Some(out) = scratch.as_deref_mut() {
                // At the first escape, `segment` is the string's text so far.
                unescaped_from.get_or_insert(out.len());
                out.push_str(segment);
            } else {
                unescaped_from.get_or_insert(0);
            }
            let ch = match self.next()? {
                b'"' => '"',
                b'\\' => '\\',
                b'/' => '/',
                b'b' => '\u{8}',
                b'f' => '\u{c}',
                b'n' => '\n',
                b'r' => '\r',
                b't' => '\t',
                b'u' => {
                    let hex = self.s.get(self.i..self.i.checked_add(4)?)?;
                    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return None;
                    }
                    let code = u32::from_str_radix(hex, 16).ok()?;
                    self.i += 4;
                    // Surrogates (pairs or lone) are left to Arrow's rules.
                    char::from_u32(code)?
                }
                _ => return None,
            };
            if let Some(out) = scratch.as_deref_mut() {
                out.push(ch);
            }
        }
    }

    /// A JSON number: its text and whether it is an integer (no fraction or exponent).
    fn number(&mut self) -> Option<(&'a str, bool)> {
        let b = self.bytes();
        let start = self.i;
        let mut i = start;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        // The end of a run of at least one digit from `i`.
        let digits = |mut i: usize| {
            let start = i;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            (i > start).then_some(i)
        };
        match b.get(i)? {
            b'0' => i += 1,
            b'1'..=b'9' => i = digits(i)?,
            _ => return None,
        }
        let mut integer = true;
        if b.get(i) == Some(&b'.') {
            integer = false;
            i = digits(i + 1)?;
        }
        if let Some(b'e' | b'E') = b.get(i) {
            integer = false;
            i += 1;
            if let Some(b'+' | b'-') = b.get(i) {
                i += 1;
            }
            i = digits(i)?;
        }
        self.i = i;
        Some((self.s.get(start..i)?, integer))
    }

    /// The value of a field of `kind`.
    fn value(&mut self, kind: Kind, scratch: &mut String) -> Option<Slot> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            return Some(Slot::Null);
        }
        match kind {
            Kind::Utf8 => {
                self.eat(b'"')?;
                self.string(Some(scratch))
            }
            Kind::Int64 => match self.number()? {
                (text, true) => text.parse().ok().map(Slot::Int),
                _ => None,
            },
            Kind::Float64 => {
                let (text, _) = self.number()?;
                let v: f64 = text.parse().ok()?;
                v.is_finite().then_some(Slot::Float(v))
            }
            Kind::Bool => match self.peek()? {
                b't' => self.literal(b"true").map(|_| Slot::Bool(true)),
                b'f' => self.literal(b"false").map(|_| Slot::Bool(false)),
                _ => None,
            },
            Kind::TimestampMs => {
                if self.peek()? == b'"' {
                    self.i += 1;
                    {
                        let text = self.plain_string()?;
                        rfc3339_millis(text, self.days).map(Slot::Int)
                    }
                } else {
                    // Epoch milliseconds a timestamp writer can represent; others are
                    // left to the exactness rules (`json_exact`).
                    match self.number()? {
                        (text, true) => text
                            .parse()
                            .ok()
                            .filter(|ms| {
                                (super::json_exact::MIN_EPOCH_MS..=super::json_exact::MAX_EPOCH_MS)
                                    .contains(ms)
                            })
                            .map(Slot::Int),
                        _ => None,
                    }
                }
            }
        }
    }

    /// At an opening bracket: the items `item` reads, separated by commas, up to the
    /// bracket `close`.
    fn items(&mut self, close: u8, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.i += 1;
        self.ws();
        if self.peek()? == close {
            self.i += 1;
            return Some(());
        }
        loop {
            item(self)?;
            self.ws();
            match self.next()? {
                b',' => self.ws(),
                b if b == close => return Some(()),
                _ => return None,
            }
        }
    }

    /// Checks and skips any JSON value (of a field not in the schema).
    fn skip_value(&mut self, depth: usize) -> Option<()> {
        if depth >= MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'"' => {
                self.i += 1;
                self.string(None).map(|_| ())
            }
            b'{' => self.items(b'}', |c| {
                c.eat(b'"')?;
                c.string(None)?;
                c.ws();
                c.eat(b':')?;
                c.ws();
                c.skip_value(depth + 1)
            }),
            b'[' => self.items(b']', |c| c.skip_value(depth + 1)),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number().map(|_| ()),
        }
    }
}

/// The index of the first `"` or `\` in `bytes` (inside a string), eight bytes at a
/// time; `None` if there is none or a control character (not allowed raw in a JSON
/// string) comes first.
fn string_stop(bytes: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    // High bit set in the lowest byte of `w` below `n` (exact for the lowest such byte;
    // bytes above it may be flagged falsely, which the lowest-bit search never sees).
    let below = |w: u64, n: u8| w.wrapping_sub(LO * u64::from(n)) & !w & HI;
    let mut at = 0;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_le_bytes(word);
        let hits = below(w ^ (LO * u64::from(b'"')), 1)
            | below(w ^ (LO * u64::from(b'\\')), 1)
            | below(w, 0x20);
        if hits != 0 {
            let i = at + (hits.trailing_zeros() / 8) as usize;
            return (bytes[i] >= 0x20).then_some(i);
        }
        at += 8;
    }
    for (k, &b) in chunks.remainder().iter().enumerate() {
        if b == b'"' || b == b'\\' {
            return Some(at + k);
        }
        if b < 0x20 {
            return None;
        }
    }
    None
}

/// `YYYY-MM-DDTHH:MM:SS[.f{1,9}](Z|±HH:MM)` as epoch milliseconds (sub-millisecond
/// digits dropped, rounding towards the past as chrono does); `None` for anything else.
fn rfc3339_millis(s: &[u8], cache: &mut DayCache) -> Option<i64> {
    fn digits(s: &[u8], at: usize, n: usize) -> Option<i64> {
        let mut v = 0i64;
        for &b in s.get(at..at + n)? {
            if !b.is_ascii_digit() {
                return None;
            }
            v = v * 10 + i64::from(b - b'0');
        }
        Some(v)
    }
    let sep = |at: usize, want: u8| (s.get(at) == Some(&want)).then_some(());
    let year = digits(s, 0, 4)?;
    sep(4, b'-')?;
    let month = digits(s, 5, 2)?;
    sep(7, b'-')?;
    let day = digits(s, 8, 2)?;
    sep(10, b'T')?;
    let hour = digits(s, 11, 2)?;
    sep(13, b':')?;
    let minute = digits(s, 14, 2)?;
    sep(16, b':')?;
    let second = digits(s, 17, 2)?;
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let mut i = 19;
    let mut millis = 0;
    if s.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while s.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let n = i - start;
        if n == 0 || n > 9 {
            return None;
        }
        let kept = n.min(3);
        millis = digits(s, start, kept)? * 10i64.pow(3 - kept as u32);
    }
    let offset = match s.get(i)? {
        b'Z' => {
            i += 1;
            0
        }
        sign @ (b'+' | b'-') => {
            let h = digits(s, i + 1, 2)?;
            sep(i + 3, b':')?;
            let m = digits(s, i + 4, 2)?;
            if h > 23 || m > 59 {
                return None;
            }
            i += 6;
            let secs = h * 3600 + m * 60;
            if *sign == b'-' {
                -secs
            } else {
                secs
            }
        }
        _ => return None,
    };
    if i != s.len() {
        return None;
    }
    let secs = cache.days(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset;
    Some(secs * 1000 + millis)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_chrono() {
        for s in [
            "1970-01-01T00:00:00Z",
            "2024-01-01T00:00:00.001Z",
            "2024-02-29T23:59:59.999999999+05:30",
            "1969-12-31T23:59:59.5Z",
            "0000-03-01T00:00:00-01:00",
            "9999-12-31T23:59:59Z",
            "1900-02-28T12:00:00.12Z",
            "2000-02-29T00:00:00Z",
        ] {
            let chrono = chrono_millis(s);
            assert_eq!(
                rfc3339_millis(s.as_bytes(), &mut DayCache::default()),
                Some(chrono),
                "{s}"
            );
        }
        for s in [
            "1900-02-29T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-01-01 00:00:00Z",
            "2024-01-01T00:00:00",
            "2024-01-01T24:00:00Z",
            "2024-01-01T00:00:60Z",
            "2024-01-01T00:00:00.Z",
            "2024-01-01T00:00:00.1234567890Z",
            "2024-01-01T00:00:00+0100",
            "2024-01-01T00:00:00Zx",
        ] {
            assert_eq!(
                rfc3339_millis(s.as_bytes(), &mut DayCache::default()),
                None,
                "{s}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn string_stop_finds_the_first_stop(bytes in proptest::collection::vec(
            proptest::sample::select(vec![b'a', b'"', b'\\', 0x1f, 0x00, 0x20, 0x80, 0xff, b'!', b'#', b']', b'\\' + 1]),
            0..40,
        )) {
            let expected = bytes
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
                .filter(|&i| bytes[i] >= 0x20);
            proptest::prop_assert_eq!(string_stop(&bytes), expected);
        }

        #[test]
        fn rfc3339_matches_chrono_on_any_date(
            year in 0i64..10_000, month in 1i64..13, day in 1i64..32, hour in 0i64..24,
            minute in 0i64..60, second in 0i64..60, frac in proptest::option::of("[0-9]{1,9}"),
            offset in proptest::option::of((proptest::bool::ANY, 0i64..24, 0i64..60)),
        ) {
            let mut s = format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}");
            if let Some(f) = frac {
                s.push('.');
                s.push_str(&f);
            }
            match offset {
                None => s.push('Z'),
                Some((neg, h, m)) => s.push_str(&format!("{}{h:02}:{m:02}", if neg { '-' } else { '+' })),
            }
            let chrono = arrow::compute::kernels::cast_utils::string_to_datetime(&chrono_utc(), &s)
                .ok()
                .map(|d| d.timestamp_millis());
            proptest::prop_assert_eq!(rfc3339_millis(s.as_bytes(), &mut DayCache::default()), chrono, "{}", s);
        }
    }

    fn chrono_millis(s: &str) -> i64 {
        arrow::compute::kernels::cast_utils::string_to_datetime(&chrono_utc(), s)
            .expect("chrono parses")
            .timestamp_millis()
    }

    fn chrono_utc() -> arrow::array::timezone::Tz {
        "+00:00".parse().expect("utc")
    }
}
