//! The workload domain: identifiers, enums, the lifecycle state machine and the
//! validated submission request. Everything that crosses the HTTP boundary is turned
//! into these types first, so invalid input cannot reach an actor.

mod delivery;
mod id;
mod idempotency;
mod image_ref;
mod kinds;
mod node;
mod request;
mod status;
mod workload;

pub use delivery::{Deliveries, DeliveryAttempt, DeliveryState};
pub use id::WorkloadId;
pub use idempotency::{IdempotencyKey, IdempotencyRecord, SubmitKind, MAX_KEY_BYTES};
pub use image_ref::{is_sha256_digest, ImageRef};
pub use kinds::{Isolation, IsolationRequest, Runtime};
pub use node::{BackendCapacity, NodeInfo, NodeState};
pub use request::{
    Limits, Payload, RequestError, Resources, ResourcesDto, WorkloadRequest, WorkloadRequestDto,
};
pub use status::{transition, Status, TransitionError};
#[cfg(test)]
pub(crate) use workload::pending_fixture;
pub use workload::{cap_line, format_time, output_value, LogLine, Output, Workload};
