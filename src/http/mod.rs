//! The HTTP endpoint of `weir run --http ADDR` (or `http:` in the job): Prometheus
//! metrics at `/metrics`, a JSON REST API under `/api` (jobs, their graph with per-node
//! and per-subtask metrics, checkpoint history, savepoint, stop, cancel), and the web
//! dashboard at `/` (one embedded HTML file).
//!
//! The server runs on a tokio runtime of its own (two worker threads), so a slow
//! or hostile client competes with the job for nothing but a core's time slice: handlers
//! only read the tasks' relaxed atomics (and a few short-held mutexes), never wait for a
//! task, and the job's tasks never wait for the server. Savepoints and stops are requests
//! to the checkpoint coordinator, answered when it is done.

pub mod load;
mod log;
mod prom;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use weir_engine::checkpoint::coordinator::CheckpointStats;
use weir_engine::metrics::{JobMetrics, COUNTED_KINDS};
use weir_engine::runtime::JobControl;

pub use log::{ErrorLog, ErrorLogLayer};
pub use prom::EXPORTED as EXPORTED_METRICS;

use crate::WeirError;

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    weir_engine::checkpoint::coordinator::now_ms()
}

/// A node of a job's graph, as the API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeInfo {
    /// Its name in the job.
    pub name: String,
    /// `source`, `step` or `sink`.
    pub kind: &'static str,
    /// Subtasks.
    pub parallelism: usize,
    /// The nodes it reads.
    pub inputs: Vec<String>,
}

impl NodeInfo {
    /// The nodes of `graph`, with their inputs.
    pub fn of(graph: &weir_engine::graph::LogicalGraph) -> Vec<NodeInfo> {
        graph
            .nodes
            .iter()
            .map(|n| NodeInfo {
                name: n.name.clone(),
                kind: n.kind_name(),
                parallelism: n.parallelism,
                inputs: graph
                    .inputs_of(n.id)
                    .iter()
                    .map(|e| graph.nodes[e.from.node].name.clone())
                    .collect(),
            })
            .collect()
    }
}

/// A job the endpoint serves.
pub struct JobEntry {
    /// Its name.
    pub name: String,
    nodes: Vec<NodeInfo>,
    metrics: Arc<JobMetrics>,
    checkpoints: Option<Arc<CheckpointStats>>,
    control: JobControl,
    status: Mutex<&'static str>,
    rates: Mutex<Rates>,
    queries: Arc<weir_engine::query::QueryRegistry>,
}

/// Per-node rates over the last sampling interval.
#[derive(Debug, Default)]
struct Rates {
    /// The previous sample: when (ms), and per node records in, out, busy and blocked
    /// nanoseconds.
    last: Option<(i64, Vec<[u64; 4]>)>,
    /// Per node: records in and out per second, busy and backpressured share of time.
    per_node: Vec<[f64; 4]>,
}

impl JobEntry {
    /// A running job.
    pub fn new(
        name: String,
        nodes: Vec<NodeInfo>,
        handle: &weir_engine::runtime::JobHandle,
    ) -> Arc<Self> {
        Arc::new(JobEntry {
            name,
            nodes,
            metrics: handle.metrics.clone(),
            checkpoints: handle.checkpoints.clone(),
            control: handle.control(),
            status: Mutex::new("running"),
            rates: Mutex::new(Rates::default()),
            queries: handle.queries.clone(),
        })
    }

    /// Takes a sample of the counters and updates the rates since the previous one.
    fn sample(&self) {
        let now = now_ms();
        let cur: Vec<[u64; 4]> = self
            .metrics
            .nodes
            .iter()
            .map(|(_, _, m)| {
                let subs = m.subtasks();
                [
                    m.records_in(),
                    m.records_out(),
                    subs.iter()
                        .map(|s| s.busy_nanos.load(Ordering::Relaxed))
                        .sum(),
                    subs.iter().map(|s| s.backpressure_nanos()).sum(),
                ]
            })
            .collect();
        let Ok(mut r) = self.rates.lock() else {
            return;
        };
        if let Some((then, prev)) = &r.last {
            let dt = (now - then) as f64 / 1e3;
            if dt > 0.0 && prev.len() == cur.len() {
                r.per_node = cur
                    .iter()
                    .zip(prev)
                    .zip(&self.nodes)
                    .map(|((c, p), info)| {
                        let d = |i: usize| c[i].saturating_sub(p[i]) as f64;
                        let wall = dt * 1e9 * info.parallelism.max(1) as f64;
                        [
                            d(0) / dt,
                            d(1) / dt,
                            (d(2) / wall).min(1.0),
                            (d(3) / wall).min(1.0),
                        ]
                    })
                    .collect();
            }
        }
        r.last = Some((now, cur));
    }

    fn rates(&self, node: usize) -> Option<[f64; 4]> {
        self.rates.lock().ok()?.per_node.get(node).copied()
    }

    /// Sets the status shown: `running`, `finished`, `failed`, `cancelled`, `stopped`.
    pub fn set_status(&self, status: &'static str) {
        if let Ok(mut s) = self.status.lock() {
            *s = status;
        }
    }

    fn status(&self) -> &'static str {
        self.status.lock().map(|s| *s).unwrap_or("unknown")
    }
}

impl std::fmt::Debug for JobEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobEntry")
            .field("name", &self.name)
            .finish()
    }
}

/// The jobs an endpoint serves.
#[derive(Debug, Clone, Default)]
pub struct Jobs(Arc<RwLock<Vec<Arc<JobEntry>>>>);

impl Jobs {
    fn list(&self) -> Vec<Arc<JobEntry>> {
        self.0.read().map(|j| j.clone()).unwrap_or_default()
    }

    fn get(&self, name: &str) -> Option<Arc<JobEntry>> {
        self.list().into_iter().find(|j| j.name == name)
    }
}

#[derive(Clone)]
struct AppState {
    jobs: Jobs,
    registry: Arc<prometheus_client::registry::Registry>,
    errors: ErrorLog,
}

/// A running endpoint. Dropping it stops the server.
pub struct HttpServer {
    jobs: Jobs,
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpServer {
    /// Binds `addr` (an error names it if it is taken) and serves on a thread of its own.
    /// `errors` is the log of warnings and errors the dashboard shows.
    pub fn start(addr: &str, errors: ErrorLog) -> Result<HttpServer, WeirError> {
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|e| WeirError::Command(format!("--http {addr}: cannot listen: {e}")))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| WeirError::Command(format!("--http {addr}: {e}")))?;
        let local = listener
            .local_addr()
            .map_err(|e| WeirError::Command(format!("--http {addr}: {e}")))?;
        let jobs = Jobs::default();
        let state = AppState {
            registry: prom::registry(jobs.clone()),
            jobs: jobs.clone(),
            errors,
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("weir-http")
            .enable_all()
            .build()
            .map_err(|e| WeirError::Command(format!("cannot start the HTTP runtime: {e}")))?;
        let thread = std::thread::Builder::new()
            .name("weir-http-main".into())
            .spawn(move || {
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!(error = %e, "HTTP endpoint: cannot listen");
                            return;
                        }
                    };
                    let sampled = state.jobs.clone();
                    tokio::spawn(async move {
                        let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
                        loop {
                            every.tick().await;
                            for j in sampled.list() {
                                j.sample();
                            }
                        }
                    });
                    let served = axum::serve(listener, router(state))
                        .with_graceful_shutdown(async {
                            let _ = rx.await;
                        })
                        .await;
                    if let Err(e) = served {
                        tracing::error!(error = %e, "HTTP endpoint stopped");
                    }
                });
            })
            .map_err(|e| WeirError::Command(format!("cannot start the HTTP thread: {e}")))?;
        tracing::info!(address = %local, "HTTP endpoint: metrics, REST API and dashboard");
        Ok(HttpServer {
            jobs,
            addr: local,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `job` from now on.
    pub fn add_job(&self, job: Arc<JobEntry>) {
        if let Ok(mut j) = self.jobs.0.write() {
            j.retain(|x| x.name != job.name);
            j.push(job);
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/jobs", get(list_jobs))
        .route("/jobs/{job}", get(job_detail))
        .route("/jobs/{job}/checkpoints", get(job_checkpoints))
        .route("/jobs/{job}/savepoint", post(savepoint))
        .route("/jobs/{job}/stop", post(stop))
        .route("/jobs/{job}/cancel", post(cancel))
        .route("/jobs/{job}/state/{step}", get(read_state));
    Router::new()
        .route("/", get(dashboard))
        .route("/metrics", get(metrics))
        .nest("/api", api.clone())
        .merge(api)
        .fallback(not_found)
        .with_state(state)
}

/// An error answer: JSON with the message and the status code.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.0,
            Json(json!({"error": self.1, "status": self.0.as_u16()})),
        )
            .into_response()
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

async fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "no such resource".into())
}

fn job_or_404(state: &AppState, name: &str) -> Result<Arc<JobEntry>, ApiError> {
    state.jobs.get(name).ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            format!(
                "no job `{name}` (jobs: {})",
                state
                    .jobs
                    .list()
                    .iter()
                    .map(|j| j.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })
}

async fn dashboard() -> Html<&'static str> {
    Html(include_str!("dashboard.html"))
}

async fn metrics(State(state): State<AppState>) -> Response {
    match prom::render(&state.registry) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics".into(),
        )
        .into_response(),
    }
}

fn job_summary(j: &JobEntry) -> Value {
    let started = j.metrics.started_ms.load(Ordering::Relaxed);
    json!({
        "name": j.name,
        "status": j.status(),
        "started_at_ms": started,
        "uptime_ms": (now_ms() - started).max(0),
    })
}

async fn list_jobs(State(state): State<AppState>) -> Json<Value> {
    let jobs: Vec<Value> = state.jobs.list().iter().map(|j| job_summary(j)).collect();
    Json(json!({ "jobs": jobs }))
}

fn checkpoints_json(j: &JobEntry) -> Value {
    let Some(c) = &j.checkpoints else {
        return json!({"enabled": false});
    };
    let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    json!({
        "enabled": true,
        "completed": g(&c.completed),
        "failed": g(&c.aborted),
        "last_epoch": g(&c.last_epoch),
        "latest_restore_point": c.latest_restore_point().map(|r| json!({
            "epoch": r.epoch, "kind": r.kind, "location": r.location,
        })),
        "history": c.history(),
    })
}

async fn job_detail(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult {
    let j = job_or_404(&state, &name)?;
    let now = now_ms();
    let started = j.metrics.started_ms.load(Ordering::Relaxed);
    let up_ms = (now - started).max(0) as f64;
    let mut nodes = Vec::new();
    for (n, (info, (_, _, m))) in j.nodes.iter().zip(&j.metrics.nodes).enumerate() {
        let rates = j.rates(n);
        let mut subtasks = Vec::new();
        let mut sums = [0u64; 7];
        let mut kinds = [0u64; COUNTED_KINDS.len()];
        let (mut busy, mut blocked) = (0u64, 0u64);
        let mut fills = Vec::new();
        let mut last_dead = None;
        for (i, s) in m.subtasks().iter().enumerate() {
            let v = [
                s.records_in.load(Ordering::Relaxed),
                s.records_out.load(Ordering::Relaxed),
                s.bytes_in.load(Ordering::Relaxed),
                s.bytes_out.load(Ordering::Relaxed),
                s.dead_letters.load(Ordering::Relaxed),
                s.late_records.load(Ordering::Relaxed),
                s.commit_nanos.load(Ordering::Relaxed),
            ];
            for (a, b) in sums.iter_mut().zip(v) {
                *a += b;
            }
            for (a, b) in kinds.iter_mut().zip(s.dead_letters_by_kind()) {
                *a += b;
            }
            let b = s.busy_nanos.load(Ordering::Relaxed) / 1_000_000;
            let bp = s.backpressure_nanos() / 1_000_000;
            busy += b;
            blocked += bp;
            let fill = s.input_queue_fill();
            fills.extend(fill);
            if last_dead.is_none() {
                last_dead = s.last_dead_letter();
            }
            subtasks.push(json!({
                "subtask": i,
                "records_in": v[0], "records_out": v[1], "bytes_in": v[2], "bytes_out": v[3],
                "dead_letters": v[4], "late_records": v[5],
                "busy_ms": b, "backpressured_ms": bp,
                "idle_ms": (up_ms as u64).saturating_sub(b + bp),
                "queue_fill": fill,
                "watermark_ms": s.watermark(),
                "source_lag": s.lag(),
                "commit_ms": (info.kind == "sink").then(|| v[6] as f64 / 1e6),
            }));
        }
        let p = m.subtasks().len() as u64;
        let watermark = m.watermark().filter(|w| *w > i64::MIN && *w < i64::MAX);
        let by_kind: serde_json::Map<String, Value> = COUNTED_KINDS
            .iter()
            .zip(kinds)
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| (k.to_string(), json!(n)))
            .collect();
        nodes.push(json!({
            "name": info.name,
            "kind": info.kind,
            "parallelism": info.parallelism,
            "inputs": info.inputs,
            "records_in": sums[0], "records_out": sums[1],
            "bytes_in": sums[2], "bytes_out": sums[3],
            "dead_letters": sums[4], "late_records": sums[5],
            "busy_ms": busy, "backpressured_ms": blocked,
            "idle_ms": (up_ms as u64 * p).saturating_sub(busy + blocked),
            "queue_fill": (!fills.is_empty()).then(|| fills.iter().sum::<f64>() / fills.len() as f64),
            "watermark_ms": watermark,
            "watermark_lag_ms": watermark.map(|w| now - w),
            "source_lag": m.lag(),
            "rate_in": rates.map(|r| r[0]),
            "rate_out": rates.map(|r| r[1]),
            "busy_ratio": rates.map(|r| r[2]),
            "backpressure_ratio": rates.map(|r| r[3]),
            "dead_letters_by_kind": by_kind,
            "last_dead_letter": last_dead,
            "subtasks": subtasks,
        }));
    }
    let mut out = job_summary(&j);
    out["now_ms"] = json!(now);
    out["nodes"] = Value::Array(nodes);
    out["checkpoints"] = checkpoints_json(&j);
    out["errors"] = json!(state.errors.latest());
    Ok(Json(out))
}

async fn job_checkpoints(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult {
    let j = job_or_404(&state, &name)?;
    Ok(Json(checkpoints_json(&j)))
}

fn running(j: &JobEntry) -> Result<(), ApiError> {
    match j.status() {
        "running" => Ok(()),
        s => Err(ApiError(
            StatusCode::CONFLICT,
            format!("job `{}` is {s}", j.name),
        )),
    }
}

fn engine_error(e: weir_engine::EngineError) -> ApiError {
    let m = e.to_string();
    let status = if m.contains("does not checkpoint") {
        StatusCode::CONFLICT
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    ApiError(status, m)
}

async fn savepoint(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult {
    let j = job_or_404(&state, &name)?;
    running(&j)?;
    let sp = j.control.savepoint().await.map_err(engine_error)?;
    Ok(Json(json!({"savepoint": sp})))
}

#[derive(Deserialize)]
struct StopQuery {
    /// `false`: stop with a checkpoint instead of a savepoint.
    savepoint: Option<bool>,
}

async fn stop(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<StopQuery>,
) -> ApiResult {
    let j = job_or_404(&state, &name)?;
    running(&j)?;
    if q.savepoint == Some(false) || j.checkpoints.is_none() {
        j.control.stop();
        j.set_status("stopping");
        return Ok(Json(json!({"stopping": true, "savepoint": null})));
    }
    let sp = j
        .control
        .stop_with_savepoint()
        .await
        .map_err(engine_error)?;
    j.set_status("stopped");
    Ok(Json(json!({"stopped": true, "savepoint": sp})))
}

async fn cancel(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult {
    let j = job_or_404(&state, &name)?;
    running(&j)?;
    j.control.abort();
    j.set_status("cancelled");
    Ok(Json(json!({"cancelled": true})))
}

#[derive(Deserialize)]
struct StateQuery {
    /// One key: its value (a JSON array of values for a key of several columns).
    key: Option<String>,
    /// A scan: keys starting with this text.
    prefix: Option<String>,
    /// A scan: keys after this one (the previous page's `next_after`).
    after: Option<String>,
    /// A scan: at most this many (default 100, at most 10000).
    limit: Option<usize>,
}

/// Most keys one scan returns.
const MAX_SCAN: usize = 10_000;

async fn read_state(
    State(state): State<AppState>,
    Path((name, step)): Path<(String, String)>,
    Query(q): Query<StateQuery>,
) -> ApiResult {
    use weir_engine::query::QueryError;
    let j = job_or_404(&state, &name)?;
    let err = |e: QueryError| match e {
        QueryError::NotFound(m) => ApiError(StatusCode::NOT_FOUND, m),
        QueryError::BadKey(m) => ApiError(StatusCode::BAD_REQUEST, m),
        QueryError::Unavailable(m) => ApiError(StatusCode::SERVICE_UNAVAILABLE, m),
        QueryError::Failed(m) => ApiError(StatusCode::INTERNAL_SERVER_ERROR, m),
    };
    if let Some(key) = q.key {
        let parts: Vec<String> = if key.trim_start().starts_with('[') {
            let v: Vec<Value> = serde_json::from_str(&key).map_err(|e| {
                ApiError(
                    StatusCode::BAD_REQUEST,
                    format!("key `{key}`: not a JSON array of values: {e}"),
                )
            })?;
            v.into_iter()
                .map(|x| match x {
                    Value::String(s) => s,
                    other => other.to_string(),
                })
                .collect()
        } else {
            vec![key.clone()]
        };
        let value = j.queries.get(&step, &parts).await.map_err(err)?;
        return match value {
            Some(v) => Ok(Json(json!({"key": key, "value": v}))),
            None => Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("no value for key `{key}` in `{step}`"),
            )),
        };
    }
    let limit = q.limit.unwrap_or(100).min(MAX_SCAN);
    let entries = j
        .queries
        .scan(&step, q.prefix, q.after, limit)
        .await
        .map_err(err)?;
    let next = (entries.len() == limit)
        .then(|| entries.last().map(|(k, _)| k.clone()))
        .flatten();
    let entries: Vec<Value> = entries
        .into_iter()
        .map(|(k, v)| json!({"key": k, "value": v}))
        .collect();
    Ok(Json(json!({"entries": entries, "next_after": next})))
}

/// Bounded, for the error log.
pub(crate) fn push_bounded<T>(q: &mut VecDeque<T>, item: T, max: usize) {
    if q.len() == max {
        q.pop_front();
    }
    q.push_back(item);
}
