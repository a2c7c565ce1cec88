//! Measures the hand-off of `Message::Data(batch)` between two tokio tasks through `weir_engine::channel::channel(capacity_rows)` (current-thread and 2-worker multi-thread runtimes), against a plain bounded `tokio::sync::mpsc` baseline.
//!
//! Each iteration creates a channel of 16384 rows (the default `channel_capacity_rows`),
//! spawns a producer task that sends 1000 data messages (batches of 1024 rows, the
//! default `batch_size`, or 8192 rows; cloning a batch only bumps `Arc`s) and then
//! `EndOfStream`, and a consumer task that receives until `EndOfStream`; it ends when
//! both have finished. The baseline `tokio_mpsc` is a bounded `mpsc::channel` holding as
//! many messages as the weir channel holds batches (16384 / rows).
//!
//! - `channel_msgs`: throughput in messages (1000 per iteration), every variant.
//! - `channel_rows`: throughput in rows (1000 × batch rows), the weir channel only.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Int64Array, RecordBatch, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tokio::runtime::{Builder, Runtime};
use weir_engine::channel::channel;
use weir_engine::message::Message;

/// Data messages per iteration.
const MSGS: usize = 1000;
/// The default `channel_capacity_rows`.
const CAPACITY_ROWS: usize = 16 * 1024;

fn batch(rows: usize) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("key", DataType::Int64, false),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(TimestampMillisecondArray::from_iter_values(0..rows as i64)),
            Arc::new(Int64Array::from_iter_values(
                (0..rows as i64).map(|i| i % 10_000),
            )),
        ],
    )
    .unwrap()
}

fn runtimes() -> [(&'static str, Runtime); 2] {
    [
        (
            "current_thread",
            Builder::new_current_thread().build().unwrap(),
        ),
        (
            "multi_thread_2",
            Builder::new_multi_thread()
                .worker_threads(2)
                .build()
                .unwrap(),
        ),
    ]
}

/// Rows the consumer counted.
fn count(msg: &Message) -> Option<usize> {
    match msg {
        Message::Data(b) => Some(b.num_rows()),
        Message::EndOfStream => None,
        _ => Some(0),
    }
}

/// 1000 batches through a weir channel, producer and consumer as separate tasks.
fn weir_handoff(rt: &Runtime, batch: &RecordBatch) {
    let batch = batch.clone();
    let expected = MSGS * batch.num_rows();
    rt.block_on(async move {
        let (tx, mut rx) = channel(CAPACITY_ROWS);
        let consumer = tokio::spawn(async move {
            let mut rows = 0usize;
            while let Some(m) = rx.recv().await {
                match count(&m) {
                    Some(n) => rows += n,
                    None => break,
                }
            }
            rows
        });
        let producer = tokio::spawn(async move {
            for _ in 0..MSGS {
                tx.send(Message::Data(batch.clone())).await.unwrap();
            }
            tx.send(Message::EndOfStream).await.unwrap();
        });
        producer.await.unwrap();
        assert_eq!(consumer.await.unwrap(), expected);
    });
}

/// The same through a bounded tokio mpsc of `CAPACITY_ROWS / rows` messages.
fn tokio_handoff(rt: &Runtime, batch: &RecordBatch) {
    let batch = batch.clone();
    let expected = MSGS * batch.num_rows();
    let capacity = (CAPACITY_ROWS / batch.num_rows()).max(1);
    rt.block_on(async move {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Message>(capacity);
        let consumer = tokio::spawn(async move {
            let mut rows = 0usize;
            while let Some(m) = rx.recv().await {
                match count(&m) {
                    Some(n) => rows += n,
                    None => break,
                }
            }
            rows
        });
        let producer = tokio::spawn(async move {
            for _ in 0..MSGS {
                tx.send(Message::Data(batch.clone())).await.unwrap();
            }
            tx.send(Message::EndOfStream).await.unwrap();
        });
        producer.await.unwrap();
        assert_eq!(consumer.await.unwrap(), expected);
    });
}

fn configure(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20);
}

fn bench(c: &mut Criterion) {
    let rts = runtimes();
    let batches = [batch(1024), batch(8192)];

    let mut group = c.benchmark_group("channel_msgs");
    configure(&mut group);
    group.throughput(Throughput::Elements(MSGS as u64));
    for (rt_name, rt) in &rts {
        for b in &batches {
            let rows = b.num_rows();
            group.bench_with_input(
                BenchmarkId::new(format!("weir/{rt_name}"), format!("{rows}_rows")),
                b,
                |bench, b| bench.iter(|| weir_handoff(rt, b)),
            );
            group.bench_with_input(
                BenchmarkId::new(format!("tokio_mpsc/{rt_name}"), format!("{rows}_rows")),
                b,
                |bench, b| bench.iter(|| tokio_handoff(rt, b)),
            );
        }
    }
    group.finish();

    let mut group = c.benchmark_group("channel_rows");
    configure(&mut group);
    for (rt_name, rt) in &rts {
        for b in &batches {
            let rows = b.num_rows();
            group.throughput(Throughput::Elements((MSGS * rows) as u64));
            group.bench_with_input(
                BenchmarkId::new(format!("weir/{rt_name}"), format!("{rows}_rows")),
                b,
                |bench, b| bench.iter(|| weir_handoff(rt, b)),
            );
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
