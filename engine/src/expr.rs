//! SQL expressions evaluated on whole Arrow batches.
//!
//! A [`SqlExpr`] is parsed, type-checked and turned into a DataFusion physical expression
//! once, for one input schema (at build time, not per batch); evaluating it on a batch
//! runs vectorised kernels over whole columns, never per-row interpretation.
//!
//! Dialect notes (DataFusion's SQL with two settings changed):
//! - column names are case-sensitive as written (`userId` means the column `userId`;
//!   quoting with `"…"` is only needed for names that are not plain identifiers), while
//!   function names are not (`UPPER(x)` = `upper(x)`);
//! - `CAST(x AS VARCHAR)` gives `Utf8`, and any computed string column (DataFusion's
//!   string functions return `Utf8View`) is cast back to `Utf8`, binary views to
//!   `Binary`, so downstream schemas only ever see the plain types.
//!
//! ```
//! use std::sync::Arc;
//! use arrow::array::{Int64Array, RecordBatch};
//! use arrow::datatypes::{DataType, Field, Schema};
//! use weir_engine::expr::{filter_batch, SqlExpr};
//!
//! let schema = Arc::new(Schema::new(vec![Field::new("amount", DataType::Int64, false)]));
//! let batch = RecordBatch::try_new(
//!     schema.clone(),
//!     vec![Arc::new(Int64Array::from(vec![5, 20, 11]))],
//! )?;
//! let big = SqlExpr::compile("amount > 10.5", &schema).map_err(weir_engine::EngineError::Config)?;
//! assert_eq!(big.data_type(), &DataType::Boolean);
//! assert_eq!(filter_batch(&batch, &big)?.num_rows(), 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::sync::{Arc, OnceLock};

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::{DFSchema, DataFusionError, SchemaError};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::error::{EngineError, Result};

/// The session used to plan expressions: created once per process (it is not cheap),
/// shared by every compilation. Planning does not mutate it.
fn session() -> &'static SessionContext {
    static SESSION: OnceLock<SessionContext> = OnceLock::new();
    SESSION.get_or_init(|| {
        let mut config = SessionConfig::new();
        let options = config.options_mut();
        options.sql_parser.enable_ident_normalization = false;
        options.sql_parser.map_string_types_to_utf8view = false;
        SessionContext::new_with_config(config)
    })
}

/// A SQL expression compiled for one input schema: cheap to clone (the compiled
/// expression is shared), safe to evaluate from several subtasks at once.
#[derive(Clone)]
pub struct SqlExpr {
    sql: Arc<str>,
    physical: Arc<dyn PhysicalExpr>,
    input: SchemaRef,
    /// The type the expression yields after the view-type cast.
    data_type: DataType,
    nullable: bool,
    /// Set when DataFusion's type must be cast to `data_type` (`Utf8View` → `Utf8`).
    cast_from: Option<DataType>,
}

impl fmt::Debug for SqlExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlExpr")
            .field("sql", &self.sql)
            .field("data_type", &self.data_type)
            .field("nullable", &self.nullable)
            .finish()
    }
}

impl fmt::Display for SqlExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.sql)
    }
}

/// The plain type a view type is cast back to, if `t` is one.
fn plain_type(t: &DataType) -> Option<DataType> {
    match t {
        DataType::Utf8View => Some(DataType::Utf8),
        DataType::BinaryView => Some(DataType::Binary),
        _ => None,
    }
}

/// A DataFusion planning error as one line a user can act on.
fn describe_error(e: &DataFusionError, schema: &SchemaRef) -> String {
    if let DataFusionError::SchemaError(inner, _) = e.find_root() {
        if let SchemaError::FieldNotFound { field, .. } = inner.as_ref() {
            let known: Vec<String> = schema
                .fields()
                .iter()
                .map(|f| f.name().to_string())
                .collect();
            return format!(
                "unknown column \"{}\" (known columns: {})",
                field.name(),
                known.join(", ")
            );
        }
    }
    let msg = e.find_root().strip_backtrace();
    // DataFusion prefixes its messages with the error kind; keep the substance.
    for prefix in [
        "Error during planning: ",
        "SQL error: ",
        "This feature is not implemented: ",
        "Internal error: ",
        "Schema error: ",
        "Execution error: ",
    ] {
        if let Some(rest) = msg.strip_prefix(prefix) {
            return rest.trim().to_string();
        }
    }
    msg.trim().to_string()
}

impl SqlExpr {
    /// Parses `sql`, resolves its columns against `schema`, applies SQL type coercion
    /// (`amount > 10.5` on an integer column compares as floats) and creates the
    /// physical expression. The error names the expression and what is wrong; an
    /// unknown column lists the known ones.
    pub fn compile(sql: &str, schema: &SchemaRef) -> Result<SqlExpr, String> {
        let fail = |message: String| format!("expression `{sql}`: {message}");
        if sql.trim().is_empty() {
            return Err(fail("the expression is empty".into()));
        }
        let df_schema = DFSchema::try_from(schema.as_ref().clone())
            .map_err(|e| fail(describe_error(&e, schema)))?;
        let ctx = session();
        let logical = ctx
            .parse_sql_expr(sql, &df_schema)
            .map_err(|e| fail(describe_error(&e, schema)))?;
        let physical = ctx
            .create_physical_expr(logical, &df_schema)
            .map_err(|e| fail(describe_error(&e, schema)))?;
        let df_type = physical
            .data_type(schema)
            .map_err(|e| fail(describe_error(&e, schema)))?;
        let nullable = physical
            .nullable(schema)
            .map_err(|e| fail(describe_error(&e, schema)))?;
        let (data_type, cast_from) = match plain_type(&df_type) {
            Some(plain) => (plain, Some(df_type)),
            None => (df_type, None),
        };
        Ok(SqlExpr {
            sql: Arc::from(sql),
            physical,
            input: schema.clone(),
            data_type,
            nullable,
            cast_from,
        })
    }

    /// The expression's text as written.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// The schema the expression was compiled for; batches given to
    /// [`SqlExpr::evaluate`] must have it.
    pub fn input_schema(&self) -> &SchemaRef {
        &self.input
    }

    /// The type of the values the expression yields (view types already mapped to
    /// `Utf8`/`Binary`).
    pub fn data_type(&self) -> &DataType {
        &self.data_type
    }

    /// Whether the expression may yield nulls.
    pub fn nullable(&self) -> bool {
        self.nullable
    }

    /// The input column the expression is, if it is just a column reference.
    pub fn column_index(&self) -> Option<usize> {
        self.physical
            .downcast_ref::<datafusion::physical_expr::expressions::Column>()
            .map(|c| c.index())
    }

    fn error(&self, message: impl fmt::Display) -> EngineError {
        EngineError::Expr {
            expr: self.sql.to_string(),
            message: message.to_string(),
        }
    }

    /// Evaluates the expression on a whole batch. A constant yields an array of the
    /// batch's length; string results come back as `Utf8` (see the module notes).
    pub fn evaluate(&self, batch: &RecordBatch) -> Result<ArrayRef> {
        if batch.num_columns() != self.input.fields().len() {
            return Err(self.error(format!(
                "batch has {} columns, the expression was compiled for {}",
                batch.num_columns(),
                self.input.fields().len()
            )));
        }
        let value = self
            .physical
            .evaluate(batch)
            .and_then(|v| v.into_array(batch.num_rows()))
            .map_err(|e| self.error(e.find_root().strip_backtrace()))?;
        match &self.cast_from {
            Some(_) => cast(&value, &self.data_type).map_err(|e| self.error(e)),
            None => Ok(value),
        }
    }

    /// Evaluates a boolean expression to a mask.
    pub fn evaluate_mask(&self, batch: &RecordBatch) -> Result<BooleanArray> {
        let value = self.evaluate(batch)?;
        value
            .as_any()
            .downcast_ref::<BooleanArray>()
            .cloned()
            .ok_or_else(|| {
                self.error(format!(
                    "a predicate must be boolean, this yields {}",
                    value.data_type()
                ))
            })
    }
}

/// Keeps the rows of `batch` where `predicate` is true (null counts as false), with one
/// filter kernel over the whole batch.
pub fn filter_batch(batch: &RecordBatch, predicate: &SqlExpr) -> Result<RecordBatch> {
    let mask = predicate.evaluate_mask(batch)?;
    let keep = mask.true_count();
    if keep == batch.num_rows() {
        return Ok(batch.clone());
    }
    if keep == 0 {
        return Ok(batch.slice(0, 0));
    }
    filter_record_batch(batch, &mask).map_err(|e| EngineError::arrow("filtering a batch", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("amount", DataType::Int64, false),
            Field::new("level", DataType::Utf8, true),
            Field::new("userId", DataType::Utf8, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![5, 11, 20, 10])),
                Arc::new(StringArray::from(vec![
                    Some("ERROR"),
                    Some("info"),
                    None,
                    Some("ERROR"),
                ])),
                Arc::new(StringArray::from(vec!["a", "b", "c", "d"])),
            ],
        )
        .expect("test batch")
    }

    fn compile(sql: &str, b: &RecordBatch) -> SqlExpr {
        SqlExpr::compile(sql, &b.schema()).expect("compiles")
    }

    #[test]
    fn arithmetic() {
        let b = batch();
        let e = compile("amount * 2 + 1", &b);
        assert_eq!(e.data_type(), &DataType::Int64);
        assert!(!e.nullable());
        let v = e.evaluate(&b).expect("evaluates");
        let v = v.as_any().downcast_ref::<Int64Array>().expect("int64");
        assert_eq!(v.values().to_vec(), vec![11, 23, 41, 21]);

        let e = compile("amount / 2.0", &b);
        assert_eq!(e.data_type(), &DataType::Float64);
        let v = e.evaluate(&b).expect("evaluates");
        let v = v.as_any().downcast_ref::<Float64Array>().expect("f64");
        assert_eq!(v.values().to_vec(), vec![2.5, 5.5, 10.0, 5.0]);
    }

    #[test]
    fn comparison_with_coercion() {
        let b = batch();
        let e = compile("amount > 10.5", &b);
        assert_eq!(e.data_type(), &DataType::Boolean);
        let out = filter_batch(&b, &e).expect("filters");
        let amounts = out
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("int64");
        assert_eq!(amounts.values().to_vec(), vec![11, 20]);
        // The schema is unchanged by a filter.
        assert_eq!(out.schema(), b.schema());
    }

    #[test]
    fn null_predicate_is_false() {
        let b = batch();
        let e = compile("level = 'ERROR'", &b);
        let out = filter_batch(&b, &e).expect("filters");
        assert_eq!(out.num_rows(), 2);
        let e = compile("level <> 'ERROR'", &b);
        // The null level row is dropped, not kept.
        assert_eq!(filter_batch(&b, &e).expect("filters").num_rows(), 1);
    }

    #[test]
    fn filter_all_and_none() {
        let b = batch();
        assert_eq!(
            filter_batch(&b, &compile("amount > 0", &b))
                .expect("filters")
                .num_rows(),
            4
        );
        assert_eq!(
            filter_batch(&b, &compile("amount > 100", &b))
                .expect("filters")
                .num_rows(),
            0
        );
    }

    #[test]
    fn string_functions_yield_utf8() {
        let b = batch();
        let e = compile("upper(userId) || '-' || lower(level)", &b);
        assert_eq!(e.data_type(), &DataType::Utf8);
        let v = e.evaluate(&b).expect("evaluates");
        assert_eq!(v.data_type(), &DataType::Utf8);
        let v = v.as_any().downcast_ref::<StringArray>().expect("utf8");
        assert_eq!(v.value(0), "A-error");
        assert_eq!(v.value(1), "B-info");
        assert!(v.is_null(2));

        let e = compile("substr(userId, 1, 1)", &b);
        assert_eq!(e.data_type(), &DataType::Utf8);
        let e = compile("CAST(amount AS VARCHAR)", &b);
        assert_eq!(e.data_type(), &DataType::Utf8);
        assert_eq!(
            e.evaluate(&b).expect("evaluates").data_type(),
            &DataType::Utf8
        );
    }

    #[test]
    fn case_expression() {
        let b = batch();
        let e = compile(
            "CASE WHEN amount >= 20 THEN 'high' WHEN amount > 10 THEN 'mid' ELSE 'low' END",
            &b,
        );
        assert_eq!(e.data_type(), &DataType::Utf8);
        let v = e.evaluate(&b).expect("evaluates");
        let v = v.as_any().downcast_ref::<StringArray>().expect("utf8");
        let got: Vec<&str> = (0..v.len()).map(|i| v.value(i)).collect();
        assert_eq!(got, vec!["low", "mid", "high", "low"]);
    }

    #[test]
    fn constants_broadcast() {
        let b = batch();
        let e = compile("42", &b);
        let v = e.evaluate(&b).expect("evaluates");
        assert_eq!(v.len(), 4);
        let e = compile("'x'", &b);
        let v = e.evaluate(&b).expect("evaluates");
        assert_eq!(v.len(), 4);
        assert_eq!(v.data_type(), &DataType::Utf8);
    }

    #[test]
    fn column_reference() {
        let b = batch();
        assert_eq!(compile("amount", &b).column_index(), Some(0));
        assert_eq!(compile("amount + 1", &b).column_index(), None);
        // Column names are case-sensitive as written.
        assert_eq!(compile("userId", &b).column_index(), Some(2));
    }

    #[test]
    fn unknown_column_lists_known_ones() {
        let b = batch();
        let err = SqlExpr::compile("amout > 1", &b.schema()).expect_err("unknown column");
        assert_eq!(
            err,
            "expression `amout > 1`: unknown column \"amout\" (known columns: amount, level, userId)"
        );
        let err = SqlExpr::compile("userid = 'a'", &b.schema()).expect_err("case-sensitive");
        assert!(err.contains("unknown column \"userid\""), "{err}");
    }

    #[test]
    fn other_errors_name_the_expression() {
        let b = batch();
        let err = SqlExpr::compile("amount >", &b.schema()).expect_err("syntax");
        assert!(err.starts_with("expression `amount >`: "), "{err}");
        let err = SqlExpr::compile("no_such_fn(amount)", &b.schema()).expect_err("function");
        assert!(
            err.starts_with("expression `no_such_fn(amount)`: "),
            "{err}"
        );
        assert!(err.contains("no_such_fn"), "{err}");
        let err = SqlExpr::compile("  ", &b.schema()).expect_err("empty");
        assert!(err.contains("empty"), "{err}");
    }

    #[test]
    fn non_boolean_predicate_fails_to_filter() {
        let b = batch();
        let e = compile("amount + 1", &b);
        let err = filter_batch(&b, &e).expect_err("not boolean");
        assert!(err.to_string().contains("boolean"), "{err}");
    }
}
