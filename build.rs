//! Build script of the `weir` binary: records the git commit the binary is built from,
//! so that `weir --version` can say what runs (`0.1.0 (commit abc1234567)`; outside a
//! git checkout the `WEIR_COMMIT` environment variable, else `unknown`).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    Some(text.trim().to_string())
}

fn main() {
    let commit = match git(&["rev-parse", "--short=10", "HEAD"]) {
        Some(c) if !c.is_empty() => c,
        _ => std::env::var("WEIR_COMMIT").unwrap_or_else(|_| "unknown".into()),
    };
    println!("cargo:rustc-env=WEIR_COMMIT={commit}");
    println!("cargo:rerun-if-env-changed=WEIR_COMMIT");
    // A new commit or checkout changes HEAD or the ref it points to.
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        println!("cargo:rerun-if-changed={dir}/packed-refs");
        if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={dir}/{head}");
        }
    }
}
