//! Kafka against real brokers (DESIGN §6, NOTES): `scripts/test.sh` starts noida-db
//! (transactions and `read_committed` done faithfully: the exactly-once tests run on
//! it) as `WEIR_TEST_KAFKA_BROKERS` and tansu (a second broker for the paths without
//! transactions) as `WEIR_TEST_TANSU_BROKERS`. Without them the tests that need them
//! are skipped with a note, except under `CI=true`, where they fail.
//!
//! - Kafka → weir → Kafka with exactly-once delivery, killed (SIGKILL) at each crash
//!   point at parallelism 1 and 4, and by a random series of kills with restarts at
//!   changing parallelism: a `read_committed` consumer sees exactly the output of a
//!   failure-free run, message for message.
//! - Per-partition watermarks: a partition far behind another gives the same windows
//!   as an oracle; an idle partition does not stall the windows.
//! - Start-up errors name what is wrong; bad messages are dead letters with topic,
//!   partition and offset; backpressure keeps memory flat with millions of messages
//!   waiting.

#![allow(clippy::unwrap_used)] // test code: a failed set-up step should just fail

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::common::{block_on, under_ci};

/// The broker under `var`, or `None` (skipped with a note; under CI a failure).
fn brokers(var: &str, test: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(b) if !b.trim().is_empty() => Some(b),
        _ => {
            assert!(
                !under_ci(),
                "{test}: {var} is not set but CI=true: scripts/test.sh starts the brokers \
                 (see scripts/services.sh)"
            );
            eprintln!("note: {test} skipped: {var} is not set (run scripts/test.sh)");
            None
        }
    }
}

/// noida-db: transactions and `read_committed` faithful.
pub(crate) fn noida(test: &str) -> Option<String> {
    brokers("WEIR_TEST_KAFKA_BROKERS", test)
}

/// Every broker the non-transactional paths run on.
fn all_brokers(test: &str) -> Vec<String> {
    [
        brokers("WEIR_TEST_KAFKA_BROKERS", test),
        brokers("WEIR_TEST_TANSU_BROKERS", test),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// A name no other test run uses.
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

pub(crate) fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let r = block_on(admin.create_topics([&t], &AdminOptions::new())).unwrap();
    for x in r {
        x.unwrap();
    }
}

/// Produces `(partition, value)` messages.
pub(crate) fn produce(brokers: &str, topic: &str, messages: &[(i32, Option<String>)]) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    for (partition, value) in messages {
        loop {
            let mut r: BaseRecord<'_, (), str> = BaseRecord::to(topic).partition(*partition);
            if let Some(v) = value {
                r = r.payload(v.as_str());
            }
            match p.send(r) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(_), _)) => {
                    p.poll(Duration::from_millis(10));
                }
                Err((e, _)) => panic!("produce: {e}"),
            }
        }
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(60)).unwrap();
}

/// Every committed message of `topic` (values), sorted.
fn read_committed(brokers: &str, topic: &str) -> Vec<String> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("reader"))
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let parts: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut done = std::collections::HashSet::new();
    let mut out = Vec::new();
    let start = Instant::now();
    while done.len() < parts.len() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "reading {topic} timed out"
        );
        match c.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                done.insert(p);
            }
            Some(Err(e)) => panic!("read {topic}: {e}"),
            Some(Ok(m)) => {
                out.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
            }
        }
    }
    out.sort();
    out
}

const SERVICES: [&str; 5] = ["api", "auth", "checkout", "payments", "search"];

/// Log lines spread over `partitions`: event times increasing per partition with
/// seconds of disorder, some malformed.
fn logs(partitions: i32, per_partition: usize, seed: u64) -> Vec<(i32, Option<String>)> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut out = Vec::new();
    for p in 0..partitions {
        let mut t: i64 = 1_767_225_600_000;
        for i in 0..per_partition {
            t += rng.random_range(0..400);
            let ts = t - rng.random_range(0..3_000);
            if i % 997 == 13 {
                out.push((p, Some("{\"ts\": not json".to_string())));
                continue;
            }
            let service = SERVICES[rng.random_range(0..SERVICES.len())];
            let level = if rng.random_range(0..10) < 4 {
                "ERROR"
            } else {
                "INFO"
            };
            out.push((
                p,
                Some(format!(
                    "{{\"ts\": {ts}, \"service\": \"{service}\", \"level\": \"{level}\", \"message\": \"m{p}-{i}\"}}"
                )),
            ));
        }
    }
    out
}

/// A Kafka → Kafka job reading `input` (bounded) and writing `output` exactly once.
fn job_yaml(
    name: &str,
    kind: &str,
    brokers: &str,
    input: &str,
    output: &str,
    parallelism: usize,
) -> String {
    let head = format!(
        "name: {name}\nparallelism: {parallelism}\nbatch_size: 64\n\
         checkpoint: {{ interval: 30ms, storage: ckpt, retain: 2 }}\n\
         sources:\n  logs:\n    type: kafka\n    brokers: \"{brokers}\"\n    topic: {input}\n\
         \x20   end: latest\n    rate: 4000\n    format: json\n\
         \x20   schema: {{ ts: timestamp, service: string, level: string, message: string }}\n\
         \x20   event_time: {{ field: ts, max_out_of_orderness: 5s, max_future: none }}\n"
    );
    let steps = match kind {
        "window" => "steps:\n  errors: { from: logs, filter: \"level = 'ERROR'\" }\n  counts:\n    from: errors\n    window: { tumbling: 1m, key: [service], aggregate: { errors: \"count(*)\" } }\n",
        _ => "steps:\n  counts: { from: logs, filter: \"level = 'ERROR'\" }\n",
    };
    format!(
        "{head}{steps}sinks:\n  out:\n    from: counts\n    type: kafka\n    brokers: \"{brokers}\"\n\
         \x20   topic: {output}\n    key: service\n    create_topic: {{ partitions: 3 }}\n\
         dead_letter: {{ type: file, path: out/dead_letter.jsonl }}\n"
    )
}

pub(crate) fn weir_cmd(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_weir"));
    c.args(["run", "job.yaml", "--no-progress"])
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// Runs until the job exits successfully; the first run with `WEIR_FAULT=fault`.
/// Returns how many runs were killed.
pub(crate) fn run_to_end(dir: &Path, fault: Option<&str>) -> usize {
    for (killed, attempt) in (0..20).enumerate() {
        let mut c = weir_cmd(dir);
        if let (Some(f), 0) = (fault, attempt) {
            c.env("WEIR_FAULT", f);
        }
        let out = c.output().unwrap();
        if out.status.success() {
            return killed;
        }
        assert_eq!(
            out.status.signal(),
            Some(9),
            "the run failed otherwise than by SIGKILL: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    panic!("the job did not finish after 20 runs");
}

/// The lines of the published files under `out/` (dead letters, window output), sorted.
fn published_lines(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir.join("out")) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let text = std::fs::read_to_string(e.path()).unwrap();
            out.extend(text.lines().map(crate::common::without_time));
        }
    }
    out.sort();
    out
}

/// Output (committed messages, dead letters) of one job over `input`, failure-free
/// or with `fault`.
fn run_job(
    brokers: &str,
    kind: &str,
    input: &str,
    parallelism: usize,
    fault: Option<&str>,
) -> (Vec<String>, Vec<String>, usize) {
    let dir = tempfile::tempdir().unwrap();
    let output = unique("out");
    let name = unique(&format!("kafka-{kind}"));
    std::fs::write(
        dir.path().join("job.yaml"),
        job_yaml(&name, kind, brokers, input, &output, parallelism),
    )
    .unwrap();
    let killed = run_to_end(dir.path(), fault);
    (
        read_committed(brokers, &output),
        published_lines(dir.path()),
        killed,
    )
}

fn input_topic(brokers: &str, seed: u64) -> String {
    let topic = unique("logs");
    create_topic(brokers, &topic, 4);
    produce(brokers, &topic, &logs(4, 1_500, seed));
    topic
}

fn check_point(kind: &str, point: &str) {
    let Some(b) = noida(&format!("kafka {kind} {point}")) else {
        return;
    };
    let input = input_topic(&b, 5);
    let (want, want_dead, _) = run_job(&b, kind, &input, 1, None);
    assert!(want.len() > 20, "too little output: {}", want.len());
    assert_eq!(want_dead.len(), 4 * 2, "the malformed lines: {want_dead:?}");
    for p in [1, 4] {
        let fault = format!("{point}:2");
        let (got, dead, killed) = run_job(&b, kind, &input, p, Some(&fault));
        assert_eq!(
            killed, 1,
            "{kind} p={p} {fault}: the crash point was not reached"
        );
        assert_eq!(got.len(), want.len(), "{kind} p={p} {fault}: message count");
        assert_eq!(got, want, "{kind} p={p} {fault}: committed output differs");
        assert_eq!(dead, want_dead, "{kind} p={p} {fault}: dead letters differ");
    }
}

#[test]
fn kafka_exactly_once_through_a_crash_during_processing() {
    check_point("window", "processing");
    check_point("stateless", "processing");
}

#[test]
fn kafka_exactly_once_through_a_crash_while_writing_a_checkpoint() {
    check_point("window", "checkpoint_write");
    check_point("stateless", "checkpoint_write");
}

#[test]
fn kafka_exactly_once_through_a_crash_after_the_checkpoint_before_the_commit() {
    check_point("window", "before_commit");
    check_point("stateless", "before_commit");
}

#[test]
fn kafka_exactly_once_through_a_crash_during_the_commit() {
    check_point("window", "during_commit");
    check_point("stateless", "during_commit");
}

/// Twenty kills at random moments, from outside, with restarts at changing
/// parallelism (partitions and key groups move between subtasks).
#[test]
fn kafka_exactly_once_through_a_random_series_of_kills() {
    let Some(b) = noida("kafka random kills") else {
        return;
    };
    for (kind, seed) in [("window", 21u64), ("stateless", 22)] {
        let input = input_topic(&b, seed);
        let (want, want_dead, _) = run_job(&b, kind, &input, 2, None);
        let dir = tempfile::tempdir().unwrap();
        let output = unique("out");
        let name = unique(&format!("kafka-kills-{kind}"));
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut kills = 0;
        let mut finished = false;
        for round in 0..40 {
            let p = [2, 4, 1, 3][round % 4];
            std::fs::write(
                dir.path().join("job.yaml"),
                job_yaml(&name, kind, &b, &input, &output, p),
            )
            .unwrap();
            let mut child = weir_cmd(dir.path()).stderr(Stdio::null()).spawn().unwrap();
            std::thread::sleep(Duration::from_millis(rng.random_range(100..700)));
            if kills < 20 {
                match child.try_wait().unwrap() {
                    Some(s) => {
                        assert!(s.success(), "{kind}: a run failed: {s}");
                        finished = true;
                        break;
                    }
                    None => {
                        child.kill().unwrap();
                        child.wait().unwrap();
                        kills += 1;
                    }
                }
            } else {
                let s = child.wait().unwrap();
                assert!(s.success(), "{kind}: the last run failed: {s}");
                finished = true;
                break;
            }
        }
        assert!(finished, "{kind}: never finished");
        assert!(kills >= 5, "{kind}: only {kills} kills landed");
        assert_eq!(
            read_committed(&b, &output),
            want,
            "{kind}: committed output differs after {kills} kills"
        );
        assert_eq!(
            published_lines(dir.path()),
            want_dead,
            "{kind}: dead letters differ"
        );
    }
}

/// One partition far behind another in event time: per-partition watermarks hold the
/// windows until the slow one catches up, so nothing is late and every count matches
/// the oracle's.
#[test]
fn per_partition_watermarks_keep_a_lagging_partition_on_time() {
    for b in all_brokers("kafka per-partition watermarks") {
        let topic = unique("skew");
        create_topic(&b, &topic, 2);
        let mut messages = Vec::new();
        let mut oracle: BTreeMap<i64, u64> = BTreeMap::new();
        // Partition 0 is an hour ahead of partition 1; within each, times increase.
        for (p, base) in [(0, 1_767_229_200_000i64), (1, 1_767_225_600_000)] {
            for i in 0..600i64 {
                let ts = base + i * 1_000;
                messages.push((p, Some(format!("{{\"ts\": {ts}, \"n\": {i}}}"))));
                *oracle.entry(ts - ts.rem_euclid(60_000)).or_default() += 1;
            }
        }
        produce(&b, &topic, &messages);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("job.yaml"),
            format!(
                "name: {}\nbatch_size: 16\n\
                 sources:\n  s:\n    type: kafka\n    brokers: \"{b}\"\n    topic: {topic}\n    end: latest\n\
                 \x20   format: json\n    schema: {{ ts: timestamp, n: int }}\n\
                 \x20   event_time: {{ field: ts, max_future: none }}\n\
                 steps:\n  w: {{ from: s, window: {{ tumbling: 1m, aggregate: {{ c: \"count(*)\" }} }} }}\n\
                 sinks:\n  o: {{ from: w, type: file, path: out/w.jsonl }}\n",
                unique("skew")
            ),
        )
        .unwrap();
        let out = weir_cmd(dir.path()).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{b}: {err}");
        let text = std::fs::read_to_string(dir.path().join("out/w.jsonl")).unwrap();
        let mut got: BTreeMap<i64, u64> = BTreeMap::new();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let start = v["window_start"].as_str().unwrap().to_string();
            let ms = chrono_ms(&start);
            *got.entry(ms).or_default() += v["c"].as_u64().unwrap();
        }
        assert_eq!(got, oracle, "{b}: windows differ from the oracle");
    }
}

/// `2026-01-01T00:00:00Z` as epoch milliseconds (whole seconds).
fn chrono_ms(s: &str) -> i64 {
    let d: Vec<i64> = s
        .split(|c: char| !c.is_ascii_digit())
        .filter(|x| !x.is_empty())
        .map(|x| x.parse().unwrap())
        .collect();
    let (y, m, day, h, mi, sec) = (d[0], d[1], d[2], d[3], d[4], d[5]);
    let a = (14 - m) / 12;
    let yy = y + 4800 - a;
    let mm = m + 12 * a - 3;
    let jdn = day + (153 * mm + 2) / 5 + 365 * yy + yy / 4 - yy / 100 + yy / 400 - 32045;
    ((jdn - 2_440_588) * 86_400 + h * 3600 + mi * 60 + sec) * 1000
}

/// An empty partition drops out of the watermark after `idle_timeout`: the windows of
/// the busy one fire while the job runs.
#[test]
fn an_idle_partition_does_not_stall_the_windows() {
    let Some(b) = noida("kafka idle partition") else {
        return;
    };
    let topic = unique("idle");
    create_topic(&b, &topic, 2);
    let messages: Vec<(i32, Option<String>)> = (0..300i64)
        .map(|i| {
            (
                0,
                Some(format!(
                    "{{\"ts\": {}, \"n\": {i}}}",
                    1_767_225_600_000 + i * 1_000
                )),
            )
        })
        .collect();
    produce(&b, &topic, &messages);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("job.yaml"),
        format!(
            "name: {}\ncheckpoint: {{ interval: 200ms }}\n\
             sources:\n  s:\n    type: kafka\n    brokers: \"{b}\"\n    topic: {topic}\n\
             \x20   format: json\n    schema: {{ ts: timestamp, n: int }}\n\
             \x20   event_time: {{ field: ts, idle_timeout: 1s, max_future: none }}\n\
             steps:\n  w: {{ from: s, window: {{ tumbling: 1m, aggregate: {{ c: \"count(*)\" }} }} }}\n\
             sinks:\n  o: {{ from: w, type: file, path: out/w.jsonl }}\n",
            unique("idle")
        ),
    )
    .unwrap();
    let child = weir_cmd(dir.path()).spawn().unwrap();
    let start = Instant::now();
    let mut fired = 0;
    while start.elapsed() < Duration::from_secs(30) {
        fired = published_lines(dir.path()).len();
        if fired >= 4 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {stderr}", out.status);
    assert!(
        fired >= 4,
        "windows fired while running: {fired} (the empty partition stalled them); \
         stderr: {stderr}"
    );
}

#[test]
fn bad_messages_are_dead_letters_with_topic_partition_and_offset() {
    for b in all_brokers("kafka dead letters") {
        let topic = unique("bad");
        create_topic(&b, &topic, 1);
        let big = format!("{{\"n\": 1, \"pad\": \"{}\"}}", "x".repeat(3000));
        produce(
            &b,
            &topic,
            &[
                (0, Some("{\"n\": 1}".into())),
                (0, None),
                (0, Some("not json".into())),
                (0, Some(big)),
                (0, Some("{\"n\": 2}".into())),
            ],
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("job.yaml"),
            format!(
                "name: {}\nsources:\n  s:\n    type: kafka\n    brokers: \"{b}\"\n    topic: {topic}\n\
                 \x20   end: latest\n    max_record_bytes: 1024\n    format: json\n    schema: {{ n: int }}\n\
                 \x20   metadata: {{ partition: p, offset: o, key: k }}\n\
                 sinks:\n  o: {{ from: s, type: file, path: out/good.jsonl }}\n\
                 dead_letter: {{ type: file, path: out/dead.jsonl }}\n",
                unique("bad")
            ),
        )
        .unwrap();
        let out = weir_cmd(dir.path()).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{b}: {err}");
        let good = std::fs::read_to_string(dir.path().join("out/good.jsonl")).unwrap();
        assert_eq!(good.lines().count(), 2, "{b}: {good}: {err}");
        assert!(
            good.contains("\"p\":0") && good.contains("\"o\":4"),
            "{good}"
        );
        let dead = std::fs::read_to_string(dir.path().join("out/dead.jsonl")).unwrap();
        let reasons: Vec<serde_json::Value> = dead
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(reasons.len(), 3, "{dead}");
        let by_pos: BTreeMap<u64, String> = reasons
            .iter()
            .map(|r| {
                (
                    r["position"].as_u64().unwrap(),
                    r["reason"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert!(by_pos[&1].contains("tombstone"), "{by_pos:?}");
        assert!(by_pos[&2].contains("invalid JSON"), "{by_pos:?}");
        assert!(by_pos[&3].contains("max_record_bytes"), "{by_pos:?}");
        for r in &reasons {
            assert_eq!(r["source"], format!("s: {topic}/0"), "{r}");
        }
    }
}

#[test]
fn unreachable_brokers_fail_at_start_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    for (what, yaml) in [
        (
            "source",
            "sources:\n  s: { type: kafka, brokers: \"127.0.0.1:1\", topic: t, connect_timeout: 2s, format: raw }\n\
             sinks:\n  o: { from: s, type: stdout }\n",
        ),
        (
            "sink",
            "sources:\n  s: { type: datagen, rows: 1, schema: { id: int } }\n\
             sinks:\n  o: { from: s, type: kafka, brokers: \"127.0.0.1:1\", topic: t, connect_timeout: 2s, delivery: at_least_once }\n",
        ),
    ] {
        std::fs::write(dir.path().join("job.yaml"), format!("name: unreachable\n{yaml}")).unwrap();
        let start = Instant::now();
        let out = weir_cmd(dir.path()).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        assert!(err.contains("cannot reach the brokers at 127.0.0.1:1"), "{what}: {err}");
        assert!(start.elapsed() < Duration::from_secs(30), "{what}: {:?}", start.elapsed());
    }
}

#[test]
fn delivery_settings_are_checked_at_validate_time() {
    let dir = tempfile::tempdir().unwrap();
    let sink = "sinks:\n  o: { from: s, type: kafka, brokers: \"b:9092\", topic: t }\n";
    let src = "sources:\n  s: { type: datagen, rows: 1, schema: { id: int } }\n";
    for (head, want) in [
        ("", "sinks.o.delivery: exactly_once needs checkpoints"),
        (
            "checkpoint: { interval: 2m }\n",
            "sinks.o.transaction_timeout: the checkpoint interval (2m) must be shorter than the transaction timeout (1m)",
        ),
    ] {
        std::fs::write(dir.path().join("job.yaml"), format!("name: v\n{head}{src}{sink}")).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["validate", "job.yaml"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(want), "want {want:?}: {err}");
    }
}

#[test]
fn missing_topics_are_errors_unless_the_sink_creates_them() {
    for b in all_brokers("kafka missing topics") {
        let dir = tempfile::tempdir().unwrap();
        let missing = unique("missing");
        std::fs::write(
            dir.path().join("job.yaml"),
            format!(
                "name: m\nsources:\n  s: {{ type: kafka, brokers: \"{b}\", topic: {missing}, format: raw }}\n\
                 sinks:\n  o: {{ from: s, type: stdout }}\n"
            ),
        )
        .unwrap();
        let out = weir_cmd(dir.path()).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{b}: {err}");
        assert!(
            err.contains(&format!("the topic `{missing}` does not exist")),
            "{b}: {err}"
        );
        std::fs::write(
            dir.path().join("job.yaml"),
            format!(
                "name: m\nsources:\n  s: {{ type: datagen, rows: 5, schema: {{ id: int }} }}\n\
                 sinks:\n  o: {{ from: s, type: kafka, brokers: \"{b}\", topic: {missing}, delivery: at_least_once }}\n"
            ),
        )
        .unwrap();
        let out = weir_cmd(dir.path()).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{b}: {err}");
        assert!(err.contains("create_topic"), "{b}: {err}");
    }
}

/// At least once, on both brokers: every row arrives (and, without failures, once).
#[test]
fn at_least_once_delivers_every_row() {
    for b in all_brokers("kafka at least once") {
        let dir = tempfile::tempdir().unwrap();
        let topic = unique("alo");
        std::fs::write(
            dir.path().join("job.yaml"),
            format!(
                "name: {}\nsources:\n  s: {{ type: datagen, rows: 500, seed: 3, schema: {{ id: int, s: string }} }}\n\
                 sinks:\n  o: {{ from: s, type: kafka, brokers: \"{b}\", topic: {topic}, key: id, \
                 delivery: at_least_once, create_topic: {{ partitions: 2 }} }}\n",
                unique("alo")
            ),
        )
        .unwrap();
        let out = weir_cmd(dir.path()).output().unwrap();
        assert!(
            out.status.success(),
            "{b}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &b)
            .set("group.id", unique("r"))
            .set("enable.partition.eof", "true")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..2 {
            tpl.add_partition_offset(&topic, p, Offset::Beginning)
                .unwrap();
        }
        c.assign(&tpl).unwrap();
        let mut n = 0;
        let mut eof = 0;
        let start = Instant::now();
        while eof < 2 && start.elapsed() < Duration::from_secs(60) {
            match c.poll(Duration::from_millis(200)) {
                Some(Ok(_)) => n += 1,
                Some(Err(KafkaError::PartitionEOF(_))) => eof += 1,
                _ => {}
            }
        }
        assert_eq!(n, 500, "{b}");
    }
}

/// Millions of messages wait in the topic and the sink is slow: the source stops
/// fetching (bounded pre-fetch), so memory stays flat. On tansu (in memory): noida keeps
/// its whole log in one file that it rewrites on every write, and ~400 MB there would
/// stall the tests sharing it for tens of seconds.
#[test]
fn backpressure_keeps_memory_flat_with_millions_waiting() {
    let Some(b) = brokers("WEIR_TEST_TANSU_BROKERS", "kafka backpressure") else {
        return;
    };
    let topic = unique("many");
    create_topic(&b, &topic, 2);
    let value = "{\"ts\": 1767225600000, \"n\": 1, \"pad\": \"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}";
    let total = 5_000_000;
    let messages: Vec<(i32, Option<String>)> = (0..total)
        .map(|i| (i % 2, Some(value.to_string())))
        .collect();
    produce(&b, &topic, &messages);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("job.yaml"),
        format!(
            "name: {}\nsources:\n  s: {{ type: kafka, brokers: \"{b}\", topic: {topic}, format: json, schema: {{ n: int, pad: string }} }}\n\
             sinks:\n  o: {{ from: s, type: blackhole, rate: 20000 }}\n",
            unique("bp")
        ),
    )
    .unwrap();
    let mut child = weir_cmd(dir.path()).spawn().unwrap();
    let pid = child.id();
    let rss = || -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<u64>().ok())
            })
            .unwrap_or(0)
            * 1024
    };
    let mut samples = Vec::new();
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(500));
        samples.push(rss());
    }
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();
    let peak = *samples.iter().max().unwrap();
    let later = &samples[10..];
    let (lo, hi) = (*later.iter().min().unwrap(), *later.iter().max().unwrap());
    assert!(
        peak < 400 << 20,
        "peak RSS {} MB with {total} messages waiting: {samples:?}",
        peak >> 20
    );
    assert!(
        hi - lo < 64 << 20,
        "RSS grows while the sink is slow: {samples:?}"
    );
}

/// The `n` values of the JSON lines under `out/`, sorted.
fn ns(dir: &Path) -> Vec<i64> {
    let mut v: Vec<i64> = published_lines(dir)
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["n"]
                .as_i64()
                .unwrap()
        })
        .collect();
    v.sort_unstable();
    v
}

/// Stops a running job with SIGINT and expects a clean exit.
fn stop(child: std::process::Child) {
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until `dir`'s published output has `want` rows (or 60 s pass).
fn wait_rows(dir: &Path, want: usize) -> Vec<i64> {
    let start = Instant::now();
    loop {
        let got = ns(dir);
        if got.len() >= want || start.elapsed() > Duration::from_secs(60) {
            return got;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn numbered(partition: i32, range: std::ops::Range<i64>) -> Vec<(i32, Option<String>)> {
    range
        .map(|n| (partition, Some(format!("{{\"n\": {n}}}"))))
        .collect()
}

fn add_partitions(brokers: &str, topic: &str, total: usize) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let r = block_on(admin.create_partitions(
        [&rdkafka::admin::NewPartitions::new(topic, total)],
        &AdminOptions::new(),
    ))
    .unwrap();
    for x in r {
        x.unwrap();
    }
}

/// A running job reading a topic pattern picks up partitions added to a topic and
/// topics created after it started, each read from its start, each by one subtask.
#[test]
fn new_partitions_and_matching_topics_are_picked_up_while_running() {
    let Some(b) = noida("kafka discovery") else {
        return;
    };
    let prefix = unique("disc");
    let first = format!("{prefix}-a");
    create_topic(&b, &first, 1);
    produce(&b, &first, &numbered(0, 0..100));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("job.yaml"),
        format!(
            "name: {}\nparallelism: 2\ncheckpoint: {{ interval: 200ms }}\n\
             sources:\n  s:\n    type: kafka\n    brokers: \"{b}\"\n    topic_pattern: \"{prefix}-.*\"\n\
             \x20   discovery_interval: 500ms\n    format: json\n    schema: {{ n: int }}\n\
             sinks:\n  o: {{ from: s, type: file, path: out/n.jsonl }}\n",
            unique("disc")
        ),
    )
    .unwrap();
    let child = weir_cmd(dir.path()).spawn().unwrap();
    assert_eq!(wait_rows(dir.path(), 100).len(), 100, "the first topic");
    add_partitions(&b, &first, 3);
    produce(&b, &first, &numbered(1, 100..200));
    produce(&b, &first, &numbered(2, 200..300));
    let second = format!("{prefix}-b");
    create_topic(&b, &second, 2);
    produce(&b, &second, &numbered(0, 300..350));
    produce(&b, &second, &numbered(1, 350..400));
    let got = wait_rows(dir.path(), 400);
    std::thread::sleep(Duration::from_millis(600));
    stop(child);
    let got_after = ns(dir.path());
    assert_eq!(got, got_after, "rows arrived twice after the first sight");
    assert_eq!(got, (0..400).collect::<Vec<_>>());
}

fn produce_at(brokers: &str, topic: &str, messages: &[(i64, i64)]) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    for (n, ts) in messages {
        let v = format!("{{\"n\": {n}}}");
        p.send(
            BaseRecord::<'_, (), str>::to(topic)
                .partition(0)
                .payload(&v)
                .timestamp(*ts),
        )
        .map_err(|(e, _)| e)
        .unwrap();
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(60)).unwrap();
}

/// `ms` since the epoch as an RFC 3339 time (UTC, whole seconds).
fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The committed offsets of `group` on partition 0 of `topic`.
fn group_offset(brokers: &str, group: &str, topic: &str) -> Option<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    match got.elements()[0].offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    }
}

/// `start: earliest | latest | group | <time>`, and the group's offsets committed
/// after completed checkpoints (so lag tools and `start: group` see progress).
#[test]
fn start_positions_and_group_offsets() {
    assert_eq!(rfc3339(1_767_225_640_000), "2026-01-01T00:00:40Z");
    let faithful = noida("kafka start positions");
    for b in all_brokers("kafka start positions") {
        start_positions_on(&b, faithful.as_deref() == Some(b.as_str()));
    }
}

fn start_positions_on(b: &str, faithful: bool) {
    let b = b.to_string();
    let topic = unique("start");
    create_topic(&b, &topic, 1);
    // Recent Kafka timestamps: brokers apply time retention (7 days by default) to
    // them, and older ones may be gone before the test reads them.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let t0 = (now_ms / 1000 - 3_600) * 1000;
    let at = |r: std::ops::Range<i64>| r.map(|n| (n, t0 + n * 1_000)).collect::<Vec<_>>();
    produce_at(&b, &topic, &at(0..100));
    let group = unique("group");
    let run = |start: &str| -> Vec<i64> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("job.yaml"),
            format!(
                "name: {}\ncheckpoint: {{ interval: 100ms }}\n\
                 sources:\n  s:\n    type: kafka\n    brokers: \"{b}\"\n    topic: {topic}\n\
                 \x20   end: latest\n    group: {group}\n    start: \"{start}\"\n\
                 \x20   format: json\n    schema: {{ n: int }}\n\
                 sinks:\n  o: {{ from: s, type: file, path: out/n.jsonl }}\n",
                unique("start")
            ),
        )
        .unwrap();
        let out = weir_cmd(dir.path()).output().unwrap();
        assert!(
            out.status.success(),
            "start {start}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ns(dir.path())
    };
    assert_eq!(run("earliest"), (0..100).collect::<Vec<_>>());
    assert_eq!(
        group_offset(&b, &group, &topic),
        Some(100),
        "committed after the run"
    );
    produce_at(&b, &topic, &at(100..150));
    assert_eq!(
        run("group"),
        (100..150).collect::<Vec<_>>(),
        "from the group's offsets"
    );
    assert_eq!(group_offset(&b, &group, &topic), Some(150));
    // tansu answers ListOffsets with a batch's offsets, not a message's (its latest
    // offset here is 101, its offset for any time 0): `latest` and times are only
    // checked where they are done faithfully.
    if !faithful {
        return;
    }
    assert_eq!(
        run("latest"),
        Vec::<i64>::new(),
        "latest skips what is there"
    );
    // Message 40's timestamp.
    assert_eq!(
        run(&rfc3339(t0 + 40_000)),
        (40..150).collect::<Vec<_>>(),
        "from a time"
    );
}

/// A noida-db broker of the test's own, on a free port, that it can stop and start.
struct OwnBroker {
    bin: String,
    data: tempfile::TempDir,
    port: u16,
    child: Option<std::process::Child>,
}

impl OwnBroker {
    fn new(test: &str) -> Option<Self> {
        let bin = match std::env::var("WEIR_TEST_NOIDA_BIN") {
            Ok(b) if !b.is_empty() => b,
            _ => {
                assert!(
                    !under_ci(),
                    "{test}: WEIR_TEST_NOIDA_BIN is not set but CI=true (scripts/services.sh sets it)"
                );
                eprintln!("note: {test} skipped: WEIR_TEST_NOIDA_BIN is not set");
                return None;
            }
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut b = OwnBroker {
            bin,
            data: tempfile::tempdir().unwrap(),
            port,
            child: None,
        };
        b.start();
        Some(b)
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn start(&mut self) {
        let child = Command::new(&self.bin)
            .args([
                "start",
                "--only",
                "kafka",
                "--host",
                "127.0.0.1",
                "--kafka-port",
            ])
            .arg(self.port.to_string())
            .arg("--data-dir")
            .arg(self.data.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let start = Instant::now();
        while std::net::TcpStream::connect(self.address()).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the broker did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Pauses (SIGSTOP) or resumes (SIGCONT) the broker: it keeps its connections and
    /// its state but answers nothing meanwhile, as behind a network partition.
    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let ok = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status()
                .unwrap()
                .success();
            assert!(ok, "kill {sig}");
        }
    }

    /// Stops the broker (SIGTERM; SIGKILL after 10 s) and waits until its port is free.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status()
                .unwrap();
            let start = Instant::now();
            while c.try_wait().unwrap().is_none() {
                if start.elapsed() > Duration::from_secs(10) {
                    let _ = c.kill();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let start = Instant::now();
        while std::net::TcpListener::bind(("127.0.0.1", self.port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the broker's port stays taken"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The broker goes away while jobs run. A short outage is ridden out (librdkafka
/// reconnects, the source keeps its positions): a Kafka → file job carries on and
/// its output is complete and exact. A long one (the broker paused) fails an exactly-once Kafka → Kafka
/// job with a clear error once `unavailable_timeout` has passed, and running it again
/// after the broker is back resumes exactly once.
///
/// (noida-db forgets idempotent producers' sequence numbers when it restarts, which
/// Kafka does not: a Kafka sink writing across a noida restart gets a fatal
/// out-of-order-sequence error and fails at once, so the short outage is shown on a
/// job whose sink is not Kafka.)
#[test]
fn a_broker_going_away_is_retried_then_fails_and_resumes_exactly_once() {
    let Some(mut broker) = OwnBroker::new("kafka broker outage") else {
        return;
    };
    let b = broker.address();
    let input = unique("logs");
    create_topic(&b, &input, 2);
    produce(&b, &input, &logs(2, 1_200, 9));
    let (want, _, _) = run_job(&b, "stateless", &input, 1, None);
    assert!(want.len() > 500, "too little output: {}", want.len());

    // A short outage: a Kafka source carries on.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("job.yaml"),
        format!(
            "name: {}\nparallelism: 2\ncheckpoint: {{ interval: 100ms }}\n\
             sources:\n  s:\n    type: kafka\n    brokers: \"{b}\"\n    topic: {input}\n\
             \x20   end: latest\n    rate: 300\n    unavailable_timeout: 20s\n    format: raw\n\
             \x20   metadata: {{ partition: p, offset: o }}\n\
             sinks:\n  o: {{ from: s, type: file, path: out/n.jsonl }}\n",
            unique("short")
        ),
    )
    .unwrap();
    let child = weir_cmd(dir.path()).spawn().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    broker.stop();
    std::thread::sleep(Duration::from_secs(2));
    broker.start();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the job did not ride out a 2 s outage: {err}"
    );
    assert!(
        err.contains("every broker is unreachable"),
        "the outage is reported: {err}"
    );
    let mut seen: Vec<(i64, i64)> = published_lines(dir.path())
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["p"].as_i64().unwrap(), v["o"].as_i64().unwrap())
        })
        .collect();
    seen.sort_unstable();
    let all: Vec<(i64, i64)> = (0..2)
        .flat_map(|p| (0..1_200).map(move |o| (p, o)))
        .collect();
    assert_eq!(seen, all, "every message once across the outage");

    // A long outage: an exactly-once job fails after unavailable_timeout, naming
    // the brokers, and resumes exactly once when run again.
    let dir = tempfile::tempdir().unwrap();
    let output = unique("out");
    let yaml = job_yaml(&unique("outage"), "stateless", &b, &input, &output, 2)
        .replace("rate: 4000", "rate: 150\n    unavailable_timeout: 4s")
        .replace(
            "    key: service\n",
            "    key: service\n    unavailable_timeout: 4s\n",
        );
    std::fs::write(dir.path().join("job.yaml"), yaml).unwrap();
    let child = weir_cmd(dir.path()).spawn().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    // Paused rather than restarted: a restarted noida does not always resolve a
    // transaction that its stop caught mid-commit (Kafka's coordinator does), and the
    // restore would then wait for it in vain.
    broker.signal("-STOP");
    let down = Instant::now();
    let out = child.wait_with_output().unwrap();
    let failed_after = down.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&b), "the error names the brokers: {err}");
    assert!(
        failed_after >= Duration::from_secs(3) && failed_after < Duration::from_secs(30),
        "failed {failed_after:?} after the broker went away: {err}"
    );
    broker.signal("-CONT");
    run_to_end(dir.path(), None);
    let got = read_committed(&b, &output);
    assert_eq!(got.len(), want.len(), "message count after the outage");
    assert_eq!(got, want, "committed output after the outage");
}

/// `weir dlq replay` into a Kafka source: the remediated records and the ledger message
/// are one transaction. Killed before the commit, nothing is in the topic and the next
/// replay publishes everything; killed after it, the next replay finds the entries in
/// the ledger and publishes nothing. The job then reads each replayed record once.
#[test]
fn dlq_replay_into_a_kafka_source_is_exactly_once_through_kills() {
    use crate::dlq::{ok, weir};
    let Some(b) = noida("dlq_replay_into_a_kafka_source_is_exactly_once_through_kills") else {
        return;
    };
    let topic = unique("payments");
    create_topic(&b, &topic, 2);
    let messages: Vec<(i32, Option<String>)> = (0..40)
        .map(|i| {
            // Every 4th amount is negative: a validation dead letter.
            let amount = if i % 4 == 0 {
                -(i as f64) - 0.5
            } else {
                i as f64 + 0.5
            };
            (
                i % 2,
                Some(format!("{{\"id\": {i}, \"amount\": {amount}}}")),
            )
        })
        .collect();
    produce(&b, &topic, &messages);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("job.yaml"),
        format!(
            "name: {}\ncheckpoint: {{ interval: 50ms, storage: ckpt }}\n\
             sources:\n  p:\n    type: kafka\n    brokers: \"{b}\"\n    topic: {topic}\n\
             \x20   end: latest\n    format: json\n    schema: {{ id: int, amount: float }}\n\
             steps:\n  valid: {{ from: p, validate: {{ positive_amount: \"amount > 0\" }} }}\n\
             sinks:\n  o: {{ from: valid, type: file, path: out/o.jsonl }}\n\
             dead_letter: {{ type: file, path: dlq/dead_letter.jsonl }}\n",
            unique("replay")
        ),
    )
    .unwrap();
    let ids = |d: &Path| -> Vec<i64> {
        let mut ids = Vec::new();
        for e in std::fs::read_dir(d.join("out")).unwrap().flatten() {
            if !e.file_name().to_string_lossy().starts_with("o-") {
                continue;
            }
            for l in std::fs::read_to_string(e.path()).unwrap().lines() {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                assert!(v["amount"].as_f64().unwrap() > 0.0, "{l}");
                ids.push(v["id"].as_i64().unwrap());
            }
        }
        ids.sort_unstable();
        ids
    };
    ok(&weir(d, &["run", "job.yaml", "--no-progress"], None));
    assert_eq!(ids(d), (0..40).filter(|i| i % 4 != 0).collect::<Vec<i64>>());

    let ledger = unique("ledger");
    let replay = [
        "dlq",
        "replay",
        "job.yaml",
        "--dead-letters",
        "dlq/dead_letter.jsonl",
        "--set",
        "amount=abs(amount)",
        "--ledger-topic",
        &ledger,
    ];
    let dry = ok(&weir(d, &[&replay[..], &["--dry-run"]].concat(), None));
    assert!(dry.contains("would replay 10 dead letter(s)"), "{dry}");
    // Killed with the transaction open: nothing reaches the topic.
    let killed = weir(d, &replay, Some("replay_produced"));
    assert_eq!(killed.status.signal(), Some(9));
    assert_eq!(read_committed(&b, &topic).len(), 40);
    // Killed after the commit: the records are in, and recorded.
    let killed = weir(d, &replay, Some("replay_published"));
    assert_eq!(killed.status.signal(), Some(9));
    let committed = read_committed(&b, &topic);
    assert_eq!(committed.len(), 50, "{committed:?}");
    let again = ok(&weir(d, &replay, None));
    assert!(
        again.contains("replayed 0 dead letter(s)") && again.contains("(10 replayed before"),
        "{again}"
    );
    assert_eq!(read_committed(&b, &topic).len(), 50);

    // The job resumes from its checkpoint and reads the replayed records once.
    ok(&weir(d, &["run", "job.yaml", "--no-progress"], None));
    assert_eq!(ids(d), (0..40).collect::<Vec<i64>>());
}

/// A Kafka source's consumer lag reaches Prometheus as `weir_source_lag_records`.
#[test]
fn kafka_consumer_lag_is_exported_to_prometheus() {
    let Some(b) = noida("kafka_consumer_lag_is_exported_to_prometheus") else {
        return;
    };
    let topic = unique("lagging");
    create_topic(&b, &topic, 1);
    let messages: Vec<(i32, Option<String>)> = (0..5000)
        .map(|i| (0, Some(format!("{{\"id\": {i}}}"))))
        .collect();
    produce(&b, &topic, &messages);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("job.yaml"),
        format!(
            "name: {}\nsources:\n  p:\n    type: kafka\n    brokers: \"{b}\"\n    topic: {topic}\n\
             \x20   rate: 200\n    format: json\n    schema: {{ id: int }}\n\
             sinks:\n  o: {{ from: p, type: blackhole }}\n",
            unique("lag")
        ),
    )
    .unwrap();
    let (mut child, addr) = crate::ops::start(dir.path(), &[]);
    let mut seen = String::new();
    crate::ops::wait_until("a lag sample", Duration::from_secs(60), || {
        let (_, text) = crate::ops::http(&addr, "GET", "/metrics");
        seen = text
            .lines()
            .filter(|l| l.starts_with("weir_source_lag_records{"))
            .map(str::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        seen.lines().any(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|v| v > 0.0)
        })
    });
    assert!(seen.contains("node=\"p\""), "{seen}");
    let _ = child.kill();
    let _ = child.wait();
}
