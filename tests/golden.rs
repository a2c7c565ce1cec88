//! Golden-file tests of whole YAML jobs. Each case is a folder with `job.yaml`, its
//! inputs, and either `expected/` (files the job must write, compared line by line,
//! order-insensitive unless the case has a file named `ordered`) or `expected_error.txt`
//! (what `weir validate` must report). The example jobs under `examples/` with an
//! `expected/` folder are golden cases too. Set `UPDATE_GOLDEN=1` to rewrite expected
//! files from the actual output (then review the diff).

use std::fs;
use std::path::{Path, PathBuf};

use crate::common::block_on;

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for entry in fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let name = entry.file_name();
        if name == "expected" || name == "out" || name == ".weir" {
            continue;
        }
        let p = entry.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(&name));
        } else {
            fs::copy(&p, to.join(&name)).expect("copy");
        }
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut v: Vec<PathBuf> = Vec::new();
    for dir in [root.join("tests/golden"), root.join("examples")] {
        for e in fs::read_dir(&dir).expect("golden dir").flatten() {
            let p = e.path();
            let is_case = p.join("job.yaml").exists()
                && (p.join("expected").is_dir() || p.join("expected_error.txt").exists());
            if is_case {
                v.push(p);
            }
        }
    }
    v.sort();
    v
}

fn run_case(case: &Path) -> Result<(), String> {
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let work = tmp.path().join("case");
    copy_dir(case, &work);
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let job = work.join("job.yaml");
    let result = weir::load_job(&job, None).and_then(|g| block_on(weir::run(g)));
    let err_file = case.join("expected_error.txt");
    if err_file.exists() {
        let actual = match result {
            Ok(_) => return Err("expected an error, the job succeeded".into()),
            Err(e) => e.to_string().replace(&format!("{}/", work.display()), ""),
        };
        if update {
            fs::write(&err_file, &actual).map_err(|e| e.to_string())?;
        }
        let expected = fs::read_to_string(&err_file).map_err(|e| e.to_string())?;
        if actual.trim_end() != expected.trim_end() {
            return Err(format!(
                "error differs\n--- expected\n{expected}\n--- actual\n{actual}"
            ));
        }
        return Ok(());
    }
    result.map_err(|e| format!("job failed: {e}"))?;
    let expected_dir = case.join("expected");
    // Outputs may name input files (dead letters carry their source): make them
    // relative to the case folder.
    let prefix = format!("{}/", work.display());
    let read_actual =
        |rel: &Path| fs::read_to_string(work.join(rel)).map(|t| t.replace(&prefix, ""));
    if update {
        for f in files_under(&expected_dir) {
            let rel = f.strip_prefix(&expected_dir).map_err(|e| e.to_string())?;
            fs::write(&f, read_actual(rel).unwrap_or_default()).map_err(|e| e.to_string())?;
        }
    }
    // Every file the job wrote under out/ must be expected: unexpected output (e.g.
    // dead letters nobody listed) fails the case.
    for written in files_under(&work.join("out")) {
        let rel = written.strip_prefix(&work).map_err(|e| e.to_string())?;
        if !expected_dir.join(rel).exists() {
            return Err(format!(
                "{} was written but is not in expected/ (add it, empty if it should be)",
                rel.display()
            ));
        }
    }
    let ordered = case.join("ordered").exists();
    let expected_files = files_under(&expected_dir);
    if expected_files.is_empty() {
        return Err("expected/ holds no file".into());
    }
    for f in expected_files {
        let rel = f.strip_prefix(&expected_dir).map_err(|e| e.to_string())?;
        let actual = read_actual(rel).map_err(|e| format!("{} not written: {e}", rel.display()))?;
        let expected = fs::read_to_string(&f).map_err(|e| e.to_string())?;
        // Dead letters' processing times differ between runs.
        let (mut a, mut b): (Vec<String>, Vec<String>) = (
            actual.lines().map(crate::common::without_time).collect(),
            expected.lines().map(crate::common::without_time).collect(),
        );
        if !ordered {
            a.sort_unstable();
            b.sort_unstable();
        }
        if a != b {
            let missing: Vec<_> = b.iter().filter(|l| !a.contains(l)).take(5).collect();
            let extra: Vec<_> = a.iter().filter(|l| !b.contains(l)).take(5).collect();
            return Err(format!(
                "{}: {} line(s) written, {} expected\n  missing (first 5): {missing:#?}\n  unexpected (first 5): {extra:#?}",
                rel.display(),
                a.len(),
                b.len()
            ));
        }
    }
    Ok(())
}

#[test]
fn golden_jobs() {
    let cases = cases();
    assert!(cases.len() >= 5, "golden cases not found: {cases:?}");
    let mut failures = Vec::new();
    for case in &cases {
        if let Err(e) = run_case(case) {
            failures.push(format!("{}: {e}", case.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} golden case(s) failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}
