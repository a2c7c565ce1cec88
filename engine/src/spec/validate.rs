//! Checks a job's JSON value against the job schema ([`super::job_json_schema`]) and
//! words every error for a human: an unknown key names the keys expected there, a bad
//! duration shows what durations look like, an unknown connector lists the known ones,
//! and the noise of `oneOf`/`anyOf` is reduced to the most specific failure.

use jsonschema::error::ValidationErrorKind;
use jsonschema::ValidationError;
use serde_json::Value;

use super::fields::unknown_field_type_message;
use super::schema::{defs, STEP_COMMON_KEYS};
use super::yaml::{escape, unescape};
use super::{did_you_mean, At, Problem};

/// Validates `value` against `schema` and returns every error, worded for humans.
pub(crate) fn check(schema: &Value, value: &Value) -> Vec<Problem> {
    let validator = match jsonschema::draft202012::new(schema) {
        Ok(v) => v,
        Err(e) => {
            return vec![Problem::new(
                "",
                At::Auto,
                format!(
                    "internal error: the job schema built from the registry is invalid ({e}); \
                     a factory's options_schema() is probably malformed"
                ),
            )]
        }
    };
    let mut out = Vec::new();
    for err in validator.iter_errors(value) {
        describe(schema, value, &err, &mut out);
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|p| seen.insert((p.pointer.clone(), p.message.clone())));
    out
}

/// The `$defs` entry a schema path lies in (`/$defs/duration/pattern` → `duration`).
fn def_of(schema_path: &str) -> Option<String> {
    let rest = schema_path.strip_prefix("/$defs/")?;
    Some(unescape(rest.split('/').next().unwrap_or(rest)))
}

fn parent(path: &str) -> &str {
    path.rfind('/').map_or("", |i| &path[..i])
}

fn last_segment(pointer: &str) -> String {
    unescape(pointer.rsplit('/').next().unwrap_or(pointer))
}

/// Describes a value for "found …".
fn describe_value(v: &Value) -> String {
    match v {
        Value::Null => "an empty value".into(),
        Value::Bool(b) => format!("the boolean `{b}`"),
        Value::Number(n) => format!("the number `{n}`"),
        Value::String(s) => format!("the string `{s}`"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
    }
}

/// `a` or `an` + the YAML word for a JSON type.
fn type_words(t: &str) -> &'static str {
    match t {
        "object" => "a mapping",
        "array" => "a list",
        "string" => "a string",
        "integer" => "an integer",
        "number" => "a number",
        "boolean" => "a boolean (true or false)",
        "null" => "nothing",
        _ => "a value",
    }
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn duration_message(found: &Value) -> String {
    format!(
        "expected a duration like 500ms, 10s, 1m, found {}",
        describe_value(found)
    )
}

/// Keys declared by the schema object at `schema_pointer`.
fn declared_keys(schema: &Value, schema_pointer: &str) -> Vec<String> {
    schema
        .pointer(schema_pointer)
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

/// The registered step kinds, read back from the step schema's `oneOf`.
fn step_kinds(schema: &Value) -> Vec<String> {
    let pointer = format!("/$defs/{}/properties", defs::STEP);
    schema
        .pointer(&pointer)
        .and_then(Value::as_object)
        .map(|p| {
            p.keys()
                .filter(|k| !STEP_COMMON_KEYS.contains(&k.as_str()))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

fn join(pointer: &str, key: &str) -> String {
    format!("{pointer}/{}", escape(key))
}

fn unknown_key_message(key: &str, allowed: &[String]) -> String {
    let hint = did_you_mean(key, allowed.iter().map(String::as_str))
        .map(|m| format!(", did you mean `{m}`?"))
        .unwrap_or_default();
    if allowed.is_empty() {
        format!("unknown key `{key}`{hint} (no keys are allowed here)")
    } else {
        format!(
            "unknown key `{key}`{hint} (expected one of: {})",
            allowed.join(", ")
        )
    }
}

fn describe(schema: &Value, root: &Value, err: &ValidationError<'_>, out: &mut Vec<Problem>) {
    let pointer = err.instance_path().as_str().to_string();
    let schema_path = err.schema_path().as_str().to_string();
    let instance: &Value = err.instance();
    let def = def_of(&schema_path);
    let push = |out: &mut Vec<Problem>, at: At, message: String| {
        out.push(Problem::new(&pointer, at, message));
    };
    match err.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected }
        | ValidationErrorKind::UnevaluatedProperties { unexpected } => {
            let allowed = declared_keys(schema, parent(&schema_path));
            for key in unexpected {
                out.push(Problem::new(
                    &join(&pointer, key),
                    At::Key,
                    unknown_key_message(key, &allowed),
                ));
            }
        }
        ValidationErrorKind::Required { property } => {
            let name = as_text(property);
            push(out, At::Key, format!("missing required key `{name}`"));
        }
        ValidationErrorKind::Type { .. } => {
            let message = if def.as_deref() == Some(defs::DURATION) {
                duration_message(instance)
            } else {
                let expected = match schema.pointer(&schema_path) {
                    Some(Value::String(t)) => type_words(t).to_string(),
                    Some(Value::Array(ts)) => ts
                        .iter()
                        .map(|t| type_words(t.as_str().unwrap_or_default()))
                        .collect::<Vec<_>>()
                        .join(" or "),
                    _ => "another type".to_string(),
                };
                format!("expected {expected}, found {}", describe_value(instance))
            };
            push(out, At::Value, message);
        }
        ValidationErrorKind::Enum { options } => {
            push(
                out,
                At::Value,
                enum_message(def.as_deref(), &pointer, options, instance),
            );
        }
        ValidationErrorKind::Constant { expected_value } => {
            push(
                out,
                At::Value,
                format!("expected `{}`", as_text(expected_value)),
            );
        }
        ValidationErrorKind::Pattern { pattern } => {
            let message = if def.as_deref() == Some(defs::DURATION) {
                duration_message(instance)
            } else {
                format!(
                    "`{}` does not match the pattern {pattern}",
                    as_text(instance)
                )
            };
            push(out, At::Value, message);
        }
        ValidationErrorKind::PropertyNames { error } => {
            let name = as_text(error.instance());
            out.push(Problem::new(
                &join(&pointer, &name),
                At::Key,
                format!(
                    "invalid name `{name}`: use letters, digits, `_` and `-`, starting with a letter or `_`"
                ),
            ));
        }
        ValidationErrorKind::Minimum { limit } => {
            push(
                out,
                At::Value,
                format!(
                    "must be at least {limit}, found {}",
                    describe_value(instance)
                ),
            );
        }
        ValidationErrorKind::Maximum { limit } => {
            push(
                out,
                At::Value,
                format!(
                    "must be at most {limit}, found {}",
                    describe_value(instance)
                ),
            );
        }
        ValidationErrorKind::ExclusiveMinimum { limit } => {
            push(out, At::Value, format!("must be greater than {limit}"));
        }
        ValidationErrorKind::ExclusiveMaximum { limit } => {
            push(out, At::Value, format!("must be less than {limit}"));
        }
        ValidationErrorKind::MinLength { limit } => {
            let message = if *limit == 1 {
                "must not be empty".to_string()
            } else {
                format!("must be at least {limit} characters long")
            };
            push(out, At::Value, message);
        }
        ValidationErrorKind::MaxLength { limit } => {
            push(
                out,
                At::Value,
                format!("must be at most {limit} characters long"),
            );
        }
        ValidationErrorKind::MinItems { limit } => {
            push(out, At::Value, format!("needs at least {limit} item(s)"));
        }
        ValidationErrorKind::MaxItems { limit } => {
            push(out, At::Value, format!("takes at most {limit} item(s)"));
        }
        ValidationErrorKind::MinProperties { limit } => {
            let what = last_segment(&pointer);
            let message = if *limit == 1 && (what == "sources" || what == "sinks") {
                format!("define at least one {}", what.trim_end_matches('s'))
            } else {
                format!(
                    "needs at least {limit} entr{}",
                    if *limit == 1 { "y" } else { "ies" }
                )
            };
            push(out, At::Key, message);
        }
        ValidationErrorKind::OneOfNotValid { context } | ValidationErrorKind::AnyOf { context } => {
            if def.as_deref() == Some(defs::STEP) {
                if let Some(m) = step_kind_message(schema, root, &pointer, instance, false) {
                    push(out, At::Key, m);
                }
            } else if def.as_deref() == Some(defs::FIELD_TYPE)
                && !(instance.is_object() || instance.is_array())
            {
                let found = match instance {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                push(
                    out,
                    At::Value,
                    unknown_field_type_message(&last_segment(&pointer), &found),
                );
            } else if let Some(values) = constant_branches(context, &pointer) {
                // A choice among constants (a serde enum: `oneOf` of `const`s): name
                // them all, not only the last branch's.
                push(out, At::Value, one_of_values_message(&values, instance));
            } else {
                for e in most_specific_branch(context, &pointer) {
                    describe(schema, root, e, out);
                }
            }
        }
        ValidationErrorKind::OneOfMultipleValid { .. } => {
            let message = if def.as_deref() == Some(defs::STEP) {
                step_kind_message(schema, root, &pointer, instance, true)
            } else {
                None
            };
            push(
                out,
                At::Key,
                message.unwrap_or_else(|| "matches more than one of the allowed forms".into()),
            );
        }
        ValidationErrorKind::FalseSchema => {
            push(out, At::Key, "is not allowed here".into());
        }
        _ => push(out, At::Value, err.to_string()),
    }
}

/// Words an `enum` failure by what the enum lists.
fn enum_message(def: Option<&str>, pointer: &str, options: &Value, found: &Value) -> String {
    let known: Vec<String> = options
        .as_array()
        .map(|a| a.iter().map(as_text).filter(|s| !s.is_empty()).collect())
        .unwrap_or_default();
    let found_text = as_text(found);
    let noun = match def {
        Some(defs::SOURCE_TYPE) => "source type",
        Some(defs::SINK_TYPE) => "sink type",
        Some(defs::FORMAT_NAME) => "format",
        Some(defs::FIELD_TYPE) => {
            return unknown_field_type_message(&last_segment(pointer), &found_text);
        }
        _ => {
            return format!(
                "expected one of: {}; found {}",
                known.join(", "),
                describe_value(found)
            )
        }
    };
    let hint = did_you_mean(&found_text, known.iter().map(String::as_str))
        .map(|m| format!(", did you mean `{m}`?"))
        .unwrap_or_default();
    let known = if known.is_empty() {
        "none are registered".to_string()
    } else {
        format!("known: {}", known.join(", "))
    };
    format!("unknown {noun} `{found_text}`{hint} ({known})")
}

/// A step with no kind key or several. `None` when the step has unknown keys: those
/// are reported already and likely are the misspelt kind.
fn step_kind_message(
    schema: &Value,
    root: &Value,
    pointer: &str,
    instance: &Value,
    several: bool,
) -> Option<String> {
    let kinds = step_kinds(schema);
    let obj = instance
        .as_object()
        .or_else(|| root.pointer(pointer)?.as_object())?;
    let present: Vec<&String> = obj.keys().filter(|k| kinds.contains(k)).collect();
    if several {
        let names: Vec<String> = present.iter().map(|k| format!("`{k}`")).collect();
        return Some(format!(
            "a step does exactly one thing, found {}; split it into several steps",
            names.join(" and ")
        ));
    }
    let has_unknown = obj
        .keys()
        .any(|k| !kinds.contains(k) && !STEP_COMMON_KEYS.contains(&k.as_str()));
    if has_unknown {
        return None;
    }
    Some(format!(
        "a step needs one kind key saying what it does (one of: {})",
        kinds.join(", ")
    ))
}

/// The branch of a failed `oneOf`/`anyOf` that got furthest: deepest instance path,
/// then fewest errors.
/// The allowed values when every branch of a `oneOf`/`anyOf` failed only for not
/// being one constant (or enum) value at `pointer`; `None` for any other shape.
fn constant_branches(
    context: &[Vec<ValidationError<'static>>],
    pointer: &str,
) -> Option<Vec<String>> {
    let mut values = Vec::new();
    for branch in context {
        if branch.is_empty() {
            return None;
        }
        for e in branch {
            if e.instance_path().as_str() != pointer {
                return None;
            }
            match e.kind() {
                ValidationErrorKind::Constant { expected_value } => {
                    values.push(as_text(expected_value))
                }
                ValidationErrorKind::Enum { options } => values.extend(
                    options
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(as_text)
                        .filter(|s| !s.is_empty()),
                ),
                _ => return None,
            }
        }
    }
    values.dedup();
    (!values.is_empty()).then_some(values)
}

/// "expected one of: a, b; found `c`, did you mean `b`?"
fn one_of_values_message(values: &[String], found: &Value) -> String {
    let hint = did_you_mean(&as_text(found), values.iter().map(String::as_str))
        .map(|m| format!(", did you mean `{m}`?"))
        .unwrap_or_default();
    format!(
        "expected one of: {}; found {}{hint}",
        values.join(", "),
        describe_value(found)
    )
}

fn most_specific_branch<'a>(
    context: &'a [Vec<ValidationError<'static>>],
    pointer: &str,
) -> &'a [ValidationError<'static>] {
    let depth = |errs: &[ValidationError<'static>]| {
        errs.iter()
            .map(|e| e.instance_path().as_str().matches('/').count())
            .max()
            .unwrap_or(0)
    };
    // A branch that rejects the value for its very type (a list where a mapping is
    // given) is about another form; one that took the form and found a fault in it
    // says more.
    let of_the_form = |errs: &[ValidationError<'static>]| {
        !errs.iter().any(|e| {
            e.instance_path().as_str() == pointer
                && matches!(e.kind(), ValidationErrorKind::Type { .. })
        })
    };
    context
        .iter()
        .max_by(|a, b| {
            depth(a)
                .cmp(&depth(b))
                .then_with(|| of_the_form(a).cmp(&of_the_form(b)))
                .then_with(|| b.len().cmp(&a.len()))
        })
        .map(Vec::as_slice)
        .unwrap_or(&[])
}
