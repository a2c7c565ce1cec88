//! Stopping under load: SIGINT and SIGTERM, sent to `weir run` while an unbounded job
//! writes as fast as it can, are honoured every time (never lost, whatever the run loop
//! was doing): the job stops within its grace time, publishes, prints the summary and
//! exits 0; a second signal aborts with 128 + the signal's number.

#![allow(clippy::unwrap_used)] // test code: a failed set-up step should just fail

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// An unbounded generator writing to a file sink as fast as it can, with checkpoints
/// every `checkpoint` when given.
fn job(dir: &Path, checkpoint: Option<&str>) {
    let ckpt = checkpoint
        .map(|i| format!("checkpoint: {{ interval: {i} }}\n"))
        .unwrap_or_default();
    std::fs::write(
        dir.join("job.yaml"),
        format!(
            "name: load\n{ckpt}sources:\n  g: {{ type: datagen, seed: 7, schema: {{ id: int, s: string }} }}\n\
             sinks:\n  out: {{ from: g, type: file, path: out/rows.jsonl }}\n"
        ),
    )
    .unwrap();
}

fn spawn(dir: &Path, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "job.yaml", "--no-progress"])
        .args(extra)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

/// Waits until the job has written something (it is under load), up to a minute.
fn wait_for_output(dir: &Path, child: &mut Child) {
    let start = Instant::now();
    loop {
        let busy = std::fs::read_dir(dir.join("out"))
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.metadata().map(|m| m.len() > 0).unwrap_or(false))
            })
            .unwrap_or(false);
        if busy {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the job ended before it was signalled: {status}");
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no output");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for the child to exit, at most `limit`; its exit code and stderr. A child
/// still running after `limit` is killed and the test fails: the signal was lost.
fn exit_within(mut child: Child, limit: Duration) -> (i32, String) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                e.read_to_string(&mut err).unwrap();
            }
            return (status.code().unwrap_or(-1), err);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("the job did not stop within {limit:?} of the signal: {err}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The published files of `dir/out` (not hidden ones) and their lines.
fn published_lines(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("out"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .map(|e| {
                    std::fs::read_to_string(e.path())
                        .unwrap_or_default()
                        .lines()
                        .count()
                })
                .sum()
        })
        .unwrap_or(0)
}

fn stops_every_time(sig: &str, checkpoint: Option<&str>, runs: usize) {
    for run in 0..runs {
        let tmp = tempfile::tempdir().unwrap();
        job(tmp.path(), checkpoint);
        let mut child = spawn(tmp.path(), &["--stop-timeout", "60s"]);
        wait_for_output(tmp.path(), &mut child);
        // Vary the moment within the run.
        std::thread::sleep(Duration::from_millis(17 * (run as u64 % 7)));
        signal(&child, sig);
        let (code, err) = exit_within(child, Duration::from_secs(90));
        assert_eq!(code, 0, "run {run}, {sig}: {err}");
        assert!(err.contains("stopping (SIG"), "run {run}: {err}");
        assert!(
            err.contains("job load finished"),
            "summary, run {run}: {err}"
        );
        let hidden_left = std::fs::read_dir(tmp.path().join("out"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".inprogress"))
            .count();
        assert_eq!(hidden_left, 0, "run {run}: everything published");
        assert!(
            published_lines(tmp.path()) > 0,
            "run {run}: output published"
        );
        if checkpoint.is_some() {
            assert!(err.contains("stopped after checkpoint"), "run {run}: {err}");
        }
    }
}

#[test]
fn sigint_under_load_always_drains_and_publishes() {
    stops_every_time("-INT", None, 8);
}

#[test]
fn sigterm_under_load_always_drains_and_publishes() {
    stops_every_time("-TERM", None, 8);
}

#[test]
fn sigterm_with_checkpoints_stops_after_a_checkpoint_every_time() {
    stops_every_time("-TERM", Some("1s"), 5);
}

/// A job whose checkpoints all fail once it runs (its store is replaced by a file), so
/// that a stop with a checkpoint can never complete.
fn unstoppable(dir: &Path, extra: &[&str]) -> Child {
    std::fs::write(
        dir.join("job.yaml"),
        "name: load\ncheckpoint: { interval: 1s, storage: blocked/ckpt, tolerable_failures: 1000 }\n\
         sources:\n  g: { type: datagen, seed: 7, schema: { id: int } }\n\
         sinks:\n  out: { from: g, type: file, path: out/rows.jsonl }\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("blocked")).unwrap();
    let mut child = spawn(dir, extra);
    std::thread::sleep(Duration::from_millis(500));
    if let Some(status) = child.try_wait().unwrap() {
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        panic!("ended early ({status}): {err}");
    }
    std::fs::remove_dir_all(dir.join("blocked")).unwrap();
    std::fs::write(dir.join("blocked"), "not a directory").unwrap();
    child
}

#[test]
fn a_second_signal_aborts_with_the_signal_exit_code() {
    for (sig, name, code) in [("-INT", "SIGINT", 130), ("-TERM", "SIGTERM", 143)] {
        let tmp = tempfile::tempdir().unwrap();
        let mut child = unstoppable(tmp.path(), &[]);
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            use std::io::BufRead;
            let mut all = String::new();
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line.clone());
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        signal(&child, sig);
        // The second signal once the first is being handled (signals sent together
        // may be delivered as one).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("the first signal is acknowledged");
            if line.contains("stopping (") {
                break;
            }
        }
        signal(&child, sig);
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "not aborted");
            std::thread::sleep(Duration::from_millis(10));
        };
        let err = reader.join().unwrap();
        assert_eq!(status.code(), Some(code), "{sig}: {err}");
        assert!(
            err.contains(&format!("aborted by a second {name}")),
            "{err}"
        );
    }
}

#[test]
fn a_stop_that_takes_longer_than_the_grace_time_aborts() {
    let tmp = tempfile::tempdir().unwrap();
    let child = unstoppable(tmp.path(), &["--stop-timeout", "2s"]);
    signal(&child, "-TERM");
    let (code, err) = exit_within(child, Duration::from_secs(60));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("did not stop within 2s"), "{err}");
}
