//! `vulcan bench`: one run, one machine, every headline figure side by side with its
//! baseline.
//!
//! Sections: cold engine instances (QuickJS, wasmtime); the real application booted
//! in-process on a loopback port and driven over HTTP (sync latency, async throughput);
//! a process-per-workload `node` baseline; SSE fan-out latency to many subscribers of
//! one workload, using a purpose-built backend that stamps each log line with its send
//! time. Set-up failures are returned as [`BenchError`], never panics.

pub mod logs;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::backends::isolate::{bench_cold_js, bench_cold_wasm, bench_js_workload};
use crate::backends::{
    Backend, BackendCapabilities, BackendError, BackendFactory, BackendHealth, ExecContext,
    WorkloadResult, WorkloadSpec,
};
use crate::config::Config;
use crate::model::{Isolation, Runtime, WorkloadId};
use crate::startup::{builtin_backends, Application};

/// The trivial workload every HTTP section submits.
const TRIVIAL_BODY: &str =
    r#"{"runtime":"node","code":"export default (i) => ({sum: i.a + i.b})","input":{"a":1,"b":2}}"#;

/// The same function as [`TRIVIAL_BODY`], as a script for `node -e`.
const NODE_SCRIPT: &str =
    "const f = (i) => ({sum: i.a + i.b}); console.log(JSON.stringify(f({a: 1, b: 2})));";

/// Target: sync p50 at most this.
const TARGET_SYNC_P50: Duration = Duration::from_millis(1);
/// Target: at least this many times faster than a `node` process per workload.
const TARGET_NODE_FACTOR: f64 = 50.0;
/// Target: at least this many trivial workloads per second end to end.
const TARGET_THROUGHPUT: f64 = 5_000.0;

/// How much work each section does.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Cold JS and cold Wasm instances measured (each).
    pub cold_samples: usize,
    /// Sync requests sent before measuring.
    pub sync_warmup: usize,
    /// Sync requests measured.
    pub sync_samples: usize,
    /// Async workloads submitted for the throughput figure.
    pub async_workloads: usize,
    /// Concurrent client connections submitting them.
    pub async_clients: usize,
    /// `node -e` processes spawned for the baseline; 0 skips it.
    pub node_runs: usize,
    /// Concurrent SSE subscribers to the one workload.
    pub sse_subscribers: usize,
    /// Log lines the SSE workload emits.
    pub sse_lines: usize,
    /// Pause between two SSE log lines.
    pub sse_interval: Duration,
    /// Whether to run the gVisor section (needs root and `runsc`).
    pub gvisor: bool,
    /// gVisor runs measured (each of backend and bare `runsc run`).
    pub gvisor_runs: usize,
    /// The vulcan binary isolate workers start from; `None` = this executable.
    pub worker_path: Option<std::path::PathBuf>,
    /// The large-log section.
    pub logs: logs::LogsOptions,
}

impl BenchOptions {
    /// The full benchmark (minutes on a small machine).
    pub fn full() -> Self {
        Self {
            cold_samples: 2_000,
            sync_warmup: 200,
            sync_samples: 2_000,
            async_workloads: 5_000,
            async_clients: 4,
            node_runs: 30,
            sse_subscribers: 1_000,
            sse_lines: 200,
            sse_interval: Duration::from_millis(5),
            gvisor: false,
            gvisor_runs: 10,
            worker_path: None,
            logs: logs::LogsOptions {
                lines: 100_000,
                submits: 1_000,
                readers: 4,
            },
        }
    }

    /// Tiny sample counts: a smoke run that finishes in seconds.
    pub fn quick() -> Self {
        Self {
            cold_samples: 20,
            sync_warmup: 5,
            sync_samples: 20,
            async_workloads: 50,
            async_clients: 2,
            node_runs: 3,
            sse_subscribers: 20,
            sse_lines: 10,
            sse_interval: Duration::from_millis(5),
            gvisor: false,
            gvisor_runs: 3,
            worker_path: None,
            logs: logs::LogsOptions {
                lines: 2_000,
                submits: 20,
                readers: 4,
            },
        }
    }
}

/// A benchmark could not be set up or run to the end.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// An engine failed while measuring cold starts.
    #[error("{0}: {1}")]
    Backend(&'static str, BackendError),
    /// An I/O operation failed.
    #[error("{0}: {1}")]
    Io(String, io::Error),
    /// The application could not be configured or started.
    #[error("application set-up: {0}")]
    Setup(String),
    /// The server answered something unexpected.
    #[error("unexpected answer: {0}")]
    Http(String),
    /// Something did not finish in time.
    #[error("timed out: {0}")]
    Timeout(String),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> BenchError {
    let context = context.into();
    move |e| BenchError::Io(context, e)
}

/// Median and 99th percentile of a set of samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Percentiles {
    /// How many samples.
    pub samples: usize,
    /// Median (nearest rank).
    pub p50: Duration,
    /// 99th percentile (nearest rank).
    pub p99: Duration,
}

impl Percentiles {
    /// Percentiles of `samples`; `None` when there are none.
    pub fn of(mut samples: Vec<Duration>) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let rank = |p: f64| {
            let idx = (p * samples.len() as f64).ceil() as usize;
            samples[idx.saturating_sub(1).min(samples.len() - 1)]
        };
        Some(Self {
            samples: samples.len(),
            p50: rank(0.50),
            p99: rank(0.99),
        })
    }
}

/// The process-per-workload baseline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeBaseline {
    /// `node -e` run this many times.
    Measured(Percentiles),
    /// Not measured, and why.
    Skipped(String),
}

/// Async submit → completed throughput.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throughput {
    /// Workloads submitted and completed.
    pub workloads: usize,
    /// Concurrent submitting connections.
    pub clients: usize,
    /// First submission until no workload is pending or running.
    pub elapsed: Duration,
}

impl Throughput {
    /// Workloads per second.
    pub fn per_second(&self) -> f64 {
        self.workloads as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }
}

/// SSE fan-out figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseFigures {
    /// Concurrent subscribers.
    pub subscribers: usize,
    /// Lines the workload emitted.
    pub lines_sent: usize,
    /// Pause between two emitted lines.
    pub interval: Duration,
    /// Fewest lines any subscriber received.
    pub min_received: usize,
    /// Most lines any subscriber received.
    pub max_received: usize,
    /// Line produced → line received, over every line of every subscriber.
    pub latency: Percentiles,
}

impl SseFigures {
    /// The section as Markdown.
    pub fn markdown(&self, s: &mut String) {
        let e = self;
        let _ = writeln!(s, "\n## SSE fan-out\n");
        let _ = writeln!(
            s,
            "{} subscribers on one workload emitting {} lines every {} ms; latency = line \
             produced in the backend → line parsed by the subscriber.\n",
            e.subscribers,
            e.lines_sent,
            ms(e.interval)
        );
        let _ = writeln!(
            s,
            "| samples | p50 ms | p99 ms | lines per subscriber (min / max / sent) |\n|---|---|---|---|"
        );
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} / {} / {} |",
            e.latency.samples,
            ms(e.latency.p50),
            ms(e.latency.p99),
            e.min_received,
            e.max_received,
            e.lines_sent
        );
    }
}

/// The gVisor section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GvisorFigures {
    /// Python hello through the backend, and the same bundle under bare `runsc run`.
    Measured {
        /// Through [`crate::backends::gvisor::GvisorBackend`].
        backend: Percentiles,
        /// Bare `runsc run` of the prepared bundle.
        bare: Percentiles,
    },
    /// Not measured, and why.
    Skipped(String),
}

/// The machine the figures come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// Logical CPUs available to the process.
    pub cpus: usize,
    /// `MemTotal` from `/proc/meminfo`.
    pub memory: String,
    /// `model name` from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// Kernel release.
    pub kernel: String,
    /// Build profile of this binary.
    pub profile: &'static str,
    /// `/proc/loadavg` when the run started: other work on the machine skews figures.
    pub load_at_start: String,
}

impl Machine {
    /// Describe the current machine (unknown fields say so).
    pub fn detect() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let field = |text: &str, key: &str| {
            text.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
                .unwrap_or_else(|| "unknown".into())
        };
        Self {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory: field(&read("/proc/meminfo"), "MemTotal"),
            cpu_model: field(&read("/proc/cpuinfo"), "model name"),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            load_at_start: read("/proc/loadavg")
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
            profile: if cfg!(debug_assertions) {
                "debug (dependencies at opt-level 1)"
            } else {
                "release"
            },
        }
    }
    /// The machine table (and the debug-build warning) as Markdown.
    pub fn markdown(&self, s: &mut String) {
        let m = self;
        let _ = writeln!(s, "## Machine\n");
        let _ = writeln!(s, "| | |\n|---|---|");
        let _ = writeln!(s, "| CPUs (nproc) | {} |", m.cpus);
        let _ = writeln!(s, "| CPU model | {} |", m.cpu_model);
        let _ = writeln!(s, "| memory | {} |", m.memory);
        let _ = writeln!(s, "| kernel | {} |", m.kernel);
        let _ = writeln!(s, "| build | {} |", m.profile);
        let _ = writeln!(
            s,
            "| load average at start (1/5/15 min) | {} |\n",
            m.load_at_start
        );
        if cfg!(debug_assertions) {
            let _ = writeln!(
                s,
                "**Debug build**: Vulcan's own code is unoptimised (dependencies at \
                 opt-level 1). Release figures will be better; treat these as upper bounds.\n"
            );
        }
    }
}

/// Every figure of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// Where it ran.
    pub machine: Machine,
    /// Fresh QuickJS runtime + context + trivial eval.
    pub cold_js: Percentiles,
    /// The whole per-workload JavaScript path on the worker thread.
    pub js_workload: Percentiles,
    /// Fresh wasmtime store + instantiation + `_start` of a cached module.
    pub cold_wasm: Percentiles,
    /// `POST /v1/workloads` (sync) round trip, one keep-alive connection.
    pub sync: Percentiles,
    /// Async submissions until all completed.
    pub throughput: Throughput,
    /// `node -e` per workload.
    pub node: NodeBaseline,
    /// SSE fan-out.
    pub sse: SseFigures,
    /// gVisor python hello, when asked for.
    pub gvisor: Option<GvisorFigures>,
    /// Reading a large log while submitting.
    pub logs: logs::LogsFigures,
}

/// One target and whether this run met it.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// What is measured.
    pub name: &'static str,
    /// The goal, in words.
    pub goal: String,
    /// What this run measured.
    pub actual: String,
    /// `None` when it could not be measured.
    pub met: Option<bool>,
}

fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

impl BenchReport {
    /// `node_p50 / vulcan_sync_p50`, when the baseline ran.
    pub fn node_factor(&self) -> Option<f64> {
        match &self.node {
            NodeBaseline::Measured(n) => {
                Some(n.p50.as_secs_f64() / self.sync.p50.as_secs_f64().max(f64::EPSILON))
            }
            NodeBaseline::Skipped(_) => None,
        }
    }

    /// The targets and whether they were met.
    pub fn targets(&self) -> Vec<Target> {
        let factor = self.node_factor();
        let tput = self.throughput.per_second();
        vec![
            Target {
                name: "sync trivial JS p50",
                goal: format!("≤ {} ms", ms(TARGET_SYNC_P50)),
                actual: format!("{} ms", ms(self.sync.p50)),
                met: Some(self.sync.p50 <= TARGET_SYNC_P50),
            },
            Target {
                name: "vs node process per workload",
                goal: format!("≥ {TARGET_NODE_FACTOR:.0}× faster"),
                actual: factor.map_or_else(|| "not measured".into(), |f| format!("{f:.1}×")),
                met: factor.map(|f| f >= TARGET_NODE_FACTOR),
            },
            Target {
                name: "async trivial workloads end to end",
                goal: format!("≥ {TARGET_THROUGHPUT:.0} /s"),
                actual: format!("{tput:.0} /s"),
                met: Some(tput >= TARGET_THROUGHPUT),
            },
            {
                let (goal, actual) = self.logs.target();
                Target {
                    name: "async submit p99 while 4 clients read large histories",
                    goal,
                    actual,
                    met: Some(self.logs.target_met()),
                }
            },
        ]
    }

    /// The report as Markdown (also what `vulcan bench` prints).
    pub fn to_markdown(&self, command: &str) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# Vulcan benchmarks\n");
        let _ = writeln!(s, "Generated by `{command}`.\n");
        self.machine.markdown(&mut s);

        let _ = writeln!(s, "## Cold instances (in-process, no HTTP)\n");
        let _ = writeln!(s, "| what | samples | p50 µs | p99 µs |\n|---|---|---|---|");
        for (name, p) in [
            ("JS: QuickJS runtime + context + eval", &self.cold_js),
            (
                "JS workload: the above + prelude + api.md module + call + JSON",
                &self.js_workload,
            ),
            (
                "Wasm: store + instantiate + `_start` (cached module)",
                &self.cold_wasm,
            ),
        ] {
            let _ = writeln!(
                s,
                "| {name} | {} | {} | {} |",
                p.samples,
                us(p.p50),
                us(p.p99)
            );
        }

        let _ = writeln!(s, "\n## HTTP, real app in-process (isolate backend)\n");
        let _ = writeln!(s, "| what | samples | p50 ms | p99 ms |\n|---|---|---|---|");
        let _ = writeln!(
            s,
            "| sync `POST /v1/workloads`, trivial JS, one keep-alive connection | {} | {} | {} |",
            self.sync.samples,
            ms(self.sync.p50),
            ms(self.sync.p99)
        );
        match &self.node {
            NodeBaseline::Measured(n) => {
                let _ = writeln!(
                    s,
                    "| baseline: `node -e` process per workload | {} | {} | {} |",
                    n.samples,
                    ms(n.p50),
                    ms(n.p99)
                );
            }
            NodeBaseline::Skipped(why) => {
                let _ = writeln!(s, "| baseline: `node -e` — skipped: {why} | | | |");
            }
        }
        if let Some(f) = self.node_factor() {
            let _ = writeln!(s, "\nnode p50 / vulcan sync p50 = **{f:.1}×**");
        }
        let t = &self.throughput;
        let _ = writeln!(
            s,
            "\nAsync throughput: {} workloads submitted over {} connections, all completed in \
             {:.3} s → **{:.0} workloads/s** (first submit → no workload pending or running; outcomes checked in `/v1/stats` afterwards).",
            t.workloads,
            t.clients,
            t.elapsed.as_secs_f64(),
            t.per_second()
        );

        self.sse.markdown(&mut s);

        if let Some(g) = &self.gvisor {
            let _ = writeln!(s, "\n## gVisor: python hello\n");
            match g {
                GvisorFigures::Measured { backend, bare } => {
                    let _ = writeln!(s, "| what | runs | p50 ms | p99 ms |\n|---|---|---|---|");
                    for (name, p) in [("gvisor backend", backend), ("bare `runsc run`", bare)] {
                        let _ = writeln!(
                            s,
                            "| {name} | {} | {} | {} |",
                            p.samples,
                            ms(p.p50),
                            ms(p.p99)
                        );
                    }
                    let ratio = backend.p50.as_secs_f64() / bare.p50.as_secs_f64().max(1e-9);
                    let _ = writeln!(s, "\nbackend p50 / bare p50 = **{ratio:.2}×**");
                }
                GvisorFigures::Skipped(why) => {
                    let _ = writeln!(s, "Skipped: {why}");
                }
            }
        }

        self.logs.markdown(&mut s);

        let _ = writeln!(s, "\n## Targets\n");
        let _ = writeln!(s, "| target | goal | this run | met |\n|---|---|---|---|");
        for t in self.targets() {
            let met = match t.met {
                Some(true) => "met",
                Some(false) => "**not met**",
                None => "not measured",
            };
            let _ = writeln!(s, "| {} | {} | {} | {met} |", t.name, t.goal, t.actual);
        }
        s
    }
}

/// Run every section with `opts`. Progress goes to the `log` crate at info level.
pub fn run(opts: &BenchOptions) -> Result<BenchReport, BenchError> {
    let machine = Machine::detect();
    log::info!("cold JS instances ({})", opts.cold_samples);
    let cold_js = percentiles(
        "cold JS",
        bench_cold_js(opts.cold_samples.max(1)).map_err(|e| BenchError::Backend("cold JS", e))?,
    )?;
    log::info!("JS workloads on the calling thread ({})", opts.cold_samples);
    let js_workload = percentiles(
        "JS workload",
        bench_js_workload(opts.cold_samples.max(1))
            .map_err(|e| BenchError::Backend("JS workload", e))?,
    )?;
    log::info!("cold Wasm instances ({})", opts.cold_samples);
    let cold_wasm = percentiles(
        "cold Wasm",
        bench_cold_wasm(opts.cold_samples.max(1))
            .map_err(|e| BenchError::Backend("cold Wasm", e))?,
    )?;
    log::info!("node baseline ({} runs)", opts.node_runs);
    let node = node_baseline(opts.node_runs);

    let fd_want = (opts.sse_subscribers as u64) * 2 + 256;
    if let Err(e) = raise_fd_limit(fd_want) {
        log::warn!("could not raise the open-file limit to {fd_want}: {e}");
    }

    let base = Instant::now();
    let (go_tx, go_rx) = watch::channel(false);
    let sse_backend: BackendFactory = {
        let lines = opts.sse_lines;
        let interval = opts.sse_interval;
        Arc::new(move || {
            Arc::new(SseBenchBackend {
                lines,
                interval,
                base,
                go: go_rx.clone(),
            }) as Arc<dyn Backend>
        })
    };
    let server = BenchServer::start(opts, sse_backend)?;
    let result = http_sections(opts, &server, base, &go_tx);
    // Let a waiting SSE workload finish whatever happened, then stop the server.
    let _ = go_tx.send(true);
    let logs = result.and_then(|figures| {
        log::info!(
            "large logs ({} lines; {} submits idle and under {} readers)",
            opts.logs.lines,
            opts.logs.submits,
            opts.logs.readers
        );
        Ok((figures, logs::run(server.addr, opts.logs)?))
    });
    server.stop();
    let ((sync, throughput, sse), logs) = logs?;

    let gvisor = opts.gvisor.then(|| gvisor_section(opts.gvisor_runs));
    Ok(BenchReport {
        machine,
        cold_js,
        js_workload,
        cold_wasm,
        sync,
        throughput,
        node,
        sse,
        gvisor,
        logs,
    })
}

/// A section that can be run alone (`vulcan bench --only`), e.g. to compare one change
/// before and after without the minutes the other sections take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    /// SSE fan-out to `sse_subscribers` subscribers of one workload.
    Sse,
    /// Large logs: history, replay, peak RSS, submit latency idle and under readers.
    Logs,
}

/// Run one section with `opts` on a fresh in-process server; its report as Markdown
/// (the machine table, then the section).
pub fn run_section(opts: &BenchOptions, section: Section) -> Result<String, BenchError> {
    let machine = Machine::detect();
    let fd_want = (opts.sse_subscribers as u64) * 2 + 256;
    if let Err(e) = raise_fd_limit(fd_want) {
        log::warn!("could not raise the open-file limit to {fd_want}: {e}");
    }
    let base = Instant::now();
    let (go_tx, go_rx) = watch::channel(false);
    let sse_backend: BackendFactory = {
        let lines = opts.sse_lines;
        let interval = opts.sse_interval;
        Arc::new(move || {
            Arc::new(SseBenchBackend {
                lines,
                interval,
                base,
                go: go_rx.clone(),
            }) as Arc<dyn Backend>
        })
    };
    let server = BenchServer::start(opts, sse_backend)?;
    let mut s = String::new();
    machine.markdown(&mut s);
    let result = match section {
        Section::Sse => sse_latency(opts, server.addr, base, &go_tx).map(|e| e.markdown(&mut s)),
        Section::Logs => logs::run(server.addr, opts.logs).map(|l| l.markdown(&mut s)),
    };
    let _ = go_tx.send(true);
    server.stop();
    result.map(|()| s)
}

fn percentiles(what: &str, samples: Vec<Duration>) -> Result<Percentiles, BenchError> {
    Percentiles::of(samples).ok_or_else(|| BenchError::Setup(format!("{what}: no samples")))
}

fn http_sections(
    opts: &BenchOptions,
    server: &BenchServer,
    base: Instant,
    go: &watch::Sender<bool>,
) -> Result<(Percentiles, Throughput, SseFigures), BenchError> {
    log::info!(
        "sync latency ({} warm-up, {} measured)",
        opts.sync_warmup,
        opts.sync_samples
    );
    let sync = sync_latency(server.addr, opts.sync_warmup, opts.sync_samples)?;
    log::info!(
        "async throughput ({} workloads, {} clients)",
        opts.async_workloads,
        opts.async_clients
    );
    let throughput = async_throughput(server.addr, opts.async_workloads, opts.async_clients)?;
    log::info!(
        "SSE fan-out ({} subscribers, {} lines)",
        opts.sse_subscribers,
        opts.sse_lines
    );
    let sse = sse_latency(opts, server.addr, base, go)?;
    Ok((sync, throughput, sse))
}

// ---------------------------------------------------------------------------------------
// The application under test.

/// The real application on its own thread and actix `System`, on a loopback port.
struct BenchServer {
    addr: SocketAddr,
    handle: actix_web::dev::ServerHandle,
    system: actix::System,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl BenchServer {
    fn start(opts: &BenchOptions, extra: BackendFactory) -> Result<Self, BenchError> {
        let dir = tempfile::tempdir().map_err(io_err("temporary directory"))?;
        let db = dir.path().join("bench.db");
        let mut env: HashMap<String, String> = HashMap::new();
        for (k, v) in [
            ("VULCAN_LISTEN_ADDR", "127.0.0.1:0".to_string()),
            ("VULCAN_DB_PATH", db.to_string_lossy().into_owned()),
            ("VULCAN_NODE_ID", "bench".into()),
            ("VULCAN_SHUTDOWN_TIMEOUT_S", "5".into()),
            (
                "VULCAN_MAX_QUEUE",
                (opts.async_workloads + 1_000).to_string(),
            ),
            ("VULCAN_BACKENDS__ISOLATE__ENABLED", "true".into()),
            (
                "VULCAN_BACKENDS__ISOLATE__WORKER_PATH",
                opts.worker_path
                    .as_ref()
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            ),
            ("VULCAN_BACKENDS__GVISOR__ENABLED", "false".into()),
            ("VULCAN_BACKENDS__MICROVM__ENABLED", "false".into()),
        ] {
            env.insert(k.into(), v);
        }
        let config = Config::load_from(env).map_err(|e| BenchError::Setup(e.to_string()))?;
        let mut backends = builtin_backends(&config);
        backends.push(extra);
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("bench-server".into())
            .spawn(move || {
                let sys = actix_web::rt::System::new();
                let started = sys.block_on(async move {
                    match Application::build_with(config, backends).await {
                        Ok(app) => {
                            let _ =
                                tx.send(Ok((app.port(), app.handle(), actix::System::current())));
                            actix_web::rt::spawn(async move {
                                if let Err(e) = app.run_until_stopped().await {
                                    log::error!("bench server: {e}");
                                }
                                actix::System::current().stop();
                            });
                            true
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                            false
                        }
                    }
                });
                if started {
                    let _ = sys.run();
                }
            })
            .map_err(io_err("spawning the server thread"))?;
        let (port, handle, system) = rx
            .recv()
            .map_err(|_| BenchError::Setup("the server thread exited during start-up".into()))?
            .map_err(BenchError::Setup)?;
        Ok(Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            handle,
            system,
            thread: Some(thread),
            _dir: dir,
        })
    }

    /// Graceful stop (store flushed), waiting for the server thread.
    fn stop(mut self) {
        let handle = self.handle.clone();
        self.system.arbiter().spawn(async move {
            handle.stop(true).await;
        });
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("bench server thread panicked");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// A minimal blocking keep-alive HTTP/1.1 client (no extra dependencies, no pooling
// surprises: one request in flight per connection).

struct HttpConn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl HttpConn {
    fn connect(addr: SocketAddr) -> Result<Self, BenchError> {
        let stream = TcpStream::connect(addr).map_err(io_err(format!("connect {addr}")))?;
        stream.set_nodelay(true).map_err(io_err("TCP_NODELAY"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .map_err(io_err("read timeout"))?;
        let writer = stream.try_clone().map_err(io_err("clone socket"))?;
        Ok(Self {
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Send one request and read the whole response: (status, body).
    fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<(u16, Vec<u8>), BenchError> {
        let what = || format!("{method} {path}");
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        if let Some(b) = body {
            let _ = write!(
                req,
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            );
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body.unwrap_or_default());
        self.writer.write_all(&bytes).map_err(io_err(what()))?;

        let mut line = String::new();
        self.reader.read_line(&mut line).map_err(io_err(what()))?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| BenchError::Http(format!("{}: bad status line {line:?}", what())))?;
        let mut length = None;
        let mut chunked = false;
        loop {
            line.clear();
            let n = self.reader.read_line(&mut line).map_err(io_err(what()))?;
            if n == 0 {
                return Err(BenchError::Http(format!("{}: connection closed", what())));
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let k = k.trim().to_ascii_lowercase();
                if k == "content-length" {
                    length = v.trim().parse::<usize>().ok();
                } else if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
                    chunked = true;
                }
            }
        }
        let mut out = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.reader.read_line(&mut line).map_err(io_err(what()))?;
                let size =
                    usize::from_str_radix(line.trim().split(';').next().unwrap_or_default(), 16)
                        .map_err(|_| {
                            BenchError::Http(format!("{}: bad chunk size {line:?}", what()))
                        })?;
                let mut chunk = vec![0; size + 2];
                self.reader.read_exact(&mut chunk).map_err(io_err(what()))?;
                if size == 0 {
                    break;
                }
                out.extend_from_slice(&chunk[..size]);
            }
        } else if let Some(n) = length {
            out.resize(n, 0);
            self.reader.read_exact(&mut out).map_err(io_err(what()))?;
        }
        Ok((status, out))
    }

    /// Request and parse a JSON answer with the `expected` status.
    fn json(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        expected: u16,
    ) -> Result<Value, BenchError> {
        let (status, bytes) = self.request(method, path, body)?;
        if status != expected {
            return Err(BenchError::Http(format!(
                "{method} {path}: status {status} (expected {expected}): {}",
                String::from_utf8_lossy(&bytes)
            )));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| BenchError::Http(format!("{method} {path}: invalid JSON: {e}")))
    }
}

fn check_trivial(v: &Value) -> Result<(), BenchError> {
    if v["status"] == "completed" && v["output"]["sum"] == 3 {
        Ok(())
    } else {
        Err(BenchError::Http(format!(
            "the trivial workload did not complete with {{\"sum\":3}}: {v}"
        )))
    }
}

fn sync_latency(
    addr: SocketAddr,
    warmup: usize,
    samples: usize,
) -> Result<Percentiles, BenchError> {
    let mut conn = HttpConn::connect(addr)?;
    let body = TRIVIAL_BODY.as_bytes();
    for _ in 0..warmup.max(1) {
        let v = conn.json("POST", "/v1/workloads", Some(body), 200)?;
        check_trivial(&v)?;
    }
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples.max(1) {
        let start = Instant::now();
        let (status, bytes) = conn.request("POST", "/v1/workloads", Some(body))?;
        times.push(start.elapsed());
        if status != 200 {
            return Err(BenchError::Http(format!(
                "sync submit: status {status}: {}",
                String::from_utf8_lossy(&bytes)
            )));
        }
    }
    percentiles("sync latency", times)
}

fn completed_count(conn: &mut HttpConn) -> Result<(u64, u64), BenchError> {
    let v = conn.json("GET", "/v1/stats", None, 200)?;
    let get = |k: &str| v["by_status"][k].as_u64();
    match (get("completed"), get("failed"), get("killed")) {
        (Some(c), Some(f), Some(k)) => Ok((c, f + k)),
        _ => Err(BenchError::Http(format!(
            "/v1/stats without by_status: {v}"
        ))),
    }
}

/// Workloads not yet terminal. Cheap at any history size: two index range counts
/// (`/v1/stats` scans the whole table and would steal CPU from the work measured).
fn unfinished_count(conn: &mut HttpConn) -> Result<u64, BenchError> {
    let mut n = 0;
    for status in ["pending", "running"] {
        let v = conn.json(
            "GET",
            &format!("/v1/workloads?status={status}&limit=1"),
            None,
            200,
        )?;
        n += v["total"]
            .as_u64()
            .ok_or_else(|| BenchError::Http(format!("listing without total: {v}")))?;
    }
    Ok(n)
}

fn async_throughput(
    addr: SocketAddr,
    workloads: usize,
    clients: usize,
) -> Result<Throughput, BenchError> {
    let workloads = workloads.max(1);
    let clients = clients.clamp(1, workloads);
    let mut stats = HttpConn::connect(addr)?;
    let (before, bad_before) = completed_count(&mut stats)?;
    let mut conns = (0..clients)
        .map(|_| HttpConn::connect(addr))
        .collect::<Result<Vec<_>, _>>()?;
    let start = Instant::now();
    let results: Vec<Result<(), BenchError>> = std::thread::scope(|s| {
        let handles: Vec<_> = conns
            .iter_mut()
            .enumerate()
            .map(|(i, conn)| {
                let share = workloads / clients + usize::from(i < workloads % clients);
                s.spawn(move || {
                    for _ in 0..share {
                        let (status, bytes) = conn.request(
                            "POST",
                            "/v1/workloads/async",
                            Some(TRIVIAL_BODY.as_bytes()),
                        )?;
                        if status != 202 {
                            return Err(BenchError::Http(format!(
                                "async submit: status {status}: {}",
                                String::from_utf8_lossy(&bytes)
                            )));
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(BenchError::Setup("a submitting thread panicked".into()))
                })
            })
            .collect()
    });
    for r in results {
        r?;
    }
    let deadline = start + Duration::from_secs(600);
    while unfinished_count(&mut stats)? > 0 {
        if Instant::now() > deadline {
            return Err(BenchError::Timeout(format!(
                "async workloads still unfinished after {:?}",
                deadline - start
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = start.elapsed();
    let (done, bad) = completed_count(&mut stats)?;
    if bad > bad_before || done - before < workloads as u64 {
        return Err(BenchError::Http(format!(
            "of {workloads} trivial workloads {} completed and {} failed or were killed",
            done - before,
            bad - bad_before
        )));
    }
    Ok(Throughput {
        workloads,
        clients,
        elapsed,
    })
}

fn node_baseline(runs: usize) -> NodeBaseline {
    if runs == 0 {
        return NodeBaseline::Skipped("0 runs requested".into());
    }
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        let out = std::process::Command::new("node")
            .args(["-e", NODE_SCRIPT])
            .stdin(std::process::Stdio::null())
            .output();
        let elapsed = start.elapsed();
        match out {
            Ok(o) if o.status.success() && o.stdout.trim_ascii() == br#"{"sum":3}"# => {
                times.push(elapsed)
            }
            Ok(o) => {
                return NodeBaseline::Skipped(format!(
                    "node ran but answered {:?} ({}): {}",
                    String::from_utf8_lossy(&o.stdout),
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return NodeBaseline::Skipped("`node` is not on PATH".into())
            }
            Err(e) => return NodeBaseline::Skipped(format!("cannot run node: {e}")),
        }
    }
    match Percentiles::of(times) {
        Some(p) => NodeBaseline::Measured(p),
        None => NodeBaseline::Skipped("no samples".into()),
    }
}

/// Raise the soft `RLIMIT_NOFILE` to at least `want` (capped by the hard limit).
/// Returns the soft limit in force afterwards.
#[allow(unsafe_code)]
fn raise_fd_limit(want: u64) -> Result<u64, String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the `rlimit` we pass, a valid and exclusively
    // borrowed local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error().to_string());
    }
    if lim.rlim_cur >= want {
        return Ok(lim.rlim_cur);
    }
    let new = libc::rlimit {
        rlim_cur: want.min(lim.rlim_max),
        rlim_max: lim.rlim_max,
    };
    // SAFETY: setrlimit only reads the `rlimit` we pass, a valid initialised local; it
    // changes a per-process limit and touches no memory of ours.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
        return Err(io::Error::last_os_error().to_string());
    }
    if new.rlim_cur < want {
        return Err(format!("hard limit is {}", lim.rlim_max));
    }
    Ok(new.rlim_cur)
}

// ---------------------------------------------------------------------------------------
// SSE fan-out.

/// A backend for the SSE section only: once released through `go`, emits `lines` log
/// lines `interval` apart, each `t=<nanoseconds since base>`.
///
/// Registered as the only `microvm`/`python` backend of the bench server (the real
/// micro-VM backend is disabled there), so an explicit `isolation: microvm` routes to it.
struct SseBenchBackend {
    lines: usize,
    interval: Duration,
    base: Instant,
    go: watch::Receiver<bool>,
}

impl Backend for SseBenchBackend {
    fn capabilities(&self) -> BackendCapabilities {
        BackendCapabilities {
            name: "bench-sse".into(),
            supported_runtimes: vec![Runtime::Python],
            supported_isolations: vec![Isolation::Microvm],
            max_concurrency: 1,
        }
    }

    fn health(&self) -> BackendHealth {
        BackendHealth::Healthy
    }

    fn execute(
        &self,
        _spec: WorkloadSpec,
        ctx: ExecContext,
    ) -> BoxFuture<'static, Result<WorkloadResult, BackendError>> {
        let (lines, interval, base) = (self.lines, self.interval, self.base);
        let mut go = self.go.clone();
        Box::pin(async move {
            let started = Instant::now();
            let emit = async {
                go.wait_for(|released| *released)
                    .await
                    .map_err(|_| BackendError::Internal("the benchmark went away".into()))?;
                let mut tick = tokio::time::interval(interval);
                for _ in 0..lines {
                    tick.tick().await;
                    ctx.log.line(format!("t={}", base.elapsed().as_nanos()));
                }
                Ok::<(), BackendError>(())
            };
            tokio::select! {
                r = emit => r?,
                _ = ctx.cancel.cancelled() => return Err(BackendError::Cancelled),
            }
            Ok(WorkloadResult {
                exit_code: Some(0),
                output: format!("{{\"lines\":{lines}}}").into_bytes(),
                error: None,
                duration_ms: started.elapsed().as_millis() as u64,
            })
        })
    }

    fn cleanup(&self, _id: WorkloadId) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

/// What one subscriber saw.
struct Subscriber {
    latencies: Vec<Duration>,
}

fn sse_latency(
    opts: &BenchOptions,
    addr: SocketAddr,
    base: Instant,
    go: &watch::Sender<bool>,
) -> Result<SseFigures, BenchError> {
    let n = opts.sse_subscribers.max(1);
    let mut conn = HttpConn::connect(addr)?;
    let body = br#"{"runtime":"python","isolation":"microvm","code":"bench","resources":{"timeout_s":900}}"#;
    let w = conn.json("POST", "/v1/workloads/async", Some(body), 202)?;
    let id = w["id"]
        .as_str()
        .ok_or_else(|| BenchError::Http(format!("async submit without id: {w}")))?
        .to_string();
    let path = format!("/v1/workloads/{id}/logs");

    let connected = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let emit_time = opts.sse_interval * opts.sse_lines as u32;
    let budget = Duration::from_secs(120) + emit_time * 4;
    let clients = {
        let (connected, failed) = (connected.clone(), failed.clone());
        std::thread::Builder::new()
            .name("bench-sse-clients".into())
            .spawn(move || sse_clients(addr, path, n, base, connected, failed, budget))
            .map_err(io_err("spawning the SSE client thread"))?
    };
    let wait_until = Instant::now() + Duration::from_secs(120);
    while connected.load(Ordering::SeqCst) + failed.load(Ordering::SeqCst) < n
        && Instant::now() < wait_until
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let ready = connected.load(Ordering::SeqCst);
    log::info!("{ready} of {n} subscribers connected; releasing the workload");
    let _ = go.send(true);
    let subs = clients
        .join()
        .map_err(|_| BenchError::Setup("the SSE client thread panicked".into()))??;
    if ready < n {
        return Err(BenchError::Timeout(format!(
            "only {ready} of {n} SSE subscribers connected"
        )));
    }
    let counts: Vec<usize> = subs.iter().map(|s| s.latencies.len()).collect();
    let latency = percentiles(
        "SSE latency",
        subs.into_iter().flat_map(|s| s.latencies).collect(),
    )?;
    Ok(SseFigures {
        subscribers: n,
        lines_sent: opts.sse_lines,
        interval: opts.sse_interval,
        min_received: counts.iter().copied().min().unwrap_or(0),
        max_received: counts.iter().copied().max().unwrap_or(0),
        latency,
    })
}

/// Run `n` subscribers on this thread's own runtime; each returns when the stream ends.
fn sse_clients(
    addr: SocketAddr,
    path: String,
    n: usize,
    base: Instant,
    connected: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    budget: Duration,
) -> Result<Vec<Subscriber>, BenchError> {
    actix_web::rt::System::new().block_on(async move {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let (path, connected, failed) = (path.clone(), connected.clone(), failed.clone());
                actix_web::rt::spawn(async move {
                    let r = actix_web::rt::time::timeout(
                        budget,
                        subscribe(addr, &path, base, &connected),
                    )
                    .await
                    .unwrap_or_else(|_| Err("SSE subscriber timed out".into()));
                    if r.is_err() {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                    r
                })
            })
            .collect();
        let mut out = Vec::with_capacity(n);
        for h in handles {
            match h.await {
                Ok(Ok(s)) => out.push(s),
                Ok(Err(e)) => return Err(BenchError::Http(e)),
                Err(e) => return Err(BenchError::Setup(format!("SSE task: {e}"))),
            }
        }
        Ok(out)
    })
}

/// One SSE subscriber: connect, wait for the headers (then the broker has subscribed
/// it), then parse `data: t=<ns>` lines until the stream ends.
async fn subscribe(
    addr: SocketAddr,
    path: &str,
    base: Instant,
    connected: &AtomicUsize,
) -> Result<Subscriber, String> {
    let mut stream = actix_web::rt::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("SSE connect: {e}"))?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| format!("SSE request: {e}"))?;
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let header_end = loop {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("SSE read: {e}"))?;
        if n == 0 {
            return Err("SSE stream closed before the headers".into());
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(pos) = find(&raw, b"\r\n\r\n") {
            break pos + 4;
        }
    };
    let head = String::from_utf8_lossy(&raw[..header_end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        return Err(format!("SSE answer: {}", head.lines().next().unwrap_or("")));
    }
    connected.fetch_add(1, Ordering::SeqCst);
    let mut body = Body::new(head.contains("transfer-encoding: chunked"));
    body.feed(&raw[header_end..])?;
    let mut sub = Subscriber {
        latencies: Vec::new(),
    };
    let mut saw_done = false;
    loop {
        let now = base.elapsed();
        while let Some(line) = body.next_line() {
            if let Some(ts) = line.strip_prefix("data: t=") {
                let sent = ts
                    .trim()
                    .parse::<u64>()
                    .map_err(|_| format!("bad SSE timestamp {ts:?}"))?;
                sub.latencies
                    .push(now.saturating_sub(Duration::from_nanos(sent)));
            } else if line == "event: done" {
                saw_done = true;
            } else if line.is_empty() && saw_done {
                return Ok(sub);
            }
        }
        if body.ended {
            return Ok(sub);
        }
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("SSE read: {e}"))?;
        if n == 0 {
            return Ok(sub);
        }
        body.feed(&buf[..n])?;
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// An incremental HTTP/1.1 body decoder (chunked or close-delimited) that yields lines.
struct Body {
    chunked: bool,
    raw: Vec<u8>,
    text: Vec<u8>,
    ended: bool,
}

impl Body {
    fn new(chunked: bool) -> Self {
        Self {
            chunked,
            raw: Vec::new(),
            text: Vec::new(),
            ended: false,
        }
    }

    fn feed(&mut self, data: &[u8]) -> Result<(), String> {
        if !self.chunked {
            self.text.extend_from_slice(data);
            return Ok(());
        }
        self.raw.extend_from_slice(data);
        while let Some(pos) = find(&self.raw, b"\r\n") {
            let size_line = String::from_utf8_lossy(&self.raw[..pos]);
            let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| format!("bad chunk size {size_line:?}"))?;
            if size == 0 {
                self.ended = true;
                self.raw.clear();
                return Ok(());
            }
            let need = pos + 2 + size + 2;
            if self.raw.len() < need {
                return Ok(());
            }
            self.text
                .extend_from_slice(&self.raw[pos + 2..pos + 2 + size]);
            self.raw.drain(..need);
        }
        Ok(())
    }

    fn next_line(&mut self) -> Option<String> {
        let pos = self.text.iter().position(|&b| b == b'\n')?;
        let line: Vec<u8> = self.text.drain(..=pos).collect();
        let line = String::from_utf8_lossy(&line[..pos]);
        Some(line.trim_end_matches('\r').to_string())
    }
}

// ---------------------------------------------------------------------------------------
// gVisor.

fn gvisor_section(runs: usize) -> GvisorFigures {
    match crate::backends::gvisor::bench_python_hello(runs) {
        Ok((backend, bare)) => match (Percentiles::of(backend), Percentiles::of(bare)) {
            (Some(backend), Some(bare)) => GvisorFigures::Measured { backend, bare },
            _ => GvisorFigures::Skipped("no samples".into()),
        },
        Err(why) => GvisorFigures::Skipped(why),
    }
}
