//! The PostgreSQL sink (`type: postgres`): rows into a table, by `COPY` (text format),
//! inserted or upserted on a key, at least once or exactly once.
//!
//! ```yaml
//! sinks:
//!   db:
//!     from: enriched
//!     type: postgres
//!     connection: "host=127.0.0.1 user=weir password=${PGPASSWORD} dbname=payments"
//!     table: payments
//!     mode: upsert            # or insert (the default)
//!     key: [payment_id]       # upsert: the conflict key (default: the primary key)
//! ```
//!
//! **Exactly once** (`delivery: exactly_once`, the default; needs checkpoints). The rows
//! of epoch `n` (between barriers `n-1` and `n`) are held by the sink subtask, handed to
//! checkpoint `n` at its barrier (`checkpoint_data`, so they are durable before the
//! checkpoint is acknowledged), and written when checkpoint `n` completes, in **one
//! database transaction with the sink's progress row** in the progress table
//! (`weir_sink_progress`: job, sink, subtask → token, epoch). The protocol:
//!
//! 1. `pre_commit(n)`: the epoch's rows move to the pending set; the checkpoint stores
//!    them with this subtask's **token** (random, one per process and subtask) and the
//!    list of pending epochs.
//! 2. `commit(n)`: one transaction locks the progress row (`SELECT … FOR UPDATE`). If it
//!    already says (our token, ≥ the newest pending epoch), the epochs were committed
//!    (a retry after a lost reply): nothing is written. Otherwise the pending epochs'
//!    rows are copied in, the row is set to (our token, n), and the transaction commits.
//! 3. Restoring from checkpoint `n`: for every old subtask whose stream this subtask
//!    takes over, the same transaction with the old token: if the progress row says (old
//!    token, ≥ n), the commit happened before the crash and the replay is skipped;
//!    otherwise the stored rows are written with the progress row. Rows written after
//!    checkpoint `n` by the crashed process were never committed (a transaction dies
//!    with its connection), and the sources replay them.
//!
//! A job started over (`--fresh`) gets new tokens, so a progress row of an earlier run
//! never hides new rows. The cost: an epoch's rows are held in memory and stored once in
//! the checkpoint, and become visible one checkpoint interval (plus the commit) later.
//!
//! **At least once** (`delivery: at_least_once`): rows are copied in autocommitted
//! batches as they come and at every barrier; a restore may write some again (use
//! `mode: upsert` to absorb them).
//!
//! While running, a lost connection is retried with exponential backoff and jitter for
//! up to `unavailable_timeout` (reconnecting; the commit's progress check makes the
//! retry safe); only then does the job fail. Errors at start (unreachable server,
//! refused credentials, missing table, a column that does not match) name the field.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use bytes::{Bytes, BytesMut};
use futures::SinkExt;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};
use weir_engine::error::{EngineError, Result};
use weir_engine::registry::{BuildContext, Checkpointing, FieldError, SinkBuild, SinkFactory};
use weir_engine::sink::{Sink, SinkContext, SinkRecovery};

use crate::options::{duration_option, expand_env, new_token, parse_options, schema_for};

/// Default name of the progress table.
pub const DEFAULT_PROGRESS_TABLE: &str = "weir_sink_progress";

/// Rows buffered before an at-least-once sink copies them in.
const AT_LEAST_ONCE_BATCH_ROWS: usize = 8192;

/// Options of `type: postgres` sinks.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct PostgresSinkOptions {
    /// The server and credentials: `host=… port=… user=… password=… dbname=…` or a
    /// `postgresql://user:password@host:port/dbname` URL. `${NAME}` is the environment
    /// variable NAME; the password is never printed.
    connection: String,
    /// The table, `name` or `schema.name`.
    table: String,
    /// `insert` (the default: every row is a new table row) or `upsert` (a row whose
    /// key is already in the table replaces it: `INSERT … ON CONFLICT (key) DO UPDATE`).
    #[serde(default)]
    mode: Mode,
    /// Upsert: the table columns of the conflict key (a primary key or unique
    /// constraint). Default: the table's primary key.
    key: Option<Vec<String>>,
    /// Table column → stream column, where their names differ. Every other stream
    /// column goes to the table column of the same name.
    #[serde(default)]
    columns: BTreeMap<String, String>,
    /// Create the table when it does not exist, with a column per stream column (and
    /// the key as primary key). Default: a missing table is an error at start.
    #[serde(default)]
    create_table: bool,
    /// `exactly_once` (the default; needs checkpoints) or `at_least_once`.
    delivery: Option<Delivery>,
    /// Exactly once: the table of the sinks' progress (default `weir_sink_progress`,
    /// created when missing).
    progress_table: Option<String>,
    /// Where rows the database refuses (a value too long, a constraint broken) go, as
    /// dead letters, in the same transaction as the rest (default `weir_sink_rejects`,
    /// created when missing; `weir dlq summary --postgres … --table …` reads it).
    rejects_table: Option<String>,
    /// How long connecting at start may take (default 10s).
    connect_timeout: Option<String>,
    /// How long the server may stay unreachable while running before the job fails
    /// (default 60s); writes are retried with backoff meanwhile.
    unavailable_timeout: Option<String>,
}

/// How rows meet rows already in the table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
enum Mode {
    /// `COPY` into the table.
    #[default]
    Insert,
    /// `INSERT … ON CONFLICT (key) DO UPDATE` from a staging table; within one commit
    /// the last row of a key wins.
    Upsert,
}

/// The delivery guarantee.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
enum Delivery {
    /// Rows and progress in one transaction per checkpoint.
    ExactlyOnce,
    /// Rows copied as they come; a restore may repeat some.
    AtLeastOnce,
}

/// Factory of `type: postgres` sinks.
#[derive(Debug, Clone, Copy, Default)]
pub struct PostgresSinkFactory;

/// A stream column and where it goes.
#[derive(Debug, Clone)]
struct Column {
    /// Index in the input batch.
    index: usize,
    /// Table column name.
    table: String,
    /// Stream column name.
    stream: String,
    /// The stream column's type.
    data_type: DataType,
}

/// A sink's settings, shared by its subtasks.
#[derive(Debug)]
struct Config {
    name: String,
    connection: String,
    /// `host:port` for messages (no credentials).
    server: String,
    /// `schema.table` or `table` as written (each part quoted for SQL in `table_sql`).
    table: String,
    table_sql: String,
    mode: Mode,
    key: Option<Vec<String>>,
    columns: Vec<Column>,
    create_table: bool,
    delivery: Delivery,
    progress_table: String,
    rejects_table: String,
    connect_timeout: Duration,
    unavailable_timeout: Duration,
}

impl Config {
    /// An error of this sink.
    fn err(&self, what: impl std::fmt::Display) -> EngineError {
        EngineError::connector(
            format!(
                "postgres sink {} (table {} at {})",
                self.name, self.table, self.server
            ),
            what.to_string(),
            false,
        )
    }
}

/// Quotes an SQL identifier (`"a""b"`).
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a possibly schema-qualified name part by part.
fn qualified(name: &str) -> String {
    name.split('.').map(ident).collect::<Vec<_>>().join(".")
}

/// The PostgreSQL type a new table gives a stream column.
fn pg_type_for(dt: &DataType) -> &'static str {
    match dt {
        DataType::Boolean => "boolean",
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => "smallint",
        DataType::Int32 | DataType::UInt16 => "integer",
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => "bigint",
        DataType::Float16 | DataType::Float32 => "real",
        DataType::Float64 => "double precision",
        DataType::Decimal128(..) | DataType::Decimal256(..) => "numeric",
        DataType::Timestamp(..) => "timestamptz",
        DataType::Date32 | DataType::Date64 => "date",
        DataType::Binary | DataType::LargeBinary => "bytea",
        DataType::Struct(_) | DataType::List(_) | DataType::LargeList(_) => "jsonb",
        _ => "text",
    }
}

/// Whether a stream column of `dt` can be written into a table column of PostgreSQL
/// type `udt` (information_schema's `udt_name`). Text goes anywhere PostgreSQL parses
/// it (a string into `numeric`, `uuid`, `jsonb`, … is parsed by the server).
fn compatible(dt: &DataType, udt: &str) -> bool {
    let numeric = matches!(
        udt,
        "int2" | "int4" | "int8" | "float4" | "float8" | "numeric" | "money"
    );
    let text = matches!(udt, "text" | "varchar" | "bpchar" | "name" | "citext");
    match dt {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Boolean => udt == "bool" || text,
        d if d.is_integer() || d.is_floating() || matches!(d, DataType::Decimal128(..)) => {
            numeric || text
        }
        DataType::Timestamp(..) => matches!(udt, "timestamptz" | "timestamp" | "date") || text,
        DataType::Date32 | DataType::Date64 => {
            matches!(udt, "date" | "timestamptz" | "timestamp") || text
        }
        DataType::Binary | DataType::LargeBinary => udt == "bytea",
        DataType::Struct(_) | DataType::List(_) | DataType::LargeList(_) => {
            matches!(udt, "json" | "jsonb") || text
        }
        _ => text,
    }
}

impl SinkFactory for PostgresSinkFactory {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn options_schema(&self) -> Value {
        schema_for::<PostgresSinkOptions>()
    }

    fn build(
        &self,
        ctx: &BuildContext,
        name: &str,
        options: &Value,
        input: SchemaRef,
    ) -> std::result::Result<SinkBuild, FieldError> {
        let o: PostgresSinkOptions = parse_options(options)?;
        let connection = expand_env(&o.connection).map_err(|m| FieldError::at("/connection", m))?;
        let pg: tokio_postgres::Config = connection.parse().map_err(|e| {
            FieldError::at(
                "/connection",
                format!("not a PostgreSQL connection string or URL: {e}"),
            )
        })?;
        let server = describe_server(&pg);
        if o.table.trim().is_empty() || o.table.split('.').any(|p| p.trim().is_empty()) {
            return Err(FieldError::at("/table", "expected `name` or `schema.name`"));
        }
        let mut stream_to_table: BTreeMap<String, String> = BTreeMap::new();
        for (table_col, stream_col) in &o.columns {
            if input.index_of(stream_col).is_err() {
                return Err(FieldError::at(
                    format!("/columns/{}", crate::options::pointer_segment(table_col)),
                    format!(
                        "unknown stream column `{stream_col}` (columns: {})",
                        column_names(&input)
                    ),
                ));
            }
            stream_to_table.insert(stream_col.clone(), table_col.clone());
        }
        let columns: Vec<Column> = input
            .fields()
            .iter()
            .enumerate()
            .map(|(index, f)| Column {
                index,
                table: stream_to_table
                    .get(f.name())
                    .cloned()
                    .unwrap_or_else(|| f.name().clone()),
                stream: f.name().clone(),
                data_type: f.data_type().clone(),
            })
            .collect();
        if let Some(key) = &o.key {
            if key.is_empty() {
                return Err(FieldError::at("/key", "must name at least one column"));
            }
            for (i, k) in key.iter().enumerate() {
                if !columns.iter().any(|c| &c.table == k) {
                    return Err(FieldError::at(
                        format!("/key/{i}"),
                        format!(
                            "`{k}` is not a column the sink writes (table columns: {})",
                            columns
                                .iter()
                                .map(|c| c.table.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
            }
        }
        if o.mode == Mode::Insert && o.key.is_some() && !o.create_table {
            return Err(FieldError::at(
                "/key",
                "a key is used by `mode: upsert` (or as the primary key with `create_table: \
                 true`); remove it or set `mode: upsert`",
            ));
        }
        let delivery = o.delivery.unwrap_or(Delivery::ExactlyOnce);
        if delivery == Delivery::ExactlyOnce && ctx.checkpoints == Checkpointing::Off {
            return Err(FieldError::at(
                "/delivery",
                "exactly_once needs checkpoints (rows are committed with them): add a \
                 `checkpoint:` section, or write `delivery: at_least_once`",
            ));
        }
        let progress_table = o
            .progress_table
            .clone()
            .unwrap_or_else(|| DEFAULT_PROGRESS_TABLE.to_string());
        let config = Arc::new(Config {
            name: name.to_string(),
            connection,
            server: server.clone(),
            table_sql: qualified(&o.table),
            table: o.table.clone(),
            mode: o.mode,
            key: o.key.clone(),
            columns,
            create_table: o.create_table,
            delivery,
            progress_table,
            rejects_table: o
                .rejects_table
                .clone()
                .unwrap_or_else(|| "weir_sink_rejects".to_string()),
            connect_timeout: duration_option(
                &o.connect_timeout,
                "/connect_timeout",
                Duration::from_secs(10),
            )?,
            unavailable_timeout: duration_option(
                &o.unavailable_timeout,
                "/unavailable_timeout",
                Duration::from_secs(60),
            )?,
        });
        let delivery_text = match delivery {
            Delivery::ExactlyOnce => "exactly once",
            Delivery::AtLeastOnce => "at least once",
        };
        let mode_text = match o.mode {
            Mode::Insert => "insert",
            Mode::Upsert => "upsert",
        };
        let describe = format!(
            "postgres table {} at {server} ({mode_text}, {delivery_text})",
            o.table
        );
        let output = format!("PostgreSQL table {} at {server}", o.table);
        Ok(SinkBuild::new(
            describe,
            Arc::new(move |sctx: &SinkContext| {
                Ok(Box::new(PostgresSink::new(config.clone(), sctx)) as Box<dyn Sink>)
            }),
        )
        .output(output))
    }
}

fn column_names(schema: &SchemaRef) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `host:port[,host:port…]` of a connection, for messages.
fn describe_server(pg: &tokio_postgres::Config) -> String {
    let ports = pg.get_ports();
    let hosts: Vec<String> = pg
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            };
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect();
    if hosts.is_empty() {
        "localhost:5432".to_string()
    } else {
        hosts.join(",")
    }
}

/// Whether an error is worth a retry with a new connection: the connection broke or
/// the server is starting, stopping or out of resources, or the transaction lost a
/// serialization race. Data errors (bad values, constraint violations) are not.
fn transient(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        None => true, // I/O: the connection broke
        Some(code) => {
            let c = code.code();
            c.starts_with("08") // connection exception
                || c.starts_with("53") // insufficient resources
                || c.starts_with("57P") // admin shutdown, crash shutdown, cannot connect now
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
        }
    }
}

/// One sink subtask.
struct PostgresSink {
    config: Arc<Config>,
    job: String,
    subtask: usize,
    token: String,
    client: Option<Client>,
    /// The epoch being written (exactly once) or rows not yet copied (at least once).
    current: Vec<RecordBatch>,
    current_rows: usize,
    /// Pre-committed epochs not yet committed, oldest first.
    pending: BTreeMap<u64, Vec<RecordBatch>>,
    /// The upsert key (table columns), resolved at open.
    key: Vec<String>,
    /// Whether this connection has its staging table (upsert).
    staged: bool,
    schema: Option<SchemaRef>,
}

impl PostgresSink {
    fn new(config: Arc<Config>, ctx: &SinkContext) -> Self {
        PostgresSink {
            config,
            job: ctx.job.clone(),
            subtask: ctx.subtask,
            token: new_token(),
            client: None,
            current: Vec::new(),
            current_rows: 0,
            pending: BTreeMap::new(),
            key: Vec::new(),
            staged: false,
            schema: None,
        }
    }

    fn err(&self, what: impl std::fmt::Display) -> EngineError {
        self.config.err(what)
    }

    /// Connects (within `connect_timeout`), with a task that drives the connection.
    async fn connect(&self) -> std::result::Result<Client, tokio_postgres::Error> {
        let mut pg: tokio_postgres::Config = self
            .config
            .connection
            .parse()
            .map_err(|e: tokio_postgres::Error| e)?;
        pg.connect_timeout(self.config.connect_timeout);
        if pg.get_application_name().is_none() {
            pg.application_name(format!("weir {} {}", self.job, self.config.name));
        }
        let (client, connection) = pg.connect(NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "PostgreSQL connection ended");
            }
        });
        Ok(client)
    }

    /// The connection, reconnecting if it broke.
    async fn client(&mut self) -> std::result::Result<&mut Client, tokio_postgres::Error> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.staged = false;
            self.client = Some(self.connect().await?);
        }
        match self.client.as_mut() {
            Some(c) => Ok(c),
            None => unreachable!("set above"),
        }
    }

    /// Runs `op` (one transaction) until it succeeds, retrying transient errors with
    /// exponential backoff and jitter for up to `unavailable_timeout`.
    async fn with_retries<F>(&mut self, what: &str, mut op: F) -> Result<()>
    where
        F: for<'a> FnMut(
            &'a mut PostgresSink,
        ) -> std::pin::Pin<
            Box<
                dyn std::future::Future<Output = std::result::Result<(), tokio_postgres::Error>>
                    + Send
                    + 'a,
            >,
        >,
    {
        let start = Instant::now();
        let mut delay = Duration::from_millis(100);
        let mut warned = false;
        loop {
            match op(self).await {
                Ok(()) => {
                    if warned {
                        tracing::info!(sink = %self.config.name, "PostgreSQL reachable again");
                    }
                    return Ok(());
                }
                Err(e) if transient(&e) && start.elapsed() < self.config.unavailable_timeout => {
                    if !warned {
                        tracing::warn!(
                            sink = %self.config.name,
                            server = %self.config.server,
                            error = %e,
                            "PostgreSQL unavailable while {what}; retrying for up to {}",
                            weir_engine::time::format_duration(self.config.unavailable_timeout)
                        );
                        warned = true;
                    }
                    self.client = None;
                    let jitter =
                        Duration::from_millis(u64::from(start.elapsed().subsec_nanos() % 100));
                    tokio::time::sleep(delay + jitter).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) if transient(&e) => {
                    return Err(self.err(format!(
                        "unreachable for {} while {what}: {}",
                        weir_engine::time::format_duration(self.config.unavailable_timeout),
                        error_text(&e)
                    )))
                }
                Err(e) => return Err(self.err(format!("{what}: {}", error_text(&e)))),
            }
        }
    }

    /// Checks the table against the stream (creating it if asked), resolves the upsert
    /// key, and creates the progress table.
    async fn prepare(&mut self) -> Result<()> {
        let config = self.config.clone();
        let (schema_name, table_name) = match config.table.split_once('.') {
            Some((s, t)) => (Some(s.to_string()), t.to_string()),
            None => (None, config.table.clone()),
        };
        let client = match self.client().await {
            Ok(c) => c,
            Err(e) => return Err(self.start_error(&e)),
        };
        let lookup =
            "SELECT column_name, udt_name, is_nullable = 'YES', column_default IS NOT NULL \
                      FROM information_schema.columns \
                      WHERE table_schema = COALESCE($1, current_schema()) AND table_name = $2 \
                      ORDER BY ordinal_position";
        let mut rows = client
            .query(lookup, &[&schema_name, &table_name])
            .await
            .map_err(|e| config.err(format!("reading the table's columns: {}", error_text(&e))))?;
        if rows.is_empty() {
            if !config.create_table {
                return Err(
                    self.err("the table does not exist (create it, or set `create_table: true`)")
                );
            }
            self.create_table().await?;
            let client = self
                .client()
                .await
                .map_err(|e| config.err(error_text(&e)))?;
            rows = client
                .query(lookup, &[&schema_name, &table_name])
                .await
                .map_err(|e| {
                    config.err(format!("reading the table's columns: {}", error_text(&e)))
                })?;
        }
        let table_columns: Vec<(String, String, bool, bool)> = rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect();
        for c in &config.columns {
            match table_columns.iter().find(|t| t.0 == c.table) {
                None => {
                    return Err(self.err(format!(
                        "the table has no column `{}` for the stream's `{}` (table columns: {}; \
                         map names with `columns:`)",
                        c.table,
                        c.stream,
                        table_columns
                            .iter()
                            .map(|t| t.0.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )))
                }
                Some((_, udt, _, _)) if !compatible(&c.data_type, udt) => {
                    return Err(self.err(format!(
                        "column `{}` is `{udt}` in the table but the stream's `{}` is {}",
                        c.table,
                        c.stream,
                        weir_engine::spec::field_type_text(&c.data_type, false)
                    )))
                }
                _ => {}
            }
        }
        for (name, _, nullable, has_default) in &table_columns {
            if !nullable && !has_default && !config.columns.iter().any(|c| &c.table == name) {
                return Err(self.err(format!(
                    "the table's column `{name}` is NOT NULL without a default, and the \
                     stream has no column for it"
                )));
            }
        }
        if config.mode == Mode::Upsert {
            self.key = match &config.key {
                Some(k) => k.clone(),
                None => {
                    let client = self
                        .client()
                        .await
                        .map_err(|e| config.err(error_text(&e)))?;
                    let pk = client
                        .query(
                            "SELECT a.attname FROM pg_index i \
                             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                             WHERE i.indrelid = $1::text::regclass AND i.indisprimary",
                            &[&config.table_sql],
                        )
                        .await
                        .map_err(|e| config.err(format!("reading the primary key: {}", error_text(&e))))?;
                    let key: Vec<String> = pk.iter().map(|r| r.get(0)).collect();
                    if key.is_empty() {
                        return Err(self.err(
                            "`mode: upsert` needs a key: the table has no primary key, so name \
                             the columns of a unique constraint with `key:`",
                        ));
                    }
                    key
                }
            };
            for k in self.key.clone() {
                if !config.columns.iter().any(|c| c.table == k) {
                    return Err(self.err(format!(
                        "the upsert key column `{k}` is not written by the sink"
                    )));
                }
            }
        }
        let rejects = qualified(&config.rejects_table);
        self.ddl(
            &format!(
                "CREATE TABLE IF NOT EXISTS {rejects} (job text NOT NULL, sink text NOT NULL, \
                 reason text NOT NULL, source text NOT NULL, position bigint NOT NULL, \
                 payload text NOT NULL, step text NOT NULL, kind text NOT NULL, \
                 time timestamptz NOT NULL DEFAULT now())"
            ),
            "creating the rejects table",
        )
        .await?;
        if config.delivery == Delivery::ExactlyOnce {
            let progress = qualified(&config.progress_table);
            let sql = format!(
                "CREATE TABLE IF NOT EXISTS {progress} (job text NOT NULL, sink text NOT NULL, \
                 subtask integer NOT NULL, token text NOT NULL, epoch bigint NOT NULL, \
                 updated timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (job, sink, subtask))"
            );
            self.ddl(&sql, "creating the progress table").await?;
        }
        Ok(())
    }

    /// Runs DDL under a transaction-level advisory lock, so that subtasks creating the
    /// same table at once do not collide.
    async fn ddl(&mut self, sql: &str, what: &str) -> Result<()> {
        let config = self.config.clone();
        let client = self
            .client()
            .await
            .map_err(|e| config.err(error_text(&e)))?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| config.err(format!("{what}: {}", error_text(&e))))?;
        let r = async {
            tx.execute("SELECT pg_advisory_xact_lock(7403)", &[])
                .await?;
            tx.batch_execute(sql).await?;
            tx.commit().await
        }
        .await;
        r.map_err(|e| config.err(format!("{what}: {}", error_text(&e))))
    }

    async fn create_table(&mut self) -> Result<()> {
        let config = self.config.clone();
        let mut cols: Vec<String> = config
            .columns
            .iter()
            .map(|c| format!("{} {}", ident(&c.table), pg_type_for(&c.data_type)))
            .collect();
        if let Some(key) = &config.key {
            cols.push(format!(
                "PRIMARY KEY ({})",
                key.iter().map(|k| ident(k)).collect::<Vec<_>>().join(", ")
            ));
        } else if config.mode == Mode::Upsert {
            return Err(self.err(
                "`create_table` with `mode: upsert` needs `key:` (the new table's primary key)",
            ));
        }
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {} ({})",
            config.table_sql,
            cols.join(", ")
        );
        self.ddl(&sql, "creating the table").await?;
        tracing::info!(sink = %config.name, table = %config.table, "created the table");
        Ok(())
    }

    fn start_error(&self, e: &tokio_postgres::Error) -> EngineError {
        match e.code() {
            Some(c)
                if *c == SqlState::INVALID_PASSWORD
                    || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
            {
                self.err(format!(
                    "the server refused the credentials of `connection`: {}",
                    error_text(e)
                ))
            }
            Some(c) if *c == SqlState::INVALID_CATALOG_NAME => {
                self.err(format!("the database does not exist: {}", error_text(e)))
            }
            _ => self.err(format!(
                "cannot connect within {} (is the server running and `connection` right?): {}",
                weir_engine::time::format_duration(self.config.connect_timeout),
                error_text(e)
            )),
        }
    }

    /// Creates this connection's staging table for upserts (once; it lives with the
    /// session and empties at each commit).
    async fn ensure_stage(
        tx: &tokio_postgres::Transaction<'_>,
        config: &Config,
        staged: &mut bool,
    ) -> std::result::Result<(), tokio_postgres::Error> {
        if *staged || config.mode != Mode::Upsert {
            return Ok(());
        }
        let cols = config
            .columns
            .iter()
            .map(|c| ident(&c.table))
            .collect::<Vec<_>>()
            .join(", ");
        tx.batch_execute(&format!(
            "CREATE TEMP TABLE IF NOT EXISTS weir_stage ON COMMIT DELETE ROWS AS \
             SELECT {cols} FROM {} WITH NO DATA; \
             ALTER TABLE weir_stage ADD COLUMN IF NOT EXISTS weir_seq bigserial",
            config.table_sql
        ))
        .await?;
        *staged = true;
        Ok(())
    }

    /// Writes `batches` inside `tx` like [`Self::copy_rows`], isolating the rows the
    /// database refuses: each attempt runs under a savepoint; a data error (SQLSTATE
    /// classes 22 and 23: a value out of range or too long, a constraint broken) rolls
    /// it back and the rows are split in halves and tried again, down to single rows.
    /// Refused rows go to the rejects table as dead letters in the same transaction, so
    /// one bad row never stops the job and exactly once holds for them too.
    async fn write_rows(
        tx: &tokio_postgres::Transaction<'_>,
        config: &Config,
        key: &[String],
        staged: &mut bool,
        batches: &[RecordBatch],
        job: &str,
        label: &str,
    ) -> std::result::Result<usize, tokio_postgres::Error> {
        Self::ensure_stage(tx, config, staged).await?;
        let mut stack: Vec<(u64, Vec<RecordBatch>)> = vec![(0, batches.to_vec())];
        let mut rejects: Vec<(u64, RecordBatch, String)> = Vec::new();
        let mut n_savepoint = 0u64;
        while let Some((first_row, unit)) = stack.pop() {
            n_savepoint += 1;
            let sp = format!("weir_rows_{n_savepoint}");
            tx.batch_execute(&format!("SAVEPOINT {sp}")).await?;
            let refs: Vec<&RecordBatch> = unit.iter().collect();
            match Self::copy_rows(tx, config, key, staged, &refs).await {
                Ok(_) => tx.batch_execute(&format!("RELEASE SAVEPOINT {sp}")).await?,
                Err(e) if data_error(&e) => {
                    tx.batch_execute(&format!(
                        "ROLLBACK TO SAVEPOINT {sp}; RELEASE SAVEPOINT {sp}"
                    ))
                    .await?;
                    let n: usize = unit.iter().map(RecordBatch::num_rows).sum();
                    if n == 1 {
                        if let Some(b) = unit.into_iter().find(|b| b.num_rows() == 1) {
                            rejects.push((first_row, b, error_text(&e)));
                        }
                    } else {
                        let (a, b) = split_rows(&unit, n / 2);
                        // Second half below the first on the stack: rows go in order.
                        stack.push((first_row + (n / 2) as u64, b));
                        stack.push((first_row, a));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        if !rejects.is_empty() {
            let table = qualified(&config.rejects_table);
            let sql = format!(
                "INSERT INTO {table} (job, sink, reason, source, position, payload, step, kind) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 'sink')"
            );
            for (position, row, reason) in &rejects {
                let payload = row_json(row);
                let position = i64::try_from(*position).unwrap_or(i64::MAX);
                let reason = format!(
                    "sink `{}`: the database refused the row: {reason}",
                    config.name
                );
                tx.execute(
                    &sql,
                    &[
                        &job,
                        &config.name,
                        &reason,
                        &label,
                        &position,
                        &payload,
                        &config.name,
                    ],
                )
                .await?;
            }
            tracing::warn!(
                sink = %config.name,
                rows = rejects.len(),
                table = %config.rejects_table,
                "the database refused rows; they are dead letters in the rejects table"
            );
        }
        Ok(rejects.len())
    }

    /// Copies `batches` into the table inside `tx` (directly, or through the staging
    /// table for upserts).
    async fn copy_rows(
        tx: &tokio_postgres::Transaction<'_>,
        config: &Config,
        key: &[String],
        staged: &mut bool,
        batches: &[&RecordBatch],
    ) -> std::result::Result<u64, tokio_postgres::Error> {
        if batches.iter().all(|b| b.num_rows() == 0) {
            return Ok(0);
        }
        let cols = config
            .columns
            .iter()
            .map(|c| ident(&c.table))
            .collect::<Vec<_>>()
            .join(", ");
        let target = match config.mode {
            Mode::Insert => config.table_sql.clone(),
            Mode::Upsert => {
                Self::ensure_stage(tx, config, staged).await?;
                "weir_stage".to_string()
            }
        };
        let sink = tx
            .copy_in::<_, Bytes>(&format!("COPY {target} ({cols}) FROM STDIN"))
            .await?;
        futures::pin_mut!(sink);
        for batch in batches {
            for chunk in encode_copy_text(config, batch) {
                sink.send(chunk).await?;
            }
        }
        let n = sink.finish().await?;
        if config.mode == Mode::Upsert {
            let keys = key.iter().map(|k| ident(k)).collect::<Vec<_>>().join(", ");
            let updates: Vec<String> = config
                .columns
                .iter()
                .filter(|c| !key.contains(&c.table))
                .map(|c| format!("{0} = EXCLUDED.{0}", ident(&c.table)))
                .collect();
            let action = if updates.is_empty() {
                "NOTHING".to_string()
            } else {
                format!("UPDATE SET {}", updates.join(", "))
            };
            tx.batch_execute(&format!(
                "INSERT INTO {} ({cols}) SELECT DISTINCT ON ({keys}) {cols} FROM weir_stage \
                 ORDER BY {keys}, weir_seq DESC ON CONFLICT ({keys}) DO {action}; \
                 DELETE FROM weir_stage",
                config.table_sql
            ))
            .await?;
        }
        Ok(n)
    }

    /// One transaction: unless the progress row of `subtask` already says (`token`,
    /// ≥ `epoch`), copies `batches` in and sets the row to (`token`, `epoch`).
    /// Returns whether it wrote.
    async fn commit_stream(
        &mut self,
        subtask: usize,
        token: String,
        epoch: u64,
        batches: Vec<RecordBatch>,
    ) -> Result<bool> {
        let wrote = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let batches = Arc::new(batches);
        let what = format!("committing epoch {epoch}");
        let w = wrote.clone();
        self.with_retries(&what, move |sink| {
            let batches = batches.clone();
            let token = token.clone();
            let wrote = w.clone();
            Box::pin(async move {
                let config = sink.config.clone();
                let job = sink.job.clone();
                let key = sink.key.clone();
                let mut staged = sink.staged;
                let client = sink.client().await?;
                let tx = client.transaction().await?;
                let progress = qualified(&config.progress_table);
                let sub = i32::try_from(subtask).unwrap_or(i32::MAX);
                let epoch_i = i64::try_from(epoch).unwrap_or(i64::MAX);
                let row = tx
                    .query_opt(
                        &format!(
                            "SELECT token, epoch FROM {progress} WHERE job = $1 AND sink = $2 \
                             AND subtask = $3 FOR UPDATE"
                        ),
                        &[&job, &config.name, &sub],
                    )
                    .await?;
                let done = row.is_some_and(|r| {
                    r.get::<_, String>(0) == token && r.get::<_, i64>(1) >= epoch_i
                });
                if done {
                    tx.rollback().await?;
                    wrote.store(false, std::sync::atomic::Ordering::Relaxed);
                    return Ok(());
                }
                let label = format!("sink {} epoch {epoch}", config.name);
                Self::write_rows(&tx, &config, &key, &mut staged, &batches, &job, &label).await?;
                tx.execute(
                    &format!(
                        "INSERT INTO {progress} (job, sink, subtask, token, epoch) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (job, sink, subtask) DO UPDATE \
                         SET token = EXCLUDED.token, epoch = EXCLUDED.epoch, updated = now()"
                    ),
                    &[&job, &config.name, &sub, &token, &epoch_i],
                )
                .await?;
                tx.commit().await?;
                // Committed, and the engine does not know yet: the replay case.
                weir_engine::fault::point("during_commit");
                sink.staged = staged;
                wrote.store(true, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            })
        })
        .await?;
        Ok(wrote.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// At least once: copies the buffered rows in one autocommitted transaction.
    async fn flush(&mut self) -> Result<()> {
        if self.current.is_empty() {
            return Ok(());
        }
        let batches = Arc::new(std::mem::take(&mut self.current));
        self.current_rows = 0;
        self.with_retries("writing rows", move |sink| {
            let batches = batches.clone();
            Box::pin(async move {
                let config = sink.config.clone();
                let key = sink.key.clone();
                let mut staged = sink.staged;
                let job = sink.job.clone();
                let label = format!("sink {}", config.name);
                let client = sink.client().await?;
                let tx = client.transaction().await?;
                Self::write_rows(&tx, &config, &key, &mut staged, &batches, &job, &label).await?;
                tx.commit().await?;
                sink.staged = staged;
                Ok(())
            })
        })
        .await
    }
}

/// A batch's rows in `COPY`'s text format, in chunks of about 1 MiB.
fn encode_copy_text(config: &Config, batch: &RecordBatch) -> Vec<Bytes> {
    let encoders: Vec<TextColumn> = config
        .columns
        .iter()
        .map(|c| TextColumn::new(batch.column(c.index)))
        .collect();
    let mut chunks = Vec::new();
    let mut buf = BytesMut::with_capacity(1 << 20);
    let mut line = String::new();
    for row in 0..batch.num_rows() {
        line.clear();
        for (i, e) in encoders.iter().enumerate() {
            if i > 0 {
                line.push('\t');
            }
            e.write(row, &mut line);
        }
        line.push('\n');
        buf.extend_from_slice(line.as_bytes());
        if buf.len() >= 1 << 20 {
            chunks.push(buf.split().freeze());
        }
    }
    if !buf.is_empty() {
        chunks.push(buf.freeze());
    }
    chunks
}

/// A value or a constraint the database refuses (SQLSTATE classes 22 and 23): the rows'
/// fault, not the connection's.
fn data_error(e: &tokio_postgres::Error) -> bool {
    e.code()
        .is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("23"))
}

/// `rows` split after `k` rows (zero-copy slices).
fn split_rows(rows: &[RecordBatch], k: usize) -> (Vec<RecordBatch>, Vec<RecordBatch>) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let mut left = k;
    for batch in rows {
        let n = batch.num_rows();
        if left >= n {
            a.push(batch.clone());
            left -= n;
        } else if left == 0 {
            b.push(batch.clone());
        } else {
            a.push(batch.slice(0, left));
            b.push(batch.slice(left, n - left));
            left = 0;
        }
    }
    (a, b)
}

/// A one-row batch as a JSON object.
fn row_json(row: &RecordBatch) -> String {
    let mut w = arrow::json::LineDelimitedWriter::new(Vec::new());
    if w.write(row).and_then(|()| w.finish()).is_err() {
        return String::new();
    }
    String::from_utf8_lossy(&w.into_inner())
        .trim_end()
        .to_string()
}

/// The server's message with its detail and hint, or the I/O error.
fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = db.message().to_string();
            if let Some(d) = db.detail() {
                let _ = write!(s, " ({d})");
            }
            if let Some(h) = db.hint() {
                let _ = write!(s, "; hint: {h}");
            }
            s
        }
        None => {
            let mut s = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(inner) = source {
                let _ = write!(s, ": {inner}");
                source = inner.source();
            }
            s
        }
    }
}

#[async_trait::async_trait]
impl Sink for PostgresSink {
    async fn open(&mut self, _ctx: &SinkContext) -> Result<()> {
        self.prepare().await
    }

    async fn write_batch(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.schema.is_none() {
            self.schema = Some(batch.schema());
        }
        self.current_rows += batch.num_rows();
        self.current.push(batch);
        if self.config.delivery == Delivery::AtLeastOnce
            && self.current_rows >= AT_LEAST_ONCE_BATCH_ROWS
        {
            self.flush().await?;
        }
        Ok(())
    }

    async fn pre_commit(&mut self, epoch: u64) -> Result<Value> {
        if self.config.delivery == Delivery::AtLeastOnce {
            self.flush().await?;
            return Ok(Value::Null);
        }
        let rows = std::mem::take(&mut self.current);
        self.current_rows = 0;
        self.pending.insert(epoch, rows);
        Ok(json!({
            "subtask": self.subtask,
            "token": self.token,
            "epochs": self.pending.keys().collect::<Vec<_>>(),
        }))
    }

    fn checkpoint_data(&mut self) -> Option<Vec<u8>> {
        if self.config.delivery == Delivery::AtLeastOnce {
            return None;
        }
        let batches: Vec<&RecordBatch> = self.pending.values().flatten().collect();
        match encode_batches(&batches) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                // Cannot happen for batches the sink accepted; the commit then writes
                // them anyway, and a restore from this checkpoint writes nothing.
                tracing::error!(sink = %self.config.name, error = %e, "cannot encode the epoch's rows for the checkpoint");
                None
            }
        }
    }

    async fn commit(&mut self, epoch: u64) -> Result<()> {
        if self.config.delivery == Delivery::AtLeastOnce {
            return Ok(());
        }
        let newest = match self.pending.range(..=epoch).next_back() {
            Some((e, _)) => *e,
            None => return Ok(()),
        };
        let mut rows = Vec::new();
        let done: Vec<u64> = self.pending.range(..=epoch).map(|(e, _)| *e).collect();
        for e in &done {
            if let Some(b) = self.pending.get(e) {
                rows.extend(b.iter().cloned());
            }
        }
        self.commit_stream(self.subtask, self.token.clone(), newest, rows)
            .await?;
        for e in done {
            self.pending.remove(&e);
        }
        Ok(())
    }

    async fn recover(&mut self, recovery: &SinkRecovery) -> Result<()> {
        if self.config.delivery == Delivery::AtLeastOnce {
            return Ok(());
        }
        for (i, pending) in recovery.pending.iter().enumerate() {
            let (Some(token), Some(subtask)) = (
                pending.get("token").and_then(Value::as_str),
                pending.get("subtask").and_then(Value::as_u64),
            ) else {
                continue;
            };
            let batches = match recovery.data.get(i).and_then(Option::as_ref) {
                Some(bytes) => decode_batches(bytes).map_err(|m| {
                    self.err(format!(
                        "reading the rows stored in checkpoint {}: {m}",
                        recovery.epoch
                    ))
                })?,
                None => Vec::new(),
            };
            let subtask = usize::try_from(subtask).unwrap_or(usize::MAX);
            let n: usize = batches.iter().map(RecordBatch::num_rows).sum();
            let wrote = self
                .commit_stream(subtask, token.to_string(), recovery.epoch, batches)
                .await?;
            if wrote {
                tracing::info!(
                    sink = %self.config.name, old_subtask = subtask, epoch = recovery.epoch, rows = n,
                    "restored: wrote the rows of a checkpoint whose commit was lost"
                );
            } else {
                tracing::info!(
                    sink = %self.config.name, old_subtask = subtask, epoch = recovery.epoch,
                    "restored: the checkpoint's rows were committed before the stop"
                );
            }
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        self.flush().await
    }
}

/// Encodes batches as one Arrow IPC stream (empty input: no bytes).
fn encode_batches(batches: &[&RecordBatch]) -> std::result::Result<Vec<u8>, String> {
    let Some(first) = batches.first() else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    {
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut out, &first.schema())
            .map_err(|e| e.to_string())?;
        for b in batches {
            w.write(b).map_err(|e| e.to_string())?;
        }
        w.finish().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// Decodes what [`encode_batches`] wrote.
fn decode_batches(bytes: &[u8]) -> std::result::Result<Vec<RecordBatch>, String> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
        .map_err(|e| e.to_string())?;
    reader
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
}

/// Writes one column's values in `COPY`'s text format.
enum TextColumn<'a> {
    Null,
    Other(ArrayFormatter<'a>, &'a ArrayRef),
    Int(Box<dyn Fn(usize) -> Option<i128> + 'a>),
    Float(Box<dyn Fn(usize) -> Option<f64> + 'a>),
    Bool(&'a arrow::array::BooleanArray),
    Timestamp(Box<dyn Fn(usize) -> Option<i64> + 'a>, TimeUnit),
    Utf8(&'a arrow::array::StringArray),
    LargeUtf8(&'a arrow::array::LargeStringArray),
}

impl<'a> TextColumn<'a> {
    fn new(array: &'a ArrayRef) -> TextColumn<'a> {
        use arrow::datatypes::*;
        macro_rules! int {
            ($t:ty) => {{
                let a = array.as_primitive::<$t>();
                TextColumn::Int(Box::new(move |i| {
                    a.is_valid(i).then(|| i128::from(a.value(i)))
                }))
            }};
        }
        match array.data_type() {
            DataType::Utf8 => TextColumn::Utf8(array.as_string::<i32>()),
            DataType::LargeUtf8 => TextColumn::LargeUtf8(array.as_string::<i64>()),
            DataType::Boolean => TextColumn::Bool(array.as_boolean()),
            DataType::Int8 => int!(Int8Type),
            DataType::Int16 => int!(Int16Type),
            DataType::Int32 => int!(Int32Type),
            DataType::Int64 => int!(Int64Type),
            DataType::UInt8 => int!(UInt8Type),
            DataType::UInt16 => int!(UInt16Type),
            DataType::UInt32 => int!(UInt32Type),
            DataType::UInt64 => int!(UInt64Type),
            DataType::Float32 => {
                let a = array.as_primitive::<Float32Type>();
                TextColumn::Float(Box::new(move |i| {
                    a.is_valid(i).then(|| f64::from(a.value(i)))
                }))
            }
            DataType::Float64 => {
                let a = array.as_primitive::<Float64Type>();
                TextColumn::Float(Box::new(move |i| a.is_valid(i).then(|| a.value(i))))
            }
            DataType::Timestamp(unit, _) => {
                let unit = *unit;
                let get: Box<dyn Fn(usize) -> Option<i64> + 'a> = match unit {
                    TimeUnit::Second => {
                        let a = array.as_primitive::<TimestampSecondType>();
                        Box::new(move |i| a.is_valid(i).then(|| a.value(i)))
                    }
                    TimeUnit::Millisecond => {
                        let a = array.as_primitive::<TimestampMillisecondType>();
                        Box::new(move |i| a.is_valid(i).then(|| a.value(i)))
                    }
                    TimeUnit::Microsecond => {
                        let a = array.as_primitive::<TimestampMicrosecondType>();
                        Box::new(move |i| a.is_valid(i).then(|| a.value(i)))
                    }
                    TimeUnit::Nanosecond => {
                        let a = array.as_primitive::<TimestampNanosecondType>();
                        Box::new(move |i| a.is_valid(i).then(|| a.value(i)))
                    }
                };
                TextColumn::Timestamp(get, unit)
            }
            _ => {
                let opts = FormatOptions::default().with_null("\u{0}NULL");
                match ArrayFormatter::try_new(array.as_ref(), &opts) {
                    Ok(f) => TextColumn::Other(f, array),
                    Err(_) => TextColumn::Null,
                }
            }
        }
    }

    /// Appends row `i`'s value (`\N` for null), escaped for `COPY … FROM STDIN`.
    fn write(&self, i: usize, out: &mut String) {
        match self {
            TextColumn::Utf8(a) => {
                if a.is_valid(i) {
                    escape_into(a.value(i), out);
                } else {
                    out.push_str("\\N");
                }
            }
            TextColumn::LargeUtf8(a) => {
                if a.is_valid(i) {
                    escape_into(a.value(i), out);
                } else {
                    out.push_str("\\N");
                }
            }
            TextColumn::Null => out.push_str("\\N"),
            TextColumn::Int(f) => match f(i) {
                Some(v) => {
                    let _ = write!(out, "{v}");
                }
                None => out.push_str("\\N"),
            },
            TextColumn::Float(f) => match f(i) {
                Some(v) if v.is_nan() => out.push_str("NaN"),
                Some(v) if v.is_infinite() => {
                    out.push_str(if v > 0.0 { "Infinity" } else { "-Infinity" })
                }
                Some(v) => {
                    let _ = write!(out, "{v}");
                }
                None => out.push_str("\\N"),
            },
            TextColumn::Bool(a) => {
                if a.is_valid(i) {
                    out.push(if a.value(i) { 't' } else { 'f' });
                } else {
                    out.push_str("\\N");
                }
            }
            TextColumn::Timestamp(f, unit) => match f(i) {
                Some(v) => {
                    let micros = match unit {
                        TimeUnit::Second => v.saturating_mul(1_000_000),
                        TimeUnit::Millisecond => v.saturating_mul(1_000),
                        TimeUnit::Microsecond => v,
                        TimeUnit::Nanosecond => v.div_euclid(1_000),
                    };
                    match chrono::DateTime::from_timestamp_micros(micros) {
                        Some(t) => {
                            let _ = write!(out, "{}", t.format("%Y-%m-%d %H:%M:%S%.6f+00"));
                        }
                        None => out.push_str("\\N"),
                    }
                }
                None => out.push_str("\\N"),
            },
            TextColumn::Other(f, array) => {
                if array.is_valid(i) {
                    escape_into(&f.value(i).to_string(), out);
                } else {
                    out.push_str("\\N");
                }
            }
        }
    }
}

/// Escapes a value for `COPY`'s text format: backslash, tab, newline, carriage return.
fn escape_into(s: &str, out: &mut String) {
    if !s.contains(['\\', '\t', '\n', '\r']) {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests fail loudly on purpose.
mod tests {
    use super::*;
    use arrow::array::{
        BooleanArray, Float64Array, Int64Array, StringArray, TimestampMillisecondArray,
    };
    use arrow::datatypes::{Field, Schema};

    #[test]
    fn copy_text_escapes_and_nulls() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("s", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
            Field::new("f", DataType::Float64, true),
            Field::new("b", DataType::Boolean, true),
            Field::new("t", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![Some("a\tb\\c\nd"), None])),
                Arc::new(Int64Array::from(vec![Some(-5), None])),
                Arc::new(Float64Array::from(vec![Some(1.5), Some(f64::NAN)])),
                Arc::new(BooleanArray::from(vec![Some(true), None])),
                Arc::new(TimestampMillisecondArray::from(vec![
                    Some(1_767_225_600_123),
                    None,
                ])),
            ],
        )
        .unwrap();
        let cols: Vec<TextColumn> = batch.columns().iter().map(TextColumn::new).collect();
        let line = |r| {
            let mut s = String::new();
            for (i, c) in cols.iter().enumerate() {
                if i > 0 {
                    s.push('|');
                }
                c.write(r, &mut s);
            }
            s
        };
        assert_eq!(
            line(0),
            "a\\tb\\\\c\\nd|-5|1.5|t|2026-01-01 00:00:00.123000+00"
        );
        assert_eq!(line(1), "\\N|\\N|NaN|\\N|\\N");
    }

    #[test]
    fn checkpointed_rows_read_back() {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let a = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![1, 2]))])
            .unwrap();
        let b = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![3]))]).unwrap();
        let bytes = encode_batches(&[&a, &b]).unwrap();
        assert_eq!(decode_batches(&bytes).unwrap(), vec![a, b]);
        assert!(decode_batches(&[]).unwrap().is_empty());
        assert!(decode_batches(b"garbage").is_err());
    }

    #[test]
    fn type_compatibility() {
        assert!(compatible(&DataType::Int64, "numeric"));
        assert!(compatible(&DataType::Utf8, "numeric"));
        assert!(!compatible(&DataType::Int64, "timestamptz"));
        assert!(!compatible(&DataType::Boolean, "int4"));
        assert!(compatible(
            &DataType::Timestamp(TimeUnit::Millisecond, None),
            "timestamptz"
        ));
        assert_eq!(qualified("s.t\"x"), "\"s\".\"t\"\"x\"");
    }
}
