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
//!
//! ```
//! let mut registry = weir_engine::registry::Registry::new();
//! weir_operators::register(&mut registry);
//! assert!(registry.format("json").is_some());
//! assert!(registry.step("filter").is_some());
//! ```

pub mod formats;
mod options;
pub mod steps;

use weir_engine::registry::Registry;

pub use formats::{CsvFormat, FormatDecoder, JsonFormat, RawFormat, RegexFormat};
pub use steps::{FilterStep, KeyByStep, ParseStep, SelectStep, UnionStep};

/// Adds the formats (`json`, `csv`, `regex`, `raw`) and steps (`filter`, `select`,
/// `key_by`, `union`, `parse`) of this crate to `registry`.
pub fn register(registry: &mut Registry) {
    registry
        .add_format(JsonFormat)
        .add_format(CsvFormat)
        .add_format(RegexFormat)
        .add_format(RawFormat)
        .add_step(FilterStep)
        .add_step(SelectStep)
        .add_step(KeyByStep)
        .add_step(UnionStep)
        .add_step(ParseStep);
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
        assert_eq!(steps, vec!["filter", "key_by", "parse", "select", "union"]);
    }
}
