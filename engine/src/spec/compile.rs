//! Turns a job's JSON value (already checked against the job schema) into a
//! [`LogicalGraph`]: semantic checks the schema cannot express (names unique across
//! sources, steps and sinks; every `from` names a source or step; no cycles), then the
//! job settings and, through [`GraphBuilder`], the sources, the steps in topological
//! order, the sinks and the dead-letter sink. Factory errors come back as
//! [`FieldError`]s relative to the object they were given and are placed under that
//! object's pointer. Nodes whose part of the file already has errors are skipped, and
//! so are nodes that depend on them, so that one mistake is reported once.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::fields::{duration_key, parse_event_time, parse_schema};
use super::schema::{SINK_COMMON_KEYS, SOURCE_COMMON_KEYS};
use super::yaml::escape;
use super::{did_you_mean, At, JobOverrides, Problem};
use crate::checkpoint::{
    CheckpointConfig, S3Options, StateBackendConfig, DEFAULT_ROCKSDB_MEMORY_BUDGET,
};
use crate::graph::{
    GraphBuilder, JobSettings, LogicalGraph, SourceDecl, StreamRef, DEAD_LETTER_SINK,
};
use crate::registry::{FieldError, Registry};
use crate::time::parse_duration;

/// Parses a size like `64MB`, `1 GiB`, `512kb` or a plain number of bytes.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let parsed: Result<bytesize::ByteSize, String> = t.parse();
    match parsed {
        Ok(b) if b.as_u64() > 0 => {
            usize::try_from(b.as_u64()).map_err(|_| format!("`{text}` is too large"))
        }
        Ok(_) => Err(format!("`{text}`: the size must be larger than 0")),
        Err(_) => Err(format!(
            "`{text}` is not a size: expected e.g. 64MB, 512KiB, 1GB or a number of bytes"
        )),
    }
}

/// A storage URL from the job file: relative local paths resolve against the job
/// file's directory, like every other path in the job.
/// Where a YAML job's checkpoints go without `checkpoint.storage`: relative to the job
/// file's directory, like its outputs.
pub const LOCAL_CHECKPOINT_DIR: &str = ".weir/checkpoints";

/// Where a YAML job's RocksDB working files go without `state.dir`: relative to the job
/// file's directory.
pub const LOCAL_STATE_DIR: &str = ".weir/state";

fn resolve_storage_url(url: &str, base_dir: &Path) -> String {
    let local = match url.strip_prefix("file://") {
        Some(rest) => rest,
        None if url.contains("://") => return url.to_string(),
        None => url,
    };
    let p = Path::new(local);
    if p.is_absolute() {
        format!("file://{}", p.display())
    } else {
        let joined = base_dir.join(p);
        let abs = if joined.is_absolute() {
            joined
        } else {
            std::env::current_dir()
                .map(|d| d.join(&joined))
                .unwrap_or(joined)
        };
        format!("file://{}", abs.display())
    }
}

/// Everything a job file yields: the graph and the job-level settings that are not
/// part of it.
#[derive(Clone)]
pub struct CompiledJob {
    /// The logical graph.
    pub graph: LogicalGraph,
    /// Checkpoint settings, when the job enables checkpoints.
    pub checkpoint: Option<CheckpointConfig>,
    /// The keyed state backend (`state:`).
    pub state: StateBackendConfig,
    /// The job's `description`.
    pub description: Option<String>,
    /// `http:`: the address of the job's HTTP endpoint (metrics, REST, dashboard).
    pub http: Option<String>,
}

/// Which section a node comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Source,
    Step,
    Sink,
}

impl Section {
    fn word(self) -> &'static str {
        match self {
            Section::Source => "source",
            Section::Step => "step",
            Section::Sink => "sink",
        }
    }
}

/// A source, step or sink as written in the file.
struct NodeSpec<'a> {
    name: &'a str,
    pointer: String,
    obj: Option<&'a Map<String, Value>>,
}

/// One entry of a `from`.
struct Input {
    /// Pointer of the entry in the file.
    pointer: String,
    /// `name` or `name.side_output`.
    reference: String,
}

impl Input {
    fn node(&self) -> &str {
        self.reference
            .split_once('.')
            .map_or(self.reference.as_str(), |(n, _)| n)
    }
}

struct Compiler<'a> {
    root: &'a Value,
    registry: Arc<Registry>,
    /// Pointers of the problems found so far (before and while compiling).
    broken: Vec<String>,
    problems: Vec<Problem>,
}

/// Compiles `root` into a job. `prior` are the problems already found (YAML, schema);
/// parts of the file they touch are not compiled. Returns the job only when there are
/// no problems at all, and the new problems.
pub(crate) fn compile(
    root: &Value,
    prior: &[Problem],
    registry: Arc<Registry>,
    base_dir: &Path,
    overrides: &JobOverrides,
) -> (Option<CompiledJob>, Vec<Problem>) {
    let mut c = Compiler {
        root,
        registry,
        broken: prior.iter().map(|p| p.pointer.clone()).collect(),
        problems: Vec::new(),
    };
    let job = c.run(base_dir, overrides, prior.is_empty());
    (job, c.problems)
}

impl<'a> Compiler<'a> {
    fn run(
        &mut self,
        base_dir: &Path,
        overrides: &JobOverrides,
        clean: bool,
    ) -> Option<CompiledJob> {
        let settings = self.settings(overrides);
        let checkpoint = self.checkpoint(base_dir);
        let state = self.state(base_dir);
        let sources = self.section("sources");
        let steps = self.section("steps");
        let sinks = self.section("sinks");
        let names = self.check_names(&sources, &steps, &sinks);
        let mut unresolved = HashSet::new();
        for spec in steps.iter().chain(&sinks) {
            if !self.check_inputs(spec, &names) {
                unresolved.insert(spec.name);
            }
        }
        let order = self.step_order(&steps, &unresolved);

        let name = self
            .root
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("job");
        if !self.is_broken("/name") {
            if let Err(m) = crate::graph::check_job_name(name) {
                self.problem("/name", At::Value, m);
            }
        }
        let mut builder = GraphBuilder::new(name, self.registry.clone(), base_dir.to_path_buf());
        builder.settings = settings;
        builder.set_checkpoints(checkpoint.as_ref().map(|c| c.interval));
        let mut built: HashSet<&str> = HashSet::new();
        for spec in &sources {
            if self.add_source(&mut builder, spec) {
                built.insert(spec.name);
            }
        }
        for &i in &order {
            let spec = &steps[i];
            if !unresolved.contains(spec.name) && self.add_step(&mut builder, spec, &built) {
                built.insert(spec.name);
            }
        }
        for spec in &sinks {
            if !unresolved.contains(spec.name) {
                self.add_sink(&mut builder, spec, &built);
            }
        }
        self.set_dead_letter(&mut builder);

        if !clean || !self.problems.is_empty() {
            return None;
        }
        match builder.build() {
            Ok(graph) => Some(CompiledJob {
                graph,
                checkpoint,
                state,
                description: self
                    .root
                    .get("description")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                http: self
                    .root
                    .get("http")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            }),
            Err(e) => {
                self.field_error("", e);
                None
            }
        }
    }

    /// Records a problem; the part of the file it is about is not compiled further.
    fn problem(&mut self, pointer: &str, at: At, message: impl Into<String>) {
        self.broken.push(pointer.to_string());
        self.problems.push(Problem::new(pointer, at, message));
    }

    /// Places a factory's error, relative to the object at `base`.
    fn field_error(&mut self, base: &str, e: FieldError) {
        let path = if e.path.is_empty() || e.path.starts_with('/') {
            e.path
        } else {
            format!("/{}", e.path)
        };
        self.problem(&format!("{base}{path}"), At::Auto, e.message);
    }

    /// Whether an earlier problem lies at or under `pointer`.
    fn is_broken(&self, pointer: &str) -> bool {
        self.broken.iter().any(|b| {
            b.strip_prefix(pointer)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    }

    fn section(&self, key: &str) -> Vec<NodeSpec<'a>> {
        let Some(map) = self.root.get(key).and_then(Value::as_object) else {
            return Vec::new();
        };
        map.iter()
            .map(|(name, v)| NodeSpec {
                name: name.as_str(),
                pointer: format!("/{key}/{}", escape(name)),
                obj: v.as_object(),
            })
            .collect()
    }

    /// A usize at `pointer` unless that part of the file is broken.
    /// A whole number at `pointer`; a number that is not one this machine can use is a
    /// located error, never a silent default.
    fn uint(&mut self, pointer: &str) -> Option<usize> {
        if self.is_broken(pointer) {
            return None;
        }
        let v = self.root.pointer(pointer)?;
        match v.as_u64().and_then(|v| usize::try_from(v).ok()) {
            Some(n) => Some(n),
            None => {
                if v.is_number() {
                    self.problem(
                        pointer,
                        At::Value,
                        format!(
                            "expected a whole number from 0 to {}, found {v}",
                            usize::MAX
                        ),
                    );
                }
                None
            }
        }
    }

    fn settings(&mut self, overrides: &JobOverrides) -> JobSettings {
        let mut s = JobSettings::default();
        if let Some(p) = self.uint("/parallelism") {
            s.parallelism = p;
        }
        match overrides.parallelism {
            Some(0) => self.problem(
                "/parallelism",
                At::Value,
                "the parallelism override must be at least 1",
            ),
            Some(p) => s.parallelism = p,
            None => {}
        }
        if let Some(m) = self.uint("/max_parallelism") {
            match u16::try_from(m) {
                Ok(m) => s.max_parallelism = m,
                Err(_) => self.problem("/max_parallelism", At::Value, "must be at most 32768"),
            }
        }
        if let Some(b) = self.uint("/batch_size") {
            s.batch_size = b;
        }
        if let Some(c) = self.uint("/channel_capacity") {
            s.channel_capacity_rows = c;
        }
        match self.root.get("buffer_debloat") {
            Some(Value::Bool(false)) => s.debloat = None,
            Some(Value::String(text)) if !self.is_broken("/buffer_debloat") => {
                match parse_duration(text) {
                    Ok(d) if !d.is_zero() => {
                        s.debloat = Some(crate::channel::Debloat {
                            target: d,
                            ..Default::default()
                        })
                    }
                    Ok(_) => self.problem(
                        "/buffer_debloat",
                        At::Value,
                        "the debloat target must be above zero (`false` turns debloating off)",
                    ),
                    Err(m) => self.problem("/buffer_debloat", At::Value, m),
                }
            }
            _ => {}
        }
        if let Some(Value::String(text)) = self.root.get("linger") {
            if !self.is_broken("/linger") {
                match parse_duration(text) {
                    Ok(d) => s.linger = d,
                    Err(m) => self.problem("/linger", At::Value, m),
                }
            }
        }
        if s.parallelism > usize::from(s.max_parallelism) {
            let source = if overrides.parallelism.is_some() {
                " (set on the command line)"
            } else {
                ""
            };
            self.problem(
                "/parallelism",
                At::Value,
                format!(
                    "parallelism {}{source} exceeds max_parallelism {} (the number of key groups)",
                    s.parallelism, s.max_parallelism
                ),
            );
        }
        s
    }

    fn checkpoint(&mut self, base_dir: &Path) -> Option<CheckpointConfig> {
        let obj = self.root.get("checkpoint")?.as_object()?;
        if self.is_broken("/checkpoint") {
            return None;
        }
        let interval = match duration_key(obj, "interval") {
            Ok(Some(d)) => d,
            Ok(None) => return None,
            Err(e) => {
                self.field_error("/checkpoint", e);
                return None;
            }
        };
        if interval.is_zero() {
            self.problem(
                "/checkpoint/interval",
                At::Value,
                "the checkpoint interval must be longer than 0s",
            );
            return None;
        }
        // Everything a job keeps between runs sits next to its job file, as its
        // outputs do: `.weir/checkpoints` unless `storage:` says otherwise.
        let mut config = CheckpointConfig {
            interval,
            ..CheckpointConfig::default()
        };
        config.storage.url = resolve_storage_url(LOCAL_CHECKPOINT_DIR, base_dir);
        match duration_key(obj, "timeout") {
            Ok(Some(d)) if d.is_zero() => self.problem(
                "/checkpoint/timeout",
                At::Value,
                "the checkpoint timeout must be longer than 0s",
            ),
            Ok(Some(d)) => config.timeout = d,
            Ok(None) => {}
            Err(e) => self.field_error("/checkpoint", e),
        }
        if let Some(r) = self.uint("/checkpoint/retain") {
            config.retain = r.max(1);
        }
        if let Some(n) = self.uint("/checkpoint/tolerable_failures") {
            config.tolerable_failures = u32::try_from(n).unwrap_or(u32::MAX);
        }
        if let Some(url) = obj.get("storage").and_then(Value::as_str) {
            config.storage.url = resolve_storage_url(url, base_dir);
        }
        if let Some(s3) = obj.get("s3").and_then(Value::as_object) {
            let text = |k: &str| s3.get(k).and_then(Value::as_str).map(str::to_string);
            config.storage.s3 = S3Options {
                endpoint: text("endpoint"),
                region: text("region"),
                access_key_id: text("access_key_id"),
                secret_access_key: text("secret_access_key"),
                session_token: text("session_token"),
                path_style: s3
                    .get("path_style")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
                allow_http: s3
                    .get("allow_http")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
                connect_timeout: None,
                request_timeout: None,
            };
            for (key, slot) in [
                ("connect_timeout", &mut config.storage.s3.connect_timeout),
                ("request_timeout", &mut config.storage.s3.request_timeout),
            ] {
                match duration_key(s3, key) {
                    Ok(Some(d)) if d.is_zero() => self.problem(
                        &format!("/checkpoint/s3/{key}"),
                        At::Value,
                        "must be longer than 0s",
                    ),
                    Ok(d) => *slot = d,
                    Err(e) => self.field_error("/checkpoint/s3", e),
                }
            }
        }
        Some(config)
    }

    fn state(&mut self, base_dir: &Path) -> StateBackendConfig {
        let Some(obj) = self.root.get("state").and_then(Value::as_object) else {
            return StateBackendConfig::Memory;
        };
        if self.is_broken("/state") {
            return StateBackendConfig::Memory;
        }
        match obj.get("backend").and_then(Value::as_str) {
            Some("rocksdb") => {
                if !cfg!(feature = "rocksdb") {
                    self.problem("/state/backend", At::Value, crate::state::NO_ROCKSDB);
                }
                let dir = Some(
                    obj.get("dir")
                        .and_then(Value::as_str)
                        .map_or_else(|| base_dir.join(LOCAL_STATE_DIR), |d| base_dir.join(d)),
                );
                // An explicit budget bounds all of a subtask's state memory: half for
                // RocksDB, half for what the operators keep in memory. Without one,
                // RocksDB gets the default and windows stay in memory.
                let budget = match obj.get("memory_budget") {
                    None | Some(Value::Null) => None,
                    Some(Value::Number(n)) => n.as_u64().and_then(|n| usize::try_from(n).ok()),
                    Some(Value::String(t)) => match parse_size(t) {
                        Ok(n) => Some(n),
                        Err(m) => {
                            self.problem("/state/memory_budget", At::Value, m);
                            None
                        }
                    },
                    Some(_) => None,
                };
                StateBackendConfig::RocksDb {
                    dir,
                    memory_budget_bytes: budget.map_or(DEFAULT_ROCKSDB_MEMORY_BUDGET, |b| b / 2),
                    operator_memory_bytes: budget.map(|b| b - b / 2),
                }
            }
            _ => StateBackendConfig::Memory,
        }
    }

    /// Checks that names are unique across sections and not reserved; returns each
    /// name's section (first definition wins).
    fn check_names(
        &mut self,
        sources: &[NodeSpec<'a>],
        steps: &[NodeSpec<'a>],
        sinks: &[NodeSpec<'a>],
    ) -> HashMap<&'a str, Section> {
        let mut names: HashMap<&'a str, Section> = HashMap::new();
        let sections = [
            (Section::Source, sources),
            (Section::Step, steps),
            (Section::Sink, sinks),
        ];
        for (section, specs) in sections {
            for spec in specs {
                if spec.name == DEAD_LETTER_SINK {
                    self.problem(
                        &spec.pointer,
                        At::Key,
                        format!(
                            "the name `{DEAD_LETTER_SINK}` is reserved for the job's dead-letter output"
                        ),
                    );
                    continue;
                }
                match names.get(spec.name) {
                    Some(first) => {
                        let message = format!(
                            "the name `{}` is already used by a {}; sources, steps and sinks share one namespace",
                            spec.name,
                            first.word()
                        );
                        self.problem(&spec.pointer, At::Key, message);
                    }
                    None => {
                        names.insert(spec.name, section);
                    }
                }
            }
        }
        names
    }

    /// The entries of a node's `from` (none when it is missing or malformed).
    fn inputs_of(spec: &NodeSpec<'_>) -> Vec<Input> {
        let base = format!("{}/from", spec.pointer);
        match spec.obj.and_then(|o| o.get("from")) {
            Some(Value::String(s)) => vec![Input {
                pointer: base,
                reference: s.clone(),
            }],
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .filter_map(|(i, v)| {
                    Some(Input {
                        pointer: format!("{base}/{i}"),
                        reference: v.as_str()?.to_string(),
                    })
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Checks that every `from` entry of `spec` names a source or step; returns
    /// whether all do.
    fn check_inputs(&mut self, spec: &NodeSpec<'_>, names: &HashMap<&str, Section>) -> bool {
        let mut ok = true;
        for input in Self::inputs_of(spec) {
            match names.get(input.node()) {
                Some(Section::Source | Section::Step) => {}
                Some(Section::Sink) => {
                    ok = false;
                    let message = format!(
                        "`{}` is a sink: only sources and steps can be read from",
                        input.node()
                    );
                    self.problem(&input.pointer, At::Value, message);
                }
                None => {
                    ok = false;
                    let message = self.unknown_input_message(&input, names);
                    self.problem(&input.pointer, At::Value, message);
                }
            }
        }
        ok
    }

    fn unknown_input_message(&self, input: &Input, names: &HashMap<&str, Section>) -> String {
        let mut known: Vec<&str> = Vec::new();
        for key in ["sources", "steps"] {
            if let Some(m) = self.root.get(key).and_then(Value::as_object) {
                known.extend(
                    m.keys()
                        .map(String::as_str)
                        .filter(|n| names.get(n).is_some_and(|s| *s != Section::Sink)),
                );
            }
        }
        let hint = did_you_mean(input.node(), known.iter().copied())
            .map(|m| format!(", did you mean `{m}`?"))
            .unwrap_or_default();
        format!(
            "unknown source or step `{}`{hint} (known: {})",
            input.node(),
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        )
    }

    /// Orders steps so that every step comes after the steps it reads, keeping the
    /// file's order where it can; reports cycles. Steps in or behind a cycle are left
    /// out.
    fn step_order(&mut self, steps: &[NodeSpec<'_>], unresolved: &HashSet<&str>) -> Vec<usize> {
        let index: HashMap<&str, usize> =
            steps.iter().enumerate().map(|(i, s)| (s.name, i)).collect();
        let deps: Vec<Vec<usize>> = steps
            .iter()
            .map(|s| {
                Self::inputs_of(s)
                    .iter()
                    .filter_map(|input| index.get(input.node()).copied())
                    .collect()
            })
            .collect();
        let mut done = vec![false; steps.len()];
        let mut order = Vec::with_capacity(steps.len());
        loop {
            let ready = (0..steps.len()).find(|&i| !done[i] && deps[i].iter().all(|&d| done[d]));
            match ready {
                Some(i) => {
                    done[i] = true;
                    order.push(i);
                }
                None => break,
            }
        }
        self.report_cycles(steps, &deps, &done, unresolved);
        order
    }

    /// Reports each cycle among the steps left out of the order once, at the `from` of
    /// its first step in file order.
    fn report_cycles(
        &mut self,
        steps: &[NodeSpec<'_>],
        deps: &[Vec<usize>],
        done: &[bool],
        unresolved: &HashSet<&str>,
    ) {
        let mut reported = vec![false; steps.len()];
        for start in 0..steps.len() {
            if done[start] || reported[start] {
                continue;
            }
            // Every step left out reads at least one other step left out: walk until a
            // step repeats.
            let mut path = vec![start];
            let cycle = loop {
                let Some(&cur) = path.last() else { break None };
                let Some(next) = deps[cur].iter().copied().find(|&d| !done[d]) else {
                    break None;
                };
                if let Some(pos) = path.iter().position(|&p| p == next) {
                    break Some(path[pos..].to_vec());
                }
                path.push(next);
            };
            let Some(mut cycle) = cycle else { continue };
            if cycle.iter().any(|&i| reported[i]) {
                continue;
            }
            cycle.iter().for_each(|&i| reported[i] = true);
            if cycle.iter().any(|&i| unresolved.contains(steps[i].name)) {
                continue;
            }
            // Start the cycle at its first step in file order, in reading direction.
            cycle.reverse();
            let first = cycle
                .iter()
                .enumerate()
                .min_by_key(|(_, &i)| i)
                .map_or(0, |(k, _)| k);
            cycle.rotate_left(first);
            let mut names: Vec<&str> = cycle.iter().map(|&i| steps[i].name).collect();
            names.push(steps[cycle[0]].name);
            let pointer = format!("{}/from", steps[cycle[0]].pointer);
            self.problem(
                &pointer,
                At::Value,
                format!("steps form a cycle: {}", names.join(" → ")),
            );
        }
    }

    /// A node's own `parallelism`, checked against `max_parallelism`. `Err` when it is
    /// too large (reported).
    fn node_parallelism(
        &mut self,
        builder: &GraphBuilder,
        spec: &NodeSpec<'_>,
    ) -> Result<Option<usize>, ()> {
        let pointer = format!("{}/parallelism", spec.pointer);
        let Some(p) = self.uint(&pointer) else {
            return Ok(None);
        };
        let max = usize::from(builder.settings.max_parallelism);
        if p > max {
            self.problem(
                &pointer,
                At::Value,
                format!("parallelism {p} exceeds max_parallelism {max} (the number of key groups)"),
            );
            return Err(());
        }
        Ok(Some(p))
    }

    fn add_source(&mut self, builder: &mut GraphBuilder, spec: &NodeSpec<'_>) -> bool {
        let Some(obj) = spec.obj else { return false };
        if self.is_broken(&spec.pointer) {
            return false;
        }
        let Some(type_name) = obj.get("type").and_then(Value::as_str) else {
            return false;
        };
        let schema = match obj.get("schema") {
            None | Some(Value::Null) => None,
            Some(v) => match parse_schema(v) {
                Ok(s) => Some(s),
                Err(e) => {
                    self.field_error(&format!("{}/schema", spec.pointer), e);
                    return false;
                }
            },
        };
        let event_time = match obj.get("event_time") {
            None | Some(Value::Null) => None,
            Some(v) => match parse_event_time(v) {
                Ok(et) => Some(et),
                Err(e) => {
                    self.field_error(&format!("{}/event_time", spec.pointer), e);
                    return false;
                }
            },
        };
        let Ok(parallelism) = self.node_parallelism(builder, spec) else {
            return false;
        };
        let options = without(obj, SOURCE_COMMON_KEYS);
        let added = builder.add_source(
            spec.name,
            SourceDecl {
                type_name,
                options: &options,
                format: obj.get("format"),
                schema,
                event_time,
                parallelism,
            },
        );
        match added {
            Ok(_) => true,
            Err(e) => {
                self.field_error(&spec.pointer, e);
                false
            }
        }
    }

    /// Resolves a node's inputs to streams. `None` when an input was not built (its
    /// own error is reported) or does not resolve (reported here).
    fn streams(
        &mut self,
        builder: &GraphBuilder,
        spec: &NodeSpec<'_>,
        built: &HashSet<&str>,
    ) -> Option<Vec<StreamRef>> {
        let inputs = Self::inputs_of(spec);
        if inputs.is_empty() || inputs.iter().any(|i| !built.contains(i.node())) {
            return None;
        }
        let mut streams = Vec::with_capacity(inputs.len());
        for input in &inputs {
            match builder.stream(&input.reference) {
                Ok(s) => streams.push(s),
                Err(e) => {
                    self.field_error(&input.pointer, e);
                    return None;
                }
            }
        }
        Some(streams)
    }

    fn add_step(
        &mut self,
        builder: &mut GraphBuilder,
        spec: &NodeSpec<'_>,
        built: &HashSet<&str>,
    ) -> bool {
        let Some(obj) = spec.obj else { return false };
        if self.is_broken(&spec.pointer) {
            return false;
        }
        let Some(streams) = self.streams(builder, spec, built) else {
            return false;
        };
        let Some((kind, value)) = obj.iter().find(|(k, _)| self.registry.step(k).is_some()) else {
            return false;
        };
        let Ok(parallelism) = self.node_parallelism(builder, spec) else {
            return false;
        };
        match builder.add_step(spec.name, &streams, kind, value, parallelism) {
            Ok(_) => true,
            Err(e) => {
                self.field_error(&spec.pointer, e);
                false
            }
        }
    }

    fn add_sink(&mut self, builder: &mut GraphBuilder, spec: &NodeSpec<'_>, built: &HashSet<&str>) {
        let Some(obj) = spec.obj else { return };
        if self.is_broken(&spec.pointer) {
            return;
        }
        let Some(type_name) = obj.get("type").and_then(Value::as_str) else {
            return;
        };
        let Some(streams) = self.streams(builder, spec, built) else {
            return;
        };
        let [stream] = streams.as_slice() else {
            return;
        };
        let Ok(parallelism) = self.node_parallelism(builder, spec) else {
            return;
        };
        let options = without(obj, SINK_COMMON_KEYS);
        if let Err(e) = builder.add_sink(spec.name, stream, type_name, &options, parallelism) {
            self.field_error(&spec.pointer, e);
        }
    }

    fn set_dead_letter(&mut self, builder: &mut GraphBuilder) {
        let Some(obj) = self.root.get("dead_letter").and_then(Value::as_object) else {
            return;
        };
        if self.is_broken("/dead_letter") {
            return;
        }
        let Some(type_name) = obj.get("type").and_then(Value::as_str) else {
            return;
        };
        if let Err(e) = builder.set_dead_letter(type_name, without(obj, &["type"])) {
            self.field_error("/dead_letter", e);
        }
    }
}

/// `obj` without `keys`: a connector's own options.
fn without(obj: &Map<String, Value>, keys: &[&str]) -> Value {
    Value::Object(
        obj.iter()
            .filter(|(k, _)| !keys.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    )
}
