//! The Supervisor: owns the backend registry, resolves `auto`, applies admission control
//! (per-backend concurrency with a bounded FIFO queue per backend; a server-wide bound
//! on pending work), creates one [`WorkloadActor`] per accepted workload and restarts
//! backend actors.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::actors::backend::{BackendActor, BackendRestarted, RestartBackend};
use crate::actors::log_broker::{CloseTopic, LogSinks, OpenTopic};
use crate::actors::log_follower::Follower;
use crate::actors::store::{
    ChangeStatus, GetWorkload, InsertWorkload, KeyToRemember, KillRequests, RequestKill, StoreActor,
};
use crate::actors::workload::{AwaitTerminal, Interrupt, Kill, KillError, Start, WorkloadActor};
use crate::backends::{Backend, BackendCapabilities, BackendFactory, BackendHealth, WorkloadSpec};
use crate::metrics::Metrics;
use crate::model::{
    IdempotencyKey, IdempotencyRecord, Isolation, Payload, Runtime, Status, SubmitKind, Workload,
    WorkloadId, WorkloadRequest,
};
use crate::store::notify::{self, Notice};
use crate::store::StoreError;
use crate::store::{KeyedInsert, PendingWork, StatusChange};

mod shared;
pub use shared::{ClaimNow, Fenced};

/// Why a submission was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// No healthy backend can take it (HTTP 422).
    #[error("{0}")]
    Unplaceable(String),
    /// The server, or the chosen backend, holds as many pending workloads as it may
    /// (HTTP 429); the text says which bound was hit.
    #[error("{0}; retry later")]
    QueueFull(String),
    /// The `Idempotency-Key` was first used with a different request (HTTP 422).
    #[error(
        "this Idempotency-Key was already used with a different request (body or endpoint); \
         use a new key for a new request"
    )]
    IdempotencyMismatch,
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

/// The answer to [`Submit`].
pub enum SubmitOutcome {
    /// A new workload was recorded and admitted.
    Accepted(Box<Submitted>),
    /// The submission's `Idempotency-Key` is remembered already (another request with
    /// it was recorded first): nothing was recorded, the caller replays this.
    Existing(IdempotencyRecord),
}

/// One entry of `GET /v1/backends`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
    /// Worker processes replaced since start-up (crashed, or killed after a missed
    /// cancel), across restarts of the backend actor.
    pub worker_restarts: u64,
    /// Protections that could not be applied on this host (empty when all hold).
    pub limitations: Vec<String>,
    /// Technology-specific facts ([`Backend::details`]); `{}` when there are none.
    #[schema(value_type = Object)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// One entry of `GET /v1/system/actors`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ActorInfo {
    /// Actor name (`store`, `log_broker`, `supervisor`, `backend:<name>`, and
    /// `worker:<backend>/<slot>` for a backend's worker processes).
    pub name: String,
    /// `running` or `stopped` (workers: `idle`, `busy`, `starting`, `failed`).
    pub state: &'static str,
    /// Restarts since start-up.
    pub restarts: u64,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// Process id, for actors that are processes (a backend's workers); else `null`.
    pub pid: Option<u32>,
}

struct BackendEntry {
    addr: Addr<BackendActor>,
    backend: Arc<dyn Backend>,
    caps: BackendCapabilities,
    running: usize,
    queue: VecDeque<WorkloadId>,
    /// Accepted (or being recorded) for this backend and not yet granted a slot.
    pending: usize,
    /// Most `pending` before this backend's submissions get 429.
    max_queue: usize,
    restarts: u64,
    last_error: Option<String>,
    /// Worker restarts of backend instances that were replaced (their counters are gone).
    worker_restarts_before: u64,
    /// Worker restarts already added to the metric.
    worker_restarts_counted: u64,
}

impl BackendEntry {
    fn worker_restarts(&self) -> u64 {
        self.worker_restarts_before + self.backend.process_report().worker_restarts
    }

    /// `healthy`, `failed` or `unavailable`, and the public reason when not healthy.
    fn status(&self) -> (&'static str, Option<String>) {
        if !self.addr.connected() {
            return ("failed", self.last_error.clone());
        }
        match self.backend.health() {
            BackendHealth::Healthy => ("healthy", None),
            BackendHealth::Unavailable { reason, .. } => ("unavailable", Some(reason)),
        }
    }
}

/// What the supervisor holds every submission to, from the configuration.
#[derive(Debug, Clone)]
pub struct SupervisorLimits {
    /// Most pending workloads, all backends together.
    pub max_queue: usize,
    /// Most bytes of pending payloads (code, archive, input), all backends together.
    pub max_queue_bytes: usize,
    /// Per-backend queue bounds by registry name; a backend without one is only bound
    /// by `max_queue`.
    pub queue_bounds: HashMap<String, usize>,
    /// Largest result any workload may produce, handed to every backend in its spec.
    pub max_output_bytes: usize,
}

/// The supervisor actor.
pub struct Supervisor {
    store: Addr<StoreActor>,
    logs: LogSinks,
    metrics: Arc<Metrics>,
    node_id: String,
    limits: SupervisorLimits,
    /// Bytes of the payloads of accepted workloads not yet granted a slot: the sum of
    /// `payload_bytes`, plus reservations whose insert is on its way.
    pending_bytes: usize,
    /// Payload bytes of each admitted workload not yet granted a slot.
    payload_bytes: HashMap<WorkloadId, usize>,
    backends: BTreeMap<String, BackendEntry>,
    workloads: HashMap<WorkloadId, Addr<WorkloadActor>>,
    /// Accepted, waiting for their backend's preparation (counted in their backend's
    /// `pending`, not yet in its queue).
    preparing: HashSet<WorkloadId>,
    /// Accepted, not admitted yet: their insert is on its way to the store.
    recording: HashSet<WorkloadId>,
    /// Receivers of the terminal record of workloads that have no actor (yet): handed
    /// to the actor at admission, or answered when the workload ends without one.
    awaiting: HashMap<WorkloadId, Vec<oneshot::Sender<Workload>>>,
    factories: Vec<BackendFactory>,
    /// Shutting down: no new work is accepted and no queued work is started (it stays
    /// pending in the store for the next start).
    draining: bool,
    /// On a cluster node: the shared queue this node claims its work from; `None` on a
    /// single node, which runs what it accepts.
    shared: Option<SharedQueue>,
    /// On a cluster: follows other nodes' workloads (kills, waits) and hears kill
    /// requests for this node's; with how long a kill of another node's workload
    /// waits for it.
    cluster: Option<(Follower, std::time::Duration)>,
}

/// A cluster node's side of the shared queue (issue 17): submissions are recorded
/// unclaimed, and the node claims what its free slots can run.
struct SharedQueue {
    /// How often to look for work recorded by other nodes.
    poll: std::time::Duration,
    /// Submissions this node accepted that no node has claimed yet: counted in their
    /// backend's `pending` and in `pending_bytes` like queued work (the admission
    /// bounds hold per node), with their payload kept for when this node claims them.
    unclaimed: HashMap<WorkloadId, Unclaimed>,
    /// How many of `unclaimed` each backend has (kept with it by `hold` and `take`).
    unclaimed_per_backend: HashMap<String, usize>,
    /// A claim is on its way to the store.
    claiming: bool,
    /// Asked to claim while one was on its way: claim again when it returns.
    again: bool,
    /// A look for which of `unclaimed` other nodes took is on its way.
    refreshing: bool,
    /// Ended unadmitted (killed) while a claim was on its way: if that claim took it
    /// (committed just before the end), it is not admitted. Cleared at each claim's
    /// answer, so it holds at most what ended during one claim.
    ended_during_claim: HashSet<WorkloadId>,
    /// Polls since the last look for orphaned claims.
    polls: u32,
    /// A look for orphaned claims is on its way: no claim is sent meanwhile (it would
    /// look orphaned until its answer arrives).
    adopting: bool,
}

/// One of [`SharedQueue::unclaimed`].
struct Unclaimed {
    backend: String,
    bytes: usize,
    payload: (Payload, Vec<u8>),
}

impl Supervisor {
    /// A supervisor that will register the backends built by `factories` when started,
    /// holding submissions to `limits`.
    pub fn new(
        store: Addr<StoreActor>,
        logs: LogSinks,
        metrics: Arc<Metrics>,
        node_id: String,
        limits: SupervisorLimits,
        factories: Vec<BackendFactory>,
    ) -> Self {
        Self {
            store,
            logs,
            metrics,
            node_id,
            limits,
            pending_bytes: 0,
            payload_bytes: HashMap::new(),
            backends: BTreeMap::new(),
            workloads: HashMap::new(),
            preparing: HashSet::new(),
            recording: HashSet::new(),
            awaiting: HashMap::new(),
            factories,
            draining: false,
            shared: None,
            cluster: None,
        }
    }

    /// A node of a cluster: kills and waits for workloads of other nodes go through
    /// `follower` (a kill waits `kill_timeout` for the running node), and kill requests
    /// from other nodes reach this node's workloads.
    pub fn cluster(mut self, follower: Follower, kill_timeout: std::time::Duration) -> Self {
        self.cluster = Some((follower, kill_timeout));
        self
    }

    /// The follower, when `w` is another node's live work.
    fn remote(&self, w: &Workload) -> Option<Follower> {
        self.cluster
            .as_ref()
            .map(|(f, _)| f)
            .filter(|f| f.is_remote(w))
            .cloned()
    }

    /// Kill another node's workload `w`. Pending: killed in the table at once (the
    /// state machine refuses it if it started meanwhile) and the node holding it is
    /// told to drop it. Running: its node is asked (a request kept on the row, and a
    /// NOTIFY) and this waits up to the kill timeout for the terminal record.
    fn kill_remote(
        &mut self,
        w: Workload,
        follower: Follower,
    ) -> ResponseActFuture<Self, Result<Workload, KillError>> {
        let id = w.id;
        let timeout = self.cluster.as_ref().map(|(_, t)| *t).unwrap_or_default();
        let store = self.store.clone();
        let holder = w.node_id.clone();
        let wait = move || {
            let node = holder.clone();
            async move {
                // Kept on the row: a node that missed the notification finds it when
                // its listen connection is back.
                if let Ok(Err(e)) = store.send(RequestKill(id)).await {
                    return Err(KillError::Store(e));
                }
                match tokio::time::timeout(timeout, follower.terminal(id)).await {
                    Ok(Ok(done)) if done.status == Status::Killed => Ok(done),
                    Ok(Ok(done)) => Err(KillError::Terminal(done.status)),
                    // Gone (retention) or unreadable: answered as is.
                    Ok(Err(e)) => Err(KillError::Store(e)),
                    Err(_) => Err(KillError::NodeDidNotAnswer {
                        node,
                        secs: timeout.as_secs(),
                    }),
                }
            }
        };
        if w.status != Status::Pending {
            return Box::pin(wait().into_actor(self));
        }
        log::info!(
            "workload {id}: pending -> killed (held by node {})",
            w.node_id
        );
        let change = StatusChange::to(Status::Killed).with_error("killed by request");
        Box::pin(self.finish_unadmitted(id, change).then(
            move |res, act, _| -> ResponseActFuture<Self, Result<Workload, KillError>> {
                match res {
                    Ok(done) => {
                        // The node that queued it drops it now, not when it dispatches.
                        act.store.do_send(RequestKill(id));
                        Box::pin(actix::fut::ready(Ok(done)))
                    }
                    // Started meanwhile, or claimed by a node that has not started it
                    // yet (this node's write is fenced off its row): ask that node. The
                    // request stays on the row, so the work is killed, not re-queued, if
                    // that node is lost or restarts before it hears.
                    Err(StoreError::InvalidTransition(_) | StoreError::Fenced) => {
                        Box::pin(wait().into_actor(act))
                    }
                    Err(e) => Box::pin(actix::fut::ready(Err(KillError::Store(e)))),
                }
            },
        ))
    }

    /// Another node asked to kill `id`: killed here if it runs (or waits) here.
    fn kill_requested(&self, id: WorkloadId) {
        if let Some(addr) = self.workloads.get(&id) {
            log::info!("workload {id}: kill requested by another node");
            addr.do_send(Kill);
        }
    }

    /// Make this supervisor a cluster node's: submissions go to the shared queue and
    /// the node claims work for its free slots, after each local submission, whenever
    /// a slot frees, on [`ClaimNow`], and every `poll`.
    pub fn shared_queue(mut self, poll: std::time::Duration) -> Self {
        self.shared = Some(SharedQueue {
            poll: poll.max(std::time::Duration::from_millis(1)),
            unclaimed: HashMap::new(),
            unclaimed_per_backend: HashMap::new(),
            claiming: false,
            again: false,
            refreshing: false,
            polls: 0,
            adopting: false,
            ended_during_claim: HashSet::new(),
        });
        self
    }

    /// Accepted (or being recorded) and not yet granted a slot, all backends together.
    fn pending(&self) -> usize {
        self.backends.values().map(|e| e.pending).sum()
    }

    /// Pick the backend for `runtime` and the requested class (the one routing rule).
    ///
    /// When nothing can take it, the error names the requested class (or, for `auto`,
    /// the preferred one and the whole chain) and why each candidate cannot be used;
    /// reasons are the backends' public ones (no host paths, uids or file names).
    fn resolve(
        &self,
        runtime: Runtime,
        explicit: Option<Isolation>,
    ) -> Result<(String, Isolation), SubmitError> {
        let classes: &[Isolation] = match &explicit {
            Some(class) => std::slice::from_ref(class),
            None => runtime.auto_chain(),
        };
        for class in classes {
            let found = self.backends.values().find(|e| {
                e.caps.supported_isolations.contains(class)
                    && e.caps.supported_runtimes.contains(&runtime)
                    && e.status().0 == "healthy"
            });
            if let Some(e) = found {
                return Ok((e.caps.name.clone(), *class));
            }
        }
        let why_not = |class: Isolation| -> String {
            let reasons: Vec<String> = self
                .backends
                .values()
                .filter(|e| e.caps.supported_isolations.contains(&class))
                .map(|e| {
                    if !e.caps.supported_runtimes.contains(&runtime) {
                        let hint = if runtime == Runtime::Oci {
                            " (OCI images run on the gvisor backend)"
                        } else {
                            ""
                        };
                        format!(
                            "backend {} does not support runtime {runtime}{hint}",
                            e.caps.name
                        )
                    } else {
                        let (status, reason) = e.status();
                        match reason {
                            Some(r) => format!("backend {} is {status}: {r}", e.caps.name),
                            None => format!("backend {} is {status}", e.caps.name),
                        }
                    }
                })
                .collect();
            if reasons.is_empty() {
                format!("{class} is not available: no backend with isolation {class} is registered")
            } else {
                format!("{class} is not available: {}", reasons.join("; "))
            }
        };
        let message = match explicit {
            Some(class) => format!("cannot place a {runtime} workload on {}", why_not(class)),
            None => format!(
                "no isolation can run {runtime} workloads here (auto prefers {}): {}",
                classes[0],
                classes
                    .iter()
                    .map(|c| why_not(*c))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        };
        Err(SubmitError::Unplaceable(message))
    }

    fn update_gauges(&self) {
        self.metrics.queue_depth.set(self.pending() as i64);
        let running: usize = self.backends.values().map(|e| e.running).sum();
        self.metrics.running.set(running as i64);
    }

    /// Count one more pending workload of `bytes` payload for `backend` unless a queue
    /// bound refuses it.
    fn reserve(&mut self, backend: &str, bytes: usize) -> Result<(), SubmitError> {
        let total = self.pending();
        let refused = if total >= self.limits.max_queue {
            Some(format!(
                "the server already holds {} pending workloads",
                self.limits.max_queue
            ))
        } else if self.pending_bytes.saturating_add(bytes) > self.limits.max_queue_bytes {
            Some(format!(
                "the server's pending payloads would exceed {} bytes (max_queue_bytes)",
                self.limits.max_queue_bytes
            ))
        } else {
            self.backends
                .get(backend)
                .filter(|e| e.pending >= e.max_queue)
                .map(|e| {
                    format!(
                        "backend {backend} already holds {} pending workloads",
                        e.max_queue
                    )
                })
        };
        if let Some(why) = refused {
            self.metrics.rejected_queue_full.inc();
            return Err(SubmitError::QueueFull(why));
        }
        if let Some(e) = self.backends.get_mut(backend) {
            e.pending += 1;
        }
        self.pending_bytes += bytes;
        self.update_gauges();
        Ok(())
    }

    /// Undo [`Supervisor::reserve`] for work that will not be queued after all.
    fn release(&mut self, backend: &str, bytes: usize) {
        if let Some(e) = self.backends.get_mut(backend) {
            e.pending = e.pending.saturating_sub(1);
        }
        self.pending_bytes = self.pending_bytes.saturating_sub(bytes);
        self.update_gauges();
    }

    /// `id` no longer waits (it got a slot or ended): its payload leaves the count.
    fn unqueue_bytes(&mut self, id: WorkloadId) {
        if let Some(bytes) = self.payload_bytes.remove(&id) {
            self.pending_bytes = self.pending_bytes.saturating_sub(bytes);
        }
    }

    /// Answer everyone waiting for `record` (a workload that ended without an actor).
    fn resolve_awaiting(&mut self, record: &Workload) {
        for tx in self.awaiting.remove(&record.id).into_iter().flatten() {
            let _ = tx.send(record.clone());
        }
    }

    /// Record a terminal status for a workload that has no actor, then end its log
    /// topic (an early subscriber's stream ends with `done`) and answer its waiters.
    fn finish_unadmitted(
        &mut self,
        id: WorkloadId,
        change: StatusChange,
    ) -> ResponseActFuture<Self, Result<Workload, StoreError>> {
        let status = change.to;
        Box::pin(
            self.store
                .send(ChangeStatus { id, change })
                .into_actor(self)
                .map(move |res, act, _| {
                    let res = res.map_err(|_| StoreError::Unavailable).and_then(|r| r);
                    match &res {
                        Ok(record) => {
                            act.logs.broker().do_send(CloseTopic {
                                id,
                                status: record.status,
                            });
                            act.resolve_awaiting(record);
                            act.ended_while_claimed(id);
                        }
                        Err(e) => {
                            log::error!("workload {id}: could not record {status}: {e}");
                            // Nothing may wait forever on it: end streams and waiters.
                            act.logs.broker().do_send(CloseTopic { id, status });
                            act.awaiting.remove(&id);
                        }
                    }
                    res
                }),
        )
    }

    /// Create the workload's actor and queue it on its backend. `payload` is `None`
    /// for a recovered workload whose payload stays in the store until it starts;
    /// `bytes` (counted by [`Supervisor::reserve`] already) leave the count when it
    /// gets a slot or ends.
    fn admit(
        &mut self,
        record: Workload,
        payload: Option<(Payload, Vec<u8>)>,
        bytes: usize,
        wait: bool,
        ctx: &mut Context<Self>,
    ) -> Option<oneshot::Receiver<Workload>> {
        let id = record.id;
        self.payload_bytes.insert(id, bytes);
        let deferred = payload.is_none();
        let (payload, input) = payload.unwrap_or((Payload::Code(String::new()), Vec::new()));
        let spec = WorkloadSpec {
            id,
            runtime: record.runtime,
            isolation: record.isolation,
            payload,
            input,
            cpus: record.cpu_limit,
            mem_mb: record.mem_limit,
            timeout: std::time::Duration::from_secs(u64::from(record.timeout_s)),
            max_output_bytes: self.limits.max_output_bytes,
        };
        self.logs.broker().do_send(OpenTopic(id));
        let backend = record.backend.clone();
        let actor_spec = spec.clone();
        let mut actor = WorkloadActor::new(
            record,
            spec,
            self.store.clone(),
            self.logs.clone(),
            ctx.address(),
            self.metrics.clone(),
        );
        if deferred {
            actor.defer_payload();
        }
        if self.shared.is_some() {
            // A node declared lost must not start work a survivor re-queued.
            actor.launch_after_running_write();
        }
        let done = wait.then(|| actor.waiter());
        for tx in self.awaiting.remove(&id).into_iter().flatten() {
            actor.add_waiter(tx);
        }
        let preparation = self
            .backends
            .get(&backend)
            .and_then(|e| e.backend.prepare(&actor_spec, actor.cancel_token()));
        let ready = preparation.is_none();
        if let Some(p) = preparation {
            actor.set_preparation(p);
            self.preparing.insert(id);
        }
        let addr = actor.start();
        self.workloads.insert(id, addr);
        if ready {
            self.enqueue(id, &backend);
        }
        done
    }

    /// Put a ready workload at the back of its backend's queue and grant free slots.
    fn enqueue(&mut self, id: WorkloadId, backend: &str) {
        if let Some(entry) = self.backends.get_mut(backend) {
            entry.queue.push_back(id);
        }
        self.dispatch(backend);
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
                entry.pending = entry.pending.saturating_sub(1);
                addr.do_send(Start {
                    backend: entry.addr.clone(),
                });
                if let Some(bytes) = self.payload_bytes.remove(&id) {
                    self.pending_bytes = self.pending_bytes.saturating_sub(bytes);
                }
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
            details: entry.backend.details(),
            worker_restarts: entry.worker_restarts(),
            limitations: entry.backend.process_report().limitations,
        }
    }

    /// Bring `vulcan_worker_restarts_total` up to date with the backends' counters.
    fn count_worker_restarts(&mut self) {
        for (name, entry) in &mut self.backends {
            let total = entry.worker_restarts();
            if total > entry.worker_restarts_counted {
                self.metrics
                    .worker_restarts
                    .with_label_values(&[name.as_str()])
                    .inc_by(total - entry.worker_restarts_counted);
                entry.worker_restarts_counted = total;
            }
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
            let max_queue = self
                .limits
                .queue_bounds
                .get(&name)
                .copied()
                .unwrap_or(self.limits.max_queue);
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
                BackendHealth::Unavailable { detail, .. } => {
                    log::warn!("backend {name}: unavailable: {detail}")
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
                    pending: 0,
                    max_queue,
                    restarts: 0,
                    last_error: None,
                    worker_restarts_before: 0,
                    worker_restarts_counted: 0,
                },
            );
        }
        // Worker crashes also happen between requests; keep the metric current.
        ctx.run_interval(WORKER_METRICS_EVERY, |act, _| act.count_worker_restarts());
        if let Some(q) = &self.shared {
            // Work recorded by other nodes, and this node's submissions they took.
            ctx.run_interval(q.poll, |act, ctx| {
                act.claim(ctx);
                act.refresh_unclaimed(ctx);
                act.requeue_orphans(ctx);
            });
        }
        if let Some((follower, _)) = &self.cluster {
            let kills = follower.listener().subscribe(notify::KILL, None);
            ctx.add_stream(futures_util::stream::unfold(kills, |mut sub| async move {
                sub.recv().await.map(|n| (n, sub))
            }));
        }
    }
}

/// A kill requested by another node ([`notify::KILL`]): a workload of this node's is
/// killed as if the request had come here. After a [`Notice::Missed`] the requests kept
/// on this node's rows are read back, so none is lost to a reopened listen connection.
impl StreamHandler<Notice> for Supervisor {
    fn handle(&mut self, notice: Notice, ctx: &mut Self::Context) {
        match notice {
            Notice::Payload(raw) => {
                if let Ok(id) = raw.parse::<WorkloadId>() {
                    self.kill_requested(id);
                }
            }
            Notice::Missed => {
                self.store
                    .send(KillRequests(self.node_id.clone()))
                    .into_actor(self)
                    .map(|res, act, _| match res {
                        Ok(Ok(ids)) => ids.into_iter().for_each(|id| act.kill_requested(id)),
                        Ok(Err(e)) => log::error!("cannot read kill requests: {e}"),
                        Err(_) => log::error!("cannot read kill requests: store unavailable"),
                    })
                    .spawn(ctx);
            }
        }
    }

    fn finished(&mut self, _: &mut Self::Context) {
        // The listener is gone (shutting down): nothing more to hear.
    }
}

/// How often worker restart counters are copied into the metrics.
const WORKER_METRICS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Accept a validated request: resolve, admit or refuse, record, queue.
#[derive(Message)]
#[rtype(result = "Result<SubmitOutcome, SubmitError>")]
pub struct Submit {
    /// The validated request.
    pub request: WorkloadRequest,
    /// Sync (also hand back a receiver for the terminal record) or async.
    pub kind: SubmitKind,
    /// The client's `Idempotency-Key`, and the age before which a remembered one is
    /// expired. Recorded atomically with the workload.
    pub key: Option<(IdempotencyKey, DateTime<Utc>)>,
}

/// A receiver for the terminal record of a workload (a replayed sync submission waits
/// on it like the original did). Dropped without an answer for an unknown workload.
#[derive(Message)]
#[rtype(result = "oneshot::Receiver<Workload>")]
pub struct AwaitWorkload(pub WorkloadId);

/// Re-admit a workload found pending at start-up.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Readmit(pub PendingWork);

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

/// A workload's preparation finished: it may queue for a slot now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WorkloadReady {
    /// Which workload.
    pub id: WorkloadId,
    /// Its backend.
    pub backend: String,
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
    type Result = ResponseActFuture<Self, Result<SubmitOutcome, SubmitError>>;

    fn handle(&mut self, msg: Submit, _: &mut Self::Context) -> Self::Result {
        let Submit {
            request: req,
            kind,
            key,
        } = msg;
        if self.draining {
            return Box::pin(actix::fut::ready(Err(SubmitError::ShuttingDown)));
        }
        let (backend, isolation) = match self.resolve(req.runtime, req.isolation.explicit()) {
            Ok(found) => found,
            Err(e) => return Box::pin(actix::fut::ready(Err(e))),
        };
        let bytes = req.payload.size_bytes() + req.input.len();
        if let Err(e) = self.reserve(&backend, bytes) {
            return Box::pin(actix::fut::ready(Err(e)));
        }
        let id = WorkloadId::new();
        let record = Workload {
            id,
            status: Status::Pending,
            isolation,
            requested_isolation: req.isolation,
            backend,
            runtime: req.runtime,
            node_id: if self.shared.is_some() {
                crate::store::nodes::UNCLAIMED.to_string()
            } else {
                self.node_id.clone()
            },
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
        let key = key.map(|(key, not_before)| KeyToRemember {
            record: IdempotencyRecord {
                fingerprint: req.fingerprint(kind),
                workload_id: id,
                kind,
            },
            key,
            not_before,
        });
        let insert = InsertWorkload {
            workload: record.clone(),
            payload: req.payload.clone(),
            input: req.input.clone(),
            key,
        };
        self.recording.insert(id);
        Box::pin(
            self.store
                .send(insert)
                .into_actor(self)
                .map(move |res, act, ctx| {
                    act.recording.remove(&id);
                    match res.map_err(|_| StoreError::Unavailable).and_then(|r| r) {
                        Ok(KeyedInsert::Inserted) => {
                            log::debug!(
                                "workload {}: accepted ({} on {}, backend {})",
                                record.id,
                                record.runtime,
                                record.isolation,
                                record.backend
                            );
                            let wait = kind == SubmitKind::Sync;
                            let done = if act.shared.is_some() {
                                act.hold_unclaimed(
                                    &record,
                                    (req.payload, req.input),
                                    bytes,
                                    wait,
                                    ctx,
                                )
                            } else {
                                act.admit(
                                    record.clone(),
                                    Some((req.payload, req.input)),
                                    bytes,
                                    wait,
                                    ctx,
                                )
                            };
                            Ok(SubmitOutcome::Accepted(Box::new(Submitted {
                                workload: record,
                                done,
                            })))
                        }
                        Ok(KeyedInsert::Existing(earlier)) => {
                            act.release(&record.backend, bytes);
                            Ok(SubmitOutcome::Existing(earlier))
                        }
                        Err(e) => {
                            act.release(&record.backend, bytes);
                            log::error!("workload {}: could not be recorded: {e}", record.id);
                            Err(SubmitError::Store(e))
                        }
                    }
                }),
        )
    }
}

impl Handler<AwaitWorkload> for Supervisor {
    type Result = ResponseActFuture<Self, oneshot::Receiver<Workload>>;

    fn handle(&mut self, msg: AwaitWorkload, _: &mut Self::Context) -> Self::Result {
        let id = msg.0;
        if let Some(addr) = self.workloads.get(&id).cloned() {
            return Box::pin(addr.send(AwaitTerminal).into_actor(self).map(|res, _, _| {
                // A stopped actor has written its terminal record: the caller reads it.
                res.unwrap_or_else(|_| oneshot::channel().1)
            }));
        }
        // No actor (yet): admission hands the sender to the actor; a workload that is
        // terminal already, or ends without one, is answered from the store.
        let (tx, rx) = oneshot::channel();
        self.awaiting.entry(id).or_default().push(tx);
        Box::pin(
            self.store
                .send(GetWorkload(id))
                .into_actor(self)
                .map(move |res, act, _| {
                    match res {
                        Ok(Ok(w)) if w.status.is_terminal() => act.resolve_awaiting(&w),
                        Ok(Ok(w)) => {
                            if let Some(follower) = act.remote(&w) {
                                // Another node runs it: followed from the table.
                                drop(rx);
                                if let Some(waiting) = act.awaiting.get_mut(&id) {
                                    waiting.retain(|tx| !tx.is_closed());
                                    if waiting.is_empty() {
                                        act.awaiting.remove(&id);
                                    }
                                }
                                return follower.await_terminal(id);
                            }
                        }
                        // Unknown or unreadable: nothing to wait for.
                        _ => {
                            act.awaiting.remove(&id);
                        }
                    }
                    rx
                }),
        )
    }
}

impl Handler<Readmit> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: Readmit, ctx: &mut Self::Context) {
        let PendingWork {
            workload,
            payload_bytes,
            payload,
        } = msg.0;
        let bytes = usize::try_from(payload_bytes).unwrap_or(usize::MAX);
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
            let change = StatusChange::to(Status::Failed).with_error(error);
            self.finish_unadmitted(workload.id, change)
                .map(|_, _, _| ())
                .spawn(ctx);
            return;
        }
        log::info!("workload {}: re-admitted after restart", workload.id);
        // Counted even beyond the bounds: it was accepted before the restart.
        if let Some(e) = self.backends.get_mut(&workload.backend) {
            e.pending += 1;
        }
        self.pending_bytes = self.pending_bytes.saturating_add(bytes);
        self.admit(workload, payload, bytes, false, ctx);
    }
}

impl Handler<KillWorkload> for Supervisor {
    type Result = ResponseActFuture<Self, Result<Workload, KillError>>;

    fn handle(&mut self, msg: KillWorkload, _: &mut Self::Context) -> Self::Result {
        let id = msg.0;
        if let Some(addr) = self.workloads.get(&id).cloned() {
            return Box::pin(
                async move {
                    let answer = addr
                        .send(Kill)
                        .await
                        .map_err(|_| KillError::Store(StoreError::Unavailable))?;
                    answer?
                        .await
                        .map_err(|_| KillError::Store(StoreError::Unavailable))
                }
                .into_actor(self),
            );
        }
        if self.recording.contains(&id) {
            return Box::pin(actix::fut::ready(Err(KillError::NotYetAccepted)));
        }
        // No actor: terminal, unknown, or recorded but not admitted (a subscriber may
        // already follow it): a pending one is killed right here.
        Box::pin(self.store.send(GetWorkload(id)).into_actor(self).then(
            move |res, act, _| -> ResponseActFuture<Self, Result<Workload, KillError>> {
                let res = res.map_err(|_| StoreError::Unavailable).and_then(|r| r);
                let remote = match &res {
                    Ok(w) if !act.workloads.contains_key(&id) => act.remote(w),
                    _ => None,
                };
                if let (Ok(w), Some(follower)) = (&res, remote) {
                    return act.kill_remote(w.clone(), follower);
                }
                match res {
                    Ok(w) if w.status == Status::Pending && !act.workloads.contains_key(&id) => {
                        log::info!("workload {id}: pending -> killed (not admitted)");
                        let change =
                            StatusChange::to(Status::Killed).with_error("killed by request");
                        Box::pin(
                            act.finish_unadmitted(id, change)
                                .map(|res, _, _| res.map_err(KillError::from)),
                        )
                    }
                    Ok(w) if w.status.is_terminal() => {
                        Box::pin(actix::fut::ready(Err(KillError::Terminal(w.status))))
                    }
                    // Admitted meanwhile: kill it through its actor.
                    Ok(_) => Box::pin(act.handle_kill_again(id)),
                    Err(e) => Box::pin(actix::fut::ready(Err(KillError::Store(e)))),
                }
            },
        ))
    }
}

impl Supervisor {
    /// Kill through the workload's actor if it has one now, else report its status.
    fn handle_kill_again(
        &mut self,
        id: WorkloadId,
    ) -> ResponseActFuture<Self, Result<Workload, KillError>> {
        let addr = self.workloads.get(&id).cloned();
        let store = self.store.clone();
        Box::pin(
            async move {
                if let Some(addr) = addr {
                    if let Ok(answer) = addr.send(Kill).await {
                        return answer?
                            .await
                            .map_err(|_| KillError::Store(StoreError::Unavailable));
                    }
                }
                let w = store
                    .send(GetWorkload(id))
                    .await
                    .map_err(|_| StoreError::Unavailable)??;
                Err(KillError::Terminal(w.status))
            }
            .into_actor(self),
        )
    }
}

impl Handler<WorkloadEnded> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: WorkloadEnded, ctx: &mut Self::Context) {
        self.workloads.remove(&msg.id);
        self.count_worker_restarts();
        self.unqueue_bytes(msg.id);
        if let Some(entry) = self.backends.get_mut(&msg.backend) {
            if msg.ran {
                entry.running = entry.running.saturating_sub(1);
            } else {
                let before = entry.queue.len();
                entry.queue.retain(|q| *q != msg.id);
                if entry.queue.len() < before {
                    entry.pending = entry.pending.saturating_sub(1);
                }
            }
        }
        // Ended while its backend was still preparing it: it never reached the queue,
        // but it was counted pending.
        if !msg.ran && self.preparing.remove(&msg.id) {
            if let Some(entry) = self.backends.get_mut(&msg.backend) {
                entry.pending = entry.pending.saturating_sub(1);
            }
        }
        self.dispatch(&msg.backend);
        self.claim(ctx);
    }
}

impl Handler<WorkloadReady> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: WorkloadReady, _: &mut Self::Context) {
        // Gone already (it ended while preparing): nothing to queue.
        if self.preparing.remove(&msg.id) {
            if self.workloads.contains_key(&msg.id) {
                self.enqueue(msg.id, &msg.backend);
            } else if let Some(entry) = self.backends.get_mut(&msg.backend) {
                // Dropped while preparing (the node was fenced): no longer pending here.
                entry.pending = entry.pending.saturating_sub(1);
            }
        }
    }
}

impl Handler<BackendRestarted> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: BackendRestarted, _: &mut Self::Context) {
        self.count_worker_restarts();
        if let Some(entry) = self.backends.get_mut(&msg.name) {
            entry.restarts += 1;
            entry.last_error = Some(msg.reason);
            entry.worker_restarts_before += entry.backend.process_report().worker_restarts;
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
        self.count_worker_restarts();
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
            pid: None,
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
                pid: None,
            });
            for w in e.backend.process_report().workers {
                out.push(ActorInfo {
                    name: w.name,
                    state: w.state,
                    restarts: w.restarts,
                    last_error: w.last_error,
                    pid: w.pid,
                });
            }
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
