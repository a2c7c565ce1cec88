//! The stdout sink (`type: stdout`): prints each batch as it arrives, as JSON lines,
//! CSV (one header) or a pretty table. It runs as a single subtask so that lines of
//! different subtasks do not interleave. Printing is this sink's job; everything else
//! in weir logs through `tracing`.

use std::io::Write;
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

/// Options of `type: stdout` sinks.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct StdoutOptions {
    /// How to print rows: `jsonl` (one JSON object per line, the default), `csv` (with a
    /// header line) or `table` (a pretty table per batch).
    #[serde(default)]
    format: TextFormat,
}

/// Factory of `type: stdout` sinks.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdoutSinkFactory;

impl SinkFactory for StdoutSinkFactory {
    fn name(&self) -> &'static str {
        "stdout"
    }

    fn options_schema(&self) -> serde_json::Value {
        schema_for::<StdoutOptions>()
    }

    fn build(
        &self,
        _ctx: &BuildContext,
        _name: &str,
        options: &serde_json::Value,
        input: SchemaRef,
    ) -> Result<SinkBuild, FieldError> {
        let opts: StdoutOptions = parse_options(options)?;
        let format = opts.format;
        format
            .check_schema(&input)
            .map_err(|m| FieldError::at("/format", m))?;
        Ok(SinkBuild::new(
            format!("stdout {}", format.name()),
            Arc::new(move |_ctx: &SinkContext| {
                Ok(Box::new(StdoutSink::new(format)) as Box<dyn Sink>)
            }),
        )
        .max_parallelism(1)
        .output("standard output"))
    }
}

/// Prints batches to standard output (or, for tests, to any writer).
pub struct StdoutSink {
    out: Box<dyn Write + Send>,
    encoder: BatchEncoder,
}

impl std::fmt::Debug for StdoutSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StdoutSink")
            .field("encoder", &self.encoder)
            .finish()
    }
}

impl StdoutSink {
    /// A sink printing to standard output in `format`.
    pub fn new(format: TextFormat) -> Self {
        Self::with_writer(format, Box::new(std::io::stdout()))
    }

    /// A sink writing to `out` instead of standard output.
    pub fn with_writer(format: TextFormat, out: Box<dyn Write + Send>) -> Self {
        StdoutSink {
            out,
            encoder: BatchEncoder::new(format),
        }
    }
}

#[async_trait::async_trait]
impl Sink for StdoutSink {
    async fn write_batch(&mut self, batch: RecordBatch) -> Result<()> {
        // Encode into memory first so that one batch reaches stdout in one write.
        let mut buf = Vec::new();
        self.encoder.write(&mut buf, &batch)?;
        self.out
            .write_all(&buf)
            .and_then(|_| self.out.flush())
            .map_err(|e| EngineError::io("writing", "<stdout>", e))
    }

    async fn finish(&mut self) -> Result<()> {
        self.out
            .flush()
            .map_err(|e| EngineError::io("flushing", "<stdout>", e))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests fail loudly on purpose.
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Mutex;

    /// The error of a build that must fail.
    fn err<T>(r: Result<T, FieldError>) -> FieldError {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => e,
        }
    }

    /// A writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn batch(ids: Vec<i64>, names: Vec<Option<&str>>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(StringArray::from(names)),
            ],
        )
        .unwrap()
    }

    async fn print(format: TextFormat) -> String {
        let buf = Shared::default();
        let mut sink = StdoutSink::with_writer(format, Box::new(buf.clone()));
        sink.write_batch(batch(vec![1, 2], vec![Some("a"), None]))
            .await
            .unwrap();
        sink.write_batch(batch(vec![], vec![])).await.unwrap();
        sink.write_batch(batch(vec![3], vec![Some("c,d")]))
            .await
            .unwrap();
        sink.finish().await.unwrap();
        let s = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        s
    }

    #[tokio::test]
    async fn writes_each_format() {
        assert_eq!(
            print(TextFormat::Jsonl).await,
            "{\"id\":1,\"name\":\"a\"}\n{\"id\":2}\n{\"id\":3,\"name\":\"c,d\"}\n"
        );
        assert_eq!(
            print(TextFormat::Csv).await,
            "id,name\n1,a\n2,\n3,\"c,d\"\n"
        );
        let table = print(TextFormat::Table).await;
        assert!(table.contains("| id | name |"), "{table}");
        assert!(table.contains("| 3  | c,d  |"), "{table}");
    }

    #[tokio::test]
    async fn factory_builds_a_single_subtask_sink() {
        let bctx = BuildContext {
            checkpoints: Default::default(),
            aggregates: Default::default(),
            job: "j".into(),
            base_dir: ".".into(),
        };
        let input = batch(vec![], vec![]).schema();
        let b = StdoutSinkFactory
            .build(
                &bctx,
                "out",
                &serde_json::json!({"format": "table"}),
                input.clone(),
            )
            .unwrap();
        assert_eq!(b.max_parallelism, Some(1));
        assert_eq!(b.describe, "stdout table");
        let ctx = SinkContext {
            exactly_once: false,
            job: "j".into(),
            sink: "out".into(),
            subtask: 0,
            parallelism: 1,
        };
        let mut sink = (b.create)(&ctx).unwrap();
        sink.open(&ctx).await.unwrap();
        sink.write_batch(batch(vec![1], vec![Some("x")]))
            .await
            .unwrap();
        sink.finish().await.unwrap();
        let e = err(StdoutSinkFactory.build(
            &bctx,
            "out",
            &serde_json::json!({"format": "xml"}),
            input.clone(),
        ));
        assert_eq!(e.path, "/format");
        assert!(e.message.contains("jsonl"), "{e}");
        // No options at all: the default format.
        let b = StdoutSinkFactory
            .build(&bctx, "out", &serde_json::Value::Null, input)
            .unwrap();
        assert_eq!(b.describe, "stdout jsonl");
        let s = StdoutSinkFactory.options_schema();
        let names: Vec<_> = s["properties"]["format"]["oneOf"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["const"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["jsonl", "csv", "table"]);
        assert!(s["properties"]["format"]["description"].is_string());
    }
}
