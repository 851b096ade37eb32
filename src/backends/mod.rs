//! The backend contract and the backends that implement it.
//!
//! A backend is a technology that runs a workload in isolation (in-process engines,
//! gVisor containers, micro-VMs). The engine only ever talks to a backend through the
//! [`Backend`] trait: adding a technology means implementing it and registering the
//! backend with the supervisor; nothing else changes.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use serde::Serialize;
pub use tokio_util::sync::CancellationToken;

use crate::model::{Isolation, Payload, Runtime, WorkloadId};

pub mod archive;
pub mod gvisor;
pub mod isolate;
pub mod microvm;

/// What a backend can run. Reported by [`Backend::capabilities`] and listed by
/// `GET /v1/backends`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct BackendCapabilities {
    /// Registry name, unique per server (e.g. `isolate`).
    pub name: String,
    /// Runtimes it can execute. Only runtimes that can really run on this host belong
    /// here (a missing toolchain means the runtime is left out, never a late failure).
    pub supported_runtimes: Vec<Runtime>,
    /// Isolation classes it provides.
    pub supported_isolations: Vec<Isolation>,
    /// How many workloads it runs at once; the supervisor queues the rest (FIFO).
    pub max_concurrency: usize,
}

/// Whether a backend can take work on this host right now.
///
/// This is where a backend decides what clients may see: `reason` is public (listed by
/// `GET /v1/backends`, quoted in 422 answers and workload errors) and never holds a
/// host path, uid or file name; `detail` holds those and only reaches the server log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendHealth {
    /// Ready to run work.
    Healthy,
    /// Cannot run work here.
    Unavailable {
        /// Why, for clients: a sentence without host paths, uids or file names.
        reason: String,
        /// The same with host specifics, for operators (server log only).
        detail: String,
    },
}

impl BackendHealth {
    /// Unavailable, with a public `reason` and a private `detail` for the log.
    pub fn unavailable(reason: impl Into<String>, detail: impl Into<String>) -> Self {
        BackendHealth::Unavailable {
            reason: reason.into(),
            detail: detail.into(),
        }
    }

    /// The public reason when unavailable.
    pub fn reason(&self) -> Option<&str> {
        match self {
            BackendHealth::Healthy => None,
            BackendHealth::Unavailable { reason, .. } => Some(reason),
        }
    }
}

/// Everything a backend needs to run one workload. Built by the engine from a validated
/// request; limits are already within the configured maxima.
#[derive(Debug, Clone)]
pub struct WorkloadSpec {
    /// The workload's id (unique; safe to use in file and container names).
    pub id: WorkloadId,
    /// What language or packaging the payload is.
    pub runtime: Runtime,
    /// The resolved isolation class (never `auto`).
    pub isolation: Isolation,
    /// Code text, archive bytes or image reference.
    pub payload: Payload,
    /// The JSON input, serialised (`null` when the client sent none).
    pub input: Vec<u8>,
    /// CPUs the workload may use.
    pub cpus: u32,
    /// Memory limit in MiB.
    pub mem_mb: u32,
    /// Wall-clock limit. The engine cancels through [`ExecContext::cancel`] when it
    /// passes; backends may also stop on their own at [`ExecContext::deadline`].
    pub timeout: Duration,
    /// Largest result the workload may produce (`max_output_bytes`). A backend never
    /// buffers much more than this; a larger result fails the workload with
    /// [`output_exceeds`] (the workload actor checks again before anything is stored).
    pub max_output_bytes: usize,
}

/// The error of a workload whose result is larger than `max` bytes: the one wording
/// every backend and the workload actor use.
pub fn output_exceeds(max: usize) -> String {
    format!("output exceeds {max} bytes")
}

/// A long-lived helper process of a backend (an isolate worker), as listed by
/// `GET /v1/system/actors`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerInfo {
    /// `worker:<backend>/<slot>`.
    pub name: String,
    /// `idle`, `busy`, `starting` or `failed` (could not be started; retried).
    pub state: &'static str,
    /// Process id, when a process is running.
    pub pid: Option<u32>,
    /// Times this slot's process was replaced (crash, kill after a missed cancel).
    pub restarts: u64,
    /// Why it was last replaced or could not start.
    pub last_error: Option<String>,
}

/// What a backend reports about its processes and protections beyond its health.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProcessReport {
    /// Worker processes replaced since this backend instance started.
    pub worker_restarts: u64,
    /// Protections that could not be applied on this host (empty when all hold).
    pub limitations: Vec<String>,
    /// The backend's worker processes, if it has any.
    pub workers: Vec<WorkerInfo>,
}

/// What an execution produced.
///
/// A workload that ran and failed (an exception, a non-zero exit, out of memory) is an
/// `Ok` result with `error` set, so its exit code and partial output are kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkloadResult {
    /// Process exit code where there is one (`Some(0)` for a clean JS/Wasm run).
    pub exit_code: Option<i32>,
    /// The result bytes (JSON if they parse; otherwise stored as a string).
    pub output: Vec<u8>,
    /// Set when the workload failed; the text becomes the workload's `error`.
    pub error: Option<String>,
    /// Time spent executing, in milliseconds.
    pub duration_ms: u64,
}

/// Why a backend could not produce a [`WorkloadResult`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The cancellation signal fired (kill or deadline) and the execution stopped.
    #[error("execution cancelled")]
    Cancelled,
    /// The payload cannot be run (bad archive, missing entry file, invalid module…).
    #[error("{0}")]
    InvalidPayload(String),
    /// The runtime or feature is not supported by this backend.
    #[error("{0}")]
    Unsupported(String),
    /// The backend cannot run work on this host right now.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// Anything else that went wrong on the host side.
    #[error("backend error: {0}")]
    Internal(String),
}

/// A cheap, cloneable handle that forwards one log line of a workload.
///
/// Lines are delivered in call order. Forwarding never blocks on subscribers: the
/// receiving side is bounded and drops or truncates with a visible marker, so a backend
/// may call it from any thread, as often as the workload prints.
#[derive(Clone)]
pub struct LogSink(Arc<dyn Fn(String) + Send + Sync>);

impl LogSink {
    /// A sink that hands each line to `f`.
    pub fn new(f: impl Fn(String) + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// A sink that drops every line (for benchmarks and unit tests).
    pub fn discard() -> Self {
        Self::new(|_| {})
    }

    /// Forward one line (without its trailing newline).
    pub fn line(&self, line: impl Into<String>) {
        (self.0)(line.into())
    }
}

impl fmt::Debug for LogSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LogSink")
    }
}

/// The per-execution context the engine hands a backend.
#[derive(Debug, Clone)]
pub struct ExecContext {
    /// Where the workload's log lines go, live, as they are produced.
    pub log: LogSink,
    /// Fires on kill and on timeout. A backend must stop the execution promptly
    /// (milliseconds, not seconds), free its resources and return
    /// [`BackendError::Cancelled`]. Checkable from any thread (`is_cancelled`) and
    /// awaitable (`cancelled()`).
    pub cancel: CancellationToken,
    /// When the engine will cancel for timeout. Backends with their own interrupt
    /// mechanism may stop at this instant without waiting for the signal.
    pub deadline: Instant,
}

impl ExecContext {
    /// A context with the given sink, a fresh token and a deadline `timeout` from now.
    pub fn new(log: LogSink, timeout: Duration) -> Self {
        Self {
            log,
            cancel: CancellationToken::new(),
            deadline: Instant::now() + timeout,
        }
    }
}

/// What [`Backend::prepare`] made ready for one workload: a hold the engine keeps until
/// the workload's execution has ended (or it was killed before running), then drops.
/// A backend uses it to pin what the preparation fetched (an image, for instance).
pub struct Prepared {
    _hold: Box<dyn Send + Sync>,
}

impl Prepared {
    /// A hold on `value`, released when the workload is done with it.
    pub fn new(value: impl Send + Sync + 'static) -> Self {
        Self {
            _hold: Box::new(value),
        }
    }
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Prepared")
    }
}

/// The future [`Backend::prepare`] returns.
pub type Preparation = BoxFuture<'static, Result<Prepared, BackendError>>;

/// The contract every isolation technology implements.
///
/// Object-safe and `Send + Sync`: the supervisor holds backends as `Arc<dyn Backend>`
/// and may call [`Backend::execute`] concurrently up to
/// [`BackendCapabilities::max_concurrency`] times.
///
/// Rules a backend follows:
/// - **Hostile code.** The payload, archive and input are untrusted. No host file
///   system, network or environment access beyond what the class documents; archive
///   entries never escape the work directory; limits (`mem_mb`, `cpus`) are enforced.
/// - **Live logs.** Each line the workload prints goes to [`ExecContext::log`] as it
///   happens, not in the result.
/// - **Cancellation.** When [`ExecContext::cancel`] fires the execution stops promptly and
///   `execute` returns [`BackendError::Cancelled`]; the engine discards any late result.
/// - **Output cap.** A result larger than [`WorkloadSpec::max_output_bytes`] is not
///   buffered whole: the workload fails with [`output_exceeds`].
/// - **No blocking of the async runtime.** `execute` returns a `Send` future; blocking
///   work (interpreters, `wait()` on processes) belongs on the backend's own threads.
/// - **Panics** inside `execute` are caught by the engine: the workload fails and the
///   backend's actor is restarted. They are still bugs.
/// - **Preparation** ([`Backend::prepare`]) is for slow work that must not hold a run
///   slot or count against the workload's timeout (pulling an image). The engine awaits
///   it while the workload is `pending`, before the workload joins the backend's FIFO
///   queue; a kill during it ends `killed`, an error ends `failed` with the error's
///   text (so it must read well on its own, e.g. `image pull failed: …`).
pub trait Backend: Send + Sync + 'static {
    /// Name, runtimes, isolation classes and concurrency. Must be cheap and stable for
    /// the backend's lifetime.
    fn capabilities(&self) -> BackendCapabilities;

    /// Whether the backend can run work on this host (binaries present, privileges,
    /// devices). Cheap: computed once or cached. An unavailable backend is listed with
    /// `status: "unavailable"` and never routed to.
    fn health(&self) -> BackendHealth;

    /// Worker processes, their restarts and the protections that could not be applied
    /// here. Cheap. Backends without helper processes keep the default (nothing).
    fn process_report(&self) -> ProcessReport {
        ProcessReport::default()
    }

    /// Technology-specific facts for operators, listed by `GET /v1/backends` under
    /// `details` (the micro-VM backend's accelerator and probe boot time, say). Cheap
    /// like [`Backend::health`]; empty by default.
    fn details(&self) -> serde_json::Map<String, serde_json::Value> {
        serde_json::Map::new()
    }

    /// Work to do before `spec` may queue for a slot, or `None` (the default) when there
    /// is none and the workload queues at once. The future must stop promptly when
    /// `cancel` fires (kill) and return [`BackendError::Cancelled`]; what it returns is
    /// held by the engine until the workload is over. Called once per admission, on the
    /// engine's thread: only cheap checks before the future starts.
    fn prepare(&self, spec: &WorkloadSpec, cancel: CancellationToken) -> Option<Preparation> {
        let _ = (spec, cancel);
        None
    }

    /// Run one workload to completion, honouring `ctx.cancel`.
    fn execute(
        &self,
        spec: WorkloadSpec,
        ctx: ExecContext,
    ) -> BoxFuture<'static, Result<WorkloadResult, BackendError>>;

    /// Release anything the execution of `id` left behind (directories, containers,
    /// cgroups). Always called after `execute` finishes, whatever the outcome, and
    /// idempotent: calling it for an id with nothing left is a no-op.
    fn cleanup(&self, id: WorkloadId) -> BoxFuture<'static, ()>;
}

/// Builds a backend; the supervisor calls it at start-up and again on each restart.
pub type BackendFactory = Arc<dyn Fn() -> Arc<dyn Backend> + Send + Sync>;

/// Stands in for a backend whose construction failed: registered under its name so
/// operators see it, reported `unavailable`, never routed to.
pub struct UnavailableBackend {
    caps: BackendCapabilities,
    health: BackendHealth,
}

impl UnavailableBackend {
    /// A placeholder for `caps.name` that could not be built. The construction error
    /// may name host paths: it goes to the log only, clients see that it failed to start.
    pub fn new(caps: BackendCapabilities, error: impl Into<String>) -> Self {
        Self {
            caps,
            health: BackendHealth::unavailable(
                "it failed to start (the server log says why)",
                error,
            ),
        }
    }
}

impl Backend for UnavailableBackend {
    fn capabilities(&self) -> BackendCapabilities {
        self.caps.clone()
    }

    fn health(&self) -> BackendHealth {
        self.health.clone()
    }

    fn execute(
        &self,
        _spec: WorkloadSpec,
        _ctx: ExecContext,
    ) -> BoxFuture<'static, Result<WorkloadResult, BackendError>> {
        let reason = self.health.reason().unwrap_or_default().to_string();
        Box::pin(async move { Err(BackendError::Unavailable(reason)) })
    }

    fn cleanup(&self, _id: WorkloadId) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}
