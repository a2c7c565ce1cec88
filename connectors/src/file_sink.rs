//! The file sink (`type: file`): writes JSON lines or CSV (with a header) to files.
//!
//! Readers never see a half-written file: a subtask writes to a hidden *in-progress*
//! file next to the target and renames it to its final name when it is published
//! (atomic on POSIX file systems). Output order per subtask is arrival order. There are
//! two modes, chosen by [`SinkContext::exactly_once`]:
//!
//! **Without checkpoints** (a bounded job that does not checkpoint): one file per
//! subtask, published by [`Sink::finish`] at the end of the input. With parallelism 1
//! the file is exactly `path`; with parallelism `p > 1`, subtask `i` writes `path` with
//! `-i` before the extension (`out/errors.jsonl` → `out/errors-1.jsonl`, see
//! [`subtask_path`]); the in-progress file is `.<name>.inprogress`. `pre_commit` only
//! flushes and syncs it; `commit` publishes nothing.
//!
//! **Exactly-once** (the job checkpoints), like Flink's `FileSink`: the rows between two
//! checkpoint barriers form one *part* per subtask, named after the checkpoint's epoch
//! and always with the subtask index, so that a change of parallelism never makes names
//! collide: `out/alerts.jsonl` → `out/alerts-0-000003.jsonl` ([`part_name`]), written as
//! `out/.alerts-0-000003.jsonl.inprogress` ([`hidden_part_name`]). CSV parts each start
//! with a header; an epoch without rows makes no file.
//!
//! - `pre_commit(n)` seals the current part (flush, fsync, close, fsync the directory):
//!   it is now *pending*. It returns every pending part of the subtask, e.g.
//!   `{"pending": [{"epoch": 3, "file": ".alerts-0-000003.jsonl.inprogress", "target":
//!   "alerts-0-000003.jsonl", "bytes": 123}]}` (names relative to the target's
//!   directory). Rows that arrive afterwards go to the next part.
//! - `commit(n)` publishes every pending part of epoch ≤ n by renaming it to its target,
//!   then fsyncs the directory. It is idempotent: a part whose hidden file is gone and
//!   whose target has the recorded size is already published. A part that is missing
//!   altogether is an error naming it: output is never lost silently. An existing
//!   target is never overwritten.
//! - `recover` (restoring from a checkpoint) publishes the parts the checkpoint lists,
//!   as `commit` does, then deletes the hidden parts of this subtask that were written
//!   after the checkpoint and never committed; subtask 0 also deletes those of old
//!   subtasks beyond the new parallelism. Published files are never touched.
//! - `finish` publishes nothing: output appears only through `commit`.
//!
//! The pieces are kept separate ([`InProgressPart`]: create, write, sync, seal;
//! [`publish`]: rename) and are shared by both modes and by dead-letter file sinks.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;
use weir_engine::error::{EngineError, Result};
use weir_engine::registry::{BuildContext, FieldError, SinkBuild, SinkFactory};
use weir_engine::sink::{Sink, SinkContext, SinkRecovery};

use crate::encode::{BatchEncoder, TextFormat};
use crate::options::{parse_options, schema_for};

/// Suffix of hidden in-progress and pending files.
const IN_PROGRESS_SUFFIX: &str = ".inprogress";

/// Options of `type: file` sinks.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct FileSinkOptions {
    /// The output file, relative to the job file's directory; parent directories are
    /// created. Without checkpoints, subtask `i` of `p > 1` writes `path` with `-i`
    /// before the extension (`out/errors-1.jsonl`). With checkpoints (exactly-once),
    /// each subtask publishes one file per checkpoint, `path` with `-<subtask>-<epoch>`
    /// before the extension (`out/errors-0-000003.jsonl`).
    path: String,
    /// `jsonl` (one JSON object per line, null fields left out; the default) or `csv`
    /// (with a header line). Timestamps are written as RFC 3339.
    #[serde(default)]
    format: FileFormat,
}

/// Output formats of the file sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    /// JSON lines.
    #[default]
    Jsonl,
    /// CSV with a header.
    Csv,
}

impl From<FileFormat> for TextFormat {
    fn from(f: FileFormat) -> Self {
        match f {
            FileFormat::Jsonl => TextFormat::Jsonl,
            FileFormat::Csv => TextFormat::Csv,
        }
    }
}

/// Factory of `type: file` sinks.
#[derive(Debug, Default, Clone, Copy)]
pub struct FileSinkFactory;

impl SinkFactory for FileSinkFactory {
    fn name(&self) -> &'static str {
        "file"
    }

    fn options_schema(&self) -> serde_json::Value {
        schema_for::<FileSinkOptions>()
    }

    fn build(
        &self,
        ctx: &BuildContext,
        name: &str,
        options: &serde_json::Value,
        input: SchemaRef,
    ) -> Result<SinkBuild, FieldError> {
        let opts: FileSinkOptions = parse_options(options)?;
        if opts.path.trim().is_empty() {
            return Err(FieldError::at("/path", "path must not be empty"));
        }
        if opts.path.ends_with('/') || opts.path.ends_with(std::path::MAIN_SEPARATOR) {
            return Err(FieldError::at(
                "/path",
                format!(
                    "`{}` names a directory; give a file such as `out/results.jsonl`",
                    opts.path
                ),
            ));
        }
        let target = ctx.base_dir.join(&opts.path);
        if target.is_dir() {
            return Err(FieldError::at(
                "/path",
                format!(
                    "`{}` is a directory; give a file such as `out/results.jsonl`",
                    target.display()
                ),
            ));
        }
        let format = opts.format;
        TextFormat::from(format)
            .check_schema(&input)
            .map_err(|m| FieldError::at("/format", m))?;
        let sink_name = name.to_string();
        let shown = display_path(&target);
        let cleared = target.clone();
        let created = target.clone();
        Ok(SinkBuild::new(
            format!("file {} ({})", opts.path, TextFormat::from(format).name()),
            Arc::new(move |sctx: &SinkContext| {
                Ok(Box::new(FileSink::new(
                    &sink_name,
                    created.clone(),
                    format,
                    input.clone(),
                    sctx,
                )) as Box<dyn Sink>)
            }),
        )
        .output_with(Arc::new(move |exactly_once, parallelism| {
            let name = |suffix: &str| {
                shown
                    .with_file_name(with_suffix(&shown, suffix))
                    .display()
                    .to_string()
            };
            match (exactly_once, parallelism) {
                (true, _) => format!("{} (one file per subtask and checkpoint)", name("-*-*")),
                (false, 0 | 1) => shown.display().to_string(),
                (false, _) => format!("{} (one file per subtask)", name("-*")),
            }
        }))
        .clear_with(Arc::new(move || clear_output(&cleared))))
    }
}

/// `path` relative to the working directory when it lies under it (shorter in the run
/// summary), else as it is; without `.` components.
fn display_path(path: &Path) -> PathBuf {
    let path: PathBuf = path
        .components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect();
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or(path)
}

/// Removes what earlier runs of a file sink writing `path` left: the file itself, the
/// per-subtask files (`name-<i>.ext`), published and hidden parts of checkpoints
/// (`name-<i>-<epoch>.ext`, `.name-<i>-<epoch>.ext.inprogress`) and in-progress files.
/// Files of other sinks in the directory are left alone: only the exact names this sink
/// makes are matched.
pub fn clear_output(path: &Path) -> Result<Vec<PathBuf>> {
    let Some(dir) = path.parent() else {
        return Ok(Vec::new());
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(EngineError::io("listing", dir, e)),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| EngineError::io("listing", dir, e))?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if is_output_of(path, &file_name) {
            let p = entry.path();
            std::fs::remove_file(&p).map_err(|e| EngineError::io("removing", &p, e))?;
            removed.push(p);
        }
    }
    removed.sort();
    Ok(removed)
}

/// Whether `file_name` (in the directory of `path`) is one a file sink writing `path`
/// makes: see [`clear_output`].
fn is_output_of(path: &Path, file_name: &str) -> bool {
    let visible = file_name
        .strip_prefix('.')
        .and_then(|n| n.strip_suffix(IN_PROGRESS_SUFFIX))
        .unwrap_or(file_name);
    let own = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if visible == own {
        return true;
    }
    let (stem, ext) = stem_and_extension(path);
    let name = match &ext {
        Some(ext) => match visible
            .strip_suffix(ext.as_str())
            .and_then(|n| n.strip_suffix('.'))
        {
            Some(n) => n,
            None => return false,
        },
        None => visible,
    };
    let Some(rest) = name
        .strip_prefix(stem.as_str())
        .and_then(|r| r.strip_prefix('-'))
    else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match rest.split_once('-') {
        Some((subtask, epoch)) => digits(subtask) && digits(epoch),
        None => digits(rest),
    }
}

/// The file subtask `subtask` of `parallelism` writes without checkpoints: `path` itself
/// for a single subtask, else `path` with `-subtask` before the extension.
pub fn subtask_path(path: &Path, subtask: usize, parallelism: usize) -> PathBuf {
    if parallelism <= 1 {
        return path.to_path_buf();
    }
    path.with_file_name(with_suffix(path, &format!("-{subtask}")))
}

/// The file name of `path` with `suffix` inserted before the extension.
fn with_suffix(path: &Path, suffix: &str) -> String {
    let (stem, ext) = stem_and_extension(path);
    match ext {
        Some(ext) => format!("{stem}{suffix}.{ext}"),
        None => format!("{stem}{suffix}"),
    }
}

fn stem_and_extension(path: &Path) -> (String, Option<String>) {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = path.extension().map(|e| e.to_string_lossy().into_owned());
    (stem, ext)
}

/// The in-progress file of a target: `.<name>.inprogress` in the same directory.
pub fn in_progress_path(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(hidden_part_name(&name))
}

/// The final file name of the part of checkpoint `epoch` of subtask `subtask`, for the
/// sink's `path`: `out/alerts.jsonl` → `alerts-0-000003.jsonl` (epoch zero-padded to at
/// least 6 digits, so that parts sort by epoch).
pub fn part_name(path: &Path, subtask: usize, epoch: u64) -> String {
    with_suffix(path, &format!("-{subtask}-{epoch:06}"))
}

/// The hidden name a part has until it is published: `.<name>.inprogress`.
pub fn hidden_part_name(name: &str) -> String {
    format!(".{name}{IN_PROGRESS_SUFFIX}")
}

/// If `file_name` is the hidden (in-progress or pending) part of a sink writing `path`,
/// its subtask and epoch. Only the exact names [`part_name`] makes are recognised, so
/// that files of other sinks in the same directory are never mistaken for ours.
pub fn parse_hidden_part(path: &Path, file_name: &str) -> Option<(usize, u64)> {
    let full = file_name
        .strip_prefix('.')?
        .strip_suffix(IN_PROGRESS_SUFFIX)?;
    let (stem, ext) = stem_and_extension(path);
    let name = match &ext {
        Some(ext) => full.strip_suffix(ext.as_str())?.strip_suffix('.')?,
        None => full,
    };
    let rest = name.strip_prefix(stem.as_str())?.strip_prefix('-')?;
    let (subtask, epoch) = rest.split_once('-')?;
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(subtask) || !all_digits(epoch) {
        return None;
    }
    let subtask: usize = subtask.parse().ok()?;
    let epoch: u64 = epoch.parse().ok()?;
    // Canonical spelling only: the name must be exactly the one `part_name` makes.
    (part_name(path, subtask, epoch) == full).then_some((subtask, epoch))
}

/// A file being written, not yet visible under its final name.
#[derive(Debug)]
pub struct InProgressPart {
    path: PathBuf,
    writer: BufWriter<File>,
    /// Bytes written so far.
    bytes: u64,
}

/// A part whose bytes are all on disk, ready to be published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedPart {
    /// The in-progress file.
    pub path: PathBuf,
    /// Its length.
    pub bytes: u64,
}

impl InProgressPart {
    /// Creates (or truncates: a leftover from a crash is not output) the in-progress
    /// file at `path`, creating parent directories.
    pub fn create(path: PathBuf) -> Result<Self> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    // "File exists" says little when a file stands where the directory
                    // should be.
                    let e = match dir.ancestors().find(|a| a.is_file()) {
                        Some(file) => std::io::Error::other(format!(
                            "{} is a file, not a directory",
                            file.display()
                        )),
                        None => e,
                    };
                    EngineError::io("creating directory", dir, e)
                })?;
            }
        }
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| EngineError::io("creating", &path, e))?;
        Ok(InProgressPart {
            path,
            writer: BufWriter::with_capacity(256 << 10, file),
            bytes: 0,
        })
    }

    /// Appends bytes.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.writer
            .write_all(bytes)
            .map_err(|e| EngineError::io("writing", &self.path, e))?;
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    /// Flushes and syncs what was written so far (the part stays open).
    pub fn sync(&mut self) -> Result<SealedPart> {
        self.writer
            .flush()
            .map_err(|e| EngineError::io("flushing", &self.path, e))?;
        self.writer
            .get_ref()
            .sync_data()
            .map_err(|e| EngineError::io("syncing", &self.path, e))?;
        Ok(SealedPart {
            path: self.path.clone(),
            bytes: self.bytes,
        })
    }

    /// Flushes, syncs and closes the part. If that fails (a full disk), the file is
    /// removed: nothing will publish a part that is not whole.
    pub fn seal(mut self) -> Result<SealedPart> {
        match self.sync() {
            Ok(sealed) => Ok(sealed),
            Err(e) => {
                let path = self.path.clone();
                drop(self);
                let _ = std::fs::remove_file(&path);
                Err(e)
            }
        }
    }
}

/// Makes a sealed part visible as `target` by an atomic rename, then syncs the
/// directory (best effort) so that the rename survives a crash. Publishing a part that
/// is already gone while `target` exists is a no-op, so that it is idempotent.
pub fn publish(part: &SealedPart, target: &Path) -> Result<()> {
    if !part.path.exists() && target.exists() {
        return Ok(());
    }
    std::fs::rename(&part.path, target).map_err(|e| EngineError::io("publishing", target, e))?;
    if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    tracing::info!(path = %target.display(), bytes = part.bytes, "file sink published");
    Ok(())
}

/// Fsyncs a directory so that the creation, renaming or removal of its entries survives
/// a crash. File systems that cannot sync a directory (`EINVAL`) are let off.
fn sync_dir(dir: &Path) -> Result<()> {
    let d = File::open(dir).map_err(|e| EngineError::io("opening directory", dir, e))?;
    match d.sync_all() {
        Ok(()) => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::InvalidInput | std::io::ErrorKind::Unsupported
            ) =>
        {
            tracing::debug!(dir = %dir.display(), error = %e, "cannot sync directory");
            Ok(())
        }
        Err(e) => Err(EngineError::io("syncing directory", dir, e)),
    }
}

/// A sealed part of the exactly-once mode waiting for its checkpoint to complete.
/// Names are relative to the target's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PendingPart {
    epoch: u64,
    /// The hidden file holding the part.
    file: String,
    /// The name it is published under.
    target: String,
    /// Its length.
    bytes: u64,
}

impl PendingPart {
    fn to_json(&self) -> serde_json::Value {
        json!({
            "epoch": self.epoch,
            "file": self.file,
            "target": self.target,
            "bytes": self.bytes,
        })
    }

    /// Parses an entry of a pre-commit's `pending` list; names must be plain file names.
    fn from_json(v: &serde_json::Value) -> Option<PendingPart> {
        let plain = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && !s.contains('/')
                && !s.contains(std::path::MAIN_SEPARATOR)
        };
        let file = v.get("file")?.as_str().filter(|s| plain(s))?;
        let target = v.get("target")?.as_str().filter(|s| plain(s))?;
        Some(PendingPart {
            epoch: v.get("epoch")?.as_u64()?,
            file: file.to_string(),
            target: target.to_string(),
            bytes: v.get("bytes")?.as_u64()?,
        })
    }
}

/// One subtask of a file sink.
#[derive(Debug)]
pub struct FileSink {
    name: String,
    /// The configured path; exactly-once parts are named after it.
    base: PathBuf,
    /// The directory of the output files.
    dir: PathBuf,
    /// The file published at `finish` (without checkpoints).
    target: PathBuf,
    format: FileFormat,
    schema: SchemaRef,
    /// Encodes into the current file (a new one per part: CSV headers per part).
    encoder: BatchEncoder,
    part: Option<InProgressPart>,
    published: bool,
    /// Reused encoding buffer.
    buf: Vec<u8>,
    exactly_once: bool,
    subtask: usize,
    parallelism: usize,
    /// Exactly-once: the epoch the current part is named after (the next checkpoint's,
    /// expected to be one more than the last; renamed at `pre_commit` if not).
    part_epoch: u64,
    /// Exactly-once: the last epoch pre-committed or recovered.
    last_epoch: u64,
    /// Exactly-once: sealed parts not yet published, by ascending epoch.
    pending: Vec<PendingPart>,
}

impl FileSink {
    /// A sink subtask for the configured `path` (not yet suffixed for the subtask), in
    /// `format`, for batches of `schema`. The mode and the subtask come from `ctx` (and
    /// are taken again from the context given to [`Sink::open`]).
    pub fn new(
        name: &str,
        path: PathBuf,
        format: FileFormat,
        schema: SchemaRef,
        ctx: &SinkContext,
    ) -> Self {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        FileSink {
            name: name.to_string(),
            target: subtask_path(&path, ctx.subtask, ctx.parallelism),
            base: path,
            dir,
            format,
            schema,
            encoder: BatchEncoder::new(format.into()),
            part: None,
            published: false,
            buf: Vec::new(),
            exactly_once: ctx.exactly_once,
            subtask: ctx.subtask,
            parallelism: ctx.parallelism.max(1),
            part_epoch: 1,
            last_epoch: 0,
            pending: Vec::new(),
        }
    }

    /// The file this subtask publishes at `finish` without checkpoints. With
    /// checkpoints, parts are named after the configured path instead (see
    /// [`part_name`]).
    pub fn target(&self) -> &Path {
        &self.target
    }

    fn error(&self, message: String) -> EngineError {
        EngineError::connector(format!("file sink {}", self.name), message, false)
    }

    /// The in-progress file (without checkpoints).
    fn part(&mut self) -> Result<&mut InProgressPart> {
        if self.published {
            return Err(self.error(format!("{} was already published", self.target.display())));
        }
        match &mut self.part {
            Some(p) => Ok(p),
            slot @ None => {
                let path = in_progress_path(&self.target);
                tracing::debug!(sink = %self.name, path = %path.display(), "file sink writing");
                Ok(slot.insert(InProgressPart::create(path)?))
            }
        }
    }

    /// The current part (exactly-once), created with a fresh encoder on first use.
    fn epoch_part(&mut self) -> Result<&mut InProgressPart> {
        match &mut self.part {
            Some(p) => Ok(p),
            slot @ None => {
                let name = part_name(&self.base, self.subtask, self.part_epoch);
                let path = self.dir.join(hidden_part_name(&name));
                tracing::debug!(sink = %self.name, path = %path.display(), "file sink writing part");
                self.encoder = BatchEncoder::new(self.format.into());
                Ok(slot.insert(InProgressPart::create(path)?))
            }
        }
    }

    /// The `pre_commit` answer of the exactly-once mode: every pending part.
    fn pending_json(&self) -> serde_json::Value {
        json!({ "pending": self.pending.iter().map(PendingPart::to_json).collect::<Vec<_>>() })
    }

    /// Exactly-once `pre_commit`: seals the current part as epoch `epoch`'s.
    fn seal_epoch(&mut self, epoch: u64) -> Result<serde_json::Value> {
        if let Some(part) = self.part.take() {
            if epoch <= self.last_epoch {
                return Err(self.error(format!(
                    "pre-commit of epoch {epoch} after epoch {}: epochs must increase",
                    self.last_epoch
                )));
            }
            let sealed = part.seal()?;
            if sealed.bytes == 0 {
                std::fs::remove_file(&sealed.path)
                    .map_err(|e| EngineError::io("removing", &sealed.path, e))?;
            } else {
                let target = part_name(&self.base, self.subtask, epoch);
                let file = hidden_part_name(&target);
                if self.dir.join(&target).exists() {
                    return Err(self.error(format!(
                        "{} already exists: refusing to overwrite published output (was the \
                         job restored from an older checkpoint or savepoint? move the old \
                         output away)",
                        self.dir.join(&target).display()
                    )));
                }
                let path = self.dir.join(&file);
                if sealed.path != path {
                    // The checkpoint is not the one the part was named after.
                    std::fs::rename(&sealed.path, &path)
                        .map_err(|e| EngineError::io("renaming", &sealed.path, e))?;
                }
                sync_dir(&self.dir)?;
                tracing::debug!(sink = %self.name, epoch, file = %file, bytes = sealed.bytes, "file sink part pending");
                self.pending.push(PendingPart {
                    epoch,
                    file,
                    target,
                    bytes: sealed.bytes,
                });
            }
        }
        self.last_epoch = self.last_epoch.max(epoch);
        self.part_epoch = self.last_epoch + 1;
        Ok(self.pending_json())
    }

    /// Publishes a pending part (idempotently). Returns whether it renamed a file.
    fn publish_part(&self, p: &PendingPart) -> Result<bool> {
        let from = self.dir.join(&p.file);
        let to = self.dir.join(&p.target);
        match std::fs::metadata(&from) {
            Ok(m) => {
                if std::fs::symlink_metadata(&to).is_ok() {
                    return Err(self.error(format!(
                        "cannot publish {}: {} already exists and is not overwritten",
                        from.display(),
                        to.display()
                    )));
                }
                let len = m.len();
                if len < p.bytes {
                    return Err(self.error(format!(
                        "part {} of epoch {} has {len} bytes, the checkpoint recorded {}: \
                         output was lost",
                        from.display(),
                        p.epoch,
                        p.bytes
                    )));
                }
                if len > p.bytes {
                    // Bytes beyond the checkpoint's are not part of its output.
                    tracing::warn!(sink = %self.name, file = %from.display(), len, bytes = p.bytes, "truncating part to its checkpointed length");
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&from)
                        .map_err(|e| EngineError::io("opening", &from, e))?;
                    f.set_len(p.bytes)
                        .and_then(|_| f.sync_all())
                        .map_err(|e| EngineError::io("truncating", &from, e))?;
                }
                std::fs::rename(&from, &to).map_err(|e| EngineError::io("publishing", &to, e))?;
                tracing::info!(sink = %self.name, path = %to.display(), epoch = p.epoch, bytes = p.bytes, "file sink published");
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match std::fs::metadata(&to) {
                Ok(m) if m.len() == p.bytes => Ok(false),
                Ok(m) => Err(self.error(format!(
                    "{} has {} bytes, but the part of epoch {} published there had {}",
                    to.display(),
                    m.len(),
                    p.epoch,
                    p.bytes
                ))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(self.error(format!(
                    "part {} of epoch {} is missing (neither it nor {} exists): its output \
                     is lost",
                    from.display(),
                    p.epoch,
                    to.display()
                ))),
                Err(e) => Err(EngineError::io("reading", &to, e)),
            },
            Err(e) => Err(EngineError::io("reading", &from, e)),
        }
    }

    /// Deletes the hidden parts that `recovery`'s checkpoint does not account for.
    fn delete_uncommitted(&self, recovery: &SinkRecovery, listed: &BTreeSet<String>) -> Result<()> {
        let p = self.parallelism;
        let old = if recovery.old_parallelism == 0 {
            p
        } else {
            recovery.old_parallelism
        };
        // Whose parts this subtask cleans up, and whether it holds every pre-commit of
        // those old subtasks (then an unlisted part of an epoch up to the checkpoint's
        // is a leftover too; otherwise subtask 0 may be publishing it right now).
        let mine = |s: usize| s == self.subtask || (self.subtask == 0 && s >= p && s < old);
        let holds_all = old == p || self.subtask == 0;
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(EngineError::io("listing", &self.dir, e)),
        };
        let mut removed = 0usize;
        for entry in entries {
            let entry = entry.map_err(|e| EngineError::io("listing", &self.dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some((s, epoch)) = parse_hidden_part(&self.base, &name) else {
                continue;
            };
            if !mine(s) || listed.contains(&name) || (epoch <= recovery.epoch && !holds_all) {
                continue;
            }
            let path = entry.path();
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    removed += 1;
                    tracing::info!(sink = %self.name, file = %path.display(), epoch, "deleted uncommitted part");
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(EngineError::io("deleting", &path, e)),
            }
        }
        if removed > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

/// A sink dropped with a part still open (the job failed: a full disk, a failed
/// neighbour, a cancelled stop) removes that hidden file: it holds no output anyone
/// will publish (without checkpoints the job failed; with them, its rows are after the
/// last checkpoint and are replayed). Sealed, pending parts stay for recovery.
impl Drop for FileSink {
    fn drop(&mut self) {
        if let Some(part) = self.part.take() {
            let path = part.path.clone();
            drop(part);
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::debug!(sink = %self.name, path = %path.display(), "removed an unfinished in-progress file")
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(sink = %self.name, path = %path.display(), error = %e, "could not remove an unfinished in-progress file")
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl Sink for FileSink {
    async fn open(&mut self, ctx: &SinkContext) -> Result<()> {
        self.exactly_once = ctx.exactly_once;
        self.subtask = ctx.subtask;
        self.parallelism = ctx.parallelism.max(1);
        self.target = subtask_path(&self.base, ctx.subtask, ctx.parallelism);
        if self.exactly_once {
            // Parts are created when rows arrive; the directory is needed for recovery.
            std::fs::create_dir_all(&self.dir)
                .map_err(|e| EngineError::io("creating directory", &self.dir, e))
        } else {
            self.part().map(|_| ())
        }
    }

    async fn write_batch(&mut self, batch: RecordBatch) -> Result<()> {
        if self.exactly_once && batch.num_rows() == 0 {
            // An epoch without rows makes no part.
            return Ok(());
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let r = if self.exactly_once {
            // The part first: a new part comes with a new encoder (CSV header).
            self.epoch_part()
                .map(|_| ())
                .and_then(|_| self.encoder.write(&mut buf, &batch))
                .and_then(|_| self.epoch_part()?.write(&buf))
        } else {
            self.encoder
                .write(&mut buf, &batch)
                .and_then(|_| self.part()?.write(&buf))
        };
        if buf.capacity() > 4 << 20 {
            buf = Vec::new();
        }
        self.buf = buf;
        r
    }

    async fn pre_commit(&mut self, epoch: u64) -> Result<serde_json::Value> {
        if self.exactly_once {
            return self.seal_epoch(epoch);
        }
        // Everything written so far is durable; the file is not yet published.
        let sealed = self.part()?.sync()?;
        Ok(json!({
            "epoch": epoch,
            "in_progress": sealed.path.display().to_string(),
            "bytes": sealed.bytes,
            "target": self.target.display().to_string(),
        }))
    }

    async fn commit(&mut self, epoch: u64) -> Result<()> {
        if !self.exactly_once {
            // One file per subtask is published at the end (`finish`).
            tracing::debug!(sink = %self.name, epoch, "file sink commit: output is published at finish");
            return Ok(());
        }
        let mut renamed = false;
        let mut result = Ok(());
        while let Some(p) = self.pending.first().filter(|p| p.epoch <= epoch) {
            match self.publish_part(p) {
                Ok(r) => {
                    renamed |= r;
                    self.pending.remove(0);
                    if r {
                        // Crash point for the exactly-once tests: part of the commit
                        // is published, the rest (and the directory sync) not yet.
                        weir_engine::fault::point("during_commit");
                    }
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if renamed {
            sync_dir(&self.dir)?;
        }
        result
    }

    async fn recover(&mut self, recovery: &SinkRecovery) -> Result<()> {
        if !self.exactly_once {
            tracing::debug!(sink = %self.name, epoch = recovery.epoch, "file sink without checkpoints: nothing to recover");
            return Ok(());
        }
        let mut parts = Vec::new();
        for handle in &recovery.pending {
            if handle.is_null() {
                continue;
            }
            let list = handle
                .get("pending")
                .and_then(|l| l.as_array())
                .ok_or_else(|| {
                    self.error(format!(
                        "cannot recover from pre-commit {handle}: expected {{\"pending\": [...]}}"
                    ))
                })?;
            for v in list {
                parts.push(PendingPart::from_json(v).ok_or_else(|| {
                    self.error(format!("cannot recover: invalid pending part {v}"))
                })?);
            }
        }
        parts.sort_by(|a, b| (a.epoch, &a.target).cmp(&(b.epoch, &b.target)));
        parts.dedup();
        let mut renamed = false;
        for p in &parts {
            renamed |= self.publish_part(p)?;
        }
        if renamed {
            sync_dir(&self.dir)?;
        }
        let listed: BTreeSet<String> = parts.iter().map(|p| p.file.clone()).collect();
        self.delete_uncommitted(recovery, &listed)?;
        self.pending.clear();
        self.last_epoch = self.last_epoch.max(recovery.epoch);
        self.part_epoch = self.last_epoch + 1;
        tracing::info!(sink = %self.name, subtask = self.subtask, epoch = recovery.epoch, parts = parts.len(), "file sink recovered");
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        if self.exactly_once {
            // Output becomes visible through `commit` only.
            tracing::debug!(sink = %self.name, "file sink finish under exactly-once: nothing to publish");
            return Ok(());
        }
        if self.published {
            return Ok(());
        }
        let mut buf = Vec::new();
        self.encoder.finish(&mut buf, &self.schema)?;
        self.part()?.write(&buf)?;
        let part = self.part.take();
        if let Some(part) = part {
            let sealed = part.seal()?;
            publish(&sealed, &self.target)?;
        }
        self.published = true;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests fail loudly on purpose.
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array, StringArray, TimestampMillisecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use serde_json::json;

    /// The error of a build that must fail.
    fn err<T>(r: Result<T, FieldError>) -> FieldError {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => e,
        }
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            Field::new("service", DataType::Utf8, true),
            Field::new("n", DataType::Int64, false),
            Field::new("avg", DataType::Float64, true),
            Field::new(
                "local",
                DataType::Timestamp(TimeUnit::Millisecond, Some("+01:00".into())),
                true,
            ),
        ]))
    }

    fn batch(rows: &[(i64, Option<&str>, i64, Option<f64>)]) -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(TimestampMillisecondArray::from_iter_values(
                    rows.iter().map(|r| r.0),
                )),
                Arc::new(StringArray::from_iter(rows.iter().map(|r| r.1))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
                Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.3))),
                Arc::new(
                    TimestampMillisecondArray::from_iter(rows.iter().map(|r| Some(r.0)))
                        .with_timezone("+01:00"),
                ),
            ],
        )
        .unwrap()
    }

    fn ctx(subtask: usize, parallelism: usize) -> SinkContext {
        SinkContext {
            exactly_once: false,
            job: "j".into(),
            sink: "out".into(),
            subtask,
            parallelism,
        }
    }

    fn build(dir: &Path, options: serde_json::Value) -> Result<SinkBuild, FieldError> {
        let bctx = BuildContext {
            checkpoints: Default::default(),
            aggregates: Default::default(),
            job: "j".into(),
            base_dir: dir.to_path_buf(),
        };
        FileSinkFactory.build(&bctx, "out", &options, schema())
    }

    async fn write_all(b: &SinkBuild, subtask: usize, parallelism: usize, dir: &Path) -> PathBuf {
        let c = ctx(subtask, parallelism);
        let mut sink = (b.create)(&c).unwrap();
        sink.open(&c).await.unwrap();
        sink.write_batch(batch(&[(1_704_067_200_000, Some("api"), 3, Some(1.5))]))
            .await
            .unwrap();
        sink.write_batch(batch(&[])).await.unwrap();
        sink.write_batch(batch(&[
            (1_704_067_200_250, None, 4, None),
            (1_704_067_260_000, Some("d\"b,x"), 5, Some(-2.0)),
        ]))
        .await
        .unwrap();
        let meta = sink.pre_commit(1).await.unwrap();
        assert!(meta["bytes"].as_u64().unwrap() > 0);
        // Before finish only the in-progress file exists.
        let target = PathBuf::from(meta["target"].as_str().unwrap());
        assert!(!target.exists());
        assert!(in_progress_path(&target).exists());
        assert!(in_progress_path(&target).starts_with(dir.join("out")));
        sink.commit(1).await.unwrap();
        sink.finish().await.unwrap();
        sink.finish().await.unwrap(); // idempotent
        assert!(target.exists());
        assert!(!in_progress_path(&target).exists());
        target
    }

    #[tokio::test]
    async fn jsonl_output_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let b = build(dir.path(), json!({"path": "out/result.jsonl"})).unwrap();
        let target = write_all(&b, 0, 1, dir.path()).await;
        assert_eq!(target, dir.path().join("out/result.jsonl"));
        let text = std::fs::read_to_string(&target).unwrap();
        assert_eq!(
            text,
            concat!(
                "{\"ts\":\"2024-01-01T00:00:00Z\",\"service\":\"api\",\"n\":3,\"avg\":1.5,\"local\":\"2024-01-01T01:00:00+01:00\"}\n",
                "{\"ts\":\"2024-01-01T00:00:00.250Z\",\"n\":4,\"local\":\"2024-01-01T01:00:00.250+01:00\"}\n",
                "{\"ts\":\"2024-01-01T00:01:00Z\",\"service\":\"d\\\"b,x\",\"n\":5,\"avg\":-2.0,\"local\":\"2024-01-01T01:01:00+01:00\"}\n",
            )
        );
        assert!(!in_progress_path(&target).exists());
        let names: Vec<_> = std::fs::read_dir(dir.path().join("out")).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[tokio::test]
    async fn csv_output_exactly_per_subtask() {
        let dir = tempfile::tempdir().unwrap();
        let b = build(
            dir.path(),
            json!({"path": "out/result.csv", "format": "csv"}),
        )
        .unwrap();
        for s in 0..2 {
            let target = write_all(&b, s, 2, dir.path()).await;
            assert_eq!(target, dir.path().join(format!("out/result-{s}.csv")));
            let text = std::fs::read_to_string(&target).unwrap();
            assert_eq!(
                text,
                concat!(
                    "ts,service,n,avg,local\n",
                    "2024-01-01T00:00:00Z,api,3,1.5,2024-01-01T01:00:00+01:00\n",
                    "2024-01-01T00:00:00.250Z,,4,,2024-01-01T01:00:00.250+01:00\n",
                    "2024-01-01T00:01:00Z,\"d\"\"b,x\",5,-2.0,2024-01-01T01:01:00+01:00\n",
                )
            );
        }
        assert!(!dir.path().join("out/result.csv").exists());
    }

    #[tokio::test]
    async fn empty_output_is_still_published() {
        let dir = tempfile::tempdir().unwrap();
        let b = build(
            dir.path(),
            json!({"path": "a/b/empty.csv", "format": "csv"}),
        )
        .unwrap();
        let c = ctx(0, 1);
        let mut sink = (b.create)(&c).unwrap();
        sink.finish().await.unwrap();
        let text = std::fs::read_to_string(dir.path().join("a/b/empty.csv")).unwrap();
        assert_eq!(text, "ts,service,n,avg,local\n");
        let b = build(dir.path(), json!({"path": "empty.jsonl"})).unwrap();
        let mut sink = (b.create)(&c).unwrap();
        sink.open(&c).await.unwrap();
        assert!(dir.path().join(".empty.jsonl.inprogress").exists());
        sink.finish().await.unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("empty.jsonl")).unwrap(),
            ""
        );
        assert!(!dir.path().join(".empty.jsonl.inprogress").exists());
        // Writing after publishing is an error, not a silent loss.
        assert!(sink
            .write_batch(batch(&[(0, None, 1, None)]))
            .await
            .is_err());
    }

    #[test]
    fn paths_per_subtask() {
        let p = Path::new("out/errors.jsonl");
        assert_eq!(subtask_path(p, 0, 1), PathBuf::from("out/errors.jsonl"));
        assert_eq!(subtask_path(p, 1, 3), PathBuf::from("out/errors-1.jsonl"));
        assert_eq!(
            subtask_path(Path::new("out/errors"), 2, 3),
            PathBuf::from("out/errors-2")
        );
        assert_eq!(
            subtask_path(Path::new("a.tar.gz"), 0, 2),
            PathBuf::from("a.tar-0.gz")
        );
        assert_eq!(
            in_progress_path(p),
            PathBuf::from("out/.errors.jsonl.inprogress")
        );
    }

    #[test]
    fn option_errors() {
        let dir = tempfile::tempdir().unwrap();
        let e = err(build(
            dir.path(),
            json!({"path": "x.jsonl", "format": "parquet"}),
        ));
        assert_eq!(e.path, "/format");
        let e = err(build(
            dir.path(),
            json!({"path": "x.jsonl", "compression": "gzip"}),
        ));
        assert_eq!(e.path, "/compression");
        let e = err(build(dir.path(), json!({"format": "csv"})));
        assert!(e.message.contains("`path`"), "{e}");
        let e = err(build(dir.path(), json!({"path": "out/"})));
        assert_eq!(e.path, "/path");
        let e = err(build(dir.path(), json!({"path": "."})));
        assert_eq!(e.path, "/path");
        let s = FileSinkFactory.options_schema();
        let props = s["properties"].as_object().unwrap();
        let mut keys: Vec<_> = props.keys().collect();
        keys.sort();
        assert_eq!(keys, vec!["format", "path"]);
        assert_eq!(s["required"], json!(["path"]));
    }

    // ---- exactly-once ----

    /// Every row's timestamp: 2024-01-01T00:00:00Z.
    const TS: i64 = 1_704_067_200_000;

    fn eo_ctx(subtask: usize, parallelism: usize) -> SinkContext {
        SinkContext {
            exactly_once: true,
            ..ctx(subtask, parallelism)
        }
    }

    async fn eo_sink(b: &SinkBuild, subtask: usize, parallelism: usize) -> Box<dyn Sink> {
        let c = eo_ctx(subtask, parallelism);
        let mut sink = (b.create)(&c).unwrap();
        sink.open(&c).await.unwrap();
        sink
    }

    /// A batch with one row per `n`.
    fn rows(ns: &[i64]) -> RecordBatch {
        let rows: Vec<_> = ns.iter().map(|&n| (TS, Some("s"), n, None)).collect();
        batch(&rows)
    }

    /// The file names in `dir`, sorted.
    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// The `n` of every line of a JSON-lines file.
    fn read_ns(path: &Path) -> Vec<i64> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["n"]
                    .as_i64()
                    .unwrap()
            })
            .collect()
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn recovery(epoch: u64, pending: Vec<serde_json::Value>, old: usize) -> SinkRecovery {
        SinkRecovery {
            epoch,
            pending,
            old_parallelism: old,
            data: Vec::new(),
        }
    }

    #[test]
    fn part_names() {
        let p = Path::new("out/alerts.jsonl");
        assert_eq!(part_name(p, 0, 3), "alerts-0-000003.jsonl");
        assert_eq!(part_name(p, 12, 1_234_567), "alerts-12-1234567.jsonl");
        assert_eq!(part_name(Path::new("x/errs"), 1, 0), "errs-1-000000");
        assert_eq!(part_name(Path::new("a.tar.gz"), 2, 9), "a.tar-2-000009.gz");
        assert_eq!(
            hidden_part_name("alerts-0-000003.jsonl"),
            ".alerts-0-000003.jsonl.inprogress"
        );
        let parse = |n: &str| parse_hidden_part(p, n);
        assert_eq!(parse(".alerts-0-000003.jsonl.inprogress"), Some((0, 3)));
        assert_eq!(
            parse(".alerts-7-1234567.jsonl.inprogress"),
            Some((7, 1_234_567))
        );
        for other in [
            "alerts-0-000003.jsonl",               // published
            ".alerts-0-000003.jsonl",              // no suffix
            ".alerts.jsonl.inprogress",            // without checkpoints
            ".alerts-1.jsonl.inprogress",          // without checkpoints, p > 1
            ".alerts-0-3.jsonl.inprogress",        // not zero-padded
            ".alerts-00-000003.jsonl.inprogress",  // not canonical
            ".alerts-0-0000003.jsonl.inprogress",  // not canonical
            ".alerts-x-000003.jsonl.inprogress",   // not a subtask
            ".alerts-0-000003.csv.inprogress",     // other extension
            ".alerts-0-0-000003.jsonl.inprogress", // the sink `alerts-0.jsonl`
            ".other-0-000003.jsonl.inprogress",    // another sink
            ".alertsx-0-000003.jsonl.inprogress",  // another sink
        ] {
            assert_eq!(parse(other), None, "{other}");
        }
        assert_eq!(
            parse_hidden_part(Path::new("errs"), ".errs-1-000002.inprogress"),
            Some((1, 2))
        );
        assert_eq!(
            parse_hidden_part(Path::new("a.tar.gz"), ".a.tar-2-000009.gz.inprogress"),
            Some((2, 9))
        );
    }

    #[tokio::test]
    async fn exactly_once_parts_appear_only_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let b = build(dir.path(), json!({"path": "out/alerts.jsonl"})).unwrap();
        let mut s = eo_sink(&b, 0, 1).await;
        assert!(names(&out).is_empty(), "open creates no file");
        s.write_batch(rows(&[1, 2])).await.unwrap();
        s.write_batch(rows(&[])).await.unwrap();
        let h1 = s.pre_commit(1).await.unwrap();
        let hidden1 = ".alerts-0-000001.jsonl.inprogress";
        let len1 = std::fs::metadata(out.join(hidden1)).unwrap().len();
        assert!(len1 > 0);
        assert_eq!(
            h1,
            json!({"pending": [{"epoch": 1, "file": hidden1, "target": "alerts-0-000001.jsonl", "bytes": len1}]})
        );
        assert_eq!(names(&out), strings(&[hidden1]));
        // Rows after the barrier go to the next part.
        s.write_batch(rows(&[3])).await.unwrap();
        let h2 = s.pre_commit(2).await.unwrap();
        let pending = h2["pending"].as_array().unwrap();
        assert_eq!(pending.len(), 2, "{h2}");
        assert_eq!(pending[0], h1["pending"][0]);
        assert_eq!(pending[1]["epoch"], 2);
        assert_eq!(pending[1]["target"], "alerts-0-000002.jsonl");
        // Epochs without rows (or with empty batches only) make no file.
        let h3 = s.pre_commit(3).await.unwrap();
        assert_eq!(h3, h2);
        s.write_batch(rows(&[])).await.unwrap();
        assert_eq!(s.pre_commit(4).await.unwrap(), h2);
        let hidden2 = ".alerts-0-000002.jsonl.inprogress";
        assert_eq!(names(&out), strings(&[hidden1, hidden2]));

        s.commit(1).await.unwrap();
        assert_eq!(names(&out), strings(&[hidden2, "alerts-0-000001.jsonl"]));
        assert_eq!(read_ns(&out.join("alerts-0-000001.jsonl")), vec![1, 2]);
        s.commit(1).await.unwrap(); // idempotent
        s.commit(4).await.unwrap(); // every pending epoch up to 4
        assert_eq!(
            names(&out),
            strings(&["alerts-0-000001.jsonl", "alerts-0-000002.jsonl"])
        );
        assert_eq!(read_ns(&out.join("alerts-0-000002.jsonl")), vec![3]);
        s.commit(4).await.unwrap();
        s.commit(2).await.unwrap();
        // The next pre-commit lists nothing pending.
        assert_eq!(s.pre_commit(5).await.unwrap(), json!({"pending": []}));
        // finish publishes nothing under exactly-once.
        s.write_batch(rows(&[9])).await.unwrap();
        s.finish().await.unwrap();
        assert_eq!(
            names(&out),
            strings(&[
                ".alerts-0-000006.jsonl.inprogress",
                "alerts-0-000001.jsonl",
                "alerts-0-000002.jsonl"
            ])
        );
        assert!(!dir.path().join("out/alerts.jsonl").exists());
    }

    #[tokio::test]
    async fn exactly_once_csv_parts_each_have_a_header() {
        let dir = tempfile::tempdir().unwrap();
        let b = build(dir.path(), json!({"path": "alerts.csv", "format": "csv"})).unwrap();
        let mut s = eo_sink(&b, 1, 2).await;
        s.write_batch(rows(&[1])).await.unwrap();
        s.pre_commit(1).await.unwrap();
        s.write_batch(rows(&[])).await.unwrap();
        s.pre_commit(2).await.unwrap();
        s.write_batch(rows(&[2])).await.unwrap();
        s.write_batch(rows(&[3])).await.unwrap();
        s.pre_commit(3).await.unwrap();
        s.commit(3).await.unwrap();
        let header = "ts,service,n,avg,local\n";
        let row = |n: i64| format!("2024-01-01T00:00:00Z,s,{n},,2024-01-01T01:00:00+01:00\n");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("alerts-1-000001.csv")).unwrap(),
            format!("{header}{}", row(1))
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("alerts-1-000003.csv")).unwrap(),
            format!("{header}{}{}", row(2), row(3))
        );
        assert_eq!(
            names(dir.path()),
            strings(&["alerts-1-000001.csv", "alerts-1-000003.csv"])
        );
    }

    #[tokio::test]
    async fn exactly_once_recover_publishes_pending_and_deletes_later_parts() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let b = build(dir.path(), json!({"path": "out/alerts.jsonl"})).unwrap();
        let mut a = eo_sink(&b, 0, 1).await;
        a.write_batch(rows(&[1])).await.unwrap();
        a.pre_commit(1).await.unwrap();
        a.commit(1).await.unwrap();
        a.write_batch(rows(&[2])).await.unwrap();
        let h2 = a.pre_commit(2).await.unwrap();
        a.write_batch(rows(&[3])).await.unwrap();
        a.pre_commit(3).await.unwrap();
        a.write_batch(rows(&[4])).await.unwrap(); // in progress, epoch 4
                                                  // Crash (kill -9: no destructor runs): checkpoint 2 completed, nothing committed
                                                  // since.
        std::mem::forget(a);
        // Files that are not this subtask's uncommitted parts.
        let foreign = [
            ".alerts-1-000003.jsonl.inprogress", // another subtask
            ".other-0-000003.jsonl.inprogress",  // another sink
            ".alerts.jsonl.inprogress",          // without checkpoints
            "alerts-0-000099.jsonl",             // published
        ];
        for f in foreign {
            std::fs::write(out.join(f), "{\"n\":0}\n").unwrap();
        }
        assert!(out.join(".alerts-0-000003.jsonl.inprogress").exists());
        assert!(out.join(".alerts-0-000004.jsonl.inprogress").exists());

        let mut b2 = eo_sink(&b, 0, 1).await;
        b2.recover(&recovery(2, vec![h2.clone()], 1)).await.unwrap();
        let mut expected = strings(&foreign);
        expected.extend(strings(&["alerts-0-000001.jsonl", "alerts-0-000002.jsonl"]));
        expected.sort();
        assert_eq!(names(&out), expected);
        assert_eq!(read_ns(&out.join("alerts-0-000001.jsonl")), vec![1]);
        assert_eq!(read_ns(&out.join("alerts-0-000002.jsonl")), vec![2]);
        // Recovering twice (a crash during recovery) is fine.
        b2.recover(&recovery(2, vec![h2.clone()], 1)).await.unwrap();
        assert_eq!(names(&out), expected);
        // The restored run goes on with epoch 3.
        b2.write_batch(rows(&[5])).await.unwrap();
        b2.pre_commit(3).await.unwrap();
        b2.commit(3).await.unwrap();
        assert_eq!(read_ns(&out.join("alerts-0-000003.jsonl")), vec![5]);
    }

    #[tokio::test]
    async fn exactly_once_recover_after_a_change_of_parallelism() {
        let dir = tempfile::tempdir().unwrap();
        let b = build(dir.path(), json!({"path": "alerts.jsonl"})).unwrap();
        // Three old subtasks, each with parts 1 and 2 pending at checkpoint 2 and an
        // uncommitted part 3.
        let mut handles = Vec::new();
        for k in 0..3i64 {
            let mut s = eo_sink(&b, k as usize, 3).await;
            s.write_batch(rows(&[10 * k + 1])).await.unwrap();
            s.pre_commit(1).await.unwrap();
            s.write_batch(rows(&[10 * k + 2])).await.unwrap();
            let h = s.pre_commit(2).await.unwrap();
            assert_eq!(h["pending"].as_array().unwrap().len(), 2);
            handles.push(h);
            s.write_batch(rows(&[10 * k + 3])).await.unwrap();
            s.pre_commit(3).await.unwrap();
        }
        assert_eq!(names(dir.path()).len(), 9);
        // New parallelism 2: subtask 1 gets no handles; it must leave old subtask 1's
        // checkpointed parts to subtask 0 and delete only its part 3.
        let mut s1 = eo_sink(&b, 1, 2).await;
        s1.recover(&recovery(2, vec![], 3)).await.unwrap();
        assert!(dir
            .path()
            .join(".alerts-1-000001.jsonl.inprogress")
            .exists());
        assert!(dir
            .path()
            .join(".alerts-1-000002.jsonl.inprogress")
            .exists());
        assert!(!dir
            .path()
            .join(".alerts-1-000003.jsonl.inprogress")
            .exists());
        assert!(dir
            .path()
            .join(".alerts-0-000003.jsonl.inprogress")
            .exists());
        assert!(dir
            .path()
            .join(".alerts-2-000003.jsonl.inprogress")
            .exists());
        // Subtask 0 publishes everything the checkpoint lists and deletes the rest,
        // including the parts of old subtask 2.
        let mut s0 = eo_sink(&b, 0, 2).await;
        s0.recover(&recovery(2, handles, 3)).await.unwrap();
        let mut expected = Vec::new();
        for k in 0..3 {
            for e in 1..=2 {
                expected.push(format!("alerts-{k}-00000{e}.jsonl"));
            }
        }
        assert_eq!(names(dir.path()), expected);
        for k in 0..3i64 {
            for e in 1..=2i64 {
                let f = dir.path().join(format!("alerts-{k}-00000{e}.jsonl"));
                assert_eq!(read_ns(&f), vec![10 * k + e]);
            }
        }
    }

    #[tokio::test]
    async fn exactly_once_missing_or_damaged_parts_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let b = build(dir.path(), json!({"path": "alerts.jsonl"})).unwrap();
        let hidden = dir.path().join(".alerts-0-000001.jsonl.inprogress");
        // Missing at recovery.
        let mut a = eo_sink(&b, 0, 1).await;
        a.write_batch(rows(&[1])).await.unwrap();
        let h = a.pre_commit(1).await.unwrap();
        drop(a);
        std::fs::remove_file(&hidden).unwrap();
        let mut r = eo_sink(&b, 0, 1).await;
        let e = r.recover(&recovery(1, vec![h], 1)).await.unwrap_err();
        assert!(
            e.to_string().contains(".alerts-0-000001.jsonl.inprogress"),
            "{e}"
        );
        assert!(e.to_string().contains("missing"), "{e}");
        // Missing at commit: an error, and the part stays pending (not dropped).
        let mut a = eo_sink(&b, 0, 1).await;
        a.write_batch(rows(&[1])).await.unwrap();
        a.pre_commit(1).await.unwrap();
        std::fs::remove_file(&hidden).unwrap();
        let e = a.commit(1).await.unwrap_err();
        assert!(
            e.to_string().contains(".alerts-0-000001.jsonl.inprogress"),
            "{e}"
        );
        assert!(a.commit(1).await.is_err());
        assert_eq!(
            a.pre_commit(2).await.unwrap()["pending"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        // Shorter than recorded: bytes were lost.
        let mut a = eo_sink(&b, 0, 1).await;
        a.write_batch(rows(&[1, 2])).await.unwrap();
        let h = a.pre_commit(1).await.unwrap();
        drop(a);
        let len = std::fs::metadata(&hidden).unwrap().len();
        let f = OpenOptions::new().write(true).open(&hidden).unwrap();
        f.set_len(len - 3).unwrap();
        let mut r = eo_sink(&b, 0, 1).await;
        let e = r
            .recover(&recovery(1, vec![h.clone()], 1))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("lost"), "{e}");
        // Published with another size.
        std::fs::remove_file(&hidden).unwrap();
        std::fs::write(dir.path().join("alerts-0-000001.jsonl"), "x\n").unwrap();
        let e = r
            .recover(&recovery(1, vec![h.clone()], 1))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("alerts-0-000001.jsonl"), "{e}");
        // A handle that is not a file sink's.
        let e = r
            .recover(&recovery(1, vec![json!({"in_progress": "x"})], 1))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("pending"), "{e}");
        let e = r
            .recover(&recovery(
                1,
                vec![json!({"pending": [{"epoch": 1, "file": "../x", "target": "y", "bytes": 1}]})],
                1,
            ))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("invalid"), "{e}");
    }

    #[tokio::test]
    async fn exactly_once_epochs_name_parts_and_published_output_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let b = build(dir.path(), json!({"path": "alerts.jsonl"})).unwrap();
        let mut s = eo_sink(&b, 0, 1).await;
        s.write_batch(rows(&[1])).await.unwrap();
        assert!(dir
            .path()
            .join(".alerts-0-000001.jsonl.inprogress")
            .exists());
        // The checkpoint is not the one expected: the part takes its epoch.
        let h = s.pre_commit(5).await.unwrap();
        assert_eq!(h["pending"][0]["file"], ".alerts-0-000005.jsonl.inprogress");
        assert_eq!(
            names(dir.path()),
            strings(&[".alerts-0-000005.jsonl.inprogress"])
        );
        s.write_batch(rows(&[2])).await.unwrap();
        assert!(dir
            .path()
            .join(".alerts-0-000006.jsonl.inprogress")
            .exists());
        let e = s.pre_commit(5).await.unwrap_err();
        assert!(e.to_string().contains("must increase"), "{e}");
        // A part whose final name is taken (a restore from an older savepoint).
        let mut s = eo_sink(&b, 0, 1).await;
        std::fs::write(dir.path().join("alerts-0-000007.jsonl"), "old\n").unwrap();
        s.recover(&recovery(6, vec![], 1)).await.unwrap();
        s.write_batch(rows(&[3])).await.unwrap();
        let e = s.pre_commit(7).await.unwrap_err();
        assert!(e.to_string().contains("refusing to overwrite"), "{e}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("alerts-0-000007.jsonl")).unwrap(),
            "old\n"
        );
    }
}
