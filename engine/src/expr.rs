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
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, DataFusionError, SchemaError};
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::{Expr, ExprSchemable};
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
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
        let mut ctx = SessionContext::new_with_config(config);
        // json_get_str(raw, 'user', 'id') and friends, for JSON kept as a string.
        if let Err(e) = datafusion_functions_json::register_all(&mut ctx) {
            tracing::warn!(error = %e, "the JSON functions could not be registered");
        }
        ctx
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
    let mut text = msg.trim();
    for prefix in [
        "Error during planning: ",
        "SQL error: ",
        "This feature is not implemented: ",
        "Internal error: ",
        "Schema error: ",
        "Execution error: ",
        "Arrow error: ",
        "Parser error: ",
        "Optimizer rule 'type_coercion' failed\ncaused by\n",
    ] {
        if let Some(rest) = text.strip_prefix(prefix) {
            text = rest.trim();
        }
    }
    reword(text)
}

/// Turns the wording of sqlparser and DataFusion into a user's: parser errors lose
/// their `ParserError("…")` wrapping, Arrow type names become weir's field types.
fn reword(text: &str) -> String {
    if let Some(inner) = text
        .strip_prefix("ParserError(\"")
        .or_else(|| text.strip_prefix("TokenizerError(\""))
        .and_then(|t| t.strip_suffix("\")"))
    {
        let inner = inner
            .replace("Expected: ", "expected ")
            .replace("found: EOF", "found the end of the expression")
            .replace(", found: ", ", found ");
        let inner = match inner.find(" at Line: ") {
            Some(i) => inner[..i].to_string(),
            None => inner,
        };
        return format!("syntax error: {inner}");
    }
    if text.starts_with("Dot access not supported for non-string expr") {
        return "cannot read a field with `.` here: a struct field is read as `column.field` \
                (or `column['field']`); a name that is a SQL keyword (user, date, time, …) \
                must be quoted, e.g. `\"user\".id`"
            .to_string();
    }
    if let Some(rest) = text.strip_prefix("Cannot coerce arithmetic expression ") {
        // "Utf8 + Int64 to valid types"
        let rest = rest.trim_end_matches(" to valid types");
        let words: Vec<&str> = rest.split_whitespace().collect();
        if let [left, op, right] = words.as_slice() {
            return format!(
                "type error: `{op}` cannot combine {} and {}",
                type_words_of(left),
                type_words_of(right)
            );
        }
    }
    text.to_string()
}

/// "a string", "an int", … for an Arrow type's name as DataFusion prints it.
fn type_words_of(arrow_name: &str) -> String {
    let name = match arrow_name {
        "Utf8" | "LargeUtf8" | "Utf8View" => "string",
        "Int8" | "Int16" | "Int32" | "Int64" | "UInt8" | "UInt16" | "UInt32" | "UInt64" => "int",
        "Float16" | "Float32" | "Float64" => "float",
        "Boolean" => "bool",
        "Date32" | "Date64" => "date",
        "Binary" | "LargeBinary" | "BinaryView" => "binary",
        t if t.starts_with("Timestamp") => "timestamp",
        t if t.starts_with("Decimal") => "decimal",
        t if t.starts_with("Struct") => "struct",
        t if t.starts_with("List") || t.starts_with("LargeList") => "list",
        t => return format!("a value of type {t}"),
    };
    let article = if name.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {name}")
}

/// weir's name for an Arrow type, as in a `schema:` (`string`, `int`, …).
fn type_words(t: &DataType) -> String {
    type_words_of(&t.to_string())
}

fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

/// Rejects what DataFusion's type coercion would do silently at run time: turning a
/// string that is not a constant into a number, timestamp, date or bool (`k > 5` on a
/// string `k` casts every `k` to a number, and a row where that fails would become a
/// dead letter). `original` is the expression as written, `coerced` after coercion; a
/// cast the user wrote (`CAST(k AS BIGINT) > 5`) is theirs to make, and a string
/// constant (`ts > '2024-01-01T00:00:00Z'`) is converted once, at build time.
fn check_implicit_casts(
    original: &Expr,
    coerced: &Expr,
    schema: &DFSchema,
) -> std::result::Result<(), String> {
    let mut explicit: Vec<(&Expr, &DataType)> = Vec::new();
    let _ = original.apply(|e| {
        match e {
            Expr::Cast(c) => explicit.push((c.expr.as_ref(), c.field.data_type())),
            Expr::TryCast(c) => explicit.push((c.expr.as_ref(), c.field.data_type())),
            _ => {}
        }
        Ok(TreeNodeRecursion::Continue)
    });
    // The implicit string cast `e` is, if it is one: (the string expression, the type).
    let implicit = |e: &Expr| -> Option<(String, DataType)> {
        let Expr::Cast(c) = e else { return None };
        if matches!(c.expr.as_ref(), Expr::Literal(..)) || is_string(c.field.data_type()) {
            return None;
        }
        let from = c.expr.get_type(schema).ok()?;
        if !is_string(&from) {
            return None;
        }
        if explicit
            .iter()
            .any(|(inner, to)| *inner == c.expr.as_ref() && *to == c.field.data_type())
        {
            return None;
        }
        Some((c.expr.to_string(), c.field.data_type().clone()))
    };
    let mut problem = None;
    let _ = coerced.apply(|e| {
        let found = match e {
            Expr::BinaryExpr(b) => [(&b.left, &b.right), (&b.right, &b.left)]
                .into_iter()
                .find_map(|(side, other)| {
                    implicit(side).map(|(what, to)| {
                        let other_type = other
                            .get_type(schema)
                            .map(|t| type_words(&t))
                            .unwrap_or_else(|_| "a value".into());
                        format!(
                            "type error: `{what}` is a string and `{}` {other_type}: `{}` would \
                             convert every `{what}` to {} at run time, failing on values that \
                             are not; compare with a string, or convert explicitly with \
                             CAST({what} AS {})",
                            unquote(&other.to_string()),
                            b.op,
                            type_words(&to),
                            sql_type_name(&to)
                        )
                    })
                }),
            Expr::ScalarFunction(f) => f.args.iter().find_map(|a| {
                implicit(a).map(|(what, to)| {
                    format!(
                        "type error: `{}` takes {} where `{what}` is a string; convert it \
                         explicitly with CAST({what} AS {}) if that is meant",
                        f.func.name(),
                        type_words(&to),
                        sql_type_name(&to)
                    )
                })
            }),
            other => implicit(other).map(|(what, to)| {
                format!(
                    "type error: `{what}` is a string where {} is expected; convert it \
                     explicitly with CAST({what} AS {}) if that is meant",
                    type_words(&to),
                    sql_type_name(&to)
                )
            }),
        };
        Ok(match found {
            Some(m) => {
                problem = Some(m);
                TreeNodeRecursion::Stop
            }
            None => TreeNodeRecursion::Continue,
        })
    });
    match problem {
        Some(m) => Err(m),
        None => Ok(()),
    }
}

/// `Utf8("x")` → `'x'`, `Int64(5)` → `5`: DataFusion's display of literals, as SQL.
fn unquote(text: &str) -> String {
    for prefix in ["Utf8(\"", "Utf8View(\"", "LargeUtf8(\""] {
        if let Some(inner) = text
            .strip_prefix(prefix)
            .and_then(|t| t.strip_suffix("\")"))
        {
            return format!("'{inner}'");
        }
    }
    for prefix in ["Int64(", "Float64(", "Boolean(", "Int32("] {
        if let Some(inner) = text.strip_prefix(prefix).and_then(|t| t.strip_suffix(')')) {
            return inner.to_string();
        }
    }
    text.to_string()
}

/// The SQL name of a type for a suggested CAST.
fn sql_type_name(t: &DataType) -> &'static str {
    match t {
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => "BIGINT",
        DataType::Float16 | DataType::Float32 | DataType::Float64 => "DOUBLE",
        DataType::Boolean => "BOOLEAN",
        DataType::Date32 | DataType::Date64 => "DATE",
        DataType::Timestamp(..) => "TIMESTAMP",
        DataType::Decimal128(..) | DataType::Decimal256(..) => "DECIMAL",
        _ => "…",
    }
}

/// Longest expression text compiled.
pub const MAX_EXPR_BYTES: usize = 16 << 10;
/// Deepest nesting of parentheses and brackets.
pub const MAX_EXPR_NESTING: usize = 32;
/// Deepest nesting of CASE expressions: DataFusion's parser backtracks through every
/// level of a nested CASE that has a syntax error inside (an END missing, say), twice
/// the work per level; 12 levels take a few tenths of a second in a debug build. The
/// same bound applies to unterminated CAST-like forms (`CAST(`, `TRY_CAST(`,
/// `EXTRACT(`, …) nested in one another, which backtrack the same way.
pub const MAX_CASE_NESTING: usize = 12;
/// Most parts of a dotted name (`ctx.user.id` has 3): DataFusion's resolution of a
/// dotted name tries its prefixes and grows steeply with its length.
pub const MAX_NAME_PARTS: usize = 8;

/// Bounds the work of compiling `sql` before DataFusion sees it: its length, its
/// nesting and its dotted names (outside quotes). A hostile or mangled expression is
/// refused at once instead of taking seconds or the stack.
fn check_bounds(sql: &str) -> std::result::Result<(), String> {
    if sql.len() > MAX_EXPR_BYTES {
        return Err(format!(
            "the expression is {} bytes long; at most {MAX_EXPR_BYTES} are compiled",
            sql.len()
        ));
    }
    let mut depth = 0usize;
    let mut parts = 1usize;
    let mut quote: Option<char> = None;
    let mut prev = ' ';
    // The current word, to see CASE … END, which nest like parentheses.
    let mut word = String::new();
    let mut cases = 0usize;
    // The last word read (to see `CAST (`), and per open parenthesis whether it opens
    // a keyword form (CAST, TRY_CAST, EXTRACT, …) whose unterminated nesting makes the
    // parser backtrack like CASE does.
    let mut last_word = String::new();
    let mut parens: Vec<bool> = Vec::new();
    let mut forms = 0usize;
    let mut end_word = |word: &mut String, depth: &mut usize| -> std::result::Result<(), String> {
        if word.eq_ignore_ascii_case("case") {
            *depth += 1;
            cases += 1;
            if *depth > MAX_EXPR_NESTING {
                return Err(format!(
                    "the expression nests deeper than {MAX_EXPR_NESTING} levels"
                ));
            }
            if cases > MAX_CASE_NESTING {
                return Err(format!(
                    "the expression nests CASE deeper than {MAX_CASE_NESTING} levels"
                ));
            }
        } else if word.eq_ignore_ascii_case("end") {
            *depth = depth.saturating_sub(1);
            cases = cases.saturating_sub(1);
        }
        word.clear();
        Ok(())
    };
    for c in sql.chars() {
        if quote.is_none() && (c.is_alphanumeric() || matches!(c, '_' | '#' | '@' | '$')) {
            word.push(c);
        } else if !word.is_empty() {
            last_word.clone_from(&word);
            end_word(&mut word, &mut depth)?;
        } else if quote.is_none() && !c.is_whitespace() && c != '(' {
            last_word.clear();
        }
        match quote {
            Some(q) => {
                if c == q {
                    quote = None;
                }
            }
            None => match c {
                '\'' | '"' | '`' => quote = Some(c),
                '(' | '[' => {
                    let form = c == '('
                        && [
                            "cast",
                            "try_cast",
                            "extract",
                            "substring",
                            "trim",
                            "position",
                            "overlay",
                        ]
                        .iter()
                        .any(|k| last_word.eq_ignore_ascii_case(k));
                    parens.push(form);
                    if form {
                        forms += 1;
                        if forms > MAX_CASE_NESTING {
                            return Err(format!(
                                "the expression nests CAST-like forms deeper than \
                                 {MAX_CASE_NESTING} levels"
                            ));
                        }
                    }
                    last_word.clear();
                    depth += 1;
                    if depth > MAX_EXPR_NESTING {
                        return Err(format!(
                            "the expression nests deeper than {MAX_EXPR_NESTING} levels"
                        ));
                    }
                }
                ')' | ']' => {
                    if parens.pop() == Some(true) {
                        forms = forms.saturating_sub(1);
                    }
                    depth = depth.saturating_sub(1);
                }
                // A dot after a name (not in a number like 1.5) continues it.
                '.' if !prev.is_ascii_digit() || parts > 1 => {
                    parts += 1;
                    if parts > MAX_NAME_PARTS {
                        return Err(format!(
                            "a dotted name has more than {MAX_NAME_PARTS} parts"
                        ));
                    }
                }
                // Name characters of the SQL dialect (`#`, `@` and `$` too: `u#sr.id` is
                // one dotted name), dots and spaces continue a name.
                c if c.is_alphanumeric()
                    || matches!(c, '_' | '#' | '@' | '$' | '.')
                    || c.is_whitespace() => {}
                _ => parts = 1,
            },
        }
        prev = c;
    }
    end_word(&mut word, &mut depth)
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
        check_bounds(sql).map_err(fail)?;
        let df_schema = DFSchema::try_from(schema.as_ref().clone())
            .map_err(|e| fail(describe_error(&e, schema)))?;
        let ctx = session();
        let logical = ctx
            .parse_sql_expr(sql, &df_schema)
            .map_err(|e| fail(describe_error(&e, schema)))?;
        // Coerce types first (as DataFusion would), check what the coercion did, then
        // fold constants, so that a bad constant (`ts > 'yesterday'`) fails here and
        // not on every row.
        let simplifier = ExprSimplifier::new(
            SimplifyContext::builder()
                .with_schema(Arc::new(df_schema.clone()))
                .with_config_options(ctx.copied_config().options().clone())
                .build(),
        );
        let coerced = simplifier
            .coerce(logical.clone(), &df_schema)
            .map_err(|e| fail(describe_error(&e, schema)))?;
        check_implicit_casts(&logical, &coerced, &df_schema).map_err(fail)?;
        let simplified = simplifier
            .simplify(coerced)
            .map_err(|e| fail(describe_error(&e, schema)))?;
        let physical = ctx
            .create_physical_expr(simplified, &df_schema)
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
    fn hostile_expressions_are_refused_before_planning() {
        let b = batch();
        let chain = |n: usize| vec!["amount"; n].join(".");
        let err = SqlExpr::compile(&chain(9), &b.schema()).expect_err("long name");
        assert!(err.contains("more than 8 parts"), "{err}");
        let spaced = ["amount"; 9].join(" . ");
        let err = SqlExpr::compile(&spaced, &b.schema()).expect_err("long name");
        assert!(err.contains("more than 8 parts"), "{err}");
        // Unterminated nested CASTs made the parser backtrack exponentially.
        let casts = format!("{}1", "CAST(1 + ".repeat(MAX_CASE_NESTING + 1));
        let err = SqlExpr::compile(&casts, &b.schema()).expect_err("nested casts");
        assert!(err.contains("CAST-like forms deeper"), "{err}");
        let fine = format!(
            "{}1{}",
            "CAST(1 + ".repeat(MAX_CASE_NESTING),
            " AS BIGINT)".repeat(MAX_CASE_NESTING)
        );
        SqlExpr::compile(&fine, &b.schema()).expect("12 nested casts compile");
        // `#`, `@` and `$` are name characters of the dialect: `u#sr.id#x.y` is one name.
        let hashed = ["u#sr"; 9].join(".");
        let err = SqlExpr::compile(&hashed, &b.schema()).expect_err("long name");
        assert!(err.contains("more than 8 parts"), "{err}");
        let deep = format!("{}1{}", "(".repeat(40), ")".repeat(40));
        let err = SqlExpr::compile(&deep, &b.schema()).expect_err("deep");
        assert!(err.contains("nests deeper"), "{err}");
        let cases = format!(
            "{}1{}",
            "CASE WHEN amount > 1 THEN ".repeat(40),
            " ELSE 2 END".repeat(40)
        );
        let err = SqlExpr::compile(&cases, &b.schema()).expect_err("deep");
        assert!(err.contains("nests CASE deeper"), "{err}");
        // Unterminated nested CASEs (found by the fuzzer: exponential backtracking)
        // are refused before the parser sees them.
        let start = std::time::Instant::now();
        let open = format!("{}1", "CASE WHEN amount > 1 THEN ".repeat(23));
        let err = SqlExpr::compile(&open, &b.schema()).expect_err("deep");
        assert!(err.contains("nests CASE deeper"), "{err}");
        let open = format!("{}1", "CASE WHEN amount > 1 THEN ".repeat(MAX_CASE_NESTING));
        assert!(SqlExpr::compile(&open, &b.schema()).is_err());
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
        // Nested but ended is fine up to the bound.
        let ok = format!(
            "{}1{}",
            "CASE WHEN amount > 1 THEN ".repeat(MAX_CASE_NESTING),
            " ELSE 2 END".repeat(MAX_CASE_NESTING)
        );
        compile(&ok, &b);
        let long = format!("amount > {}", "1 + ".repeat(10_000));
        let err = SqlExpr::compile(&long, &b.schema()).expect_err("long");
        assert!(err.contains("bytes long"), "{err}");
        // Numbers, strings and names under the limits are fine.
        let start = std::time::Instant::now();
        let _ = SqlExpr::compile(&chain(8), &b.schema());
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
        compile(
            "amount > 1.5 AND level = 'a.b.c.d.e.f.g.h.i.j' OR amount < 2.25",
            &b,
        );
    }

    #[test]
    fn non_boolean_predicate_fails_to_filter() {
        let b = batch();
        let e = compile("amount + 1", &b);
        let err = filter_batch(&b, &e).expect_err("not boolean");
        assert!(err.to_string().contains("boolean"), "{err}");
    }
}
