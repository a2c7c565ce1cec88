//! The error-spike example in Rust: the same graph as `job.yaml`.
//! Run with `cargo run --example error_spike`.

use std::path::Path;

use weir::prelude::*;

#[tokio::main]
#[allow(dead_code)] // the integration tests include this file for `build` only
async fn main() -> Result<(), WeirError> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/error_spike");
    let p = build(&dir)?;
    let summary = weir::run(p.build()?).await?;
    eprint!("{summary}");
    Ok(())
}

/// The job, with its files under `dir` (the example's folder).
pub fn build(dir: &Path) -> Result<Pipeline, WeirError> {
    let path = |p: &str| dir.join(p).to_string_lossy().into_owned();

    let p = Pipeline::new("error-spike-alert").parallelism(2);
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
            ])
            .event_time("ts", "5s")
            .idle_timeout("30s"),
    )?;
    let errors = logs.filter("errors", "level = 'ERROR'")?;
    let counts = errors.window(
        "counts",
        WindowSpec::tumbling("1m")
            .key(&["service"])
            .aggregate("errors", "count(*)"),
    )?;
    let spikes = counts.filter("spikes", "errors >= 50")?;
    spikes.sink(
        "alerts",
        SinkSpec::new("file")
            .option("path", path("out/alerts.jsonl"))
            .parallelism(1),
    )?;
    p.dead_letter(SinkSpec::new("file").option("path", path("out/dead_letter.jsonl")))?;
    Ok(p)
}
