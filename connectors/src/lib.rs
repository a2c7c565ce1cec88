//! # weir-connectors
//!
//! weir's built-in connectors, registered by name with [`register`]:
//!
//! - sources: `file` ([`file_source`]: lines of files matched by a glob, as raw bytes
//!   for a format), `datagen` ([`datagen`]: deterministic typed rows of the declared
//!   schema, optionally rate-limited) and `nexmark` ([`nexmark`]: the persons, auctions
//!   and bids of the Nexmark benchmark, deterministic, optionally rate-limited);
//! - sinks: `stdout` ([`stdout_sink`]: JSON lines, CSV or tables), `file`
//!   ([`file_sink`]: JSON lines or CSV, published atomically) and `blackhole`
//!   ([`blackhole_sink`]: discards rows, for benchmarks);
//! - with the `kafka` feature, a `kafka` source and sink ([`kafka`]: partitions as
//!   splits, transactional exactly-once output).

pub mod blackhole_sink;
pub mod datagen;
mod encode;
pub mod file_sink;
pub mod file_source;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod nexmark;
mod options;
mod pace;
#[cfg(feature = "postgres")]
pub mod postgres;
mod rng;
pub mod stdout_sink;

pub use blackhole_sink::BlackholeSinkFactory;
pub use datagen::DatagenFactory;
pub use encode::TextFormat;
pub use file_sink::FileSinkFactory;
pub use file_source::{truncated_rows, FileSourceFactory, TRUNCATED_ROWS_METADATA};
pub use nexmark::NexmarkFactory;
pub use stdout_sink::StdoutSinkFactory;

use weir_engine::registry::Registry;

/// Adds weir's built-in connectors to `registry`: sources `file`, `datagen` and
/// `nexmark`, sinks `stdout`, `file` and `blackhole`.
pub fn register(registry: &mut Registry) {
    registry
        .add_source(FileSourceFactory)
        .add_source(DatagenFactory)
        .add_source(NexmarkFactory)
        .add_sink(StdoutSinkFactory)
        .add_sink(FileSinkFactory)
        .add_sink(BlackholeSinkFactory);
    #[cfg(feature = "kafka")]
    registry
        .add_source(kafka::KafkaSourceFactory)
        .add_sink(kafka::KafkaSinkFactory);
    #[cfg(feature = "postgres")]
    registry.add_sink(postgres::PostgresSinkFactory);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests fail loudly on purpose.
mod tests {
    use super::*;

    #[test]
    fn registers_all_connectors() {
        let mut r = Registry::new();
        register(&mut r);
        let sources: Vec<_> = r.sources().map(|f| f.name()).collect();
        let sinks: Vec<_> = r.sinks().map(|f| f.name()).collect();
        let mut want_sources = vec!["datagen", "file", "nexmark"];
        let mut want_sinks = vec!["blackhole", "file", "stdout"];
        if cfg!(feature = "kafka") {
            want_sources.push("kafka");
            want_sinks.push("kafka");
        }
        if cfg!(feature = "postgres") {
            want_sinks.push("postgres");
        }
        want_sources.sort_unstable();
        want_sinks.sort_unstable();
        assert_eq!(sources, want_sources);
        assert_eq!(sinks, want_sinks);
        for f in r.sources() {
            let s = f.options_schema();
            assert_eq!(s["type"], "object", "{}", f.name());
            assert!(s["properties"].is_object(), "{}", f.name());
            assert!(s["properties"].get("format").is_none(), "{}", f.name());
            assert!(s["properties"].get("schema").is_none(), "{}", f.name());
        }
        for f in r.sinks() {
            let s = f.options_schema();
            assert_eq!(s["type"], "object", "{}", f.name());
            // Sinks that write text choose a format; the blackhole writes nothing, and
            // PostgreSQL gets columns.
            if !["blackhole", "postgres"].contains(&f.name()) {
                assert!(s["properties"]["format"].is_object(), "{}", f.name());
            }
            assert!(s["properties"].get("from").is_none(), "{}", f.name());
        }
    }
}
