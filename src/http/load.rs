//! A load generator for queryable state (`weir query-load`): `clients` concurrent
//! HTTP/1.1 keep-alive connections, each reading random keys of a `table` step in a
//! closed loop for a while; reports lookups per second and latency percentiles. Used by
//! `benches/query_load.sh`; plain TCP and a minimal response reader, so that the client
//! costs little next to the job on the same machine.

use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::WeirError;

/// What to load.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// `host:port` of the endpoint.
    pub addr: String,
    /// The request path up to the key, e.g. `/api/jobs/j/state/t?key=`.
    pub path_prefix: String,
    /// Keys are `0..keys`, in text.
    pub keys: u64,
    /// Concurrent connections.
    pub clients: usize,
    /// How long.
    pub duration: Duration,
}

/// What the load measured.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Answers with status 200.
    pub ok: u64,
    /// Answers with another status.
    pub not_ok: u64,
    /// Lookups per second (all answers).
    pub per_second: f64,
    /// Latency percentiles, microseconds.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Largest.
    pub max_us: u64,
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.0} lookups/s ({} ok, {} not 200), latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.per_second,
            self.ok,
            self.not_ok,
            self.p50_us as f64 / 1e3,
            self.p99_us as f64 / 1e3,
            self.max_us as f64 / 1e3
        )
    }
}

/// One client: lookups in a closed loop until `until`; latencies in µs and statuses.
async fn client(spec: LoadSpec, seed: u64, until: Instant) -> Result<(Vec<u32>, u64), String> {
    let stream = TcpStream::connect(&spec.addr)
        .await
        .map_err(|e| format!("connect {}: {e}", spec.addr))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut x = seed | 1;
    let mut lat = Vec::new();
    let mut not_ok = 0u64;
    let mut line = String::new();
    let mut body = Vec::new();
    while Instant::now() < until {
        // xorshift: a uniform key.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let key = x % spec.keys.max(1);
        let req = format!(
            "GET {}{key} HTTP/1.1\r\nHost: {}\r\n\r\n",
            spec.path_prefix, spec.addr
        );
        let started = Instant::now();
        w.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        // Status line, headers, then Content-Length bytes.
        line.clear();
        r.read_line(&mut line).await.map_err(|e| e.to_string())?;
        if !line.starts_with("HTTP/1.1 200") {
            not_ok += 1;
        }
        let mut len = 0usize;
        loop {
            line.clear();
            if r.read_line(&mut line).await.map_err(|e| e.to_string())? == 0 {
                return Err("connection closed".into());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        body.resize(len, 0);
        r.read_exact(&mut body).await.map_err(|e| e.to_string())?;
        lat.push(started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
    }
    Ok((lat, not_ok))
}

/// Runs the load and reports.
pub async fn run(spec: LoadSpec) -> Result<LoadReport, WeirError> {
    let until = Instant::now() + spec.duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..spec.clients {
        let seed = 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(c as u64 + 1);
        tasks.push(tokio::spawn(client(spec.clone(), seed, until)));
    }
    let mut all: Vec<u32> = Vec::new();
    let mut not_ok = 0;
    for t in tasks {
        let (lat, bad) = t
            .await
            .map_err(|e| WeirError::Command(format!("a client failed: {e}")))?
            .map_err(|m| WeirError::Command(format!("a client failed: {m}")))?;
        all.extend(lat);
        not_ok += bad;
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |q: f64| -> u64 {
        if all.is_empty() {
            return 0;
        }
        let i = ((q * all.len() as f64).ceil() as usize).clamp(1, all.len()) - 1;
        u64::from(all[i])
    };
    let n = all.len() as u64;
    Ok(LoadReport {
        ok: n - not_ok,
        not_ok,
        per_second: n as f64 / secs,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        max_us: all.last().map_or(0, |&m| u64::from(m)),
    })
}
