//! Faults an operator meets in production, each turned from a warning (or a silent
//! wait) into a clear outcome: a checkpoint store that keeps failing fails the job, an
//! S3 endpoint that never answers fails start-up in seconds with a log line per retry,
//! and a write error (a full disk) leaves no hidden in-progress file behind.

#![allow(clippy::unwrap_used)] // test code: a failed set-up step should just fail

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn weir(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_weir"));
    c.current_dir(dir).env_remove("RUST_LOG");
    c
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_checkpoint_store_that_keeps_failing_fails_the_job() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("job.yaml"),
        "name: failing-store\n\
         checkpoint: { interval: 100ms, storage: store, tolerable_failures: 2 }\n\
         sources:\n  g: { type: datagen, rate: 2000, seed: 1, schema: { id: int } }\n\
         sinks:\n  out: { from: g, type: file, path: out/rows.jsonl }\n",
    )
    .unwrap();
    std::fs::create_dir_all(tmp.path().join("store")).unwrap();
    let mut child = weir(tmp.path())
        .args(["run", "job.yaml", "--no-progress"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Let it start (and complete a checkpoint or two), then break the store: a file
    // where its directory was, so every upload fails (root ignores permissions).
    std::thread::sleep(Duration::from_millis(600));
    assert!(child.try_wait().unwrap().is_none(), "still running");
    std::fs::remove_dir_all(tmp.path().join("store")).unwrap();
    std::fs::write(tmp.path().join("store"), "not a directory").unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("the job ran on with a broken checkpoint store");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let err = text(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("3 checkpoints in a row failed") && err.contains("tolerable_failures"),
        "{err}"
    );
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "{err}"
    );
}

#[test]
fn an_s3_endpoint_that_never_answers_fails_start_up_in_seconds_and_logs_retries() {
    // Accepts connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("job.yaml"),
        format!(
            "name: stalled-s3\n\
             checkpoint:\n  interval: 1s\n  storage: s3://bucket/weir\n\
             \x20 s3: {{ endpoint: \"http://127.0.0.1:{port}\", path_style: true, allow_http: true,\n\
             \x20       access_key_id: k, secret_access_key: s, request_timeout: 500ms, connect_timeout: 500ms }}\n\
             sources:\n  g: {{ type: datagen, rows: 10, schema: {{ id: int }} }}\n\
             sinks:\n  out: {{ from: g, type: file, path: out/rows.jsonl }}\n"
        ),
    )
    .unwrap();
    let start = Instant::now();
    let out = weir(tmp.path())
        .args(["run", "job.yaml", "--no-progress"])
        .output()
        .unwrap();
    let took = start.elapsed();
    let err = text(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("s3://bucket/weir"), "names the store: {err}");
    assert!(err.contains("retry"), "says it retries: {err}");
    assert!(took < Duration::from_secs(30), "took {took:?}: {err}");
}

#[test]
fn a_write_error_leaves_no_in_progress_file_behind() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("job.yaml"),
        "name: full-disk\n\
         sources:\n  g: { type: datagen, rows: 200000, seed: 1, schema: { id: int, s: string } }\n\
         sinks:\n  out: { from: g, type: file, path: out/rows.jsonl }\n",
    )
    .unwrap();
    // A file-size limit makes writes past 256 KiB fail (EFBIG), as a full disk would
    // (ENOSPC); SIGXFSZ is ignored so that the write returns the error.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "trap '' XFSZ; exec prlimit --fsize=262144 {} run job.yaml --no-progress",
            env!("CARGO_BIN_EXE_weir")
        ))
        .current_dir(tmp.path())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let err = text(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("File too large"), "{err}");
    let left: Vec<String> = std::fs::read_dir(tmp.path().join("out"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.is_empty(), "nothing left behind: {left:?}");
}
