//! Helpers shared by the integration tests: test-only connectors (a scripted source,
//! a collecting sink) and operators that record what they see.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use serde_json::json;
use weir_engine::message::EventTime;
use weir_engine::operator::{Collector, Operator, OperatorContext};
use weir_engine::registry::{
    BuildContext, FieldError, SinkBuild, SinkFactory, SourceBuild, SourceFactory,
};
use weir_engine::sink::Sink;
use weir_engine::source::{Source, SourcePoll};

/// Records every watermark an operator sees, passing batches through.
pub struct WatermarkProbe {
    pub seen: Arc<Mutex<Vec<EventTime>>>,
}

impl Operator for WatermarkProbe {
    fn process_batch(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        _ctx: &mut OperatorContext,
        out: &mut Collector,
    ) -> weir_engine::Result<()> {
        out.emit(batch);
        Ok(())
    }

    fn handle_watermark(
        &mut self,
        watermark: EventTime,
        _ctx: &mut OperatorContext,
        _out: &mut Collector,
    ) -> weir_engine::Result<()> {
        if let Ok(mut v) = self.seen.lock() {
            v.push(watermark);
        }
        Ok(())
    }
}

/// Runs a future on a fresh multi-threaded runtime.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// One step of a scripted source: emit a batch on a split, or wait.
#[derive(Clone, Debug)]
pub enum Step {
    Emit(u32, RecordBatch),
    Wait(Duration),
}

/// A script and the flag it raises once it has run out.
pub type Script = (Vec<Step>, Arc<AtomicBool>);

struct Scripted {
    schema: SchemaRef,
    steps: Vec<Step>,
    pos: usize,
    waiting_until: Option<tokio::time::Instant>,
    done: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl Source for Scripted {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
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
            Some(Step::Emit(split, batch)) => {
                self.pos += 1;
                Ok(SourcePoll::Batch { split, batch })
            }
        }
    }
}

/// `type: scripted`, parallelism 1: replays the script picked by the option `script`
/// (default 0), then finishes.
pub struct ScriptedFactory {
    pub schema: SchemaRef,
    pub scripts: Vec<Script>,
}

impl ScriptedFactory {
    /// One script that emits `batches` in order on split 0.
    pub fn batches(schema: SchemaRef, batches: impl IntoIterator<Item = RecordBatch>) -> Self {
        let steps = batches.into_iter().map(|b| Step::Emit(0, b)).collect();
        Self {
            schema,
            scripts: vec![(steps, Arc::new(AtomicBool::new(false)))],
        }
    }
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
        let schema = self.schema.clone();
        Ok(SourceBuild {
            schema: schema.clone(),
            needs_format: false,
            bounded: true,
            describe: format!("scripted #{i}"),
            max_parallelism: Some(1),
            create: Arc::new(move |_| {
                Ok(Box::new(Scripted {
                    schema: schema.clone(),
                    steps: steps.clone(),
                    pos: 0,
                    waiting_until: None,
                    done: done.clone(),
                }))
            }),
        })
    }
}

/// Batches kept by a [`CollectFactory`] sink, by slot.
pub type Collected = Arc<Mutex<BTreeMap<String, Vec<RecordBatch>>>>;

/// Sleeps `delay` per batch (when non-zero), counts its rows, and with `into` appends
/// the batch to the slot named by the option `slot` (default `main`).
struct CollectSink {
    slot: String,
    into: Option<Collected>,
    rows: Arc<AtomicU64>,
    delay: Duration,
}

#[async_trait::async_trait]
impl Sink for CollectSink {
    async fn write_batch(&mut self, batch: RecordBatch) -> weir_engine::Result<()> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        self.rows
            .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
        if let Some(into) = &self.into {
            into.lock()
                .expect("collect lock")
                .entry(self.slot.clone())
                .or_default()
                .push(batch);
        }
        Ok(())
    }
}

/// `type: collect`, parallelism 1: see [`CollectSink`].
pub struct CollectFactory {
    pub into: Option<Collected>,
    pub rows: Arc<AtomicU64>,
    pub delay: Duration,
}

impl CollectFactory {
    /// Keeps every batch in `into`.
    pub fn into(into: Collected) -> Self {
        Self {
            into: Some(into),
            rows: Arc::default(),
            delay: Duration::ZERO,
        }
    }

    /// Keeps nothing: sleeps `delay` per batch and counts rows into `rows`.
    pub fn slow(rows: Arc<AtomicU64>, delay: Duration) -> Self {
        Self {
            into: None,
            rows,
            delay,
        }
    }
}

impl SinkFactory for CollectFactory {
    fn name(&self) -> &'static str {
        "collect"
    }
    fn options_schema(&self) -> serde_json::Value {
        json!({"type": "object", "properties": {"slot": {"type": "string"}}})
    }
    fn build(
        &self,
        _ctx: &BuildContext,
        _name: &str,
        options: &serde_json::Value,
        _input: SchemaRef,
    ) -> Result<SinkBuild, FieldError> {
        let slot = options["slot"].as_str().unwrap_or("main").to_string();
        let (into, rows, delay) = (self.into.clone(), self.rows.clone(), self.delay);
        Ok(SinkBuild::new(
            format!("collect into {slot}"),
            Arc::new(move |_| {
                Ok(Box::new(CollectSink {
                    slot: slot.clone(),
                    into: into.clone(),
                    rows: rows.clone(),
                    delay,
                }))
            }),
        )
        .max_parallelism(1))
    }
}

/// Whether the tests run under CI (`CI=true`, as CI systems set it): there a test
/// whose service is missing fails instead of skipping.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// The S3-compatible server of the tests and its bucket: `WEIR_TEST_S3_ENDPOINT` (e.g.
/// `http://127.0.0.1:19000`, started by `scripts/test.sh`) and `WEIR_TEST_S3_BUCKET`
/// (default `weir-test`). Unset, this panics under CI and otherwise prints a note and
/// returns `None`: the caller then returns without testing.
pub fn s3_endpoint(test: &str) -> Option<(String, String)> {
    let endpoint = match std::env::var("WEIR_TEST_S3_ENDPOINT") {
        Ok(e) if !e.trim().is_empty() => e.trim().to_string(),
        _ => {
            assert!(
                !under_ci(),
                "{test}: WEIR_TEST_S3_ENDPOINT is not set but CI=true: this test needs an \
                 S3-compatible server (scripts/test.sh starts one; see scripts/services.sh)"
            );
            eprintln!(
                "note: {test} skipped: WEIR_TEST_S3_ENDPOINT is not set (run scripts/test.sh, \
                 or start `moto_server -H 127.0.0.1 -p 19000`, create a bucket with \
                 `curl -X PUT http://127.0.0.1:19000/weir-test` and export \
                 WEIR_TEST_S3_ENDPOINT=http://127.0.0.1:19000)"
            );
            return None;
        }
    };
    let bucket = std::env::var("WEIR_TEST_S3_BUCKET")
        .ok()
        .filter(|b| !b.trim().is_empty())
        .unwrap_or_else(|| "weir-test".into());
    Some((endpoint, bucket))
}

/// A JSON line without its `"time"` member: dead letters carry the (processing) time at
/// which they were rejected, which differs between runs.
pub fn without_time(line: &str) -> String {
    const KEY: &str = ",\"time\":\"";
    match line.find(KEY) {
        Some(i) => {
            let rest = &line[i + KEY.len()..];
            match rest.find('"') {
                Some(j) => format!("{}{}", &line[..i], &rest[j + 1..]),
                None => line.to_string(),
            }
        }
        None => line.to_string(),
    }
}
