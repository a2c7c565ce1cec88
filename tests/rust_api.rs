//! The Rust API builds the same graph as YAML, and its typed row operators work.

use std::path::Path;

use serde::{Deserialize, Serialize};
use weir::prelude::*;
use weir_engine::graph::LogicalGraph;

use crate::common::block_on;

fn fingerprint(g: &LogicalGraph) -> Vec<String> {
    let mut v = vec![format!("job {}", g.job)];
    for n in &g.nodes {
        let fields: Vec<String> = n
            .schema
            .fields()
            .iter()
            .map(|f| format!("{}:{}:{}", f.name(), f.data_type(), f.is_nullable()))
            .collect();
        // Steps' descriptions carry their predicate, projection or window; sources and
        // sinks' carry paths, which differ (relative in YAML, absolute in Rust).
        let describe = match n.kind_name() {
            "step" => n.describe(),
            _ => String::new(),
        };
        v.push(format!(
            "{} {} p{} [{}] side {:?} {describe}",
            n.kind_name(),
            n.name,
            n.parallelism,
            fields.join(","),
            n.side_outputs.iter().map(|(s, _)| s).collect::<Vec<_>>()
        ));
    }
    for e in &g.edges {
        v.push(format!(
            "{}{} -> {} #{} {}",
            g.nodes[e.from.node].name,
            e.from
                .side
                .as_ref()
                .map(|s| format!(".{s}"))
                .unwrap_or_default(),
            g.nodes[e.to].name,
            e.input,
            e.partitioning
        ));
    }
    let plan = weir_engine::planner::PhysicalPlan::new(g);
    for c in &plan.chains {
        let names: Vec<&str> = c.nodes.iter().map(|&n| g.nodes[n].name.as_str()).collect();
        v.push(format!("chain {} p{}", names.join("->"), c.parallelism));
    }
    v
}

#[path = "../examples/log_filter/main.rs"]
#[allow(dead_code)]
mod log_filter_example;

#[path = "../examples/error_spike/main.rs"]
#[allow(dead_code)]
mod error_spike_example;

#[path = "../examples/sessionization/main.rs"]
#[allow(dead_code)]
mod sessionization_example;

#[path = "../examples/ad_attribution/main.rs"]
#[allow(dead_code)]
mod ad_attribution_example;

#[path = "../examples/payments/main.rs"]
#[allow(dead_code)]
mod payments_example;

#[path = "../examples/error_spike/kafka.rs"]
#[allow(dead_code)]
mod error_spike_kafka_example;

/// The Kafka variant of the error-spike example: its YAML (brokers from
/// `KAFKA_BROKERS`) and its Rust build the same graph (nothing connects at build time).
#[test]
fn the_kafka_example_builds_the_same_graph_in_rust_and_yaml() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/error_spike");
    std::env::set_var("KAFKA_BROKERS", "127.0.0.1:9");
    let yaml = weir::load_job(&dir.join("kafka.yaml"), None).expect("yaml");
    let rust = error_spike_kafka_example::build(&dir, "127.0.0.1:9")
        .expect("rust")
        .build()
        .expect("graph");
    assert_eq!(fingerprint(&yaml), fingerprint(&rust));
    let yaml = weir::load_job(&dir.join("produce.yaml"), None).expect("produce job");
    assert_eq!(yaml.nodes.len(), 3, "source, sink, dead letters");
}

#[test]
fn every_rust_example_builds_the_same_graph_as_its_yaml() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    type Build = fn(&Path) -> Result<Pipeline, WeirError>;
    let examples: [(&str, Build); 5] = [
        ("log_filter", log_filter_example::build),
        ("error_spike", error_spike_example::build),
        ("sessionization", sessionization_example::build),
        ("ad_attribution", ad_attribution_example::build),
        ("payments", payments_example::build),
    ];
    for (name, build) in examples {
        let dir = root.join("examples").join(name);
        let yaml = weir::load_job(&dir.join("job.yaml"), None).expect("yaml");
        let rust = build(&dir).expect("rust").build().expect("graph");
        assert_eq!(fingerprint(&yaml), fingerprint(&rust), "example {name}");
    }
}

#[test]
fn rust_builder_reports_the_step_and_field() {
    let p = Pipeline::new("bad");
    let s = p
        .source(
            "gen",
            SourceSpec::new("datagen")
                .option("rows", 10)
                .schema(&[("id", "int")]),
        )
        .expect("source");
    let err = match s.filter("f", "no_such_column > 1") {
        Ok(_) => panic!("filter on an unknown column must fail"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("step `f`"), "{err}");
    assert!(err.contains("no_such_column"), "{err}");
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct In {
    id: i64,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Out {
    id: i64,
    label: String,
}

#[test]
fn typed_map_filter_flat_map_over_serde_rows() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("out.jsonl");
    let p = Pipeline::new("typed");
    let s = p
        .source(
            "gen",
            SourceSpec::new("datagen")
                .option("rows", 100)
                .option(
                    "fields",
                    serde_json::json!({"id": {"sequence": {"start": 0, "end": 99}}}),
                )
                .schema(&[("id", "int")]),
        )
        .expect("source");
    let even = s
        .filter_rows("even", |r: &In| r.id % 2 == 0)
        .expect("filter");
    let twice = even
        .flat_map("twice", |r: In| {
            Box::new((0..2).map(move |k| In { id: r.id * 10 + k })) as Box<dyn Iterator<Item = In>>
        })
        .expect("flat_map");
    let labelled = twice
        .map("label", |r: In| Out {
            id: r.id,
            label: format!("n{}", r.id),
        })
        .expect("map");
    labelled
        .sink(
            "out",
            SinkSpec::new("file").option("path", out.to_string_lossy().into_owned()),
        )
        .expect("sink");
    block_on(weir::run(p.build().expect("graph"))).expect("job");
    let text = std::fs::read_to_string(&out).expect("output");
    let mut got: Vec<Out> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json row"))
        .collect();
    got.sort_by_key(|o| o.id);
    let want: Vec<Out> = (0..100)
        .filter(|i| i % 2 == 0)
        .flat_map(|i| (0..2).map(move |k| i * 10 + k))
        .map(|id| Out {
            id,
            label: format!("n{id}"),
        })
        .collect();
    assert_eq!(got, want);
}

/// A user-defined aggregate: the sum of squares of an Int64 column.
struct SumOfSquares;

struct SumOfSquaresAcc(i64);

impl weir_engine::aggregate::AggregateFunction for SumOfSquares {
    fn name(&self) -> &str {
        "sum_sq"
    }
    fn return_type(
        &self,
        arg: Option<&arrow::datatypes::DataType>,
    ) -> Result<arrow::datatypes::DataType, String> {
        match arg {
            Some(arrow::datatypes::DataType::Int64) => Ok(arrow::datatypes::DataType::Int64),
            other => Err(format!("sum_sq takes an int64, not {other:?}")),
        }
    }
    fn create_accumulator(
        &self,
        _arg: Option<&arrow::datatypes::DataType>,
    ) -> weir_engine::Result<Box<dyn weir_engine::aggregate::Accumulator>> {
        Ok(Box::new(SumOfSquaresAcc(0)))
    }
}

impl weir_engine::aggregate::Accumulator for SumOfSquaresAcc {
    fn update(
        &mut self,
        values: Option<&arrow::array::ArrayRef>,
        rows: &[u32],
        _event_times: &[i64],
    ) -> weir_engine::Result<()> {
        use arrow::array::{Array, AsArray};
        let Some(values) = values else { return Ok(()) };
        let v = values.as_primitive::<arrow::datatypes::Int64Type>();
        for &r in rows {
            if v.is_valid(r as usize) {
                let x = v.value(r as usize);
                self.0 = self.0.wrapping_add(x.wrapping_mul(x));
            }
        }
        Ok(())
    }
    fn evaluate(&self) -> weir_engine::Result<weir_engine::aggregate::ScalarValue> {
        Ok(weir_engine::aggregate::ScalarValue::Int64(Some(self.0)))
    }
    fn state(&self) -> weir_engine::Result<Vec<u8>> {
        Ok(self.0.to_le_bytes().to_vec())
    }
    fn merge_state(&mut self, state: &[u8]) -> weir_engine::Result<()> {
        let bytes: [u8; 8] = state
            .try_into()
            .map_err(|_| weir_engine::EngineError::operator("sum_sq", "bad state"))?;
        self.0 = self.0.wrapping_add(i64::from_le_bytes(bytes));
        Ok(())
    }
}

#[test]
fn user_defined_aggregate_runs_in_a_window() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("out.jsonl");
    let mut registry = weir::default_registry();
    registry.add_aggregate(SumOfSquares);
    let p = Pipeline::with_registry("udaf", std::sync::Arc::new(registry)).parallelism(2);
    let s = p
        .source(
            "gen",
            SourceSpec::new("datagen")
                .option("rows", 1000)
                .option(
                    "fields",
                    serde_json::json!({
                        "id": {"sequence": {"start": 0, "end": 999}},
                        "ts": {"start": 0, "step": "1s"}
                    }),
                )
                .schema(&[("id", "int"), ("ts", "timestamp")])
                .event_time("ts", "0s"),
        )
        .expect("source");
    let w = s
        .window(
            "w",
            WindowSpec::tumbling("100s")
                .aggregate("n", "count(*)")
                .aggregate("sq", "sum_sq(id)"),
        )
        .expect("window with a UDAF");
    w.sink(
        "out",
        SinkSpec::new("file")
            .option("path", out.to_string_lossy().into_owned())
            .parallelism(1),
    )
    .expect("sink");
    block_on(weir::run(p.build().expect("graph"))).expect("job");
    let text = std::fs::read_to_string(&out).expect("output");
    let mut got: Vec<(i64, i64)> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            (v["n"].as_i64().expect("n"), v["sq"].as_i64().expect("sq"))
        })
        .collect();
    got.sort();
    // Row i has id i and ts i seconds: window k holds ids 100k..100k+99.
    let mut want: Vec<(i64, i64)> = (0..10)
        .map(|k| (100, (100 * k..100 * k + 100).map(|i: i64| i * i).sum()))
        .collect();
    want.sort();
    assert_eq!(got, want);
}

/// Nested field types read the same from the Rust API as from YAML: the string form of
/// `schema:` types, and struct fields and list items in SQL.
#[test]
fn nested_schemas_build_the_same_graph_as_yaml() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/nested_json");
    let yaml = weir::load_job(&dir.join("job.yaml"), None).expect("yaml");
    let p = Pipeline::new("nested-json");
    let clicks = p
        .source(
            "clicks",
            SourceSpec::new("file")
                .option("path", dir.join("input.jsonl").to_str().expect("utf8"))
                .format("json")
                .schema(&[
                    ("ts", "timestamp"),
                    (
                        "ctx",
                        "struct<usr: struct<id: int, name: string?>, ip: string?>",
                    ),
                    ("tags", "list<string>?"),
                    ("geo", "struct<country: string, city: string?>"),
                    ("scores", "list<float>"),
                    ("raw", "string?"),
                ]),
        )
        .expect("source");
    let flat = clicks
        .select(
            "flat",
            &[
                ("ts", "ts"),
                ("user_id", "ctx.usr.id"),
                ("user_name", "ctx['usr']['name']"),
                ("first_tag", "tags[1]"),
                ("tag_count", "cardinality(tags)"),
                ("country", "geo.country"),
                ("best", "array_max(scores)"),
                ("plan", "json_get_str(raw, 'account', 'plan')"),
                ("seats", "json_get_int(raw, 'account', 'seats')"),
                ("ctx", "ctx"),
            ],
        )
        .expect("select");
    let de = flat.filter("de", "country = 'DE'").expect("filter");
    de.sink("out", SinkSpec::new("file").option("path", "out/de.jsonl"))
        .expect("sink");
    let rust = p.build().expect("graph");
    let (y, r) = (fingerprint(&yaml), fingerprint(&rust));
    // The YAML job has a dead-letter file sink; compare the shared part.
    let shared = |v: &Vec<String>| -> Vec<String> {
        v.iter()
            .filter(|l| !l.contains("dead_letter") && !l.starts_with("chain"))
            .cloned()
            .collect()
    };
    assert_eq!(shared(&y), shared(&r));
}
