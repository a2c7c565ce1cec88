//! Connector options: deserializing a connector's keys with serde into a typed struct
//! (unknown keys are errors) with [`FieldError`]s that point at the offending key, and
//! the JSON Schema of such a struct for `options_schema()` (editor help).

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use weir_engine::registry::FieldError;

#[cfg(any(feature = "kafka", feature = "postgres"))]
pub(crate) use weir_engine::env::expand_env;

/// Escapes one JSON pointer segment (`~` → `~0`, `/` → `~1`).
pub(crate) fn pointer_segment(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Cleans a serde error message for users (drops serde_json's position suffix, which is
/// meaningless for a value that did not come from text).
fn clean_message(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg,
    }
}

/// The key named in a serde message such as ``unknown field `x`, expected …`` or
/// ``missing field `x` ``.
fn quoted_key(msg: &str, prefix: &str) -> Option<String> {
    let rest = msg.strip_prefix(prefix)?;
    let rest = rest.strip_prefix('`')?;
    let end = rest.find('`')?;
    Some(rest[..end].to_string())
}

/// Deserializes a connector's options (an object, or null for "no options") into `T`,
/// which should be `#[serde(deny_unknown_fields)]`. Errors carry the JSON pointer of
/// the offending key, relative to the object (`/path`, or `` for the object itself).
pub(crate) fn parse_options<T: DeserializeOwned>(value: &Value) -> Result<T, FieldError> {
    let obj = match value {
        Value::Null => Map::new(),
        Value::Object(m) => m.clone(),
        other => {
            return Err(FieldError::here(format!(
                "expected an object of options, found {}",
                kind_of(other)
            )))
        }
    };
    match serde_json::from_value::<T>(Value::Object(obj.clone())) {
        Ok(t) => Ok(t),
        Err(e) => Err(locate_error::<T>(&obj, &e)),
    }
}

/// Finds which key of `obj` caused `err` and builds the field error.
fn locate_error<T: DeserializeOwned>(
    obj: &Map<String, Value>,
    err: &serde_json::Error,
) -> FieldError {
    let msg = clean_message(err);
    // Keys of nested objects are reported at the top-level key that holds them.
    if let Some(k) = quoted_key(&msg, "unknown field ") {
        let msg = msg_unknown(&k, &msg);
        if obj.contains_key(&k) {
            return FieldError::at(format!("/{}", pointer_segment(&k)), msg);
        }
        return locate_culprit::<T>(obj, &clean_message(err), msg);
    }
    if let Some(k) = quoted_key(&msg, "missing field ") {
        let msg = format!("missing required key `{k}`");
        if !obj.contains_key(&k) {
            // Is it missing here or in a nested object?
            let mut with = obj.clone();
            with.insert(k.clone(), Value::Null);
            let nested = match serde_json::from_value::<T>(Value::Object(with)) {
                Ok(_) => false,
                Err(e2) => {
                    quoted_key(&clean_message(&e2), "missing field ").as_deref() == Some(k.as_str())
                }
            };
            if !nested {
                return FieldError::here(msg);
            }
        }
        return locate_culprit::<T>(obj, &clean_message(err), msg);
    }
    locate_culprit::<T>(obj, &msg, msg.clone())
}

/// The key of `obj` whose removal changes the deserialization error `original`: the key
/// the error is in. Reports `msg` there.
fn locate_culprit<T: DeserializeOwned>(
    obj: &Map<String, Value>,
    original: &str,
    msg: String,
) -> FieldError {
    // A wrong value: serde does not say which key it was in. Removing a key that is not
    // the culprit leaves the error as it is; removing the culprit changes it.
    for key in obj.keys() {
        let mut without = obj.clone();
        without.remove(key);
        let changed = match serde_json::from_value::<T>(Value::Object(without)) {
            Ok(_) => true,
            Err(e2) => clean_message(&e2) != original,
        };
        if changed {
            return FieldError::at(format!("/{}", pointer_segment(key)), msg);
        }
    }
    FieldError::here(msg)
}

fn msg_unknown(key: &str, msg: &str) -> String {
    match msg.find(", expected ") {
        Some(i) => format!("unknown key `{key}`{}", &msg[i..]),
        None => format!("unknown key `{key}`"),
    }
}

/// A short name of a JSON value's kind for messages.
pub(crate) fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The JSON Schema of an options struct: an object schema with `properties`,
/// `required` and descriptions (from doc comments), subschemas inlined and without the
/// meta keys (`$schema`, `title`), so that the spec layer can embed it.
pub(crate) fn schema_for<T: JsonSchema>() -> Value {
    let generator = schemars::generate::SchemaSettings::draft07()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .into_generator();
    let mut value = generator.into_root_schema_for::<T>().to_value();
    if let Value::Object(m) = &mut value {
        m.remove("title");
        m.remove("$schema");
        m.remove("definitions");
        m.entry("required")
            .or_insert_with(|| Value::Array(Vec::new()));
    }
    strip_null(&mut value);
    tidy(&mut value);
    value
}

/// Drops schemars' numeric `format`s (`uint64`, `double`: not JSON Schema formats) and
/// joins the lines of doc-comment descriptions.
fn tidy(v: &mut Value) {
    match v {
        Value::Object(m) => {
            let numeric = matches!(
                m.get("type").and_then(Value::as_str),
                Some("integer") | Some("number")
            );
            if numeric {
                m.remove("format");
            }
            if let Some(Value::String(d)) = m.get_mut("description") {
                *d = d.split('\n').map(str::trim).collect::<Vec<_>>().join(" ");
            }
            for (_, child) in m.iter_mut() {
                tidy(child);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(tidy),
        _ => {}
    }
}

/// Removes the `null` alternative that schemars adds for `Option<T>` fields: an absent
/// key is the way to say "not set"; YAML `~` is not advertised.
fn strip_null(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Array(types)) = m.get_mut("type") {
                types.retain(|t| t != "null");
                if types.len() == 1 {
                    let t = types[0].clone();
                    m.insert("type".into(), t);
                }
            }
            for key in ["anyOf", "oneOf"] {
                let mut collapse = None;
                if let Some(Value::Array(alts)) = m.get_mut(key) {
                    alts.retain(|a| a.get("type").and_then(Value::as_str) != Some("null"));
                    if alts.len() == 1 {
                        collapse = alts.pop();
                    }
                }
                if let Some(Value::Object(inner)) = collapse {
                    m.remove(key);
                    for (k, val) in inner {
                        m.entry(k).or_insert(val);
                    }
                }
            }
            for (_, child) in m.iter_mut() {
                strip_null(child);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(strip_null),
        _ => {}
    }
}

/// An optional duration option (`"10s"`), `default` when absent.
#[cfg(any(feature = "kafka", feature = "postgres"))]
pub(crate) fn duration_option(
    value: &Option<String>,
    path: &str,
    default: std::time::Duration,
) -> Result<std::time::Duration, FieldError> {
    match value {
        None => Ok(default),
        Some(text) => weir_engine::time::parse_duration(text).map_err(|m| FieldError::at(path, m)),
    }
}

/// A token no other transaction has: 128 bits from the clock, the process and the
/// standard library's random hasher keys.
#[cfg(any(feature = "kafka", feature = "postgres"))]
pub(crate) fn new_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(nanos);
    h.write_u32(std::process::id());
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    format!("{:016x}{:016x}", h.finish(), nanos as u64)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests fail loudly on purpose.
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Opts {
        /// The path.
        path: String,
        /// A flag.
        #[serde(default)]
        header: bool,
        /// A size.
        max: Option<u64>,
    }

    #[test]
    fn errors_point_at_the_key() {
        let e =
            parse_options::<Opts>(&serde_json::json!({"path": "a", "hedaer": true})).unwrap_err();
        assert_eq!(e.path, "/hedaer");
        assert!(e.message.contains("unknown key `hedaer`"), "{e}");
        let e =
            parse_options::<Opts>(&serde_json::json!({"path": "a", "header": "yes"})).unwrap_err();
        assert_eq!(e.path, "/header");
        assert!(e.message.contains("expected a boolean"), "{e}");
        let e = parse_options::<Opts>(&serde_json::json!({"path": 3, "max": 1})).unwrap_err();
        assert_eq!(e.path, "/path");
        let e = parse_options::<Opts>(&serde_json::json!({"path": "x", "max": -1})).unwrap_err();
        assert_eq!(e.path, "/max");
        let e = parse_options::<Opts>(&serde_json::json!({})).unwrap_err();
        assert_eq!(e.path, "");
        assert!(e.message.contains("missing required key `path`"));
        let e = parse_options::<Opts>(&serde_json::json!([1])).unwrap_err();
        assert_eq!(e.path, "");
        let o = parse_options::<Opts>(&serde_json::json!({"path": "x"})).unwrap();
        assert_eq!(o.path, "x");
        assert!(!o.header);
    }

    #[test]
    fn schema_is_a_plain_object_schema() {
        let s = schema_for::<Opts>();
        assert_eq!(s["type"], "object");
        assert_eq!(s["additionalProperties"], false);
        assert_eq!(s["required"], serde_json::json!(["path"]));
        assert_eq!(s["properties"]["max"]["type"], "integer");
        assert!(s["properties"]["max"].get("format").is_none());
        assert_eq!(s["properties"]["path"]["description"], "The path.");
        assert!(s.get("$schema").is_none());
    }
}
