//! The PostgreSQL sink against a real PostgreSQL (`WEIR_TEST_PG`, started by
//! `scripts/test.sh`; see scripts/services.sh): exactly once through SIGKILL at each
//! crash point and through a random series of kills at changing parallelism (the table
//! equals a failure-free run's, no payment twice), through a server restart mid-run,
//! upserts, and the errors at start (unreachable server, refused credentials, missing
//! table, a column that does not match).

#![allow(clippy::unwrap_used)] // test code: a failed set-up step should just fail

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::common::{block_on, under_ci};
use crate::kafka::{run_to_end, weir_cmd};

/// The test database's connection string, or `None` (skipped with a note; under CI a
/// failure).
fn pg(test: &str) -> Option<String> {
    match std::env::var("WEIR_TEST_PG") {
        Ok(c) if !c.trim().is_empty() => Some(c),
        _ => {
            assert!(
                !under_ci(),
                "{test}: WEIR_TEST_PG is not set but CI=true: scripts/test.sh starts \
                 PostgreSQL (see scripts/services.sh)"
            );
            eprintln!("note: {test} skipped: WEIR_TEST_PG is not set (run scripts/test.sh)");
            None
        }
    }
}

/// A name no other test run uses (lower case: a PostgreSQL identifier).
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000_000
    )
}

/// Runs `sql` (simple query protocol) and returns every row's values as text (`NULL`
/// for null).
pub fn query(conn: &str, sql: &str) -> Vec<Vec<String>> {
    block_on(async {
        let (client, connection) = tokio_postgres::connect(conn, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let mut rows = Vec::new();
        for m in client.simple_query(sql).await.unwrap() {
            if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                rows.push(
                    (0..r.len())
                        .map(|i| r.get(i).unwrap_or("NULL").to_string())
                        .collect(),
                );
            }
        }
        rows
    })
}

/// Payments as JSON lines over `files` files: increasing times with seconds of
/// disorder, some payments sent twice (an upstream retry), some with a non-positive
/// amount, a few malformed lines.
fn write_payments(dir: &Path, files: usize, per_file: usize, seed: u64) {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut rng = SmallRng::seed_from_u64(seed);
    for f in 0..files {
        let mut out = String::new();
        let mut t: i64 = 1_767_225_600_000;
        let mut sent: Vec<String> = Vec::new();
        for i in 0..per_file {
            t += rng.random_range(0..300);
            let ts = t - rng.random_range(0..3_000);
            if i % 499 == 7 {
                out.push_str("{\"id\": \"broken\n");
                continue;
            }
            if !sent.is_empty() && rng.random_range(0..100) < 3 {
                let again = sent[rng.random_range(0..sent.len())].clone();
                out.push_str(&again);
                continue;
            }
            let cents: i64 = if rng.random_range(0..100) < 2 {
                -rng.random_range(0..500)
            } else {
                rng.random_range(1..100_000)
            };
            let line = format!(
                "{{\"id\": \"p{f}-{i:05}\", \"ts\": {ts}, \"merchant\": \"m{:02}\", \"amount\": {}.{:02}, \"currency\": \"{}\", \"note\": \"tab\\there\"}}\n",
                rng.random_range(0..20),
                cents / 100,
                (cents % 100).abs(),
                ["EUR", "USD", "GBP"][rng.random_range(0..3)]
            );
            sent.push(line.clone());
            out.push_str(&line);
        }
        std::fs::write(data.join(format!("payments-{f}.jsonl")), out).unwrap();
    }
}

/// The job: payments (paced so that checkpoints fall inside) → dedup by id → amount
/// > 0 → PostgreSQL, exactly once. `window` instead upserts per-merchant minute totals.
fn job_yaml(name: &str, conn: &str, table: &str, kind: &str, parallelism: usize) -> String {
    let head = format!(
        "name: {name}\nparallelism: {parallelism}\nbatch_size: 64\n\
         checkpoint: {{ interval: 40ms, storage: ckpt, retain: 2 }}\n\
         sources:\n  payments:\n    type: file\n    path: data/*.jsonl\n    rate: 3000\n\
         \x20   format: json\n\
         \x20   schema: {{ id: string, ts: timestamp, merchant: string, amount: float, currency: string, note: string }}\n\
         \x20   event_time: {{ field: ts, max_out_of_orderness: 5s, max_future: none }}\n\
         steps:\n  unique: {{ from: payments, dedup: {{ key: [id], ttl: 1h }} }}\n\
         \x20 valid: {{ from: unique, filter: \"amount > 0\" }}\n"
    );
    let rest = match kind {
        "window" => format!(
            "  totals:\n    from: valid\n    window: {{ tumbling: 1m, key: [merchant], aggregate: {{ n: \"count(*)\", total: \"sum(amount)\" }} }}\n\
             sinks:\n  db:\n    from: totals\n    type: postgres\n    connection: \"{conn}\"\n\
             \x20   table: {table}\n    mode: upsert\n    key: [merchant, window_start]\n    create_table: true\n"
        ),
        _ => format!(
            "sinks:\n  db:\n    from: valid\n    type: postgres\n    connection: \"{conn}\"\n\
             \x20   table: {table}\n    key: [id]\n    create_table: true\n"
        ),
    };
    format!("{head}{rest}dead_letter: {{ type: file, path: out/dead_letter.jsonl }}\n")
}

/// The table's rows, sorted, as text.
fn table_rows(conn: &str, table: &str, kind: &str) -> Vec<String> {
    let sql = match kind {
        "window" => format!(
            "SELECT merchant, window_start, window_end, n, round(total::numeric, 2) FROM {table} \
             ORDER BY merchant, window_start"
        ),
        _ => format!("SELECT id, ts, merchant, amount, currency, note FROM {table} ORDER BY id"),
    };
    query(conn, &sql).into_iter().map(|r| r.join("|")).collect()
}

fn dead_letters(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match std::fs::read_dir(dir.join("out")) {
        Ok(rd) => rd
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .flat_map(|e| {
                std::fs::read_to_string(e.path())
                    .unwrap()
                    .lines()
                    .map(crate::common::without_time)
                    .collect::<Vec<_>>()
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// One run of the job over the payments in `data` (copied into a fresh folder), with
/// `fault` on the first attempt: the table's rows, the dead letters, the kills.
fn run_job(
    conn: &str,
    data: &Path,
    kind: &str,
    parallelism: usize,
    fault: Option<&str>,
) -> (Vec<String>, Vec<String>, usize) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    for e in std::fs::read_dir(data).unwrap().flatten() {
        std::fs::copy(e.path(), dir.path().join("data").join(e.file_name())).unwrap();
    }
    let table = unique(&format!("pay_{kind}"));
    std::fs::write(
        dir.path().join("job.yaml"),
        job_yaml(&unique("payments"), conn, &table, kind, parallelism),
    )
    .unwrap();
    let killed = run_to_end(dir.path(), fault);
    (
        table_rows(conn, &table, kind),
        dead_letters(dir.path()),
        killed,
    )
}

fn check_point(point: &str) {
    let Some(conn) = pg(&format!("postgres {point}")) else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    write_payments(data.path(), 3, 1_200, 11);
    let data = data.path().join("data");
    for kind in ["stateless", "window"] {
        let (want, want_dead, _) = run_job(&conn, &data, kind, 1, None);
        assert!(want.len() > 50, "{kind}: too little output: {}", want.len());
        if kind == "stateless" {
            // 3 files × 1200 lines: 3 malformed per file; no id twice (the primary key
            // would have refused it anyway).
            assert_eq!(want_dead.len(), 9, "{want_dead:?}");
            let ids: std::collections::BTreeSet<&str> =
                want.iter().map(|r| r.split('|').next().unwrap()).collect();
            assert_eq!(ids.len(), want.len());
            assert!(
                want.iter().all(|r| r.ends_with("|tab\there")),
                "{:?}",
                &want[..2]
            );
        }
        for p in [1, 3] {
            let fault = format!("{point}:2");
            let (got, dead, killed) = run_job(&conn, &data, kind, p, Some(&fault));
            assert_eq!(
                killed, 1,
                "{kind} p={p} {fault}: the crash point was not reached"
            );
            assert_eq!(got.len(), want.len(), "{kind} p={p} {fault}: row count");
            assert_eq!(got, want, "{kind} p={p} {fault}: the table differs");
            assert_eq!(dead, want_dead, "{kind} p={p} {fault}: dead letters differ");
        }
    }
}

#[test]
fn postgres_exactly_once_through_a_crash_during_processing() {
    check_point("processing");
}

#[test]
fn postgres_exactly_once_through_a_crash_while_writing_a_checkpoint() {
    check_point("checkpoint_write");
}

#[test]
fn postgres_exactly_once_through_a_crash_after_the_checkpoint_before_the_commit() {
    check_point("before_commit");
}

#[test]
fn postgres_exactly_once_through_a_crash_right_after_the_database_commit() {
    check_point("during_commit");
}

/// Twenty kills at random moments, from outside, with restarts at changing parallelism.
#[test]
fn postgres_exactly_once_through_a_random_series_of_kills() {
    let Some(conn) = pg("postgres random kills") else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    write_payments(data.path(), 3, 1_500, 23);
    let (want, want_dead, _) = run_job(&conn, &data.path().join("data"), "stateless", 2, None);
    let dir = tempfile::tempdir().unwrap();
    write_payments(dir.path(), 3, 1_500, 23);
    let table = unique("pay_kills");
    let name = unique("payments_kills");
    let mut rng = SmallRng::seed_from_u64(5);
    let mut kills = 0;
    let mut finished = false;
    for round in 0..40 {
        let p = [2, 3, 1, 4][round % 4];
        std::fs::write(
            dir.path().join("job.yaml"),
            // Slower than the other tests' jobs, so that twenty kills land.
            job_yaml(&name, &conn, &table, "stateless", p).replace("rate: 3000", "rate: 500"),
        )
        .unwrap();
        let mut child = weir_cmd(dir.path()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(150..700)));
        match child.try_wait().unwrap() {
            Some(s) => {
                assert!(s.success(), "a run failed: {s}");
                finished = true;
                break;
            }
            None if kills < 20 => {
                child.kill().unwrap();
                child.wait().unwrap();
                kills += 1;
            }
            None => {
                let s = child.wait().unwrap();
                assert!(s.success(), "the last run failed: {s}");
                finished = true;
                break;
            }
        }
    }
    assert!(finished, "never finished");
    assert!(kills >= 5, "only {kills} kills landed");
    assert_eq!(
        table_rows(&conn, &table, "stateless"),
        want,
        "the table differs after {kills} kills"
    );
    assert_eq!(dead_letters(dir.path()), want_dead, "dead letters differ");
}

/// The server restarts while the job runs: the sink retries its commit with backoff and
/// reconnects; nothing is lost or doubled.
#[test]
fn postgres_restart_mid_run_loses_nothing() {
    // A server of its own (scripts/services.sh starts two), so that no other test sees
    // the restart.
    let (Ok(conn), Ok(ctl)) = (
        std::env::var("WEIR_TEST_PG_RESTART"),
        std::env::var("WEIR_TEST_PG_RESTART_CTL"),
    ) else {
        assert!(
            !under_ci(),
            "WEIR_TEST_PG_RESTART(_CTL) is not set but CI=true: scripts/test.sh starts it"
        );
        eprintln!("note: postgres restart skipped: WEIR_TEST_PG_RESTART is not set");
        return;
    };
    let data = tempfile::tempdir().unwrap();
    write_payments(data.path(), 2, 3_000, 31);
    let (want, _, _) = run_job(&conn, &data.path().join("data"), "stateless", 1, None);
    let dir = tempfile::tempdir().unwrap();
    write_payments(dir.path(), 2, 3_000, 31);
    let table = unique("pay_restart");
    std::fs::write(
        dir.path().join("job.yaml"),
        job_yaml(&unique("payments_restart"), &conn, &table, "stateless", 2),
    )
    .unwrap();
    let child = weir_cmd(dir.path()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let status = Command::new("sh")
        .args(["-c", &format!("{ctl} -m fast restart")])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "pg_ctl restart failed");
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the job failed across the restart: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(table_rows(&conn, &table, "stateless"), want);
}

/// A failing start: the error names the sink and what is wrong.
fn start_error(yaml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(
        dir.path().join("data/p.jsonl"),
        "{\"id\": \"a\", \"amount\": 1.5}\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("job.yaml"), yaml).unwrap();
    let out = weir_cmd(dir.path()).output().unwrap();
    assert!(!out.status.success(), "the job ran: {yaml}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn start_errors_name_the_server_the_credentials_the_table_and_the_column() {
    let Some(conn) = pg("postgres start errors") else {
        return;
    };
    let job = |conn: &str, table: &str, extra: &str| {
        format!(
            "name: {}\ncheckpoint: {{ interval: 1s, storage: ckpt }}\n\
             sources:\n  p: {{ type: file, path: data/*.jsonl, format: json, schema: {{ id: string, amount: float }} }}\n\
             sinks:\n  db: {{ from: p, type: postgres, connection: \"{conn}\", table: {table}{extra} }}\n",
            unique("pgerr")
        )
    };
    let e = start_error(&job(
        "host=127.0.0.1 port=1 user=weir password=weir dbname=weir_test connect_timeout=2",
        "t",
        "",
    ));
    assert!(
        e.contains("127.0.0.1:1") && e.contains("cannot connect"),
        "{e}"
    );
    let wrong = conn.replace("password=weir", "password=wrong");
    assert_ne!(wrong, conn, "the test connection string has password=weir");
    let e = start_error(&job(&wrong, "t", ""));
    assert!(e.contains("refused the credentials"), "{e}");
    let missing = unique("missing");
    let e = start_error(&job(&conn, &missing, ""));
    assert!(e.contains("does not exist") && e.contains(&missing), "{e}");
    let table = unique("mismatch");
    query(
        &conn,
        &format!("CREATE TABLE {table} (id text PRIMARY KEY, amount timestamptz)"),
    );
    let e = start_error(&job(&conn, &table, ""));
    assert!(e.contains("column `amount` is `timestamptz`"), "{e}");
    let table = unique("nocol");
    query(
        &conn,
        &format!("CREATE TABLE {table} (id text PRIMARY KEY)"),
    );
    let e = start_error(&job(&conn, &table, ""));
    assert!(e.contains("no column `amount`"), "{e}");
    // Without checkpoints, exactly once is refused at validation, naming the field.
    let e = start_error(
        &job(&conn, "t", "").replace("checkpoint: { interval: 1s, storage: ckpt }\n", ""),
    );
    assert!(
        e.contains("sinks.db.delivery") && e.contains("needs checkpoints"),
        "{e}"
    );
}

/// Upsert with `columns:` mapping; at least once without checkpoints: a bounded job
/// writes every row, the last of a key winning.
#[test]
fn upsert_maps_columns_and_the_last_row_of_a_key_wins() {
    let Some(conn) = pg("postgres upsert") else {
        return;
    };
    let table = unique("accounts");
    query(
        &conn,
        &format!("CREATE TABLE {table} (account text PRIMARY KEY, balance numeric(12,2) NOT NULL, seen timestamptz, extra text DEFAULT 'x')"),
    );
    query(
        &conn,
        &format!("INSERT INTO {table} VALUES ('a', 1, NULL, 'kept')"),
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(
        dir.path().join("data/p.jsonl"),
        "{\"id\": \"a\", \"amount\": 10.25, \"ts\": 1767225600000}\n\
         {\"id\": \"b\", \"amount\": 2, \"ts\": 1767225601000}\n\
         {\"id\": \"a\", \"amount\": 11.5, \"ts\": 1767225602000}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("job.yaml"),
        format!(
            "name: {}\nsources:\n  p: {{ type: file, path: data/*.jsonl, format: json, schema: {{ id: string, amount: float, ts: timestamp }} }}\n\
             sinks:\n  db: {{ from: p, type: postgres, connection: \"{conn}\", table: {table}, mode: upsert, delivery: at_least_once, columns: {{ account: id, balance: amount, seen: ts }} }}\n",
            unique("upsert")
        ),
    )
    .unwrap();
    let out = weir_cmd(dir.path()).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = query(
        &conn,
        &format!(
            "SELECT account, balance, seen AT TIME ZONE 'UTC', extra FROM {table} ORDER BY account"
        ),
    );
    assert_eq!(
        rows,
        vec![
            vec!["a", "11.50", "2026-01-01 00:00:02", "kept"],
            vec!["b", "2.00", "2026-01-01 00:00:01", "x"],
        ]
    );
}

/// The payments example's PostgreSQL variant (`examples/payments/postgres.yaml`), killed
/// once after a checkpoint and before the commit: every valid payment booked once (at the FX
/// rate valid at its time: the total matches the generator's), every planted bad record in
/// the dead-letter table with its kind, step and reason.
#[test]
fn the_payments_example_books_into_postgres_exactly_once() {
    let Some(conn) = pg("postgres payments example") else {
        return;
    };
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/payments");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    for f in ["payments.jsonl", "merchants.csv", "fx_rates.jsonl"] {
        std::fs::copy(
            example.join("data").join(f),
            dir.path().join("data").join(f),
        )
        .unwrap();
    }
    // Its own tables: the example's names with a suffix, paced so that checkpoints fall
    // inside the run.
    let suffix = unique("x");
    let yaml = std::fs::read_to_string(example.join("postgres.yaml"))
        .unwrap()
        .replace(
            "table: payments_dead_letters",
            &format!("table: dlq_{suffix}"),
        )
        .replace("table: payments\n", &format!("table: payments_{suffix}\n"))
        .replace(
            "checkpoint: { interval: 1s }",
            "checkpoint: { interval: 100ms }",
        )
        .replace(
            "    path: data/payments.jsonl\n",
            "    path: data/payments.jsonl\n    rate: 2000\n",
        );
    std::fs::write(dir.path().join("job.yaml"), yaml).unwrap();
    run_killed_once(dir.path(), &[("PAYMENTS_DB", &conn)], "before_commit:3");
    let count = |sql: String| query(&conn, &sql)[0][0].clone();
    assert_eq!(
        count(format!("SELECT count(*) FROM payments_{suffix}")),
        "1933"
    );
    assert_eq!(
        count(format!(
            "SELECT count(DISTINCT payment_id) FROM payments_{suffix}"
        )),
        "1933"
    );
    // The generator's total of the amounts in EUR at the rates valid at each payment.
    assert_eq!(
        count(format!(
            "SELECT round(sum(amount_eur)::numeric, 2) FROM payments_{suffix}"
        )),
        "682561.61"
    );
    let kinds = query(
        &conn,
        &format!(
            "SELECT kind, step, count(*) FROM dlq_{suffix} GROUP BY kind, step ORDER BY kind, step"
        ),
    );
    assert_eq!(
        kinds,
        vec![
            vec![
                "decode".to_string(),
                "payments".to_string(),
                "8".to_string()
            ],
            vec![
                "lookup".to_string(),
                "with_merchant".to_string(),
                "6".to_string()
            ],
            vec![
                "validation".to_string(),
                "valid".to_string(),
                "19".to_string()
            ],
        ]
    );
    let reasons = query(
        &conn,
        &format!(
            "SELECT CASE WHEN reason LIKE 'invalid JSON%' THEN 'malformed' \
             WHEN reason LIKE '%validation failed%' THEN 'rule' \
             WHEN reason LIKE '%no row in data/merchants.csv%' THEN 'merchant' ELSE reason END AS k, \
             count(*) FROM dlq_{suffix} GROUP BY k ORDER BY k"
        ),
    );
    assert_eq!(
        reasons,
        vec![
            vec!["malformed".to_string(), "8".to_string()],
            vec!["merchant".to_string(), "6".to_string()],
            vec!["rule".to_string(), "19".to_string()],
        ]
    );
}

/// `enrich` from a PostgreSQL table: the rows found add their columns, a key not in the
/// table is a dead letter naming it, and a table or column that does not exist is an
/// error at start naming the field.
#[test]
fn enrich_looks_up_a_postgres_table_in_batches() {
    let Some(conn) = pg("postgres lookups") else {
        return;
    };
    let table = unique("merchants");
    query(
        &conn,
        &format!(
            "CREATE TABLE {table} (merchant_id text PRIMARY KEY, merchant_name text, risk integer); \
             INSERT INTO {table} SELECT 'm' || i, 'Merchant ' || i, i % 7 FROM generate_series(1, 50) i"
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let mut lines = String::new();
    for i in 0..2_000 {
        // Keys 1..=60: 51..=60 are not in the table.
        lines.push_str(&format!(
            "{{\"id\": {i}, \"merchant\": \"m{}\"}}\n",
            i % 60 + 1
        ));
    }
    std::fs::write(dir.path().join("data/p.jsonl"), lines).unwrap();
    let job = |table: &str, extra: &str| {
        format!(
            "name: {}\nparallelism: 2\nbatch_size: 100\n\
             sources:\n  p: {{ type: file, path: data/*.jsonl, format: json, schema: {{ id: int, merchant: string }} }}\n\
             steps:\n  e:\n    from: p\n    enrich:\n      table: {{ type: postgres, connection: \"{conn}\", name: {table}, schema: {{ merchant_id: string, merchant_name: string, risk: int }} }}\n\
             \x20     on: {{ merchant: merchant_id }}\n      cache: {{ size: 20, ttl: 1m }}\n{extra}\
             sinks:\n  o: {{ from: e, type: file, path: out/o.jsonl }}\n\
             dead_letter: {{ type: file, path: dead/dead_letter.jsonl }}\n",
            unique("lookup")
        )
    };
    std::fs::write(dir.path().join("job.yaml"), job(&table, "")).unwrap();
    let out = weir_cmd(dir.path()).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut rows: Vec<serde_json::Value> = Vec::new();
    for e in std::fs::read_dir(dir.path().join("out")).unwrap().flatten() {
        for l in std::fs::read_to_string(e.path()).unwrap().lines() {
            rows.push(serde_json::from_str(l).unwrap());
        }
    }
    // 50 of every 60 keys are in the table.
    let want = (0..2_000).filter(|i| i % 60 < 50).count();
    assert_eq!(rows.len(), want);
    for r in &rows {
        let m: i64 = r["merchant"].as_str().unwrap()[1..].parse().unwrap();
        assert_eq!(r["merchant_name"], format!("Merchant {m}"));
        assert_eq!(r["risk"], m % 7);
    }
    let dead: Vec<String> = std::fs::read_dir(dir.path().join("dead"))
        .unwrap()
        .flatten()
        .flat_map(|e| {
            std::fs::read_to_string(e.path())
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(dead.len(), 2_000 - want);
    assert!(
        dead.iter()
            .all(|d| d.contains("no row in PostgreSQL table") && d.contains("\"kind\":\"lookup\"")),
        "{:?}",
        &dead[..2]
    );
    // A missing table and a missing column are errors at start.
    std::fs::write(dir.path().join("job.yaml"), job(&unique("nope"), "")).unwrap();
    let out = weir_cmd(dir.path()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("steps.e.enrich.table")
            && err.contains("does not exist"),
        "{err}"
    );
    let other = unique("merchants2");
    query(
        &conn,
        &format!("CREATE TABLE {other} (merchant_id text, merchant_name text)"),
    );
    std::fs::write(dir.path().join("job.yaml"), job(&other, "")).unwrap();
    let out = weir_cmd(dir.path()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no column `risk`"),
        "{err}"
    );
}

/// The payments example's Kafka variant (`examples/payments/kafka.yaml`): payments and the
/// FX changelog produced to Kafka topics (noida-db), read to their end, booked into
/// PostgreSQL exactly once, with a kill after a checkpoint: the same ledger as the file
/// variant.
#[test]
fn the_payments_example_from_kafka_books_the_same_ledger() {
    let (Some(conn), Some(brokers)) = (
        pg("postgres payments from kafka"),
        crate::kafka::noida("postgres payments from kafka"),
    ) else {
        return;
    };
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/payments");
    let suffix = unique("k");
    let (payments, fx) = (format!("payments-{suffix}"), format!("fx-{suffix}"));
    crate::kafka::create_topic(&brokers, &payments, 3);
    crate::kafka::create_topic(&brokers, &fx, 1);
    let lines = |f: &str, partitions: i32| -> Vec<(i32, Option<String>)> {
        std::fs::read_to_string(example.join("data").join(f))
            .unwrap()
            .lines()
            .enumerate()
            .map(|(i, l)| ((i as i32) % partitions, Some(l.to_string())))
            .collect()
    };
    crate::kafka::produce(&brokers, &payments, &lines("payments.jsonl", 3));
    crate::kafka::produce(&brokers, &fx, &lines("fx_rates.jsonl", 1));
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::copy(
        example.join("data/merchants.csv"),
        dir.path().join("data/merchants.csv"),
    )
    .unwrap();
    let yaml = std::fs::read_to_string(example.join("kafka.yaml"))
        .unwrap()
        .replace(
            "name: payments-kafka",
            &format!("name: payments-kafka-{suffix}"),
        )
        .replace(
            "topic: payments\n",
            &format!("topic: {payments}\n    end: latest\n"),
        )
        .replace(
            "topic: fx-rates\n",
            &format!("topic: {fx}\n    end: latest\n"),
        )
        .replace("group: payments-ledger", &format!("group: ledger-{suffix}"))
        .replace(
            "table: payments_dead_letters",
            &format!("table: dlq_{suffix}"),
        )
        .replace("table: payments\n", &format!("table: payments_{suffix}\n"))
        .replace(
            "checkpoint: { interval: 1s }",
            "checkpoint: { interval: 100ms }",
        );
    std::fs::write(dir.path().join("job.yaml"), yaml).unwrap();
    run_killed_once(
        dir.path(),
        &[("PAYMENTS_DB", &conn), ("KAFKA_BROKERS", &brokers)],
        "before_commit:2",
    );
    let count = |sql: String| query(&conn, &sql)[0][0].clone();
    assert_eq!(
        count(format!(
            "SELECT count(DISTINCT payment_id) || '/' || count(*) FROM payments_{suffix}"
        )),
        "1933/1933"
    );
    assert_eq!(
        count(format!(
            "SELECT round(sum(amount_eur)::numeric, 2) FROM payments_{suffix}"
        )),
        "682561.61"
    );
    assert_eq!(
        count(format!("SELECT count(*) FROM dlq_{suffix}")),
        "33",
        "{:?}",
        query(
            &conn,
            &format!("SELECT kind, step, reason FROM dlq_{suffix} WHERE kind <> 'validation' AND kind <> 'decode'")
        )
    );

    // Tier 2: the negative amounts, fixed, replayed from the dead-letter table into the
    // payments topic (one transaction with the ledger topic), then booked when the job
    // runs again; a second replay finds them in the ledger.
    let negative = count(format!(
        "SELECT count(*) FROM dlq_{suffix} WHERE reason LIKE '%positive_amount%'"
    ));
    assert_ne!(negative, "0");
    let ledger = format!("ledger-{suffix}");
    let replay = |expect: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["dlq", "replay", "job.yaml", "--postgres", &conn, "--table"])
            .arg(format!("dlq_{suffix}"))
            .args(["--source", "payments", "--kind", "validation"])
            .args(["--set", "amount=abs(amount)"])
            .args(["--ledger-topic", &ledger])
            .current_dir(dir.path())
            .env("KAFKA_BROKERS", &brokers)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success() && text.contains(expect),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let validation = count(format!(
        "SELECT count(*) FROM dlq_{suffix} WHERE kind = 'validation'"
    ));
    replay(&format!(
        "replayed {validation} dead letter(s) into Kafka topic `{payments}`"
    ));
    replay(&format!(
        "replayed 0 dead letter(s) into Kafka topic `{payments}` ({validation} replayed before"
    ));
    let mut c = weir_cmd(dir.path());
    c.env("PAYMENTS_DB", &conn).env("KAFKA_BROKERS", &brokers);
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let booked: usize = count(format!("SELECT count(*) FROM payments_{suffix}"))
        .parse()
        .unwrap();
    let negative: usize = negative.parse().unwrap();
    eprintln!("DEBUG {:?}", query(&conn, &format!("SELECT kind, reason, payload FROM dlq_{suffix} WHERE reason LIKE '%positive%' OR time > now() - interval '5 seconds'")));
    assert_eq!(booked, 1933 + negative, "each fixed payment booked once");
    assert_eq!(
        count(format!(
            "SELECT count(*) FROM payments_{suffix} WHERE amount <= 0"
        )),
        "0"
    );
}

/// Lookups that keep failing (here: the table is dropped while the job runs) turn the
/// records that needed them into dead letters with the error; the job goes on.
#[test]
fn failed_lookups_become_dead_letters_and_the_job_goes_on() {
    let Some(conn) = pg("postgres failing lookups") else {
        return;
    };
    let table = unique("vanishing");
    query(
        &conn,
        &format!(
            "CREATE TABLE {table} (k text PRIMARY KEY, v text); \
             INSERT INTO {table} SELECT 'k' || i, 'v' || i FROM generate_series(0, 9) i"
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let lines: String = (0..1_500)
        .map(|i| format!("{{\"id\": {i}, \"k\": \"k{}\"}}\n", i % 10))
        .collect();
    std::fs::write(dir.path().join("data/p.jsonl"), lines).unwrap();
    std::fs::write(
        dir.path().join("job.yaml"),
        format!(
            "name: {}\nbatch_size: 50\n\
             sources:\n  p: {{ type: file, path: data/*.jsonl, format: json, rate: 500, schema: {{ id: int, k: string }} }}\n\
             steps:\n  e:\n    from: p\n    enrich:\n      table: {{ type: postgres, connection: \"{conn}\", name: {table}, schema: {{ k: string, v: string }}, unavailable_timeout: 200ms }}\n\
             \x20     on: {{ k: k }}\n      cache: {{ ttl: 1ms }}\n\
             sinks:\n  o: {{ from: e, type: file, path: out/o.jsonl }}\n\
             dead_letter: {{ type: file, path: dead/dead_letter.jsonl }}\n",
            unique("vanish")
        ),
    )
    .unwrap();
    let child = weir_cmd(dir.path()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1_200));
    query(&conn, &format!("DROP TABLE {table}"));
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |sub: &str| -> Vec<String> {
        std::fs::read_dir(dir.path().join(sub))
            .unwrap()
            .flatten()
            .flat_map(|e| {
                std::fs::read_to_string(e.path())
                    .unwrap()
                    .lines()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let (rows, dead) = (read("out"), read("dead"));
    assert_eq!(rows.len() + dead.len(), 1_500);
    assert!(
        !rows.is_empty() && !dead.is_empty(),
        "{} rows, {} dead",
        rows.len(),
        dead.len()
    );
    assert!(
        dead.iter()
            .all(|d| d.contains("failed after retries") && d.contains("\"kind\":\"lookup\"")),
        "{}",
        dead[0]
    );
}

/// Rows the database refuses (a CHECK constraint, a value too long) are isolated by
/// halving under savepoints and become dead letters in the rejects table, in the same
/// transaction: the job goes on, exactly once for them too (a kill after a checkpoint,
/// before its commit, doubles nothing).
#[test]
fn rows_the_database_refuses_become_dead_letters_exactly_once() {
    let Some(conn) = pg("postgres refused rows") else {
        return;
    };
    let table = unique("checked");
    let rejects = unique("rejects");
    query(
        &conn,
        &format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, amount double precision CHECK (amount > 0), \
             currency varchar(3))"
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let lines: String = (0..600)
        .map(|i| {
            let amount = if i % 50 == 7 {
                -1.0
            } else {
                f64::from(i) + 0.5
            };
            let currency = if i % 90 == 11 { "EURO" } else { "EUR" };
            format!("{{\"id\": {i}, \"amount\": {amount}, \"currency\": \"{currency}\"}}\n")
        })
        .collect();
    std::fs::write(dir.path().join("data/p.jsonl"), lines).unwrap();
    std::fs::write(
        dir.path().join("job.yaml"),
        format!(
            "name: {}\nparallelism: 2\nbatch_size: 40\ncheckpoint: {{ interval: 50ms, storage: ckpt }}\n\
             sources:\n  p: {{ type: file, path: data/*.jsonl, format: json, rate: 1500, schema: {{ id: int, amount: float, currency: string }} }}\n\
             sinks:\n  db: {{ from: p, type: postgres, connection: \"{conn}\", table: {table}, rejects_table: {rejects} }}\n",
            unique("refused")
        ),
    )
    .unwrap();
    let killed = run_to_end(dir.path(), Some("before_commit:3"));
    assert_eq!(killed, 1);
    let bad = |i: i64| i % 50 == 7 || i % 90 == 11;
    let want: Vec<String> = (0..600)
        .filter(|&i| !bad(i))
        .map(|i| i.to_string())
        .collect();
    let got: Vec<String> = query(&conn, &format!("SELECT id FROM {table} ORDER BY id"))
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    assert_eq!(got, want);
    let refused = query(
        &conn,
        &format!("SELECT payload, reason, kind, step FROM {rejects} ORDER BY payload"),
    );
    let n_bad = (0..600).filter(|&i| bad(i)).count();
    assert_eq!(refused.len(), n_bad, "{refused:?}");
    for r in &refused {
        assert_eq!((r[2].as_str(), r[3].as_str()), ("sink", "db"));
        assert!(
            r[1].contains("violates check constraint") || r[1].contains("too long"),
            "{}",
            r[1]
        );
    }
}

/// Runs the job in `dir` with `env` until it succeeds, killed once at `fault`.
fn run_killed_once(dir: &Path, env: &[(&str, &str)], fault: &str) {
    let mut killed = 0;
    for attempt in 0..10 {
        let mut c = weir_cmd(dir);
        c.envs(env.iter().copied());
        if attempt == 0 {
            c.env("WEIR_FAULT", fault);
        }
        let out = c.output().unwrap();
        if out.status.success() {
            break;
        }
        assert_eq!(
            out.status.signal(),
            Some(9),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        killed += 1;
    }
    assert_eq!(killed, 1, "the crash point was not reached");
}
