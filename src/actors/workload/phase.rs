//! The phases of a [`super::WorkloadActor`]'s life, and [`Phase::next`]: the one place
//! that says which move is allowed.
//!
//! ```text
//! Preparing ──Prepared──▶ Queued ──SlotGranted──▶ Running
//!     │                     │                        │
//!     └──────Decided────────┴────────Decided─────────┘
//!                           ▼
//!   Stopping { to, execution: Never | Running | Over, written }
//!     ├─ SlotGranted (Never → Over: the slot came after a kill; nothing runs)
//!     ├─ ExecutionEnded (Running → Over)
//!     └─ Written (the terminal record is stored)
//!                           ▼ written and no execution left
//!                       Finished
//! ```
//!
//! The terminal status is decided exactly once (`Decided` is refused from `Stopping`
//! and `Finished`), and the actor only reaches `Finished`, where it stops, once that
//! status is written and the execution, if one started, has really ended.

use std::fmt;
use std::time::Instant;

use crate::backends::{Preparation, Prepared};
use crate::model::{Status, Workload};

/// The execution of a workload whose outcome is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Execution {
    /// No slot was granted: nothing ran and nothing will.
    Never,
    /// Started at this instant; the backend has not answered yet.
    Running(Instant),
    /// Started at this instant (or only granted a slot, after a kill) and over.
    Over(Instant),
}

impl Execution {
    /// When the slot was granted, if it was.
    pub fn started(self) -> Option<Instant> {
        match self {
            Execution::Never => None,
            Execution::Running(at) | Execution::Over(at) => Some(at),
        }
    }
}

/// Where a workload actor is. Each phase holds what only it has.
pub enum Phase {
    /// The backend's preparation runs (the future is here until the actor takes it);
    /// the workload is `pending` and not queued for a slot yet.
    Preparing {
        /// The preparation, until the actor starts awaiting it.
        preparation: Option<Preparation>,
    },
    /// Waiting (`pending`) for a backend slot.
    Queued {
        /// What the preparation made ready, held until the execution is over.
        prepared: Option<Prepared>,
    },
    /// Executing on a backend.
    Running {
        /// When the slot was granted (the duration counts from here).
        started: Instant,
        /// When the execution times out.
        deadline: Instant,
        /// What the preparation made ready.
        prepared: Option<Prepared>,
    },
    /// The terminal status is decided (and the execution cancelled); waiting for its
    /// write and for the execution to end.
    Stopping {
        /// The decided terminal status.
        to: Status,
        /// Whether an execution started and whether it has ended.
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
    /// A backend slot was granted at `at`; the execution would time out at `deadline`.
    SlotGranted {
        /// Now.
        at: Instant,
        /// `at` + the workload's timeout.
        deadline: Instant,
    },
    /// The terminal status is decided (kill, timeout, result, failure).
    Decided(Status),
    /// The backend answered: the execution is over.
    ExecutionEnded,
    /// The store answered the terminal write.
    Written(Box<Workload>),
}

/// A move the phase does not allow. The phase is handed back unchanged.
pub struct Refused {
    /// The phase, as it was.
    pub phase: Phase,
    /// The refused event's name.
    pub event: &'static str,
}

impl fmt::Debug for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} refused in {}", self.event, self.phase.name())
    }
}

impl fmt::Debug for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(to) = self.decided() {
            write!(f, " ({to})")?;
        }
        Ok(())
    }
}

impl Event {
    fn name(&self) -> &'static str {
        match self {
            Event::Prepared(_) => "Prepared",
            Event::SlotGranted { .. } => "SlotGranted",
            Event::Decided(_) => "Decided",
            Event::ExecutionEnded => "ExecutionEnded",
            Event::Written(_) => "Written",
        }
    }
}

impl Phase {
    /// The phase's name (for logs).
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Preparing { .. } => "preparing",
            Phase::Queued { .. } => "queued",
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

    /// When the backend slot was granted, if it was.
    pub fn started(&self) -> Option<Instant> {
        match self {
            Phase::Running { started, .. } => Some(*started),
            Phase::Stopping { execution, .. } => execution.started(),
            Phase::Finished { .. } | Phase::Preparing { .. } | Phase::Queued { .. } => None,
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

    /// The phase after `event`, or [`Refused`] with this phase unchanged. Every allowed
    /// move is listed here; anything else is refused.
    pub fn next(self, event: Event) -> Result<Phase, Refused> {
        match (self, event) {
            (Phase::Preparing { .. }, Event::Prepared(prepared)) => Ok(Phase::Queued {
                prepared: Some(prepared),
            }),
            (Phase::Queued { prepared }, Event::SlotGranted { at, deadline }) => {
                Ok(Phase::Running {
                    started: at,
                    deadline,
                    prepared,
                })
            }
            (Phase::Preparing { .. }, Event::Decided(to)) => Ok(Phase::Stopping {
                to,
                execution: Execution::Never,
                written: None,
                prepared: None,
            }),
            (Phase::Queued { prepared }, Event::Decided(to)) => Ok(Phase::Stopping {
                to,
                execution: Execution::Never,
                written: None,
                prepared,
            }),
            (
                Phase::Running {
                    started, prepared, ..
                },
                Event::Decided(to),
            ) => Ok(Phase::Stopping {
                to,
                execution: Execution::Running(started),
                written: None,
                prepared,
            }),
            // Killed while the slot was on its way: the slot is used, nothing runs.
            (
                Phase::Stopping {
                    to,
                    execution: Execution::Never,
                    written,
                    prepared,
                },
                Event::SlotGranted { at, .. },
            ) => Ok(settle(to, Execution::Over(at), written, prepared)),
            (
                Phase::Stopping {
                    to,
                    execution: Execution::Running(at),
                    written,
                    prepared,
                },
                Event::ExecutionEnded,
            ) => Ok(settle(to, Execution::Over(at), written, prepared)),
            (
                Phase::Stopping {
                    to,
                    execution,
                    written: None,
                    prepared,
                },
                Event::Written(record),
            ) => Ok(settle(to, execution, Some(record), prepared)),
            (phase, event) => Err(Refused {
                event: event.name(),
                phase,
            }),
        }
    }
}

/// `Finished` when the record is written and no execution runs, else still `Stopping`.
fn settle(
    to: Status,
    execution: Execution,
    written: Option<Box<Workload>>,
    prepared: Option<Prepared>,
) -> Phase {
    match (written, execution) {
        (Some(record), Execution::Never | Execution::Over(_)) => Phase::Finished {
            to,
            record,
            ran: execution != Execution::Never,
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
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn record(status: &str) -> Box<Workload> {
        serde_json::from_value(serde_json::json!({
            "id": crate::model::WorkloadId::new().to_string(),
            "status": status,
            "isolation": "isolate",
            "requested_isolation": "isolate",
            "backend": "isolate",
            "runtime": "node",
            "node_id": "n",
            "input_hash": "sha256:x",
            "output": null,
            "exit_code": null,
            "error": null,
            "cpu_limit": 1,
            "mem_limit": 128,
            "timeout_s": 30,
            "duration_ms": null,
            "created_at": "2026-11-27T09:05:48.123Z",
            "started_at": null,
            "finished_at": null
        }))
        .unwrap()
    }

    fn granted() -> Event {
        let at = Instant::now();
        Event::SlotGranted {
            at,
            deadline: at + std::time::Duration::from_secs(30),
        }
    }

    fn preparing() -> Phase {
        Phase::Preparing {
            preparation: Some(Box::pin(async { Ok(Prepared::new(())) })),
        }
    }

    fn queued() -> Phase {
        Phase::Queued { prepared: None }
    }

    fn running() -> Phase {
        queued().next(granted()).unwrap()
    }

    /// Apply `events` in order; each must be allowed.
    fn walk(mut phase: Phase, events: Vec<Event>) -> Phase {
        for event in events {
            phase = phase.next(event).unwrap();
        }
        phase
    }

    #[test]
    fn a_run_goes_queued_running_stopping_finished() {
        let p = walk(
            queued(),
            vec![
                granted(),
                Event::Decided(Status::Completed),
                Event::ExecutionEnded,
            ],
        );
        assert_eq!(p.name(), "stopping");
        assert_eq!(p.decided(), Some(Status::Completed));
        assert!(p.final_record().is_none());
        let p = p.next(Event::Written(record("completed"))).unwrap();
        assert!(matches!(
            p,
            Phase::Finished {
                ran: true,
                to: Status::Completed,
                ..
            }
        ));
        assert_eq!(p.final_record().unwrap().status, Status::Completed);
    }

    #[test]
    fn a_prepared_workload_queues_then_runs() {
        let p = preparing()
            .next(Event::Prepared(Prepared::new(())))
            .unwrap();
        assert!(matches!(p, Phase::Queued { prepared: Some(_) }));
        let p = p.next(granted()).unwrap();
        assert!(matches!(
            p,
            Phase::Running {
                prepared: Some(_),
                ..
            }
        ));
        assert!(p.deadline().is_some() && p.started().is_some());
    }

    #[test]
    fn the_write_may_land_before_the_execution_ends() {
        let p = walk(
            running(),
            vec![
                Event::Decided(Status::Killed),
                Event::Written(record("killed")),
            ],
        );
        // The killed execution has not answered yet: not finished.
        assert_eq!(p.name(), "stopping");
        assert_eq!(p.final_record().unwrap().status, Status::Killed);
        let p = p.next(Event::ExecutionEnded).unwrap();
        assert!(matches!(p, Phase::Finished { ran: true, .. }));
    }

    #[test]
    fn killed_before_a_slot_finishes_without_running() {
        for start in [preparing(), queued()] {
            let p = walk(
                start,
                vec![
                    Event::Decided(Status::Killed),
                    Event::Written(record("killed")),
                ],
            );
            assert!(matches!(p, Phase::Finished { ran: false, .. }));
        }
    }

    #[test]
    fn a_slot_granted_after_a_kill_counts_as_used_and_runs_nothing() {
        let p = walk(queued(), vec![Event::Decided(Status::Killed), granted()]);
        assert!(matches!(
            p,
            Phase::Stopping {
                execution: Execution::Over(_),
                ..
            }
        ));
        assert!(p.ran());
        let p = p.next(Event::Written(record("killed"))).unwrap();
        assert!(matches!(p, Phase::Finished { ran: true, .. }));
    }

    #[test]
    fn the_outcome_is_decided_once() {
        let p = running().next(Event::Decided(Status::Killed)).unwrap();
        let refused = p.next(Event::Decided(Status::Completed)).unwrap_err();
        assert_eq!(refused.event, "Decided");
        assert_eq!(refused.phase.decided(), Some(Status::Killed));
        let done = walk(
            refused.phase,
            vec![Event::ExecutionEnded, Event::Written(record("killed"))],
        );
        let refused = done.next(Event::Decided(Status::Failed)).unwrap_err();
        assert_eq!(refused.phase.decided(), Some(Status::Killed));
    }

    #[test]
    fn moves_out_of_order_are_refused_and_leave_the_phase_as_it_was() {
        let cases: Vec<(Phase, Event)> = vec![
            (preparing(), granted()),
            (preparing(), Event::ExecutionEnded),
            (preparing(), Event::Written(record("failed"))),
            (queued(), Event::Prepared(Prepared::new(()))),
            (queued(), Event::ExecutionEnded),
            (queued(), Event::Written(record("failed"))),
            (running(), granted()),
            (running(), Event::Prepared(Prepared::new(()))),
            // The outcome is decided before the execution's end is taken.
            (running(), Event::ExecutionEnded),
            (running(), Event::Written(record("completed"))),
            // A killed workload's preparation that still succeeds does not queue it.
            (
                queued().next(Event::Decided(Status::Killed)).unwrap(),
                Event::Prepared(Prepared::new(())),
            ),
            // A second slot.
            (
                running().next(Event::Decided(Status::Killed)).unwrap(),
                granted(),
            ),
            // A second terminal write.
            (
                walk(
                    running(),
                    vec![
                        Event::Decided(Status::Killed),
                        Event::Written(record("killed")),
                    ],
                ),
                Event::Written(record("killed")),
            ),
            // Nothing moves a finished workload.
            (
                walk(
                    queued(),
                    vec![
                        Event::Decided(Status::Killed),
                        Event::Written(record("killed")),
                    ],
                ),
                granted(),
            ),
        ];
        for (phase, event) in cases {
            let before = phase.name();
            let decided = phase.decided();
            let refused = phase.next(event).unwrap_err();
            assert_eq!(refused.phase.name(), before, "{refused:?}");
            assert_eq!(refused.phase.decided(), decided, "{refused:?}");
        }
    }
}
