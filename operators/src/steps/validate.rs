//! The `validate` step: named rules as SQL boolean expressions; a row that breaks one
//! goes to the dead-letter output with the names of the rules it broke, the others go
//! on unchanged.
//!
//! ```yaml
//! steps:
//!   valid:
//!     from: payments
//!     validate:
//!       positive_amount: "amount > 0"
//!       known_currency: "currency IN ('EUR', 'USD', 'GBP')"
//! ```
//!
//! A rule passes only when it is true: false **and null** break it (a payment without
//! an amount is not valid), unlike a SQL `CHECK`. A rule that fails to evaluate on a
//! row (e.g. `CAST(x AS INT)` of `'abc'`) breaks it too, with the error in the reason.
//! The dead letter's reason starts with `validation failed:` and lists the broken rules
//! with their expressions; its source is `step <name>`, its payload the row as JSON.

use std::sync::Arc;

use arrow::array::{Array, UInt32Array};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use serde_json::{json, Value};
use weir_engine::expr::SqlExpr;
use weir_engine::graph::DEAD_LETTER_OUTPUT;
use weir_engine::operator::{Collector, Operator, OperatorContext};
use weir_engine::registry::{BuildContext, FieldError, StepBuild, StepFactory};
use weir_engine::source::dead_letters_to_batch;
use weir_engine::{EngineError, Result};

use super::row_errors::{self, row_dead_letter};
use super::{clone_per_subtask, simple_build};
use crate::options::kind;

/// Factory of the `validate` step.
#[derive(Debug, Clone, Copy, Default)]
pub struct ValidateStep;

/// One named rule.
#[derive(Debug, Clone)]
struct Rule {
    name: String,
    expr: SqlExpr,
}

/// Checks every row against the rules.
#[derive(Debug, Clone)]
pub struct ValidateOperator {
    rules: Arc<Vec<Rule>>,
    /// Rows received before the current batch (the dead letters' position).
    seen: u64,
}

impl ValidateOperator {
    /// For each row, the broken rules' descriptions (empty: valid).
    fn check(&self, batch: &RecordBatch) -> Vec<Vec<String>> {
        let mut broken: Vec<Vec<String>> = vec![Vec::new(); batch.num_rows()];
        for rule in self.rules.iter() {
            let describe = || format!("`{}` ({})", rule.name, rule.expr.sql());
            match rule.expr.evaluate_mask(batch).map(Some) {
                Ok(Some(values)) => {
                    for (row, b) in broken.iter_mut().enumerate() {
                        if !(values.is_valid(row) && values.value(row)) {
                            b.push(describe());
                        }
                    }
                }
                // The batch failed as a whole: evaluate row by row to find which.
                Ok(None) | Err(_) => {
                    for (row, b) in broken.iter_mut().enumerate() {
                        match rule.expr.evaluate_mask(&batch.slice(row, 1)).map(Some) {
                            Ok(Some(v)) if v.is_valid(0) && v.value(0) => {}
                            Ok(_) => b.push(describe()),
                            Err(e) => b.push(format!("{} (error: {e})", describe())),
                        }
                    }
                }
            }
        }
        broken
    }
}

impl Operator for ValidateOperator {
    fn process_batch(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        ctx: &mut OperatorContext,
        out: &mut Collector,
    ) -> Result<()> {
        let base = self.seen;
        self.seen += batch.num_rows() as u64;
        let broken = self.check(&batch);
        if broken.iter().all(Vec::is_empty) {
            out.emit(batch);
            return Ok(());
        }
        let mut keep = Vec::new();
        let mut letters = Vec::new();
        for (row, rules) in broken.iter().enumerate() {
            if rules.is_empty() {
                keep.push(row as u32);
                continue;
            }
            let reason = format!(
                "step `{}`: validation failed: {}",
                ctx.operator,
                rules.join(", ")
            );
            letters.push(row_dead_letter(
                &ctx.operator,
                &batch,
                row,
                base + row as u64,
                "validation",
                reason,
            ));
        }
        if !keep.is_empty() {
            let rows = arrow::compute::take_record_batch(&batch, &UInt32Array::from(keep))
                .map_err(|e| EngineError::arrow("validate", e))?;
            out.emit(rows);
        }
        out.emit_side(DEAD_LETTER_OUTPUT, dead_letters_to_batch(&letters)?);
        Ok(())
    }

    fn side_outputs(&self) -> Vec<(String, SchemaRef)> {
        row_errors::side_outputs()
    }
}

impl StepFactory for ValidateStep {
    fn name(&self) -> &'static str {
        "validate"
    }

    fn options_schema(&self) -> Value {
        json!({
            "type": "object",
            "description": "Named rules, each a SQL boolean expression over the input's columns, e.g. { positive_amount: \"amount > 0\" }. A row for which a rule is false or null goes to the dead-letter output with the rule's name.",
            "minProperties": 1,
            "additionalProperties": { "type": "string", "minLength": 1 }
        })
    }

    fn build(
        &self,
        _ctx: &BuildContext,
        _name: &str,
        value: &Value,
        inputs: &[SchemaRef],
    ) -> std::result::Result<StepBuild, FieldError> {
        let map = value.as_object().ok_or_else(|| {
            FieldError::here(format!(
                "validate takes named rules, e.g. {{ positive_amount: \"amount > 0\" }}; found {}",
                kind(value)
            ))
        })?;
        if map.is_empty() {
            return Err(FieldError::here("validate needs at least one rule"));
        }
        let input = inputs
            .first()
            .ok_or_else(|| FieldError::here("validate needs one input"))?;
        let mut rules = Vec::new();
        for (name, sql) in map {
            let at = format!("/{}", name.replace('~', "~0").replace('/', "~1"));
            let sql = sql.as_str().ok_or_else(|| {
                FieldError::at(
                    at.clone(),
                    format!(
                        "a rule is a SQL boolean expression as a string; found {}",
                        kind(sql)
                    ),
                )
            })?;
            let expr = SqlExpr::compile(sql, input).map_err(|m| FieldError::at(at.clone(), m))?;
            if expr.data_type() != &DataType::Boolean {
                return Err(FieldError::at(
                    at,
                    format!(
                        "rule `{name}` must be a boolean condition; `{sql}` yields {}",
                        expr.data_type()
                    ),
                ));
            }
            rules.push(Rule {
                name: name.clone(),
                expr,
            });
        }
        let describe = format!(
            "validate {}",
            rules
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let op = ValidateOperator {
            rules: Arc::new(rules),
            seen: 0,
        };
        let mut step = simple_build(input.clone(), describe, clone_per_subtask(op));
        step.side_outputs = row_errors::side_outputs();
        Ok(step)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests fail loudly on purpose.
mod tests {
    use super::super::test_util::{build, run};
    use super::*;
    use arrow::array::{Float64Array, StringArray};
    use arrow::datatypes::{Field, Schema};

    fn input() -> (SchemaRef, RecordBatch) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("amount", DataType::Float64, true),
            Field::new("currency", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec!["a", "b", "c", "d"])),
                Arc::new(Float64Array::from(vec![
                    Some(5.0),
                    Some(-1.0),
                    None,
                    Some(2.0),
                ])),
                Arc::new(StringArray::from(vec![
                    Some("EUR"),
                    Some("XXX"),
                    Some("USD"),
                    Some("USD"),
                ])),
            ],
        )
        .unwrap();
        (schema, batch)
    }

    #[test]
    fn broken_rules_are_named_and_null_breaks_a_rule() {
        let (schema, batch) = input();
        let step = build(
            &ValidateStep,
            json!({"positive_amount": "amount > 0", "known_currency": "currency IN ('EUR', 'USD')"}),
            &[schema],
        )
        .unwrap();
        let (main, side) = run(&step, vec![(0, batch)]);
        let ids: Vec<String> = main
            .iter()
            .flat_map(|b| {
                let a = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
                (0..a.len())
                    .map(|i| a.value(i).to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(ids, vec!["a", "d"]);
        assert_eq!(side.len(), 1);
        let reasons = side[0]
            .1
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(reasons.len(), 2);
        assert!(
            reasons
                .value(0)
                .contains("validation failed: `positive_amount` (amount > 0), `known_currency`"),
            "{}",
            reasons.value(0)
        );
        assert!(
            reasons.value(1).contains("`positive_amount`")
                && !reasons.value(1).contains("known_currency"),
            "{}",
            reasons.value(1)
        );
        let payloads = side[0]
            .1
            .column(3)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert!(
            payloads.value(0).contains("\"id\":\"b\""),
            "{}",
            payloads.value(0)
        );
    }

    #[test]
    fn rules_are_checked_when_the_job_is_built() {
        let (schema, _) = input();
        let e = build(
            &ValidateStep,
            json!({"r": "amount + 1"}),
            std::slice::from_ref(&schema),
        )
        .err()
        .unwrap();
        assert_eq!(e.path, "/r");
        assert!(e.message.contains("must be a boolean"), "{}", e.message);
        let e = build(
            &ValidateStep,
            json!({"r": "nope > 1"}),
            std::slice::from_ref(&schema),
        )
        .err()
        .unwrap();
        assert_eq!(e.path, "/r");
        assert!(build(&ValidateStep, json!({}), std::slice::from_ref(&schema)).is_err());
        assert!(build(&ValidateStep, json!("amount > 0"), &[schema]).is_err());
    }
}
