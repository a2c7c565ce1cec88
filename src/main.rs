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
        } => {
            let graph = weir::load_job(&file, parallelism)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| WeirError::Pipeline(format!("cannot start the runtime: {e}")))?;
            let show = !no_progress && std::io::stderr().is_terminal();
            let summary = rt.block_on(run_with_progress(graph, show))?;
            eprint!("{summary}");
            Ok(())
        }
    }
}

async fn run_with_progress(
    graph: weir_engine::graph::LogicalGraph,
    show: bool,
) -> Result<weir_engine::runtime::JobSummary, WeirError> {
    let handle = weir_engine::runtime::start(graph)?;
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
    loop {
        tokio::select! {
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
                eprintln!("stopping: sources end their input and sinks publish what they have (Ctrl-C again to abort)");
            }
        }
    }
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
