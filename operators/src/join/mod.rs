//! The `join` step: stream-stream joins on equal keys and event time, as interval joins
//! (`left.ts BETWEEN right.ts + lower AND right.ts + upper`) or window joins (both rows
//! in the same tumbling, sliding or session window), inner or outer. The exact
//! semantics are in `docs/JOINS.md`.
//!
//! ```yaml
//! steps:
//!   attributed:
//!     from: [impressions, clicks]       # left, right
//!     join:
//!       type: left                      # inner (default) | left | right | full
//!       on: [ad_id]                     # or on: {left: [ad_id], right: [ad]}
//!       interval: {lower: -10s, upper: 0s}
//!       # or window: {tumbling: 1m} / {sliding: {size: 10m, slide: 1m}} / {session: 30m}
//!       left_time: ts                   # default: each input's event-time column
//!       right_time: ts
//! ```
//!
//! Output: the left columns, then the right columns, but for key columns of the same
//! name on both sides, which appear once (the left value, or the right one for an
//! unmatched right row); a right column whose name a left column has is renamed
//! `right_NAME`. Window joins add `window_start` and `window_end` (the output's event
//! time). An interval join's output event time is the left's (the right's in a right
//! join), and its output watermark trails its input watermark by
//! `max(0, -lower, upper)` so that no emitted row is late downstream. Side outputs
//! `late_left` and `late_right` take the records that came too late.
//!
//! Each input is hash-partitioned by its own key columns, so that equal keys meet in
//! one subtask.

mod operator;
mod plan;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use serde_json::{json, Value};
use weir_engine::operator::Operator;
use weir_engine::registry::{BuildContext, FieldError, Partitioning, StepBuild, StepFactory};
use weir_engine::spec::DURATION_PATTERN;

pub use self::operator::{JoinOperator, JOIN_LEFT_STATE, JOIN_RIGHT_STATE, JOIN_WATERMARK_STATE};
pub use self::plan::{
    JoinMode, JoinOptions, JoinPlan, JoinSide, JoinType, OutputColumn, LATE_LEFT, LATE_RIGHT,
    RIGHT_PREFIX,
};

/// Factory of the `join` step.
#[derive(Debug, Clone, Copy, Default)]
pub struct JoinStep;

impl JoinStep {
    /// Reads a `join:` value and binds it to the inputs (what `build` does), for
    /// callers that create [`JoinOperator`]s themselves.
    pub fn plan(
        value: &Value,
        left: &SchemaRef,
        right: &SchemaRef,
    ) -> Result<JoinPlan, FieldError> {
        JoinPlan::new(JoinOptions::parse(value)?, left, right)
    }
}

impl StepFactory for JoinStep {
    fn name(&self) -> &'static str {
        "join"
    }

    fn options_schema(&self) -> Value {
        let duration = json!({
            "oneOf": [
                {"type": "string", "pattern": DURATION_PATTERN},
                {"const": 0, "description": "Zero (in any unit); other numbers need a unit."}
            ],
            "description": "A duration such as 500ms, 10s, 1m or 1h 30m."
        });
        let signed_pattern = format!(
            r"^\s*[-+]?\s*(0|{})$",
            DURATION_PATTERN
                .trim_start_matches('^')
                .trim_end_matches('$')
        );
        let signed = json!({
            "oneOf": [
                {"type": "string", "pattern": signed_pattern},
                {"const": 0, "description": "Zero (in any unit); other numbers need a unit."}
            ],
            "description": "A duration that may be negative, such as -10s, 0s or +5s."
        });
        let names = json!({
            "oneOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}, "minItems": 1, "uniqueItems": true}
            ]
        });
        json!({
            "type": "object",
            "description": "Joins the step's two inputs (`from: [left, right]`) on equal keys, within a time interval or in the same window.",
            "properties": {
                "type": {"type": "string",
                         "enum": ["inner", "left", "right", "full", "left_outer", "right_outer", "full_outer", "outer"],
                         "description": "inner (default): matched pairs; left/right/full: also unmatched rows of that side, padded with nulls once the watermark passes their interval or window."},
                "on": {
                    "description": "Key columns: the same names on both sides, or {left: [...], right: [...]} paired in order.",
                    "oneOf": [
                        names.clone(),
                        {"type": "object", "properties": {"left": names.clone(), "right": names},
                         "required": ["left", "right"], "additionalProperties": false}
                    ]
                },
                "interval": {
                    "description": "Interval join: left.ts BETWEEN right.ts + lower AND right.ts + upper.",
                    "type": "object",
                    "properties": {"lower": signed.clone(), "upper": signed},
                    "required": ["lower", "upper"],
                    "additionalProperties": false
                },
                "window": {
                    "description": "Window join: both rows in the same window.",
                    "type": "object",
                    "properties": {
                        "tumbling": {"oneOf": [duration.clone(),
                            {"type": "object", "properties": {"size": duration.clone()}, "required": ["size"], "additionalProperties": false}]},
                        "sliding": {"type": "object", "properties": {"size": duration.clone(), "slide": duration.clone()},
                                    "required": ["size", "slide"], "additionalProperties": false},
                        "session": {"oneOf": [duration.clone(),
                            {"type": "object", "properties": {"gap": duration}, "required": ["gap"], "additionalProperties": false}]}
                    },
                    "additionalProperties": false
                },
                "left_time": {"type": "string", "description": "The left event-time column (default: the left input's)."},
                "right_time": {"type": "string", "description": "The right event-time column (default: the right input's)."}
            },
            "required": ["on"],
            "additionalProperties": false
        })
    }

    fn inputs(&self) -> (usize, usize) {
        (2, 2)
    }

    fn build(
        &self,
        _ctx: &BuildContext,
        _name: &str,
        value: &Value,
        inputs: &[SchemaRef],
    ) -> Result<StepBuild, FieldError> {
        let [left, right] = inputs else {
            return Err(FieldError::at(
                "/from",
                "a join takes two inputs: `from: [left, right]`",
            ));
        };
        let plan = Arc::new(Self::plan(value, left, right)?);
        // Fail at build time, not in every subtask, if a column cannot be buffered.
        JoinOperator::new(plan.clone()).map_err(|e| FieldError::here(e.to_string()))?;
        let left_keys = plan.options.left_on.clone();
        let right_keys = plan.options.right_on.clone();
        let keyed_by = (left_keys == right_keys).then(|| left_keys.clone());
        let create_plan = plan.clone();
        Ok(StepBuild {
            schema: plan.output.clone(),
            side_outputs: vec![
                (LATE_LEFT.to_string(), left.clone()),
                (LATE_RIGHT.to_string(), right.clone()),
            ],
            input_partitioning: None,
            partitioning_per_input: vec![
                Partitioning::Hash(left_keys),
                Partitioning::Hash(right_keys),
            ],
            keyed_by,
            describe: plan.describe(),
            create: Arc::new(move |_subtask, _parallelism| {
                Ok(Box::new(JoinOperator::new(create_plan.clone())?) as Box<dyn Operator>)
            }),
        })
    }
}
