//! The `enrich` step: a lookup join of a stream against reference data in a file (CSV,
//! JSON lines or Parquet), loaded once, shared by the step's subtasks, and reloaded when
//! the file changes; or against a PostgreSQL table ([`super::pg_lookup`]) or a
//! changelog joined as of event time ([`super::as_of`]).
//!
//! ```yaml
//! steps:
//!   with_merchant:
//!     from: valid
//!     enrich:
//!       table:
//!         path: data/merchants.csv       # relative to the job file
//!         format: csv                    # csv (with a header line) or json (lines)
//!         schema: { merchant_id: string, name: string, country: string }
//!       on: { merchant: merchant_id }    # stream column: table column
//!       columns: [name, country]         # default: every table column but the key
//!       missing: dead_letter             # or `null` (keep, columns null) or `drop`
//!       reload: 10s                      # look at the file's time this often (default)
//! ```
//!
//! Keys compare as text (`CAST(col AS VARCHAR)`), so an integer column can look up a
//! string key. A key found on several table rows takes the last. A record whose key is
//! null or missing from the table goes, depending on `missing`, to the dead-letter
//! output with the key in the reason, on with nulls, or away (counted in the metrics as
//! dropped rows of the step). The added columns keep their table names; a name the
//! stream already has is an error at build time (list `columns` to leave it out).
//!
//! Reloading: every `reload`, a subtask looks at the file's modification time and
//! size; when they changed, it reads the file again and swaps the table for every
//! subtask at once. A file that fails to read or decode on reload keeps the old table
//! (logged); at build time it is an error naming the file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use arrow::array::{Array, ArrayRef, StringArray, UInt32Array};
use arrow::compute::kernels::cast::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use serde::Deserialize;
use serde_json::{json, Value};
use weir_engine::graph::DEAD_LETTER_OUTPUT;
use weir_engine::operator::{Collector, Operator, OperatorContext};
use weir_engine::registry::{BuildContext, FieldError, StepBuild, StepFactory};
use weir_engine::source::dead_letters_to_batch;
use weir_engine::{EngineError, Result};

use super::row_errors::{self, row_dead_letter};
use super::simple_build;

/// What happens to a record whose key has no row (shared with the lookup operators).
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(super) type MissingMode = Missing;

/// A `type: postgres` table: looked up per batch, cached.
#[cfg(feature = "postgres")]
fn postgres_build(
    o: &EnrichOptions,
    table: &TableOptions,
    schema: &SchemaRef,
    input: &SchemaRef,
    stream_col: &str,
    table_col: &str,
) -> std::result::Result<StepBuild, FieldError> {
    use super::pg_lookup::{check, output_schema, PgLookupOperator, PgTable};
    let connection = weir_engine::env::expand_env(
        table
            .connection
            .as_deref()
            .ok_or_else(|| FieldError::at("/table", "a postgres table needs `connection`"))?,
    )
    .map_err(|m| FieldError::at("/table/connection", m))?;
    let name = table
        .name
        .clone()
        .ok_or_else(|| FieldError::at("/table", "a postgres table needs `name` (the table)"))?;
    if table.path.is_some() {
        return Err(FieldError::at(
            "/table/path",
            "a postgres table has `name`, not `path`",
        ));
    }
    let stream_key = input
        .index_of(stream_col)
        .map_err(|_| FieldError::at("/on", format!("the stream has no column `{stream_col}`")))?;
    if schema.index_of(table_col).is_err() {
        return Err(FieldError::at(
            "/on",
            format!("the table's schema has no column `{table_col}`"),
        ));
    }
    let wanted: Vec<String> = match &o.columns {
        Some(c) => c.clone(),
        None => schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .filter(|n| n != table_col)
            .collect(),
    };
    let mut columns = Vec::new();
    for (i, c) in wanted.iter().enumerate() {
        let f = schema.field_with_name(c).map_err(|_| {
            FieldError::at(
                format!("/columns/{i}"),
                format!("the table's schema has no column `{c}`"),
            )
        })?;
        if input.index_of(c).is_ok() {
            return Err(FieldError::at(
                format!("/columns/{i}"),
                format!(
                    "the stream already has a column `{c}`: list the table columns to add \
                     with `columns:` and leave it out"
                ),
            ));
        }
        columns.push((c.clone(), f.data_type().clone()));
    }
    let duration = |v: &Option<String>, at: &str, default: Duration| match v {
        None => Ok(default),
        Some(t) => weir_engine::time::parse_duration(t).map_err(|m| FieldError::at(at, m)),
    };
    let cache = o.cache.clone().unwrap_or(CacheOptions {
        size: None,
        ttl: None,
    });
    let pg = Arc::new(PgTable {
        connection,
        name: name.clone(),
        key_column: table_col.to_string(),
        columns,
        cache_size: cache.size.unwrap_or(100_000).max(1),
        cache_ttl: duration(&cache.ttl, "/cache/ttl", Duration::from_secs(60))?,
        unavailable_timeout: duration(
            &table.unavailable_timeout,
            "/table/unavailable_timeout",
            Duration::from_secs(60),
        )?,
    });
    check(&pg)?;
    let output = output_schema(input, &pg);
    let missing = o.missing;
    let input = input.clone();
    let stream_col = stream_col.to_string();
    let describe = format!(
        "enrich from PostgreSQL table {name} on {stream_col} = {table_col} adding {}",
        pg.columns
            .iter()
            .map(|c| c.0.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut step = simple_build(
        output,
        describe,
        Arc::new(move |_subtask, _parallelism| {
            Ok(Box::new(PgLookupOperator::new(
                pg.clone(),
                stream_key,
                stream_col.clone(),
                missing,
                &input,
            )) as Box<dyn Operator>)
        }),
    );
    step.side_outputs = row_errors::side_outputs();
    Ok(step)
}

#[cfg(not(feature = "postgres"))]
fn postgres_build(
    _o: &EnrichOptions,
    _table: &TableOptions,
    _schema: &SchemaRef,
    _input: &SchemaRef,
    _stream_col: &str,
    _table_col: &str,
) -> std::result::Result<StepBuild, FieldError> {
    Err(FieldError::at(
        "/table/type",
        "this weir was built without PostgreSQL (cargo feature `postgres`, on by default)",
    ))
}

/// Factory of the `enrich` step.
#[derive(Debug, Clone, Copy, Default)]
pub struct EnrichStep;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrichOptions {
    table: Option<TableOptions>,
    changelog: Option<ChangelogOptions>,
    on: serde_json::Map<String, Value>,
    columns: Option<Vec<String>>,
    #[serde(default)]
    missing: Missing,
    reload: Option<String>,
    cache: Option<CacheOptions>,
}

/// The cache of a PostgreSQL lookup table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
struct CacheOptions {
    size: Option<usize>,
    ttl: Option<String>,
}

/// Where a table lives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum TableKind {
    #[default]
    File,
    Postgres,
}

/// The second input is a changelog: its rows are versions, joined as of event time.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangelogOptions {
    /// The stream's event-time column.
    time: String,
    /// The changelog's column saying from when a version is valid.
    version_time: String,
    /// How far behind the watermark versions are kept for late records (default 0s:
    /// only the newest version at or below the watermark).
    retention: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
struct TableOptions {
    #[serde(rename = "type", default)]
    kind: TableKind,
    path: Option<String>,
    #[serde(default)]
    format: TableFormat,
    schema: Value,
    connection: Option<String>,
    name: Option<String>,
    unavailable_timeout: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum TableFormat {
    #[default]
    Csv,
    Json,
    Parquet,
}

/// What happens to a record whose key is not in the table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Missing {
    /// To the dead-letter output, with the key in the reason.
    #[default]
    DeadLetter,
    /// On, with the added columns null.
    Null,
    /// Dropped (counted).
    Drop,
}

/// A loaded table: the added columns, and each key's row.
#[derive(Debug)]
struct Table {
    rows: RecordBatch,
    index: HashMap<String, u32>,
    /// Modification time and size of the file it was read from.
    stamp: Option<(SystemTime, u64)>,
    version: u64,
}

/// What the subtasks share: the table, and where it comes from.
#[derive(Debug)]
struct Shared {
    path: PathBuf,
    shown_path: String,
    format: TableFormat,
    file_schema: SchemaRef,
    key_column: String,
    columns: Vec<String>,
    table: RwLock<Arc<Table>>,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl Shared {
    /// Reads and indexes the file.
    fn load(&self, version: u64) -> std::result::Result<Table, String> {
        let stamp = stamp(&self.path);
        let file = std::fs::File::open(&self.path)
            .map_err(|e| format!("cannot read {}: {e}", self.shown_path))?;
        let reader = std::io::BufReader::new(file);
        let batches: Vec<RecordBatch> = match self.format {
            TableFormat::Csv => arrow::csv::ReaderBuilder::new(self.file_schema.clone())
                .with_header(true)
                .build(reader)
                .map_err(|e| format!("{}: {e}", self.shown_path))?
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| format!("{}: {e}", self.shown_path))?,
            TableFormat::Json => arrow::json::ReaderBuilder::new(self.file_schema.clone())
                .build(reader)
                .map_err(|e| format!("{}: {e}", self.shown_path))?
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| format!("{}: {e}", self.shown_path))?,
            TableFormat::Parquet => self.read_parquet()?,
        };
        let all = arrow::compute::concat_batches(&self.file_schema, &batches)
            .map_err(|e| format!("{}: {e}", self.shown_path))?;
        let keys = text_column(
            all.column(
                self.file_schema
                    .index_of(&self.key_column)
                    .map_err(|e| e.to_string())?,
            ),
        )
        .map_err(|e| format!("{}: key column: {e}", self.shown_path))?;
        let mut index = HashMap::with_capacity(keys.len());
        for i in 0..keys.len() {
            if keys.is_valid(i) {
                index.insert(keys.value(i).to_string(), i as u32);
            }
        }
        let cols: Vec<ArrayRef> = self
            .columns
            .iter()
            .map(|c| {
                self.file_schema
                    .index_of(c)
                    .map(|i| all.column(i).clone())
                    .map_err(|e| e.to_string())
            })
            .collect::<std::result::Result<_, _>>()?;
        let rows = RecordBatch::try_new(added_schema(&self.file_schema, &self.columns), cols)
            .map_err(|e| e.to_string())?;
        Ok(Table {
            rows,
            index,
            stamp,
            version,
        })
    }

    /// A Parquet file's rows, each declared column found by name and cast to its
    /// declared type (a file written with `int32` reads into an `int` column).
    fn read_parquet(&self) -> std::result::Result<Vec<RecordBatch>, String> {
        let file = std::fs::File::open(&self.path)
            .map_err(|e| format!("cannot read {}: {e}", self.shown_path))?;
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.build())
            .map_err(|e| format!("{}: not a Parquet file we can read: {e}", self.shown_path))?;
        let mut out = Vec::new();
        for batch in reader {
            let batch = batch.map_err(|e| format!("{}: {e}", self.shown_path))?;
            let mut cols = Vec::with_capacity(self.file_schema.fields().len());
            for f in self.file_schema.fields() {
                let c = batch.column_by_name(f.name()).ok_or_else(|| {
                    format!(
                        "{}: no column `{}` in the Parquet file",
                        self.shown_path,
                        f.name()
                    )
                })?;
                cols.push(
                    cast(c, f.data_type())
                        .map_err(|e| format!("{}: column `{}`: {e}", self.shown_path, f.name()))?,
                );
            }
            out.push(
                RecordBatch::try_new(self.file_schema.clone(), cols)
                    .map_err(|e| format!("{}: {e}", self.shown_path))?,
            );
        }
        Ok(out)
    }

    fn current(&self) -> Arc<Table> {
        match self.table.read() {
            Ok(t) => t.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reloads the table if the file changed since it was read.
    fn reload_if_changed(&self) {
        let now = stamp(&self.path);
        let current = self.current();
        if now.is_none() || now == current.stamp {
            return;
        }
        match self.load(current.version + 1) {
            Ok(t) => {
                tracing::info!(path = %self.shown_path, rows = t.rows.num_rows(), "enrich: reloaded the table");
                match self.table.write() {
                    Ok(mut w) if w.version == current.version => *w = Arc::new(t),
                    Ok(_) => {} // another subtask was first
                    Err(poisoned) => *poisoned.into_inner() = Arc::new(t),
                }
            }
            Err(e) => {
                tracing::warn!(path = %self.shown_path, error = %e, "enrich: the changed table does not load; keeping the old one");
            }
        }
    }
}

/// The added columns' schema (all nullable: a missing key leaves them null).
fn added_schema(file: &SchemaRef, columns: &[String]) -> SchemaRef {
    Arc::new(Schema::new(
        columns
            .iter()
            .filter_map(|c| file.field_with_name(c).ok())
            .map(|f| Field::new(f.name(), f.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ))
}

/// A column as text (keys compare as text).
fn text_column(a: &ArrayRef) -> std::result::Result<StringArray, String> {
    let s = cast(a, &DataType::Utf8).map_err(|e| e.to_string())?;
    s.as_any()
        .downcast_ref::<StringArray>()
        .cloned()
        .ok_or_else(|| "not text".to_string())
}

/// One subtask of the step.
struct EnrichOperator {
    shared: Arc<Shared>,
    stream_key: usize,
    stream_key_name: String,
    missing: Missing,
    output: SchemaRef,
    reload: Duration,
    last_look: Instant,
    seen: u64,
}

impl Operator for EnrichOperator {
    fn process_batch(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        ctx: &mut OperatorContext,
        out: &mut Collector,
    ) -> Result<()> {
        if self.last_look.elapsed() >= self.reload {
            self.last_look = Instant::now();
            self.shared.reload_if_changed();
        }
        let base = self.seen;
        self.seen += batch.num_rows() as u64;
        let table = self.shared.current();
        let keys = text_column(batch.column(self.stream_key))
            .map_err(|m| EngineError::operator(&ctx.operator, m))?;
        let found: Vec<Option<u32>> = (0..keys.len())
            .map(|i| {
                if keys.is_valid(i) {
                    table.index.get(keys.value(i)).copied()
                } else {
                    None
                }
            })
            .collect();
        let (rows, kept): (Vec<Option<u32>>, Option<Vec<u32>>) =
            if self.missing == Missing::Null || found.iter().all(Option::is_some) {
                (found, None)
            } else {
                let kept: Vec<u32> = (0..found.len() as u32)
                    .filter(|&i| found[i as usize].is_some())
                    .collect();
                if self.missing == Missing::DeadLetter {
                    let mut letters = Vec::new();
                    for (i, f) in found.iter().enumerate() {
                        if f.is_some() {
                            continue;
                        }
                        let key = if keys.is_valid(i) {
                            format!("`{}`", keys.value(i))
                        } else {
                            "null".to_string()
                        };
                        let reason = format!(
                            "step `{}`: no row in {} for {} = {key}",
                            ctx.operator, self.shared.shown_path, self.stream_key_name
                        );
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
                let rows = kept.iter().map(|&i| found[i as usize]).collect();
                (rows, Some(kept))
            };
        let left = match kept {
            None => batch,
            Some(kept) if kept.is_empty() => return Ok(()),
            Some(kept) => arrow::compute::take_record_batch(&batch, &UInt32Array::from(kept))
                .map_err(|e| EngineError::arrow("enrich", e))?,
        };
        let idx = UInt32Array::from(rows);
        let mut columns = left.columns().to_vec();
        for c in table.rows.columns() {
            columns.push(
                arrow::compute::take(c, &idx, None).map_err(|e| EngineError::arrow("enrich", e))?,
            );
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

impl StepFactory for EnrichStep {
    fn name(&self) -> &'static str {
        "enrich"
    }

    fn inputs(&self) -> (usize, usize) {
        (1, 2)
    }

    fn options_schema(&self) -> Value {
        json!({
            "type": "object",
            "description": "Looks up each record's key in a reference table (a CSV or JSON-lines file) and adds the table's columns; or, with two inputs and `changelog:`, joins each record with the version of its key valid at its event time.",
            "additionalProperties": false,
            "required": ["on"],
            "properties": {
                "changelog": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["time", "version_time"],
                    "properties": {
                        "time": { "type": "string", "description": "The stream's event-time column." },
                        "version_time": { "type": "string", "description": "The changelog's column: from when a version is valid." },
                        "retention": { "type": "string", "description": "How far behind the watermark superseded versions are kept, so that late (or replayed) records still get the version valid at their time, e.g. `30d`. Default 0s: only the newest version at or below the watermark." }
                    }
                },
                "table": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["schema"],
                    "properties": {
                        "type": { "enum": ["file", "postgres"], "description": "file (the default: a CSV or JSON-lines file, held in memory) or postgres (a table looked up per batch, cached)." },
                        "path": { "type": "string", "description": "file: the file, relative to the job file." },
                        "connection": { "type": "string", "description": "postgres: `host=… user=… password=… dbname=…` or a URL; ${NAME} reads the environment." },
                        "name": { "type": "string", "description": "postgres: the table, `name` or `schema.name`." },
                        "unavailable_timeout": { "type": "string", "description": "postgres: how long lookups are retried while the server is unreachable (default 60s)." },
                        "format": { "enum": ["csv", "json", "parquet"], "description": "csv (with a header line, the default), json (JSON lines) or parquet." },
                        "schema": { "type": "object", "description": "The file's columns and types, as a source's schema." }
                    }
                },
                "on": { "type": "object", "minProperties": 1, "maxProperties": 1, "additionalProperties": { "type": "string" }, "description": "{ stream_column: table_column }: the key." },
                "columns": { "type": "array", "items": { "type": "string" }, "description": "Table columns to add (default: all but the key)." },
                "missing": { "enum": ["dead_letter", "null", "drop"], "description": "A record whose key is not in the table: to the dead-letter output (default), on with null columns, or dropped." },
                "reload": { "type": "string", "description": "How often to look whether the file changed (default 10s)." },
                "cache": {
                    "type": "object",
                    "additionalProperties": false,
                    "description": "postgres tables: the cache of looked-up keys.",
                    "properties": {
                        "size": { "type": "integer", "minimum": 1, "description": "Keys kept (default 100000)." },
                        "ttl": { "type": "string", "description": "How long an answer is used (default 1m)." }
                    }
                }
            }
        })
    }

    fn build(
        &self,
        ctx: &BuildContext,
        _name: &str,
        value: &Value,
        inputs: &[SchemaRef],
    ) -> std::result::Result<StepBuild, FieldError> {
        let o: EnrichOptions = serde_json::from_value(value.clone())
            .map_err(|e| FieldError::here(format!("enrich: {e}")))?;
        let input = inputs
            .first()
            .ok_or_else(|| FieldError::here("enrich needs one input"))?;
        let (stream_col, table_col) = match o.on.iter().next() {
            Some((s, Value::String(t))) if o.on.len() == 1 => (s.clone(), t.clone()),
            _ => {
                return Err(FieldError::at(
                    "/on",
                    "expected one pair { stream_column: table_column }",
                ))
            }
        };
        if inputs.len() == 2 {
            let Some(changelog) = &o.changelog else {
                return Err(FieldError::here(
                    "with two inputs (the stream, then a changelog) enrich needs                      `changelog: { time: …, version_time: … }`",
                ));
            };
            if o.table.is_some() {
                return Err(FieldError::at(
                    "/table",
                    "a file table and a changelog input exclude each other",
                ));
            }
            let missing = match o.missing {
                Missing::DeadLetter => super::as_of::MissingVersion::DeadLetter,
                Missing::Null => super::as_of::MissingVersion::Null,
                Missing::Drop => super::as_of::MissingVersion::Drop,
            };
            let retention = match &changelog.retention {
                None => Duration::ZERO,
                Some(t) => weir_engine::time::parse_duration(t)
                    .map_err(|m| FieldError::at("/changelog/retention", m))?,
            };
            let mut plan = super::as_of::plan(
                inputs,
                &changelog.time,
                &changelog.version_time,
                &stream_col,
                &table_col,
                o.columns.as_deref(),
                missing,
            )?;
            plan.retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
            let describe = format!(
                "enrich as of {} on {stream_col} = {table_col} (version time {})",
                changelog.time, changelog.version_time
            );
            return Ok(super::as_of::build(plan, describe));
        }
        if o.changelog.is_some() {
            return Err(FieldError::at(
                "/changelog",
                "a changelog is the step's second input: write `from: [stream, changelog]`",
            ));
        }
        let Some(table) = o.table.clone() else {
            return Err(FieldError::here(
                "enrich needs `table:` (a file) or a second input with `changelog:`",
            ));
        };
        let o = EnrichOptions { table: None, ..o };
        let file_schema =
            weir_engine::spec::parse_schema(&table.schema).map_err(|e| e.under("/table/schema"))?;
        if table.kind == TableKind::Postgres {
            return postgres_build(&o, &table, &file_schema, input, &stream_col, &table_col);
        }
        if o.cache.is_some() {
            return Err(FieldError::at(
                "/cache",
                "a file table is held whole in memory: `cache` is for `type: postgres` tables",
            ));
        }
        let Some(table_path) = table.path.clone() else {
            return Err(FieldError::at("/table", "a file table needs `path`"));
        };
        let stream_key = input.index_of(&stream_col).map_err(|_| {
            FieldError::at(
                "/on",
                format!(
                    "the stream has no column `{stream_col}` (columns: {})",
                    input
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?;
        if file_schema.index_of(&table_col).is_err() {
            return Err(FieldError::at(
                "/on",
                format!("the table's schema has no column `{table_col}`"),
            ));
        }
        let columns: Vec<String> = match &o.columns {
            Some(cs) => cs.clone(),
            None => file_schema
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .filter(|n| n != &table_col)
                .collect(),
        };
        for (i, c) in columns.iter().enumerate() {
            if file_schema.index_of(c).is_err() {
                return Err(FieldError::at(
                    format!("/columns/{i}"),
                    format!("the table's schema has no column `{c}`"),
                ));
            }
            if input.index_of(c).is_ok() {
                return Err(FieldError::at(
                    if o.columns.is_some() { format!("/columns/{i}") } else { "/table/schema".to_string() },
                    format!("the stream already has a column `{c}`: list the table columns to add with `columns:` and leave it out"),
                ));
            }
        }
        let reload = match &o.reload {
            None => Duration::from_secs(10),
            Some(t) => {
                weir_engine::time::parse_duration(t).map_err(|m| FieldError::at("/reload", m))?
            }
        };
        let path = {
            let p = Path::new(&table_path);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                ctx.base_dir.join(p)
            }
        };
        let shared = Shared {
            path,
            shown_path: table_path.clone(),
            format: table.format,
            file_schema: file_schema.clone(),
            key_column: table_col.clone(),
            columns: columns.clone(),
            table: RwLock::new(Arc::new(Table {
                rows: RecordBatch::new_empty(added_schema(&file_schema, &columns)),
                index: HashMap::new(),
                stamp: None,
                version: 0,
            })),
        };
        let loaded = shared
            .load(1)
            .map_err(|m| FieldError::at("/table/path", m))?;
        if let Ok(mut w) = shared.table.write() {
            *w = Arc::new(loaded);
        }
        let shared = Arc::new(shared);
        let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.extend(
            added_schema(&file_schema, &columns)
                .fields()
                .iter()
                .map(|f| f.as_ref().clone()),
        );
        let output: SchemaRef = Arc::new(Schema::new(fields));
        let missing = o.missing;
        let out_schema = output.clone();
        // The file's name only: a Rust pipeline passes absolute paths, YAML relative ones.
        let describe = format!(
            "enrich from {} on {stream_col} = {table_col} adding {}",
            Path::new(&table_path)
                .file_name()
                .map_or_else(|| table_path.clone(), |n| n.to_string_lossy().into_owned()),
            columns.join(", ")
        );
        let mut step = simple_build(
            output,
            describe,
            Arc::new(move |_subtask, _parallelism| {
                Ok(Box::new(EnrichOperator {
                    shared: shared.clone(),
                    stream_key,
                    stream_key_name: stream_col.clone(),
                    missing,
                    output: out_schema.clone(),
                    reload,
                    // The first batch looks at the file (it may have changed since the build).
                    last_look: Instant::now()
                        .checked_sub(reload)
                        .unwrap_or_else(Instant::now),
                    seen: 0,
                }) as Box<dyn Operator>)
            }),
        );
        step.side_outputs = row_errors::side_outputs();
        Ok(step)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests fail loudly on purpose.
mod tests {
    use super::super::test_util::run;
    use super::*;
    use arrow::array::Int64Array;

    fn build_in(
        dir: &Path,
        value: Value,
        input: &SchemaRef,
    ) -> std::result::Result<StepBuild, FieldError> {
        let mut ctx = super::super::test_util::ctx();
        ctx.base_dir = dir.to_path_buf();
        EnrichStep.build(&ctx, "e", &value, std::slice::from_ref(input))
    }

    fn stream() -> (SchemaRef, RecordBatch) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("merchant", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
                Arc::new(StringArray::from(vec![
                    Some("m1"),
                    Some("m9"),
                    None,
                    Some("m2"),
                ])),
            ],
        )
        .unwrap();
        (schema, batch)
    }

    fn col(b: &RecordBatch, name: &str) -> Vec<Option<String>> {
        let a = text_column(b.column(b.schema().index_of(name).unwrap())).unwrap();
        (0..a.len())
            .map(|i| a.is_valid(i).then(|| a.value(i).to_string()))
            .collect()
    }

    #[test]
    fn lookups_add_columns_and_missing_keys_follow_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("m.csv"),
            "merchant_id,name,risk\nm1,Acme,3\nm2,Bolt,7\n",
        )
        .unwrap();
        let (schema, batch) = stream();
        let spec = |missing: &str| {
            json!({
                "table": { "path": "m.csv", "schema": { "merchant_id": "string", "name": "string", "risk": "int" } },
                "on": { "merchant": "merchant_id" },
                "missing": missing,
            })
        };
        let step = build_in(dir.path(), spec("null"), &schema).unwrap();
        let (main, side) = run(&step, vec![(0, batch.clone())]);
        assert!(side.is_empty());
        assert_eq!(
            col(&main[0], "name"),
            vec![Some("Acme".into()), None, None, Some("Bolt".into())]
        );
        assert_eq!(
            col(&main[0], "risk"),
            vec![Some("3".into()), None, None, Some("7".into())]
        );
        let step = build_in(dir.path(), spec("drop"), &schema).unwrap();
        let (main, side) = run(&step, vec![(0, batch.clone())]);
        assert!(side.is_empty());
        assert_eq!(
            col(&main[0], "id"),
            vec![Some("1".into()), Some("4".into())]
        );
        let step = build_in(dir.path(), spec("dead_letter"), &schema).unwrap();
        let (main, side) = run(&step, vec![(0, batch)]);
        assert_eq!(
            col(&main[0], "name"),
            vec![Some("Acme".into()), Some("Bolt".into())]
        );
        let reasons = col(&side[0].1, "reason");
        assert_eq!(reasons.len(), 2);
        assert!(
            reasons[0]
                .as_ref()
                .unwrap()
                .contains("no row in m.csv for merchant = `m9`"),
            "{reasons:?}"
        );
        assert!(
            reasons[1].as_ref().unwrap().contains("merchant = null"),
            "{reasons:?}"
        );
    }

    #[test]
    fn a_changed_file_is_reloaded_for_every_subtask() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.jsonl");
        std::fs::write(&file, "{\"merchant_id\": \"m1\", \"name\": \"Acme\"}\n").unwrap();
        let (schema, batch) = stream();
        let step = build_in(
            dir.path(),
            json!({
                "table": { "path": "m.jsonl", "format": "json", "schema": { "merchant_id": "string", "name": "string" } },
                "on": { "merchant": "merchant_id" }, "missing": "null", "reload": "1ms",
            }),
            &schema,
        )
        .unwrap();
        let (main, _) = run(&step, vec![(0, batch.clone())]);
        assert_eq!(col(&main[0], "name")[0], Some("Acme".into()));
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&file, "{\"merchant_id\": \"m1\", \"name\": \"Acme 2\"}\n{\"merchant_id\": \"m9\", \"name\": \"Nine\"}\n").unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let (main, _) = run(&step, vec![(0, batch)]);
        assert_eq!(
            col(&main[0], "name")[..2],
            [Some("Acme 2".into()), Some("Nine".into())]
        );
    }

    #[test]
    fn a_parquet_table_reads_its_columns_by_name_and_type() {
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("extra", DataType::Utf8, true),
            Field::new("name", DataType::Utf8, true),
            Field::new("merchant_id", DataType::Utf8, false),
            Field::new("risk", DataType::Int32, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec!["x", "y"])),
                Arc::new(StringArray::from(vec!["Acme", "Bolt"])),
                Arc::new(StringArray::from(vec!["m1", "m2"])),
                Arc::new(arrow::array::Int32Array::from(vec![3, 7])),
            ],
        )
        .unwrap();
        let file = std::fs::File::create(dir.path().join("m.parquet")).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(file, schema, None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let (input, rows) = stream();
        let step = build_in(
            dir.path(),
            json!({
                "table": { "path": "m.parquet", "format": "parquet", "schema": { "merchant_id": "string", "name": "string", "risk": "int" } },
                "on": { "merchant": "merchant_id" }, "missing": "null",
            }),
            &input,
        )
        .unwrap();
        let (main, _) = run(&step, vec![(0, rows)]);
        assert_eq!(
            col(&main[0], "name"),
            vec![Some("Acme".into()), None, None, Some("Bolt".into())]
        );
        assert_eq!(
            main[0]
                .schema()
                .field_with_name("risk")
                .unwrap()
                .data_type(),
            &DataType::Int64
        );
        assert_eq!(col(&main[0], "risk")[3], Some("7".into()));
    }

    #[test]
    fn bad_settings_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.csv"), "merchant_id,merchant\nm1,x\n").unwrap();
        let (schema, _) = stream();
        let t =
            json!({ "path": "m.csv", "schema": { "merchant_id": "string", "merchant": "string" } });
        let e = build_in(
            dir.path(),
            json!({ "table": t, "on": { "nope": "merchant_id" } }),
            &schema,
        )
        .err()
        .unwrap();
        assert_eq!(e.path, "/on");
        let e = build_in(
            dir.path(),
            json!({ "table": t, "on": { "merchant": "merchant_id" } }),
            &schema,
        )
        .err()
        .unwrap();
        assert!(
            e.message.contains("already has a column `merchant`"),
            "{}",
            e.message
        );
        let missing = json!({ "path": "gone.csv", "schema": { "merchant_id": "string" } });
        let e = build_in(
            dir.path(),
            json!({ "table": missing, "on": { "merchant": "merchant_id" } }),
            &schema,
        )
        .err()
        .unwrap();
        assert_eq!(e.path, "/table/path");
        assert!(e.message.contains("gone.csv"), "{}", e.message);
    }
}
