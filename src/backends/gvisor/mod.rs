//! The `gvisor` backend: workloads in OCI bundles under runsc.

use futures_util::future::BoxFuture;
use serde::Deserialize;

use super::{
    Backend, BackendCapabilities, BackendError, BackendHealth, ExecContext, WorkloadResult,
    WorkloadSpec,
};
use crate::model::{Isolation, Runtime, WorkloadId};

/// `[backends.gvisor]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GvisorConfig {
    /// Register this backend.
    pub enabled: bool,
    /// Concurrent workloads.
    pub max_concurrency: usize,
}

/// The gVisor backend.
pub struct GvisorBackend {
    max_concurrency: usize,
}

impl GvisorBackend {
    /// Start the worker pool.
    pub fn new(cfg: &GvisorConfig) -> Result<Self, BackendError> {
        let max_concurrency = if cfg.max_concurrency == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            cfg.max_concurrency
        };
        Ok(Self { max_concurrency })
    }
}

impl Backend for GvisorBackend {
    fn capabilities(&self) -> BackendCapabilities {
        BackendCapabilities {
            name: "gvisor".into(),
            supported_runtimes: vec![Runtime::Python],
            supported_isolations: vec![Isolation::Gvisor],
            max_concurrency: self.max_concurrency,
        }
    }

    fn health(&self) -> BackendHealth {
        BackendHealth::Unavailable("not implemented yet".into())
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
