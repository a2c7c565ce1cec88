//! The Kafka variant of the error-spike example in Rust: the same graph as
//! `kafka.yaml`. Run with `KAFKA_BROKERS=host:port cargo run --example error_spike_kafka`
//! after `examples/error_spike/kafka.sh` has put the sample logs on the topic.

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
    let brokers = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let p = build(&dir, &brokers)?;
    let options = weir::engine::runtime::RunOptions {
        checkpoint: Some(weir::engine::checkpoint::CheckpointConfig {
            interval: std::time::Duration::from_secs(10),
            ..Default::default()
        }),
        ..Default::default()
    };
    let summary = weir::run_with(p.build()?, options).await?;
    eprint!("{summary}");
    Ok(())
}

/// The job: logs from the topic `app-logs` at `brokers`, alerts to the topic `alerts`
/// exactly once, dead letters to a file under `dir`.
pub fn build(dir: &Path, brokers: &str) -> Result<Pipeline, WeirError> {
    let p = Pipeline::new("error-spike-alert-kafka").parallelism(2);
    let logs = p.source(
        "logs",
        SourceSpec::new("kafka")
            .option("brokers", brokers)
            .option("topic", "app-logs")
            .option("group", "error-spike-alert")
            .format("json")
            .schema(&[
                ("ts", "timestamp"),
                ("service", "string"),
                ("level", "string"),
                ("message", "string"),
            ])
            .event_time("ts", "5s")
            .idle_timeout("30s")
            .max_future("none"),
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
        SinkSpec::new("kafka")
            .option("brokers", brokers)
            .option("topic", "alerts")
            .option("key", "service")
            .option("create_topic", serde_json::json!({ "partitions": 1 }))
            .option("delivery", "exactly_once"),
    )?;
    p.dead_letter(
        SinkSpec::new("file").option("path", dir.join("out/dead_letter.jsonl").to_string_lossy()),
    )?;
    Ok(p)
}
