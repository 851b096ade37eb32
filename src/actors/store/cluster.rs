//! The StoreActor's cluster messages (issue 17): a node's registration and heartbeat,
//! the nodes list, claiming work from the shared queue and declaring silent nodes
//! lost. Writes go through the writer like every other write; the statements are in
//! [`crate::store::nodes`].

use actix::prelude::*;
use chrono::{DateTime, Utc};

use super::{answer, StoreActor};
use crate::actors::webhooks::DeliveriesEnqueued;
use crate::model::{BackendCapacity, NodeInfo, WorkloadId};
use crate::store::nodes;
use crate::store::{Fence, PendingWork, Reaped, Stats, StoreError};

/// Register this node (see [`nodes::register`]); on success the store's status writes
/// are fenced by the new generation, which is answered.
#[derive(Message)]
#[rtype(result = "Result<i64, StoreError>")]
pub struct RegisterNode {
    /// Its backends' capacity now.
    pub backends: Vec<BackendCapacity>,
    /// A row of this node_id heartbeated after this is a live node: refused.
    pub live_after: DateTime<Utc>,
}

/// Record this node's heartbeat ([`nodes::heartbeat`]); [`StoreError::Fenced`] when
/// it was declared lost.
#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct Heartbeat(pub Vec<BackendCapacity>);

/// `GET /v1/nodes` on a cluster: every row of the nodes table.
#[derive(Message)]
#[rtype(result = "Result<Vec<NodeInfo>, StoreError>")]
pub struct ListNodes;

/// Claim pending work for this node: per backend, at most the free slots named
/// ([`nodes::claim`]). Answered once the claim is committed.
#[derive(Message)]
#[rtype(result = "Result<Vec<PendingWork>, StoreError>")]
pub struct ClaimWork(pub Vec<(String, usize)>);

/// Of these workloads, those still waiting unclaimed in the shared queue.
#[derive(Message)]
#[rtype(result = "Result<Vec<WorkloadId>, StoreError>")]
pub struct StillUnclaimed(pub Vec<WorkloadId>);

/// Re-queue this node's claimed, unstarted work it does not hold
/// ([`nodes::requeue_orphans`]); `0` is what it holds.
#[derive(Message)]
#[rtype(result = "Result<Vec<WorkloadId>, StoreError>")]
pub struct RequeueOrphans(pub Vec<WorkloadId>);

impl Handler<RequeueOrphans> for StoreActor {
    type Result = ResponseFuture<Result<Vec<WorkloadId>, StoreError>>;

    fn handle(&mut self, msg: RequeueOrphans, _: &mut Self::Context) -> Self::Result {
        let fence = match self.cluster_fence() {
            Ok(f) => f,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        Box::pin(answer(
            self.write(move |c| nodes::requeue_orphans(c, &fence, &msg.0)),
        ))
    }
}

/// Declare lost the nodes silent since `0` ([`nodes::reap`]).
#[derive(Message)]
#[rtype(result = "Result<Reaped, StoreError>")]
pub struct ReapLostNodes(pub DateTime<Utc>);

/// This node leaves the cluster ([`nodes::leave`]); answers how many claimed,
/// unstarted workloads went back to the queue.
#[derive(Message)]
#[rtype(result = "Result<usize, StoreError>")]
pub struct LeaveCluster;

impl Handler<LeaveCluster> for StoreActor {
    type Result = ResponseFuture<Result<usize, StoreError>>;

    fn handle(&mut self, _: LeaveCluster, _: &mut Self::Context) -> Self::Result {
        let fence = match self.cluster_fence() {
            Ok(f) => f,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        Box::pin(answer(self.write(move |c| nodes::leave(c, &fence))))
    }
}

/// `GET /v1/stats` on a cluster node. The statistics are one grouped query over the
/// whole shared table (every node writes it); a dashboard polling many nodes would run
/// it once per request per node. Instead a node answers every request within `max_age`
/// of its last count from that count, and requests arriving while a count runs wait
/// for it (one query at a time per node). Invariant: an answer reflects the table as
/// of at most `max_age` before it is given (the age counts from when its query
/// started). A failed count is not kept: the next request counts again.
#[derive(Clone)]
pub(super) struct StatsCache {
    max_age: std::time::Duration,
    last: std::sync::Arc<tokio::sync::Mutex<Option<(std::time::Instant, Stats)>>>,
}

impl StatsCache {
    /// A cache whose answers are at most `max_age` old (zero: a count per request).
    pub(super) fn new(max_age: std::time::Duration) -> Self {
        Self {
            max_age,
            last: Default::default(),
        }
    }

    /// The last count if it is young enough, else `count` (run only then).
    pub(super) async fn get(
        &self,
        count: impl std::future::Future<Output = Result<Stats, StoreError>>,
    ) -> Result<Stats, StoreError> {
        // Held across the count: concurrent requests share the one under way.
        let mut last = self.last.lock().await;
        if let Some((at, stats)) = last.as_ref() {
            if at.elapsed() < self.max_age {
                return Ok(stats.clone());
            }
        }
        let started = std::time::Instant::now();
        let stats = count.await?;
        *last = Some((started, stats.clone()));
        Ok(stats)
    }
}

impl StoreActor {
    /// The fence of a cluster node, or the error for a store that is not one.
    fn cluster_fence(&self) -> Result<Fence, StoreError> {
        self.fence()
            .ok_or_else(|| StoreError::Connection("this server is not a node of a cluster".into()))
    }
}

impl Handler<RegisterNode> for StoreActor {
    type Result = ResponseFuture<Result<i64, StoreError>>;

    fn handle(&mut self, msg: RegisterNode, _: &mut Self::Context) -> Self::Result {
        let (fence, cell) = match (self.cluster_fence(), self.fence.clone()) {
            (Ok(f), Some(cell)) => (f, cell),
            (Err(e), _) => return Box::pin(async move { Err(e) }),
            (Ok(_), None) => return Box::pin(async { Err(StoreError::Unavailable) }),
        };
        let rx = self.write(move |c| {
            nodes::register(c, &fence.node_id, &msg.backends, Utc::now(), msg.live_after)
        });
        Box::pin(async move {
            let generation = answer(rx).await?;
            // Committed: from now on this node writes under the new generation.
            cell.lock().unwrap_or_else(|p| p.into_inner()).generation = generation;
            Ok(generation)
        })
    }
}

impl Handler<Heartbeat> for StoreActor {
    type Result = ResponseFuture<Result<(), StoreError>>;

    fn handle(&mut self, msg: Heartbeat, _: &mut Self::Context) -> Self::Result {
        let fence = match self.cluster_fence() {
            Ok(f) => f,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let rx = self.write(move |c| nodes::heartbeat(c, &fence, &msg.0, Utc::now()));
        Box::pin(answer(rx))
    }
}

impl Handler<ListNodes> for StoreActor {
    type Result = ResponseFuture<Result<Vec<NodeInfo>, StoreError>>;

    fn handle(&mut self, _: ListNodes, _: &mut Self::Context) -> Self::Result {
        Box::pin(self.read(nodes::list))
    }
}

impl Handler<ClaimWork> for StoreActor {
    type Result = ResponseFuture<Result<Vec<PendingWork>, StoreError>>;

    fn handle(&mut self, msg: ClaimWork, _: &mut Self::Context) -> Self::Result {
        let fence = match self.cluster_fence() {
            Ok(f) => f,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let rx = self.write(move |c| nodes::claim(c, &fence, &msg.0));
        Box::pin(answer(rx))
    }
}

impl Handler<StillUnclaimed> for StoreActor {
    type Result = ResponseFuture<Result<Vec<WorkloadId>, StoreError>>;

    fn handle(&mut self, msg: StillUnclaimed, _: &mut Self::Context) -> Self::Result {
        Box::pin(self.read(move |c| nodes::still_unclaimed(c, &msg.0)))
    }
}

impl Handler<ReapLostNodes> for StoreActor {
    type Result = ResponseFuture<Result<Reaped, StoreError>>;

    fn handle(&mut self, msg: ReapLostNodes, _: &mut Self::Context) -> Self::Result {
        let fence = match self.cluster_fence() {
            Ok(f) => f,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        // The reaping transaction announces every record it ends.
        let rx = self.write(move |c| nodes::reap(c, &fence, msg.0, Utc::now()));
        let watcher = self.deliveries.clone();
        Box::pin(async move {
            let reaped = answer(rx).await?;
            if let Some(watcher) = watcher {
                let ended = reaped.failed.iter().chain(&reaped.killed);
                if ended.clone().any(|w| w.callback_url.is_some()) {
                    watcher.do_send(DeliveriesEnqueued);
                }
            }
            Ok(reaped)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::actors::store::{ChangeStatus, GetWorkload, InsertWorkload, RequestKill};
    use crate::metrics::Metrics;
    use crate::model::{pending_fixture, Payload, Status, Workload};
    use crate::store::{Database, StatusChange, NODE_LOST};

    fn node(db: &Database, id: &str) -> Addr<StoreActor> {
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        StoreActor::open(db, 1, 64, metrics)
            .expect("open")
            .cluster_node(id.into(), std::time::Duration::ZERO)
            .start()
    }

    fn slots(n: usize) -> Vec<BackendCapacity> {
        vec![BackendCapacity {
            name: "b".into(),
            slots: n,
            running: 0,
        }]
    }

    /// Nodes `a` and `b`, registered, on a fresh shared database named after `test`;
    /// `None` (said loudly by `fresh_database`) without PostgreSQL.
    async fn two_registered_nodes(test: &str) -> Option<(Addr<StoreActor>, Addr<StoreActor>)> {
        let url = crate::store::test_pg::fresh_database(test)?;
        let db = Database::SharedPostgres(url);
        let (a, b) = (node(&db, "a"), node(&db, "b"));
        register(&a).await.expect("a");
        register(&b).await.expect("b");
        Some((a, b))
    }

    async fn register(store: &Addr<StoreActor>) -> Result<i64, StoreError> {
        store
            .send(RegisterNode {
                backends: slots(2),
                live_after: Utc::now() - chrono::Duration::seconds(10),
            })
            .await
            .expect("send")
    }

    /// A workload recorded unclaimed in the shared queue.
    async fn submit(store: &Addr<StoreActor>) -> Workload {
        let mut w = pending_fixture();
        w.id = WorkloadId::new();
        w.created_at = w.id.created_at();
        w.backend = "b".into();
        w.node_id = nodes::UNCLAIMED.into();
        store
            .send(InsertWorkload {
                workload: w.clone(),
                payload: Payload::Code("1".into()),
                input: b"{}".to_vec(),
                key: None,
            })
            .await
            .expect("send")
            .expect("insert");
        w
    }

    async fn claim(store: &Addr<StoreActor>, n: usize) -> Vec<WorkloadId> {
        store
            .send(ClaimWork(vec![("b".into(), n)]))
            .await
            .expect("send")
            .expect("claim")
            .into_iter()
            .map(|p| p.workload.id)
            .collect()
    }

    async fn change(
        store: &Addr<StoreActor>,
        id: WorkloadId,
        to: Status,
    ) -> Result<Workload, StoreError> {
        store
            .send(ChangeStatus {
                id,
                change: StatusChange::to(to),
            })
            .await
            .expect("send")
    }

    #[actix_web::test]
    async fn a_live_node_id_is_refused_and_each_registration_bumps_the_generation() {
        let Some(url) = crate::store::test_pg::fresh_database("live_node_id_refused") else {
            return;
        };
        let db = Database::SharedPostgres(url);
        let a = node(&db, "a");
        assert_eq!(register(&a).await.expect("first registration"), 1);
        let twin = node(&db, "a");
        let err = register(&twin).await.expect_err("a live node has this id");
        assert!(
            matches!(&err, StoreError::NodeLive(m) if m.contains("live node")),
            "{err}"
        );
        // Silent for longer than the timeout (here: a cut-off in the future).
        let again = twin
            .send(RegisterNode {
                backends: slots(2),
                live_after: Utc::now() + chrono::Duration::seconds(1),
            })
            .await
            .expect("send")
            .expect("a silent node's id may be taken over");
        assert_eq!(again, 2);
        let err = a
            .send(Heartbeat(slots(2)))
            .await
            .expect("send")
            .expect_err("the old process is fenced");
        assert!(matches!(err, StoreError::Fenced), "{err}");
    }

    #[actix_web::test]
    async fn claims_are_fifo_per_backend_exclusive_and_bounded_by_free_slots() {
        let Some((a, b)) = two_registered_nodes("claims_fifo_exclusive").await else {
            return;
        };
        let mut queued = Vec::new();
        for _ in 0..5 {
            queued.push(submit(&a).await.id);
        }
        let got_a = claim(&a, 2).await;
        assert_eq!(
            got_a,
            queued[..2].to_vec(),
            "oldest first, at most the free slots"
        );
        let got_b = claim(&b, 10).await;
        assert_eq!(got_b, queued[2..].to_vec(), "the rest, none twice");
        assert!(claim(&a, 10).await.is_empty(), "nothing left to claim");
        let w = b
            .send(GetWorkload(got_a[0]))
            .await
            .expect("send")
            .expect("read");
        assert_eq!(w.node_id, "a", "the claim records the node");
        let err = change(&b, got_a[0], Status::Running)
            .await
            .expect_err("b may not write a's work");
        assert!(matches!(err, StoreError::Fenced), "{err}");
        change(&a, got_a[0], Status::Running)
            .await
            .expect("a writes its own claimed work");
    }

    #[actix_web::test]
    async fn claimed_work_a_node_does_not_hold_goes_back_to_the_queue() {
        let Some((a, b)) = two_registered_nodes("orphaned_claims").await else {
            return;
        };
        let (held, lost, started) = (
            submit(&a).await.id,
            submit(&a).await.id,
            submit(&a).await.id,
        );
        assert_eq!(claim(&a, 3).await, vec![held, lost, started]);
        change(&a, started, Status::Running).await.expect("running");
        // a holds `held` and runs `started`; the answer naming `lost` never arrived.
        let requeued = a
            .send(RequeueOrphans(vec![held]))
            .await
            .expect("send")
            .expect("requeue");
        assert_eq!(requeued, vec![lost]);
        assert_eq!(claim(&b, 5).await, vec![lost], "another node runs it");
        let w = b
            .send(GetWorkload(started))
            .await
            .expect("send")
            .expect("read");
        assert_eq!((w.status, w.node_id.as_str()), (Status::Running, "a"));
    }

    #[actix_web::test]
    async fn a_lost_nodes_work_is_failed_or_requeued_and_its_late_writes_are_refused() {
        let Some((a, b)) = two_registered_nodes("lost_node_fenced").await else {
            return;
        };
        let running = submit(&a).await.id;
        let unstarted = submit(&a).await.id;
        assert_eq!(claim(&a, 2).await, vec![running, unstarted]);
        change(&a, running, Status::Running).await.expect("running");

        // b sees a silent (a cut-off in the future makes every other node stale) and
        // declares it lost.
        let reaped = b
            .send(ReapLostNodes(Utc::now() + chrono::Duration::seconds(1)))
            .await
            .expect("send")
            .expect("reap");
        assert_eq!(reaped.nodes, vec!["a".to_string()]);
        let failed: Vec<_> = reaped.failed.iter().map(|w| w.id).collect();
        assert_eq!(failed, vec![running]);
        assert_eq!(reaped.failed[0].error.as_deref(), Some(NODE_LOST));
        assert_eq!(reaped.requeued, vec![unstarted]);
        assert_eq!(claim(&b, 5).await, vec![unstarted], "the survivor runs it");

        // a comes back unaware: every write of its is refused, nothing it decided lands.
        let late = change(&a, running, Status::Completed).await;
        assert!(late.is_err(), "{late:?}");
        let err = change(&a, unstarted, Status::Running)
            .await
            .expect_err("claimed by b now");
        assert!(matches!(err, StoreError::Fenced), "{err}");
        let err = a
            .send(Heartbeat(slots(2)))
            .await
            .expect("send")
            .expect_err("fenced");
        assert!(matches!(err, StoreError::Fenced), "{err}");
        let w = b
            .send(GetWorkload(running))
            .await
            .expect("send")
            .expect("read");
        assert_eq!(w.status, Status::Failed);
        assert_eq!(w.error.as_deref(), Some(NODE_LOST));
        let w = b
            .send(GetWorkload(unstarted))
            .await
            .expect("send")
            .expect("read");
        assert_eq!((w.status, w.node_id.as_str()), (Status::Pending, "b"));

        // Registered again: a new generation (1 registered, 2 fenced, 3 now), a may
        // claim and write again.
        assert_eq!(register(&a).await.expect("back"), 3);
        let fresh = submit(&a).await.id;
        assert_eq!(claim(&a, 1).await, vec![fresh]);
        change(&a, fresh, Status::Running)
            .await
            .expect("writes under the new generation");
        // Only one survivor at a time declares nodes lost: b, alive, is not reaped by a
        // pass that finds no stale node.
        let none = a
            .send(ReapLostNodes(Utc::now() - chrono::Duration::seconds(60)))
            .await
            .expect("send")
            .expect("reap");
        assert!(none.nodes.is_empty(), "{:?}", none.nodes);
    }

    #[actix_web::test]
    async fn a_lost_nodes_work_somebody_asked_to_kill_is_killed_not_failed_or_requeued() {
        let Some((a, b)) = two_registered_nodes("lost_node_kill_requests").await else {
            return;
        };
        let mut ids = Vec::new();
        for _ in 0..4 {
            ids.push(submit(&a).await.id);
        }
        assert_eq!(claim(&a, 4).await, ids);
        let (asked_running, running, asked_pending, pending) = (ids[0], ids[1], ids[2], ids[3]);
        for id in [asked_running, running] {
            change(&a, id, Status::Running).await.expect("running");
        }
        // b asks a to kill two of them; a dies before it hears.
        for id in [asked_running, asked_pending] {
            b.send(RequestKill(id))
                .await
                .expect("send")
                .expect("request");
        }
        let reaped = b
            .send(ReapLostNodes(Utc::now() + chrono::Duration::seconds(1)))
            .await
            .expect("send")
            .expect("reap");
        assert_eq!(reaped.nodes, vec!["a".to_string()]);
        let mut killed: Vec<_> = reaped.killed.iter().map(|w| w.id).collect();
        killed.sort();
        assert_eq!(killed, vec![asked_running, asked_pending]);
        let failed: Vec<_> = reaped.failed.iter().map(|w| w.id).collect();
        assert_eq!(
            failed,
            vec![running],
            "only work nobody asked to kill fails"
        );
        assert_eq!(reaped.requeued, vec![pending]);

        let read = |id| {
            let b = b.clone();
            async move { b.send(GetWorkload(id)).await.expect("send").expect("read") }
        };
        let w = read(asked_running).await;
        assert_eq!(w.status, Status::Killed);
        assert_eq!(w.error.as_deref(), Some(nodes::KILLED_BY_REQUEST));
        assert!(w.started_at.is_some() && w.finished_at.is_some(), "{w:?}");
        assert_eq!(w.node_id, "a", "recorded on the node that ran it");
        let w = read(asked_pending).await;
        assert_eq!(w.status, Status::Killed);
        assert_eq!(w.error.as_deref(), Some(nodes::KILLED_BY_REQUEST));
        assert!(w.started_at.is_none(), "never started: {w:?}");
        let w = read(running).await;
        assert_eq!(
            (w.status, w.error.as_deref()),
            (Status::Failed, Some(NODE_LOST))
        );
        // Only the re-queued one is left to claim; the killed ones never run.
        assert_eq!(claim(&b, 5).await, vec![pending]);
    }
}
