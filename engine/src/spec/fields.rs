//! The small typed values of a job spec that the engine itself reads: a source's
//! declared `schema:` (field name → type) and its `event_time:` strategy. Both the YAML
//! compiler and the Rust builder use these parsers.

use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde_json::Value;

use super::yaml::escape;
use crate::registry::FieldError;
use crate::time::{parse_duration, EventTimeConfig};

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
pub const EVENT_TIME_KEYS: &[&str] = &["field", "max_out_of_orderness", "idle_timeout"];

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
        "unknown type `{found}` for field `{field}` (known: {}; add `?` for a nullable field)",
        FIELD_TYPES.join(", ")
    )
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
        let Some(text) = ty.as_str() else {
            return Err(FieldError::at(
                at,
                unknown_field_type_message(name, &ty.to_string()),
            ));
        };
        let text = text.trim();
        let (base, nullable) = match text.strip_suffix('?') {
            Some(b) => (b.trim_end(), true),
            None => (text, false),
        };
        let data_type = field_data_type(base)
            .ok_or_else(|| FieldError::at(&at, unknown_field_type_message(name, text)))?;
        fields.push(Field::new(name, data_type, nullable));
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// Parses an `event_time:` mapping: `field` (the timestamp column, required),
/// `max_out_of_orderness` (a duration, default 0) and `idle_timeout` (a duration,
/// optional).
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
    Ok(EventTimeConfig {
        field,
        max_out_of_orderness,
        idle_timeout,
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
