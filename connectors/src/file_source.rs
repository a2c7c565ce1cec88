//! The file source (`type: file`): reads the lines of one file or of every file that a
//! glob matches, as raw batches (`payload`, `offset` = 1-based line number) for a
//! format to decode.
//!
//! Each file is a split whose id is the file's index in the sorted list of matches;
//! file `i` goes to subtask `i % parallelism`. A subtask reads its files one after the
//! other with buffered reads in bounded chunks, so memory stays flat whatever the file
//! size. Its position is exact: the file being read (`file`, `path`, `byte_offset`,
//! `line`), the paths of the files it has finished (`done`) and, after a change of
//! parallelism, where later files partly read by the old run go on (`resume`). A
//! restored source goes on with the line after the last one it emitted.
//!
//! Restored with another parallelism ([`Source::restore_all`]), every new subtask reads
//! all old positions, works out by path which files are finished and where partly read
//! ones stopped, and reads exactly the rest of the files it owns under the new
//! assignment. Files are matched by path, so a glob that now matches other files is
//! fine: files the checkpoint does not know are read whole, files that are gone are
//! forgotten.
//!
//! A line longer than `max_record_bytes` is truncated to its first `max_record_bytes`
//! bytes and the rest is skipped up to the newline. Such a record is flagged in its
//! batch's schema metadata under [`TRUNCATED_ROWS_METADATA`] (see [`truncated_rows`]),
//! so that the decoder can dead-letter it as too large instead of decoding a prefix.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, BinaryArray, UInt64Array};
use arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;
use weir_engine::error::{EngineError, Result};
use weir_engine::registry::{BuildContext, FieldError, SourceBuild, SourceFactory};
use weir_engine::source::{raw_schema, Source, SourceContext, SourcePoll};

use crate::options::{parse_options, schema_for};
use crate::pace::Pacer;

/// Default longest record: 1 MiB.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1 << 20;

pub use weir_engine::source::{truncated_rows, TRUNCATED_ROWS_METADATA};

/// A batch is also closed once its payloads reach this many bytes, so that a batch of
/// long lines stays small.
const MAX_BATCH_BYTES: usize = 8 << 20;

/// Read buffer per open file. Lines that lie wholly inside it are copied once, from it
/// into the batch; a line that straddles its end goes through a line buffer.
const READ_BUFFER: usize = 256 << 10;
/// Largest `max_record_bytes`: with it, a batch's payload bytes (at most
/// `MAX_BATCH_BYTES` plus one line) always fit Arrow's 32-bit offsets.
const MAX_RECORD_LIMIT: u64 = 1 << 30;
/// How many lines a batch reads between two looks at the linger clock.
const LINGER_CHECK: usize = 64;

/// Options of `type: file` sources.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct FileSourceOptions {
    /// A file, or a glob pattern such as `data/*.jsonl` (`*` does not cross `/`; hidden
    /// files are not matched), relative to the job file's directory. Files are read in
    /// sorted order, each file as one split.
    path: String,
    /// Skip the first line of each file (a CSV header). Default false.
    #[serde(default)]
    header: bool,
    /// Longest record in bytes (default 1048576 = 1 MiB). A longer line is truncated to
    /// this many bytes and dead-lettered by the format as too large. At most 1 GiB.
    #[schemars(range(min = 1, max = 1_073_741_824))]
    max_record_bytes: Option<u64>,
    /// Read at most this many records per second per subtask (replaying a file at a
    /// pace, e.g. for demos and tests). Default: as fast as possible.
    rate: Option<f64>,
}

/// Factory of `type: file` sources.
#[derive(Debug, Default, Clone, Copy)]
pub struct FileSourceFactory;

impl FileSourceFactory {
    /// Lists the files `pattern` matches (relative to `base_dir`), sorted.
    fn resolve(base_dir: &Path, pattern: &str) -> Result<Vec<PathBuf>, FieldError> {
        if pattern.trim().is_empty() {
            return Err(FieldError::at("/path", "path must not be empty"));
        }
        let full = if Path::new(pattern).is_absolute() {
            pattern.to_string()
        } else {
            let base = glob::Pattern::escape(&base_dir.to_string_lossy());
            if base.is_empty() {
                pattern.to_string()
            } else {
                format!("{}/{}", base.trim_end_matches('/'), pattern)
            }
        };
        let options = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: true,
        };
        let paths = glob::glob_with(&full, options).map_err(|e| {
            FieldError::at(
                "/path",
                format!("`{pattern}` is not a valid glob pattern: {e}"),
            )
        })?;
        let mut files = Vec::new();
        let mut dirs = 0usize;
        for p in paths {
            let p = p.map_err(|e| {
                FieldError::at(
                    "/path",
                    format!("cannot read {}: {}", e.path().display(), e),
                )
            })?;
            if p.is_file() {
                files.push(p);
            } else {
                dirs += 1;
            }
        }
        if files.is_empty() {
            let mut msg = format!(
                "no file matches `{pattern}` (looked in {})",
                base_dir.display()
            );
            if dirs > 0 {
                msg.push_str(&format!(
                    "; {dirs} director{} matched, give a pattern of files such as `{}/*`",
                    if dirs == 1 { "y" } else { "ies" },
                    pattern.trim_end_matches('/')
                ));
            }
            return Err(FieldError::at("/path", msg));
        }
        files.sort();
        Ok(files)
    }
}

impl SourceFactory for FileSourceFactory {
    fn name(&self) -> &'static str {
        "file"
    }

    fn options_schema(&self) -> serde_json::Value {
        schema_for::<FileSourceOptions>()
    }

    /// Files hold recorded events: one from the far future is a mistake.
    fn default_max_future(&self) -> Option<std::time::Duration> {
        Some(weir_engine::time::DEFAULT_FILE_MAX_FUTURE)
    }

    fn build(
        &self,
        ctx: &BuildContext,
        name: &str,
        options: &serde_json::Value,
        _schema: Option<SchemaRef>,
    ) -> Result<SourceBuild, FieldError> {
        let opts: FileSourceOptions = parse_options(options)?;
        let max_record_bytes = match opts.max_record_bytes {
            None => DEFAULT_MAX_RECORD_BYTES,
            Some(0) => {
                return Err(FieldError::at(
                    "/max_record_bytes",
                    "max_record_bytes must be at least 1",
                ))
            }
            Some(n) if n > MAX_RECORD_LIMIT => {
                return Err(FieldError::at(
                    "/max_record_bytes",
                    format!("max_record_bytes must be at most {MAX_RECORD_LIMIT} (1 GiB)"),
                ))
            }
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        };
        if let Some(r) = opts.rate {
            if !(r.is_finite() && r > 0.0) {
                return Err(FieldError::at(
                    "/rate",
                    "rate must be a positive number of records per second",
                ));
            }
        }
        let files = Arc::new(Self::resolve(&ctx.base_dir, &opts.path)?);
        tracing::debug!(source = name, files = files.len(), pattern = %opts.path, "file source resolved");
        let config = Arc::new(FileSourceConfig {
            files: files.clone(),
            header: opts.header,
            max_record_bytes,
            rate: opts.rate,
        });
        let n = files.len();
        Ok(SourceBuild {
            schema: raw_schema(),
            needs_format: true,
            bounded: true,
            describe: format!(
                "file {} ({n} file{})",
                opts.path,
                if n == 1 { "" } else { "s" }
            ),
            max_parallelism: Some(n),
            create: Arc::new(move |sctx: &SourceContext| {
                Ok(Box::new(FileSource::new(config.clone(), sctx)) as Box<dyn Source>)
            }),
        })
    }
}

/// What every subtask of one file source shares.
#[derive(Debug)]
pub struct FileSourceConfig {
    /// All files of the source, sorted; a file's index is its split id.
    pub files: Arc<Vec<PathBuf>>,
    /// Skip the first line of each file.
    pub header: bool,
    /// Longest record; longer lines are truncated and flagged.
    pub max_record_bytes: usize,
    /// Records per second per subtask, if limited.
    pub rate: Option<f64>,
}

/// The open file being read.
struct OpenFile {
    reader: BufReader<File>,
    /// End of file reached: the next poll reports the split's end.
    eof: bool,
}

/// One subtask of a file source.
pub struct FileSource {
    config: Arc<FileSourceConfig>,
    subtask: usize,
    parallelism: usize,
    /// Global indexes of the files this subtask reads, ascending (without those a
    /// restore found finished).
    assigned: Vec<usize>,
    /// Index into `assigned` of the current file; `assigned.len()` when all are done.
    cursor: usize,
    /// This subtask's files that a restore found finished (not in `assigned`).
    skipped: Vec<usize>,
    /// Where to start the files after the current one that were partly read before a
    /// restore (by global index): `(byte_offset, line)`.
    starts: BTreeMap<usize, (u64, u64)>,
    /// Byte offset in the current file after the last line consumed.
    byte_offset: u64,
    /// Lines of the current file consumed (the next line's number is `line + 1`).
    line: u64,
    open: Option<OpenFile>,
    batch_size: usize,
    linger: Duration,
    source: String,
    /// Line buffer for lines that straddle the end of the read buffer.
    buf: Vec<u8>,
    /// Capacity of the read buffer of each file ([`READ_BUFFER`]; tests make it tiny).
    read_buffer: usize,
    /// Payload bytes per line in the last batch, to size the next one's buffer.
    line_bytes: usize,
    /// With a `rate`: when this subtask started reading and the records read since.
    paced: Option<Pacer>,
}

impl std::fmt::Debug for FileSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSource")
            .field("source", &self.source)
            .field("assigned", &self.assigned)
            .field("cursor", &self.cursor)
            .field("skipped", &self.skipped)
            .field("starts", &self.starts)
            .field("byte_offset", &self.byte_offset)
            .field("line", &self.line)
            .finish()
    }
}

/// One line read from a file.
struct LineRead {
    /// Bytes consumed from the file, including the line terminator.
    consumed: u64,
    /// The line was longer than the limit and was cut.
    truncated: bool,
}

/// The UTF-8 byte order mark, skipped at the start of a file.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// `reader.fill_buf()`, retried when a read is interrupted by a signal.
fn fill_buf<R: BufRead>(reader: &mut R) -> std::io::Result<&[u8]> {
    loop {
        match reader.fill_buf() {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
            Ok(_) => break,
        }
    }
    // Buffered now: this returns it without reading (at the end of the file it asks
    // the file once more and gets nothing again).
    reader.fill_buf()
}

/// Reads one line into `out` (without `\n` / `\r\n`), keeping at most `max` bytes and
/// skipping the rest of a longer line. `None` at end of file.
fn read_line<R: BufRead>(
    reader: &mut R,
    out: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Option<LineRead>> {
    out.clear();
    let mut total: u64 = 0; // bytes of the line without the `\n`
    let mut newline = false;
    let mut last: Option<u8> = None;
    loop {
        let chunk = fill_buf(reader)?;
        if chunk.is_empty() {
            break;
        }
        let (take, used, found) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i, i + 1, true),
            None => (chunk.len(), chunk.len(), false),
        };
        let part = &chunk[..take];
        if let Some(&b) = part.last() {
            last = Some(b);
        }
        let room = max.saturating_sub(out.len());
        out.extend_from_slice(&part[..take.min(room)]);
        total += take as u64;
        reader.consume(used);
        if found {
            newline = true;
            break;
        }
    }
    if total == 0 && !newline {
        return Ok(None);
    }
    let cr = newline && last == Some(b'\r');
    let content = total - u64::from(cr);
    let truncated = content > max as u64;
    if !truncated {
        // `out` holds the whole line; drop the `\r` of a `\r\n`.
        out.truncate(content as usize);
    }
    Ok(Some(LineRead {
        consumed: total + u64::from(newline),
        truncated,
    }))
}

/// Where a batch of lines is closed.
struct Limits {
    /// Rows per batch.
    rows: usize,
    /// Longest record; longer lines are cut and flagged.
    max: usize,
    /// Skip line 1 (a header).
    header: bool,
    /// When the batch was started, and how long it may wait for more lines.
    started: Instant,
    linger: Duration,
}

/// The lines of one raw batch, gathered straight into the buffers of its Arrow arrays.
struct RawLines {
    /// Payload bytes, one line after the other.
    values: Vec<u8>,
    /// Arrow offsets into `values`: one more than there are lines, starting at 0.
    offsets: Vec<i32>,
    /// 1-based line number of each line.
    numbers: Vec<u64>,
    /// Indexes of the lines that were cut at `max_record_bytes`.
    truncated: Vec<usize>,
}

impl RawLines {
    fn with_capacity(rows: usize, bytes: usize) -> Self {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        RawLines {
            values: Vec::with_capacity(bytes),
            offsets,
            numbers: Vec::with_capacity(rows),
            truncated: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.numbers.len()
    }

    fn push(&mut self, payload: &[u8], number: u64, truncated: bool) -> std::io::Result<()> {
        if truncated {
            self.truncated.push(self.len());
        }
        self.values.extend_from_slice(payload);
        // `MAX_RECORD_LIMIT` keeps this in range; a failure is reported, not wrapped.
        let end = i32::try_from(self.values.len()).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "a batch of lines exceeds 2 GiB",
            )
        })?;
        self.offsets.push(end);
        self.numbers.push(number);
        Ok(())
    }

    /// Whether the batch is complete: enough rows or bytes, or (looked at every
    /// `LINGER_CHECK` lines, not per line) it has waited long enough.
    fn full(&self, limits: &Limits) -> bool {
        let rows = self.len();
        rows >= limits.rows
            || self.values.len() >= MAX_BATCH_BYTES
            || (rows.is_multiple_of(LINGER_CHECK) && limits.started.elapsed() >= limits.linger)
    }

    /// The payload and line-number columns (moved, not copied).
    fn into_columns(self) -> Result<Vec<ArrayRef>> {
        let offsets = OffsetBuffer::new(ScalarBuffer::from(self.offsets));
        let payloads = BinaryArray::try_new(offsets, Buffer::from_vec(self.values), None)
            .map_err(|e| EngineError::arrow("building a raw batch", e))?;
        Ok(vec![
            Arc::new(payloads),
            Arc::new(UInt64Array::from(self.numbers)),
        ])
    }
}

/// Reads lines from `reader` into `out` until `out` is full (returns `false`) or the file
/// ends (returns `true`), advancing `byte_offset` and `line` past every line consumed.
///
/// Lines that lie wholly inside the reader's buffer are found with `memchr` and copied
/// once, from that buffer into `out`; a line that straddles the buffer's end is read
/// with [`read_line`] into `spill` (which keeps at most `max` bytes of it).
fn read_lines<R: BufRead>(
    reader: &mut R,
    byte_offset: &mut u64,
    line: &mut u64,
    out: &mut RawLines,
    limits: &Limits,
    spill: &mut Vec<u8>,
) -> std::io::Result<bool> {
    loop {
        let chunk = fill_buf(reader)?;
        if chunk.is_empty() {
            return Ok(true);
        }
        let len = chunk.len();
        let mut used = 0;
        let mut full = false;
        for nl in memchr::memchr_iter(b'\n', chunk) {
            let raw = &chunk[used..nl];
            *byte_offset += (nl + 1 - used) as u64;
            used = nl + 1;
            *line += 1;
            if limits.header && *line == 1 {
                continue;
            }
            let content = raw.strip_suffix(b"\r").unwrap_or(raw);
            let truncated = content.len() > limits.max;
            out.push(&content[..content.len().min(limits.max)], *line, truncated)?;
            if out.full(limits) {
                full = true;
                break;
            }
        }
        reader.consume(used);
        if full {
            return Ok(false);
        }
        if used < len {
            // The rest of the buffer is the start of a line that goes on past it (or the
            // file's last line, without a newline).
            let Some(read) = read_line(reader, spill, limits.max)? else {
                return Ok(true);
            };
            *byte_offset += read.consumed;
            *line += 1;
            if limits.header && *line == 1 {
                continue;
            }
            out.push(spill, *line, read.truncated)?;
            if out.full(limits) {
                return Ok(false);
            }
        }
    }
}

impl FileSource {
    /// A subtask of a file source: it reads files `i` with `i % parallelism == subtask`.
    pub fn new(config: Arc<FileSourceConfig>, ctx: &SourceContext) -> Self {
        let paced = config.rate.map(Pacer::new);
        let p = ctx.parallelism.max(1);
        let assigned = owned_files(config.files.len(), ctx.subtask, p);
        FileSource {
            config,
            subtask: ctx.subtask,
            parallelism: p,
            assigned,
            cursor: 0,
            skipped: Vec::new(),
            starts: BTreeMap::new(),
            byte_offset: 0,
            line: 0,
            open: None,
            batch_size: ctx.batch_size.max(1),
            linger: ctx.linger,
            source: ctx.source.clone(),
            buf: Vec::new(),
            read_buffer: READ_BUFFER,
            line_bytes: 0,
            paced,
        }
    }

    fn current_path(&self) -> Option<&Path> {
        let idx = *self.assigned.get(self.cursor)?;
        self.config.files.get(idx).map(PathBuf::as_path)
    }

    fn open_current(&mut self) -> Result<()> {
        let Some(path) = self.current_path().map(Path::to_path_buf) else {
            return Ok(());
        };
        let mut file = File::open(&path).map_err(|e| EngineError::io("opening", &path, e))?;
        if self.byte_offset > 0 {
            file.seek(SeekFrom::Start(self.byte_offset))
                .map_err(|e| EngineError::io("seeking in", &path, e))?;
        }
        tracing::debug!(
            source = %self.source,
            path = %path.display(),
            byte_offset = self.byte_offset,
            line = self.line,
            "reading file"
        );
        let mut reader = BufReader::with_capacity(self.read_buffer, file);
        if self.byte_offset == 0 {
            // A UTF-8 byte order mark (editors on Windows write one) is not part of the
            // first record.
            let head = fill_buf(&mut reader).map_err(|e| EngineError::io("reading", &path, e))?;
            if head.starts_with(UTF8_BOM) {
                reader.consume(UTF8_BOM.len());
                self.byte_offset = UTF8_BOM.len() as u64;
            }
        }
        self.open = Some(OpenFile { reader, eof: false });
        Ok(())
    }

    /// Moves on to the next file of this subtask.
    fn advance(&mut self) {
        self.enter(self.cursor + 1);
    }

    /// Makes `assigned[cursor]` the current file, from its start or from where an
    /// earlier run left it.
    fn enter(&mut self, cursor: usize) {
        self.open = None;
        self.cursor = cursor;
        let (byte_offset, line) = self
            .assigned
            .get(cursor)
            .and_then(|i| self.starts.remove(i))
            .unwrap_or((0, 0));
        self.byte_offset = byte_offset;
        self.line = line;
    }

    fn path_string(&self, idx: usize) -> String {
        self.config.files[idx].display().to_string()
    }

    fn error(&self, message: String) -> EngineError {
        EngineError::connector(format!("file source {}", self.source), message, false)
    }

    /// Sets this subtask up to read exactly what `progress` says is left of the files
    /// it owns: finished files are skipped, partly read ones resumed, others read whole.
    fn resume_from(&mut self, progress: &Progress) {
        let owned = owned_files(self.config.files.len(), self.subtask, self.parallelism);
        let (skipped, assigned): (Vec<usize>, Vec<usize>) = owned
            .into_iter()
            .partition(|&i| progress.done.contains(&self.path_string(i)));
        self.starts = assigned
            .iter()
            .filter_map(|&i| {
                progress
                    .partial
                    .get(&self.path_string(i))
                    .map(|&start| (i, start))
            })
            .collect();
        self.skipped = skipped;
        self.assigned = assigned;
        self.enter(0);
    }

    /// Parses a position taken by [`Source::position`]; `None` for null (nothing read).
    fn parse_position(&self, position: &serde_json::Value) -> Result<Option<OldPosition>> {
        if position.is_null() {
            return Ok(None);
        }
        let invalid = || self.error(format!("invalid position {position}"));
        let done = match position.get("done") {
            None => None,
            Some(d) => Some(
                d.as_array()
                    .ok_or_else(invalid)?
                    .iter()
                    .map(|p| p.as_str().map(str::to_string).ok_or_else(invalid))
                    .collect::<Result<Vec<_>>>()?,
            ),
        };
        if position.get("finished").and_then(|v| v.as_bool()) == Some(true) {
            return Ok(Some(OldPosition {
                current: None,
                done,
                resume: Vec::new(),
            }));
        }
        let start = |v: &serde_json::Value| {
            Some((
                v.get("byte_offset").and_then(|v| v.as_u64())?,
                v.get("line").and_then(|v| v.as_u64())?,
            ))
        };
        let (byte_offset, line) = start(position).ok_or_else(invalid)?;
        let file = position
            .get("file")
            .and_then(|v| v.as_u64())
            .and_then(|f| usize::try_from(f).ok());
        let path = position
            .get("path")
            .and_then(|v| v.as_str())
            .map(str::to_string);
        if file.is_none() && path.is_none() {
            return Err(invalid());
        }
        let mut resume = Vec::new();
        if let Some(list) = position.get("resume") {
            for r in list.as_array().ok_or_else(invalid)? {
                let path = r.get("path").and_then(|v| v.as_str()).ok_or_else(invalid)?;
                let (o, l) = start(r).ok_or_else(invalid)?;
                resume.push((path.to_string(), o, l));
            }
        }
        Ok(Some(OldPosition {
            current: Some(Current {
                file,
                path,
                byte_offset,
                line,
            }),
            done,
            resume,
        }))
    }

    /// The index of a position's current file in this run's list: by path, else (no
    /// path recorded) by index.
    fn find(&self, c: &Current) -> Option<usize> {
        match &c.path {
            Some(p) => (0..self.config.files.len()).find(|&i| self.path_string(i) == *p),
            None => c.file.filter(|&i| i < self.config.files.len()),
        }
    }

    /// Adds what an old subtask `k` of `q` had done to `progress`. Positions written
    /// before they listed finished files (`done`) are read against this run's file list,
    /// assuming it has not changed: the files of subtask `k` before its current one.
    /// Positions that disagree about a file (each file has one owner, so consistent
    /// checkpoints never do) are an error rather than a guess.
    fn add_progress(
        &self,
        progress: &mut Progress,
        pos: &OldPosition,
        k: usize,
        q: usize,
    ) -> Result<()> {
        match &pos.done {
            Some(done) => progress.done.extend(done.iter().cloned()),
            None => {
                let before = match &pos.current {
                    None => usize::MAX,
                    Some(c) => self.find(c).or(c.file).unwrap_or(0),
                };
                for i in owned_files(self.config.files.len(), k, q) {
                    if i < before {
                        progress.done.insert(self.path_string(i));
                    }
                }
            }
        }
        let current = pos.current.iter().filter_map(|c| {
            let path = c
                .path
                .clone()
                .or_else(|| self.find(c).map(|i| self.path_string(i)))?;
            Some((path, c.byte_offset, c.line))
        });
        for (path, byte_offset, line) in current.chain(pos.resume.iter().cloned()) {
            let e = progress
                .partial
                .entry(path.clone())
                .or_insert((byte_offset, line));
            if *e != (byte_offset, line) {
                return Err(self.error(format!(
                    "cannot restore: the checkpoint's positions disagree about {path} \
                     (byte offsets {} and {byte_offset})",
                    e.0
                )));
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Source for FileSource {
    fn schema(&self) -> SchemaRef {
        raw_schema()
    }

    fn pending_splits(&self) -> Vec<u32> {
        self.assigned
            .iter()
            .skip(self.cursor)
            .map(|&i| u32::try_from(i).unwrap_or(u32::MAX))
            .collect()
    }

    async fn poll_next(&mut self) -> Result<SourcePoll> {
        let Some(&split_idx) = self.assigned.get(self.cursor) else {
            return Ok(SourcePoll::Finished);
        };
        let split = u32::try_from(split_idx).unwrap_or(u32::MAX);
        if self.open.is_none() {
            self.open_current()?;
        }
        let mut batch_size = self.batch_size;
        if let Some(pacer) = self.paced.as_mut() {
            match pacer.allowance(batch_size) {
                Ok(n) => batch_size = n,
                Err(wait) => return Ok(SourcePoll::Pending(wait)),
            }
        }
        let path = self.config.files[split_idx].clone();

        // Size the payload buffer from the last batch's lines, so that it rarely grows.
        let expect = batch_size.min(1 << 16);
        let bytes = (expect * self.line_bytes + expect * self.line_bytes / 8).min(MAX_BATCH_BYTES);
        let mut out = RawLines::with_capacity(expect, bytes);
        let limits = Limits {
            rows: batch_size,
            max: self.config.max_record_bytes,
            header: self.config.header,
            started: Instant::now(),
            linger: self.linger,
        };
        let mut buf = std::mem::take(&mut self.buf);
        let result = match self.open.as_mut() {
            Some(open) if !open.eof => read_lines(
                &mut open.reader,
                &mut self.byte_offset,
                &mut self.line,
                &mut out,
                &limits,
                &mut buf,
            )
            .map(|eof| open.eof = eof)
            .map_err(|e| EngineError::io("reading", &path, e)),
            _ => Ok(()),
        };
        // Do not keep a buffer grown by a huge line.
        buf.clear();
        if buf.capacity() > READ_BUFFER {
            buf.shrink_to(READ_BUFFER);
        }
        self.buf = buf;
        result?;
        let rows = out.len();
        for &row in &out.truncated {
            tracing::warn!(
                source = %self.source,
                path = %path.display(),
                line = out.numbers[row],
                max_record_bytes = limits.max,
                "line longer than max_record_bytes: truncated"
            );
        }
        if let Some(per_line) = out.values.len().checked_div(rows) {
            self.line_bytes = per_line;
        }

        if rows == 0 {
            // Nothing more in this file.
            tracing::debug!(source = %self.source, path = %path.display(), lines = self.line, "file done");
            self.advance();
            return Ok(SourcePoll::SplitEnd(split));
        }
        let schema = if out.truncated.is_empty() {
            raw_schema()
        } else {
            let list = out
                .truncated
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(",");
            let mut meta = std::collections::HashMap::new();
            meta.insert(TRUNCATED_ROWS_METADATA.to_string(), list);
            Arc::new(Schema::new_with_metadata(
                raw_schema().fields().clone(),
                meta,
            ))
        };
        if let Some(pacer) = self.paced.as_mut() {
            pacer.took(rows as u64);
        }
        let batch = RecordBatch::try_new(schema, out.into_columns()?)
            .map_err(|e| EngineError::arrow("building a raw batch", e))?;
        Ok(SourcePoll::Batch { split, batch })
    }

    fn split_description(&self, split: u32) -> String {
        self.config
            .files
            .get(split as usize)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| format!("split {split}"))
    }

    fn position(&self) -> serde_json::Value {
        let done: Vec<String> = self
            .skipped
            .iter()
            .chain(self.assigned.iter().take(self.cursor))
            .map(|&i| self.path_string(i))
            .collect();
        match self.assigned.get(self.cursor) {
            None => json!({ "finished": true, "done": done }),
            Some(&idx) => {
                let mut pos = json!({
                    "file": idx,
                    "path": self.path_string(idx),
                    "byte_offset": self.byte_offset,
                    "line": self.line,
                    "done": done,
                });
                if !self.starts.is_empty() {
                    pos["resume"] = self
                        .starts
                        .iter()
                        .map(|(&i, &(byte_offset, line))| {
                            json!({
                                "path": self.path_string(i),
                                "byte_offset": byte_offset,
                                "line": line,
                            })
                        })
                        .collect();
                }
                pos
            }
        }
    }

    fn restore(&mut self, position: &serde_json::Value) -> Result<()> {
        let Some(pos) = self.parse_position(position)? else {
            return Ok(());
        };
        if let Some(c) = &pos.current {
            // The file being read must be one of this subtask's.
            let mine = self
                .find(c)
                .filter(|i| i % self.parallelism == self.subtask)
                .is_some();
            if !mine {
                return Err(self.error(match &c.path {
                    Some(p) => format!(
                        "cannot resume: file {p} of the checkpoint is not among this subtask's files"
                    ),
                    None => format!("position {position} is not a file of this subtask"),
                }));
            }
        }
        let mut progress = Progress::default();
        self.add_progress(&mut progress, &pos, self.subtask, self.parallelism)?;
        self.resume_from(&progress);
        tracing::info!(source = %self.source, position = %position, "file source restored");
        Ok(())
    }

    fn restore_all(&mut self, positions: &[serde_json::Value]) -> Result<()> {
        if positions.is_empty() {
            return Err(self.error("cannot restore from a checkpoint without positions".into()));
        }
        let mut progress = Progress::default();
        for (k, position) in positions.iter().enumerate() {
            if let Some(pos) = self.parse_position(position)? {
                self.add_progress(&mut progress, &pos, k, positions.len())?;
            }
        }
        if let Some(p) = progress.partial.keys().find(|p| progress.done.contains(*p)) {
            return Err(self.error(format!(
                "cannot restore: the checkpoint's positions disagree about {p} (finished \
                 by one old subtask, partly read by another)"
            )));
        }
        self.resume_from(&progress);
        tracing::info!(
            source = %self.source,
            subtask = self.subtask,
            parallelism = self.parallelism,
            old_parallelism = positions.len(),
            files = self.assigned.len(),
            resumed = self.starts.len() + usize::from(self.byte_offset > 0),
            "file source restored with another parallelism"
        );
        Ok(())
    }
}

/// The files (global indexes, ascending) subtask `subtask` of `parallelism` owns.
fn owned_files(n: usize, subtask: usize, parallelism: usize) -> Vec<usize> {
    let p = parallelism.max(1);
    (0..n).filter(|i| i % p == subtask).collect()
}

/// What the positions of a checkpoint say about the files, by path.
#[derive(Debug, Default)]
struct Progress {
    /// Files read to the end.
    done: HashSet<String>,
    /// Files partly read: where to go on, `(byte_offset, line)`.
    partial: HashMap<String, (u64, u64)>,
}

/// A parsed [`Source::position`] of a file source subtask.
#[derive(Debug)]
struct OldPosition {
    /// The file being read; `None` when the subtask had finished.
    current: Option<Current>,
    /// Paths of the files it had finished (absent in positions of older versions).
    done: Option<Vec<String>>,
    /// Later files it was to resume part-way: `(path, byte_offset, line)`.
    resume: Vec<(String, u64, u64)>,
}

/// The file a position was reading.
#[derive(Debug)]
struct Current {
    file: Option<usize>,
    path: Option<String>,
    byte_offset: u64,
    line: u64,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests fail loudly on purpose.
mod tests {
    use super::*;
    use arrow::array::AsArray;
    use arrow::datatypes::UInt64Type;
    use std::collections::BTreeMap;

    /// The error of a build that must fail.
    fn err<T>(r: Result<T, FieldError>) -> FieldError {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => e,
        }
    }

    fn ctx(subtask: usize, parallelism: usize, batch_size: usize) -> SourceContext {
        SourceContext {
            job: "job".into(),
            source: "src".into(),
            subtask,
            parallelism,
            batch_size,
            linger: Duration::from_secs(10),
        }
    }

    fn build(dir: &Path, options: serde_json::Value) -> Result<SourceBuild, FieldError> {
        let bctx = BuildContext {
            checkpoints: Default::default(),
            aggregates: Default::default(),
            job: "job".into(),
            base_dir: dir.to_path_buf(),
        };
        FileSourceFactory.build(&bctx, "src", &options, None)
    }

    /// A row as (split description, line number, payload, truncated).
    type Row = (String, u64, Vec<u8>, bool);

    /// Polls until finished or `limit` polls, collecting rows; checks the batches.
    async fn drain(src: &mut dyn Source, limit: usize) -> (Vec<Row>, Vec<u32>, bool) {
        let mut rows = Vec::new();
        let mut ends = Vec::new();
        let mut polls = 0;
        loop {
            if polls >= limit {
                return (rows, ends, false);
            }
            polls += 1;
            match src.poll_next().await.unwrap() {
                SourcePoll::Batch { split, batch } => {
                    assert!(batch.num_rows() > 0);
                    assert_eq!(batch.schema().fields(), raw_schema().fields());
                    let trunc = truncated_rows(&batch);
                    let p = batch.column(0).as_binary::<i32>();
                    let o = batch.column(1).as_primitive::<UInt64Type>();
                    for i in 0..batch.num_rows() {
                        rows.push((
                            src.split_description(split),
                            o.value(i),
                            p.value(i).to_vec(),
                            trunc.contains(&i),
                        ));
                    }
                }
                SourcePoll::SplitEnd(s) => ends.push(s),
                SourcePoll::Pending(_) => panic!("file source should not be pending"),
                SourcePoll::NewSplits(_) => {}
                SourcePoll::Finished => return (rows, ends, true),
            }
        }
    }

    fn write(dir: &Path, name: &str, content: &[u8]) -> String {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        p.display().to_string()
    }

    /// A byte order mark starts the first record of a file in no format: it is
    /// skipped, whatever the format (JSON, CSV, regex all read these lines), and a file
    /// that merely contains one elsewhere keeps it.
    #[tokio::test]
    async fn a_byte_order_mark_at_the_start_of_a_file_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.csv", b"\xEF\xBB\xBFts,n\n2024-01-01,1\n");
        write(dir.path(), "b.csv", b"x\xEF\xBB\xBF\n");
        let b = build(dir.path(), json!({"path": "*.csv"})).unwrap();
        let mut src = (b.create)(&ctx(0, 1, 100)).unwrap();
        let (rows, _, finished) = drain(src.as_mut(), 100).await;
        assert!(finished);
        let lines: Vec<(u64, Vec<u8>)> = rows.into_iter().map(|r| (r.1, r.2)).collect();
        assert_eq!(
            lines,
            vec![
                (1, b"ts,n".to_vec()),
                (2, b"2024-01-01,1".to_vec()),
                (1, b"x\xEF\xBB\xBF".to_vec()),
            ]
        );
    }

    #[tokio::test]
    async fn glob_over_two_subtasks_yields_every_line_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let mut expected = BTreeMap::new();
        for (f, n) in [
            ("a.jsonl", 5u64),
            ("b.jsonl", 1),
            ("c.jsonl", 7),
            ("d.jsonl", 3),
        ] {
            let mut content = String::new();
            for l in 1..=n {
                content.push_str(&format!("{{\"f\":\"{f}\",\"l\":{l}}}\n"));
                expected.insert(
                    (dir.path().join("data").join(f).display().to_string(), l),
                    format!("{{\"f\":\"{f}\",\"l\":{l}}}"),
                );
            }
            write(&dir.path().join("data"), f, content.as_bytes());
        }
        // Not matched: other extension, hidden file, subdirectory.
        write(&dir.path().join("data"), "x.csv", b"nope\n");
        write(&dir.path().join("data"), ".hidden.jsonl", b"nope\n");
        std::fs::create_dir(dir.path().join("data/sub")).unwrap();
        write(&dir.path().join("data/sub"), "e.jsonl", b"nope\n");

        let b = build(dir.path(), json!({"path": "data/*.jsonl"})).unwrap();
        assert_eq!(b.max_parallelism, Some(4));
        assert!(b.needs_format && b.bounded);
        let mut got = BTreeMap::new();
        let mut all_ends = Vec::new();
        for s in 0..2 {
            let mut src = (b.create)(&ctx(s, 2, 2)).unwrap();
            let (rows, ends, finished) = drain(src.as_mut(), 1000).await;
            assert!(finished);
            // Subtask s reads files s and s + 2 (sorted: a, b, c, d).
            assert_eq!(ends, vec![s as u32, s as u32 + 2]);
            all_ends.extend(ends);
            for (file, line, payload, _) in rows {
                let prev = got.insert((file, line), String::from_utf8(payload).unwrap());
                assert!(prev.is_none(), "duplicate row");
            }
            // Finished stays finished.
            assert!(matches!(
                src.poll_next().await.unwrap(),
                SourcePoll::Finished
            ));
        }
        assert_eq!(got, expected);
        all_ends.sort();
        assert_eq!(all_ends, vec![0, 1, 2, 3]);
    }

    #[tokio::test]
    async fn batches_hold_one_file_and_close_at_batch_size() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.txt", b"1\n2\n3\n4\n5\n");
        write(dir.path(), "b.txt", b"6\n7\n");
        let b = build(dir.path(), json!({"path": "*.txt"})).unwrap();
        let mut src = (b.create)(&ctx(0, 1, 2)).unwrap();
        let mut sizes = Vec::new();
        loop {
            match src.poll_next().await.unwrap() {
                SourcePoll::Batch { split, batch } => sizes.push((split, batch.num_rows())),
                SourcePoll::SplitEnd(s) => sizes.push((s, 0)),
                SourcePoll::NewSplits(_) => {}
                SourcePoll::Finished => break,
                SourcePoll::Pending(_) => unreachable!(),
            }
        }
        assert_eq!(sizes, vec![(0, 2), (0, 2), (0, 1), (0, 0), (1, 2), (1, 0)]);
    }

    #[tokio::test]
    async fn header_crlf_empty_lines_and_no_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(dir.path(), "a.csv", b"id,name\r\n1,x\r\n\r\n2,y");
        let b = build(dir.path(), json!({"path": "a.csv", "header": true})).unwrap();
        let mut src = (b.create)(&ctx(0, 1, 100)).unwrap();
        let (rows, ends, finished) = drain(src.as_mut(), 100).await;
        assert!(finished);
        assert_eq!(ends, vec![0]);
        assert_eq!(
            rows,
            vec![
                (f.clone(), 2, b"1,x".to_vec(), false),
                (f.clone(), 3, b"".to_vec(), false),
                (f.clone(), 4, b"2,y".to_vec(), false),
            ]
        );
        // Without header: the first line is a record; a lone `\r` inside a line stays.
        let f2 = write(dir.path(), "b.csv", b"a\rb\n");
        let b = build(dir.path(), json!({"path": "b.csv"})).unwrap();
        let mut src = (b.create)(&ctx(0, 1, 100)).unwrap();
        let (rows, _, _) = drain(src.as_mut(), 100).await;
        assert_eq!(rows, vec![(f2, 1, b"a\rb".to_vec(), false)]);
    }

    #[tokio::test]
    async fn empty_file_only_ends_its_split() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.jsonl", b"");
        write(dir.path(), "b.jsonl", b"x\n");
        let b = build(dir.path(), json!({"path": "*.jsonl"})).unwrap();
        let mut src = (b.create)(&ctx(0, 1, 10)).unwrap();
        assert!(matches!(
            src.poll_next().await.unwrap(),
            SourcePoll::SplitEnd(0)
        ));
        let (rows, ends, finished) = drain(src.as_mut(), 10).await;
        assert_eq!(rows.len(), 1);
        assert_eq!(ends, vec![1]);
        assert!(finished);
        // A header-only file yields nothing either.
        write(dir.path(), "h.csv", b"a,b\n");
        let b = build(dir.path(), json!({"path": "h.csv", "header": true})).unwrap();
        let mut src = (b.create)(&ctx(0, 1, 10)).unwrap();
        let (rows, ends, finished) = drain(src.as_mut(), 10).await;
        assert!(rows.is_empty() && finished);
        assert_eq!(ends, vec![0]);
    }

    /// A reader that produces a huge line without ever holding it, and records the
    /// largest buffer it was asked to fill.
    struct Endless {
        left: u64,
        tail: &'static [u8],
    }

    impl std::io::Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.left > 0 {
                let n = (buf.len() as u64).min(self.left) as usize;
                buf[..n].fill(b'x');
                self.left -= n as u64;
                return Ok(n);
            }
            let n = buf.len().min(self.tail.len());
            buf[..n].copy_from_slice(&self.tail[..n]);
            self.tail = &self.tail[n..];
            Ok(n)
        }
    }

    #[test]
    fn huge_line_is_truncated_with_bounded_memory() {
        // A 64 MiB line through a 64 KiB buffer: the line buffer never exceeds the limit.
        let mut r = BufReader::with_capacity(
            READ_BUFFER,
            Endless {
                left: 64 << 20,
                tail: b"yy\r\nnext\n",
            },
        );
        let mut out = Vec::new();
        let l = read_line(&mut r, &mut out, 1000).unwrap().unwrap();
        assert!(l.truncated);
        assert_eq!(out.len(), 1000);
        assert!(out.capacity() < 64 << 10, "capacity {}", out.capacity());
        assert_eq!(l.consumed, (64 << 20) + 4);
        let l = read_line(&mut r, &mut out, 1000).unwrap().unwrap();
        assert!(!l.truncated);
        assert_eq!(out, b"next");
        assert!(read_line(&mut r, &mut out, 1000).unwrap().is_none());
        // Exactly at the limit (the `\r` does not count) is not truncated.
        let mut r = BufReader::new(&b"abcd\r\nabcde\n"[..]);
        let l = read_line(&mut r, &mut out, 4).unwrap().unwrap();
        assert!(!l.truncated);
        assert_eq!(out, b"abcd");
        let l = read_line(&mut r, &mut out, 4).unwrap().unwrap();
        assert!(l.truncated);
        assert_eq!(out, b"abcd");
    }

    #[tokio::test]
    async fn huge_line_in_a_file_is_flagged() {
        let dir = tempfile::tempdir().unwrap();
        let mut content = b"short\n".to_vec();
        content.extend(std::iter::repeat_n(b'z', 300_000));
        content.extend_from_slice(b"\nafter\n");
        let f = write(dir.path(), "big.jsonl", &content);
        let b = build(
            dir.path(),
            json!({"path": "big.jsonl", "max_record_bytes": 100}),
        )
        .unwrap();
        let mut src = (b.create)(&ctx(0, 1, 100)).unwrap();
        let (rows, _, finished) = drain(src.as_mut(), 10).await;
        assert!(finished);
        assert_eq!(
            rows,
            vec![
                (f.clone(), 1, b"short".to_vec(), false),
                (f.clone(), 2, vec![b'z'; 100], true),
                (f.clone(), 3, b"after".to_vec(), false),
            ]
        );
    }

    /// What `content` holds as records: `(line number, payload, truncated)`.
    fn oracle(content: &[u8], header: bool, max: usize) -> Vec<(u64, Vec<u8>, bool)> {
        let mut pieces: Vec<&[u8]> = content.split(|&b| b == b'\n').collect();
        let terminated = content.ends_with(b"\n");
        if terminated || content.is_empty() {
            pieces.pop();
        }
        let last = pieces.len();
        pieces
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !(header && *i == 0))
            .map(|(i, raw)| {
                // A `\r` before a newline is part of the terminator, not of the record.
                let newline = i + 1 < last || terminated;
                let text = if newline {
                    raw.strip_suffix(b"\r").unwrap_or(raw)
                } else {
                    raw
                };
                (
                    i as u64 + 1,
                    text[..text.len().min(max)].to_vec(),
                    text.len() > max,
                )
            })
            .collect()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        /// Lines come out as a plain split of the file says, whatever the read buffer's
        /// size (lines inside it, straddling it, longer than it), the limit, the batch
        /// size and where a checkpoint stops and restores the reading.
        #[test]
        fn lines_match_a_split_of_the_file(
            lines in proptest::collection::vec(
                proptest::collection::vec(proptest::sample::select(vec![b'a', b'b', b'\r', b'{']), 0..40),
                0..30,
            ),
            terminated: bool,
            header: bool,
            max in 1usize..30,
            buffers in (1usize..50, 1usize..50),
            batch in 1usize..8,
            stop in 0usize..25,
        ) {
            let mut content = lines.join(&b'\n');
            if terminated && !lines.is_empty() {
                content.push(b'\n');
            }
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("f.jsonl");
            std::fs::write(&path, &content).unwrap();
            let config = Arc::new(FileSourceConfig {
                files: Arc::new(vec![path]),
                header,
                max_record_bytes: max,
                rate: None,
            });
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
            let c = ctx(0, 1, batch);
            let mut first = FileSource::new(config.clone(), &c);
            first.read_buffer = buffers.0;
            let (mut rows, _, _) = rt.block_on(drain(&mut first, stop));
            let mut second = FileSource::new(config, &c);
            second.read_buffer = buffers.1;
            second.restore(&first.position()).unwrap();
            let (rest, _, finished) = rt.block_on(drain(&mut second, usize::MAX));
            proptest::prop_assert!(finished);
            rows.extend(rest);
            let got: Vec<(u64, Vec<u8>, bool)> =
                rows.into_iter().map(|(_, n, p, t)| (n, p, t)).collect();
            proptest::prop_assert_eq!(got, oracle(&content, header, max));
        }
    }

    #[tokio::test]
    async fn position_and_restore_resume_exactly() {
        let dir = tempfile::tempdir().unwrap();
        for (name, n) in [("a.log", 7), ("b.log", 0), ("c.log", 5), ("d.log", 4)] {
            let content: String = (1..=n).map(|i| format!("{name} line {i}\r\n")).collect();
            write(dir.path(), name, content.as_bytes());
        }
        let b = build(dir.path(), json!({"path": "*.log"})).unwrap();
        for subtask in 0..2 {
            let c = ctx(subtask, 2, 3);
            let mut whole = (b.create)(&c).unwrap();
            let (all, all_ends, _) = drain(whole.as_mut(), usize::MAX).await;
            // Stop after every possible number of polls, restore, read the rest.
            for stop in 0..12 {
                let mut first = (b.create)(&c).unwrap();
                let (mut rows, mut ends, done) = drain(first.as_mut(), stop).await;
                let pos = first.position();
                // The position survives a trip through JSON text.
                let pos: serde_json::Value =
                    serde_json::from_str(&serde_json::to_string(&pos).unwrap()).unwrap();
                let mut second = (b.create)(&c).unwrap();
                second.restore(&pos).unwrap();
                let (rest, rest_ends, finished) = drain(second.as_mut(), usize::MAX).await;
                assert!(finished);
                rows.extend(rest);
                ends.extend(rest_ends);
                assert_eq!(
                    rows, all,
                    "subtask {subtask}, stop after {stop}, done {done}"
                );
                assert_eq!(ends, all_ends);
            }
        }
        // A position of a file that is not this subtask's is refused.
        let mut src = (b.create)(&ctx(0, 2, 3)).unwrap();
        let other = dir.path().join("b.log").display().to_string();
        let err = src
            .restore(&json!({"file": 1, "path": other, "byte_offset": 0, "line": 0}))
            .unwrap_err();
        assert!(err.to_string().contains("not among"), "{err}");
    }

    #[test]
    fn no_match_is_a_field_error_at_path() {
        let dir = tempfile::tempdir().unwrap();
        let e = err(build(dir.path(), json!({"path": "data/*.jsonl"})));
        assert_eq!(e.path, "/path");
        assert!(e.message.contains("no file matches `data/*.jsonl`"), "{e}");
        let e = err(build(dir.path(), json!({"path": "a[.jsonl"})));
        assert_eq!(e.path, "/path");
        std::fs::create_dir(dir.path().join("d")).unwrap();
        let e = err(build(dir.path(), json!({"path": "d"})));
        assert!(e.message.contains("director"), "{e}");
        let e = err(build(dir.path(), json!({"path": "x", "format": "json"})));
        assert_eq!(e.path, "/format");
        let e = err(build(dir.path(), json!({"header": true})));
        assert!(e.message.contains("`path`"), "{e}");
        write(dir.path(), "a.jsonl", b"x\n");
        let e = err(build(
            dir.path(),
            json!({"path": "a.jsonl", "max_record_bytes": 0}),
        ));
        assert_eq!(e.path, "/max_record_bytes");
        let e = err(build(
            dir.path(),
            json!({"path": "a.jsonl", "max_record_bytes": MAX_RECORD_LIMIT + 1}),
        ));
        assert_eq!(e.path, "/max_record_bytes");
        assert!(e.message.contains("at most"), "{}", e.message);
        // A base dir with glob characters is taken literally.
        let weird = dir.path().join("we[ird]");
        std::fs::create_dir(&weird).unwrap();
        write(&weird, "z.jsonl", b"z\n");
        let b = build(&weird, json!({"path": "*.jsonl"})).unwrap();
        assert_eq!(b.max_parallelism, Some(1));
    }

    #[test]
    fn options_schema_has_own_keys_only() {
        let s = FileSourceFactory.options_schema();
        assert_eq!(s["type"], "object");
        let props = s["properties"].as_object().unwrap();
        let mut keys: Vec<_> = props.keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, vec!["header", "max_record_bytes", "path", "rate"]);
        assert_eq!(s["required"], json!(["path"]));
        assert!(props["path"]["description"]
            .as_str()
            .unwrap()
            .contains("glob"));
    }

    /// A small deterministic random generator for tests (xorshift64*).
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
        }
    }

    /// A position after a trip through JSON text, as a checkpoint stores it.
    fn stored(src: &dyn Source) -> serde_json::Value {
        serde_json::from_str(&serde_json::to_string(&src.position()).unwrap()).unwrap()
    }

    /// Counts every (file, line) read and checks each against `all`.
    fn check_exactly_once(got: &[Row], all: &BTreeMap<(String, u64), Vec<u8>>, case: &str) {
        let mut seen: BTreeMap<(String, u64), Vec<u8>> = BTreeMap::new();
        for (file, line, payload, _) in got {
            let prev = seen.insert((file.clone(), *line), payload.clone());
            assert!(prev.is_none(), "{case}: {file}:{line} read twice");
        }
        assert_eq!(seen.len(), all.len(), "{case}: rows missing");
        assert_eq!(&seen, all, "{case}");
    }

    /// Writes files of varied line lengths; returns every row by (path, line).
    fn write_lines(dir: &Path, files: &[(&str, u64)]) -> BTreeMap<(String, u64), Vec<u8>> {
        let mut all = BTreeMap::new();
        for &(name, n) in files {
            let mut content = Vec::new();
            for l in 1..=n {
                let line = format!("{name} {l} {}", "x".repeat((l * 7 % 13) as usize));
                content.extend_from_slice(line.as_bytes());
                content.extend_from_slice(if l % 3 == 0 { b"\r\n" } else { b"\n" });
                all.insert((dir.join(name).display().to_string(), l), line.into_bytes());
            }
            write(dir, name, &content);
        }
        all
    }

    #[tokio::test]
    async fn restore_all_with_another_parallelism_reads_everything_once() {
        let dir = tempfile::tempdir().unwrap();
        let all = write_lines(
            dir.path(),
            &[
                ("a.log", 7),
                ("b.log", 0),
                ("c.log", 12),
                ("d.log", 3),
                ("e.log", 9),
            ],
        );
        let b = build(dir.path(), json!({"path": "*.log"})).unwrap();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut cases = 0;
        for q in [1usize, 2, 3] {
            for p in [1usize, 2, 4] {
                for round in 0..12 {
                    let bs = 1 + rng.below(4) as usize;
                    let case = format!("{q} -> {p}, round {round}, batch size {bs}");
                    let mut got = Vec::new();
                    // The old run, stopped after random numbers of polls.
                    let mut positions = Vec::new();
                    for k in 0..q {
                        let mut src = (b.create)(&ctx(k, q, bs)).unwrap();
                        let (rows, _, _) = drain(src.as_mut(), rng.below(14) as usize).await;
                        got.extend(rows);
                        let mut pos = stored(src.as_ref());
                        if round % 3 == 0 {
                            // As written by older versions, without `done`.
                            if let Some(o) = pos.as_object_mut() {
                                o.remove("done");
                            }
                        }
                        positions.push(pos);
                    }
                    // The new run: every subtask restores from all positions. Half the
                    // time it is stopped again and restored once more.
                    let again = round % 2 == 1;
                    let mut positions2 = Vec::new();
                    for s in 0..p {
                        let mut src = (b.create)(&ctx(s, p, bs)).unwrap();
                        src.restore_all(&positions).unwrap();
                        let limit = if again {
                            rng.below(10) as usize
                        } else {
                            usize::MAX
                        };
                        let (rows, _, finished) = drain(src.as_mut(), limit).await;
                        assert!(again || finished, "{case}");
                        got.extend(rows);
                        positions2.push(stored(src.as_ref()));
                    }
                    if again {
                        // Same parallelism (`restore` of each own position, which must
                        // carry every partly read file) or yet another one.
                        let same = rng.below(2) == 0;
                        let r = if same { p } else { 1 + rng.below(4) as usize };
                        for s in 0..r {
                            let mut src = (b.create)(&ctx(s, r, bs)).unwrap();
                            if same {
                                src.restore(&positions2[s]).unwrap();
                            } else {
                                src.restore_all(&positions2).unwrap();
                            }
                            let (rows, _, finished) = drain(src.as_mut(), usize::MAX).await;
                            assert!(finished, "{case}");
                            got.extend(rows);
                        }
                    }
                    check_exactly_once(&got, &all, &case);
                    cases += 1;
                }
            }
        }
        assert_eq!(cases, 108);
    }

    #[tokio::test]
    async fn restore_all_resumes_by_path_when_the_glob_matches_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let gone = d.join("g.log").display().to_string();
        for stop0 in 0..6 {
            for stop1 in 0..6 {
                for p in [1usize, 2, 3] {
                    let case = format!("stops {stop0}/{stop1}, new parallelism {p}");
                    for f in ["b.log", "f.log"] {
                        let _ = std::fs::remove_file(d.join(f));
                    }
                    let old = [("a.log", 5), ("c.log", 6), ("e.log", 4), ("g.log", 3)];
                    write_lines(d, &old);
                    let b1 = build(d, json!({"path": "*.log"})).unwrap();
                    // Old parallelism 2: subtask 0 reads a, e; subtask 1 reads c, g.
                    let mut got = Vec::new();
                    let mut positions = Vec::new();
                    for (k, stop) in [(0usize, stop0), (1, stop1)] {
                        let mut src = (b1.create)(&ctx(k, 2, 2)).unwrap();
                        let (rows, _, _) = drain(src.as_mut(), stop).await;
                        got.extend(rows);
                        positions.push(stored(src.as_ref()));
                    }
                    // Now b and f appear (shifting every later file's index) and g is gone.
                    std::fs::remove_file(d.join("g.log")).unwrap();
                    let mut all = write_lines(d, &[("b.log", 4), ("f.log", 2)]);
                    all.extend(write_lines(d, &old[..3]));
                    let b2 = build(d, json!({"path": "*.log"})).unwrap();
                    for s in 0..p {
                        let mut src = (b2.create)(&ctx(s, p, 2)).unwrap();
                        src.restore_all(&positions).unwrap();
                        let (rows, _, finished) = drain(src.as_mut(), usize::MAX).await;
                        assert!(finished, "{case}");
                        assert!(rows.iter().all(|r| r.0 != gone), "{case}");
                        got.extend(rows);
                    }
                    got.retain(|r| r.0 != gone);
                    check_exactly_once(&got, &all, &case);
                }
            }
        }
    }

    #[tokio::test]
    async fn restore_all_skips_the_header_of_untouched_files_only() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a.csv", "b.csv", "c.csv"] {
            let content: String = std::iter::once("id,name\n".to_string())
                .chain((1..=5).map(|i| format!("{i},{name}\n")))
                .collect();
            write(dir.path(), name, content.as_bytes());
        }
        let b = build(dir.path(), json!({"path": "*.csv", "header": true})).unwrap();
        let mut got = Vec::new();
        let mut positions = Vec::new();
        for k in 0..3 {
            let mut src = (b.create)(&ctx(k, 3, 2)).unwrap();
            let (rows, _, _) = drain(src.as_mut(), k).await; // 0, 1 and 2 batches
            got.extend(rows);
            positions.push(stored(src.as_ref()));
        }
        let mut src = (b.create)(&ctx(0, 1, 2)).unwrap();
        src.restore_all(&positions).unwrap();
        assert_eq!(src.pending_splits(), vec![0, 1, 2]);
        let (rows, ends, finished) = drain(src.as_mut(), usize::MAX).await;
        assert!(finished);
        assert_eq!(ends, vec![0, 1, 2]);
        got.extend(rows);
        let mut lines: Vec<(String, u64)> = got
            .iter()
            .map(|r| (String::from_utf8(r.2.clone()).unwrap(), r.1))
            .collect();
        lines.sort();
        let mut expected = Vec::new();
        for name in ["a.csv", "b.csv", "c.csv"] {
            for i in 1..=5u64 {
                expected.push((format!("{i},{name}"), i + 1));
            }
        }
        expected.sort();
        assert_eq!(lines, expected);
    }

    #[test]
    fn restore_all_refuses_bad_positions() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.log", b"1\n");
        let b = build(dir.path(), json!({"path": "*.log"})).unwrap();
        let mut src = (b.create)(&ctx(0, 2, 2)).unwrap();
        assert!(src.restore_all(&[]).is_err());
        let e = src.restore_all(&[json!({"byte_offset": 1})]).unwrap_err();
        assert!(e.to_string().contains("invalid position"), "{e}");
        let e = src
            .restore_all(&[json!({"path": "x", "byte_offset": 0, "line": 0, "done": "a"})])
            .unwrap_err();
        assert!(e.to_string().contains("invalid position"), "{e}");
        // Positions that disagree about a file.
        let a = dir.path().join("a.log").display().to_string();
        let at = |o: u64| json!({"path": a, "byte_offset": o, "line": o, "done": []});
        let e = src.restore_all(&[at(1), at(2)]).unwrap_err();
        assert!(e.to_string().contains("disagree"), "{e}");
        let done = json!({"finished": true, "done": [a]});
        let e = src.restore_all(&[done.clone(), at(1)]).unwrap_err();
        assert!(e.to_string().contains("disagree"), "{e}");
        // The same position twice agrees with itself; a finished file stays finished.
        src.restore_all(&[at(1), at(1)]).unwrap();
        src.restore_all(&[done.clone(), json!(null)]).unwrap();
        assert!(src.pending_splits().is_empty());
    }
}
