//! The registry through which YAML names resolve to factories: source types
//! (`type: file`), formats (`format: json`), sink types and step kinds (`filter:`,
//! `select:`, `window:`…). The engine knows no concrete connector or operator; the root
//! package fills a [`Registry`] with the built-in ones. The Rust builder goes through the
//! same factories, so YAML and Rust build the same graph.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;

use crate::aggregate::{AggregateFunction, AggregateTable};
use crate::error::Result;
use crate::operator::Operator;
use crate::sink::{Sink, SinkContext};
use crate::source::{Decoder, Source, SourceContext};

/// An error in one field of a job description. `path` is a JSON pointer relative to the
/// object the factory was given (e.g. `/pattern` or `` for the object itself); the spec
/// layer turns it into file, line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Relative JSON pointer of the offending field.
    pub path: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl FieldError {
    /// An error about the field at `path` (relative JSON pointer).
    pub fn at(path: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            path: path.into(),
            message: message.into(),
        }
    }

    /// An error about the whole object.
    pub fn here(message: impl Into<String>) -> Self {
        Self::at("", message)
    }

    /// Prefixes the path with `prefix` (e.g. `/format`).
    pub fn under(mut self, prefix: &str) -> Self {
        self.path = format!("{prefix}{}", self.path);
        self
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Creates a source instance for one subtask.
pub type SourceCreate = Arc<dyn Fn(&SourceContext) -> Result<Box<dyn Source>> + Send + Sync>;
/// Creates a decoder instance for one source subtask.
pub type DecoderCreate = Arc<dyn Fn() -> Result<Box<dyn Decoder>> + Send + Sync>;
/// Creates a sink instance for one subtask.
pub type SinkCreate = Arc<dyn Fn(&SinkContext) -> Result<Box<dyn Sink>> + Send + Sync>;
/// Creates an operator instance for one subtask: `(subtask, parallelism)`.
pub type OperatorCreate = Arc<dyn Fn(usize, usize) -> Result<Box<dyn Operator>> + Send + Sync>;

/// A source as the planner needs it.
#[derive(Clone)]
pub struct SourceBuild {
    /// Schema of the batches the source yields ([`crate::source::raw_schema`] for byte
    /// sources, which then need a format).
    pub schema: SchemaRef,
    /// Whether the source yields raw bytes that a `format` must decode.
    pub needs_format: bool,
    /// Whether the source ends by itself (files, datagen with a row count).
    pub bounded: bool,
    /// One line for `weir explain`, e.g. `file data/*.jsonl`.
    pub describe: String,
    /// Largest useful parallelism (e.g. number of files), if limited.
    pub max_parallelism: Option<usize>,
    /// Creates the instance per subtask.
    pub create: SourceCreate,
}

/// A decoder as the planner needs it.
#[derive(Clone)]
pub struct DecoderBuild {
    /// Schema of decoded batches.
    pub schema: SchemaRef,
    /// One line for `weir explain`.
    pub describe: String,
    /// Creates the instance per subtask.
    pub create: DecoderCreate,
}

/// Where a sink's output goes, given whether the job is exactly-once (checkpointing)
/// and the sink's parallelism.
pub type SinkOutput = Arc<dyn Fn(bool, usize) -> String + Send + Sync>;

/// Removes what earlier runs of a sink published (`weir run --fresh`); the paths it
/// removed.
pub type SinkClear = Arc<dyn Fn() -> Result<Vec<std::path::PathBuf>> + Send + Sync>;

/// A sink as the planner needs it.
#[derive(Clone)]
pub struct SinkBuild {
    /// One line for `weir explain`.
    pub describe: String,
    /// Creates the instance per subtask.
    pub create: SinkCreate,
    /// Largest parallelism the sink supports (stdout: 1).
    pub max_parallelism: Option<usize>,
    /// Where the output goes, in the user's words, for the end-of-run summary (a path,
    /// a pattern of part files, a topic); `None` when there is nothing to point at.
    pub output: Option<SinkOutput>,
    /// Removes the published output of earlier runs, for a job started over with
    /// `--fresh` (file sinks: their part files); `None` when the sink cannot (or need
    /// not) clear anything.
    pub clear: Option<SinkClear>,
}

impl SinkBuild {
    /// A sink described by `describe` whose subtasks `create` makes; no parallelism
    /// limit, no output location, nothing to clear.
    pub fn new(describe: impl Into<String>, create: SinkCreate) -> Self {
        SinkBuild {
            describe: describe.into(),
            create,
            max_parallelism: None,
            output: None,
            clear: None,
        }
    }

    /// Limits the sink's parallelism.
    pub fn max_parallelism(mut self, max: usize) -> Self {
        self.max_parallelism = Some(max);
        self
    }

    /// Says where the output goes (shown in the run summary), the same with or
    /// without checkpoints.
    pub fn output(mut self, output: impl Into<String>) -> Self {
        let output = output.into();
        self.output = Some(Arc::new(move |_, _| output.clone()));
        self
    }

    /// Says where the output goes, depending on whether the job checkpoints and on the
    /// sink's parallelism.
    pub fn output_with(mut self, output: SinkOutput) -> Self {
        self.output = Some(output);
        self
    }

    /// Sets how `--fresh` removes earlier runs' output.
    pub fn clear_with(mut self, clear: SinkClear) -> Self {
        self.clear = Some(clear);
        self
    }
}

/// How records travel from an upstream subtask to the downstream subtasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Partitioning {
    /// 1:1 to the subtask with the same index (same parallelism); chained when possible.
    Forward,
    /// By the hash of these columns, through key groups.
    Hash(Vec<String>),
    /// Every record to every subtask.
    Broadcast,
    /// Round robin, batch by batch.
    Rebalance,
}

impl std::fmt::Display for Partitioning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Partitioning::Forward => write!(f, "forward"),
            Partitioning::Hash(k) => write!(f, "hash({})", k.join(", ")),
            Partitioning::Broadcast => write!(f, "broadcast"),
            Partitioning::Rebalance => write!(f, "rebalance"),
        }
    }
}

/// A step as the planner needs it.
#[derive(Clone)]
pub struct StepBuild {
    /// Schema of the main output.
    pub schema: SchemaRef,
    /// Side outputs and their schemas (e.g. `late`).
    pub side_outputs: Vec<(String, SchemaRef)>,
    /// How each input must be partitioned; `None` lets the planner choose (forward when
    /// the parallelism matches, else rebalance). A keyed operator asks for `Hash`.
    pub input_partitioning: Option<Partitioning>,
    /// Per input, overriding `input_partitioning` where not empty: a join hashes its
    /// left input by the left key columns and its right input by the right ones.
    pub partitioning_per_input: Vec<Partitioning>,
    /// Output is partitioned by these keys (a `key_by` step): downstream keyed steps on
    /// the same keys need no further shuffle.
    pub keyed_by: Option<Vec<String>>,
    /// One line for `weir explain`, e.g. `filter level = 'ERROR'`.
    pub describe: String,
    /// Creates the instance per subtask.
    pub create: OperatorCreate,
}

/// What factories may need while building: the job's name and default settings.
#[derive(Debug, Clone)]
pub struct BuildContext {
    /// The job's name.
    pub job: String,
    /// Directory of the job file (relative paths in the job resolve against it).
    pub base_dir: std::path::PathBuf,
    /// Aggregate functions by name (built-in and user-defined).
    pub aggregates: Arc<AggregateTable>,
    /// Whether (and how often) the job checkpoints, when known at build time (a YAML
    /// job knows; a graph built in Rust learns it only when run): a sink that needs
    /// checkpoints for its delivery guarantee says so here, at the field, rather than
    /// at start.
    pub checkpoints: Checkpointing,
}

/// Whether and how often a job checkpoints, as far as known when its nodes are built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Checkpointing {
    /// Not known (a graph built in Rust: the run options decide).
    #[default]
    Unknown,
    /// The job does not checkpoint.
    Off,
    /// Every this long.
    Every(std::time::Duration),
}

/// Resolves `type: NAME` of a source.
pub trait SourceFactory: Send + Sync {
    /// The YAML type name, e.g. `file`.
    fn name(&self) -> &'static str;
    /// JSON Schema (an object schema with `properties`) of the connector's own keys.
    fn options_schema(&self) -> serde_json::Value;
    /// Builds the source from its keys (those not common to every source) and the
    /// declared schema (for typed sources such as datagen).
    fn build(
        &self,
        ctx: &BuildContext,
        name: &str,
        options: &serde_json::Value,
        schema: Option<SchemaRef>,
    ) -> Result<SourceBuild, FieldError>;

    /// How far ahead of the wall clock event times may be when `event_time.max_future`
    /// is not set (see [`crate::time::FutureBound`]): sources of recorded data (files,
    /// logs) bound it; generators of synthetic time do not.
    fn default_max_future(&self) -> Option<std::time::Duration> {
        None
    }
}

/// Resolves `format: NAME` of a byte source.
pub trait FormatFactory: Send + Sync {
    /// The YAML name, e.g. `json`.
    fn name(&self) -> &'static str;
    /// JSON Schema of the format's options (`format: {type: csv, delimiter: ";"}`).
    fn options_schema(&self) -> serde_json::Value;
    /// Builds the decoder for records of `schema`. `schema` is `None` when the job
    /// declared none (the format may then fail or use a default, e.g. `raw`).
    fn build(
        &self,
        options: &serde_json::Value,
        schema: Option<SchemaRef>,
    ) -> Result<DecoderBuild, FieldError>;
}

/// Resolves `type: NAME` of a sink.
pub trait SinkFactory: Send + Sync {
    /// The YAML type name, e.g. `file`.
    fn name(&self) -> &'static str;
    /// JSON Schema of the sink's own keys.
    fn options_schema(&self) -> serde_json::Value;
    /// Builds the sink for batches of `input`.
    fn build(
        &self,
        ctx: &BuildContext,
        name: &str,
        options: &serde_json::Value,
        input: SchemaRef,
    ) -> Result<SinkBuild, FieldError>;
}

/// Resolves a step kind: the step's key (`filter`, `select`, `key_by`, …).
pub trait StepFactory: Send + Sync {
    /// The YAML key, e.g. `filter`.
    fn name(&self) -> &'static str;
    /// JSON Schema of the key's value.
    fn options_schema(&self) -> serde_json::Value;
    /// Inputs the step takes: `(min, max)`; a filter takes (1, 1), union (2, usize::MAX).
    fn inputs(&self) -> (usize, usize) {
        (1, 1)
    }
    /// Builds the step from the key's value and the input schemas.
    fn build(
        &self,
        ctx: &BuildContext,
        name: &str,
        value: &serde_json::Value,
        inputs: &[SchemaRef],
    ) -> Result<StepBuild, FieldError>;
}

/// All factories by name.
#[derive(Default, Clone)]
pub struct Registry {
    sources: BTreeMap<&'static str, Arc<dyn SourceFactory>>,
    formats: BTreeMap<&'static str, Arc<dyn FormatFactory>>,
    sinks: BTreeMap<&'static str, Arc<dyn SinkFactory>>,
    steps: BTreeMap<&'static str, Arc<dyn StepFactory>>,
    aggregates: AggregateTable,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a source type.
    pub fn add_source(&mut self, f: impl SourceFactory + 'static) -> &mut Self {
        self.sources.insert(f.name(), Arc::new(f));
        self
    }

    /// Adds a format.
    pub fn add_format(&mut self, f: impl FormatFactory + 'static) -> &mut Self {
        self.formats.insert(f.name(), Arc::new(f));
        self
    }

    /// Adds a sink type.
    pub fn add_sink(&mut self, f: impl SinkFactory + 'static) -> &mut Self {
        self.sinks.insert(f.name(), Arc::new(f));
        self
    }

    /// Adds a step kind.
    pub fn add_step(&mut self, f: impl StepFactory + 'static) -> &mut Self {
        self.steps.insert(f.name(), Arc::new(f));
        self
    }

    /// Adds an aggregate function (usable in window `aggregate:` expressions).
    pub fn add_aggregate(&mut self, f: impl AggregateFunction + 'static) -> &mut Self {
        self.aggregates.add(Arc::new(f));
        self
    }

    /// The aggregate functions.
    pub fn aggregates(&self) -> &AggregateTable {
        &self.aggregates
    }

    /// A source type by name.
    pub fn source(&self, name: &str) -> Option<&Arc<dyn SourceFactory>> {
        self.sources.get(name)
    }

    /// A format by name.
    pub fn format(&self, name: &str) -> Option<&Arc<dyn FormatFactory>> {
        self.formats.get(name)
    }

    /// A sink type by name.
    pub fn sink(&self, name: &str) -> Option<&Arc<dyn SinkFactory>> {
        self.sinks.get(name)
    }

    /// A step kind by name.
    pub fn step(&self, name: &str) -> Option<&Arc<dyn StepFactory>> {
        self.steps.get(name)
    }

    /// All source types.
    pub fn sources(&self) -> impl Iterator<Item = &Arc<dyn SourceFactory>> {
        self.sources.values()
    }

    /// All formats.
    pub fn formats(&self) -> impl Iterator<Item = &Arc<dyn FormatFactory>> {
        self.formats.values()
    }

    /// All sink types.
    pub fn sinks(&self) -> impl Iterator<Item = &Arc<dyn SinkFactory>> {
        self.sinks.values()
    }

    /// All step kinds.
    pub fn steps(&self) -> impl Iterator<Item = &Arc<dyn StepFactory>> {
        self.steps.values()
    }
}
