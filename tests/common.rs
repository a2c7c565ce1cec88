//! Helpers shared by the integration tests: a registry with test-only connectors and
//! operators that record what they see.

use std::sync::{Arc, Mutex};

use arrow::record_batch::RecordBatch;
use weir_engine::message::EventTime;
use weir_engine::operator::{Collector, Operator, OperatorContext};

/// Records every watermark an operator sees, passing batches through.
pub struct WatermarkProbe {
    pub seen: Arc<Mutex<Vec<EventTime>>>,
}

impl Operator for WatermarkProbe {
    fn process_batch(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        _ctx: &mut OperatorContext,
        out: &mut Collector,
    ) -> weir_engine::Result<()> {
        out.emit(batch);
        Ok(())
    }

    fn handle_watermark(
        &mut self,
        watermark: EventTime,
        _ctx: &mut OperatorContext,
        _out: &mut Collector,
    ) -> weir_engine::Result<()> {
        if let Ok(mut v) = self.seen.lock() {
            v.push(watermark);
        }
        Ok(())
    }
}

/// Runs a future on a fresh multi-threaded runtime.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}
