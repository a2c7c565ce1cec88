//! The YAML job spec: reading a job file, checking it, and compiling it into a
//! [`LogicalGraph`].
//!
//! A job file names its sources, a DAG of steps and its sinks:
//!
//! ```yaml
//! name: log-filter
//! parallelism: 2
//! sources:
//!   logs:
//!     type: file
//!     path: data/*.jsonl
//!     format: json
//!     schema: { ts: timestamp, service: string, level: string, latency_ms: "int?" }
//!     event_time: { field: ts, max_out_of_orderness: 5s, idle_timeout: 30s }
//! steps:
//!   errors: { from: logs, filter: "level = 'ERROR'" }
//! sinks:
//!   out: { from: errors, type: file, path: out/errors.jsonl, format: jsonl }
//! ```
//!
//! Loading goes through four stages, each reporting every problem it finds with file,
//! line, column and field:
//! 1. `yaml`: YAML → JSON value plus the position of every key and value;
//! 2. `validate`: the value against [`job_json_schema`] (composed from the
//!    [`Registry`]), with messages worded for humans;
//! 3. `compile`: names, references and cycles, then the graph through
//!    [`crate::graph::GraphBuilder`] and the registry's factories;
//! 4. positions: each problem's JSON pointer is mapped back to the file.
//!
//! Errors read `file:line:column: field: message`, e.g.
//!
//! ```text
//! job.yaml:10:5: sources.logs.typ: unknown key `typ`, did you mean `type`? (expected one of: type, format, schema, event_time, parallelism, path)
//! job.yaml:12:11: sources.kafka_in.type: unknown source type `kafak` (known: datagen, file)
//! 2 errors
//! ```

mod compile;
mod fields;
mod schema;
mod validate;
mod yaml;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

pub use compile::{parse_size, CompiledJob};
pub use fields::{
    field_data_type, field_type_text, parse_event_time, parse_field_type, parse_schema,
    FIELD_TYPES, MAX_TYPE_DEPTH,
};
pub use schema::{job_json_schema, DURATION_PATTERN, NAME_PATTERN};

use crate::error::EngineError;
use crate::graph::LogicalGraph;
use crate::registry::Registry;
use yaml::{unescape, Pos, Spans};

/// One problem in a job file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// The job file, as given.
    pub file: String,
    /// Line, from 1 (0 when the problem is about the whole file, e.g. unreadable).
    pub line: usize,
    /// Column, from 1 (0 with `line` 0).
    pub column: usize,
    /// Dotted path of the field, e.g. `sources.logs.format` (`steps.both.from[1]` for
    /// list items); empty for the whole file.
    pub field: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl std::fmt::Display for SpecError {
    /// `file:line:column: field: message`; the position is left out when unknown and
    /// the field when empty.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line == 0 {
            write!(f, "{}: ", self.file)?;
        } else {
            write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in a job file, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecErrors(pub Vec<SpecError>);

impl std::fmt::Display for SpecErrors {
    /// One error per line, then `1 error` or `N errors`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for e in &self.0 {
            writeln!(f, "{e}")?;
        }
        let n = self.0.len();
        write!(f, "{n} error{}", if n == 1 { "" } else { "s" })
    }
}

impl std::error::Error for SpecErrors {}

impl From<SpecErrors> for EngineError {
    fn from(e: SpecErrors) -> Self {
        EngineError::Config(e.to_string())
    }
}

/// Settings given outside the job file (command-line flags) that replace the file's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobOverrides {
    /// Replaces the job's `parallelism`.
    pub parallelism: Option<usize>,
}

/// Where a problem points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum At {
    /// The key for mappings and lists (or a missing field's parent), else the value.
    Auto,
    /// The key of the node (e.g. an unknown key).
    Key,
    /// The value of the node.
    Value,
    /// A known position (YAML errors).
    Exact(Pos),
}

/// A problem before it is placed in the file: a JSON pointer and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    /// JSON pointer of the offending node (it may not exist, e.g. a missing key).
    pub pointer: String,
    /// Which position of that node to report.
    pub at: At,
    /// What is wrong.
    pub message: String,
}

impl Problem {
    pub(crate) fn new(pointer: &str, at: At, message: impl Into<String>) -> Self {
        Problem {
            pointer: pointer.to_string(),
            at,
            message: message.into(),
        }
    }
}

/// The closest of `candidates` to a misspelt `word`, if one is close enough.
pub(crate) fn did_you_mean<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (edit_distance(&word.to_lowercase(), &c.to_lowercase()), c))
        .filter(|(d, c)| *d <= limit && *d < c.chars().count())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(cur).min(row[j])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

/// The dotted form of a pointer for messages: `/sources/logs/format` →
/// `sources.logs.format`, list items as `[i]`.
fn dotted(value: &Value, pointer: &str) -> String {
    let mut out = String::new();
    let mut cur = Some(value);
    for raw in pointer.split('/').skip(1) {
        let seg = unescape(raw);
        match cur {
            Some(Value::Array(items)) => {
                out.push_str(&format!("[{seg}]"));
                cur = seg.parse::<usize>().ok().and_then(|i| items.get(i));
            }
            other => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&seg);
                cur = other.and_then(|v| v.get(&seg));
            }
        }
    }
    out
}

fn place(file: &str, value: &Value, spans: &Spans, p: Problem) -> SpecError {
    let pos = match p.at {
        At::Exact(pos) => pos,
        at => spans.locate(value, &p.pointer, at),
    };
    SpecError {
        file: file.to_string(),
        line: pos.line,
        column: pos.column,
        field: dotted(value, &p.pointer),
        message: p.message,
    }
}

/// The largest job file read (1 MiB): see [`compile_job_file`].
pub const MAX_JOB_FILE_BYTES: u64 = 1 << 20;

/// Reads, checks and compiles a job file. Relative paths in the job resolve against
/// the file's directory.
pub fn compile_job_file(
    path: &Path,
    registry: Arc<Registry>,
    overrides: &JobOverrides,
) -> Result<CompiledJob, SpecErrors> {
    let file = path.display().to_string();
    let whole_file = |message: String| {
        SpecErrors(vec![SpecError {
            file: file.clone(),
            line: 0,
            column: 0,
            field: String::new(),
            message,
        }])
    };
    // Checked before reading: a job file is a few KB, and a huge file (a data file
    // given by mistake) is refused at once.
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.is_file() && meta.len() > MAX_JOB_FILE_BYTES {
            return Err(whole_file(format!(
                "the job file is {} bytes; job files are limited to {} bytes (is this the \
                 right file?)",
                meta.len(),
                MAX_JOB_FILE_BYTES
            )));
        }
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| whole_file(format!("cannot read the job file: {e}")))?;
    let base_dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    compile_job_str(&text, &file, &base_dir, registry, overrides)
}

/// Checks and compiles the job in `text`; `file_name` names it in errors and relative
/// paths resolve against `base_dir`.
pub fn compile_job_str(
    text: &str,
    file_name: &str,
    base_dir: &Path,
    registry: Arc<Registry>,
    overrides: &JobOverrides,
) -> Result<CompiledJob, SpecErrors> {
    // A UTF-8 byte order mark is not part of the document.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.len() as u64 > MAX_JOB_FILE_BYTES {
        let p = Problem::new(
            "",
            At::Exact(Pos::START),
            format!(
                "the job is {} bytes; job files are limited to {MAX_JOB_FILE_BYTES} bytes",
                text.len()
            ),
        );
        return Err(SpecErrors(vec![place(
            file_name,
            &Value::Null,
            &Spans::default(),
            p,
        )]));
    }
    // The YAML parser is not ours: a panic in it must still end as an error message.
    let parsed = std::panic::catch_unwind(|| yaml::parse(text)).unwrap_or_else(|_| {
        Err(Problem::new(
            "",
            At::Exact(Pos::START),
            "the YAML parser failed on this file",
        ))
    });
    let doc = match parsed {
        Ok(doc) => doc,
        Err(p) => {
            let spans = Spans::default();
            return Err(SpecErrors(vec![place(file_name, &Value::Null, &spans, p)]));
        }
    };
    if doc.value.is_null() {
        let p = Problem::new("", At::Exact(Pos::START), "the job file is empty");
        return Err(SpecErrors(vec![place(
            file_name, &doc.value, &doc.spans, p,
        )]));
    }
    let mut problems = doc.problems;
    // A value the YAML reader already refused (a number out of range) is not reported
    // again by the schema.
    let refused: std::collections::HashSet<String> =
        problems.iter().map(|p| p.pointer.clone()).collect();
    problems.extend(
        validate::check(&job_json_schema(&registry), &doc.value)
            .into_iter()
            .filter(|p| !refused.contains(&p.pointer)),
    );
    let (job, more) = compile::compile(&doc.value, &problems, registry, base_dir, overrides);
    problems.extend(more);
    match job {
        Some(job) if problems.is_empty() => Ok(job),
        _ => {
            let mut errors: Vec<SpecError> = problems
                .into_iter()
                .map(|p| place(file_name, &doc.value, &doc.spans, p))
                .collect();
            errors.sort_by_key(|e| (e.line, e.column));
            errors.dedup();
            if errors.is_empty() {
                errors.push(SpecError {
                    file: file_name.to_string(),
                    line: 1,
                    column: 1,
                    field: String::new(),
                    message: "the job could not be compiled".to_string(),
                });
            }
            Err(SpecErrors(errors))
        }
    }
}

/// Parses YAML text into a JSON value, without checking it as a job (tools such as
/// `weir bench` edit a job this way before compiling it).
pub fn parse_yaml(text: &str, file_name: &str) -> Result<Value, SpecErrors> {
    let parsed = std::panic::catch_unwind(|| yaml::parse(text)).unwrap_or_else(|_| {
        Err(Problem::new(
            "",
            At::Exact(Pos::START),
            "the YAML parser failed on this file",
        ))
    });
    match parsed {
        Ok(doc) => match doc.problems.into_iter().next() {
            None => Ok(doc.value),
            Some(p) => Err(SpecErrors(vec![place(
                file_name, &doc.value, &doc.spans, p,
            )])),
        },
        Err(p) => Err(SpecErrors(vec![place(
            file_name,
            &Value::Null,
            &Spans::default(),
            p,
        )])),
    }
}

/// Reads, checks and compiles a job file into its logical graph. Relative paths in
/// the job resolve against the file's directory; a missing or unreadable file is one
/// error naming it.
pub fn load_job_file(
    path: &Path,
    registry: Arc<Registry>,
    overrides: &JobOverrides,
) -> Result<LogicalGraph, SpecErrors> {
    compile_job_file(path, registry, overrides).map(|j| j.graph)
}

/// Checks and compiles the job in `text` into its logical graph; `file_name` names it
/// in errors and relative paths resolve against `base_dir`.
pub fn load_job_str(
    text: &str,
    file_name: &str,
    base_dir: &Path,
    registry: Arc<Registry>,
    overrides: &JobOverrides,
) -> Result<LogicalGraph, SpecErrors> {
    compile_job_str(text, file_name, base_dir, registry, overrides).map(|j| j.graph)
}

#[cfg(test)]
mod tests;
