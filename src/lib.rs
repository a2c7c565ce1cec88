//! # weir
//!
//! A dataflow stream processing engine in Rust, in the family of Apache Flink and
//! Arroyo. Pipelines are written as YAML (`weir run job.yaml`) or in Rust with
//! [`Pipeline`]; both build the same logical graph through one [`Registry`] of
//! connectors, formats and steps.
//!
//! ```no_run
//! use weir::prelude::*;
//!
//! # async fn example() -> Result<(), weir::WeirError> {
//! let p = Pipeline::new("log-filter");
//! let logs = p.source(
//!     "logs",
//!     SourceSpec::new("file")
//!         .option("path", "examples/log_filter/data/*.jsonl")
//!         .format("json")
//!         .schema(&[("ts", "timestamp"), ("service", "string"), ("level", "string"), ("message", "string")])
//!         .event_time("ts", "5s"),
//! )?;
//! let errors = logs.filter("errors", "level = 'ERROR'")?;
//! errors.sink("out", SinkSpec::new("file").option("path", "out/errors.jsonl"))?;
//! let summary = weir::run(p.build()?).await?;
//! println!("{summary}");
//! # Ok(())
//! # }
//! ```

pub mod bench;
pub mod dlq;
pub mod http;
pub mod pipeline;
pub mod typed;

use std::sync::Arc;

pub use pipeline::{JoinSpec, JoinType, Pipeline, SinkSpec, SourceSpec, Stream, WindowSpec};
pub use weir_connectors as connectors;
pub use weir_engine as engine;
pub use weir_engine::registry::Registry;
pub use weir_operators as operators;

/// Everything a pipeline author needs.
pub mod prelude {
    pub use crate::pipeline::{
        JoinSpec, JoinType, Pipeline, SinkSpec, SourceSpec, Stream, WindowSpec,
    };
    pub use crate::WeirError;
    pub use weir_engine::operator::{Collector, Operator, OperatorContext};
    pub use weir_engine::registry::Partitioning;
    pub use weir_engine::runtime::JobSummary;
}

/// Errors of the facade: a bad pipeline (with the offending step and field) or a
/// failure while running.
#[derive(Debug, thiserror::Error)]
pub enum WeirError {
    /// The pipeline is invalid.
    #[error("{0}")]
    Pipeline(String),
    /// The YAML job is invalid (every error, with file, line and column).
    #[error("{0}")]
    Spec(#[from] weir_engine::spec::SpecErrors),
    /// The job failed while running.
    #[error(transparent)]
    Engine(#[from] weir_engine::EngineError),
    /// A command could not do what was asked (e.g. `weir savepoint` for a process that
    /// is not running); the job file itself is fine.
    #[error("{0}")]
    Command(String),
    /// A second stop signal aborted the job; sinks did not publish what was in flight.
    #[error("aborted by a second {signal}: the job was stopped before the end of its input; sinks published only what earlier checkpoints committed")]
    Interrupted {
        /// The signal's name (`SIGINT`, `SIGTERM`).
        signal: &'static str,
        /// The exit code that reports it (130, 143).
        code: u8,
    },
}

/// The registry with every built-in connector, format and step.
pub fn default_registry() -> Registry {
    let mut r = Registry::new();
    weir_connectors::register(&mut r);
    weir_operators::register(&mut r);
    r
}

/// Loads a YAML job file with the built-in registry: the graph only.
pub fn load_job(
    path: &std::path::Path,
    parallelism: Option<usize>,
) -> Result<weir_engine::graph::LogicalGraph, WeirError> {
    Ok(load_job_file(path, parallelism)?.graph)
}

/// Loads a YAML job file with the built-in registry: the graph with its checkpoint and
/// state settings ([`CompiledJob::run_options`](weir_engine::spec::CompiledJob)).
pub fn load_job_file(
    path: &std::path::Path,
    parallelism: Option<usize>,
) -> Result<weir_engine::spec::CompiledJob, WeirError> {
    let overrides = weir_engine::spec::JobOverrides { parallelism };
    Ok(weir_engine::spec::compile_job_file(
        path,
        Arc::new(default_registry()),
        &overrides,
    )?)
}

/// The run options a compiled job asks for (checkpoints, state backend), restoring as
/// `restore` says.
pub fn run_options(
    job: &weir_engine::spec::CompiledJob,
    restore: weir_engine::runtime::Restore,
) -> weir_engine::runtime::RunOptions {
    weir_engine::runtime::RunOptions {
        checkpoint: job.checkpoint.clone(),
        state_backend: job.state.clone(),
        restore,
        latency_markers: None,
    }
}

/// What [`start_over`] removed before a job started from scratch.
#[derive(Debug, Default)]
pub struct FreshStart {
    /// Checkpoints deleted and the store they were in, when the job checkpoints.
    pub checkpoints: Option<(usize, String)>,
    /// Files of earlier runs removed, per sink (the dead-letter output included).
    pub outputs: Vec<(String, Vec<std::path::PathBuf>)>,
}

impl std::fmt::Display for FreshStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some((n, store)) = &self.checkpoints {
            writeln!(
                f,
                "fresh start: deleted {n} checkpoint(s) in {store} (savepoints kept)"
            )?;
        }
        for (sink, files) in &self.outputs {
            if !files.is_empty() {
                let first = files[0].display();
                let more = match files.len() {
                    1 => String::new(),
                    n => format!(" and {} more", n - 1),
                };
                writeln!(
                    f,
                    "fresh start: removed {} earlier output file(s) of `{sink}`: {first}{more}",
                    files.len()
                )?;
            }
        }
        Ok(())
    }
}

/// Starts a job over (`weir run --fresh`): deletes its checkpoints (savepoints are
/// kept) and the output its sinks published in earlier runs, so that the new run
/// neither resumes nor writes beside (or refuses to overwrite) the old output.
pub async fn start_over(job: &weir_engine::spec::CompiledJob) -> Result<FreshStart, WeirError> {
    let mut fresh = FreshStart::default();
    if let Some(c) = &job.checkpoint {
        let storage = weir_engine::checkpoint::CheckpointStorage::open(&c.storage, &job.graph.job)?;
        let n = storage.clear_checkpoints().await?;
        fresh.checkpoints = Some((n, storage.describe()));
    }
    for node in &job.graph.nodes {
        if let weir_engine::graph::NodeKind::Sink(b) = &node.kind {
            if let Some(clear) = &b.clear {
                fresh.outputs.push((node.name.clone(), clear()?));
            }
        }
    }
    Ok(fresh)
}

/// Runs a job graph to completion on the current tokio runtime.
pub async fn run(
    graph: weir_engine::graph::LogicalGraph,
) -> Result<weir_engine::runtime::JobSummary, WeirError> {
    Ok(weir_engine::runtime::run(graph).await?)
}

/// Runs a job graph with checkpoints, a state backend and a restore point.
pub async fn run_with(
    graph: weir_engine::graph::LogicalGraph,
    options: weir_engine::runtime::RunOptions,
) -> Result<weir_engine::runtime::JobSummary, WeirError> {
    Ok(weir_engine::runtime::run_with(graph, options).await?)
}
