//! The `microvm` backend: a KVM micro-VM per workload.
//!
//! This release ships no guest kernel or guest agent, so the backend never claims to
//! run work: it registers, probes the host, and reports `unavailable` with the reason.
//! `auto` then falls back along the chain (python/go → gvisor). On the project's own
//! machines `/dev/kvm` is a software PVM on which stock guest kernels do not boot, so
//! even with a guest image it would be unavailable there.

use std::path::Path;

use futures_util::future::BoxFuture;
use serde::Deserialize;

use super::{
    Backend, BackendCapabilities, BackendError, BackendHealth, ExecContext, WorkloadResult,
    WorkloadSpec,
};
use crate::model::{Isolation, Runtime, WorkloadId};

/// `[backends.microvm]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MicrovmConfig {
    /// Register this backend.
    pub enabled: bool,
    /// Concurrent workloads.
    pub max_concurrency: usize,
    /// Workloads waiting for a slot; beyond it submissions to this backend get 429.
    pub max_queue: usize,
}

/// The micro-VM backend (reports why it cannot run work here).
pub struct MicrovmBackend {
    max_concurrency: usize,
    health: BackendHealth,
}

impl MicrovmBackend {
    /// Probe the host once.
    pub fn new(cfg: &MicrovmConfig) -> Self {
        let health = if !Path::new("/dev/kvm").exists() {
            BackendHealth::unavailable(
                "hardware virtualisation (KVM) is not available on this host",
                "no /dev/kvm",
            )
        } else {
            BackendHealth::unavailable(
                "no guest kernel and agent are installed for micro-VMs on this host",
                "no guest kernel and agent are installed",
            )
        };
        Self {
            max_concurrency: cfg.max_concurrency.max(1),
            health,
        }
    }
}

impl Backend for MicrovmBackend {
    fn capabilities(&self) -> BackendCapabilities {
        BackendCapabilities {
            name: "microvm".into(),
            supported_runtimes: vec![Runtime::Python, Runtime::Go],
            supported_isolations: vec![Isolation::Microvm],
            max_concurrency: self.max_concurrency,
        }
    }

    fn health(&self) -> BackendHealth {
        self.health.clone()
    }

    fn execute(
        &self,
        _spec: WorkloadSpec,
        _ctx: ExecContext,
    ) -> BoxFuture<'static, Result<WorkloadResult, BackendError>> {
        let reason = self
            .health
            .reason()
            .unwrap_or("micro-VMs are not available")
            .to_string();
        Box::pin(async move { Err(BackendError::Unavailable(reason)) })
    }

    fn cleanup(&self, _id: WorkloadId) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}
