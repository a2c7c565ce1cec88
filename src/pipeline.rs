//! The Rust API: a typed builder over the same logical graph the YAML compiler builds.
//! Each method goes through the same registry factory as the YAML key of the same name
//! (`filter`, `select`, `key_by`, `union`, `parse`, `window`, `join`, and any other registered step via
//! [`Stream::step`]), so a pipeline written either way is the same graph.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Map, Value};
use weir_engine::graph::{GraphBuilder, LogicalGraph, SourceDecl, StreamRef};
use weir_engine::operator::Operator;
use weir_engine::registry::{FieldError, Partitioning, Registry};

use crate::typed::{typed_schema, FilterRows, FlatMapRows};
use crate::WeirError;

/// A pipeline under construction.
pub struct Pipeline {
    inner: Rc<RefCell<GraphBuilder>>,
}

/// A stream of a pipeline: the output of a source or a step.
#[derive(Clone)]
pub struct Stream {
    inner: Rc<RefCell<GraphBuilder>>,
    stream: StreamRef,
    name: String,
}

/// A source: its registry `type`, connector options, format, schema and event time,
/// with the same names as the YAML keys.
#[derive(Debug, Clone)]
pub struct SourceSpec {
    type_name: String,
    options: Map<String, Value>,
    format: Option<Value>,
    schema: Option<Vec<(String, String)>>,
    event_time: Option<Value>,
    parallelism: Option<usize>,
}

impl SourceSpec {
    /// A source of registry type `type_name` (`file`, `datagen`, …).
    pub fn new(type_name: &str) -> Self {
        SourceSpec {
            type_name: type_name.into(),
            options: Map::new(),
            format: None,
            schema: None,
            event_time: None,
            parallelism: None,
        }
    }

    /// Sets a connector option (the YAML key of the same name).
    pub fn option(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.options.insert(key.into(), value.into());
        self
    }

    /// Sets the format by name (`json`, `csv`, `raw`).
    pub fn format(mut self, name: &str) -> Self {
        self.format = Some(Value::String(name.into()));
        self
    }

    /// Sets the format with options, e.g. `json!({"type": "csv", "delimiter": ";"})`.
    pub fn format_with(mut self, format: Value) -> Self {
        self.format = Some(format);
        self
    }

    /// Declares the schema: `(field, type)` pairs as in YAML (`timestamp`, `string?`).
    pub fn schema(mut self, fields: &[(&str, &str)]) -> Self {
        self.schema = Some(
            fields
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        );
        self
    }

    /// Event time from `field` with bounded out-of-orderness (`"5s"`).
    pub fn event_time(mut self, field: &str, max_out_of_orderness: &str) -> Self {
        self.event_time =
            Some(json!({"field": field, "max_out_of_orderness": max_out_of_orderness}));
        self
    }

    /// Leaves a source split out of the watermark after this long without data.
    pub fn idle_timeout(mut self, timeout: &str) -> Self {
        if let Some(Value::Object(m)) = self.event_time.as_mut() {
            m.insert("idle_timeout".into(), Value::String(timeout.into()));
        }
        self
    }

    /// How far ahead of the wall clock event times may be (`"1d"`, or `"none"`); see
    /// `event_time.max_future` in docs/YAML.md.
    pub fn max_future(mut self, bound: &str) -> Self {
        if let Some(Value::Object(m)) = self.event_time.as_mut() {
            m.insert("max_future".into(), Value::String(bound.into()));
        }
        self
    }

    /// Sets the source's parallelism.
    pub fn parallelism(mut self, p: usize) -> Self {
        self.parallelism = Some(p);
        self
    }
}

/// A sink: its registry `type` and options, with the YAML names.
#[derive(Debug, Clone)]
pub struct SinkSpec {
    type_name: String,
    options: Map<String, Value>,
    parallelism: Option<usize>,
}

impl SinkSpec {
    /// A sink of registry type `type_name` (`file`, `stdout`, …).
    pub fn new(type_name: &str) -> Self {
        SinkSpec {
            type_name: type_name.into(),
            options: Map::new(),
            parallelism: None,
        }
    }

    /// Sets a sink option (the YAML key of the same name).
    pub fn option(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.options.insert(key.into(), value.into());
        self
    }

    /// Sets the sink's parallelism.
    pub fn parallelism(mut self, p: usize) -> Self {
        self.parallelism = Some(p);
        self
    }
}

/// A window step, with the YAML names: `WindowSpec::tumbling("1m").key(&["service"])
/// .aggregate("errors", "count(*)")` is `window: { tumbling: 1m, key: [service],
/// aggregate: { errors: "count(*)" } }`. See docs/WINDOWS.md for the semantics.
#[derive(Debug, Clone)]
pub struct WindowSpec {
    value: Map<String, Value>,
    aggregate: Map<String, Value>,
}

impl WindowSpec {
    fn with(kind: &str, v: Value) -> Self {
        let mut value = Map::new();
        value.insert(kind.into(), v);
        WindowSpec {
            value,
            aggregate: Map::new(),
        }
    }

    /// Tumbling windows of `size` (`"1m"`).
    pub fn tumbling(size: &str) -> Self {
        Self::with("tumbling", Value::String(size.into()))
    }

    /// Sliding (hopping) windows of `size` every `slide`.
    pub fn sliding(size: &str, slide: &str) -> Self {
        Self::with("sliding", json!({"size": size, "slide": slide}))
    }

    /// Session windows closed after `gap` without a record.
    pub fn session(gap: &str) -> Self {
        Self::with("session", json!({ "gap": gap }))
    }

    /// Groups by these columns.
    pub fn key(mut self, columns: &[&str]) -> Self {
        self.value.insert("key".into(), json!(columns));
        self
    }

    /// Adds an output column `name` computed by `call`, e.g. `"sum(amount)"`.
    pub fn aggregate(mut self, name: &str, call: &str) -> Self {
        self.aggregate
            .insert(name.into(), Value::String(call.into()));
        self
    }

    /// Accepts records this long after their window closed (and re-fires).
    pub fn allowed_lateness(mut self, lateness: &str) -> Self {
        self.value
            .insert("allowed_lateness".into(), Value::String(lateness.into()));
        self
    }

    /// Uses this column as event time instead of the input's event-time column.
    pub fn event_time(mut self, column: &str) -> Self {
        self.value
            .insert("event_time".into(), Value::String(column.into()));
        self
    }

    /// Windows on processing time (wall clock) instead of event time.
    pub fn processing_time(mut self) -> Self {
        self.value
            .insert("time".into(), Value::String("processing".into()));
        self
    }

    /// The YAML value of the step.
    pub fn to_value(&self) -> Value {
        let mut v = self.value.clone();
        v.insert("aggregate".into(), Value::Object(self.aggregate.clone()));
        Value::Object(v)
    }
}

/// Which unmatched rows a join emits, padded with nulls (YAML `type:` of `join:`).
pub use weir_operators::join::JoinType;

/// A join step, with the YAML names: `JoinSpec::interval("-10s", "0s").on(&["ad_id"])
/// .join_type(JoinType::Left)` is `join: { interval: {lower: -10s, upper: 0s}, on:
/// [ad_id], type: left }`. See docs/JOINS.md for the semantics.
#[derive(Debug, Clone)]
pub struct JoinSpec {
    value: Map<String, Value>,
}

impl JoinSpec {
    fn with(key: &str, v: Value) -> Self {
        let mut value = Map::new();
        value.insert(key.into(), v);
        JoinSpec { value }
    }

    /// An interval join: `left.ts BETWEEN right.ts + lower AND right.ts + upper`
    /// (`"-10s"`, `"0s"`).
    pub fn interval(lower: &str, upper: &str) -> Self {
        Self::with("interval", json!({"lower": lower, "upper": upper}))
    }

    /// A window join over tumbling windows of `size`.
    pub fn tumbling(size: &str) -> Self {
        Self::with("window", json!({ "tumbling": size }))
    }

    /// A window join over sliding windows of `size` every `slide`.
    pub fn sliding(size: &str, slide: &str) -> Self {
        Self::with("window", json!({"sliding": {"size": size, "slide": slide}}))
    }

    /// A window join over session windows (per key, over both sides) with `gap`.
    pub fn session(gap: &str) -> Self {
        Self::with("window", json!({"session": {"gap": gap}}))
    }

    /// Key columns with the same names on both sides (YAML `on: [a, b]`).
    pub fn on(mut self, columns: &[&str]) -> Self {
        self.value.insert("on".into(), json!(columns));
        self
    }

    /// Key columns of different names, paired in order (YAML `on: {left: [...],
    /// right: [...]}`).
    pub fn on_columns(mut self, left: &[&str], right: &[&str]) -> Self {
        self.value
            .insert("on".into(), json!({"left": left, "right": right}));
        self
    }

    /// Inner (default), left, right or full outer (YAML `type:`).
    pub fn join_type(mut self, join_type: JoinType) -> Self {
        self.value
            .insert("type".into(), Value::String(join_type.name().into()));
        self
    }

    /// The left event-time column (YAML `left_time:`).
    pub fn left_time(mut self, column: &str) -> Self {
        self.value
            .insert("left_time".into(), Value::String(column.into()));
        self
    }

    /// The right event-time column (YAML `right_time:`).
    pub fn right_time(mut self, column: &str) -> Self {
        self.value
            .insert("right_time".into(), Value::String(column.into()));
        self
    }

    /// The YAML value of the step.
    pub fn to_value(&self) -> Value {
        Value::Object(self.value.clone())
    }
}

fn placed(what: &str, name: &str, e: FieldError) -> WeirError {
    WeirError::Pipeline(format!("{what} `{name}`: {e}"))
}

impl Pipeline {
    /// A new pipeline named `job`, with the built-in registry. Relative paths resolve
    /// against the current directory.
    pub fn new(job: &str) -> Self {
        Self::with_registry(job, Arc::new(crate::default_registry()))
    }

    /// A new pipeline with a custom registry (your own connectors and steps).
    pub fn with_registry(job: &str, registry: Arc<Registry>) -> Self {
        let base = std::env::current_dir().unwrap_or_else(|_| ".".into());
        Pipeline {
            inner: Rc::new(RefCell::new(GraphBuilder::new(job, registry, base))),
        }
    }

    /// Sets the default parallelism of every node added after this call.
    pub fn parallelism(self, p: usize) -> Self {
        self.inner.borrow_mut().settings.parallelism = p.max(1);
        self
    }

    /// Changes runtime settings (batch size, linger, channel capacity…).
    pub fn settings(self, f: impl FnOnce(&mut weir_engine::graph::JobSettings)) -> Self {
        f(&mut self.inner.borrow_mut().settings);
        self
    }

    /// Adds a source.
    pub fn source(&self, name: &str, spec: SourceSpec) -> Result<Stream, WeirError> {
        let schema = match &spec.schema {
            Some(fields) => {
                let mut m = Map::new();
                for (k, v) in fields {
                    m.insert(k.clone(), Value::String(v.clone()));
                }
                Some(
                    weir_engine::spec::parse_schema(&Value::Object(m))
                        .map_err(|e| placed("source", name, e.under("/schema")))?,
                )
            }
            None => None,
        };
        let event_time = match &spec.event_time {
            Some(v) => Some(
                weir_engine::spec::parse_event_time(v)
                    .map_err(|e| placed("source", name, e.under("/event_time")))?,
            ),
            None => None,
        };
        let id = self
            .inner
            .borrow_mut()
            .add_source(
                name,
                SourceDecl {
                    type_name: &spec.type_name,
                    options: &Value::Object(spec.options.clone()),
                    format: spec.format.as_ref(),
                    schema,
                    event_time,
                    parallelism: spec.parallelism,
                },
            )
            .map_err(|e| placed("source", name, e))?;
        Ok(Stream {
            inner: self.inner.clone(),
            stream: StreamRef::main(id),
            name: name.into(),
        })
    }

    /// Sets the job's dead-letter sink (default: `.weir/<job>/dead_letter.jsonl`).
    pub fn dead_letter(&self, spec: SinkSpec) -> Result<(), WeirError> {
        self.inner
            .borrow_mut()
            .set_dead_letter(&spec.type_name, Value::Object(spec.options))
            .map_err(|e| placed("dead_letter", "dead_letter", e))
    }

    /// Finishes the graph. Stream handles may still be alive.
    pub fn build(self) -> Result<LogicalGraph, WeirError> {
        let builder = self.inner.borrow().clone();
        builder
            .build()
            .map_err(|e| WeirError::Pipeline(format!("pipeline: {e}")))
    }
}

impl Stream {
    /// The name of the node this stream comes from.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The stream's schema.
    pub fn schema(&self) -> Option<SchemaRef> {
        self.inner.borrow().schema_of(&self.stream)
    }

    /// A side output of this node, e.g. `late` or `dead_letter`.
    pub fn side_output(&self, side: &str) -> Result<Stream, WeirError> {
        let s = StreamRef {
            node: self.stream.node,
            side: Some(side.into()),
        };
        if self.inner.borrow().schema_of(&s).is_none() {
            return Err(WeirError::Pipeline(format!(
                "`{}` has no side output `{side}`",
                self.name
            )));
        }
        Ok(Stream {
            inner: self.inner.clone(),
            stream: s,
            name: format!("{}.{side}", self.name),
        })
    }

    /// Adds a registered step of kind `kind` (the YAML key) with its value.
    pub fn step(&self, name: &str, kind: &str, value: Value) -> Result<Stream, WeirError> {
        self.step_from(name, kind, value, &[])
    }

    /// A step with more inputs: this stream first, then `others` (YAML `from: [this,
    /// others…]`), e.g. `enrich` with a changelog.
    pub fn step_with_inputs(
        &self,
        name: &str,
        kind: &str,
        value: Value,
        others: &[&Stream],
    ) -> Result<Stream, WeirError> {
        self.step_from(name, kind, value, others)
    }

    fn step_from(
        &self,
        name: &str,
        kind: &str,
        value: Value,
        others: &[&Stream],
    ) -> Result<Stream, WeirError> {
        let mut inputs = vec![self.stream.clone()];
        inputs.extend(others.iter().map(|s| s.stream.clone()));
        let id = self
            .inner
            .borrow_mut()
            .add_step(name, &inputs, kind, &value, None)
            .map_err(|e| placed("step", name, e))?;
        Ok(Stream {
            inner: self.inner.clone(),
            stream: StreamRef::main(id),
            name: name.into(),
        })
    }

    /// Keeps rows where the SQL predicate holds (YAML `filter:`).
    pub fn filter(&self, name: &str, predicate: &str) -> Result<Stream, WeirError> {
        self.step(name, "filter", Value::String(predicate.into()))
    }

    /// Projects and computes columns: `(output name, SQL expression)` (YAML `select:`).
    pub fn select(&self, name: &str, columns: &[(&str, &str)]) -> Result<Stream, WeirError> {
        let mut m = Map::new();
        for (k, v) in columns {
            m.insert(k.to_string(), Value::String(v.to_string()));
        }
        self.step(name, "select", Value::Object(m))
    }

    /// Partitions by the hash of these columns (YAML `key_by:`).
    pub fn key_by(&self, name: &str, keys: &[&str]) -> Result<Stream, WeirError> {
        self.step(name, "key_by", json!(keys))
    }

    /// Aggregates per key and window (YAML `window:`); see [`WindowSpec`].
    pub fn window(&self, name: &str, spec: WindowSpec) -> Result<Stream, WeirError> {
        self.step(name, "window", spec.to_value())
    }

    /// Joins this stream (the left input) with `right` (YAML `join:` with `from:
    /// [this, right]`); see [`JoinSpec`].
    pub fn join(&self, name: &str, right: &Stream, spec: JoinSpec) -> Result<Stream, WeirError> {
        self.step_from(name, "join", spec.to_value(), &[right])
    }

    /// Merges this stream with others of the same schema (YAML `union:`).
    pub fn union(&self, name: &str, others: &[&Stream]) -> Result<Stream, WeirError> {
        self.step_from(name, "union", json!({}), others)
    }

    /// Adds a custom operator; `create(subtask, parallelism)` makes one per subtask.
    pub fn process<F>(
        &self,
        name: &str,
        output_schema: SchemaRef,
        partitioning: Option<Partitioning>,
        create: F,
    ) -> Result<Stream, WeirError>
    where
        F: Fn(usize, usize) -> Box<dyn Operator> + Send + Sync + 'static,
    {
        let id = self
            .inner
            .borrow_mut()
            .add_operator(
                name,
                std::slice::from_ref(&self.stream),
                output_schema,
                partitioning,
                Arc::new(move |s, p| Ok(create(s, p))),
                None,
            )
            .map_err(|e| placed("step", name, e))?;
        Ok(Stream {
            inner: self.inner.clone(),
            stream: StreamRef::main(id),
            name: name.into(),
        })
    }

    /// A typed row-level map over the user's serde types.
    pub fn map<I, O, F>(&self, name: &str, f: F) -> Result<Stream, WeirError>
    where
        I: DeserializeOwned + 'static,
        O: Serialize + DeserializeOwned + 'static,
        F: Fn(I) -> O + Clone + Send + Sync + 'static,
    {
        self.flat_map::<I, O, _>(name, move |i| {
            Box::new(std::iter::once(f(i))) as Box<dyn Iterator<Item = O>>
        })
    }

    /// A typed row-level flat map: each input row gives zero or more output rows.
    pub fn flat_map<I, O, F>(&self, name: &str, f: F) -> Result<Stream, WeirError>
    where
        I: DeserializeOwned + 'static,
        O: Serialize + DeserializeOwned + 'static,
        F: Fn(I) -> Box<dyn Iterator<Item = O>> + Clone + Send + Sync + 'static,
    {
        let out = typed_schema::<O>().map_err(|e| placed("step", name, FieldError::here(e)))?;
        let op_name = name.to_string();
        let schema = out.clone();
        self.process(name, out, None, move |_, _| {
            Box::new(FlatMapRows::<I, O, F>::new(
                &op_name,
                schema.clone(),
                f.clone(),
            ))
        })
    }

    /// A typed row-level filter: keeps rows for which `f` returns true.
    pub fn filter_rows<I, F>(&self, name: &str, f: F) -> Result<Stream, WeirError>
    where
        I: DeserializeOwned + 'static,
        F: Fn(&I) -> bool + Clone + Send + Sync + 'static,
    {
        let schema = self
            .schema()
            .ok_or_else(|| WeirError::Pipeline(format!("step `{name}`: unknown input")))?;
        let op_name = name.to_string();
        self.process(name, schema, None, move |_, _| {
            Box::new(FilterRows::<I, F>::new(&op_name, f.clone()))
        })
    }

    /// Writes the stream to a sink.
    pub fn sink(&self, name: &str, spec: SinkSpec) -> Result<(), WeirError> {
        self.inner
            .borrow_mut()
            .add_sink(
                name,
                &self.stream,
                &spec.type_name,
                &Value::Object(spec.options),
                spec.parallelism,
            )
            .map_err(|e| placed("sink", name, e))?;
        Ok(())
    }
}
