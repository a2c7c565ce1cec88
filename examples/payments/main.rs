//! The payments example in Rust: the same graph as `job.yaml`.
//! Run with `cargo run --example payments`.

use std::path::Path;

use serde_json::json;
use weir::prelude::*;

#[tokio::main]
#[allow(dead_code)] // the integration tests include this file for `build` only
async fn main() -> Result<(), WeirError> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/payments");
    let p = build(&dir)?;
    let summary = weir::run(p.build()?).await?;
    eprint!("{summary}");
    Ok(())
}

/// The job, with its files under `dir` (the example's folder).
pub fn build(dir: &Path) -> Result<Pipeline, WeirError> {
    let path = |p: &str| dir.join(p).to_string_lossy().into_owned();

    let p = Pipeline::new("payments").parallelism(2);
    let payments = p.source(
        "payments",
        SourceSpec::new("file")
            .option("path", path("data/payments.jsonl"))
            .format("json")
            .schema(&[
                ("payment_id", "string"),
                ("ts", "timestamp"),
                ("merchant_id", "string"),
                ("amount", "float"),
                ("currency", "string"),
                ("card_country", "string"),
            ])
            .event_time("ts", "10s"),
    )?;
    let fx_rates = p.source(
        "fx_rates",
        SourceSpec::new("file")
            .option("path", path("data/fx_rates.jsonl"))
            .format("json")
            .schema(&[
                ("currency", "string"),
                ("valid_from", "timestamp"),
                ("eur_rate", "float"),
            ])
            .event_time("valid_from", "0s"),
    )?;
    let valid = payments.step(
        "valid",
        "validate",
        json!({
            "positive_amount": "amount > 0",
            "known_currency": "currency IN ('EUR', 'USD', 'GBP', 'JPY')",
            "below_limit": "amount < 100000",
        }),
    )?;
    let unique = valid.step(
        "unique",
        "dedup",
        json!({ "key": ["payment_id"], "ttl": "24h" }),
    )?;
    let with_merchant = unique.step(
        "with_merchant",
        "enrich",
        json!({
            "table": {
                "path": path("data/merchants.csv"),
                "schema": { "merchant_id": "string", "merchant_name": "string", "merchant_country": "string", "mcc": "string" },
            },
            "on": { "merchant_id": "merchant_id" },
            "missing": "dead_letter",
        }),
    )?;
    let with_rate = with_merchant.step_with_inputs(
        "with_rate",
        "enrich",
        json!({
            "changelog": { "time": "ts", "version_time": "valid_from", "retention": "30d" },
            "on": { "currency": "currency" },
            "columns": ["eur_rate"],
            "missing": "dead_letter",
        }),
        &[&fx_rates],
    )?;
    let booked = with_rate.select(
        "booked",
        &[
            ("payment_id", "payment_id"),
            ("ts", "ts"),
            ("merchant_id", "merchant_id"),
            ("merchant_name", "merchant_name"),
            ("merchant_country", "merchant_country"),
            ("mcc", "mcc"),
            ("card_country", "card_country"),
            ("amount", "amount"),
            ("currency", "currency"),
            ("amount_eur", "round(amount * eur_rate, 2)"),
        ],
    )?;
    booked.sink(
        "ledger",
        SinkSpec::new("file")
            .option("path", path("out/payments.jsonl"))
            .parallelism(1),
    )?;
    p.dead_letter(SinkSpec::new("file").option("path", path("out/dead_letter.jsonl")))?;
    Ok(p)
}
