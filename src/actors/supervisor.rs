//! The Supervisor: owns the backend registry, resolves `auto`, applies admission control
//! (per-backend concurrency with a FIFO queue; a server-wide bound on pending work),
//! creates one [`WorkloadActor`] per accepted workload and restarts backend actors.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use actix::prelude::*;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::actors::backend::{BackendActor, BackendRestarted, RestartBackend};
use crate::actors::log_broker::{LogBroker, OpenTopic};
use crate::actors::store::{ChangeStatus, GetWorkload, InsertWorkload, StoreActor};
use crate::actors::workload::{Interrupt, Kill, KillError, Start, WorkloadActor};
use crate::backends::{Backend, BackendCapabilities, BackendFactory, BackendHealth, WorkloadSpec};
use crate::metrics::Metrics;
use crate::model::{Isolation, Payload, Runtime, Status, Workload, WorkloadId, WorkloadRequest};
use crate::store::queries::StatusChange;
use crate::store::StoreError;

/// Why a submission was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// No healthy backend can take it (HTTP 422).
    #[error("{0}")]
    Unplaceable(String),
    /// The server holds `max_queue` pending workloads already (HTTP 429).
    #[error("the server already holds {0} pending workloads; retry later")]
    QueueFull(usize),
    /// The server is shutting down (HTTP 503).
    #[error("the server is shutting down; retry later")]
    ShuttingDown,
    /// The store failed (HTTP 500).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An accepted submission.
pub struct Submitted {
    /// The record as accepted (status pending).
    pub workload: Workload,
    /// For synchronous submissions: resolves with the terminal record.
    pub done: Option<oneshot::Receiver<Workload>>,
}

/// One entry of `GET /v1/backends`.
#[derive(Debug, Clone, Serialize)]
pub struct BackendInfo {
    /// Registry name.
    pub name: String,
    /// What it can run.
    pub capabilities: BackendCapabilities,
    /// `healthy`, `failed` (its actor is down) or `unavailable` (cannot run here).
    pub status: &'static str,
    /// Why it is not healthy, when it is not.
    pub reason: Option<String>,
    /// Executing now.
    pub running: usize,
    /// Waiting for a slot.
    pub queued: usize,
    /// Actor restarts since start-up.
    pub restarts: u64,
}

/// One entry of `GET /v1/system/actors`.
#[derive(Debug, Clone, Serialize)]
pub struct ActorInfo {
    /// Actor name (`store`, `log_broker`, `supervisor`, `backend:<name>`).
    pub name: String,
    /// `running` or `stopped`.
    pub state: &'static str,
    /// Restarts since start-up.
    pub restarts: u64,
    /// The last failure, if any.
    pub last_error: Option<String>,
}

struct BackendEntry {
    addr: Addr<BackendActor>,
    backend: Arc<dyn Backend>,
    caps: BackendCapabilities,
    running: usize,
    queue: VecDeque<WorkloadId>,
    restarts: u64,
    last_error: Option<String>,
}

impl BackendEntry {
    fn status(&self) -> (&'static str, Option<String>) {
        if !self.addr.connected() {
            return ("failed", self.last_error.clone());
        }
        match self.backend.health() {
            BackendHealth::Healthy => ("healthy", None),
            BackendHealth::Unavailable(r) => ("unavailable", Some(r)),
        }
    }
}

/// The supervisor actor.
pub struct Supervisor {
    store: Addr<StoreActor>,
    broker: Addr<LogBroker>,
    metrics: Arc<Metrics>,
    node_id: String,
    max_queue: usize,
    backends: BTreeMap<String, BackendEntry>,
    workloads: HashMap<WorkloadId, Addr<WorkloadActor>>,
    /// Accepted (or being recorded) and not yet granted a slot.
    pending: usize,
    factories: Vec<BackendFactory>,
    /// Shutting down: no new work is accepted and no queued work is started (it stays
    /// pending in the store for the next start).
    draining: bool,
}

impl Supervisor {
    /// A supervisor that will register the backends built by `factories` when started.
    pub fn new(
        store: Addr<StoreActor>,
        broker: Addr<LogBroker>,
        metrics: Arc<Metrics>,
        node_id: String,
        max_queue: usize,
        factories: Vec<BackendFactory>,
    ) -> Self {
        Self {
            store,
            broker,
            metrics,
            node_id,
            max_queue,
            backends: BTreeMap::new(),
            workloads: HashMap::new(),
            pending: 0,
            factories,
            draining: false,
        }
    }

    /// Pick the backend for `runtime` and the requested class (the one routing rule).
    fn resolve(
        &self,
        runtime: Runtime,
        explicit: Option<Isolation>,
    ) -> Result<(String, Isolation), SubmitError> {
        let candidates = |class: Isolation| {
            self.backends.values().filter(move |e| {
                e.caps.supported_isolations.contains(&class)
                    && e.caps.supported_runtimes.contains(&runtime)
            })
        };
        let why_not = |class: Isolation| -> String {
            let mut reasons: Vec<String> = Vec::new();
            for e in self
                .backends
                .values()
                .filter(|e| e.caps.supported_isolations.contains(&class))
            {
                if !e.caps.supported_runtimes.contains(&runtime) {
                    reasons.push(format!(
                        "backend {} does not support runtime {runtime}",
                        e.caps.name
                    ));
                } else if let (status, Some(reason)) = e.status() {
                    reasons.push(format!("backend {} is {status}: {reason}", e.caps.name));
                }
            }
            if reasons.is_empty() {
                format!("{class} is not available: no backend with isolation {class} is registered")
            } else {
                format!("{class} is not available: {}", reasons.join("; "))
            }
        };
        let healthy = |class: Isolation| {
            candidates(class)
                .find(|e| e.status().0 == "healthy")
                .map(|e| (e.caps.name.clone(), class))
        };
        if !self
            .backends
            .values()
            .any(|e| e.caps.supported_runtimes.contains(&runtime))
        {
            let hint = if runtime == Runtime::Oci {
                " (OCI images are not available yet: no image store is configured)"
            } else {
                ""
            };
            return Err(SubmitError::Unplaceable(format!(
                "no registered backend supports runtime {runtime}{hint}"
            )));
        }
        match explicit {
            Some(class) => healthy(class).ok_or_else(|| {
                SubmitError::Unplaceable(format!(
                    "cannot place a {runtime} workload on {}",
                    why_not(class)
                ))
            }),
            None => {
                let chain = runtime.auto_chain();
                chain.iter().find_map(|c| healthy(*c)).ok_or_else(|| {
                    let reasons: Vec<String> = chain.iter().map(|c| why_not(*c)).collect();
                    SubmitError::Unplaceable(format!(
                        "no isolation can run {runtime} workloads here (auto prefers {}): {}",
                        chain[0],
                        reasons.join("; ")
                    ))
                })
            }
        }
    }

    fn update_gauges(&self) {
        self.metrics.queue_depth.set(self.pending as i64);
        let running: usize = self.backends.values().map(|e| e.running).sum();
        self.metrics.running.set(running as i64);
    }

    /// Create the workload's actor and queue it on its backend.
    fn admit(
        &mut self,
        record: Workload,
        payload: Payload,
        input: Vec<u8>,
        wait: bool,
        ctx: &mut Context<Self>,
    ) -> Option<oneshot::Receiver<Workload>> {
        let id = record.id;
        let spec = WorkloadSpec {
            id,
            runtime: record.runtime,
            isolation: record.isolation,
            payload,
            input,
            cpus: record.cpu_limit,
            mem_mb: record.mem_limit,
            timeout: std::time::Duration::from_secs(u64::from(record.timeout_s)),
        };
        self.broker.do_send(OpenTopic(id));
        let backend = record.backend.clone();
        let mut actor = WorkloadActor::new(
            record,
            spec,
            self.store.clone(),
            self.broker.clone(),
            ctx.address(),
            self.metrics.clone(),
        );
        let done = wait.then(|| actor.waiter());
        let addr = actor.start();
        self.workloads.insert(id, addr);
        if let Some(entry) = self.backends.get_mut(&backend) {
            entry.queue.push_back(id);
        }
        self.dispatch(&backend);
        done
    }

    /// Grant free slots of `backend` to its queue, oldest first.
    fn dispatch(&mut self, backend: &str) {
        if self.draining {
            self.update_gauges();
            return;
        }
        let Some(entry) = self.backends.get_mut(backend) else {
            return;
        };
        while entry.running < entry.caps.max_concurrency.max(1) {
            let Some(id) = entry.queue.pop_front() else {
                break;
            };
            if let Some(addr) = self.workloads.get(&id) {
                entry.running += 1;
                self.pending = self.pending.saturating_sub(1);
                addr.do_send(Start {
                    backend: entry.addr.clone(),
                });
            }
        }
        self.update_gauges();
    }

    fn info(&self, entry: &BackendEntry) -> BackendInfo {
        let (status, reason) = entry.status();
        BackendInfo {
            name: entry.caps.name.clone(),
            capabilities: entry.caps.clone(),
            status,
            reason,
            running: entry.running,
            queued: entry.queue.len(),
            restarts: entry.restarts,
        }
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let me = ctx.address().recipient();
        for factory in std::mem::take(&mut self.factories) {
            let backend = factory();
            let caps = backend.capabilities();
            if self.backends.contains_key(&caps.name) {
                log::error!("backend {} registered twice; keeping the first", caps.name);
                continue;
            }
            let name = caps.name.clone();
            let (b, f, r) = (backend.clone(), factory.clone(), me.clone());
            let n = name.clone();
            let addr = actix::Supervisor::start(move |_| BackendActor::new(n, f, b, r));
            match backend.health() {
                BackendHealth::Healthy => log::info!(
                    "backend {name}: healthy (runtimes: {}; max concurrency {})",
                    caps.supported_runtimes
                        .iter()
                        .map(|r| r.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    caps.max_concurrency
                ),
                BackendHealth::Unavailable(reason) => {
                    log::warn!("backend {name}: unavailable: {reason}")
                }
            }
            self.backends.insert(
                name,
                BackendEntry {
                    addr,
                    backend,
                    caps,
                    running: 0,
                    queue: VecDeque::new(),
                    restarts: 0,
                    last_error: None,
                },
            );
        }
    }
}

/// Accept a validated request: resolve, admit or refuse, record, queue.
#[derive(Message)]
#[rtype(result = "Result<Submitted, SubmitError>")]
pub struct Submit {
    /// The validated request.
    pub request: WorkloadRequest,
    /// Synchronous: also hand back a receiver for the terminal record.
    pub wait: bool,
}

/// Re-admit a workload found pending at start-up.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Readmit {
    /// The stored record.
    pub workload: Workload,
    /// Its payload.
    pub payload: Payload,
    /// Its input.
    pub input: Vec<u8>,
}

/// Kill a workload (DELETE).
#[derive(Message)]
#[rtype(result = "Result<Workload, KillError>")]
pub struct KillWorkload(pub WorkloadId);

/// A workload actor is done; its slot (if it had one) is free.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WorkloadEnded {
    /// Which workload.
    pub id: WorkloadId,
    /// Its backend.
    pub backend: String,
    /// Whether it had been granted a slot.
    pub ran: bool,
}

/// `GET /v1/backends`.
#[derive(Message)]
#[rtype(result = "Vec<BackendInfo>")]
pub struct ListBackends;

/// `POST /v1/backends/{name}/restart`; `None` for an unknown name.
#[derive(Message)]
#[rtype(result = "Option<BackendInfo>")]
pub struct RestartBackendByName(pub String);

/// `GET /v1/system/actors` (the supervisor's part: itself and the backends).
#[derive(Message)]
#[rtype(result = "Vec<ActorInfo>")]
pub struct ListActors;

/// Shutdown: stop accepting and starting work; running workloads are marked failed with
/// this reason (queued ones stay pending for the next start).
#[derive(Message)]
#[rtype(result = "usize")]
pub struct InterruptAll(pub String);

impl Handler<Submit> for Supervisor {
    type Result = ResponseActFuture<Self, Result<Submitted, SubmitError>>;

    fn handle(&mut self, msg: Submit, _: &mut Self::Context) -> Self::Result {
        let req = msg.request;
        if self.draining {
            return Box::pin(actix::fut::ready(Err(SubmitError::ShuttingDown)));
        }
        let (backend, isolation) = match self.resolve(req.runtime, req.isolation.explicit()) {
            Ok(found) => found,
            Err(e) => return Box::pin(actix::fut::ready(Err(e))),
        };
        if self.pending >= self.max_queue {
            self.metrics.rejected_queue_full.inc();
            return Box::pin(actix::fut::ready(Err(SubmitError::QueueFull(
                self.max_queue,
            ))));
        }
        self.pending += 1;
        self.update_gauges();
        let id = WorkloadId::new();
        let record = Workload {
            id,
            status: Status::Pending,
            isolation,
            requested_isolation: req.isolation,
            backend,
            runtime: req.runtime,
            node_id: self.node_id.clone(),
            input_hash: req.input_hash(),
            output: None,
            exit_code: None,
            error: None,
            cpu_limit: req.resources.cpus,
            mem_limit: req.resources.mem_mb,
            timeout_s: req.resources.timeout_s,
            duration_ms: None,
            created_at: id.created_at(),
            started_at: None,
            finished_at: None,
            callback_url: req.callback_url.clone(),
        };
        let insert = InsertWorkload {
            workload: record.clone(),
            payload: req.payload.clone(),
            input: req.input.clone(),
        };
        let wait = msg.wait;
        Box::pin(
            self.store
                .send(insert)
                .into_actor(self)
                .map(move |res, act, ctx| {
                    match res.map_err(|_| StoreError::Unavailable).and_then(|r| r) {
                        Ok(()) => {
                            log::info!(
                                "workload {}: accepted ({} on {}, backend {})",
                                record.id,
                                record.runtime,
                                record.isolation,
                                record.backend
                            );
                            let done = act.admit(record.clone(), req.payload, req.input, wait, ctx);
                            Ok(Submitted {
                                workload: record,
                                done,
                            })
                        }
                        Err(e) => {
                            act.pending = act.pending.saturating_sub(1);
                            act.update_gauges();
                            log::error!("workload {}: could not be recorded: {e}", record.id);
                            Err(SubmitError::Store(e))
                        }
                    }
                }),
        )
    }
}

impl Handler<Readmit> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: Readmit, ctx: &mut Self::Context) {
        let Readmit {
            workload,
            payload,
            input,
        } = msg;
        let usable = self
            .backends
            .get(&workload.backend)
            .map(|e| e.status())
            .map(|(s, r)| {
                if s == "healthy" {
                    Ok(())
                } else {
                    Err(r.unwrap_or_default())
                }
            })
            .unwrap_or_else(|| Err("it is not registered".into()));
        if let Err(reason) = usable {
            let error = format!(
                "could not resume after restart: backend {} is unavailable: {reason}",
                workload.backend
            );
            log::warn!("workload {}: {error}", workload.id);
            self.store.do_send(ChangeStatus {
                id: workload.id,
                change: StatusChange::to(Status::Failed).with_error(error),
            });
            return;
        }
        log::info!("workload {}: re-admitted after restart", workload.id);
        self.pending += 1;
        self.admit(workload, payload, input, false, ctx);
    }
}

impl Handler<KillWorkload> for Supervisor {
    type Result = ResponseFuture<Result<Workload, KillError>>;

    fn handle(&mut self, msg: KillWorkload, _: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        let actor = self.workloads.get(&msg.0).cloned();
        Box::pin(async move {
            if let Some(addr) = actor {
                if let Ok(answer) = addr.send(Kill).await {
                    let rx = answer?;
                    return rx
                        .await
                        .map_err(|_| KillError::Store(StoreError::Unavailable));
                }
            }
            // No live actor: the workload is terminal (or unknown).
            let w = store
                .send(GetWorkload(msg.0))
                .await
                .map_err(|_| StoreError::Unavailable)??;
            Err(KillError::Terminal(w.status))
        })
    }
}

impl Handler<WorkloadEnded> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: WorkloadEnded, _: &mut Self::Context) {
        self.workloads.remove(&msg.id);
        if let Some(entry) = self.backends.get_mut(&msg.backend) {
            if msg.ran {
                entry.running = entry.running.saturating_sub(1);
            } else {
                let before = entry.queue.len();
                entry.queue.retain(|q| *q != msg.id);
                if entry.queue.len() < before {
                    self.pending = self.pending.saturating_sub(1);
                }
            }
        }
        self.dispatch(&msg.backend);
    }
}

impl Handler<BackendRestarted> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: BackendRestarted, _: &mut Self::Context) {
        if let Some(entry) = self.backends.get_mut(&msg.name) {
            entry.restarts += 1;
            entry.last_error = Some(msg.reason);
            entry.caps = msg.backend.capabilities();
            entry.backend = msg.backend;
            self.metrics
                .backend_restarts
                .with_label_values(&[msg.name.as_str()])
                .inc();
        }
        self.dispatch(&msg.name);
    }
}

impl Handler<ListBackends> for Supervisor {
    type Result = MessageResult<ListBackends>;

    fn handle(&mut self, _: ListBackends, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.backends.values().map(|e| self.info(e)).collect())
    }
}

impl Handler<RestartBackendByName> for Supervisor {
    type Result = ResponseActFuture<Self, Option<BackendInfo>>;

    fn handle(&mut self, msg: RestartBackendByName, _: &mut Self::Context) -> Self::Result {
        let Some(entry) = self.backends.get(&msg.0) else {
            return Box::pin(actix::fut::ready(None));
        };
        let (ack, done) = oneshot::channel();
        entry.addr.do_send(RestartBackend {
            reason: "restart requested by operator".into(),
            ack,
        });
        let name = msg.0;
        Box::pin(
            done.into_actor(self)
                .map(move |_, act, _| act.backends.get(&name).map(|e| act.info(e))),
        )
    }
}

impl Handler<ListActors> for Supervisor {
    type Result = MessageResult<ListActors>;

    fn handle(&mut self, _: ListActors, _: &mut Self::Context) -> Self::Result {
        let mut out = vec![ActorInfo {
            name: "supervisor".into(),
            state: "running",
            restarts: 0,
            last_error: None,
        }];
        for e in self.backends.values() {
            out.push(ActorInfo {
                name: format!("backend:{}", e.caps.name),
                state: if e.addr.connected() {
                    "running"
                } else {
                    "stopped"
                },
                restarts: e.restarts,
                last_error: e.last_error.clone(),
            });
        }
        MessageResult(out)
    }
}

impl Handler<InterruptAll> for Supervisor {
    type Result = usize;

    fn handle(&mut self, msg: InterruptAll, _: &mut Self::Context) -> usize {
        self.draining = true;
        for addr in self.workloads.values() {
            addr.do_send(Interrupt(msg.0.clone()));
        }
        self.workloads.len()
    }
}
