//! The actors: [`supervisor::Supervisor`] (registry, routing, admission),
//! [`workload::WorkloadActor`] (one per workload), [`backend::BackendActor`] (one per
//! backend, supervised), [`log_broker::LogBroker`] (log topics and SSE fan-out) and
//! [`store::StoreActor`] (the single database writer) and [`images::ImagesActor`] (the
//! HTTP layer's way to the OCI image store).

pub mod backend;
pub mod images;
pub mod log_broker;
pub mod store;
pub mod supervisor;
pub mod workload;
