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
        v.push(format!(
            "{} {} p{} [{}] side {:?}",
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

fn rust_log_filter() -> LogicalGraph {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/log_filter");
    let path = |p: &str| dir.join(p).to_string_lossy().into_owned();
    let p = Pipeline::new("log-filter").parallelism(2);
    let logs = p
        .source(
            "logs",
            SourceSpec::new("file")
                .option("path", path("data/*.jsonl"))
                .format("json")
                .schema(&[
                    ("ts", "timestamp"),
                    ("service", "string"),
                    ("level", "string"),
                    ("message", "string"),
                    ("latency_ms", "int"),
                ])
                .event_time("ts", "5s")
                .idle_timeout("30s"),
        )
        .expect("source");
    let problems = logs
        .filter("problems", "level IN ('WARN', 'ERROR')")
        .expect("filter");
    let flagged = problems
        .select(
            "flagged",
            &[
                ("ts", "ts"),
                ("service", "service"),
                ("level", "level"),
                ("message", "message"),
                ("slow", "latency_ms > 1000"),
            ],
        )
        .expect("select");
    flagged
        .sink(
            "out",
            SinkSpec::new("file")
                .option("path", path("out/problems.jsonl"))
                .option("format", "jsonl")
                .parallelism(1),
        )
        .expect("sink");
    p.dead_letter(SinkSpec::new("file").option("path", path("out/dead_letter.jsonl")))
        .expect("dead letter");
    p.build().expect("graph")
}

#[test]
fn rust_builder_and_yaml_build_the_same_graph() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let yaml = weir::load_job(&root.join("examples/log_filter/job.yaml"), None).expect("yaml");
    assert_eq!(fingerprint(&yaml), fingerprint(&rust_log_filter()));
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
