//! Operating a running job over HTTP (`weir run --http`): Prometheus metrics, the REST
//! API (jobs, graph with per-node metrics, checkpoints, savepoint, stop with a savepoint
//! that the next run resumes from, cancel), the dashboard as headless Chromium renders
//! it, and the `deploy/` files' metric names against what the binary exports.

#![allow(clippy::unwrap_used)] // test code: a failed set-up step should just fail

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// One HTTP/1.1 request; (status, body).
pub(crate) fn http(addr: &str, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((len, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n]);
            rest = &tail[n + 2..];
        }
        out
    } else {
        body.to_string()
    };
    (status, body)
}

pub(crate) fn get_json(addr: &str, path: &str) -> Value {
    let (status, body) = http(addr, "GET", path);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Starts `weir run job.yaml --http 127.0.0.1:0` in `dir`; the child and the address the
/// endpoint took (from its stderr line).
pub(crate) fn start(dir: &Path, extra: &[&str]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "job.yaml", "--no-progress", "--http", "127.0.0.1:0"])
        .args(extra)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut addr = None;
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("dashboard and REST API on http://") {
            addr = Some(rest.trim_end_matches('/').to_string());
            break;
        }
        seen.push(line);
    }
    let addr = addr.unwrap_or_else(|| panic!("no address announced: {seen:?}"));
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

pub(crate) fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            panic!("the job did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

const JOB: &str = "name: ops-test\nparallelism: 2\n\
checkpoint: { interval: 300ms, storage: ckpt }\n\
sources:\n  clicks:\n    type: datagen\n    rate: 5000\n\
\x20   schema: { ts: timestamp, user: string, amount: float }\n\
\x20   fields:\n      ts: { start: \"2026-01-01T00:00:00Z\", step: 1ms }\n\
\x20     user: { values: [ann, bob, cid, dan] }\n      amount: { min: -1, max: 100 }\n\
\x20   event_time: { field: ts, max_out_of_orderness: 1s }\n\
steps:\n  valid: { from: clicks, validate: { positive: \"amount > 0\" } }\n\
\x20 per_user:\n    from: valid\n\
\x20   window: { tumbling: 1s, key: [user], aggregate: { n: \"count(*)\", total: \"sum(amount)\" } }\n\
sinks:\n  out: { from: per_user, type: file, path: out/o.jsonl }\n\
dead_letter: { type: file, path: out/dead.jsonl }\n";

/// The metric families of a scrape (sample names, labels cut off).
fn families(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[test]
fn metrics_rest_api_and_dashboard_of_a_running_job() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("job.yaml"), JOB).unwrap();
    let (mut child, addr) = start(d, &[]);

    // The endpoint is up before the job has started.
    wait_until("the job listed", Duration::from_secs(30), || {
        get_json(&addr, "/api/jobs")["jobs"][0].is_object()
    });
    let jobs = get_json(&addr, "/api/jobs");
    assert_eq!(jobs["jobs"][0]["name"], "ops-test", "{jobs}");
    assert_eq!(jobs["jobs"][0]["status"], "running", "{jobs}");
    wait_until("two checkpoints and rates", Duration::from_secs(60), || {
        let j = get_json(&addr, "/api/jobs/ops-test");
        j["checkpoints"]["completed"].as_u64().unwrap_or(0) >= 2
            && j["nodes"][0]["rate_out"].as_f64().unwrap_or(0.0) > 0.0
    });

    // The graph: every node with its kind, parallelism, inputs and counters.
    let j = get_json(&addr, "/api/jobs/ops-test");
    let nodes = j["nodes"].as_array().unwrap();
    let names: Vec<&str> = nodes.iter().map(|n| n["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["clicks", "valid", "per_user", "out", "dead_letter"]);
    let node = |name: &str| nodes.iter().find(|n| n["name"] == name).unwrap();
    assert_eq!(node("per_user")["inputs"], serde_json::json!(["valid"]));
    assert_eq!(node("clicks")["parallelism"], 2);
    assert_eq!(node("clicks")["subtasks"].as_array().unwrap().len(), 2);
    assert!(node("valid")["records_in"].as_u64().unwrap() > 0);
    assert!(
        node("valid")["dead_letters_by_kind"]["validation"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(node("valid")["last_dead_letter"]
        .as_str()
        .unwrap()
        .contains("positive"));
    assert!(node("per_user")["watermark_ms"].as_i64().unwrap() >= 1_767_225_600_000);
    assert!(node("per_user")["queue_fill"].is_number());
    let history = j["checkpoints"]["history"].as_array().unwrap();
    assert_eq!(history.last().unwrap()["status"], "completed");
    assert!(j["checkpoints"]["latest_restore_point"]["location"]
        .as_str()
        .unwrap()
        .contains("chk-"));

    // Prometheus: every family the endpoint documents, but the Kafka-only source lag.
    let (status, text) = http(&addr, "GET", "/metrics");
    assert_eq!(status, 200);
    let fams = families(&text);
    for name in weir::http::EXPORTED_METRICS {
        if *name != "weir_source_lag_records" {
            assert!(
                fams.contains(*name),
                "{name} missing from /metrics:\n{text}"
            );
        }
    }
    assert!(text.contains(
        "weir_dead_letters_total{job=\"ops-test\",node=\"valid\",subtask=\"0\",kind=\"validation\"}"
    ));
    for f in &fams {
        assert!(
            weir::http::EXPORTED_METRICS.contains(&f.as_str()),
            "{f} is exported but not documented in EXPORTED_METRICS"
        );
    }

    // Errors are JSON with a status.
    let (status, body) = http(&addr, "GET", "/api/jobs/nope");
    assert_eq!(status, 404);
    let e: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(e["status"], 404);
    assert!(e["error"].as_str().unwrap().contains("ops-test"), "{e}");
    assert_eq!(http(&addr, "POST", "/api/jobs/nope/stop").0, 404);
    assert_eq!(http(&addr, "GET", "/api/nothing").0, 404);

    // The dashboard, as headless Chromium renders it: node names, live rates, a
    // completed checkpoint.
    if let Some(chromium) = chromium() {
        let out = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--virtual-time-budget=4000",
                "--dump-dom",
            ])
            .arg(format!("http://{addr}/"))
            .output()
            .unwrap();
        let dom = String::from_utf8_lossy(&out.stdout);
        assert!(dom.contains("id=\"job-name\">ops-test<"), "{dom}");
        for n in &names {
            assert!(dom.contains(&format!("data-node=\"{n}\"")), "{n} not shown");
        }
        let rates: Vec<f64> = dom
            .split("class=\"rate-out\" data-value=\"")
            .skip(1)
            .filter_map(|r| r.split('"').next()?.parse().ok())
            .collect();
        assert!(rates.iter().any(|r| *r > 0.0), "no live rate: {rates:?}");
        let completed: u64 = dom
            .split("id=\"ckpt-completed\">")
            .nth(1)
            .and_then(|r| r.split('<').next())
            .and_then(|n| n.replace(',', "").parse().ok())
            .unwrap_or(0);
        assert!(completed >= 1, "no completed checkpoint shown");
    }

    // A savepoint, then stop with a savepoint: the next run resumes from it.
    let (status, body) = http(&addr, "POST", "/api/jobs/ops-test/savepoint");
    assert_eq!(status, 200, "{body}");
    let sp: Value = serde_json::from_str(&body).unwrap();
    let name = sp["savepoint"].as_str().unwrap().to_string();
    assert!(d.join("ckpt/ops-test/savepoints").join(&name).exists());
    let (status, body) = http(&addr, "POST", "/api/jobs/ops-test/stop");
    assert_eq!(status, 200, "{body}");
    let stopped: Value = serde_json::from_str(&body).unwrap();
    let final_sp = stopped["savepoint"].as_str().unwrap().to_string();
    assert!(wait_exit(&mut child, Duration::from_secs(30)).success());

    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "job.yaml", "--no-progress", "--http", "127.0.0.1:0"])
        .current_dir(d)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut again = out;
    let mut lines = BufReader::new(again.stderr.take().unwrap()).lines();
    let (mut resumed, mut addr2) = (None, None);
    for l in lines.by_ref() {
        let l = l.unwrap();
        if let Some(rest) = l.strip_prefix("dashboard and REST API on http://") {
            addr2 = Some(rest.trim_end_matches('/').to_string());
        } else if l.starts_with("resuming") {
            resumed = Some(l);
        }
        if resumed.is_some() && addr2.is_some() {
            break;
        }
    }
    let epoch = &final_sp["savepoint-".len()..];
    assert_eq!(
        resumed.unwrap(),
        format!("resuming from savepoint {final_sp} (checkpoint {epoch})")
    );
    let addr2 = addr2.unwrap();
    std::thread::spawn(move || for _ in lines {});
    // Cancel: the job ends at once.
    let (status, body) = http(&addr2, "POST", "/api/jobs/ops-test/cancel");
    assert_eq!(status, 200, "{body}");
    wait_exit(&mut again, Duration::from_secs(30));
}

/// Headless Chromium (Debian's `chromium`), or None where it is not installed (a
/// failure under CI, which installs it).
fn chromium() -> Option<&'static str> {
    for c in ["chromium", "chromium-browser"] {
        if Command::new(c)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return Some(c);
        }
    }
    assert!(
        !crate::common::under_ci(),
        "chromium is not installed but CI=true: scripts/test.sh installs it"
    );
    eprintln!("note: the dashboard check skipped: chromium is not installed");
    None
}

/// The Grafana dashboard and the Prometheus alerts use only metrics the binary exports.
#[test]
fn deploy_files_use_only_exported_metrics() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let mut used = std::collections::BTreeSet::new();
    for f in [
        "grafana/weir-dashboard.json",
        "prometheus/weir-alerts.yml",
        "prometheus/prometheus.yml",
    ] {
        let text = std::fs::read_to_string(root.join(f)).unwrap();
        if f.ends_with(".json") {
            let _: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{f}: {e}"));
        } else {
            weir_engine::spec::parse_yaml(&text, f).unwrap_or_else(|e| panic!("{f}: {e}"));
        }
        let bytes = text.as_bytes();
        let mut i = 0;
        while let Some(at) = text[i..].find("weir_") {
            let start = i + at;
            let end = start
                + text[start..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(text.len() - start);
            let before = start.checked_sub(1).map(|b| bytes[b]);
            if !before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_') {
                used.insert(text[start..end].to_string());
            }
            i = end;
        }
    }
    assert!(used.len() >= 10, "{used:?}");
    for m in &used {
        assert!(
            weir::http::EXPORTED_METRICS.contains(&m.as_str()),
            "deploy/ uses {m}, which weir does not export"
        );
    }
}

/// The stock-prices example (`examples/stock_prices/`) on RocksDB state: the `table`
/// steps answer reads of one key from the owning subtask, scans page through every
/// symbol, reads see what the job has processed, bad requests are 400/404, the query
/// script works, and the state survives a stop with a savepoint.
#[test]
fn the_stock_prices_example_serves_its_state() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/stock_prices");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let yaml = std::fs::read_to_string(example.join("job.yaml"))
        .unwrap()
        .replace("http: 127.0.0.1:8081\n", "state: { backend: rocksdb }\n")
        .replace(
            "checkpoint: { interval: 5s }",
            "checkpoint: { interval: 300ms, storage: ckpt }",
        )
        .replace("tumbling: 1m", "tumbling: 1s");
    std::fs::write(d.join("job.yaml"), yaml).unwrap();
    let (mut child, addr) = start(d, &[]);
    let state = |step: &str, q: &str| {
        http(
            &addr,
            "GET",
            &format!("/api/jobs/stock-prices/state/{step}?{q}"),
        )
    };
    wait_until("a completed minute", Duration::from_secs(60), || {
        state("vwap_1m", "key=AAPL").0 == 200
    });

    let value = |step: &str, key: &str| -> Value {
        let (status, body) = state(step, &format!("key={key}"));
        assert_eq!(status, 200, "{step} {key}: {body}");
        serde_json::from_str::<Value>(&body).unwrap()["value"].clone()
    };
    let s = value("session", "AAPL");
    assert_eq!(s["symbol"], "AAPL");
    let (high, low, vwap) = (
        s["high"].as_f64().unwrap(),
        s["low"].as_f64().unwrap(),
        s["vwap"].as_f64().unwrap(),
    );
    assert!(
        (95.0..105.0).contains(&low) && low <= vwap && vwap <= high && high < 105.0,
        "{s}"
    );
    assert!(s["trades"].as_i64().unwrap() > 0);
    let p = value("last_price", "MSFT");
    assert!((95.0..105.0).contains(&p["price"].as_f64().unwrap()), "{p}");
    let m = value("vwap_1m", "AAPL");
    assert!(
        m["window_end"].is_string() && m["vwap"].as_f64().unwrap() > 95.0,
        "{m}"
    );
    // The window's open windows of a key: bounds, aggregates so far, fired or not.
    let open = value("minute", "AAPL");
    let windows = open["windows"].as_array().unwrap();
    assert!(!windows.is_empty(), "{open}");
    assert!(
        windows.iter().all(|w| w["symbol"] == "AAPL"
            && w["window_start"].is_string()
            && w["trades"].as_u64().unwrap() > 0
            && w["fired"].is_boolean()),
        "{open}"
    );

    // Reads see what the job has processed: the session counts lie between the step's
    // records in before and after the scan.
    let records_in = || -> u64 {
        let j = get_json(&addr, "/api/jobs/stock-prices");
        j["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == "session")
            .unwrap()["records_in"]
            .as_u64()
            .unwrap()
    };
    let before = records_in();
    let mut symbols = Vec::new();
    let mut trades = 0;
    let mut after: Option<String> = None;
    loop {
        let q = match &after {
            Some(a) => format!("limit=7&after={a}"),
            None => "limit=7".to_string(),
        };
        let (status, body) = state("session", &q);
        assert_eq!(status, 200, "{body}");
        let page: Value = serde_json::from_str(&body).unwrap();
        for e in page["entries"].as_array().unwrap() {
            symbols.push(e["key"].as_str().unwrap().to_string());
            trades += e["value"]["trades"].as_u64().unwrap();
        }
        match page["next_after"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => break,
        }
    }
    let after_scan = records_in();
    assert_eq!(symbols.len(), 20, "{symbols:?}");
    let mut sorted = symbols.clone();
    sorted.sort();
    assert_eq!(symbols, sorted, "pages come in key order, without overlap");
    assert!(
        before <= trades && trades <= after_scan,
        "{before} <= {trades} <= {after_scan}"
    );
    let (status, body) = state("session", "prefix=A&limit=100");
    assert_eq!(status, 200);
    let a: Value = serde_json::from_str(&body).unwrap();
    let keys: Vec<&str> = a["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["AAPL", "ADBE", "AMD", "AMZN", "ASML", "AVGO"]);

    // Clean errors.
    assert_eq!(state("session", "key=NOPE").0, 404);
    assert_eq!(state("nothing", "key=AAPL").0, 404);
    assert_eq!(state("session", "key=%5B%22A%22,%22B%22%5D").0, 400);
    assert_eq!(state("session", "key=%5Bbroken").0, 400);

    // The query script.
    let out = Command::new(example.join("query.sh"))
        .args(["AAPL", "1"])
        .env("WEIR_URL", format!("http://{addr}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("\"symbol\":\"AAPL\"") && text.contains("vwap_1m"),
        "{text}"
    );

    // Stop with a savepoint; the next run resumes with the state (RocksDB) it had.
    let trades_before = value("session", "AAPL")["trades"].as_u64().unwrap();
    let (status, body) = http(&addr, "POST", "/api/jobs/stock-prices/stop");
    assert_eq!(status, 200, "{body}");
    assert!(wait_exit(&mut child, Duration::from_secs(30)).success());
    let (mut child, addr) = start(d, &[]);
    wait_until("the restored state", Duration::from_secs(60), || {
        http(
            &addr,
            "GET",
            "/api/jobs/stock-prices/state/session?key=AAPL",
        )
        .0 == 200
    });
    let (_, body) = http(
        &addr,
        "GET",
        "/api/jobs/stock-prices/state/session?key=AAPL",
    );
    let again: Value = serde_json::from_str(&body).unwrap();
    assert!(
        again["value"]["trades"].as_u64().unwrap() >= trades_before,
        "{again}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// `http:` in the job file serves the endpoint without `--http`.
#[test]
fn the_jobs_http_key_serves_the_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("job.yaml"),
        JOB.replace("parallelism: 2\n", "parallelism: 2\nhttp: 127.0.0.1:0\n"),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "job.yaml", "--no-progress"])
        .current_dir(d)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = lines
        .by_ref()
        .map(|l| l.unwrap())
        .find_map(|l| {
            l.strip_prefix("dashboard and REST API on http://")
                .map(|a| a.trim_end_matches('/').to_string())
        })
        .unwrap();
    std::thread::spawn(move || for _ in lines {});
    wait_until("the job listed", Duration::from_secs(30), || {
        get_json(&addr, "/api/jobs")["jobs"][0]["name"] == "ops-test"
    });
    let _ = child.kill();
    let _ = child.wait();
}
