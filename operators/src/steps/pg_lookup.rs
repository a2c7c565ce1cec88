//! `enrich` from a PostgreSQL table: for each batch, the keys not in the cache are looked
//! up with one query (`WHERE key = ANY($1)`), the answers (and the keys not found) are
//! cached for `cache.ttl` in an LRU cache of `cache.size` keys, and the table's columns
//! are added.
//!
//! ```yaml
//! steps:
//!   with_merchant:
//!     from: payments
//!     enrich:
//!       table:
//!         type: postgres
//!         connection: "${REFERENCE_DB}"
//!         name: merchants
//!         schema: { merchant_id: string, merchant_name: string, risk: int }
//!       on: { merchant_id: merchant_id }
//!       cache: { size: 100000, ttl: 1m }
//!       missing: null
//! ```
//!
//! Each subtask has one connection, owned by a thread of its own, and at most one query
//! in flight: the step waits for the answer, so a slow database slows the job down
//! (backpressure) instead of queueing lookups without bound. A query that fails for a
//! reason a new connection may cure (connection lost, server restarting, out of
//! resources) is retried with exponential backoff and jitter for `unavailable_timeout`;
//! then the records that needed an answer become dead letters (kind `lookup`, the error
//! in the reason; `weir dlq replay` can bring them back) and the job goes on. The table
//! and its columns are checked when the job starts.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hashlink::LruCache;

use arrow::array::{Array, ArrayRef, StringArray, UInt32Array};
use arrow::compute::kernels::cast::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use weir_engine::graph::DEAD_LETTER_OUTPUT;
use weir_engine::operator::{Collector, Operator, OperatorContext};
use weir_engine::registry::FieldError;
use weir_engine::source::dead_letters_to_batch;
use weir_engine::{EngineError, Result};

use super::row_errors::{self, row_dead_letter};

/// Settings of a PostgreSQL lookup table.
#[derive(Debug, Clone)]
pub(super) struct PgTable {
    pub connection: String,
    /// `name` or `schema.name` as written.
    pub name: String,
    pub key_column: String,
    /// Columns to add, with their types.
    pub columns: Vec<(String, DataType)>,
    pub cache_size: usize,
    pub cache_ttl: Duration,
    pub unavailable_timeout: Duration,
}

fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn qualified(name: &str) -> String {
    name.split('.').map(ident).collect::<Vec<_>>().join(".")
}

/// An answer: for each key found, its columns as text (`None` for null).
type Rows = Vec<(String, Vec<Option<String>>)>;

/// A key's columns as text (`None` for null), shared by the cache and the batch using them.
type Columns = Arc<Vec<Option<String>>>;

/// The answers of a lookup step: least recently used keys go first when it is full, and
/// an answer older than the TTL is not served (it is fetched again).
pub(super) struct LookupCache {
    /// Key → (when fetched, the columns, or None: not in the table).
    entries: LruCache<String, (Instant, Option<Columns>)>,
    ttl: Duration,
}

impl LookupCache {
    pub(super) fn new(size: usize, ttl: Duration) -> Self {
        LookupCache {
            entries: LruCache::new(size.max(1)),
            ttl,
        }
    }

    /// The answer for `key` if one younger than the TTL is cached (`Some(None)`: the key is
    /// not in the table); marks the key as used.
    pub(super) fn get(&mut self, key: &str) -> Option<Option<Columns>> {
        match self.entries.get(key) {
            Some((at, v)) if at.elapsed() < self.ttl => Some(v.clone()),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Caches an answer fetched now, pushing out the least recently used key when full.
    pub(super) fn put(&mut self, key: String, value: Option<Columns>) {
        self.entries.insert(key, (Instant::now(), value));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

struct Request {
    keys: Vec<String>,
    reply: mpsc::Sender<std::result::Result<Rows, String>>,
}

/// A connection on a thread of its own, answering one lookup at a time.
struct Worker {
    requests: mpsc::SyncSender<Request>,
}

impl Worker {
    /// Starts the thread, connects, and checks the table (the key column's type is
    /// read for the query). Errors are for the user.
    fn start(table: Arc<PgTable>) -> std::result::Result<Worker, String> {
        let (tx, rx) = mpsc::sync_channel::<Request>(1);
        let (ready_tx, ready_rx) = mpsc::channel::<std::result::Result<(), String>>();
        std::thread::Builder::new()
            .name("weir-pg-lookup".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("cannot start a runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(serve(table, rx, ready_tx));
            })
            .map_err(|e| format!("cannot start the lookup thread: {e}"))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Worker { requests: tx }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("the lookup thread ended".into()),
        }
    }

    fn lookup(&self, keys: Vec<String>) -> std::result::Result<Rows, String> {
        let (reply, answer) = mpsc::channel();
        self.requests
            .send(Request { keys, reply })
            .map_err(|_| "the lookup connection ended".to_string())?;
        answer
            .recv()
            .map_err(|_| "the lookup connection ended".to_string())?
    }
}

fn transient(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        None => true,
        Some(c) => {
            let c = c.code();
            c.starts_with("08") || c.starts_with("53") || c.starts_with("57P")
        }
    }
}

fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => {
            let mut s = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(inner) = source {
                s.push_str(&format!(": {inner}"));
                source = inner.source();
            }
            s
        }
    }
}

async fn connect(
    table: &PgTable,
) -> std::result::Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) =
        tokio_postgres::connect(&table.connection, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "lookup connection ended");
        }
    });
    Ok(client)
}

/// The worker thread: connect and check, then answer requests until the sender goes.
async fn serve(
    table: Arc<PgTable>,
    requests: mpsc::Receiver<Request>,
    ready: mpsc::Sender<std::result::Result<(), String>>,
) {
    let mut client = match connect(&table).await {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot connect: {}", error_text(&e))));
            return;
        }
    };
    // The key column's type, so that the key list is cast to it (an index applies).
    let (schema_name, table_name) = match table.name.split_once('.') {
        Some((s, t)) => (Some(s.to_string()), t.to_string()),
        None => (None, table.name.clone()),
    };
    let cols = match client
        .query(
            "SELECT column_name, format_type(a.atttypid, a.atttypmod) \
             FROM information_schema.columns c \
             JOIN pg_attribute a ON a.attrelid = (quote_ident(c.table_schema) || '.' || quote_ident(c.table_name))::regclass \
               AND a.attname = c.column_name \
             WHERE c.table_schema = COALESCE($1, current_schema()) AND c.table_name = $2",
            &[&schema_name, &table_name],
        )
        .await
    {
        Ok(rows) => rows
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect::<Vec<_>>(),
        Err(e) => {
            let _ = ready.send(Err(format!("reading the table's columns: {}", error_text(&e))));
            return;
        }
    };
    if cols.is_empty() {
        let _ = ready.send(Err(format!("the table `{}` does not exist", table.name)));
        return;
    }
    let Some(key_type) = cols
        .iter()
        .find(|c| c.0 == table.key_column)
        .map(|c| c.1.clone())
    else {
        let _ = ready.send(Err(format!(
            "the table has no key column `{}`",
            table.key_column
        )));
        return;
    };
    for (c, _) in &table.columns {
        if !cols.iter().any(|t| &t.0 == c) {
            let _ = ready.send(Err(format!(
                "the table has no column `{c}` (columns: {})",
                cols.iter()
                    .map(|t| t.0.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
            return;
        }
    }
    let select: Vec<String> = std::iter::once(&table.key_column)
        .chain(table.columns.iter().map(|(c, _)| c))
        .map(|c| format!("{}::text", ident(c)))
        .collect();
    let sql = format!(
        "SELECT {} FROM {} WHERE {} = ANY($1::text[]::{key_type}[])",
        select.join(", "),
        qualified(&table.name),
        ident(&table.key_column)
    );
    let _ = ready.send(Ok(()));
    while let Ok(req) = requests.recv() {
        let start = Instant::now();
        let mut delay = Duration::from_millis(100);
        let answer = loop {
            match client.query(&sql, &[&req.keys]).await {
                Ok(rows) => {
                    break Ok(rows
                        .iter()
                        .map(|r| {
                            let key: Option<String> = r.get(0);
                            (
                                key.unwrap_or_default(),
                                (1..r.len())
                                    .map(|i| r.get::<_, Option<String>>(i))
                                    .collect(),
                            )
                        })
                        .collect());
                }
                Err(e) if transient(&e) && start.elapsed() < table.unavailable_timeout => {
                    tracing::warn!(table = %table.name, error = %error_text(&e), "lookup failed; retrying");
                    let jitter =
                        Duration::from_millis(u64::from(start.elapsed().subsec_nanos() % 100));
                    tokio::time::sleep(delay + jitter).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    if let Ok(c) = connect(&table).await {
                        client = c;
                    }
                }
                Err(e) => {
                    break Err(format!(
                        "looking up keys in `{}`: {}",
                        table.name,
                        error_text(&e)
                    ))
                }
            }
        };
        let _ = req.reply.send(answer);
    }
}

/// Checks the table when the job is built: connects, finds the table and its columns.
pub(super) fn check(table: &Arc<PgTable>) -> std::result::Result<(), FieldError> {
    Worker::start(table.clone())
        .map(|_| ())
        .map_err(|m| FieldError::at("/table", m))
}

/// The lookup operator of one subtask.
pub(super) struct PgLookupOperator {
    table: Arc<PgTable>,
    worker: Option<Worker>,
    stream_key: usize,
    stream_key_name: String,
    missing: super::enrich::MissingMode,
    output: SchemaRef,
    cache: LookupCache,
    seen: u64,
}

impl PgLookupOperator {
    pub(super) fn new(
        table: Arc<PgTable>,
        stream_key: usize,
        stream_key_name: String,
        missing: super::enrich::MissingMode,
        input: &SchemaRef,
    ) -> Self {
        let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.extend(
            table
                .columns
                .iter()
                .map(|(c, t)| Field::new(c, t.clone(), true)),
        );
        PgLookupOperator {
            output: Arc::new(Schema::new(fields)),
            cache: LookupCache::new(table.cache_size, table.cache_ttl),
            table,
            worker: None,
            stream_key,
            stream_key_name,
            missing,
            seen: 0,
        }
    }
}

/// The output schema of a lookup step.
pub(super) fn output_schema(input: &SchemaRef, table: &PgTable) -> SchemaRef {
    let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.extend(
        table
            .columns
            .iter()
            .map(|(c, t)| Field::new(c, t.clone(), true)),
    );
    Arc::new(Schema::new(fields))
}

impl Operator for PgLookupOperator {
    fn open(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        let w = Worker::start(self.table.clone()).map_err(|m| {
            EngineError::operator(
                &ctx.operator,
                format!("PostgreSQL table `{}`: {m}", self.table.name),
            )
        })?;
        self.worker = Some(w);
        Ok(())
    }

    fn process_batch(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        ctx: &mut OperatorContext,
        out: &mut Collector,
    ) -> Result<()> {
        let base = self.seen;
        self.seen += batch.num_rows() as u64;
        let keys = cast(batch.column(self.stream_key), &DataType::Utf8)
            .map_err(|e| EngineError::arrow("enrich", e))?;
        let keys = keys
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| EngineError::operator(&ctx.operator, "keys are not text"))?
            .clone();
        // The answers for this batch's keys: from the cache, or fetched for the batch
        // (kept here, so a batch with more keys than the cache holds is answered too).
        let mut answers: HashMap<&str, Option<Columns>> = HashMap::new();
        let mut failed: Option<String> = None;
        let mut wanted: Vec<&str> = Vec::new();
        let mut asked: std::collections::HashSet<&str> = std::collections::HashSet::new();
        for i in 0..keys.len() {
            if !keys.is_valid(i) {
                continue;
            }
            let k = keys.value(i);
            if answers.contains_key(k) || asked.contains(k) {
                continue;
            }
            match self.cache.get(k) {
                Some(v) => {
                    answers.insert(k, v);
                }
                None => {
                    asked.insert(k);
                    wanted.push(k);
                }
            }
        }
        if !wanted.is_empty() {
            let worker = self
                .worker
                .as_ref()
                .ok_or_else(|| EngineError::operator(&ctx.operator, "lookup before open"))?;
            match worker.lookup(wanted.iter().map(|k| k.to_string()).collect()) {
                Ok(rows) => {
                    let mut rows: HashMap<String, Columns> =
                        rows.into_iter().map(|(k, v)| (k, Arc::new(v))).collect();
                    for k in wanted {
                        let v = rows.remove(k);
                        self.cache.put(k.to_string(), v.clone());
                        answers.insert(k, v);
                    }
                }
                Err(m) => {
                    // Retried until `unavailable_timeout`: the records that needed an
                    // answer become dead letters (replayable later), the job goes on. A
                    // stale answer is not served instead.
                    failed = Some(m);
                }
            }
        }
        let found: Vec<Option<&Columns>> = (0..keys.len())
            .map(|i| {
                if keys.is_valid(i) {
                    answers.get(keys.value(i)).and_then(|v| v.as_ref())
                } else {
                    None
                }
            })
            .collect();
        use super::enrich::MissingMode;
        // Rows whose key could not be looked up (the database stayed unreachable).
        let unanswered: Vec<bool> = (0..keys.len())
            .map(|i| failed.is_some() && keys.is_valid(i) && !answers.contains_key(keys.value(i)))
            .collect();
        let keep: Vec<u32> = match self.missing {
            MissingMode::Null => (0..found.len() as u32)
                .filter(|&i| !unanswered[i as usize])
                .collect(),
            _ => (0..found.len() as u32)
                .filter(|&i| found[i as usize].is_some())
                .collect(),
        };
        let dead_letter_missing = self.missing == MissingMode::DeadLetter;
        if keep.len() < found.len() && (dead_letter_missing || failed.is_some()) {
            let mut letters = Vec::new();
            for (i, f) in found.iter().enumerate() {
                if f.is_some() || !(dead_letter_missing || unanswered[i]) {
                    continue;
                }
                let key = if keys.is_valid(i) {
                    format!("`{}`", keys.value(i))
                } else {
                    "null".to_string()
                };
                let reason = match (&failed, unanswered[i]) {
                    (Some(m), true) => format!(
                        "step `{}`: lookup of {} = {key} failed after retries: {m}",
                        ctx.operator, self.stream_key_name
                    ),
                    _ => format!(
                        "step `{}`: no row in PostgreSQL table {} for {} = {key}",
                        ctx.operator, self.table.name, self.stream_key_name
                    ),
                };
                letters.push(row_dead_letter(
                    &ctx.operator,
                    &batch,
                    i,
                    base + i as u64,
                    "lookup",
                    reason,
                ));
            }
            out.emit_side(DEAD_LETTER_OUTPUT, dead_letters_to_batch(&letters)?);
        }
        if keep.is_empty() {
            return Ok(());
        }
        let take = UInt32Array::from(keep.clone());
        let mut columns: Vec<ArrayRef> = Vec::new();
        for c in batch.columns() {
            columns.push(
                arrow::compute::take(c, &take, None)
                    .map_err(|e| EngineError::arrow("enrich", e))?,
            );
        }
        for (j, (name, dt)) in self.table.columns.iter().enumerate() {
            let text: StringArray = keep
                .iter()
                .map(|&i| found[i as usize].and_then(|v| v.get(j).cloned().flatten()))
                .collect();
            let typed = cast(&text, dt).map_err(|e| {
                EngineError::operator(
                    &ctx.operator,
                    format!(
                        "column `{name}` of `{}` does not read as {dt}: {e}",
                        self.table.name
                    ),
                )
            })?;
            columns.push(typed);
        }
        let joined = RecordBatch::try_new(self.output.clone(), columns)
            .map_err(|e| EngineError::arrow("enrich", e))?;
        out.emit(joined);
        Ok(())
    }

    fn side_outputs(&self) -> Vec<(String, SchemaRef)> {
        row_errors::side_outputs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(v: &str) -> Option<Columns> {
        Some(Arc::new(vec![Some(v.to_string())]))
    }

    #[test]
    fn the_least_recently_used_key_goes_first() {
        let mut c = LookupCache::new(2, Duration::from_secs(60));
        c.put("a".into(), cols("1"));
        c.put("b".into(), cols("2"));
        // `a` is used, so `b` is the least recently used when `c` comes.
        assert!(c.get("a").is_some());
        c.put("c".into(), None);
        assert_eq!(c.len(), 2);
        assert!(c.get("b").is_none(), "b was the least recently used");
        assert_eq!(c.get("a"), Some(cols("1")));
        assert_eq!(
            c.get("c"),
            Some(None),
            "a key not in the table is cached as such"
        );
    }

    #[test]
    fn an_answer_older_than_the_ttl_is_not_served() {
        let mut c = LookupCache::new(10, Duration::from_millis(30));
        c.put("a".into(), cols("1"));
        assert!(c.get("a").is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert!(c.get("a").is_none());
        assert_eq!(c.len(), 0, "the stale answer is dropped");
    }
}
