//! The phases of a [`super::WorkloadActor`]'s life, and [`Phase::next`]: the one place
//! that says which move is allowed.
//!
//! ```text
//! Preparing ─Prepared─▶ Queued ─SlotGranted─▶ Starting ─Launched─▶ Running
//!     │                   │                      │                    │
//!     └───────────────────┴──────Decided─────────┴────────────────────┘
//!                                   ▼
//!        Stopping { to, execution: NoSlot | Starting | Running | Over, written }
//!          ├─ SlotGranted     NoSlot   → Over  (the slot came after the decision; nothing runs)
//!          ├─ Abandoned       Starting → Over  (the launch was dropped; nothing ran)
//!          ├─ ExecutionEnded  Running  → Over  (the backend answered)
//!          └─ Written                          (the terminal record is stored)
//!                                   ▼ written, and no execution left
//!                               Finished
//! ```
//!
//! The terminal status is decided exactly once (a second `Decided` is stale), and the
//! actor reaches `Finished`, where it stops, only once that status is written and the
//! execution, if a slot was granted, has really ended. A stale event (one that lost a
//! race with the decision) leaves the phase as it was; any other refused move is a bug
//! in the actor, which [`super::WorkloadActor`] logs, never a panic.

use std::fmt;
use std::time::Instant;

use crate::backends::{Preparation, Prepared};
use crate::model::{Status, Workload};

/// What became of the backend slot of a workload whose outcome is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Execution {
    /// No slot was granted (yet): nothing ran and nothing will.
    NoSlot,
    /// A slot was granted at this instant and the launch (payload read) is in flight.
    Starting(Instant),
    /// Handed to the backend at this slot's instant; the backend has not answered yet.
    Running(Instant),
    /// A slot was granted at this instant and whatever used it is over.
    Over(Instant),
}

impl Execution {
    /// When the slot was granted, if it was.
    pub fn started(self) -> Option<Instant> {
        match self {
            Execution::NoSlot => None,
            Execution::Starting(at) | Execution::Running(at) | Execution::Over(at) => Some(at),
        }
    }
}

/// Where a workload actor is. Each phase holds the data valid only in it.
pub enum Phase {
    /// The backend's preparation runs; the workload is `pending` and not queued for a
    /// slot yet.
    Preparing {
        /// The preparation, until the actor takes it to await it.
        preparation: Option<Preparation>,
    },
    /// `pending`, waiting for a backend slot.
    Queued {
        /// What the preparation made ready, held until the execution is over.
        prepared: Option<Prepared>,
    },
    /// A slot is granted; the execution is not handed to the backend yet (a deferred
    /// payload is being read from the store).
    Starting {
        /// When the slot was granted (the duration counts from here).
        started: Instant,
        /// What the preparation made ready.
        prepared: Option<Prepared>,
    },
    /// Executing on a backend, outcome undecided.
    Running {
        /// When the slot was granted.
        started: Instant,
        /// When the execution times out.
        deadline: Instant,
        /// What the preparation made ready.
        prepared: Option<Prepared>,
    },
    /// The terminal status is decided (and the execution cancelled); waiting for its
    /// write and for the slot's use to end.
    Stopping {
        /// The decided terminal status.
        to: Status,
        /// Whether a slot was granted and whether its use has ended.
        execution: Execution,
        /// The terminal record, once the store answered.
        written: Option<Box<Workload>>,
        /// What the preparation made ready, until the execution is over.
        prepared: Option<Prepared>,
    },
    /// The terminal status is written and no execution is left: the actor stops.
    Finished {
        /// The decided terminal status.
        to: Status,
        /// The terminal record (as stored, or the last known one if the write failed).
        record: Box<Workload>,
        /// Whether a backend slot was used (the supervisor counts it as running).
        ran: bool,
    },
}

/// What happens to a workload actor.
pub enum Event {
    /// The backend's preparation succeeded.
    Prepared(Prepared),
    /// A backend slot was granted at this instant.
    SlotGranted(Instant),
    /// The execution was handed to the backend; it times out at this instant.
    Launched(Instant),
    /// The launch was dropped because the outcome was decided meanwhile.
    Abandoned,
    /// The terminal status is decided (kill, timeout, result, failure).
    Decided(Status),
    /// The backend answered: the execution is over.
    ExecutionEnded,
    /// The store answered the terminal write.
    Written(Box<Workload>),
}

/// The result of offering an event to a phase.
pub enum Move {
    /// The event is allowed: this is the new phase.
    To(Phase),
    /// The event lost a race with the decision of the outcome (a second kill, a
    /// preparation that succeeds after a kill): expected, and ignored. The phase is
    /// handed back unchanged.
    Stale(Phase),
    /// The event cannot happen in this phase: a bug in the actor. The phase is handed
    /// back unchanged.
    Invalid(Phase),
}

impl Event {
    /// The event's name (for logs).
    pub fn name(&self) -> &'static str {
        match self {
            Event::Prepared(_) => "Prepared",
            Event::SlotGranted(_) => "SlotGranted",
            Event::Launched(_) => "Launched",
            Event::Abandoned => "Abandoned",
            Event::Decided(_) => "Decided",
            Event::ExecutionEnded => "ExecutionEnded",
            Event::Written(_) => "Written",
        }
    }
}

impl fmt::Debug for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())?;
        if let Phase::Stopping {
            to,
            execution,
            written,
            ..
        } = self
        {
            write!(f, " ({to}, {execution:?}, written: {})", written.is_some())?;
        }
        Ok(())
    }
}

impl Phase {
    /// The phase's name (for logs).
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Preparing { .. } => "preparing",
            Phase::Queued { .. } => "queued",
            Phase::Starting { .. } => "starting",
            Phase::Running { .. } => "running",
            Phase::Stopping { .. } => "stopping",
            Phase::Finished { .. } => "finished",
        }
    }

    /// The terminal status, once decided.
    pub fn decided(&self) -> Option<Status> {
        match self {
            Phase::Stopping { to, .. } | Phase::Finished { to, .. } => Some(*to),
            _ => None,
        }
    }

    /// When the backend slot was granted, while that still matters (until finished).
    pub fn started(&self) -> Option<Instant> {
        match self {
            Phase::Starting { started, .. } | Phase::Running { started, .. } => Some(*started),
            Phase::Stopping { execution, .. } => execution.started(),
            Phase::Preparing { .. } | Phase::Queued { .. } | Phase::Finished { .. } => None,
        }
    }

    /// Whether a granted slot is in use: a launch or an execution is under way.
    pub fn holds_slot(&self) -> bool {
        match self {
            Phase::Starting { .. } | Phase::Running { .. } => true,
            Phase::Stopping { execution, .. } => {
                matches!(execution, Execution::Starting(_) | Execution::Running(_))
            }
            Phase::Preparing { .. } | Phase::Queued { .. } | Phase::Finished { .. } => false,
        }
    }

    /// Whether a backend slot was granted (the supervisor counts the workload as running).
    pub fn ran(&self) -> bool {
        match self {
            Phase::Finished { ran, .. } => *ran,
            other => other.started().is_some(),
        }
    }

    /// The execution's deadline, while it runs undecided.
    pub fn deadline(&self) -> Option<Instant> {
        match self {
            Phase::Running { deadline, .. } => Some(*deadline),
            _ => None,
        }
    }

    /// The terminal record, once written.
    pub fn final_record(&self) -> Option<&Workload> {
        match self {
            Phase::Stopping { written, .. } => written.as_deref(),
            Phase::Finished { record, .. } => Some(record),
            _ => None,
        }
    }

    /// The move `event` makes from this phase. Every allowed and every stale move is
    /// listed here; anything else is [`Move::Invalid`].
    pub fn next(self, event: Event) -> Move {
        use Execution as X;
        match (self, event) {
            (Phase::Preparing { .. }, Event::Prepared(prepared)) => Move::To(Phase::Queued {
                prepared: Some(prepared),
            }),
            (Phase::Queued { prepared }, Event::SlotGranted(started)) => {
                Move::To(Phase::Starting { started, prepared })
            }
            (Phase::Starting { started, prepared }, Event::Launched(deadline)) => {
                Move::To(Phase::Running {
                    started,
                    deadline,
                    prepared,
                })
            }
            (Phase::Preparing { .. }, Event::Decided(to)) => {
                Move::To(stopping(to, X::NoSlot, None))
            }
            (Phase::Queued { prepared }, Event::Decided(to)) => {
                Move::To(stopping(to, X::NoSlot, prepared))
            }
            (Phase::Starting { started, prepared }, Event::Decided(to)) => {
                Move::To(stopping(to, X::Starting(started), prepared))
            }
            (
                Phase::Running {
                    started, prepared, ..
                },
                Event::Decided(to),
            ) => Move::To(stopping(to, X::Running(started), prepared)),
            (
                Phase::Stopping {
                    to,
                    execution: X::NoSlot,
                    written,
                    prepared,
                },
                Event::SlotGranted(at),
            ) => Move::To(settle(to, X::Over(at), written, prepared)),
            (
                Phase::Stopping {
                    to,
                    execution: X::Starting(at),
                    written,
                    prepared,
                },
                Event::Abandoned,
            ) => Move::To(settle(to, X::Over(at), written, prepared)),
            (
                Phase::Stopping {
                    to,
                    execution: X::Running(at),
                    written,
                    prepared,
                },
                Event::ExecutionEnded,
            ) => Move::To(settle(to, X::Over(at), written, prepared)),
            (
                Phase::Stopping {
                    to,
                    execution,
                    written: None,
                    prepared,
                },
                Event::Written(record),
            ) => Move::To(settle(to, execution, Some(record), prepared)),
            // Lost a race with the decision: a kill, timeout or failure came first.
            (phase @ (Phase::Stopping { .. } | Phase::Finished { .. }), Event::Decided(_)) => {
                Move::Stale(phase)
            }
            (phase @ Phase::Stopping { .. }, Event::Prepared(_)) => Move::Stale(phase),
            (phase, _) => Move::Invalid(phase),
        }
    }
}

fn stopping(to: Status, execution: Execution, prepared: Option<Prepared>) -> Phase {
    Phase::Stopping {
        to,
        execution,
        written: None,
        prepared,
    }
}

/// `Finished` when the record is written and nothing uses the slot, else `Stopping`.
fn settle(
    to: Status,
    execution: Execution,
    written: Option<Box<Workload>>,
    prepared: Option<Prepared>,
) -> Phase {
    match (written, execution) {
        (Some(record), Execution::NoSlot | Execution::Over(_)) => Phase::Finished {
            to,
            record,
            ran: execution != Execution::NoSlot,
        },
        (written, execution) => Phase::Stopping {
            to,
            execution,
            written,
            prepared,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::pending_fixture;

    fn record(status: Status) -> Box<Workload> {
        let mut record = pending_fixture();
        record.status = status;
        Box::new(record)
    }

    fn at() -> Instant {
        Instant::now()
    }

    /// One phase of every kind, with the sub-states of `Stopping` that can exist.
    fn phases() -> Vec<(&'static str, Phase)> {
        let stop = |execution, written: bool| Phase::Stopping {
            to: Status::Killed,
            execution,
            written: written.then(|| record(Status::Killed)),
            prepared: None,
        };
        vec![
            (
                "preparing",
                Phase::Preparing {
                    preparation: Some(Box::pin(async { Ok(Prepared::new(())) })),
                },
            ),
            ("queued", Phase::Queued { prepared: None }),
            (
                "starting",
                Phase::Starting {
                    started: at(),
                    prepared: None,
                },
            ),
            (
                "running",
                Phase::Running {
                    started: at(),
                    deadline: at() + Duration::from_secs(30),
                    prepared: None,
                },
            ),
            ("stopping/no-slot", stop(Execution::NoSlot, false)),
            ("stopping/starting", stop(Execution::Starting(at()), false)),
            ("stopping/running", stop(Execution::Running(at()), false)),
            ("stopping/over", stop(Execution::Over(at()), false)),
            (
                "stopping/starting+written",
                stop(Execution::Starting(at()), true),
            ),
            (
                "stopping/running+written",
                stop(Execution::Running(at()), true),
            ),
            (
                "finished",
                Phase::Finished {
                    to: Status::Killed,
                    record: record(Status::Killed),
                    ran: true,
                },
            ),
        ]
    }

    /// One event of every kind.
    fn events() -> Vec<Event> {
        vec![
            Event::Prepared(Prepared::new(())),
            Event::SlotGranted(at()),
            Event::Launched(at() + Duration::from_secs(30)),
            Event::Abandoned,
            Event::Decided(Status::Failed),
            Event::ExecutionEnded,
            Event::Written(record(Status::Killed)),
        ]
    }

    /// What the phase is called in [`phases`], recovered from a phase.
    fn label(phase: &Phase) -> String {
        match phase {
            Phase::Stopping {
                execution, written, ..
            } => {
                let x = match execution {
                    Execution::NoSlot => "no-slot",
                    Execution::Starting(_) => "starting",
                    Execution::Running(_) => "running",
                    Execution::Over(_) => "over",
                };
                let w = if written.is_some() { "+written" } else { "" };
                format!("stopping/{x}{w}")
            }
            other => other.name().to_string(),
        }
    }

    /// The whole table: (phase, event) → the phase reached, "stale", or absent (invalid).
    const ALLOWED: &[(&str, &str, &str)] = &[
        ("preparing", "Prepared", "queued"),
        ("preparing", "Decided", "stopping/no-slot"),
        ("queued", "SlotGranted", "starting"),
        ("queued", "Decided", "stopping/no-slot"),
        ("starting", "Launched", "running"),
        ("starting", "Decided", "stopping/starting"),
        ("running", "Decided", "stopping/running"),
        ("stopping/no-slot", "SlotGranted", "stopping/over"),
        ("stopping/no-slot", "Written", "finished"),
        ("stopping/starting", "Abandoned", "stopping/over"),
        ("stopping/starting", "Written", "stopping/starting+written"),
        ("stopping/running", "ExecutionEnded", "stopping/over"),
        ("stopping/running", "Written", "stopping/running+written"),
        ("stopping/over", "Written", "finished"),
        ("stopping/starting+written", "Abandoned", "finished"),
        ("stopping/running+written", "ExecutionEnded", "finished"),
    ];

    const STALE: &[(&str, &str)] = &[
        ("stopping/no-slot", "Decided"),
        ("stopping/starting", "Decided"),
        ("stopping/running", "Decided"),
        ("stopping/over", "Decided"),
        ("stopping/starting+written", "Decided"),
        ("stopping/running+written", "Decided"),
        ("finished", "Decided"),
        ("stopping/no-slot", "Prepared"),
        ("stopping/starting", "Prepared"),
        ("stopping/running", "Prepared"),
        ("stopping/over", "Prepared"),
        ("stopping/starting+written", "Prepared"),
        ("stopping/running+written", "Prepared"),
    ];

    #[test]
    fn every_phase_and_event_pair_moves_as_the_table_says() {
        let mut seen_allowed = 0;
        let mut seen_stale = 0;
        for (i, (name, _)) in phases().into_iter().enumerate() {
            for (j, event_name) in events().iter().map(Event::name).enumerate() {
                // Fresh values each time: `next` consumes both.
                let phase = phases().swap_remove(i).1;
                let event = events().swap_remove(j);
                let decided = phase.decided();
                let allowed = ALLOWED
                    .iter()
                    .find(|(p, e, _)| *p == name && *e == event_name);
                let stale = STALE.contains(&(name, event_name));
                match phase.next(event) {
                    Move::To(next) => {
                        let expected = allowed.map(|(_, _, to)| *to);
                        assert_eq!(
                            Some(label(&next).as_str()),
                            expected,
                            "{name} + {event_name} moved to {next:?}"
                        );
                        seen_allowed += 1;
                    }
                    Move::Stale(same) => {
                        assert!(stale, "{name} + {event_name} was stale");
                        assert_eq!(label(&same), name);
                        assert_eq!(same.decided(), decided);
                        seen_stale += 1;
                    }
                    Move::Invalid(same) => {
                        assert!(
                            allowed.is_none() && !stale,
                            "{name} + {event_name} was refused"
                        );
                        assert_eq!(label(&same), name, "a refusal leaves the phase as it was");
                        assert_eq!(same.decided(), decided);
                    }
                }
            }
        }
        assert_eq!(seen_allowed, ALLOWED.len());
        assert_eq!(seen_stale, STALE.len());
    }

    fn walk(mut phase: Phase, events: Vec<Event>) -> Phase {
        for event in events {
            let name = event.name();
            phase = match phase.next(event) {
                Move::To(next) => next,
                Move::Stale(p) | Move::Invalid(p) => panic!("{name} refused in {p:?}"),
            };
        }
        phase
    }

    #[test]
    fn a_run_is_decided_once_and_finishes_only_when_written_and_over() {
        let started = at();
        let p = walk(
            Phase::Queued { prepared: None },
            vec![
                Event::SlotGranted(started),
                Event::Launched(started + Duration::from_secs(1)),
            ],
        );
        assert_eq!(p.started(), Some(started));
        assert!(p.deadline().is_some() && p.decided().is_none());
        let p = walk(p, vec![Event::Decided(Status::Completed)]);
        assert!(p.deadline().is_none(), "no deadline once decided");
        let Move::Stale(p) = p.next(Event::Decided(Status::Killed)) else {
            panic!("a second decision must be stale");
        };
        assert_eq!(p.decided(), Some(Status::Completed));
        let p = walk(p, vec![Event::Written(record(Status::Completed))]);
        assert_eq!(p.name(), "stopping", "the execution has not answered yet");
        assert_eq!(p.final_record().map(|r| r.status), Some(Status::Completed));
        let p = walk(p, vec![Event::ExecutionEnded]);
        assert!(matches!(
            p,
            Phase::Finished {
                ran: true,
                to: Status::Completed,
                ..
            }
        ));
    }

    #[test]
    fn a_kill_before_the_slot_finishes_without_running_and_the_late_slot_still_counts() {
        let p = walk(
            Phase::Queued { prepared: None },
            vec![
                Event::Decided(Status::Killed),
                Event::Written(record(Status::Killed)),
            ],
        );
        assert!(matches!(p, Phase::Finished { ran: false, .. }));
        let p = walk(
            Phase::Queued { prepared: None },
            vec![
                Event::Decided(Status::Killed),
                Event::SlotGranted(at()),
                Event::Written(record(Status::Killed)),
            ],
        );
        assert!(matches!(p, Phase::Finished { ran: true, .. }));
    }

    #[test]
    fn the_preparation_hold_is_kept_until_the_execution_is_over() {
        let p = walk(
            Phase::Preparing { preparation: None },
            vec![
                Event::Prepared(Prepared::new(())),
                Event::SlotGranted(at()),
                Event::Launched(at()),
                Event::Decided(Status::Killed),
                Event::Written(record(Status::Killed)),
            ],
        );
        assert!(matches!(
            p,
            Phase::Stopping {
                prepared: Some(_),
                ..
            }
        ));
    }
}
