//! The `window` step against a brute-force oracle written from docs/WINDOWS.md.
//!
//! The oracle keeps the raw accepted records of every live window (per key and window
//! for tumbling/sliding, per key and session for sessions) and recomputes every
//! aggregate from them whenever a row is emitted; it has no accumulators, no timers and
//! no partial state, so it is small enough to be read against the page line by line.
//!
//! The harness runs the real runtime: a scripted source with parallelism 1 and
//! `event_time` on `ts` replays a fixed sequence of batches (the source task emits the
//! watermark `max_ts - max_out_of_orderness - 1` after each batch when it increases, and
//! `i64::MAX` at the end), the window step runs at parallelism 1 (chained) and 4 (hash
//! edge), and collecting sinks read its main output and its `late` side output. The
//! multisets of rows must equal the oracle's exactly (avg within a tolerance), and the
//! node's `late_records` counter must equal the number of late rows.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::json;
use weir_engine::graph::{GraphBuilder, NodeId, SourceDecl, StreamRef};
use weir_engine::registry::{BuildContext, Registry};
use weir_engine::time::EventTimeConfig;

use crate::common::{block_on, CollectFactory, Collected, ScriptedFactory};

// ---------------------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------------------

/// The window assigner, all times in ms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Tumbling { size: i64 },
    Sliding { size: i64, slide: i64 },
    Session { gap: i64 },
}

/// One input record: `(k, ts, v)`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Rec {
    key: String,
    ts: Option<i64>,
    v: Option<i64>,
}

fn rec(key: &str, ts: i64, v: Option<i64>) -> Rec {
    Rec {
        key: key.to_string(),
        ts: Some(ts),
        v,
    }
}

/// A whole job: the window, its options, and the batches the source emits in order.
#[derive(Clone, Debug)]
struct Case {
    kind: Kind,
    /// `allowed_lateness`, ms.
    lateness: i64,
    /// The source's `max_out_of_orderness`, ms.
    ooo: i64,
    /// `key: [k]`, else one global window per time range.
    keyed: bool,
    batches: Vec<Vec<Rec>>,
}

impl Case {
    fn records(&self) -> usize {
        self.batches.iter().map(Vec::len).sum()
    }
}

fn fmt_opt(v: Option<i64>) -> String {
    v.map_or_else(|| "null".to_string(), |x| x.to_string())
}

impl std::fmt::Display for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{:?}, allowed_lateness {}ms, max_out_of_orderness {}ms, keyed {}, {} records in {} batches:",
            self.kind,
            self.lateness,
            self.ooo,
            self.keyed,
            self.records(),
            self.batches.len()
        )?;
        let mut max: Option<i64> = None;
        let mut wm_shown = i64::MIN;
        for (i, b) in self.batches.iter().enumerate() {
            let recs: Vec<String> = b
                .iter()
                .map(|r| format!("{}@{}={}", r.key, fmt_opt(r.ts), fmt_opt(r.v)))
                .collect();
            max = b.iter().filter_map(|r| r.ts).chain(max).max();
            let wm = max.map(|m| m - self.ooo - 1);
            let note = match wm {
                Some(w) if w > wm_shown => {
                    wm_shown = w;
                    format!("  -> watermark {w}")
                }
                _ => String::new(),
            };
            writeln!(f, "  batch {i}: {}{note}", recs.join(" "))?;
        }
        write!(f, "  end -> watermark i64::MAX")
    }
}

// ---------------------------------------------------------------------------------------
// Rows
// ---------------------------------------------------------------------------------------

/// Every output column but `avg`, which is compared with a tolerance.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Exact {
    key: Option<String>,
    start: i64,
    end: i64,
    count: i64,
    count_v: i64,
    sum: Option<i64>,
    min: Option<i64>,
    max: Option<i64>,
    first: Option<i64>,
    last: Option<i64>,
    distinct: i64,
    is_update: bool,
}

/// One main-output row.
#[derive(Clone, Debug, PartialEq)]
struct Row {
    exact: Exact,
    avg: Option<f64>,
}

impl std::fmt::Display for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let e = &self.exact;
        write!(
            f,
            "{}[{}, {}) n={} nv={} sum={} min={} max={} avg={} first={} last={} distinct={} {}",
            e.key.as_ref().map(|k| format!("{k} ")).unwrap_or_default(),
            e.start,
            e.end,
            e.count,
            e.count_v,
            fmt_opt(e.sum),
            fmt_opt(e.min),
            fmt_opt(e.max),
            self.avg
                .map_or_else(|| "null".to_string(), |a| format!("{a:.4}")),
            fmt_opt(e.first),
            fmt_opt(e.last),
            e.distinct,
            if e.is_update { "UPDATE" } else { "fire" }
        )
    }
}

fn avg_close(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
        _ => false,
    }
}

/// `None` when `actual` is the same multiset as `expected`, else a readable diff.
fn diff_rows(expected: &[Row], actual: &[Row]) -> Option<String> {
    let mut pool: BTreeMap<&Exact, Vec<Option<f64>>> = BTreeMap::new();
    for r in expected {
        pool.entry(&r.exact).or_default().push(r.avg);
    }
    let mut unexpected = Vec::new();
    for r in actual {
        let hit = pool
            .get_mut(&r.exact)
            .and_then(|avgs| {
                avgs.iter()
                    .position(|a| avg_close(*a, r.avg))
                    .map(|i| avgs.swap_remove(i))
            })
            .is_some();
        if !hit {
            unexpected.push(r.clone());
        }
    }
    let mut missing: Vec<Row> = pool
        .into_iter()
        .flat_map(|(e, avgs)| {
            avgs.into_iter().map(move |avg| Row {
                exact: e.clone(),
                avg,
            })
        })
        .collect();
    if missing.is_empty() && unexpected.is_empty() {
        return None;
    }
    let order = |a: &Row, b: &Row| a.exact.cmp(&b.exact);
    missing.sort_by(order);
    unexpected.sort_by(order);
    let mut s = format!(
        "{} rows expected, {} emitted; {} missing, {} unexpected\n",
        expected.len(),
        actual.len(),
        missing.len(),
        unexpected.len()
    );
    for r in &missing {
        let _ = writeln!(s, "  missing:    {r}");
    }
    for r in &unexpected {
        let _ = writeln!(s, "  unexpected: {r}");
    }
    Some(s)
}

/// `None` when the late rows are the same multiset, else a readable diff.
fn diff_late(expected: &[Rec], actual: &[Rec]) -> Option<String> {
    let (mut e, mut a) = (expected.to_vec(), actual.to_vec());
    e.sort();
    a.sort();
    if e == a {
        return None;
    }
    let mut missing = Vec::new();
    let mut unexpected = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < e.len() || j < a.len() {
        match (e.get(i), a.get(j)) {
            (Some(x), Some(y)) if x == y => {
                i += 1;
                j += 1;
            }
            (Some(x), Some(y)) if x < y => {
                missing.push(x.clone());
                i += 1;
            }
            (Some(_), Some(y)) | (None, Some(y)) => {
                unexpected.push(y.clone());
                j += 1;
            }
            (Some(x), None) => {
                missing.push(x.clone());
                i += 1;
            }
            (None, None) => break,
        }
    }
    let show = |v: &[Rec]| {
        v.iter()
            .map(|r| format!("{}@{}={}", r.key, fmt_opt(r.ts), fmt_opt(r.v)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    Some(format!(
        "late rows: {} expected, {} emitted\n  missing:    {}\n  unexpected: {}\n",
        e.len(),
        a.len(),
        show(&missing),
        show(&unexpected)
    ))
}

// ---------------------------------------------------------------------------------------
// The oracle
// ---------------------------------------------------------------------------------------

/// An accepted record as stored by the oracle; `seq` is its arrival position.
#[derive(Clone, Debug)]
struct Stored {
    ts: i64,
    v: Option<i64>,
    seq: usize,
}

/// A live window (or session) of one key with all its records.
#[derive(Debug)]
struct Win {
    key: String,
    start: i64,
    end: i64,
    recs: Vec<Stored>,
    fired: bool,
    /// Changed by the batch being processed.
    changed: bool,
}

/// What the oracle says the job emits.
#[derive(Debug, Default)]
struct Expected {
    main: Vec<Row>,
    late: Vec<Rec>,
    /// The largest number of live windows at any time (state bound).
    max_live: usize,
    /// Windows (or sessions) created with their max timestamp already behind the
    /// watermark (possible with lateness): they fire at the next watermark advance.
    created_behind: usize,
}

/// The start of every window that contains `t` (tumbling or sliding).
fn window_starts(kind: Kind, t: i64) -> Vec<(i64, i64)> {
    match kind {
        Kind::Tumbling { size } => {
            let s = t - t.rem_euclid(size);
            vec![(s, s + size)]
        }
        Kind::Sliding { size, slide } => {
            let mut v = Vec::new();
            let mut s = t - t.rem_euclid(slide);
            while s > t - size {
                v.push((s, s + size));
                s -= slide;
            }
            v
        }
        Kind::Session { .. } => unreachable!("sessions have no fixed windows"),
    }
}

/// A window `[_, end)` is late (and purged) at watermark `w` with lateness `l`.
fn is_late(end: i64, l: i64, w: i64) -> bool {
    end.saturating_sub(1).saturating_add(l) <= w
}

/// The full current result of a window, recomputed from its records.
fn result_row(win: &Win, keyed: bool, is_update: bool) -> Row {
    let vals: Vec<&Stored> = win.recs.iter().filter(|r| r.v.is_some()).collect();
    let v = |r: &&Stored| r.v.expect("filtered to non-null");
    let sum = (!vals.is_empty()).then(|| vals.iter().fold(0i64, |a, r| a.wrapping_add(v(r))));
    let exact_sum: i128 = vals.iter().map(|r| i128::from(v(r))).sum();
    let mut distinct: Vec<i64> = vals.iter().map(v).collect();
    distinct.sort_unstable();
    distinct.dedup();
    Row {
        exact: Exact {
            key: keyed.then(|| win.key.clone()),
            start: win.start,
            end: win.end,
            count: win.recs.len() as i64,
            count_v: vals.len() as i64,
            sum,
            min: vals.iter().map(v).min(),
            max: vals.iter().map(v).max(),
            first: vals.iter().min_by_key(|r| (r.ts, r.seq)).map(v),
            last: vals.iter().max_by_key(|r| (r.ts, r.seq)).map(v),
            distinct: distinct.len() as i64,
            is_update,
        },
        avg: (!vals.is_empty()).then(|| exact_sum as f64 / vals.len() as f64),
    }
}

/// The watermark reaches `w`: fire, then purge (docs/WINDOWS.md "Firing", "Purge").
fn advance(wins: &mut Vec<Win>, w: i64, case: &Case, out: &mut Vec<Row>) {
    for win in wins.iter_mut() {
        if !win.fired && win.end - 1 <= w {
            out.push(result_row(win, case.keyed, false));
            win.fired = true;
        }
    }
    wins.retain(|win| !is_late(win.end, case.lateness, w));
}

/// Runs `case` through the semantics of docs/WINDOWS.md.
fn oracle(case: &Case) -> Expected {
    let mut exp = Expected::default();
    let mut wins: Vec<Win> = Vec::new();
    let mut w = i64::MIN;
    let mut max_ts: Option<i64> = None;
    let mut seq = 0usize;
    for batch in &case.batches {
        for r in batch {
            seq += 1;
            // Without a key every record is in the one global group.
            let key = if case.keyed {
                r.key.clone()
            } else {
                String::new()
            };
            let Some(t) = r.ts else {
                exp.late.push(r.clone());
                continue;
            };
            max_ts = Some(max_ts.map_or(t, |m| m.max(t)));
            let stored = Stored { ts: t, v: r.v, seq };
            match case.kind {
                Kind::Tumbling { .. } | Kind::Sliding { .. } => {
                    let live: Vec<(i64, i64)> = window_starts(case.kind, t)
                        .into_iter()
                        .filter(|(_, e)| !is_late(*e, case.lateness, w))
                        .collect();
                    if live.is_empty() {
                        exp.late.push(r.clone());
                        continue;
                    }
                    for (s, e) in live {
                        let i = match wins
                            .iter()
                            .position(|x| x.key == key && x.start == s && x.end == e)
                        {
                            Some(i) => i,
                            None => {
                                exp.created_behind += usize::from(e - 1 <= w);
                                wins.push(Win {
                                    key: key.clone(),
                                    start: s,
                                    end: e,
                                    recs: Vec::new(),
                                    fired: false,
                                    changed: false,
                                });
                                wins.len() - 1
                            }
                        };
                        wins[i].recs.push(stored.clone());
                        wins[i].changed = true;
                    }
                }
                Kind::Session { gap } => {
                    let (mut s, mut e) = (t, t + gap);
                    let overlapping: Vec<usize> = wins
                        .iter()
                        .enumerate()
                        .filter(|(_, x)| x.key == key && x.start < t + gap && t < x.end)
                        .map(|(i, _)| i)
                        .collect();
                    for &i in &overlapping {
                        s = s.min(wins[i].start);
                        e = e.max(wins[i].end);
                    }
                    if is_late(e, case.lateness, w) {
                        exp.late.push(r.clone());
                        continue;
                    }
                    if overlapping.is_empty() {
                        exp.created_behind += usize::from(e - 1 <= w);
                    }
                    let mut merged = Win {
                        key,
                        start: s,
                        end: e,
                        recs: vec![stored],
                        fired: false,
                        changed: true,
                    };
                    for &i in overlapping.iter().rev() {
                        let old = wins.swap_remove(i);
                        merged.fired |= old.fired;
                        merged.recs.extend(old.recs);
                    }
                    wins.push(merged);
                }
            }
        }
        exp.max_live = exp.max_live.max(wins.len());
        // Updates: one row per fired window changed by this batch.
        for win in wins.iter_mut() {
            if win.changed && win.fired {
                exp.main.push(result_row(win, case.keyed, true));
            }
            win.changed = false;
        }
        // The source's watermark after the batch, sent only when it increases.
        if let Some(m) = max_ts {
            let next = m - case.ooo - 1;
            if next > w {
                w = next;
                advance(&mut wins, w, case, &mut exp.main);
            }
        }
    }
    advance(&mut wins, i64::MAX, case, &mut exp.main);
    assert!(wins.is_empty(), "the final watermark purges everything");
    exp
}

// ---------------------------------------------------------------------------------------
// The harness: scripted source, window step, collecting sinks
// ---------------------------------------------------------------------------------------

fn input_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, false),
        Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        Field::new("v", DataType::Int64, true),
    ]))
}

fn to_batch(recs: &[Rec]) -> RecordBatch {
    RecordBatch::try_new(
        input_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(
                recs.iter().map(|r| r.key.as_str()),
            )),
            Arc::new(TimestampMillisecondArray::from(
                recs.iter().map(|r| r.ts).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(
                recs.iter().map(|r| r.v).collect::<Vec<_>>(),
            )),
        ],
    )
    .expect("input batch")
}

/// Registers the scripted source replaying `case`'s batches in `reg`, and returns a
/// graph `job` over it with that source, `src`, at parallelism 1 and event time on `ts`.
fn scripted_graph(
    job: &str,
    mut reg: Registry,
    case: &Case,
) -> Result<(GraphBuilder, NodeId), String> {
    reg.add_source(ScriptedFactory::batches(
        input_schema(),
        case.batches.iter().map(|b| to_batch(b)),
    ));
    let mut b = GraphBuilder::new(job, Arc::new(reg), ".".into());
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
                    max_out_of_orderness: Duration::from_millis(case.ooo as u64),
                    idle_timeout: None,
                    max_future: Default::default(),
                }),
                parallelism: Some(1),
            },
        )
        .map_err(|e| format!("source: {e:?}"))?;
    Ok((b, src))
}

/// The default registry with a collecting sink (`type: collect`) into the returned map.
fn collecting_registry() -> (Registry, Collected) {
    let collected: Collected = Arc::new(Mutex::new(BTreeMap::new()));
    let mut reg = weir::default_registry();
    reg.add_sink(CollectFactory::into(collected.clone()));
    (reg, collected)
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

/// The aggregate columns, in the order written.
const AGGREGATES: [(&str, &str); 9] = [
    ("n", "count(*)"),
    ("nv", "count(v)"),
    ("s", "sum(v)"),
    ("mn", "min(v)"),
    ("mx", "max(v)"),
    ("av", "avg(v)"),
    ("fst", "first(v)"),
    ("lst", "last(v)"),
    ("dv", "count(distinct v)"),
];

fn ms(x: i64) -> String {
    format!("{x}ms")
}

/// The step's YAML value, e.g. `{tumbling: 100ms, key: [k], aggregate: {...}}`.
fn window_value(case: &Case) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    match case.kind {
        Kind::Tumbling { size } => {
            m.insert("tumbling".into(), json!(ms(size)));
        }
        Kind::Sliding { size, slide } => {
            m.insert(
                "sliding".into(),
                json!({"size": ms(size), "slide": ms(slide)}),
            );
        }
        Kind::Session { gap } => {
            m.insert("session".into(), json!({"gap": ms(gap)}));
        }
    }
    if case.keyed {
        m.insert("key".into(), json!(["k"]));
    }
    let aggs: serde_json::Map<String, serde_json::Value> = AGGREGATES
        .iter()
        .map(|(n, c)| ((*n).to_string(), json!(c)))
        .collect();
    m.insert("aggregate".into(), serde_json::Value::Object(aggs));
    if case.lateness > 0 {
        m.insert("allowed_lateness".into(), json!(ms(case.lateness)));
    }
    serde_json::Value::Object(m)
}

/// The output schema WINDOWS.md prescribes (names and types).
fn expected_output_fields(keyed: bool) -> Vec<(String, DataType)> {
    let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
    let mut v: Vec<(String, DataType)> = Vec::new();
    if keyed {
        v.push(("k".into(), DataType::Utf8));
    }
    v.push(("window_start".into(), ts.clone()));
    v.push(("window_end".into(), ts));
    for (name, _) in AGGREGATES {
        let t = if name == "av" {
            DataType::Float64
        } else {
            DataType::Int64
        };
        v.push((name.into(), t));
    }
    v.push(("is_update".into(), DataType::Boolean));
    v
}

fn check_schema(schema: &Schema, keyed: bool) -> Result<(), String> {
    let got: Vec<(String, DataType)> = schema
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone()))
        .collect();
    let want = expected_output_fields(keyed);
    if got == want {
        Ok(())
    } else {
        Err(format!(
            "output schema differs from WINDOWS.md:\n  want {want:?}\n  got  {got:?}"
        ))
    }
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> &'a ArrayRef {
    batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("output has no column `{name}`: {:?}", batch.schema()))
}

fn i64s(batch: &RecordBatch, name: &str) -> Vec<Option<i64>> {
    let c = arrow::compute::cast(column(batch, name), &DataType::Int64).expect("cast to i64");
    c.as_primitive::<arrow::datatypes::Int64Type>()
        .iter()
        .collect()
}

fn strings(batch: &RecordBatch, name: &str) -> Vec<Option<String>> {
    let c = arrow::compute::cast(column(batch, name), &DataType::Utf8).expect("cast to utf8");
    c.as_string::<i32>()
        .iter()
        .map(|s| s.map(str::to_string))
        .collect()
}

fn rows_of(batches: &[RecordBatch], keyed: bool) -> Vec<Row> {
    let mut out = Vec::new();
    for b in batches {
        let keys = if keyed {
            strings(b, "k")
        } else {
            vec![None; b.num_rows()]
        };
        let (start, end) = (i64s(b, "window_start"), i64s(b, "window_end"));
        let cols: Vec<Vec<Option<i64>>> = ["n", "nv", "s", "mn", "mx", "fst", "lst", "dv"]
            .iter()
            .map(|n| i64s(b, n))
            .collect();
        let avg = arrow::compute::cast(column(b, "av"), &DataType::Float64).expect("avg");
        let avg = avg.as_primitive::<arrow::datatypes::Float64Type>();
        let upd = column(b, "is_update").as_boolean().clone();
        for i in 0..b.num_rows() {
            let need = |x: Option<i64>, what: &str| {
                x.unwrap_or_else(|| panic!("null {what} in output row {i}"))
            };
            out.push(Row {
                exact: Exact {
                    key: keys[i].clone(),
                    start: need(start[i], "window_start"),
                    end: need(end[i], "window_end"),
                    count: need(cols[0][i], "count(*)"),
                    count_v: need(cols[1][i], "count(v)"),
                    sum: cols[2][i],
                    min: cols[3][i],
                    max: cols[4][i],
                    first: cols[5][i],
                    last: cols[6][i],
                    distinct: need(cols[7][i], "count(distinct v)"),
                    is_update: upd.is_valid(i) && upd.value(i),
                },
                avg: avg.is_valid(i).then(|| avg.value(i)),
            });
        }
    }
    out
}

fn late_of(batches: &[RecordBatch]) -> Vec<Rec> {
    let mut out = Vec::new();
    for b in batches {
        let (k, ts, v) = (strings(b, "k"), i64s(b, "ts"), i64s(b, "v"));
        for i in 0..b.num_rows() {
            out.push(Rec {
                key: k[i].clone().unwrap_or_default(),
                ts: ts[i],
                v: v[i],
            });
        }
    }
    out
}

/// What the real runtime emitted.
struct Actual {
    main: Vec<Row>,
    late: Vec<Rec>,
    late_metric: u64,
}

/// How the window step keeps its state in a run.
#[derive(Clone, Copy, Debug)]
enum Tier {
    /// All open windows in memory (the default).
    Memory,
    /// RocksDB with no memory for open windows: every key moves to RocksDB after each
    /// batch and comes back for its next record or due window.
    #[cfg(feature = "rocksdb")]
    RocksDbNoMemory,
}

/// Runs `case` with the window step at `parallelism`.
fn run_engine(case: &Case, parallelism: usize) -> Result<Actual, String> {
    run_engine_in(case, parallelism, Tier::Memory)
}

/// [`run_engine`] with the state kept as `tier` says.
fn run_engine_in(case: &Case, parallelism: usize, tier: Tier) -> Result<Actual, String> {
    let (reg, collected) = collecting_registry();
    let (mut b, src) = scripted_graph("windows-oracle", reg, case)?;
    let value = window_value(case);
    let w = b
        .add_step(
            "counts",
            &[StreamRef::main(src)],
            "window",
            &value,
            Some(parallelism),
        )
        .map_err(|e| format!("window step {value}: {e:?}"))?;
    check_schema(
        &b.schema_of(&StreamRef::main(w)).expect("window schema"),
        case.keyed,
    )?;
    collect(&mut b, "out", &StreamRef::main(w), "main")?;
    let late = b
        .stream("counts.late")
        .map_err(|e| format!("counts.late: {e:?}"))?;
    collect(&mut b, "late", &late, "late")?;
    let graph = b.build().map_err(|e| format!("graph: {e:?}"))?;
    let mut options = weir_engine::runtime::RunOptions::default();
    #[cfg(feature = "rocksdb")]
    let _dir = match tier {
        Tier::Memory => None,
        Tier::RocksDbNoMemory => {
            let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
            options.state_backend = weir_engine::checkpoint::StateBackendConfig::RocksDb {
                dir: Some(dir.path().to_path_buf()),
                memory_budget_bytes: 1 << 20,
                operator_memory_bytes: Some(0),
            };
            Some(dir)
        }
    };
    #[cfg(not(feature = "rocksdb"))]
    let Tier::Memory = tier;
    let summary = block_on(weir_engine::runtime::run_with(graph, options))
        .map_err(|e| format!("job failed: {e}"))?;
    let late_metric = summary
        .nodes
        .iter()
        .find(|n| n.name == "counts")
        .map_or(0, |n| n.late_records);
    let main = take(&collected, "main");
    for batch in &main {
        check_schema(&batch.schema(), case.keyed)?;
    }
    Ok(Actual {
        main: rows_of(&main, case.keyed),
        late: late_of(&take(&collected, "late")),
        late_metric,
    })
}

/// Compares the runtime at parallelism 1 and 4 with the oracle, and at parallelism 2
/// with every key moved to RocksDB after each batch (the path of state beyond memory).
fn check_case(case: &Case) -> Result<(), TestCaseError> {
    let exp = oracle(case);
    let mut runs = vec![(1, Tier::Memory), (4, Tier::Memory)];
    #[cfg(feature = "rocksdb")]
    runs.push((2, Tier::RocksDbNoMemory));
    for (p, tier) in runs {
        let act = run_engine_in(case, p, tier).map_err(|e| {
            TestCaseError::fail(format!("parallelism {p}, {tier:?}: {e}\ninput: {case}"))
        })?;
        let mut report = String::new();
        if let Some(d) = diff_rows(&exp.main, &act.main) {
            report.push_str(&d);
        }
        if let Some(d) = diff_late(&exp.late, &act.late) {
            report.push_str(&d);
        }
        if act.late_metric != exp.late.len() as u64 {
            let _ = writeln!(
                report,
                "late_records metric {} != {} late rows expected",
                act.late_metric,
                exp.late.len()
            );
        }
        if !report.is_empty() {
            let mut all = String::new();
            for r in &exp.main {
                let _ = writeln!(all, "  {r}");
            }
            return Err(TestCaseError::fail(format!(
                "window parallelism {p} ({tier:?}) differs from the oracle:\n{report}input: {case}\noracle rows:\n{all}"
            )));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------

/// The generated keys: four that hash to four different subtasks at parallelism 4.
const KEYS: [&str; 4] = ["a", "b", "f", "g"];

/// One generated record before the disorder is applied.
#[derive(Clone, Debug)]
struct Gen {
    key: u8,
    step: i64,
    jitter: i64,
    v: Option<i64>,
    /// < 6: far behind (late); < 14: duplicated; < 16: null event time.
    flag: u8,
    /// Swap with the record this many positions later (bounded shuffle).
    swap: usize,
    /// 0: a batch ends after this record.
    brk: u8,
}

fn gen_record() -> impl Strategy<Value = Gen> {
    (
        0u8..4,
        0i64..=12,
        0i64..=25,
        proptest::option::weighted(0.85, -20i64..20),
        0u8..100,
        0usize..4,
        0u8..4,
    )
        .prop_map(|(key, step, jitter, v, flag, swap, brk)| Gen {
            key,
            step,
            jitter,
            v,
            flag,
            swap,
            brk,
        })
}

/// Turns generated records into batches: time advances by `step`, `jitter` puts a
/// record behind, some records are far behind or repeated, positions are shuffled
/// within a few places, and batches end where `brk` says.
fn build_batches(origin: i64, gens: &[Gen]) -> Vec<Vec<Rec>> {
    let mut base = origin;
    // (record, a batch ends after it, shuffle distance)
    let mut seq: Vec<(Rec, bool, usize)> = Vec::new();
    for g in gens {
        base += g.step;
        let ts = match g.flag {
            0..=5 => Some(base - 300 - g.jitter * 10),
            14..=15 => None,
            _ => Some(base - g.jitter),
        };
        let r = Rec {
            key: KEYS[usize::from(g.key)].to_string(),
            ts,
            v: g.v,
        };
        if (6..14).contains(&g.flag) {
            seq.push((r.clone(), false, g.swap));
        }
        seq.push((r, g.brk == 0, g.swap));
    }
    let n = seq.len();
    for i in 0..n {
        let j = (i + seq[i].2).min(n - 1);
        // Swap the records, keep the batch boundaries in place.
        let (a, b) = (seq[i].0.clone(), seq[j].0.clone());
        seq[i].0 = b;
        seq[j].0 = a;
    }
    let mut batches = Vec::new();
    let mut cur = Vec::new();
    for (r, end, _) in seq {
        cur.push(r);
        if end {
            batches.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        batches.push(cur);
    }
    batches
}

fn case_strategy(kind: impl Strategy<Value = Kind>) -> impl Strategy<Value = Case> {
    (
        kind,
        prop_oneof![Just(0i64), Just(15), Just(60)],
        prop_oneof![Just(0i64), Just(10), Just(30)],
        proptest::bool::weighted(0.8),
        prop_oneof![Just(0i64), Just(-1_000), Just(1_700_000_000_003)],
        proptest::collection::vec(gen_record(), 0..80),
    )
        .prop_map(|(kind, lateness, ooo, keyed, origin, gens)| Case {
            kind,
            lateness,
            ooo,
            keyed,
            batches: build_batches(origin, &gens),
        })
}

fn tumbling() -> impl Strategy<Value = Kind> {
    prop_oneof![Just(20i64), Just(50), Just(100)].prop_map(|size| Kind::Tumbling { size })
}

fn sliding() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just((40i64, 10i64)),
        Just((60, 20)),
        Just((100, 50)),
        Just((30, 30))
    ]
    .prop_map(|(size, slide)| Kind::Sliding { size, slide })
}

fn session() -> impl Strategy<Value = Kind> {
    prop_oneof![Just(5i64), Just(15), Just(40)].prop_map(|gap| Kind::Session { gap })
}

/// 256 cases per property (about a second each in a debug build); `WINDOWS_ORACLE_CASES=5000` for a longer hunt.
fn config() -> ProptestConfig {
    let cases = std::env::var("WINDOWS_ORACLE_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        max_shrink_iters: 500,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn tumbling_windows_match_the_oracle(case in case_strategy(tumbling())) {
        check_case(&case)?;
    }

    #[test]
    fn sliding_windows_match_the_oracle(case in case_strategy(sliding())) {
        check_case(&case)?;
    }

    #[test]
    fn session_windows_match_the_oracle(case in case_strategy(session())) {
        check_case(&case)?;
    }
}

// ---------------------------------------------------------------------------------------
// The harness's assumption about the source: one batch, then its watermark if it grew
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    Rows(usize),
    Watermark(i64),
}

/// Records the batches and watermarks it receives, in order.
struct EventProbe {
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl weir_engine::operator::Operator for EventProbe {
    fn process_batch(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        _ctx: &mut weir_engine::operator::OperatorContext,
        _out: &mut weir_engine::operator::Collector,
    ) -> weir_engine::Result<()> {
        self.seen
            .lock()
            .expect("probe lock")
            .push(Seen::Rows(batch.num_rows()));
        Ok(())
    }

    fn handle_watermark(
        &mut self,
        watermark: i64,
        _ctx: &mut weir_engine::operator::OperatorContext,
        _out: &mut weir_engine::operator::Collector,
    ) -> weir_engine::Result<()> {
        self.seen
            .lock()
            .expect("probe lock")
            .push(Seen::Watermark(watermark));
        Ok(())
    }
}

/// What the oracle assumes a downstream operator sees: each non-empty batch, then
/// `max_ts - ooo - 1` when it grew, and `i64::MAX` at the end.
fn assumed_events(case: &Case) -> Vec<Seen> {
    let mut v = Vec::new();
    let mut max: Option<i64> = None;
    let mut w = i64::MIN;
    for b in &case.batches {
        if !b.is_empty() {
            v.push(Seen::Rows(b.len()));
        }
        max = b.iter().filter_map(|r| r.ts).chain(max).max();
        if let Some(m) = max {
            if m - case.ooo - 1 > w {
                w = m - case.ooo - 1;
                v.push(Seen::Watermark(w));
            }
        }
    }
    v.push(Seen::Watermark(i64::MAX));
    v
}

fn probe_events(case: &Case, parallelism: usize) -> Vec<Seen> {
    let (mut b, src) =
        scripted_graph("windows-oracle-probe", Registry::new(), case).expect("source");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    b.add_operator(
        "probe",
        &[StreamRef::main(src)],
        input_schema(),
        None,
        Arc::new(move |_, _| {
            Ok(Box::new(EventProbe {
                seen: seen2.clone(),
            }))
        }),
        Some(parallelism),
    )
    .expect("probe");
    block_on(weir_engine::runtime::run(b.build().expect("graph"))).expect("job");
    let v = seen.lock().expect("probe lock").clone();
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..config() })]

    /// With the probe at parallelism 1 (chained to the source), it sees exactly the
    /// batches and watermarks the oracle simulates.
    #[test]
    fn source_watermarks_are_what_the_oracle_assumes(case in case_strategy(tumbling())) {
        prop_assert_eq!(probe_events(&case, 1), assumed_events(&case), "input: {}", case);
    }
}

/// "Integer sums wrap on overflow": every column but `avg` as the oracle says (the page
/// does not say what `avg` is when the sum overflows, so it is only printed).
#[test]
fn integer_sum_wraps_on_overflow() {
    let case = Case {
        kind: Kind::Tumbling { size: 10 },
        lateness: 0,
        ooo: 0,
        keyed: true,
        batches: vec![vec![
            rec("a", 1, Some(i64::MAX)),
            rec("a", 2, Some(1)),
            rec("a", 3, Some(i64::MAX)),
            rec("b", 4, Some(i64::MIN)),
            rec("b", 5, Some(-1)),
        ]],
    };
    let exp = oracle(&case);
    assert_eq!(
        exp.main.iter().map(|r| r.exact.sum).collect::<Vec<_>>(),
        vec![Some(-1), Some(i64::MAX)]
    );
    for p in [1, 4] {
        let act = run_engine(&case, p).expect("job");
        let mut got: Vec<Exact> = act.main.iter().map(|r| r.exact.clone()).collect();
        let mut want: Vec<Exact> = exp.main.iter().map(|r| r.exact.clone()).collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "parallelism {p}");
        for r in &act.main {
            eprintln!("overflow: {r}");
        }
    }
}

/// The window subtask (of 4) that each key goes to over the hash edge.
fn subtasks_of(keys: &[&str]) -> Vec<usize> {
    let batch = to_batch(&keys.iter().map(|k| rec(k, 0, None)).collect::<Vec<_>>());
    weir_engine::state::key_groups_for_batch(&batch, &[0], 128)
        .expect("key groups")
        .into_iter()
        .map(|g| weir_engine::state::subtask_for_key_group(g, 128, 4))
        .collect()
}

#[test]
fn generated_keys_reach_every_window_subtask() {
    let mut seen = subtasks_of(&KEYS);
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen, vec![0, 1, 2, 3], "keys {KEYS:?} at parallelism 4");
}

/// The generators reach the interesting paths: over 200 sampled cases of each kind, the
/// oracle sees updates, late records, all-null aggregates, and (with lateness) windows
/// first created behind the watermark.
#[test]
fn generators_cover_updates_and_late_records() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let kinds: [(&str, BoxedStrategy<Kind>); 3] = [
        ("tumbling", tumbling().boxed()),
        ("sliding", sliding().boxed()),
        ("session", session().boxed()),
    ];
    for (name, kind) in kinds {
        let strategy = case_strategy(kind);
        let (mut updates, mut late, mut null_aggs, mut dups, mut behind) = (0, 0, 0, 0, 0);
        for _ in 0..200 {
            let case = strategy
                .new_tree(&mut runner)
                .expect("sample a case")
                .current();
            let exp = oracle(&case);
            behind += usize::from(exp.created_behind > 0);
            updates += usize::from(exp.main.iter().any(|r| r.exact.is_update));
            late += usize::from(!exp.late.is_empty());
            null_aggs += usize::from(exp.main.iter().any(|r| r.exact.sum.is_none()));
            let mut all: Vec<&Rec> = case.batches.iter().flatten().collect();
            let n = all.len();
            all.sort();
            all.dedup();
            dups += usize::from(all.len() < n);
        }
        eprintln!(
            "{name}: of 200 cases {updates} with updates, {late} with late rows, \
             {null_aggs} with null sums, {dups} with repeated records, {behind} with \
             windows created behind the watermark"
        );
        assert!(
            updates >= 20 && late >= 40 && null_aggs >= 5 && dups >= 40 && behind >= 10,
            "{name}: the generator misses paths"
        );
    }
}

// ---------------------------------------------------------------------------------------
// State stays bounded on a long stream
// ---------------------------------------------------------------------------------------

/// Per window subtask: (largest live window count seen, live count at the end, late
/// rows).
type LiveStats = BTreeMap<usize, (usize, usize, usize)>;

/// The real `WindowOperator`, wrapped to sample its live window count after every call
/// (its late side output is counted here, since a custom node declares no side outputs).
struct LiveProbe {
    inner: weir_operators::WindowOperator,
    subtask: usize,
    stats: Arc<Mutex<LiveStats>>,
}

impl LiveProbe {
    fn pass(
        &mut self,
        mut inner: weir_engine::operator::Collector,
        out: &mut weir_engine::operator::Collector,
    ) {
        for b in inner.take_main() {
            out.emit(b);
        }
        let late: usize = inner.take_side().iter().map(|(_, b)| b.num_rows()).sum();
        let live = self.inner.live_windows();
        let mut st = self.stats.lock().expect("stats lock");
        let e = st.entry(self.subtask).or_default();
        e.0 = e.0.max(live);
        e.1 = live;
        e.2 += late;
    }
}

impl weir_engine::operator::Operator for LiveProbe {
    fn open(
        &mut self,
        ctx: &mut weir_engine::operator::OperatorContext,
    ) -> weir_engine::Result<()> {
        self.inner.open(ctx)
    }

    fn process_batch(
        &mut self,
        input: usize,
        batch: RecordBatch,
        ctx: &mut weir_engine::operator::OperatorContext,
        out: &mut weir_engine::operator::Collector,
    ) -> weir_engine::Result<()> {
        let mut inner = weir_engine::operator::Collector::default();
        self.inner.process_batch(input, batch, ctx, &mut inner)?;
        self.pass(inner, out);
        Ok(())
    }

    fn handle_watermark(
        &mut self,
        watermark: i64,
        ctx: &mut weir_engine::operator::OperatorContext,
        out: &mut weir_engine::operator::Collector,
    ) -> weir_engine::Result<()> {
        let mut inner = weir_engine::operator::Collector::default();
        self.inner.handle_watermark(watermark, ctx, &mut inner)?;
        self.pass(inner, out);
        Ok(())
    }

    fn handle_end_of_input(
        &mut self,
        ctx: &mut weir_engine::operator::OperatorContext,
        out: &mut weir_engine::operator::Collector,
    ) -> weir_engine::Result<()> {
        let mut inner = weir_engine::operator::Collector::default();
        self.inner.handle_end_of_input(ctx, &mut inner)?;
        self.pass(inner, out);
        Ok(())
    }
}

/// Runs `case` through `LiveProbe(WindowOperator)` at parallelism 4 (hash by `k`):
/// the main rows and, per subtask, (max live windows, live at the end, late rows).
fn run_live_probe(case: &Case) -> (Vec<Row>, LiveStats) {
    let (reg, collected) = collecting_registry();
    let ctx = BuildContext {
        checkpoints: Default::default(),
        job: "windows-oracle-live".into(),
        base_dir: ".".into(),
        aggregates: Arc::new(reg.aggregates().clone()),
    };
    let (mut b, src) = scripted_graph("windows-oracle-live", reg, case).expect("source");
    let input = b.schema_of(&StreamRef::main(src)).expect("source schema");
    let plan = Arc::new(
        weir_operators::WindowStep::plan(&ctx, &window_value(case), &input).expect("plan"),
    );
    let stats = Arc::new(Mutex::new(BTreeMap::new()));
    let (plan2, stats2) = (plan.clone(), stats.clone());
    let w = b
        .add_operator(
            "counts",
            &[StreamRef::main(src)],
            plan.output.clone(),
            Some(weir_engine::registry::Partitioning::Hash(vec!["k".into()])),
            Arc::new(move |subtask, _| {
                Ok(Box::new(LiveProbe {
                    inner: weir_operators::WindowOperator::new(plan2.clone()),
                    subtask,
                    stats: stats2.clone(),
                }))
            }),
            Some(4),
        )
        .expect("window");
    collect(&mut b, "out", &StreamRef::main(w), "main").expect("sink");
    block_on(weir_engine::runtime::run(b.build().expect("graph"))).expect("job");
    let main = take(&collected, "main");
    let stats = stats.lock().expect("stats lock").clone();
    (rows_of(&main, case.keyed), stats)
}

/// 20 000 records over 2 000 windows of 4 keys, every 50th record 1 s behind: the
/// oracle's live windows stay few, and the runtime emits exactly the oracle's rows and
/// late records.
#[test]
fn long_stream_keeps_state_bounded() {
    let mut batches = Vec::new();
    let mut n = 0i64;
    for b in 0..1_000i64 {
        let mut batch = Vec::new();
        for i in 0..20i64 {
            n += 1;
            let t = 10_000 + b * 20 + i;
            let ts = if n % 50 == 0 {
                t - 1_000
            } else if b == 0 {
                t
            } else {
                t - (n * 7) % 5
            };
            let key = KEYS[(n % 4) as usize];
            batch.push(rec(key, ts, Some(n % 13)));
        }
        batches.push(batch);
    }
    let case = Case {
        kind: Kind::Tumbling { size: 10 },
        lateness: 25,
        ooo: 5,
        keyed: true,
        batches,
    };
    let exp = oracle(&case);
    assert!(
        exp.max_live <= 4 * 6,
        "oracle kept {} windows live",
        exp.max_live
    );
    let fires = exp.main.iter().filter(|r| !r.exact.is_update).count();
    assert_eq!(fires, 4 * 2_000, "one firing per key and window");
    assert_eq!(exp.late.len(), 400, "every 50th record is late");
    for p in [1, 4] {
        let act = run_engine(&case, p).expect("job");
        let fired = act.main.iter().filter(|r| !r.exact.is_update).count();
        let updates = act.main.len() - fired;
        let exp_updates = exp.main.len() - fires;
        assert_eq!(
            (fired, updates, act.late.len(), act.late_metric),
            (fires, exp_updates, exp.late.len(), exp.late.len() as u64),
            "parallelism {p}: (fired, updates, late rows, late metric)"
        );
        if let Some(d) = diff_rows(&exp.main, &act.main) {
            panic!(
                "parallelism {p}: {}",
                d.lines().take(20).collect::<Vec<_>>().join("\n")
            );
        }
    }
    // The operator's own count of live windows stays as small as the oracle's, and
    // everything is purged at the end.
    let (rows, stats) = run_live_probe(&case);
    if let Some(d) = diff_rows(&exp.main, &rows) {
        panic!(
            "live probe: {}",
            d.lines().take(20).collect::<Vec<_>>().join("\n")
        );
    }
    eprintln!(
        "long stream: oracle at most {} live windows; per subtask (max live, live at end, \
         late rows): {stats:?}",
        exp.max_live
    );
    assert_eq!(stats.len(), 4, "every subtask saw the stream: {stats:?}");
    for (subtask, (max_live, end_live, _)) in &stats {
        assert!(
            *max_live <= exp.max_live,
            "subtask {subtask} held {max_live} live windows; the oracle never more than {}",
            exp.max_live
        );
        assert_eq!(*end_live, 0, "subtask {subtask} kept windows after the end");
    }
    let late: usize = stats.values().map(|s| s.2).sum();
    assert_eq!(late, exp.late.len(), "late rows over the subtasks");
}

// ---------------------------------------------------------------------------------------
// The oracle itself, on hand-computed cases
// ---------------------------------------------------------------------------------------

#[allow(clippy::too_many_arguments)]
fn row(
    key: &str,
    start: i64,
    end: i64,
    (count, count_v): (i64, i64),
    sum: Option<i64>,
    (min, max): (Option<i64>, Option<i64>),
    avg: Option<f64>,
    (first, last): (Option<i64>, Option<i64>),
    distinct: i64,
    is_update: bool,
) -> Row {
    Row {
        exact: Exact {
            key: Some(key.to_string()),
            start,
            end,
            count,
            count_v,
            sum,
            min,
            max,
            first,
            last,
            distinct,
            is_update,
        },
        avg,
    }
}

fn assert_oracle(case: &Case, main: &[Row], late: &[Rec]) {
    let exp = oracle(case);
    if let Some(d) = diff_rows(main, &exp.main) {
        panic!("oracle rows (as `unexpected`) differ from the hand computation:\n{d}{case}");
    }
    if let Some(d) = diff_late(late, &exp.late) {
        panic!("oracle late rows differ from the hand computation:\n{d}{case}");
    }
}

#[test]
fn oracle_window_assignment() {
    let tumbling = Kind::Tumbling { size: 10 };
    assert_eq!(window_starts(tumbling, 0), vec![(0, 10)]);
    assert_eq!(window_starts(tumbling, 9), vec![(0, 10)]);
    assert_eq!(window_starts(tumbling, -1), vec![(-10, 0)]);
    let sliding = Kind::Sliding {
        size: 20,
        slide: 10,
    };
    assert_eq!(window_starts(sliding, 15), vec![(10, 30), (0, 20)]);
    assert_eq!(window_starts(sliding, 20), vec![(20, 40), (10, 30)]);
    assert_eq!(window_starts(sliding, -5), vec![(-10, 10), (-20, 0)]);
    // A window is late once its max timestamp plus the lateness is behind W.
    assert!(is_late(10, 0, 9));
    assert!(!is_late(10, 0, 8));
    assert!(is_late(10, 5, 14));
    assert!(!is_late(10, 5, 13));
}

/// Tumbling, no lateness: firing with nulls skipped, then a late record.
#[test]
fn oracle_tumbling_by_hand() {
    let case = Case {
        kind: Kind::Tumbling { size: 10 },
        lateness: 0,
        ooo: 0,
        keyed: true,
        batches: vec![
            // W = 4
            vec![
                rec("a", 1, Some(1)),
                rec("a", 5, None),
                rec("b", 3, Some(7)),
            ],
            // W = 11: [0, 10) fires and is purged for a and b
            vec![rec("a", 12, Some(2)), rec("a", 8, Some(3))],
            // a@9 is late ([0, 10) is late at W = 11); W = 14
            vec![rec("a", 9, Some(4)), rec("a", 15, Some(2))],
        ],
    };
    let main = [
        row(
            "a",
            0,
            10,
            (3, 2),
            Some(4),
            (Some(1), Some(3)),
            Some(2.0),
            (Some(1), Some(3)),
            2,
            false,
        ),
        row(
            "b",
            0,
            10,
            (1, 1),
            Some(7),
            (Some(7), Some(7)),
            Some(7.0),
            (Some(7), Some(7)),
            1,
            false,
        ),
        row(
            "a",
            10,
            20,
            (2, 2),
            Some(4),
            (Some(2), Some(2)),
            Some(2.0),
            (Some(2), Some(2)),
            1,
            false,
        ),
    ];
    assert_oracle(&case, &main, &[rec("a", 9, Some(4))]);
}

/// Tumbling with allowed lateness: an update after firing, purge, then a late record.
#[test]
fn oracle_lateness_by_hand() {
    let case = Case {
        kind: Kind::Tumbling { size: 10 },
        lateness: 20,
        ooo: 0,
        keyed: true,
        batches: vec![
            // W = 11: [0, 10) fires, stays until W >= 29
            vec![rec("a", 1, Some(1)), rec("a", 12, Some(5))],
            // both into the fired [0, 10): one update row; W stays 11
            vec![rec("a", 3, Some(2)), rec("a", 4, Some(2))],
            // W = 39: [10, 20) fires; [0, 10) and [10, 20) are purged
            vec![rec("a", 40, Some(0))],
            // [10, 20) is late: 19 + 20 <= 39
            vec![rec("a", 15, Some(9))],
        ],
    };
    let main = [
        row(
            "a",
            0,
            10,
            (1, 1),
            Some(1),
            (Some(1), Some(1)),
            Some(1.0),
            (Some(1), Some(1)),
            1,
            false,
        ),
        row(
            "a",
            0,
            10,
            (3, 3),
            Some(5),
            (Some(1), Some(2)),
            Some(5.0 / 3.0),
            (Some(1), Some(2)),
            2,
            true,
        ),
        row(
            "a",
            10,
            20,
            (1, 1),
            Some(5),
            (Some(5), Some(5)),
            Some(5.0),
            (Some(5), Some(5)),
            1,
            false,
        ),
        row(
            "a",
            40,
            50,
            (1, 1),
            Some(0),
            (Some(0), Some(0)),
            Some(0.0),
            (Some(0), Some(0)),
            1,
            false,
        ),
    ];
    assert_oracle(&case, &main, &[rec("a", 15, Some(9))]);
}

/// Sliding: a record whose older window is late updates only the newer one.
#[test]
fn oracle_sliding_partly_late_by_hand() {
    let case = Case {
        kind: Kind::Sliding {
            size: 20,
            slide: 10,
        },
        lateness: 0,
        ooo: 0,
        keyed: true,
        batches: vec![
            // W = 19: [0, 20) fires and is purged
            vec![rec("a", 5, Some(1)), rec("a", 20, Some(2))],
            // [0, 20) is late, [10, 30) is not: not a late record
            vec![rec("a", 15, Some(3))],
        ],
    };
    let one = |s, e, n, sum, mn, mx, f, l, d| {
        row(
            "a",
            s,
            e,
            (n, n),
            Some(sum),
            (Some(mn), Some(mx)),
            Some(sum as f64 / n as f64),
            (Some(f), Some(l)),
            d,
            false,
        )
    };
    let main = [
        one(-10, 10, 1, 1, 1, 1, 1, 1, 1),
        one(0, 20, 1, 1, 1, 1, 1, 1, 1),
        one(10, 30, 2, 5, 2, 3, 3, 2, 2),
        one(20, 40, 1, 2, 2, 2, 2, 2, 1),
    ];
    assert_oracle(&case, &main, &[]);
}

/// Sessions with lateness: a batch bridges a fired session with a later one (one update
/// row for the merged session), `last` breaks an event-time tie by arrival, an all-null
/// session, and a record late because its session would be late.
#[test]
fn oracle_sessions_by_hand() {
    let case = Case {
        kind: Kind::Session { gap: 10 },
        lateness: 20,
        ooo: 0,
        keyed: true,
        batches: vec![
            // [0, 10) and [25, 35); W = 24: [0, 10) fires (purged at W >= 29)
            vec![rec("a", 0, Some(1)), rec("a", 25, Some(2))],
            // a@8 joins [0, 10) -> [0, 18); a@17 bridges it with [25, 35) -> [0, 35)
            vec![rec("a", 8, Some(3)), rec("a", 17, Some(4))],
            // a@25 ties with a@25=2 and arrives later; a@60 starts [60, 70); W = 59
            // purges [0, 35) (34 + 20 <= 59)
            vec![rec("a", 25, Some(7)), rec("a", 60, None)],
            // [30, 40) would be late: 39 + 20 <= 59
            vec![rec("a", 30, Some(1))],
        ],
    };
    let main = [
        row(
            "a",
            0,
            10,
            (1, 1),
            Some(1),
            (Some(1), Some(1)),
            Some(1.0),
            (Some(1), Some(1)),
            1,
            false,
        ),
        row(
            "a",
            0,
            35,
            (4, 4),
            Some(10),
            (Some(1), Some(4)),
            Some(2.5),
            (Some(1), Some(2)),
            4,
            true,
        ),
        row(
            "a",
            0,
            35,
            (5, 5),
            Some(17),
            (Some(1), Some(7)),
            Some(3.4),
            (Some(1), Some(7)),
            5,
            true,
        ),
        row(
            "a",
            60,
            70,
            (1, 0),
            None,
            (None, None),
            None,
            (None, None),
            0,
            false,
        ),
    ];
    assert_oracle(&case, &main, &[rec("a", 30, Some(1))]);
}
