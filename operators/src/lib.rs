//! # weir-operators
//!
//! weir's built-in formats and stateless steps, registered by name so that YAML jobs
//! and the Rust builder reach them through the same [`Registry`]:
//!
//! - **formats** ([`formats`]) decode the raw bytes of file and Kafka sources (and the
//!   `parse` step's column): `json` (JSON Lines), `csv`, `regex` (named groups) and
//!   `raw` (one `line` column). Every record either decodes or becomes a dead letter
//!   with a reason and its position; a bad record never stops the job nor costs its
//!   neighbours.
//! - **steps** ([`steps`]): `filter` and `select` evaluate SQL expressions
//!   ([`weir_engine::expr::SqlExpr`]) on whole batches, `key_by` hash-partitions the
//!   stream, `union` merges inputs, `parse` decodes a string column.
//! - **windows** ([`window`]): the `window` step (tumbling, sliding and session windows
//!   with allowed lateness, update rows and a `late` side output), with the built-in
//!   aggregate functions of [`aggregates`] (`count`, `sum`, `min`, `max`, `avg`,
//!   `first`, `last`, `count(distinct …)`).
//! - **joins** ([`join`]): the `join` step (interval and window joins, inner, left,
//!   right and full outer, with `late_left`/`late_right` side outputs).
//!
//! ```
//! let mut registry = weir_engine::registry::Registry::new();
//! weir_operators::register(&mut registry);
//! assert!(registry.format("json").is_some());
//! assert!(registry.step("filter").is_some());
//! ```

pub mod aggregates;
pub mod formats;
pub mod join;
mod options;
pub mod steps;
pub mod window;

use weir_engine::registry::Registry;

pub use aggregates::BuiltinAggregate;
pub use formats::{CsvFormat, FormatDecoder, JsonFormat, RawFormat, RegexFormat};
pub use join::{JoinOperator, JoinStep};
pub use steps::{
    DedupStep, EnrichStep, FilterStep, KeyByStep, ParseStep, SelectStep, TableStep, UnionStep,
    ValidateStep,
};
pub use window::{WindowOperator, WindowStep};

/// Adds the formats (`json`, `csv`, `regex`, `raw`), steps (`filter`, `select`,
/// `key_by`, `union`, `parse`, `window`, `join`) and aggregate functions (`count`,
/// `count_distinct`, `sum`, `min`, `max`, `avg`, `first`, `last`) of this crate to
/// `registry`.
pub fn register(registry: &mut Registry) {
    for f in BuiltinAggregate::ALL {
        registry.add_aggregate(f);
    }
    registry
        .add_format(JsonFormat)
        .add_format(CsvFormat)
        .add_format(RegexFormat)
        .add_format(RawFormat)
        .add_step(FilterStep)
        .add_step(ValidateStep)
        .add_step(EnrichStep)
        .add_step(SelectStep)
        .add_step(KeyByStep)
        .add_step(DedupStep)
        .add_step(TableStep)
        .add_step(UnionStep)
        .add_step(ParseStep)
        .add_step(WindowStep)
        .add_step(JoinStep);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_everything_with_object_option_schemas() {
        let mut r = Registry::new();
        register(&mut r);
        let formats: Vec<&str> = r.formats().map(|f| f.name()).collect();
        assert_eq!(formats, vec!["csv", "json", "raw", "regex"]);
        for f in r.formats() {
            let s = f.options_schema();
            assert_eq!(s["type"], "object", "{}", f.name());
            assert_eq!(s["additionalProperties"], false, "{}", f.name());
            assert_eq!(s["properties"]["type"]["const"], f.name());
        }
        let steps: Vec<&str> = r.steps().map(|s| s.name()).collect();
        assert_eq!(
            steps,
            vec![
                "dedup", "enrich", "filter", "join", "key_by", "parse", "select", "table", "union",
                "validate", "window"
            ]
        );
        assert_eq!(
            r.aggregates().names(),
            vec![
                "avg",
                "count",
                "count_distinct",
                "first",
                "last",
                "max",
                "min",
                "sum"
            ]
        );
    }
}
