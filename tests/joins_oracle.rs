//! The `join` step against a brute-force oracle written from docs/JOINS.md.
//!
//! The oracle is nested loops over every left × right record: the interval condition
//! `r.ts + lower <= l.ts <= r.ts + upper` (inclusive), window membership (tumbling,
//! sliding, and sessions formed per key over the rows of both sides), null keys that
//! never match, and the unmatched rows of outer joins padded with nulls. It knows
//! nothing of buffers, timers or watermarks: it only applies to inputs in which no row
//! is late, and the generators make sure of that (each source's disorder stays within
//! its own `max_out_of_orderness`), so the answer does not depend on how the runtime
//! interleaves the two sources.
//!
//! The harness runs the real runtime: two scripted sources (`left` and `right`, each
//! with `event_time` on `ts` and its own out-of-orderness) replay shuffled batches into
//! four `join` steps (inner, left, right and full, `from: [left, right]`) at
//! parallelism 1 and 4, and collecting sinks read their main outputs and their
//! `late_left`/`late_right` side outputs. The multisets of rows (window bounds and
//! nulls included) must equal the oracle's, and nothing may be late. Hand-written cases
//! pin the just-inside/just-outside boundaries and each join type's exact output, and
//! the output schema (coalesced keys, `right_` prefix, `window_start`/`window_end`,
//! nullability, event-time column) is checked against the page.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{ArrayRef, AsArray, Int64Array, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::json;
use weir_engine::graph::{GraphBuilder, NodeId, SourceDecl, StreamRef};
use weir_engine::registry::{BuildContext, FieldError, SourceBuild, SourceFactory};
use weir_engine::time::EventTimeConfig;

use crate::common::{block_on, CollectFactory, Collected, ScriptedFactory, Step};

// ---------------------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------------------

/// Interval or window, all times in ms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Interval { lower: i64, upper: i64 },
    Tumbling { size: i64 },
    Sliding { size: i64, slide: i64 },
    Session { gap: i64 },
}

impl Mode {
    fn is_window(self) -> bool {
        !matches!(self, Mode::Interval { .. })
    }
}

/// The four join types, in the order their steps are added.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Jt {
    Inner,
    Left,
    Right,
    Full,
}

const ALL_TYPES: [Jt; 4] = [Jt::Inner, Jt::Left, Jt::Right, Jt::Full];

impl Jt {
    fn name(self) -> &'static str {
        match self {
            Jt::Inner => "inner",
            Jt::Left => "left",
            Jt::Right => "right",
            Jt::Full => "full",
        }
    }

    /// Whether unmatched rows of `side` (0 left, 1 right) are emitted.
    fn keeps(self, side: usize) -> bool {
        matches!((self, side), (Jt::Left, 0) | (Jt::Right, 1) | (Jt::Full, _))
    }
}

/// One input record `(k, ts, v)`; `v` names the record (a repeated record repeats it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Rec {
    key: Option<String>,
    ts: Option<i64>,
    v: i64,
}

fn rec(key: &str, ts: i64, v: i64) -> Rec {
    Rec {
        key: Some(key.to_string()),
        ts: Some(ts),
        v,
    }
}

fn null_key(ts: i64, v: i64) -> Rec {
    Rec {
        key: None,
        ts: Some(ts),
        v,
    }
}

impl std::fmt::Display for Rec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}@{}={}",
            self.key.as_deref().unwrap_or("NULL"),
            fmt_opt(self.ts),
            self.v
        )
    }
}

/// One source: its out-of-orderness and the batches it emits in order.
#[derive(Clone, Debug)]
struct Input {
    ooo: i64,
    batches: Vec<Vec<Rec>>,
}

impl Input {
    fn records(&self) -> Vec<Rec> {
        self.batches.iter().flatten().cloned().collect()
    }

    /// The first record that may be late: its time is at or behind the watermark the
    /// source emitted after the earlier batches (`max_ts - ooo - 1`), or is null.
    fn first_late(&self) -> Option<(usize, Rec)> {
        let mut max: Option<i64> = None;
        for (i, b) in self.batches.iter().enumerate() {
            let wm = max.map(|m| m - self.ooo - 1);
            for r in b {
                match (r.ts, wm) {
                    (None, _) => return Some((i, r.clone())),
                    (Some(t), Some(w)) if t <= w => return Some((i, r.clone())),
                    _ => {}
                }
            }
            max = b.iter().filter_map(|r| r.ts).chain(max).max();
        }
        None
    }
}

/// A whole job: the join and both inputs.
#[derive(Clone, Debug)]
struct Case {
    mode: Mode,
    left: Input,
    right: Input,
}

fn fmt_opt(v: Option<i64>) -> String {
    v.map_or_else(|| "null".to_string(), |x| x.to_string())
}

fn fmt_input(f: &mut std::fmt::Formatter<'_>, name: &str, input: &Input) -> std::fmt::Result {
    writeln!(
        f,
        "  {name}: max_out_of_orderness {}ms, {} records in {} batches",
        input.ooo,
        input.batches.iter().map(Vec::len).sum::<usize>(),
        input.batches.len()
    )?;
    let mut max: Option<i64> = None;
    for (i, b) in input.batches.iter().enumerate() {
        let recs: Vec<String> = b.iter().map(Rec::to_string).collect();
        max = b.iter().filter_map(|r| r.ts).chain(max).max();
        let wm = max.map_or_else(String::new, |m| {
            format!("  -> watermark {}", m - input.ooo - 1)
        });
        writeln!(f, "    batch {i}: {}{wm}", recs.join(" "))?;
    }
    Ok(())
}

impl std::fmt::Display for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{:?}", self.mode)?;
        fmt_input(f, "left", &self.left)?;
        fmt_input(f, "right", &self.right)
    }
}

// ---------------------------------------------------------------------------------------
// Output rows
// ---------------------------------------------------------------------------------------

/// One output row: `k` (the coalesced key), the left's `ts` and `v`, the right's
/// `right_ts` and `right_v`, and the window of a window join.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Row {
    k: Option<String>,
    ts: Option<i64>,
    v: Option<i64>,
    right_ts: Option<i64>,
    right_v: Option<i64>,
    window: Option<(i64, i64)>,
}

impl std::fmt::Display for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "k={} | ts={} v={} | right_ts={} right_v={}",
            self.k.as_deref().unwrap_or("null"),
            fmt_opt(self.ts),
            fmt_opt(self.v),
            fmt_opt(self.right_ts),
            fmt_opt(self.right_v)
        )?;
        if let Some((s, e)) = self.window {
            write!(f, " | [{s}, {e})")?;
        }
        Ok(())
    }
}

fn pair(l: &Rec, r: &Rec, window: Option<(i64, i64)>) -> Row {
    Row {
        k: l.key.clone(),
        ts: l.ts,
        v: Some(l.v),
        right_ts: r.ts,
        right_v: Some(r.v),
        window,
    }
}

/// A row of `side` without a partner: the other side's columns are null, the key is
/// the row's own (SQL's `USING`).
fn alone(side: usize, x: &Rec, window: Option<(i64, i64)>) -> Row {
    if side == 0 {
        Row {
            k: x.key.clone(),
            ts: x.ts,
            v: Some(x.v),
            right_ts: None,
            right_v: None,
            window,
        }
    } else {
        Row {
            k: x.key.clone(),
            ts: None,
            v: None,
            right_ts: x.ts,
            right_v: Some(x.v),
            window,
        }
    }
}

/// `None` when `actual` is the same multiset as `expected`, else a readable diff.
fn diff_rows(expected: &[Row], actual: &[Row]) -> Option<String> {
    let mut count: BTreeMap<&Row, i64> = BTreeMap::new();
    for r in expected {
        *count.entry(r).or_default() += 1;
    }
    for r in actual {
        *count.entry(r).or_default() -= 1;
    }
    if count.values().all(|c| *c == 0) {
        return None;
    }
    let mut s = format!(
        "{} rows expected, {} emitted\n",
        expected.len(),
        actual.len()
    );
    for (r, c) in &count {
        if *c > 0 {
            let _ = writeln!(s, "  missing    x{c}: {r}");
        }
    }
    for (r, c) in &count {
        if *c < 0 {
            let _ = writeln!(s, "  unexpected x{}: {r}", -c);
        }
    }
    Some(s)
}

// ---------------------------------------------------------------------------------------
// The oracle (docs/JOINS.md, "Matching" and "Output")
// ---------------------------------------------------------------------------------------

/// The tumbling or sliding windows `[start, end)` that contain `t`.
fn fixed_windows(mode: Mode, t: i64) -> Vec<(i64, i64)> {
    let (size, slide) = match mode {
        Mode::Tumbling { size } => (size, size),
        Mode::Sliding { size, slide } => (size, slide),
        _ => unreachable!("not a fixed window"),
    };
    let mut v = Vec::new();
    let mut s = t - t.rem_euclid(slide);
    while s > t - size {
        v.push((s, s + size));
        s -= slide;
    }
    v
}

/// Every left row of a window with every right row; with one side empty, the other
/// side's rows alone (outer joins on that side).
fn pair_up(lefts: &[&Rec], rights: &[&Rec], window: (i64, i64), jt: Jt, out: &mut Vec<Row>) {
    if !lefts.is_empty() && !rights.is_empty() {
        for l in lefts {
            for r in rights {
                out.push(pair(l, r, Some(window)));
            }
        }
        return;
    }
    for (side, rows) in [(0, lefts), (1, rights)] {
        if jt.keeps(side) {
            out.extend(rows.iter().map(|x| alone(side, x, Some(window))));
        }
    }
}

fn ts_of(r: &Rec) -> i64 {
    r.ts.expect("the oracle only sees records with an event time")
}

/// What a `jt` join in `mode` emits for these records (none of them late).
fn oracle(mode: Mode, jt: Jt, left: &[Rec], right: &[Rec]) -> Vec<Row> {
    let mut out = Vec::new();
    let sides = [left, right];
    match mode {
        Mode::Interval { lower, upper } => {
            let matches = |l: &Rec, r: &Rec| {
                l.key.is_some()
                    && l.key == r.key
                    && ts_of(r) + lower <= ts_of(l)
                    && ts_of(l) <= ts_of(r) + upper
            };
            for l in left {
                for r in right {
                    if matches(l, r) {
                        out.push(pair(l, r, None));
                    }
                }
            }
            if jt.keeps(0) {
                for l in left {
                    if !right.iter().any(|r| matches(l, r)) {
                        out.push(alone(0, l, None));
                    }
                }
            }
            if jt.keeps(1) {
                for r in right {
                    if !left.iter().any(|l| matches(l, r)) {
                        out.push(alone(1, r, None));
                    }
                }
            }
        }
        Mode::Tumbling { .. } | Mode::Sliding { .. } => {
            // (key, window) -> (left rows, right rows)
            type Group<'a> = (Vec<&'a Rec>, Vec<&'a Rec>);
            let mut groups: BTreeMap<(String, (i64, i64)), Group<'_>> = BTreeMap::new();
            for (side, recs) in sides.iter().enumerate() {
                for x in recs.iter() {
                    for w in fixed_windows(mode, ts_of(x)) {
                        match &x.key {
                            // A null key never matches: the row is alone in each window.
                            None => {
                                if jt.keeps(side) {
                                    out.push(alone(side, x, Some(w)));
                                }
                            }
                            Some(k) => {
                                let g = groups.entry((k.clone(), w)).or_default();
                                if side == 0 {
                                    g.0.push(x);
                                } else {
                                    g.1.push(x);
                                }
                            }
                        }
                    }
                }
            }
            for ((_, w), (ls, rs)) in &groups {
                pair_up(ls, rs, *w, jt, &mut out);
            }
        }
        Mode::Session { gap } => {
            let keys: BTreeSet<&String> = left
                .iter()
                .chain(right)
                .filter_map(|x| x.key.as_ref())
                .collect();
            for k in keys {
                let of_key = |recs: &[Rec]| -> Vec<Rec> {
                    recs.iter()
                        .filter(|x| x.key.as_ref() == Some(k))
                        .cloned()
                        .collect()
                };
                let (ls, rs) = (of_key(left), of_key(right));
                let mut times: Vec<i64> = ls.iter().chain(&rs).map(ts_of).collect();
                times.sort_unstable();
                // Rows closer than `gap` to a neighbour share a session: (first, last).
                let mut sessions: Vec<(i64, i64)> = Vec::new();
                for t in times {
                    match sessions.last_mut() {
                        Some((_, last)) if t - *last < gap => *last = t,
                        _ => sessions.push((t, t)),
                    }
                }
                for (first, last) in sessions {
                    let inside = |x: &&Rec| (first..=last).contains(&ts_of(x));
                    let l: Vec<&Rec> = ls.iter().filter(inside).collect();
                    let r: Vec<&Rec> = rs.iter().filter(inside).collect();
                    pair_up(&l, &r, (first, last + gap), jt, &mut out);
                }
            }
            // A null key is in no session with anything: alone in `[t, t + gap)`.
            for (side, recs) in sides.iter().enumerate() {
                if jt.keeps(side) {
                    for x in recs.iter().filter(|x| x.key.is_none()) {
                        out.push(alone(side, x, Some((ts_of(x), ts_of(x) + gap))));
                    }
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// The harness: two scripted sources, four join steps, collecting sinks
// ---------------------------------------------------------------------------------------

fn input_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, true),
        Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        Field::new("v", DataType::Int64, false),
    ]))
}

fn to_batch(recs: &[Rec]) -> RecordBatch {
    RecordBatch::try_new(
        input_schema(),
        vec![
            Arc::new(StringArray::from(
                recs.iter().map(|r| r.key.as_deref()).collect::<Vec<_>>(),
            )),
            Arc::new(TimestampMillisecondArray::from(
                recs.iter().map(|r| r.ts).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from_iter_values(recs.iter().map(|r| r.v))),
        ],
    )
    .expect("input batch")
}

fn script(input: &Input) -> (Vec<Step>, Arc<AtomicBool>) {
    let steps = input
        .batches
        .iter()
        .map(|b| Step::Emit(0, to_batch(b)))
        .collect();
    (steps, Arc::new(AtomicBool::new(false)))
}

fn event_time(ooo: i64) -> EventTimeConfig {
    EventTimeConfig {
        field: "ts".into(),
        max_out_of_orderness: Duration::from_millis(u64::try_from(ooo).expect("ooo >= 0")),
        idle_timeout: None,
        max_future: Default::default(),
    }
}

/// Adds source `name` of type `type_name` (script `script`) at parallelism 1.
fn add_source(
    b: &mut GraphBuilder,
    name: &str,
    type_name: &'static str,
    script: u64,
    ooo: i64,
) -> Result<NodeId, String> {
    b.add_source(
        name,
        SourceDecl {
            type_name,
            options: &json!({ "script": script }),
            format: None,
            schema: None,
            event_time: Some(event_time(ooo)),
            parallelism: Some(1),
        },
    )
    .map_err(|e| format!("source {name}: {e:?}"))
}

/// Adds the sink `name` collecting `stream` into `slot`.
fn collect(b: &mut GraphBuilder, name: &str, stream: &StreamRef, slot: &str) -> Result<(), String> {
    b.add_sink(name, stream, "collect", &json!({ "slot": slot }), Some(1))
        .map(|_| ())
        .map_err(|e| format!("{name} sink: {e:?}"))
}

/// Takes the batches collected into `slot`.
fn take(collected: &Collected, slot: &str) -> Vec<RecordBatch> {
    collected
        .lock()
        .expect("collect lock")
        .remove(slot)
        .unwrap_or_default()
}

/// A duration the way a job writes it: `"-2000ms"`, `"0s"`, or a number of ms.
fn dur(ms: i64, as_number: bool) -> serde_json::Value {
    // A bare number is only accepted for zero (it has no unit).
    if as_number && ms == 0 {
        json!(0)
    } else if ms % 1000 == 0 {
        json!(format!("{}s", ms / 1000))
    } else {
        json!(format!("{ms}ms"))
    }
}

/// The `join:` value of a `jt` join in `mode` on `k`.
fn join_value(mode: Mode, jt: Jt) -> serde_json::Value {
    let mut v = json!({"type": jt.name(), "on": ["k"]});
    let m = v.as_object_mut().expect("object");
    match mode {
        Mode::Interval { lower, upper } => {
            // Bounds as numbers of ms for some types, as strings for the others.
            let n = matches!(jt, Jt::Left | Jt::Full);
            m.insert(
                "interval".into(),
                json!({"lower": dur(lower, n), "upper": dur(upper, n)}),
            );
        }
        Mode::Tumbling { size } => {
            m.insert("window".into(), json!({ "tumbling": dur(size, false) }));
        }
        Mode::Sliding { size, slide } => {
            m.insert(
                "window".into(),
                json!({"sliding": {"size": dur(size, false), "slide": dur(slide, false)}}),
            );
        }
        Mode::Session { gap } => {
            m.insert("window".into(), json!({ "session": dur(gap, false) }));
        }
    }
    v
}

/// The output schema docs/JOINS.md prescribes for [`input_schema`] on both sides:
/// (name, type, nullable) and the event-time column.
fn expected_output(mode: Mode, jt: Jt) -> (Vec<(String, DataType, bool)>, &'static str) {
    let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
    let left_missing = matches!(jt, Jt::Right | Jt::Full);
    let right_missing = matches!(jt, Jt::Left | Jt::Full);
    let mut v = vec![
        ("ts".to_string(), ts.clone(), true),
        ("v".to_string(), DataType::Int64, left_missing),
        ("right_ts".to_string(), ts.clone(), true),
        ("right_v".to_string(), DataType::Int64, right_missing),
    ];
    let time = if mode.is_window() {
        v.push(("window_start".into(), ts.clone(), false));
        v.push(("window_end".into(), ts, false));
        "window_end"
    } else if jt == Jt::Right {
        "right_ts"
    } else {
        "ts"
    };
    (v, time)
}

/// Compares `schema` with [`expected_output`] (the key `k` by name and type only: the
/// page does not say whether a coalesced key is nullable).
fn check_schema(schema: &Schema, mode: Mode, jt: Jt) -> Result<(), String> {
    let (want, want_time) = expected_output(mode, jt);
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let mut problems = Vec::new();
    match schema.fields().first() {
        Some(f) if f.name() == "k" && f.data_type() == &DataType::Utf8 => {}
        other => problems.push(format!(
            "first column should be the key k: Utf8, got {other:?}"
        )),
    }
    let got: Vec<(String, DataType, bool)> = schema
        .fields()
        .iter()
        .skip(1)
        .map(|f| (f.name().clone(), f.data_type().clone(), f.is_nullable()))
        .collect();
    if got != want {
        problems.push(format!("columns after k: want {want:?}, got {got:?}"));
    }
    let time = weir_engine::time::event_time_column(schema).map(|i| schema.field(i).name().clone());
    if time.as_deref() != Some(want_time) {
        problems.push(format!("event-time column: want {want_time}, got {time:?}"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{jt:?} {mode:?} output schema {names:?} differs from JOINS.md: {}",
            problems.join("; ")
        ))
    }
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef, String> {
    batch
        .column_by_name(name)
        .ok_or_else(|| format!("output has no column `{name}`: {:?}", batch.schema()))
}

fn i64s(batch: &RecordBatch, name: &str) -> Result<Vec<Option<i64>>, String> {
    let c = arrow::compute::cast(column(batch, name)?, &DataType::Int64)
        .map_err(|e| format!("cast {name}: {e}"))?;
    Ok(c.as_primitive::<arrow::datatypes::Int64Type>()
        .iter()
        .collect())
}

fn strings(batch: &RecordBatch, name: &str) -> Result<Vec<Option<String>>, String> {
    let c = arrow::compute::cast(column(batch, name)?, &DataType::Utf8)
        .map_err(|e| format!("cast {name}: {e}"))?;
    Ok(c.as_string::<i32>()
        .iter()
        .map(|s| s.map(str::to_string))
        .collect())
}

fn rows_of(batches: &[RecordBatch], window: bool) -> Result<Vec<Row>, String> {
    let mut out = Vec::new();
    for b in batches {
        let k = strings(b, "k")?;
        let (ts, v) = (i64s(b, "ts")?, i64s(b, "v")?);
        let (rts, rv) = (i64s(b, "right_ts")?, i64s(b, "right_v")?);
        let (ws, we) = if window {
            (i64s(b, "window_start")?, i64s(b, "window_end")?)
        } else {
            (vec![None; b.num_rows()], vec![None; b.num_rows()])
        };
        for i in 0..b.num_rows() {
            let window = match (ws[i], we[i]) {
                (Some(s), Some(e)) => Some((s, e)),
                (None, None) if !window => None,
                (s, e) => return Err(format!("null window bounds in a window join: {s:?} {e:?}")),
            };
            out.push(Row {
                k: k[i].clone(),
                ts: ts[i],
                v: v[i],
                right_ts: rts[i],
                right_v: rv[i],
                window,
            });
        }
    }
    Ok(out)
}

fn recs_of(batches: &[RecordBatch]) -> Result<Vec<Rec>, String> {
    let mut out = Vec::new();
    for b in batches {
        let (k, ts, v) = (strings(b, "k")?, i64s(b, "ts")?, i64s(b, "v")?);
        for i in 0..b.num_rows() {
            out.push(Rec {
                key: k[i].clone(),
                ts: ts[i],
                v: v[i].ok_or("null v in a late row")?,
            });
        }
    }
    Ok(out)
}

/// What one join step emitted.
#[derive(Debug, Default)]
struct Emitted {
    rows: Vec<Row>,
    late_left: Vec<Rec>,
    late_right: Vec<Rec>,
    late_metric: u64,
}

/// Registers a scripted source type with `case`'s left (script 0) and right (script 1)
/// inputs and collecting sinks, and returns the registry and the sinks' map.
fn registry(case: &Case) -> (weir_engine::registry::Registry, Collected) {
    let collected: Collected = Arc::new(Mutex::new(BTreeMap::new()));
    let mut reg = weir::default_registry();
    reg.add_sink(CollectFactory::into(collected.clone()));
    reg.add_source(ScriptedFactory {
        schema: input_schema(),
        scripts: vec![script(&case.left), script(&case.right)],
    });
    (reg, collected)
}

/// Runs `case` with one join step per type in `types` at `parallelism`, all in one job.
fn run_engine(
    case: &Case,
    types: &[Jt],
    parallelism: usize,
) -> Result<BTreeMap<Jt, Emitted>, String> {
    let (reg, collected) = registry(case);
    let mut b = GraphBuilder::new("joins-oracle", Arc::new(reg), ".".into());
    let left = add_source(&mut b, "left", "scripted", 0, case.left.ooo)?;
    let right = add_source(&mut b, "right", "scripted", 1, case.right.ooo)?;
    for &jt in types {
        let name = format!("j_{}", jt.name());
        let value = join_value(case.mode, jt);
        let j = b
            .add_step(
                &name,
                &[StreamRef::main(left), StreamRef::main(right)],
                "join",
                &value,
                Some(parallelism),
            )
            .map_err(|e| format!("join step {value}: {e:?}"))?;
        check_schema(
            &b.schema_of(&StreamRef::main(j)).expect("join schema"),
            case.mode,
            jt,
        )?;
        collect(
            &mut b,
            &format!("out_{}", jt.name()),
            &StreamRef::main(j),
            jt.name(),
        )?;
        for side in ["late_left", "late_right"] {
            let s = b
                .stream(&format!("{name}.{side}"))
                .map_err(|e| format!("{name}.{side}: {e:?}"))?;
            collect(
                &mut b,
                &format!("{side}_{}", jt.name()),
                &s,
                &format!("{}.{side}", jt.name()),
            )?;
        }
    }
    let graph = b.build().map_err(|e| format!("graph: {e:?}"))?;
    let summary =
        block_on(weir_engine::runtime::run(graph)).map_err(|e| format!("job failed: {e}"))?;
    let mut out = BTreeMap::new();
    for &jt in types {
        let name = format!("j_{}", jt.name());
        let late_metric = summary
            .nodes
            .iter()
            .find(|n| n.name == name)
            .map_or(0, |n| n.late_records);
        let main = take(&collected, jt.name());
        for batch in &main {
            check_schema(&batch.schema(), case.mode, jt)?;
        }
        out.insert(
            jt,
            Emitted {
                rows: rows_of(&main, case.mode.is_window())?,
                late_left: recs_of(&take(&collected, &format!("{}.late_left", jt.name())))?,
                late_right: recs_of(&take(&collected, &format!("{}.late_right", jt.name())))?,
                late_metric,
            },
        );
    }
    Ok(out)
}

/// Compares the runtime at parallelism 1 and 4 with the oracle, every join type.
fn check_case(case: &Case) -> Result<(), TestCaseError> {
    for (name, input) in [("left", &case.left), ("right", &case.right)] {
        if let Some((batch, r)) = input.first_late() {
            return Err(TestCaseError::fail(format!(
                "generator bug: {name} record {r} in batch {batch} may be late\n{case}"
            )));
        }
    }
    let (left, right) = (case.left.records(), case.right.records());
    for p in [1, 4] {
        let emitted = run_engine(case, &ALL_TYPES, p)
            .map_err(|e| TestCaseError::fail(format!("parallelism {p}: {e}\ninput: {case}")))?;
        let mut report = String::new();
        for jt in ALL_TYPES {
            let exp = oracle(case.mode, jt, &left, &right);
            let act = emitted.get(&jt).expect("every type ran");
            if let Some(d) = diff_rows(&exp, &act.rows) {
                let _ = write!(report, "{jt:?} join: {d}");
            }
            if !act.late_left.is_empty() || !act.late_right.is_empty() || act.late_metric != 0 {
                let show = |v: &[Rec]| v.iter().map(Rec::to_string).collect::<Vec<_>>().join(" ");
                let _ = writeln!(
                    report,
                    "{jt:?} join: rows sent to the late outputs although none is late: \
                     late_left [{}], late_right [{}], late_records {}",
                    show(&act.late_left),
                    show(&act.late_right),
                    act.late_metric
                );
            }
        }
        if !report.is_empty() {
            return Err(TestCaseError::fail(format!(
                "join at parallelism {p} differs from the oracle:\n{report}input: {case}"
            )));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------

/// Keys present on both sides (four that hash to four different subtasks at
/// parallelism 4); each side also has a key of its own and null keys.
const KEYS: [&str; 4] = ["a", "b", "f", "g"];
const LEFT_ONLY: &str = "lonely_l";
const RIGHT_ONLY: &str = "lonely_r";
/// Base records fall in `[origin, origin + span)`, `span` at most this.
const SPAN: i64 = 12_000;

/// One generated record before the disorder is applied.
#[derive(Clone, Debug)]
struct GenRec {
    /// 0..4: `KEYS`, 4: the side's own key, 5: null.
    key: u8,
    at: i64,
    /// Its delay, in thousandths of the source's out-of-orderness.
    delay: u16,
    /// Repeated, the copy with this delay.
    dup: Option<u16>,
    /// Delayed by the full out-of-orderness, behind a record `ooo` later that ends the
    /// batch before it: exactly at the disorder bound.
    tight: bool,
}

/// A record placed just inside or just outside the interval (or window, or session)
/// of a record of the other side.
#[derive(Clone, Debug)]
struct Probe {
    /// On the right, relative to a left record (else on the left, relative to a right
    /// record).
    on_right: bool,
    anchor: usize,
    /// Which of the four boundary offsets.
    which: usize,
    delay: u16,
}

fn delay() -> impl Strategy<Value = u16> {
    prop_oneof![2 => Just(0u16), 2 => Just(1000u16), 6 => 0u16..=1000]
}

fn gen_rec() -> impl Strategy<Value = GenRec> {
    (
        prop_oneof![16 => 0u8..4, 2 => Just(4u8), 1 => Just(5u8)],
        0..SPAN,
        delay(),
        proptest::option::weighted(0.15, delay()),
        proptest::bool::weighted(0.08),
    )
        .prop_map(|(key, at, delay, dup, tight)| GenRec {
            key,
            at,
            delay,
            dup,
            tight,
        })
}

fn probe() -> impl Strategy<Value = Probe> {
    (any::<bool>(), 0usize..64, 0usize..4, delay()).prop_map(|(on_right, anchor, which, delay)| {
        Probe {
            on_right,
            anchor,
            which,
            delay,
        }
    })
}

/// The four offsets of a probe from its anchor at `a`: just outside, just inside, just
/// inside, just outside.
fn probe_times(mode: Mode, probe_on_right: bool, a: i64) -> [i64; 4] {
    match mode {
        // l matches r when l - r ∈ [lower, upper].
        Mode::Interval { lower, upper } if !probe_on_right => {
            [a + lower - 1, a + lower, a + upper, a + upper + 1]
        }
        Mode::Interval { lower, upper } => [a - upper - 1, a - upper, a - lower, a - lower + 1],
        Mode::Tumbling { size } | Mode::Sliding { size, .. } => {
            let slide = match mode {
                Mode::Sliding { slide, .. } => slide,
                _ => size,
            };
            let s = a - a.rem_euclid(slide);
            [s - 1, s, s + size - 1, s + size]
        }
        Mode::Session { gap } => [a - gap, a - gap + 1, a + gap - 1, a + gap],
    }
}

/// Everything a case is made of, before it is turned into batches.
#[derive(Clone, Debug)]
struct Gen {
    mode: Mode,
    origin: i64,
    /// Records are spread over this many ms (few: dense, many pairs and ties).
    span: i64,
    ooo: [i64; 2],
    recs: [Vec<GenRec>; 2],
    probes: Vec<Probe>,
    /// Per side: a batch ends after record `i` when `breaks[i % len] == 0` (after
    /// every record when empty).
    breaks: [Vec<u8>; 2],
}

/// A record on its way into a batch.
struct Item {
    rec: Rec,
    /// Arrives at `ts + delay`, `0 <= delay <= ooo`.
    delay: i64,
    /// Ends its batch.
    cut_after: bool,
}

fn item(rec: Rec, delay: i64) -> Item {
    Item {
        rec,
        delay,
        cut_after: false,
    }
}

/// Puts the records in arrival order `ts + delay`, the later event time first on a tie
/// (as no delay exceeds `ooo`, no record then trails one before it by more than `ooo`,
/// so none is late), and cuts batches.
fn arrange(mut items: Vec<Item>, breaks: &[u8]) -> Vec<Vec<Rec>> {
    items.sort_by_key(|x| {
        let t = ts_of(&x.rec);
        (t + x.delay, std::cmp::Reverse(t))
    });
    let mut batches = Vec::new();
    let mut cur = Vec::new();
    for (i, x) in items.into_iter().enumerate() {
        cur.push(x.rec);
        if x.cut_after || breaks.is_empty() || breaks[i % breaks.len()] == 0 {
            batches.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        batches.push(cur);
    }
    batches
}

fn build_case(g: &Gen) -> Case {
    let mut sides: [Vec<Item>; 2] = [Vec::new(), Vec::new()];
    let delay_ms = |side: usize, d: u16| g.ooo[side] * i64::from(d) / 1000;
    let mut next_v = [100i64, 500i64];
    for side in 0..2 {
        for gr in &g.recs[side] {
            let key = match gr.key {
                k @ 0..=3 => Some(KEYS[usize::from(k)].to_string()),
                4 => Some(if side == 0 { LEFT_ONLY } else { RIGHT_ONLY }.to_string()),
                _ => None,
            };
            let t = g.origin + gr.at % g.span;
            let r = Rec {
                key,
                ts: Some(t),
                v: next_v[side],
            };
            next_v[side] += 1;
            if let Some(d) = gr.dup {
                sides[side].push(item(r.clone(), delay_ms(side, d)));
            }
            if gr.tight && g.ooo[side] > 0 {
                // Arrives with `r` but first, and ends the batch: `r` then trails the
                // largest earlier time by exactly `ooo`.
                let ahead = Rec {
                    key: r.key.clone(),
                    ts: Some(t + g.ooo[side]),
                    v: next_v[side],
                };
                next_v[side] += 1;
                sides[side].push(Item {
                    rec: ahead,
                    delay: 0,
                    cut_after: true,
                });
                sides[side].push(item(r, g.ooo[side]));
            } else {
                sides[side].push(item(r, delay_ms(side, gr.delay)));
            }
        }
    }
    // Probes go relative to the other side's base records (the first ones generated).
    let base: [Vec<Rec>; 2] = [
        sides[0].iter().map(|x| x.rec.clone()).collect(),
        sides[1].iter().map(|x| x.rec.clone()).collect(),
    ];
    for p in &g.probes {
        let (side, other) = if p.on_right { (1, 0) } else { (0, 1) };
        if base[other].is_empty() {
            continue;
        }
        let a = &base[other][p.anchor % base[other].len()];
        let t = probe_times(g.mode, p.on_right, ts_of(a))[p.which];
        let r = Rec {
            key: a.key.clone(),
            ts: Some(t),
            v: next_v[side],
        };
        next_v[side] += 1;
        sides[side].push(item(r, delay_ms(side, p.delay)));
    }
    let [l, r] = sides;
    Case {
        mode: g.mode,
        left: Input {
            ooo: g.ooo[0],
            batches: arrange(l, &g.breaks[0]),
        },
        right: Input {
            ooo: g.ooo[1],
            batches: arrange(r, &g.breaks[1]),
        },
    }
}

fn ooo() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(0i64),
        Just(300),
        Just(1_000),
        Just(4_000),
        // Larger than the whole span: any order at all.
        Just(60_000)
    ]
}

fn breaks() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(0u8..4, 0..24)
}

fn case_strategy(mode: impl Strategy<Value = Mode>) -> impl Strategy<Value = Case> {
    (
        mode,
        prop_oneof![Just(0i64), Just(-6_000), Just(1_700_000_000_123)],
        prop_oneof![3 => Just(SPAN), 1 => Just(2_000i64)],
        (ooo(), ooo()),
        proptest::collection::vec(gen_rec(), 0..20),
        proptest::collection::vec(gen_rec(), 0..20),
        proptest::collection::vec(probe(), 0..8),
        (breaks(), breaks()),
    )
        .prop_map(|(mode, origin, span, (lo, ro), l, r, probes, (lb, rb))| {
            build_case(&Gen {
                mode,
                origin,
                span,
                ooo: [lo, ro],
                recs: [l, r],
                probes,
                breaks: [lb, rb],
            })
        })
}

fn interval() -> impl Strategy<Value = Mode> {
    prop_oneof![
        Just((-5_000i64, 0i64)),
        Just((-2_000, 3_000)),
        Just((1_000, 4_000)),
        Just((0, 0)),
        Just((-3_000, -1_000)),
    ]
    .prop_map(|(lower, upper)| Mode::Interval { lower, upper })
}

fn tumbling() -> impl Strategy<Value = Mode> {
    prop_oneof![Just(1_000i64), Just(2_500), Just(4_000)].prop_map(|size| Mode::Tumbling { size })
}

fn sliding() -> impl Strategy<Value = Mode> {
    prop_oneof![
        Just((2_000i64, 1_000i64)),
        Just((3_000, 1_000)),
        Just((4_000, 2_000)),
        Just((1_500, 1_500)),
    ]
    .prop_map(|(size, slide)| Mode::Sliding { size, slide })
}

fn session() -> impl Strategy<Value = Mode> {
    prop_oneof![Just(300i64), Just(800), Just(2_000)].prop_map(|gap| Mode::Session { gap })
}

/// 64 cases per property, each two jobs (the four join types at parallelism 1, then
/// at 4; about 40 ms a case in a debug build); `JOINS_ORACLE_CASES=3000` for a longer
/// hunt.
fn config() -> ProptestConfig {
    let cases = std::env::var("JOINS_ORACLE_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(64);
    ProptestConfig {
        cases,
        max_shrink_iters: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn interval_joins_match_the_oracle(case in case_strategy(interval())) {
        check_case(&case)?;
    }

    #[test]
    fn tumbling_window_joins_match_the_oracle(case in case_strategy(tumbling())) {
        check_case(&case)?;
    }

    #[test]
    fn sliding_window_joins_match_the_oracle(case in case_strategy(sliding())) {
        check_case(&case)?;
    }

    #[test]
    fn session_window_joins_match_the_oracle(case in case_strategy(session())) {
        check_case(&case)?;
    }
}

/// The generators reach what the properties are about: over 200 sampled cases of each
/// mode, inputs out of order, disorder exactly at the bound, repeated records, null
/// keys, matches exactly at a boundary and misses just past it, unmatched rows, and no
/// late record.
#[test]
fn generators_cover_boundaries_disorder_and_duplicates() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let modes: [(&str, BoxedStrategy<Mode>); 4] = [
        ("interval", interval().boxed()),
        ("tumbling", tumbling().boxed()),
        ("sliding", sliding().boxed()),
        ("session", session().boxed()),
    ];
    for (name, mode) in modes {
        let strategy = case_strategy(mode);
        let (mut disorder, mut tight, mut dups, mut nulls, mut edge_in, mut edge_out) =
            (0, 0, 0, 0, 0, 0);
        let (mut unmatched, mut pairs) = (0, 0);
        for _ in 0..200 {
            let case = strategy
                .new_tree(&mut runner)
                .expect("sample a case")
                .current();
            for input in [&case.left, &case.right] {
                assert!(
                    input.first_late().is_none(),
                    "{name}: late record in\n{case}"
                );
                let mut max: Option<i64> = None;
                let (mut d, mut t) = (false, false);
                for b in &input.batches {
                    for r in b {
                        let ts = ts_of(r);
                        d |= max.is_some_and(|m| ts < m);
                        t |= input.ooo > 0 && max.is_some_and(|m| ts == m - input.ooo);
                    }
                    max = b.iter().filter_map(|r| r.ts).chain(max).max();
                }
                disorder += usize::from(d);
                tight += usize::from(t);
            }
            let (left, right) = (case.left.records(), case.right.records());
            let mut all: Vec<&Rec> = left.iter().chain(&right).collect();
            all.sort();
            let n = all.len();
            all.dedup();
            dups += usize::from(all.len() < n);
            nulls += usize::from(left.iter().chain(&right).any(|r| r.key.is_none()));
            if let Mode::Interval { lower, upper } = case.mode {
                let diffs: Vec<i64> = left
                    .iter()
                    .flat_map(|l| {
                        right
                            .iter()
                            .filter(move |r| r.key.is_some() && r.key == l.key)
                            .map(move |r| ts_of(l) - ts_of(r))
                    })
                    .collect();
                edge_in += usize::from(diffs.contains(&lower) && diffs.contains(&upper));
                edge_out +=
                    usize::from(diffs.contains(&(lower - 1)) || diffs.contains(&(upper + 1)));
            } else {
                edge_in += 1;
                edge_out += 1;
            }
            let full = oracle(case.mode, Jt::Full, &left, &right);
            unmatched += usize::from(full.iter().any(|r| r.v.is_none() || r.right_v.is_none()));
            pairs += usize::from(
                full.iter()
                    .filter(|r| r.v.is_some() && r.right_v.is_some())
                    .count()
                    >= 5,
            );
        }
        eprintln!(
            "{name}: of 200 cases, inputs out of order {disorder}/400, at the disorder bound \
             {tight}/400; {dups} with repeated records, {nulls} with null keys, {edge_in} \
             matching at both interval bounds, {edge_out} just outside, {unmatched} with \
             unmatched rows, {pairs} with 5+ pairs"
        );
        assert!(
            disorder >= 120
                && tight >= 20
                && dups >= 80
                && nulls >= 40
                && edge_in >= 20
                && edge_out >= 60
                && unmatched >= 100
                && pairs >= 80,
            "{name}: the generator misses paths"
        );
    }
}

/// The join subtask (of 4) that each key goes to over the hash edge.
fn subtasks_of(keys: &[&str]) -> Vec<usize> {
    let batch = to_batch(&keys.iter().map(|k| rec(k, 0, 0)).collect::<Vec<_>>());
    weir_engine::state::key_groups_for_batch(&batch, &[0], 128)
        .expect("key groups")
        .into_iter()
        .map(|g| weir_engine::state::subtask_for_key_group(g, 128, 4))
        .collect()
}

#[test]
fn generated_keys_reach_every_join_subtask() {
    let mut seen = subtasks_of(&KEYS);
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen, vec![0, 1, 2, 3], "keys {KEYS:?} at parallelism 4");
}

// ---------------------------------------------------------------------------------------
// Hand-written cases: exact outputs, boundaries
// ---------------------------------------------------------------------------------------

/// A one-batch-per-side case (nothing can be late).
fn single(mode: Mode, left: Vec<Rec>, right: Vec<Rec>) -> Case {
    Case {
        mode,
        left: Input {
            ooo: 0,
            batches: vec![left],
        },
        right: Input {
            ooo: 0,
            batches: vec![right],
        },
    }
}

fn lrow(k: Option<&str>, ts: i64, v: i64, window: Option<(i64, i64)>) -> Row {
    Row {
        k: k.map(str::to_string),
        ts: Some(ts),
        v: Some(v),
        right_ts: None,
        right_v: None,
        window,
    }
}

fn rrow(k: Option<&str>, ts: i64, v: i64, window: Option<(i64, i64)>) -> Row {
    Row {
        k: k.map(str::to_string),
        ts: None,
        v: None,
        right_ts: Some(ts),
        right_v: Some(v),
        window,
    }
}

fn prow(k: &str, (ts, v): (i64, i64), (rts, rv): (i64, i64), window: Option<(i64, i64)>) -> Row {
    Row {
        k: Some(k.to_string()),
        ts: Some(ts),
        v: Some(v),
        right_ts: Some(rts),
        right_v: Some(rv),
        window,
    }
}

/// Expected outputs by type from matched pairs and unmatched rows of each side.
fn by_type(pairs: &[Row], left_alone: &[Row], right_alone: &[Row]) -> BTreeMap<Jt, Vec<Row>> {
    ALL_TYPES
        .iter()
        .map(|&jt| {
            let mut v = pairs.to_vec();
            if jt.keeps(0) {
                v.extend_from_slice(left_alone);
            }
            if jt.keeps(1) {
                v.extend_from_slice(right_alone);
            }
            (jt, v)
        })
        .collect()
}

/// The oracle and the runtime (parallelism 1 and 4) both give exactly `expected`.
fn assert_exact(case: &Case, expected: &BTreeMap<Jt, Vec<Row>>) {
    let (left, right) = (case.left.records(), case.right.records());
    for (jt, want) in expected {
        if let Some(d) = diff_rows(want, &oracle(case.mode, *jt, &left, &right)) {
            panic!("{jt:?}: the oracle (as `unexpected`) differs from the hand computation:\n{d}{case}");
        }
    }
    for p in [1, 4] {
        let emitted = run_engine(case, &ALL_TYPES, p).unwrap_or_else(|e| panic!("p{p}: {e}"));
        let mut report = String::new();
        for (jt, want) in expected {
            let act = &emitted[jt];
            if let Some(d) = diff_rows(want, &act.rows) {
                let _ = write!(report, "{jt:?} join: {d}");
            }
            if !act.late_left.is_empty() || !act.late_right.is_empty() || act.late_metric != 0 {
                let _ = writeln!(report, "{jt:?} join: late rows {act:?}");
            }
        }
        assert!(
            report.is_empty(),
            "parallelism {p} differs from the hand computation:\n{report}input: {case}"
        );
    }
}

/// `-2s..+3s` around a right row at 10 000: left rows exactly at both bounds match,
/// one ms past either bound do not; a key only on the left, a key only on the right
/// and null keys (on both sides, at the same time) never match.
#[test]
fn interval_bounds_by_hand() {
    let case = single(
        Mode::Interval {
            lower: -2_000,
            upper: 3_000,
        },
        vec![
            rec("a", 8_000, 11),
            rec("a", 7_999, 12),
            rec("a", 13_000, 13),
            rec("a", 13_001, 14),
            rec("b", 10_000, 15),
            null_key(10_000, 16),
        ],
        vec![rec("a", 10_000, 1), rec("c", 9_000, 2), null_key(10_000, 3)],
    );
    let expected = by_type(
        &[
            prow("a", (8_000, 11), (10_000, 1), None),
            prow("a", (13_000, 13), (10_000, 1), None),
        ],
        &[
            lrow(Some("a"), 7_999, 12, None),
            lrow(Some("a"), 13_001, 14, None),
            lrow(Some("b"), 10_000, 15, None),
            lrow(None, 10_000, 16, None),
        ],
        &[rrow(Some("c"), 9_000, 2, None), rrow(None, 10_000, 3, None)],
    );
    assert_exact(&case, &expected);
}

/// For several `(lower, upper)`, negative, zero and positive, with repeated records:
/// left rows at `r + lower` and `r + upper` match (twice each, being repeated; at
/// `(0, 0)` both are at `r`), those at `r + lower - 1` and `r + upper + 1` do not.
#[test]
fn interval_bounds_for_several_intervals() {
    for (lower, upper) in [
        (-5_000, 0),
        (-2_000, 3_000),
        (1_000, 4_000),
        (0, 0),
        (-3_000, -1_000),
    ] {
        let r = 20_000;
        let mode = Mode::Interval { lower, upper };
        let inside = [(r + lower, 1), (r + upper, 2)];
        let outside = [(r + lower - 1, 3), (r + upper + 1, 4)];
        let left: Vec<Rec> = inside
            .iter()
            .chain(&outside)
            .flat_map(|&(t, v)| [rec("a", t, v), rec("a", t, v)])
            .collect();
        // A second right row far away and a repeated one: pairs multiply.
        let right = vec![
            rec("a", r, 100),
            rec("a", r, 100),
            rec("a", r + 60_000, 101),
        ];
        let mut pairs = Vec::new();
        for &(t, v) in &inside {
            for _ in 0..4 {
                pairs.push(prow("a", (t, v), (r, 100), None));
            }
        }
        let left_alone: Vec<Row> = outside
            .iter()
            .flat_map(|&(t, v)| [lrow(Some("a"), t, v, None), lrow(Some("a"), t, v, None)])
            .collect();
        let expected = by_type(
            &pairs,
            &left_alone,
            &[rrow(Some("a"), r + 60_000, 101, None)],
        );
        assert_exact(&single(mode, left, right), &expected);
    }
}

/// Tumbling 1s: `[0, 1000)` and `[1000, 2000)` split at 999/1000; a repeated left row
/// pairs twice; a right row alone in `[2000, 3000)`; a left row alone in its window
/// although a right row of its key is 1 ms away in the next one.
#[test]
fn tumbling_by_hand() {
    let w0 = Some((0, 1_000));
    let w1 = Some((1_000, 2_000));
    let w2 = Some((2_000, 3_000));
    let w4 = Some((4_000, 5_000));
    let case = single(
        Mode::Tumbling { size: 1_000 },
        vec![
            rec("a", 999, 11),
            rec("a", 1_000, 12),
            rec("a", 1_000, 12),
            rec("a", 4_999, 13),
            null_key(0, 14),
        ],
        vec![
            rec("a", 0, 1),
            rec("a", 1_999, 2),
            rec("a", 2_000, 3),
            rec("a", 5_000, 4),
        ],
    );
    let expected = by_type(
        &[
            prow("a", (999, 11), (0, 1), w0),
            prow("a", (1_000, 12), (1_999, 2), w1),
            prow("a", (1_000, 12), (1_999, 2), w1),
        ],
        &[lrow(Some("a"), 4_999, 13, w4), lrow(None, 0, 14, w0)],
        &[
            rrow(Some("a"), 2_000, 3, w2),
            rrow(Some("a"), 5_000, 4, Some((5_000, 6_000))),
        ],
    );
    assert_exact(&case, &expected);
}

/// Sliding 2s every 1s: a row is in two windows, a pair that shares two windows is
/// emitted twice, and a row matched in one window is alone in the other.
#[test]
fn sliding_by_hand() {
    let case = single(
        Mode::Sliding {
            size: 2_000,
            slide: 1_000,
        },
        // 1500 ∈ [0, 2000), [1000, 3000); 3000 ∈ [2000, 4000), [3000, 5000)
        vec![rec("a", 1_500, 11), rec("a", 3_000, 12)],
        // 500 ∈ [-1000, 1000), [0, 2000); 1999 ∈ [0, 2000), [1000, 3000);
        // 2999 ∈ [1000, 3000), [2000, 4000)
        vec![rec("a", 500, 1), rec("a", 1_999, 2), rec("a", 2_999, 3)],
    );
    let expected = by_type(
        &[
            prow("a", (1_500, 11), (500, 1), Some((0, 2_000))),
            prow("a", (1_500, 11), (1_999, 2), Some((0, 2_000))),
            prow("a", (1_500, 11), (1_999, 2), Some((1_000, 3_000))),
            prow("a", (1_500, 11), (2_999, 3), Some((1_000, 3_000))),
            prow("a", (3_000, 12), (2_999, 3), Some((2_000, 4_000))),
        ],
        &[lrow(Some("a"), 3_000, 12, Some((3_000, 5_000)))],
        &[rrow(Some("a"), 500, 1, Some((-1_000, 1_000)))],
    );
    assert_exact(&case, &expected);
}

/// Sessions with gap 1s over both sides: 999 apart share a session, exactly 1000 apart
/// do not; a right row bridges two left rows 1.5s apart into one session; a key with
/// rows on one side only is a session alone.
#[test]
fn sessions_by_hand() {
    let case = single(
        Mode::Session { gap: 1_000 },
        vec![
            rec("a", 0, 11),
            rec("a", 1_999, 12),
            rec("a", 5_000, 13),
            rec("a", 6_500, 14),
            rec("b", 0, 15),
        ],
        vec![
            rec("a", 999, 1),
            rec("a", 2_998, 2),
            rec("a", 5_800, 3),
            rec("c", 100, 4),
            rec("c", 1_099, 5),
        ],
    );
    let expected = by_type(
        &[
            // [0, 999] and [1999, 2998]: 1999 - 999 = gap, not closer than gap.
            prow("a", (0, 11), (999, 1), Some((0, 1_999))),
            prow("a", (1_999, 12), (2_998, 2), Some((1_999, 3_998))),
            // 5000, 5800, 6500: neighbours 800 and 700 apart.
            prow("a", (5_000, 13), (5_800, 3), Some((5_000, 7_500))),
            prow("a", (6_500, 14), (5_800, 3), Some((5_000, 7_500))),
        ],
        &[lrow(Some("b"), 0, 15, Some((0, 1_000)))],
        &[
            rrow(Some("c"), 100, 4, Some((100, 2_099))),
            rrow(Some("c"), 1_099, 5, Some((100, 2_099))),
        ],
    );
    assert_exact(&case, &expected);
}

/// Out of order across batches, with each side's own out-of-orderness: the left
/// trails by up to 3s (exactly 3s once), the right arrives in order. Nothing is late
/// and the result is the in-order one.
#[test]
fn own_out_of_orderness_per_side() {
    let mode = Mode::Interval {
        lower: -1_000,
        upper: 1_000,
    };
    let case = Case {
        mode,
        left: Input {
            ooo: 3_000,
            batches: vec![
                vec![rec("a", 10_000, 11)],
                // watermark 6999: 7000 is exactly 3s behind 10 000
                vec![rec("a", 7_000, 12), rec("a", 9_000, 13)],
                vec![rec("a", 14_000, 14)],
                // watermark 10 999
                vec![rec("a", 11_000, 15)],
            ],
        },
        right: Input {
            ooo: 0,
            batches: vec![
                vec![rec("a", 6_000, 1)],
                vec![rec("a", 8_000, 2)],
                vec![rec("a", 10_500, 3)],
                vec![rec("a", 14_500, 4)],
            ],
        },
    };
    let expected = by_type(
        &[
            prow("a", (7_000, 12), (6_000, 1), None),
            prow("a", (7_000, 12), (8_000, 2), None),
            prow("a", (9_000, 13), (8_000, 2), None),
            prow("a", (10_000, 11), (10_500, 3), None),
            prow("a", (11_000, 15), (10_500, 3), None),
            prow("a", (14_000, 14), (14_500, 4), None),
        ],
        &[],
        &[],
    );
    assert!(case.left.first_late().is_none() && case.right.first_late().is_none());
    assert_exact(&case, &expected);
}

/// A row without an event time is late (docs/JOINS.md "Late rows"): it goes to its
/// side's late output, counted in `late_records`, whatever the watermark.
#[test]
fn null_event_time_goes_to_the_late_output() {
    let no_ts = |v| Rec {
        key: Some("a".into()),
        ts: None,
        v,
    };
    let case = single(
        Mode::Tumbling { size: 1_000 },
        vec![rec("a", 100, 11), no_ts(12)],
        vec![rec("a", 200, 1), no_ts(2), no_ts(3)],
    );
    let emitted = run_engine(&case, &[Jt::Inner, Jt::Full], 4).expect("job");
    for (jt, e) in &emitted {
        assert_eq!(
            e.rows,
            vec![prow("a", (100, 11), (200, 1), Some((0, 1_000)))],
            "{jt:?}"
        );
        assert_eq!(e.late_left, vec![no_ts(12)], "{jt:?} late_left");
        let mut lr = e.late_right.clone();
        lr.sort();
        assert_eq!(lr, vec![no_ts(2), no_ts(3)], "{jt:?} late_right");
        assert_eq!(e.late_metric, 3, "{jt:?} late_records");
    }
}

// ---------------------------------------------------------------------------------------
// Output schema (docs/JOINS.md "Output")
// ---------------------------------------------------------------------------------------

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, None)
}

fn schema(fields: &[(&str, DataType, bool)], time: &str) -> SchemaRef {
    let s = Schema::new(
        fields
            .iter()
            .map(|(n, t, null)| Field::new(*n, t.clone(), *null))
            .collect::<Vec<_>>(),
    );
    weir_engine::time::mark_event_time(&s, time)
}

/// (name, type, nullable) of each column and the event-time column.
type Shape = (Vec<(String, DataType, bool)>, Option<String>);

fn shape(s: &Schema) -> Shape {
    (
        s.fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone(), f.is_nullable()))
            .collect(),
        weir_engine::time::event_time_column(s).map(|i| s.field(i).name().clone()),
    )
}

fn plan(value: serde_json::Value, l: &SchemaRef, r: &SchemaRef) -> Result<Shape, String> {
    weir_operators::JoinStep::plan(&value, l, r)
        .map(|p| shape(p.schema()))
        .map_err(|e| format!("{e:?}"))
}

fn cols(v: &[(&str, DataType, bool)]) -> Vec<(String, DataType, bool)> {
    v.iter()
        .map(|(n, t, null)| ((*n).to_string(), t.clone(), *null))
        .collect()
}

#[test]
fn output_schema_follows_the_page() {
    let s = DataType::Utf8;
    let i = DataType::Int64;
    let t = ts_type();
    // The key in the middle of the left, a clashing `v`, and a right-only column.
    let left = schema(
        &[
            ("v", i.clone(), false),
            ("k", s.clone(), false),
            ("ts", t.clone(), false),
        ],
        "ts",
    );
    let right = schema(
        &[
            ("k", s.clone(), false),
            ("ts", t.clone(), false),
            ("v", i.clone(), false),
            ("w", i.clone(), false),
        ],
        "ts",
    );
    let interval = json!({"lower": "-5s", "upper": "0s"});

    // Same-name key: once, at the left's position; clashes get `right_`; the side that
    // may be missing is nullable; the event time is the left's (the right's in a right
    // join).
    for (jt, lnull, rnull, time) in [
        ("inner", false, false, "ts"),
        ("left", false, true, "ts"),
        ("right", true, false, "right_ts"),
        ("full", true, true, "ts"),
    ] {
        let (fields, et) = plan(
            json!({"type": jt, "on": ["k"], "interval": interval}),
            &left,
            &right,
        )
        .expect(jt);
        let names: Vec<&str> = fields.iter().map(|f| f.0.as_str()).collect();
        assert_eq!(names, ["v", "k", "ts", "right_ts", "right_v", "w"], "{jt}");
        let null_of = |n: &str| fields.iter().find(|f| f.0 == n).expect(n).2;
        for n in ["v", "ts"] {
            assert_eq!(null_of(n), lnull, "{jt}: left column {n} nullable");
        }
        for n in ["right_ts", "right_v", "w"] {
            assert_eq!(null_of(n), rnull, "{jt}: right column {n} nullable");
        }
        assert_eq!(et.as_deref(), Some(time), "{jt}: event-time column");
        let types: Vec<&DataType> = fields.iter().map(|f| &f.1).collect();
        assert_eq!(types, [&i, &s, &t, &t, &i, &i], "{jt}: types");
    }

    // Keys of different names: both columns stay.
    let right2 = schema(
        &[
            ("kk", s.clone(), false),
            ("ts", t.clone(), false),
            ("w", i.clone(), false),
        ],
        "ts",
    );
    let (fields, _) = plan(
        json!({"type": "full", "on": {"left": ["k"], "right": ["kk"]}, "interval": interval}),
        &left,
        &right2,
    )
    .expect("different key names");
    assert_eq!(
        fields,
        cols(&[
            ("v", i.clone(), true),
            ("k", s.clone(), true),
            ("ts", t.clone(), true),
            ("kk", s.clone(), true),
            ("right_ts", t.clone(), true),
            ("w", i.clone(), true),
        ])
    );

    // Window joins append window_start and window_end (not null), window_end being the
    // event time.
    for w in [
        json!({"tumbling": "1m"}),
        json!({"sliding": {"size": "10m", "slide": "1m"}}),
        json!({"session": "30m"}),
    ] {
        let (fields, et) = plan(
            json!({"type": "full", "on": ["k"], "window": w}),
            &left,
            &right,
        )
        .expect("window join");
        let n = fields.len();
        assert_eq!(
            fields[n - 2..].to_vec(),
            cols(&[
                ("window_start", t.clone(), false),
                ("window_end", t.clone(), false)
            ]),
            "{w}"
        );
        assert_eq!(et.as_deref(), Some("window_end"), "{w}");
        assert_eq!(n, 8, "{w}: {fields:?}");
    }

    // `right_v` taken too: an error, as is an input that has `window_start` already.
    let taken = schema(
        &[
            ("k", s.clone(), false),
            ("ts", t.clone(), false),
            ("v", i.clone(), false),
            ("right_v", i.clone(), false),
        ],
        "ts",
    );
    assert!(
        plan(json!({"on": ["k"], "interval": interval}), &taken, &right).is_err(),
        "right_v clashes with a left column"
    );
    let windowed = schema(
        &[
            ("k", s.clone(), false),
            ("ts", t.clone(), false),
            ("window_start", t.clone(), false),
        ],
        "ts",
    );
    assert!(
        plan(
            json!({"on": ["k"], "window": {"tumbling": "1m"}}),
            &windowed,
            &right
        )
        .is_err(),
        "window_start is taken"
    );
    assert!(
        plan(
            json!({"on": ["k"], "interval": interval}),
            &windowed,
            &right
        )
        .is_ok(),
        "an interval join adds no window columns"
    );
}

/// A source type with another name around a [`ScriptedFactory`], so that a job can have
/// scripted sources of two schemas.
struct Renamed(&'static str, ScriptedFactory);

impl SourceFactory for Renamed {
    fn name(&self) -> &'static str {
        self.0
    }
    fn options_schema(&self) -> serde_json::Value {
        self.1.options_schema()
    }
    fn build(
        &self,
        ctx: &BuildContext,
        name: &str,
        options: &serde_json::Value,
        schema: Option<SchemaRef>,
    ) -> Result<SourceBuild, FieldError> {
        self.1.build(ctx, name, options, schema)
    }
}

/// Through the runtime, keys of different names (`on: {left: [k], right: [kk]}`) in a
/// full window join: both key columns are in the output, and the missing side's
/// (key included) is null.
#[test]
fn differently_named_keys_through_the_runtime() {
    let lschema = schema(
        &[
            ("k", DataType::Utf8, false),
            ("ts", ts_type(), false),
            ("v", DataType::Int64, false),
        ],
        "ts",
    );
    let rschema = schema(
        &[
            ("kk", DataType::Utf8, false),
            ("ts", ts_type(), false),
            ("w", DataType::Int64, false),
        ],
        "ts",
    );
    let batch = |s: &SchemaRef, k: &[&str], ts: &[i64], v: &[i64]| {
        RecordBatch::try_new(
            s.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(k)),
                Arc::new(TimestampMillisecondArray::from(ts.to_vec())),
                Arc::new(Int64Array::from(v.to_vec())),
            ],
        )
        .expect("batch")
    };
    let collected: Collected = Arc::new(Mutex::new(BTreeMap::new()));
    let mut reg = weir::default_registry();
    reg.add_sink(CollectFactory::into(collected.clone()));
    reg.add_source(Renamed(
        "scripted_left",
        ScriptedFactory::batches(
            lschema.clone(),
            [batch(&lschema, &["a", "c"], &[10, 20], &[1, 3])],
        ),
    ));
    reg.add_source(Renamed(
        "scripted_right",
        ScriptedFactory::batches(
            rschema.clone(),
            [batch(&rschema, &["a", "b"], &[30, 40], &[7, 8])],
        ),
    ));
    let mut b = GraphBuilder::new("joins-oracle-keys", Arc::new(reg), ".".into());
    let l = add_source(&mut b, "left", "scripted_left", 0, 0).expect("left");
    let r = add_source(&mut b, "right", "scripted_right", 0, 0).expect("right");
    let j = b
        .add_step(
            "j",
            &[StreamRef::main(l), StreamRef::main(r)],
            "join",
            &json!({"type": "full", "on": {"left": ["k"], "right": ["kk"]}, "window": {"tumbling": "100ms"}}),
            Some(4),
        )
        .expect("join");
    collect(&mut b, "out", &StreamRef::main(j), "main").expect("sink");
    block_on(weir_engine::runtime::run(b.build().expect("graph"))).expect("job");
    let out = take(&collected, "main");
    let mut rows: Vec<String> = Vec::new();
    for batch in &out {
        let schema = batch.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            [
                "k",
                "ts",
                "v",
                "kk",
                "right_ts",
                "w",
                "window_start",
                "window_end"
            ]
        );
        let c: Vec<Vec<String>> = names
            .iter()
            .map(|n| {
                let a = arrow::compute::cast(column(batch, n).expect("column"), &DataType::Utf8)
                    .expect("cast");
                a.as_string::<i32>()
                    .iter()
                    .map(|s| s.unwrap_or("null").to_string())
                    .collect()
            })
            .collect();
        for i in 0..batch.num_rows() {
            rows.push(
                c.iter()
                    .map(|col| col[i].clone())
                    .collect::<Vec<_>>()
                    .join(" "),
            );
        }
    }
    rows.sort();
    let ts = |ms: i64| {
        arrow::compute::cast(
            &(Arc::new(TimestampMillisecondArray::from(vec![ms])) as ArrayRef),
            &DataType::Utf8,
        )
        .expect("cast")
        .as_string::<i32>()
        .value(0)
        .to_string()
    };
    let mut want = vec![
        format!("a {} 1 a {} 7 {} {}", ts(10), ts(30), ts(0), ts(100)),
        format!("c {} 3 null null null {} {}", ts(20), ts(0), ts(100)),
        format!("null null null b {} 8 {} {}", ts(40), ts(0), ts(100)),
    ];
    want.sort();
    assert_eq!(rows, want);
}
