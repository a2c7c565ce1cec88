//! The JSON Schema (draft 2020-12) of the job format, composed from the registry: the
//! job-level keys are fixed, while source and sink types, formats and step kinds come
//! from the registered factories' `options_schema()`. Editors use it for completion and
//! checking; the compiler validates every job file against it.
//!
//! Layout: the job-level keys are `properties` of the root, every object has
//! `additionalProperties: false`, and reusable parts live in `$defs` under fixed names
//! ([`defs`]) that the validator recognises to word its messages. A source, a sink, the
//! dead-letter sink and an object `format` choose their connector keys by `type`
//! (`if`/`then` on a `const`), so that an error names the chosen connector's keys only.

use serde_json::{json, Map, Value};

use super::fields::FIELD_TYPES;
use super::yaml::escape;
use crate::registry::Registry;

/// Names of the fixed `$defs` entries.
pub mod defs {
    /// A duration string.
    pub const DURATION: &str = "duration";
    /// A parallelism (integer ≥ 1).
    pub const PARALLELISM: &str = "parallelism";
    /// A field type of a `schema:`.
    pub const FIELD_TYPE: &str = "field_type";
    /// A `schema:` mapping.
    pub const SCHEMA: &str = "schema";
    /// An `event_time:` mapping.
    pub const EVENT_TIME: &str = "event_time";
    /// The name of a source type.
    pub const SOURCE_TYPE: &str = "source_type";
    /// The name of a sink type.
    pub const SINK_TYPE: &str = "sink_type";
    /// The name of a format.
    pub const FORMAT_NAME: &str = "format_name";
    /// A source's `format`.
    pub const FORMAT: &str = "format";
    /// A step's `from`.
    pub const FROM: &str = "from";
    /// A source.
    pub const SOURCE: &str = "source";
    /// A step.
    pub const STEP: &str = "step";
    /// A sink.
    pub const SINK: &str = "sink";
    /// The job's dead-letter sink.
    pub const DEAD_LETTER: &str = "dead_letter";
    /// The checkpoint settings.
    pub const CHECKPOINT: &str = "checkpoint";
    /// The state backend settings.
    pub const STATE: &str = "state";
}

/// What durations look like: numbers with units, as humantime reads them (`500ms`,
/// `10s`, `1m`, `1h 30m`, `2.5s`, `1day`).
pub const DURATION_PATTERN: &str = r"^\s*([0-9]+(\.[0-9]+)?\s*(nanos|nsec|ns|usec|us|µs|millis|msec|ms|seconds|second|secs|sec|s|minutes|minute|mins|min|m|hours|hour|hrs|hr|h|days|day|d|weeks|week|wks|wk|w|months|month|M|years|year|yrs|yr|y)\s*)+$";

/// What names of sources, steps and sinks look like.
pub const NAME_PATTERN: &str = r"^[A-Za-z_][A-Za-z0-9_-]*$";

/// Keys every source has, besides its connector's keys.
pub const SOURCE_COMMON_KEYS: &[&str] = &["type", "format", "schema", "event_time", "parallelism"];
/// Keys every sink has, besides its connector's keys.
pub const SINK_COMMON_KEYS: &[&str] = &["from", "type", "parallelism"];
/// Keys every step has, besides its one kind key.
pub const STEP_COMMON_KEYS: &[&str] = &["from", "parallelism"];

fn def_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/$defs/{}", escape(name)) })
}

/// The JSON Schema (draft 2020-12) of a job file, with the source types, sink types,
/// formats and step kinds of `registry`.
pub fn job_json_schema(registry: &Registry) -> Value {
    let mut defs = Map::new();
    add_fixed_defs(&mut defs, registry);

    let sources: Vec<(String, Value)> = registry
        .sources()
        .map(|f| (f.name().to_string(), f.options_schema()))
        .collect();
    let sinks: Vec<(String, Value)> = registry
        .sinks()
        .map(|f| (f.name().to_string(), f.options_schema()))
        .collect();
    let formats: Vec<(String, Value)> = registry
        .formats()
        .map(|f| (f.name().to_string(), f.options_schema()))
        .collect();

    let source = source_def(&sources, &mut defs);
    defs.insert(defs::SOURCE.into(), source);
    let sink = sink_def(&sinks, &mut defs, true);
    defs.insert(defs::SINK.into(), sink);
    let dead_letter = sink_def(&sinks, &mut defs, false);
    defs.insert(defs::DEAD_LETTER.into(), dead_letter);
    let format = format_def(&formats, &mut defs);
    defs.insert(defs::FORMAT.into(), format);
    let step = step_def(registry, &mut defs);
    defs.insert(defs::STEP.into(), step);

    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "weir job",
        "description": "A weir streaming job: named sources, a DAG of steps and sinks.",
        "type": "object",
        "additionalProperties": false,
        "required": ["name", "sources", "sinks"],
        "properties": {
            "name": {
                "title": "Job name",
                "description": "The job's name; shown in logs and metrics and used for its state directory.",
                "type": "string",
                "minLength": 1
            },
            "description": {
                "title": "Description",
                "description": "Free text describing the job.",
                "type": "string"
            },
            "parallelism": with_text(def_ref(defs::PARALLELISM), "Parallelism",
                "Default number of parallel subtasks of every source and step (default 1); a sink defaults to its input's parallelism, a file source is capped at its number of files, stdout runs at 1."),
            "max_parallelism": {
                "title": "Max parallelism",
                "description": "Number of key groups: the largest parallelism keyed state can be rescaled to (default 128).",
                "type": "integer",
                "minimum": 1,
                "maximum": 32768
            },
            "batch_size": {
                "title": "Batch size",
                "description": "A source closes a batch at this many rows (default 1024).",
                "type": "integer",
                "minimum": 1
            },
            "linger": with_text(def_ref(defs::DURATION), "Linger",
                "A source closes a non-empty batch after this long even if it is small (default 100ms)."),
            "channel_capacity": {
                "title": "Channel capacity",
                "description": "Capacity of each channel between tasks, in rows; a full channel applies backpressure (default 16384).",
                "type": "integer",
                "minimum": 1
            },
            "buffer_debloat": {
                "title": "Buffer debloating",
                "description": "While a task is the bottleneck, hold the queue in front of it to about this much of its throughput, so that checkpoint barriers behind the data do not wait for a full channel (default 1s; `false` turns it off: queues fill to `channel_capacity`).",
                "anyOf": [def_ref(defs::DURATION), { "const": false }]
            },
            "checkpoint": def_ref(defs::CHECKPOINT),
            "state": def_ref(defs::STATE),
            "http": {
                "title": "HTTP endpoint",
                "description": "Serve Prometheus metrics, the REST API, the dashboard and queryable state on this address while the job runs, e.g. `127.0.0.1:8081` (`weir run --http` overrides it).",
                "type": "string",
                "pattern": "^\\S+:[0-9]{1,5}$"
            },
            "sources": {
                "title": "Sources",
                "description": "Where records come from, by name.",
                "type": "object",
                "minProperties": 1,
                "propertyNames": { "pattern": NAME_PATTERN },
                "additionalProperties": def_ref(defs::SOURCE)
            },
            "steps": {
                "title": "Steps",
                "description": "Processing steps, by name; each reads `from` sources or other steps.",
                "type": "object",
                "propertyNames": { "pattern": NAME_PATTERN },
                "additionalProperties": def_ref(defs::STEP)
            },
            "sinks": {
                "title": "Sinks",
                "description": "Where results go, by name; each reads `from` a source or step.",
                "type": "object",
                "minProperties": 1,
                "propertyNames": { "pattern": NAME_PATTERN },
                "additionalProperties": def_ref(defs::SINK)
            },
            "dead_letter": def_ref(defs::DEAD_LETTER)
        },
        "$defs": defs
    })
}

/// Adds `title` and `description` next to a `$ref`.
fn with_text(mut schema: Value, title: &str, description: &str) -> Value {
    if let Value::Object(m) = &mut schema {
        m.insert("title".into(), Value::from(title));
        m.insert("description".into(), Value::from(description));
    }
    schema
}

/// `{enum: names}`, or a schema nothing matches when there are no names.
fn name_enum(names: Vec<String>, description: &str) -> Value {
    if names.is_empty() {
        json!({ "description": description, "enum": [""], "not": {} })
    } else {
        json!({ "description": description, "enum": names })
    }
}

fn add_fixed_defs(defs: &mut Map<String, Value>, registry: &Registry) {
    let field_types: Vec<String> = FIELD_TYPES
        .iter()
        .flat_map(|t| [t.to_string(), format!("{t}?")])
        .collect();
    let fixed = [
        (
            defs::DURATION,
            json!({
                "title": "Duration",
                "description": "A duration such as 500ms, 10s, 1m or 1h 30m.",
                "type": "string",
                "pattern": DURATION_PATTERN,
                "examples": ["500ms", "10s", "1m"]
            }),
        ),
        (
            defs::PARALLELISM,
            json!({ "type": "integer", "minimum": 1, "description": "Number of parallel subtasks." }),
        ),
        (
            defs::FIELD_TYPE,
            json!({
                "description": "A field type; a trailing `?` makes the field nullable. Nested: list<T>, struct<name: T, …>, or in YAML a mapping (a struct) or a one-item sequence (a list).",
                "anyOf": [
                    { "enum": field_types },
                    {
                        "type": "string",
                        "pattern": r"^\s*(list|struct)\s*<.*>\s*\??\s*$",
                        "examples": ["list<string>", "struct<id: int, name: string?>?"]
                    },
                    {
                        "type": "object",
                        "minProperties": 1,
                        "additionalProperties": def_ref(defs::FIELD_TYPE)
                    },
                    {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": 1,
                        "items": def_ref(defs::FIELD_TYPE)
                    }
                ]
            }),
        ),
        (
            defs::SCHEMA,
            json!({
                "title": "Schema",
                "description": "The records' fields and types, in order, e.g. { ts: timestamp, level: string, latency_ms: int? }.",
                "type": "object",
                "minProperties": 1,
                "additionalProperties": def_ref(defs::FIELD_TYPE)
            }),
        ),
        (
            defs::EVENT_TIME,
            json!({
                "title": "Event time",
                "description": "Which field carries event time and how watermarks follow it.",
                "type": "object",
                "additionalProperties": false,
                "required": ["field"],
                "properties": {
                    "field": {
                        "type": "string",
                        "minLength": 1,
                        "description": "The timestamp field (a timestamp, or an int of epoch milliseconds)."
                    },
                    "max_out_of_orderness": with_text(def_ref(defs::DURATION), "Max out-of-orderness",
                        "How far behind the newest record a record may arrive and still be on time (default 0s)."),
                    "idle_timeout": with_text(def_ref(defs::DURATION), "Idle timeout",
                        "A split without data for this long stops holding the watermark back."),
                    "max_future": {
                        "title": "Max future",
                        "description": "A record whose event time is further ahead of the wall clock than this goes to the dead-letter output instead of moving the watermark (default for file sources: 1d; others: none). `none` turns the bound off.",
                        "anyOf": [ { "const": "none" }, def_ref(defs::DURATION) ]
                    }
                }
            }),
        ),
        (
            defs::SOURCE_TYPE,
            name_enum(
                registry.sources().map(|f| f.name().to_string()).collect(),
                "The source connector.",
            ),
        ),
        (
            defs::SINK_TYPE,
            name_enum(
                registry.sinks().map(|f| f.name().to_string()).collect(),
                "The sink connector.",
            ),
        ),
        (
            defs::FORMAT_NAME,
            name_enum(
                registry.formats().map(|f| f.name().to_string()).collect(),
                "The record format.",
            ),
        ),
        (
            defs::FROM,
            json!({
                "title": "Input",
                "description": "The source or step to read: a name, `name.side_output`, or a list of them for steps with several inputs.",
                "type": ["string", "array"],
                "minLength": 1,
                "minItems": 1,
                "items": { "type": "string", "minLength": 1 }
            }),
        ),
        (
            defs::CHECKPOINT,
            json!({
                "title": "Checkpoints",
                "description": "Periodic consistent snapshots of state and source positions, for exactly-once recovery.",
                "type": "object",
                "additionalProperties": false,
                "required": ["interval"],
                "properties": {
                    "interval": with_text(def_ref(defs::DURATION), "Interval", "Time between the end of one checkpoint and the start of the next."),
                    "timeout": with_text(def_ref(defs::DURATION), "Timeout", "A checkpoint not complete after this long is aborted; the job goes on (default 10m)."),
                    "storage": {
                        "type": "string",
                        "minLength": 1,
                        "description": "Where checkpoints are kept: a directory (relative to the job file), a file:// URL, s3://bucket/prefix, or memory:// (tests). Default: .weir/checkpoints next to the job file."
                    },
                    "retain": {
                        "type": "integer",
                        "minimum": 1,
                        "description": "How many completed checkpoints to keep (default 3); shared files are deleted when no kept checkpoint needs them."
                    },
                    "tolerable_failures": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "Consecutive failed checkpoints after which the job fails (default 3): a job whose checkpoint store is full or down does not run on without ever committing its output."
                    },
                    "s3": {
                        "title": "S3",
                        "description": "Options of an s3:// storage; unset ones come from the AWS environment variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL).",
                        "type": "object",
                        "additionalProperties": false,
                        "properties": {
                            "endpoint": { "type": "string", "minLength": 1, "description": "Endpoint of an S3-compatible server, e.g. http://127.0.0.1:9000." },
                            "region": { "type": "string", "minLength": 1, "description": "Region (default us-east-1)." },
                            "access_key_id": { "type": "string", "description": "Access key id." },
                            "secret_access_key": { "type": "string", "description": "Secret access key." },
                            "session_token": { "type": "string", "description": "Session token of temporary credentials." },
                            "path_style": { "type": "boolean", "description": "Path-style requests (endpoint/bucket/key), as most S3-compatible servers need (default false)." },
                            "allow_http": { "type": "boolean", "description": "Allow an http:// endpoint (default false)." },
                            "connect_timeout": with_text(def_ref(defs::DURATION), "Connect timeout", "How long connecting to the endpoint may take (default 3s)."),
                            "request_timeout": with_text(def_ref(defs::DURATION), "Request timeout", "How long one request, upload included, may take before it is retried (default 30s). At job start the first request gets at most 5s per attempt, 3 attempts, so a server that accepts connections but never answers fails start-up in seconds.")
                        }
                    }
                }
            }),
        ),
        (
            defs::STATE,
            json!({
                "title": "State",
                "description": "Where keyed steps (windows, joins) keep their state.",
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "backend": {
                        "type": "string",
                        "enum": ["memory", "rocksdb"],
                        "description": "memory (default): hash maps in memory; rocksdb: on local disk, for state larger than memory, with incremental checkpoints."
                    },
                    "dir": {
                        "type": "string",
                        "minLength": 1,
                        "description": "Directory of RocksDB's working files, relative to the job file (default .weir/state next to the job file)."
                    },
                    "memory_budget": {
                        "type": ["string", "integer"],
                        "description": "Memory for state per operator subtask, e.g. 256MB: half for RocksDB's block cache and write buffers, half for the open windows an operator keeps in memory (the coldest keys move to RocksDB beyond it). Without it RocksDB uses 64MB and windows keep all their open state in memory."
                    }
                }
            }),
        ),
    ];
    for (name, schema) in fixed {
        defs.insert(name.to_string(), schema);
    }
}

/// Schemas of the keys every source has.
fn source_common_properties() -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(
        "type".into(),
        with_text(def_ref(defs::SOURCE_TYPE), "Type", "The source connector."),
    );
    m.insert(
        "format".into(),
        with_text(
            def_ref(defs::FORMAT),
            "Format",
            "How the bytes a source reads are decoded: a name or { type: NAME, ...options }.",
        ),
    );
    m.insert("schema".into(), def_ref(defs::SCHEMA));
    m.insert("event_time".into(), def_ref(defs::EVENT_TIME));
    m.insert(
        "parallelism".into(),
        with_text(
            def_ref(defs::PARALLELISM),
            "Parallelism",
            "This node's parallelism.",
        ),
    );
    m
}

fn source_def(variants: &[(String, Value)], defs: &mut Map<String, Value>) -> Value {
    let common = source_common_properties();
    let all_of = discriminated_branches("source", variants, &common, &["type"], defs);
    json!({
        "title": "Source",
        "description": "A source: `type` picks the connector, whose own keys come next to the common ones.",
        "type": "object",
        "required": ["type"],
        "properties": common,
        "allOf": all_of
    })
}

/// A sink (`with_from`) or the dead-letter sink (no `from`, no `parallelism`).
fn sink_def(variants: &[(String, Value)], defs: &mut Map<String, Value>, with_from: bool) -> Value {
    let mut common = Map::new();
    let mut required = vec!["type"];
    if with_from {
        common.insert(
            "from".into(),
            json!({ "type": "string", "minLength": 1,
            "description": "The source or step to write: a name or `name.side_output`." }),
        );
        required.insert(0, "from");
    }
    common.insert(
        "type".into(),
        with_text(def_ref(defs::SINK_TYPE), "Type", "The sink connector."),
    );
    if with_from {
        common.insert(
            "parallelism".into(),
            with_text(
                def_ref(defs::PARALLELISM),
                "Parallelism",
                "This node's parallelism.",
            ),
        );
    }
    let prefix = if with_from { "sink" } else { "dead_letter" };
    let all_of = discriminated_branches(prefix, variants, &common, &required, defs);
    let (title, description) = if with_from {
        (
            "Sink",
            "A sink: `from` names its input, `type` picks the connector.",
        )
    } else {
        (
            "Dead-letter sink",
            "Where records that cannot be decoded go (default: a JSONL file under .weir/<job>/).",
        )
    };
    json!({
        "title": title,
        "description": description,
        "type": "object",
        "required": required,
        "properties": common,
        "allOf": all_of
    })
}

fn format_def(variants: &[(String, Value)], defs: &mut Map<String, Value>) -> Value {
    let mut common = Map::new();
    common.insert(
        "type".into(),
        with_text(def_ref(defs::FORMAT_NAME), "Type", "The record format."),
    );
    let all_of = discriminated_branches("format", variants, &common, &["type"], defs);
    json!({
        "title": "Format",
        "description": "A format name, or { type: NAME, ...options } for a format with options.",
        "type": ["string", "object"],
        "if": { "type": "string" },
        "then": def_ref(defs::FORMAT_NAME),
        "else": {
            "required": ["type"],
            "properties": common,
            "allOf": all_of
        }
    })
}

fn step_def(registry: &Registry, defs: &mut Map<String, Value>) -> Value {
    let mut properties = Map::new();
    properties.insert("from".into(), def_ref(defs::FROM));
    properties.insert(
        "parallelism".into(),
        with_text(
            def_ref(defs::PARALLELISM),
            "Parallelism",
            "This node's parallelism.",
        ),
    );
    let mut kinds = Vec::new();
    for f in registry.steps() {
        let name = f.name();
        let schema = embed(f.options_schema(), &format!("step.{name}"), defs);
        properties.insert(name.to_string(), schema);
        kinds.push(json!({ "required": [name] }));
    }
    let mut step = json!({
        "title": "Step",
        "description": "A step: `from` names its input(s); exactly one kind key says what it does.",
        "type": "object",
        "additionalProperties": false,
        "required": ["from"],
        "properties": properties
    });
    if !kinds.is_empty() {
        if let Value::Object(m) = &mut step {
            m.insert("oneOf".into(), Value::Array(kinds));
        }
    }
    step
}

/// One `if type == NAME then {common + NAME's keys, nothing else}` branch per variant.
/// The common keys are `true` in the branch (validated once, by the base schema).
fn discriminated_branches(
    prefix: &str,
    variants: &[(String, Value)],
    common: &Map<String, Value>,
    common_required: &[&str],
    defs: &mut Map<String, Value>,
) -> Vec<Value> {
    let mut branches = Vec::new();
    for (name, options) in variants {
        let options = embed(options.clone(), &format!("{prefix}.{name}"), defs);
        let mut then = match options {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        let mut properties: Map<String, Value> = common
            .keys()
            .map(|k| (k.clone(), Value::Bool(true)))
            .collect();
        if let Some(Value::Object(own)) = then.remove("properties") {
            for (k, v) in own {
                properties.entry(k).or_insert(v);
            }
        }
        let mut required: Vec<Value> = common_required.iter().map(|r| Value::from(*r)).collect();
        if let Some(Value::Array(own)) = then.remove("required") {
            for r in own {
                if !required.contains(&r) {
                    required.push(r);
                }
            }
        }
        then.insert("properties".into(), Value::Object(properties));
        then.insert("required".into(), Value::Array(required));
        if !matches!(then.get("additionalProperties"), Some(v) if v != &Value::Bool(false)) {
            then.insert("additionalProperties".into(), Value::Bool(false));
        }
        branches.push(json!({
            "if": {
                "type": "object",
                "properties": { "type": { "const": name } },
                "required": ["type"]
            },
            "then": then
        }));
    }
    branches
}

/// Prepares a factory's schema for embedding in the job schema: its `$defs` (or
/// `definitions`) move to the root's `$defs` under `prefix.NAME`, its local `$ref`s are
/// rewritten to match, and `$schema`/`$id` are dropped.
fn embed(schema: Value, prefix: &str, defs: &mut Map<String, Value>) -> Value {
    let Value::Object(mut map) = schema else {
        return schema;
    };
    map.remove("$schema");
    map.remove("$id");
    let mut local = Vec::new();
    for key in ["$defs", "definitions"] {
        if let Some(Value::Object(d)) = map.remove(key) {
            local.extend(d);
        }
    }
    let mut self_ref = false;
    let mut root = Value::Object(map);
    rewrite_refs(&mut root, prefix, &mut self_ref);
    for (name, mut def) in local {
        rewrite_refs(&mut def, prefix, &mut self_ref);
        defs.insert(format!("{prefix}.{name}"), def);
    }
    if self_ref {
        defs.insert(prefix.to_string(), root.clone());
    }
    root
}

fn rewrite_refs(value: &mut Value, prefix: &str, self_ref: &mut bool) {
    match value {
        Value::Object(m) => {
            for (k, v) in m.iter_mut() {
                if k == "$ref" {
                    if let Value::String(r) = v {
                        if let Some(new) = rewrite_ref(r, prefix, self_ref) {
                            *r = new;
                        }
                    }
                } else {
                    rewrite_refs(v, prefix, self_ref);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|v| rewrite_refs(v, prefix, self_ref)),
        _ => {}
    }
}

fn rewrite_ref(r: &str, prefix: &str, self_ref: &mut bool) -> Option<String> {
    let target = format!("#/$defs/{}", escape(prefix));
    if r == "#" {
        *self_ref = true;
        return Some(target);
    }
    let rest = r
        .strip_prefix("#/$defs/")
        .or_else(|| r.strip_prefix("#/definitions/"))?;
    Some(format!("{target}.{rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defs_move_to_the_root_with_rewritten_refs() {
        let mut defs = Map::new();
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": { "agg": { "$ref": "#/$defs/Agg" } },
            "$defs": { "Agg": { "type": "string" } }
        });
        let embedded = embed(schema, "step.window", &mut defs);
        assert_eq!(
            embedded.pointer("/properties/agg/$ref"),
            Some(&json!("#/$defs/step.window.Agg"))
        );
        assert!(embedded.get("$schema").is_none());
        assert_eq!(
            defs.get("step.window.Agg"),
            Some(&json!({"type": "string"}))
        );
    }

    #[test]
    fn durations_pattern_accepts_humantime_forms() {
        let validator =
            jsonschema::draft202012::new(&json!({"type": "string", "pattern": DURATION_PATTERN}))
                .expect("valid schema");
        for ok in [
            "500ms",
            "10s",
            "1m",
            "1h 30m",
            "2.5s",
            " 1day ",
            "1h30m",
            "3 seconds",
        ] {
            assert!(validator.is_valid(&json!(ok)), "{ok}");
            assert!(crate::time::parse_duration(ok).is_ok(), "{ok}");
        }
        for bad in ["10", "ten seconds", "s", "1x", ""] {
            assert!(!validator.is_valid(&json!(bad)), "{bad}");
        }
    }
}
