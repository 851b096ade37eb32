//! `vulcan bench`: one run, one machine, every headline figure side by side with its
//! baseline.
//!
//! Part of the `vulcan` binary, not the library: it reaches the server only through the
//! library's public boot API ([`vulcan::startup::AppThread`], the harness the tests use
//! too) and HTTP, with the client crates the tests and the CLI use (reqwest,
//! eventsource-stream), except where the client's own CPU would be measured: the async
//! submitters use hyper's connection-level client, the crate reqwest runs on.
//!
//! Sections: memory and admission (RSS idle and with work queued behind a backend that
//! holds its one slot, accepted submissions/s); the real application booted in-process
//! on a loopback port and driven over HTTP (sync JS and Wasm latency, async
//! throughput); a process-per-workload `node` baseline; SSE fan-out latency to many
//! subscribers of one workload ([`sse`]: a purpose-built backend stamps each log line
//! with its print time, subscribers run in child processes). Set-up failures are
//! returned as [`BenchError`], never panics.

pub mod logs;
pub mod sse;
pub mod stores;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use serde_json::Value;
use tokio::sync::watch;

use sse::SseFigures;

use vulcan::backends::{
    Backend, BackendCapabilities, BackendError, BackendFactory, BackendHealth, ExecContext,
    WorkloadResult, WorkloadSpec,
};
use vulcan::config::Config;
use vulcan::model::{Isolation, Runtime, WorkloadId};
use vulcan::startup::{builtin_backends, AppThread};

/// The trivial workload every HTTP section submits.
const TRIVIAL_BODY: &str =
    r#"{"runtime":"node","code":"export default (i) => ({sum: i.a + i.b})","input":{"a":1,"b":2}}"#;

/// A trivial WASI command (WAT text): one page of memory, `_start` returns at once.
const TRIVIAL_WASM_BODY: &str = r#"{"runtime":"wasm","code":"(module (memory (export \"memory\") 1) (func (export \"_start\")))"}"#;

/// Python hello, for the gVisor section.
const PYTHON_HELLO_BODY: &str = r#"{"runtime":"python","isolation":"gvisor","code":"print('hello')\n","resources":{"timeout_s":120}}"#;

/// The same function as [`TRIVIAL_BODY`], as a script for `node -e`.
const NODE_SCRIPT: &str =
    "const f = (i) => ({sum: i.a + i.b}); console.log(JSON.stringify(f({a: 1, b: 2})));";

/// Target: sync p50 at most this.
const TARGET_SYNC_P50: Duration = Duration::from_millis(1);
/// Target: at least this many times faster than a `node` process per workload.
const TARGET_NODE_FACTOR: f64 = 50.0;
/// Target: at least this many trivial workloads per second end to end.
const TARGET_THROUGHPUT: f64 = 5_000.0;
/// Target: at least this many async submissions accepted (202, recorded) per second.
const TARGET_ACCEPTED: f64 = 20_000.0;
/// Target: resident memory of the idle process at most this (KiB).
const TARGET_RSS_IDLE_KIB: u64 = 30 * 1024;
/// Target: resident memory with [`BenchOptions::queued`] workloads queued at most this
/// (KiB).
const TARGET_RSS_QUEUED_KIB: u64 = 150 * 1024;

/// How much work each section does.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Workloads queued (and so accepted) for the memory and admission section.
    pub queued: usize,
    /// Sync requests sent before measuring.
    pub sync_warmup: usize,
    /// Sync requests measured (each of JS and Wasm).
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
    /// Child processes the SSE subscribers are spread over.
    pub sse_client_processes: usize,
    /// Whether to run the gVisor section (needs root and `runsc`).
    pub gvisor: bool,
    /// gVisor python hello runs measured.
    pub gvisor_runs: usize,
    /// The vulcan binary isolate workers start from; `None` = this executable.
    pub worker_path: Option<std::path::PathBuf>,
    /// The large-log section.
    pub logs: logs::LogsOptions,
    /// A PostgreSQL server (`postgres://user@host:port/db`, a role that may create
    /// databases) for the servers' store: each boot takes a fresh database there and
    /// drops it afterwards. `None`: a temporary SQLite file (the embedded default).
    pub db_url: Option<String>,
    /// Cluster nodes sharing one PostgreSQL database in the `stores` section.
    pub nodes: usize,
}

impl BenchOptions {
    /// The full benchmark (minutes on a small machine).
    pub fn full() -> Self {
        Self {
            queued: 10_000,
            sync_warmup: 200,
            sync_samples: 2_000,
            async_workloads: 5_000,
            // Enough requests in flight to keep every stage busy (the store commits what
            // queued while it wrote); fewer measure round-trip latency, not throughput.
            async_clients: 32,
            node_runs: 30,
            sse_subscribers: 1_000,
            sse_lines: 200,
            sse_interval: Duration::from_millis(5),
            sse_client_processes: std::thread::available_parallelism().map_or(2, |n| n.get()),
            gvisor: false,
            gvisor_runs: 10,
            worker_path: None,
            logs: logs::LogsOptions {
                lines: 100_000,
                submits: 1_000,
                readers: 4,
            },
            db_url: None,
            nodes: 2,
        }
    }

    /// Tiny sample counts: a smoke run that finishes in seconds.
    pub fn quick() -> Self {
        Self {
            queued: 200,
            sync_warmup: 5,
            sync_samples: 20,
            async_workloads: 50,
            async_clients: 2,
            node_runs: 3,
            sse_subscribers: 20,
            sse_lines: 10,
            sse_interval: Duration::from_millis(5),
            sse_client_processes: 2,
            gvisor: false,
            gvisor_runs: 3,
            worker_path: None,
            logs: logs::LogsOptions {
                lines: 2_000,
                submits: 20,
                readers: 4,
            },
            db_url: None,
            nodes: 2,
        }
    }
}

/// A benchmark could not be set up or run to the end.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
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

fn http_err(context: impl Into<String>) -> impl FnOnce(reqwest::Error) -> BenchError {
    let context = context.into();
    move |e| BenchError::Http(format!("{context}: {e}"))
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

    /// The async end-to-end figure as a Markdown paragraph.
    pub fn markdown_async(&self, s: &mut String) {
        let _ = writeln!(s);
        let t = self;
        let _ = writeln!(
            s,
            "Async throughput: {} workloads submitted over {} connections, all completed in \
             {:.3} s → **{:.0} workloads/s** (first submit → no workload pending or running; outcomes checked in `/v1/stats` afterwards).",
            t.workloads,
            t.clients,
            t.elapsed.as_secs_f64(),
            t.per_second()
        );
    }
}

/// The gVisor section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GvisorFigures {
    /// Python hello, sync over HTTP on the gvisor backend, and bare `runsc do` of the
    /// same program (host root file system, no network) as the floor.
    Measured {
        /// Sync `POST /v1/workloads` round trip.
        backend: Percentiles,
        /// `runsc do python3`, or why it could not run.
        bare: Result<Percentiles, String>,
    },
    /// Not measured, and why.
    Skipped(String),
}

/// Resident memory and admission: the process's RSS idle and with work queued, and how
/// fast submissions are accepted while nothing drains.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryFigures {
    /// `VmRSS` of the process (server in-process) after start-up, before any request.
    pub idle_kib: u64,
    /// `VmRSS` with [`MemoryFigures::accepted`]'s workloads accepted, one holding the
    /// backend's only slot and the rest queued.
    pub queued_kib: u64,
    /// Async submissions answered 202; afterwards every one is a committed `pending` row
    /// but the one running.
    pub accepted: Throughput,
    /// CPU the server's threads used while accepting them (the process's CPU less the
    /// submitting threads').
    pub server_cpu: Duration,
    /// CPU the submitting threads ([`Submitter`]s) used meanwhile.
    pub client_cpu: Duration,
}

impl MemoryFigures {
    /// Accepted submissions per second.
    pub fn accepted_per_second(&self) -> f64 {
        self.accepted.per_second()
    }

    /// `cpu` per accepted submission, in microseconds.
    fn per_submission_us(&self, cpu: Duration) -> f64 {
        cpu.as_secs_f64() * 1e6 / self.accepted.workloads.max(1) as f64
    }

    /// The rate the server's CPU per submission allows on `cores` with no client on
    /// them: a capacity derived from the measurement, not a measured rate.
    pub fn server_capacity_per_second(&self, cores: usize) -> f64 {
        cores as f64 * 1e6 / self.per_submission_us(self.server_cpu).max(f64::EPSILON)
    }

    /// The section as Markdown.
    pub fn markdown(&self, s: &mut String) {
        let mem = self;
        let _ = writeln!(s, "## Memory and admission\n");
        let _ = writeln!(
            s,
            "The server runs in the bench's process (booted in-process with one backend that \
             holds its only slot until killed): RSS is `VmRSS` of that process, first right \
             after start-up, then with {} async submissions accepted ({} queued, 1 holding \
             the slot). Accepted = answered 202, each a committed row (checked through \
             `/v1/workloads?status=pending` afterwards), over {} connections.\n",
            mem.accepted.workloads,
            mem.accepted.workloads.saturating_sub(1),
            mem.accepted.clients
        );
        let _ = writeln!(s, "| what | value |\n|---|---|");
        let _ = writeln!(s, "| RSS idle | {} MiB |", mib(mem.idle_kib));
        let _ = writeln!(
            s,
            "| RSS with {} accepted | {} MiB |",
            mem.accepted.workloads,
            mib(mem.queued_kib)
        );
        let _ = writeln!(
            s,
            "| accepted submissions/s | **{:.0}** ({} in {:.3} s) |",
            mem.accepted_per_second(),
            mem.accepted.workloads,
            mem.accepted.elapsed.as_secs_f64()
        );
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (server, client) = (mem.server_cpu, mem.client_cpu);
        let _ = writeln!(
            s,
            "| server CPU per accepted submission | {:.1} µs (every server thread) |",
            mem.per_submission_us(server)
        );
        let _ = writeln!(
            s,
            "| client CPU per submission | {:.1} µs (the submitting hyper threads; {:.0} % of \
             the CPU used while accepting) |",
            mem.per_submission_us(client),
            100.0 * client.as_secs_f64() / (server + client).as_secs_f64().max(f64::EPSILON)
        );
        let _ = writeln!(
            s,
            "| accepted/s the server's CPU allows on {cores} cores | {:.0} (derived: cores ÷ \
             server CPU per submission; the client shares the cores above) |",
            mem.server_capacity_per_second(cores)
        );
    }
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
    /// RSS idle and queued, accepted submissions/s.
    pub memory: MemoryFigures,
    /// `POST /v1/workloads` (sync) round trip of trivial JS, one keep-alive connection.
    pub sync: Percentiles,
    /// The same for a trivial Wasm module.
    pub sync_wasm: Percentiles,
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

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
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
        let mem = &self.memory;
        let accepted = mem.accepted_per_second();
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
            Target {
                name: "async submissions accepted (202, recorded)",
                goal: format!("≥ {TARGET_ACCEPTED:.0} /s"),
                actual: format!("{accepted:.0} /s"),
                met: Some(accepted >= TARGET_ACCEPTED),
            },
            Target {
                name: "RSS idle",
                goal: format!("≤ {} MiB", mib(TARGET_RSS_IDLE_KIB)),
                actual: format!("{} MiB", mib(mem.idle_kib)),
                met: Some(mem.idle_kib <= TARGET_RSS_IDLE_KIB),
            },
            Target {
                name: "RSS with work queued",
                goal: format!(
                    "≤ {} MiB with {} queued",
                    mib(TARGET_RSS_QUEUED_KIB),
                    mem.accepted.workloads
                ),
                actual: format!("{} MiB", mib(mem.queued_kib)),
                met: Some(mem.queued_kib <= TARGET_RSS_QUEUED_KIB),
            },
            Target {
                name: "SSE fan-out p99, every subscriber every line",
                goal: format!(
                    "≤ {} ms at {} subscribers",
                    ms(sse::TARGET_P99),
                    self.sse.subscribers
                ),
                actual: format!(
                    "{} ms; {}–{} of {} lines each",
                    ms(self.sse.latency.p99),
                    self.sse.min_received,
                    self.sse.max_received,
                    self.sse.lines_sent
                ),
                met: Some(self.sse.target_met()),
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

        self.memory.markdown(&mut s);

        let _ = writeln!(s, "\n## HTTP, real app in-process (isolate backend)\n");
        let _ = writeln!(s, "| what | samples | p50 ms | p99 ms |\n|---|---|---|---|");
        let _ = writeln!(
            s,
            "| sync `POST /v1/workloads`, trivial JS, one keep-alive connection | {} | {} | {} |",
            self.sync.samples,
            ms(self.sync.p50),
            ms(self.sync.p99)
        );
        let _ = writeln!(
            s,
            "| sync `POST /v1/workloads`, trivial Wasm (WAT), one keep-alive connection | {} | {} | {} |",
            self.sync_wasm.samples,
            ms(self.sync_wasm.p50),
            ms(self.sync_wasm.p99)
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
        self.throughput.markdown_async(&mut s);

        self.sse.markdown(&mut s);

        if let Some(g) = &self.gvisor {
            let _ = writeln!(s, "\n## gVisor: python hello\n");
            match g {
                GvisorFigures::Measured { backend, bare } => {
                    let _ = writeln!(s, "| what | runs | p50 ms | p99 ms |\n|---|---|---|---|");
                    let _ = writeln!(
                        s,
                        "| sync `POST /v1/workloads`, python hello on gvisor | {} | {} | {} |",
                        backend.samples,
                        ms(backend.p50),
                        ms(backend.p99)
                    );
                    match bare {
                        Ok(p) => {
                            let _ = writeln!(
                                s,
                                "| bare `runsc --network=none do python3 -c …` | {} | {} | {} |",
                                p.samples,
                                ms(p.p50),
                                ms(p.p99)
                            );
                            let ratio = backend.p50.as_secs_f64() / p.p50.as_secs_f64().max(1e-9);
                            let _ =
                                writeln!(s, "\nbackend over HTTP p50 / bare p50 = **{ratio:.2}×**");
                        }
                        Err(why) => {
                            let _ = writeln!(s, "| bare `runsc do` — skipped: {why} | | | |");
                        }
                    }
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
    // First, while the process has done nothing else: its idle RSS is the server's.
    log::info!("memory and admission ({} queued)", opts.queued);
    let memory = memory_section(opts)?;
    log::info!("node baseline ({} runs)", opts.node_runs);
    let node = node_baseline(opts.node_runs);

    let (go_tx, sse_backend) = sse::setup(opts);
    let server = BenchServer::start(opts, &async_env(opts), vec![sse_backend])?;
    let result = http_sections(opts, &server, &go_tx);
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
    let ((sync, sync_wasm, throughput, sse), logs) = logs?;

    let gvisor = if opts.gvisor {
        log::info!("gVisor python hello ({} runs)", opts.gvisor_runs);
        Some(gvisor_section(opts)?)
    } else {
        None
    };
    Ok(BenchReport {
        machine,
        memory,
        sync,
        sync_wasm,
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
    /// Memory and admission: RSS idle and with `queued` accepted, accepted submissions/s.
    Accepted,
    /// Async trivial JS end to end: `async_workloads` over `async_clients` connections.
    Async,
    /// Sync, async and accepted figures on SQLite, one PostgreSQL node (`--db-url`), one
    /// cluster node and `--nodes` cluster nodes sharing one PostgreSQL database.
    Stores,
}

/// Run one section with `opts` on a fresh in-process server; its report as Markdown
/// (the machine table, then the section).
pub fn run_section(opts: &BenchOptions, section: Section) -> Result<String, BenchError> {
    let machine = Machine::detect();
    let mut s = String::new();
    machine.markdown(&mut s);
    match section {
        // Boots its own server, with the slot-holding backend.
        Section::Accepted => {
            memory_section(opts)?.markdown(&mut s);
            return Ok(s);
        }
        Section::Async => {
            let server = BenchServer::start(opts, &async_env(opts), Vec::new())?;
            let result = async_throughput(server.addr, opts.async_workloads, opts.async_clients);
            server.stop();
            result?.markdown_async(&mut s);
            return Ok(s);
        }
        Section::Stores => {
            stores::markdown(&stores::run(opts)?, opts, &mut s);
            return Ok(s);
        }
        Section::Sse | Section::Logs => {}
    }
    let (go_tx, sse_backend) = sse::setup(opts);
    // The logs section runs a real node workload: the isolate backend is on.
    let server = BenchServer::start(
        opts,
        &[("VULCAN_BACKENDS__ISOLATE__ENABLED", "true".into())],
        vec![sse_backend],
    )?;
    let result = if section == Section::Sse {
        sse::latency(opts, server.addr, &go_tx).map(|e| e.markdown(&mut s))
    } else {
        logs::run(server.addr, opts.logs).map(|l| l.markdown(&mut s))
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
    go: &watch::Sender<bool>,
) -> Result<(Percentiles, Percentiles, Throughput, SseFigures), BenchError> {
    log::info!(
        "sync latency ({} warm-up, {} measured, JS then Wasm)",
        opts.sync_warmup,
        opts.sync_samples
    );
    let sync = sync_latency(
        server.addr,
        TRIVIAL_BODY,
        check_trivial,
        opts.sync_warmup,
        opts.sync_samples,
    )?;
    let sync_wasm = sync_latency(
        server.addr,
        TRIVIAL_WASM_BODY,
        check_completed,
        opts.sync_warmup,
        opts.sync_samples,
    )?;
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
    let sse = sse::latency(opts, server.addr, go)?;
    Ok((sync, sync_wasm, throughput, sse))
}

// ---------------------------------------------------------------------------------------
// The application under test.

/// Where a bench server keeps its store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BenchStore {
    /// A temporary SQLite file (the embedded default).
    Sqlite,
    /// A fresh database on the PostgreSQL server at `server_url`, dropped afterwards,
    /// shared by `nodes` servers; `cluster` turns on `[cluster] enabled` (required for
    /// more than one node).
    Postgres {
        /// The server (see [`BenchOptions::db_url`]).
        server_url: String,
        /// Servers booted on the one database.
        nodes: usize,
        /// Whether the servers run as cluster nodes.
        cluster: bool,
    },
}

impl BenchStore {
    /// What `opts` asks for when a section does not choose: SQLite, or one PostgreSQL
    /// node when `--db-url` is given.
    pub fn of(opts: &BenchOptions) -> Self {
        match &opts.db_url {
            None => Self::Sqlite,
            Some(url) => Self::Postgres {
                server_url: url.clone(),
                nodes: 1,
                cluster: false,
            },
        }
    }
}

/// The real application ([`AppThread`]: its own thread and actix `System`) on a
/// loopback port, with a temporary database; with [`BenchStore::Postgres`], possibly
/// several nodes sharing one database.
struct BenchServer {
    /// The first node's address (the one single-node sections use).
    addr: SocketAddr,
    /// Every node's address, the first one first.
    addrs: Vec<SocketAddr>,
    apps: Vec<AppThread>,
    /// Dropped after the nodes stopped (field order): the database outlives them.
    _db: Option<stores::FreshDatabase>,
    _dir: tempfile::TempDir,
}

impl BenchServer {
    /// Boot with the embedded defaults on the store `--db-url` chooses, the built-in
    /// backends `env` enables (isolate, gvisor and microvm are off unless `env` says
    /// otherwise) and `extra`.
    fn start(
        opts: &BenchOptions,
        env: &[(&str, String)],
        extra: Vec<BackendFactory>,
    ) -> Result<Self, BenchError> {
        Self::start_on(opts, &BenchStore::of(opts), env, extra)
    }

    /// [`BenchServer::start`] on `store`: every node gets the same settings and `extra`
    /// backends.
    fn start_on(
        opts: &BenchOptions,
        store: &BenchStore,
        env: &[(&str, String)],
        extra: Vec<BackendFactory>,
    ) -> Result<Self, BenchError> {
        let dir = tempfile::tempdir().map_err(io_err("temporary directory"))?;
        let (db, nodes, cluster) = match store {
            BenchStore::Sqlite => (None, 1, false),
            BenchStore::Postgres {
                server_url,
                nodes,
                cluster,
            } => {
                if *nodes > 1 && !*cluster {
                    return Err(BenchError::Setup(
                        "several nodes on one database must run as a cluster".into(),
                    ));
                }
                (
                    Some(stores::FreshDatabase::create(server_url)?),
                    (*nodes).max(1),
                    *cluster,
                )
            }
        };
        let mut apps = Vec::with_capacity(nodes);
        for node in 0..nodes {
            let mut vars: HashMap<String, String> = HashMap::new();
            let node_id = if nodes == 1 {
                "bench".to_string()
            } else {
                format!("bench-{}", node + 1)
            };
            let db_path = dir.path().join(format!("{node_id}.db"));
            for (k, v) in [
                ("VULCAN_LISTEN_ADDR", "127.0.0.1:0".to_string()),
                ("VULCAN_DB_PATH", db_path.to_string_lossy().into_owned()),
                ("VULCAN_NODE_ID", node_id),
                ("VULCAN_SHUTDOWN_TIMEOUT_S", "5".into()),
                ("VULCAN_BACKENDS__ISOLATE__ENABLED", "false".into()),
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
                vars.insert(k.into(), v);
            }
            if let Some(db) = &db {
                vars.insert("VULCAN_DB_URL".into(), db.url().into());
                vars.insert("VULCAN_CLUSTER__ENABLED".into(), cluster.to_string());
            }
            for (k, v) in env {
                vars.insert((*k).into(), v.clone());
            }
            let config = Config::load_from(vars).map_err(|e| BenchError::Setup(e.to_string()))?;
            let mut backends = builtin_backends(&config);
            backends.extend(extra.iter().cloned());
            match AppThread::spawn(config, backends) {
                Ok(app) => apps.push(app),
                Err(e) => {
                    stop_apps(apps);
                    return Err(BenchError::Setup(e.to_string()));
                }
            }
        }
        let addrs: Vec<SocketAddr> = apps
            .iter()
            .map(|app| SocketAddr::from(([127, 0, 0, 1], app.port())))
            .collect();
        Ok(Self {
            addr: addrs[0],
            addrs,
            apps,
            _db: db,
            _dir: dir,
        })
    }

    /// `http://<addr>`.
    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Graceful stop of every node (stores flushed), waiting for their threads; then
    /// the fresh PostgreSQL database, if any, is dropped.
    fn stop(mut self) {
        stop_apps(std::mem::take(&mut self.apps));
    }
}

/// Stop `apps` gracefully, last booted first, waiting for each thread.
fn stop_apps(apps: Vec<AppThread>) {
    for app in apps.into_iter().rev() {
        if app.stop().is_err() {
            log::error!("bench server thread panicked");
        }
    }
}

// ---------------------------------------------------------------------------------------
// HTTP: reqwest, each client on its own current-thread runtime (the server has its own).

/// Run `fut` to completion on a fresh current-thread runtime on this thread.
fn block_on<F: Future>(fut: F) -> Result<F::Output, BenchError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_err("bench client runtime"))?;
    Ok(rt.block_on(fut))
}

/// A client that keeps one connection: requests from one task go one at a time over the
/// same keep-alive connection.
fn one_connection() -> Result<reqwest::Client, BenchError> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .tcp_nodelay(true)
        .build()
        .map_err(http_err("HTTP client"))
}

/// POST `body` (JSON text) to `url`: (status, body bytes).
async fn post(
    client: &reqwest::Client,
    url: &str,
    body: &'static str,
) -> Result<(u16, bytes::Bytes), BenchError> {
    let res = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(http_err(format!("POST {url}")))?;
    let status = res.status().as_u16();
    let bytes = res.bytes().await.map_err(http_err(format!("POST {url}")))?;
    Ok((status, bytes))
}

/// Request `url` and parse a JSON answer with the `expected` status.
async fn json(
    req: reqwest::RequestBuilder,
    what: &str,
    expected: u16,
) -> Result<Value, BenchError> {
    let res = req.send().await.map_err(http_err(what))?;
    let status = res.status().as_u16();
    let bytes = res.bytes().await.map_err(http_err(what))?;
    if status != expected {
        return Err(BenchError::Http(format!(
            "{what}: status {status} (expected {expected}): {}",
            String::from_utf8_lossy(&bytes)
        )));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| BenchError::Http(format!("{what}: invalid JSON: {e}")))
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

fn check_completed(v: &Value) -> Result<(), BenchError> {
    if v["status"] == "completed" {
        Ok(())
    } else {
        Err(BenchError::Http(format!(
            "the workload did not complete: {v}"
        )))
    }
}

/// Sync round trips of `body` on one keep-alive connection; every answer must pass
/// `check`.
fn sync_latency(
    addr: SocketAddr,
    body: &'static str,
    check: fn(&Value) -> Result<(), BenchError>,
    warmup: usize,
    samples: usize,
) -> Result<Percentiles, BenchError> {
    block_on(async move {
        let client = one_connection()?;
        let url = format!("http://{addr}/v1/workloads");
        for _ in 0..warmup.max(1) {
            let v = json(
                client
                    .post(&url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body),
                "sync submit",
                200,
            )
            .await?;
            check(&v)?;
        }
        let mut times = Vec::with_capacity(samples);
        for _ in 0..samples.max(1) {
            let start = Instant::now();
            let (status, bytes) = post(&client, &url, body).await?;
            times.push(start.elapsed());
            if status != 200 {
                return Err(BenchError::Http(format!(
                    "sync submit: status {status}: {}",
                    String::from_utf8_lossy(&bytes)
                )));
            }
            let v: Value = serde_json::from_slice(&bytes)
                .map_err(|e| BenchError::Http(format!("sync submit: invalid JSON: {e}")))?;
            check(&v)?;
        }
        percentiles("sync latency", times)
    })?
}

async fn completed_count(client: &reqwest::Client, base: &str) -> Result<(u64, u64), BenchError> {
    let v = json(client.get(format!("{base}/v1/stats")), "GET /v1/stats", 200).await?;
    let get = |k: &str| v["by_status"][k].as_u64();
    match (get("completed"), get("failed"), get("killed")) {
        (Some(c), Some(f), Some(k)) => Ok((c, f + k)),
        _ => Err(BenchError::Http(format!(
            "/v1/stats without by_status: {v}"
        ))),
    }
}

/// Workloads with `status`, from a listing's `total` (an index range count, cheap at any
/// history size).
async fn count_with(client: &reqwest::Client, base: &str, status: &str) -> Result<u64, BenchError> {
    let v = json(
        client.get(format!("{base}/v1/workloads?status={status}&limit=1")),
        "GET /v1/workloads",
        200,
    )
    .await?;
    v["total"]
        .as_u64()
        .ok_or_else(|| BenchError::Http(format!("listing without total: {v}")))
}

/// Workloads not yet terminal.
async fn unfinished_count(client: &reqwest::Client, base: &str) -> Result<u64, BenchError> {
    Ok(count_with(client, base, "pending").await? + count_with(client, base, "running").await?)
}

/// Poll `base` until no workload is pending or running; an error when that takes more
/// than ten minutes from `start`.
fn drain(stats: &reqwest::Client, base: &str, start: Instant) -> Result<(), BenchError> {
    let deadline = start + Duration::from_secs(600);
    block_on(async {
        while unfinished_count(stats, base).await? > 0 {
            if Instant::now() > deadline {
                return Err(BenchError::Timeout(format!(
                    "async workloads still unfinished after {:?}",
                    deadline - start
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    })?
}

/// The settings of a server that runs the async and sync sections: the isolate backend,
/// and a queue with room for every async workload at once.
fn async_env(opts: &BenchOptions) -> [(&'static str, String); 2] {
    [
        ("VULCAN_BACKENDS__ISOLATE__ENABLED", "true".into()),
        (
            "VULCAN_MAX_QUEUE",
            (opts.async_workloads + 1_000).to_string(),
        ),
    ]
}

/// Threads the submitting connections share: the client runs on the server's cores,
/// so it gets few threads and many connections each (one thread per connection spent
/// its CPU on wake-ups, not on requests).
const SUBMIT_THREADS: usize = 2;

/// What a run of [`submit_async`] took.
struct Submissions {
    /// From the first submission to the last answer.
    elapsed: Duration,
    /// CPU of the submitting threads, together.
    client_cpu: Duration,
}

/// CPU time of `clock` (a thread's or the process's).
fn cpu_time(clock: nix::time::ClockId) -> Result<Duration, BenchError> {
    let t = nix::time::clock_gettime(clock)
        .map_err(|e| BenchError::Setup(format!("clock_gettime: {e}")))?;
    Ok(Duration::from(t))
}

/// One keep-alive HTTP/1.1 connection that submits: hyper's connection-level client
/// (the one reqwest runs on) without what a loopback submitter does not use, a
/// connection pool, URL parsing and header building per request. It shares the server's
/// cores, so every microsecond it spends is one the server does not get.
struct Submitter {
    send: hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
    uri: http::Uri,
    host: http::HeaderValue,
}

impl Submitter {
    /// Connect to `addr` and hand the connection to a task of the current runtime.
    async fn connect(addr: SocketAddr, path: &'static str) -> Result<Self, BenchError> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(io_err("submitting connection"))?;
        stream
            .set_nodelay(true)
            .map_err(io_err("submitting connection"))?;
        let (send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| BenchError::Http(format!("submitting connection: {e}")))?;
        tokio::spawn(conn);
        let host = http::HeaderValue::from_str(&addr.to_string())
            .map_err(|e| BenchError::Setup(format!("host header: {e}")))?;
        Ok(Self {
            send,
            uri: http::Uri::from_static(path),
            host,
        })
    }

    /// POST `body` (JSON): (status, body bytes).
    async fn post(&mut self, body: &'static str) -> Result<(u16, bytes::Bytes), BenchError> {
        use http_body_util::BodyExt as _;
        let what = |e: &dyn std::fmt::Display| BenchError::Http(format!("POST {}: {e}", self.uri));
        let mut req = http::Request::new(http_body_util::Full::new(bytes::Bytes::from_static(
            body.as_bytes(),
        )));
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = self.uri.clone();
        let headers = req.headers_mut();
        headers.insert(http::header::HOST, self.host.clone());
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        self.send.ready().await.map_err(|e| what(&e))?;
        let res = self.send.send_request(req).await.map_err(|e| what(&e))?;
        let status = res.status().as_u16();
        let bytes = res
            .into_body()
            .collect()
            .await
            .map_err(|e| what(&e))?
            .to_bytes();
        Ok((status, bytes))
    }
}

/// Submit `workloads` × `body` async over `clients` keep-alive connections ([`Submitter`]),
/// one request in flight on each, spread over at most [`SUBMIT_THREADS`] threads; each
/// answer must be 202.
fn submit_async(
    addr: SocketAddr,
    body: &'static str,
    workloads: usize,
    clients: usize,
) -> Result<Submissions, BenchError> {
    let clients = clients.max(1);
    let threads = clients.min(SUBMIT_THREADS);
    // Connection i submits its share of the workloads; thread t drives connections
    // t, t + threads, t + 2 × threads, ...
    let share = |i: usize| workloads / clients + usize::from(i < workloads % clients);
    let start = Instant::now();
    let results: Vec<Result<Duration, BenchError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                std::thread::Builder::new()
                    .name("bench-submit".into())
                    .spawn_scoped(s, move || {
                        let from = cpu_time(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)?;
                        block_on(async move {
                            let connections = (t..clients).step_by(threads).map(|i| async move {
                                let mut client =
                                    Submitter::connect(addr, "/v1/workloads/async").await?;
                                for _ in 0..share(i) {
                                    let (status, bytes) = client.post(body).await?;
                                    if status != 202 {
                                        return Err(BenchError::Http(format!(
                                            "async submit: status {status}: {}",
                                            String::from_utf8_lossy(&bytes)
                                        )));
                                    }
                                }
                                Ok(())
                            });
                            futures_util::future::try_join_all(connections)
                                .await
                                .map(drop)
                        })??;
                        Ok(cpu_time(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)?
                            .saturating_sub(from))
                    })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h {
                Ok(h) => h.join().unwrap_or_else(|_| {
                    Err(BenchError::Setup("a submitting thread panicked".into()))
                }),
                Err(e) => Err(BenchError::Setup(format!(
                    "cannot start a submitting thread: {e}"
                ))),
            })
            .collect()
    });
    let elapsed = start.elapsed();
    let mut client_cpu = Duration::ZERO;
    for r in results {
        client_cpu += r?;
    }
    Ok(Submissions {
        elapsed,
        client_cpu,
    })
}

fn async_throughput(
    addr: SocketAddr,
    workloads: usize,
    clients: usize,
) -> Result<Throughput, BenchError> {
    let workloads = workloads.max(1);
    let clients = clients.clamp(1, workloads);
    let base = format!("http://{addr}");
    let stats = one_connection()?;
    let (before, bad_before) = block_on(completed_count(&stats, &base))??;
    let start = Instant::now();
    submit_async(addr, TRIVIAL_BODY, workloads, clients)?;
    drain(&stats, &base, start)?;
    let elapsed = start.elapsed();
    let (done, bad) = block_on(completed_count(&stats, &base))??;
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

// ---------------------------------------------------------------------------------------
// Memory and admission.

/// `VmRSS` of this process (which runs the server), in KiB.
fn rss_kib() -> Result<u64, BenchError> {
    let status =
        std::fs::read_to_string("/proc/self/status").map_err(io_err("/proc/self/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| BenchError::Setup("no VmRSS in /proc/self/status".into()))
}

/// A backend that takes node workloads on `isolate` and never finishes one until it is
/// cancelled: with its one slot held, every further submission queues.
struct HoldBackend;

impl Backend for HoldBackend {
    fn capabilities(&self) -> BackendCapabilities {
        BackendCapabilities {
            name: "bench-hold".into(),
            supported_runtimes: vec![Runtime::Node],
            supported_isolations: vec![Isolation::Isolate],
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
        Box::pin(async move {
            ctx.cancel.cancelled().await;
            Err(BackendError::Cancelled)
        })
    }

    fn cleanup(&self, _id: WorkloadId) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

/// Boot a server whose only backend holds its slot; RSS idle; accept `opts.queued`
/// submissions over `opts.async_clients` connections; check they are all recorded; RSS.
fn memory_section(opts: &BenchOptions) -> Result<MemoryFigures, BenchError> {
    let queued = opts.queued.max(1);
    let clients = opts.async_clients.clamp(1, queued);
    let hold: BackendFactory = Arc::new(|| Arc::new(HoldBackend) as Arc<dyn Backend>);
    let server = BenchServer::start(
        opts,
        &[("VULCAN_MAX_QUEUE", (queued + 1_000).to_string())],
        vec![hold],
    )?;
    let figures = (|| {
        // Let start-up work (recovery, first sweeps) settle before reading the idle RSS.
        std::thread::sleep(Duration::from_millis(500));
        let idle_kib = rss_kib()?;
        let process_from = cpu_time(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)?;
        let submitted = submit_async(server.addr, TRIVIAL_BODY, queued, clients)?;
        // This thread waited meanwhile: the rest is the server's.
        let process_cpu =
            cpu_time(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)?.saturating_sub(process_from);
        let base = server.base();
        let client = one_connection()?;
        let (pending, running) = block_on(async {
            Ok::<_, BenchError>((
                count_with(&client, &base, "pending").await?,
                count_with(&client, &base, "running").await?,
            ))
        })??;
        if pending + running != queued as u64 || running > 1 {
            return Err(BenchError::Http(format!(
                "{queued} accepted but {pending} pending and {running} running recorded"
            )));
        }
        let queued_kib = rss_kib()?;
        Ok(MemoryFigures {
            idle_kib,
            queued_kib,
            accepted: Throughput {
                workloads: queued,
                clients,
                elapsed: submitted.elapsed,
            },
            server_cpu: process_cpu.saturating_sub(submitted.client_cpu),
            client_cpu: submitted.client_cpu,
        })
    })();
    server.stop();
    figures
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
// gVisor.

/// Python hello, sync over HTTP, on a server whose only backend is gvisor.
fn gvisor_section(opts: &BenchOptions) -> Result<GvisorFigures, BenchError> {
    let server = BenchServer::start(
        opts,
        &[("VULCAN_BACKENDS__GVISOR__ENABLED", "true".into())],
        Vec::new(),
    )?;
    let addr = server.addr;
    let health = block_on(async move {
        let client = one_connection()?;
        json(
            client.get(format!("http://{addr}/v1/backends")),
            "GET /v1/backends",
            200,
        )
        .await
    })?;
    let figures = match health {
        Ok(v) if gvisor_runs_python(&v) => {
            sync_latency(addr, PYTHON_HELLO_BODY, check_hello, 1, opts.gvisor_runs).map(|backend| {
                GvisorFigures::Measured {
                    backend,
                    bare: bare_runsc(opts.gvisor_runs),
                }
            })
        }
        Ok(v) => Ok(GvisorFigures::Skipped(format!(
            "the gvisor backend cannot run python here: {v}"
        ))),
        Err(e) => Err(e),
    };
    server.stop();
    figures
}

/// `runs` × python hello under a bare `runsc do` (no network, no cgroup set-up): the
/// floor the gvisor backend's figure is compared with.
fn bare_runsc(runs: usize) -> Result<Percentiles, String> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        let out = std::process::Command::new("runsc")
            .args([
                "--network=none",
                "--ignore-cgroups",
                "do",
                "/usr/bin/python3",
                "-c",
                "print('hello')",
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("cannot run runsc: {e}"))?;
        times.push(start.elapsed());
        if out.stdout != b"hello\n" {
            return Err(format!(
                "runsc do answered {:?}: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    Percentiles::of(times).ok_or_else(|| "no samples".into())
}

/// Whether `/v1/backends` lists a healthy gvisor backend offering python.
fn gvisor_runs_python(backends: &Value) -> bool {
    backends.as_array().into_iter().flatten().any(|b| {
        b["name"] == "gvisor"
            && b["status"] == "healthy"
            && b["capabilities"]["supported_runtimes"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r == "python"))
    })
}

fn check_hello(v: &Value) -> Result<(), BenchError> {
    if v["status"] == "completed" && v["output"] == "hello\n" {
        Ok(())
    } else {
        Err(BenchError::Http(format!(
            "python hello did not complete with \"hello\\n\": {v}"
        )))
    }
}
