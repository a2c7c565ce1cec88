//! Measures `format: json` decoding: one raw batch of 8192 JSON log lines → one Arrow RecordBatch.
//!
//! The lines are shaped like W1's (benches/workloads/w1.yaml) ({ts, service, level, message,
//! latency_ms}); the decoder is built through the registry (`FormatFactory::build`, then
//! `DecoderBuild::create`) and called as the runtime's source head calls it:
//! `Decoder::decode(&raw_batch, description)`. A second case has one malformed line per
//! 1024, which the decoder isolates as a dead letter.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{BinaryArray, RecordBatch, UInt64Array};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use weir_engine::registry::Registry;
use weir_engine::source::{raw_schema, Decoder};

const ROWS: usize = 8192;

/// `n` log lines shaped like W1's logs (no trailing newline: the file
/// source strips it), each with `bad_every`-th line (if any) not valid JSON.
fn lines(n: usize, bad_every: Option<usize>) -> Vec<Vec<u8>> {
    let mut rng = SmallRng::seed_from_u64(1);
    let levels: Vec<&str> = std::iter::repeat_n("INFO", 80)
        .chain(std::iter::repeat_n("WARN", 15))
        .chain(std::iter::repeat_n("ERROR", 5))
        .collect();
    let mut t: i64 = 1_717_232_400_000;
    (0..n)
        .map(|i| {
            t += rng.random_range(0..=3);
            if bad_every.is_some_and(|k| i % k == k - 1) {
                return br#"{"ts": 1717232400000, "service": "svc-1", "level": "#.to_vec();
            }
            let line = json!({
                "ts": t,
                "service": format!("svc-{}", rng.random_range(0..50)),
                "level": levels[rng.random_range(0..levels.len())],
                "message": format!("request handled in {} ms", rng.random_range(1..=900)),
                "latency_ms": rng.random_range(1..=900),
            });
            serde_json::to_vec(&line).unwrap()
        })
        .collect()
}

/// A raw batch as the file source yields it: `payload` bytes and 1-based line numbers.
fn raw_batch(lines: &[Vec<u8>]) -> RecordBatch {
    let payload = BinaryArray::from_iter_values(lines.iter());
    let offsets = UInt64Array::from_iter_values(1..=lines.len() as u64);
    RecordBatch::try_new(raw_schema(), vec![Arc::new(payload), Arc::new(offsets)]).unwrap()
}

/// The `json` decoder for the W1 schema, built as the planner does: registry lookup,
/// `FormatFactory::build(options, schema)`, then `DecoderBuild::create` per subtask.
fn json_decoder() -> Box<dyn Decoder> {
    let mut registry = Registry::new();
    weir_operators::register(&mut registry);
    let schema = weir_engine::spec::parse_schema(&json!({
        "ts": "timestamp", "service": "string", "level": "string",
        "message": "string", "latency_ms": "int"
    }))
    .unwrap();
    let build = registry
        .format("json")
        .unwrap()
        .build(&Value::Null, Some(schema))
        .unwrap();
    (build.create)().unwrap()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("json_decode");
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20)
        .throughput(Throughput::Elements(ROWS as u64));

    let good_lines = lines(ROWS, None);
    let bytes: usize = good_lines.iter().map(Vec::len).sum();
    let good = raw_batch(&good_lines);
    let mut decoder = json_decoder();
    // Sanity: every record decodes.
    let d = decoder.decode(&good, "logs: logs.jsonl").unwrap();
    assert_eq!(d.batch.num_rows(), ROWS);
    assert!(d.dead_letters.is_empty());
    eprintln!("json_decode: raw batch of {ROWS} lines, {bytes} bytes of JSON");

    group.bench_function("logs_8192", |b| {
        b.iter(|| decoder.decode(&good, "logs: logs.jsonl").unwrap())
    });

    // One malformed record per 1024: the decoder cuts it out and decodes the rest
    // again (about three decodes per bad record's range).
    let bad = raw_batch(&lines(ROWS, Some(1024)));
    let d = decoder.decode(&bad, "logs: logs.jsonl").unwrap();
    assert_eq!(d.dead_letters.len(), ROWS / 1024);
    group.bench_function("logs_8192_1_bad_per_1024", |b| {
        b.iter(|| decoder.decode(&bad, "logs: logs.jsonl").unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
