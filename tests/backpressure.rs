//! Backpressure: a fast source feeding a deliberately slow sink. The source must block
//! on its full output channel (time blocked > 0), no channel may ever hold more rows
//! than its capacity, the process's memory must stay flat while the source is far
//! ahead of the sink, and every record must arrive.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use weir::prelude::*;

use crate::common::{block_on, CollectFactory};

#[cfg(target_os = "linux")]
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Runs the measurement in a child process of this test binary, so that the RSS it
/// reads is not shared with tests running in parallel threads (under `cargo test`;
/// nextest already gives each test its own process).
#[test]
#[cfg(target_os = "linux")] // reads the process's RSS from /proc
fn slow_sink_blocks_source_with_flat_memory_and_no_loss() {
    const CHILD: &str = "WEIR_BACKPRESSURE_CHILD";
    if std::env::var_os(CHILD).is_some() {
        return measure();
    }
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "backpressure::slow_sink_blocks_source_with_flat_memory_and_no_loss",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()
        .expect("run the child");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "child failed:\n{text}");
    assert!(text.contains("1 passed"), "the child ran no test:\n{text}");
}

#[cfg(target_os = "linux")]
fn measure() {
    const ROWS: u64 = 600_000;
    const CAPACITY: usize = 8 * 1024;
    let written = Arc::new(AtomicU64::new(0));
    let mut registry = weir::default_registry();
    registry.add_sink(CollectFactory::slow(
        written.clone(),
        Duration::from_millis(3),
    ));
    let p = Pipeline::with_registry("backpressure", Arc::new(registry)).settings(|s| {
        s.batch_size = 1024;
        s.channel_capacity_rows = CAPACITY;
    });
    let gen = p
        .source(
            "gen",
            SourceSpec::new("datagen")
                .option("rows", ROWS)
                .option("seed", 1)
                .option("fields", json!({"payload": {"length": 200}}))
                .schema(&[("id", "int"), ("payload", "string")])
                .parallelism(2),
        )
        .expect("source");
    // Parallelism 2 → 1: a rebalance channel sits between the source chain and the sink.
    let wide = gen
        .select("wide", &[("id", "id"), ("payload", "payload")])
        .expect("select");
    wide.sink("slow", SinkSpec::new("collect").parallelism(1))
        .expect("sink");
    let graph = p.build().expect("graph");

    let w = written.clone();
    let summary = block_on(async move {
        let handle = weir_engine::runtime::start(graph).expect("start");
        let mut samples: Vec<(u64, u64)> = Vec::new();
        let sampler = async {
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                samples.push((w.load(Ordering::Relaxed), rss_bytes()));
                if w.load(Ordering::Relaxed) >= ROWS {
                    break;
                }
            }
        };
        let (summary, _) = tokio::join!(handle.wait(), sampler);
        (summary.expect("job"), samples)
    });
    let (summary, samples) = summary;

    // No record lost.
    assert_eq!(written.load(Ordering::Relaxed), ROWS);
    assert_eq!(summary.sink_rows("slow"), Some(ROWS));
    // The bound holds: no channel ever held more rows than its capacity.
    assert!(
        summary.peak_channel_rows <= CAPACITY as u64,
        "peak {} rows > capacity {CAPACITY}",
        summary.peak_channel_rows
    );
    // The source (and its chain) spent real time blocked on the full channel.
    let source_blocked: Duration = summary
        .nodes
        .iter()
        .filter(|n| n.kind != "sink")
        .map(|n| n.backpressure)
        .sum();
    assert!(
        source_blocked > Duration::from_millis(200),
        "source blocked only {source_blocked:?}"
    );
    // Memory flat: between 20% and 95% of the sink's progress the RSS grows by far less
    // than the data the source could have buffered (600k rows × ~200 bytes ≈ 120 MB).
    let at = |frac: f64| {
        samples
            .iter()
            .find(|(w, _)| *w as f64 >= frac * ROWS as f64)
            .map(|(_, r)| *r)
            .unwrap_or(0)
    };
    let (early, late) = (at(0.2), at(0.95));
    assert!(early > 0 && late > 0, "too few samples: {samples:?}");
    let growth = late.saturating_sub(early);
    eprintln!(
        "backpressure: {ROWS} rows, channel capacity {CAPACITY} rows, peak queued {} rows, \
         source blocked {source_blocked:?}, RSS at 20% {} MiB, at 95% {} MiB",
        summary.peak_channel_rows,
        early >> 20,
        late >> 20
    );
    assert!(
        growth < 24 * 1024 * 1024,
        "RSS grew by {} MiB while the sink caught up (early {} MiB, late {} MiB)",
        growth >> 20,
        early >> 20,
        late >> 20
    );
}

/// Latency markers cross shuffles and chains to every sink, are counted there, and
/// change no output.
#[test]
fn latency_markers_reach_the_sinks_and_change_nothing() {
    let job = r#"
name: latency-markers
parallelism: 2
sources:
  gen:
    type: datagen
    rows: 200000
    seed: 1
    schema: { ts: timestamp, key: int }
    fields: { key: { min: 0, max: 99 }, ts: { step: 1ms } }
    event_time: { field: ts, max_out_of_orderness: 1s }
steps:
  counts: { from: gen, window: { tumbling: 10s, key: [key], aggregate: { n: "count(*)" } } }
sinks:
  out: { from: counts, type: blackhole }
"#;
    let run = |markers: Option<std::time::Duration>| {
        let compiled = weir_engine::spec::compile_job_str(
            job,
            "job.yaml",
            std::path::Path::new("."),
            std::sync::Arc::new(weir::default_registry()),
            &Default::default(),
        )
        .expect("job compiles");
        let options = weir_engine::runtime::RunOptions {
            latency_markers: markers,
            ..weir::run_options(&compiled, weir_engine::runtime::Restore::Fresh)
        };
        crate::common::block_on(weir_engine::runtime::run_with(compiled.graph, options))
            .expect("job runs")
    };
    let plain = run(None);
    assert!(plain.latency.is_none());
    let marked = run(Some(std::time::Duration::ZERO));
    assert_eq!(marked.sink_rows("out"), plain.sink_rows("out"));
    assert_eq!(marked.records_read(), 200_000);
    let l = marked.latency.expect("markers reached the sink");
    // One marker per source batch, sent to both window subtasks.
    assert!(l.samples >= 2, "{l:?}");
    assert!(l.p50_us <= l.p99_us && l.p99_us <= l.max_us, "{l:?}");
    assert!(format!("{marked}").contains("latency (ingestion to sink"));
}

/// Buffer debloating: behind a sink that takes ~3k rows/s, two full 16k-row channels hold
/// ~10 s of data, so every checkpoint barrier queued behind them needs ~10 s and a 2 s
/// checkpoint timeout aborts them all. With debloating (target 200 ms) the queue holds
/// about 200 ms of the sink's throughput and checkpoints complete well within the
/// timeout. Prints both runs' checkpoint figures (the "before and after").
#[test]
fn checkpoints_complete_under_full_backpressure_with_buffer_debloating() {
    let run = |debloat: bool| {
        let written = Arc::new(AtomicU64::new(0));
        let mut registry = weir::default_registry();
        registry.add_sink(CollectFactory::slow(
            written.clone(),
            Duration::from_millis(20),
        ));
        let p = Pipeline::with_registry("debloat", Arc::new(registry)).settings(|s| {
            s.batch_size = 64;
            s.channel_capacity_rows = 16 * 1024;
            s.debloat = debloat.then_some(weir_engine::channel::Debloat {
                target: Duration::from_millis(200),
                min_rows: 64,
            });
        });
        let gen = p
            .source(
                "gen",
                SourceSpec::new("datagen")
                    .option("rows", 10_000_000u64)
                    .option("seed", 1)
                    .schema(&[("id", "int")])
                    .parallelism(2),
            )
            .expect("source");
        // Parallelism 2 → 1: two rebalance channels into the sink.
        gen.sink("slow", SinkSpec::new("collect").parallelism(1))
            .expect("sink");
        let graph = p.build().expect("graph");
        let dir = tempfile::tempdir().expect("tempdir");
        let options = weir_engine::runtime::RunOptions {
            checkpoint: Some(weir_engine::checkpoint::CheckpointConfig {
                interval: Duration::from_millis(300),
                timeout: Duration::from_secs(2),
                retain: 1,
                tolerable_failures: u32::MAX,
                storage: weir_engine::checkpoint::StorageConfig {
                    url: dir.path().display().to_string(),
                    s3: Default::default(),
                },
            }),
            restore: weir_engine::runtime::Restore::Fresh,
            ..Default::default()
        };
        block_on(async move {
            let handle = weir_engine::runtime::start_with(graph, options)
                .await
                .expect("start");
            let stats = handle.checkpoints.clone().expect("checkpoint stats");
            tokio::time::sleep(Duration::from_secs(7)).await;
            handle.abort();
            let _ = handle.wait().await;
            let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
            (
                g(&stats.completed),
                g(&stats.aborted),
                g(&stats.max_duration_ms),
                written.load(Ordering::Relaxed),
            )
        })
    };
    let (plain_done, plain_aborted, plain_max, plain_rows) = run(false);
    let (done, aborted, max_ms, rows) = run(true);
    eprintln!(
        "backpressured checkpoints: without debloating {plain_done} completed, \
         {plain_aborted} aborted (longest completed {plain_max} ms), sink {plain_rows} rows; \
         with debloating {done} completed, {aborted} aborted (longest {max_ms} ms), \
         sink {rows} rows"
    );
    assert!(
        plain_aborted >= 1 && plain_done <= 1,
        "without debloating a full channel should hold barriers past the timeout"
    );
    assert!(
        done >= 3,
        "with debloating checkpoints must complete: {done}"
    );
    assert!(max_ms < 2_000, "longest checkpoint {max_ms} ms");
    // Debloating does not slow the bottleneck down.
    assert!(rows * 10 >= plain_rows * 7, "{rows} rows vs {plain_rows}");
}
