//! The rough edges a new user meets in the first hour, each pinned by a test of the
//! `weir` binary: where a job keeps its checkpoints, what a second run and `--fresh` say
//! and do, what the summary says, how logs look off a terminal, one error for one
//! failure, the messages of bad formats, SQL and pids, and `--version`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs the binary in `cwd` with `args`; (exit code, stdout, stderr).
fn weir_in(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.args(args).current_dir(cwd).env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out: Output = cmd.output().expect("run weir");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A job folder: `jobs/job.yaml` reading `jobs/data/in.jsonl` (20 records, 2 of them
/// malformed), counting per service into `out/counts.jsonl`, checkpointing when
/// `checkpoint` is set.
fn job_folder(root: &Path, checkpoint: bool) -> PathBuf {
    let dir = root.join("jobs");
    std::fs::create_dir_all(dir.join("data")).expect("mkdir");
    let mut lines = String::new();
    for i in 0..18 {
        lines.push_str(&format!(
            "{{\"ts\": \"2024-06-01T09:00:{i:02}Z\", \"service\": \"s{}\", \"level\": \"ERROR\"}}\n",
            i % 3
        ));
    }
    lines.push_str("not json\n{\"ts\": \"later\", \"service\": \"x\", \"level\": \"ERROR\"}\n");
    std::fs::write(dir.join("data/in.jsonl"), lines).expect("input");
    let ckpt = if checkpoint {
        "checkpoint: { interval: 1s }\n"
    } else {
        ""
    };
    std::fs::write(
        dir.join("job.yaml"),
        format!(
            "name: first-hour\n{ckpt}sources:\n  logs:\n    type: file\n    path: data/in.jsonl\n\
             \x20   format: json\n    schema: {{ ts: timestamp, service: string, level: string }}\n\
             \x20   event_time: {{ field: ts }}\n\
             steps:\n  counts:\n    from: logs\n\
             \x20   window: {{ tumbling: 1m, key: [service], aggregate: {{ n: \"count(*)\" }} }}\n\
             sinks:\n  out: {{ from: counts, type: file, path: out/counts.jsonl }}\n"
        ),
    )
    .expect("job");
    dir
}

/// The published output files of `dir/out`, sorted, with their contents.
fn outputs(dir: &Path) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(dir.join("out"))
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        std::fs::read_to_string(e.path()).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn sorted_lines(files: &[(String, String)]) -> Vec<String> {
    let mut lines: Vec<String> = files
        .iter()
        .filter(|(name, _)| !name.starts_with('.'))
        .flat_map(|(_, text)| {
            text.lines()
                .map(crate::common::without_time)
                .collect::<Vec<_>>()
        })
        .collect();
    lines.sort();
    lines
}

#[test]
fn a_second_run_says_it_resumes_and_fresh_starts_over_without_duplicates() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = job_folder(tmp.path(), true);
    let job = dir.join("job.yaml");
    let job = job.to_str().expect("utf8");

    let (code, _, err) = weir_in(tmp.path(), &["run", job], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        !err.contains("resuming"),
        "a first run resumes nothing: {err}"
    );
    let first = outputs(&dir);
    assert_eq!(sorted_lines(&first).len(), 3, "{first:?}");

    // Checkpoints follow the job file, like its outputs: not the working directory.
    assert!(dir.join(".weir/checkpoints/first-hour").is_dir());
    assert!(!tmp.path().join(".weir/checkpoints").exists());

    // Run again from another working directory: the same checkpoints, and the terminal
    // says why nothing is read.
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).expect("mkdir");
    let (code, _, err) = weir_in(&elsewhere, &["run", job], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("resuming from checkpoint")
            && err.contains("already finished")
            && err.contains("--fresh"),
        "{err}"
    );
    assert!(err.contains("0 records read"), "{err}");
    assert!(err.contains("nothing new to read"), "summary too: {err}");
    assert!(!elsewhere.join(".weir").exists(), "nothing in the cwd");
    assert_eq!(
        outputs(&dir),
        first,
        "a resumed finished job writes nothing"
    );

    // --fresh says what it clears and leaves no duplicate parts beside the new ones.
    let (code, _, err) = weir_in(&elsewhere, &["run", job, "--fresh"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("fresh start: deleted") && err.contains("checkpoint(s)"),
        "{err}"
    );
    assert!(err.contains("earlier output file(s) of `out`"), "{err}");
    assert!(
        err.contains("earlier output file(s) of `dead_letter`"),
        "{err}"
    );
    assert!(err.contains("20 records read"), "{err}");
    let again = outputs(&dir);
    assert_eq!(
        sorted_lines(&again),
        sorted_lines(&first),
        "same rows, once each"
    );
    assert_eq!(again.len(), first.len(), "no part files side by side");
}

#[test]
fn the_summary_says_where_output_and_dead_letters_went() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = job_folder(tmp.path(), false);
    let (code, _, err) = weir_in(&dir, &["run", "job.yaml"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("output out: 3 rows -> out/counts.jsonl"),
        "{err}"
    );
    assert!(
        err.contains("dead letters: 2 -> .weir/first-hour/dead_letter.jsonl"),
        "{err}"
    );
    let dead = std::fs::read_to_string(dir.join(".weir/first-hour/dead_letter.jsonl"))
        .expect("dead letters where the summary says");
    assert_eq!(dead.lines().count(), 2);

    // With checkpoints the output is one file per subtask and checkpoint.
    let dir = job_folder(&tmp.path().join("b"), true);
    let (code, _, err) = weir_in(&dir, &["run", "job.yaml"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(
            "output out: 3 rows -> out/counts-*-*.jsonl (one file per subtask and checkpoint)"
        ),
        "{err}"
    );
}

#[test]
fn logs_have_no_colour_off_a_terminal_and_can_be_json() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = job_folder(tmp.path(), false);
    let (code, _, err) = weir_in(&dir, &["run", "job.yaml"], &[("RUST_LOG", "info")]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("job started"), "info lines are there: {err}");
    assert!(
        !err.contains('\u{1b}'),
        "no ANSI escapes in a pipe: {err:?}"
    );

    let (code, _, err) = weir_in(
        &dir,
        &["--log-format", "json", "run", "job.yaml"],
        &[("RUST_LOG", "info")],
    );
    assert_eq!(code, 0, "{err}");
    let logs: Vec<serde_json::Value> = err
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("each log line is JSON"))
        .collect();
    assert!(
        logs.iter()
            .any(|l| l["fields"]["message"] == "job started" && l["level"] == "INFO"),
        "{err}"
    );
    assert!(!err.contains('\u{1b}'), "{err:?}");
}

#[test]
fn an_unwritable_output_gives_one_error_the_real_one() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = job_folder(tmp.path(), false);
    // `out` is a file, so `out/counts.jsonl` cannot be created (a permission check
    // would not stop root, who runs CI).
    std::fs::write(dir.join("out"), "in the way").expect("file");
    let (code, _, err) = weir_in(&dir, &["run", "job.yaml"], &[]);
    assert_eq!(code, 1, "{err}");
    let errors: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("error") || l.contains("ERROR"))
        .collect();
    assert_eq!(errors.len(), 1, "one error: {err}");
    assert!(
        errors[0].contains("out is a file, not a directory"),
        "names the path and what is wrong: {err}"
    );
    assert!(!err.contains("downstream"), "not the consequence: {err}");
}

#[test]
fn bad_formats_sql_and_types_are_worded_for_the_user() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = job_folder(tmp.path(), false);
    let job = std::fs::read_to_string(dir.join("job.yaml")).expect("job");
    let check = |yaml: String, want: &[&str]| {
        std::fs::write(dir.join("bad.yaml"), yaml).expect("write");
        let (code, _, err) = weir_in(&dir, &["validate", "bad.yaml"], &[]);
        assert_eq!(code, 2, "{err}");
        for w in want {
            assert!(err.contains(w), "want `{w}` in: {err}");
        }
        assert!(!err.contains("ParserError"), "{err}");
        assert!(!err.contains("Utf8"), "{err}");
    };
    check(
        job.replace(
            "path: out/counts.jsonl",
            "path: out/counts.jsonl, format: parquet",
        ),
        &["sinks.out.format: expected one of: jsonl, csv; found the string `parquet`"],
    );
    let with_step = |step: &str| {
        job.replace(
            "sinks:\n  out: { from: counts",
            &format!("  extra: {{ from: logs, {step} }}\nsinks:\n  out: {{ from: extra"),
        )
    };
    check(
        with_step("filter: \"level =\""),
        &[
            "steps.extra.filter: expression `level =`",
            "syntax error: expected an expression, found the end of the expression",
        ],
    );
    check(
        with_step("select: { x: \"service + 1\" }"),
        &[
            "steps.extra.select.x",
            "type error: `+` cannot combine a string and an int",
        ],
    );
}

#[test]
fn savepoint_of_a_process_that_is_not_there_is_a_clear_error() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = job_folder(tmp.path(), true);
    // No process has a pid this large (Linux caps pids at 2^22).
    let (code, out, err) = weir_in(
        &dir,
        &[
            "savepoint",
            "job.yaml",
            "--pid",
            "99999999",
            "--timeout-secs",
            "1",
        ],
        &[],
    );
    assert_eq!(code, 1, "not an invalid job (2): {err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("cannot signal process 99999999: no such process"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!err.contains("kill:"), "no raw output of `kill`: {err}");
}

#[test]
fn version_names_the_commit() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (code, out, err) = weir_in(tmp.path(), &["--version"], &[]);
    assert_eq!(code, 0, "{err}");
    let line = out.trim_end();
    assert!(
        line.starts_with(&format!("weir {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{line}"
    );
    let commit = line
        .rsplit_once("(commit ")
        .and_then(|(_, c)| c.strip_suffix(')'))
        .expect("a commit");
    assert!(
        commit == "unknown" || commit.chars().all(|c| c.is_ascii_hexdigit()),
        "{commit}"
    );
}
