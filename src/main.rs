//! The `weir` command line: run, validate and explain YAML jobs, print the JSON Schema.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use tracing_subscriber::EnvFilter;
use weir::WeirError;
use weir_engine::metrics::JobMetrics;
use weir_engine::runtime::Restore;

/// `weir --version`: the crate version and the commit it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("WEIR_COMMIT"),
    ")"
);

/// weir: a dataflow stream processing engine.
#[derive(Parser)]
#[command(name = "weir", version = VERSION, about, long_about = None)]
struct Cli {
    /// How log lines are written to stderr: `text` (colours only on a terminal and
    /// unless NO_COLOR is set) or `json` (one JSON object per line, for log shippers).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// The `--log-format` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the log subscriber: `RUST_LOG` filters (default: warnings and S3 retries),
/// stderr only.
fn init_logging(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    // Warnings, and the object store's retries (a slow or unreachable S3 endpoint is
    // otherwise a silent wait).
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,object_store::client::retry=info"));
    let errors = error_log().layer();
    let registry = tracing_subscriber::registry().with(filter).with(errors);
    match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_ansi(false)
                    .with_writer(std::io::stderr),
            )
            .init(),
        LogFormat::Text => {
            let colour = std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_ansi(colour)
                        .with_writer(std::io::stderr),
                )
                .init()
        }
    }
}

/// The files of the dead-letter sinks at `paths` (their part files), or an error naming
/// a path without any.
fn dead_letter_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, WeirError> {
    let mut files = Vec::new();
    for p in paths {
        let found = weir::dlq::files_for(p);
        if found.is_empty() {
            return Err(WeirError::Command(format!(
                "no dead-letter file at {} (nor part files of it)",
                p.display()
            )));
        }
        files.extend(found);
    }
    Ok(files)
}

/// The latest warnings and errors, for the dashboard.
fn error_log() -> &'static weir::http::ErrorLog {
    static LOG: std::sync::OnceLock<weir::http::ErrorLog> = std::sync::OnceLock::new();
    LOG.get_or_init(Default::default)
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Group dead letters by error kind and step: counts, first and last seen, and a
    /// sample, largest group first.
    Summary {
        /// Dead-letter files: a dead-letter sink's `path` (its part files are found too,
        /// e.g. `out/dead_letter.jsonl`) or a directory of them.
        paths: Vec<PathBuf>,
        /// Read a PostgreSQL dead-letter table instead: its connection string (`host=…
        /// user=… password=… dbname=…` or a URL).
        #[arg(long, requires = "table", conflicts_with = "paths")]
        postgres: Option<String>,
        /// The PostgreSQL table (`name` or `schema.name`).
        #[arg(long)]
        table: Option<String>,
    },
    /// Re-inject dead letters into a source's input through a remediation, exactly once:
    /// their payloads are decoded with the source's schema, `--set` expressions (or a
    /// registered Rust remediation) applied, and the records published. Into a file
    /// source: a new file its pattern matches (a checkpointing job reads it when it runs
    /// again), the entries recorded in a ledger file (`<path>.replayed` next to
    /// dead-letter files). Into a Kafka source: messages to its topic, in one transaction
    /// with a ledger message on the ledger topic. An entry is never replayed twice.
    Replay {
        /// The job file.
        job: PathBuf,
        /// The dead-letter files (a sink's path: its part files are found too).
        #[arg(long = "dead-letters", required_unless_present = "postgres")]
        dead_letters: Vec<PathBuf>,
        /// Read a PostgreSQL dead-letter table instead: its connection string.
        #[arg(long, requires = "table", conflicts_with = "dead_letters")]
        postgres: Option<String>,
        /// The PostgreSQL dead-letter table (`name` or `schema.name`).
        #[arg(long)]
        table: Option<String>,
        /// The ledger file of a replay into a file source (default: `<path>.replayed`
        /// next to the dead-letter files; needed with --postgres).
        #[arg(long)]
        ledger: Option<PathBuf>,
        /// The ledger topic of a replay into a Kafka source.
        #[arg(long, default_value = "__weir_dlq_replays")]
        ledger_topic: String,
        /// The source to replay into (default: the job's only file source).
        #[arg(long)]
        source: Option<String>,
        /// Only entries of this kind (repeatable): decode, validation, lookup, ...
        #[arg(long)]
        kind: Vec<String>,
        /// Only entries of this step (repeatable).
        #[arg(long)]
        step: Vec<String>,
        /// A remediation, `COLUMN=SQL` (repeatable), e.g. `amount=abs(amount)`.
        #[arg(long)]
        set: Vec<String>,
        /// A remediation written in Rust and registered under this name
        /// (`weir::dlq::register_remediation`) in the binary that runs the replay.
        #[arg(long)]
        remediation: Option<String>,
        /// Print what would be replayed; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run a YAML job.
    Run {
        /// The job file.
        file: PathBuf,
        /// Default parallelism of every node (overrides the file).
        #[arg(short, long)]
        parallelism: Option<usize>,
        /// Do not show the live progress line.
        #[arg(long)]
        no_progress: bool,
        /// Restore from `latest` (the latest completed checkpoint), a checkpoint number,
        /// a savepoint name, or the path of a checkpoint or savepoint directory. Without
        /// it a checkpointing job resumes from its latest checkpoint when there is one.
        #[arg(long, value_name = "latest|N|NAME|PATH", conflicts_with = "fresh")]
        restore: Option<String>,
        /// Start over: delete the job's checkpoints (savepoints are kept) and the files
        /// its sinks published in earlier runs, and start with empty state.
        #[arg(long)]
        fresh: bool,
        /// After SIGINT or SIGTERM, how long the job may take to stop (checkpoint and
        /// commit, or drain and publish) before it is aborted.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        stop_timeout: Duration,
        /// Serve Prometheus metrics (`/metrics`), the REST API (`/api/jobs`) and the
        /// dashboard (`/`) on this address while the job runs, e.g. `127.0.0.1:8081`
        /// (overrides the job's `http:`).
        #[arg(long, value_name = "ADDR")]
        http: Option<String>,
    },
    /// Load a running job's queryable state (`benches/query_load.sh`): CLIENTS
    /// keep-alive connections read random keys `0..KEYS` of a `table` step for a while;
    /// prints lookups/s and latency percentiles.
    QueryLoad {
        /// The job's HTTP endpoint, `host:port`.
        #[arg(long)]
        addr: String,
        /// The job.
        #[arg(long)]
        job: String,
        /// The `table` step.
        #[arg(long)]
        step: String,
        /// Keys are the integers 0..KEYS.
        #[arg(long, default_value_t = 50_000)]
        keys: u64,
        /// Concurrent clients.
        #[arg(long, default_value_t = 100)]
        clients: usize,
        /// How long.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
    /// Take a savepoint of a running job (`weir run` of the same file, process PID): it
    /// is signalled (SIGUSR1) and the savepoint's path is printed once complete.
    Savepoint {
        /// The job file the job runs.
        file: PathBuf,
        /// The process id of the running `weir run`.
        #[arg(long)]
        pid: u32,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
    },
    /// Check a YAML job and report every error with file, line, column and field.
    Validate {
        /// The job file.
        file: PathBuf,
    },
    /// Print the physical graph of a job: operators, parallelism, chains and edges.
    Explain {
        /// The job file.
        file: PathBuf,
        /// Default parallelism of every node (overrides the file).
        #[arg(short, long)]
        parallelism: Option<usize>,
    },
    /// Print the JSON Schema of job files (for editors).
    Schema,
    /// Work off dead letters.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Run the benchmark workloads (whole jobs) and print events/s, events/s per core,
    /// latency, peak RSS and the cost of checkpoints; see docs/BENCHMARKS.md.
    Bench {
        /// Workloads to run (default: all; see --list).
        workloads: Vec<String>,
        /// Parallelisms to run each workload at.
        #[arg(short, long, value_delimiter = ',', default_value = "1,2")]
        parallelism: Vec<usize>,
        /// Input modes: `gen` (generators feed the job) and/or `jsonl` (their rows
        /// written once to JSON lines, then read and decoded).
        #[arg(long, value_delimiter = ',', default_value = "gen,jsonl")]
        input: Vec<weir::bench::Input>,
        /// Checkpoint interval of the runs with checkpoints.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        checkpoint_every: Duration,
        /// Skip the runs with checkpoints.
        #[arg(long)]
        no_checkpoint: bool,
        /// Multiply every workload's event count by this.
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// In `jsonl` mode, at most this many rows per source.
        #[arg(long, default_value_t = 2_000_000)]
        jsonl_max_rows: u64,
        /// Runs of each measurement; the fastest is reported.
        #[arg(long, default_value_t = 1)]
        runs: usize,
        /// Also write the results as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Cache of JSON-lines inputs and checkpoint scratch space.
        #[arg(long, default_value = "target/weir-bench")]
        data_dir: PathBuf,
        /// Kafka bootstrap servers, for `--input kafka` and `--kafka-sink` (default:
        /// $WEIR_BENCH_KAFKA_BROKERS, else 127.0.0.1:19092).
        #[arg(long)]
        brokers: Option<String>,
        /// Where the output goes: `blackhole` (the workloads' own sinks), or a Kafka
        /// topic written `at-least-once` or `exactly-once` (transactions committed with
        /// checkpoints every --checkpoint-every, even with --no-checkpoint: such runs
        /// have no run without checkpoints).
        #[arg(long, value_delimiter = ',', default_value = "blackhole")]
        kafka_sink: Vec<weir::bench::SinkMode>,
        /// With `--input kafka`: also measure the broker with a plain client (read each
        /// input topic; write as many of its messages to a new topic).
        #[arg(long)]
        kafka_baseline: bool,
        /// The state backend of the keyed steps: `memory` or `rocksdb` (in the data
        /// dir).
        #[arg(long, default_value = "memory")]
        state: weir::bench::StateChoice,
        /// With `--state rocksdb`: the state's `memory_budget` per subtask (e.g. 64MB;
        /// half for RocksDB, half for open windows, the rest moves to RocksDB).
        /// Default: none (windows keep all open state in memory).
        #[arg(long)]
        memory_budget: Option<String>,
        /// List the workloads and exit.
        #[arg(long)]
        list: bool,
    },
    /// One measured benchmark run (used by `weir bench`, which starts it as a child
    /// process); prints the result as one JSON line.
    #[command(hide = true)]
    BenchChild {
        #[arg(long)]
        workload: String,
        #[arg(long)]
        input: weir::bench::Input,
        #[arg(short, long)]
        parallelism: usize,
        #[arg(long, value_parser = humantime::parse_duration)]
        checkpoint_every: Option<Duration>,
        #[arg(long)]
        scale: f64,
        #[arg(long)]
        jsonl_max_rows: u64,
        #[arg(long)]
        brokers: String,
        #[arg(long)]
        sink: weir::bench::SinkMode,
        #[arg(long)]
        out_topic: String,
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, default_value = "memory")]
        state: weir::bench::StateChoice,
        #[arg(long)]
        memory_budget: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// 2 for an invalid job, 1 for a failure while running, 128 + the signal for an abort.
fn exit_code(e: &WeirError) -> u8 {
    match e {
        WeirError::Spec(_) | WeirError::Pipeline(_) => 2,
        WeirError::Engine(weir_engine::EngineError::Config(_)) => 2,
        WeirError::Engine(_) | WeirError::Command(_) => 1,
        WeirError::Interrupted { code, .. } => *code,
    }
}

fn dispatch(cmd: Command) -> Result<(), WeirError> {
    match cmd {
        Command::Validate { file } => {
            let graph = weir::load_job(&file, None)?;
            println!(
                "{}: ok — job `{}` with {} node(s)",
                file.display(),
                graph.job,
                graph.nodes.len()
            );
            Ok(())
        }
        Command::Explain { file, parallelism } => {
            let graph = weir::load_job(&file, parallelism)?;
            let plan = weir_engine::planner::PhysicalPlan::new(&graph);
            print!("{}", plan.explain(&graph));
            Ok(())
        }
        Command::Schema => {
            let schema = weir_engine::spec::job_json_schema(&weir::default_registry());
            println!(
                "{}",
                serde_json::to_string_pretty(&schema)
                    .map_err(|e| WeirError::Command(e.to_string()))?
            );
            Ok(())
        }
        Command::Dlq {
            command:
                DlqCommand::Summary {
                    paths,
                    postgres,
                    table,
                },
        } => {
            let (entries, skipped) = match (postgres, table) {
                #[cfg(feature = "postgres")]
                (Some(conn), Some(table)) => (
                    runtime()?.block_on(weir::dlq::read_postgres(&conn, &table))?,
                    0,
                ),
                #[cfg(not(feature = "postgres"))]
                (Some(_), _) => {
                    return Err(WeirError::Command(
                        "this weir was built without the `postgres` feature".into(),
                    ))
                }
                _ => {
                    if paths.is_empty() {
                        return Err(WeirError::Command(
                            "name the dead-letter files (e.g. out/dead_letter.jsonl, as the \
                             run's summary shows) or --postgres CONNECTION --table TABLE"
                                .into(),
                        ));
                    }
                    weir::dlq::read_files(&dead_letter_files(&paths)?)?
                }
            };
            print!(
                "{}",
                weir::dlq::render(&weir::dlq::summarize(entries), skipped)
            );
            Ok(())
        }
        Command::Dlq {
            command:
                DlqCommand::Replay {
                    job,
                    dead_letters,
                    postgres,
                    table,
                    ledger,
                    ledger_topic,
                    source,
                    kind,
                    step,
                    set,
                    remediation,
                    dry_run,
                },
        } => {
            let (entries, ledger) = match (postgres, table) {
                #[cfg(feature = "postgres")]
                (Some(conn), Some(table)) => (
                    runtime()?.block_on(weir::dlq::read_postgres(&conn, &table))?,
                    ledger,
                ),
                #[cfg(not(feature = "postgres"))]
                (Some(_), _) => {
                    return Err(WeirError::Command(
                        "this weir was built without the `postgres` feature".into(),
                    ))
                }
                _ => {
                    let files = dead_letter_files(&dead_letters)?;
                    let ledger =
                        ledger.or_else(|| dead_letters.first().map(|p| weir::dlq::ledger_path(p)));
                    (weir::dlq::read_files(&files)?.0, ledger)
                }
            };
            let set = set
                .iter()
                .map(|s| {
                    s.split_once('=')
                        .map(|(c, e)| (c.trim().to_string(), e.trim().to_string()))
                        .ok_or_else(|| {
                            WeirError::Command(format!("--set {s}: expected COLUMN=SQL"))
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let spec = weir::dlq::ReplaySpec {
                job,
                source,
                kinds: kind,
                steps: step,
                set,
                function: remediation
                    .as_deref()
                    .map(weir::dlq::remediation)
                    .transpose()?,
                dry_run,
                ledger_topic: Some(ledger_topic),
            };
            let r = weir::dlq::replay(&spec, &entries, ledger.as_deref())?;
            println!(
                "{} {} dead letter(s) into {} ({} replayed before; ledger {})",
                if dry_run { "would replay" } else { "replayed" },
                r.replayed,
                r.input,
                r.already_replayed,
                r.ledger
            );
            for n in &r.not_decodable {
                println!("  not decodable with the source's schema, left: {n}");
            }
            Ok(())
        }
        Command::QueryLoad {
            addr,
            job,
            step,
            keys,
            clients,
            duration,
        } => {
            let spec = weir::http::load::LoadSpec {
                addr,
                path_prefix: format!("/api/jobs/{job}/state/{step}?key="),
                keys,
                clients,
                duration,
            };
            let report = runtime()?.block_on(weir::http::load::run(spec))?;
            println!("{report}");
            Ok(())
        }
        Command::Run {
            file,
            parallelism,
            no_progress,
            restore,
            fresh,
            stop_timeout,
            http,
        } => {
            let job = weir::load_job_file(&file, parallelism)?;
            let server = match http.as_deref().or(job.http.as_deref()) {
                Some(addr) => {
                    let s = weir::http::HttpServer::start(addr, error_log().clone())?;
                    eprintln!("dashboard and REST API on http://{}/", s.local_addr());
                    Some(s)
                }
                None => None,
            };
            let restore = match (restore, fresh) {
                (_, true) => Restore::Fresh,
                (Some(r), _) if r == "latest" => Restore::Latest,
                (Some(r), _) => Restore::From(r),
                (None, false) => Restore::Auto,
            };
            let options = weir::run_options(&job, restore);
            let rt = runtime()?;
            if fresh {
                let cleared = rt.block_on(weir::start_over(&job))?;
                eprint!("{cleared}");
            }
            let show = !no_progress && std::io::stderr().is_terminal();
            let result = rt.block_on(run_with_progress(
                job.graph,
                options,
                show,
                stop_timeout,
                server.as_ref(),
            ));
            // A failed job's tasks are cancelled; whatever is still inside a blocking
            // call does not hold the exit up for long.
            rt.shutdown_timeout(Duration::from_secs(5));
            eprint!("{}", result?);
            Ok(())
        }
        Command::Bench {
            workloads,
            parallelism,
            input,
            checkpoint_every,
            no_checkpoint,
            scale,
            jsonl_max_rows,
            runs,
            json,
            data_dir,
            brokers,
            kafka_sink,
            kafka_baseline,
            state,
            memory_budget,
            list,
        } => {
            if list {
                for w in weir::bench::WORKLOADS {
                    println!("{:<20} {}", w.name, w.about);
                }
                return Ok(());
            }
            let names: Vec<String> = if workloads.is_empty() {
                weir::bench::WORKLOADS
                    .iter()
                    .map(|w| w.name.to_string())
                    .collect()
            } else {
                workloads
            };
            for n in &names {
                if weir::bench::workload(n).is_none() {
                    return Err(WeirError::Pipeline(format!(
                        "no workload `{n}`; `weir bench --list` shows them"
                    )));
                }
            }
            let data_dir = std::path::absolute(&data_dir).map_err(|e| {
                WeirError::Command(format!("bad data dir {}: {e}", data_dir.display()))
            })?;
            let plan = BenchPlan {
                names,
                parallelism,
                input,
                checkpoint_every: (!no_checkpoint).then_some(checkpoint_every),
                exactly_once_every: checkpoint_every,
                scale,
                jsonl_max_rows,
                runs: runs.max(1),
                data_dir,
                brokers: brokers
                    .or_else(|| std::env::var("WEIR_BENCH_KAFKA_BROKERS").ok())
                    .unwrap_or_else(|| "127.0.0.1:19092".into()),
                sinks: kafka_sink,
                kafka_baseline,
                state,
                memory_budget,
            };
            let results = run_bench(&plan)?;
            if let Some(path) = json {
                let text = serde_json::to_string_pretty(&results)
                    .map_err(|e| WeirError::Command(format!("cannot write JSON: {e}")))?;
                std::fs::write(&path, text + "\n").map_err(|e| {
                    WeirError::Command(format!("cannot write {}: {e}", path.display()))
                })?;
                eprintln!("results written to {}", path.display());
            }
            Ok(())
        }
        Command::BenchChild {
            workload,
            input,
            parallelism,
            checkpoint_every,
            scale,
            jsonl_max_rows,
            brokers,
            sink,
            out_topic,
            data_dir,
            state,
            memory_budget,
        } => {
            let spec = weir::bench::RunSpec {
                workload,
                input,
                parallelism,
                checkpoint_every,
                scale,
                jsonl_max_rows,
                data_dir,
                brokers,
                sink,
                out_topic,
                state,
                memory_budget,
            };
            let rt = runtime()?;
            let result = rt.block_on(weir::bench::run_measured(&spec))?;
            let line = serde_json::to_string(&result)
                .map_err(|e| WeirError::Command(format!("cannot encode the result: {e}")))?;
            println!("{line}");
            Ok(())
        }
        Command::Savepoint {
            file,
            pid,
            timeout_secs,
        } => {
            let job = weir::load_job_file(&file, None)?;
            let config = job.checkpoint.clone().ok_or_else(|| {
                WeirError::Pipeline(format!(
                    "{}: the job has no `checkpoint:` section, so it cannot take savepoints",
                    file.display()
                ))
            })?;
            let rt = runtime()?;
            rt.block_on(take_savepoint(
                &job.graph.job,
                &config,
                pid,
                Duration::from_secs(timeout_secs),
            ))
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, WeirError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| WeirError::Command(format!("cannot start the runtime: {e}")))
}

/// Signals the running job and waits for a new savepoint to appear in its storage.
async fn take_savepoint(
    job: &str,
    config: &weir_engine::checkpoint::CheckpointConfig,
    pid: u32,
    timeout: Duration,
) -> Result<(), WeirError> {
    let storage = weir_engine::checkpoint::CheckpointStorage::open(&config.storage, job)?;
    let before = storage.list_savepoints().await?;
    signal_savepoint(pid)?;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let now = storage.list_savepoints().await?;
        if let Some(new) = now.iter().find(|s| !before.contains(s)) {
            println!("{}/savepoints/{new}", storage.describe());
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(WeirError::Command(format!(
                "no savepoint of job `{job}` appeared in {} within {timeout:?}",
                storage.describe()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn run_with_progress(
    graph: weir_engine::graph::LogicalGraph,
    options: weir_engine::runtime::RunOptions,
    show: bool,
    stop_timeout: Duration,
    server: Option<&weir::http::HttpServer>,
) -> Result<weir_engine::runtime::JobSummary, WeirError> {
    let checkpoints = options.checkpoint.is_some();
    let job_name = graph.job.clone();
    let nodes = weir::http::NodeInfo::of(&graph);
    // Listening starts before the job does: a signal sent at any moment of the run is
    // seen.
    let mut signals = StopSignals::new()?;
    let handle = weir_engine::runtime::start_with(graph, options).await?;
    let entry = server.map(|s| {
        let e = weir::http::JobEntry::new(job_name, nodes, &handle);
        s.add_job(e.clone());
        e
    });
    // Said on the terminal, not only in the log: a run that resumes reads only what is
    // new, and one resumed from a final checkpoint reads nothing.
    match &handle.restored_from {
        Some((epoch, weir_engine::checkpoint::CheckpointKind::Final)) => eprintln!(
            "resuming from checkpoint {epoch}: the job already finished there, so there is \
             nothing new to read (`weir run --fresh` starts over)"
        ),
        Some((epoch, weir_engine::checkpoint::CheckpointKind::Savepoint { name })) => {
            eprintln!("resuming from savepoint {name} (checkpoint {epoch})")
        }
        Some((epoch, _)) => {
            eprintln!("resuming from checkpoint {epoch} (`weir run --fresh` starts over instead)")
        }
        None => {}
    }
    let bar = if show {
        let b = ProgressBar::new_spinner();
        b.set_style(
            ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        Some(b)
    } else {
        None
    };
    let metrics = handle.metrics.clone();
    let mut last = (std::time::Instant::now(), 0u64);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut stopping = false;
    let mut deadline = None;
    let control = handle.control();
    let mut done = Box::pin(handle.wait());
    let mut usr1 = signal_usr1();
    loop {
        tokio::select! {
            _ = next_usr1(&mut usr1) => {
                let c = control.clone();
                tokio::spawn(async move {
                    match c.savepoint().await {
                        Ok(name) => tracing::info!(savepoint = %name, "savepoint complete"),
                        Err(e) => tracing::error!(error = %e, "savepoint failed"),
                    }
                });
            }
            r = &mut done => {
                if let Some(b) = &bar { b.finish_and_clear(); }
                if let Some(e) = &entry {
                    e.set_status(match &r {
                        Ok(s) if s.stopped_at_checkpoint.is_some() => "stopped",
                        Ok(_) => "finished",
                        Err(_) => "failed",
                    });
                }
                return Ok(r?);
            }
            _ = tick.tick() => {
                if let Some(b) = &bar {
                    b.set_message(progress_line(&metrics, &mut last));
                    b.tick();
                }
            }
            sig = signals.next() => {
                if stopping {
                    control.abort();
                    if let Some(b) = &bar { b.finish_and_clear(); }
                    exit_now(WeirError::Interrupted { signal: sig.name(), code: sig.exit_code() });
                }
                stopping = true;
                deadline = Some(tokio::time::Instant::now() + stop_timeout);
                control.stop();
                if let Some(b) = &bar { b.suspend(|| ()); }
                let how = if checkpoints {
                    "taking a checkpoint; the job resumes from it when run again"
                } else {
                    "sources end their input and sinks publish what they have"
                };
                eprintln!(
                    "stopping ({}): {how} (within {}; a second signal aborts)",
                    sig.name(),
                    humantime::format_duration(stop_timeout)
                );
            }
            _ = sleep_until(deadline) => {
                control.abort();
                if let Some(b) = &bar { b.finish_and_clear(); }
                exit_now(WeirError::Command(format!(
                    "the job did not stop within {} (--stop-timeout) and was aborted: \
                     sinks published only what earlier checkpoints committed",
                    humantime::format_duration(stop_timeout)
                )));
            }
        }
    }
}

/// Ends the process at once with `e`'s message and exit code: an abort does not wait
/// for tasks to notice it (a task inside a long write, a blocking call).
fn exit_now(e: WeirError) -> ! {
    eprintln!("error: {e}");
    std::process::exit(i32::from(exit_code(&e)))
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A signal that stops a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopSignal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM (systemd, Docker, Kubernetes).
    Terminate,
}

impl StopSignal {
    fn name(self) -> &'static str {
        match self {
            StopSignal::Interrupt => "SIGINT",
            StopSignal::Terminate => "SIGTERM",
        }
    }

    /// The shell's exit code for a process ended by this signal (128 + its number).
    fn exit_code(self) -> u8 {
        match self {
            StopSignal::Interrupt => 130,
            StopSignal::Terminate => 143,
        }
    }
}

/// SIGINT and SIGTERM, listened to from the start of the run to its end: a signal that
/// arrives while the run loop is busy elsewhere waits in its stream instead of being
/// lost (a `ctrl_c()` future made anew each turn misses what comes in between).
struct StopSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn new() -> Result<Self, WeirError> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let listen = |kind: SignalKind, name: &str| {
                signal(kind)
                    .map_err(|e| WeirError::Command(format!("cannot listen for {name}: {e}")))
            };
            Ok(StopSignals {
                interrupt: listen(SignalKind::interrupt(), "SIGINT")?,
                terminate: listen(SignalKind::terminate(), "SIGTERM")?,
            })
        }
        #[cfg(not(unix))]
        Ok(StopSignals {})
    }

    async fn next(&mut self) -> StopSignal {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => StopSignal::Interrupt,
                _ = self.terminate.recv() => StopSignal::Terminate,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            StopSignal::Interrupt
        }
    }
}

/// Asks the `weir run` with process id `pid` for a savepoint (SIGUSR1).
#[cfg(unix)]
fn signal_savepoint(pid: u32) -> Result<(), WeirError> {
    use rustix::process::{kill_process, Pid, Signal};
    let target = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| WeirError::Command(format!("{pid} is not a process id")))?;
    kill_process(target, Signal::USR1).map_err(|e| {
        let why = match e {
            rustix::io::Errno::SRCH => "no such process".to_string(),
            rustix::io::Errno::PERM => "not permitted (another user's process?)".to_string(),
            other => other.to_string(),
        };
        WeirError::Command(format!(
            "cannot signal process {pid}: {why}; give the pid of the running `weir run` \
             of this job file"
        ))
    })
}

#[cfg(not(unix))]
fn signal_savepoint(_pid: u32) -> Result<(), WeirError> {
    Err(WeirError::Command(
        "`weir savepoint` signals the job and needs a Unix system".into(),
    ))
}

#[cfg(unix)]
fn signal_usr1() -> Option<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()).ok()
}

#[cfg(not(unix))]
fn signal_usr1() -> Option<()> {
    None
}

#[cfg(unix)]
async fn next_usr1(s: &mut Option<tokio::signal::unix::Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn next_usr1(_: &mut Option<()>) {
    std::future::pending().await
}

fn progress_line(m: &JobMetrics, last: &mut (std::time::Instant, u64)) -> String {
    let read = m.records_read();
    let now = std::time::Instant::now();
    let dt = now.duration_since(last.0).as_secs_f64().max(1e-3);
    let rate = (read.saturating_sub(last.1)) as f64 / dt;
    *last = (now, read);
    let wm = match m.watermark() {
        Some(i64::MAX) => "end".to_string(),
        Some(t) => format_ts(t),
        None => "-".to_string(),
    };
    let lag = m
        .source_lag()
        .map(|l| format!("  lag {l}"))
        .unwrap_or_default();
    format!(
        "in {read}  out {}  {rate:.0} rec/s  dlq {}  watermark {wm}{lag}",
        m.records_written(),
        m.dead_letters()
    )
}

fn format_ts(ms: i64) -> String {
    arrow::temporal_conversions::timestamp_ms_to_datetime(ms)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// What `weir bench` runs.
struct BenchPlan {
    names: Vec<String>,
    parallelism: Vec<usize>,
    input: Vec<weir::bench::Input>,
    checkpoint_every: Option<Duration>,
    /// The checkpoint interval of exactly-once runs (which always have checkpoints).
    exactly_once_every: Duration,
    scale: f64,
    jsonl_max_rows: u64,
    runs: usize,
    data_dir: PathBuf,
    brokers: String,
    sinks: Vec<weir::bench::SinkMode>,
    kafka_baseline: bool,
    state: weir::bench::StateChoice,
    memory_budget: Option<String>,
}

/// One row of `weir bench`'s output: a run without checkpoints and, when asked, the
/// same run with them.
#[derive(serde::Serialize)]
struct BenchRow {
    #[serde(flatten)]
    plain: weir::bench::RunResult,
    with_checkpoints: Option<weir::bench::RunResult>,
    /// Fraction of events/s lost to checkpoints.
    checkpoint_cost: Option<f64>,
}

fn run_bench(plan: &BenchPlan) -> Result<Vec<BenchRow>, WeirError> {
    let rt = runtime()?;
    let mut rows = Vec::new();
    let mut failed = 0;
    println!(
        "{:<18} {:<5} {:<4} {:>2} {:>10} {:>9} {:>9} {:>8} {:>8} {:>7} | {:>9} {:>6} {:>9} {:>9} {:>11}",
        "workload",
        "input",
        "sink",
        "p",
        "events",
        "Mev/s",
        "Mev/core",
        "p50 ms",
        "p99 ms",
        "RSS MB",
        "ckpt Mev/s",
        "cost",
        "ckpt ms",
        "upload MB",
        "sync ms"
    );
    let mut runs_started = 0u64;
    for name in &plan.names {
        for &input in &plan.input {
            let mut baseline_done = false;
            for &sink in &plan.sinks {
                for &p in &plan.parallelism {
                    runs_started += 1;
                    let exactly_once = sink == weir::bench::SinkMode::ExactlyOnce;
                    let spec = weir::bench::RunSpec {
                        workload: name.clone(),
                        input,
                        parallelism: p,
                        // Exactly-once output needs checkpoints: its one run has them.
                        checkpoint_every: if exactly_once {
                            Some(plan.exactly_once_every)
                        } else {
                            None
                        },
                        scale: plan.scale,
                        jsonl_max_rows: plan.jsonl_max_rows,
                        data_dir: plan.data_dir.clone(),
                        brokers: plan.brokers.clone(),
                        sink,
                        out_topic: format!("weir-bench-out-{}-{runs_started}", std::process::id()),
                        state: plan.state,
                        memory_budget: plan.memory_budget.clone(),
                    };
                    let prepared = rt.block_on(weir::bench::prepare_inputs(&spec));
                    if prepared.is_ok()
                        && input == weir::bench::Input::Kafka
                        && plan.kafka_baseline
                        && !baseline_done
                    {
                        baseline_done = true;
                        print_kafka_baseline(&rt, &spec);
                    }
                    let measured =
                        prepared
                            .and_then(|()| best_of(&spec, plan.runs))
                            .and_then(|plain| {
                                let with = match plan.checkpoint_every.filter(|_| !exactly_once) {
                                    Some(every) => Some(best_of(
                                        &weir::bench::RunSpec {
                                            checkpoint_every: Some(every),
                                            ..spec.clone()
                                        },
                                        plan.runs,
                                    )?),
                                    None => None,
                                };
                                Ok((plain, with))
                            });
                    let (plain, with) = match measured {
                        Ok(m) => m,
                        Err(e) => {
                            // One broken workload does not hide the others' figures.
                            eprintln!("{name} ({}, p={p}) failed: {e}", input.name());
                            failed += 1;
                            continue;
                        }
                    };
                    let cost = with
                        .as_ref()
                        .map(|w| weir::bench::checkpoint_cost(&plain, w));
                    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
                    let ck_sync = with
                        .as_ref()
                        .and_then(|w| w.checkpoints.as_ref())
                        .map_or("-".to_string(), |c| {
                            format!("{:.1}/{:.1}", c.sync_mean_ms, c.sync_max_ms)
                        });
                    let (ck_rate, ck_cost, ck_ms, ck_up) = match (&with, cost) {
                        (Some(w), Some(c)) => {
                            let ck = w.checkpoints.as_ref();
                            (
                                format!("{:.3}", w.events_per_s / 1e6),
                                format!("{:.0}%", c * 100.0),
                                ck.map_or("-".into(), |c| {
                                    format!("{:.0}/{}", c.mean_duration_ms, c.max_duration_ms)
                                }),
                                ck.map_or("-".into(), |c| {
                                    format!("{:.1}", c.uploaded_bytes as f64 / 1e6)
                                }),
                            )
                        }
                        _ => ("-".into(), "-".into(), "-".into(), "-".into()),
                    };
                    let sink_name = match sink {
                        weir::bench::SinkMode::Blackhole => "-",
                        weir::bench::SinkMode::AtLeastOnce => "alo",
                        weir::bench::SinkMode::ExactlyOnce => "eo",
                    };
                    println!(
                    "{:<18} {:<5} {:<4} {:>2} {:>10} {:>9.3} {:>9.3} {:>8} {:>8} {:>7.0} | {:>9} {:>6} {:>9} {:>9} {:>11}",
                    name,
                    input.name(),
                    sink_name,
                    p,
                    plain.events,
                    plain.events_per_s / 1e6,
                    plain.events_per_core_s / 1e6,
                    ms(plain.latency_p50_ms),
                    ms(plain.latency_p99_ms),
                    plain.peak_rss_bytes as f64 / 1048576.0,
                    ck_rate,
                    ck_cost,
                    ck_ms,
                    ck_up,
                    ck_sync
                );
                    rows.push(BenchRow {
                        plain,
                        with_checkpoints: with,
                        checkpoint_cost: cost,
                    });
                }
            }
        }
    }
    if failed > 0 {
        return Err(WeirError::Command(format!(
            "{failed} benchmark run(s) failed (see above)"
        )));
    }
    Ok(rows)
}

/// Prints what a plain Kafka client reads and writes on the brokers of `spec` (the
/// ceiling of weir's Kafka figures).
#[cfg(feature = "kafka")]
fn print_kafka_baseline(rt: &tokio::runtime::Runtime, spec: &weir::bench::RunSpec) {
    match rt.block_on(weir::bench::kafka_baseline(spec)) {
        Ok(rates) => {
            for (topic, what, msgs, mb) in rates {
                println!(
                    "  broker baseline ({what}, plain librdkafka client, {} partitions, {topic}): {:.3} M msg/s, {mb:.1} MB/s",
                    weir::bench::KAFKA_PARTITIONS,
                    msgs / 1e6
                );
            }
        }
        Err(e) => eprintln!("broker baseline failed: {e}"),
    }
}

#[cfg(not(feature = "kafka"))]
fn print_kafka_baseline(_rt: &tokio::runtime::Runtime, _spec: &weir::bench::RunSpec) {}

/// Runs one measurement `runs` times in child processes; keeps the fastest.
fn best_of(spec: &weir::bench::RunSpec, runs: usize) -> Result<weir::bench::RunResult, WeirError> {
    let mut best: Option<weir::bench::RunResult> = None;
    for _ in 0..runs {
        let r = run_child(spec)?;
        if best
            .as_ref()
            .is_none_or(|b| r.events_per_s > b.events_per_s)
        {
            best = Some(r);
        }
    }
    best.ok_or_else(|| WeirError::Command("no run".into()))
}

/// Runs one measurement in a child process (`weir bench-child`).
fn run_child(spec: &weir::bench::RunSpec) -> Result<weir::bench::RunResult, WeirError> {
    let exe = std::env::current_exe()
        .map_err(|e| WeirError::Command(format!("cannot find the weir binary: {e}")))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("bench-child")
        .args(["--workload", &spec.workload])
        .args(["--input", spec.input.name()])
        .args(["--parallelism", &spec.parallelism.to_string()])
        .args(["--scale", &spec.scale.to_string()])
        .args(["--jsonl-max-rows", &spec.jsonl_max_rows.to_string()])
        .args(["--brokers", &spec.brokers])
        .args(["--sink", spec.sink.name()])
        .args(["--out-topic", &spec.out_topic])
        .args(["--state", spec.state.name()])
        .arg("--data-dir")
        .arg(&spec.data_dir);
    if let Some(d) = spec.checkpoint_every {
        cmd.args(["--checkpoint-every", &format!("{}ms", d.as_millis())]);
    }
    if let Some(b) = &spec.memory_budget {
        cmd.args(["--memory-budget", b]);
    }
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| WeirError::Command(format!("cannot start a benchmark run: {e}")))?;
    if spec.sink != weir::bench::SinkMode::Blackhole {
        // The run's output topics are of no further use.
        if let Err(e) = runtime()?.block_on(weir::bench::delete_out_topics(spec)) {
            tracing::warn!("cannot delete the benchmark's output topics: {e}");
        }
    }
    if !out.status.success() {
        return Err(WeirError::Command(format!(
            "benchmark run of `{}` ({}, p={}) failed ({}):\n{}",
            spec.workload,
            spec.input.name(),
            spec.parallelism,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).map_err(|e| {
        WeirError::Command(format!(
            "benchmark run of `{}` printed no result ({e}): {stdout}",
            spec.workload
        ))
    })
}
