//! The `vulcan` executable: server, client subcommands, isolate worker, and `vulcan
//! bench` (which lives here, outside the library, and reaches the server only through
//! the library's boot API and HTTP).

mod bench;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use bench::BenchOptions;
use vulcan::cli::{self, ClientCommand};
use vulcan::config::Config;
use vulcan::logging;
use vulcan::startup::Application;

/// Vulcan: run workloads with pluggable isolation behind an HTTP API, and the client that
/// talks to it.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the HTTP server (configuration: config/default.toml, VULCAN_CONFIG, VULCAN_*).
    Serve,
    /// Load and validate the configuration, print it (secrets redacted) and exit.
    CheckConfig,
    /// Measure memory and admission, HTTP latency and throughput, a node baseline, SSE
    /// fan-out and large logs in one run (boots its own in-process server on a loopback
    /// port; no config used).
    Bench(BenchArgs),
    /// An isolate worker process; started by the server only (its stdin is a socket).
    #[command(hide = true)]
    Worker,
    /// SSE subscribers of `vulcan bench`, in a child process of it.
    #[command(hide = true)]
    BenchSseClient(bench::sse::ClientArgs),
    #[command(flatten)]
    Client(ClientCommand),
}

#[derive(Args)]
struct BenchArgs {
    /// Tiny sample counts: a smoke run in seconds (figures are not meaningful).
    #[arg(long)]
    quick: bool,
    /// Also write the report as Markdown to this file (e.g. docs/benchmarks.md).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Override the sync latency sample count.
    #[arg(long)]
    sync_samples: Option<usize>,
    /// Override the async workload count.
    #[arg(long)]
    async_workloads: Option<usize>,
    /// Override the number of concurrent connections submitting async work.
    #[arg(long)]
    async_clients: Option<usize>,
    /// Override the SSE subscriber count.
    #[arg(long)]
    sse_subscribers: Option<usize>,
    /// Override the number of child processes the SSE subscribers are spread over.
    #[arg(long)]
    sse_client_processes: Option<usize>,
    /// Override the pause between two SSE log lines, in milliseconds.
    #[arg(long)]
    sse_interval_ms: Option<u64>,
    /// Override the number of workloads queued for the memory and admission figures.
    #[arg(long)]
    queued: Option<usize>,
    /// Also measure python hello on the gvisor backend over HTTP (root and runsc needed).
    #[arg(long)]
    gvisor: bool,
    /// Run only this section (on its own fresh server) and print its report.
    #[arg(long, value_enum)]
    only: Option<bench::Section>,
    /// Run the servers on PostgreSQL: a server URL whose role may create databases
    /// (each server boot takes a fresh database, dropped afterwards). Needed by
    /// `--only stores`.
    #[arg(long, value_name = "postgres://…")]
    db_url: Option<String>,
    /// Cluster nodes sharing one PostgreSQL database in `--only stores`.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=16))]
    nodes: Option<u16>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Worker = cli.command {
        return vulcan::backends::isolate::worker::main();
    }
    // Per-request access logs would distort the benchmark; a client prints only its own
    // output.
    let default_filter = match cli.command {
        Command::Bench(_) | Command::BenchSseClient(_) => "warn,vulcan::bench=info",
        Command::Client(_) => "warn",
        _ => "info,actix_server=warn",
    };
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_filter));
    // The server logs a line per request: buffered, written out on a short interval and
    // in full when `_flusher` is dropped at the end of `main`. Other commands log little
    // and write each line at once.
    let _flusher = match cli.command {
        Command::Serve => buffer_log(&mut logger),
        _ => None,
    };
    logger.init();
    match cli.command {
        Command::Bench(args) => run_bench(args),
        Command::Worker => vulcan::backends::isolate::worker::main(),
        Command::BenchSseClient(args) => bench::sse::client_main(args),
        Command::Client(command) => cli::main(command),
        Command::CheckConfig => match load_config() {
            Ok(config) => {
                println!("{config:#?}");
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Serve => match load_config() {
            Ok(config) => serve(config),
            Err(code) => code,
        },
    }
}

/// How long a server log line may wait in memory before it is written out (what a
/// `kill -9` may lose).
const LOG_FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Bytes of server log buffered at most; a line beyond it writes the buffer out at once.
const LOG_BUFFER_BYTES: usize = 64 * 1024;

/// Point `logger` at a buffered standard error; `None` (and unbuffered lines) if the
/// flusher thread cannot start.
fn buffer_log(logger: &mut env_logger::Builder) -> Option<logging::Flusher> {
    match logging::buffered(
        Box::new(std::io::stderr()),
        LOG_FLUSH_INTERVAL,
        LOG_BUFFER_BYTES,
    ) {
        Ok((sink, flusher)) => {
            // A pipe gets no colours by default; a terminal keeps them.
            if std::io::stderr().is_terminal() && std::env::var_os("RUST_LOG_STYLE").is_none() {
                logger.write_style(env_logger::WriteStyle::Always);
            }
            logger.target(env_logger::Target::Pipe(Box::new(sink)));
            Some(flusher)
        }
        Err(e) => {
            eprintln!("vulcan: log lines unbuffered: cannot start the log flusher: {e}");
            None
        }
    }
}

fn load_config() -> Result<Config, ExitCode> {
    Config::load().map_err(|e| {
        eprintln!("vulcan: {e}");
        ExitCode::from(2)
    })
}

fn run_bench(args: BenchArgs) -> ExitCode {
    let mut opts = if args.quick {
        BenchOptions::quick()
    } else {
        BenchOptions::full()
    };
    opts.sync_samples = args.sync_samples.unwrap_or(opts.sync_samples);
    opts.async_workloads = args.async_workloads.unwrap_or(opts.async_workloads);
    opts.async_clients = args.async_clients.unwrap_or(opts.async_clients);
    opts.sse_subscribers = args.sse_subscribers.unwrap_or(opts.sse_subscribers);
    opts.sse_client_processes = args
        .sse_client_processes
        .unwrap_or(opts.sse_client_processes);
    if let Some(ms) = args.sse_interval_ms {
        opts.sse_interval = std::time::Duration::from_millis(ms);
    }
    opts.queued = args.queued.unwrap_or(opts.queued);
    opts.gvisor = args.gvisor;
    opts.db_url = args.db_url;
    opts.nodes = args.nodes.map_or(opts.nodes, usize::from);
    let command = std::env::args()
        .enumerate()
        .map(|(i, a)| if i == 0 { "vulcan".to_string() } else { a })
        .collect::<Vec<_>>()
        .join(" ");
    if let Some(section) = args.only {
        return match bench::run_section(&opts, section) {
            Ok(markdown) => {
                println!("{markdown}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("vulcan bench: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let report = match bench::run(&opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vulcan bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let markdown = report.to_markdown(&command);
    println!("{markdown}");
    if let Some(path) = args.out {
        if let Err(e) = std::fs::write(&path, &markdown) {
            eprintln!("vulcan bench: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

fn serve(config: Config) -> ExitCode {
    let result = actix_web::rt::System::new().block_on(async move {
        let app = Application::build(config)
            .await
            .map_err(|e| e.to_string())?;
        app.run_until_stopped().await.map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            eprintln!("vulcan: {e}");
            ExitCode::FAILURE
        }
    }
}
