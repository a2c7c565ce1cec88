//! Tests of the job spec against a small registry of dummy factories whose instances
//! are never run.

use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use serde_json::{json, Value};

use super::*;
use crate::graph::{NodeKind, DEAD_LETTER_SINK};
use crate::operator::{Collector, Operator, OperatorContext};
use crate::registry::{
    BuildContext, DecoderBuild, FieldError, FormatFactory, Partitioning, SinkBuild, SinkFactory,
    SourceBuild, SourceFactory, StepBuild, StepFactory,
};
use crate::sink::Sink;
use crate::source::{raw_schema, Decoded, Decoder, Source, SourcePoll};

struct NoSource(SchemaRef);

#[async_trait::async_trait]
impl Source for NoSource {
    fn schema(&self) -> SchemaRef {
        self.0.clone()
    }
    async fn poll_next(&mut self) -> crate::Result<SourcePoll> {
        Ok(SourcePoll::Finished)
    }
}

struct NoDecoder(SchemaRef);

impl Decoder for NoDecoder {
    fn schema(&self) -> SchemaRef {
        self.0.clone()
    }
    fn decode(&mut self, _raw: &RecordBatch, _source: &str) -> crate::Result<Decoded> {
        Ok(Decoded {
            batch: RecordBatch::new_empty(self.0.clone()),
            dead_letters: Vec::new(),
            source_rows: None,
        })
    }
}

struct NoSink;

#[async_trait::async_trait]
impl Sink for NoSink {
    async fn write_batch(&mut self, _batch: RecordBatch) -> crate::Result<()> {
        Ok(())
    }
}

struct PassThrough;

impl Operator for PassThrough {
    fn process_batch(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        _ctx: &mut OperatorContext,
        out: &mut Collector,
    ) -> crate::Result<()> {
        out.emit(batch);
        Ok(())
    }
}

/// `type: file`: a byte source with a required `path`.
struct FileSource;

impl SourceFactory for FileSource {
    fn name(&self) -> &'static str {
        "file"
    }
    fn options_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": { "path": { "type": "string", "description": "Files to read (a glob)." } },
            "required": ["path"]
        })
    }
    fn build(
        &self,
        ctx: &BuildContext,
        _name: &str,
        options: &Value,
        _schema: Option<SchemaRef>,
    ) -> Result<SourceBuild, FieldError> {
        let path = options
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| FieldError::at("/path", "missing path"))?;
        if path.contains("forbidden") {
            return Err(FieldError::at("/path", "cannot read this path"));
        }
        Ok(SourceBuild {
            schema: raw_schema(),
            needs_format: true,
            bounded: true,
            describe: format!("file {}", ctx.base_dir.join(path).display()),
            max_parallelism: None,
            create: Arc::new(|_| Ok(Box::new(NoSource(raw_schema())))),
        })
    }
}

/// `type: datagen`: a typed source; its options schema has its own `$defs`.
struct DatagenSource;

impl SourceFactory for DatagenSource {
    fn name(&self) -> &'static str {
        "datagen"
    }
    fn options_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "rows": { "type": "integer", "minimum": 0 },
                "rate": { "$ref": "#/$defs/Rate" }
            },
            "$defs": { "Rate": { "type": "string", "pattern": "^[0-9]+/s$" } }
        })
    }
    fn build(
        &self,
        _ctx: &BuildContext,
        _name: &str,
        _options: &Value,
        schema: Option<SchemaRef>,
    ) -> Result<SourceBuild, FieldError> {
        let schema = schema.ok_or_else(|| FieldError::at("/schema", "datagen needs a schema"))?;
        let s = schema.clone();
        Ok(SourceBuild {
            schema,
            needs_format: false,
            bounded: true,
            describe: "datagen".into(),
            max_parallelism: None,
            create: Arc::new(move |_| Ok(Box::new(NoSource(s.clone())))),
        })
    }
}

struct JsonFormat;

impl FormatFactory for JsonFormat {
    fn name(&self) -> &'static str {
        "json"
    }
    fn options_schema(&self) -> Value {
        json!({ "type": "object", "properties": { "strict": { "type": "boolean" } } })
    }
    fn build(
        &self,
        _options: &Value,
        schema: Option<SchemaRef>,
    ) -> Result<DecoderBuild, FieldError> {
        let schema = schema.ok_or_else(|| FieldError::here("json needs a schema"))?;
        let s = schema.clone();
        Ok(DecoderBuild {
            schema,
            describe: "json".into(),
            create: Arc::new(move || Ok(Box::new(NoDecoder(s.clone())))),
        })
    }
}

struct CsvFormat;

impl FormatFactory for CsvFormat {
    fn name(&self) -> &'static str {
        "csv"
    }
    fn options_schema(&self) -> Value {
        json!({ "type": "object", "properties": { "delimiter": { "type": "string", "maxLength": 1 } } })
    }
    fn build(
        &self,
        options: &Value,
        schema: Option<SchemaRef>,
    ) -> Result<DecoderBuild, FieldError> {
        let schema = schema.ok_or_else(|| FieldError::here("csv needs a schema"))?;
        if options.get("delimiter").and_then(Value::as_str) == Some("\"") {
            return Err(FieldError::at(
                "/delimiter",
                "a quote cannot be the delimiter",
            ));
        }
        let s = schema.clone();
        Ok(DecoderBuild {
            schema,
            describe: "csv".into(),
            create: Arc::new(move || Ok(Box::new(NoDecoder(s.clone())))),
        })
    }
}

fn step_build(schema: SchemaRef, describe: String) -> StepBuild {
    StepBuild {
        schema,
        side_outputs: Vec::new(),
        input_partitioning: None,
        partitioning_per_input: Vec::new(),
        keyed_by: None,
        describe,
        create: Arc::new(|_, _| Ok(Box::new(PassThrough))),
    }
}

/// `filter: EXPR`; rejects `==` the way an expression compiler would.
struct FilterStep;

impl StepFactory for FilterStep {
    fn name(&self) -> &'static str {
        "filter"
    }
    fn options_schema(&self) -> Value {
        json!({ "type": "string", "minLength": 1, "description": "A SQL condition." })
    }
    fn build(
        &self,
        _ctx: &BuildContext,
        _name: &str,
        value: &Value,
        inputs: &[SchemaRef],
    ) -> Result<StepBuild, FieldError> {
        let expr = value.as_str().unwrap_or_default();
        if expr.contains("==") {
            return Err(FieldError::here("use `=` for equality, not `==`"));
        }
        let schema = inputs
            .first()
            .cloned()
            .ok_or_else(|| FieldError::here("no input"))?;
        Ok(step_build(schema, format!("filter {expr}")))
    }
}

/// `window: {size, key}` with a `late` side output.
struct WindowStep;

impl StepFactory for WindowStep {
    fn name(&self) -> &'static str {
        "window"
    }
    fn options_schema(&self) -> Value {
        json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["size"],
            "properties": {
                "size": { "type": "string" },
                "key": { "type": "array", "items": { "type": "string" } }
            }
        })
    }
    fn build(
        &self,
        _ctx: &BuildContext,
        _name: &str,
        value: &Value,
        inputs: &[SchemaRef],
    ) -> Result<StepBuild, FieldError> {
        let schema = inputs
            .first()
            .cloned()
            .ok_or_else(|| FieldError::here("no input"))?;
        let keys: Vec<String> = value
            .get("key")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|k| k.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        for (i, k) in keys.iter().enumerate() {
            if schema.field_with_name(k).is_err() {
                return Err(FieldError::at(
                    format!("/key/{i}"),
                    format!("no field `{k}`"),
                ));
            }
        }
        let mut b = step_build(schema.clone(), "window".into());
        b.side_outputs = vec![("late".into(), schema)];
        b.input_partitioning = Some(Partitioning::Hash(keys));
        Ok(b)
    }
}

/// `union: {}` over two or more inputs.
struct UnionStep;

impl StepFactory for UnionStep {
    fn name(&self) -> &'static str {
        "union"
    }
    fn options_schema(&self) -> Value {
        json!({ "type": "object", "additionalProperties": false })
    }
    fn inputs(&self) -> (usize, usize) {
        (2, usize::MAX)
    }
    fn build(
        &self,
        _ctx: &BuildContext,
        _name: &str,
        _value: &Value,
        inputs: &[SchemaRef],
    ) -> Result<StepBuild, FieldError> {
        let schema = inputs
            .first()
            .cloned()
            .ok_or_else(|| FieldError::here("no input"))?;
        Ok(step_build(schema, "union".into()))
    }
}

struct FileSink;

impl SinkFactory for FileSink {
    fn name(&self) -> &'static str {
        "file"
    }
    fn options_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "path": { "type": "string" },
                "format": { "enum": ["jsonl", "csv"] }
            },
            "required": ["path"]
        })
    }
    fn build(
        &self,
        _ctx: &BuildContext,
        _name: &str,
        options: &Value,
        _input: SchemaRef,
    ) -> Result<SinkBuild, FieldError> {
        let path = options
            .get("path")
            .and_then(Value::as_str)
            .unwrap_or_default();
        Ok(SinkBuild::new(
            format!("file {path}"),
            Arc::new(|_| Ok(Box::new(NoSink))),
        ))
    }
}

fn registry() -> Arc<Registry> {
    let mut r = Registry::new();
    r.add_source(FileSource)
        .add_source(DatagenSource)
        .add_format(JsonFormat)
        .add_format(CsvFormat)
        .add_step(FilterStep)
        .add_step(WindowStep)
        .add_step(UnionStep)
        .add_sink(FileSink);
    Arc::new(r)
}

fn load(text: &str) -> Result<CompiledJob, SpecErrors> {
    compile_job_str(
        text,
        "job.yaml",
        Path::new("/jobs"),
        registry(),
        &JobOverrides::default(),
    )
}

fn load_ok(text: &str) -> CompiledJob {
    match load(text) {
        Ok(job) => job,
        Err(e) => panic!("expected the job to load, got:\n{e}"),
    }
}

fn load_err(text: &str) -> Vec<SpecError> {
    match load(text) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.0,
    }
}

/// (line, column) of `needle` on 1-based `line` of `text`.
fn pos(text: &str, line: usize, needle: &str) -> (usize, usize) {
    let l = text.lines().nth(line - 1).unwrap_or_default();
    match l.find(needle) {
        Some(i) => (line, l[..i].chars().count() + 1),
        None => panic!("`{needle}` not on line {line}: {l}"),
    }
}

fn at(e: &SpecError) -> (usize, usize) {
    (e.line, e.column)
}

const VALID: &str = r#"name: log-filter
description: keeps errors
parallelism: 2
batch_size: 500
linger: 50ms
checkpoint: { interval: 10s, storage: "file://./ckpt", retain: 2 }
sources:
  logs:
    type: file
    path: data/*.jsonl
    format: json
    schema: { ts: timestamp, service: string, level: string, latency_ms: "int?" }
    event_time: { field: ts, max_out_of_orderness: 5s, idle_timeout: 30s }
  gen:
    type: datagen
    rows: 10
    rate: 5/s
    schema: { ts: timestamp, service: string, level: string, latency_ms: "int?" }
    parallelism: 1
steps:
  both: { from: [errors, gen], union: {} }
  errors: { from: logs, filter: "level = 'ERROR'" }
  windowed:
    from: both
    window: { size: 1m, key: [service] }
sinks:
  out: { from: windowed, type: file, path: out/errors.jsonl, format: jsonl }
  late: { from: windowed.late, type: file, path: out/late.jsonl }
dead_letter: { type: file, path: out/bad.jsonl }
"#;

#[test]
fn valid_job_builds_nodes_and_edges_in_order() {
    let job = load_ok(VALID);
    let g = &job.graph;
    assert_eq!(g.job, "log-filter");
    let names: Vec<&str> = g.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "logs",
            "gen",
            "errors",
            "both",
            "windowed",
            "out",
            "late",
            DEAD_LETTER_SINK
        ]
    );
    assert_eq!(g.settings.parallelism, 2);
    assert_eq!(g.settings.batch_size, 500);
    assert_eq!(g.settings.linger, Duration::from_millis(50));

    let logs = g.node_by_name("logs").expect("logs");
    assert_eq!(logs.parallelism, 2);
    let fields: Vec<&str> = logs
        .schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    assert_eq!(fields, ["ts", "service", "level", "latency_ms"]);
    assert_eq!(
        logs.schema.field(0).data_type(),
        &DataType::Timestamp(TimeUnit::Millisecond, None)
    );
    assert!(logs.schema.field(3).is_nullable());
    match &logs.kind {
        NodeKind::Source {
            decoder,
            event_time,
            ..
        } => {
            assert!(decoder.is_some());
            let et = event_time.as_ref().expect("event time");
            assert_eq!(et.field, "ts");
            assert_eq!(et.max_out_of_orderness, Duration::from_secs(5));
            assert_eq!(et.idle_timeout, Some(Duration::from_secs(30)));
        }
        _ => panic!("logs is not a source"),
    }
    assert!(
        logs.describe().contains("/jobs/data/*.jsonl"),
        "{}",
        logs.describe()
    );
    assert_eq!(g.node_by_name("gen").map(|n| n.parallelism), Some(1));

    let id = |name: &str| g.node_by_name(name).map(|n| n.id).expect("node");
    let both_inputs: Vec<(usize, usize)> = g
        .inputs_of(id("both"))
        .iter()
        .map(|e| (e.from.node, e.input))
        .collect();
    assert_eq!(both_inputs, [(id("errors"), 0), (id("gen"), 1)]);
    let late = g.inputs_of(id("late"));
    assert_eq!(late.len(), 1);
    assert_eq!(late[0].from.node, id("windowed"));
    assert_eq!(late[0].from.side.as_deref(), Some("late"));
    assert_eq!(
        g.inputs_of(id("windowed"))[0].partitioning,
        Partitioning::Hash(vec!["service".into()])
    );
    let dl = g.inputs_of(id(DEAD_LETTER_SINK));
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0].from.node, id("logs"));
    assert_eq!(g.edges.len(), 7);

    let c = job.checkpoint.expect("checkpoint settings");
    assert_eq!(c.interval, Duration::from_secs(10));
    assert_eq!(c.retain, 2);
    // Relative storage resolves against the job file's directory.
    assert!(c.storage.url.starts_with("file:///"), "{}", c.storage.url);
    assert!(c.storage.url.ends_with("/ckpt"), "{}", c.storage.url);
    assert_eq!(job.state, crate::checkpoint::StateBackendConfig::Memory);
    assert_eq!(job.description.as_deref(), Some("keeps errors"));
}

#[test]
fn parallelism_override_replaces_the_files() {
    let overrides = JobOverrides {
        parallelism: Some(4),
    };
    let g = load_job_str(VALID, "job.yaml", Path::new("."), registry(), &overrides)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(g.settings.parallelism, 4);
    assert_eq!(g.node_by_name("errors").map(|n| n.parallelism), Some(4));
    assert_eq!(g.node_by_name("gen").map(|n| n.parallelism), Some(1));
}

const BROKEN: &str = r#"name: broken
linger: soon
sources:
  logs:
    type: file
    path: data/*.jsonl
    format: json
    schema: { ts: timestamp, level: strnig }
    event_time: { field: ts, max_out_of_orderness: 5 }
    typ: extra
  kafka_in:
    type: kafak
    topic: x
steps:
  errors: { from: logz, filter: "level = 'ERROR'" }
  slim: { from: errors, filter: "x", parallelism: two }
sinks:
  out: { from: slim, type: file, path: out.jsonl }
"#;

#[test]
fn every_mistake_is_reported_with_its_position() {
    let errors = load_err(BROKEN);
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let all = shown.join("\n");
    assert_eq!(errors.len(), 7, "{all}");
    let t = BROKEN;

    assert_eq!(at(&errors[0]), pos(t, 2, "soon"), "{all}");
    assert_eq!(errors[0].field, "linger");
    assert_eq!(
        errors[0].message,
        "expected a duration like 500ms, 10s, 1m, found the string `soon`"
    );

    assert_eq!(at(&errors[1]), pos(t, 8, "strnig"), "{all}");
    assert_eq!(errors[1].field, "sources.logs.schema.level");
    assert!(
        errors[1]
            .message
            .starts_with("unknown type `strnig` for field `level` (known: string, int,"),
        "{all}"
    );

    assert_eq!(at(&errors[2]), pos(t, 9, "5 }"), "{all}");
    assert_eq!(
        errors[2].field,
        "sources.logs.event_time.max_out_of_orderness"
    );
    assert!(
        errors[2]
            .message
            .starts_with("expected a duration like 500ms"),
        "{all}"
    );

    assert_eq!(at(&errors[3]), pos(t, 10, "typ"), "{all}");
    assert_eq!(errors[3].field, "sources.logs.typ");
    assert_eq!(
        errors[3].message,
        "unknown key `typ`, did you mean `type`? (expected one of: type, format, schema, event_time, parallelism, path)"
    );

    assert_eq!(at(&errors[4]), pos(t, 12, "kafak"), "{all}");
    assert_eq!(errors[4].field, "sources.kafka_in.type");
    assert_eq!(
        errors[4].message,
        "unknown source type `kafak` (known: datagen, file)"
    );

    assert_eq!(at(&errors[5]), pos(t, 15, "logz"), "{all}");
    assert_eq!(errors[5].field, "steps.errors.from");
    assert_eq!(
        errors[5].message,
        "unknown source or step `logz`, did you mean `logs`? (known: logs, kafka_in, errors, slim)"
    );

    assert_eq!(at(&errors[6]), pos(t, 16, "two"), "{all}");
    assert_eq!(errors[6].field, "steps.slim.parallelism");
    assert_eq!(
        errors[6].message,
        "expected an integer, found the string `two`"
    );

    assert_eq!(
        shown[0],
        format!(
            "job.yaml:2:{}: linger: {}",
            pos(t, 2, "soon").1,
            errors[0].message
        )
    );
    let display = SpecErrors(errors).to_string();
    assert!(display.ends_with("\n7 errors"), "{display}");
}

#[test]
fn yaml_syntax_errors_name_file_line_and_column() {
    let errors = load_err("name: x\nsources: { a: 1\nsinks: {}\n");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].file, "job.yaml");
    assert!(errors[0].line >= 2, "{}", errors[0]);
    assert!(
        errors[0].message.starts_with("YAML syntax error"),
        "{}",
        errors[0]
    );

    let errors = load_err("name: x\nsinks: a: b\n");
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0]
            .to_string()
            .starts_with("job.yaml:2:9: YAML syntax error: mapping values are not allowed"),
        "{}",
        errors[0]
    );
}

#[test]
fn duplicate_keys_are_errors() {
    let text = "name: x\nsources:\n  logs: { type: file, path: a, format: json, schema: { a: int } }\n  logs: { type: file, path: b }\nsinks:\n  out: { from: logs, type: file, path: o }\nname: y\n";
    let errors = load_err(text);
    let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 2, "{all:?}");
    assert_eq!(at(&errors[0]), (4, 3));
    assert_eq!(errors[0].field, "sources.logs");
    assert_eq!(
        errors[0].message,
        "duplicate key `logs` (first defined at line 3, column 3)"
    );
    assert_eq!(at(&errors[1]), (7, 1));
    assert!(errors[1].message.starts_with("duplicate key `name`"));
}

#[test]
fn json_schema_is_valid_and_accepts_the_valid_job() {
    let schema = job_json_schema(&registry());
    if let Err(e) = jsonschema::meta::validate(&schema) {
        panic!("the job schema is not a valid JSON Schema: {e}");
    }
    let validator = jsonschema::draft202012::new(&schema).unwrap_or_else(|e| panic!("{e}"));
    let doc = yaml::parse(VALID).unwrap_or_else(|e| panic!("{e:?}"));
    let errors: Vec<String> = validator
        .iter_errors(&doc.value)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    assert!(!validator.is_valid(&json!({"name": "x", "sources": {}, "sinks": {}, "nme": 1})));
    // Editors get help texts.
    assert!(schema.pointer("/properties/linger/description").is_some());
    assert!(schema.pointer("/$defs/source.datagen.Rate").is_some());
    // The schema keeps keys in insertion order (preserve_order).
    let keys: Vec<&String> = schema["properties"]
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    assert_eq!(keys.first().map(|k| k.as_str()), Some("name"));
}

#[test]
fn nested_and_connector_errors_are_placed() {
    let text = r#"name: x
sources:
  logs: { type: file, path: forbidden/a, format: { type: csv, delim: ";" }, schema: { a: int } }
  gen: { type: datagen, rate: 5/s, schema: { a: int } }
  gen2: { type: datagen, rate: fast, schema: { a: int } }
steps:
  w: { from: gen, window: { sise: 1m } }
  f: { from: gen, filter: "a == 1" }
  k: { from: gen, window: { size: 1m, key: [b] } }
sinks:
  out: { from: f, type: file, path: o, format: xml }
"#;
    let errors = load_err(text);
    let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let find = |field: &str| {
        errors
            .iter()
            .find(|e| e.field == field)
            .unwrap_or_else(|| panic!("no error for {field}: {all:#?}"))
    };
    let e = find("sources.logs.format.delim");
    assert_eq!(at(e), pos(text, 3, "delim"));
    assert_eq!(
        e.message,
        "unknown key `delim` (expected one of: type, delimiter)"
    );
    let e = find("sources.gen2.rate");
    assert_eq!(at(e), pos(text, 5, "fast"));
    let e = find("steps.w.window.sise");
    assert_eq!(at(e), pos(text, 7, "sise"));
    assert!(e.message.contains("did you mean `size`?"), "{}", e.message);
    let e = find("steps.w.window");
    assert_eq!(e.message, "missing required key `size`");
    assert_eq!(at(e), pos(text, 7, "window"));
    let e = find("steps.f.filter");
    assert_eq!(at(e), pos(text, 8, "\"a == 1\""));
    assert_eq!(e.message, "use `=` for equality, not `==`");
    let e = find("steps.k.window.key[0]");
    assert_eq!(at(e), pos(text, 9, "b]"));
    let e = find("sinks.out.format");
    assert_eq!(at(e), pos(text, 11, "xml"));
    assert_eq!(
        e.message,
        "expected one of: jsonl, csv; found the string `xml`"
    );
    // Factories only run on parts without schema errors: the forbidden path of `logs`
    // is not reported while its format is wrong.
    assert!(
        errors.iter().all(|e| e.field != "sources.logs.path"),
        "{all:#?}"
    );
    assert_eq!(errors.len(), 7, "{all:#?}");
}

#[test]
fn connector_errors_are_relative_to_their_node() {
    let text = "name: x\nsources:\n  logs: { type: file, path: forbidden/a, format: { type: csv, delimiter: '\"' }, schema: { a: int } }\nsinks:\n  out: { from: logs, type: file, path: o }\n";
    let errors = load_err(text);
    assert_eq!(errors.len(), 1, "{}", SpecErrors(errors.clone()));
    assert_eq!(errors[0].field, "sources.logs.path");
    assert_eq!(at(&errors[0]), pos(text, 3, "forbidden"));

    let text = "name: x\nsources:\n  logs: { type: file, path: a, format: { type: csv, delimiter: '\"' }, schema: { a: int } }\nsinks:\n  out: { from: logs, type: file, path: o }\n";
    let errors = load_err(text);
    assert_eq!(errors.len(), 1, "{}", SpecErrors(errors.clone()));
    assert_eq!(errors[0].field, "sources.logs.format.delimiter");
    assert_eq!(errors[0].message, "a quote cannot be the delimiter");
    assert_eq!(at(&errors[0]), pos(text, 3, "'\"'"));
}

#[test]
fn graph_mistakes_are_reported() {
    let text = r#"name: x
sources:
  gen: { type: datagen, schema: { ts: timestamp, a: int } }
  timed: { type: datagen, schema: { a: int }, event_time: { field: t } }
  src2: { type: datagen, schema: { a: int } }
steps:
  a: { from: b, filter: "a = 1" }
  b: { from: a, filter: "a = 1" }
  src2: { from: gen, filter: "a = 1" }
  c: { from: out, filter: "a = 1" }
  d: { from: src2 }
  e: { from: src2, filter: "a = 1", union: {} }
  u: { from: [gen], union: {} }
  s: { from: gen.late, filter: "a = 1" }
sinks:
  out: { from: gen, type: file, path: o }
"#;
    let errors = load_err(text);
    let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let find = |field: &str| {
        errors
            .iter()
            .find(|e| e.field == field)
            .unwrap_or_else(|| panic!("no error for {field}: {all:#?}"))
    };
    let e = find("sources.timed.event_time.field");
    assert!(
        e.message
            .contains("event time field `t` is not in the schema"),
        "{}",
        e.message
    );
    assert_eq!(
        find("steps.a.from").message,
        "steps form a cycle: a → b → a"
    );
    let e = find("steps.src2");
    assert_eq!(at(e), (9, 3));
    assert!(
        e.message.contains("already used by a source"),
        "{}",
        e.message
    );
    assert_eq!(
        find("steps.c.from").message,
        "`out` is a sink: only sources and steps can be read from"
    );
    assert!(find("steps.d")
        .message
        .starts_with("a step needs one kind key"));
    assert!(find("steps.e")
        .message
        .contains("found `filter` and `union`"));
    assert!(find("steps.u.from")
        .message
        .contains("takes at least 2 input(s), got 1"));
    assert!(find("steps.s.from")
        .message
        .contains("has no side output `late`"));
    assert_eq!(errors.len(), 8, "{all:#?}");
}

#[test]
fn job_level_mistakes() {
    let errors = load_err("sources: {}\nsteps: []\nbogus: 1\n");
    let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert!(
        all.contains(&"job.yaml:1:1: missing required key `name`".to_string()),
        "{all:#?}"
    );
    assert!(
        all.contains(&"job.yaml:1:1: missing required key `sinks`".to_string()),
        "{all:#?}"
    );
    assert!(
        all.contains(&"job.yaml:1:1: sources: define at least one source".to_string()),
        "{all:#?}"
    );
    assert!(
        all.contains(&"job.yaml:2:8: steps: expected a mapping, found a list".to_string()),
        "{all:#?}"
    );
    assert!(
        all.iter()
            .any(|e| e.starts_with("job.yaml:3:1: bogus: unknown key `bogus`")),
        "{all:#?}"
    );

    let errors = load_err("");
    assert_eq!(errors[0].message, "the job file is empty");

    let text = VALID.replace("parallelism: 2", "parallelism: 300");
    let errors = load_err(&text);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].field, "parallelism");
    assert!(errors[0].message.contains("exceeds max_parallelism 128"));
}

#[test]
fn files_load_relative_to_their_directory_and_missing_files_are_named() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("job.yaml");
    std::fs::write(&path, VALID).unwrap_or_else(|e| panic!("{e}"));
    let g = load_job_file(&path, registry(), &JobOverrides::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let logs = g
        .node_by_name("logs")
        .map(|n| n.describe())
        .unwrap_or_default();
    assert!(
        logs.contains(&dir.path().join("data").display().to_string()),
        "{logs}"
    );

    let missing = dir.path().join("nope.yaml");
    let errors = match load_job_file(&missing, registry(), &JobOverrides::default()) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    };
    assert_eq!(errors.0.len(), 1);
    let shown = errors.to_string();
    assert!(
        shown.starts_with(&format!("{}: cannot read the job file", missing.display())),
        "{shown}"
    );
    assert!(shown.ends_with("1 error"), "{shown}");
}

#[test]
fn did_you_mean_finds_close_names() {
    assert_eq!(did_you_mean("typ", ["type", "path"]), Some("type"));
    assert_eq!(did_you_mean("kafak", ["datagen", "file"]), None);
    assert_eq!(did_you_mean("fromm", ["from", "filter"]), Some("from"));
}
