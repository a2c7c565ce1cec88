//! The logical job graph and the builder both the YAML compiler and the Rust API use.
//! A graph is a DAG of named nodes — sources, steps (operators) and sinks — joined by
//! edges that say which output of a node feeds which input of another. The planner
//! ([`crate::planner`]) turns it into subtasks, channels and chains.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;

use crate::registry::{
    BuildContext, DecoderBuild, FieldError, OperatorCreate, Partitioning, Registry, SinkBuild,
    SourceBuild, StepBuild,
};
use crate::source::dead_letter_schema;
use crate::time::{mark_event_time, EventTimeConfig, FutureBound};

/// Index of a node in [`LogicalGraph::nodes`].
pub type NodeId = usize;

/// A stream: the main output of a node or one of its side outputs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamRef {
    /// The node.
    pub node: NodeId,
    /// `None` for the main output, else the side output's name.
    pub side: Option<String>,
}

impl StreamRef {
    /// The main output of `node`.
    pub fn main(node: NodeId) -> Self {
        StreamRef { node, side: None }
    }
}

/// What a node does.
#[derive(Clone)]
pub enum NodeKind {
    /// Reads from outside; decodes with `decoder` when it yields raw bytes; generates
    /// watermarks when `event_time` is set.
    Source {
        /// The connector.
        source: SourceBuild,
        /// The format, for byte sources.
        decoder: Option<DecoderBuild>,
        /// Event time column and watermark strategy.
        event_time: Option<EventTimeConfig>,
    },
    /// Processes batches.
    Step(StepBuild),
    /// Writes out.
    Sink(SinkBuild),
}

/// A node of the logical graph.
#[derive(Clone)]
pub struct Node {
    /// Its index.
    pub id: NodeId,
    /// Its name in the job (source, step or sink name).
    pub name: String,
    /// What it does.
    pub kind: NodeKind,
    /// Number of subtasks.
    pub parallelism: usize,
    /// Schema of its main output (sinks: of their input).
    pub schema: SchemaRef,
    /// Its side outputs and their schemas.
    pub side_outputs: Vec<(String, SchemaRef)>,
}

impl Node {
    /// One line describing the node for `weir explain`.
    pub fn describe(&self) -> String {
        match &self.kind {
            NodeKind::Source {
                source,
                decoder,
                event_time,
            } => {
                let mut s = source.describe.clone();
                if let Some(d) = decoder {
                    s.push_str(&format!(" | {}", d.describe));
                }
                if let Some(et) = event_time {
                    s.push_str(&format!(" | {et}"));
                }
                s
            }
            NodeKind::Step(b) => b.describe.clone(),
            NodeKind::Sink(b) => b.describe.clone(),
        }
    }

    /// `source`, `step` or `sink`.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            NodeKind::Source { .. } => "source",
            NodeKind::Step(_) => "step",
            NodeKind::Sink(_) => "sink",
        }
    }
}

/// An edge: `from` feeds input `input` of `to`.
#[derive(Debug, Clone)]
pub struct Edge {
    /// The upstream stream.
    pub from: StreamRef,
    /// The downstream node.
    pub to: NodeId,
    /// Which input of `to` (0 for single-input nodes; a join's left 0, right 1).
    pub input: usize,
    /// How records are distributed over `to`'s subtasks.
    pub partitioning: Partitioning,
}

/// Job-wide runtime settings.
#[derive(Debug, Clone)]
pub struct JobSettings {
    /// Default parallelism of every node.
    pub parallelism: usize,
    /// Number of key groups.
    pub max_parallelism: u16,
    /// Close a source batch at this many rows.
    pub batch_size: usize,
    /// Close a non-empty source batch after this long.
    pub linger: std::time::Duration,
    /// Capacity of each channel, in rows.
    pub channel_capacity_rows: usize,
    /// Buffer debloating of every channel (see `channel::Debloat`); `None`: off.
    pub debloat: Option<crate::channel::Debloat>,
}

impl Default for JobSettings {
    fn default() -> Self {
        JobSettings {
            parallelism: 1,
            max_parallelism: 128,
            batch_size: 1024,
            linger: std::time::Duration::from_millis(100),
            channel_capacity_rows: 16 * 1024,
            debloat: Some(crate::channel::Debloat::default()),
        }
    }
}

/// The logical graph of a job.
#[derive(Clone)]
pub struct LogicalGraph {
    /// The job's name.
    pub job: String,
    /// Nodes in the order they were added (a topological order).
    pub nodes: Vec<Node>,
    /// Edges.
    pub edges: Vec<Edge>,
    /// Runtime settings.
    pub settings: JobSettings,
}

impl LogicalGraph {
    /// Edges into `node`, by input index.
    pub fn inputs_of(&self, node: NodeId) -> Vec<&Edge> {
        let mut v: Vec<&Edge> = self.edges.iter().filter(|e| e.to == node).collect();
        v.sort_by_key(|e| e.input);
        v
    }

    /// Edges out of `node` (any output).
    pub fn outputs_of(&self, node: NodeId) -> Vec<&Edge> {
        self.edges.iter().filter(|e| e.from.node == node).collect()
    }

    /// A node by name.
    pub fn node_by_name(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// A source as declared in a job: its registry type, connector options, optional
/// format (a name or an object with `type`), declared schema, event-time strategy and
/// parallelism.
#[derive(Debug, Clone)]
pub struct SourceDecl<'a> {
    /// Registry type name (`file`, `datagen`, …).
    pub type_name: &'a str,
    /// The connector's own keys.
    pub options: &'a serde_json::Value,
    /// `format:` for byte sources.
    pub format: Option<&'a serde_json::Value>,
    /// `schema:`, parsed.
    pub schema: Option<SchemaRef>,
    /// `event_time:`, parsed.
    pub event_time: Option<EventTimeConfig>,
    /// `parallelism:`.
    pub parallelism: Option<usize>,
}

/// Builds a [`LogicalGraph`] through the registry's factories. Errors are
/// [`FieldError`]s relative to the object given, so the YAML compiler can place them.
#[derive(Clone)]
pub struct GraphBuilder {
    registry: Arc<Registry>,
    ctx: BuildContext,
    nodes: Vec<Node>,
    edges: Vec<Edge>,
    names: BTreeMap<String, NodeId>,
    /// Settings, changeable before [`GraphBuilder::build`].
    pub settings: JobSettings,
    dead_letter: Option<(String, serde_json::Value)>,
}

/// Name of the side output that carries dead letters of a source.
pub const DEAD_LETTER_OUTPUT: &str = "dead_letter";
/// Name of the job-wide dead-letter sink node.
pub const DEAD_LETTER_SINK: &str = "dead_letter";

/// Checks that a job name can name files and directories: the job's checkpoints, state
/// and default dead-letter file live under it. A safe path segment: 1 to 128
/// characters, no `/` or `\`, no control characters, not starting with `.` (so `..`
/// and hidden names are out).
pub fn check_job_name(name: &str) -> Result<(), String> {
    let bad = if name.is_empty() {
        Some("is empty")
    } else if name.chars().count() > 128 {
        Some("is longer than 128 characters")
    } else if name.starts_with('.') {
        Some("starts with `.`")
    } else if name.contains(['/', '\\']) {
        Some("contains a path separator")
    } else if name.chars().any(char::is_control) {
        Some("contains a control character")
    } else {
        None
    };
    match bad {
        Some(why) => Err(format!(
            "the job name `{}` {why}: it names the job's directories (checkpoints, state, \
             dead letters), so it must be a plain name such as `error-spike-alert`",
            name.escape_debug()
        )),
        None => Ok(()),
    }
}

impl GraphBuilder {
    /// Says whether the job checkpoints (a YAML job knows before its nodes are built),
    /// so that factories can check delivery guarantees at their fields.
    pub fn set_checkpoints(&mut self, interval: Option<std::time::Duration>) {
        self.ctx.checkpoints = match interval {
            Some(d) => crate::registry::Checkpointing::Every(d),
            None => crate::registry::Checkpointing::Off,
        };
    }

    /// A builder for job `job`; relative paths resolve against `base_dir`.
    pub fn new(job: &str, registry: Arc<Registry>, base_dir: std::path::PathBuf) -> Self {
        let aggregates = Arc::new(registry.aggregates().clone());
        GraphBuilder {
            registry,
            ctx: BuildContext {
                checkpoints: Default::default(),
                job: job.to_string(),
                base_dir,
                aggregates,
            },
            nodes: Vec::new(),
            edges: Vec::new(),
            names: BTreeMap::new(),
            settings: JobSettings::default(),
            dead_letter: None,
        }
    }

    /// The registry in use.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// A node's id by name.
    pub fn node(&self, name: &str) -> Option<NodeId> {
        self.names.get(name).copied()
    }

    /// The schema of a stream.
    pub fn schema_of(&self, s: &StreamRef) -> Option<SchemaRef> {
        let n = self.nodes.get(s.node)?;
        match &s.side {
            None => Some(n.schema.clone()),
            Some(side) => n
                .side_outputs
                .iter()
                .find(|(name, _)| name == side)
                .map(|(_, s)| s.clone()),
        }
    }

    /// Resolves `name` or `name.side_output` to a stream.
    pub fn stream(&self, reference: &str) -> Result<StreamRef, FieldError> {
        if let Some(id) = self.node(reference) {
            return Ok(StreamRef::main(id));
        }
        if let Some((node, side)) = reference.rsplit_once('.') {
            if let Some(id) = self.node(node) {
                let s = StreamRef {
                    node: id,
                    side: Some(side.to_string()),
                };
                if self.schema_of(&s).is_some() {
                    return Ok(s);
                }
                let known: Vec<&str> = self.nodes[id]
                    .side_outputs
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect();
                return Err(FieldError::here(format!(
                    "`{node}` has no side output `{side}` (it has: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                )));
            }
        }
        let mut known: Vec<&str> = self.names.keys().map(String::as_str).collect();
        known.retain(|n| *n != DEAD_LETTER_SINK);
        Err(FieldError::here(format!(
            "unknown source or step `{reference}` (known: {})",
            known.join(", ")
        )))
    }

    fn claim_name(&self, name: &str) -> Result<(), FieldError> {
        if self.names.contains_key(name) {
            return Err(FieldError::here(format!(
                "the name `{name}` is used twice: sources, steps and sinks share one namespace"
            )));
        }
        Ok(())
    }

    fn push(&mut self, mut node: Node) -> NodeId {
        let id = self.nodes.len();
        node.id = id;
        self.names.insert(node.name.clone(), id);
        self.nodes.push(node);
        id
    }

    /// Adds a source of registry type `type_name` with its connector options, an
    /// optional format (a name or an object with `type`), a declared schema and an
    /// event-time strategy.
    pub fn add_source(&mut self, name: &str, decl: SourceDecl<'_>) -> Result<NodeId, FieldError> {
        let SourceDecl {
            type_name,
            options,
            format,
            schema,
            event_time,
            parallelism,
        } = decl;
        self.claim_name(name)?;
        let factory = self.registry.source(type_name).cloned().ok_or_else(|| {
            FieldError::at(
                "/type",
                format!(
                    "unknown source type `{type_name}` (known: {})",
                    self.registry
                        .sources()
                        .map(|f| f.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?;
        let source = factory.build(&self.ctx, name, options, schema.clone())?;
        let decoder = if source.needs_format {
            let (fname, fopts) = match format {
                None => ("raw", serde_json::Value::Null),
                Some(serde_json::Value::String(s)) => (s.as_str(), serde_json::Value::Null),
                Some(v @ serde_json::Value::Object(m)) => (
                    m.get("type").and_then(|t| t.as_str()).unwrap_or(""),
                    v.clone(),
                ),
                Some(_) => {
                    return Err(FieldError::at(
                        "/format",
                        "expected a format name or an object with `type`",
                    ))
                }
            };
            let ff = self.registry.format(fname).cloned().ok_or_else(|| {
                FieldError::at(
                    "/format",
                    format!(
                        "unknown format `{fname}` (known: {})",
                        self.registry
                            .formats()
                            .map(|f| f.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })?;
            Some(ff.build(&fopts, schema).map_err(|e| e.under("/format"))?)
        } else {
            if format.is_some() {
                return Err(FieldError::at(
                    "/format",
                    format!("source type `{type_name}` produces typed rows and takes no format"),
                ));
            }
            None
        };
        let mut out_schema = match &decoder {
            // A byte source's columns beyond `payload` and `offset` (record metadata)
            // follow the decoded fields.
            Some(d) if source.schema.fields().len() > 2 => {
                let mut fields: Vec<arrow::datatypes::Field> = d
                    .schema
                    .fields()
                    .iter()
                    .map(|f| f.as_ref().clone())
                    .collect();
                for extra in source.schema.fields().iter().skip(2) {
                    if d.schema.field_with_name(extra.name()).is_ok() {
                        return Err(FieldError::at(
                            "/schema",
                            format!(
                                "the field `{}` is also a column the source adds (its metadata); \
                                 rename one of them",
                                extra.name()
                            ),
                        ));
                    }
                    fields.push(extra.as_ref().clone());
                }
                std::sync::Arc::new(arrow::datatypes::Schema::new(fields))
            }
            Some(d) => d.schema.clone(),
            None => source.schema.clone(),
        };
        let mut event_time = event_time;
        if let Some(et) = event_time.as_mut() {
            et.check(&out_schema)
                .map_err(|m| FieldError::at("/event_time/field", m))?;
            out_schema = mark_event_time(&out_schema, &et.field);
            if et.max_future == FutureBound::SourceDefault {
                et.max_future = match factory.default_max_future() {
                    Some(d) => FutureBound::At(d),
                    None => FutureBound::Off,
                };
            }
        }
        let mut p = parallelism.unwrap_or(self.settings.parallelism).max(1);
        if let Some(maxp) = source.max_parallelism {
            p = p.min(maxp.max(1));
        }
        let bounded_future = event_time
            .as_ref()
            .is_some_and(|et| et.max_future_ms().is_some());
        let side_outputs = if decoder.is_some() || bounded_future {
            vec![(DEAD_LETTER_OUTPUT.to_string(), dead_letter_schema())]
        } else {
            Vec::new()
        };
        Ok(self.push(Node {
            id: 0,
            name: name.to_string(),
            kind: NodeKind::Source {
                source,
                decoder,
                event_time,
            },
            parallelism: p,
            schema: out_schema,
            side_outputs,
        }))
    }

    /// Adds a step of kind `kind` (a registry step factory) with the kind's value.
    pub fn add_step(
        &mut self,
        name: &str,
        inputs: &[StreamRef],
        kind: &str,
        value: &serde_json::Value,
        parallelism: Option<usize>,
    ) -> Result<NodeId, FieldError> {
        self.claim_name(name)?;
        let factory = self.registry.step(kind).cloned().ok_or_else(|| {
            FieldError::here(format!(
                "unknown step kind `{kind}` (known: {})",
                self.registry
                    .steps()
                    .map(|f| f.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        let (min, max) = factory.inputs();
        if inputs.len() < min || inputs.len() > max {
            return Err(FieldError::at(
                "/from",
                format!(
                    "`{kind}` takes {} input(s), got {}",
                    if min == max {
                        min.to_string()
                    } else if max == usize::MAX {
                        format!("at least {min}")
                    } else {
                        format!("{min} to {max}")
                    },
                    inputs.len()
                ),
            ));
        }
        let schemas = inputs
            .iter()
            .map(|s| {
                self.schema_of(s)
                    .ok_or_else(|| FieldError::at("/from", "unknown input stream"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let build = factory
            .build(&self.ctx, name, value, &schemas)
            .map_err(|e| e.under(&format!("/{kind}")))?;
        Ok(self.add_built_step(name, inputs, build, parallelism))
    }

    /// Adds an operator built outside the registry (a custom Rust operator).
    pub fn add_operator(
        &mut self,
        name: &str,
        inputs: &[StreamRef],
        schema: SchemaRef,
        input_partitioning: Option<Partitioning>,
        create: OperatorCreate,
        parallelism: Option<usize>,
    ) -> Result<NodeId, FieldError> {
        self.claim_name(name)?;
        let build = StepBuild {
            schema,
            side_outputs: Vec::new(),
            input_partitioning,
            partitioning_per_input: Vec::new(),
            keyed_by: None,
            describe: format!("custom operator {name}"),
            create,
        };
        Ok(self.add_built_step(name, inputs, build, parallelism))
    }

    fn add_built_step(
        &mut self,
        name: &str,
        inputs: &[StreamRef],
        build: StepBuild,
        parallelism: Option<usize>,
    ) -> NodeId {
        let p = parallelism.unwrap_or(self.settings.parallelism).max(1);
        let part = build.input_partitioning.clone();
        let per_input = build.partitioning_per_input.clone();
        let node = Node {
            id: 0,
            name: name.to_string(),
            schema: build.schema.clone(),
            side_outputs: build.side_outputs.clone(),
            kind: NodeKind::Step(build),
            parallelism: p,
        };
        let id = self.push(node);
        for (i, s) in inputs.iter().enumerate() {
            let part = per_input.get(i).cloned().or_else(|| part.clone());
            let partitioning = match part {
                // Already partitioned by these keys (a `key_by` right before): no shuffle.
                Some(Partitioning::Hash(keys)) if self.keyed_by(s, &keys, p) => {
                    Partitioning::Forward
                }
                Some(x) => x,
                None => self.default_partitioning(s, p),
            };
            self.edges.push(Edge {
                from: s.clone(),
                to: id,
                input: i,
                partitioning,
            });
        }
        id
    }

    /// Whether `from` is the main output of a step that partitions by exactly `keys`
    /// at `parallelism` subtasks.
    fn keyed_by(&self, from: &StreamRef, keys: &[String], parallelism: usize) -> bool {
        let up = &self.nodes[from.node];
        from.side.is_none()
            && up.parallelism == parallelism
            && matches!(&up.kind, NodeKind::Step(StepBuild { keyed_by: Some(k), .. }) if k == keys)
    }

    fn default_partitioning(&self, from: &StreamRef, parallelism: usize) -> Partitioning {
        let up = &self.nodes[from.node];
        if up.parallelism == parallelism {
            // Keep an upstream key_by's partitioning: forward preserves it.
            Partitioning::Forward
        } else if let NodeKind::Step(StepBuild {
            keyed_by: Some(k), ..
        }) = &up.kind
        {
            Partitioning::Hash(k.clone())
        } else {
            Partitioning::Rebalance
        }
    }

    /// Adds a sink of registry type `type_name` reading `input`.
    pub fn add_sink(
        &mut self,
        name: &str,
        input: &StreamRef,
        type_name: &str,
        options: &serde_json::Value,
        parallelism: Option<usize>,
    ) -> Result<NodeId, FieldError> {
        self.claim_name(name)?;
        let schema = self
            .schema_of(input)
            .ok_or_else(|| FieldError::at("/from", "unknown input stream"))?;
        let build = self.build_sink(name, type_name, options, schema.clone())?;
        let mut p = parallelism
            .unwrap_or(self.nodes[input.node].parallelism)
            .max(1);
        if let Some(m) = build.max_parallelism {
            p = p.min(m.max(1));
        }
        let id = self.push(Node {
            id: 0,
            name: name.to_string(),
            kind: NodeKind::Sink(build),
            parallelism: p,
            schema,
            side_outputs: Vec::new(),
        });
        let partitioning = self.default_partitioning(input, p);
        self.edges.push(Edge {
            from: input.clone(),
            to: id,
            input: 0,
            partitioning,
        });
        Ok(id)
    }

    fn build_sink(
        &self,
        name: &str,
        type_name: &str,
        options: &serde_json::Value,
        schema: SchemaRef,
    ) -> Result<SinkBuild, FieldError> {
        let factory = self.registry.sink(type_name).cloned().ok_or_else(|| {
            FieldError::at(
                "/type",
                format!(
                    "unknown sink type `{type_name}` (known: {})",
                    self.registry
                        .sinks()
                        .map(|f| f.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?;
        factory.build(&self.ctx, name, options, schema)
    }

    /// Sets the job's dead-letter sink (`type` and options). Without one, dead letters
    /// go to a JSONL file `.weir/<job>/dead_letter.jsonl` under the job's directory.
    pub fn set_dead_letter(
        &mut self,
        type_name: &str,
        options: serde_json::Value,
    ) -> Result<(), FieldError> {
        // Check it builds now, so that errors point at the job's `dead_letter` key.
        self.build_sink(DEAD_LETTER_SINK, type_name, &options, dead_letter_schema())?;
        self.dead_letter = Some((type_name.to_string(), options));
        Ok(())
    }

    /// Finishes the graph: routes every dead-letter side output that no sink reads to
    /// the job's dead-letter sink.
    pub fn build(mut self) -> Result<LogicalGraph, FieldError> {
        check_job_name(&self.ctx.job).map_err(|m| FieldError::at("/name", m))?;
        let mut dl_streams = Vec::new();
        for n in &self.nodes {
            for (side, _) in &n.side_outputs {
                if side == DEAD_LETTER_OUTPUT {
                    let s = StreamRef {
                        node: n.id,
                        side: Some(side.clone()),
                    };
                    if !self.edges.iter().any(|e| e.from == s) {
                        dl_streams.push(s);
                    }
                }
            }
        }
        if !dl_streams.is_empty() {
            let (t, opts) = self.dead_letter.clone().unwrap_or_else(|| {
                (
                    "file".to_string(),
                    serde_json::json!({
                        "path": format!(".weir/{}/dead_letter.jsonl", self.ctx.job),
                        "format": "jsonl",
                    }),
                )
            });
            self.claim_name(DEAD_LETTER_SINK)?;
            let build = self
                .build_sink(DEAD_LETTER_SINK, &t, &opts, dead_letter_schema())
                .map_err(|e| e.under("/dead_letter"))?;
            let id = self.push(Node {
                id: 0,
                name: DEAD_LETTER_SINK.to_string(),
                kind: NodeKind::Sink(build),
                parallelism: 1,
                schema: dead_letter_schema(),
                side_outputs: Vec::new(),
            });
            for (i, s) in dl_streams.into_iter().enumerate() {
                self.edges.push(Edge {
                    from: s,
                    to: id,
                    input: i,
                    partitioning: Partitioning::Rebalance,
                });
            }
        }
        Ok(LogicalGraph {
            job: self.ctx.job,
            nodes: self.nodes,
            edges: self.edges,
            settings: self.settings,
        })
    }
}
