//! `weir bench`: whole-job benchmark workloads and how one run of them is measured.
//!
//! A workload is a YAML job (`benches/workloads/*.yaml`, compiled into the binary) over
//! generated sources (`datagen`, `nexmark`) with `blackhole` sinks. A run picks an
//! input mode, a parallelism and optionally checkpoints:
//!
//! - `gen`: the generators feed the job directly (deterministic: same seed, same rows);
//! - `jsonl`: each generated source is first written once to a JSON-lines file
//!   (cached in the data directory), and the run reads that file with `format: json`,
//!   so JSON decoding is part of the measurement;
//! - `kafka` (with the `kafka` feature): each generated source is first produced once
//!   to a topic of 4 partitions (cached: `weir-bench-<workload>-<source>-<hash>`), and
//!   the run reads it with a `kafka` source (`end: latest`, `format: json`), so the
//!   broker's fetch path and JSON decoding are part of the measurement.
//!
//! A run's sinks are `blackhole` unless `--kafka-sink` replaces them with a `kafka` sink
//! to a topic of its own (deleted after the run), at least once or exactly once.
//!
//! The CLI runs every measurement in a child process (`weir bench-child`), so peak RSS
//! (`VmHWM`) and CPU time (`utime + stime`, from `/proc/self`) belong to that run only.
//! Sources emit latency markers every 10 ms; sinks record their ingestion-to-sink
//! latency (see [`weir_engine::message::LatencyMarker`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use weir_engine::runtime::{Restore, RunOptions};
use weir_engine::spec::JobOverrides;

use crate::{default_registry, WeirError};

/// One benchmark workload.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    /// Its name on the command line.
    pub name: &'static str,
    /// One line saying what it measures.
    pub about: &'static str,
    /// The job, with generated sources and `blackhole` sinks.
    pub yaml: &'static str,
    /// Apache Flink 2.3's figure for the same kind of job (events/s, parallelism 1,
    /// the benchmark issue's reference), when there is one.
    pub flink_events_per_s: Option<f64>,
}

macro_rules! workload {
    ($name:literal, $file:literal, $about:literal, $flink:expr) => {
        Workload {
            name: $name,
            about: $about,
            yaml: include_str!(concat!("../benches/workloads/", $file)),
            flink_events_per_s: $flink,
        }
    };
}

/// Every workload, in the order `weir bench` runs them.
pub const WORKLOADS: &[Workload] = &[
    workload!("w1", "w1.yaml", "JSON logs: parse + filter", Some(2.6e5)),
    workload!(
        "w2-10k",
        "w2_10k.yaml",
        "10 s tumbling count, 10k keys",
        Some(8.0e5)
    ),
    workload!("w2-1m", "w2_1m.yaml", "10 s tumbling count, 1M keys", None),
    workload!(
        "w3",
        "w3.yaml",
        "30 min session windows, 100k keys",
        Some(5.0e4)
    ),
    workload!("w4", "w4.yaml", "±5 s interval join, 10k keys", Some(6.0e4)),
    workload!("q0", "q0.yaml", "Nexmark q0: pass-through of bids", None),
    workload!("q1", "q1.yaml", "Nexmark q1: bid price in euros", None),
    workload!("q2", "q2.yaml", "Nexmark q2: bids of some auctions", None),
    workload!(
        "q5",
        "q5.yaml",
        "Nexmark q5: hot items, sliding window",
        None
    ),
    workload!(
        "q7",
        "q7.yaml",
        "Nexmark q7: highest bid, tumbling window",
        None
    ),
    workload!(
        "q8",
        "q8.yaml",
        "Nexmark q8: new sellers, window join",
        None
    ),
    workload!(
        "ex-log-filter",
        "ex_log_filter.yaml",
        "example log_filter over generated logs",
        None
    ),
    workload!(
        "ex-error-spike",
        "ex_error_spike.yaml",
        "example error_spike over generated logs",
        None
    ),
    workload!(
        "ex-sessionization",
        "ex_sessionization.yaml",
        "example sessionization over generated clicks",
        None
    ),
    workload!(
        "ex-ad-attribution",
        "ex_ad_attribution.yaml",
        "example ad_attribution over generated events",
        None
    ),
];

/// Looks a workload up by name.
pub fn workload(name: &str) -> Option<&'static Workload> {
    WORKLOADS.iter().find(|w| w.name == name)
}

/// Where a run's events come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Input {
    /// The generators feed the job.
    Gen,
    /// The generators' rows, written once to JSON lines, are read and decoded.
    Jsonl,
    /// The generators' rows, produced once to a Kafka topic, are read and decoded.
    Kafka,
}

/// The state backend of a run's keyed steps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum StateChoice {
    /// `state: { backend: memory }` (the default).
    #[default]
    Memory,
    /// `state: { backend: rocksdb }`, in the data dir.
    Rocksdb,
}

impl StateChoice {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            StateChoice::Memory => "memory",
            StateChoice::Rocksdb => "rocksdb",
        }
    }
}

/// Where a run's output goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum SinkMode {
    /// The workload's `blackhole` sinks.
    #[default]
    Blackhole,
    /// A `kafka` sink, `delivery: at_least_once`.
    AtLeastOnce,
    /// A `kafka` sink, `delivery: exactly_once` (transactions committed with
    /// checkpoints: the run needs a checkpoint interval).
    ExactlyOnce,
}

impl SinkMode {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            SinkMode::Blackhole => "blackhole",
            SinkMode::AtLeastOnce => "at-least-once",
            SinkMode::ExactlyOnce => "exactly-once",
        }
    }
}

impl Input {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Input::Gen => "gen",
            Input::Jsonl => "jsonl",
            Input::Kafka => "kafka",
        }
    }
}

/// One measured run.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// The workload's name.
    pub workload: String,
    /// Input mode.
    pub input: Input,
    /// Parallelism of every node.
    pub parallelism: usize,
    /// Checkpoint interval (to a local folder); `None`: no checkpoints.
    pub checkpoint_every: Option<Duration>,
    /// Multiplies every generated source's row count.
    pub scale: f64,
    /// In `jsonl` mode, at most this many rows per source (keeps files small).
    pub jsonl_max_rows: u64,
    /// Cache of JSON-lines inputs and scratch space for checkpoints.
    pub data_dir: PathBuf,
    /// Kafka bootstrap servers (`kafka` input and Kafka sinks).
    pub brokers: String,
    /// Where the output goes.
    pub sink: SinkMode,
    /// The topic of a Kafka sink (`<topic>-<sink name>` when there are several).
    pub out_topic: String,
    /// The state backend.
    pub state: StateChoice,
    /// The RocksDB state's `memory_budget` (none: windows keep all open state in memory).
    pub memory_budget: Option<String>,
}

/// Checkpoint figures of a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckpointResult {
    /// Completed checkpoints (the final one included).
    pub completed: u64,
    /// Mean duration (trigger to metadata written), ms.
    pub mean_duration_ms: f64,
    /// Longest duration, ms.
    pub max_duration_ms: u64,
    /// Bytes uploaded by all checkpoints.
    pub uploaded_bytes: u64,
    /// Bytes of state the last checkpoint refers to.
    pub state_bytes: u64,
    /// Mean over checkpoints of the longest synchronous part of a task, ms.
    #[serde(default)]
    pub sync_mean_ms: f64,
    /// The longest synchronous part of a task, ms.
    #[serde(default)]
    pub sync_max_ms: f64,
}

/// What one run measured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunResult {
    /// Workload name.
    pub workload: String,
    /// Input mode.
    pub input: Input,
    /// Parallelism.
    pub parallelism: usize,
    /// Checkpoint interval, ms (`None`: checkpoints off).
    pub checkpoint_interval_ms: Option<u64>,
    /// Rows read by the sources.
    pub events: u64,
    /// Rows that reached the sinks.
    pub output_rows: u64,
    /// Wall-clock time of the job, s.
    pub elapsed_s: f64,
    /// `events / elapsed_s`.
    pub events_per_s: f64,
    /// CPU time of the process (user + system), s.
    pub cpu_s: f64,
    /// `events / cpu_s`: events per second of one fully used core.
    pub events_per_core_s: f64,
    /// Peak resident set size of the process, bytes.
    pub peak_rss_bytes: u64,
    /// Median ingestion-to-sink latency, ms.
    pub latency_p50_ms: Option<f64>,
    /// 99th percentile of it, ms.
    pub latency_p99_ms: Option<f64>,
    /// Latency markers that reached a sink.
    pub latency_samples: u64,
    /// Checkpoint figures, when checkpoints were on.
    pub checkpoints: Option<CheckpointResult>,
    /// Where the output went.
    #[serde(default)]
    pub sink: SinkMode,
    /// The state backend.
    #[serde(default)]
    pub state: StateChoice,
}

fn err(msg: impl Into<String>) -> WeirError {
    WeirError::Pipeline(msg.into())
}

/// Source types whose rows can be written to JSON lines and read back.
const GENERATORS: &[&str] = &["datagen", "nexmark"];

/// The job text of `spec` (JSON, which is YAML) and the directory relative paths
/// resolve against. In `jsonl` mode, the inputs must have been prepared.
pub fn job_text(spec: &RunSpec) -> Result<String, WeirError> {
    let w = workload(&spec.workload).ok_or_else(|| {
        err(format!(
            "no workload `{}` (see `weir bench --list`)",
            spec.workload
        ))
    })?;
    let mut job = weir_engine::spec::parse_yaml(w.yaml, &format!("{}.yaml", w.name))?;
    let root = job
        .as_object_mut()
        .ok_or_else(|| err(format!("workload `{}` is not a mapping", w.name)))?;
    root.insert("parallelism".into(), json!(spec.parallelism));
    let data_dir = spec.data_dir.clone();
    if let Some(Value::Object(sources)) = root.get_mut("sources") {
        for (name, source) in sources.iter_mut() {
            scale_rows(source, spec.scale);
            if spec.input == Input::Gen || !is_generator(source) {
                continue;
            }
            // The generator's rows, read back as JSON from where they were written.
            let mut read = match spec.input {
                Input::Kafka => json!({
                    "type": "kafka", "brokers": spec.brokers,
                    "topic": kafka_topic(w.name, name, source), "end": "latest",
                }),
                _ => {
                    cap_rows(source, spec.jsonl_max_rows);
                    let file = jsonl_path(&data_dir, w.name, name, source);
                    json!({ "type": "file", "path": file.display().to_string() })
                }
            };
            if let Some(o) = read.as_object_mut() {
                o.insert("format".into(), json!("json"));
                o.insert("schema".into(), source_schema(w, name, source)?);
                if let Some(et) = source.get("event_time") {
                    o.insert("event_time".into(), et.clone());
                }
            }
            *source = read;
        }
    }
    if spec.sink != SinkMode::Blackhole {
        if let Some(Value::Object(sinks)) = root.get_mut("sinks") {
            let several = sinks.len() > 1;
            for (name, sink) in sinks.iter_mut() {
                if sink.get("type").and_then(Value::as_str) != Some("blackhole") {
                    continue;
                }
                let from = sink.get("from").cloned().unwrap_or(Value::Null);
                let topic = if several {
                    format!("{}-{name}", spec.out_topic)
                } else {
                    spec.out_topic.clone()
                };
                let delivery = match spec.sink {
                    SinkMode::ExactlyOnce => "exactly_once",
                    _ => "at_least_once",
                };
                *sink = json!({
                    "from": from,
                    "type": "kafka",
                    "brokers": spec.brokers,
                    "topic": topic,
                    "delivery": delivery,
                    "create_topic": { "partitions": KAFKA_PARTITIONS },
                });
            }
        }
    }
    if spec.state == StateChoice::Rocksdb {
        let mut state = json!({
            "backend": "rocksdb",
            "dir": spec.data_dir.join("state").display().to_string(),
        });
        if let (Some(b), Some(o)) = (&spec.memory_budget, state.as_object_mut()) {
            o.insert("memory_budget".into(), json!(b));
        }
        root.insert("state".into(), state);
    }
    if let Some(interval) = spec.checkpoint_every {
        let dir = spec.data_dir.join("checkpoints");
        root.insert(
            "checkpoint".into(),
            json!({
                "interval": format!("{}ms", interval.as_millis().max(1)),
                "storage": format!("file://{}", dir.display()),
                "retain": 1,
            }),
        );
    }
    serde_json::to_string_pretty(&job).map_err(|e| err(format!("workload `{}`: {e}", w.name)))
}

/// Partitions of the topics `weir bench` creates.
pub const KAFKA_PARTITIONS: i32 = 4;

/// The cached topic of a generated source: named after everything that decides its
/// rows.
pub fn kafka_topic(workload: &str, source: &str, spec: &Value) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    spec.to_string().hash(&mut h);
    format!("weir-bench-{workload}-{source}-{:016x}", h.finish())
}

/// The topics a run's Kafka sinks write (to delete after it).
pub fn out_topics(spec: &RunSpec) -> Vec<String> {
    if spec.sink == SinkMode::Blackhole {
        return Vec::new();
    }
    let Some(w) = workload(&spec.workload) else {
        return Vec::new();
    };
    let Ok(job) = weir_engine::spec::parse_yaml(w.yaml, &format!("{}.yaml", w.name)) else {
        return Vec::new();
    };
    let Some(Value::Object(sinks)) = job.get("sinks") else {
        return Vec::new();
    };
    if sinks.len() > 1 {
        sinks
            .keys()
            .map(|n| format!("{}-{n}", spec.out_topic))
            .collect()
    } else {
        vec![spec.out_topic.clone()]
    }
}

fn is_generator(source: &Value) -> bool {
    source
        .get("type")
        .and_then(Value::as_str)
        .is_some_and(|t| GENERATORS.contains(&t))
}

/// The option holding a generator's row count.
fn rows_key(source: &Value) -> &'static str {
    match source.get("type").and_then(Value::as_str) {
        Some("nexmark") => "events",
        _ => "rows",
    }
}

fn scale_rows(source: &mut Value, scale: f64) {
    let key = rows_key(source);
    if let Some(n) = source.get(key).and_then(Value::as_u64) {
        let scaled = ((n as f64) * scale).round().max(1.0) as u64;
        source[key] = json!(scaled);
    }
}

fn cap_rows(source: &mut Value, max: u64) {
    let key = rows_key(source);
    if let Some(n) = source.get(key).and_then(Value::as_u64) {
        source[key] = json!(n.min(max));
    }
}

/// The cached JSON-lines file of a generated source: named after everything that
/// decides its rows.
fn jsonl_path(data_dir: &Path, workload: &str, source: &str, spec: &Value) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    spec.to_string().hash(&mut h);
    data_dir.join(format!("{workload}-{source}-{:016x}.jsonl", h.finish()))
}

/// The `schema:` of a file source reading what `source` generates.
fn source_schema(w: &Workload, name: &str, source: &Value) -> Result<Value, WeirError> {
    if let Some(s) = source.get("schema") {
        return Ok(s.clone());
    }
    // Generators with a fixed schema (nexmark): compile a one-source job to learn it.
    let job = json!({
        "name": "schema-probe",
        "sources": { name: source },
        "sinks": { "out": { "from": name, "type": "blackhole" } },
    });
    let graph = weir_engine::spec::load_job_str(
        &job.to_string(),
        &format!("{}.yaml", w.name),
        Path::new("."),
        Arc::new(default_registry()),
        &JobOverrides::default(),
    )?;
    let node = graph
        .nodes
        .iter()
        .find(|n| n.name == name)
        .ok_or_else(|| err(format!("workload `{}`: no source `{name}`", w.name)))?;
    let mut fields = Map::new();
    for f in node.schema.fields() {
        use arrow::datatypes::DataType as D;
        let t = match f.data_type() {
            D::Utf8 | D::LargeUtf8 | D::Utf8View => "string",
            D::Int8 | D::Int16 | D::Int32 | D::Int64 | D::UInt8 | D::UInt16 | D::UInt32 => "int",
            D::Float32 | D::Float64 => "float",
            D::Boolean => "bool",
            D::Timestamp(..) => "timestamp",
            D::Date32 | D::Date64 => "date",
            other => {
                return Err(err(format!(
                    "workload `{}`: source `{name}` column `{}` has type {other}, which JSON input cannot declare",
                    w.name,
                    f.name()
                )))
            }
        };
        let t = if f.is_nullable() && !matches!(t, "timestamp") {
            format!("{t}?")
        } else {
            t.to_string()
        };
        fields.insert(f.name().clone(), json!(t));
    }
    Ok(Value::Object(fields))
}

/// Generated sources of a workload: (name, options).
type Sources = Vec<(String, Value)>;

/// The workload of `spec` and its generated sources (name, options with the row count
/// scaled), in job order; creates the data directory.
fn generated_sources(spec: &RunSpec) -> Result<(&'static Workload, Sources), WeirError> {
    let w =
        workload(&spec.workload).ok_or_else(|| err(format!("no workload `{}`", spec.workload)))?;
    let job = weir_engine::spec::parse_yaml(w.yaml, &format!("{}.yaml", w.name))?;
    std::fs::create_dir_all(&spec.data_dir)
        .map_err(|e| err(format!("cannot create {}: {e}", spec.data_dir.display())))?;
    let mut out = Vec::new();
    if let Some(Value::Object(sources)) = job.get("sources") {
        for (name, source) in sources {
            if is_generator(source) {
                let mut source = source.clone();
                scale_rows(&mut source, spec.scale);
                out.push((name.clone(), source));
            }
        }
    }
    Ok((w, out))
}

/// Writes the JSON-lines inputs of `spec` that are not cached yet, by running each
/// generated source into a file sink.
pub async fn prepare_inputs(spec: &RunSpec) -> Result<(), WeirError> {
    if spec.input == Input::Kafka {
        return prepare_kafka_inputs(spec).await;
    }
    if spec.input != Input::Jsonl {
        return Ok(());
    }
    let (w, sources) = generated_sources(spec)?;
    for (name, mut source) in sources {
        cap_rows(&mut source, spec.jsonl_max_rows);
        let file = jsonl_path(&spec.data_dir, w.name, &name, &source);
        if file.exists() {
            continue;
        }
        tracing::info!(workload = w.name, source = %name, file = %file.display(), "writing JSON-lines input");
        let sink = json!({ "type": "file", "path": file.display().to_string(), "format": "jsonl" });
        write_generated(spec, w, &name, &source, sink).await?;
        // Flushed now, so that its write-back does not slow down the measured runs.
        std::fs::File::open(&file)
            .and_then(|f| f.sync_all())
            .map_err(|e| err(format!("cannot flush {}: {e}", file.display())))?;
    }
    Ok(())
}

/// Runs generated `source` (without its event time: every row is written) into `sink`
/// (a sink's options without `from`), once, at parallelism 1.
async fn write_generated(
    spec: &RunSpec,
    w: &Workload,
    name: &str,
    source: &Value,
    mut sink: Value,
) -> Result<(), WeirError> {
    let mut plain = source.clone();
    if let Some(o) = plain.as_object_mut() {
        o.remove("event_time");
    }
    if let Some(o) = sink.as_object_mut() {
        o.insert("from".into(), json!(name));
    }
    let prep = json!({
        "name": format!("bench-prepare-{}-{name}", w.name),
        "parallelism": 1,
        "sources": { name: plain },
        "sinks": { "out": sink },
    });
    let graph = weir_engine::spec::load_job_str(
        &prep.to_string(),
        "bench-prepare.yaml",
        &spec.data_dir,
        Arc::new(default_registry()),
        &JobOverrides::default(),
    )?;
    crate::run(graph).await?;
    Ok(())
}

/// Produces the generated sources of `spec` to their topics, unless a topic already
/// holds exactly their rows.
#[cfg(feature = "kafka")]
async fn prepare_kafka_inputs(spec: &RunSpec) -> Result<(), WeirError> {
    use weir_connectors::kafka::bench as kb;
    let (w, sources) = generated_sources(spec)?;
    for (name, source) in sources {
        let rows = source.get(rows_key(&source)).and_then(Value::as_u64);
        let topic = kafka_topic(w.name, &name, &source);
        let brokers = spec.brokers.clone();
        let t = topic.clone();
        let held = tokio::task::spawn_blocking(move || kb::topic_messages(&brokers, &t))
            .await
            .map_err(|e| err(e.to_string()))?
            .map_err(err)?;
        if held.is_some() && held == rows {
            continue;
        }
        if held.is_some() {
            kb::delete_topics(&spec.brokers, &[topic.as_str()])
                .await
                .map_err(err)?;
        }
        tracing::info!(workload = w.name, source = %name, topic = %topic, "producing the input topic");
        let sink = json!({
            "type": "kafka", "brokers": spec.brokers, "topic": topic,
            "delivery": "at_least_once", "create_topic": { "partitions": KAFKA_PARTITIONS },
        });
        write_generated(spec, w, &name, &source, sink).await?;
    }
    Ok(())
}

#[cfg(not(feature = "kafka"))]
async fn prepare_kafka_inputs(_spec: &RunSpec) -> Result<(), WeirError> {
    Err(err(
        "`--input kafka` needs weir built with the `kafka` feature",
    ))
}

/// Deletes the topics a run's Kafka sinks wrote.
#[cfg(feature = "kafka")]
pub async fn delete_out_topics(spec: &RunSpec) -> Result<(), WeirError> {
    let topics = out_topics(spec);
    if topics.is_empty() {
        return Ok(());
    }
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    weir_connectors::kafka::bench::delete_topics(&spec.brokers, &refs)
        .await
        .map_err(err)
}

/// Deletes the topics a run's Kafka sinks wrote (none without the `kafka` feature).
#[cfg(not(feature = "kafka"))]
pub async fn delete_out_topics(_spec: &RunSpec) -> Result<(), WeirError> {
    Ok(())
}

/// The broker's own rates with a plain client (no engine, no decoding): reading every
/// input topic of `spec`, and writing as many of their messages to a new topic.
#[cfg(feature = "kafka")]
pub async fn kafka_baseline(spec: &RunSpec) -> Result<Vec<(String, String, f64, f64)>, WeirError> {
    use weir_connectors::kafka::bench as kb;
    let (w, sources) = generated_sources(spec)?;
    let mut out = Vec::new();
    for (name, source) in sources {
        let topic = kafka_topic(w.name, &name, &source);
        let (b, t) = (spec.brokers.clone(), topic.clone());
        let (consumed, samples) = tokio::task::spawn_blocking(move || {
            let consumed = kb::plain_consume(&b, &t)?;
            let samples = kb::sample_messages(&b, &t, 1000)?;
            Ok::<_, String>((consumed, samples))
        })
        .await
        .map_err(|e| err(e.to_string()))?
        .map_err(err)?;
        out.push((
            topic.clone(),
            "consume".to_string(),
            consumed.messages_per_s(),
            consumed.mb_per_s(),
        ));
        let produced = kb::plain_produce(
            &spec.brokers,
            &format!("{}-produce", spec.out_topic),
            KAFKA_PARTITIONS,
            &samples,
            consumed.messages,
        )
        .await
        .map_err(err)?;
        out.push((
            topic,
            "produce".to_string(),
            produced.messages_per_s(),
            produced.mb_per_s(),
        ));
    }
    Ok(out)
}

/// Runs `spec` in this process and measures it. The process should do nothing else:
/// CPU time and peak RSS are the process's.
pub async fn run_measured(spec: &RunSpec) -> Result<RunResult, WeirError> {
    let text = job_text(spec)?;
    let file_name = format!("{}.yaml", spec.workload);
    let job = weir_engine::spec::compile_job_str(
        &text,
        &file_name,
        &spec.data_dir,
        Arc::new(default_registry()),
        &JobOverrides::default(),
    )?;
    if spec.checkpoint_every.is_some() {
        // Every run starts from scratch.
        let dir = spec.data_dir.join("checkpoints").join(&job.graph.job);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| err(format!("cannot remove {}: {e}", dir.display())))?;
        }
    }
    let options = RunOptions {
        latency_markers: Some(Duration::from_millis(10)),
        ..crate::run_options(&job, Restore::Fresh)
    };
    let cpu_before = process_cpu_seconds().unwrap_or(0.0);
    let summary = weir_engine::runtime::run_with(job.graph, options).await?;
    let cpu_s = process_cpu_seconds().unwrap_or(0.0) - cpu_before;
    let events = summary.records_read();
    let output_rows = summary
        .nodes
        .iter()
        .filter(|n| n.kind == "sink" && n.name != weir_engine::graph::DEAD_LETTER_SINK)
        .map(|n| n.records_out)
        .sum();
    let elapsed_s = summary.elapsed.as_secs_f64().max(1e-9);
    let latency = summary.latency;
    Ok(RunResult {
        workload: spec.workload.clone(),
        input: spec.input,
        parallelism: spec.parallelism,
        checkpoint_interval_ms: spec.checkpoint_every.map(|d| d.as_millis() as u64),
        events,
        output_rows,
        elapsed_s,
        events_per_s: events as f64 / elapsed_s,
        cpu_s,
        events_per_core_s: if cpu_s > 0.0 {
            events as f64 / cpu_s
        } else {
            0.0
        },
        peak_rss_bytes: peak_rss_bytes().unwrap_or(0),
        latency_p50_ms: latency.map(|l| l.p50_us as f64 / 1000.0),
        latency_p99_ms: latency.map(|l| l.p99_us as f64 / 1000.0),
        latency_samples: latency.map_or(0, |l| l.samples),
        checkpoints: summary.checkpoints.map(|c| CheckpointResult {
            completed: c.completed,
            mean_duration_ms: if c.completed > 0 {
                c.total_duration_ms as f64 / c.completed as f64
            } else {
                0.0
            },
            max_duration_ms: c.max_duration_ms,
            uploaded_bytes: c.total_uploaded_bytes,
            state_bytes: c.last_state_bytes,
            sync_mean_ms: if c.completed > 0 {
                c.total_sync_us as f64 / 1000.0 / c.completed as f64
            } else {
                0.0
            },
            sync_max_ms: c.max_sync_us as f64 / 1000.0,
        }),
        sink: spec.sink,
        state: spec.state,
    })
}

/// User + system CPU time of this process, from `/proc/self/stat` (Linux; clock ticks
/// of 1/100 s, the kernel's fixed USER_HZ).
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Peak resident set size of this process (`VmHWM` in `/proc/self/status`), bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The throughput a run with checkpoints lost against the same run without, as a
/// fraction (0.05: 5 % fewer events per second).
pub fn checkpoint_cost(plain: &RunResult, with: &RunResult) -> f64 {
    if plain.events_per_s <= 0.0 {
        return 0.0;
    }
    1.0 - with.events_per_s / plain.events_per_s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests fail loudly on purpose.
mod tests {
    use super::*;

    fn spec(workload: &str, input: Input) -> RunSpec {
        RunSpec {
            workload: workload.into(),
            input,
            parallelism: 2,
            checkpoint_every: Some(Duration::from_secs(1)),
            scale: 0.5,
            jsonl_max_rows: 1000,
            data_dir: PathBuf::from("/tmp/weir-bench-test"),
            brokers: "127.0.0.1:1".into(),
            sink: SinkMode::Blackhole,
            out_topic: "weir-bench-out".into(),
            state: StateChoice::Memory,
            memory_budget: None,
        }
    }

    #[test]
    fn every_workload_compiles_in_both_modes() {
        for w in WORKLOADS {
            let text = job_text(&spec(w.name, Input::Gen)).unwrap();
            weir_engine::spec::load_job_str(
                &text,
                "w.yaml",
                Path::new("."),
                Arc::new(default_registry()),
                &JobOverrides::default(),
            )
            .unwrap_or_else(|e| panic!("{}: {e}", w.name));
            let text = job_text(&spec(w.name, Input::Jsonl)).unwrap();
            let job: Value = serde_json::from_str(&text).unwrap();
            for (name, s) in job["sources"].as_object().unwrap() {
                assert_eq!(s["type"], "file", "{} {name}", w.name);
                assert!(s["schema"].is_object(), "{} {name}", w.name);
            }
            assert_eq!(job["parallelism"], 2);
            assert_eq!(job["checkpoint"]["interval"], "1000ms");
        }
    }

    /// `--input kafka --kafka-sink …`: Kafka sources over the cached topics, Kafka
    /// sinks to the run's own topics; the job compiles (nothing connects yet).
    #[cfg(feature = "kafka")]
    #[test]
    fn kafka_mode_reads_and_writes_topics() {
        for w in WORKLOADS {
            let s = RunSpec {
                sink: SinkMode::ExactlyOnce,
                ..spec(w.name, Input::Kafka)
            };
            let text = job_text(&s).unwrap();
            let job: Value = serde_json::from_str(&text).unwrap();
            for (name, src) in job["sources"].as_object().unwrap() {
                assert_eq!(src["type"], "kafka", "{} {name}", w.name);
                let topic = src["topic"].as_str().unwrap();
                assert!(topic.starts_with(&format!("weir-bench-{}-{name}-", w.name)));
                assert_eq!(src["end"], "latest");
            }
            let topics = out_topics(&s);
            for (name, sink) in job["sinks"].as_object().unwrap() {
                assert_eq!(sink["type"], "kafka", "{} {name}", w.name);
                assert_eq!(sink["delivery"], "exactly_once");
                assert!(topics.iter().any(|t| t == &sink["topic"]));
            }
            weir_engine::spec::load_job_str(
                &text,
                "w.yaml",
                Path::new("."),
                Arc::new(default_registry()),
                &JobOverrides::default(),
            )
            .unwrap_or_else(|e| panic!("{}: {e}", w.name));
        }
    }

    #[test]
    fn gen_mode_scales_rows() {
        let text = job_text(&spec("w1", Input::Gen)).unwrap();
        let job: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(job["sources"]["logs"]["rows"], 2_500_000);
    }

    #[test]
    fn proc_figures_are_read() {
        assert!(process_cpu_seconds().is_some());
        assert!(peak_rss_bytes().unwrap() > 0);
    }
}
