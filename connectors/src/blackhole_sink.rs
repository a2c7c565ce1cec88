//! The blackhole sink (`type: blackhole`): discards every row, for benchmarks, like
//! Flink's blackhole connector. It only counts rows and batches (logged at debug level
//! when its input ends). It runs at its input's parallelism; checkpoints and commits
//! are no-ops, so exactly-once holds trivially. With a `rate` it is a slow sink (it
//! takes at most that many rows per second per subtask), for backpressure tests.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use schemars::JsonSchema;
use serde::Deserialize;
use weir_engine::error::Result;
use weir_engine::registry::{BuildContext, FieldError, SinkBuild, SinkFactory};
use weir_engine::sink::{Sink, SinkContext};

use crate::options::{parse_options, schema_for};
use crate::pace::Pacer;

/// Options of `type: blackhole` sinks.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct BlackholeOptions {
    /// Take at most this many rows per second per subtask (a slow sink). Default: as
    /// fast as they come.
    rate: Option<f64>,
}

/// Factory of `type: blackhole` sinks.
#[derive(Debug, Default, Clone, Copy)]
pub struct BlackholeSinkFactory;

impl SinkFactory for BlackholeSinkFactory {
    fn name(&self) -> &'static str {
        "blackhole"
    }

    fn options_schema(&self) -> serde_json::Value {
        schema_for::<BlackholeOptions>()
    }

    fn build(
        &self,
        _ctx: &BuildContext,
        _name: &str,
        options: &serde_json::Value,
        _input: SchemaRef,
    ) -> Result<SinkBuild, FieldError> {
        let opts: BlackholeOptions = parse_options(options)?;
        if let Some(r) = opts.rate {
            if !(r.is_finite() && r > 0.0) {
                return Err(FieldError::at(
                    "/rate",
                    "rate must be a positive number of rows per second",
                ));
            }
        }
        let rate = opts.rate;
        Ok(SinkBuild::new(
            "blackhole",
            Arc::new(move |ctx: &SinkContext| {
                let mut sink = BlackholeSink::new(ctx);
                sink.pacer = rate.map(Pacer::new);
                Ok(Box::new(sink) as Box<dyn Sink>)
            }),
        ))
    }
}

/// Discards batches, counting them.
#[derive(Debug, Default)]
pub struct BlackholeSink {
    sink: String,
    subtask: usize,
    rows: u64,
    batches: u64,
    pacer: Option<Pacer>,
}

impl BlackholeSink {
    /// A blackhole sink subtask.
    pub fn new(ctx: &SinkContext) -> Self {
        BlackholeSink {
            sink: ctx.sink.clone(),
            subtask: ctx.subtask,
            rows: 0,
            batches: 0,
            pacer: None,
        }
    }

    /// Rows discarded so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Batches discarded so far.
    pub fn batches(&self) -> u64 {
        self.batches
    }
}

#[async_trait::async_trait]
impl Sink for BlackholeSink {
    async fn write_batch(&mut self, batch: RecordBatch) -> Result<()> {
        if let Some(p) = self.pacer.as_mut() {
            let mut left = batch.num_rows();
            while left > 0 {
                match p.allowance(left) {
                    Ok(n) => {
                        p.took(n as u64);
                        left -= n;
                    }
                    Err(wait) => tokio::time::sleep(wait).await,
                }
            }
        }
        self.rows += batch.num_rows() as u64;
        self.batches += 1;
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        tracing::debug!(
            sink = %self.sink,
            subtask = self.subtask,
            rows = self.rows,
            batches = self.batches,
            "blackhole discarded its input"
        );
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests fail loudly on purpose.
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use weir_engine::sink::SinkRecovery;

    #[tokio::test]
    async fn discards_and_counts() {
        let bctx = BuildContext {
            checkpoints: Default::default(),
            aggregates: Default::default(),
            job: "j".into(),
            base_dir: ".".into(),
        };
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let b = BlackholeSinkFactory
            .build(&bctx, "out", &serde_json::Value::Null, schema.clone())
            .unwrap();
        assert_eq!(b.describe, "blackhole");
        assert_eq!(b.max_parallelism, None);
        let b2 = BlackholeSinkFactory
            .build(&bctx, "out", &serde_json::json!({}), schema.clone())
            .unwrap();
        assert_eq!(b2.describe, "blackhole");
        let ctx = SinkContext {
            exactly_once: true,
            job: "j".into(),
            sink: "out".into(),
            subtask: 1,
            parallelism: 2,
        };
        // Through the factory, as the runtime uses it.
        let mut sink = (b.create)(&ctx).unwrap();
        sink.open(&ctx).await.unwrap();
        sink.recover(&SinkRecovery::default()).await.unwrap();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from(vec![1, 2, 3]))],
        )
        .unwrap();
        sink.write_batch(batch.clone()).await.unwrap();
        assert_eq!(sink.pre_commit(1).await.unwrap(), serde_json::Value::Null);
        sink.commit(1).await.unwrap();
        sink.finish().await.unwrap();
        // The counts.
        let mut direct = BlackholeSink::new(&ctx);
        direct.write_batch(batch.clone()).await.unwrap();
        direct.write_batch(batch.slice(0, 0)).await.unwrap();
        direct.write_batch(batch).await.unwrap();
        assert_eq!((direct.rows(), direct.batches()), (6, 3));
        // Unknown options are errors.
        let e = match BlackholeSinkFactory.build(
            &bctx,
            "out",
            &serde_json::json!({"format": "jsonl"}),
            schema,
        ) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e,
        };
        assert_eq!(e.path, "/format");
        let s = BlackholeSinkFactory.options_schema();
        assert_eq!(s["type"], "object");
        assert_eq!(s["additionalProperties"], false);
    }
}
