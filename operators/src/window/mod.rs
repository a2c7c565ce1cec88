//! The `window` step: tumbling, sliding and session windows over event time (or
//! processing time) with aggregates, allowed lateness, update rows and a `late` side
//! output. The exact semantics are in `docs/WINDOWS.md`.
//!
//! ```yaml
//! steps:
//!   counts:
//!     from: errors
//!     window:
//!       tumbling: 1m                  # or tumbling: {size: 1m}
//!                                     # or sliding: {size: 10m, slide: 1m}
//!                                     # or session: {gap: 30m} / session: 30m
//!       key: [service]                # or key: service; none = one global window
//!       aggregate:                    # output column: "function(argument)", in order
//!         errors: "count(*)"
//!         total: "sum(amount)"        # the argument is any SQL expression
//!         users: "count(distinct user_id)"
//!       allowed_lateness: 30s         # default 0
//!       time: event                   # event (default) | processing
//!       event_time: ts                # default: the input's event-time column
//! ```
//!
//! Durations are strings (`500ms`, `10s`, `1m`) or integers (milliseconds).
//!
//! Output: the key columns (input types), `window_start`, `window_end` (both
//! `Timestamp(ms)`; `window_end` is marked as the event-time column), the aggregates in
//! the order written, then `is_update: Boolean`. Side output `late` (input schema): the
//! records that were too late, also counted in the node's `late_records` metric.
//!
//! The input is hash-partitioned by the key columns (no key: every record goes to one
//! subtask, as zero columns hash alike).

mod keys;
mod operator;
pub(crate) mod plan;
#[cfg(test)]
pub(crate) mod tests;

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use serde_json::{json, Value};
use weir_engine::operator::Operator;
use weir_engine::registry::{BuildContext, FieldError, Partitioning, StepBuild, StepFactory};
use weir_engine::spec::DURATION_PATTERN;

pub use self::operator::{WindowOperator, WATERMARK_STATE, WINDOW_STATE};
pub use self::plan::{
    AggregateCall, TimeMode, WindowKind, WindowOptions, WindowPlan, IS_UPDATE, LATE_OUTPUT,
    WINDOW_END, WINDOW_START,
};

/// Factory of the `window` step.
#[derive(Debug, Clone, Copy, Default)]
pub struct WindowStep;

impl WindowStep {
    /// Reads a `window:` value and binds it to `input` (what `build` does), for callers
    /// that create [`WindowOperator`]s themselves.
    pub fn plan(
        ctx: &BuildContext,
        value: &Value,
        input: &SchemaRef,
    ) -> Result<WindowPlan, FieldError> {
        let options = WindowOptions::parse(value)?;
        WindowPlan::new(options, input, &ctx.aggregates)
    }
}

impl StepFactory for WindowStep {
    fn name(&self) -> &'static str {
        "window"
    }

    fn options_schema(&self) -> Value {
        let duration = json!({
            "oneOf": [
                {"type": "string", "pattern": DURATION_PATTERN},
                {"const": 0, "description": "Zero (in any unit); other numbers need a unit."}
            ],
            "description": "A duration such as 500ms, 10s, 1m or 1h 30m."
        });
        json!({
            "type": "object",
            "description": "Windowed aggregation: tumbling, sliding or session windows per key.",
            "properties": {
                "tumbling": {
                    "description": "Fixed, non-overlapping windows of this size.",
                    "oneOf": [
                        duration.clone(),
                        {"type": "object", "properties": {"size": duration.clone()},
                         "required": ["size"], "additionalProperties": false}
                    ]
                },
                "sliding": {
                    "description": "Windows of `size` starting every `slide` (size a multiple of slide).",
                    "type": "object",
                    "properties": {"size": duration.clone(), "slide": duration.clone()},
                    "required": ["size", "slide"],
                    "additionalProperties": false
                },
                "session": {
                    "description": "Per key, records closer than `gap` share a window.",
                    "oneOf": [
                        duration.clone(),
                        {"type": "object", "properties": {"gap": duration.clone()},
                         "required": ["gap"], "additionalProperties": false}
                    ]
                },
                "key": {
                    "description": "Key columns; none: one global window per time range.",
                    "oneOf": [
                        {"type": "string"},
                        {"type": "array", "items": {"type": "string"}, "uniqueItems": true}
                    ]
                },
                "aggregate": {
                    "description": "Output columns {name: \"function(argument)\"}, e.g. count(*), sum(amount), count(distinct user_id).",
                    "type": "object",
                    "additionalProperties": {"type": "string"}
                },
                "allowed_lateness": duration,
                "time": {"type": "string", "enum": ["event", "processing"],
                         "description": "Event time (default) or processing time."},
                "event_time": {"type": "string",
                               "description": "The event-time column (default: the input's marked event-time column)."}
            },
            "additionalProperties": false
        })
    }

    fn build(
        &self,
        ctx: &BuildContext,
        _name: &str,
        value: &Value,
        inputs: &[SchemaRef],
    ) -> Result<StepBuild, FieldError> {
        let input = inputs
            .first()
            .ok_or_else(|| FieldError::here("a window needs one input"))?;
        let plan = Arc::new(Self::plan(ctx, value, input)?);
        let keys = plan.key().to_vec();
        let describe = plan.describe();
        let output = plan.output.clone();
        let create_plan = plan.clone();
        Ok(StepBuild {
            schema: output,
            side_outputs: vec![(LATE_OUTPUT.to_string(), input.clone())],
            input_partitioning: Some(Partitioning::Hash(keys.clone())),
            partitioning_per_input: Vec::new(),
            keyed_by: (!keys.is_empty()).then_some(keys),
            describe,
            create: Arc::new(move |_subtask, _parallelism| {
                Ok(Box::new(WindowOperator::new(create_plan.clone())) as Box<dyn Operator>)
            }),
        })
    }
}
