//! Kafka helpers for `weir bench`: how many messages a topic holds, deleting the
//! topics a run wrote, and what a plain librdkafka client achieves on the same broker
//! (produce and consume rates, no decoding, no engine): the ceiling a reader compares
//! weir's Kafka → Kafka figures with.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

/// What a plain client moved, and how fast.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Messages moved.
    pub messages: u64,
    /// Bytes of their values.
    pub bytes: u64,
    /// Wall-clock time it took.
    pub seconds: f64,
}

impl Rate {
    /// Messages per second.
    pub fn messages_per_s(&self) -> f64 {
        self.messages as f64 / self.seconds.max(1e-9)
    }

    /// Value bytes per second, in MB (10^6).
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds.max(1e-9)
    }
}

fn config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    c
}

const TIMEOUT: Duration = Duration::from_secs(10);

/// Messages in `topic` (the sum over partitions of high minus low watermark), `None`
/// when there is no such topic.
pub fn topic_messages(brokers: &str, topic: &str) -> Result<Option<u64>, String> {
    let c: BaseConsumer = config(brokers)
        .set("group.id", "weir-bench")
        .create()
        .map_err(|e| e.to_string())?;
    let md = c
        .fetch_metadata(Some(topic), TIMEOUT)
        .map_err(|e| format!("cannot reach the brokers at {brokers}: {e}"))?;
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
        return Ok(None);
    };
    if t.error().is_some() || t.partitions().is_empty() {
        return Ok(None);
    }
    let mut total = 0u64;
    for p in t.partitions() {
        let (lo, hi) = c
            .fetch_watermarks(topic, p.id(), TIMEOUT)
            .map_err(|e| format!("cannot read the offsets of {topic}/{}: {e}", p.id()))?;
        total += u64::try_from(hi - lo).unwrap_or(0);
    }
    Ok(Some(total))
}

fn admin(brokers: &str) -> Result<AdminClient<DefaultClientContext>, String> {
    config(brokers).create().map_err(|e| e.to_string())
}

/// Deletes `topics` (those missing are fine).
pub async fn delete_topics(brokers: &str, topics: &[&str]) -> Result<(), String> {
    let a = admin(brokers)?;
    let results = a
        .delete_topics(
            topics,
            &AdminOptions::new().operation_timeout(Some(TIMEOUT)),
        )
        .await
        .map_err(|e| format!("cannot delete topics: {e}"))?;
    for r in results {
        if let Err((t, code)) = r {
            if code != RDKafkaErrorCode::UnknownTopicOrPartition {
                return Err(format!("cannot delete the topic `{t}`: {code}"));
            }
        }
    }
    Ok(())
}

/// Creates `topic` with `partitions` partitions.
pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) -> Result<(), String> {
    let a = admin(brokers)?;
    let t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let results = a
        .create_topics([&t], &AdminOptions::new().operation_timeout(Some(TIMEOUT)))
        .await
        .map_err(|e| format!("cannot create `{topic}`: {e}"))?;
    for r in results {
        if let Err((t, code)) = r {
            return Err(format!("cannot create the topic `{t}`: {code}"));
        }
    }
    Ok(())
}

/// Reads every message of `topic` from its start with a plain consumer (librdkafka's
/// defaults but for the pre-fetch bound weir's source sets, `read_committed`), up to
/// the end each partition had when it started.
pub fn plain_consume(brokers: &str, topic: &str) -> Result<Rate, String> {
    let c: BaseConsumer = config(brokers)
        .set("group.id", "weir-bench-plain")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .set("queued.max.messages.kbytes", "16384")
        .create()
        .map_err(|e| e.to_string())?;
    let md = c
        .fetch_metadata(Some(topic), TIMEOUT)
        .map_err(|e| format!("cannot reach the brokers at {brokers}: {e}"))?;
    let parts: Vec<i32> = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    if parts.is_empty() {
        return Err(format!("no topic `{topic}` at {brokers}"));
    }
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .map_err(|e| e.to_string())?;
    }
    let start = Instant::now();
    c.assign(&tpl).map_err(|e| e.to_string())?;
    let mut ended = std::collections::HashSet::new();
    let (mut messages, mut bytes) = (0u64, 0u64);
    let mut last = Instant::now();
    while ended.len() < parts.len() {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                messages += 1;
                bytes += m.payload_len() as u64;
                last = Instant::now();
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                ended.insert(p);
            }
            Some(Err(e)) => return Err(format!("reading `{topic}`: {e}")),
            None if last.elapsed() > Duration::from_secs(30) => {
                return Err(format!("reading `{topic}` stalled for 30 s"))
            }
            None => {}
        }
    }
    Ok(Rate {
        messages,
        bytes,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Writes `count` messages (the `samples`, round-robin) to a new topic of
/// `partitions` partitions with a plain producer (librdkafka's defaults: idempotent
/// off, `acks=all`, `linger.ms=5`), then deletes it.
pub async fn plain_produce(
    brokers: &str,
    topic: &str,
    partitions: i32,
    samples: &[Vec<u8>],
    count: u64,
) -> Result<Rate, String> {
    if samples.is_empty() {
        return Err("no sample messages".into());
    }
    create_topic(brokers, topic, partitions).await?;
    let b = brokers.to_string();
    let t = topic.to_string();
    let samples = samples.to_vec();
    let rate = tokio::task::spawn_blocking(move || -> Result<Rate, String> {
        let p: BaseProducer = config(&b).create().map_err(|e| e.to_string())?;
        let start = Instant::now();
        let mut bytes = 0u64;
        for i in 0..count {
            let payload = &samples[(i % samples.len() as u64) as usize];
            bytes += payload.len() as u64;
            loop {
                match p.send(BaseRecord::<'_, (), [u8]>::to(&t).payload(payload.as_slice())) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        p.poll(Duration::from_millis(1));
                    }
                    Err((e, _)) => return Err(format!("producing to `{t}`: {e}")),
                }
            }
            p.poll(Duration::ZERO);
        }
        p.flush(Duration::from_secs(120))
            .map_err(|e| format!("flushing `{t}`: {e}"))?;
        Ok(Rate {
            messages: count,
            bytes,
            seconds: start.elapsed().as_secs_f64(),
        })
    })
    .await
    .map_err(|e| e.to_string())??;
    delete_topics(brokers, &[topic]).await?;
    Ok(rate)
}

/// Up to `max` message values of `topic`, from its start.
pub fn sample_messages(brokers: &str, topic: &str, max: usize) -> Result<Vec<Vec<u8>>, String> {
    let c: BaseConsumer = config(brokers)
        .set("group.id", "weir-bench-plain")
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| e.to_string())?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .map_err(|e| e.to_string())?;
    c.assign(&tpl).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let start = Instant::now();
    while out.len() < max && start.elapsed() < TIMEOUT {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            out.push(m.payload().unwrap_or_default().to_vec());
        }
    }
    Ok(out)
}
