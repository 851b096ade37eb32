//! WorkloadActor: one per accepted workload. It waits for a backend slot, drives
//! pending → running → terminal through the StoreActor, enforces the deadline, handles
//! kill, discards late results, and stops once the execution has really ended. Its
//! life is one [`Phase`]; the allowed moves are [`Phase::next`], applied only by
//! [`WorkloadActor::advance`].

mod phase;

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use futures_util::FutureExt;
use tokio::sync::oneshot;

use crate::actors::backend::{BackendActor, Execute};
use crate::actors::log_broker::{CloseTopic, LogSinks, Seal};
use crate::actors::store::{ChangeStatus, GetPayload, GetWorkload, StoreActor, PROBE_EVERY};
use crate::actors::supervisor::{SlotFreed, Supervisor, WorkloadEnded, WorkloadReady};
use crate::backends::{
    output_exceeds, BackendError, CancellationToken, ExecContext, LogSink, Preparation,
    WorkloadResult, WorkloadSpec,
};
use crate::metrics::Metrics;
use crate::model::{output_value, Status, Workload};
use crate::store::StatusChange;
use crate::store::StoreError;

use self::phase::{Event, Move, Phase};

/// Why a kill was refused.
#[derive(Debug, thiserror::Error)]
pub enum KillError {
    /// The workload is already terminal (or about to be).
    #[error("workload is already {0}")]
    Terminal(Status),
    /// The workload's submission is still being recorded; a kill a moment later works.
    #[error("workload is still being accepted; retry the kill")]
    NotYetAccepted,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The workload runs on another node of the cluster, which did not record the kill
    /// within the kill timeout (it may be gone).
    #[error(
        "the node running this workload ({node}) did not record the kill within {secs} s; \
         the kill is not confirmed: read the workload or retry"
    )]
    NodeDidNotAnswer {
        /// The node the record names.
        node: String,
        /// How long this node waited.
        secs: u64,
    },
}

/// The workload actor.
pub struct WorkloadActor {
    record: Workload,
    spec: WorkloadSpec,
    store: Addr<StoreActor>,
    logs: LogSinks,
    supervisor: Addr<Supervisor>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    /// Where the workload is in its life; changed only by [`WorkloadActor::advance`].
    phase: Phase,
    waiters: Vec<oneshot::Sender<Workload>>,
    /// The spec's payload and input are still in the store (a workload recovered at
    /// start-up): read when the slot is granted.
    payload_deferred: bool,
    /// Launch only once the running write is committed (a cluster node: the write is
    /// fenced by this node's generation, so a node declared lost meanwhile runs
    /// nothing a survivor may have handed to another node).
    running_before_launch: bool,
    /// Set by the execution's log sink before its first line goes to the broker: only
    /// then must the broker flush (seal) this workload's lines before the terminal
    /// write; a workload that printed nothing skips that round trip.
    printed: Arc<AtomicBool>,
}

impl WorkloadActor {
    /// A pending workload, waiting for [`Start`].
    pub fn new(
        record: Workload,
        spec: WorkloadSpec,
        store: Addr<StoreActor>,
        logs: LogSinks,
        supervisor: Addr<Supervisor>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            record,
            spec,
            store,
            logs,
            supervisor,
            metrics,
            cancel: CancellationToken::new(),
            phase: Phase::Queued { prepared: None },
            waiters: Vec::new(),
            payload_deferred: false,
            running_before_launch: false,
            printed: Arc::default(),
        }
    }

    /// The spec's payload and input are placeholders: read them from the store when
    /// the workload is granted a slot, so waiting work holds no payload in memory.
    pub fn defer_payload(&mut self) {
        self.payload_deferred = true;
    }

    /// Launch the execution only after the running write is committed, instead of
    /// together with it (cluster nodes: see the field).
    pub fn launch_after_running_write(&mut self) {
        self.running_before_launch = true;
    }

    /// The token that stops this workload (kill, timeout); preparations honour it too.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Await `preparation` when the actor starts, then tell the supervisor the workload
    /// is ready to queue ([`WorkloadReady`]). Without one, the supervisor queues it at
    /// admission.
    pub fn set_preparation(&mut self, preparation: Preparation) {
        let phase = std::mem::replace(
            &mut self.phase,
            Phase::Preparing {
                preparation: Some(preparation),
            },
        );
        if !matches!(phase, Phase::Queued { .. }) {
            log::error!(
                "bug: workload {}: a preparation was set in phase {phase:?}",
                self.record.id
            );
        }
    }

    /// Offer `event` to the phase ([`Phase::next`]): `true` when it moved. A stale event
    /// (one that lost a race with the decision) is ignored; an invalid one is a bug,
    /// logged, and the phase stays as it was.
    fn advance(&mut self, event: Event) -> bool {
        let name = event.name();
        let held = self.phase.holds_slot();
        // A placeholder for the instant `next` owns the phase; it is always replaced.
        let phase = std::mem::replace(&mut self.phase, Phase::Queued { prepared: None });
        let (phase, moved) = match phase.next(event) {
            Move::To(next) => (next, true),
            Move::Stale(same) => {
                log::debug!("workload {}: stale {name} in {same:?}", self.record.id);
                (same, false)
            }
            Move::Invalid(same) => {
                log::error!(
                    "bug: workload {}: {name} cannot happen in {same:?}; ignored",
                    self.record.id
                );
                (same, false)
            }
        };
        self.phase = phase;
        if held && !self.phase.holds_slot() {
            // Nothing uses the slot any more: the next workload may have it while this
            // one's terminal write is still being committed.
            self.supervisor.do_send(SlotFreed {
                id: self.record.id,
                backend: self.record.backend.clone(),
            });
        }
        moved
    }

    /// A receiver for the terminal record (registered before the actor starts).
    pub fn waiter(&mut self) -> oneshot::Receiver<Workload> {
        let (tx, rx) = oneshot::channel();
        self.waiters.push(tx);
        rx
    }

    /// Send the terminal record on `tx` too (registered before the actor starts).
    pub fn add_waiter(&mut self, tx: oneshot::Sender<Workload>) {
        self.waiters.push(tx);
    }

    /// The error of a workload that ran out of time.
    fn timeout_message(&self) -> String {
        format!("timed out after {}s", self.spec.timeout.as_secs())
    }

    fn elapsed_ms(&self) -> Option<u64> {
        self.phase.started().map(|s| s.elapsed().as_millis() as u64)
    }

    /// Decide the terminal status (once) and write it.
    fn finish(&mut self, mut change: StatusChange, ctx: &mut Context<Self>) {
        if !self.advance(Event::Decided(change.to)) {
            return;
        }
        self.cancel.cancel();
        if change.duration_ms.is_none() {
            change.duration_ms = self.elapsed_ms();
        }
        self.record_terminal(change, ctx);
    }

    /// Write the decided terminal status, then answer waiters and close the log. While
    /// the storage cannot be written (full disk) the write is retried, so the outcome
    /// is not lost; waiters wait meanwhile.
    fn record_terminal(&mut self, change: StatusChange, ctx: &mut Context<Self>) {
        let id = self.record.id;
        let to = change.to;
        let from = self.record.status;
        let error = change.error.clone();
        let retry = change.clone();
        // The lines printed so far go to the store first: a terminal record implies a
        // complete log, and history reads need not go through the writer.
        let broker = self.logs.broker().clone();
        let store = self.store.clone();
        // A line pushed after this check comes after the decision: the seal would not
        // have covered it either.
        let printed = self.printed.load(Ordering::Acquire);
        async move {
            if printed {
                let _ = broker.send(Seal(id)).await;
            }
            store.send(ChangeStatus { id, change }).await
        }
        .into_actor(self)
        .map(move |res, act, ctx| {
            if let Ok(Err(e)) = &res {
                if e.is_storage_fault() {
                    log::warn!("workload {id}: cannot record {to} yet ({e}); retrying");
                    ctx.run_later(PROBE_EVERY, move |act, ctx| act.record_terminal(retry, ctx));
                    return;
                }
            }
            // Still pending where it ran: its running write was lost to a storage fault
            // while the execution went on (they start together). Record running as it
            // happened, then the outcome, instead of leaving it pending for ever.
            if let Ok(Err(StoreError::InvalidTransition(t))) = &res {
                if t.from == Status::Pending && act.phase.started().is_some() {
                    log::warn!(
                        "workload {id}: its running write was lost; recording it before {to}"
                    );
                    let ran_for = act.phase.started().map(|s| s.elapsed()).unwrap_or_default();
                    let running = StatusChange {
                        at: chrono::Utc::now()
                            - chrono::Duration::from_std(ran_for).unwrap_or_default(),
                        ..StatusChange::to(Status::Running)
                    };
                    let store = act.store.clone();
                    async move {
                        store
                            .send(ChangeStatus {
                                id,
                                change: running,
                            })
                            .await
                    }
                    .into_actor(act)
                    .map(move |_, act, ctx| act.record_terminal(retry, ctx))
                    .spawn(ctx);
                    return;
                }
            }
            // Decided elsewhere first (another node killed it in the shared table while
            // it was queued here): the stored record is the outcome.
            if let Ok(Err(StoreError::InvalidTransition(t))) = &res {
                if t.from.is_terminal() {
                    let store = act.store.clone();
                    async move { store.send(GetWorkload(id)).await }
                        .into_actor(act)
                        .map(move |read, act, ctx| {
                            let record = match read {
                                Ok(Ok(w)) => w,
                                _ => act.record.clone(),
                            };
                            let status = record.status;
                            act.conclude(record, status, ctx);
                        })
                        .spawn(ctx);
                    return;
                }
            }
            let record = match res {
                Ok(Ok(record)) => {
                    log::debug!(
                        "workload {id}: {from} -> {to} (backend {}{})",
                        act.record.backend,
                        error
                            .as_deref()
                            .map(|e| format!(", error: {e}"))
                            .unwrap_or_default()
                    );
                    record
                }
                Ok(Err(e)) => {
                    log::error!("workload {id}: could not record {to}: {e}");
                    act.record.clone()
                }
                Err(e) => {
                    log::error!("workload {id}: store unreachable recording {to}: {e}");
                    act.record.clone()
                }
            };
            act.conclude(record, to, ctx);
        })
        .spawn(ctx);
    }

    /// The terminal record `record` (status `to`) is written: count it, end the log,
    /// answer the waiters, and stop once nothing runs.
    fn conclude(&mut self, record: Workload, to: Status, ctx: &mut Context<Self>) {
        let id = self.record.id;
        self.metrics
            .workloads_finished
            .with_label_values(&[self.record.backend.as_str(), to.as_str()])
            .inc();
        if let Some(ms) = record.duration_ms {
            self.metrics
                .workload_duration
                .with_label_values(&[self.record.backend.as_str()])
                .observe(ms as f64 / 1000.0);
        }
        self.logs.broker().do_send(CloseTopic { id, status: to });
        for w in self.waiters.drain(..) {
            let _ = w.send(record.clone());
        }
        self.advance(Event::Written(Box::new(record)));
        self.maybe_stop(ctx);
    }

    /// Stop once the terminal status is written and no execution is left running.
    fn maybe_stop(&mut self, ctx: &mut Context<Self>) {
        if let Phase::Finished { ran, .. } = self.phase {
            self.supervisor.do_send(WorkloadEnded {
                id: self.record.id,
                backend: self.record.backend.clone(),
                ran,
            });
            ctx.stop();
        }
    }

    fn on_result(&mut self, result: Result<WorkloadResult, BackendError>, ctx: &mut Context<Self>) {
        if self.phase.decided().is_some() {
            if result.is_ok() {
                log::debug!("workload {}: late result discarded", self.record.id);
            }
            self.advance(Event::ExecutionEnded);
            self.maybe_stop(ctx);
            return;
        }
        let change = match result {
            // The one check every backend's result passes before it reaches the store.
            Ok(res) if res.output.len() > self.spec.max_output_bytes => {
                let mut change = StatusChange::to(Status::Failed)
                    .with_error(output_exceeds(self.spec.max_output_bytes));
                change.exit_code = res.exit_code;
                change.duration_ms = Some(res.duration_ms);
                change
            }
            Ok(res) => {
                let mut change = StatusChange::to(if res.error.is_some() {
                    Status::Failed
                } else {
                    Status::Completed
                });
                change.output = output_value(&res.output);
                change.exit_code = res.exit_code;
                change.error = res.error;
                change.duration_ms = Some(if res.duration_ms > 0 {
                    res.duration_ms
                } else {
                    self.elapsed_ms().unwrap_or(0)
                });
                change
            }
            // Backends may stop on their own at the deadline, and their answer can
            // arrive before our own `Timeout`: that is the timeout all the same.
            Err(BackendError::Cancelled)
                if self.phase.deadline().is_some_and(|d| Instant::now() >= d) =>
            {
                StatusChange::to(Status::Failed).with_error(self.timeout_message())
            }
            Err(BackendError::Cancelled) => {
                StatusChange::to(Status::Failed).with_error("execution cancelled by the backend")
            }
            Err(e) => StatusChange::to(Status::Failed).with_error(e.to_string()),
        };
        self.finish(change, ctx);
        self.advance(Event::ExecutionEnded);
    }
}

impl Actor for WorkloadActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let Phase::Preparing { preparation } = &mut self.phase else {
            return;
        };
        let Some(preparation) = preparation.take() else {
            return;
        };
        // A panic in the backend's preparation fails this workload, not the engine.
        AssertUnwindSafe(preparation)
            .catch_unwind()
            .into_actor(self)
            .map(|outcome, act, ctx| {
                let outcome = outcome.unwrap_or_else(|panic| {
                    Err(BackendError::Internal(format!(
                        "backend panicked while preparing: {}",
                        crate::actors::backend::panic_message(panic.as_ref())
                    )))
                });
                match outcome {
                    // Stale when killed meanwhile: nothing will run and the hold goes.
                    Ok(prepared) => {
                        if act.advance(Event::Prepared(prepared)) {
                            act.supervisor.do_send(WorkloadReady {
                                id: act.record.id,
                                backend: act.record.backend.clone(),
                            });
                        }
                    }
                    // Killed meanwhile: the kill already decided the outcome.
                    Err(BackendError::Cancelled) if act.phase.decided().is_some() => {}
                    Err(e) => act.finish(
                        StatusChange::to(Status::Failed).with_error(e.to_string()),
                        ctx,
                    ),
                }
            })
            .spawn(ctx);
    }
}

/// A backend slot is granted: run now on `backend`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Start {
    /// The backend actor to execute on.
    pub backend: Addr<BackendActor>,
}

/// Kill the workload (DELETE). Answers the terminal record once written.
#[derive(Message)]
#[rtype(result = "Result<oneshot::Receiver<Workload>, KillError>")]
pub struct Kill;

/// Ask for the terminal record (sync submission).
#[derive(Message)]
#[rtype(result = "oneshot::Receiver<Workload>")]
pub struct AwaitTerminal;

/// Stop everything now (server shutdown): running work is marked failed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Interrupt(pub String);

struct Timeout;

impl Handler<Start> for WorkloadActor {
    type Result = ();

    fn handle(&mut self, msg: Start, ctx: &mut Self::Context) {
        if !self.advance(Event::SlotGranted(Instant::now())) {
            return;
        }
        if self.phase.decided().is_some() {
            // Killed while the slot was on its way: nothing runs.
            self.maybe_stop(ctx);
            return;
        }
        if self.payload_deferred {
            let id = self.record.id;
            self.store
                .send(GetPayload(id))
                .into_actor(self)
                .map(move |res, act, ctx| {
                    match res.map_err(|_| StoreError::Unavailable).and_then(|r| r) {
                        Ok((payload, input)) if act.phase.decided().is_none() => {
                            act.payload_deferred = false;
                            act.spec.payload = payload;
                            act.spec.input = input;
                            act.run(msg.backend, ctx);
                        }
                        // Killed (or timed out) while it was read: nothing runs.
                        Ok(_) => {
                            act.advance(Event::Abandoned);
                            act.maybe_stop(ctx);
                        }
                        Err(e) => {
                            log::error!("workload {id}: could not read its payload: {e}");
                            act.finish(
                                StatusChange::to(Status::Failed)
                                    .with_error("could not start: store error"),
                                ctx,
                            );
                            act.advance(Event::Abandoned);
                            act.maybe_stop(ctx);
                        }
                    }
                })
                .spawn(ctx);
            return;
        }
        self.run(msg.backend, ctx);
    }
}

impl WorkloadActor {
    /// Record running, then launch (a cluster node), or both together (a single node).
    fn run(&mut self, backend: Addr<BackendActor>, ctx: &mut Context<Self>) {
        if !self.running_before_launch {
            return self.launch(backend, ctx);
        }
        let id = self.record.id;
        self.store
            .send(ChangeStatus {
                id,
                change: StatusChange::to(Status::Running),
            })
            .into_actor(self)
            .map(move |res, act, ctx| {
                match res.map_err(|_| StoreError::Unavailable).and_then(|r| r) {
                    Ok(record) if act.phase.decided().is_none() => {
                        log::debug!("workload {id}: pending -> running (committed before launch)");
                        act.record = record;
                        act.launch(backend, ctx);
                    }
                    // Killed while the write was on its way: nothing runs.
                    Ok(record) => {
                        act.record = record;
                        act.advance(Event::Abandoned);
                        act.maybe_stop(ctx);
                    }
                    // Refused (fenced: the node was declared lost) or not written:
                    // nothing runs.
                    Err(e) => {
                        act.could_not_start(e.to_string(), ctx);
                        act.advance(Event::Abandoned);
                        act.maybe_stop(ctx);
                    }
                }
            })
            .spawn(ctx);
    }

    /// Hand the execution to `backend`; the running write goes with it unless it was
    /// committed before ([`WorkloadActor::launch_after_running_write`]).
    fn launch(&mut self, backend: Addr<BackendActor>, ctx: &mut Context<Self>) {
        let id = self.record.id;
        let timeout = self.spec.timeout;
        let deadline = Instant::now() + timeout;
        if !self.advance(Event::Launched(deadline)) {
            return;
        }
        // The running write and the execution start together: the store applies writes
        // in the order they were sent, so the terminal write always lands after this
        // one, and the execution does not wait a store round trip to begin.
        if self.record.status == Status::Pending {
            self.store
                .send(ChangeStatus {
                    id,
                    change: StatusChange::to(Status::Running),
                })
                .into_actor(self)
                .map(move |res, act, ctx| match res {
                    Ok(Ok(record)) => {
                        log::debug!(
                            "workload {id}: pending -> running (backend {})",
                            record.backend
                        );
                        if act.phase.final_record().is_none() {
                            act.record = record;
                        }
                    }
                    Ok(Err(e)) => act.could_not_start(e.to_string(), ctx),
                    Err(e) => act.could_not_start(e.to_string(), ctx),
                })
                .spawn(ctx);
        }

        let sink = {
            let inner = self.logs.sink(id);
            let printed = Arc::clone(&self.printed);
            LogSink::new(move |line| {
                printed.store(true, Ordering::Release);
                inner.line(line);
            })
        };
        let exec = ExecContext {
            log: sink,
            cancel: self.cancel.clone(),
            deadline,
        };
        let (tx, rx) = oneshot::channel();
        backend.do_send(Execute {
            spec: self.spec.clone(),
            ctx: exec,
            reply: tx,
        });
        ctx.notify_later(Timeout, timeout);
        rx.into_actor(self)
            .map(|res, act, ctx| {
                let res = res.unwrap_or_else(|_| {
                    Err(BackendError::Internal("the execution was lost".into()))
                });
                act.on_result(res, ctx);
            })
            .spawn(ctx);
    }
}

impl WorkloadActor {
    /// The running write failed: stop the execution and record the failure.
    fn could_not_start(&mut self, why: String, ctx: &mut Context<Self>) {
        log::error!(
            "workload {}: could not record running: {why}",
            self.record.id
        );
        self.finish(
            StatusChange::to(Status::Failed).with_error("could not start: store error"),
            ctx,
        );
    }
}

impl Message for Timeout {
    type Result = ();
}

impl Handler<Timeout> for WorkloadActor {
    type Result = ();

    fn handle(&mut self, _: Timeout, ctx: &mut Self::Context) {
        let message = self.timeout_message();
        self.finish(StatusChange::to(Status::Failed).with_error(message), ctx);
    }
}

impl Handler<Kill> for WorkloadActor {
    type Result = Result<oneshot::Receiver<Workload>, KillError>;

    fn handle(&mut self, _: Kill, ctx: &mut Self::Context) -> Self::Result {
        if let Some(status) = self.phase.decided() {
            return Err(KillError::Terminal(status));
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.push(tx);
        self.finish(
            StatusChange::to(Status::Killed).with_error("killed by request"),
            ctx,
        );
        Ok(rx)
    }
}

impl Handler<AwaitTerminal> for WorkloadActor {
    type Result = MessageResult<AwaitTerminal>;

    fn handle(&mut self, _: AwaitTerminal, _: &mut Self::Context) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        match self.phase.final_record() {
            Some(record) => {
                let _ = tx.send(record.clone());
            }
            None => self.waiters.push(tx),
        }
        MessageResult(rx)
    }
}

impl Handler<Interrupt> for WorkloadActor {
    type Result = ();

    fn handle(&mut self, msg: Interrupt, ctx: &mut Self::Context) {
        if self.phase.ran() {
            self.finish(StatusChange::to(Status::Failed).with_error(msg.0), ctx);
        }
    }
}
