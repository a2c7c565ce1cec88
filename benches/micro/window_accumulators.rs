//! Measures window accumulator updates: the `window` operator fed 8192-row batches for a 10 s tumbling count(*) and sum+max over 10k and 1M keys, its watermark firing, and the bare accumulators.
//!
//! - `window_process/{count,sum_max}/{10k,1M}_keys`: `Operator::process_batch` of one
//!   batch (keys uniform at random, event times inside one 10 s window) on an operator
//!   built through the registry's `window` step factory and `StepBuild::create`, as the
//!   runtime does. Before measuring, every key's window is created once, so this is the
//!   steady state "update existing windows" path (key encoding, event times, argument
//!   evaluation, grouping by (key, window), one `Accumulator::update` per group and
//!   aggregate). Nothing fires (the watermark is not advanced).
//! - `window_fire/{count,sum_max}/10k_keys`, `window_fire/count/1M_keys`: one
//!   `handle_watermark` that fires and purges every key's window (throughput = windows
//!   fired); the operator is refilled outside the measurement.
//! - `accumulator/{count,sum,max}/...`: `Accumulator::update` of the built-in aggregates
//!   directly, once with all 8192 rows in one call and once with one call per row (one
//!   accumulator per row, the high-cardinality case).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode, Throughput};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use weir_engine::aggregate::{Accumulator, AggregateFunction};
use weir_engine::operator::{Collector, Operator, OperatorContext};
use weir_engine::registry::{BuildContext, Registry};
use weir_operators::BuiltinAggregate;

const ROWS: usize = 8192;
/// The tumbling window size in ms; every input event time is in `[0, WINDOW_MS)`.
const WINDOW_MS: i64 = 10_000;
/// Distinct random batches cycled through by `window_process`.
const POOL: usize = 32;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::Int64, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("v", DataType::Int64, false),
    ]))
}

fn batch(keys: Vec<i64>, ts: Vec<i64>, v: Vec<i64>) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from(keys)),
            Arc::new(TimestampMillisecondArray::from(ts)),
            Arc::new(Int64Array::from(v)),
        ],
    )
    .unwrap()
}

/// Event times rising through the window over one batch.
fn times(n: usize) -> Vec<i64> {
    (0..n as i64).map(|i| i * WINDOW_MS / n as i64).collect()
}

/// A batch of `ROWS` rows with keys uniform in `0..cardinality`.
fn random_batch(rng: &mut SmallRng, cardinality: i64) -> RecordBatch {
    let keys = (0..ROWS)
        .map(|_| rng.random_range(0..cardinality))
        .collect();
    let v = (0..ROWS).map(|_| rng.random_range(1..=900)).collect();
    batch(keys, times(ROWS), v)
}

/// Batches covering every key of `0..cardinality` once, in order.
fn covering_batches(cardinality: i64) -> impl Iterator<Item = RecordBatch> {
    (0..cardinality).step_by(ROWS).map(move |lo| {
        let hi = (lo + ROWS as i64).min(cardinality);
        let n = (hi - lo) as usize;
        batch((lo..hi).collect(), times(n), vec![1; n])
    })
}

fn window_spec(aggregates: Value) -> Value {
    json!({
        "tumbling": "10s",
        "key": ["key"],
        "aggregate": aggregates,
        "event_time": "ts",
    })
}

/// A window operator built as the runtime builds it: registry → `window` step factory
/// → `StepBuild::create(subtask 0, parallelism 1)`, then `open`.
fn window_operator(spec: &Value) -> (Box<dyn Operator>, OperatorContext) {
    let mut registry = Registry::new();
    weir_operators::register(&mut registry);
    let ctx = BuildContext {
        checkpoints: Default::default(),
        job: "bench".into(),
        base_dir: ".".into(),
        aggregates: Arc::new(registry.aggregates().clone()),
    };
    let build = registry
        .step("window")
        .unwrap()
        .build(&ctx, "w", spec, &[schema()])
        .unwrap();
    let mut op = (build.create)(0, 1).unwrap();
    let mut octx = OperatorContext::for_test("w");
    op.open(&mut octx).unwrap();
    (op, octx)
}

/// An operator holding one open window for every key of `0..cardinality`.
fn filled_operator(spec: &Value, cardinality: i64) -> (Box<dyn Operator>, OperatorContext) {
    let (mut op, mut ctx) = window_operator(spec);
    let mut out = Collector::default();
    for b in covering_batches(cardinality) {
        op.process_batch(0, b, &mut ctx, &mut out).unwrap();
    }
    assert!(out.is_empty(), "nothing fires while filling");
    (op, ctx)
}

const CARDINALITIES: [(&str, i64); 2] = [("10k_keys", 10_000), ("1M_keys", 1_000_000)];

fn aggregate_sets() -> [(&'static str, Value); 2] {
    [
        ("count", json!({"n": "count(*)"})),
        ("sum_max", json!({"total": "sum(v)", "peak": "max(v)"})),
    ]
}

fn bench_process(c: &mut Criterion) {
    let mut group = c.benchmark_group("window_process");
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20)
        .throughput(Throughput::Elements(ROWS as u64));
    for (agg_name, aggs) in aggregate_sets() {
        let spec = window_spec(aggs);
        for (card_name, cardinality) in CARDINALITIES {
            let mut rng = SmallRng::seed_from_u64(7);
            let pool: Vec<RecordBatch> = (0..POOL)
                .map(|_| random_batch(&mut rng, cardinality))
                .collect();
            let (mut op, mut ctx) = filled_operator(&spec, cardinality);
            let mut out = Collector::default();
            let mut next = 0usize;
            group.bench_function(format!("{agg_name}/{card_name}"), |b| {
                b.iter(|| {
                    let batch = pool[next % POOL].clone();
                    next += 1;
                    op.process_batch(0, batch, &mut ctx, &mut out).unwrap();
                })
            });
            assert!(out.is_empty(), "no update rows before the window fires");
            // Fire everything so the output is checked once: one row per key.
            ctx.watermark = WINDOW_MS - 1;
            op.handle_watermark(WINDOW_MS - 1, &mut ctx, &mut out)
                .unwrap();
            let fired: usize = out.take_main().iter().map(RecordBatch::num_rows).sum();
            assert_eq!(fired as i64, cardinality);
        }
    }
    group.finish();
}

fn bench_fire(c: &mut Criterion) {
    let mut group = c.benchmark_group("window_fire");
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat);
    for (agg_name, aggs) in aggregate_sets() {
        let spec = window_spec(aggs);
        for (card_name, cardinality) in CARDINALITIES {
            if agg_name != "count" && cardinality > 10_000 {
                continue; // ~2 s per firing plus ~1 s of refill each: count alone will do
            }
            group.throughput(Throughput::Elements(cardinality as u64));
            group.bench_function(format!("{agg_name}/{card_name}"), |b| {
                b.iter_batched(
                    || filled_operator(&spec, cardinality),
                    |(mut op, mut ctx)| {
                        let mut out = Collector::default();
                        let w = WINDOW_MS - 1;
                        ctx.watermark = w;
                        op.handle_watermark(w, &mut ctx, &mut out).unwrap();
                        // Dropped outside the measurement.
                        (op, ctx, out)
                    },
                    BatchSize::PerIteration,
                )
            });
        }
    }
    group.finish();
}

fn bench_accumulators(c: &mut Criterion) {
    let mut group = c.benchmark_group("accumulator");
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20)
        .throughput(Throughput::Elements(ROWS as u64));
    let mut rng = SmallRng::seed_from_u64(3);
    let values: ArrayRef = Arc::new(Int64Array::from_iter_values(
        (0..ROWS).map(|_| rng.random_range(1..=900)),
    ));
    let event_times = times(ROWS);
    let all_rows: Vec<u32> = (0..ROWS as u32).collect();
    let functions: [(&str, BuiltinAggregate, Option<DataType>); 3] = [
        ("count", BuiltinAggregate::Count, None),
        ("sum", BuiltinAggregate::Sum, Some(DataType::Int64)),
        ("max", BuiltinAggregate::Max, Some(DataType::Int64)),
    ];
    for (name, f, arg) in functions {
        let arg_values = arg.as_ref().map(|_| &values);
        let mut acc = f.create_accumulator(arg.as_ref()).unwrap();
        group.bench_function(format!("{name}/one_call_8192_rows"), |b| {
            b.iter(|| acc.update(arg_values, &all_rows, &event_times).unwrap())
        });
        let mut accs: Vec<Box<dyn Accumulator>> = (0..ROWS)
            .map(|_| f.create_accumulator(arg.as_ref()).unwrap())
            .collect();
        group.bench_function(format!("{name}/8192_calls_1_row"), |b| {
            b.iter(|| {
                for (r, acc) in accs.iter_mut().enumerate() {
                    acc.update(arg_values, &all_rows[r..r + 1], &event_times[r..r + 1])
                        .unwrap();
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_process, bench_fire, bench_accumulators);
criterion_main!(benches);
