//! Reading option objects of formats and steps from the job's JSON values, with errors
//! that carry the JSON pointer of the offending key and reject unknown keys.

use arrow::datatypes::SchemaRef;
use serde_json::{Map, Value};
use weir_engine::registry::FieldError;

/// Escapes one JSON-pointer segment (`~` → `~0`, `/` → `~1`).
pub(crate) fn pointer_segment(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// `/key` as a JSON pointer.
pub(crate) fn pointer(key: &str) -> String {
    format!("/{}", pointer_segment(key))
}

/// A short name of a JSON value's kind for error messages.
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

/// `unknown column "x" (known columns: a, b)`.
pub(crate) fn unknown_column(name: &str, schema: &SchemaRef) -> String {
    let known: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    format!(
        "unknown column \"{name}\" (known columns: {})",
        known.join(", ")
    )
}

/// The keys of an option object, read one by one; [`Options::finish`] rejects the keys
/// nobody asked for.
pub(crate) struct Options<'a> {
    what: String,
    map: Option<&'a Map<String, Value>>,
    known: Vec<&'static str>,
}

impl<'a> Options<'a> {
    /// Options of `what` (e.g. `format csv`). `null`, `true` and a plain string (the
    /// `format: csv` short form) mean "no options"; a map is read key by key.
    pub(crate) fn new(what: impl Into<String>, value: &'a Value) -> Result<Self, FieldError> {
        let what = what.into();
        let map = match value {
            Value::Null | Value::Bool(true) | Value::String(_) => None,
            Value::Object(m) => Some(m),
            other => {
                return Err(FieldError::here(format!(
                    "{what}: expected a map of options, found {}",
                    kind(other)
                )))
            }
        };
        Ok(Options {
            what,
            map,
            known: Vec::new(),
        })
    }

    /// The raw value of `key`, if present.
    pub(crate) fn value(&mut self, key: &'static str) -> Option<&'a Value> {
        self.known.push(key);
        self.map.and_then(|m| m.get(key))
    }

    /// A string option.
    pub(crate) fn string(&mut self, key: &'static str) -> Result<Option<&'a str>, FieldError> {
        match self.value(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(other) => Err(FieldError::at(
                pointer(key),
                format!("expected a string, found {}", kind(other)),
            )),
        }
    }

    /// A boolean option.
    pub(crate) fn boolean(&mut self, key: &'static str) -> Result<Option<bool>, FieldError> {
        match self.value(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(FieldError::at(
                pointer(key),
                format!("expected true or false, found {}", kind(other)),
            )),
        }
    }

    /// A single ASCII character option (a delimiter, a quote).
    pub(crate) fn ascii_char(&mut self, key: &'static str) -> Result<Option<u8>, FieldError> {
        match self.string(key)? {
            None => Ok(None),
            Some(s) if s.len() == 1 && s.is_ascii() => Ok(Some(s.as_bytes()[0])),
            Some(s) => Err(FieldError::at(
                pointer(key),
                format!("expected a single ASCII character, found \"{s}\""),
            )),
        }
    }

    /// A size in bytes: an integer, or a string such as `64KiB`, `1MiB`, `2MB`.
    pub(crate) fn byte_size(&mut self, key: &'static str) -> Result<Option<usize>, FieldError> {
        let bad = |found: String| {
            FieldError::at(
                pointer(key),
                format!("expected a size in bytes such as 1048576 or \"1MiB\", found {found}"),
            )
        };
        let n = match self.value(key) {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| bad(n.to_string()))?,
            Some(Value::String(s)) => parse_byte_size(s).ok_or_else(|| bad(format!("\"{s}\"")))?,
            Some(other) => return Err(bad(kind(other).to_string())),
        };
        if n == 0 {
            return Err(bad("0".into()));
        }
        Ok(Some(n))
    }

    /// Fails on keys that were not read (besides `type`, which names the format itself).
    pub(crate) fn finish(self) -> Result<(), FieldError> {
        self.finish_with(true)
    }

    /// Like [`Options::finish`], but `type` is unknown too unless asked for (for maps
    /// nested in a step's value, where `type` means nothing).
    pub(crate) fn finish_strict(self) -> Result<(), FieldError> {
        self.finish_with(false)
    }

    fn finish_with(self, allow_type: bool) -> Result<(), FieldError> {
        let Some(map) = self.map else {
            return Ok(());
        };
        for key in map.keys() {
            let exempt = allow_type && key == "type";
            if !exempt && !self.known.contains(&key.as_str()) {
                let mut known = self.known.clone();
                known.sort_unstable();
                known.dedup();
                return Err(FieldError::at(
                    pointer(key),
                    format!(
                        "unknown option \"{key}\" for {} (expected one of: {})",
                        self.what,
                        known.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Parses `1048576`, `64KiB`, `1MiB`, `1MB`, `2GiB` (B, KB/KiB, MB/MiB, GB/GiB;
/// case-insensitive; decimal units are powers of 1000).
fn parse_byte_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: usize = digits.parse().ok()?;
    let mult: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "kib" | "k" => 1 << 10,
        "mb" => 1_000_000,
        "mib" | "m" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" | "g" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_byte_size("1024"), Some(1024));
        assert_eq!(parse_byte_size("1MiB"), Some(1 << 20));
        assert_eq!(parse_byte_size("64 KiB"), Some(64 << 10));
        assert_eq!(parse_byte_size("2MB"), Some(2_000_000));
        assert_eq!(parse_byte_size("MiB"), None);
        assert_eq!(parse_byte_size("1 parsec"), None);
    }

    #[test]
    fn unknown_keys_are_errors() {
        let v = json!({"type": "csv", "delimiter": ";", "delimeter": ","});
        let mut o = Options::new("format csv", &v).expect("a map");
        assert_eq!(o.ascii_char("delimiter").expect("valid"), Some(b';'));
        let _ = o.boolean("header");
        let err = o.finish().expect_err("typo");
        assert_eq!(err.path, "/delimeter");
        assert!(err.message.contains("expected one of: delimiter, header"));
    }

    #[test]
    fn pointers_are_escaped() {
        assert_eq!(pointer("a/b~c"), "/a~1b~0c");
    }
}
