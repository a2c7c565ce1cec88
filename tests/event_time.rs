//! Event time through the runtime: an idle source split must not hold the watermark
//! back once its idle timeout passes, and a two-input operator's watermark is the
//! minimum of its inputs' watermarks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{Int64Array, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use serde_json::json;
use weir_engine::graph::{GraphBuilder, NodeId, SourceDecl, StreamRef};
use weir_engine::registry::Registry;
use weir_engine::time::EventTimeConfig;

use crate::common::{block_on, ScriptedFactory, Step, WatermarkProbe};

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("v", DataType::Int64, false),
    ]))
}

/// Emits rows with these event times on `split`.
fn emit(split: u32, ts: Vec<i64>) -> Step {
    let n = ts.len() as i64;
    let batch = RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(TimestampMillisecondArray::from(ts)),
            Arc::new(Int64Array::from_iter_values(0..n)),
        ],
    )
    .expect("test batch");
    Step::Emit(split, batch)
}

fn event_time(idle: Option<Duration>) -> EventTimeConfig {
    EventTimeConfig {
        field: "ts".into(),
        max_out_of_orderness: Duration::ZERO,
        idle_timeout: idle,
        max_future: Default::default(),
    }
}

/// Adds source `name` replaying script number `script` with event time on `ts`.
fn add_scripted(b: &mut GraphBuilder, name: &str, script: u64, idle: Option<Duration>) -> NodeId {
    b.add_source(
        name,
        SourceDecl {
            type_name: "scripted",
            options: &json!({ "script": script }),
            format: None,
            schema: None,
            event_time: Some(event_time(idle)),
            parallelism: Some(1),
        },
    )
    .expect(name)
}

fn probe_after(b: &mut GraphBuilder, inputs: &[StreamRef], seen: Arc<Mutex<Vec<i64>>>) {
    b.add_operator(
        "probe",
        inputs,
        schema(),
        None,
        Arc::new(move |_, _| Ok(Box::new(WatermarkProbe { seen: seen.clone() }))),
        Some(1),
    )
    .expect("probe");
}

/// Split 0 keeps producing while split 1 sends one early record and then goes quiet
/// (not finished). Returns the watermarks the probe saw before the end of input.
fn run_idle_case(idle: Option<Duration>) -> Vec<i64> {
    let done = Arc::new(AtomicBool::new(false));
    let mut script = vec![emit(1, vec![1_000]), emit(0, vec![1_000])];
    for i in 1..=20 {
        script.push(emit(0, vec![1_000 + i * 1_000]));
        script.push(Step::Wait(Duration::from_millis(25)));
    }
    let mut reg = Registry::new();
    reg.add_source(ScriptedFactory {
        schema: schema(),
        scripts: vec![(script, done)],
    });
    let mut b = GraphBuilder::new("idle", Arc::new(reg), ".".into());
    let src = add_scripted(&mut b, "src", 0, idle);
    let seen = Arc::new(Mutex::new(Vec::new()));
    probe_after(&mut b, &[StreamRef::main(src)], seen.clone());
    let graph = b.build().expect("graph");
    block_on(weir_engine::runtime::run(graph)).expect("job");
    let v = seen.lock().expect("lock").clone();
    v.into_iter().filter(|w| *w != i64::MAX).collect()
}

#[test]
fn idle_split_is_left_out_of_the_watermark() {
    // Without an idle timeout the quiet split pins the watermark at its one record.
    let stuck = run_idle_case(None);
    assert!(!stuck.is_empty(), "no watermark reached the probe");
    assert!(
        stuck.iter().all(|w| *w <= 999),
        "watermark passed the quiet split without idleness: {stuck:?}"
    );
    // With a 100 ms idle timeout the active split drives the watermark forward.
    let moving = run_idle_case(Some(Duration::from_millis(100)));
    let max = moving.iter().copied().max().unwrap_or(i64::MIN);
    assert!(
        max >= 10_000,
        "watermark did not advance past the idle split: {moving:?}"
    );
    assert!(
        moving.windows(2).all(|w| w[0] <= w[1]),
        "watermark went back: {moving:?}"
    );
}

#[test]
fn two_input_operator_takes_the_minimum_watermark() {
    let slow_done = Arc::new(AtomicBool::new(false));
    let fast: Vec<Step> = (1..=50).map(|i| emit(0, vec![i * 10_000])).collect();
    let mut slow = vec![emit(0, vec![2_000])];
    slow.push(Step::Wait(Duration::from_millis(400)));
    let mut reg = Registry::new();
    reg.add_source(ScriptedFactory {
        schema: schema(),
        scripts: vec![
            (fast, Arc::new(AtomicBool::new(false))),
            (slow, slow_done.clone()),
        ],
    });
    let mut b = GraphBuilder::new("two-inputs", Arc::new(reg), ".".into());
    let a = add_scripted(&mut b, "fast", 0, None);
    let s = add_scripted(&mut b, "slow", 1, None);
    // Record, with each watermark, whether the slow input had finished at that moment.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let flags = Arc::new(Mutex::new(Vec::new()));
    let (seen2, flags2, done2) = (seen.clone(), flags.clone(), slow_done.clone());
    b.add_operator(
        "join_like",
        &[StreamRef::main(a), StreamRef::main(s)],
        schema(),
        None,
        Arc::new(move |_, _| {
            Ok(Box::new(FlaggingProbe {
                inner: WatermarkProbe {
                    seen: seen2.clone(),
                },
                flags: flags2.clone(),
                done: done2.clone(),
            }))
        }),
        Some(1),
    )
    .expect("operator");
    let graph = b.build().expect("graph");
    block_on(weir_engine::runtime::run(graph)).expect("job");
    let seen = seen.lock().expect("lock").clone();
    let flags = flags.lock().expect("lock").clone();
    assert!(!seen.is_empty());
    let mut while_slow_open = 0;
    for (wm, slow_finished) in seen.iter().zip(flags.iter()) {
        if !slow_finished {
            while_slow_open += 1;
            assert!(
                *wm <= 1_999,
                "watermark {wm} passed the slow input's 1999 while it was open: {seen:?}"
            );
        }
    }
    assert!(
        while_slow_open > 0,
        "no watermark seen while the slow input was open"
    );
    assert_eq!(
        seen.last(),
        Some(&i64::MAX),
        "final watermark closes everything"
    );
}

struct FlaggingProbe {
    inner: WatermarkProbe,
    flags: Arc<Mutex<Vec<bool>>>,
    done: Arc<AtomicBool>,
}

impl weir_engine::operator::Operator for FlaggingProbe {
    fn process_batch(
        &mut self,
        input: usize,
        batch: RecordBatch,
        ctx: &mut weir_engine::operator::OperatorContext,
        out: &mut weir_engine::operator::Collector,
    ) -> weir_engine::Result<()> {
        self.inner.process_batch(input, batch, ctx, out)
    }

    fn handle_watermark(
        &mut self,
        wm: i64,
        ctx: &mut weir_engine::operator::OperatorContext,
        out: &mut weir_engine::operator::Collector,
    ) -> weir_engine::Result<()> {
        if let Ok(mut f) = self.flags.lock() {
            f.push(self.done.load(Ordering::SeqCst));
        }
        self.inner.handle_watermark(wm, ctx, out)
    }
}
