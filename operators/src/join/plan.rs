//! Reading the `join:` value ([`JoinOptions`], independent of any schema) and binding it
//! to the two input schemas ([`JoinPlan`]: key columns and codecs, event-time columns,
//! output schema). Every mistake is a [`FieldError`] whose path is relative to the
//! `join:` value (`/on/0`, `/interval/lower`).

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde_json::Value;
use weir_engine::registry::FieldError;
use weir_engine::state::KeyCodec;
use weir_engine::time::{event_time_column, mark_event_time, parse_duration};

use crate::options::{kind, pointer, unknown_column, Options};
use crate::window::plan::{fmt_ms, read_session, read_sliding, read_tumbling};
use crate::window::{WindowKind, WINDOW_END, WINDOW_START};

/// Name of the side output with the left input's late records.
pub const LATE_LEFT: &str = "late_left";
/// Name of the side output with the right input's late records.
pub const LATE_RIGHT: &str = "late_right";
/// Prefix given to a right column whose name a left column already has.
pub const RIGHT_PREFIX: &str = "right_";

/// Which unmatched rows a join emits (padded with nulls).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JoinType {
    /// Only matched pairs.
    #[default]
    Inner,
    /// Matched pairs and unmatched left rows.
    Left,
    /// Matched pairs and unmatched right rows.
    Right,
    /// Matched pairs and unmatched rows of both sides.
    Full,
}

impl JoinType {
    /// The YAML name.
    pub fn name(self) -> &'static str {
        match self {
            JoinType::Inner => "inner",
            JoinType::Left => "left",
            JoinType::Right => "right",
            JoinType::Full => "full",
        }
    }

    /// Whether unmatched rows of `side` (0 left, 1 right) are emitted.
    pub fn keeps(self, side: usize) -> bool {
        matches!(
            (self, side),
            (JoinType::Left, 0) | (JoinType::Right, 1) | (JoinType::Full, _)
        )
    }
}

/// What pairs rows up besides equal keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinMode {
    /// `left.ts BETWEEN right.ts + lower AND right.ts + upper` (ms, inclusive).
    Interval {
        /// Lower bound of `left.ts - right.ts`.
        lower: i64,
        /// Upper bound of `left.ts - right.ts`.
        upper: i64,
    },
    /// Both rows in the same window.
    Window(WindowKind),
}

impl std::fmt::Display for JoinMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JoinMode::Interval { lower, upper } => write!(
                f,
                "interval left.ts BETWEEN right.ts {} AND right.ts {}",
                signed(*lower),
                signed(*upper)
            ),
            JoinMode::Window(k) => write!(f, "window {k}"),
        }
    }
}

/// `+ 5s` / `- 10s`.
fn signed(ms: i64) -> String {
    if ms < 0 {
        format!("- {}", fmt_ms(ms.saturating_neg()))
    } else {
        format!("+ {}", fmt_ms(ms))
    }
}

/// The `join:` value as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinOptions {
    /// `type:` (default inner).
    pub join_type: JoinType,
    /// Key columns of the left input.
    pub left_on: Vec<String>,
    /// Key columns of the right input (the same names when `on:` is a list).
    pub right_on: Vec<String>,
    /// Whether `on:` was written as a map `{left: [...], right: [...]}` (error paths
    /// point into it).
    pub on_map: bool,
    /// Interval or window.
    pub mode: JoinMode,
    /// `left_time:`, the left event-time column, if given.
    pub left_time: Option<String>,
    /// `right_time:`, the right event-time column, if given.
    pub right_time: Option<String>,
}

/// A signed duration in ms: `"-5s"`, `"+2s"`, `"0s"` or `0`; another bare number is
/// an error (it has no unit).
fn signed_duration_ms(v: &Value, path: &str) -> Result<i64, FieldError> {
    match v {
        Value::String(s) => {
            let t = s.trim();
            let (neg, rest) = match t.strip_prefix('-') {
                Some(r) => (true, r.trim_start()),
                None => (false, t.strip_prefix('+').unwrap_or(t).trim_start()),
            };
            let d = if rest == "0" {
                std::time::Duration::ZERO
            } else {
                parse_duration(rest).map_err(|e| FieldError::at(path, e))?
            };
            let ms = i64::try_from(d.as_millis())
                .map_err(|_| FieldError::at(path, format!("`{s}` is too long")))?;
            Ok(if neg { -ms } else { ms })
        }
        // Zero is zero in any unit.
        Value::Number(n) if n.as_i64() == Some(0) => Ok(0),
        Value::Number(n) => Err(FieldError::at(
            path,
            format!("a duration needs a unit: write `{n}ms` or `{n}s`, for example"),
        )),
        other => Err(FieldError::at(
            path,
            format!(
                "expected a duration such as \"-5s\" or \"10s\", found {}",
                kind(other)
            ),
        )),
    }
}

/// A list of column names (or one name) at `path`.
fn names(v: &Value, path: &str) -> Result<Vec<String>, FieldError> {
    let items: Vec<&Value> = match v {
        Value::String(_) => vec![v],
        Value::Array(items) => items.iter().collect(),
        other => {
            return Err(FieldError::at(
                path,
                format!(
                    "expected a column name or a list of column names, found {}",
                    kind(other)
                ),
            ))
        }
    };
    let mut out: Vec<String> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let p = if matches!(v, Value::Array(_)) {
            format!("{path}/{i}")
        } else {
            path.to_string()
        };
        let Value::String(s) = item else {
            return Err(FieldError::at(
                p,
                format!("expected a column name, found {}", kind(item)),
            ));
        };
        if out.contains(s) {
            return Err(FieldError::at(p, format!("column \"{s}\" is listed twice")));
        }
        out.push(s.clone());
    }
    if out.is_empty() {
        return Err(FieldError::at(path, "a join needs at least one key column"));
    }
    Ok(out)
}

impl JoinOptions {
    /// Reads the `join:` value (see the module documentation of [`crate::join`]).
    pub fn parse(value: &Value) -> Result<JoinOptions, FieldError> {
        if !value.is_object() {
            return Err(FieldError::here(format!(
                "a join is a map, e.g. {{type: left, on: [ad_id], interval: {{lower: -10s, upper: 0s}}}}; \
                 found {}",
                kind(value)
            )));
        }
        let mut o = Options::new("join", value)?;
        let join_type = match o.string("type")? {
            None | Some("inner") => JoinType::Inner,
            Some("left") | Some("left_outer") => JoinType::Left,
            Some("right") | Some("right_outer") => JoinType::Right,
            Some("full") | Some("full_outer") | Some("outer") => JoinType::Full,
            Some(other) => {
                return Err(FieldError::at(
                    "/type",
                    format!("unknown join type \"{other}\": expected inner, left, right or full"),
                ))
            }
        };
        let on_map = matches!(o.value("on"), Some(Value::Object(_)));
        let (left_on, right_on) = match o.value("on") {
            None | Some(Value::Null) => {
                return Err(FieldError::here(
                    "missing `on`: the key columns, e.g. `on: [ad_id]` or \
                     `on: {left: [ad_id], right: [ad]}`",
                ))
            }
            Some(v @ Value::Object(_)) => {
                let mut on = Options::new("on", v).map_err(|e| e.under("/on"))?;
                let l = on
                    .value("left")
                    .ok_or_else(|| FieldError::at("/on", "missing `left`: the left key columns"))
                    .and_then(|v| names(v, "/on/left"))?;
                let r = on
                    .value("right")
                    .ok_or_else(|| FieldError::at("/on", "missing `right`: the right key columns"))
                    .and_then(|v| names(v, "/on/right"))?;
                on.finish_strict().map_err(|e| e.under("/on"))?;
                if l.len() != r.len() {
                    return Err(FieldError::at(
                        "/on",
                        format!(
                            "`left` has {} key columns but `right` has {}: they pair up in order",
                            l.len(),
                            r.len()
                        ),
                    ));
                }
                (l, r)
            }
            Some(v) => {
                let n = names(v, "/on")?;
                (n.clone(), n)
            }
        };
        let interval = o.value("interval");
        let window = o.value("window");
        let mode = match (interval, window) {
            (Some(_), Some(_)) => {
                return Err(FieldError::at(
                    "/window",
                    "a join is either an interval join (`interval:`) or a window join \
                     (`window:`), not both",
                ))
            }
            (None, None) => {
                return Err(FieldError::here(
                    "missing `interval: {lower: -5s, upper: 5s}` (interval join) or \
                     `window: {tumbling: 1m}` (window join)",
                ))
            }
            (Some(iv), None) => {
                if !iv.is_object() {
                    return Err(FieldError::at(
                        "/interval",
                        format!(
                            "expected {{lower: …, upper: …}}, e.g. {{lower: -10s, upper: 0s}} for \
                             `left.ts BETWEEN right.ts - 10s AND right.ts`; found {}",
                            kind(iv)
                        ),
                    ));
                }
                let mut io = Options::new("interval", iv).map_err(|e| e.under("/interval"))?;
                let lower = io
                    .value("lower")
                    .ok_or_else(|| FieldError::at("/interval", "missing `lower`, e.g. -10s"))
                    .and_then(|v| signed_duration_ms(v, "/interval/lower"))?;
                let upper = io
                    .value("upper")
                    .ok_or_else(|| FieldError::at("/interval", "missing `upper`, e.g. 0s"))
                    .and_then(|v| signed_duration_ms(v, "/interval/upper"))?;
                io.finish_strict().map_err(|e| e.under("/interval"))?;
                if lower > upper {
                    return Err(FieldError::at(
                        "/interval/upper",
                        format!(
                            "`upper` ({}) is below `lower` ({}): no pair could ever match",
                            signed(upper),
                            signed(lower)
                        ),
                    ));
                }
                JoinMode::Interval { lower, upper }
            }
            (None, Some(w)) => {
                if !w.is_object() {
                    return Err(FieldError::at(
                        "/window",
                        format!(
                            "expected one of {{tumbling: 1m}}, {{sliding: {{size: 10m, slide: 1m}}}} \
                             or {{session: 30m}}; found {}",
                            kind(w)
                        ),
                    ));
                }
                let mut wo = Options::new("window", w).map_err(|e| e.under("/window"))?;
                let mut found: Option<(WindowKind, &'static str)> = None;
                for (name, read) in [
                    (
                        "tumbling",
                        read_tumbling as fn(&Value) -> Result<WindowKind, FieldError>,
                    ),
                    ("sliding", read_sliding),
                    ("session", read_session),
                ] {
                    if let Some(v) = wo.value(name) {
                        if let Some((_, first)) = found {
                            return Err(FieldError::at(
                                format!("/window{}", pointer(name)),
                                format!(
                                    "a window is either tumbling, sliding or session: `{first}` \
                                     is already given"
                                ),
                            ));
                        }
                        found = Some((read(v).map_err(|e| e.under("/window"))?, name));
                    }
                }
                wo.finish_strict().map_err(|e| e.under("/window"))?;
                let (k, _) = found.ok_or_else(|| {
                    FieldError::at(
                        "/window",
                        "missing the window's shape: one of `tumbling: 1m`, \
                         `sliding: {size: 10m, slide: 1m}` or `session: {gap: 30m}`",
                    )
                })?;
                JoinMode::Window(k)
            }
        };
        let left_time = o.string("left_time")?.map(str::to_string);
        let right_time = o.string("right_time")?.map(str::to_string);
        o.finish()?;
        Ok(JoinOptions {
            join_type,
            left_on,
            right_on,
            on_map,
            mode,
            left_time,
            right_time,
        })
    }
}

/// Where an output column comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputColumn {
    /// Left column `i`.
    Left(usize),
    /// Right column `i`.
    Right(usize),
    /// A key column with the same name on both sides: the left value where there is a
    /// left row, else the right one (`USING` in SQL).
    Key(usize, usize),
    /// `window_start` (window joins).
    WindowStart,
    /// `window_end` (window joins; the output's event time).
    WindowEnd,
}

/// One input as the operator needs it.
#[derive(Debug, Clone)]
pub struct JoinSide {
    /// The input's schema.
    pub schema: SchemaRef,
    /// Indexes of the key columns.
    pub key_columns: Vec<usize>,
    /// Encodes the key columns; both sides' codecs give equal bytes for equal keys.
    pub codec: KeyCodec,
    /// The event-time column.
    pub time: String,
}

/// A `join:` bound to its inputs.
#[derive(Debug, Clone)]
pub struct JoinPlan {
    /// The options as written.
    pub options: JoinOptions,
    /// Left (0) and right (1) inputs.
    pub sides: [JoinSide; 2],
    /// Output schema.
    pub output: SchemaRef,
    /// Where each output column comes from.
    pub columns: Vec<OutputColumn>,
}

/// The type a key column is compared as: string and binary layouts alike.
fn key_family(t: &DataType) -> DataType {
    match t {
        DataType::Dictionary(_, v) => key_family(v),
        DataType::LargeUtf8 | DataType::Utf8View => DataType::Utf8,
        DataType::LargeBinary | DataType::BinaryView => DataType::Binary,
        other => other.clone(),
    }
}

fn time_column(
    input: &SchemaRef,
    given: Option<&str>,
    path: &str,
    side: &str,
) -> Result<String, FieldError> {
    match given {
        Some(name) => {
            let f = input
                .field_with_name(name)
                .map_err(|_| FieldError::at(path, unknown_column(name, input)))?;
            if !matches!(f.data_type(), DataType::Timestamp(_, _) | DataType::Int64) {
                return Err(FieldError::at(
                    path,
                    format!(
                        "column \"{name}\" is {}, the event time must be a timestamp (or int64 \
                         milliseconds)",
                        f.data_type()
                    ),
                ));
            }
            Ok(name.to_string())
        }
        None => event_time_column(input)
            .map(|i| input.field(i).name().clone())
            .ok_or_else(|| {
                let known: Vec<&str> = input.fields().iter().map(|f| f.name().as_str()).collect();
                FieldError::here(format!(
                    "no event-time column found on the {side} input (columns: {}): declare \
                     `event_time` on its source or set `{side}_time: COLUMN`",
                    known.join(", ")
                ))
            }),
    }
}

impl JoinPlan {
    /// Binds `options` to the left and right input schemas.
    pub fn new(
        options: JoinOptions,
        left: &SchemaRef,
        right: &SchemaRef,
    ) -> Result<JoinPlan, FieldError> {
        let pair_path = |i: usize, side: &str| {
            if !options.on_map {
                if options.left_on.len() == 1 {
                    "/on".to_string()
                } else {
                    format!("/on/{i}")
                }
            } else if options.left_on.len() == 1 {
                format!("/on/{side}")
            } else {
                format!("/on/{side}/{i}")
            }
        };
        let mut lk = Vec::new();
        let mut rk = Vec::new();
        for (i, (l, r)) in options.left_on.iter().zip(&options.right_on).enumerate() {
            let li = left.index_of(l).map_err(|_| {
                FieldError::at(
                    pair_path(i, "left"),
                    format!("left input: {}", unknown_column(l, left)),
                )
            })?;
            let ri = right.index_of(r).map_err(|_| {
                FieldError::at(
                    pair_path(i, "right"),
                    format!("right input: {}", unknown_column(r, right)),
                )
            })?;
            let (lt, rt) = (left.field(li).data_type(), right.field(ri).data_type());
            if key_family(lt) != key_family(rt) {
                return Err(FieldError::at(
                    pair_path(i, "right"),
                    format!(
                        "key \"{l}\" is {lt} on the left but \"{r}\" is {rt} on the right: cast one \
                         side with a `select` step first"
                    ),
                ));
            }
            lk.push(li);
            rk.push(ri);
        }
        let lcodec = KeyCodec::for_columns(left, &lk)
            .map_err(|e| FieldError::at("/on", format!("these columns cannot be a key: {e}")))?;
        let rcodec = KeyCodec::for_columns(right, &rk)
            .map_err(|e| FieldError::at("/on", format!("these columns cannot be a key: {e}")))?;
        let ltime = time_column(left, options.left_time.as_deref(), "/left_time", "left")?;
        let rtime = time_column(right, options.right_time.as_deref(), "/right_time", "right")?;

        // Output: the left columns, then the right ones but for keys of the same name
        // (coalesced into the left's), renaming clashes with `right_`.
        let jt = options.join_type;
        let left_nullable = matches!(jt, JoinType::Right | JoinType::Full);
        let right_nullable = matches!(jt, JoinType::Left | JoinType::Full);
        let mut fields: Vec<Field> = Vec::new();
        let mut columns = Vec::new();
        let mut coalesced = vec![false; right.fields().len()];
        for (i, f) in left.fields().iter().enumerate() {
            let same_key = lk
                .iter()
                .zip(&rk)
                .find(|(li, ri)| **li == i && right.field(**ri).name() == f.name());
            let mut field = f.as_ref().clone();
            match same_key {
                Some((_, &ri)) => {
                    coalesced[ri] = true;
                    let nullable = f.is_nullable() || right.field(ri).is_nullable();
                    field = field.with_nullable(nullable);
                    columns.push(OutputColumn::Key(i, ri));
                }
                None => {
                    field = field.with_nullable(f.is_nullable() || left_nullable);
                    columns.push(OutputColumn::Left(i));
                }
            }
            fields.push(field);
        }
        for (i, f) in right.fields().iter().enumerate() {
            if coalesced[i] {
                continue;
            }
            let mut name = f.name().clone();
            if fields.iter().any(|g| g.name() == &name) {
                name = format!("{RIGHT_PREFIX}{name}");
                if fields.iter().any(|g| g.name() == &name)
                    || right.fields().iter().any(|g| g.name() == &name)
                {
                    return Err(FieldError::here(format!(
                        "the right column \"{}\" clashes with a left column and \"{name}\" is \
                         taken too: rename it with a `select` step before the join",
                        f.name()
                    )));
                }
            }
            fields.push(
                f.as_ref()
                    .clone()
                    .with_name(name)
                    .with_nullable(f.is_nullable() || right_nullable),
            );
            columns.push(OutputColumn::Right(i));
        }
        let time_out = match options.mode {
            JoinMode::Window(_) => {
                for name in [WINDOW_START, WINDOW_END] {
                    if fields.iter().any(|g| g.name() == name) {
                        return Err(FieldError::here(format!(
                            "a window join adds the column \"{name}\", which an input already \
                             has: rename it with a `select` step before the join"
                        )));
                    }
                }
                let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
                fields.push(Field::new(WINDOW_START, ts.clone(), false));
                fields.push(Field::new(WINDOW_END, ts, false));
                columns.push(OutputColumn::WindowStart);
                columns.push(OutputColumn::WindowEnd);
                WINDOW_END.to_string()
            }
            JoinMode::Interval { .. } => {
                // The preserved side's time (left but for right joins).
                let (side, t) = if jt == JoinType::Right {
                    (1, &rtime)
                } else {
                    (0, &ltime)
                };
                let idx = columns
                    .iter()
                    .position(|c| match (c, side) {
                        (OutputColumn::Left(i) | OutputColumn::Key(i, _), 0) => {
                            left.field(*i).name() == t
                        }
                        (OutputColumn::Right(i), 1) => right.field(*i).name() == t,
                        _ => false,
                    })
                    .unwrap_or(0);
                fields[idx].name().clone()
            }
        };
        let output = mark_event_time(&Schema::new(fields), &time_out);
        Ok(JoinPlan {
            sides: [
                JoinSide {
                    schema: left.clone(),
                    key_columns: lk,
                    codec: lcodec,
                    time: ltime,
                },
                JoinSide {
                    schema: right.clone(),
                    key_columns: rk,
                    codec: rcodec,
                    time: rtime,
                },
            ],
            options,
            output,
            columns,
        })
    }

    /// How far behind its input watermark the join's output watermark stays: an
    /// interval join emits rows whose times trail the watermark by up to
    /// `max(0, -lower, upper)`; a window join emits at `window_end`, never behind.
    pub fn holdback(&self) -> i64 {
        match self.options.mode {
            JoinMode::Interval { lower, upper } => 0i64.max(lower.saturating_neg()).max(upper),
            JoinMode::Window(_) => 0,
        }
    }

    /// One line for `weir explain`.
    pub fn describe(&self) -> String {
        let on: Vec<String> = self
            .options
            .left_on
            .iter()
            .zip(&self.options.right_on)
            .map(|(l, r)| {
                if l == r {
                    l.clone()
                } else {
                    format!("{l} = {r}")
                }
            })
            .collect();
        let mode = match self.options.mode {
            JoinMode::Interval { lower, upper } => format!(
                "interval join on {}: left.{} BETWEEN right.{} {} AND right.{} {}",
                on.join(", "),
                self.sides[0].time,
                self.sides[1].time,
                signed(lower),
                self.sides[1].time,
                signed(upper)
            ),
            JoinMode::Window(k) => format!(
                "window join on {} in {k} windows (left.{}, right.{})",
                on.join(", "),
                self.sides[0].time,
                self.sides[1].time
            ),
        };
        let hold = self.holdback();
        let hold = if hold > 0 {
            format!(", watermark held back {}", fmt_ms(hold))
        } else {
            String::new()
        };
        format!("{} {mode}{hold}", self.options.join_type.name())
    }

    /// The output schema.
    pub fn schema(&self) -> &SchemaRef {
        &self.output
    }
}
