//! Publishing replayed dead letters into a Kafka source's topic, exactly once
//! (`weir dlq replay` for a `type: kafka` source).
//!
//! The records and a **ledger** message (the replay's id and the ids of the dead letters
//! it carries) are written in one Kafka transaction: the ledger topic (default
//! `__weir_dlq_replays`, one partition, created when missing) says exactly which entries
//! reached the input topic. Every replay into a ledger uses the same transactional id,
//! so a replay first fences whatever an earlier one (killed, or running concurrently)
//! left open, and only then reads the ledger with `read_committed`: an entry found there
//! is never published again, one not found was not published (its transaction aborted).

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde_json::Value;

use super::Connection;

/// The default ledger topic of replays into Kafka.
pub const DEFAULT_LEDGER_TOPIC: &str = "__weir_dlq_replays";

/// Where replayed records go: a Kafka source's cluster and topic.
#[derive(Debug, Clone)]
pub struct ReplayTarget {
    /// Bootstrap servers.
    pub brokers: String,
    /// The source's librdkafka `properties` (`${NAME}` expanded from the environment).
    pub properties: BTreeMap<String, String>,
    /// The topic the records are written to.
    pub topic: String,
    /// The ledger topic.
    pub ledger_topic: String,
    /// How long each call to the brokers may take.
    pub timeout: Duration,
}

/// A transactional producer for one ledger, its predecessors fenced.
pub struct ReplayPublisher {
    target: ReplayTarget,
    config: ClientConfig,
    producer: BaseProducer,
}

fn config(target: &ReplayTarget) -> Result<ClientConfig, String> {
    Connection {
        brokers: target.brokers.clone(),
        properties: target.properties.clone(),
        connect_timeout: None,
    }
    .client_config(&[])
    .map_err(|e| format!("{}: {}", e.path, e.message))
}

impl ReplayPublisher {
    /// Checks the topic, creates the ledger topic when missing, and with `fence` starts
    /// transactions as `weir.dlq-replay.<ledger topic>` (aborting any left open under
    /// that id; a dry run does not).
    pub async fn open(target: ReplayTarget, fence: bool) -> Result<Self, String> {
        let base = config(&target)?;
        let admin: AdminClient<DefaultClientContext> = base
            .create()
            .map_err(|e| format!("cannot create a Kafka admin client: {e}"))?;
        let metadata = admin
            .inner()
            .fetch_metadata(Some(&target.topic), target.timeout)
            .map_err(|e| format!("cannot reach the brokers at {}: {e}", target.brokers))?;
        let exists = metadata
            .topics()
            .iter()
            .any(|t| t.name() == target.topic && t.error().is_none() && !t.partitions().is_empty());
        if !exists {
            return Err(format!("the topic `{}` does not exist", target.topic));
        }
        let ledger = NewTopic::new(&target.ledger_topic, 1, TopicReplication::Fixed(1));
        let opts = AdminOptions::new().operation_timeout(Some(target.timeout));
        let results = admin
            .create_topics([&ledger], &opts)
            .await
            .map_err(|e| format!("cannot create the ledger topic: {e}"))?;
        for r in results {
            if let Err((t, code)) = r {
                if code != RDKafkaErrorCode::TopicAlreadyExists {
                    return Err(format!("cannot create the ledger topic `{t}`: {code}"));
                }
            }
        }
        let mut pc = base.clone();
        pc.set(
            "transactional.id",
            format!("weir.dlq-replay.{}", target.ledger_topic),
        );
        let producer: BaseProducer = pc
            .create()
            .map_err(|e| format!("cannot create a Kafka producer: {e}"))?;
        if fence {
            producer
                .init_transactions(target.timeout)
                .map_err(|e| format!("cannot start transactions at {}: {e}", target.brokers))?;
        }
        Ok(ReplayPublisher {
            target,
            config: base,
            producer,
        })
    }

    /// The ids of every entry a committed replay carried.
    pub fn replayed(&self) -> Result<HashSet<String>, String> {
        let mut c = self.config.clone();
        c.set("group.id", "weir-dlq-replay")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true");
        let consumer: BaseConsumer = c
            .create()
            .map_err(|e| format!("cannot create a Kafka consumer: {e}"))?;
        let topic = &self.target.ledger_topic;
        let (low, high) = consumer
            .fetch_watermarks(topic, 0, self.target.timeout)
            .map_err(|e| format!("cannot read the ledger topic `{topic}`: {e}"))?;
        let mut done = HashSet::new();
        if high <= low {
            return Ok(done);
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Beginning)
            .map_err(|e| e.to_string())?;
        consumer.assign(&tpl).map_err(|e| e.to_string())?;
        let started = Instant::now();
        loop {
            if started.elapsed() > self.target.timeout * 3 {
                return Err(format!("reading the ledger topic `{topic}` timed out"));
            }
            match consumer.poll(Duration::from_millis(200)) {
                None => continue,
                Some(Err(KafkaError::PartitionEOF(_))) => return Ok(done),
                Some(Err(e)) => return Err(format!("cannot read the ledger topic `{topic}`: {e}")),
                Some(Ok(m)) => {
                    let v = m
                        .payload()
                        .and_then(|p| serde_json::from_slice::<Value>(p).ok());
                    for e in v
                        .as_ref()
                        .and_then(|v| v.get("entries"))
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        if let Some(id) = e.as_str() {
                            done.insert(id.to_string());
                        }
                    }
                }
            }
        }
    }

    /// Writes `values` to the topic and `ledger` (a JSON object naming the entries) to
    /// the ledger topic, in one transaction.
    pub fn publish(&self, key: &str, values: &[Vec<u8>], ledger: &Value) -> Result<(), String> {
        let p = &self.producer;
        let t = self.target.timeout;
        p.begin_transaction()
            .map_err(|e| format!("cannot begin a transaction: {e}"))?;
        let result = (|| {
            for v in values {
                self.send(&self.target.topic, None, v)?;
            }
            let l = serde_json::to_vec(ledger).map_err(|e| e.to_string())?;
            self.send(&self.target.ledger_topic, Some(key), &l)?;
            p.flush(t)
                .map_err(|e| format!("cannot deliver the records: {e}"))?;
            weir_engine::fault::point("replay_produced");
            p.commit_transaction(t)
                .map_err(|e| format!("cannot commit the transaction: {e}"))
        })();
        if result.is_err() {
            let _ = p.abort_transaction(t);
        }
        result
    }

    /// Sends one message, waiting while the producer's queue is full.
    fn send(&self, topic: &str, key: Option<&str>, value: &[u8]) -> Result<(), String> {
        let mut record: BaseRecord<'_, str, [u8]> = BaseRecord::to(topic).payload(value);
        if let Some(k) = key {
            record = record.key(k);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    self.producer.poll(Duration::from_millis(50));
                }
                Err((e, _)) => return Err(format!("cannot send to `{topic}`: {e}")),
            }
        }
    }
}
