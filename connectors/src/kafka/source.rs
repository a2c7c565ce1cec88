//! The Kafka source (`type: kafka`): every partition of the topics (named, or matching
//! a pattern) is a split, assigned to subtasks by weir — the sorted list of (topic,
//! partition), partition `i` to subtask `i % parallelism` — not by consumer-group
//! rebalancing, so positions are exact and a restore at another parallelism hands each
//! partition's offset to its new owner. Partitions (and topics matching the pattern)
//! that appear while the job runs are picked up at the next discovery and read from
//! their start.
//!
//! Each partition has its own librdkafka queue, polled round robin; a batch holds one
//! partition's messages, so the runtime keeps one watermark per partition (an idle one
//! drops out after `idle_timeout`). Backpressure: when downstream is slow the task
//! stops polling, and librdkafka stops fetching once its pre-fetch queue holds
//! `queued.max.messages.kbytes` (weir sets 16 MiB), so memory stays flat however much
//! the topic holds.
//!
//! The position in a checkpoint is the next offset of every partition the subtask
//! owns. After a checkpoint completes, the offsets are committed to the consumer group
//! (when `group` is set), only for lag tools: a restore uses the checkpoint's.
//!
//! Records go out as raw batches (`payload`, `offset`) for the job's format, with the
//! message metadata the job asks for (`metadata: {key: k, timestamp: ts, …}`) as extra
//! columns. A message without a value (a tombstone) and one longer than
//! `max_record_bytes` are dead letters with topic, partition and offset.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    ArrayRef, BinaryBuilder, Int64Builder, ListBuilder, RecordBatch, StringBuilder, StructBuilder,
    TimestampMillisecondBuilder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};
use weir_engine::error::{EngineError, Result};
use weir_engine::registry::{BuildContext, FieldError, SourceBuild, SourceFactory};
use weir_engine::source::{
    raw_schema, Source, SourceContext, SourcePoll, RAW_OFFSET, RAW_PAYLOAD, REJECTED_ROWS_METADATA,
    TRUNCATED_ROWS_METADATA,
};

use super::{duration_option, Connection, Health, WeirContext};
use crate::options::{parse_options, schema_for};
use crate::pace::Pacer;

/// Options of `type: kafka` sources.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct KafkaSourceOptions {
    /// Bootstrap servers, `host:port[,host:port…]` (librdkafka's `bootstrap.servers`);
    /// `${NAME}` is the environment variable NAME.
    brokers: String,
    /// The topic to read.
    topic: Option<String>,
    /// Several topics to read.
    topics: Option<Vec<String>>,
    /// A regular expression: every topic whose whole name matches is read, including
    /// topics created while the job runs.
    topic_pattern: Option<String>,
    /// Where to start when the checkpoint holds no position for a partition:
    /// `earliest` (the default), `latest`, `group` (the group's committed offsets, else
    /// earliest), or an RFC 3339 time (the first message at or after it).
    start: Option<String>,
    /// `never` (the default: the source runs until stopped) or `latest`: each
    /// partition ends when reading catches up with it (everything committed to it by
    /// then), and the job ends when every partition has (a bounded replay of a topic).
    end: Option<End>,
    /// A consumer group id: after each completed checkpoint its offsets are committed
    /// there, so that ordinary lag tools (and `start: group`) see progress. Partitions
    /// are assigned by weir, never by the group.
    group: Option<String>,
    /// `read_committed` (the default: only committed transactions' messages) or
    /// `read_uncommitted`.
    isolation: Option<Isolation>,
    /// Message metadata as extra columns, by column name: `key` (string), `topic`
    /// (string), `partition` (int), `offset` (int), `timestamp` (timestamp: the
    /// message's Kafka timestamp, usable as event time), `headers` (list of
    /// struct<key: string, value: string?>). E.g. `{ key: user_id, timestamp: kafka_ts }`.
    #[serde(default)]
    metadata: BTreeMap<MetadataKind, String>,
    /// Read at most this many messages per second per subtask (replaying a topic at a
    /// pace, for demos and tests). Default: as fast as possible.
    rate: Option<f64>,
    /// Longest message value in bytes (default 1048576); a longer one is a dead letter.
    #[schemars(range(min = 1, max = 1_073_741_824))]
    max_record_bytes: Option<u64>,
    /// How often partitions and topics are looked for (default 10s).
    discovery_interval: Option<String>,
    /// How long the brokers may stay unreachable while the job runs before it fails
    /// (default 60s); it resumes from its checkpoint when run again.
    unavailable_timeout: Option<String>,
    /// How long connecting at start may take before the job fails naming the brokers
    /// (default 10s).
    connect_timeout: Option<String>,
    /// More librdkafka settings, e.g. `security.protocol: SASL_SSL`, `sasl.mechanisms:
    /// SCRAM-SHA-512`, `sasl.username`, `sasl.password: ${KAFKA_PASSWORD}`,
    /// `ssl.ca.location`. `${NAME}` is the environment variable NAME; values are never
    /// printed.
    #[serde(default)]
    properties: BTreeMap<String, String>,
}

/// When a Kafka source ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
enum End {
    /// Never: new messages keep coming.
    Never,
    /// When reading catches up with each partition.
    Latest,
}

/// Transaction isolation of a Kafka consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
enum Isolation {
    /// Only messages of committed transactions.
    ReadCommitted,
    /// Every message, aborted transactions' too.
    ReadUncommitted,
}

/// A piece of message metadata that can become a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
enum MetadataKind {
    /// The message key, as UTF-8 text (invalid bytes replaced).
    Key,
    /// The topic.
    Topic,
    /// The partition.
    Partition,
    /// The offset.
    Offset,
    /// The Kafka timestamp (create or log-append time).
    Timestamp,
    /// The headers.
    Headers,
}

impl MetadataKind {
    /// Its YAML name.
    fn name(self) -> &'static str {
        match self {
            MetadataKind::Key => "key",
            MetadataKind::Topic => "topic",
            MetadataKind::Partition => "partition",
            MetadataKind::Offset => "offset",
            MetadataKind::Timestamp => "timestamp",
            MetadataKind::Headers => "headers",
        }
    }

    fn data_type(self) -> DataType {
        match self {
            MetadataKind::Key | MetadataKind::Topic => DataType::Utf8,
            MetadataKind::Partition | MetadataKind::Offset => DataType::Int64,
            MetadataKind::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, None),
            MetadataKind::Headers => DataType::List(Arc::new(Field::new(
                "item",
                DataType::Struct(header_fields()),
                true,
            ))),
        }
    }

    /// Whether every message has it (a key, a timestamp or headers may be absent).
    fn always_present(self) -> bool {
        matches!(
            self,
            MetadataKind::Topic | MetadataKind::Partition | MetadataKind::Offset
        )
    }
}

fn header_fields() -> Fields {
    vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Utf8, true),
    ]
    .into()
}

/// Where a partition starts without a checkpointed position.
#[derive(Debug, Clone, PartialEq)]
enum Start {
    Earliest,
    Latest,
    Group,
    /// Epoch milliseconds.
    Time(i64),
}

/// Which topics a source reads.
#[derive(Debug, Clone)]
enum Topics {
    Named(Vec<String>),
    Pattern(regex::Regex),
}

impl Topics {
    fn matches(&self, topic: &str) -> bool {
        match self {
            Topics::Named(t) => t.iter().any(|n| n == topic),
            Topics::Pattern(re) => re.is_match(topic),
        }
    }
}

/// Everything a source subtask needs, checked at build time.
#[derive(Debug)]
struct Config {
    name: String,
    connection: Connection,
    topics: Topics,
    start: Start,
    group: Option<String>,
    isolation: Isolation,
    bounded: bool,
    rate: Option<f64>,
    metadata: Vec<(MetadataKind, String)>,
    max_record_bytes: usize,
    discovery_interval: Duration,
    unavailable_timeout: Duration,
    connect_timeout: Duration,
    schema: SchemaRef,
}

/// Factory of `type: kafka` sources.
#[derive(Debug, Default, Clone, Copy)]
pub struct KafkaSourceFactory;

impl SourceFactory for KafkaSourceFactory {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn options_schema(&self) -> Value {
        schema_for::<KafkaSourceOptions>()
    }

    /// Topics hold recorded events: one from the far future is a mistake.
    fn default_max_future(&self) -> Option<Duration> {
        Some(weir_engine::time::DEFAULT_FILE_MAX_FUTURE)
    }

    fn build(
        &self,
        _ctx: &BuildContext,
        name: &str,
        options: &Value,
        _schema: Option<SchemaRef>,
    ) -> std::result::Result<SourceBuild, FieldError> {
        let mut o: KafkaSourceOptions = parse_options(options)?;
        o.brokers = super::expand_env(&o.brokers).map_err(|m| FieldError::at("/brokers", m))?;
        if o.brokers.trim().is_empty() {
            return Err(FieldError::at("/brokers", "must name at least one broker"));
        }
        let topics = match (&o.topic, &o.topics, &o.topic_pattern) {
            (Some(t), None, None) => Topics::Named(vec![t.clone()]),
            (None, Some(ts), None) if !ts.is_empty() => Topics::Named(ts.clone()),
            (None, None, Some(p)) => {
                Topics::Pattern(regex::Regex::new(&format!("^(?:{p})$")).map_err(|e| {
                    FieldError::at(
                        "/topic_pattern",
                        format!("not a valid regular expression: {e}"),
                    )
                })?)
            }
            (None, None, None) => {
                return Err(FieldError::here(
                    "missing what to read: `topic`, `topics` or `topic_pattern`",
                ))
            }
            _ => {
                return Err(FieldError::here(
                    "give one of `topic`, `topics` and `topic_pattern`, not several",
                ))
            }
        };
        let start = match o.start.as_deref().map(str::trim) {
            None | Some("earliest") => Start::Earliest,
            Some("latest") => Start::Latest,
            Some("group") => {
                if o.group.is_none() {
                    return Err(FieldError::at(
                        "/start",
                        "`start: group` needs a `group` whose committed offsets to start from",
                    ));
                }
                Start::Group
            }
            Some(t) => Start::Time(
                chrono::DateTime::parse_from_rfc3339(t)
                    .map_err(|e| {
                        FieldError::at(
                            "/start",
                            format!(
                                "expected earliest, latest, group or an RFC 3339 time such as \
                                 2024-06-01T00:00:00Z, found `{t}` ({e})"
                            ),
                        )
                    })?
                    .timestamp_millis(),
            ),
        };
        if let Some(r) = o.rate {
            if !(r.is_finite() && r > 0.0) {
                return Err(FieldError::at(
                    "/rate",
                    "rate must be a positive number of messages per second",
                ));
            }
        }
        let mut metadata: Vec<(MetadataKind, String)> = Vec::new();
        for (kind, column) in &o.metadata {
            if column.trim().is_empty() || column == RAW_PAYLOAD || column == RAW_OFFSET {
                return Err(FieldError::at(
                    format!("/metadata/{}", kind.name()),
                    format!("`{column}` cannot name a column here"),
                ));
            }
            if metadata.iter().any(|(_, c)| c == column) {
                return Err(FieldError::at(
                    "/metadata",
                    format!("the column `{column}` is named twice"),
                ));
            }
            metadata.push((*kind, column.clone()));
        }
        let connection = Connection {
            brokers: o.brokers.clone(),
            properties: o.properties.clone(),
            connect_timeout: o.connect_timeout.clone(),
        };
        // Checked now: an unset environment variable is a located error.
        connection.client_config(&[])?;
        let mut fields: Vec<Field> = raw_schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        for (kind, column) in &metadata {
            fields.push(Field::new(column, kind.data_type(), !kind.always_present()));
        }
        let schema = Arc::new(Schema::new(fields));
        let max_record_bytes = o
            .max_record_bytes
            .map_or(Ok(1 << 20), usize::try_from)
            .map_err(|_| FieldError::at("/max_record_bytes", "too large for this machine"))?;
        let config = Arc::new(Config {
            name: name.to_string(),
            topics,
            start,
            group: o.group.clone(),
            isolation: o.isolation.unwrap_or(Isolation::ReadCommitted),
            bounded: o.end == Some(End::Latest),
            rate: o.rate,
            metadata,
            max_record_bytes,
            discovery_interval: duration_option(
                &o.discovery_interval,
                "/discovery_interval",
                Duration::from_secs(10),
            )?,
            unavailable_timeout: duration_option(
                &o.unavailable_timeout,
                "/unavailable_timeout",
                Duration::from_secs(60),
            )?,
            connect_timeout: connection.connect_timeout()?,
            connection,
            schema: schema.clone(),
        });
        let what = match &config.topics {
            Topics::Named(t) => t.join(", "),
            Topics::Pattern(_) => {
                format!("topics matching {}", o.topic_pattern.unwrap_or_default())
            }
        };
        Ok(SourceBuild {
            schema,
            needs_format: true,
            bounded: config.bounded,
            describe: format!(
                "kafka {what} at {}{}",
                config.connection.brokers,
                config.connection.describe_properties()
            ),
            max_parallelism: None,
            create: Arc::new(move |_ctx: &SourceContext| {
                Ok(Box::new(KafkaSource::new(config.clone())) as Box<dyn Source>)
            }),
        })
    }
}

type Consumer_ = BaseConsumer<WeirContext>;

impl ConsumerContext for WeirContext {}

/// One partition this subtask reads.
struct Part {
    topic: String,
    partition: i32,
    /// The offset of the next message to read (`None`: not read yet, starts per the
    /// start policy or the restored position).
    next: Option<i64>,
    queue: rdkafka::consumer::base_consumer::PartitionQueue<WeirContext>,
    /// Bounded source: reading caught up with the partition (announced or not).
    ended: bool,
    /// Whether the end was announced to the runtime.
    end_announced: bool,
}

/// A Kafka source subtask; see the module docs.
pub struct KafkaSource {
    config: Arc<Config>,
    ctx: Option<SourceContext>,
    consumer: Option<Arc<Consumer_>>,
    health: Arc<Health>,
    /// Owned partitions; a partition's index is its split.
    parts: Vec<Part>,
    /// Split of each (topic, partition) this subtask has had.
    splits: HashMap<(String, i32), u32>,
    /// Offsets from a checkpoint, by (topic, partition): every old subtask's, so that
    /// a partition that moves here finds its offset.
    restored: HashMap<(String, i32), i64>,
    /// Partitions known to exist (all subtasks'), for discovery.
    known: HashSet<(String, i32)>,
    /// Splits assigned since the last poll, announced to the runtime.
    announce: Vec<u32>,
    next_part: usize,
    last_discovery: Option<Instant>,
    /// Positions taken at checkpoint barriers, committed to the group on completion.
    at_barrier: BTreeMap<u64, Vec<(String, i32, i64)>>,
    /// Since when no message or fetch has succeeded while errors came in.
    unavailable_since: Option<Instant>,
    pacer: Option<Pacer>,
}

impl KafkaSource {
    fn new(config: Arc<Config>) -> Self {
        let pacer = config.rate.map(Pacer::new);
        KafkaSource {
            config,
            ctx: None,
            consumer: None,
            health: Arc::new(Health::default()),
            parts: Vec::new(),
            splits: HashMap::new(),
            restored: HashMap::new(),
            known: HashSet::new(),
            announce: Vec::new(),
            next_part: 0,
            last_discovery: None,
            at_barrier: BTreeMap::new(),
            unavailable_since: None,
            pacer,
        }
    }

    fn error(&self, message: impl Into<String>, retryable: bool) -> EngineError {
        EngineError::connector(
            format!("kafka source {}", self.config.name),
            message,
            retryable,
        )
    }

    fn consumer(&self) -> Result<&Arc<Consumer_>> {
        self.consumer
            .as_ref()
            .ok_or_else(|| self.error("used before it was opened", false))
    }

    /// Runs a blocking librdkafka call off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Consumer_) -> T + Send + 'static,
    ) -> Result<T> {
        let consumer = self.consumer()?.clone();
        tokio::task::spawn_blocking(move || f(&consumer))
            .await
            .map_err(|e| self.error(format!("a blocking Kafka call failed: {e}"), false))
    }

    /// Every (topic, partition) of the topics this source reads, sorted, from the
    /// cluster's metadata.
    async fn list_partitions(&self, timeout: Duration) -> Result<Vec<(String, i32)>> {
        let metadata = self
            .blocking(move |c| c.fetch_metadata(None, timeout))
            .await?
            .map_err(|e| {
                self.error(
                    format!(
                        "cannot reach the brokers at {} within {} ({e})",
                        self.config.connection.brokers,
                        weir_engine::time::format_duration(timeout)
                    ),
                    true,
                )
            })?;
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for t in metadata.topics() {
            // Internal topics (`__consumer_offsets`) only when named.
            let internal =
                t.name().starts_with("__") && matches!(self.config.topics, Topics::Pattern(_));
            if internal || !self.config.topics.matches(t.name()) {
                continue;
            }
            if t.error().is_some() {
                continue;
            }
            seen.insert(t.name().to_string());
            for p in t.partitions() {
                out.push((t.name().to_string(), p.id()));
            }
        }
        if let Topics::Named(names) = &self.config.topics {
            if let Some(missing) = names.iter().find(|n| !seen.contains(*n)) {
                return Err(self.error(
                    format!(
                        "the topic `{missing}` does not exist at {} (create it first; the \
                         source never creates topics)",
                        self.config.connection.brokers
                    ),
                    false,
                ));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Assigns the partitions of `all` this subtask owns and has not assigned yet,
    /// starting each at its restored offset or per the start policy (`fresh`: the
    /// partition appeared while running, so it is read from its start).
    async fn assign(&mut self, all: &[(String, i32)], fresh: bool) -> Result<()> {
        let Some(ctx) = self.ctx.clone() else {
            return Ok(());
        };
        let consumer = self.consumer()?.clone();
        let mine: Vec<(String, i32)> = all
            .iter()
            .filter(|tp| {
                owner(&tp.0, tp.1, ctx.parallelism) == ctx.subtask && !self.splits.contains_key(*tp)
            })
            .cloned()
            .collect();
        for tp in all {
            self.known.insert(tp.clone());
        }
        if mine.is_empty() {
            return Ok(());
        }
        let timeout = self.config.connect_timeout;
        let mut starts: HashMap<(String, i32), Offset> = HashMap::new();
        let mut need_group = TopicPartitionList::new();
        let mut need_time = TopicPartitionList::new();
        for tp in &mine {
            let start = match self.restored.get(tp) {
                Some(&o) => Offset::Offset(o),
                None if fresh => Offset::Beginning,
                None => match self.config.start {
                    Start::Earliest => Offset::Beginning,
                    Start::Latest => Offset::End,
                    Start::Group => {
                        need_group.add_partition(&tp.0, tp.1);
                        Offset::Beginning
                    }
                    Start::Time(ms) => {
                        need_time
                            .add_partition_offset(&tp.0, tp.1, Offset::Offset(ms))
                            .map_err(|e| self.error(e.to_string(), false))?;
                        Offset::End
                    }
                },
            };
            starts.insert(tp.clone(), start);
        }
        if need_group.count() > 0 {
            let committed = self
                .blocking(move |c| c.committed_offsets(need_group, timeout))
                .await?
                .map_err(|e| {
                    self.error(
                        format!("cannot read the group's committed offsets: {e}"),
                        true,
                    )
                })?;
            for e in committed.elements() {
                if let Offset::Offset(o) = e.offset() {
                    starts.insert((e.topic().to_string(), e.partition()), Offset::Offset(o));
                }
            }
        }
        if need_time.count() > 0 {
            let found = self
                .blocking(move |c| c.offsets_for_times(need_time, timeout))
                .await?
                .map_err(|e| self.error(format!("cannot look up offsets by time: {e}"), true))?;
            for e in found.elements() {
                if let Offset::Offset(o) = e.offset() {
                    starts.insert((e.topic().to_string(), e.partition()), Offset::Offset(o));
                }
            }
        }
        // Each partition gets its own queue before it is assigned, so that nothing
        // fetched for it ever reaches the consumer's main queue (a queue split after
        // the assignment races the first fetch: what arrived before it, including an
        // end-of-partition event, would be lost or misread). Only the new partitions
        // are added (`incremental_assign`: a plain `assign` would deactivate the
        // queues of those already read).
        let mut assignment = TopicPartitionList::new();
        for tp in mine {
            let queue = consumer
                .split_partition_queue(&tp.0, tp.1)
                .ok_or_else(|| self.error(format!("no queue for {}/{}", tp.0, tp.1), false))?;
            let offset = starts.get(&tp).copied().unwrap_or(Offset::Beginning);
            assignment
                .add_partition_offset(&tp.0, tp.1, offset)
                .map_err(|e| self.error(e.to_string(), false))?;
            let split = u32::try_from(self.parts.len()).unwrap_or(u32::MAX);
            tracing::debug!(source = %self.config.name, subtask = ctx.subtask, topic = %tp.0, partition = tp.1, ?offset, "reading partition");
            self.splits.insert(tp.clone(), split);
            self.announce.push(split);
            self.parts.push(Part {
                next: self.restored.get(&tp).copied(),
                topic: tp.0,
                partition: tp.1,
                queue,
                ended: false,
                end_announced: false,
            });
        }
        consumer
            .incremental_assign(&assignment)
            .map_err(|e| self.error(format!("cannot assign partitions: {e}"), true))?;
        Ok(())
    }

    /// Looks for new partitions and topics now and then.
    async fn discover(&mut self, now: Instant) -> Result<()> {
        // A bounded source reads the partitions that exist when it starts.
        let due = match self.last_discovery {
            None => true,
            Some(_) if self.config.bounded => false,
            Some(t) => now.duration_since(t) >= self.config.discovery_interval,
        };
        if !due {
            return Ok(());
        }
        let first = self.last_discovery.is_none();
        self.last_discovery = Some(now);
        let timeout = if first {
            self.config.connect_timeout
        } else {
            self.config.connect_timeout.min(Duration::from_secs(5))
        };
        let all = match self.list_partitions(timeout).await {
            Ok(all) => all,
            // At start an unreachable cluster is an error; later a failed discovery
            // waits for the next one (the unavailable timeout decides).
            Err(e) if first => return Err(e),
            Err(e) => {
                tracing::debug!(source = %self.config.name, error = %e, "partition discovery failed");
                return Ok(());
            }
        };
        let fresh = !first && all.iter().any(|tp| !self.known.contains(tp));
        self.assign(&all, fresh).await
    }

    /// Reads up to `max` messages of `parts[i]` into a raw batch.
    fn read_partition(&mut self, i: usize, max: usize) -> Result<Option<RecordBatch>> {
        let limit = self.config.max_record_bytes;
        let metadata = self.config.metadata.clone();
        let bounded = self.config.bounded;
        let part = &mut self.parts[i];
        if part.ended {
            return Ok(None);
        }
        let mut payload = BinaryBuilder::new();
        let mut offsets = UInt64Builder::new();
        let mut meta: Vec<MetaBuilder> =
            metadata.iter().map(|(k, _)| MetaBuilder::new(*k)).collect();
        let mut truncated = Vec::new();
        let mut rejected = serde_json::Map::new();
        let mut n = 0;
        let mut error = None;
        while n < max {
            let Some(r) = part.queue.poll(Duration::ZERO) else {
                break;
            };
            let m = match r {
                Ok(m) => m,
                Err(rdkafka::error::KafkaError::PartitionEOF(_)) => {
                    // Caught up: the end of a bounded source's partition.
                    if bounded {
                        part.ended = true;
                    }
                    break;
                }
                Err(e) => {
                    error = Some(e);
                    break;
                }
            };
            let offset = m.offset();
            match m.payload() {
                None => {
                    payload.append_value([]);
                    rejected.insert(n.to_string(), json!("tombstone: the message has no value"));
                }
                Some(v) if v.len() > limit => {
                    payload.append_value(&v[..limit]);
                    truncated.push(n.to_string());
                }
                Some(v) => payload.append_value(v),
            }
            offsets.append_value(u64::try_from(offset).unwrap_or(0));
            for b in &mut meta {
                b.append(&m);
            }
            part.next = Some(offset + 1);
            n += 1;
        }
        if let Some(e) = error {
            // Transport errors are reported here too; a partition-level error that is
            // not transient (e.g. the topic was deleted) fails the job.
            let code = e.rdkafka_error_code();
            let transient = matches!(
                code,
                Some(
                    rdkafka::error::RDKafkaErrorCode::PartitionEOF
                        | rdkafka::error::RDKafkaErrorCode::BrokerTransportFailure
                        | rdkafka::error::RDKafkaErrorCode::AllBrokersDown
                        | rdkafka::error::RDKafkaErrorCode::OperationTimedOut
                        | rdkafka::error::RDKafkaErrorCode::NetworkException
                        | rdkafka::error::RDKafkaErrorCode::Resolve
                        | rdkafka::error::RDKafkaErrorCode::LeaderNotAvailable
                        | rdkafka::error::RDKafkaErrorCode::NotLeaderForPartition
                        | rdkafka::error::RDKafkaErrorCode::RequestTimedOut
                )
            );
            if !transient {
                let what = format!("reading {}/{}: {e}", part.topic, part.partition);
                return Err(self.error(what, false));
            }
            self.health.record_error(e.to_string());
        }
        if n == 0 {
            return Ok(None);
        }
        let mut fields: Vec<Field> = raw_schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        let mut columns: Vec<ArrayRef> =
            vec![Arc::new(payload.finish()), Arc::new(offsets.finish())];
        for ((kind, name), mut b) in metadata.iter().zip(meta) {
            fields.push(Field::new(name, kind.data_type(), !kind.always_present()));
            columns.push(b.finish());
        }
        let mut schema_meta = HashMap::new();
        if !truncated.is_empty() {
            schema_meta.insert(TRUNCATED_ROWS_METADATA.to_string(), truncated.join(","));
        }
        if !rejected.is_empty() {
            schema_meta.insert(
                REJECTED_ROWS_METADATA.to_string(),
                Value::Object(rejected).to_string(),
            );
        }
        let schema = Arc::new(Schema::new_with_metadata(fields, schema_meta));
        RecordBatch::try_new(schema, columns)
            .map(Some)
            .map_err(|e| EngineError::arrow("building a Kafka batch", e))
    }

    /// Fails the job when the brokers have been unreachable for longer than allowed.
    async fn check_available(&mut self, got_data: bool, now: Instant) -> Result<()> {
        if got_data {
            self.unavailable_since = None;
            self.health.brokers_down.store(false, Ordering::Relaxed);
            return Ok(());
        }
        if !self.health.brokers_down.load(Ordering::Relaxed) {
            self.unavailable_since = None;
            return Ok(());
        }
        let since = *self.unavailable_since.get_or_insert(now);
        if now.duration_since(since) >= self.config.unavailable_timeout {
            // Still down? Ask once more before giving up.
            if self.list_partitions(Duration::from_secs(2)).await.is_ok() {
                self.health.brokers_down.store(false, Ordering::Relaxed);
                self.unavailable_since = None;
                return Ok(());
            }
            return Err(self.error(
                format!(
                    "the brokers at {} have been unreachable for {} (unavailable_timeout); \
                     last error: {}. Run the job again to resume from its last checkpoint",
                    self.config.connection.brokers,
                    weir_engine::time::format_duration(self.config.unavailable_timeout),
                    self.health.last_error().unwrap_or_else(|| "none".into())
                ),
                true,
            ));
        }
        Ok(())
    }

    fn offsets(&self) -> Vec<(String, i32, i64)> {
        self.parts
            .iter()
            .filter_map(|p| p.next.map(|o| (p.topic.clone(), p.partition, o)))
            .collect()
    }

    fn restore_offsets(&mut self, position: &Value) -> Result<()> {
        let Some(list) = position.get("offsets").and_then(Value::as_array) else {
            if position.is_null() {
                return Ok(());
            }
            return Err(self.error(format!("unreadable position {position}"), false));
        };
        for e in list {
            let (Some(t), Some(p), Some(o)) = (
                e.get("topic").and_then(Value::as_str),
                e.get("partition").and_then(Value::as_i64),
                e.get("offset").and_then(Value::as_i64),
            ) else {
                return Err(self.error(format!("unreadable position entry {e}"), false));
            };
            let p =
                i32::try_from(p).map_err(|_| self.error(format!("bad partition {p}"), false))?;
            self.restored.insert((t.to_string(), p), o);
        }
        Ok(())
    }
}

/// Builds one metadata column.
enum MetaBuilder {
    Text(MetadataKind, StringBuilder),
    Int(MetadataKind, Int64Builder),
    Time(TimestampMillisecondBuilder),
    Headers(ListBuilder<StructBuilder>),
}

impl MetaBuilder {
    fn new(kind: MetadataKind) -> Self {
        match kind {
            MetadataKind::Key | MetadataKind::Topic => {
                MetaBuilder::Text(kind, StringBuilder::new())
            }
            MetadataKind::Partition | MetadataKind::Offset => {
                MetaBuilder::Int(kind, Int64Builder::new())
            }
            MetadataKind::Timestamp => MetaBuilder::Time(TimestampMillisecondBuilder::new()),
            MetadataKind::Headers => MetaBuilder::Headers(
                ListBuilder::new(StructBuilder::from_fields(header_fields(), 0)).with_field(
                    Arc::new(Field::new("item", DataType::Struct(header_fields()), true)),
                ),
            ),
        }
    }

    fn append<M: Message>(&mut self, m: &M) {
        match self {
            MetaBuilder::Text(MetadataKind::Key, b) => {
                b.append_option(m.key().map(|k| String::from_utf8_lossy(k).into_owned()))
            }
            MetaBuilder::Text(_, b) => b.append_value(m.topic()),
            MetaBuilder::Int(MetadataKind::Partition, b) => {
                b.append_value(i64::from(m.partition()))
            }
            MetaBuilder::Int(_, b) => b.append_value(m.offset()),
            MetaBuilder::Time(b) => b.append_option(m.timestamp().to_millis()),
            MetaBuilder::Headers(b) => {
                if let Some(hs) = m.headers() {
                    for h in hs.iter() {
                        let s = b.values();
                        if let Some(k) = s.field_builder::<StringBuilder>(0) {
                            k.append_value(h.key);
                        }
                        if let Some(v) = s.field_builder::<StringBuilder>(1) {
                            v.append_option(
                                h.value.map(|v| String::from_utf8_lossy(v).into_owned()),
                            );
                        }
                        s.append(true);
                    }
                }
                b.append(true);
            }
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            MetaBuilder::Text(_, b) => Arc::new(b.finish()),
            MetaBuilder::Int(_, b) => Arc::new(b.finish()),
            MetaBuilder::Time(b) => Arc::new(b.finish()),
            MetaBuilder::Headers(b) => Arc::new(b.finish()),
        }
    }
}

#[async_trait::async_trait]
impl Source for KafkaSource {
    fn schema(&self) -> SchemaRef {
        self.config.schema.clone()
    }

    async fn open(&mut self, ctx: &SourceContext) -> Result<()> {
        self.ctx = Some(ctx.clone());
        let group = self
            .config
            .group
            .clone()
            .unwrap_or_else(|| format!("weir-{}-{}", ctx.job, self.config.name));
        let isolation = match self.config.isolation {
            Isolation::ReadCommitted => "read_committed",
            Isolation::ReadUncommitted => "read_uncommitted",
        };
        let client = self
            .config
            .connection
            .client_config(&[
                ("group.id", group),
                ("enable.auto.commit", "false".into()),
                ("enable.auto.offset.store", "false".into()),
                ("enable.partition.eof", self.config.bounded.to_string()),
                ("isolation.level", isolation.into()),
                ("auto.offset.reset", "earliest".into()),
                ("statistics.interval.ms", "5000".into()),
            ])
            .map_err(|e| self.error(e.to_string(), false))?;
        let mut client = client;
        // Bounded pre-fetch (the user's setting wins when given).
        if !self
            .config
            .connection
            .properties
            .contains_key("queued.max.messages.kbytes")
        {
            client.set("queued.max.messages.kbytes", "16384");
        }
        let context = WeirContext {
            name: Arc::from(format!("source {}[{}]", self.config.name, ctx.subtask)),
            health: self.health.clone(),
        };
        let consumer: Consumer_ = client
            .create_with_context(context)
            .map_err(|e| self.error(format!("cannot create the consumer: {e}"), false))?;
        self.consumer = Some(Arc::new(consumer));
        // Reachable, and the topics exist: fail now, naming the brokers, if not.
        self.list_partitions(self.config.connect_timeout).await?;
        Ok(())
    }

    async fn poll_next(&mut self) -> Result<SourcePoll> {
        let now = Instant::now();
        if let Some(c) = &self.consumer {
            // Serves librdkafka's callbacks (errors, statistics); messages come from
            // the partition queues (see `assign`), never here.
            if let Some(Ok(m)) = c.poll(Duration::ZERO) {
                tracing::warn!(source = %self.config.name, topic = m.topic(), partition = m.partition(), offset = m.offset(), "a message reached the main queue (not read here; the partition is read from its own queue)");
            }
        }
        self.discover(now).await?;
        if !self.announce.is_empty() {
            return Ok(SourcePoll::NewSplits(std::mem::take(&mut self.announce)));
        }
        if let Some(i) = self.parts.iter().position(|p| p.ended && !p.end_announced) {
            self.parts[i].end_announced = true;
            return Ok(SourcePoll::SplitEnd(u32::try_from(i).unwrap_or(u32::MAX)));
        }
        if self.config.bounded && self.parts.iter().all(|p| p.end_announced) {
            return Ok(SourcePoll::Finished);
        }
        let mut max = self.ctx.as_ref().map_or(1024, |c| c.batch_size.max(1));
        if let Some(p) = self.pacer.as_mut() {
            match p.allowance(max) {
                Ok(n) => max = n,
                Err(wait) => return Ok(SourcePoll::Pending(wait)),
            }
        }
        let n = self.parts.len();
        for k in 0..n {
            let i = (self.next_part + k) % n;
            if let Some(batch) = self.read_partition(i, max)? {
                if let Some(p) = self.pacer.as_mut() {
                    p.took(batch.num_rows() as u64);
                }
                self.next_part = (i + 1) % n;
                self.check_available(true, now).await?;
                return Ok(SourcePoll::Batch {
                    split: u32::try_from(i).unwrap_or(u32::MAX),
                    batch,
                });
            }
        }
        self.check_available(false, now).await?;
        Ok(SourcePoll::Pending(Duration::from_millis(10)))
    }

    fn split_description(&self, split: u32) -> String {
        match self.parts.get(split as usize) {
            Some(p) => format!("{}/{}", p.topic, p.partition),
            None => format!("split {split}"),
        }
    }

    fn position(&self) -> Value {
        let mut offsets: Vec<Value> = self
            .offsets()
            .into_iter()
            .map(|(t, p, o)| json!({"topic": t, "partition": p, "offset": o}))
            .collect();
        // Partitions not read yet keep their restored offsets: a checkpoint taken
        // before the first message must not forget them.
        for ((t, p), o) in &self.restored {
            let mine = self
                .splits
                .get(&(t.clone(), *p))
                .and_then(|&s| self.parts.get(s as usize));
            if mine.is_some_and(|part| part.next.is_none()) {
                offsets.push(json!({"topic": t, "partition": p, "offset": o}));
            }
        }
        json!({ "offsets": offsets })
    }

    fn snapshot_position(&mut self, epoch: u64) -> Value {
        if self.config.group.is_some() {
            self.at_barrier.insert(epoch, self.offsets());
            // Only the newest few are ever committed.
            while self.at_barrier.len() > 8 {
                self.at_barrier.pop_first();
            }
        }
        self.position()
    }

    fn checkpoint_complete(&mut self, epoch: u64) {
        let Some(offsets) = self.at_barrier.remove(&epoch) else {
            return;
        };
        self.at_barrier.retain(|e, _| *e > epoch);
        let Some(consumer) = &self.consumer else {
            return;
        };
        let mut tpl = TopicPartitionList::new();
        for (t, p, o) in &offsets {
            let _ = tpl.add_partition_offset(t, *p, Offset::Offset(*o));
        }
        if tpl.count() == 0 {
            return;
        }
        if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
            tracing::debug!(source = %self.config.name, error = %e, "committing offsets to the group failed");
        }
    }

    fn lag(&self) -> Option<u64> {
        let lags = self.health.lag.lock().ok()?;
        let mine: i64 = self
            .parts
            .iter()
            .filter_map(|p| lags.get(&(p.topic.clone(), p.partition)))
            .sum();
        u64::try_from(mine).ok()
    }

    fn restore(&mut self, position: &Value) -> Result<()> {
        self.restore_offsets(position)
    }

    fn restore_all(&mut self, positions: &[Value]) -> Result<()> {
        for p in positions {
            self.restore_offsets(p)?;
        }
        Ok(())
    }
}

/// The subtask that reads `partition` of `topic`. It depends on nothing but the
/// topic, the partition and the parallelism, so partitions and topics that appear
/// while running never move one already assigned, and every subtask agrees without
/// talking to the others. A topic's partitions go round-robin from a start that
/// depends on the topic's name (as Flink's `KafkaTopicPartitionAssigner`), so several
/// small topics do not all pile onto subtask 0.
pub(crate) fn owner(topic: &str, partition: i32, parallelism: usize) -> usize {
    let parallelism = parallelism.max(1) as u64;
    // FNV-1a: stable across processes and versions (unlike `DefaultHasher`).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in topic.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let start = h % parallelism;
    let p = u64::from(partition.unsigned_abs());
    usize::try_from((start + p) % parallelism).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::owner;

    #[test]
    fn a_topics_partitions_spread_evenly_and_never_move() {
        for parallelism in 1..=8 {
            let mut counts = vec![0usize; parallelism];
            for p in 0..(parallelism as i32 * 3) {
                let o = owner("logs", p, parallelism);
                assert!(o < parallelism);
                counts[o] += 1;
                // The same answer whatever else exists.
                assert_eq!(o, owner("logs", p, parallelism));
            }
            assert!(counts.iter().all(|&c| c == 3), "{counts:?}");
        }
        assert_eq!(owner("x", 0, 0), 0);
    }
}
