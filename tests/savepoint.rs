//! Savepoints and stopping: `weir savepoint FILE --pid PID` takes a savepoint of a
//! running job; `weir run --restore PATH -p N` resumes from it at another parallelism;
//! Ctrl-C (SIGINT) of a checkpointing job stops after a checkpoint that the next run
//! resumes from, exactly once.

#![allow(clippy::unwrap_used)] // test code: a failed set-up step should just fail

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::fault_injection::{committed, job_yaml, reference, setup};

fn weir(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_weir"));
    c.args(args).current_dir(dir).env("RUST_LOG", "warn");
    c
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

fn run_to_end(dir: &Path) -> String {
    let out = weir(dir, &["run", "job.yaml", "--no-progress"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    err
}

#[test]
fn ctrl_c_stops_after_a_checkpoint_and_the_next_run_resumes_exactly_once() {
    let reference = reference("spike", 2, 21);
    let dir = setup("spike", 2, 21);
    let child = weir(dir.path(), &["run", "job.yaml", "--no-progress"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    signal(child.id(), "-INT");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("stopped after checkpoint"), "{err}");
    let err = run_to_end(dir.path());
    let read: u64 = err
        .split(" records read")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(read > 0, "the second run had input left to read: {err}");
    assert_eq!(committed(dir.path()), reference);
}

#[test]
fn savepoint_of_a_running_job_restores_at_another_parallelism() {
    let reference = reference("spike", 2, 22);
    let dir = setup("spike", 2, 22);
    let mut child = weir(dir.path(), &["run", "job.yaml", "--no-progress"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let out = weir(
        dir.path(),
        &["savepoint", "job.yaml", "--pid", &child.id().to_string()],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(path.contains("/savepoints/savepoint-"), "{path}");
    assert!(started.elapsed() < Duration::from_secs(30));
    child.kill().unwrap();
    child.wait().unwrap();
    let local = path.trim_start_matches("file://").to_string();
    assert!(Path::new(&local).join("_metadata").exists(), "{local}");

    // Resume from the savepoint with 3 subtasks instead of 2: key groups and files are
    // redistributed. Output committed after the savepoint is produced again (the
    // savepoint is older than it), so compare as sets: nothing is lost or changed.
    std::fs::write(dir.path().join("job.yaml"), job_yaml("spike", 3)).unwrap();
    let out = weir(
        dir.path(),
        &["run", "job.yaml", "--no-progress", "--restore", &local],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = committed(dir.path());
    for (sink, lines) in &reference {
        let want: BTreeSet<&String> = lines.iter().collect();
        let have: BTreeSet<&String> = got.get(sink).into_iter().flatten().collect();
        assert_eq!(have, want, "sink {sink}");
    }
}
