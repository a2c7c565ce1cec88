//! The `weir` binary: exit codes, one clear message on error, `explain`, `schema`.

use std::process::Command;

fn weir(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run weir");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn validate_reports_every_error_and_exits_2() {
    let (code, _out, err) = weir(&["validate", "tests/golden/error_many_mistakes/job.yaml"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.starts_with("error: tests/golden/error_many_mistakes/job.yaml:2:14: parallelism:"),
        "{err}"
    );
    assert!(
        err.contains(":10:5: sources.logs.colour: unknown key `colour`"),
        "{err}"
    );
    assert!(err.contains("6 errors"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn validate_accepts_a_good_job() {
    let (code, out, err) = weir(&["validate", "examples/log_filter/job.yaml"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ok"), "{out}");
}

#[test]
fn missing_file_is_one_clear_error() {
    let (code, _out, err) = weir(&["run", "no/such/job.yaml"]);
    assert_eq!(code, 2);
    assert_eq!(err.lines().count(), 2, "one error and the count: {err}");
    assert!(err.contains("no/such/job.yaml"), "{err}");
}

#[test]
fn explain_shows_chains_parallelism_and_edges() {
    let (code, out, err) = weir(&[
        "explain",
        "examples/log_filter/job.yaml",
        "--parallelism",
        "3",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("chain 0 [parallelism 2]"),
        "file source capped at 2 files: {out}"
    );
    // Two files cap the source at 2; the filter runs at 3 behind a rebalance, with the
    // select chained to it.
    assert!(
        out.contains("logs [2] --rebalance--> problems [3]"),
        "{out}"
    );
    assert!(out.contains("chain 1 [parallelism 3]"), "{out}");
    assert!(
        out.contains("  step problems: filter level IN ('WARN', 'ERROR')"),
        "{out}"
    );
    assert!(out.contains("└─ step flagged: select"), "{out}");
    assert!(out.contains("flagged [3] --rebalance--> out [1]"), "{out}");
    assert!(out.contains("logs.dead_letter"), "{out}");
}

#[test]
fn schema_is_json_schema_listing_the_connectors() {
    let (code, out, err) = weir(&["schema"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
    assert_eq!(
        v["$schema"].as_str(),
        Some("https://json-schema.org/draft/2020-12/schema")
    );
    for name in [
        "datagen", "file", "stdout", "filter", "select", "key_by", "union",
    ] {
        assert!(out.contains(&format!("\"{name}\"")), "schema lacks {name}");
    }
}

#[test]
fn run_writes_output_and_a_summary() {
    let tmp = tempfile::tempdir().expect("tmp");
    let job = tmp.path().join("job.yaml");
    std::fs::write(
        &job,
        "name: t\nsources:\n  g: { type: datagen, rows: 100, seed: 1, schema: { id: int } }\n\
         sinks:\n  o: { from: g, type: file, path: out.jsonl }\n",
    )
    .expect("write");
    let (code, _out, err) = weir(&["run", job.to_str().expect("utf8")]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("job t finished"), "{err}");
    let written = std::fs::read_to_string(tmp.path().join("out.jsonl")).expect("output");
    assert_eq!(written.lines().count(), 100);
}

#[test]
fn bench_measures_a_workload_in_both_input_modes_and_writes_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("results.json");
    let data = dir.path().join("data");
    let (code, stdout, stderr) = weir(&[
        "bench",
        "w2-10k",
        "q8",
        "-p",
        "1,2",
        "--input",
        "gen,jsonl",
        "--scale",
        "0.002",
        "--checkpoint-every",
        "20ms",
        "--data-dir",
        data.to_str().expect("utf-8 path"),
        "--json",
        json.to_str().expect("utf-8 path"),
    ]);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let rows: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written")).expect("json");
    let rows = rows.as_array().expect("a list");
    // 2 workloads × 2 inputs × 2 parallelisms.
    assert_eq!(rows.len(), 8, "{rows:#?}");
    for r in rows {
        let what = format!("{r}");
        // w2-10k at scale 0.002: 20,000 events; q8: 20,000 events of which persons and
        // auctions are 4/50 (jsonl mode reads the same rows from the files).
        let events = r["events"].as_u64().expect("events");
        match r["workload"].as_str() {
            Some("w2-10k") => assert_eq!(events, 20_000, "{what}"),
            Some("q8") => assert_eq!(events, 1_600, "{what}"),
            other => panic!("unexpected workload {other:?}"),
        }
        assert!(r["events_per_s"].as_f64().expect("rate") > 0.0, "{what}");
        assert!(r["peak_rss_bytes"].as_u64().expect("rss") > 0, "{what}");
        assert!(r["output_rows"].as_u64().expect("out") > 0, "{what}");
        assert!(r["latency_samples"].as_u64().is_some(), "{what}");
        let with = &r["with_checkpoints"];
        assert_eq!(with["events"], r["events"], "{what}");
        assert_eq!(
            with["output_rows"], r["output_rows"],
            "same output with checkpoints: {what}"
        );
        assert!(
            with["checkpoints"]["completed"]
                .as_u64()
                .expect("completed")
                >= 1,
            "{what}"
        );
        assert!(r["checkpoint_cost"].is_number(), "{what}");
    }
    // The JSON-lines inputs were written once each and reused.
    let files: Vec<_> = std::fs::read_dir(&data)
        .expect("data dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "jsonl"))
        .collect();
    assert_eq!(files.len(), 3, "w2-10k gen, q8 person, q8 auction");
    assert!(
        stdout.contains("w2-10k") && stdout.contains("Mev/s"),
        "{stdout}"
    );
}

#[test]
fn bench_rejects_an_unknown_workload() {
    let (code, _, stderr) = weir(&["bench", "w9"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("no workload `w9`"), "{stderr}");
}
