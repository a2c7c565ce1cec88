//! Measures hash partitioning of one 8192-row batch by key group, exactly as `Route::send_batch` does for a `Partitioning::Hash` edge (minus the channel send).
//!
//! Per batch: `hash_columns` (key bytes of every row, then their stable hash),
//! `key_group_for_hash` + `subtask_for_key_group` per row (128 key groups, the default
//! max parallelism), then `split_by_target` into 2 or 4 downstream subtasks. The batch is
//! a decoded W1 log batch (ts, service, level, message, latency_ms); the key is either
//! the Int64 column `latency_ms` or the Utf8 column `service`. `hash_only` stops after
//! the per-row targets, to show how the time splits between hashing and `take`.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use weir_engine::batch::split_by_target;
use weir_engine::state::{
    hash_columns, key_group_for_hash, subtask_for_key_group, DEFAULT_MAX_PARALLELISM,
};

const ROWS: usize = 8192;

/// A decoded log batch of `n` rows: ts, service (50 values), level, message,
/// latency_ms (1..=900).
fn log_batch(n: usize) -> RecordBatch {
    let mut rng = SmallRng::seed_from_u64(1);
    let schema = Arc::new(Schema::new(vec![
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("service", DataType::Utf8, false),
        Field::new("level", DataType::Utf8, false),
        Field::new("message", DataType::Utf8, false),
        Field::new("latency_ms", DataType::Int64, false),
    ]));
    let mut t = 1_717_232_400_000i64;
    let ts: Vec<i64> = (0..n)
        .map(|_| {
            t += rng.random_range(0..=3);
            t
        })
        .collect();
    let service: Vec<String> = (0..n)
        .map(|_| format!("svc-{}", rng.random_range(0..50)))
        .collect();
    let level: Vec<&str> = (0..n)
        .map(|_| match rng.random_range(0..100) {
            0..80 => "INFO",
            80..95 => "WARN",
            _ => "ERROR",
        })
        .collect();
    let latency: Vec<i64> = (0..n).map(|_| rng.random_range(1..=900)).collect();
    let message: Vec<String> = latency
        .iter()
        .map(|l| format!("request handled in {l} ms"))
        .collect();
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(TimestampMillisecondArray::from(ts)),
            Arc::new(StringArray::from(service)),
            Arc::new(StringArray::from(level)),
            Arc::new(StringArray::from(message)),
            Arc::new(Int64Array::from(latency)),
        ],
    )
    .unwrap()
}

/// The per-row target subtasks, as `Route::send_batch` computes them.
fn targets(batch: &RecordBatch, key_columns: &[usize], n: usize) -> Vec<usize> {
    let max_parallelism = DEFAULT_MAX_PARALLELISM;
    let hashes = hash_columns(batch, key_columns).unwrap();
    hashes
        .iter()
        .map(|h| {
            let kg = key_group_for_hash(*h, max_parallelism);
            subtask_for_key_group(kg, max_parallelism, n)
        })
        .collect()
}

/// The whole hash route of one batch: targets, then one batch per target.
fn route(batch: &RecordBatch, key_columns: &[usize], n: usize) -> Vec<Option<RecordBatch>> {
    let t = targets(batch, key_columns, n);
    split_by_target(batch, &t, n).unwrap()
}

fn bench(c: &mut Criterion) {
    let batch = log_batch(ROWS);
    let keys: [(&str, usize); 2] = [("int64_latency_ms", 4), ("utf8_service", 1)];

    let mut group = c.benchmark_group("partition");
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20)
        .throughput(Throughput::Elements(ROWS as u64));
    for (name, col) in keys {
        for n in [2usize, 4] {
            // Sanity: every row lands exactly once.
            let parts = route(&batch, &[col], n);
            let total: usize = parts.iter().flatten().map(RecordBatch::num_rows).sum();
            assert_eq!(total, ROWS);
            let sizes: Vec<usize> = parts
                .iter()
                .map(|p| p.as_ref().map_or(0, RecordBatch::num_rows))
                .collect();
            eprintln!("partition: key {name}, {n} subtasks: rows per subtask {sizes:?}");
            group.bench_with_input(BenchmarkId::new(format!("{name}/split"), n), &n, |b, &n| {
                b.iter(|| route(&batch, &[col], n))
            });
        }
        group.bench_with_input(
            BenchmarkId::new(format!("{name}/hash_only"), 4),
            &4,
            |b, &n| b.iter(|| targets(&batch, &[col], n)),
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
