//! Reading the `window:` value ([`WindowOptions`], independent of any schema) and
//! binding it to an input schema ([`WindowPlan`]: key columns, event-time column,
//! compiled aggregate arguments, output schema). Every mistake is a [`FieldError`] whose
//! path is relative to the `window:` value (`/sliding/slide`, `/aggregate/errors`).

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde_json::Value;
use weir_engine::aggregate::{AggregateFunction, AggregateTable};
use weir_engine::expr::SqlExpr;
use weir_engine::registry::FieldError;
use weir_engine::state::KeyCodec;
use weir_engine::time::{event_time_column, mark_event_time, parse_duration};

use crate::options::{kind, pointer, pointer_segment, unknown_column, Options};

/// Name of the output column with the window's start.
pub const WINDOW_START: &str = "window_start";
/// Name of the output column with the window's end (the output's event time).
pub const WINDOW_END: &str = "window_end";
/// Name of the output column that tells a late update from the first result.
pub const IS_UPDATE: &str = "is_update";
/// Name of the side output with the records that were too late.
pub const LATE_OUTPUT: &str = "late";

/// The shape of the windows, sizes in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// `tumbling: 1m`: fixed, non-overlapping windows `[k·size, (k+1)·size)`.
    Tumbling {
        /// Window length.
        size: i64,
    },
    /// `sliding: {size: 10m, slide: 1m}`: windows of `size` starting every `slide`
    /// (`size` is a multiple of `slide`).
    Sliding {
        /// Window length.
        size: i64,
        /// Distance between window starts.
        slide: i64,
    },
    /// `session: {gap: 30m}` (or `session: 30m`): per key, records closer than `gap`
    /// share a window `[first, last + gap)`.
    Session {
        /// Inactivity gap.
        gap: i64,
    },
}

/// A duration in ms as users write it (`10m`, `1s 500ms`).
pub(crate) fn fmt_ms(ms: i64) -> String {
    weir_engine::time::format_duration(std::time::Duration::from_millis(
        u64::try_from(ms).unwrap_or(0),
    ))
}

impl std::fmt::Display for WindowKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = fmt_ms;
        match self {
            WindowKind::Tumbling { size } => write!(f, "tumbling {}", d(*size)),
            WindowKind::Sliding { size, slide } => {
                write!(f, "sliding {} every {}", d(*size), d(*slide))
            }
            WindowKind::Session { gap } => write!(f, "session gap {}", d(*gap)),
        }
    }
}

/// Which clock assigns records to windows and fires them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimeMode {
    /// The records' event-time column and the watermark (default).
    #[default]
    Event,
    /// The wall clock when the operator receives a record; nothing is ever late.
    Processing,
}

/// One output aggregate: `output: "function(argument)"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregateCall {
    /// The output column.
    pub output: String,
    /// The function's name as looked up in the aggregate table (`count(distinct x)` is
    /// `count_distinct`).
    pub function: String,
    /// The argument's SQL text; `None` for `count(*)` and `f()`.
    pub argument: Option<String>,
    /// Written with `*` as the argument (only `count` accepts it).
    pub star: bool,
    /// The call as written.
    pub text: String,
}

/// The `window:` value as written, not yet checked against an input schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowOptions {
    /// Tumbling, sliding or session.
    pub kind: WindowKind,
    /// Key columns (empty: one global window per time range).
    pub key: Vec<String>,
    /// Aggregates in output order.
    pub aggregates: Vec<AggregateCall>,
    /// `allowed_lateness` in ms (default 0).
    pub allowed_lateness: i64,
    /// `time: event | processing`.
    pub time: TimeMode,
    /// `event_time:` column, if given.
    pub event_time: Option<String>,
}

/// Reads a duration (`"10s"`) in ms. A bare number is an error: it has no unit.
pub(crate) fn duration_ms(v: &Value, path: &str, positive: bool) -> Result<i64, FieldError> {
    let ms = match v {
        Value::String(s) => {
            let d = parse_duration(s).map_err(|e| FieldError::at(path, e))?;
            i64::try_from(d.as_millis())
                .map_err(|_| FieldError::at(path, format!("`{s}` is too long")))?
        }
        // Zero is zero in any unit.
        Value::Number(n) if n.as_u64() == Some(0) => 0,
        Value::Number(n) => {
            return Err(FieldError::at(
                path,
                format!("a duration needs a unit: write `{n}ms` or `{n}s`, for example"),
            ))
        }
        other => {
            return Err(FieldError::at(
                path,
                format!("expected a duration such as \"10s\", found {}", kind(other)),
            ))
        }
    };
    if positive && ms <= 0 {
        return Err(FieldError::at(
            path,
            "must be at least 1ms (durations are counted in milliseconds)",
        ));
    }
    Ok(ms)
}

/// `tumbling: 1m` or `tumbling: {size: 1m}`.
pub(crate) fn read_tumbling(v: &Value) -> Result<WindowKind, FieldError> {
    let size = match v {
        Value::Object(_) => {
            let mut o = Options::new("tumbling", v).map_err(|e| e.under("/tumbling"))?;
            let size = o
                .value("size")
                .ok_or_else(|| FieldError::at("/tumbling", "missing `size`, e.g. {size: 1m}"))?;
            let size = duration_ms(size, "/tumbling/size", true)?;
            o.finish().map_err(|e| e.under("/tumbling"))?;
            size
        }
        other => duration_ms(other, "/tumbling", true)?,
    };
    Ok(WindowKind::Tumbling { size })
}

/// `sliding: {size: 10m, slide: 1m}`.
pub(crate) fn read_sliding(v: &Value) -> Result<WindowKind, FieldError> {
    if !v.is_object() {
        return Err(FieldError::at(
            "/sliding",
            format!(
                "expected {{size: …, slide: …}}, e.g. {{size: 10m, slide: 1m}}; found {}",
                kind(v)
            ),
        ));
    }
    let mut o = Options::new("sliding", v).map_err(|e| e.under("/sliding"))?;
    let size = o
        .value("size")
        .ok_or_else(|| FieldError::at("/sliding", "missing `size`, e.g. {size: 10m, slide: 1m}"))?;
    let size = duration_ms(size, "/sliding/size", true)?;
    let slide = o.value("slide").ok_or_else(|| {
        FieldError::at("/sliding", "missing `slide`, e.g. {size: 10m, slide: 1m}")
    })?;
    let slide = duration_ms(slide, "/sliding/slide", true)?;
    o.finish().map_err(|e| e.under("/sliding"))?;
    if size % slide != 0 {
        return Err(FieldError::at(
            "/sliding/slide",
            format!(
                "the size ({}) must be a multiple of the slide ({}), so that every record falls \
                 into size/slide windows",
                fmt_ms(size),
                fmt_ms(slide)
            ),
        ));
    }
    Ok(WindowKind::Sliding { size, slide })
}

/// `session: 30m` or `session: {gap: 30m}`.
pub(crate) fn read_session(v: &Value) -> Result<WindowKind, FieldError> {
    let gap = match v {
        Value::Object(_) => {
            let mut o = Options::new("session", v).map_err(|e| e.under("/session"))?;
            let gap = o
                .value("gap")
                .ok_or_else(|| FieldError::at("/session", "missing `gap`, e.g. {gap: 30m}"))?;
            let gap = duration_ms(gap, "/session/gap", true)?;
            o.finish().map_err(|e| e.under("/session"))?;
            gap
        }
        other => duration_ms(other, "/session", true)?,
    };
    Ok(WindowKind::Session { gap })
}

/// Splits `"count(distinct x)"` into (function, argument, distinct).
fn parse_call(text: &str) -> Result<(String, Option<String>, bool), String> {
    let usage = "expected \"function(argument)\", e.g. \"count(*)\", \"sum(amount)\" or \
                 \"count(distinct user_id)\"";
    let t = text.trim();
    let open = t.find('(').ok_or_else(|| format!("`{text}`: {usage}"))?;
    if !t.ends_with(')') {
        return Err(format!("`{text}`: {usage}"));
    }
    let name = t[..open].trim();
    let valid_name = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid_name {
        return Err(format!("`{text}`: {usage}"));
    }
    let inner = t[open + 1..t.len() - 1].trim();
    let name = name.to_ascii_lowercase();
    if inner.is_empty() {
        return Ok((name, None, false));
    }
    if inner == "*" {
        // Only count takes `*`; checked once the function is known to exist.
        return Ok((name, Some("*".to_string()), false));
    }
    let lower = inner.to_ascii_lowercase();
    if lower == "distinct" {
        return Err(format!(
            "`{text}`: distinct needs an argument, e.g. count(distinct user_id)"
        ));
    }
    if let Some(rest) = lower.strip_prefix("distinct") {
        if rest.starts_with(|c: char| c.is_whitespace() || c == '(') {
            let arg = inner["distinct".len()..].trim();
            if arg.is_empty() || arg == "*" {
                return Err(format!(
                    "`{text}`: distinct needs an argument, e.g. count(distinct user_id)"
                ));
            }
            return Ok((name, Some(arg.to_string()), true));
        }
    }
    Ok((name, Some(inner.to_string()), false))
}

impl WindowOptions {
    /// Reads the `window:` value (see the module documentation of
    /// [`crate::window`] for the forms).
    pub fn parse(value: &Value) -> Result<WindowOptions, FieldError> {
        if !value.is_object() {
            return Err(FieldError::here(format!(
                "a window is a map, e.g. {{tumbling: 1m, key: [service], aggregate: {{n: \"count(*)\"}}}}; \
                 found {}",
                kind(value)
            )));
        }
        let mut o = Options::new("window", value)?;
        let mut kind_found: Option<(WindowKind, &'static str)> = None;
        for (name, read) in [
            (
                "tumbling",
                read_tumbling as fn(&Value) -> Result<WindowKind, FieldError>,
            ),
            ("sliding", read_sliding),
            ("session", read_session),
        ] {
            if let Some(v) = o.value(name) {
                if let Some((_, first)) = kind_found {
                    return Err(FieldError::at(
                        pointer(name),
                        format!("a window is either tumbling, sliding or session: `{first}` is already given"),
                    ));
                }
                kind_found = Some((read(v)?, name));
            }
        }
        let shape = kind_found.map(|(k, _)| k).ok_or_else(|| {
            FieldError::here(
                "missing the window's shape: one of `tumbling: 1m`, `sliding: {size: 10m, slide: 1m}` \
                 or `session: {gap: 30m}`",
            )
        })?;

        let key = match o.value("key") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => {
                let mut keys: Vec<String> = Vec::with_capacity(items.len());
                for (i, v) in items.iter().enumerate() {
                    let Value::String(s) = v else {
                        return Err(FieldError::at(
                            format!("/key/{i}"),
                            format!("expected a column name, found {}", kind(v)),
                        ));
                    };
                    if keys.contains(s) {
                        return Err(FieldError::at(
                            format!("/key/{i}"),
                            format!("column \"{s}\" is listed twice"),
                        ));
                    }
                    keys.push(s.clone());
                }
                keys
            }
            Some(other) => {
                return Err(FieldError::at(
                    "/key",
                    format!(
                        "expected a column name or a list of column names, found {}",
                        kind(other)
                    ),
                ))
            }
        };

        let aggregates = match o.value("aggregate") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Object(m)) => {
                let mut calls = Vec::with_capacity(m.len());
                for (output, v) in m {
                    let path = format!("/aggregate/{}", pointer_segment(output));
                    let Value::String(text) = v else {
                        return Err(FieldError::at(
                            path,
                            format!(
                                "expected \"function(argument)\" such as \"count(*)\", found {}",
                                kind(v)
                            ),
                        ));
                    };
                    let (function, mut argument, distinct) =
                        parse_call(text).map_err(|m| FieldError::at(path.clone(), m))?;
                    let star = argument.as_deref() == Some("*");
                    if star {
                        argument = None;
                    }
                    let function = if distinct {
                        if function != "count" {
                            return Err(FieldError::at(
                                path,
                                format!(
                                    "`{text}`: distinct is only supported as count(distinct …)"
                                ),
                            ));
                        }
                        "count_distinct".to_string()
                    } else {
                        function
                    };
                    calls.push(AggregateCall {
                        output: output.clone(),
                        function,
                        argument,
                        star,
                        text: text.clone(),
                    });
                }
                calls
            }
            Some(other) => {
                return Err(FieldError::at(
                    "/aggregate",
                    format!(
                        "expected a map {{output column: \"function(argument)\"}}, found {}",
                        kind(other)
                    ),
                ))
            }
        };

        let allowed_lateness = match o.value("allowed_lateness") {
            None | Some(Value::Null) => 0,
            Some(v) => duration_ms(v, "/allowed_lateness", false)?,
        };
        let time = match o.string("time")? {
            None | Some("event") => TimeMode::Event,
            Some("processing") => TimeMode::Processing,
            Some(other) => {
                return Err(FieldError::at(
                    "/time",
                    format!("expected `event` or `processing`, found `{other}`"),
                ))
            }
        };
        let event_time = o.string("event_time")?.map(str::to_string);
        o.finish()?;
        Ok(WindowOptions {
            kind: shape,
            key,
            aggregates,
            allowed_lateness,
            time,
            event_time,
        })
    }
}

/// One aggregate bound to the input schema.
#[derive(Clone)]
pub(crate) struct PlannedAggregate {
    /// The output column.
    pub(crate) output: String,
    /// The function.
    pub(crate) function: Arc<dyn AggregateFunction>,
    /// The compiled argument (`None` for `count(*)`).
    pub(crate) argument: Option<SqlExpr>,
    /// The argument's type.
    pub(crate) argument_type: Option<DataType>,
    /// The output type.
    pub(crate) return_type: DataType,
}

/// A window bound to its input: what the operator needs, computed once at build time
/// and shared by every subtask.
#[derive(Clone)]
pub struct WindowPlan {
    /// The options as written.
    pub options: WindowOptions,
    /// The input schema (also the schema of the `late` side output).
    pub input: SchemaRef,
    /// The output schema.
    pub output: SchemaRef,
    /// Indexes of the key columns in the input.
    pub(crate) key_columns: Vec<usize>,
    /// Encodes key columns into key bytes and back.
    pub(crate) codec: KeyCodec,
    /// The event-time column (`None` with processing time).
    pub(crate) event_time: Option<String>,
    pub(crate) aggregates: Vec<PlannedAggregate>,
}

impl std::fmt::Debug for WindowPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowPlan")
            .field("options", &self.options)
            .field("output", &self.output)
            .finish()
    }
}

impl WindowPlan {
    /// Binds `options` to the input schema `input`, with aggregate functions from
    /// `table`.
    pub fn new(
        options: WindowOptions,
        input: &SchemaRef,
        table: &AggregateTable,
    ) -> Result<WindowPlan, FieldError> {
        // Key columns.
        let mut key_columns = Vec::with_capacity(options.key.len());
        for (i, k) in options.key.iter().enumerate() {
            let idx = input.index_of(k).map_err(|_| {
                let path = if options.key.len() == 1 {
                    // `key: x` and `key: [x]` both point at the key.
                    "/key".to_string()
                } else {
                    format!("/key/{i}")
                };
                FieldError::at(path, unknown_column(k, input))
            })?;
            key_columns.push(idx);
        }
        let codec = KeyCodec::for_columns(input, &key_columns)
            .map_err(|e| FieldError::at("/key", format!("these columns cannot be a key: {e}")))?;

        // Event time.
        let event_time = match options.time {
            TimeMode::Processing => None,
            TimeMode::Event => Some(match &options.event_time {
                Some(name) => {
                    let f = input
                        .field_with_name(name)
                        .map_err(|_| FieldError::at("/event_time", unknown_column(name, input)))?;
                    if !matches!(f.data_type(), DataType::Timestamp(_, _) | DataType::Int64) {
                        return Err(FieldError::at(
                            "/event_time",
                            format!(
                                "column \"{name}\" is {}, the event time must be a timestamp \
                                 (or int64 milliseconds)",
                                f.data_type()
                            ),
                        ));
                    }
                    name.clone()
                }
                None => {
                    let idx = event_time_column(input).ok_or_else(|| {
                        let ts: Vec<&str> = input
                            .fields()
                            .iter()
                            .filter(|f| matches!(f.data_type(), DataType::Timestamp(_, _)))
                            .map(|f| f.name().as_str())
                            .collect();
                        let known: Vec<&str> =
                            input.fields().iter().map(|f| f.name().as_str()).collect();
                        FieldError::here(if ts.is_empty() {
                            format!(
                                "no event-time column found: the input has no column marked as \
                                 event time and no timestamp column (columns: {}); set \
                                 `event_time: COLUMN` or use `time: processing`",
                                known.join(", ")
                            )
                        } else {
                            format!(
                                "no event-time column found: no column is marked as event time \
                                 and there are several timestamp columns ({}); set \
                                 `event_time:` to one of them",
                                ts.join(", ")
                            )
                        })
                    })?;
                    input.field(idx).name().clone()
                }
            }),
        };

        // Output columns: keys, window bounds, aggregates, is_update.
        let mut fields: Vec<Field> = key_columns
            .iter()
            .map(|&i| {
                let f = input.field(i);
                Field::new(f.name(), f.data_type().clone(), f.is_nullable())
            })
            .collect();
        let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
        fields.push(Field::new(WINDOW_START, ts.clone(), false));
        fields.push(Field::new(WINDOW_END, ts, false));

        let mut aggregates = Vec::with_capacity(options.aggregates.len());
        for call in &options.aggregates {
            let path = format!("/aggregate/{}", pointer_segment(&call.output));
            let taken = options.key.contains(&call.output)
                || [WINDOW_START, WINDOW_END, IS_UPDATE].contains(&call.output.as_str());
            if taken {
                return Err(FieldError::at(
                    path,
                    format!(
                        "output column \"{}\" clashes with a key column or with {WINDOW_START}, \
                         {WINDOW_END} or {IS_UPDATE}; choose another name",
                        call.output
                    ),
                ));
            }
            let function = table.get(&call.function).cloned().ok_or_else(|| {
                let mut known: Vec<String> = table.names().into_iter().map(String::from).collect();
                if known.iter().any(|n| n == "count_distinct") {
                    known.push("count(distinct …)".into());
                }
                FieldError::at(
                    path.clone(),
                    format!(
                        "unknown aggregate function `{}` in `{}` (known: {})",
                        call.function,
                        call.text,
                        known.join(", ")
                    ),
                )
            })?;
            if call.star && call.function != "count" {
                return Err(FieldError::at(
                    path,
                    format!(
                        "`{}`: only count takes `*`; {f} needs an argument, e.g. {f}(amount)",
                        call.text,
                        f = call.function
                    ),
                ));
            }
            let argument = match &call.argument {
                None => None,
                Some(sql) => Some(
                    SqlExpr::compile(sql, input).map_err(|m| FieldError::at(path.clone(), m))?,
                ),
            };
            let argument_type = argument.as_ref().map(|e| e.data_type().clone());
            let return_type = function
                .return_type(argument_type.as_ref())
                .map_err(|m| FieldError::at(path.clone(), format!("`{}`: {m}", call.text)))?;
            fields.push(Field::new(&call.output, return_type.clone(), true));
            aggregates.push(PlannedAggregate {
                output: call.output.clone(),
                function,
                argument,
                argument_type,
                return_type,
            });
        }
        fields.push(Field::new(IS_UPDATE, DataType::Boolean, false));
        let output = mark_event_time(&Schema::new(fields), WINDOW_END);
        Ok(WindowPlan {
            options,
            input: input.clone(),
            output,
            key_columns,
            codec,
            event_time,
            aggregates,
        })
    }

    /// The names of the key columns.
    pub fn key(&self) -> &[String] {
        &self.options.key
    }

    /// One line for `weir explain`.
    pub fn describe(&self) -> String {
        let mut s = format!("window {}", self.options.kind);
        if !self.options.key.is_empty() {
            s.push_str(&format!(" by {}", self.options.key.join(", ")));
        }
        let aggs: Vec<String> = self
            .options
            .aggregates
            .iter()
            .map(|a| format!("{}={}", a.output, a.text))
            .collect();
        if !aggs.is_empty() {
            s.push_str(&format!(": {}", aggs.join(", ")));
        }
        if self.options.allowed_lateness > 0 {
            s.push_str(&format!(" (lateness {}ms)", self.options.allowed_lateness));
        }
        if self.options.time == TimeMode::Processing {
            s.push_str(" [processing time]");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls() {
        let p = |s: &str| parse_call(s);
        assert_eq!(p("count(*)"), Ok(("count".into(), Some("*".into()), false)));
        assert_eq!(
            p(" COUNT ( * ) "),
            Ok(("count".into(), Some("*".into()), false))
        );
        assert_eq!(p("count()"), Ok(("count".into(), None, false)));
        assert_eq!(
            p("sum(amount * 2)"),
            Ok(("sum".into(), Some("amount * 2".into()), false))
        );
        assert_eq!(
            p("count(DISTINCT user_id)"),
            Ok(("count".into(), Some("user_id".into()), true))
        );
        assert_eq!(
            p("count(distinct(user_id))"),
            Ok(("count".into(), Some("(user_id)".into()), true))
        );
        // A column that merely starts with "distinct".
        assert_eq!(
            p("max(distinctness)"),
            Ok(("max".into(), Some("distinctness".into()), false))
        );
        assert_eq!(
            p("max(coalesce(a, b))"),
            Ok(("max".into(), Some("coalesce(a, b)".into()), false))
        );
        assert!(p("count").is_err());
        assert!(p("(x)").is_err());
        assert!(p("su m(x)").is_err());
        assert!(p("count(distinct )").is_err());
    }
}
