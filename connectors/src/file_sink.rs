//! The file sink (`type: file`): writes JSON lines or CSV (with a header) to a file.
//!
//! Readers never see a half-written file: a subtask writes to an *in-progress* file
//! `.<name>.inprogress` next to the target and renames it to the target name when it
//! is published (atomic on POSIX file systems). With parallelism 1 the target is
//! exactly `path`; with parallelism `p > 1`, subtask `i` writes `path` with `-i` before
//! the extension (`out/errors.jsonl` → `out/errors-1.jsonl`).
//!
//! Publishing: [`Sink::finish`] (end of a bounded input) seals and publishes the file.
//! The pieces are kept separate ([`InProgressPart`]: create, write, sync, seal;
//! [`publish`]: rename) so that an exactly-once file sink can publish one part per
//! checkpoint: seal the part in `pre_commit(epoch)`, publish it in `commit(epoch)`, and
//! go on in a new part. For now `pre_commit` flushes and syncs the in-progress file and
//! returns its name and length, and `commit` publishes nothing: the one file per
//! subtask appears at `finish`. Output order per subtask is arrival order.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use schemars::JsonSchema;
use serde::Deserialize;
use weir_engine::error::{EngineError, Result};
use weir_engine::registry::{BuildContext, FieldError, SinkBuild, SinkFactory};
use weir_engine::sink::{Sink, SinkContext};

use crate::encode::{BatchEncoder, TextFormat};
use crate::options::{parse_options, schema_for};

/// Options of `type: file` sinks.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct FileSinkOptions {
    /// The output file, relative to the job file's directory; parent directories are
    /// created. With parallelism above 1, subtask `i` writes `path` with `-i` before
    /// the extension (`out/errors-1.jsonl`).
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
        let sink_name = name.to_string();
        Ok(SinkBuild {
            describe: format!("file {} ({})", opts.path, TextFormat::from(format).name()),
            create: Arc::new(move |sctx: &SinkContext| {
                let path = subtask_path(&target, sctx.subtask, sctx.parallelism);
                Ok(
                    Box::new(FileSink::new(&sink_name, path, format, input.clone()))
                        as Box<dyn Sink>,
                )
            }),
            max_parallelism: None,
        })
    }
}

/// The file subtask `subtask` of `parallelism` writes: `path` itself for a single
/// subtask, else `path` with `-subtask` before the extension.
pub fn subtask_path(path: &Path, subtask: usize, parallelism: usize) -> PathBuf {
    if parallelism <= 1 {
        return path.to_path_buf();
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}-{subtask}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{subtask}"),
    };
    path.with_file_name(name)
}

/// The in-progress file of a target: `.<name>.inprogress` in the same directory.
pub fn in_progress_path(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.inprogress"))
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
                std::fs::create_dir_all(dir)
                    .map_err(|e| EngineError::io("creating directory", dir, e))?;
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

    /// Flushes, syncs and closes the part.
    pub fn seal(mut self) -> Result<SealedPart> {
        self.sync()
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

/// One subtask of a file sink.
#[derive(Debug)]
pub struct FileSink {
    name: String,
    target: PathBuf,
    schema: SchemaRef,
    encoder: BatchEncoder,
    part: Option<InProgressPart>,
    published: bool,
    /// Reused encoding buffer.
    buf: Vec<u8>,
}

impl FileSink {
    /// A sink subtask writing `target` (already suffixed for its subtask) in `format`,
    /// for batches of `schema`.
    pub fn new(name: &str, target: PathBuf, format: FileFormat, schema: SchemaRef) -> Self {
        FileSink {
            name: name.to_string(),
            target,
            schema,
            encoder: BatchEncoder::new(format.into()),
            part: None,
            published: false,
            buf: Vec::new(),
        }
    }

    /// The file this subtask publishes.
    pub fn target(&self) -> &Path {
        &self.target
    }

    fn part(&mut self) -> Result<&mut InProgressPart> {
        if self.published {
            return Err(EngineError::connector(
                format!("file sink {}", self.name),
                format!("{} was already published", self.target.display()),
                false,
            ));
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
}

#[async_trait::async_trait]
impl Sink for FileSink {
    async fn open(&mut self, _ctx: &SinkContext) -> Result<()> {
        self.part().map(|_| ())
    }

    async fn write_batch(&mut self, batch: RecordBatch) -> Result<()> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let r = self.encoder.write(&mut buf, &batch);
        let r = r.and_then(|_| self.part()?.write(&buf));
        if buf.capacity() > 4 << 20 {
            buf = Vec::new();
        }
        self.buf = buf;
        r
    }

    async fn pre_commit(&mut self, epoch: u64) -> Result<serde_json::Value> {
        // Everything written so far is durable; the file is not yet published.
        let sealed = self.part()?.sync()?;
        Ok(serde_json::json!({
            "epoch": epoch,
            "in_progress": sealed.path.display().to_string(),
            "bytes": sealed.bytes,
            "target": self.target.display().to_string(),
        }))
    }

    async fn commit(&mut self, epoch: u64) -> Result<()> {
        // One file per subtask is published at the end (`finish`); publishing parts per
        // checkpoint is the exactly-once file sink's job.
        tracing::debug!(sink = %self.name, epoch, "file sink commit: output is published at finish");
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
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
            job: "j".into(),
            sink: "out".into(),
            subtask,
            parallelism,
        }
    }

    fn build(dir: &Path, options: serde_json::Value) -> Result<SinkBuild, FieldError> {
        let bctx = BuildContext {
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
}
