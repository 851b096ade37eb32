//! The actors: [`supervisor::Supervisor`] (registry, routing, admission),
//! [`workload::WorkloadActor`] (one per workload), [`backend::BackendActor`] (one per
//! backend, supervised), [`log_broker::LogBroker`] (log topics and SSE fan-out),
//! [`store::StoreActor`] (the single database writer), [`images::ImagesActor`] (the
//! HTTP layer's way to the OCI image store) and [`webhooks::Deliverer`] (completion
//! webhooks).

pub mod backend;
pub mod images;
pub mod log_broker;
pub mod log_follower;
pub mod store;
pub mod supervisor;
pub mod webhooks;
pub mod workload;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Restarts and the last failure of a long-lived component that restarts itself (the
/// store's writer, the log broker), as `GET /v1/system/actors` reports them. Shared
/// between the component and the HTTP layer.
#[derive(Debug, Default)]
pub struct Restarts {
    count: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Restarts {
    /// Count one restart, for `why`.
    pub fn record(&self, why: impl Into<String>) {
        let why = why.into();
        log::warn!("{why}");
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(why);
        }
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    /// Restarts since start-up.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// Why it last restarted.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }
}
