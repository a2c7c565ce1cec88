//! The sessionization example in Rust: the same graph as `job.yaml`.
//! Run with `cargo run --example sessionization`.

use std::path::Path;

use weir::prelude::*;

#[tokio::main]
#[allow(dead_code)] // the integration tests include this file for `build` only
async fn main() -> Result<(), WeirError> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sessionization");
    let p = build(&dir)?;
    let summary = weir::run(p.build()?).await?;
    eprint!("{summary}");
    Ok(())
}

/// The job, with its files under `dir` (the example's folder).
pub fn build(dir: &Path) -> Result<Pipeline, WeirError> {
    let path = |p: &str| dir.join(p).to_string_lossy().into_owned();

    let p = Pipeline::new("clickstream-sessions").parallelism(2);
    let clicks = p.source(
        "clicks",
        SourceSpec::new("file")
            .option("path", path("data/*.jsonl"))
            .format("json")
            .schema(&[
                ("ts", "timestamp"),
                ("user_id", "string"),
                ("page", "string"),
            ])
            .event_time("ts", "10s")
            .idle_timeout("30s"),
    )?;
    let sessions = clicks.window(
        "sessions",
        WindowSpec::session("30m")
            .key(&["user_id"])
            .aggregate("page_views", "count(*)")
            .aggregate("distinct_pages", "count(distinct page)")
            .aggregate("first_click", "min(ts)")
            .aggregate("last_click", "max(ts)")
            .aggregate("landing_page", "first(page)")
            .aggregate("exit_page", "last(page)"),
    )?;
    let summary = sessions.select(
        "summary",
        &[
            ("user_id", "user_id"),
            ("session_start", "first_click"),
            ("session_end", "last_click"),
            (
                "duration_s",
                "(CAST(last_click AS BIGINT) - CAST(first_click AS BIGINT)) / 1000",
            ),
            ("page_views", "page_views"),
            ("distinct_pages", "distinct_pages"),
            ("landing_page", "landing_page"),
            ("exit_page", "exit_page"),
        ],
    )?;
    summary.sink(
        "out",
        SinkSpec::new("file")
            .option("path", path("out/sessions.jsonl"))
            .parallelism(1),
    )?;
    Ok(p)
}
