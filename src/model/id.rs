use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A workload identifier: a ULID, so ids sort by creation time.
///
/// Invariant: always a valid 26-character Crockford base32 ULID; parsing anything else
/// fails, so an id taken from a URL can be used without further checks.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, pattern = "^[0-9A-HJKMNP-TV-Z]{26}$", example = "01JKQX7V8MZRN3B4HTGFWDCS9E")]
pub struct WorkloadId(ulid::Ulid);

/// Monotonic within a millisecond, so ids created in the same millisecond still sort
/// in creation order (queues and recovery rely on "oldest first").
static GENERATOR: std::sync::LazyLock<std::sync::Mutex<ulid::Generator>> =
    std::sync::LazyLock::new(|| std::sync::Mutex::new(ulid::Generator::new()));

impl WorkloadId {
    /// A fresh id for a workload created now; larger than every id created before it
    /// in this process.
    pub fn new() -> Self {
        let next = GENERATOR.lock().ok().and_then(|mut g| g.generate().ok());
        match next {
            Some(id) => Self(id),
            // The generator only fails after 2^80 ids in one millisecond. (Not
            // `unwrap_or_default`: `Ulid::default()` is the nil id.)
            None => Self(ulid::Ulid::new()),
        }
    }

    /// The creation time encoded in the id (millisecond precision), so that ordering by
    /// creation time and by id always agree.
    pub fn created_at(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::<chrono::Utc>::from(self.0.datetime())
    }
}

impl Default for WorkloadId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for WorkloadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The text was not a ULID.
#[derive(Debug, thiserror::Error)]
#[error("not a workload id (expected a 26-character ULID)")]
pub struct InvalidWorkloadId;

impl FromStr for WorkloadId {
    type Err = InvalidWorkloadId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 26 {
            return Err(InvalidWorkloadId);
        }
        ulid::Ulid::from_string(s)
            .map(Self)
            .map_err(|_| InvalidWorkloadId)
    }
}

impl TryFrom<String> for WorkloadId {
    type Error = InvalidWorkloadId;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<WorkloadId> for String {
    fn from(id: WorkloadId) -> Self {
        id.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_text() {
        let id = WorkloadId::new();
        let text = id.to_string();
        assert_eq!(text.len(), 26);
        assert_eq!(text.parse::<WorkloadId>().ok(), Some(id));
    }

    #[test]
    fn rejects_non_ulids() {
        for bad in [
            "",
            "abc",
            "01JKQX7V8MZRN3B4HTGFWDCS9",
            "01JKQX7V8MZRN3B4HTGFWDCS9EX",
            "../../etc/passwd000000000",
        ] {
            assert!(bad.parse::<WorkloadId>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn ids_sort_by_creation_even_within_a_millisecond() {
        let ids: Vec<WorkloadId> = (0..1000).map(|_| WorkloadId::new()).collect();
        for pair in ids.windows(2) {
            assert!(pair[0] < pair[1]);
            assert!(pair[0].to_string() < pair[1].to_string());
        }
    }
}
