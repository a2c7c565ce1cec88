//! Measures keyed state access through `ValueState<u64>` on the in-memory and the RocksDB backends: puts of new keys, gets of existing keys, read-modify-write — 8192 keys per iteration.
//!
//! Operators reach state as `ctx.state: Box<dyn KeyedStateBackend>` through the typed
//! wrappers (postcard-encoded values), so the benchmark does too. Keys are the
//! `KeyCodec` bytes of an Int64 key column (9 bytes), with their key groups (128) and the
//! void namespace; key encoding and key groups are computed outside the measurement.
//! RocksDB runs in a temporary directory with the default memory budget (64 MiB), as
//! `state: {backend: rocksdb}` does.
//!
//! - `put_new`: 8192 keys never written before. The state grows by 8192 keys per
//!   iteration and is replaced by an empty one (outside the measurement) when it reaches
//!   1M keys, so the state holds 0..1M keys while measured.
//! - `get_existing`: 8192 keys drawn at random from a state of 1M keys.
//! - `read_modify_write`: `ValueState::update` (+1) of 8192 random existing keys of
//!   the same 1M-key state.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Int64Array};
use arrow::datatypes::DataType;
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use weir_engine::checkpoint::DEFAULT_ROCKSDB_MEMORY_BUDGET;
use weir_engine::state::StateAddr;
use weir_engine::state::{
    hash_key, key_group_for_hash, EncodedKeys, InMemoryStateBackend, KeyCodec, KeyedStateBackend,
    RocksDbStateBackend, StateDescriptor, SystemClock, ValueState, DEFAULT_MAX_PARALLELISM,
};

const ROWS: usize = 8192;
/// Keys of the state that gets and read-modify-writes run against, and the size at
/// which `put_new` starts over with an empty state.
const STATE_KEYS: i64 = 1_000_000;
/// Random key blocks cycled through by the get and update benchmarks.
const POOL: usize = 16;

/// Encoded keys of one block and their key groups.
struct KeyBlock {
    keys: EncodedKeys,
    key_groups: Vec<u16>,
}

fn key_block(values: impl Iterator<Item = i64>) -> KeyBlock {
    let codec = KeyCodec::new(&[DataType::Int64]).unwrap();
    let array: ArrayRef = Arc::new(Int64Array::from_iter_values(values));
    let keys = codec.encode_arrays(&[array]).unwrap();
    let key_groups = keys
        .iter()
        .map(|k| key_group_for_hash(hash_key(k), DEFAULT_MAX_PARALLELISM))
        .collect();
    KeyBlock { keys, key_groups }
}

#[derive(Clone, Copy)]
enum Kind {
    Memory,
    RocksDb,
}

/// Makes empty backends of one kind (RocksDB: in `dir`, replacing what was there).
struct Factory {
    kind: Kind,
    dir: PathBuf,
}

impl Factory {
    fn create(&self) -> Box<dyn KeyedStateBackend> {
        match self.kind {
            Kind::Memory => Box::new(InMemoryStateBackend::new()),
            Kind::RocksDb => Box::new(
                RocksDbStateBackend::create(
                    &self.dir,
                    DEFAULT_ROCKSDB_MEMORY_BUDGET,
                    Arc::new(SystemClock),
                )
                .unwrap(),
            ),
        }
    }
}

fn put_block(state: &ValueState<u64>, backend: &mut dyn KeyedStateBackend, block: &KeyBlock) {
    for (i, (key, &kg)) in block.keys.iter().zip(&block.key_groups).enumerate() {
        state
            .put(backend, StateAddr::key(kg, key), &(i as u64))
            .unwrap();
    }
}

fn bench_backend(c: &mut Criterion, name: &str, kind: Kind, root: &std::path::Path) {
    let state: ValueState<u64> = ValueState::new(StateDescriptor::new("counts"));
    let mut group = c.benchmark_group(format!("state/{name}"));
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        // Iterations take milliseconds (RocksDB: with flush and compaction stalls), so
        // every sample runs the same number of them.
        .sampling_mode(SamplingMode::Flat)
        .sample_size(match kind {
            Kind::Memory => 20,
            Kind::RocksDb => 10,
        })
        .throughput(Throughput::Elements(ROWS as u64));

    // put_new: a growing state, reset when full.
    let fresh = Factory {
        kind,
        dir: root.join("put"),
    };
    let mut backend: Option<Box<dyn KeyedStateBackend>> = Some(fresh.create());
    let mut next: i64 = 0;
    group.bench_function("put_new", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                if next + ROWS as i64 > STATE_KEYS {
                    backend = None; // close RocksDB before its directory is replaced
                    backend = Some(fresh.create());
                    next = 0;
                }
                let block = key_block(next..next + ROWS as i64);
                next += ROWS as i64;
                let be = backend.as_deref_mut().unwrap();
                let start = Instant::now();
                put_block(&state, be, &block);
                total += start.elapsed();
            }
            total
        })
    });
    drop(backend);

    // A state of STATE_KEYS keys for gets and updates.
    let existing = Factory {
        kind,
        dir: root.join("existing"),
    };
    let mut backend = existing.create();
    for lo in (0..STATE_KEYS).step_by(ROWS) {
        let hi = (lo + ROWS as i64).min(STATE_KEYS);
        put_block(&state, &mut *backend, &key_block(lo..hi));
    }
    let mut rng = SmallRng::seed_from_u64(5);
    let pool: Vec<KeyBlock> = (0..POOL)
        .map(|_| key_block((0..ROWS).map(|_| rng.random_range(0..STATE_KEYS))))
        .collect();

    let mut i = 0usize;
    group.bench_function("get_existing", |b| {
        b.iter(|| {
            let block = &pool[i % POOL];
            i += 1;
            let mut found = 0u64;
            for (key, &kg) in block.keys.iter().zip(&block.key_groups) {
                found += state
                    .get(&*backend, StateAddr::key(kg, key))
                    .unwrap()
                    .unwrap_or(0);
            }
            black_box(found)
        })
    });

    group.bench_function("read_modify_write", |b| {
        b.iter(|| {
            let block = &pool[i % POOL];
            i += 1;
            for (key, &kg) in block.keys.iter().zip(&block.key_groups) {
                state
                    .update(&mut *backend, StateAddr::key(kg, key), |v| {
                        Some(v.unwrap_or(0) + 1)
                    })
                    .unwrap();
            }
        })
    });
    // Sanity: every key of the pool is still there.
    let block = &pool[0];
    for (key, &kg) in block.keys.iter().zip(&block.key_groups) {
        assert!(state
            .get(&*backend, StateAddr::key(kg, key))
            .unwrap()
            .is_some());
    }
    group.finish();
}

fn bench(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    bench_backend(c, "memory", Kind::Memory, tmp.path());
    bench_backend(c, "rocksdb", Kind::RocksDb, tmp.path());
}

criterion_group!(benches, bench);
criterion_main!(benches);
