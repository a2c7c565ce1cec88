//! The log-filter example in Rust: the same graph as `job.yaml`, built with the typed
//! builder. Run with `cargo run --release --example log_filter`.

use std::path::Path;

use weir::prelude::*;

#[tokio::main]
#[allow(dead_code)] // the integration tests include this file for `build` only
async fn main() -> Result<(), WeirError> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/log_filter");
    let p = build(&dir)?;
    let summary = weir::run(p.build()?).await?;
    eprint!("{summary}");
    Ok(())
}

/// The job, with its files under `dir` (the example's folder).
pub fn build(dir: &Path) -> Result<Pipeline, WeirError> {
    let path = |p: &str| dir.join(p).to_string_lossy().into_owned();

    let p = Pipeline::new("log-filter").parallelism(2);
    let logs = p.source(
        "logs",
        SourceSpec::new("file")
            .option("path", path("data/*.jsonl"))
            .format("json")
            .schema(&[
                ("ts", "timestamp"),
                ("service", "string"),
                ("level", "string"),
                ("message", "string"),
                ("latency_ms", "int"),
            ])
            .event_time("ts", "5s")
            .idle_timeout("30s"),
    )?;
    let problems = logs.filter("problems", "level IN ('WARN', 'ERROR')")?;
    let flagged = problems.select(
        "flagged",
        &[
            ("ts", "ts"),
            ("service", "service"),
            ("level", "level"),
            ("message", "message"),
            ("slow", "latency_ms > 1000"),
        ],
    )?;
    flagged.sink(
        "out",
        SinkSpec::new("file")
            .option("path", path("out/problems.jsonl"))
            .option("format", "jsonl")
            .parallelism(1),
    )?;
    p.dead_letter(SinkSpec::new("file").option("path", path("out/dead_letter.jsonl")))?;
    Ok(p)
}
