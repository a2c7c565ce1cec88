//! Checkpoints in S3: the error-spike job of the fault-injection tests keeps its
//! checkpoints on an S3-compatible server (`WEIR_TEST_S3_ENDPOINT`, moto in
//! `scripts/test.sh`); killed after a checkpoint before the sinks committed and in the
//! middle of a commit, then restarted until it finishes, its committed output must equal
//! that of a failure-free run. The bucket must then hold the job's completed checkpoints
//! (`chk-*/_metadata`), no more than `retain`. An unreachable endpoint makes `weir run`
//! fail fast with one error naming it.

#![allow(clippy::unwrap_used)] // test code: a failed set-up step should just fail

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::s3_endpoint;
use crate::fault_injection::{committed, job_yaml, reference, run_to_end, setup, weir_cmd};

const PARALLELISM: usize = 2;
const SEED: u64 = 7;
const RETAIN: usize = 2;
/// The job's name in `job_yaml("spike", _)`, its directory in the store.
const JOB: &str = "fault-spike";

/// A key prefix of its own for each test of each run: the server may be shared.
fn unique_prefix(case: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("s3-checkpoints/{nanos}-{}/{case}", std::process::id())
}

/// The spike job with its checkpoints in `s3://bucket/prefix`.
fn s3_job_yaml(endpoint: &str, bucket: &str, prefix: &str) -> String {
    let local = "storage: ckpt, retain: 2";
    let yaml = job_yaml("spike", PARALLELISM);
    assert!(yaml.contains(local), "job_yaml changed: {yaml}");
    yaml.replace(
        local,
        &format!(
            "storage: \"s3://{bucket}/{prefix}\", retain: {RETAIN}, s3: {{ endpoint: \
             \"{endpoint}\", path_style: true, allow_http: true, access_key_id: test, \
             secret_access_key: test, region: us-east-1 }}"
        ),
    )
}

/// The committed output of a failure-free run (local checkpoints), computed once.
fn want() -> &'static BTreeMap<String, Vec<String>> {
    static WANT: OnceLock<BTreeMap<String, Vec<String>>> = OnceLock::new();
    WANT.get_or_init(|| reference("spike", PARALLELISM, SEED))
}

/// Every key under `prefix` in the bucket (ListObjectsV2, following continuations).
fn list_keys(endpoint: &str, bucket: &str, prefix: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut c = Command::new("curl");
        c.args(["-sS", "-f", "--max-time", "30", "-G"])
            .args(["--data-urlencode", "list-type=2"])
            .args(["--data-urlencode", &format!("prefix={prefix}")]);
        if let Some(t) = &token {
            c.args(["--data-urlencode", &format!("continuation-token={t}")]);
        }
        let out = c.arg(format!("{endpoint}/{bucket}")).output().unwrap();
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "listing {endpoint}/{bucket} failed: {}{body}",
            String::from_utf8_lossy(&out.stderr)
        );
        keys.extend(elements(&body, "Key"));
        if elements(&body, "IsTruncated").first().map(String::as_str) != Some("true") {
            return keys;
        }
        token = elements(&body, "NextContinuationToken").into_iter().next();
        assert!(token.is_some(), "truncated listing without a token: {body}");
    }
}

/// The texts of the XML elements `<name>...</name>` (unescaped), in order.
fn elements(xml: &str, name: &str) -> Vec<String> {
    let (open, close) = (format!("<{name}>"), format!("</{name}>"));
    let mut found = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else { break };
        found.push(
            after[..end]
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&amp;", "&"),
        );
        rest = &after[end + close.len()..];
    }
    found
}

/// The completed checkpoints (`chk-*` with a `_metadata`) of the job under `prefix`.
fn completed_checkpoints(endpoint: &str, bucket: &str, prefix: &str) -> BTreeSet<String> {
    let job_root = format!("{prefix}/{JOB}/");
    let keys = list_keys(endpoint, bucket, &job_root);
    keys.iter()
        .filter_map(|k| k.strip_prefix(&job_root))
        .filter_map(|k| k.strip_suffix("/_metadata"))
        .filter(|d| d.starts_with("chk-") && !d.contains('/'))
        .map(str::to_string)
        .collect()
}

/// Kills the job at `fault` with checkpoints in S3, restarts it until it finishes, and
/// checks its committed output and what the bucket holds.
fn crash_and_resume(fault: &str) {
    let Some((endpoint, bucket)) = s3_endpoint(&format!("s3 checkpoints, crash at {fault}")) else {
        return;
    };
    let started = Instant::now();
    let want = want();
    let prefix = unique_prefix(&fault.replace(':', "-"));
    let dir = setup("spike", PARALLELISM, SEED);
    std::fs::write(
        dir.path().join("job.yaml"),
        s3_job_yaml(&endpoint, &bucket, &prefix),
    )
    .unwrap();

    let killed = run_to_end(dir.path(), Some(fault));
    assert_eq!(killed, 1, "{fault}: the crash point was not reached");
    assert_eq!(
        &committed(dir.path()),
        want,
        "{fault}: committed output with S3 checkpoints differs from a failure-free run"
    );
    for local in ["ckpt", ".weir/checkpoints"] {
        assert!(
            !dir.path().join(local).exists(),
            "{fault}: checkpoints went to the local {local}, not to S3"
        );
    }

    let chks = completed_checkpoints(&endpoint, &bucket, &prefix);
    assert!(
        !chks.is_empty(),
        "{fault}: no chk-*/_metadata under {endpoint}/{bucket}/{prefix}/{JOB}"
    );
    assert!(
        chks.len() <= RETAIN,
        "{fault}: {} completed checkpoints left, retain is {RETAIN}: {chks:?}",
        chks.len()
    );
    eprintln!(
        "s3 checkpoints, crash at {fault}: {:.1?}, left {chks:?}",
        started.elapsed()
    );
}

#[test]
fn s3_crash_after_checkpoint_before_commit() {
    crash_and_resume("before_commit:2");
}

#[test]
fn s3_crash_during_commit() {
    crash_and_resume("during_commit:1");
}

/// No server listens on port 1: `weir run` must end in seconds with one error that
/// names the endpoint, not hang in retries and not panic.
#[test]
fn s3_unreachable_endpoint_fails_fast_with_one_clear_error() {
    let endpoint = "http://127.0.0.1:1";
    let dir = setup("spike", PARALLELISM, SEED);
    std::fs::write(
        dir.path().join("job.yaml"),
        s3_job_yaml(endpoint, "weir-test", "unreachable"),
    )
    .unwrap();
    let started = Instant::now();
    let mut child = weir_cmd(dir.path()).spawn().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        stderr.read_to_string(&mut s).unwrap();
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("weir run still running after 60s against {endpoint}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let elapsed = started.elapsed();
    let err = reader.join().unwrap();
    assert!(
        !status.success(),
        "weir run succeeded against {endpoint}: {err}"
    );
    assert!(
        status.code().is_some(),
        "weir run was killed: {status}: {err}"
    );
    assert!(!err.contains("panicked"), "weir run panicked: {err}");
    assert!(
        err.contains("127.0.0.1:1") || err.contains("s3://weir-test/unreachable"),
        "the error does not name the endpoint or storage URL: {err}"
    );
    let errors = err.lines().filter(|l| l.contains("error")).count();
    assert_eq!(errors, 1, "expected one error, got {errors}: {err}");
    assert!(
        elapsed < Duration::from_secs(15),
        "weir run took {elapsed:?} to fail against {endpoint}: {err}"
    );
    assert!(
        committed(dir.path()).is_empty(),
        "output committed without checkpoint storage"
    );
}
