//! Fault injection for the exactly-once tests: the process kills itself with SIGKILL
//! when it reaches a named crash point, chosen by the `WEIR_FAULT` environment variable
//! as `POINT:N` (the N-th time the point is reached, from 1; `POINT` alone means the
//! first). Points:
//!
//! - `processing` — a batch reached a sink (between checkpoints);
//! - `checkpoint_write` — a task stored its snapshot, before acknowledging it (the
//!   checkpoint is half-written);
//! - `before_commit` — the checkpoint's metadata is written, before any sink commits;
//! - `during_commit` — a sink published part of a commit, not all of it.
//!
//! Unset (the normal case), a crash point costs one relaxed atomic load.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
static COUNTS: OnceLock<Mutex<HashMap<String, u64>>> = OnceLock::new();
static FIRED: AtomicBool = AtomicBool::new(false);

fn armed() -> &'static Option<(String, u64)> {
    ARMED.get_or_init(|| {
        let v = std::env::var("WEIR_FAULT").ok()?;
        let (point, n) = match v.split_once(':') {
            Some((p, n)) => (p.to_string(), n.trim().parse().unwrap_or(1)),
            None => (v.clone(), 1),
        };
        Some((point, n.max(1)))
    })
}

/// The process reached crash point `point`: if `WEIR_FAULT` names it and this is the
/// chosen occurrence, the process is killed with SIGKILL and this never returns.
pub fn point(point: &str) {
    let Some((want, n)) = armed() else {
        return;
    };
    if want != point || FIRED.load(Ordering::Relaxed) {
        return;
    }
    let counts = COUNTS.get_or_init(|| Mutex::new(HashMap::new()));
    let hit = match counts.lock() {
        Ok(mut c) => {
            let k = c.entry(point.to_string()).or_insert(0);
            *k += 1;
            *k == *n
        }
        Err(_) => false,
    };
    if !hit {
        return;
    }
    FIRED.store(true, Ordering::Relaxed);
    tracing::warn!(
        point,
        occurrence = n,
        "WEIR_FAULT: killing the process (SIGKILL)"
    );
    let pid = std::process::id().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid])
        .status();
    // SIGKILL is asynchronous; never go on past a crash point.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}
