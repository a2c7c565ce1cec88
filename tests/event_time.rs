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
use weir_engine::graph::{GraphBuilder, SourceDecl, StreamRef};
use weir_engine::registry::{BuildContext, FieldError, Registry, SourceBuild, SourceFactory};
use weir_engine::source::{Source, SourcePoll};
use weir_engine::time::EventTimeConfig;

use crate::common::{block_on, WatermarkProbe};

/// One step of a scripted source: emit rows with these event times on a split, or wait.
#[derive(Clone, Debug)]
enum Step {
    Emit(u32, Vec<i64>),
    Wait(Duration),
}

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

struct Scripted {
    steps: Vec<Step>,
    pos: usize,
    waiting_until: Option<tokio::time::Instant>,
    done: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl Source for Scripted {
    fn schema(&self) -> SchemaRef {
        schema()
    }

    async fn poll_next(&mut self) -> weir_engine::Result<SourcePoll> {
        if let Some(until) = self.waiting_until {
            let now = tokio::time::Instant::now();
            if now < until {
                return Ok(SourcePoll::Pending(
                    (until - now).min(Duration::from_millis(20)),
                ));
            }
            self.waiting_until = None;
            self.pos += 1;
        }
        match self.steps.get(self.pos).cloned() {
            None => {
                self.done.store(true, Ordering::SeqCst);
                Ok(SourcePoll::Finished)
            }
            Some(Step::Wait(d)) => {
                self.waiting_until = Some(tokio::time::Instant::now() + d);
                Ok(SourcePoll::Pending(Duration::from_millis(1)))
            }
            Some(Step::Emit(split, ts)) => {
                self.pos += 1;
                let n = ts.len() as i64;
                let batch = RecordBatch::try_new(
                    schema(),
                    vec![
                        Arc::new(TimestampMillisecondArray::from(ts)),
                        Arc::new(Int64Array::from_iter_values(0..n)),
                    ],
                )
                .map_err(|e| weir_engine::EngineError::arrow("test batch", e))?;
                Ok(SourcePoll::Batch { split, batch })
            }
        }
    }
}

/// `type: scripted`; the option `script` picks one of the registered scripts.
struct ScriptedFactory {
    scripts: Vec<(Vec<Step>, Arc<AtomicBool>)>,
}

impl SourceFactory for ScriptedFactory {
    fn name(&self) -> &'static str {
        "scripted"
    }
    fn options_schema(&self) -> serde_json::Value {
        json!({"type": "object", "properties": {"script": {"type": "integer"}}})
    }
    fn build(
        &self,
        _ctx: &BuildContext,
        _name: &str,
        options: &serde_json::Value,
        _schema: Option<SchemaRef>,
    ) -> Result<SourceBuild, FieldError> {
        let i = options["script"].as_u64().unwrap_or(0) as usize;
        let (steps, done) = self
            .scripts
            .get(i)
            .cloned()
            .ok_or_else(|| FieldError::at("/script", "no such script"))?;
        Ok(SourceBuild {
            schema: schema(),
            needs_format: false,
            bounded: true,
            describe: format!("scripted #{i}"),
            max_parallelism: Some(1),
            create: Arc::new(move |_| {
                Ok(Box::new(Scripted {
                    steps: steps.clone(),
                    pos: 0,
                    waiting_until: None,
                    done: done.clone(),
                }))
            }),
        })
    }
}

fn event_time(idle: Option<Duration>) -> EventTimeConfig {
    EventTimeConfig {
        field: "ts".into(),
        max_out_of_orderness: Duration::ZERO,
        idle_timeout: idle,
    }
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
    let mut script = vec![Step::Emit(1, vec![1_000]), Step::Emit(0, vec![1_000])];
    for i in 1..=20 {
        script.push(Step::Emit(0, vec![1_000 + i * 1_000]));
        script.push(Step::Wait(Duration::from_millis(25)));
    }
    let mut reg = Registry::new();
    reg.add_source(ScriptedFactory {
        scripts: vec![(script, done)],
    });
    let mut b = GraphBuilder::new("idle", Arc::new(reg), ".".into());
    let src = b
        .add_source(
            "src",
            SourceDecl {
                type_name: "scripted",
                options: &json!({"script": 0}),
                format: None,
                schema: None,
                event_time: Some(event_time(idle)),
                parallelism: Some(1),
            },
        )
        .expect("source");
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
    let fast: Vec<Step> = (1..=50).map(|i| Step::Emit(0, vec![i * 10_000])).collect();
    let mut slow = vec![Step::Emit(0, vec![2_000])];
    slow.push(Step::Wait(Duration::from_millis(400)));
    let mut reg = Registry::new();
    reg.add_source(ScriptedFactory {
        scripts: vec![
            (fast, Arc::new(AtomicBool::new(false))),
            (slow, slow_done.clone()),
        ],
    });
    let mut b = GraphBuilder::new("two-inputs", Arc::new(reg), ".".into());
    let a = b
        .add_source(
            "fast",
            SourceDecl {
                type_name: "scripted",
                options: &json!({"script": 0}),
                format: None,
                schema: None,
                event_time: Some(event_time(None)),
                parallelism: Some(1),
            },
        )
        .expect("fast");
    let s = b
        .add_source(
            "slow",
            SourceDecl {
                type_name: "scripted",
                options: &json!({"script": 1}),
                format: None,
                schema: None,
                event_time: Some(event_time(None)),
                parallelism: Some(1),
            },
        )
        .expect("slow");
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
