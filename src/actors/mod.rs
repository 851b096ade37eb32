//! The actors: [`supervisor::Supervisor`] (registry, routing, admission),
//! [`workload::WorkloadActor`] (one per workload), [`backend::BackendActor`] (one per
//! backend, supervised), [`log_broker::LogBroker`] (log topics and SSE fan-out),
//! [`store::StoreActor`] (the single database writer), [`images::ImagesActor`] (the
//! HTTP layer's way to the OCI image store) and [`webhooks::Deliverer`] (completion
//! webhooks).

pub mod backend;
pub mod images;
pub mod log_broker;
pub mod store;
pub mod supervisor;
pub mod webhooks;
pub mod workload;
