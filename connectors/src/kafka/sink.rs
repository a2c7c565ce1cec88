//! The Kafka sink (`type: kafka`): rows as messages (value in a format, key from
//! columns, headers from columns), delivered at least once or exactly once.
//!
//! **At least once** (`delivery: at_least_once`): an idempotent producer; at each
//! checkpoint barrier the sink waits until every message sent so far is acknowledged,
//! so a completed checkpoint never covers unsent output (a restore may send some
//! again).
//!
//! **Exactly once** (`delivery: exactly_once`, the default; needs checkpoints). Each
//! sink subtask writes epoch `n` (the rows between barriers `n-1` and `n`) in one Kafka
//! transaction, committed when checkpoint `n` completes. A pool of producers per
//! subtask (transactional ids `<prefix>.<subtask>.<k>`, two at first) take turns, so
//! rows of epoch `n+1` flow while epoch `n` waits for its checkpoint; an aborted
//! checkpoint's transaction stays open and is committed with the next checkpoint that
//! completes (the pool grows by one meanwhile). The protocol for a crash at any point:
//!
//! 1. With the epoch's messages, its transaction writes a **marker** to the commit topic
//!    (`__weir_sink_commits`, the partition the key hashes to): key `<prefix>.<subtask>`,
//!    value the epoch and a random token that the checkpoint records too. The marker is
//!    visible (to
//!    `read_committed`) exactly when the epoch's messages are, and its token tells this
//!    transaction from any other (a job started over reuses epoch numbers).
//! 2. At the barrier (`pre_commit`) the sink flushes (every message acknowledged, the
//!    transaction still open) and hands the messages of every transaction not yet
//!    committed to the checkpoint (`checkpoint_data`): librdkafka cannot resume another
//!    process's transaction, so a restore must be able to write them again.
//! 3. `commit(n)` commits the transaction.
//! 4. Restoring from checkpoint `n`, a subtask first fences its transactional ids (the
//!    checkpoint's pool and a margin: `init_transactions` aborts whatever a previous
//!    process left open), then looks
//!    for the marker token of each epoch the checkpoint lists as pre-committed. Absent,
//!    the epoch was not committed (the crash came between the checkpoint and the
//!    commit, or during it): it writes the stored messages again, with the marker, in
//!    one transaction. Present, it was: nothing is written. After a change of parallelism subtask 0 takes
//!    over every old stream and fences the ids of old subtasks that no longer exist.
//!
//! A crash before checkpoint `n` completes leaves epoch `n` uncommitted and not in any
//! checkpoint: the restore from `n-1` aborts it (fencing) and the sources replay it.
//! The cost of exactly once is the epoch's messages held in memory until its barrier
//! and stored in the checkpoint once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};
use weir_engine::error::{EngineError, Result};
use weir_engine::registry::{BuildContext, Checkpointing, FieldError, SinkBuild, SinkFactory};
use weir_engine::sink::{Sink, SinkContext, SinkRecovery};

use super::{duration_option, Connection, Health, WeirContext};
use crate::encode::{BatchEncoder, TextFormat};
use crate::options::{new_token, parse_options, schema_for};

/// Options of `type: kafka` sinks.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct KafkaSinkOptions {
    /// Bootstrap servers, `host:port[,host:port…]` (librdkafka's `bootstrap.servers`);
    /// `${NAME}` is the environment variable NAME.
    brokers: String,
    /// The topic to write.
    topic: String,
    /// How a row becomes a message value: `jsonl` (a JSON object, the default), `csv`
    /// (one CSV line, no header) or `raw` (the row's single string or binary column).
    #[serde(default)]
    format: ValueFormat,
    /// The columns that make the message key: one column's value as text, or several
    /// as a JSON object. Without a key, messages spread over partitions.
    key: Option<KeyColumns>,
    /// Message headers from columns: header name → column (its value as text; a null
    /// leaves the header out).
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// `exactly_once` (the default; Kafka transactions committed with checkpoints, so
    /// the job needs `checkpoint:`) or `at_least_once` (cheaper; a restore may write
    /// some messages again).
    delivery: Option<Delivery>,
    /// Transactions (exactly once): how long one may stay open (librdkafka's
    /// `transaction.timeout.ms`, default 60s). Must be longer than the checkpoint
    /// interval, and at most the brokers' `transaction.max.timeout.ms`.
    transaction_timeout: Option<String>,
    /// Transactions: the prefix of the transactional ids, `<prefix>.<subtask>.<0|1>`
    /// (default `weir.<job>.<sink>`). Must be stable across restarts and unique per
    /// sink in the cluster.
    transactional_id: Option<String>,
    /// Transactions: the topic of commit markers (default `__weir_sink_commits`;
    /// created, compacted, with 16 partitions, when missing; a stream's markers go to
    /// the partition its name hashes to).
    commit_topic: Option<String>,
    /// Create the topic when it does not exist, e.g. `{ partitions: 3, replication: 1 }`.
    /// Without it a missing topic is an error at start.
    create_topic: Option<CreateTopic>,
    /// librdkafka's partitioner (default `murmur2_random`, the Java client's: keyed
    /// messages land where Java producers would put them).
    partitioner: Option<String>,
    /// How long the brokers may stay unreachable before the job fails (default 60s):
    /// a message not delivered in this time fails it.
    unavailable_timeout: Option<String>,
    /// How long connecting at start may take before the job fails naming the brokers
    /// (default 10s).
    connect_timeout: Option<String>,
    /// More librdkafka settings (`security.protocol`, `sasl.*`, `ssl.*`, `compression.type`,
    /// `linger.ms`, …). `${NAME}` is the environment variable NAME; values are never
    /// printed.
    #[serde(default)]
    properties: BTreeMap<String, String>,
}

/// Message values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum ValueFormat {
    /// A JSON object per row.
    #[default]
    Jsonl,
    /// A CSV line per row (no header).
    Csv,
    /// The row's only column (string or binary), as its bytes.
    Raw,
}

/// Key columns: one name or a list.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
enum KeyColumns {
    One(String),
    Many(Vec<String>),
}

/// Delivery guarantee.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
enum Delivery {
    /// Transactions committed with checkpoints.
    ExactlyOnce,
    /// Flushed at checkpoints; a restore may repeat messages.
    AtLeastOnce,
}

/// How a missing topic is created.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct CreateTopic {
    /// Partitions (default 1).
    partitions: Option<i32>,
    /// Replication factor (default 1).
    replication: Option<i32>,
}

/// The default topic of commit markers.
pub const DEFAULT_COMMIT_TOPIC: &str = "__weir_sink_commits";

/// Partitions of a commit topic weir creates: a stream's markers go to the partition
/// its name hashes to, so that a stuck transaction of one job rarely holds up another's
/// recovery.
const COMMIT_PARTITIONS: i32 = 16;

/// The commit-topic partition of a stream's markers (FNV-1a of its name).
fn marker_partition(stream: &str, partitions: usize) -> i32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in stream.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    i32::try_from(h % partitions.max(1) as u64).unwrap_or(0)
}

/// Everything a sink subtask needs, checked at build time.
#[derive(Debug)]
struct Config {
    name: String,
    connection: Connection,
    topic: String,
    format: ValueFormat,
    key: Vec<usize>,
    headers: Vec<(String, usize)>,
    delivery: Delivery,
    transaction_timeout: Duration,
    transactional_id: Option<String>,
    commit_topic: String,
    create_topic: Option<(i32, i32)>,
    partitioner: String,
    unavailable_timeout: Duration,
    connect_timeout: Duration,
}

/// Factory of `type: kafka` sinks.
#[derive(Debug, Default, Clone, Copy)]
pub struct KafkaSinkFactory;

impl SinkFactory for KafkaSinkFactory {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn options_schema(&self) -> Value {
        schema_for::<KafkaSinkOptions>()
    }

    fn build(
        &self,
        ctx: &BuildContext,
        name: &str,
        options: &Value,
        input: SchemaRef,
    ) -> std::result::Result<SinkBuild, FieldError> {
        let mut o: KafkaSinkOptions = parse_options(options)?;
        o.brokers = super::expand_env(&o.brokers).map_err(|m| FieldError::at("/brokers", m))?;
        if o.brokers.trim().is_empty() {
            return Err(FieldError::at("/brokers", "must name at least one broker"));
        }
        if o.topic.trim().is_empty() {
            return Err(FieldError::at("/topic", "must not be empty"));
        }
        let column = |c: &str, at: String| {
            input.index_of(c).map_err(|_| {
                FieldError::at(
                    at,
                    format!(
                        "unknown column `{c}` (columns: {})",
                        input
                            .fields()
                            .iter()
                            .map(|f| f.name().as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })
        };
        let key = match &o.key {
            None => Vec::new(),
            Some(KeyColumns::One(c)) => vec![column(c, "/key".into())?],
            Some(KeyColumns::Many(cs)) => cs
                .iter()
                .enumerate()
                .map(|(i, c)| column(c, format!("/key/{i}")))
                .collect::<std::result::Result<_, _>>()?,
        };
        let mut headers = Vec::new();
        for (h, c) in &o.headers {
            headers.push((h.clone(), column(c, format!("/headers/{h}"))?));
        }
        match o.format {
            ValueFormat::Raw => {
                let ok = input.fields().len() == 1
                    && matches!(
                        input.field(0).data_type(),
                        DataType::Utf8
                            | DataType::LargeUtf8
                            | DataType::Binary
                            | DataType::LargeBinary
                    );
                if !ok {
                    return Err(FieldError::at(
                        "/format",
                        "the raw format writes one string or binary column: select it first",
                    ));
                }
            }
            ValueFormat::Csv => TextFormat::Csv
                .check_schema(&input)
                .map_err(|m| FieldError::at("/format", m))?,
            ValueFormat::Jsonl => {}
        }
        let delivery = o.delivery.unwrap_or(Delivery::ExactlyOnce);
        let transaction_timeout = duration_option(
            &o.transaction_timeout,
            "/transaction_timeout",
            Duration::from_secs(60),
        )?;
        if delivery == Delivery::ExactlyOnce {
            match ctx.checkpoints {
                Checkpointing::Off => {
                    return Err(FieldError::at(
                        "/delivery",
                        "exactly_once needs checkpoints (Kafka transactions are committed \
                         with them): add a `checkpoint:` section, or write `delivery: \
                         at_least_once`",
                    ))
                }
                Checkpointing::Every(interval) if interval >= transaction_timeout => {
                    return Err(FieldError::at(
                        "/transaction_timeout",
                        format!(
                            "the checkpoint interval ({}) must be shorter than the \
                             transaction timeout ({}): a transaction stays open from one \
                             checkpoint to the next",
                            weir_engine::time::format_duration(interval),
                            weir_engine::time::format_duration(transaction_timeout)
                        ),
                    ))
                }
                _ => {}
            }
        }
        let connection = Connection {
            brokers: o.brokers.clone(),
            properties: o.properties.clone(),
            connect_timeout: o.connect_timeout.clone(),
        };
        connection.client_config(&[])?;
        let create_topic = o.create_topic.as_ref().map(|c| {
            (
                c.partitions.unwrap_or(1).max(1),
                c.replication.unwrap_or(1).max(1),
            )
        });
        let config = Arc::new(Config {
            name: name.to_string(),
            topic: o.topic.clone(),
            format: o.format,
            key,
            headers,
            delivery,
            transaction_timeout,
            transactional_id: o.transactional_id.clone(),
            commit_topic: o
                .commit_topic
                .clone()
                .unwrap_or_else(|| DEFAULT_COMMIT_TOPIC.into()),
            create_topic,
            partitioner: o
                .partitioner
                .clone()
                .unwrap_or_else(|| "murmur2_random".into()),
            unavailable_timeout: duration_option(
                &o.unavailable_timeout,
                "/unavailable_timeout",
                Duration::from_secs(60),
            )?,
            connect_timeout: connection.connect_timeout()?,
            connection,
        });
        let delivery_text = match delivery {
            Delivery::ExactlyOnce => "exactly once",
            Delivery::AtLeastOnce => "at least once",
        };
        let describe = format!(
            "kafka {} at {} ({delivery_text}){}",
            o.topic,
            config.connection.brokers,
            config.connection.describe_properties()
        );
        let output = format!("kafka topic {} at {}", o.topic, config.connection.brokers);
        Ok(SinkBuild::new(
            describe,
            Arc::new(move |sctx: &SinkContext| {
                Ok(Box::new(KafkaSink::new(config.clone(), sctx)) as Box<dyn Sink>)
            }),
        )
        .output(output))
    }
}

/// A message: key, value, headers.
#[derive(Debug, Clone, PartialEq)]
struct Record {
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
}

/// Encodes an epoch's messages for the checkpoint: a version byte, then per message
/// the key (u32 length, `u32::MAX` for none), the value, the header count and each
/// header's name and value, lengths little-endian.
fn encode_records(records: &[Record]) -> Vec<u8> {
    let size: usize = records
        .iter()
        .map(|r| {
            12 + r.key.as_ref().map_or(0, Vec::len)
                + r.value.len()
                + r.headers
                    .iter()
                    .map(|(k, v)| 8 + k.len() + v.len())
                    .sum::<usize>()
        })
        .sum();
    let mut out = Vec::with_capacity(1 + size);
    out.push(1u8);
    let put = |out: &mut Vec<u8>, bytes: &[u8]| {
        out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(bytes);
    };
    for r in records {
        match &r.key {
            Some(k) => put(&mut out, k),
            None => out.extend_from_slice(&u32::MAX.to_le_bytes()),
        }
        put(&mut out, &r.value);
        out.extend_from_slice(&u32::try_from(r.headers.len()).unwrap_or(0).to_le_bytes());
        for (k, v) in &r.headers {
            put(&mut out, k.as_bytes());
            put(&mut out, v);
        }
    }
    out
}

/// Reads what [`encode_records`] wrote.
fn decode_records(data: &[u8]) -> std::result::Result<Vec<Record>, String> {
    let bad = || "the checkpoint's Kafka messages are unreadable".to_string();
    let (&version, mut rest) = data.split_first().ok_or_else(bad)?;
    if version != 1 {
        return Err(format!(
            "unknown format {version} of the checkpoint's Kafka messages"
        ));
    }
    fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if rest.len() < n {
            return None;
        }
        let (a, b) = rest.split_at(n);
        *rest = b;
        Some(a)
    }
    fn len(rest: &mut &[u8]) -> Option<u32> {
        let b = take(rest, 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    let mut out = Vec::new();
    while !rest.is_empty() {
        let key = match len(&mut rest).ok_or_else(bad)? {
            u32::MAX => None,
            n => Some(take(&mut rest, n as usize).ok_or_else(bad)?.to_vec()),
        };
        let n = len(&mut rest).ok_or_else(bad)? as usize;
        let value = take(&mut rest, n).ok_or_else(bad)?.to_vec();
        let count = len(&mut rest).ok_or_else(bad)?;
        let mut headers = Vec::new();
        for _ in 0..count {
            let n = len(&mut rest).ok_or_else(bad)? as usize;
            let k = String::from_utf8_lossy(take(&mut rest, n).ok_or_else(bad)?).into_owned();
            let n = len(&mut rest).ok_or_else(bad)? as usize;
            let v = take(&mut rest, n).ok_or_else(bad)?.to_vec();
            headers.push((k, v));
        }
        out.push(Record {
            key,
            value,
            headers,
        });
    }
    Ok(out)
}

/// The producer context: delivery failures are remembered (the next call fails the
/// job with the first one).
#[derive(Clone)]
struct SinkContextK {
    inner: WeirContext,
    failed: Arc<Mutex<Option<String>>>,
    /// Where the last commit marker this producer sent landed: (partition, offset).
    last_marker: Arc<Mutex<Option<(i32, i64)>>>,
}

/// The delivery opaque of a commit marker (other messages carry 0).
const MARKER: usize = 1;

impl ClientContext for SinkContextK {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.inner.log(level, fac, message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.inner.error(error, reason);
    }
}

impl ProducerContext for SinkContextK {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        if let (Ok(m), MARKER) = (result, opaque) {
            if let Ok(mut last) = self.last_marker.lock() {
                *last = Some((m.partition(), m.offset()));
            }
        }
        if let Err((e, m)) = result {
            if let Ok(mut f) = self.failed.lock() {
                if f.is_none() {
                    *f = Some(format!(
                        "a message to {} partition {} was not delivered: {e}",
                        m.topic(),
                        m.partition()
                    ));
                }
            }
        }
    }
}

type Producer_ = ThreadedProducer<SinkContextK>;

/// One transactional producer and the epoch it is writing.
struct Slot {
    producer: Arc<Producer_>,
    /// The open transaction's marker once pre-committed; `None` while it takes rows
    /// (or holds no transaction).
    pending: Option<Marker>,
    /// Whether a transaction is open.
    open: bool,
    /// The open transaction's messages (exactly once: kept until committed, for every
    /// checkpoint taken meanwhile).
    records: Vec<Record>,
}

impl Slot {
    fn new(producer: Arc<Producer_>) -> Self {
        Slot {
            producer,
            pending: None,
            open: false,
            records: Vec::new(),
        }
    }
}

/// A transaction's commit marker: its epoch, token and where it landed.
#[derive(Debug, Clone, PartialEq)]
struct Marker {
    epoch: u64,
    token: String,
    partition: i32,
    offset: i64,
}

impl Marker {
    fn to_json(&self, records: usize) -> Value {
        json!({
            "epoch": self.epoch,
            "token": self.token,
            "marker_partition": self.partition,
            "marker_offset": self.offset,
            "records": records,
        })
    }

    fn from_json(v: &Value) -> Option<Marker> {
        Some(Marker {
            epoch: v.get("epoch")?.as_u64()?,
            token: v.get("token")?.as_str()?.to_string(),
            partition: i32::try_from(v.get("marker_partition")?.as_i64()?).ok()?,
            offset: v.get("marker_offset")?.as_i64()?,
        })
    }
}

/// Transactional ids fenced beyond a checkpoint's producer pool at a restore: a pool
/// grows by one for each checkpoint aborted in a row, after the checkpoint recorded it.
const FENCE_MARGIN: usize = 4;

/// Groups of messages (one per uncommitted epoch) as checkpoint data: a count, then
/// each group's length and [`encode_records`] bytes.
fn encode_groups(groups: &[&[Record]]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&u32::try_from(groups.len()).unwrap_or(0).to_le_bytes());
    for g in groups {
        let bytes = encode_records(g);
        out.extend_from_slice(&u64::try_from(bytes.len()).unwrap_or(0).to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    out
}

/// Reads what [`encode_groups`] wrote.
fn decode_groups(data: &[u8]) -> std::result::Result<Vec<Vec<Record>>, String> {
    let bad = || "the checkpoint's Kafka messages are unreadable".to_string();
    let (count, mut rest) = data.split_at_checked(4).ok_or_else(bad)?;
    let count = u32::from_le_bytes([count[0], count[1], count[2], count[3]]);
    let mut out = Vec::new();
    for _ in 0..count {
        let (len, r) = rest.split_at_checked(8).ok_or_else(bad)?;
        let len = u64::from_le_bytes(len.try_into().map_err(|_| bad())?);
        let (group, r) = r
            .split_at_checked(usize::try_from(len).map_err(|_| bad())?)
            .ok_or_else(bad)?;
        out.push(decode_records(group)?);
        rest = r;
    }
    Ok(out)
}

/// A Kafka sink subtask; see the module docs.
pub struct KafkaSink {
    config: Arc<Config>,
    subtask: usize,
    parallelism: usize,
    job: String,
    health: Arc<Health>,
    failed: Arc<Mutex<Option<String>>>,
    /// At least once: one producer. Exactly once: a pool (two at first), taking turns
    /// by epoch; it grows while checkpoints are aborted (their transactions stay open
    /// until a later checkpoint completes).
    slots: Vec<Slot>,
    /// The slot taking rows.
    current: usize,
    /// The messages handed to the checkpoint at the last pre-commit.
    data: Option<Vec<u8>>,
    /// Partitions of the commit topic (known after `open`).
    commit_partitions: std::sync::atomic::AtomicUsize,
    encoder: BatchEncoder,
}

impl KafkaSink {
    fn new(config: Arc<Config>, ctx: &SinkContext) -> Self {
        let format = match config.format {
            ValueFormat::Csv => TextFormat::Csv,
            _ => TextFormat::Jsonl,
        };
        KafkaSink {
            subtask: ctx.subtask,
            parallelism: ctx.parallelism,
            job: ctx.job.clone(),
            config,
            health: Arc::new(Health::default()),
            failed: Arc::new(Mutex::new(None)),
            slots: Vec::new(),
            current: 0,
            data: None,
            commit_partitions: std::sync::atomic::AtomicUsize::new(1),
            encoder: BatchEncoder::without_header(format),
        }
    }

    fn error(&self, message: impl Into<String>, retryable: bool) -> EngineError {
        EngineError::connector(
            format!("kafka sink {}", self.config.name),
            message,
            retryable,
        )
    }

    fn exactly_once(&self) -> bool {
        self.config.delivery == Delivery::ExactlyOnce
    }

    /// The transactional-id prefix of this sink.
    fn id_prefix(&self) -> String {
        self.config
            .transactional_id
            .clone()
            .unwrap_or_else(|| format!("weir.{}.{}", self.job, self.config.name))
    }

    /// The commit-marker key of the stream of sink subtask `subtask`.
    fn stream(&self, subtask: usize) -> String {
        format!("{}.{subtask}", self.id_prefix())
    }

    /// Fails with the first delivery error, if any.
    fn check_delivery(&self) -> Result<()> {
        match self.failed.lock().ok().and_then(|f| f.clone()) {
            Some(m) => Err(self.error(
                format!(
                    "{m} (the brokers at {} may be unreachable; run the job again to \
                     resume from its last checkpoint)",
                    self.config.connection.brokers
                ),
                true,
            )),
            None => Ok(()),
        }
    }

    fn producer_config(&self, transactional_id: Option<String>) -> Result<rdkafka::ClientConfig> {
        let timeout_ms = |d: Duration| d.as_millis().to_string();
        let mut fixed = vec![
            ("enable.idempotence", "true".to_string()),
            ("acks", "all".to_string()),
            ("partitioner", self.config.partitioner.clone()),
        ];
        let message_timeout = match &transactional_id {
            Some(_) => self
                .config
                .unavailable_timeout
                .min(self.config.transaction_timeout),
            None => self.config.unavailable_timeout,
        };
        fixed.push(("message.timeout.ms", timeout_ms(message_timeout)));
        if let Some(id) = transactional_id {
            fixed.push(("transactional.id", id));
            fixed.push((
                "transaction.timeout.ms",
                timeout_ms(self.config.transaction_timeout),
            ));
        }
        self.config
            .connection
            .client_config(&fixed)
            .map_err(|e| self.error(e.to_string(), false))
    }

    fn create_producer(&self, transactional_id: Option<String>) -> Result<Arc<Producer_>> {
        let name = format!("sink {}[{}]", self.config.name, self.subtask);
        let context = SinkContextK {
            inner: WeirContext {
                name: Arc::from(name),
                health: self.health.clone(),
            },
            failed: self.failed.clone(),
            last_marker: Arc::new(Mutex::new(None)),
        };
        let producer: Producer_ = self
            .producer_config(transactional_id)?
            .create_with_context(context)
            .map_err(|e| self.error(format!("cannot create the producer: {e}"), false))?;
        Ok(Arc::new(producer))
    }

    /// Runs a blocking call on a producer off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        producer: &Arc<Producer_>,
        f: impl FnOnce(&Producer_) -> T + Send + 'static,
    ) -> Result<T> {
        let p = producer.clone();
        tokio::task::spawn_blocking(move || f(&p))
            .await
            .map_err(|e| self.error(format!("a blocking Kafka call failed: {e}"), false))
    }

    /// A transactional producer with `id`, its old transactions fenced and aborted.
    async fn fenced_producer(&self, id: String) -> Result<Arc<Producer_>> {
        let producer = self.create_producer(Some(id.clone()))?;
        let timeout = self.config.connect_timeout;
        let r = self
            .blocking(&producer, move |p| p.init_transactions(timeout))
            .await?;
        r.map_err(|e| {
            let invalid_timeout = matches!(
                e.rdkafka_error_code(),
                Some(RDKafkaErrorCode::InvalidTransactionTimeout)
            );
            if invalid_timeout {
                self.error(
                    format!(
                        "transaction_timeout ({}) is above the brokers' transaction.max.timeout.ms: \
                         lower `transaction_timeout`",
                        weir_engine::time::format_duration(self.config.transaction_timeout)
                    ),
                    false,
                )
            } else {
                self.error(
                    format!(
                        "cannot start transactions as `{id}` at {} within {} ({e})",
                        self.config.connection.brokers,
                        weir_engine::time::format_duration(timeout)
                    ),
                    true,
                )
            }
        })?;
        Ok(producer)
    }

    /// Checks that the topics exist (creating them when asked) and that the brokers
    /// answer.
    async fn prepare_topics(&self) -> Result<()> {
        let probe = self.create_producer(None)?;
        let timeout = self.config.connect_timeout;
        let metadata = self
            .blocking(&probe, move |p| p.client().fetch_metadata(None, timeout))
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
        let exists = |t: &str| {
            metadata
                .topics()
                .iter()
                .any(|m| m.name() == t && m.error().is_none() && !m.partitions().is_empty())
        };
        let mut create: Vec<(String, i32, i32, bool)> = Vec::new();
        if !exists(&self.config.topic) {
            match self.config.create_topic {
                Some((p, r)) => create.push((self.config.topic.clone(), p, r, false)),
                None => {
                    return Err(self.error(
                        format!(
                            "the topic `{}` does not exist at {} (create it, or set \
                             `create_topic: {{ partitions: N }}`)",
                            self.config.topic, self.config.connection.brokers
                        ),
                        false,
                    ))
                }
            }
        }
        let commit_partitions = metadata
            .topics()
            .iter()
            .find(|m| m.name() == self.config.commit_topic && m.error().is_none())
            .map(|m| m.partitions().len())
            .filter(|&n| n > 0);
        match commit_partitions {
            Some(n) => self
                .commit_partitions
                .store(n, std::sync::atomic::Ordering::Relaxed),
            None if self.exactly_once() => {
                create.push((self.config.commit_topic.clone(), COMMIT_PARTITIONS, 1, true));
                self.commit_partitions.store(
                    usize::try_from(COMMIT_PARTITIONS).unwrap_or(1),
                    std::sync::atomic::Ordering::Relaxed,
                );
            }
            None => {}
        }
        if create.is_empty() {
            return Ok(());
        }
        let admin: AdminClient<rdkafka::client::DefaultClientContext> = self
            .config
            .connection
            .client_config(&[])
            .map_err(|e| self.error(e.to_string(), false))?
            .create()
            .map_err(|e| self.error(format!("cannot create an admin client: {e}"), false))?;
        let topics: Vec<NewTopic<'_>> = create
            .iter()
            .map(|(name, p, r, compact)| {
                let t = NewTopic::new(name, *p, TopicReplication::Fixed(*r));
                if *compact {
                    t.set("cleanup.policy", "compact")
                } else {
                    t
                }
            })
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(timeout));
        let results = tokio::time::timeout(timeout * 2, admin.create_topics(&topics, &opts))
            .await
            .map_err(|_| self.error("creating topics timed out", true))?
            .map_err(|e| self.error(format!("cannot create topics: {e}"), true))?;
        for r in results {
            if let Err((t, code)) = r {
                if code != RDKafkaErrorCode::TopicAlreadyExists {
                    return Err(self.error(format!("cannot create the topic `{t}`: {code}"), false));
                }
            }
        }
        Ok(())
    }

    /// Whether the transaction of `marker` committed: once every transaction on the
    /// marker's partition up to it is decided (the last stable offset is past it; the
    /// restore fenced this job's producers, so only a foreign transaction could hold it
    /// back, and only until the brokers' transaction timeout), its token is looked for
    /// from the marker's offset on with `read_committed`. A later commit of the same
    /// epoch (written again by an earlier recovery) lies further on and counts too.
    async fn committed(&self, stream: &str, marker: &Marker) -> Result<bool> {
        let client = self
            .config
            .connection
            .client_config(&[
                ("group.id", format!("{}.recovery", self.id_prefix())),
                ("enable.auto.commit", "false".into()),
                ("isolation.level", "read_committed".into()),
                ("enable.partition.eof", "true".into()),
                ("auto.offset.reset", "earliest".into()),
            ])
            .map_err(|e| self.error(e.to_string(), false))?;
        let consumer: BaseConsumer = client
            .create()
            .map_err(|e| self.error(format!("cannot create a consumer: {e}"), false))?;
        let topic = self.config.commit_topic.clone();
        let stream = stream.to_string();
        let marker = marker.clone();
        let timeout = self.config.connect_timeout;
        let patience = self.config.transaction_timeout + Duration::from_secs(30);
        let result = tokio::task::spawn_blocking(move || -> std::result::Result<bool, String> {
            let started = std::time::Instant::now();
            // Wait until the marker's transaction (and all before it) is decided.
            loop {
                let (_, stable) = consumer
                    .fetch_watermarks(&topic, marker.partition, timeout)
                    .map_err(|e| e.to_string())?;
                if stable > marker.offset {
                    break;
                }
                if started.elapsed() > patience {
                    return Err(format!(
                        "a transaction on partition {} of `{topic}` stays open before the \
                         marker of epoch {} (offset {}); cannot tell whether it committed",
                        marker.partition, marker.epoch, marker.offset
                    ));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&topic, marker.partition, Offset::Offset(marker.offset))
                .map_err(|e| e.to_string())?;
            consumer.assign(&tpl).map_err(|e| e.to_string())?;
            loop {
                if started.elapsed() > patience {
                    return Err(format!("reading `{topic}` timed out"));
                }
                match consumer.poll(Duration::from_millis(200)) {
                    None => continue,
                    Some(Err(KafkaError::PartitionEOF(_))) => return Ok(false),
                    Some(Err(e)) => return Err(e.to_string()),
                    Some(Ok(m)) => {
                        let (Some(k), Some(v)) = (m.key(), m.payload()) else {
                            continue;
                        };
                        if k != stream.as_bytes() {
                            continue;
                        }
                        let token = serde_json::from_slice::<Value>(v).ok().and_then(|v| {
                            v.get("token").and_then(Value::as_str).map(str::to_string)
                        });
                        if token.as_deref() == Some(marker.token.as_str()) {
                            return Ok(true);
                        }
                    }
                }
            }
        })
        .await
        .map_err(|e| self.error(e.to_string(), false))?;
        result.map_err(|m| self.error(format!("cannot read the commit markers: {m}"), true))
    }

    /// Sends one message with `producer`, waiting while its queue is full.
    async fn send(
        &self,
        producer: &Producer_,
        topic: &str,
        partition: Option<i32>,
        r: &Record,
        opaque: usize,
    ) -> Result<()> {
        let headers = (!r.headers.is_empty()).then(|| {
            r.headers.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
                h.insert(Header {
                    key: k,
                    value: Some(v),
                })
            })
        });
        let mut waited = Duration::ZERO;
        loop {
            let mut record: BaseRecord<'_, [u8], [u8], usize> =
                BaseRecord::with_opaque_to(topic, opaque).payload(&r.value);
            if let Some(k) = &r.key {
                record = record.key(k.as_slice());
            }
            if let Some(p) = partition {
                record = record.partition(p);
            }
            if let Some(h) = &headers {
                record = record.headers(h.clone());
            }
            match producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    // Backpressure: librdkafka's queue is full until the brokers
                    // acknowledge.
                    self.check_delivery()?;
                    if waited >= self.config.unavailable_timeout {
                        return Err(self.error(
                            format!(
                                "the brokers at {} took no message for {}",
                                self.config.connection.brokers,
                                weir_engine::time::format_duration(waited)
                            ),
                            true,
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    waited += Duration::from_millis(2);
                }
                Err((e, _)) => {
                    return Err(
                        self.error(format!("cannot send a message to `{topic}`: {e}"), false)
                    )
                }
            }
        }
    }

    /// The messages of `batch`.
    fn records(&mut self, batch: &RecordBatch) -> Result<Vec<Record>> {
        let n = batch.num_rows();
        let values: Vec<Vec<u8>> = match self.config.format {
            ValueFormat::Raw => {
                let col = batch.column(0);
                (0..n)
                    .map(|i| {
                        if col.is_null(i) {
                            return Vec::new();
                        }
                        match col.data_type() {
                            DataType::Binary => col
                                .as_any()
                                .downcast_ref::<arrow::array::BinaryArray>()
                                .map(|a| a.value(i).to_vec()),
                            DataType::LargeBinary => col
                                .as_any()
                                .downcast_ref::<arrow::array::LargeBinaryArray>()
                                .map(|a| a.value(i).to_vec()),
                            DataType::LargeUtf8 => col
                                .as_any()
                                .downcast_ref::<arrow::array::LargeStringArray>()
                                .map(|a| a.value(i).as_bytes().to_vec()),
                            _ => col
                                .as_any()
                                .downcast_ref::<arrow::array::StringArray>()
                                .map(|a| a.value(i).as_bytes().to_vec()),
                        }
                        .unwrap_or_default()
                    })
                    .collect()
            }
            ValueFormat::Jsonl => {
                let mut buf = Vec::new();
                self.encoder.write(&mut buf, batch)?;
                buf.split(|&b| b == b'\n')
                    .take(n)
                    .map(<[u8]>::to_vec)
                    .collect()
            }
            ValueFormat::Csv => {
                let mut out = Vec::with_capacity(n);
                for i in 0..n {
                    let mut buf = Vec::new();
                    self.encoder.write(&mut buf, &batch.slice(i, 1))?;
                    while buf.last() == Some(&b'\n') {
                        buf.pop();
                    }
                    out.push(buf);
                }
                out
            }
        };
        let opts = FormatOptions::default();
        let formatters = |cols: &[usize]| -> Result<Vec<ArrayFormatter<'_>>> {
            cols.iter()
                .map(|&c| {
                    ArrayFormatter::try_new(batch.column(c).as_ref(), &opts)
                        .map_err(|e| EngineError::arrow("formatting Kafka keys", e))
                })
                .collect()
        };
        let key_cols = &self.config.key;
        let key_f = formatters(key_cols)?;
        let header_cols: Vec<usize> = self.config.headers.iter().map(|(_, c)| *c).collect();
        let header_f = formatters(&header_cols)?;
        let schema = batch.schema();
        let mut out = Vec::with_capacity(n);
        for (i, value) in values.into_iter().enumerate() {
            let key = match key_cols.len() {
                0 => None,
                1 => (!batch.column(key_cols[0]).is_null(i))
                    .then(|| key_f[0].value(i).to_string().into_bytes()),
                _ => {
                    let mut obj = serde_json::Map::new();
                    for (f, &c) in key_f.iter().zip(key_cols) {
                        let v = if batch.column(c).is_null(i) {
                            Value::Null
                        } else {
                            Value::String(f.value(i).to_string())
                        };
                        obj.insert(schema.field(c).name().clone(), v);
                    }
                    Some(Value::Object(obj).to_string().into_bytes())
                }
            };
            let headers = self
                .config
                .headers
                .iter()
                .zip(&header_f)
                .filter(|((_, c), _)| !batch.column(*c).is_null(i))
                .map(|((h, _), f)| (h.clone(), f.value(i).to_string().into_bytes()))
                .collect();
            out.push(Record {
                key,
                value,
                headers,
            });
        }
        Ok(out)
    }

    /// Fences transactional ids `from..to` of `stream` (aborting what they left open).
    async fn fence(&self, stream: &str, from: usize, to: usize) -> Result<()> {
        for k in from..to {
            let _ = self.fenced_producer(format!("{stream}.{k}")).await?;
        }
        Ok(())
    }

    /// Begins a transaction on the current slot if none is open.
    fn ensure_transaction(&mut self) -> Result<()> {
        if !self.exactly_once() {
            return Ok(());
        }
        let slot = &mut self.slots[self.current];
        if !slot.open {
            slot.producer.begin_transaction().map_err(|e| {
                EngineError::connector(
                    format!("kafka sink {}", self.config.name),
                    format!("cannot begin a transaction: {e}"),
                    true,
                )
            })?;
            slot.open = true;
        }
        Ok(())
    }

    /// Writes `records` and the marker (`epoch`, `token`) of `stream` in one
    /// transaction of `slot`, and commits it (recovery).
    async fn write_again(
        &mut self,
        slot: usize,
        stream: &str,
        epoch: u64,
        token: &str,
        records: &[Record],
    ) -> Result<()> {
        let producer = self.slots[slot].producer.clone();
        producer
            .begin_transaction()
            .map_err(|e| self.error(format!("cannot begin a transaction: {e}"), true))?;
        let topic = self.config.topic.clone();
        for r in records {
            self.send(&producer, &topic, None, r, 0).await?;
        }
        self.send_marker(&producer, stream, epoch, token).await?;
        let timeout = self.config.transaction_timeout;
        self.blocking(&producer, move |p| p.commit_transaction(timeout))
            .await?
            .map_err(|e| {
                self.error(
                    format!("cannot commit the restored epoch {epoch}: {e}"),
                    true,
                )
            })?;
        self.check_delivery()
    }

    /// Sends the commit marker of (`stream`, `epoch`, `token`); its position is known
    /// once the producer is flushed ([`KafkaSink::marker_position`]).
    async fn send_marker(
        &self,
        producer: &Producer_,
        stream: &str,
        epoch: u64,
        token: &str,
    ) -> Result<()> {
        let marker = Record {
            key: Some(stream.as_bytes().to_vec()),
            value: json!({ "epoch": epoch, "token": token })
                .to_string()
                .into_bytes(),
            headers: Vec::new(),
        };
        let topic = self.config.commit_topic.clone();
        let partition = marker_partition(
            stream,
            self.commit_partitions
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        if let Ok(mut last) = producer.context().last_marker.lock() {
            *last = None;
        }
        self.send(producer, &topic, Some(partition), &marker, MARKER)
            .await
    }

    /// Where the marker `producer` sent last landed, after a flush.
    fn marker_position(&self, producer: &Producer_) -> Result<(i32, i64)> {
        producer
            .context()
            .last_marker
            .lock()
            .ok()
            .and_then(|m| *m)
            .ok_or_else(|| self.error("the commit marker was flushed but not acknowledged", true))
    }
}

#[async_trait::async_trait]
impl Sink for KafkaSink {
    async fn open(&mut self, ctx: &SinkContext) -> Result<()> {
        self.subtask = ctx.subtask;
        self.parallelism = ctx.parallelism;
        self.job = ctx.job.clone();
        if self.exactly_once() && !ctx.exactly_once {
            return Err(self.error(
                "delivery: exactly_once needs checkpoints (Kafka transactions are committed \
                 with them): add a `checkpoint:` section, or write `delivery: at_least_once`",
                false,
            ));
        }
        self.prepare_topics().await?;
        self.slots.clear();
        if self.exactly_once() {
            let stream = self.stream(self.subtask);
            for k in 0..2 {
                let producer = self.fenced_producer(format!("{stream}.{k}")).await?;
                self.slots.push(Slot::new(producer));
            }
        } else {
            self.slots.push(Slot::new(self.create_producer(None)?));
        }
        self.current = 0;
        Ok(())
    }

    async fn write_batch(&mut self, batch: RecordBatch) -> Result<()> {
        self.check_delivery()?;
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let records = self.records(&batch)?;
        self.ensure_transaction()?;
        let producer = self.slots[self.current].producer.clone();
        let topic = self.config.topic.clone();
        for r in &records {
            self.send(&producer, &topic, None, r, 0).await?;
        }
        if self.exactly_once() {
            self.slots[self.current].records.extend(records);
        }
        Ok(())
    }

    async fn pre_commit(&mut self, epoch: u64) -> Result<Value> {
        self.check_delivery()?;
        let current = self.current;
        let producer = self.slots[current].producer.clone();
        if !self.exactly_once() {
            let timeout = self.config.unavailable_timeout;
            self.blocking(&producer, move |p| p.flush(timeout))
                .await?
                .map_err(|e| {
                    self.error(
                        format!("cannot flush to {}: {e}", self.config.connection.brokers),
                        true,
                    )
                })?;
            self.check_delivery()?;
            self.health.answered();
            return Ok(Value::Null);
        }
        let stream = self.stream(self.subtask);
        if self.slots[current].open {
            let token = new_token();
            self.send_marker(&producer, &stream, epoch, &token).await?;
            let timeout = self.config.unavailable_timeout;
            self.blocking(&producer, move |p| p.flush(timeout))
                .await?
                .map_err(|e| {
                    self.error(
                        format!(
                            "cannot flush epoch {epoch} to {}: {e}",
                            self.config.connection.brokers
                        ),
                        true,
                    )
                })?;
            self.check_delivery()?;
            let (partition, offset) = self.marker_position(&producer)?;
            self.slots[current].pending = Some(Marker {
                epoch,
                token,
                partition,
                offset,
            });
            // The next epoch's rows go to a free producer: the others hold
            // transactions waiting for their checkpoints.
            match self
                .slots
                .iter()
                .position(|s| !s.open && s.pending.is_none())
            {
                Some(free) => self.current = free,
                None => {
                    let k = self.slots.len();
                    let producer = self.fenced_producer(format!("{stream}.{k}")).await?;
                    self.slots.push(Slot::new(producer));
                    self.current = k;
                }
            }
        }
        // Every transaction not committed yet goes into this checkpoint: one of an
        // aborted checkpoint is committed with this one.
        let mut pending: Vec<(&Marker, &[Record])> = self
            .slots
            .iter()
            .filter_map(|s| s.pending.as_ref().map(|m| (m, s.records.as_slice())))
            .collect();
        pending.sort_by_key(|(m, _)| m.epoch);
        let list: Vec<Value> = pending.iter().map(|(m, r)| m.to_json(r.len())).collect();
        let groups: Vec<&[Record]> = pending.iter().map(|(_, r)| *r).collect();
        self.data = (!groups.is_empty()).then(|| encode_groups(&groups));
        Ok(json!({ "stream": stream, "pool": self.slots.len(), "pending": list }))
    }

    fn checkpoint_data(&mut self) -> Option<Vec<u8>> {
        self.data.take()
    }

    async fn commit(&mut self, epoch: u64) -> Result<()> {
        if !self.exactly_once() {
            return Ok(());
        }
        let mut due: Vec<(u64, usize)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(k, s)| s.pending.as_ref().map(|m| (m.epoch, k)))
            .filter(|(e, _)| *e <= epoch)
            .collect();
        due.sort();
        for (e, k) in due {
            let producer = self.slots[k].producer.clone();
            // Unreachable brokers fail the job after `unavailable_timeout`; a commit
            // given up on is settled by the restart's recovery (marker committed or
            // not), so waiting longer buys nothing.
            let timeout = self
                .config
                .transaction_timeout
                .min(self.config.unavailable_timeout);
            self.blocking(&producer, move |p| p.commit_transaction(timeout))
                .await?
                .map_err(|e2| {
                    self.error(
                        format!(
                            "cannot commit epoch {e} at {} within {}: {e2}. Run the job again \
                             to resume from its last checkpoint (the restart settles this \
                             transaction)",
                            self.config.connection.brokers,
                            weir_engine::time::format_duration(timeout)
                        ),
                        true,
                    )
                })?;
            weir_engine::fault::point("during_commit");
            let slot = &mut self.slots[k];
            slot.pending = None;
            slot.open = false;
            slot.records = Vec::new();
            tracing::debug!(sink = %self.config.name, subtask = self.subtask, epoch = e, "kafka transaction committed");
        }
        self.health.answered();
        self.check_delivery()
    }

    async fn recover(&mut self, recovery: &SinkRecovery) -> Result<()> {
        if !self.exactly_once() {
            return Ok(());
        }
        // Fence every producer the checkpoint's pool may have had (and a margin: the
        // pool may have grown after it), and, after a change of parallelism, those of
        // old subtasks that no longer exist (subtask 0 does it once).
        let pool = recovery
            .pending
            .iter()
            .filter_map(|p| p.get("pool").and_then(Value::as_u64))
            .max()
            .and_then(|p| usize::try_from(p).ok())
            .unwrap_or(2);
        let own = self.stream(self.subtask);
        self.fence(&own, 2, pool + FENCE_MARGIN).await?;
        if self.subtask == 0 && recovery.old_parallelism > self.parallelism {
            for o in self.parallelism..recovery.old_parallelism {
                let stream = self.stream(o);
                self.fence(&stream, 0, pool + FENCE_MARGIN).await?;
            }
        }
        // (stream, marker, messages) of every transaction the checkpoint holds.
        let mut wanted: Vec<(String, Marker, Vec<Record>)> = Vec::new();
        for (i, p) in recovery.pending.iter().enumerate() {
            let Some(stream) = p.get("stream").and_then(Value::as_str) else {
                continue;
            };
            let list = p
                .get("pending")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if list.is_empty() {
                continue;
            }
            let data = recovery
                .data
                .get(i)
                .and_then(Option::as_ref)
                .ok_or_else(|| {
                    self.error(
                        format!("the checkpoint holds no copy of {stream}'s uncommitted messages"),
                        false,
                    )
                })?;
            let groups = decode_groups(data).map_err(|m| self.error(m, false))?;
            if groups.len() != list.len() {
                return Err(self.error(
                    "the checkpoint's Kafka messages do not match its pre-commit",
                    false,
                ));
            }
            for (entry, records) in list.iter().zip(groups) {
                let marker = Marker::from_json(entry)
                    .ok_or_else(|| self.error(format!("unreadable pre-commit {entry}"), false))?;
                wanted.push((stream.to_string(), marker, records));
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        wanted.sort_by_key(|(_, m, _)| m.epoch);
        for (stream, marker, records) in wanted {
            if self.committed(&stream, &marker).await? {
                tracing::debug!(sink = %self.config.name, %stream, epoch = marker.epoch, "epoch already committed");
                continue;
            }
            tracing::info!(sink = %self.config.name, %stream, epoch = marker.epoch, messages = records.len(), "writing an epoch whose commit was lost");
            self.write_again(0, &stream, marker.epoch, &marker.token, &records)
                .await?;
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        // Without checkpoints (at least once): everything delivered before the end.
        if let Some(slot) = self.slots.first() {
            let producer = slot.producer.clone();
            let timeout = self.config.unavailable_timeout;
            self.blocking(&producer, move |p| p.flush(timeout))
                .await?
                .map_err(|e| {
                    self.error(
                        format!("cannot flush to {}: {e}", self.config.connection.brokers),
                        true,
                    )
                })?;
        }
        self.check_delivery()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_of_messages_read_back() {
        let a = vec![Record {
            key: None,
            value: b"a".to_vec(),
            headers: vec![],
        }];
        let b: Vec<Record> = Vec::new();
        let data = encode_groups(&[&a, &b]);
        assert_eq!(decode_groups(&data), Ok(vec![a, b]));
        assert!(decode_groups(&data[..data.len() - 2]).is_err());
        assert_eq!(decode_groups(&encode_groups(&[])), Ok(vec![]));
    }

    #[test]
    fn checkpointed_messages_read_back() {
        let records = vec![
            Record {
                key: None,
                value: b"{}".to_vec(),
                headers: vec![],
            },
            Record {
                key: Some(b"k".to_vec()),
                value: Vec::new(),
                headers: vec![("h".into(), b"v".to_vec()), ("e".into(), Vec::new())],
            },
        ];
        let data = encode_records(&records);
        assert_eq!(decode_records(&data), Ok(records));
        assert!(decode_records(&data[..data.len() - 1]).is_err());
        assert!(decode_records(&[]).is_err());
        assert_eq!(decode_records(&[1]), Ok(vec![]));
    }
}
