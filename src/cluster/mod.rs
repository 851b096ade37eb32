//! A node's membership of a cluster (issue 17): several Vulcan servers sharing one
//! PostgreSQL database (`cluster.enabled`).
//!
//! [`Membership::join`] registers the node at start (refused while a live node has its
//! `node_id`) and answers its generation, the fencing token. The [`Membership`] actor
//! then heartbeats every `cluster.heartbeat_ms` with its backends' slots and running
//! counts; a heartbeat that finds the node fenced (declared lost by a survivor) stops
//! its local work ([`Fenced`]) and registers it again under a new generation. On the
//! same beat it offers to declare silent nodes lost ([`ReapLostNodes`]: the one node
//! holding the reaper's advisory lock does it). The shared queue itself is the
//! Supervisor's (src/actors/supervisor/shared.rs); this module only keeps the node in
//! the cluster.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use chrono::Utc;

use crate::actors::store::{Heartbeat, LeaveCluster, ReapLostNodes, RegisterNode, StoreActor};
use crate::actors::supervisor::{BackendInfo, ClaimNow, Fenced, ListBackends, Supervisor};
use crate::config::ClusterConfig;
use crate::model::BackendCapacity;
use crate::store::StoreError;

/// The capacity figures a node publishes, from the supervisor's backend list.
pub fn capacity(backends: &[BackendInfo]) -> Vec<BackendCapacity> {
    backends
        .iter()
        .map(|b| BackendCapacity {
            name: b.name.clone(),
            slots: b.capabilities.max_concurrency.max(1),
            running: b.running,
        })
        .collect()
}

/// The node's membership: heartbeat, fencing, declaring silent nodes lost.
///
/// Invariant: at most one heartbeat, one re-registration and one reaping pass are on
/// their way at a time.
pub struct Membership {
    store: Addr<StoreActor>,
    supervisor: Addr<Supervisor>,
    heartbeat: Duration,
    node_timeout: Duration,
    /// A heartbeat (or the re-registration after a fence) is on its way.
    beating: bool,
    /// A reaping pass is on its way.
    reaping: bool,
    /// Leaving the cluster ([`Leave`]): a heartbeat on its way that finds the node
    /// fenced must not register it again.
    leaving: Arc<AtomicBool>,
}

impl Membership {
    /// Register this node (its backends as the supervisor has them now) and answer the
    /// membership actor to start, with the generation it registered under.
    pub async fn join(
        store: Addr<StoreActor>,
        supervisor: Addr<Supervisor>,
        config: &ClusterConfig,
    ) -> Result<(Self, i64), StoreError> {
        let node_timeout = Duration::from_secs(config.node_timeout_s);
        let generation = register(&store, &supervisor, node_timeout).await?;
        Ok((
            Self {
                store,
                supervisor,
                heartbeat: Duration::from_millis(config.heartbeat_ms.max(1)),
                node_timeout,
                beating: false,
                reaping: false,
                leaving: Arc::default(),
            },
            generation,
        ))
    }

    fn beat(&mut self, ctx: &mut Context<Self>) {
        if self.beating || self.leaving.load(Ordering::SeqCst) {
            return;
        }
        self.beating = true;
        let (store, supervisor, timeout, leaving) = (
            self.store.clone(),
            self.supervisor.clone(),
            self.node_timeout,
            self.leaving.clone(),
        );
        async move {
            let backends = supervisor
                .send(ListBackends)
                .await
                .map_err(|_| StoreError::Unavailable)?;
            match store.send(Heartbeat(capacity(&backends))).await {
                Ok(Err(StoreError::Fenced)) if !leaving.load(Ordering::SeqCst) => {}
                Ok(other) => return other,
                Err(_) => return Err(StoreError::Unavailable),
            }
            // Declared lost: what it ran was decided by a survivor. Stop it, then
            // come back under a new generation.
            let stopped = supervisor.send(Fenced).await.unwrap_or(0);
            let generation = register(&store, &supervisor, timeout).await?;
            log::warn!(
                "cluster: this node had been declared lost ({stopped} running workload(s) \
                 stopped); registered again as generation {generation}"
            );
            supervisor.do_send(ClaimNow);
            Ok(())
        }
        .into_actor(self)
        .map(|res, act, _| {
            act.beating = false;
            if let Err(e) = res {
                log::warn!("cluster: heartbeat failed: {e}");
            }
        })
        .spawn(ctx);
    }

    fn reap(&mut self, ctx: &mut Context<Self>) {
        if self.reaping || self.leaving.load(Ordering::SeqCst) {
            return;
        }
        self.reaping = true;
        let stale_before = chrono::Duration::from_std(self.node_timeout)
            .ok()
            .and_then(|t| Utc::now().checked_sub_signed(t))
            .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC);
        self.store
            .send(ReapLostNodes(stale_before))
            .into_actor(self)
            .map(|res, act, _| {
                act.reaping = false;
                match res.map_err(|_| StoreError::Unavailable).and_then(|r| r) {
                    Ok(r) if !r.nodes.is_empty() => {
                        log::warn!(
                            "cluster: node(s) {} declared lost: {} running workload(s) failed \
                             (node lost), {} re-queued, {} killed (a kill had been asked for)",
                            r.nodes.join(", "),
                            r.failed.len(),
                            r.requeued.len(),
                            r.killed.len()
                        );
                        if !r.requeued.is_empty() {
                            act.supervisor.do_send(ClaimNow);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => log::warn!("cluster: looking for lost nodes failed: {e}"),
                }
            })
            .spawn(ctx);
    }
}

/// Register (or register again) this node; a live node with its id refuses it.
async fn register(
    store: &Addr<StoreActor>,
    supervisor: &Addr<Supervisor>,
    node_timeout: Duration,
) -> Result<i64, StoreError> {
    let backends = supervisor
        .send(ListBackends)
        .await
        .map_err(|_| StoreError::Unavailable)?;
    let live_after = chrono::Duration::from_std(node_timeout)
        .ok()
        .and_then(|t| Utc::now().checked_sub_signed(t))
        .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC);
    store
        .send(RegisterNode {
            backends: capacity(&backends),
            live_after,
        })
        .await
        .map_err(|_| StoreError::Unavailable)?
}

/// Graceful shutdown, once running work is recorded: stop heartbeating and leave the
/// cluster ([`LeaveCluster`]), so a restart under the same `node_id` is not refused
/// and survivors take over its unstarted work at once. Answers how many workloads went
/// back to the queue.
#[derive(Message)]
#[rtype(result = "Result<usize, StoreError>")]
pub struct Leave;

impl Handler<Leave> for Membership {
    type Result = ResponseActFuture<Self, Result<usize, StoreError>>;

    fn handle(&mut self, _: Leave, _: &mut Self::Context) -> Self::Result {
        // No heartbeat may find the node fenced after this and register it again.
        self.leaving.store(true, Ordering::SeqCst);
        Box::pin(
            self.store
                .send(LeaveCluster)
                .into_actor(self)
                .map(|res, _, ctx| {
                    ctx.stop();
                    res.map_err(|_| StoreError::Unavailable)?
                }),
        )
    }
}

impl Actor for Membership {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.heartbeat, |act, ctx| {
            act.beat(ctx);
            act.reap(ctx);
        });
    }
}
