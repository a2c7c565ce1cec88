//! Bounded-time fuzzing of what faces users and data: the YAML job loader, the JSON
//! decoder (its one-pass fast path and Arrow's), the CSV and regex decoders, and the
//! SQL expression compiler.
//!
//! Each target first replays its corpus (`tests/fuzz/<target>/`, one input per file:
//! seeds and every case that once failed), then, for `WEIR_FUZZ_SECS` seconds (default
//! 3; `scripts/test.sh` gives each 30), runs inputs made by mutating corpus entries
//! (byte edits, and splices of tokens that tend to break parsers) or built from the
//! target's grammar. An input fails if the target panics, takes longer than
//! [`CASE_LIMIT`], or the process's peak memory passes [`MEMORY_LIMIT`]. A failing input
//! is written to `target/fuzz-found/<target>/` and the test fails naming it; add it to
//! the corpus with the fix. `WEIR_FUZZ_SEED` replays a run.
//!
//! This is random (mutation and grammar) fuzzing in the test binary, not
//! coverage-guided fuzzing: it needs no nightly toolchain or second build, and runs in
//! every CI run.

#![allow(clippy::unwrap_used)] // test code: a failed set-up step should just fail

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{BinaryArray, RecordBatch, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Longest a single input may take.
const CASE_LIMIT: Duration = Duration::from_secs(2);
/// Peak resident memory (VmHWM) the fuzzing process may reach.
const MEMORY_LIMIT: u64 = 1536 << 20;

/// Tokens spliced into inputs: the pieces parsers trip on.
const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "\"",
    "\\",
    ",",
    ":",
    ": ",
    "- ",
    "\n",
    "\r\n",
    "\t",
    " ",
    "\u{feff}",
    "\0",
    "&a ",
    "*a",
    "<<: *a",
    "!!str ",
    "!!int ",
    "? ",
    "|",
    ">",
    "#",
    "'",
    "\"\\u0000\"",
    "\\ud800",
    "null",
    "true",
    "1e400",
    "-0",
    "NaN",
    "Infinity",
    "99999999999999999999",
    "0x",
    "1.5",
    "1e3",
    "9223372036854775808",
    "-9223372036854775809",
    "\u{10ffff}",
    "é",
    ",}",
    ",]",
    "{{{{{{{{",
    "]]]]",
    "((((((((",
    "))))",
    "'a'",
    "CAST(",
    " AS ",
    "::",
    "->",
    "->>",
    "[1]",
    "['x']",
    ".",
    "..",
    "../",
    "%",
    "(?",
    "*",
    "+",
    "|(",
];

/// The budget of one target.
fn budget() -> Duration {
    let secs = std::env::var("WEIR_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(3.0);
    Duration::from_secs_f64(secs.max(0.0))
}

fn seed() -> u64 {
    std::env::var("WEIR_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz")
        .join(target)
}

/// The corpus of `target` plus `extra` seeds.
fn corpus(target: &str, extra: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let mut out = extra;
    if let Ok(rd) = std::fs::read_dir(corpus_dir(target)) {
        let mut files: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            out.push(std::fs::read(f).unwrap());
        }
    }
    assert!(!out.is_empty(), "target {target} has no seeds");
    out
}

/// A mutation of `base`: a few byte edits, token splices and slice copies.
fn mutate(rng: &mut SmallRng, base: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..rng.random_range(1..6) {
        let at = if v.is_empty() {
            0
        } else {
            rng.random_range(0..=v.len())
        };
        match rng.random_range(0..8) {
            0 if at < v.len() => v[at] = rng.random(),
            1 => v.insert(at, rng.random()),
            2 if at < v.len() => {
                let end = (at + rng.random_range(1..16)).min(v.len());
                v.drain(at..end);
            }
            3..=5 => {
                let t = TOKENS[rng.random_range(0..TOKENS.len())];
                v.splice(at..at, t.bytes());
            }
            6 if !v.is_empty() => {
                // Repeat a slice: deep nesting, long runs.
                let start = rng.random_range(0..v.len());
                let end = (start + rng.random_range(1..32)).min(v.len());
                let piece = v[start..end].to_vec();
                for _ in 0..rng.random_range(1..64) {
                    v.splice(at..at, piece.iter().copied());
                }
            }
            _ => {
                // Splice in part of another corpus entry.
                let other = &corpus[rng.random_range(0..corpus.len())];
                if !other.is_empty() {
                    let start = rng.random_range(0..other.len());
                    let end = (start + rng.random_range(1..64)).min(other.len());
                    v.splice(at..at, other[start..end].iter().copied());
                }
            }
        }
    }
    v.truncate(256 << 10);
    v
}

fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Runs `check` on the corpus, then on generated inputs until the budget is spent.
/// `generate` may build an input from the target's grammar (else a mutation is used).
fn fuzz(
    target: &str,
    seeds: Vec<Vec<u8>>,
    generate: impl Fn(&mut SmallRng) -> Option<Vec<u8>> + Send + 'static,
    check: impl Fn(&[u8]) + Send + Sync + 'static,
) {
    let corpus = corpus(target, seeds);
    let seed = seed();
    let check = Arc::new(check);
    // One worker thread runs the inputs, so that a hang is seen as one.
    let (to_worker, inputs) = std::sync::mpsc::channel::<Vec<u8>>();
    let (to_me, results) = std::sync::mpsc::channel::<Result<(), String>>();
    let worker_check = check.clone();
    // The stack of weir's main thread, where jobs are compiled.
    let worker = std::thread::Builder::new().stack_size(8 << 20);
    let _ = worker.spawn(move || {
        for input in inputs {
            let c = worker_check.clone();
            let r =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c(&input))).map_err(|p| {
                    p.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "panic".into())
                });
            if to_me.send(r).is_err() {
                return;
            }
        }
    });
    if std::env::var_os("WEIR_FUZZ_SHOW").is_some() {
        eprintln!("fuzz {target}: seed {seed}");
    }
    let fail = |input: &[u8], why: String| -> ! {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target/fuzz-found")
            .join(target);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("seed-{seed}-{}", input.len()));
        std::fs::write(&file, input).unwrap();
        panic!(
            "fuzz target {target} failed ({why}) on the input saved at {} (seed {seed}): {:?}",
            file.display(),
            String::from_utf8_lossy(&input[..input.len().min(400)])
        );
    };
    let run_one = |input: Vec<u8>| {
        to_worker.send(input.clone()).unwrap();
        match results.recv_timeout(CASE_LIMIT) {
            Ok(Ok(())) => {}
            Ok(Err(panic)) => fail(&input, format!("panic: {panic}")),
            Err(_) => fail(&input, format!("took longer than {CASE_LIMIT:?}")),
        }
        if peak_rss() > MEMORY_LIMIT {
            fail(
                &input,
                format!("peak memory above {} MB", MEMORY_LIMIT >> 20),
            );
        }
    };
    for input in &corpus {
        run_one(input.clone());
    }
    let mut rng = SmallRng::seed_from_u64(seed);
    let start = Instant::now();
    let mut cases = corpus.len();
    while start.elapsed() < budget() {
        let input = if rng.random_bool(0.3) {
            generate(&mut rng)
        } else {
            None
        };
        let input = input.unwrap_or_else(|| {
            let base = &corpus[rng.random_range(0..corpus.len())];
            mutate(&mut rng, base, &corpus)
        });
        run_one(input);
        cases += 1;
    }
    eprintln!(
        "fuzz {target}: {cases} inputs in {:.1}s (seed {seed}), peak RSS {} MB",
        start.elapsed().as_secs_f64(),
        peak_rss() >> 20
    );
}

// ---- the YAML job loader ----

fn job_files() -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for dir in ["tests/golden", "examples", "benches/workloads"] {
        for e in walk(&root.join(dir)) {
            if e.extension().is_some_and(|x| x == "yaml") {
                out.push(std::fs::read(&e).unwrap());
            }
        }
    }
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn fuzz_yaml_job_loader() {
    let registry = Arc::new(weir::default_registry());
    let base = tempfile::tempdir().unwrap();
    let base_dir = base.path().to_path_buf();
    fuzz(
        "yaml_job_loader",
        job_files(),
        |_| None,
        move |input| {
            let text = String::from_utf8_lossy(input);
            let _ = weir_engine::spec::compile_job_str(
                &text,
                "fuzz.yaml",
                &base_dir,
                registry.clone(),
                &weir_engine::spec::JobOverrides::default(),
            );
        },
    );
}

// ---- decoders ----

fn raw_batch(lines: &[&[u8]]) -> RecordBatch {
    RecordBatch::try_new(
        weir_engine::source::raw_schema(),
        vec![
            Arc::new(BinaryArray::from_iter_values(lines.iter().copied())),
            Arc::new(UInt64Array::from_iter_values(0..lines.len() as u64)),
        ],
    )
    .unwrap()
}

/// Decodes `input` (records split at newlines) with format `format` for each schema.
fn decode_all(format: &str, options: serde_json::Value, schemas: &[SchemaRef], input: &[u8]) {
    let registry = weir::default_registry();
    let factory = registry.format(format).unwrap();
    let lines: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
    let raw = raw_batch(&lines);
    for schema in schemas {
        let Ok(build) = factory.build(&options, Some(schema.clone())) else {
            continue;
        };
        let mut decoder = (build.create)().unwrap();
        let decoded = decoder
            .decode(&raw, "fuzz: input")
            .expect("decoding never fails on bad records");
        assert_eq!(
            decoded.batch.num_rows() + decoded.dead_letters.len(),
            lines
                .iter()
                .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
                .count(),
            "every non-blank record decodes or is a dead letter"
        );
    }
}

fn flat_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        Field::new("s", DataType::Utf8, true),
        Field::new("n", DataType::Int64, false),
        Field::new("f", DataType::Float64, true),
        Field::new("b", DataType::Boolean, true),
    ]))
}

fn nested_schema() -> SchemaRef {
    let (t, _) = weir_engine::spec::parse_field_type(&serde_json::json!(
        "struct<usr: struct<id: int, name: string?>?, tags: list<string?>?>"
    ))
    .unwrap();
    Arc::new(Schema::new(vec![
        Field::new("ctx", t, true),
        Field::new("n", DataType::Int64, true),
        Field::new(
            "l",
            DataType::List(Arc::new(Field::new("item", DataType::Float64, true))),
            true,
        ),
    ]))
}

/// A random JSON-ish record: mostly well-formed, with values of all kinds.
fn json_record(rng: &mut SmallRng, depth: usize) -> String {
    const KEYS: &[&str] = &[
        "ts", "s", "n", "f", "b", "ctx", "usr", "id", "name", "tags", "l", "x",
    ];
    const SCALARS: &[&str] = &[
        "0",
        "-1",
        "1.5",
        "1e3",
        "1e400",
        "9223372036854775808",
        "\"2024-05-01T12:00:00Z\"",
        "\"x\"",
        "\"\\u00e9\\n\"",
        "true",
        "false",
        "null",
        "\"NaN\"",
        "\"7\"",
        "1714564800000",
        "-0.0",
        "[]",
        "{}",
    ];
    let mut out = String::from("{");
    for i in 0..rng.random_range(0..6) {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        out.push_str(KEYS[rng.random_range(0..KEYS.len())]);
        out.push_str("\":");
        match rng.random_range(0..6) {
            0 if depth < 4 => out.push_str(&json_record(rng, depth + 1)),
            1 if depth < 4 => {
                out.push('[');
                for j in 0..rng.random_range(0..4) {
                    if j > 0 {
                        out.push(',');
                    }
                    out.push_str(SCALARS[rng.random_range(0..SCALARS.len())]);
                }
                out.push(']');
            }
            _ => out.push_str(SCALARS[rng.random_range(0..SCALARS.len())]),
        }
    }
    out.push('}');
    out
}

#[test]
fn fuzz_json_decoder() {
    let seeds = vec![
        br#"{"ts":"2024-05-01T12:00:00Z","s":"a","n":1,"f":1.5,"b":true}"#.to_vec(),
        br#"{"ctx":{"usr":{"id":1,"name":"a"},"tags":["x",null]},"n":2,"l":[1.5,2]}"#.to_vec(),
    ];
    let schemas = [flat_schema(), nested_schema()];
    fuzz(
        "json_decoder",
        seeds,
        |rng| {
            let lines: Vec<String> = (0..rng.random_range(1..20))
                .map(|_| json_record(rng, 0))
                .collect();
            Some(lines.join("\n").into_bytes())
        },
        move |input| decode_all("json", serde_json::Value::Null, &schemas, input),
    );
}

#[test]
fn fuzz_csv_decoder() {
    let seeds = vec![
        b"2024-05-01T12:00:00Z,a,1,1.5,true\n2024-05-01T12:00:01Z,\"b,c\",2,,false".to_vec(),
        b"x,\"a\"\"b\",3,1e3,\n,,,,".to_vec(),
    ];
    let schemas = [flat_schema()];
    fuzz(
        "csv_decoder",
        seeds,
        |_| None,
        move |input| decode_all("csv", serde_json::Value::Null, &schemas, input),
    );
}

#[test]
fn fuzz_regex_decoder() {
    let seeds =
        vec![b"2024-05-01T12:00:00Z GET /a 200 12\n2024-05-01T12:00:01Z POST /b 500 x".to_vec()];
    let schema: SchemaRef = Arc::new(Schema::new(vec![
        Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        Field::new("method", DataType::Utf8, true),
        Field::new("path", DataType::Utf8, true),
        Field::new("status", DataType::Int64, false),
        Field::new("bytes", DataType::Int64, true),
    ]));
    let options = serde_json::json!({
        "type": "regex",
        "pattern": r"^(?P<ts>\S+) (?P<method>\S+) (?P<path>\S+) (?P<status>\S+) (?P<bytes>\S+)$"
    });
    fuzz(
        "regex_decoder",
        seeds,
        |_| None,
        move |input| {
            decode_all(
                "regex",
                options.clone(),
                std::slice::from_ref(&schema),
                input,
            )
        },
    );
}

// ---- the SQL expression compiler ----

fn sql_schema() -> SchemaRef {
    let mut fields: Vec<Field> = flat_schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.extend(nested_schema().fields().iter().map(|f| f.as_ref().clone()));
    Arc::new(Schema::new(fields))
}

/// A random SQL expression from a small grammar over the schema's columns.
fn sql_expr(rng: &mut SmallRng, depth: usize) -> String {
    const ATOMS: &[&str] = &[
        "n",
        "f",
        "s",
        "b",
        "ts",
        "ctx",
        "ctx.usr.id",
        "ctx['tags'][1]",
        "l[2]",
        "1",
        "1.5",
        "'x'",
        "'2024-05-01T00:00:00Z'",
        "NULL",
        "TRUE",
        "-9223372036854775808",
        "1e308",
        "''",
        "n2",
    ];
    const BINARY: &[&str] = &[
        "+", "-", "*", "/", "%", "=", "<>", "<", ">=", "AND", "OR", "||", "LIKE", "IS NOT",
    ];
    const FUNCS: &[&str] = &[
        "upper",
        "abs",
        "round",
        "coalesce",
        "length",
        "cardinality",
        "json_get_str",
        "date_trunc",
        "regexp_like",
        "array_max",
        "nullif",
        "concat",
        "sqrt",
        "ln",
    ];
    if depth > 4 {
        return ATOMS[rng.random_range(0..ATOMS.len())].to_string();
    }
    match rng.random_range(0..7) {
        0 | 1 => ATOMS[rng.random_range(0..ATOMS.len())].to_string(),
        2 | 3 => format!(
            "({} {} {})",
            sql_expr(rng, depth + 1),
            BINARY[rng.random_range(0..BINARY.len())],
            sql_expr(rng, depth + 1)
        ),
        4 => {
            let args: Vec<String> = (0..rng.random_range(0..4))
                .map(|_| sql_expr(rng, depth + 1))
                .collect();
            format!(
                "{}({})",
                FUNCS[rng.random_range(0..FUNCS.len())],
                args.join(", ")
            )
        }
        5 => format!(
            "CASE WHEN {} THEN {} ELSE {} END",
            sql_expr(rng, depth + 1),
            sql_expr(rng, depth + 1),
            sql_expr(rng, depth + 1)
        ),
        _ => format!(
            "CAST({} AS {})",
            sql_expr(rng, depth + 1),
            ["BIGINT", "DOUBLE", "VARCHAR", "TIMESTAMP", "BOOLEAN"][rng.random_range(0..5)]
        ),
    }
}

#[test]
fn fuzz_sql_expression_compiler() {
    let schema = sql_schema();
    let batch = {
        // A few rows with nulls and edge values to evaluate compiled expressions on.
        let lines: Vec<&[u8]> = vec![
            br#"{"ts":"2024-05-01T12:00:00Z","s":"a","n":9223372036854775807,"f":1e308,"b":true,"ctx":{"usr":{"id":1,"name":"x"},"tags":["t"]},"l":[1.5]}"#,
            br#"{"n":0,"f":-0.0,"s":""}"#,
            br#"{"n":-9223372036854775808}"#,
        ];
        let registry = weir::default_registry();
        let build = registry
            .format("json")
            .unwrap()
            .build(&serde_json::Value::Null, Some(schema.clone()))
            .unwrap();
        let mut d = (build.create)().unwrap();
        d.decode(&raw_batch(&lines), "fuzz").unwrap().batch
    };
    let seeds = vec![
        b"n > 1 AND s = 'x'".to_vec(),
        b"ctx.usr.id + 1".to_vec(),
        b"CASE WHEN f > 1.5 THEN upper(s) ELSE NULL END".to_vec(),
    ];
    fuzz(
        "sql_expression_compiler",
        seeds,
        |rng| Some(sql_expr(rng, 0).into_bytes()),
        move |input| {
            let text = String::from_utf8_lossy(input);
            if let Ok(e) = weir_engine::expr::SqlExpr::compile(&text, &schema) {
                let _ = e.evaluate(&batch);
            }
        },
    );
}
