//! Unit tests of the `join` step: options, plans, and the operator driven by hand.
//!
//! The operator is driven like the runtime drives it: batches on input 0 (left) or 1
//! (right), watermarks stored in `ctx.watermark` before `handle_watermark`, the
//! watermark forwarded downstream taken from `output_watermark`, checkpoints, and the
//! final watermark followed by `handle_end_of_input`. Scripted runs are checked against
//! a brute-force model of `docs/JOINS.md`.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, DictionaryArray, Int64Array, LargeStringArray, RecordBatch, StringArray,
    TimestampMillisecondArray, TimestampSecondArray,
};
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef, TimeUnit};
use arrow::util::display::array_value_to_string;
use serde_json::{json, Value};
use weir_engine::operator::{Collector, Operator, OperatorContext};
use weir_engine::registry::{FieldError, Partitioning, StepFactory};
use weir_engine::state::{KeyGroupRange, KeyedStateBackend, StateDescriptor, StateKey};
use weir_engine::time::{event_time_column, event_times_ms, EVENT_TIME_METADATA};

use super::*;
use crate::steps::test_util;
use crate::window::WindowKind;

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, None)
}

/// `k` (string), `ts` (the only timestamp: the event time) and `value` (int64), all
/// nullable.
fn side_schema(value: &str) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, true),
        Field::new("ts", ts_type(), true),
        Field::new(value, DataType::Int64, true),
    ]))
}

fn left() -> SchemaRef {
    side_schema("lv")
}

fn right() -> SchemaRef {
    side_schema("rv")
}

/// One input row: key, event time, value.
#[derive(Clone, Debug)]
struct Row {
    k: Option<String>,
    t: Option<i64>,
    v: i64,
}

fn r(k: &str, t: i64, v: i64) -> Row {
    Row {
        k: Some(k.to_string()),
        t: Some(t),
        v,
    }
}

/// A row with a null key.
fn null_key(t: i64, v: i64) -> Row {
    Row {
        k: None,
        t: Some(t),
        v,
    }
}

/// A row with a null event time.
fn null_time(k: &str, v: i64) -> Row {
    Row {
        k: Some(k.to_string()),
        t: None,
        v,
    }
}

fn batch(schema: &SchemaRef, rows: &[Row]) -> RecordBatch {
    RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.k.as_deref()).collect::<Vec<_>>(),
            )),
            Arc::new(TimestampMillisecondArray::from(
                rows.iter().map(|r| r.t).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.v).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap()
}

/// Every row of a batch, space-separated; timestamps as integers, nulls as `null`.
fn fmt_rows(batch: &RecordBatch) -> Vec<String> {
    let cols: Vec<ArrayRef> = batch
        .columns()
        .iter()
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

fn sorted(mut rows: Vec<String>) -> Vec<String> {
    rows.sort();
    rows
}

/// Drives one operator like the runtime does.
struct H {
    plan: Arc<JoinPlan>,
    op: JoinOperator,
    ctx: OperatorContext,
    main: Vec<String>,
    /// Late rows of the left (0) and right (1) input, as `k ts value`.
    late: [Vec<String>; 2],
    /// The watermark forwarded downstream so far (`output_watermark`).
    forwarded: i64,
    /// Output rows whose event time is at or behind the watermark forwarded before
    /// them: late for the next step downstream.
    behind: Vec<String>,
}

impl H {
    fn new(value: Value) -> H {
        H::new_on(value, &left(), &right())
    }

    fn new_on(value: Value, l: &SchemaRef, r: &SchemaRef) -> H {
        let plan = JoinStep::plan(&value, l, r).unwrap();
        H::with(Arc::new(plan), OperatorContext::for_test("join"))
    }

    fn with(plan: Arc<JoinPlan>, mut ctx: OperatorContext) -> H {
        let mut op = JoinOperator::new(plan.clone()).unwrap();
        op.open(&mut ctx).unwrap();
        H {
            plan,
            op,
            ctx,
            main: Vec::new(),
            late: [Vec::new(), Vec::new()],
            forwarded: i64::MIN,
            behind: Vec::new(),
        }
    }

    fn collect(&mut self, mut out: Collector) {
        let time =
            event_time_column(&self.plan.output).map(|i| self.plan.output.field(i).name().clone());
        for b in out.take_main() {
            assert_eq!(b.schema(), self.plan.output, "output schema");
            let rows = fmt_rows(&b);
            if let Some(time) = &time {
                let times = event_times_ms(&b, time).unwrap();
                for (row, t) in rows.iter().zip(times) {
                    if t.is_some_and(|t| t <= self.forwarded) {
                        self.behind
                            .push(format!("{row} (forwarded {})", self.forwarded));
                    }
                }
            }
            self.main.extend(rows);
        }
        for (name, b) in out.take_side() {
            let side = match name.as_str() {
                LATE_LEFT => 0,
                LATE_RIGHT => 1,
                other => panic!("unexpected side output {other}"),
            };
            assert_eq!(b.schema(), self.plan.sides[side].schema);
            self.late[side].extend(fmt_rows(&b));
        }
    }

    fn push_batch(&mut self, side: usize, b: RecordBatch) {
        let mut out = Collector::default();
        self.op
            .process_batch(side, b, &mut self.ctx, &mut out)
            .unwrap();
        self.collect(out);
    }

    fn push(&mut self, side: usize, rows: &[Row]) {
        let schema = self.plan.sides[side].schema.clone();
        self.push_batch(side, batch(&schema, rows));
    }

    fn left(&mut self, rows: &[Row]) {
        self.push(0, rows);
    }

    fn right(&mut self, rows: &[Row]) {
        self.push(1, rows);
    }

    fn wm(&mut self, w: i64) {
        let mut out = Collector::default();
        self.ctx.watermark = w;
        self.op
            .handle_watermark(w, &mut self.ctx, &mut out)
            .unwrap();
        self.collect(out);
        let forwarded = self.op.output_watermark(w);
        assert!(forwarded >= self.forwarded, "forwarded watermark went back");
        assert!(forwarded <= w, "forwarded watermark ahead of the input");
        self.forwarded = forwarded;
    }

    /// The final watermark, then the end of input.
    fn end(&mut self) {
        self.wm(i64::MAX);
        let mut out = Collector::default();
        self.op
            .handle_end_of_input(&mut self.ctx, &mut out)
            .unwrap();
        assert!(
            out.take_main().is_empty(),
            "the final watermark emitted all"
        );
        self.collect(out);
    }

    fn checkpoint(&mut self, epoch: u64) {
        self.op.handle_checkpoint(epoch, &mut self.ctx).unwrap();
    }

    fn take(&mut self) -> Vec<String> {
        std::mem::take(&mut self.main)
    }

    fn take_sorted(&mut self) -> Vec<String> {
        sorted(self.take())
    }

    fn take_late(&mut self, side: usize) -> Vec<String> {
        std::mem::take(&mut self.late[side])
    }

    fn late_metric(&self) -> u64 {
        self.ctx
            .metrics
            .late_records
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The addresses holding data in keyed state `name`.
    fn stored(&self, name: &str) -> Vec<StateKey> {
        self.ctx
            .state
            .keys(&StateDescriptor::new(name))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    fn run(&mut self, steps: &[Step]) {
        for s in steps {
            match s {
                Step::Batch(side, rows) => self.push(*side, rows),
                Step::Wm(w) => self.wm(*w),
            }
        }
    }
}

fn interval(jt: &str, lower: i64, upper: i64) -> Value {
    json!({"type": jt, "on": ["k"], "interval": {"lower": format!("{lower}ms"), "upper": format!("{upper}ms")}})
}

fn window(jt: &str, w: Value) -> Value {
    json!({"type": jt, "on": ["k"], "window": w})
}

// ---------------------------------------------------------------------------------
// Options and plans
// ---------------------------------------------------------------------------------

fn plan_err_on(value: Value, l: &SchemaRef, r: &SchemaRef) -> FieldError {
    match JoinStep::plan(&value, l, r) {
        Ok(_) => panic!("expected an error for {value}"),
        Err(e) => e,
    }
}

fn plan_err(value: Value) -> FieldError {
    plan_err_on(value, &left(), &right())
}

/// Asserts the error's path and that its message contains `fragment`.
#[track_caller]
fn assert_err(value: Value, path: &str, fragment: &str) {
    let e = plan_err(value.clone());
    assert_eq!(e.path, path, "path for {value}: {e}");
    assert!(
        e.message.contains(fragment),
        "message for {value} lacks {fragment:?}: {e}"
    );
}

fn iv() -> Value {
    json!({"lower": "-5s", "upper": "5s"})
}

#[test]
fn missing_and_unknown_key_columns_name_the_field() {
    assert_err(json!({"interval": iv()}), "", "missing `on`");
    assert_err(json!({"on": null, "interval": iv()}), "", "missing `on`");
    // The same names on both sides.
    assert_err(
        json!({"on": ["nope"], "interval": iv()}),
        "/on",
        "left input: unknown column \"nope\" (known columns: k, ts, lv)",
    );
    assert_err(
        json!({"on": "nope", "interval": iv()}),
        "/on",
        "left input: unknown column \"nope\"",
    );
    assert_err(
        json!({"on": ["k", "nope"], "interval": iv()}),
        "/on/1",
        "left input: unknown column \"nope\"",
    );
    // On the right only.
    assert_err(
        json!({"on": ["lv"], "interval": iv()}),
        "/on",
        "right input: unknown column \"lv\" (known columns: k, ts, rv)",
    );
    assert_err(
        json!({"on": ["k", "lv"], "interval": iv()}),
        "/on/1",
        "right input: unknown column \"lv\"",
    );
    // Different names on each side.
    assert_err(
        json!({"on": {"left": ["nope"], "right": ["k"]}, "interval": iv()}),
        "/on/left",
        "left input: unknown column \"nope\"",
    );
    assert_err(
        json!({"on": {"left": ["k", "nope"], "right": ["k", "rv"]}, "interval": iv()}),
        "/on/left/1",
        "left input: unknown column \"nope\"",
    );
    assert_err(
        json!({"on": {"left": ["k"], "right": ["nope"]}, "interval": iv()}),
        "/on/right",
        "right input: unknown column \"nope\" (known columns: k, ts, rv)",
    );
    assert_err(
        json!({"on": {"left": ["k", "lv"], "right": ["k", "nope"]}, "interval": iv()}),
        "/on/right/1",
        "right input: unknown column \"nope\"",
    );
}

#[test]
fn key_types_must_agree() {
    assert_err(
        json!({"on": {"left": ["lv"], "right": ["k"]}, "interval": iv()}),
        "/on/right",
        "key \"lv\" is Int64 on the left but \"k\" is Utf8 on the right",
    );
    assert_err(
        json!({"on": {"left": ["k", "lv"], "right": ["k", "ts"]}, "interval": iv()}),
        "/on/right/1",
        &format!(
            "key \"lv\" is Int64 on the left but \"ts\" is {} on the right",
            ts_type()
        ),
    );
    // Same names, different types.
    let l = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, true),
        Field::new("ts", ts_type(), true),
    ]));
    let e = plan_err_on(json!({"on": ["k"], "interval": iv()}), &l, &right());
    assert_eq!(e.path, "/on");
    assert!(e.message.contains("is Int64 on the left but"), "{e}");
    assert!(e.message.contains("is Utf8 on the right"), "{e}");
    // Int32 and Int64 are not one type.
    let r32 = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int32, true),
        Field::new("ts", ts_type(), true),
    ]));
    let e = plan_err_on(json!({"on": ["k"], "interval": iv()}), &l, &r32);
    assert_eq!(e.path, "/on");
    // String layouts count as one.
    let dict = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
    for (a, b) in [
        (DataType::Utf8, DataType::LargeUtf8),
        (DataType::Utf8View, DataType::Utf8),
        (dict.clone(), DataType::Utf8),
        (DataType::LargeUtf8, dict),
    ] {
        let l = Arc::new(Schema::new(vec![
            Field::new("k", a.clone(), true),
            Field::new("ts", ts_type(), true),
        ]));
        let r = Arc::new(Schema::new(vec![
            Field::new("k", b.clone(), true),
            Field::new("ts", ts_type(), true),
        ]));
        assert!(
            JoinStep::plan(&json!({"on": ["k"], "interval": iv()}), &l, &r).is_ok(),
            "{a} and {b}"
        );
    }
}

#[test]
fn mode_errors_name_the_field() {
    assert_err(
        json!({"on": ["k"], "interval": iv(), "window": {"tumbling": "1m"}}),
        "/window",
        "not both",
    );
    assert_err(json!({"on": ["k"]}), "", "missing `interval");
    assert_err(
        json!({"on": ["k"], "interval": {"lower": "5s", "upper": "-5s"}}),
        "/interval/upper",
        "`upper` (- 5s) is below `lower` (+ 5s)",
    );
    assert_err(
        json!({"on": ["k"], "interval": {"lower": "1ms", "upper": 0}}),
        "/interval/upper",
        "below",
    );
    assert_err(
        json!({"on": ["k"], "interval": {"upper": "0s"}}),
        "/interval",
        "missing `lower`",
    );
    assert_err(
        json!({"on": ["k"], "interval": {"lower": "0s"}}),
        "/interval",
        "missing `upper`",
    );
    assert_err(
        json!({"on": ["k"], "interval": "5s"}),
        "/interval",
        "expected {lower",
    );
    assert_err(
        json!({"on": ["k"], "window": "1m"}),
        "/window",
        "expected one of",
    );
    assert_err(
        json!({"on": ["k"], "window": {}}),
        "/window",
        "missing the window's shape",
    );
    assert_err(
        json!({"on": ["k"], "window": {"tumbling": "1m", "session": "1m"}}),
        "/window/session",
        "`tumbling` is already given",
    );
}

#[test]
fn type_and_unknown_keys_name_the_field() {
    assert_err(
        json!({"type": "cross", "on": ["k"], "interval": iv()}),
        "/type",
        "unknown join type \"cross\": expected inner, left, right or full",
    );
    assert_err(
        json!({"type": 1, "on": ["k"], "interval": iv()}),
        "/type",
        "expected a string",
    );
    assert_err(
        json!({"on": ["k"], "interval": iv(), "within": "5s"}),
        "/within",
        "unknown option \"within\" for join",
    );
    assert_err(
        json!({"on": ["k"], "interval": {"lower": 0, "upper": 0, "mid": 0}}),
        "/interval/mid",
        "unknown option \"mid\"",
    );
    assert_err(
        json!({"on": {"left": ["k"], "right": ["k"], "both": ["k"]}, "interval": iv()}),
        "/on/both",
        "unknown option \"both\"",
    );
    assert_err(
        json!({"on": ["k"], "window": {"tumbling": "1m", "hopping": "1m"}}),
        "/window/hopping",
        "unknown option \"hopping\"",
    );
    assert_err(
        json!({"on": ["k"], "window": {"tumbling": {"size": "1m", "slide": "1s"}}}),
        "/window/tumbling/slide",
        "unknown option \"slide\"",
    );
    assert_err(json!("k"), "", "a join is a map");
    assert_err(json!(["k"]), "", "a join is a map");
}

#[test]
fn key_list_errors_name_the_field() {
    assert_err(
        json!({"on": [], "interval": iv()}),
        "/on",
        "at least one key column",
    );
    assert_err(
        json!({"on": ["k", "k"], "interval": iv()}),
        "/on/1",
        "column \"k\" is listed twice",
    );
    assert_err(
        json!({"on": 5, "interval": iv()}),
        "/on",
        "expected a column name or a list of column names, found a number",
    );
    assert_err(
        json!({"on": ["k", 5], "interval": iv()}),
        "/on/1",
        "expected a column name, found a number",
    );
    assert_err(
        json!({"on": {"left": ["k"]}, "interval": iv()}),
        "/on",
        "missing `right`",
    );
    assert_err(
        json!({"on": {"right": ["k"]}, "interval": iv()}),
        "/on",
        "missing `left`",
    );
    assert_err(
        json!({"on": {"left": [], "right": ["k"]}, "interval": iv()}),
        "/on/left",
        "at least one key column",
    );
    assert_err(
        json!({"on": {"left": ["k"], "right": [true]}, "interval": iv()}),
        "/on/right/0",
        "expected a column name, found a boolean",
    );
    assert_err(
        json!({"on": {"left": ["k"], "right": ["k", "ts"]}, "interval": iv()}),
        "/on",
        "`left` has 1 key columns but `right` has 2",
    );
}

#[test]
fn bad_durations_name_the_field() {
    for (lower, upper, path, fragment) in [
        (
            json!("soon"),
            json!("0s"),
            "/interval/lower",
            "is not a duration",
        ),
        (
            json!("--5s"),
            json!("0s"),
            "/interval/lower",
            "is not a duration",
        ),
        (
            json!("+-5s"),
            json!("0s"),
            "/interval/lower",
            "is not a duration",
        ),
        (
            json!("-"),
            json!("0s"),
            "/interval/lower",
            "is not a duration",
        ),
        (json!(1.5), json!("0s"), "/interval/lower", "needs a unit"),
        (
            json!("0s"),
            json!(true),
            "/interval/upper",
            "found a boolean",
        ),
        (json!("0s"), json!(null), "/interval/upper", "found null"),
        (
            json!("0s"),
            json!(["1s"]),
            "/interval/upper",
            "found a list",
        ),
    ] {
        assert_err(
            json!({"on": ["k"], "interval": {"lower": lower, "upper": upper}}),
            path,
            fragment,
        );
    }
    for (w, path, fragment) in [
        (
            json!({"tumbling": "0s"}),
            "/window/tumbling",
            "at least 1ms",
        ),
        (json!({"tumbling": -5}), "/window/tumbling", "needs a unit"),
        (
            json!({"tumbling": "soon"}),
            "/window/tumbling",
            "not a duration",
        ),
        (
            json!({"tumbling": {"size": "x"}}),
            "/window/tumbling/size",
            "not a duration",
        ),
        (
            json!({"sliding": {"size": "10m", "slide": "3m"}}),
            "/window/sliding/slide",
            "multiple of the slide",
        ),
        (
            json!({"sliding": "1m"}),
            "/window/sliding",
            "expected {size",
        ),
        (
            json!({"sliding": {"size": "10m"}}),
            "/window/sliding",
            "missing `slide`",
        ),
        (
            json!({"session": {"gap": "-1s"}}),
            "/window/session/gap",
            "not a duration",
        ),
        (json!({"session": 0}), "/window/session", "at least 1ms"),
    ] {
        assert_err(json!({"on": ["k"], "window": w}), path, fragment);
    }
}

#[test]
fn time_column_errors_name_the_field() {
    assert_err(
        json!({"on": ["k"], "interval": iv(), "left_time": "nope"}),
        "/left_time",
        "unknown column \"nope\" (known columns: k, ts, lv)",
    );
    assert_err(
        json!({"on": ["k"], "interval": iv(), "right_time": "k"}),
        "/right_time",
        "column \"k\" is Utf8, the event time must be a timestamp",
    );
    assert_err(
        json!({"on": ["k"], "interval": iv(), "right_time": 5}),
        "/right_time",
        "expected a string",
    );
    // Two timestamps, none marked: no event-time column unless one is named.
    let two = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, true),
        Field::new("a", ts_type(), true),
        Field::new("b", ts_type(), true),
    ]));
    let e = plan_err_on(json!({"on": ["k"], "interval": iv()}), &left(), &two);
    assert_eq!(e.path, "");
    assert!(
        e.message
            .contains("no event-time column found on the right input (columns: k, a, b)"),
        "{e}"
    );
    assert!(e.message.contains("`right_time: COLUMN`"), "{e}");
    let e = plan_err_on(json!({"on": ["k"], "interval": iv()}), &two, &right());
    assert!(e.message.contains("on the left input"), "{e}");
    assert!(JoinStep::plan(
        &json!({"on": ["k"], "interval": iv(), "right_time": "b"}),
        &left(),
        &two
    )
    .is_ok());
}

#[test]
fn column_clashes_are_errors() {
    // A right column clashing with a left one whose `right_` name is taken too.
    let l = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, true),
        Field::new("ts", ts_type(), true),
        Field::new("x", DataType::Int64, true),
        Field::new("right_x", DataType::Int64, true),
    ]));
    let r = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, true),
        Field::new("ts", ts_type(), true),
        Field::new("x", DataType::Int64, true),
    ]));
    let e = plan_err_on(json!({"on": ["k"], "interval": iv()}), &l, &r);
    assert_eq!(e.path, "");
    assert!(
        e.message.contains(
            "the right column \"x\" clashes with a left column and \"right_x\" is taken too"
        ),
        "{e}"
    );
    // ... or taken on the right itself.
    let r2 = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, true),
        Field::new("ts", ts_type(), true),
        Field::new("lv", DataType::Int64, true),
        Field::new("right_lv", DataType::Int64, true),
    ]));
    let e = plan_err_on(json!({"on": ["k"], "interval": iv()}), &left(), &r2);
    assert!(e.message.contains("\"right_lv\" is taken too"), "{e}");
    // A window join adds window_start and window_end.
    let w = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, true),
        Field::new("ts", ts_type(), true),
        Field::new("window_end", ts_type(), true),
    ]));
    let e = plan_err_on(
        json!({"on": ["k"], "window": {"tumbling": "1m"}, "right_time": "ts"}),
        &left(),
        &w,
    );
    assert_eq!(e.path, "");
    assert!(e.message.contains("adds the column \"window_end\""), "{e}");
    // ... which an interval join does not.
    assert!(JoinStep::plan(
        &json!({"on": ["k"], "interval": iv(), "right_time": "ts"}),
        &left(),
        &w
    )
    .is_ok());
}

/// The JSON pointer of an error must point into the value as written: with
/// `on: {left: [...], right: [...]}` there is no `/on/1`.
#[test]
fn key_errors_point_into_the_map_form_with_the_same_names() {
    assert_err(
        json!({"on": {"left": ["k", "nope"], "right": ["k", "nope"]}, "interval": iv()}),
        "/on/left/1",
        "left input: unknown column \"nope\"",
    );
    assert_err(
        json!({"on": {"left": ["k", "lv"], "right": ["k", "lv"]}, "interval": iv()}),
        "/on/right/1",
        "right input: unknown column \"lv\"",
    );
}

/// The interval bounds of a `join:` value.
fn bounds(lower: Value, upper: Value) -> (i64, i64) {
    let o = JoinOptions::parse(&json!({"on": "k", "interval": {"lower": lower, "upper": upper}}))
        .unwrap();
    match o.mode {
        JoinMode::Interval { lower, upper } => (lower, upper),
        other => panic!("not an interval: {other}"),
    }
}

#[test]
fn signed_durations() {
    assert_eq!(bounds(json!("-5s"), json!("+2s")), (-5_000, 2_000));
    assert_eq!(bounds(json!("0"), json!("0")), (0, 0));
    assert_eq!(bounds(json!("-0"), json!("+0")), (0, 0));
    assert_eq!(bounds(json!("0s"), json!("+0s")), (0, 0));
    assert_eq!(bounds(json!(0), json!(0)), (0, 0), "zero needs no unit");
    assert_eq!(
        bounds(json!(" - 1m "), json!("1h 30m")),
        (-60_000, 5_400_000)
    );
    assert_eq!(bounds(json!("-10ms"), json!("10ms")), (-10, 10));
    assert_eq!(
        bounds(json!("-1h"), json!("-30m")),
        (-3_600_000, -1_800_000)
    );
    assert_eq!(bounds(json!("+ 2s"), json!("+3s")), (2_000, 3_000));
    // Other bare numbers have no unit: an error, never milliseconds.
    for n in [json!(-250), json!(250), json!(-1)] {
        let e = JoinOptions::parse(&json!({"on": "k", "interval": {"lower": n, "upper": "0s"}}))
            .expect_err("a number without a unit");
        assert!(e.message.contains("needs a unit"), "{}", e.message);
    }
}

#[test]
fn documented_forms_parse() {
    let o = JoinOptions::parse(&json!({
        "type": "left", "on": ["ad_id"], "interval": {"lower": "-10s", "upper": "0s"},
        "left_time": "ts", "right_time": "ts"
    }))
    .unwrap();
    assert_eq!(
        o,
        JoinOptions {
            join_type: JoinType::Left,
            left_on: vec!["ad_id".into()],
            right_on: vec!["ad_id".into()],
            on_map: false,
            mode: JoinMode::Interval {
                lower: -10_000,
                upper: 0
            },
            left_time: Some("ts".into()),
            right_time: Some("ts".into()),
        }
    );
    let o = JoinOptions::parse(&json!({
        "on": {"left": ["ad_id", "x"], "right": ["ad", "y"]}, "window": {"tumbling": "1m"}
    }))
    .unwrap();
    assert_eq!(o.join_type, JoinType::Inner);
    assert_eq!(o.left_on, vec!["ad_id", "x"]);
    assert_eq!(o.right_on, vec!["ad", "y"]);
    assert_eq!(
        o.mode,
        JoinMode::Window(WindowKind::Tumbling { size: 60_000 })
    );
    assert_eq!(o.left_time, None);
    let o = JoinOptions::parse(
        &json!({"on": {"left": "a", "right": "b"}, "window": {"tumbling": {"size": "250ms"}}}),
    )
    .unwrap();
    assert_eq!(
        (o.left_on, o.right_on),
        (vec!["a".into()], vec!["b".into()])
    );
    assert_eq!(o.mode, JoinMode::Window(WindowKind::Tumbling { size: 250 }));
    let o = JoinOptions::parse(
        &json!({"on": "k", "window": {"sliding": {"size": "10m", "slide": "1m"}}}),
    )
    .unwrap();
    assert_eq!(
        o.mode,
        JoinMode::Window(WindowKind::Sliding {
            size: 600_000,
            slide: 60_000
        })
    );
    for w in [
        json!({"session": "30m"}),
        json!({"session": {"gap": "30m"}}),
    ] {
        let o = JoinOptions::parse(&json!({"on": "k", "window": w})).unwrap();
        assert_eq!(
            o.mode,
            JoinMode::Window(WindowKind::Session { gap: 1_800_000 })
        );
    }
    for (name, jt) in [
        ("inner", JoinType::Inner),
        ("left", JoinType::Left),
        ("left_outer", JoinType::Left),
        ("right", JoinType::Right),
        ("right_outer", JoinType::Right),
        ("full", JoinType::Full),
        ("full_outer", JoinType::Full),
        ("outer", JoinType::Full),
    ] {
        let o = JoinOptions::parse(&json!({"type": name, "on": "k", "interval": iv()})).unwrap();
        assert_eq!(o.join_type, jt, "{name}");
    }
    assert!(!JoinType::Inner.keeps(0) && !JoinType::Inner.keeps(1));
    assert!(JoinType::Left.keeps(0) && !JoinType::Left.keeps(1));
    assert!(!JoinType::Right.keeps(0) && JoinType::Right.keeps(1));
    assert!(JoinType::Full.keeps(0) && JoinType::Full.keeps(1));
}

fn marked(f: Field) -> Field {
    f.with_metadata([(EVENT_TIME_METADATA.to_string(), "true".to_string())].into())
}

fn field_summary(schema: &Schema) -> Vec<String> {
    schema
        .fields()
        .iter()
        .map(|f| format!("{}{}", f.name(), if f.is_nullable() { "?" } else { "" }))
        .collect()
}

fn event_time_name(schema: &Schema) -> String {
    let marked: Vec<&str> = schema
        .fields()
        .iter()
        .filter(|f| f.metadata().contains_key(EVENT_TIME_METADATA))
        .map(|f| f.name().as_str())
        .collect();
    assert_eq!(marked.len(), 1, "exactly one marked column: {marked:?}");
    let i = event_time_column(schema).unwrap();
    assert_eq!(schema.field(i).name(), marked[0]);
    marked[0].to_string()
}

#[test]
fn output_schema_names_nullability_and_event_time() {
    // Both inputs' ts marked as event time (as sources do), keys not null, `n` on
    // both sides (not a key).
    let l = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, false),
        marked(Field::new("ts", ts_type(), false)),
        Field::new("lv", DataType::Int64, false),
        Field::new("n", DataType::Utf8, true),
    ]));
    let r = Arc::new(Schema::new(vec![
        Field::new("n", DataType::Utf8, false),
        marked(Field::new("ts", ts_type(), false)),
        Field::new("k", DataType::Utf8, false),
        Field::new("rv", DataType::Int64, false),
    ]));
    for (jt, fields, time) in [
        (
            "inner",
            vec!["k", "ts", "lv", "n?", "right_n", "right_ts", "rv"],
            "ts",
        ),
        (
            "left",
            vec!["k", "ts", "lv", "n?", "right_n?", "right_ts?", "rv?"],
            "ts",
        ),
        (
            "right",
            vec!["k", "ts?", "lv?", "n?", "right_n", "right_ts", "rv"],
            "right_ts",
        ),
        (
            "full",
            vec!["k", "ts?", "lv?", "n?", "right_n?", "right_ts?", "rv?"],
            "ts",
        ),
    ] {
        let plan = JoinStep::plan(&interval(jt, -5, 5), &l, &r).unwrap();
        assert_eq!(field_summary(&plan.output), fields, "{jt}");
        assert_eq!(event_time_name(&plan.output), time, "{jt}");
        assert_eq!(
            plan.columns,
            vec![
                OutputColumn::Key(0, 2),
                OutputColumn::Left(1),
                OutputColumn::Left(2),
                OutputColumn::Left(3),
                OutputColumn::Right(0),
                OutputColumn::Right(1),
                OutputColumn::Right(3),
            ],
            "{jt}"
        );
        assert_eq!(plan.sides[0].time, "ts");
        assert_eq!(plan.sides[1].time, "ts");
        assert_eq!(plan.sides[0].key_columns, vec![0]);
        assert_eq!(plan.sides[1].key_columns, vec![2]);
        assert_eq!(plan.schema(), &plan.output);

        // Window joins: window_start and window_end appended, not null, window_end the
        // event time.
        let plan = JoinStep::plan(&window(jt, json!({"tumbling": "1m"})), &l, &r).unwrap();
        let mut with_window = fields.clone();
        with_window.extend(["window_start", "window_end"]);
        assert_eq!(field_summary(&plan.output), with_window, "{jt}");
        assert_eq!(event_time_name(&plan.output), "window_end", "{jt}");
        for name in ["window_start", "window_end"] {
            assert_eq!(
                plan.output.field_with_name(name).unwrap().data_type(),
                &ts_type()
            );
        }
        assert_eq!(
            &plan.columns[7..],
            &[OutputColumn::WindowStart, OutputColumn::WindowEnd]
        );
    }

    // A nullable key on one side makes the coalesced key nullable.
    let plan = JoinStep::plan(&interval("inner", 0, 0), &left(), &right()).unwrap();
    assert_eq!(
        field_summary(&plan.output),
        vec!["k?", "ts?", "lv?", "right_ts?", "rv?"]
    );

    // Keys of different names are not coalesced; a right column with a left column's
    // name is renamed even if the left one is a key.
    let r2 = Arc::new(Schema::new(vec![
        Field::new("kk", DataType::Utf8, false),
        Field::new("k", DataType::Utf8, false),
        Field::new("at", ts_type(), false),
    ]));
    let plan = JoinStep::plan(
        &json!({"type": "left", "on": {"left": ["k"], "right": ["kk"]}, "interval": iv()}),
        &l,
        &r2,
    )
    .unwrap();
    assert_eq!(
        field_summary(&plan.output),
        vec!["k", "ts", "lv", "n?", "kk?", "right_k?", "at?"]
    );
    assert_eq!(event_time_name(&plan.output), "ts");
    assert_eq!(plan.sides[1].time, "at");
    // A right join's event time is the right's, under its output name.
    let plan = JoinStep::plan(
        &json!({"type": "right", "on": {"left": ["k"], "right": ["kk"]}, "interval": iv()}),
        &l,
        &r2,
    )
    .unwrap();
    assert_eq!(event_time_name(&plan.output), "at");

    // Two keys with the same names on both sides are both coalesced, at the left's
    // positions.
    let plan = JoinStep::plan(&interval("full", 0, 0), &left(), &right()).unwrap();
    assert_eq!(plan.columns[0], OutputColumn::Key(0, 0));
    let plan = JoinStep::plan(
        &json!({"type": "full", "on": ["n", "k"], "interval": iv()}),
        &l,
        &r,
    )
    .unwrap();
    assert_eq!(
        field_summary(&plan.output),
        vec!["k", "ts?", "lv?", "n?", "right_ts?", "rv?"]
    );
    assert_eq!(plan.columns[0], OutputColumn::Key(0, 2));
    assert_eq!(plan.columns[3], OutputColumn::Key(3, 0));

    // Explicit int64 event-time columns.
    let li = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, false),
        Field::new("at", DataType::Int64, false),
    ]));
    let plan = JoinStep::plan(
        &json!({"on": ["k"], "interval": iv(), "left_time": "at", "right_time": "ts"}),
        &li,
        &right(),
    )
    .unwrap();
    assert_eq!(event_time_name(&plan.output), "at");
    assert_eq!(plan.sides[0].time, "at");
}

fn describe(value: Value) -> String {
    JoinStep::plan(&value, &left(), &right())
        .unwrap()
        .describe()
}

#[test]
fn describe_and_holdback() {
    assert_eq!(
        describe(
            json!({"type": "left", "on": ["k"], "interval": {"lower": "-10s", "upper": "0s"}})
        ),
        "left interval join on k: left.ts BETWEEN right.ts - 10s AND right.ts + 0s, \
         watermark held back 10s"
    );
    assert_eq!(
        describe(json!({
            "on": {"left": ["k", "lv"], "right": ["k", "rv"]},
            "interval": {"lower": "2s", "upper": "1m"}
        })),
        "inner interval join on k, lv = rv: left.ts BETWEEN right.ts + 2s AND right.ts + 1m, \
         watermark held back 1m"
    );
    assert_eq!(
        describe(json!({"type": "outer", "on": "k", "interval": {"lower": 0, "upper": 0}})),
        "full interval join on k: left.ts BETWEEN right.ts + 0s AND right.ts + 0s"
    );
    assert_eq!(
        describe(json!({"type": "right", "on": ["k"], "window": {"tumbling": "1m"}})),
        "right window join on k in tumbling 1m windows (left.ts, right.ts)"
    );
    assert_eq!(
        describe(json!({"on": ["k"], "window": {"sliding": {"size": "10m", "slide": "1m"}}})),
        "inner window join on k in sliding 10m every 1m windows (left.ts, right.ts)"
    );
    assert_eq!(
        describe(json!({"type": "full", "on": ["k"], "window": {"session": "30m"}})),
        "full window join on k in session gap 30m windows (left.ts, right.ts)"
    );
    assert_eq!(
        JoinMode::Interval {
            lower: -10_000,
            upper: 0
        }
        .to_string(),
        "interval left.ts BETWEEN right.ts - 10s AND right.ts + 0s"
    );

    for (lower, upper, hold) in [
        (-10, 5, 10),
        (-10, 0, 10),
        (0, 0, 0),
        (2, 5, 5),
        (-5, -2, 5),
        (-3, 7, 7),
    ] {
        let plan = JoinStep::plan(&interval("inner", lower, upper), &left(), &right()).unwrap();
        assert_eq!(plan.holdback(), hold, "[{lower}, {upper}]");
        let op = JoinOperator::new(Arc::new(plan)).unwrap();
        assert_eq!(op.output_watermark(1_000), 1_000 - hold);
        assert_eq!(op.output_watermark(i64::MAX), i64::MAX, "passed through");
        assert_eq!(op.output_watermark(i64::MIN), i64::MIN);
        assert_eq!(op.output_watermark(i64::MAX - 1), i64::MAX - 1 - hold);
    }
    for w in [
        json!({"tumbling": "10ms"}),
        json!({"sliding": {"size": "10ms", "slide": "5ms"}}),
        json!({"session": "10ms"}),
    ] {
        let plan = JoinStep::plan(&window("full", w), &left(), &right()).unwrap();
        assert_eq!(plan.holdback(), 0);
        let op = JoinOperator::new(Arc::new(plan)).unwrap();
        assert_eq!(op.output_watermark(1_000), 1_000);
    }
}

#[test]
fn step_build() {
    let f = JoinStep;
    assert_eq!(f.name(), "join");
    assert_eq!(f.inputs(), (2, 2));
    let schema = f.options_schema();
    assert_eq!(schema["required"], json!(["on"]));
    let value = interval("left", -10, 0);
    let step = test_util::build(&f, value.clone(), &[left(), right()]).unwrap();
    let plan = JoinStep::plan(&value, &left(), &right()).unwrap();
    assert_eq!(step.schema, plan.output);
    assert_eq!(step.describe, plan.describe());
    assert_eq!(
        step.side_outputs,
        vec![
            (LATE_LEFT.to_string(), left()),
            (LATE_RIGHT.to_string(), right())
        ]
    );
    assert_eq!(step.input_partitioning, None);
    assert_eq!(
        step.partitioning_per_input,
        vec![
            Partitioning::Hash(vec!["k".into()]),
            Partitioning::Hash(vec!["k".into()])
        ]
    );
    assert_eq!(step.keyed_by, Some(vec!["k".to_string()]));
    let op = (step.create)(0, 1).unwrap();
    assert_eq!(
        op.side_outputs(),
        vec![
            (LATE_LEFT.to_string(), left()),
            (LATE_RIGHT.to_string(), right())
        ]
    );
    assert_eq!(op.output_watermark(100), 90);

    // Different key names: each input hashed by its own, not keyed by one list.
    let r2 = Arc::new(Schema::new(vec![
        Field::new("kk", DataType::Utf8, true),
        Field::new("ts", ts_type(), true),
    ]));
    let step = test_util::build(
        &f,
        json!({"on": {"left": ["k"], "right": ["kk"]}, "window": {"tumbling": "1m"}}),
        &[left(), r2],
    )
    .unwrap();
    assert_eq!(
        step.partitioning_per_input,
        vec![
            Partitioning::Hash(vec!["k".into()]),
            Partitioning::Hash(vec!["kk".into()])
        ]
    );
    assert_eq!(step.keyed_by, None);

    // Not two inputs.
    for inputs in [vec![left()], vec![left(), right(), right()]] {
        let e = test_util::build(&f, interval("inner", 0, 0), &inputs)
            .err()
            .unwrap();
        assert_eq!(e.path, "/from");
        assert!(e.message.contains("two inputs"), "{e}");
    }
    // Plan errors come through with their paths.
    let e = test_util::build(
        &f,
        json!({"on": ["nope"], "interval": iv()}),
        &[left(), right()],
    )
    .err()
    .unwrap();
    assert_eq!(e.path, "/on");

    // Bounded input without watermarks: the end of input emits everything.
    let step = test_util::build(
        &f,
        window("full", json!({"tumbling": "10ms"})),
        &[left(), right()],
    )
    .unwrap();
    let (main, side) = test_util::run(
        &step,
        vec![
            (0, batch(&left(), &[r("a", 1, 1), r("b", 2, 2)])),
            (1, batch(&right(), &[r("a", 3, 3), r("c", 14, 4)])),
        ],
    );
    assert!(side.is_empty());
    let rows: Vec<String> = main.iter().flat_map(fmt_rows).collect();
    assert_eq!(
        sorted(rows),
        vec![
            "a 1 1 3 3 0 10",
            "b 2 2 null null 0 10",
            "c null null 14 4 10 20"
        ]
    );
}

// ---------------------------------------------------------------------------------
// Interval joins
// ---------------------------------------------------------------------------------

#[test]
fn interval_pairs_are_emitted_on_arrival_of_the_second_row() {
    // left.ts BETWEEN right.ts - 10 AND right.ts + 5.
    let mut h = H::new(interval("inner", -10, 5));
    h.left(&[r("a", 100, 1)]);
    assert!(h.take().is_empty());
    h.right(&[r("a", 105, 1)]);
    assert_eq!(h.take(), vec!["a 100 1 105 1"]);
    h.right(&[r("b", 100, 2)]);
    assert!(h.take().is_empty(), "other key");
    h.left(&[r("a", 101, 2), r("b", 99, 3)]);
    assert_eq!(h.take(), vec!["a 101 2 105 1", "b 99 3 100 2"]);
    // A row pairs with every partner in its interval.
    h.right(&[r("a", 100, 3)]);
    assert_eq!(h.take(), vec!["a 100 1 100 3", "a 101 2 100 3"]);
    assert_eq!(h.op.buffered_rows(), 6);
    assert_eq!(h.op.buffered_keys(), 2);
    // Empty batches change nothing; there is no third input.
    h.left(&[]);
    assert!(h.take().is_empty());
    let mut out = Collector::default();
    let err =
        h.op.process_batch(2, batch(&left(), &[r("a", 1, 1)]), &mut h.ctx, &mut out)
            .unwrap_err();
    assert!(err.to_string().contains("two inputs"), "{err}");
    // Inner: nothing more at the end.
    h.end();
    assert!(h.take().is_empty());
    assert_eq!(h.op.buffered_rows(), 0);
    assert_eq!(h.op.buffered_keys(), 0);
    assert!(h.behind.is_empty(), "{:?}", h.behind);
}

#[test]
fn interval_bounds_are_inclusive() {
    for (lower, upper) in [(-10, 5), (0, 0), (2, 5), (-5, -2), (-7, 7)] {
        // A right row at 100 matches left rows in [100 + lower, 100 + upper].
        let mut h = H::new(interval("inner", lower, upper));
        let (lo, hi) = (100 + lower, 100 + upper);
        h.left(&[
            r("a", lo - 1, 1),
            r("a", lo, 2),
            r("a", hi, 3),
            r("a", hi + 1, 4),
        ]);
        h.right(&[r("a", 100, 9)]);
        assert_eq!(
            h.take(),
            vec![format!("a {lo} 2 100 9"), format!("a {hi} 3 100 9")],
            "[{lower}, {upper}] right arriving second"
        );

        // A left row at 1000 matches right rows in [1000 - upper, 1000 - lower].
        let mut h = H::new(interval("inner", lower, upper));
        let (lo, hi) = (1000 - upper, 1000 - lower);
        h.left(&[r("a", 1000, 1)]);
        h.right(&[
            r("a", lo - 1, 1),
            r("a", lo, 2),
            r("a", hi, 3),
            r("a", hi + 1, 4),
        ]);
        assert_eq!(
            h.take(),
            vec![format!("a 1000 1 {lo} 2"), format!("a 1000 1 {hi} 3")],
            "[{lower}, {upper}] left arriving first"
        );
    }
}

#[test]
fn left_outer_rows_wait_until_the_watermark_reaches_t_minus_lower() {
    let mut h = H::new(interval("left", -10, 5));
    h.left(&[r("a", 100, 1), r("b", 100, 2)]);
    h.right(&[r("b", 95, 3), r("c", 100, 4)]);
    assert_eq!(h.take(), vec!["b 100 2 95 3"]);
    h.wm(104);
    assert!(h.take().is_empty());
    // The right rows are gone at t + upper (95 + 5, 100 + 5); unmatched right rows of a
    // left join are never emitted.
    h.wm(105);
    assert!(h.take().is_empty());
    assert_eq!(h.op.buffered_rows(), 2);
    h.wm(109);
    assert!(h.take().is_empty(), "a right row at 110 could still match");
    h.right(&[r("a", 110, 5)]);
    assert_eq!(h.take(), vec!["a 100 1 110 5"]);
    h.wm(110);
    assert!(
        h.take().is_empty(),
        "matched rows are never emitted unmatched"
    );
    h.left(&[r("a", 150, 6)]);
    h.wm(159);
    assert!(h.take().is_empty());
    h.wm(160);
    assert_eq!(h.take(), vec!["a 150 6 null null"]);
    h.wm(1_000);
    h.end();
    assert!(h.take().is_empty());
    assert_eq!(h.op.buffered_rows(), 0);
    assert!(h.behind.is_empty(), "{:?}", h.behind);
}

#[test]
fn right_outer_rows_wait_until_the_watermark_reaches_t_plus_upper() {
    let mut h = H::new(interval("right", -10, 5));
    assert_eq!(event_time_name(&h.plan.output), "right_ts");
    h.right(&[r("a", 100, 1), r("b", 100, 2)]);
    h.left(&[r("b", 91, 3), r("c", 100, 4)]);
    assert_eq!(h.take(), vec!["b 91 3 100 2"]);
    h.wm(104);
    assert!(h.take().is_empty());
    h.wm(105);
    assert_eq!(h.take(), vec!["a null null 100 1"]);
    h.end();
    assert!(
        h.take().is_empty(),
        "unmatched left rows of a right join are dropped"
    );
    assert!(h.behind.is_empty(), "{:?}", h.behind);
}

#[test]
fn full_outer_rows_and_matched_rows() {
    let mut h = H::new(interval("full", -10, 5));
    h.left(&[r("a", 100, 1), r("a", 120, 2)]);
    h.right(&[r("b", 100, 3)]);
    h.wm(105);
    assert_eq!(h.take(), vec!["b null null 100 3"]);
    h.wm(110);
    assert_eq!(h.take(), vec!["a 100 1 null null"]);
    // The second left row of the key is still buffered and matches later.
    h.right(&[r("a", 125, 4)]);
    assert_eq!(h.take(), vec!["a 120 2 125 4"]);
    h.wm(130);
    assert!(h.take().is_empty(), "both matched");
    // A right row that matched an earlier left row is not emitted unmatched either.
    h.left(&[r("c", 140, 5)]);
    h.right(&[r("c", 140, 6), r("c", 200, 7)]);
    assert_eq!(h.take(), vec!["c 140 5 140 6"]);
    h.end();
    assert_eq!(h.take(), vec!["c null null 200 7"]);
    assert!(h.behind.is_empty(), "{:?}", h.behind);
    assert_eq!(h.late_metric(), 0);
}

#[test]
fn outer_rows_are_not_emitted_before_their_time_even_when_the_other_side_is_silent() {
    // The right input is silent: left rows come out padded as the watermark passes
    // t - lower, one watermark at a time.
    let mut h = H::new(interval("left", -10, 0));
    for t in (0..100).step_by(10) {
        h.left(&[r("a", t, t)]);
    }
    for w in 0..120 {
        h.wm(w);
        let out = h.take();
        if w >= 10 && w % 10 == 0 && w <= 100 {
            assert_eq!(
                out,
                vec![format!("a {} {} null null", w - 10, w - 10)],
                "at {w}"
            );
        } else {
            assert!(out.is_empty(), "at {w}: {out:?}");
        }
    }
    assert_eq!(h.op.buffered_rows(), 0);
}

#[test]
fn null_keys_never_match() {
    for (jt, expected) in [
        ("inner", vec![]),
        ("left", vec!["null 100 1 null null"]),
        ("right", vec!["null null null 100 2"]),
        ("full", vec!["null 100 1 null null", "null null null 100 2"]),
    ] {
        let mut h = H::new(interval(jt, -10, 10));
        h.left(&[null_key(100, 1)]);
        h.right(&[null_key(100, 2)]);
        // Emitted at once, not buffered.
        assert_eq!(h.take(), expected, "{jt}");
        assert_eq!(h.op.buffered_rows(), 0, "{jt}");
        h.end();
        assert!(h.take().is_empty(), "{jt}");
        assert!(h.late[0].is_empty() && h.late[1].is_empty());
        assert_eq!(h.late_metric(), 0);
    }
    // A null in one of two key columns is a null key.
    let l = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, true),
        Field::new("ts", ts_type(), true),
        Field::new("x", DataType::Int64, true),
    ]));
    let mut h = H::new_on(
        json!({"type": "inner", "on": ["k", "x"], "interval": {"lower": 0, "upper": 0}}),
        &l,
        &l,
    );
    let two = |k: Option<&str>, x: Option<i64>| {
        RecordBatch::try_new(
            l.clone(),
            vec![
                Arc::new(StringArray::from(vec![k])),
                Arc::new(TimestampMillisecondArray::from(vec![5])),
                Arc::new(Int64Array::from(vec![x])),
            ],
        )
        .unwrap()
    };
    h.push_batch(0, two(Some("a"), None));
    h.push_batch(1, two(Some("a"), None));
    h.push_batch(0, two(Some("a"), Some(1)));
    h.push_batch(1, two(Some("a"), Some(1)));
    assert_eq!(h.take(), vec!["a 5 1 5"]);
    assert_eq!(h.op.buffered_rows(), 2);
}

#[test]
fn late_rows_go_to_the_side_outputs() {
    let mut h = H::new(interval("full", -10, 5));
    h.wm(100);
    h.left(&[
        r("a", 100, 1),
        r("a", 101, 2),
        null_time("a", 3),
        r("a", -5, 4),
        null_key(50, 5),
    ]);
    assert_eq!(
        h.take_late(0),
        vec!["a 100 1", "a null 3", "a -5 4", "null 50 5"]
    );
    assert!(
        h.take().is_empty(),
        "a late null-key row is late, not unmatched"
    );
    assert_eq!(h.late_metric(), 4);
    // Late rows are not joined: the right row at 100 would match both left rows.
    h.right(&[r("a", 100, 6), r("a", 99, 7), r("a", 101, 8)]);
    assert_eq!(h.take_late(1), vec!["a 100 6", "a 99 7"]);
    assert_eq!(h.take(), vec!["a 101 2 101 8"]);
    assert_eq!(h.late_metric(), 6);
    assert!(h.take_late(0).is_empty());
    // The watermark in ctx counts even before handle_watermark runs.
    h.ctx.watermark = 200;
    h.left(&[r("a", 150, 9), r("b", 201, 10)]);
    assert_eq!(h.take_late(0), vec!["a 150 9"]);
    assert_eq!(h.late_metric(), 7);
    h.end();
    assert_eq!(
        h.take_sorted(),
        vec!["b 201 10 null null"],
        "late rows are never emitted unmatched"
    );
}

#[test]
fn event_times_in_other_units_and_int64() {
    let l = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, true),
        Field::new("at", DataType::Int64, true),
        Field::new("ts", ts_type(), true),
    ]));
    let rs = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, true),
        Field::new("bt", DataType::Timestamp(TimeUnit::Second, None), true),
    ]));
    let mut h = H::new_on(
        json!({"type": "left", "on": ["k"], "interval": {"lower": 0, "upper": "1s"}, "left_time": "at"}),
        &l,
        &rs,
    );
    assert_eq!(h.plan.sides[0].time, "at");
    assert_eq!(h.plan.sides[1].time, "bt");
    assert_eq!(event_time_name(&h.plan.output), "at");
    let lb = RecordBatch::try_new(
        l.clone(),
        vec![
            Arc::new(StringArray::from(vec!["a", "a", "a", "a"])),
            Arc::new(Int64Array::from(vec![999, 1_000, 2_000, 2_001])),
            Arc::new(TimestampMillisecondArray::from(vec![0, 0, 0, 0])),
        ],
    )
    .unwrap();
    h.push_batch(0, lb);
    let rb = RecordBatch::try_new(
        rs.clone(),
        vec![
            Arc::new(StringArray::from(vec!["a"])),
            Arc::new(TimestampSecondArray::from(vec![1])),
        ],
    )
    .unwrap();
    h.push_batch(1, rb);
    assert_eq!(h.take(), vec!["a 1000 0 1", "a 2000 0 1"]);
    h.end();
    assert_eq!(h.take_sorted(), vec!["a 2001 0 null", "a 999 0 null"]);
}

#[test]
fn keys_of_different_string_layouts_match_and_coalesce() {
    let dict = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
    let l = Arc::new(Schema::new(vec![
        Field::new("k", dict.clone(), true),
        Field::new("ts", ts_type(), true),
        Field::new("lv", DataType::Int64, true),
    ]));
    let rs = Arc::new(Schema::new(vec![
        Field::new("k", DataType::LargeUtf8, true),
        Field::new("ts", ts_type(), true),
        Field::new("rv", DataType::Int64, true),
    ]));
    let mut h = H::new_on(interval("full", 0, 0), &l, &rs);
    assert_eq!(h.plan.output.field(0).data_type(), &dict);
    let keys: DictionaryArray<Int32Type> = vec!["a", "b", "a"].into_iter().collect();
    h.push_batch(
        0,
        RecordBatch::try_new(
            l.clone(),
            vec![
                Arc::new(keys),
                Arc::new(TimestampMillisecondArray::from(vec![1, 1, 2])),
                Arc::new(Int64Array::from(vec![1, 2, 3])),
            ],
        )
        .unwrap(),
    );
    h.push_batch(
        1,
        RecordBatch::try_new(
            rs.clone(),
            vec![
                Arc::new(LargeStringArray::from(vec!["a", "c"])),
                Arc::new(TimestampMillisecondArray::from(vec![1, 1])),
                Arc::new(Int64Array::from(vec![4, 5])),
            ],
        )
        .unwrap(),
    );
    assert_eq!(h.take(), vec!["a 1 1 1 4"]);
    h.end();
    assert_eq!(
        h.take_sorted(),
        vec!["a 2 3 null null", "b 1 2 null null", "c null null 1 5"]
    );
}

// ---------------------------------------------------------------------------------
// Window joins
// ---------------------------------------------------------------------------------

#[test]
fn tumbling_window_pairs_are_emitted_when_the_window_fires() {
    let expected_at_9 = |jt: &str| {
        let mut v = vec!["a 1 1 7 1 0 10", "a 5 2 7 1 0 10"];
        if jt == "left" || jt == "full" {
            v.push("b 3 3 null null 0 10");
        }
        if jt == "right" || jt == "full" {
            v.push("c null null 4 3 0 10");
        }
        sorted(v.into_iter().map(String::from).collect())
    };
    for jt in ["inner", "left", "right", "full"] {
        let mut h = H::new(window(jt, json!({"tumbling": "10ms"})));
        h.left(&[r("a", 1, 1), r("a", 5, 2), r("b", 3, 3)]);
        h.right(&[r("a", 7, 1), r("a", 12, 2), r("c", 4, 3)]);
        assert!(h.take().is_empty(), "{jt}: pairs wait for the window");
        h.wm(8);
        assert!(h.take().is_empty(), "{jt}");
        h.wm(9);
        assert_eq!(h.take_sorted(), expected_at_9(jt), "{jt}");
        assert_eq!(h.op.buffered_rows(), 1, "{jt}: the right row at 12");
        h.left(&[r("a", 15, 4)]);
        h.right(&[r("a", 20, 5)]);
        h.wm(19);
        assert_eq!(h.take(), vec!["a 15 4 12 2 10 20"], "{jt}");
        h.end();
        let last = h.take();
        if jt == "right" || jt == "full" {
            assert_eq!(last, vec!["a null null 20 5 20 30"], "{jt}");
        } else {
            assert!(last.is_empty(), "{jt}");
        }
        assert_eq!(h.op.buffered_rows(), 0);
        assert!(h.behind.is_empty(), "{:?}", h.behind);
    }
}

#[test]
fn tumbling_window_late_rows() {
    let mut h = H::new(window("left", json!({"tumbling": "10ms"})));
    h.wm(9);
    h.left(&[r("a", 9, 1), r("a", 10, 2), null_time("a", 3)]);
    h.right(&[r("a", 0, 4), r("a", 19, 5)]);
    assert_eq!(h.take_late(0), vec!["a 9 1", "a null 3"]);
    assert_eq!(h.take_late(1), vec!["a 0 4"]);
    assert_eq!(h.late_metric(), 3);
    h.wm(19);
    assert_eq!(h.take(), vec!["a 10 2 19 5 10 20"]);
}

#[test]
fn sliding_window_pairs_come_once_per_shared_window() {
    let mut h = H::new(window(
        "inner",
        json!({"sliding": {"size": "10ms", "slide": "5ms"}}),
    ));
    h.left(&[r("a", 7, 1)]);
    h.right(&[r("a", 8, 2)]);
    h.wm(4);
    assert!(h.take().is_empty());
    h.wm(9);
    assert_eq!(h.take(), vec!["a 7 1 8 2 0 10"]);
    h.wm(13);
    assert!(h.take().is_empty());
    h.wm(14);
    assert_eq!(h.take(), vec!["a 7 1 8 2 5 15"]);
    assert_eq!(h.op.buffered_rows(), 0);

    // A pair sharing one of its windows; outer rows once per window they are alone in.
    let mut h = H::new(window(
        "full",
        json!({"sliding": {"size": "10ms", "slide": "5ms"}}),
    ));
    h.left(&[r("a", 3, 1)]);
    h.right(&[r("a", 8, 2)]);
    h.wm(4);
    assert_eq!(h.take(), vec!["a 3 1 null null -5 5"]);
    h.wm(9);
    assert_eq!(h.take(), vec!["a 3 1 8 2 0 10"]);
    h.wm(14);
    assert_eq!(h.take(), vec!["a null null 8 2 5 15"]);

    // A row whose older window already fired joins only its newer windows.
    let mut h = H::new(window(
        "left",
        json!({"sliding": {"size": "10ms", "slide": "5ms"}}),
    ));
    h.wm(9);
    h.left(&[r("a", 7, 1)]);
    assert!(h.take_late(0).is_empty());
    h.end();
    assert_eq!(h.take(), vec!["a 7 1 null null 5 15"]);
    // ... and is late once its newest window fired.
    let mut h = H::new(window(
        "left",
        json!({"sliding": {"size": "10ms", "slide": "5ms"}}),
    ));
    h.wm(14);
    h.left(&[r("a", 7, 1), r("a", 10, 2), r("a", 15, 3)]);
    assert_eq!(h.take_late(0), vec!["a 7 1"]);
    h.end();
    assert_eq!(
        h.take(),
        vec![
            "a 10 2 null null 10 20",
            "a 15 3 null null 10 20",
            "a 15 3 null null 15 25"
        ]
    );
}

#[test]
fn session_windows_are_formed_over_both_sides() {
    // left 0, right 5, left 12: one session [0, 22) bridged by the right row.
    let mut h = H::new(window("inner", json!({"session": "10ms"})));
    h.left(&[r("a", 0, 1), r("a", 12, 2)]);
    h.right(&[r("a", 5, 3)]);
    h.wm(20);
    assert!(h.take().is_empty());
    h.wm(21);
    assert_eq!(h.take_sorted(), vec!["a 0 1 5 3 0 22", "a 12 2 5 3 0 22"]);
    assert_eq!(h.op.buffered_rows(), 0);
    // Late once `t <= watermark` (a row behind it may belong to a fired session).
    h.left(&[r("a", 12, 4), r("a", 13, 5), r("a", 22, 6)]);
    assert_eq!(h.take_late(0), vec!["a 12 4", "a 13 5"]);
    h.end();
    assert!(h.take().is_empty(), "inner: a lone left row");

    // Without the bridge: left 0 alone in [0, 10), then left 12 and right 14.
    let mut h = H::new(window("full", json!({"session": {"gap": "10ms"}})));
    h.left(&[r("b", 0, 1), r("b", 12, 2)]);
    h.right(&[r("b", 14, 3), r("c", 3, 4)]);
    h.wm(8);
    assert!(h.take().is_empty());
    h.wm(9);
    assert_eq!(h.take(), vec!["b 0 1 null null 0 10"]);
    h.wm(12);
    assert_eq!(h.take(), vec!["c null null 3 4 3 13"]);
    h.wm(22);
    assert!(h.take().is_empty(), "[12, 24) is open until 23");
    h.wm(23);
    assert_eq!(h.take(), vec!["b 12 2 14 3 12 24"]);

    // Rows exactly `gap` apart are in different sessions.
    let mut h = H::new(window("full", json!({"session": "10ms"})));
    h.left(&[r("a", 0, 1)]);
    h.right(&[r("a", 10, 2)]);
    h.end();
    assert_eq!(
        h.take(),
        vec!["a 0 1 null null 0 10", "a null null 10 2 10 20"]
    );
    assert!(h.behind.is_empty(), "{:?}", h.behind);
}

/// JOINS.md: "a row is late when some partner may already have been dropped". A right
/// row at 5 arriving after the session [0, 10) of a left row at 0 fired (watermark 9)
/// would share that session (5 - 0 < gap), but the left row is gone: the right row
/// should be late, or the pair be emitted. It is accepted, forms a session [5, 15) of
/// its own, and the pair is lost without a trace.
#[test]
fn a_row_that_would_merge_into_a_fired_session_is_late() {
    let mut h = H::new(window("full", json!({"session": "10ms"})));
    h.left(&[r("a", 0, 1)]);
    h.wm(9);
    assert_eq!(h.take(), vec!["a 0 1 null null 0 10"]);
    h.right(&[r("a", 5, 2)]);
    h.end();
    let late = h.take_late(1);
    let main = h.take();
    assert!(
        late == vec!["a 5 2"] || main.iter().any(|m| m.starts_with("a 0 1 5 2")),
        "late: {late:?}, main: {main:?}"
    );
}

#[test]
fn null_keys_in_window_joins_are_emitted_at_once() {
    for (w, expected) in [
        (json!({"tumbling": "10ms"}), vec!["null 3 1 null null 0 10"]),
        (
            json!({"sliding": {"size": "10ms", "slide": "5ms"}}),
            vec!["null 3 1 null null 0 10", "null 3 1 null null -5 5"],
        ),
        (json!({"session": "10ms"}), vec!["null 3 1 null null 3 13"]),
    ] {
        let mut h = H::new(window("left", w.clone()));
        h.left(&[null_key(3, 1)]);
        h.right(&[null_key(3, 2)]);
        assert_eq!(h.take(), expected, "{w}");
        assert_eq!(h.op.buffered_rows(), 0);
        h.end();
        assert!(h.take().is_empty(), "{w}");

        let mut h = H::new(window("inner", w.clone()));
        h.left(&[null_key(3, 1)]);
        h.right(&[null_key(3, 2)]);
        h.end();
        assert!(h.take().is_empty(), "{w}");
    }
    // Sliding: only the windows that have not fired.
    let mut h = H::new(window(
        "right",
        json!({"sliding": {"size": "10ms", "slide": "5ms"}}),
    ));
    h.wm(5);
    h.right(&[null_key(3, 2)]);
    assert_eq!(h.take(), vec!["null null null 3 2 0 10"]);
}

// ---------------------------------------------------------------------------------
// Scripted runs against a model of the contract
// ---------------------------------------------------------------------------------

/// One step of a scripted run.
#[derive(Clone, Debug)]
enum Step {
    Batch(usize, Vec<Row>),
    Wm(i64),
}

/// A scripted run from a small deterministic generator: batches of either side with
/// `keys` keys (now and then a null key or a null time) whose times jitter around the
/// largest so far, and watermarks 5 behind it. With `late`, some rows come 30 behind
/// (and may be late); without, every watermark stays below every later row's time.
/// Values count up, so that every row can be told apart.
fn script(seed: u64, steps: usize, late: bool, keys: usize) -> Vec<Step> {
    let mut s = seed;
    let mut next = move |n: u64| {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 33) % n
    };
    let names = ["a", "b", "c", "d", "e", "f", "g", "h"];
    let mut out = Vec::new();
    let mut max_t = 0i64;
    let mut v = 0;
    for _ in 0..steps {
        let side = next(2) as usize;
        let n = 1 + next(4) as usize;
        let mut rows = Vec::new();
        for _ in 0..n {
            let back = if late && next(6) == 0 { 30 } else { 0 };
            let t = max_t + next(12) as i64 - 6 - back;
            max_t = max_t.max(t);
            v += 1;
            let has_key = next(15) != 0;
            let key = names[next(keys as u64) as usize];
            let has_time = next(25) != 0;
            rows.push(Row {
                k: has_key.then(|| key.to_string()),
                t: has_time.then_some(t),
                v,
            });
        }
        out.push(Step::Batch(side, rows));
        if next(3) > 0 {
            out.push(Step::Wm(max_t - 5));
        }
    }
    if !late {
        let mut min_later = i64::MAX;
        for step in out.iter_mut().rev() {
            match step {
                Step::Batch(_, rows) => {
                    for t in rows.iter().filter_map(|r| r.t) {
                        min_later = min_later.min(t);
                    }
                }
                Step::Wm(w) => *w = (*w).min(min_later.saturating_sub(1)),
            }
        }
    }
    let mut prev = i64::MIN;
    out.retain(|s| match s {
        Step::Wm(w) if *w <= prev => false,
        Step::Wm(w) => {
            prev = *w;
            true
        }
        Step::Batch(..) => true,
    });
    out
}

/// An accepted row: key, time, value, the watermark when it arrived.
type Accepted = (Option<String>, i64, i64, i64);

fn show(k: &Option<String>) -> &str {
    k.as_deref().unwrap_or("null")
}

fn pair(l: &Accepted, r: &Accepted) -> String {
    format!("{} {} {} {} {}", show(&l.0), l.1, l.2, r.1, r.2)
}

fn alone(side: usize, x: &Accepted) -> String {
    if side == 0 {
        format!("{} {} {} null null", show(&x.0), x.1, x.2)
    } else {
        format!("{} null null {} {}", show(&x.0), x.1, x.2)
    }
}

/// What `docs/JOINS.md` says a script produces (run to its end): the main rows, sorted,
/// and each side's late rows in arrival order.
fn expected(value: &Value, steps: &[Step]) -> (Vec<String>, [Vec<String>; 2]) {
    let o = JoinOptions::parse(value).unwrap();
    let jt = o.join_type;
    let is_late = |t: i64, w: i64| match o.mode {
        JoinMode::Interval { .. } => t <= w,
        JoinMode::Window(WindowKind::Tumbling { size }) => t - t.rem_euclid(size) + size - 1 <= w,
        JoinMode::Window(WindowKind::Sliding { size, slide }) => {
            t - t.rem_euclid(slide) + size - 1 <= w
        }
        JoinMode::Window(WindowKind::Session { .. }) => t <= w,
    };
    let mut w = i64::MIN;
    let mut accepted: [Vec<Accepted>; 2] = [Vec::new(), Vec::new()];
    let mut late: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    for step in steps {
        match step {
            Step::Wm(x) => w = w.max(*x),
            Step::Batch(side, rows) => {
                for row in rows {
                    match row.t {
                        Some(t) if !is_late(t, w) => {
                            accepted[*side].push((row.k.clone(), t, row.v, w))
                        }
                        _ => late[*side].push(format!(
                            "{} {} {}",
                            show(&row.k),
                            row.t.map_or("null".to_string(), |t| t.to_string()),
                            row.v
                        )),
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    let [lefts, rights] = &accepted;
    match o.mode {
        JoinMode::Interval { lower, upper } => {
            let mut right_matched = vec![false; rights.len()];
            for l in lefts {
                let mut matched = false;
                for (j, r) in rights.iter().enumerate() {
                    if l.0.is_some() && l.0 == r.0 && r.1 + lower <= l.1 && l.1 <= r.1 + upper {
                        out.push(pair(l, r));
                        matched = true;
                        right_matched[j] = true;
                    }
                }
                if !matched && jt.keeps(0) {
                    out.push(alone(0, l));
                }
            }
            for (r, matched) in rights.iter().zip(right_matched) {
                if !matched && jt.keeps(1) {
                    out.push(alone(1, r));
                }
            }
        }
        JoinMode::Window(WindowKind::Session { gap }) => {
            // Only valid when no accepted row could have merged into a fired session.
            let mut by_key: BTreeMap<String, Vec<(i64, usize, usize)>> = BTreeMap::new();
            for (side, rows) in accepted.iter().enumerate() {
                for (i, x) in rows.iter().enumerate() {
                    assert!(
                        x.1 > x.3,
                        "the session model needs rows ahead of the watermark"
                    );
                    match &x.0 {
                        Some(k) => by_key.entry(k.clone()).or_default().push((x.1, side, i)),
                        None if jt.keeps(side) => {
                            out.push(format!("{} {} {}", alone(side, x), x.1, x.1 + gap))
                        }
                        None => {}
                    }
                }
            }
            for (_, mut items) in by_key {
                items.sort();
                let mut sessions: Vec<Vec<(i64, usize, usize)>> = Vec::new();
                for item in items {
                    match sessions.last_mut() {
                        Some(s) if item.0 - s.last().unwrap().0 < gap => s.push(item),
                        _ => sessions.push(vec![item]),
                    }
                }
                for s in sessions {
                    let win = (s[0].0, s.last().unwrap().0 + gap);
                    let ls: Vec<&Accepted> =
                        s.iter().filter(|x| x.1 == 0).map(|x| &lefts[x.2]).collect();
                    let rs: Vec<&Accepted> = s
                        .iter()
                        .filter(|x| x.1 == 1)
                        .map(|x| &rights[x.2])
                        .collect();
                    window_rows(&ls, &rs, win, jt, &mut out);
                }
            }
        }
        JoinMode::Window(kind) => {
            let (size, slide) = match kind {
                WindowKind::Tumbling { size } => (size, size),
                WindowKind::Sliding { size, slide } => (size, slide),
                WindowKind::Session { .. } => unreachable!(),
            };
            // The windows a row takes part in: those that had not fired on arrival.
            let windows_of = |x: &Accepted| {
                let mut s = x.1 - x.1.rem_euclid(slide);
                let mut v = Vec::new();
                while s > x.1 - size {
                    if s + size - 1 > x.3 {
                        v.push((s, s + size));
                    }
                    s -= slide;
                }
                v
            };
            type Members<'a> = [Vec<&'a Accepted>; 2];
            let mut groups: BTreeMap<(String, i64, i64), Members> = BTreeMap::new();
            for (side, rows) in accepted.iter().enumerate() {
                for x in rows {
                    for win in windows_of(x) {
                        match &x.0 {
                            Some(k) => {
                                groups.entry((k.clone(), win.0, win.1)).or_default()[side].push(x)
                            }
                            None if jt.keeps(side) => {
                                out.push(format!("{} {} {}", alone(side, x), win.0, win.1))
                            }
                            None => {}
                        }
                    }
                }
            }
            for ((_, s, e), [ls, rs]) in groups {
                window_rows(&ls, &rs, (s, e), jt, &mut out);
            }
        }
    }
    (sorted(out), late)
}

fn window_rows(
    ls: &[&Accepted],
    rs: &[&Accepted],
    (s, e): (i64, i64),
    jt: JoinType,
    out: &mut Vec<String>,
) {
    if !ls.is_empty() && !rs.is_empty() {
        for l in ls {
            for r in rs {
                out.push(format!("{} {s} {e}", pair(l, r)));
            }
        }
        return;
    }
    for (side, xs) in [(0, ls), (1, rs)] {
        if jt.keeps(side) {
            for x in xs {
                out.push(format!("{} {s} {e}", alone(side, x)));
            }
        }
    }
}

fn all_types() -> [&'static str; 4] {
    ["inner", "left", "right", "full"]
}

/// (value, whether the scripts may have late rows).
fn scripted_configs() -> Vec<(Value, bool)> {
    let mut configs = Vec::new();
    for jt in all_types() {
        for (lower, upper) in [(-10, 5), (0, 0), (3, 8), (-8, -3), (-20, 20)] {
            configs.push((interval(jt, lower, upper), true));
        }
        configs.push((window(jt, json!({"tumbling": "10ms"})), true));
        configs.push((
            window(jt, json!({"sliding": {"size": "20ms", "slide": "5ms"}})),
            true,
        ));
        configs.push((
            window(jt, json!({"sliding": {"size": "9ms", "slide": "3ms"}})),
            true,
        ));
        configs.push((window(jt, json!({"session": "7ms"})), false));
        configs.push((window(jt, json!({"session": "2ms"})), false));
    }
    configs
}

#[test]
fn scripted_runs_match_the_contract() {
    for (value, late) in scripted_configs() {
        let (mut lates_seen, mut pairs, mut alone) = (0, 0, 0);
        for seed in 0..5u64 {
            let steps = script(seed, 60, late, 3);
            let mut h = H::new(value.clone());
            h.run(&steps);
            h.end();
            let (main, lates) = expected(&value, &steps);
            assert!(!main.is_empty(), "{value} seed {seed}: nothing emitted");
            assert_eq!(sorted(h.main.clone()), main, "{value} seed {seed}");
            assert_eq!(h.late, lates, "{value} seed {seed}");
            assert_eq!(
                h.late_metric(),
                (lates[0].len() + lates[1].len()) as u64,
                "{value} seed {seed}"
            );
            assert!(
                h.behind.is_empty(),
                "{value} seed {seed}: rows behind the forwarded watermark: {:?}",
                h.behind
            );
            assert_eq!(h.op.buffered_rows(), 0);
            assert_eq!(h.op.buffered_keys(), 0);
            lates_seen += lates[0].len() + lates[1].len();
            alone += main.iter().filter(|m| m.contains("null null")).count();
            pairs += main.iter().filter(|m| !m.contains("null null")).count();
        }
        // The scripts exercise what they are meant to.
        assert!(pairs > 20, "{value}: {pairs} pairs");
        if late {
            assert!(lates_seen > 5, "{value}: {lates_seen} late rows");
        }
        if value["type"] != "inner" {
            assert!(alone > 5, "{value}: {alone} unmatched rows");
        }
    }
}

#[test]
fn session_joins_with_late_rows_classify_them_and_stay_ahead_of_the_watermark() {
    // Rows behind the watermark are late (`t <= watermark`): only the late side
    // outputs are checked against the model here.
    for jt in all_types() {
        let value = window(jt, json!({"session": "7ms"}));
        for seed in 0..5u64 {
            let steps = script(seed, 60, true, 3);
            let mut h = H::new(value.clone());
            h.run(&steps);
            h.end();
            let lates = expected_lates(&value, &steps);
            assert_eq!(h.late, lates, "{value} seed {seed}");
            assert!(h.behind.is_empty(), "{value} seed {seed}: {:?}", h.behind);
            assert_eq!(h.op.buffered_rows(), 0);
        }
    }
}

/// [`expected`]'s late rows, for scripts the session model cannot take.
fn expected_lates(value: &Value, steps: &[Step]) -> [Vec<String>; 2] {
    let o = JoinOptions::parse(value).unwrap();
    let JoinMode::Window(WindowKind::Session { .. }) = o.mode else {
        panic!("sessions only");
    };
    let mut w = i64::MIN;
    let mut late: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    for step in steps {
        match step {
            Step::Wm(x) => w = w.max(*x),
            Step::Batch(side, rows) => {
                for row in rows {
                    if row.t.is_none_or(|t| t <= w) {
                        late[*side].push(format!(
                            "{} {} {}",
                            show(&row.k),
                            row.t.map_or("null".to_string(), |t| t.to_string()),
                            row.v
                        ));
                    }
                }
            }
        }
    }
    late
}

// ---------------------------------------------------------------------------------
// Bounded state
// ---------------------------------------------------------------------------------

/// The key bytes of key `k` as the join stores them.
fn key_bytes(plan: &JoinPlan, k: &str) -> Vec<u8> {
    let schema = plan.sides[0].schema.clone();
    plan.sides[0]
        .codec
        .encode(&batch(&schema, &[r(k, 0, 0)]))
        .unwrap()
        .row(0)
        .to_vec()
}

#[test]
fn state_stays_bounded_on_an_endless_stream() {
    for (value, max_rows, max_keys) in [
        (interval("full", -20, 10), 60, 8),
        (interval("inner", 5, 15), 60, 8),
        (window("full", json!({"tumbling": "10ms"})), 30, 8),
        (
            window("full", json!({"sliding": {"size": "20ms", "slide": "5ms"}})),
            60,
            8,
        ),
        (window("full", json!({"session": "4ms"})), 30, 8),
    ] {
        let mut h = H::new(value.clone());
        let (mut most_rows, mut most_keys) = (0, 0);
        for step in 0..200i64 {
            let base = step * 10;
            // Two steady keys on both sides, one key per batch seen once on each side.
            let once = format!("once{step}");
            let lefts: Vec<Row> = (0..5)
                .flat_map(|i| [r("a", base + i, i), r("b", base + i, i)])
                .chain([r(&once, base, 0)])
                .collect();
            let rights: Vec<Row> = (1..6)
                .flat_map(|i| [r("a", base + i, i), r("b", base + i, i)])
                .chain([r(&once, base + 3, 0)])
                .collect();
            h.left(&lefts);
            h.right(&rights);
            most_rows = most_rows.max(h.op.buffered_rows());
            most_keys = most_keys.max(h.op.buffered_keys());
            h.wm(base + 9);
            most_rows = most_rows.max(h.op.buffered_rows());
            most_keys = most_keys.max(h.op.buffered_keys());
            if step % 10 == 9 {
                h.checkpoint(step as u64);
                for name in [JOIN_LEFT_STATE, JOIN_RIGHT_STATE] {
                    let stored = h.stored(name);
                    assert!(
                        stored.len() <= max_keys,
                        "{value}: {} keys in {name} at step {step}",
                        stored.len()
                    );
                    // The keys seen once more than 5 batches ago are gone.
                    for old in 0..step - 5 {
                        let key = key_bytes(&h.plan, &format!("once{old}"));
                        assert!(
                            !stored.iter().any(|a| a.key == key),
                            "{value}: once{old} still in {name} at step {step}"
                        );
                    }
                }
            }
        }
        assert!(most_rows <= max_rows, "{value}: {most_rows} rows buffered");
        assert!(most_keys <= max_keys, "{value}: {most_keys} keys buffered");
        assert!(h.main.len() > 1_000, "{value}: {} rows out", h.main.len());
        h.end();
        assert_eq!(h.op.buffered_rows(), 0);
        assert_eq!(h.op.buffered_keys(), 0);
        h.checkpoint(1_000);
        assert!(h.stored(JOIN_LEFT_STATE).is_empty(), "{value}");
        assert!(h.stored(JOIN_RIGHT_STATE).is_empty(), "{value}");
        assert!(h.behind.is_empty(), "{value}: {:?}", h.behind);
    }
}

#[test]
fn checkpoints_write_the_buffers_and_delete_emptied_keys() {
    let mut h = H::new(interval("left", -10, 5));
    h.left(&[r("a", 100, 1), r("b", 100, 2)]);
    h.checkpoint(1);
    assert_eq!(h.stored(JOIN_LEFT_STATE).len(), 2);
    assert!(h.stored(JOIN_RIGHT_STATE).is_empty());
    // The runtime stores the watermark now, not the operator.
    assert!(h.stored(JOIN_WATERMARK_STATE).is_empty());
    let a = key_bytes(&h.plan, "a");
    let b = key_bytes(&h.plan, "b");
    let stored = h.stored(JOIN_LEFT_STATE);
    assert!(stored.iter().any(|x| x.key == a) && stored.iter().any(|x| x.key == b));

    h.right(&[r("a", 101, 3)]);
    assert_eq!(h.take(), vec!["a 100 1 101 3"]);
    h.checkpoint(2);
    let right = h.stored(JOIN_RIGHT_STATE);
    assert_eq!(right.len(), 1);
    assert_eq!(right[0].key, a);

    // The right row expires at 106: key a keeps its left row.
    h.wm(106);
    h.checkpoint(3);
    assert!(h.stored(JOIN_RIGHT_STATE).is_empty());
    assert_eq!(h.stored(JOIN_LEFT_STATE).len(), 2);

    // Only changed keys are written: drop b's entry behind the operator's back; a
    // checkpoint in which b did not change does not write it again.
    let addr = h
        .stored(JOIN_LEFT_STATE)
        .into_iter()
        .find(|x| x.key == b)
        .unwrap();
    h.ctx
        .state
        .value_delete(&StateDescriptor::new(JOIN_LEFT_STATE), addr.addr())
        .unwrap();
    h.left(&[r("a", 107, 4)]);
    h.checkpoint(4);
    let stored = h.stored(JOIN_LEFT_STATE);
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].key, a);

    // Everything expires: all deleted.
    h.wm(200);
    assert_eq!(
        h.take_sorted(),
        vec!["a 107 4 null null", "b 100 2 null null"]
    );
    assert_eq!(h.op.buffered_keys(), 0);
    h.checkpoint(5);
    assert!(h.stored(JOIN_LEFT_STATE).is_empty());
    assert!(h.stored(JOIN_RIGHT_STATE).is_empty());
    // A key dropped and seen again before the next checkpoint is stored again.
    h.left(&[r("a", 300, 5)]);
    h.wm(311);
    h.left(&[r("a", 400, 6)]);
    h.checkpoint(6);
    let stored = h.stored(JOIN_LEFT_STATE);
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].key, a);
}

// ---------------------------------------------------------------------------------
// Checkpoint and restore
// ---------------------------------------------------------------------------------

/// What the runtime does on restore: the watermarks the checkpoint recorded for the old
/// subtasks overlapping the new one's key groups.
fn restore_watermarks_as_the_runtime(ctx: &mut OperatorContext, from: &[(KeyGroupRange, i64)]) {
    ctx.restored_watermarks = from
        .iter()
        .filter(|(r, _)| !r.intersect(&ctx.key_groups).is_empty())
        .copied()
        .collect();
    if let Some(w) = ctx.restored_watermarks.iter().map(|(_, w)| *w).min() {
        ctx.watermark = w;
    }
}

/// The watermark of one subtask, as the runtime records it.
fn wm_of(h: &H) -> Vec<(KeyGroupRange, i64)> {
    vec![(h.ctx.key_groups, h.ctx.watermark)]
}

/// A fresh operator for `value` whose state is restored from `snapshot` for the key
/// groups of `subtask` of `parallelism`, opened.
fn restored(
    value: &Value,
    snapshot: &weir_engine::state::StateSnapshot,
    watermarks: &[(KeyGroupRange, i64)],
    parallelism: usize,
    subtask: usize,
) -> H {
    let mut ctx = OperatorContext::for_test("join");
    ctx.parallelism = parallelism;
    ctx.subtask = subtask;
    ctx.key_groups = KeyGroupRange::for_subtask(ctx.max_parallelism, parallelism, subtask);
    let range = ctx.key_groups;
    ctx.state.restore(snapshot, &range).unwrap();
    restore_watermarks_as_the_runtime(&mut ctx, watermarks);
    let plan = JoinStep::plan(value, &left(), &right()).unwrap();
    H::with(Arc::new(plan), ctx)
}

#[test]
fn restore_from_a_checkpoint_continues_exactly() {
    let configs = [
        (interval("full", -10, 5), true),
        (interval("left", 3, 8), true),
        (interval("right", -8, -3), true),
        (window("left", json!({"tumbling": "10ms"})), true),
        (
            window("full", json!({"sliding": {"size": "20ms", "slide": "5ms"}})),
            true,
        ),
        (window("full", json!({"session": "7ms"})), false),
        (window("right", json!({"session": "3ms"})), true),
    ];
    for (ci, (value, late)) in configs.iter().enumerate() {
        for seed in 0..3u64 {
            let steps = script(seed * 31 + ci as u64, 50, *late, 3);
            let mut whole = H::new(value.clone());
            whole.run(&steps);
            whole.end();
            assert!(!whole.main.is_empty());
            let mut splits = 0;
            for split in (1..steps.len()).step_by(5) {
                let mut first = H::new(value.clone());
                // An earlier checkpoint too, so that deletions of written state count.
                first.run(&steps[..split / 2]);
                first.checkpoint(1);
                first.run(&steps[split / 2..split]);
                first.checkpoint(2);
                let snapshot = first.ctx.state.snapshot().unwrap();
                let mut second = restored(value, &snapshot, &wm_of(&first), 1, 0);
                assert_eq!(second.op.buffered_rows(), first.op.buffered_rows());
                assert_eq!(second.op.buffered_keys(), first.op.buffered_keys());
                second.run(&steps[split..]);
                second.end();
                let mut main = first.main.clone();
                main.extend(second.main.clone());
                let at = format!("{value} seed {seed} split {split}");
                assert_eq!(sorted(main), sorted(whole.main.clone()), "{at}");
                for side in 0..2 {
                    let mut late = first.late[side].clone();
                    late.extend(second.late[side].clone());
                    assert_eq!(late, whole.late[side], "{at}");
                }
                assert!(second.behind.is_empty(), "{at}: {:?}", second.behind);
                // The restored operator deletes what it restored once it expired.
                second.checkpoint(3);
                assert!(second.stored(JOIN_LEFT_STATE).is_empty(), "{at}");
                assert!(second.stored(JOIN_RIGHT_STATE).is_empty(), "{at}");
                splits += 1;
            }
            assert!(splits > 5);
        }
    }
}

#[test]
fn checkpoints_between_steps_do_not_change_the_output() {
    for (value, late) in [
        (interval("full", -10, 5), true),
        (
            window("full", json!({"sliding": {"size": "20ms", "slide": "5ms"}})),
            true,
        ),
        (window("full", json!({"session": "5ms"})), true),
    ] {
        let steps = script(7, 80, late, 3);
        let mut plain = H::new(value.clone());
        plain.run(&steps);
        plain.end();
        let mut ckpt = H::new(value.clone());
        for (i, s) in steps.iter().enumerate() {
            ckpt.run(std::slice::from_ref(s));
            if i % 3 == 0 {
                ckpt.checkpoint(i as u64);
            }
        }
        ckpt.end();
        assert_eq!(plain.main, ckpt.main, "{value}");
        assert_eq!(plain.late, ckpt.late, "{value}");
    }
}

#[test]
fn restore_into_two_subtasks_splits_the_keys_and_back() {
    for (value, late) in [
        (interval("full", -10, 5), true),
        (window("full", json!({"tumbling": "10ms"})), true),
        (window("left", json!({"session": "7ms"})), false),
    ] {
        let steps = script(11, 80, late, 8);
        let mut whole = H::new(value.clone());
        whole.run(&steps);
        whole.end();

        let split = steps.len() / 2;
        let mut first = H::new(value.clone());
        first.run(&steps[..split]);
        first.checkpoint(1);
        let snapshot = first.ctx.state.snapshot().unwrap();
        let mut subs: Vec<H> = (0..2)
            .map(|i| restored(&value, &snapshot, &wm_of(&first), 2, i))
            .collect();

        // Each subtask holds the keys of its key groups only, and together all.
        let mut keys = 0;
        let mut rows = 0;
        for sub in &subs {
            assert!(
                sub.op.buffered_keys() > 0,
                "{value}: a subtask restored nothing"
            );
            keys += sub.op.buffered_keys();
            rows += sub.op.buffered_rows();
            for name in [JOIN_LEFT_STATE, JOIN_RIGHT_STATE, JOIN_WATERMARK_STATE] {
                for a in sub.stored(name) {
                    assert!(sub.ctx.key_groups.contains(a.key_group), "{value}: {name}");
                }
            }
        }
        assert_eq!(keys, first.op.buffered_keys(), "{value}");
        assert_eq!(rows, first.op.buffered_rows(), "{value}");
        for name in [JOIN_LEFT_STATE, JOIN_RIGHT_STATE] {
            assert_eq!(
                subs[0].stored(name).len() + subs[1].stored(name).len(),
                first.stored(name).len(),
                "{value}: {name}"
            );
        }

        // The rest of the input, hash-partitioned by key group; watermarks to both.
        // Then back to one subtask (both snapshots restored into it) for the last part.
        let plan = first.plan.clone();
        let back = split + (steps.len() - split) / 2;
        for step in &steps[split..back] {
            route(&plan, &mut subs, step);
        }
        let mut main = first.main.clone();
        let mut late = first.late.concat();
        let mut ctx = OperatorContext::for_test("join");
        let mut watermarks = Vec::new();
        for (i, sub) in subs.iter_mut().enumerate() {
            sub.checkpoint(2 + i as u64);
            main.extend(sub.main.clone());
            late.extend(sub.late.concat());
            let snapshot = sub.ctx.state.snapshot().unwrap();
            let range = ctx.key_groups;
            ctx.state.restore(&snapshot, &range).unwrap();
            watermarks.extend(wm_of(sub));
        }
        restore_watermarks_as_the_runtime(&mut ctx, &watermarks);
        let mut merged = H::with(plan.clone(), ctx);
        assert_eq!(
            merged.op.buffered_rows(),
            subs.iter().map(|s| s.op.buffered_rows()).sum::<usize>(),
            "{value}"
        );
        merged.run(&steps[back..]);
        merged.end();
        main.extend(merged.main.clone());
        late.extend(merged.late.concat());
        assert_eq!(sorted(main), sorted(whole.main.clone()), "{value}");
        assert_eq!(sorted(late), sorted(whole.late.concat()), "{value}");
    }
}

/// Hands one step to the subtasks: each its key groups' rows, every one the watermark.
fn route(plan: &JoinPlan, subs: &mut [H], step: &Step) {
    match step {
        Step::Wm(w) => subs.iter_mut().for_each(|s| s.wm(*w)),
        Step::Batch(side, rows) => {
            let schema = plan.sides[*side].schema.clone();
            let groups = plan.sides[*side]
                .codec
                .encode(&batch(&schema, rows))
                .unwrap()
                .key_groups(128);
            for sub in subs.iter_mut() {
                let mine: Vec<Row> = rows
                    .iter()
                    .zip(&groups)
                    .filter(|(_, g)| sub.ctx.key_groups.contains(**g))
                    .map(|(r, _)| r.clone())
                    .collect();
                if !mine.is_empty() {
                    sub.push(*side, &mine);
                }
            }
        }
    }
}

#[test]
fn restore_works_with_the_rocksdb_backend() {
    use weir_engine::state::{RocksDbStateBackend, SystemClock};
    let base = std::env::temp_dir().join(format!("weir-join-tests-{}", std::process::id()));
    let rocks = |name: &str| -> Box<dyn KeyedStateBackend> {
        Box::new(
            RocksDbStateBackend::create(&base.join(name), 1 << 20, Arc::new(SystemClock)).unwrap(),
        )
    };
    for (i, (value, late)) in [
        (interval("full", -10, 5), true),
        (
            window("full", json!({"sliding": {"size": "20ms", "slide": "5ms"}})),
            true,
        ),
        (window("left", json!({"session": "7ms"})), false),
    ]
    .into_iter()
    .enumerate()
    {
        let steps = script(5 + i as u64, 60, late, 4);
        let mut whole = H::new(value.clone());
        whole.run(&steps);
        whole.end();
        let split = steps.len() / 2;
        let mut ctx = OperatorContext::for_test("join");
        ctx.state = rocks(&format!("first{i}"));
        let plan = JoinStep::plan(&value, &left(), &right()).unwrap();
        let mut first = H::with(Arc::new(plan), ctx);
        first.run(&steps[..split / 2]);
        first.checkpoint(1);
        first.run(&steps[split / 2..split]);
        first.checkpoint(2);
        assert!(
            !first.stored(JOIN_LEFT_STATE).is_empty() || !first.stored(JOIN_RIGHT_STATE).is_empty()
        );
        let snapshot = first.ctx.state.snapshot().unwrap();
        let mut ctx = OperatorContext::for_test("join");
        ctx.state = rocks(&format!("second{i}"));
        let range = ctx.key_groups;
        ctx.state.restore(&snapshot, &range).unwrap();
        restore_watermarks_as_the_runtime(&mut ctx, &wm_of(&first));
        let plan = JoinStep::plan(&value, &left(), &right()).unwrap();
        let mut second = H::with(Arc::new(plan), ctx);
        assert_eq!(
            second.op.buffered_rows(),
            first.op.buffered_rows(),
            "{value}"
        );
        second.run(&steps[split..]);
        second.end();
        let mut main = first.main.clone();
        main.extend(second.main.clone());
        assert_eq!(sorted(main), sorted(whole.main.clone()), "{value}");
        for side in 0..2 {
            let mut late = first.late[side].clone();
            late.extend(second.late[side].clone());
            assert_eq!(late, whole.late[side], "{value}");
        }
        second.checkpoint(3);
        assert!(second.stored(JOIN_LEFT_STATE).is_empty(), "{value}");
        assert!(second.stored(JOIN_RIGHT_STATE).is_empty(), "{value}");
    }
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn event_times_at_the_i64_limits_never_panic() {
    // The longest duration a job can write, a little below i64::MAX ms.
    const MAX: &str = "106751991167d";
    let times = [i64::MIN, i64::MIN + 1, -1, 0, 1, i64::MAX - 1, i64::MAX];
    for value in [
        interval("full", -10, 5),
        json!({"type": "full", "on": ["k"], "interval": {"lower": format!("-{MAX}"), "upper": MAX}}),
        json!({"type": "full", "on": ["k"], "interval": {"lower": MAX, "upper": MAX}}),
        json!({"type": "left", "on": ["k"], "interval": {"lower": format!("-{MAX}"), "upper": format!("-{MAX}")}}),
        window("full", json!({"tumbling": "10ms"})),
        window("full", json!({"tumbling": MAX})),
        window("full", json!({"sliding": {"size": "20ms", "slide": "5ms"}})),
        window("full", json!({"session": "7ms"})),
        window("full", json!({"session": MAX})),
    ] {
        let mut h = H::new(value.clone());
        let rows: Vec<Row> = times
            .iter()
            .enumerate()
            .flat_map(|(i, &t)| [r("a", t, i as i64), null_key(t, i as i64)])
            .collect();
        h.left(&rows);
        h.right(&rows);
        h.wm(i64::MIN + 1);
        h.left(&rows);
        h.wm(0);
        h.right(&rows);
        h.checkpoint(1);
        let snapshot = h.ctx.state.snapshot().unwrap();
        let mut again = restored(&value, &snapshot, &wm_of(&h), 1, 0);
        assert_eq!(again.op.buffered_rows(), h.op.buffered_rows(), "{value}");
        for h in [&mut h, &mut again] {
            h.wm(i64::MAX - 1);
            h.right(&rows);
            h.end();
            assert_eq!(h.op.buffered_rows(), 0, "{value}");
            assert!(!h.late[1].is_empty(), "{value}");
            let _ = h.op.output_watermark(i64::MAX - 1);
            let _ = h.op.output_watermark(i64::MIN);
        }
    }
}
