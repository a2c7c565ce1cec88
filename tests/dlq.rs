//! Working off dead letters: `weir dlq summary` groups them, `weir dlq replay`
//! re-injects remediated records into a checkpointing job's input exactly once — also
//! when the replay itself is killed between appending and recording.

#![allow(clippy::unwrap_used)] // test code: a failed set-up step should just fail

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output};

pub(crate) fn weir(dir: &Path, args: &[&str], fault: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_weir"));
    c.args(args).current_dir(dir).env("RUST_LOG", "warn");
    if let Some(f) = fault {
        c.env("WEIR_FAULT", f);
    }
    c.output().unwrap()
}

pub(crate) fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The ids of the published output rows, sorted.
fn output_ids(dir: &Path) -> Vec<i64> {
    let mut ids = Vec::new();
    for e in std::fs::read_dir(dir.join("out")).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("o-") {
            continue;
        }
        for l in std::fs::read_to_string(e.path()).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            ids.push(v["id"].as_i64().unwrap());
            assert!(v["amount"].as_f64().unwrap() > 0.0, "{l}");
        }
    }
    ids.sort_unstable();
    ids
}

#[test]
fn summary_groups_and_replay_reinjects_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("data")).unwrap();
    let mut lines = String::new();
    for i in 0..100 {
        if i % 25 == 3 {
            lines.push_str("{\"id\": broken\n");
            continue;
        }
        // Every 10th amount is negative: a validation dead letter.
        let amount = if i % 10 == 0 {
            -(i as f64) - 1.5
        } else {
            i as f64 + 0.5
        };
        lines.push_str(&format!(
            "{{\"id\": {i}, \"ts\": {}, \"amount\": {amount}}}\n",
            1_767_225_600_000i64 + i * 1000
        ));
    }
    std::fs::write(d.join("data/p.jsonl"), lines).unwrap();
    std::fs::write(
        d.join("job.yaml"),
        "name: replay-test\ncheckpoint: { interval: 50ms, storage: ckpt }\n\
         sources:\n  p:\n    type: file\n    path: data/*.jsonl\n    format: json\n\
         \x20   schema: { id: int, ts: timestamp, amount: float }\n\
         steps:\n  valid: { from: p, validate: { positive_amount: \"amount > 0\" } }\n\
         sinks:\n  o: { from: valid, type: file, path: out/o.jsonl }\n\
         dead_letter: { type: file, path: out/dead_letter.jsonl }\n",
    )
    .unwrap();
    ok(&weir(d, &["run", "job.yaml", "--no-progress"], None));
    let valid: Vec<i64> = (0..100).filter(|i| i % 25 != 3 && i % 10 != 0).collect();
    assert_eq!(output_ids(d), valid);

    let summary = ok(&weir(d, &["dlq", "summary", "out/dead_letter.jsonl"], None));
    assert!(
        summary.contains("14 dead letter(s) in 2 group(s)"),
        "{summary}"
    );
    assert!(summary.contains("10  validation in `valid`"), "{summary}");
    assert!(summary.contains("4  decode in `p`"), "{summary}");

    // Replay the validation failures with the sign fixed; the replay is killed once
    // after publishing its file, before recording: the next replay keeps that file and
    // records the entries, without a second file.
    let replay = [
        "dlq",
        "replay",
        "job.yaml",
        "--dead-letters",
        "out/dead_letter.jsonl",
        "--kind",
        "validation",
        "--set",
        "amount=abs(amount)",
    ];
    let killed = weir(d, &replay, Some("replay_published"));
    assert_eq!(killed.status.signal(), Some(9));
    let again = ok(&weir(d, &replay, None));
    assert!(again.contains("replayed 10 dead letter(s)"), "{again}");
    let files: Vec<String> = std::fs::read_dir(d.join("data"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("replay-"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let replayed = std::fs::read_to_string(d.join("data").join(&files[0])).unwrap();
    assert_eq!(replayed.lines().count(), 10, "{replayed}");
    let third = ok(&weir(d, &replay, None));
    assert!(
        third.contains("replayed 0 dead letter(s)") && third.contains("(10 replayed before"),
        "{third}"
    );

    // The job resumes from its checkpoint and reads only the appended records.
    ok(&weir(d, &["run", "job.yaml", "--no-progress"], None));
    let all: Vec<i64> = (0..100).filter(|i| i % 25 != 3).collect();
    assert_eq!(output_ids(d), all);
}
