//! Tests of the window step: each window kind on hand-written input with the exact
//! expected rows (first results, updates, late rows), every aggregate, bounded state,
//! checkpoint/restore equivalence, build errors, processing time, and one job through
//! the runtime.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::util::display::array_value_to_string;
use serde_json::{json, Value};
use weir_engine::aggregate::AggregateTable;
use weir_engine::operator::{Collector, Operator, OperatorContext, TableSnapshot};
use weir_engine::registry::{BuildContext, FieldError, Partitioning, StepFactory};
use weir_engine::state::{
    hash_columns, table_log, KeyGroupRange, KeyedStateBackend, ManualClock, StateDescriptor,
    TableLogWriter,
};
use weir_engine::time::{event_time_column, EVENT_TIME_METADATA};

use super::*;
use crate::aggregates::BuiltinAggregate;
use weir_engine::state::StateAddr;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, false),
        Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        Field::new("v", DataType::Int64, true),
        Field::new("s", DataType::Utf8, true),
        Field::new("x", DataType::Float64, true),
        Field::new("b", DataType::Boolean, true),
    ]))
}

/// One input row.
#[derive(Clone, Debug)]
struct R {
    k: &'static str,
    t: Option<i64>,
    v: Option<i64>,
    s: Option<&'static str>,
    x: Option<f64>,
    b: Option<bool>,
}

fn r(k: &'static str, t: i64, v: i64) -> R {
    R {
        k,
        t: Some(t),
        v: Some(v),
        s: None,
        x: None,
        b: None,
    }
}

fn batch(rows: &[R]) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.k))),
            Arc::new(TimestampMillisecondArray::from(
                rows.iter().map(|r| r.t).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.v).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.s).collect::<Vec<_>>(),
            )),
            Arc::new(Float64Array::from(
                rows.iter().map(|r| r.x).collect::<Vec<_>>(),
            )),
            Arc::new(BooleanArray::from(
                rows.iter().map(|r| r.b).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap()
}

/// A build context with the built-in aggregates.
pub(crate) fn build_ctx() -> BuildContext {
    let mut table = AggregateTable::default();
    for f in BuiltinAggregate::ALL {
        table.add(Arc::new(f));
    }
    BuildContext {
        checkpoints: Default::default(),
        job: "test".into(),
        base_dir: ".".into(),
        aggregates: Arc::new(table),
    }
}

/// The first `n` columns of every row, space-separated; timestamps as integers.
fn fmt_rows(batch: &RecordBatch, n: usize) -> Vec<String> {
    let cols: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .take(n)
        .map(|c| match c.data_type() {
            DataType::Timestamp(_, _) => arrow::compute::cast(c, &DataType::Int64).unwrap(),
            _ => c.clone(),
        })
        .collect();
    (0..batch.num_rows())
        .map(|i| {
            cols.iter()
                .map(|c| {
                    if c.is_null(i) {
                        "null".to_string()
                    } else {
                        array_value_to_string(c, i).unwrap()
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// Drives one operator like the runtime does: a batch, then the new watermark.
struct H {
    op: WindowOperator,
    ctx: OperatorContext,
    main: Vec<String>,
    late: Vec<String>,
    /// The table-log chain the checkpoints wrote (a full file, then deltas).
    chain: Vec<Vec<u8>>,
    /// A table snapshot is being written (deferred): one more entry after each batch.
    deferred: bool,
    /// The keyed state and the watermark as of the last checkpoint's barrier.
    keyed: Option<(weir_engine::state::StateSnapshot, i64)>,
}

impl H {
    fn new(value: Value) -> H {
        let plan = WindowStep::plan(&build_ctx(), &value, &schema()).unwrap();
        H::with(
            WindowOperator::new(Arc::new(plan)),
            OperatorContext::for_test("w"),
        )
    }

    fn with(mut op: WindowOperator, mut ctx: OperatorContext) -> H {
        op.open(&mut ctx).unwrap();
        H {
            op,
            ctx,
            main: Vec::new(),
            late: Vec::new(),
            chain: Vec::new(),
            deferred: false,
            keyed: None,
        }
    }

    /// A checkpoint as the runtime takes it: `handle_checkpoint`, then the table log
    /// (full at first, then deltas; compacted as the runtime may after three files).
    fn checkpoint(&mut self, epoch: u64) {
        self.finish_snapshot();
        self.op.handle_checkpoint(epoch, &mut self.ctx).unwrap();
        self.keyed = Some((self.ctx.state.snapshot().unwrap(), self.ctx.watermark));
        let log = TableLogWriter::new(self.chain.is_empty());
        match self.op.snapshot_table(epoch, log).unwrap() {
            TableSnapshot::Done(log) => self.add_log(log),
            TableSnapshot::Deferred => self.deferred = true,
            TableSnapshot::NoTable => panic!("windows keep a table"),
        }
    }

    /// Lets a deferred table snapshot write `budget` more windows (the runtime does it
    /// between batches), so that windows change while it is written.
    fn progress(&mut self, budget: usize) {
        if self.deferred {
            if let Some(log) = self.op.continue_table_snapshot(budget).unwrap() {
                self.deferred = false;
                self.add_log(log);
            }
        }
    }

    fn finish_snapshot(&mut self) {
        self.progress(usize::MAX);
        assert!(!self.deferred);
    }

    fn add_log(&mut self, log: TableLogWriter) {
        self.chain.push(log.finish());
        if self.chain.len() == 3 {
            self.chain = vec![table_log::compact(&self.chain).unwrap()];
        }
    }

    /// The windows the checkpoints hold, for `range`.
    fn restored(&mut self, range: &KeyGroupRange) -> Vec<weir_engine::state::TableEntry> {
        self.finish_snapshot();
        table_log::replay(&self.chain, range).unwrap()
    }

    /// A context restored from the last checkpoint: its keyed state and its windows.
    fn restored_ctx(
        &mut self,
        range: KeyGroupRange,
        subtask: usize,
        parallelism: usize,
    ) -> OperatorContext {
        let mut ctx = OperatorContext::for_test("w");
        ctx.parallelism = parallelism;
        ctx.subtask = subtask;
        ctx.key_groups = range;
        let (snapshot, watermark) = match &self.keyed {
            Some((s, w)) => (s.clone(), *w),
            None => (self.ctx.state.snapshot().unwrap(), self.ctx.watermark),
        };
        ctx.state.restore(&snapshot, &range).unwrap();
        ctx.restored_table = Some(self.restored(&range));
        // The runtime records the watermark at the barrier and restores it.
        ctx.restored_watermarks = vec![(KeyGroupRange::all(128), watermark)];
        ctx.watermark = watermark;
        ctx
    }

    fn collect(&mut self, mut out: Collector) {
        for b in out.take_main() {
            self.main.extend(fmt_rows(&b, usize::MAX));
        }
        for (name, b) in out.take_side() {
            assert_eq!(name, "late");
            self.late.extend(fmt_rows(&b, 3));
        }
    }

    fn push(&mut self, rows: &[R]) {
        let mut out = Collector::default();
        self.op
            .process_batch(0, batch(rows), &mut self.ctx, &mut out)
            .unwrap();
        self.collect(out);
        self.progress(1);
    }

    fn wm(&mut self, w: i64) {
        let mut out = Collector::default();
        self.ctx.watermark = w;
        self.op
            .handle_watermark(w, &mut self.ctx, &mut out)
            .unwrap();
        // The runtime calls again while the operator has more to fire.
        while self.op.more_to_fire() {
            self.op
                .handle_watermark(w, &mut self.ctx, &mut out)
                .unwrap();
        }
        self.collect(out);
    }

    fn end(&mut self) {
        self.wm(i64::MAX);
        let mut out = Collector::default();
        self.op
            .handle_end_of_input(&mut self.ctx, &mut out)
            .unwrap();
        while self.op.more_to_fire() {
            self.op
                .handle_end_of_input(&mut self.ctx, &mut out)
                .unwrap();
        }
        self.collect(out);
    }

    fn take(&mut self) -> Vec<String> {
        std::mem::take(&mut self.main)
    }

    fn take_late(&mut self) -> Vec<String> {
        std::mem::take(&mut self.late)
    }

    fn late_metric(&self) -> u64 {
        self.ctx
            .metrics
            .late_records
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

fn count_sum(kind: Value, lateness: i64) -> Value {
    let mut v = json!({
        "key": ["k"],
        "aggregate": {"n": "count(*)", "total": "sum(v)"},
        "allowed_lateness": format!("{lateness}ms"),
    });
    if let (Value::Object(m), Value::Object(k)) = (&mut v, kind) {
        m.extend(k);
    }
    v
}

#[test]
fn tumbling_without_lateness() {
    let mut h = H::new(count_sum(json!({"tumbling": "10ms"}), 0));
    h.push(&[r("a", 1, 1), r("a", 5, 2), r("b", 12, 3), r("a", 15, 4)]);
    assert!(h.take().is_empty(), "nothing fires before the watermark");
    h.wm(8);
    assert!(h.take().is_empty(), "end - 1 = 9 > 8");
    h.wm(9);
    assert_eq!(h.take(), vec!["a 0 10 2 3 false"]);
    assert_eq!(h.op.live_windows(), 2, "[0,10) of a purged with L = 0");
    // [0, 10) is late now (9 + 0 <= 9): the record goes to `late`, nothing else.
    h.push(&[r("a", 3, 10), r("a", 11, 5)]);
    assert!(h.take().is_empty(), "no update rows with L = 0");
    assert_eq!(h.take_late(), vec!["a 3 10"]);
    assert_eq!(h.late_metric(), 1);
    h.wm(20);
    // By window end, then key bytes.
    assert_eq!(h.take(), vec!["a 10 20 2 9 false", "b 10 20 1 3 false"]);
    h.end();
    assert!(h.take().is_empty());
    assert_eq!(h.op.live_windows(), 0);
}

#[test]
fn tumbling_with_lateness_emits_one_update_per_window_per_batch() {
    let mut h = H::new(count_sum(json!({"tumbling": "10ms"}), 5));
    h.push(&[r("a", 1, 1), r("a", 2, 2)]);
    h.wm(9);
    assert_eq!(h.take(), vec!["a 0 10 2 3 false"]);
    assert_eq!(h.op.live_windows(), 1, "kept until 9 + 5");
    // Two late-but-allowed records in one batch: one update row with the full result.
    h.push(&[r("a", 3, 10), r("a", 4, 20)]);
    assert_eq!(h.take(), vec!["a 0 10 4 33 true"]);
    h.wm(12);
    assert!(h.take().is_empty(), "fired windows do not fire again");
    // A new window whose end has passed but which is not late yet: no update (it has
    // not fired); it fires at the next watermark.
    h.push(&[r("b", 8, 1)]);
    assert!(h.take().is_empty());
    h.wm(13);
    assert_eq!(h.take(), vec!["b 0 10 1 1 false"]);
    h.wm(14);
    assert_eq!(h.op.live_windows(), 0, "purged at 9 + 5");
    h.push(&[r("a", 5, 7), r("b", 9, 1)]);
    assert!(h.take().is_empty());
    assert_eq!(h.take_late(), vec!["a 5 7", "b 9 1"]);
    h.end();
    assert!(h.take().is_empty());
}

#[test]
fn sliding_windows_skip_their_late_windows() {
    let mut h = H::new(count_sum(
        json!({"sliding": {"size": "10ms", "slide": "5ms"}}),
        0,
    ));
    h.push(&[r("a", 3, 1), r("a", 7, 2)]);
    h.wm(4);
    assert_eq!(h.take(), vec!["a -5 5 1 1 false"]);
    // t = 2 is in [-5, 5) (late) and [0, 10) (not): only [0, 10) is updated.
    h.push(&[r("a", 2, 4)]);
    assert!(h.take().is_empty());
    assert!(h.take_late().is_empty());
    h.wm(14);
    assert_eq!(h.take(), vec!["a 0 10 3 7 false", "a 5 15 1 2 false"]);
    // t = 12: [5, 15) late, [10, 20) new. t = 4: both windows late → late record.
    h.push(&[r("a", 12, 8), r("a", 4, 100)]);
    assert_eq!(h.take_late(), vec!["a 4 100"]);
    h.end();
    assert_eq!(h.take(), vec!["a 10 20 1 8 false"]);
}

#[test]
fn sliding_with_lateness_updates_the_windows_still_alive() {
    let mut h = H::new(count_sum(
        json!({"sliding": {"size": "10ms", "slide": "5ms"}}),
        3,
    ));
    h.push(&[r("a", 7, 1)]);
    h.wm(9);
    assert_eq!(h.take(), vec!["a 0 10 1 1 false"]);
    h.wm(12);
    assert_eq!(h.op.live_windows(), 1, "[0,10) purged at 9 + 3");
    // t = 8: [0, 10) is late and skipped, [5, 15) has not fired: no output.
    h.push(&[r("a", 8, 2)]);
    assert!(h.take().is_empty());
    assert!(h.take_late().is_empty());
    h.wm(14);
    assert_eq!(h.take(), vec!["a 5 15 2 3 false"]);
    // t = 9: [0, 10) late, [5, 15) fired but alive until 17: one update.
    h.push(&[r("a", 9, 5)]);
    assert_eq!(h.take(), vec!["a 5 15 3 8 true"]);
    h.end();
    assert!(h.take().is_empty());
    assert!(h.take_late().is_empty());
}

#[test]
fn sessions_merge_and_a_bridging_record_gives_one_update() {
    let mut h = H::new(count_sum(json!({"session": {"gap": "10ms"}}), 100));
    h.push(&[r("a", 0, 1), r("a", 15, 2), r("b", 0, 7)]);
    h.wm(30);
    assert_eq!(
        h.take(),
        vec!["a 0 10 1 1 false", "b 0 10 1 7 false", "a 15 25 1 2 false"]
    );
    // t = 8 forms [8, 18), overlapping [0, 10) and [15, 25): one session [0, 25), fired
    // (both were), one update row. b's new session has not fired.
    h.push(&[r("a", 8, 4), r("b", 40, 1)]);
    assert_eq!(h.take(), vec!["a 0 25 3 7 true"]);
    assert_eq!(h.op.live_windows(), 3);
    h.wm(200);
    assert_eq!(h.take(), vec!["b 40 50 1 1 false"]);
    assert_eq!(h.op.live_windows(), 0, "all purged at end - 1 + 100 <= 200");
    // [5, 15) would be late; [150, 160) is not (159 + 100 > 200).
    h.push(&[r("a", 150, 9), r("a", 5, 1)]);
    assert_eq!(h.take_late(), vec!["a 5 1"]);
    assert!(h.take().is_empty());
    h.end();
    assert_eq!(h.take(), vec!["a 150 160 1 9 false"]);
}

#[test]
fn sessions_merge_within_a_batch_in_arrival_order() {
    let mut h = H::new(count_sum(json!({"session": "10ms"}), 0));
    // 20 and 5 are separate until 12 bridges them: one session [5, 30).
    h.push(&[r("a", 20, 1), r("a", 5, 2), r("a", 12, 3), r("a", 50, 4)]);
    assert_eq!(h.op.live_windows(), 2);
    h.wm(29);
    assert_eq!(h.take(), vec!["a 5 30 3 6 false"]);
    // With L = 0 a record overlapping nothing live, whose own session is late, is late;
    // one that would have merged into the purged session is late too.
    h.push(&[r("a", 15, 1), r("a", 10, 1)]);
    assert_eq!(h.take_late(), vec!["a 15 1", "a 10 1"]);
    // A record that extends a live, unfired session moves its end.
    h.push(&[r("a", 55, 6)]);
    h.wm(60);
    assert!(h.take().is_empty(), "[50, 65) does not fire at 60");
    h.end();
    assert_eq!(h.take(), vec!["a 50 65 2 10 false"]);
}

#[test]
fn grown_sessions_fire_in_end_order_and_purge_at_their_real_time() {
    // The fire/purge queues are corrected lazily: a session that grows keeps its old
    // entry. Here "b" starts first but grows past "a" and "d", one row per batch (the
    // fast path), and "c" is merged from two sessions (the general path).
    let mut h = H::new(count_sum(json!({"session": "10ms"}), 5));
    h.push(&[r("b", 0, 1)]); // b [0, 10)
    h.push(&[r("a", 2, 1)]); // a [2, 12)
    h.push(&[r("b", 8, 1)]); // b [0, 18)
    h.push(&[r("c", 3, 1), r("c", 16, 1)]); // c [3, 13) and [16, 26)
    h.push(&[r("d", 9, 1)]); // d [9, 19)
    h.push(&[r("b", 15, 1)]); // b [0, 25)
    h.push(&[r("c", 12, 1)]); // c [3, 26): bridges both
    assert_eq!(h.op.live_windows(), 4);
    h.wm(26);
    // b's queue entry (end 10) comes out first; the output is still in end order.
    assert_eq!(
        h.take(),
        vec![
            "a 2 12 1 1 false",
            "d 9 19 1 1 false",
            "b 0 25 3 3 false",
            "c 3 26 3 3 false"
        ]
    );
    // Purge at end - 1 + 5: a at 16, d at 23 (both gone), b at 29, c at 30.
    assert_eq!(h.op.live_windows(), 2);
    // A late row within lateness updates b (fired) and is not late.
    h.push(&[r("b", 20, 1)]);
    assert_eq!(h.take(), vec!["b 0 30 4 4 true"]);
    assert!(h.take_late().is_empty());
    h.wm(30);
    assert_eq!(h.op.live_windows(), 1, "c purged at 30, b now at 34");
    h.wm(33);
    assert_eq!(h.op.live_windows(), 1);
    h.wm(34);
    assert_eq!(h.op.live_windows(), 0);
    h.end();
    assert!(h.take().is_empty());
}

#[test]
fn a_late_record_merged_session_is_checked_not_its_own() {
    // The merged session decides: a record whose own session [t, t + gap) would be
    // late, but which overlaps a live session ending later, is not late.
    let mut h = H::new(count_sum(json!({"session": {"gap": "10ms"}}), 0));
    h.push(&[r("a", 18, 1)]);
    h.wm(20);
    assert!(h.take().is_empty(), "[18, 28) is open");
    h.push(&[r("a", 9, 2)]); // [9, 19) is late alone, but merges into [9, 28)
    assert!(h.take_late().is_empty());
    h.end();
    assert_eq!(h.take(), vec!["a 9 28 2 3 false"]);
}

#[test]
fn global_window_without_key() {
    let value = json!({"tumbling": "10ms", "aggregate": {"n": "count(*)"}});
    let step = WindowStep
        .build(&build_ctx(), "w", &value, &[schema()])
        .unwrap();
    assert_eq!(step.input_partitioning, Some(Partitioning::Hash(vec![])));
    assert_eq!(step.keyed_by, None);
    let names: Vec<&str> = step
        .schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    assert_eq!(names, vec!["window_start", "window_end", "n", "is_update"]);
    // Hashing zero columns works and gives every row the same hash (one subtask).
    let b = batch(&[r("a", 1, 1), r("b", 2, 2), r("c", 3, 3)]);
    let hashes = hash_columns(&b, &[]).unwrap();
    assert_eq!(hashes.len(), 3);
    assert!(hashes.iter().all(|h| *h == hashes[0]));

    let mut h = H::new(value);
    h.push(&[r("a", 1, 1), r("b", 2, 2), r("c", 13, 3)]);
    h.wm(10);
    assert_eq!(h.take(), vec!["0 10 2 false"]);
    h.end();
    assert_eq!(h.take(), vec!["10 20 1 false"]);
}

#[test]
fn every_aggregate_with_nulls() {
    let value = json!({
        "tumbling": "10ms",
        "key": "k",
        "aggregate": {
            "n": "count(*)",
            "c": "count(v)",
            "s": "sum(v)",
            "mn": "min(v)",
            "mx": "max(v)",
            "av": "avg(v)",
            "f": "first(s)",
            "l": "last(s)",
            "d": "count(distinct s)",
            "twice": "sum(v * 2)",
            "ax": "avg(x)",
            "sx": "sum(x)",
            "bmax": "max(b)",
            "bmin": "min(b)",
            "lt": "last(ts)"
        }
    });
    let mut h = H::new(value.clone());
    let row = |k, t, v, s, x, b| R {
        k,
        t: Some(t),
        v,
        s,
        x,
        b,
    };
    // Split over two batches; t = 2 twice (first: earliest arrival wins).
    h.push(&[
        row("a", 5, Some(3), Some("p"), Some(1.5), Some(true)),
        row("a", 2, None, Some("q"), None, None),
        row("b", 1, None, None, None, None),
    ]);
    h.push(&[
        row("a", 8, Some(-1), None, Some(2.0), Some(false)),
        row("a", 2, Some(4), Some("r"), None, None),
        row("a", 7, Some(4), Some("p"), None, None),
    ]);
    h.end();
    assert_eq!(
        h.take(),
        vec![
            "a 0 10 5 4 10 -1 4 2.5 q p 3 20 1.75 3.5 true false 8 false",
            "b 0 10 1 0 null null null null null null 0 null null null null null 1 false",
        ]
    );
    let plan = WindowStep::plan(&build_ctx(), &value, &schema()).unwrap();
    let types: Vec<String> = plan
        .output
        .fields()
        .iter()
        .skip(3)
        .map(|f| f.data_type().to_string())
        .collect();
    assert_eq!(
        types,
        vec![
            "Int64",
            "Int64",
            "Int64",
            "Int64",
            "Int64",
            "Float64",
            "Utf8",
            "Utf8",
            "Int64",
            "Int64",
            "Float64",
            "Float64",
            "Boolean",
            "Boolean",
            "Timestamp(ms)",
            "Boolean"
        ]
    );
}

#[test]
fn first_and_last_follow_event_time_not_arrival() {
    let value = json!({
        "tumbling": "100ms",
        "aggregate": {"f": "first(v)", "l": "last(v)", "d": "count(distinct v)"}
    });
    let mut h = H::new(value);
    h.push(&[r("a", 50, 1), r("a", 10, 2), r("a", 90, 3)]);
    h.push(&[r("a", 5, 4), r("a", 95, 5), r("a", 95, 6), r("a", 5, 7)]);
    // Duplicates count as many times as they arrive (count), once for distinct.
    h.push(&[r("a", 60, 1), r("a", 60, 1)]);
    h.end();
    assert_eq!(h.take(), vec!["0 100 4 6 7 false"]);
}

#[test]
fn output_schema_and_side_output() {
    let value = count_sum(json!({"tumbling": "1m"}), 0);
    let step = WindowStep
        .build(&build_ctx(), "w", &value, &[schema()])
        .unwrap();
    let s = &step.schema;
    let names: Vec<&str> = s.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names,
        vec!["k", "window_start", "window_end", "n", "total", "is_update"]
    );
    assert_eq!(event_time_column(s), Some(2));
    assert!(s.field(2).metadata().contains_key(EVENT_TIME_METADATA));
    assert_eq!(
        s.field(1).data_type(),
        &DataType::Timestamp(TimeUnit::Millisecond, None)
    );
    assert_eq!(step.side_outputs, vec![("late".to_string(), schema())]);
    assert_eq!(
        step.input_partitioning,
        Some(Partitioning::Hash(vec!["k".into()]))
    );
    assert_eq!(step.keyed_by, Some(vec!["k".into()]));
    assert!(step.describe.contains("tumbling 1m"), "{}", step.describe);
    // The schema the registry publishes accepts the documented forms.
    let schema_json = WindowStep.options_schema();
    assert_eq!(schema_json["additionalProperties"], false);
}

#[test]
fn explicit_event_time_column_and_integer_times() {
    let s = Arc::new(Schema::new(vec![
        Field::new("at", DataType::Int64, false),
        Field::new("n", DataType::Int64, false),
    ]));
    let value = json!({"tumbling": "10ms", "event_time": "at", "aggregate": {"s": "sum(n)"}});
    let plan = WindowStep::plan(&build_ctx(), &value, &s).unwrap();
    let mut op = WindowOperator::new(Arc::new(plan));
    let mut ctx = OperatorContext::for_test("w");
    let mut out = Collector::default();
    let b = RecordBatch::try_new(
        s,
        vec![
            Arc::new(Int64Array::from(vec![1, 12, 3])),
            Arc::new(Int64Array::from(vec![1, 2, 4])),
        ],
    )
    .unwrap();
    op.process_batch(0, b, &mut ctx, &mut out).unwrap();
    op.handle_watermark(i64::MAX, &mut ctx, &mut out).unwrap();
    let rows: Vec<String> = out
        .take_main()
        .iter()
        .flat_map(|b| fmt_rows(b, 9))
        .collect();
    assert_eq!(rows, vec!["0 10 5 false", "10 20 2 false"]);
}

#[test]
fn null_event_times_are_late() {
    let mut h = H::new(count_sum(json!({"tumbling": "10ms"}), 0));
    let mut nul = r("a", 0, 1);
    nul.t = None;
    h.push(&[nul, r("a", 1, 2)]);
    assert_eq!(h.take_late(), vec!["a null 1"]);
    assert_eq!(h.late_metric(), 1);
    h.end();
    assert_eq!(h.take(), vec!["a 0 10 1 2 false"]);
}

/// Event times at the limits of `i64`: no input panics, and a record whose window
/// bounds cannot be represented goes to `late` (docs/WINDOWS.md, "Edge cases").
#[test]
fn event_times_at_the_i64_limits_never_panic() {
    const MIN: i64 = i64::MIN;
    const MAX: i64 = i64::MAX;
    let extremes = [
        r("a", MIN, 1),
        r("a", MIN + 1, 2),
        r("a", MAX - 1, 3),
        r("a", MAX, 4),
    ];
    let late_of = |rows: &[(i64, i64)]| -> Vec<String> {
        rows.iter().map(|(t, v)| format!("a {t} {v}")).collect()
    };

    // Tumbling 8ms: 8 divides 2^63, so [MIN, MIN + 8) exists; the window of MAX - 1 and
    // MAX would end at 2^63.
    let mut h = H::new(count_sum(json!({"tumbling": "8ms"}), 0));
    h.push(&extremes);
    assert_eq!(h.take_late(), late_of(&[(MAX - 1, 3), (MAX, 4)]));
    h.end();
    assert_eq!(h.take(), vec![format!("a {MIN} {} 2 3 false", MIN + 8)]);
    assert_eq!(h.late_metric(), 2);
    assert_eq!(h.op.live_windows(), 0);

    // Tumbling 10ms: no window of these times fits (MIN is 2 past a multiple of 10).
    let mut h = H::new(count_sum(json!({"tumbling": "10ms"}), 0));
    h.push(&extremes);
    assert_eq!(
        h.take_late(),
        late_of(&[(MIN, 1), (MIN + 1, 2), (MAX - 1, 3), (MAX, 4)])
    );
    h.end();
    assert!(h.take().is_empty());

    // Sliding 8ms every 4ms: MIN and MIN + 1 would also be in [MIN - 4, MIN + 4), so they
    // are late as a whole; MIN + 4 and MAX - 8 have both their windows.
    let mut h = H::new(count_sum(
        json!({"sliding": {"size": "8ms", "slide": "4ms"}}),
        0,
    ));
    let mut rows = extremes.to_vec();
    rows.extend([r("a", MIN + 4, 10), r("a", MAX - 8, 20)]);
    h.push(&rows);
    assert_eq!(
        h.take_late(),
        late_of(&[(MIN, 1), (MIN + 1, 2), (MAX - 1, 3), (MAX, 4)])
    );
    h.end();
    let top = MAX - 15; // 2^63 - 16
    assert_eq!(
        h.take(),
        vec![
            format!("a {MIN} {} 1 10 false", MIN + 8),
            format!("a {} {} 1 10 false", MIN + 4, MIN + 12),
            format!("a {top} {} 1 20 false", top + 8),
            format!("a {} {} 1 20 false", top + 4, top + 12),
        ]
    );
    assert_eq!(h.op.live_windows(), 0);

    // Sessions, gap 10ms, lateness 5ms: [MIN, MIN + 11) from two records; MAX - 10
    // forms [MAX - 10, MAX), the last representable end; MAX - 1 and MAX would end past
    // MAX.
    let mut h = H::new(count_sum(json!({"session": {"gap": "10ms"}}), 5));
    let mut rows = extremes.to_vec();
    rows.push(r("a", MAX - 10, 30));
    h.push(&rows);
    assert_eq!(h.take_late(), late_of(&[(MAX - 1, 3), (MAX, 4)]));
    h.wm(MAX - 2);
    assert_eq!(h.take(), vec![format!("a {MIN} {} 2 3 false", MIN + 11)]);
    // MAX - 5 would overlap [MAX - 10, MAX), but its own session ends past MAX: late.
    // MAX - 10 again fits and joins it.
    h.push(&[r("a", MAX - 5, 40), r("a", MAX - 10, 50)]);
    assert!(h.take().is_empty(), "[MAX - 10, MAX) has not fired");
    assert_eq!(h.take_late(), late_of(&[(MAX - 5, 40)]));
    h.end();
    assert_eq!(h.take(), vec![format!("a {} {MAX} 2 80 false", MAX - 10)]);
    assert!(h.take_late().is_empty());
    assert_eq!(h.late_metric(), 3);
    assert_eq!(h.op.live_windows(), 0);
}

#[test]
fn state_stays_bounded_on_an_endless_stream() {
    for kind in [
        json!({"tumbling": "10ms"}),
        json!({"sliding": {"size": "20ms", "slide": "5ms"}}),
        json!({"session": {"gap": "4ms"}}),
    ] {
        let mut h = H::new(count_sum(kind.clone(), 7));
        let all = KeyGroupRange::all(128);
        let mut max_live = 0;
        // 200 windows' worth for 3 keys, in batches of 10ms, checkpoints every 50ms.
        for step in 0..200i64 {
            let base = step * 10;
            let rows: Vec<R> = (0..10)
                .flat_map(|i| {
                    [
                        r("a", base + i, 1),
                        r("b", base + i, 1),
                        r("c", base + (i / 5) * 5, 1),
                    ]
                })
                .collect();
            h.push(&rows);
            h.wm(base + 9);
            max_live = max_live.max(h.op.live_windows());
            if step % 5 == 4 {
                h.checkpoint(step as u64);
                let stored = h.restored(&all).len();
                assert!(stored <= 30, "{kind}: {stored} windows in the checkpoint");
                let files: usize = h.chain.iter().map(Vec::len).sum();
                assert!(files < 4096, "{kind}: {files} bytes of table log");
            }
        }
        assert!(max_live <= 20, "{kind}: {max_live} live windows");
        h.end();
        assert_eq!(h.op.live_windows(), 0);
        h.checkpoint(999);
        assert_eq!(h.restored(&all).len(), 0, "{kind}");
        assert!(h.main.len() > 200, "{kind}: windows fired");
    }
}

/// A scripted run: batches and watermarks, with shuffled, late, duplicated and
/// null-time records from a small deterministic generator.
#[derive(Clone, Debug)]
enum Step {
    Batch(Vec<R>),
    Wm(i64),
}

fn script(seed: u64, steps: usize) -> Vec<Step> {
    let mut s = seed;
    let mut next = move |n: u64| {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 33) % n
    };
    let keys = ["a", "b", "c"];
    let strs = ["x", "y", "z", "w"];
    let mut out = Vec::new();
    let mut max_t = 0i64;
    let mut prev: Vec<R> = Vec::new();
    for _ in 0..steps {
        let n = 1 + next(5) as usize;
        let mut rows = Vec::new();
        for _ in 0..n {
            if !prev.is_empty() && next(8) == 0 {
                // A duplicate of an earlier record.
                rows.push(prev[next(prev.len() as u64) as usize].clone());
                continue;
            }
            let t = max_t + next(12) as i64 - 6 - if next(6) == 0 { 30 } else { 0 };
            max_t = max_t.max(t);
            rows.push(R {
                k: keys[next(3) as usize],
                t: if next(25) == 0 { None } else { Some(t) },
                v: if next(5) == 0 {
                    None
                } else {
                    Some(next(10) as i64)
                },
                s: if next(4) == 0 {
                    None
                } else {
                    Some(strs[next(4) as usize])
                },
                x: Some(next(4) as f64 * 0.5),
                b: Some(next(2) == 0),
            });
        }
        prev.extend(rows.iter().cloned());
        out.push(Step::Batch(rows));
        if next(3) > 0 {
            out.push(Step::Wm(max_t - 5));
        }
    }
    out.push(Step::Wm(i64::MAX));
    out
}

fn run_steps(h: &mut H, steps: &[Step]) {
    for s in steps {
        match s {
            Step::Batch(rows) => h.push(rows),
            Step::Wm(w) => h.wm(*w),
        }
    }
}

fn all_aggregates(kind: Value, lateness: i64, keyed: bool) -> Value {
    let mut v = json!({
        "aggregate": {
            "n": "count(*)", "c": "count(v)", "s": "sum(v)", "mn": "min(s)", "mx": "max(v)",
            "av": "avg(v)", "f": "first(s)", "l": "last(v)", "d": "count(distinct s)",
            "sx": "sum(x)", "bm": "max(b)"
        },
        "allowed_lateness": format!("{lateness}ms"),
    });
    if let Value::Object(m) = &mut v {
        if keyed {
            m.insert("key".into(), json!(["k"]));
        }
        if let Value::Object(k) = kind {
            m.extend(k);
        }
    }
    v
}

/// Window kinds, lateness and keying that the restore tests go through.
fn restore_configs() -> Vec<Value> {
    vec![
        all_aggregates(json!({"tumbling": "10ms"}), 0, true),
        all_aggregates(json!({"tumbling": "10ms"}), 15, true),
        all_aggregates(
            json!({"sliding": {"size": "20ms", "slide": "5ms"}}),
            10,
            true,
        ),
        all_aggregates(json!({"session": {"gap": "7ms"}}), 10, true),
        all_aggregates(json!({"session": {"gap": "3ms"}}), 0, false),
        all_aggregates(json!({"tumbling": "8ms"}), 20, false),
    ]
}

#[test]
fn restore_from_a_checkpoint_continues_exactly() {
    let configs = restore_configs();
    for (ci, value) in configs.iter().enumerate() {
        for seed in 0..4u64 {
            let steps = script(seed * 31 + ci as u64, 40);
            let mut whole = H::new(value.clone());
            run_steps(&mut whole, &steps);
            assert!(!whole.main.is_empty());
            let mut splits = 0;
            for split in (0..steps.len()).step_by(7) {
                let mut first = H::new(value.clone());
                // An earlier checkpoint too, so that deletions of written state are
                // exercised.
                run_steps(&mut first, &steps[..split / 2]);
                first.checkpoint(1);
                run_steps(&mut first, &steps[split / 2..split]);
                first.checkpoint(2);
                let ctx = first.restored_ctx(KeyGroupRange::all(128), 0, 1);
                let plan = WindowStep::plan(&build_ctx(), value, &schema()).unwrap();
                let mut second = H::with(WindowOperator::new(Arc::new(plan)), ctx);
                assert_eq!(second.op.live_windows(), first.op.live_windows());
                run_steps(&mut second, &steps[split..]);
                let mut main = first.main.clone();
                main.extend(second.main.clone());
                let mut late = first.late.clone();
                late.extend(second.late.clone());
                assert_eq!(main, whole.main, "config {ci} seed {seed} split {split}");
                assert_eq!(late, whole.late, "config {ci} seed {seed} split {split}");
                splits += 1;
            }
            assert!(splits > 3);
        }
    }
}

/// The steps as the subtask owning `range` sees them: the rows of its key groups
/// (keyed on `k`), every watermark.
fn of_key_groups(steps: &[Step], range: KeyGroupRange) -> Vec<Step> {
    steps
        .iter()
        .map(|s| match s {
            Step::Wm(w) => Step::Wm(*w),
            Step::Batch(rows) => {
                let groups =
                    weir_engine::state::key_groups_for_batch(&batch(rows), &[0], 128).unwrap();
                Step::Batch(
                    rows.iter()
                        .zip(groups)
                        .filter(|(_, g)| range.contains(*g))
                        .map(|(r, _)| r.clone())
                        .collect(),
                )
            }
        })
        .collect()
}

/// An operator for `value` that keeps at most `budget` bytes of windows in memory and
/// moves the rest to keyed state (here in memory, as RocksDB would hold it).
fn with_budget(value: &Value, budget: Option<usize>, mut ctx: OperatorContext) -> H {
    let plan = WindowStep::plan(&build_ctx(), value, &schema()).unwrap();
    ctx.memory_budget = budget;
    H::with(WindowOperator::new(Arc::new(plan)), ctx)
}

#[test]
fn keys_moved_out_of_memory_give_the_same_output_through_restores() {
    // Windows beyond the memory budget move to keyed state and come back; with any
    // budget, and restored from a checkpoint while a deferred table snapshot and moves
    // went on after its barrier (at the same and at another parallelism), the output
    // is that of the unbounded operator.
    let configs = restore_configs();
    let mut moved = 0;
    for (ci, value) in configs.iter().enumerate() {
        for seed in 0..3u64 {
            let steps = script(seed * 17 + ci as u64, 40);
            let mut whole = H::new(value.clone());
            run_steps(&mut whole, &steps);
            for budget in [Some(0), Some(2500), Some(5000)] {
                let mut all = with_budget(value, budget, OperatorContext::for_test("w"));
                run_steps(&mut all, &steps);
                assert_eq!(all.main, whole.main, "config {ci} seed {seed} {budget:?}");
                assert_eq!(all.late, whole.late, "config {ci} seed {seed} {budget:?}");
                moved += all.op.moved_keys().0;
                for split in (4..steps.len() - 4).step_by(9) {
                    let ctx = || OperatorContext::for_test("w");
                    let mut first = with_budget(value, budget, ctx());
                    run_steps(&mut first, &steps[..split / 2]);
                    first.checkpoint(1);
                    run_steps(&mut first, &steps[split / 2..split]);
                    first.checkpoint(2);
                    let (main_at, late_at) = (first.main.len(), first.late.len());
                    // Work after the barrier: the table snapshot is written while keys
                    // move (one window per batch), and none of it is in checkpoint 2.
                    run_steps(&mut first, &steps[split..split + 3]);
                    let ctx = first.restored_ctx(KeyGroupRange::all(128), 0, 1);
                    let mut second = with_budget(value, budget, ctx);
                    run_steps(&mut second, &steps[split..]);
                    let mut main = first.main[..main_at].to_vec();
                    main.extend(second.main.clone());
                    let mut late = first.late[..late_at].to_vec();
                    late.extend(second.late.clone());
                    let at = format!("config {ci} seed {seed} {budget:?} split {split}");
                    assert_eq!(main, whole.main, "{at}");
                    assert_eq!(late, whole.late, "{at}");
                    // At parallelism 2: each subtask takes its key groups of both tiers.
                    let mut rows = first.main[..main_at].to_vec();
                    for subtask in 0..2 {
                        let range = KeyGroupRange::for_subtask(128, 2, subtask);
                        let ctx = first.restored_ctx(range, subtask, 2);
                        let mut sub = with_budget(value, budget, ctx);
                        run_steps(&mut sub, &of_key_groups(&steps[split..], range));
                        rows.extend(sub.main);
                    }
                    let mut want = whole.main.clone();
                    want.sort();
                    rows.sort();
                    if value.get("key").is_some() {
                        assert_eq!(rows, want, "{at}, parallelism 2");
                    }
                }
            }
        }
    }
    assert!(moved > 100, "keys moved: {moved}");
}

#[test]
fn a_large_firing_from_keyed_state_lets_its_output_flow_in_parts() {
    // 20k keys, all moved out of memory, due at one watermark: each call fires at most
    // a few chunks and asks to be called again; all of them fire exactly once.
    let value = count_sum(json!({"tumbling": "10ms"}), 0);
    let mut h = with_budget(&value, Some(0), OperatorContext::for_test("w"));
    let keys: Vec<String> = (0..20_000).map(|i| format!("k{i}")).collect();
    for chunk in keys.chunks(1000) {
        let rows: Vec<R> = chunk
            .iter()
            .map(|k| {
                let mut row = r("a", 1, 1);
                row.k = Box::leak(k.clone().into_boxed_str());
                row
            })
            .collect();
        h.push(&rows);
    }
    assert_eq!(h.op.live_windows(), 0, "every key moved out");
    let mut calls = 0;
    let mut rows = 0;
    loop {
        let mut out = Collector::default();
        h.ctx.watermark = 9;
        h.op.handle_watermark(9, &mut h.ctx, &mut out).unwrap();
        calls += 1;
        let n: usize = out.take_main().iter().map(|b| b.num_rows()).sum();
        assert!(n <= 4 * 4096, "one call fired {n} windows");
        rows += n;
        if !h.op.more_to_fire() {
            break;
        }
    }
    assert_eq!(rows, 20_000);
    assert!(calls >= 2, "{calls} calls");
    h.wm(100);
    assert!(h.take().is_empty(), "nothing fires twice");
}

#[test]
fn checkpoints_between_batches_do_not_change_output() {
    let value = all_aggregates(json!({"session": {"gap": "7ms"}}), 10, true);
    let steps = script(7, 60);
    let mut plain = H::new(value.clone());
    run_steps(&mut plain, &steps);
    let mut ckpt = H::new(value);
    for (i, s) in steps.iter().enumerate() {
        run_steps(&mut ckpt, std::slice::from_ref(s));
        if i % 3 == 0 {
            ckpt.checkpoint(i as u64);
        }
    }
    assert_eq!(plain.main, ckpt.main);
    assert_eq!(plain.late, ckpt.late);
}

#[test]
fn processing_time_fires_on_ticks_and_nothing_is_late() {
    let value = json!({
        "tumbling": "10ms", "key": "k", "time": "processing",
        "aggregate": {"n": "count(*)"}
    });
    let plan = WindowStep::plan(&build_ctx(), &value, &schema()).unwrap();
    let clock = ManualClock::new(1_000);
    let op = WindowOperator::new(Arc::new(plan)).with_clock(Arc::new(clock.clone()));
    assert!(op.tick_interval().is_some());
    let mut h = H::with(op, OperatorContext::for_test("w"));
    // Event times are ignored (even null or far in the past).
    let mut nul = r("a", 0, 1);
    nul.t = None;
    h.push(&[nul, r("b", -5_000, 1)]);
    h.wm(1_000_000);
    assert!(
        h.take().is_empty(),
        "watermarks do not fire processing-time windows"
    );
    let tick = |h: &mut H, now: i64| {
        clock.set(now);
        let mut out = Collector::default();
        h.op.handle_tick(now, &mut h.ctx, &mut out).unwrap();
        h.collect(out);
    };
    tick(&mut h, 1_005);
    h.push(&[r("a", 0, 1)]);
    tick(&mut h, 1_008);
    assert!(h.take().is_empty());
    tick(&mut h, 1_009);
    assert_eq!(h.take(), vec!["a 1000 1010 2 false", "b 1000 1010 1 false"]);
    tick(&mut h, 1_012);
    h.push(&[r("a", 0, 1)]);
    assert!(h.take_late().is_empty());
    h.end();
    assert_eq!(h.take(), vec!["a 1010 1020 1 false"]);
}

fn build_err(value: Value) -> FieldError {
    match WindowStep.build(&build_ctx(), "w", &value, &[schema()]) {
        Ok(_) => panic!("expected an error for {value}"),
        Err(e) => e,
    }
}

#[test]
fn build_errors_name_the_field() {
    let e = build_err(json!({"tumbling": "1m", "aggregate": {"p": "p95(v)"}}));
    assert_eq!(e.path, "/aggregate/p");
    assert!(
        e.message.contains("unknown aggregate function `p95`"),
        "{e}"
    );
    assert!(
        e.message
            .contains("avg, count, count_distinct, first, last, max, min, sum"),
        "{e}"
    );

    let e = build_err(json!({"sliding": {"size": "10m", "slide": "3m"}}));
    assert_eq!(e.path, "/sliding/slide");
    assert!(e.message.contains("multiple of the slide"), "{e}");

    let e = build_err(json!({"tumbling": "1m", "key": ["k", "service"]}));
    assert_eq!(e.path, "/key/1");
    assert!(
        e.message.contains("known columns: k, ts, v, s, x, b"),
        "{e}"
    );
    let e = build_err(json!({"tumbling": "1m", "key": "service"}));
    assert_eq!(e.path, "/key");

    let e = build_err(json!({"tumbling": "1m", "aggregate": {"e": "sum(nope)"}}));
    assert_eq!(e.path, "/aggregate/e");
    assert!(e.message.contains("nope"), "{e}");

    let e = build_err(json!({"tumbling": "1m", "aggregate": {"e": "sum(s)"}}));
    assert_eq!(e.path, "/aggregate/e");
    assert!(e.message.contains("numeric"), "{e}");

    let e = build_err(json!({"tumbling": "1m", "aggregate": {"e": "sum(distinct v)"}}));
    assert_eq!(e.path, "/aggregate/e");
    let e = build_err(json!({"tumbling": "1m", "aggregate": {"e": "sum(*)"}}));
    assert_eq!(e.path, "/aggregate/e");
    assert!(e.message.contains("only count takes `*`"), "{e}");
    let e = build_err(json!({"tumbling": "1m", "aggregate": {"e": "cnt(*)"}}));
    assert!(
        e.message.contains("unknown aggregate function `cnt`"),
        "{e}"
    );
    let e = build_err(json!({"tumbling": "1m", "aggregate": {"e": "sum"}}));
    assert_eq!(e.path, "/aggregate/e");
    assert!(e.message.contains("function(argument)"), "{e}");
    let e = build_err(json!({"tumbling": "1m", "aggregate": {"e": 3}}));
    assert_eq!(e.path, "/aggregate/e");
    let e = build_err(json!({"tumbling": "1m", "key": "k", "aggregate": {"k": "count(*)"}}));
    assert_eq!(e.path, "/aggregate/k");
    assert!(e.message.contains("clashes"), "{e}");

    let e = build_err(json!({"tumbling": "soon"}));
    assert_eq!(e.path, "/tumbling");
    let e = build_err(json!({"tumbling": "0s"}));
    assert_eq!(e.path, "/tumbling");
    let e = build_err(json!({"session": {"gapp": "1m"}}));
    assert_eq!(e.path, "/session");
    let e = build_err(json!({"session": {"gap": "1m", "extra": 1}}));
    assert_eq!(e.path, "/session/extra");
    let e = build_err(json!({"sliding": "1m"}));
    assert_eq!(e.path, "/sliding");
    let e = build_err(json!({"tumbling": "1m", "session": "1m"}));
    assert_eq!(e.path, "/session");
    let e = build_err(json!({"key": "k"}));
    assert_eq!(e.path, "");
    assert!(e.message.contains("tumbling"), "{e}");
    let e = build_err(json!({"tumbling": "1m", "time": "wall"}));
    assert_eq!(e.path, "/time");
    let e = build_err(json!({"tumbling": "1m", "allowed_lateness": "-1s"}));
    assert_eq!(e.path, "/allowed_lateness");
    let e = build_err(json!({"tumbling": "1m", "lateness": "1s"}));
    assert_eq!(e.path, "/lateness");
    assert!(e.message.contains("allowed_lateness"), "{e}");
    let e = build_err(json!({"tumbling": "1m", "event_time": "k"}));
    assert_eq!(e.path, "/event_time");
    let e = build_err(json!({"tumbling": "1m", "event_time": "nope"}));
    assert_eq!(e.path, "/event_time");
    let e = build_err(json!("tumbling"));
    assert_eq!(e.path, "");

    // No event-time column: two timestamp columns, none marked.
    let two = Arc::new(Schema::new(vec![
        Field::new("a", DataType::Timestamp(TimeUnit::Millisecond, None), false),
        Field::new("b", DataType::Timestamp(TimeUnit::Millisecond, None), false),
    ]));
    let e = WindowStep
        .build(
            &build_ctx(),
            "w",
            &json!({"tumbling": "1m"}),
            std::slice::from_ref(&two),
        )
        .err()
        .unwrap();
    assert_eq!(e.path, "");
    assert!(e.message.contains("no event-time column"), "{e}");
    assert!(e.message.contains("a, b"), "{e}");
    // ... which `event_time:` or processing time fixes.
    assert!(WindowStep
        .build(
            &build_ctx(),
            "w",
            &json!({"tumbling": "1m", "event_time": "b"}),
            std::slice::from_ref(&two)
        )
        .is_ok());
    assert!(WindowStep
        .build(
            &build_ctx(),
            "w",
            &json!({"tumbling": "1m", "time": "processing"}),
            &[two]
        )
        .is_ok());
}

#[test]
fn documented_forms_parse() {
    let o = WindowOptions::parse(&json!({
        "tumbling": "1m", "key": ["k"], "allowed_lateness": "30s", "time": "event",
        "event_time": "ts",
        "aggregate": {"errors": "count(*)", "total": "sum(v)", "users": "count(distinct s)",
                      "first_page": "first(s)"}
    }))
    .unwrap();
    assert_eq!(o.kind, WindowKind::Tumbling { size: 60_000 });
    assert_eq!(o.allowed_lateness, 30_000);
    assert_eq!(o.aggregates[2].function, "count_distinct");
    assert_eq!(o.aggregates[2].argument.as_deref(), Some("s"));
    assert_eq!(o.aggregates[0].argument, None);
    assert!(o.aggregates[0].star);
    let o = WindowOptions::parse(&json!({"sliding": {"size": "10m", "slide": "1m"}})).unwrap();
    assert_eq!(
        o.kind,
        WindowKind::Sliding {
            size: 600_000,
            slide: 60_000
        }
    );
    for v in [
        json!({"session": {"gap": "30m"}}),
        json!({"session": "30m"}),
    ] {
        let o = WindowOptions::parse(&v).unwrap();
        assert_eq!(o.kind, WindowKind::Session { gap: 1_800_000 });
        assert!(o.key.is_empty());
        assert_eq!(o.time, TimeMode::Event);
    }
    let o = WindowOptions::parse(&json!({"tumbling": {"size": "250ms"}, "time": "processing"}))
        .unwrap();
    assert_eq!(o.kind, WindowKind::Tumbling { size: 250 });
    assert_eq!(o.time, TimeMode::Processing);
}

#[test]
fn restored_state_is_split_by_key_group() {
    // Two subtasks after restore: each takes only its key groups' windows.
    let value = count_sum(json!({"tumbling": "10ms"}), 0);
    let mut h = H::new(value.clone());
    h.push(&[
        r("a", 1, 1),
        r("b", 2, 2),
        r("c", 3, 3),
        r("d", 4, 4),
        r("e", 5, 5),
    ]);
    h.checkpoint(1);
    let mut total = 0;
    let mut rows = Vec::new();
    for subtask in 0..2 {
        let range = KeyGroupRange::for_subtask(128, 2, subtask);
        let ctx = h.restored_ctx(range, subtask, 2);
        let plan = WindowStep::plan(&build_ctx(), &value, &schema()).unwrap();
        let mut sub = H::with(WindowOperator::new(Arc::new(plan)), ctx);
        total += sub.op.live_windows();
        sub.end();
        rows.extend(sub.take());
    }
    assert_eq!(total, 5);
    rows.sort();
    assert_eq!(
        rows,
        vec![
            "a 0 10 1 1 false",
            "b 0 10 1 2 false",
            "c 0 10 1 3 false",
            "d 0 10 1 4 false",
            "e 0 10 1 5 false"
        ]
    );
}

mod end_to_end {
    //! One job through the runtime: a scripted source, the `window` step from the
    //! registry at parallelism 2, and a collecting operator.
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;
    use weir_engine::graph::{GraphBuilder, SourceDecl, StreamRef};
    use weir_engine::registry::{Registry, SourceBuild, SourceFactory};
    use weir_engine::source::{Source, SourcePoll};
    use weir_engine::time::EventTimeConfig;

    struct Scripted {
        batches: Vec<RecordBatch>,
    }

    #[async_trait::async_trait]
    impl Source for Scripted {
        fn schema(&self) -> SchemaRef {
            schema()
        }
        async fn poll_next(&mut self) -> weir_engine::Result<SourcePoll> {
            if self.batches.is_empty() {
                return Ok(SourcePoll::Finished);
            }
            Ok(SourcePoll::Batch {
                split: 0,
                batch: self.batches.remove(0),
            })
        }
    }

    struct ScriptedFactory(Vec<RecordBatch>);

    impl SourceFactory for ScriptedFactory {
        fn name(&self) -> &'static str {
            "scripted"
        }
        fn options_schema(&self) -> Value {
            json!({"type": "object"})
        }
        fn build(
            &self,
            _ctx: &BuildContext,
            _name: &str,
            _options: &Value,
            _schema: Option<SchemaRef>,
        ) -> Result<weir_engine::registry::SourceBuild, FieldError> {
            let batches = self.0.clone();
            Ok(SourceBuild {
                schema: schema(),
                needs_format: false,
                bounded: true,
                describe: "scripted".into(),
                max_parallelism: Some(1),
                create: Arc::new(move |_| {
                    Ok(Box::new(Scripted {
                        batches: batches.clone(),
                    }) as Box<dyn Source>)
                }),
            })
        }
    }

    struct Collect(Arc<Mutex<Vec<String>>>);

    impl Operator for Collect {
        fn process_batch(
            &mut self,
            _input: usize,
            batch: RecordBatch,
            _ctx: &mut OperatorContext,
            _out: &mut Collector,
        ) -> weir_engine::Result<()> {
            self.0.lock().unwrap().extend(fmt_rows(&batch, usize::MAX));
            Ok(())
        }
    }

    fn run(value: Value) -> Vec<String> {
        // In event-time order, so nothing is late whenever watermarks come.
        let batches: Vec<RecordBatch> = (0..20)
            .map(|i| {
                batch(&[
                    r("a", i * 5, 1),
                    r("b", i * 5 + 1, 2),
                    r("c", i * 5 + 2, 3),
                    r("d", i * 5 + 3, 4),
                ])
            })
            .collect();
        let mut reg = Registry::new();
        crate::register(&mut reg);
        reg.add_source(ScriptedFactory(batches));
        let mut b = GraphBuilder::new("windows", Arc::new(reg), ".".into());
        let src = b
            .add_source(
                "src",
                SourceDecl {
                    type_name: "scripted",
                    options: &json!({}),
                    format: None,
                    schema: None,
                    event_time: Some(EventTimeConfig {
                        field: "ts".into(),
                        max_out_of_orderness: Duration::ZERO,
                        idle_timeout: None,
                        max_future: Default::default(),
                    }),
                    parallelism: Some(1),
                },
            )
            .unwrap();
        let w = b
            .add_step("counts", &[StreamRef::main(src)], "window", &value, Some(2))
            .unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let out_schema = b.schema_of(&StreamRef::main(w)).unwrap();
        b.add_operator(
            "collect",
            &[StreamRef::main(w)],
            out_schema,
            None,
            Arc::new(move |_, _| Ok(Box::new(Collect(seen2.clone())) as Box<dyn Operator>)),
            Some(1),
        )
        .unwrap();
        let graph = b.build().unwrap();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(weir_engine::runtime::run(graph))
            .unwrap();
        let mut v = seen.lock().unwrap().clone();
        v.sort();
        v
    }

    #[test]
    fn keyed_and_global_windows_through_the_runtime() {
        let keyed = run(json!({"tumbling": "50ms", "key": "k",
                               "aggregate": {"n": "count(*)", "s": "sum(v)"}}));
        let mut want = Vec::new();
        for (k, v) in [("a", 1), ("b", 2), ("c", 3), ("d", 4)] {
            want.push(format!("{k} 0 50 10 {} false", 10 * v));
            want.push(format!("{k} 50 100 10 {} false", 10 * v));
        }
        want.sort();
        assert_eq!(keyed, want);
        let global = run(json!({"tumbling": "50ms", "aggregate": {"n": "count(*)"}}));
        assert_eq!(global, vec!["0 50 40 false", "50 100 40 false"]);
    }
}

#[test]
fn windows_of_checkpoints_before_table_logs_are_read_from_keyed_state() {
    // Checkpoints written before table logs kept each window in keyed state
    // (`window`, namespace = the window, value = fired flag and accumulator states).
    let value = count_sum(json!({"tumbling": "10ms"}), 0);
    let mut h = H::new(value.clone());
    h.push(&[r("a", 1, 1), r("a", 2, 5), r("b", 3, 2)]);
    h.checkpoint(1);
    let mut ctx = OperatorContext::for_test("w");
    for (kg, rk, v) in h.restored(&KeyGroupRange::all(128)) {
        let start = i64::from_be_bytes(rk[..8].try_into().unwrap());
        let end = i64::from_be_bytes(rk[8..16].try_into().unwrap());
        let mut accumulators = Vec::new();
        let mut rest = &v[1..];
        while !rest.is_empty() {
            let n = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
            accumulators.push(rest[4..4 + n].to_vec());
            rest = &rest[4 + n..];
        }
        let stored = super::operator::StoredWindow {
            fired: v[0] != 0,
            accumulators,
        };
        ctx.state
            .value_put(
                &StateDescriptor::new(WINDOW_STATE),
                StateAddr::new(
                    kg,
                    &rk[16..],
                    &weir_engine::state::namespace_window(start, end),
                ),
                &postcard::to_allocvec(&stored).unwrap(),
            )
            .unwrap();
    }
    let plan = WindowStep::plan(&build_ctx(), &value, &schema()).unwrap();
    let mut old = H::with(WindowOperator::new(Arc::new(plan)), ctx);
    assert_eq!(old.op.live_windows(), 2);
    // Moved out of keyed state, into the next table log (even a delta).
    let desc = StateDescriptor::new(WINDOW_STATE);
    assert_eq!(old.ctx.state.keys(&desc).unwrap().count(), 0);
    old.chain.push(TableLogWriter::new(true).finish());
    old.checkpoint(1);
    assert_eq!(old.restored(&KeyGroupRange::all(128)).len(), 2);
    old.end();
    h.end();
    assert_eq!(old.main, h.main);
}

/// Copy-on-write: a table snapshot written while the windows go on changing (merging,
/// firing, being purged) logs their values as of the barrier — the same log as one
/// written at once at the barrier.
#[test]
fn deferred_table_snapshots_log_the_barrier_state() {
    let configs = [
        all_aggregates(json!({"tumbling": "10ms"}), 15, true),
        all_aggregates(
            json!({"sliding": {"size": "20ms", "slide": "5ms"}}),
            10,
            true,
        ),
        all_aggregates(json!({"session": {"gap": "7ms"}}), 10, true),
    ];
    for (ci, value) in configs.iter().enumerate() {
        for seed in 0..4u64 {
            let steps = script(seed * 17 + ci as u64, 40);
            for split in (4..steps.len()).step_by(9) {
                let mut at_once = H::new(value.clone());
                let mut deferred = H::new(value.clone());
                run_steps(&mut at_once, &steps[..split]);
                run_steps(&mut deferred, &steps[..split]);
                at_once.checkpoint(1);
                at_once.finish_snapshot();
                deferred.op.handle_checkpoint(1, &mut deferred.ctx).unwrap();
                let log = TableLogWriter::new(true);
                let TableSnapshot::Deferred = deferred.op.snapshot_table(1, log).unwrap() else {
                    continue; // nothing to write
                };
                // Everything after the barrier, one logged window per batch.
                for s in &steps[split..] {
                    run_steps(&mut deferred, std::slice::from_ref(s));
                    if let Some(log) = deferred.op.continue_table_snapshot(1).unwrap() {
                        deferred.chain.push(log.finish());
                        break;
                    }
                }
                if deferred.chain.is_empty() {
                    let log = deferred.op.continue_table_snapshot(usize::MAX).unwrap();
                    deferred.chain.push(log.expect("finished").finish());
                }
                // The same windows (a distinct set's bytes may list its values in
                // another order): restored, they hold and emit the same.
                let all = KeyGroupRange::all(128);
                let keys = |chain: &[Vec<u8>]| -> Vec<(u16, Vec<u8>)> {
                    table_log::replay(chain, &all)
                        .unwrap()
                        .into_iter()
                        .map(|(g, k, _)| (g, k))
                        .collect()
                };
                assert_eq!(keys(&deferred.chain), keys(&at_once.chain));
                let emit = |chain: &[Vec<u8>]| {
                    let mut ctx = OperatorContext::for_test("w");
                    ctx.restored_table = Some(table_log::replay(chain, &all).unwrap());
                    let plan = WindowStep::plan(&build_ctx(), value, &schema()).unwrap();
                    let mut h = H::with(WindowOperator::new(Arc::new(plan)), ctx);
                    h.end();
                    h.main
                };
                assert_eq!(
                    emit(&deferred.chain),
                    emit(&at_once.chain),
                    "config {ci} seed {seed} split {split}"
                );
            }
        }
    }
}
