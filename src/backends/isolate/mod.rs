//! The `isolate` backend: JavaScript on QuickJS and Wasm on wasmtime, in-process, a
//! fresh engine instance per workload.

use futures_util::future::BoxFuture;
use serde::Deserialize;

use super::{
    Backend, BackendCapabilities, BackendError, BackendHealth, ExecContext, WorkloadResult,
    WorkloadSpec,
};
use crate::model::{Isolation, Runtime, WorkloadId};

/// `[backends.isolate]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IsolateConfig {
    /// Register this backend.
    pub enabled: bool,
    /// Concurrent workloads (worker threads); 0 = one per CPU core.
    pub max_concurrency: usize,
}

/// The in-process backend.
pub struct IsolateBackend {
    max_concurrency: usize,
}

impl IsolateBackend {
    /// Start the worker pool.
    pub fn new(cfg: &IsolateConfig) -> Result<Self, BackendError> {
        let max_concurrency = if cfg.max_concurrency == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            cfg.max_concurrency
        };
        Ok(Self { max_concurrency })
    }
}

impl Backend for IsolateBackend {
    fn capabilities(&self) -> BackendCapabilities {
        BackendCapabilities {
            name: "isolate".into(),
            supported_runtimes: vec![Runtime::Node, Runtime::Wasm],
            supported_isolations: vec![Isolation::Isolate],
            max_concurrency: self.max_concurrency,
        }
    }

    fn health(&self) -> BackendHealth {
        BackendHealth::Healthy
    }

    fn execute(
        &self,
        _spec: WorkloadSpec,
        _ctx: ExecContext,
    ) -> BoxFuture<'static, Result<WorkloadResult, BackendError>> {
        Box::pin(async { Err(BackendError::Unsupported("not implemented yet".into())) })
    }

    fn cleanup(&self, _id: WorkloadId) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}
