//! Working off dead letters. Review (`weir dlq summary`, the third remediation tier):
//! read the entries a dead-letter sink wrote — JSON-lines files (the sink's path and its
//! part files) or a PostgreSQL table — and group them by error kind and step, with
//! counts, first and last seen, and a sample, largest group first. Transform and replay
//! (`weir dlq replay`, the second tier): decode the chosen entries' payloads with a file
//! source's schema, apply a remediation (SQL expressions per column), and append them to
//! the source's input exactly once (see [`replay`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::WeirError;

/// One dead letter as written by a dead-letter sink.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Error kind (`decode`, `validation`, `lookup`, …; `unknown` for entries written
    /// before weir recorded kinds).
    pub kind: String,
    /// The source or step that rejected the record.
    pub step: String,
    /// The message.
    pub reason: String,
    /// Source and split, and the position in it.
    pub source: String,
    pub position: u64,
    /// The record as received (or the row as JSON).
    pub payload: String,
    /// When it was rejected, as written (`YYYY-MM-DDTHH:MM:SS.sss`); empty if unknown.
    pub time: String,
}

impl Entry {
    /// An entry from one JSON object of a dead-letter file.
    pub fn from_json(v: &Value) -> Option<Entry> {
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let reason = text("reason")?;
        let source = text("source").unwrap_or_default();
        let step = text("step").unwrap_or_else(|| {
            source
                .strip_prefix("step ")
                .unwrap_or_else(|| source.split(':').next().unwrap_or(""))
                .to_string()
        });
        Some(Entry {
            kind: text("kind").unwrap_or_else(|| "unknown".into()),
            step,
            reason,
            position: v.get("position").and_then(Value::as_u64).unwrap_or(0),
            payload: text("payload").unwrap_or_default(),
            time: text("time").unwrap_or_default(),
            source,
        })
    }
}

/// The entries of one kind and step.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub kind: String,
    pub step: String,
    pub count: u64,
    /// Earliest and latest `time` of its entries (empty if none had one).
    pub first_seen: String,
    pub last_seen: String,
    /// The first entry read of the group.
    pub sample: Entry,
}

/// Groups entries by (kind, step): largest group first, then by kind and step.
pub fn summarize(entries: impl IntoIterator<Item = Entry>) -> Vec<Group> {
    let mut groups: BTreeMap<(String, String), Group> = BTreeMap::new();
    for e in entries {
        let g = groups
            .entry((e.kind.clone(), e.step.clone()))
            .or_insert_with(|| Group {
                kind: e.kind.clone(),
                step: e.step.clone(),
                count: 0,
                first_seen: e.time.clone(),
                last_seen: e.time.clone(),
                sample: e.clone(),
            });
        g.count += 1;
        if !e.time.is_empty() {
            if g.first_seen.is_empty() || e.time < g.first_seen {
                g.first_seen = e.time.clone();
            }
            if e.time > g.last_seen {
                g.last_seen = e.time.clone();
            }
        }
    }
    let mut v: Vec<Group> = groups.into_values().collect();
    v.sort_by_key(|g| std::cmp::Reverse(g.count));
    v
}

/// The files a file sink writing `path` publishes: `path` itself, and its parts
/// (`dead_letter-0.jsonl`, `dead_letter-0-000003.jsonl`, …); a directory: every
/// visible `.jsonl` file in it.
pub fn files_for(path: &Path) -> Vec<PathBuf> {
    if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        p.extension().is_some_and(|x| x == "jsonl")
                            && !p
                                .file_name()
                                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        return v;
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = path.extension().map(|e| e.to_string_lossy().into_owned());
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    let Some(name) = p.file_name().map(|n| n.to_string_lossy().into_owned()) else {
                        return false;
                    };
                    let (s, x) = match name.rsplit_once('.') {
                        Some((s, x)) if ext.is_some() => (s.to_string(), Some(x.to_string())),
                        _ => (name.clone(), None),
                    };
                    x == ext
                        && (s == stem
                            || s.strip_prefix(&format!("{stem}-")).is_some_and(|rest| {
                                rest.split('-')
                                    .all(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
                            }))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Reads the entries of dead-letter JSON-lines files; lines that are not dead letters
/// are counted and skipped.
pub fn read_files(files: &[PathBuf]) -> Result<(Vec<Entry>, usize), WeirError> {
    let mut entries = Vec::new();
    let mut skipped = 0;
    for f in files {
        let text = std::fs::read_to_string(f)
            .map_err(|e| WeirError::Command(format!("cannot read {}: {e}", f.display())))?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match serde_json::from_str::<Value>(line)
                .ok()
                .and_then(|v| Entry::from_json(&v))
            {
                Some(e) => entries.push(e),
                None => skipped += 1,
            }
        }
    }
    Ok((entries, skipped))
}

/// Reads the entries of a dead-letter table in PostgreSQL.
#[cfg(feature = "postgres")]
pub async fn read_postgres(connection: &str, table: &str) -> Result<Vec<Entry>, WeirError> {
    let quoted = table
        .split('.')
        .map(|p| format!("\"{}\"", p.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".");
    let (client, conn) = tokio_postgres::connect(connection, tokio_postgres::NoTls)
        .await
        .map_err(|e| WeirError::Command(format!("cannot connect to PostgreSQL: {e}")))?;
    tokio::spawn(conn);
    let rows = client
        .query(
            &format!(
                "SELECT reason, source, position, payload, step, kind, \
                 to_char(time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS') FROM {quoted}"
            ),
            &[],
        )
        .await
        .map_err(|e| WeirError::Command(format!("reading {table}: {e}")))?;
    Ok(rows
        .iter()
        .map(|r| Entry {
            reason: r.get(0),
            source: r.get(1),
            position: u64::try_from(r.get::<_, i64>(2)).unwrap_or(0),
            payload: r.get(3),
            step: r.get(4),
            kind: r.get(5),
            time: r.get::<_, Option<String>>(6).unwrap_or_default(),
        })
        .collect())
}

/// What to replay and how.
#[derive(Clone)]
pub struct ReplaySpec {
    /// The job file.
    pub job: PathBuf,
    /// The source whose input gets the records (default: the job's only file source).
    pub source: Option<String>,
    /// Only entries of these kinds / steps (empty: any).
    pub kinds: Vec<String>,
    pub steps: Vec<String>,
    /// Remediation: column → SQL expression over the decoded record.
    pub set: Vec<(String, String)>,
    /// Remediation in Rust, after `set`: the decoded records in, the records to replay
    /// out (same schema; rows may be dropped). See [`register_remediation`].
    pub function: Option<Remediation>,
    /// Print what would be replayed, change nothing.
    pub dry_run: bool,
    /// Replays into Kafka: the ledger topic (default `__weir_dlq_replays`).
    pub ledger_topic: Option<String>,
}

/// A remediation written in Rust: a batch of decoded dead letters in, the batch to replay
/// out (the source's schema).
pub type Remediation = std::sync::Arc<
    dyn Fn(arrow::record_batch::RecordBatch) -> Result<arrow::record_batch::RecordBatch, String>
        + Send
        + Sync,
>;

fn remediations() -> &'static std::sync::Mutex<BTreeMap<String, Remediation>> {
    static R: std::sync::OnceLock<std::sync::Mutex<BTreeMap<String, Remediation>>> =
        std::sync::OnceLock::new();
    R.get_or_init(Default::default)
}

/// Registers a Rust remediation under `name`, for `weir dlq replay --remediation NAME`
/// in a binary that registers it (e.g. a project's own `main` built on `weir`).
pub fn register_remediation(name: &str, f: Remediation) {
    if let Ok(mut m) = remediations().lock() {
        m.insert(name.to_string(), f);
    }
}

/// The remediation registered under `name`.
pub fn remediation(name: &str) -> Result<Remediation, WeirError> {
    let m = remediations()
        .lock()
        .map_err(|_| WeirError::Command("the remediation registry is poisoned".into()))?;
    m.get(name).cloned().ok_or_else(|| {
        WeirError::Command(format!(
            "no remediation `{name}` is registered in this binary (registered: {})",
            if m.is_empty() {
                "none".to_string()
            } else {
                m.keys().cloned().collect::<Vec<_>>().join(", ")
            }
        ))
    })
}

/// What a replay did.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayReport {
    pub replayed: usize,
    pub already_replayed: usize,
    pub not_decodable: Vec<String>,
    /// Where the records went: the file written, or `kafka topic <name>`.
    pub input: String,
    /// Where the replayed entries are recorded: the ledger file or topic.
    pub ledger: String,
}

/// A stable identity of a dead letter: a hash of everything it carries.
fn entry_id(e: &Entry) -> String {
    // FNV-1a over the fields, stable across processes (unlike RandomState).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |s: &str| {
        for b in s.bytes().chain(std::iter::once(0xff)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for f in [&e.kind, &e.step, &e.reason, &e.source, &e.payload, &e.time] {
        feed(f);
    }
    feed(&e.position.to_string());
    format!("{h:016x}")
}

/// The ledger of replays next to the dead letters: `<path>.replayed`, a JSON line per
/// replay: its id, the file it wrote, the remediation and the entries' ids.
pub fn ledger_path(dead_letters: &Path) -> PathBuf {
    let mut name = dead_letters
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "dead_letter".into());
    name.push_str(".replayed");
    dead_letters.with_file_name(name)
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> WeirError {
    WeirError::Command(format!("{what} {}: {e}", path.display()))
}

/// Where a replay writes: a file source's folder or a Kafka source's topic.
enum Target {
    File {
        /// The folder the source's pattern reads.
        folder: PathBuf,
        /// The pattern as written, and its file-name part.
        pattern: String,
        file_pattern: String,
        /// The ledger file.
        ledger: PathBuf,
    },
    #[cfg(feature = "kafka")]
    Kafka(weir_connectors::kafka::replay::ReplayTarget),
}

/// Replays dead letters into a source's input, exactly once: a `type: file` source
/// (JSON lines) or a `type: kafka` source (JSON values).
///
/// The chosen entries not replayed before are decoded with the source's schema, the
/// remediation is applied, and the records are published:
///
/// - **file source**: as a new JSON-lines file `replay-<id>.jsonl` next to the source's
///   files (the source's `path` must be a pattern that matches it, e.g. `data/*.jsonl`):
///   a checkpointing job that runs again reads it as a file it has not seen. `<id>` is a
///   hash of the entries, so the same replay always writes the same file. The file is
///   written hidden, synced and renamed into place (a reader sees all of it or nothing),
///   then the entries are recorded in the `ledger` file (for dead-letter files,
///   [`ledger_path`]). A replay killed between the rename and the ledger finds its file
///   already there on the next run, keeps it and records the entries.
/// - **Kafka source**: as messages to the source's topic, in one transaction with a
///   ledger message on the ledger topic (see [`weir_connectors::kafka::replay`]).
///
/// Either way no entry is ever published twice, and none is lost.
pub fn replay(
    spec: &ReplaySpec,
    entries: &[Entry],
    ledger: Option<&Path>,
) -> Result<ReplayReport, WeirError> {
    let text =
        std::fs::read_to_string(&spec.job).map_err(|e| io_err("cannot read", &spec.job, e))?;
    let job = weir_engine::spec::parse_yaml(&text, &spec.job.display().to_string())
        .map_err(|e| WeirError::Command(e.to_string()))?;
    let sources = job
        .get("sources")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let replayable = |v: &Value| {
        matches!(
            v.get("type").and_then(Value::as_str),
            Some("file") | Some("kafka")
        )
    };
    let candidates: Vec<&String> = sources
        .iter()
        .filter(|(_, v)| replayable(v))
        .map(|(k, _)| k)
        .collect();
    let source_name = match &spec.source {
        Some(s) => s.clone(),
        None if candidates.len() == 1 => candidates[0].clone(),
        None => {
            return Err(WeirError::Command(format!(
                "name the source to replay into with --source (file and Kafka sources: {})",
                candidates
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
    };
    let source = sources
        .get(&source_name)
        .ok_or_else(|| WeirError::Command(format!("the job has no source `{source_name}`")))?;
    let kind = source
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !replayable(source) || source.get("format").and_then(Value::as_str) != Some("json") {
        return Err(WeirError::Command(format!(
            "source `{source_name}`: replay writes JSON to a `type: file` or `type: kafka` \
             source with `format: json` (this one is `type: {kind}`, format {})",
            source
                .get("format")
                .and_then(Value::as_str)
                .unwrap_or("unset")
        )));
    }
    let schema = weir_engine::spec::parse_schema(source.get("schema").unwrap_or(&Value::Null))
        .map_err(|e| WeirError::Command(format!("source `{source_name}` schema: {}", e.message)))?;
    let target = if kind == "file" {
        let pattern = source
            .get("path")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let pattern_path = Path::new(&pattern);
        let file_pattern = pattern_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let base = spec.job.parent().unwrap_or(Path::new("."));
        let folder = base.join(pattern_path.parent().unwrap_or(Path::new("")));
        let ledger = ledger.map(Path::to_path_buf).ok_or_else(|| {
            WeirError::Command(
                "a replay into a file source records its entries in a ledger file: name it \
                 with --ledger PATH (dead letters read from files have one next to them)"
                    .into(),
            )
        })?;
        Target::File {
            folder,
            pattern,
            file_pattern,
            ledger,
        }
    } else {
        kafka_target(spec, &source_name, source)?
    };

    #[cfg(feature = "kafka")]
    let publisher = match &target {
        Target::Kafka(t) => Some(
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| WeirError::Command(format!("cannot start a runtime: {e}")))?
                .block_on(weir_connectors::kafka::replay::ReplayPublisher::open(
                    t.clone(),
                    !spec.dry_run,
                ))
                .map_err(|m| WeirError::Command(format!("source `{source_name}`: {m}")))?,
        ),
        Target::File { .. } => None,
    };
    let done_ids: std::collections::HashSet<String> = match &target {
        Target::File { ledger, .. } => {
            let mut done = std::collections::HashSet::new();
            if let Ok(t) = std::fs::read_to_string(ledger) {
                for r in t
                    .lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                {
                    for e in r["entries"].as_array().into_iter().flatten() {
                        if let Some(e) = e.as_str() {
                            done.insert(e.to_string());
                        }
                    }
                }
            }
            done
        }
        #[cfg(feature = "kafka")]
        Target::Kafka(_) => publisher
            .as_ref()
            .map(|p| p.replayed())
            .transpose()
            .map_err(|m| WeirError::Command(format!("source `{source_name}`: {m}")))?
            .unwrap_or_default(),
    };
    let mut report = ReplayReport {
        replayed: 0,
        already_replayed: 0,
        not_decodable: Vec::new(),
        input: match &target {
            Target::File { folder, .. } => folder.display().to_string(),
            #[cfg(feature = "kafka")]
            Target::Kafka(t) => format!("Kafka topic `{}`", t.topic),
        },
        ledger: match &target {
            Target::File { ledger, .. } => ledger.display().to_string(),
            #[cfg(feature = "kafka")]
            Target::Kafka(t) => format!("topic `{}`", t.ledger_topic),
        },
    };
    let mut ids = Vec::new();
    let mut rows: Vec<arrow::record_batch::RecordBatch> = Vec::new();
    let chosen = entries
        .iter()
        .filter(|e| spec.kinds.is_empty() || spec.kinds.contains(&e.kind))
        .filter(|e| spec.steps.is_empty() || spec.steps.contains(&e.step));
    for e in chosen {
        let id = entry_id(e);
        if done_ids.contains(&id) {
            report.already_replayed += 1;
            continue;
        }
        match decode_one(&schema, &e.payload) {
            Some(b) => {
                rows.push(b);
                ids.push(id);
            }
            None => report
                .not_decodable
                .push(format!("{} #{}: {}", e.source, e.position, e.reason)),
        }
    }
    if rows.is_empty() {
        return Ok(report);
    }
    let batch = arrow::compute::concat_batches(&schema, &rows)
        .map_err(|e| WeirError::Command(e.to_string()))?;
    let mut batch = remediate(&batch, &spec.set)?;
    if let Some(f) = &spec.function {
        batch = f(batch).map_err(|m| WeirError::Command(format!("remediation: {m}")))?;
        if batch.schema().fields() != schema.fields() {
            return Err(WeirError::Command(
                "remediation: the records out must have the source's schema".into(),
            ));
        }
    }
    let mut w = arrow::json::LineDelimitedWriter::new(Vec::new());
    w.write(&batch)
        .map_err(|e| WeirError::Command(e.to_string()))?;
    w.finish().map_err(|e| WeirError::Command(e.to_string()))?;
    let bytes = w.into_inner();
    let replay_id = {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in ids.join(",").bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{h:016x}")
    };
    let record = serde_json::json!({
        "replay": replay_id,
        "set": spec.set.iter().map(|(c, e)| format!("{c}={e}")).collect::<Vec<_>>(),
        "entries": ids,
    });
    match &target {
        Target::File {
            folder,
            pattern,
            file_pattern,
            ledger,
        } => {
            let name = format!("replay-{replay_id}.jsonl");
            let matches = glob::Pattern::new(file_pattern).is_ok_and(|p| p.matches(&name));
            if !matches {
                return Err(WeirError::Command(format!(
                    "source `{source_name}` reads `{pattern}`, which would not match the \
                     replay file `{name}`: read a pattern such as `{}/*.jsonl`",
                    Path::new(pattern)
                        .parent()
                        .map_or_else(|| ".".into(), |p| p.display().to_string())
                )));
            }
            let target = folder.join(&name);
            report.input = target.display().to_string();
            report.replayed = ids.len();
            if spec.dry_run {
                return Ok(report);
            }
            publish_file(folder, &name, &bytes)?;
            weir_engine::fault::point("replay_published");
            let mut record = record;
            record["file"] = Value::String(target.display().to_string());
            append_ledger(ledger, &record)?;
        }
        #[cfg(feature = "kafka")]
        Target::Kafka(_) => {
            report.replayed = ids.len();
            if spec.dry_run {
                return Ok(report);
            }
            let values: Vec<Vec<u8>> = bytes
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(<[u8]>::to_vec)
                .collect();
            if let Some(p) = &publisher {
                p.publish(&replay_id, &values, &record)
                    .map_err(|m| WeirError::Command(format!("source `{source_name}`: {m}")))?;
            }
            weir_engine::fault::point("replay_published");
        }
    }
    Ok(report)
}

/// The Kafka topic a Kafka source reads, for a replay into it.
#[cfg(feature = "kafka")]
fn kafka_target(spec: &ReplaySpec, name: &str, source: &Value) -> Result<Target, WeirError> {
    let err = |m: String| WeirError::Command(format!("source `{name}`: {m}"));
    let topic = match (source.get("topic"), source.get("topics")) {
        (Some(Value::String(t)), _) => t.clone(),
        (_, Some(Value::Array(ts))) if ts.len() == 1 => {
            ts[0].as_str().unwrap_or_default().to_string()
        }
        _ => {
            return Err(err(
                "replay writes to the one topic a source reads (`topic`); this source reads \
                 several topics or a pattern"
                    .into(),
            ))
        }
    };
    let brokers = weir_engine::env::expand_env(
        source
            .get("brokers")
            .and_then(Value::as_str)
            .unwrap_or_default(),
    )
    .map_err(|m| err(format!("brokers: {m}")))?;
    let properties = source
        .get("properties")
        .and_then(Value::as_object)
        .map(|o| {
            o.iter()
                .map(|(k, v)| {
                    let v = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                    (k.clone(), v)
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Target::Kafka(
        weir_connectors::kafka::replay::ReplayTarget {
            brokers,
            properties,
            topic,
            ledger_topic: spec
                .ledger_topic
                .clone()
                .unwrap_or_else(|| weir_connectors::kafka::replay::DEFAULT_LEDGER_TOPIC.into()),
            timeout: std::time::Duration::from_secs(30),
        },
    ))
}

#[cfg(not(feature = "kafka"))]
fn kafka_target(_: &ReplaySpec, name: &str, _: &Value) -> Result<Target, WeirError> {
    Err(WeirError::Command(format!(
        "source `{name}` is a Kafka source, and this weir was built without the `kafka` feature"
    )))
}

/// Writes `name` into `folder` all at once: hidden, synced, renamed into place. A file
/// already there (an earlier run of the same replay published it) is kept.
fn publish_file(folder: &Path, name: &str, bytes: &[u8]) -> Result<(), WeirError> {
    use std::io::Write as _;
    let target = folder.join(name);
    if target.exists() {
        return Ok(());
    }
    let hidden = folder.join(format!(".{name}.inprogress"));
    let mut f = std::fs::File::create(&hidden).map_err(|e| io_err("cannot write", &hidden, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| io_err("cannot write", &hidden, e))?;
    std::fs::rename(&hidden, &target).map_err(|e| io_err("cannot publish", &target, e))?;
    if let Ok(d) = std::fs::File::open(folder) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Appends one record to a ledger file, synced.
fn append_ledger(ledger: &Path, record: &Value) -> Result<(), WeirError> {
    use std::io::Write as _;
    let mut l = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(ledger)
        .map_err(|e| io_err("cannot write", ledger, e))?;
    writeln!(l, "{record}")
        .and_then(|()| l.sync_all())
        .map_err(|e| io_err("cannot write", ledger, e))
}

/// One JSON object decoded with `schema`, or None.
fn decode_one(
    schema: &arrow::datatypes::SchemaRef,
    payload: &str,
) -> Option<arrow::record_batch::RecordBatch> {
    if !serde_json::from_str::<Value>(payload).is_ok_and(|v| v.is_object()) {
        return None;
    }
    let mut d = arrow::json::ReaderBuilder::new(schema.clone())
        .build_decoder()
        .ok()?;
    d.decode(payload.as_bytes()).ok()?;
    d.flush().ok().flatten().filter(|b| b.num_rows() == 1)
}

/// Applies `column = SQL` assignments to a batch (unlisted columns pass through).
fn remediate(
    batch: &arrow::record_batch::RecordBatch,
    set: &[(String, String)],
) -> Result<arrow::record_batch::RecordBatch, WeirError> {
    let schema = batch.schema();
    let mut columns = batch.columns().to_vec();
    for (col, sql) in set {
        let i = schema.index_of(col).map_err(|_| {
            WeirError::Command(format!("--set {col}=…: the source has no column `{col}`"))
        })?;
        let expr = weir_engine::expr::SqlExpr::compile(sql, &schema)
            .map_err(|m| WeirError::Command(format!("--set {col}={sql}: {m}")))?;
        let v = expr
            .evaluate(batch)
            .map_err(|e| WeirError::Command(format!("--set {col}={sql}: {e}")))?;
        let v = arrow::compute::kernels::cast::cast(&v, schema.field(i).data_type())
            .map_err(|e| WeirError::Command(format!("--set {col}={sql}: {e}")))?;
        columns[i] = v;
    }
    arrow::record_batch::RecordBatch::try_new(schema, columns)
        .map_err(|e| WeirError::Command(e.to_string()))
}

/// The summary as a table for the terminal.
pub fn render(groups: &[Group], skipped: usize) -> String {
    use std::fmt::Write as _;
    let total: u64 = groups.iter().map(|g| g.count).sum();
    let mut s = format!("{total} dead letter(s) in {} group(s)\n", groups.len());
    for g in groups {
        let _ = writeln!(
            s,
            "\n{:>7}  {} in `{}`   first {}   last {}",
            g.count,
            g.kind,
            g.step,
            if g.first_seen.is_empty() {
                "?"
            } else {
                &g.first_seen
            },
            if g.last_seen.is_empty() {
                "?"
            } else {
                &g.last_seen
            },
        );
        let _ = writeln!(s, "         e.g. {}", g.sample.reason);
        let payload: String = g.sample.payload.chars().take(160).collect();
        let _ = writeln!(
            s,
            "         at {} #{}: {payload}{}",
            g.sample.source,
            g.sample.position,
            if g.sample.payload.chars().count() > 160 {
                "…"
            } else {
                ""
            }
        );
    }
    if skipped > 0 {
        let _ = writeln!(
            s,
            "\n({skipped} line(s) were not dead letters and were skipped)"
        );
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests fail loudly on purpose.
mod tests {
    use super::*;

    fn entry(kind: &str, step: &str, time: &str) -> Entry {
        Entry {
            kind: kind.into(),
            step: step.into(),
            reason: format!("{kind} in {step}"),
            source: "s".into(),
            position: 1,
            payload: "{}".into(),
            time: time.into(),
        }
    }

    #[test]
    fn groups_by_kind_and_step_largest_first_with_first_and_last_seen() {
        let groups = summarize(vec![
            entry("decode", "payments", "2026-01-01T00:00:02.000"),
            entry("validation", "valid", "2026-01-01T00:00:05.000"),
            entry("validation", "valid", "2026-01-01T00:00:01.000"),
            entry("validation", "valid", "2026-01-01T00:00:09.000"),
            entry("lookup", "with_merchant", ""),
        ]);
        let shape: Vec<(String, String, u64, String, String)> = groups
            .iter()
            .map(|g| {
                (
                    g.kind.clone(),
                    g.step.clone(),
                    g.count,
                    g.first_seen.clone(),
                    g.last_seen.clone(),
                )
            })
            .collect();
        assert_eq!(
            shape[0],
            (
                "validation".into(),
                "valid".into(),
                3,
                "2026-01-01T00:00:01.000".into(),
                "2026-01-01T00:00:09.000".into()
            )
        );
        assert_eq!(shape.len(), 3);
        assert_eq!(groups[0].sample.time, "2026-01-01T00:00:05.000");
        assert!(render(&groups, 2).contains("5 dead letter(s) in 3 group(s)"));
    }

    #[test]
    fn entries_without_kind_or_step_are_read_too() {
        let v: Value = serde_json::from_str(
            r#"{"reason":"bad","source":"logs: a.jsonl","position":3,"payload":"x"}"#,
        )
        .unwrap();
        let e = Entry::from_json(&v).unwrap();
        assert_eq!((e.kind.as_str(), e.step.as_str()), ("unknown", "logs"));
        assert!(Entry::from_json(&serde_json::json!({"n": 1})).is_none());
    }

    /// A Rust remediation registered by name fixes the records; the replay file holds
    /// them, and the registry names what it has when asked for something else.
    #[test]
    fn a_rust_remediation_registered_by_name_fixes_the_records() {
        use arrow::array::{Array, Float64Array};
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("data")).unwrap();
        std::fs::write(
            d.join("job.yaml"),
            "name: r\nsources:\n  p: { type: file, path: data/*.jsonl, format: json, schema: { id: int, amount: float } }\n\
             sinks:\n  o: { from: p, type: stdout }\n",
        )
        .unwrap();
        let letters: String = (0..3)
            .map(|i| {
                serde_json::json!({"reason": "r", "source": "step v", "position": i,
                    "payload": format!("{{\"id\":{i},\"amount\":-{i}.5}}"),
                    "step": "v", "kind": "validation", "time": "2026-01-01T00:00:00.000"})
                .to_string()
                    + "\n"
            })
            .collect();
        std::fs::write(d.join("dead.jsonl"), letters).unwrap();
        register_remediation(
            "abs_amount",
            std::sync::Arc::new(|b: arrow::record_batch::RecordBatch| {
                let a = b
                    .column(1)
                    .as_any()
                    .downcast_ref::<Float64Array>()
                    .ok_or("amount is not a float")?;
                let fixed: Float64Array = a.iter().map(|v| v.map(f64::abs)).collect();
                let mut cols = b.columns().to_vec();
                cols[1] = std::sync::Arc::new(fixed);
                arrow::record_batch::RecordBatch::try_new(b.schema(), cols)
                    .map_err(|e| e.to_string())
            }),
        );
        let spec = ReplaySpec {
            job: d.join("job.yaml"),
            source: None,
            kinds: vec!["validation".into()],
            steps: Vec::new(),
            set: Vec::new(),
            function: Some(remediation("abs_amount").unwrap()),
            dry_run: false,
            ledger_topic: None,
        };
        let (entries, _) = read_files(&[d.join("dead.jsonl")]).unwrap();
        let ledger = ledger_path(&d.join("dead.jsonl"));
        let r = replay(&spec, &entries, Some(&ledger)).unwrap();
        assert_eq!(r.replayed, 3);
        let text = std::fs::read_to_string(&r.input).unwrap();
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            vec![
                r#"{"id":0,"amount":0.5}"#,
                r#"{"id":1,"amount":1.5}"#,
                r#"{"id":2,"amount":2.5}"#
            ]
        );
        let again = replay(&spec, &entries, Some(&ledger)).unwrap();
        assert_eq!((again.replayed, again.already_replayed), (0, 3));
        let e = remediation("nope").err().unwrap().to_string();
        assert!(e.contains("abs_amount"), "{e}");
    }

    #[test]
    fn a_sinks_path_finds_its_parts_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "dead_letter.jsonl",
            "dead_letter-0-000003.jsonl",
            "dead_letter-1.jsonl",
            ".dead_letter-0-000004.jsonl.inprogress",
            "dead_letter_other.jsonl",
            "dead_letter-x.jsonl",
            "alerts.jsonl",
        ] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        let names: Vec<String> = files_for(&dir.path().join("dead_letter.jsonl"))
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            vec![
                "dead_letter-0-000003.jsonl",
                "dead_letter-1.jsonl",
                "dead_letter.jsonl"
            ]
        );
    }
}
