//! Partitioning through the runtime: hash by key sends every key to exactly one subtask,
//! the one owning the key's key group; broadcast gives every subtask every row.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use arrow::array::{Array, AsArray};
use arrow::record_batch::RecordBatch;
use serde_json::json;
use weir::prelude::*;
use weir_engine::state::{hash_columns, key_group_for_hash};

use crate::common::block_on;

/// Records `(subtask, key group range start, keys)` of every batch it sees.
struct KeyProbe {
    seen: Arc<Mutex<Vec<(usize, String)>>>,
    ranges: Arc<Mutex<BTreeMap<usize, (u16, u16)>>>,
}

impl Operator for KeyProbe {
    fn open(&mut self, ctx: &mut OperatorContext) -> weir_engine::Result<()> {
        if let Ok(mut r) = self.ranges.lock() {
            r.insert(ctx.subtask, (ctx.key_groups.start, ctx.key_groups.end));
        }
        Ok(())
    }

    fn process_batch(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        ctx: &mut OperatorContext,
        out: &mut Collector,
    ) -> weir_engine::Result<()> {
        let keys = batch.column(0).as_string::<i32>();
        if let Ok(mut s) = self.seen.lock() {
            for i in 0..keys.len() {
                s.push((ctx.subtask, keys.value(i).to_string()));
            }
        }
        out.emit(batch);
        Ok(())
    }
}

fn source(p: &Pipeline, rows: u64) -> Stream {
    p.source(
        "gen",
        SourceSpec::new("datagen")
            .option("rows", rows)
            .option("seed", 3)
            .option("fields", json!({"k": {"length": 3}}))
            .schema(&[("k", "string"), ("v", "int")])
            .parallelism(3),
    )
    .expect("source")
}

#[test]
fn hash_partitioning_sends_each_key_to_the_subtask_owning_its_key_group() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let ranges = Arc::new(Mutex::new(BTreeMap::new()));
    let p = Pipeline::new("hash").parallelism(4);
    let gen = source(&p, 5_000);
    let schema = gen.schema().expect("schema");
    let (s2, r2) = (seen.clone(), ranges.clone());
    gen.process(
        "probe",
        schema.clone(),
        Some(Partitioning::Hash(vec!["k".into()])),
        move |_, _| {
            Box::new(KeyProbe {
                seen: s2.clone(),
                ranges: r2.clone(),
            })
        },
    )
    .expect("probe");
    block_on(weir::run(p.build().expect("graph"))).expect("job");

    let seen = seen.lock().expect("lock").clone();
    let ranges = ranges.lock().expect("lock").clone();
    assert_eq!(seen.len(), 5_000, "every row arrives once");
    assert_eq!(ranges.len(), 4);
    let mut owner: BTreeMap<&str, BTreeSet<usize>> = BTreeMap::new();
    for (subtask, key) in &seen {
        owner.entry(key.as_str()).or_default().insert(*subtask);
    }
    assert!(owner.len() > 1_000, "expected many distinct keys");
    let mut used = BTreeSet::new();
    for (key, subtasks) in &owner {
        assert_eq!(subtasks.len(), 1, "key {key} reached subtasks {subtasks:?}");
        let subtask = *subtasks.iter().next().expect("one");
        used.insert(subtask);
        // The key's key group lies in the range of the subtask that got it.
        let arr = arrow::array::StringArray::from(vec![*key]);
        let b = RecordBatch::try_new(
            Arc::new(arrow::datatypes::Schema::new(vec![schema.field(0).clone()])),
            vec![Arc::new(arr)],
        )
        .expect("batch");
        let kg = key_group_for_hash(hash_columns(&b, &[0]).expect("hash")[0], 128);
        let (start, end) = ranges[&subtask];
        assert!(
            (start..end).contains(&kg),
            "key {key} in key group {kg} went to subtask {subtask} owning {start}..{end}"
        );
    }
    assert_eq!(used.len(), 4, "all subtasks got keys");
}

#[test]
fn broadcast_gives_every_subtask_every_row() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let ranges = Arc::new(Mutex::new(BTreeMap::new()));
    let p = Pipeline::new("broadcast").parallelism(3);
    let gen = source(&p, 500);
    let schema = gen.schema().expect("schema");
    let (s2, r2) = (seen.clone(), ranges.clone());
    gen.process(
        "probe",
        schema,
        Some(Partitioning::Broadcast),
        move |_, _| {
            Box::new(KeyProbe {
                seen: s2.clone(),
                ranges: r2.clone(),
            })
        },
    )
    .expect("probe");
    block_on(weir::run(p.build().expect("graph"))).expect("job");
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 3 * 500);
    for subtask in 0..3 {
        assert_eq!(seen.iter().filter(|(s, _)| *s == subtask).count(), 500);
    }
}

#[test]
fn a_window_after_key_by_on_the_same_keys_does_not_shuffle_again() {
    let p = Pipeline::new("keyed").parallelism(2);
    let gen = p
        .source(
            "gen",
            SourceSpec::new("datagen")
                .option("rows", 10)
                .schema(&[("k", "string"), ("ts", "timestamp")])
                .event_time("ts", "1s"),
        )
        .expect("source");
    let keyed = gen.key_by("keyed", &["k"]).expect("key_by");
    let w = keyed
        .window(
            "w",
            WindowSpec::tumbling("1m")
                .key(&["k"])
                .aggregate("n", "count(*)"),
        )
        .expect("window");
    let other = keyed
        .window(
            "w2",
            WindowSpec::tumbling("1m")
                .key(&["ts"])
                .aggregate("n", "count(*)"),
        )
        .expect("window on other keys");
    drop((w, other));
    let g = p.build().expect("graph");
    let part = |to: &str| {
        let id = g.node_by_name(to).expect("node").id;
        g.inputs_of(id)[0].partitioning.to_string()
    };
    assert_eq!(part("keyed"), "hash(k)");
    assert_eq!(
        part("w"),
        "forward",
        "same keys, same parallelism: no second shuffle"
    );
    assert_eq!(part("w2"), "hash(ts)", "other keys: shuffle");
}
