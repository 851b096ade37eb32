//! The `isolate` backend: JavaScript on QuickJS and Wasm on wasmtime, in-process, a
//! fresh engine instance per workload.
//!
//! Workloads run on a fixed pool of worker threads (`pool.rs`), never on the async
//! runtime: a QuickJS runtime must stay on the thread that made it and sync WASI
//! blocks. Each workload gets its own heap (a QuickJS runtime, a wasmtime `Store`) with
//! the requested memory limit, and an interrupt (QuickJS's interrupt handler, wasmtime's
//! epoch callback) that stops it when the workload is killed or its deadline passes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use serde::Deserialize;

use super::{
    Backend, BackendCapabilities, BackendError, BackendHealth, CancellationToken, ExecContext,
    WorkloadResult, WorkloadSpec,
};
use crate::model::{Isolation, Payload, Runtime, WorkloadId};

mod js;
mod pool;
mod wasm;

pub(crate) use js::looks_like_module;
pub use js::{bench_cold_js, bench_js_workload};
pub use wasm::bench_cold_wasm;

use pool::WorkerPool;
use wasm::WasmEngine;

/// How long `execute` keeps waiting for a worker after cancellation before it answers
/// `Cancelled` anyway. Interrupts normally stop a workload within milliseconds; this
/// only bounds the answer if an engine fails to notice.
const CANCEL_GRACE: Duration = Duration::from_secs(2);

/// `[backends.isolate]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IsolateConfig {
    /// Register this backend.
    pub enabled: bool,
    /// Concurrent workloads (worker threads); 0 = one per CPU core.
    pub max_concurrency: usize,
    /// Workloads waiting for a slot; beyond it submissions to this backend get 429.
    pub max_queue: usize,
    /// Compiled Wasm modules kept in memory, keyed by the sha256 of their bytes; the
    /// oldest is dropped when full. 0 disables the cache.
    pub wasm_module_cache: usize,
}

/// The in-process backend.
///
/// Invariant: owns `max_concurrency` worker threads and one wasmtime engine (with its
/// epoch ticker) for its whole lifetime; dropping it stops them.
pub struct IsolateBackend {
    pool: Arc<WorkerPool>,
    wasm: Arc<WasmEngine>,
}

impl IsolateBackend {
    /// Start the worker pool and the wasmtime engine.
    pub fn new(cfg: &IsolateConfig) -> Result<Self, BackendError> {
        let max_concurrency = if cfg.max_concurrency == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            cfg.max_concurrency
        };
        Ok(Self {
            pool: Arc::new(WorkerPool::new(max_concurrency)?),
            wasm: Arc::new(WasmEngine::new(cfg.wasm_module_cache)?),
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

/// What a worker runs: the payload already checked against the runtime.
enum Program {
    Js(String),
    Wasm(Vec<u8>),
}

impl Program {
    fn from_spec(runtime: Runtime, payload: Payload) -> Result<Self, BackendError> {
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
        BackendHealth::Healthy
    }

    fn execute(
        &self,
        spec: WorkloadSpec,
        ctx: ExecContext,
    ) -> BoxFuture<'static, Result<WorkloadResult, BackendError>> {
        let pool = Arc::clone(&self.pool);
        let wasm = Arc::clone(&self.wasm);
        Box::pin(async move {
            let program = Program::from_spec(spec.runtime, spec.payload)?;
            let stop = StopSignal::new(ctx.cancel.clone(), ctx.deadline);
            let input = spec.input;
            let mem_mb = spec.mem_mb;
            let log = ctx.log;
            let job = pool.run(move || {
                let started = Instant::now();
                let result = match program {
                    Program::Js(code) => js::run(&code, &input, mem_mb, &log, &stop),
                    Program::Wasm(bytes) => wasm.run(&bytes, &input, mem_mb, &log, &stop),
                };
                result.map(|r| WorkloadResult {
                    duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    ..r
                })
            });
            tokio::pin!(job);
            tokio::select! {
                result = &mut job => result,
                () = ctx.cancel.cancelled() => {
                    // The interrupt stops the worker promptly; wait for it so the
                    // thread is free before we answer, but never forever.
                    let _ = tokio::time::timeout(CANCEL_GRACE, job).await;
                    Err(BackendError::Cancelled)
                }
            }
        })
    }

    fn cleanup(&self, _id: WorkloadId) -> BoxFuture<'static, ()> {
        // Nothing outlives an execution: the engine instance dies with the job.
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests;
