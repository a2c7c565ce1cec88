//! The small typed values of a job spec that the engine itself reads: a source's
//! declared `schema:` (field name → type) and its `event_time:` strategy. Both the YAML
//! compiler and the Rust builder use these parsers.

use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde_json::Value;

use super::yaml::escape;
use crate::registry::FieldError;
use crate::time::{parse_duration, EventTimeConfig, FutureBound};

/// Field types a `schema:` may use; a trailing `?` makes a field nullable.
pub const FIELD_TYPES: &[&str] = &[
    "string",
    "int",
    "float",
    "bool",
    "timestamp",
    "date",
    "binary",
];

/// Keys of an `event_time:` mapping.
pub const EVENT_TIME_KEYS: &[&str] = &[
    "field",
    "max_out_of_orderness",
    "idle_timeout",
    "max_future",
];

/// The Arrow type of a field type name (without `?`).
pub fn field_data_type(name: &str) -> Option<DataType> {
    Some(match name {
        "string" => DataType::Utf8,
        "int" => DataType::Int64,
        "float" => DataType::Float64,
        "bool" => DataType::Boolean,
        "timestamp" => DataType::Timestamp(TimeUnit::Millisecond, None),
        "date" => DataType::Date32,
        "binary" => DataType::Binary,
        _ => return None,
    })
}

/// The message for an unknown field type, shared by schema validation and
/// [`parse_schema`].
pub(crate) fn unknown_field_type_message(field: &str, found: &str) -> String {
    format!(
        "unknown type `{found}` for field `{field}` (known: {}, list<T>, struct<name: T, …>; \
         add `?` for a nullable field)",
        FIELD_TYPES.join(", ")
    )
}

/// How deep `list<…>` and `struct<…>` may nest: deeper is surely a mistake, and the
/// bound keeps parsing of any job file cheap.
pub const MAX_TYPE_DEPTH: usize = 16;

/// Parses one field type: a name of [`FIELD_TYPES`], `list<T>`, `struct<a: T, b: U>`
/// (nested freely), with a trailing `?` for nullable; or, in YAML, a mapping (a struct
/// of its keys) or a one-item sequence (a list of it), both required. Returns the Arrow
/// type and whether the value may be null.
///
/// ```
/// use arrow::datatypes::DataType;
/// use serde_json::json;
/// let (t, nullable) = weir_engine::spec::parse_field_type(
///     &json!("struct<id: int, tags: list<string>?>?"),
/// ).expect("valid type");
/// assert!(nullable);
/// let DataType::Struct(fields) = t else { panic!("a struct") };
/// assert_eq!(fields[1].name(), "tags");
/// assert!(matches!(fields[1].data_type(), DataType::List(_)));
/// ```
pub fn parse_field_type(value: &Value) -> Result<(DataType, bool), FieldError> {
    parse_type_value(value, 0)
}

fn parse_type_value(value: &Value, depth: usize) -> Result<(DataType, bool), FieldError> {
    if depth > MAX_TYPE_DEPTH {
        return Err(FieldError::here(format!(
            "types nest deeper than {MAX_TYPE_DEPTH} levels"
        )));
    }
    match value {
        Value::String(text) => {
            let mut p = TypeParser {
                text,
                pos: 0,
                depth,
            };
            let t = p.ty()?;
            p.skip_ws();
            if p.pos < text.len() {
                return Err(FieldError::here(format!(
                    "unexpected `{}` after the type in `{text}`",
                    &text[p.pos..]
                )));
            }
            Ok(t)
        }
        Value::Object(map) => {
            if map.is_empty() {
                return Err(FieldError::here("a struct needs at least one field"));
            }
            let mut fields = Vec::with_capacity(map.len());
            for (name, ty) in map {
                let (t, nullable) = parse_type_value(ty, depth + 1)
                    .map_err(|e| e.under(&format!("/{}", escape(name))))?;
                fields.push(Field::new(name, t, nullable));
            }
            Ok((DataType::Struct(fields.into()), false))
        }
        Value::Array(items) => match items.as_slice() {
            [item] => {
                let (t, nullable) = parse_type_value(item, depth + 1).map_err(|e| e.under("/0"))?;
                Ok((
                    DataType::List(Arc::new(Field::new("item", t, nullable))),
                    false,
                ))
            }
            _ => Err(FieldError::here(
                "a list type is a sequence of exactly one item type, e.g. [string]",
            )),
        },
        other => Err(FieldError::here(format!(
            "expected a type such as string, int?, list<string> or struct<id: int>, found `{other}`"
        ))),
    }
}

/// A recursive-descent parser of the string form of field types.
struct TypeParser<'t> {
    text: &'t str,
    pos: usize,
    depth: usize,
}

impl TypeParser<'_> {
    fn skip_ws(&mut self) {
        while self.text[self.pos..].starts_with(char::is_whitespace) {
            self.pos += self.text[self.pos..]
                .chars()
                .next()
                .map_or(1, char::len_utf8);
        }
    }

    fn eat(&mut self, c: char) -> bool {
        self.skip_ws();
        if self.text[self.pos..].starts_with(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char, what: &str) -> Result<(), FieldError> {
        if self.eat(c) {
            Ok(())
        } else {
            let rest = &self.text[self.pos..];
            let found = if rest.is_empty() {
                "the end".to_string()
            } else {
                format!("`{}`", rest.chars().next().unwrap_or(' '))
            };
            Err(FieldError::here(format!(
                "expected `{c}` {what} in `{}`, found {found}",
                self.text
            )))
        }
    }

    /// A word: letters, digits, `_` and `-`.
    fn word(&mut self) -> &str {
        self.skip_ws();
        let start = self.pos;
        let len = self.text[start..]
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-'))
            .unwrap_or(self.text.len() - start);
        self.pos += len;
        &self.text[start..start + len]
    }

    fn ty(&mut self) -> Result<(DataType, bool), FieldError> {
        if self.depth > MAX_TYPE_DEPTH {
            return Err(FieldError::here(format!(
                "types nest deeper than {MAX_TYPE_DEPTH} levels"
            )));
        }
        let name = self.word().to_string();
        let data_type = match name.as_str() {
            "list" => {
                self.expect('<', "after `list`")?;
                self.depth += 1;
                let (item, nullable) = self.ty()?;
                self.depth -= 1;
                self.expect('>', "to close `list<`")?;
                DataType::List(Arc::new(Field::new("item", item, nullable)))
            }
            "struct" => {
                self.expect('<', "after `struct`")?;
                self.depth += 1;
                let mut fields: Vec<Field> = Vec::new();
                loop {
                    let field = self.word().to_string();
                    if field.is_empty() {
                        return Err(FieldError::here(format!(
                            "expected a field name in `{}`",
                            self.text
                        )));
                    }
                    if fields.iter().any(|f| f.name() == &field) {
                        return Err(FieldError::here(format!(
                            "field `{field}` appears twice in `{}`",
                            self.text
                        )));
                    }
                    self.expect(':', "after a struct field's name")?;
                    let (t, nullable) = self.ty()?;
                    fields.push(Field::new(field, t, nullable));
                    if !self.eat(',') {
                        break;
                    }
                }
                self.depth -= 1;
                self.expect('>', "to close `struct<`")?;
                DataType::Struct(fields.into())
            }
            "" => {
                return Err(FieldError::here(format!(
                    "expected a type in `{}`",
                    self.text
                )))
            }
            base => field_data_type(base).ok_or_else(|| {
                FieldError::here(format!(
                    "unknown type `{base}` (known: {}, list<T>, struct<name: T, …>)",
                    FIELD_TYPES.join(", ")
                ))
            })?,
        };
        let nullable = self.eat('?');
        Ok((data_type, nullable))
    }
}

/// The text of a type in `schema:` syntax (`int?`, `list<string>`,
/// `struct<id: int>`), the inverse of [`parse_field_type`] for weir's types.
pub fn field_type_text(t: &DataType, nullable: bool) -> String {
    let base = match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "string".to_string(),
        DataType::Int64 => "int".to_string(),
        DataType::Float64 => "float".to_string(),
        DataType::Boolean => "bool".to_string(),
        DataType::Timestamp(..) => "timestamp".to_string(),
        DataType::Date32 => "date".to_string(),
        DataType::Binary => "binary".to_string(),
        DataType::List(f) | DataType::LargeList(f) => {
            format!("list<{}>", field_type_text(f.data_type(), f.is_nullable()))
        }
        DataType::Struct(fields) => format!(
            "struct<{}>",
            fields
                .iter()
                .map(|f| format!(
                    "{}: {}",
                    f.name(),
                    field_type_text(f.data_type(), f.is_nullable())
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    };
    if nullable {
        format!("{base}?")
    } else {
        base
    }
}

/// Parses a `schema:` mapping `field: type` into an Arrow schema, in the mapping's
/// order. Types are `string`, `int` (Int64), `float` (Float64), `bool`, `timestamp`
/// (milliseconds, UTC), `date` (Date32) and `binary`; `int?` is a nullable int, a type
/// without `?` makes the field required (non-nullable).
///
/// ```
/// use serde_json::json;
/// let schema = weir_engine::spec::parse_schema(&json!({"ts": "timestamp", "n": "int?"}))
///     .expect("valid schema");
/// assert_eq!(schema.field(1).name(), "n");
/// assert!(schema.field(1).is_nullable());
/// ```
pub fn parse_schema(value: &Value) -> Result<SchemaRef, FieldError> {
    let Value::Object(map) = value else {
        return Err(FieldError::here(
            "expected a mapping of field names to types, e.g. { ts: timestamp, level: string }",
        ));
    };
    if map.is_empty() {
        return Err(FieldError::here("a schema needs at least one field"));
    }
    let mut fields = Vec::with_capacity(map.len());
    for (name, ty) in map {
        let at = format!("/{}", escape(name));
        // A plain unknown name gets the message that lists every type.
        if let Some(text) = ty.as_str() {
            let text = text.trim();
            let base = text.strip_suffix('?').map_or(text, str::trim_end);
            if !base.contains('<') && field_data_type(base).is_none() {
                return Err(FieldError::at(at, unknown_field_type_message(name, text)));
            }
        }
        let (data_type, nullable) = parse_field_type(ty).map_err(|e| {
            let message = format!("field `{name}`: {}", e.message);
            FieldError { message, ..e }.under(&at)
        })?;
        fields.push(Field::new(name, data_type, nullable));
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// Parses an `event_time:` mapping: `field` (the timestamp column, required),
/// `max_out_of_orderness` (a duration, default 0), `idle_timeout` (a duration,
/// optional) and `max_future` (a duration or `none`; unset, the source type's default,
/// see [`FutureBound`]).
///
/// ```
/// use serde_json::json;
/// let et = weir_engine::spec::parse_event_time(&json!({"field": "ts", "max_out_of_orderness": "5s"}))
///     .expect("valid event_time");
/// assert_eq!(et.max_out_of_orderness, std::time::Duration::from_secs(5));
/// ```
pub fn parse_event_time(value: &Value) -> Result<EventTimeConfig, FieldError> {
    let Value::Object(map) = value else {
        return Err(FieldError::here(
            "expected a mapping like { field: ts, max_out_of_orderness: 5s }",
        ));
    };
    if let Some(unknown) = map.keys().find(|k| !EVENT_TIME_KEYS.contains(&k.as_str())) {
        return Err(FieldError::at(
            format!("/{}", escape(unknown)),
            format!(
                "unknown key `{unknown}` (expected one of: {})",
                EVENT_TIME_KEYS.join(", ")
            ),
        ));
    }
    let field = match map.get("field") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(_) => return Err(FieldError::at("/field", "expected the name of a field")),
        None => {
            return Err(FieldError::here(
                "missing required key `field` (the column holding event time)",
            ))
        }
    };
    let max_out_of_orderness = duration_key(map, "max_out_of_orderness")?.unwrap_or_default();
    let idle_timeout = duration_key(map, "idle_timeout")?;
    let max_future = match map.get("max_future") {
        None => FutureBound::SourceDefault,
        Some(Value::String(s)) if s.trim() == "none" => FutureBound::Off,
        Some(_) => match duration_key(map, "max_future")? {
            Some(d) if d.is_zero() => {
                return Err(FieldError::at(
                    "/max_future",
                    "must be longer than 0s (or `none` for no bound)",
                ))
            }
            Some(d) => FutureBound::At(d),
            None => FutureBound::Off,
        },
    };
    Ok(EventTimeConfig {
        field,
        max_out_of_orderness,
        idle_timeout,
        max_future,
    })
}

/// Reads an optional duration key of `map`.
pub(crate) fn duration_key(
    map: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<Option<Duration>, FieldError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => parse_duration(s)
            .map(Some)
            .map_err(|m| FieldError::at(format!("/{key}"), m)),
        Some(other) => Err(FieldError::at(
            format!("/{key}"),
            format!("expected a duration like 500ms, 10s, 1m, found `{other}`"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn schema_keeps_order_types_and_nullability() {
        let s = parse_schema(&json!({
            "ts": "timestamp", "service": "string", "latency_ms": "int?",
            "ratio": "float", "ok": "bool", "day": "date", "raw": "binary?"
        }))
        .expect("valid schema");
        let names: Vec<&str> = s.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            ["ts", "service", "latency_ms", "ratio", "ok", "day", "raw"]
        );
        assert_eq!(
            s.field(0).data_type(),
            &DataType::Timestamp(TimeUnit::Millisecond, None)
        );
        assert!(!s.field(0).is_nullable());
        assert_eq!(s.field(2).data_type(), &DataType::Int64);
        assert!(s.field(2).is_nullable());
        assert_eq!(s.field(5).data_type(), &DataType::Date32);
        assert!(s.field(6).is_nullable());
    }

    #[test]
    fn nested_types_in_string_and_yaml_forms() {
        let s = parse_schema(&json!({
            "ctx": "struct<usr: struct<id: int, name: string?>, ip: string?>?",
            "tags": "list<string>",
            "geo": {"country": "string", "city": "string?"},
            "scores": ["float?"],
            "deep": "list< list<struct<a:int>> >?"
        }))
        .expect("valid schema");
        assert!(s.field(0).is_nullable());
        assert_eq!(
            field_type_text(s.field(0).data_type(), true),
            "struct<usr: struct<id: int, name: string?>, ip: string?>?"
        );
        assert_eq!(
            field_type_text(s.field(1).data_type(), false),
            "list<string>"
        );
        assert!(!s.field(1).is_nullable());
        assert_eq!(
            field_type_text(s.field(2).data_type(), false),
            "struct<country: string, city: string?>"
        );
        assert!(!s.field(2).is_nullable(), "the YAML forms are required");
        assert_eq!(
            field_type_text(s.field(3).data_type(), false),
            "list<float?>"
        );
        assert_eq!(
            field_type_text(s.field(4).data_type(), true),
            "list<list<struct<a: int>>>?"
        );
        // The text form reads back as the same type.
        for f in s.fields() {
            let text = field_type_text(f.data_type(), f.is_nullable());
            let (t, n) = parse_field_type(&json!(text)).expect("round trip");
            assert_eq!((&t, n), (f.data_type(), f.is_nullable()), "{text}");
        }
    }

    #[test]
    fn nested_type_errors_say_what_is_wrong() {
        let err = |v: serde_json::Value| parse_schema(&json!({ "f": v })).expect_err("bad");
        let e = err(json!("struct<id: innt>"));
        assert_eq!(e.path, "/f");
        assert!(e.message.contains("unknown type `innt`"), "{}", e.message);
        let e = err(json!("struct<a: int, a: string>"));
        assert!(
            e.message.contains("field `a` appears twice"),
            "{}",
            e.message
        );
        let e = err(json!("list<string"));
        assert!(e.message.contains("list<string"), "{}", e.message);
        let e = err(json!("struct<: int>"));
        assert!(e.message.contains("expected a field name"), "{}", e.message);
        let e = err(json!("list<int> x"));
        assert!(e.message.contains("unexpected `x`"), "{}", e.message);
        let e = err(json!({"a": {"b": "nope"}}));
        assert_eq!(e.path, "/f/a/b");
        let e = err(json!([]));
        assert!(e.message.contains("exactly one item type"), "{}", e.message);
        let deep = format!("{}int{}", "list<".repeat(40), ">".repeat(40));
        let e = err(json!(deep));
        assert!(e.message.contains("nest deeper than"), "{}", e.message);
        let deep = (0..40).fold(json!("int"), |t, _| json!({ "x": t }));
        let e = err(deep);
        assert!(e.message.contains("nest deeper than"), "{}", e.message);
    }

    #[test]
    fn unknown_field_type_points_at_the_field() {
        let e = parse_schema(&json!({"a": "string", "b": "strnig"})).expect_err("bad type");
        assert_eq!(e.path, "/b");
        assert!(
            e.message.contains("unknown type `strnig` for field `b`"),
            "{}",
            e.message
        );
        assert!(e.message.contains("timestamp"), "{}", e.message);
    }

    #[test]
    fn event_time_parses_and_rejects_bad_durations() {
        let et = parse_event_time(
            &json!({"field": "ts", "max_out_of_orderness": "5s", "idle_timeout": "30s"}),
        )
        .expect("valid");
        assert_eq!(et.field, "ts");
        assert_eq!(et.idle_timeout, Some(Duration::from_secs(30)));
        let e = parse_event_time(&json!({"field": "ts", "max_out_of_orderness": "soon"}))
            .expect_err("bad duration");
        assert_eq!(e.path, "/max_out_of_orderness");
        let e = parse_event_time(&json!({"field": "ts", "lag": "1s"})).expect_err("unknown key");
        assert_eq!(e.path, "/lag");
        let e = parse_event_time(&json!({"max_out_of_orderness": "1s"})).expect_err("no field");
        assert_eq!(e.path, "");
    }
}
