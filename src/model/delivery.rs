use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::workload::{rfc3339, rfc3339_opt};
use super::WorkloadId;

/// Where a completion webhook delivery stands.
///
/// Invariant: `Pending` → `Delivered` (a 2xx answer) or `Failed` (the last attempt
/// failed); nothing leaves `Delivered` or `Failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Attempts remain; the next one is due at `next_attempt_at`.
    Pending,
    /// A receiver answered 2xx; never sent again.
    Delivered,
    /// Every attempt failed.
    Failed,
}

impl DeliveryState {
    /// The stored and answered name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }
}

impl fmt::Display for DeliveryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeliveryState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(DeliveryState::Pending),
            "delivered" => Ok(DeliveryState::Delivered),
            "failed" => Ok(DeliveryState::Failed),
            other => Err(format!("unknown delivery state {other:?}")),
        }
    }
}

/// One recorded attempt of a delivery (as listed by `GET /v1/workloads/{id}/deliveries`).
///
/// Invariant: `status_code` is set when the receiver answered, `error` when the attempt
/// did not end with a 2xx; `next_attempt_at` is set when another attempt was scheduled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeliveryAttempt {
    /// 1 for the first attempt, without gaps.
    pub attempt: u32,
    /// When the attempt began.
    #[serde(serialize_with = "rfc3339")]
    pub started_at: DateTime<Utc>,
    /// When it ended (answer, error or timeout).
    #[serde(serialize_with = "rfc3339")]
    pub finished_at: DateTime<Utc>,
    /// The receiver's HTTP status, when it answered.
    pub status_code: Option<u16>,
    /// Why it did not succeed (a non-2xx status, timeout, connection error, refusal).
    pub error: Option<String>,
    /// When the next attempt is due, if there is one.
    #[serde(serialize_with = "rfc3339_opt")]
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// The webhook picture of one workload: the answer of
/// `GET /v1/workloads/{id}/deliveries`.
///
/// Invariant: `delivery_id`, `state` are set exactly when a delivery exists (the
/// workload has a `callback_url` and reached a terminal status); `attempts` is in
/// attempt order and never null.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Deliveries {
    /// The workload.
    pub workload_id: WorkloadId,
    /// Its `callback_url`, if it has one.
    pub callback_url: Option<String>,
    /// The `Vulcan-Delivery` header of every attempt.
    pub delivery_id: Option<String>,
    /// Where the delivery stands.
    pub state: Option<DeliveryState>,
    /// When the next attempt is due (pending deliveries only).
    #[serde(serialize_with = "rfc3339_opt")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Every attempt so far.
    pub attempts: Vec<DeliveryAttempt>,
}
