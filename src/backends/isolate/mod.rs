//! The `isolate` backend: JavaScript on QuickJS and Wasm on wasmtime, in confined worker
//! processes, a fresh engine instance per workload.
//!
//! No guest code runs in the server. The server keeps a pool of worker processes
//! (`pool.rs`, `vulcan worker`, [`worker::main`]) sized by `max_concurrency`; each
//! confines itself before its first job (`confine.rs`: namespaces, an empty root, an
//! unprivileged uid, no capabilities, rlimits, a seccomp allowlist) inside a memory
//! cgroup of its own (`cgroup.rs`), and talks to the server over a socket
//! (`protocol.rs`). Each job gets its own heap (a QuickJS runtime, a wasmtime `Store`)
//! with the requested memory limit and an interrupt that stops it at a cancel or the
//! deadline; a worker that does not stop is killed and replaced by the server.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use serde::Deserialize;

use super::{
    Backend, BackendCapabilities, BackendError, BackendHealth, CancellationToken, ExecContext,
    ProcessReport, WorkloadResult, WorkloadSpec,
};
use crate::config::Config;
use crate::model::{Isolation, Payload, Runtime, WorkloadId};

mod cgroup;
mod confine;
mod js;
mod pool;
pub mod protocol;
mod wasm;
pub mod worker;

pub(crate) use js::looks_like_module;

use pool::{Settings, WorkerPool};
use protocol::{Program, WorkerInit};

/// Virtual address space wasmtime reserves for one linear memory (4 GiB plus guard
/// regions) and its code, stacks and QuickJS beside it: what `RLIMIT_AS` must leave
/// room for when it stands in for a memory cgroup.
const WASM_VIRTUAL_RESERVATION: u64 = 8 * 1024 * 1024 * 1024;

/// `[backends.isolate]`: see `config/default.toml` for each key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IsolateConfig {
    /// Register this backend.
    pub enabled: bool,
    /// Concurrent workloads (worker processes); 0 = one per CPU core.
    pub max_concurrency: usize,
    /// Workloads waiting for a slot; beyond it submissions to this backend get 429.
    pub max_queue: usize,
    /// Compiled Wasm modules each worker keeps, keyed by the sha256 of their bytes; the
    /// oldest is dropped when full. 0 disables the cache.
    pub wasm_module_cache: usize,
    /// Bytes of compiled JavaScript module bytecode each worker keeps, keyed by the
    /// sha256 of the source; the oldest is dropped when full. 0 disables the cache.
    pub js_bytecode_cache_bytes: usize,
    /// The `vulcan` executable workers are started from; empty = this executable.
    pub worker_path: String,
    /// Unprivileged user the workers run as (when the server is root).
    pub worker_uid: u32,
    /// Unprivileged group the workers run as (when the server is root).
    pub worker_gid: u32,
    /// Milliseconds a worker has to stop after a cancel before it is killed.
    pub cancel_grace_ms: u64,
    /// Memory a worker may use beyond `max_mem_mb` before its cgroup OOM-kills it, MiB.
    pub worker_memory_overhead_mb: u64,
    /// Parent of the workers' memory cgroups (one path component).
    pub cgroup_parent: String,
}

/// The worker executable: the configured path, or this process's own executable. A
/// cargo test harness (an executable in a `deps` directory) must name the vulcan binary
/// explicitly: started as `<harness> worker` it would run tests, not serve jobs.
fn worker_executable(configured: &str) -> Result<PathBuf, BackendError> {
    if !configured.is_empty() {
        return Ok(PathBuf::from(configured));
    }
    let exe = std::env::current_exe()
        .map_err(|e| BackendError::Unavailable(format!("cannot find this executable: {e}")))?;
    if exe.parent().and_then(|p| p.file_name()) == Some(std::ffi::OsStr::new("deps")) {
        return Err(BackendError::Unavailable(format!(
            "{} looks like a test harness, not the vulcan binary: set \
             backends.isolate.worker_path",
            exe.display()
        )));
    }
    Ok(exe)
}

/// The isolate backend.
///
/// Invariant: owns a pool of `max_concurrency` worker processes for its lifetime
/// (replacing any that die); dropping the last handle kills them.
pub struct IsolateBackend {
    pool: Arc<WorkerPool>,
}

impl IsolateBackend {
    /// Start the worker pool with `config`'s `[backends.isolate]` settings and the
    /// server-wide limits (output cap, log caps, `max_mem_mb`). Needs a tokio runtime.
    pub fn new(config: &Config) -> Result<Self, BackendError> {
        let cfg = &config.backends.isolate;
        let size = if cfg.max_concurrency == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            cfg.max_concurrency
        };
        let path = worker_executable(&cfg.worker_path)?;
        let memory_bytes = (u64::from(config.max_mem_mb) + cfg.worker_memory_overhead_mb)
            .saturating_mul(1024 * 1024);
        let (cgroups, cgroup_problem) = if !rustix::process::geteuid().is_root() {
            (
                None,
                Some(format!(
                    "no memory cgroup per worker (the server is not root): the backstop is \
                     RLIMIT_AS of {} MiB instead",
                    (memory_bytes + WASM_VIRTUAL_RESERVATION) >> 20
                )),
            )
        } else {
            match cgroup::CgroupParent::open(&cfg.cgroup_parent) {
                Ok(parent) => (Some(parent), None),
                Err(e) => (
                    None,
                    Some(format!(
                        "no memory cgroup per worker ({e}): the backstop is RLIMIT_AS of {} \
                         MiB instead",
                        (memory_bytes + WASM_VIRTUAL_RESERVATION) >> 20
                    )),
                ),
            }
        };
        let settings = Settings {
            path,
            init: WorkerInit {
                uid: cfg.worker_uid,
                gid: cfg.worker_gid,
                wasm_module_cache: cfg.wasm_module_cache,
                js_bytecode_cache_bytes: cfg.js_bytecode_cache_bytes,
                max_line_bytes: config.logs.max_line_bytes,
                max_lines: config.logs.max_lines,
                address_space_bytes: None,
                probes: false,
            },
            max_output_bytes: config.max_output_bytes,
            memory_bytes,
            address_space_fallback: memory_bytes.saturating_add(WASM_VIRTUAL_RESERVATION),
            cgroups,
            cgroup_problem,
            cancel_grace: Duration::from_millis(cfg.cancel_grace_ms),
        };
        Ok(Self {
            pool: WorkerPool::start(settings, size)?,
        })
    }
}

/// When a running workload must stop: its token fired (kill or timeout) or its
/// deadline passed. Cheap to check and to clone; checked from the engines' interrupt
/// hooks.
#[derive(Debug, Clone)]
pub(crate) struct StopSignal {
    cancel: CancellationToken,
    deadline: Instant,
}

impl StopSignal {
    pub(crate) fn new(cancel: CancellationToken, deadline: Instant) -> Self {
        Self { cancel, deadline }
    }

    /// True once the workload was cancelled or ran out of time; stays true.
    fn should_stop(&self) -> bool {
        self.cancel.is_cancelled() || Instant::now() >= self.deadline
    }
}

/// The program a worker runs for `runtime` and `payload`, or why there is none.
fn program(runtime: Runtime, payload: Payload) -> Result<Program, BackendError> {
    match (runtime, payload) {
        (Runtime::Node, Payload::Code(code)) => Ok(Program::Js(code)),
        (Runtime::Node, Payload::Archive(_)) => Err(BackendError::InvalidPayload(
            "the isolate backend runs JavaScript from `code` only; archives are not \
             supported for node here (use isolation gvisor or microvm)"
                .into(),
        )),
        (Runtime::Wasm, Payload::Code(wat)) => Ok(Program::Wasm(wat.into_bytes())),
        (Runtime::Wasm, Payload::Archive(bytes)) => Ok(Program::Wasm(bytes)),
        (Runtime::Node | Runtime::Wasm, Payload::Image { .. }) => Err(
            BackendError::InvalidPayload("an image payload needs runtime oci".into()),
        ),
        (other, _) => Err(BackendError::Unsupported(format!(
            "the isolate backend does not run {other} workloads"
        ))),
    }
}

impl Backend for IsolateBackend {
    fn capabilities(&self) -> BackendCapabilities {
        BackendCapabilities {
            name: "isolate".into(),
            supported_runtimes: vec![Runtime::Node, Runtime::Wasm],
            supported_isolations: vec![Isolation::Isolate],
            max_concurrency: self.pool.size(),
        }
    }

    fn health(&self) -> BackendHealth {
        self.pool.health()
    }

    fn process_report(&self) -> ProcessReport {
        ProcessReport {
            worker_restarts: self.pool.restarts(),
            limitations: self.pool.limitations(),
            workers: self.pool.workers("isolate"),
        }
    }

    fn execute(
        &self,
        spec: WorkloadSpec,
        ctx: ExecContext,
    ) -> BoxFuture<'static, Result<WorkloadResult, BackendError>> {
        let pool = Arc::clone(&self.pool);
        Box::pin(async move {
            let program = program(spec.runtime, spec.payload)?;
            pool.run(program, spec.input, spec.mem_mb, spec.max_output_bytes, ctx)
                .await
        })
    }

    fn cleanup(&self, _id: WorkloadId) -> BoxFuture<'static, ()> {
        // Nothing outlives an execution: the engine instance dies with the job, and a
        // worker that did not finish it cleanly was killed and replaced.
        Box::pin(async {})
    }
}
