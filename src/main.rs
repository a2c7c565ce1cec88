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

/// weir: a dataflow stream processing engine.
#[derive(Parser)]
#[command(name = "weir", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
        /// Start with empty state even if checkpoints of this job exist.
        #[arg(long)]
        fresh: bool,
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = match &e {
                WeirError::Spec(_) | WeirError::Pipeline(_) => 2,
                WeirError::Engine(weir_engine::EngineError::Config(_)) => 2,
                WeirError::Engine(_) => 1,
                WeirError::Interrupted => 130,
            };
            eprintln!("error: {e}");
            ExitCode::from(code)
        }
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
                    .map_err(|e| WeirError::Pipeline(e.to_string()))?
            );
            Ok(())
        }
        Command::Run {
            file,
            parallelism,
            no_progress,
            restore,
            fresh,
        } => {
            let job = weir::load_job_file(&file, parallelism)?;
            let restore = match (restore, fresh) {
                (_, true) => Restore::Fresh,
                (Some(r), _) if r == "latest" => Restore::Latest,
                (Some(r), _) => Restore::From(r),
                (None, false) => Restore::Auto,
            };
            let options = weir::run_options(&job, restore);
            let rt = runtime()?;
            let show = !no_progress && std::io::stderr().is_terminal();
            let summary = rt.block_on(run_with_progress(job.graph, options, show))?;
            eprint!("{summary}");
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
        .map_err(|e| WeirError::Pipeline(format!("cannot start the runtime: {e}")))
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
    let status = std::process::Command::new("kill")
        .args(["-USR1", &pid.to_string()])
        .status()
        .map_err(|e| WeirError::Pipeline(format!("cannot run `kill`: {e}")))?;
    if !status.success() {
        return Err(WeirError::Pipeline(format!(
            "cannot signal process {pid}: is `weir run` running with that pid?"
        )));
    }
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let now = storage.list_savepoints().await?;
        if let Some(new) = now.iter().find(|s| !before.contains(s)) {
            println!("{}/savepoints/{new}", storage.describe());
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(WeirError::Pipeline(format!(
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
) -> Result<weir_engine::runtime::JobSummary, WeirError> {
    let checkpoints = options.checkpoint.is_some();
    let handle = weir_engine::runtime::start_with(graph, options).await?;
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
                return Ok(r?);
            }
            _ = tick.tick() => {
                if let Some(b) = &bar {
                    b.set_message(progress_line(&metrics, &mut last));
                    b.tick();
                }
            }
            _ = tokio::signal::ctrl_c() => {
                if stopping {
                    control.abort();
                    if let Some(b) = &bar { b.finish_and_clear(); }
                    return Err(WeirError::Interrupted);
                }
                stopping = true;
                control.stop();
                if checkpoints {
                    eprintln!("stopping: taking a checkpoint; the job resumes from it when run again (Ctrl-C again to abort)");
                } else {
                    eprintln!("stopping: sources end their input and sinks publish what they have (Ctrl-C again to abort)");
                }
            }
        }
    }
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
    format!(
        "in {read}  out {}  {rate:.0} rec/s  dlq {}  watermark {wm}",
        m.records_written(),
        m.dead_letters()
    )
}

fn format_ts(ms: i64) -> String {
    arrow::temporal_conversions::timestamp_ms_to_datetime(ms)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|| ms.to_string())
}
