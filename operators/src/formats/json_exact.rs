//! Exactness rules of the `json` format, checked on the records that go to Arrow's
//! decoder (the one-pass fast path follows the same rules by construction: it only takes
//! values it can hold exactly and leaves the others here).
//!
//! Arrow's JSON decoder is lenient where a stream job must not be: it truncates `1.5`
//! into an int field, saturates an epoch far out of range, reads the strings `"NaN"` and
//! `"inf"` as floats that no JSON sink can write back, and accepts `{"a": 1,}`. Here a
//! record either decodes to exactly what it says or is rejected with a reason:
//!
//! | field type | accepted | rejected (dead letter) |
//! |---|---|---|
//! | `int` | integers within 64 bits; `1.0`, `1e3` (exact integers); `"7"` | `1.5`, `1e19`, `"7.5"` |
//! | `float` | any JSON number (`1e400` is not one: serde_json refuses it) | `"NaN"`, `"inf"` |
//! | `timestamp` | RFC 3339 text; integer epoch milliseconds within years -262143..262142 | `1.5`, `1e30` |
//! | every record | well-formed JSON ([RFC 8259]) | trailing commas, `NaN` literals, comments |
//!
//! [RFC 8259]: https://www.rfc-editor.org/rfc/rfc8259

use std::fmt;

use arrow::datatypes::{DataType, Fields};
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Epoch milliseconds chrono (and so every timestamp writer) can represent: the first
/// and last millisecond of `NaiveDateTime`'s range.
pub(crate) const MIN_EPOCH_MS: i64 = -8_334_601_228_800_000;
/// See [`MIN_EPOCH_MS`].
pub(crate) const MAX_EPOCH_MS: i64 = 8_210_266_876_799_999;

/// Checks one record (its text) against the fields of the schema; the reason it cannot
/// be decoded exactly, if it cannot. Values of keys the schema does not declare are only
/// checked for syntax (an undeclared `1e400` is ignored like any undeclared value).
pub(crate) fn check_record(text: &str, fields: &Fields) -> Result<(), String> {
    let mut de = serde_json::Deserializer::from_str(text);
    let checked = Check {
        t: Target::Record(fields),
        path: Vec::new(),
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    checked.map_err(|e| {
        let text = e.to_string();
        // serde_json adds where; the field path says more.
        let text = match text.rfind(" at line ") {
            Some(i) if e.is_data() => text[..i].to_string(),
            _ => text,
        };
        if e.is_data() {
            text
        } else {
            format!("invalid JSON: {text}")
        }
    })
}

/// What a value is checked against.
#[derive(Clone, Copy)]
enum Target<'a> {
    /// The top-level object.
    Record(&'a Fields),
    /// A declared field's type.
    Type(&'a DataType),
}

/// A value checked against a target; `path` names the field for messages.
struct Check<'a> {
    t: Target<'a>,
    path: Vec<&'a str>,
}

impl Check<'_> {
    fn bad<E: serde::de::Error>(&self, why: impl fmt::Display) -> E {
        E::custom(format!(
            "invalid value for field \"{}\": {why}",
            self.path.join(".")
        ))
    }

    fn int<E: serde::de::Error>(&self, v: i128, text: &dyn fmt::Display) -> Result<(), E> {
        match self.t {
            Target::Type(DataType::Int64) if i64::try_from(v).is_err() => {
                Err(self.bad(format!("{text} is not an integer within 64 bits")))
            }
            Target::Type(DataType::Timestamp(..))
                if !(i128::from(MIN_EPOCH_MS)..=i128::from(MAX_EPOCH_MS)).contains(&v) =>
            {
                Err(self.bad(format!(
                    "{text} epoch milliseconds is out of range (years -262143 to 262142)"
                )))
            }
            _ => Ok(()),
        }
    }
}

impl<'de, 'a> DeserializeSeed<'de> for Check<'a> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, 'a> Visitor<'de> for Check<'a> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.int(i128::from(v), &v)
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.int(i128::from(v), &v)
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        match self.t {
            Target::Type(DataType::Int64 | DataType::Timestamp(..)) => {
                // An integer written as a float (`1.0`, `1e3`) is that integer.
                // 2^63 is the first float beyond i64.
                const LIMIT: f64 = 9_223_372_036_854_775_808.0;
                if v.fract() == 0.0 && (-LIMIT..LIMIT).contains(&v) {
                    #[allow(clippy::cast_possible_truncation)]
                    return self.int(i128::from(v as i64), &v);
                }
                match self.t {
                    Target::Type(DataType::Timestamp(..)) if v.fract() == 0.0 => Err(self.bad(
                        format!("{v} epoch milliseconds is out of range (years -262143 to 262142)"),
                    )),
                    Target::Type(DataType::Timestamp(..)) => {
                        Err(self.bad(format!("{v} is not a whole number of epoch milliseconds")))
                    }
                    _ => Err(self.bad(format!("{v} is not an integer within 64 bits"))),
                }
            }
            _ => Ok(()),
        }
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<(), E> {
        match self.t {
            Target::Type(DataType::Int64) => match s.trim().parse::<i64>() {
                Ok(_) => Ok(()),
                // A number, but not an integer Arrow would keep exactly.
                Err(_) if s.trim().parse::<f64>().is_ok() => {
                    Err(self.bad(format!("\"{s}\" is not an integer within 64 bits")))
                }
                Err(_) => Ok(()), // not a number at all: Arrow's message says so
            },
            Target::Type(DataType::Float64 | DataType::Float32) => match s.trim().parse::<f64>() {
                Ok(f) if !f.is_finite() => Err(self.bad(format!("\"{s}\" is not a finite number"))),
                _ => Ok(()),
            },
            _ => Ok(()),
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let fields = match self.t {
            Target::Record(fields) => Some(fields),
            Target::Type(DataType::Struct(fields)) => Some(fields),
            _ => None,
        };
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match fields.and_then(|fs| fs.iter().find(|f| f.name() == key.as_ref())) {
                Some(f) => {
                    let mut path = self.path.clone();
                    path.push(f.name());
                    map.next_value_seed(Check {
                        t: Target::Type(f.data_type()),
                        path,
                    })?;
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        match self.t {
            Target::Type(DataType::List(item) | DataType::LargeList(item)) => {
                while seq
                    .next_element_seed(Check {
                        t: Target::Type(item.data_type()),
                        path: self.path.clone(),
                    })?
                    .is_some()
                {}
            }
            _ => while seq.next_element::<IgnoredAny>()?.is_some() {},
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{Field, Schema, TimeUnit};
    use std::sync::Arc;

    fn fields() -> Fields {
        Schema::new(vec![
            Field::new("i", DataType::Int64, true),
            Field::new("f", DataType::Float64, true),
            Field::new("t", DataType::Timestamp(TimeUnit::Millisecond, None), true),
            Field::new(
                "s",
                DataType::Struct(vec![Field::new("n", DataType::Int64, true)].into()),
                true,
            ),
            Field::new(
                "l",
                DataType::List(Arc::new(Field::new("item", DataType::Int64, true))),
                true,
            ),
        ])
        .fields()
        .clone()
    }

    #[test]
    fn exact_values_pass_and_others_say_why() {
        let f = fields();
        for ok in [
            r#"{"i": 1, "f": 1.5, "t": 0}"#,
            r#"{"i": 1.0, "f": 1e300, "t": "2024-01-01T00:00:00Z"}"#,
            r#"{"i": 1e3, "f": "2.5", "i2": 1.5}"#,
            r#"{"i": "7", "s": {"n": 2}, "l": [1, 2.0, null]}"#,
            r#"{"i": -9223372036854775808, "t": 8210266876799999}"#,
            r#"{"i": "abc"}"#,
        ] {
            assert_eq!(check_record(ok, &f), Ok(()), "{ok}");
        }
        for (bad, why) in [
            (r#"{"i": 1.5}"#, "field \"i\": 1.5 is not an integer"),
            (
                r#"{"i": 9223372036854775808}"#,
                "field \"i\": 9223372036854775808 is not an integer",
            ),
            (r#"{"i": "7.5"}"#, "\"7.5\" is not an integer"),
            (r#"{"f": "NaN"}"#, "\"NaN\" is not a finite number"),
            (r#"{"f": "-inf"}"#, "\"-inf\" is not a finite number"),
            (r#"{"f": 1e400}"#, "invalid JSON: number out of range"),
            (r#"{"t": 1e30}"#, "out of range"),
            (r#"{"t": 1.5}"#, "not a whole number of epoch milliseconds"),
            (r#"{"t": 9223372036854775807}"#, "out of range"),
            (r#"{"s": {"n": 0.5}}"#, "field \"s.n\": 0.5"),
            (r#"{"l": [1, 2.5]}"#, "field \"l\": 2.5"),
            (r#"{"i": 1,}"#, "invalid JSON: trailing comma"),
            (r#"{"f": NaN}"#, "invalid JSON"),
        ] {
            let e = check_record(bad, &f).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
