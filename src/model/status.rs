use serde::{Deserialize, Serialize};

/// The lifecycle of a workload.
///
/// `pending → running → completed | failed | killed`, plus `pending → failed` (could not
/// start) and `pending → killed` (cancelled before start). Terminal states are final.
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
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Accepted and recorded, waiting for a backend slot.
    Pending,
    /// Executing on a backend.
    Running,
    /// Finished successfully.
    Completed,
    /// Finished with an error (including timeouts and interrupted runs).
    Failed,
    /// Stopped on request.
    Killed,
}

impl Status {
    /// Every status, in lifecycle order.
    pub const ALL: [Status; 5] = [
        Status::Pending,
        Status::Running,
        Status::Completed,
        Status::Failed,
        Status::Killed,
    ];

    /// The wire (and database) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Killed => "killed",
        }
    }

    /// Whether nothing can follow this status.
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Killed)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Status {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!("unknown status {s:?} (expected one of: pending, running, completed, failed, killed)")
            })
    }
}

/// A transition the state machine does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid transition: {from} -> {to}")]
pub struct TransitionError {
    /// The status the workload had.
    pub from: Status,
    /// The status that was asked for.
    pub to: Status,
}

/// The one state-machine function: every writer of a status goes through it.
///
/// Returns the new status when `from → to` is allowed, an error otherwise.
pub fn transition(from: Status, to: Status) -> Result<Status, TransitionError> {
    use Status::*;
    let allowed = matches!(
        (from, to),
        (Pending, Running | Failed | Killed) | (Running, Completed | Failed | Killed)
    );
    if allowed {
        Ok(to)
    } else {
        Err(TransitionError { from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use Status::*;

    #[test]
    fn exhaustive_transition_table() {
        let allowed = [
            (Pending, Running),
            (Pending, Failed),
            (Pending, Killed),
            (Running, Completed),
            (Running, Failed),
            (Running, Killed),
        ];
        let mut checked = 0;
        for from in Status::ALL {
            for to in Status::ALL {
                let expect_ok = allowed.contains(&(from, to));
                assert_eq!(transition(from, to).is_ok(), expect_ok, "{from} -> {to}");
                checked += 1;
            }
        }
        assert_eq!(checked, 25);
    }

    fn any_status() -> impl Strategy<Value = Status> {
        prop::sample::select(Status::ALL.to_vec())
    }

    proptest! {
        /// Any sequence of requested transitions, applied through `transition`, never
        /// leaves a terminal state and never goes back to pending.
        #[test]
        fn walks_never_leave_terminal_states(steps in prop::collection::vec(any_status(), 0..20)) {
            let mut current = Pending;
            let mut reached_terminal = false;
            for to in steps {
                match transition(current, to) {
                    Ok(next) => {
                        prop_assert!(!reached_terminal, "left terminal {current} for {next}");
                        prop_assert_ne!(next, Pending);
                        current = next;
                        reached_terminal = current.is_terminal();
                    }
                    Err(e) => {
                        prop_assert_eq!(e, TransitionError { from: current, to });
                    }
                }
            }
        }
    }
}
