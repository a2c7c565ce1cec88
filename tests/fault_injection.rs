//! Exactly-once under SIGKILL (DESIGN §6): the windowed example jobs run with
//! checkpoints and the exactly-once file sink; the `weir` process is killed at each
//! crash point (during processing, while a checkpoint is written, after a checkpoint
//! completed but before the sinks committed, during the commit) and after random
//! delays, then restarted until it finishes; the committed output must equal that of a
//! failure-free run, line for line — nothing lost, nothing duplicated.

#![allow(clippy::unwrap_used)] // test code: a failed set-up step should just fail

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const SERVICES: [&str; 5] = ["api", "auth", "checkout", "payments", "search"];

/// Writes `files` JSONL log files of `lines` lines each: event times mostly increasing
/// with some disorder, a share of ERROR lines and a few malformed lines.
fn write_logs(dir: &Path, files: usize, lines: usize, seed: u64) {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut rng = SmallRng::seed_from_u64(seed);
    for f in 0..files {
        let mut out = String::new();
        let mut t: i64 = 1_767_225_600_000; // 2026-01-01
        for i in 0..lines {
            t += rng.random_range(0..400);
            let jitter: i64 = rng.random_range(0..3_000);
            let ts = t - jitter;
            if i % 997 == 13 {
                out.push_str("{\"ts\": not json\n");
                continue;
            }
            let service = SERVICES[rng.random_range(0..SERVICES.len())];
            let level = if rng.random_range(0..10) < 4 {
                "ERROR"
            } else {
                "INFO"
            };
            let secs = ts / 1000;
            let ms = ts % 1000;
            let dt = chrono_like(secs);
            out.push_str(&format!(
                "{{\"ts\": \"{dt}.{ms:03}Z\", \"service\": \"{service}\", \"level\": \"{level}\", \"message\": \"m{f}-{i}\"}}\n"
            ));
        }
        std::fs::write(data.join(format!("logs-{f}.jsonl")), out).unwrap();
    }
}

/// `YYYY-MM-DDTHH:MM:SS` for seconds since the epoch (UTC), without a date crate.
fn chrono_like(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// The error-spike job (per-service 1-minute error counts; every count is an alert so
/// that the output is large) and a 30-second-gap session job, both checkpointing.
pub(crate) fn job_yaml(kind: &str, parallelism: usize) -> String {
    let head = format!(
        "name: fault-{kind}\nparallelism: {parallelism}\nbatch_size: 64\n\
         checkpoint: {{ interval: 20ms, storage: ckpt, retain: 2 }}\n\
         sources:\n  logs:\n    type: file\n    path: data/*.jsonl\n    rate: 5000\n    format: json\n\
         \x20   schema: {{ ts: timestamp, service: string, level: string, message: string }}\n\
         \x20   event_time: {{ field: ts, max_out_of_orderness: 5s }}\n"
    );
    let body = match kind {
        "spike" => "steps:\n  errors: { from: logs, filter: \"level = 'ERROR'\" }\n  counts:\n    from: errors\n    window: { tumbling: 1m, key: [service], aggregate: { errors: \"count(*)\" } }\n  spikes: { from: counts, filter: \"errors >= 1\" }\nsinks:\n  alerts: { from: spikes, type: file, path: out/alerts.jsonl }\n",
        _ => "steps:\n  sessions:\n    from: logs\n    window: { session: 2s, key: [service, level], aggregate: { n: \"count(*)\", first_msg: \"first(message)\", last_msg: \"last(message)\" } }\nsinks:\n  out: { from: sessions, type: file, path: out/sessions.jsonl }\n",
    };
    format!("{head}{body}dead_letter: {{ type: file, path: out/dead_letter.jsonl }}\n")
}

pub(crate) fn setup(kind: &str, parallelism: usize, seed: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_logs(dir.path(), 4, 3_000, seed);
    std::fs::write(dir.path().join("job.yaml"), job_yaml(kind, parallelism)).unwrap();
    dir
}

pub(crate) fn weir_cmd(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_weir"));
    c.args(["run", "job.yaml", "--no-progress"])
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        // Table logs are compacted every few checkpoints even in these small jobs.
        .env("WEIR_TABLE_LOG_COMPACT_BYTES", "512")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// Committed output: every published (not hidden) file's lines, by sink, sorted.
pub(crate) fn committed(dir: &Path) -> BTreeMap<String, Vec<String>> {
    let mut by_sink: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let out = dir.join("out");
    let Ok(entries) = std::fs::read_dir(&out) else {
        return by_sink;
    };
    for e in entries {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let sink = name.split(['-', '.']).next().unwrap_or("").to_string();
        let text = std::fs::read_to_string(&p).unwrap();
        by_sink
            .entry(sink)
            .or_default()
            .extend(text.lines().map(crate::common::without_time));
    }
    for v in by_sink.values_mut() {
        v.sort();
    }
    by_sink
}

pub(crate) fn reference(
    kind: &str,
    parallelism: usize,
    seed: u64,
) -> BTreeMap<String, Vec<String>> {
    let dir = setup(kind, parallelism, seed);
    let out = weir_cmd(dir.path()).output().unwrap();
    assert!(
        out.status.success(),
        "failure-free run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = committed(dir.path());
    assert!(
        c.values().map(Vec::len).sum::<usize>() > 50,
        "too little output: {c:?}"
    );
    c
}

/// Runs until the job exits successfully; the first run with `WEIR_FAULT=fault`.
/// Returns how many runs were killed.
pub(crate) fn run_to_end(dir: &Path, fault: Option<&str>) -> usize {
    for (killed, attempt) in (0..20).enumerate() {
        let mut c = weir_cmd(dir);
        if let (Some(f), 0) = (fault, attempt) {
            c.env("WEIR_FAULT", f);
        }
        let out = c.output().unwrap();
        if out.status.success() {
            return killed;
        }
        assert_eq!(
            out.status.signal(),
            Some(9),
            "the run failed otherwise than by SIGKILL: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    panic!("the job did not finish after 20 runs");
}

fn check_point(kind: &str, parallelism: usize, point: &str) {
    let seed = 7;
    let want = reference(kind, parallelism, seed);
    for occurrence in [1, 3] {
        let dir = setup(kind, parallelism, seed);
        let fault = format!("{point}:{occurrence}");
        if std::env::var("FAULT_DEBUG").is_ok() {
            eprintln!("DIR {} {fault}", dir.path().display());
            let d = dir.path().to_path_buf();
            std::mem::forget(dir);
            let killed = run_to_end(&d, Some(&fault));
            assert_eq!(killed, 1);
            assert_eq!(committed(&d), want, "{fault}");
            continue;
        }
        let killed = run_to_end(dir.path(), Some(&fault));
        assert_eq!(killed, 1, "{fault}: the crash point was not reached");
        let got = committed(dir.path());
        assert_eq!(
            got, want,
            "{kind} p={parallelism} {fault}: committed output differs"
        );
    }
}

#[test]
fn crash_during_processing() {
    for p in [1, 4] {
        check_point("spike", p, "processing");
    }
}

#[test]
fn crash_while_writing_a_checkpoint() {
    for p in [1, 4] {
        check_point("spike", p, "checkpoint_write");
    }
}

#[test]
fn crash_after_checkpoint_before_commit() {
    for p in [1, 4] {
        check_point("spike", p, "before_commit");
    }
}

#[test]
fn crash_during_commit() {
    for p in [1, 4] {
        check_point("spike", p, "during_commit");
    }
}

#[test]
fn sessions_survive_each_crash_point() {
    for point in [
        "processing",
        "checkpoint_write",
        "before_commit",
        "during_commit",
    ] {
        check_point("sessions", 4, point);
    }
}

/// Kills at random times from outside, several times in a row, then lets the job
/// finish; also restarts with another parallelism in between.
#[test]
fn random_series_of_kills() {
    for (kind, seed) in [("spike", 11u64), ("sessions", 12)] {
        let want = reference(kind, 2, seed);
        let dir = setup(kind, 2, seed);
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut kills = 0;
        for round in 0..6 {
            // Rescale between restarts: key groups are redistributed.
            let p = [2, 4, 1][round % 3];
            std::fs::write(dir.path().join("job.yaml"), job_yaml(kind, p)).unwrap();
            let mut child = weir_cmd(dir.path()).stderr(Stdio::null()).spawn().unwrap();
            std::thread::sleep(Duration::from_millis(rng.random_range(20..400)));
            match child.try_wait().unwrap() {
                Some(status) => {
                    assert!(status.success(), "run ended with {status}");
                    break;
                }
                None => {
                    child.kill().unwrap(); // SIGKILL
                    let status = child.wait().unwrap();
                    if status.signal() != Some(9) {
                        // It finished between `try_wait` and the kill.
                        assert!(status.success(), "run ended with {status}");
                        break;
                    }
                    kills += 1;
                }
            }
        }
        std::fs::write(dir.path().join("job.yaml"), job_yaml(kind, 2)).unwrap();
        run_to_end(dir.path(), None);
        assert!(kills > 0, "no run was killed: make the input larger");
        assert_eq!(
            committed(dir.path()),
            want,
            "{kind}: output differs after {kills} kills"
        );
    }
}

/// The example job `name` with its bundled data, checkpointing every 20 ms, its file
/// source paced at `rate` lines/s so that the run spans many checkpoints.
fn example(name: &str, parallelism: usize, rate: u32) -> tempfile::TempDir {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    for e in std::fs::read_dir(root.join("data")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, data.join(p.file_name().unwrap())).unwrap();
    }
    let yaml = std::fs::read_to_string(root.join("job.yaml")).unwrap();
    let mut out = String::new();
    for line in yaml.lines() {
        if line.starts_with("parallelism:") {
            out.push_str(&format!(
                "parallelism: {parallelism}\ncheckpoint: {{ interval: 20ms, storage: ckpt, retain: 2 }}\n"
            ));
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if line.trim() == "type: file" {
            out.push_str(&format!("    rate: {rate}\n"));
        }
    }
    std::fs::write(dir.path().join("job.yaml"), out).unwrap();
    dir
}

/// The example's golden output (written by a run without checkpoints), by sink, sorted.
fn golden(name: &str) -> BTreeMap<String, Vec<String>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
        .join("expected");
    committed(&dir)
}

/// The ad-attribution example (a left outer interval join) with its join buffers in
/// RocksDB: killed at each crash point at parallelism 1 and 4, restarted until done; the
/// published parts hold exactly the golden output.
#[test]
fn join_example_with_rocksdb_is_exactly_once_at_every_crash_point() {
    let want = golden("ad_attribution");
    assert!(!want.is_empty(), "ad_attribution: no golden output");
    for p in [1, 4] {
        // Late enough that checkpoints with join buffers exist when the process dies.
        for (point, occurrence) in [
            ("processing", 40),
            ("checkpoint_write", 10),
            ("before_commit", 10),
        ] {
            // 150 lines/s: ~2.7 s of input, so that even with slow checkpoints (p=4,
            // RocksDB, a loaded machine) the 10th commit comes before the end.
            let dir = example("ad_attribution", p, 150);
            let yaml = std::fs::read_to_string(dir.path().join("job.yaml")).unwrap();
            let yaml = yaml.replacen(
                "\nsources:",
                "\nstate: { backend: rocksdb, dir: state, memory_budget: 8MB }\nsources:",
                1,
            );
            assert!(yaml.contains("backend: rocksdb"));
            std::fs::write(dir.path().join("job.yaml"), yaml).unwrap();
            let fault = format!("{point}:{occurrence}");
            let killed = run_to_end(dir.path(), Some(&fault));
            assert_eq!(killed, 1, "p={p} {fault}: the crash point was not reached");
            assert_eq!(
                committed(dir.path()),
                want,
                "p={p} {fault}: published output differs from the golden output"
            );
        }
    }
}

/// The windowed and join examples themselves (YAML and data as shipped, plus a
/// checkpoint section): killed at each crash point at parallelism 1 and 4, restarted
/// until done; the published parts hold exactly the example's golden output.
#[test]
fn examples_are_exactly_once_at_every_crash_point() {
    for (name, rate) in [
        ("error_spike", 2000),
        ("sessionization", 400),
        ("ad_attribution", 300),
    ] {
        let want = golden(name);
        assert!(!want.is_empty(), "{name}: no golden output");
        for p in [1, 4] {
            for point in [
                "processing",
                "checkpoint_write",
                "before_commit",
                "during_commit",
            ] {
                let dir = example(name, p, rate);
                let fault = format!("{point}:2");
                let killed = run_to_end(dir.path(), Some(&fault));
                assert_eq!(
                    killed, 1,
                    "{name} p={p} {fault}: the crash point was not reached"
                );
                assert_eq!(
                    committed(dir.path()),
                    want,
                    "{name} p={p} {fault}: published output differs from the golden output"
                );
            }
        }
    }
}

/// Checkpoints that cannot complete in time are aborted and the job goes on: with a
/// 1 ms timeout every periodic checkpoint is aborted, yet the job finishes (its final
/// checkpoint commits everything) with the same output.
#[test]
fn timed_out_checkpoints_are_aborted_and_the_job_goes_on() {
    let want = reference("spike", 2, 31);
    let dir = setup("spike", 2, 31);
    // Every checkpoint times out: tolerated here, so the job goes on.
    let yaml = job_yaml("spike", 2).replace(
        "retain: 2 }",
        "retain: 2, timeout: 1ms, tolerable_failures: 100000 }",
    );
    assert!(yaml.contains("timeout: 1ms"));
    std::fs::write(dir.path().join("job.yaml"), yaml).unwrap();
    let out = weir_cmd(dir.path()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let aborted: u64 = err
        .lines()
        .find(|l| l.trim_start().starts_with("checkpoints:"))
        .and_then(|l| l.split(" aborted;").next())
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(aborted > 0, "no checkpoint was aborted: {err}");
    assert_eq!(committed(dir.path()), want);
    // Aborted checkpoints leave no directory behind.
    let chks = std::fs::read_dir(dir.path().join("ckpt/fault-spike"))
        .unwrap()
        .filter(|e| {
            let e = e.as_ref().unwrap();
            e.file_name().to_string_lossy().starts_with("chk-")
                && !e.path().join("_metadata").exists()
        })
        .count();
    assert_eq!(chks, 0, "half-written checkpoint directories remain");

    // Some checkpoints abort and some complete (barriers of aborted ones are still
    // travelling when newer ones arrive), then a crash and a restore: still exact.
    // Failures are tolerated: on a loaded machine four 8 ms checkpoints in a row can
    // time out, and stopping the job is not what this checks.
    for (timeout, fault) in [("8ms", "before_commit:2"), ("12ms", "processing:40")] {
        let dir = setup("spike", 2, 31);
        let yaml = job_yaml("spike", 2).replace(
            "retain: 2 }",
            &format!("retain: 2, timeout: {timeout}, tolerable_failures: 100000 }}"),
        );
        std::fs::write(dir.path().join("job.yaml"), yaml).unwrap();
        run_to_end(dir.path(), Some(fault));
        assert_eq!(committed(dir.path()), want, "timeout {timeout}, {fault}");
    }
}
