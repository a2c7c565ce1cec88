//! The stock-prices example in Rust: the same graph as `job.yaml`, served over HTTP
//! (metrics, REST API, dashboard and the `table` steps' state) on 127.0.0.1:8081.
//! Run with `cargo run --example stock_prices`, then `examples/stock_prices/query.sh`.

use serde_json::json;
use weir::prelude::*;

#[tokio::main]
#[allow(dead_code)] // the integration tests include this file for `build` only
async fn main() -> Result<(), WeirError> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let graph = build("1m")?.build()?;
    let server = weir::http::HttpServer::start("127.0.0.1:8081", Default::default())?;
    eprintln!("dashboard and REST API on http://{}/", server.local_addr());
    let nodes = weir::http::NodeInfo::of(&graph);
    let handle =
        weir::engine::runtime::start_with(graph, weir::engine::runtime::RunOptions::default())
            .await?;
    server.add_job(weir::http::JobEntry::new(
        "stock-prices".into(),
        nodes,
        &handle,
    ));
    let summary = handle.wait().await?;
    eprint!("{summary}");
    Ok(())
}

/// The job; `minute` is the VWAP window's size (`1m`; tests take less).
pub fn build(minute: &str) -> Result<Pipeline, WeirError> {
    let p = Pipeline::new("stock-prices").parallelism(2);
    let symbols = [
        "AAPL", "MSFT", "GOOG", "AMZN", "NVDA", "META", "TSLA", "AVGO", "ORCL", "AMD", "NFLX",
        "ADBE", "CRM", "INTC", "CSCO", "QCOM", "IBM", "TXN", "SAP", "ASML",
    ];
    let ticks = p.source(
        "ticks",
        SourceSpec::new("datagen")
            .option("rate", 5000)
            .option(
                "fields",
                json!({
                    "ts": { "start": "2026-12-07T14:30:00Z", "step": "200us" },
                    "symbol": { "values": symbols },
                    "price": { "min": 95, "max": 105 },
                    "volume": { "min": 1, "max": 500 },
                }),
            )
            .schema(&[
                ("ts", "timestamp"),
                ("symbol", "string"),
                ("price", "float"),
                ("volume", "int"),
            ])
            .event_time("ts", "2s"),
    )?;
    let last_price = ticks.step("last_price", "table", json!({ "key": ["symbol"] }))?;
    let session = ticks.step(
        "session",
        "table",
        json!({
            "key": ["symbol"],
            "aggregate": {
                "price": "last(price)", "high": "max(price)", "low": "min(price)",
                "notional": "sum(price * volume)", "volume": "sum(volume)", "trades": "count(*)",
            },
            "derive": { "vwap": "notional / volume" },
        }),
    )?;
    let minute = ticks.window(
        "minute",
        WindowSpec::tumbling(minute)
            .key(&["symbol"])
            .aggregate("notional", "sum(price * volume)")
            .aggregate("volume", "sum(volume)")
            .aggregate("trades", "count(*)"),
    )?;
    let vwap_1m = minute.step(
        "vwap_1m",
        "table",
        json!({ "key": ["symbol"], "derive": { "vwap": "notional / volume" } }),
    )?;
    vwap_1m.sink("minutes", SinkSpec::new("blackhole"))?;
    last_price.sink("prices", SinkSpec::new("blackhole"))?;
    session.sink("sessions", SinkSpec::new("blackhole"))?;
    Ok(p)
}
