//! The RocksDB state backend at job level, through the `weir` binary:
//!
//! - keyed state many times the memory budget: a `dedup` over ~15 MB of keys with a
//!   1 MB budget gives exactly one row per key;
//! - exactly-once: a dedup and a window on RocksDB, SIGKILLed at every crash point (and
//!   rescaled 2 → 3 → 2, which imports key-group ranges), commit what a failure-free run
//!   with the in-memory backend commits;
//! - incremental checkpoints: once the state stops changing, a checkpoint uploads only
//!   RocksDB's private files (a few KB), the SST files were uploaded once by the first
//!   checkpoint that held them, and after retention `shared/` holds exactly the files
//!   the kept checkpoints refer to.
//!
//! The dedup key is `[id, k]` where `k` is a long string computed from `id` (hex
//! digits of `id` times large constants): one key per id, but a large key that
//! LZ4 (RocksDB's compression here) cannot shrink. A constant padding column would be
//! compressed away (a constant 300-character column gives ~2.6 MB on disk, not ~15 MB).

#![allow(clippy::unwrap_used)] // test code: a failed set-up step should just fail

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::fault_injection::committed;

const MB: u64 = 1024 * 1024;

/// Odd constants below 2^47: `id * c` cannot overflow for ids below 2^16.
const MULTIPLIERS: [u64; 18] = [
    140_737_488_355_327,
    122_949_823_289_157,
    109_951_162_777_601,
    98_765_432_109_877,
    87_960_930_222_081,
    77_777_777_777_777,
    70_368_744_177_663,
    65_536_000_065_537,
    58_823_529_411_769,
    52_428_800_052_429,
    44_444_444_444_447,
    35_184_372_088_833,
    29_996_224_275_833,
    17_592_186_044_417,
    131_071_000_131_071,
    103_079_215_103_081,
    81_985_529_216_487,
    61_035_156_250_001,
];

/// SQL of the key column `k`: `terms` hex numbers derived from `id`, ~15 digits each.
fn key_expr(terms: usize) -> String {
    let parts: Vec<String> = MULTIPLIERS[..terms]
        .iter()
        .map(|m| format!("to_hex(id * {m})"))
        .collect();
    format!("concat({})", parts.join(", "))
}

fn weir(dir: &Path, rust_log: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_weir"));
    c.args(["run", "job.yaml", "--no-progress"])
        .current_dir(dir)
        .env("RUST_LOG", rust_log)
        .env_remove("WEIR_FAULT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// Runs the job once; panics unless it succeeds. Returns its stderr.
fn run_ok(dir: &Path, rust_log: &str) -> String {
    let out = weir(dir, rust_log).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "the run failed: {}", tail(&err));
    err
}

/// The integer field `field` of every JSON line.
fn ints(lines: &[String], field: &str) -> Vec<i64> {
    lines
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v[field]
                .as_i64()
                .unwrap_or_else(|| panic!("no `{field}` in {l}"))
        })
        .collect()
}

/// Sum of the sizes of the `.sst` files under `dir` (recursively; missing: 0).
fn sst_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            n += sst_bytes(&p);
        } else if p.extension().is_some_and(|x| x == "sst") {
            n += e.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    n
}

/// Completed checkpoints' metadata on disk (`<ckpt>/chk-*/_metadata`), by epoch.
fn metadata_on_disk(job_root: &Path) -> BTreeMap<u64, Value> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(job_root) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(epoch) = name
            .strip_prefix("chk-")
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        // Written atomically (temporary file + rename): readable or absent.
        if let Ok(text) = std::fs::read_to_string(e.path().join("_metadata")) {
            if let Ok(v) = serde_json::from_str::<Value>(&text) {
                out.insert(epoch, v);
            }
        }
    }
    out
}

/// Every file under `dir`, as paths relative to `root`.
fn files_under(root: &Path, dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(root, &p));
        } else {
            out.insert(
                p.strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/"),
            );
        }
    }
    out
}

/// The files of subtask `subtask` of node `node` in a checkpoint's metadata:
/// (name, path, bytes, shared), and the subtask's `uploaded_bytes`.
fn subtask_files(
    meta: &Value,
    node: &str,
    subtask: usize,
) -> (Vec<(String, String, u64, bool)>, u64) {
    let st = &meta["nodes"][node]["subtasks"][subtask];
    let state = &st["state"];
    assert_eq!(
        state["type"], "files",
        "{node}[{subtask}] holds no RocksDB files: {st}"
    );
    let files = state["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["name"].as_str().unwrap().to_string(),
                f["path"].as_str().unwrap().to_string(),
                f["bytes"].as_u64().unwrap(),
                f["shared"].as_bool().unwrap(),
            )
        })
        .collect();
    (files, st["uploaded_bytes"].as_u64().unwrap())
}

// ---------------------------------------------------------------------------------
// 1. State many times the memory budget.

/// 200k rows, ids in [0, 60000), deduplicated by `[id, k]` on RocksDB with a 1 MB
/// budget per subtask at parallelism 2: the dedup output has every id of the input
/// exactly once, and the state really was many times the budget, both in the working
/// directories (SST files, sampled while the job runs) and in the final checkpoint
/// (the only one: the interval is an hour).
#[test]
fn state_many_times_the_memory_budget_dedups_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "name: rocks-big\nparallelism: 2\n\
         state: {{ backend: rocksdb, dir: state, memory_budget: 1MB }}\n\
         checkpoint: {{ interval: 1h, storage: ckpt }}\n\
         sources:\n  gen:\n    type: datagen\n    rows: 200000\n    seed: 3\n\
         \x20   schema: {{ id: int, pad: string }}\n\
         \x20   fields: {{ id: {{ min: 0, max: 59999 }}, pad: {{ length: 16 }} }}\n\
         steps:\n  keyed: {{ from: gen, select: {{ id: id, k: \"{}\" }} }}\n\
         \x20 unique: {{ from: keyed, dedup: {{ key: [id, k] }} }}\n\
         sinks:\n  out: {{ from: unique, type: file, path: out/unique.jsonl }}\n\
         \x20 raw: {{ from: gen, type: file, path: out/raw.jsonl }}\n\
         dead_letter: {{ type: file, path: out/dead_letter.jsonl }}\n",
        key_expr(18)
    );
    std::fs::write(dir.path().join("job.yaml"), yaml).unwrap();

    // Sample the SST files of the working directories while the job runs (they are
    // removed when it ends).
    let state_dir = dir.path().join("state");
    let done = Arc::new(AtomicBool::new(false));
    let max_sst = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (done, max_sst, state_dir) = (done.clone(), max_sst.clone(), state_dir.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                // Only the working databases, not their checkpoint copies.
                let mut n = 0;
                if let Ok(jobs) = std::fs::read_dir(&state_dir) {
                    for j in jobs.flatten() {
                        for db in std::fs::read_dir(j.path()).into_iter().flatten().flatten() {
                            if !db.file_name().to_string_lossy().contains('.') {
                                n += sst_bytes(&db.path());
                            }
                        }
                    }
                }
                max_sst.fetch_max(n, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let started = Instant::now();
    let err = run_ok(dir.path(), "warn");
    done.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    let elapsed = started.elapsed();

    let out = committed(dir.path());
    let raw = ints(&out["raw"], "id");
    assert_eq!(raw.len(), 200_000, "every source row reaches the raw sink");
    let unique = ints(&out["unique"], "id");
    let unique_set: BTreeSet<i64> = unique.iter().copied().collect();
    assert_eq!(
        unique_set.len(),
        unique.len(),
        "an id passed the dedup more than once"
    );
    let raw_set: BTreeSet<i64> = raw.iter().copied().collect();
    assert!(
        raw_set.len() > 50_000,
        "too few distinct ids: {}",
        raw_set.len()
    );
    assert!(
        unique_set == raw_set,
        "the dedup lost {} ids and made up {}",
        raw_set.difference(&unique_set).count(),
        unique_set.difference(&raw_set).count()
    );

    // The final checkpoint holds the whole state: its SST files are the database.
    let meta = metadata_on_disk(&dir.path().join("ckpt/rocks-big"));
    let (_, last) = meta.iter().next_back().expect("no checkpoint written");
    assert_eq!(last["kind"]["type"], "final", "{last}");
    let mut total = 0;
    for s in 0..2 {
        let (files, _) = subtask_files(last, "unique", s);
        let bytes: u64 = files.iter().filter(|f| f.3).map(|f| f.2).sum();
        assert!(
            bytes > 5 * MB,
            "subtask {s}: {bytes} bytes of SST files, not several times its 1 MB budget"
        );
        total += bytes;
    }
    let max_sst = max_sst.load(Ordering::SeqCst);
    eprintln!(
        "state_many_times_the_memory_budget: {elapsed:?}, final state {total} bytes, \
         largest working SST total seen {max_sst} bytes"
    );
    assert!(total > 10 * MB, "state {total} bytes");
    assert!(
        max_sst > 8 * MB,
        "the working databases never held more than {max_sst} bytes of SST files: {}",
        tail(&err)
    );
}

/// Runs the job once and samples its peak resident memory (`VmHWM`) while it runs;
/// panics unless it succeeds. Returns its stderr and the peak in bytes.
fn run_measured(dir: &Path, rust_log: &str) -> (String, u64) {
    let mut child = weir(dir, rust_log).spawn().unwrap();
    let pid = child.id();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut s).unwrap();
        s
    });
    let mut peak = 0u64;
    let status = loop {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            for line in status.lines() {
                if let Some(kb) = line.strip_prefix("VmHWM:") {
                    let kb: u64 = kb.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
                    peak = peak.max(kb * 1024);
                }
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let err = reader.join().unwrap();
    assert!(status.success(), "the run failed: {}", tail(&err));
    (err, peak)
}

/// 250k keys, each in one open tumbling window until the input ends, on RocksDB:
/// without a memory budget every window is in memory; with `memory_budget: 16MB` (8 MB
/// for windows) the coldest keys move to RocksDB. Both runs emit the same 400k rows,
/// and the bounded run's peak memory stays far below the unbounded one's (which grows
/// with the windows).
#[test]
fn windows_beyond_the_memory_budget_keep_memory_bounded() {
    const KEYS: i64 = 250_000;
    let job = |budget: &str| {
        format!(
            "name: rocks-windows\n\
             state: {{ backend: rocksdb, dir: state{budget} }}\n\
             sources:\n  gen:\n    type: datagen\n    rows: {KEYS}\n    seed: 9\n\
             \x20   schema: {{ id: int, v: int, ts: timestamp }}\n\
             \x20   fields: {{ id: {{ sequence: {{ start: 0 }} }}, v: {{ min: 0, max: 9 }} }}\n\
             \x20   event_time: {{ field: ts }}\n\
             steps:\n  w:\n    from: gen\n\
             \x20   window: {{ tumbling: 1h, key: [id], aggregate: {{ n: \"count(*)\", s: \"sum(v)\" }} }}\n\
             sinks:\n  out: {{ from: w, type: file, path: out/w.jsonl }}\n"
        )
    };
    let mut results = Vec::new();
    for budget in ["", ", memory_budget: 16MB"] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("job.yaml"), job(budget)).unwrap();
        let started = Instant::now();
        let (err, peak) = run_measured(dir.path(), "warn,weir_operators::window=debug");
        let out = std::fs::read_to_string(dir.path().join("out/w.jsonl")).unwrap();
        let mut rows: Vec<&str> = out.lines().collect();
        rows.sort_unstable();
        assert_eq!(rows.len(), KEYS as usize, "{budget}: one row per key");
        let moved = err.matches("window keys moved to keyed state").count();
        eprintln!(
            "windows{budget}: peak RSS {} MB, {:?}, {moved} sweeps",
            peak / MB,
            started.elapsed()
        );
        results.push((
            rows.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
            peak,
            moved,
        ));
    }
    let (unbounded, bounded) = (&results[0], &results[1]);
    assert_eq!(unbounded.2, 0, "no budget: nothing moves");
    assert!(bounded.2 > 0, "with a budget: keys moved");
    assert!(unbounded.0 == bounded.0, "the output differs with a budget");
    assert!(
        bounded.1 + 40 * MB < unbounded.1,
        "peak RSS {} MB with a 16 MB budget, {} MB without",
        bounded.1 / MB,
        unbounded.1 / MB
    );
}

// ---------------------------------------------------------------------------------
// 2. Exactly-once with RocksDB.

const EO_JOB: &str = "rocks-eo";

/// A dedup (keyed by `[id, k]`) and a 1-second tumbling count per `g` (window state
/// and timers in the backend) over 30k datagen rows (~1.5 s with `rate`), checkpointing
/// every 20 ms. The source's parallelism stays 2 (a datagen source restores at the
/// same parallelism only); the steps and sinks run at `parallelism`.
fn eo_yaml(parallelism: usize, rocksdb: bool, rate: bool) -> String {
    let state = if rocksdb {
        // 64 KB: 32 KB for open windows, far less than the per-id window's (8000 keys),
        // so its keys keep moving to RocksDB and back while the job is killed.
        "state: { backend: rocksdb, dir: state, memory_budget: 64KB }\n"
    } else {
        ""
    };
    let rate = if rate { "    rate: 20000\n" } else { "" };
    format!(
        "name: {EO_JOB}\nparallelism: {parallelism}\nbatch_size: 64\n{state}\
         checkpoint: {{ interval: 20ms, storage: ckpt, retain: 2 }}\n\
         sources:\n  gen:\n    type: datagen\n    parallelism: 2\n    rows: 30000\n{rate}\
         \x20   seed: 5\n    schema: {{ id: int, g: int, ts: timestamp }}\n\
         \x20   fields: {{ id: {{ min: 0, max: 7999 }}, g: {{ min: 0, max: 49 }} }}\n\
         \x20   event_time: {{ field: ts }}\n\
         steps:\n  keyed: {{ from: gen, select: {{ id: id, k: \"{}\" }} }}\n\
         \x20 unique: {{ from: keyed, dedup: {{ key: [id, k] }} }}\n\
         \x20 counts:\n    from: gen\n\
         \x20   window: {{ tumbling: 1s, key: [g], aggregate: {{ n: \"count(*)\", lo: \"min(id)\", hi: \"max(id)\" }} }}\n\
         \x20 per_id:\n    from: gen\n\
         \x20   window: {{ tumbling: 10s, key: [id], aggregate: {{ n: \"count(*)\", s: \"sum(g)\" }} }}\n\
         sinks:\n  u: {{ from: unique, type: file, path: out/unique.jsonl }}\n\
         \x20 c: {{ from: counts, type: file, path: out/counts.jsonl }}\n\
         \x20 p: {{ from: per_id, type: file, path: out/per_id.jsonl }}\n\
         dead_letter: {{ type: file, path: out/dead_letter.jsonl }}\n",
        key_expr(4)
    )
}

fn eo_dir(parallelism: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("job.yaml"),
        eo_yaml(parallelism, true, true),
    )
    .unwrap();
    dir
}

/// The committed output of a failure-free run with the in-memory backend (and no
/// rate limit), checked against what it must be.
fn eo_reference() -> &'static BTreeMap<String, Vec<String>> {
    static REF: OnceLock<BTreeMap<String, Vec<String>>> = OnceLock::new();
    REF.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("job.yaml"), eo_yaml(2, false, false)).unwrap();
        run_ok(dir.path(), "warn");
        let out = committed(dir.path());
        let ids = ints(&out["unique"], "id");
        let set: BTreeSet<i64> = ids.iter().copied().collect();
        assert_eq!(set.len(), ids.len(), "reference: duplicate ids");
        assert!(set.len() > 7_000, "reference: {} ids", set.len());
        let n: i64 = ints(&out["counts"], "n").iter().sum();
        assert_eq!(n, 30_000, "reference: the windows count every row once");
        assert_eq!(
            out["counts"].len(),
            30 * 50,
            "reference: 30 windows x 50 keys"
        );
        let n: i64 = ints(&out["per_id"], "n").iter().sum();
        assert_eq!(
            n, 30_000,
            "reference: the per-id windows count every row once"
        );
        out
    })
}

/// Log filter of the runs: enough to see how RocksDB state was opened.
const ROCKS_LOG: &str = "warn,weir_engine::state::rocks=debug,weir_operators::window=debug";

/// Completed periodic checkpoints of the job.
fn completed_checkpoints(dir: &Path) -> BTreeMap<u64, Value> {
    metadata_on_disk(&dir.join("ckpt").join(EO_JOB))
        .into_iter()
        .filter(|(_, m)| m["kind"]["type"] == "checkpoint")
        .collect()
}

/// One run killed by `WEIR_FAULT=fault`; returns its stderr.
fn run_killed(dir: &Path, fault: &str) -> String {
    let out = weir(dir, ROCKS_LOG)
        .env("WEIR_FAULT", fault)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.signal(),
        Some(9),
        "{fault}: the run was not killed at the crash point ({}): {}",
        out.status,
        tail(&err)
    );
    err
}

/// Restarts the job (no crash point) and lets it finish; returns its stderr.
fn restart_to_end(dir: &Path) -> String {
    run_ok(dir, ROCKS_LOG)
}

/// The end of a (long) log, for assertion messages.
fn tail(log: &str) -> &str {
    let mut start = log.len().saturating_sub(3000);
    while !log.is_char_boundary(start) {
        start += 1;
    }
    &log[start..]
}

/// Panics with a short account of the difference when `got` is not `want`: per sink,
/// how many lines are missing and how many extra (duplicated), with a few of each.
fn assert_same_output(
    got: &BTreeMap<String, Vec<String>>,
    want: &BTreeMap<String, Vec<String>>,
    what: &str,
) {
    if got == want {
        return;
    }
    let mut msg = format!("{what}: committed output differs from the reference\n");
    let sinks: BTreeSet<&String> = got.keys().chain(want.keys()).collect();
    for sink in sinks {
        let (g, w) = (
            got.get(sink).cloned().unwrap_or_default(),
            want.get(sink).cloned().unwrap_or_default(),
        );
        let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
        for l in &g {
            *counts.entry(l).or_default() += 1;
        }
        for l in &w {
            *counts.entry(l).or_default() -= 1;
        }
        let extra: Vec<&str> = counts
            .iter()
            .filter(|(_, &c)| c > 0)
            .map(|(l, _)| *l)
            .collect();
        let missing: Vec<&str> = counts
            .iter()
            .filter(|(_, &c)| c < 0)
            .map(|(l, _)| *l)
            .collect();
        msg.push_str(&format!(
            "  {sink}: {} lines, want {}; {} extra {:?}; {} missing {:?}\n",
            g.len(),
            w.len(),
            extra.len(),
            &extra[..extra.len().min(3)],
            missing.len(),
            &missing[..missing.len().min(3)],
        ));
    }
    panic!("{msg}");
}

/// Kills the job at `point:n` for each `n`, restarts it to the end and compares the
/// committed output with the in-memory reference. With `deep`, the kill must come
/// after a completed checkpoint; whenever one completed, the restart must have opened
/// the RocksDB files of the checkpoint (same parallelism: no import).
fn crash_and_compare(point: &str, occurrences: &[(u64, bool)]) {
    let want = eo_reference();
    for &(n, deep) in occurrences {
        let fault = format!("{point}:{n}");
        let dir = eo_dir(2);
        run_killed(dir.path(), &fault);
        let restored = !completed_checkpoints(dir.path()).is_empty();
        assert!(
            restored || !deep,
            "{fault}: no checkpoint completed before the kill; pick a later occurrence"
        );
        let err = restart_to_end(dir.path());
        assert_same_output(&committed(dir.path()), want, &fault);
        assert!(!err.contains("ERROR"), "{fault}: {}", tail(&err));
        assert!(
            err.contains("window keys moved to keyed state"),
            "{fault}: the per-id window never moved keys out of its 32 KB: {}",
            tail(&err)
        );
        if restored {
            assert!(
                err.contains("opened restored rocksdb state backend"),
                "{fault}: the restart did not open the checkpoint's RocksDB files: {}",
                tail(&err)
            );
        }
    }
}

// Occurrences: the ones of the issue, which may come before the first checkpoint
// completes (the restart then starts over), and later ones that come after one (the
// restart opens its RocksDB files). A full run reaches `processing` ~1000 times (a
// batch at a sink), `checkpoint_write` 9 times per checkpoint (once per task; the
// 10th comes after checkpoint 1 completed, as one checkpoint is in flight at a time),
// `before_commit` once and `during_commit` up to 4 times per checkpoint.

#[test]
fn rocksdb_exactly_once_crash_during_processing() {
    crash_and_compare("processing", &[(3, false), (400, true)]);
}

#[test]
fn rocksdb_exactly_once_crash_while_writing_a_checkpoint() {
    crash_and_compare("checkpoint_write", &[(3, false), (14, true)]);
}

#[test]
fn rocksdb_exactly_once_crash_before_commit() {
    crash_and_compare("before_commit", &[(2, true), (4, true)]);
}

#[test]
fn rocksdb_exactly_once_crash_during_commit() {
    crash_and_compare("during_commit", &[(2, true), (6, true)]);
}

/// Killed at parallelism 2, restarted at 3 (each new subtask imports the key-group
/// range it owns from the old subtasks' files), killed again after a checkpoint at 3,
/// finished at 2 (a subtask imports two old ones' ranges); each kill comes after a
/// checkpoint's metadata is written and before the sinks commit it. The output is
/// still that of the failure-free reference.
#[test]
fn rocksdb_exactly_once_across_rescaling() {
    let want = eo_reference();
    let dir = eo_dir(2);
    let d = dir.path();
    // Killed after the metadata of checkpoint 3 is written, before the sinks commit
    // it: the next run, at another parallelism, commits it.
    run_killed(d, "before_commit:3");
    let before = completed_checkpoints(d);
    assert!(!before.is_empty(), "no checkpoint at parallelism 2");

    std::fs::write(d.join("job.yaml"), eo_yaml(3, true, true)).unwrap();
    let err_3 = run_killed(d, "before_commit:2");
    let at3 = completed_checkpoints(d);
    let (_, latest) = at3.iter().next_back().unwrap();
    assert_eq!(
        latest["nodes"]["unique"]["parallelism"], 3,
        "no checkpoint completed at parallelism 3"
    );
    assert_eq!(latest["nodes"]["counts"]["parallelism"], 3);

    std::fs::write(d.join("job.yaml"), eo_yaml(2, true, true)).unwrap();
    let err_2 = restart_to_end(d);
    assert_same_output(&committed(d), want, "rescaled 2 -> 3 -> 2");
    for (what, err) in [("2 -> 3", &err_3), ("3 -> 2", &err_2)] {
        assert!(
            err.contains("imported rocksdb state"),
            "{what} did not import key-group ranges: {}",
            tail(err)
        );
    }
}

// ---------------------------------------------------------------------------------
// 3. Incremental checkpoints and retention at job level.

const INC_JOB: &str = "rocks-incremental";

/// `seed` produces every id in [0, 5000) once within ~0.5 s, so the dedup state grows
/// over several checkpoints (RocksDB flushes and compacts); `more` runs ~2 s at the
/// same time with ids from the same range, so once `seed` is done the state no longer
/// changes while the job goes on checkpointing. The rates are low so that the job
/// keeps checkpointing every ~20-50 ms even when the machine is busy.
fn inc_yaml() -> String {
    format!(
        "name: {INC_JOB}\nparallelism: 2\nbatch_size: 256\n\
         state: {{ backend: rocksdb, dir: state, memory_budget: 1MB }}\n\
         checkpoint: {{ interval: 20ms, storage: ckpt, retain: 2 }}\n\
         sources:\n\
         \x20 seed:\n    type: datagen\n    parallelism: 1\n    rate: 10000\n\
         \x20   schema: {{ id: int }}\n    fields: {{ id: {{ sequence: {{ start: 0, end: 4999 }} }} }}\n\
         \x20 more:\n    type: datagen\n    parallelism: 2\n    rows: 10000\n    rate: 5000\n\
         \x20   schema: {{ id: int }}\n    fields: {{ id: {{ min: 0, max: 4999 }} }}\n\
         steps:\n  both: {{ from: [seed, more], union: {{}} }}\n\
         \x20 keyed: {{ from: both, select: {{ id: id, k: \"{}\" }} }}\n\
         \x20 unique: {{ from: keyed, dedup: {{ key: [id, k] }} }}\n\
         sinks:\n  u: {{ from: unique, type: file, path: out/unique.jsonl }}\n\
         dead_letter: {{ type: file, path: out/dead_letter.jsonl }}\n",
        key_expr(10)
    )
}

/// Private files of a RocksDB checkpoint: not SST files.
fn is_private_name(name: &str) -> bool {
    name == "CURRENT"
        || name.starts_with("MANIFEST-")
        || name.starts_with("OPTIONS-")
        || name.ends_with(".log")
}

#[test]
fn rocksdb_checkpoints_upload_only_changes_and_retention_keeps_shared_files_exact() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    std::fs::write(d.join("job.yaml"), inc_yaml()).unwrap();
    let root = d.join("ckpt").join(INC_JOB);

    // Retention deletes all but two checkpoints: collect every `_metadata` while it
    // exists (each lives for at least two more checkpoint intervals).
    let seen: Arc<Mutex<BTreeMap<u64, Value>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (seen, done, root) = (seen.clone(), done.clone(), root.clone());
        std::thread::spawn(move || loop {
            let finished = done.load(Ordering::SeqCst);
            let found = metadata_on_disk(&root);
            seen.lock().unwrap().extend(found);
            if finished {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        })
    };
    let started = Instant::now();
    run_ok(&d, "warn");
    done.store(true, Ordering::SeqCst);
    watcher.join().unwrap();
    let elapsed = started.elapsed();

    // The output: every id exactly once.
    let mut ids = ints(&committed(&d)["unique"], "id");
    ids.sort_unstable();
    assert!(
        ids == (0..5_000).collect::<Vec<i64>>(),
        "the dedup output is not every id of [0, 5000) once: {} rows",
        ids.len()
    );

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let epochs: Vec<u64> = seen.keys().copied().collect();
    let last = *epochs.last().unwrap();
    assert_eq!(
        epochs,
        (1..=last).collect::<Vec<u64>>(),
        "the watcher missed a checkpoint (or one was aborted)"
    );
    assert_eq!(seen[&last]["kind"]["type"], "final");

    let mut report = Vec::new();
    for s in 0..2 {
        // Every shared file (by path) with the first checkpoint referring to it.
        let mut first_seen: BTreeMap<String, u64> = BTreeMap::new();
        let mut prev_shared: Vec<BTreeSet<String>> = Vec::new();
        let mut unchanged = 0;
        let mut stable_shared_bytes = 0;
        let mut history = Vec::new();
        for (&epoch, meta) in &seen {
            if meta["kind"]["type"] != "checkpoint" {
                continue;
            }
            let (files, uploaded) = subtask_files(meta, "unique", s);
            // The task had finished: its final state stands in, nothing uploaded.
            if files.iter().any(|f| !f.3 && f.1.starts_with("final/")) {
                continue;
            }
            let shared: BTreeSet<String> =
                files.iter().filter(|f| f.3).map(|f| f.1.clone()).collect();
            let private: u64 = files.iter().filter(|f| !f.3).map(|f| f.2).sum();
            for f in &files {
                assert_eq!(f.3, f.1.starts_with("shared/unique/"), "{epoch}: {f:?}");
                assert_eq!(f.3, f.0.ends_with(".sst"), "{epoch}: {f:?}");
                if !f.3 {
                    assert!(is_private_name(&f.0), "{epoch}: unexpected file {f:?}");
                }
            }
            // Files referenced for the first time were uploaded by this checkpoint.
            let new: u64 = files
                .iter()
                .filter(|f| f.3 && !first_seen.contains_key(&f.1))
                .map(|f| f.2)
                .sum();
            for f in files.iter().filter(|f| f.3) {
                first_seen.entry(f.1.clone()).or_insert(epoch);
            }
            assert!(
                uploaded >= private + new,
                "subtask {s} checkpoint {epoch}: uploaded {uploaded} bytes, but its new \
                 SST files ({new} bytes) and private files ({private}) are more"
            );
            // State unchanged since the two checkpoints before: only private files.
            let n = prev_shared.len();
            if n >= 2 && prev_shared[n - 1] == shared && prev_shared[n - 2] == shared {
                unchanged += 1;
                stable_shared_bytes = files.iter().filter(|f| f.3).map(|f| f.2).sum();
                assert_eq!(
                    uploaded, private,
                    "subtask {s} checkpoint {epoch}: state unchanged, yet more than the \
                     private files was uploaded"
                );
                assert!(
                    uploaded < 32 * 1024,
                    "subtask {s} checkpoint {epoch}: {uploaded} bytes of private files"
                );
            }
            history.push(format!(
                "#{epoch}: uploaded {uploaded}, {} SST files of {} bytes",
                shared.len(),
                files.iter().filter(|f| f.3).map(|f| f.2).sum::<u64>()
            ));
            prev_shared.push(shared);
        }
        assert!(
            unchanged >= 3,
            "subtask {s}: only {unchanged} checkpoints of an unchanged state: {history:#?}"
        );
        assert!(
            stable_shared_bytes > 200 * 1024,
            "subtask {s}: the stable state is only {stable_shared_bytes} bytes"
        );
        report.push(format!(
            "subtask {s}: {} SST files over the run, {unchanged} unchanged checkpoints \
             of {stable_shared_bytes} bytes",
            first_seen.len()
        ));
    }

    // Retention: two checkpoints left, and `shared/` is exactly what they refer to.
    let kept = metadata_on_disk(&root);
    assert_eq!(
        kept.keys().copied().collect::<Vec<_>>(),
        vec![last - 1, last],
        "retain: 2"
    );
    let mut referenced: BTreeSet<String> = BTreeSet::new();
    for meta in kept.values() {
        for node in meta["nodes"].as_object().unwrap().values() {
            for st in node["subtasks"].as_array().unwrap() {
                for f in st["state"]["files"].as_array().into_iter().flatten() {
                    referenced.insert(f["path"].as_str().unwrap().to_string());
                }
            }
        }
    }
    let on_disk = files_under(&root, &root);
    for p in &referenced {
        assert!(
            on_disk.contains(p),
            "a kept checkpoint refers to a missing {p}"
        );
    }
    let shared_on_disk: BTreeSet<&String> = on_disk
        .iter()
        .filter(|p| p.starts_with("shared/"))
        .collect();
    let shared_referenced: BTreeSet<&String> = referenced
        .iter()
        .filter(|p| p.starts_with("shared/"))
        .collect();
    assert_eq!(
        shared_on_disk, shared_referenced,
        "shared/ differs from what the kept checkpoints refer to"
    );
    // Retention did delete SST files that only older checkpoints referred to
    // (compactions replaced them while the state grew).
    let ever: BTreeSet<String> = seen
        .values()
        .flat_map(|m| {
            (0..2).flat_map(|s| {
                subtask_files(m, "unique", s)
                    .0
                    .into_iter()
                    .filter(|f| f.3)
                    .map(|f| f.1)
            })
        })
        .collect();
    let deleted = ever.iter().filter(|p| !on_disk.contains(*p)).count();
    // Whether RocksDB compacted (replacing SST files) during the run depends on timing,
    // so dropped files are reported, not required; the storage unit tests
    // (`retention_*`) check deletion exactly. What must hold always is above: `shared/`
    // holds exactly what the kept checkpoints refer to.
    eprintln!(
        "rocksdb incremental: {elapsed:?}, {} checkpoints, {deleted} of {} shared files \
         deleted by retention; {}",
        epochs.len(),
        ever.len(),
        report.join("; ")
    );
}
