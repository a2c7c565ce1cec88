//! The ad-attribution example in Rust: the same graph as `job.yaml`.
//! Run with `cargo run --example ad_attribution`.

use std::path::Path;

use weir::prelude::*;

#[tokio::main]
#[allow(dead_code)] // the integration tests include this file for `build` only
async fn main() -> Result<(), WeirError> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ad_attribution");
    let p = build(&dir)?;
    let summary = weir::run(p.build()?).await?;
    eprint!("{summary}");
    Ok(())
}

/// The job, with its files under `dir` (the example's folder).
pub fn build(dir: &Path) -> Result<Pipeline, WeirError> {
    let path = |p: &str| dir.join(p).to_string_lossy().into_owned();

    let p = Pipeline::new("ad-attribution").parallelism(2);
    let impressions = p.source(
        "impressions",
        SourceSpec::new("file")
            .option("path", path("data/impressions.jsonl"))
            .format("json")
            .schema(&[
                ("ts", "timestamp"),
                ("impression_id", "string"),
                ("ad_id", "string"),
                ("user_id", "string"),
                ("campaign", "string"),
            ])
            .event_time("ts", "2s"),
    )?;
    let clicks = p.source(
        "clicks",
        SourceSpec::new("file")
            .option("path", path("data/clicks.jsonl"))
            .format("json")
            .schema(&[
                ("ts", "timestamp"),
                ("click_id", "string"),
                ("ad_id", "string"),
                ("user_id", "string"),
            ])
            .event_time("ts", "5s"),
    )?;
    // impression.ts BETWEEN click.ts - 10s AND click.ts
    let attributed = impressions.join(
        "attributed",
        &clicks,
        JoinSpec::interval("-10s", "0s")
            .join_type(JoinType::Left)
            .on(&["ad_id", "user_id"]),
    )?;
    let attribution = attributed.select(
        "attribution",
        &[
            ("impression_id", "impression_id"),
            ("ad_id", "ad_id"),
            ("user_id", "user_id"),
            ("campaign", "campaign"),
            ("impression_ts", "ts"),
            ("click_id", "click_id"),
            ("click_ts", "right_ts"),
            ("clicked", "click_id IS NOT NULL"),
            (
                "ms_to_click",
                "CAST(right_ts AS BIGINT) - CAST(ts AS BIGINT)",
            ),
        ],
    )?;
    attribution.sink(
        "out",
        SinkSpec::new("file")
            .option("path", path("out/attribution.jsonl"))
            .parallelism(1),
    )?;
    Ok(p)
}
